/* LRU, LFU and Belady eviction policies (see policy.h). */
#include "policy.h"

#include "policy_predicted.h"

#include <stdlib.h>
#include <string.h>

bool moe_policy_parse(const char *name, enum moe_policy_kind *out)
{
    if (!name) return false;
    if (!strcmp(name, "lru")) *out = MOE_POLICY_LRU;
    else if (!strcmp(name, "lfu")) *out = MOE_POLICY_LFU;
    else if (!strcmp(name, "belady")) *out = MOE_POLICY_BELADY;
    else if (!strcmp(name, "predicted")) *out = MOE_POLICY_PREDICTED;
    else return false;
    return true;
}

const char *moe_policy_name(enum moe_policy_kind k)
{
    switch (k) {
    case MOE_POLICY_LRU: return "lru";
    case MOE_POLICY_LFU: return "lfu";
    case MOE_POLICY_BELADY: return "belady";
    case MOE_POLICY_PREDICTED: return "predicted";
    }
    return "?";
}

/* ---- LRU and LFU share one state: a recency tick and an access count per key. */
struct recency {
    struct moe_policy base;
    int n_keys;
    uint64_t clock;     /* increments on every insert/access */
    uint64_t *tick;     /* [n_keys] clock of the last insert/access */
    uint64_t *count;    /* [n_keys] demand accesses since start */
};

static void rec_on_insert(void *self, int key)
{
    struct recency *r = self;
    r->tick[key] = ++r->clock;
}

static void rec_on_access(void *self, int key, bool hit)
{
    struct recency *r = self;
    (void)hit;
    r->tick[key] = ++r->clock;
    r->count[key]++;
}

static void rec_on_evict(void *self, int key) { (void)self; (void)key; }

static int lru_victim(void *self, int n, const int *cand)
{
    struct recency *r = self;
    int best = 0;
    for (int i = 1; i < n; i++) {
        uint64_t a = r->tick[cand[i]], b = r->tick[cand[best]];
        if (a < b || (a == b && cand[i] < cand[best])) best = i;
    }
    return best;
}

static int lfu_victim(void *self, int n, const int *cand)
{
    struct recency *r = self;
    int best = 0;
    for (int i = 1; i < n; i++) {
        int k = cand[i], b = cand[best];
        if (r->count[k] != r->count[b]) {
            if (r->count[k] < r->count[b]) best = i;
        } else if (r->tick[k] != r->tick[b]) {
            if (r->tick[k] < r->tick[b]) best = i;
        } else if (k < b) {
            best = i;
        }
    }
    return best;
}

static void rec_destroy(void *self)
{
    struct recency *r = self;
    free(r->tick);
    free(r->count);
    free(r);
}

static const struct moe_policy_ops lru_ops = {
    .name = "lru", .on_insert = rec_on_insert, .on_access = rec_on_access,
    .on_evict = rec_on_evict, .victim = lru_victim, .destroy = rec_destroy,
};
static const struct moe_policy_ops lfu_ops = {
    .name = "lfu", .on_insert = rec_on_insert, .on_access = rec_on_access,
    .on_evict = rec_on_evict, .victim = lfu_victim, .destroy = rec_destroy,
};

static struct moe_policy *recency_create(int n_keys, const struct moe_policy_ops *ops)
{
    struct recency *r = calloc(1, sizeof(*r));
    if (!r || n_keys <= 0) goto fail;
    r->n_keys = n_keys;
    r->tick = calloc((size_t)n_keys, sizeof(*r->tick));
    r->count = calloc((size_t)n_keys, sizeof(*r->count));
    if (!r->tick || !r->count) goto fail;
    r->base.ops = ops;
    r->base.self = r;
    return &r->base;
fail:
    if (r) rec_destroy(r);
    moe_errorf(n_keys <= 0 ? MOE_EINVAL : MOE_ENOMEM, "%s policy: cannot create for %d keys",
               ops->name, n_keys);
    return NULL;
}

struct moe_policy *moe_policy_lru_create(int n_keys) { return recency_create(n_keys, &lru_ops); }
struct moe_policy *moe_policy_lfu_create(int n_keys) { return recency_create(n_keys, &lfu_ops); }

/* ---- Belady: per key, the positions of its future accesses and a cursor. */
struct belady {
    struct moe_policy base;
    int n_keys;
    size_t *start;   /* [n_keys + 1] CSR offsets into pos */
    size_t *pos;     /* [n_future] access positions grouped by key, ascending */
    size_t *cursor;  /* [n_keys] next unconsumed entry of the key (absolute index into pos) */
    bool warned;     /* an access the future did not list was reported */
};

static uint64_t bel_next_use(const struct belady *b, int key)
{
    size_t c = b->cursor[key];
    return c < b->start[key + 1] ? (uint64_t)b->pos[c] : UINT64_MAX;
}

static void bel_on_insert(void *self, int key) { (void)self; (void)key; }
static void bel_on_evict(void *self, int key) { (void)self; (void)key; }

