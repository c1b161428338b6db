/* FP8 records (model.h): moe_fp8_record_decode against a reference written here from the format
 * (float8_e4m3fn code value x block factor in F32, rounded to nearest even BF16, NaN kept quiet,
 * fp8.h's rule where the product is NaN), bit for bit, for every code in every position of a row
 * (so each 16-code step sees each), over factors of either sign from tiny to huge (the vector
 * path's range and both sides of its limits, subnormal, zero, infinite and NaN factors), blocks
 * that do not divide the matrix, and rows with NaN codes; moe_fp8_record_bytes; the F32 output is
 * the BF16 values widened.  fp8.h itself, the rule the CUDA decode shares: its F32 bits for all 256
 * codes under zero, infinite, NaN (quiet, signalling, with payloads, either sign) and finite factors. */
#include "common/moe.h"
#include "model/fp8.h"
#include "model/model.h"
#include "tests/test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float e4m3(uint8_t b)
{
    int e = (b >> 3) & 15, m = b & 7;
    float v = e == 15 && m == 7 ? NAN : e ? (float)(8 + m) * powf(2.0f, (float)(e - 10)) : (float)m * powf(2.0f, -9.0f);
    return b & 0x80 ? -v : v;
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* The F32 bits of code b times factor f: the product's where it is a number; where it is NaN
 * fp8.h's rule (the machine's multiply leaves those bits to the machine): the NaN code's own NaN,
 * else the NaN factor quieted, else (zero code, infinite factor) 0xffc00000. */
static uint32_t times_bits(uint8_t b, float f)
{
    uint32_t fu = bits(f);
    if ((b & 0x7f) == 0x7f) return b & 0x80 ? 0xffc00000u : 0x7fc00000u;
    if ((fu & 0x7fffffffu) > 0x7f800000u) return fu | 0x00400000u;
    if ((b & 0x7f) == 0 && (fu & 0x7fffffffu) == 0x7f800000u) return 0xffc00000u;
    return bits(e4m3(b) * f);
}

static uint16_t bf16_rne(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    uint32_t lsb = (u >> 16) & 1u;
    return (uint16_t)((u + 0x7fffu + lsb) >> 16);
}

static int check(int rows, int cols, int br, int bc, const float *factors, int nf_given, uint32_t seed, bool nans)
{
    size_t n = (size_t)rows * cols, bytes = (size_t)moe_fp8_record_bytes(rows, cols, br, bc);
    int sr = (rows + br - 1) / br, sc = (cols + bc - 1) / bc;
    CHECK(bytes == n + 4 * (size_t)sr * (size_t)sc, "record bytes %zu for %d x %d blocks %d x %d", bytes, rows, cols,
          br, bc);
    uint8_t *rec = malloc(bytes);
    uint16_t *got = malloc(n * 2);
    float *gotf = malloc(n * 4);
    REQUIRE(rec && got && gotf, "out of memory");
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        uint8_t b = (uint8_t)(i + (seed >> 24)); /* every code, shifted per row */
        rec[i] = nans || (b & 0x7f) != 0x7f ? b : (uint8_t)(b ^ 1);
    }
    for (int i = 0; i < sr * sc; i++) memcpy(rec + n + 4 * (size_t)i, &factors[i % nf_given], 4);
    moe_fp8_record_decode(rec, rows, cols, br, bc, got, NULL);
    moe_fp8_record_decode(rec, rows, cols, br, bc, NULL, gotf);
    int bad = 0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            float f;
            memcpy(&f, rec + n + 4 * ((size_t)(r / br) * sc + (size_t)(c / bc)), 4);
            uint32_t wb = times_bits(rec[i], f);
            float w;
            memcpy(&w, &wb, 4);
            uint16_t want = bf16_rne(w);
            uint32_t wf = (uint32_t)got[i] << 16, gf;
            memcpy(&gf, &gotf[i], 4);
            if (got[i] != want || gf != wf) {
                if (bad < 5)
                    fprintf(stderr, "  %dx%d r%d c%d code 0x%02x factor %a: 0x%04x, want 0x%04x\n", rows, cols, r, c,
                            rec[i], (double)f, got[i], want);
                bad++;
            }
        }
    free(rec);
    free(got);
    free(gotf);
    return bad;
}

/* fp8.h's value of every code and its product with each factor, against the reference above. */
static int check_rule(void)
{
    static const uint32_t factors[] = {
        0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, /* +-0, +-inf */
        0x7fc00000u, 0xffc00000u, 0x7fe12345u, 0xffc00001u, /* quiet NaNs, with payloads */
        0x7f800001u, 0xffa12345u,                           /* signalling NaNs */
        0x3f800000u, 0xbf800000u, 0x00000001u, 0x807fffffu, /* +-1, subnormals */
        0x7f7fffffu, 0xff7fffffu, 0x0d800000u, 0x71800000u, /* +-FLT_MAX, 2^-100, 2^100 */
    };
    int bad = 0;
    for (int b = 0; b < 256; b++) {
        uint32_t v = bits(moe_fp8_e4m3_value((unsigned)b)), wv = bits(e4m3((uint8_t)b));
        if (v != wv) {
            if (bad++ < 5) fprintf(stderr, "  code 0x%02x: value 0x%08x, want 0x%08x\n", b, v, wv);
            continue;
        }
        for (size_t i = 0; i < MOE_ARRAY_LEN(factors); i++) {
            float f;
            memcpy(&f, &factors[i], 4);
            uint32_t got = bits(moe_fp8_scaled(moe_fp8_e4m3_value((unsigned)b), f)), want = times_bits((uint8_t)b, f);
            if (got != want && bad++ < 5)
                fprintf(stderr, "  code 0x%02x x factor 0x%08x: 0x%08x, want 0x%08x\n", b, factors[i], got, want);
        }
    }
    return bad;
}

int main(void)
{
    CHECK(check_rule() == 0, "fp8.h: code values or their products with special factors");
    const float factors[] = { 1.0f, -1.0f, 0.00390625f, 3.0517578e-05f, 1.7f, -0.3141f, 123.456f, 0x1p-100f,
                              -0x1p-100f, 0x1p100f, 0x1.fffffep-101f, 0x1.000002p100f, 0x1p-120f, 0x1p-140f, 0.0f,
                              -0.0f, 0x1p120f, INFINITY, -INFINITY, NAN, 7.1e-4f, 2.2e-3f };
    int nf = (int)MOE_ARRAY_LEN(factors);
    CHECK(check(nf, 512, 1, 512, factors, nf, 1, false) == 0, "one factor per row, no NaN codes");
    CHECK(check(nf, 512, 1, 512, factors, nf, 2, true) == 0, "one factor per row, NaN codes");
    CHECK(check(37, 53, 8, 16, factors, nf, 3, false) == 0, "blocks that do not divide the matrix");
    CHECK(check(130, 300, 128, 128, factors + 2, 5, 4, true) == 0, "DeepSeek's blocks, a ragged edge");
    CHECK(check(16, 64, 16, 32, factors, 2, 5, false) == 0, "the fixture's blocks");
    float many[257];
    for (int i = 0; i < 257; i++) many[i] = ldexpf(1.0f + (float)i / 257.0f, i % 60 - 30) * (i % 3 ? 1.0f : -1.0f);
    CHECK(check(64, 1024, 4, 16, many, 257, 6, false) == 0, "257 factors over 2^-30 .. 2^30");
    return t_result("test_model_fp8");
}
