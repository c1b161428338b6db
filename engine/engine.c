/* The batched forward pass (engine.h) over the backend seam (kernels/backend.h).
 *
 * Per decoder layer: RMSNorm -> q/k/v projections (+ biases) -> q/k norm
 * (per head or over the projection) -> RoPE -> KV store -> causal GQA -> o
 * projection -> residual (DeepSeek-V3: multi-head latent attention, see
 * mla_block); RMSNorm -> MoE block (router, experts through the expert
 * provider, optional shared expert, sigmoid-gated or not) or dense SwiGLU MLP
 * -> residual.  Then the final norm and lm_head over the rows that want logits.
 *
 * Determinism: every backend op computes a row from that row alone, the
 * experts' outputs land in one row per (token, rank) and are summed per token
 * in routing-rank order, so a token's logits depend neither on the other
 * tokens of the batch nor on how the layer's experts were chunked or acquired.
 *
 * All buffers are sized at create for max_batch_tokens; forward() allocates
 * nothing. */
#include "engine.h"

#include "../kernels/backend.h"
#include "../kernels/moe_plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct eng_layer {
    float *attn_norm, *ffn_norm;          /* [H] */
    void *wq, *wk, *wv, *wo;              /* [Q, H], [KV, H] x2, [H, Q] in wdt */
    float *bq, *bk, *bv;                  /* [Q], [KV], [KV] or NULL */
    float *q_norm, *k_norm;               /* [hd] (HEAD) or [Q]/[KV] (FULL) or NULL */
    void *router;                         /* [E, H] on MoE layers */
    void *sh_gate, *sh_up, *sh_down;      /* [S, H], [S, H], [H, S] or NULL */
    void *sh_scale;                       /* [1, H] or NULL */
    void *d_gate, *d_up, *d_down;         /* dense MLP [D, H], [D, H], [H, D] or NULL */
    /* MLA: wq = q_b_proj (or q_proj), wo [H, nh*v]; rope rows de-interleaved when rope_interleave */
    void *q_a;                            /* [q_lora_rank, H] or NULL */
    float *q_a_norm, *kv_a_norm;          /* [q_lora_rank], [kv_lora_rank] */
    void *kv_a_c, *kv_a_r;                /* kv_a_proj_with_mqa split: [kv_lora_rank, H], [rope, H] */
    void *w_ukt, *w_uv;                   /* kv_b_proj per head: its k rows transposed [nh][kv_lora_rank][nope],
                                             its v rows [nh][v][kv_lora_rank] */
    float *router_bias;                   /* [E] e_score_correction_bias or NULL */
};

struct moe_engine {
    const struct moe_model *m;
    struct moe_config cfg;
    struct moe_backend *be;
    bool own_be;
    struct moe_provider *prov;
    bool own_prov;
    struct moe_engine_hooks hooks;
    enum moe_dtype wdt;                   /* matrix weights' dtype in backend memory */

    int max_seqs, max_ctx, max_batch;
    int H, Q, KV, E, K, V, I, D;
    float rope_inv_freq[2048];            /* per rotated pair (head_dim, or qk_rope_dim under MLA) */
    float rope_scale, attn_scale;         /* on cos/sin (YaRN), softmax scale */          /* hidden, q dim, kv dim, experts, top-k, vocab, expert inter, max(dense, shared) inter */

    /* weights (backend memory) */
    void *embed, *lm_head;                /* [V, H] (lm_head may equal embed) */
    float *final_norm;                    /* [H] */
    struct eng_layer *L;                  /* [n_layers] */
    enum moe_dtype kv_dt;                 /* the cache's element type, F32 or BF16 */
    void *kc, *vc;                        /* [layers][max_seqs][max_ctx][KV]; under MLA vc == kc (the latent
                                             rows serve as keys and values) */

    /* sequences */
    bool *seq_used;                       /* [max_seqs] */
    int *seq_len;                         /* [max_seqs] tokens cached (of a free slot: those it held) */

    /* activations (backend memory), N = max_batch */
    int32_t *d_tok, *d_seq, *d_pos, *d_rows; /* [N] */
    float *h, *xn, *o;                    /* [N, H] */
    float *q, *att;                       /* [N, Q] */
    float *kx, *vx;                       /* [N, KV] */
    float *rl;                            /* [N, E] router logits */
    int32_t *d_ids, *d_src, *d_inv;       /* [N*K] */
    float *rw;                            /* [N*K] routing weights */
    float *xp, *yp;                       /* [N*K, H] permuted inputs / expert outputs */
    float *mg, *mu;                       /* [N, D] */
    float *sd;                            /* [N, H] shared expert output */
    float *sg;                            /* [N] shared expert gate logit */
    float *d_logits;                      /* [N, V], only when !host_visible */
    float *mq_a;                          /* MLA: [N, q_lora_rank] */
    float *m_ckv, *m_krope, *m_lat;       /* MLA: [N, kv_lora_rank], [N, rope], [N, KV] (latent | k rope) */
    float *m_ql, *m_attl;                 /* MLA: [N, nh*KV] queries in latent space, attention over latents */
    float *m_hp, *m_hp2;                  /* MLA: head-major scratch [nh][N][max(nope, kv_lora_rank, v)] */
    float *m_attv;                        /* MLA: [N, nh*v] */

    /* host staging */
    int32_t *h_tok, *h_seq, *h_pos, *h_rows; /* [N] */
    int32_t *h_ids, *h_src, *h_inv;       /* [N*K] */
    float *h_rw;                          /* [N*K] */
    float *h_rl;                          /* [N*E] when !host_visible */
    float *h_act;                         /* [N*H] when !host_visible (hooks) */
    int *cnt, *first, *distinct, *goff;   /* [E], [E+1], [E], [E+1] */
    struct moe_expert_ref *refs;          /* [E] */
    struct moe_backend_expert *bexp;      /* [E] */
    int *seen_seq;                        /* [max_seqs] scratch for validation */
};

/* ---- creation ---------------------------------------------------------------- */

/* The cache row of one token in one layer, in elements (keys; values take as many, except under MLA). */
static int kv_row(const struct moe_config *c)
{
    return c->mla ? c->kv_lora_rank + c->qk_rope_dim : c->n_kv_heads * c->head_dim;
}

size_t moe_engine_kv_bytes_per_token(const struct moe_config *c, enum moe_dtype kv_dtype)
{
    return (size_t)kv_row(c) * moe_dtype_size(kv_dtype) * (c->mla ? 1 : 2) * (size_t)c->n_layers;
}

bool moe_engine_kv_dtype_parse(const char *s, enum moe_dtype *out)
{
    if (!strcasecmp(s, "f32")) *out = MOE_DT_F32;
    else if (!strcasecmp(s, "bf16")) *out = MOE_DT_BF16;
    else return false;
    return true;
}

/* A backend buffer from alloc (buf_alloc, or weights_alloc for weights), never of zero bytes. */
static void *alloc_with(struct moe_engine *e, void *(*alloc)(void *, size_t, const char *), size_t bytes,
                        const char *what)
{
    return alloc(e->be->ctx, bytes ? bytes : 4, what);
}

static void *balloc(struct moe_engine *e, size_t bytes, const char *what)
{
    return alloc_with(e, e->be->ops->buf_alloc, bytes, what);
}

static void bfree(struct moe_engine *e, void *p)
{
    if (p) e->be->ops->buf_free(e->be->ctx, p);
}

/* Every matrix the engine stores in wdt (embedding, lm_head, attention,
 * router, shared and dense MLPs) is BF16 in the checkpoint. */
static bool matrices_bf16(const struct moe_model *m)
{
    const struct moe_wview *top[] = { &m->embed, &m->lm_head };
    for (size_t i = 0; i < MOE_ARRAY_LEN(top); i++)
        if (top[i]->data && top[i]->dtype != MOE_DT_BF16) return false;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const struct moe_layer_w *w = &m->layers[l];
        const struct moe_wview *v[] = { &w->wq, &w->wk, &w->wv, &w->wo, &w->router, &w->sh_gate, &w->sh_up,
                                        &w->sh_down, &w->sh_scale, &w->d_gate, &w->d_up, &w->d_down,
                                        &w->q_a, &w->kv_a, &w->kv_b };
        for (size_t i = 0; i < MOE_ARRAY_LEN(v); i++)
            if (v[i]->data && v[i]->dtype != MOE_DT_BF16) return false;
    }
    return true;
}

