/* moeflow trace: record the routing of a text (teacher-forced prefill) as a
 * JSON Lines routing trace (docs/trace-format.md). */
#include "cli.h"

#include "../engine/engine.h"
#include "../kernels/backend.h"
#include "../model/json_error.h"
#include "../model/tokenizer.h"
#include "../offload/runtime.h"
#include "../offload/trace.h"
#include "../predictor/path_model.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void trace_usage(FILE *f)
{
    fprintf(f,
        "usage: moeflow trace [--model DIR] (--text FILE | --ids FILE) [--seq-len N] [--max-tokens N] [--weights]\n"
        "                     --out F.jsonl\n"
        "\n"
        "Runs teacher-forced prefill over the input and writes which experts every token was routed\n"
        "to in every MoE layer (format: docs/trace-format.md), for moeflow sim and the predictor.\n"
        "\n"
        "  -m, --model DIR    model directory (default: the bundled model or $MOEFLOW_MODEL)\n"
        "  --text FILE        UTF-8 text, tokenized and cut into sequences of --seq-len tokens\n"
        "  --ids FILE         JSON array of token-id arrays, one sequence each\n"
        "  --seq-len N        tokens per sequence for --text (default 256, or the\n"
        "                     model's context if shorter)\n"
        "  --max-tokens N     stop after N tokens in all (default: the whole input)\n"
        "  --weights          also record the routing weights\n"
        "  --threads N        compute threads (default 1; cpu backend only)\n"
        "  --out FILE         trace to write (JSON Lines)\n"
        "  -h, --help         this help\n"
        "\n%s", moe_offload_help());
}

struct rec {
    const struct moe_config *c;
    int li_of[MOE_MAX_LAYERS];   /* decoder layer -> MoE layer index, -1 dense */
    int n_moe;
    int *ids;                    /* [n][n_moe][k] */
    float *w;                    /* [n][n_moe][k] */
};

static void on_route(void *ud, int layer, int n, const float *logits, const int *ids,
                     const float *weights)
{
    struct rec *r = ud;
    int k = r->c->top_k, li = r->li_of[layer];
    (void)logits;
    if (li < 0) return;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < k; j++) {
            size_t o = ((size_t)i * (size_t)r->n_moe + (size_t)li) * (size_t)k + (size_t)j;
            r->ids[o] = ids[i * k + j];
            r->w[o] = weights[i * k + j];
        }
}

/* --ids FILE: [[ids...], ...] -> flat ids + sequence starts. */
static enum moe_status load_ids(const char *path, int vocab, int **ids, size_t *n, size_t **starts,
                                size_t *n_seq)
{
    char *text = NULL;
    size_t len = 0;
    enum moe_status st = moe_read_file(path, &text, &len, (size_t)1 << 30);
    if (st) return moe_error_prefix(st, "--ids"); /* the message names the file */
    json_error_t err;
    json_t *a = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    free(text);
    if (!a)
        return moe_errorf(MOE_EFORMAT, "--ids %s: not valid JSON at line %d column %d: %s (want [[ids...], ...]: "
                          "an array of token ids per sequence)", path, err.line, err.column, moe_json_error_text(&err));
    size_t total = 0;
    if (!json_is_array(a) || json_array_size(a) == 0) {
        st = moe_errorf(MOE_EFORMAT, "--ids %s: must be a non-empty JSON array of token-id arrays", path);
        goto out;
    }
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *s = json_array_get(a, i);
        if (!json_is_array(s) || json_array_size(s) == 0) {
            st = moe_errorf(MOE_EFORMAT, "--ids %s: sequence %zu must be a non-empty array of ids", path, i);
            goto out;
        }
        total += json_array_size(s);
    }
    *ids = malloc(total * sizeof(int));
    *starts = malloc((json_array_size(a) + 1) * sizeof(size_t));
    if (!*ids || !*starts) {
        st = moe_errorf(MOE_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    size_t o = 0;
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *s = json_array_get(a, i);
        (*starts)[i] = o;
        for (size_t j = 0; j < json_array_size(s); j++) {
            json_t *v = json_array_get(s, j);
            json_int_t x = json_is_integer(v) ? json_integer_value(v) : -1;
            if (x < 0 || x >= vocab) {
                st = moe_errorf(MOE_ERANGE, "--ids %s: sequence %zu token %zu must be an id in [0, %d)",
                                path, i, j, vocab);
                goto out;
            }
            (*ids)[o++] = (int)x;
        }
    }
    (*starts)[json_array_size(a)] = o;
    *n = o;
    *n_seq = json_array_size(a);
out:
    json_decref(a);
    return st;
}

