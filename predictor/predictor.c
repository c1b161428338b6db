/* Routing-path predictors: none, gate (pre-gating lookahead), path (learned
 * MLP), history (online transition statistics), path+gate (path corrected by
 * the lookahead gates). */
#include "predictor.h"

#include "path_model.h"
#include "../kernels/backend.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Weight of the lookahead gate against the step-start path in path+gate, by
 * distance 1..MOE_PRED_MAX_DEPTH (the gate sees the token's current hidden
 * state, so it is trusted more the closer the layer). */
static const float gate_weight_by_dist[MOE_PRED_MAX_DEPTH + 1] = { 1.0f, 0.75f, 0.6f, 0.5f, 0.4f,
                                                                    0.3f, 0.25f, 0.2f, 0.15f };

struct moe_predictor {
    enum moe_pred_kind kind;
    int depth;                 /* gate lookahead, MoE layers */
    const struct moe_model *model;
    int n_moe;                 /* MoE layers */
    int *moe_layer;            /* [n_moe] model layer of MoE index */
    int *moe_index;            /* [n_layers] MoE index of model layer, -1 dense */
    int E, k, hidden, max_seqs;

    float *router;             /* [n_moe, E, hidden] f32 (gate kinds) */
    float *router_bias;        /* [n_moe, E] e_score_correction_bias (grouped sigmoid routers), else NULL */
    bool grouped;              /* DeepSeek's grouped routers: the layer's own rule picks the gate's k */
    int32_t *gate_ids;         /* [k] scratch: a grouped router's choice */
    float *gate_w;             /* [k] */
    struct moe_path_model *path;
    struct moe_backend *cpu;   /* matrix products of the gates and the path model: the CPU
                                  backend's kernel, so a row's scores do not depend on the batch */
    float *emb_row;            /* [hidden] scratch */
    float *q_sc;               /* [max(n_moe * E, path n_out)] moe_predictor_seq_path scores */
    float *q_x, *q_hs;         /* [path n_in], [path width] its path model row */

    /* history statistics (counts since creation; 64-bit, as a long-running server would wrap 32) */
    uint64_t *trans;           /* [n_moe-1, E, E] layer m expert f -> layer m+1 expert e, same token */
    uint64_t *trans_n;         /* [n_moe-1, E] tokens that used f at layer m */
    uint64_t *rec;             /* [n_moe, E, E] previous token's f -> this token's e, same layer */
    uint64_t *rec_n;           /* [n_moe, E] */
    uint64_t *freq;            /* [n_moe, E] tokens that used e */
    uint64_t n_tok;            /* tokens learned from */

    int *prev;                 /* [max_seqs, n_moe * k] previous token's routing */
    bool *prev_ok;             /* [max_seqs] */
    float *hist;               /* [max_seqs, n_moe * E] path model history block per sequence (hist_decay > 0) */
    float *ctxh;               /* [max_seqs, hidden] final hidden state of the sequence's previous token
                                  (path model with context) */

    /* current step */
    int n, cap;                /* tokens in the step, capacity of the arrays below */
    int *seq, *tok;            /* [cap] */
    int *route;                /* [cap, n_moe * k] actual routing seen this step */
    bool *routed;              /* [n_moe] layer routed this step */
    float *pscore;             /* [cap, n_moe, E] step-start path scores */
    float *pout;               /* [cap, path n_out] path model output (this and next token) */
    float *x;                  /* [cap, n_in] path features */
    float *hs;                 /* [cap, width] path scratch */
    float *fin;                /* [cap, hidden] this step's final hidden states (path model with context) */
    bool fin_ok;               /* fin holds this step's rows */
    float *out;                /* [cap, E] prediction being published */
    float *un;                 /* [E] batch union */
    int *ids;                  /* [E] */

    struct moe_pred_sink sink;
    struct moe_provider *prov;
    struct moe_pred_prefetch pf;
    struct moe_engine_hooks next;
};

const char *moe_pred_kind_name(enum moe_pred_kind k)
{
    switch (k) {
    case MOE_PRED_NONE: return "none";
    case MOE_PRED_GATE: return "gate";
    case MOE_PRED_PATH: return "path";
    case MOE_PRED_HISTORY: return "history";
    case MOE_PRED_PATH_GATE: return "path+gate";
    }
    return "?";
}

static bool file_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

