/* MLP routing-path predictor: forward pass, Adam training, safetensors I/O. */
#include "path_model.h"

#include "../model/model.h"
#include "../model/safetensors.h"
#include "../kernels/backend.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float urand(uint64_t *s) { return (float)((splitmix(s) >> 40) * (1.0 / 8388608.0) - 1.0); }

/* Whether the shape is one a model can have (the bounds alloc_model is called within): true, or false
 * with why[cap] naming the first value out of its bounds. */
static bool shape_ok(int n_moe, int n_experts, int top_k, int dim, int width, const struct moe_path_opts *o, char *why,
                     size_t cap)
{
    const struct { const char *name; long v, lo, hi; } f[] = {
        { "n_moe_layers", n_moe, 1, 1024 }, { "n_experts", n_experts, 1, 4096 }, { "top_k", top_k, 1, n_experts },
        { "dim", dim, 1, 65536 }, { "width", width, 1, 65536 }, { "horizon", o->horizon, 1, MOE_PATH_MAX_HORIZON },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(f); i++)
        if (f[i].v < f[i].lo || f[i].v > f[i].hi) {
            snprintf(why, cap, "%s %ld is outside %ld..%ld", f[i].name, f[i].v, f[i].lo, f[i].hi);
            return false;
        }
    if (!(o->hist_decay >= 0 && o->hist_decay < 1)) {
        snprintf(why, cap, "history decay %g is outside [0, 1)", (double)o->hist_decay);
        return false;
    }
    return true;
}

/* The inputs and outputs of a model of that shape: the token's hidden state, each expert's routing (and its
 * decayed history), the context's hidden state; each expert of each MoE layer at each step ahead. */
static int n_inputs(int n_moe, int n_experts, int dim, const struct moe_path_opts *o)
{
    return dim + n_moe * n_experts * (o->hist_decay > 0 ? 2 : 1) + (o->context ? dim : 0);
}

static int n_outputs(int n_moe, int n_experts, const struct moe_path_opts *o) { return o->horizon * n_moe * n_experts; }

/* A model of that shape (shape_ok), its weights zero; NULL when out of memory. */
static struct moe_path_model *alloc_model(int n_moe, int n_experts, int top_k, int dim, int width,
                                          const struct moe_path_opts *o)
{
    int horizon = o->horizon;
    float hist_decay = o->hist_decay;
    struct moe_path_model *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    m->n_moe = n_moe;
    m->n_experts = n_experts;
    m->top_k = top_k;
    m->dim = dim;
    m->width = width;
    m->horizon = horizon;
    m->n_out = n_outputs(n_moe, n_experts, o);
    m->hist_decay = hist_decay;
    m->context = o->context;
    m->n_in = n_inputs(n_moe, n_experts, dim, o);
    m->w1 = calloc((size_t)width * (size_t)m->n_in, sizeof(float));
    m->b1 = calloc((size_t)width, sizeof(float));
    m->w2 = calloc((size_t)m->n_out * (size_t)width, sizeof(float));
    m->b2 = calloc((size_t)m->n_out, sizeof(float));
    if (!m->w1 || !m->b1 || !m->w2 || !m->b2) {
        moe_path_model_free(m);
        return NULL;
    }
    return m;
}

struct moe_path_model *moe_path_model_create(int n_moe, int n_experts, int top_k, int dim, int width,
                                             int horizon, uint64_t seed)
{
    struct moe_path_opts o = { .horizon = horizon };
    return moe_path_model_create_ex(n_moe, n_experts, top_k, dim, width, &o, seed);
}

