/* The CPU reference backend: every op of kernels/backend.h in C11 over host
 * memory, F32 arithmetic (BF16 weights are widened exactly as they are
 * read).  Ops run synchronously; copies are memcpy.
 * GEMMs use the deterministic kernel of gemm.c (or cblas_sgemm when the
 * caller trades batch invariance for speed, use_blas). */
#include "cpu_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* OpenBLAS extension (declared by its cblas.h on most distributions). */
void openblas_set_num_threads(int num_threads);

struct cpu_ctx {
    struct moe_backend be;
    struct cpu_pool *pool;
    enum cpu_isa isa;
    bool use_blas;
    float *scratch;       /* expert intermediates, grown on demand (never per token) */
    size_t scratch_cap;   /* floats */
};

static const char *dt_name(enum moe_dtype dt)
{
    switch (dt) {
    case MOE_DT_F32: return "F32";
    case MOE_DT_F16: return "F16";
    case MOE_DT_BF16: return "BF16";
    default: return "non-float";
    }
}

#define ATTN_BLOCK 128 /* keys per softmax block in attention: part of each row's arithmetic (attn_tile) */
#define ATTN_ROWS 8    /* (token, head) rows per attention tile */

static enum moe_status bad(const char *op, const char *what, long long v)
{
    return moe_errorf(MOE_EINVAL, "cpu backend %s: %s = %lld is out of range", op, what, v);
}

/* ---- memory ------------------------------------------------------------------ */

/* bytes rounded up to a multiple of 64 (64 for none), aligned to 64; weights of at least one 2 MiB page in
 * transparent huge pages (moe_huge_alloc, its whole pages marked).  Freed by cpu_free. */
static void *cpu_alloc_as(size_t bytes, const char *what, bool weights)
{
    void *p = NULL;
    size_t sz = bytes ? (bytes + 63) & ~(size_t)63 : 64;
    bool huge = weights && bytes >= MOE_HUGE_PAGE;
    if (huge)
        p = moe_huge_alloc(sz, NULL);
    else if (posix_memalign(&p, 64, sz))
        p = NULL;
    if (!p)
        moe_errorf(MOE_ENOMEM, "cpu backend: cannot allocate %zu bytes for %s", bytes,
                   what ? what : huge ? "weights" : "a buffer");
    return p;
}

static void *cpu_alloc(void *ctx, size_t bytes, const char *what)
{
    (void)ctx;
    return cpu_alloc_as(bytes, what, false);
}

static void *cpu_weights_alloc(void *ctx, size_t bytes, const char *what)
{
    (void)ctx;
    return cpu_alloc_as(bytes, what, true);
}

static void cpu_free(void *ctx, void *buf)
{
    (void)ctx;
    free(buf);
}

static enum moe_status cpu_copy(void *ctx, void *dst, const void *src, size_t bytes)
{
    (void)ctx;
    if (bytes) memmove(dst, src, bytes);
    return MOE_OK;
}

static enum moe_status cpu_memset0(void *ctx, void *dst, size_t bytes)
{
    (void)ctx;
    if (bytes) memset(dst, 0, bytes);
    return MOE_OK;
}

static enum moe_status cpu_sync(void *ctx)
{
    (void)ctx;
    return MOE_OK;
}

static void cpu_destroy(void *ctx)
{
    struct cpu_ctx *c = ctx;
    cpu_pool_destroy(c->pool);
    free(c->scratch);
    free(c);
}

/* ---- ops --------------------------------------------------------------------- */

static enum moe_status cpu_embed(void *ctx, const void *table, enum moe_dtype dt, int vocab,
                                 int hidden, const int32_t *ids, int n, float *out)
{
    (void)ctx;
    if (dt != MOE_DT_F32 && dt != MOE_DT_BF16)
        return moe_errorf(MOE_ENOTSUP, "cpu backend embed: table dtype %s (F32 or BF16)",
                          dt_name(dt));
    for (int i = 0; i < n; i++) {
        float *o = out + (size_t)i * hidden;
        int id = ids[i];
        if (id < 0 || id >= vocab) {
            for (int d = 0; d < hidden; d++) o[d] = NAN;
            continue;
        }
        if (dt == MOE_DT_F32) {
            memcpy(o, (const float *)table + (size_t)id * hidden, (size_t)hidden * sizeof(float));
        } else {
            const uint16_t *r = (const uint16_t *)table + (size_t)id * hidden;
            for (int d = 0; d < hidden; d++) o[d] = moe_bf16_to_f32(r[d]);
        }
    }
    return MOE_OK;
}

