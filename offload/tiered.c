/* Tiered expert provider (see tiered.h).
 *
 * Threads: the engine thread calls acquire/prefetch/release, which make every
 * cache decision under `mu` and queue jobs; one worker thread executes jobs in
 * FIFO order: read a record into a host slot (if the host tier missed), verify
 * its checksum, convert it into the device slot.  Jobs run by priority (demand
 * before prefetch; prefetches by the position, step and MoE layer, they are
 * needed at, nearest first, whenever they were queued; then queue order),
 * but a job never overtakes an earlier-queued job that uses the same host
 * slot: that is what makes slot reuse safe (a job that overwrites a host slot
 * runs after every earlier job that reads it; stale device-slot jobs are
 * skipped by generation).  Decisions never depend on timing. */
#include "tiered.h"

#include "cache.h"
#include "policy_predicted.h"
#include "store.h"

#include <errno.h>
#include <hwloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum slot_state { SLOT_EMPTY, SLOT_LOADING, SLOT_READY, SLOT_FAILED };

struct dslot {
    int key;
    uint32_t gen;             /* bumped on every new load into the slot */
    enum slot_state state;
    enum moe_status err;      /* when FAILED */
    char msg[256];            /* when FAILED: what failed, naming layer and expert */
};

struct hslot {
    int key;                  /* key whose bytes the slot holds (worker's view) */
    enum slot_state state;
    enum moe_status err;
    char msg[256];
};

struct job {
    bool demand;              /* an acquire waits for it: runs before every prefetch */
    int64_t need;             /* a prefetch's: the position (step * n_moe + MoE index) it is needed at */
    int key;
    int dslot;
    uint32_t dgen;
    int hslot;
    bool read;                /* fill the host slot from the lowest tier first */
    bool reread;              /* a host hit whose record's last read failed: the worker reads it again */
};

struct pin { int layer, key; };

struct tiered {
    struct moe_provider base;
    const struct moe_model *m;
    int n_layers, n_experts, top_k;
    size_t inter, hidden;
    enum moe_dtype dtype;
    uint64_t gate_b, up_b, down_b, rec_bytes, stride;
    size_t dev_floats;        /* elements per device slot: 3 * inter * hidden */
    enum moe_dtype dev_dtype; /* RAM arena: BF16 when stored so or FP8, else F32; hook: F32, the stored
                                 dtype, or BF16 for FP8 */
    bool raw;                 /* fp8_records: the arena holds FP8 records as stored (dev_dtype F8_E4M3) */
    size_t dev_slot_bytes;    /* dev_floats x dtype size */
    void *stage;              /* [dev_floats] dev_dtype staging for dev_upload, or NULL */

    struct moe_store *store;  /* NULL: safetensors */
    struct moe_reader *reader;

    struct moe_cache *dev, *host;
    int n_dev, n_host;
    int max_pinned;           /* experts one layer can pin at once: n_dev, or the smallest MoE layer's quota */
    int n_moe;
    int moe_index[MOE_MAX_LAYERS]; /* per layer: its index among the MoE layers, -1 dense */
    int64_t now;              /* position of the layer acquired last (step * n_moe + MoE index), -1 none */
    struct dslot *ds;
    struct hslot *hs;
    uint8_t *dev_mem;         /* [n_dev][dev_slot_bytes], accelerator memory (hooks) or a RAM arena
                                 (moe_huge_alloc: the CPU kernels read it) */
    uint8_t *host_mem;        /* [n_host][stride], page-aligned */
    size_t host_len;
    hwloc_topology_t topo;
    bool host_from_hwloc, numa_bound, host_pinned;
    struct moe_offload_hooks hooks;

    struct pin *pins;
    int n_pins;
    size_t cap_pins;
    int *keys;                /* [cap_keys] an acquire's keys, checked before anything changes */
    size_t cap_keys;

    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    pthread_t worker;
    bool worker_started, stop;
    struct job *q;            /* FIFO ring */
    int q_cap, q_len;         /* q[0..q_len-1] in queue order */
    int qd;
    int n_active;             /* jobs the worker took and has not finished (under mu) */

    /* worker scratch */
    struct job *batch;
    struct moe_read *reads;

    struct moe_offload_stats st;
    uint64_t host_rereads;    /* host-tier hits the worker found failed and read again (under mu): the
                                 host cache counted them as hits, stats count them as the misses they were */
    struct moe_reader_stats rstats; /* the reader's counters after its last batch (under mu): the
                                       reader itself is the worker's alone */
};

static const struct moe_provider_ops tiered_ops;

uint64_t moe_tiered_dev_expert_bytes(const struct moe_model *m)
{
    struct moe_store_info si;
    bool ok = moe_store_info_of(m, &si) == MOE_OK;
    size_t es = ok && (si.dtype == MOE_DT_BF16 || si.dtype == MOE_DT_F8_E4M3) ? 2 : sizeof(float);
    return 3ull * (uint64_t)m->cfg.expert_inter * (uint64_t)m->cfg.hidden * es;
}

