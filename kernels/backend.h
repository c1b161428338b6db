/* The backend seam: one table of operations over backend memory, with an
 * opaque context.  The engine computes a forward pass only through this table,
 * so it runs unchanged on the CPU reference backend (kernels/cpu, C11) and on
 * the CUDA backend (kernels/cuda).
 *
 * Conventions (every backend):
 * - Pointers passed to ops are backend buffers (from buf_alloc, or expert
 *   weights handed out by the expert provider), except parameters named h_*
 *   (host memory).  Activations are F32 row-major; matrix weights are
 *   row-major [out_features, in_features] as in Hugging Face, in F32 or BF16;
 *   vectors (norm weights, biases) are F32.  Index arrays are int32.
 * - Ops are enqueued in order on the backend's one stream and may run
 *   asynchronously; synchronize() waits for all of them.  Host memory given
 *   to copy_h2d/copy_d2h must stay valid until synchronize() returns; host
 *   arrays (h_*) given to ops are consumed before the op returns.
 * - Every op returns MOE_OK or an error that names the op and the bad size.
 *   An asynchronous failure is returned by the next synchronize() (and, for a
 *   sticky device error, by every call after it).
 * - Determinism (all backends): an op's result for one row (token) depends
 *   only on that row's inputs and the weights -- never on how many rows are in
 *   the call, where the row sits, or how many threads run.  The engine's
 *   batch invariance and offload invariance rest on this.
 * - out may alias x where an op says so; otherwise buffers must not overlap. */
#ifndef MOE_BACKEND_H
#define MOE_BACKEND_H

#include "../common/moe.h"
#include "../model/config.h"      /* enum moe_router_kind */
#include "../model/safetensors.h" /* enum moe_dtype */

