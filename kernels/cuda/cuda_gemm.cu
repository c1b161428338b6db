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
extern "C" enum moe_status moe_cuda_gemm_inv_grouped_(struct moe_cuda_ctx *c, const float *d_x, int n_groups,
                                                      const int *h_off, int n_w, const void *const *h_w0,
                                                      const void *const *h_w1, enum moe_dtype wdt, int in,
                                                      int out, float *d_y0, float *d_y1);
extern "C" enum moe_status moe_cuda_swiglu_bf16_(struct moe_cuda_ctx *c, const float *d_gate,
                                                 const float *d_up, void *d_out, size_t n);

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

static bool dtype_ok(enum moe_dtype dt) { return dt == MOE_DT_BF16 || dt == MOE_DT_F32; }
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
    if (c->gemm_mode == MOE_CUDA_GEMM_INVARIANT || out_dim <= MOE_CUDA_F32_LINEAR_MAX_OUT)
        return moe_cuda_gemm_inv_(c, d_x, d_w, wdt, n, in, out_dim, accumulate, d_y);
    if (wdt == MOE_DT_F32)
        return gemm_one(c, d_w, d_x, wdt, out_dim, n, in, accumulate ? 1.0f : 0.0f, d_y);
    /* the BF16 copy of x goes in the workspace: as many rows at a time as it holds */
    size_t row_bytes = (size_t)in * 2, per = c->ws_bytes / row_bytes;
    if (per == 0) return ws_short(c, "linear", row_bytes);
    if (per > (size_t)n) per = (size_t)n; /* a workspace of more than INT_MAX rows would wrap the int */
    for (int r0 = 0, rows; r0 < n; r0 += rows) {
        rows = n - r0 < (int)per ? n - r0 : (int)per;
        st = moe_cuda_f32_to_bf16(c, d_x + (size_t)r0 * (size_t)in, (uint16_t *)c->ws, (size_t)rows * (size_t)in);
        if (st == MOE_OK)
            st = gemm_one(c, d_w, c->ws, wdt, out_dim, rows, in, accumulate ? 1.0f : 0.0f,
                          d_y + (size_t)r0 * (size_t)out_dim);
        if (st != MOE_OK) return st;
    }
    return MOE_OK;
}

extern "C" enum moe_status moe_cuda_linear_groups(struct moe_cuda_ctx *c, const float *d_x, const void *d_w,
                                                  enum moe_dtype wdt, int groups, int rows, int in, int out,
                                                  float *d_y)
{
    enum moe_status st = MOE_OK;
    if (groups < 0 || rows < 0 || in <= 0 || out <= 0 || (long long)groups * rows > 0x7fffffff)
        return moe_errorf(MOE_EINVAL, "linear_groups: %d groups of %d rows, in %d, out %d", groups, rows, in, out);
    if (!dtype_ok(wdt))
        return moe_errorf(MOE_ENOTSUP, "linear_groups: weight dtype %s (BF16 or F32)", dt_name(wdt));
    if (groups == 0 || rows == 0) return MOE_OK;
    size_t wstep = (size_t)out * (size_t)in * (wdt == MOE_DT_BF16 ? 2 : 4);
    if (c->gemm_mode == MOE_CUDA_GEMM_INVARIANT || out <= MOE_CUDA_F32_LINEAR_MAX_OUT) {
        /* one launch: each group's outputs are moe_cuda_linear's over its rows alone, bit for bit */
        int *off = (int *)malloc(sizeof(int) * ((size_t)groups + 1));
        const void **w = (const void **)malloc(sizeof(void *) * (size_t)groups);
        if (!off || !w) {
            free(off);
            free(w);
            return moe_errorf(MOE_ENOMEM, "linear_groups: out of host memory");
        }
        for (int g = 0; g <= groups; g++) off[g] = g * rows;
        for (int g = 0; g < groups; g++) w[g] = (const char *)d_w + (size_t)g * wstep;
        st = moe_cuda_gemm_inv_grouped_(c, d_x, groups, off, 1, w, NULL, wdt, in, out, d_y, NULL);
        free(off);
        free(w);
        return st;
    }
    for (int g = 0; g < groups && st == MOE_OK; g++)
        st = moe_cuda_linear(c, d_x + (size_t)g * rows * in, (const char *)d_w + (size_t)g * wstep, wdt, rows, in,
                             out, false, d_y + (size_t)g * rows * out);
    return st;
}