enum moe_status moe_pred_spec_parse(const char *s, const char *model_dir, struct moe_pred_spec *out)
{
    memset(out, 0, sizeof(*out));
    out->depth = 3;
    if (!s) s = "auto";
    if (!*s) /* a value left empty (--predictor "$UNSET") is a mistake, not a choice of auto */
        return moe_errorf(MOE_EINVAL, "--predictor '' is empty (use none, gate[:D], path[:FILE], history, "
                          "path+gate[:FILE] or auto)");
    const char *colon = strchr(s, ':');
    size_t nlen = colon ? (size_t)(colon - s) : strlen(s);
    const char *arg = colon ? colon + 1 : NULL;
    char defpath[4096];
    snprintf(defpath, sizeof defpath, "%s/predictor.safetensors", model_dir ? model_dir : ".");
#define IS(name) (nlen == strlen(name) && !strncmp(s, name, nlen))
    if (IS("auto") && !arg) {
        if (file_exists(defpath)) {
            out->kind = MOE_PRED_PATH_GATE;
            snprintf(out->path, sizeof out->path, "%s", defpath);
        } else {
            out->kind = MOE_PRED_GATE;
        }
        return MOE_OK;
    }
    if (IS("none") && !arg) {
        out->kind = MOE_PRED_NONE;
        return MOE_OK;
    }
    if (IS("history") && !arg) {
        out->kind = MOE_PRED_HISTORY;
        return MOE_OK;
    }
    if (IS("gate")) {
        out->kind = MOE_PRED_GATE;
        if (arg) {
            long d;
            if (!moe_parse_long(arg, 1, MOE_PRED_MAX_DEPTH, &d))
                return moe_errorf(MOE_EINVAL, "--predictor %s: lookahead D must be an integer 1..%d", s,
                                  MOE_PRED_MAX_DEPTH);
            out->depth = (int)d;
        }
        return MOE_OK;
    }
    if (IS("path") || IS("path+gate")) {
        out->kind = IS("path") ? MOE_PRED_PATH : MOE_PRED_PATH_GATE;
        if (arg && !*arg) return moe_errorf(MOE_EINVAL, "--predictor %s: empty file name after ':'", s);
        if (snprintf(out->path, sizeof out->path, "%s", arg ? arg : defpath) >= (int)sizeof out->path)
            return moe_errorf(MOE_EINVAL, "--predictor %s: file name too long", s);
        struct stat sb;
        bool found = stat(out->path, &sb) == 0;
        if (found && S_ISDIR(sb.st_mode))
            return moe_errorf(MOE_EIO, "--predictor %s: %s is a directory; name the predictor file in it", s,
                              out->path);
        if (found && !S_ISREG(sb.st_mode))
            return moe_errorf(MOE_EIO, "--predictor %s: %s is not a regular file (a pipe or a device); name a "
                              "predictor file (moeflow train-predictor writes one)", s, out->path);
        if (!found && errno != ENOENT) /* a name that cannot be looked up (a file where a directory is named) */
            return moe_errorf(MOE_EIO, "--predictor %s: %s: %s; name a predictor file (moeflow train-predictor "
                              "writes one)", s, out->path, strerror(errno));
        if (!found)
            return moe_errorf(MOE_ENOENT,
                              "--predictor %s: predictor file %s not found (train one with moeflow train-predictor)",
                              s, out->path);
        return MOE_OK;
    }
    if (IS("auto") || IS("none") || IS("history"))
        return moe_errorf(MOE_EINVAL, "--predictor %s: %.*s takes nothing after ':' (only gate:D, path:FILE and "
                          "path+gate:FILE do)", s, (int)nlen, s);
#undef IS
    return moe_errorf(MOE_EINVAL,
                      "--predictor %s: unknown predictor (use none, gate[:D], path[:FILE], history, "
                      "path+gate[:FILE] or auto)",
                      s);
}

static bool uses_gate(const struct moe_predictor *p)
{
    return p->kind == MOE_PRED_GATE || p->kind == MOE_PRED_PATH_GATE;
}

static bool uses_path(const struct moe_predictor *p)
{
    return p->kind == MOE_PRED_PATH || p->kind == MOE_PRED_PATH_GATE;
}

static enum moe_status ensure_cap(struct moe_predictor *p, int n)
{
    if (n <= p->cap) return MOE_OK;
    int c = n < 16 ? 16 : n;
    size_t rk = (size_t)p->n_moe * p->k, re = (size_t)p->n_moe * p->E;
    int *seq = realloc(p->seq, sizeof(int) * (size_t)c);
    if (seq) p->seq = seq;
    int *tok = realloc(p->tok, sizeof(int) * (size_t)c);
    if (tok) p->tok = tok;
    int *route = realloc(p->route, sizeof(int) * (size_t)c * rk);
    if (route) p->route = route;
    float *ps = realloc(p->pscore, sizeof(float) * (size_t)c * re);
    if (ps) p->pscore = ps;
    float *out = realloc(p->out, sizeof(float) * (size_t)c * (size_t)p->E);
    if (out) p->out = out;
    if (!seq || !tok || !route || !ps || !out) return moe_errorf(MOE_ENOMEM, "predictor: out of memory for %d tokens", n);
    if (p->path) {
        float *po = realloc(p->pout, sizeof(float) * (size_t)c * (size_t)p->path->n_out);
        if (po) p->pout = po;
        float *x = realloc(p->x, sizeof(float) * (size_t)c * (size_t)p->path->n_in);
        if (x) p->x = x;
        float *hs = realloc(p->hs, sizeof(float) * (size_t)c * (size_t)p->path->width);
        if (hs) p->hs = hs;
        if (!po || !x || !hs) return moe_errorf(MOE_ENOMEM, "predictor: out of memory for %d tokens", n);
        if (p->path->context) {
            float *fin = realloc(p->fin, sizeof(float) * (size_t)c * (size_t)p->hidden);
            if (!fin) return moe_errorf(MOE_ENOMEM, "predictor: out of memory for %d tokens", n);
            p->fin = fin;
        }
    }
    p->cap = c;
    return MOE_OK;
}

