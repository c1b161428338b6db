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

enum moe_status moe_chat_render(const struct moe_chat *c, json_t *messages, json_t *extra, char **out, size_t *len)
{
    if (!c || !json_is_array(messages) || (extra && !json_is_object(extra)))
        return moe_errorf(MOE_EINVAL, "chat template: render needs a template, an array of messages and an "
                          "object of extra variables");
    json_t *vars = json_deep_copy(c->tokens);
    /* tools and documents are none unless given, as apply_chat_template passes tools=None, documents=None */
    if (!vars || json_object_set_new(vars, "tools", json_null()) || json_object_set_new(vars, "documents", json_null()) ||
        (extra && json_object_update(vars, extra)) || json_object_set(vars, "messages", messages) ||
        json_object_set_new(vars, "add_generation_prompt", json_true())) {
        json_decref(vars);
        return moe_errorf(MOE_ENOMEM, "chat template: out of memory");
    }
    enum moe_status st = moe_jinja_render(c->tmpl, vars, out, len);
    json_decref(vars);
    return st;
}

char *moe_chat_markers(int n, const char *const *roles, const char *const *contents)
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
    snprintf(out + off, total - off, "<|assistant|>\n");
    return out;
}
