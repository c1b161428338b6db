/* Expert-cache replay: an event log of one run (steps, prefetch hints in
 * order of issue, accesses) and a simulator of the device tier under a
 * capacity, an eviction policy and optionally a transfer timeline.
 *
 * The log is recorded by a provider wrapper (moe_evlog_provider) while the
 * real engine and predictor run; the wrapper passes acquire() to the inner
 * provider, so what is computed never depends on the simulated cache.
 * Because the log holds the whole future, every policy and capacity (and
 * Belady's offline optimum) is evaluated on exactly the same routing. */
#ifndef MOE_CACHESIM_H
#define MOE_CACHESIM_H

#include "../common/moe.h"
#include "../offload/provider.h"

#ifdef __cplusplus
extern "C" {
#endif

enum moe_ev_kind { MOE_EV_STEP, MOE_EV_PREFETCH, MOE_EV_ACCESS };

struct moe_ev {
    uint8_t kind;      /* enum moe_ev_kind */
    int16_t layer;     /* MoE index (not model layer) */
    int16_t distance;  /* prefetch: MoE layers ahead of the one computing */
    int32_t n;         /* ids in this event */
    int64_t off;       /* first id in moe_evlog.ids / scores */
};

struct moe_evlog {
    int n_moe, n_experts, top_k;
    struct moe_ev *ev;  /* [n_ev] */
    size_t n_ev, cap_ev;
    int32_t *ids;       /* [n_ids] */
    float *scores;      /* [n_ids] prefetch confidence (1 for accesses) */
    size_t n_ids, cap_ids;
    uint64_t steps;     /* MOE_EV_STEP events */
    uint64_t dropped_ids; /* prefetch ids left out: not an expert (0..n_experts-1) of a logged layer */
    bool oom;           /* an append failed: the log is incomplete */
};

void moe_evlog_init(struct moe_evlog *l, int n_moe, int n_experts, int top_k);
void moe_evlog_free(struct moe_evlog *l);
void moe_evlog_clear(struct moe_evlog *l);
/* Append (moe layer index).  Out of memory sets l->oom.  A prefetch's ids that are not experts of a
 * MoE layer of the log are left out and counted in dropped_ids; an access's ids must be valid. */
void moe_evlog_step(struct moe_evlog *l);
void moe_evlog_prefetch(struct moe_evlog *l, int moe_layer, int n, const int *ids, const float *scores,
                        int distance);
void moe_evlog_access(struct moe_evlog *l, int moe_layer, int n, const int *ids);

/* An oracle log for upper bounds: src's steps and accesses, with hints (score 1) of the true routing
 * of steps in place of some or all of src's hints. */
struct moe_oracle_params {
    int horizon;       /* the truth of each step and of the `horizon` steps after it */
    bool later_only;   /* ... but not of the step itself (its hints stay src's) */
    int reveal_layer;  /* -1: the truth at step start; else the later steps' truth only once MoE layer
                          reveal_layer of the step was accessed (the step's own at its start) */
    bool keep;         /* src's hints for the steps the truth does not cover are kept (beyond the
                          horizon; the step itself with later_only); false: src's hints are dropped */
};
/* dst is initialised here. */
enum moe_status moe_evlog_oracle(const struct moe_evlog *src, const struct moe_oracle_params *p,
                                 struct moe_evlog *dst);

/* Provider wrapper: records acquire() as accesses and prefetch() as hints
 * into log (model layers mapped with moe_index [n_layers], -1 = dense) and
 * forwards acquire/release, and prefetches of this step (distance <= n_moe),
 * to inner.  Destroying it does not destroy inner. */
struct moe_provider *moe_evlog_provider_create(struct moe_provider *inner, struct moe_evlog *log,
                                               const int *moe_index, int n_layers);

enum moe_cache_policy {
    MOE_CACHE_LRU,        /* least recently used (demand or prefetched) */
    MOE_CACHE_LFU,        /* least frequently used, ties to least recent */
    MOE_CACHE_PREDICTED,  /* farthest predicted next use (approximate Belady) */
    MOE_CACHE_BELADY,     /* farthest actual next use: offline optimum of demand fetching */
};
const char *moe_cache_policy_name(enum moe_cache_policy p);
bool moe_cache_policy_parse(const char *s, enum moe_cache_policy *out);

struct moe_cachesim_params {
    int capacity;         /* device-tier expert slots (all layers together), >= top_k */
    enum moe_cache_policy policy;
    bool prefetch;        /* act on prefetch hints (ignored by belady) */
    float act_min_score;  /* move only hinted experts scored at least this (0: every hint);
                             every hint still reaches the predicted policy's ranking */
    double xfer_s;        /* seconds per expert transfer over the link; 0 = no timeline */
    double layer_s;       /* compute seconds per MoE layer and step */
};

struct moe_cachesim_stats {
    uint64_t steps;           /* decode steps (tokens at batch 1) */
    uint64_t accesses;        /* experts acquired */
    uint64_t hits;            /* acquired without a new transfer (resident or already in flight) */
    uint64_t late_hits;       /* ... of which still in flight (the engine waited) */
    uint64_t transfers;       /* experts moved to the device tier (demand + prefetch) */
    uint64_t prefetches;      /* transfers started by a prefetch hint */
    uint64_t prefetch_useful; /* prefetched experts acquired before being evicted */
    uint64_t prefetch_dropped;/* hints not acted on (resident, no slot, or stale) */
    uint64_t evictions;       /* experts evicted to make room */
    double stall_s;           /* seconds the engine waited for experts (timeline) */
    double compute_s;         /* seconds of compute (steps * moe layers * layer_s) */
    double total_s;           /* stall + compute */
};

/* Bytes a replay moved: s->transfers x expert_bytes into *out; MOE_ERANGE (*out 0) when the product
 * overflows 64 bits, the error naming both factors. */
enum moe_status moe_cachesim_bytes_moved(const struct moe_cachesim_stats *s, uint64_t expert_bytes, uint64_t *out);

/* The counts of a replay as the --json object of moeflow sim (with a predictor) and moeflow replay holds them,
 * each key after a comma: ,"capacity":C,"slots_total":S,"tokens",...,"prefetch_useful_frac" (hit_rate,
 * transfers_per_token and prefetch_useful_frac 0 where they would divide by 0).  bytes_moved as
 * moe_cachesim_bytes_moved gives it. */
void moe_cachesim_json_counts(FILE *f, const struct moe_cachesim_stats *s, long capacity, long slots,
                              uint64_t bytes_moved);

/* Replay the log.  Errors: capacity below top_k, incomplete log.  Cache keys
 * are MoE index * n_experts + expert. */
enum moe_status moe_cachesim_run(const struct moe_evlog *l, const struct moe_cachesim_params *p,
                                 struct moe_cachesim_stats *out);
/* The same with keys over decoder layers: moe_layers[n_moe] maps MoE index to
 * decoder layer, n_layers decoder layers in all. */
enum moe_status moe_cachesim_run_layers(const struct moe_evlog *l, const int *moe_layers, int n_layers,
                                        const struct moe_cachesim_params *p, struct moe_cachesim_stats *out);

#ifdef __cplusplus
}
#endif
#endif
