/* Per-op parity of the CUDA backend against its C twins: fresh random and
 * adversarial inputs (seeded from the clock, printed for replay), normalised
 * error per dtype, NaN/Inf agreement, guard bytes after every output.
 * Skips (77) without a CUDA device.  MOEFLOW_TEST_SEED=<n> replays a seed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../kernels/backend.h"
#include "../test_util.h"
#include "gpu_ref.h"
#include "../../model/model.h"

#define TOL_TRANS 2e-5  /* ops with exp/sin/cos */
#define TOL_GEMM 2e-3   /* BF16 inputs, F32 accumulation (order differs from the twin) */
#define TOL_FFN 2e-2    /* two BF16 rounding points */

static struct moe_cuda_ctx *ctx;

#define UP(buf, host, bytes) REQUIRE(g_buf_upload(ctx, &(buf), (host), (bytes)) == 0, "upload: %s", moe_last_error())
#define OUT(buf, bytes) REQUIRE(g_buf_alloc(ctx, &(buf), (bytes)) == 0, "alloc: %s", moe_last_error())
#define OK(call) do { enum moe_status st_ = (call); REQUIRE(st_ == MOE_OK, "%s: %s", #call, moe_last_error()); } while (0)

static void cmp(const char *what, const float *got, const float *ref, size_t n, double tol)
{
    size_t bad = 0;
    double e = g_norm_err(got, ref, n, 1e-6f, &bad);
    CHECK(e <= tol, "%s: normalised error %.3g > %.3g", what, e, tol);
    CHECK(bad == 0, "%s: %zu NaN/Inf positions disagree", what, bad);
}

static void dl(const struct g_buf *b, void *h, const char *what)
{
    CHECK(g_buf_download(ctx, b, h, what) == 0, "%s: guard bytes or download", what);
}

static void test_convert(struct g_rng *r, bool adv)
{
    size_t n = 4099;
    float *x = malloc(n * 4), *back = malloc(n * 4);
    uint16_t *h = malloc(n * 2);
    struct g_buf dx, dh, db;
    g_fill(r, x, n, 3.0f, adv);
    x[7] = NAN; x[8] = INFINITY; x[9] = -INFINITY; x[10] = -NAN;
    uint32_t payload = 0x7f812345u; /* a signalling NaN with a payload: quieted, payload's top kept */
    memcpy(&x[11], &payload, 4);
    UP(dx, x, n * 4); OUT(dh, n * 2); OUT(db, n * 4);
    OK(moe_cuda_f32_to_bf16(ctx, dx.d, dh.d, n));
    OK(moe_cuda_bf16_to_f32(ctx, dh.d, db.d, n));
    dl(&dh, h, "f32_to_bf16");
    dl(&db, back, "bf16_to_f32");
    for (size_t i = 0; i < n; i++) {
        uint16_t want = moe_f32_to_bf16(x[i]);
        CHECK(h[i] == want, "bf16(%g) at %zu: got 0x%04x want 0x%04x (the host's bits, NaN too)", x[i], i, h[i],
              want);
        float bw = moe_bf16_to_f32(h[i]);
        CHECK((isnan(bw) && isnan(back[i])) || bw == back[i], "bf16_to_f32 at %zu", i);
    }
    g_buf_free(ctx, &dx); g_buf_free(ctx, &dh); g_buf_free(ctx, &db);
    free(x); free(back); free(h);
}

static void test_embed(struct g_rng *r, bool adv)
{
    int vocab = 1000, hidden = 96, n = 37;
    uint16_t *tab = malloc((size_t)vocab * hidden * 2);
    int ids[37];
    float *got = malloc((size_t)n * hidden * 4), *ref = malloc((size_t)n * hidden * 4);
    struct g_buf dt, di, dout;
    g_fill_bf16(r, tab, (size_t)vocab * hidden, 1.0f);
    for (int i = 0; i < n; i++) ids[i] = (int)(g_next(r) % (uint64_t)vocab);
    if (adv) { ids[0] = 0; ids[1] = vocab - 1; ids[2] = -1; ids[3] = vocab; }
    UP(dt, tab, (size_t)vocab * hidden * 2); UP(di, ids, sizeof(ids)); OUT(dout, (size_t)n * hidden * 4);
    OK(moe_cuda_embed(ctx, dt.d, MOE_DT_BF16, vocab, hidden, di.d, n, dout.d));
    dl(&dout, got, "embed");
    ref_embed_bf16(tab, vocab, hidden, ids, n, ref);
    cmp("embed", got, ref, (size_t)n * hidden, 0.0);
    g_buf_free(ctx, &dt); g_buf_free(ctx, &di); g_buf_free(ctx, &dout);
    free(tab); free(got); free(ref);
}

static void test_rmsnorm(struct g_rng *r, bool adv)
{
    static const int dims[] = { 1, 31, 128, 1000, 4096 };
    for (size_t k = 0; k < MOE_ARRAY_LEN(dims); k++) {
        int rows = 13, dim = dims[k];
        size_t n = (size_t)rows * dim;
        float *x = malloc(n * 4), *w = malloc((size_t)dim * 4), *got = malloc(n * 4), *ref = malloc(n * 4);
        struct g_buf dx, dw, dy;
        g_fill(r, x, n, 2.0f, adv);
        g_fill(r, w, (size_t)dim, 1.0f, false);
        if (adv) x[3] = NAN; /* row 0 becomes NaN on both sides */
        UP(dx, x, n * 4); UP(dw, w, (size_t)dim * 4); OUT(dy, n * 4);
        OK(moe_cuda_rmsnorm(ctx, dx.d, dw.d, dy.d, rows, dim, 1e-6f));
        dl(&dy, got, "rmsnorm");
        ref_rmsnorm(x, w, ref, rows, dim, 1e-6f);
        cmp("rmsnorm", got, ref, n, 1e-5);
        /* in place */
        OK(moe_cuda_rmsnorm(ctx, dx.d, dw.d, dx.d, rows, dim, 1e-6f));
        dl(&dx, got, "rmsnorm in place");
        cmp("rmsnorm in place", got, ref, n, 1e-5);
        g_buf_free(ctx, &dx); g_buf_free(ctx, &dw); g_buf_free(ctx, &dy);
        free(x); free(w); free(got); free(ref);
    }
}

/* the whole head, then GLM-4.5's partial rotary: the first half of each head, the rest untouched */
static void test_rope(struct g_rng *r, bool adv)
{
    int n = 9, nh = 5, hd = 64;
    size_t sz = (size_t)n * nh * hd;
    float *x = malloc(sz * 4), *ref = malloc(sz * 4), *got = malloc(sz * 4);
    int pos[9];
    struct g_buf dx, dp;
    for (int rot = hd; rot >= hd / 2; rot /= 2) {
        g_fill(r, x, sz, 1.0f, adv);
        for (int i = 0; i < n; i++) pos[i] = (int)(g_next(r) % 4096);
        if (adv) { pos[0] = 0; pos[1] = 32767; }
        memcpy(ref, x, sz * 4);
        UP(dx, x, sz * 4); UP(dp, pos, sizeof(pos));
        float inv_freq[32], scale;
        moe_config_rope(&(struct moe_config){ .rope_theta = 1e6f }, rot, inv_freq, &scale);
        OK(moe_cuda_rope_table(ctx, dx.d, dp.d, n, nh, hd, rot, inv_freq, scale));
        dl(&dx, got, "rope");
        ref_rope(ref, pos, n, nh, hd, rot, 1e6f);
        cmp(rot == hd ? "rope" : "rope, half the head", got, ref, sz, 1e-5); /* sinf/cosf: <= 2 ulp apart */
        g_buf_free(ctx, &dx); g_buf_free(ctx, &dp);
    }
    free(x); free(ref); free(got);
}

/* The largest of n positions: moe_cuda_attention's pos_max. */
static int max_pos(const int *pos, int n)
{
    int m = pos[0];
    for (int i = 1; i < n; i++) m = pos[i] > m ? pos[i] : m;
    return m;
}