/* Upload a weight view to backend memory as dt (F32 or BF16).  Absent
 * (optional) weights give *out = NULL. */
static enum moe_status upload(struct moe_engine *e, const struct moe_wview *w, enum moe_dtype dt,
                              void **out, const char *what_, int layer)
{
    char what[96];
    if (layer >= 0)
        snprintf(what, sizeof(what), "layer %d %s", layer, what_);
    else
        snprintf(what, sizeof(what), "%s", what_);
    *out = NULL;
    if (!w->data) return MOE_OK;
    uint64_t n;
    if (!moe_mul_u64((uint64_t)w->rows, (uint64_t)w->cols, &n) || n > SIZE_MAX / 4)
        return moe_errorf(MOE_EFORMAT, "%s: shape %lld x %lld too large", what,
                          (long long)w->rows, (long long)w->cols);
    size_t bytes = (size_t)n * moe_dtype_size(dt);
    const struct moe_backend_ops *o = e->be->ops;
    void *d = alloc_with(e, o->weights_alloc ? o->weights_alloc : o->buf_alloc, bytes, what);
    if (!d) return moe_error_prefix(MOE_ENOMEM, "%s", what);
    void *host = e->be->host_visible ? d : malloc(bytes);
    float *f32 = NULL;
    enum moe_status st = MOE_OK;
    if (!host) goto out_nomem;
    if (dt == MOE_DT_F32) {
        moe_wview_to_f32(w, host);
    } else if (w->dtype == MOE_DT_BF16) {
        memcpy(host, w->data, bytes);
    } else {
        f32 = malloc((size_t)n * sizeof(float));
        if (!f32) goto out_nomem;
        moe_wview_to_f32(w, f32);
        for (size_t i = 0; i < n; i++) ((uint16_t *)host)[i] = moe_f32_to_bf16(f32[i]);
        free(f32);
    }
    if (host != d) {
        st = e->be->ops->copy_h2d(e->be->ctx, d, host, bytes);
        if (st == MOE_OK) st = e->be->ops->synchronize(e->be->ctx);
        free(host);
        if (st != MOE_OK) {
            bfree(e, d);
            return moe_error_prefix(st, "%s: upload", what);
        }
    }
    *out = d;
    return MOE_OK;
out_nomem:
    if (host != d) free(host);
    bfree(e, d);
    return moe_errorf(MOE_ENOMEM, "%s: cannot allocate %zu bytes", what, bytes);
}

static enum moe_status missing(const struct moe_engine *e, int layer, const char *what);

/* Upload the rows idx[0..n) of w, in that order, as one [n, cols] matrix. */
static enum moe_status upload_rows(struct moe_engine *e, const struct moe_wview *w, const int *idx, int n,
                                   enum moe_dtype dt, void **out, const char *what, int layer)
{
    size_t row = (size_t)w->cols * moe_dtype_size(w->dtype);
    char *tmp = malloc(row * (size_t)n);
    if (!tmp) return moe_errorf(MOE_ENOMEM, "layer %d %s: cannot allocate %zu bytes", layer, what, row * (size_t)n);
    for (int r = 0; r < n; r++) memcpy(tmp + (size_t)r * row, (const char *)w->data + (size_t)idx[r] * row, row);
    struct moe_wview v = { .dtype = w->dtype, .rows = n, .cols = w->cols, .data = tmp, .nbytes = row * (size_t)n };
    enum moe_status st = upload(e, &v, dt, out, what, layer);
    free(tmp);
    return st;
}

/* The order of a head's d rope rows in the matrices that produce them:
 * transformers' rope_interleave rotates adjacent pairs (x0, x1), (x2, x3), ...
 * by first gathering the even then the odd dims, which puts the pairs where
 * the rotate-half rope op expects them: row j of the result is row perm[j].
 * (ERNIE-4.5's rotation of adjacent pairs is the same after this order, and
 * attention scores do not change when q and k share it.) */
static void rope_rows(const struct moe_config *c, int base, int d, int *rows)
{
    for (int j = 0; j < d; j++)
        rows[j] = base + (!c->rope_interleave ? j : j < d / 2 ? 2 * j : 2 * (j - d / 2) + 1);
}

/* q_proj or k_proj of n_heads heads with each head's rope rows in rope_rows' order (ERNIE-4.5). */
static enum moe_status upload_interleaved(struct moe_engine *e, const struct moe_wview *w, int n_heads,
                                          void **out, const char *what, int l)
{
    const struct moe_config *c = &e->cfg;
    int hd = c->head_dim, *rows = malloc(sizeof(int) * (size_t)n_heads * (size_t)hd);
    if (!rows) return moe_errorf(MOE_ENOMEM, "layer %d: out of memory", l);
    for (int h = 0; h < n_heads; h++) {
        rope_rows(c, h * hd, c->rope_dim, rows + h * hd);
        for (int j = c->rope_dim; j < hd; j++) rows[h * hd + j] = h * hd + j;
    }
    enum moe_status st = upload_rows(e, w, rows, n_heads * hd, e->wdt, out, what, l);
    free(rows);
    return st;
}

/* kv_b_proj [nh*(nope + v), kv_lora_rank] as the latent attention uses it: each head's k rows
 * transposed (w_ukt [nh][kv_lora_rank][nope]: the query's nope part times it gives the query in
 * latent space) and its v rows as they are (w_uv [nh][v][kv_lora_rank]: the attention over latents
 * times its transpose gives the head's values). */
static enum moe_status upload_kv_b(struct moe_engine *e, const struct moe_wview *w, struct eng_layer *d, int l)
{
    const struct moe_config *c = &e->cfg;
    int nh = c->n_heads, nope = c->qk_nope_dim, vd = c->v_head_dim, kvr = c->kv_lora_rank, per = nope + vd;
    size_t es = moe_dtype_size(w->dtype), n = (size_t)nh * (size_t)kvr * (size_t)(nope > 0 ? nope : 1);
    int *rows = malloc(sizeof(int) * (size_t)nh * (size_t)vd);
    char *t = malloc(n * es);
    enum moe_status st = MOE_OK;
    if (!rows || !t) {
        st = moe_errorf(MOE_ENOMEM, "layer %d kv_b_proj: out of memory", l);
        goto out;
    }
    if (nope > 0) {
        for (int h = 0; h < nh; h++)
            for (int r = 0; r < kvr; r++)
                for (int j = 0; j < nope; j++)
                    memcpy(t + (((size_t)h * kvr + r) * nope + j) * es,
                           (const char *)w->data + ((size_t)(h * per + j) * kvr + r) * es, es);
        struct moe_wview v = { .dtype = w->dtype, .rows = (int64_t)nh * kvr, .cols = nope, .data = t,
                               .nbytes = n * es };
        st = upload(e, &v, e->wdt, &d->w_ukt, "kv_b_proj (keys)", l);
    }
    for (int h = 0; h < nh; h++)
        for (int j = 0; j < vd; j++) rows[h * vd + j] = h * per + nope + j;
    if (st == MOE_OK) st = upload_rows(e, w, rows, nh * vd, e->wdt, &d->w_uv, "kv_b_proj (values)", l);
out:
    free(rows);
    free(t);
    return st;
}

