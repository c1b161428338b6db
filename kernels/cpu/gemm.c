/* Deterministic GEMM y = x @ W^T for the CPU backend.
 *
 * Why not cblas_sgemm: OpenBLAS picks different micro-kernels for row
 * remainders and splits work by thread count, so a row's result changes with
 * the number of rows in the call.  That would make a token's logits depend on
 * the batch it ran in.  Here every output element is produced by one fixed
 * instruction sequence (see cpu_internal.h), whatever the blocking. */
#include "cpu_internal.h"
#include "../vexp.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define MOE_HAVE_X86 1
#include <immintrin.h>
#endif

enum cpu_isa cpu_isa_detect(void)
{
#ifdef MOE_HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CPU_ISA_AVX2;
#endif
    return CPU_ISA_PORTABLE;
}

const char *cpu_isa_name(enum cpu_isa isa)
{
    return isa == CPU_ISA_AVX2 ? "avx2+fma" : "portable";
}

static inline float w_at(const void *w, bool bf16, size_t i)
{
    return bf16 ? moe_bf16_to_f32(((const uint16_t *)w)[i]) : ((const float *)w)[i];
}

/* The scalar definitions of the exponential kernels (cpu_internal.h). */
static inline float silu_mul1(float g, float u)
{
    return g / (1.0f + expf(-g)) * u;
}

static inline float sigmoid1(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

/* ---- portable path --------------------------------------------------------- */

static float dot_portable(const float *x, const void *w, bool bf16, int len)
{
    float l[8] = { 0 };
    int k8 = len & ~7;
    for (int k = 0; k < k8; k += 8)
        for (int j = 0; j < 8; j++) l[j] += x[k + j] * w_at(w, bf16, (size_t)k + (size_t)j);
    if (k8 < len) {
        float xt[8] = { 0 }, wt[8] = { 0 };
        for (int j = 0; k8 + j < len; j++) {
            xt[j] = x[k8 + j];
            wt[j] = w_at(w, bf16, (size_t)k8 + (size_t)j);
        }
        for (int j = 0; j < 8; j++) l[j] += xt[j] * wt[j];
    }
    float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
    return (a0 + a2) + (a1 + a3);
}

static void gemm_portable(const float *x, const void *w, bool bf16, const float *bias, int n,
                          int in, int out, float *y, int j0, int j1)
{
    size_t es = bf16 ? 2 : 4;
    for (int i = 0; i < n; i++)
        for (int j = j0; j < j1; j++) {
            const void *wj = (const char *)w + (size_t)j * (size_t)in * es;
            float s = dot_portable(x + (size_t)i * in, wj, bf16, in);
            y[(size_t)i * out + j] = bias ? s + bias[j] : s;
        }
}

/* cpu_attn_wsum of one row without SIMD, keys i0..i1-1, columns d0..len-1 (and
 * l when l is not NULL): a multiply, then an add (separate statements, compiled
 * without contraction: never fused). */
static void wsum_row_portable(float *o, float *l, const float *p, const void *v, bool bf16, size_t ldv, int i0,
                              int i1, int d0, int len)
{
    for (int i = i0; i < i1; i++) {
        for (int d = d0; d < len; d++) {
            float t = p[i] * w_at(v, bf16, (size_t)i * ldv + (size_t)d);
            o[d] = o[d] + t;
        }
        if (l) *l = *l + p[i];
    }
}

/* ---- AVX2 + FMA path ------------------------------------------------------- */
#ifdef MOE_HAVE_X86
#define AVX2_FN __attribute__((target("avx2,fma")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

AVX2_INLINE __m256 load_w8(const void *w, bool bf16, size_t i)
{
    if (bf16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float *)w + i);
}

AVX2_INLINE float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); /* l0+l4 .. l3+l7 */
    __m128 t = _mm_movehl_ps(s, s);                                                 /* l2+l6, l3+l7 */
    s = _mm_add_ps(s, t);                         /* (l0+l4)+(l2+l6), (l1+l5)+(l3+l7) */
    t = _mm_shuffle_ps(s, s, 1);
    return _mm_cvtss_f32(_mm_add_ss(s, t));
}

