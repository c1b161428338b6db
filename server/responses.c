/* OpenAI's Responses API over the chat completions path (responses.h). */
#include "responses.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/json_guide.h"
#include "requests.h"

enum { OPEN_NONE, OPEN_REASONING, OPEN_MESSAGE };
enum { SRC_INSTRUCTIONS = -1, SRC_HISTORY = -2 };

struct moe_responses {
    json_t *echo;       /* the request's settings, which a response object repeats */
    char id[160], tail[128];
    long long created;
    char model[128];
    json_int_t seq;     /* the next event's sequence number */
    json_t *output;     /* the stream's finished items */
    int open;           /* the item being streamed (OPEN_*) */
    char *text;         /* its text so far */
    size_t len, cap;
    json_t *conversation; /* the messages before this response's answer, instructions aside */
    json_t *final;      /* the streamed response's final object, once sent */
    json_t *msg_src;    /* [messages of the chat request]: where each came from, an index of 'input'; or
                           SRC_INSTRUCTIONS, SRC_HISTORY (previous_response_id's conversation) */
    bool store, stored; /* the request wants it kept; it will be */
};

/* Fields that mean the same in both APIs (and vLLM's structured outputs), passed on as they are. */
static const char *const passed[] = { "model", "temperature", "top_p", "top_k", "min_p", "seed",
                                      "presence_penalty", "frequency_penalty", "repetition_penalty", "stop",
                                      "logit_bias", "user", "parallel_tool_calls", "stream", "ignore_eos",
                                      "stop_token_ids", "min_tokens", "priority", "chat_template_kwargs",
                                      "structured_outputs", "guided_json", "guided_choice", "guided_regex",
                                      "guided_grammar", "grammar" };

void moe_responses_free(struct moe_responses *r)
{
    if (!r) return;
    json_decref(r->echo);
    json_decref(r->output);
    json_decref(r->conversation);
    json_decref(r->final);
    json_decref(r->msg_src);
    free(r->text);
    free(r);
}

/* ---- the request ---------------------------------------------------------------------------- */

/* A message's content as chat text parts: a string as it is, or input_text / output_text parts. */
static enum moe_status content_parts(json_t *content, size_t i, json_t **out)
{
    if (!content || json_is_string(content) || json_is_null(content)) {
        *out = content ? json_incref(content) : NULL;
        return MOE_OK;
    }
    if (!json_is_array(content))
        return moe_errorf(MOE_EINVAL, "'input[%zu].content' must be a string or an array of parts", i);
    json_t *parts = json_array();
    for (size_t k = 0; k < json_array_size(content); k++) {
        json_t *p = json_array_get(content, k), *t = json_object_get(p, "text");
        const char *type = json_string_value(json_object_get(p, "type"));
        if (!type || (strcmp(type, "input_text") && strcmp(type, "output_text")) || !json_is_string(t)) {
            json_decref(parts);
            return moe_errorf(MOE_ENOTSUP, "'input[%zu].content[%zu]' must be {\"type\": \"input_text\" or "
                              "\"output_text\", \"text\": string}: this model takes text only", i, k);
        }
        json_array_append_new(parts, json_pack("{s:s,s:O}", "type", "text", "text", t));
    }
    *out = parts;
    return MOE_OK;
}

/* The input items as chat messages: messages, function calls (consecutive ones as one assistant
 * message) and their outputs; reasoning items are left out, as chat templates leave it out.  src gets
 * the index of the item each message came from. */