uint64_t moe_tiered_host_expert_bytes(const struct moe_model *m)
{
    uint64_t b = moe_model_expert_bytes(m);
    return (b + MOE_STORE_ALIGN - 1) / MOE_STORE_ALIGN * MOE_STORE_ALIGN;
}

static void layer_expert(const struct tiered *t, int key, int *layer, int *e)
{
    *layer = key / t->n_experts;
    *e = key % t->n_experts;
}

/* ---------------- worker ---------------- */

static void fill_from_safetensors(struct tiered *t, int key, uint8_t *dst)
{
    int l, e;
    layer_expert(t, key, &l, &e);
    const struct moe_expert_w *x = moe_model_expert(t->m, l, e);
    moe_wview_copy_stored(&x->gate, dst); /* an FP8 checkpoint's expert as an FP8 record */
    moe_wview_copy_stored(&x->up, dst + t->gate_b);
    moe_wview_copy_stored(&x->down, dst + t->gate_b + t->up_b);
}

/* A host record (stored dtype) as the device slot's gate|up|down in dev_dtype: an FP8 record's BF16
 * values (as BF16, or as F32), other dtypes in F32. */
static void convert(struct tiered *t, const uint8_t *src, void *dst)
{
    size_t ih = t->inter * t->hidden;
    const uint8_t *part[3] = { src, src + t->gate_b, src + t->gate_b + t->up_b };
    const uint64_t bytes[3] = { t->gate_b, t->up_b, t->down_b };
    for (int k = 0; k < 3; k++) {
        int64_t rows = (int64_t)(k < 2 ? t->inter : t->hidden), cols = (int64_t)(k < 2 ? t->hidden : t->inter);
        uint16_t *hb = t->dev_dtype == MOE_DT_BF16 ? (uint16_t *)dst + k * ih : NULL;
        float *fo = hb ? NULL : (float *)dst + k * ih;
        if (t->dtype == MOE_DT_F8_E4M3) {
            moe_fp8_record_decode(part[k], rows, cols, t->m->cfg.fp8_block[0], t->m->cfg.fp8_block[1], hb, fo);
        } else {
            struct moe_wview v = { .dtype = t->dtype, .rows = rows, .cols = cols, .data = part[k], .nbytes = bytes[k] };
            moe_wview_to_f32(&v, fo);
        }
    }
}

/* Host record -> device slot: a copy (RAM arena, BF16 records), a conversion (RAM arena: FP8
 * records to their BF16 values, other dtypes to F32), or an upload through the hook (converting on
 * the host first when dtypes differ). */
static enum moe_status fill_slot(struct tiered *t, const uint8_t *src, uint8_t *dst)
{
    if (!t->hooks.dev_upload) {
        if (t->dev_dtype == t->dtype) memcpy(dst, src, t->dev_slot_bytes);
        else convert(t, src, dst);
        return MOE_OK;
    }
    if (t->dev_dtype == t->dtype) return t->hooks.dev_upload(t->hooks.ud, dst, src, t->dev_slot_bytes);
    convert(t, src, t->stage);
    return t->hooks.dev_upload(t->hooks.ud, dst, t->stage, t->dev_slot_bytes);
}

/* A job's rank, lower runs first: demand, then a prefetch by the position it is needed at, whenever it
 * was queued; one whose layer has passed without it counts at that layer's next occurrence. */
static int64_t job_rank(const struct tiered *t, const struct job *j)
{
    if (j->demand) return INT64_MIN;
    if (j->need >= t->now) return j->need;
    return j->need + (t->now - j->need + t->n_moe - 1) / t->n_moe * t->n_moe;
}

/* Take up to qd jobs, best rank first.  A job is eligible when no
 * earlier-queued job (still queued or already in this batch) uses its host
 * slot, so host-slot users keep their queue order. */
static int take_batch(struct tiered *t)
{
    int n = 0;
    while (t->q_len > 0 && n < t->qd) {
        int best = -1;
        int64_t best_rank = 0;
        for (int i = 0; i < t->q_len; i++) {
            const struct job *j = &t->q[i];
            int64_t r = job_rank(t, j);
            if (best >= 0 && r >= best_rank) continue;
            bool blocked = false;
            for (int q = 0; q < i && !blocked; q++) blocked = t->q[q].hslot == j->hslot;
            for (int q = 0; q < n && !blocked; q++) blocked = t->batch[q].hslot == j->hslot;
            if (!blocked) {
                best = i;
                best_rank = r;
            }
        }
        if (best < 0) break;
        t->batch[n++] = t->q[best];
        memmove(&t->q[best], &t->q[best + 1], (size_t)(t->q_len - best - 1) * sizeof(*t->q));
        t->q_len--;
    }
    return n;
}

/* An acquire now needs the expert loading into dslot: run its job as demand. */
static void promote(struct tiered *t, int dslot, uint32_t gen)
{
    for (int i = 0; i < t->q_len; i++)
        if (t->q[i].dslot == dslot && t->q[i].dgen == gen) t->q[i].demand = true;
}

