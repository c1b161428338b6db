/* Elementwise, normalisation, rotary, attention, router, permutation and
 * sampling kernels with their launchers.  F32 activations, F32 accumulation;
 * every launcher validates its sizes and returns a status. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cuda_internal.h"
#include "../../model/config.h" /* MOE_ERNIE_NORM_MIN */
#include "../../model/fp8.h"     /* the FP8 decode rule, the host's */

#define MAX_GRID 65535u

/* ---- block reductions (blockDim.x a multiple of 32, <= 1024) ---------- */

__device__ static float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ static float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* red: 32 floats of shared memory.  All threads get the result. */
__device__ static float block_sum(float v, float *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads(); /* red may still be read from a previous call */
    if (lane == 0) red[w] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return warp_sum(v);
}

/* ---- conversions and elementwise --------------------------------------- */

/* common/moe.h's moe_f32_to_bf16: round to nearest even, NaN kept quiet. */
__device__ static unsigned short f32_to_bf16_bits(float f)
{
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

/* The same as a BF16 value: the host's bits for every input, NaN's sign and payload too (the
 * cvt.rn.bf16 instruction behind __float2bfloat16_rn gives one canonical NaN). */
__device__ static inline __nv_bfloat16 to_bf16(float f)
{
    __nv_bfloat16_raw r;
    r.x = f32_to_bf16_bits(f);
    return __nv_bfloat16(r);
}

__global__ static void k_f32_to_bf16(const float *in, __nv_bfloat16 *out, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = to_bf16(in[i]);
}
__global__ static void k_bf16_to_f32(const __nv_bfloat16 *in, float *out, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = __bfloat162float(in[i]);
}
__global__ static void k_add(float *y, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}
__global__ static void k_add_bias(float *y, const float *b, size_t n, int dim)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += b[i % (size_t)dim];
}

extern "C" enum moe_status moe_cuda_f32_to_bf16(struct moe_cuda_ctx *c, const float *d_in,
                                                uint16_t *d_out, size_t n)
{
    enum moe_status st = MOE_OK;
    if (n == 0) return MOE_OK;
    k_f32_to_bf16<<<moe_cuda_blocks(n, 256, 4096), 256, 0, c->stream>>>(
        d_in, (__nv_bfloat16 *)d_out, n);
    CK_LAUNCH(c);
out:
    return st;
}

extern "C" enum moe_status moe_cuda_bf16_to_f32(struct moe_cuda_ctx *c, const uint16_t *d_in,
                                                float *d_out, size_t n)
{
    enum moe_status st = MOE_OK;
    if (n == 0) return MOE_OK;
    k_bf16_to_f32<<<moe_cuda_blocks(n, 256, 4096), 256, 0, c->stream>>>(
        (const __nv_bfloat16 *)d_in, d_out, n);
    CK_LAUNCH(c);
out:
    return st;
}

extern "C" enum moe_status moe_cuda_add(struct moe_cuda_ctx *c, float *d_y, const float *d_x, size_t n)
{
    enum moe_status st = MOE_OK;
    if (n == 0) return MOE_OK;
    k_add<<<moe_cuda_blocks(n, 256, 4096), 256, 0, c->stream>>>(d_y, d_x, n);
    CK_LAUNCH(c);
out:
    return st;
}

extern "C" enum moe_status moe_cuda_add_bias(struct moe_cuda_ctx *c, float *d_y, const float *d_b,
                                             int rows, int dim)
{
    enum moe_status st = MOE_OK;
    size_t n = (size_t)rows * (size_t)dim;
    if (rows < 0 || dim <= 0) return moe_errorf(MOE_EINVAL, "add_bias: rows %d, dim %d", rows, dim);
    if (n == 0) return MOE_OK;
    k_add_bias<<<moe_cuda_blocks(n, 256, 4096), 256, 0, c->stream>>>(d_y, d_b, n, dim);
    CK_LAUNCH(c);
out:
    return st;
}

/* ---- embedding ----------------------------------------------------------- */

template <typename T> __device__ static inline float to_f32(T v);
template <> __device__ inline float to_f32<float>(float v) { return v; }
template <> __device__ inline float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__global__ static void k_embed(const T *table, int vocab, int hidden, const int *ids, int n, float *out)
{
    size_t total = (size_t)n * (size_t)hidden;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / (size_t)hidden, d = i % (size_t)hidden;
        int id = ids[t];
        out[i] = (id >= 0 && id < vocab) ? to_f32<T>(table[(size_t)id * (size_t)hidden + d]) : NAN;
    }
}

extern "C" enum moe_status moe_cuda_embed(struct moe_cuda_ctx *c, const void *d_table, enum moe_dtype dt,
                                          int vocab, int hidden, const int *d_ids, int n, float *d_out)
{
    enum moe_status st = MOE_OK;
    size_t total = (size_t)n * (size_t)hidden;
    if (n < 0 || hidden <= 0 || vocab <= 0)
        return moe_errorf(MOE_EINVAL, "embed: n %d, hidden %d, vocab %d", n, hidden, vocab);
    if (n == 0) return MOE_OK;
    if (dt == MOE_DT_BF16)
        k_embed<__nv_bfloat16><<<moe_cuda_blocks(total, 256, 4096), 256, 0, c->stream>>>(
            (const __nv_bfloat16 *)d_table, vocab, hidden, d_ids, n, d_out);
    else if (dt == MOE_DT_F32)
        k_embed<float><<<moe_cuda_blocks(total, 256, 4096), 256, 0, c->stream>>>(
            (const float *)d_table, vocab, hidden, d_ids, n, d_out);
    else
        return moe_errorf(MOE_ENOTSUP, "embed: table dtype %s (convert to BF16 or F32)",
                          dt == MOE_DT_F16 ? "F16" : "non-float");
    CK_LAUNCH(c);
out:
    return st;
}

/* ---- RMSNorm ------------------------------------------------------------ */

