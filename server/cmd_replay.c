/* moeflow replay: a text decoded token by token (teacher forcing, batch 1)
 * through the real engine with a predictor attached; the expert accesses and
 * prefetch hints it produces are replayed through the cache manager under a
 * capacity and policy, next to Belady's optimum on the same routing. */
#include "cli.h"

#include "../kernels/backend.h"
#include "../offload/policy_predicted.h"
#include "../offload/runtime.h"
#include "../model/tokenizer.h"
#include "../predictor/drive.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
        "usage: moeflow replay [--model DIR] --text FILE (--capacity N | --capacity-frac F)\n"
        "                      --policy P --predictor SPEC [options]\n"
        "\n"
        "Feeds the text token by token as batch-1 decode steps (teacher forcing) through the real\n"
        "engine and predictor, then replays the experts it acquired and the prefetches the predictor\n"
        "asked for through the expert cache.  Belady's optimum on the same routing is printed too.\n"
        "\n"
        "  --model DIR           model directory (default: the bundled model)\n"
        "  --text FILE           UTF-8 text to decode\n"
        "  --seq-len N           tokens per sequence; the KV cache restarts after (default 512,\n"
        "                        or the model's context if shorter)\n"
        "  --max-tokens N        decode at most N tokens of the text (default 2048)\n"
        "  --capacity N          device-tier expert slots (>= top_k)\n"
        "  --capacity-frac F     slots = floor(F x MoE layers x experts), 0 < F <= 1\n"
        "  --policy P            lru | lfu | predicted | belady\n"
        "  --predictor SPEC      none | gate[:D] | path[:FILE] | history | path+gate[:FILE] | auto\n"
        "  --min-score S         prefetch experts predicted with at least S, 1e-6 <= S <= 1 (default 0.8)\n"
        "  --link-gbps B         simulate a timeline on a serial link of B GB/s (1e9 B/s)\n"
        "  --expert-bytes N      bytes per expert transfer: bytes moved, and each transfer's time with\n"
        "                        --link-gbps; 1..2^40 (default: this model's)\n"
        "  --layer-ms T          compute per MoE layer per token (ms), with --link-gbps (default 0)\n"
        "  --expert-ms T         extra compute per routed expert per token (ms), with --link-gbps\n"
        "                        (default 0.153, one Mixtral-8x7B expert at 1 token on the H100, docs/hw)\n"
        "  --threads N           threads of the CPU backend's pool (default 1; cpu backend only)\n"
        "  --no-prefetch         predictions only rank evictions (policy predicted); nothing is\n"
        "                        moved ahead of need.  lru and lfu use predictions only to prefetch,\n"
        "                        belady not at all\n"
        "  --oracle-horizon H    upper bound: replace the predictor's hints by the true routing of\n"
        "                        each step and the H steps after it (score 1), at step start;\n"
        "                        0 <= H <= 7 (the predicted policy keeps 8 steps of predictions)\n"
        "  --oracle-keep         with --oracle-horizon: keep the predictor's hints for the steps the\n"
        "                        truth does not cover\n"
        "  --oracle-later-only   with --oracle-horizon H >= 1: no truth for the step itself (its hints\n"
        "                        are the predictor's with --oracle-keep), only for the H after it\n"
        "  --oracle-reveal-layer L  with --oracle-horizon: the later steps' truth is given only once\n"
        "                        MoE layer L (0-based) of the step has run, not at its start\n"
        "%s"
        "  --json                print one JSON object (the keys of moeflow sim, plus\n"
        "                        prefetches, prefetch_useful_frac and belady)\n"
        "  -h, --help            this help\n"
        "\n"
        "A hit is an acquire that needs no new transfer (the expert is resident or already on its\n"
        "way); transfers count demand fetches and prefetches; bytes moved = transfers x bytes per\n"
        "expert (--expert-bytes, or this model's).  Timeline: one serial link; prefetches\n"
        "start in order of need when the link is free; a miss is fetched next, before any queued\n"
        "prefetch; a layer computes once its experts have landed; stall = time compute waited.\n",
        moe_offload_backend_help());
}

