/* Request decoders: OpenAI JSON, moeflow.v1 and KServe v2 protobuf. */
#include "requests.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/json_guide.h"
#include "../model/chat.h"
#include "grpc_service.pb-c.h"
#include "moeflow.pb-c.h"

#define TEMP_MAX 100.0 /* temperatures beyond are noise, refuse them */

void moe_gen_request_free(struct moe_gen_request *r)
{
    if (!r)
        return;
    free(r->prompt);
    free(r->prompt_ids);
    for (int i = 0; i < r->n_batch; i++) {
        free(r->batch[i].text);
        free(r->batch[i].ids);
    }
    free(r->batch);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    moe_json_schema_unref(r->json_schema);
    json_decref(r->tools);
    memset(r, 0, sizeof(*r));
}

static void req_init(struct moe_gen_request *r)
{
    memset(r, 0, sizeof(*r));
    r->sampling.top_p = 1.0f;
    r->n = 1;
}

/* ---- UTF-8 ---- */

/* Length of the sequence starting with lead byte c, 0 if c cannot lead. */
static int utf8_seq_len(unsigned char c)
{
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) return 2;
    if (c >= 0xe0 && c <= 0xef) return 3;
    if (c >= 0xf0 && c <= 0xf4) return 4;
    return 0;
}

int moe_utf8_cut(const char *s, size_t max)
{
    return (int)moe_utf8_complete_prefix(s, strnlen(s, max));
}

size_t moe_utf8_complete_prefix(const char *buf, size_t n)
{
    const unsigned char *s = (const unsigned char *)buf;
    /* Only the last 3 bytes can start an incomplete sequence. */
    size_t start = n > 3 ? n - 3 : 0;
    for (size_t i = n; i > start; i--) {
        unsigned char c = s[i - 1];
        if ((c & 0xc0) == 0x80)
            continue; /* continuation byte: keep looking for its lead */
        int k = utf8_seq_len(c);
        if (k > 1 && (i - 1) + (size_t)k > n)
            return i - 1; /* lead whose sequence is cut off */
        return n;
    }
    return n;
}

/* ---- JSON (OpenAI) ---- */

static enum moe_status json_get_int(json_t *o, const char *key, long long lo, long long hi,
                                    long long *out, bool *present)
{
    json_t *v = json_object_get(o, key);
    *present = false;
    if (!v || json_is_null(v))
        return MOE_OK;
    double d;
    if (json_is_integer(v))
        d = (double)json_integer_value(v);
    else if (json_is_real(v))
        d = json_real_value(v);
    else
        return moe_errorf(MOE_EINVAL, "'%s' must be an integer", key);
    if (!isfinite(d) || d != floor(d))
        return moe_errorf(MOE_EINVAL, "'%s' must be an integer, got %.17g", key, d);
    /* (double)INT64_MAX rounds up to 2^63: a real 2^63 passes d > hi and its cast overflows */
    if (d < (double)lo || d > (double)hi || (!json_is_integer(v) && d >= 0x1p63))
        return moe_errorf(MOE_ERANGE, "'%s' = %.17g is outside [%lld, %lld]", key, d, lo, hi);
    *out = json_is_integer(v) ? (long long)json_integer_value(v) : (long long)d;
    *present = true;
    return MOE_OK;
}

/* v as the shortest text that reads back as v (as a float when single: a protobuf float field), into buf:
 * a value just past a bound is quoted as itself, where %g's six digits would quote the bound. */
static const char *num_str(double v, bool single, char buf[32])
{
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(buf, 32, "%.*g", prec, v);
        double back = strtod(buf, NULL);
        if (single ? (float)back == (float)v : back == v)
            break;
    }
    return buf;
}

/* d in [lo, hi], or (lo, hi] when lo_open; never NaN. */
static bool in_range(double d, double lo, double hi, bool lo_open)
{
    return d >= lo && d <= hi && !(lo_open && d == lo);
}

static enum moe_status json_get_num(json_t *o, const char *key, double lo, double hi, bool lo_open,
                                    double *out, bool *present)
{
    json_t *v = json_object_get(o, key);
    *present = false;
    if (!v || json_is_null(v))
        return MOE_OK;
    if (!json_is_number(v))
        return moe_errorf(MOE_EINVAL, "'%s' must be a number", key);
    double d = json_number_value(v);
    if (!in_range(d, lo, hi, lo_open))
        return moe_errorf(MOE_ERANGE, "'%s' = %.17g is outside %s%g, %g]", key, d,
                          lo_open ? "(" : "[", lo, hi);
    *out = d;
    *present = true;
    return MOE_OK;
}

static enum moe_status json_get_bool(json_t *o, const char *key, bool *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return MOE_OK;
    if (!json_is_boolean(v))
        return moe_errorf(MOE_EINVAL, "'%s' must be true or false", key);
    *out = json_is_true(v);
    return MOE_OK;
}

/* Prompt text s[0..n) of field into *out (malloc'd, NUL-terminated), *out_len bytes. */
static enum moe_status copy_prompt_text(const char *s, size_t n, const char *field, char **out, size_t *out_len)
{
    if (n > MOE_REQ_MAX_PROMPT_BYTES)
        return moe_errorf(MOE_ERANGE, "'%s' is %zu bytes, more than %u", field, n,
                          MOE_REQ_MAX_PROMPT_BYTES);
    if (!moe_utf8_valid(s, n))
        return moe_errorf(MOE_EINVAL, "'%s' is not valid UTF-8", field);
    if (memchr(s, 0, n)) /* JSON and protobuf strings are refused one earlier; KServe's BYTES are not */
        return moe_errorf(MOE_EINVAL, "'%s' holds a NUL byte: text is sent without NUL", field);
    *out = malloc(n + 1);
    if (!*out)
        return moe_errorf(MOE_ENOMEM, "'%s': out of memory", field);
    if (n)
        memcpy(*out, s, n);
    (*out)[n] = 0;
    *out_len = n;
    return MOE_OK;
}

static enum moe_status set_prompt_text(struct moe_gen_request *r, const char *s, size_t n,
                                       const char *field)
{
    return copy_prompt_text(s, n, field, &r->prompt, &r->prompt_len);
}

/* Element i of field, a JSON array of token ids: an integer 0..INT32_MAX into *id, else the error naming it. */
static enum moe_status json_token_id(const json_t *v, const char *field, size_t i, int32_t *id)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
        return moe_errorf(MOE_EINVAL, "'%s[%zu]' must be a token id (integer >= 0)", field, i);
    *id = (int32_t)json_integer_value(v);
    return MOE_OK;
}

/* The token ids of field, a JSON array, into *out (malloc'd), *n_out of them. */
static enum moe_status copy_prompt_ids(json_t *arr, const char *field, int **out, int *n_out)
{
    size_t n = json_array_size(arr);
    if (n > MOE_REQ_MAX_IDS)
        return moe_errorf(MOE_ERANGE, "'%s' has %zu token ids, more than %d", field, n, MOE_REQ_MAX_IDS);
    *out = malloc((n ? n : 1) * sizeof(int));
    if (!*out)
        return moe_errorf(MOE_ENOMEM, "'%s': out of memory", field);
    for (size_t i = 0; i < n; i++) {
        int32_t id = 0; /* set on MOE_OK; initialised for the compiler, which cannot see that */
        enum moe_status st = json_token_id(json_array_get(arr, i), field, i, &id);
        if (st != MOE_OK)
            return st;
        (*out)[i] = id;
    }
    *n_out = (int)n;
    return MOE_OK;
}

/* OpenAI's batch of prompts (a list of texts or of token-id lists, any mix): each checked as a prompt
 * alone is, named prompt[i]. */
static enum moe_status set_prompt_batch(struct moe_gen_request *r, json_t *arr)
{
    size_t n = json_array_size(arr);
    if (n > MOE_REQ_MAX_N)
        return moe_errorf(MOE_EINVAL, "'prompt' holds %zu prompts, more than %d per request: send the batch in "
                          "several requests", n, MOE_REQ_MAX_N);
    if (!(r->batch = calloc(n, sizeof(*r->batch))))
        return moe_errorf(MOE_ENOMEM, "'prompt': out of memory");
    r->n_batch = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *p = json_array_get(arr, i);
        struct moe_req_prompt *b = &r->batch[i];
        char field[32];
        snprintf(field, sizeof(field), "prompt[%zu]", i);
        enum moe_status st;
        if (json_is_string(p))
            st = copy_prompt_text(json_string_value(p), json_string_length(p), field, &b->text, &b->len);
        else if (json_is_array(p) && json_array_size(p) > 0)
            st = copy_prompt_ids(p, field, &b->ids, &b->n_ids);
        else
            st = moe_errorf(MOE_EINVAL, "'%s' must be a string or a non-empty array of token ids", field);
        if (st != MOE_OK)
            return st;
    }
    return MOE_OK;
}

/* The marker of a message's role: OpenAI's developer messages, the newer
 * name of system messages, are marked as system. */
static const char *chat_role_ok(const char *role)
{
    static const char *roles[] = { "system", "user", "assistant" };
    if (!strcmp(role, "developer"))
        return roles[0];
    for (size_t i = 0; i < MOE_ARRAY_LEN(roles); i++)
        if (!strcmp(role, roles[i]))
            return roles[i];
    return NULL;
}

/* The messages array's shape, and content given as OpenAI's list of parts
 * ([{"type": "text", "text": ...}, ...]) joined into one string, parts
 * separated by a newline (as vLLM does for text-only models). */
static enum moe_status check_messages(json_t *msgs)
{
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return moe_errorf(MOE_EINVAL, "'messages' must be a non-empty array of {role, content}");
    size_t n = json_array_size(msgs);
    if (n > 4096)
        return moe_errorf(MOE_ERANGE, "'messages' has %zu entries, more than 4096", n);
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i), *parts = json_object_get(m, "content");
        if (!json_is_array(parts))
            continue;
        size_t len = 0, np = json_array_size(parts);
        for (size_t k = 0; k < np; k++) {
            json_t *p = json_array_get(parts, k), *t = json_object_get(p, "text");
            const char *type = json_string_value(json_object_get(p, "type"));
            if (!type || strcmp(type, "text") || !json_is_string(t))
                return moe_errorf(MOE_EINVAL, "'messages[%zu].content[%zu]' must be {\"type\": \"text\", \"text\": "
                                  "string}: this model takes text only", i, k);
            len += json_string_length(t) + 1;
        }
        char *joined = malloc(len + 1);
        if (!joined)
            return moe_errorf(MOE_ENOMEM, "'messages': out of memory");
        size_t off = 0;
        for (size_t k = 0; k < np; k++) {
            json_t *t = json_object_get(json_array_get(parts, k), "text");
            if (k)
                joined[off++] = '\n';
            memcpy(joined + off, json_string_value(t), json_string_length(t));
            off += json_string_length(t);
        }
        json_t *str = json_stringn_nocheck(joined, off);
        free(joined);
        if (!str || json_object_set_new(m, "content", str))
            return moe_errorf(MOE_ENOMEM, "'messages': out of memory");
    }
    return MOE_OK;
}

/* Messages through the model's chat template: each an object with a string
 * role and a string (or null / absent) content; the template sees them as
 * they are, with every other field, and the request's tools (OpenAI's list of
 * function definitions) as `tools`, as vLLM passes them. */
/* The messages as templates read them (vLLM's reading of OpenAI's messages): a null content is "", and,
 * when parse_args, an assistant's earlier tool calls carry their arguments as the JSON value (OpenAI
 * clients send the text; Qwen3-Coder's, GLM's and MiniMax's templates iterate the object), {} when there
 * are none; arguments that are not JSON stay text.  Without parse_args the arguments stay as the client
 * sent them.  *changed (when given) says whether any arguments were replaced.  A deep copy; NULL when
 * out of memory. */
static json_t *template_messages(json_t *msgs, bool parse_args, bool *changed)
{
    json_t *out = json_deep_copy(msgs), *m, *call;
    size_t i, k;
    json_array_foreach(out, i, m) {
        if (json_is_null(json_object_get(m, "content")))
            json_object_set_new(m, "content", json_string(""));
        json_array_foreach(parse_args ? json_object_get(m, "tool_calls") : NULL, k, call) {
            json_t *fn = json_object_get(call, "function"), *args = json_object_get(fn, "arguments");
            if (!json_is_object(fn) || (args && !json_is_string(args) && !json_is_null(args)))
                continue;
            const char *text = json_string_value(args);
            json_t *v = text && *text ? json_loads(text, JSON_DECODE_ANY, NULL) : json_object();
            if (v && changed)
                *changed = true;
            if (v)
                json_object_set_new(fn, "arguments", v);
        }
    }
    return out;
}

/* Render msgs through tmpl with the extra variables, the arguments of earlier tool calls parsed or not. */
static enum moe_status render_template_messages(json_t *msgs, bool parse_args, bool *changed,
                                                const struct moe_chat *tmpl, json_t *extra, char **text, size_t *len)
{
    json_t *tm = template_messages(msgs, parse_args, changed);
    enum moe_status st = tm ? moe_chat_render(tmpl, tm, extra, text, len) : moe_errorf(MOE_ENOMEM, "out of memory");
    json_decref(tm);
    return st;
}