/* ---- the MoE expert FFN -------------------------------------------------------
 * Workspace layout in the cuBLAS modes (INVARIANT: expert_ffn_inv): every
 * nonempty group gets its own 256-byte-aligned pieces (BF16 x, F32 gate, F32
 * up, BF16 h), so the pointers cuBLAS sees for an expert have the same
 * alignment however the groups are split across calls (the output rows are
 * the caller's, at the expert's absolute row).  cuBLAS may choose kernels by
 * pointer alignment; this keeps an expert's bits independent of chunking. */

struct ffn_ptrs {
    const void *x;   /* GEMM input of gate/up: BF16 copy, or the F32 rows themselves */
    void *xw;        /* the BF16 copy (cast only) */
    float *g, *u;    /* [rows, inter] F32 */
    const void *h;   /* down input: BF16 copy, or g (F32, in place) */
    void *hw;        /* writable h */
};

static size_t group_ws(enum moe_cuda_gemm_mode mode, enum moe_dtype wdt, size_t rows, int hidden, int inter)
{
    if (rows == 0) return 0;
    if (mode == MOE_CUDA_GEMM_INVARIANT || wdt == MOE_DT_F32)
        return 2 * align256(rows * inter * 4);
    return align256(rows * hidden * 2) + 2 * align256(rows * inter * 4) + align256(rows * inter * 2);
}

/* Grouped projection: problem (w, g) over nonempty groups computes
 * C[m x rows_g] = op_T(A[w][g]) B_g with B_g = b[g], C = y[w][g].
 * MOE_ENOTSUP, nothing computed, when the problems exceed the pointer table or
 * cuBLAS refuses the call before running it (*refused its status, else
 * CUBLAS_STATUS_SUCCESS): the per-expert cublasGemmEx calls of LOOP mode then
 * compute the same products, checking each one's arguments themselves. */
