/* Token sampling: logit bias and repetition, frequency and presence penalties, then greedy or
 * temperature, top-k, top-p, min-p and a seeded draw.  Deterministic for a seed. */
#ifndef MOE_SAMPLING_H
#define MOE_SAMPLING_H

#include "../common/moe.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_MAX_LOGIT_BIAS 300   /* logit_bias entries per request */
#define MOE_MAX_PENALTY 2.0f      /* |presence_penalty|, |frequency_penalty| (OpenAI's range) */
#define MOE_MAX_REPETITION_PENALTY 10.0f
#define MOE_MAX_STOP_TOKEN_IDS 64 /* stop_token_ids per request (vLLM's extension) */

struct moe_logit_bias {
    int32_t id;
    float bias;        /* [-100, 100], added to the token's logit */
};

/* Every field's zero is "off", so {temperature, top_p, top_k, seed} initialisers keep working. */
struct moe_sampling {
    float temperature; /* 0 = greedy */
    float top_p;       /* (0, 1]; 1 = off */
    int top_k;         /* 0 = off */
    uint64_t seed;
    float min_p;              /* [0, 1]: drop tokens less likely than min_p x the most likely; 0 = off */
    float presence_penalty;   /* [-2, 2]: subtracted once from every token generated so far */
    float frequency_penalty;  /* [-2, 2]: subtracted per time a token was generated */
    float repetition_penalty; /* [0, 10]: a logit of a token in the prompt or output is divided by it
                                 when positive, multiplied when not; 0 (gRPC's unset) or 1 = off */
    int n_logit_bias;
    struct moe_logit_bias logit_bias[MOE_MAX_LOGIT_BIAS]; /* distinct ids */
};

struct moe_sampler {
    struct moe_sampling p;
    uint64_t rng;      /* xorshift/splitmix state, derived from seed */
};

/* A sampling field's value, given as a double (JSON, a KServe FP64 parameter, a command-line flag), as a
 * float: a nonzero d too small for a float (below 1.4e-45, as 1e-300) is the smallest float of its sign,
 * not 0, which repetition_penalty takes as "off" and top_p refuses; the smallest acts as d would (top_p:
 * the most likely token alone). */
float moe_sampling_float(double d);

/* Check ranges; the error names the field (temperature >= 0 and finite, 0 < top_p <= 1, top_k >= 0,
 * the penalties', min_p's and logit_bias' ranges above, logit_bias ids distinct and, when vocab > 0,
 * below vocab). */
enum moe_status moe_sampling_validate(const struct moe_sampling *p, int vocab);
void moe_sampler_init(struct moe_sampler *s, const struct moe_sampling *p);
/* Pick a token from logits[vocab] (left unchanged).  ids[0..n_prompt) is the prompt and
 * ids[n_prompt..n_ids) the tokens generated so far, which the penalties look at (ids may be NULL
 * when n_ids is 0).  In order, as vLLM applies them: logit_bias, the repetition penalty, the
 * frequency and presence penalties; then greedy (ties -> lowest id) or temperature, top-k, top-p,
 * min-p and the draw.  Returns -1 (moe_last_error() set) only when out of memory. */
int moe_sampler_sample(struct moe_sampler *s, const float *logits, int vocab, const int *ids, int n_prompt,
                       int n_ids);

/* Working memory of the sampler, kept from one token to the next (one per thread that samples):
 * grown to the vocabulary on first use, freed with moe_sample_buf_free.  Zero-initialise it. */
struct moe_sample_buf {
    void *cand;        /* candidates */
    float *w;          /* logits after the penalties */
    uint32_t *cnt;     /* per-token counts, all zero between calls */
    int cap;           /* vocabulary they hold */
};
void moe_sample_buf_free(struct moe_sample_buf *b);
/* As moe_sampler_sample, with b's memory instead of allocations of its own. */
int moe_sampler_sample_buf(struct moe_sampler *s, struct moe_sample_buf *b, const float *logits, int vocab,
                           const int *ids, int n_prompt, int n_ids);
int moe_argmax(const float *x, int n);
/* vLLM's min_tokens mask: logits[ids[i]] = -inf for each of ids[0..n) (repeats and ids outside [0, vocab)
 * skipped), unless that would leave no token to draw (every other logit -inf or NaN, as a constrained
 * output that may only end): then logits stay as they are and false is returned. */
bool moe_logits_ban(float *logits, int vocab, const int *ids, int n);

#define MOE_MAX_TOP_LOGPROBS 20

/* A token's log-probability under the distribution of logits (their
 * log-softmax: before temperature, top-k and top-p), and the n most likely
 * tokens with theirs, most likely first (ties: lower id; NaN logits never).
 * Where the largest logit is infinite (+inf, or -inf with no finite one) the
 * log-softmax's limit: the tokens at it share the probability (-log of their
 * count each), every other token gets -inf (the sampler then takes the first
 * of them, never another token). */
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