static void *worker_main(void *arg)
{
    struct tiered *t = arg;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (t->q_len == 0 && !t->stop) pthread_cond_wait(&t->cv_work, &t->mu);
        if (t->q_len == 0 && t->stop) break;
        int n = take_batch(t);
        t->n_active = n;
        pthread_mutex_unlock(&t->mu);

        /* 1. Fill host slots from the lowest tier. */
        int nr = 0;
        for (int i = 0; i < n; i++) {
            struct job *j = &t->batch[i];
            const struct hslot *h = &t->hs[j->hslot]; /* written by this thread only */
            if (!j->read && h->key == j->key && h->state == SLOT_FAILED)
                j->read = j->reread = true; /* its last read failed: read it again (the store may be mended) */
            if (!j->read) continue;
            uint8_t *dst = t->host_mem + (size_t)j->hslot * t->stride;
            if (t->store) {
                int l, e;
                layer_expert(t, j->key, &l, &e);
                const struct moe_store_record *r = moe_store_find(t->store, l, e);
                t->reads[nr++] = (struct moe_read){ .offset = r->offset, .len = t->stride,
                                                    .buf = dst, .buf_index = j->hslot };
            } else {
                fill_from_safetensors(t, j->key, dst);
            }
        }
        if (nr) {
            moe_reader_read(t->reader, t->reads, nr);
            pthread_mutex_lock(&t->mu);
            moe_reader_get_stats(t->reader, &t->rstats);
            pthread_mutex_unlock(&t->mu);
        }

        /* 2. Verify, then convert into the device slot, in FIFO order. */
        int ri = 0;
        for (int i = 0; i < n; i++) {
            struct job *j = &t->batch[i];
            struct hslot *h = &t->hs[j->hslot];
            int l, e;
            layer_expert(t, j->key, &l, &e);
            const uint8_t *src = t->host_mem + (size_t)j->hslot * t->stride;
            bool arrived = j->read; /* a read that failed moved no record */
            if (j->read) {
                h->key = j->key;
                h->state = SLOT_READY;
                if (t->store) {
                    struct moe_read *rd = &t->reads[ri++];
                    const struct moe_store_record *r = moe_store_find(t->store, l, e);
                    if (rd->st) {
                        arrived = false;
                        h->state = SLOT_FAILED;
                        h->err = rd->st;
                        if (rd->msg[0]) /* the reader's reason names the store and offset */
                            snprintf(h->msg, sizeof(h->msg), "layer %d expert %d: %s", l, e, rd->msg);
                        else
                            snprintf(h->msg, sizeof(h->msg), "layer %d expert %d: read from %s failed",
                                     l, e, moe_store_path(t->store));
                    } else if (!moe_store_verify(r, src)) {
                        h->state = SLOT_FAILED;
                        h->err = MOE_ECHECKSUM;
                        snprintf(h->msg, sizeof(h->msg), "layer %d expert %d: record at offset "
                                 "%llu of %s failed its xxh3 checksum (re-run moeflow pack)", l, e,
                                 (unsigned long long)r->offset, moe_store_path(t->store));
                        pthread_mutex_lock(&t->mu);
                        t->st.checksum_failures++;
                        pthread_mutex_unlock(&t->mu);
                    }
                }
            }
            bool host_ok = h->key == j->key && h->state == SLOT_READY;
            pthread_mutex_lock(&t->mu);
            bool current = t->ds[j->dslot].gen == j->dgen && t->ds[j->dslot].key == j->key;
            if (arrived) {
                t->st.disk_reads++;
                t->st.host.bytes += t->rec_bytes;
            }
            if (j->reread) t->host_rereads++;
            pthread_mutex_unlock(&t->mu);
            enum moe_status up = MOE_OK;
            if (current && host_ok) up = fill_slot(t, src, t->dev_mem + (size_t)j->dslot * t->dev_slot_bytes);
            if (up) {
                host_ok = false;
                h = NULL;
            }
            pthread_mutex_lock(&t->mu);
            struct dslot *d = &t->ds[j->dslot];
            if (d->gen == j->dgen && d->key == j->key) {
                if (host_ok) {
                    d->state = SLOT_READY;
                    t->st.device.bytes += t->dev_slot_bytes;
                } else if (!h) {
                    d->state = SLOT_FAILED;
                    d->err = up;
                    snprintf(d->msg, sizeof(d->msg), "layer %d expert %d: upload to the device "
                             "tier failed: %s", l, e, moe_status_str(up));
                } else {
                    d->state = SLOT_FAILED;
                    d->err = h->key == j->key ? h->err : MOE_EIO;
                    if (h->key == j->key)
                        snprintf(d->msg, sizeof(d->msg), "%s", h->msg);
                    else
                        snprintf(d->msg, sizeof(d->msg), "layer %d expert %d: host slot lost its "
                                 "record", l, e);
                }
            }
            t->n_active--;
            pthread_cond_broadcast(&t->cv_done);
            pthread_mutex_unlock(&t->mu);
        }
        pthread_mutex_lock(&t->mu);
        pthread_cond_broadcast(&t->cv_done); /* wakes enqueuers waiting for queue space */
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* ---------------- engine side (mu held) ---------------- */

static void enqueue(struct tiered *t, const struct job *j)
{
    while (t->q_len == t->q_cap) pthread_cond_wait(&t->cv_done, &t->mu);
    t->q[t->q_len++] = *j;
    pthread_cond_signal(&t->cv_work);
}

/* Start loading key into device slot ds: find or fill its host slot.  demand: an acquire waits for it;
 * else need: the position the prefetch is needed at. */
static enum moe_status start_load(struct tiered *t, int key, int ds, bool demand, int64_t need)
{
    int hslot, hev;
    bool hmiss;
    enum moe_status st = moe_cache_acquire(t->host, key, &hslot, &hmiss, &hev);
    if (st) return st; /* cannot happen: nothing in the host tier stays pinned */
    moe_cache_unpin(t->host, key);
    struct dslot *d = &t->ds[ds];
    d->key = key;
    d->gen++;
    d->state = SLOT_LOADING;
    struct job j = { .demand = demand, .need = need, .key = key, .dslot = ds, .dgen = d->gen, .hslot = hslot,
                     .read = hmiss };
    enqueue(t, &j);
    return MOE_OK;
}

/* id is an expert of layer, a layer moe_provider_check_layer took */
static enum moe_status check_id(const struct tiered *t, int layer, int id)
{
    if (id < 0 || id >= t->n_experts)
        return moe_errorf(MOE_EINVAL, "expert provider: layer %d has no expert %d", layer, id);
    return MOE_OK;
}

/* An acquire checked before it changes anything (no hit or miss counted, no load started, no pin): every
 * id is an expert of a MoE layer and there is room to record the pins (t->keys: their keys);
 * moe_cache_acquire_n checks that the experts fit in the device tier at once beside those pinned (and in
 * the layer's quota). */
static enum moe_status check_acquire(struct tiered *t, int layer, int n, const int *ids)
{
    enum moe_status st;
    if (n < 0) return moe_errorf(MOE_EINVAL, "expert provider: layer %d: %d experts asked for", layer, n);
    if ((st = moe_provider_check_layer(t->m, layer))) return st;
    for (int i = 0; i < n; i++)
        if ((st = check_id(t, layer, ids[i]))) return st;
    if (!moe_grow((void **)&t->keys, &t->cap_keys, (size_t)n, sizeof(*t->keys), 64) ||
        !moe_grow((void **)&t->pins, &t->cap_pins, (size_t)t->n_pins + (size_t)n, sizeof(*t->pins), 64))
        return moe_errorf(MOE_ENOMEM, "expert provider: out of memory for pins");
    for (int i = 0; i < n; i++) t->keys[i] = layer * t->n_experts + ids[i];
    return MOE_OK;
}

/* Forget key in both tiers when its device slot's load failed, so that the next access loads it anew,
 * as the miss it is (it moves bytes). */
static void forget_failed(struct tiered *t, int key)
{
    int s = moe_cache_slot_of(t->dev, key);
    if (s < 0 || t->ds[s].state != SLOT_FAILED) return;
    t->ds[s].state = SLOT_EMPTY;
    moe_cache_drop(t->dev, key);
    moe_cache_drop(t->host, key);
}

/* Drop the last `count` pins (an acquire that failed). */
static void pop_pins(struct tiered *t, int count)
{
    for (int i = 0; i < count; i++) moe_cache_unpin(t->dev, t->pins[--t->n_pins].key);
}

/* An acquire's part in moe_cache_acquire_n: a slot whose load failed (a prefetch's, or another acquire's
 * still loading when that one gave up) is forgotten before the access, so that it is loaded again,
 * counted as a miss; a miss starts a demand load; a hit on a load still queued makes it a demand one. */
static void acquire_before(void *ud, int key) { forget_failed(ud, key); }

static enum moe_status acquire_fill(void *ud, int key, int slot) { return start_load(ud, key, slot, true, 0); }

static void acquire_hit(void *ud, int key, int slot)
{
    struct tiered *t = ud;
    (void)key;
    if (t->ds[slot].state == SLOT_LOADING) promote(t, slot, t->ds[slot].gen);
}

static enum moe_status tiered_acquire(void *self, int layer, int n, const int *ids,
                                      struct moe_expert_ref *out)
{
    struct tiered *t = self;
    enum moe_status st = MOE_OK;
    int failed;
    pthread_mutex_lock(&t->mu);
    if ((st = check_acquire(t, layer, n, ids))) goto out;
    /* the layer computing now: a MoE layer before the last one acquired starts a new step, the same
     * one (another chunk of its experts) does not; the demand loads queued below run by it */
    int64_t now0 = t->now;
    int mi = t->moe_index[layer], cur = t->now < 0 ? -1 : (int)(t->now % t->n_moe);
    int64_t step = t->now < 0 ? 0 : t->now / t->n_moe + (mi < cur);
    t->now = step * t->n_moe + mi;
    const struct moe_cache_fill f = { .ud = t, .fill = acquire_fill, .before = acquire_before, .hit = acquire_hit };
    if ((st = moe_cache_acquire_n(t->dev, t->keys, n, &f, &failed))) {
        if (failed < 0) { /* refused whole: nothing changed, nor does the position */
            t->now = now0;
            moe_error_prefix(st, "expert provider: layer %d: %d experts at once (at most %d at a time; the device "
                             "tier has %d slots)", layer, n, t->max_pinned, t->n_dev);
        }
        goto out;
    }
    for (int i = 0; i < n; i++) t->pins[t->n_pins++] = (struct pin){ layer, t->keys[i] }; /* room: check_acquire */
    double t0 = moe_now();
    bool waited = false;
    for (int i = 0; i < n; i++) {
        int key = layer * t->n_experts + ids[i];
        int slot = moe_cache_slot_of(t->dev, key);
        struct dslot *d = &t->ds[slot];
        while (d->state == SLOT_LOADING) {
            waited = true;
            pthread_cond_wait(&t->cv_done, &t->mu);
        }
        if (d->state != SLOT_READY) {
            st = moe_errorf(d->err ? d->err : MOE_EIO, "%s", d->msg);
            /* Forget the failed expert in both tiers so a later request retries it. */
            for (int k = 0; k < n; k++) forget_failed(t, layer * t->n_experts + ids[k]);
            pop_pins(t, n); /* dropped keys lost their pins already; pop_pins on them is a no-op */
            break; /* the wait until the failure stalled the engine too */
        }
        const uint8_t *base = t->dev_mem + (size_t)slot * t->dev_slot_bytes;
        size_t mat = t->inter * t->hidden * moe_dtype_size(t->dev_dtype);
        out[i] = t->raw ? (struct moe_expert_ref){ .gate = base, .up = base + t->gate_b,
                                                   .down = base + t->gate_b + t->up_b, .dtype = t->dtype }
                        : (struct moe_expert_ref){ .gate = base, .up = base + mat, .down = base + 2 * mat,
                                                   .dtype = t->dev_dtype };
    }
    if (waited) t->st.device.stall_s += moe_now() - t0;
out:
    pthread_mutex_unlock(&t->mu);
    return st;
}

static void tiered_release(void *self, int layer)
{
    struct tiered *t = self;
    pthread_mutex_lock(&t->mu);
    int w = 0;
    for (int i = 0; i < t->n_pins; i++) {
        if (t->pins[i].layer == layer) moe_cache_unpin(t->dev, t->pins[i].key);
        else t->pins[w++] = t->pins[i];
    }
    t->n_pins = w;
    pthread_mutex_unlock(&t->mu);
}

static void tiered_prefetch(void *self, int layer, int n, const int *ids, const float *scores,
                            int distance)
{
    struct tiered *t = self;
    if (moe_provider_check_layer(t->m, layer)) return;
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < n; i++) {
        if (check_id(t, layer, ids[i])) continue;
        int key = layer * t->n_experts + ids[i], slot, ev;
        bool inserted;
        if (scores) moe_cache_predict(t->dev, key, scores[i], distance);
        /* --policy predicted: never evict an expert needed before this one */
        if (moe_cache_slot_of(t->dev, key) < 0 && !moe_policy_predicted_admit(t->dev, key)) continue;
        if (moe_cache_prefetch(t->dev, key, &slot, &inserted, &ev) == MOE_OK && inserted)
            start_load(t, key, slot, false,
                       moe_policy_predicted_occurrence(t->now, t->moe_index[layer], t->n_moe, distance));
    }
    pthread_mutex_unlock(&t->mu);
}