/* MR x NR block of y (MR <= 3, NR <= 4): the same FMA chain for every element. */
AVX2_INLINE void block_avx2(int MR, int NR, bool bf16, const float *x, int in, const void *w,
                            const float *bias, float *y, int out)
{
    __m256 acc[3][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = _mm256_setzero_ps();
    int k8 = in & ~7;
    for (int k = 0; k < k8; k += 8) {
        __m256 xv[3];
        for (int i = 0; i < MR; i++) xv[i] = _mm256_loadu_ps(x + (size_t)i * in + k);
        for (int j = 0; j < NR; j++) {
            __m256 wv = load_w8(w, bf16, (size_t)j * in + (size_t)k);
            for (int i = 0; i < MR; i++) acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
        }
    }
    if (k8 < in) {
        float xt[3][8], wt[4][8];
        memset(xt, 0, sizeof(xt));
        memset(wt, 0, sizeof(wt));
        for (int t = 0; k8 + t < in; t++) {
            for (int i = 0; i < MR; i++) xt[i][t] = x[(size_t)i * in + k8 + t];
            for (int j = 0; j < NR; j++) wt[j][t] = w_at(w, bf16, (size_t)j * in + (size_t)(k8 + t));
        }
        for (int j = 0; j < NR; j++) {
            __m256 wv = _mm256_loadu_ps(wt[j]);
            for (int i = 0; i < MR; i++)
                acc[i][j] = _mm256_fmadd_ps(_mm256_loadu_ps(xt[i]), wv, acc[i][j]);
        }
    }
    if (NR == 4) { /* hsum8 of four accumulators at once, same additions in the same order */
        for (int i = 0; i < MR; i++) {
            __m256 w0 = _mm256_add_ps(_mm256_permute2f128_ps(acc[i][0], acc[i][1], 0x20),
                                      _mm256_permute2f128_ps(acc[i][0], acc[i][1], 0x31));
            __m256 w1 = _mm256_add_ps(_mm256_permute2f128_ps(acc[i][2], acc[i][3], 0x20),
                                      _mm256_permute2f128_ps(acc[i][2], acc[i][3], 0x31));
            __m256 z = _mm256_add_ps(_mm256_shuffle_ps(w0, w1, _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm256_shuffle_ps(w0, w1, _MM_SHUFFLE(3, 2, 3, 2)));
            __m256 h = _mm256_hadd_ps(z, z); /* lanes: a0 a2 a0 a2 | a1 a3 a1 a3 */
            __m128 r = _mm_unpacklo_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            if (bias) r = _mm_add_ps(r, _mm_loadu_ps(bias));
            _mm_storeu_ps(y + (size_t)i * out, r);
        }
        return;
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) {
            float s = hsum8(acc[i][j]);
            y[(size_t)i * out + j] = bias ? s + bias[j] : s;
        }
}

#define BLOCK_CASES(BF)                                                                  \
    static AVX2_FN void block_##BF(int mr, int nr, const float *x, int in, const void *w, \
                                   const float *bias, float *y, int out)                 \
    {                                                                                    \
        switch (mr * 8 + nr) {                                                           \
        case 3 * 8 + 4: block_avx2(3, 4, BF, x, in, w, bias, y, out); break;             \
        case 2 * 8 + 4: block_avx2(2, 4, BF, x, in, w, bias, y, out); break;             \
        case 1 * 8 + 4: block_avx2(1, 4, BF, x, in, w, bias, y, out); break;             \
        case 3 * 8 + 1: block_avx2(3, 1, BF, x, in, w, bias, y, out); break;             \
        case 2 * 8 + 1: block_avx2(2, 1, BF, x, in, w, bias, y, out); break;             \
        default: block_avx2(1, 1, BF, x, in, w, bias, y, out); break;                    \
        }                                                                                \
    }
BLOCK_CASES(false)
BLOCK_CASES(true)

/* The reduction of hsum8 for eight accumulators at once: r[j] = hsum8(a[j]),
 * each with the same additions in the same order (IEEE addition commutes). */
AVX2_INLINE __m256 hsum8x8(const __m256 a[8])
{
    __m256 w[4];
    for (int p = 0; p < 4; p++) /* [lo+hi of a[2p], lo+hi of a[2p+1]]: l0+l4 .. l3+l7 */
        w[p] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * p], a[2 * p + 1], 0x20),
                             _mm256_permute2f128_ps(a[2 * p], a[2 * p + 1], 0x31));
    __m256 z[2];
    for (int p = 0; p < 2; p++) /* per 128-bit lane: (s0+s2), (s1+s3) of two accumulators */
        z[p] = _mm256_add_ps(_mm256_shuffle_ps(w[2 * p], w[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(w[2 * p], w[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 h = _mm256_hadd_ps(z[0], z[1]); /* lanes: a0 a2 a4 a6 | a1 a3 a5 a7 */
    return _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* The zero-padded tail of row8_avx2's rows, k8..in-1, as F32 in xt[8] and wt[8][8]
 * (out of line: its buffers stay out of the kernel's way). */
static AVX2_FN __attribute__((noinline)) void row8_tail(bool bf16, const float *x, int in, const void *w, size_t ldw,
                                                     float xt[8], float wt[8][8])
{
    int k8 = in & ~7;
    memset(xt, 0, 8 * sizeof(float));
    memset(wt, 0, 64 * sizeof(float));
    for (int t = 0; k8 + t < in; t++) {
        xt[t] = x[k8 + t];
        for (int j = 0; j < 8; j++) wt[j][t] = w_at(w, bf16, (size_t)j * ldw + (size_t)(k8 + t));
    }
}

/* Eight outputs of one row: y[j] = x . w[j * ldw ..] (+ bias[j]), j = 0..7, each
 * with exactly the chain of block_avx2 (one accumulator per output, k in steps of
 * 8, zero-padded tail, hsum8), but eight independent chains in flight.  The rows of
 * the panel after next (j + 16 .. j + 23) are prefetched into L2, one line per row
 * per 64 bytes: a decode step reads each weight once, from L3 or memory, and
 * prefetching into L1 (T0) left the loop waiting longer. */
AVX2_INLINE void row8_avx2(bool bf16, const float *x, int in, const void *w, size_t ldw,
                           const float *bias, float *y)
{
    __m256 acc[8];
    for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
    int k8 = in & ~7;
    size_t es = bf16 ? 2 : 4;
    /* the panel after next (for the last panels, past the weights): its address is
     * computed as an integer (pointer arithmetic past an array is undefined in C) and a
     * prefetch never faults */
    uintptr_t pf = (uintptr_t)w + 16 * ldw * es;
    for (int k = 0; k < k8; k += 8) {
        __m256 xv = _mm256_loadu_ps(x + k);
        if (!(k & (bf16 ? 31 : 15)))
            for (int j = 0; j < 8; j++)
                _mm_prefetch((const char *)(pf + ((size_t)j * ldw + (size_t)k) * es), _MM_HINT_T1);
        for (int j = 0; j < 8; j++)
            acc[j] = _mm256_fmadd_ps(xv, load_w8(w, bf16, (size_t)j * ldw + (size_t)k), acc[j]);
    }
    if (k8 < in) {
        float xt[8], wt[8][8];
        row8_tail(bf16, x, in, w, ldw, xt, wt);
        __m256 xv = _mm256_loadu_ps(xt);
        for (int j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wt[j]), acc[j]);
    }
    __m256 r = hsum8x8(acc);
    if (bias) r = _mm256_add_ps(r, _mm256_loadu_ps(bias));
    _mm256_storeu_ps(y, r);
}

static AVX2_FN void row8_f32(const float *x, int in, const void *w, size_t ldw, const float *bias,
                             float *y)
{
    row8_avx2(false, x, in, w, ldw, bias, y);
}

static AVX2_FN void row8_bf16(const float *x, int in, const void *w, size_t ldw, const float *bias,
                              float *y)
{
    row8_avx2(true, x, in, w, ldw, bias, y);
}

/* One row of y (GEMV): columns j0..j1-1 eight at a time, the rest as block_avx2. */
static AVX2_FN void gemv_avx2(const float *x, const void *w, bool bf16, const float *bias, int in,
                              float *y, int j0, int j1)
{
    size_t es = bf16 ? 2 : 4;
    int j = j0;
    for (; j1 - j >= 8; j += 8) {
        const void *wj = (const char *)w + (size_t)j * (size_t)in * es;
        const float *bj = bias ? bias + j : NULL;
        if (bf16)
            row8_bf16(x, in, wj, (size_t)in, bj, y + j);
        else
            row8_f32(x, in, wj, (size_t)in, bj, y + j);
    }
    for (; j < j1;) {
        int nr = j1 - j >= 4 ? 4 : 1;
        const void *wj = (const char *)w + (size_t)j * (size_t)in * es;
        const float *bj = bias ? bias + j : NULL;
        if (bf16)
            block_true(1, nr, x, in, wj, bj, y + j, 1);
        else
            block_false(1, nr, x, in, wj, bj, y + j, 1);
        j += nr;
    }
}

/* ---- attention's tile kernels (AVX2) ---- */

/* Scores of NQ queries against NK keys (NQ * NK <= 8): each accumulator runs
 * exactly block_avx2's chain for one output (FMA over len in steps of 8, the tail
 * zero-padded, hsum8), the NQ * NK chains in flight at once. */
AVX2_INLINE void scores_block(int NQ, int NK, bool bf16, const float *const *q, int len, const void *k,
                              size_t ldk, float *s, size_t lds)
{
    __m256 acc[8];
    for (int a = 0; a < NQ * NK; a++) acc[a] = _mm256_setzero_ps();
    int k8 = len & ~7;
    for (int d = 0; d < k8; d += 8) {
        __m256 qv[2];
        for (int r = 0; r < NQ; r++) qv[r] = _mm256_loadu_ps(q[r] + d);
        for (int i = 0; i < NK; i++) {
            __m256 kv = load_w8(k, bf16, (size_t)i * ldk + (size_t)d);
            for (int r = 0; r < NQ; r++) acc[r * NK + i] = _mm256_fmadd_ps(qv[r], kv, acc[r * NK + i]);
        }
    }
    if (k8 < len) {
        float qt[2][8], kt[8][8];
        memset(qt, 0, sizeof(qt));
        memset(kt, 0, sizeof(kt));
        for (int t = 0; k8 + t < len; t++) {
            for (int r = 0; r < NQ; r++) qt[r][t] = q[r][k8 + t];
            for (int i = 0; i < NK; i++) kt[i][t] = w_at(k, bf16, (size_t)i * ldk + (size_t)(k8 + t));
        }
        for (int i = 0; i < NK; i++) {
            __m256 kv = _mm256_loadu_ps(kt[i]);
            for (int r = 0; r < NQ; r++)
                acc[r * NK + i] = _mm256_fmadd_ps(_mm256_loadu_ps(qt[r]), kv, acc[r * NK + i]);
        }
    }
    if (NQ * NK == 8) {
        float t[8];
        _mm256_storeu_ps(t, hsum8x8(acc));
        for (int r = 0; r < NQ; r++)
            for (int i = 0; i < NK; i++) s[(size_t)r * lds + (size_t)i] = t[r * NK + i];
        return;
    }
    for (int r = 0; r < NQ; r++)
        for (int i = 0; i < NK; i++) s[(size_t)r * lds + (size_t)i] = hsum8(acc[r * NK + i]);
}

/* Keys in chunks of 32, so that a chunk stays in L1 while every pair of queries
 * reads it; two queries by four keys, a last query by eight keys, then single keys. */
AVX2_INLINE void scores_tile(bool bf16, const float *const *q, int nq, const void *k, size_t ldk, int nk,
                             int len, float *s, size_t lds)
{
    size_t es = bf16 ? 2 : 4;
    for (int i0 = 0; i0 < nk; i0 += 32) {
        int i1 = nk - i0 < 32 ? nk : i0 + 32;
        for (int r = 0; r < nq; r += 2) {
            int i = i0;
            float *sr = s + (size_t)r * lds;
            if (nq - r >= 2) {
                for (; i1 - i >= 4; i += 4)
                    scores_block(2, 4, bf16, q + r, len, (const char *)k + (size_t)i * ldk * es, ldk, sr + i, lds);
                for (; i < i1; i++)
                    scores_block(2, 1, bf16, q + r, len, (const char *)k + (size_t)i * ldk * es, ldk, sr + i, lds);
            } else {
                for (; i1 - i >= 8; i += 8)
                    scores_block(1, 8, bf16, q + r, len, (const char *)k + (size_t)i * ldk * es, ldk, sr + i, lds);
                for (; i < i1; i++)
                    scores_block(1, 1, bf16, q + r, len, (const char *)k + (size_t)i * ldk * es, ldk, sr + i, lds);
            }
        }
    }
}

static AVX2_FN void scores_f32(const float *const *q, int nq, const void *k, size_t ldk, int nk, int len, float *s,
                               size_t lds)
{
    scores_tile(false, q, nq, k, ldk, nk, len, s, lds);
}

static AVX2_FN void scores_bf16(const float *const *q, int nq, const void *k, size_t ldk, int nk, int len, float *s,
                                size_t lds)
{
    scores_tile(true, q, nq, k, ldk, nk, len, s, lds);
}

static AVX2_FN float scale_max_avx2(float *s, int n, float scale)
{
    __m256 sc = _mm256_set1_ps(scale), mx = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; n - i >= 8; i += 8) {
        __m256 x = _mm256_mul_ps(_mm256_loadu_ps(s + i), sc);
        _mm256_storeu_ps(s + i, x);
        mx = _mm256_max_ps(x, mx); /* x > mx ? x : mx: a NaN x is skipped */
    }
    float t[8], bm = -INFINITY;
    _mm256_storeu_ps(t, mx);
    for (int a = 0; a < 8; a++)
        if (t[a] > bm) bm = t[a];
    for (; i < n; i++) {
        s[i] *= scale;
        if (s[i] > bm) bm = s[i];
    }
    return bm;
}

/* expf of glibc (2.27 and later) on x86-64 with FMA, four lanes at a time, for
 * |x| < 88: the same double-precision steps (k = round(x * 32 / ln 2) by the
 * shift, r = x * 32 / ln 2 - k fused, 2^(k / 32) from a table of 2^(i / 32),
 * a degree-3 polynomial in r, its multiply-adds fused) and the same constants,
 * so the same bits.  exp_table[i] = the double nearest 2^(i / 32), less i << 47. */
static const uint64_t exp_table[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b,
    0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1, 0x3fef06fe0a31b715, 0x3feef1a7373aa9cb,
    0x3feedea64c123422, 0x3feece086061892d, 0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429,
    0x3feea47eb03a5585, 0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d, 0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
};

AVX2_INLINE __m128 exp4_avx2(__m128 x)
{
    const __m256d scale = _mm256_set1_pd(0x1.71547652b82fep+0 * 32), shift = _mm256_set1_pd(0x1.8p+52);
    __m256d xd = _mm256_cvtps_pd(x);
    __m256d kd = _mm256_fmadd_pd(scale, xd, shift);
    __m256i ki = _mm256_castpd_si256(kd);
    kd = _mm256_sub_pd(kd, shift);
    __m256d r = _mm256_fmsub_pd(scale, xd, kd);
    __m256i t = _mm256_i64gather_epi64((const long long *)exp_table, _mm256_and_si256(ki, _mm256_set1_epi64x(31)), 8);
    t = _mm256_add_epi64(t, _mm256_slli_epi64(ki, 47));
    __m256d z = _mm256_fmadd_pd(r, _mm256_set1_pd(0x1.c6af84b912394p-20), _mm256_set1_pd(0x1.ebfce50fac4f3p-13));
    __m256d r2 = _mm256_mul_pd(r, r);
    __m256d y = _mm256_fmadd_pd(r, _mm256_set1_pd(0x1.62e42ff0c52d6p-6), _mm256_set1_pd(1.0));
    y = _mm256_fmadd_pd(z, r2, y);
    return _mm256_cvtpd_ps(_mm256_mul_pd(y, _mm256_castsi256_pd(t)));
}

/* expf(x) of eight lanes; lanes with |x| >= 88 or NaN, which libm treats apart,
 * call expf itself. */
AVX2_INLINE __m256 exp8_avx2(__m256 x)
{
    __m256 y = _mm256_set_m128(exp4_avx2(_mm256_extractf128_ps(x, 1)), exp4_avx2(_mm256_castps256_ps128(x)));
    __m256i big = _mm256_cmpgt_epi32(_mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7fffffff)),
                                     _mm256_set1_epi32(0x42afffff)); /* |x| >= 88.0f */
    int mask = _mm256_movemask_ps(_mm256_castsi256_ps(big));
    if (mask) {
        float xs[8], ys[8];
        _mm256_storeu_ps(xs, x);
        _mm256_storeu_ps(ys, y);
        for (; mask; mask &= mask - 1) ys[__builtin_ctz(mask)] = expf(xs[__builtin_ctz(mask)]);
        y = _mm256_loadu_ps(ys);
    }
    return y;
}

/* s[i] = expf(s[i] - m), eight at a time, the tail in a zero-padded block. */
static AVX2_FN void exp_avx2(float *s, int n, float m)
{
    __m256 mv = _mm256_set1_ps(m);
    int i = 0;
    for (; n - i >= 8; i += 8) _mm256_storeu_ps(s + i, exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + i), mv)));
    if (i < n) {
        float t[8] = { 0 };
        memcpy(t, s + i, sizeof(float) * (size_t)(n - i));
        _mm256_storeu_ps(t, exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(t), mv)));
        memcpy(s + i, t, sizeof(float) * (size_t)(n - i));
    }
}

