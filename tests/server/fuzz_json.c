/* libFuzzer: OpenAI completions / chat JSON request decoding.  The first
 * byte picks the endpoint (odd = chat; bit 7: a Responses API body, translated
 * into the chat request it means first) and whether chat messages go through a
 * model chat template (bit 1: a ChatML-style one); the rest is the body.  A decoded
 * prompt is then run through the stop-sequence scanner in pieces: what it
 * releases must be a prefix of the prompt, and all of it without a match. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/chat.h"
#include "server/requests.h"
#include "server/responses.h"

#include <stdio.h>
#include <unistd.h>

/* A ChatML-style template as a model would ship it (compiled once). */
static struct moe_chat *chatml(void)
{
    static struct moe_chat *c;
    static const char src[] = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + (m.content or '') + "
                              "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                              "{% endif %}{{ extra | default('') }}";
    if (!c) {
        char path[] = "/tmp/fuzz-json-chat-XXXXXX";
        int fd = mkstemp(path);
        if (fd < 0 || write(fd, src, sizeof(src) - 1) != (ssize_t)(sizeof(src) - 1) || close(fd) ||
            moe_chat_load_file(path, NULL, &c))
            abort();
        unlink(path);
    }
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct moe_gen_request r;
    const struct moe_chat *tmpl = data[0] & 2 ? chatml() : NULL;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    char *chat = NULL;
    if (data[0] & 0x80) { /* /v1/responses: a chat request (JSON) or an error, nothing half-made */
        struct moe_responses *resp = NULL;
        enum moe_status st = moe_responses_request(body, len, NULL, NULL, &chat, &resp);
        if ((st == MOE_OK) != (chat && resp))
            abort();
        moe_responses_free(resp);
        if (!chat)
            return 0;
        json_t *j = json_loads(chat, 0, NULL);
        if (!json_is_object(j))
            abort();
        json_decref(j);
        body = chat;
        len = strlen(chat);
    }
    if (moe_req_parse_openai(body, len, data[0] & 0x81, tmpl, &r) == MOE_OK) {
        if ((data[0] & 3) == 3 && !r.templated)
            abort(); /* a chat through a template says so, so that no second BOS is added */
        if (r.prompt && !moe_utf8_valid(r.prompt, r.prompt_len))
            abort(); /* a decoded prompt is always valid UTF-8 */
        if (r.max_tokens < 0 || !(r.sampling.top_p > 0 && r.sampling.top_p <= 1))
            abort();
        if (r.n_batch == 1 || r.n_batch * r.n > MOE_REQ_MAX_N || (r.n_batch && (r.prompt || r.prompt_ids)))
            abort(); /* a batch: 2 or more prompts in place of the one, n choices each, MOE_REQ_MAX_N in all */
        for (int i = 0; i < r.n_batch; i++)
            if (r.batch[i].text ? !moe_utf8_valid(r.batch[i].text, r.batch[i].len) : r.batch[i].n_ids < 1)
                abort(); /* each prompt valid UTF-8, or token ids */
        if (r.prompt && r.n_stop > 0) {
            struct moe_stop_scan sc;
            if (moe_stop_scan_init(&sc, r.stop, r.n_stop) != MOE_OK)
                abort();
            size_t done = 0, piece = 1 + (size_t)(data[0] >> 1) % 7;
            int m = 0;
            while (done < r.prompt_len && m == 0) {
                size_t k = r.prompt_len - done < piece ? r.prompt_len - done : piece;
                char *o;
                size_t n, before = sc.n_held;
                m = moe_stop_scan_feed(&sc, r.prompt + done, k, NULL, 0, done + k == r.prompt_len, &o, &n);
                /* released text continues the prompt where the previous release ended */
                if (m >= 0 && (n > before + k || memcmp(o, r.prompt + done - before, n)))
                    abort();
                free(o);
                done += k;
            }
            if (m == 0 && sc.n_held != 0)
                abort(); /* the last piece releases whatever was held back */
            moe_stop_scan_free(&sc);
        }
        moe_gen_request_free(&r);
    }
    free(chat);
    return 0;
}
