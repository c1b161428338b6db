/* The model configurations of tests/engine/model_variants.h (DeepSeek-V2/V3's
 * latent attention in its variants, GLM-4.5's partial RoPE, biases and q/k
 * norm) on the CUDA backend with every expert in the GPU tier, with the KV
 * cache in F32 and in BF16: the prompt's logits within 5e-2 of the NumPy
 * reference (as test_gpu_e2e holds the hf-tiny models to transformers'), and
 * the prompt fed one token at a time bit-identical to the batch prefill.
 * Skips (77) without a CUDA device. */

#include "../../kernels/cuda/cuda_backend.h"
#include "../../offload/cuda_tier.h"
#include "../engine/engine_testutil.h"
#include "../engine/model_variants.h"

#define LOGIT_TOL 5e-2

static void check_variant(struct moe_backend *be, const char *name)
{
    struct variant v = variant_open(name);
    struct moe_model *m = v.m;
    int64_t T = v.T, V = m->cfg.vocab;
    const int *ids = v.ids;
    const float *want = v.want;
    struct moe_provider_cuda_params pp = { .slots = m->cfg.n_experts * moe_config_n_moe(&m->cfg),
                                           .policy = MOE_POLICY_LRU };
    struct moe_provider *prov = moe_provider_cuda_create(m, be, &pp);
    REQUIRE(prov, "%s: GPU provider: %s", name, moe_last_error());
    for (int bf = 0; bf < 2; bf++) { /* the KV cache in F32, then in BF16 */
        struct moe_engine_params ep = { .max_seqs = 2, .max_ctx = 32, .max_batch_tokens = 16, .provider = prov,
                                        .backend = be, .kv_dtype = bf ? MOE_DT_BF16 : MOE_DT_F32 };
        struct moe_engine *e = moe_engine_create(m, &ep);
        REQUIRE(e, "%s: engine on the CUDA backend: %s", name, moe_last_error());
        float *lg = malloc(sizeof(float) * (size_t)(T * V));
        int seq = moe_engine_seq_alloc(e);
        REQUIRE(run_prompt(e, seq, ids, (int)T, lg) == MOE_OK, "%s forward: %s", name, moe_last_error());
        double d = max_abs_diff(lg, want, (size_t)(T * V));
        printf("%-40s GPU logits (%s KV cache) max abs diff %.3g\n", name, bf ? "BF16" : "F32", d);
        CHECK(d < LOGIT_TOL, "%s: GPU logits (%s cache) differ from the reference by %g", name, bf ? "BF16" : "F32", d);
        moe_engine_seq_free(e, seq);
        int diff_rows = t_token_by_token_diffs(e, ids, (int)T, lg);
        CHECK(diff_rows == 0, "%s: %d positions differ between prefill and token-by-token on the GPU (%s cache)",
              name, diff_rows, bf ? "BF16" : "F32");
        moe_engine_destroy(e);
        free(lg);
    }
    moe_provider_destroy(prov);
    variant_close(&v);
}

int main(void)
{
    if (moe_cuda_device_count() == 0) {
        printf("test_gpu_variants: no CUDA device, skipping\n");
        return T_SKIP;
    }
    struct moe_backend_cuda_params bp = { .device = 0, .workspace_bytes = (size_t)64 << 20 };
    struct moe_backend *be = moe_backend_cuda_create(&bp);
    REQUIRE(be, "CUDA backend: %s", moe_last_error());
    for (size_t i = 0; i < MOE_ARRAY_LEN(model_variants); i++) check_variant(be, model_variants[i]);
    moe_backend_destroy(be);
    return t_result("test_gpu_variants");
}
