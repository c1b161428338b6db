/* moeflow bench batch: requests through the real scheduler, engine and expert
 * cache; prints distinct experts per layer-step, transfers per generated
 * token, device-tier hit rate and tokens/s.
 *
 * All requests are submitted before the first step and the scheduler is
 * stepped on this thread, so every figure except tokens/s is deterministic
 * for the same flags. */
#include "cli.h"

#include "../kernels/backend.h"
#include "../model/model.h"
#include "../model/tokenizer.h"
#include "../offload/runtime.h"
#include "../predictor/predictor.h"
#include "../scheduler/scheduler.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bench_opts {
    const char *model_dir;
    const char *prompts;
    int concurrency;         /* sequences decoding at once */
    int micro_batch;         /* sequences per forward() */
    int max_tokens;          /* new tokens per request */
    int prefill_chunk;       /* prompt tokens per forward() */
    int prompt_tokens;       /* prompts are cut to their first N tokens */
    int lookahead;           /* micro-batches prefetched ahead (-1 off) */
    int threads;             /* threads of the CPU backend's pool */
    enum moe_dtype kv_dtype; /* KV cache elements */
    double lag, lead;        /* regroup fair-share bounds in tokens (0 = scheduler defaults) */
    enum moe_grouping grouping;
    int capacity;            /* device-tier expert slots (0 = unset) */
    double capacity_frac;    /* or a fraction of MoE layers x experts (0 = unset) */
    const char *predictor;   /* predictor spec */
    bool json;
    bool no_pred_prefetch;   /* the predictor only steers regrouping; it issues no prefetches */
    bool rank_only;          /* its predictions rank the device tier's evictions, move nothing */
    struct moe_offload_opts oo;
};

static void bench_usage(FILE *f)
{
    fprintf(f,
            "usage: moeflow bench batch [--model DIR] --prompts FILE --concurrency N --micro-batch M\n"
            "                           --max-tokens T --grouping fcfs|regroup\n"
            "                           (--capacity N | --capacity-frac F) [--predictor SPEC] [--json]\n"
            "\n"
            "Runs every prompt of FILE through the scheduler (continuous batching, N sequences at\n"
            "once in micro-batches of M), the engine and the tiered expert cache, and reports the\n"
            "distinct experts activated per MoE layer-step, expert transfers per generated token,\n"
            "the device-tier hit rate and tokens/s.\n"
            "\n"
            "  --model DIR          model directory (default: the bundled model)\n"
            "  --prompts FILE       a JSON array of strings when FILE's name ends in .json; else one\n"
            "                       prompt per line (LF or CRLF; empty lines skipped) in which \\n, \\t\n"
            "                       and \\r stand for a newline, a tab and a carriage return, and a\n"
            "                       backslash before any other character for that character (\\\\: a\n"
            "                       backslash); a backslash that ends a line stays\n"
            "  --concurrency N      sequences decoding at once\n"
            "  --micro-batch M      sequences per forward pass\n"
            "  --max-tokens T       new tokens per request (EOS ignored, so every request makes T)\n"
            "  --grouping G         fcfs (admission order) or regroup (by predicted routing paths)\n"
            "  --capacity N         device-tier expert slots\n"
            "  --capacity-frac F    device slots = floor(F x MoE layers x experts)\n"
            "  --predictor SPEC     routing-path predictor (none, gate[:D], path[:FILE], history,\n"
            "                       path+gate[:FILE], auto; default none): regrouping paths and prefetch\n"
            "  --prefill-chunk N    prompt tokens per forward pass (default 256)\n"
            "  --prompt-tokens N    cut each prompt to its first N tokens (default 256; 0 = whole)\n"
            "  --lookahead N        micro-batches whose predicted experts are prefetched ahead\n"
            "                       (default 1; 0 = off); with --predictor none, the experts each\n"
            "                       sequence's last token was routed to\n"
            "  --threads N          threads of the CPU backend's pool (default 1; cpu backend only)\n"
            "  --kv-dtype T         KV cache elements: f32 (default) or bf16 (half the memory)\n"
            "  --regroup-lag T      regroup: tokens a sequence may fall behind its fair share (default 2;\n"
            "                       -1: strict steps, each step's sequences partitioned by path overlap)\n"
            "  --regroup-lead T     regroup: tokens a sequence may run ahead of it (default 1)\n"
            "  --no-prefetch        nothing moves ahead of need (no --lookahead either): the\n"
            "                       predictor's predictions rank the device tier's evictions\n"
            "                       (--policy predicted) and steer regrouping\n"
            "  --no-predictor-prefetch  the predictor steers regrouping only: no prefetches, no hints\n"
            "  --json               print one JSON object instead of text\n"
            "  -h, --help           this help\n"
            "%s",
            moe_offload_help_below_device());
}

