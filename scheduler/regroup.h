/* Token regrouping: partition runnable sequences into micro-batches so that
 * each micro-batch needs as few distinct experts as possible, and order the
 * micro-batches so consecutive ones share experts.
 *
 * Paths are bitsets: words_per_layer uint64_t words per MoE layer, n_moe
 * layers, one path per item.  Internal to the scheduler (and its tests). */
#ifndef MOE_SCHED_REGROUP_H
#define MOE_SCHED_REGROUP_H

#include <stdbool.h>
#include <stdint.h>

struct moe_regroup_shape {
    int n_moe;            /* MoE layers */
    int n_experts;        /* experts per MoE layer */
    int words;            /* words per layer: (n_experts + 63) / 64 */
};

/* Number of micro-batches for n items of at most mb each. */
static inline int moe_regroup_count(int n, int mb) { return n <= 0 ? 0 : (n + mb - 1) / mb; }

/* Size of micro-batch g (all mb except the last): the same sizes FCFS uses. */
static inline int moe_regroup_size(int n, int mb, int g)
{
    int ng = moe_regroup_count(n, mb);
    return g < ng - 1 ? mb : n - (ng - 1) * mb;
}

/* Distinct experts of a set of paths, summed over layers. */
int moe_regroup_union_size(const struct moe_regroup_shape *sh, const uint64_t *paths,
                           const int *items, int n);

/* Cluster n items (paths [n][n_moe * words]) into micro-batches of the FCFS
 * sizes, minimising the sum over micro-batches and layers of distinct experts
 * (greedy construction, then pairwise-swap local search), then order the
 * micro-batches: the first shares most with prev (the experts of the previous
 * micro-batch, [n_moe * words], or NULL), each next one most with the one
 * before.  Writes order[n]: item indices, micro-batch after micro-batch.
 * Deterministic; ties go to the lower item index.  Returns false only when
 * scratch allocation fails (order is then the identity). */
bool moe_regroup_plan(const struct moe_regroup_shape *sh, int n, const uint64_t *paths, int mb,
                      const uint64_t *prev, int *order);

#endif

/* Rolling selection of one micro-batch (token regrouping across steps).
 * credit[i] is item i's fair-share credit in tokens (it grows by size / n per
 * forward for every runnable item and drops by 1 when the item runs), so an
 * item with credit >= 1 + lag has fallen lag tokens behind its share and must
 * run now; items with credit < 1 - lead are that far ahead and may not run
 * unless nothing else can.  The rest are chosen greedily by routing-path
 * overlap with the micro-batch so far, starting from the most-owed item
 * (among equally owed ones, the one sharing most with prev: e.g. the experts
 * of the micro-batch just run, or the ones resident).  Writes up to size
 * item indices to out and returns how many.  Deterministic. */
int moe_regroup_select(const struct moe_regroup_shape *sh, int n, const uint64_t *paths, const double *credit,
                       int size, double lag, double lead, const uint64_t *prev, int *out);
