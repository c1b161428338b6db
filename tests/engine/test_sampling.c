/* Sampling: parameter validation names the field; greedy picks the lowest id
 * among ties and skips NaN; a seed reproduces its draws; top-k = 1 and a tiny
 * top-p reduce to greedy; top-k/top-p never pick outside their set; at
 * temperature 1 the frequencies follow the softmax; token log-probabilities are
 * the logits' log-softmax, alternatives most likely first, NaN never (the
 * one-pass selection against a plain scan), its limit where the largest logit is
 * infinite (not NaN); min-p keeps the tokens at least that
 * likely relative to the most likely; logit bias, repetition, frequency and presence
 * penalties change the logits as vLLM applies them (repetition once per distinct
 * token of prompt and output, frequency and presence on the output only), leave
 * the caller's logits alone, and compose with the seeded draw; a repetition penalty
 * that takes a logit past float's range leaves it drawable and ranked as its exact
 * value; the min_tokens mask bans its ids unless nothing else could be drawn. */
#include "engine/sampling.h"
#include "tests/test_util.h"

#include <float.h>
#include <math.h>

/* temperature, top_p, top_k, seed, then any other fields by name: an initialiser, and a value */
#define SPI(t, p, k, ...) { .temperature = (t), .top_p = (p), .top_k = (k), .seed = __VA_ARGS__ }
#define SP(...) ((struct moe_sampling)SPI(__VA_ARGS__))