static void test_attention(struct g_rng *r, bool adv)
{
    /* two sequences: seq 1 prefilled with 300 tokens (more than one chunk of 256),
     * then a batch of mixed prefill-chunk + decode tokens. */
    int nh = 8, nkv = 2, max_ctx = 320, max_seqs = 3;
    static const int hds[] = { 64, 128, 200, 576 }; /* 576: DeepSeek's latent rows */
    for (size_t v = 0; v < MOE_ARRAY_LEN(hds); v++) {
        int hd = hds[v];
        size_t kv_dim = (size_t)nkv * hd, cache = (size_t)max_seqs * max_ctx * kv_dim;
        int n = 0, seq[64], pos[64];
        for (int i = 0; i < 40; i++) { seq[n] = 1; pos[n] = 260 + i; n++; }   /* prefill chunk */
        seq[n] = 0; pos[n] = 0; n++;                                          /* first token */
        seq[n] = 2; pos[n] = 255; n++;                                        /* chunk edge */
        seq[n] = 2; pos[n] = 256; n++;
        float *kc = malloc(cache * 4), *vc = malloc(cache * 4);
        float *q = malloc((size_t)n * nh * hd * 4), *got = malloc((size_t)n * nh * hd * 4),
              *ref = malloc((size_t)n * nh * hd * 4);
        struct g_buf dk, dv, dq, ds, dpp, dout;
        /* adversarial: sharp softmax (large q) and a NaN in one V element that
         * only token (seq 0, pos 0) reads; huge K values are not used since
         * F32 scores then lose the precision the comparison needs */
        g_fill(r, kc, cache, 1.0f, false);
        g_fill(r, vc, cache, 1.0f, adv);
        g_fill(r, q, (size_t)n * nh * hd, adv ? 4.0f : 1.0f, false);
        if (adv) vc[5] = NAN;
        UP(dk, kc, cache * 4); UP(dv, vc, cache * 4); UP(dq, q, (size_t)n * nh * hd * 4);
        UP(ds, seq, (size_t)n * 4); UP(dpp, pos, (size_t)n * 4); OUT(dout, (size_t)n * nh * hd * 4);
        OK(moe_cuda_attention(ctx, dq.d, dk.d, dv.d, MOE_DT_F32, ds.d, dpp.d, n, max_pos(pos, n), nh, nkv, hd,
                              max_ctx, 0, 1.0f / sqrtf((float)hd), dout.d));
        dl(&dout, got, "attention");
        ref_attention(q, kc, vc, seq, pos, n, nh, nkv, hd, max_ctx, 0, 1.0f / sqrtf((float)hd), ref);
        cmp("attention", got, ref, (size_t)n * nh * hd, 1e-4);
        /* a sliding window of 130 (under the 300 prefilled keys: chunks start inside the cache) */
        OK(moe_cuda_attention(ctx, dq.d, dk.d, dv.d, MOE_DT_F32, ds.d, dpp.d, n, max_pos(pos, n), nh, nkv, hd,
                              max_ctx, 130, 1.0f / sqrtf((float)hd), dout.d));
        dl(&dout, got, "attention (window)");
        ref_attention(q, kc, vc, seq, pos, n, nh, nkv, hd, max_ctx, 130, 1.0f / sqrtf((float)hd), ref);
        cmp("attention, window 130", got, ref, (size_t)n * nh * hd, 1e-4);

        /* kv_store writes exactly the addressed rows */
        float *kn = malloc((size_t)n * kv_dim * 4), *vn = malloc((size_t)n * kv_dim * 4);
        struct g_buf dkn, dvn;
        g_fill(r, kn, (size_t)n * kv_dim, 1.0f, false);
        g_fill(r, vn, (size_t)n * kv_dim, 1.0f, false);
        UP(dkn, kn, (size_t)n * kv_dim * 4); UP(dvn, vn, (size_t)n * kv_dim * 4);
        OK(moe_cuda_kv_store(ctx, dkn.d, dvn.d, dk.d, dv.d, MOE_DT_F32, ds.d, dpp.d, n, max_ctx, (int)kv_dim));
        for (int t = 0; t < n; t++) {
            memcpy(kc + ((size_t)seq[t] * max_ctx + pos[t]) * kv_dim, kn + (size_t)t * kv_dim, kv_dim * 4);
            memcpy(vc + ((size_t)seq[t] * max_ctx + pos[t]) * kv_dim, vn + (size_t)t * kv_dim, kv_dim * 4);
        }
        float *gk = malloc(cache * 4);
        dl(&dk, gk, "kv_store k");
        cmp("kv_store k", gk, kc, cache, 0.0);
        dl(&dv, gk, "kv_store v");
        cmp("kv_store v", gk, vc, cache, 0.0);
        free(gk);
        g_buf_free(ctx, &dkn); g_buf_free(ctx, &dvn); free(kn); free(vn);
        g_buf_free(ctx, &dk); g_buf_free(ctx, &dv); g_buf_free(ctx, &dq); g_buf_free(ctx, &ds);
        g_buf_free(ctx, &dpp); g_buf_free(ctx, &dout);
        free(kc); free(vc); free(q); free(got); free(ref);
    }
}

/* A BF16 cache: kv_store rounds to the nearest BF16 (the host's rounding, bit for bit), attention
 * reads the rounded values (against the reference on them widened). */
static void test_attention_bf16(struct g_rng *r)
{
    int nh = 8, nkv = 2, hd = 128, max_ctx = 160, max_seqs = 2, n = 0, seq[48], pos[48];
    size_t kv_dim = (size_t)nkv * hd, cache = (size_t)max_seqs * max_ctx * kv_dim;
    for (int i = 0; i < 40; i++) { seq[n] = 1; pos[n] = 100 + i; n++; }
    seq[n] = 0; pos[n] = 0; n++;
    float *kc = malloc(cache * 4), *vc = malloc(cache * 4), *q = malloc((size_t)n * nh * hd * 4);
    float *got = malloc((size_t)n * nh * hd * 4), *ref = malloc((size_t)n * nh * hd * 4);
    uint16_t *kb = malloc(cache * 2), *vb = malloc(cache * 2), *back = malloc(cache * 2);
    g_fill(r, kc, cache, 1.0f, false);
    g_fill(r, vc, cache, 1.0f, false);
    g_fill(r, q, (size_t)n * nh * hd, 1.0f, false);
    for (size_t i = 0; i < cache; i++) {
        kb[i] = moe_f32_to_bf16(kc[i]), kc[i] = moe_bf16_to_f32(kb[i]);
        vb[i] = moe_f32_to_bf16(vc[i]), vc[i] = moe_bf16_to_f32(vb[i]);
    }
    struct g_buf dk, dv, dq, ds, dpp, dout, dkn;
    UP(dk, kb, cache * 2); UP(dv, vb, cache * 2); UP(dq, q, (size_t)n * nh * hd * 4);
    UP(ds, seq, (size_t)n * 4); UP(dpp, pos, (size_t)n * 4); OUT(dout, (size_t)n * nh * hd * 4);
    OK(moe_cuda_attention(ctx, dq.d, dk.d, dv.d, MOE_DT_BF16, ds.d, dpp.d, n, max_pos(pos, n), nh, nkv, hd,
                          max_ctx, 0, 1.0f / sqrtf((float)hd), dout.d));
    dl(&dout, got, "attention (BF16 cache)");
    ref_attention(q, kc, vc, seq, pos, n, nh, nkv, hd, max_ctx, 0, 1.0f / sqrtf((float)hd), ref);
    cmp("attention (BF16 cache)", got, ref, (size_t)n * nh * hd, 1e-4);
    /* kv_store: rows of q's floats, rounded into the cache where addressed */
    UP(dkn, q, (size_t)n * kv_dim * 4);
    OK(moe_cuda_kv_store(ctx, dkn.d, dkn.d, dk.d, dv.d, MOE_DT_BF16, ds.d, dpp.d, n, max_ctx, (int)kv_dim));
    for (int t = 0; t < n; t++)
        for (size_t d = 0; d < kv_dim; d++)
            kb[((size_t)seq[t] * max_ctx + pos[t]) * kv_dim + d] = moe_f32_to_bf16(q[(size_t)t * kv_dim + d]);
    dl(&dk, back, "kv_store (BF16 cache)");
    CHECK(!memcmp(back, kb, cache * 2), "kv_store into a BF16 cache differs from the host's rounding");
    CHECK(moe_cuda_kv_store(ctx, dkn.d, dkn.d, dk.d, dv.d, MOE_DT_F16, ds.d, dpp.d, n, max_ctx, (int)kv_dim) ==
              MOE_ENOTSUP, "an F16 cache accepted");
    moe_error_clear();
    g_buf_free(ctx, &dk); g_buf_free(ctx, &dv); g_buf_free(ctx, &dq); g_buf_free(ctx, &ds);
    g_buf_free(ctx, &dpp); g_buf_free(ctx, &dout); g_buf_free(ctx, &dkn);
    free(kc); free(vc); free(q); free(got); free(ref); free(kb); free(vb); free(back);
}

/* kv_store rows outside the cache write nothing, F32 and BF16 caches: position max_ctx of sequence 0
 * (sequence 1's position 0 were it written), position -1 of sequence 1 (sequence 0's last position)
 * and sequence -1 at position max_ctx (sequence 0's first) beside one row in range; the cache is
 * unchanged but for that row, guard bytes included (the CPU twin refuses such a call). */
static void test_kv_store_bounds(struct g_rng *r)
{
    int max_ctx = 5, max_seqs = 2, kv_dim = 40, n = 4;
    int seq[4] = { 0, 1, -1, 1 }, pos[4] = { 5, -1, 5, 2 }; /* the last row is the only one in range */
    size_t cells = (size_t)max_seqs * max_ctx * kv_dim;
    for (int bf = 0; bf < 2; bf++) {
        size_t es = bf ? 2 : 4;
        unsigned char *cache = malloc(cells * es), *want = malloc(cells * es), *back = malloc(cells * es);
        float *kv = malloc((size_t)n * kv_dim * 4);
        struct g_buf dc, dkv, ds, dp;
        for (size_t i = 0; i < cells * es; i++) cache[i] = (unsigned char)(g_next(r) | 1); /* no zero byte */
        g_fill(r, kv, (size_t)n * kv_dim, 1.0f, false);
        memcpy(want, cache, cells * es);
        for (int d = 0; d < kv_dim; d++) { /* the one row in range */
            size_t at = ((size_t)seq[3] * max_ctx + (size_t)pos[3]) * kv_dim + (size_t)d;
            float v = kv[(size_t)3 * kv_dim + d];
            if (bf) ((uint16_t *)want)[at] = moe_f32_to_bf16(v);
            else ((float *)want)[at] = v;
        }
        UP(dc, cache, cells * es); UP(dkv, kv, (size_t)n * kv_dim * 4);
        UP(ds, seq, sizeof(seq)); UP(dp, pos, sizeof(pos));
        OK(moe_cuda_kv_store(ctx, dkv.d, dkv.d, dc.d, dc.d, bf ? MOE_DT_BF16 : MOE_DT_F32, ds.d, dp.d, n, max_ctx,
                             kv_dim));
        dl(&dc, back, "kv_store, rows outside the cache");
        CHECK(!memcmp(back, want, cells * es), "kv_store (%s cache): a row outside the cache was written",
              bf ? "BF16" : "F32");
        g_buf_free(ctx, &dc); g_buf_free(ctx, &dkv); g_buf_free(ctx, &ds); g_buf_free(ctx, &dp);
        free(cache); free(want); free(back); free(kv);
    }
}

