/* Offload options shared by the commands that run a model (generate, trace,
 * replay, serve, bench): one flag table, one parser, one factory of the
 * compute backend and expert provider, one help text, one stats printer.
 *
 * Use in a getopt_long command:
 *     static const struct option opts[] = { {"model", ...}, MOE_OFFLOAD_LONG_OPTIONS, {0} };
 *     ...
 *     default: { int r = moe_offload_opts_parse(&oo, c, optarg);
 *                if (r < 0) { fprintf(stderr, "%s\n", moe_last_error()); return 2; }
 *                if (r == 0) { usage; return 2; } }
 *     ...
 *     struct moe_backend *be = NULL;
 *     struct moe_provider *p = NULL;
 *     if (moe_offload_runtime_create(m, &oo, &be, &p)) -> error, exit 1;
 *     engine params: .backend = be, .provider = p   (NULL, NULL = CPU, all resident)
 *     if (!engine) moe_offload_explain(MOE_EINVAL, be, p) -> error;
 *     forward failed: moe_offload_explain(st, be, p) -> error (device errors say so);
 *     ... moe_offload_report(p, &oo);   (prints/writes --stats / --stats-json)
 *     destroy the engine, then moe_provider_destroy(p), then moe_backend_destroy(be). */
#ifndef MOE_RUNTIME_H
#define MOE_RUNTIME_H

#include <getopt.h>
#include <stdio.h>

#include "tiered.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_backend; /* kernels/backend.h */

/* getopt_long values of the offload flags (above any short option). */
enum {
    MOE_OPT_STORE = 0x4f00, MOE_OPT_GPU_EXPERTS, MOE_OPT_GPU_BYTES, MOE_OPT_HOST_EXPERTS,
    MOE_OPT_HOST_BYTES, MOE_OPT_POLICY, MOE_OPT_QUEUE_DEPTH, MOE_OPT_NO_IO_URING, MOE_OPT_STATS,
    MOE_OPT_STATS_JSON, MOE_OPT_BELADY_TRACE, MOE_OPT_BACKEND, MOE_OPT_PREDICTOR, MOE_OPT_NO_PREFETCH,
};

/* --predictor SPEC, for commands that drive a routing predictor over the
 * provider themselves (generate); not part of MOE_OFFLOAD_LONG_OPTIONS since
 * bench batch and serve define their own --predictor with default none. */
#define MOE_PREDICTOR_LONG_OPTION { "predictor", required_argument, NULL, MOE_OPT_PREDICTOR }, \
    { "no-prefetch", no_argument, NULL, MOE_OPT_NO_PREFETCH }

/* --backend alone, for commands that do not take the offload flags (replay). */
#define MOE_BACKEND_LONG_OPTION { "backend", required_argument, NULL, MOE_OPT_BACKEND }

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
    { "belady-trace", required_argument, NULL, MOE_OPT_BELADY_TRACE },       \
    MOE_BACKEND_LONG_OPTION

/* Where the engine computes (--backend). */
enum moe_compute_kind {
    MOE_COMPUTE_CPU,              /* CPU reference backend (default) */
    MOE_COMPUTE_CUDA,             /* CUDA backend, experts in the GPU tier (offload/cuda_tier.h) */
};

struct moe_offload_opts {
    const char *store;            /* --store FILE: packed store as the NVMe tier */
    int gpu_experts;              /* --gpu-experts N (0 = unset) */
    uint64_t gpu_cache_bytes;     /* --gpu-cache-bytes B (0 = unset) */
    int host_experts;             /* --host-experts N (0 = unset) */
    uint64_t host_cache_bytes;    /* --host-cache-bytes B (0 = unset) */
    enum moe_policy_kind policy;  /* --policy (default predicted: the fewest transfers at every
                                     device-tier size, docs/results.md section 4) */
    bool policy_given;            /* --policy was given (refused when nothing is offloaded) */
    int queue_depth;              /* --queue-depth (0 = default 32) */
    bool no_io_uring;             /* --no-io-uring */
    bool stats;                   /* --stats: print tier stats to stderr at exit */
    const char *stats_json;       /* --stats-json FILE */
    const char *belady_trace;     /* --belady-trace F.jsonl: future of --policy belady */
    enum moe_compute_kind backend;/* --backend cpu|cuda (default cpu) */
    const char *predictor;        /* --predictor SPEC (predictor/predictor.h), NULL = default
                                     (moe_offload_predictor_spec) */
    bool no_prefetch;             /* --no-prefetch: predictions only rank evictions (the
                                     predictor's prefetch rank_only) */
};

void moe_offload_opts_init(struct moe_offload_opts *o);
/* Handle one getopt_long result: 1 consumed, 0 not an offload flag, -1 bad
 * value (moe_last_error() names the flag and the value). */
int moe_offload_opts_parse(struct moe_offload_opts *o, int opt, const char *arg);
/* A byte count >= 1 with an optional K/M/G/T suffix (powers of 1024; "KiB", "GB" spellings too): 1, or
 * -1 with moe_last_error() naming --flag and the text. */
