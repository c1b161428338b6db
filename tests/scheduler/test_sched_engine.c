/* Batch invariance on the real engine and bundled model: each sequence's
 * greedy tokens are identical whatever batch, micro-batch, prefill chunk and
 * grouping it ran in, with the all-resident and with a small tiered expert
 * cache fed by lookahead prefetch; and equal to a plain one-sequence decode.
 * With prefix_cache, a request that begins as a finished one did (the same
 * prompt, the prompt and its answer as a longer prompt, all of an answer that ended on
 * a stop token as EOS ends one) starts from the slot's
 * cache, and requests sent together with one prompt copy the first one's, and
 * each still decodes exactly those tokens.  JSON mode after a reasoning block leaves the block's
 * text free.  A packed store with one corrupt record: in batches each request ends as it ends alone
 * (fails when it needs that expert, else decodes exactly its tokens).  Limits assumed past the engine's
 * are refused. */
#include "../engine/engine_testutil.h"
#include "model/tokenizer.h"
#include "offload/runtime.h"
#include "offload/store.h"
#include "scheduler/scheduler.h"
#include "sched_collect.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NP 8
#define T 12

static const char *texts[NP] = {
    "def fibonacci(n):",
    "import os\nimport sys\n\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):",
    "for i in range(10):\n    print(i",
    "# Read a file and count the words in it\ndef count_words(path):\n    with open(path) as f:",
    "x = [",
    "def quicksort(a):\n    if len(a) <= 1:\n        return a\n    pivot = a[0]\n",
    "try:\n    import json\nexcept ImportError:\n",
};

static int *ids[NP];
static int n_ids[NP];
static int want[NP][T];

/* Greedy decode of one prompt alone: whole prompt, then one token per forward. */
static void reference(const struct moe_model *m, int i)
{
    struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = 256, .max_batch_tokens = 256 };
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e, "engine: %s", moe_last_error());
    REQUIRE(t_greedy(e, moe_engine_seq_alloc(e), ids[i], n_ids[i], T, want[i], NULL) == MOE_OK, "forward: %s",
            moe_last_error());
    moe_engine_destroy(e);
}

struct cfg {
    int max_running, micro_batch, prefill_chunk;
    enum moe_grouping grouping;
    int gpu_experts; /* 0 = all resident */
    float lag;       /* regroup_lag */
};

static void run(const struct moe_model *m, const struct cfg *c, int ci)
{
    struct moe_provider *prov = NULL;
    if (c->gpu_experts) {
        struct moe_offload_opts oo;
        moe_offload_opts_init(&oo);
        oo.gpu_experts = c->gpu_experts;
        REQUIRE(moe_offload_provider_create(m, &oo, &prov) == MOE_OK && prov, "provider: %s", moe_last_error());
    }
    int mbt = c->micro_batch + c->prefill_chunk;
    struct moe_engine_params ep = { .max_seqs = c->max_running, .max_ctx = 256, .max_batch_tokens = mbt,
                                    .provider = prov };
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e, "engine: %s", moe_last_error());
    struct moe_sched_params sp = { .max_running = c->max_running, .micro_batch = c->micro_batch,
                                   .prefill_chunk = c->prefill_chunk, .grouping = c->grouping,
                                   .provider = prov, .engine_max_ctx = 256, .engine_max_batch_tokens = mbt,
                                   .max_tokens_in_flight = 1 << 20, .regroup_lag = c->lag };
    struct moe_sched *s = moe_sched_create(e, &sp);
    REQUIRE(s, "scheduler: %s", moe_last_error());
    static struct sc_req r[NP];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < NP; i++) {
        struct moe_gen_params g = { .max_tokens = T, .ignore_eos = true };
        g.sampling.top_p = 1.0f;
        REQUIRE(moe_sched_submit(s, ids[i], n_ids[i], &g, &sc_events, &r[i], &r[i].id) == MOE_OK, "submit: %s",
                moe_last_error());
    }
    while (moe_sched_step(s) == MOE_OK) {
    }
    struct moe_sched_stats st;
    moe_sched_stats(s, &st);
    for (int i = 0; i < NP; i++) {
        CHECK(r[i].n_done == 1 && r[i].why == MOE_FINISH_LENGTH && r[i].n_tokens == T,
              "cfg %d prompt %d: done %d why %s tokens %d (%s)", ci, i, r[i].n_done, moe_finish_str(r[i].why),
              r[i].n_tokens, r[i].msg);
        int diff = -1;
        for (int t = 0; t < T && t < r[i].n_tokens; t++)
            if (r[i].tokens[t] != want[i][t]) {
                diff = t;
                break;
            }
        CHECK(diff < 0, "cfg %d prompt %d: token %d is %d, alone it is %d", ci, i, diff,
              diff >= 0 ? r[i].tokens[diff] : 0, diff >= 0 ? want[i][diff] : 0);
    }
    printf("cfg %d: %llu forwards, %.2f distinct experts per decode layer-step\n", ci,
           (unsigned long long)st.forwards,
           st.decode_layer_steps ? (double)st.decode_experts_activated / (double)st.decode_layer_steps : 0.0);
    moe_sched_destroy(s);
    moe_engine_destroy(e);
    moe_provider_destroy(prov);
}

