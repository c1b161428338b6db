/* The GPU expert tier: every acquired expert holds exactly its host bytes
 * whatever the slot count, policy and prefetch pattern (copies are ordered by
 * events, never computed on in flight); the expert FFN over tier pointers is
 * bit-identical for every capacity; a layer needing more experts than slots
 * is a clear error, and an acquire refused changes nothing; the device pool
 * returns to empty.  Skips (77) without a
 * CUDA device. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../offload/cuda_tier.h"
#include "../test_util.h"
#include "gpu_ref.h"

#define L 6
#define E 8
#define K 2
#define HID 128
#define INTER 192

static uint16_t *host; /* [L][E][gate|up|down] */

static const void *host_mat(void *ud, int layer, int e, int which)
{
    size_t m = (size_t)HID * INTER;
    (void)ud;
    if (layer == 3) return NULL; /* a dense layer */
    return host + (((size_t)layer * E + e) * 3 + (size_t)which) * m;
}

static bool use_fill; /* source experts through host_fill (staging) instead of host_mat */

static enum moe_status host_fill(void *ud, int layer, int e, void *const dst[3])
{
    for (int w = 0; w < 3; w++) {
        const void *src = host_mat(ud, layer, e, w);
        if (!src) return moe_errorf(MOE_ENOENT, "layer %d has no expert %d", layer, e);
        memcpy(dst[w], src, (size_t)HID * INTER * 2);
    }
    return MOE_OK;
}

static struct moe_cuda_tier *make(struct moe_cuda_ctx *c, int slots, enum moe_policy_kind pol)
{
    size_t mb = (size_t)HID * INTER * 2;
    struct moe_cuda_tier_params p = {
        .n_layers = L, .n_experts = E, .slots = slots, .mat_bytes = { mb, mb, mb },
        .policy = pol, .host_mat = use_fill ? NULL : host_mat, .host_fill = use_fill ? host_fill : NULL,
        .time_copies = slots == 3,
    };
    struct moe_cuda_tier *t = moe_cuda_tier_create(c, &p);
    REQUIRE(t, "tier with %d slots: %s", slots, moe_last_error());
    return t;
}

/* Run a routing sequence through a tier; for each step compute the expert FFN
 * of a fixed input on the acquired pointers and append the outputs. */