struct moe_path_model *moe_path_model_create_ex(int n_moe, int n_experts, int top_k, int dim, int width,
                                                const struct moe_path_opts *o, uint64_t seed)
{
    char why[128];
    if (!shape_ok(n_moe, n_experts, top_k, dim, width, o, why, sizeof why)) {
        moe_errorf(MOE_EINVAL, "path predictor: bad shape (moe layers %d, experts %d, top_k %d, dim %d, width %d, "
                   "horizon %d, history decay %g): %s", n_moe, n_experts, top_k, dim, width, o->horizon,
                   (double)o->hist_decay, why);
        return NULL;
    }
    struct moe_path_model *m = alloc_model(n_moe, n_experts, top_k, dim, width, o);
    if (!m) {
        moe_errorf(MOE_ENOMEM, "path predictor: out of memory for its weights (width %d, %d MoE layers x %d "
                   "experts)", width, n_moe, n_experts);
        return NULL;
    }
    uint64_t s = seed;
    float a1 = sqrtf(6.0f / (float)m->n_in), a2 = sqrtf(6.0f / (float)(width + m->n_out));
    for (size_t i = 0; i < (size_t)width * (size_t)m->n_in; i++) m->w1[i] = a1 * urand(&s);
    for (size_t i = 0; i < (size_t)m->n_out * (size_t)width; i++) m->w2[i] = a2 * urand(&s);
    /* Start each head at the base rate top_k / n_experts. */
    float base = logf((float)top_k / (float)(n_experts - top_k > 0 ? n_experts - top_k : 1));
    for (int i = 0; i < m->n_out; i++) m->b2[i] = base;
    return m;
}

void moe_path_model_free(struct moe_path_model *m)
{
    if (!m) return;
    free(m->w1);
    free(m->b1);
    free(m->w2);
    free(m->b2);
    free(m);
}

void moe_path_model_features(const struct moe_path_model *m, const float *emb, const int *prev, float *x)
{
    moe_path_model_features_ex(m, emb, prev, NULL, NULL, x);
}

/* dst = src scaled to unit root-mean-square. */
static void rms_unit(const float *src, int n, float *dst)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)src[i] * src[i];
    float inv = (float)(1.0 / sqrt(ss / n + 1e-12));
    for (int i = 0; i < n; i++) dst[i] = src[i] * inv;
}

void moe_path_model_hist_update(const struct moe_path_model *m, float *hist, const int *routing)
{
    size_t ne = (size_t)m->n_moe * (size_t)m->n_experts;
    float d = m->hist_decay;
    for (size_t i = 0; i < ne; i++) hist[i] *= d;
    for (int l = 0; l < m->n_moe; l++)
        for (int j = 0; j < m->top_k; j++) {
            int e = routing[l * m->top_k + j];
            if (e >= 0 && e < m->n_experts) hist[l * m->n_experts + e] += 1.0f - d;
        }
}

void moe_path_model_features_ex(const struct moe_path_model *m, const float *emb, const int *prev,
                                const float *hist, const float *ctx, float *x)
{
    size_t ne = (size_t)m->n_moe * (size_t)m->n_experts;
    float *tail = x + m->dim + ne;
    if (m->hist_decay > 0) {
        if (hist)
            memcpy(tail, hist, sizeof(float) * ne);
        else
            memset(tail, 0, sizeof(float) * ne);
        tail += ne;
    }
    if (m->context) {
        if (ctx)
            rms_unit(ctx, m->dim, tail);
        else
            memset(tail, 0, sizeof(float) * (size_t)m->dim);
    }
    rms_unit(emb, m->dim, x);
    float *hot = x + m->dim;
    memset(hot, 0, sizeof(float) * (size_t)m->n_moe * (size_t)m->n_experts);
    if (!prev) return;
    for (int l = 0; l < m->n_moe; l++)
        for (int j = 0; j < m->top_k; j++) {
            int e = prev[l * m->top_k + j];
            if (e >= 0 && e < m->n_experts) hot[l * m->n_experts + e] = 1.0f;
        }
}

static float sigmoidf_(float z) { return 1.0f / (1.0f + expf(-z)); }

/* The hidden layer's ReLU, in place on h [B, width]. */
static void relu_rows(const struct moe_path_model *m, int B, float *h)
{
    for (size_t i = 0; i < (size_t)B * (size_t)m->width; i++)
        if (h[i] < 0) h[i] = 0;
}

/* Logits of the first n outputs of every row (z2 [B, n]); h [B, width] gets the hidden layer. */
static void forward_logits_n(const struct moe_path_model *m, int B, const float *x, float *h, float *z2, int n)
{
    for (int b = 0; b < B; b++) memcpy(h + (size_t)b * m->width, m->b1, sizeof(float) * (size_t)m->width);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, m->width, m->n_in, 1.0f, x, m->n_in, m->w1,
                m->n_in, 1.0f, h, m->width);
    relu_rows(m, B, h);
    for (int b = 0; b < B; b++) memcpy(z2 + (size_t)b * n, m->b2, sizeof(float) * (size_t)n);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, n, m->width, 1.0f, h, m->width, m->w2, m->width, 1.0f,
                z2, n);
}

