/* recall@K / precision@K accumulators (see metrics.h). */
#include "metrics.h"

#include <stdlib.h>
#include <string.h>

#define SLOTS (MOE_PRED_MAX_DEPTH + 1)

enum moe_status moe_pred_eval_init(struct moe_pred_eval *ev, int n_moe, int n_experts, int top_k, int K)
{
    memset(ev, 0, sizeof(*ev));
    if (n_moe <= 0 || n_experts <= 0 || top_k <= 0 || K <= 0 || K > n_experts)
        return moe_errorf(MOE_EINVAL, "predictor eval: K %d must be within 1..%d", K, n_experts);
    ev->n_moe = n_moe;
    ev->n_experts = n_experts;
    ev->top_k = top_k;
    ev->K = K;
    size_t sl = (size_t)SLOTS * (size_t)n_moe;
    ev->hits = calloc(sl, sizeof(uint64_t));
    ev->count = calloc(sl, sizeof(uint64_t));
    ev->pending = calloc(sl * (size_t)n_experts, sizeof(float));
    ev->has = calloc(sl, sizeof(bool));
    if (!ev->hits || !ev->count || !ev->pending || !ev->has) {
        moe_pred_eval_free(ev);
        return moe_errorf(MOE_ENOMEM, "predictor eval: out of memory");
    }
    return MOE_OK;
}

void moe_pred_eval_free(struct moe_pred_eval *ev)
{
    free(ev->hits);
    free(ev->count);
    free(ev->pending);
    free(ev->has);
    memset(ev, 0, sizeof(*ev));
}

void moe_pred_topk(const float *scores, int n, int K, int *out)
{
    for (int j = 0; j < K; j++) {
        int best = -1;
        for (int e = 0; e < n; e++) {
            bool taken = false;
            for (int i = 0; i < j; i++) taken |= out[i] == e;
            if (taken) continue;
            if (best < 0 || scores[e] > scores[best]) best = e;
        }
        out[j] = best;
    }
}

/* Record a prediction for MoE index mi in slot. */
void moe_pred_eval_record(struct moe_pred_eval *ev, int slot, int mi, const float *scores)
{
    if (slot < 0 || slot >= SLOTS || mi < 0 || mi >= ev->n_moe) return;
    size_t i = (size_t)slot * (size_t)ev->n_moe + (size_t)mi;
    memcpy(ev->pending + i * (size_t)ev->n_experts, scores, sizeof(float) * (size_t)ev->n_experts);
    ev->has[i] = true;
}

static void eval_predict(void *ud, int mi, int distance, bool step_start, int n, const float *scores)
{
    if (n != 1) return;
    moe_pred_eval_record(ud, step_start ? MOE_EVAL_PATH : distance, mi, scores);
}

struct moe_pred_sink moe_pred_eval_sink(struct moe_pred_eval *ev)
{
    struct moe_pred_sink s = { .ud = ev, .predict = eval_predict };
    return s;
}

void moe_pred_eval_actual(struct moe_pred_eval *ev, int mi, const int *ids)
{
    int top[ev->K];
    for (int slot = 0; slot < SLOTS; slot++) {
        size_t i = (size_t)slot * (size_t)ev->n_moe + (size_t)mi;
        if (!ev->has[i]) continue;
        moe_pred_topk(ev->pending + i * (size_t)ev->n_experts, ev->n_experts, ev->K, top);
        int h = 0;
        for (int a = 0; a < ev->top_k; a++)
            for (int j = 0; j < ev->K; j++) h += top[j] == ids[a];
        ev->hits[i] += (uint64_t)h;
        ev->count[i]++;
        ev->has[i] = false;
    }
}

bool moe_pred_eval_get(const struct moe_pred_eval *ev, int slot, int mi, double *recall, double *precision)
{
    size_t i = (size_t)slot * (size_t)ev->n_moe + (size_t)mi;
    if (slot < 0 || slot >= SLOTS || mi < 0 || mi >= ev->n_moe || ev->count[i] == 0) return false;
    *recall = (double)ev->hits[i] / ((double)ev->count[i] * ev->top_k);
    *precision = (double)ev->hits[i] / ((double)ev->count[i] * ev->K);
    return true;
}