/* Rank-only predictions: the device tier's policy (--policy predicted) orders
 * evictions with them; nothing moves.  NULL scores rank nothing. */
static void tiered_hint(void *self, int layer, int n, const int *ids, const float *scores, int distance)
{
    struct tiered *t = self;
    if (!scores) return; /* nothing to rank by, as the GPU tier has it */
    if (moe_provider_check_layer(t->m, layer)) return;
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < n; i++)
        if (!check_id(t, layer, ids[i])) moe_cache_predict(t->dev, layer * t->n_experts + ids[i], scores[i], distance);
    pthread_mutex_unlock(&t->mu);
}

static int tiered_max_pinned(void *self) { return ((struct tiered *)self)->max_pinned; }

static void tiered_destroy(void *self)
{
    struct tiered *t = self;
    if (!t) return;
    if (t->worker_started) {
        pthread_mutex_lock(&t->mu);
        t->stop = true;
        pthread_cond_broadcast(&t->cv_work);
        pthread_mutex_unlock(&t->mu);
        pthread_join(t->worker, NULL);
    }
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv_work);
    pthread_cond_destroy(&t->cv_done);
    if (t->host_mem) {
        if (t->host_pinned && t->hooks.host_unregister) t->hooks.host_unregister(t->hooks.ud, t->host_mem);
        if (t->host_from_hwloc) hwloc_free(t->topo, t->host_mem, t->host_len);
        else free(t->host_mem);
    }
    if (t->topo) hwloc_topology_destroy(t->topo);
    moe_cache_destroy(t->dev);
    moe_cache_destroy(t->host);
    moe_reader_close(t->reader);
    moe_store_close(t->store);
    if (t->dev_mem && t->hooks.dev_alloc) {
        if (t->hooks.dev_free) t->hooks.dev_free(t->hooks.ud, t->dev_mem);
    } else {
        free(t->dev_mem);
    }
    free(t->stage);
    free(t->ds);
    free(t->hs);
    free(t->pins);
    free(t->keys);
    free(t->q);
    free(t->batch);
    free(t->reads);
    free(t);
}