static void forward_logits(const struct moe_path_model *m, int B, const float *x, float *h, float *z2)
{
    forward_logits_n(m, B, x, h, z2, m->n_out);
}

void moe_path_model_forward_first(const struct moe_path_model *m, struct moe_backend *be, int B, const float *x,
                                  int n_first, float *p, float *scratch)
{
    if (n_first <= 0 || n_first > m->n_out) n_first = m->n_out;
    bool done = be && be->ops->linear(be->ctx, x, m->w1, MOE_DT_F32, m->b1, B, m->n_in, m->width, scratch) == MOE_OK;
    if (done) {
        relu_rows(m, B, scratch);
        done = be->ops->linear(be->ctx, scratch, m->w2, MOE_DT_F32, m->b2, B, m->width, n_first, p) == MOE_OK;
    }
    if (!done) forward_logits_n(m, B, x, scratch, p, n_first);
    for (size_t i = 0; i < (size_t)B * (size_t)n_first; i++) p[i] = sigmoidf_(p[i]);
}

void moe_path_model_forward(const struct moe_path_model *m, struct moe_backend *be, int B, const float *x,
                            float *p, float *scratch)
{
    moe_path_model_forward_first(m, be, B, x, m->n_out, p, scratch);
}

enum moe_status moe_path_model_save(const struct moe_path_model *m, const char *path,
                                    const char *const *extra_meta)
{
    char s_moe[16], s_e[16], s_k[16], s_dim[16], s_w[16], s_h[16], s_hd[32];
    snprintf(s_h, sizeof s_h, "%d", m->horizon);
    snprintf(s_hd, sizeof s_hd, "%.9g", (double)m->hist_decay);
    snprintf(s_moe, sizeof s_moe, "%d", m->n_moe);
    snprintf(s_e, sizeof s_e, "%d", m->n_experts);
    snprintf(s_k, sizeof s_k, "%d", m->top_k);
    snprintf(s_dim, sizeof s_dim, "%d", m->dim);
    snprintf(s_w, sizeof s_w, "%d", m->width);
    const char *meta[64];
    size_t n = 0;
    const char *fixed[] = { "format", "moeflow-path-predictor", "version", "1", "n_moe_layers", s_moe,
                            "n_experts", s_e, "top_k", s_k, "dim", s_dim, "width", s_w, "horizon", s_h,
                            "model", m->model_name, NULL };
    for (size_t i = 0; fixed[i]; i++) meta[n++] = fixed[i];
    if (m->hist_decay > 0) {
        meta[n++] = "hist_decay";
        meta[n++] = s_hd;
    }
    if (m->context) {
        meta[n++] = "context";
        meta[n++] = "final_hidden";
    }

    for (size_t i = 0; extra_meta && extra_meta[i] && extra_meta[i + 1] && n + 3 < MOE_ARRAY_LEN(meta); i += 2) {
        meta[n++] = extra_meta[i];
        meta[n++] = extra_meta[i + 1];
    }
    meta[n] = NULL;
    struct moe_st_out t[4] = {
        { .name = "w1", .dtype = MOE_DT_F32, .ndim = 2, .shape = { m->width, m->n_in }, .data = m->w1 },
        { .name = "b1", .dtype = MOE_DT_F32, .ndim = 1, .shape = { m->width }, .data = m->b1 },
        { .name = "w2", .dtype = MOE_DT_F32, .ndim = 2, .shape = { m->n_out, m->width }, .data = m->w2 },
        { .name = "b2", .dtype = MOE_DT_F32, .ndim = 1, .shape = { m->n_out }, .data = m->b2 },
    };
    return moe_st_write(path, t, 4, meta);
}

bool moe_path_model_other_model(const char *recorded, const char *model_dir)
{
    if (!recorded || !*recorded || !model_dir) return false;
    char a[4096], b[4096];
    moe_model_dir_name(recorded, a, sizeof a);
    moe_model_dir_name(model_dir, b, sizeof b);
    return strcmp(a, b) != 0;
}

static bool meta_int(struct moe_st_file *f, const char *key, int *out)
{
    const char *v = moe_st_metadata(f, key);
    long x;
    if (!v || !moe_parse_long(v, 1, 1 << 20, &x)) return false;
    *out = (int)x;
    return true;
}

