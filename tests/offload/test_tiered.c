/* The tiered provider hands out exactly the weights of the all-resident
 * provider, for every fixture family and the bundled model, at the smallest
 * tiers (device = top_k, host = 1), with each policy, through io_uring,
 * continued short reads and the pread fallback, from the store and from the
 * safetensors files, with and without prefetch; and its device-tier hits and
 * misses equal the simulator's for the same routing and capacity. */
#include "../../offload/runtime.h"
#include "../../offload/sim.h"
#include "offload_test_common.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static unsigned rnd(unsigned n)
{
    return (unsigned)(t_xorshift(&rng) % n);
}

#define STEPS 24

/* A routing: STEPS tokens x MoE layers x top_k distinct experts, skewed to a few hot ones. */
static int *make_routing(const struct moe_model *m, struct moe_trace_info *info)
{
    const struct moe_config *c = &m->cfg;
    memset(info, 0, sizeof(*info));
    info->layers = c->n_layers;
    info->experts = c->n_experts;
    info->top_k = c->top_k;
    for (int l = 0; l < c->n_layers; l++)
        if (c->is_moe[l]) info->moe_layers[info->n_moe++] = l;
    int *r = malloc(sizeof(int) * STEPS * (size_t)info->n_moe * (size_t)c->top_k);
    for (int s = 0; s < STEPS; s++)
        for (int li = 0; li < info->n_moe; li++)
            for (int j = 0; j < c->top_k; j++) {
                int *row = r + ((size_t)s * info->n_moe + li) * c->top_k, e;
                bool dup;
                do {
                    e = rnd(3) ? (int)rnd((unsigned)(c->top_k + 2 < c->n_experts ? c->top_k + 2 : c->n_experts))
                               : (int)rnd((unsigned)c->n_experts);
                    dup = false;
                    for (int q = 0; q < j; q++) dup |= row[q] == e;
                } while (dup);
                row[j] = e;
                for (int q = j; q > 0 && row[q - 1] > row[q]; q--) { /* ascending, as the engine acquires */
                    int tmp = row[q];
                    row[q] = row[q - 1];
                    row[q - 1] = tmp;
                }
            }
    return r;
}

struct cfg {
    const char *name;
    bool store, no_uring, prefetch;
    uint32_t max_io;
    enum moe_policy_kind policy;
    int dev_extra, host_slots;
    bool quota;  /* per-layer quota of top_k + 1 slots */
};

static void run_cfg(const struct moe_model *m, struct moe_provider *res, const char *store,
                    const struct moe_trace_info *info, const int *routing, const int *keys,
                    size_t n_keys, const struct cfg *cf, const char *mname)
{
    const struct moe_config *c = &m->cfg;
    struct moe_tiered_params tp = {
        .store_path = cf->store ? store : NULL, .dev_slots = c->top_k + cf->dev_extra,
        .host_slots = cf->host_slots, .policy = cf->policy, .future = keys, .n_future = n_keys,
        .numa_node = -1, .io = { .queue_depth = 16, .no_io_uring = cf->no_uring, .max_io_bytes = cf->max_io },
    };
    int quota[MOE_MAX_LAYERS];
    for (int l = 0; l < c->n_layers; l++) quota[l] = c->top_k + 1;
    if (cf->quota) tp.dev_layer_quota = quota;
    struct moe_provider *p = moe_provider_tiered_create(m, &tp);
    REQUIRE(p, "%s/%s: %s", mname, cf->name, moe_last_error());
    int most = cf->quota && c->top_k + 1 < tp.dev_slots ? c->top_k + 1 : tp.dev_slots; /* a layer's quota bounds it */
    CHECK(p->ops->max_pinned(p->self) == most, "max_pinned %d, not %d", p->ops->max_pinned(p->self), most);
    size_t per = 3 * (size_t)c->expert_inter * (size_t)c->hidden;
    size_t ih = (size_t)c->expert_inter * (size_t)c->hidden;
    struct moe_expert_ref a[64], b[64];
    int bad = 0;
    for (int s = 0; s < STEPS; s++) {
        for (int li = 0; li < info->n_moe; li++) {
            int l = info->moe_layers[li];
            const int *ids = routing + ((size_t)s * info->n_moe + li) * c->top_k;
            if (cf->prefetch && li + 1 < info->n_moe)
                p->ops->prefetch(p->self, info->moe_layers[li + 1], c->top_k,
                                 routing + ((size_t)s * info->n_moe + li + 1) * c->top_k, NULL, 1);
            REQUIRE(p->ops->acquire(p->self, l, c->top_k, ids, a) == MOE_OK, "%s/%s: acquire: %s",
                    mname, cf->name, moe_last_error());
            REQUIRE(res->ops->acquire(res->self, l, c->top_k, ids, b) == MOE_OK, "resident");
            for (int j = 0; j < c->top_k; j++) {
                size_t mb = ih * moe_dtype_size(a[j].dtype);
                if (a[j].dtype != b[j].dtype || memcmp(a[j].gate, b[j].gate, mb) || memcmp(a[j].up, b[j].up, mb) ||
                    memcmp(a[j].down, b[j].down, mb))
                    bad++;
            }
            (void)per;
            p->ops->release(p->self, l);
        }
    }
    CHECK(bad == 0, "%s/%s: %d expert(s) differ from the resident provider", mname, cf->name, bad);
    struct moe_offload_stats os;
    REQUIRE(moe_provider_tiered_stats(p, &os), "stats");
    CHECK(os.device.hits + os.device.misses == n_keys, "%s/%s: accesses %llu != %zu", mname,
          cf->name, (unsigned long long)(os.device.hits + os.device.misses), n_keys);
    CHECK(os.fallbacks == (cf->store && cf->no_uring ? 1u : 0u), "%s/%s: fallbacks %llu", mname,
          cf->name, (unsigned long long)os.fallbacks);
    printf("%-32s %-22s hits %5llu misses %5llu disk %5llu %s%s%s%s\n", mname, cf->name,
           (unsigned long long)os.device.hits, (unsigned long long)os.device.misses,
           (unsigned long long)os.disk_reads, os.io_uring ? "io_uring" : "pread",
           os.direct ? " O_DIRECT" : "", os.registered ? " registered" : "",
           os.numa_bound ? " numa-bound" : "");
    if (cf->max_io && cf->store && !cf->no_uring && moe_model_expert_bytes(m) > (uint64_t)cf->max_io)
        CHECK(os.io_continuations > 0, "%s/%s: short-read path not exercised", mname, cf->name);
    if (!cf->prefetch && !cf->quota) {
        /* Same routing, same capacity, same policy: the simulator agrees exactly. */
        struct moe_trace t = { .info = *info, .n_tokens = STEPS, .experts = (int *)routing };
        struct moe_sim_params sp = { .capacity = tp.dev_slots, .policy = cf->policy };
        struct moe_sim_result r;
        REQUIRE(moe_sim_run(&t, &sp, &r) == MOE_OK, "sim: %s", moe_last_error());
        CHECK(r.hits == os.device.hits && r.misses == os.device.misses,
              "%s/%s: provider %llu/%llu hits/misses, sim %llu/%llu", mname, cf->name,
              (unsigned long long)os.device.hits, (unsigned long long)os.device.misses,
              (unsigned long long)r.hits, (unsigned long long)r.misses);
    }
    moe_provider_destroy(p);
}

