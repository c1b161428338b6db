/* A KServe ModelInferRequest whose model_name or id does not fit the decoded
 * request (127 bytes) is refused with a message naming the field, never
 * decoded with the field dropped (an empty model would match any model, a lost
 * id would not be echoed); names that fit are kept whole.  One whose model_name
 * is empty is refused too. */
#include <stdlib.h>
#include <string.h>

#include "../test_util.h"
#include "grpc_service.pb-c.h"
#include "server/requests.h"

/* Pack a request with one text_input "abc" and the given model_name and id. */
static uint8_t *pack(const char *model, const char *id, size_t *n)
{
    Inference__ModelInferRequest m = INFERENCE__MODEL_INFER_REQUEST__INIT;
    Inference__ModelInferRequest__InferInputTensor t;
    Inference__InferTensorContents tc;
    Inference__ModelInferRequest__InferInputTensor *tp = &t;
    int64_t shape[1] = { 1 };
    ProtobufCBinaryData text = { 3, (uint8_t *)"abc" };
    inference__model_infer_request__infer_input_tensor__init(&t);
    inference__infer_tensor_contents__init(&tc);
    t.name = "text_input";
    t.datatype = "BYTES";
    t.n_shape = 1;
    t.shape = shape;
    t.contents = &tc;
    tc.n_bytes_contents = 1;
    tc.bytes_contents = &text;
    m.model_name = (char *)model;
    m.id = (char *)id;
    m.n_inputs = 1;
    m.inputs = &tp;
    *n = inference__model_infer_request__get_packed_size(&m);
    uint8_t *b = malloc(*n);
    REQUIRE(b, "out of memory");
    inference__model_infer_request__pack(&m, b);
    return b;
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    REQUIRE(s, "out of memory");
    memset(s, c, n);
    s[n] = 0;
    return s;
}

int main(void)
{
    struct moe_gen_request r;
    size_t n;
    char *fit = repeat('m', 127), *over = repeat('m', 128), *id_fit = repeat('i', 127), *id_over = repeat('i', 200);

    uint8_t *b = pack(fit, id_fit, &n);
    REQUIRE(moe_req_parse_kserve(b, n, &r) == MOE_OK, "127-byte names refused: %s", moe_last_error());
    CHECK(!strcmp(r.model, fit) && !strcmp(r.id, id_fit), "names that fit were not kept whole");
    moe_gen_request_free(&r);
    free(b);

    b = pack(over, "r1", &n);
    CHECK(moe_req_parse_kserve(b, n, &r) == MOE_EINVAL && strstr(moe_last_error(), "model_name"),
          "128-byte model_name: %s", moe_last_error());
    CHECK(!r.prompt && !r.model[0], "a refused request is not left empty");
    free(b);

    b = pack("pycode-moe-18m", id_over, &n);
    CHECK(moe_req_parse_kserve(b, n, &r) == MOE_EINVAL && strstr(moe_last_error(), "id must be"),
          "200-byte id: %s", moe_last_error());
    free(b);

    /* KServe names the model in every request: an empty model_name is refused, not taken as any model */
    b = pack("", "r1", &n);
    CHECK(moe_req_parse_kserve(b, n, &r) == MOE_EINVAL && strstr(moe_last_error(), "model_name is empty"),
          "empty model_name: %s", moe_last_error());
    CHECK(!r.prompt, "a refused request is not left empty");
    free(b);

    free(fit), free(over), free(id_fit), free(id_over);
    return t_result("test_request_fields");
}
