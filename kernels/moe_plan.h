/* The expert-major permutation of a MoE layer's (token, slot) pairs: host code
 * shared by the engine's MoE step (either backend) and the CUDA launchers'
 * callers (moe_cuda_gather_rows / moe_cuda_moe_combine take its rows and inv). */
#ifndef MOEFLOW_KERNELS_MOE_PLAN_H
#define MOEFLOW_KERNELS_MOE_PLAN_H

#include "../common/moe.h"

#ifdef __cplusplus
extern "C" {
#endif

/* From ids [n, k] (expert per token slot, each in [0, E)):
 *   counts [E]      tokens routed to each expert
 *   offsets [E + 1] first permuted row of each expert
 *   rows [n*k]      permuted row r holds token rows[r] (source row of x)
 *   inv [n*k]       (token t, slot s) -> its permuted row
 * Experts in ascending id; within an expert, rows in (token, slot) order.
 * MOE_EINVAL for bad sizes; MOE_ERANGE names the token and slot of an
 * out-of-range id (nothing past counts is then meaningful). */
enum moe_status moe_moe_plan(const int *ids, int n, int k, int E, int *counts, int *offsets,
                             int *rows, int *inv);

#ifdef __cplusplus
}
#endif
#endif