/* Sampled requests (temperature, top-k, top-p, min-p, penalties, seeds; two in JSON mode), all in one
 * micro-batch with their rows sampled by 1 thread; by 3 threads; and in micro-batches of 3 with prompt
 * chunks of 5, regrouped, over a small tiered expert cache: the same tokens, whatever the threads, the
 * batches beside them and where the experts were. */
static void sample_threads(const struct moe_model *m, const struct moe_token_bytes *tb)
{
    enum { NR = NP + 2, NK = 3 };
    static struct sc_req r[NK][NR];
    memset(r, 0, sizeof(r));
    const struct { int threads, micro_batch, chunk, gpu_experts; enum moe_grouping grouping; } k_cfg[NK] = {
        { 1, NR, 16, 0, MOE_GROUP_FCFS }, { 3, NR, 16, 0, MOE_GROUP_FCFS }, { 2, 3, 5, 6, MOE_GROUP_REGROUP },
    };
    for (int k = 0; k < NK; k++) {
        struct moe_provider *prov = NULL;
        if (k_cfg[k].gpu_experts) {
            struct moe_offload_opts oo;
            moe_offload_opts_init(&oo);
            oo.gpu_experts = k_cfg[k].gpu_experts;
            REQUIRE(moe_offload_provider_create(m, &oo, &prov) == MOE_OK && prov, "provider: %s", moe_last_error());
        }
        int mbt = k_cfg[k].micro_batch + k_cfg[k].chunk;
        struct moe_engine_params ep = { .max_seqs = NR, .max_ctx = 256, .max_batch_tokens = mbt, .provider = prov };
        struct moe_engine *e = moe_engine_create(m, &ep);
        REQUIRE(e, "engine: %s", moe_last_error());
        struct moe_sched_params sp = { .max_running = NR, .micro_batch = k_cfg[k].micro_batch,
                                       .prefill_chunk = k_cfg[k].chunk, .grouping = k_cfg[k].grouping,
                                       .provider = prov, .engine_max_ctx = 256, .engine_max_batch_tokens = mbt,
                                       .max_tokens_in_flight = 1 << 20, .sample_threads = k_cfg[k].threads };
        struct moe_sched *s = moe_sched_create(e, &sp);
        REQUIRE(s, "scheduler: %s", moe_last_error());
        for (int i = 0; i < NR; i++) {
            struct moe_gen_params g = { .max_tokens = T, .ignore_eos = i < NP };
            g.sampling = (struct moe_sampling){ .temperature = 0.9f, .top_p = 0.9f, .top_k = 50,
                                                .seed = (uint64_t)i + 1 };
            if (i % 3 == 1) {
                g.sampling.min_p = 0.05f;
                g.sampling.presence_penalty = 0.5f;
                g.sampling.frequency_penalty = 0.3f;
                g.sampling.repetition_penalty = 1.2f;
            }
            if (i >= NP) g.json = tb;
            REQUIRE(moe_sched_submit(s, ids[i % NP], n_ids[i % NP], &g, &sc_events, &r[k][i], &r[k][i].id) == MOE_OK,
                    "submit: %s", moe_last_error());
        }
        while (moe_sched_step(s) == MOE_OK) {
        }
        moe_sched_destroy(s);
        moe_engine_destroy(e);
        moe_provider_destroy(prov);
    }
    for (int k = 1; k < NK; k++)
        for (int i = 0; i < NR; i++) {
            CHECK(r[0][i].n_done == 1 && r[k][i].n_done == 1 && r[0][i].n_tokens > 0 &&
                      r[0][i].n_tokens == r[k][i].n_tokens && r[0][i].why == r[k][i].why &&
                      !memcmp(r[0][i].tokens, r[k][i].tokens, sizeof(int) * (size_t)r[0][i].n_tokens),
                  "request %d: %d tokens (%s) alone in one micro-batch and 1 sampling thread, %d (%s) in "
                  "configuration %d", i, r[0][i].n_tokens, moe_finish_str(r[0][i].why), r[k][i].n_tokens,
                  moe_finish_str(r[k][i].why), k);
        }
}

