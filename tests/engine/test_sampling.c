/* Sampling: parameter validation names the field; greedy picks the lowest id
 * among ties and skips NaN; a seed reproduces its draws; top-k = 1 and a tiny
 * top-p reduce to greedy; top-k/top-p never pick outside their set; at
 * temperature 1 the frequencies follow the softmax; token log-probabilities are
 * the logits' log-softmax, alternatives most likely first, NaN never (the
 * one-pass selection against a plain scan). */
#include "engine/sampling.h"
#include "tests/test_util.h"

#include <math.h>

int main(void)
{
    struct moe_sampling bad[] = { { -1, 1, 0, 0 }, { NAN, 1, 0, 0 }, { 1, 0, 0, 0 }, { 1, 1.5f, 0, 0 },
                                  { 1, 1, -2, 0 } };
    const char *field[] = { "temperature", "temperature", "top_p", "top_p", "top_k" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(bad); i++) {
        CHECK(moe_sampling_validate(&bad[i]) == MOE_EINVAL, "case %zu accepted", i);
        CHECK(strstr(moe_last_error(), field[i]) != NULL, "case %zu: '%s' does not name %s", i,
              moe_last_error(), field[i]);
    }
    struct moe_sampling ok = { 0.7f, 0.9f, 5, 1 };
    CHECK(moe_sampling_validate(&ok) == MOE_OK, "valid parameters refused");

    float lg[6] = { 1.0f, 3.0f, NAN, 3.0f, -INFINITY, 2.0f };
    CHECK(moe_argmax(lg, 6) == 1, "argmax ties -> lowest id");
    float nan3[3] = { NAN, NAN, NAN };
    CHECK(moe_argmax(nan3, 3) == 0, "all-NaN row -> 0");
    struct moe_sampler s;
    moe_sampler_init(&s, &(struct moe_sampling){ 0, 1, 0, 0 });
    CHECK(moe_sampler_sample(&s, lg, 6) == 1, "temperature 0 is greedy");

    /* a temperature so small that logit / T overflows (a valid, finite
     * temperature) is the greedy limit, and so is an infinite logit */
    float big[4] = { 100.0f, 300.0f, -200.0f, 0.0f };
    float tiny_t[] = { 1e-39f, 1e-37f, 1e-30f };
    for (size_t t = 0; t < sizeof(tiny_t) / sizeof(tiny_t[0]); t++)
        for (uint64_t seed = 0; seed < 8; seed++) {
            struct moe_sampling tp = { tiny_t[t], seed & 1 ? 0.9f : 1.0f, seed & 2 ? 3 : 0, seed };
            CHECK(moe_sampling_validate(&tp) == MOE_OK, "temperature %g refused", (double)tiny_t[t]);
            moe_sampler_init(&s, &tp);
            int got = moe_sampler_sample(&s, big, 4);
            CHECK(got == 1, "temperature %g, seed %llu: token %d, not the argmax 1", (double)tiny_t[t],
                  (unsigned long long)seed, got);
        }
    float inf_lg[3] = { 1.0f, INFINITY, 2.0f };
    moe_sampler_init(&s, &(struct moe_sampling){ 1.0f, 1.0f, 0, 5 });
    CHECK(moe_sampler_sample(&s, inf_lg, 3) == 1, "an infinite logit is not the one drawn");
    /* one logit / T underflowing to -inf only drops that token */
    float low[3] = { -3e38f, 0.0f, 0.0f };
    int seen01[2] = { 0, 0 };
    moe_sampler_init(&s, &(struct moe_sampling){ 0.5f, 1.0f, 0, 9 });
    for (int i = 0; i < 64; i++) {
        int x = moe_sampler_sample(&s, low, 3);
        CHECK(x == 1 || x == 2, "drew token %d of probability 0", x);
        if (x == 1 || x == 2) seen01[x - 1]++;
    }
    CHECK(seen01[0] > 0 && seen01[1] > 0, "tokens 1 and 2 (equal logits) drawn %d and %d times", seen01[0],
          seen01[1]);

    /* reproducible draws */
    enum { V = 50, N = 200 };
    float l2[V];
    for (int i = 0; i < V; i++) l2[i] = sinf((float)i) * 2.0f;
    struct moe_sampling sp = { 1.0f, 1.0f, 0, 42 };
    struct moe_sampler a, b;
    moe_sampler_init(&a, &sp);
    moe_sampler_init(&b, &sp);
    int same = 0, distinct = 0, seen[V] = { 0 };
    for (int i = 0; i < N; i++) {
        int x = moe_sampler_sample(&a, l2, V), y = moe_sampler_sample(&b, l2, V);
        same += x == y;
        if (!seen[x]++) distinct++;
    }
    CHECK(same == N, "same seed gave different tokens (%d/%d equal)", same, N);
    CHECK(distinct > 5, "temperature 1 sampled only %d distinct tokens", distinct);
    sp.seed = 43;
    moe_sampler_init(&b, &sp);
    moe_sampler_init(&a, &(struct moe_sampling){ 1.0f, 1.0f, 0, 42 });
    same = 0;
    for (int i = 0; i < N; i++) same += moe_sampler_sample(&a, l2, V) == moe_sampler_sample(&b, l2, V);
    CHECK(same < N, "different seeds gave identical draws");

    int g = moe_argmax(l2, V);
    moe_sampler_init(&a, &(struct moe_sampling){ 5.0f, 1.0f, 1, 3 });
    moe_sampler_init(&b, &(struct moe_sampling){ 5.0f, 1e-6f, 0, 3 });
    for (int i = 0; i < 50; i++) {
        CHECK(moe_sampler_sample(&a, l2, V) == g, "top_k = 1 is not greedy");
        CHECK(moe_sampler_sample(&b, l2, V) == g, "tiny top_p is not greedy");
    }
    /* top-k = 3: only the 3 most likely */
    int top3[3] = { -1, -1, -1 };
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < V; i++) {
            if (i == top3[0] || i == top3[1]) continue;
            if (top3[r] < 0 || l2[i] > l2[top3[r]]) top3[r] = i;
        }
    moe_sampler_init(&a, &(struct moe_sampling){ 3.0f, 1.0f, 3, 9 });
    for (int i = 0; i < 200; i++) {
        int x = moe_sampler_sample(&a, l2, V);
        CHECK(x == top3[0] || x == top3[1] || x == top3[2], "top_k = 3 picked %d", x);
    }

    /* frequencies vs softmax at temperature 1 */
    float l3[4] = { 0.0f, 1.0f, 2.0f, -1.0f };
    double p[4], z = 0;
    for (int i = 0; i < 4; i++) z += (p[i] = exp(l3[i]));
    int cnt[4] = { 0 }, M = 40000;
    moe_sampler_init(&a, &(struct moe_sampling){ 1.0f, 1.0f, 0, 7 });
    for (int i = 0; i < M; i++) cnt[moe_sampler_sample(&a, l3, 4)]++;
    for (int i = 0; i < 4; i++) {
        double f = (double)cnt[i] / M, want = p[i] / z;
        CHECK(fabs(f - want) < 0.01, "token %d frequency %.4f, softmax %.4f", i, f, want);
    }
    /* top-p = 0.7: tokens 2 (0.64) and 1 (0.24) reach 0.7; 0 and 3 never */
    moe_sampler_init(&a, &(struct moe_sampling){ 1.0f, 0.7f, 0, 7 });
    memset(cnt, 0, sizeof(cnt));
    for (int i = 0; i < 2000; i++) cnt[moe_sampler_sample(&a, l3, 4)]++;
    CHECK(cnt[0] == 0 && cnt[3] == 0 && cnt[1] > 0 && cnt[2] > 0, "top_p 0.7 counts %d %d %d %d", cnt[0],
          cnt[1], cnt[2], cnt[3]);

    /* log-probabilities: logits 1, 3, 2, NaN, 3 (NaN counts for nothing) */
    float l4[5] = { 1.0f, 3.0f, 2.0f, NAN, 3.0f };
    double lz = log(exp(1.0) + 2 * exp(3.0) + exp(2.0));
    struct moe_token_logprobs lp;
    moe_token_logprobs(l4, 5, 2, 3, &lp);
    CHECK(fabs(lp.logprob - (2.0 - lz)) < 1e-6, "logprob %.7f, want %.7f", lp.logprob, 2.0 - lz);
    CHECK(lp.n == 3 && lp.ids[0] == 1 && lp.ids[1] == 4 && lp.ids[2] == 2, "top ids %d: %d %d %d", lp.n, lp.ids[0],
          lp.ids[1], lp.ids[2]);
    CHECK(fabs(lp.logprobs[0] - (3.0 - lz)) < 1e-6 && lp.logprobs[1] == lp.logprobs[0] &&
              fabs(lp.logprobs[2] - (2.0 - lz)) < 1e-6, "top logprobs %g %g %g", lp.logprobs[0], lp.logprobs[1],
          lp.logprobs[2]);
    moe_token_logprobs(l4, 5, 0, 20, &lp); /* more than the numbers there are: only those */
    CHECK(lp.n == 4 && lp.ids[3] == 0, "all alternatives: %d, last %d", lp.n, lp.ids[3]);
    moe_token_logprobs(l4, 5, 1, 0, &lp);
    CHECK(lp.n == 0 && fabs(lp.logprob - (3.0 - lz)) < 1e-6, "no alternatives: %d %g", lp.n, lp.logprob);

    /* the alternatives against a plain scan, on logits with many ties and NaNs */
    enum { BV = 1000 };
    static float lr[BV];
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < BV; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        lr[i] = x % 37 == 0 ? NAN : (float)(x % 50) * 0.25f;
    }
    for (int n = 0; n <= MOE_MAX_TOP_LOGPROBS; n++) {
        moe_token_logprobs(lr, BV, 7, n, &lp);
        int want[MOE_MAX_TOP_LOGPROBS], wrong = lp.n != n;
        for (int r = 0; r < n && !wrong; r++) {
            int best = -1;
            for (int i = 0; i < BV; i++) {
                bool taken = false;
                for (int q = 0; q < r; q++) taken |= want[q] == i;
                if (!isnan(lr[i]) && !taken && (best < 0 || lr[i] > lr[best])) best = i;
            }
            want[r] = best;
            wrong = lp.ids[r] != best || fabs(lp.logprobs[r] - (lr[best] - (lr[7] - lp.logprob))) > 1e-5;
        }
        CHECK(!wrong, "top %d alternatives differ from a plain scan", n);
    }

    return t_result("test_engine_sampling");
}