/* Inputs that tell the expf exp4_avx2 copies from other implementations: one on
 * which glibc built without FMA differs from it, several it rounds away from the
 * float nearest the exact value (where a correctly rounded expf differs), and
 * special values. */
static const float exp_probe[] = { -0x1.f8cbb2p+5f, -0x1.333986p-2f, -0x1.b333ep+0f, -0x1.46768ep+2f,
                                   -0x1.a9ad12p+3f, -0x1.de6a3ep+4f, -0x1.780182p+5f, -0x1.18db02p+6f,
                                   -0x1.5a1284p+6f, -0x1.0b80bcp-12f, -0x1.e1c454p-12f, -0x1.f90fcap-9f,
                                   -0x1.0bb1eap-7f, -0.0f, 0.0f, -0x1p-149f, 0x1.62e42ep6f, -87.99f };

/* Does exp_avx2 give this process's expf?  It is glibc's expf on x86-64 with FMA
 * (checked on every input: `MOEFLOW_TEST_EXP_ALL=1 test_kernels_gemm`); another libm
 * (or glibc told not to use FMA) keeps calling expf. */
static bool exp_vec_ok;
static pthread_once_t exp_vec_once = PTHREAD_ONCE_INIT;

static AVX2_FN void exp_vec_check(void)
{
    enum { NP = MOE_ARRAY_LEN(exp_probe), NS = 1024 };
    float x[NP + NS], y[NP + NS];
    memcpy(x, exp_probe, sizeof(exp_probe));
    for (int i = 0; i < NS; i++) x[NP + i] = -104.0f * (float)i / NS - 1e-3f * (float)(i % 7); /* a sweep */
    memcpy(y, x, sizeof(x));
    exp_avx2(y, NP + NS, 0.0f);
    bool ok = true;
    for (int i = 0; i < NP + NS; i++) {
        float e = expf(x[i]);
        ok &= !memcmp(&e, &y[i], sizeof(float));
    }
    exp_vec_ok = ok;
}