/* Fake accelerator for the device-tier hooks: host memory, memcpy uploads. */
struct fake_dev {
    int uploads, fail_after; /* fail_after < 0: never fail */
    _Atomic int slow_failures; /* the first this many uploads take 20 ms and fail */
};
static void *fd_alloc(void *ud, size_t n) { (void)ud; return malloc(n); }
static void fd_free(void *ud, void *p) { (void)ud; free(p); }
static enum moe_status fd_upload(void *ud, void *dst, const void *src, size_t n)
{
    struct fake_dev *f = ud;
    if (atomic_load(&f->slow_failures) > 0) {
        nanosleep(&(struct timespec){ 0, 20000000 }, NULL);
        atomic_fetch_sub(&f->slow_failures, 1);
        return MOE_EDEVICE;
    }
    if (f->fail_after >= 0 && f->uploads >= f->fail_after) return MOE_EDEVICE;
    f->uploads++;
    memcpy(dst, src, n);
    return MOE_OK;
}

/* Whether an expert handed out is (layer, e)'s three matrices in their stored form, dtype dt. */
static bool same_as_stored(const struct moe_model *m, int layer, int e, const struct moe_expert_ref *a,
                           enum moe_dtype dt)
{
    size_t mb[3];
    uint8_t *want = t_expert_stored(m, layer, e, mb);
    bool same = a->dtype == dt && !memcmp(a->gate, want, mb[0]) && !memcmp(a->up, want + mb[0], mb[1]) &&
                !memcmp(a->down, want + mb[0] + mb[1], mb[2]);
    free(want);
    return same;
}

/* Device-tier hooks: F32 and stored-dtype slots hold the right bytes; a failed
 * upload fails the request naming layer and expert. */
static void check_dev_hooks(const struct moe_model *m, const char *store)
{
    const struct moe_config *c = &m->cfg;
    struct moe_provider *res = moe_provider_resident_create(m, MOE_DT_F32);
    size_t ih = (size_t)c->expert_inter * (size_t)c->hidden;
    int l0 = 0;
    while (!c->is_moe[l0]) l0++;
    for (int mode = 0; mode < 3; mode++) {
        struct fake_dev fd = { .fail_after = mode == 2 ? 3 : -1 };
        enum moe_dtype stored = moe_wview_stored_dtype(&moe_model_expert(m, l0, 0)->gate);
        bool fp8 = stored == MOE_DT_F8_E4M3; /* its slots hold the records' BF16 values */
        struct moe_tiered_params tp = {
            .store_path = store, .dev_slots = c->top_k, .host_slots = 2, .numa_node = -1,
            .hooks = { .ud = &fd, .dev_alloc = fd_alloc, .dev_free = fd_free, .dev_upload = fd_upload,
                       .dev_dtype = mode != 1 ? MOE_DT_F32 : fp8 ? MOE_DT_BF16 : stored },
        };
        struct moe_provider *p = moe_provider_tiered_create(m, &tp);
        REQUIRE(p, "hooks mode %d: %s", mode, moe_last_error());
        int bad = 0, failed = 0;
        for (int e = 0; e < c->n_experts; e++) {
            struct moe_expert_ref a, b;
            enum moe_status st = p->ops->acquire(p->self, l0, 1, &e, &a);
            if (mode == 2 && st != MOE_OK) {
                failed++;
                CHECK(st == MOE_EDEVICE && strstr(moe_last_error(), "expert"), "upload error: %s",
                      moe_last_error());
                continue;
            }
            REQUIRE(st == MOE_OK, "hooks acquire: %s", moe_last_error());
            if (mode == 1 && fp8) { /* an FP8 checkpoint's: the BF16 values of its records */
                const struct moe_expert_w *x = moe_model_expert(m, l0, e);
                uint16_t *want = malloc(ih * 2);
                REQUIRE(want, "out of memory");
                moe_wview_fp8_to_bf16(&x->gate, want);
                bad += a.dtype != MOE_DT_BF16 || memcmp(a.gate, want, ih * 2);
                moe_wview_fp8_to_bf16(&x->down, want);
                bad += memcmp(a.down, want, ih * 2);
                free(want);
            } else if (mode == 1) { /* the matrices as stored */
                bad += !same_as_stored(m, l0, e, &a, stored);
            } else {
                res->ops->acquire(res->self, l0, 1, &e, &b);
                bad += a.dtype != MOE_DT_F32 || memcmp(a.gate, b.gate, ih * 4) ||
                       memcmp(a.up, b.up, ih * 4) || memcmp(a.down, b.down, ih * 4);
            }
            p->ops->release(p->self, l0);
        }
        CHECK(bad == 0, "hooks mode %d: %d experts differ", mode, bad);
        CHECK(mode != 2 || failed == c->n_experts - 3, "hooks mode 2: %d failed", failed);
        moe_provider_destroy(p);
    }
    moe_provider_destroy(res);
}

