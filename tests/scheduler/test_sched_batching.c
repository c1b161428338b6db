/* Continuous batching over a fake engine: every sequence's greedy tokens are
 * the same whatever batch, micro-batch, prefill chunk and grouping it ran in,
 * with its own stop_token_ids and min_tokens (masked on its row alone);
 * positions and slots handed to the engine are consistent; regrouping lowers
 * the distinct experts per layer-step of clusterable routing; lookahead N
 * prefetches the N micro-batches ahead with either grouping; a request that ends on EOS leaves all its
 * tokens to the prefix cache; a guided request fails rather than take a token its guide refuses when the
 * model's logits leave nothing to draw. */
#include "fake_backend.h"
#include "sched_collect.h"
#include "../test_util.h"
#include "engine/json_guide.h"
#include "offload/provider.h"

#include <math.h>

#define NREQ 24

static int prompts[NREQ][40];
static int n_prompts[NREQ];
static int stops[NREQ][2], n_stops[NREQ], min_toks[NREQ]; /* each request's stop_token_ids, min_tokens */

static void make_prompts(void)
{
    uint64_t x = 12345;
    for (int i = 0; i < NREQ; i++) {
        n_prompts[i] = 1 + (i * 7) % 37;          /* 1..37 tokens: several prefill chunks */
        for (int j = 0; j < n_prompts[i]; j++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            prompts[i][j] = 1 + (int)((x >> 33) % (FB_VOCAB - 1));
        }
    }
}

struct run_cfg {
    int max_running, micro_batch, prefill_chunk;
    enum moe_grouping grouping;
    float path_decay;
    float lag; /* regroup_lag (-1: strict steps) */
};

/* Run all requests to completion; returns the scheduler stats. */
static struct moe_sched_stats run(const struct run_cfg *rc, struct sc_req *out, int max_tokens)
{
    static struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = {
        .max_running = rc->max_running, .max_queued = NREQ, .micro_batch = rc->micro_batch,
        .prefill_chunk = rc->prefill_chunk, .grouping = rc->grouping, .max_tokens_in_flight = 1 << 20,
        .path_decay = rc->path_decay, .regroup_lag = rc->lag,
    };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    memset(out, 0, sizeof(*out) * NREQ);
    for (int i = 0; i < NREQ; i++) {
        struct moe_gen_params g = { .max_tokens = max_tokens, .ignore_eos = (i % 3) != 0,
                                    .n_stop_ids = n_stops[i], .min_tokens = min_toks[i] };
        for (int k = 0; k < n_stops[i]; k++)
            g.stop_ids[k] = stops[i][k];
        g.sampling.top_p = 1.0f;
        enum moe_status st = moe_sched_submit(s, prompts[i], n_prompts[i], &g, &sc_events, &out[i], &out[i].id);
        REQUIRE(st == MOE_OK, "submit %d: %s", i, moe_last_error());
    }
    int steps = 0;
    while (moe_sched_step(s) == MOE_OK && steps < 100000)
        steps++;
    struct moe_sched_stats st;
    moe_sched_stats(s, &st);
    CHECK(fb.errors == 0, "engine protocol violation: %s", fb.err);
    CHECK(fb.n_used == 0, "%d slots still in use after all requests ended", fb.n_used);
    CHECK(fb.max_used <= rc->max_running, "%d slots used at once, max_running %d", fb.max_used, rc->max_running);
    CHECK(fb.max_rows <= rc->micro_batch + rc->prefill_chunk, "forward of %d rows > micro_batch %d + chunk %d",
          fb.max_rows, rc->micro_batch, rc->prefill_chunk);
    moe_sched_destroy(s);
    return st;
}

/* Submit r[0..n) with g[0..n) to a fresh scheduler over the fake engine (eos_id its EOS) and run them
 * to the end, all in one micro-batch. */
