/* The serving wire layer on its own: option table, OpenAI JSON and protobuf
 * request decoders (good and malformed inputs, every numeric field's bad
 * values), UTF-8 hold-back, chat template, Prometheus histogram text. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../test_util.h"
#include "grpc_service.pb-c.h"
#include "moeflow.pb-c.h"
#include "server/metrics.h"
#include "engine/json_guide.h"
#include "model/chat.h"
#include "server/requests.h"
#include "server/serve_config.h"

static void test_config(void)
{
    struct moe_serve_config c;
    moe_serve_config_defaults(&c);
    CHECK(c.grpc_port == 50051 && c.http_port == 8000, "defaults %d %d", c.grpc_port, c.http_port);
    CHECK(c.drain_timeout == 30.0, "drain %g", c.drain_timeout);
    CHECK(moe_serve_config_set(&c, "max-queued", "7") == MOE_OK && c.max_queued == 7, "set");
    CHECK(moe_serve_config_set(&c, "max_queued", "8") == MOE_OK && c.max_queued == 8, "underscore");
    static const char *not_numbers[] = { " 5", "+5", "5 ", "0x10", "5x" };
    for (size_t i = 0; i < sizeof(not_numbers) / sizeof(not_numbers[0]); i++)
        CHECK(moe_serve_config_set(&c, "max-seqs", not_numbers[i]) != MOE_OK &&
                  moe_serve_config_set(&c, "drain-timeout", not_numbers[i]) != MOE_OK &&
                  moe_serve_config_set(&c, "gpu-experts", not_numbers[i]) != MOE_OK,
              "'%s' taken as a number", not_numbers[i]);
    CHECK(moe_serve_config_set(&c, "grpc-port", "70000") == MOE_ERANGE, "range");
    CHECK(strstr(moe_last_error(), "grpc-port") && strstr(moe_last_error(), "70000"), "msg: %s",
          moe_last_error());
    CHECK(moe_serve_config_set(&c, "drain-timeout", "nan") != MOE_OK, "nan");
    CHECK(moe_serve_config_set(&c, "drain-timeout", "-1") != MOE_OK, "negative");
    CHECK(moe_serve_config_set(&c, "max-running", "12x") != MOE_OK, "junk");
    CHECK(strstr(moe_last_error(), "max-running") != NULL, "msg: %s", moe_last_error());
    CHECK(moe_serve_config_set(&c, "no-such-key", "1") != MOE_OK, "unknown key");
    CHECK(strstr(moe_last_error(), "no-such-key") != NULL, "msg: %s", moe_last_error());
    CHECK(moe_serve_config_set(&c, "grouping", "random") != MOE_OK && !strcmp(c.grouping, "fcfs"),
          "enum (a refused value changes nothing)");
    CHECK(moe_serve_config_set(&c, "kv-dtype", "f16") == MOE_EINVAL && strstr(moe_last_error(), "f32, bf16") &&
              !strcmp(c.kv_dtype, "f32") && moe_serve_config_set(&c, "kv-dtype", "bf16") == MOE_OK &&
              !strcmp(c.kv_dtype, "bf16"),
          "kv-dtype: %s", moe_last_error());
    CHECK(!strcmp(c.kv_cache_bytes, "auto") && moe_serve_config_set(&c, "kv-cache-bytes", "8G") == MOE_OK &&
              moe_serve_config_set(&c, "kv-cache-bytes", "-1") == MOE_EINVAL &&
              strstr(moe_last_error(), "not auto or a byte count") && !strcmp(c.kv_cache_bytes, "8G") &&
              moe_serve_config_set(&c, "kv-cache-bytes", "auto") == MOE_OK,
          "kv-cache-bytes: %s", moe_last_error());
    CHECK(moe_serve_config_set(&c, "max-ctx", "99999999999999999999") != MOE_OK, "huge");

    char path[] = "/tmp/moe_serve_cfg_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0, "mkstemp");
    const char *txt = "# comment\nmax-running = 3\nhttp_port = 8123 # trailing\n\ngrouping = \"regroup\"\n";
    REQUIRE(write(fd, txt, strlen(txt)) == (ssize_t)strlen(txt), "write");
    close(fd);
    moe_serve_config_defaults(&c);
    CHECK(moe_serve_config_load(&c, path) == MOE_OK, "load: %s", moe_last_error());
    CHECK(c.max_running == 3 && c.http_port == 8123 && !strcmp(c.grouping, "regroup"), "file values");
    FILE *f = fopen(path, "w");
    fputs("max-running = 3\nmax-queued = -5\n", f);
    fclose(f);
    CHECK(moe_serve_config_load(&c, path) != MOE_OK, "bad file");
    CHECK(strstr(moe_last_error(), ":2") && strstr(moe_last_error(), "max-queued") &&
          strstr(moe_last_error(), "-5"), "msg: %s", moe_last_error());
    /* blank lines count in the line numbers; '#' inside a quoted value is the value's */
    f = fopen(path, "w");
    fputs("# c\n\nmax-running = 4\n\n\n\nmodel = \"/x/g#m\" # the model\nfoo = 1\n", f);
    fclose(f);
    moe_serve_config_defaults(&c);
    CHECK(moe_serve_config_load(&c, path) != MOE_OK && strstr(moe_last_error(), ":8: ") &&
              strstr(moe_last_error(), "'foo'") && !strcmp(c.model, "/x/g#m"),
          "line numbers and quoted '#': %s, model '%s'", moe_last_error(), c.model);
    f = fopen(path, "w");
    fputs("max-running = 2\nmodel = \"/x/y # z\n", f);
    fclose(f);
    CHECK(moe_serve_config_load(&c, path) != MOE_OK && strstr(moe_last_error(), ":2: a quote that is never closed"),
          "unclosed quote: %s", moe_last_error());
    /* the alternatives of a pair: one given on the command line unsets the file's other */
    CHECK(moe_serve_config_alternative("gpu-cache-bytes") && !strcmp(moe_serve_config_alternative("gpu-cache-bytes"),
                                                                     "gpu-experts") &&
              !strcmp(moe_serve_config_alternative("host-experts"), "host-cache-bytes") &&
              !moe_serve_config_alternative("max-seqs"),
          "alternatives");
    moe_serve_config_defaults(&c);
    CHECK(moe_serve_config_set(&c, "gpu-experts", "8") == MOE_OK && c.offload.gpu_experts == 8, "gpu-experts");
    moe_serve_config_unset_alternative(&c, "gpu-cache-bytes");
    CHECK(moe_serve_config_set(&c, "gpu-cache-bytes", "1M") == MOE_OK && c.offload.gpu_experts == 0 &&
              moe_serve_config_check(&c) == MOE_OK,
          "gpu-cache-bytes over the file's gpu-experts: %s", moe_last_error());
    unlink(path);
    /* cors-origin: "*", or exact origins (scheme and host case-insensitive); anything else refused by name */
    CHECK(!moe_serve_cors_allows("", "https://a.example") && moe_serve_cors_allows("*", "https://a.example") &&
              !moe_serve_cors_allows("*", NULL),
          "cors: off / any");
    const char *list = "https://a.example, http://localhost:3000";
    CHECK(moe_serve_cors_allows(list, "https://a.example") && moe_serve_cors_allows(list, "http://localhost:3000") &&
              moe_serve_cors_allows(list, "HTTPS://A.example") && !moe_serve_cors_allows(list, "https://a.example:1") &&
              !moe_serve_cors_allows(list, "http://localhost") && !moe_serve_cors_allows(list, "https://b.example"),
          "cors: list matching");
    static const char *bad_cors[] = { "a.example", "https://a.example/path", "https://", "*, https://a.example",
                                      "https://a.example,,", "https://*.example", "ftp://a.example" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(bad_cors); i++) {
        moe_serve_config_defaults(&c);
        CHECK(moe_serve_config_set(&c, "cors-origin", bad_cors[i]) == MOE_OK, "cors-origin not settable");
        CHECK(moe_serve_config_check(&c) == MOE_EINVAL && strstr(moe_last_error(), "cors-origin"),
              "cors-origin '%s' accepted: %s", bad_cors[i], moe_last_error());
    }
    moe_serve_config_defaults(&c);
    CHECK(moe_serve_config_set(&c, "cors-origin", list) == MOE_OK && moe_serve_config_check(&c) == MOE_OK,
          "a good cors-origin list refused: %s", moe_last_error());
    moe_serve_config_defaults(&c);
    c.max_running = c.max_seqs + 1;
    CHECK(moe_serve_config_check(&c) != MOE_OK, "cross check");
    /* one flag changed from the defaults is a valid configuration */
    moe_serve_config_defaults(&c);
    CHECK(moe_serve_config_set(&c, "max-running", "8") == MOE_OK && moe_serve_config_check(&c) == MOE_OK,
          "max-running 8 alone: %s", moe_last_error());
    moe_serve_config_defaults(&c);
    CHECK(moe_serve_config_set(&c, "max-seqs", "4") == MOE_OK && moe_serve_config_check(&c) == MOE_OK &&
              moe_serve_max_running(&c) == 4,
          "max-seqs 4 alone: %s", moe_last_error());
    moe_serve_config_defaults(&c);
    CHECK(moe_serve_config_set(&c, "max-output", "8") == MOE_OK && moe_serve_config_check(&c) == MOE_OK,
          "max-output 8 alone: %s", moe_last_error());
    CHECK(moe_serve_config_set(&c, "default-max-tokens", "9") == MOE_OK && moe_serve_config_check(&c) != MOE_OK &&
              strstr(moe_last_error(), "max-output"),
          "default-max-tokens above max-output: %s", moe_last_error());
    moe_serve_config_defaults(&c);
    c.grpc_port = c.http_port = 0;
    CHECK(moe_serve_config_check(&c) != MOE_OK && strstr(moe_last_error(), "nothing to serve"), "no listener: %s",
          moe_last_error());
    moe_serve_config_defaults(&c);
    CHECK(moe_serve_config_set(&c, "max-queued", "0") != MOE_OK, "max-queued 0 accepted");
    CHECK(moe_serve_config_set(&c, "policy", "belady") == MOE_OK && moe_serve_config_check(&c) != MOE_OK &&
              strstr(moe_last_error(), "belady"),
          "policy belady accepted: %s", moe_last_error());
    /* serve --help names exactly the policies serve takes (belady is refused above) */
    const char *policy_help = NULL;
    for (const struct moe_serve_opt *o = moe_serve_opts(); o->name; o++)
        if (!strcmp(o->name, "policy"))
            policy_help = o->help;
    REQUIRE(policy_help, "no policy option");
    static const char *policies[] = { "predicted", "lru", "lfu", "belady" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(policies); i++) {
        moe_serve_config_defaults(&c);
        bool taken = moe_serve_config_set(&c, "gpu-experts", "8") == MOE_OK &&
                     moe_serve_config_set(&c, "policy", policies[i]) == MOE_OK && moe_serve_config_check(&c) == MOE_OK;
        CHECK(taken == (strstr(policy_help, policies[i]) != NULL) && !strstr(policy_help, "sim --help"),
              "policy %s %s, but --help says: %s", policies[i], taken ? "taken" : "refused", policy_help);
    }
}

static enum moe_status oai(const char *body, bool chat, struct moe_gen_request *r)
{
    return moe_req_parse_openai(body, strlen(body), chat, NULL, r);
}

static void expect_bad(const char *body, bool chat, const char *field)
{
    struct moe_gen_request r;
    enum moe_status st = oai(body, chat, &r);
    CHECK(st != MOE_OK, "accepted: %s", body);
    CHECK(!field || strstr(moe_last_error(), field), "error for %s does not name %s: %s", body,
          field, moe_last_error());
    CHECK(r.prompt == NULL && r.prompt_ids == NULL && r.batch == NULL, "left allocated");
}