/* Whether file path lies directly in directory dir (the same directory, however either is spelled). */
static bool in_dir(const char *path, const char *dir)
{
    char parent[4096], a[PATH_MAX], b[PATH_MAX];
    snprintf(parent, sizeof(parent), "%s", path);
    char *slash = strrchr(parent, '/');
    if (slash)
        *(slash == parent ? slash + 1 : slash) = 0;
    else
        snprintf(parent, sizeof(parent), ".");
    return realpath(parent, a) && realpath(dir, b) && !strcmp(a, b);
}

struct moe_predictor *moe_predictor_create(const struct moe_model *m, const struct moe_pred_spec *spec,
                                           int max_seqs)
{
    const struct moe_config *c = &m->cfg;
    if (max_seqs <= 0) max_seqs = 1;
    struct moe_predictor *p = calloc(1, sizeof(*p));
    if (!p) goto fail_nomem;
    p->kind = spec->kind;
    p->depth = spec->depth > 0 ? spec->depth : 3;
    if (p->depth > MOE_PRED_MAX_DEPTH) p->depth = MOE_PRED_MAX_DEPTH;
    p->model = m;
    p->E = c->n_experts;
    p->k = c->top_k;
    p->hidden = c->hidden;
    p->max_seqs = max_seqs;
    p->moe_index = malloc(sizeof(int) * (size_t)c->n_layers);
    p->moe_layer = malloc(sizeof(int) * (size_t)c->n_layers);
    if (!p->moe_index || !p->moe_layer) goto fail_nomem;
    for (int l = 0; l < c->n_layers; l++) {
        p->moe_index[l] = -1;
        if (c->is_moe[l]) {
            p->moe_index[l] = p->n_moe;
            p->moe_layer[p->n_moe++] = l;
        }
    }
    if (p->n_moe == 0) {
        moe_errorf(MOE_EINVAL, "predictor: model %s has no MoE layers", m->dir);
        goto fail;
    }
    size_t E = (size_t)p->E, M = (size_t)p->n_moe;
    if ((uses_gate(p) || uses_path(p)) &&
        !(p->cpu = moe_backend_cpu_create(&(struct moe_backend_cpu_params){ .n_threads = 1 })))
        goto fail;
    if (uses_gate(p)) {
        p->router = malloc(sizeof(float) * M * E * (size_t)p->hidden);
        if (!p->router) goto fail_nomem;
        for (size_t i = 0; i < M; i++) {
            const struct moe_wview *w = &m->layers[p->moe_layer[i]].router;
            if (!w->data || w->rows != p->E || w->cols != p->hidden) {
                moe_errorf(MOE_EFORMAT, "predictor: layer %d router weight missing or not [%d, %d]", p->moe_layer[i],
                           p->E, p->hidden);
                goto fail;
            }
            moe_wview_to_f32(w, p->router + i * E * (size_t)p->hidden);
        }
        p->grouped = moe_router_is_grouped(m->cfg.router);
        if (p->grouped) {
            p->gate_ids = malloc(sizeof(int32_t) * (size_t)p->k);
            p->gate_w = malloc(sizeof(float) * (size_t)p->k);
            if (!p->gate_ids || !p->gate_w) goto fail_nomem;
        }
        if (moe_router_has_bias(m->cfg.router)) {
            if (!(p->router_bias = malloc(sizeof(float) * M * E))) goto fail_nomem;
            for (size_t i = 0; i < M; i++)
                moe_wview_to_f32(&m->layers[p->moe_layer[i]].router_bias, p->router_bias + i * E);
        }
    }
    if (uses_path(p)) {
        p->path = moe_path_model_load(spec->path, p->n_moe, p->E, p->k, p->hidden);
        if (!p->path) goto fail;
        /* the shapes match (checked by the load); a copy of the model may carry another name, and a file
         * in the model's own directory (auto, a snapshot directory named by its hash) is the model's */
        if (!in_dir(spec->path, m->dir) && moe_path_model_other_model(p->path->model_name, m->dir)) {
            char name[4096];
            moe_model_dir_name(m->dir, name, sizeof name);
            MOE_WARN("predictor %s was trained for %s; the model is %s (its predictions are only as good as "
                     "the two models' routing is alike)", spec->path, p->path->model_name, name);
        }
        if (!m->embed.data || m->embed.cols != p->hidden) {
            moe_errorf(MOE_EFORMAT, "predictor: model %s has no [vocab, %d] embedding", m->dir, p->hidden);
            goto fail;
        }
    }
    p->emb_row = malloc(sizeof(float) * (size_t)p->hidden);
    size_t n_sc = p->path && (size_t)p->path->n_out > M * E ? (size_t)p->path->n_out : M * E;
    p->q_sc = malloc(sizeof(float) * n_sc);
    if (p->path) {
        p->q_x = malloc(sizeof(float) * (size_t)p->path->n_in);
        p->q_hs = malloc(sizeof(float) * (size_t)p->path->width);
        if (!p->q_x || !p->q_hs) goto fail_nomem;
    }
    p->trans = calloc((M > 1 ? M - 1 : 1) * E * E, sizeof(uint64_t));
    p->trans_n = calloc((M > 1 ? M - 1 : 1) * E, sizeof(uint64_t));
    p->rec = calloc(M * E * E, sizeof(uint64_t));
    p->rec_n = calloc(M * E, sizeof(uint64_t));
    p->freq = calloc(M * E, sizeof(uint64_t));
    p->prev = malloc(sizeof(int) * (size_t)max_seqs * M * (size_t)p->k);
    p->prev_ok = calloc((size_t)max_seqs, sizeof(bool));
    p->hist = calloc((size_t)max_seqs * M * E, sizeof(float));
    p->ctxh = calloc((size_t)max_seqs * (size_t)p->hidden, sizeof(float));
    p->routed = calloc(M, sizeof(bool));
    p->un = malloc(sizeof(float) * E);
    p->ids = malloc(sizeof(int) * E);
    if (!p->emb_row || !p->q_sc || !p->trans || !p->trans_n || !p->rec || !p->rec_n || !p->freq || !p->prev || !p->prev_ok ||
        !p->hist || !p->ctxh || !p->routed || !p->un || !p->ids || ensure_cap(p, 16))
        goto fail_nomem;
    return p;
fail_nomem:
    moe_errorf(MOE_ENOMEM, "predictor: out of memory");
fail:
    moe_predictor_destroy(p);
    return NULL;
}