/* JSON mode after a reasoning block (json_after_think): inside a block the prompt opened, greedy
 * decoding picks the tokens it picks without JSON mode (the text is free while it does not close the
 * block); with the block not opened, the reply is JSON mode's own or begins with a '<' (a "<think>"). */
static void after_think(const struct moe_model *m, const struct moe_token_bytes *tb)
{
    static struct sc_req r[NP][3];
    memset(r, 0, sizeof(r));
    struct moe_engine_params ep = { .max_seqs = 3 * NP, .max_ctx = 256, .max_batch_tokens = 256 };
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e, "engine: %s", moe_last_error());
    struct moe_sched_params sp = { .max_running = 3 * NP, .micro_batch = 3 * NP, .prefill_chunk = 16,
                                   .engine_max_ctx = 256, .engine_max_batch_tokens = 256,
                                   .max_tokens_in_flight = 1 << 20 };
    struct moe_sched *s = moe_sched_create(e, &sp);
    REQUIRE(s, "scheduler: %s", moe_last_error());
    for (int i = 0; i < NP; i++)
        for (int k = 0; k < 3; k++) { /* JSON mode; after a block the prompt opened; after a block it may open */
            struct moe_gen_params g = { .max_tokens = T, .json = tb, .json_after_think = k > 0, .think_opened = k == 1 };
            g.sampling.top_p = 1.0f;
            REQUIRE(moe_sched_submit(s, ids[i], n_ids[i], &g, &sc_events, &r[i][k], &r[i][k].id) == MOE_OK,
                    "submit: %s", moe_last_error());
        }
    while (moe_sched_step(s) == MOE_OK) {
    }
    int free_runs = 0;
    for (int i = 0; i < NP; i++) {
        int n = 0; /* the free tokens: up to an end of sequence, which a block never takes */
        while (n < T && !moe_config_is_eos(&m->cfg, want[i][n])) n++;
        CHECK(r[i][1].n_done == 1 && r[i][1].n_tokens >= n && !memcmp(r[i][1].tokens, want[i], sizeof(int) * (size_t)n),
              "prompt %d, inside the block: %d tokens, free decoding's first %d differ", i, r[i][1].n_tokens, n);
        free_runs += n == T && r[i][1].why == MOE_FINISH_LENGTH;
        const struct sc_req *a = &r[i][0], *b = &r[i][2];
        bool same = a->n_tokens == b->n_tokens && !memcmp(a->tokens, b->tokens, sizeof(int) * (size_t)a->n_tokens);
        bool opens = b->n_tokens > 0 && tb->off[b->tokens[0] + 1] > tb->off[b->tokens[0]] &&
                     tb->blob[tb->off[b->tokens[0]]] == '<';
        CHECK(a->n_done == 1 && b->n_done == 1 && (same || opens),
              "prompt %d: JSON mode wrote %d tokens, after a block that may open %d (first token %d)", i, a->n_tokens,
              b->n_tokens, b->n_tokens ? b->tokens[0] : -1);
    }
    CHECK(free_runs > 0, "no prompt decoded all %d tokens freely inside the block", T);
    moe_sched_destroy(s);
    moe_engine_destroy(e);
}

/* One request through s, to its end; its greedy tokens must be want[0..T).  Returns the prompt
 * tokens its on_done says came from a cached prefix. */