enum { O_MODEL = 256, O_TEXT, O_SEQ, O_MAXTOK, O_CAP, O_FRAC, O_POLICY, O_PRED, O_MINSC, O_LINK, O_EB,
       O_LAYER, O_EXPERT, O_THREADS, O_JSON, O_ORACLE, O_NOPF, O_OKEEP, O_OLATER, O_OREVEAL };

/* Say once when what was asked for changes nothing (--no-prefetch and --min-score without predictions; a
 * predictor under a policy that does not use it): only the predicted policy
 * ranks evictions with the predictions; lru and lfu only prefetch them,
 * belady neither.  After the files load, so that a bad file is the first thing said. */
static void warn_unused(bool predicts, bool no_prefetch, bool min_score, enum moe_cache_policy policy)
{
    const char *pn = moe_cache_policy_name(policy);
    if (!predicts && (no_prefetch || min_score))
        fprintf(stderr, "moeflow replay: warning: %s nothing with --predictor none (nothing is predicted)\n",
                no_prefetch && min_score ? "--no-prefetch and --min-score change"
                : no_prefetch            ? "--no-prefetch changes"
                                         : "--min-score changes");
    else if (predicts && policy == MOE_CACHE_BELADY)
        fprintf(stderr, "moeflow replay: warning: --policy belady evicts by the true future and prefetches "
                        "nothing: the predictions are not used (the figures are those of --predictor none)\n");
    else if (predicts && policy != MOE_CACHE_PREDICTED && no_prefetch)
        fprintf(stderr, "moeflow replay: warning: --policy %s uses the predictions only to prefetch, which "
                        "--no-prefetch turns off: they are not used (the figures are those of --predictor none; "
                        "--policy predicted ranks evictions with them)\n", pn);
    else if (predicts && policy != MOE_CACHE_PREDICTED)
        fprintf(stderr, "moeflow replay: warning: --policy %s uses the predictions only to prefetch (scores >= "
                        "--min-score); it evicts by %s alone (--policy predicted ranks evictions with them)\n",
                pn, pn);
}

