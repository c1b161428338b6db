/* Belady in the cache manager equals an independent brute-force optimum
 * (dynamic programming over every eviction choice) on small random traces,
 * with the same rule that a step's experts stay pinned while it computes;
 * LRU and LFU are never better than it. */
#include "../../offload/cache.h"
#include "../test_util.h"

#include <stdint.h>

#define NK 6          /* keys */
#define MAXA 48       /* accesses */

static int acc[MAXA], step_start[MAXA]; /* step_start[i]: index of the first access of i's step */
static int n_acc;
static int8_t memo[MAXA + 1][1 << NK];

/* Fewest misses from access i on with resident set `set` and capacity cap. */
static int opt(int i, unsigned set, int cap)
{
    if (i == n_acc) return 0;
    if (memo[i][set] >= 0) return memo[i][set];
    int key = acc[i], best;
    if (set & (1u << key)) {
        best = opt(i + 1, set, cap);
    } else if (__builtin_popcount(set) < cap) {
        best = 1 + opt(i + 1, set | (1u << key), cap);
    } else {
        unsigned pinned = 0;
        for (int j = step_start[i]; j < i; j++) pinned |= 1u << acc[j];
        best = 1 << 20;
        for (int v = 0; v < NK; v++) {
            if (!(set & (1u << v)) || (pinned & (1u << v))) continue;
            int r = 1 + opt(i + 1, (set & ~(1u << v)) | (1u << key), cap);
            if (r < best) best = r;
        }
    }
    memo[i][set] = (int8_t)best;
    return best;
}

static uint64_t rng = 88172645463325252ull;
static unsigned rnd(unsigned n)
{
    return (unsigned)(t_xorshift(&rng) % n);
}

static uint64_t run_cache(enum moe_policy_kind k, int cap, int kk)
{
    struct moe_cache_params p = { .n_keys = NK, .capacity = cap,
                                  .policy = moe_policy_create(k, NK, acc, (size_t)n_acc) };
    struct moe_cache *c = moe_cache_create(&p);
    REQUIRE(c, "%s", moe_last_error());
    for (int s = 0; s < n_acc; s += kk) {
        for (int j = 0; j < kk; j++) {
            int slot, ev;
            bool miss;
            REQUIRE(moe_cache_acquire(c, acc[s + j], &slot, &miss, &ev) == MOE_OK, "%s",
                    moe_last_error());
        }
        for (int j = 0; j < kk; j++) moe_cache_unpin(c, acc[s + j]);
    }
    struct moe_cache_stats st;
    moe_cache_get_stats(c, &st);
    moe_cache_destroy(c);
    return st.misses;
}

int main(void)
{
    int trials = 0;
    for (int t = 0; t < 400; t++) {
        int kk = 1 + (int)rnd(2);                 /* top-k 1 or 2 */
        int cap = kk + (int)rnd(3);               /* kk .. kk+2 */
        int steps = 6 + (int)rnd(MAXA / kk - 6);
        n_acc = steps * kk;
        for (int s = 0; s < steps; s++) {
            for (int j = 0; j < kk; j++) {
                int k;
                bool dup;
                do {
                    k = (int)rnd(NK);
                    dup = false;
                    for (int q = 0; q < j; q++) dup |= acc[s * kk + q] == k;
                } while (dup);
                acc[s * kk + j] = k;
                step_start[s * kk + j] = s * kk;
            }
        }
        memset(memo, -1, sizeof(memo));
        int best = opt(0, 0, cap);
        uint64_t bel = run_cache(MOE_POLICY_BELADY, cap, kk);
        uint64_t lru = run_cache(MOE_POLICY_LRU, cap, kk);
        uint64_t lfu = run_cache(MOE_POLICY_LFU, cap, kk);
        CHECK(bel == (uint64_t)best, "trial %d (k=%d cap=%d, %d accesses): belady %llu, optimum %d",
              t, kk, cap, n_acc, (unsigned long long)bel, best);
        CHECK(lru >= bel && lfu >= bel, "trial %d: lru %llu lfu %llu below belady %llu", t,
              (unsigned long long)lru, (unsigned long long)lfu, (unsigned long long)bel);
        trials++;
    }
    printf("%d random traces checked\n", trials);
    return t_result("test_belady");
}