static int prefix_one(struct moe_sched *s, const int *p, int n, const int *want_t, const char *what)
{
    static struct sc_req r;
    memset(&r, 0, sizeof(r));
    struct moe_gen_params g = { .max_tokens = T, .ignore_eos = true };
    g.sampling.top_p = 1.0f;
    REQUIRE(moe_sched_submit(s, p, n, &g, &sc_events, &r, &r.id) == MOE_OK, "submit: %s", moe_last_error());
    while (moe_sched_step(s) == MOE_OK) {
    }
    CHECK(r.n_done == 1 && r.n_tokens == T && !memcmp(r.tokens, want_t, sizeof(int) * T),
          "prefix cache, %s: %d tokens, first %d (want %d)", what, r.n_tokens, r.tokens[0], want_t[0]);
    CHECK(r.n_prompt == n && r.n_cached >= 0 && r.n_cached < n, "prefix cache, %s: %d of %d prompt tokens cached",
          what, r.n_cached, r.n_prompt);
    return r.n_cached;
}

/* A request that ends on an end-of-sequence token leaves all it was given in its slot's cache: its prompt
 * and every token it generated, the last one too (its row was computed: that forward gave the EOS).  Here
 * the end is one of its stop_token_ids, which ends it as EOS does, at the first token greedy decoding
 * gives from the fifth on that it did not give before.  A next prompt that begins with all of them takes
 * them all from the cache (s's), and decodes what it decodes computed whole. */
static bool given_before(const int *t, int k)
{
    for (int j = 0; j < k; j++)
        if (t[j] == t[k])
            return true;
    return false;
}

static void prefix_after_eos(const struct moe_model *m, struct moe_sched *s)
{
    const int a = 4, n = n_ids[a];
    int k = 4;
    while (k < T && given_before(want[a], k))
        k++;
    REQUIRE(k < T, "prompt %d: no new token among greedy tokens 4..%d", a, T - 1);
    static struct sc_req r;
    memset(&r, 0, sizeof(r));
    struct moe_gen_params g = { .max_tokens = T, .ignore_eos = true, .n_stop_ids = 1, .stop_ids = { want[a][k] } };
    g.sampling.top_p = 1.0f;
    REQUIRE(moe_sched_submit(s, ids[a], n, &g, &sc_events, &r, &r.id) == MOE_OK, "submit: %s", moe_last_error());
    while (moe_sched_step(s) == MOE_OK) {
    }
    CHECK(r.n_done == 1 && r.why == MOE_FINISH_STOP && r.n_tokens == k &&
              !memcmp(r.tokens, want[a], sizeof(int) * (size_t)k),
          "prefix cache after an end of sequence: %s after %d tokens (want stop after %d)", moe_finish_str(r.why),
          r.n_tokens, k);
    /* the prompt, the k tokens and the one that ended it: the cache holds all but that one */
    int next[256], want_n[T];
    memcpy(next, ids[a], sizeof(int) * (size_t)n);
    memcpy(next + n, want[a], sizeof(int) * (size_t)(k + 1));
    struct moe_engine *e1 = moe_engine_create(m, &(struct moe_engine_params){ .max_seqs = 1, .max_ctx = 256,
                                                                             .max_batch_tokens = 256 });
    REQUIRE(e1 && t_greedy(e1, moe_engine_seq_alloc(e1), next, n + k + 1, T, want_n, NULL) == MOE_OK,
            "reference: %s", moe_last_error());
    moe_engine_destroy(e1);
    int cached = prefix_one(s, next, n + k + 1, want_n, "after an end of sequence");
    CHECK(cached == n + k, "after an end of sequence: %d tokens cached, want %d (the prompt of %d and the %d "
          "tokens generated)", cached, n + k, n, k);
}