static enum moe_status gemm_grouped(struct moe_cuda_ctx *c, int n_w, const void *const *const *a,
                                    const void *const *b, enum moe_dtype dt, float *const *const *y,
                                    int n_groups, const int *rows, int m, int k, cublasStatus_t *refused)
{
    enum moe_status st = MOE_OK;
    int cnt = 0, cap = n_w * n_groups;
    cublasOperation_t *ta = NULL, *tb = NULL;
    int *ms = NULL, *ns = NULL, *ks = NULL, *lda = NULL, *ldb = NULL, *ldc = NULL, *gs = NULL;
    float *al = NULL, *be = NULL;
    const void **pa = NULL;
    cudaDataType_t t = cu_type(dt);

    *refused = CUBLAS_STATUS_SUCCESS;
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
            if (rows[g] <= 0) continue;
            ta[cnt] = CUBLAS_OP_T; tb[cnt] = CUBLAS_OP_N;
            ms[cnt] = m; ns[cnt] = rows[g]; ks[cnt] = k;
            lda[cnt] = k; ldb[cnt] = k; ldc[cnt] = m; gs[cnt] = 1;
            al[cnt] = 1.0f; be[cnt] = 0.0f;
            pa[cnt] = a[w][g];
            pa[cap + cnt] = b[g];
            pa[2 * cap + cnt] = y[w][g];
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
            *refused = bs;
            st = moe_errorf(MOE_ENOTSUP, "cublasGemmGroupedBatchedEx returned %s for %d problems of %s in, F32 out "
                            "(m %d, k %d): %s", moe_cuda_blas_status_name(bs), cnt, dt_name(dt), m, k,
                            bs == CUBLAS_STATUS_NOT_SUPPORTED
                                ? "a type combination it lacks (its types are 16BF->16BF, 16F->16F, 32F->32F, and "
                                  "the outputs here stay F32)"
                            : bs == CUBLAS_STATUS_ARCH_MISMATCH
                                ? "not available on this device's architecture"
                                : "an argument it does not take, not a type it lacks");
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

/* A grouped GEMM that could not run (MOE_ENOTSUP from gemm_grouped, refused
 * the cuBLAS status it returned) switches the context to one cublasGemmEx per
 * expert for good, logged once with that status; the caller's LOOP branch then
 * runs and moe_cuda_ctx_gemm_mode() reports LOOP.  The expected case, logged at
 * info level: cublasGemmGroupedBatchedEx has no BF16-in/F32-out combination
 * (CUBLAS_STATUS_NOT_SUPPORTED; its table: 16BF->16BF, 16F->16F, 32F->32F),
 * and our outputs stay F32, so BF16 weights always run per expert.  Another
 * refusal (INVALID_VALUE, ARCH_MISMATCH) is a warning: LOOP computes the same
 * products, but grouped mode was asked for and is not what runs.  Any other
 * status passes through. */
static enum moe_status loop_if_unsupported(struct moe_cuda_ctx *c, enum moe_status st, cublasStatus_t refused)
{
    if (st != MOE_ENOTSUP) return st;
    moe_log(refused == CUBLAS_STATUS_SUCCESS || refused == CUBLAS_STATUS_NOT_SUPPORTED ? MOE_LOG_INFO : MOE_LOG_WARN,
            "grouped GEMM mode: %s: the expert GEMMs run as one cublasGemmEx per expert (LOOP mode) from now on",
            moe_last_error());
    c->gemm_mode = MOE_CUDA_GEMM_LOOP;
    moe_error_clear();
    return MOE_OK;
}

/* INVARIANT mode, one part: gate and up of every group with rows in one
 * grouped launch, SwiGLU over all rows in one, down in one grouped launch.
 * Workspace: F32 gate [rows, inter] then F32 up, each 256-byte aligned, rows
 * in the part's order (group_ws's per-group sum covers it).  Every output is
 * the arithmetic of the plain invariant kernel over its group's rows, so the
 * bits do not depend on grouping, chunking or the rows around it. */
static enum moe_status expert_ffn_inv(struct moe_cuda_ctx *c, const float *d_xp, int n_groups,
                                      const int *h_off, const struct moe_cuda_expert *h_w,
                                      enum moe_dtype wdt, int hidden, int inter, float *d_yp)
{
    enum moe_status st = MOE_OK;
    size_t rows = (size_t)h_off[n_groups], gb = align256(rows * (size_t)inter * 4);
    const void **w;
    float *g = (float *)c->ws, *u = (float *)((char *)c->ws + gb);

    if (rows == 0) return MOE_OK;
    if (2 * gb > c->ws_bytes) return ws_short(c, "expert_ffn", 2 * gb); /* the caller splits: a guard */
    w = (const void **)malloc(sizeof(void *) * (size_t)n_groups * 3);
    if (!w) return moe_errorf(MOE_ENOMEM, "expert_ffn: out of host memory");
    for (int e = 0; e < n_groups; e++) {
        w[e] = h_w[e].gate;
        w[n_groups + e] = h_w[e].up;
        w[2 * (size_t)n_groups + e] = h_w[e].down;
    }
    st = moe_cuda_gemm_inv_grouped_(c, d_xp, n_groups, h_off, 2, w, w + n_groups, wdt, hidden, inter, g, u);
    if (st == MOE_OK) st = moe_cuda_swiglu(c, g, u, g, rows * (size_t)inter);
    if (st == MOE_OK)
        st = moe_cuda_gemm_inv_grouped_(c, g, n_groups, h_off, 1, w + 2 * (size_t)n_groups, NULL, wdt, inter,
                                        hidden, d_yp, NULL);
    if (st != MOE_OK) moe_error_prefix(st, "expert FFN (%d groups, %zu rows)", n_groups, rows);
    free(w);
    return st;
}

/* One part: groups whose workspace pieces all fit.  rows[g] from h_off.
 * The cuBLAS modes here; INVARIANT runs expert_ffn_inv. */
static enum moe_status expert_ffn_part(struct moe_cuda_ctx *c, const float *d_xp, int n_groups,
                                       const int *h_off, const struct moe_cuda_expert *h_w,
                                       enum moe_dtype wdt, int hidden, int inter, float *d_yp)
{
    if (c->gemm_mode == MOE_CUDA_GEMM_INVARIANT)
        return expert_ffn_inv(c, d_xp, n_groups, h_off, h_w, wdt, hidden, inter, d_yp);
    enum moe_status st = MOE_OK;
    bool cast = wdt == MOE_DT_BF16;
    struct ffn_ptrs *p = (struct ffn_ptrs *)calloc((size_t)n_groups, sizeof(*p));
    int *rows = (int *)malloc(sizeof(int) * (size_t)n_groups);
    const void **wg = (const void **)malloc(sizeof(void *) * (size_t)n_groups * 6);
    float **yg = (float **)malloc(sizeof(float *) * (size_t)n_groups * 3);
    const void **xin = wg + 3 * (size_t)n_groups, **hin = xin + n_groups;
    const void **wu = wg + n_groups, **wdn = wg + 2 * (size_t)n_groups;
    float **gout = yg, **uout = yg + n_groups, **dout = yg + 2 * (size_t)n_groups;
    char *ws = (char *)c->ws;
    size_t at = 0;

    if (!p || !rows || !wg || !yg) {
        st = moe_errorf(MOE_ENOMEM, "expert_ffn: out of host memory");
        goto out;
    }
    for (int g = 0; g < n_groups; g++) {
        size_t r = (size_t)(rows[g] = h_off[g + 1] - h_off[g]);
        wg[g] = h_w[g].gate;
        wu[g] = h_w[g].up;
        wdn[g] = h_w[g].down;
        dout[g] = d_yp + (size_t)h_off[g] * hidden;
        if (!r) continue;
        const float *xf = d_xp + (size_t)h_off[g] * hidden;
        if (cast) {
            p[g].x = p[g].xw = ws + at;
            at += align256(r * hidden * 2);
        } else {
            p[g].x = xf;
        }
        p[g].g = (float *)(ws + at);
        at += align256(r * inter * 4);
        p[g].u = (float *)(ws + at);
        at += align256(r * inter * 4);
        if (cast) {
            p[g].hw = ws + at;
            at += align256(r * inter * 2);
        } else {
            p[g].hw = p[g].g;
        }
        p[g].h = p[g].hw;
        xin[g] = p[g].x;
        hin[g] = p[g].h;
        gout[g] = p[g].g;
        uout[g] = p[g].u;
        if (at > c->ws_bytes) { /* the caller splits by group_ws(): a guard, before any write */
            st = ws_short(c, "expert_ffn", at);
            goto out;
        }
        if (cast) {
            st = moe_cuda_f32_to_bf16(c, xf, (uint16_t *)p[g].xw, r * hidden);
            if (st != MOE_OK) goto out;
        }
    }

    /* gate and up projections */
    if (c->gemm_mode == MOE_CUDA_GEMM_GROUPED) {
        const void *const *a2[2] = { wg, wu };
        float *const *y2[2] = { gout, uout };
        cublasStatus_t refused;
        st = gemm_grouped(c, 2, a2, xin, cast ? MOE_DT_BF16 : wdt, y2, n_groups, rows, inter, hidden, &refused);
        st = loop_if_unsupported(c, st, refused);
        if (st != MOE_OK) goto out;
    }
    if (c->gemm_mode == MOE_CUDA_GEMM_LOOP) {
        for (int g = 0; g < n_groups && st == MOE_OK; g++) {
            if (!rows[g]) continue;
            st = gemm_one(c, wg[g], p[g].x, wdt, inter, rows[g], hidden, 0.0f, p[g].g);
            if (st == MOE_OK) st = gemm_one(c, wu[g], p[g].x, wdt, inter, rows[g], hidden, 0.0f, p[g].u);
            if (st != MOE_OK) moe_error_prefix(st, "expert FFN group %d (%d rows)", g, rows[g]);
        }
        if (st != MOE_OK) goto out;
    }

    /* h = silu(gate) * up, the down projection's input */
    for (int g = 0; g < n_groups && st == MOE_OK; g++) {
        if (!rows[g]) continue;
        size_t n = (size_t)rows[g] * inter;
        st = cast ? moe_cuda_swiglu_bf16_(c, p[g].g, p[g].u, p[g].hw, n)
                  : moe_cuda_swiglu(c, p[g].g, p[g].u, p[g].g, n);
    }
    if (st != MOE_OK) goto out;

    /* down projection */
    if (c->gemm_mode == MOE_CUDA_GEMM_GROUPED) {
        const void *const *a1[1] = { wdn };
        float *const *y1[1] = { dout };
        cublasStatus_t refused;
        st = gemm_grouped(c, 1, a1, hin, cast ? MOE_DT_BF16 : wdt, y1, n_groups, rows, hidden, inter, &refused);
        st = loop_if_unsupported(c, st, refused);
        if (st != MOE_OK) goto out;
    }
    if (c->gemm_mode == MOE_CUDA_GEMM_LOOP) {
        for (int g = 0; g < n_groups && st == MOE_OK; g++) {
            if (!rows[g]) continue;
            st = gemm_one(c, wdn[g], p[g].h, wdt, hidden, rows[g], inter, 0.0f, dout[g]);
            if (st != MOE_OK) moe_error_prefix(st, "expert FFN group %d (%d rows)", g, rows[g]);
        }
    }
out:
    free(p);
    free(rows);
    free(wg);
    free(yg);
    return st;
}

/* One expert whose rows alone exceed the workspace: the largest row chunks
 * that fit, one call each (input and output advance by the chunk).  Rows are
 * independent, so INVARIANT mode gives the bits of one call; in the cuBLAS
 * modes a chunk's row count may select another cuBLAS kernel. */
static enum moe_status expert_ffn_rows(struct moe_cuda_ctx *c, const float *d_x, int rows,
                                       const struct moe_cuda_expert *w, enum moe_dtype wdt, int hidden,
                                       int inter, float *d_y)
{
    enum moe_status st = MOE_OK;
    int lo = 0, hi = rows; /* the largest chunk whose workspace fits lies in [lo, hi] */
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (group_ws(c->gemm_mode, wdt, (size_t)mid, hidden, inter) <= c->ws_bytes) lo = mid;
        else hi = mid - 1;
    }
    if (lo == 0) return ws_short(c, "expert_ffn (one row)", group_ws(c->gemm_mode, wdt, 1, hidden, inter));
    for (int r0 = 0; r0 < rows && st == MOE_OK; r0 += lo) {
        int off[2] = { 0, rows - r0 < lo ? rows - r0 : lo };
        st = expert_ffn_part(c, d_x + (size_t)r0 * hidden, 1, off, w, wdt, hidden, inter,
                             d_y + (size_t)r0 * hidden);
    }
    return st;
}

