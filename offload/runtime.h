/* Offload options shared by the commands that run a model (generate, trace,
 * replay, serve, bench): one flag table, one parser, one provider factory,
 * one help text, one stats printer.
 *
 * Use in a getopt_long command:
 *     static const struct option opts[] = { {"model", ...}, MOE_OFFLOAD_LONG_OPTIONS, {0} };
 *     ...
 *     default: { int r = moe_offload_opts_parse(&oo, c, optarg);
 *                if (r < 0) { fprintf(stderr, "%s\n", moe_last_error()); return 2; }
 *                if (r == 0) { usage; return 2; } }
 *     ...
 *     struct moe_provider *p = NULL;
 *     if (moe_offload_provider_create(m, &oo, &p)) -> error; (p NULL = all resident)
 *     ... moe_offload_report(p, &oo, "generate");   (prints/writes --stats / --stats-json) */
#ifndef MOE_RUNTIME_H
#define MOE_RUNTIME_H

#include <getopt.h>
#include <stdio.h>

#include "tiered.h"

#ifdef __cplusplus
extern "C" {
#endif

/* getopt_long values of the offload flags (above any short option). */
enum {
    MOE_OPT_STORE = 0x4f00, MOE_OPT_GPU_EXPERTS, MOE_OPT_GPU_BYTES, MOE_OPT_HOST_EXPERTS,
    MOE_OPT_HOST_BYTES, MOE_OPT_POLICY, MOE_OPT_QUEUE_DEPTH, MOE_OPT_NO_IO_URING, MOE_OPT_STATS,
    MOE_OPT_STATS_JSON, MOE_OPT_BELADY_TRACE,
};

#define MOE_OFFLOAD_LONG_OPTIONS                                             \
    { "store", required_argument, NULL, MOE_OPT_STORE },                     \
    { "gpu-experts", required_argument, NULL, MOE_OPT_GPU_EXPERTS },         \
    { "gpu-cache-bytes", required_argument, NULL, MOE_OPT_GPU_BYTES },       \
    { "host-experts", required_argument, NULL, MOE_OPT_HOST_EXPERTS },       \
    { "host-cache-bytes", required_argument, NULL, MOE_OPT_HOST_BYTES },     \
    { "policy", required_argument, NULL, MOE_OPT_POLICY },                   \
    { "queue-depth", required_argument, NULL, MOE_OPT_QUEUE_DEPTH },         \
    { "no-io-uring", no_argument, NULL, MOE_OPT_NO_IO_URING },               \
    { "stats", no_argument, NULL, MOE_OPT_STATS },                           \
    { "stats-json", required_argument, NULL, MOE_OPT_STATS_JSON },           \
    { "belady-trace", required_argument, NULL, MOE_OPT_BELADY_TRACE }

struct moe_offload_opts {
    const char *store;            /* --store FILE: packed store as the NVMe tier */
    int gpu_experts;              /* --gpu-experts N (0 = unset) */
    uint64_t gpu_cache_bytes;     /* --gpu-cache-bytes B (0 = unset) */
    int host_experts;             /* --host-experts N (0 = unset) */
    uint64_t host_cache_bytes;    /* --host-cache-bytes B (0 = unset) */
    enum moe_policy_kind policy;  /* --policy (default lru) */
    int queue_depth;              /* --queue-depth (0 = default 32) */
    bool no_io_uring;             /* --no-io-uring */
    bool stats;                   /* --stats: print tier stats to stderr at exit */
    const char *stats_json;       /* --stats-json FILE */
    const char *belady_trace;     /* --belady-trace F.jsonl: future of --policy belady */
};

void moe_offload_opts_init(struct moe_offload_opts *o);
/* Handle one getopt_long result: 1 consumed, 0 not an offload flag, -1 bad
 * value (moe_last_error() names the flag and the value). */
int moe_offload_opts_parse(struct moe_offload_opts *o, int opt, const char *arg);
/* True when any flag asks for the tiered provider. */
bool moe_offload_opts_tiered(const struct moe_offload_opts *o);
/* Help lines for the flags (to append to a command's --help). */
const char *moe_offload_help(void);

/* Build the provider: *out NULL (and MOE_OK) means all-resident, the engine's
 * default.  Without --gpu-experts/--gpu-cache-bytes the device tier holds
 * every expert (loaded on first use); the host tier defaults to as many
 * records as device slots. */
enum moe_status moe_offload_provider_create(const struct moe_model *m,
                                            const struct moe_offload_opts *o,
                                            struct moe_provider **out);
/* Print stats to f as text and/or write them to path as JSON. */
void moe_offload_stats_print(const struct moe_offload_stats *s, FILE *f);
enum moe_status moe_offload_stats_write_json(const struct moe_offload_stats *s, const char *path);
/* Per --stats / --stats-json; no-op for a non-tiered provider or when neither was given.
 * Returns MOE_EIO when the JSON file cannot be written. */
enum moe_status moe_offload_report(const struct moe_provider *p, const struct moe_offload_opts *o);

#ifdef __cplusplus
}
#endif
#endif