static void test_openai(void)
{
    struct moe_gen_request r;
    REQUIRE(oai("{\"model\":\"m\",\"prompt\":\"def f(\",\"max_tokens\":5,\"stream\":true,"
                "\"temperature\":0,\"top_p\":0.5,\"seed\":3,\"timeout\":2.5}", false, &r) == MOE_OK,
            "%s", moe_last_error());
    CHECK(!strcmp(r.prompt, "def f(") && r.max_tokens == 5 && r.stream, "fields");
    CHECK(r.sampling.top_p == 0.5f && r.sampling.seed == 3 && r.timeout_s == 2.5, "sampling");
    CHECK(!strcmp(r.model, "m"), "model");
    moe_gen_request_free(&r);
    REQUIRE(oai("{\"prompt\":[1,2,3]}", false, &r) == MOE_OK, "%s", moe_last_error());
    CHECK(r.n_prompt_ids == 3 && r.prompt_ids[2] == 3 && r.max_tokens == 0, "ids");
    moe_gen_request_free(&r);
    /* OpenAI's batch of prompts: texts, token-id lists or both, each checked as a prompt alone is */
    REQUIRE(oai("{\"prompt\":[\"a\",\"b\u00e9\"],\"n\":8}", false, &r) == MOE_OK, "two prompts: %s", moe_last_error());
    CHECK(r.n_batch == 2 && !r.prompt && !r.prompt_ids && !strcmp(r.batch[0].text, "a") &&
              !strcmp(r.batch[1].text, "b\xc3\xa9") && r.batch[1].len == 3 && r.n == 8,
          "two prompts: %d", r.n_batch);
    moe_gen_request_free(&r);
    REQUIRE(oai("{\"prompt\":[[1,2],[3],\"c\"]}", false, &r) == MOE_OK, "three prompts: %s", moe_last_error());
    CHECK(r.n_batch == 3 && r.batch[0].n_ids == 2 && r.batch[0].ids[1] == 2 && r.batch[1].n_ids == 1 &&
              r.batch[1].ids[0] == 3 && !r.batch[1].text && !strcmp(r.batch[2].text, "c"),
          "token-id prompts and a text: %d", r.n_batch);
    CHECK(moe_gen_request_check_vocab(&r, 3, "prompt") == MOE_ERANGE &&
              strstr(moe_last_error(), "'prompt[1][0]' = 3"), "a batch's id outside the vocabulary: %s",
          moe_last_error());
    moe_gen_request_free(&r);
    expect_bad("{\"prompt\":[\"a\",5]}", false, "'prompt[1]' must be a string or a non-empty array");
    /* 'user' is a string (or null) as in OpenAI's and vLLM's schemas, whatever else it could be taken for */
    expect_bad("{\"prompt\":\"a\",\"user\":5}", false, "'user' must be a string");
    expect_bad("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"user\":{\"id\":1}}", true,
               "'user' must be a string");
    REQUIRE(oai("{\"prompt\":\"a\",\"user\":\"u-1\"}", false, &r) == MOE_OK, "a string user: %s", moe_last_error());
    moe_gen_request_free(&r);
    REQUIRE(oai("{\"prompt\":\"a\",\"user\":null}", false, &r) == MOE_OK, "a null user: %s", moe_last_error());
    moe_gen_request_free(&r);
    expect_bad("{\"prompt\":[[1],[]]}", false, "'prompt[1]' must be a string or a non-empty array");
    expect_bad("{\"prompt\":[[1],[2,-1]]}", false, "'prompt[1][1]' must be a token id");
    expect_bad("{\"prompt\":[\"a\",\"b\"],\"n\":9}", false, "2 prompts and 'n' = 9: 18 completions");
    expect_bad("{\"prompt\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\",\"l\",\"m\",\"n\",\"o\",\"p\","
               "\"q\"]}", false, "17 prompts");
    /* suffix (insertion) is not generated: refused on completions, off values pass; chat has no such field */
    expect_bad("{\"prompt\":\"def f(\",\"suffix\":\"\\n    return x\"}", false, "'suffix'");
    for (int i = 0; i < 2; i++) {
        CHECK(oai(i ? "{\"prompt\":\"x\",\"suffix\":null}" : "{\"prompt\":\"x\",\"suffix\":\"\"}", false, &r) == MOE_OK,
              "an empty or null suffix: %s", moe_last_error());
        moe_gen_request_free(&r);
    }
    /* "" asks for nothing only of the text field: an empty best_of, or a chat's empty echo, is refused */
    expect_bad("{\"prompt\":\"x\",\"best_of\":\"\"}", false, "'best_of'");
    expect_bad("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"echo\":\"\"}", true, "'echo'");
    CHECK(oai("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"suffix\":\"y\"}", true, &r) == MOE_OK,
          "chat with a suffix field: %s", moe_last_error());
    moe_gen_request_free(&r);
    /* vLLM's sampling fields for output not produced: refused by name on both endpoints, off values pass */
    static const char *const vllm_on[] = { "\"use_beam_search\":true", "\"include_stop_str_in_output\":true",
                                           "\"prompt_logprobs\":0", "\"allowed_token_ids\":[5]",
                                           "\"bad_words\":[\"x\"]" };
    char vb[256];
    for (size_t i = 0; i < MOE_ARRAY_LEN(vllm_on); i++)
        for (int chat = 0; chat < 2; chat++) {
            snprintf(vb, sizeof(vb), "{%s,%s}", chat ? "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"
                                                     : "\"prompt\":\"x\"", vllm_on[i]);
            char key[64]; /* 'key' = value is not supported */
            snprintf(key, sizeof(key), "'%.*s' = %s is not supported", (int)(strchr(vllm_on[i], ':') - vllm_on[i] - 2),
                     vllm_on[i] + 1, strchr(vllm_on[i], ':') + 1);
            expect_bad(vb, chat, key);
        }
    REQUIRE(oai("{\"prompt\":\"x\",\"use_beam_search\":false,\"include_stop_str_in_output\":false,"
                "\"prompt_logprobs\":null,\"allowed_token_ids\":[],\"bad_words\":[]}", false, &r) == MOE_OK,
            "vLLM's fields off: %s", moe_last_error());
    moe_gen_request_free(&r);
    CHECK(oai("{\"prompt\":[[4,5,6]]}", false, &r) == MOE_OK && r.n_prompt_ids == 3 && r.prompt_ids[0] == 4,
          "one token-id prompt in a batch of one: %s", moe_last_error());
    moe_gen_request_free(&r);
    REQUIRE(oai("{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
                "{\"role\":\"user\",\"content\":\"hi\"}],\"max_completion_tokens\":4}", true, &r) == MOE_OK,
            "%s", moe_last_error());
    CHECK(!strcmp(r.prompt, "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"), "template: %s",
          r.prompt);
    CHECK(r.max_tokens == 4, "max_completion_tokens");
    moe_gen_request_free(&r);
    /* content as OpenAI's list of text parts: joined with newlines */
    REQUIRE(oai("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                "{\"type\":\"text\",\"text\":\"b\u00e9\"}]}]}", true, &r) == MOE_OK, "%s", moe_last_error());
    CHECK(!strcmp(r.prompt, "<|user|>\na\nb\xc3\xa9\n<|assistant|>\n"), "text parts: %s", r.prompt);
    CHECK(!r.templated, "the markers are not the model's template");
    moe_gen_request_free(&r);
    expect_bad("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]}",
               true, "content[0]");
    expect_bad("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":5}]}]}", true,
               "text only");

    expect_bad("", false, "JSON");
    expect_bad("{\"prompt\":\"x\"", false, "JSON");
    expect_bad("[1,2]", false, "object");
    expect_bad("{\"prompt\":\"x\",\"prompt\":\"y\"}", false, NULL);
    expect_bad("{}", false, "prompt");
    expect_bad("{\"prompt\":7}", false, "prompt");
    expect_bad("{\"prompt\":[1,-2]}", false, "prompt[1]");
    expect_bad("{\"prompt\":\"x\",\"max_tokens\":-1}", false, "max_tokens");
    expect_bad("{\"prompt\":\"x\",\"seed\":9.223372036854775807e18}", false, "seed"); /* 2^63 as a real */
    expect_bad("{\"prompt\":\"x\",\"max_tokens\":0}", false, "max_tokens");
    expect_bad("{\"prompt\":\"x\",\"max_tokens\":1e30}", false, "max_tokens");
    expect_bad("{\"prompt\":\"x\",\"max_tokens\":2.5}", false, "max_tokens");
    expect_bad("{\"prompt\":\"x\",\"max_tokens\":\"5\"}", false, "max_tokens");
    expect_bad("{\"prompt\":\"x\",\"max_tokens\":99999999999999999999999}", false,
               "request body holds a number out of range at line 1 column 50 (too big integer): it is valid JSON");
    expect_bad("{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\","
               "\"schema\":{\"type\":\"integer\",\"maximum\":10000000000000000000}}}}", false,
               "holds a number out of range");
    expect_bad("{\"prompt\":\"x\",\"temperature\":-0.1}", false, "temperature");
    expect_bad("{\"prompt\":\"x\",\"temperature\":1e308}", false, "temperature");
    expect_bad("{\"prompt\":\"x\",\"temperature\":NaN}", false, "JSON");
    expect_bad("{\"prompt\":\"x\",\"top_p\":0}", false, "top_p");
    expect_bad("{\"prompt\":\"x\",\"top_p\":1.5}", false, "top_p");
    expect_bad("{\"prompt\":\"x\",\"top_k\":-5}", false, "top_k");
    expect_bad("{\"prompt\":\"x\",\"n\":17}", false, "'n'");
    expect_bad("{\"prompt\":\"x\",\"n\":0}", false, "'n'");
    struct moe_gen_request rn;
    CHECK(oai("{\"prompt\":\"x\",\"n\":16}", false, &rn) == MOE_OK && rn.n == 16, "n = 16: %s", moe_last_error());
    moe_gen_request_free(&rn);
    CHECK(oai("{\"prompt\":\"x\"}", false, &rn) == MOE_OK && rn.n == 1, "n defaults to 1");
    moe_gen_request_free(&rn);
    expect_bad("{\"prompt\":\"x\",\"timeout\":-1}", false, "timeout");
    expect_bad("{\"prompt\":\"x\",\"stream\":1}", false, "stream");
    expect_bad("{\"prompt\":\"x\",\"stop\":[\"\"]}", false, "stop");
    expect_bad("{\"prompt\":\"x\",\"stop\":5}", false, "stop");
    expect_bad("{\"prompt\":\"x\",\"stop\":[\"a\",7]}", false, "stop");
    expect_bad("{\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", false, "stop");
    expect_bad("{\"prompt\":\"x\",\"stop\":\"a\\u0000b\"}", false, NULL);
    expect_bad("{\"prompt\":\"\\ud800\"}", false, NULL);
    expect_bad("{\"messages\":[]}", true, "messages");
    expect_bad("{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", true, "role");
    expect_bad("{\"messages\":[{\"role\":\"user\"}]}", true, "content");
    /* a batch of one whose prompt is not one: named as such, not as a batch */
    expect_bad("{\"prompt\":[[\"a\"]]}", false, "'prompt[0]' must be a string or an array of token ids");
    /* tools and chat_template_kwargs are checked with the markers too */
    expect_bad("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":5}", true, "'tools'");
    expect_bad("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\"}]}", true,
               "'tools'[0]");
    expect_bad("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"chat_template_kwargs\":5}", true,
               "'chat_template_kwargs'");
    /* a role quoted at 32 bytes is cut between characters: 31 x 'a', then a two-byte character */
    expect_bad("{\"messages\":[{\"role\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\u00e9\",\"content\":\"x\"}]}", true,
               "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' is not");
    CHECK(moe_utf8_valid(moe_last_error(), strlen(moe_last_error())), "not UTF-8: %s", moe_last_error());
    CHECK(moe_utf8_cut("ab\xc3\xa9", 3) == 2 && moe_utf8_cut("ab\xc3\xa9", 4) == 4 && moe_utf8_cut("ab", 9) == 2,
          "moe_utf8_cut");
    /* protobuf strings with a NUL byte (protobuf-c would cut them short): refused, naming the field, at
     * the top (prompt = 1, stop = 10) and inside a nested message (KServe's parameter map) */
    {
        static const uint8_t prompt_nul[] = { 0x0a, 5, 'a', 'b', 0, 'c', 'd' };
        static const uint8_t stop_nul[] = { 0x0a, 1, 'x', 0x52, 3, 'R', 0, 'z' };
        static const uint8_t fine[] = { 0x0a, 4, 'a', 'b', 'c', 'd', 0x52, 1, 'R' };
        struct moe_gen_request g;
        CHECK(moe_req_parse_generate(prompt_nul, sizeof(prompt_nul), &g) == MOE_EINVAL &&
                  strstr(moe_last_error(), "'prompt' holds a NUL byte"),
              "a prompt with a NUL: %s", moe_last_error());
        CHECK(moe_req_parse_generate(stop_nul, sizeof(stop_nul), &g) == MOE_EINVAL &&
                  strstr(moe_last_error(), "'stop' holds a NUL byte"),
              "a stop sequence with a NUL: %s", moe_last_error());
        CHECK(moe_req_parse_generate(fine, sizeof(fine), &g) == MOE_OK && g.prompt && !strcmp(g.prompt, "abcd"),
              "the same without NUL: %s", moe_last_error());
        moe_gen_request_free(&g);
        /* ModelInferRequest: model_name = 1 "m", parameters = 4 {key "regex", value InferParameter {string_param = 3}} */
        static const uint8_t kserve_nul[] = { 0x0a, 1, 'm', 0x22, 14, 0x0a, 5, 'r', 'e', 'g', 'e', 'x', 0x12, 5,
                                              0x1a, 3, 'a', 0, 'b' };
        CHECK(moe_pb_nul_field(&inference__model_infer_request__descriptor, kserve_nul, sizeof(kserve_nul)) &&
                  !strcmp(moe_pb_nul_field(&inference__model_infer_request__descriptor, kserve_nul,
                                           sizeof(kserve_nul)), "string_param") &&
                  moe_req_parse_kserve(kserve_nul, sizeof(kserve_nul), &g) == MOE_EINVAL,
              "a KServe parameter with a NUL: %s", moe_last_error());
        CHECK(!moe_pb_nul_field(&moeflow__v1__generate_request__descriptor, fine, sizeof(fine)), "no NUL");
        /* a string that is not UTF-8, which proto3 strings are and protobuf-c does not check: refused naming
         * the field, where a choice of it was generated and a KServe id of it was echoed into a reply that
         * the client's parser refuses; choice = 21, a two-byte key */
        static const uint8_t choice_bad[] = { 0x0a, 1, 'x', 0xaa, 0x01, 1, 0xff, 0xaa, 0x01, 1, 'a' };
        CHECK(moe_req_parse_generate(choice_bad, sizeof(choice_bad), &g) == MOE_EINVAL &&
                  strstr(moe_last_error(), "GenerateRequest: 'choice' is not valid UTF-8"),
              "a choice not UTF-8: %s", moe_last_error());
        static const uint8_t prompt_bad[] = { 0x0a, 3, 'a', 0xc3, 'b' };
        CHECK(moe_req_parse_generate(prompt_bad, sizeof(prompt_bad), &g) == MOE_EINVAL &&
                  strstr(moe_last_error(), "'prompt' is not valid UTF-8"),
              "a prompt not UTF-8: %s", moe_last_error());
        /* ModelInferRequest: model_name = 1 "m", id = 3 (0xff), or a parameter's string_param (0xc3 cut short) */
        static const uint8_t kserve_id[] = { 0x0a, 1, 'm', 0x1a, 1, 0xff };
        CHECK(moe_req_parse_kserve(kserve_id, sizeof(kserve_id), &g) == MOE_EINVAL &&
                  strstr(moe_last_error(), "ModelInferRequest: 'id' is not valid UTF-8"),
              "a KServe id not UTF-8: %s", moe_last_error());
        static const uint8_t kserve_param[] = { 0x0a, 1, 'm', 0x22, 13, 0x0a, 5, 'r', 'e', 'g', 'e', 'x', 0x12, 4,
                                                0x1a, 2, 'a', 0xc3 };
        CHECK(moe_req_parse_kserve(kserve_param, sizeof(kserve_param), &g) == MOE_EINVAL &&
                  strstr(moe_last_error(), "'string_param' is not valid UTF-8"),
              "a KServe parameter not UTF-8: %s", moe_last_error());
        CHECK(moe_pb_check_text(&moeflow__v1__generate_request__descriptor, fine, sizeof(fine)) == MOE_OK,
              "UTF-8 without NUL: %s", moe_last_error());
    }
    /* add_special_tokens (vLLM's): the tokenizer's own around a text prompt unless false */
    REQUIRE(oai("{\"prompt\":\"x\"}", false, &r) == MOE_OK, "%s", moe_last_error());
    CHECK(!r.templated, "a text prompt gets the tokenizer's special tokens");
    moe_gen_request_free(&r);
    REQUIRE(oai("{\"prompt\":\"x\",\"add_special_tokens\":false}", false, &r) == MOE_OK, "%s", moe_last_error());
    CHECK(r.templated, "add_special_tokens false");
    moe_gen_request_free(&r);
    CHECK(oai("{\"prompt\":\"x\",\"add_special_tokens\":0}", false, &r) == MOE_EINVAL &&
              strstr(moe_last_error(), "'add_special_tokens'"),
          "add_special_tokens not a bool: %s", moe_last_error());
    /* ids the decoder cannot bound are checked against the vocabulary */
    REQUIRE(oai("{\"prompt\":[1,7],\"logit_bias\":{\"5\":1}}", false, &r) == MOE_OK, "%s", moe_last_error());
    CHECK(moe_gen_request_check_vocab(&r, 8, "prompt") == MOE_OK, "within the vocabulary: %s", moe_last_error());
    CHECK(moe_gen_request_check_vocab(&r, 7, "prompt") == MOE_ERANGE && strstr(moe_last_error(), "'prompt[1]' = 7"),
          "a prompt id outside: %s", moe_last_error());
    moe_gen_request_free(&r);
    REQUIRE(oai("{\"prompt\":[1],\"logit_bias\":{\"9000\":1}}", false, &r) == MOE_OK, "%s", moe_last_error());
    CHECK(moe_gen_request_check_vocab(&r, 8192, "prompt") == MOE_ERANGE &&
              !strcmp(moe_last_error(), "'logit_bias' token 9000 is outside the vocabulary [0, 8192)"),
          "a logit_bias id outside: %s", moe_last_error());
    moe_gen_request_free(&r);
}