/* Validate, then run the groups in runs whose workspace fits.  An expert's
 * rows stay in one call when they fit and its pointers keep their alignment,
 * so (LOOP and INVARIANT modes) the result is the same bits as one call over
 * all groups; an expert too large for the workspace alone runs in row chunks
 * (expert_ffn_rows). */
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
    off = (int *)malloc(sizeof(int) * (size_t)(n_groups + 1));
    if (!off) return moe_errorf(MOE_ENOMEM, "expert_ffn: out of host memory");
    for (int g0 = 0; g0 < n_groups && st == MOE_OK;) {
        size_t used = group_ws(c->gemm_mode, wdt, (size_t)(h_off[g0 + 1] - h_off[g0]), hidden, inter);
        int g1 = g0 + 1;
        if (used > c->ws_bytes) {
            st = expert_ffn_rows(c, d_xp + (size_t)h_off[g0] * hidden, h_off[g0 + 1] - h_off[g0], &h_w[g0], wdt,
                                 hidden, inter, d_yp + (size_t)h_off[g0] * hidden);
            g0 = g1;
            continue;
        }
        while (g1 < n_groups) {
            size_t more = group_ws(c->gemm_mode, wdt, (size_t)(h_off[g1 + 1] - h_off[g1]), hidden, inter);
            if (used + more > c->ws_bytes) break;
            used += more;
            g1++;
        }
        for (int g = g0; g <= g1; g++) off[g - g0] = h_off[g] - h_off[g0];
        st = expert_ffn_part(c, d_xp + (size_t)h_off[g0] * hidden, g1 - g0, off, h_w + g0, wdt, hidden, inter,
                             d_yp + (size_t)h_off[g0] * hidden);
        g0 = g1;
    }
    free(off);
    return st;
}