static void prefix_cache(const struct moe_model *m)
{
    struct moe_engine_params ep = { .max_seqs = 2, .max_ctx = 256, .max_batch_tokens = 16 };
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e, "engine: %s", moe_last_error());
    struct moe_sched_params sp = { .max_running = 2, .micro_batch = 2, .prefill_chunk = 7, .prefix_cache = true,
                                   .engine_max_ctx = 256, .engine_max_batch_tokens = 16,
                                   .max_tokens_in_flight = 1 << 20 };
    struct moe_sched *s = moe_sched_create(e, &sp);
    REQUIRE(s, "scheduler: %s", moe_last_error());
    struct moe_sched_stats st;
    const int a = 4, n = n_ids[a];
    int cached = prefix_one(s, ids[a], n, want[a], "first run");
    CHECK(cached == 0, "first run: %d tokens cached", cached);
    moe_sched_stats(s, &st);
    CHECK(st.prefix_hit_tokens == 0, "nothing cached yet, %llu tokens reused", (unsigned long long)st.prefix_hit_tokens);
    cached = prefix_one(s, ids[a], n, want[a], "the same prompt again");
    CHECK(cached == n - 1, "the same prompt: on_done says %d tokens cached, want %d", cached, n - 1);
    moe_sched_stats(s, &st);
    CHECK(st.prefix_hit_tokens == (uint64_t)(n - 1), "the same prompt: %llu tokens reused, want %d",
          (unsigned long long)st.prefix_hit_tokens, n - 1);
    /* the prompt and its answer but the last token, as the next turn's prompt (the cache holds them all) */
    int longer[256], want_l[T];
    memcpy(longer, ids[a], sizeof(int) * (size_t)n);
    memcpy(longer + n, want[a], sizeof(int) * (T - 1));
    struct moe_engine *e1 = moe_engine_create(m, &(struct moe_engine_params){ .max_seqs = 1, .max_ctx = 256,
                                                                             .max_batch_tokens = 256 });
    REQUIRE(e1 && t_greedy(e1, moe_engine_seq_alloc(e1), longer, n + T - 1, T, want_l, NULL) == MOE_OK,
            "reference: %s", moe_last_error());
    moe_engine_destroy(e1);
    uint64_t before = st.prefix_hit_tokens;
    cached = prefix_one(s, longer, n + T - 1, want_l, "prompt and answer as the next prompt");
    CHECK(cached == n + T - 2, "the next turn: on_done says %d tokens cached, want %d", cached, n + T - 2);
    moe_sched_stats(s, &st);
    CHECK(st.prefix_hit_tokens - before == (uint64_t)(n + T - 2), "the next turn: %llu tokens reused, want %d",
          (unsigned long long)(st.prefix_hit_tokens - before), n + T - 2);
    prefix_after_eos(m, s);
    for (int i = 0; i < NP; i++) /* other prompts in turn: each decodes as alone */
        prefix_one(s, ids[i], n_ids[i], want[i], texts[i]);
    moe_sched_destroy(s);
    moe_engine_destroy(e);

    /* three requests with one prompt at once: two wait for the first one's prefill and copy its cache */
    ep.max_seqs = 3;
    sp.max_running = 3;
    e = moe_engine_create(m, &ep);
    REQUIRE(e && (s = moe_sched_create(e, &sp)), "engine / scheduler: %s", moe_last_error());
    REQUIRE(n > 17, "prompt %d is too short (%d tokens) to wait for", a, n);
    static struct sc_req r3[3];
    memset(r3, 0, sizeof(r3));
    for (int i = 0; i < 3; i++) {
        struct moe_gen_params g = { .max_tokens = T, .ignore_eos = true };
        g.sampling.top_p = 1.0f;
        REQUIRE(moe_sched_submit(s, ids[a], n, &g, &sc_events, &r3[i], &r3[i].id) == MOE_OK, "submit: %s",
                moe_last_error());
    }
    while (moe_sched_step(s) == MOE_OK) {
    }
    moe_sched_stats(s, &st);
    for (int i = 0; i < 3; i++)
        CHECK(r3[i].n_done == 1 && r3[i].n_tokens == T && !memcmp(r3[i].tokens, want[a], sizeof(int) * T) &&
              r3[i].n_cached == (i ? n - 1 : 0),
              "prefix cache, three at once, request %d: %d tokens, %d cached", i, r3[i].n_tokens, r3[i].n_cached);
    CHECK(st.prefix_hit_tokens == (uint64_t)(2 * (n - 1)), "three at once: %llu tokens copied, want %d",
          (unsigned long long)st.prefix_hit_tokens, 2 * (n - 1));
    moe_sched_destroy(s);
    moe_engine_destroy(e);
}

