/* moeflow generate: tokenise a prompt, prefill it, then decode one token per
 * step, writing each token's bytes to stdout as soon as it is produced.
 * Stops at an end-of-sequence token or after --max-tokens. */
#include "cli.h"
#include "requests.h"

#include "../engine/engine.h"
#include "../engine/json_guide.h"
#include "../engine/sampling.h"
#include "../kernels/backend.h"
#include "../model/chat.h"
#include "../model/model.h"
#include "../model/tokenizer.h"
#include "../model/utf8.h"
#include "../offload/runtime.h"
#include "../predictor/predictor.h"

#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Everything the command needs at run time.  The compute backend and the
 * expert placement (the provider) come from moe_offload_runtime_create(). */
struct gen_opts {
    const char *model_dir;     /* --model */
    const char *prompt;        /* --prompt */
    int max_tokens;            /* --max-tokens, tokens generated at most */
    struct moe_sampling samp;  /* --temperature --top-p --top-k --min-p --seed, the penalties, --logit-bias */
    int threads;               /* --threads, CPU worker threads */
    bool blas;                 /* --blas: OpenBLAS GEMMs on the CPU backend */
    enum moe_dtype kv_dtype;   /* --kv-dtype: the KV cache's element type */
    bool ignore_eos;           /* --ignore-eos: always max_tokens tokens */
    bool chat;                 /* --chat: the prompt is a user message, through the chat template */
    const char *system;        /* --system: a system message before it, or NULL */
    const char *assistant;     /* --assistant: the reply begun after it, which the output continues, or NULL */
    bool no_gen_prompt;        /* --no-generation-prompt: the prompt ends after the last message */
    const char *ids_out;       /* --ids-out: the token ids fed through the model, for trace --ids */
    bool json;                 /* --json: JSON mode (one JSON object, stopping when it is whole) */
    const char *schema_path;   /* --json-schema FILE: one value of this JSON Schema instead */
    const char *regex;         /* --regex PATTERN: raw text that the pattern matches as a whole */
    const char *grammar_path;  /* --grammar FILE: raw text that the GBNF grammar in FILE derives */
    struct moe_json_schema *schema; /* ... compiled */
    struct moe_offload_opts off; /* --store --gpu-experts ... --stats --predictor (offload/runtime.h) */
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moeflow generate [--model DIR] --prompt TEXT [--max-tokens N]\n"
            "                        [--chat [--system TEXT] [--assistant TEXT | --no-generation-prompt]]\n"
            "                        [--ignore-eos]\n"
            "                        [--temperature T] [--top-p P] [--top-k K] [--min-p P] [--seed S]\n"
            "                        [--presence-penalty X] [--frequency-penalty X]\n"
            "                        [--repetition-penalty X] [--logit-bias ID:BIAS]...\n"
            "                        [--threads N] [--blas] [--kv-dtype f32|bf16] [--backend cpu|cuda]\n"
            "                        [--predictor SPEC]\n"
            "                        [--ids-out FILE] [--json | --json-schema FILE | --regex PATTERN |\n"
            "                         --grammar FILE]\n"
            "Generate a continuation of TEXT, streamed to stdout as it is produced.\n\n"
            "  -m, --model DIR    model directory (default %s)\n"
            "  -p, --prompt TEXT  the prompt (UTF-8)\n"
            "  --chat             TEXT is a user message: the prompt is the model's chat template\n"
            "                     (tokenizer_config.json) of it, as serve's /v1/chat/completions makes it,\n"
            "                     or moeflow's <|role|> markers for a model without one\n"
            "  --system TEXT      with --chat: a system message before the user's\n"
            "  --assistant TEXT   with --chat: the assistant's reply begun, after the user's message: the\n"
            "                     output continues it (serve's continue_final_message)\n"
            "  --no-generation-prompt\n"
            "                     with --chat: the prompt ends after the user's message, the assistant's turn\n"
            "                     not begun (serve's add_generation_prompt false)\n"
            "  --max-tokens N     most tokens to generate (default 128)\n"
            "  --ignore-eos       do not stop at an end-of-sequence token: generate N tokens\n"
            "  --temperature T    0 = greedy (default 0)\n"
            "  --top-p P          nucleus sampling mass in (0, 1] (default 1 = off)\n"
            "  --top-k K          sample among the K most likely tokens (default 0 = off)\n"
            "  --min-p P          drop tokens less likely than P x the most likely, in [0, 1] (default 0 = off)\n"
            "  --seed S           random seed for sampling (default 0)\n"
            "  --presence-penalty X\n"
            "                     subtracted from the logit of every token generated so far, in [-2, 2]\n"
            "                     (default 0)\n"
            "  --frequency-penalty X\n"
            "                     subtracted per time a token was generated, in [-2, 2] (default 0)\n"
            "  --repetition-penalty X\n"
            "                     the logit of a token of the prompt or output is divided by X when\n"
            "                     positive, multiplied when not; X in (0, 10] (default 1 = off)\n"
            "  --logit-bias ID:BIAS\n"
            "                     add BIAS in [-100, 100] to token ID's logit (repeatable, up to %d tokens)\n"
            "                     (bias and penalties apply before greedy or temperature sampling)\n"
            "  --threads N        CPU threads (default 1; cpu backend only)\n"
            "  --blas             CPU GEMMs through OpenBLAS instead of the batch-invariant\n"
            "                     kernel (a row's result then depends on the batch and threads;\n"
            "                     cpu backend only)\n"
            "  --kv-dtype T       KV cache elements: f32 (default) or bf16 (half the memory; keys and\n"
            "                     values rounded to BF16 when stored)\n"
            "  --json             JSON mode: only tokens that keep the output the beginning of one JSON\n"
            "                     object, stopping when it is whole (serve's response_format json_object)\n"
            "  --json-schema FILE JSON mode for one value of the JSON Schema in FILE (serve's response_format\n"
            "                     json_schema; docs/api.md lists the keywords followed)\n"
            "  --regex PATTERN    text that the regular expression matches as a whole (ECMA-262 syntax, as a\n"
            "                     schema's pattern; serve's guided_regex): it may end wherever it matches;\n"
            "                     an empty PATTERN is refused ('()' asks for an empty output)\n"
            "  --grammar FILE     text that the GBNF grammar in FILE derives from its rule root (serve's\n"
            "                     guided_grammar; docs/api.md): it may end wherever it is whole\n"
            "  --ids-out FILE     write the token ids this run fed through the model (the prompt's and\n"
            "                     the output's but the last) as [[...]]: `moeflow trace --ids FILE` then\n"
            "                     records exactly this run's routing, e.g. for --belady-trace\n"
            "  -h, --help         this help\n\n%s%s",
            moe_default_model_dir(), MOE_MAX_LOGIT_BIAS, moe_offload_help(), moe_offload_predictor_help());
}