static void run_these(struct moe_gen_params *g, const int *const *p, const int *np, int n, int eos_id,
                      struct sc_req *r)
{
    static struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    be.eos_id = eos_id;
    struct moe_sched_params sp = { .max_running = 8, .max_queued = 8, .micro_batch = 8, .prefill_chunk = 16,
                                   .max_tokens_in_flight = 1 << 20 };
    struct moe_sched *s = moe_sched_create_backend(&be, &sp);
    REQUIRE(s, "create: %s", moe_last_error());
    memset(r, 0, sizeof(*r) * (size_t)n);
    for (int i = 0; i < n; i++) {
        g[i].sampling.top_p = 1.0f;
        REQUIRE(moe_sched_submit(s, p[i], np[i], &g[i], &sc_events, &r[i], &r[i].id) == MOE_OK, "submit %d: %s", i,
                moe_last_error());
    }
    for (int steps = 0; moe_sched_step(s) == MOE_OK && steps < 10000; steps++) {}
    CHECK(fb.errors == 0 && fb.n_used == 0, "engine protocol: %s, %d slots left", fb.err, fb.n_used);
    moe_sched_destroy(s);
}

/* min_tokens against the model's EOS: a prompt whose greedy run ends with EOS within 3 tokens goes on to
 * min_tokens (the EOS masked, greedy takes the next best), as the reference says; ignore_eos with EOS
 * among the stop ids still stops there. */
static void eos_and_min_tokens(void)
{
    int p[3], k = -1, plain[64];
    for (int seed = 0; seed < 4096 && k < 0; seed++) {
        for (int j = 0; j < 3; j++)
            p[j] = 1 + (seed * 13 + j * 29 + seed / 7) % (FB_VOCAB - 1);
        int n = fb_reference(p, 3, 20, false, plain);
        if (n <= 3)
            k = n;
    }
    REQUIRE(k >= 0, "no prompt ends with EOS within 3 tokens");
    const int *ps[3] = { p, p, p }, np[3] = { 3, 3, 3 };
    struct moe_gen_params g[3] = { { .max_tokens = 20 }, { .max_tokens = 20, .min_tokens = 6 },
                                   { .max_tokens = 20, .ignore_eos = true, .n_stop_ids = 1, .stop_ids = { 0 } } };
    struct sc_req r[3];
    run_these(g, ps, np, 3, 0, r);
    int want[64], n_want = fb_reference_stops(p, 3, 20, false, 6, NULL, 0, want);
    CHECK(r[0].n_tokens == k && r[0].why == MOE_FINISH_STOP, "plain: %d tokens (%s), want %d (stop)", r[0].n_tokens,
          moe_finish_str(r[0].why), k);
    CHECK(n_want >= 6 && r[1].n_tokens == n_want && r[1].n_generated == n_want &&
              !memcmp(r[1].tokens, want, sizeof(int) * (size_t)n_want) && r[1].st == MOE_OK,
          "min_tokens 6: %d tokens (%s), want %d", r[1].n_tokens, moe_finish_str(r[1].why), n_want);
    CHECK(!memcmp(r[1].tokens, plain, sizeof(int) * (size_t)k) && r[1].tokens[k] != 0,
          "min_tokens 6 changed the tokens before the EOS, or let the EOS through");
    CHECK(r[2].n_tokens == k && r[2].n_generated == k && r[2].why == MOE_FINISH_STOP,
          "ignore_eos, EOS as a stop id: %d tokens (%s), want %d (stop)", r[2].n_tokens, moe_finish_str(r[2].why), k);
}

/* prefix_cache over a fake engine whose freed slots keep their rows (seq_claim): a request that ends on
 * EOS leaves its prompt and every token it generated in the cache (the last one's row was computed: its
 * logits gave the EOS), and a next prompt that begins with all of them takes them all, and decodes what
 * it decodes computed whole. */
