/* Event log, recording provider and cache/timeline replay (see cachesim.h). */
#include "cachesim.h"

#include "../offload/cache.h"
#include "../offload/policy_predicted.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void moe_evlog_init(struct moe_evlog *l, int n_moe, int n_experts, int top_k)
{
    memset(l, 0, sizeof(*l));
    l->n_moe = n_moe;
    l->n_experts = n_experts;
    l->top_k = top_k;
}

void moe_evlog_free(struct moe_evlog *l)
{
    free(l->ev);
    free(l->ids);
    free(l->scores);
    memset(l, 0, sizeof(*l));
}

void moe_evlog_clear(struct moe_evlog *l)
{
    l->n_ev = l->n_ids = 0;
    l->steps = 0;
    l->dropped_ids = 0;
    l->oom = false;
}

static bool push(struct moe_evlog *l, uint8_t kind, int layer, int distance, int n, const int *ids,
                 const float *scores)
{
    if (!moe_grow((void **)&l->ev, &l->cap_ev, l->n_ev + 1, sizeof(*l->ev), 1024)) return false;
    if (l->n_ids + (size_t)n > l->cap_ids) {
        size_t c = l->cap_ids ? 2 * l->cap_ids : 4096;
        while (c < l->n_ids + (size_t)n) c *= 2;
        int32_t *i = realloc(l->ids, c * sizeof(*i));
        if (i) l->ids = i;
        float *s = realloc(l->scores, c * sizeof(*s));
        if (s) l->scores = s;
        if (!i || !s) return false;
        l->cap_ids = c;
    }
    struct moe_ev *e = &l->ev[l->n_ev++];
    e->kind = kind;
    e->layer = (int16_t)layer;
    e->distance = (int16_t)distance;
    e->n = n;
    e->off = (int64_t)l->n_ids;
    for (int i = 0; i < n; i++) {
        l->ids[l->n_ids + (size_t)i] = ids[i];
        l->scores[l->n_ids + (size_t)i] = scores ? scores[i] : 1.0f;
    }
    l->n_ids += (size_t)n;
    return true;
}

void moe_evlog_step(struct moe_evlog *l)
{
    if (!push(l, MOE_EV_STEP, 0, 0, 0, NULL, NULL)) l->oom = true;
    else l->steps++;
}

/* A hint names experts of one MoE layer: ids outside 0..n_experts-1, or every id of a hint for a layer
 * outside 0..n_moe-1, are left out of the log and counted in dropped_ids (the replay indexes its
 * per-expert state with them). */
void moe_evlog_prefetch(struct moe_evlog *l, int moe_layer, int n, const int *ids, const float *scores, int distance)
{
    if (n <= 0) return;
    if (moe_layer < 0 || moe_layer >= l->n_moe) {
        l->dropped_ids += (uint64_t)n;
        return;
    }
    if (!push(l, MOE_EV_PREFETCH, moe_layer, distance, n, ids, scores)) {
        l->oom = true;
        return;
    }
    struct moe_ev *e = &l->ev[l->n_ev - 1];
    int kept = 0;
    for (int i = 0; i < n; i++) {
        size_t from = (size_t)e->off + (size_t)i, to = (size_t)e->off + (size_t)kept;
        if (l->ids[from] < 0 || l->ids[from] >= l->n_experts) continue;
        l->ids[to] = l->ids[from];
        l->scores[to] = l->scores[from];
        kept++;
    }
    l->dropped_ids += (uint64_t)(n - kept);
    l->n_ids -= (size_t)(n - kept);
    e->n = kept;
    if (!kept) l->n_ev--;
}

void moe_evlog_access(struct moe_evlog *l, int moe_layer, int n, const int *ids)
{
    if (!push(l, MOE_EV_ACCESS, moe_layer, 0, n, ids, NULL)) l->oom = true;
}

/* The truth of steps step + h0 .. step + h1 as hints, issued while MoE layer cur computes (-1: at
 * step start): a hint's distance counts MoE layers from there. */
