/* History predictions over a routing trace (no model): hints are logged in
 * order with the accesses, a learnable routing gets useful prefetches, and
 * predictors that need hidden states are refused with an explanation. */
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
    sp.kind = MOE_PRED_GATE;
    CHECK(moe_trace_pred_log(&t, &sp, NULL, &log) == MOE_ENOTSUP && strstr(moe_last_error(), "replay"),
          "gate on a trace: %s", moe_last_error());
    moe_evlog_free(&log);
    return t_result("test_trace_log");
}
