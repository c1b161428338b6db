/* Model configurations the hf-tiny fixture does not cover, against independent
 * NumPy forward passes of transformers' modelling code (generate.py in each
 * fixture directory).
 *
 * DeepSeek-V3 (tests/fixtures/deepseek-v3-variants): no q bottleneck
 * (q_proj), rotate-half RoPE without interleave, one expert group, all groups
 * kept, weights not renormalised, no shared expert, every layer MoE or dense,
 * odd head sizes and v narrower than k, YaRN RoPE with and without DeepSeek's
 * mscale, FP8 weights with block factors (blocks that do not divide every matrix; an FP8
 * checkpoint whose config lacks or misstates its quantization is refused by name); and
 * DeepSeek-V2's routing (softmax scores, top-k or groups kept by their largest score, weights
 * not renormalised) with DeepSeek-V2-Lite's shape (no q bottleneck, YaRN with mscale =
 * mscale_all_dim) and V2's (group-limited, weights x 16); values wider than the keys.
 *
 * GLM-4.5 (tests/fixtures/glm4-moe): grouped-query attention with q/k/v biases
 * or per-head q/k norm, RoPE over half or a quarter of each head (YaRN on the
 * quarter), DeepSeek-V3's routing with one or four groups, a multi-token-
 * prediction layer's tensors in the checkpoint (skipped).
 *
 * For each, the prompt's logits at every position within 1e-4 (max abs) of the
 * reference, prefilled in one batch, in two chunks through the KV cache, and
 * one token at a time, the last two with the one-batch prefill's bits; and with the experts served through the tiers (a device
 * tier of top_k slots over two host records over the checkpoint), the same bits
 * as all-resident. */
#include "engine_testutil.h"
#include "model_variants.h"
#include "offload/tiered.h"

#include <stdlib.h>
#include <unistd.h>

#define TOL 1e-4

static void check_variant(const char *name)
{
    struct variant v = variant_open(name);
    struct moe_model *m = v.m;
    int64_t T = v.T, V = m->cfg.vocab;
    const int *ids = v.ids;
    const float *want = v.want;

    struct moe_engine_params ep = { .max_seqs = 2, .max_ctx = 32, .max_batch_tokens = 16 };
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e, "%s engine: %s", name, moe_last_error());
    float *lg = malloc(sizeof(float) * (size_t)(T * V)), *step = malloc(sizeof(float) * (size_t)(T * V));

    int seq = moe_engine_seq_alloc(e);
    REQUIRE(seq >= 0 && run_prompt(e, seq, ids, (int)T, lg) == MOE_OK, "%s forward: %s", name, moe_last_error());
    double d = max_abs_diff(lg, want, (size_t)(T * V));
    printf("%-40s logits max abs diff %.3g\n", name, d);
    CHECK(d < TOL, "%s: logits differ from the reference by %g", name, d);
    moe_engine_seq_free(e, seq);

    int half = (int)T / 2 - 1;
    seq = moe_engine_seq_alloc(e);
    REQUIRE(run_prompt(e, seq, ids, half, step) == MOE_OK &&
                run_prompt(e, seq, ids + half, (int)T - half, step + (size_t)half * V) == MOE_OK,
            "%s chunked forward: %s", name, moe_last_error());
    d = max_abs_diff(step, want, (size_t)(T * V));
    CHECK(d < TOL, "%s: logits of the prompt in two chunks differ from the reference by %g", name, d);
    CHECK(!memcmp(step, lg, sizeof(float) * (size_t)(T * V)), "%s: logits of the prompt in two chunks differ "
          "from the one-batch prefill's bits", name);
    moe_engine_seq_free(e, seq);

    int diff_rows = t_token_by_token_diffs(e, ids, (int)T, lg);
    CHECK(diff_rows == 0, "%s: %d positions differ between prefill and token-by-token", name, diff_rows);
    moe_engine_destroy(e);

    /* the experts through the tiers (a device tier of top_k slots, two host records, the checkpoint under
     * them): the same bits as all-resident */
    struct moe_tiered_params tp = { .dev_slots = m->cfg.top_k, .host_slots = 2, .numa_node = -1 };
    struct moe_provider *prov = moe_config_n_moe(&m->cfg) ? moe_provider_tiered_create(m, &tp) : NULL;
    if (prov) {
        ep.provider = prov;
        e = moe_engine_create(m, &ep);
        REQUIRE(e, "%s engine over the tiers: %s", name, moe_last_error());
        seq = moe_engine_seq_alloc(e);
        REQUIRE(run_prompt(e, seq, ids, (int)T, step) == MOE_OK, "%s tiered forward: %s", name, moe_last_error());
        CHECK(!memcmp(step, lg, sizeof(float) * (size_t)(T * V)), "%s: logits through the tiers differ from "
              "all-resident", name);
        moe_engine_destroy(e);
        moe_provider_destroy(prov);
    } else {
        CHECK(!moe_config_n_moe(&m->cfg), "%s: tiered provider: %s", name, moe_last_error());
    }

    free(step), free(lg);
    variant_close(&v);
}

/* The FP8 checkpoint under a config.json changed by `change` (fields as JSON, null deletes): refused,
 * the message naming `says`. */
static void fp8_refused(const char *change, const char *says)
{
    char src[4096], tmpl[] = "/tmp/moe-fp8-XXXXXX", path[4200], target[4200];
    const char *dir = mkdtemp(tmpl);
    REQUIRE(dir, "mkdtemp");
    char rel[4096];
    REQUIRE(realpath(t_path(rel, sizeof(rel), "tests/fixtures/deepseek-v3-variants/fp8"), src), "realpath");
    snprintf(path, sizeof(path), "%s/config.json", src);
    json_t *cfg = json_load_file(path, 0, NULL), *ch = json_loads(change, 0, NULL), *v;
    REQUIRE(cfg && ch, "fp8 config / change");
    const char *k;
    json_object_foreach(ch, k, v) {
        if (json_is_null(v)) json_object_del(cfg, k);
        else json_object_set(cfg, k, v);
    }
    snprintf(path, sizeof(path), "%s/config.json", dir);
    REQUIRE(json_dump_file(cfg, path, 0) == 0, "write %s", path);
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    snprintf(target, sizeof(target), "%s/model.safetensors", src);
    REQUIRE(symlink(target, path) == 0, "symlink %s", path);
    struct moe_model *m = moe_model_open(dir);
    CHECK(!m && strstr(moe_last_error(), says), "fp8 with %s: %s (want \"%s\")", change,
          m ? "opened" : moe_last_error(), says);
    moe_model_close(m);
    unlink(path);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
    json_decref(cfg);
    json_decref(ch);
}

int main(void)
{
    for (size_t i = 0; i < MOE_ARRAY_LEN(model_variants); i++) check_variant(model_variants[i]);
    fp8_refused("{\"quantization_config\": null}", "no quantization_config");
    fp8_refused("{\"quantization_config\": {\"quant_method\": \"fp8\", \"weight_block_size\": [8, 32]}}",
                "_scale_inv\" must be F32, BF16 or F16 [");
    fp8_refused("{\"quantization_config\": {\"quant_method\": \"fp8\"}}", "weight_block_size");
    fp8_refused("{\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4}}", "\"gptq\" is not supported");
    fp8_refused("{\"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"e5m2\", "
                "\"weight_block_size\": [16, 32]}}", "e4m3");
    return t_result("test_engine_model_variants");
}