/* MLA weights: q (rope rows reordered), the latent's two parts, its norms, kv_b per head. */
static enum moe_status load_mla(struct moe_engine *e, int l)
{
    const struct moe_config *c = &e->cfg;
    const struct moe_layer_w *w = &e->m->layers[l];
    struct eng_layer *d = &e->L[l];
    int nh = c->n_heads, hd = c->head_dim, kvr = c->kv_lora_rank, rd = c->qk_rope_dim;
    int *rows = malloc(sizeof(int) * (size_t)(nh * hd > kvr ? nh * hd : kvr));
    if (!rows) return moe_errorf(MOE_ENOMEM, "layer %d: out of memory", l);
    for (int h = 0; h < nh; h++) {
        for (int j = 0; j < c->qk_nope_dim; j++) rows[h * hd + j] = h * hd + j;
        rope_rows(c, h * hd + c->qk_nope_dim, rd, rows + h * hd + c->qk_nope_dim);
    }
    enum moe_status st = upload_rows(e, &w->wq, rows, nh * hd, e->wdt, &d->wq, "q projection", l);
    for (int j = 0; j < kvr; j++) rows[j] = j;
    if (st == MOE_OK) st = upload_rows(e, &w->kv_a, rows, kvr, e->wdt, &d->kv_a_c, "kv_a_proj_with_mqa", l);
    rope_rows(c, kvr, rd, rows);
    if (st == MOE_OK) st = upload_rows(e, &w->kv_a, rows, rd, e->wdt, &d->kv_a_r, "kv_a_proj_with_mqa", l);
    free(rows);
    void *qn = NULL, *kvn = NULL;
    if (st == MOE_OK) st = upload(e, &w->q_a, e->wdt, &d->q_a, "q_a_proj", l);
    if (st == MOE_OK) st = upload(e, &w->q_a_norm, MOE_DT_F32, &qn, "q_a_layernorm", l);
    d->q_a_norm = qn;
    if (st == MOE_OK) st = upload(e, &w->kv_a_norm, MOE_DT_F32, &kvn, "kv_a_layernorm", l);
    d->kv_a_norm = kvn;
    if (st == MOE_OK && !w->kv_b.data) st = missing(e, l, "kv_b_proj");
    if (st == MOE_OK) st = upload_kv_b(e, &w->kv_b, d, l);
    if (st == MOE_OK) st = upload(e, &w->wo, e->wdt, &d->wo, "o_proj", l);
    bool have_q = d->wq && (!c->q_lora_rank || (d->q_a && d->q_a_norm));
    if (st == MOE_OK && (!have_q || !d->kv_a_norm || (c->qk_nope_dim > 0 && !d->w_ukt) || !d->w_uv || !d->wo))
        st = missing(e, l, "MLA projection");
    return st;
}

#define UPLOAD(wv, dt, dst, what)                                                   \
    do {                                                                            \
        void *_p;                                                                   \
        if ((st = upload(e, &(wv), (dt), &_p, (what), l)) != MOE_OK) goto out_fail; \
        (dst) = _p;                                                                 \
    } while (0)
static enum moe_status missing(const struct moe_engine *e, int layer, const char *what)
{
    if (layer < 0) return moe_errorf(MOE_EFORMAT, "%s: the model has no %s weight", e->m->dir, what);
    return moe_errorf(MOE_EFORMAT, "%s: layer %d has no %s weight", e->m->dir, layer, what);
}
#define NEED(ptr, what)                 \
    do {                                \
        if (!(ptr)) {                   \
            st = missing(e, l, (what)); \
            goto out_fail;              \
        }                               \
    } while (0)

static enum moe_status load_weights(struct moe_engine *e)
{
    const struct moe_model *m = e->m;
    const struct moe_config *c = &e->cfg;
    enum moe_status st = MOE_OK;
    int l = -1;
    UPLOAD(m->embed, e->wdt, e->embed, "embed_tokens");
    NEED(e->embed, "embed_tokens");
    UPLOAD(m->final_norm, MOE_DT_F32, e->final_norm, "final norm");
    NEED(e->final_norm, "final norm");
    if (c->tie_embeddings || !m->lm_head.data || m->lm_head.data == m->embed.data) {
        e->lm_head = e->embed;
    } else {
        UPLOAD(m->lm_head, e->wdt, e->lm_head, "lm_head");
    }
    for (l = 0; l < c->n_layers; l++) {
        const struct moe_layer_w *w = &m->layers[l];
        struct eng_layer *d = &e->L[l];
        UPLOAD(w->attn_norm, MOE_DT_F32, d->attn_norm, "input_layernorm");
        UPLOAD(w->ffn_norm, MOE_DT_F32, d->ffn_norm, "post_attention_layernorm");
        NEED(d->attn_norm, "input_layernorm");
        NEED(d->ffn_norm, "post_attention_layernorm");
        if (c->mla) {
            if ((st = load_mla(e, l)) != MOE_OK) goto out_fail;
        } else if (c->rope_interleave) { /* grouped-query attention turning adjacent pairs (ERNIE-4.5) */
            if (w->wq.data && (st = upload_interleaved(e, &w->wq, c->n_heads, &d->wq, "q_proj", l)) != MOE_OK)
                goto out_fail;
            if (w->wk.data && (st = upload_interleaved(e, &w->wk, c->n_kv_heads, &d->wk, "k_proj", l)) != MOE_OK)
                goto out_fail;
            UPLOAD(w->wv, e->wdt, d->wv, "v_proj");
            UPLOAD(w->wo, e->wdt, d->wo, "o_proj");
            NEED(d->wq && d->wk && d->wv && d->wo, "q/k/v/o projection");
        } else {
            UPLOAD(w->wq, e->wdt, d->wq, "q_proj");
            UPLOAD(w->wk, e->wdt, d->wk, "k_proj");
            UPLOAD(w->wv, e->wdt, d->wv, "v_proj");
            UPLOAD(w->wo, e->wdt, d->wo, "o_proj");
            NEED(d->wq && d->wk && d->wv && d->wo, "q/k/v/o projection");
        }
        if (c->attn_qkv_bias) {
            UPLOAD(w->bq, MOE_DT_F32, d->bq, "q_proj.bias");
            UPLOAD(w->bk, MOE_DT_F32, d->bk, "k_proj.bias");
            UPLOAD(w->bv, MOE_DT_F32, d->bv, "v_proj.bias");
            NEED(d->bq && d->bk && d->bv, "q/k/v bias");
        }
        if (c->qk_norm != MOE_QK_NORM_NONE) {
            UPLOAD(w->q_norm, MOE_DT_F32, d->q_norm, "q_norm");
            UPLOAD(w->k_norm, MOE_DT_F32, d->k_norm, "k_norm");
            NEED(d->q_norm && d->k_norm, "q_norm/k_norm");
        }
        if (c->is_moe[l]) {
            UPLOAD(w->router, e->wdt, d->router, "router gate");
            NEED(d->router, "router gate");
            if (moe_router_has_bias(c->router)) {
                UPLOAD(w->router_bias, MOE_DT_F32, d->router_bias, "e_score_correction_bias");
                NEED(d->router_bias, "e_score_correction_bias");
            }
            if (c->shared_inter > 0) {
                UPLOAD(w->sh_gate, e->wdt, d->sh_gate, "shared_expert.gate_proj");
                UPLOAD(w->sh_up, e->wdt, d->sh_up, "shared_expert.up_proj");
                UPLOAD(w->sh_down, e->wdt, d->sh_down, "shared_expert.down_proj");
                NEED(d->sh_gate && d->sh_up && d->sh_down, "shared expert");
                if (c->shared_gate) {
                    UPLOAD(w->sh_scale, e->wdt, d->sh_scale, "shared_expert_gate");
                    NEED(d->sh_scale, "shared_expert_gate");
                }
            }
        } else {
            UPLOAD(w->d_gate, e->wdt, d->d_gate, "mlp.gate_proj");
            UPLOAD(w->d_up, e->wdt, d->d_up, "mlp.up_proj");
            UPLOAD(w->d_down, e->wdt, d->d_down, "mlp.down_proj");
            NEED(d->d_gate && d->d_up && d->d_down, "dense MLP");
        }
    }
    return MOE_OK;
out_fail:
    return st;
}

static void free_weights(struct moe_engine *e)
{
    if (e->lm_head != e->embed) bfree(e, e->lm_head);
    bfree(e, e->embed);
    bfree(e, e->final_norm);
    if (!e->L) return;
    for (int l = 0; l < e->cfg.n_layers; l++) {
        struct eng_layer *d = &e->L[l];
        void *all[] = { d->attn_norm, d->ffn_norm, d->wq, d->wk, d->wv, d->wo, d->bq, d->bk, d->bv,
                        d->q_norm, d->k_norm, d->router, d->sh_gate, d->sh_up, d->sh_down,
                        d->sh_scale, d->d_gate, d->d_up, d->d_down, d->q_a, d->q_a_norm, d->kv_a_norm,
                        d->kv_a_c, d->kv_a_r, d->w_ukt, d->w_uv, d->router_bias };
        for (size_t i = 0; i < MOE_ARRAY_LEN(all); i++) bfree(e, all[i]);
    }
}

/* The widest per-head piece MLA moves through head-major scratch: nope, kv_lora_rank or v (0 without MLA). */
static size_t mla_head_width(const struct moe_config *c)
{
    int w = c->qk_nope_dim > c->kv_lora_rank ? c->qk_nope_dim : c->kv_lora_rank;
    return c->mla ? (size_t)(w > c->v_head_dim ? w : c->v_head_dim) : 0;
}

