/* Trace replay through the cache manager (see sim.h). */
#include "sim.h"

#include <stdlib.h>

enum moe_status moe_sim_run(const struct moe_trace *t, const struct moe_sim_params *p,
                            struct moe_sim_result *out)
{
    const struct moe_trace_info *in = &t->info;
    enum moe_status st = MOE_OK;
    int n_keys = in->layers * in->experts;
    int *future = NULL;
    size_t n_future = 0;
    struct moe_cache *c = NULL;
    *out = (struct moe_sim_result){0};
    if (in->top_k > MOE_SIM_MAX_K)
        return moe_errorf(MOE_ENOTSUP, "sim: top_k %d above the supported %d", in->top_k,
                          MOE_SIM_MAX_K);
    if (p->capacity < in->top_k)
        return moe_errorf(MOE_EINVAL, "sim: capacity %d is below top_k %d (a layer's experts must "
                          "fit at once)", p->capacity, in->top_k);
    uint64_t eb = p->expert_bytes ? p->expert_bytes : in->expert_bytes;
    if (eb > MOE_TRACE_MAX_EXPERT_BYTES)
        return moe_errorf(MOE_EINVAL, "sim: expert_bytes %llu above the %llu-byte (1 TiB) limit",
                          (unsigned long long)eb, MOE_TRACE_MAX_EXPERT_BYTES);
    if (p->policy == MOE_POLICY_BELADY && (st = moe_trace_keys(t, &future, &n_future))) return st;
    struct moe_cache_params cp = {
        .n_keys = n_keys,
        .capacity = p->capacity,
        .policy = moe_policy_create(p->policy, n_keys, future, n_future),
    };
    if (!cp.policy) {
        st = MOE_ENOMEM;
        goto out;
    }
    c = moe_cache_create(&cp);
    if (!c) {
        st = MOE_ENOMEM;
        goto out;
    }
    double xfer_s = p->link_gbps > 0 ? (double)eb / (p->link_gbps * 1e9) : 0;
    double layer_s = (p->layer_ms + p->expert_ms * in->top_k) * 1e-3;
    double now = 0, link_free = 0;
    for (size_t i = 0; i < t->n_tokens; i++) {
        for (int li = 0; li < in->n_moe; li++) {
            int e[MOE_SIM_MAX_K];
            moe_trace_layer_order(t, i, li, e);
            int base = in->moe_layers[li] * in->experts;
            double ready = now;
            for (int j = 0; j < in->top_k; j++) {
                int slot, evicted;
                bool miss;
                if ((st = moe_cache_acquire(c, base + e[j], &slot, &miss, &evicted))) goto out;
                if (miss) {
                    double start = link_free > now ? link_free : now;
                    link_free = start + xfer_s;
                    if (link_free > ready) ready = link_free;
                }
            }
            for (int j = 0; j < in->top_k; j++) moe_cache_unpin(c, base + e[j]);
            out->stall_s += ready - now;
            out->compute_s += layer_s;
            now = ready + layer_s;
        }
    }
    struct moe_cache_stats cs;
    moe_cache_get_stats(c, &cs);
    out->tokens = t->n_tokens;
    out->hits = cs.hits;
    out->misses = cs.misses;
    out->evictions = cs.evictions;
    out->accesses = cs.hits + cs.misses;
    out->hit_rate = out->accesses ? (double)cs.hits / (double)out->accesses : 0;
    out->transfers_per_token = t->n_tokens ? (double)cs.misses / (double)t->n_tokens : 0;
    if (!moe_mul_u64(cs.misses, eb, &out->bytes_moved)) {
        st = moe_errorf(MOE_ERANGE, "sim: bytes moved (%llu misses x %llu bytes) overflows 64 bits; "
                        "give a smaller --expert-bytes", (unsigned long long)cs.misses,
                        (unsigned long long)eb);
        goto out;
    }
    out->timeline = p->link_gbps > 0;
    if (out->timeline && now > 0) out->tokens_per_s = (double)t->n_tokens / now;
    if (!out->timeline) out->stall_s = out->compute_s = 0;
out:
    moe_cache_destroy(c);
    free(future);
    return st;
}