/* v[2i] = expf(v[2i] - m) for i < n, the floats of 8-byte pairs whose other
 * halves are moved, never computed on: eight pairs at a time, the tail by expf. */
static AVX2_FN void exp_pairs_avx2(float *v, int n, float m)
{
    __m256 mv = _mm256_set1_ps(m);
    int i = 0;
    for (; n - i >= 8; i += 8) {
        float *p = v + 2 * (size_t)i;
        __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
        __m256 f = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)); /* floats 0 1 4 5 | 2 3 6 7 */
        __m256 o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)); /* their other halves */
        __m256 e = exp8_avx2(_mm256_sub_ps(f, mv));
        _mm256_storeu_ps(p, _mm256_unpacklo_ps(e, o));
        _mm256_storeu_ps(p + 8, _mm256_unpackhi_ps(e, o));
    }
    for (; i < n; i++) v[2 * (size_t)i] = expf(v[2 * (size_t)i] - m);
}

/* out[i] = silu_mul1(gate[i], up[i]) eight at a time: expf(-g), 1 + that, g / that,
 * times u, each lane the scalar code's operations (division is correctly rounded
 * in either); the tail as the scalar code. */
static AVX2_FN void silu_mul_avx2(const float *gate, const float *up, float *out, size_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    size_t i = 0;
    for (; n - i >= 8; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 d = _mm256_add_ps(one, exp8_avx2(_mm256_xor_ps(g, sign)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, d), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) out[i] = silu_mul1(gate[i], up[i]);
}

/* y[i] = 1 / (1 + expf(-x[i])) eight at a time, the tail as the scalar code. */
static AVX2_FN void sigmoid_avx2(const float *x, float *y, int n)
{
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    int i = 0;
    for (; n - i >= 8; i += 8) {
        __m256 d = _mm256_add_ps(one, exp8_avx2(_mm256_xor_ps(_mm256_loadu_ps(x + i), sign)));
        _mm256_storeu_ps(y + i, _mm256_div_ps(one, d));
    }
    for (; i < n; i++) y[i] = sigmoid1(x[i]);
}

/* Columns d0 .. d0 + 8 * NC - 1 of NO rows (NO <= 2, NC <= 6) held in
 * registers through keys i0..i1-1: NO * NC independent add chains.  Each lane
 * does the scalar code's multiply and add (separate instructions: no FMA); with
 * WL, the rows' l as well (one pass of a row sums it). */
AVX2_INLINE void wsum_block(int NO, int NC, bool WL, bool bf16, float *const *o, float *l, const float *p,
                            size_t ldp, const void *v, size_t ldv, int i0, int i1, int d0)
{
    __m256 acc[2][6];
    float ls[2] = { 0, 0 };
    for (int r = 0; r < NO; r++) {
        for (int c = 0; c < NC; c++) acc[r][c] = _mm256_loadu_ps(o[r] + d0 + 8 * c);
        if (WL) ls[r] = l[r];
    }
    for (int i = i0; i < i1; i++) {
        size_t rv = (size_t)i * ldv + (size_t)d0;
        __m256 pi[2];
        for (int r = 0; r < NO; r++) pi[r] = _mm256_set1_ps(p[(size_t)r * ldp + (size_t)i]);
        for (int c = 0; c < NC; c++) {
            __m256 vv = load_w8(v, bf16, rv + 8 * (size_t)c);
            for (int r = 0; r < NO; r++) acc[r][c] = _mm256_add_ps(acc[r][c], _mm256_mul_ps(pi[r], vv));
        }
        if (WL)
            for (int r = 0; r < NO; r++) ls[r] = ls[r] + p[(size_t)r * ldp + (size_t)i];
    }
    for (int r = 0; r < NO; r++) {
        for (int c = 0; c < NC; c++) _mm256_storeu_ps(o[r] + d0 + 8 * c, acc[r][c]);
        if (WL) l[r] = ls[r];
    }
}

#define WSUM_PASS(NO, NC, WL, BF) wsum_block(NO, NC, WL, BF, o, l, p, ldp, v, ldv, i0, i1, d0)
#define WSUM_SWITCH(NO, WL, BF)                                                            \
    switch (nc) {                                                                          \
    case 6: WSUM_PASS(NO, 6, WL, BF); break;                                               \
    case 5: WSUM_PASS(NO, 5, WL, BF); break;                                               \
    case 4: WSUM_PASS(NO, 4, WL, BF); break;                                               \
    case 3: WSUM_PASS(NO, 3, WL, BF); break;                                               \
    case 2: WSUM_PASS(NO, 2, WL, BF); break;                                               \
    default: WSUM_PASS(NO, 1, WL, BF); break;                                              \
    }
#define WSUM_CASES(NO, BF)                                                                 \
    static AVX2_FN void wsum_##NO##_##BF(int nc, bool wl, float *const *o, float *l, const float *p, \
                                         size_t ldp, const void *v, size_t ldv, int i0, int i1, int d0) \
    {                                                                                      \
        if (wl) {                                                                          \
            WSUM_SWITCH(NO, true, BF)                                                      \
        } else {                                                                           \
            WSUM_SWITCH(NO, false, BF)                                                     \
        }                                                                                  \
    }