int moe_offload_parse_bytes(const char *flag, const char *arg, uint64_t *out);
/* The checks the flags allow without a model: pairs given together that
 * exclude each other, --policy belady without its trace (or a trace without
 * the policy), --predictor / --no-prefetch with every expert resident.
 * MOE_EINVAL with moe_last_error() naming the flags: a usage error (exit 2). */
enum moe_status moe_offload_opts_check(const struct moe_offload_opts *o);
/* True when any flag asks for the tiered provider. */
bool moe_offload_opts_tiered(const struct moe_offload_opts *o);
/* Help lines for the flags (to append to a command's --help). */
const char *moe_offload_help(void);
/* The same without --gpu-experts / --gpu-cache-bytes (bench batch sizes the
 * device tier itself). */
const char *moe_offload_help_below_device(void);
/* The --predictor spec to use: the flag's value, else "auto" when experts
 * are offloaded (tiered cache or --backend cuda: predictions prefetch and,
 * with --policy predicted, rank evictions), else "none" (also under --policy
 * belady, which follows its trace, and with --no-prefetch under any policy
 * but predicted, which alone reads predictions then).  Parse it with
 * moe_pred_spec_parse (predictor/predictor.h). */
const char *moe_offload_predictor_spec(const struct moe_offload_opts *o);
/* Help lines of --predictor (commands with MOE_PREDICTOR_LONG_OPTION). */
const char *moe_offload_predictor_help(void);
/* The --backend help line alone (commands with MOE_BACKEND_LONG_OPTION only). */
const char *moe_offload_backend_help(void);
/* True when this build has the CUDA backend. */
bool moe_offload_have_cuda(void);

/* Build the provider: *out NULL (and MOE_OK) means all-resident, the engine's
 * default.  Without --gpu-experts/--gpu-cache-bytes the device tier holds
 * every expert (loaded on first use); the host tier defaults to as many
 * records as device slots. */
enum moe_status moe_offload_provider_create(const struct moe_model *m,
                                            const struct moe_offload_opts *o,
                                            struct moe_provider **out);

/* The compute backend and the expert provider for these options; every
 * command that builds an engine calls this.
 *   --backend cpu:  *be = NULL (the engine makes the CPU backend), *prov as
 *                   moe_offload_provider_create (NULL = all resident).
 *   --backend cuda: *be = moe_backend_cuda_create() on device 0; *prov = the
 *                   GPU expert tier (moe_provider_cuda_stack_create) of
 *                   --gpu-experts slots (or --gpu-cache-bytes / BF16 slot
 *                   bytes; default every routed expert) under --policy, over
 *                   the tiered provider (--store or the safetensors, host tier
 *                   of --host-experts records, default as many as GPU slots;
 *                   the GPU tier copies through its own pinned staging).
 *                   A model without MoE layers: *prov = NULL (the engine's
 *                   own provider; no expert to hold), and any flag that
 *                   offloads, predicts or reports experts is MOE_EINVAL,
 *                   checked before the build or the device.
 * Errors (nothing is left allocated): a build without CUDA or no visible
 * device (MOE_ENOTSUP), allocation failures naming the flag to lower.  The
 * caller destroys the engine first, then *prov, then *be. */
enum moe_status moe_offload_runtime_create(const struct moe_model *m,
                                           const struct moe_offload_opts *o,
                                           struct moe_backend **be, struct moe_provider **prov);
/* After a failure on a backend made by moe_offload_runtime_create (engine
 * creation: pass any status; a forward pass: its status): on the CUDA
 * backend, a sticky device error (st MOE_EDEVLOST or a poisoned context)
 * becomes "device error: ...; restart the process" (MOE_EDEVLOST), and an
 * allocation failure gains what the GPU tier already holds and the flag to
 * lower.  A device error on a usable context (MOE_EDEVICE) keeps its status
 * and message.  Returns the status to report; no-op on the CPU backend. */
enum moe_status moe_offload_explain(enum moe_status st, const struct moe_backend *be,
                                    const struct moe_provider *prov);
/* True when be is the CUDA backend and a sticky device error poisoned it. */
bool moe_offload_backend_poisoned(const struct moe_backend *be);
/* Tier stats of the tiered provider or of the GPU tier stacked on it (device
 * = the GPU tier, host and disk = the tiered provider below); false for any
 * other provider. */
bool moe_offload_stats_get(const struct moe_provider *p, struct moe_offload_stats *out);
/* Print stats to f as text and/or write them to path as JSON. */
void moe_offload_stats_print(const struct moe_offload_stats *s, FILE *f);
enum moe_status moe_offload_stats_write_json(const struct moe_offload_stats *s, const char *path);
/* Per --stats / --stats-json, once the transfers queued so far have finished (a report at the end of a
 * run: the record of every host miss read and counted, disk reads = host misses);
 * no-op for a provider without tier stats (moe_offload_stats_get) or when neither was given.
 * Returns MOE_EIO when the JSON file cannot be written. */
enum moe_status moe_offload_report(const struct moe_provider *p, const struct moe_offload_opts *o);

#ifdef __cplusplus
}
#endif
#endif
