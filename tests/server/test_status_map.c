/* The codes a refused request and a generation that ended get over HTTP and gRPC agree: a status that
 * blames the request (a bad field, a value out of range, a malformed message, a feature the request asks
 * for that is not supported) is 400 and INVALID_ARGUMENT alike, never UNIMPLEMENTED, which is kept for a
 * gRPC method not served here (answered where the call arrives, not through these maps). */
#include <grpc/status.h>

#include "../test_util.h"
#include "server/srv.h"

int main(void)
{
    static const enum moe_status request_errors[] = { MOE_EINVAL, MOE_ERANGE, MOE_EFORMAT, MOE_ENOTSUP };
    for (size_t i = 0; i < sizeof(request_errors) / sizeof(request_errors[0]); i++) {
        enum moe_status st = request_errors[i];
        CHECK(srv_http_status(st) == 400, "%s: HTTP %d", moe_status_str(st), srv_http_status(st));
        CHECK(srv_grpc_code(st) == GRPC_STATUS_INVALID_ARGUMENT, "%s: gRPC %d", moe_status_str(st),
              srv_grpc_code(st));
        /* a generation that fails by the request's doing, as its guide allowing no token */
        CHECK(srv_finish_http_status(MOE_FINISH_ERROR, st, true) == 400, "%s of the request: HTTP %d",
              moe_status_str(st), srv_finish_http_status(MOE_FINISH_ERROR, st, true));
        CHECK(srv_finish_grpc_code(MOE_FINISH_ERROR, st, true) == GRPC_STATUS_INVALID_ARGUMENT,
              "%s of the request: gRPC %d", moe_status_str(st), srv_finish_grpc_code(MOE_FINISH_ERROR, st, true));
        /* the same status from the server's own check is the server's fault */
        CHECK(srv_finish_http_status(MOE_FINISH_ERROR, st, false) == 500, "%s of the server: HTTP %d",
              moe_status_str(st), srv_finish_http_status(MOE_FINISH_ERROR, st, false));
        CHECK(srv_finish_grpc_code(MOE_FINISH_ERROR, st, false) == GRPC_STATUS_INTERNAL,
              "%s of the server: gRPC %d", moe_status_str(st), srv_finish_grpc_code(MOE_FINISH_ERROR, st, false));
    }
    CHECK(srv_http_status(MOE_ENOENT) == 404 && srv_grpc_code(MOE_ENOENT) == GRPC_STATUS_NOT_FOUND, "unknown model");
    CHECK(srv_http_status(MOE_EBUSY) == 429 && srv_grpc_code(MOE_EBUSY) == GRPC_STATUS_RESOURCE_EXHAUSTED,
          "queue full");
    return t_result("test_server_status");
}
