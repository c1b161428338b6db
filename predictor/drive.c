/* Engine drivers for predictor evaluation, replay and training data (see drive.h). */
#include "drive.h"

#include "../engine/sampling.h"
#include "../kernels/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct drive_ctx {
    struct moe_predictor *pred;
    struct moe_pred_eval *eval;
    const int *moe_index;   /* [n_layers] */
};

static void drv_route(void *ud, int layer, int n, const float *logits, const int *ids, const float *w)
{
    (void)logits;
    (void)w;
    struct drive_ctx *c = ud;
    int mi = c->moe_index[layer];
    if (c->eval && n == 1 && mi >= 0) moe_pred_eval_actual(c->eval, mi, ids);
}

enum moe_status moe_drive_text(const struct moe_model *m, const int *tokens, size_t n, const struct moe_drive_params *p)
{
    const struct moe_config *cfg = &m->cfg;
    enum moe_status st = MOE_OK;
    struct moe_provider *res = NULL, *rec = NULL;
    struct moe_predictor *pred = NULL;
    struct moe_engine *eng = NULL;
    float *lg = NULL;
    int moe_index[MOE_MAX_LAYERS];
    int n_moe = 0;
    struct moe_evlog scratch_log;
    struct moe_evlog *log = p->log ? p->log : &scratch_log;
    if (p->seq_len <= 0) return moe_errorf(MOE_EINVAL, "--seq-len %d must be positive", p->seq_len);
    for (int l = 0; l < cfg->n_layers; l++) moe_index[l] = cfg->is_moe[l] ? n_moe++ : -1;
    moe_evlog_init(log, n_moe, cfg->n_experts, cfg->top_k);

    res = p->provider ? p->provider
                      : moe_provider_resident_create(m, p->backend ? p->backend->weight_dtype : MOE_DT_BF16);
    if (!res) {
        st = moe_errorf(MOE_ENOMEM, "cannot create the resident expert provider");
        goto out;
    }
    rec = moe_evlog_provider_create(res, log, moe_index, cfg->n_layers);
    if (!rec) {
        st = MOE_ENOMEM;
        goto out;
    }
    pred = moe_predictor_create(m, p->spec, 1);
    if (!pred) {
        st = p->spec_arg ? moe_error_prefix(MOE_EINVAL, "--predictor %s", p->spec_arg) : MOE_EINVAL;
        goto out;
    }
    struct moe_pred_prefetch pf = p->prefetch;
    pf.next_step = true; /* the replay's policy ranks evictions with them; the cache replay never
                            moves an expert for a hint beyond the step */
    moe_predictor_set_provider(pred, rec, &pf);
    struct moe_pred_sink sink;
    if (p->eval) {
        sink = moe_pred_eval_sink(p->eval);
        moe_predictor_set_sink(pred, &sink);
    }
    struct drive_ctx ctx = { .pred = pred, .eval = p->eval, .moe_index = moe_index };
    struct moe_engine_hooks next = { .ud = &ctx, .on_route = drv_route };
    struct moe_engine_params ep = {
        .max_seqs = 1,
        .max_ctx = p->seq_len,
        .max_batch_tokens = 16,
        .n_threads = p->n_threads > 0 ? p->n_threads : 1,
        .provider = rec,
        .backend = p->backend,
    };
    ep.hooks = moe_predictor_hooks(pred, &next);
    eng = moe_engine_create(m, &ep);
    if (!eng) {
        st = moe_error_prefix(MOE_EINVAL, "engine");
        goto out;
    }
    lg = malloc(sizeof(float) * (size_t)cfg->vocab);
    if (!lg) {
        st = moe_errorf(MOE_ENOMEM, "out of memory");
        goto out;
    }
    int seq = -1, pos = 0;
    for (size_t i = 0; i < n; i++) {
        bool new_seq = seq < 0 || pos >= p->seq_len;
        if (p->eval) moe_pred_eval_step(p->eval, new_seq);
        if (new_seq) {
            if (seq >= 0) moe_engine_seq_free(eng, seq);
            seq = moe_engine_seq_alloc(eng);
            if (seq < 0) {
                st = moe_errorf(MOE_EBUSY, "engine has no free sequence slot");
                goto out;
            }
            moe_predictor_seq_reset(pred, seq);
            pos = 0;
        }
        struct moe_batch b = { .n = 1, .tokens = &tokens[i], .seq = &seq, .pos = &pos };
        moe_evlog_step(log);
        if ((st = moe_predictor_begin(pred, &b))) goto out;
        st = moe_engine_forward(eng, &b, lg);
        moe_predictor_end(pred, st == MOE_OK);
        if (st) {
            moe_error_prefix(st, "token %zu", i);
            goto out;
        }
        if (p->logits) memcpy(p->logits + i * (size_t)cfg->vocab, lg, sizeof(float) * (size_t)cfg->vocab);
        if (p->argmax) p->argmax[i] = moe_argmax(lg, cfg->vocab);
        pos++;
    }
    if (log->oom) st = moe_errorf(MOE_ENOMEM, "event log: out of memory");
out:
    if (eng) moe_engine_destroy(eng);
    moe_predictor_destroy(pred);
    if (rec) rec->ops->destroy(rec->self);
    if (res != p->provider) moe_provider_destroy(res);
    free(lg);
    if (!p->log) moe_evlog_free(&scratch_log);
    return st;
}

