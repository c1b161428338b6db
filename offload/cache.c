/* Expert cache manager (see cache.h). */
#include "cache.h"

#include <stdlib.h>
#include <string.h>

struct moe_cache {
    int n_keys, capacity, group_size, n_groups;
    int *quota;            /* [n_groups] or NULL */
    int *group_used;       /* [n_groups] resident keys per group, or NULL */
    struct moe_policy *policy;
    int *key_slot;         /* [n_keys] slot or -1 */
    int *slot_key;         /* [capacity] key or -1 */
    int *pins;             /* [n_keys] pin count */
    bool *prefetched;      /* [n_keys] inserted by prefetch, not yet demanded */
    int *cand;             /* [capacity] scratch: eviction candidates */
    int n_pinned;          /* keys with pins > 0 */
    int n_free;
    struct moe_cache_stats st;
};

struct moe_cache *moe_cache_create(const struct moe_cache_params *p)
{
    struct moe_cache *c = NULL;
    if (!p->policy) {
        moe_errorf(MOE_EINVAL, "expert cache: no policy");
        return NULL;
    }
    if (p->n_keys <= 0 || p->capacity <= 0) {
        moe_errorf(MOE_EINVAL, "expert cache: capacity %d slots for %d keys; both must be >= 1",
                   p->capacity, p->n_keys);
        goto fail;
    }
    c = calloc(1, sizeof(*c));
    if (!c) goto fail_nomem;
    c->n_keys = p->n_keys;
    c->capacity = p->capacity;
    c->policy = p->policy;
    c->key_slot = malloc((size_t)p->n_keys * sizeof(int));
    c->slot_key = malloc((size_t)p->capacity * sizeof(int));
    c->pins = calloc((size_t)p->n_keys, sizeof(int));
    c->prefetched = calloc((size_t)p->n_keys, sizeof(bool));
    c->cand = malloc((size_t)p->capacity * sizeof(int));
    if (!c->key_slot || !c->slot_key || !c->pins || !c->prefetched || !c->cand) goto fail_nomem;
    for (int k = 0; k < p->n_keys; k++) c->key_slot[k] = -1;
    for (int s = 0; s < p->capacity; s++) c->slot_key[s] = -1;
    c->n_free = p->capacity;
    if (p->quota) {
        if (p->group_size <= 0 || p->n_keys % p->group_size) {
            moe_errorf(MOE_EINVAL, "expert cache: quota group size %d does not divide %d keys",
                       p->group_size, p->n_keys);
            goto fail;
        }
        c->group_size = p->group_size;
        c->n_groups = p->n_keys / p->group_size;
        c->quota = malloc((size_t)c->n_groups * sizeof(int));
        c->group_used = calloc((size_t)c->n_groups, sizeof(int));
        if (!c->quota || !c->group_used) goto fail_nomem;
        memcpy(c->quota, p->quota, (size_t)c->n_groups * sizeof(int));
    }
    return c;
fail_nomem:
    moe_errorf(MOE_ENOMEM, "expert cache: cannot allocate %d slots for %d keys", p->capacity,
               p->n_keys);
fail:
    if (c) {
        c->policy = p->policy;
        moe_cache_destroy(c);
    } else {
        moe_policy_destroy(p->policy);
    }
    return NULL;
}

void moe_cache_destroy(struct moe_cache *c)
{
    if (!c) return;
    moe_policy_destroy(c->policy);
    free(c->quota);
    free(c->group_used);
    free(c->key_slot);
    free(c->slot_key);
    free(c->pins);
    free(c->prefetched);
    free(c->cand);
    free(c);
}

static int group_of(const struct moe_cache *c, int key) { return key / c->group_size; }

/* key's group holds its quota of slots: key may take only one of the group's own. */
static bool at_quota(const struct moe_cache *c, int key)
{
    return c->quota && c->group_used[group_of(c, key)] >= c->quota[group_of(c, key)];
}

/* The slot key would take: a free one (*victim -1), or that of the policy's choice among the unpinned
 * keys (*victim), of key's own group when the group is at its quota; false when every slot it may take
 * is pinned.  Changes nothing but the scratch (nor the thread's error). */
