/* The predicted policy keeps a prediction for each of a layer's next
 * MOE_POLICY_PREDICTED_SLOTS occurrences; one for a later occurrence is
 * dropped and does not replace the prediction of a nearer one.  A score that
 * is not a number counts as 0. */
#include "../../offload/policy_predicted.h"
#include "../test_util.h"

#include <math.h>

#define NM 2 /* MoE layers (decoder layers 0 and 1) */
#define NE 4

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
    return t_result("test_offload_policy_predicted");
}
