/* Prediction-aware eviction policy (see policy_predicted.h). */
#include "policy_predicted.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* EMA rate of the per-token use frequency: about the last 1/RATE tokens count. */
#define PRED_EMA_RATE 0.25
/* p1 of an expert left out of its layer's prediction, as a fraction of q. */
#define PRED_UNPREDICTED_FRAC 0.35

struct predicted {
    struct moe_policy base;
    int n_layers, n_experts, n_moe;
    int *moe_index;      /* [n_layers] MoE index, -1 dense */
    int64_t step;        /* tokens (steps) seen, from accesses */
    int cur;             /* MoE index last accessed, -1 before any */
    int64_t *pred_pos;   /* [n_keys] position (step * n_moe + mi) the prediction is for, -1 none */
    float *pred_score;   /* [n_keys] */
    int64_t *layer_pred_pos; /* [n_moe] position of the latest prediction for the layer */
    double *ema;         /* [n_keys] use frequency at ema_step */
    int64_t *ema_step;   /* [n_keys] */
    int64_t *ema_seen;   /* [n_keys] step of the last counted use (one per step) */
};

static int layer_of(const struct predicted *s, int key, int *mi)
{
    int l = key / s->n_experts;
    *mi = (l >= 0 && l < s->n_layers) ? s->moe_index[l] : -1;
    return l;
}

static double ema_now(const struct predicted *s, int key)
{
    return s->ema[key] * pow(1.0 - PRED_EMA_RATE, (double)(s->step - s->ema_step[key]));
}

/* Position of the next occurrence of MoE layer mi. */
static int64_t next_pos(const struct predicted *s, int mi)
{
    int64_t st = s->cur < 0 ? 0 : s->step;
    if (s->cur >= 0 && mi <= s->cur) st++;
    return st * s->n_moe + mi;
}

double moe_policy_predicted_next_use(const struct moe_policy *p, int key)
{
    const struct predicted *s = p->self;
    int mi;
    layer_of(s, key, &mi);
    if (mi < 0) return INFINITY;
    int64_t o = next_pos(s, mi);
    int64_t now = (s->cur < 0 ? 0 : s->step * s->n_moe + s->cur);
    double d0 = (double)(o - now);
    double q = ema_now(s, key);
    if (q < 1e-3) q = 1e-3;
    double p1;
    if (s->pred_pos[key] == o)
        p1 = s->pred_score[key];
    else if (s->layer_pred_pos[mi] == o)
        p1 = PRED_UNPREDICTED_FRAC * q;
    else
        p1 = q;
    if (p1 > 1) p1 = 1;
    return d0 + (1.0 - p1) * (double)s->n_moe / q;
}

static void pp_on_insert(void *self, int key) { (void)self; (void)key; }
static void pp_on_evict(void *self, int key) { (void)self; (void)key; }

static void pp_on_access(void *self, int key, bool hit)
{
    struct predicted *s = self;
    int mi;
    layer_of(s, key, &mi);
    if (mi < 0) return;
    if (s->cur < 0) {
        s->step = 0;
    } else if (mi < s->cur) {
        s->step++;
    }
    s->cur = mi;
    if (s->ema_seen[key] == s->step) return;
    s->ema[key] = ema_now(s, key) * 1.0 + PRED_EMA_RATE;
    s->ema_step[key] = s->step;
    s->ema_seen[key] = s->step;
}

static void pp_on_prediction(void *self, int key, float score, int distance)
{
    struct predicted *s = self;
    int mi;
    layer_of(s, key, &mi);
    if (mi < 0) return;
    int64_t o = next_pos(s, mi);
    s->pred_pos[key] = o;
    s->pred_score[key] = score < 0 ? 0 : score > 1 ? 1 : score;
    s->layer_pred_pos[mi] = o;
}

static int pp_victim(void *self, int n, const int *cand)
{
    struct predicted *s = self;
    int best = 0;
    double bv = -1;
    for (int i = 0; i < n; i++) {
        double v = moe_policy_predicted_next_use(&s->base, cand[i]);
        if (v > bv || (v == bv && cand[i] < cand[best])) {
            bv = v;
            best = i;
        }
    }
    return best;
}

static void pp_destroy(void *self)
{
    struct predicted *s = self;
    free(s->moe_index);
    free(s->pred_pos);
    free(s->pred_score);
    free(s->layer_pred_pos);
    free(s->ema);
    free(s->ema_step);
    free(s->ema_seen);
    free(s);
}

static const struct moe_policy_ops predicted_ops = {
    .name = "predicted",
    .on_insert = pp_on_insert,
    .on_access = pp_on_access,
    .on_evict = pp_on_evict,
    .on_prediction = pp_on_prediction,
    .victim = pp_victim,
    .destroy = pp_destroy,
};

struct moe_policy *moe_policy_predicted_create(int n_layers, int n_experts, const int *moe_layers, int n_moe)
{
    if (n_layers <= 0 || n_experts <= 0 || n_moe <= 0 || n_moe > n_layers) {
        moe_errorf(MOE_EINVAL, "predicted policy: bad shape (%d layers, %d experts, %d MoE layers)", n_layers,
                   n_experts, n_moe);
        return NULL;
    }
    size_t nk = (size_t)n_layers * (size_t)n_experts;
    struct predicted *s = calloc(1, sizeof(*s));
    if (!s) goto fail;
    s->n_layers = n_layers;
    s->n_experts = n_experts;
    s->n_moe = n_moe;
    s->cur = -1;
    s->moe_index = malloc(sizeof(int) * (size_t)n_layers);
    s->pred_pos = malloc(sizeof(int64_t) * nk);
    s->pred_score = calloc(nk, sizeof(float));
    s->layer_pred_pos = malloc(sizeof(int64_t) * (size_t)n_moe);
    s->ema = malloc(sizeof(double) * nk);
    s->ema_step = calloc(nk, sizeof(int64_t));
    s->ema_seen = malloc(sizeof(int64_t) * nk);
    if (!s->moe_index || !s->pred_pos || !s->pred_score || !s->layer_pred_pos || !s->ema || !s->ema_step ||
        !s->ema_seen)
        goto fail;
    for (int l = 0; l < n_layers; l++) s->moe_index[l] = -1;
    for (int i = 0; i < n_moe; i++) {
        if (moe_layers[i] < 0 || moe_layers[i] >= n_layers || (i > 0 && moe_layers[i] <= moe_layers[i - 1])) {
            moe_errorf(MOE_EINVAL, "predicted policy: MoE layer list not ascending within 0..%d at index %d",
                       n_layers - 1, i);
            pp_destroy(s);
            return NULL;
        }
        s->moe_index[moe_layers[i]] = i;
    }
    for (size_t i = 0; i < nk; i++) {
        s->pred_pos[i] = -1;
        s->ema[i] = 0;
        s->ema_seen[i] = -1;
    }
    for (int i = 0; i < n_moe; i++) s->layer_pred_pos[i] = -1;
    s->base.ops = &predicted_ops;
    s->base.self = s;
    return &s->base;
fail:
    if (s) pp_destroy(s);
    moe_errorf(MOE_ENOMEM, "predicted policy: out of memory for %zu keys", nk);
    return NULL;
}
