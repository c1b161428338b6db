/* The INVARIANT expert FFN's grouped launches (gate and up of every expert in
 * one launch, one SwiGLU over all rows, down in one launch) against
 * per-expert launches of the same kernel arithmetic (moe_cuda_linear in
 * INVARIANT mode and moe_cuda_swiglu, expert by expert): bit for bit, on
 * random inputs with uneven rows per expert (0, 1, one tile, more than one
 * tile), BF16 and F32 weights, sizes off the tile edges, more experts than
 * one launch takes, a workspace that splits the groups and chunks an
 * expert's rows, and a row alone; and against the C twin within the GEMM
 * tolerance, with guard bytes after every output.
 * Skips (77) without a CUDA device.  MOEFLOW_TEST_SEED=<n> replays a seed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../test_util.h"
#include "gpu_ref.h"

#define TOL_GEMM 2e-3 /* BF16 weights, F32 accumulation (order differs from the twin) */

static struct moe_cuda_ctx *ctx;

#define UP(buf, host, bytes) REQUIRE(g_buf_upload(ctx, &(buf), (host), (bytes)) == 0, "upload: %s", moe_last_error())
#define OUT(buf, bytes) REQUIRE(g_buf_alloc(ctx, &(buf), (bytes)) == 0, "alloc: %s", moe_last_error())
#define OK(call) do { enum moe_status st_ = (call); REQUIRE(st_ == MOE_OK, "%s: %s", #call, moe_last_error()); } while (0)

static void dl(const struct g_buf *b, void *h, const char *what)
{
    CHECK(g_buf_download(ctx, b, h, what) == 0, "%s: guard bytes or download", what);
}

/* memcmp with the first differing row and column in the message. */
static void same_bits(const char *name, const char *what, const float *a, const float *b, int rows, int dim)
{
    if (!memcmp(a, b, (size_t)rows * dim * 4)) return;
    size_t i = 0;
    while (!memcmp(&a[i], &b[i], 4)) i++;
    CHECK(0, "%s: %s differs first at row %zu col %zu (%.9g vs %.9g)", name, what, i / (size_t)dim,
          i % (size_t)dim, a[i], b[i]);
}

/* One layer's expert FFN: counts[e] rows for expert e (E experts). */
static void run_case(struct g_rng *r, const char *name, int E, const int *counts, int hidden, int inter,
                     enum moe_dtype wdt, bool adv)
{
    size_t es = wdt == MOE_DT_BF16 ? 2 : 4, we = (size_t)inter * hidden;
    int *off = malloc(sizeof(int) * (size_t)(E + 1)), max_m = 0;
    struct moe_cuda_expert *ex = malloc(sizeof(*ex) * (size_t)E);
    off[0] = 0;
    for (int e = 0; e < E; e++) {
        off[e + 1] = off[e] + counts[e];
        if (counts[e] > max_m) max_m = counts[e];
    }
    int rows = off[E];
    REQUIRE(rows > 0, "%s: no rows", name);
    size_t ybytes = (size_t)rows * hidden * 4;
    void *w = malloc(we * 3 * (size_t)E * es);
    float *x = malloc(ybytes), *got = malloc(ybytes), *per = malloc(ybytes), *ref = malloc(ybytes),
          *part = malloc(ybytes);
    struct g_buf dw, dx, dy, dper, dg, du, dpart;

    if (wdt == MOE_DT_BF16) g_fill_bf16(r, w, we * 3 * (size_t)E, 0.06f);
    else g_fill(r, w, we * 3 * (size_t)E, 0.06f, false);
    g_fill(r, x, (size_t)rows * hidden, 1.0f, adv);
    UP(dw, w, we * 3 * (size_t)E * es); UP(dx, x, ybytes);
    OUT(dy, ybytes); OUT(dper, ybytes); OUT(dpart, ybytes);
    OUT(dg, (size_t)max_m * inter * 4); OUT(du, (size_t)max_m * inter * 4);
    for (int e = 0; e < E; e++) {
        ex[e].gate = (const char *)dw.d + (size_t)e * 3 * we * es;
        ex[e].up = (const char *)ex[e].gate + we * es;
        ex[e].down = (const char *)ex[e].up + we * es;
    }

    /* grouped: the whole layer in one call */
    OK(moe_cuda_expert_ffn(ctx, dx.d, E, off, ex, wdt, hidden, inter, dy.d));
    dl(&dy, got, "grouped expert_ffn");

