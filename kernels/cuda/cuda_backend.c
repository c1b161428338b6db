/* The backend op table over the CUDA launchers (cuda_ops.h). */
#include "cuda_backend.h"

#include <stdlib.h>

struct cuda_be {
    struct moe_backend base;   /* first: moe_backend_cuda_ctx() recovers the context */
    struct moe_cuda_ctx *c;
};

static struct moe_cuda_ctx *C(void *ctx) { return ((struct cuda_be *)ctx)->c; }

/* Every op first makes the context's device current on the calling thread:
 * the engine may run forward passes on another thread than the one that
 * created the backend, and the current device is per thread. */
#define BIND(ctx)                                                    \
    do {                                                             \
        enum moe_status bst_ = moe_cuda_ctx_bind(C(ctx));            \
        if (bst_ != MOE_OK) return bst_;                             \
    } while (0)

static void *cb_alloc(void *ctx, size_t bytes, const char *what)
{
    void *p = NULL;
    if (moe_cuda_ctx_bind(C(ctx)) != MOE_OK) return NULL;
    return moe_cuda_alloc(C(ctx), &p, bytes, what) == MOE_OK ? p : NULL;
}
static void cb_free(void *ctx, void *buf)
{
    (void)moe_cuda_ctx_bind(C(ctx));
    moe_cuda_free(C(ctx), buf);
}
static enum moe_status cb_h2d(void *ctx, void *dst, const void *src, size_t bytes)
{
    BIND(ctx);
    return moe_cuda_h2d(C(ctx), dst, src, bytes);
}
static enum moe_status cb_d2h(void *ctx, void *dst, const void *src, size_t bytes)
{
    BIND(ctx);
    return moe_cuda_d2h(C(ctx), dst, src, bytes);
}
static enum moe_status cb_d2d(void *ctx, void *dst, const void *src, size_t bytes)
{
    BIND(ctx);
    return moe_cuda_d2d(C(ctx), dst, src, bytes);
}
static enum moe_status cb_memset0(void *ctx, void *dst, size_t bytes)
{
    BIND(ctx);
    return moe_cuda_memset(C(ctx), dst, 0, bytes);
}
static enum moe_status cb_sync(void *ctx)
{
    BIND(ctx);
    return moe_cuda_ctx_sync(C(ctx));
}
static void cb_destroy(void *ctx)
{
    struct cuda_be *b = ctx;
    if (!b) return;
    moe_cuda_ctx_destroy(b->c);
    free(b);
}