static enum moe_status cpu_rmsnorm(void *ctx, const float *x, const float *w, float *y, int rows,
                                   int dim, float eps)
{
    (void)ctx;
    if (dim <= 0) return bad("rmsnorm", "dim", dim);
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * dim;
        float *yr = y + (size_t)r * dim;
        float l[8] = { 0 };
        int d8 = dim & ~7, d = 0;
        for (; d < d8; d += 8)
            for (int j = 0; j < 8; j++) l[j] += xr[d + j] * xr[d + j];
        for (int j = 0; d + j < dim; j++) l[j] += xr[d + j] * xr[d + j];
        float ss = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int j = 0; j < dim; j++) yr[j] = w[j] * (xr[j] * inv);
    }
    return MOE_OK;
}

static enum moe_status cpu_linear(void *ctx, const float *x, const void *w, enum moe_dtype wdt,
                                  const float *bias, int n, int in, int out, float *y)
{
    struct cpu_ctx *c = ctx;
    if (wdt != MOE_DT_F32 && wdt != MOE_DT_BF16)
        return moe_errorf(MOE_ENOTSUP, "cpu backend linear: weight dtype %s (F32 or BF16)",
                          dt_name(wdt));
    if (n < 0 || in <= 0 || out <= 0)
        return moe_errorf(MOE_EINVAL, "cpu backend linear: bad shape n=%d in=%d out=%d", n, in, out);
    if (c->use_blas && wdt == MOE_DT_F32 && n > 0) {
        if (bias)
            for (int i = 0; i < n; i++) memcpy(y + (size_t)i * out, bias, (size_t)out * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in,
                    bias ? 1.0f : 0.0f, y, out);
        return MOE_OK;
    }
    cpu_gemm_nt(c->isa, c->pool, x, w, wdt, bias, n, in, out, y);
    return MOE_OK;
}

static enum moe_status cpu_rope(void *ctx, float *x, const int32_t *pos, int n, int n_heads,
                                int head_dim, int rot_dim, const float *inv_freq, float scale)
{
    (void)ctx;
    if (head_dim <= 0 || head_dim > 4096) return bad("rope", "head_dim", head_dim);
    if (rot_dim <= 0 || rot_dim % 2 || rot_dim > head_dim) return bad("rope", "rot_dim", rot_dim);
    int half = rot_dim / 2;
    float cs[2048], sn[2048];
    for (int t = 0; t < n; t++) {
        for (int i = 0; i < half; i++) {
            float a = (float)pos[t] * inv_freq[i];
            cs[i] = cosf(a) * scale;
            sn[i] = sinf(a) * scale;
        }
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * cs[i] - b * sn[i];
                v[i + half] = b * cs[i] + a * sn[i];
            }
        }
    }
    return MOE_OK;
}

static enum moe_status cache_dtype_ok(const char *op, enum moe_dtype cdt)
{
    if (cdt == MOE_DT_F32 || cdt == MOE_DT_BF16) return MOE_OK;
    return moe_errorf(MOE_ENOTSUP, "cpu backend %s: KV cache dtype %s (F32 or BF16)", op, moe_dtype_name(cdt));
}

static enum moe_status cpu_kv_store(void *ctx, const float *k, const float *v, void *kcache, void *vcache,
                                    enum moe_dtype cdt, const int32_t *seq, const int32_t *pos, int n,
                                    int max_ctx, int kv_dim)
{
    (void)ctx;
    enum moe_status st = cache_dtype_ok("kv_store", cdt);
    if (st != MOE_OK) return st;
    for (int i = 0; i < n; i++) {
        if (pos[i] < 0 || pos[i] >= max_ctx) return bad("kv_store", "pos", pos[i]);
        if (seq[i] < 0) return bad("kv_store", "seq", seq[i]);
    }
    for (int i = 0; i < n; i++) {
        size_t off = ((size_t)seq[i] * (size_t)max_ctx + (size_t)pos[i]) * (size_t)kv_dim;
        const float *kr = k + (size_t)i * kv_dim, *vr = v + (size_t)i * kv_dim;
        if (cdt == MOE_DT_F32) {
            memcpy((float *)kcache + off, kr, (size_t)kv_dim * sizeof(float));
            memcpy((float *)vcache + off, vr, (size_t)kv_dim * sizeof(float));
        } else {
            uint16_t *kd = (uint16_t *)kcache + off, *vd = (uint16_t *)vcache + off;
            for (int d = 0; d < kv_dim; d++) {
                kd[d] = moe_f32_to_bf16(kr[d]);
                vd[d] = moe_f32_to_bf16(vr[d]);
            }
        }
    }
    return MOE_OK;
}

