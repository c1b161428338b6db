/* moe_sched_create: the scheduler over a real moe_engine.  An adapter turns the
 * engine into a struct moe_sched_backend, installs the engine hooks (routing
 * goes to the scheduler, then to the hooks given in the params). */
#include "scheduler.h"

#include "../offload/runtime.h"
#include "../predictor/predictor.h"

#include <stdlib.h>
#include <string.h>

void moe_sched_own_adapter_(struct moe_sched *s, void *adapter, void (*free_fn)(void *));

struct engine_adapter {
    struct moe_engine *e;
    struct moe_predictor *pred;    /* or NULL */
    struct moe_sched_path_source pred_src; /* regrouping on the predictor's paths */
    int n_moe, top_k;
    int *ids;                      /* [n_moe * top_k] */
    struct moe_engine_hooks restore; /* hooks the caller gave (restored at destroy) */
    struct moe_engine_hooks user;  /* chained hooks */
    void (*route_cb)(void *ud, int layer, int n, const int *ids);
    void *route_ud;                /* valid during one forward() */
};

static void ad_on_hidden(void *ud, int j, int n, const float *h)
{
    struct engine_adapter *ad = ud;
    if (ad->user.on_hidden)
        ad->user.on_hidden(ad->user.ud, j, n, h);
}

static void ad_on_route(void *ud, int layer, int n, const float *logits, const int *ids, const float *w)
{
    struct engine_adapter *ad = ud;
    if (ad->route_cb)
        ad->route_cb(ad->route_ud, layer, n, ids);
    if (ad->user.on_route)
        ad->user.on_route(ad->user.ud, layer, n, logits, ids, w);
}

static void ad_on_moe_input(void *ud, int layer, int n, const float *x)
{
    struct engine_adapter *ad = ud;
    if (ad->user.on_moe_input)
        ad->user.on_moe_input(ad->user.ud, layer, n, x);
}

static int ad_seq_alloc(void *self)
{
    struct engine_adapter *ad = self;
    int seq = moe_engine_seq_alloc(ad->e);
    if (seq >= 0 && ad->pred)
        moe_predictor_seq_reset(ad->pred, seq);
    return seq;
}

static int ad_seq_claim(void *self, int seq, int keep)
{
    struct engine_adapter *ad = self;
    int got = moe_engine_seq_claim(ad->e, seq, keep);
    if (got >= 0 && ad->pred)
        moe_predictor_seq_reset(ad->pred, got);
    return got;
}

/* The predictor keeps a sequence's state after its latest token only: dst takes it when the fork copies all
 * src has cached; else dst starts as a new sequence for it (predictions only: outputs never depend on them). */
static enum moe_status ad_seq_fork(void *self, int dst, int src, int n)
{
    struct engine_adapter *ad = self;
    enum moe_status st = moe_engine_seq_fork(ad->e, dst, src, n);
    if (st == MOE_OK && ad->pred && n == moe_engine_seq_len(ad->e, src))
        moe_predictor_seq_fork(ad->pred, dst, src);
    return st;
}

static void ad_seq_free(void *self, int seq)
{
    struct engine_adapter *ad = self;
    moe_engine_seq_free(ad->e, seq);
    if (ad->pred)
        moe_predictor_seq_reset(ad->pred, seq);
}

/* Path source over the predictor: its step-start path for the sequence's next token. */
static bool ad_predict(void *ud, const struct moe_sched_path_query *q, uint64_t *out)
{
    struct engine_adapter *ad = ud;
    if (q->n_tokens < 1 || q->n_moe_layers != ad->n_moe)
        return false;
    if (moe_predictor_seq_path(ad->pred, q->slot, q->tokens[q->n_tokens - 1], ad->top_k, ad->ids) != MOE_OK)
        return false;
    memset(out, 0, sizeof(uint64_t) * (size_t)q->n_moe_layers * (size_t)q->words_per_layer);
    bool any = false;
    for (int l = 0; l < ad->n_moe; l++)
        for (int j = 0; j < ad->top_k; j++) {
            int e = ad->ids[l * ad->top_k + j];
            if (e < 0 || e >= q->n_experts)
                continue;
            out[(size_t)l * (size_t)q->words_per_layer + (size_t)(e >> 6)] |= 1ull << (e & 63);
            any = true;
        }
    return any;
}

static enum moe_status ad_forward(void *self, const struct moe_batch *b, float *logits,
                                  void (*on_route)(void *ud, int layer, int n, const int *ids), void *ud)
{
    struct engine_adapter *ad = self;
    ad->route_cb = on_route;
    ad->route_ud = ud;
    enum moe_status st = MOE_OK;
    if (ad->pred)
        st = moe_predictor_begin(ad->pred, b);
    if (st == MOE_OK)
        st = moe_engine_forward(ad->e, b, logits);
    if (ad->pred)
        moe_predictor_end(ad->pred, st == MOE_OK);
    ad->route_cb = NULL;
    ad->route_ud = NULL;
    return st;
}

