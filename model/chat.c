/* A model's chat template (see chat.h). */
#include "chat.h"
#include "json_error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHAT_MAX_CONFIG (16u << 20) /* largest tokenizer_config.json read, bytes */

struct moe_chat {
    struct moe_jinja *tmpl;
    json_t *tokens;      /* {"bos_token": "<s>", ...}: the special tokens as strings */
    char source[4200];
    enum moe_tool_style tools; /* how the template asks for tool calls */
};

/* tokenizer_config.json of dir: *root NULL when there is none. */
static enum moe_status load_config(const char *dir, json_t **root, char *path, size_t cap)
{
    *root = NULL;
    if (!dir)
        return MOE_OK;
    if (snprintf(path, cap, "%s/tokenizer_config.json", dir) >= (int)cap)
        return moe_errorf(MOE_EINVAL, "model directory path is too long");
    char *buf;
    size_t len;
    enum moe_status st = moe_read_file(path, &buf, &len, CHAT_MAX_CONFIG);
    if (st == MOE_ENOENT)
        return MOE_OK;
    if (st)
        return moe_error_prefix(st, "chat template");
    json_error_t jerr;
    *root = json_loadb(buf, len, 0, &jerr);
    free(buf);
    if (!*root || !json_is_object(*root)) {
        json_decref(*root);
        *root = NULL;
        return moe_errorf(MOE_EFORMAT, "%s: not a JSON object (%s at line %d)", path, moe_json_error_text(&jerr), jerr.line);
    }
    return MOE_OK;
}

/* An entry of tokenizer_config.json as a token's text: a string, or an AddedToken {"content": ...}. */
static const char *token_text(json_t *v)
{
    if (json_is_object(v))
        v = json_object_get(v, "content");
    return json_string_value(v);
}

/* The special tokens of tokenizer_config.json as strings, as the Hugging Face library hands a template
 * its special_tokens_map: bos, eos, unk and pad always ("" when absent), every other "..._token" entry
 * that names a token (cls, sep, mask, ...), and additional_special_tokens as a list. */
static json_t *special_tokens(json_t *root)
{
    static const char *const keys[] = { "bos_token", "eos_token", "unk_token", "pad_token" };
    json_t *t = json_object(), *v;
    for (size_t i = 0; t && i < MOE_ARRAY_LEN(keys); i++) {
        const char *s = token_text(json_object_get(root, keys[i]));
        json_object_set_new(t, keys[i], json_string(s ? s : ""));
    }
    const char *key;
    json_object_foreach(root, key, v) {
        size_t n = strlen(key);
        const char *s = token_text(v);
        if (t && n > 6 && !strcmp(key + n - 6, "_token") && s && !json_object_get(t, key))
            json_object_set_new(t, key, json_string(s));
    }
    json_t *add = json_object_get(root, "additional_special_tokens"), *list = json_is_array(add) ? json_array() : NULL;
    size_t i;
    json_array_foreach(add, i, v) {
        const char *s = token_text(v);
        if (list && s)
            json_array_append_new(list, json_string(s));
    }
    if (t && list)
        json_object_set_new(t, "additional_special_tokens", list);
    else
        json_decref(list);
    return t;
}

static enum moe_status compile_into(struct moe_chat **out, const char *src, size_t len, json_t *root,
                                    const char *source)
{
    struct moe_chat *c = calloc(1, sizeof(*c));
    if (!c)
        return moe_errorf(MOE_ENOMEM, "chat template: out of memory");
    snprintf(c->source, sizeof(c->source), "%s", source);
    c->tools = memmem(src, len, "<minimax:tool_call>", 19)                        ? MOE_TOOLS_MINIMAX
               : memmem(src, len, "<arg_key>", 9)                                 ? MOE_TOOLS_GLM
               : memmem(src, len, "<function=", 10)                               ? MOE_TOOLS_QWEN_XML
               : memmem(src, len, "<tool_call>", 11)                              ? MOE_TOOLS_HERMES
               : memmem(src, len, "[TOOL_CALLS]", 12)                             ? MOE_TOOLS_MISTRAL
               : memmem(src, len, MOE_DS_CALLS_BEGIN, strlen(MOE_DS_CALLS_BEGIN)) ? MOE_TOOLS_DEEPSEEK
                                                                                  : MOE_TOOLS_NONE;
    c->tmpl = moe_jinja_compile(src, len);
    c->tokens = special_tokens(root);
    if (!c->tmpl || !c->tokens) {
        enum moe_status st = c->tmpl ? moe_errorf(MOE_ENOMEM, "chat template: out of memory")
                                     : moe_error_prefix(moe_last_status(), "%s", source);
        moe_chat_free(c);
        return st;
    }
    *out = c;
    return MOE_OK;
}

