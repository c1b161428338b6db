/* The gate predictor on models with DeepSeek's grouped routers (V3's sigmoid
 * scores with bias, also GLM-4.5's; V2's softmax with groups kept by their largest score; ERNIE-4.5's
 * softmax with bias): a
 * layer's router applied by the predictor to that layer's own MoE input (handed
 * over as if it came from the layer before) names exactly the experts the
 * engine routed to, bias and group limits included; and its predictions leave
 * every logit unchanged. */
#include "engine/engine.h"
#include "predictor/predictor.h"
#include "tests/test_util.h"

#define T 9

struct cap {
    const struct moe_config *c;
    float *x[MOE_MAX_LAYERS];  /* [T, H] MoE input per layer */
    int ids[MOE_MAX_LAYERS][T * 8];
};

static void on_moe_input(void *ud, int layer, int n, const float *x)
{
    struct cap *k = ud;
    if (n == T) memcpy(k->x[layer], x, sizeof(float) * (size_t)n * k->c->hidden);
}

static void on_route(void *ud, int layer, int n, const float *logits, const int *ids, const float *w)
{
    struct cap *k = ud;
    (void)logits;
    (void)w;
    if (n == T) memcpy(k->ids[layer], ids, sizeof(int) * (size_t)n * k->c->top_k);
}

struct got {
    int moe_index, distance, n;
    float scores[T * 64];
    int calls;
};

static void predict(void *ud, int moe_index, int distance, bool step_start, int n, const float *scores)
{
    struct got *g = ud;
    if (step_start || distance != 1) return;
    g->moe_index = moe_index;
    g->distance = distance;
    g->n = n;
    g->calls++;
    memcpy(g->scores, scores, sizeof(float) * (size_t)n * 16);
}

static void run(struct moe_engine *e, const int *toks, const struct moe_engine_hooks *hk, float *logits)
{
    int seq = moe_engine_seq_alloc(e), pos[T], sq[T];
    for (int i = 0; i < T; i++) pos[i] = i, sq[i] = seq;
    moe_engine_set_hooks(e, hk);
    struct moe_batch b = { .n = T, .tokens = toks, .seq = sq, .pos = pos };
    REQUIRE(moe_engine_forward(e, &b, logits) == MOE_OK, "forward: %s", moe_last_error());
    moe_engine_seq_free(e, seq);
}

static void check_model(const char *rel, enum moe_router_kind kind)
{
    char dir[4096];
    struct moe_model *m = moe_model_open(t_path(dir, sizeof dir, rel));
    REQUIRE(m, "open: %s", moe_last_error());
    const struct moe_config *c = &m->cfg;
    REQUIRE(c->router == kind && c->n_experts == 16, "%s: fixture router", rel);
    struct moe_engine *e = moe_engine_create(m, &(struct moe_engine_params){ .max_seqs = 1, .max_batch_tokens = T });
    REQUIRE(e, "engine: %s", moe_last_error());
    static struct cap k;
    k.c = c;
    for (int l = 0; l < c->n_layers; l++) k.x[l] = calloc((size_t)T * c->hidden, sizeof(float));
    const int toks[T] = { 5, 17, 99, 3, 250, 42, 42, 7, 301 };
    float *ref = malloc(sizeof(float) * T * c->vocab), *lg = malloc(sizeof(float) * T * c->vocab);
    struct moe_engine_hooks hk = { .ud = &k, .on_moe_input = on_moe_input, .on_route = on_route };
    run(e, toks, &hk, ref);

    struct moe_pred_spec sp;
    REQUIRE(moe_pred_spec_parse("gate:1", dir, &sp) == MOE_OK, "spec");
    struct moe_predictor *p = moe_predictor_create(m, &sp, 1);
    REQUIRE(p, "predictor: %s", moe_last_error());
    static struct got g;
    struct moe_pred_sink sink = { .ud = &g, .predict = predict };
    moe_predictor_set_sink(p, &sink);
    int seq[T], pos[T];
    for (int i = 0; i < T; i++) seq[i] = 0, pos[i] = i;
    struct moe_batch b = { .n = T, .tokens = toks, .seq = seq, .pos = pos };
    for (int l = 2; l < c->n_layers; l++) { /* layers 1.. are MoE; layer 1 has no MoE layer before it */
        REQUIRE(moe_predictor_begin(p, &b) == MOE_OK, "begin: %s", moe_last_error());
        g.calls = 0;
        moe_predictor_on_moe_input(p, l - 1, T, k.x[l]);
        moe_predictor_end(p, true);
        CHECK(g.calls == 1 && g.moe_index == l - 1 && g.n == T, "%s layer %d: %d predictions for MoE index %d", rel,
              l, g.calls, g.moe_index);
        for (int t = 0; t < T; t++)
            for (int x = 0; x < c->n_experts; x++) {
                bool routed = false;
                for (int r = 0; r < c->top_k; r++) routed |= k.ids[l][t * c->top_k + r] == x;
                float s = g.scores[t * c->n_experts + x];
                CHECK(s == (routed ? 1.0f : 0.0f), "%s layer %d token %d expert %d: score %g, routed %d", rel, l, t,
                      x, s, routed);
            }
    }
    /* the predictor driven by the engine's hooks changes no logit */
    struct moe_engine_hooks ph = moe_predictor_hooks(p, NULL);
    run(e, toks, &ph, lg);
    CHECK(!memcmp(ref, lg, sizeof(float) * T * c->vocab), "%s: logits changed with the gate predictor attached", rel);

    moe_predictor_destroy(p);
    moe_engine_destroy(e);
    for (int l = 0; l < c->n_layers; l++) free(k.x[l]);
    free(ref);
    free(lg);
    moe_model_close(m);
}

int main(void)
{
    check_model("tests/fixtures/hf-tiny/deepseek_v3", MOE_ROUTER_SIGMOID_GROUP);
    check_model("tests/fixtures/deepseek-v3-variants/v2_group", MOE_ROUTER_SOFTMAX_GROUP);
    check_model("tests/fixtures/glm4-moe/air", MOE_ROUTER_SIGMOID_GROUP);
    check_model("tests/fixtures/ernie4_5-moe/a3b", MOE_ROUTER_SOFTMAX_BIAS);
    return t_result("test_pred_grouped");
}
