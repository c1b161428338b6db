/* libFuzzer: the tool-call parsers over a model's reply, which may be any
 * text.  The first byte picks the convention (Hermes' <tool_call>, Mistral's
 * [TOOL_CALLS], DeepSeek's markers, Qwen3-Coder's XML functions, GLM-4.5's
 * <arg_key>/<arg_value> pairs, MiniMax-M2's invokes; the last three typed by a
 * small tool list); the rest is the reply.  Parsed calls are
 * OpenAI entries (an id, "function", a name and arguments that are JSON
 * text), the content before them is a prefix of the reply; the streaming
 * release never passes the reply's end and stops before a marker it found.
 * The reasoning split (moe_think_split) of the reply and of a beginning of it
 * agree: what the beginning decided, the whole reply decides the same way. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

#include "model/chat.h"
#include "server/requests.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const int styles[] = {MOE_TOOLS_HERMES, MOE_TOOLS_MISTRAL, MOE_TOOLS_DEEPSEEK, MOE_TOOLS_QWEN_XML,
                                 MOE_TOOLS_GLM, MOE_TOOLS_MINIMAX};
    static json_t *tools;
    if (!tools && !(tools = json_loads("[{\"function\": {\"name\": \"f\", \"parameters\": {\"properties\": "
                                       "{\"s\": {\"type\": \"string\"}, \"i\": {\"type\": \"integer\"}, "
                                       "\"o\": {\"type\": \"object\"}}}}}]", 0, NULL)))
        abort();
    int style = styles[data[0] % (sizeof(styles) / sizeof(styles[0]))];
    const char *text = (const char *)data + 1;
    size_t len = size - 1, content = (size_t)-1;
    json_t *calls = moe_tool_calls_parse(text, len, style, tools, "call_f", &content);
    if (calls) {
        if (content > len || !json_is_array(calls) || !json_array_size(calls))
            abort();
        for (size_t i = 0; i < json_array_size(calls); i++) {
            json_t *c = json_array_get(calls, i), *f = json_object_get(c, "function");
            json_t *args = json_object_get(f, "arguments");
            json_t *parsed = json_is_string(args) ? json_loadb(json_string_value(args), json_string_length(args),
                                                               JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL)
                                                  : NULL;
            if (!json_is_string(json_object_get(c, "id")) || !json_is_string(json_object_get(f, "name")) || !parsed)
                abort();
            json_decref(parsed);
        }
        json_decref(calls);
    }
    bool found = false;
    size_t out = moe_tool_calls_release(text, len, style, &found);
    if (out > len || (calls && !found))
        abort();
    size_t cut = len ? (size_t)data[0] % (len + 1) : 0;
    for (int opened = 0; opened < 2; opened++) {
        struct moe_think_split w, p;
        moe_think_split(text, len, opened, true, &w);
        moe_think_split(text, cut, opened, false, &p);
        if (w.rb > w.re || w.re > len || (w.content && (w.cb < w.re || w.cb > len)) || p.re > cut)
            abort();
        if (p.re > p.rb && (p.rb != w.rb || p.re > w.re)) /* decided reasoning stays reasoning */
            abort();
        if (p.content && (!w.content || (p.cb < cut && p.cb != w.cb) || (p.cb == cut && w.cb < cut)))
            abort(); /* a decided answer starts where the whole reply's does */
    }
    return 0;
}
