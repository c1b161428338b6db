/* Linear layers and the MoE expert FFN on cuBLAS: BF16 (or F32) weights,
 * F32 activations rounded to BF16 in the workspace, F32 accumulation and
 * output.  Row-major Y[n, out] = X[n, in] W^T is computed column-major as
 * Y^T = op_T(W) X^T: W row-major [out, in] is a column-major [in, out]
 * matrix with ld = in. */
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

extern "C" enum moe_status moe_cuda_gemm_inv_(struct moe_cuda_ctx *c, const float *d_x, const void *d_w,
                                              enum moe_dtype wdt, int n, int in, int out, bool accumulate,
                                              float *d_y);
extern "C" enum moe_status moe_cuda_swiglu_bf16_(struct moe_cuda_ctx *c, const float *d_gate,
                                                 const float *d_up, void *d_out, size_t n);

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

static bool dtype_ok(enum moe_dtype dt) { return dt == MOE_DT_BF16 || dt == MOE_DT_F32; }
static size_t dt_size(enum moe_dtype dt) { return dt == MOE_DT_BF16 ? 2 : 4; }
static const char *dt_name(enum moe_dtype dt)
{
    return dt == MOE_DT_BF16 ? "BF16" : dt == MOE_DT_F32 ? "F32" : dt == MOE_DT_F16 ? "F16" : "non-float";
}
static cudaDataType_t cu_type(enum moe_dtype dt) { return dt == MOE_DT_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

/* C[m x n] (col-major, ldc) = W^T-view GEMM for one weight block. */
static enum moe_status gemm_one(struct moe_cuda_ctx *c, const void *w, const void *x, enum moe_dtype dt,
                                int m, int n, int k, float beta, float *y)
{
    enum moe_status st = MOE_OK;
    const float alpha = 1.0f;
    cudaDataType_t t = cu_type(dt);
    CK(c, cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w, t, k, x, t, k, &beta, y,
                       CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
out:
    return st;
}

static enum moe_status ws_short(struct moe_cuda_ctx *c, const char *op, size_t need)
{
    return moe_errorf(MOE_ENOMEM, "%s needs %zu MiB of CUDA workspace but workspace_bytes is %zu MiB: "
                      "raise workspace_bytes or lower max_batch_tokens", op, (need >> 20) + 1,
                      c->ws_bytes >> 20);
}

extern "C" enum moe_status moe_cuda_linear(struct moe_cuda_ctx *c, const float *d_x, const void *d_w,
                                           enum moe_dtype wdt, int n, int in, int out_dim,
                                           bool accumulate, float *d_y)
{
    enum moe_status st;
    if (n < 0 || in <= 0 || out_dim <= 0)
        return moe_errorf(MOE_EINVAL, "linear: n %d, in %d, out %d", n, in, out_dim);
    if (!dtype_ok(wdt))
        return moe_errorf(MOE_ENOTSUP, "linear: weight dtype %s (BF16 or F32)", dt_name(wdt));
    if (n == 0) return MOE_OK;
    if (c->gemm_mode == MOE_CUDA_GEMM_INVARIANT)
        return moe_cuda_gemm_inv_(c, d_x, d_w, wdt, n, in, out_dim, accumulate, d_y);
    if (wdt == MOE_DT_F32)
        return gemm_one(c, d_w, d_x, wdt, out_dim, n, in, accumulate ? 1.0f : 0.0f, d_y);
    size_t need = (size_t)n * (size_t)in * 2;
    if (need > c->ws_bytes) return ws_short(c, "linear", need);
    st = moe_cuda_f32_to_bf16(c, d_x, (uint16_t *)c->ws, (size_t)n * (size_t)in);
    if (st != MOE_OK) return st;
    return gemm_one(c, d_w, c->ws, wdt, out_dim, n, in, accumulate ? 1.0f : 0.0f, d_y);
}

/* Grouped projection: for each nonempty group g, C_g[m x n_g] = op_T(A_g) B_g
 * with B_g = b + off[g]*k elements, C_g = y + off[g]*m.  n_w weight sets are
 * issued in one call (gate and up together): problem (w, g) uses a[w][g].
 * Returns MOE_ENOTSUP when cuBLAS refuses the type combination. */
static enum moe_status gemm_grouped(struct moe_cuda_ctx *c, int n_w, const void *const *const *a,
                                    const void *b, enum moe_dtype dt, float *const *y, int n_groups,
                                    const int *off, int m, int k)
{
    enum moe_status st = MOE_OK;
    int cnt = 0, cap = n_w * n_groups;
    size_t esz = dt_size(dt);
    cublasOperation_t *ta = NULL, *tb = NULL;
    int *ms = NULL, *ns = NULL, *ks = NULL, *lda = NULL, *ldb = NULL, *ldc = NULL, *gs = NULL;
    float *al = NULL, *be = NULL;
    const void **pa = NULL;
    cudaDataType_t t = cu_type(dt);

    if (cap > c->ptr_cap)
        return moe_errorf(MOE_ENOTSUP, "grouped GEMM: %d problems exceed the %d-entry pointer table",
                          cap, c->ptr_cap);
    ta = (cublasOperation_t *)malloc((size_t)cap * sizeof(*ta));
    tb = (cublasOperation_t *)malloc((size_t)cap * sizeof(*tb));
    ms = (int *)malloc((size_t)cap * 7 * sizeof(int));
    al = (float *)malloc((size_t)cap * 2 * sizeof(float));
    pa = (const void **)malloc((size_t)cap * 3 * sizeof(void *));
    if (!ta || !tb || !ms || !al || !pa) {
        st = moe_errorf(MOE_ENOMEM, "grouped GEMM: out of host memory");
        goto out;
    }
    ns = ms + cap; ks = ns + cap; lda = ks + cap; ldb = lda + cap; ldc = ldb + cap; gs = ldc + cap;
    be = al + cap;
    for (int w = 0; w < n_w; w++) {
        for (int g = 0; g < n_groups; g++) {
            int rows = off[g + 1] - off[g];
            if (rows <= 0) continue;
            ta[cnt] = CUBLAS_OP_T; tb[cnt] = CUBLAS_OP_N;
            ms[cnt] = m; ns[cnt] = rows; ks[cnt] = k;
            lda[cnt] = k; ldb[cnt] = k; ldc[cnt] = m; gs[cnt] = 1;
            al[cnt] = 1.0f; be[cnt] = 0.0f;
            pa[cnt] = a[w][g];
            pa[cap + cnt] = (const char *)b + (size_t)off[g] * (size_t)k * esz;
            pa[2 * cap + cnt] = y[w] + (size_t)off[g] * (size_t)m;
            cnt++;
        }
    }
    if (cnt == 0) goto out;
    /* Pageable host source: the call returns once the bytes are staged, and
     * the copy is ordered before the GEMM on the same stream. */
    CK(c, cudaMemcpyAsync(c->d_ptrs, pa, (size_t)cnt * sizeof(void *), cudaMemcpyHostToDevice, c->stream));
    CK(c, cudaMemcpyAsync(c->d_ptrs + c->ptr_cap, pa + cap, (size_t)cnt * sizeof(void *),
                          cudaMemcpyHostToDevice, c->stream));
    CK(c, cudaMemcpyAsync(c->d_ptrs + 2 * c->ptr_cap, pa + 2 * cap, (size_t)cnt * sizeof(void *),
                          cudaMemcpyHostToDevice, c->stream));
    {
        cublasStatus_t bs = cublasGemmGroupedBatchedEx(
            c->blas, ta, tb, ms, ns, ks, al, (const void *const *)c->d_ptrs, t, lda,
            (const void *const *)(c->d_ptrs + c->ptr_cap), t, ldb, be,
            (void *const *)(c->d_ptrs + 2 * c->ptr_cap), CUDA_R_32F, ldc, cnt, gs, CUBLAS_COMPUTE_32F);
        if (bs == CUBLAS_STATUS_NOT_SUPPORTED || bs == CUBLAS_STATUS_INVALID_VALUE ||
            bs == CUBLAS_STATUS_ARCH_MISMATCH) {
            st = moe_errorf(MOE_ENOTSUP, "cublasGemmGroupedBatchedEx refused BF16/F32 (status %d)", (int)bs);
            goto out;
        }
        CK(c, bs);
    }
out:
    free(ta);
    free(tb);
    free(ms);
    free(al);
    free(pa);
    return st;
}

static enum moe_status ffn_loop_proj(struct moe_cuda_ctx *c, const void *const *w, const void *b,
                                     enum moe_dtype dt, float *y, int n_groups, const int *off, int m,
                                     int k)
{
    size_t esz = dt_size(dt);
    for (int g = 0; g < n_groups; g++) {
        int rows = off[g + 1] - off[g];
        if (rows <= 0) continue;
        enum moe_status st = gemm_one(c, w[g], (const char *)b + (size_t)off[g] * (size_t)k * esz, dt,
                                      m, rows, k, 0.0f, y + (size_t)off[g] * (size_t)m);
        if (st != MOE_OK)
            return moe_error_prefix(st, "expert FFN group %d (%d rows)", g, rows);
    }
    return MOE_OK;
}

/* Invariant mode: F32 activations throughout, own GEMM kernel per expert. */
static enum moe_status expert_ffn_inv(struct moe_cuda_ctx *c, const float *d_xp, int n_groups, const int *h_off,
                                      const struct moe_cuda_expert *h_w, enum moe_dtype wdt, int hidden,
                                      int inter, float *d_yp)
{
    int rows = h_off[n_groups];
    size_t o_u = align256((size_t)rows * inter * 4), need = o_u + (size_t)rows * inter * 4;
    float *g = (float *)c->ws, *u = (float *)((char *)c->ws + o_u);
    enum moe_status st = MOE_OK;
    if (need > c->ws_bytes) return ws_short(c, "expert_ffn", need);
    for (int e = 0; e < n_groups && st == MOE_OK; e++) {
        int r0 = h_off[e], m = h_off[e + 1] - r0;
        if (m <= 0) continue;
        const float *xe = d_xp + (size_t)r0 * hidden;
        float *ge = g + (size_t)r0 * inter, *ue = u + (size_t)r0 * inter;
        st = moe_cuda_gemm_inv_(c, xe, h_w[e].gate, wdt, m, hidden, inter, false, ge);
        if (st == MOE_OK) st = moe_cuda_gemm_inv_(c, xe, h_w[e].up, wdt, m, hidden, inter, false, ue);
        if (st == MOE_OK) st = moe_cuda_swiglu(c, ge, ue, ge, (size_t)m * inter);
        if (st == MOE_OK)
            st = moe_cuda_gemm_inv_(c, ge, h_w[e].down, wdt, m, inter, hidden, false, d_yp + (size_t)r0 * hidden);
        if (st != MOE_OK) moe_error_prefix(st, "expert FFN group %d (%d rows)", e, m);
    }
    return st;
}

static size_t ffn_ws_need(enum moe_cuda_gemm_mode mode, enum moe_dtype wdt, size_t rows, int hidden, int inter)
{
    if (mode == MOE_CUDA_GEMM_INVARIANT || wdt == MOE_DT_F32)
        return align256(rows * inter * 4) + rows * inter * 4;
    return align256(rows * hidden * 2) + align256(rows * inter * 4) + align256(rows * inter * 4) +
           rows * inter * 2;
}

static enum moe_status expert_ffn_part(struct moe_cuda_ctx *c, const float *d_xp, int n_groups,
                                       const int *h_off, const struct moe_cuda_expert *h_w,
                                       enum moe_dtype wdt, int hidden, int inter, float *d_yp);

/* Validate, then run the groups in runs whose rows fit the workspace.  Every
 * expert's rows stay in one call, so (LOOP and INVARIANT modes) the result
 * is the same bits as one call over all groups. */
extern "C" enum moe_status moe_cuda_expert_ffn(struct moe_cuda_ctx *c, const float *d_xp, int n_groups,
                                               const int *h_off, const struct moe_cuda_expert *h_w,
                                               enum moe_dtype wdt, int hidden, int inter, float *d_yp)
{
    int *off = NULL;
    enum moe_status st = MOE_OK;
    if (n_groups < 0 || hidden <= 0 || inter <= 0 || !h_off || (n_groups > 0 && !h_w))
        return moe_errorf(MOE_EINVAL, "expert_ffn: groups %d, hidden %d, inter %d", n_groups, hidden,
                          inter);
    if (!dtype_ok(wdt))
        return moe_errorf(MOE_ENOTSUP, "expert_ffn: weight dtype %s (BF16 or F32)", dt_name(wdt));
    if (h_off[0] != 0) return moe_errorf(MOE_EINVAL, "expert_ffn: offsets[0] is %d, must be 0", h_off[0]);
    for (int g = 0; g < n_groups; g++) {
        if (h_off[g + 1] < h_off[g])
            return moe_errorf(MOE_EINVAL, "expert_ffn: offsets decrease at group %d (%d -> %d)", g,
                              h_off[g], h_off[g + 1]);
        if (h_off[g + 1] > h_off[g] && (!h_w[g].gate || !h_w[g].up || !h_w[g].down))
            return moe_errorf(MOE_EINVAL, "expert_ffn: group %d has rows but a NULL weight", g);
    }
    if (n_groups == 0 || h_off[n_groups] == 0) return MOE_OK;
    if (ffn_ws_need(c->gemm_mode, wdt, (size_t)h_off[n_groups], hidden, inter) <= c->ws_bytes)
        return expert_ffn_part(c, d_xp, n_groups, h_off, h_w, wdt, hidden, inter, d_yp);
    off = (int *)malloc(sizeof(int) * (size_t)(n_groups + 1));
    if (!off) return moe_errorf(MOE_ENOMEM, "expert_ffn: out of host memory");
    for (int g0 = 0; g0 < n_groups && st == MOE_OK;) {
        int g1 = g0 + 1;
        size_t need = ffn_ws_need(c->gemm_mode, wdt, (size_t)(h_off[g1] - h_off[g0]), hidden, inter);
        if (need > c->ws_bytes) {
            st = ws_short(c, "expert_ffn (one expert's rows)", need);
            break;
        }
        while (g1 < n_groups &&
               ffn_ws_need(c->gemm_mode, wdt, (size_t)(h_off[g1 + 1] - h_off[g0]), hidden, inter) <= c->ws_bytes)
            g1++;
        for (int g = g0; g <= g1; g++) off[g - g0] = h_off[g] - h_off[g0];
        st = expert_ffn_part(c, d_xp + (size_t)h_off[g0] * hidden, g1 - g0, off, h_w + g0, wdt, hidden, inter,
                             d_yp + (size_t)h_off[g0] * hidden);
        g0 = g1;
    }
    free(off);
    return st;
}

static enum moe_status expert_ffn_part(struct moe_cuda_ctx *c, const float *d_xp, int n_groups,
                                       const int *h_off, const struct moe_cuda_expert *h_w,
                                       enum moe_dtype wdt, int hidden, int inter, float *d_yp)
{
    enum moe_status st = MOE_OK;
    int rows;
    size_t need, o_x, o_g, o_u, o_h;
    const void **wg = NULL, **wu = NULL, **wd = NULL;
    const void *xin;
    const void *hin;
    char *ws = (char *)c->ws;
    float *g_out, *u_out;

    rows = h_off[n_groups];
    if (rows == 0) return MOE_OK;
    if (c->gemm_mode == MOE_CUDA_GEMM_INVARIANT)
        return expert_ffn_inv(c, d_xp, n_groups, h_off, h_w, wdt, hidden, inter, d_yp);

    if (wdt == MOE_DT_BF16) {
        o_x = 0;
        o_g = align256((size_t)rows * hidden * 2);
        o_u = o_g + align256((size_t)rows * inter * 4);
        o_h = o_u + align256((size_t)rows * inter * 4);
        need = o_h + (size_t)rows * inter * 2;
    } else {
        o_x = o_h = 0;
        o_g = 0;
        o_u = align256((size_t)rows * inter * 4);
        need = o_u + (size_t)rows * inter * 4;
    }
    if (need > c->ws_bytes) return ws_short(c, "expert_ffn", need);
    g_out = (float *)(ws + o_g);
    u_out = (float *)(ws + o_u);

    wg = (const void **)malloc((size_t)(n_groups ? n_groups : 1) * 3 * sizeof(void *));
    if (!wg) return moe_errorf(MOE_ENOMEM, "expert_ffn: out of host memory");
    wu = wg + n_groups;
    wd = wu + n_groups;
    for (int g = 0; g < n_groups; g++) {
        wg[g] = h_w[g].gate;
        wu[g] = h_w[g].up;
        wd[g] = h_w[g].down;
    }

    if (wdt == MOE_DT_BF16) {
        st = moe_cuda_f32_to_bf16(c, d_xp, (uint16_t *)(ws + o_x), (size_t)rows * hidden);
        if (st != MOE_OK) goto out;
        xin = ws + o_x;
    } else {
        xin = d_xp;
    }

    /* gate and up projections */
    if (c->gemm_mode == MOE_CUDA_GEMM_GROUPED) {
        const void *const *ws2[2] = { wg, wu };
        float *ys[2] = { g_out, u_out };
        st = gemm_grouped(c, 2, ws2, xin, wdt, ys, n_groups, h_off, inter, hidden);
        if (st == MOE_ENOTSUP) {
            MOE_WARN("%s; using one cublasGemmEx per expert", moe_last_error());
            c->gemm_mode = MOE_CUDA_GEMM_LOOP;
            moe_error_clear();
        } else if (st != MOE_OK) {
            goto out;
        }
    }
    if (c->gemm_mode == MOE_CUDA_GEMM_LOOP) {
        st = ffn_loop_proj(c, wg, xin, wdt, g_out, n_groups, h_off, inter, hidden);
        if (st != MOE_OK) goto out;
        st = ffn_loop_proj(c, wu, xin, wdt, u_out, n_groups, h_off, inter, hidden);
        if (st != MOE_OK) goto out;
    }

    /* h = silu(gate) * up, as the down projection's input */
    if (wdt == MOE_DT_BF16) {
        st = moe_cuda_swiglu_bf16_(c, g_out, u_out, ws + o_h, (size_t)rows * inter);
        hin = ws + o_h;
    } else {
        st = moe_cuda_swiglu(c, g_out, u_out, g_out, (size_t)rows * inter);
        hin = g_out;
    }
    if (st != MOE_OK) goto out;

    /* down projection */
    if (c->gemm_mode == MOE_CUDA_GEMM_GROUPED) {
        const void *const *ws1[1] = { wd };
        float *ys[1] = { d_yp };
        st = gemm_grouped(c, 1, ws1, hin, wdt, ys, n_groups, h_off, hidden, inter);
        if (st == MOE_ENOTSUP) {
            MOE_WARN("%s; using one cublasGemmEx per expert", moe_last_error());
            c->gemm_mode = MOE_CUDA_GEMM_LOOP;
            moe_error_clear();
        } else if (st != MOE_OK) {
            goto out;
        }
    }
    if (c->gemm_mode == MOE_CUDA_GEMM_LOOP)
        st = ffn_loop_proj(c, wd, hin, wdt, d_yp, n_groups, h_off, hidden, inter);
out:
    free(wg);
    return st;
}
