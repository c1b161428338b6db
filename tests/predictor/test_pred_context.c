/* The path predictor's context block is the previous token's final hidden
 * state: the bundled model decodes a snippet one token per step with a
 * predictor whose path model has the history and context blocks (random
 * weights); each step-start prediction must equal the path model applied to
 * features built here from the token's embedding, the previous token's
 * routing, the running history and the previous token's final hidden state
 * (taken from an all-resident routing pass), and must differ from the one
 * without context once a previous token exists. */
#include "predictor/drive.h"
#include "predictor/path_model.h"
#include "kernels/backend.h"
#include "tests/predictor/pred_testutil.h"

#include <math.h>
#include <unistd.h>

#define N_TOK 12

static const char *snippet = "class Stack:\n    def push(self, item):\n        self.items.append(item)\n";

struct capture {
    int step, n_moe, E;
    float *scores; /* [N_TOK, n_moe, E] step-start predictions */
};

static void on_predict(void *ud, int mi, int distance, bool step_start, int n, const float *sc)
{
    (void)distance;
    struct capture *c = ud;
    if (!step_start || n != 1 || c->step < 0 || c->step >= N_TOK) return;
    memcpy(c->scores + ((size_t)c->step * c->n_moe + (size_t)mi) * c->E, sc, sizeof(float) * (size_t)c->E);
}

int main(void)
{
    char dir[4096], pfile[] = "/tmp/moeflow-test-predctx-XXXXXX";
    int *toks;
    size_t nt;
    struct moe_model *m = t_bundled_encode(dir, sizeof dir, snippet, &toks, &nt);
    REQUIRE(m && nt >= N_TOK, "bundled model and snippet (%zu tokens)", m ? nt : 0);
    const struct moe_config *cfg = &m->cfg;
    int n_moe = moe_config_n_moe(cfg);
    size_t E = (size_t)cfg->n_experts, H = (size_t)cfg->hidden, row = (size_t)n_moe * (size_t)cfg->top_k;

    int *ex, *sq, *ps;
    float *fin;
    REQUIRE(moe_drive_route(m, toks, N_TOK, 64, 5, 1, 0, &ex, &sq, &ps, &fin) == MOE_OK, "route: %s",
            moe_last_error());
    struct moe_pred_spec sp;
    struct moe_path_model *pm = t_context_path_model(m, dir, pfile, &sp);
    struct moe_predictor *pred = moe_predictor_create(m, &sp, 1);
    REQUIRE(pred, "predictor: %s", moe_last_error());
    struct capture cap = { .step = -1, .n_moe = n_moe, .E = (int)E };
    cap.scores = calloc((size_t)N_TOK * (size_t)n_moe * E, sizeof(float));
    REQUIRE(cap.scores, "oom");
    struct moe_pred_sink sink = { .ud = &cap, .predict = on_predict };
    moe_predictor_set_sink(pred, &sink);
    struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = 64, .max_batch_tokens = 4, .n_threads = 1,
                                    .hooks = moe_predictor_hooks(pred, NULL) };
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e, "engine: %s", moe_last_error());
    int seq = moe_engine_seq_alloc(e);
    for (int i = 0; i < N_TOK; i++) {
        struct moe_batch b = { .n = 1, .tokens = &toks[i], .seq = &seq, .pos = &i };
        cap.step = i;
        REQUIRE(moe_predictor_begin(pred, &b) == MOE_OK, "begin: %s", moe_last_error());
        enum moe_status st = moe_engine_forward(e, &b, NULL);
        moe_predictor_end(pred, st == MOE_OK);
        REQUIRE(st == MOE_OK, "forward %d: %s", i, moe_last_error());
    }

    float *emb = malloc(sizeof(float) * (size_t)cfg->vocab * H), *hist = calloc((size_t)n_moe * E, sizeof(float));
    float *x = malloc(sizeof(float) * (size_t)pm->n_in), *p = malloc(sizeof(float) * (size_t)pm->n_out);
    float *p0 = malloc(sizeof(float) * (size_t)pm->n_out), *hs = malloc(sizeof(float) * (size_t)pm->width);
    struct moe_backend *be = moe_backend_cpu_create(&(struct moe_backend_cpu_params){ .n_threads = 1 });
    REQUIRE(be, "cpu backend: %s", moe_last_error());
    REQUIRE(emb && hist && x && p && p0 && hs, "oom");
    moe_wview_to_f32(&m->embed, emb);
    int differs = 0;
    for (int i = 0; i < N_TOK; i++) {
        const int *prev = i > 0 ? ex + (size_t)(i - 1) * row : NULL;
        if (prev) moe_path_model_hist_update(pm, hist, prev);
        const float *e_row = emb + (size_t)toks[i] * H;
        moe_path_model_features_ex(pm, e_row, prev, prev ? hist : NULL, i > 0 ? fin + (size_t)(i - 1) * H : NULL, x);
        moe_path_model_forward(pm, be, 1, x, p, hs);
        moe_path_model_features_ex(pm, e_row, prev, prev ? hist : NULL, NULL, x);
        moe_path_model_forward(pm, be, 1, x, p0, hs);
        double worst = 0, gap = 0;
        for (size_t j = 0; j < (size_t)n_moe * E; j++) {
            double dlt = fabs((double)p[j] - cap.scores[(size_t)i * n_moe * E + j]);
            if (dlt > worst) worst = dlt;
            if (fabs((double)p[j] - p0[j]) > gap) gap = fabs((double)p[j] - p0[j]);
        }
        CHECK(worst < 1e-6, "step %d: step-start prediction differs from the context features by %g", i, worst);
        if (i > 0 && gap > 1e-4) differs++;
    }
    CHECK(differs == N_TOK - 1, "the context changed the prediction at %d of %d steps", differs, N_TOK - 1);

    moe_engine_destroy(e);
    moe_predictor_destroy(pred);
    moe_path_model_free(pm);
    moe_backend_destroy(be);
    unlink(pfile);
    free(emb);
    free(hist);
    free(x);
    free(p);
    free(p0);
    free(hs);
    free(cap.scores);
    free(ex);
    free(sq);
    free(ps);
    free(fin);
    free(toks);
    moe_model_close(m);
    return t_result("test_pred_context");
}
