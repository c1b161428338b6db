/* CUDA backend: plain-C launchers over device pointers.
 *
 * Every function here is callable from C11; no CUDA header is needed to use
 * it.  Streams are passed as `void *` (a cudaStream_t, NULL = the context's
 * stream).  All pointers named d_* are device pointers; h_* are host.
 * Activations are F32 row-major; matrix weights are BF16 (or F32) row-major as
 * in Hugging Face checkpoints ([out_features, in_features]); accumulation is
 * always F32.  Launchers validate sizes and return a status; they never abort.
 *
 * Each op has a plain C twin in the CPU backend (kernels/cpu); tests/gpu
 * compares them on random and adversarial inputs. */
#ifndef MOE_CUDA_OPS_H
#define MOE_CUDA_OPS_H

#include "../../common/moe.h"
#include "../../model/safetensors.h" /* enum moe_dtype */
#include "../moe_plan.h"             /* the permutation gather_rows and moe_combine take */

#ifdef __cplusplus
extern "C" {
#endif

/* ---- device and context ------------------------------------------------ */

/* Number of usable CUDA devices; 0 when there is no driver or no device
 * (never an error: callers skip GPU work then). */
int moe_cuda_device_count(void);

enum moe_cuda_gemm_mode {
    MOE_CUDA_GEMM_INVARIANT, /* default: own tiled kernel for linear layers and the expert FFN (one
                              grouped launch for gate and up of all experts, one SwiGLU, one grouped
                              launch for down), F32 activations (no BF16 rounding) and a fixed
                              reduction order: a row's result is independent of the rows around it
                              (the backend seam's batch invariance) and of how experts are grouped
                              or chunked; slower than cuBLAS */
    MOE_CUDA_GEMM_LOOP,    /* cuBLAS, activations rounded to BF16: one cublasGemmEx per expert
                              (results independent of how groups are split across calls, not of
                              batch size, nor when one expert's rows exceed the workspace and
                              are split into row chunks) */
    MOE_CUDA_GEMM_GROUPED, /* cuBLAS, one cublasGemmGroupedBatchedEx per projection.  Needs a
                              type combination that call supports (16BF->16BF, 16F->16F,
                              32F->32F): F32 weights run grouped; BF16 weights with our F32
                              outputs do not exist there, so the first call is refused and the
                              context switches to LOOP for good (logged once, at info level;
                              moe_cuda_ctx_gemm_mode() then says LOOP) */
};
/* In the cuBLAS modes, linear layers with at most this many outputs (routers,
 * gates, small projections) still use the F32 kernel: routing decisions are
 * discrete and BF16-rounded router inputs flip near-tied experts. */
#define MOE_CUDA_F32_LINEAR_MAX_OUT 1024

struct moe_cuda_params {
    int device;                 /* CUDA device ordinal */
    size_t workspace_bytes;     /* scratch for bf16 casts and GEMM intermediates (0 = 64 MiB) */
    enum moe_cuda_gemm_mode gemm_mode;
};

struct moe_cuda_ctx;

/* Select the device, create the compute stream, cuBLAS handle and workspace.
 * NULL with moe_last_error() set (no device, or the workspace does not fit:
 * the message names workspace_bytes). */
struct moe_cuda_ctx *moe_cuda_ctx_create(const struct moe_cuda_params *p);
void moe_cuda_ctx_destroy(struct moe_cuda_ctx *c);
void *moe_cuda_ctx_stream(const struct moe_cuda_ctx *c);  /* cudaStream_t */
int moe_cuda_ctx_device(const struct moe_cuda_ctx *c);
/* True once a sticky error (illegal address, launch failure, ECC, ...) was
 * seen: the CUDA context is unusable; the process must fail what is in
 * flight, turn readiness off and exit non-zero. */
bool moe_cuda_ctx_poisoned(const struct moe_cuda_ctx *c);
/* Record a sticky error seen outside the context's own calls (the GPU expert
 * tier's copy stream), so moe_cuda_ctx_poisoned() and
 * moe_backend_cuda_poisoned() report it. */
void moe_cuda_ctx_mark_poisoned(struct moe_cuda_ctx *c);
/* Make the context's device current on the calling thread (cudaSetDevice only
 * when another device is current; cudaGetDevice is a thread-local read).
 * The launchers below use whatever device is current: the backend op table
 * (cuda_backend.h) and the GPU expert tier call this at every entry, so the
 * engine may run them on any thread. */
enum moe_status moe_cuda_ctx_bind(struct moe_cuda_ctx *c);
/* The same for a teardown (moe_cuda_ctx_destroy, moe_cuda_tier_destroy), poisoned
 * context or not: the frees and destroys that follow act on the current
 * device's context, another GPU's when another is current.  Records no error
 * (moe_last_error() keeps the one being reported); a sticky error it meets
 * marks the context poisoned, so the teardown does not wait on its streams. */
void moe_cuda_ctx_bind_teardown(struct moe_cuda_ctx *c);
/* Wait for the context's stream; MOE_EDEVICE on an asynchronous error, MOE_EDEVLOST on a sticky one. */
enum moe_status moe_cuda_ctx_sync(struct moe_cuda_ctx *c);
/* Which GEMM path expert_ffn really uses (GROUPED may have fallen back). */
enum moe_cuda_gemm_mode moe_cuda_ctx_gemm_mode(const struct moe_cuda_ctx *c);

/* Device memory.  alloc returns MOE_ENOMEM naming `what` and the size. */
enum moe_status moe_cuda_alloc(struct moe_cuda_ctx *c, void **d_ptr, size_t bytes, const char *what);
void moe_cuda_free(struct moe_cuda_ctx *c, void *d_ptr);
enum moe_status moe_cuda_memset(struct moe_cuda_ctx *c, void *d_ptr, int byte, size_t bytes);
/* Free and total bytes of the context's device. */
enum moe_status moe_cuda_mem_info(struct moe_cuda_ctx *c, size_t *free_bytes, size_t *total_bytes);
/* Pinned host memory (cudaHostAlloc, portable); when pinning fails, pageable
 * malloc memory with a warning and *pinned = false.  MOE_ENOMEM when neither. */
enum moe_status moe_cuda_host_alloc(void **h_ptr, size_t bytes, bool *pinned);
void moe_cuda_host_free(void *h_ptr, bool pinned);
/* Asynchronous copies on the context's stream (host memory should be pinned
 * for overlap; pageable works but synchronises). */
enum moe_status moe_cuda_h2d(struct moe_cuda_ctx *c, void *d_dst, const void *h_src, size_t bytes);
enum moe_status moe_cuda_d2h(struct moe_cuda_ctx *c, void *h_dst, const void *d_src, size_t bytes);
enum moe_status moe_cuda_d2d(struct moe_cuda_ctx *c, void *d_dst, const void *d_src, size_t bytes);

/* ---- conversions and elementwise -------------------------------------- */

/* d_out[i] = bf16(d_in[i]) (round to nearest even, NaN kept), n elements. */
enum moe_status moe_cuda_f32_to_bf16(struct moe_cuda_ctx *c, const float *d_in, uint16_t *d_out,
                                     size_t n);
enum moe_status moe_cuda_bf16_to_f32(struct moe_cuda_ctx *c, const uint16_t *d_in, float *d_out,
                                     size_t n);
/* d_y[i] += d_x[i], n elements. */
enum moe_status moe_cuda_add(struct moe_cuda_ctx *c, float *d_y, const float *d_x, size_t n);
/* d_y[r, j] += d_b[j]; y [rows, dim], b [dim] F32. */
enum moe_status moe_cuda_add_bias(struct moe_cuda_ctx *c, float *d_y, const float *d_b, int rows,
                                  int dim);

/* ---- model ops ----------------------------------------------------------- */

/* Embedding lookup: d_out[i, :] = table[d_ids[i], :] as F32.
 * table [vocab, hidden] in dtype dt (BF16 or F32).  An id outside [0, vocab)
 * writes a row of NaN (callers validate ids on the host first). */
enum moe_status moe_cuda_embed(struct moe_cuda_ctx *c, const void *d_table, enum moe_dtype dt,
                               int vocab, int hidden, const int *d_ids, int n, float *d_out);

/* RMSNorm over each of `rows` rows of length dim:
 * y = x * rsqrt(mean(x^2) + eps) * w.  x, y [rows, dim] (may alias); w [dim] F32.
 * Used for the layer norms (rows = tokens), Qwen3 q/k head norms (rows =
 * tokens * heads, dim = head_dim) and OLMoE full q/k norms (dim = heads*head_dim). */
enum moe_status moe_cuda_rmsnorm(struct moe_cuda_ctx *c, const float *d_x, const float *d_w,
                                 float *d_y, int rows, int dim, float eps);

/* Rotary embedding, rotate-half (NeoX) layout, in place on the first rot_dim dims of each head
 * of x [n, n_heads, head_dim] (the rest untouched): for i < d/2 (d = rot_dim), angle = (float)pos *
 * h_inv_freq[i] (the table of moe_config_rope, host memory, read before the call returns; computed
 * on the host because device powf differs from glibc's in the last bit), c = cos(angle) * scale,
 * s = sin(angle) * scale, (x_i, x_{i+d/2}) <- (x_i c - x_{i+d/2} s, x_{i+d/2} c + x_i s).
 * d_pos [n] positions.  rot_dim even, <= head_dim and <= 1024. */
enum moe_status moe_cuda_rope_table(struct moe_cuda_ctx *c, float *d_x, const int *d_pos, int n, int n_heads,
                                    int head_dim, int rot_dim, const float *h_inv_freq, float scale);

/* KV cache: [max_seqs, max_ctx, kv_dim] for K and for V in cdt, F32 or BF16 (kv_dim =
 * n_kv*head_dim).  store: cache[seq[i], pos[i], :] = k[i, :] / v[i, :] (BF16: rounded to
 * nearest even).  A row whose position is outside 0..max_ctx-1 or whose sequence is negative
 * writes nothing (the positions are on the device; the CPU backend refuses such a call). */
enum moe_status moe_cuda_kv_store(struct moe_cuda_ctx *c, const float *d_k, const float *d_v,
                                  void *d_kcache, void *d_vcache, enum moe_dtype cdt, const int *d_seq,
                                  const int *d_pos, int n, int max_ctx, int kv_dim);

/* Causal grouped-query attention over the cache, for prefill and batched decode
 * alike: token i (sequence seq[i], position pos[i]) attends to positions
 * 0..pos[i] of its sequence (which must already be stored).  Query head h
 * uses KV head h / (n_heads / n_kv_heads).
 * q [n, n_heads*head_dim]; out [n, n_heads*head_dim]; scale = 1/sqrt(head_dim)
 * usually.  head_dim <= 640 (DeepSeek's latent rows: 576); n_heads % n_kv_heads == 0.  The cache
 * in cdt as moe_cuda_kv_store wrote it (BF16 values widened exactly).  window > 0: only the last
 * `window` positions up to pos (pos - window < j <= pos), 0: all of them.
 * pos_max: the host's bound on the device positions, every pos[i] <= pos_max (the call's largest
 * position); 0 <= pos_max < max_ctx when n > 0, else MOE_EINVAL.  A row whose sequence is negative
 * or whose position is below 0 or above pos_max (so any outside 0..max_ctx-1) gives NaN and reads
 * and writes nothing.
 * Softmax in chunks of 256 positions folded in order; when the call has too few (token, head
 * group) blocks to fill the device, the chunks of a row run in several blocks and a second kernel
 * combines them, with partials in the workspace (n * n_heads * ceil(min(window, pos_max + 1) / 256)
 * * (head_dim + 2) floats, pos_max + 1 for window 0, and up to 256 bytes of alignment; when
 * they do not fit, the call runs unsplit).  A row's result is the same bits either way: it
 * depends neither on the other rows in the call nor on pos_max (for a row within it). */
enum moe_status moe_cuda_attention(struct moe_cuda_ctx *c, const float *d_q, const void *d_kcache,
                                   const void *d_vcache, enum moe_dtype cdt, const int *d_seq, const int *d_pos,
                                   int n, int pos_max, int n_heads, int n_kv_heads, int head_dim, int max_ctx,
                                   int window, float scale, float *d_out);
/* For tests and benchmarks: how many blocks moe_cuda_attention gives each (token, head group)
 * when a row may span more than one chunk.  0 (default): chosen per call as above; 1: never
 * split; k >= 2: k (at most one per chunk), MOE_ENOMEM naming workspace_bytes when the partials
 * do not fit.  The results are the same bits in every setting.  MOE_EINVAL for k < 0. */
enum moe_status moe_cuda_ctx_set_attn_splits(struct moe_cuda_ctx *c, int splits);

/* Router: logits [n, E] -> ids [n, k] and weights [n, k] in descending weight
 * (ties: lower expert id first).
 * softmax_first = false (Mixtral): top-k of the logits, softmax over those k.
 * softmax_first = true (Qwen, OLMoE): softmax over all E, top-k; when
 * norm_topk the k weights are divided by their sum.  E <= 1024, k <= 32. */
enum moe_status moe_cuda_router(struct moe_cuda_ctx *c, const float *d_logits, int n, int E, int k,
                                bool softmax_first, bool norm_topk, int *d_ids, float *d_weights);

/* The grouped routers (kernels/backend.h, router_grouped) by their scores: DeepSeek-V3's sigmoid
 * scores with bias [E], V2's softmax scores (bias unused), or ERNIE-4.5's softmax scores with bias
 * (one group); E <= 1024, k <= 32, n_group <= 64. */
enum { MOE_CUDA_SCORES_SIGMOID, MOE_CUDA_SCORES_SOFTMAX, MOE_CUDA_SCORES_SOFTMAX_BIAS };
enum moe_status moe_cuda_router_grouped(struct moe_cuda_ctx *c, const float *d_logits, const float *d_bias, int n,
                                        int E, int k, int scores, int n_group, int topk_group, bool renorm,
                                        float scale, int *d_ids, float *d_weights);

/* An FP8 record of a [rows, cols] matrix with blocks of br x bc (model.h: the codes, then the block
 * factors as F32) at d_rec as its BF16 values at d_out, bit for bit moe_fp8_record_decode's, on
 * stream (a cudaStream_t: the GPU tier's copy stream). */
enum moe_status moe_cuda_fp8_record_decode(struct moe_cuda_ctx *c, void *stream, const void *d_rec, long long rows,
                                           long long cols, int br, int bc, void *d_out);

/* Strided block copy (kernels/backend.h, copy_blocks). */
enum moe_status moe_cuda_copy_blocks(struct moe_cuda_ctx *c, const float *d_x, int x_row, int x_group, float *d_y,
                                     int y_row, int y_group, int rows, int groups, int width);

/* Gather rows: d_out[r, :] = d_x[d_rows[r], :], r < n_rows; x [*, dim]. */
enum moe_status moe_cuda_gather_rows(struct moe_cuda_ctx *c, const float *d_x, const int *d_rows,
                                     int n_rows, int dim, float *d_out);

/* Un-permute and combine: for token t < n,
 *   out[t, :] (+)= sum over slot s < k, in slot order, of w[t, s] * y[d_inv[t*k + s], :]
 * where d_inv maps (token, slot) to its row of the expert-permuted y
 * [n*k, dim].  accumulate = true adds to out (residual), else overwrites. */
enum moe_status moe_cuda_moe_combine(struct moe_cuda_ctx *c, const float *d_y, const int *d_inv,
                                     const float *d_w, int n, int k, int dim, bool accumulate,
                                     float *d_out);

/* SwiGLU: out[i] = silu(gate[i]) * up[i], n elements (may alias gate). */
enum moe_status moe_cuda_swiglu(struct moe_cuda_ctx *c, const float *d_gate, const float *d_up,
                                float *d_out, size_t n);

/* out[t, :] (+)= sigmoid(s[t]) * y[t, :]  (Qwen2-MoE shared expert gate);
 * s [n] F32 (the shared_expert_gate projection), y/out [n, dim]. */
enum moe_status moe_cuda_sigmoid_scale_add(struct moe_cuda_ctx *c, const float *d_s, const float *d_y,
                                           int n, int dim, float *d_out);

/* Linear layer: y [n, out] = x [n, in] * W^T (+ y when accumulate), W [out, in]
 * row-major in dtype wdt.  INVARIANT mode, or out <= MOE_CUDA_F32_LINEAR_MAX_OUT:
 * the F32-activation kernel.  Otherwise cuBLAS: with BF16 weights x is rounded
 * to BF16 in the workspace first; F32 weights give an exact F32 GEMM (no
 * TF32).  Used for q/k/v/o, router, dense MLP, shared expert and lm_head. */
enum moe_status moe_cuda_linear(struct moe_cuda_ctx *c, const float *d_x, const void *d_w,
                                enum moe_dtype wdt, int n, int in, int out, bool accumulate,
                                float *d_y);

/* Linear layers over groups of rows, one weight matrix each: for g < groups, rows [g*rows, (g+1)*rows)
 * of d_x [groups*rows, in] times w_g^T (w_g [out, in] at d_w + g*out*in elements, wdt) into the same rows
 * of d_y [groups*rows, out].  Each group's result is moe_cuda_linear's over its rows alone, bit for bit
 * (one grouped launch where moe_cuda_linear takes the F32-activation kernel, a call per group else). */
enum moe_status moe_cuda_linear_groups(struct moe_cuda_ctx *c, const float *d_x, const void *d_w,
                                       enum moe_dtype wdt, int groups, int rows, int in, int out, float *d_y);

/* One routed expert in device memory (e.g. a GPU-tier slot). */
struct moe_cuda_expert {
    const void *gate, *up;  /* [inter, hidden] */
    const void *down;       /* [hidden, inter] */
};

/* The MoE FFN of one layer as one indirect op over its experts.
 * Shape contract:
 *   d_xp   [rows, hidden]  tokens permuted by expert: rows h_off[g]..h_off[g+1]-1
 *                          belong to expert g of this call (g < n_groups)
 *   h_off  [n_groups + 1]  HOST row offsets, h_off[0] = 0, non-decreasing, h_off[n_groups] = rows
 *   h_w    [n_groups]      HOST array of device weight pointers, all in dtype wdt
 *   d_yp   [rows, hidden]  out: down(silu(gate x) * up x) for each row with its expert
 * Workspace: rows * (hidden*2 + inter*(4+4+2)) bytes (cuBLAS modes, BF16) or
 * rows * inter * 8 bytes (INVARIANT, or F32 weights), plus 256-byte alignment
 * per group.  When short, the groups run in several calls, and an expert whose
 * rows alone do not fit runs in row chunks that do; MOE_ENOMEM naming
 * workspace_bytes only when one row does not fit.
 * Groups with zero rows are skipped. */
enum moe_status moe_cuda_expert_ffn(struct moe_cuda_ctx *c, const float *d_xp, int n_groups,
                                    const int *h_off, const struct moe_cuda_expert *h_w,
                                    enum moe_dtype wdt, int hidden, int inter, float *d_yp);

/* Greedy sampling: d_out[r] = argmax over logits[r, 0..vocab-1]; ties -> lowest
 * id; NaN never wins (a row of only NaN gives 0). */
enum moe_status moe_cuda_argmax(struct moe_cuda_ctx *c, const float *d_logits, int rows, int vocab,
                                int *d_out);

/* ---- host-side helpers (no CUDA) ---------------------------------------- */

#ifdef __cplusplus
}
#endif
#endif