struct attn_job {
    struct cpu_ctx *c;
    const float *q;
    const void *kc, *vc;
    bool bf16;                            /* the cache is BF16 (else F32) */
    const int32_t *seq, *pos;
    int n, nh, nkv, hd, max_ctx, window;
    float scale;
    float *out;
};

/* First key of a row of `len` keys: the last `window` of them with a window. */
static int attn_first(const struct attn_job *j, int len)
{
    return j->window > 0 && len > j->window ? len - j->window : 0;
}

/* Attention of a tile: rows (t, h) for tokens t0..t1-1 and query heads h0..h1-1 of
 * one KV head (row r = (t - t0) * (h1 - h0) + h - h0), the tokens of one sequence
 * at consecutive positions with the same first key; each key and value row is
 * read once for the tile.  Which rows share a tile changes nothing in a row's
 * arithmetic, which depends only on its query and its sequence's cache (a BF16
 * cache read as the F32 values it holds).  For row (t, h), with len = pos[t] + 1,
 * first = attn_first(len) and g = h / (nh / nkv):
 *
 *   o[d] = 0, m = -inf, l = 0
 *   for b0 = first, first + ATTN_BLOCK, ... < len, nb = min(ATTN_BLOCK, len - b0):
 *     s[i] = cpu_dot(q, key b0 + i of head g) * scale          i < nb
 *     bm = the largest s[i] (NaNs skipped)
 *     if (bm > m) { f = m == -inf ? 0 : expf(m - bm); l = l * f; o[d] = o[d] * f; m = bm; }
 *     s[i] = expf(s[i] - (m == -inf ? 0 : m))                   i < nb
 *     for i = 0 .. nb - 1 in order: l = l + s[i], o[d] = o[d] + s[i] * v[b0 + i][d]
 *                                   (a multiply, then an add)
 *   o[d] = o[d] * (1 / l)
 *
 * bm's sign, when it is a zero, may depend on the order the maximum is taken in,
 * but never reaches a result: bm > m compares the zeros equal, m - bm (m nonzero
 * there) and s[i] - m differ at most in the sign of a zero result, and
 * expf(-0) = expf(+0) = 1. */
static void attn_tile(const struct attn_job *j, int t0, int t1, int h0, int h1)
{
    enum cpu_isa isa = j->c->isa;
    int hd = j->hd, kvd = j->nkv * hd, hc = h1 - h0, nr = (t1 - t0) * hc;
    int g = h0 / (j->nh / j->nkv);
    size_t es = j->bf16 ? 2 : 4, seq0 = (size_t)j->seq[t0] * j->max_ctx;
    const char *kb = (const char *)j->kc + (seq0 * kvd + (size_t)g * hd) * es;
    const char *vb = (const char *)j->vc + (seq0 * kvd + (size_t)g * hd) * es;
    const float *q[ATTN_ROWS];
    float *o[ATTN_ROWS], m[ATTN_ROWS], l[ATTN_ROWS], s[ATTN_ROWS][ATTN_BLOCK];
    int len[ATTN_ROWS], nb[ATTN_ROWS];
    for (int r = 0; r < nr; r++) {
        int t = t0 + r / hc, h = h0 + r % hc;
        q[r] = j->q + ((size_t)t * j->nh + h) * hd;
        o[r] = j->out + ((size_t)t * j->nh + h) * hd;
        for (int d = 0; d < hd; d++) o[r][d] = 0.0f;
        m[r] = -INFINITY;
        l[r] = 0.0f;
        len[r] = j->pos[t] + 1; /* ascending with r's token */
    }
    int last = len[nr - 1];
    for (int b0 = attn_first(j, len[0]), ra = 0; b0 < last; b0 += ATTN_BLOCK) {
        while (len[ra] <= b0) ra++; /* rows ra.. have keys in this block */
        cpu_attn_scores(isa, q + ra, nr - ra, kb + (size_t)b0 * kvd * es, j->bf16, (size_t)kvd,
                        last - b0 < ATTN_BLOCK ? last - b0 : ATTN_BLOCK, hd, s[ra], ATTN_BLOCK);
        for (int r = ra; r < nr; r++) {
            nb[r] = len[r] - b0 < ATTN_BLOCK ? len[r] - b0 : ATTN_BLOCK;
            float bm = cpu_attn_scale_max(isa, s[r], nb[r], j->scale);
            if (bm > m[r]) {
                float f = m[r] == -INFINITY ? 0.0f : expf(m[r] - bm);
                l[r] *= f;
                for (int d = 0; d < hd; d++) o[r][d] *= f;
                m[r] = bm;
            }
            /* blocks of only -inf scores so far weigh nothing (exp against 0), where -inf - -inf
             * made the row NaN although later keys score finitely */
            cpu_exp(isa, s[r], nb[r], m[r] == -INFINITY ? 0.0f : m[r]);
        }
        cpu_attn_wsum(isa, o + ra, l + ra, s[ra], ATTN_BLOCK, nb + ra, nr - ra, vb + (size_t)b0 * kvd * es, j->bf16,
                      (size_t)kvd, hd);
    }
    for (int r = 0; r < nr; r++) {
        float inv = 1.0f / l[r];
        for (int d = 0; d < hd; d++) o[r][d] *= inv;
    }
}