/* Tensor name of f, F32 of shape [r] (c 0) or [r, c], into *out; the error names what it must be. */
static enum moe_status find_tensor(struct moe_st_file *f, const char *path, const char *name, int64_t r, int64_t c,
                                   const struct moe_st_tensor **out)
{
    const struct moe_st_tensor *t = moe_st_find(f, name);
    if (!t) return moe_errorf(MOE_EFORMAT, "%s: tensor '%s' missing", path, name);
    bool ok = t->dtype == MOE_DT_F32 &&
              ((c == 0 && t->ndim == 1 && t->shape[0] == r) ||
               (c > 0 && t->ndim == 2 && t->shape[0] == r && t->shape[1] == c));
    if (!ok) {
        if (c == 0) return moe_errorf(MOE_EFORMAT, "%s: tensor '%s' must be F32 [%lld]", path, name, (long long)r);
        return moe_errorf(MOE_EFORMAT, "%s: tensor '%s' must be F32 [%lld, %lld]", path, name, (long long)r,
                          (long long)c);
    }
    *out = t;
    return MOE_OK;
}

static enum moe_status load_tensor(const struct moe_st_tensor *t, const char *path, float *dst)
{
    memcpy(dst, t->data, t->nbytes);
    size_t n = t->nbytes / sizeof(float);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            return moe_errorf(MOE_EFORMAT, "%s: tensor '%s' has non-finite values (retrain it)", path, t->name);
    return MOE_OK;
}

struct moe_path_model *moe_path_model_load(const char *path, int n_moe, int n_experts, int top_k, int dim)
{
    struct moe_path_model *m = NULL;
    struct moe_st_file *f = moe_st_open(path);
    if (!f) {
        moe_error_prefix(MOE_EIO, "path predictor");
        return NULL;
    }
    const char *fmt = moe_st_metadata(f, "format");
    if (!fmt || strcmp(fmt, "moeflow-path-predictor") != 0) {
        moe_errorf(MOE_EFORMAT, "%s: not a path predictor (metadata format must be moeflow-path-predictor)", path);
        goto out_close;
    }
    const char *ver = moe_st_metadata(f, "version");
    if (!ver || strcmp(ver, "1") != 0) {
        moe_errorf(MOE_EFORMAT, "%s: path predictor format version %s; this build reads version 1 (retrain it "
                   "with this build's moeflow train-predictor)", path, ver ? ver : "missing");
        goto out_close;
    }
    int fm, fe, fk, fd, fw;
    if (!meta_int(f, "n_moe_layers", &fm) || !meta_int(f, "n_experts", &fe) || !meta_int(f, "top_k", &fk) ||
        !meta_int(f, "dim", &fd) || !meta_int(f, "width", &fw)) {
        moe_errorf(MOE_EFORMAT, "%s: metadata n_moe_layers/n_experts/top_k/dim/width missing or not positive",
                   path);
        goto out_close;
    }
    if ((n_moe > 0 && fm != n_moe) || (n_experts > 0 && fe != n_experts) || (top_k > 0 && fk != top_k) ||
        (dim > 0 && fd != dim)) {
        moe_errorf(MOE_EINVAL,
                   "%s: trained for %d MoE layers x %d experts, top-%d, dim %d; the model has %d x %d, top-%d, dim %d "
                   "(train one with moeflow train-predictor for this model)",
                   path, fm, fe, fk, fd, n_moe, n_experts, top_k, dim);
        goto out_close;
    }
    int fh = 1;
    if (moe_st_metadata(f, "horizon") && (!meta_int(f, "horizon", &fh) || fh < 1 || fh > MOE_PATH_MAX_HORIZON)) {
        moe_errorf(MOE_EFORMAT, "%s: metadata horizon must be 1..%d", path, MOE_PATH_MAX_HORIZON);
        goto out_close;
    }
    float fhd = 0;
    const char *hd = moe_st_metadata(f, "hist_decay");
    if (hd) {
        double d;
        fhd = moe_parse_double_in(hd, 0, 1, &d) ? (float)d : 0; /* in (0, 1) as a float: 1e-50 is 0 */
        if (!(fhd > 0 && fhd < 1)) {
            moe_errorf(MOE_EFORMAT, "%s: metadata hist_decay '%s' must be a number in (0, 1)", path, hd);
            goto out_close;
        }
    }
    const char *cx = moe_st_metadata(f, "context");
    if (cx && strcmp(cx, "final_hidden") != 0) {
        moe_errorf(MOE_EFORMAT, "%s: metadata context '%s' is not 'final_hidden' (a newer format?)", path, cx);
        goto out_close;
    }
    struct moe_path_opts o = { .horizon = fh, .hist_decay = fhd, .context = cx != NULL };
    char why[128];
    if (!shape_ok(fm, fe, fk, fd, fw, &o, why, sizeof why)) {
        moe_errorf(MOE_EFORMAT, "%s: bad shape in metadata: %s (no predictor has it: retrain it with moeflow "
                   "train-predictor)", path, why);
        goto out_close;
    }
    /* the tensors the shape implies are in the file before anything is allocated for them: metadata alone
     * (a width of 65536, say) never makes the load allocate gigabytes */
    int n_in = n_inputs(fm, fe, fd, &o), n_out = n_outputs(fm, fe, &o); /* alloc_model's, the shape checked */
    const struct moe_st_tensor *tw1, *tb1, *tw2, *tb2;
    if (find_tensor(f, path, "w1", fw, n_in, &tw1) || find_tensor(f, path, "b1", fw, 0, &tb1) ||
        find_tensor(f, path, "w2", n_out, fw, &tw2) || find_tensor(f, path, "b2", n_out, 0, &tb2))
        goto out_close;
    m = alloc_model(fm, fe, fk, fd, fw, &o);
    if (!m) {
        moe_errorf(MOE_ENOMEM, "%s: out of memory for the predictor's weights", path);
        goto out_close;
    }
    const char *name = moe_st_metadata(f, "model");
    snprintf(m->model_name, sizeof m->model_name, "%s", name ? name : "");
    /* the weights are read through the mapping: a file cut short meanwhile reads as zeros there, which
     * moe_st_check names rather than load them */
    if (load_tensor(tw1, path, m->w1) || load_tensor(tb1, path, m->b1) || load_tensor(tw2, path, m->w2) ||
        load_tensor(tb2, path, m->b2) || (moe_st_check(f) != MOE_OK && moe_error_prefix(MOE_EIO, "path predictor"))) {
        moe_path_model_free(m);
        m = NULL;
    }
out_close:
    moe_st_close(f);
    return m;
}

