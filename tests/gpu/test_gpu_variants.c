/* The model configurations of tests/engine/model_variants.h (DeepSeek-V2/V3's
 * latent attention in its variants, GLM-4.5's partial RoPE, biases and q/k
 * norm) on the CUDA backend with every expert in the GPU tier, with the KV
 * cache in F32 and in BF16: the prompt's logits within 5e-2 of the NumPy
 * reference (as test_gpu_e2e holds the hf-tiny models to transformers'), and
 * the prompt fed one token at a time bit-identical to the batch prefill;
 * FP8 variants also through the GPU stack with FP8 records decoded on the
 * device (check_fp8_stack); the GPU provider's host copy sized for the MoE
 * layers' experts alone.  Skips (77) without a CUDA device. */

#include "../../kernels/cuda/cuda_backend.h"
#include "../../offload/cuda_tier.h"
#include "../engine/engine_testutil.h"
#include "../engine/model_variants.h"

#define LOGIT_TOL 5e-2

/* An FP8 checkpoint through the GPU stack as --backend cuda builds it: FP8 records from a tiered host
 * side (fp8_records), copied up as they are and decoded on the device into a GPU tier of top_k + 1
 * slots: the prompt's logits bit for bit those of every expert in the GPU tier (want_lg), and each
 * load moved the expert's records, not its BF16 values. */
static void check_fp8_stack(struct moe_backend *be, const struct variant *v, const float *want_lg)
{
    struct moe_model *m = v->m;
    const struct moe_config *c = &m->cfg;
    struct moe_tiered_params tp = { .dev_slots = c->top_k, .host_slots = 2, .numa_node = -1, .fp8_records = true };
    struct moe_provider *lower = moe_provider_tiered_create(m, &tp), *prov = NULL;
    struct moe_engine *e = NULL;
    size_t n = (size_t)(v->T * c->vocab);
    float *lg = malloc(sizeof(float) * n);
    struct moe_cuda_tier_stats cs;
    CHECK(lower, "tiered host side: %s", moe_last_error());
    if (!lower || !lg) goto out;
    struct moe_provider_cuda_params pp = { .slots = c->top_k + 1, .policy = MOE_POLICY_LRU, .fp8_records = true };
    prov = moe_provider_cuda_stack_create(m, be, lower, &pp); /* owns lower, even on failure */
    CHECK(prov, "GPU stack: %s", moe_last_error());
    if (!prov) goto out;
    struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = 32, .max_batch_tokens = 16, .provider = prov,
                                    .backend = be };
    e = moe_engine_create(m, &ep);
    CHECK(e, "engine: %s", moe_last_error());
    if (!e) goto out;
    enum moe_status st = run_prompt(e, moe_engine_seq_alloc(e), v->ids, (int)v->T, lg);
    CHECK(st == MOE_OK, "forward: %s", moe_last_error());
    if (st != MOE_OK || !moe_provider_cuda_stats(prov, &cs)) goto out;
    uint64_t rec = moe_model_expert_bytes(m);
    CHECK(!memcmp(lg, want_lg, sizeof(float) * n), "FP8 records decoded on the GPU: logits differ from the GPU tier's");
    CHECK(cs.loads > 0 && cs.bytes_h2d == cs.loads * rec, "FP8 records: %llu loads moved %llu bytes (record %llu)",
          (unsigned long long)cs.loads, (unsigned long long)cs.bytes_h2d, (unsigned long long)rec);
    printf("%-40s FP8 records decoded on the GPU: %llu loads, %llu bytes up (BF16 would be %llu)\n", "",
           (unsigned long long)cs.loads, (unsigned long long)cs.bytes_h2d,
           (unsigned long long)(cs.loads * 3 * (uint64_t)c->expert_inter * (uint64_t)c->hidden * 2));
out:
    free(lg);
    moe_engine_destroy(e);
    moe_provider_destroy(prov);
}