/* A device whose first upload waits until the gate opens. */
struct gated_dev {
    _Atomic int entered, open;
};
static enum moe_status gd_upload(void *ud, void *dst, const void *src, size_t n)
{
    struct gated_dev *g = ud;
    if (!atomic_exchange(&g->entered, 1))
        while (!atomic_load(&g->open)) nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    memcpy(dst, src, n);
    return MOE_OK;
}
static void *gd_opener(void *ud)
{
    nanosleep(&(struct timespec){ 0, 200000000 }, NULL);
    atomic_store(&((struct gated_dev *)ud)->open, 1);
    return NULL;
}

/* The --stats report at the end of a run counts the reads of the prefetches still queued: two prefetched
 * experts, the first one's upload held while the report is asked for (its read counted, the second's
 * still to do); the report waits for both, so its disk reads equal its host misses, 2. */
static void check_report_drains(const struct moe_model *m, const char *dir)
{
    const struct moe_config *c = &m->cfg;
    int l0 = 0;
    while (!c->is_moe[l0]) l0++;
    struct gated_dev g = { 0 };
    struct moe_tiered_params tp = {
        .dev_slots = c->top_k, .host_slots = 2, .numa_node = -1,
        .hooks = { .ud = &g, .dev_alloc = fd_alloc, .dev_free = fd_free, .dev_upload = gd_upload,
                   .dev_dtype = MOE_DT_F32 },
    };
    struct moe_provider *p = moe_provider_tiered_create(m, &tp);
    REQUIRE(p, "%s", moe_last_error());
    int ids[2] = { 0, 1 };
    p->ops->prefetch(p->self, l0, 2, ids, NULL, 1);
    while (!atomic_load(&g.entered)) nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    pthread_t opener;
    REQUIRE(pthread_create(&opener, NULL, gd_opener, &g) == 0, "pthread_create");
    char path[600];
    snprintf(path, sizeof(path), "%s/report.json", dir);
    struct moe_offload_opts o;
    moe_offload_opts_init(&o);
    o.stats_json = path;
    REQUIRE(moe_offload_report(p, &o) == MOE_OK, "report: %s", moe_last_error());
    pthread_join(opener, NULL);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    REQUIRE(j, "%s: %s", path, je.text);
    long long reads = json_integer_value(json_object_get(json_object_get(j, "disk"), "reads"));
    long long misses = json_integer_value(json_object_get(json_object_get(j, "host"), "misses"));
    long long dbytes = json_integer_value(json_object_get(json_object_get(j, "device"), "bytes_moved"));
    long long slot = (long long)(3 * (size_t)c->expert_inter * (size_t)c->hidden * sizeof(float));
    CHECK(misses == 2 && reads == 2 && dbytes == 2 * slot,
          "report with prefetches in flight: %lld host misses, %lld disk reads, %lld device bytes (slot %lld)",
          misses, reads, dbytes, slot);
    json_decref(j);
    unlink(path);
    moe_provider_destroy(p);
}

/* fp8_records: an FP8 checkpoint's experts handed out as their records (dtype F8_E4M3, the parts as
 * the store holds them), for a GPU tier above; other checkpoints as without it; with hooks refused. */
static void check_fp8_records(const struct moe_model *m, const char *store)
{
    const struct moe_config *c = &m->cfg;
    int l0 = 0;
    while (!c->is_moe[l0]) l0++;
    bool fp8 = moe_model_expert(m, l0, 0)->gate.scale != NULL;
    struct moe_tiered_params tp = { .store_path = store, .dev_slots = c->top_k, .host_slots = 2, .numa_node = -1,
                                    .fp8_records = true };
    struct moe_provider *p = moe_provider_tiered_create(m, &tp);
    REQUIRE(p, "fp8_records: %s", moe_last_error());
    int bad = 0;
    for (int e = 0; e < c->n_experts; e++) {
        struct moe_expert_ref a;
        REQUIRE(p->ops->acquire(p->self, l0, 1, &e, &a) == MOE_OK, "fp8_records acquire: %s", moe_last_error());
        if (fp8) {
            bad += !same_as_stored(m, l0, e, &a, MOE_DT_F8_E4M3);
        } else {
            bad += a.dtype == MOE_DT_F8_E4M3;
        }
        p->ops->release(p->self, l0);
    }
    CHECK(bad == 0, "fp8_records: %d experts differ from their records", bad);
    moe_provider_destroy(p);
    if (!fp8) return;
    struct fake_dev fd = { .fail_after = -1 };
    tp.hooks = (struct moe_offload_hooks){ .ud = &fd, .dev_alloc = fd_alloc, .dev_free = fd_free,
                                           .dev_upload = fd_upload, .dev_dtype = MOE_DT_BF16 };
    CHECK(!moe_provider_tiered_create(m, &tp) && strstr(moe_last_error(), "FP8 records"),
          "fp8_records with hooks accepted: %s", moe_last_error());
}

/* Failures that land after the acquire has given up (the first of its experts
 * failed while the others were still loading) are not served from the cache
 * afterwards: once the device works again, the same acquire loads them anew. */