    /* per expert: the plain invariant kernel, four launches per expert */
    for (int e = 0; e < E; e++) {
        int m = counts[e];
        const float *xe = (const float *)dx.d + (size_t)off[e] * hidden;
        if (!m) continue;
        OK(moe_cuda_linear(ctx, xe, ex[e].gate, wdt, m, hidden, inter, false, dg.d));
        OK(moe_cuda_linear(ctx, xe, ex[e].up, wdt, m, hidden, inter, false, du.d));
        OK(moe_cuda_swiglu(ctx, dg.d, du.d, dg.d, (size_t)m * inter));
        OK(moe_cuda_linear(ctx, dg.d, ex[e].down, wdt, m, inter, hidden, false,
                           (float *)dper.d + (size_t)off[e] * hidden));
    }
    dl(&dper, per, "per-expert launches");
    same_bits(name, "grouped vs per-expert launches", got, per, rows, hidden);

    /* a workspace of 5 rows: groups split over calls, larger experts in row chunks */
    {
        size_t row_ws = (((size_t)5 * inter * 4 + 255) & ~(size_t)255) * 2;
        struct moe_cuda_params sp = { .device = 0, .workspace_bytes = row_ws,
                                      .gemm_mode = MOE_CUDA_GEMM_INVARIANT };
        struct moe_cuda_ctx *small = moe_cuda_ctx_create(&sp);
        REQUIRE(small, "small context: %s", moe_last_error());
        OK(moe_cuda_memset(ctx, dpart.d, 0xff, ybytes)); /* NaN: an unwritten row shows */
        OK(moe_cuda_ctx_sync(ctx));
        OK(moe_cuda_expert_ffn(small, dx.d, E, off, ex, wdt, hidden, inter, dpart.d));
        OK(moe_cuda_ctx_sync(small));
        moe_cuda_ctx_destroy(small);
        dl(&dpart, part, "expert_ffn in 5-row workspace");
        same_bits(name, "5-row workspace vs one call", part, got, rows, hidden);
    }

    /* a row alone, as its own one-row layer */
    for (int e = 0; e < E; e++) {
        int one[2] = { 0, 1 };
        if (!counts[e]) continue;
        int t = off[e] + counts[e] - 1; /* the expert's last row: the end of its last tile */
        OK(moe_cuda_expert_ffn(ctx, (const float *)dx.d + (size_t)t * hidden, 1, one, &ex[e], wdt, hidden, inter,
                               dpart.d));
        OK(moe_cuda_d2h(ctx, part, dpart.d, (size_t)hidden * 4));
        OK(moe_cuda_ctx_sync(ctx));
        same_bits(name, "a row alone vs in the layer", part, got + (size_t)t * hidden, 1, hidden);
        if (e > 8) break; /* a few experts are enough */
    }

    /* the C twin: F32 activations throughout, accumulated in double */
    for (int e = 0; e < E; e++) {
        const char *we0 = (const char *)w + (size_t)e * 3 * we * es;
        if (counts[e])
            ref_expert_rows(x + (size_t)off[e] * hidden, counts[e], we0, we0 + we * es, we0 + 2 * we * es, wdt,
                            hidden, inter, false, ref + (size_t)off[e] * hidden);
    }
    size_t bad = 0;
    double err = g_norm_err(got, ref, (size_t)rows * hidden, 1e-6f, &bad);
    CHECK(err <= TOL_GEMM, "%s: normalised error vs the C twin %.3g > %.3g", name, err, TOL_GEMM);
    CHECK(bad == 0, "%s: %zu NaN/Inf positions disagree with the C twin", name, bad);

    g_buf_free(ctx, &dw); g_buf_free(ctx, &dx); g_buf_free(ctx, &dy); g_buf_free(ctx, &dper);
    g_buf_free(ctx, &dg); g_buf_free(ctx, &du); g_buf_free(ctx, &dpart);
    free(off); free(ex); free(w); free(x); free(got); free(per); free(ref); free(part);
}

/* Random rows per expert in [0, max_rows], with experts 0, 1, 2 and 3 at 0,
 * 1, one tile (16) and just over it (17). */
/* moe_cuda_linear_groups (latent attention's per-head products: 128 heads of 1 or 3 rows) against a
 * moe_cuda_linear per group, bit for bit. */
