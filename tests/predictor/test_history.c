/* Predictor seam without an engine: spec parsing, the history predictor
 * learning a routing rule online, the gate predictor applying the next
 * layer's router, prefetch hints in descending score, and seq_path. */
#include "predictor/metrics.h"
#include "predictor/predictor.h"
#include "tests/test_util.h"

#define L 3   /* layers 0 and 2 MoE, 1 dense */
#define E 8
#define K 2
#define H 8

static int pf_calls, pf_last_layer, pf_last_n, pf_last_dist;
static float pf_last_scores[E];
static void fake_prefetch(void *self, int layer, int n, const int *ids, const float *scores, int distance)
{
    (void)self; (void)ids;
    pf_calls++;
    pf_last_layer = layer;
    pf_last_n = n;
    pf_last_dist = distance;
    memcpy(pf_last_scores, scores, sizeof(float) * (size_t)n);
}
static enum moe_status fake_acquire(void *s, int l, int n, const int *i, struct moe_expert_ref *o)
{
    (void)s; (void)l; (void)n; (void)i; (void)o;
    return MOE_OK;
}
static void fake_release(void *s, int l) { (void)s; (void)l; }
static const struct moe_provider_ops fake_ops = { .acquire = fake_acquire, .release = fake_release,
                                                  .prefetch = fake_prefetch };

static void fake_model(struct moe_model *m, struct moe_layer_w *lw, float *router)
{
    memset(m, 0, sizeof(*m));
    m->cfg.n_layers = L;
    m->cfg.n_experts = E;
    m->cfg.top_k = K;
    m->cfg.hidden = H;
    m->cfg.vocab = 100;
    m->cfg.is_moe[0] = m->cfg.is_moe[2] = true;
    m->layers = lw;
    memset(lw, 0, sizeof(*lw) * L);
    for (int l = 0; l < L; l++) {
        float *r = router + l * E * H;
        for (int e = 0; e < E; e++)
            for (int h = 0; h < H; h++) r[e * H + h] = (h == (e + l) % H) ? 4.0f : 0.0f;
        lw[l].router = (struct moe_wview){ .dtype = MOE_DT_F32, .rows = E, .cols = H, .data = r,
                                           .nbytes = sizeof(float) * E * H };
    }
}

