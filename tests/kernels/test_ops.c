/* CPU backend ops through the backend table, each against a naive loop in
 * double precision; attention and the expert op also for bit-identity across
 * batch composition, chunking and thread count, attention also bit for bit
 * against its per-row order of operations written out in scalar code. */
#include "kernels/backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "tests/test_util.h"

#include <math.h>
#include <unistd.h>

static uint64_t rng = 0x1234567887654321ull;
static float frand(void)
{
    return (float)((t_xorshift(&rng) >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}
static void fill(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = frand();
}

#define OK(call) REQUIRE((call) == MOE_OK, "%s: %s", #call, moe_last_error())

static double maxdiff(const float *a, const double *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

static void test_embed_rmsnorm(struct moe_backend *be)
{
    const struct moe_backend_ops *o = be->ops;
    int V = 11, H = 13;
    float tab[11 * 13], out[4 * 13];
    uint16_t tb[11 * 13];
    fill(tab, MOE_ARRAY_LEN(tab));
    for (size_t i = 0; i < MOE_ARRAY_LEN(tab); i++) tb[i] = moe_f32_to_bf16(tab[i]);
    int32_t ids[4] = { 3, 0, 10, 11 };
    OK(o->embed(be->ctx, tab, MOE_DT_F32, V, H, ids, 4, out));
    CHECK(!memcmp(out, tab + 3 * H, H * sizeof(float)) && !memcmp(out + 2 * H, tab + 10 * H, H * sizeof(float)),
          "embed F32 rows");
    CHECK(isnan(out[3 * H]), "embed: out-of-range id gives NaN");
    OK(o->embed(be->ctx, tb, MOE_DT_BF16, V, H, ids, 3, out));
    CHECK(out[H + 5] == moe_bf16_to_f32(tb[5]), "embed BF16");

    int rows = 5, dim = 37;
    float x[5 * 37], w[37], y[5 * 37];
    double ref[5 * 37];
    fill(x, MOE_ARRAY_LEN(x));
    fill(w, MOE_ARRAY_LEN(w));
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int d = 0; d < dim; d++) ss += (double)x[r * dim + d] * x[r * dim + d];
        double inv = 1.0 / sqrt(ss / dim + 1e-6);
        for (int d = 0; d < dim; d++) ref[r * dim + d] = w[d] * x[r * dim + d] * inv;
    }
    OK(o->rmsnorm(be->ctx, x, w, y, rows, dim, 1e-6f));
    CHECK(maxdiff(y, ref, MOE_ARRAY_LEN(y)) < 1e-5, "rmsnorm err %g", maxdiff(y, ref, MOE_ARRAY_LEN(y)));
    OK(o->rmsnorm(be->ctx, x, w, x, rows, dim, 1e-6f)); /* in place */
    CHECK(!memcmp(x, y, sizeof(y)), "rmsnorm in place differs");
}

/* rot = hd: the whole head; rot < hd: its first rot dims, the rest untouched (GLM-4.5). */
static void test_rope_width(struct moe_backend *be, int rot)
{
    enum { n = 3, nh = 2, hd = 8 };
    float x[n * nh * hd], x0[n * nh * hd];
    double ref[n * nh * hd];
    int32_t pos[n] = { 0, 5, 1000 };
    fill(x, MOE_ARRAY_LEN(x));
    memcpy(x0, x, sizeof(x));
    for (size_t i = 0; i < MOE_ARRAY_LEN(x); i++) ref[i] = x0[i];
    for (int t = 0; t < n; t++)
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < rot / 2; i++) {
                double f = pos[t] * pow(10000.0, -2.0 * i / rot);
                const float *v = x0 + (t * nh + h) * hd;
                ref[(t * nh + h) * hd + i] = v[i] * cos(f) - v[i + rot / 2] * sin(f);
                ref[(t * nh + h) * hd + i + rot / 2] = v[i + rot / 2] * cos(f) + v[i] * sin(f);
            }
    float inv_freq[64], cs_scale;
    struct moe_config rc = { .rope_theta = 10000.0f };
    moe_config_rope(&rc, rot, inv_freq, &cs_scale);
    OK(be->ops->rope(be->ctx, x, pos, n, nh, hd, rot, inv_freq, cs_scale));
    /* F32 angles at position 1000: ~1e-4 absolute */
    CHECK(maxdiff(x, ref, MOE_ARRAY_LEN(x)) < 3e-4, "rope (%d of %d dims) err %g", rot, hd,
          maxdiff(x, ref, MOE_ARRAY_LEN(x)));
    CHECK(!memcmp(x, x0, sizeof(float) * nh * hd), "rope at position 0 is the identity");
    for (int r = 0; r < n * nh; r++)
        CHECK(!memcmp(x + r * hd + rot, x0 + r * hd + rot, sizeof(float) * (hd - rot)),
              "rope over %d of %d dims changed the others", rot, hd);
    CHECK(be->ops->rope(be->ctx, x, pos, n, nh, hd, hd + 2, inv_freq, cs_scale) != MOE_OK &&
              be->ops->rope(be->ctx, x, pos, n, nh, hd, 3, inv_freq, cs_scale) != MOE_OK,
          "rope took a rotated width above head_dim or odd");
    moe_error_clear();
}

