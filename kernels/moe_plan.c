/* The expert-major permutation of a MoE layer's (token, slot) pairs (moe_plan.h). */
#include "moe_plan.h"

enum moe_status moe_moe_plan(const int *ids, int n, int k, int E, int *counts, int *offsets, int *rows,
                             int *inv)
{
    if (n < 0 || k <= 0 || E <= 0)
        return moe_errorf(MOE_EINVAL, "moe plan: tokens %d, top_k %d, experts %d", n, k, E);
    for (int e = 0; e < E; e++) counts[e] = 0;
    for (int t = 0; t < n; t++) {
        for (int s = 0; s < k; s++) {
            int e = ids[(size_t)t * k + s];
            if (e < 0 || e >= E)
                return moe_errorf(MOE_ERANGE, "moe plan: token %d slot %d routed to expert %d, "
                                  "outside 0..%d", t, s, e, E - 1);
            counts[e]++;
        }
    }
    offsets[0] = 0;
    for (int e = 0; e < E; e++) offsets[e + 1] = offsets[e] + counts[e];
    /* fill in (token, slot) order: counts reused as per-expert cursors */
    for (int e = 0; e < E; e++) counts[e] = 0;
    for (int t = 0; t < n; t++) {
        for (int s = 0; s < k; s++) {
            int e = ids[(size_t)t * k + s];
            int r = offsets[e] + counts[e]++;
            rows[r] = t;
            inv[(size_t)t * k + s] = r;
        }
    }
    return MOE_OK;
}
