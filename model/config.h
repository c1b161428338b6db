/* Model configuration (config.json) for the supported MoE families.
 *
 * Accepts the spellings of different transformers versions: rope_theta at top
 * level or inside rope_parameters / rope_scaling; num_experts or
 * num_local_experts; head_dim present or derived; etc.  Unknown architectures
 * (and DeepSeek before V2) are refused with an error naming them; a missing
 * or out-of-range field is an error naming the field. */
#ifndef MOE_CONFIG_H
#define MOE_CONFIG_H

#include "../common/moe.h"

#ifdef __cplusplus
extern "C" {
#endif

enum moe_family {
    MOE_FAM_MIXTRAL,
    MOE_FAM_QWEN2_MOE,
    MOE_FAM_QWEN3_MOE,
    MOE_FAM_OLMOE,
    MOE_FAM_DEEPSEEK_V3,
    MOE_FAM_DEEPSEEK_V2,
    MOE_FAM_GLM4_MOE,
    MOE_FAM_MINIMAX_M2,
    MOE_FAM_DOTS1,
    MOE_FAM_ERNIE4_5_MOE,
};
const char *moe_family_name(enum moe_family f);

/* DeepSeek-V2 and V3: multi-head latent attention, shared_experts, first_k_dense_replace. */
static inline bool moe_family_is_deepseek(enum moe_family f)
{
    return f == MOE_FAM_DEEPSEEK_V3 || f == MOE_FAM_DEEPSEEK_V2;
}

/* The families with DeepSeek's MoE block: n_routed_experts, shared_experts, first_k_dense_replace
 * (DeepSeek-V2/V3, and with grouped-query attention GLM-4.5's glm4_moe and dots.llm1's dots1). */
static inline bool moe_family_has_deepseek_moe(enum moe_family f)
{
    return moe_family_is_deepseek(f) || f == MOE_FAM_GLM4_MOE || f == MOE_FAM_DOTS1;
}

enum moe_router_kind {
    MOE_ROUTER_TOPK_SOFTMAX,  /* Mixtral: top-k on logits, softmax over the k */
    MOE_ROUTER_SOFTMAX_TOPK,  /* Qwen/OLMoE: softmax over all, top-k, renormalise if norm_topk_prob */
    MOE_ROUTER_SIGMOID_GROUP, /* DeepSeek-V3, GLM-4.5, MiniMax-M2 (one group): sigmoid scores, group-limited top-k on score + bias,
                                 weights renormalised if norm_topk_prob, times routed_scale */
    MOE_ROUTER_SOFTMAX_GROUP, /* DeepSeek-V2: softmax over all, group-limited top-k (groups scored by
                                 their largest probability; one group: plain top-k), weights the
                                 probabilities times routed_scale */
    MOE_ROUTER_SOFTMAX_BIAS,  /* ERNIE-4.5: softmax over all, top-k on probability + bias (one group),
                                 weights the probabilities over max(their sum, 1e-12) */
};

/* The routers of the backends' router_grouped op (one group or more), and those of them with a
 * per-expert selection bias (e_score_correction_bias). */
static inline bool moe_router_is_grouped(enum moe_router_kind k)
{
    return k == MOE_ROUTER_SIGMOID_GROUP || k == MOE_ROUTER_SOFTMAX_GROUP || k == MOE_ROUTER_SOFTMAX_BIAS;
}
static inline bool moe_router_has_bias(enum moe_router_kind k)
{
    return k == MOE_ROUTER_SIGMOID_GROUP || k == MOE_ROUTER_SOFTMAX_BIAS;
}

/* ERNIE-4.5's moe_norm_min: the least divisor of its routing weights (transformers' default, the only
 * value supported). */
#define MOE_ERNIE_NORM_MIN 1e-12f

enum moe_qk_norm {
    MOE_QK_NORM_NONE,
    MOE_QK_NORM_HEAD,   /* Qwen3: RMSNorm over each head's head_dim */
    MOE_QK_NORM_FULL,   /* OLMoE, MiniMax-M2: RMSNorm over the whole q (n_heads*head_dim) / k projection */
};

enum moe_rope_kind {
    MOE_ROPE_DEFAULT,
    MOE_ROPE_YARN,            /* rope_type "yarn": transformers' _compute_yarn_parameters */
};

/* YaRN's parameters, as config.json gives them (0 where absent and derived). */
struct moe_yarn {
    double factor;            /* 0: max_position_embeddings / original_max_position_embeddings */
    double beta_fast, beta_slow;
    double attention_factor;  /* 0: from mscale / mscale_all_dim, or get_mscale(factor) */
    double mscale, mscale_all_dim;
    int orig_max_pos;         /* original_max_position_embeddings */
    bool truncate;
};

#define MOE_MAX_LAYERS 256
#define MOE_MAX_EOS 8

struct moe_config {
    enum moe_family family;
    char model_type[32];       /* config.json model_type */
    int n_layers;              /* num_hidden_layers */
    int hidden;                /* hidden_size */
    int n_heads;               /* num_attention_heads */
    int n_kv_heads;            /* num_key_value_heads */
    int head_dim;              /* per head */
    int vocab;                 /* vocab_size */
    int n_experts;             /* routed experts per MoE layer */
    int top_k;                 /* num_experts_per_tok */
    int expert_inter;          /* moe_intermediate_size (Mixtral: intermediate_size) */
    int dense_inter;           /* intermediate_size of dense (non-MoE) layers, 0 if none */
    int shared_inter;          /* shared expert intermediate size, 0 = no shared expert */
    bool shared_gate;          /* shared expert scaled by sigmoid(shared_expert_gate(x)) */
    bool norm_topk_prob;       /* renormalise top-k weights to sum 1 */
    enum moe_router_kind router;
    enum moe_qk_norm qk_norm;
    bool attn_qkv_bias;        /* q/k/v projections have biases */
    bool tie_embeddings;       /* lm_head shares embed_tokens */
    int sliding_window;        /* Mixtral's sliding_window, or dots1's with sliding layers; 0 = none */
    bool sliding[MOE_MAX_LAYERS]; /* per layer: a token attends to the sliding_window positions up to and
                                     including its own only (transformers' sliding-window mask) */
    float rms_eps;
    float rope_theta;
    int rope_dim;              /* RoPE's rotated width: head_dim, its first head_dim *
                                  partial_rotary_factor dims (GLM-4.5) or rotary_dim (MiniMax-M2),
                                  or qk_rope_dim under MLA */
    enum moe_rope_kind rope_kind;
    struct moe_yarn yarn;      /* MOE_ROPE_YARN */
    int max_pos;               /* max_position_embeddings */
    int bos_id, eos_id;        /* -1 when absent; eos_id = eos_ids[0] */
    bool is_moe[MOE_MAX_LAYERS]; /* per layer: MoE (true) or dense MLP */
    int n_eos;                 /* distinct eos_token_id values (a list in some configs), 0 when absent;
                                  moe_config_load adds generation_config.json's; more than
                                  MOE_MAX_EOS is an error */
    int eos_ids[MOE_MAX_EOS];  /* [n_eos] */

    /* DeepSeek-V3 only (zero for the other families).  MLA attention: q from
     * hidden through a rank-q_lora_rank bottleneck (0: q_proj straight), k and v
     * from a shared rank-kv_lora_rank latent plus one RoPE key shared by all
     * heads; head_dim = qk_nope_dim + qk_rope_dim, n_kv_heads = n_heads. */
    bool mla;
    int q_lora_rank, kv_lora_rank;
    int qk_nope_dim, qk_rope_dim, v_head_dim;
    bool rope_interleave;      /* RoPE over adjacent pairs of the rope dims (transformers' default; and
                                  ERNIE-4.5's, under grouped-query attention) */
    int n_group, topk_group;   /* MOE_ROUTER_*_GROUP (also GLM-4.5): expert groups, groups kept per token */
    float routed_scale;        /* routed_scaling_factor */

    /* FP8 checkpoints (quantization_config quant_method "fp8", fmt "e4m3"): weights stored as
     * float8_e4m3fn, each block of fp8_block[0] rows x fp8_block[1] columns with an F32 factor in
     * "<weight>_scale_inv"; 0 = not quantized. */
    int fp8_block[2];
};

/* Whether tok is one of the model's end-of-sequence ids. */
static inline bool moe_config_is_eos(const struct moe_config *c, int tok)
{
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == tok) return true;
    return c->eos_id >= 0 && tok == c->eos_id;
}

/* Number of MoE layers (dense-MLP layers excluded). */
static inline int moe_config_n_moe(const struct moe_config *c)
{
    int n = 0;
    for (int l = 0; l < c->n_layers && l < MOE_MAX_LAYERS; l++) n += c->is_moe[l];
    return n;
}

/* The inverse frequency of each of the dim/2 rotated pairs, and the factor
 * that multiplies cos and sin, as transformers computes them for c's RoPE
 * (default or YaRN); dim is the rotated width (c->rope_dim), even and at most
 * 4096. */
void moe_config_rope(const struct moe_config *c, int dim, float *inv_freq, float *cs_scale);
/* The attention softmax scale: 1/sqrt(head_dim), times DeepSeek-V3's YaRN
 * mscale^2 (mscale_all_dim) under MLA. */
float moe_config_attn_scale(const struct moe_config *c);

enum moe_status moe_config_parse(const char *json, size_t len, const char *what,
                                 struct moe_config *out);
/* model_dir/config.json, plus the eos_token_id of model_dir/generation_config.json
 * when there is one (the ids transformers' generate stops on). */
enum moe_status moe_config_load(const char *model_dir, struct moe_config *out);

#ifdef __cplusplus
}
#endif
#endif