static enum moe_status cb_embed(void *ctx, const void *table, enum moe_dtype dt, int vocab, int hidden,
                                const int32_t *ids, int n, float *out)
{
    BIND(ctx);
    return moe_cuda_embed(C(ctx), table, dt, vocab, hidden, ids, n, out);
}
static enum moe_status cb_rmsnorm(void *ctx, const float *x, const float *w, float *y, int rows, int dim,
                                  float eps)
{
    BIND(ctx);
    return moe_cuda_rmsnorm(C(ctx), x, w, y, rows, dim, eps);
}
static enum moe_status cb_linear(void *ctx, const float *x, const void *w, enum moe_dtype wdt,
                                 const float *bias, int n, int in, int out, float *y)
{
    BIND(ctx);
    enum moe_status st = moe_cuda_linear(C(ctx), x, w, wdt, n, in, out, false, y);
    if (st == MOE_OK && bias) st = moe_cuda_add_bias(C(ctx), y, bias, n, out);
    return st;
}
static enum moe_status cb_linear_groups(void *ctx, const float *x, const void *w, enum moe_dtype wdt, int groups,
                                        int rows, int in, int out, float *y)
{
    BIND(ctx);
    return moe_cuda_linear_groups(C(ctx), x, w, wdt, groups, rows, in, out, y);
}
static enum moe_status cb_rope(void *ctx, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
                               int rot_dim, const float *inv_freq, float scale)
{
    BIND(ctx);
    return moe_cuda_rope_table(C(ctx), x, pos, n, n_heads, head_dim, rot_dim, inv_freq, scale);
}
static enum moe_status cb_kv_store(void *ctx, const float *k, const float *v, void *kcache, void *vcache,
                                   enum moe_dtype cdt, const int32_t *seq, const int32_t *pos, int n, int max_ctx,
                                   int kv_dim)
{
    BIND(ctx);
    return moe_cuda_kv_store(C(ctx), k, v, kcache, vcache, cdt, seq, pos, n, max_ctx, kv_dim);
}
static enum moe_status cb_attention(void *ctx, const float *q, const void *kcache, const void *vcache,
                                    enum moe_dtype cdt, const int32_t *seq, const int32_t *pos, int n, int pos_max,
                                    int n_heads, int n_kv_heads, int head_dim, int max_ctx, int window, float scale,
                                    float *out)
{
    BIND(ctx);
    return moe_cuda_attention(C(ctx), q, kcache, vcache, cdt, seq, pos, n, pos_max, n_heads, n_kv_heads, head_dim,
                              max_ctx, window, scale, out);
}
static enum moe_status cb_router(void *ctx, const float *logits, int n, int E, int k,
                                 enum moe_router_kind kind, bool renorm, int32_t *ids, float *w)
{
    BIND(ctx);
    return moe_cuda_router(C(ctx), logits, n, E, k, kind == MOE_ROUTER_SOFTMAX_TOPK, renorm, ids, w);
}
static enum moe_status cb_router_grouped(void *ctx, const float *logits, const float *bias, int n, int E, int k,
                                         enum moe_router_kind kind, int n_group, int topk_group, bool renorm,
                                         float scale, int32_t *ids, float *w)
{
    BIND(ctx);
    if (!moe_router_is_grouped(kind))
        return moe_errorf(MOE_EINVAL, "router_grouped: router kind %d is not a grouped one", (int)kind);
    int scores = kind == MOE_ROUTER_SIGMOID_GROUP ? MOE_CUDA_SCORES_SIGMOID
               : kind == MOE_ROUTER_SOFTMAX_GROUP ? MOE_CUDA_SCORES_SOFTMAX : MOE_CUDA_SCORES_SOFTMAX_BIAS;
    return moe_cuda_router_grouped(C(ctx), logits, bias, n, E, k, scores, n_group, topk_group, renorm, scale, ids, w);
}
static enum moe_status cb_copy_blocks(void *ctx, const float *x, int x_row, int x_group, float *y, int y_row,
                                      int y_group, int rows, int groups, int width)
{
    BIND(ctx);
    return moe_cuda_copy_blocks(C(ctx), x, x_row, x_group, y, y_row, y_group, rows, groups, width);
}
static enum moe_status cb_gather(void *ctx, const float *x, const int32_t *rows, int n_rows, int dim,
                                 float *out)
{
    BIND(ctx);
    return moe_cuda_gather_rows(C(ctx), x, rows, n_rows, dim, out);
}
static enum moe_status cb_moe_experts(void *ctx, const float *xp, int n_groups, const int *h_off,
                                      const struct moe_backend_expert *h_w, enum moe_dtype wdt, int hidden,
                                      int inter, float *yp)
{
    BIND(ctx);
    /* struct moe_backend_expert and struct moe_cuda_expert have the same layout */
    return moe_cuda_expert_ffn(C(ctx), xp, n_groups, h_off, (const struct moe_cuda_expert *)h_w, wdt,
                               hidden, inter, yp);
}
static enum moe_status cb_combine(void *ctx, const float *yp, const int32_t *inv, const float *w, int n,
                                  int k, int dim, bool accumulate, float *out)
{
    BIND(ctx);
    return moe_cuda_moe_combine(C(ctx), yp, inv, w, n, k, dim, accumulate, out);
}
static enum moe_status cb_swiglu(void *ctx, const float *gate, const float *up, float *out, size_t count)
{
    BIND(ctx);
    return moe_cuda_swiglu(C(ctx), gate, up, out, count);
}
static enum moe_status cb_sigmoid_scale_add(void *ctx, const float *s, const float *y, int n, int dim,
                                            float *out)
{
    BIND(ctx);
    return moe_cuda_sigmoid_scale_add(C(ctx), s, y, n, dim, out);
}
static enum moe_status cb_add(void *ctx, float *y, const float *x, size_t count)
{
    BIND(ctx);
    return moe_cuda_add(C(ctx), y, x, count);
}
static enum moe_status cb_argmax(void *ctx, const float *x, int rows, int dim, int32_t *out)
{
    BIND(ctx);
    return moe_cuda_argmax(C(ctx), x, rows, dim, out);
}