static void oracle_hints(struct moe_evlog *dst, const int *r, size_t nst, size_t step, int h0, int h1, int cur)
{
    int M = dst->n_moe, K = dst->top_k;
    float one[64];
    for (int i = 0; i < K; i++) one[i] = 1.0f;
    for (int h = h0; h <= h1 && step + (size_t)h < nst; h++)
        for (int l = 0; l < M; l++) {
            const int *ids = r + ((step + (size_t)h) * (size_t)M + (size_t)l) * (size_t)K;
            if (ids[0] >= 0) moe_evlog_prefetch(dst, l, K, ids, one, h * M + l - cur);
        }
}

enum moe_status moe_evlog_oracle(const struct moe_evlog *src, const struct moe_oracle_params *p,
                                 struct moe_evlog *dst)
{
    int M = src->n_moe, K = src->top_k, H = p->horizon;
    moe_evlog_init(dst, M, src->n_experts, K);
    if (H < 0 || K > 64 || p->reveal_layer < -1 || p->reveal_layer >= M || (p->later_only && H < 1))
        return moe_errorf(MOE_EINVAL, "oracle: horizon %d%s, reveal layer %d of %d, top_k %d", H,
                          p->later_only ? " (later steps only)" : "", p->reveal_layer, M, K);
    size_t nst = (size_t)src->steps;
    int *r = malloc(sizeof(int) * (nst ? nst : 1) * (size_t)M * (size_t)K);
    if (!r) return moe_errorf(MOE_ENOMEM, "oracle: out of memory");
    for (size_t i = 0; i < nst * (size_t)M * (size_t)K; i++) r[i] = -1;
    size_t st = 0;
    bool started = false;
    for (size_t i = 0; i < src->n_ev; i++) {
        const struct moe_ev *e = &src->ev[i];
        if (e->kind == MOE_EV_STEP) {
            st += started;
            started = true;
        } else if (e->kind == MOE_EV_ACCESS && started && e->n == K) {
            memcpy(r + (st * (size_t)M + (size_t)e->layer) * (size_t)K, src->ids + e->off, sizeof(int) * (size_t)K);
        }
    }
    int first = p->later_only ? 1 : 0;      /* the first step (relative) the truth covers */
    st = 0;
    started = false;
    int cur = -1;                          /* the MoE layer computing now (-1: the step's start) */
    for (size_t i = 0; i < src->n_ev; i++) {
        const struct moe_ev *e = &src->ev[i];
        if (e->kind == MOE_EV_STEP) {
            st += started;
            started = true;
            cur = -1;
            moe_evlog_step(dst);
            /* at the start: the truth of every step it covers, or with a reveal layer the step's own */
            oracle_hints(dst, r, nst, st, first, p->reveal_layer < 0 ? H : 0, -1);
        } else if (e->kind == MOE_EV_ACCESS) {
            if (started && e->n == K) moe_evlog_access(dst, e->layer, K, src->ids + e->off);
            cur = e->layer;
            if (started && p->reveal_layer >= 0 && cur == p->reveal_layer)
                oracle_hints(dst, r, nst, st, 1, H, cur);
        } else if (p->keep && started) { /* src's hint: kept where the truth does not speak for its step */
            int h = (cur + e->distance - e->layer) / M;
            if (h > H || h < first)
                moe_evlog_prefetch(dst, e->layer, e->n, src->ids + e->off, src->scores + e->off, e->distance);
        }
    }
    free(r);
    if (dst->oom) return moe_errorf(MOE_ENOMEM, "oracle: out of memory");
    return MOE_OK;
}

/* ---- recording provider ---- */

struct recorder {
    struct moe_provider base;
    struct moe_provider *inner;
    struct moe_evlog *log;
    int *moe_index;   /* [n_layers] */
    int n_layers;
};

static int rec_mi(const struct recorder *r, int layer)
{
    return layer >= 0 && layer < r->n_layers ? r->moe_index[layer] : -1;
}