void moe_predictor_destroy(struct moe_predictor *p)
{
    if (!p) return;
    free(p->moe_layer);
    free(p->moe_index);
    free(p->router);
    free(p->router_bias);
    free(p->gate_ids);
    free(p->gate_w);
    moe_path_model_free(p->path);
    moe_backend_destroy(p->cpu);
    free(p->emb_row);
    free(p->q_sc);
    free(p->q_x);
    free(p->q_hs);
    free(p->trans);
    free(p->trans_n);
    free(p->rec);
    free(p->rec_n);
    free(p->freq);
    free(p->prev);
    free(p->prev_ok);
    free(p->hist);
    free(p->ctxh);
    free(p->fin);
    free(p->seq);
    free(p->tok);
    free(p->route);
    free(p->routed);
    free(p->pscore);
    free(p->pout);
    free(p->x);
    free(p->hs);
    free(p->out);
    free(p->un);
    free(p->ids);
    free(p);
}

enum moe_pred_kind moe_predictor_kind(const struct moe_predictor *p) { return p->kind; }
int moe_predictor_n_moe_layers(const struct moe_predictor *p) { return p->n_moe; }
int moe_predictor_moe_layer(const struct moe_predictor *p, int i)
{
    return i >= 0 && i < p->n_moe ? p->moe_layer[i] : -1;
}

void moe_predictor_set_sink(struct moe_predictor *p, const struct moe_pred_sink *sink)
{
    if (sink)
        p->sink = *sink;
    else
        memset(&p->sink, 0, sizeof(p->sink));
}

void moe_predictor_set_provider(struct moe_predictor *p, struct moe_provider *prov, const struct moe_pred_prefetch *pf)
{
    p->prov = prov;
    memset(&p->pf, 0, sizeof(p->pf));
    if (pf) p->pf = *pf;
    if (!(p->pf.min_score > 0)) p->pf.min_score = MOE_PRED_MIN_SCORE;
    if (p->pf.max_per_layer <= 0) p->pf.max_per_layer = p->k;
}

void moe_predictor_seq_reset(struct moe_predictor *p, int seq)
{
    if (seq >= 0 && seq < p->max_seqs) p->prev_ok[seq] = false;
}