static enum moe_status render_chat_messages(struct moe_gen_request *r, json_t *msgs, const struct moe_chat *tmpl,
                                            json_t *extra)
{
    enum moe_status st = check_messages(msgs);
    if (st)
        return st;
    size_t n = json_array_size(msgs);
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i), *content = json_object_get(m, "content");
        if (!json_is_object(m) || !json_is_string(json_object_get(m, "role")))
            return moe_errorf(MOE_EINVAL, "'messages[%zu].role' must be a string", i);
        if (content && !json_is_string(content) && !json_is_null(content))
            return moe_errorf(MOE_EINVAL, "'messages[%zu].content' must be a string or null", i);
    }
    char *text;
    size_t len;
    bool changed = false;
    st = render_template_messages(msgs, true, &changed, tmpl, extra, &text, &len);
    /* A template that fails with the arguments as values (DeepSeek-V3's and R1's join them to text with
     * +, which fails on an object in Jinja2 too) is rendered again with them as the client sent them, as
     * the Hugging Face library hands them over; when that fails too, the first error is reported. */
    if (st && st != MOE_ENOMEM && changed) {
        char first[1024];
        snprintf(first, sizeof(first), "%s", moe_last_error());
        enum moe_status again = render_template_messages(msgs, false, NULL, tmpl, extra, &text, &len);
        st = again == MOE_OK || again == MOE_ENOMEM ? again : moe_errorf(st, "%s", first);
    }
    if (st)
        return moe_error_prefix(st == MOE_ENOMEM ? st : MOE_EINVAL, "'messages'");
    st = set_prompt_text(r, text, len, "messages");
    free(text);
    r->templated = true;
    return st;
}

/* One entry of 'tools': {"type": "function", "function": {"name": ..., "parameters": {...}}}, its name
 * and parameters (NULL when it gives none) out; false when it is not one. */
static bool tool_entry(json_t *t, const char **name, json_t **params)
{
    json_t *fn = json_object_get(t, "function");
    const char *type = json_string_value(json_object_get(t, "type"));
    *name = json_string_value(json_object_get(fn, "name"));
    *params = json_object_get(fn, "parameters");
    return type && !strcmp(type, "function") && *name && (!*params || json_is_object(*params));
}

/* A chat's chat_template_kwargs, tools and documents, whatever renders its messages (a template sees them,
 * the markers do not, tool_choice reads the tools): an object, OpenAI's function definitions, and vLLM's
 * documents for retrieval-augmented templates (objects of strings, as its list[dict[str, str]]). */
static enum moe_status check_chat_extras(json_t *root)
{
    json_t *kwargs = json_object_get(root, "chat_template_kwargs"), *tools = json_object_get(root, "tools"), *t;
    json_t *docs = json_object_get(root, "documents");
    if (kwargs && !json_is_null(kwargs) && !json_is_object(kwargs))
        return moe_errorf(MOE_EINVAL, "'chat_template_kwargs' must be an object");
    if (tools && !json_is_null(tools) && !json_is_array(tools))
        return moe_errorf(MOE_EINVAL, "'tools' must be an array of tool definitions");
    size_t i;
    json_array_foreach(tools, i, t) {
        const char *name;
        json_t *params;
        if (!tool_entry(t, &name, &params))
            return moe_errorf(MOE_EINVAL, "'tools'[%zu] must be {\"type\": \"function\", \"function\": {\"name\": "
                              "..., \"parameters\": {...}}}", i);
    }
    if (docs && !json_is_null(docs) && !json_is_array(docs))
        return moe_errorf(MOE_EINVAL, "'documents' must be an array of objects (such as {\"title\": ..., \"text\": ...})");
    json_array_foreach(docs, i, t) {
        const char *key;
        json_t *v;
        if (!json_is_object(t))
            return moe_errorf(MOE_EINVAL, "'documents'[%zu] must be an object of strings (such as {\"title\": ..., "
                              "\"text\": ...})", i);
        json_object_foreach(t, key, v)
            if (!json_is_string(v))
                return moe_errorf(MOE_EINVAL, "'documents'[%zu]['%.*s'] must be a string", i, moe_utf8_cut(key, 64), key);
    }
    return MOE_OK;
}

/* The variables a chat's template sees from the request, as vLLM sets them: add_generation_prompt (true
 * unless given), continue_final_message (false unless given), tools and documents, then chat_template_kwargs
 * over them.  *vars is a new object; *gen and *cont say whether the two hold then (Python's truth).  Both
 * true, or continuing a last message that is not the assistant's, is an error naming the fields. */
static enum moe_status chat_vars(json_t *root, json_t *msgs, json_t **vars, bool *gen, bool *cont)
{
    *vars = NULL;
    *gen = true;
    *cont = false;
    enum moe_status st = json_get_bool(root, "add_generation_prompt", gen);
    if (st == MOE_OK)
        st = json_get_bool(root, "continue_final_message", cont);
    if (st)
        return st;
    json_t *kwargs = json_object_get(root, "chat_template_kwargs"), *tools = json_object_get(root, "tools");
    json_t *docs = json_object_get(root, "documents");
    json_t *v = json_pack("{s:b, s:b}", "add_generation_prompt", *gen, "continue_final_message", *cont);
    if (!v || (json_is_array(tools) && json_object_set(v, "tools", tools)) ||
        (json_is_array(docs) && json_object_set(v, "documents", docs)) ||
        (json_is_object(kwargs) && json_object_update(v, kwargs))) {
        json_decref(v);
        return moe_errorf(MOE_ENOMEM, "'messages': out of memory");
    }
    *gen = moe_chat_truthy(json_object_get(v, "add_generation_prompt"));
    *cont = moe_chat_truthy(json_object_get(v, "continue_final_message"));
    json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
    const char *role = json_string_value(json_object_get(last, "role"));
    if (*gen && *cont)
        st = moe_errorf(MOE_EINVAL, "'add_generation_prompt' and 'continue_final_message' cannot both be true "
                        "(set 'add_generation_prompt' to false to continue the last message)");
    else if (*cont && role && strcmp(role, "assistant")) /* a message without a role is refused later */
        st = moe_errorf(MOE_EINVAL, "'continue_final_message' needs the last message to be the assistant's, not "
                        "'%.*s'", moe_utf8_cut(role, 32), role);
    if (st)
        json_decref(v);
    else
        *vars = v;
    return st;
}

/* Messages as moeflow's markers (moe_chat_markers), with the generation prompt when gen, cut after the
 * last message's content when cont (as a template's text is). */
static enum moe_status parse_chat_messages(struct moe_gen_request *r, json_t *msgs, bool gen, bool cont)
{
    enum moe_status st = check_messages(msgs);
    if (st)
        return st;
    size_t n = json_array_size(msgs);
    const char **roles = calloc(n, sizeof(*roles)), **contents = calloc(n, sizeof(*contents));
    if (!roles || !contents) {
        st = moe_errorf(MOE_ENOMEM, "'messages': out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        if (!json_is_object(m) || !json_is_string(role)) {
            st = moe_errorf(MOE_EINVAL, "'messages[%zu].role' must be a string", i);
            goto out;
        }
        roles[i] = chat_role_ok(json_string_value(role));
        if (!roles[i]) {
            st = moe_errorf(MOE_EINVAL, "'messages[%zu].role' = '%.*s' is not system, developer, user or assistant",
                            i, moe_utf8_cut(json_string_value(role), 32), json_string_value(role));
            goto out;
        }
        if (!json_is_string(content)) {
            st = moe_errorf(MOE_EINVAL, "'messages[%zu].content' must be a string", i);
            goto out;
        }
        contents[i] = json_string_value(content);
    }
    char *text = moe_chat_markers((int)n, roles, contents, gen);
    if (!text) {
        st = moe_errorf(MOE_ENOMEM, "'messages': out of memory");
        goto out;
    }
    size_t len = strlen(text);
    if (cont && (st = moe_chat_continue_cut(text, len, contents[n - 1], strlen(contents[n - 1]), &len)) != MOE_OK)
        st = moe_error_prefix(st, "'continue_final_message'");
    else
        st = set_prompt_text(r, text, len, "messages");
    free(text);
out:
    free(roles);
    free(contents);
    return st;
}

/* Add stop sequence number i (v, len bytes) to out. */
static enum moe_status add_stop(struct moe_gen_request *out, size_t i, const char *v, size_t len)
{
    if (out->n_stop >= MOE_REQ_MAX_STOP)
        return moe_errorf(MOE_EINVAL, "'stop' has more than %d sequences", MOE_REQ_MAX_STOP);
    if (len == 0 || len > MOE_REQ_MAX_STOP_BYTES || memchr(v, 0, len) || !moe_utf8_valid(v, len))
        return moe_errorf(MOE_EINVAL, "'stop'[%zu] must be 1..%d bytes of UTF-8 text without NUL", i,
                          MOE_REQ_MAX_STOP_BYTES);
    out->stop[out->n_stop] = strndup(v, len);
    if (!out->stop[out->n_stop])
        return moe_errorf(MOE_ENOMEM, "'stop': out of memory");
    out->n_stop++;
    return MOE_OK;
}

/* "stop": a string or an array of up to MOE_REQ_MAX_STOP strings. */
static enum moe_status parse_stop(json_t *root, struct moe_gen_request *out)
{
    json_t *stop = json_object_get(root, "stop");
    if (!stop || json_is_null(stop))
        return MOE_OK;
    if (!json_is_string(stop) && !json_is_array(stop))
        return moe_errorf(MOE_EINVAL, "'stop' must be a string or an array of strings");
    size_t n = json_is_array(stop) ? json_array_size(stop) : 1;
    if (n > MOE_REQ_MAX_STOP)
        return moe_errorf(MOE_EINVAL, "'stop' has %zu sequences, at most %d are accepted", n, MOE_REQ_MAX_STOP);
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_is_array(stop) ? json_array_get(stop, i) : stop;
        if (!json_is_string(e))
            return moe_errorf(MOE_EINVAL, "'stop'[%zu] must be a string", i);
        enum moe_status st = add_stop(out, i, json_string_value(e), json_string_length(e));
        if (st != MOE_OK)
            return st;
    }
    return MOE_OK;
}

/* vLLM's stop_token_ids (an array of up to MOE_MAX_STOP_TOKEN_IDS token ids, their bound the vocabulary,
 * which the server checks) and min_tokens (0.., at most max_tokens when given, named max_key). */
static enum moe_status parse_stop_ids(json_t *root, const char *max_key, struct moe_gen_request *out)
{
    json_t *ids = json_object_get(root, "stop_token_ids");
    if (ids && !json_is_null(ids)) {
        if (!json_is_array(ids))
            return moe_errorf(MOE_EINVAL, "'stop_token_ids' must be an array of token ids");
        size_t n = json_array_size(ids);
        if (n > MOE_MAX_STOP_TOKEN_IDS)
            return moe_errorf(MOE_EINVAL, "'stop_token_ids' has %zu ids, at most %d are accepted", n,
                              MOE_MAX_STOP_TOKEN_IDS);
        for (size_t i = 0; i < n; i++) {
            enum moe_status st = json_token_id(json_array_get(ids, i), "stop_token_ids", i, &out->stop_token_ids[i]);
            if (st != MOE_OK)
                return st;
        }
        out->n_stop_token_ids = (int)n;
    }
    long long v;
    bool have;
    enum moe_status st = json_get_int(root, "min_tokens", 0, INT32_MAX, &v, &have);
    if (st != MOE_OK || !have)
        return st;
    out->min_tokens = (int)v;
    if ((out->max_tokens > 0 || out->prompt_only) && out->min_tokens > out->max_tokens)
        return moe_errorf(MOE_EINVAL, "'min_tokens' = %d is more than '%s' = %d: lower min_tokens or raise %s",
                          out->min_tokens, max_key, out->max_tokens, max_key);
    return MOE_OK;
}

/* OpenAI's log-probability fields.  Completions: logprobs = N (0..20), the
 * token's and the N most likely; chat: logprobs true, and top_logprobs N with
 * it.  null or false is off. */
static enum moe_status parse_logprobs(json_t *root, bool chat, struct moe_gen_request *out)
{
    long long n;
    bool have;
    enum moe_status st;
    if (!chat) {
        if ((st = json_get_int(root, "logprobs", 0, MOE_MAX_TOP_LOGPROBS, &n, &have)) != MOE_OK)
            return st;
        out->logprobs = have;
        out->top_logprobs = have ? (int)n : 0;
        return MOE_OK;
    }
    if ((st = json_get_bool(root, "logprobs", &out->logprobs)) != MOE_OK ||
        (st = json_get_int(root, "top_logprobs", 0, MOE_MAX_TOP_LOGPROBS, &n, &have)) != MOE_OK)
        return st;
    if (have && n > 0 && !out->logprobs)
        return moe_errorf(MOE_EINVAL, "'top_logprobs' needs \"logprobs\": true");
    out->top_logprobs = have ? (int)n : 0;
    return MOE_OK;
}

/* The penalties and min_p (OpenAI's and vLLM's names and ranges), as JSON fields and GenerateRequest's. */
static const struct {
    const char *key;
    double lo, hi;
    bool lo_open;
    size_t off;
} penalty_fields[] = {
    { "presence_penalty", -MOE_MAX_PENALTY, MOE_MAX_PENALTY, false, offsetof(struct moe_sampling, presence_penalty) },
    { "frequency_penalty", -MOE_MAX_PENALTY, MOE_MAX_PENALTY, false, offsetof(struct moe_sampling, frequency_penalty) },
    { "repetition_penalty", 0, MOE_MAX_REPETITION_PENALTY, true, offsetof(struct moe_sampling, repetition_penalty) },
    { "min_p", 0, 1, false, offsetof(struct moe_sampling, min_p) },
};

static float *penalty_field(struct moe_sampling *p, size_t i)
{
    return (float *)((char *)p + penalty_fields[i].off);
}

/* One logit_bias entry appended to p: the bias in [-100, 100], the id not given before (its bound
 * is the vocabulary, which the server checks). */
