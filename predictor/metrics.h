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
/* Slots 1..MOE_PRED_MAX_DEPTH: lookahead distance within the token.  Then the
 * step-start predictions of the tokens after this one (path predictors of
 * horizon >= 2): slot MOE_EVAL_AHEAD(h) for the token h steps later, named
 * "path+h", 1 <= h <= MOE_EVAL_MAX_AHEAD. */
#define MOE_EVAL_MAX_AHEAD 7
#define MOE_EVAL_AHEAD(h) (MOE_PRED_MAX_DEPTH + (h))
#define MOE_EVAL_SLOTS (MOE_PRED_MAX_DEPTH + 1 + MOE_EVAL_MAX_AHEAD)

struct moe_pred_eval {
    int n_moe, n_experts, top_k, K;
    /* [MOE_EVAL_SLOTS][n_moe] */
    uint64_t *hits, *count;  /* count = predictions scored */
    /* pending prediction per slot and layer for the current token (batch 1) */
    float *pending;          /* [MOE_EVAL_SLOTS][n_moe][n_experts] */
    bool *has;               /* [MOE_EVAL_SLOTS][n_moe] */
    /* predictions of later tokens, by the step they are for (ring of MOE_EVAL_MAX_AHEAD + 1) */
    float *ahead;            /* [MOE_EVAL_MAX_AHEAD][ring][n_moe][n_experts] */
    int64_t *ahead_step;     /* [MOE_EVAL_MAX_AHEAD][ring][n_moe] step it is for, -1 none */
    int64_t step;            /* current step (moe_pred_eval_step), -1 before the first */
};

enum moe_status moe_pred_eval_init(struct moe_pred_eval *ev, int n_moe, int n_experts, int top_k, int K);
void moe_pred_eval_free(struct moe_pred_eval *ev);
/* Sink for moe_predictor_set_sink (single-token steps; other batch sizes are ignored). */
struct moe_pred_sink moe_pred_eval_sink(struct moe_pred_eval *ev);
/* A token's step begins (batch 1); new_seq: it starts a sequence, so what was
 * predicted for later tokens of the previous one is dropped unscored. */
void moe_pred_eval_step(struct moe_pred_eval *ev, bool new_seq);
/* Record a prediction of slot (MOE_EVAL_PATH or distance) for MoE index mi. */
void moe_pred_eval_record(struct moe_pred_eval *ev, int slot, int mi, const float *scores);
/* Actual routing of MoE index mi for the current token: scores every pending prediction. */
void moe_pred_eval_actual(struct moe_pred_eval *ev, int mi, const int *ids);
/* Index of the top-K ranked ids of scores (ties: lower id) into out[K]. */
void moe_pred_topk(const float *scores, int n, int K, int *out);
/* Record a prediction, made at this step, of MoE index mi for the token h steps later. */
void moe_pred_eval_record_ahead(struct moe_pred_eval *ev, int h, int mi, const float *scores);
/* Figures for slot and layer; false when nothing was scored. */
bool moe_pred_eval_get(const struct moe_pred_eval *ev, int slot, int mi, double *recall, double *precision);
/* The slot's name in reports: "path", "1".."8", "path+1".."path+7". */
void moe_pred_eval_slot_name(int slot, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