void moe_predictor_seq_fork(struct moe_predictor *p, int dst, int src)
{
    if (dst < 0 || dst >= p->max_seqs || src < 0 || src >= p->max_seqs || dst == src) return;
    size_t rk = (size_t)p->n_moe * (size_t)p->k, re = (size_t)p->n_moe * (size_t)p->E, h = (size_t)p->hidden;
    memcpy(p->prev + (size_t)dst * rk, p->prev + (size_t)src * rk, sizeof(int) * rk);
    memcpy(p->hist + (size_t)dst * re, p->hist + (size_t)src * re, sizeof(float) * re);
    memcpy(p->ctxh + (size_t)dst * h, p->ctxh + (size_t)src * h, sizeof(float) * h);
    p->prev_ok[dst] = p->prev_ok[src];
}

/* Publish a prediction for MoE index mi: scores [n, E] in p->out. */
static void publish(struct moe_predictor *p, int mi, int distance, bool step_start)
{
    int layer = p->moe_layer[mi];
    if (p->sink.predict && (distance <= p->n_moe || p->sink.ahead))
        p->sink.predict(p->sink.ud, mi, distance, step_start, p->n, p->out);
    if (!p->prov || (!p->prov->ops->prefetch && !p->prov->ops->hint)) return;
    /* the next tokens' routing reaches a provider only when it asked for it */
    if (distance > p->n_moe && !p->pf.next_step && !p->prov->ops->hint) return;
    for (int e = 0; e < p->E; e++) {
        float u = 0;
        for (int i = 0; i < p->n; i++) {
            float s = p->out[(size_t)i * p->E + e];
            if (s > u) u = s;
        }
        p->un[e] = u;
    }
    /* a provider that ranks with hints gets every score; the next tokens' only as hints */
    if (p->prov->ops->hint) {
        for (int e = 0; e < p->E; e++) p->ids[e] = e;
        p->prov->ops->hint(p->prov->self, layer, p->E, p->ids, p->un, distance);
        if (distance > p->n_moe) return;
    }
    if (!p->prov->ops->prefetch || p->pf.rank_only) return;
    int cap = p->pf.all_scores ? p->E : p->pf.max_per_layer * p->n;
    if (cap > p->E) cap = p->E;
    float min_score = p->pf.all_scores ? 0.0f : p->pf.min_score;
    int cnt = 0;
    /* selection by descending score, ties to the lower id */
    while (cnt < cap) {
        int best = -1;
        for (int e = 0; e < p->E; e++)
            if (p->un[e] >= min_score && (best < 0 || p->un[e] > p->un[best])) best = e;
        if (best < 0) break;
        p->ids[cnt++] = best;
        p->un[best] = -1.0f;
    }
    if (cnt == 0) return;
    float sc[cnt > 0 ? cnt : 1];
    for (int i = 0; i < cnt; i++) {
        float u = 0;
        for (int t = 0; t < p->n; t++) {
            float s = p->out[(size_t)t * p->E + p->ids[i]];
            if (s > u) u = s;
        }
        sc[i] = u;
    }
    p->prov->ops->prefetch(p->prov->self, layer, cnt, p->ids, sc, distance);
}

/* History estimate of P(e used at MoE index mi) for token i of the step,
 * written to dst [E].  `cur` = actual routing of layer mi-1 for this token or NULL. */
static void history_scores(const struct moe_predictor *p, int mi, const int *prevr, const int *cur, float *dst)
{
    size_t E = (size_t)p->E;
    const float alpha = 2.0f; /* smoothing weight of the unconditional frequency */
    float base_den = (float)p->n_tok + 1.0f;
    for (size_t e = 0; e < E; e++) {
        float fq = ((float)p->freq[mi * E + e] + (float)p->k / (float)E) / base_den;
        float rn = alpha * fq, rd = alpha;
        if (prevr)
            for (int j = 0; j < p->k; j++) {
                int f = prevr[mi * p->k + j];
                if (f < 0) continue;
                rn += (float)p->rec[((size_t)mi * E + (size_t)f) * E + e];
                rd += (float)p->rec_n[mi * E + (size_t)f];
            }
        float r = rn / rd;
        if (cur && mi > 0) {
            float tn = alpha * fq, td = alpha;
            for (int j = 0; j < p->k; j++) {
                int f = cur[j];
                if (f < 0) continue;
                tn += (float)p->trans[((size_t)(mi - 1) * E + (size_t)f) * E + e];
                td += (float)p->trans_n[(size_t)(mi - 1) * E + (size_t)f];
            }
            r = 0.5f * r + 0.5f * (tn / td);
        }
        dst[e] = r > 1.0f ? 1.0f : r;
    }
}

static const int *seq_prev(const struct moe_predictor *p, int seq)
{
    if (seq < 0 || seq >= p->max_seqs || !p->prev_ok[seq]) return NULL;
    return p->prev + (size_t)seq * (size_t)p->n_moe * (size_t)p->k;
}

/* The sequence's previous final hidden state for the path model when its previous token is known. */
static const float *seq_ctx(const struct moe_predictor *p, int seq, const int *prevr)
{
    if (!prevr || !p->path || !p->path->context) return NULL;
    return p->ctxh + (size_t)seq * (size_t)p->hidden;
}