static size_t pack_generate(const Moeflow__V1__GenerateRequest *m, uint8_t **buf)
{
    size_t n = moeflow__v1__generate_request__get_packed_size(m);
    *buf = malloc(n + 1);
    moeflow__v1__generate_request__pack(m, *buf);
    return n;
}

/* stop: parsed as a string or a list; the scanner releases text up to the
 * first completed stop sequence, holding back what could still begin one */
static void test_stop(void)
{
    struct moe_gen_request r;
    CHECK(oai("{\"prompt\":\"x\",\"stop\":\"\\n\\n\"}", false, &r) == MOE_OK && r.n_stop == 1 &&
              !strcmp(r.stop[0], "\n\n"),
          "stop string: %s", moe_last_error());
    moe_gen_request_free(&r);
    CHECK(oai("{\"prompt\":\"x\",\"stop\":[\"def \",\"\\nclass\"]}", false, &r) == MOE_OK && r.n_stop == 2 &&
              !strcmp(r.stop[1], "\nclass"),
          "stop list: %s", moe_last_error());
    moe_gen_request_free(&r);
    CHECK(oai("{\"prompt\":\"x\",\"stop\":[]}", false, &r) == MOE_OK && r.n_stop == 0, "empty stop list");
    moe_gen_request_free(&r);

    char *const seq[] = { "END", "\n\n" };
    struct moe_stop_scan sc;
    CHECK(moe_stop_scan_init(&sc, seq, 2) == MOE_OK, "scan init");
    const char *pieces[] = { "a = 1", "\n", "b = E", "N", "x\n", "\nrest" };
    char got[256] = "";
    int m = 0;
    size_t i;
    for (i = 0; i < sizeof pieces / sizeof pieces[0] && m == 0; i++) {
        char *o;
        size_t n;
        m = moe_stop_scan_feed(&sc, pieces[i], strlen(pieces[i]), NULL, 0, false, &o, &n);
        CHECK(o && strlen(o) == n, "feed %zu", i);
        if (i == 1)
            CHECK(n == 0, "a newline that may begin \\n\\n is held back");
        if (i == 3)
            CHECK(n == 0, "'EN' is held back");
        if (i == 4)
            CHECK(!strcmp(o, "ENx"), "'EN' released once it cannot be END: '%s'", o);
        strncat(got, o ? o : "", sizeof got - strlen(got) - 1);
        free(o);
    }
    CHECK(m == 1 && i == 6 && !strcmp(got, "a = 1\nb = ENx"), "stopped at \\n\\n: m %d after %zu, '%s'", m, i,
          got);
    moe_stop_scan_free(&sc);

    /* no match: everything comes out, the tail at the end */
    moe_stop_scan_init(&sc, seq, 2);
    char *o, *f;
    size_t n, nf;
    CHECK(moe_stop_scan_feed(&sc, "xE", 2, NULL, 0, false, &o, &n) == 0 && !strcmp(o, "x"), "tail E held");
    CHECK(moe_stop_scan_feed(&sc, "", 0, NULL, 0, true, &f, &nf) == 0 && nf == 1 && !strcmp(f, "E"),
          "the last piece releases the tail");
    free(o);
    free(f);
    /* a stop sequence inside one piece, and one spanning three */
    CHECK(moe_stop_scan_feed(&sc, "abENDcd", 7, NULL, 0, false, &o, &n) == 1 && !strcmp(o, "ab"), "inside one piece");
    free(o);
    moe_stop_scan_free(&sc);
    moe_stop_scan_init(&sc, seq, 2);
    CHECK(moe_stop_scan_feed(&sc, "qE", 2, NULL, 0, false, &o, &n) == 0 && n == 1, "piece 1");
    free(o);
    CHECK(moe_stop_scan_feed(&sc, "N", 1, NULL, 0, false, &o, &n) == 0 && n == 0, "piece 2");
    free(o);
    CHECK(moe_stop_scan_feed(&sc, "D!", 2, NULL, 0, false, &o, &n) == 1 && n == 0, "END across three pieces");
    free(o);
    moe_stop_scan_free(&sc);

    /* text ahead (a byte run the tokenizer's stream still holds): a stop sequence that completes in
     * it counts, the text before it included; one that does not leaves it untaken */
    moe_stop_scan_init(&sc, seq, 2);
    CHECK(moe_stop_scan_feed(&sc, "a", 1, "b\n", 2, false, &o, &n) == 0 && !strcmp(o, "a"),
          "ahead without a stop sequence: '%s'", o);
    free(o);
    CHECK(moe_stop_scan_feed(&sc, "", 0, "b\n\nc", 5, false, &o, &n) == 1 && !strcmp(o, "b"),
          "a stop sequence in the text ahead: '%s'", o);
    free(o);
    moe_stop_scan_free(&sc);
    moe_stop_scan_init(&sc, seq, 2);
    CHECK(moe_stop_scan_feed(&sc, "xE", 2, "N", 1, false, &o, &n) == 0 && !strcmp(o, "x"), "EN held");
    free(o);
    CHECK(moe_stop_scan_feed(&sc, "", 0, "ND", 2, false, &o, &n) == 1 && !strcmp(o, ""),
          "END across the held text and the text ahead: '%s'", o);
    free(o);
    moe_stop_scan_free(&sc);
}

