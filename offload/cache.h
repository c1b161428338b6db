/* The expert cache manager: residency, pinning, eviction decisions and hit/miss
 * accounting of one tier, with no data movement.  The tiered provider keeps one
 * per tier and moves bytes as it says; `moeflow sim` replays traces through the
 * very same code, so simulated and served hit rates agree exactly.
 *
 * Decisions depend only on the sequence of calls (never on timing), so they
 * are deterministic.  Keys: key = layer * n_experts + expert.  Slots: 0..capacity-1.
 * Not thread-safe: the caller serialises calls. */
#ifndef MOE_CACHE_H
#define MOE_CACHE_H

#include "policy.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_cache_params {
    int n_keys;                 /* key space (layers x experts) */
    int capacity;               /* slots, >= 1 */
    int group_size;             /* keys per quota group (n_experts); used only with quota */
    const int *quota;           /* [n_keys / group_size] max slots per group (layer), or NULL:
                                   one pool shared by all layers */
    struct moe_policy *policy;  /* owned by the cache from now on (even on failure) */
};

struct moe_cache_stats {
    uint64_t hits, misses;      /* demand accesses served from / not from this tier */
    uint64_t prefetches;        /* keys inserted by prefetch (not demand) */
    uint64_t prefetch_hits;     /* demand hits on a key that a prefetch inserted */
    uint64_t evictions;         /* keys evicted to make room */
};

struct moe_cache;

struct moe_cache *moe_cache_create(const struct moe_cache_params *p);
void moe_cache_destroy(struct moe_cache *c);

/* Demand access of key: counted as hit or miss, key pinned (pin count + 1).
 * *slot: its slot.  *miss: the slot must be (re)filled.  *evicted: the key
 * that left the slot, or -1.  MOE_EBUSY when every slot is pinned. */
enum moe_status moe_cache_acquire(struct moe_cache *c, int key, int *slot, bool *miss, int *evicted);
/* Whether demand accesses of keys[0..n-1], one after the other with each key kept pinned, would all
 * succeed now: the distinct keys fit in the slots beside the keys others pinned and, with quotas, in
 * their group's quota beside that group's pinned keys.  MOE_OK, MOE_EINVAL for a key outside the key
 * space, or MOE_EBUSY naming the counts; changes nothing (no counts, no pins, no policy calls). */
enum moe_status moe_cache_can_acquire(const struct moe_cache *c, const int *keys, int n);
/* The caller's part in moe_cache_acquire_n, each called with ud. */
struct moe_cache_fill {
    void *ud;
    /* The fill of a slot that key missed in (its bytes moved in): MOE_OK or the failure's status. */
    enum moe_status (*fill)(void *ud, int key, int slot);
    /* Optional: called just before key is acquired; it may forget key (moe_cache_drop) when no pin
     * holds it and its slot holds nothing usable (its last load failed), so the access is a miss. */
    void (*before)(void *ud, int key);
    /* Optional: key hit in slot (a load of it still in flight is now needed). */
    void (*hit)(void *ud, int key, int slot);
};
/* Demand accesses of keys[0..n-1] as one request: checked whole first (moe_cache_can_acquire: refused,
 * nothing changes and *failed is -1), then each key in turn passed to f->before, acquired and pinned,
 * and f->fill called for a miss, f->hit for a hit.  A fill that fails has its key dropped
 * (moe_cache_drop) and the keys pinned before it unpinned, and *failed is its index; the accesses
 * counted and the fills done stay. */
enum moe_status moe_cache_acquire_n(struct moe_cache *c, const int *keys, int n, const struct moe_cache_fill *f,
                                    int *failed);
/* Undo one pin of key (no-op if not pinned). */
void moe_cache_unpin(struct moe_cache *c, int key);
/* Make key resident ahead of need without counting a hit or miss and without
 * pinning it.  *inserted: false if it was resident already.  MOE_EBUSY when
 * nothing is evictable (the prefetch is dropped). */
enum moe_status moe_cache_prefetch(struct moe_cache *c, int key, int *slot, bool *inserted,
                                   int *evicted);
/* The key that a miss or prefetch of key would evict now: *victim -1 when key is resident or would
 * take a free slot; false when every slot it may take is pinned (or key is outside [0, n_keys)).  A
 * query: changes nothing, the thread's error (moe_last_error) included. */
bool moe_cache_victim(const struct moe_cache *c, int key, int *victim);
/* Forget key (its load failed); its pins are dropped and the slot freed. */
void moe_cache_drop(struct moe_cache *c, int key);
/* Forward a prediction to the policy (prediction-aware policies). */
void moe_cache_predict(struct moe_cache *c, int key, float score, int distance);

int moe_cache_slot_of(const struct moe_cache *c, int key);   /* -1 when not resident */
int moe_cache_key_at(const struct moe_cache *c, int slot);   /* -1 when empty */
int moe_cache_capacity(const struct moe_cache *c);
int moe_cache_pinned(const struct moe_cache *c);             /* keys pinned now */
void moe_cache_get_stats(const struct moe_cache *c, struct moe_cache_stats *out);
/* The policy the cache consults (owned by the cache). */
const struct moe_policy *moe_cache_policy(const struct moe_cache *c);

#ifdef __cplusplus
}
#endif
#endif