__global__ static void k_rmsnorm(const float *x, const float *w, float *y, int dim, float eps)
{
    __shared__ float red[32];
    size_t r = blockIdx.x;
    const float *xr = x + r * (size_t)dim;
    float *yr = y + r * (size_t)dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    float inv = rsqrtf(ss / (float)dim + eps);
    /* every thread has read its x before any y is written: block_sum synchronised */
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

extern "C" enum moe_status moe_cuda_rmsnorm(struct moe_cuda_ctx *c, const float *d_x, const float *d_w,
                                            float *d_y, int rows, int dim, float eps)
{
    enum moe_status st = MOE_OK;
    if (rows < 0 || dim <= 0) return moe_errorf(MOE_EINVAL, "rmsnorm: rows %d, dim %d", rows, dim);
    for (int r0 = 0; r0 < rows; r0 += (int)(MAX_GRID * 16u)) {
        int nr = rows - r0 < (int)(MAX_GRID * 16u) ? rows - r0 : (int)(MAX_GRID * 16u);
        /* gridDim.x may be up to 2^31-1; the chunking only bounds one launch's size */
        k_rmsnorm<<<(unsigned)nr, 256, 0, c->stream>>>(d_x + (size_t)r0 * dim, d_w,
                                                       d_y + (size_t)r0 * dim, dim, eps);
        CK_LAUNCH(c);
    }
out:
    return st;
}

/* ---- RoPE --------------------------------------------------------------- */

/* inv_freq of every pair, computed on the host (moe_config_rope): device
 * powf and glibc powf differ in the last bit.  Passed by value (2 KiB of
 * kernel parameters), so no upload and no buffer to keep alive. */
struct rope_freq {
    float f[512]; /* [rot_dim / 2] */
    float scale;  /* on cos and sin (YaRN's attention factor; 1 by default) */
};

__global__ static void k_rope(float *x, const int *pos, int n, int n_heads, int head_dim, int rot_dim,
                              const struct rope_freq fr)
{
    int half = rot_dim / 2;
    size_t total = (size_t)n * (size_t)n_heads * (size_t)half;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int j = (int)(i % (size_t)half);
        size_t th = i / (size_t)half; /* token * n_heads + head */
        size_t t = th / (size_t)n_heads;
        float ang = (float)pos[t] * fr.f[j];
        float cs = cosf(ang) * fr.scale, sn = sinf(ang) * fr.scale;
        float *h = x + th * (size_t)head_dim;
        float a = h[j], b = h[j + half];
        h[j] = a * cs - b * sn;
        h[j + half] = b * cs + a * sn;
    }
}

extern "C" enum moe_status moe_cuda_rope_table(struct moe_cuda_ctx *c, float *d_x, const int *d_pos, int n,
                                               int n_heads, int head_dim, int rot_dim, const float *h_inv_freq,
                                               float scale)
{
    enum moe_status st = MOE_OK;
    size_t total = (size_t)n * (size_t)n_heads * (size_t)(rot_dim / 2);
    struct rope_freq fr;
    if (n < 0 || n_heads <= 0 || head_dim <= 0 || head_dim > 4096 || rot_dim <= 0 || rot_dim % 2 ||
        rot_dim > head_dim || rot_dim > 1024 || !h_inv_freq)
        return moe_errorf(MOE_EINVAL, "rope: n %d, heads %d, head_dim %d, rot_dim %d (even, <= head_dim and "
                          "1024), frequency table %s", n, n_heads, head_dim, rot_dim, h_inv_freq ? "given" : "missing");
    if (total == 0) return MOE_OK;
    memcpy(fr.f, h_inv_freq, sizeof(float) * (size_t)(rot_dim / 2));
    fr.scale = scale;
    k_rope<<<moe_cuda_blocks(total, 256, 8192), 256, 0, c->stream>>>(d_x, d_pos, n, n_heads, head_dim,
                                                                      rot_dim, fr);
    CK_LAUNCH(c);
out:
    return st;
}

/* ---- KV cache and attention ---------------------------------------------- */

__device__ static inline void cache_put(float *p, float x) { *p = x; }
__device__ static inline void cache_put(__nv_bfloat16 *p, float x) { *p = to_bf16(x); }
__device__ static inline float cache_get(const float *p) { return *p; }
__device__ static inline float cache_get(const __nv_bfloat16 *p) { return __bfloat162float(*p); }

template <typename T>
__global__ static void k_kv_store(const float *k, const float *v, T *kc, T *vc, const int *seq, const int *pos,
                                  int n, int max_ctx, int kv_dim)
{
    size_t total = (size_t)n * (size_t)kv_dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / (size_t)kv_dim, d = i % (size_t)kv_dim;
        int s = seq[t], p = pos[t];
        /* a row outside the cache (which the C twin refuses) writes nothing: position max_ctx of one
         * sequence is position 0 of the next */
        if (s < 0 || p < 0 || p >= max_ctx) continue;
        size_t at = ((size_t)s * (size_t)max_ctx + (size_t)p) * (size_t)kv_dim + d;
        cache_put(kc + at, k[i]);
        cache_put(vc + at, v[i]);
    }
}

static enum moe_status cache_dtype_ok(const char *op, enum moe_dtype cdt)
{
    if (cdt == MOE_DT_F32 || cdt == MOE_DT_BF16) return MOE_OK;
    return moe_errorf(MOE_ENOTSUP, "%s: KV cache dtype %d (F32 or BF16)", op, (int)cdt);
}

extern "C" enum moe_status moe_cuda_kv_store(struct moe_cuda_ctx *c, const float *d_k, const float *d_v,
                                             void *d_kcache, void *d_vcache, enum moe_dtype cdt, const int *d_seq,
                                             const int *d_pos, int n, int max_ctx, int kv_dim)
{
    enum moe_status st = MOE_OK;
    size_t total = (size_t)n * (size_t)kv_dim;
    if (n < 0 || max_ctx <= 0 || kv_dim <= 0)
        return moe_errorf(MOE_EINVAL, "kv_store: n %d, max_ctx %d, kv_dim %d", n, max_ctx, kv_dim);
    if ((st = cache_dtype_ok("kv_store", cdt)) != MOE_OK) return st;
    if (total == 0) return MOE_OK;
    if (cdt == MOE_DT_F32)
        k_kv_store<float><<<moe_cuda_blocks(total, 256, 8192), 256, 0, c->stream>>>(
            d_k, d_v, (float *)d_kcache, (float *)d_vcache, d_seq, d_pos, n, max_ctx, kv_dim);
    else
        k_kv_store<__nv_bfloat16><<<moe_cuda_blocks(total, 256, 8192), 256, 0, c->stream>>>(
            d_k, d_v, (__nv_bfloat16 *)d_kcache, (__nv_bfloat16 *)d_vcache, d_seq, d_pos, n, max_ctx, kv_dim);
    CK_LAUNCH(c);
out:
    return st;
}

/* Attention.  A row (token, query head) attends to positions first..last of its sequence (first:
 * the sliding window's start, else 0), cut into chunks of ATT_CHUNK positions counted from first.
 * Each chunk gives a partial computed alone: the largest score m, l = sum of exp(score - m) and
 * acc = sum of exp(score - m) * V (exp(score) when m is -inf: such a chunk has l = acc = 0 and
 * changes nothing).  The partials are folded in ascending chunk order (att_fold)
 * and the output is acc / l.  That arithmetic is fixed by the row alone, and two launch shapes run
 * it:
 *  - unsplit: one block per (token, group of query heads sharing a KV head) folds every chunk;
 *  - split (flash-decoding): gridDim.z blocks per (token, head group), each taking every
 *    gridDim.z-th chunk, write the partials to the workspace; k_att_combine folds them.
 * Both give the same bits, so the choice (moe_cuda_attention: few blocks for the device; or
 * moe_cuda_ctx_set_attn_splits) never changes a row's result, which does not depend on the batch
 * (the backend seam's batch invariance).  Products and sums that the compiler could contract
 * into an FMA in one launch shape and not in the other are written as __fmaf_rn / __fmul_rn /
 * __fadd_rn (PTX's plain mul.f32 and add.f32 may still be fused by ptxas; the .rn forms are not).
 * One block serves up to ATT_MAX_GROUP query heads of one KV head, so a K or V row is read once
 * for all of them (MLA's single latent head: once per 8 heads instead of once per head). */
