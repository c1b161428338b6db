/* Parity with Hugging Face transformers on a tiny checkpoint of one family
 * (argv[1]: mixtral, qwen2_moe, qwen3_moe, olmoe or deepseek_v3 under tests/fixtures/hf-tiny):
 * for prompts p0 and p1, logits at every position and every hidden state
 * within 1e-3 (max abs), each MoE layer's experts equal as sets with weights
 * within 1e-4, router logits within 1e-3; the prompt fed one token at a
 * time gives bit-identical logits to the one-batch prefill; greedy decoding
 * with the KV cache reproduces pN.greedy_ids.
 *
 * transformers' generate() masks prompt tokens equal to pad_token_id when the
 * pad differs from eos (OLMoE: pad 1, and p0 starts with id 1); a masked
 * token is neither attended to nor counted in positions, which is the same
 * as leaving it out, so the greedy check leaves such tokens out too. */
#include "engine_testutil.h"


static void check_prompt(struct moe_engine *e, struct moe_st_file *ref, const struct moe_config *cfg,
                         const char *fam, const char *p, int pad)
{
    char name[256];
    int64_t T, c1, G;
    snprintf(name, sizeof(name), "%s.input_ids", p);
    float *idf = ref_f32(ref, name, &c1, &T);
    REQUIRE(idf, "%s: no %s in reference", fam, name);
    int *ids = malloc(sizeof(int) * (size_t)T);
    for (int i = 0; i < T; i++) ids[i] = (int)idf[i];
    int V = cfg->vocab, H = cfg->hidden;

    struct capture cap;
    capture_init(&cap, cfg);
    struct moe_engine_hooks hk = capture_hooks(&cap);
    moe_engine_set_hooks(e, &hk);
    int seq = moe_engine_seq_alloc(e);
    REQUIRE(seq >= 0, "seq_alloc");
    float *lg = malloc(sizeof(float) * (size_t)T * V);
    REQUIRE(run_prompt(e, seq, ids, (int)T, lg) == MOE_OK, "%s %s forward: %s", fam, p, moe_last_error());
    moe_engine_set_hooks(e, NULL);

    snprintf(name, sizeof(name), "%s.logits", p);
    float *rl = ref_f32(ref, name, NULL, NULL);
    REQUIRE(rl, "no %s", name);
    double d = max_abs_diff(lg, rl, (size_t)T * V);
    printf("%s %s: logits max abs diff %.3g\n", fam, p, d);
    CHECK(d < 1e-3, "%s %s logits differ by %g", fam, p, d);
    free(rl);

    for (int j = 0; j <= cfg->n_layers; j++) {
        snprintf(name, sizeof(name), "%s.hidden.%d", p, j);
        float *rh = ref_f32(ref, name, NULL, NULL);
        REQUIRE(rh && cap.hidden[j], "hidden %d (ref %p, captured %p)", j, (void *)rh, (void *)cap.hidden[j]);
        double dh = max_abs_diff(cap.hidden[j], rh, (size_t)T * H);
        CHECK(dh < 1e-3, "%s %s hidden.%d differs by %g", fam, p, j, dh);
        free(rh);
    }
    /* hidden_final_only: only the state after the final norm is reported, the same one */
    {
        struct capture fin;
        capture_init(&fin, cfg);
        struct moe_engine_hooks hf = capture_hooks(&fin);
        hf.hidden_final_only = true;
        moe_engine_set_hooks(e, &hf);
        int s2 = moe_engine_seq_alloc(e);
        REQUIRE(s2 >= 0 && run_prompt(e, s2, ids, (int)T, lg) == MOE_OK, "%s %s final-only forward: %s", fam, p,
                moe_last_error());
        moe_engine_set_hooks(e, NULL);
        moe_engine_seq_free(e, s2);
        bool others = false;
        for (int j = 0; j < cfg->n_layers; j++) others |= fin.hidden[j] != NULL;
        CHECK(!others && fin.hidden[cfg->n_layers] &&
                  !memcmp(fin.hidden[cfg->n_layers], cap.hidden[cfg->n_layers], sizeof(float) * (size_t)T * H),
              "%s %s: hidden_final_only reported other layers or a different final state", fam, p);
        capture_free(&fin);
    }

    int n_moe = 0;
    for (int l = 0; l < cfg->n_layers; l++) {
        if (!cfg->is_moe[l]) continue;
        n_moe++;
        int K = cfg->top_k, E = cfg->n_experts;
        snprintf(name, sizeof(name), "%s.router.model.layers.%d.mlp.gate.out0", p, l);
        float *o0 = ref_f32(ref, name, NULL, NULL);
        snprintf(name, sizeof(name), "%s.router.model.layers.%d.mlp.gate.out1", p, l);
        float *o1 = ref_f32(ref, name, NULL, NULL);
        snprintf(name, sizeof(name), "%s.router.model.layers.%d.mlp.gate.out2", p, l);
        float *o2 = ref_f32(ref, name, NULL, NULL);
        REQUIRE(o0 && o1 && o2 && cap.ids[l], "router reference/capture of layer %d", l);
        double dl = max_abs_diff(cap.rlogits[l], o0, (size_t)T * E);
        CHECK(dl < 1e-3, "%s %s layer %d router logits differ by %g", fam, p, l, dl);
        int set_bad = 0;
        double wmax = 0;
        for (int t = 0; t < T; t++)
            for (int r = 0; r < K; r++) {
                int want = (int)o2[t * K + r], found = -1;
                for (int q = 0; q < K; q++)
                    if (cap.ids[l][t * K + q] == want) found = q;
                if (found < 0) {
                    set_bad++;
                    continue;
                }
                double dw = fabs(cap.w[l][t * K + found] - o1[t * K + r]);
                if (dw > wmax) wmax = dw;
            }
        CHECK(set_bad == 0, "%s %s layer %d: %d chosen experts differ from HF", fam, p, l, set_bad);
        CHECK(wmax < 1e-4, "%s %s layer %d: routing weights differ by %g", fam, p, l, wmax);
        for (int t = 0; t < T; t++)
            for (int r = 1; r < K; r++)
                CHECK(cap.w[l][t * K + r - 1] >= cap.w[l][t * K + r], "weights not descending");
        free(o0), free(o1), free(o2);
    }
    CHECK(cap.route_calls == n_moe && cap.moe_input_calls == n_moe && cap.order_ok,
          "hooks: %d route / %d moe_input calls for %d MoE layers, order ok %d", cap.route_calls,
          cap.moe_input_calls, n_moe, cap.order_ok);
    capture_free(&cap);

    /* greedy continuation with the KV cache, one token per step */
    snprintf(name, sizeof(name), "%s.greedy_ids", p);
    float *gf = ref_f32(ref, name, &c1, &G);
    REQUIRE(gf, "no %s", name);
    float *step = malloc(sizeof(float) * V);
    int tok = moe_argmax(lg + (size_t)(T - 1) * V, V);
    int *kept = malloc(sizeof(int) * (size_t)T), nk = 0;
    for (int i = 0; i < T; i++)
        if (ids[i] != pad) kept[nk++] = ids[i];
    if (nk < T) { /* generate() masked pad tokens: prefill without them */
        moe_engine_seq_free(e, seq);
        seq = moe_engine_seq_alloc(e);
        float *lk = malloc(sizeof(float) * (size_t)nk * V);
        REQUIRE(run_prompt(e, seq, kept, nk, lk) == MOE_OK, "prefill: %s", moe_last_error());
        tok = moe_argmax(lk + (size_t)(nk - 1) * V, V);
        free(lk);
    }
    free(kept);
    int mism = -1;
    for (int g = 0; g < G; g++) {
        if (tok != (int)gf[g] && mism < 0) mism = g;
        if (g + 1 == G) break;
        REQUIRE(run_prompt(e, seq, &tok, 1, step) == MOE_OK, "decode: %s", moe_last_error());
        tok = moe_argmax(step, V);
    }
    CHECK(mism < 0, "%s %s greedy token %d differs from HF", fam, p, mism);
    CHECK(moe_engine_seq_len(e, seq) == nk + G - 1, "seq_len %d", moe_engine_seq_len(e, seq));
    moe_engine_seq_free(e, seq);

    /* the prompt one token at a time: same bits as the batch prefill */
    int diff_rows = t_token_by_token_diffs(e, ids, (int)T, lg);
    CHECK(diff_rows == 0, "%s %s: %d positions differ between prefill and token-by-token", fam, p,
          diff_rows);
    free(step), free(gf), free(lg), free(ids), free(idf);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FAMILY\n", argv[0]);
        return T_FAIL;
    }
    char dir[4096], rel[256];
    snprintf(rel, sizeof(rel), "tests/fixtures/hf-tiny/%s", argv[1]);
    struct moe_st_file *ref;
    struct moe_model *m = t_open_with_reference(rel, dir, sizeof(dir), &ref);
    struct moe_engine_params ep = { .max_seqs = 2, .max_ctx = 64, .max_batch_tokens = 32 };
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e, "engine: %s", moe_last_error());
    int pad = t_generate_pad_id(dir, &m->cfg);
    check_prompt(e, ref, &m->cfg, argv[1], "p0", pad);
    check_prompt(e, ref, &m->cfg, argv[1], "p1", pad);
    moe_engine_destroy(e);
    moe_st_close(ref);
    moe_model_close(m);
    char nm[64];
    snprintf(nm, sizeof(nm), "test_engine_parity %s", argv[1]);
    return t_result(nm);
}
