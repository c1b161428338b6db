/* The fixture directories (under tests/fixtures) of model configurations checked
 * against NumPy forward passes of transformers' code: each holds config.json,
 * model.safetensors and reference.safetensors (input_ids, logits).  The CPU
 * test (test_model_variants.c) and the GPU one (tests/gpu/test_gpu_variants.c)
 * run the same list. */
#ifndef MOE_TEST_MODEL_VARIANTS_H
#define MOE_TEST_MODEL_VARIANTS_H

#include "engine_testutil.h"

static const char *const model_variants[] = {
    "deepseek-v3-variants/q_proj", "deepseek-v3-variants/rope_flat", "deepseek-v3-variants/one_group",
    "deepseek-v3-variants/no_norm_no_shared", "deepseek-v3-variants/all_moe", "deepseek-v3-variants/all_dense",
    "deepseek-v3-variants/odd_dims", "deepseek-v3-variants/yarn", "deepseek-v3-variants/yarn_plain",
    "deepseek-v3-variants/fp8", "deepseek-v3-variants/v2_lite", "deepseek-v3-variants/v2_group",
    "deepseek-v3-variants/wide_v", "deepseek-v3-variants/kimi_k2", "glm4-moe/air", "glm4-moe/qk_norm", "glm4-moe/yarn_quarter",
    "minimax-m2/m2", "minimax-m2/defaults", "minimax-m2/fp8", "dots1/llm1", "dots1/defaults", "dots1/sliding",
    "ernie4_5-moe/a3b", "ernie4_5-moe/defaults", "ernie4_5-moe/interval",
};

/* One of them: the model, its reference (closed by the caller), the prompt's ids [*T] and the reference
 * logits [*T, vocab] (malloc'd). */
struct variant {
    struct moe_model *m;
    struct moe_st_file *ref;
    int *ids;
    float *want;
    int64_t T;
};

static inline struct variant variant_open(const char *name)
{
    char rel[256], dir[4096];
    struct variant v = { 0 };
    snprintf(rel, sizeof(rel), "tests/fixtures/%s", name);
    v.m = t_open_with_reference(rel, dir, sizeof(dir), &v.ref);
    int64_t one = 0, rows = 0;
    float *idf = ref_f32(v.ref, "input_ids", &one, &v.T);
    v.want = ref_f32(v.ref, "logits", &rows, NULL);
    REQUIRE(idf && v.want && rows == v.T, "%s: reference input_ids / logits", name);
    v.ids = malloc(sizeof(int) * (size_t)v.T);
    for (int i = 0; i < v.T; i++) v.ids[i] = (int)idf[i];
    free(idf);
    return v;
}

static inline void variant_close(struct variant *v)
{
    free(v->ids);
    free(v->want);
    moe_st_close(v->ref);
    moe_model_close(v->m);
}

#endif
