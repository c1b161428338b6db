/* A model's chat template from tokenizer_config.json: the file's forms (a
 * string, a list of named templates, special tokens as strings or
 * AddedToken objects), a model without one, and files that are refused. */
#include "model/chat.h"
#include "tests/test_util.h"

#include <stdio.h>
#include <unistd.h>

static char dir[] = "/tmp/moe-chat-XXXXXX";

static void write_config(const char *json)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/tokenizer_config.json", dir);
    FILE *f = fopen(p, "w");
    REQUIRE(f && fputs(json, f) >= 0 && fclose(f) == 0, "write %s", p);
}

/* Render [user: hi] with dir's template; NULL when it fails or there is none. */
static char *render_hi(enum moe_status *st)
{
    struct moe_chat *c = NULL;
    *st = moe_chat_load_dir(dir, &c);
    if (*st || !c)
        return NULL;
    json_t *msgs = json_pack("[{s:s, s:s}]", "role", "user", "content", "hi");
    char *out = NULL;
    size_t n;
    *st = moe_chat_render(c, msgs, NULL, &out, &n);
    json_decref(msgs);
    moe_chat_free(c);
    return out;
}

/* Render msgs (JSON text) with dir's template and extra variables (JSON text, or NULL). */
static char *render_with(const char *msgs_json, const char *extra_json, enum moe_status *st)
{
    struct moe_chat *c = NULL;
    *st = moe_chat_load_dir(dir, &c);
    json_t *msgs = json_loads(msgs_json, 0, NULL), *extra = extra_json ? json_loads(extra_json, 0, NULL) : NULL;
    REQUIRE(msgs && (extra || !extra_json), "test JSON");
    char *out = NULL;
    size_t n;
    if (*st == MOE_OK && c)
        *st = moe_chat_render(c, msgs, extra, &out, &n);
    json_decref(msgs);
    json_decref(extra);
    moe_chat_free(c);
    return out;
}

/* add_generation_prompt and continue_final_message: true and false unless extra (the request's fields
 * with chat_template_kwargs over them) says otherwise; continue_final_message cuts the text after the last
 * message's content as transformers' apply_chat_template does (its stripped text's last place; its trailing
 * whitespace kept only when the template kept the content whole and it has no leading whitespace). */
