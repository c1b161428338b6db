/* Batch-invariant GEMM: y[n, out] (+)= x[n, in] * W[out, in]^T with F32
 * activations, BF16 or F32 weights and F32 accumulation in a fixed order
 * (k ascending, one thread per output): a row's result does not depend on
 * how many rows are in the call or where it sits, which cuBLAS does not
 * promise.  Tiles: 16 rows x 64 outputs x 32 k; 256 threads, 4 outputs each.
 * The expert FFN runs it grouped: one launch per projection over every
 * expert with rows, each block running the same tile body as the plain
 * kernel, so an output has the same bits either way.
 *
 * Decode calls (at most GV_ROWS rows per weight) take a streaming kernel
 * instead: the same chain of fmaf per output, so the same bits, but shaped
 * for reading the weights at memory speed (see gemv_inv_body). */
#include <stdint.h>
#include <stdlib.h>

#include <cuda_pipeline_primitives.h>

#include "cuda_internal.h"

#define IB_M 16
#define IB_N 64
#define IB_K 32
#define IB_CHUNK (65535 * IB_M) /* most rows a launch of the tile kernel takes (grid y: row tiles) */

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

/* ---- few rows: streaming the weights ------------------------------------
 * A tile of 16 rows wastes 15/16 of its lanes on one row and keeps only a
 * few KiB of weights in flight per SM, far from the bandwidth a decode step
 * needs.  Here a warp (one block) owns GV_N = 32 outputs, one lane each, and
 * streams their weight rows through shared memory GV_KB bytes per row at a
 * time with cp.async, GV_STAGES - 1 stages in flight while it computes one.
 * Each lane runs the tile body's arithmetic for its output: for every row,
 * acc = fmaf(x[k], w[k], acc) for k = 0, 1, ... in - 1 from 0.0f, then y =
 * acc (or y + acc).  The bits are the tile kernel's; only the schedule
 * differs.  Needs 16-byte aligned weight rows and x rows (in * sizeof(T) and
 * in * 4 multiples of 16, base pointers aligned); the callers check with
 * gv_ok() and take the tile kernel otherwise. */
#define GV_ROWS 4                 /* most rows per weight on this path */
#define GV_N 32                   /* outputs per warp */
#define GV_KB 256                 /* bytes of each weight row per stage */
#define GV_STAGES 4               /* shared-memory stages (GV_STAGES - 1 copies ahead) */
#define GV_PITCH (GV_KB + 16)     /* padded row pitch: lanes' 16-byte reads hit distinct banks */

/* 16 bytes of weights as floats (exact conversions, as wload). */
template <typename T> __device__ static inline void wunpack16(const unsigned char *p, float *v);
template <> __device__ inline void wunpack16<float>(const unsigned char *p, float *v)
{
    float4 f = *(const float4 *)p;
    v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
}
template <> __device__ inline void wunpack16<__nv_bfloat16>(const unsigned char *p, float *v)
{
    uint4 u = *(const uint4 *)p;
    const unsigned q[4] = { u.x, u.y, u.z, u.w };
#pragma unroll
    for (int i = 0; i < 4; i++) { /* little-endian: the element at the lower address in the low half */
        v[2 * i] = __uint_as_float(q[i] << 16);
        v[2 * i + 1] = __uint_as_float(q[i] & 0xffff0000u);
    }
}

/* Issue the cp.async copies of stage t (k from t * KS) of the warp's 32 rows
 * into buffer buf: 16 bytes per copy, a row's copies on consecutive lanes. */
template <typename T>
__device__ static inline void gv_issue(unsigned char (*buf)[GV_PITCH], const T *w, int in, int out, int col0, int t)
{
    constexpr int EPC = 16 / (int)sizeof(T), CPR = GV_KB / 16, KS = GV_KB / (int)sizeof(T);
    for (int i = (int)threadIdx.x; i < GV_N * CPR; i += 32) {
        int r = i / CPR, c = i % CPR;
        int gc = col0 + r, gk = t * KS + c * EPC;
        if (gc < out && gk < in) /* in is a multiple of EPC: a copy is whole or absent */
            __pipeline_memcpy_async(&buf[r][c * 16], w + (size_t)gc * in + gk, 16);
    }
}