#define ATT_THREADS 128
#define ATT_WARPS (ATT_THREADS / 32)
#define ATT_CHUNK 256                               /* positions per chunk */
#define ATT_MAX_ACC 5                               /* output dims per thread */
#define ATT_MAX_HD (ATT_THREADS * ATT_MAX_ACC)      /* 640: DeepSeek's latent rows (512 + 64) fit */
#define ATT_MAX_GROUP 8                             /* query heads per block */
#define ATT_FILL 4                                  /* blocks per SM below which a call splits */
static_assert(ATT_MAX_GROUP <= 32 && ATT_THREADS % 32 == 0, "attention: lane g writes head g's score");

struct att_args {
    const float *q;
    const void *kc, *vc;
    const int *seq, *pos;
    int n_heads, hd, max_ctx, window;
    int pos_max;       /* the caller's bound on the positions, < max_ctx: a row beyond it is invalid */
    int ratio;         /* query heads per KV head */
    int gpk;           /* blocks (head groups) per KV head: ceil(ratio / G) */
    int nchb;          /* the most chunks a valid row can have: ceil(min(window, pos_max + 1) / ATT_CHUNK)
                        * (pos_max + 1 for window 0) */
    size_t kv_dim;
    float scale;
    float *out;
    float *part_ml;    /* split: [n * n_heads][nchb][2] (m, l) of each chunk */
    float *part_acc;   /* split: [n * n_heads][nchb][hd] */
};

/* A row's chunk count, and in *first its first position; 0 for an invalid row, whose output is
 * NaN and for which nothing is read or written: a negative sequence (which kv_store skips too: its
 * cache rows would lie before the cache), a position below 0 or above pos_max (the caller's
 * bound, below max_ctx: the launcher checks), so outside the cache or past the chunks the split
 * partials have room for.  A valid row has at most nchb chunks: its positions number
 * min(last + 1, window or max_ctx) <= min(pos_max + 1, window or max_ctx). */
__device__ static inline int att_span(int seq, int last, int window, int pos_max, int *first)
{
    if (seq < 0 || last < 0 || last > pos_max) return 0;
    *first = window > 0 && last + 1 > window ? last + 1 - window : 0;
    return (last - *first) / ATT_CHUNK + 1;
}

/* Fold a chunk's (mc, lc) into the running (m, l); the running acc is then scaled by *ea and the
 * chunk's by *eb (att_fold_acc).  From the empty state (m = -inf, l = acc = 0) the chunk's values
 * come out unchanged (ea = 0, eb = 1); while both maxima are -inf (no finite score yet: l = acc = 0
 * on both sides) the state stays empty (ea = eb = 0), where -inf - -inf made the row NaN. */
__device__ static inline void att_fold(float *m, float *l, float mc, float lc, float *ea, float *eb)
{
    float nm = fmaxf(*m, mc);
    *ea = nm == -INFINITY ? 0.0f : expf(*m - nm);
    *eb = nm == -INFINITY ? 0.0f : expf(mc - nm);
    *l = __fmaf_rn(lc, *eb, __fmul_rn(*l, *ea));
    *m = nm;
}
__device__ static inline float att_fold_acc(float acc, float acc_c, float ea, float eb)
{
    return __fmaf_rn(acc_c, eb, __fmul_rn(acc, ea));
}

/* One chunk, positions j0 .. j0 + cnt - 1 (1 <= cnt <= ATT_CHUNK), for the G query heads in q_s
 * ([G][hd]): each head's partial in cm, cl and cacc (this thread's output dims tid + r *
 * ATT_THREADS).  Scores: a warp per key row, its lanes over the row's dims (coalesced reads), the
 * G dot products summed by shuffles; softmax statistics: a warp per head; p * V: a thread per
 * output dim, positions in ascending order.  p_s [G][ATT_CHUNK] and ml_s [2][G] are scratch;
 * every thread of the block must call it (it synchronises). */
template <typename T, int G, int ACC>
__device__ static void att_chunk(const float *q_s, float *p_s, float *ml_s, const T *kb, const T *vb,
                                 size_t kv_dim, int hd, float scale, int j0, int cnt, float cm[G], float cl[G],
                                 float cacc[G][ACC])
{
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (int jj = warp; jj < cnt; jj += ATT_WARPS) {
        const T *kr = kb + (size_t)(j0 + jj) * kv_dim;
        float dot[G];
#pragma unroll
        for (int g = 0; g < G; g++) dot[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < ACC * ATT_THREADS / 32; i++) {
            int d = lane + 32 * i;
            if (d < hd) {
                float k = cache_get(kr + d);
#pragma unroll
                for (int g = 0; g < G; g++) dot[g] = __fmaf_rn(q_s[g * hd + d], k, dot[g]);
            }
        }
#pragma unroll
        for (int g = 0; g < G; g++) {
            float s = warp_sum(dot[g]); /* every lane gets the same bits */
            if (lane == g) p_s[g * ATT_CHUNK + jj] = __fmul_rn(s, scale);
        }
    }
    __syncthreads(); /* every score of the chunk is in p_s */
    for (int g = warp; g < G; g += ATT_WARPS) {
        float *pg = p_s + g * ATT_CHUNK;
        float mx = -INFINITY, sum = 0.0f;
        for (int jj = lane; jj < cnt; jj += 32) mx = fmaxf(mx, pg[jj]);
        mx = warp_max(mx);
        /* a chunk whose scores are all -inf weighs nothing (l = acc = 0; att_fold then keeps the
         * running values as they are), as such a block does on the C twin: exp against 0, since
         * -inf - -inf would make every weight, and the row, NaN */
        float base = mx == -INFINITY ? 0.0f : mx;
        for (int jj = lane; jj < cnt; jj += 32) { /* each lane rewrites only the scores it read */
            float p = expf(pg[jj] - base);
            pg[jj] = p;
            sum = __fadd_rn(sum, p); /* expf ends in a product that ptxas may fuse into a plain add */
        }
        sum = warp_sum(sum);
        if (lane == 0) {
            ml_s[g] = mx;
            ml_s[G + g] = sum;
        }
    }
    __syncthreads(); /* p_s holds the weights, ml_s the statistics */
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int r = 0; r < ACC; r++) cacc[g][r] = 0.0f;
#pragma unroll 4
    for (int jj = 0; jj < cnt; jj++) {
        const T *vr = vb + (size_t)(j0 + jj) * kv_dim;
#pragma unroll
        for (int r = 0; r < ACC; r++) {
            int d = tid + r * ATT_THREADS;
            if (d < hd) {
                float v = cache_get(vr + d);
#pragma unroll
                for (int g = 0; g < G; g++) cacc[g][r] = __fmaf_rn(p_s[g * ATT_CHUNK + jj], v, cacc[g][r]);
            }
        }
    }
