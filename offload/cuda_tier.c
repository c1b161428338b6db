/* The GPU expert tier (see cuda_tier.h): device slots, a copy stream with
 * per-slot events, and an expert provider over a model with a pinned host pool. */
#include "cuda_tier.h"

#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cuda/cuda_backend.h"
#include "../kernels/cuda/cuda_check.h"
#include "cache.h"
#include "policy_predicted.h"

#define CUDA_TIER_STAGES 4 /* pinned staging buffers of host_fill, each one expert */

struct moe_cuda_tier {
    struct moe_cuda_ctx *c;
    cudaStream_t compute;          /* the backend's stream (kernels read the slots there) */
    cudaStream_t copy;             /* host -> device copies */
    struct moe_cache *cache;       /* residency and eviction decisions */
    int n_layers, n_experts, slots;
    bool *is_moe;                  /* [n_layers] MoE layers, copied from the params (NULL = every layer) */
    size_t mat_bytes[3], mat_off[3], slot_bytes;
    char *d_pool;                  /* [slots][gate | up | down] */
    cudaEvent_t *ready;            /* [slots] recorded on copy after the slot's last fill */
    cudaEvent_t *freed;            /* [slots] recorded on compute at the slot's last release */
    int *pins;                     /* keys acquired and not yet released */
    int n_pins, pin_cap;
    int *keys;                     /* [cap_keys] an acquire's keys */
    size_t cap_keys;
    const void *(*host_mat)(void *ud, int layer, int expert, int which);
    enum moe_status (*host_fill)(void *ud, int layer, int expert, void *const dst[3]);
    void *ud;
    cudaEvent_t *t0, *t1;          /* time_copies: [slots] timing events around the last fill */
    bool *timed;                   /* [slots] the last fill's timing is not yet added to copy_s */
    char *h_stage;                 /* host_fill only: [n_stage][stage_bytes] pinned staging, a ring */
    size_t stage_bytes;            /* one expert as host_fill writes it: slot_bytes, or its FP8 records */
    int fp8_block[2];              /* FP8 records: their blocks; 0 = host_fill writes the slot's bytes */
    int64_t rows[3], cols[3];      /* ... the matrices they make */
    size_t rec_off[3], rec_bytes[3];
    char *d_stage;                 /* ... [n_stage][stage_bytes] device copies of the staged records */
    bool stage_pinned;
    int n_stage, stage_next;       /* buffers in the ring, the one the next fill uses */
    cudaEvent_t *stage_done;       /* [n_stage] recorded on copy after the copies out of the buffer */
    struct moe_cuda_tier_stats st;
    bool poisoned;
    pthread_mutex_t mu;            /* cache and st: get_stats runs on the server's threads */
};

/* A sticky error poisons the tier and the backend context it shares (the
 * device is unusable for both: moe_backend_cuda_poisoned() turns true too). */
static void poison(struct moe_cuda_tier *t)
{
    t->poisoned = true;
    moe_cuda_ctx_mark_poisoned(t->c);
}

/* After a failed call (st): a sticky error poisons the tier and is MOE_EDEVLOST. */
static enum moe_status note(struct moe_cuda_tier *t, enum moe_status st)
{
    if (st != MOE_OK && moe_cuda_is_sticky(cudaPeekAtLastError())) {
        poison(t);
        st = moe_cuda_lost(st);
    }
    return st;
}

/* Check a CUDA call inside a function with `st`, the tier `t` and label `out`. */
#define TCK(call)                                                             \
    do {                                                                      \
        st = note(t, MOE_CUDA_CHECK(call));                                   \
        if (st != MOE_OK)                                                     \
            goto out;                                                         \
    } while (0)

static enum moe_status poisoned_err(const struct moe_cuda_tier *t)
{
    return moe_errorf(MOE_EDEVLOST, "GPU expert tier: an earlier sticky CUDA error poisoned the "
                      "device; the process must restart");
}

/* Add the last timed fill of slot to copy_s (waits for it to finish). */
static enum moe_status add_copy_time(struct moe_cuda_tier *t, int slot)
{
    enum moe_status st = MOE_OK;
    float ms = 0;
    if (!t->timed || !t->timed[slot]) return MOE_OK;
    TCK(cudaEventSynchronize(t->t1[slot]));
    TCK(cudaEventElapsedTime(&ms, t->t0[slot], t->t1[slot]));
    t->st.copy_s += ms * 1e-3;
    t->timed[slot] = false;
out:
    return st;
}

/* Copy key's three matrices into slot on the copy stream, after the compute
 * stream has released the slot's previous contents. */