static void check_late_failures(const struct moe_model *m, const char *store)
{
    const struct moe_config *c = &m->cfg;
    int l0 = 0;
    while (!c->is_moe[l0]) l0++;
    struct fake_dev fd = { .fail_after = -1, .slow_failures = c->top_k };
    struct moe_tiered_params tp = {
        .store_path = store, .dev_slots = c->top_k, .host_slots = c->top_k, .numa_node = -1,
        .hooks = { .ud = &fd, .dev_alloc = fd_alloc, .dev_free = fd_free, .dev_upload = fd_upload,
                   .dev_dtype = MOE_DT_F32 },
    };
    struct moe_provider *p = moe_provider_tiered_create(m, &tp);
    REQUIRE(p, "%s", moe_last_error());
    int ids[64];
    struct moe_expert_ref refs[64];
    for (int j = 0; j < c->top_k; j++) ids[j] = j;
    CHECK(p->ops->acquire(p->self, l0, c->top_k, ids, refs) == MOE_EDEVICE, "failing uploads: %s",
          moe_last_error());
    /* it waited for the first failing upload (the worker cannot mark a slot before the acquire waits on it):
     * a stall, though it ended in an error */
    struct moe_offload_stats os;
    REQUIRE(moe_provider_tiered_stats(p, &os), "stats");
    CHECK(os.device.stall_s > 0, "a failed acquire's wait is not counted as a stall: %g s", os.device.stall_s);
    /* let the queued uploads fail too (none left in flight: each failed slot marked), then the device works
     * again (a bound on the wait only: 60 s) */
    for (int w = 0; w < 30000 && (os.transfers_in_flight > 0 || atomic_load(&fd.slow_failures) > 0); w++) {
        nanosleep(&(struct timespec){ 0, 2000000 }, NULL);
        moe_provider_tiered_stats(p, &os);
    }
    enum moe_status st = p->ops->acquire(p->self, l0, c->top_k, ids, refs);
    CHECK(st == MOE_OK, "after the device recovered the acquire must load anew: %s", moe_last_error());
    if (st == MOE_OK) p->ops->release(p->self, l0);
    moe_provider_destroy(p);
}

/* A prefetch in flight and the acquire that needs the same expert share one
 * transfer; an acquire of a resident expert moves nothing. */
static void check_shared_transfer(const struct moe_model *m, const char *store)
{
    const struct moe_config *c = &m->cfg;
    int l0 = 0;
    while (!c->is_moe[l0]) l0++;
    struct moe_tiered_params tp = { .store_path = store, .dev_slots = c->top_k + 2, .host_slots = 2,
                                    .numa_node = -1 };
    struct moe_provider *p = moe_provider_tiered_create(m, &tp);
    REQUIRE(p, "%s", moe_last_error());
    int id = 1;
    struct moe_expert_ref a;
    p->ops->prefetch(p->self, l0, 1, &id, NULL, 1);
    REQUIRE(p->ops->acquire(p->self, l0, 1, &id, &a) == MOE_OK, "%s", moe_last_error());
    p->ops->release(p->self, l0);
    REQUIRE(p->ops->acquire(p->self, l0, 1, &id, &a) == MOE_OK, "%s", moe_last_error());
    p->ops->release(p->self, l0);
    struct moe_offload_stats os;
    moe_provider_tiered_stats(p, &os);
    CHECK(os.disk_reads == 1 && os.device.hits == 2 && os.device.misses == 0 &&
          os.device.prefetches == 1 && os.device.prefetch_hits == 1,
          "shared transfer: %llu reads, %llu hits, %llu misses, %llu prefetch hits",
          (unsigned long long)os.disk_reads, (unsigned long long)os.device.hits,
          (unsigned long long)os.device.misses, (unsigned long long)os.device.prefetch_hits);
    moe_provider_destroy(p);
}

/* A read from the store that fails (the file cut short after it was opened) moves no bytes: the
 * host tier's bytes and the disk reads count only records that arrived, so once the file is whole
 * again the record read anew counts once; and the access that reads it anew is a miss, in the host
 * tier too when the failed record stayed there after its device slot was evicted. */