#pragma unroll
    for (int g = 0; g < G; g++) {
        cm[g] = ml_s[g];
        cl[g] = ml_s[G + g];
    }
    __syncthreads(); /* the next chunk rewrites p_s and ml_s */
}

/* grid (n tokens, n_kv * gpk head groups, splits), block ATT_THREADS, dynamic shared memory
 * (G * hd + G * ATT_CHUNK + 2 * G) floats.  Block (t, kvh * gpk + i) serves query heads
 * kvh * ratio + i * G .. + G - 1 that exist (the last group of a KV head may have fewer: the
 * others compute on zero queries and write nothing).  SPLIT: block z takes chunks z, z + splits,
 * ... and writes their partials; else it folds all chunks and writes the output. */
template <typename T, int G, int ACC, bool SPLIT>
__global__ static void __launch_bounds__(ATT_THREADS) k_att(const struct att_args a)
{
    extern __shared__ float att_smem[];
    float *q_s = att_smem, *p_s = q_s + G * a.hd, *ml_s = p_s + G * ATT_CHUNK;
    int t = blockIdx.x, tid = threadIdx.x;
    int kvh = (int)blockIdx.y / a.gpk, hg = ((int)blockIdx.y % a.gpk) * G, h0 = kvh * a.ratio + hg;
    int hv = a.ratio - hg < G ? a.ratio - hg : G; /* heads of this block that exist */
    int last = a.pos[t], first = 0, nck = att_span(a.seq[t], last, a.window, a.pos_max, &first);
    size_t row0 = (size_t)t * a.n_heads + h0; /* (token, head) row of the block's first head */
    if (SPLIT && (int)blockIdx.z >= nck) return; /* no chunk here (nck 0: the combine writes NaN) */
    if (!SPLIT && nck == 0) {
        for (int i = tid; i < hv * a.hd; i += ATT_THREADS) a.out[row0 * a.hd + i] = NAN;
        return;
    }
    size_t base = (size_t)a.seq[t] * (size_t)a.max_ctx * a.kv_dim + (size_t)kvh * a.hd;
    const T *kb = (const T *)a.kc + base, *vb = (const T *)a.vc + base;
    const float *qh = a.q + row0 * a.hd; /* the block's heads are adjacent in q and out */
    for (int i = tid; i < G * a.hd; i += ATT_THREADS) q_s[i] = i < hv * a.hd ? qh[i] : 0.0f;
    __syncthreads(); /* q_s is read by every warp */

    float cm[G], cl[G], cacc[G][ACC];
    if constexpr (SPLIT) {
        for (int ci = blockIdx.z; ci < nck; ci += gridDim.z) {
            int j0 = first + ci * ATT_CHUNK, cnt = last + 1 - j0 < ATT_CHUNK ? last + 1 - j0 : ATT_CHUNK;
            att_chunk<T, G, ACC>(q_s, p_s, ml_s, kb, vb, a.kv_dim, a.hd, a.scale, j0, cnt, cm, cl, cacc);
#pragma unroll
            for (int g = 0; g < G; g++) {
                if (g >= hv) break;
                size_t pr = (row0 + g) * (size_t)a.nchb + (size_t)ci; /* ci < nck <= nchb: att_span */
                if (tid == 0) {
                    a.part_ml[2 * pr] = cm[g];
                    a.part_ml[2 * pr + 1] = cl[g];
                }
#pragma unroll
                for (int r = 0; r < ACC; r++)
                    if (tid + r * ATT_THREADS < a.hd) a.part_acc[pr * a.hd + tid + r * ATT_THREADS] = cacc[g][r];
            }
        }
    } else {
        float m[G], l[G], acc[G][ACC];
#pragma unroll
        for (int g = 0; g < G; g++) {
            m[g] = -INFINITY;
            l[g] = 0.0f;
#pragma unroll
            for (int r = 0; r < ACC; r++) acc[g][r] = 0.0f;
        }
        for (int ci = 0; ci < nck; ci++) {
            int j0 = first + ci * ATT_CHUNK, cnt = last + 1 - j0 < ATT_CHUNK ? last + 1 - j0 : ATT_CHUNK;
            att_chunk<T, G, ACC>(q_s, p_s, ml_s, kb, vb, a.kv_dim, a.hd, a.scale, j0, cnt, cm, cl, cacc);
#pragma unroll
            for (int g = 0; g < G; g++) {
                float ea, eb;
                att_fold(&m[g], &l[g], cm[g], cl[g], &ea, &eb);
#pragma unroll
                for (int r = 0; r < ACC; r++) acc[g][r] = att_fold_acc(acc[g][r], cacc[g][r], ea, eb);
            }
        }
#pragma unroll
        for (int g = 0; g < G; g++) {
            if (g >= hv) break;
#pragma unroll
            for (int r = 0; r < ACC; r++)
                if (tid + r * ATT_THREADS < a.hd)
                    a.out[(row0 + g) * a.hd + tid + r * ATT_THREADS] = __fdiv_rn(acc[g][r], l[g]);
        }
    }
}

/* grid (n tokens, n_heads), block ATT_THREADS: the split partials of each (token, head) folded in
 * chunk order, as the unsplit kernel folds them. */
__global__ static void __launch_bounds__(ATT_THREADS) k_att_combine(const struct att_args a)
{
    int first = 0, nck = att_span(a.seq[blockIdx.x], a.pos[blockIdx.x], a.window, a.pos_max, &first);
    size_t row = (size_t)blockIdx.x * a.n_heads + blockIdx.y;
    const float *ml = a.part_ml + 2 * row * (size_t)a.nchb, *pa = a.part_acc + row * (size_t)a.nchb * a.hd;
    for (int d = threadIdx.x; d < a.hd; d += ATT_THREADS) {
        float m = -INFINITY, l = 0.0f, acc = 0.0f;
        for (int ci = 0; ci < nck; ci++) {
            float ea, eb;
            att_fold(&m, &l, ml[2 * ci], ml[2 * ci + 1], &ea, &eb);
            acc = att_fold_acc(acc, pa[(size_t)ci * a.hd + d], ea, eb);
        }
        a.out[row * a.hd + d] = nck ? __fdiv_rn(acc, l) : NAN;
    }
}

template <typename T, int G, int ACC>
static enum moe_status att_launch(struct moe_cuda_ctx *c, const struct att_args &a, int n, int groups, int splits)
{
    enum moe_status st = MOE_OK;
    size_t smem = ((size_t)G * (size_t)a.hd + (size_t)G * ATT_CHUNK + 2 * G) * sizeof(float); /* <= 28.1 KiB */
    if (splits > 1) {
        k_att<T, G, ACC, true><<<dim3((unsigned)n, (unsigned)groups, (unsigned)splits), ATT_THREADS, smem,
                                 c->stream>>>(a);
        CK_LAUNCH(c);
        k_att_combine<<<dim3((unsigned)n, (unsigned)a.n_heads), ATT_THREADS, 0, c->stream>>>(a);
    } else {
        k_att<T, G, ACC, false><<<dim3((unsigned)n, (unsigned)groups), ATT_THREADS, smem, c->stream>>>(a);
    }
    CK_LAUNCH(c);
out:
    return st;
}