static enum moe_status load(struct moe_cuda_tier *t, int key, int slot)
{
    enum moe_status st = MOE_OK;
    int layer = key / t->n_experts, e = key % t->n_experts;
    const void *src[3];
    char *dst = t->d_pool + (size_t)slot * t->slot_bytes;
    int b = -1; /* staging buffer */
    const size_t *off = t->fp8_block[0] ? t->rec_off : t->mat_off;
    if (t->host_fill || t->fp8_block[0]) { /* a staging buffer: host (host_fill) and device (FP8) */
        b = t->stage_next;
        t->stage_next = (b + 1) % t->n_stage;
        /* the buffer's previous copy (and decode) read it: let that one finish */
        TCK(cudaEventSynchronize(t->stage_done[b]));
    }
    if (t->host_fill) {
        char *stage = t->h_stage + (size_t)b * t->stage_bytes;
        void *sd[3] = { stage + off[0], stage + off[1], stage + off[2] };
        if ((st = t->host_fill(t->ud, layer, e, sd)) != MOE_OK) goto out;
        for (int w = 0; w < 3; w++) src[w] = sd[w];
    } else {
        for (int w = 0; w < 3; w++) {
            src[w] = t->host_mat(t->ud, layer, e, w);
            if (!src[w])
                return moe_errorf(MOE_ENOENT, "GPU expert tier: layer %d has no routed expert %d", layer, e);
        }
    }
    TCK(cudaStreamWaitEvent(t->copy, t->freed[slot], 0));
    if (t->timed) {
        if ((st = add_copy_time(t, slot)) != MOE_OK) goto out;
        TCK(cudaEventRecord(t->t0[slot], t->copy)); /* after the wait: only the copy is timed */
    }
    if (t->fp8_block[0]) { /* the records to the device, then their BF16 values into the slot */
        char *ds = t->d_stage + (size_t)b * t->stage_bytes;
        for (int w = 0; w < 3; w++)
            TCK(cudaMemcpyAsync(ds + off[w], src[w], t->rec_bytes[w], cudaMemcpyHostToDevice, t->copy));
        for (int w = 0; w < 3 && st == MOE_OK; w++)
            st = moe_cuda_fp8_record_decode(t->c, t->copy, ds + off[w], t->rows[w], t->cols[w], t->fp8_block[0],
                                            t->fp8_block[1], dst + t->mat_off[w]);
        if ((st = note(t, st)) != MOE_OK)
            goto out;
    } else {
        for (int w = 0; w < 3; w++)
            TCK(cudaMemcpyAsync(dst + t->mat_off[w], src[w], t->mat_bytes[w], cudaMemcpyHostToDevice, t->copy));
    }
    if (t->timed) {
        TCK(cudaEventRecord(t->t1[slot], t->copy));
        t->timed[slot] = true;
    }
    if (b >= 0) TCK(cudaEventRecord(t->stage_done[b], t->copy));
    TCK(cudaEventRecord(t->ready[slot], t->copy));
    /* counted once the whole load is on the copy stream, with its ready event */
    t->st.loads++;
    t->st.bytes_h2d += t->fp8_block[0] ? t->rec_bytes[0] + t->rec_bytes[1] + t->rec_bytes[2] : t->slot_bytes;
out:
    if (st != MOE_OK) moe_error_prefix(st, "loading layer %d expert %d into GPU slot %d", layer, e, slot);
    return st;
}

static void unpin_last(struct moe_cuda_tier *t, int n)
{
    for (int i = 0; i < n && t->n_pins > 0; i++) moe_cache_unpin(t->cache, t->pins[--t->n_pins]);
}

/* The cache's fill of a slot an acquire missed in. */
static enum moe_status fill_slot(void *ud, int key, int slot)
{
    return load(ud, key, slot);
}

/* An acquire checked whole before it changes anything (no hit or miss counted, no copy, no pin): every
 * id is an expert of a MoE layer and there is room to record the pins; moe_cache_acquire_n checks that
 * the experts fit in the slots beside those pinned. */
static enum moe_status check_acquire(struct moe_cuda_tier *t, int layer, int n, const int *ids)
{
    if (layer < 0 || layer >= t->n_layers || n < 0)
        return moe_errorf(MOE_EINVAL, "GPU expert tier: layer %d of %d, %d experts", layer, t->n_layers, n);
    if (t->is_moe && !t->is_moe[layer])
        return moe_errorf(MOE_ENOENT, "GPU expert tier: layer %d has no routed experts (not a MoE layer)", layer);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n_experts)
            return moe_errorf(MOE_EINVAL, "layer %d: expert id %d outside 0..%d", layer, ids[i], t->n_experts - 1);
    if (n > t->pin_cap - t->n_pins)
        return moe_errorf(MOE_EBUSY, "layer %d: %d experts beside %d acquired without release; release each layer "
                          "before acquiring more", layer, n, t->n_pins);
    if (!moe_grow((void **)&t->keys, &t->cap_keys, (size_t)n, sizeof(*t->keys), 64))
        return moe_errorf(MOE_ENOMEM, "GPU expert tier: out of host memory for %d experts", n);
    return MOE_OK;
}

static enum moe_status acquire_locked(struct moe_cuda_tier *t, int layer, int n, const int *ids,
                                      struct moe_expert_ref *out)
{
    enum moe_status st = MOE_OK;
    int failed;
    if (moe_cuda_tier_poisoned(t)) return poisoned_err(t);
    if ((st = check_acquire(t, layer, n, ids)) != MOE_OK) return st;
    if ((st = moe_cuda_ctx_bind(t->c)) != MOE_OK) return st; /* the caller's thread may be new */
    for (int i = 0; i < n; i++) t->keys[i] = layer * t->n_experts + ids[i];
    const struct moe_cache_fill f = { .ud = t, .fill = fill_slot };
    if ((st = moe_cache_acquire_n(t->cache, t->keys, n, &f, &failed)) != MOE_OK) {
        if (failed < 0) /* refused whole: a load's failure names its expert already */
            moe_error_prefix(st, "layer %d: %d experts at once, %d GPU expert slots; raise the GPU-tier slots "
                             "(--gpu-experts) to at least the experts acquired at once", layer, n, t->slots);
        return st;
    }
    for (int i = 0; i < n; i++) t->pins[t->n_pins++] = t->keys[i];
    for (int i = 0; i < n; i++) {
        int key = t->keys[i];
        int slot = moe_cache_slot_of(t->cache, key);
        cudaError_t q = cudaEventQuery(t->ready[slot]);
        if (q == cudaErrorNotReady) {
            /* still in flight: the compute stream (not the host) waits for it */
            (void)moe_cuda_drop_error(q);
            TCK(cudaStreamWaitEvent(t->compute, t->ready[slot], 0));
            t->st.waits++;
        } else if (q != cudaSuccess) {
            /* the slot's fill failed: its bytes are not the expert's.  Forgotten, so that a later
             * acquire loads it again (the device may stay usable: MOE_EDEVICE fails this forward only) */
            st = note(t, MOE_CUDA_CHECK(q));
            moe_cache_drop(t->cache, key);
            goto out;
        }
        const char *base = t->d_pool + (size_t)slot * t->slot_bytes;
        out[i].gate = base + t->mat_off[0];
        out[i].up = base + t->mat_off[1];
        out[i].down = base + t->mat_off[2];
        out[i].dtype = MOE_DT_BF16;
    }
    return MOE_OK;
out:
    unpin_last(t, n);
    return st;
}

