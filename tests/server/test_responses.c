/* The Responses API translation (server/responses.c): a request's input items, instructions,
 * text.format, tools and tool_choice as the chat completion request they mean; the fields it
 * cannot serve refused by name; a chat completion as a response object (reasoning, message and
 * function_call items, incomplete at max_output_tokens); and streamed chat chunks as the
 * Responses stream's events, numbered in order, whose deltas add up to the final items. */
#include <stdlib.h>
#include <string.h>

#include "../test_util.h"
#include "server/responses.h"

/* One kept conversation: "resp_1". */
static const json_t *lookup(void *ud, const char *id)
{
    static json_t *conv;
    (void)ud;
    if (!conv)
        conv = json_loads("[{\"role\":\"user\",\"content\":\"q1\"},{\"role\":\"assistant\",\"content\":\"a1\"}]",
                          0, NULL);
    return strcmp(id, "resp_1") ? NULL : conv;
}

static json_t *translate(const char *body, struct moe_responses **r)
{
    char *chat = NULL;
    enum moe_status st = moe_responses_request(body, strlen(body), lookup, NULL, &chat, r);
    REQUIRE(st == MOE_OK && chat && *r, "%s: %s", body, moe_last_error());
    json_error_t e;
    json_t *j = json_loads(chat, 0, &e);
    REQUIRE(j, "translated body is not JSON: %s", chat);
    free(chat);
    return j;
}

static bool same(json_t *a, const char *want)
{
    json_t *b = json_loads(want, JSON_DECODE_ANY, NULL);
    bool eq = b && json_equal(a, b);
    if (!eq) {
        char *s = json_dumps(a, JSON_COMPACT | JSON_ENCODE_ANY);
        fprintf(stderr, "got  %s\nwant %s\n", s ? s : "?", want);
        free(s);
    }
    json_decref(b);
    return eq;
}