static enum moe_status rec_acquire(void *self, int layer, int n, const int *ids, struct moe_expert_ref *out)
{
    struct recorder *r = self;
    enum moe_status st = r->inner->ops->acquire(r->inner->self, layer, n, ids, out);
    int mi = rec_mi(r, layer);
    if (st == MOE_OK && mi >= 0) moe_evlog_access(r->log, mi, n, ids);
    return st;
}

static void rec_release(void *self, int layer)
{
    struct recorder *r = self;
    r->inner->ops->release(r->inner->self, layer);
}

static void rec_prefetch(void *self, int layer, int n, const int *ids, const float *scores, int distance)
{
    struct recorder *r = self;
    int mi = rec_mi(r, layer);
    if (mi >= 0 && n > 0) moe_evlog_prefetch(r->log, mi, n, ids, scores, distance);
    /* hints beyond this step rank the replay's evictions only; a real inner cache gets this step's */
    if (r->inner->ops->prefetch && distance <= r->log->n_moe)
        r->inner->ops->prefetch(r->inner->self, layer, n, ids, scores, distance);
}

static void rec_step_begin(void *self, int n_tokens)
{
    struct recorder *r = self;
    if (r->inner->ops->step_begin) r->inner->ops->step_begin(r->inner->self, n_tokens);
}

static void rec_step_end(void *self)
{
    struct recorder *r = self;
    if (r->inner->ops->step_end) r->inner->ops->step_end(r->inner->self);
}

static int rec_max_pinned(void *self)
{
    struct recorder *r = self;
    return r->inner->ops->max_pinned ? r->inner->ops->max_pinned(r->inner->self) : 0;
}

static void rec_destroy(void *self)
{
    struct recorder *r = self;
    free(r->moe_index);
    free(r);
}

static const struct moe_provider_ops recorder_ops = {
    .acquire = rec_acquire,
    .release = rec_release,
    .prefetch = rec_prefetch,
    .step_begin = rec_step_begin,
    .step_end = rec_step_end,
    .destroy = rec_destroy,
    .max_pinned = rec_max_pinned,
};

struct moe_provider *moe_evlog_provider_create(struct moe_provider *inner, struct moe_evlog *log,
                                               const int *moe_index, int n_layers)
{
    struct recorder *r = calloc(1, sizeof(*r));
    if (!r || !(r->moe_index = malloc(sizeof(int) * (size_t)n_layers))) {
        free(r);
        moe_errorf(MOE_ENOMEM, "event-log provider: out of memory");
        return NULL;
    }
    memcpy(r->moe_index, moe_index, sizeof(int) * (size_t)n_layers);
    r->n_layers = n_layers;
    r->inner = inner;
    r->log = log;
    r->base.ops = &recorder_ops;
    r->base.self = r;
    return &r->base;
}

/* ---- replay ---- */

const char *moe_cache_policy_name(enum moe_cache_policy p)
{
    switch (p) {
    case MOE_CACHE_LRU: return "lru";
    case MOE_CACHE_LFU: return "lfu";
    case MOE_CACHE_PREDICTED: return "predicted";
    case MOE_CACHE_BELADY: return "belady";
    }
    return "?";
}

bool moe_cache_policy_parse(const char *s, enum moe_cache_policy *out)
{
    for (int p = MOE_CACHE_LRU; p <= MOE_CACHE_BELADY; p++)
        if (s && !strcmp(s, moe_cache_policy_name((enum moe_cache_policy)p))) {
            *out = (enum moe_cache_policy)p;
            return true;
        }
    return false;
}

struct req {
    int key;
    int64_t need;     /* position step * n_moe + mi it is needed at */
    float score;
    double issue;     /* time issued */
};