template <typename T, int G>
static enum moe_status att_launch_acc(struct moe_cuda_ctx *c, const struct att_args &a, int n, int groups, int splits)
{
    if (a.hd <= 2 * ATT_THREADS) return att_launch<T, G, 2>(c, a, n, groups, splits);
    return att_launch<T, G, ATT_MAX_ACC>(c, a, n, groups, splits);
}

template <typename T>
static enum moe_status att_launch_group(struct moe_cuda_ctx *c, const struct att_args &a, int G, int n, int groups,
                                        int splits)
{
    switch (G) {
    case 1: return att_launch_acc<T, 1>(c, a, n, groups, splits);
    case 2: return att_launch_acc<T, 2>(c, a, n, groups, splits);
    case 4: return att_launch_acc<T, 4>(c, a, n, groups, splits);
    default: return att_launch_acc<T, ATT_MAX_GROUP>(c, a, n, groups, splits);
    }
}

extern "C" enum moe_status moe_cuda_ctx_set_attn_splits(struct moe_cuda_ctx *c, int splits)
{
    if (splits < 0) return moe_errorf(MOE_EINVAL, "attention splits %d: 0 (auto), 1 (never) or more", splits);
    c->attn_splits = splits;
    return MOE_OK;
}

/* Blocks per (token, head group) for a call, 1 = unsplit; the workspace holds the partials.
 * Auto: split while the unsplit grid would give the device fewer than ATT_FILL blocks per SM and a
 * row may span several chunks, into enough blocks to reach that (at most one per chunk); when
 * the partials do not fit the workspace it runs unsplit (the same bits, slower; logged once).  A
 * count set with moe_cuda_ctx_set_attn_splits is used whenever a row may span several chunks;
 * MOE_ENOMEM when its partials do not fit. */
static enum moe_status att_splits(struct moe_cuda_ctx *c, struct att_args *a, int n, int groups, int *splits)
{
    int want = c->attn_splits;
    size_t blocks = (size_t)n * (size_t)groups, target = (size_t)ATT_FILL * (size_t)c->sms;
    *splits = 1;
    if (a->nchb < 2 || want == 1 || (want == 0 && blocks >= target)) return MOE_OK;
    if (want == 0) want = (int)((target + blocks - 1) / blocks); /* >= 2; target is small */
    if (want > a->nchb) want = a->nchb;
    if (want > (int)MAX_GRID) want = (int)MAX_GRID;
    /* the partials: (m, l) then acc of every (token, head, chunk), F32; estimated in double first,
     * so that no size_t product can wrap.  est counts a full 256 bytes of alignment where the exact
     * size pads (m, l) by less, so it is only the overflow guard: the exact size decides */
    double est = (double)n * (double)a->n_heads * (double)a->nchb * ((double)a->hd + 2.0) * 4.0 + 256.0;
    size_t ml_bytes = 0, need = (size_t)-1;
    if (est <= (double)c->ws_bytes + 256.0) {
        size_t cells = (size_t)n * (size_t)a->n_heads * (size_t)a->nchb;
        ml_bytes = (cells * 2 * sizeof(float) + 255) & ~(size_t)255;
        need = ml_bytes + cells * (size_t)a->hd * sizeof(float);
    }
    if (need > c->ws_bytes) {
        size_t mib = need == (size_t)-1 ? (size_t)(est / 1048576.0) + 1 : (need >> 20) + 1;
        if (c->attn_splits == 0) {
            if (!c->attn_split_noted)
                MOE_INFO("attention: splitting %d tokens x %d heads over %d chunks would need %zu MiB of CUDA "
                         "workspace (workspace_bytes is %zu MiB): such calls run unsplit (the same result, "
                         "slower); raise workspace_bytes to split them", n, a->n_heads, a->nchb, mib,
                         c->ws_bytes >> 20);
            c->attn_split_noted = true;
            return MOE_OK;
        }
        return moe_errorf(MOE_ENOMEM, "attention: %d splits of %d tokens x %d heads (head_dim %d, up to %d chunks "
                          "of %d positions) need %zu MiB of CUDA workspace but workspace_bytes is %zu MiB: raise "
                          "workspace_bytes or let the split be chosen (0)", want, n, a->n_heads, a->hd, a->nchb,
                          ATT_CHUNK, mib, c->ws_bytes >> 20);
    }
    a->part_ml = (float *)c->ws;
    a->part_acc = (float *)((char *)c->ws + ml_bytes);
    *splits = want;
    return MOE_OK;
}

extern "C" enum moe_status moe_cuda_attention(struct moe_cuda_ctx *c, const float *d_q, const void *d_kcache,
                                              const void *d_vcache, enum moe_dtype cdt, const int *d_seq,
                                              const int *d_pos, int n, int pos_max, int n_heads, int n_kv_heads,
                                              int head_dim, int max_ctx, int window, float scale, float *d_out)
{
    enum moe_status st = MOE_OK;
    if (n < 0 || n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads || head_dim <= 0 ||
        head_dim > ATT_MAX_HD || max_ctx <= 0 || n_heads > (int)MAX_GRID || window < 0)
        return moe_errorf(MOE_EINVAL, "attention: n %d, heads %d, kv heads %d (must divide heads), "
                          "head_dim %d (<= %d), max_ctx %d, window %d", n, n_heads, n_kv_heads, head_dim,
                          ATT_MAX_HD, max_ctx, window);
    if ((st = cache_dtype_ok("attention", cdt)) != MOE_OK) return st;
    if (n == 0) return MOE_OK;
    if (pos_max < 0 || pos_max >= max_ctx)
        return moe_errorf(MOE_EINVAL, "attention: pos_max %d outside the cache's positions 0..%d: pass the "
                          "call's largest position", pos_max, max_ctx - 1);
    /* G: query heads per block, a power of two (a ratio of 6 takes 8 with 2 idle: one pass over
     * the rows instead of 3 of 2) */
    int ratio = n_heads / n_kv_heads, G = 1;
    while (G < ratio && G < ATT_MAX_GROUP) G *= 2;
    /* the positions a valid row spans at most: its window, or all up to pos_max */
    int span = window > 0 && window <= pos_max ? window : pos_max + 1, splits = 1;
    struct att_args a = {};
    a.q = d_q;
    a.kc = d_kcache;
    a.vc = d_vcache;
    a.seq = d_seq;
    a.pos = d_pos;
    a.n_heads = n_heads;
    a.hd = head_dim;
    a.max_ctx = max_ctx;
    a.window = window;
    a.pos_max = pos_max;
    a.ratio = ratio;
    a.gpk = (ratio + G - 1) / G;
    a.nchb = (span - 1) / ATT_CHUNK + 1;
    a.kv_dim = (size_t)n_kv_heads * (size_t)head_dim;
    a.scale = scale;
    a.out = d_out;
    int groups = n_kv_heads * a.gpk; /* <= n_heads <= MAX_GRID */
    if ((st = att_splits(c, &a, n, groups, &splits)) != MOE_OK) return st;
    if (cdt == MOE_DT_F32) return att_launch_group<float>(c, a, G, n, groups, splits);
    return att_launch_group<__nv_bfloat16>(c, a, G, n, groups, splits);
}

