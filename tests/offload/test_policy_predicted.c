/* The predicted policy keeps a prediction for each of a layer's next
 * MOE_POLICY_PREDICTED_SLOTS occurrences; one for a later occurrence is
 * dropped and does not replace the prediction of a nearer one.  A score that
 * is not a number counts as 0.  A prefetch is admitted against the expert it
 * would evict, and refused without touching the thread's error when every slot
 * is pinned. */
#include "../../offload/cache.h"
#include "../../offload/policy_predicted.h"
#include "../test_util.h"

#include <math.h>
#include <string.h>

#define NM 2 /* MoE layers (decoder layers 0 and 1) */
#define NE 4

static void touch(struct moe_cache *c, int key, bool keep_pinned)
{
    int slot, ev;
    bool miss;
    REQUIRE(moe_cache_acquire(c, key, &slot, &miss, &ev) == MOE_OK, "acquire %d: %s", key, moe_last_error());
    if (!keep_pinned) moe_cache_unpin(c, key);
}

/* A prefetch is admitted against the expert it would evict, not the resident one needed last: that one
 * may be pinned, or (with per-layer quotas) of another layer while the prefetch's layer, at its quota,
 * evicts one of its own. */
static void check_admission(void)
{
    static const int moe_layers[NM] = { 0, 1 };
    /* two slots: A (layer 1, never predicted: needed last) pinned, B (layer 1) certain at layer 1's next
     * occurrence, 2 layer-steps on; X (layer 0) certain at layer 0's occurrence after next, 3 on */
    const int A = NE, B = NE + 1, X = 1;
    struct moe_cache_params cp = { .n_keys = NM * NE, .capacity = 2,
                                   .policy = moe_policy_predicted_create(NM, NE, moe_layers, NM) };
    struct moe_cache *c = moe_cache_create(&cp);
    REQUIRE(c, "cache: %s", moe_last_error());
    touch(c, A, true);
    touch(c, B, false);
    moe_cache_predict(c, B, 1.0f, 2);
    moe_cache_predict(c, X, 1.0f, 3);
    const struct moe_policy *p = moe_cache_policy(c);
    double a = moe_policy_predicted_next_use(p, A), b = moe_policy_predicted_next_use(p, B),
           x = moe_policy_predicted_next_use(p, X);
    REQUIRE(b < x && x < a, "next uses: B %g, X %g, A %g", b, x, a);
    int victim;
    CHECK(moe_cache_victim(c, X, &victim) && victim == B, "the victim of a fetch of X: %d, not B", victim);
    CHECK(!moe_policy_predicted_admit(c, X), "X (next use %g) admitted over B (%g): A (%g), needed last, is pinned",
          x, b, a);
    /* every slot pinned: nothing to evict, the prefetch is refused, and the caller's error stays as it was
     * (an admission is a query) */
    touch(c, B, true);
    moe_errorf(MOE_EIO, "an earlier error");
    CHECK(!moe_cache_victim(c, X, &victim) && !moe_policy_predicted_admit(c, X), "X admitted, every slot pinned");
    CHECK(!strcmp(moe_last_error(), "an earlier error") && moe_last_status() == MOE_EIO,
          "the admission of X with every slot pinned changed the thread's error to '%s'", moe_last_error());
    moe_cache_unpin(c, B);
    moe_cache_unpin(c, A);
    CHECK(moe_cache_victim(c, X, &victim) && victim == A && moe_policy_predicted_admit(c, X),
          "A unpinned: victim %d, X not admitted over it", victim);
    moe_cache_destroy(c);

    /* quotas of 2 slots per layer, 4 slots: layer 0 holds C and D, certain at its next occurrence, and
     * layer 1 E (never predicted); a fetch of X, needed later than C and D, would evict one of them
     * though a slot is free */
    const int C = 0, D = 2, E = NE;
    int quota[NM] = { 2, 2 };
    cp = (struct moe_cache_params){ .n_keys = NM * NE, .capacity = 4, .group_size = NE, .quota = quota,
                                    .policy = moe_policy_predicted_create(NM, NE, moe_layers, NM) };
    c = moe_cache_create(&cp);
    REQUIRE(c, "cache: %s", moe_last_error());
    touch(c, C, false);
    touch(c, D, false);
    touch(c, E, false);
    moe_cache_predict(c, C, 1.0f, 1);
    moe_cache_predict(c, D, 1.0f, 1);
    moe_cache_predict(c, X, 1.0f, 3);
    p = moe_cache_policy(c);
    x = moe_policy_predicted_next_use(p, X);
    double cd = fmax(moe_policy_predicted_next_use(p, C), moe_policy_predicted_next_use(p, D)),
           e = moe_policy_predicted_next_use(p, E);
    REQUIRE(cd < x && x < e, "next uses: C, D %g, X %g, E %g", cd, x, e);
    CHECK(moe_cache_victim(c, X, &victim) && (victim == C || victim == D),
          "the victim of a fetch of X at its layer's quota: %d, not C or D", victim);
    CHECK(!moe_policy_predicted_admit(c, X), "X (next use %g) admitted at its layer's quota over C and D (%g)", x, cd);
    CHECK(moe_cache_victim(c, NE + 1, &victim) && victim == -1 && moe_policy_predicted_admit(c, NE + 1),
          "layer 1, below its quota, takes the free slot: victim %d", victim);
    moe_cache_destroy(c);
}