static void groups_case(struct g_rng *r, int groups, int rows, int in, int out, enum moe_dtype wdt)
{
    size_t nx = (size_t)groups * rows * in, nw = (size_t)groups * out * in, ny = (size_t)groups * rows * out;
    size_t es = wdt == MOE_DT_BF16 ? 2 : 4;
    float *x = malloc(nx * 4), *wf = malloc(nw * 4), *a = malloc(ny * 4), *b = malloc(ny * 4);
    void *w = malloc(nw * es);
    g_fill(r, x, nx, 1.0f, false);
    g_fill(r, wf, nw, 0.1f, false);
    for (size_t i = 0; i < nw; i++) {
        if (wdt == MOE_DT_BF16) ((uint16_t *)w)[i] = moe_f32_to_bf16(wf[i]);
        else ((float *)w)[i] = wf[i];
    }
    struct g_buf dx, dw, dya, dyb;
    UP(dx, x, nx * 4); UP(dw, w, nw * es); OUT(dya, ny * 4); OUT(dyb, ny * 4);
    OK(moe_cuda_linear_groups(ctx, dx.d, dw.d, wdt, groups, rows, in, out, dya.d));
    for (int g = 0; g < groups; g++)
        OK(moe_cuda_linear(ctx, (const float *)dx.d + (size_t)g * rows * in, (const char *)dw.d + (size_t)g * out * in * es,
                           wdt, rows, in, out, false, (float *)dyb.d + (size_t)g * rows * out));
    dl(&dya, a, "linear_groups");
    dl(&dyb, b, "linear per group");
    same_bits("linear_groups", wdt == MOE_DT_BF16 ? "BF16" : "F32", a, b, groups * rows, out);
    g_buf_free(ctx, &dx); g_buf_free(ctx, &dw); g_buf_free(ctx, &dya); g_buf_free(ctx, &dyb);
    free(x); free(wf); free(a); free(b); free(w);
}

static void random_counts(struct g_rng *r, int *counts, int E, int max_rows)
{
    for (int e = 0; e < E; e++) counts[e] = (int)(g_next(r) % (uint64_t)(max_rows + 1));
    int fixed[4] = { 0, 1, 16, 17 };
    for (int e = 0; e < 4 && e < E; e++) counts[(e * 7) % E] = fixed[e];
}

int main(void)
{
    struct moe_cuda_params p = { .device = 0, .workspace_bytes = 64u << 20,
                                 .gemm_mode = MOE_CUDA_GEMM_INVARIANT };
    const char *se = getenv("MOEFLOW_TEST_SEED");
    uint64_t seed = se ? strtoull(se, NULL, 0) : (uint64_t)time(NULL);
    struct g_rng r = { seed ? seed : 1 };

    if (moe_cuda_device_count() == 0) {
        printf("test_gpu_grouped: no CUDA device, skipping\n");
        return T_SKIP;
    }
    printf("test_gpu_grouped: seed %llu (MOEFLOW_TEST_SEED to replay)\n", (unsigned long long)seed);
    ctx = moe_cuda_ctx_create(&p);
    REQUIRE(ctx, "context: %s", moe_last_error());

    static const int uneven[9] = { 0, 1, 17, 0, 16, 33, 2, 0, 5 };
    for (int adv = 0; adv < 2; adv++) {
        run_case(&r, adv ? "bf16 uneven adversarial" : "bf16 uneven", 9, uneven, 200, 150, MOE_DT_BF16, adv);
        run_case(&r, adv ? "f32 uneven adversarial" : "f32 uneven", 9, uneven, 96, 130, MOE_DT_F32, adv);
    }
    static const int decode[8] = { 0, 0, 1, 0, 0, 1, 0, 0 }; /* one token, top-2 */
    run_case(&r, "bf16 one token", 8, decode, 256, 384, MOE_DT_BF16, false);

    int *counts = malloc(sizeof(int) * 600);
    random_counts(&r, counts, 64, 40);
    run_case(&r, "bf16 64 experts random", 64, counts, 256, 384, MOE_DT_BF16, false);
    random_counts(&r, counts, 600, 3); /* more experts than one launch's table (512) */
    run_case(&r, "bf16 600 experts", 600, counts, 64, 32, MOE_DT_BF16, false);
    free(counts);

    groups_case(&r, 128, 1, 128, 512, MOE_DT_BF16); /* DeepSeek-V3's heads: nope 128 -> latent 512 */
    groups_case(&r, 128, 3, 512, 128, MOE_DT_BF16);
    groups_case(&r, 16, 5, 96, 40, MOE_DT_F32);
    CHECK(moe_cuda_ctx_gemm_mode(ctx) == MOE_CUDA_GEMM_INVARIANT, "mode changed");
    CHECK(moe_cuda_ctx_sync(ctx) == MOE_OK, "sync: %s", moe_last_error());
    CHECK(!moe_cuda_ctx_poisoned(ctx), "context poisoned");
    moe_cuda_ctx_destroy(ctx);
    return t_result("test_gpu_grouped");
}