static enum moe_status add_logit_bias(struct moe_sampling *p, long long id, double bias)
{
    if (id < 0 || id > INT32_MAX)
        return moe_errorf(MOE_EINVAL, "logit_bias token %lld is not a token id", id);
    char num[32];
    if (!(bias >= -100 && bias <= 100))
        return moe_errorf(MOE_ERANGE, "logit_bias of token %lld = %s must be in [-100, 100]", id,
                          num_str(bias, false, num));
    if (p->n_logit_bias == MOE_MAX_LOGIT_BIAS)
        return moe_errorf(MOE_EINVAL, "logit_bias has more than %d entries", MOE_MAX_LOGIT_BIAS);
    for (int i = 0; i < p->n_logit_bias; i++)
        if (p->logit_bias[i].id == id)
            return moe_errorf(MOE_EINVAL, "logit_bias names token %lld twice", id);
    p->logit_bias[p->n_logit_bias++] = (struct moe_logit_bias){ (int32_t)id, (float)bias };
    return MOE_OK;
}

/* The penalties, min_p and logit_bias ({"token id": bias, ...}: OpenAI's map of decimal ids). */
static enum moe_status parse_penalties(json_t *root, struct moe_sampling *p)
{
    enum moe_status st;
    for (size_t i = 0; i < MOE_ARRAY_LEN(penalty_fields); i++) {
        double d;
        bool have;
        if ((st = json_get_num(root, penalty_fields[i].key, penalty_fields[i].lo, penalty_fields[i].hi,
                               penalty_fields[i].lo_open, &d, &have)) != MOE_OK)
            return st;
        if (have)
            *penalty_field(p, i) = moe_sampling_float(d);
    }
    json_t *lb = json_object_get(root, "logit_bias");
    if (!lb || json_is_null(lb))
        return MOE_OK;
    if (!json_is_object(lb))
        return moe_errorf(MOE_EINVAL, "'logit_bias' must be an object mapping token ids to numbers");
    const char *key;
    json_t *v;
    json_object_foreach(lb, key, v) {
        size_t n = strlen(key);
        if (!n || n > 10 || strspn(key, "0123456789") != n)
            return moe_errorf(MOE_EINVAL, "'logit_bias' key '%.*s' is not a token id (a non-negative "
                              "decimal integer)", moe_utf8_cut(key, 32), key);
        if (!json_is_number(v))
            return moe_errorf(MOE_EINVAL, "'logit_bias' of token %s must be a number", key);
        if ((st = add_logit_bias(p, strtoll(key, NULL, 10), json_number_value(v))) != MOE_OK)
            return st;
    }
    return MOE_OK;
}

/* response_format {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}:
 * the schema compiled (engine/json_guide.h). */
static enum moe_status openai_schema(const json_t *js, struct moe_gen_request *out)
{
    const json_t *schema = json_object_get(js, "schema");
    if (!json_is_object(js) || !(json_is_object(schema) || json_is_boolean(schema)))
        return moe_errorf(MOE_EINVAL, "'response_format' json_schema needs \"json_schema\": {\"name\": ..., "
                          "\"schema\": {...}}");
    const json_t *name = json_object_get(js, "name");
    if (name && !json_is_string(name))
        return moe_errorf(MOE_EINVAL, "'response_format' json_schema 'name' must be a string");
    char *text = json_dumps(schema, JSON_ENCODE_ANY | JSON_COMPACT);
    if (!text) return moe_errorf(MOE_ENOMEM, "out of memory reading 'response_format'");
    enum moe_status st = moe_json_schema_parse(text, strlen(text), &out->json_schema);
    free(text);
    if (st != MOE_OK) moe_error_prefix(st, "'response_format' json_schema");
    return st;
}

/* tool_choice "required" or {"type": "function", "function": {"name": N}} (chat): the reply is a call
 * of one of the request's tools (of N), generated as {"name": ..., "arguments": {...}} under a schema
 * made of the tools' parameters; "auto" and "none" leave the reply text. */
static enum moe_status parse_tool_choice(json_t *root, bool chat, const struct moe_chat *tmpl,
                                         struct moe_gen_request *out)
{
    json_t *tc = json_object_get(root, "tool_choice"), *tools = json_object_get(root, "tools");
    const char *mode = json_string_value(tc), *want = NULL;
    if (!tc || json_is_null(tc) || (mode && !strcmp(mode, "auto"))) {
        /* the model may call a tool in its own words: <tool_call> blocks, when its template asks for them */
        out->tool_parse = chat && json_is_array(tools) && json_array_size(tools) > 0 ? moe_chat_tool_style(tmpl)
                                                                                      : MOE_TOOLS_NONE;
        if (out->tool_parse)
            out->tools = json_incref(tools);
        return MOE_OK;
    }
    if (mode && !strcmp(mode, "none")) return MOE_OK;
    if (!mode) {
        json_t *fn = json_object_get(tc, "function");
        want = json_string_value(json_object_get(fn, "name"));
        if (!json_is_object(tc) || !want || strcmp(json_string_value(json_object_get(tc, "type")) ?
                                                   json_string_value(json_object_get(tc, "type")) : "", "function"))
            return moe_errorf(MOE_EINVAL, "'tool_choice' must be \"none\", \"auto\", \"required\" or "
                              "{\"type\": \"function\", \"function\": {\"name\": ...}}");
    } else if (strcmp(mode, "required")) {
        return moe_errorf(MOE_EINVAL, "'tool_choice' \"%.*s\" is not one of none, auto, required",
                          moe_utf8_cut(mode, 40), mode);
    }
    if (!chat) return moe_errorf(MOE_EINVAL, "'tool_choice' is for chat completions");
    if (out->json_object || out->json_schema)
        return moe_errorf(MOE_EINVAL, "'tool_choice' %s and 'response_format' %s: a reply is a tool call or "
                          "JSON of the format, not both", mode ? mode : "(a function)",
                          out->json_object ? "json_object" : "json_schema");
    if (!json_is_array(tools) || json_array_size(tools) == 0)
        return moe_errorf(MOE_EINVAL, "'tool_choice' needs 'tools': the functions the reply may call");
    json_t *any = json_array(), *defs = json_object(), *schema = NULL;
    size_t i;
    json_t *t;
    enum moe_status st = MOE_OK;
    if (!any || !defs) {
        st = moe_errorf(MOE_ENOMEM, "out of memory reading 'tools'");
        goto out;
    }
    json_array_foreach(tools, i, t) { /* each a function (check_chat_extras) */
        const char *name;
        json_t *params;
        (void)tool_entry(t, &name, &params);
        if (want && strcmp(want, name)) continue;
        json_t *args = params ? json_incref(params) : json_pack("{s:s}", "type", "object");
        json_t *b = json_pack("{s:s,s:{s:{s:s},s:o},s:[s,s],s:b}", "type", "object", "properties", "name", "const",
                              name, "arguments", args, "required", "name", "arguments", "additionalProperties", 0);
        if (!b || json_array_append_new(any, b)) {
            st = moe_errorf(MOE_ENOMEM, "out of memory reading 'tools'");
            goto out;
        }
        /* the parameters' definitions, where their "#/$defs/..." references look */
        for (int d = 0; d < 2 && params; d++) {
            const char *dk = d ? "definitions" : "$defs";
            json_t *src = json_object_get(params, dk), *dst = json_object_get(defs, dk), *v;
            const char *k;
            if (!json_is_object(src)) continue;
            if (!dst) json_object_set_new(defs, dk, dst = json_object());
            json_object_foreach(src, k, v) {
                json_t *have = json_object_get(dst, k);
                if (have && !json_equal(have, v)) {
                    st = moe_errorf(MOE_ENOTSUP, "'tools': two functions' parameters define '%s/%.*s' differently; "
                                    "give the definitions distinct names", dk, moe_utf8_cut(k, 64), k);
                    goto out;
                }
                json_object_set(dst, k, v);
            }
        }
    }
    if (json_array_size(any) == 0) {
        st = moe_errorf(MOE_EINVAL, "'tool_choice' names function '%.*s', which is not among 'tools'",
                        moe_utf8_cut(want, 64), want);
        goto out;
    }
    schema = json_deep_copy(defs);
    if (schema) json_object_set(schema, "anyOf", any);
    char *text = schema ? json_dumps(schema, JSON_COMPACT) : NULL;
    if (!text) {
        st = moe_errorf(MOE_ENOMEM, "out of memory reading 'tools'");
        goto out;
    }
    st = moe_json_schema_parse(text, strlen(text), &out->json_schema);
    free(text);
    if (st != MOE_OK) {
        moe_error_prefix(st, "'tools' parameters");
        goto out;
    }
    moe_json_schema_compact(out->json_schema, false); /* calls as clients see them: no layout to spend tokens on */
    out->tool_call = true;
out:
    json_decref(schema);
    json_decref(defs);
    json_decref(any);
    return st;
}

/* A choice among n texts (NUL-terminated) as out's schema. */
static enum moe_status choice_schema(const char *const *texts, size_t n, struct moe_gen_request *out)
{
    size_t lens[MOE_JSON_MAX_ENUM];
    if (n > MOE_JSON_MAX_ENUM) return moe_errorf(MOE_EINVAL, "%zu texts; at most %d", n, MOE_JSON_MAX_ENUM);
    for (size_t i = 0; i < n; i++) lens[i] = strlen(texts[i]);
    return moe_json_schema_choice(texts, lens, (int)n, &out->json_schema);
}

/* structured_outputs.disable_any_whitespace: the request's JSON (a schema, or JSON mode's object)
 * with no whitespace between its tokens. */
static enum moe_status no_whitespace(json_t *so, struct moe_gen_request *out)
{
    json_t *dw = so ? json_object_get(so, "disable_any_whitespace") : NULL;
    if (dw && !json_is_null(dw) && !json_is_boolean(dw))
        return moe_errorf(MOE_EINVAL, "'disable_any_whitespace' must be true or false");
    if (!json_is_true(dw)) return MOE_OK;
    if (!out->json_schema && out->json_object) { /* JSON mode: any object, as a schema of its own */
        enum moe_status st = moe_json_schema_parse("{\"type\":\"object\"}", 17, &out->json_schema);
        if (st != MOE_OK) return st;
    }
    moe_json_schema_compact(out->json_schema, true);
    return MOE_OK;
}

/* A structural tag given as an object or as its JSON text, compiled into *sc. */
static enum moe_status tags_schema(json_t *v, const char *from, struct moe_json_schema **sc)
{
    if (!json_is_string(v) && !json_is_object(v))
        return moe_errorf(MOE_EINVAL, "'%s' must be an object {\"structures\": [...], \"triggers\": [...]} or its "
                          "JSON text", from);
    char *text = json_is_string(v) ? strdup(json_string_value(v)) : json_dumps(v, JSON_COMPACT);
    if (!text) return moe_errorf(MOE_ENOMEM, "out of memory reading '%s'", from);
    enum moe_status st = moe_json_schema_tags(text, strlen(text), sc);
    free(text);
    return st;
}

/* vLLM's structured outputs: "structured_outputs": {"json": schema, "choice": [texts], "regex":
 * pattern, "grammar": gbnf, "structural_tag": tag, "json_object": true, "disable_any_whitespace": true}
 * or the older "guided_json" / "guided_choice" / "guided_regex" / "guided_grammar" / "structural_tag"
 * (and llama.cpp's "grammar"); a JSON schema (an object, or JSON text), a choice among texts, a
 * regular expression the whole output matches, a GBNF grammar that derives it or a structural tag
 * (free text with structures), as JSON mode holds the output to them. */