/* Long contexts in chunks of 256: one block per (token, head group) folding every chunk
 * (splits 1), three blocks each taking every third chunk and a combining kernel (splits 3), and
 * the context's own choice (0: split when the blocks do not fill the device) give the same bits,
 * within 1e-4 of the reference; each token alone (n = 1, decode; split on any device) gives the
 * bits it has in the batch.  GQA ratios 1, 2, 4, 6 (blocks of 8 heads, 2 of them idle), 12 over two
 * KV heads of 300 (two blocks per KV head, the second with 4 heads: a block that took 8 would write
 * the next KV head's rows and, in the last, past the output; head_dim off a multiple of 32 with 5
 * dims a thread) and 16 with one KV head of 576 (DeepSeek's latent rows, K and V the same buffer as
 * the engine passes them), F32 and BF16 caches, no window and a window of 1000 (chunks not on
 * multiples of 256).  The longest row ends at max_ctx - 1 in the last sequence: the cache's last
 * row.  Positions outside the cache and a negative sequence give NaN rows and read nothing (the
 * guard bytes, and memcheck). */
static void test_attention_long(struct g_rng *r)
{
    static const struct { int nh, nkv, hd; } shapes[] = {
        { 8, 8, 64 }, { 4, 2, 256 }, { 16, 4, 128 }, { 12, 2, 192 }, { 24, 2, 300 }, { 16, 1, 576 },
    };
    static const int lens[] = { 1, 7, 256, 300, 513, 4097 }, splits[] = { 1, 3, 0 };
    enum { N = MOE_ARRAY_LEN(lens) };
    int max_ctx = 4097, max_seqs = 3, seq[N], pos[N]; /* pos 4096 in seq 2: the cache's last row */
    for (int i = 0; i < N; i++) {
        seq[i] = i % max_seqs;
        pos[i] = lens[i] - 1;
    }
    for (size_t v = 0; v < MOE_ARRAY_LEN(shapes); v++) {
        int nh = shapes[v].nh, nkv = shapes[v].nkv, hd = shapes[v].hd;
        bool latent = nkv == 1;
        size_t kv_dim = (size_t)nkv * hd, cache = (size_t)max_seqs * max_ctx * kv_dim, row = (size_t)nh * hd;
        float *kc = malloc(cache * 4), *vc = latent ? kc : malloc(cache * 4), *q = malloc(N * row * 4);
        float *ref = malloc(N * row * 4), *got = malloc(N * row * 4), *want = malloc(N * row * 4);
        uint16_t *kb = malloc(cache * 2), *vb = malloc(cache * 2);
        struct g_buf dk, dv, dq, ds, dpp, dout, dout1;
        OUT(dq, N * row * 4); UP(ds, seq, sizeof(seq)); UP(dpp, pos, sizeof(pos));
        OUT(dout, N * row * 4); OUT(dout1, row * 4);
        for (int bf = 0; bf < 2; bf++) {
            enum moe_dtype cdt = bf ? MOE_DT_BF16 : MOE_DT_F32;
            g_fill(r, kc, cache, 1.0f, false);
            if (!latent) g_fill(r, vc, cache, 1.0f, false);
            g_fill(r, q, N * row, 1.0f, false);
            for (size_t i = 0; bf && i < cache; i++) {
                kb[i] = moe_f32_to_bf16(kc[i]), kc[i] = moe_bf16_to_f32(kb[i]);
                vb[i] = moe_f32_to_bf16(vc[i]), vc[i] = moe_bf16_to_f32(vb[i]);
            }
            UP(dk, bf ? (void *)kb : (void *)kc, cache * (bf ? 2 : 4));
            if (!latent) UP(dv, bf ? (void *)vb : (void *)vc, cache * (bf ? 2 : 4));
            const void *dvv = latent ? dk.d : dv.d;
            OK(moe_cuda_h2d(ctx, dq.d, q, N * row * 4));
            for (int window = 0; window <= 1000; window += 1000) {
                char what[128];
                ref_attention(q, kc, vc, seq, pos, N, nh, nkv, hd, max_ctx, window, 1.0f / sqrtf((float)hd), ref);
                for (size_t k = 0; k < MOE_ARRAY_LEN(splits); k++) {
                    snprintf(what, sizeof(what), "attention %d/%d heads, head_dim %d, %s cache, window %d, splits %d",
                             nh, nkv, hd, bf ? "BF16" : "F32", window, splits[k]);
                    OK(moe_cuda_ctx_set_attn_splits(ctx, splits[k]));
                    OK(moe_cuda_memset(ctx, dout.d, 0xff, N * row * 4)); /* NaN where nothing is written */
                    OK(moe_cuda_attention(ctx, dq.d, dk.d, dvv, cdt, ds.d, dpp.d, N, max_pos(pos, N), nh, nkv, hd,
                                          max_ctx, window, 1.0f / sqrtf((float)hd), dout.d));
                    dl(&dout, k ? got : want, what);
                    cmp(what, k ? got : want, ref, N * row, 1e-4);
                    if (k) CHECK(!memcmp(got, want, N * row * 4), "%s: not the bits of splits 1", what);
                }
                OK(moe_cuda_ctx_set_attn_splits(ctx, 0));
                for (int i = 0; i < N; i++) {
                    snprintf(what, sizeof(what), "attention %d/%d heads, head_dim %d, %s cache, window %d: "
                             "position %d alone", nh, nkv, hd, bf ? "BF16" : "F32", window, pos[i]);
                    OK(moe_cuda_memset(ctx, dout1.d, 0xff, row * 4));
                    OK(moe_cuda_attention(ctx, (const float *)dq.d + (size_t)i * row, dk.d, dvv, cdt,
                                          (const int *)ds.d + i, (const int *)dpp.d + i, 1, pos[i], nh, nkv, hd,
                                          max_ctx, window, 1.0f / sqrtf((float)hd), dout1.d));
                    dl(&dout1, got, what);
                    CHECK(!memcmp(got, want + (size_t)i * row, row * 4), "%s: not its bits in the batch", what);
                }
            }
            g_buf_free(ctx, &dk);
            if (!latent) g_buf_free(ctx, &dv);
        }
        g_buf_free(ctx, &dq); g_buf_free(ctx, &ds); g_buf_free(ctx, &dpp); g_buf_free(ctx, &dout);
        g_buf_free(ctx, &dout1);
        if (!latent) free(vc);
        free(kc); free(q); free(ref); free(got); free(want); free(kb); free(vb);
    }

    /* positions -1 and max_ctx (a cache of 600 positions: 3 chunks; the bound its last), and
     * position 5 of sequence -1 (whose rows would lie before the cache): NaN, nothing read or
     * written out of bounds, split or not */
    int bad_ctx = 600, bad_pos[3] = { -1, 600, 5 }, bad_seq[3] = { 0, 0, -1 }, nh = 8, hd = 64;
    float *kv1 = calloc((size_t)bad_ctx * hd, 4), qq[3 * 8 * 64] = { 0 }, o[3 * 8 * 64];
    struct g_buf dk, dq, ds, dpp, dout;
    UP(dk, kv1, (size_t)bad_ctx * hd * 4); UP(dq, qq, sizeof(qq)); UP(ds, bad_seq, sizeof(bad_seq));
    UP(dpp, bad_pos, sizeof(bad_pos)); OUT(dout, sizeof(o));
    free(kv1);
    for (int k = 1; k <= 2; k++) {
        OK(moe_cuda_ctx_set_attn_splits(ctx, k));
        OK(moe_cuda_memset(ctx, dout.d, 0, sizeof(o)));
        OK(moe_cuda_attention(ctx, dq.d, dk.d, dk.d, MOE_DT_F32, ds.d, dpp.d, 3, bad_ctx - 1, nh, 1, hd, bad_ctx, 0,
                              0.125f, dout.d));
        OK(moe_cuda_ctx_sync(ctx));
        dl(&dout, o, "attention outside the cache");
        int nan = 0;
        for (size_t i = 0; i < MOE_ARRAY_LEN(o); i++) nan += isnan(o[i]) != 0;
        CHECK(nan == (int)MOE_ARRAY_LEN(o), "attention at positions -1 and max_ctx and in sequence -1: %d of %zu "
              "outputs NaN", nan, MOE_ARRAY_LEN(o));
    }
    OK(moe_cuda_ctx_set_attn_splits(ctx, 0));
    g_buf_free(ctx, &dk); g_buf_free(ctx, &dq); g_buf_free(ctx, &ds); g_buf_free(ctx, &dpp); g_buf_free(ctx, &dout);
}

/* The split's partials follow the call's positions (pos_max), not the cache's size.  A cache of
 * 16384 positions (64 chunks of 256) and two tokens at positions 299 and 700 (3 chunks), on a
 * context whose workspace holds exactly those tokens' partials at 3 chunks (12800 bytes; 64
 * chunks would take 270 KB): a forced split of 3 is MOE_ENOMEM with the cache's last position as
 * the bound and runs with 700, giving the bits of the unsplit call within 1e-4 of the reference;
 * so does the context's own choice.  A bound below a row's position (700 for the last token
 * moved to 1000: 4 chunks, one past the partials, whose last head's would land past the
 * workspace's end, under memcheck) gives that row NaN and the other row its bits, split or
 * not, within the guard bytes. */