static void test_rope(struct moe_backend *be)
{
    test_rope_width(be, 8);
    test_rope_width(be, 4);
}

/* Naive causal GQA with a two-pass softmax in double; window > 0: the last `window` positions only. */
static void attn_ref(const float *q, const float *kc, const float *vc, const int32_t *seq,
                     const int32_t *pos, int n, int nh, int nkv, int hd, int max_ctx, int window, double *out)
{
    int kvd = nkv * hd;
    for (int t = 0; t < n; t++)
        for (int h = 0; h < nh; h++) {
            int g = h / (nh / nkv);
            int len = pos[t] + 1, j0 = window > 0 && len > window ? len - window : 0;
            double *s = malloc(sizeof(double) * len), m = -INFINITY, sum = 0;
            for (int j = 0; j < j0; j++) s[j] = 0;
            for (int j = j0; j < len; j++) {
                const float *k = kc + ((size_t)seq[t] * max_ctx + j) * kvd + g * hd;
                double d = 0;
                for (int e = 0; e < hd; e++) d += (double)q[(t * nh + h) * hd + e] * k[e];
                s[j] = d / sqrt(hd);
                if (s[j] > m) m = s[j];
            }
            for (int j = j0; j < len; j++) sum += (s[j] = exp(s[j] - m));
            for (int e = 0; e < hd; e++) {
                double a = 0;
                for (int j = j0; j < len; j++)
                    a += s[j] / sum * vc[((size_t)seq[t] * max_ctx + j) * kvd + g * hd + e];
                out[(t * nh + h) * hd + e] = a;
            }
            free(s);
        }
}

/* The cache in F32, then in BF16 (keys and values rounded when stored; the reference reads them back
 * widened): attention against the double-precision reference, the same bits for a token alone and with
 * three threads. */