static void release_locked(struct moe_cuda_tier *t, int layer)
{
    int keep = 0;
    bool live = !moe_cuda_tier_poisoned(t);
    if (live) (void)moe_cuda_ctx_bind(t->c); /* a failure shows in the event record below */
    for (int i = 0; i < t->n_pins; i++) {
        int key = t->pins[i];
        if (key / t->n_experts != layer) {
            t->pins[keep++] = key;
            continue;
        }
        int slot = moe_cache_slot_of(t->cache, key);
        if (slot >= 0 && live && !t->poisoned) {
            (void)note(t, MOE_CUDA_CHECK(cudaEventRecord(t->freed[slot], t->compute)));
        }
        moe_cache_unpin(t->cache, key);
    }
    t->n_pins = keep;
}

static void prefetch_locked(struct moe_cuda_tier *t, int layer, int n, const int *ids, const float *scores,
                            int distance)
{
    if (moe_cuda_tier_poisoned(t) || layer < 0 || layer >= t->n_layers) return;
    if (t->is_moe && !t->is_moe[layer]) return; /* a dense layer: no expert to load, none to evict */
    if (moe_cuda_ctx_bind(t->c) != MOE_OK) return;
    for (int i = 0; i < n; i++) {
        int slot, ev;
        bool inserted;
        if (ids[i] < 0 || ids[i] >= t->n_experts) continue;
        int key = layer * t->n_experts + ids[i];
        if (scores) moe_cache_predict(t->cache, key, scores[i], distance);
        if (moe_cache_slot_of(t->cache, key) < 0 && !moe_policy_predicted_admit(t->cache, key)) continue;
        if (moe_cache_prefetch(t->cache, key, &slot, &inserted, &ev) != MOE_OK || !inserted) continue;
        if (load(t, key, slot) != MOE_OK) {
            MOE_WARN("prefetch: %s", moe_last_error());
            moe_cache_drop(t->cache, key);
        }
    }
}

/* As the tiered provider's hint: each id of a MoE layer goes to the policy's
 * prediction ranking (moe_cache_predict); ids outside the layer's experts
 * and dense layers are skipped.  Host bookkeeping only: no CUDA call, so no
 * device binding.  The *_locked functions run under the tier's mutex, taken by
 * their public wrappers: the entries run on the engine's thread, but the stats
 * are read from the server's threads (/metrics, ModelInfo). */
static void hint_locked(struct moe_cuda_tier *t, int layer, int n, const int *ids, const float *scores,
                        int distance)
{
    if (!scores || moe_cuda_tier_poisoned(t) || layer < 0 || layer >= t->n_layers) return;
    if (t->is_moe && !t->is_moe[layer]) return;
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < t->n_experts)
            moe_cache_predict(t->cache, layer * t->n_experts + ids[i], scores[i], distance);
}

enum moe_status moe_cuda_tier_acquire(struct moe_cuda_tier *t, int layer, int n, const int *ids,
                                      struct moe_expert_ref *out)
{
    pthread_mutex_lock(&t->mu);
    enum moe_status st = acquire_locked(t, layer, n, ids, out);
    pthread_mutex_unlock(&t->mu);
    return st;
}
void moe_cuda_tier_release(struct moe_cuda_tier *t, int layer)
{
    pthread_mutex_lock(&t->mu);
    release_locked(t, layer);
    pthread_mutex_unlock(&t->mu);
}
void moe_cuda_tier_prefetch(struct moe_cuda_tier *t, int layer, int n, const int *ids, const float *scores,
                            int distance)
{
    pthread_mutex_lock(&t->mu);
    prefetch_locked(t, layer, n, ids, scores, distance);
    pthread_mutex_unlock(&t->mu);
}
void moe_cuda_tier_hint(struct moe_cuda_tier *t, int layer, int n, const int *ids, const float *scores,
                        int distance)
{
    pthread_mutex_lock(&t->mu);
    hint_locked(t, layer, n, ids, scores, distance);
    pthread_mutex_unlock(&t->mu);
}

static enum moe_status drain_locked(struct moe_cuda_tier *t)
{
    enum moe_status st = MOE_OK;
    if (moe_cuda_tier_poisoned(t)) return poisoned_err(t);
    if ((st = moe_cuda_ctx_bind(t->c)) != MOE_OK) return st;
    TCK(cudaStreamSynchronize(t->copy));
    for (int i = 0; t->timed && i < t->slots; i++)
        if ((st = add_copy_time(t, i)) != MOE_OK) goto out;
out:
    return st;
}

enum moe_status moe_cuda_tier_drain(struct moe_cuda_tier *t)
{
    pthread_mutex_lock(&t->mu);
    enum moe_status st = drain_locked(t);
    pthread_mutex_unlock(&t->mu);
    return st;
}

void moe_cuda_tier_get_stats(const struct moe_cuda_tier *t, struct moe_cuda_tier_stats *out)
{
    struct moe_cache_stats cs;
    pthread_mutex_t *mu = (pthread_mutex_t *)&t->mu;
    pthread_mutex_lock(mu);
    moe_cache_get_stats(t->cache, &cs);
    *out = t->st;
    out->hits = cs.hits;
    out->misses = cs.misses;
    out->prefetches = cs.prefetches;
    out->prefetch_hits = cs.prefetch_hits;
    out->evictions = cs.evictions;
    out->slots = t->slots;
    out->slot_bytes = t->slot_bytes;
    out->pinned = moe_cache_pinned(t->cache);
    out->resident = 0;
    for (int i = 0; i < t->slots; i++) out->resident += moe_cache_key_at(t->cache, i) >= 0;
    pthread_mutex_unlock(mu);
}

bool moe_cuda_tier_poisoned(const struct moe_cuda_tier *t)
{
    return t->poisoned || moe_cuda_ctx_poisoned(t->c);
}

