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

/* out[i] = cpu_dot(isa, q, k + i * ldk, len) for i = 0..nk-1, bit for bit
 * (several keys in flight at once).  k F32, or BF16 when bf16 (widened exactly
 * as loaded: the result of F32 keys holding the same values); ldk in elements. */
void cpu_dot_rows(enum cpu_isa isa, const float *q, const void *k, bool bf16, size_t ldk, int nk, int len,
                  float *out);

/* o[d] = o[d] + p[i] * v[i * ldv + d] for i = 0..n-1 in order, d = 0..len-1:
 * a multiply, then an add (never fused), the same rounding on every ISA.  v F32,
 * or BF16 when bf16 (widened exactly); ldv in elements. */
void cpu_axpy_rows(enum cpu_isa isa, float *o, const float *p, const void *v, bool bf16, size_t ldv, int n,
                   int len);

#endif