WSUM_CASES(1, false)
WSUM_CASES(1, true)
WSUM_CASES(2, false)
WSUM_CASES(2, true)

/* Keys i0..i1-1 of NO rows (p and o of row r at p + r * ldp, o[r]): columns in
 * passes of up to 6 registers a row, l summed in the first, the last len % 8
 * columns row by row in scalar code. */
static AVX2_FN void wsum_rows_avx2(int NO, bool bf16, float *const *o, float *l, const float *p, size_t ldp,
                                   const void *v, size_t ldv, int len, int i0, int i1)
{
    int d = 0;
    for (; len - d >= 8;) {
        int nc = (len - d) / 8 < 6 ? (len - d) / 8 : 6;
        if (NO == 2) {
            if (bf16) wsum_2_true(nc, d == 0, o, l, p, ldp, v, ldv, i0, i1, d);
            else wsum_2_false(nc, d == 0, o, l, p, ldp, v, ldv, i0, i1, d);
        } else {
            if (bf16) wsum_1_true(nc, d == 0, o, l, p, ldp, v, ldv, i0, i1, d);
            else wsum_1_false(nc, d == 0, o, l, p, ldp, v, ldv, i0, i1, d);
        }
        d += 8 * nc;
    }
    if (d < len || d == 0)
        for (int r = 0; r < NO; r++)
            wsum_row_portable(o[r], d == 0 ? l + r : NULL, p + (size_t)r * ldp, v, bf16, ldv, i0, i1, d, len);
}