static enum moe_status input_messages(json_t *input, json_t *msgs, json_t *src)
{
    if (json_is_string(input)) {
        json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", "user", "content", input));
        json_array_append_new(src, json_integer(0));
        return MOE_OK;
    }
    if (!json_is_array(input) || json_array_size(input) == 0)
        return moe_errorf(MOE_EINVAL, "'input' must be a string or a non-empty array of items");
    json_t *calls = NULL; /* the assistant message gathering consecutive function calls */
    for (size_t i = 0; i < json_array_size(input); i++) {
        json_t *it = json_array_get(input, i);
        const char *type = json_string_value(json_object_get(it, "type"));
        const char *role = json_string_value(json_object_get(it, "role"));
        if (!json_is_object(it))
            return moe_errorf(MOE_EINVAL, "'input[%zu]' must be an object", i);
        if (type && !strcmp(type, "function_call")) {
            json_t *cid = json_object_get(it, "call_id"), *name = json_object_get(it, "name"),
                   *args = json_object_get(it, "arguments");
            if (!json_is_string(cid) || !json_is_string(name) || !json_is_string(args))
                return moe_errorf(MOE_EINVAL, "'input[%zu]': a function_call needs string call_id, name and "
                                  "arguments", i);
            if (!calls) {
                calls = json_array();
                json_array_append_new(msgs, json_pack("{s:s,s:n,s:o}", "role", "assistant", "content", "tool_calls",
                                                      calls));
                json_array_append_new(src, json_integer((json_int_t)i));
            }
            json_array_append_new(calls, json_pack("{s:O,s:s,s:{s:O,s:O}}", "id", cid, "type", "function", "function",
                                                   "name", name, "arguments", args));
            continue;
        }
        calls = NULL;
        if (type && !strcmp(type, "function_call_output")) {
            json_t *cid = json_object_get(it, "call_id"), *out = json_object_get(it, "output");
            if (!json_is_string(cid) || !json_is_string(out))
                return moe_errorf(MOE_EINVAL, "'input[%zu]': a function_call_output needs string call_id and "
                                  "output", i);
            json_array_append_new(msgs, json_pack("{s:s,s:O,s:O}", "role", "tool", "tool_call_id", cid, "content",
                                                  out));
            json_array_append_new(src, json_integer((json_int_t)i));
            continue;
        }
        if (type && !strcmp(type, "reasoning")) continue;
        if ((type && strcmp(type, "message")) || (!type && !json_object_get(it, "role")))
            return moe_errorf(MOE_ENOTSUP, "'input[%zu]' of type '%.*s' is not supported: messages, function_call "
                              "and function_call_output items", i, type ? moe_utf8_cut(type, 40) : 6,
                              type ? type : "(none)");
        if (!role)
            return moe_errorf(MOE_EINVAL, "'input[%zu].role' must be a string (user, assistant, system or "
                              "developer)", i);
        json_t *content = json_object_get(it, "content");
        if (!content || json_is_null(content))
            return moe_errorf(MOE_EINVAL, "'input[%zu].content' is required: a string or an array of input_text "
                              "parts", i);
        enum moe_status st = content_parts(content, i, &content);
        if (st) return st;
        json_array_append_new(msgs, json_pack("{s:s,s:o}", "role", role, "content", content));
        json_array_append_new(src, json_integer((json_int_t)i));
    }
    return MOE_OK;
}

/* text.format as response_format. */
static enum moe_status text_format(json_t *text, json_t *chat)
{
    if (!text || json_is_null(text)) return MOE_OK;
    json_t *f = json_object_get(text, "format");
    if (!json_is_object(text) || (f && !json_is_null(f) && !json_is_object(f)))
        return moe_errorf(MOE_EINVAL, "'text' must be an object, its 'format' an object with a 'type'");
    const char *type = f ? json_string_value(json_object_get(f, "type")) : "text";
    if (!type) return moe_errorf(MOE_EINVAL, "'text.format.type' must be a string");
    if (!strcmp(type, "text")) return MOE_OK;
    if (!strcmp(type, "json_object")) {
        json_object_set_new(chat, "response_format", json_pack("{s:s}", "type", "json_object"));
        return MOE_OK;
    }
    if (strcmp(type, "json_schema"))
        return moe_errorf(MOE_ENOTSUP, "'text.format.type' '%.*s' is not supported (text, json_object or "
                          "json_schema)", moe_utf8_cut(type, 40), type);
    json_t *schema = json_object_get(f, "schema"), *name = json_object_get(f, "name");
    if (!json_is_object(schema) && !json_is_boolean(schema))
        return moe_errorf(MOE_EINVAL, "'text.format' json_schema needs \"schema\": {...} (a JSON schema), beside "
                          "\"name\"");
    if (name && !json_is_string(name)) return moe_errorf(MOE_EINVAL, "'text.format.name' must be a string");
    json_t *js = json_object();
    static const char *const keys[] = { "name", "schema", "strict", "description" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(keys); i++)
        if (json_object_get(f, keys[i])) json_object_set(js, keys[i], json_object_get(f, keys[i]));
    json_object_set_new(chat, "response_format", json_pack("{s:s,s:o}", "type", "json_schema", "json_schema", js));
    return MOE_OK;
}

