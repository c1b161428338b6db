/* Sampling: parameter validation names the field; greedy picks the lowest id
 * among ties and skips NaN; a seed reproduces its draws; top-k = 1 and a tiny
 * top-p reduce to greedy; top-k/top-p never pick outside their set; at
 * temperature 1 the frequencies follow the softmax. */
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
    return t_result("test_engine_sampling");
}
