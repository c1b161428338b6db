/* Prediction quality: recall@K and precision@K per MoE layer and lookahead
 * distance.  recall@K = |top-K predicted ∩ actual| / |actual|;
 * precision@K = |top-K predicted ∩ actual| / K. */
#ifndef MOE_PRED_METRICS_H
#define MOE_PRED_METRICS_H

#include "predictor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_EVAL_PATH 0   /* distance slot of the step-start ("path") prediction */

struct moe_pred_eval {
    int n_moe, n_experts, top_k, K;
    /* [MOE_PRED_MAX_DEPTH + 1][n_moe]: slot 0 = path, d = lookahead distance d */
    uint64_t *hits, *count;  /* count = predictions scored */
    /* pending prediction per slot and layer for the current token (batch 1) */
    float *pending;          /* [MOE_PRED_MAX_DEPTH + 1][n_moe][n_experts] */
    bool *has;               /* [MOE_PRED_MAX_DEPTH + 1][n_moe] */
};

enum moe_status moe_pred_eval_init(struct moe_pred_eval *ev, int n_moe, int n_experts, int top_k, int K);
void moe_pred_eval_free(struct moe_pred_eval *ev);
/* Sink for moe_predictor_set_sink (single-token steps; other batch sizes are ignored). */
struct moe_pred_sink moe_pred_eval_sink(struct moe_pred_eval *ev);
/* Record a prediction of slot (MOE_EVAL_PATH or distance) for MoE index mi. */
void moe_pred_eval_record(struct moe_pred_eval *ev, int slot, int mi, const float *scores);
/* Actual routing of MoE index mi for the current token: scores every pending prediction. */
void moe_pred_eval_actual(struct moe_pred_eval *ev, int mi, const int *ids);
/* Index of the top-K ranked ids of scores (ties: lower id) into out[K]. */
void moe_pred_topk(const float *scores, int n, int K, int *out);
/* Figures for slot and layer; false when nothing was scored. */
bool moe_pred_eval_get(const struct moe_pred_eval *ev, int slot, int mi, double *recall, double *precision);

#ifdef __cplusplus
}
#endif
#endif
