/* A checkpoint stored in F32 keeps its F32 weights on the CPU backend (whose
 * preferred weight dtype is BF16): the mixtral fixture is copied to F32 with
 * the entries of some matrices nudged by a relative 2^-10 (less than half a
 * BF16 step, so rounding them to BF16 would give back the BF16 fixture
 * exactly).  Nudging the dense matrices (attention, router, embedding,
 * lm_head), or the routed experts, must change the logits; two runs of a
 * copy agree bit for bit.  moe_engine_weight_dtype says which dtype the
 * engine holds (the bytes cpu_bench counts per weight read): BF16 for the
 * BF16 fixture, F32 for the copy and for the fixture with OpenBLAS GEMMs. */
#include "engine_testutil.h"
#include "model/safetensors.h"

#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

static float *logits_of(const char *dir, const int *ids, int n, int *V, enum moe_dtype want_wdt)
{
    struct moe_model *m = moe_model_open(dir);
    REQUIRE(m, "open %s: %s", dir, moe_last_error());
    struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = 64, .max_batch_tokens = 16 };
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e, "engine: %s", moe_last_error());
    CHECK(moe_engine_weight_dtype(e) == want_wdt, "%s: engine weight dtype %s, expected %s", dir,
          moe_dtype_name(moe_engine_weight_dtype(e)), moe_dtype_name(want_wdt));
    *V = m->cfg.vocab;
    float *lg = malloc(sizeof(float) * (size_t)n * (size_t)*V);
    REQUIRE(lg, "oom");
    REQUIRE(run_prompt(e, moe_engine_seq_alloc(e), ids, n, lg) == MOE_OK, "forward: %s", moe_last_error());
    moe_engine_destroy(e);
    moe_model_close(m);
    return lg;
}

/* dst/model.safetensors: src's tensors in F32, the 2-D ones whose name does
 * (experts) or does not (dense) contain ".experts." multiplied by 1 + 2^-10. */
static void write_f32_copy(const char *src, const char *dst, bool experts)
{
    char p[4400], q[4400];
    snprintf(p, sizeof p, "%s/model.safetensors", src);
    struct moe_st_file *f = moe_st_open(p);
    REQUIRE(f, "open %s: %s", p, moe_last_error());
    size_t n = moe_st_count(f);
    struct moe_st_out *o = calloc(n, sizeof(*o));
    float **bufs = calloc(n, sizeof(*bufs));
    REQUIRE(o && bufs, "oom");
    for (size_t i = 0; i < n; i++) {
        const struct moe_st_tensor *t = moe_st_at(f, i);
        struct moe_wview v = { .dtype = t->dtype, .rows = 1, .cols = (int64_t)t->numel, .data = t->data,
                               .nbytes = t->nbytes };
        bufs[i] = malloc(sizeof(float) * (t->numel ? t->numel : 1));
        REQUIRE(bufs[i], "oom");
        moe_wview_to_f32(&v, bufs[i]);
        if (t->ndim == 2 && (strstr(t->name, ".experts.") != NULL) == experts)
            for (uint64_t j = 0; j < t->numel; j++) bufs[i][j] *= 1.0f + 0x1p-10f;
        o[i] = (struct moe_st_out){ .name = t->name, .dtype = MOE_DT_F32, .ndim = t->ndim, .data = bufs[i] };
        memcpy(o[i].shape, t->shape, sizeof t->shape);
    }
    snprintf(q, sizeof q, "%s/model.safetensors", dst);
    REQUIRE(moe_st_write(q, o, n, (const char *const[]){ "format", "pt", NULL }) == MOE_OK, "write: %s",
            moe_last_error());
    for (size_t i = 0; i < n; i++) free(bufs[i]);
    free(bufs), free(o);
    moe_st_close(f);
    snprintf(p, sizeof p, "%s/config.json", src);
    snprintf(q, sizeof q, "%s/config.json", dst);
    t_copy_file(p, q);
}

int main(void)
{
    char src[4096];
    t_path(src, sizeof src, "tests/fixtures/hf-tiny/mixtral");
    char dir[64] = "/tmp/moeflow-f32-XXXXXX";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    int ids[6] = { 1, 5, 9, 2, 7, 3 }, V, V2;
    float *a = logits_of(src, ids, 6, &V, MOE_DT_BF16);
    for (int experts = 0; experts < 2; experts++) {
        write_f32_copy(src, dir, experts);
        float *b = logits_of(dir, ids, 6, &V2, MOE_DT_F32), *c = logits_of(dir, ids, 6, &V2, MOE_DT_F32);
        REQUIRE(V == V2, "vocab");
        CHECK(memcmp(a, b, sizeof(float) * 6 * (size_t)V) != 0,
              "nudged F32 %s gave the BF16 fixture's logits: they were rounded to BF16",
              experts ? "experts" : "dense matrices");
        CHECK(!memcmp(b, c, sizeof(float) * 6 * (size_t)V), "two runs of the F32 checkpoint differ");
        double d = max_abs_diff(a, b, 6 * (size_t)V);
        CHECK(d < 0.05, "nudging the weights by 2^-10 moved a logit by %g", d);
        free(b), free(c);
    }
    free(a);
    /* OpenBLAS GEMMs take F32 matrices: the BF16 fixture is widened */
    struct moe_model *m = moe_model_open(src);
    REQUIRE(m, "open %s: %s", src, moe_last_error());
    struct moe_engine *e = moe_engine_create(m, &(struct moe_engine_params){ .max_seqs = 1, .max_ctx = 64,
                                                                              .max_batch_tokens = 16, .cpu_blas = true });
    REQUIRE(e, "engine with cpu_blas: %s", moe_last_error());
    CHECK(moe_engine_weight_dtype(e) == MOE_DT_F32, "cpu_blas: engine weight dtype %s, expected F32",
          moe_dtype_name(moe_engine_weight_dtype(e)));
    moe_engine_destroy(e);
    moe_model_close(m);
    t_remove_copy(dir);
    return t_result("test_engine_f32_weights");
}