/* Rows in pairs over the keys both have, then each row's own last keys alone. */
static AVX2_FN void wsum_avx2(float *const *o, float *l, const float *p, size_t ldp, const int *n, int no,
                              const void *v, bool bf16, size_t ldv, int len)
{
    int r = 0;
    for (; no - r >= 2; r += 2) {
        int both = n[r] < n[r + 1] ? n[r] : n[r + 1];
        const float *pr = p + (size_t)r * ldp;
        wsum_rows_avx2(2, bf16, o + r, l + r, pr, ldp, v, ldv, len, 0, both);
        for (int a = 0; a < 2; a++)
            if (n[r + a] > both)
                wsum_rows_avx2(1, bf16, o + r + a, l + r + a, pr + (size_t)a * ldp, ldp, v, ldv, len, both,
                               n[r + a]);
    }
    if (r < no) wsum_rows_avx2(1, bf16, o + r, l + r, p + (size_t)r * ldp, ldp, v, ldv, len, 0, n[r]);
}

static AVX2_FN float dot_avx2(const float *a, const float *b, int len)
{
    float r;
    block_avx2(1, 1, false, a, len, b, NULL, &r, 1);
    return r;
}

/* Widest row of a BF16 weight panel widened to F32 (4 rows, 64 KiB per thread). */
#define PANEL_MAX_IN 4096
static _Thread_local float panel[4 * PANEL_MAX_IN] __attribute__((aligned(64)));

