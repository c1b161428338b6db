/* LRU and LFU on hand-worked access sequences, pinning, quotas and determinism
 * of the cache manager; sim agrees with direct cache replay. */
#include "../../offload/cache.h"
#include "../../offload/sim.h"
#include "../test_util.h"

#include <math.h>
#include <unistd.h>

/* Replay single-key accesses (each access its own step: pinned, then unpinned). */
static void replay(enum moe_policy_kind k, int cap, const int *seq, int n, char *hm,
                   struct moe_cache_stats *st)
{
    struct moe_cache_params p = { .n_keys = 16, .capacity = cap,
                                  .policy = moe_policy_create(k, 16, seq, (size_t)n) };
    struct moe_cache *c = moe_cache_create(&p);
    REQUIRE(c, "cache create: %s", moe_last_error());
    for (int i = 0; i < n; i++) {
        int slot, ev;
        bool miss;
        REQUIRE(moe_cache_acquire(c, seq[i], &slot, &miss, &ev) == MOE_OK, "%s", moe_last_error());
        CHECK(moe_cache_key_at(c, slot) == seq[i], "slot %d holds %d", slot, moe_cache_key_at(c, slot));
        hm[i] = miss ? 'm' : 'h';
        moe_cache_unpin(c, seq[i]);
    }
    hm[n] = 0;
    moe_cache_get_stats(c, st);
    moe_cache_destroy(c);
}

/* moe_cache_acquire_n's fill: records the keys it is called for, fails for fail_key; before drops
 * drop_key, hit records the hits. */
struct fills {
    int n, keys[16], fail_key;
    struct moe_cache *c;
    int drop_key, n_hits, hits[16], n_before;
};

static enum moe_status record_fill(void *ud, int key, int slot)
{
    struct fills *f = ud;
    (void)slot;
    if (f->n < 16) f->keys[f->n] = key;
    f->n++;
    return key == f->fail_key ? moe_errorf(MOE_EIO, "fill of key %d failed", key) : MOE_OK;
}

static void drop_before(void *ud, int key)
{
    struct fills *f = ud;
    f->n_before++;
    if (key == f->drop_key) moe_cache_drop(f->c, key);
}

static void record_hit(void *ud, int key, int slot)
{
    struct fills *f = ud;
    (void)slot;
    if (f->n_hits < 16) f->hits[f->n_hits] = key;
    f->n_hits++;
}

/* What a request left: accesses counted, keys pinned, slots holding a key, fills called. */
static void request_state(const struct moe_cache *c, const struct fills *f, const char *what, uint64_t hits,
                          uint64_t misses, int pinned, int resident, int n_fills)
{
    struct moe_cache_stats cs;
    moe_cache_get_stats(c, &cs);
    int res = 0;
    for (int s = 0; s < moe_cache_capacity(c); s++) res += moe_cache_key_at(c, s) >= 0;
    CHECK(cs.hits == hits && cs.misses == misses && moe_cache_pinned(c) == pinned && res == resident &&
              f->n == n_fills,
          "%s: %llu hits, %llu misses, %d pinned, %d resident, %d fills (want %llu, %llu, %d, %d, %d)", what,
          (unsigned long long)cs.hits, (unsigned long long)cs.misses, moe_cache_pinned(c), res, f->n,
          (unsigned long long)hits, (unsigned long long)misses, pinned, resident, n_fills);
}

/* A request (moe_cache_acquire_n, the GPU tier's acquire) refused whole changes nothing: a key outside
 * the key space after good ones, more keys than slots, keys beside others' pins, more than a quota; no
 * access counted, no fill, no pin.  A fill that fails drops its key and unpins the keys before it. */