static void prefix_after_eos(void)
{
    int p[8], out[40], k = -1;
    for (int seed = 0; seed < 4096 && k < 2; seed++) {
        for (int j = 0; j < 8; j++)
            p[j] = 1 + (seed * 13 + j * 29 + seed / 7) % (FB_VOCAB - 1);
        k = fb_reference(p, 8, 40, false, out);
        if (k >= 40)
            k = -1;
    }
    REQUIRE(k >= 2, "no prompt ends with EOS after 2 to 39 tokens");
    static struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    be.seq_claim = fb_claim;
    struct moe_sched_params sp = { .max_running = 1, .micro_batch = 1, .prefill_chunk = 16, .prefix_cache = true,
                                   .max_tokens_in_flight = 1 << 20 };
    struct moe_sched *s = moe_sched_create_backend(&be, &sp);
    REQUIRE(s, "create: %s", moe_last_error());
    static struct sc_req r[2];
    memset(r, 0, sizeof(r));
    struct moe_gen_params g = { .max_tokens = 40 };
    g.sampling.top_p = 1.0f;
    REQUIRE(moe_sched_submit(s, p, 8, &g, &sc_events, &r[0], &r[0].id) == MOE_OK, "submit: %s", moe_last_error());
    for (int steps = 0; moe_sched_step(s) == MOE_OK && steps < 10000; steps++) {}
    CHECK(r[0].n_done == 1 && r[0].why == MOE_FINISH_STOP && r[0].n_tokens == k &&
              !memcmp(r[0].tokens, out, sizeof(int) * (size_t)k),
          "to EOS: %s after %d tokens, want stop after %d", moe_finish_str(r[0].why), r[0].n_tokens, k);
    /* the prompt, the k tokens, and one more */
    int next[64], want[8], n = 8 + k + 1;
    memcpy(next, p, sizeof(p));
    memcpy(next + 8, out, sizeof(int) * (size_t)k);
    next[n - 1] = 7;
    fb_reference(next, n, 8, true, want);
    g = (struct moe_gen_params){ .max_tokens = 8, .ignore_eos = true };
    g.sampling.top_p = 1.0f;
    REQUIRE(moe_sched_submit(s, next, n, &g, &sc_events, &r[1], &r[1].id) == MOE_OK, "submit: %s", moe_last_error());
    for (int steps = 0; moe_sched_step(s) == MOE_OK && steps < 10000; steps++) {}
    CHECK(r[1].n_done == 1 && r[1].n_tokens == 8 && !memcmp(r[1].tokens, want, sizeof(want)),
          "after EOS: %d tokens (%s), or not those computed whole", r[1].n_tokens, moe_finish_str(r[1].why));
    CHECK(r[1].n_cached == 8 + k, "after EOS: %d prompt tokens taken from the cache, want %d (the prompt of 8 and "
          "the %d tokens generated)", r[1].n_cached, 8 + k, k);
    CHECK(fb.errors == 0 && fb.n_used == 0, "engine protocol: %s, %d slots left", fb.err, fb.n_used);
    moe_sched_destroy(s);
}

/* min_tokens under a guide (regex "a+"; EOS is token 5, "a" token 9, so that greedy among tied logits
 * picks the EOS where the guide lets the output end): no end before min_tokens; and where the guide
 * allows only the masked tokens (regex "ab?" after "a", with "b" a stop id) the mask gives way and the
 * request ends as without min_tokens, rather than drawing a token the guide refuses.  With ignore_eos
 * the EOS ends nothing, so it is a token like any other, allowed only where its text ("</s>") goes on
 * with the guide: "a+" then runs to max_tokens with "a". */
/* The guided tests' vocabulary: token 5 is "</s>", 9 "a", 10 "b", every other "z". */
static void toy_token_bytes(struct moe_token_bytes *tb)
{
    const char *toks[FB_VOCAB];
    char blob[FB_VOCAB * 4];
    uint32_t off[FB_VOCAB + 1], at = 0;
    for (int i = 0; i < FB_VOCAB; i++) {
        toks[i] = i == 5 ? "</s>" : i == 9 ? "a" : i == 10 ? "b" : "z";
        off[i] = at;
        memcpy(blob + at, toks[i], strlen(toks[i]));
        at += (uint32_t)strlen(toks[i]);
    }
    off[FB_VOCAB] = at;
    REQUIRE(moe_token_bytes_make(blob, off, FB_VOCAB, tb) == MOE_OK, "%s", moe_last_error());
}