enum moe_status moe_chat_load_dir(const char *dir, struct moe_chat **out)
{
    *out = NULL;
    char path[4200];
    json_t *root;
    enum moe_status st = load_config(dir, &root, path, sizeof(path));
    if (st || !root)
        return st;
    json_t *tmpl = json_object_get(root, "chat_template");
    if (json_is_array(tmpl)) { /* named templates: the default one */
        json_t *pick = NULL;
        for (size_t i = 0; i < json_array_size(tmpl); i++) {
            json_t *e = json_array_get(tmpl, i);
            const char *name = json_string_value(json_object_get(e, "name"));
            if (name && !strcmp(name, "default"))
                pick = json_object_get(e, "template");
        }
        tmpl = pick;
    }
    if (!tmpl || json_is_null(tmpl)) {
        json_decref(root);
        return MOE_OK;
    }
    if (!json_is_string(tmpl)) {
        json_decref(root);
        return moe_errorf(MOE_EFORMAT, "%s: \"chat_template\" must be a string or a list of {\"name\", "
                          "\"template\"} with one named \"default\"", path);
    }
    st = compile_into(out, json_string_value(tmpl), json_string_length(tmpl), root, path);
    json_decref(root);
    return st;
}

enum moe_status moe_chat_load_file(const char *path, const char *dir, struct moe_chat **out)
{
    *out = NULL;
    char *buf;
    size_t len;
    enum moe_status st = moe_read_file(path, &buf, &len, CHAT_MAX_CONFIG);
    if (st)
        return moe_error_prefix(st, "chat template");
    char cpath[4200];
    json_t *root = NULL;
    if ((st = load_config(dir, &root, cpath, sizeof(cpath))) == MOE_OK)
        st = compile_into(out, buf, len, root, path);
    json_decref(root);
    free(buf);
    return st;
}

void moe_chat_free(struct moe_chat *c)
{
    if (!c)
        return;
    moe_jinja_free(c->tmpl);
    json_decref(c->tokens);
    free(c);
}

const char *moe_chat_source(const struct moe_chat *c)
{
    return c ? c->source : "";
}

enum moe_tool_style moe_chat_tool_style(const struct moe_chat *c)
{
    return c ? c->tools : MOE_TOOLS_NONE;
}

/* Bytes of the Python whitespace character (str.isspace) that starts at s[0..n), 0 when none. */
static size_t py_space_at(const unsigned char *s, size_t n)
{
    if (n >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x20)))
        return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0))
        return 2;
    if (n < 3)
        return 0;
    unsigned cp = (unsigned)(s[0] & 0x0f) << 12 | (unsigned)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
    bool three = (s[0] & 0xf0) == 0xe0 && (s[1] & 0xc0) == 0x80 && (s[2] & 0xc0) == 0x80;
    return three && (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
                     cp == 0x202f || cp == 0x205f || cp == 0x3000) ? 3 : 0;
}

/* s[0..n) without the Python whitespace at its start (*lead bytes) and end (*trail bytes), as str.strip. */
static void py_strip(const char *s, size_t n, size_t *lead, size_t *trail)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t a = 0, b = n, k;
    while (a < b && (k = py_space_at(u + a, b - a)))
        a += k;
    for (bool more = true; more && b > a;) {
        more = false;
        for (size_t w = 1; w <= 3 && w <= b - a; w++)
            if (py_space_at(u + b - w, w) == w) {
                b -= w;
                more = true;
                break;
            }
    }
    *lead = a;
    *trail = n - b;
}