/* Function tools ({type, name, description, parameters, strict}) as chat tools, and tool_choice. */
static enum moe_status tools_of(json_t *root, json_t *chat)
{
    json_t *tools = json_object_get(root, "tools"), *choice = json_object_get(root, "tool_choice");
    if (tools && !json_is_null(tools)) {
        if (!json_is_array(tools)) return moe_errorf(MOE_EINVAL, "'tools' must be an array of tool definitions");
        json_t *ct = json_array();
        json_object_set_new(chat, "tools", ct);
        for (size_t i = 0; i < json_array_size(tools); i++) {
            json_t *t = json_array_get(tools, i);
            const char *type = json_string_value(json_object_get(t, "type"));
            if (!type || strcmp(type, "function"))
                return moe_errorf(MOE_ENOTSUP, "'tools[%zu]' of type '%.*s' is not supported: function tools only",
                                  i, type ? moe_utf8_cut(type, 40) : 6, type ? type : "(none)");
            json_t *params = json_object_get(t, "parameters");
            if (!json_is_string(json_object_get(t, "name")) || (params && !json_is_null(params) &&
                                                                !json_is_object(params)))
                return moe_errorf(MOE_EINVAL, "'tools[%zu]' must be {\"type\": \"function\", \"name\": ..., "
                                  "\"parameters\": {...}}", i);
            json_t *fn = json_object();
            static const char *const keys[] = { "name", "description", "parameters", "strict" };
            for (size_t k = 0; k < MOE_ARRAY_LEN(keys); k++) {
                json_t *v = json_object_get(t, keys[k]);
                if (v && !json_is_null(v)) json_object_set(fn, keys[k], v);
            }
            json_array_append_new(ct, json_pack("{s:s,s:o}", "type", "function", "function", fn));
        }
    }
    if (!choice || json_is_null(choice)) return MOE_OK;
    if (json_is_string(choice)) {
        json_object_set(chat, "tool_choice", choice);
        return MOE_OK;
    }
    const char *type = json_string_value(json_object_get(choice, "type"));
    json_t *name = json_object_get(choice, "name");
    if (!type || strcmp(type, "function") || !json_is_string(name))
        return moe_errorf(MOE_ENOTSUP, "'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": "
                          "\"function\", \"name\": ...}");
    json_object_set_new(chat, "tool_choice", json_pack("{s:s,s:{s:O}}", "type", "function", "function", "name", name));
    return MOE_OK;
}

/* What this server cannot do for a response: named in the error. */
static enum moe_status refused_fields(json_t *root)
{
    static const char *const stateful[] = { "conversation", "prompt" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(stateful); i++) {
        json_t *v = json_object_get(root, stateful[i]);
        if (v && !json_is_null(v))
            return moe_errorf(MOE_ENOTSUP, "'%s' is not supported: send the conversation as 'input', or continue "
                              "one with 'previous_response_id'", stateful[i]);
    }
    json_t *prev = json_object_get(root, "previous_response_id"), *store = json_object_get(root, "store");
    if (prev && !json_is_null(prev) && !json_is_string(prev))
        return moe_errorf(MOE_EINVAL, "'previous_response_id' must be a string");
    if (store && !json_is_null(store) && !json_is_boolean(store))
        return moe_errorf(MOE_EINVAL, "'store' must be true or false");
    if (json_is_true(json_object_get(root, "background")))
        return moe_errorf(MOE_ENOTSUP, "'background' is not supported: a response is answered on its request");
    json_t *inc = json_object_get(root, "include");
    if (inc && !json_is_null(inc) && !json_is_array(inc))
        return moe_errorf(MOE_EINVAL, "'include' must be an array of strings");
    const char *tr = json_string_value(json_object_get(root, "truncation"));
    if (tr && strcmp(tr, "disabled"))
        return moe_errorf(MOE_ENOTSUP, "'truncation' '%.*s' is not supported: an input longer than the context "
                          "is refused (\"disabled\")", moe_utf8_cut(tr, 20), tr);
    json_t *tl = json_object_get(root, "top_logprobs"); /* only 0 (or null) asks for nothing: 3.0 as 3 */
    if (tl && !json_is_null(tl) && !(json_is_number(tl) && json_number_value(tl) == 0))
        return moe_errorf(MOE_ENOTSUP, "'top_logprobs' is not supported on /v1/responses (use /v1/chat/completions)");
    return MOE_OK;
}