#ifdef __cplusplus
extern "C" {
#endif

/* One routed expert's weights in backend memory (dtype given per call). */
struct moe_backend_expert {
    const void *gate, *up;  /* [inter, hidden] */
    const void *down;       /* [hidden, inter] */
};

struct moe_backend_ops {
    /* ---- memory ---------------------------------------------------------- */
    /* NULL with moe_last_error() naming `what` and the size on failure. */
    void *(*buf_alloc)(void *ctx, size_t bytes, const char *what);
    void (*buf_free)(void *ctx, void *buf);
    /* Optional: a buffer for weights, kept as long as the engine and read every step (the CPU
     * backend's in transparent huge pages); freed with buf_free.  NULL: buf_alloc serves them. */
    void *(*weights_alloc)(void *ctx, size_t bytes, const char *what);
    enum moe_status (*copy_h2d)(void *ctx, void *dst, const void *h_src, size_t bytes);
    enum moe_status (*copy_d2h)(void *ctx, void *h_dst, const void *src, size_t bytes);
    enum moe_status (*copy_d2d)(void *ctx, void *dst, const void *src, size_t bytes);
    enum moe_status (*memset0)(void *ctx, void *dst, size_t bytes);
    /* Wait for everything enqueued; returns the first asynchronous error. */
    enum moe_status (*synchronize)(void *ctx);
    void (*destroy)(void *ctx);

    /* ---- ops ------------------------------------------------------------- */
    /* out[i, :] = table[ids[i], :] as F32.  table [vocab, hidden] in dt.
     * Ids are validated by the caller; an id outside [0, vocab) gives a row
     * of NaN, never an out-of-bounds read. */
    enum moe_status (*embed)(void *ctx, const void *table, enum moe_dtype dt, int vocab, int hidden,
                             const int32_t *ids, int n, float *out);

    /* RMSNorm of each of `rows` rows of length dim:
     *   y = w * (x * 1/sqrt(mean(x^2) + eps)),  x, y [rows, dim] (y may alias x), w [dim].
     * Layer norms: rows = tokens.  Qwen3 per-head q/k norm: rows = tokens*heads,
     * dim = head_dim.  OLMoE q/k norm over the projection: dim = heads*head_dim. */
    enum moe_status (*rmsnorm)(void *ctx, const float *x, const float *w, float *y, int rows,
                               int dim, float eps);

    /* Linear layer: y [n, out] = x [n, in] @ W^T + bias.  W [out, in] in wdt
     * (F32 or BF16); bias [out] F32 or NULL.  y must not alias x. */
    enum moe_status (*linear)(void *ctx, const float *x, const void *w, enum moe_dtype wdt,
                              const float *bias, int n, int in, int out, float *y);

    /* Linear layers over groups of rows, one weight matrix per group: for g < groups, rows
     * [g*rows, (g+1)*rows) of x [groups*rows, in] times w_g^T (w_g [out, in] at w + g*out*in
     * elements, wdt) into the same rows of y [groups*rows, out], each group's result that of linear
     * over its rows alone.  MLA's per-head products.  NULL on a backend without it (the engine then
     * calls linear per group). */
    enum moe_status (*linear_groups)(void *ctx, const float *x, const void *w, enum moe_dtype wdt, int groups,
                                     int rows, int in, int out, float *y);

    /* Rotary embedding, rotate-half layout, in place on the first rot_dim
     * dims of each head of x [n, n_heads, head_dim] (the rest untouched):
     * for i < d/2 (d = rot_dim), angle = pos[t] * h_inv_freq[i] (F32; the table
     * from moe_config_rope), c = cos(angle) * scale, s = sin(angle) * scale, and
     * (x_i, x_{i+d/2}) <- (x_i c - x_{i+d/2} s, x_{i+d/2} c + x_i s).  scale is
     * YaRN's attention factor (1 for the default RoPE). */
    enum moe_status (*rope)(void *ctx, float *x, const int32_t *pos, int n, int n_heads,
                            int head_dim, int rot_dim, const float *h_inv_freq, float scale);

    /* KV cache of one layer: kcache/vcache [max_seqs, max_ctx, kv_dim] in cdt, F32 or BF16
     * (kv_dim = n_kv_heads*head_dim).  cache[seq[i], pos[i], :] = k[i, :] / v[i, :], rounded
     * to the nearest BF16 (ties to even) in a BF16 cache.  kcache may equal vcache (and k, v).
     * A position outside 0..max_ctx-1 or a negative sequence is the caller's error: the CPU backend
     * refuses the call (MOE_EINVAL), the CUDA backend, which cannot see the positions, writes
     * nothing for that row. */
    enum moe_status (*kv_store)(void *ctx, const float *k, const float *v, void *kcache, void *vcache,
                                enum moe_dtype cdt, const int32_t *seq, const int32_t *pos, int n,
                                int max_ctx, int kv_dim);

    /* Causal grouped-query attention over the cache (in cdt, as kv_store wrote it), prefill
     * and batched decode alike: token i (sequence seq[i], position pos[i]) attends to
     * positions 0..pos[i] of its sequence, which must already be stored, or with window > 0
     * to the last `window` of them (pos[i] - window < j <= pos[i]: transformers' sliding-window
     * mask).  Query head h uses KV head h / (n_heads / n_kv_heads).  softmax(q.k * scale) @ v
     * in F32 (BF16 cache values widened exactly).  q, out [n, n_heads*head_dim].
     * pos_max bounds the call's positions from the host, where pos may be device memory: every
     * pos[i] <= pos_max, and 0 <= pos_max < max_ctx when n > 0 (MOE_EINVAL otherwise).  The
     * engine passes its batch's largest position; a backend may size scratch by it (the CUDA
     * backend's split partials), so it does not grow with max_ctx.  A row beyond it is the
     * caller's error: the CPU backend refuses the call (MOE_EINVAL), the CUDA backend, which
     * cannot see the positions, gives the row NaN and reads and writes nothing for it. */
    enum moe_status (*attention)(void *ctx, const float *q, const void *kcache, const void *vcache,
                                 enum moe_dtype cdt, const int32_t *seq, const int32_t *pos,
                                 int n, int pos_max, int n_heads, int n_kv_heads, int head_dim, int max_ctx,
                                 int window, float scale, float *out);

    /* Router: logits [n, E] -> ids [n, k] and weights [n, k], descending
     * weight, ties to the lower expert id.
     *   MOE_ROUTER_TOPK_SOFTMAX (Mixtral): top-k of the logits, softmax over the k.
     *   MOE_ROUTER_SOFTMAX_TOPK (Qwen, OLMoE): softmax over all E, top-k, and
     *   when renorm the k weights are divided by their sum. */
    enum moe_status (*router)(void *ctx, const float *logits, int n, int E, int k,
                              enum moe_router_kind kind, bool renorm, int32_t *ids, float *w);

    /* DeepSeek's routers.  MOE_ROUTER_SIGMOID_GROUP (V3): s = sigmoid(logits), c = s + bias [E];
     * MOE_ROUTER_SOFTMAX_GROUP (V2): s = softmax(logits) (the largest logit subtracted, the
     * exponentials summed in id order), c = s, bias unused (may be NULL).  The E experts form
     * n_group groups of E/n_group in id order, each scored by the sum of its two largest c (V3;
     * groups of 2 or more) or by its largest c (V2); the topk_group best groups stay (ties to
     * the lower group) and every other expert's c counts as 0, as transformers masks it.
     * ids = the experts of the k largest c, listed by descending s (ties to the lower id); w =
     * their s, divided by (their sum + 1e-20) when renorm, times scale.  MOE_ROUTER_SOFTMAX_BIAS
     * (ERNIE-4.5, one group): s = softmax(logits) as V2's, c = s + bias, and w divided by
     * max(their sum, MOE_ERNIE_NORM_MIN) when renorm.  NULL on a backend without it (the engine
     * then refuses such a model). */
    enum moe_status (*router_grouped)(void *ctx, const float *logits, const float *bias, int n, int E,
                                      int k, enum moe_router_kind kind, int n_group, int topk_group, bool renorm,
                                      float scale, int32_t *ids, float *w);

    /* Strided block copy: for r < rows, g < groups, j < width,
     *   y[r*y_row + g*y_group + j] = x[r*x_row + g*x_group + j]
     * (x_group = 0 repeats one block of x in every group); x and y must not overlap.  MLA
     * attention assembles its per-head keys and values with it.  NULL on a backend without it. */
    enum moe_status (*copy_blocks)(void *ctx, const float *x, int x_row, int x_group, float *y, int y_row,
                                   int y_group, int rows, int groups, int width);

    /* Gather rows (token permute): out[r, :] = x[rows[r], :] for r < n_rows. */
    enum moe_status (*gather_rows)(void *ctx, const float *x, const int32_t *rows, int n_rows,
                                   int dim, float *out);

    /* The routed experts of one layer as ONE indirect op (ggml_mul_mat_id style).
     * Shape contract:
     *   xp     [rows, hidden]   tokens permuted by expert: rows
     *                           h_off[g] .. h_off[g+1]-1 go to expert g
     *   h_off  [n_groups + 1]   host array, h_off[0] = 0, non-decreasing,
     *                           h_off[n_groups] = rows
     *   h_w    [n_groups]       host array of expert weights in backend memory, dtype wdt
     *   yp     [rows, hidden]   out: down(silu(gate x) * up x), each row with its expert
     * Groups with zero rows are skipped.  Every row's result depends only on
     * that row and its expert's weights, so how experts are grouped into calls
     * (chunking) never changes a bit. */
    enum moe_status (*moe_experts)(void *ctx, const float *xp, int n_groups,
                                   const int *h_off, const struct moe_backend_expert *h_w,
                                   enum moe_dtype wdt, int hidden, int inter, float *yp);

    /* Un-permute and weighted sum, in routing-rank order: for token t < n,
     *   out[t, :] (+)= sum over r = 0..k-1, in that order, of w[t, r] * yp[inv[t*k + r], :]
     * inv maps (token, rank) to its row of the expert-permuted yp [n*k, dim];
     * accumulate adds to out, else overwrites it. */
    enum moe_status (*moe_combine)(void *ctx, const float *yp, const int32_t *inv, const float *w,
                                   int n, int k, int dim, bool accumulate, float *out);

    /* SwiGLU: out[i] = silu(gate[i]) * up[i] over count elements (out may alias gate). */
    enum moe_status (*swiglu)(void *ctx, const float *gate, const float *up, float *out,
                              size_t count);

    /* Shared-expert gate (Qwen2-MoE): out[t, :] += sigmoid(s[t]) * y[t, :];
     * s [n] (the shared_expert_gate projection), y, out [n, dim]. */
    enum moe_status (*sigmoid_scale_add)(void *ctx, const float *s, const float *y, int n, int dim,
                                         float *out);

    /* Residual add: y[i] += x[i] over count elements. */
    enum moe_status (*add)(void *ctx, float *y, const float *x, size_t count);

    /* Greedy pick: out[r] = argmax over x[r, 0..dim-1]; ties -> lowest index;
     * NaN never wins (a row of only NaN gives 0). */
    enum moe_status (*argmax)(void *ctx, const float *x, int rows, int dim, int32_t *out);

    /* The backend's memory: what is free for new buffers now and its total, in bytes (the CPU
     * backend: the host's available and total RAM; CUDA: the device's). */
    enum moe_status (*mem_info)(void *ctx, size_t *free_bytes, size_t *total_bytes);
};

/* A backend: its ops, its context and what the engine must know about it. */
struct moe_backend {
    const struct moe_backend_ops *ops;
    void *ctx;
    const char *name;          /* "cpu", "cuda" */
    bool host_visible;         /* buffers are plain host memory (the host may read/write them) */
    enum moe_dtype weight_dtype; /* dtype the engine stores matrix weights in (F32 or BF16) */
    bool exact_weights;        /* BF16 weight_dtype only for checkpoints whose matrices are BF16:
                                  others are kept in F32 rather than rounded */
};

/* ops->destroy(ctx): frees the context and the struct moe_backend (which a
 * backend embeds in its context).  NULL is a no-op. */
void moe_backend_destroy(struct moe_backend *be);

/* ---- the CPU reference backend -------------------------------------------- */

/* The most threads of the CPU backend's pool, and so of the engine's n_threads and every command's
 * --threads (each costs the pool a thread with its stack and a 64 KiB GEMM panel). */
#define MOE_CPU_MAX_THREADS 1024

struct moe_backend_cpu_params {
    int n_threads;   /* worker threads for GEMMs and attention (0 = 1, at most MOE_CPU_MAX_THREADS); also
                        OpenBLAS's */
    bool use_blas;   /* true: GEMMs via cblas_sgemm (faster on some machines, but a row's
                        result then depends on the batch around it: breaks batch invariance) */
};

/* BF16 matrix weights (F32 with use_blas), host-visible buffers.  NULL with
 * moe_last_error() set on failure. */
struct moe_backend *moe_backend_cpu_create(const struct moe_backend_cpu_params *p);

#ifdef __cplusplus
}
#endif
#endif