/* --chat: [system,] user [, assistant] messages through the model's chat template, or the markers of
 * moe_chat_markers() when it has none, as serve makes a chat's prompt: with the generation prompt unless
 * --no-generation-prompt or --assistant, whose reply the text then ends in (continue_final_message).
 * malloc'd, NULL on error. */
static char *chat_prompt(const struct gen_opts *o, bool *templated)
{
    struct moe_chat *tmpl = NULL;
    if (moe_chat_load_dir(o->model_dir, &tmpl))
        return NULL;
    const char *roles[3] = { "system", "user", "assistant" }, *contents[3] = { o->system, o->prompt, o->assistant };
    int first = o->system ? 0 : 1, end = o->assistant ? 3 : 2;
    bool gen = !o->no_gen_prompt && !o->assistant, cont = o->assistant != NULL;
    char *text = NULL;
    size_t len = 0;
    *templated = tmpl != NULL;
    if (tmpl) {
        json_t *msgs = json_array(), *vars = json_pack("{s:b, s:b}", "add_generation_prompt", gen,
                                                       "continue_final_message", cont);
        for (int i = first; msgs && i < end; i++)
            json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", roles[i], "content", contents[i]));
        if (msgs && vars && moe_chat_render(tmpl, msgs, vars, &text, &len))
            text = NULL;
        else if (!msgs || !vars)
            moe_errorf(MOE_ENOMEM, "out of memory");
        json_decref(msgs);
        json_decref(vars);
        moe_chat_free(tmpl);
    } else if (!(text = moe_chat_markers(end - first, roles + first, contents + first, gen))) {
        moe_errorf(MOE_ENOMEM, "out of memory");
    } else if (cont) { /* the template's text is cut by moe_chat_render */
        if (moe_chat_continue_cut(text, strlen(text), o->assistant, strlen(o->assistant), &len) != MOE_OK) {
            free(text);
            return NULL;
        }
        text[len] = 0;
    }
    return text;
}