static void guided_min_tokens(void)
{
    struct moe_token_bytes tb;
    toy_token_bytes(&tb);
    struct moe_json_schema *plus = NULL, *opt = NULL;
    REQUIRE(moe_json_schema_regex("a+", 2, &plus) == MOE_OK && moe_json_schema_regex("ab?", 3, &opt) == MOE_OK, "%s",
            moe_last_error());
    int p[2] = { 3, 4 };
    const int *ps[4] = { p, p, p, p }, np[4] = { 2, 2, 2, 2 };
    struct moe_gen_params g[4] = {
        { .max_tokens = 10, .json = &tb, .json_schema = plus },
        { .max_tokens = 10, .json = &tb, .json_schema = plus, .min_tokens = 4 },
        { .max_tokens = 10, .json = &tb, .json_schema = opt, .min_tokens = 3, .n_stop_ids = 1, .stop_ids = { 10 } },
        { .max_tokens = 6, .json = &tb, .json_schema = plus, .ignore_eos = true },
    };
    struct sc_req r[4];
    run_these(g, ps, np, 4, 5, r);
    CHECK(r[0].n_tokens == 1 && r[0].tokens[0] == 9 && r[0].why == MOE_FINISH_STOP,
          "a+ alone: %d tokens (%s), want \"a\" then EOS", r[0].n_tokens, moe_finish_str(r[0].why));
    bool all_a = r[1].n_tokens >= 4;
    for (int i = 0; i < r[1].n_tokens && i < SC_MAX_TOK; i++)
        all_a &= r[1].tokens[i] == 9;
    CHECK(all_a && r[1].st == MOE_OK, "a+ with min_tokens 4: %d tokens (%s: %s)", r[1].n_tokens,
          moe_finish_str(r[1].why), r[1].msg);
    CHECK(r[2].n_tokens == 1 && r[2].tokens[0] == 9 && r[2].why == MOE_FINISH_STOP && r[2].st == MOE_OK,
          "ab? with b a stop id and min_tokens 3: %d tokens, first %d (%s: %s), want \"a\" then the end",
          r[2].n_tokens, r[2].tokens[0], moe_finish_str(r[2].why), r[2].msg);
    bool only_a = r[3].n_tokens == 6;
    for (int i = 0; i < r[3].n_tokens && i < SC_MAX_TOK; i++)
        only_a &= r[3].tokens[i] == 9;
    CHECK(only_a && r[3].why == MOE_FINISH_LENGTH && r[3].st == MOE_OK,
          "a+ with ignore_eos: %d tokens, first two %d %d (%s: %s), want 6 \"a\" (length)", r[3].n_tokens,
          r[3].tokens[0], r[3].tokens[1], moe_finish_str(r[3].why), r[3].msg);
    moe_json_schema_unref(plus);
    moe_json_schema_unref(opt);
    moe_token_bytes_free(&tb);
}

/* The fake engine, every logit it gives set to nan_fill (a model whose logits overflow or are NaN). */
static float nan_fill;

static enum moe_status fill_forward(void *self, const struct moe_batch *b, float *logits,
                                    void (*on_route)(void *ud, int layer, int n, const int *ids), void *ud)
{
    enum moe_status st = fb_forward(self, b, logits, on_route, ud);
    int rows = 0;
    for (int i = 0; i < b->n; i++)
        rows += !b->want_logits || b->want_logits[i];
    for (size_t i = 0; st == MOE_OK && i < (size_t)rows * FB_VOCAB; i++)
        logits[i] = nan_fill;
    return st;
}

/* A guided request (regex "a+" over toy_token_bytes) whose logits are all NaN, or all -inf,
 * greedy or drawn: it fails, saying why, rather than taking the sampler's fallback for a row with nothing
 * to draw (token 0, "z"), which the guide refuses; a free request beside it keeps that fallback. */