static AVX2_FN void widen_panel(const void *w, size_t n, float *dst)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_store_ps(dst + i, load_w8(w, true, i));
    for (; i < n; i++) dst[i] = w_at(w, true, i);
}

static AVX2_FN void gemm_avx2(const float *x, const void *w, bool bf16, const float *bias, int n,
                              int in, int out, float *y, int j0, int j1)
{
    /* Rows in blocks that stay in L2 while the 4-row weight panels stream. */
    if (n == 1) {
        gemv_avx2(x, w, bf16, bias, in, y, j0, j1);
        return;
    }
    int rb = (32768 / (in > 0 ? in : 1)) / 3 * 3;
    if (rb < 3) rb = 3;
    size_t es = bf16 ? 2 : 4;
    /* A last single row (n = 3q + 1) goes through the GEMV path: more chains in flight. */
    int nb = n % 3 == 1 ? n - 1 : n;
    if (nb < n) gemv_avx2(x + (size_t)nb * in, w, bf16, bias, in, y + (size_t)nb * out, j0, j1);
    for (int i0 = 0; i0 < nb; i0 += rb) {
        int i1 = i0 + rb < nb ? i0 + rb : nb;
        /* BF16 panels that several row blocks read are widened once: the
         * block kernel then reads the same values as F32 */
        bool widen = bf16 && i1 - i0 > 3 && in <= PANEL_MAX_IN;
        for (int j = j0; j < j1;) {
            int nr = j1 - j >= 4 ? 4 : 1;
            const void *wj = (const char *)w + (size_t)j * (size_t)in * es;
            const float *bj = bias ? bias + j : NULL;
            if (widen) {
                widen_panel(wj, (size_t)nr * (size_t)in, panel);
                wj = panel;
            }
            for (int i = i0; i < i1;) {
                int mr = i1 - i >= 3 ? 3 : i1 - i;
                if (bf16 && !widen)
                    block_true(mr, nr, x + (size_t)i * in, in, wj, bj, y + (size_t)i * out + j, out);
                else
                    block_false(mr, nr, x + (size_t)i * in, in, wj, bj, y + (size_t)i * out + j, out);
                i += mr;
            }
            j += nr;
        }
    }
}
#endif /* MOE_HAVE_X86 */

/* ---- dispatch and threading ------------------------------------------------ */

float cpu_dot(enum cpu_isa isa, const float *a, const float *b, int len)
{
#ifdef MOE_HAVE_X86
    if (isa == CPU_ISA_AVX2) return dot_avx2(a, b, len);
#endif
    return dot_portable(a, b, false, len);
}

void cpu_attn_scores(enum cpu_isa isa, const float *const *q, int nq, const void *k, bool bf16, size_t ldk,
                     int nk, int len, float *s, size_t lds)
{
#ifdef MOE_HAVE_X86
    if (isa == CPU_ISA_AVX2) {
        if (bf16) scores_bf16(q, nq, k, ldk, nk, len, s, lds);
        else scores_f32(q, nq, k, ldk, nk, len, s, lds);
        return;
    }
#endif
    size_t es = bf16 ? 2 : 4;
    for (int r = 0; r < nq; r++)
        for (int i = 0; i < nk; i++)
            s[(size_t)r * lds + (size_t)i] = dot_portable(q[r], (const char *)k + (size_t)i * ldk * es, bf16, len);
}

