/* Prediction-aware eviction policy (see policy_predicted.h). */
#include "policy_predicted.h"

#include "cache.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* EMA rate of the per-token use frequency: about the last 1/RATE tokens count
 * (0.05 ranked best of 0.005..0.25 on the train split's tail). */
#define PRED_EMA_RATE 0.05
/* p1 of an expert left out of its layer's prediction, as a fraction of q. */
#define PRED_UNPREDICTED_FRAC 0.35
/* predictions kept per key: for this step and the next PRED_SLOTS - 1 */
#define PRED_SLOTS MOE_POLICY_PREDICTED_SLOTS

struct predicted {
    struct moe_policy base;
    int n_layers, n_experts, n_moe;
    int *moe_index;      /* [n_layers] MoE index, -1 dense */
    int64_t step;        /* tokens (steps) seen, from accesses */
    int cur;             /* MoE index last accessed, -1 before any */
    /* predictions, PRED_SLOTS slots by the step they are for modulo PRED_SLOTS (this step and the next ones) */
    int64_t *pred_pos;   /* [2, n_keys] position (step * n_moe + mi) the prediction is for, -1 none */
    float *pred_score;   /* [2, n_keys] */
    int64_t *layer_pred_pos; /* [2, n_moe] position of the latest prediction for the layer */
    double *ema;         /* [n_keys] use frequency at ema_step */
    int64_t *ema_step;   /* [n_keys] */
    int64_t *ema_seen;   /* [n_keys] step of the last counted use (one per step) */
    /* per MoE layer: which experts the next token uses given this token's */
    uint64_t *tr;        /* [n_moe, E, E] experts f at a step -> e at the next step, same layer */
    uint64_t *tr_n;      /* [n_moe, E] */
    int *set_a, *set_b;  /* [n_moe, SETMAX] experts of the layer's last complete / current step */
    int *n_a, *n_b;      /* [n_moe] */
    int64_t *step_a, *step_b; /* [n_moe] step of set_a / set_b, -1 none */
};

#define SETMAX 64

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

/* Prediction probability for key at position o: the stored score, a fraction
 * of the fallback when its layer was predicted without it, else the fallback.
 * A stored score is taken as the probability of use in place of the online
 * estimate (the fallback: step-to-step transitions for the layer's next
 * occurrence, use frequency after).  Blending the two (weight 0.3 on the
 * prediction for the next occurrence) transferred more on dev text once the
 * predictor files' next-token blocks were trained on the right tokens:
 * docs/results.md, section 4, "Data". */
static double pred_at(const struct predicted *s, int key, int mi, int64_t o, double fallback)
{
    size_t nk = (size_t)s->n_layers * (size_t)s->n_experts;
    int sl = (int)((o / s->n_moe) % PRED_SLOTS);
    if (s->pred_pos[sl * nk + (size_t)key] == o) return s->pred_score[sl * nk + (size_t)key];
    if (s->layer_pred_pos[sl * s->n_moe + mi] == o) return PRED_UNPREDICTED_FRAC * fallback;
    return fallback;
}

/* P(e used at layer mi's next step | the layer's latest set of experts),
 * smoothed towards q. */
static double transition_p(const struct predicted *s, int mi, int e, double q)
{
    const double alpha = 2.0;
    size_t E = (size_t)s->n_experts;
    const int *set = s->n_b[mi] > 0 ? s->set_b + (size_t)mi * SETMAX : s->set_a + (size_t)mi * SETMAX;
    int n = s->n_b[mi] > 0 ? s->n_b[mi] : s->n_a[mi];
    double num = alpha * q, den = alpha;
    for (int i = 0; i < n; i++) {
        num += s->tr[((size_t)mi * E + (size_t)set[i]) * E + (size_t)e];
        den += s->tr_n[(size_t)mi * E + (size_t)set[i]];
    }
    /* the sets hold top_k experts: P(e) over a set of k sums the per-f rates */
    double p = n > 0 ? num / den * 1.0 : q;
    return p > 1 ? 1 : p;
}

double moe_policy_predicted_next_use(const struct moe_policy *p, int key)
{
    const struct predicted *s = p->self;
    int mi;
    layer_of(s, key, &mi);
    if (mi < 0) return INFINITY;
    int64_t o = next_pos(s, mi);
    int64_t now = (s->cur < 0 ? -1 : s->step * s->n_moe + s->cur);
    double d0 = (double)(o - now);
    double q = ema_now(s, key);
    if (q < 1e-3) q = 1e-3;
    if (q > 1) q = 1;
    double pt = transition_p(s, mi, key % s->n_experts, q);
    /* p_j: used at the j-th occurrence of the layer from o (j < PRED_SLOTS: a
     * prediction for it, else the fallback); unused at all of them: geometric
     * with q after.  Equal to d0 + (1-p1) M (p2 + (1-p2)(1 + 1/q)) when
     * nothing is predicted beyond the occurrence after o. */
    double surv = 1.0, wait = 0.0;
    for (int j = 0; j < PRED_SLOTS; j++) {
        double pj = pred_at(s, key, mi, o + (int64_t)j * s->n_moe, j == 0 ? pt : q);
        surv *= 1.0 - pj;
        wait += j + 1 < PRED_SLOTS ? surv : surv / q;
    }
    return d0 + (double)s->n_moe * wait;
}

static void pp_on_insert(void *self, int key) { (void)self; (void)key; }
static void pp_on_evict(void *self, int key) { (void)self; (void)key; }

/* Keep the layer's expert sets per step and learn step-to-step transitions. */
static void track_set(struct predicted *s, int mi, int e)
{
    size_t E = (size_t)s->n_experts;
    if (s->step_b[mi] != s->step) {
        int *a = s->set_a + (size_t)mi * SETMAX, *b = s->set_b + (size_t)mi * SETMAX;
        if (s->n_b[mi] > 0 && s->n_a[mi] > 0 && s->step_a[mi] == s->step_b[mi] - 1)
            for (int i = 0; i < s->n_a[mi]; i++) {
                s->tr_n[(size_t)mi * E + (size_t)a[i]]++;
                for (int j = 0; j < s->n_b[mi]; j++) s->tr[((size_t)mi * E + (size_t)a[i]) * E + (size_t)b[j]]++;
            }
        if (s->n_b[mi] > 0) {
            memcpy(a, b, sizeof(int) * (size_t)s->n_b[mi]);
            s->n_a[mi] = s->n_b[mi];
            s->step_a[mi] = s->step_b[mi];
        }
        s->n_b[mi] = 0;
        s->step_b[mi] = s->step;
    }
    int *b = s->set_b + (size_t)mi * SETMAX;
    for (int i = 0; i < s->n_b[mi]; i++)
        if (b[i] == e) return;
    if (s->n_b[mi] < SETMAX) b[s->n_b[mi]++] = e;
}

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
    track_set(s, mi, key % s->n_experts);
    if (s->ema_seen[key] == s->step) return;
    s->ema[key] = ema_now(s, key) * 1.0 + PRED_EMA_RATE;
    s->ema_step[key] = s->step;
    s->ema_seen[key] = s->step;
}