/* ---- router --------------------------------------------------------------- */

#define ROUTER_MAX_E 1024
#define ROUTER_MAX_K 32

/* One thread per token: E and k are small; the sequential scan gives the
 * same tie-breaking as the C twin (strictly greater wins: lower id on ties;
 * NaN is never chosen while a non-NaN remains). */
__global__ static void k_router(const float *logits, int n, int E, int k, bool softmax_first,
                                bool norm_topk, int *ids, float *weights)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    const float *lg = logits + (size_t)t * E;
    unsigned taken[ROUTER_MAX_E / 32];
    float sel[ROUTER_MAX_K];
    for (int i = 0; i < (E + 31) / 32; i++) taken[i] = 0;
    for (int s = 0; s < k; s++) {
        int bi = -1;
        float bv = -INFINITY;
        for (int e = 0; e < E; e++) {
            if (taken[e >> 5] & (1u << (e & 31))) continue;
            float v = lg[e];
            if (bi < 0 ? !isnan(v) : v > bv) { bi = e; bv = v; }
        }
        if (bi < 0) /* only NaN left: lowest free id */
            for (int e = 0; e < E && bi < 0; e++)
                if (!(taken[e >> 5] & (1u << (e & 31)))) bi = e;
        taken[bi >> 5] |= 1u << (bi & 31);
        ids[(size_t)t * k + s] = bi;
        sel[s] = lg[bi];
    }
    float mx = -INFINITY, sum = 0.0f;
    if (softmax_first) {
        for (int e = 0; e < E; e++) mx = fmaxf(mx, lg[e]);
        for (int e = 0; e < E; e++) sum += expf(lg[e] - mx);
    } else {
        for (int s = 0; s < k; s++) mx = fmaxf(mx, sel[s]);
        for (int s = 0; s < k; s++) sum += expf(sel[s] - mx);
    }
    float tot = 0.0f;
    for (int s = 0; s < k; s++) {
        sel[s] = expf(sel[s] - mx) / sum;
        tot += sel[s];
    }
    for (int s = 0; s < k; s++)
        weights[(size_t)t * k + s] = (softmax_first && norm_topk) ? sel[s] / tot : sel[s];
}

extern "C" enum moe_status moe_cuda_router(struct moe_cuda_ctx *c, const float *d_logits, int n, int E,
                                           int k, bool softmax_first, bool norm_topk, int *d_ids,
                                           float *d_weights)
{
    enum moe_status st = MOE_OK;
    if (n < 0 || E <= 0 || E > ROUTER_MAX_E || k <= 0 || k > ROUTER_MAX_K || k > E)
        return moe_errorf(MOE_EINVAL, "router: n %d, experts %d (<= %d), top_k %d (1..%d, <= experts)",
                          n, E, ROUTER_MAX_E, k, ROUTER_MAX_K);
    if (n == 0) return MOE_OK;
    k_router<<<(unsigned)((n + 63) / 64), 64, 0, c->stream>>>(d_logits, n, E, k, softmax_first,
                                                              norm_topk, d_ids, d_weights);
    CK_LAUNCH(c);
out:
    return st;
}

#define ROUTER_MAX_GROUPS 64

/* Index of the largest of x[0..n) not in `taken` (bit set) and not skip, as
 * the C twin's top-k scan picks it: strictly greater wins (ties to the lower
 * index), NaN only while nothing else is left. */
__device__ static int pick_max(const float *x, int n, const unsigned *taken, int skip = -1)
{
    int best = -1;
    for (int e = 0; e < n; e++) {
        if (e == skip || (taken && (taken[e >> 5] & (1u << (e & 31))))) continue;
        if (best < 0 || x[e] > x[best] || (isnan(x[best]) && !isnan(x[e]))) best = e;
    }
    return best;
}

/* A grouped router thread's scratch in shared memory, in 4-byte words: its scores, their choice
 * values, the groups' scores and the taken bits.  (As per-thread arrays of the largest E they
 * took 8.8 KB of stack, which the driver reserves for every thread the device can hold.) */
__host__ __device__ static inline int router_scratch_words(int E) { return 2 * E + ROUTER_MAX_GROUPS + (E + 31) / 32; }

/* The grouped routers (V3: sigmoid scores plus bias, groups by their two
 * largest; V2: softmax scores, groups by their largest; ERNIE-4.5: softmax
 * scores plus bias, one group), one thread per token, in the C twin's order of
 * operations (kernels/backend.h, router_grouped). */
__global__ static void k_router_grouped(const float *logits, const float *bias, int n, int E, int k, int scores,
                                        int n_group, int topk_group, bool renorm, float scale, int *ids,
                                        float *weights)
{
    extern __shared__ float router_smem[];
    bool softmax = scores != MOE_CUDA_SCORES_SIGMOID, ernie = scores == MOE_CUDA_SCORES_SOFTMAX_BIAS;
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    const float *lg = logits + (size_t)t * E;
    float *s = router_smem + (size_t)threadIdx.x * router_scratch_words(E), *c = s + E, *gs = c + E;
    unsigned *taken = (unsigned *)(gs + ROUTER_MAX_GROUPS), gtaken[ROUTER_MAX_GROUPS / 32 + 1];
    int per = E / n_group, id[ROUTER_MAX_K];
    if (softmax) {
        float m = lg[pick_max(lg, E, NULL)], sum = 0.0f;
        for (int e = 0; e < E; e++) sum += (s[e] = expf(lg[e] - m));
        for (int e = 0; e < E; e++) c[e] = (s[e] /= sum) + (ernie ? bias[e] : 0.0f);
    } else {
        for (int e = 0; e < E; e++) {
            s[e] = 1.0f / (1.0f + expf(-lg[e]));
            c[e] = s[e] + bias[e];
        }
    }
    for (int g = 0; g < n_group; g++) {
        int a = pick_max(c + g * per, per, NULL);
        if (softmax) {
            gs[g] = c[g * per + a];
            continue;
        }
        int b = pick_max(c + g * per, per, NULL, a);
        gs[g] = c[g * per + a] + c[g * per + b];
    }
    for (int i = 0; i < ROUTER_MAX_GROUPS / 32 + 1; i++) gtaken[i] = 0;
    for (int q = 0; q < topk_group; q++) {
        int g = pick_max(gs, n_group, gtaken);
        gtaken[g >> 5] |= 1u << (g & 31);
    }
    for (int g = 0; g < n_group; g++)
        if (!(gtaken[g >> 5] & (1u << (g & 31))))
            for (int e = g * per; e < (g + 1) * per; e++) c[e] = 0.0f;
    for (int i = 0; i < (E + 31) / 32; i++) taken[i] = 0;
    for (int r = 0; r < k; r++) {
        id[r] = pick_max(c, E, taken);
        taken[id[r] >> 5] |= 1u << (id[r] & 31);
    }
    for (int r = 1; r < k; r++) /* by descending weight, ties to the lower id */
        for (int q = r; q > 0; q--) {
            int x = id[q - 1], y = id[q];
            if (s[y] < s[x] || (s[y] == s[x] && y > x)) break;
            id[q - 1] = y;
            id[q] = x;
        }
    float sum = 0.0f;
    for (int r = 0; r < k; r++) sum += s[id[r]];
    float div = ernie ? fmaxf(sum, MOE_ERNIE_NORM_MIN) : sum + 1e-20f;
    for (int r = 0; r < k; r++) {
        ids[(size_t)t * k + r] = id[r];
        weights[(size_t)t * k + r] = (renorm ? s[id[r]] / div : s[id[r]]) * scale;
    }
}