static void test_generate_proto(void)
{
    Moeflow__V1__GenerateRequest m = MOEFLOW__V1__GENERATE_REQUEST__INIT;
    m.prompt = "hello";
    m.max_tokens = 3;
    uint8_t *b;
    size_t n = pack_generate(&m, &b);
    struct moe_gen_request r;
    REQUIRE(moe_req_parse_generate(b, n, &r) == MOE_OK, "%s", moe_last_error());
    CHECK(!strcmp(r.prompt, "hello") && r.max_tokens == 3 && r.sampling.top_p == 1.0f, "fields");
    moe_gen_request_free(&r);
    free(b);
    CHECK(moe_req_parse_generate(b ? (const uint8_t *)"\xff\xff\xff" : NULL, 3, &r) != MOE_OK,
          "malformed accepted");
    CHECK(strstr(moe_last_error(), "malformed") != NULL, "msg %s", moe_last_error());
    struct { float t, p; int k, mt; const char *field; } bad[] = {
        { NAN, 0, 0, 1, "temperature" }, { -1, 0, 0, 1, "temperature" }, { INFINITY, 0, 0, 1, "temperature" },
        { 0, NAN, 0, 1, "top_p" }, { 0, 2, 0, 1, "top_p" }, { 0, -0.5f, 0, 1, "top_p" },
        { 0, 0, -1, 1, "top_k" }, { 0, 0, 0, -4, "max_tokens" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(bad); i++) {
        m.temperature = bad[i].t;
        m.top_p = bad[i].p;
        m.top_k = bad[i].k;
        m.max_tokens = bad[i].mt;
        n = pack_generate(&m, &b);
        CHECK(moe_req_parse_generate(b, n, &r) != MOE_OK, "bad[%zu] accepted", i);
        CHECK(strstr(moe_last_error(), bad[i].field), "bad[%zu]: %s", i, moe_last_error());
        free(b);
    }
    Moeflow__V1__GenerateRequest e = MOEFLOW__V1__GENERATE_REQUEST__INIT;
    n = pack_generate(&e, &b);
    CHECK(moe_req_parse_generate(b, n, &r) != MOE_OK, "empty prompt accepted");
    free(b);
}

/* vLLM's stop_token_ids and min_tokens, JSON and GenerateRequest: kept, bad ones named (an index, the bound,
 * both token counts), ids checked against the vocabulary; the stop scanner lets no stop sequence end in
 * the text of the first min_tokens tokens, though one may begin there and end later */
static void test_stop_token_ids(void)
{
    struct moe_gen_request r;
    REQUIRE(oai("{\"prompt\":\"x\",\"stop_token_ids\":[7,0,7],\"min_tokens\":3,\"max_tokens\":5}", false, &r) ==
                MOE_OK, "%s", moe_last_error());
    CHECK(r.n_stop_token_ids == 3 && r.stop_token_ids[0] == 7 && r.stop_token_ids[1] == 0 && r.min_tokens == 3,
          "stop_token_ids %d, min_tokens %d", r.n_stop_token_ids, r.min_tokens);
    CHECK(moe_gen_request_check_vocab(&r, 8, "prompt") == MOE_OK, "within the vocabulary: %s", moe_last_error());
    CHECK(moe_gen_request_check_vocab(&r, 7, "prompt") == MOE_ERANGE &&
              !strcmp(moe_last_error(), "'stop_token_ids[0]' = 7 is outside the vocabulary [0, 7)"),
          "a stop id outside: %s", moe_last_error());
    moe_gen_request_free(&r);
    REQUIRE(oai("{\"prompt\":\"x\",\"stop_token_ids\":null,\"min_tokens\":null}", false, &r) == MOE_OK &&
                r.n_stop_token_ids == 0 && r.min_tokens == 0,
            "null: %s", moe_last_error());
    moe_gen_request_free(&r);
    REQUIRE(oai("{\"prompt\":\"x\",\"min_tokens\":40}", false, &r) == MOE_OK && r.min_tokens == 40,
            "min_tokens without max_tokens (the server checks it against its default): %s", moe_last_error());
    moe_gen_request_free(&r);
    REQUIRE(oai("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop_token_ids\":[2],\"min_tokens\":4,"
                "\"max_completion_tokens\":4}", true, &r) == MOE_OK && r.min_tokens == 4 && r.n_stop_token_ids == 1,
            "chat: %s", moe_last_error());
    moe_gen_request_free(&r);
    expect_bad("{\"prompt\":\"x\",\"stop_token_ids\":5}", false, "'stop_token_ids' must be an array");
    expect_bad("{\"prompt\":\"x\",\"stop_token_ids\":[1,-1]}", false, "'stop_token_ids[1]'");
    expect_bad("{\"prompt\":\"x\",\"stop_token_ids\":[1.5]}", false, "'stop_token_ids[0]'");
    expect_bad("{\"prompt\":\"x\",\"stop_token_ids\":[\"3\"]}", false, "'stop_token_ids[0]'");
    expect_bad("{\"prompt\":\"x\",\"min_tokens\":-1}", false, "'min_tokens'");
    expect_bad("{\"prompt\":\"x\",\"min_tokens\":1.5}", false, "'min_tokens'");
    expect_bad("{\"prompt\":\"x\",\"min_tokens\":6,\"max_tokens\":5}", false,
               "'min_tokens' = 6 is more than 'max_tokens' = 5");
    expect_bad("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"min_tokens\":3,\"max_completion_tokens\":2}",
               true, "'min_tokens' = 3 is more than 'max_completion_tokens' = 2");
    expect_bad("{\"prompt\":\"x\",\"echo\":true,\"max_tokens\":0,\"min_tokens\":1}", false, "'max_tokens' = 0");
    char big[1024] = "{\"prompt\":\"x\",\"stop_token_ids\":[";
    for (int i = 0; i <= MOE_MAX_STOP_TOKEN_IDS; i++)
        snprintf(big + strlen(big), sizeof(big) - strlen(big), "%s%d", i ? "," : "", i);
    strcat(big, "]}");
    expect_bad(big, false, "'stop_token_ids' has 65 ids, at most 64");

    Moeflow__V1__GenerateRequest m = MOEFLOW__V1__GENERATE_REQUEST__INIT;
    int32_t ids[MOE_MAX_STOP_TOKEN_IDS + 1] = { 9, 4 };
    m.prompt = "hello";
    m.max_tokens = 6;
    m.min_tokens = 6;
    m.n_stop_token_ids = 2;
    m.stop_token_ids = ids;
    uint8_t *b;
    size_t n = pack_generate(&m, &b);
    REQUIRE(moe_req_parse_generate(b, n, &r) == MOE_OK, "proto: %s", moe_last_error());
    CHECK(r.n_stop_token_ids == 2 && r.stop_token_ids[1] == 4 && r.min_tokens == 6, "proto fields");
    moe_gen_request_free(&r);
    free(b);
    struct { int n_ids, id1, min, max; const char *field; } bad[] = {
        { MOE_MAX_STOP_TOKEN_IDS + 1, 4, 0, 6, "stop_token_ids has 65 ids" }, { 2, -4, 0, 6, "stop_token_ids[1] = -4" },
        { 2, 4, 7, 6, "min_tokens = 7 must be in [0, max_tokens = 6]" }, { 2, 4, -1, 0, "min_tokens = -1" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(bad); i++) {
        m.n_stop_token_ids = (size_t)bad[i].n_ids;
        ids[1] = bad[i].id1;
        m.min_tokens = bad[i].min;
        m.max_tokens = bad[i].max;
        n = pack_generate(&m, &b);
        CHECK(moe_req_parse_generate(b, n, &r) == MOE_EINVAL && strstr(moe_last_error(), bad[i].field),
              "proto bad[%zu]: %s", i, moe_last_error());
        free(b);
    }

    char *seq[2] = { "END", "b" }, *o = NULL;
    struct moe_stop_scan sc;
    REQUIRE(moe_stop_scan_init(&sc, seq, 1) == MOE_OK, "scan init");
    sc.quiet = true; /* the first min_tokens tokens' text: a whole stop sequence in it passes */
    CHECK(moe_stop_scan_feed(&sc, "aEND", 4, NULL, 0, false, &o, &n) == 0 && !strcmp(o, "aEND"), "quiet END: %s", o);
    free(o);
    CHECK(moe_stop_scan_feed(&sc, "", 0, "END", 3, false, &o, &n) == 0 && n == 0, "quiet END ahead");
    free(o);
    CHECK(moe_stop_scan_feed(&sc, "xEN", 3, NULL, 0, false, &o, &n) == 0 && !strcmp(o, "x"), "EN held: %s", o);
    free(o);
    sc.quiet = false; /* past min_tokens: one that began in that text and ends now counts */
    CHECK(moe_stop_scan_feed(&sc, "D!", 2, NULL, 0, false, &o, &n) == 1 && n == 0, "END across min_tokens");
    free(o);
    moe_stop_scan_free(&sc);
    moe_stop_scan_init(&sc, seq, 2);
    sc.quiet = true; /* "b" whole in the quiet text passes, "E" held as the beginning of "END" */
    CHECK(moe_stop_scan_feed(&sc, "abE", 3, NULL, 0, false, &o, &n) == 0 && !strcmp(o, "ab"), "quiet b: %s", o);
    free(o);
    sc.quiet = false;
    CHECK(moe_stop_scan_feed(&sc, "Nb", 2, NULL, 0, false, &o, &n) == 1 && !strcmp(o, "EN"), "b after: %s", o);
    free(o);
    moe_stop_scan_free(&sc);
    char *nested[2] = { "abc", "b" };
    moe_stop_scan_init(&sc, nested, 2);
    sc.quiet = true; /* "b" whole inside the held beginning of "abc": it does not count later either */
    CHECK(moe_stop_scan_feed(&sc, "ab", 2, NULL, 0, false, &o, &n) == 0 && n == 0, "ab held");
    free(o);
    sc.quiet = false;
    CHECK(moe_stop_scan_feed(&sc, "x", 1, NULL, 0, false, &o, &n) == 0 && !strcmp(o, "abx"), "abx: %s", o);
    free(o);
    sc.quiet = true; /* the final feed keeps the last token's setting */
    CHECK(moe_stop_scan_feed(&sc, "yab", 3, NULL, 0, false, &o, &n) == 0 && !strcmp(o, "y"), "yab: %s", o);
    free(o);
    CHECK(moe_stop_scan_feed(&sc, "c", 1, NULL, 0, true, &o, &n) == 0 && !strcmp(o, "abc"), "abc at the end: %s", o);
    free(o);
    moe_stop_scan_free(&sc);
}

/* penalties, min_p and logit_bias: JSON values kept, bad ones named; the proto's fields likewise
 * (0 = off there), and its logit_bias entries read as OpenAI's map */
static void test_penalties(void)
{
    struct moe_gen_request r;
    REQUIRE(oai("{\"prompt\":\"x\",\"presence_penalty\":0.5,\"frequency_penalty\":-1.25,"
                "\"repetition_penalty\":1.2,\"min_p\":0.05,\"logit_bias\":{\"7\":-100,\"12\":2.5}}",
                false, &r) == MOE_OK, "penalties refused: %s", moe_last_error());
    CHECK(r.sampling.presence_penalty == 0.5f && r.sampling.frequency_penalty == -1.25f &&
              r.sampling.repetition_penalty == 1.2f && r.sampling.min_p == 0.05f,
          "penalties %g %g %g %g", r.sampling.presence_penalty, r.sampling.frequency_penalty,
          r.sampling.repetition_penalty, r.sampling.min_p);
    CHECK(r.sampling.n_logit_bias == 2 && r.sampling.logit_bias[0].id == 7 &&
              r.sampling.logit_bias[0].bias == -100.0f && r.sampling.logit_bias[1].id == 12 &&
              r.sampling.logit_bias[1].bias == 2.5f,
          "logit_bias %d entries", r.sampling.n_logit_bias);
    moe_gen_request_free(&r);
    REQUIRE(oai("{\"prompt\":\"x\",\"logit_bias\":null,\"presence_penalty\":null}", false, &r) == MOE_OK &&
                r.sampling.n_logit_bias == 0 && r.sampling.presence_penalty == 0,
            "null penalties: %s", moe_last_error());
    moe_gen_request_free(&r);
    /* positive values below the smallest float stay positive: top_p the most likely token alone, not a
     * refused 0; repetition_penalty not 0, its "off" */
    REQUIRE(oai("{\"prompt\":\"x\",\"top_p\":1e-300,\"repetition_penalty\":1e-300,\"min_p\":1e-300}", false, &r) ==
                MOE_OK, "tiny values refused: %s", moe_last_error());
    CHECK(r.sampling.top_p > 0 && r.sampling.repetition_penalty > 0 && r.sampling.min_p > 0 &&
              moe_sampling_validate(&r.sampling, 0) == MOE_OK,
          "tiny values %g %g %g: %s", (double)r.sampling.top_p, (double)r.sampling.repetition_penalty,
          (double)r.sampling.min_p, moe_last_error());
    moe_gen_request_free(&r);
    expect_bad("{\"prompt\":\"x\",\"presence_penalty\":2.5}", false, "presence_penalty");
    expect_bad("{\"prompt\":\"x\",\"frequency_penalty\":\"1\"}", false, "frequency_penalty");
    expect_bad("{\"prompt\":\"x\",\"repetition_penalty\":0}", false, "repetition_penalty");
    expect_bad("{\"prompt\":\"x\",\"min_p\":-0.1}", false, "min_p");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":[1]}", false, "logit_bias");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"abc\":1}}", false, "logit_bias");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"-1\":1}}", false, "logit_bias");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"99999999999\":1}}", false, "logit_bias");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"5\":101}}", false, "[-100, 100]");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"5\":\"1\"}}", false, "number");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"5\":1,\"05\":2}}", false, "twice");
    char big[8192] = "{\"prompt\":\"x\",\"logit_bias\":{";
    for (int i = 0; i <= MOE_MAX_LOGIT_BIAS; i++)
        snprintf(big + strlen(big), sizeof(big) - strlen(big), "%s\"%d\":1", i ? "," : "", i);
    strcat(big, "}}");
    expect_bad(big, false, "entries");

    Moeflow__V1__GenerateRequest m = MOEFLOW__V1__GENERATE_REQUEST__INIT;
    Moeflow__V1__LogitBias lb[2], *lbp[2] = { &lb[0], &lb[1] };
    for (int i = 0; i < 2; i++)
        moeflow__v1__logit_bias__init(&lb[i]);
    lb[0].token_id = 3;
    lb[0].bias = 4.5f;
    lb[1].token_id = 9;
    lb[1].bias = -2;
    m.prompt = "hello";
    m.presence_penalty = -0.5f;
    m.repetition_penalty = 1.5f;
    m.min_p = 0.1f;
    m.n_logit_bias = 2;
    m.logit_bias = lbp;
    uint8_t *b;
    size_t n = pack_generate(&m, &b);
    REQUIRE(moe_req_parse_generate(b, n, &r) == MOE_OK, "proto penalties: %s", moe_last_error());
    CHECK(r.sampling.presence_penalty == -0.5f && r.sampling.repetition_penalty == 1.5f && r.sampling.min_p == 0.1f &&
              r.sampling.n_logit_bias == 2 && r.sampling.logit_bias[1].id == 9 && r.sampling.logit_bias[1].bias == -2,
          "proto fields");
    moe_gen_request_free(&r);
    free(b);
    struct { float pres, rep, minp; int32_t id0, id1; float bias; const char *field; } bad[] = {
        { 3, 0, 0, 3, 9, 1, "presence_penalty" }, { 0, -1, 0, 3, 9, 1, "repetition_penalty" },
        { 0, 0, 2, 3, 9, 1, "min_p" }, { 0, 0, NAN, 3, 9, 1, "min_p" }, { 0, 0, 0, 3, 3, 1, "twice" },
        { 0, 0, 0, -3, 9, 1, "token id" }, { 0, 0, 0, 3, 9, 200, "[-100, 100]" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(bad); i++) {
        m.presence_penalty = bad[i].pres;
        m.repetition_penalty = bad[i].rep;
        m.min_p = bad[i].minp;
        lb[0].token_id = bad[i].id0;
        lb[1].token_id = bad[i].id1;
        lb[1].bias = bad[i].bias;
        n = pack_generate(&m, &b);
        CHECK(moe_req_parse_generate(b, n, &r) != MOE_OK, "proto bad[%zu] accepted", i);
        CHECK(strstr(moe_last_error(), bad[i].field), "proto bad[%zu]: %s", i, moe_last_error());
        free(b);
    }
}

/* response_format and GenerateRequest.json_schema: a schema compiled onto the request (freed with it), a
 * bad one refused with the place and keyword named. */