static void check_generation_vars(void)
{
    write_config("{\"chat_template\": \"[{{ add_generation_prompt }}{{ continue_final_message }}]{% for m in messages %}"
                 "<|{{ m.role }}|>{% if how == 'raw' %}{{ m.content }}{% elif how == 'upper' %}{{ m.content | upper }}"
                 "{% else %}{{ m.content | trim }}{% endif %}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}\"}");
    static const struct {
        const char *name, *msgs, *extra, *want, *error;
    } cases[] = {
        { "defaults", "[{\"role\": \"user\", \"content\": \"hi\"}]", NULL,
          "[TrueFalse]<|user|>hi<|end|><|assistant|>", NULL },
        { "no generation prompt", "[{\"role\": \"user\", \"content\": \"hi\"}]",
          "{\"add_generation_prompt\": false}", "[FalseFalse]<|user|>hi<|end|>", NULL },
        { "falsy kwarg", "[{\"role\": \"user\", \"content\": \"hi\"}]", "{\"add_generation_prompt\": 0}",
          "[0False]<|user|>hi<|end|>", NULL },
        { "continue, trimmed", "[{\"role\": \"user\", \"content\": \"ok\"}, {\"role\": \"assistant\", "
          "\"content\": \"ok \"}]", "{\"add_generation_prompt\": false, \"continue_final_message\": true}",
          "[FalseTrue]<|user|>ok<|end|><|assistant|>ok", NULL },
        { "continue, kept whole", "[{\"role\": \"assistant\", \"content\": \"Sure, \"}]",
          "{\"add_generation_prompt\": false, \"continue_final_message\": true, \"how\": \"raw\"}",
          "[FalseTrue]<|assistant|>Sure, ", NULL },
        { "continue, leading space", "[{\"role\": \"assistant\", \"content\": \" Sure, \"}]",
          "{\"add_generation_prompt\": false, \"continue_final_message\": true, \"how\": \"raw\"}",
          "[FalseTrue]<|assistant|> Sure,", NULL },
        { "continue, unicode space", "[{\"role\": \"assistant\", \"content\": \"\u00a0Hi\u3000\"}]",
          "{\"add_generation_prompt\": false, \"continue_final_message\": 1, \"how\": \"raw\"}",
          "[False1]<|assistant|>\u00a0Hi", NULL },
        { "continue, empty", "[{\"role\": \"assistant\", \"content\": \"\"}]",
          "{\"add_generation_prompt\": false, \"continue_final_message\": true}",
          "[FalseTrue]<|assistant|><|end|>", NULL },
        { "both", "[{\"role\": \"assistant\", \"content\": \"a\"}]", "{\"continue_final_message\": true}", NULL,
          "cannot both be true" },
        { "changed", "[{\"role\": \"assistant\", \"content\": \"abc\"}]",
          "{\"add_generation_prompt\": false, \"continue_final_message\": true, \"how\": \"upper\"}", NULL,
          "does not appear" },
        { "no content", "[{\"role\": \"assistant\"}]",
          "{\"add_generation_prompt\": false, \"continue_final_message\": true}", NULL, "no text" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        enum moe_status st;
        char *out = render_with(cases[i].msgs, cases[i].extra, &st);
        if (cases[i].want)
            CHECK(st == MOE_OK && out && !strcmp(out, cases[i].want), "%s: %s", cases[i].name,
                  out ? out : moe_last_error());
        else
            CHECK(st == MOE_EINVAL && !out && strstr(moe_last_error(), cases[i].error), "%s: status %d %s",
                  cases[i].name, st, moe_last_error());
        free(out);
    }
}

int main(void)
{
    REQUIRE(mkdtemp(dir), "mkdtemp");
    enum moe_status st;
    char *out = render_hi(&st);
    CHECK(st == MOE_OK && !out, "no tokenizer_config.json: status %d", st);

    write_config("{\"bos_token\": \"<s>\"}");
    out = render_hi(&st);
    CHECK(st == MOE_OK && !out, "no chat_template: status %d", st);

    write_config("{\"bos_token\": {\"content\": \"<s>\", \"special\": true}, \"eos_token\": \"</s>\", "
                 "\"chat_template\": \"{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}"
                 "{{ eos_token }}{% endfor %}{{ unk_token }}{% if add_generation_prompt %}>{% endif %}\"}");
    out = render_hi(&st);
    CHECK(st == MOE_OK && out && !strcmp(out, "<s>[user]hi</s>>"), "string template: %s", out ? out : moe_last_error());
    free(out);

    /* every special token of the file, as the Hugging Face library's special_tokens_map: cls, sep, mask,
     * additional_special_tokens; a token the file does not name is undefined, "add_bos_token" no token */
    write_config("{\"cls_token\": \"[CLS]\", \"sep_token\": {\"content\": \"[SEP]\"}, \"add_bos_token\": true, "
                 "\"additional_special_tokens\": [\"<a>\", {\"content\": \"<b>\"}], \"chat_template\": "
                 "\"{{ cls_token }}{{ sep_token }}{{ additional_special_tokens | join(',') }}|{{ mask_token is defined }}"
                 "|{{ add_bos_token is defined }}|{{ bos_token }}\"}");
    out = render_hi(&st);
    CHECK(st == MOE_OK && out && !strcmp(out, "[CLS][SEP]<a>,<b>|False|False|"), "special tokens: %s",
          out ? out : moe_last_error());
    free(out);

    /* tools and documents are none, not undefined, without a request's own: apply_chat_template passes
     * tools=None, documents=None */
    write_config("{\"chat_template\": \"{{ tools is defined }}{{ tools is none }}{{ documents is none }}"
                 "{{ tools | tojson }}\"}");
    out = render_hi(&st);
    CHECK(st == MOE_OK && out && !strcmp(out, "TrueTrueTruenull"), "tools and documents: %s",
          out ? out : moe_last_error());
    free(out);

    write_config("{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}, {\"name\": \"default\", "
                 "\"template\": \"D{{ messages | length }}\"}]}");
    out = render_hi(&st);
    CHECK(st == MOE_OK && out && !strcmp(out, "D1"), "named templates: %s", out ? out : moe_last_error());
    free(out);

    write_config("{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}]}");
    out = render_hi(&st);
    CHECK(st == MOE_OK && !out, "no default among named templates: status %d", st);

    /* how the template asks for tool calls */
    static const struct {
        const char *tmpl;
        enum moe_tool_style style;
    } styles[] = { { "{{ messages | length }}", MOE_TOOLS_NONE },
                   { "{% if tools %}<tool_call>{{ tools | tojson }}</tool_call>{% endif %}", MOE_TOOLS_HERMES },
                   { "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}{% endif %}[TOOL_CALLS]", MOE_TOOLS_MISTRAL },
                   { "{{ '" MOE_DS_CALLS_BEGIN "' }}", MOE_TOOLS_DEEPSEEK },
                   { "<tool_call>\n<function=name>\n<parameter=key>\nvalue\n</parameter>\n</function>\n</tool_call>",
                     MOE_TOOLS_QWEN_XML },
                   { "<tool_call>{{ tc.name }}\n<arg_key>{{ k }}</arg_key>\n<arg_value>{{ v }}</arg_value>\n</tool_call>",
                     MOE_TOOLS_GLM },
                   { "<minimax:tool_call>\n<invoke name=\"{{ tc.name }}\">\n</invoke>\n</minimax:tool_call>",
                     MOE_TOOLS_MINIMAX } };
    for (size_t i = 0; i < MOE_ARRAY_LEN(styles); i++) {
        json_t *cfg = json_pack("{s:s}", "chat_template", styles[i].tmpl);
        char *text = json_dumps(cfg, 0);
        write_config(text);
        struct moe_chat *c = NULL;
        st = moe_chat_load_dir(dir, &c);
        CHECK(st == MOE_OK && c && moe_chat_tool_style(c) == styles[i].style, "tool style of %s: %d", styles[i].tmpl,
              c ? (int)moe_chat_tool_style(c) : -1);
        moe_chat_free(c);
        free(text);
        json_decref(cfg);
    }

    write_config("{\"chat_template\": 5}");
    out = render_hi(&st);
    CHECK(st == MOE_EFORMAT && strstr(moe_last_error(), "chat_template"), "a number: %s", moe_last_error());

    write_config("{\"chat_template\": \"{% if x %}\"}");
    out = render_hi(&st);
    CHECK(st == MOE_EFORMAT && strstr(moe_last_error(), "tokenizer_config.json") &&
          strstr(moe_last_error(), "endif"), "unclosed if: %s", moe_last_error());

    write_config("[1, 2]");
    out = render_hi(&st);
    CHECK(st == MOE_EFORMAT && strstr(moe_last_error(), "not a JSON object"), "an array: %s", moe_last_error());

    check_generation_vars();

    char p[256];
    snprintf(p, sizeof(p), "%s/tokenizer_config.json", dir);
    unlink(p);
    rmdir(dir);
    return t_result("test_chat");
}
