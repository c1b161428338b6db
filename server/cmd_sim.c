/* moeflow sim: replay a routing trace through the expert cache manager. */
#include "cli.h"

#include "../offload/sim.h"
#include "../predictor/trace_log.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void sim_usage(FILE *f)
{
    fprintf(f,
        "usage: moeflow sim --trace F.jsonl (--capacity N | --capacity-frac F) --policy P [options]\n"
        "\n"
        "Replays a routing trace (moeflow trace) through the real cache-manager code, no model:\n"
        "tokens in order (batch-1 decode), each touching each MoE layer's top-k experts.\n"
        "\n"
        "  --trace FILE          routing trace (JSON Lines)\n"
        "  --capacity N          device-tier expert slots (>= top_k)\n"
        "  --capacity-frac F     slots = floor(F x MoE layers x experts), 0 < F <= 1\n"
        "  --policy P            lru | lfu | belady (offline optimum, reads the future from the trace)\n"
        "                        | predicted (prediction-aware, offload/policy_predicted.h)\n"
        "  --predictor SPEC      none | history: prefetch what the history predictor expects\n"
        "                        (the other predictors need hidden states: moeflow replay)\n"
        "  --min-score S         with --predictor history, which it needs: prefetch experts predicted\n"
        "                        with at least S, 1e-6 <= S <= 1 (default 0.8)\n"
        "  --expert-bytes B      bytes per expert transfer, at most 1 TiB (default: the trace header's\n"
        "                        expert_bytes)\n"
        "  --link-gbps B         simulate a timeline on a serial link of B GB/s (1e9 B/s), 1e-6..1e6\n"
        "  --layer-ms T          compute per MoE layer per token (ms), with --link-gbps, 0..1e6 (default 0)\n"
        "  --expert-ms T         extra compute per routed expert per token (ms), with --link-gbps, 0..1e6\n"
        "                        (default 0.153, one Mixtral-8x7B expert at 1 token on the H100, docs/hw)\n"
        "  --json                print one JSON object\n"
        "  -h, --help            this help\n"
        "\n"
        "Timeline model: a layer's misses are issued on demand when the layer is reached, one at a\n"
        "time on the link; the layer computes once its last expert has landed (no prefetch).\n");
}

