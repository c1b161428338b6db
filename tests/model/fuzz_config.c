/* libFuzzer target: config.json parsing.  An accepted config must satisfy
 * the invariants the loader and engine rely on. */
#include "model/config.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct moe_config c;
    if (moe_config_parse((const char *)data, size, "fuzz config.json", &c) != MOE_OK) return 0;
    if (c.n_layers < 1 || c.n_layers > MOE_MAX_LAYERS || c.hidden < 1 || c.n_heads < 1 ||
        c.n_kv_heads < 1 || c.n_heads % c.n_kv_heads || c.head_dim < 1 || c.vocab < 1 ||
        c.n_experts < 1 || c.top_k < 1 || c.top_k > c.n_experts || c.expert_inter < 1 ||
        c.shared_inter < 0 || c.n_eos < 0 || c.n_eos > MOE_MAX_EOS || !(c.rms_eps > 0) ||
        !(c.rope_theta > 0) || c.max_pos < 1 || c.rope_dim < 2 || c.rope_dim % 2 ||
        c.rope_dim > (c.mla ? c.qk_rope_dim : c.head_dim))
        abort();
    bool any_moe = false;
    for (int l = 0; l < c.n_layers; l++) {
        if (!c.is_moe[l] && c.dense_inter < 1) abort();
        any_moe |= c.is_moe[l];
    }
    /* the grouped routers' groups split the experts, and keep enough of them; ERNIE-4.5's is one
     * group, renormalised, with some MoE layer */
    if (moe_router_is_grouped(c.router) && (c.n_group < 1 || c.n_experts % c.n_group || c.topk_group < 1 ||
                                            c.topk_group > c.n_group ||
                                            c.top_k > c.topk_group * (c.n_experts / c.n_group)))
        abort();
    if (c.family == MOE_FAM_ERNIE4_5_MOE &&
        (c.router != MOE_ROUTER_SOFTMAX_BIAS || c.n_group != 1 || !c.norm_topk_prob || !any_moe || !c.rope_interleave))
        abort();
    return 0;
}