/* The eight prompts through the scheduler over store (device tier of 16 slots), max_running at a time
 * in micro-batches of mb; failed[i] and the tokens of the others checked against want. */
static void run_store(const struct moe_model *m, const char *store, int max_running, int mb, bool failed[NP])
{
    struct moe_offload_opts oo;
    moe_offload_opts_init(&oo);
    oo.store = store;
    oo.gpu_experts = 16;
    oo.host_experts = 8;
    for (int i = 0; i < NP; i++) {
        struct moe_provider *prov = NULL;
        REQUIRE(moe_offload_provider_create(m, &oo, &prov) == MOE_OK && prov, "provider: %s", moe_last_error());
        struct moe_engine_params ep = { .max_seqs = max_running, .max_ctx = 256, .max_batch_tokens = mb + 16,
                                        .provider = prov };
        struct moe_engine *e = moe_engine_create(m, &ep);
        REQUIRE(e, "engine: %s", moe_last_error());
        struct moe_sched_params sp = { .max_running = max_running, .micro_batch = mb, .prefill_chunk = 16,
                                       .provider = prov, .engine_max_ctx = 256, .engine_max_batch_tokens = mb + 16,
                                       .max_tokens_in_flight = 1 << 20 };
        struct moe_sched *s = moe_sched_create(e, &sp);
        REQUIRE(s, "scheduler: %s", moe_last_error());
        static struct sc_req r[NP];
        memset(r, 0, sizeof(r));
        int from = max_running == 1 ? i : 0, to = max_running == 1 ? i + 1 : NP; /* alone: one run each */
        for (int k = from; k < to; k++) {
            struct moe_gen_params g = { .max_tokens = T, .ignore_eos = true };
            g.sampling.top_p = 1.0f;
            REQUIRE(moe_sched_submit(s, ids[k], n_ids[k], &g, &sc_events, &r[k], &r[k].id) == MOE_OK, "submit: %s",
                    moe_last_error());
        }
        while (moe_sched_step(s) == MOE_OK) {
        }
        for (int k = from; k < to; k++) {
            failed[k] = r[k].why == MOE_FINISH_ERROR;
            CHECK(r[k].n_done == 1 && (failed[k] ? r[k].st == MOE_ECHECKSUM && strstr(r[k].msg, "layer 3 expert 4")
                                                 : r[k].n_tokens == T && !memcmp(r[k].tokens, want[k], sizeof(int) * T)),
                  "store with a bad record, %d at a time, prompt %d: %s, %d tokens (%s)", max_running, k,
                  moe_finish_str(r[k].why), r[k].n_tokens, r[k].msg);
        }
        if (max_running == 1) { /* the forward that failed reported layers 0..3 first: none of them counts */
            struct moe_sched_stats st;
            moe_sched_stats(s, &st);
            uint64_t n_moe = (uint64_t)moe_config_n_moe(&m->cfg), ok = st.forwards - failed[i];
            CHECK(st.layer_steps == n_moe * ok,
                  "store with a bad record, prompt %d alone: %llu layer-steps, want %llu (%llu forwards that passed)",
                  i, (unsigned long long)st.layer_steps, (unsigned long long)(n_moe * ok), (unsigned long long)ok);
        }
        moe_sched_destroy(s);
        moe_engine_destroy(e);
        moe_provider_destroy(prov);
        if (max_running > 1)
            break;
    }
}

static void bad_record(const struct moe_model *m)
{
    char store[] = "/tmp/moeflow-sched-store-XXXXXX";
    int fd = mkstemp(store);
    REQUIRE(fd >= 0, "mkstemp");
    close(fd);
    REQUIRE(moe_store_pack(m, store, NULL, NULL) == MOE_OK, "pack: %s", moe_last_error());
    struct moe_store *st = moe_store_open(store, m);
    REQUIRE(st, "store: %s", moe_last_error());
    const struct moe_store_record *rec = moe_store_find(st, 3, 4);
    REQUIRE(rec, "record of layer 3 expert 4");
    uint64_t at = rec->offset + rec->size / 2;
    moe_store_close(st);
    fd = open(store, O_RDWR);
    unsigned char b = 0;
    REQUIRE(fd >= 0 && pread(fd, &b, 1, (off_t)at) == 1, "read %s", store);
    b ^= 0x40;
    REQUIRE(pwrite(fd, &b, 1, (off_t)at) == 1, "write %s", store);
    close(fd);
    bool alone[NP], together[NP];
    run_store(m, store, 1, 1, alone);
    run_store(m, store, NP, 4, together);
    int n_failed = 0;
    for (int i = 0; i < NP; i++) {
        n_failed += alone[i];
        CHECK(alone[i] == together[i], "prompt %d %s alone and %s in batches", i, alone[i] ? "fails" : "completes",
              together[i] ? "fails" : "completes");
    }
    /* the record is one that some prompts need and others do not */
    CHECK(n_failed > 0 && n_failed < NP, "%d of %d prompts need layer 3 expert 4", n_failed, NP);
    unlink(store);
}