int main(void)
{
    struct moe_sampling bad[] = { SPI(-1, 1, 0, 0), SPI(NAN, 1, 0, 0), SPI(1, 0, 0, 0), SPI(1, 1.5f, 0, 0),
                                  SPI(1, 1, -2, 0) };
    const char *field[] = { "temperature", "temperature", "top_p", "top_p", "top_k" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(bad); i++) {
        CHECK(moe_sampling_validate(&bad[i], 0) == MOE_EINVAL, "case %zu accepted", i);
        CHECK(strstr(moe_last_error(), field[i]) != NULL, "case %zu: '%s' does not name %s", i,
              moe_last_error(), field[i]);
    }
    struct moe_sampling ok = SPI(0.7f, 0.9f, 5, 1);
    CHECK(moe_sampling_validate(&ok, 0) == MOE_OK, "valid parameters refused");

    float lg[6] = { 1.0f, 3.0f, NAN, 3.0f, -INFINITY, 2.0f };
    CHECK(moe_argmax(lg, 6) == 1, "argmax ties -> lowest id");
    float nan3[3] = { NAN, NAN, NAN };
    CHECK(moe_argmax(nan3, 3) == 0, "all-NaN row -> 0");
    struct moe_sampler s;
    moe_sampler_init(&s, &SP(0, 1, 0, 0));
    CHECK(moe_sampler_sample(&s, lg, 6, NULL, 0, 0) == 1, "temperature 0 is greedy");

    /* a temperature so small that logit / T overflows (a valid, finite
     * temperature) is the greedy limit, and so is an infinite logit */
    float big[4] = { 100.0f, 300.0f, -200.0f, 0.0f };
    float tiny_t[] = { 1e-39f, 1e-37f, 1e-30f };
    for (size_t t = 0; t < sizeof(tiny_t) / sizeof(tiny_t[0]); t++)
        for (uint64_t seed = 0; seed < 8; seed++) {
            struct moe_sampling tp = SPI(tiny_t[t], seed & 1 ? 0.9f : 1.0f, seed & 2 ? 3 : 0, seed);
            CHECK(moe_sampling_validate(&tp, 0) == MOE_OK, "temperature %g refused", (double)tiny_t[t]);
            moe_sampler_init(&s, &tp);
            int got = moe_sampler_sample(&s, big, 4, NULL, 0, 0);
            CHECK(got == 1, "temperature %g, seed %llu: token %d, not the argmax 1", (double)tiny_t[t],
                  (unsigned long long)seed, got);
        }
    float inf_lg[3] = { 1.0f, INFINITY, 2.0f };
    moe_sampler_init(&s, &SP(1.0f, 1.0f, 0, 5));
    CHECK(moe_sampler_sample(&s, inf_lg, 3, NULL, 0, 0) == 1, "an infinite logit is not the one drawn");
    /* one logit / T underflowing to -inf only drops that token */
    float low[3] = { -3e38f, 0.0f, 0.0f };
    int seen01[2] = { 0, 0 };
    moe_sampler_init(&s, &SP(0.5f, 1.0f, 0, 9));
    for (int i = 0; i < 64; i++) {
        int x = moe_sampler_sample(&s, low, 3, NULL, 0, 0);
        CHECK(x == 1 || x == 2, "drew token %d of probability 0", x);
        if (x == 1 || x == 2) seen01[x - 1]++;
    }
    CHECK(seen01[0] > 0 && seen01[1] > 0, "tokens 1 and 2 (equal logits) drawn %d and %d times", seen01[0],
          seen01[1]);

    /* reproducible draws */
    enum { V = 50, N = 200 };
    float l2[V];
    for (int i = 0; i < V; i++) l2[i] = sinf((float)i) * 2.0f;
    struct moe_sampling sp = SPI(1.0f, 1.0f, 0, 42);
    struct moe_sampler a, b;
    moe_sampler_init(&a, &sp);
    moe_sampler_init(&b, &sp);
    int same = 0, distinct = 0, seen[V] = { 0 };
    for (int i = 0; i < N; i++) {
        int x = moe_sampler_sample(&a, l2, V, NULL, 0, 0), y = moe_sampler_sample(&b, l2, V, NULL, 0, 0);
        same += x == y;
        if (!seen[x]++) distinct++;
    }
    CHECK(same == N, "same seed gave different tokens (%d/%d equal)", same, N);
    CHECK(distinct > 5, "temperature 1 sampled only %d distinct tokens", distinct);
    sp.seed = 43;
    moe_sampler_init(&b, &sp);
    moe_sampler_init(&a, &SP(1.0f, 1.0f, 0, 42));
    same = 0;
    for (int i = 0; i < N; i++) same += moe_sampler_sample(&a, l2, V, NULL, 0, 0) == moe_sampler_sample(&b, l2, V, NULL, 0, 0);
    CHECK(same < N, "different seeds gave identical draws");

    int g = moe_argmax(l2, V);
    moe_sampler_init(&a, &SP(5.0f, 1.0f, 1, 3));
    moe_sampler_init(&b, &SP(5.0f, 1e-6f, 0, 3));
    for (int i = 0; i < 50; i++) {
        CHECK(moe_sampler_sample(&a, l2, V, NULL, 0, 0) == g, "top_k = 1 is not greedy");
        CHECK(moe_sampler_sample(&b, l2, V, NULL, 0, 0) == g, "tiny top_p is not greedy");
    }
    /* top-k = 3: only the 3 most likely */
    int top3[3] = { -1, -1, -1 };
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < V; i++) {
            if (i == top3[0] || i == top3[1]) continue;
            if (top3[r] < 0 || l2[i] > l2[top3[r]]) top3[r] = i;
        }
    moe_sampler_init(&a, &SP(3.0f, 1.0f, 3, 9));
    for (int i = 0; i < 200; i++) {
        int x = moe_sampler_sample(&a, l2, V, NULL, 0, 0);
        CHECK(x == top3[0] || x == top3[1] || x == top3[2], "top_k = 3 picked %d", x);
    }

    /* frequencies vs softmax at temperature 1 */
    float l3[4] = { 0.0f, 1.0f, 2.0f, -1.0f };
    double p[4], z = 0;
    for (int i = 0; i < 4; i++) z += (p[i] = exp(l3[i]));
    int cnt[4] = { 0 }, M = 40000;
    moe_sampler_init(&a, &SP(1.0f, 1.0f, 0, 7));
    for (int i = 0; i < M; i++) cnt[moe_sampler_sample(&a, l3, 4, NULL, 0, 0)]++;
    for (int i = 0; i < 4; i++) {
        double f = (double)cnt[i] / M, want = p[i] / z;
        CHECK(fabs(f - want) < 0.01, "token %d frequency %.4f, softmax %.4f", i, f, want);
    }
    /* top-p = 0.7: tokens 2 (0.64) and 1 (0.24) reach 0.7; 0 and 3 never */
    moe_sampler_init(&a, &SP(1.0f, 0.7f, 0, 7));
    memset(cnt, 0, sizeof(cnt));
    for (int i = 0; i < 2000; i++) cnt[moe_sampler_sample(&a, l3, 4, NULL, 0, 0)]++;
    CHECK(cnt[0] == 0 && cnt[3] == 0 && cnt[1] > 0 && cnt[2] > 0, "top_p 0.7 counts %d %d %d %d", cnt[0],
          cnt[1], cnt[2], cnt[3]);

    /* min-p 0.2: weights relative to token 2 are e^-2 = 0.135, e^-1 = 0.368, 1, e^-3 = 0.050 */
    moe_sampler_init(&a, &SP(1.0f, 1.0f, 0, 7, .min_p = 0.2f));
    memset(cnt, 0, sizeof(cnt));
    for (int i = 0; i < 2000; i++) cnt[moe_sampler_sample(&a, l3, 4, NULL, 0, 0)]++;
    CHECK(cnt[0] == 0 && cnt[3] == 0 && cnt[1] > 0 && cnt[2] > 0, "min_p 0.2 counts %d %d %d %d", cnt[0],
          cnt[1], cnt[2], cnt[3]);

    /* a large vocabulary, ordered only as far as needed: 300 tokens at logit 5 (every fourth id from
     * 17), 4700 at 0.  top_p 0.8 keeps the first 266 of the 300 by id (ties go to the lower id):
     * 266 e^5 / (300 e^5 + 4700) >= 0.8 > 265 e^5 / (...); more than the first 64 or 256 looked at.
     * top_k 100 keeps the first 100 of them; top_k 280 then top_p 0.81 the first 227 (0.81 x 280 =
     * 226.8 of the 280's mass). */
    {
        enum { NV = 5000, HI = 300 };
        static float lv[NV];
        int rank[NV];
        for (int i = 0; i < NV; i++) rank[i] = -1;
        for (int i = 0, h = 0; i < NV; i++) {
            bool hi = i >= 17 && (i - 17) % 4 == 0 && h < HI;
            lv[i] = hi ? 5.0f : 0.0f;
            if (hi) rank[i] = h++;
        }
        double tot = HI * exp(5.0) + (NV - HI);
        int nucleus = (int)ceil(0.8 * tot / exp(5.0));
        CHECK(nucleus == 266, "nucleus %d", nucleus);
        struct { float top_p; int top_k, limit; } cases[] = { { 0.8f, 0, 266 }, { 1.0f, 100, 100 }, { 0.81f, 280, 227 } };
        for (size_t k = 0; k < MOE_ARRAY_LEN(cases); k++) {
            moe_sampler_init(&a, &SP(1.0f, cases[k].top_p, cases[k].top_k, 11));
            static bool drawn[NV];
            memset(drawn, 0, sizeof(drawn));
            int n_drawn = 0, outside = 0;
            for (int i = 0; i < 6000; i++) {
                int x = moe_sampler_sample(&a, lv, NV, NULL, 0, 0);
                if (x < 0 || rank[x] < 0 || rank[x] >= cases[k].limit) outside++;
                else if (!drawn[x]) drawn[x] = true, n_drawn++;
            }
            CHECK(outside == 0, "case %zu: %d picks outside the first %d", k, outside, cases[k].limit);
            CHECK(n_drawn > cases[k].limit * 9 / 10, "case %zu: only %d of %d drawn", k, n_drawn, cases[k].limit);
        }
        /* top_k 2000 (past the heap, by quickselect): the 300 and the 1700 lowest ids of the rest */
        int low_rank[NV];
        for (int i = 0, r = 0; i < NV; i++) low_rank[i] = rank[i] < 0 ? r++ : -1;
        moe_sampler_init(&a, &SP(1.0f, 1.0f, 2000, 5));
        int outside = 0, lows = 0;
        for (int i = 0; i < 6000; i++) {
            int x = moe_sampler_sample(&a, lv, NV, NULL, 0, 0);
            if (x < 0 || (rank[x] < 0 && low_rank[x] >= 1700)) outside++;
            lows += x >= 0 && rank[x] < 0;
        }
        CHECK(outside == 0 && lows > 0, "top_k 2000: %d picks outside, %d of the rest", outside, lows);
    }

    /* random logits (roughly normal), top_p 0.3 / 0.9 / 0.99: every draw lies in the nucleus computed
     * here by sorting (a hair wider, for summation order), and more than one token is drawn */
    {
        enum { RV = 3000 };
        static float rl[RV], w[RV];
        static int ord[RV];
        uint64_t x = 0x9e3779b97f4a7c15ull;
        for (int rep = 0; rep < 6; rep++) {
            for (int i = 0; i < RV; i++) {
                double u = 0;
                for (int k = 0; k < 4; k++) {
                    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                    u += (double)(x >> 11) / 9007199254740992.0;
                }
                rl[i] = (float)((u - 2.0) * (2.0 + rep));
            }
            float mx = rl[0];
            for (int i = 1; i < RV; i++) mx = rl[i] > mx ? rl[i] : mx;
            double tot = 0;
            for (int i = 0; i < RV; i++) tot += (w[i] = expf(rl[i] - mx)), ord[i] = i;
            for (int i = 1; i < RV; i++) /* insertion sort by weight, ties to the lower id */
                for (int j = i; j > 0 && (w[ord[j]] > w[ord[j - 1]] ||
                                          (w[ord[j]] == w[ord[j - 1]] && ord[j] < ord[j - 1])); j--) {
                    int t = ord[j];
                    ord[j] = ord[j - 1], ord[j - 1] = t;
                }
            const float tops[3] = { 0.3f, 0.9f, 0.99f };
            for (int k = 0; k < 3; k++) {
                static bool in[RV];
                memset(in, 0, sizeof(in));
                double acc = 0;
                for (int i = 0; i < RV && acc < (tops[k] + 1e-6) * tot; i++) acc += w[ord[i]], in[ord[i]] = true;
                moe_sampler_init(&a, &SP(1.0f, tops[k], 0, (uint64_t)(rep * 3 + k + 1)));
                int outside = 0, first = -1, others = 0;
                for (int d = 0; d < 300; d++) {
                    int t = moe_sampler_sample(&a, rl, RV, NULL, 0, 0);
                    outside += t < 0 || !in[t];
                    if (first < 0) first = t;
                    else others += t != first;
                }
                CHECK(outside == 0 && others > 0, "random logits %d, top_p %.2f: %d draws outside the nucleus",
                      rep, tops[k], outside);
            }
        }
    }

    /* a kept buffer (the scheduler's per-thread one) draws what fresh memory does: penalties over a
     * growing history (its counts must come back to zero), every mode, a vocabulary that grows */
    {
        static float lb[6000];
        static int hist[700];
        for (int i = 0; i < 6000; i++) lb[i] = (float)((i * 7919) % 613) / 97.0f;
        struct moe_sampling modes[] = { SPI(0, 1, 0, 3, .presence_penalty = 1.0f, .repetition_penalty = 1.3f),
                                        SPI(0.8f, 0.9f, 0, 4, .frequency_penalty = 0.7f),
                                        SPI(1.1f, 1, 40, 5, .min_p = 0.02f), SPI(0.7f, 0.5f, 0, 6) };
        struct moe_sample_buf buf = { 0 };
        int differ = 0;
        for (size_t k = 0; k < MOE_ARRAY_LEN(modes); k++) {
            struct moe_sampler x, y;
            moe_sampler_init(&x, &modes[k]);
            moe_sampler_init(&y, &modes[k]);
            int nv = k < 2 ? 3000 : 6000, n = 0;
            for (int i = 0; i < 200; i++) hist[n++] = (i * 31) % nv; /* a prompt */
            for (int step = 0; step < 300; step++) {
                int a1 = moe_sampler_sample(&x, lb, nv, hist, 200, n);
                int a2 = moe_sampler_sample_buf(&y, &buf, lb, nv, hist, 200, n);
                differ += a1 != a2;
                hist[n++] = a1 >= 0 ? a1 : 0;
            }
        }
        moe_sample_buf_free(&buf);
        CHECK(differ == 0, "%d draws differ between a kept buffer and fresh memory", differ);
    }

    /* penalties and logit bias: ranges named */
    struct moe_sampling pbad[] = { SPI(1, 1, 0, 0, .min_p = 1.5f), SPI(1, 1, 0, 0, .presence_penalty = 2.5f),
                                   SPI(1, 1, 0, 0, .frequency_penalty = -3), SPI(1, 1, 0, 0, .repetition_penalty = -1),
                                   SPI(1, 1, 0, 0, .repetition_penalty = 11), SPI(1, 1, 0, 0, .presence_penalty = NAN),
                                   SPI(1, 1, 0, 0, .n_logit_bias = 1, .logit_bias = { { 6, 1 } }),
                                   SPI(1, 1, 0, 0, .n_logit_bias = 1, .logit_bias = { { 2, 101 } }),
                                   SPI(1, 1, 0, 0, .n_logit_bias = 2, .logit_bias = { { 2, 1 }, { 2, 3 } }),
                                   SPI(1, 1, 0, 0, .n_logit_bias = MOE_MAX_LOGIT_BIAS + 1) };
    const char *pfield[] = { "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
                             "repetition_penalty", "presence_penalty", "vocabulary", "[-100, 100]", "twice",
                             "at most" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(pbad); i++) {
        CHECK(moe_sampling_validate(&pbad[i], 6) == MOE_EINVAL, "penalty case %zu accepted", i);
        CHECK(strstr(moe_last_error(), pfield[i]) != NULL, "penalty case %zu: '%s' does not say %s", i,
              moe_last_error(), pfield[i]);
    }
    /* repetition_penalty's range is [0, 10], 0 (gRPC's unset) off as 1 is: the message says so */
    CHECK(moe_sampling_validate(&pbad[3], 6) == MOE_EINVAL && strstr(moe_last_error(), "[0, 10]") &&
              strstr(moe_last_error(), "0 or 1 = off"),
          "repetition_penalty -1: '%s'", moe_last_error());
    struct moe_sampling rp_edges[] = { SPI(1, 1, 0, 0, .repetition_penalty = 0),
                                       SPI(1, 1, 0, 0, .repetition_penalty = 10) };
    for (size_t i = 0; i < MOE_ARRAY_LEN(rp_edges); i++)
        CHECK(moe_sampling_validate(&rp_edges[i], 6) == MOE_OK, "repetition_penalty %g refused: %s",
              (double)rp_edges[i].repetition_penalty, moe_last_error());
    struct moe_sampling pok = SPI(0, 1, 0, 0, .min_p = 1, .presence_penalty = -2, .frequency_penalty = 2,
                                .repetition_penalty = 10, .n_logit_bias = 1, .logit_bias = { { 5, -100 } });
    CHECK(moe_sampling_validate(&pok, 6) == MOE_OK, "limits refused: %s", moe_last_error());

    /* greedy with a bias: token 5 (2 + 1.5) overtakes 1 and 3 (3); -100 on 1 leaves 3 */
    moe_sampler_init(&s, &SP(0, 1, 0, 0, .n_logit_bias = 1, .logit_bias = { { 5, 1.5f } }));
    CHECK(moe_sampler_sample(&s, lg, 6, NULL, 0, 0) == 5, "logit_bias +1.5 on token 5 not taken");
    moe_sampler_init(&s, &SP(0, 1, 0, 0, .n_logit_bias = 1, .logit_bias = { { 1, -100 } }));
    CHECK(moe_sampler_sample(&s, lg, 6, NULL, 0, 0) == 3, "logit_bias -100 on token 1 not taken");
    CHECK(lg[5] == 2.0f && lg[1] == 3.0f, "the caller's logits changed");

    /* repetition 1.25, once per distinct token: 2 / 1.25 = 1.6 beats 1.55 (twice: 1.28 would not) */
    float lr2[3] = { 2.0f, 1.55f, -1.0f };
    int hist[6] = { 0, 0, 0, 2, 0, 0 };
    moe_sampler_init(&s, &SP(0, 1, 0, 0, .repetition_penalty = 1.25f));
    CHECK(moe_sampler_sample(&s, lr2, 3, hist, 3, 3) == 0, "repetition penalty applied more than once");
    float lr3[3] = { 2.0f, 1.65f, -1.0f };
    CHECK(moe_sampler_sample(&s, lr3, 3, hist, 3, 3) == 1, "repetition penalty of a prompt token missing");
    float ln[3] = { -1.0f, -1.1f, -5.0f }; /* a negative logit is multiplied: -1.25 < -1.1 */
    CHECK(moe_sampler_sample(&s, ln, 3, hist, 1, 1) == 1, "negative logit not multiplied");

    /* a repetition penalty that takes a finite logit beyond float's range: -FLT_MAX * 10 stays the one
     * token that can be drawn (as -inf, the banned token 0 was drawn in its place, greedy and seeded);
     * 0.75 and 0.9 FLT_MAX / 0.5 both pass FLT_MAX, and the larger, token 2, still wins (both +inf, the
     * lower id did) */
    {
        float le[4] = { -INFINITY, -FLT_MAX, -INFINITY, NAN };
        int he[1] = { 1 };
        for (int t = 0; t < 2; t++) {
            moe_sampler_init(&s, &SP(t, 1, 0, 3, .repetition_penalty = 10));
            int x = moe_sampler_sample(&s, le, 4, he, 1, 1);
            CHECK(x == 1, "temperature %d: repetition penalty 10 on -FLT_MAX: token %d, want 1 (the only one "
                  "drawable)", t, x);
        }
        float lo[4] = { 1.0f, 0.75f * FLT_MAX, 0.9f * FLT_MAX, 2.0f };
        int ho[3] = { 1, 2, 3 };
        for (int t = 0; t < 2; t++) {
            moe_sampler_init(&s, &SP(t, 1, 0, 3, .repetition_penalty = 0.5f));
            int x = moe_sampler_sample(&s, lo, 4, ho, 3, 3);
            CHECK(x == 2, "temperature %d: repetition penalty 0.5 past FLT_MAX: token %d, want 2 (1.8 FLT_MAX "
                  "over 1.5)", t, x);
        }
    }

    /* frequency 0.6 per generated time: one 0 in the output gives 2.4 > 2; two give 1.8 < 2; the
     * prompt's three 0s count for nothing.  Presence 0.6 subtracts once: 2.4 with two. */
    float lf[3] = { 3.0f, 2.0f, 1.0f };
    moe_sampler_init(&s, &SP(0, 1, 0, 0, .frequency_penalty = 0.6f));
    CHECK(moe_sampler_sample(&s, lf, 3, hist, 3, 3) == 0, "frequency penalty counted the prompt");
    CHECK(moe_sampler_sample(&s, lf, 3, hist, 3, 4) == 0, "frequency penalty: one output token, 2.4 > 2");
    CHECK(moe_sampler_sample(&s, lf, 3, hist, 3, 6) == 1, "frequency penalty: two output tokens, 1.8 < 2");
    moe_sampler_init(&s, &SP(0, 1, 0, 0, .presence_penalty = 0.6f));
    CHECK(moe_sampler_sample(&s, lf, 3, hist, 3, 6) == 0, "presence penalty subtracted more than once");
    moe_sampler_init(&s, &SP(0, 1, 0, 0, .presence_penalty = 1.1f));
    CHECK(moe_sampler_sample(&s, lf, 3, hist, 3, 5) == 1, "presence penalty missing");

    /* composed with the draw: the same seed on hand-penalised logits draws the same tokens */
    {
        float base[4] = { 0.5f, 1.0f, 0.2f, -0.3f };
        int h[5] = { 3, 1, 1, 0, 1 }; /* prompt 3 1; output 1 0 1 */
        struct moe_sampling pp = SPI(0.8f, 0.95f, 0, 11, .presence_penalty = 0.3f, .frequency_penalty = 0.2f,
                                   .repetition_penalty = 1.3f, .n_logit_bias = 1, .logit_bias = { { 2, 0.4f } });
        float w[4];
        memcpy(w, base, sizeof(w));
        w[2] += 0.4f;
        for (int t = 0; t < 4; t++) /* tokens 0, 1, 3 appear */
            if (t != 2) w[t] = w[t] > 0 ? w[t] / 1.3f : w[t] * 1.3f;
        w[1] -= 0.2f * 2;
        w[1] -= 0.3f;
        w[0] -= 0.2f;
        w[0] -= 0.3f;
        struct moe_sampling plain = SPI(0.8f, 0.95f, 0, 11);
        moe_sampler_init(&a, &pp);
        moe_sampler_init(&b, &plain);
        for (int i = 0; i < 500; i++) {
            int x = moe_sampler_sample(&a, base, 4, h, 2, 5), y = moe_sampler_sample(&b, w, 4, NULL, 0, 0);
            CHECK(x == y, "draw %d: penalised %d, by hand %d", i, x, y);
        }
    }

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

    /* an infinite largest logit: the log-softmax's limit, the probability shared by the tokens at it (as
     * the sampler draws them: the argmax), not NaN; so also when every logit is -inf */
    float li[5] = { 1.0f, INFINITY, NAN, INFINITY, 2.0f };
    moe_token_logprobs(li, 5, 1, 3, &lp);
    CHECK(fabsf(lp.logprob - (float)-log(2.0)) < 1e-6f, "+inf logit: logprob %g, want -log 2", lp.logprob);
    CHECK(lp.n == 3 && lp.ids[0] == 1 && lp.ids[1] == 3 && lp.ids[2] == 4 && lp.logprobs[0] == lp.logprob &&
              lp.logprobs[1] == lp.logprob && lp.logprobs[2] == -INFINITY,
          "+inf logits: top %d %d %d, %g %g %g", lp.ids[0], lp.ids[1], lp.ids[2], lp.logprobs[0], lp.logprobs[1],
          lp.logprobs[2]);
    moe_token_logprobs(li, 5, 0, 0, &lp);
    CHECK(lp.logprob == -INFINITY, "a finite logit beside +inf: logprob %g, want -inf", lp.logprob);
    moe_sampler_init(&s, &SP(1.0f, 1, 0, 5));
    CHECK(moe_sampler_sample(&s, li, 5, NULL, 0, 0) == 1, "the draw of +inf logits is not their argmax");
    float lninf[3] = { -INFINITY, NAN, -INFINITY };
    moe_token_logprobs(lninf, 3, 0, 1, &lp);
    CHECK(fabsf(lp.logprob - (float)-log(2.0)) < 1e-6f && lp.n == 1 && lp.ids[0] == 0 && lp.logprobs[0] == lp.logprob,
          "every logit -inf: logprob %g (top %d: %g), want -log 2", lp.logprob, lp.ids[0], lp.logprobs[0]);

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

    /* min_tokens' mask: its ids -inf (repeats and ids outside the vocabulary skipped), greedy then takes
     * the next best; left alone when only they could be drawn */
    float mb[6] = { 5.0f, 1.0f, 4.0f, NAN, -INFINITY, 2.0f };
    int ban[4] = { 0, 7, 0, -1 };
    CHECK(moe_logits_ban(mb, 6, ban, 4) && mb[0] == -INFINITY && mb[2] == 4.0f && mb[1] == 1.0f,
          "ban of 0: %g %g %g", mb[0], mb[1], mb[2]);
    CHECK(moe_argmax(mb, 6) == 2, "greedy after the ban picks %d, not the next best 2", moe_argmax(mb, 6));
    moe_sampler_init(&s, &SP(1.0f, 1, 0, 11));
    for (int i = 0; i < 200; i++) {
        int t = moe_sampler_sample(&s, mb, 6, NULL, 0, 0);
        if (t == 0 || t == 3 || t == 4) {
            CHECK(false, "draw %d picked banned or undrawable token %d", i, t);
            break;
        }
    }
    float only[4] = { -INFINITY, 3.0f, NAN, 1.0f };
    int both[3] = { 3, 1, 3 };
    CHECK(!moe_logits_ban(only, 4, both, 3) && only[1] == 3.0f && only[3] == 1.0f,
          "a ban that leaves nothing changed the logits: %g %g", only[1], only[3]);
    int one[1] = { 1 };
    CHECK(moe_logits_ban(only, 4, one, 1) && only[1] == -INFINITY && only[3] == 1.0f, "ban of 1 of 2: %g %g",
          only[1], only[3]);

    return t_result("test_engine_sampling");
}
