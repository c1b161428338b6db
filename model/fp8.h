/* float8_e4m3fn codes and their block factors: the one rule by which the CPU path (model.c's
 * fp8_decode, behind moe_fp8_record_decode and the FP8 views) and the CUDA path (cuda_kernels.cu's
 * FP8 record decode) turn a code and its block factor into F32, so that the two give the same bits,
 * hence the same BF16, for every (code, factor) pair.  Header-only C, compiled by the C compiler and
 * by nvcc for both host and device.
 *
 * A code's value (bias 7, no infinities, S.1111.111 NaN) is exact in F32; the NaN codes 0x7f and
 * 0xff are the quiet NaNs 0x7fc00000 and 0xffc00000.
 *
 * value x factor is their F32 product wherever that is not NaN: IEEE 754 fixes those bits on every
 * machine.  Where it is NaN, the standard leaves the bits to the machine (0 x inf gives 0xffc00000
 * on x86-64, 0x7fc00000 on AArch64, 0x7fffffff on an NVIDIA GPU, which also drops a NaN operand's
 * sign and payload; of two NaN operands, which one passes depends on the operand order a compiler
 * picks), so the rule names them:
 *   - a NaN code gives its own NaN, whatever the factor;
 *   - else a NaN factor gives itself, quieted (sign and payload kept);
 *   - else (a zero code, of either sign, times an infinite factor) 0xffc00000, the bits the CPU path
 *     gave on x86-64 before the rule was written here. */
#ifndef MOE_FP8_H
#define MOE_FP8_H

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define MOE_FP8_FN static inline __host__ __device__
#else
#define MOE_FP8_FN static inline
#endif

MOE_FP8_FN uint32_t moe_fp8_f32_bits(float f)
{
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
#endif
}

MOE_FP8_FN float moe_fp8_f32_of_bits(uint32_t u)
{
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

/* The value of float8_e4m3fn code b (exact). */
MOE_FP8_FN float moe_fp8_e4m3_value(unsigned b)
{
    uint32_t e = (b >> 3) & 15, m = b & 7, s = (uint32_t)(b & 0x80) << 24;
    if (e == 15 && m == 7) return moe_fp8_f32_of_bits(s | 0x7fc00000u);
    /* normal: 1.m x 2^(e - 7), F32 exponent e - 7 + 127; subnormal: m x 2^-9 */
    float v = e ? moe_fp8_f32_of_bits((e + 120) << 23 | m << 20) : (float)m * 0x1p-9f;
    return moe_fp8_f32_of_bits(moe_fp8_f32_bits(v) | s);
}

/* A code's value v (moe_fp8_e4m3_value) times its block factor f, by the rule above. */
MOE_FP8_FN float moe_fp8_scaled(float v, float f)
{
    float p = v * f;
    if ((moe_fp8_f32_bits(p) & 0x7fffffffu) <= 0x7f800000u) return p; /* not NaN: IEEE's bits */
    uint32_t vu = moe_fp8_f32_bits(v), fu = moe_fp8_f32_bits(f);
    if ((vu & 0x7fffffffu) > 0x7f800000u) return v;
    if ((fu & 0x7fffffffu) > 0x7f800000u) return moe_fp8_f32_of_bits(fu | 0x00400000u);
    return moe_fp8_f32_of_bits(0xffc00000u);
}

#endif
