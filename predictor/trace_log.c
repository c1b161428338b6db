/* Shape-only predictors over a routing trace (see trace_log.h). */
#include "trace_log.h"

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
    moe_evlog_init(log, in->n_moe, in->experts, in->top_k);
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
            const int *e = moe_trace_experts(t, i, li);
            rec->ops->acquire(rec->self, in->moe_layers[li], in->top_k, e, refs);
            moe_predictor_on_route(p, in->moe_layers[li], 1, e);
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