/* The text of option flag is UTF-8, or false after "moeflow generate: FLAG: text is not valid UTF-8: bad byte 0xXX
 * at byte offset N" (of that text, not of the prompt a chat template makes of it). */
static bool utf8_text(const char *flag, const char *s)
{
    uint32_t cp;
    size_t n = strlen(s);
    for (size_t i = 0, l; i < n; i += l)
        if (!(l = moe_utf8_next((const unsigned char *)s + i, n - i, &cp))) {
            fprintf(stderr, "moeflow generate: %s: text is not valid UTF-8: bad byte 0x%02x at byte offset %zu\n", flag,
                    (unsigned char)s[i], i);
            return false;
        }
    return true;
}

/* A number as a float, as the server takes it: one too small for a float (1e-300) is the smallest of its
 * sign, not 0, which would be out of --top-p's range or turn --repetition-penalty off. */
static bool parse_float(const char *s, float *out)
{
    double v;
    if (!moe_parse_double_in(s, -FLT_MAX, FLT_MAX, &v)) return false;
    *out = moe_sampling_float(v);
    return true;
}

/* --logit-bias ID:BIAS, appended to p; -1 (message printed) when malformed or one too many. */
static int parse_bias(const char *arg, struct moe_sampling *p)
{
    const char *colon = strchr(arg, ':');
    char id_txt[32];
    long id;
    float bias;
    if (!colon || (size_t)(colon - arg) >= sizeof(id_txt)) goto bad;
    memcpy(id_txt, arg, (size_t)(colon - arg));
    id_txt[colon - arg] = 0;
    if (!moe_parse_long(id_txt, 0, INT32_MAX, &id) || !parse_float(colon + 1, &bias) ||
        !(bias >= -100 && bias <= 100))
        goto bad;
    if (p->n_logit_bias == MOE_MAX_LOGIT_BIAS) {
        fprintf(stderr, "moeflow generate: --logit-bias: at most %d tokens\n", MOE_MAX_LOGIT_BIAS);
        return -1;
    }
    p->logit_bias[p->n_logit_bias++] = (struct moe_logit_bias){ (int32_t)id, bias };
    return 0;
bad:
    fprintf(stderr, "moeflow generate: --logit-bias '%s': expected ID:BIAS, a token id and a number in "
            "[-100, 100]\n", arg);
    return -1;
}

