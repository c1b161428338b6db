/* The CPU backend's deterministic GEMM: values against a double-precision
 * naive loop (F32 and BF16 weights, with and without bias, odd sizes), and
 * bit-identity of every row whatever the number of rows in the call, the
 * row's place, the column range and the thread count; attention's scores
 * (cpu_attn_scores) bit for bit against cpu_dot, its weighted sum
 * (cpu_attn_wsum) against its scalar loop, for tiles of 1 to 5 rows, and its
 * exponentials (cpu_exp) against expf on a sample of every float (all of
 * them with MOEFLOW_TEST_EXP_ALL=1: about a minute); the other kernels built on
 * the exponential (SwiGLU's product, the sigmoid, strided exponentials) bit for
 * bit against their scalar code. */
#include "kernels/cpu/cpu_internal.h"
#include "kernels/vexp.h"
#include "tests/test_util.h"

#include <math.h>
#ifdef __GLIBC__
#include <gnu/libc-version.h>
#endif

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void)
{
    return (float)((t_xorshift(&rng) >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

static void naive(const float *x, const void *w, bool bf16, const float *b, int n, int in, int out,
                  double *y)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < out; j++) {
            double s = 0;
            for (int k = 0; k < in; k++) {
                float wv = bf16 ? moe_bf16_to_f32(((const uint16_t *)w)[(size_t)j * in + k])
                                : ((const float *)w)[(size_t)j * in + k];
                s += (double)x[(size_t)i * in + k] * wv;
            }
            y[(size_t)i * out + j] = s + (b ? b[j] : 0.0);
        }
}

static void check_values(enum cpu_isa isa, struct cpu_pool *pool, int n, int in, int out, bool bf16,
                         bool with_bias)
{
    float *x = malloc(sizeof(float) * n * in), *wf = malloc(sizeof(float) * out * in);
    uint16_t *wb = malloc(2u * out * in);
    float *b = malloc(sizeof(float) * out), *y = malloc(sizeof(float) * (n * out + 4));
    double *ref = malloc(sizeof(double) * n * out);
    for (int i = 0; i < n * in; i++) x[i] = frand();
    for (int i = 0; i < out * in; i++) {
        wf[i] = frand();
        wb[i] = moe_f32_to_bf16(wf[i]);
    }
    for (int i = 0; i < out; i++) b[i] = frand();
    for (int g = 0; g < 4; g++) y[n * out + g] = 12345.0f; /* guard */
    const void *w = bf16 ? (const void *)wb : (const void *)wf;
    cpu_gemm_nt(isa, pool, x, w, bf16 ? MOE_DT_BF16 : MOE_DT_F32, with_bias ? b : NULL, n, in, out, y);
    naive(x, w, bf16, with_bias ? b : NULL, n, in, out, ref);
    double maxerr = 0;
    for (int i = 0; i < n * out; i++) {
        double e = fabs(y[i] - ref[i]);
        if (e > maxerr) maxerr = e;
    }
    /* |x|,|w| <= 0.5: error bound ~ in * 2^-24 * 0.25, with margin */
    CHECK(maxerr < 1e-6 * in + 1e-6, "%s n=%d in=%d out=%d bf16=%d: max err %g", cpu_isa_name(isa),
          n, in, out, bf16, maxerr);
    for (int g = 0; g < 4; g++) CHECK(y[n * out + g] == 12345.0f, "guard overwritten n=%d in=%d out=%d", n, in, out);
    free(x), free(wf), free(wb), free(b), free(y), free(ref);
}

/* Row i of a call with n rows starting at row off equals the same row
 * computed alone (and with a different thread count). */
static void check_invariance(enum cpu_isa isa, struct cpu_pool *p1, struct cpu_pool *p2, int in,
                             int out, bool bf16)
{
    const int N = 70;
    float *x = malloc(sizeof(float) * N * in), *wf = malloc(sizeof(float) * out * in);
    uint16_t *wb = malloc(2u * out * in);
    float *b = malloc(sizeof(float) * out);
    float *alone = malloc(sizeof(float) * N * out), *y = malloc(sizeof(float) * N * out);
    for (int i = 0; i < N * in; i++) x[i] = frand();
    for (int i = 0; i < out * in; i++) {
        wf[i] = frand();
        wb[i] = moe_f32_to_bf16(wf[i]);
    }
    for (int i = 0; i < out; i++) b[i] = frand();
    const void *w = bf16 ? (const void *)wb : (const void *)wf;
    enum moe_dtype dt = bf16 ? MOE_DT_BF16 : MOE_DT_F32;
    for (int i = 0; i < N; i++)
        cpu_gemm_nt(isa, NULL, x + (size_t)i * in, w, dt, b, 1, in, out, alone + (size_t)i * out);
    int bad = 0;
    for (int n = 1; n <= N; n += (n < 12 ? 1 : 7))
        for (int off = 0; off + n <= N; off += (n > 20 ? 13 : 5)) {
            struct cpu_pool *p = (n + off) % 2 ? p1 : p2;
            cpu_gemm_nt(isa, p, x + (size_t)off * in, w, dt, b, n, in, out, y);
            if (memcmp(y, alone + (size_t)off * out, sizeof(float) * n * out)) bad++;
        }
    CHECK(bad == 0, "%s in=%d out=%d bf16=%d: %d calls not bit-identical to rows computed alone",
          cpu_isa_name(isa), in, out, bf16, bad);
    free(x), free(wf), free(wb), free(b), free(alone), free(y);
}

/* cpu_exp(x - m) against expf(x - m) bit for bit, for x of every bit pattern 0, step, 2 * step,
 * ... (blocks of 1001: a tail of 1) and some m (m = 0 for step 1: every float); on glibc 2.27 or later with AVX2 + FMA its eight-wide
 * path must be the one in use. */
static void check_exp(enum cpu_isa isa, uint64_t step)
{
    enum { B = 1001 };
    static const float ms[] = { 0.0f, 3.5f, -0x1.8p-3f };
    float x[B], y[B];
    uint64_t bad = 0, n = 0;
    for (uint64_t u = 0; u <= 0xffffffffu;) {
        int k = 0;
        for (; k < B && u <= 0xffffffffu; k++, u += step) {
            uint32_t b = (uint32_t)u;
            memcpy(&x[k], &b, 4);
        }
        float m = step == 1 ? 0.0f : ms[n % MOE_ARRAY_LEN(ms)];
        memcpy(y, x, sizeof(float) * (size_t)k);
        cpu_exp(isa, y, k, m);
        for (int i = 0; i < k; i++) {
            float e = expf(x[i] - m);
            if (memcmp(&e, &y[i], 4) && bad++ < 5) printf("expf(%a - %a): %a, cpu_exp: %a\n", x[i], m, e, y[i]);
        }
        n += (uint64_t)k;
    }
    bool vec = cpu_exp_vectorized(isa), want = false;
#ifdef __GLIBC__
    int major = 0, minor = 0;
    want = isa == CPU_ISA_AVX2 && sscanf(gnu_get_libc_version(), "%d.%d", &major, &minor) == 2 &&
           (major > 2 || (major == 2 && minor >= 27));
#endif
    printf("%s exp: %s, %llu inputs\n", cpu_isa_name(isa), vec ? "eight-wide" : "expf", (unsigned long long)n);
    CHECK(bad == 0, "%s: cpu_exp differs from expf on %llu of %llu inputs", cpu_isa_name(isa),
          (unsigned long long)bad, (unsigned long long)n);
    CHECK(vec || !want, "glibc %s with AVX2: cpu_exp calls expf (exact but slower): this expf is not the one its eight-wide path copies",
          want ? gnu_get_libc_version() : "");
}

/* a and b the same float: the same bits, or both NaN (whose payload an operation's
 * operand order may pick) */
static bool same_float(float a, float b)
{
    return !memcmp(&a, &b, sizeof(float)) || (isnan(a) && isnan(b));
}

/* The kernels built on the exponential, bit for bit against their scalar code with this
 * process's expf: cpu_silu_mul and cpu_sigmoid (in place too) and cpu_exp_strided (strides
 * 1, 2, 3: the bytes between its floats untouched), on random values, special ones
 * (zeros, infinities, NaN, |x| around 88 where the vector code calls expf, subnormals,
 * huge) and every length up to 40 (the tails). */
static void check_exp_ops(enum cpu_isa isa)
{
    enum { N = 1000 };
    static const float sp[] = { 0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 88.0f, -88.0f, 87.99f, -87.99f,
                                88.73f, -103.98f, -104.0f, 0x1p-149f, -0x1p-130f, 1e30f, -1e30f, 3e38f, -3e38f,
                                1e-8f, 15.9f, -15.9f };
    float *g = malloc(sizeof(float) * N), *u = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
    float *v = malloc(sizeof(float) * 3 * N), *v0 = malloc(sizeof(float) * 3 * N);
    REQUIRE(g && u && y && v && v0, "out of memory");
    for (int i = 0; i < N; i++) {
        g[i] = i < (int)MOE_ARRAY_LEN(sp) ? sp[i] : i % 5 ? 24.0f * frand() : 200.0f * frand();
        u[i] = i % 11 == 3 ? sp[(size_t)i % MOE_ARRAY_LEN(sp)] : 4.0f * frand();
    }
    int bad = 0;
    for (int n = 0; n <= N; n = n < 40 ? n + 1 : n < N ? N : N + 1) {
        cpu_silu_mul(isa, g, u, y, (size_t)n);
        for (int i = 0; i < n; i++) {
            float want = g[i] / (1.0f + expf(-g[i])) * u[i];
            if (!same_float(y[i], want) && bad++ < 5)
                printf("silu_mul(%a, %a) n=%d: %a, want %a\n", g[i], u[i], n, y[i], want);
        }
        cpu_sigmoid(isa, g, y, n);
        for (int i = 0; i < n; i++) {
            float want = 1.0f / (1.0f + expf(-g[i]));
            if (!same_float(y[i], want) && bad++ < 5) printf("sigmoid(%a) n=%d: %a, want %a\n", g[i], n, y[i], want);
        }
    }
    memcpy(y, g, sizeof(float) * N); /* in place, as the expert op calls it */
    cpu_silu_mul(isa, y, u, y, N);
    for (int i = 0; i < N; i++) bad += !same_float(y[i], g[i] / (1.0f + expf(-g[i])) * u[i]);
    memcpy(y, g, sizeof(float) * N);
    cpu_sigmoid(isa, y, y, N);
    for (int i = 0; i < N; i++) bad += !same_float(y[i], 1.0f / (1.0f + expf(-g[i])));
    CHECK(bad == 0, "%s: silu_mul or sigmoid differs from its scalar code on %d values", cpu_isa_name(isa), bad);
    bad = 0;
    for (int stride = 1; stride <= 3; stride++)
        for (int n = 0; n <= N; n = n < 40 ? n + 1 : n < N ? N : N + 1) {
            for (int i = 0; i < 3 * N; i++) {
                uint32_t b = (uint32_t)(t_xorshift(&rng) >> 32); /* any bits between the floats, NaNs too */
                memcpy(&v0[i], &b, 4);
            }
            for (int i = 0; i < n; i++) v0[(size_t)i * stride] = g[i];
            memcpy(v, v0, sizeof(float) * 3 * N);
            float m = n & 1 ? 2.5f : 0.0f;
            cpu_exp_strided(isa, v, n, stride, m);
            for (int i = 0; i < 3 * N; i++) {
                bool is_v = i % stride == 0 && i / stride < n;
                float want = is_v ? expf(v0[i] - m) : v0[i];
                if (is_v ? !same_float(v[i], want) : memcmp(&v[i], &v0[i], 4) != 0) {
                    if (bad++ < 5) printf("exp_strided stride %d n %d: element %d: %a, want %a\n", stride, n, i, v[i], want);
                }
            }
        }
    CHECK(bad == 0, "%s: cpu_exp_strided differs from expf (or touched the bytes between) on %d values",
          cpu_isa_name(isa), bad);
    if (isa == cpu_isa_detect()) { /* the sampler's entry, on this CPU's ISA */
        memcpy(v, v0, sizeof(float) * 3 * N);
        cpu_exp_strided(isa, v0, N, 2, 1.0f);
        moe_vexp_sub(v, N, 2, 1.0f);
        CHECK(!memcmp(v, v0, sizeof(float) * 3 * N), "moe_vexp_sub differs from cpu_exp_strided");
    }
    free(g), free(u), free(y), free(v), free(v0);
}

int main(void)
{
    struct cpu_pool *p1 = cpu_pool_create(1), *p3 = cpu_pool_create(3);
    REQUIRE(p1 && p3, "pool: %s", moe_last_error());
    enum cpu_isa isas[2] = { CPU_ISA_PORTABLE, cpu_isa_detect() };
    int nisa = isas[1] == CPU_ISA_PORTABLE ? 1 : 2;
    printf("isa: %s\n", cpu_isa_name(isas[nisa - 1]));
    static const int shapes[][3] = { { 1, 1, 1 },   { 1, 7, 3 },    { 2, 8, 4 },    { 3, 9, 5 },
                                     { 5, 17, 13 }, { 7, 64, 320 }, { 4, 192, 96 }, { 33, 96, 192 },
                                     { 64, 48, 33 }, { 9, 200, 1 }, { 40, 100, 520 } };
    for (int s = 0; s < nisa; s++)
        for (size_t i = 0; i < MOE_ARRAY_LEN(shapes); i++)
            for (int bf = 0; bf < 2; bf++)
                for (int bias = 0; bias < 2; bias++)
                    check_values(isas[s], (i & 1) ? p3 : p1, shapes[i][0], shapes[i][1],
                                 shapes[i][2], bf, bias);
    for (int s = 0; s < nisa; s++) {
        check_invariance(isas[s], p1, p3, 192, 96, false);
        check_invariance(isas[s], p1, p3, 96, 192, false);
        check_invariance(isas[s], p1, p3, 61, 523, false);
        check_invariance(isas[s], p1, p3, 64, 320, true);
        check_invariance(isas[s], p1, p3, 4096, 9, true); /* the widest panel widened to F32 */
        check_invariance(isas[s], p1, p3, 4100, 9, true); /* wider: read as BF16 */
    }
    /* cpu_attn_wsum: the multiply-then-add loop and the sum of the weights, bit for bit on every ISA,
     * for 1 to 5 rows of different key counts (lengths with a partial block of columns, several
     * blocks and a tail, one under 8) */
    static const int lens[] = { 5, 45, 72, 131 };
    for (size_t li = 0; li < MOE_ARRAY_LEN(lens); li++)
        for (int no = 1; no <= 5; no++) {
            enum { N = 37, LD = 140, MAXLEN = 131, R = 5 };
            int len = lens[li], n[R];
            float p[R * N], v[N * LD], o[2][R][MAXLEN + 1], l[2][R], ref[R][MAXLEN], lref[R];
            float *op[R];
            for (int i = 0; i < R * N; i++) p[i] = frand();
            for (int i = 0; i < N * LD; i++) v[i] = frand();
            for (int r = 0; r < R; r++) {
                n[r] = N - (r * 7) % 11; /* pairs of unequal lengths */
                lref[r] = frand();
                for (int d = 0; d < len; d++) ref[r][d] = frand();
            }
            for (int s = 0; s < nisa; s++) {
                for (int r = 0; r < no; r++) {
                    memcpy(o[s][r], ref[r], sizeof(float) * (size_t)len);
                    o[s][r][len] = 12345.0f;
                    l[s][r] = lref[r];
                    op[r] = o[s][r];
                }
                cpu_attn_wsum(isas[s], op, l[s], p, N, n, no, v, false, LD, len);
                for (int r = 0; r < no; r++) CHECK(o[s][r][len] == 12345.0f, "attn_wsum wrote past len %d", len);
            }
            for (int r = 0; r < no; r++)
                for (int i = 0; i < n[r]; i++) {
                    lref[r] = lref[r] + p[r * N + i];
                    for (int d = 0; d < len; d++) {
                        volatile float t = p[r * N + i] * v[i * LD + d];
                        ref[r][d] = ref[r][d] + t;
                    }
                }
            for (int s = 0; s < nisa; s++)
                for (int r = 0; r < no; r++)
                    CHECK(!memcmp(o[s][r], ref[r], sizeof(float) * (size_t)len) && !memcmp(&l[s][r], &lref[r], 4),
                          "%s attn_wsum (len %d, row %d of %d) differs from the scalar loop", cpu_isa_name(isas[s]),
                          len, r, no);
        }
    /* cpu_attn_scores: cpu_dot of every query and key, for 1 to 5 queries (pairs and a last one)
     * and 37 keys (blocks of 4 and 8, single keys) of 45 and 48 columns */
    for (int s = 0; s < nisa; s++)
        for (int w = 45; w <= 48; w += 3)
            for (int nq = 1; nq <= 5; nq++) {
                enum { NK = 37, LDK = 50 };
                float qs[5][48], k[NK * LDK], sc[5 * 40];
                const float *qp[5];
                for (int r = 0; r < nq; r++) {
                    for (int d = 0; d < w; d++) qs[r][d] = frand();
                    qp[r] = qs[r];
                }
                for (int i = 0; i < NK * LDK; i++) k[i] = frand();
                cpu_attn_scores(isas[s], qp, nq, k, false, LDK, NK, w, sc, 40);
                int bad = 0;
                for (int r = 0; r < nq; r++)
                    for (int i = 0; i < NK; i++) {
                        float want = cpu_dot(isas[s], qs[r], k + i * LDK, w);
                        bad += memcmp(&want, &sc[r * 40 + i], 4) != 0;
                    }
                CHECK(bad == 0, "%s attn_scores (%d queries, %d columns): %d scores differ from cpu_dot",
                      cpu_isa_name(isas[s]), nq, w, bad);
            }
    /* cpu_dot is one element of the GEMM */
    for (int s = 0; s < nisa; s++) {
        float a[45], bb[45], y;
        for (int i = 0; i < 45; i++) a[i] = frand(), bb[i] = frand();
        cpu_gemm_nt(isas[s], NULL, a, bb, MOE_DT_F32, NULL, 1, 45, 1, &y);
        float d = cpu_dot(isas[s], a, bb, 45);
        CHECK(memcmp(&d, &y, sizeof(float)) == 0, "cpu_dot %g != gemm %g", d, y);
    }
    /* BF16 rows (a BF16 KV cache): attn_scores and attn_wsum give the bits of F32 rows holding the
     * same values, on every ISA (3 queries: a pair and one; 12 keys; 45 columns: blocks and a tail) */
    for (int s = 0; s < nisa; s++) {
        enum { NR = 12, W = 45, LDR = 48 };
        float q[3][W], vf[NR * LDR], pr[2 * NR], d32[3 * NR], d16[3 * NR], o32[2][W], o16[2][W], l32[2] = { 0 },
              l16[2] = { 0 };
        const float *qp[3] = { q[0], q[1], q[2] };
        float *op32[2] = { o32[0], o32[1] }, *op16[2] = { o16[0], o16[1] };
        int nn[2] = { NR, NR - 3 };
        uint16_t vb[NR * LDR];
        for (int i = 0; i < W; i++) q[0][i] = frand(), q[1][i] = frand(), q[2][i] = frand();
        for (int i = 0; i < W; i++) o32[0][i] = o16[0][i] = frand(), o32[1][i] = o16[1][i] = frand();
        for (int i = 0; i < 2 * NR; i++) pr[i] = frand();
        for (int i = 0; i < NR * LDR; i++) vb[i] = moe_f32_to_bf16(frand()), vf[i] = moe_bf16_to_f32(vb[i]);
        cpu_attn_scores(isas[s], qp, 3, vf, false, LDR, NR, W, d32, NR);
        cpu_attn_scores(isas[s], qp, 3, vb, true, LDR, NR, W, d16, NR);
        cpu_attn_wsum(isas[s], op32, l32, pr, NR, nn, 2, vf, false, LDR, W);
        cpu_attn_wsum(isas[s], op16, l16, pr, NR, nn, 2, vb, true, LDR, W);
        CHECK(!memcmp(d32, d16, sizeof(d32)) && !memcmp(o32, o16, sizeof(o32)) && !memcmp(l32, l16, sizeof(l32)),
              "%s: BF16 rows differ from F32 rows of the same values", cpu_isa_name(isas[s]));
    }
    const char *all = getenv("MOEFLOW_TEST_EXP_ALL");
    for (int s = 0; s < nisa; s++) check_exp(isas[s], s == 1 && all && !strcmp(all, "1") ? 1 : 251);
    for (int s = 0; s < nisa; s++) check_exp_ops(isas[s]);
    cpu_pool_destroy(p1);
    cpu_pool_destroy(p3);
    return t_result("test_kernels_gemm");
}
