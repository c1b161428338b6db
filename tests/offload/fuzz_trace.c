/* libFuzzer target: the routing-trace reader on arbitrary bytes; an accepted
 * trace is replayed through the simulator (keys, LRU and Belady). */
#include "../../offload/sim.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct moe_trace *t = NULL;
    if (moe_trace_parse((const char *)data, size, "fuzz", &t) != MOE_OK) return 0;
    if (t->n_tokens <= 64 && (size_t)t->info.layers * (size_t)t->info.experts <= 65536) {
        struct moe_sim_params sp = { .capacity = t->info.top_k, .policy = MOE_POLICY_BELADY,
                                     .link_gbps = 1, .expert_ms = 0.1 };
        struct moe_sim_result r;
        moe_sim_run(t, &sp, &r);
        sp.policy = MOE_POLICY_LRU;
        sp.capacity = t->info.top_k + 3;
        moe_sim_run(t, &sp, &r);
    }
    moe_trace_free(t);
    return 0;
}
