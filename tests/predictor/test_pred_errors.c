/* The predictor commands' failures and warnings end to end: what each refuses
 * and with which exit status (2 usage, 1 runtime), and what it warns about
 * while it still runs. */
#include "predictor/path_model.h"
#include "tests/test_util.h"

#include <math.h>
#include <sys/wait.h>
#include <unistd.h>

static char out[1 << 16];

/* moeflow with args, stdout and stderr into out; its exit status */
static int run(const char *args)
{
    return t_moeflow(args, "2>&1", out, sizeof out);
}

static char dir[] = "/tmp/moeflow-test-prederr-XXXXXX";
static char trace[256];

/* sim runs only the predictors that need no hidden states; the others are
 * refused up front as a usage error that points to replay. */
static void check_sim(void)
{
    static const char *const kinds[] = { "gate", "path", "path+gate", "auto", "gate:2", "bogus" };
    char a[1024];
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        snprintf(a, sizeof a, "sim --trace %s --capacity 16 --policy lru --predictor %s", trace, kinds[i]);
        int rc = run(a);
        CHECK(rc == 2 && strstr(out, "only none and history") && strstr(out, "moeflow replay") &&
                  !strstr(out, "not found"),
              "sim --predictor %s: exit %d: %s", kinds[i], rc, out);
    }
    snprintf(a, sizeof a, "sim --trace %s --capacity 16 --policy lru --predictor history --json", trace);
    CHECK(run(a) == 0 && strstr(out, "\"predictor\":\"history\""), "sim --predictor history: %s", out);
}

/* a run whose weights overflow fails and writes nothing */
static void check_train_diverges(void)
{
    char a[1024], st[300];
    snprintf(st, sizeof st, "%s/nan.safetensors", dir);
    snprintf(a, sizeof a, "train-predictor --trace %s --out %s --lr 10 --weight-decay 1 --epochs 2 --width 32 "
                          "--batch 1 --quiet", trace, st);
    int rc = run(a);
    CHECK(rc == 1 && strstr(out, "diverged") && strstr(out, "--lr") && access(st, F_OK) != 0,
          "a diverging train-predictor: exit %d: %s", rc, out);
}

/* the oracle's hints reach as far as the predicted policy keeps predictions */
static void check_oracle_horizon(void)
{
    CHECK(run("replay --text x --capacity 8 --policy predicted --predictor none --oracle-horizon 8") == 2 &&
              strstr(out, "0..7"),
          "--oracle-horizon 8: %s", out);
    CHECK(run("replay --help") == 0 && strstr(out, "0 <= H <= 7"), "replay --help: %s", out);
    CHECK(run("replay --text x --capacity 8 --policy predicted --predictor none --oracle-keep") == 2 &&
              strstr(out, "--oracle-horizon"),
          "--oracle-keep alone: %s", out);
    CHECK(run("replay --text x --capacity 8 --policy predicted --predictor none --oracle-horizon 0 "
              "--oracle-later-only") == 2 && strstr(out, "--oracle-horizon 1 or more"),
          "--oracle-later-only at horizon 0: %s", out);
    /* a file that cannot be read is said first, without the warning about what the flags change */
    CHECK(run("replay --model /nonexistent-model --text x --capacity 8 --policy belady --predictor gate") == 1 &&
              strstr(out, "/nonexistent-model") && !strstr(out, "warning"),
          "replay of a missing model: %s", out);
}

/* f's text with the first `from` replaced by `to` written to g */
static bool copy_replacing(const char *f, const char *g, const char *from, const char *to)
{
    static char buf[1 << 20];
    FILE *in = fopen(f, "rb");
    if (!in) return false;
    size_t n = fread(buf, 1, sizeof buf - 1, in);
    fclose(in);
    buf[n] = 0;
    char *at = strstr(buf, from);
    FILE *o = fopen(g, "wb");
    if (!at || !o) {
        if (o) fclose(o);
        return false;
    }
    fwrite(buf, 1, (size_t)(at - buf), o);
    fputs(to, o);
    fputs(at + strlen(from), o);
    return fclose(o) == 0;
}