static void test_attention_dt(struct moe_backend *be, struct moe_backend *be3, enum moe_dtype cdt)
{
    const struct moe_backend_ops *o = be->ops;
    int nh = 4, nkv = 2, hd = 16, kvd = nkv * hd, max_ctx = 300, seqs = 3;
    size_t cells = (size_t)seqs * max_ctx * kvd, es = moe_dtype_size(cdt);
    void *kc = calloc(cells, es), *vc = calloc(cells, es);
    float *kf = calloc(cells, sizeof(float)), *vf = calloc(cells, sizeof(float));
    /* seq 0: prefill 0..259 (crosses key blocks); seq 2: 0..4 */
    enum { N = 265 };
    int32_t seq[N], pos[N];
    for (int i = 0; i < 260; i++) seq[i] = 0, pos[i] = i;
    for (int i = 0; i < 5; i++) seq[260 + i] = 2, pos[260 + i] = i;
    float *k = malloc(sizeof(float) * N * kvd), *v = malloc(sizeof(float) * N * kvd);
    float *q = malloc(sizeof(float) * N * nh * hd), *out = malloc(sizeof(float) * N * nh * hd);
    float *one = malloc(sizeof(float) * nh * hd);
    double *ref = malloc(sizeof(double) * N * nh * hd);
    fill(k, (size_t)N * kvd);
    fill(v, (size_t)N * kvd);
    fill(q, (size_t)N * nh * hd);
    for (int i = 0; i < N * nh * hd; i++) q[i] *= 3.0f; /* peakier softmax */
    OK(o->kv_store(be->ctx, k, v, kc, vc, cdt, seq, pos, N, max_ctx, kvd));
    for (size_t i = 0; i < cells; i++) {
        kf[i] = cdt == MOE_DT_F32 ? ((float *)kc)[i] : moe_bf16_to_f32(((uint16_t *)kc)[i]);
        vf[i] = cdt == MOE_DT_F32 ? ((float *)vc)[i] : moe_bf16_to_f32(((uint16_t *)vc)[i]);
    }
    bool placed = true;
    for (int d = 0; d < kvd; d++) {
        float want = k[(size_t)263 * kvd + d];
        if (cdt == MOE_DT_BF16) want = moe_bf16_to_f32(moe_f32_to_bf16(want));
        placed &= kf[(size_t)(2 * max_ctx + 3) * kvd + d] == want;
    }
    CHECK(placed, "kv_store placement (%s)", moe_dtype_name(cdt));
    int pmax = 259; /* the largest position: seq 0's last */
    OK(o->attention(be->ctx, q, kc, vc, cdt, seq, pos, N, pmax, nh, nkv, hd, max_ctx, 0, 0.25f, out));
    attn_ref(q, kf, vf, seq, pos, N, nh, nkv, hd, max_ctx, 0, ref);
    double e = maxdiff(out, ref, (size_t)N * nh * hd);
    CHECK(e < 2e-5, "attention err %g (%s)", e, moe_dtype_name(cdt));
    /* a sliding window of 200 (under the prefill's 260 keys, over a block) and of 3 */
    for (int w = 200; w > 0; w = w == 200 ? 3 : 0) {
        OK(o->attention(be->ctx, q, kc, vc, cdt, seq, pos, N, pmax, nh, nkv, hd, max_ctx, w, 0.25f, out));
        attn_ref(q, kf, vf, seq, pos, N, nh, nkv, hd, max_ctx, w, ref);
        e = maxdiff(out, ref, (size_t)N * nh * hd);
        CHECK(e < 2e-5, "attention (window %d) err %g (%s)", w, e, moe_dtype_name(cdt));
    }
    OK(o->attention(be->ctx, q, kc, vc, cdt, seq, pos, N, pmax, nh, nkv, hd, max_ctx, 0, 0.25f, out));
    /* a token alone (decode style, its own position the bound) and with 3 threads (a loose bound,
     * the cache's last position): same bits */
    int bad = 0;
    for (int t = 0; t < N; t += 37) {
        OK(o->attention(be->ctx, q + (size_t)t * nh * hd, kc, vc, cdt, seq + t, pos + t, 1, pos[t], nh, nkv, hd,
                        max_ctx, 0, 0.25f, one));
        if (memcmp(one, out + (size_t)t * nh * hd, sizeof(float) * nh * hd)) bad++;
    }
    float *out3 = malloc(sizeof(float) * N * nh * hd);
    OK(be3->ops->attention(be3->ctx, q, kc, vc, cdt, seq, pos, N, max_ctx - 1, nh, nkv, hd, max_ctx, 0, 0.25f,
                           out3));
    CHECK(bad == 0, "attention of a token alone differs from in a batch (%d, %s)", bad, moe_dtype_name(cdt));
    CHECK(!memcmp(out3, out, sizeof(float) * N * nh * hd), "attention differs with 3 threads (%s)",
          moe_dtype_name(cdt));
    CHECK(o->attention(be->ctx, q, kc, vc, cdt, seq, pos, 1, pmax, 3, 2, hd, max_ctx, 0, 0.25f, out) != MOE_OK,
          "n_heads not a multiple of n_kv_heads is refused");
    moe_error_clear();
    /* a bound below a position, below 0 or past the cache is refused before anything is written
     * (out keeps its NaNs); an empty call takes any */
    for (size_t i = 0; i < (size_t)N * nh * hd; i++) out[i] = NAN;
    static const int bounds[] = { 258, -1, 300 };
    for (size_t b = 0; b < MOE_ARRAY_LEN(bounds); b++) {
        CHECK(o->attention(be->ctx, q, kc, vc, cdt, seq, pos, N, bounds[b], nh, nkv, hd, max_ctx, 0, 0.25f, out) ==
                  MOE_EINVAL && strstr(moe_last_error(), "pos_max"),
              "attention with pos_max %d (positions up to %d, max_ctx %d): %s", bounds[b], pmax, max_ctx,
              moe_last_error());
        moe_error_clear();
    }
    int unwritten = 0;
    for (size_t i = 0; i < (size_t)N * nh * hd; i++) unwritten += isnan(out[i]) != 0;
    CHECK(unwritten == N * nh * hd, "a refused attention wrote %d values", N * nh * hd - unwritten);
    OK(o->attention(be->ctx, q, kc, vc, cdt, seq, pos, 0, -1, nh, nkv, hd, max_ctx, 0, 0.25f, out));
    free(kc), free(vc), free(kf), free(vf), free(k), free(v), free(q), free(out), free(one), free(ref), free(out3);
}

/* One row of attention in the order cpu_attention documents (kernels/cpu/cpu_backend.c), scalar:
 * blocks of 128 keys from the row's first, the GEMM's dot product, a running maximum, expf, l and
 * the weighted sum in key order (multiply, then add).  kf, vf: the cache as F32. */
static void attn_row_order(enum cpu_isa isa, const float *q, const float *kf, const float *vf, int kvd, int len,
                           int first, int hd, float scale, float *o)
{
    float s[128], m = -INFINITY, l = 0.0f;
    for (int d = 0; d < hd; d++) o[d] = 0.0f;
    for (int b0 = first; b0 < len; b0 += 128) {
        int nb = len - b0 < 128 ? len - b0 : 128;
        float bm = -INFINITY;
        for (int i = 0; i < nb; i++) {
            s[i] = cpu_dot(isa, q, kf + (size_t)(b0 + i) * kvd, hd) * scale;
            if (s[i] > bm) bm = s[i];
        }
        if (bm > m) {
            float r = m == -INFINITY ? 0.0f : expf(m - bm);
            l *= r;
            for (int d = 0; d < hd; d++) o[d] *= r;
            m = bm;
        }
        for (int i = 0; i < nb; i++) {
            s[i] = expf(s[i] - (m == -INFINITY ? 0.0f : m));
            l = l + s[i];
            for (int d = 0; d < hd; d++) {
                volatile float t = s[i] * vf[(size_t)(b0 + i) * kvd + d];
                o[d] = o[d] + t;
            }
        }
    }
    float inv = 1.0f / l;
    for (int d = 0; d < hd; d++) o[d] *= inv;
}