extern "C" enum moe_status moe_cuda_router_grouped(struct moe_cuda_ctx *c, const float *d_logits,
                                                   const float *d_bias, int n, int E, int k, int scores,
                                                   int n_group, int topk_group, bool renorm, float scale,
                                                   int *d_ids, float *d_weights)
{
    enum moe_status st = MOE_OK;
    bool softmax = scores != MOE_CUDA_SCORES_SIGMOID, biased = scores != MOE_CUDA_SCORES_SOFTMAX;
    int min_per = softmax ? 1 : 2;
    if (n < 0 || E <= 0 || E > ROUTER_MAX_E || k <= 0 || k > ROUTER_MAX_K || k > E || n_group <= 0 ||
        n_group > ROUTER_MAX_GROUPS || E % n_group || E / n_group < min_per || topk_group <= 0 ||
        topk_group > n_group || (biased && !d_bias) || scores < MOE_CUDA_SCORES_SIGMOID ||
        scores > MOE_CUDA_SCORES_SOFTMAX_BIAS || (scores == MOE_CUDA_SCORES_SOFTMAX_BIAS && n_group != 1))
        return moe_errorf(MOE_EINVAL, "router_grouped: scores %d, n %d, experts %d (<= %d), top_k %d (1..%d), %d "
                          "groups (<= %d, of %d or more experts; one for ERNIE's scores), %d kept%s", scores, n, E,
                          ROUTER_MAX_E, k, ROUTER_MAX_K, n_group, ROUTER_MAX_GROUPS, min_per, topk_group,
                          biased && !d_bias ? ", no bias" : "");
    if (n == 0) return MOE_OK;
    /* tokens per block: as many as 32 KiB of scratch holds (3 at 1024 experts, 14 at 256), at most 32 */
    int words = router_scratch_words(E), per_block = 32768 / (words * 4);
    per_block = per_block < 1 ? 1 : per_block > 32 ? 32 : per_block;
    k_router_grouped<<<(unsigned)((n + per_block - 1) / per_block), (unsigned)per_block,
                       (size_t)per_block * (size_t)words * 4, c->stream>>>(d_logits, d_bias, n, E, k, scores, n_group,
                                                                            topk_group, renorm, scale, d_ids, d_weights);
    CK_LAUNCH(c);
out:
    return st;
}

/* ---- permute / combine ---------------------------------------------------- */

__global__ static void k_copy_blocks(const float *x, int x_row, int x_group, float *y, int y_row, int y_group,
                                     int rows, int groups, int width)
{
    size_t total = (size_t)rows * (size_t)groups * (size_t)width;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t j = i % (size_t)width, g = i / (size_t)width % (size_t)groups, r = i / ((size_t)width * groups);
        y[r * (size_t)y_row + g * (size_t)y_group + j] = x[r * (size_t)x_row + g * (size_t)x_group + j];
    }
}

extern "C" enum moe_status moe_cuda_copy_blocks(struct moe_cuda_ctx *c, const float *d_x, int x_row, int x_group,
                                                float *d_y, int y_row, int y_group, int rows, int groups,
                                                int width)
{
    enum moe_status st = MOE_OK;
    if (rows < 0 || groups < 0 || width < 0 || x_row < 0 || x_group < 0 || y_row < 0 || y_group < 0)
        return moe_errorf(MOE_EINVAL, "copy_blocks: rows %d, groups %d, width %d, strides %d %d %d %d", rows,
                          groups, width, x_row, x_group, y_row, y_group);
    size_t total = (size_t)rows * (size_t)groups * (size_t)width;
    if (total == 0) return MOE_OK;
    k_copy_blocks<<<moe_cuda_blocks(total, 256, 8192), 256, 0, c->stream>>>(d_x, x_row, x_group, d_y, y_row,
                                                                             y_group, rows, groups, width);
    CK_LAUNCH(c);
out:
    return st;
}

/* An FP8 record (model.h: rows x cols codes, then the block factors as unaligned little-endian F32)
 * as its BF16 values: code value x factor in F32 by fp8.h's rule (the host's: the GPU's multiply
 * alone gives other NaN bits), rounded to BF16, bit for bit as on the host. */
__global__ static void k_fp8_record_decode(const unsigned char *rec, int rows, int cols, int br, int bc,
                                           unsigned short *out)
{
    /* blocks of rows (y) x columns (x): a row's factor row is found once, a column's factor by one
     * 32-bit division */
    int sc = (cols + bc - 1) / bc;
    const unsigned char *fac = rec + (size_t)rows * (size_t)cols;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const unsigned char *code = rec + (size_t)r * (size_t)cols, *rf = fac + 4 * (size_t)(r / br) * (size_t)sc;
        unsigned short *o = out + (size_t)r * (size_t)cols;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
            const unsigned char *fp = rf + 4 * (c / bc);
            float f = __uint_as_float((unsigned)fp[0] | (unsigned)fp[1] << 8 | (unsigned)fp[2] << 16 |
                                      (unsigned)fp[3] << 24);
            o[c] = f32_to_bf16_bits(moe_fp8_scaled(moe_fp8_e4m3_value(code[c]), f));
        }
    }
}

extern "C" enum moe_status moe_cuda_fp8_record_decode(struct moe_cuda_ctx *c, void *stream, const void *d_rec,
                                                      long long rows, long long cols, int br, int bc, void *d_out)
{
    enum moe_status st = MOE_OK;
    if (rows <= 0 || cols <= 0 || rows > INT_MAX || cols > INT_MAX || br <= 0 || bc <= 0 || !d_rec || !d_out)
        return moe_errorf(MOE_EINVAL, "fp8_record_decode: rows %lld, cols %lld (each 1..%d), blocks %d x %d", rows,
                          cols, INT_MAX, br, bc);
    dim3 grid((unsigned)((cols + 255) / 256 < 1024 ? (cols + 255) / 256 : 1024),
              (unsigned)(rows < 65535 ? rows : 65535));
    k_fp8_record_decode<<<grid, 256, 0, (cudaStream_t)stream>>>((const unsigned char *)d_rec, (int)rows, (int)cols,
                                                                br, bc, (unsigned short *)d_out);
    CK_LAUNCH(c);
out:
    return st;
}