static enum moe_status check_config(const struct moe_config *c)
{
    if (c->n_layers <= 0 || c->n_layers > MOE_MAX_LAYERS)
        return moe_errorf(MOE_EINVAL, "engine: num_hidden_layers = %d", c->n_layers);
    if (c->hidden <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads)
        return moe_errorf(MOE_EINVAL, "engine: num_attention_heads = %d is not a multiple of "
                          "num_key_value_heads = %d", c->n_heads, c->n_kv_heads);
    if (c->mla && (c->head_dim <= 0 || c->head_dim > 4096 || c->qk_rope_dim <= 0 || c->qk_rope_dim % 2))
        return moe_errorf(MOE_EINVAL, "engine: qk_rope_head_dim = %d must be even and qk_nope_head_dim + "
                          "qk_rope_head_dim = %d <= 4096", c->qk_rope_dim, c->head_dim);
    /* RoPE turns the first rope_dim dims of a head (all of it, except GLM-4.5's partial rotary),
     * except under MLA, which turns only its last qk_rope_dim dims */
    if (!c->mla && (c->head_dim <= 0 || c->head_dim > 4096 || c->rope_dim <= 0 || c->rope_dim % 2 ||
                    c->rope_dim > c->head_dim))
        return moe_errorf(MOE_EINVAL, "engine: head_dim = %d must be <= 4096 and its rotated dims (%d) even",
                          c->head_dim, c->rope_dim);
    if (c->vocab <= 0) return moe_errorf(MOE_EINVAL, "engine: vocab_size = %d", c->vocab);
    bool any_moe = false;
    for (int l = 0; l < c->n_layers; l++) any_moe |= c->is_moe[l];
    if (any_moe && (c->n_experts <= 0 || c->top_k <= 0 || c->top_k > c->n_experts || c->expert_inter <= 0))
        return moe_errorf(MOE_EINVAL, "engine: num_experts = %d, num_experts_per_tok = %d, "
                          "moe_intermediate_size = %d", c->n_experts, c->top_k, c->expert_inter);
    return MOE_OK;
}

static size_t szmul(size_t a, size_t b, size_t c, bool *ovf)
{
    uint64_t r;
    if (!moe_mul_u64(a, b, &r) || !moe_mul_u64(r, c, &r) || r > SIZE_MAX / 8) {
        *ovf = true;
        return 0;
    }
    return (size_t)r;
}

struct moe_engine *moe_engine_create(const struct moe_model *m, const struct moe_engine_params *p)
{
    enum moe_status st;
    struct moe_engine *e = calloc(1, sizeof(*e));
    if (!e) {
        moe_errorf(MOE_ENOMEM, "engine: out of memory");
        return NULL;
    }
    e->m = m;
    e->cfg = m->cfg;
    const struct moe_config *c = &e->cfg;
    if ((st = check_config(c)) != MOE_OK) goto out_fail;
    e->max_seqs = p->max_seqs > 0 ? p->max_seqs : 1;
    e->max_ctx = p->max_ctx > 0 ? p->max_ctx : c->max_pos;
    e->max_batch = p->max_batch_tokens > 0 ? p->max_batch_tokens : 512;
    if (p->max_seqs < 0 || e->max_seqs > 65536) {
        st = moe_errorf(MOE_EINVAL, "engine: max_seqs = %d (1..65536)", p->max_seqs);
        goto out_fail;
    }
    if (p->max_ctx < 0 || e->max_ctx > c->max_pos || e->max_ctx <= 0) {
        st = moe_errorf(MOE_EINVAL, "engine: max_ctx = %d must be in 1..%d (max_position_embeddings)",
                        p->max_ctx, c->max_pos);
        goto out_fail;
    }
    if (p->max_batch_tokens < 0 || e->max_batch > 1 << 20) {
        st = moe_errorf(MOE_EINVAL, "engine: max_batch_tokens = %d (1..1048576)", p->max_batch_tokens);
        goto out_fail;
    }
    if (p->n_threads < 0 || p->n_threads > MOE_CPU_MAX_THREADS) {
        st = moe_errorf(MOE_EINVAL, "engine: n_threads = %d (0..%d)", p->n_threads, MOE_CPU_MAX_THREADS);
        goto out_fail;
    }
    if (p->kv_dtype != MOE_DT_F32 && p->kv_dtype != MOE_DT_BF16) {
        st = moe_errorf(MOE_EINVAL, "engine: KV cache dtype %s (F32 or BF16)", moe_dtype_name(p->kv_dtype));
        goto out_fail;
    }
    e->kv_dt = p->kv_dtype;
    e->hooks = p->hooks;

    if (p->backend) {
        e->be = p->backend;
    } else {
        struct moe_backend_cpu_params bp = { .n_threads = p->n_threads, .use_blas = p->cpu_blas };
        e->be = moe_backend_cpu_create(&bp);
        if (!e->be) {
            st = moe_error_prefix(MOE_ENOMEM, "engine");
            goto out_fail;
        }
        e->own_be = true;
    }
    if ((c->mla && !e->be->ops->copy_blocks) ||
        (moe_router_is_grouped(c->router) && !e->be->ops->router_grouped)) {
        st = moe_errorf(MOE_ENOTSUP, "engine: the %s backend does not run %s (multi-head latent attention, "
                        "grouped routing) yet; use the cpu backend", e->be->name, c->model_type);
        goto out_fail;
    }
    e->wdt = e->be->weight_dtype == MOE_DT_BF16 ? MOE_DT_BF16 : MOE_DT_F32;
    if (e->wdt == MOE_DT_BF16 && e->be->exact_weights && !matrices_bf16(m)) e->wdt = MOE_DT_F32;

    e->H = c->hidden;
    e->Q = c->n_heads * c->head_dim;
    /* MLA caches one row per token, the latent and the rotated key, for keys and values alike */
    e->KV = kv_row(c);
    e->E = c->n_experts > 0 ? c->n_experts : 1;
    e->K = c->top_k > 0 ? c->top_k : 1;
    e->V = c->vocab;
    e->I = c->expert_inter > 0 ? c->expert_inter : 1;
    e->D = c->dense_inter > c->shared_inter ? c->dense_inter : c->shared_inter;
    if (e->D < 1) e->D = 1;

    moe_config_rope(c, c->rope_dim, e->rope_inv_freq, &e->rope_scale);
    e->attn_scale = moe_config_attn_scale(c);

    e->L = calloc((size_t)c->n_layers, sizeof(*e->L));
    e->seq_used = calloc((size_t)e->max_seqs, sizeof(bool));
    e->seq_len = calloc((size_t)e->max_seqs, sizeof(int));
    e->seen_seq = calloc((size_t)e->max_seqs, sizeof(int));
    if (!e->L || !e->seq_used || !e->seq_len || !e->seen_seq) {
        st = moe_errorf(MOE_ENOMEM, "engine: out of memory for %d sequence slots", e->max_seqs);
        goto out_fail;
    }
    if ((st = load_weights(e)) != MOE_OK) goto out_fail;