enum moe_status moe_chat_continue_cut(const char *text, size_t len, const char *content, size_t clen, size_t *cut)
{
    size_t lead, trail;
    py_strip(content, clen, &lead, &trail);
    size_t core = clen - lead - trail;
    const char *loc = NULL;
    for (size_t i = len + 1; core <= len && i-- > 0;) /* the last place the stripped content appears */
        if (i + core <= len && !memcmp(text + i, content + lead, core)) {
            loc = text + i;
            break;
        }
    if (!loc)
        return moe_errorf(MOE_EINVAL, "continue_final_message is set but the final message's content does not "
                          "appear in the rendered chat (the chat template changes it)");
    size_t at = (size_t)(loc - text);
    /* the content as it was, when the template kept it whole from its stripped start; else without its
     * surrounding whitespace */
    bool whole = lead == 0 && at + clen <= len && !memcmp(loc, content, clen);
    *cut = at + (whole ? clen : core);
    return MOE_OK;
}

bool moe_chat_truthy(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_TRUE: return true;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0;
    case JSON_STRING: return json_string_length(v) > 0;
    case JSON_ARRAY: return json_array_size(v) > 0;
    case JSON_OBJECT: return json_object_size(v) > 0;
    default: return false;
    }
}

enum moe_status moe_chat_render(const struct moe_chat *c, json_t *messages, json_t *extra, char **out, size_t *len)
{
    if (!c || !json_is_array(messages) || (extra && !json_is_object(extra)))
        return moe_errorf(MOE_EINVAL, "chat template: render needs a template, an array of messages and an "
                          "object of extra variables");
    json_t *vars = json_deep_copy(c->tokens);
    /* tools and documents are none unless given, as apply_chat_template passes tools=None, documents=None;
     * add_generation_prompt true unless extra says otherwise */
    if (!vars || json_object_set_new(vars, "tools", json_null()) || json_object_set_new(vars, "documents", json_null()) ||
        json_object_set_new(vars, "add_generation_prompt", json_true()) ||
        json_object_set_new(vars, "continue_final_message", json_false()) ||
        (extra && json_object_update(vars, extra)) || json_object_set(vars, "messages", messages)) {
        json_decref(vars);
        return moe_errorf(MOE_ENOMEM, "chat template: out of memory");
    }
    bool cont = moe_chat_truthy(json_object_get(vars, "continue_final_message"));
    json_t *last = json_array_get(messages, json_array_size(messages) - 1);
    json_t *content = json_object_get(last, "content");
    enum moe_status st = MOE_OK;
    if (cont && moe_chat_truthy(json_object_get(vars, "add_generation_prompt")))
        st = moe_errorf(MOE_EINVAL, "add_generation_prompt and continue_final_message cannot both be true");
    else if (cont && !json_is_string(content))
        st = moe_errorf(MOE_EINVAL, "continue_final_message is set but the final message has no text to continue");
    if (st == MOE_OK)
        st = moe_jinja_render(c->tmpl, vars, out, len);
    size_t cut;
    if (st == MOE_OK && cont) {
        st = moe_chat_continue_cut(*out, *len, json_string_value(content), json_string_length(content), &cut);
        if (st) {
            free(*out);
            *out = NULL;
        } else {
            (*out)[cut] = 0;
            *len = cut;
        }
    }
    json_decref(vars);
    return st;
}

char *moe_chat_markers(int n, const char *const *roles, const char *const *contents, bool generation_prompt)
{
    size_t total = 32;
    for (int i = 0; i < n; i++)
        total += strlen(roles[i]) + strlen(contents[i]) + 8;
    char *out = malloc(total);
    if (!out)
        return NULL;
    size_t off = 0;
    for (int i = 0; i < n; i++)
        off += (size_t)snprintf(out + off, total - off, "<|%s|>\n%s\n", roles[i], contents[i]);
    snprintf(out + off, total - off, "%s", generation_prompt ? "<|assistant|>\n" : "");
    return out;
}
