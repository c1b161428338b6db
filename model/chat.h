/* A model's chat template: tokenizer_config.json's "chat_template" (a
 * string, or a list of {"name", "template"} whose "default" is used) with the
 * special tokens it may print (bos_token, eos_token, unk_token, pad_token:
 * strings or {"content": ...}), rendered as the Hugging Face library's
 * apply_chat_template(messages, add_generation_prompt=True) renders it (or with
 * continue_final_message)
 * (model/jinja.h). */
#ifndef MOE_CHAT_H
#define MOE_CHAT_H

#include "jinja.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_chat;

/* dir/tokenizer_config.json's template.  *out is NULL, with MOE_OK, when the
 * model has none (no such file, or no "chat_template" in it); a template that
 * does not compile is an error naming the file. */
enum moe_status moe_chat_load_dir(const char *dir, struct moe_chat **out);
/* A template file (Jinja text), with the special tokens of dir's
 * tokenizer_config.json when it has one (dir may be NULL). */
enum moe_status moe_chat_load_file(const char *path, const char *dir, struct moe_chat **out);
void moe_chat_free(struct moe_chat *c);

/* moeflow's own chat prompt, for a model without a template (the bundled
 * model): for each message "<|role|>\n" + content + "\n", then
 * "<|assistant|>\n" when generation_prompt.  Returns malloc'd text or NULL. */
char *moe_chat_markers(int n, const char *const *roles, const char *const *contents, bool generation_prompt);

/* Where the template came from ("m/tokenizer_config.json", or the file). */
const char *moe_chat_source(const struct moe_chat *c);
/* How the template asks the model to write tool calls, so replies can be searched for them. */
enum moe_tool_style {
    MOE_TOOLS_NONE,
    MOE_TOOLS_HERMES,  /* <tool_call>{"name": ..., "arguments": {...}}</tool_call> blocks (Hermes, Qwen) */
    MOE_TOOLS_MISTRAL, /* [TOOL_CALLS] then a JSON array of {"name": ..., "arguments": {...}} (Mistral, Mixtral) */
    MOE_TOOLS_QWEN_XML, /* <tool_call><function=NAME><parameter=KEY>value</parameter>...</function></tool_call>
                         * (Qwen3-Coder): values as text, typed by the tool's parameter schema */
    MOE_TOOLS_DEEPSEEK, /* MOE_DS_CALLS_BEGIN, then calls between MOE_DS_CALL_BEGIN and MOE_DS_CALL_END, each
                         * NAME MOE_DS_SEP {...} (DeepSeek-V3.1) or function MOE_DS_SEP NAME and the arguments
                         * in a ```json fence (DeepSeek-V3, R1), then MOE_DS_CALLS_END */
    MOE_TOOLS_GLM,      /* <tool_call>NAME <arg_key>KEY</arg_key><arg_value>value</arg_value>...</tool_call>
                         * (GLM-4.5, GLM-4.6): values as text, typed by the tool's parameter schema */
    MOE_TOOLS_MINIMAX,  /* <minimax:tool_call> then <invoke name="NAME"><parameter name="KEY">value</parameter>...
                         * </invoke>, any number of them, then </minimax:tool_call> (MiniMax-M2): values as
                         * text, typed by the tool's parameter schema */
};

/* DeepSeek's tool-call markers (U+FF5C and U+2581 in them). */
#define MOE_DS_CALLS_BEGIN "<\uFF5Ctool\u2581calls\u2581begin\uFF5C>"
#define MOE_DS_CALLS_END "<\uFF5Ctool\u2581calls\u2581end\uFF5C>"
#define MOE_DS_CALL_BEGIN "<\uFF5Ctool\u2581call\u2581begin\uFF5C>"
#define MOE_DS_CALL_END "<\uFF5Ctool\u2581call\u2581end\uFF5C>"
#define MOE_DS_SEP "<\uFF5Ctool\u2581sep\uFF5C>"
enum moe_tool_style moe_chat_tool_style(const struct moe_chat *c);

/* The prompt for messages (a JSON array of message objects), as apply_chat_template renders it: the
 * variables are the special tokens, tools and documents none, add_generation_prompt true and
 * continue_final_message false, then extra (a JSON object, or NULL: the request's fields and its
 * chat_template_kwargs) over them.  When continue_final_message is then true (Python's truth), the text
 * ends right after the last message's content (moe_chat_continue_cut); add_generation_prompt true with it,
 * or a last message without string content, is MOE_EINVAL.  *out malloc'd, NUL-terminated. */
enum moe_status moe_chat_render(const struct moe_chat *c, json_t *messages, json_t *extra, char **out, size_t *len);

/* Python's truth of a JSON value (a template variable such as add_generation_prompt): false for NULL,
 * null, false, 0, "", [] and {}. */
bool moe_chat_truthy(const json_t *v);
/* Where transformers' continue_final_message cuts text[0..len): after the last place content's stripped
 * text (Python's str.strip) appears, with the content's trailing whitespace when the text holds the content
 * whole there, without it otherwise.  *cut bytes are kept; MOE_EINVAL when the stripped content is not in
 * the text. */
enum moe_status moe_chat_continue_cut(const char *text, size_t len, const char *content, size_t clen, size_t *cut);

#ifdef __cplusplus
}
#endif
#endif