    bool ovf = false;
    size_t N = (size_t)e->max_batch, NK = N * (size_t)e->K;
    size_t kv_bytes = szmul((size_t)c->n_layers * (size_t)e->max_seqs, (size_t)e->max_ctx,
                            (size_t)e->KV * moe_dtype_size(e->kv_dt), &ovf);
    if (ovf) {
        st = moe_errorf(MOE_ENOMEM, "engine: KV cache size overflows (lower max_seqs or max_ctx)");
        goto out_fail;
    }
    e->kc = balloc(e, kv_bytes, "K cache");
    e->vc = c->mla ? e->kc : balloc(e, kv_bytes, "V cache");
    if (!e->kc || !e->vc) {
        st = moe_errorf(MOE_ENOMEM, "engine: cannot allocate %s%zu bytes of KV cache "
                        "(lower max_seqs = %d or max_ctx = %d)", c->mla ? "" : "2 x ", kv_bytes, e->max_seqs,
                        e->max_ctx);
        goto out_fail;
    }
    MOE_INFO("engine: KV cache %.1f MiB in %s (%zu bytes per token over %d layers, %d slots x %d positions)",
             (double)kv_bytes * (c->mla ? 1 : 2) / (1 << 20), moe_dtype_name(e->kv_dt),
             moe_engine_kv_bytes_per_token(c, e->kv_dt), c->n_layers, e->max_seqs, e->max_ctx);
    struct { void **p; size_t bytes; const char *what; } bufs[] = {
        { (void **)&e->d_tok, N * 4, "token ids" },       { (void **)&e->d_seq, N * 4, "seq ids" },
        { (void **)&e->d_pos, N * 4, "positions" },       { (void **)&e->d_rows, N * 4, "logit rows" },
        { (void **)&e->h, szmul(N, e->H, 4, &ovf), "hidden" },
        { (void **)&e->xn, szmul(N, e->H, 4, &ovf), "normed hidden" },
        { (void **)&e->o, szmul(N, e->H, 4, &ovf), "block output" },
        { (void **)&e->q, szmul(N, e->Q, 4, &ovf), "q" },
        { (void **)&e->att, szmul(N, e->Q, 4, &ovf), "attention output" },
        { (void **)&e->kx, szmul(N, e->KV, 4, &ovf), "k" },
        { (void **)&e->vx, szmul(N, e->KV, 4, &ovf), "v" },
        { (void **)&e->rl, szmul(N, e->E, 4, &ovf), "router logits" },
        { (void **)&e->d_ids, NK * 4, "expert ids" },     { (void **)&e->d_src, NK * 4, "permutation" },
        { (void **)&e->d_inv, NK * 4, "inverse permutation" },
        { (void **)&e->rw, NK * 4, "routing weights" },
        { (void **)&e->xp, szmul(NK, e->H, 4, &ovf), "permuted tokens" },
        { (void **)&e->yp, szmul(NK, e->H, 4, &ovf), "expert outputs" },
        { (void **)&e->mg, szmul(N, e->D, 4, &ovf), "mlp gate" },
        { (void **)&e->mu, szmul(N, e->D, 4, &ovf), "mlp up" },
        { (void **)&e->sd, szmul(N, e->H, 4, &ovf), "shared expert output" },
        { (void **)&e->sg, N * 4, "shared expert gate" },
        /* MLA scratch (sizes 0, so a few bytes each, without MLA) */
        { (void **)&e->mq_a, szmul(N, c->q_lora_rank, 4, &ovf), "q latent" },
        { (void **)&e->m_ckv, szmul(N, c->kv_lora_rank, 4, &ovf), "kv latent" },
        { (void **)&e->m_krope, szmul(N, c->qk_rope_dim, 4, &ovf), "k rope" },
        { (void **)&e->m_lat, szmul(N, c->mla ? e->KV : 0, 4, &ovf), "latent rows" },
        { (void **)&e->m_ql, szmul(N, c->mla ? (size_t)c->n_heads * e->KV : 0, 4, &ovf), "latent queries" },
        { (void **)&e->m_attl, szmul(N, c->mla ? (size_t)c->n_heads * e->KV : 0, 4, &ovf), "latent attention" },
        { (void **)&e->m_hp, szmul(N, (size_t)c->n_heads * mla_head_width(c), 4, &ovf), "per-head scratch" },
        { (void **)&e->m_hp2, szmul(N, (size_t)c->n_heads * mla_head_width(c), 4, &ovf), "per-head scratch" },
        { (void **)&e->m_attv, szmul(N, (size_t)c->n_heads * c->v_head_dim, 4, &ovf), "attention values" },
    };
    if (ovf) {
        st = moe_errorf(MOE_ENOMEM, "engine: buffer sizes overflow (lower max_batch_tokens = %d)",
                        e->max_batch);
        goto out_fail;
    }
    for (size_t i = 0; i < MOE_ARRAY_LEN(bufs); i++) {
        *bufs[i].p = balloc(e, bufs[i].bytes, bufs[i].what);
        if (!*bufs[i].p) {
            st = moe_error_prefix(MOE_ENOMEM, "engine (lower max_batch_tokens = %d)", e->max_batch);
            goto out_fail;
        }
    }
    if (!e->be->host_visible) {
        e->d_logits = balloc(e, szmul(N, e->V, 4, &ovf), "logits");
        e->h_rl = malloc(N * (size_t)e->E * 4);
        e->h_act = malloc(N * (size_t)(e->H > e->E ? e->H : e->E) * 4);
        if (!e->d_logits || !e->h_rl || !e->h_act) {
            st = moe_errorf(MOE_ENOMEM, "engine: cannot allocate logits/staging for %zu tokens", N);
            goto out_fail;
        }
    }
    e->h_tok = malloc(N * 4);
    e->h_seq = malloc(N * 4);
    e->h_pos = malloc(N * 4);
    e->h_rows = malloc(N * 4);
    e->h_ids = malloc(NK * 4);
    e->h_src = malloc(NK * 4);
    e->h_inv = malloc(NK * 4);
    e->h_rw = malloc(NK * 4);
    e->cnt = malloc(sizeof(int) * (size_t)e->E);
    e->first = malloc(sizeof(int) * ((size_t)e->E + 1));
    e->distinct = malloc(sizeof(int) * (size_t)e->E);
    e->goff = malloc(sizeof(int) * ((size_t)e->E + 1));
    e->refs = malloc(sizeof(*e->refs) * (size_t)e->E);
    e->bexp = malloc(sizeof(*e->bexp) * (size_t)e->E);
    if (!e->h_tok || !e->h_seq || !e->h_pos || !e->h_rows || !e->h_ids || !e->h_src || !e->h_inv ||
        !e->h_rw || !e->cnt || !e->first || !e->distinct || !e->goff || !e->refs || !e->bexp) {
        st = moe_errorf(MOE_ENOMEM, "engine: out of memory for staging buffers");
        goto out_fail;
    }

    if (p->provider) {
        e->prov = p->provider;
    } else {
        e->prov = moe_provider_resident_create(m, e->wdt);
        if (!e->prov) {
            st = moe_error_prefix(MOE_ENOMEM, "engine");
            goto out_fail;
        }
        e->own_prov = true;
    }
    if ((st = moe_model_check_files(m)) != MOE_OK) /* the weights were read from it above */
        goto out_fail;
    return e;
out_fail:
    moe_engine_destroy(e);
    (void)st;
    return NULL;
}

void moe_engine_destroy(struct moe_engine *e)
{
    if (!e) return;
    if (e->be) {
        free_weights(e);
        void *bufs[] = { e->kc, e->vc != e->kc ? e->vc : NULL, e->d_tok, e->d_seq, e->d_pos, e->d_rows, e->h,
                         e->xn, e->o, e->q, e->att, e->kx, e->vx, e->rl, e->d_ids, e->d_src, e->d_inv, e->rw,
                         e->xp, e->yp, e->mg, e->mu, e->sd, e->sg, e->d_logits, e->mq_a, e->m_ckv, e->m_krope,
                         e->m_lat, e->m_ql, e->m_attl, e->m_hp, e->m_hp2, e->m_attv };
        for (size_t i = 0; i < MOE_ARRAY_LEN(bufs); i++) bfree(e, bufs[i]);
        if (e->own_be) moe_backend_destroy(e->be);
    }
    if (e->own_prov) moe_provider_destroy(e->prov);
    free(e->L);
    free(e->seq_used);
    free(e->seq_len);
    free(e->seen_seq);
    free(e->h_rl);
    free(e->h_act);
    free(e->h_tok);
    free(e->h_seq);
    free(e->h_pos);
    free(e->h_rows);
    free(e->h_ids);
    free(e->h_src);
    free(e->h_inv);
    free(e->h_rw);
    free(e->cnt);
    free(e->first);
    free(e->distinct);
    free(e->goff);
    free(e->refs);
    free(e->bexp);
    free(e);
}

const struct moe_model *moe_engine_model(const struct moe_engine *e) { return e->m; }
struct moe_backend *moe_engine_backend(const struct moe_engine *e) { return e->be; }
struct moe_provider *moe_engine_provider(const struct moe_engine *e) { return e->prov; }
int moe_engine_max_ctx(const struct moe_engine *e) { return e->max_ctx; }
int moe_engine_max_batch(const struct moe_engine *e) { return e->max_batch; }
int moe_engine_max_seqs(const struct moe_engine *e) { return e->max_seqs; }
enum moe_dtype moe_engine_weight_dtype(const struct moe_engine *e) { return e->wdt; }

void moe_engine_set_hooks(struct moe_engine *e, const struct moe_engine_hooks *h)
{
    if (h)
        e->hooks = *h;
    else
        memset(&e->hooks, 0, sizeof(e->hooks));
}