static void guided_nan_logits(void)
{
    struct moe_token_bytes tb;
    toy_token_bytes(&tb);
    struct moe_json_schema *plus = NULL;
    REQUIRE(moe_json_schema_regex("a+", 2, &plus) == MOE_OK, "%s", moe_last_error());
    const float fills[2] = { NAN, -INFINITY };
    for (int f = 0; f < 2; f++) {
        for (int drawn = 0; drawn < 2; drawn++) {
            nan_fill = fills[f];
            static struct fake_backend fb;
            struct moe_sched_backend be = fb_backend(&fb);
            be.eos_id = 5;
            be.forward = fill_forward;
            struct moe_sched_params sp = { .max_running = 2, .micro_batch = 2, .prefill_chunk = 16,
                                           .max_tokens_in_flight = 1 << 20 };
            struct moe_sched *s = moe_sched_create_backend(&be, &sp);
            REQUIRE(s, "create: %s", moe_last_error());
            struct moe_gen_params g[2] = { { .max_tokens = 4, .json = &tb, .json_schema = plus },
                                           { .max_tokens = 4, .ignore_eos = true } };
            struct sc_req r[2];
            memset(r, 0, sizeof(r));
            int p[2] = { 3, 4 };
            for (int i = 0; i < 2; i++) {
                g[i].sampling = (struct moe_sampling){ .temperature = drawn ? 1.0f : 0.0f, .top_p = 1.0f, .seed = 7 };
                REQUIRE(moe_sched_submit(s, p, 2, &g[i], &sc_events, &r[i], &r[i].id) == MOE_OK, "submit: %s",
                        moe_last_error());
            }
            for (int steps = 0; moe_sched_step(s) == MOE_OK && steps < 1000; steps++) {}
            CHECK(r[0].n_done == 1 && r[0].why == MOE_FINISH_ERROR && r[0].st == MOE_ERANGE && r[0].n_tokens == 0 &&
                      strstr(r[0].msg, "NaN or -inf") != NULL,
                  "guided, logits all %g, %s: %d tokens, first %d (%s: %s), want a failure naming the logits",
                  (double)fills[f], drawn ? "drawn" : "greedy", r[0].n_tokens, r[0].tokens[0],
                  moe_finish_str(r[0].why), r[0].msg);
            CHECK(r[1].n_done == 1 && r[1].why == MOE_FINISH_LENGTH && r[1].n_tokens == 4 && r[1].tokens[0] == 0,
                  "free, logits all %g: %d tokens (%s), first %d", (double)fills[f], r[1].n_tokens,
                  moe_finish_str(r[1].why), r[1].tokens[0]);
            CHECK(fb.errors == 0 && fb.n_used == 0, "engine protocol: %s, %d slots left", fb.err, fb.n_used);
            moe_sched_destroy(s);
        }
    }
    moe_json_schema_unref(plus);
    moe_token_bytes_free(&tb);
}

/* A provider that only records its prefetch hints: the farthest micro-batch ahead they named. */
struct hint_rec {
    int hints, max_ahead;
};

static void rec_prefetch(void *self, int layer, int n, const int *ids, const float *scores, int distance)
{
    struct hint_rec *h = self;
    h->hints++;
    int ahead = distance / FB_LAYERS; /* distance = ahead x MoE layers + the layer's MoE ordinal */
    if (ahead > h->max_ahead)
        h->max_ahead = ahead;
    (void)layer, (void)n, (void)ids, (void)scores;
}

/* A path source that counts its calls and leaves the path to the most recent routing. */
static bool count_predict(void *ud, const struct moe_sched_path_query *q, uint64_t *out)
{
    ++*(int *)ud;
    (void)q, (void)out;
    return false;
}

/* lookahead 3 over 24 sequences in micro-batches of 4 (6 per step): every grouping hints the
 * micro-batches 1, 2 and 3 ahead, never more, and asks for one predicted path per decode token. */