static void check_failed_read_counts(const struct moe_model *m, const char *dir)
{
    const struct moe_config *c = &m->cfg;
    int l0 = 0;
    while (!c->is_moe[l0]) l0++;
    char store[600];
    snprintf(store, sizeof(store), "%s/cut.moestore", dir);
    REQUIRE(moe_store_pack(m, store, NULL, NULL) == MOE_OK, "pack: %s", moe_last_error());
    char *whole;
    size_t len;
    REQUIRE(moe_read_file(store, &whole, &len, 1ull << 32) == MOE_OK, "%s", moe_last_error());
    struct moe_tiered_params tp = { .store_path = store, .dev_slots = c->top_k, .host_slots = c->top_k + 2,
                                    .numa_node = -1 };
    struct moe_provider *p = moe_provider_tiered_create(m, &tp);
    REQUIRE(p, "%s", moe_last_error());
    struct moe_store *s = moe_store_open(store, m);
    REQUIRE(s, "%s", moe_last_error());
    const struct moe_store_info *si = moe_store_get_info(s);
    uint64_t rec = si->record_bytes, data = si->data_offset;
    moe_store_close(s);
    REQUIRE(truncate(store, (off_t)data) == 0, "truncate");
    int id = 0;
    struct moe_expert_ref a;
    CHECK(p->ops->acquire(p->self, l0, 1, &id, &a) == MOE_EIO, "read past the cut: %s", moe_last_error());
    struct moe_offload_stats os;
    moe_provider_tiered_stats(p, &os);
    CHECK(os.host.bytes == 0 && os.disk_reads == 0, "failed read counted: %llu bytes, %llu reads",
          (unsigned long long)os.host.bytes, (unsigned long long)os.disk_reads);
    FILE *f = fopen(store, "r+"); /* the same file (inode) the reader holds, whole again */
    REQUIRE(f && fwrite(whole, 1, len, f) == len && fclose(f) == 0, "rewrite %s", store);
    REQUIRE(p->ops->acquire(p->self, l0, 1, &id, &a) == MOE_OK, "after mending: %s", moe_last_error());
    p->ops->release(p->self, l0);
    moe_provider_tiered_stats(p, &os);
    CHECK(os.host.bytes == rec && os.disk_reads == 1, "one record read: %llu bytes (record %llu), %llu reads",
          (unsigned long long)os.host.bytes, (unsigned long long)rec, (unsigned long long)os.disk_reads);
    /* a prefetch whose read fails leaves its slot failed; the demand access that loads it again once the
     * file is mended reads the record: a miss in both tiers, not a hit (nor a prefetch hit) */
    REQUIRE(truncate(store, (off_t)data) == 0, "truncate");
    id = 1;
    p->ops->prefetch(p->self, l0, 1, &id, NULL, 1);
    for (int w = 0; w < 5000; w++) {
        moe_provider_tiered_stats(p, &os);
        if (os.transfers_in_flight == 0) break;
        nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    }
    REQUIRE(os.transfers_in_flight == 0 && os.disk_reads == 1, "the failing prefetch: %d transfers, %llu reads",
            os.transfers_in_flight, (unsigned long long)os.disk_reads);
    struct moe_offload_stats before = os;
    f = fopen(store, "r+");
    REQUIRE(f && fwrite(whole, 1, len, f) == len && fclose(f) == 0, "rewrite %s", store);
    REQUIRE(p->ops->acquire(p->self, l0, 1, &id, &a) == MOE_OK, "after the failed prefetch: %s", moe_last_error());
    p->ops->release(p->self, l0);
    moe_provider_tiered_stats(p, &os);
    CHECK(os.device.misses == before.device.misses + 1 && os.device.hits == before.device.hits &&
          os.device.prefetch_hits == before.device.prefetch_hits && os.host.misses == before.host.misses + 1 &&
          os.host.hits == before.host.hits && os.disk_reads == 2,
          "reloading a failed prefetch: device +%llu misses +%llu hits (+%llu prefetch hits), host +%llu misses "
          "+%llu hits, %llu reads", (unsigned long long)(os.device.misses - before.device.misses),
          (unsigned long long)(os.device.hits - before.device.hits),
          (unsigned long long)(os.device.prefetch_hits - before.device.prefetch_hits),
          (unsigned long long)(os.host.misses - before.host.misses),
          (unsigned long long)(os.host.hits - before.host.hits), (unsigned long long)os.disk_reads);
    /* a prefetch whose read fails, then an acquire of top_k other experts evicts its failed device slot
     * while the host tier (room for them all) keeps the failed record: the next access of the expert
     * misses the device tier and reads the record again, so it is a host miss too, not a host hit */
    REQUIRE(truncate(store, (off_t)data) == 0, "truncate");
    id = 2;
    p->ops->prefetch(p->self, l0, 1, &id, NULL, 1);
    moe_provider_tiered_drain(p);
    moe_provider_tiered_stats(p, &os);
    REQUIRE(os.disk_reads == 2, "the second failing prefetch: %llu reads", (unsigned long long)os.disk_reads);
    f = fopen(store, "r+");
    REQUIRE(f && fwrite(whole, 1, len, f) == len && fclose(f) == 0, "rewrite %s", store);
    int others[64];
    struct moe_expert_ref refs[64];
    for (int j = 0, e = 0; j < c->top_k; e++)
        if (e != id) others[j++] = e;
    before = os;
    REQUIRE(p->ops->acquire(p->self, l0, c->top_k, others, refs) == MOE_OK, "the other experts: %s",
            moe_last_error());
    p->ops->release(p->self, l0);
    moe_provider_tiered_stats(p, &os);
    REQUIRE(os.device.evictions > before.device.evictions, "the failed prefetch's device slot was not evicted");
    before = os;
    REQUIRE(p->ops->acquire(p->self, l0, 1, &id, &a) == MOE_OK, "after its slot was evicted: %s", moe_last_error());
    p->ops->release(p->self, l0);
    moe_provider_tiered_stats(p, &os);
    CHECK(os.device.misses == before.device.misses + 1 && os.host.misses == before.host.misses + 1 &&
          os.host.hits == before.host.hits && os.disk_reads == before.disk_reads + 1 &&
          os.host.bytes == before.host.bytes + rec,
          "a failed record left in the host tier, read again: device +%llu misses, host +%llu misses +%llu hits, "
          "+%llu reads, +%llu bytes (record %llu)", (unsigned long long)(os.device.misses - before.device.misses),
          (unsigned long long)(os.host.misses - before.host.misses),
          (unsigned long long)(os.host.hits - before.host.hits),
          (unsigned long long)(os.disk_reads - before.disk_reads),
          (unsigned long long)(os.host.bytes - before.host.bytes), (unsigned long long)rec);
    moe_provider_destroy(p);
    free(whole);
    unlink(store);
}

/* Per-layer quotas: a layer can hold at most its quota of device slots at once, so max_pinned (the
 * engine's chunk of one layer's experts) is at most the smallest MoE layer's quota, and an acquire of
 * that many experts of one layer succeeds, where max_pinned said every slot could be pinned. */
static void check_quota_max_pinned(const struct moe_model *m, const char *store)
{
    const struct moe_config *c = &m->cfg;
    int l0 = 0;
    while (!c->is_moe[l0]) l0++;
    int quota[MOE_MAX_LAYERS];
    for (int l = 0; l < c->n_layers; l++) quota[l] = c->top_k + 1 + (l % 3); /* the smallest: top_k + 1 */
    struct moe_tiered_params tp = { .store_path = store, .dev_slots = c->top_k + 12, .host_slots = 4,
                                    .numa_node = -1, .dev_layer_quota = quota };
    struct moe_provider *p = moe_provider_tiered_create(m, &tp);
    REQUIRE(p, "%s", moe_last_error());
    int most = p->ops->max_pinned(p->self);
    CHECK(most == c->top_k + 1, "quota top_k + 1 = %d with %d slots: max_pinned %d", c->top_k + 1, tp.dev_slots,
          most);
    int ids[64];
    struct moe_expert_ref refs[64];
    int n = most < c->n_experts ? most : c->n_experts;
    REQUIRE(n <= 64, "%d experts", n);
    for (int j = 0; j < n; j++) ids[j] = j;
    enum moe_status st = p->ops->acquire(p->self, l0, n, ids, refs);
    CHECK(st == MOE_OK, "acquire of max_pinned %d experts of layer %d under its quota %d: %s", n, l0, quota[l0],
          moe_last_error());
    if (st == MOE_OK) p->ops->release(p->self, l0);
    moe_provider_destroy(p);
}