/* The slot table is read by moe_engine_kv_usage from other threads (metrics): its writes are
 * relaxed atomic stores. */
static void set_used(struct moe_engine *e, int seq, bool used)
{
    __atomic_store_n(&e->seq_used[seq], used, __ATOMIC_RELAXED);
}

static void set_len(struct moe_engine *e, int seq, int len)
{
    __atomic_store_n(&e->seq_len[seq], len, __ATOMIC_RELAXED);
}

int moe_engine_seq_alloc(struct moe_engine *e)
{
    for (int s = 0; s < e->max_seqs; s++)
        if (!e->seq_used[s]) {
            set_used(e, s, true);
            set_len(e, s, 0);
            return s;
        }
    return -1;
}

void moe_engine_seq_free(struct moe_engine *e, int seq)
{
    if (seq < 0 || seq >= e->max_seqs) return;
    set_used(e, seq, false); /* seq_len stays: what moe_engine_seq_claim may keep */
}

int moe_engine_seq_claim(struct moe_engine *e, int seq, int keep)
{
    if (seq < 0 || seq >= e->max_seqs || e->seq_used[seq] || keep < 0 || keep > e->seq_len[seq]) return -1;
    set_used(e, seq, true);
    set_len(e, seq, keep);
    return seq;
}

/* Layer l's part of a cache (kc or vc). */
static void *kv_layer(const struct moe_engine *e, void *cache, int l)
{
    return (char *)cache + (size_t)l * (size_t)e->max_seqs * (size_t)e->max_ctx * (size_t)e->KV *
                               moe_dtype_size(e->kv_dt);
}

enum moe_status moe_engine_seq_fork(struct moe_engine *e, int dst, int src, int n)
{
    if (dst < 0 || dst >= e->max_seqs || src < 0 || src >= e->max_seqs || dst == src || !e->seq_used[dst] ||
        !e->seq_used[src] || e->seq_len[dst] != 0 || n < 0 || n > e->seq_len[src])
        return moe_errorf(MOE_EINVAL, "engine: fork of %d tokens from sequence %d (%d cached) into %d", n, src,
                          src >= 0 && src < e->max_seqs ? e->seq_len[src] : -1, dst);
    const struct moe_backend_ops *o = e->be->ops;
    size_t row = (size_t)e->KV * moe_dtype_size(e->kv_dt), bytes = (size_t)n * row;
    for (int l = 0; l < e->cfg.n_layers && bytes; l++)
        for (int kv = 0; kv < (e->vc != e->kc ? 2 : 1); kv++) {
            char *base = kv_layer(e, kv ? e->vc : e->kc, l);
            enum moe_status st = o->copy_d2d(e->be->ctx, base + (size_t)dst * (size_t)e->max_ctx * row,
                                             base + (size_t)src * (size_t)e->max_ctx * row, bytes);
            if (st != MOE_OK) return moe_error_prefix(st, "engine: fork of sequence %d into %d", src, dst);
        }
    set_len(e, dst, n);
    return MOE_OK;
}

int moe_engine_seq_len(const struct moe_engine *e, int seq)
{
    if (seq < 0 || seq >= e->max_seqs || !e->seq_used[seq]) return 0;
    return e->seq_len[seq];
}

void moe_engine_kv_usage(const struct moe_engine *e, int *seqs_used, int64_t *tokens_cached)
{
    /* Relaxed atomic loads: the slot table is written by the engine's thread. */
    int n = 0;
    int64_t tok = 0;
    for (int s = 0; s < e->max_seqs; s++)
        if (__atomic_load_n(&e->seq_used[s], __ATOMIC_RELAXED)) {
            n++;
            tok += __atomic_load_n(&e->seq_len[s], __ATOMIC_RELAXED);
        }
    if (seqs_used) *seqs_used = n;
    if (tokens_cached) *tokens_cached = tok;
}

/* ---- forward ------------------------------------------------------------------- */

#define BE(call)                                 \
    do {                                         \
        if ((st = (call)) != MOE_OK) goto out;   \
    } while (0)

/* Hand x [n, dim] (backend memory) to a host hook. */
static enum moe_status host_view(struct moe_engine *e, const float *x, size_t count, float *stage,
                                 const float **out)
{
    if (e->be->host_visible) {
        *out = x;
        return MOE_OK;
    }
    enum moe_status st = e->be->ops->copy_d2h(e->be->ctx, stage, x, count * sizeof(float));
    if (st == MOE_OK) st = e->be->ops->synchronize(e->be->ctx);
    *out = stage;
    return st;
}

static enum moe_status hook_hidden(struct moe_engine *e, int j, int n, const float *x)
{
    if (!e->hooks.on_hidden || (e->hooks.hidden_final_only && j != e->cfg.n_layers)) return MOE_OK;
    const float *h;
    enum moe_status st = host_view(e, x, (size_t)n * e->H, e->h_act, &h);
    if (st == MOE_OK) e->hooks.on_hidden(e->hooks.ud, j, n, h);
    return st;
}

static enum moe_status validate_batch(struct moe_engine *e, const struct moe_batch *b)
{
    if (b->n < 0 || b->n > e->max_batch)
        return moe_errorf(MOE_ERANGE, "engine: batch of %d tokens (max_batch_tokens = %d)", b->n,
                          e->max_batch);
    if (b->n == 0) return MOE_OK;
    if (!b->tokens || !b->seq || !b->pos)
        return moe_errorf(MOE_EINVAL, "engine: batch without tokens, seq or pos arrays");
    for (int s = 0; s < e->max_seqs; s++) e->seen_seq[s] = -1; /* next expected position */
    for (int i = 0; i < b->n; i++) {
        int s = b->seq[i], t = b->tokens[i], p = b->pos[i];
        if (t < 0 || t >= e->V)
            return moe_errorf(MOE_ERANGE, "engine: batch token %d: id %d outside the vocabulary [0, %d)",
                              i, t, e->V);
        if (s < 0 || s >= e->max_seqs || !e->seq_used[s])
            return moe_errorf(MOE_EINVAL, "engine: batch token %d: sequence %d is not an allocated slot",
                              i, s);
        int want = e->seen_seq[s] < 0 ? e->seq_len[s] : e->seen_seq[s];
        if (p != want)
            return moe_errorf(MOE_EINVAL, "engine: batch token %d: sequence %d position %d, expected %d "
                              "(positions continue the cache, consecutively)", i, s, p, want);
        if (p >= e->max_ctx)
            return moe_errorf(MOE_ERANGE, "engine: sequence %d: position %d reaches max_ctx = %d", s, p,
                              e->max_ctx);
        e->seen_seq[s] = p + 1;
    }
    return MOE_OK;
}

/* A provider's failure at layer l, named by layer unless its message already is. */
static enum moe_status layer_error(enum moe_status st, int l)
{
    char named[32];
    int n = snprintf(named, sizeof(named), "layer %d ", l);
    if (!strncmp(moe_last_error(), named, (size_t)n)) return st;
    return moe_error_prefix(st, "layer %d experts", l);
}

/* MoE block of layer l on e->xn [n, H]; result in e->o [n, H]. */
static enum moe_status moe_block(struct moe_engine *e, int l, int n)
{
    const struct moe_backend_ops *o = e->be->ops;
    void *bc = e->be->ctx;
    const struct eng_layer *w = &e->L[l];
    const struct moe_config *c = &e->cfg;
    int H = e->H, E = e->E, K = e->K, nk = n * K;
    enum moe_status st = MOE_OK;

    if (e->hooks.on_moe_input) {
        const float *x;
        BE(host_view(e, e->xn, (size_t)n * H, e->h_act, &x));
        e->hooks.on_moe_input(e->hooks.ud, l, n, x);
    }
    BE(o->linear(bc, e->xn, w->router, e->wdt, NULL, n, H, E, e->rl));
    if (moe_router_is_grouped(c->router))
        BE(o->router_grouped(bc, e->rl, w->router_bias, n, E, K, c->router, c->n_group, c->topk_group,
                             c->norm_topk_prob, c->routed_scale, e->d_ids, e->rw));
    else
        BE(o->router(bc, e->rl, n, E, K, c->router, c->norm_topk_prob, e->d_ids, e->rw));
    BE(o->copy_d2h(bc, e->h_ids, e->d_ids, (size_t)nk * 4));
    if (e->hooks.on_route && !e->be->host_visible) {
        BE(o->copy_d2h(bc, e->h_rw, e->rw, (size_t)nk * 4));
        BE(o->copy_d2h(bc, e->h_rl, e->rl, (size_t)n * E * 4));
    }
    BE(o->synchronize(bc));
    if (e->hooks.on_route) {
        const float *rl = e->be->host_visible ? e->rl : e->h_rl;
        const float *rw = e->be->host_visible ? e->rw : e->h_rw;
        e->hooks.on_route(e->hooks.ud, l, n, rl, e->h_ids, rw);
    }