__global__ static void k_gather_rows(const float *x, const int *rows, int n_rows, int dim, float *out)
{
    size_t total = (size_t)n_rows * (size_t)dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / (size_t)dim, d = i % (size_t)dim;
        out[i] = x[(size_t)rows[r] * (size_t)dim + d];
    }
}

extern "C" enum moe_status moe_cuda_gather_rows(struct moe_cuda_ctx *c, const float *d_x,
                                                const int *d_rows, int n_rows, int dim, float *d_out)
{
    enum moe_status st = MOE_OK;
    size_t total = (size_t)n_rows * (size_t)dim;
    if (n_rows < 0 || dim <= 0) return moe_errorf(MOE_EINVAL, "gather_rows: rows %d, dim %d", n_rows, dim);
    if (total == 0) return MOE_OK;
    k_gather_rows<<<moe_cuda_blocks(total, 256, 8192), 256, 0, c->stream>>>(d_x, d_rows, n_rows, dim,
                                                                             d_out);
    CK_LAUNCH(c);
out:
    return st;
}

__global__ static void k_combine(const float *y, const int *inv, const float *w, int n, int k, int dim,
                                 bool accumulate, float *out)
{
    size_t total = (size_t)n * (size_t)dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / (size_t)dim, d = i % (size_t)dim;
        float acc = 0.0f;
        for (int s = 0; s < k; s++)
            acc += w[t * k + s] * y[(size_t)inv[t * k + s] * (size_t)dim + d];
        out[i] = accumulate ? out[i] + acc : acc;
    }
}

extern "C" enum moe_status moe_cuda_moe_combine(struct moe_cuda_ctx *c, const float *d_y,
                                                const int *d_inv, const float *d_w, int n, int k,
                                                int dim, bool accumulate, float *d_out)
{
    enum moe_status st = MOE_OK;
    size_t total = (size_t)n * (size_t)dim;
    if (n < 0 || k <= 0 || dim <= 0)
        return moe_errorf(MOE_EINVAL, "moe_combine: n %d, k %d, dim %d", n, k, dim);
    if (total == 0) return MOE_OK;
    k_combine<<<moe_cuda_blocks(total, 256, 8192), 256, 0, c->stream>>>(d_y, d_inv, d_w, n, k, dim,
                                                                         accumulate, d_out);
    CK_LAUNCH(c);
out:
    return st;
}

/* ---- SwiGLU and gates ----------------------------------------------------- */

__device__ static inline float silu(float g) { return g / (1.0f + expf(-g)); }

__global__ static void k_swiglu(const float *g, const float *u, float *o, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        o[i] = silu(g[i]) * u[i];
}

/* Internal: SwiGLU straight to BF16 for the down projection's input. */
__global__ static void k_swiglu_bf16(const float *g, const float *u, __nv_bfloat16 *o, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        o[i] = to_bf16(silu(g[i]) * u[i]);
}

extern "C" enum moe_status moe_cuda_swiglu_bf16_(struct moe_cuda_ctx *c, const float *d_gate,
                                                 const float *d_up, void *d_out, size_t n)
{
    enum moe_status st = MOE_OK;
    if (n == 0) return MOE_OK;
    k_swiglu_bf16<<<moe_cuda_blocks(n, 256, 8192), 256, 0, c->stream>>>(d_gate, d_up,
                                                                         (__nv_bfloat16 *)d_out, n);
    CK_LAUNCH(c);
out:
    return st;
}

extern "C" enum moe_status moe_cuda_swiglu(struct moe_cuda_ctx *c, const float *d_gate, const float *d_up,
                                           float *d_out, size_t n)
{
    enum moe_status st = MOE_OK;
    if (n == 0) return MOE_OK;
    k_swiglu<<<moe_cuda_blocks(n, 256, 8192), 256, 0, c->stream>>>(d_gate, d_up, d_out, n);
    CK_LAUNCH(c);
out:
    return st;
}

__global__ static void k_sigmoid_scale_add(const float *s, const float *y, int n, int dim, float *out)
{
    size_t total = (size_t)n * (size_t)dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / (size_t)dim;
        out[i] += y[i] / (1.0f + expf(-s[t]));
    }
}

extern "C" enum moe_status moe_cuda_sigmoid_scale_add(struct moe_cuda_ctx *c, const float *d_s,
                                                      const float *d_y, int n, int dim, float *d_out)
{
    enum moe_status st = MOE_OK;
    size_t total = (size_t)n * (size_t)dim;
    if (n < 0 || dim <= 0) return moe_errorf(MOE_EINVAL, "sigmoid_scale_add: n %d, dim %d", n, dim);
    if (total == 0) return MOE_OK;
    k_sigmoid_scale_add<<<moe_cuda_blocks(total, 256, 8192), 256, 0, c->stream>>>(d_s, d_y, n, dim,
                                                                                   d_out);
    CK_LAUNCH(c);
out:
    return st;
}

/* ---- argmax ------------------------------------------------------------------ */

#define AM_THREADS 256

__global__ static void __launch_bounds__(AM_THREADS)
k_argmax(const float *logits, int vocab, int *out)
{
    __shared__ float bv_s[AM_THREADS];
    __shared__ int bi_s[AM_THREADS];
    const float *row = logits + (size_t)blockIdx.x * (size_t)vocab;
    float bv = -INFINITY;
    int bi = -1;
    for (int i = threadIdx.x; i < vocab; i += AM_THREADS) {
        float v = row[i];
        if (isnan(v)) continue;
        if (bi < 0 || v > bv) { bv = v; bi = i; } /* ascending i per thread: first max kept */
    }
    bv_s[threadIdx.x] = bv;
    bi_s[threadIdx.x] = bi;
    __syncthreads();
    for (int s = AM_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = bv_s[threadIdx.x + s];
            int oi = bi_s[threadIdx.x + s];
            int mi = bi_s[threadIdx.x];
            float mv = bv_s[threadIdx.x];
            if (oi >= 0 && (mi < 0 || ov > mv || (ov == mv && oi < mi))) {
                bv_s[threadIdx.x] = ov;
                bi_s[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = bi_s[0] < 0 ? 0 : bi_s[0];
}

extern "C" enum moe_status moe_cuda_argmax(struct moe_cuda_ctx *c, const float *d_logits, int rows,
                                           int vocab, int *d_out)
{
    enum moe_status st = MOE_OK;
    if (rows < 0 || vocab <= 0) return moe_errorf(MOE_EINVAL, "argmax: rows %d, vocab %d", rows, vocab);
    if (rows == 0) return MOE_OK;
    k_argmax<<<(unsigned)rows, AM_THREADS, 0, c->stream>>>(d_logits, vocab, d_out);
    CK_LAUNCH(c);
out:
    return st;
}