/* y[n, out] (+)= x[n, in] W^T for outputs col0 .. col0 + 31, n <= GV_ROWS;
 * one warp. */
template <typename T>
__device__ static inline void gemv_inv_body(const float *x, const T *w, int n, int in, int out, bool accumulate,
                                            float *y, int col0)
{
    constexpr int EPC = 16 / (int)sizeof(T), KS = GV_KB / (int)sizeof(T);
    __shared__ __align__(16) unsigned char ws[GV_STAGES][GV_N][GV_PITCH];
    const int lane = (int)threadIdx.x, gc = col0 + lane, nst = (in + KS - 1) / KS;
    float acc[GV_ROWS];
#pragma unroll
    for (int r = 0; r < GV_ROWS; r++) acc[r] = 0.0f;

    for (int s = 0; s < GV_STAGES - 1; s++) {
        if (s < nst) gv_issue<T>(ws[s], w, in, out, col0, s);
        __pipeline_commit(); /* an empty group keeps the count of groups per stage */
    }
    for (int t = 0; t < nst; t++) {
        int ahead = t + GV_STAGES - 1;
        if (ahead < nst) gv_issue<T>(ws[ahead % GV_STAGES], w, in, out, col0, ahead);
        __pipeline_commit();
        __pipeline_wait_prior(GV_STAGES - 1); /* this lane's copies of stage t have landed */
        __syncwarp();                         /* ... and every lane's are visible */
        if (gc < out) {
            const unsigned char *row = ws[t % GV_STAGES][lane];
            int k0 = t * KS, kn = in - k0 < KS ? in - k0 : KS;
            for (int c = 0; c < kn / EPC; c++) {
                float wv[EPC];
                wunpack16<T>(row + c * 16, wv);
#pragma unroll
                for (int r = 0; r < GV_ROWS; r++) {
                    if (r >= n) break;
                    const float *xr = x + (size_t)r * in + k0 + c * EPC;
#pragma unroll
                    for (int e = 0; e < EPC; e += 4) {
                        float4 xv = __ldg((const float4 *)(xr + e));
                        acc[r] = fmaf(xv.x, wv[e], acc[r]);
                        acc[r] = fmaf(xv.y, wv[e + 1], acc[r]);
                        acc[r] = fmaf(xv.z, wv[e + 2], acc[r]);
                        acc[r] = fmaf(xv.w, wv[e + 3], acc[r]);
                    }
                }
            }
        }
        __syncwarp(); /* stage t's buffer is refilled next iteration */
    }
    if (gc >= out) return;
#pragma unroll
    for (int r = 0; r < GV_ROWS; r++) {
        if (r >= n) break;
        float *dst = y + (size_t)r * out + gc;
        *dst = accumulate ? *dst + acc[r] : acc[r];
    }
}

template <typename T>
__global__ static void __launch_bounds__(32)
k_gemv_inv(const float *x, const T *w, int n, int in, int out, bool accumulate, float *y)
{
    gemv_inv_body<T>(x, w, n, in, out, accumulate, y, (int)blockIdx.x * GV_N);
}

/* The streaming kernel's alignment needs for one weight and its x rows
 * (weight rows of 16-byte multiples also make in a multiple of 4, so the
 * F32 x rows are 16-byte multiples too). */