/* Undo the line format's escapes in place (--help): \n, \t, \r, and \X for any other X; a last '\' stays. */
static void unescape(char *s)
{
    char *w = s;
    for (char *r = s; *r; r++) {
        if (*r == '\\' && r[1]) {
            r++;
            *w++ = *r == 'n' ? '\n' : *r == 't' ? '\t' : *r == 'r' ? '\r' : *r;
        } else {
            *w++ = *r;
        }
    }
    *w = 0;
}

/* Prompts of FILE as malloc'd strings, with where each is in it (*at_out, malloc'd): its line, counted from 1,
 * or in a .json file its element, counted from 0 as the array's other messages count (*json_out). */
static enum moe_status load_prompts(const char *path, char ***out, int **at_out, bool *json_out, int *n_out)
{
    char *buf = NULL;
    size_t len = 0;
    enum moe_status st = moe_read_file(path, &buf, &len, (size_t)1 << 30);
    if (st != MOE_OK)
        return moe_error_prefix(st, "--prompts"); /* the message names the file */
    char **v = NULL;
    int n = 0, *at = NULL;
    size_t pn = strlen(path);
    *json_out = pn >= 5 && !strcmp(path + pn - 5, ".json");
    if (*json_out) { /* by its name: a line may begin with '[' too */
        json_error_t je;
        json_t *arr = json_loadb(buf, len, 0, &je);
        if (!arr || !json_is_array(arr)) {
            if (arr) /* an object (jansson takes nothing else at the top): no line is at fault */
                st = moe_errorf(MOE_EFORMAT, "--prompts %s: an object, not a JSON array of strings", path);
            else if (strstr(je.text, "\\u0000")) /* jansson's text names its flag */
                st = moe_errorf(MOE_EFORMAT, "--prompts %s: line %d: a string holds \\u0000, which a prompt "
                                "cannot hold", path, je.line);
            else
                st = moe_errorf(MOE_EFORMAT, "--prompts %s: line %d: %s", path, je.line, je.text);
            json_decref(arr);
            goto out;
        }
        size_t cnt = json_array_size(arr);
        v = calloc(cnt ? cnt : 1, sizeof(char *));
        at = calloc(cnt ? cnt : 1, sizeof(int));
        for (size_t i = 0; v && at && i < cnt; i++) {
            json_t *e = json_array_get(arr, i);
            if (!json_is_string(e)) {
                st = moe_errorf(MOE_EFORMAT, "--prompts %s: element %zu is not a string", path, i);
                break;
            }
            v[n] = strdup(json_string_value(e));
            if (!v[n]) {
                st = moe_errorf(MOE_ENOMEM, "--prompts %s: out of memory", path);
                break;
            }
            at[n++] = (int)i;
        }
        if (!v || !at)
            st = moe_errorf(MOE_ENOMEM, "--prompts %s: out of memory", path);
        json_decref(arr);
    } else {
        int cap = 0, lineno = 0;
        for (char *line = buf, *next; line; line = next) {
            lineno++;
            if ((next = strchr(line, '\n')))
                *next++ = 0;
            size_t l = strlen(line);
            if (l && line[l - 1] == '\r')
                line[--l] = 0;
            if (!l)
                continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                char **t = realloc(v, sizeof(char *) * (size_t)cap);
                if (t) v = t;
                int *a = t ? realloc(at, sizeof(int) * (size_t)cap) : NULL;
                if (!a) {
                    st = moe_errorf(MOE_ENOMEM, "--prompts %s: out of memory", path);
                    break;
                }
                at = a;
            }
            unescape(line);
            v[n] = strdup(line);
            if (!v[n]) {
                st = moe_errorf(MOE_ENOMEM, "--prompts %s: out of memory", path);
                break;
            }
            at[n++] = lineno;
        }
    }
    if (st == MOE_OK && n == 0)
        st = moe_errorf(MOE_EINVAL, "--prompts %s: no prompts (one per line, or a JSON array of strings in a .json file)", path);