static void check_variant(struct moe_backend *be, const char *name)
{
    struct variant v = variant_open(name);
    struct moe_model *m = v.m;
    int64_t T = v.T, V = m->cfg.vocab;
    const int *ids = v.ids;
    const float *want = v.want;
    int n_moe = moe_config_n_moe(&m->cfg);
    struct moe_provider_cuda_params pp = { .slots = m->cfg.n_experts * n_moe, .policy = MOE_POLICY_LRU };
    /* a model without MoE layers (all_dense) has no expert for a GPU tier: the engine's own provider,
     * never asked for one */
    struct moe_provider *prov = n_moe ? moe_provider_cuda_create(m, be, &pp) : NULL;
    /* a failure here ends this variant, not the test: the others still run and report */
    CHECK(prov || !n_moe, "%s: GPU provider: %s", name, moe_last_error());
    if (prov) { /* its host copy holds the MoE layers' experts only: BF16, or an FP8 checkpoint's records */
        int l0 = 0;
        while (!m->cfg.is_moe[l0]) l0++;
        uint64_t per = moe_model_expert(m, l0, 0)->gate.scale ? moe_model_expert_bytes(m)
                                                               : 3 * (uint64_t)m->cfg.expert_inter * m->cfg.hidden * 2;
        uint64_t want_b = (uint64_t)n_moe * m->cfg.n_experts * per, got_b = moe_provider_cuda_host_bytes(prov);
        CHECK(got_b == want_b, "%s: the GPU provider's host copy is %llu bytes, want %d MoE layers x %d experts x "
              "%llu = %llu", name, (unsigned long long)got_b, n_moe, m->cfg.n_experts, (unsigned long long)per,
              (unsigned long long)want_b);
    }
    for (int bf = 0; bf < 2 && (prov || !n_moe); bf++) { /* the KV cache in F32, then in BF16 */
        struct moe_engine_params ep = { .max_seqs = 2, .max_ctx = 32, .max_batch_tokens = 16, .provider = prov,
                                        .backend = be, .kv_dtype = bf ? MOE_DT_BF16 : MOE_DT_F32 };
        struct moe_engine *e = moe_engine_create(m, &ep);
        CHECK(e, "%s: engine on the CUDA backend: %s", name, moe_last_error());
        if (!e) break;
        float *lg = malloc(sizeof(float) * (size_t)(T * V));
        int seq = moe_engine_seq_alloc(e);
        REQUIRE(lg, "out of memory");
        enum moe_status st = run_prompt(e, seq, ids, (int)T, lg);
        CHECK(st == MOE_OK, "%s forward (%s KV cache): %s", name, bf ? "BF16" : "F32", moe_last_error());
        if (st != MOE_OK) {
            moe_engine_destroy(e);
            free(lg);
            break;
        }
        double d = max_abs_diff(lg, want, (size_t)(T * V));
        printf("%-40s GPU logits (%s KV cache) max abs diff %.3g\n", name, bf ? "BF16" : "F32", d);
        CHECK(d < LOGIT_TOL, "%s: GPU logits (%s cache) differ from the reference by %g", name, bf ? "BF16" : "F32", d);
        moe_engine_seq_free(e, seq);
        int diff_rows = t_token_by_token_diffs(e, ids, (int)T, lg);
        CHECK(diff_rows == 0, "%s: %d positions differ between prefill and token-by-token on the GPU (%s cache)",
              name, diff_rows, bf ? "BF16" : "F32");
        int l0 = 0;
        while (l0 < m->cfg.n_layers && !m->cfg.is_moe[l0]) l0++;
        if (!bf && l0 < m->cfg.n_layers && moe_model_expert(m, l0, 0)->gate.scale) {
            REQUIRE(run_prompt(e, seq = moe_engine_seq_alloc(e), ids, (int)T, lg) == MOE_OK, "%s: %s", name,
                    moe_last_error());
            check_fp8_stack(be, &v, lg);
        }
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