void moe_cuda_tier_destroy(struct moe_cuda_tier *t)
{
    if (!t) return;
    moe_cuda_ctx_bind_teardown(t->c); /* poisoned or not: the events, pool and stream are its device's */
    if (!moe_cuda_tier_poisoned(t)) {
        if (t->copy) (void)cudaStreamSynchronize(t->copy);
        if (t->compute) (void)cudaStreamSynchronize(t->compute);
    }
    for (int i = 0; t->ready && i < t->slots; i++)
        if (t->ready[i]) cudaEventDestroy(t->ready[i]);
    for (int i = 0; t->freed && i < t->slots; i++)
        if (t->freed[i]) cudaEventDestroy(t->freed[i]);
    for (int i = 0; t->t0 && i < t->slots; i++)
        if (t->t0[i]) cudaEventDestroy(t->t0[i]);
    for (int i = 0; t->t1 && i < t->slots; i++)
        if (t->t1[i]) cudaEventDestroy(t->t1[i]);
    for (int i = 0; t->stage_done && i < t->n_stage; i++)
        if (t->stage_done[i]) cudaEventDestroy(t->stage_done[i]);
    if (t->d_pool) cudaFree(t->d_pool);
    if (t->d_stage) cudaFree(t->d_stage);
    moe_cuda_host_free(t->h_stage, t->stage_pinned);
    if (t->copy) cudaStreamDestroy(t->copy);
    (void)cudaGetLastError();
    moe_cache_destroy(t->cache);
    free(t->ready);
    free(t->freed);
    free(t->t0);
    free(t->t1);
    free(t->stage_done);
    free(t->timed);
    free(t->pins);
    free(t->keys);
    free(t->is_moe);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

struct moe_cuda_tier *moe_cuda_tier_create(struct moe_cuda_ctx *c, const struct moe_cuda_tier_params *p)
{
    enum moe_status st = MOE_OK;
    struct moe_cuda_tier *t;
    int n_keys;
    if (!c || !p || !p->host_mat == !p->host_fill || p->n_layers <= 0 || p->n_experts <= 0 || p->slots < 1 ||
        !p->mat_bytes[0] || !p->mat_bytes[1] || !p->mat_bytes[2] ||
        (int64_t)p->n_layers * p->n_experts > (1 << 28)) {
        moe_errorf(MOE_EINVAL, "GPU expert tier: needs a context, one host source (host_mat or "
                   "host_fill), layers >= 1, "
                   "experts >= 1, slots >= 1 (got %d) and non-zero matrix sizes", p ? p->slots : 0);
        return NULL;
    }
    n_keys = p->n_layers * p->n_experts;
    int n_routed = n_keys; /* keys a slot can hold: the MoE layers' experts */
    for (int l = 0; p->is_moe && l < p->n_layers; l++) n_routed -= p->is_moe[l] ? 0 : p->n_experts;
    if (n_routed == 0) {
        moe_errorf(MOE_EINVAL, "GPU expert tier: is_moe marks none of the %d layers: there are no experts to hold",
                   p->n_layers);
        return NULL;
    }
    t = calloc(1, sizeof(*t));
    if (!t) {
        moe_errorf(MOE_ENOMEM, "GPU expert tier: out of host memory");
        return NULL;
    }
    pthread_mutex_init(&t->mu, NULL);
    t->c = c;
    t->compute = (cudaStream_t)moe_cuda_ctx_stream(c);
    if ((st = moe_cuda_ctx_bind(c)) != MOE_OK) goto out;
    t->n_layers = p->n_layers;
    t->n_experts = p->n_experts;
    if (p->is_moe) {
        if (!(t->is_moe = malloc(sizeof(bool) * (size_t)p->n_layers))) {
            st = moe_errorf(MOE_ENOMEM, "GPU expert tier: out of host memory");
            goto out;
        }
        memcpy(t->is_moe, p->is_moe, sizeof(bool) * (size_t)p->n_layers);
    }
    t->slots = p->slots < n_routed ? p->slots : n_routed; /* a slot more would never be used */
    t->host_mat = p->host_mat;
    t->host_fill = p->host_fill;
    t->ud = p->ud;
    for (int w = 0; w < 3; w++) {
        t->mat_off[w] = t->slot_bytes;
        t->mat_bytes[w] = p->mat_bytes[w];
        t->slot_bytes += (p->mat_bytes[w] + 255) & ~(size_t)255; /* 256-byte aligned matrices */
    }
    t->stage_bytes = t->slot_bytes;
    if (p->fp8_block[0] > 0) {
        if (p->fp8_block[1] <= 0) {
            st = moe_errorf(MOE_EINVAL, "GPU expert tier: FP8 records need a block size (got %d x %d)",
                            p->fp8_block[0], p->fp8_block[1]);
            goto out;
        }
        t->fp8_block[0] = p->fp8_block[0];
        t->fp8_block[1] = p->fp8_block[1];
        t->stage_bytes = 0;
        for (int w = 0; w < 3; w++) {
            t->rows[w] = p->mat_rows[w];
            t->cols[w] = p->mat_cols[w];
            if ((uint64_t)t->rows[w] * (uint64_t)t->cols[w] * 2 != p->mat_bytes[w] ||
                p->rec_bytes[w] != moe_fp8_record_bytes(t->rows[w], t->cols[w], p->fp8_block[0], p->fp8_block[1])) {
                st = moe_errorf(MOE_EINVAL, "GPU expert tier: matrix %d is %lld x %lld: %zu BF16 bytes and %zu FP8 "
                                "record bytes do not fit it", w, (long long)t->rows[w], (long long)t->cols[w],
                                p->mat_bytes[w], p->rec_bytes[w]);
                goto out;
            }
            t->rec_off[w] = t->stage_bytes;
            t->rec_bytes[w] = p->rec_bytes[w];
            t->stage_bytes += (p->rec_bytes[w] + 255) & ~(size_t)255;
        }
    }
    struct moe_cache_params cp = {
        .n_keys = n_keys,
        .capacity = t->slots,
        .group_size = p->n_experts,
        .quota = NULL,
        .policy = moe_policy_create_model(p->policy, p->n_layers, p->n_experts, p->is_moe, p->future,
                                          p->n_future),
    };
    if (!cp.policy) {
        st = moe_errorf(MOE_EINVAL, "GPU expert tier: cannot create policy %s",
                        moe_policy_name(p->policy));
        goto out;
    }
    t->cache = moe_cache_create(&cp);
    t->ready = calloc((size_t)t->slots, sizeof(cudaEvent_t));
    t->freed = calloc((size_t)t->slots, sizeof(cudaEvent_t));
    t->pin_cap = 2 * t->slots + 64;
    t->pins = calloc((size_t)t->pin_cap, sizeof(int));
    if (!t->cache || !t->ready || !t->freed || !t->pins) {
        st = moe_errorf(MOE_ENOMEM, "GPU expert tier: out of host memory for %d slots", t->slots);
        goto out;
    }
    {
        size_t total = t->slot_bytes * (size_t)t->slots, fr, tot;
        cudaError_t e = cudaMalloc((void **)&t->d_pool, total);
        if (e != cudaSuccess) {
            t->d_pool = NULL;
            if ((st = moe_cuda_malloc_failed(c, e, "GPU expert tier slots", &fr, &tot)) == MOE_ENOMEM)
                st = moe_errorf(MOE_ENOMEM, "GPU expert tier: %d slots x %zu MiB = %zu MiB do not fit on "
                                "the device (%zu MiB free of %zu MiB): lower the GPU-tier slots "
                                "(--gpu-experts) to at most %zu", t->slots, t->slot_bytes >> 20,
                                total >> 20, fr >> 20, tot >> 20, fr / t->slot_bytes);
            goto out;
        }
    }
    /* host_fill stages each expert in pinned memory: a small ring (a fill waits only for the copy
     * out of the buffer it reuses), not one buffer per slot, which would pin a second copy of every
     * expert the tier holds */
    t->n_stage = t->slots < CUDA_TIER_STAGES ? t->slots : CUDA_TIER_STAGES;
    if (t->host_fill || t->fp8_block[0]) {
        if (!(t->stage_done = calloc((size_t)t->n_stage, sizeof(cudaEvent_t)))) {
            st = moe_errorf(MOE_ENOMEM, "GPU expert tier: out of host memory");
            goto out;
        }
        if (t->host_fill && (st = moe_cuda_host_alloc((void **)&t->h_stage, t->stage_bytes * (size_t)t->n_stage,
                                                      &t->stage_pinned)) != MOE_OK) {
            moe_error_prefix(st, "GPU expert tier staging (%d x %zu MiB)", t->n_stage, t->stage_bytes >> 20);
            goto out;
        }
        cudaError_t e;
        if (t->fp8_block[0] &&
            (e = cudaMalloc((void **)&t->d_stage, t->stage_bytes * (size_t)t->n_stage)) != cudaSuccess) {
            size_t fr, tot;
            t->d_stage = NULL;
            if ((st = moe_cuda_malloc_failed(c, e, "GPU expert tier FP8 staging", &fr, &tot)) == MOE_ENOMEM)
                st = moe_errorf(MOE_ENOMEM, "GPU expert tier: no device memory for %d FP8 staging records of %zu "
                                "MiB (%zu MiB free of %zu MiB): lower the GPU-tier slots (--gpu-experts)",
                                t->n_stage, t->stage_bytes >> 20, fr >> 20, tot >> 20);
            goto out;
        }
    }
    TCK(cudaStreamCreateWithFlags(&t->copy, cudaStreamNonBlocking));
    for (int i = 0; t->stage_done && i < t->n_stage; i++)
        TCK(cudaEventCreateWithFlags(&t->stage_done[i], cudaEventDisableTiming));
    for (int i = 0; i < t->slots; i++) {
        TCK(cudaEventCreateWithFlags(&t->ready[i], cudaEventDisableTiming));
        TCK(cudaEventCreateWithFlags(&t->freed[i], cudaEventDisableTiming));
    }
    if (p->time_copies) {
        t->t0 = calloc((size_t)t->slots, sizeof(cudaEvent_t));
        t->t1 = calloc((size_t)t->slots, sizeof(cudaEvent_t));
        t->timed = calloc((size_t)t->slots, sizeof(bool));
        if (!t->t0 || !t->t1 || !t->timed) {
            st = moe_errorf(MOE_ENOMEM, "GPU expert tier: out of host memory for copy timing");
            goto out;
        }
        for (int i = 0; i < t->slots; i++) {
            TCK(cudaEventCreate(&t->t0[i]));
            TCK(cudaEventCreate(&t->t1[i]));
        }
    }
    t->st.slots = t->slots;
    t->st.slot_bytes = t->slot_bytes;
out:
    if (st != MOE_OK) {
        char msg[1024];
        memcpy(msg, moe_last_error(), sizeof(msg));
        msg[sizeof(msg) - 1] = 0;
        moe_cuda_tier_destroy(t);
        moe_errorf(st, "%s", msg);
        return NULL;
    }
    return t;
}

/* ---- expert provider over a model ---------------------------------------- */

struct cprov {
    struct moe_provider base;
    struct moe_cuda_tier *tier;
    uint8_t *h_pool;               /* [MoE layers][experts][gate | up | down]: BF16, or an FP8 checkpoint's
                                      records; dense layers take no room */
    size_t pool_bytes;
    bool pinned;                   /* h_pool from cudaHostAlloc (else malloc) */
    int *moe_row;                  /* [n_layers]: the layer's place among the MoE layers (its row of h_pool), -1
                                      for a dense layer */
    int n_layers, n_experts;
    size_t mat_elems[3];
    size_t part[3];                /* bytes of gate, up, down in the pool */
};

static const void *cprov_host_mat(void *ud, int layer, int e, int which)
{
    struct cprov *cp = ud;
    if (layer < 0 || layer >= cp->n_layers || cp->moe_row[layer] < 0) return NULL; /* no routed expert */
    size_t idx = (size_t)cp->moe_row[layer] * (size_t)cp->n_experts + (size_t)e;
    size_t per = cp->part[0] + cp->part[1] + cp->part[2];
    size_t off = which == 0 ? 0 : which == 1 ? cp->part[0] : cp->part[0] + cp->part[1];
    return cp->h_pool + idx * per + off;
}

static enum moe_status cprov_acquire(void *self, int layer, int n, const int *ids, struct moe_expert_ref *out)
{
    return moe_cuda_tier_acquire(((struct cprov *)self)->tier, layer, n, ids, out);
}
static void cprov_release(void *self, int layer) { moe_cuda_tier_release(((struct cprov *)self)->tier, layer); }
static void cprov_prefetch(void *self, int layer, int n, const int *ids, const float *scores, int distance)
{
    moe_cuda_tier_prefetch(((struct cprov *)self)->tier, layer, n, ids, scores, distance);
}
static void cprov_hint(void *self, int layer, int n, const int *ids, const float *scores, int distance)
{
    moe_cuda_tier_hint(((struct cprov *)self)->tier, layer, n, ids, scores, distance);
}
static int cprov_max_pinned(void *self) { return ((struct cprov *)self)->tier->slots; }
static void cprov_destroy(void *self)
{
    struct cprov *cp = self;
    if (!cp) return;
    moe_cuda_tier_destroy(cp->tier);
    if (cp->pinned) (void)moe_cuda_drop_error(cudaFreeHost(cp->h_pool));
    else free(cp->h_pool);
    free(cp->moe_row);
    free(cp);
}

static const struct moe_provider_ops cprov_ops = {
    .acquire = cprov_acquire,
    .release = cprov_release,
    .prefetch = cprov_prefetch,
    .destroy = cprov_destroy,
    .max_pinned = cprov_max_pinned,
    .hint = cprov_hint,
};

/* The first MoE layer's expert 0 when the model's experts are FP8 (with block factors), else NULL. */
static const struct moe_expert_w *fp8_expert0(const struct moe_model *m)
{
    const struct moe_config *cfg = &m->cfg;
    int l0 = 0;
    while (l0 < cfg->n_layers && !cfg->is_moe[l0]) l0++;
    const struct moe_expert_w *x0 = l0 < cfg->n_layers ? moe_model_expert(m, l0, 0) : NULL;
    return x0 && x0->gate.scale ? x0 : NULL;
}

/* The tier's view of FP8 records shaped as x0's: gate and up [inter, hidden], down [hidden, inter]. */
static void fp8_tier_params(const struct moe_expert_w *x0, struct moe_cuda_tier_params *tp)
{
    const struct moe_wview *w[3] = { &x0->gate, &x0->up, &x0->down };
    tp->fp8_block[0] = x0->gate.block_rows;
    tp->fp8_block[1] = x0->gate.block_cols;
    for (int k = 0; k < 3; k++) {
        tp->mat_rows[k] = w[k]->rows;
        tp->mat_cols[k] = w[k]->cols;
        tp->rec_bytes[k] = (size_t)moe_wview_stored_bytes(w[k]);
    }
}

/* The device tier's slots: p->slots, else one for every expert of the MoE layers. */
static int tier_slots(const struct moe_config *cfg, const struct moe_provider_cuda_params *p)
{
    return p && p->slots ? p->slots : moe_config_n_moe(cfg) * cfg->n_experts;
}

/* The tier's parameters over the model's experts, each matrix mat_elems BF16 elements in a slot, with
 * p's policy; the host source (host_mat or host_fill, ud) is the provider's. */
static struct moe_cuda_tier_params tier_params(const struct moe_config *cfg, int slots, size_t mat_elems,
                                               const struct moe_provider_cuda_params *p)
{
    return (struct moe_cuda_tier_params){
        .n_layers = cfg->n_layers,
        .n_experts = cfg->n_experts,
        .slots = slots,
        .mat_bytes = { mat_elems * 2, mat_elems * 2, mat_elems * 2 },
        .policy = p ? p->policy : MOE_POLICY_LRU,
        .future = p ? p->future : NULL,
        .n_future = p ? p->n_future : 0,
        .is_moe = cfg->is_moe,
    };
}

/* ---- the GPU tier stacked on a host-side provider ---------------------------- */

struct sprov {
    struct moe_provider base;
    struct moe_cuda_tier *tier;
    struct moe_provider *lower;
    size_t mat_elems;              /* elements of each of gate, up, down */
    bool fp8;                      /* lower hands out FP8 records */
    size_t rec_bytes[3];           /* ... of these sizes */
};

static enum moe_status sprov_fill(void *ud, int layer, int e, void *const dst[3])
{
    struct sprov *sp = ud;
    struct moe_expert_ref ref;
    enum moe_status st = sp->lower->ops->acquire(sp->lower->self, layer, 1, &e, &ref);
    if (st != MOE_OK) return moe_error_prefix(st, "GPU tier fill from the host tier");
    const void *src[3] = { ref.gate, ref.up, ref.down };
    if (sp->fp8 != (ref.dtype == MOE_DT_F8_E4M3))
        st = moe_errorf(MOE_EINVAL, "layer %d expert %d: the host tier hands out %s, the GPU tier expects %s", layer,
                        e, moe_dtype_name(ref.dtype), sp->fp8 ? "FP8 records" : "F32 or BF16 matrices");
    for (int w = 0; w < 3 && st == MOE_OK; w++) {
        uint16_t *d = dst[w];
        if (sp->fp8) {
            memcpy(d, src[w], sp->rec_bytes[w]);
        } else if (ref.dtype == MOE_DT_BF16) {
            memcpy(d, src[w], sp->mat_elems * 2);
        } else if (ref.dtype == MOE_DT_F32) {
            const float *f = src[w];
            for (size_t i = 0; i < sp->mat_elems; i++) d[i] = moe_f32_to_bf16(f[i]);
        } else {
            st = moe_errorf(MOE_ENOTSUP, "layer %d expert %d: host tier hands out dtype %d (F32 or BF16)",
                            layer, e, (int)ref.dtype);
            break;
        }
    }
    sp->lower->ops->release(sp->lower->self, layer);
    return st;
}

static enum moe_status sprov_acquire(void *self, int layer, int n, const int *ids, struct moe_expert_ref *out)
{
    return moe_cuda_tier_acquire(((struct sprov *)self)->tier, layer, n, ids, out);
}
static void sprov_release(void *self, int layer) { moe_cuda_tier_release(((struct sprov *)self)->tier, layer); }
static void sprov_prefetch(void *self, int layer, int n, const int *ids, const float *scores, int distance)
{
    struct sprov *sp = self;
    /* GPU copies start on demand, but the predictions still reach the GPU
     * tier's policy (--policy predicted ranks evictions by them) */
    moe_cuda_tier_hint(sp->tier, layer, n, ids, scores, distance);
    if (sp->lower->ops->prefetch) sp->lower->ops->prefetch(sp->lower->self, layer, n, ids, scores, distance + 1);
}
/* The GPU tier's policy ranks with the hints; the lower provider gets them one
 * layer further out, as its prefetches. */
static void sprov_hint(void *self, int layer, int n, const int *ids, const float *scores, int distance)
{
    struct sprov *sp = self;
    moe_cuda_tier_hint(sp->tier, layer, n, ids, scores, distance);
    if (sp->lower->ops->hint) sp->lower->ops->hint(sp->lower->self, layer, n, ids, scores, distance + 1);
}
static void sprov_step_begin(void *self, int n_tokens)
{
    struct sprov *sp = self;
    if (sp->lower->ops->step_begin) sp->lower->ops->step_begin(sp->lower->self, n_tokens);
}
static void sprov_step_end(void *self)
{
    struct sprov *sp = self;
    if (sp->lower->ops->step_end) sp->lower->ops->step_end(sp->lower->self);
}
static int sprov_max_pinned(void *self) { return ((struct sprov *)self)->tier->slots; }
static void sprov_destroy(void *self)
{
    struct sprov *sp = self;
    if (!sp) return;
    moe_cuda_tier_destroy(sp->tier);
    moe_provider_destroy(sp->lower);
    free(sp);
}

static const struct moe_provider_ops sprov_ops = {
    .acquire = sprov_acquire,
    .release = sprov_release,
    .prefetch = sprov_prefetch,
    .step_begin = sprov_step_begin,
    .step_end = sprov_step_end,
    .destroy = sprov_destroy,
    .max_pinned = sprov_max_pinned,
    .hint = sprov_hint,
};

struct moe_provider *moe_provider_cuda_stack_create(const struct moe_model *m, struct moe_backend *be,
                                                    struct moe_provider *lower,
                                                    const struct moe_provider_cuda_params *p)
{
    const struct moe_config *cfg = &m->cfg;
    struct moe_cuda_ctx *c = moe_backend_cuda_ctx(be);
    struct sprov *sp;
    if (!lower) {
        moe_errorf(MOE_EINVAL, "GPU expert tier: no host-side provider to stack on");
        return NULL;
    }
    if (!c) {
        moe_provider_destroy(lower);
        moe_errorf(MOE_EINVAL, "GPU expert provider: the backend is not the CUDA backend");
        return NULL;
    }
    int slots = tier_slots(cfg, p);
    if (slots < cfg->top_k) {
        moe_provider_destroy(lower);
        moe_errorf(MOE_EINVAL, "GPU expert tier: %d slots is below top_k %d of %s; raise --gpu-experts", slots,
                   cfg->top_k, m->dir);
        return NULL;
    }
    sp = calloc(1, sizeof(*sp));
    if (!sp) {
        moe_provider_destroy(lower);
        moe_errorf(MOE_ENOMEM, "GPU expert provider: out of host memory");
        return NULL;
    }
    sp->lower = lower;
    sp->mat_elems = (size_t)cfg->expert_inter * (size_t)cfg->hidden;
    const struct moe_expert_w *x0 = fp8_expert0(m);
    sp->fp8 = p && p->fp8_records && x0;
    struct moe_cuda_tier_params tp = tier_params(cfg, slots, sp->mat_elems, p);
    tp.host_fill = sprov_fill;
    tp.ud = sp;
    if (sp->fp8) {
        fp8_tier_params(x0, &tp);
        memcpy(sp->rec_bytes, tp.rec_bytes, sizeof(sp->rec_bytes));
    }
    sp->tier = moe_cuda_tier_create(c, &tp);
    if (!sp->tier) { /* its status and message, kept through the teardown */
        char msg[1024];
        enum moe_status st = moe_last_status();
        memcpy(msg, moe_last_error(), sizeof(msg));
        msg[sizeof(msg) - 1] = 0;
        sprov_destroy(sp);
        moe_errorf(st, "%s", msg);
        return NULL;
    }
    sp->base.ops = &sprov_ops;
    sp->base.self = sp;
    return &sp->base;
}

static void to_bf16(const struct moe_wview *w, uint16_t *dst, float *tmp)
{
    size_t n = (size_t)(w->rows * w->cols);
    if (w->dtype == MOE_DT_BF16) {
        memcpy(dst, w->data, n * 2);
        return;
    }
    moe_wview_to_f32(w, tmp);
    for (size_t i = 0; i < n; i++) dst[i] = moe_f32_to_bf16(tmp[i]);
}

struct moe_provider *moe_provider_cuda_create(const struct moe_model *m, struct moe_backend *be,
                                              const struct moe_provider_cuda_params *p)
{
    const struct moe_config *cfg = &m->cfg;
    struct moe_cuda_ctx *c = moe_backend_cuda_ctx(be);
    struct cprov *cp = NULL;
    float *tmp = NULL;
    /* the experts of the MoE layers only: a dense layer has none */
    size_t per, n_all = (size_t)moe_config_n_moe(cfg) * (size_t)cfg->n_experts, bytes;
    enum moe_status st = MOE_OK;

    if (!c) {
        moe_errorf(MOE_EINVAL, "GPU expert provider: the backend is not the CUDA backend");
        return NULL;
    }
    int slots = tier_slots(cfg, p);
    if (slots < cfg->top_k) {
        moe_errorf(MOE_EINVAL, "GPU expert tier: %d slots is below top_k %d of %s (a token's experts "
                   "must fit at once); raise --gpu-experts", slots, cfg->top_k, m->dir);
        return NULL;
    }
    cp = calloc(1, sizeof(*cp));
    if (!cp) goto nomem;
    cp->n_layers = cfg->n_layers;
    cp->n_experts = cfg->n_experts;
    cp->mat_elems[0] = cp->mat_elems[1] = (size_t)cfg->expert_inter * (size_t)cfg->hidden;
    cp->mat_elems[2] = cp->mat_elems[0];
    const struct moe_expert_w *x0 = fp8_expert0(m);
    bool fp8 = x0 != NULL; /* the pool holds FP8 records, decoded on the device */
    struct moe_cuda_tier_params fp = { 0 };
    if (fp8) fp8_tier_params(x0, &fp);
    for (int w = 0; w < 3; w++) cp->part[w] = fp8 ? fp.rec_bytes[w] : cp->mat_elems[w] * 2;
    per = cp->part[0] + cp->part[1] + cp->part[2];
    bytes = n_all * per;
    cp->moe_row = malloc(sizeof(int) * (size_t)(cfg->n_layers > 0 ? cfg->n_layers : 1));
    tmp = malloc(cp->mat_elems[0] * sizeof(float));
    if (!cp->moe_row || !tmp) goto nomem;
    for (int l = 0, row = 0; l < cfg->n_layers; l++) cp->moe_row[l] = cfg->is_moe[l] ? row++ : -1;
    if (cudaHostAlloc((void **)&cp->h_pool, bytes ? bytes : 1, cudaHostAllocPortable) == cudaSuccess) {
        cp->pinned = true;
    } else {
        (void)cudaGetLastError();
        MOE_WARN("GPU expert provider: cannot pin %zu MiB of host memory; using pageable memory "
                 "(host -> device copies will not overlap compute)", bytes >> 20);
        cp->h_pool = malloc(bytes ? bytes : 1);
        if (!cp->h_pool) goto nomem;
    }
    cp->pool_bytes = bytes;
    for (int l = 0; l < cfg->n_layers; l++) {
        if (cp->moe_row[l] < 0) continue;
        for (int e = 0; e < cfg->n_experts; e++) {
            size_t idx = (size_t)cp->moe_row[l] * (size_t)cfg->n_experts + (size_t)e;
            const struct moe_expert_w *x = moe_model_expert(m, l, e);
            const struct moe_wview *mats[3] = { &x->gate, &x->up, &x->down };
            for (int w = 0; w < 3; w++) {
                if (!mats[w]->data || (size_t)(mats[w]->rows * mats[w]->cols) != cp->mat_elems[w]) {
                    st = moe_errorf(MOE_EFORMAT, "%s: layer %d expert %d: matrix %d has %lld x %lld "
                                    "elements, expected %zu", m->dir, l, e, w, (long long)mats[w]->rows,
                                    (long long)mats[w]->cols, cp->mat_elems[w]);
                    goto fail;
                }
            }
            uint8_t *dst = cp->h_pool + idx * per;
            for (int w = 0; w < 3; w++) {
                if (fp8)
                    moe_wview_copy_stored(mats[w], dst);
                else
                    to_bf16(mats[w], (uint16_t *)dst, tmp);
                dst += cp->part[w];
            }
        }
    }
    {
        struct moe_cuda_tier_params tp = tier_params(cfg, slots, cp->mat_elems[0], p);
        tp.host_mat = cprov_host_mat;
        tp.ud = cp;
        if (fp8) fp8_tier_params(x0, &tp);
        cp->tier = moe_cuda_tier_create(c, &tp);
        if (!cp->tier) {
            st = moe_last_status();
            goto fail;
        }
    }
    free(tmp);
    cp->base.ops = &cprov_ops;
    cp->base.self = cp;
    return &cp->base;
nomem:
    st = moe_errorf(MOE_ENOMEM, "GPU expert provider: out of host memory for %zu experts", n_all);
fail:
    {
        char msg[1024];
        memcpy(msg, moe_last_error(), sizeof(msg));
        msg[sizeof(msg) - 1] = 0;
        free(tmp);
        cprov_destroy(cp);
        moe_errorf(st, "%s", msg);
    }
    return NULL;
}

bool moe_provider_cuda_stats(const struct moe_provider *p, struct moe_cuda_tier_stats *out)
{
    if (p && p->ops == &cprov_ops) {
        moe_cuda_tier_get_stats(((const struct cprov *)p->self)->tier, out);
        return true;
    }
    if (p && p->ops == &sprov_ops) {
        moe_cuda_tier_get_stats(((const struct sprov *)p->self)->tier, out);
        return true;
    }
    return false;
}

uint64_t moe_provider_cuda_host_bytes(const struct moe_provider *p)
{
    return p && p->ops == &cprov_ops ? ((const struct cprov *)p->self)->pool_bytes : 0;
}

const struct moe_provider *moe_provider_cuda_lower(const struct moe_provider *p)
{
    return p && p->ops == &sprov_ops ? ((const struct sprov *)p->self)->lower : NULL;
}

uint64_t moe_provider_cuda_slot_bytes(const struct moe_model *m)
{
    uint64_t mat = (uint64_t)m->cfg.expert_inter * (uint64_t)m->cfg.hidden * 2;
    return 3 * ((mat + 255) & ~(uint64_t)255);
}

/* ---- hooks for the tiered provider's host tier ---------------------------- */

static int hook_register(void *ud, void *p, size_t len)
{
    (void)ud;
    enum moe_status st = MOE_CUDA_CHECK(cudaHostRegister(p, len, cudaHostRegisterPortable));
    return st == MOE_OK ? 0 : -1;
}

static void hook_unregister(void *ud, void *p)
{
    (void)ud;
    (void)MOE_CUDA_CHECK(cudaHostUnregister(p));
}

struct moe_offload_hooks moe_cuda_offload_hooks(void)
{
    struct moe_offload_hooks h = { .ud = NULL, .host_register = hook_register,
                                   .host_unregister = hook_unregister };
    return h;
}