int main(void)
{
    struct moe_pred_spec sp;
    CHECK(moe_pred_spec_parse("none", "/nonexistent", &sp) == MOE_OK && sp.kind == MOE_PRED_NONE, "none");
    CHECK(moe_pred_spec_parse("gate:2", "/nonexistent", &sp) == MOE_OK && sp.kind == MOE_PRED_GATE && sp.depth == 2,
          "gate:2");
    /* gate:D: D in 1..MOE_PRED_MAX_DEPTH, the whole text, base 10; else one message naming the spec */
    static const struct { const char *spec; int depth; } gate_ok[] = {
        { "gate", 3 }, { "gate:1", 1 }, { "gate:8", 8 }, { "gate:02", 2 }, { "gate:0008", 8 },
    };
    for (size_t i = 0; i < sizeof gate_ok / sizeof gate_ok[0]; i++) {
        memset(&sp, 0, sizeof sp);
        CHECK(moe_pred_spec_parse(gate_ok[i].spec, "/x", &sp) == MOE_OK && sp.kind == MOE_PRED_GATE &&
                  sp.depth == gate_ok[i].depth,
              "%s: depth %d, want %d (%s)", gate_ok[i].spec, sp.depth, gate_ok[i].depth, moe_last_error());
    }
    static const char *const gate_bad[] = { "gate:0", "gate:9", "gate:2x", "gate:", "gate:-1", "gate:+1", "gate: 1",
                                            "gate:1 ", "gate:1.0", "gate:0x1", "gate:1e0", "gate:99999999999999999999",
                                            "gate:-99999999999999999999", "gate:\t2", "gate:2:3" };
    for (size_t i = 0; i < sizeof gate_bad / sizeof gate_bad[0]; i++) {
        char want[128];
        snprintf(want, sizeof want, "--predictor %s: lookahead D must be an integer 1..%d", gate_bad[i],
                 MOE_PRED_MAX_DEPTH);
        CHECK(moe_pred_spec_parse(gate_bad[i], "/x", &sp) == MOE_EINVAL && !strcmp(moe_last_error(), want),
              "%s: '%s', want '%s'", gate_bad[i], moe_last_error(), want);
    }
    CHECK(moe_pred_spec_parse("bogus", "/x", &sp) == MOE_EINVAL && strstr(moe_last_error(), "history"),
          "bogus: %s", moe_last_error());
    CHECK(moe_pred_spec_parse("path:/nonexistent/p.safetensors", "/x", &sp) == MOE_ENOENT, "missing path file");
    CHECK(moe_pred_spec_parse("path:/tmp", "/x", &sp) == MOE_EIO && strstr(moe_last_error(), "is a directory"),
          "a directory as the path file: %s", moe_last_error());
    CHECK(moe_pred_spec_parse("path:", "/x", &sp) == MOE_EINVAL, "an empty path file name accepted");
    CHECK(moe_pred_spec_parse("auto", "/nonexistent", &sp) == MOE_OK && sp.kind == MOE_PRED_GATE, "auto w/o file");
    CHECK(moe_pred_spec_parse("history", "/x", &sp) == MOE_OK && sp.kind == MOE_PRED_HISTORY, "history");
    /* a kind that takes no argument, given one: named as such, not as an unknown predictor */
    static const char *const no_arg[] = { "none:3", "history:x", "auto:p.safetensors", "auto:" };
    for (size_t i = 0; i < sizeof no_arg / sizeof no_arg[0]; i++) {
        char want[160];
        snprintf(want, sizeof want, "--predictor %s: %.*s takes nothing after ':' (only gate:D, path:FILE and "
                 "path+gate:FILE do)", no_arg[i], (int)(strchr(no_arg[i], ':') - no_arg[i]), no_arg[i]);
        CHECK(moe_pred_spec_parse(no_arg[i], "/x", &sp) == MOE_EINVAL && !strcmp(moe_last_error(), want),
              "%s: '%s', want '%s'", no_arg[i], moe_last_error(), want);
    }

    static struct moe_model m;
    static struct moe_layer_w lw[L];
    static float router[L * E * H];
    fake_model(&m, lw, router);

    /* history: layer 2 uses {e+1 : e used by layer 0} */
    moe_pred_spec_parse("history", "/x", &sp);
    struct moe_predictor *p = moe_predictor_create(&m, &sp, 2);
    REQUIRE(p, "create: %s", moe_last_error());
    CHECK(moe_predictor_n_moe_layers(p) == 2 && moe_predictor_moe_layer(p, 1) == 2, "MoE layer map");
    struct moe_pred_eval ev;
    REQUIRE(moe_pred_eval_init(&ev, 2, E, K, K) == MOE_OK, "eval init");
    struct moe_pred_sink sink = moe_pred_eval_sink(&ev);
    moe_predictor_set_sink(p, &sink);
    struct moe_provider prov = { .ops = &fake_ops };
    moe_predictor_set_provider(p, &prov, &(struct moe_pred_prefetch){ .min_score = 0.05f, .max_per_layer = K });
    uint64_t x = 7;
    for (int s = 0; s < 600; s++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        int tok = (int)((x >> 33) % 100), seq = 0, pos = s;
        struct moe_batch b = { .n = 1, .tokens = &tok, .seq = &seq, .pos = &pos };
        REQUIRE(moe_predictor_begin(p, &b) == MOE_OK, "begin");
        int r0[K] = { tok % E, (tok / E) % E == tok % E ? (tok % E + 3) % E : (tok / E) % E };
        int r2[K] = { (r0[0] + 1) % E, (r0[1] + 1) % E };
        moe_pred_eval_actual(&ev, 0, r0);
        moe_predictor_on_route(p, 0, 1, r0);
        if (s == 599) {
            CHECK(pf_last_layer == 2 && pf_last_dist == 1 && pf_last_n >= 1, "history prefetch layer %d dist %d n %d",
                  pf_last_layer, pf_last_dist, pf_last_n);
            for (int i = 1; i < pf_last_n; i++)
                CHECK(pf_last_scores[i] <= pf_last_scores[i - 1], "prefetch hints not in descending score");
        }
        if (s == 300) { /* measure only the second half */
            moe_pred_eval_free(&ev);
            moe_pred_eval_init(&ev, 2, E, K, K);
            sink = moe_pred_eval_sink(&ev);
            moe_predictor_set_sink(p, &sink);
        }
        moe_pred_eval_actual(&ev, 1, r2);
        moe_predictor_on_route(p, 2, 1, r2);
        moe_predictor_end(p, true);
    }
    double rec, prec;
    CHECK(moe_pred_eval_get(&ev, 1, 1, &rec, &prec) && rec > 0.9, "history recall@%d at distance 1: %.3f", K, rec);
    CHECK(moe_pred_eval_get(&ev, MOE_EVAL_PATH, 0, &rec, &prec), "history step-start prediction for layer 0");
    CHECK(pf_calls > 0, "no prefetch hints");
    int ids[2 * K];
    CHECK(moe_predictor_seq_path(p, 0, 5, K, ids) == MOE_OK && ids[0] >= 0 && ids[K] >= 0, "seq_path");
    CHECK(moe_predictor_seq_path(p, 0, 1000, K, ids) == MOE_ERANGE, "seq_path accepts a bad token");
    moe_predictor_destroy(p);
    moe_pred_eval_free(&ev);

    /* gate: layer 2's router applied to layer 0's MoE input */
    moe_pred_spec_parse("gate:1", "/x", &sp);
    p = moe_predictor_create(&m, &sp, 1);
    REQUIRE(p, "create gate: %s", moe_last_error());
    moe_pred_eval_init(&ev, 2, E, K, K);
    sink = moe_pred_eval_sink(&ev);
    moe_predictor_set_sink(p, &sink);
    int tok = 3, seq = 0, pos = 0;
    struct moe_batch b = { .n = 1, .tokens = &tok, .seq = &seq, .pos = &pos };
    moe_predictor_begin(p, &b);
    float xin[H] = { 0 };
    xin[(5 + 2) % H] = 1.0f; /* router of layer 2 maps h = (e + 2) % H to expert e */
    xin[(6 + 2) % H] = 0.9f;
    moe_predictor_on_moe_input(p, 0, 1, xin);
    int r2[K] = { 5, 6 };
    moe_pred_eval_actual(&ev, 1, r2);
    CHECK(moe_pred_eval_get(&ev, 1, 1, &rec, &prec) && rec == 1.0, "gate recall %.2f", rec);
    moe_predictor_end(p, true);
    moe_predictor_destroy(p);
    moe_pred_eval_free(&ev);

    /* a begin refused (a token outside the vocab) leaves the step as it was: an end after it learns
     * nothing, so slot 1, reset for a new sequence, still has no previous routing */
    p = moe_predictor_create(&m, &sp, 2);
    REQUIRE(p, "create gate: %s", moe_last_error());
    int toks2[2] = { 3, 4 }, seqs2[2] = { 0, 1 }, poss2[2] = { 0, 0 }, route2[2 * K] = { 1, 2, 3, 4 };
    struct moe_batch b2 = { .n = 2, .tokens = toks2, .seq = seqs2, .pos = poss2 };
    REQUIRE(moe_predictor_begin(p, &b2) == MOE_OK, "begin: %s", moe_last_error());
    moe_predictor_on_route(p, 0, 2, route2);
    moe_predictor_on_route(p, 2, 2, route2);
    moe_predictor_end(p, true);
    moe_predictor_seq_reset(p, 1);
    toks2[1] = 100;
    CHECK(moe_predictor_begin(p, &b2) == MOE_ERANGE && strstr(moe_last_error(), "token 100"), "token 100: %s",
          moe_last_error());
    moe_predictor_end(p, true);
    int got[2 * K];
    CHECK(moe_predictor_seq_path(p, 1, 3, K, got) == MOE_OK && got[0] < 0 && got[K] < 0,
          "slot 1 after a refused begin: previous routing %d %d", got[0], got[K]);
    CHECK(moe_predictor_seq_path(p, 0, 3, K, got) == MOE_OK && got[0] == 1 && got[1] == 2 && got[K] == 1,
          "slot 0 after a refused begin: previous routing %d %d %d", got[0], got[1], got[K]);
    /* a fork: slot 1 continues from slot 0's latest token, so it has its previous routing */
    moe_predictor_seq_fork(p, 1, 0);
    CHECK(moe_predictor_seq_path(p, 1, 3, K, got) == MOE_OK && got[0] == 1 && got[1] == 2 && got[K] == 1,
          "slot 1 forked from slot 0: previous routing %d %d %d", got[0], got[1], got[K]);
    moe_predictor_seq_fork(p, 2, 0); /* outside the slots: nothing */
    moe_predictor_destroy(p);
    return t_result("test_history");
}
