/* Shape-only predictors over a routing trace (see trace_log.h). */
#include "trace_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum moe_status nop_acquire(void *s, int l, int n, const int *i, struct moe_expert_ref *o)
{
    (void)s; (void)l; (void)i;
    memset(o, 0, sizeof(*o) * (size_t)n);
    return MOE_OK;
}
static void nop_release(void *s, int l) { (void)s; (void)l; }
static const struct moe_provider_ops nop_ops = { .acquire = nop_acquire, .release = nop_release };

enum moe_status moe_trace_pred_log(const struct moe_trace *t, const struct moe_pred_spec *spec,
                                   const struct moe_pred_prefetch *pf, struct moe_evlog *log)
{
    const struct moe_trace_info *in = &t->info;
    moe_evlog_init(log, in->n_moe, in->experts, in->top_k); /* freeable whatever happens below */
    if (spec->kind != MOE_PRED_NONE && spec->kind != MOE_PRED_HISTORY)
        return moe_errorf(MOE_ENOTSUP, "predictor %s needs the model's hidden states; on a trace only none and "
                          "history work (use moeflow replay for the others)", moe_pred_kind_name(spec->kind));
    if (in->layers <= 0 || in->layers > MOE_MAX_LAYERS || in->n_moe <= 0)
        return moe_errorf(MOE_EFORMAT, "trace: %d layers, %d MoE layers", in->layers, in->n_moe);
    /* a shape-only model: the history predictor reads nothing else */
    struct moe_model *m = calloc(1, sizeof(*m));
    if (!m) return moe_errorf(MOE_ENOMEM, "out of memory");
    m->cfg.n_layers = in->layers;
    m->cfg.n_experts = in->experts;
    m->cfg.top_k = in->top_k;
    m->cfg.hidden = 1;
    int vocab = 1;
    for (size_t i = 0; i < t->n_tokens; i++)
        if (t->token[i] >= vocab) vocab = t->token[i] + 1;
    m->cfg.vocab = vocab;
    for (int i = 0; i < in->n_moe; i++) m->cfg.is_moe[in->moe_layers[i]] = true;
    snprintf(m->dir, sizeof m->dir, "%s", in->model);
    int moe_index[MOE_MAX_LAYERS];
    for (int l = 0; l < in->layers; l++) moe_index[l] = -1;
    for (int i = 0; i < in->n_moe; i++) moe_index[in->moe_layers[i]] = i;

    enum moe_status st = MOE_OK;
    struct moe_provider nop = { .ops = &nop_ops };
    struct moe_provider *rec = moe_evlog_provider_create(&nop, log, moe_index, in->layers);
    struct moe_predictor *p = moe_predictor_create(m, spec, 1);
    if (!rec || !p) {
        st = MOE_ENOMEM;
        goto out;
    }
    moe_predictor_set_provider(p, rec, pf);
    struct moe_expert_ref refs[64];
    if (in->top_k > 64) {
        st = moe_errorf(MOE_ENOTSUP, "trace: top_k %d above 64", in->top_k);
        goto out;
    }
    int slot = 0;
    for (size_t i = 0; i < t->n_tokens; i++) {
        if (i == 0 || t->seq[i] != t->seq[i - 1] || t->pos[i] != t->pos[i - 1] + 1) moe_predictor_seq_reset(p, slot);
        struct moe_batch b = { .n = 1, .tokens = &t->token[i], .seq = &slot, .pos = &t->pos[i] };
        moe_evlog_step(log);
        if ((st = moe_predictor_begin(p, &b))) goto out;
        for (int li = 0; li < in->n_moe; li++) {
            /* as the engine does (engine.c, moe_drive_text): the predictor sees the layer's
             * routing, in the router's order (descending weight), before the provider is asked
             * for its experts in ascending id, so the hints for the next layer precede this
             * layer's accesses in the log, and the accesses are those of moeflow sim without a
             * predictor (moe_sim_run) */
            int order[MOE_TRACE_MAX_K];
            moe_trace_layer_order(t, i, li, order);
            moe_predictor_on_route(p, in->moe_layers[li], 1, moe_trace_experts(t, i, li));
            rec->ops->acquire(rec->self, in->moe_layers[li], in->top_k, order, refs);
        }
        moe_predictor_end(p, true);
    }
    if (log->oom) st = moe_errorf(MOE_ENOMEM, "event log: out of memory");
out:
    moe_predictor_destroy(p);
    if (rec) rec->ops->destroy(rec->self);
    free(m);
    return st;
}