static const struct moe_provider_ops tiered_ops = {
    .acquire = tiered_acquire,
    .release = tiered_release,
    .prefetch = tiered_prefetch,
    .destroy = tiered_destroy,
    .max_pinned = tiered_max_pinned,
    .hint = tiered_hint,
};

/* Host tier memory: bound to the NUMA node nearest the engine's CPU (or the
 * given node) with hwloc; plain page-aligned memory when binding fails.  Its
 * whole 2 MiB pages are marked for transparent huge pages (moe_huge_advise). */
static enum moe_status host_alloc(struct tiered *t, int numa_node)
{
    if (hwloc_topology_init(&t->topo) == 0 && hwloc_topology_load(t->topo) == 0) {
        hwloc_bitmap_t nodes = hwloc_bitmap_alloc(), cpus = hwloc_bitmap_alloc();
        bool have = false;
        if (nodes && cpus) {
            if (numa_node >= 0) {
                hwloc_bitmap_only(nodes, (unsigned)numa_node);
                have = true;
            } else if (hwloc_get_last_cpu_location(t->topo, cpus, HWLOC_CPUBIND_THREAD) == 0) {
                hwloc_cpuset_to_nodeset(t->topo, cpus, nodes);
                have = !hwloc_bitmap_iszero(nodes);
            }
        }
        if (have) {
            t->host_mem = hwloc_alloc_membind(t->topo, t->host_len, nodes, HWLOC_MEMBIND_BIND,
                                              HWLOC_MEMBIND_BYNODESET);
            t->numa_bound = t->host_mem != NULL;
        }
        if (!t->host_mem) t->host_mem = hwloc_alloc(t->topo, t->host_len);
        t->host_from_hwloc = t->host_mem != NULL;
        if (nodes) hwloc_bitmap_free(nodes);
        if (cpus) hwloc_bitmap_free(cpus);
    } else if (t->topo) {
        hwloc_topology_destroy(t->topo);
        t->topo = NULL;
    }
    if (t->host_mem) moe_huge_advise(t->host_mem, t->host_len);
    else t->host_mem = moe_huge_alloc(t->host_len, NULL); /* 4096-aligned (MOE_STORE_ALIGN) at least */
    if (!t->host_mem)
        return moe_errorf(MOE_ENOMEM, "host tier: cannot allocate %zu bytes (%d experts); lower "
                          "--host-experts", t->host_len, t->n_host);
    if (!t->numa_bound) MOE_INFO("host tier: memory not NUMA-bound (hwloc binding unavailable)");
    if (t->hooks.host_register)
        t->host_pinned = t->hooks.host_register(t->hooks.ud, t->host_mem, t->host_len) == 0;
    return MOE_OK;
}