static void lookahead_depth(void)
{
    static const struct moe_provider_ops ops = { .prefetch = rec_prefetch };
    const float lags[] = { 0, 0, -1 };
    for (int c = 0; c < 3; c++) {
        static struct fake_backend fb;
        struct hint_rec h = { 0, 0 };
        struct moe_provider pv = { &ops, &h };
        int calls = 0;
        struct moe_sched_path_source src = { count_predict, &calls };
        struct moe_sched_backend be = fb_backend(&fb);
        struct moe_sched_params p = { .max_running = NREQ, .max_queued = NREQ, .micro_batch = 4, .prefill_chunk = 8,
                                      .grouping = c ? MOE_GROUP_REGROUP : MOE_GROUP_FCFS, .regroup_lag = lags[c],
                                      .max_tokens_in_flight = 1 << 20, .lookahead = 3, .provider = &pv,
                                      .path_source = &src };
        struct moe_sched *s = moe_sched_create_backend(&be, &p);
        REQUIRE(s, "create: %s", moe_last_error());
        static struct sc_req r[NREQ];
        memset(r, 0, sizeof(r));
        for (int i = 0; i < NREQ; i++) {
            struct moe_gen_params g = { .max_tokens = 6, .ignore_eos = true };
            g.sampling.top_p = 1.0f;
            REQUIRE(moe_sched_submit(s, prompts[i], n_prompts[i], &g, &sc_events, &r[i], &r[i].id) == MOE_OK,
                    "submit %d: %s", i, moe_last_error());
        }
        for (int steps = 0; moe_sched_step(s) == MOE_OK && steps < 10000; steps++) {}
        struct moe_sched_stats st;
        moe_sched_stats(s, &st);
        const char *name = c == 0 ? "fcfs" : c == 1 ? "regroup" : "regroup, strict steps";
        CHECK(h.hints > 0 && h.max_ahead == 3, "%s, lookahead 3: %d hints, the farthest %d micro-batches ahead", name,
              h.hints, h.max_ahead);
        CHECK(st.decode_tokens > 0 && (uint64_t)calls == st.decode_tokens,
              "%s: %d predicted paths for %llu decode tokens", name, calls, (unsigned long long)st.decode_tokens);
        moe_sched_destroy(s);
    }
}