struct sim {
    const struct moe_evlog *l;
    const struct moe_cachesim_params *p;
    struct moe_cachesim_stats *st;
    struct moe_cache *c;
    struct moe_policy *pol;  /* owned by c */
    int n_keys, M, E;
    double *ready;           /* [n_keys] time the key's transfer lands */
    bool *pf_pending;        /* [n_keys] prefetched, not yet acquired */
    bool *queued;            /* [n_keys] */
    struct req *q;           /* pending prefetch requests */
    size_t nq, capq;
    double link_free;
};

static void on_evicted(struct sim *s, int key)
{
    if (key < 0) return;
    s->pf_pending[key] = false;
    s->ready[key] = 0;
}

static void do_prefetch(struct sim *s, int key, double start)
{
    /* under the predicted policy only into a free slot or over an expert needed later, as the live cache */
    if (moe_cache_slot_of(s->c, key) >= 0 || !moe_policy_predicted_admit(s->c, key)) {
        s->st->prefetch_dropped++;
        return;
    }
    int slot, evicted;
    bool inserted;
    if (moe_cache_prefetch(s->c, key, &slot, &inserted, &evicted) != MOE_OK || !inserted) {
        s->st->prefetch_dropped++;
        return;
    }
    on_evicted(s, evicted);
    s->st->transfers++;
    s->st->prefetches++;
    s->pf_pending[key] = true;
    s->ready[key] = start + s->p->xfer_s;
    if (s->p->xfer_s > 0) s->link_free = s->ready[key];
}

/* Start queued prefetches whose transfer can begin by time T, in order of need. */
static void advance_link(struct sim *s, double T)
{
    while (s->nq > 0) {
        size_t b = 0;
        for (size_t i = 1; i < s->nq; i++) {
            const struct req *a = &s->q[i], *c = &s->q[b];
            if (a->need < c->need || (a->need == c->need && (a->score > c->score ||
                                                              (a->score == c->score && a->key < c->key))))
                b = i;
        }
        double start = s->link_free > s->q[b].issue ? s->link_free : s->q[b].issue;
        if (start > T) break;
        struct req r = s->q[b];
        s->q[b] = s->q[--s->nq];
        s->queued[r.key] = false;
        do_prefetch(s, r.key, start);
    }
}

/* Drop queued requests needed at or before position pos (their layer passed). */
static void drop_stale(struct sim *s, int64_t pos)
{
    for (size_t i = 0; i < s->nq;) {
        if (s->q[i].need <= pos) {
            s->queued[s->q[i].key] = false;
            s->q[i] = s->q[--s->nq];
            s->st->prefetch_dropped++;
        } else {
            i++;
        }
    }
}

/* A queued request whose key is acquired before the link started it: dropped, stale. */
static void unqueue(struct sim *s, int key)
{
    for (size_t i = 0; i < s->nq; i++)
        if (s->q[i].key == key) {
            s->q[i] = s->q[--s->nq];
            s->queued[key] = false;
            s->st->prefetch_dropped++;
            return;
        }
}

enum moe_status moe_cachesim_bytes_moved(const struct moe_cachesim_stats *s, uint64_t expert_bytes, uint64_t *out)
{
    if (moe_mul_u64(s->transfers, expert_bytes, out)) return MOE_OK;
    *out = 0;
    return moe_errorf(MOE_ERANGE, "bytes moved (%llu transfers x %llu bytes) overflows 64 bits; give a smaller "
                      "--expert-bytes", (unsigned long long)s->transfers, (unsigned long long)expert_bytes);
}

void moe_cachesim_json_counts(FILE *f, const struct moe_cachesim_stats *s, long capacity, long slots,
                              uint64_t bytes_moved)
{
    double steps = (double)s->steps;
    fprintf(f, ",\"capacity\":%ld,\"slots_total\":%ld,"
            "\"tokens\":%llu,\"accesses\":%llu,\"hits\":%llu,\"misses\":%llu,\"evictions\":%llu,"
            "\"hit_rate\":%.6f,\"transfers_per_token\":%.6f,\"bytes_moved\":%llu,"
            "\"prefetches\":%llu,\"prefetch_useful\":%llu,\"prefetch_useful_frac\":%.6f",
            capacity, slots, (unsigned long long)s->steps,
            (unsigned long long)s->accesses, (unsigned long long)s->hits,
            (unsigned long long)(s->accesses - s->hits), (unsigned long long)s->evictions,
            s->accesses ? (double)s->hits / (double)s->accesses : 0,
            steps > 0 ? (double)s->transfers / steps : 0, (unsigned long long)bytes_moved,
            (unsigned long long)s->prefetches, (unsigned long long)s->prefetch_useful,
            s->prefetches ? (double)s->prefetch_useful / (double)s->prefetches : 0);
}

