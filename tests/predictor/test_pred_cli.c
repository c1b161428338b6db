/* The predictor commands end to end on the bundled model: eval-predictor's
 * and replay's --json carry the documented keys, usage errors exit 2 with a
 * message naming the option, and a replay figure is deterministic. */
#include "tests/test_util.h"

#include <sys/wait.h>

static char out[1 << 16];

static int run(const char *args)
{
    char cmd[8192];
    const char *bin = getenv("MOEFLOW_BINARY_DIR"), *src = getenv("MOEFLOW_SOURCE_DIR");
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s/server/moeflow' %s 2>&1", src ? src : ".", bin ? bin : ".", args);
    FILE *f = popen(cmd, "r");
    if (!f) return -1;
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = 0;
    int st = pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int main(void)
{
    const char *T = "--text bench/data/pycode/eval.txt";
    char a[1024];
    snprintf(a, sizeof a, "eval-predictor %s --predictor path+gate --max-tokens 48 --json", T);
    CHECK(run(a) == 0, "eval-predictor failed: %s", out);
    CHECK(strstr(out, "\"recall_at_k\":{\"path\":[") && strstr(out, "\"precision_at_k\":") &&
              strstr(out, "\"1\":[null,") && strstr(out, "\"3\":[null,null,null,"),
          "eval-predictor json: %s", out);
    snprintf(a, sizeof a,
             "replay %s --max-tokens 48 --capacity-frac 0.25 --policy predicted --predictor path+gate "
             "--link-gbps 55 --expert-bytes 352321536 --json", T);
    CHECK(run(a) == 0, "replay failed: %s", out);
    static const char *keys[] = { "\"hit_rate\":", "\"transfers_per_token\":", "\"prefetch_useful_frac\":",
                                  "\"stall_s\":", "\"belady\":{\"hit_rate\":", "\"tokens\":48," };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) CHECK(strstr(out, keys[i]), "replay json lacks %s: %s", keys[i], out);
    char first[sizeof out];
    memcpy(first, out, sizeof out);
    CHECK(run(a) == 0 && !strcmp(first, out), "replay not deterministic:\n%s\n%s", first, out);
    CHECK(run("replay --text x --capacity 4 --policy bogus --predictor none") == 2 && strstr(out, "--policy"),
          "bad policy: %s", out);
    CHECK(run("replay --text x --policy lru --predictor none") == 2, "missing capacity accepted: %s", out);
    CHECK(run("eval-predictor --text x --predictor gate:99") == 2 && strstr(out, "gate:99"), "bad spec: %s", out);
    CHECK(run("train-predictor --out /tmp/x.safetensors") == 2, "train without input accepted: %s", out);
    CHECK(run("train-predictor --help") == 0 && strstr(out, "--val-frac"), "train help: %s", out);
    return t_result("test_pred_cli");
}