out:
    free(buf);
    if (st != MOE_OK) {
        for (int i = 0; i < n; i++)
            free(v[i]);
        free(v);
        free(at);
        return st;
    }
    *out = v;
    *at_out = at;
    *n_out = n;
    return MOE_OK;
}

struct bench_req {
    int n_done;
    enum moe_finish why;
    char msg[256];
};

static void on_done(void *ud, uint64_t id, const struct moe_sched_result *res)
{
    struct bench_req *r = ud;
    r->n_done++;
    r->why = res->why;
    snprintf(r->msg, sizeof(r->msg), "%s", res->msg ? res->msg : "");
    (void)id;
}

static int bench_batch(int argc, char **argv)
{
    struct bench_opts o = { .model_dir = moe_default_model_dir(), .prefill_chunk = 256, .prompt_tokens = 256,
                            .lookahead = 1, .threads = 1, .grouping = MOE_GROUP_FCFS, .predictor = "none" };
    moe_offload_opts_init(&o.oo);
    bool have_grouping = false, have_lookahead = false;
    enum {
        O_MODEL = 0x100, O_PROMPTS, O_CONC, O_MB, O_MAXTOK, O_GROUP, O_CAP, O_CAPF, O_PRED, O_JSON, O_CHUNK,
        O_PTOK, O_LOOK, O_THREADS, O_LAG, O_LEAD, O_NOPF, O_RANK, O_HELP, O_KV_DTYPE
    };
    static const struct option lopts[] = {
        { "model", required_argument, NULL, O_MODEL },
        { "prompts", required_argument, NULL, O_PROMPTS },
        { "concurrency", required_argument, NULL, O_CONC },
        { "micro-batch", required_argument, NULL, O_MB },
        { "max-tokens", required_argument, NULL, O_MAXTOK },
        { "grouping", required_argument, NULL, O_GROUP },
        { "capacity", required_argument, NULL, O_CAP },
        { "capacity-frac", required_argument, NULL, O_CAPF },
        { "predictor", required_argument, NULL, O_PRED },
        { "json", no_argument, NULL, O_JSON },
        { "prefill-chunk", required_argument, NULL, O_CHUNK },
        { "prompt-tokens", required_argument, NULL, O_PTOK },
        { "lookahead", required_argument, NULL, O_LOOK },
        { "threads", required_argument, NULL, O_THREADS },
        { "kv-dtype", required_argument, NULL, O_KV_DTYPE },
        { "regroup-lag", required_argument, NULL, O_LAG },
        { "regroup-lead", required_argument, NULL, O_LEAD },
        { "no-predictor-prefetch", no_argument, NULL, O_NOPF },
        { "no-prefetch", no_argument, NULL, O_RANK },
        { "help", no_argument, NULL, O_HELP },
        MOE_OFFLOAD_LONG_OPTIONS,
        { 0, 0, 0, 0 },
    };
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", lopts, NULL)) != -1) {
        switch (c) {
        case O_MODEL:
            if (!moe_cli_check_model("bench batch", optarg)) return 2;
            o.model_dir = optarg;
            break;
        case O_PROMPTS:
            if (!moe_cli_check_in("bench batch", "--prompts", optarg)) return 2;
            o.prompts = optarg;
            break;
        case O_CONC:
            if (!moe_cli_opt_int("bench batch", "concurrency", optarg, 1, 4096, &o.concurrency)) return 2;
            break;
        case O_MB:
            if (!moe_cli_opt_int("bench batch", "micro-batch", optarg, 1, 4096, &o.micro_batch)) return 2;
            break;
        case O_MAXTOK:
            if (!moe_cli_opt_int("bench batch", "max-tokens", optarg, 1, 1 << 20, &o.max_tokens)) return 2;
            break;
        case O_CHUNK:
            if (!moe_cli_opt_int("bench batch", "prefill-chunk", optarg, 1, 1 << 16, &o.prefill_chunk)) return 2;
            break;
        case O_PTOK:
            if (!moe_cli_opt_int("bench batch", "prompt-tokens", optarg, 0, 1 << 20, &o.prompt_tokens)) return 2;
            break;
        case O_LOOK:
            if (!moe_cli_opt_int("bench batch", "lookahead", optarg, 0, 64, &o.lookahead)) return 2;
            have_lookahead = true;
            break;
        case O_THREADS: if (!moe_cli_opt_threads("bench batch", optarg, &o.threads)) return 2; break;
        case O_KV_DTYPE:
            if (!moe_engine_kv_dtype_parse(optarg, &o.kv_dtype)) {
                fprintf(stderr, "moeflow bench batch: --kv-dtype '%s': expected f32 or bf16\n", optarg);
                return 2;
            }
            break;
        case O_CAP:
            if (!moe_cli_opt_int("bench batch", "capacity", optarg, 1, 1 << 24, &o.capacity)) return 2;
            break;
        case O_CAPF: {
            if (!moe_parse_double_in(optarg, 0, 1, &o.capacity_frac) || !(o.capacity_frac > 0)) {
                fprintf(stderr, "moeflow bench batch: --capacity-frac '%s': expected a number in (0, 1]\n", optarg);
                return 2;
            }
            break;
        }
        case O_LAG:
        case O_LEAD: {
            double x = 0;
            bool ok = moe_parse_double_in(optarg, -1, 1000, &x);
            if (!ok || !((x > 0 && x <= 1000) || (c == O_LAG && x == -1))) {
                fprintf(stderr, "moeflow bench batch: %s '%s': expected a number of tokens in (0, 1000]%s\n",
                        c == O_LAG ? "--regroup-lag" : "--regroup-lead", optarg, c == O_LAG ? " or -1" : "");
                return 2;
            }
            if (c == O_LAG)
                o.lag = x;
            else
                o.lead = x;
            break;
        }
        case O_GROUP:
            if (!strcmp(optarg, "fcfs"))
                o.grouping = MOE_GROUP_FCFS;
            else if (!strcmp(optarg, "regroup"))
                o.grouping = MOE_GROUP_REGROUP;
            else {
                fprintf(stderr, "moeflow bench batch: --grouping '%s': expected fcfs or regroup\n", optarg);
                return 2;
            }
            have_grouping = true;
            break;
        case O_PRED: o.predictor = optarg; break;
        case O_JSON: o.json = true; break;
        case O_NOPF: o.no_pred_prefetch = true; break;
        case O_RANK: o.rank_only = true; break;
        case 'h':
        case O_HELP: return moe_cli_help("bench batch", argc, argv, ":h", lopts, bench_usage);
        default: {
            int r = moe_offload_opts_parse(&o.oo, c, optarg);
            if (r < 0) {
                fprintf(stderr, "moeflow bench batch: %s\n", moe_last_error());
                return 2;
            }
            if (r == 0) return moe_cli_bad_option("bench batch", c, argv, lopts);
            if (c == MOE_OPT_GPU_EXPERTS || c == MOE_OPT_GPU_BYTES) {
                fprintf(stderr, "moeflow bench batch: give the device tier size with --capacity or "
                                "--capacity-frac, not --gpu-experts / --gpu-cache-bytes\n");
                return 2;
            }
        }
        }
    }
    if (!moe_cli_no_operands("bench batch", argc, argv, NULL)) return 2;
    const char *missing = !o.prompts ? "--prompts" : !o.concurrency ? "--concurrency" : !o.micro_batch ? "--micro-batch"
                          : !o.max_tokens ? "--max-tokens" : !have_grouping ? "--grouping" : NULL;
    if (missing) {
        fprintf(stderr, "moeflow bench batch: %s is required (see --help)\n", missing);
        return 2;
    }
    if ((o.capacity > 0) == (o.capacity_frac > 0)) {
        fprintf(stderr, "moeflow bench batch: give exactly one of --capacity N or --capacity-frac F\n");
        return 2;
    }
    if (o.grouping != MOE_GROUP_REGROUP && (o.lag || o.lead)) {
        fprintf(stderr, "moeflow bench batch: %s bounds regrouping: it goes with --grouping regroup\n",
                o.lag ? "--regroup-lag" : "--regroup-lead");
        return 2;
    }
    if (o.lag < 0 && o.lead) {
        fprintf(stderr, "moeflow bench batch: --regroup-lead bounds rolling selection; with --regroup-lag -1 (strict "
                        "steps) every sequence runs once a step and none runs ahead: drop one of them\n");
        return 2;
    }
    if (o.no_pred_prefetch && o.rank_only) {
        fprintf(stderr, "moeflow bench batch: give --no-prefetch (predictions rank evictions) or "
                        "--no-predictor-prefetch (they do not reach the cache), not both\n");
        return 2;
    }
    if (o.rank_only && have_lookahead && o.lookahead > 0) {
        fprintf(stderr, "moeflow bench batch: --no-prefetch moves nothing ahead of need, so it takes no "
                        "--lookahead %d\n", o.lookahead);
        return 2;
    }
    if (o.rank_only)
        o.lookahead = 0; /* the scheduler's lookahead prefetch is a prefetch too */
    /* The device tier is always on here (--capacity / --capacity-frac); its slot count is set once
     * the model is open, so mark it now or the check refuses --policy as "every expert resident". */
    o.oo.gpu_experts = o.capacity > 0 ? o.capacity : 1;
    if (moe_offload_opts_check(&o.oo) != MOE_OK) {
        fprintf(stderr, "moeflow bench batch: %s\n", moe_last_error());
        return 2;
    }
    if (!moe_cli_check_threads("bench batch", o.threads, &o.oo))
        return 2;
    if (o.oo.stats_json && !moe_cli_check_out("bench batch", "--stats-json", o.oo.stats_json, true))
        return 2;
    if (!moe_cli_check_not_input("bench batch", "--stats-json", o.oo.stats_json, "--prompts", o.prompts, "--store",
                                 o.oo.store, "--belady-trace", o.oo.belady_trace, NULL))
        return 2;
    if (o.micro_batch > o.concurrency) {
        fprintf(stderr, "moeflow bench batch: --micro-batch %d is larger than --concurrency %d\n", o.micro_batch,
                o.concurrency);
        return 2;
    }
    struct moe_pred_spec spec;
    int spec_rc = moe_cli_pred_spec("bench batch", o.predictor, o.model_dir, &spec);
    if (spec_rc) return spec_rc;

    int rc = 1;
    char **texts = NULL;
    int n_texts = 0, *text_at = NULL;
    bool json_prompts = false;
    struct moe_model *m = NULL;
    struct moe_tokenizer *tok = NULL;
    struct moe_provider *prov = NULL;
    struct moe_backend *be = NULL;
    struct moe_engine *eng = NULL;
    struct moe_predictor *pred = NULL;
    struct moe_sched *s = NULL;
    int **ids = NULL;
    int *n_ids = NULL;
    struct bench_req *reqs = NULL;

    if (!moe_cli_check_readable("bench batch", "--prompts", o.prompts, true, "prompts, one a line or a JSON array "
                                "of strings in a .json file"))
        return 1;
    if (load_prompts(o.prompts, &texts, &text_at, &json_prompts, &n_texts) != MOE_OK) {
        fprintf(stderr, "moeflow bench batch: %s\n", moe_last_error());
        return 1;
    }
    if (!moe_cli_open_model("bench batch", o.model_dir, &m, &tok)) goto out;
    const struct moe_config *cfg = &m->cfg;
    int n_moe = moe_config_n_moe(cfg);
    long cap = o.capacity;
    if (!moe_cli_capacity("bench batch", o.capacity > 0 ? 0 : o.capacity_frac, (long)n_moe * cfg->n_experts,
                          cfg->top_k, &cap)) {
        rc = 2;
        goto out;
    }
    int slots = (int)cap;
    o.oo.gpu_experts = slots;
    if (!moe_cli_check_tier_files("bench batch", &o.oo)) goto out;
    enum moe_status st = moe_offload_runtime_create(m, &o.oo, &be, &prov);
    if (st != MOE_OK) {
        fprintf(stderr, "moeflow bench batch: expert cache: %s\n", moe_last_error());
        rc = moe_cli_failure_exit(st);
        goto out;
    }
    if (!prov) {
        fprintf(stderr, "moeflow bench batch: expert cache: no tiered provider was built for %d slots\n", slots);
        goto out;
    }

    /* prompts to ids */
    ids = calloc((size_t)n_texts, sizeof(int *));
    n_ids = calloc((size_t)n_texts, sizeof(int));
    reqs = calloc((size_t)n_texts, sizeof(*reqs));
    if (!ids || !n_ids || !reqs) {
        fprintf(stderr, "moeflow bench batch: out of memory\n");
        goto out;
    }
    int max_prompt = 1;
    for (int i = 0; i < n_texts; i++) {
        size_t n = 0;
        const char *at = json_prompts ? "element" : "line";
        if (moe_tokenizer_encode_prompt(tok, texts[i], strlen(texts[i]), &ids[i], &n) != MOE_OK) {
            fprintf(stderr, "moeflow bench batch: --prompts %s: %s %d: %s\n", o.prompts, at, text_at[i],
                    moe_last_error());
            goto out;
        }
        if (n == 0) {
            fprintf(stderr, "moeflow bench batch: --prompts %s: %s %d encodes to no tokens\n", o.prompts, at,
                    text_at[i]);
            goto out;
        }
        n_ids[i] = o.prompt_tokens > 0 && (int)n > o.prompt_tokens ? o.prompt_tokens : (int)n;
        if (n_ids[i] > max_prompt)
            max_prompt = n_ids[i];
    }
    int max_ctx = max_prompt + o.max_tokens;
    if (max_ctx > cfg->max_pos) {
        fprintf(stderr, "moeflow bench batch: longest prompt (%d tokens) + --max-tokens %d exceeds the model's "
                        "context of %d; lower --max-tokens or --prompt-tokens\n", max_prompt, o.max_tokens,
                cfg->max_pos);
        rc = 2;
        goto out;
    }
    int chunk = o.prefill_chunk;
    struct moe_engine_params ep = { .max_seqs = o.concurrency, .max_ctx = max_ctx,
                                    .max_batch_tokens = o.micro_batch + chunk, .n_threads = o.threads,
                                    .kv_dtype = o.kv_dtype,
                                    .provider = prov, .backend = be };
    eng = moe_engine_create(m, &ep);
    if (!eng) {
        moe_offload_explain(MOE_EINVAL, be, prov);
        fprintf(stderr, "moeflow bench batch: engine: %s\n", moe_last_error());
        goto out;
    }
    /* after the files load, so that a bad file is the first thing said (as replay); --lookahead and --no-prefetch
     * still act without a predictor: the scheduler prefetches the experts each sequence used last */
    if (spec.kind == MOE_PRED_NONE && o.no_pred_prefetch)
        fprintf(stderr, "moeflow bench batch: warning: --no-predictor-prefetch changes nothing with --predictor none "
                        "(nothing is predicted)\n");
    pred = moe_predictor_create(m, &spec, o.concurrency);
    if (!pred) {
        fprintf(stderr, "moeflow bench batch: --predictor %s: %s\n", o.predictor, moe_last_error());
        goto out;
    }
    if (!o.no_pred_prefetch)
        moe_predictor_set_provider(pred, prov, &(struct moe_pred_prefetch){ .rank_only = o.rank_only });

    struct moe_sched_params sp = {
        .max_running = o.concurrency, .max_queued = n_texts, .max_tokens_in_flight = (int64_t)n_texts * max_ctx,
        .max_prompt = max_ctx - 1, .max_output = max_ctx - 1, .micro_batch = o.micro_batch,
        .prefill_chunk = chunk, .grouping = o.grouping, .lookahead = o.lookahead > 0 ? o.lookahead : -1,
        .provider = prov, .predictor = pred, .engine_max_ctx = max_ctx,
        .regroup_lag = (float)o.lag, .regroup_lead = (float)o.lead,
        .engine_max_batch_tokens = o.micro_batch + chunk,
    };
    moe_sched_params_test_faults(&sp); /* testing: a lost device, as serve's (tests/scheduler/test_bench_cli.py) */
    s = moe_sched_create(eng, &sp);
    if (!s) {
        fprintf(stderr, "moeflow bench batch: scheduler: %s\n", moe_last_error());
        goto out;
    }
    struct moe_sched_events ev = { .on_done = on_done };
    for (int i = 0; i < n_texts; i++) {
        struct moe_gen_params g = { .max_tokens = o.max_tokens, .ignore_eos = true };
        g.sampling.top_p = 1.0f;
        if (moe_sched_submit(s, ids[i], n_ids[i], &g, &ev, &reqs[i], NULL) != MOE_OK) {
            fprintf(stderr, "moeflow bench batch: --prompts %s: %s %d: %s\n", o.prompts,
                    json_prompts ? "element" : "line", text_at[i], moe_last_error());
            goto out;
        }
    }
    double t0 = moe_now();
    while (moe_sched_step(s) == MOE_OK) {
    }
    double wall = moe_now() - t0;
    int failed = 0, first = -1;
    for (int i = 0; i < n_texts; i++)
        if (!reqs[i].n_done) {
            /* the steps stopped with requests left (a lost device runs nothing more): the drain
             * ends each with its reason */
            moe_sched_drain(s, 0);
            break;
        }
    for (int i = 0; i < n_texts; i++)
        if (reqs[i].n_done != 1 || reqs[i].why != MOE_FINISH_LENGTH) {
            /* the first that failed names the cause; the others were cancelled because of it */
            if (first < 0 || (reqs[first].why != MOE_FINISH_ERROR && reqs[i].why == MOE_FINISH_ERROR))
                first = i;
            failed++;
        }
    if (first >= 0)
        fprintf(stderr, "moeflow bench batch: --prompts %s: %s %d ended %s: %s\n", o.prompts,
                json_prompts ? "element" : "line", text_at[first],
                reqs[first].n_done ? moe_finish_str(reqs[first].why) : "never", reqs[first].msg);
    if (failed) {
        if (moe_offload_backend_poisoned(be))
            fprintf(stderr, "moeflow bench batch: device error: the CUDA context is unusable; restart the "
                            "process (or run with --backend cpu)\n");
        fprintf(stderr, "moeflow bench batch: %d of %d requests did not complete\n", failed, n_texts);
        moe_offload_report(prov, &o.oo); /* --stats: what the tiers did up to the failure */
        goto out;
    }

    struct moe_sched_stats ss;
    moe_sched_stats(s, &ss);
    struct moe_offload_stats os;
    memset(&os, 0, sizeof(os));
    moe_offload_stats_get(prov, &os);
    double gen = (double)ss.generated_tokens;
    double eps = ss.decode_layer_steps ? (double)ss.decode_experts_activated / (double)ss.decode_layer_steps : 0;
    double eps_all = ss.layer_steps ? (double)ss.experts_activated / (double)ss.layer_steps : 0;
    uint64_t transfers = os.device.misses + os.device.prefetches;
    double tpt = gen > 0 ? (double)transfers / gen : 0;
    uint64_t acc = os.device.hits + os.device.misses;
    double hit = acc ? (double)os.device.hits / (double)acc : 0;
    double tps = wall > 0 ? gen / wall : 0;
    const char *gname = o.grouping == MOE_GROUP_REGROUP ? "regroup" : "fcfs";
    if (o.json) {
        printf("{\"grouping\":\"%s\",\"predictor\":", gname);
        moe_cli_json_string(stdout, o.predictor);
        printf(",\"requests\":%d,\"concurrency\":%d,\"micro_batch\":%d,"
               "\"max_tokens\":%d,\"capacity\":%d,\"policy\":\"%s\",\"lookahead\":%d,\"predictor_prefetch\":%s,"
               "\"predictor_rank_only\":%s,"
               "\"prompt_tokens\":%llu,"
               "\"generated_tokens\":%llu,\"steps\":%llu,\"forwards\":%llu,\"layer_steps\":%llu,"
               "\"experts_per_layer_step\":%.4f,\"experts_per_layer_step_all\":%.4f,\"transfers\":%llu,"
               "\"transfers_per_token\":%.4f,\"hits\":%llu,\"misses\":%llu,\"prefetches\":%llu,"
               "\"prefetch_hits\":%llu,\"hit_rate\":%.4f,\"wall_s\":%.3f,\"tokens_per_s\":%.2f}\n",
               n_texts, o.concurrency, o.micro_batch, o.max_tokens, slots,
               moe_policy_name(o.oo.policy), o.lookahead, o.no_pred_prefetch || o.rank_only ? "false" : "true",
               o.rank_only ? "true" : "false",
               (unsigned long long)ss.prompt_tokens,
               (unsigned long long)ss.generated_tokens, (unsigned long long)ss.steps,
               (unsigned long long)ss.forwards, (unsigned long long)ss.decode_layer_steps, eps, eps_all,
               (unsigned long long)transfers, tpt, (unsigned long long)os.device.hits,
               (unsigned long long)os.device.misses, (unsigned long long)os.device.prefetches,
               (unsigned long long)os.device.prefetch_hits, hit, wall, tps);
    } else {
        printf("bench batch: %d requests, concurrency %d, micro-batch %d, %d new tokens each, grouping %s, "
               "predictor %s%s\n", n_texts, o.concurrency, o.micro_batch, o.max_tokens, gname, o.predictor,
               o.rank_only ? " (ranking evictions only)" : o.no_pred_prefetch ? " (regrouping only)" : "");
        printf("  device tier             %d expert slots of %d (%s)\n", slots, n_moe * cfg->n_experts,
               moe_policy_name(o.oo.policy));
        printf("  tokens                  %llu prompt, %llu generated in %llu steps, %llu forward passes\n",
               (unsigned long long)ss.prompt_tokens, (unsigned long long)ss.generated_tokens,
               (unsigned long long)ss.steps, (unsigned long long)ss.forwards);
        printf("  experts per layer-step  %.3f (decode tokens), %.3f (all tokens)\n", eps, eps_all);
        printf("  transfers per token     %.3f (%llu = %llu misses + %llu prefetches)\n", tpt,
               (unsigned long long)transfers, (unsigned long long)os.device.misses,
               (unsigned long long)os.device.prefetches);
        printf("  hit rate                %.4f (%llu hits, %llu prefetch hits)\n", hit,
               (unsigned long long)os.device.hits, (unsigned long long)os.device.prefetch_hits);
        printf("  tokens/s                %.1f (%.2f s)\n", tps, wall);
    }
    if (moe_offload_report(prov, &o.oo) != MOE_OK) { /* --stats, --stats-json */
        fprintf(stderr, "moeflow bench batch: %s\n", moe_last_error());
        goto out;
    }
    rc = 0;
