/* libFuzzer: protobuf request decoding (moeflow.v1.GenerateRequest and
 * inference.ModelInferRequest).  The first byte picks the decoder (even =
 * Generate, odd = KServe); the rest is the message. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "server/requests.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct moe_gen_request r;
    enum moe_status st = (data[0] & 1) ? moe_req_parse_kserve(data + 1, size - 1, &r)
                                       : moe_req_parse_generate(data + 1, size - 1, &r);
    if (st == MOE_OK) {
        if (r.prompt && !moe_utf8_valid(r.prompt, r.prompt_len))
            abort();
        if (!r.prompt && !r.prompt_ids)
            abort();
        if (r.max_tokens < 0 || !isfinite(r.sampling.temperature) || r.sampling.temperature < 0)
            abort();
        moe_gen_request_free(&r);
    }
    return 0;
}