int moe_cmd_replay(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, O_MODEL },
        { "text", required_argument, NULL, O_TEXT },
        { "seq-len", required_argument, NULL, O_SEQ },
        { "max-tokens", required_argument, NULL, O_MAXTOK },
        { "capacity", required_argument, NULL, O_CAP },
        { "capacity-frac", required_argument, NULL, O_FRAC },
        { "policy", required_argument, NULL, O_POLICY },
        { "predictor", required_argument, NULL, O_PRED },
        { "min-score", required_argument, NULL, O_MINSC },
        { "link-gbps", required_argument, NULL, O_LINK },
        { "expert-bytes", required_argument, NULL, O_EB },
        { "layer-ms", required_argument, NULL, O_LAYER },
        { "expert-ms", required_argument, NULL, O_EXPERT },
        { "threads", required_argument, NULL, O_THREADS },
        { "json", no_argument, NULL, O_JSON },
        { "oracle-horizon", required_argument, NULL, O_ORACLE },
        { "no-prefetch", no_argument, NULL, O_NOPF },
        { "oracle-keep", no_argument, NULL, O_OKEEP },
        { "oracle-later-only", no_argument, NULL, O_OLATER },
        { "oracle-reveal-layer", required_argument, NULL, O_OREVEAL },
        MOE_BACKEND_LONG_OPTION,
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct moe_cli_text_opts to = { .model_dir = moe_default_model_dir(), .seq_len = 512, .max_tokens = 2048,
                                    .threads = 1 };
    const char *pred_s = NULL, *pol_s = NULL;
    long cap = 0, ebytes = 0, oracle = -1, reveal = -1;
    bool oracle_keep = false, later_only = false;
    double frac = 0, min_score = MOE_PRED_MIN_SCORE, link = 0, layer_ms = 0, expert_ms = MOE_CLI_EXPERT_MS;
    bool json = false, no_prefetch = false, min_score_given = false;
    const char *timeline_opt = NULL; /* an option that only shapes the --link-gbps timeline */
    enum moe_cache_policy policy = MOE_CACHE_LRU;
    struct moe_offload_opts oo; /* --backend only */
    moe_offload_opts_init(&oo);
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL:
        case O_TEXT:
        case O_SEQ:
        case O_MAXTOK:
        case O_THREADS:
            if (!moe_cli_text_opt("replay", opts[c - O_MODEL].name, optarg, &to)) return 2;
            break;
        case O_CAP:
            if (!moe_cli_opt_long("replay", opts[c - O_MODEL].name, optarg, 1, 1 << 24, &cap)) return 2;
            break;
        case O_FRAC:
            if (!moe_cli_opt_double("replay", opts[c - O_MODEL].name, optarg, 0, 1, true, &frac)) return 2;
            break;
        case O_POLICY:
            pol_s = optarg;
            if (!moe_cache_policy_parse(optarg, &policy)) {
                fprintf(stderr, "moeflow replay: --policy '%s' unknown (use lru, lfu, predicted or belady)\n", optarg);
                return 2;
            }
            break;
        case O_PRED: pred_s = optarg; break;
        case O_MINSC:
            if (!moe_cli_opt_double("replay", opts[c - O_MODEL].name, optarg, 1e-6, 1, false, &min_score)) return 2;
            min_score_given = true;
            break;
        case O_LINK:
            if (!moe_cli_opt_double("replay", opts[c - O_MODEL].name, optarg, 1e-6, 1e6, false, &link)) return 2;
            break;
        case O_EB:
            if (!moe_cli_opt_long("replay", opts[c - O_MODEL].name, optarg, 1, 1L << 40, &ebytes)) return 2;
            break;
        case O_LAYER:
            if (!moe_cli_opt_double("replay", opts[c - O_MODEL].name, optarg, 0, 1e6, false, &layer_ms)) return 2;
            timeline_opt = "--layer-ms";
            break;
        case O_EXPERT:
            if (!moe_cli_opt_double("replay", opts[c - O_MODEL].name, optarg, 0, 1e6, false, &expert_ms)) return 2;
            timeline_opt = "--expert-ms";
            break;
        case O_JSON: json = true; break;
        case O_NOPF: no_prefetch = true; break;
        case O_OKEEP: oracle_keep = true; break;
        case O_OLATER: later_only = true; break;
        case O_OREVEAL:
            if (!moe_cli_opt_long("replay", opts[c - O_MODEL].name, optarg, 0, 1023, &reveal)) return 2;
            break;
        case O_ORACLE:
            if (!moe_parse_long(optarg, 0, MOE_POLICY_PREDICTED_SLOTS - 1, &oracle)) {
                fprintf(stderr, "moeflow replay: --oracle-horizon '%s' must be an integer 0..%d (the predicted "
                                "policy keeps predictions for %d steps: this one and the next %d)\n",
                        optarg, MOE_POLICY_PREDICTED_SLOTS - 1, MOE_POLICY_PREDICTED_SLOTS,
                        MOE_POLICY_PREDICTED_SLOTS - 1);
                return 2;
            }
            break;
        case MOE_OPT_BACKEND:
            if (moe_offload_opts_parse(&oo, c, optarg) < 0) {
                fprintf(stderr, "moeflow replay: %s\n", moe_last_error());
                return 2;
            }
            break;
        case 'h': return moe_cli_help("replay", argc, argv, ":h", opts, usage);
        default: return moe_cli_bad_option("replay", c, argv, opts);
        }
    }
    if (!moe_cli_no_operands("replay", argc, argv, NULL)) return 2;
    if (!to.text || !pol_s || !pred_s || (cap > 0) == (frac > 0)) {
        fprintf(stderr, "moeflow replay: needs --text, --policy, --predictor and exactly one of --capacity or "
                        "--capacity-frac (see --help)\n");
        return 2;
    }
    if (oracle < 0 && (oracle_keep || later_only || reveal >= 0)) {
        fprintf(stderr, "moeflow replay: --%s shapes the oracle: give --oracle-horizon H too\n",
                oracle_keep ? "oracle-keep" : later_only ? "oracle-later-only" : "oracle-reveal-layer");
        return 2;
    }
    if (later_only && oracle < 1) {
        fprintf(stderr, "moeflow replay: --oracle-later-only needs --oracle-horizon 1 or more (the steps after "
                        "this one)\n");
        return 2;
    }
    if (!moe_cli_check_threads("replay", to.threads, &oo))
        return 2;
    if (timeline_opt && !(link > 0)) {
        fprintf(stderr, "moeflow replay: %s shapes the simulated timeline; give --link-gbps B too\n", timeline_opt);
        return 2;
    }
    struct moe_pred_spec spec;
    int spec_rc = moe_cli_pred_spec("replay", pred_s, to.model_dir, &spec);
    if (spec_rc) return spec_rc;

    int rc = 1;
    int *ids = NULL;
    size_t n_ids = 0;
    struct moe_evlog log = { 0 };
    struct moe_backend *be = NULL;
    struct moe_provider *prov = NULL;
    struct moe_tokenizer *tok = NULL;
    struct moe_model *m = NULL;
    int open_rc = moe_cli_open_for_text("replay", &to, &m, &tok);
    if (open_rc) return open_rc;
    int n_moe = moe_config_n_moe(&m->cfg);
    if (reveal >= n_moe) { /* before the text is read and decoded, which may take long */
        fprintf(stderr, "moeflow replay: --oracle-reveal-layer %ld: the model has MoE layers 0..%d\n", reveal,
                n_moe - 1);
        rc = 2;
        goto out;
    }
    if (!moe_cli_read_text("replay", tok, to.text, (size_t)to.max_tokens, &ids, &n_ids)) goto out;
    long slots = (long)n_moe * m->cfg.n_experts;
    if (!moe_cli_capacity("replay", frac, slots, m->cfg.top_k, &cap)) {
        rc = 2;
        goto out;
    }
    warn_unused(spec.kind != MOE_PRED_NONE || oracle >= 0, no_prefetch, min_score_given, policy);
    if (moe_offload_runtime_create(m, &oo, &be, &prov)) {
        fprintf(stderr, "moeflow replay: %s\n", moe_last_error());
        goto out;
    }
    struct moe_drive_params dp = {
        .spec = &spec,
        .spec_arg = pred_s,
        .prefetch = { .min_score = (float)min_score, .max_per_layer = m->cfg.top_k,
                      .all_scores = policy == MOE_CACHE_PREDICTED },
        .seq_len = (int)to.seq_len,
        .n_threads = to.threads,
        .log = &log,
        .backend = be,
        .provider = prov,
    };
    double t0 = moe_now();
    enum moe_status dst = moe_drive_text(m, ids, n_ids, &dp);
    if (dst) {
        moe_offload_explain(dst, be, prov);
        fprintf(stderr, "moeflow replay: %s\n", moe_last_error());
        goto out;
    }
    double decode_s = moe_now() - t0;
    if (oracle >= 0) {
        struct moe_evlog orc;
        struct moe_oracle_params op = { .horizon = (int)oracle, .later_only = later_only,
                                        .reveal_layer = (int)reveal, .keep = oracle_keep };
        if (moe_evlog_oracle(&log, &op, &orc)) {
            fprintf(stderr, "moeflow replay: %s\n", moe_last_error());
            moe_evlog_free(&orc);
            goto out;
        }
        moe_evlog_free(&log);
        log = orc;
        spec.kind = MOE_PRED_PATH; /* hints present: act on them */
    }
    uint64_t eb = ebytes > 0 ? (uint64_t)ebytes : moe_model_expert_bytes(m);
    struct moe_cachesim_params sp = {
        .capacity = (int)cap,
        .policy = policy,
        .prefetch = spec.kind != MOE_PRED_NONE && !no_prefetch,
        .act_min_score = policy == MOE_CACHE_PREDICTED ? (float)min_score : 0,
        .xfer_s = link > 0 ? (double)eb / (link * 1e9) : 0,
        .layer_s = link > 0 ? (layer_ms + expert_ms * m->cfg.top_k) * 1e-3 : 0,
    };
    struct moe_cachesim_stats r, b;
    if (moe_cachesim_run(&log, &sp, &r)) {
        fprintf(stderr, "moeflow replay: %s\n", moe_last_error());
        goto out;
    }
    struct moe_cachesim_params bp = sp;
    bp.policy = MOE_CACHE_BELADY;
    bp.prefetch = false;
    if (moe_cachesim_run(&log, &bp, &b)) {
        fprintf(stderr, "moeflow replay: %s\n", moe_last_error());
        goto out;
    }
    uint64_t bytes_moved;
    if (moe_cachesim_bytes_moved(&r, eb, &bytes_moved)) {
        fprintf(stderr, "moeflow replay: %s\n", moe_last_error());
        goto out;
    }
    double steps = (double)r.steps;
    double hr = r.accesses ? (double)r.hits / (double)r.accesses : 0;
    double bhr = b.accesses ? (double)b.hits / (double)b.accesses : 0;
    double useful = r.prefetches ? (double)r.prefetch_useful / (double)r.prefetches : 0;
    if (json) {
        printf("{\"policy\":\"%s\",\"predictor\":", moe_cache_policy_name(policy));
        moe_cli_json_string(stdout, pred_s);
        moe_cachesim_json_counts(stdout, &r, cap, slots, bytes_moved);
        if (link > 0)
            printf(",\"link_gbps\":%g,\"expert_bytes\":%llu,\"layer_ms\":%g,\"expert_ms\":%g,\"compute_s\":%.6f,"
                   "\"stall_s\":%.6f,\"tokens_per_s\":%.4f",
                   link, (unsigned long long)eb, layer_ms, expert_ms, r.compute_s, r.stall_s,
                   r.total_s > 0 ? steps / r.total_s : 0);
        printf(",\"belady\":{\"hit_rate\":%.6f,\"transfers_per_token\":%.6f", bhr,
               steps > 0 ? (double)b.transfers / steps : 0);
        if (link > 0) printf(",\"stall_s\":%.6f", b.stall_s);
        printf("}}\n");
    } else {
        printf("text                %s (%llu tokens decoded in %.1f s)\n", to.text, (unsigned long long)r.steps,
               decode_s);
        printf("predictor           %s\n", pred_s);
        printf("policy              %s\n", moe_cache_policy_name(policy));
        printf("capacity            %ld of %ld expert slots (%.1f %%)\n", cap, slots, 100.0 * (double)cap / (double)slots);
        printf("hit rate            %.4f   (belady %.4f)\n", hr, bhr);
        printf("transfers / token   %.3f   (belady %.3f)\n", steps > 0 ? (double)r.transfers / steps : 0,
               steps > 0 ? (double)b.transfers / steps : 0);
        printf("bytes moved         %llu (%.3f GB)\n", (unsigned long long)bytes_moved, (double)bytes_moved / 1e9);
        printf("useful prefetches   %llu / %llu (%.3f)\n", (unsigned long long)r.prefetch_useful,
               (unsigned long long)r.prefetches, useful);
        if (link > 0) {
            printf("timeline            link %g GB/s, %llu B per expert (%.3f ms), %.3f ms compute per MoE layer\n",
                   link, (unsigned long long)eb, sp.xfer_s * 1e3, sp.layer_s * 1e3);
            printf("stall               %.3f s (%.3f ms/token; belady on demand %.3f ms/token)\n", r.stall_s,
                   steps > 0 ? r.stall_s * 1e3 / steps : 0, steps > 0 ? b.stall_s * 1e3 / steps : 0);
            printf("compute             %.3f s; %.2f tokens/s\n", r.compute_s, r.total_s > 0 ? steps / r.total_s : 0);
        }
    }
    rc = 0;
out:
    moe_evlog_free(&log);
    free(ids);
    moe_tokenizer_free(tok);
    moe_provider_destroy(prov);
    moe_backend_destroy(be);
    moe_model_close(m);
    return rc;
}