/* ---- training ---- */

void moe_path_neighbours(const int *experts, const int *seq, const int *pos, size_t n, size_t row, int *prev,
                         int *next)
{
    for (size_t i = 0; i < n; i++) {
        bool before = i > 0 && seq[i - 1] == seq[i] && pos[i - 1] + 1 == pos[i];
        bool after = i + 1 < n && seq[i + 1] == seq[i] && pos[i + 1] == pos[i] + 1;
        for (size_t j = 0; j < row; j++) {
            if (prev) prev[i * row + j] = before ? experts[(i - 1) * row + j] : -1;
            if (next) next[i * row + j] = after ? experts[(i + 1) * row + j] : -1;
        }
    }
}

struct adam {
    float *m, *v;
    size_t n;
};

static bool adam_init(struct adam *a, size_t n)
{
    a->n = n;
    a->m = calloc(n, sizeof(float));
    a->v = calloc(n, sizeof(float));
    return a->m && a->v;
}

static void adam_free(struct adam *a)
{
    free(a->m);
    free(a->v);
}

static void adam_step(struct adam *a, float *w, const float *g, float lr, float wd, int t)
{
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    float c1 = 1.0f - powf(b1, (float)t), c2 = 1.0f - powf(b2, (float)t);
    for (size_t i = 0; i < a->n; i++) {
        a->m[i] = b1 * a->m[i] + (1 - b1) * g[i];
        a->v[i] = b2 * a->v[i] + (1 - b2) * g[i] * g[i];
        float mh = a->m[i] / c1, vh = a->v[i] / c2;
        w[i] -= lr * (mh / (sqrtf(vh) + eps) + wd * w[i]);
    }
}

