/* Host-side helpers of the CUDA backend: the stable expert-major permutation
 * of (token, slot) pairs shared by the CPU and CUDA paths, and the RoPE
 * frequency table. */
#include <math.h>

#include "cuda_ops.h"

/* The same expression as the CPU backend's rope (kernels/cpu), compiled by
 * the same C compiler with the same flags: the same bits. */
void moe_rope_inv_freq(float theta, int head_dim, float *inv_freq)
{
    for (int i = 0; i < head_dim / 2; i++)
        inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
}

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