struct moe_provider *moe_provider_tiered_create(const struct moe_model *m,
                                                const struct moe_tiered_params *p)
{
    const struct moe_config *c = &m->cfg;
    struct tiered *t = calloc(1, sizeof(*t));
    enum moe_status st = MOE_OK;
    if (!t) {
        moe_errorf(MOE_ENOMEM, "tiered provider: out of memory");
        return NULL;
    }
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv_work, NULL);
    pthread_cond_init(&t->cv_done, NULL);
    t->m = m;
    t->n_layers = c->n_layers;
    t->n_experts = c->n_experts;
    t->top_k = c->top_k;
    t->inter = (size_t)c->expert_inter;
    t->hidden = (size_t)c->hidden;
    t->dev_floats = 3 * t->inter * t->hidden;
    t->hooks = p->hooks;
    t->now = -1;
    for (int l = 0; l < c->n_layers; l++) t->moe_index[l] = c->is_moe[l] ? t->n_moe++ : -1;
    int n_keys = c->n_layers * c->n_experts;
    int n_moe_keys = 0;
    for (int l = 0; l < c->n_layers; l++) n_moe_keys += c->is_moe[l] ? c->n_experts : 0;
    if (n_moe_keys == 0) { /* first: with no experts, no tier size is right */
        st = moe_errorf(MOE_EINVAL, "%s: model has no MoE layer: there are no experts to offload (drop the "
                        "offload flags)", m->dir);
        goto fail;
    }
    if (p->dev_slots < c->top_k) {
        st = moe_errorf(MOE_EINVAL, "device tier: %d expert slots is below top_k %d of %s (a layer's "
                        "experts must fit at once); raise --gpu-experts", p->dev_slots, c->top_k, m->dir);
        goto fail;
    }
    if (p->host_slots < 1) {
        st = moe_errorf(MOE_EINVAL, "host tier: %d expert slots; --host-experts must be >= 1",
                        p->host_slots);
        goto fail;
    }
    t->n_dev = p->dev_slots < n_moe_keys ? p->dev_slots : n_moe_keys;
    t->n_host = p->host_slots < n_moe_keys ? p->host_slots : n_moe_keys;
    if (p->store_path) {
        t->store = moe_store_open(p->store_path, m);
        if (!t->store) {
            st = MOE_EFORMAT;
            goto fail;
        }
        const struct moe_store_info *si = moe_store_get_info(t->store);
        t->dtype = si->dtype;
        t->gate_b = si->gate_bytes;
        t->up_b = si->up_bytes;
        t->down_b = si->down_bytes;
        t->rec_bytes = si->record_bytes;
        t->stride = si->record_stride;
        t->reader = moe_reader_open(p->store_path, &p->io);
        if (!t->reader) {
            st = MOE_EIO;
            goto fail;
        }
    } else {
        struct moe_store_info si;
        if ((st = moe_store_info_of(m, &si))) goto fail;
        t->dtype = si.dtype;
        t->gate_b = si.gate_bytes;
        t->up_b = si.up_bytes;
        t->down_b = si.down_bytes;
        t->rec_bytes = si.record_bytes;
        t->stride = si.record_stride;
    }
    t->qd = p->io.queue_depth > 0 ? p->io.queue_depth : MOE_READER_DEFAULT_QD;
    struct moe_cache_params dp = { .n_keys = n_keys, .capacity = t->n_dev,
                                   .group_size = c->n_experts, .quota = p->dev_layer_quota,
                                   .policy = moe_policy_create_model(p->policy, c->n_layers, c->n_experts,
                                                                     c->is_moe, p->future, p->n_future) };
    t->max_pinned = t->n_dev;
    for (int l = 0; p->dev_layer_quota && l < c->n_layers; l++) {
        if (c->is_moe[l] && p->dev_layer_quota[l] < c->top_k) {
            moe_policy_destroy(dp.policy);
            st = moe_errorf(MOE_EINVAL, "device tier: layer %d quota %d is below top_k %d",
                            l, p->dev_layer_quota[l], c->top_k);
            goto fail;
        }
        /* a layer holds no more slots than its quota, pinned ones included */
        if (c->is_moe[l] && p->dev_layer_quota[l] < t->max_pinned) t->max_pinned = p->dev_layer_quota[l];
    }
    if (!dp.policy || !(t->dev = moe_cache_create(&dp))) {
        st = MOE_EINVAL;
        goto fail;
    }
    struct moe_cache_params hp = { .n_keys = n_keys, .capacity = t->n_host,
                                   .policy = moe_policy_lru_create(n_keys) };
    if (!hp.policy || !(t->host = moe_cache_create(&hp))) {
        st = MOE_ENOMEM;
        goto fail;
    }
    t->ds = calloc((size_t)t->n_dev, sizeof(*t->ds));
    t->hs = calloc((size_t)t->n_host, sizeof(*t->hs));
    t->q_cap = 2 * t->n_dev + 64;
    t->q = calloc((size_t)t->q_cap, sizeof(*t->q));
    t->batch = calloc((size_t)t->qd, sizeof(*t->batch));
    t->reads = calloc((size_t)t->qd, sizeof(*t->reads));
    /* RAM arena: BF16 records as they are (the CPU kernels take BF16), FP8 records as their BF16
     * values, others in F32 */
    bool fp8 = t->dtype == MOE_DT_F8_E4M3;
    t->raw = fp8 && p->fp8_records;
    t->dev_dtype = t->raw ? t->dtype : t->dtype == MOE_DT_BF16 || fp8 ? MOE_DT_BF16 : MOE_DT_F32;
    if (t->raw && t->hooks.dev_alloc) {
        st = moe_errorf(MOE_EINVAL, "device tier: FP8 records are handed out only from a RAM arena (no hooks)");
        goto fail;
    }
    if (t->hooks.dev_alloc) {
        bool ok = t->hooks.dev_dtype == MOE_DT_F32 || (fp8 ? t->hooks.dev_dtype == MOE_DT_BF16
                                                             : t->hooks.dev_dtype == t->dtype);
        if (!t->hooks.dev_upload || !ok) {
            st = moe_errorf(MOE_EINVAL, "device tier hooks: dev_upload missing or dev_dtype %s is neither F32 "
                            "nor %s%s", moe_dtype_name(t->hooks.dev_dtype), fp8 ? "BF16 (the values of the stored " :
                            "the stored ", fp8 ? "F8_E4M3 records)" : moe_dtype_name(t->dtype));
            goto fail;
        }
        t->dev_dtype = t->hooks.dev_dtype;
    }
    t->dev_slot_bytes = t->raw ? t->rec_bytes : t->dev_floats * moe_dtype_size(t->dev_dtype);
    size_t dev_len = (size_t)t->n_dev * t->dev_slot_bytes;
    if (t->hooks.dev_alloc) {
        t->dev_mem = t->hooks.dev_alloc(t->hooks.ud, dev_len);
        if (t->dev_dtype != t->dtype && !(t->stage = malloc(t->dev_floats * sizeof(float)))) {
            st = moe_errorf(MOE_ENOMEM, "device tier: no staging buffer");
            goto fail;
        }
    } else {
        t->hooks.dev_upload = NULL;
        t->dev_mem = moe_huge_alloc(dev_len, NULL);
    }
    if (!t->ds || !t->hs || !t->q || !t->batch || !t->reads || !t->dev_mem) {
        st = moe_errorf(MOE_ENOMEM, "device tier: cannot allocate %zu bytes (%d experts in %s); "
                        "lower --gpu-experts", dev_len, t->n_dev, moe_dtype_name(t->dev_dtype));
        goto fail;
    }
    for (int i = 0; i < t->n_dev; i++) t->ds[i].key = -1;
    for (int i = 0; i < t->n_host; i++) t->hs[i].key = -1;
    t->host_len = (size_t)t->n_host * t->stride;
    if ((st = host_alloc(t, p->numa_explicit ? p->numa_node : -1))) goto fail;
    if (t->reader) {
        void **bufs = malloc((size_t)t->n_host * sizeof(void *));
        if (bufs) {
            for (int i = 0; i < t->n_host; i++) bufs[i] = t->host_mem + (size_t)i * t->stride;
            moe_reader_register(t->reader, bufs, t->stride, t->n_host);
            free(bufs);
        }
        moe_reader_get_stats(t->reader, &t->rstats); /* before the worker starts */
    }
    if (pthread_create(&t->worker, NULL, worker_main, t) != 0) {
        st = moe_errorf(MOE_ENOMEM, "tiered provider: cannot start the transfer thread");
        goto fail;
    }
    t->worker_started = true;
    t->st.dev_slots = t->n_dev;
    t->st.host_slots = t->n_host;
    t->st.dev_bytes = dev_len;
    t->st.host_bytes = t->host_len;
    t->st.from_store = t->store != NULL;
    t->base.ops = &tiered_ops;
    t->base.self = t;
    return &t->base;