int moe_cmd_sim(int argc, char **argv)
{
    enum { O_TRACE = 256, O_CAP, O_FRAC, O_POLICY, O_EB, O_LINK, O_LAYER, O_EXPERT, O_JSON, O_PRED, O_MINSC };
    static const struct option opts[] = {
        { "trace", required_argument, NULL, O_TRACE },
        { "capacity", required_argument, NULL, O_CAP },
        { "capacity-frac", required_argument, NULL, O_FRAC },
        { "policy", required_argument, NULL, O_POLICY },
        { "expert-bytes", required_argument, NULL, O_EB },
        { "link-gbps", required_argument, NULL, O_LINK },
        { "layer-ms", required_argument, NULL, O_LAYER },
        { "expert-ms", required_argument, NULL, O_EXPERT },
        { "json", no_argument, NULL, O_JSON },
        { "predictor", required_argument, NULL, O_PRED },
        { "min-score", required_argument, NULL, O_MINSC },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *trace_path = NULL;
    long capacity = -1;
    double frac = -1;
    bool have_policy = false, json = false;
    const char *timeline_opt = NULL; /* a timeline-only option given, which needs --link-gbps */
    bool min_score_given = false;    /* --min-score, which needs --predictor history */
    const char *pred_spec = NULL, *pol_name = NULL;
    double min_score = MOE_PRED_MIN_SCORE;
    struct moe_sim_params sp = { .expert_ms = MOE_CLI_EXPERT_MS }; /* replay's default */
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case O_TRACE:
            if (!moe_cli_check_in("sim", "--trace", optarg)) return 2;
            trace_path = optarg;
            break;
        case O_CAP:
            if (!moe_cli_opt_long("sim", "capacity", optarg, 1, 1L << 30, &capacity)) return 2;
            break;
        case O_FRAC:
            if (!moe_parse_double(optarg, 0, &frac) || frac <= 0 || frac > 1) {
                fprintf(stderr, "moeflow sim: --capacity-frac '%s' must be in (0, 1]\n", optarg);
                return 2;
            }
            break;
        case O_PRED:
            if (!*optarg) {
                fprintf(stderr, "moeflow sim: --predictor '' is empty (use none or history; gate, path and "
                                "path+gate need hidden states: moeflow replay)\n");
                return 2;
            }
            if (strcmp(optarg, "none") && strcmp(optarg, "history")) {
                fprintf(stderr, "moeflow sim: --predictor %s: sim supports only none and history (gate, path, "
                                "path+gate and auto need the model's hidden states: use moeflow replay)\n",
                        optarg);
                return 2;
            }
            pred_spec = optarg;
            break;
        case O_POLICY:
            pol_name = optarg;
            if (strcmp(optarg, "predicted") && !moe_policy_parse(optarg, &sp.policy)) {
                fprintf(stderr, "moeflow sim: --policy '%s' unknown (use lru, lfu, predicted or belady)\n", optarg);
                return 2;
            }
            have_policy = true;
            break;
        case O_EB:
            if (!moe_parse_u64(optarg, &sp.expert_bytes) || sp.expert_bytes == 0 ||
                sp.expert_bytes > MOE_TRACE_MAX_EXPERT_BYTES) {
                fprintf(stderr, "moeflow sim: --expert-bytes '%s' must be an integer in 1..%llu (1 TiB per "
                                "expert)\n", optarg, MOE_TRACE_MAX_EXPERT_BYTES);
                return 2;
            }
            break;
        case O_LINK:
            if (!moe_parse_double_in(optarg, 1e-6, 1e6, &sp.link_gbps)) {
                fprintf(stderr, "moeflow sim: --link-gbps '%s' must be a number in 1e-6..1e6\n", optarg);
                return 2;
            }
            break;
        case O_LAYER:
            if (!moe_parse_double_in(optarg, 0, 1e6, &sp.layer_ms)) {
                fprintf(stderr, "moeflow sim: --layer-ms '%s' must be a number in 0..1e6\n", optarg);
                return 2;
            }
            timeline_opt = "--layer-ms";
            break;
        case O_EXPERT:
            if (!moe_parse_double_in(optarg, 0, 1e6, &sp.expert_ms)) {
                fprintf(stderr, "moeflow sim: --expert-ms '%s' must be a number in 0..1e6\n", optarg);
                return 2;
            }
            timeline_opt = "--expert-ms";
            break;
        case O_MINSC:
            if (!moe_cli_opt_double("sim", "min-score", optarg, 1e-6, 1, false, &min_score)) return 2;
            min_score_given = true;
            break;
        case O_JSON: json = true; break;
        case 'h': return moe_cli_help("sim", argc, argv, ":h", opts, sim_usage);
        default: return moe_cli_bad_option("sim", c, argv, opts);
        }
    }
    if (!moe_cli_no_operands("sim", argc, argv, NULL)) return 2;
    if (!trace_path || !have_policy || (capacity < 0) == (frac < 0)) {
        fprintf(stderr, "moeflow sim: needs --trace, --policy and exactly one of --capacity or "
                        "--capacity-frac (see --help)\n");
        return 2;
    }
    if (timeline_opt && !(sp.link_gbps > 0)) {
        fprintf(stderr, "moeflow sim: %s needs --link-gbps (it sets the compute of the simulated "
                        "timeline, which only runs with a link rate)\n", timeline_opt);
        return 2;
    }
    if (min_score_given && !pred_spec) {
        fprintf(stderr, "moeflow sim: --min-score sets the score from which --predictor history's hints move "
                        "experts: give --predictor history too\n");
        return 2;
    }
    struct moe_trace *t = NULL;
    if (!moe_cli_check_readable("sim", "--trace", trace_path, false, "a routing trace, as moeflow trace writes"))
        return 1;
    if (moe_trace_load(trace_path, &t)) {
        moe_cli_file_error("sim", "--trace", trace_path);
        return 1;
    }
    long slots = (long)t->info.n_moe * t->info.experts;
    if (!moe_cli_capacity("sim", frac, slots, t->info.top_k, &capacity)) {
        moe_trace_free(t);
        return 2;
    }
    sp.capacity = (int)capacity;
    if (!sp.expert_bytes && !t->info.expert_bytes)
        fprintf(stderr, "moeflow sim: note: no --expert-bytes and none in the trace header; "
                        "bytes moved count 0\n");
    if (min_score_given && !strcmp(pred_spec, "none")) /* as replay says it */
        fprintf(stderr, "moeflow sim: warning: --min-score changes nothing with --predictor none (nothing is "
                        "predicted)\n");
    if (pred_spec || !strcmp(pol_name, "predicted")) {
        int rc = moe_trace_pred_sim_cmd(t, pred_spec, pol_name, capacity, sp.expert_bytes, sp.link_gbps,
                                        sp.layer_ms, sp.expert_ms, min_score, json);
        moe_trace_free(t);
        return rc;
    }
    struct moe_sim_result r;
    if (moe_sim_run(t, &sp, &r)) {
        fprintf(stderr, "moeflow sim: %s: %s\n", trace_path, moe_last_error());
        moe_trace_free(t);
        return 1;
    }
    const char *pname = moe_policy_name(sp.policy);
    if (json) {
        printf("{\"policy\":\"%s\",\"capacity\":%d,\"slots_total\":%ld,"
               "\"tokens\":%llu,\"accesses\":%llu,\"hits\":%llu,\"misses\":%llu,\"evictions\":%llu,"
               "\"hit_rate\":%.6f,\"transfers_per_token\":%.6f,\"bytes_moved\":%llu",
               pname, sp.capacity, slots, (unsigned long long)r.tokens,
               (unsigned long long)r.accesses, (unsigned long long)r.hits,
               (unsigned long long)r.misses, (unsigned long long)r.evictions, r.hit_rate,
               r.transfers_per_token, (unsigned long long)r.bytes_moved);
        if (r.timeline)
            printf(",\"link_gbps\":%g,\"expert_bytes\":%llu,\"layer_ms\":%g,\"expert_ms\":%g,"
                   "\"compute_s\":%.6f,\"stall_s\":%.6f,\"tokens_per_s\":%.4f",
                   sp.link_gbps, (unsigned long long)(sp.expert_bytes ? sp.expert_bytes : t->info.expert_bytes),
                   sp.layer_ms, sp.expert_ms, r.compute_s, r.stall_s, r.tokens_per_s);
        printf("}\n");
    } else {
        printf("trace               %s (%llu tokens, %d MoE layers x %d experts, top-%d)\n",
               trace_path, (unsigned long long)r.tokens, t->info.n_moe, t->info.experts,
               t->info.top_k);
        printf("policy              %s\n", pname);
        printf("capacity            %d of %ld expert slots (%.1f %%)\n", sp.capacity, slots,
               100.0 * sp.capacity / (double)slots);
        printf("hits                %llu\n", (unsigned long long)r.hits);
        printf("misses              %llu\n", (unsigned long long)r.misses);
        printf("hit rate            %.4f\n", r.hit_rate);
        printf("transfers/token     %.4f\n", r.transfers_per_token);
        printf("bytes moved         %llu (%.3f GB)\n", (unsigned long long)r.bytes_moved,
               (double)r.bytes_moved / 1e9);
        if (r.timeline) {
            printf("timeline            link %g GB/s, layer %g ms, expert %g ms\n", sp.link_gbps,
                   sp.layer_ms, sp.expert_ms);
            printf("compute             %.3f s\n", r.compute_s);
            printf("stall               %.3f s\n", r.stall_s);
            printf("tokens/s            %.3f\n", r.tokens_per_s);
        }
    }
    moe_trace_free(t);
    return 0;
}
