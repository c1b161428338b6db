/* The fixture directories (under tests/fixtures) of model configurations checked
 * against NumPy forward passes of transformers' code: each holds config.json,
 * model.safetensors and reference.safetensors (input_ids, logits).  The CPU
 * test (test_model_variants.c) and the GPU one (tests/gpu/test_gpu_variants.c)
 * run the same list. */
#ifndef MOE_TEST_MODEL_VARIANTS_H
#define MOE_TEST_MODEL_VARIANTS_H

static const char *const model_variants[] = {
    "deepseek-v3-variants/q_proj", "deepseek-v3-variants/rope_flat", "deepseek-v3-variants/one_group",
    "deepseek-v3-variants/no_norm_no_shared", "deepseek-v3-variants/all_moe", "deepseek-v3-variants/all_dense",
    "deepseek-v3-variants/odd_dims", "deepseek-v3-variants/yarn", "deepseek-v3-variants/yarn_plain",
    "deepseek-v3-variants/fp8", "deepseek-v3-variants/v2_lite", "deepseek-v3-variants/v2_group",
    "deepseek-v3-variants/wide_v", "glm4-moe/air", "glm4-moe/qk_norm", "glm4-moe/yarn_quarter",
    "minimax-m2/m2", "minimax-m2/defaults", "dots1/llm1", "dots1/defaults",
};

#endif