/* The sequence's history block for the path model when its previous token is known. */
static const float *seq_hist(const struct moe_predictor *p, int seq, const int *prevr)
{
    if (!prevr || !p->path || !(p->path->hist_decay > 0)) return NULL;
    return p->hist + (size_t)seq * (size_t)p->n_moe * (size_t)p->E;
}

static void embed_row(struct moe_predictor *p, int token)
{
    const struct moe_wview *w = &p->model->embed;
    struct moe_wview row = *w;
    row.rows = 1;
    row.data = (const char *)w->data + (size_t)token * (size_t)w->cols * moe_dtype_size(w->dtype);
    row.nbytes = (uint64_t)w->cols * moe_dtype_size(w->dtype);
    moe_wview_to_f32(&row, p->emb_row);
}

enum moe_status moe_predictor_begin(struct moe_predictor *p, const struct moe_batch *b)
{
    /* a step refused changes nothing: the tokens are checked before the step is taken on */
    for (int i = 0; i < b->n; i++)
        if (b->tokens[i] < 0 || b->tokens[i] >= p->model->cfg.vocab)
            return moe_errorf(MOE_ERANGE, "predictor: token %d outside vocab %d", b->tokens[i], p->model->cfg.vocab);
    enum moe_status st = ensure_cap(p, b->n);
    if (st) return st;
    p->n = b->n;
    size_t M = (size_t)p->n_moe, E = (size_t)p->E;
    for (int i = 0; i < b->n; i++) {
        p->seq[i] = b->seq[i];
        p->tok[i] = b->tokens[i];
    }
    memset(p->routed, 0, sizeof(bool) * M);
    p->fin_ok = false;
    for (size_t i = 0; i < (size_t)b->n * M * (size_t)p->k; i++) p->route[i] = -1;
    if (p->kind == MOE_PRED_NONE || p->kind == MOE_PRED_GATE) return MOE_OK;

    /* Within a prefill chunk, token i's previous token is token i-1 of the same
     * sequence, whose routing is not known yet: its features use no routing. */
    for (int i = 0; i < b->n; i++) {
        const int *prevr = seq_prev(p, b->seq[i]);
        for (int j = 0; j < i && prevr; j++)
            if (b->seq[j] == b->seq[i]) prevr = NULL;
        float *ps = p->pscore + (size_t)i * M * E;
        if (uses_path(p)) {
            embed_row(p, b->tokens[i]);
            moe_path_model_features_ex(p->path, p->emb_row, prevr, seq_hist(p, b->seq[i], prevr),
                                       seq_ctx(p, b->seq[i], prevr), p->x + (size_t)i * p->path->n_in);
        } else {
            for (size_t mi = 0; mi < M; mi++) history_scores(p, (int)mi, prevr, NULL, ps + mi * E);
        }
    }
    if (uses_path(p)) {
        size_t no = (size_t)p->path->n_out;
        moe_path_model_forward(p->path, p->cpu, b->n, p->x, p->pout, p->hs);
        for (int i = 0; i < b->n; i++)
            memcpy(p->pscore + (size_t)i * M * E, p->pout + (size_t)i * no, sizeof(float) * M * E);
    }
    for (size_t mi = 0; mi < M; mi++) {
        for (int i = 0; i < b->n; i++)
            memcpy(p->out + (size_t)i * E, p->pscore + ((size_t)i * M + mi) * E, sizeof(float) * E);
        publish(p, (int)mi, (int)mi + 1, true);
    }
    /* the routing of the next horizon-1 tokens: hints steps ahead, for eviction ranking */
    bool to_prov = p->prov && (p->pf.next_step || p->prov->ops->hint);
    if (uses_path(p) && p->path->horizon > 1 && (to_prov || (p->sink.predict && p->sink.ahead))) {
        size_t no = (size_t)p->path->n_out;
        for (size_t hz = 1; hz < (size_t)p->path->horizon; hz++)
            for (size_t mi = 0; mi < M; mi++) {
                for (int i = 0; i < b->n; i++)
                    memcpy(p->out + (size_t)i * E, p->pout + (size_t)i * no + (hz * M + mi) * E, sizeof(float) * E);
                publish(p, (int)mi, (int)(hz * M + mi) + 1, true);
            }
    }
    return MOE_OK;
}

/* Router logits o [E] -> k x softmax, capped at 1: each expert's chance of being among the k. */
static void gate_probs(float *o, size_t E, int k)
{
    float mx = -INFINITY;
    for (size_t e = 0; e < E; e++)
        if (o[e] > mx) mx = o[e];
    float sum = 0;
    for (size_t e = 0; e < E; e++) sum += (o[e] = expf(o[e] - mx));
    for (size_t e = 0; e < E; e++) {
        float pr = (float)k * o[e] / sum;
        o[e] = pr > 1.0f ? 1.0f : pr;
    }
}