static void build_rows(const struct moe_path_model *m, const struct moe_path_data *d, const int *idx, int B,
                       float *x, float *y)
{
    int pk = m->n_moe * m->top_k;
    for (int b = 0; b < B; b++) {
        int s = idx[b];
        moe_path_model_features_ex(m, d->emb + (size_t)d->token[s] * (size_t)m->dim, d->prev + (size_t)s * pk,
                                   d->hist ? d->hist + (size_t)s * m->n_moe * m->n_experts : NULL,
                                   d->ctx ? d->ctx + (size_t)s * m->dim : NULL, x + (size_t)b * m->n_in);
        if (!y) continue;
        float *yr = y + (size_t)b * m->n_out;
        memset(yr, 0, sizeof(float) * (size_t)m->n_out);
        const int *t = d->target + (size_t)s * pk;
        for (int l = 0; l < m->n_moe; l++)
            for (int j = 0; j < m->top_k; j++) {
                int e = t[l * m->top_k + j];
                if (e >= 0 && e < m->n_experts) yr[l * m->n_experts + e] = 1.0f;
            }
        bool ok = d->next != NULL;
        for (int hz = 1; hz < m->horizon; hz++) {
            float *yn = yr + (size_t)hz * m->n_moe * m->n_experts;
            /* token s+hz continues the sequence when s..s+hz-1 all have a next token */
            ok = ok && s + hz - 1 < d->n && d->next[(size_t)(s + hz - 1) * pk] >= 0;
            if (!ok) { /* the sequence ended before it: masked */
                for (int i = 0; i < m->n_moe * m->n_experts; i++) yn[i] = -1.0f;
                continue;
            }
            const int *nx = d->next + (size_t)(s + hz - 1) * pk;
            for (int l = 0; l < m->n_moe; l++)
                for (int j = 0; j < m->top_k; j++) {
                    int e = nx[l * m->top_k + j];
                    if (e >= 0 && e < m->n_experts) yn[l * m->n_experts + e] = 1.0f;
                }
        }
    }
}

static float bce(float z, float y)
{
    /* log(1 + e^z) - y z, stable */
    float az = fabsf(z);
    return (z > 0 ? z : 0) + log1pf(expf(-az)) - y * z;
}

/* Mean BCE per output with a target (the masked ones of a block after the sequence's end left out) and
 * recall@top_k over rows [lo, hi). */
static void evaluate(const struct moe_path_model *m, const struct moe_path_data *d, int lo, int hi, float *x,
                     float *y, float *h, float *z, int *idx, double *loss, double *recall)
{
    const int B = 256;
    double ls = 0, n_ls = 0, hit = 0, tot = 0;
    for (int s = lo; s < hi; s += B) {
        int nb = hi - s < B ? hi - s : B;
        for (int b = 0; b < nb; b++) idx[b] = s + b;
        build_rows(m, d, idx, nb, x, y);
        forward_logits(m, nb, x, h, z);
        for (int b = 0; b < nb; b++) {
            const float *zr = z + (size_t)b * m->n_out, *yr = y + (size_t)b * m->n_out;
            for (int i = 0; i < m->n_out; i++)
                if (yr[i] >= 0) {
                    ls += bce(zr[i], yr[i]);
                    n_ls++;
                }
            for (int l = 0; l < m->n_moe; l++) {
                const float *zl = zr + l * m->n_experts, *yl = yr + l * m->n_experts;
                /* count targets ranked within top_k */
                for (int e = 0; e < m->n_experts; e++) {
                    if (yl[e] == 0) continue;
                    tot += 1;
                    if (!isfinite(zl[e])) continue; /* a non-finite score is never a hit */
                    int better = 0;
                    for (int f = 0; f < m->n_experts; f++)
                        if (zl[f] > zl[e] || (zl[f] == zl[e] && f < e) || isnan(zl[f])) better++;
                    hit += better < m->top_k;
                }
            }
        }
    }
    *loss = n_ls > 0 ? ls / n_ls : 0;
    *recall = tot > 0 ? hit / tot : 0;
}

