/* moeflow info: what a model is made of and what each part costs in memory,
 * for choosing the tiers (--gpu-experts, --host-experts, kv-cache-bytes). */
#include "cli.h"

#include "../engine/engine.h"
#include "../engine/json_guide.h"
#include "../model/chat.h"
#include "../model/tokenizer.h"
#include "../model/utf8.h"
#include "../offload/tiered.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void info_usage(FILE *f)
{
    fprintf(f,
        "usage: moeflow info [--model DIR] [--json]\n"
        "\n"
        "Prints the model's shape and its memory: the routed experts (what the device and host tiers\n"
        "hold, one expert at a time), the other weights (resident wherever the engine runs), the KV\n"
        "cache per token and per sequence of the model's context, and the tokenizer's and chat\n"
        "template's conventions (tool calls, a template that opens a <think> block).\n"
        "\n"
        "  -m, --model DIR  model directory (default: the bundled model or $MOEFLOW_MODEL)\n"
        "  --json           one JSON object instead of text\n"
        "  -h, --help       this help\n");
}

static const char *tool_style_name(enum moe_tool_style s)
{
    switch (s) {
    case MOE_TOOLS_NONE: return "none";
    case MOE_TOOLS_HERMES: return "<tool_call> JSON";
    case MOE_TOOLS_MISTRAL: return "[TOOL_CALLS]";
    case MOE_TOOLS_QWEN_XML: return "<tool_call><function=...> (Qwen3-Coder)";
    case MOE_TOOLS_DEEPSEEK: return "DeepSeek's markers";
    case MOE_TOOLS_GLM: return "<tool_call>NAME <arg_key> (GLM-4.5)";
    case MOE_TOOLS_MINIMAX: return "<minimax:tool_call> (MiniMax-M2)";
    }
    return "?";
}

/* s as a JSON string, what is not UTF-8 in it (a directory's name, a message quoting one) as U+FFFD; NULL when
 * out of memory. */
static json_t *json_text(const char *s)
{
    size_t n = strlen(s);
    char *u = malloc(3 * n + 1);
    json_t *j = u ? json_stringn(u, moe_utf8_lossy(s, n, u, false, NULL)) : NULL;
    free(u);
    return j;
}

static double mib(uint64_t b)
{
    return (double)b / (1 << 20);
}

/* Whether the template's generation prompt for one user message ends in an open <think> block
 * (the reply then starts inside it: serve --reasoning-parser think reads it so). */
static bool template_opens_think(const struct moe_chat *chat)
{
    json_t *msgs = json_pack("[{s:s,s:s}]", "role", "user", "content", "x");
    char *out = NULL;
    size_t len = 0;
    bool opens = msgs && moe_chat_render(chat, msgs, NULL, &out, &len) == MOE_OK && moe_think_opened(out, len);
    free(out);
    json_decref(msgs);
    return opens;
}

