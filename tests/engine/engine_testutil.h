/* Helpers for the engine tests: reference tensors and capturing hooks. */
#ifndef MOE_ENGINE_TESTUTIL_H
#define MOE_ENGINE_TESTUTIL_H

#include "engine/engine.h"
#include "engine/sampling.h"
#include "model/model.h"
#include "tests/test_util.h"

#include <jansson.h>
#include <math.h>
#include <unistd.h>

/* pad_token_id of config.json when it differs from every eos id, else -1:
 * transformers' generate() masks such prompt tokens, so greedy references
 * are compared without them. */
static inline int t_generate_pad_id(const char *dir, const struct moe_config *cfg)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    json_t *j = json_load_file(path, 0, NULL);
    REQUIRE(j, "cannot parse %s", path);
    json_t *pad = json_object_get(j, "pad_token_id");
    int id = json_is_integer(pad) ? (int)json_integer_value(pad) : -1;
    json_decref(j);
    for (int i = 0; i < cfg->n_eos; i++)
        if (cfg->eos_ids[i] == id) return -1;
    return id;
}

/* A reference tensor as malloc'd floats (any dtype); NULL if absent. */
static inline float *ref_f32(struct moe_st_file *f, const char *name, int64_t *rows, int64_t *cols)
{
    const struct moe_st_tensor *t = moe_st_find(f, name);
    if (!t) return NULL;
    struct moe_wview v = moe_wview_from_tensor(t);
    float *out = malloc(sizeof(float) * (size_t)(v.rows * v.cols > 0 ? v.rows * v.cols : 1));
    moe_wview_to_f32(&v, out);
    if (rows) *rows = v.rows;
    if (cols) *cols = v.cols;
    return out;
}

/* The model in the source tree's rel (its directory into dir) and its reference.safetensors;
 * the test stops with a message when either does not open. */
static inline struct moe_model *t_open_with_reference(const char *rel, char *dir, size_t cap,
                                                       struct moe_st_file **ref)
{
    char rp[4200];
    t_path(dir, cap, rel);
    struct moe_model *m = moe_model_open(dir);
    REQUIRE(m, "open %s: %s", dir, moe_last_error());
    snprintf(rp, sizeof(rp), "%s/reference.safetensors", dir);
    *ref = moe_st_open(rp);
    REQUIRE(*ref, "open %s: %s", rp, moe_last_error());
    return m;
}

static inline double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

/* Everything the hooks saw during one forward of n tokens. */
struct capture {
    int n, H, E, K, L;
    float *hidden[MOE_MAX_LAYERS + 1];   /* [n, H] per j */
    float *rlogits[MOE_MAX_LAYERS];      /* [n, E] */
    int *ids[MOE_MAX_LAYERS];            /* [n, K] */
    float *w[MOE_MAX_LAYERS];            /* [n, K] */
    int moe_input_calls, route_calls;
    int last_moe_input_layer;
    bool order_ok;                       /* on_moe_input(l) came right before on_route(l) */
};

static inline void cap_hidden(void *ud, int j, int n, const float *h)
{
    struct capture *c = ud;
    free(c->hidden[j]);
    c->hidden[j] = malloc(sizeof(float) * (size_t)n * c->H);
    memcpy(c->hidden[j], h, sizeof(float) * (size_t)n * c->H);
    c->n = n;
}

static inline void cap_route(void *ud, int layer, int n, const float *logits, const int *ids, const float *w)
{
    struct capture *c = ud;
    c->route_calls++;
    if (c->last_moe_input_layer != layer) c->order_ok = false;
    free(c->rlogits[layer]);
    free(c->ids[layer]);
    free(c->w[layer]);
    c->rlogits[layer] = malloc(sizeof(float) * (size_t)n * c->E);
    c->ids[layer] = malloc(sizeof(int) * (size_t)n * c->K);
    c->w[layer] = malloc(sizeof(float) * (size_t)n * c->K);
    memcpy(c->rlogits[layer], logits, sizeof(float) * (size_t)n * c->E);
    memcpy(c->ids[layer], ids, sizeof(int) * (size_t)n * c->K);
    memcpy(c->w[layer], w, sizeof(float) * (size_t)n * c->K);
}

static inline void cap_moe_input(void *ud, int layer, int n, const float *x)
{
    struct capture *c = ud;
    (void)n;
    (void)x;
    c->moe_input_calls++;
    c->last_moe_input_layer = layer;
}