static void test_attention_bound(struct g_rng *r)
{
    enum { n = 2, nh = 8, nkv = 2, hd = 64, max_ctx = 16384, nck = 3 };
    int seq[n] = { 0, 0 }, pos[n] = { 299, 700 }, far[n] = { 299, 1000 }, splits[] = { 1, 3, 0 };
    size_t kv_dim = (size_t)nkv * hd, cache = (size_t)max_ctx * kv_dim, row = (size_t)nh * hd;
    size_t cells = (size_t)n * nh * nck; /* (token, head, chunk): (m, l) padded to 256 bytes, then acc */
    struct moe_cuda_params sp = { .device = 0, .workspace_bytes = ((cells * 2 * 4 + 255) & ~(size_t)255) +
                                                                  cells * hd * 4, .gemm_mode = MOE_CUDA_GEMM_LOOP };
    struct moe_cuda_ctx *small = moe_cuda_ctx_create(&sp);
    REQUIRE(small, "small context: %s", moe_last_error());
    float *kc = calloc(cache, 4), *vc = calloc(cache, 4), *q = malloc(n * row * 4);
    float *ref = malloc(n * row * 4), *want = malloc(n * row * 4), *got = malloc(n * row * 4);
    g_fill(r, kc, 1001 * kv_dim, 1.0f, false); /* positions 0..1000: the rest is never read */
    g_fill(r, vc, 1001 * kv_dim, 1.0f, false);
    g_fill(r, q, n * row, 1.0f, false);
    struct g_buf dk, dv, dq, ds, dpp, dfar, dout;
    UP(dk, kc, cache * 4); UP(dv, vc, cache * 4); UP(dq, q, n * row * 4); UP(ds, seq, sizeof(seq));
    UP(dpp, pos, sizeof(pos)); UP(dfar, far, sizeof(far)); OUT(dout, n * row * 4);
    float scale = 1.0f / sqrtf((float)hd);
    ref_attention(q, kc, vc, seq, pos, n, nh, nkv, hd, max_ctx, 0, scale, ref);
    OK(moe_cuda_ctx_set_attn_splits(ctx, 1));
    OK(moe_cuda_attention(ctx, dq.d, dk.d, dv.d, MOE_DT_F32, ds.d, dpp.d, n, 700, nh, nkv, hd, max_ctx, 0, scale,
                          dout.d));
    dl(&dout, want, "attention, bound 700, unsplit");
    cmp("attention, bound 700, unsplit", want, ref, n * row, 1e-4);
    OK(moe_cuda_ctx_set_attn_splits(ctx, 0));

    OK(moe_cuda_ctx_set_attn_splits(small, 3));
    CHECK(moe_cuda_attention(small, dq.d, dk.d, dv.d, MOE_DT_F32, ds.d, dpp.d, n, max_ctx - 1, nh, nkv, hd, max_ctx,
                             0, scale, dout.d) == MOE_ENOMEM && strstr(moe_last_error(), "workspace_bytes"),
          "3 splits of partials sized by the cache in a workspace of %zu bytes: %s", sp.workspace_bytes,
          moe_last_error());
    moe_error_clear();
    for (size_t k = 0; k < MOE_ARRAY_LEN(splits); k++) {
        char what[96];
        OK(moe_cuda_ctx_set_attn_splits(small, splits[k]));
        snprintf(what, sizeof(what), "attention, bound 700, %zu-byte workspace, splits %d", sp.workspace_bytes,
                 splits[k]);
        OK(moe_cuda_memset(small, dout.d, 0xff, n * row * 4)); /* NaN where nothing is written */
        OK(moe_cuda_attention(small, dq.d, dk.d, dv.d, MOE_DT_F32, ds.d, dpp.d, n, 700, nh, nkv, hd, max_ctx, 0,
                              scale, dout.d));
        OK(moe_cuda_ctx_sync(small));
        dl(&dout, got, what);
        CHECK(!memcmp(got, want, n * row * 4), "%s: not the bits of the unsplit call", what);
        /* the second token at 1000, past the bound: a NaN row, the first token's row unchanged */
        snprintf(what, sizeof(what), "attention, position 1000 over bound 700, splits %d", splits[k]);
        OK(moe_cuda_memset(small, dout.d, 0, n * row * 4));
        OK(moe_cuda_attention(small, dq.d, dk.d, dv.d, MOE_DT_F32, ds.d, dfar.d, n, 700, nh, nkv, hd, max_ctx, 0,
                              scale, dout.d));
        OK(moe_cuda_ctx_sync(small));
        dl(&dout, got, what);
        int nan = 0;
        for (size_t i = row; i < n * row; i++) nan += isnan(got[i]) != 0;
        CHECK(nan == (int)row, "%s: %d of %zu outputs of the row past the bound NaN", what, nan, row);
        CHECK(!memcmp(got, want, row * 4), "%s: the row within the bound changed", what);
    }
    OK(moe_cuda_ctx_sync(small));
    CHECK(!moe_cuda_ctx_poisoned(small), "small context poisoned");
    moe_cuda_ctx_destroy(small);
    g_buf_free(ctx, &dk); g_buf_free(ctx, &dv); g_buf_free(ctx, &dq); g_buf_free(ctx, &ds); g_buf_free(ctx, &dpp);
    g_buf_free(ctx, &dfar); g_buf_free(ctx, &dout);
    free(kc); free(vc); free(q); free(ref); free(want); free(got);
}

/* A chunk whose every score is -inf (a query dimension of 1e20 against keys of -1e20: the F32 dot
 * product overflows) weighs nothing: one row over 600 keys whose first chunk (keys 0..255), then
 * whose second (keys 256..511), scores -inf gives the softmax over the other keys, within 1e-4 of
 * the reference (which sums in double: those keys' weights are 0 there), split or not with the same
 * bits.  Before, the chunk's exp(-inf - -inf) made its sum, and so the row, NaN, and so did folding
 * a first chunk's -inf maximum into the empty state. */
static void test_attention_inf_chunk(struct g_rng *r)
{
    enum { nh = 2, nkv = 1, hd = 64, max_ctx = 600 };
    int seq[1] = { 0 }, pos[1] = { max_ctx - 1 }, splits[] = { 1, 3, 0 };
    size_t cache = (size_t)max_ctx * nkv * hd, row = (size_t)nh * hd;
    float *kc = malloc(cache * 4), *vc = malloc(cache * 4), q[nh * hd], ref[nh * hd], want[nh * hd], got[nh * hd];
    g_fill(r, kc, cache, 1.0f, false);
    g_fill(r, vc, cache, 1.0f, false);
    g_fill(r, q, row, 1.0f, false);
    for (int h = 0; h < nh; h++) q[(size_t)h * hd] = 1e20f;
    struct g_buf dv, dq, ds, dpp, dout;
    UP(dv, vc, cache * 4); UP(dq, q, sizeof(q)); UP(ds, seq, sizeof(seq));
    UP(dpp, pos, sizeof(pos)); OUT(dout, sizeof(got));
    float scale = 1.0f / sqrtf((float)hd);
    for (int chunk = 0; chunk < 2; chunk++) { /* the first chunk of -inf scores, then the second */
        struct g_buf dk;
        for (int j = 0; j < max_ctx; j++) kc[(size_t)j * hd] = j / 256 == chunk ? -1e20f : 0.0f;
        UP(dk, kc, cache * 4);
        ref_attention(q, kc, vc, seq, pos, 1, nh, nkv, hd, max_ctx, 0, scale, ref);
        for (size_t k = 0; k < MOE_ARRAY_LEN(splits); k++) {
            char what[80];
            snprintf(what, sizeof(what), "attention, chunk %d of -inf scores, splits %d", chunk, splits[k]);
            OK(moe_cuda_ctx_set_attn_splits(ctx, splits[k]));
            OK(moe_cuda_attention(ctx, dq.d, dk.d, dv.d, MOE_DT_F32, ds.d, dpp.d, 1, pos[0], nh, nkv, hd, max_ctx,
                                  0, scale, dout.d));
            dl(&dout, k ? got : want, what);
            cmp(what, k ? got : want, ref, row, 1e-4);
            if (k) CHECK(!memcmp(got, want, sizeof(got)), "%s: not the bits of splits 1", what);
        }
        g_buf_free(ctx, &dk);
    }
    OK(moe_cuda_ctx_set_attn_splits(ctx, 0));
    g_buf_free(ctx, &dv); g_buf_free(ctx, &dq); g_buf_free(ctx, &ds); g_buf_free(ctx, &dpp); g_buf_free(ctx, &dout);
    free(kc); free(vc);
}

static void test_router(struct g_rng *r, bool adv)
{
    static const int Es[] = { 8, 60, 128 }, ks[] = { 2, 4, 8 };
    for (size_t v = 0; v < MOE_ARRAY_LEN(Es); v++) {
        int n = 33, E = Es[v], k = ks[v];
        for (int mode = 0; mode < 3; mode++) {
            bool sf = mode > 0, norm = mode == 2;
            float *lg = malloc((size_t)n * E * 4), *w = malloc((size_t)n * k * 4), *rw = malloc((size_t)n * k * 4);
            int *ids = malloc((size_t)n * k * 4), *rid = malloc((size_t)n * k * 4);
            struct g_buf dl_, di, dw;
            g_fill(r, lg, (size_t)n * E, 2.0f, false);
            if (adv) {
                for (int e = 0; e < E; e++) lg[e] = 1.0f;                  /* all tied */
                lg[E + 3] = NAN;                                           /* a NaN logit */
                for (int e = 0; e < E; e++) lg[2 * E + e] = e % 2 ? 50.0f : -50.0f;
                lg[3 * E + 1] = -INFINITY;
            }
            UP(dl_, lg, (size_t)n * E * 4); OUT(di, (size_t)n * k * 4); OUT(dw, (size_t)n * k * 4);
            OK(moe_cuda_router(ctx, dl_.d, n, E, k, sf, norm, di.d, dw.d));
            dl(&di, ids, "router ids");
            dl(&dw, w, "router weights");
            ref_router(lg, n, E, k, sf, norm, rid, rw);
            for (int i = 0; i < n * k; i++)
                CHECK(ids[i] == rid[i], "router E=%d k=%d mode %d: token %d slot %d expert %d want %d",
                      E, k, mode, i / k, i % k, ids[i], rid[i]);
            cmp("router weights", w, rw, (size_t)n * k, 1e-5);
            g_buf_free(ctx, &dl_); g_buf_free(ctx, &di); g_buf_free(ctx, &dw);
            free(lg); free(w); free(rw); free(ids); free(rid);
        }
    }
}

/* DeepSeek-V3's two ops against the CPU backend's (their C twins): the grouped
 * router's ids exactly and weights within 1e-5 (DeepSeek's and ERNIE-4.5's scores);
 * strided block copies exactly. */