/* Tiles: runs of tokens that continue one sequence's positions with the same
 * first key (at most ATTN_ROWS / hc tokens) times chunks of hc <= ATTN_ROWS
 * query heads of one KV head; tile w goes to thread w mod nth. */
static void attn_task(void *arg, int tid, int nth)
{
    const struct attn_job *j = arg;
    int per = j->nh / j->nkv, hc = per < ATTN_ROWS ? per : ATTN_ROWS, tmax = ATTN_ROWS / hc, w = 0;
    for (int t0 = 0, t1; t0 < j->n; t0 = t1) {
        int first = attn_first(j, j->pos[t0] + 1);
        for (t1 = t0 + 1; t1 < j->n && t1 - t0 < tmax; t1++)
            if (j->seq[t1] != j->seq[t0] || j->pos[t1] != j->pos[t1 - 1] + 1 || attn_first(j, j->pos[t1] + 1) != first)
                break;
        for (int g = 0; g < j->nkv; g++)
            for (int c0 = 0; c0 < per; c0 += hc, w++)
                if (w % nth == tid) attn_tile(j, t0, t1, g * per + c0, g * per + (per - c0 < hc ? per : c0 + hc));
    }
}

static enum moe_status cpu_attention(void *ctx, const float *q, const void *kcache, const void *vcache,
                                     enum moe_dtype cdt, const int32_t *seq, const int32_t *pos, int n,
                                     int pos_max, int n_heads, int n_kv_heads, int head_dim, int max_ctx,
                                     int window, float scale, float *out)
{
    struct cpu_ctx *c = ctx;
    enum moe_status st = cache_dtype_ok("attention", cdt);
    if (st != MOE_OK) return st;
    if (n_kv_heads <= 0 || n_heads <= 0 || n_heads % n_kv_heads)
        return moe_errorf(MOE_EINVAL, "cpu backend attention: n_heads %d not a multiple of n_kv_heads %d",
                          n_heads, n_kv_heads);
    /* pos_max sizes nothing here; it is checked, so that a caller that passes a wrong bound (which
     * the CUDA backend answers with NaN rows) fails here too */
    if (n > 0 && (pos_max < 0 || pos_max >= max_ctx)) return bad("attention", "pos_max", pos_max);
    long long work = 0;
    for (int i = 0; i < n; i++) {
        if (pos[i] < 0 || pos[i] >= max_ctx) return bad("attention", "pos", pos[i]);
        if (pos[i] > pos_max)
            return moe_errorf(MOE_EINVAL, "cpu backend attention: pos[%d] = %d is above pos_max = %d: pass the "
                              "call's largest position", i, pos[i], pos_max);
        if (seq[i] < 0) return bad("attention", "seq", seq[i]);
        work += pos[i] + 1;
    }
    if (window < 0) return bad("attention", "window", window);
    struct attn_job j = { c, q, kcache, vcache, cdt == MOE_DT_BF16, seq, pos, n, n_heads, n_kv_heads, head_dim,
                          max_ctx, window, scale, out };
    if (work * n_heads * head_dim < 65536)
        attn_task(&j, 0, 1);
    else
        cpu_pool_run(c->pool, attn_task, &j);
    return MOE_OK;
}

