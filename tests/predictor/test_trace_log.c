/* History predictions over a routing trace (no model): hints are logged in
 * order with the accesses, a learnable routing gets useful prefetches, with no
 * predictor the cache figures equal moe_sim_run's, and predictors that need
 * hidden states are refused with an explanation. */
#include "offload/sim.h"
#include "predictor/trace_log.h"
#include "tests/test_util.h"

#define T 2000
#define NM 3
#define E 16
#define K 2

int main(void)
{
    static int seq[T], pos[T], token[T], ex[T * NM * K];
    struct moe_trace t = { .n_tokens = T, .seq = seq, .pos = pos, .token = token, .experts = ex };
    snprintf(t.info.model, sizeof t.info.model, "synthetic");
    t.info.layers = 4;
    t.info.experts = E;
    t.info.top_k = K;
    t.info.n_moe = NM;
    t.info.moe_layers[0] = 0;
    t.info.moe_layers[1] = 2;
    t.info.moe_layers[2] = 3;
    uint64_t x = 5;
    for (int i = 0; i < T; i++) {
        seq[i] = i / 500;
        pos[i] = i % 500;
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        token[i] = (int)((x >> 35) % 64);
        int a = (int)((x >> 20) % E), b = (a + 5) % E;
        for (int l = 0; l < NM; l++) { /* layer l+1 uses layer l's experts + 1 */
            ex[(i * NM + l) * K] = (a + l) % E;
            ex[(i * NM + l) * K + 1] = (b + l) % E;
        }
    }
    struct moe_pred_spec sp = { .kind = MOE_PRED_HISTORY };
    struct moe_evlog log;
    REQUIRE(moe_trace_pred_log(&t, &sp, &(struct moe_pred_prefetch){ .min_score = 0.3f }, &log) == MOE_OK, "log: %s",
            moe_last_error());
    CHECK(log.steps == T, "steps %llu", (unsigned long long)log.steps);
    size_t acc = 0, pf = 0;
    for (size_t i = 0; i < log.n_ev; i++) {
        acc += log.ev[i].kind == MOE_EV_ACCESS;
        pf += log.ev[i].kind == MOE_EV_PREFETCH;
    }
    CHECK(acc == (size_t)T * NM, "accesses %zu", acc);
    CHECK(pf > (size_t)T, "prefetch hints %zu", pf);
    int ml[NM] = { 0, 2, 3 };
    struct moe_cachesim_params p = { .capacity = 12, .policy = MOE_CACHE_PREDICTED, .prefetch = true };
    struct moe_cachesim_stats st, lru;
    REQUIRE(moe_cachesim_run_layers(&log, ml, 4, &p, &st) == MOE_OK, "sim: %s", moe_last_error());
    p.policy = MOE_CACHE_LRU;
    p.prefetch = false;
    REQUIRE(moe_cachesim_run_layers(&log, ml, 4, &p, &lru) == MOE_OK, "sim: %s", moe_last_error());
    printf("history+predicted: hits %llu/%llu, prefetch useful %llu/%llu; lru hits %llu\n",
           (unsigned long long)st.hits, (unsigned long long)st.accesses, (unsigned long long)st.prefetch_useful,
           (unsigned long long)st.prefetches, (unsigned long long)lru.hits);
    CHECK(st.prefetch_useful * 2 > st.prefetches, "most prefetches wasted");
    CHECK(st.hits > lru.hits, "prediction did not beat on-demand LRU");
    moe_evlog_free(&log);

    /* With no predictor the logged accesses are those moeflow sim replays (a
     * layer's experts in ascending id, moe_trace_layer_order), although the
     * trace lists them by weight: LFU, whose ties depend on the order, and LRU
     * give moe_sim_run's figures at every capacity. */
    {
        int unsorted = 0;
        for (int i = 0; i < T * NM; i++) unsorted += ex[i * K] > ex[i * K + 1];
        REQUIRE(unsorted > T / 4, "the synthetic trace must list experts out of id order (%d rows)", unsorted);
    }
    sp.kind = MOE_PRED_NONE;
    REQUIRE(moe_trace_pred_log(&t, &sp, &(struct moe_pred_prefetch){ .min_score = 0.8f, .max_per_layer = K }, &log) ==
                MOE_OK, "log: %s", moe_last_error());
    for (int pol = 0; pol < 2; pol++)
        for (int cap = K; cap <= NM * E; cap += 3) {
            struct moe_sim_params smp = { .capacity = cap, .policy = pol ? MOE_POLICY_LRU : MOE_POLICY_LFU };
            struct moe_sim_result sr;
            REQUIRE(moe_sim_run(&t, &smp, &sr) == MOE_OK, "moe_sim_run: %s", moe_last_error());
            struct moe_cachesim_params cp = { .capacity = cap, .policy = pol ? MOE_CACHE_LRU : MOE_CACHE_LFU };
            struct moe_cachesim_stats cs;
            REQUIRE(moe_cachesim_run_layers(&log, ml, 4, &cp, &cs) == MOE_OK, "cachesim: %s", moe_last_error());
            CHECK(cs.accesses == sr.accesses && cs.hits == sr.hits && cs.evictions == sr.evictions &&
                      cs.transfers == sr.misses,
                  "%s capacity %d: --predictor none hits %llu evictions %llu transfers %llu, plain sim hits %llu "
                  "evictions %llu misses %llu", pol ? "lru" : "lfu", cap, (unsigned long long)cs.hits,
                  (unsigned long long)cs.evictions, (unsigned long long)cs.transfers, (unsigned long long)sr.hits,
                  (unsigned long long)sr.evictions, (unsigned long long)sr.misses);
        }
    moe_evlog_free(&log);

    sp.kind = MOE_PRED_GATE;
    memset(&log, 0xa5, sizeof log); /* a refusal still leaves the log initialised: the caller frees it */
    CHECK(moe_trace_pred_log(&t, &sp, NULL, &log) == MOE_ENOTSUP && strstr(moe_last_error(), "replay"),
          "gate on a trace: %s", moe_last_error());
    CHECK(!log.ev && !log.ids && !log.scores && log.n_ev == 0, "a refused log is not initialised");
    moe_evlog_free(&log);
    return t_result("test_trace_log");
}