/* Attention gives every row the bits of its order of operations written out row by row,
 * whichever rows share a call: head groups of 1 to 12 query heads (over one tile's 8),
 * head sizes with and without a partial block of 8, windows, a long prefill (blocks of
 * 128 keys), chunks, decode rows of several sequences, a repeated and an out-of-order
 * position, scores that overflow to infinities and NaNs; one and three threads, F32 and
 * BF16 caches (equal bits: NaNs of any payload). */
static void test_attention_order(struct moe_backend *be, struct moe_backend *be3)
{
    static const int shapes[][3] = { { 4, 2, 48 }, { 6, 2, 45 }, { 3, 1, 20 }, { 12, 1, 16 }, { 2, 2, 8 }, { 4, 4, 5 } };
    enum { CTX = 300, SEQS = 3, N = 300 + 12 + 6 + 4 };
    enum cpu_isa isa = cpu_isa_detect();
    int32_t seq[N], pos[N], n = 0;
    for (int i = 0; i < 300; i++) seq[n] = 0, pos[n] = i, n++;             /* a prefill */
    for (int i = 0; i < 12; i++) seq[n] = 1, pos[n] = 140 + i, n++;       /* a chunk over block 2's start */
    for (int i = 0; i < 6; i++) seq[n] = i % 3, pos[n] = 150 + 25 * i, n++; /* decode rows of 3 sequences */
    seq[n] = 2, pos[n] = 7, n++, seq[n] = 2, pos[n] = 7, n++;             /* a position twice */
    seq[n] = 2, pos[n] = 9, n++, seq[n] = 2, pos[n] = 8, n++;             /* descending */
    for (size_t sh = 0; sh < MOE_ARRAY_LEN(shapes); sh++)
        for (int bf = 0; bf < 2; bf++) {
            int nh = shapes[sh][0], nkv = shapes[sh][1], hd = shapes[sh][2], kvd = nkv * hd;
            enum moe_dtype cdt = bf ? MOE_DT_BF16 : MOE_DT_F32;
            size_t cells = (size_t)SEQS * CTX * kvd, qn = (size_t)N * nh * hd;
            float *kf = malloc(sizeof(float) * cells), *vf = malloc(sizeof(float) * cells);
            void *kc = malloc(cells * 4), *vc = malloc(cells * 4);
            float *q = malloc(sizeof(float) * qn), *out = malloc(sizeof(float) * qn), *out3 = malloc(sizeof(float) * qn);
            float *want = malloc(sizeof(float) * qn);
            fill(kf, cells);
            fill(vf, cells);
            fill(q, qn);
            for (size_t i = 0; i < qn; i++) q[i] *= 4.0f;
            for (int d = 0; d < hd; d++) {
                q[(size_t)5 * nh * hd + d] = 1e30f;                          /* scores of +-inf */
                q[((size_t)301 * nh + nh - 1) * hd + d] = d & 1 ? INFINITY : 1.0f; /* inf - inf: NaN scores */
            }
            kf[(size_t)(2 * CTX + 8) * kvd] = INFINITY;                      /* a key of sequence 2 */
            for (int t = 300; t < 312; t++) q[(size_t)t * nh * hd] = 1e30f;   /* the chunk of sequence 1: */
            for (int j = 0; j < 128; j++) kf[((size_t)CTX + j) * kvd] = -1e30f; /* a first block of -inf */
            for (size_t i = 0; i < cells; i++) {
                if (bf) {
                    ((uint16_t *)kc)[i] = moe_f32_to_bf16(kf[i]), kf[i] = moe_bf16_to_f32(((uint16_t *)kc)[i]);
                    ((uint16_t *)vc)[i] = moe_f32_to_bf16(vf[i]), vf[i] = moe_bf16_to_f32(((uint16_t *)vc)[i]);
                } else {
                    ((float *)kc)[i] = kf[i], ((float *)vc)[i] = vf[i];
                }
            }
            for (int w = 0; w < 3; w++) {
                int window = w == 0 ? 0 : w == 1 ? 3 : 130;
                float scale = 1.0f / sqrtf((float)hd);
                for (int t = 0; t < n; t++)
                    for (int h = 0; h < nh; h++) {
                        int len = pos[t] + 1, first = window > 0 && len > window ? len - window : 0;
                        size_t base = (size_t)seq[t] * CTX * kvd + (size_t)(h / (nh / nkv)) * hd;
                        attn_row_order(isa, q + ((size_t)t * nh + h) * hd, kf + base, vf + base, kvd, len, first,
                                       hd, scale, want + ((size_t)t * nh + h) * hd);
                    }
                OK(be->ops->attention(be->ctx, q, kc, vc, cdt, seq, pos, n, 299, nh, nkv, hd, CTX, window, scale,
                                      out));
                OK(be3->ops->attention(be3->ctx, q, kc, vc, cdt, seq, pos, n, 299, nh, nkv, hd, CTX, window, scale,
                                       out3));
                int bad = 0, bad3 = 0, nans = 0, chunk_nans = 0;
                for (size_t i = (size_t)300 * nh * hd; i < (size_t)312 * nh * hd && window == 0; i++)
                    if (i / hd != (size_t)301 * nh + nh - 1) /* the row of NaN scores */
                        chunk_nans += isnan(out[i]) || isnan(want[i]);
                CHECK(chunk_nans == 0, "attention nh %d nkv %d hd %d %s: %d NaNs in rows whose first block of "
                      "keys scores -inf and the next finitely", nh, nkv, hd, moe_dtype_name(cdt), chunk_nans);
                for (size_t i = 0; i < qn; i++) {
                    nans += isnan(want[i]);
                    bad += memcmp(&out[i], &want[i], 4) && !(isnan(out[i]) && isnan(want[i]));
                    bad3 += memcmp(&out3[i], &want[i], 4) && !(isnan(out3[i]) && isnan(want[i]));
                }
                CHECK(bad == 0 && bad3 == 0 && nans > 0,
                      "attention nh %d nkv %d hd %d window %d %s: %d / %d values (1 / 3 threads) differ from "
                      "the per-row order (%d NaNs)", nh, nkv, hd, window, moe_dtype_name(cdt), bad, bad3, nans);
            }
            free(kf), free(vf), free(kc), free(vc), free(q), free(out), free(out3), free(want);
        }
}

