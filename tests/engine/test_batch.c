/* Batch and offload invariance of the engine on the bundled model:
 * - several sequences in one forward (prefill chunks mixed with decode
 *   tokens) give bit-identical logits to running each sequence alone, with 1
 *   and with 2 threads;
 * - a provider that pins at most 3 experts (the layer's experts acquired in
 *   chunks) changes no bit; acquire gets distinct ascending ids, <= 3 each;
 * - a provider failure makes forward() return the error, leaves every KV
 *   cache as it was, and the same batch then succeeds with the same bits;
 * - want_logits selects rows; malformed batches are refused, changing nothing. */
#include "engine_testutil.h"

enum { NSEQ = 3, NDEC = 4, MAXT = 40 };

struct wrap {
    struct moe_provider base;
    struct moe_provider *in;
    int max_pinned;       /* 0 = unlimited */
    int fail_at;          /* acquire call number that fails (-1 never) */
    int calls;
    int bad_calls;        /* ids not distinct/ascending or more than max_pinned */
    int pinned_layer;     /* layer pinned now, -1 none */
};

static enum moe_status w_acquire(void *self, int layer, int n, const int *ids, struct moe_expert_ref *out)
{
    struct wrap *w = self;
    int call = w->calls++;
    if (w->max_pinned && n > w->max_pinned) w->bad_calls++;
    for (int i = 1; i < n; i++)
        if (ids[i] <= ids[i - 1]) w->bad_calls++;
    if (w->pinned_layer >= 0) w->bad_calls++; /* acquire without release */
    if (call == w->fail_at) return moe_errorf(MOE_ECHECKSUM, "test: layer %d expert %d failed", layer, ids[0]);
    enum moe_status st = w->in->ops->acquire(w->in->self, layer, n, ids, out);
    if (st == MOE_OK) w->pinned_layer = layer;
    return st;
}
static void w_release(void *self, int layer)
{
    struct wrap *w = self;
    if (w->pinned_layer != layer) w->bad_calls++;
    w->pinned_layer = -1;
    w->in->ops->release(w->in->self, layer);
}
static int w_max_pinned(void *self) { return ((struct wrap *)self)->max_pinned; }
static const struct moe_provider_ops wrap_ops = { .acquire = w_acquire, .release = w_release,
                                                  .max_pinned = w_max_pinned };

/* Prompts and teacher-forced continuations: toks[s][0..len[s]) */
static int toks[NSEQ][MAXT], plen[NSEQ] = { 19, 7, 12 }, tlen[NSEQ];
static float *alone[NSEQ]; /* [tlen, V] logits of every position, each sequence alone */

static void run_alone(struct moe_engine *e, int V)
{
    for (int s = 0; s < NSEQ; s++) {
        int seq = moe_engine_seq_alloc(e);
        tlen[s] = plen[s] + NDEC;
        alone[s] = malloc(sizeof(float) * (size_t)tlen[s] * V);
        REQUIRE(run_prompt(e, seq, toks[s], plen[s], alone[s]) == MOE_OK, "%s", moe_last_error());
        for (int d = 0; d < NDEC; d++) {
            int p = plen[s] + d;
            toks[s][p] = moe_argmax(alone[s] + (size_t)(p - 1) * V, V);
            REQUIRE(run_prompt(e, seq, &toks[s][p], 1, alone[s] + (size_t)p * V) == MOE_OK, "%s",
                    moe_last_error());
        }
        moe_engine_seq_free(e, seq);
    }
}

/* Steps as (seq, from, to) chunks; one forward per step. */
struct chunk {
    int s, from, to;
};
static const struct chunk plan[][NSEQ] = {
    { { 0, 0, 8 }, { 1, 0, 7 }, { -1, 0, 0 } },
    { { 1, 7, 8 }, { 0, 8, 19 }, { 2, 0, 5 } },
    { { 2, 5, 12 }, { 0, 19, 20 }, { 1, 8, 9 } },
    { { 0, 20, 21 }, { 1, 9, 10 }, { 2, 12, 13 } },
    { { 2, 13, 14 }, { 0, 21, 22 }, { 1, 10, 11 } },
    { { 0, 22, 23 }, { 2, 14, 15 }, { -1, 0, 0 } },
    { { 2, 15, 16 }, { -1, 0, 0 }, { -1, 0, 0 } },
};

