/* A request that copies another's whole cache (prefix_cache: a prompt that begins with all a running
 * request has cached) takes that sequence's predictor state with it: its previous routing, its
 * history block and its context.  On the bundled model with a path predictor that has the history and
 * context blocks (random weights), request A is submitted, runs one prefill chunk, and then B, with the
 * same prompt, copies A's four cached tokens.  At every decode step of either, the predicted path the
 * scheduler would ask for (moe_predictor_seq_path on the request's slot) must equal the one of a
 * predictor that saw the same tokens in one sequence alone; B's would start its history afresh at its
 * fifth token without the fork. */
#include "predictor/path_model.h"
#include "predictor/predictor.h"
#include "scheduler/scheduler.h"
#include "sched_collect.h"
#include "engine/engine.h"
#include "tests/predictor/pred_testutil.h"

#include <unistd.h>

#define MAX_TOK 6  /* tokens each request generates */
#define CHUNK 4    /* prefill chunk: A has this many tokens cached when B arrives */
#define MAX_Q 16   /* decode steps recorded per request */
#define MAX_IDS 64 /* n_moe * top_k of the bundled model, at most */

static const char *prompt = "def quicksort(a):\n    return a";

struct query {
    int n_tokens, tokens[64];
    int ids[MAX_IDS];
};

struct recorder {
    struct moe_predictor *pred;
    int k, n_ids;
    uint64_t id[2];
    struct query q[2][MAX_Q];
    int n_q[2];
};

/* Path source that records what the predictor says for each decode step of A and B, and leaves the
 * choice to the scheduler's own fallback. */
static bool record(void *ud, const struct moe_sched_path_query *q, uint64_t *out)
{
    (void)out;
    struct recorder *rc = ud;
    for (int r = 0; r < 2; r++) {
        if (q->id != rc->id[r] || rc->n_q[r] >= MAX_Q || q->n_tokens > 64)
            continue;
        struct query *d = &rc->q[r][rc->n_q[r]++];
        d->n_tokens = q->n_tokens;
        memcpy(d->tokens, q->tokens, sizeof(int) * (size_t)q->n_tokens);
        REQUIRE(moe_predictor_seq_path(rc->pred, q->slot, q->tokens[q->n_tokens - 1], rc->k, d->ids) == MOE_OK,
                "seq_path: %s", moe_last_error());
    }
    return false;
}

/* The predicted path after tokens [0, n-1) ran one at a time in a fresh sequence, for token n-1. */
static void alone(const struct moe_model *m, const struct moe_pred_spec *sp, const struct query *q, int k, int *ids)
{
    struct moe_predictor *pred = moe_predictor_create(m, sp, 1);
    REQUIRE(pred, "predictor: %s", moe_last_error());
    struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = 128, .max_batch_tokens = 4,
                                    .hooks = moe_predictor_hooks(pred, NULL) };
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e, "engine: %s", moe_last_error());
    int seq = moe_engine_seq_alloc(e);
    for (int i = 0; i + 1 < q->n_tokens; i++) {
        struct moe_batch b = { .n = 1, .tokens = &q->tokens[i], .seq = &seq, .pos = &i };
        REQUIRE(moe_predictor_begin(pred, &b) == MOE_OK, "begin: %s", moe_last_error());
        enum moe_status st = moe_engine_forward(e, &b, NULL);
        moe_predictor_end(pred, st == MOE_OK);
        REQUIRE(st == MOE_OK, "forward %d: %s", i, moe_last_error());
    }
    REQUIRE(moe_predictor_seq_path(pred, seq, q->tokens[q->n_tokens - 1], k, ids) == MOE_OK, "seq_path: %s",
            moe_last_error());
    moe_engine_destroy(e);
    moe_predictor_destroy(pred);
}

int main(void)
{
    char dir[4096], pfile[] = "/tmp/moeflow-test-predfork-XXXXXX";
    int *toks;
    size_t nt;
    struct moe_model *m = t_bundled_encode(dir, sizeof dir, prompt, &toks, &nt);
    REQUIRE(m && nt > CHUNK + 1 && nt < 16, "bundled model and prompt (%zu tokens, 6..15 wanted)", m ? nt : 0);
    const struct moe_config *cfg = &m->cfg;
    int n_moe = moe_config_n_moe(cfg), k = cfg->top_k;
    REQUIRE(n_moe * k <= MAX_IDS, "%d MoE layers of top-%d", n_moe, k);
    struct moe_pred_spec sp;
    moe_path_model_free(t_context_path_model(m, dir, pfile, &sp));

    static struct recorder rc;
    rc.pred = moe_predictor_create(m, &sp, 2);
    rc.k = k;
    rc.n_ids = n_moe * k;
    REQUIRE(rc.pred, "predictor: %s", moe_last_error());
    struct moe_engine_params ep = { .max_seqs = 2, .max_ctx = 128, .max_batch_tokens = 16 };
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e, "engine: %s", moe_last_error());
    struct moe_sched_path_source src = { .predict = record, .ud = &rc };
    struct moe_sched_params spp = { .max_running = 2, .micro_batch = 2, .prefill_chunk = CHUNK, .prefix_cache = true,
                                    .engine_max_ctx = 128, .engine_max_batch_tokens = 16,
                                    .max_tokens_in_flight = 1 << 20, .predictor = rc.pred, .path_source = &src };
    struct moe_sched *s = moe_sched_create(e, &spp);
    REQUIRE(s, "scheduler: %s", moe_last_error());
    static struct sc_req r[2];
    struct moe_gen_params g = { .max_tokens = MAX_TOK, .ignore_eos = true };
    g.sampling.top_p = 1.0f;
    REQUIRE(moe_sched_submit(s, toks, (int)nt, &g, &sc_events, &r[0], &r[0].id) == MOE_OK, "submit A: %s",
            moe_last_error());
    rc.id[0] = r[0].id;
    REQUIRE(moe_sched_step(s) == MOE_OK, "step: %s", moe_last_error()); /* A's first chunk */
    REQUIRE(moe_sched_submit(s, toks, (int)nt, &g, &sc_events, &r[1], &r[1].id) == MOE_OK, "submit B: %s",
            moe_last_error());
    rc.id[1] = r[1].id;
    while (moe_sched_step(s) == MOE_OK) {
    }
    CHECK(r[1].n_done == 1 && r[1].n_cached == CHUNK, "B took %d tokens from A's cache, want %d", r[1].n_cached,
          CHUNK);
    for (int i = 0; i < 2; i++) {
        CHECK(r[i].n_done == 1 && r[i].n_tokens == MAX_TOK && rc.n_q[i] == MAX_TOK - 1,
              "request %c: %d tokens, %d decode steps asked for a path", 'A' + i, r[i].n_tokens, rc.n_q[i]);
        for (int j = 0; j < rc.n_q[i]; j++) {
            const struct query *q = &rc.q[i][j];
            int want[MAX_IDS];
            alone(m, &sp, q, k, want);
            int at = 0;
            while (at < rc.n_ids && q->ids[at] == want[at])
                at++;
            CHECK(at == rc.n_ids, "request %c, token %d: predicted expert %d at %d (MoE layer %d), alone %d",
                  'A' + i, q->n_tokens - 1, at < rc.n_ids ? q->ids[at] : -1, at, at / k,
                  at < rc.n_ids ? want[at] : -1);
        }
    }
    moe_sched_destroy(s);
    moe_engine_destroy(e);
    moe_predictor_destroy(rc.pred);
    moe_model_close(m);
    unlink(pfile);
    free(toks);
    return t_result("test_sched_pred_fork");
}