static void test_attention(struct moe_backend *be, struct moe_backend *be3)
{
    test_attention_dt(be, be3, MOE_DT_F32);
    test_attention_dt(be, be3, MOE_DT_BF16);
    test_attention_order(be, be3);
    float x[4] = { 0 }, c[4];
    int32_t z = 0;
    CHECK(be->ops->kv_store(be->ctx, x, x, c, c, MOE_DT_F16, &z, &z, 1, 1, 4) == MOE_ENOTSUP &&
              be->ops->attention(be->ctx, x, c, c, MOE_DT_F16, &z, &z, 1, 0, 1, 1, 4, 1, 0, 1.0f, x) == MOE_ENOTSUP,
          "an F16 cache is refused");
    moe_error_clear();
}

static void test_router(struct moe_backend *be)
{
    const struct moe_backend_ops *o = be->ops;
    float lg[2 * 6] = { 0.5f, 2.0f, -1.0f, 2.0f, 1.0f, 0.0f, /* tie 1 and 3 */
                        -3.0f, -2.0f, -1.0f, 0.0f, 1.0f, 2.0f };
    int32_t ids[2 * 3];
    float w[2 * 3];
    for (int kind = 0; kind < 3; kind++) {
        enum moe_router_kind rk = kind == 0 ? MOE_ROUTER_TOPK_SOFTMAX : MOE_ROUTER_SOFTMAX_TOPK;
        bool renorm = kind == 1;
        OK(o->router(be->ctx, lg, 2, 6, 3, rk, renorm, ids, w));
        CHECK(ids[0] == 1 && ids[1] == 3 && ids[2] == 4, "row 0 ids %d %d %d (ties -> lower id)", ids[0],
              ids[1], ids[2]);
        CHECK(ids[3] == 5 && ids[4] == 4 && ids[5] == 3, "row 1 ids %d %d %d", ids[3], ids[4], ids[5]);
        for (int t = 0; t < 2; t++) {
            double all = 0, top = 0;
            for (int e = 0; e < 6; e++) all += exp(lg[t * 6 + e]);
            for (int r = 0; r < 3; r++) top += exp(lg[t * 6 + ids[t * 3 + r]]);
            for (int r = 0; r < 3; r++) {
                double p = exp(lg[t * 6 + ids[t * 3 + r]]);
                double want = kind == 2 ? p / all : p / top;
                CHECK(fabs(w[t * 3 + r] - want) < 1e-6, "kind %d row %d rank %d: %g vs %g", kind, t, r,
                      w[t * 3 + r], want);
            }
        }
    }
}

/* The softmax router over 100 experts (exponentials in blocks of 64), bit for bit its
 * scalar code: sum += expf(x[e] - max) for e in order, w = expf(x[id] - max) / sum, the
 * renormalisation in rank order. */
static void test_router_bits(struct moe_backend *be)
{
    enum { E = 100, K = 6, T = 3 };
    float lg[T * E], w[T * K];
    int32_t ids[T * K];
    for (int i = 0; i < T * E; i++) lg[i] = 8.0f * frand();
    lg[E + 7] = -INFINITY;     /* a masked expert */
    lg[2 * E + 70] = 20.0f;    /* a clear winner in the second block */
    for (int renorm = 0; renorm < 2; renorm++) {
        OK(be->ops->router(be->ctx, lg, T, E, K, MOE_ROUTER_SOFTMAX_TOPK, renorm, ids, w));
        int bad = 0;
        for (int t = 0; t < T; t++) {
            const float *x = lg + (size_t)t * E;
            const int32_t *id = ids + (size_t)t * K;
            float m = x[id[0]], sum = 0.0f, want[K], s = 0.0f;
            for (int e = 0; e < E; e++) sum += expf(x[e] - m);
            for (int r = 0; r < K; r++) want[r] = expf(x[id[r]] - m) / sum;
            if (renorm) {
                for (int r = 0; r < K; r++) s += want[r];
                for (int r = 0; r < K; r++) want[r] /= s;
            }
            bad += memcmp(want, w + (size_t)t * K, sizeof(want)) != 0;
        }
        CHECK(bad == 0, "softmax router (renorm %d): %d of %d rows differ from the scalar code", renorm, bad, T);
    }
}