out:
    moe_sched_destroy(s);
    moe_predictor_destroy(pred);
    moe_engine_destroy(eng);
    moe_provider_destroy(prov);
    moe_backend_destroy(be);
    moe_tokenizer_free(tok);
    moe_model_close(m);
    for (int i = 0; ids && i < n_texts; i++)
        free(ids[i]);
    free(ids);
    free(n_ids);
    free(reqs);
    for (int i = 0; i < n_texts; i++)
        free(texts[i]);
    free(texts);
    free(text_at);
    return rc;
}

int moe_cmd_bench(int argc, char **argv)
{
    if (argc > 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fprintf(stderr, "moeflow bench: unexpected argument '%s' with --help (moeflow help CMD prints a command's "
                "options)\n", argv[2]);
        return 2;
    }
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        FILE *f = argc < 2 ? stderr : stdout;
        fprintf(f, "usage: moeflow bench <benchmark> [options]\n\nbenchmarks:\n"
                   "  batch   requests through scheduler, engine and expert cache (moeflow bench batch --help)\n\n"
                   "  -h, --help  this help\n");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "batch"))
        return bench_batch(argc - 1, argv + 1);
    fprintf(stderr, "moeflow bench: unknown benchmark '%s' (available: batch)\n", argv[1]);
    return 2;
}