int main(void)
{
    static const int moe_layers[NM] = { 0, 1 };
    struct moe_policy *p = moe_policy_predicted_create(NM, NE, moe_layers, NM);
    REQUIRE(p, "create: %s", moe_last_error());
    const int key = 1; /* layer 0, expert 1 */
    p->ops->on_access(p->self, 0, false); /* now: step 0, layer 0; layer 0 next runs 2 layer-steps on */
    double none = moe_policy_predicted_next_use(p, key);
    /* certain use at the layer's next occurrence: expected exactly then */
    p->ops->on_prediction(p->self, key, 1.0f, 2);
    double sure = moe_policy_predicted_next_use(p, key);
    CHECK(sure == 2.0 && sure < none, "a certain use at the next occurrence: %g (without %g)", sure, none);
    /* a hint for occurrence j (j = 1..7 after it) lands in its own slot; the one
     * PRED_SLOTS occurrences on is dropped rather than overwrite the first */
    for (int j = 1; j <= MOE_POLICY_PREDICTED_SLOTS; j++) {
        p->ops->on_prediction(p->self, key, 0.0f, 2 + j * NM);
        double v = moe_policy_predicted_next_use(p, key);
        CHECK(v == sure, "a hint %d occurrences ahead changed the next use from %g to %g", j, sure, v);
    }
    /* the last slot is kept: a certain use 7 occurrences ahead of another expert */
    const int key2 = 2;
    double before = moe_policy_predicted_next_use(p, key2);
    for (int j = 0; j < MOE_POLICY_PREDICTED_SLOTS - 1; j++) p->ops->on_prediction(p->self, key2, 0.0f, 2 + j * NM);
    p->ops->on_prediction(p->self, key2, 1.0f, 2 + (MOE_POLICY_PREDICTED_SLOTS - 1) * NM);
    double last = moe_policy_predicted_next_use(p, key2);
    CHECK(last == 2.0 + (MOE_POLICY_PREDICTED_SLOTS - 1) * NM, "a certain use 7 occurrences ahead: %g (before %g)",
          last, before);
    /* a score that is not a number (a predictor fed non-finite hidden states) counts as no use, as a
     * score of 0 does: next uses stay numbers, so the ranking of evictions stays an order */
    const int key3 = 3;
    p->ops->on_prediction(p->self, key3, 0.0f, 2);
    double zero = moe_policy_predicted_next_use(p, key3);
    p->ops->on_prediction(p->self, key3, NAN, 2);
    double nan_next = moe_policy_predicted_next_use(p, key3);
    CHECK(nan_next == zero, "a NaN score gives next use %g, a score of 0 %g", nan_next, zero);
    p->ops->destroy(p->self);
    check_admission();
    return t_result("test_offload_policy_predicted");
}