static void test_deepseek_ops(struct g_rng *r, bool adv)
{
    struct moe_backend *cpu = moe_backend_cpu_create(NULL);
    REQUIRE(cpu, "cpu backend: %s", moe_last_error());
    static const int Es[] = { 16, 64, 256 }, ks[] = { 4, 6, 8 }, groups[] = { 4, 1, 8 }, kept[] = { 2, 1, 4 };
    for (size_t v = 0; v < MOE_ARRAY_LEN(Es); v++) {
        int n = 33, E = Es[v], k = ks[v];
        float *lg = malloc((size_t)n * E * 4), *bias = malloc((size_t)E * 4), *w = malloc((size_t)n * k * 4);
        float *rw = malloc((size_t)n * k * 4);
        int32_t *ids = malloc((size_t)n * k * 4), *rid = malloc((size_t)n * k * 4);
        struct g_buf dl_, db, di, dw;
        g_fill(r, lg, (size_t)n * E, 2.0f, false);
        g_fill(r, bias, (size_t)E, 0.3f, false);
        if (adv) {
            for (int e = 0; e < E; e++) lg[e] = 1.0f;          /* all tied */
            lg[E + 3] = NAN;                                   /* a NaN logit */
            for (int e = 0; e < E; e++) lg[2 * E + e] = -30.0f; /* scores near 0: the bias decides */
        }
        UP(dl_, lg, (size_t)n * E * 4); UP(db, bias, (size_t)E * 4);
        OUT(di, (size_t)n * k * 4); OUT(dw, (size_t)n * k * 4);
        for (int sc = 0; sc < 3; sc++) { /* V3's sigmoid scores with bias, V2's softmax, ERNIE's with bias */
            static const enum moe_router_kind kinds[] = { MOE_ROUTER_SIGMOID_GROUP, MOE_ROUTER_SOFTMAX_GROUP,
                                                         MOE_ROUTER_SOFTMAX_BIAS };
            static const int scores[] = { MOE_CUDA_SCORES_SIGMOID, MOE_CUDA_SCORES_SOFTMAX,
                                          MOE_CUDA_SCORES_SOFTMAX_BIAS };
            static const char *const names[] = { "sigmoid", "softmax", "softmax with bias" };
            int ng = sc == 2 ? 1 : groups[v], nk = sc == 2 ? 1 : kept[v];
            bool renorm = sc == 2 || (sc == 0 && v != 1);
            OK(moe_cuda_router_grouped(ctx, dl_.d, db.d, n, E, k, scores[sc], ng, nk, renorm, 2.5f, di.d, dw.d));
            dl(&di, ids, "grouped router ids");
            dl(&dw, w, "grouped router weights");
            OK(cpu->ops->router_grouped(cpu->ctx, lg, bias, n, E, k, kinds[sc], ng, nk, renorm, 2.5f, rid, rw));
            for (int i = 0; i < n * k; i++)
                CHECK(ids[i] == rid[i], "grouped router (%s) E=%d: token %d slot %d expert %d want %d", names[sc],
                      E, i / k, i % k, ids[i], rid[i]);
            cmp("grouped router weights", w, rw, (size_t)n * k, 1e-5);
        }
        g_buf_free(ctx, &dl_); g_buf_free(ctx, &db); g_buf_free(ctx, &di); g_buf_free(ctx, &dw);
        free(lg); free(bias); free(w); free(rw); free(ids); free(rid);
    }
    /* MLA's copies: a head's block out of a wider row, and one block repeated in every head */
    int rows = 7, heads = 5, xw = 32, yw = 24, width = 16;
    size_t nx = (size_t)rows * heads * xw, ny = (size_t)rows * heads * yw;
    float *x = malloc(nx * 4), *y = malloc(ny * 4), *ry = malloc(ny * 4);
    g_fill(r, x, nx, 1.0f, adv);
    for (int bcast = 0; bcast < 2; bcast++) {
        struct g_buf dx, dy;
        memset(ry, 0, ny * 4);
        UP(dx, x, nx * 4); UP(dy, ry, ny * 4);
        int xg = bcast ? 0 : xw, xr = bcast ? xw : heads * xw;
        OK(moe_cuda_copy_blocks(ctx, (const float *)dx.d + 3, xr, xg, (float *)dy.d + 8, heads * yw, yw, rows,
                                heads, width));
        dl(&dy, y, "copy_blocks");
        OK(cpu->ops->copy_blocks(cpu->ctx, x + 3, xr, xg, ry + 8, heads * yw, yw, rows, heads, width));
        CHECK(!memcmp(y, ry, ny * 4), "copy_blocks (broadcast %d) differs from the C twin", bcast);
        g_buf_free(ctx, &dx); g_buf_free(ctx, &dy);
    }
    free(x); free(y); free(ry);
    moe_backend_destroy(cpu);
}

/* The FP8 record rec [rows, cols] (blocks br x bc) decoded on the device: bit for bit moe_fp8_record_decode's. */
static void fp8_compare(const uint8_t *rec, int rows, int cols, int br, int bc, const char *factors)
{
    size_t n = (size_t)rows * cols, bytes = (size_t)moe_fp8_record_bytes(rows, cols, br, bc);
    uint16_t *want = malloc(n * 2), *got = malloc(n * 2);
    REQUIRE(want && got, "out of memory");
    moe_fp8_record_decode(rec, rows, cols, br, bc, want, NULL);
    struct g_buf dr, dout;
    UP(dr, rec, bytes);
    OUT(dout, n * 2);
    OK(moe_cuda_fp8_record_decode(ctx, moe_cuda_ctx_stream(ctx), dr.d, rows, cols, br, bc, dout.d));
    dl(&dout, got, "fp8 decode");
    size_t bad = 0, first = 0;
    for (size_t i = n; i-- > 0;)
        if (got[i] != want[i]) bad++, first = i;
    uint32_t f;
    memcpy(&f, rec + n + 4 * ((first / (size_t)cols / (size_t)br) * (size_t)((cols + bc - 1) / bc) +
                              first % (size_t)cols / (size_t)bc), 4);
    CHECK(bad == 0, "FP8 record %d x %d (blocks %d x %d, %s factors) decoded on the GPU: %zu values differ, "
          "the first code 0x%02x x factor 0x%08x: 0x%04x, the host's 0x%04x", rows, cols, br, bc, factors, bad,
          rec[first], f, got[first], want[first]);
    g_buf_free(ctx, &dr); g_buf_free(ctx, &dout);
    free(want); free(got);
}

/* FP8 records (model.h) decoded on the device: bit for bit moe_fp8_record_decode, over shapes whose
 * blocks do not divide them (factors then unaligned), all 256 codes (the two NaNs, 0x7f and 0xff, too)
 * under finite factors of both signs; then all 256 codes under each of the factors whose products
 * IEEE leaves to the machine or that sit at the edges (fp8.h's rule: zero, infinite, NaN of either
 * sign, quiet or signalling, with payloads; subnormal, the largest, zero). */
static void test_fp8_decode(struct g_rng *r)
{
    static const int shapes[][4] = { { 16, 64, 16, 32 }, { 37, 53, 8, 16 }, { 130, 7, 128, 128 } };
    for (size_t v = 0; v < MOE_ARRAY_LEN(shapes); v++) {
        int rows = shapes[v][0], cols = shapes[v][1], br = shapes[v][2], bc = shapes[v][3];
        size_t n = (size_t)rows * cols, bytes = (size_t)moe_fp8_record_bytes(rows, cols, br, bc), nf = (bytes - n) / 4;
        uint8_t *rec = malloc(bytes);
        REQUIRE(rec && n >= 256, "out of memory");
        for (size_t i = 0; i < n; i++) rec[i] = i < 256 ? (uint8_t)i : (uint8_t)(g_next(r) & 0xff);
        for (size_t i = 0; i < nf; i++) {
            float f = g_uniform(r, 1e-4f, 4.0f) * (g_next(r) & 1 ? -1.0f : 1.0f);
            memcpy(rec + n + 4 * i, &f, 4);
        }
        fp8_compare(rec, rows, cols, br, bc, "finite");
        free(rec);
    }
    static const uint32_t special[] = { 0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                                        0xffc00000u, 0x7fe12345u, 0xffa00001u, 0x7f800001u, 0xffb00000u,
                                        0x00000001u, 0x807fffffu, 0x7f7fffffu, 0xff7fffffu };
    int rows = (int)MOE_ARRAY_LEN(special), cols = 256;
    size_t n = (size_t)rows * cols;
    uint8_t *rec = malloc((size_t)moe_fp8_record_bytes(rows, cols, 1, cols));
    REQUIRE(rec, "out of memory");
    for (size_t i = 0; i < n; i++) rec[i] = (uint8_t)i;
    memcpy(rec + n, special, sizeof(special));
    fp8_compare(rec, rows, cols, 1, cols, "zero, infinite, NaN and edge");
    free(rec);
}