/* Run the plan in batches; count rows whose logits differ from alone[]. */
static int run_batched(struct moe_engine *e, int V, struct wrap *fail_once)
{
    int slot[NSEQ], diff = 0;
    for (int s = 0; s < NSEQ; s++) slot[s] = moe_engine_seq_alloc(e);
    float *lg = malloc(sizeof(float) * MAXT * NSEQ * (size_t)V);
    for (size_t st = 0; st < MOE_ARRAY_LEN(plan); st++) {
        int tk[MAXT * NSEQ], sq[MAXT * NSEQ], ps[MAXT * NSEQ], n = 0;
        for (int c = 0; c < NSEQ; c++) {
            const struct chunk *ch = &plan[st][c];
            if (ch->s < 0) continue;
            for (int p = ch->from; p < ch->to; p++) tk[n] = toks[ch->s][p], sq[n] = slot[ch->s], ps[n] = p, n++;
        }
        struct moe_batch b = { .n = n, .tokens = tk, .seq = sq, .pos = ps };
        if (fail_once && st == 2) {
            int before[NSEQ];
            for (int s = 0; s < NSEQ; s++) before[s] = moe_engine_seq_len(e, slot[s]);
            fail_once->fail_at = fail_once->calls + 5; /* fails in a later layer */
            enum moe_status r = moe_engine_forward(e, &b, lg);
            CHECK(r == MOE_ECHECKSUM, "provider failure returns its status (got %d)", r);
            CHECK(strstr(moe_last_error(), "expert") != NULL, "error names the expert: %s", moe_last_error());
            for (int s = 0; s < NSEQ; s++)
                CHECK(moe_engine_seq_len(e, slot[s]) == before[s], "failed forward changed seq %d", s);
            fail_once->fail_at = -1;
            CHECK(fail_once->pinned_layer == -1, "experts left pinned after a failure");
        }
        REQUIRE(moe_engine_forward(e, &b, lg) == MOE_OK, "step %zu: %s", st, moe_last_error());
        for (int i = 0; i < n; i++) {
            int s = -1;
            for (int q = 0; q < NSEQ; q++)
                if (slot[q] == sq[i]) s = q;
            if (memcmp(lg + (size_t)i * V, alone[s] + (size_t)ps[i] * V, sizeof(float) * V)) diff++;
        }
    }
    for (int s = 0; s < NSEQ; s++) moe_engine_seq_free(e, slot[s]);
    free(lg);
    return diff;
}

int main(void)
{
    char dir[4096];
    t_path(dir, sizeof(dir), "models/pycode-moe-18m");
    struct moe_model *m = moe_model_open(dir);
    REQUIRE(m, "open %s: %s", dir, moe_last_error());
    int V = m->cfg.vocab;
    uint32_t x = 12345;
    for (int s = 0; s < NSEQ; s++)
        for (int i = 0; i < plen[s]; i++) x = x * 1103515245u + 12345u, toks[s][i] = 1 + (int)((x >> 8) % 3000);

    struct moe_provider *res = moe_provider_resident_create(m, MOE_DT_F32);
    REQUIRE(res, "%s", moe_last_error());
    struct moe_engine_params ep = { .max_seqs = 4, .max_ctx = 64, .max_batch_tokens = 48, .provider = res };
    struct moe_engine *e1 = moe_engine_create(m, &ep);
    REQUIRE(e1, "engine: %s", moe_last_error());
    run_alone(e1, V);

    int d = run_batched(e1, V, NULL);
    CHECK(d == 0, "%d rows differ between batched and alone (1 thread)", d);

    ep.n_threads = 2;
    struct moe_engine *e2 = moe_engine_create(m, &ep);
    REQUIRE(e2, "engine: %s", moe_last_error());
    d = run_batched(e2, V, NULL);
    CHECK(d == 0, "%d rows differ between batched and alone (2 threads)", d);
    moe_engine_destroy(e2);

    struct wrap w = { .in = res, .max_pinned = 3, .fail_at = -1, .pinned_layer = -1 };
    w.base.ops = &wrap_ops;
    w.base.self = &w;
    ep.n_threads = 1;
    ep.provider = &w.base;
    struct moe_engine *e3 = moe_engine_create(m, &ep);
    REQUIRE(e3, "engine: %s", moe_last_error());
    d = run_batched(e3, V, &w);
    CHECK(d == 0, "%d rows differ with max_pinned = 3 and a failed step", d);
    CHECK(w.bad_calls == 0, "%d acquire/release calls broke the contract", w.bad_calls);
    CHECK(w.calls > 0, "provider was used");

    /* want_logits and batch validation */
    int seq = moe_engine_seq_alloc(e3);
    int tk[4] = { toks[0][0], toks[0][1], toks[0][2], toks[0][3] }, ps[4] = { 0, 1, 2, 3 };
    int sq[4] = { seq, seq, seq, seq };
    bool want[4] = { false, true, false, true };
    float *lg = malloc(sizeof(float) * 4 * (size_t)V);
    struct moe_batch b = { .n = 4, .tokens = tk, .seq = sq, .pos = ps, .want_logits = want };
    REQUIRE(moe_engine_forward(e3, &b, lg) == MOE_OK, "%s", moe_last_error());
    CHECK(!memcmp(lg, alone[0] + (size_t)1 * V, sizeof(float) * V) &&
              !memcmp(lg + V, alone[0] + (size_t)3 * V, sizeof(float) * V),
          "want_logits rows");
    int badtok = V, badpos = 7, other = 3;
    struct moe_batch bt = { .n = 1, .tokens = &badtok, .seq = &seq, .pos = &ps[0] };
    int p4 = 4;
    CHECK(moe_engine_forward(e3, &bt, lg) == MOE_ERANGE, "token id = vocab refused");
    bt.tokens = tk;
    bt.pos = &badpos;
    CHECK(moe_engine_forward(e3, &bt, lg) == MOE_EINVAL, "a gap in positions refused: %s", moe_last_error());
    bt.pos = &p4;
    bt.seq = &other;
    CHECK(moe_engine_forward(e3, &bt, lg) == MOE_EINVAL, "unallocated slot refused");
    CHECK(moe_engine_seq_len(e3, seq) == 4, "refused batches changed nothing");
    free(lg);

    moe_engine_destroy(e3);
    moe_engine_destroy(e1);
    for (int s = 0; s < NSEQ; s++) free(alone[s]);
    moe_provider_destroy(res);
    moe_model_close(m);
    return t_result("test_engine_batch");
}
