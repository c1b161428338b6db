/* `moeflow sim --trace T --predictor P` gives exactly the figures of
 * `moeflow replay --text X --predictor P` on the text T was recorded from (same
 * --seq-len, capacity and policy), for P none and history and every policy:
 * the trace holds the routing replay's engine computes, and sim runs the
 * predictor over it as replay's engine does (it sees each layer's routing
 * before that layer's experts are acquired, resets its history at each
 * sequence start) with the same hints (every score for the predicted policy,
 * which moves only those of at least --min-score), also on a simulated
 * timeline (--link-gbps, with --layer-ms and --expert-ms given or defaulted)
 * and under another --min-score.
 * The text spans several sequences and ends inside one. */
#include "tests/test_util.h"

#include <stdlib.h>
#include <unistd.h>

static char sim_out[1 << 12], rep_out[1 << 12];

/* the "prefetches" count of a --json line, or -1 */
static long long prefetches(const char *js)
{
    const char *p = strstr(js, "\"prefetches\":");
    return p ? atoll(p + strlen("\"prefetches\":")) : -1;
}

int main(void)
{
    char dir[] = "/tmp/moeflow-test-simrep-XXXXXX", a[2048], o[256];
    REQUIRE(mkdtemp(dir), "mkdtemp");
    /* 96-token sequences: 1500 bytes of Python (423 tokens) make four and a fifth cut short; each of the 32
     * replays below decodes them all */
    snprintf(a, sizeof a, "cd '%s' && head -c 1500 bench/data/pycode/eval.txt > '%s/t.txt'",
             getenv("MOEFLOW_SOURCE_DIR") ? getenv("MOEFLOW_SOURCE_DIR") : ".", dir);
    REQUIRE(t_run(a, o, sizeof o) == 0, "cannot write %s/t.txt", dir);
    snprintf(a, sizeof a, "trace --text '%s/t.txt' --seq-len 96 --out '%s/t.jsonl'", dir, dir);
    REQUIRE(t_moeflow(a, "2>&1", sim_out, sizeof sim_out) == 0, "trace: %s", sim_out);
    static const char *const preds[] = { "none", "history" };
    static const char *const pols[] = { "lru", "lfu", "predicted", "belady" };
    /* no timeline; a timeline with its compute given; with it defaulted */
    static const char *const tls[] = { "", " --link-gbps 55 --expert-bytes 352321536 --layer-ms 0.5 --expert-ms 0.2",
                                       " --link-gbps 55 --expert-bytes 352321536", " --min-score 0.3" };
    for (size_t k = 0; k < 4; k++)
        for (size_t p = 0; p < 2; p++)
            for (size_t q = 0; q < 4; q++) {
                snprintf(a, sizeof a, "sim --trace '%s/t.jsonl' --capacity-frac 0.25 --policy %s --predictor %s%s "
                         "--json", dir, pols[q], preds[p], tls[k]);
                CHECK(t_moeflow(a, NULL, sim_out, sizeof sim_out) == 0, "sim %s/%s%s failed", preds[p], pols[q],
                      tls[k]);
                snprintf(a, sizeof a, "replay --text '%s/t.txt' --seq-len 96 --capacity-frac 0.25 --policy %s "
                         "--predictor %s%s --json", dir, pols[q], preds[p], tls[k]);
                CHECK(t_moeflow(a, NULL, rep_out, sizeof rep_out) == 0, "replay %s/%s%s failed", preds[p], pols[q],
                      tls[k]);
                /* sim's object is replay's without its "belady" block */
                size_t n = strlen(sim_out);
                while (n && (sim_out[n - 1] == '\n' || sim_out[n - 1] == '}')) n--;
                CHECK(n > 0 && !strncmp(sim_out, rep_out, n) && !strncmp(rep_out + n, ",\"belady\":{", 11),
                      "--predictor %s --policy %s%s:\n  sim    %s  replay %s", preds[p], pols[q], tls[k], sim_out,
                      rep_out);
                /* the timeline's keys are there to compare */
                if (k == 1 || k == 2) CHECK(strstr(sim_out, "\"tokens_per_s\":"), "no timeline: %s", sim_out);
                /* the history predictor moves experts ahead under lru, so where its hints fall counts */
                if (p == 1 && q == 0)
                    CHECK(prefetches(sim_out) > 0, "history/%s prefetched nothing: %s", pols[q], sim_out);
            }
    snprintf(a, sizeof a, "rm -rf '%s'", dir);
    t_run(a, o, sizeof o);
    return t_result("test_sim_replay");
}