float cpu_attn_scale_max(enum cpu_isa isa, float *s, int n, float scale)
{
#ifdef MOE_HAVE_X86
    if (isa == CPU_ISA_AVX2) return scale_max_avx2(s, n, scale);
#endif
    float bm = -INFINITY;
    for (int i = 0; i < n; i++) {
        s[i] *= scale;
        if (s[i] > bm) bm = s[i];
    }
    return bm;
}

bool cpu_exp_vectorized(enum cpu_isa isa)
{
#ifdef MOE_HAVE_X86
    if (isa == CPU_ISA_AVX2) {
        pthread_once(&exp_vec_once, exp_vec_check);
        return exp_vec_ok;
    }
#endif
    return false;
}

void cpu_exp(enum cpu_isa isa, float *s, int n, float m)
{
#ifdef MOE_HAVE_X86
    if (cpu_exp_vectorized(isa)) {
        exp_avx2(s, n, m);
        return;
    }
#endif
    for (int i = 0; i < n; i++) s[i] = expf(s[i] - m);
}

void cpu_exp_strided(enum cpu_isa isa, float *v, int n, int stride, float m)
{
    if (stride == 1) {
        cpu_exp(isa, v, n, m);
        return;
    }
#ifdef MOE_HAVE_X86
    if (stride == 2 && cpu_exp_vectorized(isa)) {
        exp_pairs_avx2(v, n, m);
        return;
    }
#endif
    for (int i = 0; i < n; i++) v[(size_t)i * stride] = expf(v[(size_t)i * stride] - m);
}

void cpu_silu_mul(enum cpu_isa isa, const float *gate, const float *up, float *out, size_t n)
{
#ifdef MOE_HAVE_X86
    if (cpu_exp_vectorized(isa)) {
        silu_mul_avx2(gate, up, out, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) out[i] = silu_mul1(gate[i], up[i]);
}

void cpu_sigmoid(enum cpu_isa isa, const float *x, float *y, int n)
{
#ifdef MOE_HAVE_X86
    if (cpu_exp_vectorized(isa)) {
        sigmoid_avx2(x, y, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++) y[i] = sigmoid1(x[i]);
}

static enum cpu_isa host_isa;
static pthread_once_t host_isa_once = PTHREAD_ONCE_INIT;

static void host_isa_detect(void)
{
    host_isa = cpu_isa_detect();
}

void moe_vexp_sub(float *v, int n, int stride, float m)
{
    pthread_once(&host_isa_once, host_isa_detect);
    cpu_exp_strided(host_isa, v, n, stride, m);
}

void cpu_attn_wsum(enum cpu_isa isa, float *const *o, float *l, const float *p, size_t ldp, const int *n,
                   int no, const void *v, bool bf16, size_t ldv, int len)
{
#ifdef MOE_HAVE_X86
    if (isa == CPU_ISA_AVX2) {
        wsum_avx2(o, l, p, ldp, n, no, v, bf16, ldv, len);
        return;
    }
#endif
    for (int r = 0; r < no; r++) wsum_row_portable(o[r], l + r, p + (size_t)r * ldp, v, bf16, ldv, 0, n[r], 0, len);
}

struct gemm_job {
    enum cpu_isa isa;
    const float *x;
    const void *w;
    bool bf16;
    const float *bias;
    int n, in, out;
    float *y;
};

static void gemm_cols(const struct gemm_job *g, int j0, int j1)
{
    if (j0 >= j1) return;
#ifdef MOE_HAVE_X86
    if (g->isa == CPU_ISA_AVX2) {
        gemm_avx2(g->x, g->w, g->bf16, g->bias, g->n, g->in, g->out, g->y, j0, j1);
        return;
    }
#endif
    gemm_portable(g->x, g->w, g->bf16, g->bias, g->n, g->in, g->out, g->y, j0, j1);
}

static void gemm_task(void *arg, int tid, int nth)
{
    const struct gemm_job *g = arg;
    int per = (g->out + nth - 1) / nth;
    per = (per + 3) & ~3;
    int j0 = tid * per, j1 = j0 + per < g->out ? j0 + per : g->out;
    gemm_cols(g, j0, j1);
}

void cpu_gemm_nt(enum cpu_isa isa, struct cpu_pool *pool, const float *x, const void *w,
                 enum moe_dtype wdt, const float *bias, int n, int in, int out, float *y)
{
    if (n <= 0 || out <= 0) return;
    struct gemm_job g = { isa, x, w, wdt == MOE_DT_BF16, bias, n, in, out, y };
    /* Threads only when there is enough work to pay for the hand-off. */
    if ((double)n * in * out < 262144.0 || out < 8)
        gemm_cols(&g, 0, out);
    else
        cpu_pool_run(pool, gemm_task, &g);
}