static inline void capture_init(struct capture *c, const struct moe_config *cfg)
{
    memset(c, 0, sizeof(*c));
    c->H = cfg->hidden;
    c->E = cfg->n_experts;
    c->K = cfg->top_k;
    c->L = cfg->n_layers;
    c->order_ok = true;
    c->last_moe_input_layer = -1;
}

static inline void capture_free(struct capture *c)
{
    for (int j = 0; j <= MOE_MAX_LAYERS; j++) free(c->hidden[j]);
    for (int l = 0; l < MOE_MAX_LAYERS; l++) free(c->rlogits[l]), free(c->ids[l]), free(c->w[l]);
}

static inline struct moe_engine_hooks capture_hooks(struct capture *c)
{
    return (struct moe_engine_hooks){ .ud = c, .on_hidden = cap_hidden, .on_route = cap_route,
                                      .on_moe_input = cap_moe_input };
}

/* Prefill ids[0..n) into a fresh sequence, logits of every position into out [n, V]. */
static inline enum moe_status run_prompt(struct moe_engine *e, int seq, const int *ids, int n, float *out)
{
    int *pos = malloc(sizeof(int) * (size_t)n), *sq = malloc(sizeof(int) * (size_t)n);
    int base = moe_engine_seq_len(e, seq);
    for (int i = 0; i < n; i++) pos[i] = base + i, sq[i] = seq;
    struct moe_batch b = { .n = n, .tokens = ids, .seq = sq, .pos = pos };
    enum moe_status st = moe_engine_forward(e, &b, out);
    free(pos);
    free(sq);
    return st;
}

/* The prompt ids[0..n) fed one token at a time into a fresh sequence: how many positions' logits differ,
 * in any bit, from prefill [n, V] (the batch prefill of the same prompt).  The sequence is freed. */
static inline int t_token_by_token_diffs(struct moe_engine *e, const int *ids, int n, const float *prefill)
{
    int V = moe_engine_model(e)->cfg.vocab, seq = moe_engine_seq_alloc(e), diffs = 0;
    float *step = malloc(sizeof(float) * (size_t)V);
    REQUIRE(step && seq >= 0, "token by token: no memory or no free sequence");
    for (int i = 0; i < n; i++) {
        REQUIRE(run_prompt(e, seq, ids + i, 1, step) == MOE_OK, "token by token: %s", moe_last_error());
        if (memcmp(step, prefill + (size_t)i * V, sizeof(float) * (size_t)V)) diffs++;
    }
    moe_engine_seq_free(e, seq);
    free(step);
    return diffs;
}

/* Greedy decode of one sequence alone: prefill prompt[0..n) into seq, then
 * out[0..steps) where out[t] is the argmax of the logits after out[t - 1]
 * (after the prompt for t = 0); steps - 1 decode forwards.  The prompt's
 * logits [n, V] go to prompt_logits unless it is NULL. */
static inline enum moe_status t_greedy(struct moe_engine *e, int seq, const int *prompt, int n, int steps,
                                       int *out, float *prompt_logits)
{
    int V = moe_engine_model(e)->cfg.vocab;
    float *lg = prompt_logits ? prompt_logits : malloc(sizeof(float) * (size_t)n * (size_t)V);
    float *next = malloc(sizeof(float) * (size_t)V);
    enum moe_status st = lg && next ? run_prompt(e, seq, prompt, n, lg) : MOE_ENOMEM;
    const float *last = lg + (size_t)(n - 1) * (size_t)V;
    for (int t = 0; t < steps && st == MOE_OK; t++) {
        out[t] = moe_argmax(last, V);
        if (t + 1 < steps) st = run_prompt(e, seq, &out[t], 1, next);
        last = next;
    }
    if (lg != prompt_logits) free(lg);
    free(next);
    return st;
}

/* The file from copied to to (made or replaced); the test stops when either cannot be opened or written. */
static inline void t_copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    REQUIRE(a && b, "copy %s -> %s", from, to);
    char buf[4096];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, a)) > 0) REQUIRE(fwrite(buf, 1, k, b) == k, "write %s", to);
    fclose(a);
    fclose(b);
}

/* A model directory a test made: its config.json and model.safetensors, then the directory. */
static inline void t_remove_copy(const char *dir)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    rmdir(dir);
}

#endif
