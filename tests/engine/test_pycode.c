/* The bundled trained model (models/pycode-moe-18m) against transformers:
 * logits of the 32-token prompt within 2e-3 of p0.logits, and the greedy
 * continuation with the KV cache equal to p0.greedy_ids. */
#include "engine_testutil.h"

int main(void)
{
    char dir[4096], rp[4200];
    t_path(dir, sizeof(dir), "models/pycode-moe-18m");
    struct moe_model *m = moe_model_open(dir);
    REQUIRE(m, "open %s: %s", dir, moe_last_error());
    snprintf(rp, sizeof(rp), "%s/reference.safetensors", dir);
    struct moe_st_file *ref = moe_st_open(rp);
    REQUIRE(ref, "open %s: %s", rp, moe_last_error());
    struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = 128, .max_batch_tokens = 64 };
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e, "engine: %s", moe_last_error());
    int64_t T, G, one;
    float *idf = ref_f32(ref, "p0.input_ids", &one, &T), *rl = ref_f32(ref, "p0.logits", NULL, NULL);
    float *gf = ref_f32(ref, "p0.greedy_ids", &one, &G);
    REQUIRE(idf && rl && gf, "reference tensors missing");
    int V = m->cfg.vocab, ids[64];
    for (int i = 0; i < T; i++) ids[i] = (int)idf[i];
    float *lg = malloc(sizeof(float) * (size_t)T * V);
    int seq = moe_engine_seq_alloc(e);
    REQUIRE(run_prompt(e, seq, ids, (int)T, lg) == MOE_OK, "forward: %s", moe_last_error());
    double d = max_abs_diff(lg, rl, (size_t)T * V);
    printf("pycode-moe-18m p0: logits max abs diff %.3g\n", d);
    CHECK(d < 2e-3, "logits differ by %g", d);
    int tok = moe_argmax(lg + (size_t)(T - 1) * V, V), mism = -1;
    for (int g = 0; g < G; g++) {
        if (tok != (int)gf[g] && mism < 0) mism = g;
        if (g + 1 == G) break;
        REQUIRE(run_prompt(e, seq, &tok, 1, lg) == MOE_OK, "decode: %s", moe_last_error());
        tok = moe_argmax(lg, V);
    }
    CHECK(mism < 0, "greedy token %d differs from transformers", mism);
    free(lg), free(idf), free(rl), free(gf);
    moe_engine_destroy(e);
    moe_st_close(ref);
    moe_model_close(m);
    return t_result("test_engine_pycode");
}