static void test_response_format(void)
{
    struct moe_gen_request r;
    REQUIRE(oai("{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"p\","
                "\"strict\":true,\"schema\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}}}}}}",
                false, &r) == MOE_OK, "json_schema refused: %s", moe_last_error());
    CHECK(r.json_schema && !r.json_object, "json_schema not compiled");
    moe_gen_request_free(&r);
    CHECK(!r.json_schema, "json_schema left after free");
    REQUIRE(oai("{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_object\"}}", false, &r) == MOE_OK,
            "json_object refused: %s", moe_last_error());
    CHECK(r.json_object && !r.json_schema, "json_object");
    moe_gen_request_free(&r);
    expect_bad("{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_schema\"}}", false, "\"schema\"");
    expect_bad("{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"schema\":"
               "{\"type\":\"object\",\"properties\":{\"e\":{\"type\":\"string\",\"format\":\"ipv6\"}}}}}}",
               false, "at '/properties/e': format 'ipv6' is not supported");
    expect_bad("{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":3,"
               "\"schema\":{\"type\":\"object\"}}}}", false, "'name'");
    expect_bad("{\"prompt\":\"x\",\"response_format\":{\"type\":\"regex\"}}", false, "'regex' is not supported");
    /* vLLM's structured outputs */
    const char *so_ok[] = { "\"guided_json\":{\"type\":\"object\"}", "\"guided_json\":\"{\\\"enum\\\":[1,2]}\"",
                            "\"structured_outputs\":{\"json\":{\"type\":\"array\"}}", "\"guided_choice\":[\"a\",\"b\"]",
                            "\"structured_outputs\":{\"choice\":[\"yes\"]}", "\"guided_regex\":\"[a-z]+\\\\d\"",
                            "\"structured_outputs\":{\"regex\":\"(yes|no)!\"}",
                            "\"guided_grammar\":\"root ::= [a-z]+ \\\"!\\\"\"",
                            "\"structured_outputs\":{\"grammar\":\"root ::= (\\\"yes\\\" | \\\"no\\\")\\n\"}",
                            "\"grammar\":\"root ::= x+\\nx ::= [0-9]\"" };
    char body[256];
    for (size_t i = 0; i < MOE_ARRAY_LEN(so_ok); i++) {
        snprintf(body, sizeof(body), "{\"prompt\":\"x\",%s}", so_ok[i]);
        REQUIRE(oai(body, false, &r) == MOE_OK, "%s: %s", so_ok[i], moe_last_error());
        CHECK(r.json_schema && !r.json_object, "%s: no schema", so_ok[i]);
        moe_gen_request_free(&r);
    }
    expect_bad("{\"prompt\":\"x\",\"guided_regex\":\"(a\"}", false, "'guided_regex': pattern '(a': a '(' without");
    expect_bad("{\"prompt\":\"x\",\"guided_regex\":[\"a\"]}", false, "'guided_regex' must be a string");
    expect_bad("{\"prompt\":\"x\",\"guided_grammar\":\"root ::= x\"}", false,
               "'guided_grammar': grammar, line 1 column 10: rule 'x' is used but never defined");
    expect_bad("{\"prompt\":\"x\",\"grammar\":5}", false, "'grammar' must be a string (a grammar in GBNF)");
    expect_bad("{\"prompt\":\"x\",\"grammar\":\"root ::= \\\"a\\\"\",\"guided_regex\":\"a\"}", false,
               "together: give one");
    expect_bad("{\"prompt\":\"x\",\"structural_tag\":{}}", false,
               "'structural_tag': structural tag: 'structures' must be an array");
    expect_bad("{\"prompt\":\"x\",\"structural_tag\":3}", false, "'structural_tag' must be an object");
    expect_bad("{\"prompt\":\"x\",\"response_format\":{\"type\":\"structural_tag\",\"structures\":[{\"begin\":"
               "\"<g>\",\"schema\":{\"type\":\"object\"},\"end\":\"\"}],\"triggers\":[\"<f\"]}}", false,
               "'response_format': structural tag: structures[0]'s begin '<g>' starts with no trigger");
    /* a structural tag three ways: its JSON text, the object, response_format */
    static const char tag[] = "{\"structures\":[{\"begin\":\"<f>\",\"schema\":{\"type\":\"object\"},\"end\":\"</f>\"}],"
                              "\"triggers\":[\"<f\"]}";
    json_t *tag_str = json_string(tag);
    char *esc = json_dumps(tag_str, JSON_ENCODE_ANY);
    json_decref(tag_str);
    REQUIRE(esc, "out of memory");
    char forms[3][1024];
    snprintf(forms[0], sizeof(forms[0]), "{\"prompt\":\"x\",\"structured_outputs\":{\"structural_tag\":%s}}", esc);
    snprintf(forms[1], sizeof(forms[1]), "{\"prompt\":\"x\",\"structural_tag\":%s}", tag);
    snprintf(forms[2], sizeof(forms[2]), "{\"prompt\":\"x\",\"response_format\":{\"type\":\"structural_tag\",%s}",
             tag + 1);
    free(esc);
    for (size_t i = 0; i < MOE_ARRAY_LEN(forms); i++) {
        REQUIRE(oai(forms[i], false, &r) == MOE_OK, "%s: %s", forms[i], moe_last_error());
        CHECK(r.json_schema && moe_json_schema_raw(r.json_schema) && !r.json_object, "%s: no structural tag", forms[i]);
        moe_gen_request_free(&r);
    }
    /* JSON mode and no whitespace through structured_outputs; a whitespace pattern is refused by name */
    REQUIRE(oai("{\"prompt\":\"x\",\"structured_outputs\":{\"json_object\":true,\"disable_any_whitespace\":true}}",
                false, &r) == MOE_OK, "json_object without whitespace: %s", moe_last_error());
    CHECK(r.json_object && r.json_schema, "json_object without whitespace: no schema of its own");
    moe_gen_request_free(&r);
    REQUIRE(oai("{\"prompt\":\"x\",\"structured_outputs\":{\"json_object\":true}}", false, &r) == MOE_OK,
            "structured_outputs.json_object: %s", moe_last_error());
    CHECK(r.json_object && !r.json_schema, "structured_outputs.json_object: not JSON mode");
    moe_gen_request_free(&r);
    expect_bad("{\"prompt\":\"x\",\"guided_whitespace_pattern\":\" ?\",\"guided_json\":{}}", false,
               "'guided_whitespace_pattern' is not supported");
    expect_bad("{\"prompt\":\"x\",\"structured_outputs\":{\"json_object\":true,\"regex\":\"a\"}}", false,
               "'regex' and 'json_object' together");
    expect_bad("{\"prompt\":\"x\",\"structured_outputs\":{\"disable_any_whitespace\":1}}", false,
               "'disable_any_whitespace' must be true or false");
    expect_bad("{\"prompt\":\"x\",\"structured_outputs\":{\"grammar\":\"root ::= a\\na ::= a \\\"b\\\"\"}}", false,
               "'grammar': grammar, line 2 column 1: left recursion");
    expect_bad("{\"prompt\":\"x\",\"guided_choice\":[\"a\",\"ab\"]}", false, "begins another");
    expect_bad("{\"prompt\":\"x\",\"guided_choice\":[\"a\",3]}", false, "'guided_choice'[1]");
    REQUIRE(oai("{\"prompt\":\"x\",\"guided_choice\":[\"ab\",\"ab\"]}", false, &r) == MOE_OK && r.json_schema,
            "a repeated guided_choice: %s", moe_last_error());
    moe_gen_request_free(&r);
    expect_bad("{\"prompt\":\"x\",\"guided_json\":{\"type\":\"string\",\"format\":\"ipv6\"}}", false,
               "'guided_json': JSON schema at '/': format 'ipv6'");
    expect_bad("{\"prompt\":\"x\",\"guided_json\":{},\"structured_outputs\":{\"choice\":[\"a\"]}}", false, "together");

    Moeflow__V1__GenerateRequest m = MOEFLOW__V1__GENERATE_REQUEST__INIT;
    m.prompt = "hello";
    m.json_schema = "{\"enum\":[\"yes\",\"no\"]}";
    uint8_t *b;
    size_t n = pack_generate(&m, &b);
    REQUIRE(moe_req_parse_generate(b, n, &r) == MOE_OK, "proto json_schema: %s", moe_last_error());
    CHECK(r.json_schema != NULL, "proto json_schema not compiled");
    moe_gen_request_free(&r);
    free(b);
    m.json_schema = "{\"type\":\"integer\"}";
    n = pack_generate(&m, &b);
    CHECK(moe_req_parse_generate(b, n, &r) == MOE_EINVAL && strstr(moe_last_error(), "json_schema: ") &&
              strstr(moe_last_error(), "bare number"),
          "proto bad json_schema: %s", moe_last_error());
    free(b);
    /* a regular expression, a choice; one at a time */
    m.json_schema = "";
    m.regex = "[a-z]+!";
    n = pack_generate(&m, &b);
    REQUIRE(moe_req_parse_generate(b, n, &r) == MOE_OK && r.json_schema, "proto regex: %s", moe_last_error());
    moe_gen_request_free(&r);
    free(b);
    char *texts[] = { "yes", "no" };
    m.regex = "";
    m.choice = texts;
    m.n_choice = 2;
    n = pack_generate(&m, &b);
    REQUIRE(moe_req_parse_generate(b, n, &r) == MOE_OK && r.json_schema, "proto choice: %s", moe_last_error());
    moe_gen_request_free(&r);
    free(b);
    m.regex = "(a";
    n = pack_generate(&m, &b);
    CHECK(moe_req_parse_generate(b, n, &r) == MOE_EINVAL && strstr(moe_last_error(), "give one"),
          "proto regex and choice: %s", moe_last_error());
    free(b);
    m.n_choice = 0;
    n = pack_generate(&m, &b);
    CHECK(moe_req_parse_generate(b, n, &r) == MOE_EINVAL && strstr(moe_last_error(), "regex: pattern '(a'"),
          "proto bad regex: %s", moe_last_error());
    free(b);
    texts[1] = "yes"; /* the same text twice, as over HTTP */
    m.regex = "";
    m.n_choice = 2;
    n = pack_generate(&m, &b);
    REQUIRE(moe_req_parse_generate(b, n, &r) == MOE_OK && r.json_schema, "proto repeated choice: %s",
            moe_last_error());
    moe_gen_request_free(&r);
    free(b);
    texts[1] = "yess";
    m.regex = "";
    m.n_choice = 2;
    n = pack_generate(&m, &b);
    CHECK(moe_req_parse_generate(b, n, &r) == MOE_EINVAL && strstr(moe_last_error(), "choice: ") &&
              strstr(moe_last_error(), "begins another"),
          "proto bad choice: %s", moe_last_error());
    free(b);
    /* a grammar, alone or with another */
    m.n_choice = 0;
    m.grammar = "root ::= [a-z]+ \"!\"";
    n = pack_generate(&m, &b);
    REQUIRE(moe_req_parse_generate(b, n, &r) == MOE_OK && r.json_schema && moe_json_schema_raw(r.json_schema),
            "proto grammar: %s", moe_last_error());
    moe_gen_request_free(&r);
    free(b);
    m.regex = "a";
    n = pack_generate(&m, &b);
    CHECK(moe_req_parse_generate(b, n, &r) == MOE_EINVAL && strstr(moe_last_error(), "give one"),
          "proto regex and grammar: %s", moe_last_error());
    free(b);
    m.regex = "";
    m.grammar = "";
    m.structural_tag = "{\"structures\":[{\"begin\":\"<f>\",\"schema\":{\"type\":\"object\"},\"end\":\"\"}],"
                       "\"triggers\":[\"<f\"]}";
    n = pack_generate(&m, &b);
    REQUIRE(moe_req_parse_generate(b, n, &r) == MOE_OK && r.json_schema && moe_json_schema_raw(r.json_schema),
            "proto structural_tag: %s", moe_last_error());
    moe_gen_request_free(&r);
    free(b);
    m.structural_tag = "{\"structures\":[]}";
    n = pack_generate(&m, &b);
    CHECK(moe_req_parse_generate(b, n, &r) == MOE_EINVAL && strstr(moe_last_error(), "structural_tag: structural tag"),
          "proto bad structural_tag: %s", moe_last_error());
    free(b);
    m.structural_tag = "";
    m.grammar = "root ::= [a-z";
    n = pack_generate(&m, &b);
    CHECK(moe_req_parse_generate(b, n, &r) == MOE_EINVAL &&
              strstr(moe_last_error(), "grammar: grammar, line 1 column 10: a character class without"),
          "proto bad grammar: %s", moe_last_error());
    free(b);
}

/* tool_choice: a named function or "required" compiles the tools into the request's schema (their
 * $defs merged), auto leaves the text; conflicts are named. */
static void test_tool_choice(void)
{
    const char *tools = "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"$defs\":"
                        "{\"U\":{\"enum\":[\"c\",\"f\"]}},\"type\":\"object\",\"properties\":{\"u\":{\"$ref\":"
                        "\"#/$defs/U\"}}}}},{\"type\":\"function\",\"function\":{\"name\":\"g\"}}]";
    char body[1024];
    struct moe_gen_request r;
    const char *choices[] = { "\"required\"", "{\"type\":\"function\",\"function\":{\"name\":\"f\"}}", "\"auto\"",
                              "\"none\"" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(choices); i++) {
        snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],%s,\"tool_choice\":%s}",
                 tools, choices[i]);
        REQUIRE(oai(body, true, &r) == MOE_OK, "tool_choice %s: %s", choices[i], moe_last_error());
        CHECK(r.tool_call == (i < 2) && (r.json_schema != NULL) == (i < 2), "tool_choice %s", choices[i]);
        moe_gen_request_free(&r);
    }
    snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":"
             "\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"$defs\":{\"U\":{\"type\":\"string\"}}}}},"
             "{\"type\":\"function\",\"function\":{\"name\":\"g\",\"parameters\":{\"$defs\":{\"U\":{\"type\":"
             "\"integer\"}}}}}],\"tool_choice\":\"required\"}");
    expect_bad(body, true, "define '$defs/U' differently");
    snprintf(body, sizeof(body), "{\"prompt\":\"x\",%s,\"tool_choice\":\"required\"}", tools);
    expect_bad(body, false, "chat completions");
}

/* <tool_call> blocks in a reply: parsed into tool_calls with the content before them; text that is
 * not a call stays text; the streaming release holds back what could begin the tag. */