static void test_permute_combine(struct g_rng *r, bool adv)
{
    int n = 21, k = 2, E = 8, dim = 48;
    int ids[42], counts[8], offs[9], rows[42], inv[42];
    float w[42], *x = malloc((size_t)n * dim * 4), *xp = malloc((size_t)n * k * dim * 4);
    float *got = malloc((size_t)n * k * dim * 4), *out = malloc((size_t)n * dim * 4),
          *ref = malloc((size_t)n * dim * 4);
    struct g_buf dx, dr, dxp, dinv, dw, dout;
    for (int t = 0; t < n; t++) {
        ids[t * k] = (int)(g_next(r) % (uint64_t)E);
        ids[t * k + 1] = (ids[t * k] + 1 + (int)(g_next(r) % (uint64_t)(E - 1))) % E;
        if (adv) { ids[t * k] = 3; ids[t * k + 1] = 5; } /* all tokens on two experts */
        w[t * k] = g_uniform(r, 0.5f, 1.0f);
        w[t * k + 1] = 1.0f - w[t * k];
    }
    OK(moe_moe_plan(ids, n, k, E, counts, offs, rows, inv));
    for (int i = 0; i < n * k; i++) CHECK(rows[inv[i]] == i / k, "plan: inv/rows disagree at %d", i);
    g_fill(r, x, (size_t)n * dim, 1.0f, adv);
    for (int i = 0; i < n * k; i++) memcpy(xp + (size_t)i * dim, x + (size_t)rows[i] * dim, (size_t)dim * 4);
    UP(dx, x, (size_t)n * dim * 4); UP(dr, rows, sizeof(rows)); OUT(dxp, (size_t)n * k * dim * 4);
    OK(moe_cuda_gather_rows(ctx, dx.d, dr.d, n * k, dim, dxp.d));
    dl(&dxp, got, "gather_rows");
    cmp("gather_rows", got, xp, (size_t)n * k * dim, 0.0);
    /* combine the permuted rows back with weights, accumulating onto x */
    UP(dinv, inv, sizeof(inv)); UP(dw, w, sizeof(w)); UP(dout, x, (size_t)n * dim * 4);
    OK(moe_cuda_moe_combine(ctx, dxp.d, dinv.d, dw.d, n, k, dim, true, dout.d));
    dl(&dout, out, "moe_combine");
    memcpy(ref, x, (size_t)n * dim * 4);
    ref_combine(xp, inv, w, n, k, dim, true, ref);
    cmp("moe_combine", out, ref, (size_t)n * dim, 1e-6);
    /* bad plan input is refused with a message naming token and slot */
    ids[5] = E;
    CHECK(moe_moe_plan(ids, n, k, E, counts, offs, rows, inv) == MOE_ERANGE, "plan accepted expert %d", E);
    g_buf_free(ctx, &dx); g_buf_free(ctx, &dr); g_buf_free(ctx, &dxp); g_buf_free(ctx, &dinv);
    g_buf_free(ctx, &dw); g_buf_free(ctx, &dout);
    free(x); free(xp); free(got); free(out); free(ref);
}

static void test_swiglu_gate(struct g_rng *r, bool adv)
{
    int n = 17, dim = 200;
    size_t sz = (size_t)n * dim;
    float *g = malloc(sz * 4), *u = malloc(sz * 4), *got = malloc(sz * 4), *ref = malloc(sz * 4), s[17];
    struct g_buf dg, du, dout, ds;
    g_fill(r, g, sz, 4.0f, adv);
    g_fill(r, u, sz, 1.0f, adv);
    g_fill(r, s, (size_t)n, 3.0f, adv);
    UP(dg, g, sz * 4); UP(du, u, sz * 4); OUT(dout, sz * 4);
    OK(moe_cuda_swiglu(ctx, dg.d, du.d, dout.d, sz));
    dl(&dout, got, "swiglu");
    ref_swiglu(g, u, ref, sz);
    cmp("swiglu", got, ref, sz, TOL_TRANS);
    UP(ds, s, sizeof(s));
    OK(moe_cuda_sigmoid_scale_add(ctx, ds.d, du.d, n, dim, dout.d));
    dl(&dout, got, "sigmoid_scale_add");
    ref_sigmoid_scale_add(s, u, n, dim, ref);
    cmp("sigmoid_scale_add", got, ref, sz, TOL_TRANS);
    g_buf_free(ctx, &dg); g_buf_free(ctx, &du); g_buf_free(ctx, &dout); g_buf_free(ctx, &ds);
    free(g); free(u); free(got); free(ref);
}

/* Whether the op rounds its activations to BF16 (cuBLAS paths). */
static bool round_x(void) { return moe_cuda_ctx_gemm_mode(ctx) != MOE_CUDA_GEMM_INVARIANT; }
static bool linear_rounds(int out) { return round_x() && out > MOE_CUDA_F32_LINEAR_MAX_OUT; }

static void test_linear(struct g_rng *r, bool adv)
{
    static const int shapes[][3] = { { 1, 64, 96 }, { 7, 256, 130 }, { 33, 512, 1000 }, { 5, 320, 1100 },
                                     { 1, 192, 8192 } };
    for (size_t v = 0; v < MOE_ARRAY_LEN(shapes); v++) {
        int n = shapes[v][0], in = shapes[v][1], out = shapes[v][2];
        for (int f32 = 0; f32 < 2; f32++) {
            enum moe_dtype dt = f32 ? MOE_DT_F32 : MOE_DT_BF16;
            size_t wsz = (size_t)out * in * (f32 ? 4 : 2);
            void *w = malloc(wsz);
            float *x = malloc((size_t)n * in * 4), *y0 = malloc((size_t)n * out * 4),
                  *got = malloc((size_t)n * out * 4), *ref = malloc((size_t)n * out * 4);
            struct g_buf dw, dx, dy;
            if (f32) g_fill(r, w, (size_t)out * in, 0.05f, false);
            else g_fill_bf16(r, w, (size_t)out * in, 0.05f);
            g_fill(r, x, (size_t)n * in, 1.0f, adv);
            g_fill(r, y0, (size_t)n * out, 1.0f, false);
            UP(dw, w, wsz); UP(dx, x, (size_t)n * in * 4); UP(dy, y0, (size_t)n * out * 4);
            OK(moe_cuda_linear(ctx, dx.d, dw.d, dt, n, in, out, true, dy.d));
            dl(&dy, got, "linear");
            memcpy(ref, y0, (size_t)n * out * 4);
            ref_linear(x, w, dt, n, in, out, true, linear_rounds(out), ref);
            cmp(f32 ? "linear f32" : "linear bf16", got, ref, (size_t)n * out, f32 ? 1e-4 : TOL_GEMM);
            g_buf_free(ctx, &dw); g_buf_free(ctx, &dx); g_buf_free(ctx, &dy);
            free(w); free(x); free(y0); free(got); free(ref);
        }
    }
}

/* The expert FFN over a plan with empty, single-row and large groups, in both
 * GEMM modes; and the two modes agree with each other to the same tolerance. */
static void test_expert_ffn(struct g_rng *r, bool adv, enum moe_cuda_gemm_mode mode)
{
    int E = 6, hidden = 256, inter = 384;
    int off[7] = { 0, 0, 1, 9, 9, 40, 41 }; /* groups 0 and 3 empty */
    int rows = off[E];
    size_t we = (size_t)inter * hidden;
    uint16_t *w = malloc(we * 3 * E * 2);
    float *x = malloc((size_t)rows * hidden * 4), *got = malloc((size_t)rows * hidden * 4),
          *ref = malloc((size_t)rows * hidden * 4);
    struct g_buf dw, dx, dy;
    struct moe_cuda_expert ex[6];
    g_fill_bf16(r, w, we * 3 * E, 0.06f);
    g_fill(r, x, (size_t)rows * hidden, 1.0f, adv);
    UP(dw, w, we * 3 * E * 2); UP(dx, x, (size_t)rows * hidden * 4); OUT(dy, (size_t)rows * hidden * 4);
    for (int e = 0; e < E; e++) {
        ex[e].gate = (const char *)dw.d + (size_t)e * 3 * we * 2;
        ex[e].up = (const char *)ex[e].gate + we * 2;
        ex[e].down = (const char *)ex[e].up + we * 2;
    }
    OK(moe_cuda_expert_ffn(ctx, dx.d, E, off, ex, MOE_DT_BF16, hidden, inter, dy.d));
    dl(&dy, got, "expert_ffn");
    for (int e = 0; e < E; e++) {
        int m = off[e + 1] - off[e];
        if (m)
            ref_expert_rows(x + (size_t)off[e] * hidden, m, w + (size_t)e * 3 * we,
                            w + (size_t)e * 3 * we + we, w + (size_t)e * 3 * we + 2 * we, MOE_DT_BF16,
                            hidden, inter, round_x(), ref + (size_t)off[e] * hidden);
    }
    cmp(mode == MOE_CUDA_GEMM_GROUPED ? "expert_ffn grouped"
        : mode == MOE_CUDA_GEMM_INVARIANT ? "expert_ffn invariant" : "expert_ffn loop", got, ref,
        (size_t)rows * hidden, mode == MOE_CUDA_GEMM_INVARIANT ? TOL_GEMM : TOL_FFN);
    /* bad offsets are refused */
    int bad[7] = { 0, 3, 2, 9, 9, 40, 41 };
    CHECK(moe_cuda_expert_ffn(ctx, dx.d, E, bad, ex, MOE_DT_BF16, hidden, inter, dy.d) == MOE_EINVAL,
          "decreasing offsets accepted");
    g_buf_free(ctx, &dw); g_buf_free(ctx, &dx); g_buf_free(ctx, &dy);
    free(w); free(x); free(got); free(ref);
}

/* Invariant mode: a row's linear / expert-FFN output is bit-identical whether
 * it is computed alone, at another offset, or inside a larger call. */