/* a predictor or trace recorded for another model of the same shapes is used,
 * with a warning naming both */
static void check_other_model(void)
{
    char a[2048], pf[300], tf[300], src[4200];
    snprintf(pf, sizeof pf, "%s/other.safetensors", dir);
    snprintf(tf, sizeof tf, "%s/other.jsonl", dir);
    struct moe_path_model *pm =
        moe_path_model_load(t_path(src, sizeof src, "models/pycode-moe-18m/predictor-h2.safetensors"), 0, 0, 0, 0);
    REQUIRE(pm, "load: %s", moe_last_error());
    CHECK(!strcmp(pm->model_name, "pycode-moe-18m"), "shipped file's model '%s'", pm->model_name);
    snprintf(pm->model_name, sizeof pm->model_name, "mixtral-8x7b");
    REQUIRE(moe_path_model_save(pm, pf, NULL) == MOE_OK, "save: %s", moe_last_error());
    moe_path_model_free(pm);
    snprintf(a, sizeof a, "eval-predictor --text bench/data/pycode/eval.txt --predictor path:%s --max-tokens 8", pf);
    int rc = run(a);
    CHECK(rc == 0 && strstr(out, "was trained for mixtral-8x7b; the model is pycode-moe-18m"),
          "a predictor of another model: exit %d: %s", rc, out);
    CHECK(run("eval-predictor --text bench/data/pycode/eval.txt --predictor path --max-tokens 8 "
              "--model models/pycode-moe-18m/") == 0 && !strstr(out, "trained for"),
          "the shipped predictor warned: %s", out);
    /* a copy of the model directory under another name (a snapshot directory named by its hash): the
     * predictor file in it is the model's own */
    char snap[400], cmd[5000];
    snprintf(snap, sizeof snap, "%s/0123abcd", dir);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && ln -sf '%s'/* '%s/'", snap,
             t_path(src, sizeof src, "models/pycode-moe-18m"), snap);
    REQUIRE(system(cmd) == 0, "%s", cmd);
    snprintf(a, sizeof a, "eval-predictor --text bench/data/pycode/eval.txt --predictor path --max-tokens 8 "
             "--model %s", snap);
    CHECK(run(a) == 0 && !strstr(out, "trained for"), "the predictor in a renamed copy warned: %s", out);
    CHECK(moe_path_model_other_model("mixtral-8x7b", "models/pycode-moe-18m") &&
              !moe_path_model_other_model("pycode-moe-18m", "./models/pycode-moe-18m//") &&
              !moe_path_model_other_model("models/pycode-moe-18m/", "/x/pycode-moe-18m") &&
              !moe_path_model_other_model("", "models/pycode-moe-18m"),
          "model names compared wrong");

    REQUIRE(copy_replacing(trace, tf, "\"model\":\"pycode-moe-18m\"", "\"model\":\"mixtral-8x7b\""),
            "copy of %s", trace);
    snprintf(a, sizeof a, "train-predictor --trace %s --out %s/o.safetensors --epochs 1 --width 8 --quiet", tf, dir);
    rc = run(a);
    CHECK(rc == 0 && strstr(out, "recorded with mixtral-8x7b; the model is pycode-moe-18m"),
          "a trace of another model: exit %d: %s", rc, out);
    snprintf(a, sizeof a, "train-predictor --trace %s --out %s/o.safetensors --epochs 1 --width 8 --quiet", trace,
             dir);
    CHECK(run(a) == 0 && !strstr(out, "recorded with"), "the model's own trace warned: %s", out);
}

/* a trace of a model with as many MoE layers, experts and top_k, but its MoE layers at other decoder
 * layers (dense layers first), is refused with both layouts and what to do */
static void check_other_layers(void)
{
    char a[2048], tf[300];
    snprintf(tf, sizeof tf, "%s/layers.jsonl", dir);
    REQUIRE(copy_replacing(trace, tf, "\"layers\":8,\"experts\":32,\"top_k\":4,\"moe_layers\":[0,1,2,3,4,5,6,7]",
                           "\"layers\":9,\"experts\":32,\"top_k\":4,\"moe_layers\":[1,2,3,4,5,6,7,8]"),
            "copy of %s", trace);
    snprintf(a, sizeof a, "train-predictor --trace %s --out %s/l.safetensors --epochs 1 --width 8 --quiet", tf, dir);
    int rc = run(a);
    CHECK(rc == 1 && strstr(out, "MoE layers at decoder layers 1-8 of 9") && strstr(out, "has them at 0-7 of 8") &&
              strstr(out, "moeflow trace --model") && !strstr(out, "trained on"),
          "a trace with other MoE layers: exit %d: %s", rc, out);
    snprintf(a, sizeof a, "%s/l.safetensors", dir);
    CHECK(access(a, F_OK) != 0, "a trace with other MoE layers: %s written", a);
}

/* a trace and a predictor file record the name of the model directory --model
 * resolves to (the format's "directory base name"), however --model spells it,
 * so that neither warns of another model when used with that model */
static void check_recorded_model_name(void)
{
    static const char *const spellings[] = { "models/pycode-moe-18m/.", "models/pycode-moe-18m/" };
    char a[2048], tf[300], pf[300], head[512];
    snprintf(tf, sizeof tf, "%s/name.jsonl", dir);
    snprintf(pf, sizeof pf, "%s/name.safetensors", dir);
    for (size_t i = 0; i < sizeof spellings / sizeof spellings[0]; i++) {
        snprintf(a, sizeof a, "trace --model %s --text bench/data/pycode/eval.txt --max-tokens 8 --out %s",
                 spellings[i], tf);
        CHECK(run(a) == 0, "%s: %s", a, out);
        FILE *f = fopen(tf, "r");
        CHECK(f && fgets(head, sizeof head, f) && strstr(head, "\"model\":\"pycode-moe-18m\""),
              "trace --model %s recorded the header %s", spellings[i], f ? head : "(no file)");
        if (f) fclose(f);
        snprintf(a, sizeof a, "train-predictor --model %s --trace %s --out %s --epochs 1 --width 8 --quiet",
                 spellings[i], tf, pf);
        CHECK(run(a) == 0 && !strstr(out, "recorded with"), "%s: %s", a, out);
        struct moe_path_model *pm = moe_path_model_load(pf, 0, 0, 0, 0);
        CHECK(pm && !strcmp(pm->model_name, "pycode-moe-18m"), "train-predictor --model %s recorded the model '%s'",
              spellings[i], pm ? pm->model_name : moe_last_error());
        moe_path_model_free(pm);
        /* used with the model from elsewhere (the bundled default directory) */
        snprintf(a, sizeof a, "eval-predictor --text bench/data/pycode/eval.txt --predictor path:%s --max-tokens 4",
                 pf);
        CHECK(run(a) == 0 && !strstr(out, "trained for"), "%s warned: %s", a, out);
    }
}

/* routing a text says how far it got, unless --quiet */
static void check_route_progress(void)
{
    char a[6000], txt[300], src[4200];
    snprintf(txt, sizeof txt, "%s/small.txt", dir);
    snprintf(a, sizeof a, "head -c 3000 '%s' > %s", t_path(src, sizeof src, "bench/data/pycode/eval.txt"), txt);
    REQUIRE(system(a) == 0, "%s", a);
    snprintf(a, sizeof a, "train-predictor --text %s --seq-len 128 --out %s/r.safetensors --epochs 1 --width 8", txt,
             dir);
    int rc = run(a);
    const char *line = NULL; /* the last progress line (a slow machine may print more than one) */
    for (const char *p = strstr(out, "routing: "); p; p = strstr(p + 1, "routing: ")) line = p;
    long done = -1, total = -2;
    if (line) sscanf(line, "routing: %ld / %ld tokens", &done, &total);
    CHECK(rc == 0 && line && done == total && total > 100, "train-predictor --text: exit %d: %s", rc, out);
    snprintf(a, sizeof a, "train-predictor --text %s --seq-len 128 --out %s/r.safetensors --epochs 1 --width 8 "
                          "--quiet", txt, dir);
    CHECK(run(a) == 0 && !strstr(out, "routing:"), "train-predictor --quiet: %s", out);
}

/* transfers_per_token of a replay's --json in out, or -1 */
static double transfers(void)
{
    const char *p = strstr(out, "\"transfers_per_token\":");
    return p ? atof(p + strlen("\"transfers_per_token\":")) : -1;
}

/* replay says once when a predictor, --no-prefetch or --min-score changes nothing, and
 * what the predictions are used for under the policy */
static void check_replay_warnings(void)
{
    const char *R = "replay --text bench/data/pycode/eval.txt --max-tokens 32 --capacity-frac 0.25 --json";
    char a[1024];
    snprintf(a, sizeof a, "%s --policy lru --predictor none", R);
    CHECK(run(a) == 0 && !strstr(out, "warning"), "lru, none: %s", out);
    double lru = transfers();
    snprintf(a, sizeof a, "%s --policy lru --predictor path+gate --no-prefetch", R);
    CHECK(run(a) == 0 && strstr(out, "warning: --policy lru uses the predictions only to prefetch, which "
                                     "--no-prefetch turns off") && transfers() == lru,
          "lru --no-prefetch (none: %g): %s", lru, out);
    snprintf(a, sizeof a, "%s --policy lfu --predictor gate", R);
    CHECK(run(a) == 0 && strstr(out, "--policy lfu uses the predictions only to prefetch") &&
              strstr(out, "evicts by lfu alone") && strstr(out, "\"prefetches\":") &&
              !strstr(out, "\"prefetches\":0,"),
          "lfu with a predictor: %s", out);
    snprintf(a, sizeof a, "%s --policy belady --predictor none", R);
    CHECK(run(a) == 0 && !strstr(out, "warning"), "belady, none: %s", out);
    double bel = transfers();
    snprintf(a, sizeof a, "%s --policy belady --predictor gate", R);
    CHECK(run(a) == 0 && strstr(out, "the predictions are not used") && transfers() == bel,
          "belady with a predictor (none: %g): %s", bel, out);
    snprintf(a, sizeof a, "%s --policy predicted --predictor none --no-prefetch", R);
    CHECK(run(a) == 0 && strstr(out, "--no-prefetch changes nothing with --predictor none"), "none --no-prefetch: %s",
          out);
    snprintf(a, sizeof a, "%s --policy lru --predictor none --min-score 0.5", R);
    CHECK(run(a) == 0 && strstr(out, "warning: --min-score changes nothing with --predictor none") && transfers() == lru,
          "none --min-score (none: %g): %s", lru, out);
    snprintf(a, sizeof a, "%s --policy predicted --predictor none --min-score 0.5 --no-prefetch", R);
    CHECK(run(a) == 0 && strstr(out, "warning: --no-prefetch and --min-score change nothing with --predictor none"),
          "none --no-prefetch --min-score: %s", out);
    snprintf(a, sizeof a, "%s --policy predicted --predictor gate --no-prefetch", R);
    CHECK(run(a) == 0 && !strstr(out, "warning"), "predicted --no-prefetch: %s", out);
    int n = 0;
    snprintf(a, sizeof a, "%s --policy lru --predictor path+gate --no-prefetch", R);
    run(a);
    for (const char *p = out; (p = strstr(p, "warning")); p++) n++;
    CHECK(n == 1, "warned %d times: %s", n, out);
    CHECK(run("replay --help") == 0 && strstr(out, "1e-6 <= S <= 1"), "--min-score range: %s", out);
}

/* a predictor file that cannot be read or loaded is a runtime failure (exit
 * 1), a malformed --predictor spec a usage error (exit 2), in every command
 * that takes --predictor but serve (whose configuration check takes both as
 * errors of the configuration) */
static void check_predictor_files(void)
{
    char nan_f[300], junk[300], a[1024], src[4200];
    snprintf(nan_f, sizeof nan_f, "%s/nan.safetensors", dir);
    snprintf(junk, sizeof junk, "%s/junk.safetensors", dir);
    FILE *f = fopen(junk, "w");
    REQUIRE(f && fputs("not a predictor", f) >= 0 && fclose(f) == 0, "write %s", junk);
    struct moe_path_model *pm =
        moe_path_model_load(t_path(src, sizeof src, "models/pycode-moe-18m/predictor-h2.safetensors"), 0, 0, 0, 0);
    REQUIRE(pm, "load: %s", moe_last_error());
    pm->b2[0] = NAN;
    REQUIRE(moe_path_model_save(pm, nan_f, NULL) == MOE_OK, "save: %s", moe_last_error());
    moe_path_model_free(pm);
    struct {
        const char *spec, *says;
        int rc;
    } cases[] = {
        { "path:/nonexistent/p.safetensors", "not found", 1 },
        { "path:/tmp", "is a directory", 1 },
        { "path:/dev/null", "/dev/null is not a regular file", 1 },
        { junk, "junk.safetensors", 1 },
        { nan_f, "non-finite", 1 },
        { "path:", "empty file name", 2 },
        { "gate:99", "gate:99", 2 },
    };
    char prompts[300], bench[600];
    snprintf(prompts, sizeof prompts, "%s/prompts.txt", dir);
    f = fopen(prompts, "w");
    REQUIRE(f && fputs("def f(x):\n", f) >= 0 && fclose(f) == 0, "write %s", prompts);
    snprintf(bench, sizeof bench, "bench batch --prompts %s --concurrency 1 --micro-batch 1 --max-tokens 2 "
             "--grouping fcfs --capacity 64", prompts);
    const char *const cmds[] = {
        "eval-predictor --text bench/data/pycode/eval.txt --max-tokens 4",
        "replay --text bench/data/pycode/eval.txt --max-tokens 4 --capacity 64 --policy predicted",
        "generate --prompt x --max-tokens 2 --gpu-experts 64",
        bench,
    };
    for (size_t c = 0; c < sizeof cmds / sizeof cmds[0]; c++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            bool file = cases[i].spec[0] == '/';
            snprintf(a, sizeof a, "%s --predictor %s%s", cmds[c], file ? "path:" : "", cases[i].spec);
            int rc = run(a);
            CHECK(rc == cases[i].rc && strstr(out, cases[i].says), "%s: exit %d (want %d): %s", a, rc, cases[i].rc,
                  out);
        }
    /* a malformed spec is refused before the model is opened */
    for (size_t c = 0; c < sizeof cmds / sizeof cmds[0]; c++) {
        snprintf(a, sizeof a, "%s --model /nonexistent-model --predictor gate:99", cmds[c]);
        int rc = run(a);
        CHECK(rc == 2 && strstr(out, "gate:99") && !strstr(out, "nonexistent-model"), "%s: exit %d: %s", a, rc, out);
    }
}

/* A model whose context is shorter than the default --seq-len (512, for --text): train-predictor --trace, which
 * takes no --seq-len (a trace keeps its own sequences), trains on it; --text without --seq-len is still
 * refused, the default being past the context (a usage error, naming it). */
static void check_short_context(void)
{
    char a[2048], src[4200], m[400], cmd[9000], cfg[4300], short_cfg[500];
    snprintf(m, sizeof m, "%s/ctx200", dir);
    t_path(src, sizeof src, "models/pycode-moe-18m");
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && ln -sf '%s'/* '%s/' && rm '%s/config.json'", m, src, m, m);
    REQUIRE(system(cmd) == 0, "%s", cmd);
    snprintf(cfg, sizeof cfg, "%s/config.json", src);
    snprintf(short_cfg, sizeof short_cfg, "%s/config.json", m);
    REQUIRE(copy_replacing(cfg, short_cfg, "\"max_position_embeddings\": 2048", "\"max_position_embeddings\": 200"),
            "copy of %s with a context of 200", cfg);
    snprintf(a, sizeof a, "train-predictor --model %s --trace %s --out %s/short.safetensors --epochs 1 --width 8 "
             "--quiet", m, trace, dir);
    int rc = run(a);
    CHECK(rc == 0 && !strstr(out, "--seq-len"), "train-predictor --trace, a model of 200 positions: exit %d: %s", rc,
          out);
    /* without --seq-len, a default past the context (512; trace's 256) becomes the context */
    char text[600], eval_txt[4200];
    snprintf(text, sizeof text, "%s/short.txt", dir);
    t_path(eval_txt, sizeof eval_txt, "bench/data/pycode/eval.txt");
    snprintf(cmd, sizeof cmd, "head -c 2000 '%s' > '%s'", eval_txt, text);
    REQUIRE(system(cmd) == 0, "%s", cmd);
    static const struct {
        const char *cmd, *out; /* out: a file name in the test's folder for --out */
    } text_cmds[] = {
        { "train-predictor --epochs 1 --width 8 --quiet", "short-text.safetensors" },
        { "eval-predictor --predictor gate", NULL },
        { "replay --capacity 64 --policy lru --predictor none", NULL },
        { "trace", "short-text.jsonl" },
    };
    for (size_t c = 0; c < sizeof text_cmds / sizeof text_cmds[0]; c++) {
        char head[600];
        if (text_cmds[c].out)
            snprintf(head, sizeof head, "%s --out %s/%s", text_cmds[c].cmd, dir, text_cmds[c].out);
        else
            snprintf(head, sizeof head, "%s", text_cmds[c].cmd);
        snprintf(a, sizeof a, "%s --model %s --text %s", head, m, text);
        rc = run(a);
        CHECK(rc == 0 && !strstr(out, "--seq-len"), "%s, a model of 200 positions: exit %d: %s", a, rc, out);
        snprintf(a, sizeof a, "%s --model %s --text %s --seq-len 201", head, m, text);
        rc = run(a);
        CHECK(rc == 2 && strstr(out, "--seq-len 201 exceeds the model's context of 200 tokens"),
              "%s: exit %d: %s", a, rc, out);
    }
}

/* the four commands that read --text say the same of a text they cannot use */
static void check_text_files(void)
{
    char empty[300], a[1024];
    snprintf(empty, sizeof empty, "%s/empty.txt", dir);
    FILE *f = fopen(empty, "w");
    REQUIRE(f && fclose(f) == 0, "write %s", empty);
    static const char *const cmds[] = {
        "eval-predictor --predictor gate --text",
        "replay --capacity 64 --policy lru --predictor none --text",
        "trace --out /tmp/moeflow-never-written.jsonl --text",
        "train-predictor --out /tmp/moeflow-never-written.safetensors --text",
    };
    for (size_t c = 0; c < sizeof cmds / sizeof cmds[0]; c++) {
        snprintf(a, sizeof a, "%s %s", cmds[c], empty);
        int rc = run(a);
        CHECK(rc == 1 && strstr(out, "holds no token") && strstr(out, empty), "%s: exit %d: %s", a, rc, out);
        snprintf(a, sizeof a, "%s %s/none.txt", cmds[c], dir);
        rc = run(a);
        CHECK(rc == 1 && strstr(out, "--text") && strstr(out, "none.txt: No such file"), "%s: exit %d: %s", a, rc,
              out);
        snprintf(a, sizeof a, "%s %s --seq-len 1000000", cmds[c], empty);
        rc = run(a);
        CHECK(rc == 2 && strstr(out, "exceeds the model's context"), "%s: exit %d: %s", a, rc, out);
    }
    CHECK(access("/tmp/moeflow-never-written.jsonl", F_OK) != 0 &&
              access("/tmp/moeflow-never-written.safetensors", F_OK) != 0,
          "a failed command wrote its --out");
}

int main(void)
{
    REQUIRE(mkdtemp(dir), "mkdtemp");
    snprintf(trace, sizeof trace, "%s/t.jsonl", dir);
    char a[1024];
    snprintf(a, sizeof a, "trace --text bench/data/pycode/eval.txt --max-tokens 200 --seq-len 128 --out %s", trace);
    REQUIRE(run(a) == 0, "trace: %s", out);
    check_sim();
    check_train_diverges();
    check_oracle_horizon();
    check_other_model();
    check_other_layers();
    check_recorded_model_name();
    check_route_progress();
    check_replay_warnings();
    check_predictor_files();
    check_text_files();
    check_short_context();
    snprintf(a, sizeof a, "rm -rf '%s'", dir);
    if (system(a)) fprintf(stderr, "could not remove %s\n", dir);
    return t_result("test_pred_errors");
}