/* The settings a response object repeats, with OpenAI's defaults. */
static json_t *echo_of(json_t *root)
{
    json_t *e = json_object();
    static const struct {
        const char *key;
        const char *dflt; /* JSON text */
    } f[] = { { "instructions", "null" }, { "max_output_tokens", "null" }, { "temperature", "null" },
              { "top_p", "null" }, { "tool_choice", "\"auto\"" }, { "tools", "[]" },
              { "text", "{\"format\":{\"type\":\"text\"}}" }, { "metadata", "{}" },
              { "parallel_tool_calls", "true" }, { "reasoning", "null" } };
    for (size_t i = 0; i < MOE_ARRAY_LEN(f); i++) {
        json_t *v = json_object_get(root, f[i].key);
        json_object_set_new(e, f[i].key, v && !json_is_null(v) ? json_incref(v)
                                                                : json_loads(f[i].dflt, JSON_DECODE_ANY, NULL));
    }
    return e;
}

enum moe_status moe_responses_request(const char *body, size_t n, moe_responses_lookup_fn lookup, void *ud,
                                      char **chat_body, struct moe_responses **out)
{
    *chat_body = NULL;
    *out = NULL;
    json_error_t jerr;
    /* duplicate keys refused, as the chat decoder refuses them: the translation would keep one silently */
    json_t *root = json_loadb(body, n, JSON_REJECT_DUPLICATES, &jerr), *chat = NULL, *src = json_array();
    if (!root) {
        json_decref(src);
        if (moe_json_number_refused(&jerr, "request body") != MOE_OK)
            return moe_last_status();
        return moe_errorf(MOE_EFORMAT, "request body is not valid JSON: %s at line %d column %d",
                          moe_json_error_text(&jerr), jerr.line, jerr.column);
    }
    enum moe_status st = json_is_object(root) ? refused_fields(root)
                                              : moe_errorf(MOE_EINVAL, "request body must be a JSON object");
    if (st == MOE_OK) {
        chat = json_pack("{s:[]}", "messages");
        json_t *msgs = json_object_get(chat, "messages"), *ins = json_object_get(root, "instructions"),
               *input = json_object_get(root, "input"), *mo = json_object_get(root, "max_output_tokens");
        if (ins && !json_is_null(ins) && !json_is_string(ins))
            st = moe_errorf(MOE_EINVAL, "'instructions' must be a string");
        else if (json_is_string(ins)) {
            json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", "system", "content", ins));
            json_array_append_new(src, json_integer(SRC_INSTRUCTIONS));
        }
        if (st == MOE_OK && !input) st = moe_errorf(MOE_EINVAL, "'input' is required (a string or a list of items)");
        const char *prev = json_string_value(json_object_get(root, "previous_response_id"));
        const json_t *history = prev && lookup ? lookup(ud, prev) : NULL;
        if (st == MOE_OK && prev && !history)
            st = moe_errorf(MOE_ENOENT, "previous response '%.*s' is not kept here (the server keeps its last "
                            "responses, responses-store, unless a request said \"store\": false)",
                            moe_utf8_cut(prev, 100), prev);
        for (size_t i = 0; st == MOE_OK && history && i < json_array_size(history); i++) {
            json_array_append_new(msgs, json_deep_copy(json_array_get(history, i)));
            json_array_append_new(src, json_integer(SRC_HISTORY));
        }
        if (st == MOE_OK) st = input_messages(input, msgs, src);
        if (st == MOE_OK && mo && !json_is_null(mo)) json_object_set(chat, "max_tokens", mo);
        if (st == MOE_OK) st = text_format(json_object_get(root, "text"), chat);
        if (st == MOE_OK) st = tools_of(root, chat);
        for (size_t i = 0; st == MOE_OK && i < MOE_ARRAY_LEN(passed); i++) {
            json_t *v = json_object_get(root, passed[i]);
            if (v) json_object_set(chat, passed[i], v);
        }
    }
    struct moe_responses *r = NULL;
    if (st == MOE_OK) {
        r = calloc(1, sizeof(*r));
        *chat_body = json_dumps(chat, JSON_COMPACT);
        if (r) { /* the conversation so far: the messages, the instructions' aside */
            r->store = !json_is_false(json_object_get(root, "store"));
            r->conversation = json_deep_copy(json_object_get(chat, "messages"));
            if (r->conversation && json_is_string(json_object_get(root, "instructions")))
                json_array_remove(r->conversation, 0);
        }
        if (r) r->msg_src = json_incref(src);
        if (!r || !*chat_body || !r->conversation || !src || !(r->echo = echo_of(root)) || !(r->output = json_array())) {
            free(*chat_body);
            *chat_body = NULL;
            moe_responses_free(r);
            r = NULL;
            st = moe_errorf(MOE_ENOMEM, "out of memory for the response");
        }
    }
    json_decref(chat);
    json_decref(root);
    json_decref(src);
    *out = r;
    return st;
}