/* Parse argv into o; returns -1 to continue, else the exit status. */
static int gen_parse(int argc, char **argv, struct gen_opts *o)
{
    enum { OPT_TEMP = 0x100, OPT_TOPP, OPT_TOPK, OPT_SEED, OPT_MAXTOK, OPT_THREADS, OPT_BLAS, OPT_IGNORE_EOS,
           OPT_CHAT, OPT_SYSTEM, OPT_IDS_OUT, OPT_MINP, OPT_PRESENCE, OPT_FREQUENCY, OPT_REPETITION, OPT_BIAS,
           OPT_JSON, OPT_SCHEMA, OPT_REGEX, OPT_GRAMMAR, OPT_KV_DTYPE, OPT_ASSISTANT, OPT_NO_GEN };
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' },
        { "prompt", required_argument, NULL, 'p' },
        { "max-tokens", required_argument, NULL, OPT_MAXTOK },
        { "temperature", required_argument, NULL, OPT_TEMP },
        { "top-p", required_argument, NULL, OPT_TOPP },
        { "top-k", required_argument, NULL, OPT_TOPK },
        { "seed", required_argument, NULL, OPT_SEED },
        { "min-p", required_argument, NULL, OPT_MINP },
        { "presence-penalty", required_argument, NULL, OPT_PRESENCE },
        { "frequency-penalty", required_argument, NULL, OPT_FREQUENCY },
        { "repetition-penalty", required_argument, NULL, OPT_REPETITION },
        { "logit-bias", required_argument, NULL, OPT_BIAS },
        { "json", no_argument, NULL, OPT_JSON },
        { "json-schema", required_argument, NULL, OPT_SCHEMA },
        { "regex", required_argument, NULL, OPT_REGEX },
        { "grammar", required_argument, NULL, OPT_GRAMMAR },
        { "threads", required_argument, NULL, OPT_THREADS },
        { "blas", no_argument, NULL, OPT_BLAS },
        { "kv-dtype", required_argument, NULL, OPT_KV_DTYPE },
        { "ignore-eos", no_argument, NULL, OPT_IGNORE_EOS },
        { "chat", no_argument, NULL, OPT_CHAT },
        { "system", required_argument, NULL, OPT_SYSTEM },
        { "assistant", required_argument, NULL, OPT_ASSISTANT },
        { "no-generation-prompt", no_argument, NULL, OPT_NO_GEN },
        { "ids-out", required_argument, NULL, OPT_IDS_OUT },
        { "help", no_argument, NULL, 'h' },
        MOE_OFFLOAD_LONG_OPTIONS,
        MOE_PREDICTOR_LONG_OPTION,
        { 0, 0, 0, 0 },
    };
    memset(o, 0, sizeof(*o));
    o->model_dir = moe_default_model_dir();
    o->max_tokens = 128;
    o->samp.top_p = 1.0f;
    o->threads = 1;
    moe_offload_opts_init(&o->off);
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":m:p:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (!moe_cli_check_model("generate", optarg)) return 2;
            o->model_dir = optarg;
            break;
        case 'p': o->prompt = optarg; break;
        case 'h': return moe_cli_help("generate", argc, argv, ":m:p:h", opts, usage);
        case OPT_MAXTOK:
            if (!moe_cli_opt_int("generate", "max-tokens", optarg, 1, 1 << 20, &o->max_tokens)) return 2;
            break;
        case OPT_TEMP:
            if (!parse_float(optarg, &o->samp.temperature) || o->samp.temperature < 0) {
                fprintf(stderr, "moeflow generate: --temperature '%s': expected a number >= 0 that a float holds "
                                "(at most 3.4e38)\n", optarg);
                return 2;
            }
            break;
        case OPT_TOPP:
            if (!parse_float(optarg, &o->samp.top_p) || !(o->samp.top_p > 0 && o->samp.top_p <= 1)) {
                fprintf(stderr, "moeflow generate: --top-p '%s': expected a number in (0, 1]\n", optarg);
                return 2;
            }
            break;
        case OPT_TOPK:
            if (!moe_cli_opt_int("generate", "top-k", optarg, 0, 1 << 30, &o->samp.top_k)) return 2;
            break;
        case OPT_SEED: {
            uint64_t s;
            if (!moe_parse_u64(optarg, &s)) {
                fprintf(stderr, "moeflow generate: --seed '%s': expected an integer in [0, %" PRIu64 "]\n", optarg,
                        UINT64_MAX);
                return 2;
            }
            o->samp.seed = s;
            break;
        }
        case OPT_MINP:
            if (!parse_float(optarg, &o->samp.min_p) || !(o->samp.min_p >= 0 && o->samp.min_p <= 1)) {
                fprintf(stderr, "moeflow generate: --min-p '%s': expected a number in [0, 1]\n", optarg);
                return 2;
            }
            break;
        case OPT_PRESENCE:
        case OPT_FREQUENCY: {
            float *x = c == OPT_PRESENCE ? &o->samp.presence_penalty : &o->samp.frequency_penalty;
            if (!parse_float(optarg, x) || !(fabsf(*x) <= MOE_MAX_PENALTY)) {
                fprintf(stderr, "moeflow generate: --%s-penalty '%s': expected a number in [-2, 2]\n",
                        c == OPT_PRESENCE ? "presence" : "frequency", optarg);
                return 2;
            }
            break;
        }
        case OPT_REPETITION:
            if (!parse_float(optarg, &o->samp.repetition_penalty) ||
                !(o->samp.repetition_penalty > 0 && o->samp.repetition_penalty <= MOE_MAX_REPETITION_PENALTY)) {
                fprintf(stderr, "moeflow generate: --repetition-penalty '%s': expected a number in (0, 10]\n",
                        optarg);
                return 2;
            }
            break;
        case OPT_BIAS:
            if (parse_bias(optarg, &o->samp) < 0)
                return 2;
            break;
        case OPT_THREADS:
            if (!moe_cli_opt_threads("generate", optarg, &o->threads)) return 2;
            break;
        case OPT_BLAS:
            o->blas = true;
            break;
        case OPT_KV_DTYPE:
            if (!moe_engine_kv_dtype_parse(optarg, &o->kv_dtype)) {
                fprintf(stderr, "moeflow generate: --kv-dtype '%s': expected f32 or bf16\n", optarg);
                return 2;
            }
            break;
        case OPT_IGNORE_EOS:
            o->ignore_eos = true;
            break;
        case OPT_CHAT:
            o->chat = true;
            break;
        case OPT_JSON:
        case OPT_SCHEMA:
            if (c == OPT_SCHEMA && !moe_cli_check_in("generate", "--json-schema", optarg)) return 2;
            o->json = true;
            if (c == OPT_SCHEMA) o->schema_path = optarg;
            break;
        case OPT_REGEX:
            o->regex = optarg;
            break;
        case OPT_GRAMMAR:
            if (!moe_cli_check_in("generate", "--grammar", optarg)) return 2;
            o->grammar_path = optarg;
            break;
        case OPT_SYSTEM:
            o->system = optarg;
            break;
        case OPT_ASSISTANT:
            if (!*optarg) {
                fprintf(stderr, "moeflow generate: --assistant is empty: give the reply's beginning (leave it out "
                                "for a reply from the start)\n");
                return 2;
            }
            o->assistant = optarg;
            break;
        case OPT_NO_GEN:
            o->no_gen_prompt = true;
            break;
        case OPT_IDS_OUT:
            if (!moe_cli_check_out("generate", "--ids-out", optarg, true)) return 2;
            o->ids_out = optarg;
            break;
        default: {
            int r = moe_offload_opts_parse(&o->off, c, optarg);
            if (r > 0) break;
            if (r < 0) {
                fprintf(stderr, "moeflow generate: %s\n", moe_last_error());
                return 2;
            }
            return moe_cli_bad_option("generate", c, argv, opts);
        }
        }
    }
    if (!moe_cli_no_operands("generate", argc, argv, "the prompt goes in --prompt")) return 2;
    if (!o->prompt) {
        fprintf(stderr, "moeflow generate: --prompt TEXT is required (see --help)\n");
        return 2;
    }
    if ((o->regex != NULL) + (o->grammar_path != NULL) + o->json > 1) {
        fprintf(stderr, "moeflow generate: --json (or --json-schema), --regex and --grammar go alone: give one\n");
        return 2;
    }
    /* the text held to the pattern or grammar as JSON mode holds it to a value */
    o->json |= o->regex != NULL || o->grammar_path != NULL;
    const char *chat_opt = o->system ? "--system" : o->assistant ? "--assistant"
                           : o->no_gen_prompt ? "--no-generation-prompt" : NULL;
    if (chat_opt && !o->chat) {
        fprintf(stderr, "moeflow generate: %s goes with --chat (a plain prompt has no messages)\n", chat_opt);
        return 2;
    }
    if (o->assistant && o->no_gen_prompt) {
        fprintf(stderr, "moeflow generate: --assistant and --no-generation-prompt go alone: the reply begun ends "
                        "the prompt already (give one)\n");
        return 2;
    }
    if (!utf8_text("--prompt", o->prompt) || (o->system && !utf8_text("--system", o->system)) ||
        (o->assistant && !utf8_text("--assistant", o->assistant)))
        return 2;
    if (moe_offload_opts_check(&o->off) != MOE_OK) {
        fprintf(stderr, "moeflow generate: %s\n", moe_last_error());
        return 2;
    }
    if (o->blas && o->off.backend == MOE_COMPUTE_CUDA) {
        fprintf(stderr, "moeflow generate: --blas chooses the cpu backend's GEMMs and --backend cuda runs them on "
                        "the GPU: drop one of the two\n");
        return 2;
    }
    if (!moe_cli_check_threads("generate", o->threads, &o->off))
        return 2;
    if (o->off.stats_json && !moe_cli_check_out("generate", "--stats-json", o->off.stats_json, true))
        return 2;
    if (!moe_cli_check_distinct("generate", "--ids-out", o->ids_out, "--stats-json", o->off.stats_json))
        return 2;
    for (int i = 0; i < 2; i++)
        if (!moe_cli_check_not_input("generate", i ? "--stats-json" : "--ids-out", i ? o->off.stats_json : o->ids_out,
                                     "--json-schema", o->schema_path, "--grammar", o->grammar_path, "--store",
                                     o->off.store, "--belady-trace", o->off.belady_trace, NULL))
            return 2;
    return -1;
}