static enum moe_status parse_structured(json_t *root, struct moe_gen_request *out)
{
    json_t *so = json_object_get(root, "structured_outputs");
    if (so && !json_is_null(so) && !json_is_object(so))
        return moe_errorf(MOE_EINVAL, "'structured_outputs' must be an object ({\"json\": ...} or "
                          "{\"choice\": [...]})");
    const char *ws = json_object_get(root, "guided_whitespace_pattern") ? "guided_whitespace_pattern"
                     : so && json_object_get(so, "whitespace_pattern") ? "whitespace_pattern" : NULL;
    if (ws)
        return moe_errorf(MOE_ENOTSUP, "'%s' is not supported: JSON is laid out freely (two line breaks and "
                          "some indentation at most between tokens), or with disable_any_whitespace not at all", ws);
    json_t *jo = so ? json_object_get(so, "json_object") : NULL;
    if (jo && !json_is_null(jo) && !json_is_boolean(jo))
        return moe_errorf(MOE_EINVAL, "'json_object' must be true or false");
    enum { JSON, CHOICE, REGEX, GRAMMAR, STRUCTURAL };
    static const struct {
        int kind;
        const char *key, *field; /* structured_outputs' key, the field of the request itself */
    } kinds[] = {
        { JSON, "json", "guided_json" },
        { CHOICE, "choice", "guided_choice" },
        { REGEX, "regex", "guided_regex" },
        { GRAMMAR, "grammar", "guided_grammar" },
        { GRAMMAR, NULL, "grammar" }, /* llama.cpp's server */
        { STRUCTURAL, "structural_tag", "structural_tag" },
    };
    json_t *js = NULL, *ch = NULL, *rx = NULL, *gr = NULL, *tg = NULL;
    const char *from = NULL;
    for (size_t i = 0; i < MOE_ARRAY_LEN(kinds); i++) {
        json_t *a = so && kinds[i].key ? json_object_get(so, kinds[i].key) : NULL,
               *b = json_object_get(root, kinds[i].field);
        json_t *v = a && !json_is_null(a) ? a : b && !json_is_null(b) ? b : NULL;
        if (!v) continue;
        const char *name = v == a ? kinds[i].key : kinds[i].field;
        if (from)
            return moe_errorf(MOE_EINVAL, "'%s' and '%s' together: give one", from, name);
        from = name;
        switch (kinds[i].kind) {
        case JSON: js = v; break;
        case CHOICE: ch = v; break;
        case REGEX: rx = v; break;
        case GRAMMAR: gr = v; break;
        default: tg = v; break;
        }
    }
    if (json_is_true(jo)) {
        if (from) return moe_errorf(MOE_EINVAL, "'%s' and 'json_object' together: give one", from);
        if (out->json_schema) return moe_errorf(MOE_EINVAL, "'json_object' and 'response_format' together: give one");
        out->json_object = true;
    }
    if (!from) return no_whitespace(so, out);
    if (out->json_object || out->json_schema)
        return moe_errorf(MOE_EINVAL, "'%s' and 'response_format' together: give one", from);
    enum moe_status st;
    if (js) {
        char *text;
        if (json_is_string(js))
            text = strdup(json_string_value(js));
        else if (json_is_object(js) || json_is_boolean(js))
            text = json_dumps(js, JSON_COMPACT | JSON_ENCODE_ANY);
        else
            return moe_errorf(MOE_EINVAL, "'%s' must be a JSON schema (an object, or its JSON text)", from);
        if (!text) return moe_errorf(MOE_ENOMEM, "out of memory reading '%s'", from);
        st = moe_json_schema_parse(text, strlen(text), &out->json_schema);
        free(text);
    } else if (rx) {
        if (!json_is_string(rx))
            return moe_errorf(MOE_EINVAL, "'%s' must be a string (a regular expression)", from);
        st = moe_json_schema_regex(json_string_value(rx), json_string_length(rx), &out->json_schema);
    } else if (gr) {
        if (!json_is_string(gr))
            return moe_errorf(MOE_EINVAL, "'%s' must be a string (a grammar in GBNF)", from);
        st = moe_json_schema_grammar(json_string_value(gr), json_string_length(gr), &out->json_schema);
    } else if (tg) {
        st = tags_schema(tg, from, &out->json_schema);
    } else {
        size_t n = json_is_array(ch) ? json_array_size(ch) : 0;
        const char *texts[MOE_JSON_MAX_ENUM];
        size_t lens[MOE_JSON_MAX_ENUM];
        if (n < 1 || n > MOE_JSON_MAX_ENUM)
            return moe_errorf(MOE_EINVAL, "'%s' must be an array of 1 to %d strings", from, MOE_JSON_MAX_ENUM);
        for (size_t i = 0; i < n; i++) {
            json_t *t = json_array_get(ch, i);
            if (!json_is_string(t))
                return moe_errorf(MOE_EINVAL, "'%s'[%zu] must be a string", from, i);
            texts[i] = json_string_value(t);
            lens[i] = json_string_length(t);
        }
        st = moe_json_schema_choice(texts, lens, (int)n, &out->json_schema);
    }
    if (st != MOE_OK) {
        if (st != MOE_ENOMEM) st = MOE_EINVAL;
        moe_error_prefix(st, "'%s'", from);
        return st;
    }
    return no_whitespace(so, out);
}

/* OpenAI fields asking for output moeflow does not produce (the prompt echoed in a chat reply, several
 * candidates, text inserted before a suffix): refused by name rather than left out of a reply the
 * client then misreads.  Their off values pass: null, false, best_of 1 and an empty suffix.  Also response_format,
 * the constrained output: JSON mode. */
static enum moe_status check_unsupported(json_t *root, bool chat, struct moe_gen_request *out)
{
    enum { BOTH, CHAT, COMPLETIONS };
    static const struct {
        const char *key;
        double off;          /* the number that asks for nothing; NAN: none does */
        int of;              /* the endpoint that refuses it */
        bool text;           /* a text field: "" asks for nothing */
        bool list;           /* a list field: [] asks for nothing */
        const char *why;
    } f[] = {
        { "echo", NAN, CHAT, false, false, "chat replies hold the completion only (/v1/completions echoes its "
                                           "prompt)" },
        { "best_of", 1, BOTH, false, false, "one completion per request" },
        { "suffix", NAN, COMPLETIONS, true, false, "completions continue the prompt; text to fit before a suffix "
                                                   "(insertion) is not generated" },
        /* vLLM's sampling fields for output this server does not produce (false, null or [] ask for nothing) */
        { "use_beam_search", NAN, BOTH, false, false, "each choice is sampled (greedy at temperature 0), no beam "
                                                      "search" },
        { "include_stop_str_in_output", NAN, BOTH, false, false, "the reply ends right before its stop sequence" },
        { "prompt_logprobs", NAN, BOTH, false, false, "a prompt's log-probabilities come with /v1/completions' "
                                                      "\"echo\": true and 'logprobs'" },
        { "allowed_token_ids", NAN, BOTH, false, true, "no token list restricts sampling (a logit_bias of -100 keeps a "
                                                       "token out in practice)" },
        { "bad_words", NAN, BOTH, false, true, "no words are kept out of the reply (a logit_bias of -100 keeps a token "
                                               "out in practice)" },
    };
    json_t *rf = json_object_get(root, "response_format");
    if (rf && !json_is_null(rf)) {
        const char *type = json_string_value(json_object_get(rf, "type"));
        if (!json_is_object(rf) || !type)
            return moe_errorf(MOE_EINVAL, "'response_format' must be an object with a string 'type'");
        out->json_object = !strcmp(type, "json_object");
        if (!strcmp(type, "json_schema")) {
            enum moe_status st = openai_schema(json_object_get(rf, "json_schema"), out);
            if (st != MOE_OK) return st;
        } else if (!strcmp(type, "structural_tag")) { /* vLLM's: {"type", "structures", "triggers"} */
            enum moe_status st = tags_schema(rf, "response_format", &out->json_schema);
            if (st != MOE_OK) {
                if (st != MOE_ENOMEM) st = MOE_EINVAL;
                return moe_error_prefix(st, "'response_format'");
            }
        } else if (strcmp(type, "text") && !out->json_object) {
            return moe_errorf(MOE_ENOTSUP, "'response_format' type '%.*s' is not supported (text, json_object, "
                              "json_schema or structural_tag)", moe_utf8_cut(type, 40), type);
        }
    }
    for (size_t i = 0; i < MOE_ARRAY_LEN(f); i++) {
        json_t *v = json_object_get(root, f[i].key);
        if (f[i].of == (chat ? COMPLETIONS : CHAT) || !v || json_is_null(v) || json_is_false(v) ||
            (f[i].text && json_is_string(v) && !json_string_length(v)) ||
            (f[i].list && json_is_array(v) && !json_array_size(v)) ||
            (json_is_number(v) && json_number_value(v) == f[i].off))
            continue;
        char *txt = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        const char *shown = txt ? txt : "?";
        enum moe_status st = moe_errorf(MOE_ENOTSUP, "'%s' = %.*s is not supported: %s", f[i].key,
                                        moe_utf8_cut(shown, 40), shown, f[i].why);
        free(txt);
        return st;
    }
    return MOE_OK;
}

enum moe_status moe_req_parse_openai(const char *body, size_t len, bool chat, const struct moe_chat *tmpl,
                                     struct moe_gen_request *out)
{
    req_init(out);
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    enum moe_status st = MOE_OK;
    if (!root && moe_json_number_refused(&jerr, "request body") != MOE_OK)
        return moe_last_status();
    if (!root)
        return moe_errorf(MOE_EFORMAT, "request body is not valid JSON: %s at line %d column %d",
                          moe_json_error_text(&jerr), jerr.line, jerr.column);
    if (!json_is_object(root)) {
        st = moe_errorf(MOE_EFORMAT, "request body must be a JSON object");
        goto out;
    }
    json_t *model = json_object_get(root, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model) || strlen(json_string_value(model)) >= sizeof(out->model)) {
            st = moe_errorf(MOE_EINVAL, "'model' must be a string of at most %zu bytes",
                            sizeof(out->model) - 1);
            goto out;
        }
        strcpy(out->model, json_string_value(model));
    }
    out->chat = chat;
    if (chat) {
        json_t *msgs = json_object_get(root, "messages");
        json_t *vars = NULL;
        bool gen, cont;
        st = check_chat_extras(root);
        if (st == MOE_OK)
            st = chat_vars(root, msgs, &vars, &gen, &cont);
        if (st == MOE_OK)
            st = tmpl ? render_chat_messages(out, msgs, tmpl, vars) : parse_chat_messages(out, msgs, gen, cont);
        json_decref(vars);
        if (st != MOE_OK)
            goto out;
    } else {
        json_t *p = json_object_get(root, "prompt");
        bool one = json_is_array(p) && json_array_size(p) == 1 &&
                   (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0)));
        if (one)
            p = json_array_get(p, 0); /* a batch of one prompt: that prompt */
        bool nested = json_is_array(p) && (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0)));
        if (json_is_string(p)) {
            st = set_prompt_text(out, json_string_value(p), json_string_length(p), "prompt");
        } else if (nested && one) { /* [["a"]], [[[1]]]: the one prompt is neither text nor token ids */
            st = moe_errorf(MOE_EINVAL, "'prompt[0]' must be a string or an array of token ids, not an array of "
                            "%s", json_is_string(json_array_get(p, 0)) ? "strings" : "arrays");
        } else if (nested) { /* a list of texts or of token-id lists: OpenAI's batch of prompts */
            st = set_prompt_batch(out, p);
        } else if (json_is_array(p) && json_array_size(p) > 0) {
            st = copy_prompt_ids(p, "prompt", &out->prompt_ids, &out->n_prompt_ids);
        } else {
            st = moe_errorf(MOE_EINVAL,
                            "'prompt' must be a string or a non-empty array of token ids");
        }
        if (st != MOE_OK)
            goto out;
    }
    long long iv;
    double dv;
    bool have;
    /* chat: max_completion_tokens, OpenAI's name now, over max_tokens; a null one is not given */
    json_t *mct = chat ? json_object_get(root, "max_completion_tokens") : NULL;
    const char *mt_key = mct && !json_is_null(mct) ? "max_completion_tokens" : "max_tokens";
    /* completions' echo: the prompt comes back first, and max_tokens may be 0 (the prompt only) */
    if (!chat && (st = json_get_bool(root, "echo", &out->echo)) != MOE_OK)
        goto out;
    if ((st = json_get_int(root, mt_key, out->echo ? 0 : 1, INT32_MAX, &iv, &have)) != MOE_OK)
        goto out;
    if (have)
        out->max_tokens = (int)iv;
    out->prompt_only = have && iv == 0;
    if ((st = json_get_num(root, "temperature", 0, TEMP_MAX, false, &dv, &have)) != MOE_OK)
        goto out;
    if (have)
        out->sampling.temperature = (float)dv;
    if ((st = json_get_num(root, "top_p", 0, 1, true, &dv, &have)) != MOE_OK)
        goto out;
    if (have)
        out->sampling.top_p = moe_sampling_float(dv);
    if ((st = json_get_int(root, "top_k", -1, INT32_MAX, &iv, &have)) != MOE_OK)
        goto out;
    if (have)
        out->sampling.top_k = iv < 0 ? 0 : (int)iv; /* vLLM: -1 = off */
    if ((st = json_get_int(root, "seed", INT64_MIN, INT64_MAX, &iv, &have)) != MOE_OK)
        goto out;
    if (have)
        out->sampling.seed = (uint64_t)iv;
    out->has_seed = have;
    if ((st = json_get_int(root, "priority", -1000000, 1000000, &iv, &have)) != MOE_OK)
        goto out;
    if (have)
        out->priority = (int)iv;
    if ((st = json_get_int(root, "n", 1, MOE_REQ_MAX_N, &iv, &have)) != MOE_OK)
        goto out;
    if (have)
        out->n = (int)iv;
    if (out->n_batch * out->n > MOE_REQ_MAX_N) {
        st = moe_errorf(MOE_EINVAL, "'prompt' holds %d prompts and 'n' = %d: %d completions, more than %d per "
                        "request; lower 'n' or send the batch in several requests", out->n_batch, out->n,
                        out->n_batch * out->n, MOE_REQ_MAX_N);
        goto out;
    }
    json_t *user = json_object_get(root, "user"); /* an end user's name, kept by no one here: OpenAI's string */
    if (user && !json_is_null(user) && !json_is_string(user)) {
        st = moe_errorf(MOE_EINVAL, "'user' must be a string (an end user's identifier) or null");
        goto out;
    }
    if ((st = check_unsupported(root, chat, out)) != MOE_OK || (st = parse_structured(root, out)) != MOE_OK ||
        (st = parse_tool_choice(root, chat, tmpl, out)) != MOE_OK ||
        (st = parse_logprobs(root, chat, out)) != MOE_OK ||
        (st = parse_penalties(root, &out->sampling)) != MOE_OK)
        goto out;
    if ((st = json_get_num(root, "timeout", 0, 86400, true, &dv, &have)) != MOE_OK)
        goto out;
    if (have)
        out->timeout_s = dv;
    if ((st = json_get_bool(root, "stream", &out->stream)) != MOE_OK ||
        (st = json_get_bool(root, "ignore_eos", &out->ignore_eos)) != MOE_OK)
        goto out;
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) {
            st = moe_errorf(MOE_EINVAL, "'stream_options' must be an object");
            goto out;
        }
        if (!out->stream) {
            st = moe_errorf(MOE_EINVAL, "'stream_options' is only allowed with \"stream\": true");
            goto out;
        }
        if ((st = json_get_bool(so, "include_usage", &out->include_usage)) != MOE_OK)
            goto out;
    }
    if ((st = parse_stop(root, out)) != MOE_OK || (st = parse_stop_ids(root, mt_key, out)) != MOE_OK)
        goto out;
    /* vLLM's add_special_tokens: the tokenizer's own around the prompt (a BOS); by default yes for a text
     * prompt, no for one a chat template wrote (it writes its own) */
    bool special = !out->templated;
    if ((st = json_get_bool(root, "add_special_tokens", &special)) != MOE_OK)
        goto out;
    out->templated = !special;