int moe_trace_pred_sim_cmd(const struct moe_trace *t, const char *spec_s, const char *pol, long capacity,
                           uint64_t expert_bytes, double link_gbps, double layer_ms, double expert_ms,
                           double min_score, bool json)
{
    const struct moe_trace_info *in = &t->info;
    struct moe_pred_spec spec;
    enum moe_cache_policy cp;
    if (!moe_cache_policy_parse(pol, &cp)) {
        fprintf(stderr, "moeflow sim: --policy '%s' unknown (use lru, lfu, predicted or belady)\n", pol);
        return 2;
    }
    if (!spec_s)
        spec_s = "none";
    if (moe_pred_spec_parse(spec_s, ".", &spec)) {
        fprintf(stderr, "moeflow sim: %s\n", moe_last_error());
        return 2;
    }
    struct moe_evlog log;
    /* the hints of moeflow replay (cmd_replay.c, moe_drive_text): the predicted policy ranks
     * evictions with every expert's score and moves only those of at least min_score */
    struct moe_pred_prefetch pf = { .min_score = (float)min_score, .max_per_layer = in->top_k,
                                    .all_scores = cp == MOE_CACHE_PREDICTED, .next_step = true };
    if (moe_trace_pred_log(t, &spec, &pf, &log)) {
        fprintf(stderr, "moeflow sim: --predictor %s: %s\n", spec_s, moe_last_error());
        moe_evlog_free(&log);
        return spec.kind == MOE_PRED_NONE || spec.kind == MOE_PRED_HISTORY ? 1 : 2;
    }
    uint64_t eb = expert_bytes ? expert_bytes : in->expert_bytes, bytes_moved = 0;
    if (eb > MOE_TRACE_MAX_EXPERT_BYTES) {
        fprintf(stderr, "moeflow sim: --expert-bytes %llu is above the %llu-byte (1 TiB) limit\n",
                (unsigned long long)eb, MOE_TRACE_MAX_EXPERT_BYTES);
        return 2;
    }
    struct moe_cachesim_params p = {
        .capacity = (int)capacity,
        .policy = cp,
        .prefetch = spec.kind != MOE_PRED_NONE,
        .act_min_score = cp == MOE_CACHE_PREDICTED ? (float)min_score : 0,
        .xfer_s = link_gbps > 0 ? (double)eb / (link_gbps * 1e9) : 0,
        .layer_s = link_gbps > 0 ? (layer_ms + expert_ms * in->top_k) * 1e-3 : 0,
    };
    struct moe_cachesim_stats r;
    enum moe_status st = moe_cachesim_run_layers(&log, in->moe_layers, in->layers, &p, &r);
    moe_evlog_free(&log);
    if (st) {
        fprintf(stderr, "moeflow sim: %s\n", moe_last_error());
        return 1;
    }
    if (moe_cachesim_bytes_moved(&r, eb, &bytes_moved)) {
        fprintf(stderr, "moeflow sim: %s\n", moe_last_error());
        return 1;
    }
    long slots = (long)in->n_moe * in->experts;
    double tok = (double)r.steps, hr = r.accesses ? (double)r.hits / (double)r.accesses : 0;
    if (json) {
        printf("{\"policy\":\"%s\",\"predictor\":\"%s\"", pol, spec_s ? spec_s : "none");
        moe_cachesim_json_counts(stdout, &r, capacity, slots, bytes_moved);
        if (link_gbps > 0)
            printf(",\"link_gbps\":%g,\"expert_bytes\":%llu,\"layer_ms\":%g,\"expert_ms\":%g,\"compute_s\":%.6f,"
                   "\"stall_s\":%.6f,\"tokens_per_s\":%.4f",
                   link_gbps, (unsigned long long)eb, layer_ms, expert_ms, r.compute_s, r.stall_s,
                   r.total_s > 0 ? tok / r.total_s : 0);
        printf("}\n");
    } else {
        printf("predictor           %s\n", spec_s ? spec_s : "none");
        printf("policy              %s\n", pol);
        printf("capacity            %ld of %ld expert slots (%.1f %%)\n", capacity, slots,
               100.0 * (double)capacity / (double)slots);
        printf("hits                %llu\n", (unsigned long long)r.hits);
        printf("misses              %llu\n", (unsigned long long)(r.accesses - r.hits));
        printf("hit rate            %.4f\n", hr);
        printf("transfers/token     %.4f\n", tok > 0 ? (double)r.transfers / tok : 0);
        printf("bytes moved         %llu (%.3f GB)\n", (unsigned long long)bytes_moved, (double)bytes_moved / 1e9);
        printf("useful prefetches   %llu / %llu\n", (unsigned long long)r.prefetch_useful,
               (unsigned long long)r.prefetches);
        if (link_gbps > 0) {
            printf("compute             %.3f s\n", r.compute_s);
            printf("stall               %.3f s\n", r.stall_s);
            printf("tokens/s            %.3f\n", r.total_s > 0 ? tok / r.total_s : 0);
        }
    }
    return 0;
}