static void run(struct moe_cuda_ctx *c, int slots, enum moe_policy_kind pol, bool prefetch, const int *route,
                int steps, float *outs, bool verify_bytes)
{
    struct moe_cuda_tier *t = make(c, slots, pol);
    size_t m = (size_t)HID * INTER;
    uint16_t *chk = malloc(m * 2);
    float *x = malloc(sizeof(float) * K * HID);
    struct g_rng r = { 7 };
    void *dx, *dy;
    g_fill(&r, x, (size_t)K * HID, 1.0f, false);
    REQUIRE(moe_cuda_alloc(c, &dx, sizeof(float) * K * HID, "x") == MOE_OK, "alloc");
    REQUIRE(moe_cuda_alloc(c, &dy, sizeof(float) * K * HID, "y") == MOE_OK, "alloc");
    REQUIRE(moe_cuda_h2d(c, dx, x, sizeof(float) * K * HID) == MOE_OK, "h2d");
    for (int s = 0; s < steps; s++) {
        int layer = s % L;
        if (layer == 3) continue;
        const int *ids = route + (size_t)s * K;
        struct moe_expert_ref ref[K];
        struct moe_cuda_expert ex[K];
        int off[K + 1] = { 0, 1, 2 };
        if (prefetch && s + 1 < steps && (s + 1) % L != 3)
            moe_cuda_tier_prefetch(t, (s + 1) % L, K, route + (size_t)(s + 1) * K, NULL, 1);
        enum moe_status st = moe_cuda_tier_acquire(t, layer, K, ids, ref);
        REQUIRE(st == MOE_OK, "step %d acquire: %s", s, moe_last_error());
        for (int i = 0; i < K; i++) {
            CHECK(ref[i].dtype == MOE_DT_BF16, "dtype");
            ex[i].gate = ref[i].gate; ex[i].up = ref[i].up; ex[i].down = ref[i].down;
        }
        REQUIRE(moe_cuda_expert_ffn(c, dx, K, off, ex, MOE_DT_BF16, HID, INTER, dy) == MOE_OK, "ffn: %s",
                moe_last_error());
        REQUIRE(moe_cuda_d2h(c, outs + (size_t)s * K * HID, dy, sizeof(float) * K * HID) == MOE_OK, "d2h");
        if (verify_bytes) {
            for (int i = 0; i < K; i++)
                for (int w = 0; w < 3; w++) {
                    const void *dp = w == 0 ? ref[i].gate : w == 1 ? ref[i].up : ref[i].down;
                    REQUIRE(moe_cuda_d2h(c, chk, dp, m * 2) == MOE_OK, "d2h");
                    REQUIRE(moe_cuda_ctx_sync(c) == MOE_OK, "sync: %s", moe_last_error());
                    CHECK(!memcmp(chk, host_mat(NULL, layer, ids[i], w), m * 2),
                          "slots %d step %d layer %d expert %d matrix %d: device bytes differ from host",
                          slots, s, layer, ids[i], w);
                }
        }
        moe_cuda_tier_release(t, layer);
    }
    REQUIRE(moe_cuda_ctx_sync(c) == MOE_OK, "sync: %s", moe_last_error());
    CHECK(moe_cuda_tier_drain(t) == MOE_OK, "drain: %s", moe_last_error());
    struct moe_cuda_tier_stats st;
    moe_cuda_tier_get_stats(t, &st);
    printf("slots %2d %s%s: hits %llu misses %llu loads %llu waits %llu evictions %llu\n", slots,
           moe_policy_name(pol), prefetch ? "+prefetch" : "", (unsigned long long)st.hits,
           (unsigned long long)st.misses, (unsigned long long)st.loads, (unsigned long long)st.waits,
           (unsigned long long)st.evictions);
    CHECK(st.bytes_h2d == st.loads * 3 * m * 2, "%llu bytes copied for %llu loads of %zu bytes",
          (unsigned long long)st.bytes_h2d, (unsigned long long)st.loads, 3 * m * 2);
    if (slots == 3) CHECK(st.copy_s > 0 && st.loads > 0, "copy timing: %g s for %llu loads", st.copy_s,
                          (unsigned long long)st.loads);
    if (slots >= (L - 1) * E) CHECK(st.evictions == 0, "evictions with every expert resident");
    if (slots < 8) CHECK(st.evictions > 0, "no evictions with %d slots", slots);
    CHECK(!moe_cuda_tier_poisoned(t), "poisoned");
    moe_cuda_tier_destroy(t);
    moe_cuda_free(c, dx);
    moe_cuda_free(c, dy);
    free(chk);
    free(x);
}

/* The tier's counts, pins and copies, its copies landed first. */
static void settled(struct moe_cuda_tier *t, struct moe_cuda_tier_stats *s)
{
    CHECK(moe_cuda_tier_drain(t) == MOE_OK, "drain: %s", moe_last_error());
    moe_cuda_tier_get_stats(t, s);
}

/* What the refusals below may have left: accesses counted, copies (one a miss), pins, slots holding an
 * expert. */
static void check_state(struct moe_cuda_tier *t, const char *what, uint64_t hits, uint64_t misses, int pinned,
                        int resident)
{
    struct moe_cuda_tier_stats s;
    settled(t, &s);
    CHECK(s.hits == hits && s.misses == misses && s.loads == misses && s.pinned == pinned && s.resident == resident,
          "%s: %llu hits, %llu misses, %llu loads, %d pinned, %d resident (want %llu hits, %llu misses and loads, "
          "%d pinned, %d resident)", what, (unsigned long long)s.hits, (unsigned long long)s.misses,
          (unsigned long long)s.loads, s.pinned, s.resident, (unsigned long long)hits, (unsigned long long)misses,
          pinned, resident);
}

/* An acquire refused (an expert id that does not exist after good ones, a dense layer, more experts than
 * slots, experts beside another layer's pins, pins beyond what the tier records) changes nothing: no hit
 * or miss counted, no copy, no pin; the same acquire, once it fits, succeeds.  A prefetch of a dense
 * layer changes nothing either. */