/* A device that records where each upload lands and, once armed, holds the first upload until the gate
 * opens. */
struct order_dev {
    _Atomic int armed, entered, open;
    void *dst[16];
    int n;
};
static enum moe_status od_upload(void *ud, void *dst, const void *src, size_t n)
{
    struct order_dev *o = ud;
    if (atomic_load(&o->armed) && !atomic_exchange(&o->entered, 1))
        while (!atomic_load(&o->open)) nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    if (o->n < 16) o->dst[o->n++] = dst;
    memcpy(dst, src, n);
    return MOE_OK;
}

static void touch_layer(struct moe_provider *p, int layer, int id)
{
    struct moe_expert_ref ref;
    REQUIRE(p->ops->acquire(p->self, layer, 1, &id, &ref) == MOE_OK, "%s", moe_last_error());
    p->ops->release(p->self, layer);
}

/* Queued prefetches run by the position they are needed at, whenever they were queued: with the
 * transfer thread held, X is queued at position 2 (step 0, MoE layer 2) for MoE layer 1 three layers on
 * (position 5), then the engine reaches position 4 and queues Y for MoE layer 2 two layers on (position
 * 6); X, needed first, runs first, where Y's smaller distance at its queueing put it ahead.  S, queued
 * for position 3 and passed without being used, runs last (its layer's next occurrence is 7). */
static void check_prefetch_order(const struct moe_model *m)
{
    const struct moe_config *c = &m->cfg;
    int ml[MOE_MAX_LAYERS], n_moe = 0;
    for (int l = 0; l < c->n_layers; l++)
        if (c->is_moe[l]) ml[n_moe++] = l;
    REQUIRE(n_moe == 4 && c->n_experts >= 8, "%d MoE layers, %d experts: the positions below assume 4, 8", n_moe,
            c->n_experts);
    struct order_dev od = { 0 };
    struct moe_tiered_params tp = {
        .dev_slots = 8, .host_slots = 8, .numa_node = -1,
        .hooks = { .ud = &od, .dev_alloc = fd_alloc, .dev_free = fd_free, .dev_upload = od_upload,
                   .dev_dtype = MOE_DT_F32 },
    };
    struct moe_provider *p = moe_provider_tiered_create(m, &tp);
    REQUIRE(p, "%s", moe_last_error());
    int e0 = 0, blocker = 5, s_id = 4, x_id = 6, y_id = 7;
    for (int i = 0; i < 4; i++) p->ops->prefetch(p->self, ml[i], 1, &e0, NULL, i + 1);
    moe_provider_tiered_drain(p);
    for (int i = 0; i < 3; i++) touch_layer(p, ml[i], 0); /* now: position 2 */
    atomic_store(&od.armed, 1);
    p->ops->prefetch(p->self, ml[3], 1, &blocker, NULL, 1);
    while (!atomic_load(&od.entered)) nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    p->ops->prefetch(p->self, ml[3], 1, &s_id, NULL, 1); /* position 3 */
    p->ops->prefetch(p->self, ml[1], 1, &x_id, NULL, 3); /* position 5 */
    touch_layer(p, ml[3], 0);
    touch_layer(p, ml[0], 0);                            /* now: position 4, step 1 */
    p->ops->prefetch(p->self, ml[2], 1, &y_id, NULL, 2); /* position 6 */
    atomic_store(&od.open, 1);
    moe_provider_tiered_drain(p);
    REQUIRE(od.n == 8, "%d uploads, not 8", od.n);
    struct { int layer, id; const char *name; } want[3] = { { ml[1], x_id, "X" }, { ml[2], y_id, "Y" },
                                                           { ml[3], s_id, "S" } };
    char got[8] = "";
    for (int k = 0; k < 3; k++) {
        struct moe_expert_ref ref;
        REQUIRE(p->ops->acquire(p->self, want[k].layer, 1, &want[k].id, &ref) == MOE_OK, "%s", moe_last_error());
        p->ops->release(p->self, want[k].layer);
        for (int u = 5; u < 8; u++)
            if (od.dst[u] == ref.gate) got[u - 5] = want[k].name[0];
    }
    CHECK(!strcmp(got, "XYS"), "prefetches after the held one ran in the order %s, not XYS", got);
    moe_provider_destroy(p);
}

/* The device tier's counts, pins and loads since the provider started, drained first. */
static void settled_stats(struct moe_provider *p, struct moe_offload_stats *os)
{
    moe_provider_tiered_drain(p);
    REQUIRE(moe_provider_tiered_stats(p, os), "stats");
}

/* An acquire refused (an expert id that does not exist, more experts than fit at once, beside other
 * layers' pins or in the layer's quota) changes nothing: no hit or miss counted, no load started, no
 * pin left; the same acquire, once it fits, succeeds. */