static enum moe_status cb_mem_info(void *ctx, size_t *free_bytes, size_t *total_bytes)
{
    BIND(ctx);
    return moe_cuda_mem_info(C(ctx), free_bytes, total_bytes);
}

static const struct moe_backend_ops cuda_ops = {
    .buf_alloc = cb_alloc,
    .buf_free = cb_free,
    .copy_h2d = cb_h2d,
    .copy_d2h = cb_d2h,
    .copy_d2d = cb_d2d,
    .memset0 = cb_memset0,
    .synchronize = cb_sync,
    .destroy = cb_destroy,
    .embed = cb_embed,
    .rmsnorm = cb_rmsnorm,
    .linear = cb_linear,
    .rope = cb_rope,
    .kv_store = cb_kv_store,
    .attention = cb_attention,
    .router = cb_router,
    .router_grouped = cb_router_grouped,
    .copy_blocks = cb_copy_blocks,
    .gather_rows = cb_gather,
    .moe_experts = cb_moe_experts,
    .moe_combine = cb_combine,
    .swiglu = cb_swiglu,
    .sigmoid_scale_add = cb_sigmoid_scale_add,
    .add = cb_add,
    .argmax = cb_argmax,
    .linear_groups = cb_linear_groups,
    .mem_info = cb_mem_info,
};

_Static_assert(sizeof(struct moe_backend_expert) == sizeof(struct moe_cuda_expert),
               "expert weight structs must match");

struct moe_backend *moe_backend_cuda_create(const struct moe_backend_cuda_params *p)
{
    struct moe_cuda_params cp = { 0, 0, MOE_CUDA_GEMM_INVARIANT };
    struct cuda_be *b;
    if (p) {
        cp.device = p->device;
        cp.workspace_bytes = p->workspace_bytes;
        cp.gemm_mode = p->gemm_mode;
    }
    if (moe_cuda_device_count() == 0) {
        moe_errorf(MOE_ENOTSUP, "no CUDA device is visible (driver missing, no GPU, or "
                   "CUDA_VISIBLE_DEVICES empty): use the cpu backend");
        return NULL;
    }
    b = calloc(1, sizeof(*b));
    if (!b) {
        moe_errorf(MOE_ENOMEM, "cuda backend: out of host memory");
        return NULL;
    }
    b->c = moe_cuda_ctx_create(&cp);
    if (!b->c) {
        free(b);
        return NULL;
    }
    b->base.ops = &cuda_ops;
    b->base.ctx = b;
    b->base.name = "cuda";
    b->base.host_visible = false;
    b->base.weight_dtype = MOE_DT_BF16;
    return &b->base;
}

struct moe_cuda_ctx *moe_backend_cuda_ctx(const struct moe_backend *be)
{
    if (!be || !be->name || be->ops != &cuda_ops) return NULL;
    return ((const struct cuda_be *)be->ctx)->c;
}

bool moe_backend_cuda_poisoned(const struct moe_backend *be)
{
    struct moe_cuda_ctx *c = moe_backend_cuda_ctx(be);
    return c && moe_cuda_ctx_poisoned(c);
}