static void check_refused_acquire(struct moe_cuda_ctx *c)
{
    size_t mb = (size_t)HID * INTER * 2;
    bool is_moe[L];
    for (int l = 0; l < L; l++) is_moe[l] = l != 3;
    struct moe_cuda_tier_params p = {
        .n_layers = L, .n_experts = E, .slots = K + 1, .mat_bytes = { mb, mb, mb }, .policy = MOE_POLICY_LRU,
        .is_moe = is_moe, .host_mat = use_fill ? NULL : host_mat, .host_fill = use_fill ? host_fill : NULL,
    };
    struct moe_cuda_tier *t = moe_cuda_tier_create(c, &p);
    REQUIRE(t, "tier with %d slots: %s", K + 1, moe_last_error());
    int ids[K + 2];
    struct moe_expert_ref out[K + 2];
    for (int j = 0; j < K + 2; j++) ids[j] = j;
    ids[K] = E; /* after K valid ones */
    CHECK(moe_cuda_tier_acquire(t, 0, K + 1, ids, out) == MOE_EINVAL && strstr(moe_last_error(), "expert id"),
          "expert %d of %d: %s", E, E, moe_last_error());
    check_state(t, "a bad expert id after good ones", 0, 0, 0, 0);
    ids[K] = K;
    CHECK(moe_cuda_tier_acquire(t, 0, K + 2, ids, out) == MOE_EBUSY && strstr(moe_last_error(), "--gpu-experts"),
          "%d experts in %d slots: %s", K + 2, K + 1, moe_last_error());
    check_state(t, "more experts than slots", 0, 0, 0, 0);
    CHECK(moe_cuda_tier_acquire(t, 3, K, ids, out) == MOE_ENOENT && strstr(moe_last_error(), "not a MoE layer"),
          "dense layer 3: %s", moe_last_error());
    check_state(t, "a dense layer", 0, 0, 0, 0);
    /* another layer's K experts pinned: K of this layer do not fit beside them; once released, they do;
     * one id twice is one expert */
    REQUIRE(moe_cuda_tier_acquire(t, 1, K, ids, out) == MOE_OK, "%s", moe_last_error());
    CHECK(moe_cuda_tier_acquire(t, 0, K, ids, out) == MOE_EBUSY && strstr(moe_last_error(), "pinned by others"),
          "beside another layer's pins: %s", moe_last_error());
    check_state(t, "beside another layer's pins", 0, K, K, K);
    moe_cuda_tier_release(t, 1);
    ids[K] = ids[0];
    CHECK(moe_cuda_tier_acquire(t, 0, K + 1, ids, out) == MOE_OK, "after the release: %s", moe_last_error());
    moe_cuda_tier_release(t, 0);
    struct moe_cuda_tier_stats s;
    settled(t, &s);
    CHECK(s.misses == 2 * K && s.loads == 2 * K && s.hits == 1 && s.pinned == 0,
          "after the release: %llu misses, %llu loads, %llu hits, %d pinned", (unsigned long long)s.misses,
          (unsigned long long)s.loads, (unsigned long long)s.hits, s.pinned);
    /* pins the tier records without a release: n acquires of one expert fill them; after n - 1, two experts
     * are refused before the first is counted */
    int n = 0;
    while (n < 100000 && moe_cuda_tier_acquire(t, 0, 1, ids, out) == MOE_OK) n++;
    CHECK(n < 100000 && moe_last_status() == MOE_EBUSY && strstr(moe_last_error(), "without release"),
          "%d acquires without release: %s", n, moe_last_error());
    moe_cuda_tier_release(t, 0);
    for (int i = 0; i + 1 < n; i++)
        REQUIRE(moe_cuda_tier_acquire(t, 0, 1, ids, out) == MOE_OK, "acquire %d: %s", i, moe_last_error());
    settled(t, &s);
    uint64_t hits = s.hits;
    CHECK(moe_cuda_tier_acquire(t, 0, 2, ids, out) == MOE_EBUSY, "2 experts beside %d pins accepted", n - 1);
    check_state(t, "pins beyond the record", hits, 2 * K, 1, K + 1);
    /* every slot full, one pinned: a prefetch of the dense layer evicts nothing and loads nothing */
    moe_cuda_tier_prefetch(t, 3, K, ids, NULL, 1);
    check_state(t, "a prefetch of a dense layer", hits, 2 * K, 1, K + 1);
    moe_cuda_tier_release(t, 0);
    CHECK(!moe_cuda_tier_poisoned(t), "poisoned");
    moe_cuda_tier_destroy(t);
}