    /* Plan: experts in ascending id; within an expert, rows in (token, rank) order. */
    st = moe_moe_plan(e->h_ids, n, K, E, e->cnt, e->first, e->h_src, e->h_inv);
    if (st != MOE_OK) return moe_error_prefix(MOE_EDEVICE, "engine: layer %d router", l);
    int nd = 0;
    for (int x = 0; x < E; x++)
        if (e->cnt[x]) e->distinct[nd++] = x;
    BE(o->copy_h2d(bc, e->d_src, e->h_src, (size_t)nk * 4));
    BE(o->copy_h2d(bc, e->d_inv, e->h_inv, (size_t)nk * 4));
    BE(o->gather_rows(bc, e->xn, e->d_src, nk, H, e->xp));

    /* Experts through the provider, at most max_pinned at a time. */
    int chunk = e->prov->ops->max_pinned ? e->prov->ops->max_pinned(e->prov->self) : 0;
    if (chunk <= 0 || chunk > nd) chunk = nd;
    for (int c0 = 0; c0 < nd; c0 += chunk) {
        int m = nd - c0 < chunk ? nd - c0 : chunk;
        st = e->prov->ops->acquire(e->prov->self, l, m, e->distinct + c0, e->refs);
        if (st != MOE_OK) return layer_error(st, l);
        /* one backend call per run of experts of the same dtype */
        for (int g0 = 0; g0 < m;) {
            enum moe_dtype dt = e->refs[g0].dtype;
            int g1 = g0;
            int row0 = e->first[e->distinct[c0 + g0]];
            while (g1 < m && e->refs[g1].dtype == dt) {
                e->bexp[g1 - g0] = (struct moe_backend_expert){ e->refs[g1].gate, e->refs[g1].up,
                                                                e->refs[g1].down };
                e->goff[g1 - g0] = e->first[e->distinct[c0 + g1]] - row0;
                g1++;
            }
            e->goff[g1 - g0] = e->first[e->distinct[c0 + g1 - 1] + 1] - row0;
            st = o->moe_experts(bc, e->xp + (size_t)row0 * H, g1 - g0, e->goff, e->bexp, dt, H, e->I,
                                e->yp + (size_t)row0 * H);
            if (st != MOE_OK) break;
            g0 = g1;
        }
        /* the experts may be evicted after release: wait for their readers */
        if (st == MOE_OK) st = o->synchronize(bc);
        e->prov->ops->release(e->prov->self, l);
        if (st != MOE_OK) goto out;
    }
    BE(o->moe_combine(bc, e->yp, e->d_inv, e->rw, n, K, H, false, e->o));

    if (c->shared_inter > 0) {
        int S = c->shared_inter;
        BE(o->linear(bc, e->xn, w->sh_gate, e->wdt, NULL, n, H, S, e->mg));
        BE(o->linear(bc, e->xn, w->sh_up, e->wdt, NULL, n, H, S, e->mu));
        BE(o->swiglu(bc, e->mg, e->mu, e->mg, (size_t)n * S));
        BE(o->linear(bc, e->mg, w->sh_down, e->wdt, NULL, n, S, H, e->sd));
        if (w->sh_scale) {
            BE(o->linear(bc, e->xn, w->sh_scale, e->wdt, NULL, n, H, 1, e->sg));
            BE(o->sigmoid_scale_add(bc, e->sg, e->sd, n, H, e->o));
        } else {
            BE(o->add(bc, e->o, e->sd, (size_t)n * H));
        }
    }
out:
    return st;
}

static enum moe_status dense_mlp(struct moe_engine *e, int l, int n)
{
    const struct moe_backend_ops *o = e->be->ops;
    void *bc = e->be->ctx;
    const struct eng_layer *w = &e->L[l];
    int H = e->H, D = e->cfg.dense_inter;
    enum moe_status st = MOE_OK;
    BE(o->linear(bc, e->xn, w->d_gate, e->wdt, NULL, n, H, D, e->mg));
    BE(o->linear(bc, e->xn, w->d_up, e->wdt, NULL, n, H, D, e->mu));
    BE(o->swiglu(bc, e->mg, e->mu, e->mg, (size_t)n * D));
    BE(o->linear(bc, e->mg, w->d_down, e->wdt, NULL, n, D, H, e->o));
out:
    return st;
}

/* pos_max: the batch's largest position (the backend's attention bound) */
static enum moe_status attention_block(struct moe_engine *e, int l, int n, int pos_max)
{
    const struct moe_backend_ops *o = e->be->ops;
    void *bc = e->be->ctx;
    const struct eng_layer *w = &e->L[l];
    const struct moe_config *c = &e->cfg;
    int H = e->H, Q = e->Q, KV = e->KV, hd = c->head_dim;
    enum moe_status st = MOE_OK;
    BE(o->rmsnorm(bc, e->h, w->attn_norm, e->xn, n, H, c->rms_eps));
    BE(o->linear(bc, e->xn, w->wq, e->wdt, w->bq, n, H, Q, e->q));
    BE(o->linear(bc, e->xn, w->wk, e->wdt, w->bk, n, H, KV, e->kx));
    BE(o->linear(bc, e->xn, w->wv, e->wdt, w->bv, n, H, KV, e->vx));
    if (c->qk_norm == MOE_QK_NORM_HEAD) {
        BE(o->rmsnorm(bc, e->q, w->q_norm, e->q, n * c->n_heads, hd, c->rms_eps));
        BE(o->rmsnorm(bc, e->kx, w->k_norm, e->kx, n * c->n_kv_heads, hd, c->rms_eps));
    } else if (c->qk_norm == MOE_QK_NORM_FULL) {
        BE(o->rmsnorm(bc, e->q, w->q_norm, e->q, n, Q, c->rms_eps));
        BE(o->rmsnorm(bc, e->kx, w->k_norm, e->kx, n, KV, c->rms_eps));
    }
    BE(o->rope(bc, e->q, e->d_pos, n, c->n_heads, hd, c->rope_dim, e->rope_inv_freq, e->rope_scale));
    BE(o->rope(bc, e->kx, e->d_pos, n, c->n_kv_heads, hd, c->rope_dim, e->rope_inv_freq, e->rope_scale));
    void *kc = kv_layer(e, e->kc, l), *vc = kv_layer(e, e->vc, l);
    BE(o->kv_store(bc, e->kx, e->vx, kc, vc, e->kv_dt, e->d_seq, e->d_pos, n, e->max_ctx, KV));
    BE(o->attention(bc, e->q, kc, vc, e->kv_dt, e->d_seq, e->d_pos, n, pos_max, c->n_heads, c->n_kv_heads, hd,
                    e->max_ctx, c->sliding[l] ? c->sliding_window : 0, e->attn_scale, e->att));
    BE(o->linear(bc, e->att, w->wo, e->wdt, NULL, n, Q, H, e->o));
    BE(o->add(bc, e->h, e->o, (size_t)n * H));
out:
    return st;
}

/* transformers' q_a_layernorm and kv_a_layernorm keep RMSNorm's default epsilon */
#define MLA_NORM_EPS 1e-6f

/* y[h] = x[h] @ w[h]^T for every head h, over head-major [nh][n][in] -> [nh][n][out] (w [nh][out][in]):
 * one grouped op where the backend has it, a linear per head otherwise (the same results). */
static enum moe_status head_linears(struct moe_engine *e, const float *x, const void *w, int n, int in, int out,
                                    float *y)
{
    const struct moe_backend_ops *o = e->be->ops;
    if (o->linear_groups) return o->linear_groups(e->be->ctx, x, w, e->wdt, e->cfg.n_heads, n, in, out, y);
    size_t wsz = moe_dtype_size(e->wdt);
    for (int h = 0; h < e->cfg.n_heads; h++) {
        enum moe_status st = o->linear(e->be->ctx, x + (size_t)h * n * in, (const char *)w + (size_t)h * out * in * wsz,
                                       e->wdt, NULL, n, in, out, y + (size_t)h * n * out);
        if (st != MOE_OK) return st;
    }
    return MOE_OK;
}

