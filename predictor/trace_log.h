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

#ifdef __cplusplus
}
#endif
#endif