int main(void)
{
    if (moe_cuda_device_count() == 0) {
        printf("test_gpu_tier: no CUDA device, skipping\n");
        return T_SKIP;
    }
    struct moe_cuda_params cp = { .device = 0, .workspace_bytes = 16u << 20 };
    struct moe_cuda_ctx *c = moe_cuda_ctx_create(&cp);
    REQUIRE(c, "context: %s", moe_last_error());
    size_t m = (size_t)HID * INTER, n = (size_t)L * E * 3 * m;
    struct g_rng r = { 12345 };
    host = malloc(n * 2);
    REQUIRE(host, "host pool");
    g_fill_bf16(&r, host, n, 0.05f);

    /* MOEFLOW_TEST_QUICK (memcheck runs): a shorter routing sequence */
    int steps = getenv("MOEFLOW_TEST_QUICK") ? 30 : 120, route[240];
    for (int s = 0; s < steps; s++) {
        route[s * K] = (int)(g_next(&r) % E);
        route[s * K + 1] = (route[s * K] + 1 + (int)(g_next(&r) % (E - 1))) % E;
    }
    float *ref = calloc((size_t)steps * K * HID, sizeof(float));
    float *got = calloc((size_t)steps * K * HID, sizeof(float));
    run(c, (L - 1) * E, MOE_POLICY_LRU, false, route, steps, ref, true);
    static const int caps[] = { K, 3, 5, 16 };
    for (size_t i = 0; i < MOE_ARRAY_LEN(caps); i++)
        for (int pol = 0; pol < 2; pol++)
            for (int pf = 0; pf < 2; pf++) {
                memset(got, 0, (size_t)steps * K * HID * sizeof(float));
                run(c, caps[i], pol ? MOE_POLICY_LFU : MOE_POLICY_LRU, pf, route, steps, got, caps[i] == K);
                CHECK(!memcmp(got, ref, (size_t)steps * K * HID * sizeof(float)),
                      "outputs with %d slots (%s%s) differ from all-resident", caps[i], pol ? "lfu" : "lru",
                      pf ? " + prefetch" : "");
            }

    /* the staging path (host_fill): same bytes, same outputs */
    use_fill = true;
    for (size_t i = 0; i < MOE_ARRAY_LEN(caps); i++) {
        memset(got, 0, (size_t)steps * K * HID * sizeof(float));
        run(c, caps[i], MOE_POLICY_LRU, true, route, steps, got, true);
        CHECK(!memcmp(got, ref, (size_t)steps * K * HID * sizeof(float)),
              "host_fill outputs with %d slots differ from all-resident", caps[i]);
    }
    use_fill = false;

    /* hints (the provider's hint op): host bookkeeping only, no copy and no
     * pin; out-of-range layers and ids and NULL scores are skipped; LRU ranks
     * as without them; the predicted policy takes them */
    for (int pol = 0; pol < 2; pol++) {
        static const int seq[4][2] = { { 0, 1 }, { 2, 3 }, { 4, 5 }, { 6, 7 } };
        uint64_t miss[2] = { 0, 0 };
        for (int h = 0; h < 2; h++) {
            struct moe_cuda_tier *ht = make(c, 4, pol ? MOE_POLICY_PREDICTED : MOE_POLICY_LRU);
            struct moe_cuda_tier_stats s0, s1;
            struct moe_expert_ref o[2];
            for (int i = 0; i < 4; i++) {
                CHECK(moe_cuda_tier_acquire(ht, 0, 2, seq[i], o) == MOE_OK, "acquire: %s", moe_last_error());
                moe_cuda_tier_release(ht, 0);
            }
            moe_cuda_tier_get_stats(ht, &s0);
            if (h) {
                int ids[E + 2];
                float sc[E + 2];
                for (int e = 0; e < E + 2; e++) {
                    ids[e] = e < E ? e : e == E ? E : -1;
                    sc[e] = e < 2 ? 1.0f : 0.0f;
                }
                moe_cuda_tier_hint(ht, 0, E + 2, ids, sc, L); /* layer 0 of the next step */
                moe_cuda_tier_hint(ht, L, E, ids, sc, 1);
                moe_cuda_tier_hint(ht, -1, E, ids, sc, 1);
                moe_cuda_tier_hint(ht, 0, E, ids, NULL, 1);
            }
            moe_cuda_tier_get_stats(ht, &s1);
            CHECK(s1.bytes_h2d == s0.bytes_h2d && s1.loads == s0.loads, "a hint moved %llu bytes",
                  (unsigned long long)(s1.bytes_h2d - s0.bytes_h2d));
            CHECK(s1.pinned == 0, "a hint pinned %d experts", s1.pinned);
            CHECK(moe_cuda_tier_acquire(ht, 0, 2, seq[0], o) == MOE_OK, "acquire: %s", moe_last_error());
            moe_cuda_tier_release(ht, 0);
            moe_cuda_tier_get_stats(ht, &s1);
            miss[h] = s1.misses - s0.misses;
            moe_cuda_tier_destroy(ht);
        }
        if (!pol) CHECK(miss[0] == miss[1], "LRU with hints: %llu misses, without %llu", (unsigned long long)miss[1],
                        (unsigned long long)miss[0]);
        else printf("test_gpu_tier: predicted policy, experts 0, 1 hinted: %llu misses, not hinted %llu\n",
                    (unsigned long long)miss[1], (unsigned long long)miss[0]);
    }

    check_refused_acquire(c);
    use_fill = true;
    check_refused_acquire(c);
    use_fill = false;

    /* slots for every key: only the MoE layers' experts get one (layer 3 is dense) */
    {
        size_t mb = (size_t)HID * INTER * 2;
        bool is_moe[L];
        for (int l = 0; l < L; l++) is_moe[l] = l != 3;
        struct moe_cuda_tier_params ap = { .n_layers = L, .n_experts = E, .slots = L * E, .mat_bytes = { mb, mb, mb },
                                           .policy = MOE_POLICY_LRU, .is_moe = is_moe, .host_mat = host_mat };
        struct moe_cuda_tier *at = moe_cuda_tier_create(c, &ap);
        REQUIRE(at, "tier with %d slots: %s", L * E, moe_last_error());
        struct moe_cuda_tier_stats as;
        moe_cuda_tier_get_stats(at, &as);
        CHECK(as.slots == (L - 1) * E, "%d slots asked of %d layers (one dense) x %d experts: %d allocated, want %d",
              L * E, L, E, as.slots, (L - 1) * E);
        moe_cuda_tier_destroy(at);
        for (int l = 0; l < L; l++) is_moe[l] = false;
        CHECK(!moe_cuda_tier_create(c, &ap) && strstr(moe_last_error(), "no experts"), "no MoE layer: %s",
              moe_last_error());
    }

    /* errors: more experts at once than slots; a dense layer; bad id */
    struct moe_cuda_tier *t = make(c, K, MOE_POLICY_LRU);
    struct moe_expert_ref out[3];
    int ids3[3] = { 0, 1, 2 }, bad[1] = { E };
    CHECK(moe_cuda_tier_acquire(t, 0, 3, ids3, out) == MOE_EBUSY, "3 experts in 2 slots accepted");
    CHECK(strstr(moe_last_error(), "--gpu-experts") != NULL, "message does not name the setting: %s",
          moe_last_error());
    CHECK(moe_cuda_tier_acquire(t, 0, 2, ids3, out) == MOE_OK, "acquire after a failed one: %s",
          moe_last_error());
    moe_cuda_tier_release(t, 0);
    CHECK(moe_cuda_tier_acquire(t, 3, 1, ids3, out) == MOE_ENOENT, "dense layer accepted");
    CHECK(moe_cuda_tier_acquire(t, 0, 1, bad, out) == MOE_EINVAL, "expert id %d accepted", E);
    CHECK(moe_cuda_tier_acquire(t, 1, 2, ids3, out) == MOE_OK, "acquire: %s", moe_last_error());
    moe_cuda_tier_release(t, 1);
    moe_cuda_tier_destroy(t);

    /* start-up failure names the setting to lower */
    size_t huge = (size_t)1 << 40;
    struct moe_cuda_tier_params hp = { .n_layers = L, .n_experts = E, .slots = 64,
                                       .mat_bytes = { huge, huge, huge }, .host_mat = host_mat };
    CHECK(moe_cuda_tier_create(c, &hp) == NULL, "a 192 TiB tier was created");
    CHECK(strstr(moe_last_error(), "--gpu-experts") != NULL, "message: %s", moe_last_error());

    CHECK(moe_cuda_ctx_sync(c) == MOE_OK, "sync: %s", moe_last_error());
    moe_cuda_ctx_destroy(c);
    free(host); free(ref); free(got);
    return t_result("test_gpu_tier");
}
