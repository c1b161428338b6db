/* A BF16 KV cache (moe_engine_params.kv_dtype): for a grouped-query model
 * (hf-tiny qwen3_moe) and a latent-attention one (hf-tiny deepseek_v3), the
 * prompt's logits stay within 2e-2 of transformers' (F32) and differ from the
 * F32 cache's (the rounding is real); the prompt fed one token at a time gives
 * the prefill's bits; a sequence forked from another (moe_engine_seq_fork,
 * which copies cache rows) continues with the bits of the original; and any
 * other cache dtype is refused. */
#include "engine_testutil.h"

#include <stdlib.h>

#define TOL 2e-2

static void check_model(const char *rel)
{
    char dir[4096];
    struct moe_st_file *ref;
    struct moe_model *m = t_open_with_reference(rel, dir, sizeof(dir), &ref);
    int64_t one = 0, T = 0, V = m->cfg.vocab;
    float *idf = ref_f32(ref, "p0.input_ids", &one, &T), *want = ref_f32(ref, "p0.logits", NULL, NULL);
    REQUIRE(idf && want, "%s: reference p0", rel);
    int *ids = malloc(sizeof(int) * (size_t)T);
    for (int i = 0; i < T; i++) ids[i] = (int)idf[i];
    float *lg = malloc(sizeof(float) * (size_t)(T * V)), *f32 = malloc(sizeof(float) * (size_t)(T * V));
    float *fork_lg = malloc(sizeof(float) * (size_t)V);

    struct moe_engine_params ep = { .max_seqs = 3, .max_ctx = 64, .max_batch_tokens = 32 };
    struct moe_engine *e32 = moe_engine_create(m, &ep);
    ep.kv_dtype = MOE_DT_BF16;
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e32 && e, "%s engines: %s", rel, moe_last_error());
    int s32 = moe_engine_seq_alloc(e32), seq = moe_engine_seq_alloc(e);
    REQUIRE(run_prompt(e32, s32, ids, (int)T, f32) == MOE_OK && run_prompt(e, seq, ids, (int)T, lg) == MOE_OK,
            "%s forward: %s", rel, moe_last_error());
    double d = max_abs_diff(lg, want, (size_t)(T * V)), d32 = max_abs_diff(lg, f32, (size_t)(T * V));
    printf("%s: BF16 KV cache, logits max abs diff %.3g to transformers, %.3g to the F32 cache\n", rel, d, d32);
    CHECK(d < TOL, "%s: BF16-cache logits differ from the reference by %g", rel, d);
    CHECK(d32 > 0, "%s: the BF16 cache gave the F32 cache's logits: nothing was rounded", rel);

    /* a fork of the first T-1 tokens, then the last token in both: the same bits */
    int fk = moe_engine_seq_alloc(e);
    REQUIRE(moe_engine_seq_fork(e, fk, seq, (int)T - 1) == MOE_OK, "%s fork: %s", rel, moe_last_error());
    REQUIRE(run_prompt(e, fk, ids + T - 1, 1, fork_lg) == MOE_OK, "%s forked step: %s", rel, moe_last_error());
    CHECK(!memcmp(fork_lg, lg + (size_t)(T - 1) * V, sizeof(float) * (size_t)V),
          "%s: the forked sequence's last logits differ from the original's", rel);
    moe_engine_seq_free(e, fk);
    moe_engine_seq_free(e, seq);

    int diff_rows = t_token_by_token_diffs(e, ids, (int)T, lg);
    CHECK(diff_rows == 0, "%s: %d positions differ between prefill and token-by-token (BF16 cache)", rel,
          diff_rows);
    moe_engine_destroy(e32);
    moe_engine_destroy(e);
    ep.kv_dtype = MOE_DT_F16;
    e = moe_engine_create(m, &ep);
    CHECK(!e && strstr(moe_last_error(), "KV cache dtype F16"), "%s: an F16 cache: %s", rel,
          e ? "accepted" : moe_last_error());
    moe_engine_destroy(e);
    free(fork_lg), free(lg), free(f32), free(ids), free(want), free(idf);
    moe_st_close(ref);
    moe_model_close(m);
}

int main(void)
{
    check_model("tests/fixtures/hf-tiny/qwen3_moe");
    check_model("tests/fixtures/hf-tiny/deepseek_v3");
    return t_result("test_engine_kv_dtype");
}