/* Top-k of row x[E] by value, descending, ties to the lower index. */
static void topk_row(const float *x, int E, int k, int32_t *ids)
{
    for (int r = 0; r < k; r++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int q = 0; q < r; q++)
                if (ids[q] == e) taken = true;
            if (taken) continue;
            /* NaN never wins over a number. */
            if (best < 0 || x[e] > x[best] || (isnan(x[best]) && !isnan(x[e]))) best = e;
        }
        ids[r] = best;
    }
}

static enum moe_status cpu_router(void *ctx, const float *logits, int n, int E, int k,
                                  enum moe_router_kind kind, bool renorm, int32_t *ids, float *w)
{
    struct cpu_ctx *c = ctx;
    if (k <= 0 || k > E) return bad("router", "k", k);
    for (int t = 0; t < n; t++) {
        const float *x = logits + (size_t)t * E;
        int32_t *id = ids + (size_t)t * k;
        float *wt = w + (size_t)t * k;
        topk_row(x, E, k, id);
        if (kind == MOE_ROUTER_TOPK_SOFTMAX) {
            float m = x[id[0]], sum = 0.0f;
            for (int r = 0; r < k; r++) sum += (wt[r] = expf(x[id[r]] - m));
            for (int r = 0; r < k; r++) wt[r] /= sum;
        } else {
            float m = x[id[0]], sum = 0.0f, ex[64];
            for (int e0 = 0; e0 < E; e0 += 64) { /* sum += expf(x[e] - m), e = 0..E-1 in order */
                int ne = E - e0 < 64 ? E - e0 : 64;
                memcpy(ex, x + e0, sizeof(float) * (size_t)ne);
                cpu_exp(c->isa, ex, ne, m);
                for (int e = 0; e < ne; e++) sum += ex[e];
            }
            for (int r = 0; r < k; r++) wt[r] = expf(x[id[r]] - m) / sum;
            if (renorm) {
                float s = 0.0f;
                for (int r = 0; r < k; r++) s += wt[r];
                for (int r = 0; r < k; r++) wt[r] /= s;
            }
        }
    }
    return MOE_OK;
}

static enum moe_status cpu_router_grouped(void *ctx, const float *logits, const float *bias, int n, int E, int k,
                                          enum moe_router_kind kind, int n_group, int topk_group, bool renorm,
                                          float scale, int32_t *ids, float *w)
{
    struct cpu_ctx *cx = ctx;
    bool v2 = kind == MOE_ROUTER_SOFTMAX_GROUP, ernie = kind == MOE_ROUTER_SOFTMAX_BIAS;
    if (k <= 0 || k > E) return bad("router_grouped", "k", k);
    if (!v2 && !ernie && kind != MOE_ROUTER_SIGMOID_GROUP) return bad("router_grouped", "kind", (int)kind);
    if (ernie && n_group != 1) return bad("router_grouped", "n_group", n_group);
    if (n_group <= 0 || E % n_group || E / n_group < (v2 || ernie ? 1 : 2)) return bad("router_grouped", "n_group", n_group);
    if (!v2 && !bias) return moe_errorf(MOE_EINVAL, "cpu backend router_grouped: no bias for router kind %d", (int)kind);
    if (topk_group <= 0 || topk_group > n_group) return bad("router_grouped", "topk_group", topk_group);
    int per = E / n_group;
    float *s = malloc(sizeof(float) * (2 * (size_t)E + (size_t)n_group));
    int32_t *gk = malloc(sizeof(int32_t) * (size_t)n_group), top2[2] = { 0, 1 };
    if (!s || !gk) {
        free(s);
        free(gk);
        return moe_errorf(MOE_ENOMEM, "cpu backend router_grouped: out of memory for %d experts", E);
    }
    float *c = s + E, *gs = c + E;
    for (int t = 0; t < n; t++) {
        const float *x = logits + (size_t)t * E;
        if (v2 || ernie) {
            topk_row(x, E, 1, top2); /* the largest logit, as the softmax router takes it */
            float m = x[top2[0]], sum = 0.0f;
            memcpy(s, x, sizeof(float) * (size_t)E);
            cpu_exp(cx->isa, s, E, m); /* s[e] = expf(x[e] - m) */
            for (int e = 0; e < E; e++) sum += s[e];
            for (int e = 0; e < E; e++) c[e] = (s[e] /= sum) + (ernie ? bias[e] : 0.0f);
        } else {
            cpu_sigmoid(cx->isa, x, s, E);
            for (int e = 0; e < E; e++) c[e] = s[e] + bias[e];
        }
        for (int g = 0; g < n_group; g++) {
            bool one = v2 || ernie; /* groups scored by their largest (ERNIE: one group, whatever its score) */
            topk_row(c + (size_t)g * per, per, one ? 1 : 2, top2);
            gs[g] = one ? c[g * per + top2[0]] : c[g * per + top2[0]] + c[g * per + top2[1]];
        }
        topk_row(gs, n_group, topk_group, gk);
        for (int g = 0; g < n_group; g++) {
            bool kept = false;
            for (int q = 0; q < topk_group; q++) kept |= gk[q] == g;
            if (!kept)
                for (int e = g * per; e < (g + 1) * per; e++) c[e] = 0.0f;
        }
        int32_t *id = ids + (size_t)t * k;
        float *wt = w + (size_t)t * k, sum = 0.0f;
        topk_row(c, E, k, id);
        for (int r = 1; r < k; r++) /* by descending weight, ties to the lower id, as every router orders */
            for (int q = r; q > 0; q--) {
                int32_t a = id[q - 1], b = id[q];
                if (s[b] < s[a] || (s[b] == s[a] && b > a)) break;
                id[q - 1] = b;
                id[q] = a;
            }
        for (int r = 0; r < k; r++) sum += (wt[r] = s[id[r]]);
        float div = ernie ? fmaxf(sum, MOE_ERNIE_NORM_MIN) : sum + 1e-20f;
        for (int r = 0; r < k; r++) wt[r] = (renorm ? wt[r] / div : wt[r]) * scale;
    }
    free(s);
    free(gk);
    return MOE_OK;
}

