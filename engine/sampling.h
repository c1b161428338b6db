/* Token sampling: greedy, temperature, top-k, top-p, seeded. Deterministic for a seed. */
#ifndef MOE_SAMPLING_H
#define MOE_SAMPLING_H

#include "../common/moe.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_sampling {
    float temperature; /* 0 = greedy */
    float top_p;       /* (0, 1]; 1 = off */
    int top_k;         /* 0 = off */
    uint64_t seed;
};

struct moe_sampler {
    struct moe_sampling p;
    uint64_t rng;      /* xorshift/splitmix state, derived from seed */
};

/* Check ranges; error names the field (temperature >= 0 and finite, 0 < top_p <= 1, top_k >= 0). */
enum moe_status moe_sampling_validate(const struct moe_sampling *p);
void moe_sampler_init(struct moe_sampler *s, const struct moe_sampling *p);
/* Pick a token from logits[vocab]; scratch may be NULL (allocates). Ties -> lowest id. */
int moe_sampler_sample(struct moe_sampler *s, const float *logits, int vocab);
int moe_argmax(const float *x, int n);

#define MOE_MAX_TOP_LOGPROBS 20

/* A token's log-probability under the distribution of logits (their
 * log-softmax: before temperature, top-k and top-p), and the n most likely
 * tokens with theirs, most likely first (ties: lower id; NaN logits never). */
struct moe_token_logprobs {
    float logprob;
    int n;
    int32_t ids[MOE_MAX_TOP_LOGPROBS];
    float logprobs[MOE_MAX_TOP_LOGPROBS];
};

/* out for token tok of logits[vocab], n alternatives (0..MOE_MAX_TOP_LOGPROBS, at most vocab). */
void moe_token_logprobs(const float *logits, int vocab, int tok, int n, struct moe_token_logprobs *out);

#ifdef __cplusplus
}
#endif
#endif
