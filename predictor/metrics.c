/* recall@K / precision@K accumulators (see metrics.h). */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS MOE_EVAL_SLOTS
#define RING (MOE_EVAL_MAX_AHEAD + 1)

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
    size_t na = (size_t)MOE_EVAL_MAX_AHEAD * RING * (size_t)n_moe;
    ev->ahead = calloc(na * (size_t)n_experts, sizeof(float));
    ev->ahead_step = malloc(na * sizeof(int64_t));
    if (!ev->hits || !ev->count || !ev->pending || !ev->has || !ev->ahead || !ev->ahead_step) {
        moe_pred_eval_free(ev);
        return moe_errorf(MOE_ENOMEM, "predictor eval: out of memory");
    }
    for (size_t i = 0; i < na; i++) ev->ahead_step[i] = -1;
    ev->step = -1;
    return MOE_OK;
}

void moe_pred_eval_free(struct moe_pred_eval *ev)
{
    free(ev->hits);
    free(ev->count);
    free(ev->pending);
    free(ev->has);
    free(ev->ahead);
    free(ev->ahead_step);
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
    if (slot < 0 || slot > MOE_PRED_MAX_DEPTH || mi < 0 || mi >= ev->n_moe) return;
    size_t i = (size_t)slot * (size_t)ev->n_moe + (size_t)mi;
    memcpy(ev->pending + i * (size_t)ev->n_experts, scores, sizeof(float) * (size_t)ev->n_experts);
    ev->has[i] = true;
}

void moe_pred_eval_step(struct moe_pred_eval *ev, bool new_seq)
{
    ev->step++;
    if (new_seq)
        for (size_t i = 0; i < (size_t)MOE_EVAL_MAX_AHEAD * RING * (size_t)ev->n_moe; i++) ev->ahead_step[i] = -1;
}

static size_t ahead_at(const struct moe_pred_eval *ev, int h, int64_t target, int mi)
{
    return ((size_t)(h - 1) * RING + (size_t)(target % RING)) * (size_t)ev->n_moe + (size_t)mi;
}

void moe_pred_eval_record_ahead(struct moe_pred_eval *ev, int h, int mi, const float *scores)
{
    if (h < 1 || h > MOE_EVAL_MAX_AHEAD || mi < 0 || mi >= ev->n_moe || ev->step < 0) return;
    size_t i = ahead_at(ev, h, ev->step + h, mi);
    memcpy(ev->ahead + i * (size_t)ev->n_experts, scores, sizeof(float) * (size_t)ev->n_experts);
    ev->ahead_step[i] = ev->step + h;
}

static void eval_predict(void *ud, int mi, int distance, bool step_start, int n, const float *scores)
{
    struct moe_pred_eval *ev = ud;
    if (n != 1) return;
    int beyond = distance - 1 - mi; /* h * n_moe for the token h steps later */
    if (step_start && beyond >= ev->n_moe) {
        if (beyond % ev->n_moe == 0) moe_pred_eval_record_ahead(ev, beyond / ev->n_moe, mi, scores);
        return;
    }
    moe_pred_eval_record(ev, step_start ? MOE_EVAL_PATH : distance, mi, scores);
}

struct moe_pred_sink moe_pred_eval_sink(struct moe_pred_eval *ev)
{
    struct moe_pred_sink s = { .ud = ev, .predict = eval_predict, .ahead = true };
    return s;
}

void moe_pred_eval_slot_name(int slot, char *buf, size_t cap)
{
    if (slot == MOE_EVAL_PATH)
        snprintf(buf, cap, "path");
    else if (slot > MOE_PRED_MAX_DEPTH)
        snprintf(buf, cap, "path+%d", slot - MOE_PRED_MAX_DEPTH);
    else
        snprintf(buf, cap, "%d", slot);
}

static void score(struct moe_pred_eval *ev, size_t i, const float *pred, const int *ids)
{
    int top[ev->K];
    moe_pred_topk(pred, ev->n_experts, ev->K, top);
    int h = 0;
    for (int a = 0; a < ev->top_k; a++)
        for (int j = 0; j < ev->K; j++) h += top[j] == ids[a];
    ev->hits[i] += (uint64_t)h;
    ev->count[i]++;
}

void moe_pred_eval_actual(struct moe_pred_eval *ev, int mi, const int *ids)
{
    if (mi < 0 || mi >= ev->n_moe) return;
    for (int slot = 0; slot <= MOE_PRED_MAX_DEPTH; slot++) {
        size_t i = (size_t)slot * (size_t)ev->n_moe + (size_t)mi;
        if (!ev->has[i]) continue;
        score(ev, i, ev->pending + i * (size_t)ev->n_experts, ids);
        ev->has[i] = false;
    }
    for (int h = 1; h <= MOE_EVAL_MAX_AHEAD && ev->step >= 0; h++) {
        size_t a = ahead_at(ev, h, ev->step, mi);
        if (ev->ahead_step[a] != ev->step) continue;
        score(ev, (size_t)MOE_EVAL_AHEAD(h) * (size_t)ev->n_moe + (size_t)mi, ev->ahead + a * (size_t)ev->n_experts,
              ids);
        ev->ahead_step[a] = -1;
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