static enum moe_status cpu_copy_blocks(void *ctx, const float *x, int x_row, int x_group, float *y, int y_row,
                                       int y_group, int rows, int groups, int width)
{
    (void)ctx;
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++)
            memcpy(y + (size_t)r * y_row + (size_t)g * y_group, x + (size_t)r * x_row + (size_t)g * x_group,
                   (size_t)width * sizeof(float));
    return MOE_OK;
}

static enum moe_status cpu_gather_rows(void *ctx, const float *x, const int32_t *rows, int n_rows,
                                       int dim, float *out)
{
    (void)ctx;
    for (int r = 0; r < n_rows; r++)
        memcpy(out + (size_t)r * dim, x + (size_t)rows[r] * dim, (size_t)dim * sizeof(float));
    return MOE_OK;
}

static enum moe_status cpu_swiglu(void *ctx, const float *gate, const float *up, float *out,
                                  size_t count)
{
    struct cpu_ctx *c = ctx;
    cpu_silu_mul(c->isa, gate, up, out, count);
    return MOE_OK;
}

struct experts_job {
    struct cpu_ctx *c;
    const float *xp;
    int n_groups;
    const int *off;
    const struct moe_backend_expert *w;
    enum moe_dtype wdt;
    int hidden, inter;
    float *yp;
    bool threaded_gemm; /* one group at a time, GEMMs split over threads */
};

/* Group g: scratch rows off[g]..off[g+1]-1 of [rows, 2*inter], disjoint per group. */
static void experts_group(const struct experts_job *j, int g, struct cpu_pool *pool)
{
    int r0 = j->off[g], nr = j->off[g + 1] - r0;
    if (nr <= 0) return;
    float *gt = j->c->scratch + (size_t)r0 * 2 * j->inter;
    float *up = gt + (size_t)nr * j->inter;
    const float *x = j->xp + (size_t)r0 * j->hidden;
    cpu_gemm_nt(j->c->isa, pool, x, j->w[g].gate, j->wdt, NULL, nr, j->hidden, j->inter, gt);
    cpu_gemm_nt(j->c->isa, pool, x, j->w[g].up, j->wdt, NULL, nr, j->hidden, j->inter, up);
    cpu_silu_mul(j->c->isa, gt, up, gt, (size_t)nr * j->inter);
    cpu_gemm_nt(j->c->isa, pool, gt, j->w[g].down, j->wdt, NULL, nr, j->inter, j->hidden,
                j->yp + (size_t)r0 * j->hidden);
}

static void experts_task(void *arg, int tid, int nth)
{
    const struct experts_job *j = arg;
    for (int g = tid; g < j->n_groups; g += nth) experts_group(j, g, NULL);
}