/* Whether word begins at p, an identifier of its own (no letter, digit or '_' around it). */
static bool word_at(const char *msg, const char *p, const char *word)
{
    size_t n = strlen(word);
    bool id_before = p > msg && (isalnum((unsigned char)p[-1]) || p[-1] == '_');
    return !id_before && !strncmp(p, word, n) && !isalnum((unsigned char)p[n]) && p[n] != '_';
}

void moe_responses_error_names(const struct moe_responses *r, const char *msg, char *out, size_t cap)
{
    size_t o = 0;
    char name[96];
    for (const char *p = msg; *p && o + 1 < cap;) {
        const char *put = NULL;
        size_t skip = 0;
        if (word_at(msg, p, "max_tokens")) {
            put = "max_output_tokens", skip = strlen("max_tokens");
        } else if (!strncmp(p, "'response_format'", 17)) {
            put = "'text.format'", skip = 17;
        } else if (!strncmp(p, "'messages", 9)) {
            char *end;
            unsigned long k = p[9] == '[' ? strtoul(p + 10, &end, 10) : 0;
            if (p[9] != '[' || *end != ']') { /* the messages as a whole */
                put = "'input", skip = 9;
            } else {
                json_int_t at = k < json_array_size(r->msg_src) ? json_integer_value(json_array_get(r->msg_src, k))
                                                                : SRC_HISTORY;
                if (at >= 0) snprintf(name, sizeof(name), "'input[%lld]", (long long)at);
                else if (at == SRC_INSTRUCTIONS) snprintf(name, sizeof(name), "'instructions");
                else snprintf(name, sizeof(name), "'previous_response_id' conversation[%lu]", k);
                put = name, skip = (size_t)(end + 1 - p);
            }
        }
        if (put) {
            size_t n = strlen(put);
            if (o + n >= cap) break;
            memcpy(out + o, put, n);
            o += n;
            p += skip;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = 0;
}

void moe_responses_name(struct moe_responses *r, const char *call_id, long long created, const char *model)
{
    const char *dash = strchr(call_id, '-');
    snprintf(r->tail, sizeof(r->tail), "%s", dash ? dash + 1 : call_id);
    snprintf(r->id, sizeof(r->id), "resp_%s", r->tail);
    snprintf(r->model, sizeof(r->model), "%s", model);
    r->created = created;
}

/* ---- the reply -------------------------------------------------------------------------------- */

static json_t *item_id(const struct moe_responses *r, const char *kind, int n)
{
    char id[192];
    if (n < 0) snprintf(id, sizeof(id), "%s_%s", kind, r->tail);
    else snprintf(id, sizeof(id), "%s_%s_%d", kind, r->tail, n);
    return json_string(id);
}

static json_t *reasoning_item(const struct moe_responses *r, const char *t, size_t n)
{
    return json_pack("{s:o,s:s,s:[],s:[{s:s,s:s%}]}", "id", item_id(r, "rs", -1), "type", "reasoning", "summary",
                     "content", "type", "reasoning_text", "text", t, n);
}

static json_t *message_item(const struct moe_responses *r, const char *t, size_t n, const char *status)
{
    return json_pack("{s:o,s:s,s:s,s:s,s:[{s:s,s:s%,s:[],s:[]}]}", "id", item_id(r, "msg", -1), "type", "message",
                     "status", status, "role", "assistant", "content", "type", "output_text", "text", t, n,
                     "annotations", "logprobs");
}

/* Chat tool call i ({id, type, function: {name, arguments}}) as a function_call item. */
static json_t *call_item(const struct moe_responses *r, int i, const json_t *call, const char *status, bool args)
{
    json_t *fn = json_object_get(call, "function");
    return json_pack("{s:o,s:s,s:s,s:O,s:O,s:o}", "id", item_id(r, "fc", i), "type", "function_call", "status", status,
                     "call_id", json_object_get(call, "id"), "name", json_object_get(fn, "name"), "arguments",
                     args ? json_incref(json_object_get(fn, "arguments")) : json_string(""));
}

/* Chat usage as the response's (NULL: none). */
static json_t *usage_of(const json_t *u)
{
    if (!json_is_object(u)) return json_null();
    json_int_t p = json_integer_value(json_object_get(u, "prompt_tokens")),
               c = json_integer_value(json_object_get(u, "completion_tokens")),
               cached = json_integer_value(json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens")),
               reasoning = json_integer_value(
                   json_object_get(json_object_get(u, "completion_tokens_details"), "reasoning_tokens"));
    return json_pack("{s:I,s:{s:I},s:I,s:{s:I},s:I}", "input_tokens", p, "input_tokens_details", "cached_tokens", cached,
                     "output_tokens", c, "output_tokens_details", "reasoning_tokens", reasoning, "total_tokens", p + c);
}

/* A response object: status, its items (stolen), usage (stolen), why it is incomplete, its error
 * (stolen), and the request's settings. */
static json_t *response_object(const struct moe_responses *r, const char *status, json_t *output, json_t *usage,
                               const char *incomplete, json_t *error)
{
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:o,s:o,s:s,s:o,s:o,s:b}", "id", r->id, "object", "response", "created_at",
                          (json_int_t)r->created, "status", status, "error", error ? error : json_null(),
                          "incomplete_details", incomplete ? json_pack("{s:s}", "reason", incomplete) : json_null(),
                          "model", r->model, "output", output, "usage", usage ? usage : json_null(), "store",
                          r->stored);
    if (o) json_object_update(o, r->echo);
    return o;
}

json_t *moe_responses_reply(struct moe_responses *r, const json_t *completion)
{
    json_t *ch = json_array_get(json_object_get(completion, "choices"), 0), *msg = json_object_get(ch, "message");
    json_t *reasoning = json_object_get(msg, "reasoning_content"), *content = json_object_get(msg, "content"),
           *calls = json_object_get(msg, "tool_calls");
    const char *finish = json_string_value(json_object_get(ch, "finish_reason"));
    bool cut = finish && !strcmp(finish, "length");
    json_t *out = json_array();
    if (json_is_string(reasoning) && json_string_length(reasoning))
        json_array_append_new(out, reasoning_item(r, json_string_value(reasoning), json_string_length(reasoning)));
    if (json_string_length(content) || !json_array_size(calls))
        json_array_append_new(out, message_item(r, json_is_string(content) ? json_string_value(content) : "",
                                                json_string_length(content), cut ? "incomplete" : "completed"));
    for (size_t i = 0; i < json_array_size(calls); i++)
        json_array_append_new(out, call_item(r, (int)i, json_array_get(calls, i), "completed", true));
    return response_object(r, cut ? "incomplete" : "completed", out, usage_of(json_object_get(completion, "usage")),
                           cut ? "max_output_tokens" : NULL, NULL);
}

/* ---- the stream ------------------------------------------------------------------------------- */

/* An event: its type and sequence number into data, then out. */
static void ev(struct moe_responses *r, moe_responses_emit_fn emit, void *ud, const char *type, json_t *data)
{
    if (!data) return;
    json_object_set_new(data, "type", json_string(type));
    json_object_set_new(data, "sequence_number", json_integer(r->seq++));
    emit(ud, type, data);
}

void moe_responses_stream_start(struct moe_responses *r, moe_responses_emit_fn emit, void *ud)
{
    ev(r, emit, ud, "response.created",
       json_pack("{s:o}", "response", response_object(r, "in_progress", json_array(), NULL, NULL, NULL)));
    ev(r, emit, ud, "response.in_progress",
       json_pack("{s:o}", "response", response_object(r, "in_progress", json_array(), NULL, NULL, NULL)));
}

static void text_add(struct moe_responses *r, const char *t, size_t n)
{
    if (!moe_grow((void **)&r->text, &r->cap, r->len + n + 1, 1, 256))
        return; /* the item's whole text is short of these bytes; its deltas went out */
    memcpy(r->text + r->len, t, n);
    r->len += n;
}

/* A content part: a message's output_text or a reasoning item's reasoning_text. */
static json_t *text_part(bool msg, const char *t, size_t n)
{
    return msg ? json_pack("{s:s,s:s%,s:[]}", "type", "output_text", "text", t, n, "annotations")
               : json_pack("{s:s,s:s%}", "type", "reasoning_text", "text", t, n);
}

/* The open item ends (status: a message's). */
static void item_close(struct moe_responses *r, moe_responses_emit_fn emit, void *ud, const char *status)
{
    if (r->open == OPEN_NONE) return;
    json_int_t at = (json_int_t)json_array_size(r->output);
    const char *t = r->text ? r->text : "";
    bool msg = r->open == OPEN_MESSAGE;
    json_t *id = item_id(r, msg ? "msg" : "rs", -1);
    ev(r, emit, ud, msg ? "response.output_text.done" : "response.reasoning_text.done",
       msg ? json_pack("{s:O,s:I,s:i,s:s%,s:[]}", "item_id", id, "output_index", at, "content_index", 0, "text", t,
                       r->len, "logprobs")
           : json_pack("{s:O,s:I,s:i,s:s%}", "item_id", id, "output_index", at, "content_index", 0, "text", t, r->len));
    ev(r, emit, ud, "response.content_part.done",
       json_pack("{s:O,s:I,s:i,s:o}", "item_id", id, "output_index", at, "content_index", 0, "part",
                 text_part(msg, t, r->len)));
    json_t *item = msg ? message_item(r, t, r->len, status) : reasoning_item(r, t, r->len);
    ev(r, emit, ud, "response.output_item.done", json_pack("{s:I,s:O}", "output_index", at, "item", item));
    json_array_append_new(r->output, item);
    json_decref(id);
    r->open = OPEN_NONE;
    r->len = 0;
}

static void item_open(struct moe_responses *r, moe_responses_emit_fn emit, void *ud, int kind)
{
    if (r->open == kind) return;
    item_close(r, emit, ud, "completed");
    json_int_t at = (json_int_t)json_array_size(r->output);
    bool msg = kind == OPEN_MESSAGE;
    json_t *id = item_id(r, msg ? "msg" : "rs", -1);
    json_t *item = msg ? json_pack("{s:O,s:s,s:s,s:s,s:[]}", "id", id, "type", "message", "status", "in_progress",
                                   "role", "assistant", "content")
                       : json_pack("{s:O,s:s,s:[],s:[]}", "id", id, "type", "reasoning", "summary", "content");
    ev(r, emit, ud, "response.output_item.added", json_pack("{s:I,s:o}", "output_index", at, "item", item));
    ev(r, emit, ud, "response.content_part.added",
       json_pack("{s:O,s:I,s:i,s:o}", "item_id", id, "output_index", at, "content_index", 0, "part",
                 text_part(msg, "", 0)));
    json_decref(id);
    r->open = kind;
    r->len = 0;
}

/* A delta of the open item's text (opened first if it is not). */
static void item_delta(struct moe_responses *r, moe_responses_emit_fn emit, void *ud, int kind, const json_t *s)
{
    size_t n = json_string_length(s);
    if (!n) return;
    item_open(r, emit, ud, kind);
    text_add(r, json_string_value(s), n);
    json_int_t at = (json_int_t)json_array_size(r->output);
    bool msg = kind == OPEN_MESSAGE;
    json_t *d = json_pack("{s:o,s:I,s:i,s:O}", "item_id", item_id(r, msg ? "msg" : "rs", -1), "output_index", at,
                          "content_index", 0, "delta", s);
    if (msg && d) json_object_set_new(d, "logprobs", json_array());
    ev(r, emit, ud, msg ? "response.output_text.delta" : "response.reasoning_text.delta", d);
}

void moe_responses_stream_chunk(struct moe_responses *r, const json_t *chunk, moe_responses_emit_fn emit, void *ud)
{
    json_t *err = json_object_get(chunk, "error");
    if (err) {
        item_close(r, emit, ud, "incomplete");
        json_t *e = json_pack("{s:s,s:O}", "code", "server_error", "message", json_object_get(err, "message"));
        ev(r, emit, ud, "response.failed",
           json_pack("{s:o}", "response", response_object(r, "failed", json_deep_copy(r->output), NULL, NULL, e)));
        return;
    }
    json_t *ch = json_array_get(json_object_get(chunk, "choices"), 0), *delta = json_object_get(ch, "delta");
    item_delta(r, emit, ud, OPEN_REASONING, json_object_get(delta, "reasoning_content"));
    item_delta(r, emit, ud, OPEN_MESSAGE, json_object_get(delta, "content"));
    json_t *calls = json_object_get(delta, "tool_calls");
    if (json_array_size(calls)) item_close(r, emit, ud, "completed");
    for (size_t i = 0; i < json_array_size(calls); i++) {
        json_t *call = json_array_get(calls, i), *args = json_object_get(json_object_get(call, "function"), "arguments");
        json_int_t at = (json_int_t)json_array_size(r->output);
        json_t *id = item_id(r, "fc", (int)i);
        ev(r, emit, ud, "response.output_item.added",
           json_pack("{s:I,s:o}", "output_index", at, "item", call_item(r, (int)i, call, "in_progress", false)));
        ev(r, emit, ud, "response.function_call_arguments.delta",
           json_pack("{s:O,s:I,s:O}", "item_id", id, "output_index", at, "delta", args));
        ev(r, emit, ud, "response.function_call_arguments.done",
           json_pack("{s:O,s:I,s:O}", "item_id", id, "output_index", at, "arguments", args));
        json_t *item = call_item(r, (int)i, call, "completed", true);
        ev(r, emit, ud, "response.output_item.done", json_pack("{s:I,s:O}", "output_index", at, "item", item));
        json_array_append_new(r->output, item);
        json_decref(id);
    }
    const char *finish = json_string_value(json_object_get(ch, "finish_reason"));
    if (!finish) return;
    bool cut = !strcmp(finish, "length");
    if (json_array_size(r->output) == 0 && r->open != OPEN_MESSAGE) /* no text at all: an empty message */
        item_open(r, emit, ud, OPEN_MESSAGE);
    item_close(r, emit, ud, cut ? "incomplete" : "completed");
    json_t *fin = response_object(r, cut ? "incomplete" : "completed", json_deep_copy(r->output),
                                  usage_of(json_object_get(chunk, "usage")), cut ? "max_output_tokens" : NULL, NULL);
    json_decref(r->final);
    r->final = json_incref(fin);
    ev(r, emit, ud, cut ? "response.incomplete" : "response.completed", json_pack("{s:o}", "response", fin));
}

const char *moe_responses_id(const struct moe_responses *r) { return r->id; }
bool moe_responses_store_wanted(const struct moe_responses *r) { return r->store; }
void moe_responses_set_stored(struct moe_responses *r, bool stored) { r->stored = stored; }
const json_t *moe_responses_final(const struct moe_responses *r) { return r->final; }

json_t *moe_responses_conversation(const struct moe_responses *r, const json_t *response)
{
    json_t *msgs = json_deep_copy(r->conversation), *calls = json_array();
    const char *text = NULL;
    size_t len = 0;
    json_t *out = json_object_get(response, "output");
    for (size_t i = 0; i < json_array_size(out); i++) {
        json_t *it = json_array_get(out, i);
        const char *type = json_string_value(json_object_get(it, "type"));
        if (type && !strcmp(type, "message")) {
            json_t *t = json_object_get(json_array_get(json_object_get(it, "content"), 0), "text");
            text = json_string_value(t);
            len = json_string_length(t);
        } else if (type && !strcmp(type, "function_call")) {
            json_array_append_new(calls, json_pack("{s:O,s:s,s:{s:O,s:O}}", "id", json_object_get(it, "call_id"),
                                                   "type", "function", "function", "name",
                                                   json_object_get(it, "name"), "arguments",
                                                   json_object_get(it, "arguments")));
        }
    }
    json_t *answer = json_pack("{s:s,s:o}", "role", "assistant", "content", text ? json_stringn(text, len) : json_null());
    if (answer && json_array_size(calls)) json_object_set(answer, "tool_calls", calls);
    json_decref(calls);
    if (!msgs || !answer) {
        json_decref(msgs);
        json_decref(answer);
        return NULL;
    }
    json_array_append_new(msgs, answer);
    return msgs;
}