void moe_predictor_on_moe_input(struct moe_predictor *p, int layer, int n, const float *x)
{
    if (!uses_gate(p) || layer < 0 || layer >= p->model->cfg.n_layers || n != p->n) return;
    int mi = p->moe_index[layer];
    if (mi < 0) return;
    size_t E = (size_t)p->E, H = (size_t)p->hidden, M = (size_t)p->n_moe;
    for (int d = 1; d <= p->depth && mi + d < p->n_moe; d++) {
        int t = mi + d;
        const float *R = p->router + (size_t)t * E * H;
        /* router logits of every row: p->out [n, E] */
        if (p->cpu->ops->linear(p->cpu->ctx, x, R, MOE_DT_F32, NULL, n, (int)H, (int)E, p->out)) return;
        for (int i = 0; i < n; i++) {
            float *o = p->out + (size_t)i * E;
            if (p->grouped) { /* the layer's own rule (scores, bias, groups) picks its k: score 1 */
                const struct moe_config *c = &p->model->cfg;
                if (p->cpu->ops->router_grouped(p->cpu->ctx, o, p->router_bias ? p->router_bias + (size_t)t * E : NULL,
                                                1, (int)E, p->k, c->router, c->n_group, c->topk_group,
                                                c->norm_topk_prob, c->routed_scale, p->gate_ids, p->gate_w))
                    return;
                memset(o, 0, sizeof(float) * E);
                for (int r = 0; r < p->k; r++) o[p->gate_ids[r]] = 1.0f;
            } else {
                gate_probs(o, E, p->k);
            }
            if (p->kind == MOE_PRED_PATH_GATE) {
                float w = gate_weight_by_dist[d];
                const float *ps = p->pscore + ((size_t)i * M + (size_t)t) * E;
                for (size_t e = 0; e < E; e++) o[e] = w * o[e] + (1.0f - w) * ps[e];
            }
        }
        publish(p, t, d, false);
    }
}

void moe_predictor_on_route(struct moe_predictor *p, int layer, int n, const int *ids)
{
    if (layer < 0 || layer >= p->model->cfg.n_layers || n != p->n) return;
    int mi = p->moe_index[layer];
    if (mi < 0) return;
    for (int i = 0; i < n; i++)
        memcpy(p->route + ((size_t)i * p->n_moe + (size_t)mi) * p->k, ids + (size_t)i * p->k,
               sizeof(int) * (size_t)p->k);
    p->routed[mi] = true;
    if (p->kind != MOE_PRED_HISTORY || mi + 1 >= p->n_moe) return;
    for (int i = 0; i < n; i++) {
        const int *prevr = seq_prev(p, p->seq[i]);
        for (int j = 0; j < i && prevr; j++)
            if (p->seq[j] == p->seq[i]) prevr = NULL;
        history_scores(p, mi + 1, prevr, ids + (size_t)i * p->k, p->out + (size_t)i * p->E);
    }
    publish(p, mi + 1, 1, false);
}

void moe_predictor_end(struct moe_predictor *p, bool ok)
{
    size_t M = (size_t)p->n_moe, E = (size_t)p->E, K = (size_t)p->k;
    if (!ok) {
        p->n = 0;
        return;
    }
    for (size_t mi = 0; mi < M; mi++)
        if (!p->routed[mi]) {
            p->n = 0;
            return; /* incomplete step: learn nothing */
        }
    for (int i = 0; i < p->n; i++) {
        const int *r = p->route + (size_t)i * M * K;
        const int *prevr = seq_prev(p, p->seq[i]);
        for (int j = 0; j < i && prevr; j++)
            if (p->seq[j] == p->seq[i]) prevr = r - (size_t)(i - j) * M * K; /* earlier token of the chunk */
        /* the latest token of the chunk for this sequence wins below */
        for (size_t mi = 0; mi < M; mi++)
            for (size_t j = 0; j < K; j++) {
                int e = r[mi * K + j];
                if (e < 0 || e >= p->E) continue;
                p->freq[mi * E + (size_t)e]++;
                if (mi + 1 < M) {
                    p->trans_n[mi * E + (size_t)e]++;
                    for (size_t j2 = 0; j2 < K; j2++) {
                        int e2 = r[(mi + 1) * K + j2];
                        if (e2 >= 0 && e2 < p->E) p->trans[(mi * E + (size_t)e) * E + (size_t)e2]++;
                    }
                }
                if (prevr) {
                    int f = prevr[mi * K + j];
                    if (f < 0 || f >= p->E) continue;
                    p->rec_n[mi * E + (size_t)f]++;
                    for (size_t j2 = 0; j2 < K; j2++) {
                        int e2 = r[mi * K + j2];
                        if (e2 >= 0 && e2 < p->E) p->rec[(mi * E + (size_t)f) * E + (size_t)e2]++;
                    }
                }
            }
        p->n_tok++;
    }
    for (int i = 0; i < p->n; i++) {
        int s = p->seq[i];
        if (s < 0 || s >= p->max_seqs) continue;
        if (p->path && p->path->hist_decay > 0) {
            float *h = p->hist + (size_t)s * M * E;
            if (!p->prev_ok[s]) memset(h, 0, sizeof(float) * M * E); /* a new sequence */
            moe_path_model_hist_update(p->path, h, p->route + (size_t)i * M * K);
        }
        memcpy(p->prev + (size_t)s * M * K, p->route + (size_t)i * M * K, sizeof(int) * M * K);
        p->prev_ok[s] = true;
        /* a step that ran without the final hidden state leaves the context unknown (zeros) */
        float *cx = p->ctxh + (size_t)s * (size_t)p->hidden;
        if (p->fin_ok)
            memcpy(cx, p->fin + (size_t)i * (size_t)p->hidden, sizeof(float) * (size_t)p->hidden);
        else
            memset(cx, 0, sizeof(float) * (size_t)p->hidden);
    }
    p->n = 0;
}