enum moe_status moe_cachesim_run(const struct moe_evlog *l, const struct moe_cachesim_params *p,
                                 struct moe_cachesim_stats *out)
{
    /* Keys over MoE layers only: decoder layer i = MoE index i. */
    int ml[MOE_MAX_LAYERS];
    if (l->n_moe <= 0 || l->n_moe > MOE_MAX_LAYERS)
        return moe_errorf(MOE_EINVAL, "cache replay: %d MoE layers (1..%d)", l->n_moe, MOE_MAX_LAYERS);
    for (int i = 0; i < l->n_moe; i++) ml[i] = i;
    return moe_cachesim_run_layers(l, ml, l->n_moe, p, out);
}

enum moe_status moe_cachesim_run_layers(const struct moe_evlog *l, const int *moe_layers, int n_layers,
                                        const struct moe_cachesim_params *p, struct moe_cachesim_stats *out)
{
    enum moe_status st = MOE_OK;
    struct sim s = { .l = l, .p = p, .st = out, .M = l->n_moe, .E = l->n_experts };
    memset(out, 0, sizeof(*out));
    if (l->oom) return moe_errorf(MOE_ENOMEM, "cache replay: the event log is incomplete (ran out of memory)");
    if (p->capacity < l->top_k)
        return moe_errorf(MOE_EINVAL, "cache replay: capacity %d is below top_k %d (a layer's experts must fit at once)",
                          p->capacity, l->top_k);
    s.n_keys = n_layers * l->n_experts;
    int *future = NULL;
    size_t n_future = 0;
    if (p->policy == MOE_CACHE_BELADY) {
        future = malloc(sizeof(int) * (l->n_ids + 1));
        if (!future) return moe_errorf(MOE_ENOMEM, "cache replay: out of memory");
        for (size_t i = 0; i < l->n_ev; i++) {
            const struct moe_ev *e = &l->ev[i];
            if (e->kind != MOE_EV_ACCESS) continue;
            for (int j = 0; j < e->n; j++)
                future[n_future++] = moe_layers[e->layer] * l->n_experts + l->ids[e->off + j];
        }
    }
    switch (p->policy) {
    case MOE_CACHE_LRU: s.pol = moe_policy_lru_create(s.n_keys); break;
    case MOE_CACHE_LFU: s.pol = moe_policy_lfu_create(s.n_keys); break;
    case MOE_CACHE_BELADY: s.pol = moe_policy_belady_create(s.n_keys, future, n_future); break;
    case MOE_CACHE_PREDICTED: s.pol = moe_policy_predicted_create(n_layers, l->n_experts, moe_layers, l->n_moe); break;
    }
    free(future);
    if (!s.pol) return moe_errorf(MOE_ENOMEM, "cache replay: cannot create policy %s", moe_cache_policy_name(p->policy));
    struct moe_cache_params cp = { .n_keys = s.n_keys, .capacity = p->capacity, .policy = s.pol };
    s.c = moe_cache_create(&cp);
    s.ready = calloc((size_t)s.n_keys, sizeof(double));
    s.pf_pending = calloc((size_t)s.n_keys, sizeof(bool));
    s.queued = calloc((size_t)s.n_keys, sizeof(bool));
    if (!s.c || !s.ready || !s.pf_pending || !s.queued) {
        st = moe_errorf(MOE_ENOMEM, "cache replay: out of memory");
        goto out;
    }
    bool use_pf = p->prefetch && p->policy != MOE_CACHE_BELADY;
    bool timeline = p->xfer_s > 0;
    double t = 0;
    int64_t step = -1, last_pos = -1;
    int keys[64];
    for (size_t i = 0; i < l->n_ev; i++) {
        const struct moe_ev *e = &l->ev[i];
        if (e->kind == MOE_EV_STEP) {
            step++;
            continue;
        }
        if (step < 0) step = 0;
        int64_t pos = step * s.M + e->layer;
        int base = moe_layers[e->layer] * l->n_experts;
        if (e->kind == MOE_EV_PREFETCH) {
            /* needed at the occurrence of the layer nearest to now + distance */
            int64_t need = moe_policy_predicted_occurrence(last_pos, e->layer, s.M, e->distance);
            /* hints beyond this step only inform the policy */
            bool act = use_pf && e->distance <= s.M;
            for (int j = 0; j < e->n; j++) {
                int key = base + l->ids[e->off + j];
                float sc = l->scores[e->off + j];
                if (p->policy == MOE_CACHE_PREDICTED) moe_cache_predict(s.c, key, sc, e->distance);
                if (!act || sc < p->act_min_score) continue;
                if (moe_cache_slot_of(s.c, key) >= 0 || s.queued[key]) {
                    s.st->prefetch_dropped++;
                    continue;
                }
                if (!timeline) {
                    do_prefetch(&s, key, t);
                    continue;
                }
                if (!moe_grow((void **)&s.q, &s.capq, s.nq + 1, sizeof(*s.q), 256)) {
                    st = moe_errorf(MOE_ENOMEM, "cache replay: out of memory");
                    goto out;
                }
                s.q[s.nq++] = (struct req){ .key = key, .need = need, .score = sc, .issue = t };
                s.queued[key] = true;
            }
            continue;
        }
        /* access */
        if (e->n > (int)MOE_ARRAY_LEN(keys)) {
            st = moe_errorf(MOE_EINVAL, "cache replay: %d experts in one access (at most %zu)", e->n,
                            MOE_ARRAY_LEN(keys));
            goto out;
        }
        if (timeline) advance_link(&s, t);
        double ready = t;
        for (int j = 0; j < e->n; j++) {
            int key = keys[j] = base + l->ids[e->off + j];
            if (s.queued[key]) unqueue(&s, key);
            int slot, evicted;
            bool miss;
            if ((st = moe_cache_acquire(s.c, key, &slot, &miss, &evicted))) goto out;
            on_evicted(&s, evicted);
            out->accesses++;
            if (!miss) {
                out->hits++;
                if (s.ready[key] > t) {
                    out->late_hits++;
                    if (s.ready[key] > ready) ready = s.ready[key];
                }
                if (s.pf_pending[key]) {
                    out->prefetch_useful++;
                    s.pf_pending[key] = false;
                }
            } else {
                out->transfers++;
                double start = s.link_free > t ? s.link_free : t;
                s.ready[key] = start + p->xfer_s;
                if (timeline) s.link_free = s.ready[key];
                if (s.ready[key] > ready) ready = s.ready[key];
            }
        }
        drop_stale(&s, pos);
        last_pos = pos;
        if (timeline) {
            out->stall_s += ready - t;
            t = ready + p->layer_s;
        }
        out->compute_s += p->layer_s;
        for (int j = 0; j < e->n; j++) moe_cache_unpin(s.c, keys[j]);
    }
    out->steps = step + 1 > 0 ? (uint64_t)(step + 1) : 0;
    struct moe_cache_stats cs;
    moe_cache_get_stats(s.c, &cs);
    out->evictions = cs.evictions;
    out->total_s = out->stall_s + out->compute_s;
out:
    moe_cache_destroy(s.c); /* owns the policy */
    free(s.ready);
    free(s.pf_pending);
    free(s.queued);
    free(s.q);
    return st;
}