out:
    json_decref(root);
    if (st != MOE_OK)
        moe_gen_request_free(out);
    return st;
}

enum moe_status moe_gen_request_check_vocab(const struct moe_gen_request *r, int vocab, const char *prompt_field)
{
    for (int i = 0; i < r->n_prompt_ids; i++)
        if (r->prompt_ids[i] >= vocab)
            return moe_errorf(MOE_ERANGE, "'%s[%d]' = %d is outside the vocabulary [0, %d)", prompt_field, i,
                              r->prompt_ids[i], vocab);
    for (int b = 0; b < r->n_batch; b++)
        for (int i = 0; i < r->batch[b].n_ids; i++)
            if (r->batch[b].ids[i] >= vocab)
                return moe_errorf(MOE_ERANGE, "'%s[%d][%d]' = %d is outside the vocabulary [0, %d)", prompt_field, b,
                                  i, r->batch[b].ids[i], vocab);
    for (int i = 0; i < r->sampling.n_logit_bias; i++)
        if (r->sampling.logit_bias[i].id >= vocab)
            return moe_errorf(MOE_ERANGE, "'logit_bias' token %d is outside the vocabulary [0, %d)",
                              (int)r->sampling.logit_bias[i].id, vocab);
    for (int i = 0; i < r->n_stop_token_ids; i++)
        if (r->stop_token_ids[i] >= vocab)
            return moe_errorf(MOE_ERANGE, "'stop_token_ids[%d]' = %d is outside the vocabulary [0, %d)", i,
                              (int)r->stop_token_ids[i], vocab);
    return MOE_OK;
}

/* ---- protobuf ---- */

static enum moe_status check_sampling(struct moe_gen_request *r, float temperature, float top_p,
                                      int top_k)
{
    char num[32];
    if (!isfinite(temperature) || temperature < 0 || temperature > TEMP_MAX)
        return moe_errorf(MOE_ERANGE, "temperature = %s is outside [0, %g]", num_str(temperature, true, num),
                          TEMP_MAX);
    if (top_p == 0)
        top_p = 1;
    if (!isfinite(top_p) || top_p < 0 || top_p > 1)
        return moe_errorf(MOE_ERANGE, "top_p = %s is outside (0, 1]", num_str(top_p, true, num));
    if (top_k < 0)
        return moe_errorf(MOE_ERANGE, "top_k = %d is negative", top_k);
    r->sampling.temperature = temperature;
    r->sampling.top_p = top_p;
    r->sampling.top_k = top_k;
    return MOE_OK;
}

/* A varint of p[*i..n), *i moved past it; false when it runs past n or 10 bytes. */
static bool pb_varint(const uint8_t *p, size_t n, size_t *i, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 70 && *i < n; shift += 7) {
        uint8_t b = p[(*i)++];
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return true;
    }
    return false;
}

/* The name of the first string field of message d, at any depth, in p[0..n) that holds a NUL byte (utf8
 * false) or is not valid UTF-8 (utf8 true), or NULL (also when p is malformed: unpacking says so). */
static const char *pb_text_field(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n, bool utf8)
{
    size_t i = 0;
    while (i < n) {
        uint64_t key, v;
        if (!pb_varint(p, n, &i, &key))
            return NULL;
        switch (key & 7) {
        case 0: if (!pb_varint(p, n, &i, &v)) return NULL; break;
        case 1: if (n - i < 8) return NULL; i += 8; break;
        case 5: if (n - i < 4) return NULL; i += 4; break;
        case 2: {
            if (!pb_varint(p, n, &i, &v) || v > n - i)
                return NULL;
            const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3));
            const char *inner = NULL;
            if (f && f->type == PROTOBUF_C_TYPE_STRING &&
                (utf8 ? !moe_utf8_valid((const char *)p + i, (size_t)v) : memchr(p + i, 0, (size_t)v) != NULL))
                return f->name;
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE &&
                (inner = pb_text_field(f->descriptor, p + i, (size_t)v, utf8)))
                return inner;
            i += (size_t)v;
            break;
        }
        default: return NULL;
        }
    }
    return NULL;
}

/* protobuf-c hands strings over as C strings, which a NUL would cut short without a word. */
const char *moe_pb_nul_field(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n)
{
    return pb_text_field(d, p, n, false);
}

/* protobuf-c does not check that a string is UTF-8, as proto3 has every string be: one that is not would be
 * taken as text, or sent back (a KServe id) in a reply the client's parser refuses. */
enum moe_status moe_pb_check_text(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n)
{
    const char *f = pb_text_field(d, p, n, false);
    if (f)
        return moe_errorf(MOE_EINVAL, "%s: '%s' holds a NUL byte: text is sent without NUL", d->short_name, f);
    if ((f = pb_text_field(d, p, n, true)))
        return moe_errorf(MOE_EINVAL, "%s: '%s' is not valid UTF-8: a protobuf string is UTF-8 text (bytes that "
                          "are not go in a bytes field)", d->short_name, f);
    return MOE_OK;
}

/* Token ids ids[0..n) of field: the first negative one refused, named (the vocabulary bounds the others). */
static enum moe_status pb_ids_check(const int32_t *ids, size_t n, const char *field)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0)
            return moe_errorf(MOE_EINVAL, "%s[%zu] = %d is negative", field, i, ids[i]);
    return MOE_OK;
}

enum moe_status moe_req_parse_generate(const uint8_t *buf, size_t len, struct moe_gen_request *out)
{
    req_init(out);
    enum moe_status text = moe_pb_check_text(&moeflow__v1__generate_request__descriptor, buf, len);
    if (text)
        return text;
    Moeflow__V1__GenerateRequest *m = moeflow__v1__generate_request__unpack(NULL, len, buf);
    if (!m)
        return moe_errorf(MOE_EFORMAT, "GenerateRequest: malformed protobuf message (%zu bytes)", len);
    enum moe_status st = MOE_OK;
    if (m->n_prompt_ids > 0) {
        if (m->n_prompt_ids > (size_t)MOE_REQ_MAX_IDS) {
            st = moe_errorf(MOE_ERANGE, "prompt_ids has %zu ids, more than %d", m->n_prompt_ids,
                            MOE_REQ_MAX_IDS);
            goto out;
        }
        out->prompt_ids = malloc(m->n_prompt_ids * sizeof(int));
        if (!out->prompt_ids) {
            st = moe_errorf(MOE_ENOMEM, "prompt_ids: out of memory");
            goto out;
        }
        if ((st = pb_ids_check(m->prompt_ids, m->n_prompt_ids, "prompt_ids")) != MOE_OK)
            goto out;
        for (size_t i = 0; i < m->n_prompt_ids; i++)
            out->prompt_ids[i] = m->prompt_ids[i];
        out->n_prompt_ids = (int)m->n_prompt_ids;
    } else if (m->prompt && m->prompt[0]) {
        if ((st = set_prompt_text(out, m->prompt, strlen(m->prompt), "prompt")) != MOE_OK)
            goto out;
    } else {
        st = moe_errorf(MOE_EINVAL, "GenerateRequest: set prompt or prompt_ids");
        goto out;
    }
    if (m->max_tokens < 0) {
        st = moe_errorf(MOE_ERANGE, "max_tokens = %d is negative", m->max_tokens);
        goto out;
    }
    out->max_tokens = m->max_tokens;
    if ((st = check_sampling(out, m->temperature, m->top_p, m->top_k)) != MOE_OK)
        goto out;
    out->sampling.seed = m->seed;
    out->has_seed = m->seed != 0; /* proto3 cannot tell an unset seed from 0: 0 = none */
    out->sampling.presence_penalty = m->presence_penalty;
    out->sampling.frequency_penalty = m->frequency_penalty;
    out->sampling.repetition_penalty = m->repetition_penalty;
    out->sampling.min_p = m->min_p;
    for (size_t i = 0; i < MOE_ARRAY_LEN(penalty_fields); i++) { /* 0 is every field's "off" here */
        float v = *penalty_field(&out->sampling, i);
        if (v != 0 && !in_range(v, penalty_fields[i].lo, penalty_fields[i].hi, false)) {
            char num[32];
            st = moe_errorf(MOE_ERANGE, "%s = %s is outside [%g, %g]", penalty_fields[i].key, num_str(v, true, num),
                            penalty_fields[i].lo, penalty_fields[i].hi);
            goto out;
        }
    }
    for (size_t i = 0; i < m->n_logit_bias; i++)
        if ((st = add_logit_bias(&out->sampling, m->logit_bias[i]->token_id, m->logit_bias[i]->bias)) != MOE_OK)
            goto out;
    out->ignore_eos = m->ignore_eos;
    out->json_object = m->json_object;
    bool has_schema = m->json_schema && m->json_schema[0], has_regex = m->regex && m->regex[0],
         has_grammar = m->grammar && m->grammar[0], has_tag = m->structural_tag && m->structural_tag[0];
    if (has_schema + has_regex + has_grammar + has_tag + (m->n_choice > 0) + m->json_object > 1) {
        st = moe_errorf(MOE_EINVAL, "json_object, json_schema, regex, grammar, structural_tag and choice go "
                        "without each other: give one");
        goto out;
    }
    if (has_schema) st = moe_json_schema_parse(m->json_schema, strlen(m->json_schema), &out->json_schema);
    else if (has_regex) st = moe_json_schema_regex(m->regex, strlen(m->regex), &out->json_schema);
    else if (has_grammar) st = moe_json_schema_grammar(m->grammar, strlen(m->grammar), &out->json_schema);
    else if (has_tag) st = moe_json_schema_tags(m->structural_tag, strlen(m->structural_tag), &out->json_schema);
    else if (m->n_choice) st = choice_schema((const char *const *)m->choice, m->n_choice, out);
    if (st != MOE_OK) {
        if (st != MOE_ENOMEM) st = MOE_EINVAL; /* the argument's fault, as the decoder's other errors */
        moe_error_prefix(st, has_schema ? "json_schema" : has_regex ? "regex" : has_grammar ? "grammar"
                             : has_tag ? "structural_tag" : "choice");
        goto out;
    }
    out->priority = m->priority;
    out->stream = true;
    if (m->n_stop > MOE_REQ_MAX_STOP) {
        st = moe_errorf(MOE_EINVAL, "stop has %zu sequences, at most %d are accepted", m->n_stop, MOE_REQ_MAX_STOP);
        goto out;
    }
    for (size_t i = 0; i < m->n_stop; i++)
        if ((st = add_stop(out, i, m->stop[i] ? m->stop[i] : "", m->stop[i] ? strlen(m->stop[i]) : 0)) != MOE_OK)
            goto out;
    if (m->top_logprobs < 0 || m->top_logprobs > MOE_MAX_TOP_LOGPROBS || (m->top_logprobs && !m->logprobs)) {
        st = moe_errorf(MOE_EINVAL, "top_logprobs = %d: it takes 0..%d, with logprobs set", m->top_logprobs,
                        MOE_MAX_TOP_LOGPROBS);
        goto out;
    }
    out->logprobs = m->logprobs;
    out->top_logprobs = m->top_logprobs;
    if (m->n_stop_token_ids > MOE_MAX_STOP_TOKEN_IDS) {
        st = moe_errorf(MOE_EINVAL, "stop_token_ids has %zu ids, at most %d are accepted", m->n_stop_token_ids,
                        MOE_MAX_STOP_TOKEN_IDS);
        goto out;
    }
    if ((st = pb_ids_check(m->stop_token_ids, m->n_stop_token_ids, "stop_token_ids")) != MOE_OK)
        goto out;
    if (m->n_stop_token_ids) /* NULL when none */
        memcpy(out->stop_token_ids, m->stop_token_ids, m->n_stop_token_ids * sizeof(int32_t));
    out->n_stop_token_ids = (int)m->n_stop_token_ids;
    if (m->min_tokens < 0 || (m->max_tokens > 0 && m->min_tokens > m->max_tokens)) {
        st = moe_errorf(MOE_EINVAL, "min_tokens = %d must be in [0, max_tokens = %d]", m->min_tokens, m->max_tokens);
        goto out;
    }
    out->min_tokens = m->min_tokens;
out:
    moeflow__v1__generate_request__free_unpacked(m, NULL);
    if (st != MOE_OK)
        moe_gen_request_free(out);
    return st;
}

/* One element of a KServe input tensor: from contents or raw_input_contents[idx]. */
struct kin {
    const Inference__ModelInferRequest__InferInputTensor *t;
    const ProtobufCBinaryData *raw; /* NULL when contents are used */
};

static enum moe_status kin_check_one(const struct kin *k)
{
    int64_t n = 1;
    for (size_t i = 0; i < k->t->n_shape; i++) {
        if (k->t->shape[i] < 0 || k->t->shape[i] > 1)
            return moe_errorf(MOE_EINVAL, "input '%s': shape must hold one element (batch 1), got "
                              "dimension %lld", k->t->name, (long long)k->t->shape[i]);
        n *= k->t->shape[i];
    }
    if (n != 1)
        return moe_errorf(MOE_EINVAL, "input '%s': shape must hold one element", k->t->name);
    return MOE_OK;
}