int64_t moe_policy_predicted_occurrence(int64_t now, int mi, int n_moe, int distance)
{
    int64_t o = (now < 0 ? 0 : now / n_moe * n_moe) + mi;
    if (o <= now) o += n_moe;
    while (o + n_moe / 2 < now + distance) o += n_moe;
    return o;
}

static void pp_on_prediction(void *self, int key, float score, int distance)
{
    struct predicted *s = self;
    int mi;
    layer_of(s, key, &mi);
    if (mi < 0) return;
    int64_t now = (s->cur < 0 ? -1 : s->step * s->n_moe + s->cur);
    int64_t first = next_pos(s, mi), o = moe_policy_predicted_occurrence(now, mi, s->n_moe, distance);
    /* beyond the occurrences kept: its slot holds a nearer occurrence's prediction */
    if (o - first >= (int64_t)PRED_SLOTS * s->n_moe) return;
    size_t nk = (size_t)s->n_layers * (size_t)s->n_experts;
    int sl = (int)((o / s->n_moe) % PRED_SLOTS);
    s->pred_pos[sl * nk + (size_t)key] = o;
    s->pred_score[sl * nk + (size_t)key] = !(score > 0) ? 0 : score > 1 ? 1 : score; /* NaN: 0 */
    s->layer_pred_pos[sl * s->n_moe + mi] = o;
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
    free(s->tr);
    free(s->tr_n);
    free(s->set_a);
    free(s->set_b);
    free(s->n_a);
    free(s->n_b);
    free(s->step_a);
    free(s->step_b);
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
    s->pred_pos = malloc(sizeof(int64_t) * PRED_SLOTS * nk);
    s->pred_score = calloc(PRED_SLOTS * nk, sizeof(float));
    s->layer_pred_pos = malloc(sizeof(int64_t) * PRED_SLOTS * (size_t)n_moe);
    s->ema = malloc(sizeof(double) * nk);
    s->ema_step = calloc(nk, sizeof(int64_t));
    s->ema_seen = malloc(sizeof(int64_t) * nk);
    size_t M = (size_t)n_moe, E = (size_t)n_experts;
    s->tr = calloc(M * E * E, sizeof(uint64_t));
    s->tr_n = calloc(M * E, sizeof(uint64_t));
    s->set_a = calloc(M * SETMAX, sizeof(int));
    s->set_b = calloc(M * SETMAX, sizeof(int));
    s->n_a = calloc(M, sizeof(int));
    s->n_b = calloc(M, sizeof(int));
    s->step_a = malloc(M * sizeof(int64_t));
    s->step_b = malloc(M * sizeof(int64_t));
    if (!s->moe_index || !s->pred_pos || !s->pred_score || !s->layer_pred_pos || !s->ema || !s->ema_step ||
        !s->ema_seen || !s->tr || !s->tr_n || !s->set_a || !s->set_b || !s->n_a || !s->n_b || !s->step_a ||
        !s->step_b)
        goto fail;
    for (size_t i = 0; i < M; i++) s->step_a[i] = s->step_b[i] = -1;
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
        for (int k = 0; k < PRED_SLOTS; k++) s->pred_pos[(size_t)k * nk + i] = -1;
        s->ema[i] = 0;
        s->ema_seen[i] = -1;
    }
    for (int i = 0; i < PRED_SLOTS * n_moe; i++) s->layer_pred_pos[i] = -1;
    s->base.ops = &predicted_ops;
    s->base.self = s;
    return &s->base;
fail:
    if (s) pp_destroy(s);
    moe_errorf(MOE_ENOMEM, "predicted policy: out of memory for %zu keys", nk);
    return NULL;
}

bool moe_policy_predicted_admit(const struct moe_cache *c, int key)
{
    const struct moe_policy *p = moe_cache_policy(c);
    if (!p || p->ops != &predicted_ops) return true;
    int victim;
    if (!moe_cache_victim(c, key, &victim)) return false; /* nothing it may evict: the prefetch is dropped */
    return victim < 0 || moe_policy_predicted_next_use(p, key) < moe_policy_predicted_next_use(p, victim);
}
