/* libFuzzer: OpenAI completions / chat JSON request decoding.  The first
 * byte picks the endpoint (odd = chat); the rest is the body. */
#include <stdint.h>
#include <stdlib.h>

#include "server/requests.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct moe_gen_request r;
    if (moe_req_parse_openai((const char *)data + 1, size - 1, data[0] & 1, &r) == MOE_OK) {
        if (r.prompt && !moe_utf8_valid(r.prompt, r.prompt_len))
            abort(); /* a decoded prompt is always valid UTF-8 */
        if (r.max_tokens < 0 || !(r.sampling.top_p > 0 && r.sampling.top_p <= 1))
            abort();
        moe_gen_request_free(&r);
    }
    return 0;
}