static enum moe_status cpu_moe_experts(void *ctx, const float *xp, int n_groups, const int *h_off,
                                       const struct moe_backend_expert *h_w, enum moe_dtype wdt,
                                       int hidden, int inter, float *yp)
{
    struct cpu_ctx *c = ctx;
    if (wdt != MOE_DT_F32 && wdt != MOE_DT_BF16)
        return moe_errorf(MOE_ENOTSUP, "cpu backend moe_experts: weight dtype %s (F32 or BF16)",
                          dt_name(wdt));
    if (n_groups < 0 || hidden <= 0 || inter <= 0)
        return moe_errorf(MOE_EINVAL, "cpu backend moe_experts: bad shape groups=%d hidden=%d inter=%d",
                          n_groups, hidden, inter);
    if (n_groups == 0) return MOE_OK;
    if (h_off[0] != 0) return bad("moe_experts", "off[0]", h_off[0]);
    for (int g = 0; g < n_groups; g++)
        if (h_off[g + 1] < h_off[g]) return bad("moe_experts", "off (decreasing) at group", g);
    size_t rows = (size_t)h_off[n_groups];
    /* use_blas: a BF16 expert (a device tier's slot) is widened to F32 after the intermediates, so that
     * it goes through OpenBLAS as the F32 copy of the same values that use_blas keeps resident does:
     * the same bits wherever the expert was held */
    size_t mat = (size_t)inter * (size_t)hidden, wide = c->use_blas && wdt == MOE_DT_BF16 ? 3 * mat : 0;
    size_t need = rows * 2 * (size_t)inter + wide;
    if (need > c->scratch_cap) {
        float *s = realloc(c->scratch, need * sizeof(float));
        if (!s)
            return moe_errorf(MOE_ENOMEM, "cpu backend moe_experts: cannot allocate %zu bytes of scratch",
                              need * sizeof(float));
        c->scratch = s;
        c->scratch_cap = need;
    }
    if (c->use_blas) {
        float *wf = c->scratch + rows * 2 * (size_t)inter;
        for (int g = 0; g < n_groups; g++) {
            int r0 = h_off[g], nr = h_off[g + 1] - r0;
            if (nr <= 0) continue;
            float *gt = c->scratch + (size_t)r0 * 2 * inter, *up = gt + (size_t)nr * inter;
            const float *x = xp + (size_t)r0 * hidden;
            const float *wg = h_w[g].gate, *wu = h_w[g].up, *wd = h_w[g].down;
            if (wide) {
                const uint16_t *src[3] = { h_w[g].gate, h_w[g].up, h_w[g].down };
                for (int k = 0; k < 3; k++)
                    for (size_t i = 0; i < mat; i++) wf[k * mat + i] = moe_bf16_to_f32(src[k][i]);
                wg = wf;
                wu = wf + mat;
                wd = wf + 2 * mat;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, inter, hidden, 1.0f, x, hidden,
                        wg, hidden, 0.0f, gt, inter);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, inter, hidden, 1.0f, x, hidden,
                        wu, hidden, 0.0f, up, inter);
            cpu_silu_mul(c->isa, gt, up, gt, (size_t)nr * inter);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, hidden, inter, 1.0f, gt, inter,
                        wd, inter, 0.0f, yp + (size_t)r0 * hidden, hidden);
        }
        return MOE_OK;
    }
    struct experts_job j = { c, xp, n_groups, h_off, h_w, wdt, hidden, inter, yp, false };
    int nth = cpu_pool_size(c->pool);
    double work = (double)rows * hidden * inter * 3.0;
    if (nth == 1 || work < 262144.0) {
        for (int g = 0; g < n_groups; g++) experts_group(&j, g, NULL);
    } else if (n_groups >= 2 * nth) {
        cpu_pool_run(c->pool, experts_task, &j); /* whole groups per thread */
    } else {
        for (int g = 0; g < n_groups; g++) experts_group(&j, g, c->pool);
    }
    return MOE_OK;
}

static enum moe_status cpu_moe_combine(void *ctx, const float *yp, const int32_t *inv,
                                       const float *w, int n, int k, int dim, bool accumulate,
                                       float *out)
{
    (void)ctx;
    for (int t = 0; t < n; t++) {
        float *o = out + (size_t)t * dim;
        for (int r = 0; r < k; r++) {
            const float *y = yp + (size_t)inv[(size_t)t * k + r] * dim;
            float wr = w[(size_t)t * k + r];
            if (r == 0 && !accumulate)
                for (int d = 0; d < dim; d++) o[d] = wr * y[d];
            else
                for (int d = 0; d < dim; d++) o[d] += wr * y[d];
        }
    }
    return MOE_OK;
}

