/* Eviction policies of the expert cache: a small vtable the cache manager
 * (offload/cache.h) consults, so the same decisions drive the tiered provider
 * and `moeflow sim`.
 *
 * Keys are expert ids in one key space: key = layer * n_experts + expert.
 * The cache calls on_insert when a key becomes resident, on_access on every
 * demand access (hit or miss, after on_insert for a miss), on_evict when a key
 * leaves, and victim() to choose which of n candidate keys (resident, not
 * pinned) to evict.  on_prediction is the hook of prediction-aware policies:
 * a predictor says `key` will be needed `distance` MoE layers ahead with
 * confidence `score`; LRU/LFU/Belady ignore it.  Every policy is
 * deterministic: ties are broken by the lowest key. */
#ifndef MOE_POLICY_H
#define MOE_POLICY_H

#include "../common/moe.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_policy_ops {
    const char *name;
    void (*on_insert)(void *self, int key);
    void (*on_access)(void *self, int key, bool hit);
    void (*on_evict)(void *self, int key);
    /* Optional (may be NULL). */
    void (*on_prediction)(void *self, int key, float score, int distance);
    /* Index into cand[0..n-1] (n >= 1) of the key to evict. */
    int (*victim)(void *self, int n, const int *cand);
    void (*destroy)(void *self);
};

struct moe_policy {
    const struct moe_policy_ops *ops;
    void *self;
};

enum moe_policy_kind {
    MOE_POLICY_LRU,     /* least recently accessed (or inserted) */
    MOE_POLICY_LFU,     /* fewest demand accesses since start (kept across evictions); ties LRU */
    MOE_POLICY_BELADY,  /* furthest next use in a known future access sequence (offline) */
    MOE_POLICY_PREDICTED, /* farthest predicted next use (policy_predicted.h), fed by a predictor's
                             prefetch hints through on_prediction; needs the model's MoE layers */
};

/* "lru", "lfu", "belady", "predicted" -> kind; false for anything else. */
bool moe_policy_parse(const char *name, enum moe_policy_kind *out);
const char *moe_policy_name(enum moe_policy_kind k);

/* n_keys: size of the key space (layers x experts).  NULL on allocation failure. */
struct moe_policy *moe_policy_lru_create(int n_keys);
struct moe_policy *moe_policy_lfu_create(int n_keys);
/* future[0..n_future-1]: every demand access to come, in order (keys).  Each
 * on_access(key) consumes that key's next occurrence; keys accessed beyond the
 * future (or not in it) count as never used again. */
struct moe_policy *moe_policy_belady_create(int n_keys, const int *future, size_t n_future);
/* LRU, LFU or Belady (with its future) by kind; predicted needs the layer
 * structure: use moe_policy_create_model (here it fails with MOE_EINVAL). */
struct moe_policy *moe_policy_create(enum moe_policy_kind k, int n_keys, const int *future,
                                     size_t n_future);
/* Any kind for a model of n_layers decoder layers x n_experts routed experts
 * (keys layer * n_experts + expert); is_moe[0..n_layers-1] marks the MoE
 * layers (NULL: every layer), used by the predicted policy; future as for
 * Belady.  NULL with the error set on bad input or no memory. */
struct moe_policy *moe_policy_create_model(enum moe_policy_kind k, int n_layers, int n_experts,
                                           const bool *is_moe, const int *future, size_t n_future);
void moe_policy_destroy(struct moe_policy *p);

#ifdef __cplusplus
}
#endif
#endif