/* Limits assumed past the engine's own are refused at create, naming them, rather than taking requests the
 * engine then fails mid-generation; smaller ones hold. */
static void assumed_limits(const struct moe_model *m)
{
    struct moe_engine_params ep = { .max_seqs = 2, .max_ctx = 64, .max_batch_tokens = 32 };
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e, "engine: %s", moe_last_error());
    const int lim[3][2] = { { 128, 0 }, { 0, 64 }, { 48, 24 } };
    for (int i = 0; i < 3; i++) {
        struct moe_sched_params sp = { .engine_max_ctx = lim[i][0], .engine_max_batch_tokens = lim[i][1],
                                       .micro_batch = 2, .prefill_chunk = 8 };
        struct moe_sched *s = moe_sched_create(e, &sp);
        if (i < 2)
            CHECK(!s && strstr(moe_last_error(), "engine_max_ctx") && strstr(moe_last_error(), "64"),
                  "engine_max_ctx %d, engine_max_batch_tokens %d over the engine's 64 and 32: %s", lim[i][0],
                  lim[i][1], s ? "accepted" : moe_last_error());
        else
            CHECK(s != NULL, "smaller limits refused: %s", moe_last_error());
        moe_sched_destroy(s);
    }
    moe_engine_destroy(e);
}

int main(void)
{
    char mdir[4096], tpath[4200];
    t_path(mdir, sizeof(mdir), "models/pycode-moe-18m");
    snprintf(tpath, sizeof(tpath), "%s/tokenizer.json", mdir);
    struct moe_model *m = moe_model_open(mdir);
    REQUIRE(m, "model: %s", moe_last_error());
    struct moe_tokenizer *tk = moe_tokenizer_load(tpath);
    REQUIRE(tk, "tokenizer: %s", moe_last_error());
    for (int i = 0; i < NP; i++) {
        size_t n = 0;
        REQUIRE(moe_tokenizer_encode(tk, texts[i], strlen(texts[i]), &ids[i], &n) == MOE_OK && n > 0,
                "encode %d: %s", i, moe_last_error());
        n_ids[i] = (int)n;
        reference(m, i);
    }
    const struct cfg cfgs[] = {
        { 1, 1, 64, MOE_GROUP_FCFS, 0, 0 },
        { 8, 8, 5, MOE_GROUP_FCFS, 0, 0 },
        { 8, 3, 7, MOE_GROUP_REGROUP, 0, 0 },
        { 8, 2, 16, MOE_GROUP_REGROUP, 48, 0 },
        { 8, 4, 3, MOE_GROUP_FCFS, 48, 0 },
        { 8, 3, 5, MOE_GROUP_REGROUP, 48, -1 },
    };
    for (size_t c = 0; c < MOE_ARRAY_LEN(cfgs); c++)
        run(m, &cfgs[c], (int)c);
    prefix_cache(m);
    bad_record(m);
    assumed_limits(m);
    struct moe_token_bytes tb;
    REQUIRE(moe_token_bytes_build(tk, m->cfg.vocab, &tb) == MOE_OK, "token bytes: %s", moe_last_error());
    sample_threads(m, &tb);
    after_think(m, &tb);
    moe_token_bytes_free(&tb);
    for (int i = 0; i < NP; i++)
        free(ids[i]);
    moe_tokenizer_free(tk);
    moe_model_close(m);
    return t_result("test_sched_engine");
}