static void check_refused_acquire(const struct moe_model *m, const char *store)
{
    const struct moe_config *c = &m->cfg;
    int l0 = 0, l1;
    while (!c->is_moe[l0]) l0++;
    for (l1 = l0 + 1; !c->is_moe[l1]; l1++) {}
    REQUIRE(c->top_k + 2 <= c->n_experts && c->top_k + 2 <= 64, "%d experts, top_k %d", c->n_experts, c->top_k);
    struct moe_tiered_params tp = { .store_path = store, .dev_slots = c->top_k + 1, .host_slots = 4,
                                    .numa_node = -1 };
    struct moe_provider *p = moe_provider_tiered_create(m, &tp);
    REQUIRE(p, "%s", moe_last_error());
    int ids[64];
    struct moe_expert_ref refs[64];
    struct moe_offload_stats os;
    for (int j = 0; j < c->top_k + 2; j++) ids[j] = j;
    ids[c->top_k] = c->n_experts; /* after top_k valid ones */
    CHECK(p->ops->acquire(p->self, l0, c->top_k + 1, ids, refs) == MOE_EINVAL &&
              strstr(moe_last_error(), "has no expert"), "expert %d of %d: %s", c->n_experts, c->n_experts,
          moe_last_error());
    settled_stats(p, &os);
    CHECK(os.device.hits + os.device.misses == 0 && os.disk_reads == 0 && os.dev_pinned == 0 && os.dev_resident == 0,
          "a bad expert id after %d good ones: %llu hits, %llu misses, %llu reads, %d pinned, %d resident", c->top_k,
          (unsigned long long)os.device.hits, (unsigned long long)os.device.misses,
          (unsigned long long)os.disk_reads, os.dev_pinned, os.dev_resident);
    ids[c->top_k] = c->top_k;
    CHECK(p->ops->acquire(p->self, l0, c->top_k + 2, ids, refs) == MOE_EBUSY &&
              strstr(moe_last_error(), "experts at once"), "%d experts in %d slots: %s", c->top_k + 2, tp.dev_slots,
          moe_last_error());
    settled_stats(p, &os);
    CHECK(os.device.hits + os.device.misses == 0 && os.disk_reads == 0 && os.dev_pinned == 0 && os.dev_resident == 0,
          "%d experts in %d slots: %llu misses, %llu reads, %d pinned, %d resident", c->top_k + 2, tp.dev_slots,
          (unsigned long long)os.device.misses, (unsigned long long)os.disk_reads, os.dev_pinned, os.dev_resident);
    /* another layer's top_k experts pinned: top_k of this layer do not fit beside them; once released, they do;
     * one id twice is one expert */
    REQUIRE(p->ops->acquire(p->self, l1, c->top_k, ids, refs) == MOE_OK, "%s", moe_last_error());
    CHECK(p->ops->acquire(p->self, l0, c->top_k, ids, refs) == MOE_EBUSY &&
              strstr(moe_last_error(), "pinned by others"), "beside another layer's pins: %s", moe_last_error());
    settled_stats(p, &os);
    CHECK(os.device.misses == (uint64_t)c->top_k && os.disk_reads == (uint64_t)c->top_k &&
              os.dev_pinned == c->top_k && os.dev_resident == c->top_k,
          "beside another layer's pins: %llu misses, %llu reads, %d pinned, %d resident (want %d each)",
          (unsigned long long)os.device.misses, (unsigned long long)os.disk_reads, os.dev_pinned, os.dev_resident,
          c->top_k);
    p->ops->release(p->self, l1);
    ids[c->top_k] = ids[0];
    CHECK(p->ops->acquire(p->self, l0, c->top_k + 1, ids, refs) == MOE_OK, "after the release: %s",
          moe_last_error());
    p->ops->release(p->self, l0);
    settled_stats(p, &os);
    CHECK(os.device.misses == 2u * (uint64_t)c->top_k && os.device.hits == 1 && os.dev_pinned == 0,
          "after the release: %llu misses, %llu hits, %d pinned", (unsigned long long)os.device.misses,
          (unsigned long long)os.device.hits, os.dev_pinned);
    moe_provider_destroy(p);
    /* a layer's quota of top_k + 1 slots, of 12 */
    int quota[MOE_MAX_LAYERS];
    for (int l = 0; l < c->n_layers; l++) quota[l] = c->top_k + 1;
    tp.dev_slots = c->top_k + 12;
    tp.dev_layer_quota = quota;
    p = moe_provider_tiered_create(m, &tp);
    REQUIRE(p, "%s", moe_last_error());
    for (int j = 0; j < c->top_k + 2; j++) ids[j] = j;
    CHECK(p->ops->acquire(p->self, l0, c->top_k + 2, ids, refs) == MOE_EBUSY &&
              strstr(moe_last_error(), "quota"), "%d experts in a quota of %d: %s", c->top_k + 2, c->top_k + 1,
          moe_last_error());
    settled_stats(p, &os);
    CHECK(os.device.hits + os.device.misses == 0 && os.disk_reads == 0 && os.dev_pinned == 0 && os.dev_resident == 0,
          "%d experts in a quota of %d: %llu misses, %llu reads, %d pinned, %d resident", c->top_k + 2, c->top_k + 1,
          (unsigned long long)os.device.misses, (unsigned long long)os.disk_reads, os.dev_pinned, os.dev_resident);
    moe_provider_destroy(p);
}

/* An acquire of a layer outside the model (MOE_EINVAL) or of a dense layer (MOE_ENOENT: it has no routed
 * experts, provider.h), of one expert or none, is refused and changes nothing. */
static void check_bad_layers(const struct moe_model *m, const char *store)
{
    const struct moe_config *c = &m->cfg;
    int dense = -1;
    for (int l = 0; l < c->n_layers && dense < 0; l++)
        if (!c->is_moe[l]) dense = l;
    struct moe_tiered_params tp = { .store_path = store, .dev_slots = c->top_k, .host_slots = 1, .numa_node = -1 };
    struct moe_provider *p = moe_provider_tiered_create(m, &tp);
    REQUIRE(p, "%s", moe_last_error());
    const int layers[] = { -1, c->n_layers, c->n_layers + 1000, dense };
    for (size_t i = 0; i < MOE_ARRAY_LEN(layers); i++) {
        if (layers[i] < 0 && i > 0) continue; /* no dense layer */
        enum moe_status want = dense >= 0 && layers[i] == dense ? MOE_ENOENT : MOE_EINVAL;
        for (int n = 0; n <= 1; n++) {
            int id = 0;
            struct moe_expert_ref out;
            CHECK(p->ops->acquire(p->self, layers[i], n, &id, &out) == want &&
                      strstr(moe_last_error(), "is not a MoE layer"),
                  "layer %d of %d, %d experts: want %s: %s", layers[i], c->n_layers, n, moe_status_str(want),
                  moe_last_error());
        }
    }
    struct moe_offload_stats os;
    settled_stats(p, &os);
    CHECK(os.device.hits + os.device.misses == 0 && os.disk_reads == 0 && os.dev_pinned == 0 && os.dev_resident == 0,
          "bad layers: %llu hits, %llu misses, %llu reads, %d pinned, %d resident", (unsigned long long)os.device.hits,
          (unsigned long long)os.device.misses, (unsigned long long)os.disk_reads, os.dev_pinned, os.dev_resident);
    moe_provider_destroy(p);
}