static bool find_slot(const struct moe_cache *c, int key, int *slot, int *victim)
{
    bool own_group = at_quota(c, key);
    *victim = -1;
    if (!own_group && c->n_free > 0) {
        for (int s = 0; s < c->capacity; s++)
            if (c->slot_key[s] < 0) {
                *slot = s;
                return true;
            }
    }
    int n = 0;
    for (int s = 0; s < c->capacity; s++) {
        int k = c->slot_key[s];
        if (k < 0 || c->pins[k] > 0) continue;
        if (own_group && group_of(c, k) != group_of(c, key)) continue;
        c->cand[n++] = k;
    }
    if (n == 0)
        return false;
    *victim = c->cand[c->policy->ops->victim(c->policy->self, n, c->cand)];
    *slot = c->key_slot[*victim];
    return true;
}

/* find_slot, MOE_EBUSY saying why when it finds none. */
static enum moe_status choose_slot(const struct moe_cache *c, int key, int *slot, int *victim)
{
    if (find_slot(c, key, slot, victim))
        return MOE_OK;
    return moe_errorf(MOE_EBUSY, "expert cache: all %d slots are pinned%s (key %d)", c->capacity,
                      at_quota(c, key) ? " or outside the layer's quota" : "", key);
}

/* Choose a slot for key: a free one, or evict a policy-chosen unpinned key.
 * With quotas, a group at its quota evicts one of its own keys. */
static enum moe_status take_slot(struct moe_cache *c, int key, int *slot, int *evicted)
{
    enum moe_status st = choose_slot(c, key, slot, evicted);
    if (st) return st;
    int v = *evicted;
    if (v < 0) {
        c->n_free--;
    } else {
        c->key_slot[v] = -1;
        c->prefetched[v] = false;
        if (c->group_used) c->group_used[group_of(c, v)]--;
        c->policy->ops->on_evict(c->policy->self, v);
        c->st.evictions++;
    }
    c->slot_key[*slot] = key;
    c->key_slot[key] = *slot;
    if (c->group_used) c->group_used[group_of(c, key)]++;
    c->policy->ops->on_insert(c->policy->self, key);
    return MOE_OK;
}

enum moe_status moe_cache_acquire(struct moe_cache *c, int key, int *slot, bool *miss, int *evicted)
{
    if (key < 0 || key >= c->n_keys)
        return moe_errorf(MOE_EINVAL, "expert cache: key %d outside [0, %d)", key, c->n_keys);
    *evicted = -1;
    int s = c->key_slot[key];
    if (s >= 0) {
        *miss = false;
        c->st.hits++;
        if (c->prefetched[key]) {
            c->st.prefetch_hits++;
            c->prefetched[key] = false;
        }
    } else {
        enum moe_status st = take_slot(c, key, &s, evicted);
        if (st) return st;
        *miss = true;
        c->st.misses++;
    }
    c->policy->ops->on_access(c->policy->self, key, !*miss);
    if (c->pins[key]++ == 0) c->n_pinned++;
    *slot = s;
    return MOE_OK;
}

/* Whether keys[i] is the first of its value in keys[0..i]. */
static bool first_of(const int *keys, int i)
{
    for (int j = 0; j < i; j++)
        if (keys[j] == keys[i]) return false;
    return true;
}

static bool listed(const int *keys, int n, int key)
{
    for (int j = 0; j < n; j++)
        if (keys[j] == key) return true;
    return false;
}

/* Each miss finds a slot: at most n_distinct - 1 keys of the request are pinned when it comes, so the
 * pinned keys of others plus those leave a slot (of the key's group, when the group is at its quota)
 * that is free or holds an unpinned key. */
enum moe_status moe_cache_can_acquire(const struct moe_cache *c, const int *keys, int n)
{
    int distinct = 0, pinned_listed = 0;
    for (int i = 0; i < n; i++) {
        if (keys[i] < 0 || keys[i] >= c->n_keys)
            return moe_errorf(MOE_EINVAL, "expert cache: key %d outside [0, %d)", keys[i], c->n_keys);
        if (!first_of(keys, i)) continue;
        distinct++;
        pinned_listed += c->pins[keys[i]] > 0;
    }
    int others = c->n_pinned - pinned_listed;
    if (distinct + others > c->capacity)
        return moe_errorf(MOE_EBUSY, "expert cache: %d keys at once, and %d of the %d slots are pinned by others",
                          distinct, others, c->capacity);
    for (int i = 0; c->quota && i < n; i++) {
        int g = group_of(c, keys[i]), in_group = 0, others_g = 0;
        bool first_in_group = true;
        for (int j = 0; j < i && first_in_group; j++) first_in_group = group_of(c, keys[j]) != g;
        if (!first_in_group) continue;
        for (int j = 0; j < n; j++) in_group += group_of(c, keys[j]) == g && first_of(keys, j);
        for (int s = 0; s < c->capacity; s++) {
            int k = c->slot_key[s];
            others_g += k >= 0 && group_of(c, k) == g && c->pins[k] > 0 && !listed(keys, n, k);
        }
        if (in_group + others_g > c->quota[g])
            return moe_errorf(MOE_EBUSY, "expert cache: %d keys of group %d at once, and %d of its quota of %d "
                              "slots are pinned by others", in_group, g, others_g, c->quota[g]);
    }
    return MOE_OK;
}

