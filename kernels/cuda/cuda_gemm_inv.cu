/* Batch-invariant GEMM: y[n, out] (+)= x[n, in] * W[out, in]^T with F32
 * activations, BF16 or F32 weights and F32 accumulation in a fixed order
 * (k ascending, one thread per output): a row's result does not depend on
 * how many rows are in the call or where it sits, which cuBLAS does not
 * promise.  Tiles: 16 rows x 64 outputs x 32 k; 256 threads, 4 outputs each.
 * The expert FFN runs it grouped: one launch per projection over every
 * expert with rows, each block running the same tile body as the plain
 * kernel, so an output has the same bits either way. */
#include <stdlib.h>

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

/* One IB_M x IB_N tile of y[n, out] (+)= x[n, in] W^T at rows row0.., outputs
 * col0..; 256 threads.  Every invariant GEMM, plain or grouped, runs this
 * body, so an output's arithmetic does not depend on the launch. */
template <typename T>
__device__ static inline void gemm_inv_tile(const float *x, const T *w, int n, int in, int out, bool accumulate,
                                            float *y, int row0, int col0)
{
    __shared__ float xs[IB_M][IB_K + 1];
    __shared__ float ws[IB_N][IB_K + 1];
    int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
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

template <typename T>
__global__ static void __launch_bounds__(256)
k_gemm_inv(const float *x, const T *w, int n, int in, int out, bool accumulate, float *y)
{
    gemm_inv_tile<T>(x, w, n, in, out, accumulate, y, blockIdx.y * IB_M, blockIdx.x * IB_N);
}

/* Groups per grouped launch: the table travels as a kernel parameter
 * (14 KB; sm_70+ with CUDA 12.1+ take up to 32764 bytes). */
#define INV_MAX_GROUPS 512

/* The nonempty groups of one grouped launch: group j owns rows off[j] ..
 * off[j+1]-1 of x and of each output, and flattened row tiles tile[j] ..
 * tile[j+1]-1 (blockIdx.x); projection z (blockIdx.z) reads w[z][j] and
 * writes y[z]. */
struct inv_groups {
    const void *w[2][INV_MAX_GROUPS]; /* [projection][group] weight [out, in] */
    float *y[2];                      /* [projection] output [rows, out] */
    int off[INV_MAX_GROUPS + 1];      /* first row of each group; off[ng] = end of the last */
    int tile[INV_MAX_GROUPS + 1];     /* first row tile of each group; tile[ng] = grid x */
    int ng;                           /* groups in this launch, each with rows */
};
static_assert(sizeof(struct inv_groups) + 3 * sizeof(void *) + 2 * sizeof(int) <= 32764,
              "grouped GEMM table exceeds the kernel parameter limit");

template <typename T>
__global__ static void __launch_bounds__(256)
k_gemm_inv_grouped(const float *x, const __grid_constant__ struct inv_groups g, int in, int out)
{
    int bt = (int)blockIdx.x, lo = 0, hi = g.ng - 1, z = (int)blockIdx.z;
    while (lo < hi) { /* the last group whose first tile is <= bt */
        int mid = lo + (hi - lo + 1) / 2;
        if (g.tile[mid] <= bt) lo = mid;
        else hi = mid - 1;
    }
    int r0 = g.off[lo];
    gemm_inv_tile<T>(x + (size_t)r0 * in, (const T *)g.w[z][lo], g.off[lo + 1] - r0, in, out, false,
                     g.y[z] + (size_t)r0 * out, (bt - g.tile[lo]) * IB_M, (int)blockIdx.y * IB_N);
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

/* Grouped invariant GEMM: for every group g with rows (h_off[g] < h_off[g+1];
 * h_off[0] = 0, non-decreasing, HOST), y_z[r, out] = x[r, in] w_z[g]^T for
 * its rows r and each projection z < n_w (1 or 2: w0/y0, w1/y1), in one
 * launch (one per INV_MAX_GROUPS nonempty groups).  Each output is the same
 * arithmetic as moe_cuda_gemm_inv_ over that group's rows alone. */
extern "C" enum moe_status moe_cuda_gemm_inv_grouped_(struct moe_cuda_ctx *c, const float *d_x, int n_groups,
                                                      const int *h_off, int n_w, const void *const *h_w0,
                                                      const void *const *h_w1, enum moe_dtype wdt, int in,
                                                      int out, float *d_y0, float *d_y1)
{
    enum moe_status st = MOE_OK;
    struct inv_groups *t = (struct inv_groups *)malloc(sizeof(*t));
    unsigned col_tiles = (unsigned)((out + IB_N - 1) / IB_N);
    if (!t) return moe_errorf(MOE_ENOMEM, "grouped invariant GEMM: out of host memory");
    if (col_tiles > 65535) {
        st = moe_errorf(MOE_EINVAL, "grouped invariant GEMM: %d outputs exceed %d", out, 65535 * IB_N);
        goto out;
    }
    t->y[0] = d_y0;
    t->y[1] = n_w > 1 ? d_y1 : d_y0;
    for (int g = 0; g < n_groups;) {
        int ng = 0, end = 0;
        long long tiles = 0;
        for (; g < n_groups && ng < INV_MAX_GROUPS; g++) {
            int rows = h_off[g + 1] - h_off[g];
            long long more = (rows + IB_M - 1) / IB_M;
            if (rows <= 0) continue;
            if (tiles + more > 0x7fffffff) break; /* grid x limit: the next launch takes it */
            t->w[0][ng] = h_w0[g];
            t->w[1][ng] = n_w > 1 ? h_w1[g] : h_w0[g];
            t->off[ng] = h_off[g];
            t->tile[ng] = (int)tiles;
            end = h_off[g + 1];
            tiles += more;
            ng++;
        }
        if (ng == 0) break;
        t->off[ng] = end;
        t->tile[ng] = (int)tiles;
        t->ng = ng;
        dim3 grid((unsigned)tiles, col_tiles, (unsigned)(n_w > 1 ? 2 : 1));
        if (wdt == MOE_DT_BF16)
            k_gemm_inv_grouped<__nv_bfloat16><<<grid, 256, 0, c->stream>>>(d_x, *t, in, out);
        else
            k_gemm_inv_grouped<float><<<grid, 256, 0, c->stream>>>(d_x, *t, in, out);
        CK_LAUNCH(c);
    }
out:
    free(t);
    return st;
}
