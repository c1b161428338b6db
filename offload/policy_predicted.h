/* Prediction-aware eviction policy ("predicted"): evicts the resident expert
 * whose next use is predicted farthest away, an approximation of Belady's MIN
 * driven by the routing-path predictor instead of the real future.
 *
 * Expected next use of key (layer t, expert e), in MoE layer-steps from now:
 *     d0 + n_moe * (S_0 + S_1 + ... + S_{P-2} + S_{P-1} / q),  S_j = prod_{i<=j} (1 - p_i)
 * d0 = layer-steps until layer t next runs; p_j = probability that e is used
 * at the j-th occurrence of t from then, j < P = PRED_SLOTS: the latest
 * prediction for that occurrence, taken as is (predictions reach P steps
 * ahead, keyed by the occurrence nearest to now + distance); a fraction of the
 * fallback when t was predicted without e; else the fallback: for p_0 the
 * step-to-step transition estimate P(e | the experts t used at its latest
 * step), learned online from the accesses; for the later ones q, the
 * recency-weighted use frequency of e at t (an exponential moving average per
 * token), which also sets the geometric tail after occurrence P.
 * A prefetched expert that its layer then did not use is thereby demoted: its
 * prediction is spent and its q decays.  Per-layer shares follow predicted
 * demand because all layers compete in one ranking.
 *
 * The position "now" follows on_access calls (a MoE layer before the last
 * accessed one starts a new step; the experts of one layer are accessed one by
 * one, so a layer equal to the last one does not), so the policy plugs into
 * the cache manager (offload/cache.h) unchanged.  With a single MoE layer the
 * steps cannot be told apart and every access falls in the first one: no use
 * frequency decays and no transition is learned, so the ranking degrades to
 * the stored predictions and the lowest key; a model with one MoE layer is
 * better served by lru or lfu.  Deterministic; ties go to the lowest key. */
#ifndef MOE_POLICY_PREDICTED_H
#define MOE_POLICY_PREDICTED_H

#include "policy.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Occurrences of a layer a prediction can be kept for: its next one and the
 * MOE_POLICY_PREDICTED_SLOTS - 1 after it.  A prediction for a later one is
 * dropped (it would take the place of a nearer one). */
#define MOE_POLICY_PREDICTED_SLOTS 8

/* Keys are layer * n_experts + expert over n_layers decoder layers;
 * moe_layers[0..n_moe-1] are the MoE layers in order.  NULL on bad input
 * (error set) or no memory. */
struct moe_policy *moe_policy_predicted_create(int n_layers, int n_experts, const int *moe_layers, int n_moe);
/* Positions count MoE layer-steps: step * n_moe + MoE index.  The position a
 * prediction made at position now (-1: before the first step) for MoE layer
 * mi, `distance` MoE layers ahead of the layer computing (which may not have
 * been accessed yet), is for: the occurrence of mi after now nearest to
 * now + distance. */
int64_t moe_policy_predicted_occurrence(int64_t now, int mi, int n_moe, int distance);
/* Expected MoE layer-steps until key is used again (see above). */
double moe_policy_predicted_next_use(const struct moe_policy *p, int key);

struct moe_cache; /* cache.h */
/* Admission of a prefetch of key into cache c: under the predicted policy,
 * true only when key would take a free slot or is predicted to be needed
 * sooner than the expert it would evict (moe_cache_victim: unpinned, of its
 * own layer when the layer is at its quota), so a prefetch never evicts an
 * expert needed before it; true for every other policy. */
bool moe_policy_predicted_admit(const struct moe_cache *c, int key);

#ifdef __cplusplus
}
#endif
#endif
