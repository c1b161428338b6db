/* What an FP8 expert costs where it is computed on the CPU backend: moe_fp8_record_decode turns an
 * FP8 record (model.h) into its BF16 values, once per device-tier fill.  Times one matrix of
 * DeepSeek-V3's expert shape (2048 x 7168, blocks of 128 x 128) over random codes and factors and
 * prints one JSON line: milliseconds per matrix, GB/s of BF16 written and of record read.
 *
 * usage: fp8_decode_bench [--reps N] [--rows R --cols C] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/moe.h"
#include "model/model.h"

int main(int argc, char **argv)
{
    int reps = 10, rows = 2048, cols = 7168, br = 128, bc = 128;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cols") && i + 1 < argc) cols = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: fp8_decode_bench [--reps N] [--rows R --cols C]\n");
            return 2;
        }
    }
    if (reps < 1 || rows < 1 || cols < 1) {
        fprintf(stderr, "fp8_decode_bench: --reps, --rows and --cols must be positive\n");
        return 2;
    }
    size_t n = (size_t)rows * (size_t)cols, bytes = (size_t)moe_fp8_record_bytes(rows, cols, br, bc);
    uint8_t *rec = malloc(bytes);
    uint16_t *out = malloc(n * 2);
    if (!rec || !out) {
        fprintf(stderr, "fp8_decode_bench: out of memory\n");
        return 1;
    }
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        rec[i] = (uint8_t)((x & 0x7f) == 0x7f ? x ^ 1 : x); /* no NaN codes */
    }
    for (size_t i = n; i + 4 <= bytes; i += 4) {
        float f = 1e-3f * (float)(1 + (i / 4) % 997);
        memcpy(rec + i, &f, 4);
    }
    moe_fp8_record_decode(rec, rows, cols, br, bc, out, NULL); /* touch the output once */
    double t0 = moe_now();
    for (int r = 0; r < reps; r++) moe_fp8_record_decode(rec, rows, cols, br, bc, out, NULL);
    double t = (moe_now() - t0) / reps;
    printf("{\"bench\":\"fp8_decode\",\"rows\":%d,\"cols\":%d,\"block\":[%d,%d],\"reps\":%d,\"ms\":%.2f,"
           "\"bf16_gbs\":%.2f,\"record_gbs\":%.2f}\n", rows, cols, br, bc, reps, t * 1e3, (double)n * 2 / t / 1e9,
           (double)bytes / t / 1e9);
    free(rec);
    free(out);
    return 0;
}