/* One forward step, with the predictor (or NULL) told where it begins and ends. */
static enum moe_status gen_forward(struct moe_engine *e, struct moe_predictor *pred, const struct moe_batch *b,
                                   float *logits)
{
    enum moe_status st;
    if (pred && (st = moe_predictor_begin(pred, b)) != MOE_OK) return st;
    st = moe_engine_forward(e, b, logits);
    if (pred) moe_predictor_end(pred, st == MOE_OK);
    return st;
}

/* --ids-out: the fed ids as one sequence of `trace --ids` (a JSON array of arrays). */
static enum moe_status write_ids(const char *path, const int *ids, int n)
{
    struct moe_out o;
    enum moe_status st = moe_out_open(&o, "--ids-out", path);
    if (st) return st;
    fputs("[[", o.f);
    for (int i = 0; i < n; i++) fprintf(o.f, "%s%d", i ? "," : "", ids[i]);
    fputs("]]\n", o.f);
    return moe_out_close(&o, "--ids-out");
}

static bool gen_is_eos(const void *cfg, int id) { return moe_config_is_eos(cfg, id); }

/* Prefill the prompt, then sample and stream until EOS or max_tokens (or, with --json, until the
 * object is whole). */
static enum moe_status gen_run(struct moe_engine *e, struct moe_predictor *pred, const struct moe_tokenizer *tok,
                               const struct gen_opts *o, const int *ids, int n_ids)
{
    const struct moe_config *c = &moe_engine_model(e)->cfg;
    int V = c->vocab, chunk = moe_engine_max_batch(e);
    enum moe_status st = MOE_OK;
    float *logits = malloc(sizeof(float) * (size_t)V);
    int *pos = malloc(sizeof(int) * (size_t)chunk), *seqv = malloc(sizeof(int) * (size_t)chunk);
    bool *want = malloc(sizeof(bool) * (size_t)chunk);
    /* the prompt, then the output: what the penalties look at; its first n_fed went through the model */
    int *hist = malloc(sizeof(int) * ((size_t)n_ids + (size_t)o->max_tokens)), n_hist = n_ids, n_fed = n_ids;
    struct moe_token_bytes tb = { 0 };
    struct moe_sample_buf sbuf = { 0 };
    struct moe_tok_stream text = { 0 };
    struct moe_json_state js;
    moe_json_init(&js, o->schema);
    float *masked = o->json ? malloc(sizeof(float) * (size_t)V) : NULL;
    if (!logits || !pos || !seqv || !want || !hist || (o->json && !masked)) {
        st = moe_errorf(MOE_ENOMEM, "out of memory");
        goto out;
    }
    if (o->json && (st = moe_token_bytes_build(tok, V, &tb)) != MOE_OK) goto out;
    int seq = moe_engine_seq_alloc(e);
    if (seq < 0) {
        st = moe_errorf(MOE_EINVAL, "the engine has no free sequence slot");
        goto out;
    }
    if (pred) moe_predictor_seq_reset(pred, seq);
    memcpy(hist, ids, sizeof(int) * (size_t)n_ids);
    for (int i0 = 0; i0 < n_ids; i0 += chunk) {
        int n = n_ids - i0 < chunk ? n_ids - i0 : chunk;
        for (int i = 0; i < n; i++) {
            pos[i] = i0 + i;
            seqv[i] = seq;
            want[i] = i0 + i == n_ids - 1;
        }
        struct moe_batch b = { .n = n, .tokens = ids + i0, .seq = seqv, .pos = pos, .want_logits = want };
        if ((st = gen_forward(e, pred, &b, logits)) != MOE_OK) goto out;
    }
    struct moe_sampler s;
    moe_sampler_init(&s, &o->samp);
    for (int g = 0; g < o->max_tokens && !(o->json && moe_json_done(&js)); g++) {
        if (o->json && !moe_json_mask(&js, &tb, logits, V, o->ignore_eos ? NULL : gen_is_eos, c, masked)) {
            st = moe_errorf(MOE_EINVAL, "%s: no token of the vocabulary continues the %s",
                            o->grammar_path ? "--grammar" : o->regex ? "--regex" : "--json",
                            o->grammar_path || o->regex ? "text" : "value");
            goto out;
        }
        int t = moe_sampler_sample_buf(&s, &sbuf, o->json ? masked : logits, V, hist, n_ids, n_hist);
        if (t < 0) {
            st = MOE_ENOMEM;
            goto out;
        }
        if (moe_config_is_eos(c, t) && !o->ignore_eos) break;
        if (o->json) moe_json_take(&js, &tb, t);
        hist[n_hist++] = t;
        if (moe_tokenizer_token_bytes(tok, t, NULL, 0) >= 0) { /* even an empty token ends a byte run */
            moe_cli_write_token(stdout, tok, t, &text); /* every byte, however long the token */
            if (fflush(stdout) != 0 || ferror(stdout)) { /* a full disk, a closed pipe: stop here */
                st = moe_errorf(MOE_EIO, "writing to stdout failed: %s", strerror(errno));
                goto out;
            }
        }
        if (g + 1 == o->max_tokens || (o->json && moe_json_done(&js))) break;
        int p = moe_engine_seq_len(e, seq);
        struct moe_batch b = { .n = 1, .tokens = &t, .seq = &seq, .pos = &p };
        if ((st = gen_forward(e, pred, &b, logits)) != MOE_OK) goto out;
        n_fed++;
    }
    moe_cli_write_end(stdout, &text); /* a cut character or byte run left at the end: U+FFFD */
    fputc('\n', stdout);
    fflush(stdout);
    if (o->ids_out) st = write_ids(o->ids_out, hist, n_fed);
out:
    moe_tok_stream_free(&text);
    moe_sample_buf_free(&sbuf);
    moe_token_bytes_free(&tb);
    free(masked);
    free(hist);
    free(logits);
    free(pos);
    free(seqv);
    free(want);
    return st;
}