static void test_tool_blocks(void)
{
    const char *t = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
                    "</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": \"{\\\"tz\\\": \\\"CET\\\"}\"}";
    size_t content = 99;
    json_t *calls = moe_tool_calls_parse(t, strlen(t), MOE_TOOLS_HERMES, NULL, "call_x_0", &content);
    REQUIRE(calls && json_array_size(calls) == 2, "two calls: %s", calls ? json_dumps(calls, 0) : "NULL");
    json_t *f0 = json_object_get(json_array_get(calls, 0), "function"), *f1 = json_object_get(json_array_get(calls, 1), "function");
    CHECK(content == strlen("Let me check.\n"), "content %zu", content);
    CHECK(!strcmp(json_string_value(json_object_get(f0, "name")), "get_weather") &&
              !strcmp(json_string_value(json_object_get(f0, "arguments")), "{\"city\":\"Paris\"}") &&
              !strcmp(json_string_value(json_object_get(json_array_get(calls, 0), "id")), "call_x_0_0"),
          "first call");
    CHECK(!strcmp(json_string_value(json_object_get(f1, "name")), "get_time") && /* no closing tag: cut short */
              !strcmp(json_string_value(json_object_get(f1, "arguments")), "{\"tz\": \"CET\"}") &&
              !strcmp(json_string_value(json_object_get(json_array_get(calls, 1), "id")), "call_x_0_1"),
          "second call");
    json_decref(calls);
    const char *not_calls[] = { "no tags here", "<tool_call>{\"name\": 3}</tool_call>",
                                "<tool_call>not json</tool_call>", "<tool_call>{\"name\": \"f\"}</tool_call>",
                                "<tool_call>{\"name\": \"f\", \"arguments\": \"not json\"}</tool_call>" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(not_calls); i++)
        CHECK(!moe_tool_calls_parse(not_calls[i], strlen(not_calls[i]), MOE_TOOLS_HERMES, NULL, "c", &content),
              "'%s' parsed", not_calls[i]);
    static const struct {
        const char *text;
        size_t out;
        bool found;
    } rel[] = { { "hello", 5, false }, { "hello <", 6, false }, { "hello <tool_ca", 6, false },
                { "hello <tool_call>{", 6, true }, { "a < b", 5, false }, { "<|RE|>", 6, false }, { "", 0, false } };
    for (size_t i = 0; i < MOE_ARRAY_LEN(rel); i++) {
        bool found = !rel[i].found;
        size_t out = moe_tool_calls_release(rel[i].text, strlen(rel[i].text), MOE_TOOLS_HERMES, &found);
        CHECK(out == rel[i].out && found == rel[i].found, "release '%s': %zu %d", rel[i].text, out, found);
    }
}