int main(void)
{
    static const struct cfg cfgs[] = {
        { "store-min-lru", true, false, false, 0, MOE_POLICY_LRU, 0, 1, false },
        { "store-min-lfu", true, false, false, 0, MOE_POLICY_LFU, 0, 1, false },
        { "store-min-belady", true, false, false, 0, MOE_POLICY_BELADY, 0, 1, false },
        { "store-belady-wide", true, false, false, 0, MOE_POLICY_BELADY, 8, 3, false },
        { "store-lfu-wide", true, false, false, 0, MOE_POLICY_LFU, 8, 16, false },
        { "store-pread", true, true, false, 0, MOE_POLICY_LRU, 1, 2, false },
        { "store-short-reads", true, false, false, 4096, MOE_POLICY_LRU, 2, 3, false },
        { "store-prefetch", true, false, true, 0, MOE_POLICY_LRU, 3, 5, false },
        { "store-quota-lru", true, false, false, 0, MOE_POLICY_LRU, 12, 4, true },
        { "store-prefetch-tight", true, false, true, 0, MOE_POLICY_LRU, 1, 1, false },
        { "store-prefetch-host2", true, false, true, 8192, MOE_POLICY_LFU, 2, 2, false },
        { "safetensors-lfu", false, false, false, 0, MOE_POLICY_LFU, 2, 4, false },
        { "safetensors-prefetch", false, false, true, 0, MOE_POLICY_LRU, 0, 1, false },
    };
    char p[512], store[600];
    const char *dir = t_tmp_make("/tmp");
    REQUIRE(dir, "mkdtemp");
    for (size_t i = 0; i < MOE_ARRAY_LEN(t_models); i++) {
        struct moe_model *m = moe_model_open(t_path(p, sizeof(p), t_models[i]));
        REQUIRE(m, "%s: %s", t_models[i], moe_last_error());
        struct moe_provider *res = moe_provider_resident_create(m, MOE_DT_BF16);
        REQUIRE(res, "resident");
        snprintf(store, sizeof(store), "%s/m%zu.moestore", dir, i);
        REQUIRE(moe_store_pack(m, store, NULL, NULL) == MOE_OK, "pack: %s", moe_last_error());
        struct moe_trace_info info;
        int *routing = make_routing(m, &info);
        struct moe_trace t = { .info = info, .n_tokens = STEPS, .experts = routing };
        int *keys;
        size_t n_keys;
        REQUIRE(moe_trace_keys(&t, &keys, &n_keys) == MOE_OK, "keys");
        for (size_t k = 0; k < MOE_ARRAY_LEN(cfgs); k++)
            run_cfg(m, res, store, &info, routing, keys, n_keys, &cfgs[k], t_models[i]);
        check_dev_hooks(m, store);
        check_fp8_records(m, store);
        check_late_failures(m, store);
        check_shared_transfer(m, store);
        check_failed_read_counts(m, dir);
        check_bad_layers(m, store);
        free(keys);
        free(routing);
        moe_provider_destroy(res);
        moe_model_close(m);
    }
    {
        struct moe_model *m = moe_model_open(t_path(p, sizeof(p), t_models[0]));
        REQUIRE(m, "%s: %s", t_models[0], moe_last_error());
        check_report_drains(m, dir);
        check_prefetch_order(m);
        snprintf(store, sizeof(store), "%s/quota.moestore", dir);
        REQUIRE(moe_store_pack(m, store, NULL, NULL) == MOE_OK, "pack: %s", moe_last_error());
        check_quota_max_pinned(m, store);
        check_refused_acquire(m, store);
        unlink(store);
        moe_model_close(m);
    }
    /* Bad sizes are refused with the flag to fix. */
    {
        struct moe_model *m = moe_model_open(t_path(p, sizeof(p), t_models[0]));
        struct moe_tiered_params tp = { .dev_slots = m->cfg.top_k - 1, .host_slots = 1, .numa_node = -1 };
        CHECK(!moe_provider_tiered_create(m, &tp), "dev slots below top_k accepted");
        CHECK(strstr(moe_last_error(), "--gpu-experts"), "error: %s", moe_last_error());
        struct moe_offload_opts o;
        moe_offload_opts_init(&o);
        CHECK(moe_offload_opts_parse(&o, MOE_OPT_GPU_EXPERTS, "abc") < 0, "bad --gpu-experts");
        CHECK(moe_offload_opts_parse(&o, MOE_OPT_GPU_BYTES, "64M") == 1 &&
              o.gpu_cache_bytes == (64ull << 20), "--gpu-cache-bytes 64M");
        CHECK(moe_offload_opts_parse(&o, MOE_OPT_POLICY, "fifo") < 0, "bad --policy");
        CHECK(moe_offload_opts_parse(&o, 'x', NULL) == 0, "foreign flag");
        struct moe_provider *prov = NULL;
        o.gpu_cache_bytes = 1;
        CHECK(moe_offload_provider_create(m, &o, &prov) == MOE_EINVAL && !prov, "tiny gpu bytes");
        moe_model_close(m);
    }
    t_tmp_remove(dir);
    return t_result("test_tiered");
}