int moe_cmd_generate(int argc, char **argv)
{
    struct gen_opts o;
    int r = gen_parse(argc, argv, &o);
    if (r >= 0) return r;
    if (moe_sampling_validate(&o.samp, 0) != MOE_OK) {
        fprintf(stderr, "moeflow generate: %s\n", moe_last_error());
        return 2;
    }
    int rc = 1;
    struct moe_model *m = NULL;
    struct moe_tokenizer *tok = NULL;
    struct moe_provider *prov = NULL;
    struct moe_backend *be = NULL;
    struct moe_engine *e = NULL;
    struct moe_predictor *pred = NULL;
    int *ids = NULL;
    size_t n_ids = 0;

    const char *text_path = o.schema_path ? o.schema_path : o.grammar_path;
    if (text_path) {
        const char *flag = o.schema_path ? "--json-schema" : "--grammar";
        const char *what = o.schema_path ? "a JSON Schema" : "a GBNF grammar";
        if (!moe_cli_check_readable("generate", flag, text_path, true, what)) return 1;
        char *text = NULL;
        size_t len = 0;
        enum moe_status sst = moe_read_file(text_path, &text, &len, MOE_JSON_MAX_SCHEMA);
        if (sst == MOE_EFORMAT) { /* larger than a schema or grammar may be: refused as its text would be */
            fprintf(stderr, "moeflow generate: %s %s\n", flag, moe_last_error()); /* the message names the file */
            return 2;
        }
        if (sst != MOE_OK) { /* unreadable after all: a failure, as every command's input file */
            fprintf(stderr, "moeflow generate: %s %s (give a readable file holding %s)\n", flag, moe_last_error(),
                    what);
            return 1;
        }
        sst = o.schema_path ? moe_json_schema_parse(text, len, &o.schema)
                            : moe_json_schema_grammar(text, len, &o.schema);
        free(text);
        if (sst != MOE_OK) {
            fprintf(stderr, "moeflow generate: %s %s: %s\n", flag, text_path, moe_last_error());
            return 2;
        }
    }
    if (o.regex && moe_json_schema_regex(o.regex, strlen(o.regex), &o.schema) != MOE_OK) {
        fprintf(stderr, "moeflow generate: --regex: %s\n", moe_last_error());
        return 2;
    }
    const char *pspec = moe_offload_predictor_spec(&o.off);
    struct moe_pred_spec spec;
    int spec_rc = moe_cli_pred_spec("generate", pspec, o.model_dir, &spec);
    if (spec_rc) {
        rc = spec_rc;
        goto out;
    }
    if (!moe_cli_open_model("generate", o.model_dir, &m, &tok)) goto out;
    if (moe_sampling_validate(&o.samp, m->cfg.vocab) != MOE_OK) { /* the bias ids against the vocabulary */
        fprintf(stderr, "moeflow generate: --logit-bias: %s\n", moe_last_error());
        rc = 2;
        goto out;
    }
    enum moe_status est;
    if (o.chat) {
        bool templated;
        char *text = chat_prompt(&o, &templated);
        if (!text) {
            fprintf(stderr, "moeflow generate: --chat: %s\n", moe_last_error());
            goto out;
        }
        /* a model's template writes its own special tokens (BOS included) */
        est = (templated ? moe_tokenizer_encode : moe_tokenizer_encode_prompt)(tok, text, strlen(text), &ids, &n_ids);
        free(text);
    } else {
        est = moe_tokenizer_encode_prompt(tok, o.prompt, strlen(o.prompt), &ids, &n_ids);
    }
    if (est != MOE_OK) {
        fprintf(stderr, "moeflow generate: --prompt: %s\n", moe_last_error());
        rc = 2;
        goto out;
    }
    if (n_ids == 0) {
        fprintf(stderr, "moeflow generate: --prompt is empty (give at least one token of text)\n");
        rc = 2;
        goto out;
    }
    long ctx = (long)n_ids + o.max_tokens;
    if (ctx > m->cfg.max_pos) {
        fprintf(stderr, "moeflow generate: prompt (%zu tokens) + --max-tokens %d exceeds the model's "
                "context of %d tokens; lower --max-tokens or shorten --prompt\n",
                n_ids, o.max_tokens, m->cfg.max_pos);
        rc = 2;
        goto out;
    }
    if (!moe_cli_check_tier_files("generate", &o.off)) goto out;
    enum moe_status st = moe_offload_runtime_create(m, &o.off, &be, &prov);
    if (st != MOE_OK) {
        fprintf(stderr, "moeflow generate: %s\n", moe_last_error());
        rc = moe_cli_failure_exit(st);
        goto out;
    }
    /* Predictions only matter where experts move: with every expert resident
     * (no provider) the predictor would have nothing to prefetch into. */
    if (spec.kind != MOE_PRED_NONE && prov) {
        pred = moe_predictor_create(m, &spec, 1);
        if (!pred) {
            fprintf(stderr, "moeflow generate: --predictor %s: %s\n", pspec, moe_last_error());
            goto out;
        }
        struct moe_pred_prefetch pf = { .rank_only = o.off.no_prefetch };
        moe_predictor_set_provider(pred, prov, &pf);
    }
    struct moe_engine_params ep = {
        .max_seqs = 1,
        .max_ctx = (int)ctx,
        /* --policy belady follows its trace, which lists accesses token by token: prefill
         * one token per forward so the device tier sees them in that order */
        .max_batch_tokens = o.off.policy == MOE_POLICY_BELADY ? 1 : n_ids < 256 ? (int)n_ids : 256,
        .n_threads = o.threads,
        .cpu_blas = o.blas,
        .kv_dtype = o.kv_dtype,
        .provider = prov,
        .backend = be,
    };
    if (pred) ep.hooks = moe_predictor_hooks(pred, NULL);
    e = moe_engine_create(m, &ep);
    if (!e) {
        moe_offload_explain(MOE_EINVAL, be, prov);
        fprintf(stderr, "moeflow generate: %s\n", moe_last_error());
        goto out;
    }
    st = gen_run(e, pred, tok, &o, ids, (int)n_ids);
    if (st != MOE_OK) {
        /* a sticky device error says so and that the process must restart */
        moe_offload_explain(st, be, prov);
        fflush(stdout);
        fprintf(stderr, "moeflow generate: %s\n", moe_last_error());
        moe_offload_report(prov, &o.off); /* --stats: what the tiers did up to the failure */
        goto out;
    }
    if (moe_offload_report(prov, &o.off) != MOE_OK) {
        fprintf(stderr, "moeflow generate: %s\n", moe_last_error());
        goto out;
    }
    rc = 0;
out:
    moe_engine_destroy(e);
    moe_predictor_destroy(pred);
    moe_provider_destroy(prov);
    moe_backend_destroy(be);
    free(ids);
    moe_tokenizer_free(tok);
    moe_model_close(m);
    moe_json_schema_unref(o.schema);
    return rc;
}