enum moe_status moe_cache_acquire_n(struct moe_cache *c, const int *keys, int n, const struct moe_cache_fill *f,
                                    int *failed)
{
    enum moe_status st = moe_cache_can_acquire(c, keys, n);
    int i = 0;
    *failed = -1;
    for (; st == MOE_OK && i < n; i++) {
        int slot = -1, ev;
        bool miss = false;
        /* dropping a key no pin holds only frees its slot: the check still holds */
        if (f->before) f->before(f->ud, keys[i]);
        if ((st = moe_cache_acquire(c, keys[i], &slot, &miss, &ev))) break; /* not after the check */
        if (!miss) {
            if (f->hit) f->hit(f->ud, keys[i], slot);
        } else if ((st = f->fill(f->ud, keys[i], slot))) {
            moe_cache_drop(c, keys[i]);
            *failed = i;
            break;
        }
    }
    if (st)
        while (i-- > 0) moe_cache_unpin(c, keys[i]);
    return st;
}

void moe_cache_unpin(struct moe_cache *c, int key)
{
    if (key < 0 || key >= c->n_keys || c->pins[key] == 0) return;
    if (--c->pins[key] == 0) c->n_pinned--;
}

enum moe_status moe_cache_prefetch(struct moe_cache *c, int key, int *slot, bool *inserted,
                                   int *evicted)
{
    if (key < 0 || key >= c->n_keys)
        return moe_errorf(MOE_EINVAL, "expert cache: key %d outside [0, %d)", key, c->n_keys);
    *evicted = -1;
    *inserted = false;
    if (c->key_slot[key] >= 0) {
        *slot = c->key_slot[key];
        return MOE_OK;
    }
    enum moe_status st = take_slot(c, key, slot, evicted);
    if (st) return st;
    *inserted = true;
    c->prefetched[key] = true;
    c->st.prefetches++;
    return MOE_OK;
}

void moe_cache_drop(struct moe_cache *c, int key)
{
    if (key < 0 || key >= c->n_keys) return;
    if (c->pins[key] > 0) c->n_pinned--;
    c->pins[key] = 0;
    int s = c->key_slot[key];
    if (s < 0) return;
    c->key_slot[key] = -1;
    c->slot_key[s] = -1;
    c->prefetched[key] = false;
    c->n_free++;
    if (c->group_used) c->group_used[group_of(c, key)]--;
    c->policy->ops->on_evict(c->policy->self, key);
}

void moe_cache_predict(struct moe_cache *c, int key, float score, int distance)
{
    if (key < 0 || key >= c->n_keys || !c->policy->ops->on_prediction) return;
    c->policy->ops->on_prediction(c->policy->self, key, score, distance);
}

bool moe_cache_victim(const struct moe_cache *c, int key, int *victim)
{
    int slot;
    *victim = -1;
    if (key < 0 || key >= c->n_keys)
        return false;
    return c->key_slot[key] >= 0 || find_slot(c, key, &slot, victim);
}

int moe_cache_slot_of(const struct moe_cache *c, int key)
{
    return key >= 0 && key < c->n_keys ? c->key_slot[key] : -1;
}
int moe_cache_key_at(const struct moe_cache *c, int slot)
{
    return slot >= 0 && slot < c->capacity ? c->slot_key[slot] : -1;
}
int moe_cache_capacity(const struct moe_cache *c) { return c->capacity; }
const struct moe_policy *moe_cache_policy(const struct moe_cache *c) { return c->policy; }
int moe_cache_pinned(const struct moe_cache *c) { return c->n_pinned; }
void moe_cache_get_stats(const struct moe_cache *c, struct moe_cache_stats *out) { *out = c->st; }