static enum moe_status kin_bytes(const struct kin *k, const uint8_t **p, size_t *n)
{
    if (strcmp(k->t->datatype, "BYTES"))
        return moe_errorf(MOE_EINVAL, "input '%s': datatype must be BYTES, got '%.*s'", k->t->name,
                          moe_utf8_cut(k->t->datatype, 16), k->t->datatype);
    if (k->raw) {
        if (k->raw->len < 4)
            return moe_errorf(MOE_EFORMAT, "input '%s': raw BYTES element shorter than its 4-byte "
                              "length prefix", k->t->name);
        const uint8_t *d = k->raw->data;
        uint32_t l = (uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 |
                     (uint32_t)d[3] << 24;
        if ((size_t)l != k->raw->len - 4)
            return moe_errorf(MOE_EFORMAT, "input '%s': raw BYTES length prefix %u does not match "
                              "the %zu bytes that follow (one element expected)", k->t->name, l,
                              k->raw->len - 4);
        *p = d + 4;
        *n = l;
        return MOE_OK;
    }
    if (!k->t->contents || k->t->contents->n_bytes_contents != 1)
        return moe_errorf(MOE_EINVAL, "input '%s': expected exactly one bytes_contents element",
                          k->t->name);
    *p = k->t->contents->bytes_contents[0].data;
    *n = k->t->contents->bytes_contents[0].len;
    return MOE_OK;
}

static enum moe_status kin_int(const struct kin *k, int64_t *v)
{
    const char *dt = k->t->datatype;
    bool i32 = !strcmp(dt, "INT32"), i64 = !strcmp(dt, "INT64");
    if (!i32 && !i64)
        return moe_errorf(MOE_EINVAL, "input '%s': datatype must be INT32 or INT64, got '%.*s'",
                          k->t->name, moe_utf8_cut(dt, 16), dt);
    if (k->raw) {
        size_t want = i32 ? 4 : 8;
        if (k->raw->len != want)
            return moe_errorf(MOE_EFORMAT, "input '%s': raw contents are %zu bytes, expected %zu",
                              k->t->name, k->raw->len, want);
        uint64_t u = 0;
        for (size_t i = 0; i < want; i++)
            u |= (uint64_t)k->raw->data[i] << (8 * i);
        *v = i32 ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u;
        return MOE_OK;
    }
    const Inference__InferTensorContents *c = k->t->contents;
    if (i32 && c && c->n_int_contents == 1)
        *v = c->int_contents[0];
    else if (i64 && c && c->n_int64_contents == 1)
        *v = c->int64_contents[0];
    else
        return moe_errorf(MOE_EINVAL, "input '%s': expected exactly one %s element", k->t->name,
                          i32 ? "int_contents" : "int64_contents");
    return MOE_OK;
}

static enum moe_status kin_bool(const struct kin *k, bool *v)
{
    if (strcmp(k->t->datatype, "BOOL"))
        return moe_errorf(MOE_EINVAL, "input '%s': datatype must be BOOL, got '%.*s'", k->t->name,
                          moe_utf8_cut(k->t->datatype, 16), k->t->datatype);
    if (k->raw) {
        if (k->raw->len != 1)
            return moe_errorf(MOE_EFORMAT, "input '%s': raw BOOL is %zu bytes, expected 1",
                              k->t->name, k->raw->len);
        *v = k->raw->data[0] != 0;
        return MOE_OK;
    }
    if (!k->t->contents || k->t->contents->n_bool_contents != 1)
        return moe_errorf(MOE_EINVAL, "input '%s': expected exactly one bool_contents element",
                          k->t->name);
    *v = k->t->contents->bool_contents[0];
    return MOE_OK;
}

static enum moe_status kin_float(const struct kin *k, double *v)
{
    const char *dt = k->t->datatype;
    if (!strcmp(dt, "FP32")) {
        if (k->raw) {
            float f;
            if (k->raw->len != 4)
                return moe_errorf(MOE_EFORMAT, "input '%s': raw FP32 is %zu bytes, expected 4",
                                  k->t->name, k->raw->len);
            memcpy(&f, k->raw->data, 4);
            *v = f;
            return MOE_OK;
        }
        if (k->t->contents && k->t->contents->n_fp32_contents == 1) {
            *v = k->t->contents->fp32_contents[0];
            return MOE_OK;
        }
    } else if (!strcmp(dt, "FP64")) {
        if (k->raw) {
            if (k->raw->len != 8)
                return moe_errorf(MOE_EFORMAT, "input '%s': raw FP64 is %zu bytes, expected 8",
                                  k->t->name, k->raw->len);
            memcpy(v, k->raw->data, 8);
            return MOE_OK;
        }
        if (k->t->contents && k->t->contents->n_fp64_contents == 1) {
            *v = k->t->contents->fp64_contents[0];
            return MOE_OK;
        }
    } else {
        return moe_errorf(MOE_EINVAL, "input '%s': datatype must be FP32 or FP64, got '%.*s'",
                          k->t->name, moe_utf8_cut(dt, 16), dt);
    }
    return moe_errorf(MOE_EINVAL, "input '%s': expected exactly one element", k->t->name);
}

/* The parameter key of m; of several with that key the last, as a protobuf map keeps the last entry on the wire. */
static const Inference__InferParameter *kparam(const Inference__ModelInferRequest *m, const char *key)
{
    for (size_t i = m->n_parameters; i-- > 0;)
        if (m->parameters[i]->key && !strcmp(m->parameters[i]->key, key))
            return m->parameters[i]->value;
    return NULL;
}

static enum moe_status kparam_num(const Inference__ModelInferRequest *m, const char *key, double *v,
                                  bool *have)
{
    const Inference__InferParameter *p = kparam(m, key);
    *have = false;
    if (!p)
        return MOE_OK;
    switch (p->parameter_choice_case) {
    case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM: *v = (double)p->int64_param; break;
    case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_UINT64_PARAM: *v = (double)p->uint64_param; break;
    case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM: *v = p->double_param; break;
    default: return moe_errorf(MOE_EINVAL, "parameter '%s' must be a number", key);
    }
    *have = true;
    return MOE_OK;
}

enum moe_status moe_req_parse_kserve(const uint8_t *buf, size_t len, struct moe_gen_request *out)
{
    req_init(out);
    enum moe_status text = moe_pb_check_text(&inference__model_infer_request__descriptor, buf, len);
    if (text)
        return text;
    Inference__ModelInferRequest *m = inference__model_infer_request__unpack(NULL, len, buf);
    if (!m)
        return moe_errorf(MOE_EFORMAT, "ModelInferRequest: malformed protobuf message (%zu bytes)",
                          len);
    enum moe_status st = MOE_OK;
    /* Too long to hold is refused, never cut or dropped: the name is matched
     * whole against the model served, and a lost id would not be echoed. */
    if (m->model_name && strlen(m->model_name) >= sizeof(out->model)) {
        st = moe_errorf(MOE_EINVAL, "model_name must be at most %zu bytes (got %zu)", sizeof(out->model) - 1,
                        strlen(m->model_name));
        goto out;
    }
    if (m->id && strlen(m->id) >= sizeof(out->id)) {
        st = moe_errorf(MOE_EINVAL, "id must be at most %zu bytes (got %zu)", sizeof(out->id) - 1, strlen(m->id));
        goto out;
    }
    /* KServe has every request name its model; an empty one would match any (as OpenAI's optional 'model') */
    if (!m->model_name || !m->model_name[0]) {
        st = moe_errorf(MOE_EINVAL, "model_name is empty: give the name of the model served (ModelMetadata, "
                        "GET /v1/models)");
        goto out;
    }
    strcpy(out->model, m->model_name);
    if (m->id)
        strcpy(out->id, m->id);
    if (m->n_raw_input_contents && m->n_raw_input_contents != m->n_inputs) {
        st = moe_errorf(MOE_EINVAL, "raw_input_contents has %zu entries for %zu inputs",
                        m->n_raw_input_contents, m->n_inputs);
        goto out;
    }
    if (m->model_version && m->model_version[0] && strcmp(m->model_version, "1")) {
        st = moe_errorf(MOE_ENOENT, "model version '%.*s' is not served here (version 1 is)",
                        moe_utf8_cut(m->model_version, 64), m->model_version);
        goto out;
    }
    for (size_t i = 0; i < m->n_outputs; i++) {
        const char *name = m->outputs[i]->name ? m->outputs[i]->name : "";
        if (strcmp(name, "text_output")) {
            st = moe_errorf(MOE_EINVAL, "unknown output '%.*s' asked for (the model gives text_output)",
                            moe_utf8_cut(name, 64), name);
            goto out;
        }
    }
    /* the inputs; each but text_input may be a request parameter instead (clients send them either way) */
    static const char *const in_names[] = { "text_input", "max_tokens", "stream", "temperature", "top_p", "top_k",
                                            "ignore_eos" };
    bool have_text = false;
    unsigned seen = 0; /* the inputs of in_names given so far */
    for (size_t i = 0; i < m->n_inputs; i++) {
        struct kin k = { m->inputs[i], m->n_raw_input_contents ? &m->raw_input_contents[i] : NULL };
        const char *name = k.t->name ? k.t->name : "";
        if (k.raw && k.t->contents) { /* which of the two holds its value would be a guess */
            st = moe_errorf(MOE_EINVAL, "input '%.*s' has contents beside raw_input_contents: with "
                            "raw_input_contents, no input has contents", moe_utf8_cut(name, 64), name);
            goto out;
        }
        for (unsigned j = 0; j < MOE_ARRAY_LEN(in_names); j++) {
            if (strcmp(name, in_names[j]))
                continue;
            if (seen & 1u << j) {
                st = moe_errorf(MOE_EINVAL, "input '%s' given twice", name);
                goto out;
            }
            if (j > 0 && kparam(m, name)) {
                st = moe_errorf(MOE_EINVAL, "'%s' given both as an input and as a parameter: give one", name);
                goto out;
            }
            seen |= 1u << j;
            if ((st = kin_check_one(&k)) != MOE_OK)
                goto out;
        }
        if (!strcmp(name, "text_input")) {
            const uint8_t *p = NULL;
            size_t n = 0;
            if ((st = kin_bytes(&k, &p, &n)) != MOE_OK)
                goto out;
            if ((st = set_prompt_text(out, (const char *)p, n, "text_input")) != MOE_OK)
                goto out;
            have_text = true;
        } else if (!strcmp(name, "max_tokens") || !strcmp(name, "top_k")) {
            int64_t v = 0;
            if ((st = kin_int(&k, &v)) != MOE_OK)
                goto out;
            if (v < (name[0] == 'm' ? 1 : 0) || v > INT32_MAX) {
                st = moe_errorf(MOE_ERANGE, "input '%s' = %lld is out of range", name, (long long)v);
                goto out;
            }
            if (name[0] == 'm')
                out->max_tokens = (int)v;
            else
                out->sampling.top_k = (int)v;
        } else if (!strcmp(name, "stream") || !strcmp(name, "ignore_eos")) {
            if ((st = kin_bool(&k, name[0] == 's' ? &out->stream : &out->ignore_eos)) != MOE_OK)
                goto out;
        } else if (!strcmp(name, "temperature") || !strcmp(name, "top_p")) {
            double v;
            if ((st = kin_float(&k, &v)) != MOE_OK)
                goto out;
            bool temp = name[1] == 'e';
            if (!isfinite(v) || (temp ? (v < 0 || v > TEMP_MAX) : (v <= 0 || v > 1))) {
                char num[32];
                st = moe_errorf(MOE_ERANGE, "input '%s' = %s is outside %s", name, num_str(v, false, num),
                                temp ? "[0, 100]" : "(0, 1]");
                goto out;
            }
            if (temp)
                out->sampling.temperature = (float)v;
            else
                out->sampling.top_p = moe_sampling_float(v);
        } else {
            st = moe_errorf(MOE_EINVAL, "unknown input '%.*s' (expected text_input, max_tokens, "
                            "stream, temperature, top_p, top_k, ignore_eos)", moe_utf8_cut(name, 64), name);
            goto out;
        }
    }
    if (!have_text) {
        st = moe_errorf(MOE_EINVAL, "input 'text_input' (BYTES) is required");
        goto out;
    }
    double v;
    bool have;
    if ((st = kparam_num(m, "max_tokens", &v, &have)) != MOE_OK)
        goto out;
    if (have) {
        if (!(v >= 1 && v <= INT32_MAX) || v != floor(v)) {
            char num[32];
            st = moe_errorf(MOE_ERANGE, "parameter 'max_tokens' = %s is outside [1, %d]", num_str(v, false, num),
                            INT32_MAX);
            goto out;
        }
        out->max_tokens = (int)v;
    }
    /* Triton's schedule-policy parameter: an int64 of microseconds */
    if ((st = kparam_num(m, "timeout", &v, &have)) != MOE_OK)
        goto out;
    if (have) {
        if (!(v >= 1 && v <= 86400e6) || v != floor(v)) {
            st = moe_errorf(MOE_ERANGE, "parameter 'timeout' = %.17g is not a whole number of microseconds in "
                            "[1, 86400000000] (a day)", v);
            goto out;
        }
        out->timeout_s = v * 1e-6;
    }
    for (size_t i = 0; i < MOE_ARRAY_LEN(penalty_fields); i++) { /* the penalties and min_p, as over HTTP */
        if ((st = kparam_num(m, penalty_fields[i].key, &v, &have)) != MOE_OK)
            goto out;
        if (have && !in_range(v, penalty_fields[i].lo, penalty_fields[i].hi, penalty_fields[i].lo_open)) {
            char num[32];
            st = moe_errorf(MOE_ERANGE, "parameter '%s' = %s is outside %s%g, %g]", penalty_fields[i].key,
                            num_str(v, false, num), penalty_fields[i].lo_open ? "(" : "[", penalty_fields[i].lo,
                            penalty_fields[i].hi);
            goto out;
        }
        if (have)
            *penalty_field(&out->sampling, i) = moe_sampling_float(v);
    }
    /* the sampling inputs as request parameters (none given as an input too), checked alike */
    static const char *const sp_names[4] = { "temperature", "top_p", "top_k", "ignore_eos" };
    for (int i = 0; i < 4; i++) {
        const Inference__InferParameter *p = kparam(m, sp_names[i]);
        if (!p)
            continue;
        if (i == 3) {
            if (p->parameter_choice_case != INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM) {
                st = moe_errorf(MOE_EINVAL, "parameter 'ignore_eos' must be a bool");
                goto out;
            }
            out->ignore_eos = p->bool_param;
            continue;
        }
        if ((st = kparam_num(m, sp_names[i], &v, &have)) != MOE_OK)
            goto out;
        bool ok = i == 0 ? isfinite(v) && v >= 0 && v <= TEMP_MAX
                  : i == 1 ? isfinite(v) && v > 0 && v <= 1 : v >= 0 && v <= INT32_MAX && v == floor(v);
        if (!ok) {
            char num[32];
            st = moe_errorf(MOE_ERANGE, "parameter '%s' = %s is outside %s", sp_names[i], num_str(v, false, num),
                            i == 0 ? "[0, 100]" : i == 1 ? "(0, 1]" : "the integers >= 0");
            goto out;
        }
        if (i == 0) out->sampling.temperature = (float)v;
        else if (i == 1) out->sampling.top_p = moe_sampling_float(v);
        else out->sampling.top_k = (int)v;
    }
    const Inference__InferParameter *seed = kparam(m, "seed");
    if (seed) { /* exactly: any 64-bit value */
        if (seed->parameter_choice_case == INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM)
            out->sampling.seed = (uint64_t)seed->int64_param;
        else if (seed->parameter_choice_case == INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_UINT64_PARAM)
            out->sampling.seed = seed->uint64_param;
        else {
            st = moe_errorf(MOE_EINVAL, "parameter 'seed' must be an integer (int64_param or uint64_param)");
            goto out;
        }
        out->has_seed = true;
    }
    const Inference__InferParameter *sp = kparam(m, "stream");
    if (sp) {
        if (sp->parameter_choice_case != INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM) {
            st = moe_errorf(MOE_EINVAL, "parameter 'stream' must be a bool");
            goto out;
        }
        out->stream = sp->bool_param;
    }
    const Inference__InferParameter *jo = kparam(m, "json_object"), *js = kparam(m, "json_schema"),
                                    *rx = kparam(m, "regex"), *gr = kparam(m, "grammar"),
                                    *tg = kparam(m, "structural_tag");
    /* raw text: a regular expression, a GBNF grammar or a structural tag (its JSON text), one of them */
    static const char *const raw_names[] = { "regex", "grammar", "structural_tag" };
    static const char *const raw_what[] = { "a regular expression", "a grammar in GBNF",
                                            "a structural tag's JSON text" };
    const Inference__InferParameter *raw[] = { rx, gr, tg };
    int which = -1, n_raw = 0;
    for (int i = 0; i < 3; i++)
        if (raw[i]) which = i, n_raw++;
    if (jo && jo->parameter_choice_case != INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM) {
        st = moe_errorf(MOE_EINVAL, "parameter 'json_object' must be a bool");
        goto out;
    }
    bool jo_on = jo && jo->bool_param;
    if (which >= 0 && (js || jo_on || n_raw > 1)) {
        st = moe_errorf(MOE_EINVAL, "parameter '%s' goes without 'json_object', 'json_schema' and the other of "
                        "'regex', 'grammar' and 'structural_tag': give one", raw_names[which]);
        goto out;
    }
    if (js && jo_on) { /* as GenerateRequest's fields of the same names */
        st = moe_errorf(MOE_EINVAL, "parameters 'json_object' and 'json_schema' go without each other: give one");
        goto out;
    }
    if (which >= 0) {
        const Inference__InferParameter *p = raw[which];
        if (p->parameter_choice_case != INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM) {
            st = moe_errorf(MOE_EINVAL, "parameter '%s' must be a string (%s)", raw_names[which], raw_what[which]);
            goto out;
        }
        size_t plen = strlen(p->string_param);
        st = which == 0   ? moe_json_schema_regex(p->string_param, plen, &out->json_schema)
             : which == 1 ? moe_json_schema_grammar(p->string_param, plen, &out->json_schema)
                          : moe_json_schema_tags(p->string_param, plen, &out->json_schema);
        if (st != MOE_OK) {
            if (st != MOE_ENOMEM) st = MOE_EINVAL;
            moe_error_prefix(st, "parameter '%s'", raw_names[which]);
            goto out;
        }
    }
    out->json_object = jo_on; /* JSON mode, as GenerateRequest's field of the same name */
    if (js) {
        if (js->parameter_choice_case != INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM) {
            st = moe_errorf(MOE_EINVAL, "parameter 'json_schema' must be a string (the schema as JSON text)");
            goto out;
        }
        if ((st = moe_json_schema_parse(js->string_param, strlen(js->string_param), &out->json_schema)) != MOE_OK) {
            if (st != MOE_ENOMEM) st = MOE_EINVAL;
            moe_error_prefix(st, "parameter 'json_schema'");
            goto out;
        }
    }
out:
    inference__model_infer_request__free_unpacked(m, NULL);
    if (st != MOE_OK)
        moe_gen_request_free(out);
    return st;
}

/* ---- tool calls ---- */

#define TOOL_CLOSE "</tool_call>"
#define MINIMAX_OPEN "<minimax:tool_call>"
#define MINIMAX_CLOSE "</minimax:tool_call>"

/* The tag a style's calls begin with. */
static const char *tool_open(int style)
{
    return style == MOE_TOOLS_MISTRAL    ? "[TOOL_CALLS]"
           : style == MOE_TOOLS_DEEPSEEK ? MOE_DS_CALLS_BEGIN
           : style == MOE_TOOLS_MINIMAX  ? MINIMAX_OPEN
                                         : "<tool_call>";
}

/* Whether s[0..n) is one JSON value. */
static bool is_json(const char *s, size_t n)
{
    json_t *v = json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    json_decref(v);
    return v != NULL;
}

/* An OpenAI tool_calls entry from a call's JSON value (arguments an object, or
 * a string holding JSON text); NULL when it is not one. */
static json_t *call_entry(const json_t *call, const char *id)
{
    const char *name = json_string_value(json_object_get(call, "name"));
    json_t *a = json_object_get(call, "arguments"), *out = NULL;
    char *args = json_is_object(a) ? json_dumps(a, JSON_COMPACT)
                 : json_is_string(a) && is_json(json_string_value(a), json_string_length(a))
                     ? strdup(json_string_value(a))
                     : NULL;
    if (name && args)
        out = json_pack("{s:s,s:s,s:{s:s,s:s}}", "id", id, "type", "function", "function", "name", name,
                        "arguments", args);
    free(args);
    return out;
}

json_t *moe_tool_call_entry(const char *txt, size_t n, const char *id)
{
    json_t *call = json_loadb(txt ? txt : "", n, 0, NULL), *out = call_entry(call, id);
    json_decref(call);
    return out;
}

static bool starts(const char *p, const char *end, const char *tag)
{
    size_t n = strlen(tag);
    return (size_t)(end - p) >= n && !memcmp(p, tag, n);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

static const char *skip_space(const char *p, const char *end)
{
    while (p < end && is_space(*p))
        p++;
    return p;
}

/* [TOOL_CALLS] followed (spaces aside) by a JSON array of calls, or one call, and nothing but
 * spaces after it. */
static json_t *mistral_calls(const char *b, const char *end, const char *id_prefix)
{
    json_error_t err;
    json_t *v = json_loadb(b, (size_t)(end - b), JSON_DISABLE_EOF_CHECK, &err), *calls = json_array();
    if (v && skip_space(b + err.position, end) != end) { /* something after the calls */
        json_decref(v);
        v = NULL;
    }
    if (v && !json_is_array(v)) {
        json_t *one = json_array();
        if (one) json_array_append(one, v);
        json_decref(v);
        v = one;
    }
    for (size_t k = 0; v && calls && k < json_array_size(v); k++) {
        char id[160];
        snprintf(id, sizeof(id), "%s_%zu", id_prefix, k);
        json_t *one = call_entry(json_array_get(v, k), id);
        if (!one || json_array_append_new(calls, one)) {
            json_decref(calls);
            calls = NULL;
        }
    }
    if (!v || !json_array_size(calls)) {
        json_decref(calls);
        calls = NULL;
    }
    json_decref(v);
    return calls;
}

/* One DeepSeek call between its markers, [b, e): "NAME<sep>{...}" (V3.1) or
 * "function<sep>NAME\n```json\n{...}\n```" (V3, R1); NULL when it is neither. */
static json_t *deepseek_call(const char *b, const char *e, const char *id)
{
    const char *sep = memmem(b, (size_t)(e - b), MOE_DS_SEP, strlen(MOE_DS_SEP));
    if (!sep)
        return NULL;
    const char *name = b, *name_end = sep, *args = skip_space(sep + strlen(MOE_DS_SEP), e), *args_end = e;
    if (args < e && *args != '{') { /* V3: the type before the separator, the name and a fence after it */
        name = args;
        name_end = memchr(name, '\n', (size_t)(e - name));
        const char *fence = name_end ? skip_space(name_end, e) : NULL;
        if (!fence || !starts(fence, e, "```json"))
            return NULL;
        args = fence + 7;
        while (args_end > args && (args_end[-1] == '\n' || args_end[-1] == ' '))
            args_end--;
        if (args_end - args < 3 || memcmp(args_end - 3, "```", 3))
            return NULL;
        args_end -= 3;
    }
    name = skip_space(name, name_end);
    while (name_end > name && (name_end[-1] == ' ' || name_end[-1] == '\n'))
        name_end--;
    json_t *a = json_loadb(args, (size_t)(args_end - args), 0, NULL), *call = NULL, *out = NULL;
    if (a && name_end > name && !memchr(name, '\n', (size_t)(name_end - name)))
        call = json_pack("{s:s%,s:O}", "name", name, (size_t)(name_end - name), "arguments", a);
    out = call ? call_entry(call, id) : NULL;
    json_decref(call);
    json_decref(a);
    return out;
}

/* DeepSeek's markers after the opening one: calls until the closing marker
 * (or the text's end, for a reply cut short after a whole call). */
static json_t *deepseek_calls(const char *p, const char *end, const char *id_prefix)
{
    json_t *calls = json_array();
    for (int k = 0; calls; k++) {
        p = skip_space(p, end);
        if (p == end || starts(p, end, MOE_DS_CALLS_END))
            break;
        const char *b = starts(p, end, MOE_DS_CALL_BEGIN) ? p + strlen(MOE_DS_CALL_BEGIN) : NULL;
        const char *e = b ? memmem(b, (size_t)(end - b), MOE_DS_CALL_END, strlen(MOE_DS_CALL_END)) : NULL;
        char id[160];
        snprintf(id, sizeof(id), "%s_%d", id_prefix, k);
        json_t *one = e ? deepseek_call(b, e, id) : NULL;
        if (!one || json_array_append_new(calls, one)) {
            json_decref(calls);
            return NULL;
        }
        p = e + strlen(MOE_DS_CALL_END);
    }
    if (calls && !json_array_size(calls)) {
        json_decref(calls);
        calls = NULL;
    }
    return calls;
}

/* The JSON type a tool's parameter schema gives key ("" when it names none). */
static const char *param_type(const json_t *tools, const char *fn, const char *key)
{
    size_t i;
    const json_t *t;
    json_array_foreach(tools, i, t) {
        const json_t *f = json_object_get(t, "function");
        const char *name = json_string_value(json_object_get(f, "name"));
        if (!name || strcmp(name, fn))
            continue;
        const json_t *p = json_object_get(json_object_get(json_object_get(f, "parameters"), "properties"), key);
        const char *type = json_string_value(json_object_get(p, "type"));
        return type ? type : "";
    }
    return "";
}

/* A parameter's text as the JSON value its schema type asks for: a string stays a string; a number,
 * boolean, object or array is read as JSON (and kept as a string when it is not one); without a
 * type, JSON when the text is JSON, else a string. */
static json_t *param_value(const char *v, size_t n, const char *type)
{
    if (!strcmp(type, "string"))
        return json_stringn(v, n);
    json_t *j = json_loadb(v, n, JSON_DECODE_ANY, NULL);
    bool fits = j && (!type[0] || (!strcmp(type, "integer") && json_is_integer(j)) ||
                      (!strcmp(type, "number") && json_is_number(j)) || (!strcmp(type, "boolean") && json_is_boolean(j)) ||
                      (!strcmp(type, "object") && json_is_object(j)) || (!strcmp(type, "array") && json_is_array(j)) ||
                      (!strcmp(type, "null") && json_is_null(j)));
    if (fits)
        return j;
    json_decref(j);
    return json_stringn(v, n);
}

/* args[key] = the value text [v, ve), one line break at each end left out when trim, as the type the tool's
 * schema gives key (param_value).  false on failure, args then freed. */
static bool add_typed_arg(json_t *args, const json_t *tools, const char *fn, const char *key, const char *v,
                          const char *ve, bool trim)
{
    if (trim && v < ve && *v == '\n')
        v++;
    if (trim && ve > v && ve[-1] == '\n')
        ve--;
    if (!json_object_set_new(args, key, param_value(v, (size_t)(ve - v), param_type(tools, fn, key))))
        return true;
    json_decref(args);
    return false;
}

/* The OpenAI entry of a call to fn with the arguments object args (taken, NULL allowed: no entry). */
static json_t *typed_call(const char *fn, json_t *args, const char *id)
{
    json_t *call = args ? json_pack("{s:s,s:o}", "name", fn, "arguments", args) : NULL; /* args stolen */
    json_t *out = call ? call_entry(call, id) : NULL;
    json_decref(call);
    return out;
}

/* One call of Qwen3-Coder's XML form in [b, e): <function=NAME> then <parameter=KEY>\nvalue\n</parameter>
 * pieces up to </function> (whitespace between them); NULL when it is not that. */
static json_t *xml_call(const char *b, const char *e, const json_t *tools, const char *id)
{
    static const char fn[] = "<function=", pm[] = "<parameter=", pe[] = "</parameter>", fe[] = "</function>";
    const char *p = skip_space(b, e), *gt;
    if (!starts(p, e, fn) || !(gt = memchr(p, '>', (size_t)(e - p))))
        return NULL;
    char name[256];
    size_t nl = (size_t)(gt - p) - strlen(fn);
    if (!nl || nl >= sizeof(name) || memchr(p + strlen(fn), '\n', nl))
        return NULL;
    memcpy(name, p + strlen(fn), nl);
    name[nl] = 0;
    json_t *args = json_object();
    if (!args)
        return NULL;
    for (p = skip_space(gt + 1, e); !starts(p, e, fe); p = skip_space(p, e)) {
        const char *kg = starts(p, e, pm) ? memchr(p, '>', (size_t)(e - p)) : NULL;
        const char *v = kg ? kg + 1 : NULL;
        const char *ve = v ? memmem(v, (size_t)(e - v), pe, strlen(pe)) : NULL;
        size_t kl = kg ? (size_t)(kg - p) - strlen(pm) : 0;
        char key[256];
        if (!ve || !kl || kl >= sizeof(key)) {
            json_decref(args);
            return NULL;
        }
        memcpy(key, p + strlen(pm), kl);
        key[kl] = 0;
        if (!add_typed_arg(args, tools, name, key, v, ve, true))
            return NULL;
        p = ve + strlen(pe);
    }
    return typed_call(name, args, id);
}

/* One call of GLM-4.5's form in [b, e): the name up to a line break or the first <arg_key>, then
 * <arg_key>KEY</arg_key> <arg_value>value</arg_value> pairs (whitespace around them), each value typed by
 * the tool's schema as in xml_call; NULL when it is not that.  Its block must be closed: one cut short
 * after a whole pair cannot tell whether more arguments were coming. */
static json_t *glm_call(const char *b, const char *e, const json_t *tools, const char *id)
{
    static const char ko[] = "<arg_key>", kc[] = "</arg_key>", vo[] = "<arg_value>", vc[] = "</arg_value>";
    const char *p = skip_space(b, e), *ne = p;
    while (ne < e && *ne != '\n' && !starts(ne, e, ko))
        ne++;
    char name[256];
    size_t nl = (size_t)(ne - p);
    while (nl > 0 && is_space(p[nl - 1]))
        nl--;
    if (!nl || nl >= sizeof(name))
        return NULL;
    for (size_t i = 0; i < nl; i++) /* a function's name: no spaces, quotes, brackets or braces */
        if (!isalnum((unsigned char)p[i]) && !strchr("_-.:", p[i]) && !((unsigned char)p[i] & 0x80))
            return NULL;
    memcpy(name, p, nl);
    name[nl] = 0;
    json_t *args = json_object();
    for (p = skip_space(ne, e); args && p < e; p = skip_space(p, e)) {
        const char *k = starts(p, e, ko) ? p + strlen(ko) : NULL;
        const char *ke = k ? memmem(k, (size_t)(e - k), kc, strlen(kc)) : NULL;
        const char *v = ke ? skip_space(ke + strlen(kc), e) : NULL;
        v = v && starts(v, e, vo) ? v + strlen(vo) : NULL;
        const char *ve = v ? memmem(v, (size_t)(e - v), vc, strlen(vc)) : NULL;
        char key[256];
        size_t kl = ve ? (size_t)(ke - k) : 0;
        if (!kl || kl >= sizeof(key)) {
            json_decref(args);
            return NULL;
        }
        memcpy(key, k, kl);
        key[kl] = 0;
        if (!add_typed_arg(args, tools, name, key, v, ve, false))
            return NULL;
        p = ve + strlen(vc);
    }
    return typed_call(name, args, id);
}

/* At p, `<TAG name="VALUE">` (tag is `<TAG name="`): VALUE into out (1..255 bytes, no quote or line break);
 * the byte after the tag, or NULL. */
static const char *named_tag(const char *p, const char *e, const char *tag, char out[256])
{
    if (!starts(p, e, tag))
        return NULL;
    const char *v = p + strlen(tag), *q = v;
    while (q < e && *q != '"' && *q != '\n')
        q++;
    size_t n = (size_t)(q - v);
    if (q + 1 >= e || q[0] != '"' || q[1] != '>' || !n || n >= 256)
        return NULL;
    memcpy(out, v, n);
    out[n] = 0;
    return q + 2;
}

/* One MiniMax-M2 call at p in [p, e): <invoke name="NAME"> then <parameter name="KEY">value</parameter>
 * pieces (one line break each side of a value left out, values typed as in xml_call) up to </invoke>;
 * *next after it.  NULL when it is not that. */
static json_t *minimax_call(const char *p, const char *e, const json_t *tools, const char *id, const char **next)
{
    static const char pe[] = "</parameter>", ie[] = "</invoke>";
    char name[256], key[256];
    p = named_tag(p, e, "<invoke name=\"", name);
    json_t *args = p ? json_object() : NULL;
    for (p = p ? skip_space(p, e) : NULL; args && !starts(p, e, ie); p = skip_space(p, e)) {
        const char *v = named_tag(p, e, "<parameter name=\"", key);
        const char *ve = v ? memmem(v, (size_t)(e - v), pe, strlen(pe)) : NULL;
        if (!ve) {
            json_decref(args);
            return NULL;
        }
        if (!add_typed_arg(args, tools, name, key, v, ve, true))
            return NULL;
        p = ve + strlen(pe);
    }
    if (args)
        *next = p + strlen(ie);
    return typed_call(name, args, id);
}

/* MiniMax-M2's blocks after the first opening tag: each holds one or more calls and must be closed; the
 * next block is looked for after it. */
static json_t *minimax_calls(const char *p, const char *end, const json_t *tools, const char *id_prefix)
{
    json_t *calls = json_array();
    for (int k = 0; calls && p;) {
        const char *e = memmem(p, (size_t)(end - p), MINIMAX_CLOSE, strlen(MINIMAX_CLOSE));
        const char *q = e ? skip_space(p, e) : NULL;
        if (!e || q == e) { /* cut short, or an empty block */
            json_decref(calls);
            return NULL;
        }
        while (q < e) {
            char id[160];
            snprintf(id, sizeof(id), "%s_%d", id_prefix, k++);
            json_t *one = minimax_call(q, e, tools, id, &q);
            if (!one || json_array_append_new(calls, one)) {
                json_decref(calls);
                return NULL;
            }
            q = skip_space(q, e);
        }
        p = e + strlen(MINIMAX_CLOSE);
        p = memmem(p, (size_t)(end - p), MINIMAX_OPEN, strlen(MINIMAX_OPEN));
        if (p)
            p += strlen(MINIMAX_OPEN);
    }
    return calls;
}

json_t *moe_tool_calls_parse(const char *text, size_t len, int style, const json_t *tools, const char *id_prefix,
                             size_t *content_len)
{
    const char *open = tool_open(style);
    const char *at = memmem(text, len, open, strlen(open)), *end = text + len;
    if (!at) return NULL;
    *content_len = (size_t)(at - text);
    if (style == MOE_TOOLS_MISTRAL) return mistral_calls(at + strlen(open), end, id_prefix);
    if (style == MOE_TOOLS_DEEPSEEK) return deepseek_calls(at + strlen(open), end, id_prefix);
    if (style == MOE_TOOLS_MINIMAX) return minimax_calls(at + strlen(open), end, tools, id_prefix);
    json_t *calls = json_array();
    for (int k = 0; calls && at; k++) {
        const char *b = at + strlen(open), *e = memmem(b, (size_t)(end - b), TOOL_CLOSE, strlen(TOOL_CLOSE));
        const char *stop = e ? e : end; /* the last block may be cut short of its closing tag */
        char id[160];
        snprintf(id, sizeof(id), "%s_%d", id_prefix, k);
        json_t *one = style == MOE_TOOLS_QWEN_XML ? xml_call(b, stop, tools, id)
                      : style == MOE_TOOLS_GLM    ? (e ? glm_call(b, e, tools, id) : NULL) /* whole blocks only */
                                                  : moe_tool_call_entry(b, (size_t)(stop - b), id);
        if (!one || json_array_append_new(calls, one)) { /* not a call after all: the text stays text */
            json_decref(calls);
            return NULL;
        }
        at = e ? memmem(e, (size_t)(end - e), open, strlen(open)) : NULL;
    }
    return calls;
}

/* Bytes at the end of s[0..n) that begin tag (a proper prefix of it): held back while streaming. */
static size_t tag_tail(const char *s, size_t n, const char *tag)
{
    size_t m = strlen(tag) - 1;
    for (m = m < n ? m : n; m > 0; m--)
        if (!memcmp(s + n - m, tag, m)) return m;
    return 0;
}

size_t moe_tool_calls_release(const char *text, size_t len, int style, bool *found)
{
    const char *open = tool_open(style), *at = memmem(text, len, open, strlen(open));
    *found = at != NULL;
    return at ? (size_t)(at - text) : len - tag_tail(text, len, open);
}

/* ---- reasoning ---- */

void moe_think_split(const char *text, size_t len, bool opened, bool last, struct moe_think_split *out)
{
    memset(out, 0, sizeof(*out));
    if (!opened) {
        size_t i = (size_t)(skip_space(text, text + len) - text), no = strlen(MOE_THINK_OPEN);
        if (len - i >= no && !memcmp(text + i, MOE_THINK_OPEN, no)) {
            out->rb = out->re = i + no;
        } else if (!last && len - i < no && !memcmp(text + i, MOE_THINK_OPEN, len - i)) {
            return; /* spaces, or the tag's beginning: not decided yet */
        } else {
            out->content = true; /* no reasoning: all of it is the answer */
            return;
        }
    }
    const char *s = text + out->rb;
    size_t n = len - out->rb;
    const char *e = memmem(s, n, MOE_THINK_CLOSE, strlen(MOE_THINK_CLOSE));
    if (!e) {
        out->re = last ? len : len - tag_tail(s, n, MOE_THINK_CLOSE);
        return;
    }
    out->re = (size_t)(e - text);
    out->cb = out->re + strlen(MOE_THINK_CLOSE);
    while (out->cb < len && (text[out->cb] == '\n' || text[out->cb] == '\r'))
        out->cb++;
    out->content = true;
}

/* ---- stop sequences ---- */

enum moe_status moe_stop_scan_init(struct moe_stop_scan *s, char *const *seq, int n)
{
    memset(s, 0, sizeof(*s));
    for (int i = 0; i < n && i < MOE_REQ_MAX_STOP; i++) {
        if (!(s->seq[i] = strdup(seq[i]))) {
            moe_stop_scan_free(s);
            return moe_errorf(MOE_ENOMEM, "stop sequences: out of memory");
        }
        s->n = i + 1;
    }
    return MOE_OK;
}

void moe_stop_scan_free(struct moe_stop_scan *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->seq[i]);
    free(s->held);
    memset(s, 0, sizeof(*s));
}

static char *dup_bytes(const char *p, size_t n)
{
    char *o = malloc(n + 1);
    if (o) {
        memcpy(o, p, n);
        o[n] = 0;
    }
    return o;
}

int moe_stop_scan_feed(struct moe_stop_scan *s, const char *text, size_t n, const char *ahead, size_t n_ahead,
                       bool last, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (s->n_held + n + n_ahead + 1 > s->cap) {
        size_t c = (s->n_held + n + n_ahead + 1) * 2;
        char *h = realloc(s->held, c);
        if (!h)
            return -1;
        s->held = h;
        s->cap = c;
    }
    memcpy(s->held + s->n_held, text, n);
    size_t len = s->n_held + n;
    if (n_ahead)
        memcpy(s->held + len, ahead, n_ahead); /* looked at, not kept: len stays */
    /* the earliest completed stop sequence, ending past the text of the first min_tokens tokens */
    size_t best = SIZE_MAX, quiet = s->quiet ? len + n_ahead : s->n_quiet;
    for (int i = 0; i < s->n; i++) {
        size_t k = strlen(s->seq[i]);
        for (size_t p = 0; p + k <= len + n_ahead && p < best; p++)
            if (p + k > quiet && !memcmp(s->held + p, s->seq[i], k)) {
                best = p;
                break;
            }
    }
    if (best != SIZE_MAX) {
        *out = dup_bytes(s->held, best);
        *out_len = best;
        s->n_held = 0;
        s->n_quiet = 0;
        return *out ? 1 : -1;
    }
    /* hold back the longest tail that a stop sequence starts with */
    size_t keep = 0;
    for (int i = 0; i < s->n && !last; i++) {
        size_t k = strlen(s->seq[i]);
        for (size_t t = k - 1 < len ? k - 1 : len; t > keep; t--)
            if (!memcmp(s->held + len - t, s->seq[i], t)) {
                keep = t;
                break;
            }
    }
    *out = dup_bytes(s->held, len - keep);
    if (!*out) {
        s->n_held = len;
        return -1;
    }
    *out_len = len - keep;
    memmove(s->held, s->held + len - keep, keep);
    s->n_held = keep;
    quiet = quiet < len ? quiet : len;
    s->n_quiet = quiet > len - keep ? quiet - (len - keep) : 0;
    return 0;
}