static bool ad_lost(void *self)
{
    struct engine_adapter *ad = self;
    return moe_offload_backend_poisoned(moe_engine_backend(ad->e));
}

static void ad_free(void *p)
{
    struct engine_adapter *ad = p;
    moe_engine_set_hooks(ad->e, &ad->restore); /* give the engine back the caller's hooks */
    free(ad->ids);
    free(ad);
}

struct moe_sched *moe_sched_create(struct moe_engine *e, const struct moe_sched_params *p)
{
    if (!e || !p) {
        moe_errorf(MOE_EINVAL, "scheduler: create: NULL %s", e ? "params" : "engine");
        return NULL;
    }
    const struct moe_model *m = moe_engine_model(e);
    const struct moe_config *c = &m->cfg;
    /* smaller limits may be assumed, never larger: the engine refuses what lies past its own */
    if (p->engine_max_ctx > moe_engine_max_ctx(e) || p->engine_max_batch_tokens > moe_engine_max_batch(e)) {
        moe_errorf(MOE_EINVAL, "scheduler: create: engine_max_ctx = %d, engine_max_batch_tokens = %d: must be at "
                   "most the engine's max_ctx = %d and max_batch_tokens = %d (0 = those)", p->engine_max_ctx,
                   p->engine_max_batch_tokens, moe_engine_max_ctx(e), moe_engine_max_batch(e));
        return NULL;
    }
    struct engine_adapter *ad = calloc(1, sizeof(*ad));
    if (!ad) {
        moe_errorf(MOE_ENOMEM, "scheduler: create: out of memory");
        return NULL;
    }
    ad->e = e;
    ad->restore = p->hooks;
    ad->user = p->hooks;
    ad->top_k = c->top_k;
    ad->n_moe = moe_config_n_moe(c);
    struct moe_sched_params sp = *p;
    if (!sp.provider)
        sp.provider = moe_engine_provider(e); /* lookahead prefetch goes to the engine's provider */
    if (p->predictor) {
        ad->pred = p->predictor;
        ad->user = moe_predictor_hooks(p->predictor, &p->hooks);
        ad->ids = malloc(sizeof(int) * (size_t)(ad->n_moe > 0 ? ad->n_moe : 1) * (size_t)(c->top_k > 0 ? c->top_k : 1));
        if (!ad->ids) {
            free(ad);
            moe_errorf(MOE_ENOMEM, "scheduler: create: out of memory");
            return NULL;
        }
        if (!p->path_source) {
            ad->pred_src.predict = ad_predict;
            ad->pred_src.ud = ad;
            sp.path_source = &ad->pred_src;
        }
    }
    struct moe_sched_backend be = {
        .self = ad,
        .vocab = c->vocab,
        .n_layers = c->n_layers,
        .n_experts = c->n_experts,
        .top_k = c->top_k,
        .is_moe = c->is_moe,
        .eos_id = c->eos_id,
        .n_eos = c->n_eos,
        .eos_ids = c->eos_ids,
        .max_seqs = moe_engine_max_seqs(e),
        .max_ctx = p->engine_max_ctx > 0 ? p->engine_max_ctx : moe_engine_max_ctx(e),
        .max_batch_tokens = p->engine_max_batch_tokens > 0 ? p->engine_max_batch_tokens : moe_engine_max_batch(e),
        .seq_alloc = ad_seq_alloc,
        .seq_free = ad_seq_free,
        .seq_claim = ad_seq_claim,
        .seq_fork = ad_seq_fork,
        .forward = ad_forward,
        .lost = ad_lost,
    };
    if (be.max_seqs < 1) {
        free(ad->ids);
        free(ad);
        moe_errorf(MOE_EINVAL, "scheduler: create: the engine has no sequence slots");
        return NULL;
    }
    struct moe_sched *s = moe_sched_create_backend(&be, &sp);
    if (!s) {
        free(ad->ids);
        free(ad);
        return NULL;
    }
    struct moe_engine_hooks h = { .ud = ad, .on_hidden = ad->user.on_hidden ? ad_on_hidden : NULL,
                                  .on_route = ad_on_route,
                                  .on_moe_input = ad->user.on_moe_input ? ad_on_moe_input : NULL,
                                  .hidden_final_only = ad->user.hidden_final_only };
    moe_engine_set_hooks(e, &h);
    moe_sched_own_adapter_(s, ad, ad_free);
    return s;
}