static void bel_on_access(void *self, int key, bool hit)
{
    struct belady *b = self;
    (void)hit;
    if (b->cursor[key] < b->start[key + 1]) {
        b->cursor[key]++;
    } else if (!b->warned) {
        b->warned = true;
        MOE_WARN("belady policy: an expert is used more often than the future it was given lists: the "
                 "trace is not of this run (record it with moeflow trace from this run's tokens), so the "
                 "evictions are not the optimum");
    }
}

static int bel_victim(void *self, int n, const int *cand)
{
    struct belady *b = self;
    int best = 0;
    uint64_t best_next = bel_next_use(b, cand[0]);
    for (int i = 1; i < n; i++) {
        uint64_t nx = bel_next_use(b, cand[i]);
        if (nx > best_next || (nx == best_next && cand[i] < cand[best])) {
            best = i;
            best_next = nx;
        }
    }
    return best;
}

static void bel_destroy(void *self)
{
    struct belady *b = self;
    free(b->start);
    free(b->pos);
    free(b->cursor);
    free(b);
}

static const struct moe_policy_ops belady_ops = {
    .name = "belady", .on_insert = bel_on_insert, .on_access = bel_on_access,
    .on_evict = bel_on_evict, .victim = bel_victim, .destroy = bel_destroy,
};

struct moe_policy *moe_policy_belady_create(int n_keys, const int *future, size_t n_future)
{
    struct belady *b = calloc(1, sizeof(*b));
    if (!b || n_keys <= 0) goto fail;
    b->n_keys = n_keys;
    b->start = calloc((size_t)n_keys + 1, sizeof(size_t));
    b->pos = malloc((n_future ? n_future : 1) * sizeof(size_t));
    b->cursor = calloc((size_t)n_keys, sizeof(size_t));
    if (!b->start || !b->pos || !b->cursor) goto fail;
    for (size_t i = 0; i < n_future; i++) {
        if (future[i] < 0 || future[i] >= n_keys) {
            bel_destroy(b);
            moe_errorf(MOE_EINVAL, "belady policy: future access %zu has key %d outside [0, %d)",
                       i, future[i], n_keys);
            return NULL;
        }
        b->start[future[i] + 1]++;
    }
    for (int k = 0; k < n_keys; k++) b->start[k + 1] += b->start[k];
    for (int k = 0; k < n_keys; k++) b->cursor[k] = b->start[k];
    for (size_t i = 0; i < n_future; i++) b->pos[b->cursor[future[i]]++] = i;
    for (int k = 0; k < n_keys; k++) b->cursor[k] = b->start[k];
    b->base.ops = &belady_ops;
    b->base.self = b;
    return &b->base;
fail:
    if (b) bel_destroy(b);
    moe_errorf(n_keys <= 0 ? MOE_EINVAL : MOE_ENOMEM, "belady policy: cannot create for %d keys",
               n_keys);
    return NULL;
}

struct moe_policy *moe_policy_create(enum moe_policy_kind k, int n_keys, const int *future,
                                     size_t n_future)
{
    switch (k) {
    case MOE_POLICY_LRU: return moe_policy_lru_create(n_keys);
    case MOE_POLICY_LFU: return moe_policy_lfu_create(n_keys);
    case MOE_POLICY_BELADY:
        if (!future) {
            moe_errorf(MOE_EINVAL, "policy belady needs the future accesses (a routing trace)");
            return NULL;
        }
        return moe_policy_belady_create(n_keys, future, n_future);
    case MOE_POLICY_PREDICTED:
        moe_errorf(MOE_EINVAL, "policy predicted needs the model's layers (moe_policy_create_model)");
        return NULL;
    }
    moe_errorf(MOE_EINVAL, "unknown policy kind %d", (int)k);
    return NULL;
}

struct moe_policy *moe_policy_create_model(enum moe_policy_kind k, int n_layers, int n_experts,
                                           const bool *is_moe, const int *future, size_t n_future)
{
    if (n_layers <= 0 || n_experts <= 0 || (int64_t)n_layers * n_experts > (1 << 28)) {
        moe_errorf(MOE_EINVAL, "%s policy: bad shape (%d layers x %d experts)", moe_policy_name(k),
                   n_layers, n_experts);
        return NULL;
    }
    if (k != MOE_POLICY_PREDICTED) return moe_policy_create(k, n_layers * n_experts, future, n_future);
    int *moe_layers = malloc(sizeof(int) * (size_t)n_layers), n_moe = 0;
    if (!moe_layers) {
        moe_errorf(MOE_ENOMEM, "predicted policy: out of memory");
        return NULL;
    }
    for (int l = 0; l < n_layers; l++)
        if (!is_moe || is_moe[l]) moe_layers[n_moe++] = l;
    struct moe_policy *p = moe_policy_predicted_create(n_layers, n_experts, moe_layers, n_moe);
    free(moe_layers);
    return p;
}

void moe_policy_destroy(struct moe_policy *p)
{
    if (p) p->ops->destroy(p->self);
}