int main(void)
{
    make_prompts();
    eos_and_min_tokens();
    prefix_after_eos();
    guided_min_tokens();
    guided_nan_logits();
    lookahead_depth();
    const int T = 20;
    static struct sc_req ref[NREQ], got[NREQ];
    /* reference: the model alone; a quarter of the requests stop at the token their plain run has at
     * step 3, a quarter have min_tokens 8 with their plain step-2 token (and another) as stop ids, so
     * that the mask turns them elsewhere, and a few have min_tokens T */
    int want[NREQ][64], n_want[NREQ], plain[NREQ][64], n_plain[NREQ], n_stop_runs = 0, n_min_runs = 0;
    for (int i = 0; i < NREQ; i++) {
        n_plain[i] = fb_reference(prompts[i], n_prompts[i], T, (i % 3) != 0, plain[i]);
        if (i % 4 == 1 && n_plain[i] >= 3) {
            stops[i][0] = plain[i][2];
            n_stops[i] = 1;
        } else if (i % 4 == 2 && n_plain[i] >= 3) {
            stops[i][0] = plain[i][1];
            stops[i][1] = (plain[i][1] + 1) % FB_VOCAB;
            n_stops[i] = 2;
            min_toks[i] = 8;
        } else if (i % 4 == 3) {
            min_toks[i] = T;
        }
        n_want[i] = fb_reference_stops(prompts[i], n_prompts[i], T, (i % 3) != 0, min_toks[i], stops[i], n_stops[i],
                                       want[i]);
        if (i % 4 == 1 && n_stops[i]) /* it ends at the stop token, at step 3 or before, the token left out */
            n_stop_runs += n_want[i] <= 2 && n_want[i] < n_plain[i] && plain[i][n_want[i]] == stops[i][0];
        if (i % 4 == 2 && n_stops[i]) /* the mask turned it at step 2, and it went on past min_tokens' 8 */
            n_min_runs += want[i][1] != plain[i][1] && n_want[i] >= 8;
        if (i % 4 == 3)
            CHECK(n_want[i] == T, "reference %d: %d tokens under min_tokens %d", i, n_want[i], T);
    }
    CHECK(n_stop_runs >= 4 && n_min_runs >= 3, "the references exercise too little: %d stop runs, %d min_tokens runs",
          n_stop_runs, n_min_runs);

    const struct run_cfg cfgs[] = {
        { 1, 1, 64 - 1, MOE_GROUP_FCFS, 0, 0 },   /* one sequence at a time, whole prompt at once */
        { 8, 8, 5, MOE_GROUP_FCFS, 0, 0 },
        { 16, 4, 3, MOE_GROUP_FCFS, 0, 0 },
        { 16, 4, 3, MOE_GROUP_REGROUP, 0, 0 },
        { 24, 5, 7, MOE_GROUP_REGROUP, 0, 0 },
        { 24, 24, 1, MOE_GROUP_REGROUP, 0, 0 },
        { 24, 5, 7, MOE_GROUP_REGROUP, 0.8f, 0 },
        { 16, 4, 3, MOE_GROUP_REGROUP, 0, -1 },
    };
    for (size_t c = 0; c < MOE_ARRAY_LEN(cfgs); c++) {
        struct sc_req *o = c == 0 ? ref : got;
        struct moe_sched_stats st = run(&cfgs[c], o, T);
        CHECK(st.accepted == NREQ && st.completed == NREQ, "cfg %zu: accepted %llu completed %llu", c,
              (unsigned long long)st.accepted, (unsigned long long)st.completed);
        for (int i = 0; i < NREQ; i++) {
            CHECK(o[i].n_done == 1, "cfg %zu req %d: %d on_done calls", c, i, o[i].n_done);
            CHECK(o[i].tokens_after_done == 0, "cfg %zu req %d: tokens after on_done", c, i);
            CHECK(o[i].n_tokens == n_want[i] && o[i].n_generated == n_want[i],
                  "cfg %zu req %d: %d tokens (on_done says %d), want %d", c, i, o[i].n_tokens,
                  o[i].n_generated, n_want[i]);
            CHECK(o[i].n_prompt == n_prompts[i], "cfg %zu req %d: n_prompt %d", c, i, o[i].n_prompt);
            CHECK(!memcmp(o[i].tokens, want[i], sizeof(int) * (size_t)(n_want[i] < o[i].n_tokens ? n_want[i] : o[i].n_tokens)),
                  "cfg %zu req %d: tokens differ from the sequence run alone", c, i);
            enum moe_finish wf = n_want[i] < T ? MOE_FINISH_STOP : MOE_FINISH_LENGTH;
            CHECK(o[i].why == wf && o[i].st == MOE_OK, "cfg %zu req %d: finish %s st %d, want %s", c, i,
                  moe_finish_str(o[i].why), o[i].st, moe_finish_str(wf));
        }
    }

    /* Regrouping on clusterable routing: 24 sequences in micro-batches of 6
     * need fewer distinct experts per decode layer-step than FCFS. */
    struct run_cfg f = { 24, 6, 8, MOE_GROUP_FCFS, 0, 0 }, r = { 24, 6, 8, MOE_GROUP_REGROUP, 0, 0 };
    struct run_cfg h = { 24, 6, 8, MOE_GROUP_REGROUP, 0.7f, 0 }, st = { 24, 6, 8, MOE_GROUP_REGROUP, 0, -1 };
    struct moe_sched_stats sf = run(&f, got, 40), sr = run(&r, got, 40), sh = run(&h, got, 40),
                           ss = run(&st, got, 40);
    double ef = (double)sf.decode_experts_activated / (double)sf.decode_layer_steps;
    double er = (double)sr.decode_experts_activated / (double)sr.decode_layer_steps;
    double eh = (double)sh.decode_experts_activated / (double)sh.decode_layer_steps;
    double es = (double)ss.decode_experts_activated / (double)ss.decode_layer_steps;
    printf("distinct experts per decode layer-step: fcfs %.2f regroup %.2f regroup+history %.2f "
           "regroup strict steps %.2f\n", ef, er, eh, es);
    CHECK(es < 0.95 * ef, "regroup with strict steps %.2f not below 0.95 x fcfs %.2f", es, ef);
    CHECK(ss.steps == sf.steps, "strict steps: %llu steps, fcfs %llu", (unsigned long long)ss.steps,
          (unsigned long long)sf.steps);
    CHECK(sf.decode_layer_steps > 0 && er < 0.9 * ef, "regroup %.2f not below 0.9 x fcfs %.2f", er, ef);
    CHECK(eh < 0.9 * ef, "regroup with path history %.2f not below 0.9 x fcfs %.2f", eh, ef);
    CHECK(sf.generated_tokens == sr.generated_tokens, "generated %llu vs %llu",
          (unsigned long long)sf.generated_tokens, (unsigned long long)sr.generated_tokens);
    return t_result("test_sched_batching");
}