struct route_ctx {
    const int *moe_index;
    int k, n_moe, n_layers, hidden;
    int *dst;     /* experts of the current chunk's first token, [chunk][n_moe][k] */
    float *hdst;  /* final hidden states of the chunk, [chunk][hidden], or NULL */
};

static void rt_hidden(void *ud, int j, int n, const float *h)
{
    struct route_ctx *c = ud;
    if (c->hdst && j == c->n_layers) memcpy(c->hdst, h, sizeof(float) * (size_t)n * (size_t)c->hidden);
}

static void rt_route(void *ud, int layer, int n, const float *logits, const int *ids, const float *w)
{
    (void)logits;
    (void)w;
    struct route_ctx *c = ud;
    int mi = c->moe_index[layer];
    if (mi < 0) return;
    for (int i = 0; i < n; i++)
        memcpy(c->dst + ((size_t)i * c->n_moe + (size_t)mi) * c->k, ids + (size_t)i * c->k, sizeof(int) * (size_t)c->k);
}

enum moe_status moe_drive_route(const struct moe_model *m, const int *tokens, size_t n, int seq_len, int chunk,
                                int n_threads, double progress_s, int **experts, int **seq_out, int **pos_out,
                                float **final_hidden)
{
    const struct moe_config *cfg = &m->cfg;
    enum moe_status st = MOE_OK;
    int moe_index[MOE_MAX_LAYERS], n_moe = 0;
    for (int l = 0; l < cfg->n_layers; l++) moe_index[l] = cfg->is_moe[l] ? n_moe++ : -1;
    if (seq_len <= 0 || chunk <= 0) return moe_errorf(MOE_EINVAL, "seq_len %d and chunk %d must be positive", seq_len, chunk);
    size_t row = (size_t)n_moe * (size_t)cfg->top_k;
    int *ex = malloc(sizeof(int) * (n ? n : 1) * row);
    int *sq = malloc(sizeof(int) * (n ? n : 1)), *ps = malloc(sizeof(int) * (n ? n : 1));
    int *bseq = malloc(sizeof(int) * (size_t)chunk), *bpos = malloc(sizeof(int) * (size_t)chunk);
    float *fh = final_hidden ? malloc(sizeof(float) * (n ? n : 1) * (size_t)cfg->hidden) : NULL;
    struct moe_engine *eng = NULL;
    if (!ex || !sq || !ps || !bseq || !bpos || (final_hidden && !fh)) {
        st = moe_errorf(MOE_ENOMEM, "out of memory for %zu tokens", n);
        goto out;
    }
    struct route_ctx rc = { .moe_index = moe_index, .k = cfg->top_k, .n_moe = n_moe, .n_layers = cfg->n_layers,
                            .hidden = cfg->hidden };
    struct moe_engine_params ep = {
        .max_seqs = 1,
        .max_ctx = seq_len,
        .max_batch_tokens = chunk,
        .n_threads = n_threads > 0 ? n_threads : 1,
        .hooks = { .ud = &rc, .on_route = rt_route, .on_hidden = final_hidden ? rt_hidden : NULL },
    };
    eng = moe_engine_create(m, &ep);
    if (!eng) {
        st = moe_error_prefix(MOE_EINVAL, "engine");
        goto out;
    }
    int seq = -1, pos = 0, seq_no = -1;
    double t0 = moe_now(), shown = t0;
    for (size_t i = 0; i < n;) {
        if (seq < 0 || pos >= seq_len) {
            if (seq >= 0) moe_engine_seq_free(eng, seq);
            seq = moe_engine_seq_alloc(eng);
            if (seq < 0) {
                st = moe_errorf(MOE_EBUSY, "engine has no free sequence slot");
                goto out;
            }
            pos = 0;
            seq_no++;
        }
        int nb = chunk;
        if ((size_t)nb > n - i) nb = (int)(n - i);
        if (nb > seq_len - pos) nb = seq_len - pos;
        for (int j = 0; j < nb; j++) {
            bseq[j] = seq;
            bpos[j] = pos + j;
            sq[i + (size_t)j] = seq_no;
            ps[i + (size_t)j] = pos + j;
        }
        struct moe_batch b = { .n = nb, .tokens = tokens + i, .seq = bseq, .pos = bpos };
        rc.dst = ex + i * row;
        rc.hdst = fh ? fh + i * (size_t)cfg->hidden : NULL;
        if ((st = moe_engine_forward(eng, &b, NULL))) {
            moe_error_prefix(st, "routing tokens %zu..%zu", i, i + (size_t)nb);
            goto out;
        }
        i += (size_t)nb;
        pos += nb;
        if (progress_s > 0) {
            double now = moe_now();
            if (i == n || now - shown >= progress_s) {
                fprintf(stderr, "routing: %zu / %zu tokens (%.0f s)\n", i, n, now - t0);
                shown = now;
            }
        }
    }
out:
    if (eng) moe_engine_destroy(eng);
    free(bseq);
    free(bpos);
    if (st) {
        free(ex);
        free(sq);
        free(ps);
        free(fh);
        return st;
    }
    if (final_hidden) *final_hidden = fh;
    *experts = ex;
    *seq_out = sq;
    *pos_out = ps;
    return MOE_OK;
}