static void test_request(void)
{
    struct moe_responses *r;
    json_t *j = translate("{\"model\":\"m\",\"instructions\":\"Be brief.\",\"input\":\"hi\",\"max_output_tokens\":7,"
                          "\"temperature\":0.5,\"store\":true,\"metadata\":{\"k\":\"v\"}}", &r);
    CHECK(same(j, "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"hi\"}],"
                  "\"max_tokens\":7,\"model\":\"m\",\"temperature\":0.5}"), "a string input");
    json_decref(j);
    moe_responses_free(r);
    /* items: parts, two calls in a row (one assistant message), their outputs, reasoning left out */
    j = translate("{\"input\":[{\"role\":\"developer\",\"content\":[{\"type\":\"input_text\",\"text\":\"a\"},"
                  "{\"type\":\"input_text\",\"text\":\"b\"}]},{\"type\":\"message\",\"role\":\"user\",\"content\":\"q\"},"
                  "{\"type\":\"reasoning\",\"summary\":[]},"
                  "{\"type\":\"function_call\",\"call_id\":\"c1\",\"name\":\"f\",\"arguments\":\"{}\"},"
                  "{\"type\":\"function_call\",\"call_id\":\"c2\",\"name\":\"g\",\"arguments\":\"{\\\"x\\\":1}\"},"
                  "{\"type\":\"function_call_output\",\"call_id\":\"c1\",\"output\":\"1\"},"
                  "{\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"done\"}]}],"
                  "\"text\":{\"format\":{\"type\":\"json_schema\",\"name\":\"s\",\"schema\":{\"type\":\"object\"},"
                  "\"strict\":true}},\"tools\":[{\"type\":\"function\",\"name\":\"f\",\"parameters\":{\"type\":\"object\"}}],"
                  "\"tool_choice\":{\"type\":\"function\",\"name\":\"f\"},\"stream\":true}", &r);
    CHECK(same(j, "{\"messages\":[{\"role\":\"developer\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\","
                  "\"text\":\"b\"}]},{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":null,"
                  "\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}},"
                  "{\"id\":\"c2\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{\\\"x\\\":1}\"}}]},"
                  "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"1\"},{\"role\":\"assistant\",\"content\":"
                  "[{\"type\":\"text\",\"text\":\"done\"}]}],\"response_format\":{\"type\":\"json_schema\",\"json_schema\":"
                  "{\"name\":\"s\",\"schema\":{\"type\":\"object\"},\"strict\":true}},\"tools\":[{\"type\":\"function\","
                  "\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\"}}}],\"tool_choice\":{\"type\":\"function\","
                  "\"function\":{\"name\":\"f\"}},\"stream\":true}"),
          "items, a schema, tools");
    json_decref(j);
    moe_responses_free(r);
    /* a kept conversation goes on: instructions first, then it, then the input; what is kept next
     * leaves the instructions out and adds the answer */
    j = translate("{\"instructions\":\"Be brief.\",\"previous_response_id\":\"resp_1\",\"input\":\"q2\"}", &r);
    CHECK(same(json_object_get(j, "messages"), "[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\","
               "\"content\":\"q1\"},{\"role\":\"assistant\",\"content\":\"a1\"},{\"role\":\"user\",\"content\":"
               "\"q2\"}]"), "previous_response_id");
    json_t *resp = json_loads("{\"output\":[{\"type\":\"reasoning\"},{\"type\":\"message\",\"content\":[{\"type\":"
                              "\"output_text\",\"text\":\"a2\"}]},{\"type\":\"function_call\",\"call_id\":\"c\","
                              "\"name\":\"f\",\"arguments\":\"{}\"}]}", 0, NULL);
    json_t *conv = moe_responses_conversation(r, resp);
    CHECK(same(conv, "[{\"role\":\"user\",\"content\":\"q1\"},{\"role\":\"assistant\",\"content\":\"a1\"},"
                     "{\"role\":\"user\",\"content\":\"q2\"},{\"role\":\"assistant\",\"content\":\"a2\","
                     "\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\","
                     "\"arguments\":\"{}\"}}]}]") && moe_responses_store_wanted(r),
          "the conversation kept");
    json_decref(conv);
    json_decref(resp);
    json_decref(j);
    moe_responses_free(r);
    j = translate("{\"input\":\"x\",\"store\":false,\"include\":[\"reasoning.encrypted_content\"],\"top_logprobs\":0}", &r);
    CHECK(!moe_responses_store_wanted(r), "store false");
    json_decref(j);
    moe_responses_free(r);
    static const struct {
        const char *body, *word;
    } bad[] = {
        { "{\"input\":\"x\",\"previous_response_id\":\"resp_2\"}", "previous response 'resp_2' is not kept here" },
        { "{\"input\":\"x\",\"previous_response_id\":7}", "'previous_response_id' must be a string" },
        { "{\"input\":\"x\",\"store\":\"yes\"}", "'store' must be true or false" },
        { "{\"input\":\"x\",\"conversation\":\"c\"}", "'conversation' is not supported" },
        { "{\"input\":\"x\",\"background\":true}", "'background' is not supported" },
        { "{\"input\":\"x\",\"include\":\"all\"}", "'include' must be an array" },
        { "{\"input\":\"x\",\"truncation\":\"auto\"}", "'truncation' 'auto' is not supported" },
        { "{\"input\":\"x\",\"top_logprobs\":2}", "'top_logprobs' is not supported" },
        { "{\"input\":\"x\",\"top_logprobs\":2.0}", "'top_logprobs' is not supported" },
        { "{\"input\":\"x\",\"top_logprobs\":\"2\"}", "'top_logprobs' is not supported" },
        { "{\"input\":\"x\",\"tools\":[{\"type\":\"web_search\"}]}", "'tools[0]' of type 'web_search'" },
        { "{\"input\":[{\"type\":\"input_image\",\"image_url\":\"u\"}]}", "'input[0]' of type 'input_image'" },
        { "{\"input\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_image\"}]}]}", "'input[0].content[0]'" },
        { "{\"input\":[{\"type\":\"function_call\",\"name\":\"f\"}]}", "needs string call_id, name and arguments" },
        { "{\"input\":[]}", "'input' must be a string or a non-empty array" },
        { "{\"instructions\":\"x\"}", "'input' is required" },
        { "{\"input\":\"x\",\"text\":{\"format\":{\"type\":\"grammar\"}}}", "'text.format.type' 'grammar'" },
        { "{\"input\":\"x\",\"tool_choice\":{\"type\":\"allowed_tools\"}}", "'tool_choice' must be" },
        { "[1]", "must be a JSON object" },
        { "{\"input\":", "not valid JSON" },
        /* duplicate keys, anywhere: refused as the chat decoder refuses them, not one of them kept */
        { "{\"input\":\"x\",\"input\":\"y\"}", "duplicate" },
        { "{\"input\":[{\"role\":\"user\",\"content\":\"a\",\"content\":\"b\"}]}", "duplicate" },
        /* what the chat request would refuse in its own names, refused in the Responses' */
        { "{\"input\":[{\"role\":\"user\"}]}", "'input[0].content' is required" },
        { "{\"input\":[{\"type\":\"message\",\"role\":5,\"content\":\"x\"}]}", "'input[0].role' must be a string" },
        { "{\"input\":\"x\",\"text\":{\"format\":{\"type\":\"json_schema\",\"name\":\"s\"}}}",
          "'text.format' json_schema needs \"schema\"" },
        { "{\"input\":\"x\",\"text\":{\"format\":{\"type\":\"json_schema\",\"name\":1,\"schema\":{}}}}",
          "'text.format.name' must be a string" },
        { "{\"input\":\"x\",\"tools\":[{\"type\":\"function\"}]}", "'tools[0]' must be {\"type\": \"function\", \"name\"" },
        /* a type cut at its byte limit stays whole characters: 39 x 'a' and a two-byte 'é' */
        { "{\"input\":\"x\",\"text\":{\"format\":{\"type\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\u00e9\"}}}",
          "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' is not supported" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(bad); i++) {
        char *chat = NULL;
        enum moe_status st = moe_responses_request(bad[i].body, strlen(bad[i].body), lookup, NULL, &chat, &r);
        CHECK(st != MOE_OK && !chat && !r && strstr(moe_last_error(), bad[i].word), "%s: status %d, '%s'",
              bad[i].body, st, moe_last_error());
    }
}

/* The chat decoder's errors about a translated request, in the Responses request's names. */
static void test_error_names(void)
{
    struct moe_responses *r;
    /* messages: 0 the instructions, 1-2 resp_1's conversation, 3 input[0], 4 the calls of input[1] and
     * input[2], 5 input[3] */
    json_decref(translate("{\"instructions\":\"i\",\"previous_response_id\":\"resp_1\",\"input\":["
                          "{\"role\":\"user\",\"content\":\"q\"},"
                          "{\"type\":\"function_call\",\"call_id\":\"c1\",\"name\":\"f\",\"arguments\":\"{}\"},"
                          "{\"type\":\"function_call\",\"call_id\":\"c2\",\"name\":\"f\",\"arguments\":\"{}\"},"
                          "{\"role\":\"bot\",\"content\":\"a\"}]}", &r));
    static const struct {
        const char *chat, *want;
    } names[] = {
        { "'max_tokens' = 0 is outside [1, 2147483647]", "'max_output_tokens' = 0 is outside [1, 2147483647]" },
        { "max_tokens = 900 exceeds this server's limit 512 (max-output)",
          "max_output_tokens = 900 exceeds this server's limit 512 (max-output)" },
        { "prompt (9 tokens) + max_tokens (5) = 14 exceeds", "prompt (9 tokens) + max_output_tokens (5) = 14 exceeds" },
        { "'messages[5].role' = 'bot' is not system", "'input[3].role' = 'bot' is not system" },
        { "'messages[3].content' must be a string", "'input[0].content' must be a string" },
        { "'messages[4].content' must be a string", "'input[1].content' must be a string" },
        { "'messages[0].content' must be a string", "'instructions.content' must be a string" },
        { "'messages[2].role' must be a string", "'previous_response_id' conversation[2].role' must be a string" },
        { "'messages': template error", "'input': template error" },
        { "'response_format' json_schema: JSON schema at '/': bad", "'text.format' json_schema: JSON schema at '/': bad" },
        { "my_max_tokens and max_tokens_x stay", "my_max_tokens and max_tokens_x stay" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(names); i++) {
        char out[256];
        moe_responses_error_names(r, names[i].chat, out, sizeof(out));
        CHECK(!strcmp(out, names[i].want), "'%s' -> '%s', want '%s'", names[i].chat, out, names[i].want);
    }
    char small[12];
    moe_responses_error_names(r, "'max_tokens' = 0 is outside", small, sizeof(small));
    CHECK(strlen(small) < sizeof(small), "a small buffer: '%s'", small);
    moe_responses_free(r);
}

static void test_reply(void)
{
    struct moe_responses *r;
    json_decref(translate("{\"input\":\"x\",\"max_output_tokens\":9}", &r));
    moe_responses_name(r, "chatcmpl-ab12", 1700000000, "pycode");
    json_t *c = json_loads("{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"\","
                           "\"reasoning_content\":\"think\",\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\","
                           "\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}],"
                           "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7,"
                           "\"prompt_tokens_details\":{\"cached_tokens\":2},"
                           "\"completion_tokens_details\":{\"reasoning_tokens\":1}}}", 0, NULL);
    json_t *o = moe_responses_reply(r, c);
    CHECK(same(json_object_get(o, "output"),
               "[{\"id\":\"rs_ab12\",\"type\":\"reasoning\",\"summary\":[],\"content\":[{\"type\":\"reasoning_text\","
               "\"text\":\"think\"}]},{\"id\":\"fc_ab12_0\",\"type\":\"function_call\",\"status\":\"completed\","
               "\"call_id\":\"call_1\",\"name\":\"f\",\"arguments\":\"{}\"}]"), "reasoning and a call");
    CHECK(same(json_object_get(o, "usage"), "{\"input_tokens\":3,\"input_tokens_details\":{\"cached_tokens\":2},"
                                            "\"output_tokens\":4,\"output_tokens_details\":{\"reasoning_tokens\":1},"
                                            "\"total_tokens\":7}"),
          "usage");
    CHECK(!strcmp(json_string_value(json_object_get(o, "id")), "resp_ab12") &&
              !strcmp(json_string_value(json_object_get(o, "status")), "completed") &&
              json_integer_value(json_object_get(o, "max_output_tokens")) == 9 &&
              json_is_null(json_object_get(o, "incomplete_details")),
          "the response's fields");
    json_decref(o);
    json_decref(c);
    c = json_loads("{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"abc\"},"
                   "\"finish_reason\":\"length\"}]}", 0, NULL);
    o = moe_responses_reply(r, c);
    CHECK(!strcmp(json_string_value(json_object_get(o, "status")), "incomplete") &&
              same(json_object_get(o, "incomplete_details"), "{\"reason\":\"max_output_tokens\"}") &&
              same(json_object_get(o, "output"), "[{\"id\":\"msg_ab12\",\"type\":\"message\",\"status\":\"incomplete\","
                                                 "\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":"
                                                 "\"abc\",\"annotations\":[],\"logprobs\":[]}]}]"),
          "cut at max_output_tokens");
    json_decref(o);
    json_decref(c);
    moe_responses_free(r);
}

struct events {
    json_t *list;
};

static void collect(void *ud, const char *type, json_t *data)
{
    struct events *e = ud;
    CHECK(!strcmp(json_string_value(json_object_get(data, "type")), type), "event type %s", type);
    json_array_append_new(e->list, data);
}

static void test_stream(void)
{
    struct moe_responses *r;
    json_decref(translate("{\"input\":\"x\",\"stream\":true}", &r));
    moe_responses_name(r, "chatcmpl-s1", 1, "m");
    struct events e = { json_array() };
    moe_responses_stream_start(r, collect, &e);
    static const char *chunks[] = {
        "{\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hm\"},\"finish_reason\":null}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"m.\"},\"finish_reason\":null}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"He\"},\"finish_reason\":null}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"llo\"},\"finish_reason\":null}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_9\",\"type\":\"function\","
        "\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"}}]},\"finish_reason\":null}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"tool_calls\"}],"
        "\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":5}}",
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(chunks); i++) {
        json_t *c = json_loads(chunks[i], 0, NULL);
        REQUIRE(c, "chunk %zu", i);
        moe_responses_stream_chunk(r, c, collect, &e);
        json_decref(c);
    }
    static const char *want[] = { "response.created", "response.in_progress",
                                  "response.output_item.added", "response.content_part.added",
                                  "response.reasoning_text.delta", "response.reasoning_text.delta",
                                  "response.reasoning_text.done", "response.content_part.done",
                                  "response.output_item.done", "response.output_item.added",
                                  "response.content_part.added", "response.output_text.delta",
                                  "response.output_text.delta", "response.output_text.done",
                                  "response.content_part.done", "response.output_item.done",
                                  "response.output_item.added", "response.function_call_arguments.delta",
                                  "response.function_call_arguments.done", "response.output_item.done",
                                  "response.completed" };
    size_t n = json_array_size(e.list);
    CHECK(n == MOE_ARRAY_LEN(want), "%zu events, want %zu", n, MOE_ARRAY_LEN(want));
    for (size_t i = 0; i < n && i < MOE_ARRAY_LEN(want); i++) {
        json_t *d = json_array_get(e.list, i);
        CHECK(!strcmp(json_string_value(json_object_get(d, "type")), want[i]) &&
                  json_integer_value(json_object_get(d, "sequence_number")) == (json_int_t)i,
              "event %zu: %s #%lld, want %s", i, json_string_value(json_object_get(d, "type")),
              (long long)json_integer_value(json_object_get(d, "sequence_number")), want[i]);
    }
    json_t *last = json_object_get(json_array_get(e.list, n - 1), "response");
    CHECK(same(json_object_get(last, "output"),
               "[{\"id\":\"rs_s1\",\"type\":\"reasoning\",\"summary\":[],\"content\":[{\"type\":\"reasoning_text\","
               "\"text\":\"hmm.\"}]},{\"id\":\"msg_s1\",\"type\":\"message\",\"status\":\"completed\",\"role\":"
               "\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hello\",\"annotations\":[],\"logprobs\":[]}]},"
               "{\"id\":\"fc_s1_0\",\"type\":\"function_call\",\"status\":\"completed\",\"call_id\":\"call_9\",\"name\":"
               "\"f\",\"arguments\":\"{\\\"a\\\":1}\"}]") &&
              !strcmp(json_string_value(json_object_get(last, "status")), "completed") &&
              json_integer_value(json_object_get(json_object_get(last, "usage"), "total_tokens")) == 7,
          "the completed response");
    json_decref(e.list);
    /* an error ends the stream with response.failed */
    e.list = json_array();
    json_t *err = json_loads("{\"error\":{\"message\":\"request failed: out of memory\"}}", 0, NULL);
    moe_responses_stream_chunk(r, err, collect, &e);
    json_t *f = json_array_get(e.list, 0);
    CHECK(json_array_size(e.list) == 1 && !strcmp(json_string_value(json_object_get(f, "type")), "response.failed") &&
              !strcmp(json_string_value(json_object_get(json_object_get(json_object_get(f, "response"), "error"),
                                                        "message")),
                      "request failed: out of memory"),
          "an error: response.failed");
    json_decref(err);
    json_decref(e.list);
    moe_responses_free(r);
}

int main(void)
{
    test_request();
    test_error_names();
    test_reply();
    test_stream();
    return t_failures ? T_FAIL : T_PASS;
}