static void test_batch_invariance(struct g_rng *r)
{
    int n = 37, in = 320, out = 200, inter = 96;
    size_t we = (size_t)inter * in;
    uint16_t *w = malloc(we * 3 * 2), *wl = malloc((size_t)out * in * 2);
    float *x = malloc((size_t)n * in * 4), *all = malloc((size_t)n * out * 4), *one = malloc((size_t)out * 4);
    float *fall = malloc((size_t)n * in * 4), *fone = malloc((size_t)in * 4);
    struct g_buf dw, dwl, dx, dy, dy1, dfy, dfy1;
    struct moe_cuda_expert ex;
    g_fill_bf16(r, w, we * 3, 0.05f);
    g_fill_bf16(r, wl, (size_t)out * in, 0.05f);
    g_fill(r, x, (size_t)n * in, 1.0f, true);
    UP(dw, w, we * 3 * 2); UP(dwl, wl, (size_t)out * in * 2); UP(dx, x, (size_t)n * in * 4);
    OUT(dy, (size_t)n * out * 4); OUT(dy1, (size_t)out * 4); OUT(dfy, (size_t)n * in * 4); OUT(dfy1, (size_t)in * 4);
    ex.gate = dw.d;
    ex.up = (const char *)dw.d + we * 2;
    ex.down = (const char *)dw.d + 2 * we * 2;
    OK(moe_cuda_linear(ctx, dx.d, dwl.d, MOE_DT_BF16, n, in, out, false, dy.d));
    int off_all[2] = { 0, n }, off_one[2] = { 0, 1 };
    OK(moe_cuda_expert_ffn(ctx, dx.d, 1, off_all, &ex, MOE_DT_BF16, in, inter, dfy.d));
    dl(&dy, all, "invariant linear");
    dl(&dfy, fall, "invariant expert_ffn");
    for (int t = 0; t < n; t += 5) {
        OK(moe_cuda_linear(ctx, (const float *)dx.d + (size_t)t * in, dwl.d, MOE_DT_BF16, 1, in, out, false, dy1.d));
        OK(moe_cuda_expert_ffn(ctx, (const float *)dx.d + (size_t)t * in, 1, off_one, &ex, MOE_DT_BF16, in, inter,
                               dfy1.d));
        dl(&dy1, one, "invariant linear row");
        dl(&dfy1, fone, "invariant expert_ffn row");
        CHECK(!memcmp(one, all + (size_t)t * out, (size_t)out * 4), "linear row %d alone differs from batch", t);
        CHECK(!memcmp(fone, fall + (size_t)t * in, (size_t)in * 4), "expert_ffn row %d alone differs from batch", t);
    }
    /* three rows at once: the decode kernel with several rows (one row and the
     * whole batch above run different kernels too) */
    float *three = malloc((size_t)3 * out * 4), *fthree = malloc((size_t)3 * in * 4);
    struct g_buf dy3, dfy3;
    int off_three[2] = { 0, 3 };
    OUT(dy3, (size_t)3 * out * 4); OUT(dfy3, (size_t)3 * in * 4);
    for (int t = 1; t + 3 <= n; t += 11) {
        OK(moe_cuda_linear(ctx, (const float *)dx.d + (size_t)t * in, dwl.d, MOE_DT_BF16, 3, in, out, false, dy3.d));
        OK(moe_cuda_expert_ffn(ctx, (const float *)dx.d + (size_t)t * in, 1, off_three, &ex, MOE_DT_BF16, in, inter,
                               dfy3.d));
        dl(&dy3, three, "invariant linear rows");
        dl(&dfy3, fthree, "invariant expert_ffn rows");
        CHECK(!memcmp(three, all + (size_t)t * out, (size_t)3 * out * 4), "linear rows %d..%d differ from batch", t,
              t + 2);
        CHECK(!memcmp(fthree, fall + (size_t)t * in, (size_t)3 * in * 4), "expert_ffn rows %d..%d differ from batch",
              t, t + 2);
    }
    g_buf_free(ctx, &dy3); g_buf_free(ctx, &dfy3);
    free(three); free(fthree);
    g_buf_free(ctx, &dw); g_buf_free(ctx, &dwl); g_buf_free(ctx, &dx); g_buf_free(ctx, &dy);
    g_buf_free(ctx, &dy1); g_buf_free(ctx, &dfy); g_buf_free(ctx, &dfy1);
    free(w); free(wl); free(x); free(all); free(one); free(fall); free(fone);
}

/* Invariant mode past one launch's row tiles (65535 x 16 = 1,048,560 rows): a linear of 1,048,580 rows
 * (more than max_batch_tokens' 1,048,576) writes every output (over a NaN fill), and 30 rows across the
 * launch boundary up to the end, as the first 30, have the bits of the same rows in a call of their own. */
static void test_invariant_rows(struct g_rng *r)
{
    int n = 65535 * 16 + 20, in = 32, out = 24, nb = 30, starts[2] = { 0, 65535 * 16 + 20 - 30 };
    size_t nx = (size_t)n * in, ny = (size_t)n * out, nan = 0;
    uint16_t *w = malloc((size_t)out * in * 2);
    float *x = malloc(nx * 4), *all = malloc(ny * 4), *part = malloc((size_t)nb * out * 4);
    struct g_buf dw, dx, dy, dp;
    REQUIRE(w && x && all && part, "out of memory");
    g_fill_bf16(r, w, (size_t)out * in, 0.05f);
    g_fill(r, x, nx, 1.0f, false);
    UP(dw, w, (size_t)out * in * 2); UP(dx, x, nx * 4); OUT(dy, ny * 4); OUT(dp, (size_t)nb * out * 4);
    OK(moe_cuda_memset(ctx, dy.d, 0xff, ny * 4)); /* NaN: an unwritten output shows */
    OK(moe_cuda_linear(ctx, dx.d, dw.d, MOE_DT_BF16, n, in, out, false, dy.d));
    dl(&dy, all, "invariant linear, 1048580 rows");
    for (size_t i = 0; i < ny; i++) nan += isnan(all[i]) != 0;
    CHECK(nan == 0, "invariant linear of %d rows left %zu of %zu outputs unwritten", n, nan, ny);
    for (int s = 0; s < 2; s++) {
        OK(moe_cuda_linear(ctx, (const float *)dx.d + (size_t)starts[s] * in, dw.d, MOE_DT_BF16, nb, in, out, false,
                           dp.d));
        dl(&dp, part, "invariant linear, rows alone");
        CHECK(!memcmp(part, all + (size_t)starts[s] * out, (size_t)nb * out * 4),
              "invariant linear rows %d..%d alone differ from the %d-row call", starts[s], starts[s] + nb - 1, n);
    }
    g_buf_free(ctx, &dw); g_buf_free(ctx, &dx); g_buf_free(ctx, &dy); g_buf_free(ctx, &dp);
    free(w); free(x); free(all); free(part);
}

/* A workspace too small for all rows (`ctx` and the small context both in
 * `mode`): the groups run in several calls with the same bits as one call; an
 * expert whose rows alone exceed the workspace runs in row chunks (INVARIANT:
 * the same bits as one call; LOOP: within the GEMM tolerance, and no row left
 * unwritten); a workspace without room for one row is an error naming
 * workspace_bytes. */
static void test_ffn_chunked(struct g_rng *r, enum moe_cuda_gemm_mode mode, size_t ws)
{
    int E = 6, hidden = 256, inter = 384, off[7] = { 0, 0, 1, 9, 9, 40, 41 }, rows = 41;
    size_t we = (size_t)inter * hidden, ybytes = (size_t)rows * hidden * 4;
    struct moe_cuda_params sp = { .device = 0, .workspace_bytes = ws, .gemm_mode = mode };
    struct moe_cuda_ctx *small = moe_cuda_ctx_create(&sp);
    REQUIRE(small, "small context: %s", moe_last_error());
    uint16_t *w = malloc(we * 3 * E * 2);
    float *x = malloc(ybytes), *a = malloc(ybytes), *b = malloc(ybytes);
    void *dw, *dx, *dy;
    struct moe_cuda_expert ex[6];
    bool inv = mode == MOE_CUDA_GEMM_INVARIANT;
    g_fill_bf16(r, w, we * 3 * E, 0.06f);
    g_fill(r, x, (size_t)rows * hidden, 1.0f, false);
    OK(moe_cuda_alloc(ctx, &dw, we * 3 * E * 2, "w"));
    OK(moe_cuda_alloc(ctx, &dx, ybytes, "x"));
    OK(moe_cuda_alloc(ctx, &dy, ybytes, "y"));
    OK(moe_cuda_h2d(ctx, dw, w, we * 3 * E * 2));
    OK(moe_cuda_h2d(ctx, dx, x, ybytes));
    OK(moe_cuda_ctx_sync(ctx));
    for (int e = 0; e < E; e++) {
        ex[e].gate = (const char *)dw + (size_t)e * 3 * we * 2;
        ex[e].up = (const char *)ex[e].gate + we * 2;
        ex[e].down = (const char *)ex[e].up + we * 2;
    }
    OK(moe_cuda_expert_ffn(ctx, dx, E, off, ex, MOE_DT_BF16, hidden, inter, dy));
    OK(moe_cuda_d2h(ctx, a, dy, ybytes));
    OK(moe_cuda_ctx_sync(ctx));
    OK(moe_cuda_memset(small, dy, 0xff, ybytes)); /* NaN: an unwritten row shows */
    OK(moe_cuda_expert_ffn(small, dx, E, off, ex, MOE_DT_BF16, hidden, inter, dy));
    OK(moe_cuda_d2h(small, b, dy, ybytes));
    OK(moe_cuda_ctx_sync(small));
    /* LOOP at 160 KiB: every group fits whole; INVARIANT at 64 KiB: the 31-row group is chunked */
    CHECK(!memcmp(a, b, ybytes), "expert_ffn in workspace-sized runs differs from one call");

    int big[3] = { 0, 1, 41 }; /* 40 rows of one expert: more than the small workspace */
    OK(moe_cuda_expert_ffn(ctx, dx, 2, big, ex, MOE_DT_BF16, hidden, inter, dy));
    OK(moe_cuda_d2h(ctx, a, dy, ybytes));
    OK(moe_cuda_ctx_sync(ctx));
    OK(moe_cuda_memset(small, dy, 0xff, ybytes));
    OK(moe_cuda_expert_ffn(small, dx, 2, big, ex, MOE_DT_BF16, hidden, inter, dy));
    OK(moe_cuda_d2h(small, b, dy, ybytes));
    OK(moe_cuda_ctx_sync(small));
    if (inv)
        CHECK(!memcmp(a, b, ybytes), "invariant expert_ffn in row chunks differs from one call");
    else
        cmp("expert_ffn in row chunks", b, a, (size_t)rows * hidden, TOL_GEMM);
    if (!inv) { /* a cuBLAS-mode linear whose rows' BF16 copy exceeds the workspace runs in row chunks */
        int ln = 200, lin = 512, lout = 1100; /* 200 KB of BF16 rows against 160 KiB */
        size_t lw = (size_t)lout * lin, lx = (size_t)ln * lin, ly = (size_t)ln * lout;
        uint16_t *hw = malloc(lw * 2);
        float *hx = malloc(lx * 4), *ya = malloc(ly * 4), *yb = malloc(ly * 4);
        struct g_buf gw, gx, gy;
        g_fill_bf16(r, hw, lw, 0.05f);
        g_fill(r, hx, lx, 1.0f, false);
        UP(gw, hw, lw * 2); UP(gx, hx, lx * 4); OUT(gy, ly * 4);
        OK(moe_cuda_linear(ctx, gx.d, gw.d, MOE_DT_BF16, ln, lin, lout, false, gy.d));
        dl(&gy, ya, "linear, one call");
        OK(moe_cuda_memset(small, gy.d, 0xff, ly * 4)); /* NaN: an unwritten row shows */
        OK(moe_cuda_linear(small, gx.d, gw.d, MOE_DT_BF16, ln, lin, lout, false, gy.d));
        OK(moe_cuda_ctx_sync(small));
        dl(&gy, yb, "linear, row chunks");
        cmp("linear in row chunks", yb, ya, ly, TOL_GEMM);
        g_buf_free(ctx, &gw); g_buf_free(ctx, &gx); g_buf_free(ctx, &gy);
        free(hw); free(hx); free(ya); free(yb);
    }
    moe_cuda_ctx_destroy(small);

    sp.workspace_bytes = 2048; /* not one row */
    small = moe_cuda_ctx_create(&sp);
    REQUIRE(small, "tiny context: %s", moe_last_error());
    CHECK(moe_cuda_expert_ffn(small, dx, 2, big, ex, MOE_DT_BF16, hidden, inter, dy) == MOE_ENOMEM,
          "a workspace without room for one row was accepted");
    CHECK(strstr(moe_last_error(), "workspace_bytes") != NULL, "message: %s", moe_last_error());
    moe_cuda_ctx_destroy(small);
    moe_cuda_free(ctx, dw); moe_cuda_free(ctx, dx); moe_cuda_free(ctx, dy);
    free(w); free(x); free(a); free(b);
}