static void check_acquire_n(void)
{
    struct moe_cache_params p = { .n_keys = 16, .capacity = 3, .policy = moe_policy_create(MOE_POLICY_LRU, 16,
                                                                                           NULL, 0) };
    struct moe_cache *c = moe_cache_create(&p);
    REQUIRE(c, "cache create: %s", moe_last_error());
    struct fills f = { .fail_key = -1 };
    const struct moe_cache_fill rf = { .ud = &f, .fill = record_fill };
    int failed = 0;
    const int bad[3] = { 0, 1, 16 }, four[4] = { 0, 1, 2, 3 }, other[2] = { 4, 5 }, dup[3] = { 0, 1, 0 };
    CHECK(moe_cache_acquire_n(c, bad, 3, &rf, &failed) == MOE_EINVAL && failed == -1,
          "key 16 of 16 after two good ones: failed %d, %s", failed, moe_last_error());
    request_state(c, &f, "a bad key after two good ones", 0, 0, 0, 0, 0);
    CHECK(moe_cache_acquire_n(c, four, 4, &rf, &failed) == MOE_EBUSY && failed == -1,
          "4 keys in 3 slots: failed %d, %s", failed, moe_last_error());
    request_state(c, &f, "4 keys in 3 slots", 0, 0, 0, 0, 0);
    REQUIRE(moe_cache_acquire_n(c, other, 2, &rf, &failed) == MOE_OK, "%s", moe_last_error());
    request_state(c, &f, "2 keys", 0, 2, 2, 2, 2);
    CHECK(f.keys[0] == 4 && f.keys[1] == 5, "filled %d, %d (want 4, 5)", f.keys[0], f.keys[1]);
    CHECK(moe_cache_acquire_n(c, other, 2, &rf, &failed) == MOE_OK, "the same keys again: %s",
          moe_last_error());
    request_state(c, &f, "the same keys again", 2, 2, 2, 2, 2);
    moe_cache_unpin(c, 4);
    moe_cache_unpin(c, 5);
    CHECK(moe_cache_acquire_n(c, four, 2, &rf, &failed) == MOE_EBUSY &&
              strstr(moe_last_error(), "pinned by others") && failed == -1,
          "2 keys beside 2 pinned in 3 slots: failed %d, %s", failed, moe_last_error());
    request_state(c, &f, "2 keys beside 2 pinned", 2, 2, 2, 2, 2);
    moe_cache_unpin(c, 4);
    moe_cache_unpin(c, 5);
    /* one key twice is one key: it fits once the others' pins are gone */
    CHECK(moe_cache_acquire_n(c, dup, 3, &rf, &failed) == MOE_OK, "after the release: %s",
          moe_last_error());
    request_state(c, &f, "after the release", 3, 4, 2, 3, 4);
    moe_cache_unpin(c, 0);
    moe_cache_unpin(c, 0);
    moe_cache_unpin(c, 1);
    /* a failing fill: its key dropped, the key filled before it unpinned, the key after it untouched */
    const int fail[3] = { 3, 2, 0 };
    f.fail_key = 2;
    CHECK(moe_cache_acquire_n(c, fail, 3, &rf, &failed) == MOE_EIO && failed == 1,
          "a failing fill: failed %d, %s", failed, moe_last_error());
    request_state(c, &f, "a failing fill", 3, 6, 0, 2, 6);
    CHECK(moe_cache_slot_of(c, 2) < 0 && moe_cache_slot_of(c, 3) >= 0, "after a failing fill: key 2 in slot %d, "
          "key 3 in %d", moe_cache_slot_of(c, 2), moe_cache_slot_of(c, 3));
    moe_cache_destroy(c);

    /* a quota of 2 keys per group of 4, 8 slots */
    int quota[4] = { 2, 2, 2, 2 };
    struct moe_cache_params qp = { .n_keys = 16, .capacity = 8, .group_size = 4, .quota = quota,
                                   .policy = moe_policy_create(MOE_POLICY_LRU, 16, NULL, 0) };
    c = moe_cache_create(&qp);
    REQUIRE(c, "quota cache: %s", moe_last_error());
    f = (struct fills){ .fail_key = -1 };
    CHECK(moe_cache_acquire_n(c, four, 3, &rf, &failed) == MOE_EBUSY && strstr(moe_last_error(), "quota"),
          "3 keys in a quota of 2: %s", moe_last_error());
    request_state(c, &f, "3 keys in a quota of 2", 0, 0, 0, 0, 0);
    CHECK(moe_cache_acquire_n(c, four, 2, &rf, &failed) == MOE_OK, "2 keys in a quota of 2: %s",
          moe_last_error());
    request_state(c, &f, "2 keys in a quota of 2", 0, 2, 2, 2, 2);
    moe_cache_destroy(c);

    /* before runs ahead of each key's access: the key it drops is a miss and filled anew; hit hears the hits */
    p.policy = moe_policy_create(MOE_POLICY_LRU, 16, NULL, 0);
    c = moe_cache_create(&p);
    REQUIRE(c, "cache create: %s", moe_last_error());
    f = (struct fills){ .fail_key = -1, .drop_key = -1, .c = c };
    const struct moe_cache_fill bf = { .ud = &f, .fill = record_fill, .before = drop_before, .hit = record_hit };
    const int two[2] = { 6, 7 };
    REQUIRE(moe_cache_acquire_n(c, two, 2, &bf, &failed) == MOE_OK, "%s", moe_last_error());
    moe_cache_unpin(c, 6);
    moe_cache_unpin(c, 7);
    f.drop_key = 7;
    CHECK(moe_cache_acquire_n(c, two, 2, &bf, &failed) == MOE_OK, "key 7 dropped before its access: %s",
          moe_last_error());
    request_state(c, &f, "key 7 dropped before its access", 1, 3, 2, 2, 3);
    CHECK(f.n_before == 4 && f.keys[2] == 7 && f.n_hits == 1 && f.hits[0] == 6,
          "%d before calls, fill %d, %d hits (key %d): want 4, key 7, 1 hit (key 6)", f.n_before, f.keys[2], f.n_hits,
          f.hits[0]);
    moe_cache_destroy(c);
}

