/* The sampler's cost per token: moe_sampler_sample over random logits of a
 * small (8192, the bundled model's) and a large (151936, Qwen's) vocabulary,
 * greedy, temperature alone, with top_k 40, top_p 0.9 and top_p 0.9 with
 * min_p 0.05.  Prints one JSON line per case.
 *
 * usage: sample_bench [--reps N] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/moe.h"
#include "engine/sampling.h"

int main(int argc, char **argv)
{
    int reps = 200;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: sample_bench [--reps N]\n");
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    static const int vocabs[] = { 8192, 151936 };
    static const struct {
        const char *name;
        float t, top_p, min_p;
        int top_k;
    } cases[] = {
        { "greedy", 0, 1, 0, 0 }, { "temperature", 1, 1, 0, 0 }, { "top_k_40", 1, 1, 0, 40 },
        { "top_p_0.9", 1, 0.9f, 0, 0 }, { "top_p_0.9_min_p_0.05", 1, 0.9f, 0.05f, 0 },
    };
    for (size_t v = 0; v < MOE_ARRAY_LEN(vocabs); v++) {
        int V = vocabs[v];
        float *logits = malloc(sizeof(float) * (size_t)V);
        if (!logits) return 1;
        uint64_t x = 88172645463325252ull; /* logits as a model's: roughly normal, scale 3 */
        for (int i = 0; i < V; i++) {
            double u = 0;
            for (int k = 0; k < 4; k++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                u += (double)(x >> 11) / 9007199254740992.0;
            }
            logits[i] = (float)(3.0 * (u - 2.0) * 1.7);
        }
        for (size_t c = 0; c < MOE_ARRAY_LEN(cases); c++) {
            struct moe_sampling p = { .temperature = cases[c].t, .top_p = cases[c].top_p, .top_k = cases[c].top_k,
                                      .min_p = cases[c].min_p, .seed = 1 };
            struct moe_sampler s;
            moe_sampler_init(&s, &p);
            struct moe_sample_buf buf = { 0 }; /* as the scheduler's threads keep one */
            long sum = 0;
            double t0 = moe_now();
            for (int r = 0; r < reps; r++) sum += moe_sampler_sample_buf(&s, &buf, logits, V, NULL, 0, 0);
            double dt = moe_now() - t0;
            moe_sample_buf_free(&buf);
            printf("{\"bench\":\"sample\",\"vocab\":%d,\"case\":\"%s\",\"reps\":%d,\"us_per_token\":%.1f,"
                   "\"checksum\":%ld}\n", V, cases[c].name, reps, 1e6 * dt / reps, sum);
        }
        free(logits);
    }
    return 0;
}