int moe_cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *dir = NULL;
    bool as_json = false;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (!moe_cli_check_model("info", optarg)) return 2;
            dir = optarg;
            break;
        case 'j': as_json = true; break;
        case 'h': return moe_cli_help("info", argc, argv, ":m:h", opts, info_usage);
        default: return moe_cli_bad_option("info", c, argv, opts);
        }
    }
    if (!moe_cli_no_operands("info", argc, argv, NULL)) return 2;
    if (!dir) dir = moe_default_model_dir();
    struct moe_model *m = NULL;
    if (!moe_cli_open_model("info", dir, &m, NULL)) return 1;
    const struct moe_config *cf = &m->cfg;
    int n_moe = moe_config_n_moe(cf);
    uint64_t expert = moe_model_expert_bytes(m), experts = expert * (uint64_t)n_moe * (uint64_t)cf->n_experts;
    uint64_t other = moe_model_dense_bytes(m);
    size_t kv32 = moe_engine_kv_bytes_per_token(cf, MOE_DT_F32), kv16 = moe_engine_kv_bytes_per_token(cf, MOE_DT_BF16);
    char path[4200], tok_err[512] = "", chat_err[512] = "";
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    bool has_tok = access(path, F_OK) == 0;
    struct moe_tokenizer *tok = has_tok ? moe_tokenizer_load(path) : NULL;
    int vocab = tok ? moe_tokenizer_vocab_size(tok) : 0;
    if (has_tok && !tok) snprintf(tok_err, sizeof(tok_err), "%s", moe_last_error());
    moe_tokenizer_free(tok);
    moe_error_clear();
    struct moe_chat *chat = NULL;
    bool chat_ok = moe_chat_load_dir(dir, &chat) == MOE_OK, has_chat = chat != NULL;
    if (!chat_ok) snprintf(chat_err, sizeof(chat_err), "%s", moe_last_error());
    enum moe_tool_style tools = chat ? moe_chat_tool_style(chat) : MOE_TOOLS_NONE;
    bool opens_think = chat && template_opens_think(chat);
    moe_chat_free(chat);
    moe_error_clear();
    const char *dt = "-";
    for (int l = 0; l < cf->n_layers; l++) /* the dtype of the first MoE layer's experts */
        if (cf->is_moe[l]) {
            dt = moe_dtype_name(moe_wview_stored_dtype(&moe_model_expert(m, l, 0)->gate));
            break;
        }
    if (as_json) {
        json_t *o = json_pack("{s:o,s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:s,s:i,s:I,s:I,s:I,s:s,s:I,s:I,s:I,s:i,s:b,s:s}",
                              "model", json_text(dir), "model_type", cf->model_type, "layers", cf->n_layers, "moe_layers", n_moe,
                              "experts", cf->n_experts, "top_k", cf->top_k, "hidden", cf->hidden, "heads", cf->n_heads,
                              "kv_heads", cf->n_kv_heads, "head_dim", cf->head_dim, "attention",
                              cf->mla ? "latent" : "grouped-query", "context", cf->max_pos, "expert_bytes",
                              (json_int_t)expert, "experts_bytes", (json_int_t)experts, "device_expert_bytes",
                              (json_int_t)moe_tiered_dev_expert_bytes(m), "expert_dtype", dt,
                              "other_bytes", (json_int_t)other, "kv_bytes_per_token_f32", (json_int_t)kv32,
                              "kv_bytes_per_token_bf16", (json_int_t)kv16, "tokenizer_vocab", vocab,
                              "chat_template", chat_ok && has_chat,
                              "tool_calls", tool_style_name(tools));
        if (o && (json_object_set_new(o, "opens_think", json_boolean(opens_think)) ||
                  json_object_set_new(o, "tokenizer_error", tok_err[0] ? json_text(tok_err) : json_null()) ||
                  json_object_set_new(o, "chat_template_error", chat_err[0] ? json_text(chat_err) : json_null()))) {
            json_decref(o);
            o = NULL;
        }
        char *s = o ? json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        json_decref(o);
        if (!s) {
            fprintf(stderr, "moeflow info: out of memory for the JSON object\n");
            moe_model_close(m);
            return 1;
        }
        puts(s);
        free(s);
    } else {
        printf("model      %s (%s): %d layers, %d with %d routed experts each, top-%d; hidden %d, %s attention, "
               "%d heads / %d KV of %d; context %d\n", dir, cf->model_type, cf->n_layers, n_moe, cf->n_experts,
               cf->top_k, cf->hidden, cf->mla ? "latent" : "grouped-query", cf->n_heads, cf->n_kv_heads,
               cf->head_dim, cf->max_pos);
        uint64_t dev = moe_tiered_dev_expert_bytes(m);
        if (!strcmp(dt, "F8_E4M3")) /* FP8 records in the store and host tier, their BF16 values computed */
            printf("experts    %d x %.3f MiB (FP8 records: codes and F32 block factors) = %.1f MiB in the store and "
                   "the host tier; %.3f MiB each (BF16) in the device tier\n", n_moe * cf->n_experts, mib(expert),
                   mib(experts), mib(dev));
        else if (dev != expert) /* widened where they are computed (F16 to F32 on the CPU backend) */
            printf("experts    %d x %.3f MiB (%s) = %.1f MiB in the store and the host tier; %.3f MiB each in the "
                   "device tier of the CPU backend (F32)\n", n_moe * cf->n_experts, mib(expert), dt, mib(experts),
                   mib(dev));
        else
            printf("experts    %d x %.3f MiB (%s) = %.1f MiB: the device and host tiers hold whole experts\n",
                   n_moe * cf->n_experts, mib(expert), dt, mib(experts));
        printf("other      %.1f MiB of weights (embeddings, attention, norms, routers, dense and shared MLPs): "
               "resident where the engine runs\n", mib(other));
        printf("KV cache   %zu bytes per token in F32, %zu in BF16; %.1f MiB per sequence of %d tokens in F32\n",
               kv32, kv16, mib((uint64_t)kv32 * (uint64_t)cf->max_pos), cf->max_pos);
        printf("tokenizer  %s; chat template %s, tool calls: %s%s\n",
               vocab ? "tokenizer.json" : has_tok ? "tokenizer.json does not load"
                                                  : "none (tokenize, generate and serve need tokenizer.json)",
               !chat_ok ? "does not compile" : has_chat ? "in tokenizer_config.json" : "none (moeflow's markers)",
               tool_style_name(tools), opens_think ? "; the generation prompt opens a <think> block" : "");
        if (vocab) printf("           %d tokens\n", vocab);
        if (tok_err[0]) printf("           tokenizer: %s\n", tok_err);
        if (chat_err[0]) printf("           chat template: %s\n", chat_err);
    }
    moe_model_close(m);
    return 0;
}
