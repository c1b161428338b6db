/* Token sampling: logit bias and penalties, then greedy, or temperature -> top-k -> top-p -> min-p ->
 * seeded draw.
 * Candidates are ordered by (logit descending, id ascending), a total order,
 * so a seed gives the same tokens on every run. */
#include "sampling.h"

#include "kernels/vexp.h"

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

float moe_sampling_float(double d)
{
    float f = (float)d;
    return d != 0 && f == 0 ? copysignf(nextafterf(0.0f, 1.0f), (float)d) : f;
}

enum moe_status moe_sampling_validate(const struct moe_sampling *p, int vocab)
{
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return moe_errorf(MOE_EINVAL, "sampling: temperature = %g must be finite and >= 0",
                          (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return moe_errorf(MOE_EINVAL, "sampling: top_p = %g must be in (0, 1]", (double)p->top_p);
    if (p->top_k < 0)
        return moe_errorf(MOE_EINVAL, "sampling: top_k = %d must be >= 0 (0 = off)", p->top_k);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return moe_errorf(MOE_EINVAL, "sampling: min_p = %g must be in [0, 1]", (double)p->min_p);
    if (!(fabsf(p->presence_penalty) <= MOE_MAX_PENALTY))
        return moe_errorf(MOE_EINVAL, "sampling: presence_penalty = %g must be in [-%g, %g]",
                          (double)p->presence_penalty, (double)MOE_MAX_PENALTY, (double)MOE_MAX_PENALTY);
    if (!(fabsf(p->frequency_penalty) <= MOE_MAX_PENALTY))
        return moe_errorf(MOE_EINVAL, "sampling: frequency_penalty = %g must be in [-%g, %g]",
                          (double)p->frequency_penalty, (double)MOE_MAX_PENALTY, (double)MOE_MAX_PENALTY);
    if (!(p->repetition_penalty >= 0.0f && p->repetition_penalty <= MOE_MAX_REPETITION_PENALTY))
        return moe_errorf(MOE_EINVAL, "sampling: repetition_penalty = %g must be in [0, %g] (0 or 1 = off)",
                          (double)p->repetition_penalty, (double)MOE_MAX_REPETITION_PENALTY);
    if (p->n_logit_bias < 0 || p->n_logit_bias > MOE_MAX_LOGIT_BIAS)
        return moe_errorf(MOE_EINVAL, "sampling: logit_bias has %d entries, at most %d are accepted",
                          p->n_logit_bias, MOE_MAX_LOGIT_BIAS);
    for (int i = 0; i < p->n_logit_bias; i++) {
        const struct moe_logit_bias *b = &p->logit_bias[i];
        if (b->id < 0 || (vocab > 0 && b->id >= vocab))
            return moe_errorf(MOE_EINVAL, "sampling: logit_bias token %d is outside the vocabulary [0, %d)",
                              (int)b->id, vocab);
        if (!(b->bias >= -100.0f && b->bias <= 100.0f))
            return moe_errorf(MOE_EINVAL, "sampling: logit_bias of token %d = %g must be in [-100, 100]",
                              (int)b->id, (double)b->bias);
        for (int j = 0; j < i; j++)
            if (p->logit_bias[j].id == b->id)
                return moe_errorf(MOE_EINVAL, "sampling: logit_bias names token %d twice", (int)b->id);
    }
    return MOE_OK;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void moe_sampler_init(struct moe_sampler *s, const struct moe_sampling *p)
{
    s->p = *p;
    uint64_t x = p->seed;
    s->rng = splitmix64(&x);
    if (!s->rng) s->rng = 0x2545F4914F6CDD1Dull;
}

/* Uniform double in [0, 1) (xorshift64*, 53 bits). */
static double next_unit(struct moe_sampler *s)
{
    uint64_t x = s->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s->rng = x;
    return (double)((x * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
}

int moe_argmax(const float *x, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (isnan(x[i])) continue;
        if (best < 0 || x[i] > x[best]) best = i;
    }
    return best < 0 ? 0 : best;
}

static bool drawable(float v)
{
    return !isnan(v) && v != -INFINITY;
}

bool moe_logits_ban(float *logits, int vocab, const int *ids, int n)
{
    int left = 0; /* tokens that could be drawn, then those of them not banned */
    for (int i = 0; i < vocab; i++)
        left += drawable(logits[i]);
    for (int i = 0; i < n; i++) {
        bool again = false;
        for (int j = 0; j < i && !again; j++)
            again = ids[j] == ids[i];
        if (!again && ids[i] >= 0 && ids[i] < vocab && drawable(logits[ids[i]]))
            left--;
    }
    if (left <= 0)
        return false;
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < vocab)
            logits[ids[i]] = -INFINITY;
    return true;
}

struct cand {
    float v;  /* scaled logit, later probability */
    int id;
};
/* moe_vexp_sub's pairs (stride 2): a float and 4 other bytes */
_Static_assert(sizeof(struct cand) == 2 * sizeof(float) && offsetof(struct cand, v) == 0, "struct cand is not a float pair");

static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->v > y->v) return -1;
    if (x->v < y->v) return 1;
    return (x->id > y->id) - (x->id < y->id);
}

static void cand_swap(struct cand *a, struct cand *b)
{
    struct cand t = *a;
    *a = *b;
    *b = t;
}

/* Partition c[lo..hi) (hi - lo >= 2) around a median-of-three pivot in cand_cmp's order: returns p
 * with c[lo..p) better than c[p] and c(p..hi) worse; *mass is the weight (v) of c[lo..p). */
static int partition(struct cand *c, int lo, int hi, double *mass)
{
    int mid = lo + (hi - lo) / 2, last = hi - 1;
    if (cand_cmp(&c[mid], &c[lo]) < 0) cand_swap(&c[mid], &c[lo]);
    if (cand_cmp(&c[last], &c[lo]) < 0) cand_swap(&c[last], &c[lo]);
    if (cand_cmp(&c[mid], &c[last]) < 0) cand_swap(&c[mid], &c[last]);
    int p = lo;
    double m = 0;
    for (int i = lo; i < last; i++)
        if (cand_cmp(&c[i], &c[last]) < 0) {
            m += c[i].v;
            cand_swap(&c[i], &c[p++]);
        }
    cand_swap(&c[p], &c[last]);
    *mass = m;
    return p;
}

/* Restore the heap c[0..k) below i: each parent worse (cand_cmp > 0) than its children. */
static void sift_down(struct cand *c, int k, int i)
{
    for (;;) {
        int w = i, l = 2 * i + 1, r = l + 1;
        if (l < k && cand_cmp(&c[l], &c[w]) > 0) w = l;
        if (r < k && cand_cmp(&c[r], &c[w]) > 0) w = r;
        if (w == i) return;
        cand_swap(&c[i], &c[w]);
        i = w;
    }
}

/* Reorder c[0..n) so that its first k are the k best in cand_cmp's order (a total order: ids are
 * distinct), in no particular order.  A small k keeps a heap of the best so far, its worst on top,
 * which most candidates fail against at one comparison; a large one, quickselect: both O(n). */
static void best_k(struct cand *c, int n, int k)
{
    if (k <= 1024) {
        for (int i = k / 2 - 1; i >= 0; i--) sift_down(c, k, i);
        for (int i = k; i < n; i++)
            if (cand_cmp(&c[i], &c[0]) < 0) {
                cand_swap(&c[i], &c[0]);
                sift_down(c, k, 0);
            }
        return;
    }
    int lo = 0, hi = n;
    double unused;
    while (hi - lo > 1 && k > lo && k < hi) {
        int p = partition(c, lo, hi, &unused);
        if (p == k || p + 1 == k) return;
        if (p > k) hi = p;
        else lo = p + 1;
    }
}

/* Reorder c[0..n) (weights v) so that c[0..k) is the shortest prefix of the best-first order whose
 * weight reaches target, in no particular order, and return k (n when the whole falls short): a
 * quickselect on weight, O(n), where sorting would be O(n log n). */
static int select_mass(struct cand *c, int n, double target)
{
    int lo = 0, hi = n; /* c[0..lo) is in, c[hi..n) out; acc = the weight of c[0..lo) */
    double acc = 0;
    while (hi - lo > 1) {
        double m;
        int p = partition(c, lo, hi, &m);
        if (acc + m >= target) { /* the prefix ends before the pivot */
            hi = p;
            continue;
        }
        acc += m + c[p].v;
        if (acc >= target) return p + 1;
        lo = p + 1;
    }
    return hi - lo == 1 ? lo + 1 : lo > 0 ? lo : n;
}

/* A weight's binade: 0 for 1, k for [2^-k, 2^-k+1), up to 127 for the smallest (from its bits, so
 * higher weights never land in higher binades). */
static int binade(float w)
{
    uint32_t b;
    memcpy(&b, &w, sizeof(b));
    int e = 127 - (int)((b >> 23) & 0xff);
    return e < 0 ? 0 : e > 127 ? 127 : e;
}

/* As select_mass, weights in (0, 1]: one pass sums the weight of each binade, which finds the binade
 * where the prefix ends; the binades above it are in, and the quickselect runs on that binade alone
 * (where sorting or a quickselect on all would move every candidate several times). */
static int best_mass(struct cand *c, int n, double target)
{
    double mass[128] = { 0 };
    for (int i = 0; i < n; i++) mass[binade(c[i].v)] += c[i].v;
    double acc = 0;
    int cut = 0;
    while (cut < 128 && acc + mass[cut] < target) acc += mass[cut++];
    if (cut == 128) return n; /* the whole falls short (rounding) */
    int lo = 0;
    for (int i = 0; i < n; i++) /* the binades above the cut first, then the cut's */
        if (binade(c[i].v) < cut) cand_swap(&c[i], &c[lo++]);
    int hi = lo;
    for (int i = lo; i < n; i++)
        if (binade(c[i].v) == cut) cand_swap(&c[i], &c[hi++]);
    return lo + select_mass(c + lo, hi - lo, target - acc);
}

static bool penalized(const struct moe_sampling *p)
{
    return p->n_logit_bias > 0 || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f ||
           (p->repetition_penalty != 0.0f && p->repetition_penalty != 1.0f);
}

/* A logit v under the repetition penalty rp. */
static float repeat_penalized(float v, float rp)
{
    return v > 0.0f ? v / rp : v * rp;
}

/* w = logits with logit_bias and the penalties of p applied; cnt[vocab] is zero on entry and on
 * return.  History ids outside [0, vocab) are skipped.  A finite logit that the repetition penalty
 * takes beyond float's range ends as its exact value ranks: below every other, -FLT_MAX (still
 * drawable, where -inf would let a banned token be drawn in its place); above every other, +inf for
 * the largest of them (the softmax's limit: all the mass) and FLT_MAX for the rest. */
static void apply_penalties(const struct moe_sampling *p, const float *logits, int vocab, const int *ids,
                            int n_prompt, int n_ids, float *w, uint32_t *cnt)
{
    memcpy(w, logits, sizeof(float) * (size_t)vocab);
    for (int i = 0; i < p->n_logit_bias; i++)
        w[p->logit_bias[i].id] += p->logit_bias[i].bias;
    float rp = p->repetition_penalty;
    if (rp != 0.0f && rp != 1.0f) { /* once per distinct token of the prompt and the output */
        float top = -INFINITY;      /* the largest logit taken past FLT_MAX */
        for (int i = 0; i < n_ids; i++) {
            int t = ids[i];
            if (t >= 0 && t < vocab && isfinite(w[t]) && repeat_penalized(w[t], rp) == INFINITY && w[t] > top)
                top = w[t];
        }
        for (int i = 0; i < n_ids; i++) {
            int t = ids[i];
            if (t < 0 || t >= vocab || cnt[t]) continue;
            cnt[t] = 1;
            float v = repeat_penalized(w[t], rp);
            if (isinf(v) && isfinite(w[t]))
                v = v < 0 ? -FLT_MAX : w[t] == top ? INFINITY : FLT_MAX;
            w[t] = v;
        }
        for (int i = 0; i < n_ids; i++)
            if (ids[i] >= 0 && ids[i] < vocab) cnt[ids[i]] = 0;
    }
    if (p->frequency_penalty == 0.0f && p->presence_penalty == 0.0f) return;
    for (int i = n_prompt; i < n_ids; i++) /* the output only, as OpenAI counts */
        if (ids[i] >= 0 && ids[i] < vocab) cnt[ids[i]]++;
    for (int i = n_prompt; i < n_ids; i++) {
        int t = ids[i];
        if (t < 0 || t >= vocab || !cnt[t]) continue;
        w[t] -= p->frequency_penalty * (float)cnt[t];
        w[t] -= p->presence_penalty;
        cnt[t] = 0;
    }
}

static int sample_from(struct moe_sampler *s, const float *logits, int vocab, struct cand *c)
{
    if (s->p.temperature == 0.0f) return moe_argmax(logits, vocab);
    int n = 0;
    float inv_t = 1.0f / s->p.temperature;
    float vmax = -INFINITY;
    for (int i = 0; i < vocab; i++) {
        if (isnan(logits[i]) || logits[i] == -INFINITY) continue;
        c[n].v = logits[i] * inv_t;
        c[n].id = i;
        if (c[n].v > vmax) vmax = c[n].v;
        n++;
    }
    /* The largest logit / T beyond float (a tiny T or an infinite logit): the
     * softmax would be NaN; its limit puts all the mass on the argmax.  Other
     * logits that reach -inf just get probability 0. */
    if (n == 0 || isinf(vmax))
        return moe_argmax(logits, vocab);
    if (s->p.top_k > 0 && s->p.top_k < n) { /* the top_k most likely */
        best_k(c, n, s->p.top_k);
        n = s->p.top_k;
    }
    moe_vexp_sub(&c[0].v, n, 2, vmax); /* c[i].v = expf(c[i].v - vmax): the most likely token gets 1 */
    double sum = 0;
    for (int i = 0; i < n; i++) sum += c[i].v;
    if (s->p.top_p < 1.0f) { /* the fewest most likely tokens whose mass reaches top_p */
        n = best_mass(c, n, s->p.top_p * sum);
        sum = 0;
        for (int i = 0; i < n; i++) sum += c[i].v;
    }
    if (s->p.min_p > 0.0f) { /* relative to the most likely token, whose weight is 1 */
        int kept = 0;
        sum = 0;
        for (int i = 0; i < n; i++)
            if (c[i].v >= s->p.min_p) {
                c[kept++] = c[i];
                sum += c[i].v;
            }
        n = kept; /* >= 1: the most likely token stays */
    }
    double u = next_unit(s) * sum, acc = 0;
    int pick = c[n - 1].id;
    for (int i = 0; i < n; i++) {
        acc += c[i].v;
        if (u < acc) {
            pick = c[i].id;
            break;
        }
    }
    return pick;
}

void moe_sample_buf_free(struct moe_sample_buf *b)
{
    free(b->cand);
    free(b->w);
    free(b->cnt);
    *b = (struct moe_sample_buf){ 0 };
}

/* b holding a vocabulary of vocab (the penalties' arrays only when asked). */
static bool buf_fit(struct moe_sample_buf *b, int vocab, bool penalties)
{
    if (b->cap < vocab) {
        moe_sample_buf_free(b);
        if (!(b->cand = malloc(sizeof(struct cand) * (size_t)vocab))) return false;
        b->cap = vocab;
    }
    if (penalties && !b->w) {
        b->w = malloc(sizeof(float) * (size_t)b->cap);
        b->cnt = calloc((size_t)b->cap, sizeof(uint32_t));
        if (!b->w || !b->cnt) {
            free(b->w), free(b->cnt);
            b->w = NULL, b->cnt = NULL;
            return false;
        }
    }
    return true;
}

int moe_sampler_sample_buf(struct moe_sampler *s, struct moe_sample_buf *b, const float *logits, int vocab,
                           const int *ids, int n_prompt, int n_ids)
{
    if (vocab <= 0) return 0;
    bool pen = penalized(&s->p);
    if (!buf_fit(b, vocab, pen)) {
        moe_errorf(MOE_ENOMEM, "sampling: out of memory for a %d-token vocabulary", vocab);
        return -1;
    }
    if (!pen) return sample_from(s, logits, vocab, b->cand);
    apply_penalties(&s->p, logits, vocab, ids, n_prompt, n_ids, b->w, b->cnt);
    return sample_from(s, b->w, vocab, b->cand);
}

int moe_sampler_sample(struct moe_sampler *s, const float *logits, int vocab, const int *ids, int n_prompt,
                       int n_ids)
{
    if (vocab <= 0) return 0;
    if (s->p.temperature == 0.0f && !penalized(&s->p)) return moe_argmax(logits, vocab); /* no memory needed */
    struct moe_sample_buf b = { 0 };
    int tok = moe_sampler_sample_buf(s, &b, logits, vocab, ids, n_prompt, n_ids);
    moe_sample_buf_free(&b);
    return tok;
}

/* The log-probability of a logit v under a log-softmax whose largest logit is mx: v - log_z when mx is
 * finite; when it is infinite (+inf, or -inf with every logit -inf or NaN), the softmax's limit, an equal
 * share for each of the n_mx logits at mx (-log n_mx) and nothing (-inf) for the rest.  NaN stays NaN. */
static float logprob_of(float v, float mx, double log_z, int n_mx)
{
    if (isnan(v) || !isinf(mx))
        return (float)(v - log_z);
    return v == mx ? (float)-log((double)n_mx) : -INFINITY;
}

void moe_token_logprobs(const float *logits, int vocab, int tok, int n, struct moe_token_logprobs *out)
{
    float mx = -INFINITY;
    for (int i = 0; i < vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0, log_z = 0;
    int n_mx = 0; /* logits at an infinite maximum, where the sum below would be NaN */
    for (int i = 0; i < vocab; i++) {
        if (isnan(logits[i])) continue;
        if (isinf(mx)) n_mx += logits[i] == mx;
        else sum += exp((double)logits[i] - mx);
    }
    if (!isinf(mx)) log_z = mx + log(sum);
    out->logprob = logprob_of(logits[tok], mx, log_z, n_mx);
    if (n > MOE_MAX_TOP_LOGPROBS) n = MOE_MAX_TOP_LOGPROBS;
    if (n > vocab) n = vocab;
    /* the n largest in one pass, kept sorted (descending; an equal value goes after, so ties keep the
     * lower id): vocab comparisons, not n * vocab scans, as this runs for every prompt row of an echo */
    float top[MOE_MAX_TOP_LOGPROBS];
    int k = 0;
    for (int i = 0; i < vocab && n > 0; i++) {
        float v = logits[i];
        if (isnan(v) || (k == n && !(v > top[n - 1])))
            continue;
        int j = k < n ? k++ : n - 1;
        for (; j > 0 && v > top[j - 1]; j--) {
            top[j] = top[j - 1];
            out->ids[j] = out->ids[j - 1];
        }
        top[j] = v;
        out->ids[j] = i;
    }
    for (int r = 0; r < k; r++)
        out->logprobs[r] = logprob_of(top[r], mx, log_z, n_mx);
    out->n = k;
}
