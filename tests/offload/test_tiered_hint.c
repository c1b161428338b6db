/* Rank-only hints reach the device tier's predicted policy: with 8 device
 * slots, experts 0 and 1 of layer 0 are used once while 2..7 are used twice;
 * a fetch of four new experts then evicts 0 and 1 under the policy's own
 * estimates, but keeps them when a hint says both are needed at the next
 * step (and 2..7 are not).  A hint moves nothing and other policies ignore it;
 * a hint without scores ranks nothing. */
#include "../../offload/tiered.h"
#include "../test_util.h"

static uint64_t misses_after(struct moe_provider *p, int layer, int n, const int *ids)
{
    struct moe_expert_ref ref[8];
    if (p->ops->acquire(p->self, layer, n, ids, ref) != MOE_OK) return UINT64_MAX;
    p->ops->release(p->self, layer);
    struct moe_offload_stats os;
    return moe_provider_tiered_stats(p, &os) ? os.device.misses : UINT64_MAX;
}

/* Device misses of the last acquire of {0, 1} after the sequence above; hint 1: experts 0, 1 hinted,
 * 2: a hint without scores. */
static int run(const struct moe_model *m, enum moe_policy_kind pol, int hint, uint64_t *bytes_after_hint,
               uint64_t *bytes_before_hint)
{
    struct moe_tiered_params tp = { .dev_slots = 8, .host_slots = 16, .policy = pol, .numa_node = -1 };
    struct moe_provider *p = moe_provider_tiered_create(m, &tp);
    if (!p) {
        fprintf(stderr, "tiered: %s\n", moe_last_error());
        return -1;
    }
    const int a[4] = { 0, 1, 2, 3 }, b[4] = { 4, 5, 6, 7 }, c[4] = { 2, 3, 4, 5 }, d[2] = { 6, 7 };
    const int fresh[4] = { 8, 9, 10, 11 }, keep[2] = { 0, 1 };
    misses_after(p, 0, 4, a);
    misses_after(p, 0, 4, b);
    misses_after(p, 0, 4, c);
    misses_after(p, 0, 2, d);
    struct moe_offload_stats os;
    moe_provider_tiered_stats(p, &os);
    *bytes_before_hint = os.device.bytes;
    if (hint) {
        int ids[32];
        float sc[32];
        for (int e = 0; e < 32; e++) {
            ids[e] = e;
            sc[e] = e < 2 ? 1.0f : e < 8 ? 0.0f : 0.5f;
        }
        p->ops->hint(p->self, 0, 32, ids, hint == 2 ? NULL : sc, m->cfg.n_layers); /* layer 0 of the next step */
    }
    moe_provider_tiered_stats(p, &os);
    *bytes_after_hint = os.device.bytes;
    uint64_t m0 = misses_after(p, 0, 4, fresh);
    uint64_t m1 = misses_after(p, 0, 2, keep);
    moe_provider_destroy(p);
    return (int)(m1 - m0);
}

int main(void)
{
    char dir[4096];
    t_path(dir, sizeof dir, "models/pycode-moe-18m");
    struct moe_model *m = moe_model_open(dir);
    REQUIRE(m, "open: %s", moe_last_error());
    uint64_t b0, b1;
    int plain = run(m, MOE_POLICY_PREDICTED, 0, &b1, &b0);
    int hinted = run(m, MOE_POLICY_PREDICTED, 1, &b1, &b0);
    CHECK(plain == 2, "without hints the predicted policy kept %d of experts 0, 1 (expected to evict both)",
          2 - plain);
    CHECK(hinted == 0, "with hints %d of experts 0, 1 were evicted", hinted);
    CHECK(b1 == b0, "a hint moved %llu bytes", (unsigned long long)(b1 - b0));
    int unscored = run(m, MOE_POLICY_PREDICTED, 2, &b1, &b0);
    CHECK(unscored == plain && b1 == b0, "a hint without scores: %d of experts 0, 1 evicted (without a hint %d), "
          "%llu bytes moved", unscored, plain, (unsigned long long)(b1 - b0));
    int lru = run(m, MOE_POLICY_LRU, 1, &b1, &b0);
    CHECK(lru == 2, "LRU with hints: %d misses on experts 0, 1 (hints must not change LRU)", lru);
    moe_model_close(m);
    return t_result("test_tiered_hint");
}