/* DeepSeek-V3's grouped sigmoid router on rows whose answer is known:
 * kept experts scoring below 0 lose to the masked ones (transformers masks
 * with 0.0), tied groups and experts go to the lower id, a NaN logit is
 * never chosen while a number is left, one group, no renormalisation. */
static void test_router_grouped(struct moe_backend *be)
{
    const struct moe_backend_ops *o = be->ops;
    enum { E = 8 };
    static const float lg[3 * E] = {
        0, 0, 0, 0, 0, 0, 0, 0,           /* the bias decides: kept groups 0, 1 score below 0 */
        1, 0, 2, -1, 1, 0, 3, 1,          /* groups 0 and 2 tie for the second place */
        1, 0, 2, -1, 1, 0, NAN, 1,        /* group 3 holds a NaN */
    };
    static const float zero[E], neg[E] = { -0.6f, -0.7f, -0.55f, -0.9f, -2, -2, -2, -2 };
    int32_t ids[2];
    float w[2];
    double s[E];
    struct { int row; const float *bias; int n_group, topk_group; bool renorm; float scale; int want[2]; } cs[] = {
        { 0, neg, 4, 2, true, 2.0f, { 4, 5 } },   /* masked 0.0 beats kept -0.05 */
        { 1, zero, 4, 2, true, 2.0f, { 6, 0 } },  /* group 0 kept over group 2; expert 0 over 7 */
        { 2, zero, 4, 2, true, 2.0f, { 0, 4 } },  /* group 3's score is NaN: groups 0 and 2 */
        { 1, zero, 1, 1, false, 1.5f, { 6, 2 } }, /* one group: plain top-k of s, weights s x scale */
        { 0, neg, 4, 4, false, 1.0f, { 0, 2 } },  /* every group kept: the largest s + bias, equal s by id */
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(cs); i++) {
        const float *x = lg + cs[i].row * E;
        OK(o->router_grouped(be->ctx, x, cs[i].bias, 1, E, 2, MOE_ROUTER_SIGMOID_GROUP, cs[i].n_group,
                             cs[i].topk_group, cs[i].renorm, cs[i].scale, ids, w));
        CHECK(ids[0] == cs[i].want[0] && ids[1] == cs[i].want[1], "case %zu: ids %d %d, want %d %d", i, ids[0],
              ids[1], cs[i].want[0], cs[i].want[1]);
        for (int e = 0; e < E; e++) s[e] = 1.0 / (1.0 + exp(-(double)x[e]));
        double sum = s[cs[i].want[0]] + s[cs[i].want[1]];
        for (int r = 0; r < 2; r++) {
            double want = (cs[i].renorm ? s[cs[i].want[r]] / sum : s[cs[i].want[r]]) * cs[i].scale;
            CHECK(fabs(w[r] - want) < 1e-6, "case %zu rank %d: weight %g, want %g", i, r, w[r], want);
        }
    }
    enum moe_router_kind sg = MOE_ROUTER_SIGMOID_GROUP;
    CHECK(o->router_grouped(be->ctx, lg, zero, 1, E, 2, sg, 3, 1, true, 1.0f, ids, w) != MOE_OK, "8 experts in 3 groups");
    CHECK(o->router_grouped(be->ctx, lg, zero, 1, E, 2, sg, 8, 1, true, 1.0f, ids, w) != MOE_OK, "groups of 1 expert");
    CHECK(o->router_grouped(be->ctx, lg, zero, 1, E, 2, sg, 4, 5, true, 1.0f, ids, w) != MOE_OK, "topk_group > n_group");
    CHECK(o->router_grouped(be->ctx, lg, zero, 1, E, 2, MOE_ROUTER_SOFTMAX_TOPK, 1, 1, true, 1.0f, ids, w) != MOE_OK,
          "a router kind without groups");
}

/* DeepSeek-V2's grouped softmax router: groups scored by their largest
 * probability (not the two largest), one group = plain top-k, groups of one
 * expert allowed, the weights softmax probabilities times the scale. */
