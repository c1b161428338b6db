/* CPU backend internals: the thread pool and the deterministic GEMM. */
#ifndef MOE_CPU_INTERNAL_H
#define MOE_CPU_INTERNAL_H

#include "../backend.h"
#include "../pool.h"

/* Instruction set of the arithmetic kernels, chosen once per backend. */
enum cpu_isa {
    CPU_ISA_PORTABLE, /* plain C: multiply then add */
    CPU_ISA_AVX2,     /* AVX2 + FMA (fused multiply-add: different rounding) */
};
enum cpu_isa cpu_isa_detect(void);
const char *cpu_isa_name(enum cpu_isa isa);

/* y [n, out] = x [n, in] @ W^T (+ bias [out]), W [out, in] F32 or BF16.
 * Each y[i, j] is computed by the same instruction sequence whatever n, the
 * row's place and the thread count: 8 partial sums over in (lane l takes the
 * elements with index = l mod 8, the tail zero-padded), then the fixed
 * reduction ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), then + bias.
 * pool may be NULL (single thread). */
void cpu_gemm_nt(enum cpu_isa isa, struct cpu_pool *pool, const float *x, const void *w,
                 enum moe_dtype wdt, const float *bias, int n, int in, int out, float *y);

/* The same dot product as one element of cpu_gemm_nt (F32 operands). */
float cpu_dot(enum cpu_isa isa, const float *a, const float *b, int len);

/* Attention's kernels over a tile of rows ((token, head) pairs that read the same
 * keys and values, kernels/cpu/cpu_backend.c); each row's arithmetic is that of
 * the row alone, whichever rows share the call.  k and v are F32, or BF16 when
 * bf16 (widened exactly as loaded: the result of F32 rows holding the same
 * values); ldk, ldv in elements. */

/* s[r * lds + i] = cpu_dot(isa, q[r], k + i * ldk, len), bit for bit, for r < nq, i < nk
 * (each key row read once for every two queries). */
void cpu_attn_scores(enum cpu_isa isa, const float *const *q, int nq, const void *k, bool bf16, size_t ldk,
                     int nk, int len, float *s, size_t lds);

/* s[i] = s[i] * scale for i < n; returns the largest of them (-inf for none; NaNs
 * skipped).  When that is a zero, its sign is unspecified. */
float cpu_attn_scale_max(enum cpu_isa isa, float *s, int n, float scale);

/* Exponentials, bit for bit what the scalar code below gives with this process's
 * expf: on AVX2, eight at a time where cpu_exp_vectorized (the expf is the one the
 * vector code copies, glibc's: checked on probes once per process), by expf itself
 * otherwise.  The scalar code's operations are kept per element: the vector code
 * does them lane by lane (add, correctly rounded division, multiply). */

/* s[i] = expf(s[i] - m) for i < n. */
void cpu_exp(enum cpu_isa isa, float *s, int n, float m);
bool cpu_exp_vectorized(enum cpu_isa isa);

/* v[i * stride] = expf(v[i * stride] - m) for i < n (kernels/vexp.h). */
void cpu_exp_strided(enum cpu_isa isa, float *v, int n, int stride, float m);

/* SwiGLU's product: out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i] for i < n (out may be gate). */
void cpu_silu_mul(enum cpu_isa isa, const float *gate, const float *up, float *out, size_t n);

/* y[i] = 1.0f / (1.0f + expf(-x[i])) for i < n (y may be x). */
void cpu_sigmoid(enum cpu_isa isa, const float *x, float *y, int n);

/* For r < no and i = 0..n[r]-1 in order: l[r] = l[r] + p[r * ldp + i] and, for d < len,
 * o[r][d] = o[r][d] + p[r * ldp + i] * v[i * ldv + d]: a multiply, then an add (never
 * fused), the same rounding on every ISA (each value row read once for every two rows). */
void cpu_attn_wsum(enum cpu_isa isa, float *const *o, float *l, const float *p, size_t ldp, const int *n,
                   int no, const void *v, bool bf16, size_t ldv, int len);

#endif
