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

#ifdef __cplusplus
}
#endif
#endif