/* DeepSeek's multi-head latent attention with the cache holding what transformers
 * expands: per token one row [latent (kv_lora_rank) | rotated key (qk_rope_dim)],
 * shared by the heads.  Each head's query is taken into that space (its nope part
 * times the head's k rows of kv_b_proj, transposed; its rope part as it is), so
 * q.k = q_nope.(W_uk c) + q_rope.k_rope is one dot product with the row; the
 * weighted sum of the rows' latents, times the head's v rows of kv_b_proj, is
 * the head's value.  The cache row (kv_lora_rank + qk_rope_dim floats per layer)
 * is n_heads * (nope + rope + v) / (kv_lora_rank + rope) times smaller than the
 * expanded keys and values (DeepSeek-V3: 40960 / 576 = 71x). */
static enum moe_status mla_block(struct moe_engine *e, int l, int n, int pos_max)
{
    const struct moe_backend_ops *o = e->be->ops;
    void *bc = e->be->ctx;
    const struct eng_layer *w = &e->L[l];
    const struct moe_config *c = &e->cfg;
    int H = e->H, Q = e->Q, KV = e->KV, nh = c->n_heads, hd = c->head_dim, nope = c->qk_nope_dim;
    int rd = c->qk_rope_dim, vd = c->v_head_dim, qr = c->q_lora_rank, kvr = c->kv_lora_rank;
    enum moe_status st = MOE_OK;
    BE(o->rmsnorm(bc, e->h, w->attn_norm, e->xn, n, H, c->rms_eps));
    if (qr) {
        BE(o->linear(bc, e->xn, w->q_a, e->wdt, NULL, n, H, qr, e->mq_a));
        BE(o->rmsnorm(bc, e->mq_a, w->q_a_norm, e->mq_a, n, qr, MLA_NORM_EPS));
        BE(o->linear(bc, e->mq_a, w->wq, e->wdt, NULL, n, qr, Q, e->q));
    } else {
        BE(o->linear(bc, e->xn, w->wq, e->wdt, NULL, n, H, Q, e->q));
    }
    /* RoPE on the last rd dims of every head: from q + nope, heads hd apart */
    BE(o->rope(bc, e->q + nope, e->d_pos, n, nh, hd, rd, e->rope_inv_freq, e->rope_scale));
    /* the cache row: normed latent, rotated key */
    BE(o->linear(bc, e->xn, w->kv_a_c, e->wdt, NULL, n, H, kvr, e->m_ckv));
    BE(o->linear(bc, e->xn, w->kv_a_r, e->wdt, NULL, n, H, rd, e->m_krope));
    BE(o->rmsnorm(bc, e->m_ckv, w->kv_a_norm, e->m_ckv, n, kvr, MLA_NORM_EPS));
    BE(o->rope(bc, e->m_krope, e->d_pos, n, 1, rd, rd, e->rope_inv_freq, e->rope_scale));
    BE(o->copy_blocks(bc, e->m_ckv, kvr, 0, e->m_lat, KV, 0, n, 1, kvr));
    BE(o->copy_blocks(bc, e->m_krope, rd, 0, e->m_lat + kvr, KV, 0, n, 1, rd));
    void *kc = kv_layer(e, e->kc, l);
    BE(o->kv_store(bc, e->m_lat, e->m_lat, kc, kc, e->kv_dt, e->d_seq, e->d_pos, n, e->max_ctx, KV));
    /* queries in latent space: [q_nope W_uk | q_rope] per head */
    if (nope > 0) {
        BE(o->copy_blocks(bc, e->q, Q, hd, e->m_hp, nope, n * nope, n, nh, nope));
        BE(head_linears(e, e->m_hp, w->w_ukt, n, nope, kvr, e->m_hp2));
        BE(o->copy_blocks(bc, e->m_hp2, kvr, n * kvr, e->m_ql, nh * KV, KV, n, nh, kvr));
    } else {
        BE(o->memset0(bc, e->m_ql, (size_t)n * nh * KV * sizeof(float)));
    }
    BE(o->copy_blocks(bc, e->q + nope, Q, hd, e->m_ql + kvr, nh * KV, KV, n, nh, rd));
    BE(o->attention(bc, e->m_ql, kc, kc, e->kv_dt, e->d_seq, e->d_pos, n, pos_max, nh, 1, KV, e->max_ctx, 0,
                    e->attn_scale, e->m_attl));
    /* each head's values: its weighted latent times W_uv^T */
    BE(o->copy_blocks(bc, e->m_attl, nh * KV, KV, e->m_hp, kvr, n * kvr, n, nh, kvr));
    BE(head_linears(e, e->m_hp, w->w_uv, n, kvr, vd, e->m_hp2));
    BE(o->copy_blocks(bc, e->m_hp2, vd, n * vd, e->m_attv, nh * vd, vd, n, nh, vd));
    BE(o->linear(bc, e->m_attv, w->wo, e->wdt, NULL, n, nh * vd, H, e->o));
    BE(o->add(bc, e->h, e->o, (size_t)n * H));
out:
    return st;
}

enum moe_status moe_engine_forward(struct moe_engine *e, const struct moe_batch *b, float *logits)
{
    enum moe_status st = validate_batch(e, b);
    if (st != MOE_OK || b->n == 0) return st;
    const struct moe_backend_ops *o = e->be->ops;
    void *bc = e->be->ctx;
    const struct moe_config *c = &e->cfg;
    int n = b->n, H = e->H;
    int nwant = 0, pos_max = 0; /* validate_batch: 0 <= pos < max_ctx */
    for (int i = 0; i < n; i++) {
        e->h_tok[i] = b->tokens[i];
        e->h_seq[i] = b->seq[i];
        e->h_pos[i] = b->pos[i];
        if (b->pos[i] > pos_max) pos_max = b->pos[i];
        if (!b->want_logits || b->want_logits[i]) e->h_rows[nwant++] = i;
    }
    if (e->prov->ops->step_begin) e->prov->ops->step_begin(e->prov->self, n);

    BE(o->copy_h2d(bc, e->d_tok, e->h_tok, (size_t)n * 4));
    BE(o->copy_h2d(bc, e->d_seq, e->h_seq, (size_t)n * 4));
    BE(o->copy_h2d(bc, e->d_pos, e->h_pos, (size_t)n * 4));
    if (nwant < n) BE(o->copy_h2d(bc, e->d_rows, e->h_rows, (size_t)nwant * 4));
    BE(o->embed(bc, e->embed, e->wdt, e->V, H, e->d_tok, n, e->h));
    BE(hook_hidden(e, 0, n, e->h));
    for (int l = 0; l < c->n_layers; l++) {
        BE(c->mla ? mla_block(e, l, n, pos_max) : attention_block(e, l, n, pos_max));
        BE(o->rmsnorm(bc, e->h, e->L[l].ffn_norm, e->xn, n, H, c->rms_eps));
        if (c->is_moe[l])
            BE(moe_block(e, l, n));
        else
            BE(dense_mlp(e, l, n));
        BE(o->add(bc, e->h, e->o, (size_t)n * H));
        if (l + 1 < c->n_layers) BE(hook_hidden(e, l + 1, n, e->h));
    }
    BE(o->rmsnorm(bc, e->h, e->final_norm, e->xn, n, H, c->rms_eps));
    BE(hook_hidden(e, c->n_layers, n, e->xn));
    if (logits && nwant > 0) {
        const float *fin = e->xn;
        if (nwant < n) {
            BE(o->gather_rows(bc, e->xn, e->d_rows, nwant, H, e->o));
            fin = e->o;
        }
        float *dst = e->be->host_visible ? logits : e->d_logits;
        BE(o->linear(bc, fin, e->lm_head, e->wdt, NULL, nwant, H, e->V, dst));
        if (!e->be->host_visible)
            BE(o->copy_d2h(bc, logits, e->d_logits, (size_t)nwant * e->V * sizeof(float)));
    }
    BE(o->synchronize(bc));
    BE(moe_model_check_files(e->m)); /* experts read in place from the checkpoint's mapping */
    for (int i = 0; i < n; i++) set_len(e, b->seq[i], b->pos[i] + 1);
out:
    if (e->prov->ops->step_end) e->prov->ops->step_end(e->prov->self);
    return st;
}
