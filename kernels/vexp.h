/* Exponentials of many floats (kernels/cpu/gemm.c), bit for bit what expf gives
 * each: eight at a time on a CPU with AVX2 and FMA whose expf is the one the vector
 * code copies (glibc's, checked on probes once per process), expf itself
 * otherwise.  Used by the CPU backend's kernels and by the sampler. */
#ifndef MOE_VEXP_H
#define MOE_VEXP_H

#ifdef __cplusplus
extern "C" {
#endif

/* v[i * stride] = expf(v[i * stride] - m) for i < n.  Strides 1 and 2 are the
 * vectorized ones; with 2, v holds 8-byte pairs of a float and 4 other bytes (a
 * struct { float; int32_t; } array), whose other halves are left as they are. */
void moe_vexp_sub(float *v, int n, int stride, float m);

#ifdef __cplusplus
}
#endif

#endif
