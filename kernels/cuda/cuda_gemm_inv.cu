/* Batch-invariant GEMM: y[n, out] (+)= x[n, in] * W[out, in]^T with F32
 * activations, BF16 or F32 weights and F32 accumulation in a fixed order
 * (k ascending, one thread per output): a row's result does not depend on
 * how many rows are in the call or where it sits, which cuBLAS does not
 * promise.  Tiles: 16 rows x 64 outputs x 32 k; 256 threads, 4 outputs each. */
#include "cuda_internal.h"

#define IB_M 16
#define IB_N 64
#define IB_K 32

template <typename T> __device__ static inline float wload(const T *w, size_t i);
template <> __device__ inline float wload<float>(const float *w, size_t i) { return w[i]; }
template <> __device__ inline float wload<__nv_bfloat16>(const __nv_bfloat16 *w, size_t i)
{
    return __bfloat162float(w[i]);
}

template <typename T>
__global__ static void __launch_bounds__(256)
k_gemm_inv(const float *x, const T *w, int n, int in, int out, bool accumulate, float *y)
{
    __shared__ float xs[IB_M][IB_K + 1];
    __shared__ float ws[IB_N][IB_K + 1];
    int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    int row0 = blockIdx.y * IB_M, col0 = blockIdx.x * IB_N;
    float acc[4] = { 0.0f, 0.0f, 0.0f, 0.0f };

    for (int k0 = 0; k0 < in; k0 += IB_K) {
        for (int i = tid; i < IB_M * IB_K; i += 256) {
            int r = i / IB_K, kk = i % IB_K;
            int gr = row0 + r, gk = k0 + kk;
            xs[r][kk] = (gr < n && gk < in) ? x[(size_t)gr * in + gk] : 0.0f;
        }
        for (int i = tid; i < IB_N * IB_K; i += 256) {
            int cc = i / IB_K, kk = i % IB_K;
            int gc = col0 + cc, gk = k0 + kk;
            ws[cc][kk] = (gc < out && gk < in) ? wload<T>(w, (size_t)gc * in + gk) : 0.0f;
        }
        __syncthreads();
        int kmax = in - k0 < IB_K ? in - k0 : IB_K; /* padding never enters a sum */
        for (int kk = 0; kk < kmax; kk++) {
            float xv = xs[ty][kk];
#pragma unroll
            for (int j = 0; j < 4; j++) acc[j] = fmaf(xv, ws[tx * 4 + j][kk], acc[j]);
        }
        __syncthreads();
    }
    int gr = row0 + ty;
    if (gr >= n) return;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int gc = col0 + tx * 4 + j;
        if (gc < out) {
            float *dst = y + (size_t)gr * out + gc;
            *dst = accumulate ? *dst + acc[j] : acc[j];
        }
    }
}

extern "C" enum moe_status moe_cuda_gemm_inv_(struct moe_cuda_ctx *c, const float *d_x, const void *d_w,
                                              enum moe_dtype wdt, int n, int in, int out, bool accumulate,
                                              float *d_y)
{
    enum moe_status st = MOE_OK;
    if (n <= 0) return MOE_OK;
    if ((n + IB_M - 1) / IB_M > 65535)
        return moe_errorf(MOE_EINVAL, "invariant GEMM: %d rows exceed %d per call", n, 65535 * IB_M);
    dim3 grid((unsigned)((out + IB_N - 1) / IB_N), (unsigned)((n + IB_M - 1) / IB_M));
    if (wdt == MOE_DT_BF16)
        k_gemm_inv<__nv_bfloat16><<<grid, 256, 0, c->stream>>>(d_x, (const __nv_bfloat16 *)d_w, n, in, out,
                                                                accumulate, d_y);
    else
        k_gemm_inv<float><<<grid, 256, 0, c->stream>>>(d_x, (const float *)d_w, n, in, out, accumulate, d_y);
    CK_LAUNCH(c);
out:
    return st;
}