static bool gv_ok(const void *w, const float *x, enum moe_dtype wdt, int in)
{
    size_t es = wdt == MOE_DT_BF16 ? 2 : 4;
    return ((uintptr_t)w & 15) == 0 && ((uintptr_t)x & 15) == 0 && ((size_t)in * es) % 16 == 0;
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

/* Few rows per group: group blockIdx.y, projection blockIdx.z, outputs from
 * blockIdx.x * GV_N; the streaming body over the group's rows. */
template <typename T>
__global__ static void __launch_bounds__(32)
k_gemv_inv_grouped(const float *x, const __grid_constant__ struct inv_groups g, int in, int out)
{
    int j = (int)blockIdx.y, z = (int)blockIdx.z, r0 = g.off[j];
    gemv_inv_body<T>(x + (size_t)r0 * in, (const T *)g.w[z][j], g.off[j + 1] - r0, in, out, false,
                     g.y[z] + (size_t)r0 * out, (int)blockIdx.x * GV_N);
}

extern "C" enum moe_status moe_cuda_gemm_inv_(struct moe_cuda_ctx *c, const float *d_x, const void *d_w,
                                              enum moe_dtype wdt, int n, int in, int out, bool accumulate,
                                              float *d_y)
{
    enum moe_status st = MOE_OK;
    if (n <= 0) return MOE_OK;
    if (n <= GV_ROWS && gv_ok(d_w, d_x, wdt, in)) { /* decode: the streaming kernel */
        dim3 grid((unsigned)((out + GV_N - 1) / GV_N));
        if (wdt == MOE_DT_BF16)
            k_gemv_inv<__nv_bfloat16><<<grid, 32, 0, c->stream>>>(d_x, (const __nv_bfloat16 *)d_w, n, in, out,
                                                                   accumulate, d_y);
        else
            k_gemv_inv<float><<<grid, 32, 0, c->stream>>>(d_x, (const float *)d_w, n, in, out, accumulate, d_y);
        CK_LAUNCH(c);
        return MOE_OK;
    }
    /* Row tiles go on grid y, at most 65535 a launch: more rows take one launch per IB_CHUNK of them.  A
     * row's outputs are its own fmaf chain over k whatever tile or launch it falls in, so the bits do
     * not depend on the chunking. */
    for (int r0 = 0, rows; r0 < n; r0 += rows) {
        rows = n - r0 < IB_CHUNK ? n - r0 : IB_CHUNK;
        const float *x = d_x + (size_t)r0 * (size_t)in;
        float *y = d_y + (size_t)r0 * (size_t)out;
        dim3 grid((unsigned)((out + IB_N - 1) / IB_N), (unsigned)((rows + IB_M - 1) / IB_M));
        if (wdt == MOE_DT_BF16)
            k_gemm_inv<__nv_bfloat16><<<grid, 256, 0, c->stream>>>(x, (const __nv_bfloat16 *)d_w, rows, in, out,
                                                                    accumulate, y);
        else
            k_gemm_inv<float><<<grid, 256, 0, c->stream>>>(x, (const float *)d_w, rows, in, out, accumulate, y);
        CK_LAUNCH(c);
    }
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
        bool gv = true; /* decode: every group's rows few and aligned for the streaming kernel */
        for (int j = 0; j < ng && gv; j++)
            gv = t->off[j + 1] - t->off[j] <= GV_ROWS && gv_ok(t->w[0][j], d_x + (size_t)t->off[j] * in, wdt, in) &&
                 gv_ok(t->w[1][j], d_x + (size_t)t->off[j] * in, wdt, in);
        unsigned nz = (unsigned)(n_w > 1 ? 2 : 1);
        if (gv) {
            dim3 grid((unsigned)((out + GV_N - 1) / GV_N), (unsigned)ng, nz);
            if (wdt == MOE_DT_BF16)
                k_gemv_inv_grouped<__nv_bfloat16><<<grid, 32, 0, c->stream>>>(d_x, *t, in, out);
            else
                k_gemv_inv_grouped<float><<<grid, 32, 0, c->stream>>>(d_x, *t, in, out);
        } else {
            dim3 grid((unsigned)tiles, col_tiles, nz);
            if (wdt == MOE_DT_BF16)
                k_gemm_inv_grouped<__nv_bfloat16><<<grid, 256, 0, c->stream>>>(d_x, *t, in, out);
            else
                k_gemm_inv_grouped<float><<<grid, 256, 0, c->stream>>>(d_x, *t, in, out);
        }
        CK_LAUNCH(c);
    }
out:
    free(t);
    return st;
}