static void test_router_softmax_grouped(struct moe_backend *be)
{
    const struct moe_backend_ops *o = be->ops;
    enum { E = 8 };
    /* groups of 2: {0,1} max 3, {2,3} max 2.5 (sum 5), {4,5} max 2.9, {6,7} max 1: V3's top-2 sums would keep
     * {2,3} first, the largest probabilities keep {0,1} and {4,5} */
    static const float lg[E] = { 3, -4, 2.5f, 2.5f, 2.9f, -4, 1, 0 };
    struct { int n_group, topk_group; float scale; int want[3]; } cs[] = {
        { 4, 2, 1.0f, { 0, 4, 1 } },  /* the third pick: the larger of the kept groups' rest (-4 ties: id 1) */
        { 1, 1, 16.0f, { 0, 4, 2 } }, /* greedy: plain top-3, ties to the lower id */
        { 8, 3, 1.0f, { 0, 4, 2 } },  /* groups of one: the three largest */
    };
    double p[E], sum = 0;
    for (int e = 0; e < E; e++) sum += (p[e] = exp((double)lg[e] - 3.0));
    for (int e = 0; e < E; e++) p[e] /= sum;
    for (size_t i = 0; i < MOE_ARRAY_LEN(cs); i++) {
        int32_t ids[3];
        float w[3];
        OK(o->router_grouped(be->ctx, lg, NULL, 1, E, 3, MOE_ROUTER_SOFTMAX_GROUP, cs[i].n_group, cs[i].topk_group,
                             false, cs[i].scale, ids, w));
        for (int r = 0; r < 3; r++) {
            CHECK(ids[r] == cs[i].want[r], "case %zu rank %d: expert %d, want %d", i, r, ids[r], cs[i].want[r]);
            CHECK(fabs(w[r] - p[cs[i].want[r]] * cs[i].scale) < 1e-6, "case %zu rank %d: weight %g, want %g", i, r,
                  w[r], p[cs[i].want[r]] * cs[i].scale);
        }
    }
}

static void test_moe(struct moe_backend *be, struct moe_backend *be3)
{
    const struct moe_backend_ops *o = be->ops;
    enum { H = 24, I = 20, E = 5, n = 7, K = 2 };
    float wts[E][3][I * H];
    for (int e = 0; e < E; e++)
        for (int m = 0; m < 3; m++) fill(wts[e][m], I * H);
    struct moe_backend_expert ew[E];
    for (int e = 0; e < E; e++) ew[e] = (struct moe_backend_expert){ wts[e][0], wts[e][1], wts[e][2] };
    float x[n * H];
    fill(x, n * H);
    int32_t ids[n * K] = { 0, 2, 2, 4, 1, 0, 4, 2, 0, 1, 3, 0, 2, 4 };
    float rw[n * K];
    fill(rw, n * K);
    /* plan: expert-major, (token, rank) order */
    int32_t src[n * K], inv[n * K];
    int off[E + 1], r = 0;
    for (int e = 0; e < E; e++) {
        off[e] = r;
        for (int t = 0; t < n; t++)
            for (int q = 0; q < K; q++)
                if (ids[t * K + q] == e) src[r] = t, inv[t * K + q] = r, r++;
    }
    off[E] = r;
    float xp[n * K * H], yp[n * K * H], yp2[n * K * H], out[n * H];
    OK(o->gather_rows(be->ctx, x, src, n * K, H, xp));
    CHECK(!memcmp(xp + 3 * H, x + src[3] * H, H * sizeof(float)), "gather_rows");
    OK(o->moe_experts(be->ctx, xp, E, off, ew, MOE_DT_F32, H, I, yp));
    /* chunked: experts {0,1} then {2,3,4}, offsets rebased; and with 3 threads */
    OK(o->moe_experts(be->ctx, xp, 2, off, ew, MOE_DT_F32, H, I, yp2));
    int off2[4] = { 0, off[3] - off[2], off[4] - off[2], off[5] - off[2] };
    OK(be3->ops->moe_experts(be3->ctx, xp + (size_t)off[2] * H, 3, off2, ew + 2, MOE_DT_F32, H, I,
                             yp2 + (size_t)off[2] * H));
    CHECK(!memcmp(yp, yp2, sizeof(yp)), "moe_experts: chunking or threads changed the result");
    OK(o->moe_combine(be->ctx, yp, inv, rw, n, K, H, false, out));
    double ref[n * H];
    for (int t = 0; t < n; t++) {
        for (int d = 0; d < H; d++) ref[t * H + d] = 0;
        for (int q = 0; q < K; q++) {
            int e = ids[t * K + q];
            double a[I];
            for (int i = 0; i < I; i++) {
                double g = 0, u = 0;
                for (int h = 0; h < H; h++) {
                    g += (double)wts[e][0][i * H + h] * x[t * H + h];
                    u += (double)wts[e][1][i * H + h] * x[t * H + h];
                }
                a[i] = g / (1 + exp(-g)) * u;
            }
            for (int d = 0; d < H; d++) {
                double s = 0;
                for (int i = 0; i < I; i++) s += wts[e][2][d * I + i] * a[i];
                ref[t * H + d] += rw[t * K + q] * s;
            }
        }
    }
    CHECK(maxdiff(out, ref, n * H) < 1e-4, "moe experts+combine err %g", maxdiff(out, ref, n * H));
    float acc[n * H];
    memcpy(acc, x, sizeof(acc));
    OK(o->moe_combine(be->ctx, yp, inv, rw, n, K, H, true, acc));
    for (int i = 0; i < n * H; i++) ref[i] += x[i];
    CHECK(maxdiff(acc, ref, n * H) < 1e-4, "moe_combine accumulate");
    int bad_off[3] = { 0, 4, 2 };
    CHECK(o->moe_experts(be->ctx, xp, 2, bad_off, ew, MOE_DT_F32, H, I, yp2) == MOE_EINVAL,
          "decreasing offsets refused");
}