fail:
    (void)st;
    tiered_destroy(t);
    return NULL;
}

void moe_provider_tiered_drain(const struct moe_provider *p)
{
    if (!p || p->ops != &tiered_ops) return;
    struct tiered *t = p->self;
    pthread_mutex_lock(&t->mu);
    while (t->q_len > 0 || t->n_active > 0) pthread_cond_wait(&t->cv_done, &t->mu);
    pthread_mutex_unlock(&t->mu);
}

bool moe_provider_tiered_stats(const struct moe_provider *p, struct moe_offload_stats *out)
{
    if (!p || p->ops != &tiered_ops) return false;
    struct tiered *t = p->self;
    pthread_mutex_lock(&t->mu);
    *out = t->st;
    struct moe_cache_stats cs;
    moe_cache_get_stats(t->dev, &cs);
    out->device.hits = cs.hits;
    out->device.misses = cs.misses;
    out->device.evictions = cs.evictions;
    out->device.prefetches = cs.prefetches;
    out->device.prefetch_hits = cs.prefetch_hits;
    moe_cache_get_stats(t->host, &cs);
    /* a host hit only when the record was in host memory and whole: a hit on a record whose last read
     * failed was read again, a miss (every reread job came from a counted hit, so hits >= rereads) */
    out->host.hits = cs.hits - t->host_rereads;
    out->host.misses = cs.misses + t->host_rereads;
    out->host.evictions = cs.evictions;
    if (t->reader) {
        const struct moe_reader_stats rs = t->rstats;
        out->fallbacks = rs.fallbacks;
        out->io_uring = rs.io_uring;
        out->direct = rs.direct;
        out->registered = rs.registered;
        out->io_continuations = rs.continuations;
    }
    out->numa_bound = t->numa_bound;
    out->host_pinned = t->host_pinned;
    out->dev_pinned = moe_cache_pinned(t->dev);
    out->host_pinned_records = moe_cache_pinned(t->host);
    out->dev_resident = out->host_resident = 0;
    for (int i = 0; i < t->n_dev; i++) out->dev_resident += moe_cache_key_at(t->dev, i) >= 0;
    for (int i = 0; i < t->n_host; i++) out->host_resident += moe_cache_key_at(t->host, i) >= 0;
    out->transfers_in_flight = t->q_len + t->n_active;
    pthread_mutex_unlock(&t->mu);
    return true;
}
