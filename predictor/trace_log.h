/* Predictions on a routing trace without a model: the predictors that need
 * no hidden states (none, history) run over a trace (offload/trace.h) as
 * batch-1 decode steps and their prefetch hints are logged with the accesses,
 * so `moeflow sim` can replay them (moe_cachesim_run_layers). */
#ifndef MOE_TRACE_LOG_H
#define MOE_TRACE_LOG_H

#include "../offload/trace.h"
#include "cachesim.h"
#include "predictor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* spec kind none or history (others: MOE_ENOTSUP, they need hidden states:
 * use moeflow replay).  log is initialised here. */
enum moe_status moe_trace_pred_log(const struct moe_trace *t, const struct moe_pred_spec *spec,
                                   const struct moe_pred_prefetch *pf, struct moe_evlog *log);

/* `moeflow sim --predictor SPEC` / `--policy predicted`: replay trace t with
 * predictor spec (none or history) under policy pol ("lru", "lfu",
 * "predicted" or "belady") and print the result (JSON with the keys of
 * moeflow sim plus prefetches and prefetch_useful_frac, or text).  link_gbps
 * 0 = no timeline.  Returns the process exit status (0, 1 runtime, 2 usage). */
int moe_trace_pred_sim_cmd(const struct moe_trace *t, const char *spec, const char *pol, long capacity,
                           uint64_t expert_bytes, double link_gbps, double layer_ms, double expert_ms,
                           double min_score, bool json);

#ifdef __cplusplus
}
#endif
#endif
