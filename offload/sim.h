/* Trace-driven cache simulation: replays a routing trace through the real
 * cache manager (offload/cache.h) with no model.  Sequences one after another,
 * tokens in order (batch-1 decode); each token touches each MoE layer's top-k
 * experts (in ascending id, as the engine acquires them), which stay pinned
 * while that layer computes.
 *
 * Timeline model (when link_gbps > 0): one serial link; a layer's misses are
 * issued on demand when the layer is reached, each taking expert_bytes /
 * link rate; the layer computes (layer_ms + top_k * expert_ms) once its last
 * transfer has landed.  Stall = time compute waited for transfers. */
#ifndef MOE_SIM_H
#define MOE_SIM_H

#include "cache.h"
#include "trace.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_SIM_MAX_K 256 /* largest top_k replayed */

struct moe_sim_params {
    int capacity;                 /* device-tier slots (>= top_k) */
    enum moe_policy_kind policy;
    uint64_t expert_bytes;        /* bytes per transfer, <= MOE_TRACE_MAX_EXPERT_BYTES; 0 = trace header's */
    double link_gbps;             /* link rate in GB/s (1e9 B/s); 0 = no timeline */
    double layer_ms;              /* compute per MoE layer per token, ms */
    double expert_ms;             /* extra compute per routed expert per token, ms */
};

struct moe_sim_result {
    uint64_t tokens, accesses;    /* tokens replayed; expert accesses (tokens x MoE layers x k) */
    uint64_t hits, misses, evictions;
    double hit_rate;              /* hits / accesses */
    double transfers_per_token;   /* misses / tokens */
    uint64_t bytes_moved;         /* misses x expert_bytes (MOE_ERANGE if that overflows) */
    bool timeline;                /* the fields below are set */
    double compute_s;             /* total compute time, s */
    double stall_s;               /* total time compute waited on the link, s */
    double tokens_per_s;          /* tokens / (compute_s + stall_s) */
};

enum moe_status moe_sim_run(const struct moe_trace *t, const struct moe_sim_params *p,
                            struct moe_sim_result *out);

#ifdef __cplusplus
}
#endif
#endif
