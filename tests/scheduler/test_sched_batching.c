/* Continuous batching over a fake engine: every sequence's greedy tokens are
 * the same whatever batch, micro-batch, prefill chunk and grouping it ran in;
 * positions and slots handed to the engine are consistent; regrouping lowers
 * the distinct experts per layer-step of clusterable routing. */
#include "fake_backend.h"
#include "sched_collect.h"
#include "../test_util.h"

#define NREQ 24

static int prompts[NREQ][40];
static int n_prompts[NREQ];

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
        struct moe_gen_params g = { .max_tokens = max_tokens, .ignore_eos = (i % 3) != 0 };
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

int main(void)
{
    make_prompts();
    const int T = 20;
    static struct sc_req ref[NREQ], got[NREQ];
    /* reference: the model alone */
    int want[NREQ][64], n_want[NREQ];
    for (int i = 0; i < NREQ; i++)
        n_want[i] = fb_reference(prompts[i], n_prompts[i], T, (i % 3) != 0, want[i]);

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