/* Mistral's convention: [TOOL_CALLS] and a JSON array of calls (or one call) ending the reply. */
static void test_tool_calls_mistral(void)
{
    const char *t = "Checking.[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}},"
                    " {\"name\": \"get_time\", \"arguments\": {}, \"id\": \"a1b2c3d4e\"}]\n";
    size_t content = 99;
    json_t *calls = moe_tool_calls_parse(t, strlen(t), MOE_TOOLS_MISTRAL, NULL, "call_m", &content);
    REQUIRE(calls && json_array_size(calls) == 2, "two calls: %s", calls ? json_dumps(calls, 0) : "NULL");
    json_t *f0 = json_object_get(json_array_get(calls, 0), "function"), *f1 = json_object_get(json_array_get(calls, 1), "function");
    CHECK(content == strlen("Checking."), "content %zu", content);
    CHECK(!strcmp(json_string_value(json_object_get(f0, "arguments")), "{\"city\":\"Paris\"}") &&
              !strcmp(json_string_value(json_object_get(f1, "name")), "get_time") &&
              !strcmp(json_string_value(json_object_get(json_array_get(calls, 1), "id")), "call_m_1"),
          "the calls");
    json_decref(calls);
    t = "[TOOL_CALLS]{\"name\": \"f\", \"arguments\": {\"x\": [1]}}";
    calls = moe_tool_calls_parse(t, strlen(t), MOE_TOOLS_MISTRAL, NULL, "c", &content);
    CHECK(calls && json_array_size(calls) == 1 && content == 0, "one call, no array");
    json_decref(calls);
    const char *not_calls[] = { "no tag", "[TOOL_CALLS] not json", "[TOOL_CALLS] [{\"name\": 1}]", "[TOOL_CALLS] []",
                                "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {}}] and more text",
                                "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(not_calls); i++)
        CHECK(!moe_tool_calls_parse(not_calls[i], strlen(not_calls[i]), MOE_TOOLS_MISTRAL, NULL, "c", &content),
              "'%s' parsed", not_calls[i]);
    bool found;
    CHECK(moe_tool_calls_release("ok [TOOL_C", 10, MOE_TOOLS_MISTRAL, &found) == 3 && !found, "a partial tag held");
    CHECK(moe_tool_calls_release("ok [TOOL_CALLS] [", 17, MOE_TOOLS_MISTRAL, &found) == 3 && found, "the tag found");
    CHECK(moe_tool_calls_release("a [b] c", 7, MOE_TOOLS_MISTRAL, &found) == 7 && !found, "brackets are text");
}

/* DeepSeek's markers: V3.1's "NAME<sep>{...}" and V3's "function<sep>NAME" with a ```json fence, several
 * calls between the outer markers; anything else stays text. */
static void test_tool_calls_deepseek(void)
{
#define CB MOE_DS_CALLS_BEGIN
#define CE MOE_DS_CALLS_END
#define B MOE_DS_CALL_BEGIN
#define E MOE_DS_CALL_END
#define S MOE_DS_SEP
    const char *t = "Checking." CB B "get_weather" S "{\"city\": \"Paris\"}" E B "get_time" S "{}" E CE;
    size_t content = 99;
    json_t *calls = moe_tool_calls_parse(t, strlen(t), MOE_TOOLS_DEEPSEEK, NULL, "call_d", &content);
    REQUIRE(calls && json_array_size(calls) == 2, "two calls: %s", calls ? json_dumps(calls, 0) : "NULL");
    json_t *f0 = json_object_get(json_array_get(calls, 0), "function"), *f1 = json_object_get(json_array_get(calls, 1), "function");
    CHECK(content == strlen("Checking."), "content %zu", content);
    CHECK(!strcmp(json_string_value(json_object_get(f0, "name")), "get_weather") &&
              !strcmp(json_string_value(json_object_get(f0, "arguments")), "{\"city\":\"Paris\"}") &&
              !strcmp(json_string_value(json_object_get(f1, "name")), "get_time") &&
              !strcmp(json_string_value(json_object_get(json_array_get(calls, 1), "id")), "call_d_1"),
          "the calls");
    json_decref(calls);
    t = CB B "function" S "lookup\n```json\n{\"q\": [1, 2]}\n```" E CE;
    calls = moe_tool_calls_parse(t, strlen(t), MOE_TOOLS_DEEPSEEK, NULL, "c", &content);
    f0 = json_object_get(json_array_get(calls, 0), "function");
    CHECK(calls && json_array_size(calls) == 1 && content == 0 &&
              !strcmp(json_string_value(json_object_get(f0, "name")), "lookup") &&
              !strcmp(json_string_value(json_object_get(f0, "arguments")), "{\"q\":[1,2]}"),
          "V3's fenced call: %s", calls ? json_dumps(calls, 0) : "NULL");
    json_decref(calls);
    t = CB B "f" S "{\"a\": 1}" E; /* cut short before the closing marker */
    calls = moe_tool_calls_parse(t, strlen(t), MOE_TOOLS_DEEPSEEK, NULL, "c", &content);
    CHECK(calls && json_array_size(calls) == 1, "a call without the closing marker");
    json_decref(calls);
    const char *not_calls[] = { "no tag", CB, CB CE, CB B "f" S "not json" E CE, CB B "f" S "{\"a\": 1}" CE,
                                CB B "f {\"a\": 1}" E CE, CB B S "{}" E CE, CB B "function" S "f\n{}" E CE,
                                CB B "function" S "f\n```json\n{}" E CE, CB "text" B "f" S "{}" E CE };
    for (size_t i = 0; i < MOE_ARRAY_LEN(not_calls); i++)
        CHECK(!moe_tool_calls_parse(not_calls[i], strlen(not_calls[i]), MOE_TOOLS_DEEPSEEK, NULL, "c", &content),
              "'%s' parsed", not_calls[i]);
    bool found;
    char partial[64];
    snprintf(partial, sizeof(partial), "ok %.10s", CB);
    CHECK(moe_tool_calls_release(partial, strlen(partial), MOE_TOOLS_DEEPSEEK, &found) == 3 && !found,
          "a partial marker held");
    CHECK(moe_tool_calls_release("ok " CB B, strlen("ok " CB B), MOE_TOOLS_DEEPSEEK, &found) == 3 && found,
          "the marker found");
#undef CB
#undef CE
#undef B
#undef E
#undef S
}

/* Qwen3-Coder's XML calls: parameters are text, typed by the tool's schema (a string stays a string even
 * when it reads as a number; a number, boolean or object that does not parse stays text), untyped ones
 * read as JSON when they are; anything else inside the tags leaves the reply text. */
static void test_tool_calls_qwen_xml(void)
{
    json_t *tools = json_loads("[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": "
                               "{\"type\": \"object\", \"properties\": {\"zip\": {\"type\": \"string\"}, \"days\": "
                               "{\"type\": \"integer\"}, \"metric\": {\"type\": \"boolean\"}, \"at\": {\"type\": \"object\"}, "
                               "\"n\": {\"type\": \"number\"}}}}}]", 0, NULL);
    REQUIRE(tools, "tools JSON");
    const char *t = "Let me look.\n<tool_call>\n<function=get_weather>\n<parameter=zip>\n02139\n</parameter>\n"
                    "<parameter=days>\n3\n</parameter>\n<parameter=metric>\ntrue\n</parameter>\n<parameter=at>\n"
                    "{\"lat\": 1.5}\n</parameter>\n<parameter=n>\nmany\n</parameter>\n<parameter=note>\n[1, 2]\n</parameter>\n"
                    "<parameter=city>\nNew York\n</parameter>\n</function>\n</tool_call>";
    size_t content = 99;
    json_t *calls = moe_tool_calls_parse(t, strlen(t), MOE_TOOLS_QWEN_XML, tools, "call_q", &content);
    REQUIRE(calls && json_array_size(calls) == 1, "one call: %s", calls ? json_dumps(calls, 0) : "NULL");
    json_t *f = json_object_get(json_array_get(calls, 0), "function");
    json_t *args = json_loads(json_string_value(json_object_get(f, "arguments")), 0, NULL);
    char *a = json_dumps(args, JSON_COMPACT | JSON_SORT_KEYS);
    CHECK(content == strlen("Let me look.\n") && !strcmp(json_string_value(json_object_get(f, "name")), "get_weather") &&
              a && !strcmp(a, "{\"at\":{\"lat\":1.5},\"city\":\"New York\",\"days\":3,\"metric\":true,\"n\":\"many\","
                              "\"note\":[1,2],\"zip\":\"02139\"}"),
          "typed arguments: %s", a ? a : "NULL");
    free(a);
    json_decref(args);
    json_decref(calls);
    const char *not_calls[] = { "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
                                "<tool_call><function=f><parameter=x>1</parameter></tool_call>",
                                "<tool_call><function=><parameter=x>1</parameter></function></tool_call>",
                                "<tool_call><function=f>text<parameter=x>1</parameter></function></tool_call>",
                                "<tool_call><function=f><parameter=x>1</function></tool_call>" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(not_calls); i++)
        CHECK(!moe_tool_calls_parse(not_calls[i], strlen(not_calls[i]), MOE_TOOLS_QWEN_XML, tools, "c", &content),
              "'%s' parsed", not_calls[i]);
    t = "<tool_call>\n<function=ping>\n</function>\n</tool_call>"; /* no parameters, an unknown tool */
    calls = moe_tool_calls_parse(t, strlen(t), MOE_TOOLS_QWEN_XML, tools, "c", &content);
    f = json_object_get(json_array_get(calls, 0), "function");
    CHECK(calls && !strcmp(json_string_value(json_object_get(f, "arguments")), "{}"), "a call without parameters");
    json_decref(calls);
    json_decref(tools);
}

/* GLM-4.5's calls: the name on the block's first line, then <arg_key>/<arg_value> pairs typed by the tool's
 * schema as for Qwen3-Coder's XML; a name that is not one (JSON, spaces) or a pair cut short leaves the reply
 * text. */
static void test_tool_calls_glm(void)
{
    json_t *tools = json_loads("[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": "
                               "{\"type\": \"object\", \"properties\": {\"zip\": {\"type\": \"string\"}, \"days\": "
                               "{\"type\": \"integer\"}, \"at\": {\"type\": \"object\"}}}}}]", 0, NULL);
    REQUIRE(tools, "tools JSON");
    const char *t = "I will check.<tool_call>get_weather\n<arg_key>zip</arg_key>\n<arg_value>02139</arg_value>\n"
                    "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n<arg_key>at</arg_key>\n"
                    "<arg_value>{\"lat\": 1.5}</arg_value>\n<arg_key>city</arg_key>\n<arg_value>New York</arg_value>\n"
                    "</tool_call>\n<tool_call>ping</tool_call>";
    size_t content = 99;
    json_t *calls = moe_tool_calls_parse(t, strlen(t), MOE_TOOLS_GLM, tools, "call_g", &content);
    REQUIRE(calls && json_array_size(calls) == 2, "two calls: %s", calls ? json_dumps(calls, 0) : "NULL");
    json_t *f = json_object_get(json_array_get(calls, 0), "function");
    json_t *args = json_loads(json_string_value(json_object_get(f, "arguments")), 0, NULL);
    char *a = json_dumps(args, JSON_COMPACT | JSON_SORT_KEYS);
    CHECK(content == strlen("I will check.") && !strcmp(json_string_value(json_object_get(f, "name")), "get_weather") &&
              a && !strcmp(a, "{\"at\":{\"lat\":1.5},\"city\":\"New York\",\"days\":3,\"zip\":\"02139\"}") &&
              !strcmp(json_string_value(json_object_get(json_array_get(calls, 0), "id")), "call_g_0"),
          "typed arguments: %s", a ? a : "NULL");
    free(a);
    json_decref(args);
    f = json_object_get(json_array_get(calls, 1), "function");
    CHECK(!strcmp(json_string_value(json_object_get(f, "name")), "ping") &&
              !strcmp(json_string_value(json_object_get(f, "arguments")), "{}"),
          "a call without arguments");
    json_decref(calls);
    const char *not_calls[] = { "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
                                "<tool_call>\n</tool_call>",
                                "<tool_call>get weather\n<arg_key>x</arg_key><arg_value>1</arg_value></tool_call>",
                                "<tool_call>f\n<arg_key>x</arg_key>1</tool_call>",
                                "<tool_call>f\n<arg_key></arg_key><arg_value>1</arg_value></tool_call>",
                                "<tool_call>f\n<arg_key>x</arg_key><arg_value>1</tool_call>",
                                "<tool_call>f\ntext<arg_key>x</arg_key><arg_value>1</arg_value></tool_call>",
                                "<tool_call>f\n<arg_key>x</arg_key><arg_value>1</arg_value>" /* cut short */ };
    for (size_t i = 0; i < MOE_ARRAY_LEN(not_calls); i++)
        CHECK(!moe_tool_calls_parse(not_calls[i], strlen(not_calls[i]), MOE_TOOLS_GLM, tools, "c", &content),
              "'%s' parsed", not_calls[i]);
    json_decref(tools);
}

/* MiniMax-M2's calls: invokes in closed blocks, several in one block and across blocks, parameters typed by
 * the tool's schema; a block cut short, an empty one, a name with a quote or text between invokes leave the
 * reply text. */
static void test_tool_calls_minimax(void)
{
    json_t *tools = json_loads("[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": "
                               "{\"type\": \"object\", \"properties\": {\"zip\": {\"type\": \"string\"}, \"days\": "
                               "{\"type\": \"integer\"}}}}}]", 0, NULL);
    REQUIRE(tools, "tools JSON");
    const char *t = "<think>x</think>Checking.\n<minimax:tool_call>\n<invoke name=\"get_weather\">\n"
                    "<parameter name=\"zip\">02139</parameter>\n<parameter name=\"days\">\n3\n</parameter>\n"
                    "<parameter name=\"unit\">\"C\"</parameter>\n</invoke>\n<invoke name=\"ping\">\n</invoke>\n"
                    "</minimax:tool_call> and <minimax:tool_call><invoke name=\"get_weather\"><parameter name=\"zip\">"
                    "1</parameter></invoke></minimax:tool_call>";
    size_t content = 99;
    json_t *calls = moe_tool_calls_parse(t, strlen(t), MOE_TOOLS_MINIMAX, tools, "call_m", &content);
    REQUIRE(calls && json_array_size(calls) == 3, "three calls: %s", calls ? json_dumps(calls, 0) : "NULL");
    json_t *f = json_object_get(json_array_get(calls, 0), "function");
    CHECK(content == strlen("<think>x</think>Checking.\n") &&
              !strcmp(json_string_value(json_object_get(f, "name")), "get_weather") &&
              !strcmp(json_string_value(json_object_get(f, "arguments")), "{\"zip\":\"02139\",\"days\":3,\"unit\":\"C\"}"),
          "first call: %s", json_string_value(json_object_get(f, "arguments")));
    f = json_object_get(json_array_get(calls, 1), "function");
    CHECK(!strcmp(json_string_value(json_object_get(f, "name")), "ping") &&
              !strcmp(json_string_value(json_object_get(f, "arguments")), "{}") &&
              !strcmp(json_string_value(json_object_get(json_array_get(calls, 2), "id")), "call_m_2"),
          "second and third calls");
    f = json_object_get(json_array_get(calls, 2), "function");
    CHECK(!strcmp(json_string_value(json_object_get(f, "arguments")), "{\"zip\":\"1\"}"), "the second block's call");
    json_decref(calls);
    const char *not_calls[] = {
        "<minimax:tool_call><invoke name=\"f\"></invoke>",
        "<minimax:tool_call>\n</minimax:tool_call>",
        "<minimax:tool_call><invoke name=\"f\"><parameter name=\"x\">1</invoke></minimax:tool_call>",
        "<minimax:tool_call><invoke name=\"f\">text</invoke></minimax:tool_call>",
        "<minimax:tool_call><invoke name=\"\"></invoke></minimax:tool_call>",
        "<minimax:tool_call><invoke name=\"f\"></invoke>text</minimax:tool_call>",
        "<minimax:tool_call><invoke name=f></invoke></minimax:tool_call>",
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(not_calls); i++)
        CHECK(!moe_tool_calls_parse(not_calls[i], strlen(not_calls[i]), MOE_TOOLS_MINIMAX, tools, "c", &content),
              "'%s' parsed", not_calls[i]);
    bool found;
    CHECK(moe_tool_calls_release("ok <minimax:to", 14, MOE_TOOLS_MINIMAX, &found) == 3 && !found,
          "a partial opening tag held while streaming");
    json_decref(tools);
}

/* Reasoning: "<think>...</think>" at a reply's start (or from its first byte when the prompt opened the
 * block) splits into reasoning and answer; partial tags are held until decided; the answer's leading line
 * breaks go; a reply without the tag is all answer. */
static void test_think_split(void)
{
    static const struct {
        const char *text;
        bool opened, last;
        const char *reason;  /* decided reasoning */
        const char *answer;  /* decided answer, NULL: none yet */
    } cs[] = {
        { "<think>a b</think>\n\nAnswer.", false, true, "a b", "Answer." },
        { "  \n<think>x</think>y", false, true, "x", "y" },
        { "no reasoning", false, false, "", "no reasoning" },
        { "<thi", false, false, "", NULL },                 /* may still be the tag */
        { "<thi", false, true, "", "<thi" },                /* the reply ended: it was text */
        { "<think>partial</th", false, false, "partial", NULL }, /* the closing tag's beginning held */
        { "<think>partial</th", false, true, "partial</th", NULL },
        { "<think>\nstill thinking", false, true, "\nstill thinking", NULL },
        { "r1 style</think>\nok", true, true, "r1 style", "ok" },
        { "r1 style</think>\n", true, false, "r1 style", "" }, /* the answer began; its line breaks go */
        { "<think>x</think>", true, true, "<think>x", "" },  /* opened by the prompt: a second tag is text */
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(cs); i++) {
        struct moe_think_split sp;
        size_t n = strlen(cs[i].text);
        moe_think_split(cs[i].text, n, cs[i].opened, cs[i].last, &sp);
        bool ok = sp.re - sp.rb == strlen(cs[i].reason) && !memcmp(cs[i].text + sp.rb, cs[i].reason, sp.re - sp.rb);
        if (cs[i].answer)
            ok = ok && sp.content && n - sp.cb == strlen(cs[i].answer) && !memcmp(cs[i].text + sp.cb, cs[i].answer,
                                                                                  n - sp.cb);
        else
            ok = ok && !sp.content;
        CHECK(ok, "case %zu '%s': reasoning [%zu, %zu), answer %s from %zu", i, cs[i].text, sp.rb, sp.re,
              sp.content ? "yes" : "no", sp.cb);
    }
    CHECK(moe_think_opened("x\n<think>\n", 10) && moe_think_opened("<think>", 7) && !moe_think_opened("<think>x", 8) &&
              !moe_think_opened("", 0), "prompts that open the block");
}

static size_t pack_infer(const Inference__ModelInferRequest *m, uint8_t **buf)
{
    size_t n = inference__model_infer_request__get_packed_size(m);
    *buf = malloc(n + 1);
    inference__model_infer_request__pack(m, *buf);
    return n;
}

/* m with its first n_in inputs (t[0] text_input, contents tc[0]) and the parameters n_p, p, refused
 * (err: a word of its message) or not (err NULL). */
static void kserve_params(Inference__ModelInferRequest *m, Inference__ModelInferRequest__InferInputTensor *t,
                          Inference__InferTensorContents *tc, size_t n_in,
                          Inference__ModelInferRequest__ParametersEntry **p, size_t n_p, const char *err,
                          const char *what)
{
    t[0].contents = &tc[0];
    t[0].datatype = "BYTES";
    m->n_inputs = n_in;
    m->n_raw_input_contents = 0;
    m->raw_input_contents = NULL;
    m->n_parameters = n_p;
    m->parameters = p;
    uint8_t *b;
    size_t n = pack_infer(m, &b);
    struct moe_gen_request r;
    enum moe_status st = moe_req_parse_kserve(b, n, &r);
    if (err)
        CHECK(st == MOE_EINVAL && strstr(moe_last_error(), err), "%s: %d %s", what, (int)st, moe_last_error());
    else
        CHECK(st == MOE_OK, "%s: %s", what, moe_last_error());
    if (st == MOE_OK)
        moe_gen_request_free(&r);
    free(b);
    m->n_parameters = 0;
    m->parameters = NULL;
}

/* JSON mode and the other guides as request parameters: one at a time, as GenerateRequest's fields. */
static void test_kserve_guides(Inference__ModelInferRequest *m, Inference__ModelInferRequest__InferInputTensor *t,
                               Inference__InferTensorContents *tc)
{
    Inference__InferParameter on = INFERENCE__INFER_PARAMETER__INIT, off = INFERENCE__INFER_PARAMETER__INIT,
                              schema = INFERENCE__INFER_PARAMETER__INIT, word = INFERENCE__INFER_PARAMETER__INIT;
    on.parameter_choice_case = off.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
    on.bool_param = 1;
    schema.parameter_choice_case = word.parameter_choice_case =
        INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM;
    schema.string_param = "{\"type\": \"boolean\"}";
    word.string_param = "yes";
    Inference__ModelInferRequest__ParametersEntry e[2] = { INFERENCE__MODEL_INFER_REQUEST__PARAMETERS_ENTRY__INIT,
                                                           INFERENCE__MODEL_INFER_REQUEST__PARAMETERS_ENTRY__INIT };
    Inference__ModelInferRequest__ParametersEntry *ep[2] = { &e[0], &e[1] };
    e[0].key = "json_object";
    e[1].key = "json_schema";
    e[1].value = &schema;
    e[0].value = &on;
    kserve_params(m, t, tc, 1, ep, 2, "give one", "json_object true with json_schema");
    e[0].value = &off;
    kserve_params(m, t, tc, 1, ep, 2, NULL, "json_object false with json_schema");
    kserve_params(m, t, tc, 1, ep, 1, NULL, "json_object false");
    e[0].value = &word;
    e[1].key = "regex";
    e[1].value = &word;
    kserve_params(m, t, tc, 1, ep, 2, "must be a bool", "json_object a string, with regex");
}

/* t as the input name of datatype type and shape shape[0..1) = [1], its contents tc, emptied. */
static void input_init(Inference__ModelInferRequest__InferInputTensor *t, Inference__InferTensorContents *tc,
                       const char *name, const char *type, int64_t *shape)
{
    inference__model_infer_request__infer_input_tensor__init(t);
    inference__infer_tensor_contents__init(tc);
    t->name = (char *)name;
    t->datatype = (char *)type;
    t->n_shape = 1;
    t->shape = shape;
    t->contents = tc;
}

static void test_kserve(void)
{
    Inference__ModelInferRequest m = INFERENCE__MODEL_INFER_REQUEST__INIT;
    Inference__ModelInferRequest__InferInputTensor t[3];
    Inference__InferTensorContents tc[3];
    Inference__ModelInferRequest__InferInputTensor *tp[3] = { &t[0], &t[1], &t[2] };
    int64_t shape[1] = { 1 };
    static const char *names[3] = { "text_input", "max_tokens", "stream" };
    static const char *types[3] = { "BYTES", "INT32", "BOOL" };
    ProtobufCBinaryData text = { 3, (uint8_t *)"abc" };
    int32_t mt = 6;
    protobuf_c_boolean stream = 1;
    for (int i = 0; i < 3; i++)
        input_init(&t[i], &tc[i], names[i], types[i], shape);
    tc[0].n_bytes_contents = 1;
    tc[0].bytes_contents = &text;
    tc[1].n_int_contents = 1;
    tc[1].int_contents = &mt;
    tc[2].n_bool_contents = 1;
    tc[2].bool_contents = &stream;
    m.model_name = "pycode-moe-18m";
    m.id = "req-1";
    m.n_inputs = 3;
    m.inputs = tp;
    uint8_t *b;
    size_t n = pack_infer(&m, &b);
    struct moe_gen_request r;
    enum moe_status st;
    REQUIRE(moe_req_parse_kserve(b, n, &r) == MOE_OK, "%s", moe_last_error());
    CHECK(!strcmp(r.prompt, "abc") && r.max_tokens == 6 && r.stream && !strcmp(r.id, "req-1"), "fields");
    moe_gen_request_free(&r);
    free(b);
    /* a NUL byte in text_input, as in every other prompt: refused naming the input, not tokenized */
    ProtobufCBinaryData nul_text = { 5, (uint8_t *)"ab\0cd" };
    tc[0].bytes_contents = &nul_text;
    n = pack_infer(&m, &b);
    st = moe_req_parse_kserve(b, n, &r);
    CHECK(st == MOE_EINVAL && strstr(moe_last_error(), "'text_input' holds a NUL byte"), "text_input with a NUL: %d %s",
          (int)st, st == MOE_OK ? "accepted" : moe_last_error());
    if (st == MOE_OK)
        moe_gen_request_free(&r);
    free(b);
    tc[0].bytes_contents = &text;
    /* top_p and repetition_penalty parameters below the smallest float: kept positive, as over HTTP */
    Inference__InferParameter tiny = INFERENCE__INFER_PARAMETER__INIT;
    tiny.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM;
    tiny.double_param = 1e-300;
    Inference__ModelInferRequest__ParametersEntry te[2] = { INFERENCE__MODEL_INFER_REQUEST__PARAMETERS_ENTRY__INIT,
                                                            INFERENCE__MODEL_INFER_REQUEST__PARAMETERS_ENTRY__INIT };
    Inference__ModelInferRequest__ParametersEntry *tep[2] = { &te[0], &te[1] };
    te[0].key = "top_p";
    te[1].key = "repetition_penalty";
    te[0].value = te[1].value = &tiny;
    m.n_parameters = 2;
    m.parameters = tep;
    n = pack_infer(&m, &b);
    REQUIRE(moe_req_parse_kserve(b, n, &r) == MOE_OK, "tiny parameters: %s", moe_last_error());
    CHECK(r.sampling.top_p > 0 && r.sampling.repetition_penalty > 0 && moe_sampling_validate(&r.sampling, 0) == MOE_OK,
          "tiny parameters %g %g", (double)r.sampling.top_p, (double)r.sampling.repetition_penalty);
    moe_gen_request_free(&r);
    free(b);
    /* a key given twice: the last entry counts, as a protobuf map's does */
    Inference__InferParameter tp_last = INFERENCE__INFER_PARAMETER__INIT;
    tp_last.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM;
    tp_last.double_param = 0.25;
    te[1].key = "top_p";
    te[1].value = &tp_last;
    n = pack_infer(&m, &b);
    REQUIRE(moe_req_parse_kserve(b, n, &r) == MOE_OK, "top_p twice: %s", moe_last_error());
    CHECK(fabs(r.sampling.top_p - 0.25) < 1e-6, "top_p 1e-300 then 0.25 read as %g", (double)r.sampling.top_p);
    moe_gen_request_free(&r);
    free(b);
    /* timeout: microseconds, as Triton's schedule-policy parameter; a fraction of one or seconds' 0.5 refused */
    Inference__InferParameter to = INFERENCE__INFER_PARAMETER__INIT;
    te[0].key = "timeout";
    te[0].value = &to;
    m.n_parameters = 1;
    to.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM;
    to.int64_param = 1500000;
    n = pack_infer(&m, &b);
    REQUIRE(moe_req_parse_kserve(b, n, &r) == MOE_OK, "timeout 1500000: %s", moe_last_error());
    CHECK(fabs(r.timeout_s - 1.5) < 1e-12, "timeout 1500000 us read as %g s", r.timeout_s);
    moe_gen_request_free(&r);
    free(b);
    to.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM;
    to.double_param = 0.5;
    n = pack_infer(&m, &b);
    st = moe_req_parse_kserve(b, n, &r);
    CHECK(st == MOE_ERANGE && strstr(moe_last_error(), "microseconds"), "timeout 0.5: %d %s", (int)st,
          st == MOE_OK ? "accepted" : moe_last_error());
    if (st == MOE_OK)
        moe_gen_request_free(&r);
    free(b);
    m.n_parameters = 0;
    m.parameters = NULL;

    /* Raw contents: BYTES with its 4-byte length prefix, INT32 little-endian, BOOL one byte. */
    for (int i = 0; i < 3; i++)
        t[i].contents = NULL;
    ProtobufCBinaryData raw[3] = {
        { 7, (uint8_t *)"\x03\x00\x00\x00xyz" }, { 4, (uint8_t *)"\x02\x00\x00\x00" }, { 1, (uint8_t *)"\x00" },
    };
    m.n_raw_input_contents = 3;
    m.raw_input_contents = raw;
    n = pack_infer(&m, &b);
    REQUIRE(moe_req_parse_kserve(b, n, &r) == MOE_OK, "%s", moe_last_error());
    CHECK(!strcmp(r.prompt, "xyz") && r.max_tokens == 2 && !r.stream, "raw fields");
    moe_gen_request_free(&r);
    free(b);
    t[1].contents = &tc[1]; /* max_tokens both raw (2) and in contents (6): the protocol forbids contents here */
    n = pack_infer(&m, &b);
    st = moe_req_parse_kserve(b, n, &r);
    CHECK(st == MOE_EINVAL && strstr(moe_last_error(), "'max_tokens' has contents beside raw_input_contents"),
          "contents beside raw: %d %s", (int)st, st == MOE_OK ? "accepted" : moe_last_error());
    if (st == MOE_OK)
        moe_gen_request_free(&r);
    free(b);
    t[1].contents = NULL;
    raw[0].len = 6; /* prefix says 3, 2 bytes follow */
    n = pack_infer(&m, &b);
    CHECK(moe_req_parse_kserve(b, n, &r) != MOE_OK && strstr(moe_last_error(), "text_input"),
          "short raw: %s", moe_last_error());
    free(b);
    raw[0].len = 7;
    raw[1].data = (uint8_t *)"\xff\xff\xff\xff"; /* max_tokens = -1 */
    n = pack_infer(&m, &b);
    CHECK(moe_req_parse_kserve(b, n, &r) != MOE_OK && strstr(moe_last_error(), "max_tokens"),
          "negative max_tokens: %s", moe_last_error());
    free(b);
    m.n_inputs = 1; /* only text_input, raw count mismatch */
    n = pack_infer(&m, &b);
    CHECK(moe_req_parse_kserve(b, n, &r) != MOE_OK, "raw count mismatch accepted");
    free(b);
    m.n_raw_input_contents = 0;
    m.raw_input_contents = NULL;
    t[0].contents = &tc[0];
    t[0].datatype = "INT32";
    n = pack_infer(&m, &b);
    CHECK(moe_req_parse_kserve(b, n, &r) != MOE_OK && strstr(moe_last_error(), "BYTES"),
          "wrong dtype: %s", moe_last_error());
    free(b);
    m.n_inputs = 0;
    n = pack_infer(&m, &b);
    CHECK(moe_req_parse_kserve(b, n, &r) != MOE_OK && strstr(moe_last_error(), "text_input"),
          "missing input: %s", moe_last_error());
    free(b);
    CHECK(moe_req_parse_kserve((const uint8_t *)"\x2a\xff", 2, &r) != MOE_OK, "malformed accepted");
    test_kserve_guides(&m, t, tc);

    /* an input once, and not also as a request parameter: which of the two would count is not said */
    for (int i = 0; i < 3; i++)
        t[i].contents = &tc[i];
    Inference__InferParameter three = INFERENCE__INFER_PARAMETER__INIT, no = INFERENCE__INFER_PARAMETER__INIT;
    three.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM;
    three.int64_param = 3;
    no.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
    Inference__ModelInferRequest__ParametersEntry e = INFERENCE__MODEL_INFER_REQUEST__PARAMETERS_ENTRY__INIT,
                                                  *ep = &e;
    e.key = "max_tokens";
    e.value = &three;
    kserve_params(&m, t, tc, 1, &ep, 1, NULL, "max_tokens as a parameter");
    kserve_params(&m, t, tc, 2, &ep, 1, "both", "max_tokens as an input and a parameter");
    e.key = "stream";
    e.value = &no;
    kserve_params(&m, t, tc, 3, &ep, 1, "both", "stream as an input and a parameter");
    tp[2] = &t[1]; /* max_tokens twice */
    kserve_params(&m, t, tc, 3, NULL, 0, "twice", "max_tokens given twice");
    tp[2] = &t[2];
}

/* A value just past its bound is quoted as itself in the refusal, not rounded onto the bound (%g's six digits
 * quoted top_p 1.0000001 as "top_p = 1 is outside (0, 1]"): GenerateRequest's float fields and KServe's
 * numbers alike. */
static void test_quoted_values(void)
{
    struct { float t, p, pres, minp; const char *want; } gen[] = {
        { 0, 1.0000001f, 0, 0, "top_p = 1.0000001 is outside" },
        { 100.0001f, 0, 0, 0, "temperature = 100.0001 is outside" },
        { 0, 0, -2.0000002f, 0, "presence_penalty = -2.0000002 is outside" },
        { 0, 0, 0, 1.0000001f, "min_p = 1.0000001 is outside" },
        { 0, 2, 0, 0, "top_p = 2 is outside" },
    };
    struct moe_gen_request r;
    for (size_t i = 0; i < MOE_ARRAY_LEN(gen); i++) {
        Moeflow__V1__GenerateRequest m = MOEFLOW__V1__GENERATE_REQUEST__INIT;
        m.prompt = "x";
        m.temperature = gen[i].t;
        m.top_p = gen[i].p;
        m.presence_penalty = gen[i].pres;
        m.min_p = gen[i].minp;
        uint8_t *b;
        size_t n = pack_generate(&m, &b);
        CHECK(moe_req_parse_generate(b, n, &r) == MOE_ERANGE && strstr(moe_last_error(), gen[i].want),
              "GenerateRequest[%zu]: %s", i, moe_last_error());
        free(b);
    }
    Moeflow__V1__GenerateRequest m = MOEFLOW__V1__GENERATE_REQUEST__INIT;
    Moeflow__V1__LogitBias lb = MOEFLOW__V1__LOGIT_BIAS__INIT, *lbp = &lb;
    lb.token_id = 5;
    lb.bias = 100.5f;
    m.prompt = "x";
    m.n_logit_bias = 1;
    m.logit_bias = &lbp;
    uint8_t *b;
    size_t n = pack_generate(&m, &b);
    CHECK(moe_req_parse_generate(b, n, &r) == MOE_ERANGE && strstr(moe_last_error(), "token 5 = 100.5 must"),
          "logit_bias: %s", moe_last_error());
    free(b);
    /* KServe: top_p as an FP64 input, top_p, min_p and max_tokens as parameters */
    ProtobufCBinaryData text = { 1, (uint8_t *)"x" };
    double top_p = 1.0000000001;
    int64_t shape[1] = { 1 };
    Inference__InferTensorContents tc[2];
    Inference__ModelInferRequest__InferInputTensor t[2], *tp[2] = { &t[0], &t[1] };
    input_init(&t[0], &tc[0], "text_input", "BYTES", shape);
    input_init(&t[1], &tc[1], "top_p", "FP64", shape);
    tc[0].n_bytes_contents = 1;
    tc[0].bytes_contents = &text;
    tc[1].n_fp64_contents = 1;
    tc[1].fp64_contents = &top_p;
    Inference__ModelInferRequest k = INFERENCE__MODEL_INFER_REQUEST__INIT;
    k.model_name = "m";
    k.n_inputs = 2;
    k.inputs = tp;
    n = pack_infer(&k, &b);
    CHECK(moe_req_parse_kserve(b, n, &r) == MOE_ERANGE && strstr(moe_last_error(), "'top_p' = 1.0000000001 is"),
          "KServe top_p input: %s", moe_last_error());
    free(b);
    struct { const char *key; double v; const char *want; } par[] = {
        { "top_p", 1.0000000001, "'top_p' = 1.0000000001 is" },
        { "min_p", 1.0000000001, "'min_p' = 1.0000000001 is" },
        { "max_tokens", 2147483648.0, "'max_tokens' = 2147483648 is" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(par); i++) {
        Inference__InferParameter v = INFERENCE__INFER_PARAMETER__INIT;
        v.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM;
        v.double_param = par[i].v;
        Inference__ModelInferRequest__ParametersEntry e = INFERENCE__MODEL_INFER_REQUEST__PARAMETERS_ENTRY__INIT,
                                                      *ep = &e;
        e.key = (char *)par[i].key;
        e.value = &v;
        k.n_inputs = 1;
        k.n_parameters = 1;
        k.parameters = &ep;
        n = pack_infer(&k, &b);
        CHECK(moe_req_parse_kserve(b, n, &r) == MOE_ERANGE && strstr(moe_last_error(), par[i].want),
              "KServe parameter %s: %s", par[i].key, moe_last_error());
        free(b);
    }
}

static void test_utf8(void)
{
    const char *e = "a\xc3\xa9"; /* a, e-acute */
    CHECK(moe_utf8_complete_prefix(e, 3) == 3, "complete");
    CHECK(moe_utf8_complete_prefix(e, 2) == 1, "cut 2-byte");
    CHECK(moe_utf8_complete_prefix("\xe2\x82", 2) == 0, "cut 3-byte");
    CHECK(moe_utf8_complete_prefix("\xf0\x9f\x98", 3) == 0, "cut 4-byte");
    CHECK(moe_utf8_complete_prefix("ab", 2) == 2, "ascii");
    CHECK(moe_utf8_valid(e, 3) && !moe_utf8_valid("\xc3", 1) && !moe_utf8_valid("\xed\xa0\x80", 3),
          "valid");
}

static void test_metrics(void)
{
    struct moe_metrics m;
    moe_metrics_init(&m);
    moe_metrics_observe(&m, &m.ttft, 0.003);
    moe_metrics_observe(&m, &m.ttft, 100);
    struct moe_strbuf b = { 0 };
    moe_metrics_render(&m, &b, "model_name=\"x\"");
    CHECK(b.s && strstr(b.s, "moeflow:time_to_first_token_seconds_bucket{model_name=\"x\",le=\"0.005\"} 1"),
          "bucket line");
    CHECK(strstr(b.s, "moeflow:time_to_first_token_seconds_bucket{model_name=\"x\",le=\"+Inf\"} 2"),
          "inf");
    CHECK(strstr(b.s, "moeflow:time_to_first_token_seconds_count{model_name=\"x\"} 2"), "count");
    moe_strbuf_free(&b);
    moe_metrics_free(&m);
}

int main(void)
{
    test_config();
    test_openai();
    test_stop();
    test_generate_proto();
    test_penalties();
    test_stop_token_ids();
    test_response_format();
    test_tool_choice();
    test_tool_blocks();
    test_tool_calls_mistral();
    test_tool_calls_deepseek();
    test_tool_calls_qwen_xml();
    test_tool_calls_glm();
    test_tool_calls_minimax();
    test_think_split();
    test_kserve();
    test_quoted_values();
    test_utf8();
    test_metrics();
    return t_result("test_server_wire");
}