int moe_cmd_trace(int argc, char **argv)
{
    enum { O_TEXT = 256, O_IDS, O_SEQLEN, O_MAXTOK, O_WEIGHTS, O_THREADS, O_OUT };
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' },
        { "text", required_argument, NULL, O_TEXT },
        { "ids", required_argument, NULL, O_IDS },
        { "seq-len", required_argument, NULL, O_SEQLEN },
        { "max-tokens", required_argument, NULL, O_MAXTOK },
        { "weights", no_argument, NULL, O_WEIGHTS },
        { "threads", required_argument, NULL, O_THREADS },
        { "out", required_argument, NULL, O_OUT },
        { "help", no_argument, NULL, 'h' },
        MOE_OFFLOAD_LONG_OPTIONS,
        { NULL, 0, NULL, 0 },
    };
    const char *dir = NULL, *text = NULL, *idsf = NULL, *out = NULL;
    long seq_len = 256, max_tokens = 0;
    int threads = 1;
    bool weights = false, have_seq_len = false;
    struct moe_offload_opts oo;
    moe_offload_opts_init(&oo);
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:h", opts, NULL)) != -1) {
        long *num = NULL;
        const char *name = NULL;
        switch (c) {
        case 'm':
            if (!moe_cli_check_model("trace", optarg)) return 2;
            dir = optarg;
            break;
        case O_TEXT:
            if (!moe_cli_check_in("trace", "--text", optarg)) return 2;
            text = optarg;
            break;
        case O_IDS:
            if (!moe_cli_check_in("trace", "--ids", optarg)) return 2;
            idsf = optarg;
            break;
        case O_SEQLEN: num = &seq_len; name = "seq-len"; have_seq_len = true; break;
        case O_MAXTOK: num = &max_tokens; name = "max-tokens"; break;
        case O_THREADS:
            if (!moe_cli_opt_threads("trace", optarg, &threads)) return 2;
            break;
        case O_WEIGHTS: weights = true; break;
        case O_OUT: out = optarg; break;
        case 'h': return moe_cli_help("trace", argc, argv, ":m:h", opts, trace_usage);
        default: {
            int r = moe_offload_opts_parse(&oo, c, optarg);
            if (r < 0) {
                fprintf(stderr, "moeflow trace: %s\n", moe_last_error());
                return 2;
            }
            if (r == 0) return moe_cli_bad_option("trace", c, argv, opts);
        }
        }
        if (num && !moe_cli_opt_long("trace", name, optarg, 1, 1L << 30, num)) return 2;
    }
    if (!moe_cli_no_operands("trace", argc, argv, NULL)) return 2;
    if (out && !moe_cli_check_out("trace", "--out", out, true)) return 2;
    if (!out || (!text == !idsf)) {
        fprintf(stderr, "moeflow trace: needs --out and exactly one of --text or --ids (see --help)\n");
        return 2;
    }
    if (moe_offload_opts_check(&oo) != MOE_OK) {
        fprintf(stderr, "moeflow trace: %s\n", moe_last_error());
        return 2;
    }
    if (!moe_cli_check_threads("trace", threads, &oo))
        return 2;
    if (oo.stats_json && !moe_cli_check_out("trace", "--stats-json", oo.stats_json, true))
        return 2;
    if (!moe_cli_check_distinct("trace", "--out", out, "--stats-json", oo.stats_json))
        return 2;
    for (int i = 0; i < 2; i++)
        if (!moe_cli_check_not_input("trace", i ? "--stats-json" : "--out", i ? oo.stats_json : out, "--text", text,
                                     "--ids", idsf, "--store", oo.store, "--belady-trace", oo.belady_trace, NULL))
            return 2;
    if (idsf && have_seq_len) {
        fprintf(stderr, "moeflow trace: --seq-len applies to --text only; with --ids each array is one "
                        "sequence (drop --seq-len, or split the arrays)\n");
        return 2;
    }
    if (!dir) dir = moe_default_model_dir();

    int rc = 1;
    struct moe_model *m = NULL;
    struct moe_tokenizer *tok = NULL;
    struct moe_engine *eng = NULL;
    struct moe_provider *prov = NULL;
    struct moe_backend *be = NULL;
    struct moe_trace_writer *w = NULL;
    int *ids = NULL;
    size_t n_ids = 0, *starts = NULL, n_seq = 0;
    struct rec r = {0};
    if (!moe_cli_open_model("trace", dir, &m, text ? &tok : NULL)) goto out;
    const struct moe_config *cfg = &m->cfg;
    if (text) {
        if (!moe_cli_check_seq_len("trace", &seq_len, have_seq_len, m)) {
            rc = 2;
            goto out;
        }
        if (!moe_cli_read_text("trace", tok, text, 0, &ids, &n_ids)) goto out;
        n_seq = (n_ids + (size_t)seq_len - 1) / (size_t)seq_len;
        starts = malloc((n_seq + 1) * sizeof(size_t));
        if (!starts) goto fail;
        for (size_t s = 0; s < n_seq; s++) starts[s] = s * (size_t)seq_len;
        starts[n_seq] = n_ids;
    } else if (!moe_cli_check_readable("trace", "--ids", idsf, true, "a JSON array of token-id arrays, as "
                                       "generate --ids-out writes")) {
        goto out;
    } else if (load_ids(idsf, cfg->vocab, &ids, &n_ids, &starts, &n_seq)) {
        goto fail;
    }
    /* the longest sequence as it is run: --max-tokens cuts the one it ends in and drops those after */
    size_t longest = 0, longest_at = 0, budget = max_tokens ? (size_t)max_tokens : SIZE_MAX;
    for (size_t s = 0; s < n_seq && budget; s++) {
        size_t n = starts[s + 1] - starts[s] < budget ? starts[s + 1] - starts[s] : budget;
        budget -= n;
        if (n > longest) {
            longest = n;
            longest_at = s;
        }
    }
    if (longest > (size_t)cfg->max_pos) { /* --text is cut into --seq-len, which the context bounds */
        moe_errorf(MOE_EINVAL, "--ids %s: sequence %zu holds %zu tokens, more than the model's context of %d "
                   "(max_position_embeddings): shorten it, or cut the run with --max-tokens", idsf, longest_at,
                   longest, cfg->max_pos);
        goto fail;
    }
    if (!moe_cli_check_tier_files("trace", &oo)) goto out;
    enum moe_status ost = moe_offload_runtime_create(m, &oo, &be, &prov);
    if (ost) {
        rc = moe_cli_failure_exit(ost);
        goto fail;
    }

    r.c = cfg;
    for (int l = 0; l < cfg->n_layers; l++) r.li_of[l] = cfg->is_moe[l] ? r.n_moe++ : -1;
    r.ids = malloc(longest * (size_t)r.n_moe * (size_t)cfg->top_k * sizeof(int));
    r.w = malloc(longest * (size_t)r.n_moe * (size_t)cfg->top_k * sizeof(float));
    int *seqv = malloc(longest * sizeof(int)), *posv = malloc(longest * sizeof(int));
    bool *want = calloc(longest, sizeof(bool));
    if (!r.ids || !r.w || !seqv || !posv || !want) {
        free(seqv);
        free(posv);
        free(want);
        moe_errorf(MOE_ENOMEM, "out of memory for %zu-token sequences", longest);
        goto fail;
    }
    struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = (int)longest,
                                    .max_batch_tokens = (int)longest, .n_threads = threads,
                                    .provider = prov, .backend = be,
                                    .hooks = { .ud = &r, .on_route = on_route } };
    eng = moe_engine_create(m, &ep);
    if (!eng) moe_offload_explain(MOE_EINVAL, be, prov);
    struct moe_trace_info info = { .layers = cfg->n_layers, .experts = cfg->n_experts,
                                   .top_k = cfg->top_k, .n_moe = r.n_moe,
                                   .expert_bytes = moe_model_expert_bytes(m) };
    moe_model_dir_name(dir, info.model, sizeof(info.model)); /* "." names the directory it resolves to */
    for (int l = 0, i = 0; l < cfg->n_layers; l++)
        if (cfg->is_moe[l]) info.moe_layers[i++] = l;
    if (eng) w = moe_trace_writer_open(out, &info);
    if (!eng || !w) {
        free(seqv);
        free(posv);
        free(want);
        goto fail;
    }
    size_t done = 0;
    bool tty = isatty(2);
    double t0 = moe_now();
    enum moe_status st = MOE_OK;
    for (size_t s = 0; s < n_seq && !st; s++) {
        size_t n = starts[s + 1] - starts[s];
        if (max_tokens && done + n > (size_t)max_tokens) n = (size_t)max_tokens - done;
        if (n == 0) break;
        int slot = moe_engine_seq_alloc(eng);
        if (slot < 0) {
            st = moe_errorf(MOE_EINVAL, "trace: the engine has no free sequence slot for sequence %zu", s);
            break;
        }
        for (size_t i = 0; i < n; i++) {
            seqv[i] = slot;
            posv[i] = (int)i;
        }
        struct moe_batch b = { .n = (int)n, .tokens = ids + starts[s], .seq = seqv, .pos = posv,
                               .want_logits = want };
        st = moe_engine_forward(eng, &b, NULL);
        if (st) st = moe_offload_explain(st, be, prov);
        for (size_t i = 0; i < n && !st; i++) {
            size_t o = i * (size_t)r.n_moe * (size_t)cfg->top_k;
            /* seq s and pos i: the order docs/trace-format.md promises and moe_trace_load checks */
            st = moe_trace_writer_token(w, (int)s, (int)i, ids[starts[s] + i], r.ids + o,
                                        weights ? r.w + o : NULL);
        }
        moe_engine_seq_free(eng, slot);
        done += n;
        if (!st && (tty || s + 1 == n_seq || (s + 1) % 50 == 0))
            fprintf(stderr, "%strace: %zu/%zu sequences, %zu tokens, %.1f s%s", tty ? "\r" : "",
                    s + 1, n_seq, done, moe_now() - t0, tty ? "" : "\n");
    }
    if (tty) fputc('\n', stderr);
    free(seqv);
    free(posv);
    free(want);
    if (st) { /* w is aborted below: no partial trace at --out */
        fprintf(stderr, "moeflow trace: %s\n", moe_last_error());
        moe_offload_report(prov, &oo); /* --stats: what the tiers did up to the failure */
        goto out;
    }
    if (moe_offload_report(prov, &oo)) goto fail;
    enum moe_status cst = moe_trace_writer_close(w);
    w = NULL;
    if (cst) goto fail;
    fprintf(stderr, "wrote %s: %zu tokens, %d MoE layers, top-%d\n", out, done, r.n_moe, cfg->top_k);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "moeflow trace: %s\n", moe_last_error());
out:
    moe_trace_writer_abort(w); /* every failure: PATH.tmp.* removed, --out left as it was */
    moe_engine_destroy(eng);
    moe_provider_destroy(prov);
    moe_backend_destroy(be);
    moe_tokenizer_free(tok);
    moe_model_close(m);
    free(ids);
    free(starts);
    free(r.ids);
    free(r.w);
    return rc;
}