enum moe_status moe_predictor_seq_path(struct moe_predictor *p, int seq, int token, int k, int *ids)
{
    size_t M = (size_t)p->n_moe, E = (size_t)p->E;
    if (k <= 0 || k > p->E) return moe_errorf(MOE_EINVAL, "predictor: k %d outside 1..%d", k, p->E);
    if (token < 0 || token >= p->model->cfg.vocab)
        return moe_errorf(MOE_ERANGE, "predictor: token %d outside vocab %d", token, p->model->cfg.vocab);
    const int *prevr = seq_prev(p, seq);
    float *sc = p->q_sc;
    if (uses_path(p)) {
        embed_row(p, token);
        moe_path_model_features_ex(p->path, p->emb_row, prevr, seq_hist(p, seq, prevr), seq_ctx(p, seq, prevr),
                                   p->q_x);
        moe_path_model_forward_first(p->path, p->cpu, 1, p->q_x, (int)(M * E), sc, p->q_hs); /* this token only */
    } else if (p->kind == MOE_PRED_HISTORY) {
        for (size_t mi = 0; mi < M; mi++) history_scores(p, (int)mi, prevr, NULL, sc + mi * E);
    } else {
        for (size_t mi = 0; mi < M; mi++) {
            for (size_t e = 0; e < E; e++) sc[mi * E + e] = 0;
            if (prevr)
                for (int j = 0; j < p->k; j++) {
                    int e = prevr[mi * (size_t)p->k + (size_t)j];
                    if (e >= 0) sc[mi * E + (size_t)e] = 1.0f - 0.01f * (float)j;
                }
        }
    }
    for (size_t mi = 0; mi < M; mi++) {
        float *s = sc + mi * E;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (size_t e = 0; e < E; e++)
                if (s[e] > 0 && (best < 0 || s[e] > s[best])) best = (int)e;
            ids[mi * (size_t)k + (size_t)j] = best;
            if (best >= 0) s[best] = -1.0f;
        }
    }
    return MOE_OK;
}

/* ---- engine hooks ---- */

static void hk_hidden(void *ud, int j, int n, const float *h)
{
    struct moe_predictor *p = ud;
    if (p->next.on_hidden) p->next.on_hidden(p->next.ud, j, n, h);
    if (j == p->model->cfg.n_layers && n == p->n && p->fin) {
        memcpy(p->fin, h, sizeof(float) * (size_t)n * (size_t)p->hidden);
        p->fin_ok = true;
    }
}

static void hk_route(void *ud, int layer, int n, const float *logits, const int *ids, const float *w)
{
    struct moe_predictor *p = ud;
    if (p->next.on_route) p->next.on_route(p->next.ud, layer, n, logits, ids, w);
    moe_predictor_on_route(p, layer, n, ids);
}

static void hk_moe_input(void *ud, int layer, int n, const float *x)
{
    struct moe_predictor *p = ud;
    if (p->next.on_moe_input) p->next.on_moe_input(p->next.ud, layer, n, x);
    moe_predictor_on_moe_input(p, layer, n, x);
}

struct moe_engine_hooks moe_predictor_hooks(struct moe_predictor *p, const struct moe_engine_hooks *next)
{
    if (next)
        p->next = *next;
    else
        memset(&p->next, 0, sizeof(p->next));
    /* hidden states only when something wants them: on a GPU each one is a copy to the host */
    bool hidden = p->next.on_hidden || (p->path && p->path->context);
    struct moe_engine_hooks h = { .ud = p, .on_hidden = hidden ? hk_hidden : NULL, .on_route = hk_route,
                                  .on_moe_input = uses_gate(p) || p->next.on_moe_input ? hk_moe_input : NULL,
                                  /* the context block needs only the final hidden state */
                                  .hidden_final_only = !p->next.on_hidden || p->next.hidden_final_only };
    return h;
}