static void test_argmax(struct g_rng *r, bool adv)
{
    int rows = 6, vocab = 50000;
    float *x = malloc((size_t)rows * vocab * 4);
    int got[6];
    struct g_buf dx, dout;
    g_fill(r, x, (size_t)rows * vocab, 1.0f, false);
    if (adv) {
        x[123] = 100.0f; x[40000] = 100.0f;                      /* tie: lowest id */
        x[vocab + 5] = NAN; x[vocab + 6] = 50.0f;                 /* NaN ignored */
        for (int i = 0; i < vocab; i++) x[2 * vocab + i] = NAN;   /* all NaN -> 0 */
        x[3 * vocab + vocab - 1] = INFINITY;                      /* +inf at the end */
        for (int i = 0; i < vocab; i++) x[4 * vocab + i] = -INFINITY; /* all -inf -> 0 */
    }
    UP(dx, x, (size_t)rows * vocab * 4); OUT(dout, sizeof(got));
    OK(moe_cuda_argmax(ctx, dx.d, rows, vocab, dout.d));
    dl(&dout, got, "argmax");
    for (int i = 0; i < rows; i++) {
        int want = ref_argmax(x + (size_t)i * vocab, vocab);
        CHECK(got[i] == want, "argmax row %d: %d want %d", i, got[i], want);
    }
    g_buf_free(ctx, &dx); g_buf_free(ctx, &dout);
    free(x);
}

static void test_bad_args(void)
{
    CHECK(moe_cuda_attention(ctx, NULL, NULL, NULL, MOE_DT_F32, NULL, NULL, 1, 0, 6, 4, 64, 16, 0, 1, NULL) ==
              MOE_EINVAL, "attention accepted heads %% kv_heads != 0");
    CHECK(moe_cuda_attention(ctx, NULL, NULL, NULL, MOE_DT_F32, NULL, NULL, 1, 0, 8, 2, 704, 16, 0, 1, NULL) ==
              MOE_EINVAL, "attention accepted head_dim 704");
    /* pos_max outside the cache, where n > 0: refused before any launch; an empty call takes any */
    CHECK(moe_cuda_attention(ctx, NULL, NULL, NULL, MOE_DT_F32, NULL, NULL, 1, -1, 8, 2, 64, 16, 0, 1, NULL) ==
              MOE_EINVAL && strstr(moe_last_error(), "pos_max"), "attention accepted pos_max -1: %s", moe_last_error());
    CHECK(moe_cuda_attention(ctx, NULL, NULL, NULL, MOE_DT_F32, NULL, NULL, 1, 16, 8, 2, 64, 16, 0, 1, NULL) ==
              MOE_EINVAL && strstr(moe_last_error(), "pos_max"), "attention accepted pos_max = max_ctx: %s",
          moe_last_error());
    OK(moe_cuda_attention(ctx, NULL, NULL, NULL, MOE_DT_F32, NULL, NULL, 0, -1, 8, 2, 64, 16, 0, 1, NULL));
    /* split partials beyond the workspace: an error naming workspace_bytes when asked for, never a
     * launch (auto runs such calls unsplit) */
    OK(moe_cuda_ctx_set_attn_splits(ctx, 2));
    CHECK(moe_cuda_attention(ctx, NULL, NULL, NULL, MOE_DT_BF16, NULL, NULL, 1, (1 << 20) - 1, 64, 1, 576, 1 << 20, 0,
                             1, NULL) == MOE_ENOMEM && strstr(moe_last_error(), "workspace_bytes"),
          "attention split beyond the workspace: %s", moe_last_error());
    OK(moe_cuda_ctx_set_attn_splits(ctx, 0));
    CHECK(moe_cuda_ctx_set_attn_splits(ctx, -1) == MOE_EINVAL, "attention splits -1 accepted");
    CHECK(moe_cuda_router(ctx, NULL, 1, 4, 5, true, true, NULL, NULL) == MOE_EINVAL, "router accepted k > E");
    float f[32] = { 0 };
    CHECK(moe_cuda_rope_table(ctx, NULL, NULL, 1, 1, 63, 63, f, 1.0f) == MOE_EINVAL, "rope accepted odd rot_dim");
    CHECK(moe_cuda_rope_table(ctx, NULL, NULL, 1, 1, 32, 64, f, 1.0f) == MOE_EINVAL,
          "rope accepted rot_dim above head_dim");
    CHECK(moe_cuda_linear(ctx, NULL, NULL, MOE_DT_I8, 1, 4, 4, false, NULL) == MOE_ENOTSUP,
          "linear accepted I8 weights");
    CHECK(strlen(moe_last_error()) > 0, "no error detail");
    CHECK(!moe_cuda_ctx_poisoned(ctx), "context poisoned by argument errors");
}

int main(void)
{
    struct moe_cuda_params p = { .device = 0, .workspace_bytes = 32u << 20, .gemm_mode = MOE_CUDA_GEMM_LOOP };
    /* LOOP first (all ops), then GROUPED and INVARIANT (the GEMM ops) */
    const char *se = getenv("MOEFLOW_TEST_SEED");
    uint64_t seed = se ? strtoull(se, NULL, 0) : (uint64_t)time(NULL);
    struct g_rng r = { seed };

    if (moe_cuda_device_count() == 0) {
        printf("test_gpu_ops: no CUDA device, skipping\n");
        return T_SKIP;
    }
    printf("test_gpu_ops: seed %llu (MOEFLOW_TEST_SEED to replay)\n", (unsigned long long)seed);
    ctx = moe_cuda_ctx_create(&p);
    REQUIRE(ctx, "context: %s", moe_last_error());
    for (int adv = 0; adv < 2; adv++) {
        test_convert(&r, adv);
        test_embed(&r, adv);
        test_rmsnorm(&r, adv);
        test_rope(&r, adv);
        test_attention(&r, adv);
        if (!adv) test_attention_bf16(&r);
        if (!adv) test_attention_long(&r);
        if (!adv) test_attention_bound(&r);
        if (!adv) test_attention_inf_chunk(&r);
        if (!adv) test_kv_store_bounds(&r);
        test_router(&r, adv);
        test_deepseek_ops(&r, adv);
        if (!adv) test_fp8_decode(&r);
        test_permute_combine(&r, adv);
        test_swiglu_gate(&r, adv);
        test_linear(&r, adv);
        test_expert_ffn(&r, adv, MOE_CUDA_GEMM_LOOP);
        test_argmax(&r, adv);
    }
    test_bad_args();
    test_ffn_chunked(&r, MOE_CUDA_GEMM_LOOP, 160u << 10);
    moe_cuda_ctx_destroy(ctx);

    p.gemm_mode = MOE_CUDA_GEMM_GROUPED;
    ctx = moe_cuda_ctx_create(&p);
    REQUIRE(ctx, "context: %s", moe_last_error());
    test_expert_ffn(&r, false, MOE_CUDA_GEMM_GROUPED);
    test_expert_ffn(&r, true, MOE_CUDA_GEMM_GROUPED);
    printf("test_gpu_ops: grouped mode in use: %s\n",
           moe_cuda_ctx_gemm_mode(ctx) == MOE_CUDA_GEMM_GROUPED ? "cublasGemmGroupedBatchedEx"
                                                                : "fallback to per-expert GEMMs");
    CHECK(moe_cuda_ctx_sync(ctx) == MOE_OK, "sync: %s", moe_last_error());
    CHECK(!moe_cuda_ctx_poisoned(ctx), "context poisoned");
    moe_cuda_ctx_destroy(ctx);

    p.gemm_mode = MOE_CUDA_GEMM_INVARIANT;
    ctx = moe_cuda_ctx_create(&p);
    REQUIRE(ctx, "context: %s", moe_last_error());
    for (int adv = 0; adv < 2; adv++) {
        test_linear(&r, adv);
        test_expert_ffn(&r, adv, MOE_CUDA_GEMM_INVARIANT);
    }
    test_batch_invariance(&r);
    test_invariant_rows(&r);
    test_ffn_chunked(&r, MOE_CUDA_GEMM_INVARIANT, 64u << 10);
    CHECK(moe_cuda_ctx_sync(ctx) == MOE_OK, "sync: %s", moe_last_error());
    CHECK(!moe_cuda_ctx_poisoned(ctx), "context poisoned");
    moe_cuda_ctx_destroy(ctx);
    return t_result("test_gpu_ops");
}