static enum moe_status cpu_sigmoid_scale_add(void *ctx, const float *s, const float *y, int n,
                                             int dim, float *out)
{
    (void)ctx;
    for (int t = 0; t < n; t++) {
        float g = 1.0f / (1.0f + expf(-s[t]));
        for (int d = 0; d < dim; d++) out[(size_t)t * dim + d] += g * y[(size_t)t * dim + d];
    }
    return MOE_OK;
}

static enum moe_status cpu_add(void *ctx, float *y, const float *x, size_t count)
{
    (void)ctx;
    for (size_t i = 0; i < count; i++) y[i] += x[i];
    return MOE_OK;
}

static enum moe_status cpu_argmax(void *ctx, const float *x, int rows, int dim, int32_t *out)
{
    (void)ctx;
    for (int r = 0; r < rows; r++) {
        const float *v = x + (size_t)r * dim;
        int best = -1;
        for (int i = 0; i < dim; i++) {
            if (isnan(v[i])) continue;
            if (best < 0 || v[i] > v[best]) best = i;
        }
        out[r] = best < 0 ? 0 : best;
    }
    return MOE_OK;
}

/* The host's RAM (moe_host_memory). */
static enum moe_status cpu_mem_info(void *ctx, size_t *free_bytes, size_t *total_bytes)
{
    (void)ctx;
    uint64_t avail, total;
    if (!moe_host_memory(&avail, &total)) return moe_errorf(MOE_EIO, "cpu backend: cannot read the host's memory size");
    *free_bytes = (size_t)avail;
    *total_bytes = (size_t)total;
    return MOE_OK;
}

static const struct moe_backend_ops cpu_ops = {
    .buf_alloc = cpu_alloc,
    .buf_free = cpu_free,
    .weights_alloc = cpu_weights_alloc,
    .copy_h2d = cpu_copy,
    .copy_d2h = cpu_copy,
    .copy_d2d = cpu_copy,
    .memset0 = cpu_memset0,
    .synchronize = cpu_sync,
    .destroy = cpu_destroy,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .linear = cpu_linear,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .router = cpu_router,
    .router_grouped = cpu_router_grouped,
    .copy_blocks = cpu_copy_blocks,
    .gather_rows = cpu_gather_rows,
    .moe_experts = cpu_moe_experts,
    .moe_combine = cpu_moe_combine,
    .swiglu = cpu_swiglu,
    .sigmoid_scale_add = cpu_sigmoid_scale_add,
    .add = cpu_add,
    .argmax = cpu_argmax,
    .mem_info = cpu_mem_info,
};

struct moe_backend *moe_backend_cpu_create(const struct moe_backend_cpu_params *p)
{
    struct moe_backend_cpu_params def = { 0 };
    if (!p) p = &def;
    if (p->n_threads < 0 || p->n_threads > MOE_CPU_MAX_THREADS) {
        moe_errorf(MOE_EINVAL, "cpu backend: n_threads = %d (0..%d)", p->n_threads, MOE_CPU_MAX_THREADS);
        return NULL;
    }
    struct cpu_ctx *c = calloc(1, sizeof(*c));
    if (!c) {
        moe_errorf(MOE_ENOMEM, "cpu backend: out of memory");
        return NULL;
    }
    int nth = p->n_threads ? p->n_threads : 1;
    c->pool = cpu_pool_create(nth);
    if (!c->pool) {
        free(c);
        return NULL;
    }
    c->isa = cpu_isa_detect();
    c->use_blas = p->use_blas;
    /* OpenBLAS's thread count is process-wide: only a backend that uses it sets it (another
     * backend in the process, such as a predictor's, must not change it) */
    if (c->use_blas) openblas_set_num_threads(nth);
    c->be.ops = &cpu_ops;
    c->be.ctx = c;
    c->be.name = "cpu";
    c->be.host_visible = true;
    /* BF16 matrices (half the bytes a decode step reads; the kernels widen
     * them exactly), F32 for OpenBLAS, which takes F32 only */
    c->be.weight_dtype = c->use_blas ? MOE_DT_F32 : MOE_DT_BF16;
    c->be.exact_weights = true;
    return &c->be;
}

void moe_backend_destroy(struct moe_backend *be)
{
    if (be && be->ops && be->ops->destroy) be->ops->destroy(be->ctx);
}
