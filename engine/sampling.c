/* Token sampling: greedy, or temperature -> top-k -> top-p -> seeded draw.
 * Candidates are ordered by (logit descending, id ascending), a total order,
 * so a seed gives the same tokens on every run. */
#include "sampling.h"

#include <math.h>
#include <stdlib.h>

enum moe_status moe_sampling_validate(const struct moe_sampling *p)
{
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return moe_errorf(MOE_EINVAL, "sampling: temperature = %g must be finite and >= 0",
                          (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return moe_errorf(MOE_EINVAL, "sampling: top_p = %g must be in (0, 1]", (double)p->top_p);
    if (p->top_k < 0)
        return moe_errorf(MOE_EINVAL, "sampling: top_k = %d must be >= 0 (0 = off)", p->top_k);
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

struct cand {
    float v;  /* scaled logit, later probability */
    int id;
};

static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->v > y->v) return -1;
    if (x->v < y->v) return 1;
    return (x->id > y->id) - (x->id < y->id);
}

int moe_sampler_sample(struct moe_sampler *s, const float *logits, int vocab)
{
    if (vocab <= 0) return 0;
    if (s->p.temperature == 0.0f) return moe_argmax(logits, vocab);
    struct cand *c = malloc(sizeof(*c) * (size_t)vocab);
    if (!c) return moe_argmax(logits, vocab); /* out of memory: degrade to greedy, never crash */
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
    if (n == 0 || isinf(vmax)) {
        free(c);
        return moe_argmax(logits, vocab);
    }
    bool ordered = s->p.top_k > 0 || s->p.top_p < 1.0f;
    if (ordered) qsort(c, (size_t)n, sizeof(*c), cand_cmp);
    if (s->p.top_k > 0 && s->p.top_k < n) n = s->p.top_k;
    float m = c[0].v;
    if (!ordered)
        for (int i = 1; i < n; i++)
            if (c[i].v > m) m = c[i].v;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        c[i].v = expf(c[i].v - m);
        sum += c[i].v;
    }
    if (s->p.top_p < 1.0f) {
        /* smallest prefix (most likely first) whose mass reaches top_p */
        double acc = 0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            acc += c[i].v / sum;
            if (acc >= s->p.top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        sum = 0;
        for (int i = 0; i < n; i++) sum += c[i].v;
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
    free(c);
    return pick;
}

void moe_token_logprobs(const float *logits, int vocab, int tok, int n, struct moe_token_logprobs *out)
{
    float mx = -INFINITY;
    for (int i = 0; i < vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int i = 0; i < vocab; i++)
        if (!isnan(logits[i])) sum += exp((double)logits[i] - mx);
    double log_z = mx + log(sum);
    out->logprob = (float)(logits[tok] - log_z);
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
        out->logprobs[r] = (float)(top[r] - log_z);
    out->n = k;
}