static void test_small(struct moe_backend *be)
{
    const struct moe_backend_ops *o = be->ops;
    float g[6] = { -20, -1, 0, 0.5f, 3, 30 }, u[6] = { 1, 2, 3, 4, 5, 6 }, out[6];
    OK(o->swiglu(be->ctx, g, u, out, 6));
    for (int i = 0; i < 6; i++) {
        double want = g[i] / (1 + exp(-(double)g[i])) * u[i];
        CHECK(fabs(out[i] - want) < 1e-5 * (1 + fabs(want)), "swiglu %d: %g vs %g", i, out[i], want);
    }
    float s[2] = { 0.0f, -2.0f }, y[4] = { 1, 2, 3, 4 }, acc[4] = { 1, 1, 1, 1 };
    OK(o->sigmoid_scale_add(be->ctx, s, y, 2, 2, acc));
    CHECK(fabs(acc[1] - 2.0) < 1e-6 && fabs(acc[3] - (1 + 4 / (1 + exp(2.0)))) < 1e-6,
          "sigmoid_scale_add");
    OK(o->add(be->ctx, acc, y, 4));
    CHECK(fabs(acc[0] - 2.5) < 1e-6, "add");
    float lg[3 * 4] = { 1, 3, 3, 0, NAN, NAN, NAN, NAN, NAN, -1, -INFINITY, -0.5f };
    int32_t am[3];
    OK(o->argmax(be->ctx, lg, 3, 4, am));
    CHECK(am[0] == 1 && am[1] == 0 && am[2] == 3, "argmax %d %d %d", am[0], am[1], am[2]);
    float *b = o->buf_alloc(be->ctx, 100, "test");
    REQUIRE(b, "alloc");
    OK(o->memset0(be->ctx, b, 100));
    OK(o->copy_h2d(be->ctx, b, u, sizeof(u)));
    OK(o->copy_d2h(be->ctx, out, b, sizeof(u)));
    OK(o->synchronize(be->ctx));
    CHECK(!memcmp(out, u, sizeof(u)) && b[24] == 0.0f, "copies");
    o->buf_free(be->ctx, b);
    /* weights: a matrix of a huge page or more starts on one, marked for transparent huge pages where
     * the kernel has them; a smaller one as buf_alloc's buffers */
    bool thp = access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0;
    size_t big = 3 * MOE_HUGE_PAGE + 100;
    REQUIRE(o->weights_alloc, "cpu backend without weights_alloc");
    char *w = o->weights_alloc(be->ctx, big, "test matrix"), *w2 = o->weights_alloc(be->ctx, 100, "test vector");
    REQUIRE(w && w2, "weights_alloc: %s", moe_last_error());
    memset(w, 1, big);
    memset(w2, 1, 100);
    CHECK((uintptr_t)w % MOE_HUGE_PAGE == 0 && (uintptr_t)w2 % 64 == 0, "weights at %p and %p", (void *)w, (void *)w2);
    CHECK(!thp || t_huge_marked(w) == 1, "a matrix of %zu bytes is not marked for huge pages", big);
    o->buf_free(be->ctx, w);
    o->buf_free(be->ctx, w2);
}

int main(void)
{
    struct moe_backend *be = moe_backend_cpu_create(&(struct moe_backend_cpu_params){ .n_threads = 1 });
    struct moe_backend *be3 = moe_backend_cpu_create(&(struct moe_backend_cpu_params){ .n_threads = 3 });
    REQUIRE(be && be3, "backend: %s", moe_last_error());
    CHECK(be->host_visible && be->weight_dtype == MOE_DT_BF16, "cpu backend properties");
    struct moe_backend *bb = moe_backend_cpu_create(&(struct moe_backend_cpu_params){ .n_threads = 1, .use_blas = true });
    CHECK(bb && bb->weight_dtype == MOE_DT_F32, "cpu backend with OpenBLAS: F32 weights");
    moe_backend_destroy(bb);
    CHECK(moe_backend_cpu_create(&(struct moe_backend_cpu_params){ .n_threads = -1 }) == NULL,
          "negative n_threads refused");
    test_embed_rmsnorm(be);
    test_rope(be);
    test_attention(be, be3);
    test_router(be);
    test_router_bits(be);
    test_router_grouped(be);
    test_router_softmax_grouped(be);
    test_moe(be, be3);
    test_small(be);
    moe_backend_destroy(be);
    moe_backend_destroy(be3);
    return t_result("test_kernels_ops");
}