int main(void)
{
    /* Capacity 3. LRU: 1m 2m 3m 1h 4m(-2) 2m(-3) 5m(-1) 1m(-4). */
    static const int seq[] = { 1, 2, 3, 1, 4, 2, 5, 1 };
    char hm[16];
    struct moe_cache_stats st;
    replay(MOE_POLICY_LRU, 3, seq, 8, hm, &st);
    CHECK(!strcmp(hm, "mmmhmmmm"), "LRU got %s", hm);
    CHECK(st.hits == 1 && st.misses == 7 && st.evictions == 4, "LRU stats %llu/%llu/%llu",
          (unsigned long long)st.hits, (unsigned long long)st.misses,
          (unsigned long long)st.evictions);
    /* LFU (counts kept across evictions, ties by recency):
     * 1m 2m 3m 1h(1:2) 4m(-2: count 1, older than 3) 2m(-3) 5m(-4: 4 has 1, 1 and 2 have 2) 1h. */
    replay(MOE_POLICY_LFU, 3, seq, 8, hm, &st);
    CHECK(!strcmp(hm, "mmmhmmmh"), "LFU got %s", hm);
    CHECK(st.hits == 2 && st.misses == 6, "LFU stats");
    /* Belady: 1m 2m 3m 1h 4m(-3: next use never) 2h 5m(-2 or 4: both never; lowest key 2) 1h. */
    replay(MOE_POLICY_BELADY, 3, seq, 8, hm, &st);
    CHECK(!strcmp(hm, "mmmhmhmh"), "Belady got %s", hm);

    /* Pinned keys are never victims; all pinned -> EBUSY, not a crash. */
    {
        struct moe_cache_params p = { .n_keys = 8, .capacity = 2, .policy = moe_policy_lru_create(8) };
        struct moe_cache *c = moe_cache_create(&p);
        int slot, ev;
        bool miss;
        REQUIRE(moe_cache_acquire(c, 0, &slot, &miss, &ev) == MOE_OK, "a0");
        REQUIRE(moe_cache_acquire(c, 1, &slot, &miss, &ev) == MOE_OK, "a1");
        CHECK(moe_cache_acquire(c, 2, &slot, &miss, &ev) == MOE_EBUSY, "all pinned must be EBUSY");
        CHECK(moe_cache_pinned(c) == 2, "pinned %d", moe_cache_pinned(c));
        moe_cache_unpin(c, 1);
        REQUIRE(moe_cache_acquire(c, 2, &slot, &miss, &ev) == MOE_OK, "a2");
        CHECK(miss && ev == 1, "key 1 (unpinned) must be the victim, got %d", ev);
        bool ins;
        CHECK(moe_cache_prefetch(c, 3, &slot, &ins, &ev) == MOE_EBUSY, "prefetch with all pinned");
        moe_cache_unpin(c, 0);
        moe_cache_unpin(c, 2);
        REQUIRE(moe_cache_prefetch(c, 3, &slot, &ins, &ev) == MOE_OK && ins, "prefetch 3");
        REQUIRE(moe_cache_acquire(c, 3, &slot, &miss, &ev) == MOE_OK && !miss, "prefetched hit");
        moe_cache_get_stats(c, &st);
        CHECK(st.prefetches == 1 && st.prefetch_hits == 1, "prefetch stats %llu %llu",
              (unsigned long long)st.prefetches, (unsigned long long)st.prefetch_hits);
        moe_cache_drop(c, 3);
        CHECK(moe_cache_slot_of(c, 3) == -1 && moe_cache_pinned(c) == 0, "drop");
        moe_cache_destroy(c);
    }
    /* Per-layer quotas: group 0 may hold 1 key, so key 1 evicts key 0 although a slot is free. */
    {
        int quota[2] = { 1, 3 };
        struct moe_cache_params p = { .n_keys = 8, .capacity = 3, .group_size = 4, .quota = quota,
                                      .policy = moe_policy_lru_create(8) };
        struct moe_cache *c = moe_cache_create(&p);
        int slot, ev;
        bool miss;
        REQUIRE(c, "quota cache");
        moe_cache_acquire(c, 0, &slot, &miss, &ev);
        moe_cache_unpin(c, 0);
        moe_cache_acquire(c, 1, &slot, &miss, &ev);
        CHECK(miss && ev == 0, "quota: key 1 must evict key 0, evicted %d", ev);
        moe_cache_destroy(c);
    }
    /* Bad parameters are errors, not crashes. */
    {
        struct moe_cache_params p = { .n_keys = 8, .capacity = 0, .policy = moe_policy_lru_create(8) };
        CHECK(!moe_cache_create(&p), "capacity 0 must fail");
        CHECK(strstr(moe_last_error(), "capacity"), "error names capacity: %s", moe_last_error());
    }

    /* sim over a written trace equals the direct replay: one MoE layer (layer 1 of 2), k = 1. */
    {
        char path[] = "/tmp/moe_test_policy_XXXXXX";
        int fd = mkstemp(path);
        REQUIRE(fd >= 0, "mkstemp");
        close(fd);
        struct moe_trace_info info = { .layers = 2, .experts = 8, .top_k = 1, .n_moe = 1,
                                       .moe_layers = { 1 }, .expert_bytes = 1000 };
        snprintf(info.model, sizeof(info.model), "hand");
        struct moe_trace_writer *w = moe_trace_writer_open(path, &info);
        REQUIRE(w, "writer");
        for (int i = 0; i < 8; i++) moe_trace_writer_token(w, 0, i, 7, &seq[i], NULL);
        REQUIRE(moe_trace_writer_close(w) == MOE_OK, "close");
        struct moe_trace *t;
        REQUIRE(moe_trace_load(path, &t) == MOE_OK, "load: %s", moe_last_error());
        struct moe_sim_params sp = { .capacity = 3, .policy = MOE_POLICY_LFU, .link_gbps = 1e-3,
                                     .layer_ms = 1.0 };
        struct moe_sim_result r;
        REQUIRE(moe_sim_run(t, &sp, &r) == MOE_OK, "sim: %s", moe_last_error());
        CHECK(r.hits == 2 && r.misses == 6 && r.bytes_moved == 6000, "sim LFU %llu/%llu/%llu",
              (unsigned long long)r.hits, (unsigned long long)r.misses,
              (unsigned long long)r.bytes_moved);
        /* 6 misses x 1000 B at 1e6 B/s = 6 ms stall; 8 layers x 1 ms compute. */
        CHECK(fabs(r.stall_s - 0.006) < 1e-9 && fabs(r.compute_s - 0.008) < 1e-9,
              "timeline stall %g compute %g", r.stall_s, r.compute_s);
        CHECK(fabs(r.tokens_per_s - 8 / 0.014) < 1e-6, "tokens/s %g", r.tokens_per_s);
        sp.capacity = 0;
        CHECK(moe_sim_run(t, &sp, &r) == MOE_EINVAL, "capacity below top_k must be refused");
        moe_trace_free(t);

        /* a routing weight with no JSON spelling (NaN, infinity) is refused, not written as a line that
         * no reader takes: what was written before stays a trace that loads */
        w = moe_trace_writer_open(path, &info);
        REQUIRE(w, "writer");
        float wt[2] = { 0.5f, NAN };
        CHECK(moe_trace_writer_token(w, 0, 0, 7, &seq[0], &wt[0]) == MOE_OK, "finite weight: %s", moe_last_error());
        CHECK(moe_trace_writer_token(w, 0, 1, 7, &seq[1], &wt[1]) == MOE_ERANGE &&
                  strstr(moe_last_error(), "token 1 of sequence 0") && strstr(moe_last_error(), "MoE layer 1"),
              "NaN weight: %s", moe_last_error());
        wt[1] = INFINITY;
        CHECK(moe_trace_writer_token(w, 0, 1, 7, &seq[1], &wt[1]) == MOE_ERANGE, "infinite weight accepted");
        REQUIRE(moe_trace_writer_close(w) == MOE_OK, "close");
        CHECK(moe_trace_load(path, &t) == MOE_OK && t->n_tokens == 1 && t->weights && t->weights[0] == 0.5f,
              "trace after a refused weight: %s", moe_last_error());
        moe_trace_free(t);
        unlink(path);
    }
    check_acquire_n();
    return t_result("test_policy");
}