enum moe_status moe_path_model_train(struct moe_path_model *m, const struct moe_path_data *d,
                                     const struct moe_path_train_params *tp, struct moe_path_train_report *rep)
{
    enum moe_status st = MOE_OK;
    double t0 = moe_now();
    memset(rep, 0, sizeof(*rep));
    if (d->n < 4) return moe_errorf(MOE_EINVAL, "path predictor training: %d samples (need at least 4)", d->n);
    if (tp->batch <= 0 || tp->max_epochs <= 0 || !(tp->lr > 0) || tp->val_frac < 0 || tp->val_frac > 0.5f)
        return moe_errorf(MOE_EINVAL, "path predictor training: bad parameters (batch %d, epochs %d, lr %g, val_frac %g)",
                          tp->batch, tp->max_epochs, (double)tp->lr, (double)tp->val_frac);
    for (int i = 0; i < d->n; i++)
        if (d->token[i] < 0 || d->token[i] >= d->vocab)
            return moe_errorf(MOE_ERANGE, "path predictor training: sample %d has token %d outside vocab %d", i,
                              d->token[i], d->vocab);
    int n_val = (int)(d->n * tp->val_frac);
    if (tp->val_frac > 0 && n_val < 1) n_val = 1;
    int n_tr = d->n - n_val;
    rep->n_train = n_tr;
    rep->n_val = n_val;

    const int B = tp->batch;
    size_t n_w1 = (size_t)m->width * m->n_in, n_w2 = (size_t)m->n_out * m->width;
    float *x = malloc(sizeof(float) * (size_t)(B > 256 ? B : 256) * m->n_in);
    float *y = malloc(sizeof(float) * (size_t)(B > 256 ? B : 256) * m->n_out);
    float *h = malloc(sizeof(float) * (size_t)(B > 256 ? B : 256) * m->width);
    float *z = malloc(sizeof(float) * (size_t)(B > 256 ? B : 256) * m->n_out);
    float *dh = malloc(sizeof(float) * (size_t)B * m->width);
    float *g1 = malloc(sizeof(float) * n_w1), *gb1 = malloc(sizeof(float) * (size_t)m->width);
    float *g2 = malloc(sizeof(float) * n_w2), *gb2 = malloc(sizeof(float) * (size_t)m->n_out);
    float *best1 = malloc(sizeof(float) * n_w1), *bestb1 = malloc(sizeof(float) * (size_t)m->width);
    float *best2 = malloc(sizeof(float) * n_w2), *bestb2 = malloc(sizeof(float) * (size_t)m->n_out);
    int *perm = malloc(sizeof(int) * (size_t)(n_tr > 256 ? n_tr : 256));
    int *idx = malloc(sizeof(int) * 256);
    struct adam a1 = { 0 }, ab1 = { 0 }, a2 = { 0 }, ab2 = { 0 };
    if (!x || !y || !h || !z || !dh || !g1 || !gb1 || !g2 || !gb2 || !best1 || !bestb1 || !best2 || !bestb2 ||
        !perm || !idx || !adam_init(&a1, n_w1) || !adam_init(&ab1, (size_t)m->width) || !adam_init(&a2, n_w2) ||
        !adam_init(&ab2, (size_t)m->n_out)) {
        st = moe_errorf(MOE_ENOMEM, "path predictor training: out of memory");
        goto out_free;
    }
    /* the weights kept: the initial ones until an epoch ends with a finite held-out loss */
    memcpy(best1, m->w1, sizeof(float) * n_w1);
    memcpy(bestb1, m->b1, sizeof(float) * (size_t)m->width);
    memcpy(best2, m->w2, sizeof(float) * n_w2);
    memcpy(bestb2, m->b2, sizeof(float) * (size_t)m->n_out);
    for (int i = 0; i < n_tr; i++) perm[i] = i;
    uint64_t rng = tp->seed;
    double best_val = INFINITY;
    int since_best = 0, step = 0;
    /* Evaluate held-out on the train split when there is none. */
    int vlo = n_val > 0 ? n_tr : 0, vhi = n_val > 0 ? d->n : n_tr;
    for (int ep = 1; ep <= tp->max_epochs; ep++) {
        for (int i = n_tr - 1; i > 0; i--) {
            int j = (int)(splitmix(&rng) % (uint64_t)(i + 1));
            int t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        double tl = 0, n_tl = 0, shown = moe_now();
        for (int s = 0; s < n_tr; s += B) {
            if (tp->verbose && s > 0 && moe_now() - shown >= 10) { /* a long epoch says how far it is */
                shown = moe_now();
                fprintf(stderr, "epoch %d: %d / %d samples (%.1f s)\n", ep, s, n_tr, shown - t0);
            }
            int nb = n_tr - s < B ? n_tr - s : B;
            build_rows(m, d, perm + s, nb, x, y);
            forward_logits(m, nb, x, h, z);
            /* dz = (sigmoid(z) - y) / nb: gradient of the BCE summed over a row's outputs, the mean over rows */
            float sc = 1.0f / (float)nb;
            for (size_t i = 0; i < (size_t)nb * m->n_out; i++) {
                if (y[i] < 0) { /* masked */
                    z[i] = 0;
                    continue;
                }
                tl += bce(z[i], y[i]);
                n_tl++;
                z[i] = (sigmoidf_(z[i]) - y[i]) * sc;
            }
            /* g2 = dz^T h; gb2 = sum dz; dh = dz W2 masked by relu */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m->n_out, m->width, nb, 1.0f, z, m->n_out, h,
                        m->width, 0.0f, g2, m->width);
            memset(gb2, 0, sizeof(float) * (size_t)m->n_out);
            for (int b = 0; b < nb; b++)
                for (int i = 0; i < m->n_out; i++) gb2[i] += z[(size_t)b * m->n_out + i];
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, m->width, m->n_out, 1.0f, z, m->n_out,
                        m->w2, m->width, 0.0f, dh, m->width);
            for (size_t i = 0; i < (size_t)nb * m->width; i++)
                if (h[i] <= 0) dh[i] = 0;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m->width, m->n_in, nb, 1.0f, dh, m->width, x,
                        m->n_in, 0.0f, g1, m->n_in);
            memset(gb1, 0, sizeof(float) * (size_t)m->width);
            for (int b = 0; b < nb; b++)
                for (int i = 0; i < m->width; i++) gb1[i] += dh[(size_t)b * m->width + i];
            step++;
            adam_step(&a1, m->w1, g1, tp->lr, tp->weight_decay, step);
            adam_step(&ab1, m->b1, gb1, tp->lr, 0, step);
            adam_step(&a2, m->w2, g2, tp->lr, tp->weight_decay, step);
            adam_step(&ab2, m->b2, gb2, tp->lr, 0, step);
        }
        rep->train_loss = n_tl > 0 ? tl / n_tl : 0;
        double vl, vr;
        evaluate(m, d, vlo, vhi, x, y, h, z, idx, &vl, &vr);
        rep->epochs = ep;
        if (tp->verbose)
            fprintf(stderr, "epoch %d: train loss %.5f, held-out loss %.5f, recall@%d %.4f (%.1f s)\n", ep,
                    rep->train_loss, vl, m->top_k, vr, moe_now() - t0);
        if (!isfinite(vl)) { /* the weights overflowed: nothing after this epoch can be kept */
            st = moe_errorf(MOE_ERANGE, "path predictor training diverged: held-out loss %g at epoch %d (use a "
                            "lower --lr or --weight-decay)", vl, ep);
            break;
        }
        if (vl < best_val) {
            best_val = vl;
            rep->val_loss = vl;
            rep->val_recall = vr;
            rep->best_epoch = ep;
            since_best = 0;
            memcpy(best1, m->w1, sizeof(float) * n_w1);
            memcpy(bestb1, m->b1, sizeof(float) * (size_t)m->width);
            memcpy(best2, m->w2, sizeof(float) * n_w2);
            memcpy(bestb2, m->b2, sizeof(float) * (size_t)m->n_out);
        } else if (++since_best >= (tp->patience > 0 ? tp->patience : 1)) {
            break;
        }
    }
    memcpy(m->w1, best1, sizeof(float) * n_w1);
    memcpy(m->b1, bestb1, sizeof(float) * (size_t)m->width);
    memcpy(m->w2, best2, sizeof(float) * n_w2);
    memcpy(m->b2, bestb2, sizeof(float) * (size_t)m->n_out);
    rep->seconds = moe_now() - t0;
out_free:
    adam_free(&a1);
    adam_free(&ab1);
    adam_free(&a2);
    adam_free(&ab2);
    free(x);
    free(y);
    free(h);
    free(z);
    free(dh);
    free(g1);
    free(gb1);
    free(g2);
    free(gb2);
    free(best1);
    free(bestb1);
    free(best2);
    free(bestb2);
    free(perm);
    free(idx);
    return st;
}
