/* Every moeflow command answers --help and -h with its help (listing "-h, --help"), as moeflow help CMD does,
 * and an option it does not have, an option without its value, an ambiguous abbreviation and a value given to a flag that takes
 * none with one line on stderr that names the option, and exit status 2 (no usage text after it). */
#include "kernels/backend.h"
#include "tests/test_util.h"

#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

static char exe[4200];

/* moeflow ARGS 2>&1: the output must be exactly want, the exit status status. */
static void expect_exit(const char *args, int status, const char *want)
{
    char cmd[8192], out[8192];
    snprintf(cmd, sizeof(cmd), "'%s' %s 2>&1 </dev/null", exe, args);
    int st = t_run(cmd, out, sizeof(out));
    CHECK(st == status && !strcmp(out, want), "moeflow %s: exit %d, output '%s', want %d, '%s'", args, st, out, status,
          want);
}

/* A usage error: exit 2. */
static void expect(const char *args, const char *want) { expect_exit(args, 2, want); }

/* moeflow ARGS: its stdout into out (stderr dropped); the exit status. */
static int run_out(const char *args, char *out, size_t cap)
{
    char cmd[8192];
    snprintf(cmd, sizeof(cmd), "'%s' %s 2>/dev/null </dev/null", exe, args);
    return t_run(cmd, out, cap);
}

/* moeflow ARGS once: its stdout into out, its stderr into err (through the file err_path); the exit status. */
static int run_split(const char *args, const char *err_path, char *out, size_t cap, char *err, size_t err_cap)
{
    char cmd[8192];
    snprintf(cmd, sizeof(cmd), "'%s' %s 2>'%s' </dev/null", exe, args, err_path);
    int st = t_run(cmd, out, cap);
    FILE *f = fopen(err_path, "r");
    size_t len = f ? fread(err, 1, err_cap - 1, f) : 0;
    err[len] = 0;
    if (!f) snprintf(err, err_cap, "(%s unread)", err_path);
    if (f) fclose(f);
    return st;
}

/* Every command that moeflow --help lists (and bench's one benchmark) prints the same help for --help and -h,
 * on stdout alone, exit 0, and lists the pair as "-h, --help" as every other option line lists its flags. */
static void check_help(void)
{
    static char top[16384], help[65536], help_h[65536], err[4096];
    char err_path[] = "/tmp/moeflow-cli-options-err.XXXXXX";
    int fd = mkstemp(err_path);
    CHECK(fd >= 0 && close(fd) == 0, "%s", err_path);
    int st = run_out("--help", top, sizeof(top));
    CHECK(st == 0 && strstr(top, "\ncommands:\n"), "moeflow --help: exit %d: %s", st, top);
    const char *p = strstr(top, "\ncommands:\n");
    int n = 0;
    char names[32][64];
    for (p = p ? p + strlen("\ncommands:\n") : ""; !strncmp(p, "  ", 2) && n < 31; n++) {
        size_t len = strcspn(p + 2, " \n");
        snprintf(names[n], sizeof(names[n]), "%.*s", (int)len, p + 2);
        p = strchr(p, '\n');
        p = p ? p + 1 : "";
    }
    CHECK(n >= 12, "moeflow --help lists %d commands: %s", n, top);
    snprintf(names[n++], sizeof(names[0]), "bench batch");
    for (int i = 0; i < n; i++) {
#ifndef TEST_SERVER
        if (!strcmp(names[i], "serve")) continue; /* a build without the server has no options to list */
#endif
        char args[128];
        snprintf(args, sizeof(args), "%.63s --help", names[i]);
        st = run_split(args, err_path, help, sizeof(help), err, sizeof(err));
        CHECK(st == 0 && !strncmp(help, "usage: moeflow ", 15), "moeflow %s: exit %d: %.200s", args, st, help);
        CHECK(strstr(help, "\n  -h, --help ") != NULL, "moeflow %s lists no '-h, --help' line", args);
        CHECK(!*err, "moeflow %s wrote on stderr: %s", args, err);
        snprintf(args, sizeof(args), "%.63s -h", names[i]);
        st = run_out(args, help_h, sizeof(help_h));
        CHECK(st == 0 && !strcmp(help, help_h), "moeflow %s: exit %d, not the text of --help: %.200s", args, st,
              help_h);
        snprintf(args, sizeof(args), "help %.63s", names[i]);
        st = run_split(args, err_path, help_h, sizeof(help_h), err, sizeof(err));
        CHECK(st == 0 && !strcmp(help, help_h), "moeflow %s: exit %d, not the text of --help: %.200s", args, st,
              help_h);
        CHECK(!*err, "moeflow %s wrote on stderr: %s", args, err);
        /* a short option is taken exactly when the help lists it ("  -X, --name"), tried for the initial of every
         * long option the help names (what a short option abbreviates); a model that does not exist stops a short
         * flag that takes no value (pack -q) before any work (bench alone names its benchmark).  One shell runs
         * every letter: "X 1" when -X is taken, "X 0" when it is unknown */
        char letters[64] = "";
        for (const char *q = help; (q = strstr(q, "--")); q += 2) {
            char l = q[2];
            if (((l >= 'a' && l <= 'z') || (l >= 'A' && l <= 'Z')) && l != 'h' && !strchr(letters, l) &&
                strlen(letters) + 1 < sizeof(letters))
                letters[strlen(letters)] = l;
        }
        CHECK(strchr(letters, 'm') || !strstr(help, "--model"), "moeflow %s: initials %s", names[i], letters);
        char cmd[8192];
        static char taken[4096];
        snprintf(cmd, sizeof(cmd), "for x in $(echo %s | sed 's/./& /g'); do e=$(MOEFLOW_MODEL=/nonexistent-model "
                 "'%s' %.63s -$x 2>&1 >/dev/null </dev/null); case \"$e\" in *\"unknown \"*\"'-$x'\"*) echo \"$x 0\";; "
                 "*) echo \"$x 1\";; esac; done", letters, exe, names[i]);
        t_run(cmd, taken, sizeof(taken));
        size_t n_letters = strlen(letters);
        CHECK(strlen(taken) == 4 * n_letters, "moeflow %s: the short options' run printed: %s", names[i], taken);
        for (size_t k = 0; k < n_letters && strlen(taken) == 4 * n_letters; k++) {
            char line[16];
            snprintf(line, sizeof(line), "\n  -%c, --", letters[k]);
            bool is_taken = taken[4 * k] == letters[k] && taken[4 * k + 2] == '1', listed = strstr(help, line);
            CHECK(is_taken == listed, "moeflow %s: -%c is %s but %s in --help", names[i], letters[k],
                  is_taken ? "taken" : "unknown", listed ? "listed" : "not listed");
        }
    }
    unlink(err_path);
}

int main(void)
{
    const char *bin = getenv("MOEFLOW_BINARY_DIR");
    snprintf(exe, sizeof(exe), "%s/server/moeflow", bin ? bin : ".");
    REQUIRE(access(exe, X_OK) == 0, "%s not built", exe);
    /* the help checks (some 170 moeflow runs) go on in a second process beside the rest (some 200), which share no
     * file with them: the two halves take a core each.  A message is written a line at a time, so the two
     * processes' lines do not mix; the second's exit status counts its failed checks */
    setvbuf(stderr, NULL, _IOLBF, BUFSIZ);
    fflush(stdout);
    pid_t help_pid = fork();
    if (help_pid == 0) {
        check_help();
        fflush(NULL);
        _exit(t_failures > 100 ? 100 : t_failures);
    }
    if (help_pid < 0) fprintf(stderr, "fork: %s; the help checks run after the rest\n", strerror(errno));

    static const char *const cmds[] = { "generate", "tokenize", "logits", "info", "pack", "trace", "sim",
                                        "train-predictor", "eval-predictor", "replay", "bench batch",
#ifdef TEST_SERVER
                                        "serve",
#endif
    };
    char args[256], want[512];
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        snprintf(args, sizeof(args), "%s --no-such-option", cmds[i]);
        snprintf(want, sizeof(want), "moeflow %s: unknown option '--no-such-option' (see --help)\n", cmds[i]);
        expect(args, want);
        snprintf(args, sizeof(args), "%s --no-such-option=1", cmds[i]);
        expect(args, want);
        snprintf(args, sizeof(args), "%s -Z", cmds[i]);
        snprintf(want, sizeof(want), "moeflow %s: unknown option '-Z' (see --help)\n", cmds[i]);
        expect(args, want);
        /* an option with a value: sim has no --model */
        const char *opt = strcmp(cmds[i], "sim") ? "--model" : "--trace";
        snprintf(args, sizeof(args), "%s %s", cmds[i], opt);
        snprintf(want, sizeof(want), "moeflow %s: %s needs a value (see --help)\n", cmds[i], opt);
        expect(args, want);
    }

    /* --threads: the same limit, the CPU backend's, and the same message on every command that takes it (the
     * largest value is taken: the unknown option after it is what is refused) */
    static const char *const thread_cmds[] = { "generate", "logits", "trace", "train-predictor", "eval-predictor",
                                               "replay", "bench batch" };
    for (size_t i = 0; i < sizeof(thread_cmds) / sizeof(thread_cmds[0]); i++) {
        snprintf(args, sizeof(args), "%s --threads %d", thread_cmds[i], MOE_CPU_MAX_THREADS + 1);
        snprintf(want, sizeof(want), "moeflow %s: --threads '%d': expected an integer in [1, %d]\n", thread_cmds[i],
                 MOE_CPU_MAX_THREADS + 1, MOE_CPU_MAX_THREADS);
        expect(args, want);
        snprintf(args, sizeof(args), "%s --threads 0", thread_cmds[i]);
        snprintf(want, sizeof(want), "moeflow %s: --threads '0': expected an integer in [1, %d]\n", thread_cmds[i],
                 MOE_CPU_MAX_THREADS);
        expect(args, want);
        snprintf(args, sizeof(args), "%s --threads %d --no-such-option", thread_cmds[i], MOE_CPU_MAX_THREADS);
        snprintf(want, sizeof(want), "moeflow %s: unknown option '--no-such-option' (see --help)\n", thread_cmds[i]);
        expect(args, want);
    }
#ifdef TEST_SERVER
    snprintf(args, sizeof(args), "serve --check-config --threads %d", MOE_CPU_MAX_THREADS);
    {
        char cmd[8192], out[8192];
        snprintf(cmd, sizeof(cmd), "'%s' %s 2>&1 </dev/null", exe, args);
        int st = t_run(cmd, out, sizeof(out));
        CHECK(st == 0, "moeflow %s: exit %d, output '%s'", args, st, out);
    }
    snprintf(args, sizeof(args), "serve --check-config --threads %d", MOE_CPU_MAX_THREADS + 1);
    snprintf(want, sizeof(want), "moeflow serve: --threads: %d is outside [1, %d]\n", MOE_CPU_MAX_THREADS + 1,
             MOE_CPU_MAX_THREADS);
    expect(args, want);
#endif

    /* an input file named by an empty value (a variable left unset) is refused before any work, as an empty
     * output path is, naming the option */
    static const struct { const char *cmd, *args; } empty_in[] = {
        { "generate", "--prompt x --json-schema ''" },
        { "generate", "--prompt x --grammar ''" },
        { "generate", "--prompt x --gpu-experts 8 --policy belady --belady-trace ''" },
        { "generate", "--prompt x --gpu-experts 8 --store ''" },
        { "trace", "--ids i.json --out t.jsonl --store ''" },
        { "bench batch", "--prompts p.txt --concurrency 1 --micro-batch 1 --max-tokens 1 --grouping fcfs --capacity 8 "
          "--store ''" },
        { "trace", "--text '' --out t.jsonl" },
        { "trace", "--ids '' --out t.jsonl" },
        { "sim", "--trace '' --policy lru --capacity 8" },
        { "train-predictor", "--trace '' --out p.safetensors" },
        { "train-predictor", "--text '' --out p.safetensors" },
        { "eval-predictor", "--text '' --predictor gate" },
        { "replay", "--text '' --policy lru --capacity 8 --predictor none" },
        { "tokenize", "--tokenizer '' --text x" },
        { "tokenize", "--file ''" },
        { "bench batch", "--prompts '' --concurrency 1 --micro-batch 1 --max-tokens 1 --grouping fcfs --capacity 8" },
    };
    for (size_t i = 0; i < sizeof(empty_in) / sizeof(empty_in[0]); i++) {
        snprintf(args, sizeof(args), "%s %s", empty_in[i].cmd, empty_in[i].args);
        const char *flag = strstr(args, " ''") - 1;
        while (flag[-1] != ' ') flag--;
        snprintf(want, sizeof(want), "moeflow %s: %.*s is empty: name the file to read\n", empty_in[i].cmd,
                 (int)(strstr(args, " ''") - flag), flag);
        expect(args, want);
    }

    /* an empty --model is refused as it is read, as an empty input file is, on every command that takes one (the
     * option after it, unknown, is never reached; serve reads its options after it has checked them all) */
    static const char *const model_cmds[] = { "generate", "tokenize", "logits", "info", "pack", "trace",
                                              "train-predictor", "eval-predictor", "replay", "bench batch",
#ifdef TEST_SERVER
                                              "serve",
#endif
    };
    for (size_t i = 0; i < sizeof(model_cmds) / sizeof(model_cmds[0]); i++) {
        snprintf(args, sizeof(args), "%s --model '' %s", model_cmds[i],
                 strcmp(model_cmds[i], "serve") ? "--no-such-option" : "--check-config");
        snprintf(want, sizeof(want), "moeflow %s: --model is empty: name the model directory\n", model_cmds[i]);
        expect(args, want);
    }
    expect("logits -m '' --ids 1 --out l.safetensors", "moeflow logits: --model is empty: name the model directory\n");
    /* $MOEFLOW_MODEL set but empty is taken as unset: the default model, as without it */
    {
        static char unset[16384], empty[16384];
        char cmd[8192];
        snprintf(cmd, sizeof(cmd), "env -u MOEFLOW_MODEL '%s' info --json 2>&1 </dev/null", exe);
        int st_unset = t_run(cmd, unset, sizeof(unset));
        snprintf(cmd, sizeof(cmd), "MOEFLOW_MODEL= '%s' info --json 2>&1 </dev/null", exe);
        int st_empty = t_run(cmd, empty, sizeof(empty));
        CHECK(st_unset == 0 && st_empty == 0 && !strcmp(unset, empty),
              "MOEFLOW_MODEL='' info: exit %d, '%.200s'; unset: exit %d, '%.200s'", st_empty, empty, st_unset, unset);
    }

    /* a model directory that $MOEFLOW_MODEL names, no --model given: the message names the variable too */
    {
        static const char *const env_cmds[] = { "info", "tokenize --text hi",
                                                ("trace --ids /nonexistent.json --out "
                                                 "/tmp/moeflow-cli-options-t.jsonl") };
        for (size_t i = 0; i < sizeof(env_cmds) / sizeof(env_cmds[0]); i++) {
            char cmd[8192], out[8192];
            snprintf(cmd, sizeof(cmd), "MOEFLOW_MODEL=/nonexistent-model '%s' %s 2>&1 </dev/null", exe, env_cmds[i]);
            int st = t_run(cmd, out, sizeof(out));
            CHECK(st == 1 && strstr(out, "/nonexistent-model") &&
                      strstr(out, " (set --model DIR, or $MOEFLOW_MODEL, which names this directory)\n"),
                  "MOEFLOW_MODEL=/nonexistent-model %s: exit %d, output '%s'", env_cmds[i], st, out);
            snprintf(cmd, sizeof(cmd), "MOEFLOW_MODEL=/nonexistent-model '%s' %s --model /nonexistent-other 2>&1 "
                     "</dev/null", exe, env_cmds[i]);
            st = t_run(cmd, out, sizeof(out));
            CHECK(st == 1 && strstr(out, "/nonexistent-other") && strstr(out, " (set --model DIR)\n"),
                  "MOEFLOW_MODEL=... %s --model /nonexistent-other: exit %d, output '%s'", env_cmds[i], st, out);
        }
    }

    /* an input file that cannot be read (missing, a directory, a device where a file is read whole) fails at run
     * time, exit 1, on every command with one message: the option, the file, why, and what to give (generate's
     * schema, grammar and tier files: test_engine_cli) */
    static const struct { const char *cmd, *args, *file, *why, *what; } unread[] = {
        { "sim", "--policy lru --capacity 8 --trace", "/nonexistent.jsonl", "No such file or directory",
          "a routing trace, as moeflow trace writes" },
        { "sim", "--policy lru --capacity 8 --trace", "/", "is a directory", "a routing trace, as moeflow trace writes" },
        { "train-predictor", "--out /tmp/moeflow-cli-options-p.safetensors --trace", "/nonexistent.jsonl",
          "No such file or directory", "a routing trace, as moeflow trace writes" },
        { "train-predictor", "--out /tmp/moeflow-cli-options-p.safetensors --text", "/nonexistent.txt",
          "No such file or directory", "UTF-8 text" },
        { "trace", "--out /tmp/moeflow-cli-options-t.jsonl --text", "/", "is a directory", "UTF-8 text" },
        { "trace", "--out /tmp/moeflow-cli-options-t.jsonl --ids", "/nonexistent.json", "No such file or directory",
          "a JSON array of token-id arrays, as generate --ids-out writes" },
        { "eval-predictor", "--predictor gate --text", "/nonexistent.txt", "No such file or directory", "UTF-8 text" },
        { "replay", "--policy lru --capacity 8 --predictor none --text", "/dev/null", "not a regular file",
          "UTF-8 text" },
        { "tokenize", "--file", "/nonexistent.txt", "No such file or directory", "the text to encode" },
        { "tokenize", "--decode --file", "/", "is a directory", "a JSON array of ids" },
        { "tokenize", "--text x --tokenizer", "/nonexistent.json", "No such file or directory", "a tokenizer.json" },
        { "bench batch", "--concurrency 1 --micro-batch 1 --max-tokens 1 --grouping fcfs --capacity 8 --prompts",
          "/nonexistent.txt", "No such file or directory",
          "prompts, one a line or a JSON array of strings in a .json file" },
#ifdef TEST_SERVER
        { "serve", "--gpu-experts 8 --store", "/nonexistent.moestore", "No such file or directory",
          "an expert store, as moeflow pack writes" },
        { "serve", "--chat-template", "/", "is a directory", "a Jinja chat template" },
#endif
    };
    for (size_t i = 0; i < sizeof(unread) / sizeof(unread[0]); i++) {
        snprintf(args, sizeof(args), "%s %s %s", unread[i].cmd, unread[i].args, unread[i].file);
        const char *flag = strrchr(unread[i].args, ' ') ? strrchr(unread[i].args, ' ') + 1 : unread[i].args;
        snprintf(want, sizeof(want), "moeflow %s: %s %s: %s (give a readable file holding %s)\n", unread[i].cmd, flag,
                 unread[i].file, unread[i].why, unread[i].what);
        expect_exit(args, 1, want);
    }

    /* --file - whose stdin cannot be read (a directory): the reason and what to give, exit 1 */
    {
        char cmd[8192], out[8192];
        snprintf(cmd, sizeof(cmd), "'%s' tokenize --file - 2>&1 </", exe);
        int st = t_run(cmd, out, sizeof(out));
        CHECK(st == 1 && !strcmp(out, "moeflow tokenize: --file -: reading stdin failed: Is a directory (give the text "
                                      "to encode on stdin)\n"),
              "tokenize --file - <DIR: exit %d, output '%s'", st, out);
    }

    /* a standard descriptor closed at start reads or writes /dev/null: stdin closed, --file - reads no text, as
     * from /dev/null, where the first descriptor a library or the command opened took number 0 and was read;
     * stdout closed, what is printed is dropped, where it went into that descriptor and the write failed */
    {
        char cmd[8192], out[8192], ref[8192];
        snprintf(cmd, sizeof(cmd), "'%s' tokenize --file - 2>&1 </dev/null", exe);
        int st_ref = t_run(cmd, ref, sizeof(ref));
        snprintf(cmd, sizeof(cmd), "'%s' tokenize --file - 2>&1 <&-", exe);
        int st = t_run(cmd, out, sizeof(out));
        CHECK(st_ref == 0 && st == 0 && !strcmp(out, ref), "tokenize --file - <&-: exit %d, output '%s', want '%s'",
              st, out, ref);
        snprintf(cmd, sizeof(cmd), "'%s' tokenize --text hi 2>&1 >&- </dev/null", exe);
        st = t_run(cmd, out, sizeof(out));
        CHECK(st == 0 && !*out, "tokenize >&-: exit %d, output '%s'", st, out);
    }

    /* a count past its largest value is refused naming the range, not only its lower end (which it is above) */
    expect("generate --prompt x --top-k 1073741825",
           "moeflow generate: --top-k '1073741825': expected an integer in [0, 1073741824]\n");
    expect("generate --prompt x --top-k -1", "moeflow generate: --top-k '-1': expected an integer in [0, 1073741824]\n");
    expect("sim --trace t.jsonl --policy lru --capacity 1073741825",
           "moeflow sim: --capacity '1073741825': expected an integer in [1, 1073741824]\n");
    expect("sim --trace t.jsonl --policy lru --capacity 0",
           "moeflow sim: --capacity '0': expected an integer in [1, 1073741824]\n");

    /* --blas chooses the CPU backend's GEMMs: with --backend cuda it was silently unused */
    expect("generate --prompt x --backend cuda --blas",
           "moeflow generate: --blas chooses the cpu backend's GEMMs and --backend cuda runs them on the GPU: drop one "
           "of the two\n");

    /* --threads sizes the CPU backend's pool: above 1 with --backend cuda, where no pool runs, it was silently
     * unused; 1, the default, is taken */
    static const char *const cuda_thread_cmds[] = {
        "generate --prompt x", "trace --ids i.json --out t.jsonl",
        "replay --text t.txt --policy lru --capacity 8 --predictor none",
        "bench batch --prompts p.txt --concurrency 1 --micro-batch 1 --max-tokens 1 --grouping fcfs --capacity 8",
    };
    for (size_t i = 0; i < sizeof(cuda_thread_cmds) / sizeof(cuda_thread_cmds[0]); i++) {
        char name[32];
        snprintf(name, sizeof(name), "%.*s", (int)(strstr(cuda_thread_cmds[i], " --") - cuda_thread_cmds[i]),
                 cuda_thread_cmds[i]);
        snprintf(args, sizeof(args), "%s --threads 4 --backend cuda", cuda_thread_cmds[i]);
        snprintf(want, sizeof(want), "moeflow %s: --threads 4 sizes the cpu backend's pool and --backend cuda "
                 "computes on the GPU, where no pool runs: drop --threads (or use --backend cpu)\n", name);
        expect(args, want);
    }
#ifdef TEST_SERVER
    expect("serve --check-config --backend cuda --threads 2",
           "moeflow serve: threads 2 sizes the cpu backend's pool and backend cuda computes on the GPU, where no pool "
           "runs: drop threads (or use backend cpu)\n");
    expect_exit("serve --check-config --backend cuda --threads 1", 0, "moeflow serve: configuration ok\n");
#endif

    expect("sim --trace t.jsonl --policy lru --cap 64",
           "moeflow sim: '--cap' is ambiguous (--capacity, --capacity-frac): spell it out\n");
    expect("generate --prompt x --top 5", "moeflow generate: '--top' is ambiguous (--top-p, --top-k): spell it out\n");
    expect("info --json=1", "moeflow info: --json takes no value\n");
    expect("pack -qZ", "moeflow pack: unknown option '-Z' (see --help)\n");
    expect("generate -p", "moeflow generate: -p needs a value (see --help)\n");
    expect("trace --text t.txt --out", "moeflow trace: --out needs a value (see --help)\n");
#ifdef TEST_SERVER
    expect("serve --check-config --no-io-uring=1", "moeflow serve: --no-io-uring takes no value\n");
#endif

    /* two outputs of one run naming one file (by two spellings): refused before any work, where the one renamed into
     * place last replaced the other; a device (/dev/stdout, written in place by both) is taken */
    expect("trace --ids i.json --out /tmp/moeflow-cli-options-same.json --gpu-experts 8 --stats-json "
           "/tmp/./moeflow-cli-options-same.json",
           "moeflow trace: --stats-json /tmp/./moeflow-cli-options-same.json names the file of --out: give each output "
           "its own file\n");
    expect("generate --prompt x --gpu-experts 8 --ids-out /tmp/moeflow-cli-options-same.json --stats-json "
           "/tmp/moeflow-cli-options-same.json",
           "moeflow generate: --stats-json /tmp/moeflow-cli-options-same.json names the file of --ids-out: give each "
           "output its own file\n");
    /* a symbolic link to a file not made yet names that file (its output's rename replaces it): the link and the
     * file, or two links to it, are one output, where only their spellings were compared */
    {
        char dir[] = "/tmp/moeflow-cli-options-link.XXXXXX", a[64], b[64], cmdline[512], msg[512];
        CHECK(mkdtemp(dir) != NULL, "mkdtemp failed");
        snprintf(a, sizeof(a), "%s/l", dir);
        snprintf(b, sizeof(b), "%s/l2", dir);
        CHECK(symlink("t.json", a) == 0 && symlink("t.json", b) == 0, "symlink in %s failed", dir);
        snprintf(cmdline, sizeof(cmdline), "trace --ids i.json --out %s --gpu-experts 8 --stats-json %s/t.json", a, dir);
        snprintf(msg, sizeof(msg), "moeflow trace: --stats-json %s/t.json names the file of --out: give each output "
                 "its own file\n", dir);
        expect(cmdline, msg);
        snprintf(cmdline, sizeof(cmdline), "generate --prompt x --gpu-experts 8 --ids-out %s --stats-json %s", a, b);
        snprintf(msg, sizeof(msg), "moeflow generate: --stats-json %s names the file of --ids-out: give each output "
                 "its own file\n", b);
        expect(cmdline, msg);
        unlink(a);
        unlink(b);
        rmdir(dir);
    }
    {
        char cmd[8192], out[8192];
        snprintf(cmd, sizeof(cmd), "'%s' generate --prompt x --max-tokens 1 --gpu-experts 8 --ids-out /dev/null "
                 "--stats-json /dev/null 2>&1 >/dev/null </dev/null", exe);
        int st = t_run(cmd, out, sizeof(out));
        CHECK(st == 0 && !*out, "generate --ids-out /dev/null --stats-json /dev/null: exit %d: %s", st, out);
    }

    /* an output that names a file the run reads (by another spelling, or through a link) is refused before any
     * work, where the output replaced the input it was made from */
    static const struct { const char *cmd, *args, *out_flag, *in_flag; } in_out[] = {
        { "trace", "--text /tmp/moeflow-cli-options-io --out /tmp/./moeflow-cli-options-io", "--out", "--text" },
        { "trace", "--ids /tmp/moeflow-cli-options-io --out t.jsonl --gpu-experts 8 --stats-json "
          "/tmp/moeflow-cli-options-io", "--stats-json", "--ids" },
        { "train-predictor", "--trace /tmp/moeflow-cli-options-io --out /tmp/moeflow-cli-options-io", "--out",
          "--trace" },
        { "train-predictor", "--text /tmp/moeflow-cli-options-io --out /tmp/moeflow-cli-options-io", "--out", "--text" },
        { "generate", "--prompt x --grammar /tmp/moeflow-cli-options-io --ids-out /tmp/moeflow-cli-options-io",
          "--ids-out", "--grammar" },
        { "generate", "--prompt x --gpu-experts 8 --store /tmp/moeflow-cli-options-io --stats-json "
          "/tmp/moeflow-cli-options-io", "--stats-json", "--store" },
        { "bench batch", "--prompts /tmp/moeflow-cli-options-io --concurrency 1 --micro-batch 1 --max-tokens 1 "
          "--grouping fcfs --capacity 8 --stats-json /tmp/moeflow-cli-options-io", "--stats-json", "--prompts" },
    };
    for (size_t i = 0; i < sizeof(in_out) / sizeof(in_out[0]); i++) {
        const char *out = strstr(in_out[i].args, in_out[i].out_flag) + strlen(in_out[i].out_flag) + 1;
        snprintf(args, sizeof(args), "%s %s", in_out[i].cmd, in_out[i].args);
        snprintf(want, sizeof(want), "moeflow %s: %s %.*s names the file of %s, which the output would replace: name "
                 "another file\n", in_out[i].cmd, in_out[i].out_flag, (int)strcspn(out, " "), out, in_out[i].in_flag);
        expect(args, want);
    }
    {
        char dir[] = "/tmp/moeflow-cli-options-io.XXXXXX", text[64], link[64], cmdline[512], msg[512];
        CHECK(mkdtemp(dir) != NULL, "mkdtemp failed");
        snprintf(text, sizeof(text), "%s/t.txt", dir);
        snprintf(link, sizeof(link), "%s/l", dir);
        FILE *f = fopen(text, "w");
        CHECK(f && fputs("def f(x):\n", f) >= 0 && fclose(f) == 0 && symlink("t.txt", link) == 0, "files in %s", dir);
        snprintf(cmdline, sizeof(cmdline), "trace --text %s --out %s", link, text);
        snprintf(msg, sizeof(msg), "moeflow trace: --out %s names the file of --text, which the output would replace: "
                 "name another file\n", text);
        expect(cmdline, msg);
        char got[32] = "";
        f = fopen(text, "r");
        CHECK(f && fgets(got, sizeof(got), f) && !strcmp(got, "def f(x):\n"), "%s changed: '%s'", text, got);
        if (f) fclose(f);
        unlink(link);
        unlink(text);
        CHECK(rmdir(dir) == 0, "%s: a work file left behind", dir);
    }

    /* eval-predictor measures predictions: none has none (it printed a table of no row, exit 0) */
    expect("eval-predictor --text t.txt --predictor none",
           "moeflow eval-predictor: --predictor none predicts nothing, so there is nothing to measure (give "
           "gate[:D], path[:FILE], history, path+gate[:FILE] or auto)\n");

    /* an empty --predictor (a variable left unset) is refused as generate refuses it, not taken for auto */
    static const char *const pred_cmds[] = {
        "eval-predictor --text t.txt --predictor ''",
        "replay --text t.txt --policy lru --capacity 8 --predictor ''",
        ("bench batch --prompts p.txt --concurrency 1 --micro-batch 1 --max-tokens 1 --grouping fcfs --capacity 8 "
         "--predictor ''"),
#ifdef TEST_SERVER
        "serve --check-config --predictor ''",
#endif
    };
    for (size_t i = 0; i < sizeof(pred_cmds) / sizeof(pred_cmds[0]); i++) {
        char name[32];
        snprintf(name, sizeof(name), "%.*s", (int)(strstr(pred_cmds[i], " --") - pred_cmds[i]), pred_cmds[i]);
        snprintf(want, sizeof(want), "moeflow %s: --predictor '' is empty (use none, gate[:D], path[:FILE], history, "
                 "path+gate[:FILE] or auto)\n", name);
        expect(pred_cmds[i], want);
    }
    /* a missing or contradictory option is one line that names it, as on every command, where generate, logits and
     * tokenize printed their whole help after it */
    expect("generate --max-tokens 1", "moeflow generate: --prompt TEXT is required (see --help)\n");
    expect("logits --out l.safetensors", "moeflow logits: --ids LIST is required (see --help)\n");
    expect("logits --ids 1,2", "moeflow logits: --out FILE is required (see --help)\n");
    expect("tokenize", "moeflow tokenize: give exactly one of --text and --file (see --help)\n");
    expect("tokenize --text x --decode", "moeflow tokenize: --text is for encoding; with --decode give --ids or --file "
           "(see --help)\n");
    expect("tokenize --model m --tokenizer t.json --text x", "moeflow tokenize: give --model or --tokenizer, not both "
           "(see --help)\n");
    expect("tokenize hello world", "moeflow tokenize: unexpected argument 'hello' (quote the text and pass it with "
           "--text)\n");

    /* text that is not UTF-8 is refused naming its option and the offset in it, before the model loads: --system
     * was reported as --prompt, at an offset into the prompt the chat template made */
    expect("generate --chat --prompt x --system \"$(printf 'ok \\303')\"",
           "moeflow generate: --system: text is not valid UTF-8: bad byte 0xc3 at byte offset 3\n");
    expect("generate --chat --prompt \"$(printf 'ab\\377')\" --model /nonexistent-model",
           "moeflow generate: --prompt: text is not valid UTF-8: bad byte 0xff at byte offset 2\n");

    /* a file read that holds the wrong thing (here nothing) is named by its option too, exit 1 */
    {
        char empty[] = "/tmp/moeflow-cli-options-empty.XXXXXX";
        int fd = mkstemp(empty);
        CHECK(fd >= 0 && close(fd) == 0, "%s", empty);
        static const struct { const char *cmd, *args, *flag, *why; } bad_file[] = {
            { "sim", "--policy lru --capacity 8", "--trace", "empty file, not a routing trace" },
            { "train-predictor", "--out /tmp/moeflow-cli-options-p.safetensors", "--trace",
              "empty file, not a routing trace" },
            { "tokenize", "--text x", "--tokenizer", "not valid JSON at line 1 column 0: '[' or '{' expected near end of "
              "file" },
            { "tokenize", "--decode", "--file", "not valid JSON at line 1 column 0: unexpected token near end of file "
              "(want an array of ids like [1, 2, 3])" },
        };
        for (size_t i = 0; i < sizeof(bad_file) / sizeof(bad_file[0]); i++) {
            snprintf(args, sizeof(args), "%s %s %s %s", bad_file[i].cmd, bad_file[i].args, bad_file[i].flag, empty);
            snprintf(want, sizeof(want), "moeflow %s: %s %s: %s\n", bad_file[i].cmd, bad_file[i].flag, empty,
                     bad_file[i].why);
            expect_exit(args, 1, want);
        }
        unlink(empty);
    }

    /* trace --ids: a sequence longer than the context is refused naming --ids and the sequence, and is taken when
     * --max-tokens cuts the run to what fits, where it was refused whatever --max-tokens said */
    {
        char ids[] = "/tmp/moeflow-cli-options-ids.XXXXXX", out[64], cmd[8192], got[8192];
        int fd = mkstemp(ids);
        FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
        CHECK(f != NULL, "%s", ids);
        if (f) {
            fputs("[[1,2],[5", f);
            for (int i = 1; i < 2100; i++) fputs(",5", f);
            fputs("]]", f);
            fclose(f);
        }
        snprintf(out, sizeof(out), "%s.jsonl", ids);
        snprintf(args, sizeof(args), "trace --ids %s --out %s", ids, out);
        snprintf(want, sizeof(want), "moeflow trace: --ids %s: sequence 1 holds 2100 tokens, more than the model's "
                 "context of 2048 (max_position_embeddings): shorten it, or cut the run with --max-tokens\n", ids);
        expect_exit(args, 1, want);
        CHECK(access(out, F_OK) != 0, "trace refused %s but wrote %s", ids, out);
        snprintf(cmd, sizeof(cmd), "'%s' trace --ids %s --out %s --max-tokens 6 2>&1 </dev/null", exe, ids, out);
        int st = t_run(cmd, got, sizeof(got));
        CHECK(st == 0 && access(out, F_OK) == 0, "trace --ids (a long sequence) --max-tokens 6: exit %d: %s", st, got);
        unlink(out);
        unlink(ids);
    }

    /* --stats-json that names a directory or nothing: the message of every other output, on each command that
     * writes it, where these three had a message of their own */
    static const char *const stats_cmds[] = {
        "generate --prompt x --gpu-experts 8", "trace --ids i.json --out t.jsonl --gpu-experts 8",
        "bench batch --prompts p.txt --concurrency 1 --micro-batch 1 --max-tokens 1 --grouping fcfs --capacity 8",
    };
    for (size_t i = 0; i < sizeof(stats_cmds) / sizeof(stats_cmds[0]); i++) {
        char name[32];
        snprintf(name, sizeof(name), "%.*s", (int)(strstr(stats_cmds[i], " --") - stats_cmds[i]), stats_cmds[i]);
        snprintf(args, sizeof(args), "%s --stats-json /tmp", stats_cmds[i]);
        snprintf(want, sizeof(want), "moeflow %s: --stats-json /tmp is a directory: name a file in it\n", name);
        expect(args, want);
        snprintf(args, sizeof(args), "%s --stats-json ''", stats_cmds[i]);
        snprintf(want, sizeof(want), "moeflow %s: --stats-json is empty: name the file to write\n", name);
        expect(args, want);
    }

    /* a predictor file whose name cannot be looked up (a file where a directory is named) says why, where it was
     * "not found" */
    {
        char file[] = "/tmp/moeflow-cli-options-pf.XXXXXX";
        int fd = mkstemp(file);
        CHECK(fd >= 0 && close(fd) == 0, "%s", file);
        snprintf(args, sizeof(args), "eval-predictor --text %s --predictor path:%s/p.safetensors", file, file);
        snprintf(want, sizeof(want), "moeflow eval-predictor: --predictor path:%s/p.safetensors: %s/p.safetensors: Not "
                 "a directory; name a predictor file (moeflow train-predictor writes one)\n", file, file);
        expect_exit(args, 1, want);
        unlink(file);
    }

    /* a device tier below top_k names the option that sized it, on replay as on sim and bench batch */
    {
        char text[] = "/tmp/moeflow-cli-options-cap.XXXXXX";
        int fd = mkstemp(text);
        CHECK(fd >= 0 && write(fd, "def f(x):\n", 10) == 10 && close(fd) == 0, "%s", text);
        static const char *const caps[] = { "--capacity 2", "--capacity-frac 0.001" };
        for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
            snprintf(args, sizeof(args), "replay --text %s --policy lru --predictor none %s", text, caps[i]);
            snprintf(want, sizeof(want), "moeflow replay: %.*s gives %d expert slots, fewer than the 4 experts one "
                     "token needs per layer (top_k): raise --capacity or --capacity-frac\n",
                     (int)strcspn(caps[i], " "), caps[i], i ? 0 : 2);
            expect(args, want);
        }
        unlink(text);
    }

    /* a command moeflow does not have is one line, as an unknown option is, where the whole usage followed it */
    expect("nosuch --model m", "moeflow: unknown command 'nosuch' (moeflow --help lists the commands)\n");
    expect("'' x", "moeflow: unknown command '' (moeflow --help lists the commands)\n");

    /* --version and --help take no argument: one after them is refused naming it, where it was ignored, exit 0 */
    expect("--version extra", "moeflow: unexpected argument 'extra' after --version (see moeflow --help)\n");
    expect("--help generate", "moeflow: unexpected argument 'generate' after --help (moeflow help CMD prints a "
           "command's options)\n");
    expect("-h x y", "moeflow: unexpected argument 'x' after -h (moeflow help CMD prints a command's options)\n");
    /* help of help, --help, -h or --version, and a word past help CMD SUB, are refused naming the word given, where
     * help X was made X --help first and the message named '--help', or named CMD */
    expect("help help", "moeflow: unexpected argument 'help' after help (moeflow help CMD prints a command's options)\n");
    expect("help --version", "moeflow: unexpected argument '--version' after help (moeflow help CMD prints a "
           "command's options)\n");
    expect("help -h", "moeflow: unexpected argument '-h' after help (moeflow help CMD prints a command's options)\n");
    expect("help bench batch extra", "moeflow: unexpected argument 'extra' after help bench batch (moeflow help CMD "
           "prints a command's options)\n");
    /* a word past help CMD, for a command without subcommands, is refused naming it, where it went to CMD before
     * --help (help tokenize --text tokenized '--help' and exited 0; help generate --max-tokens named '--help') */
    expect("help tokenize --text", "moeflow: unexpected argument '--text' after help tokenize (moeflow help CMD prints "
           "a command's options)\n");
    expect("help generate --max-tokens", "moeflow: unexpected argument '--max-tokens' after help generate (moeflow help "
           "CMD prints a command's options)\n");
    expect("help info x", "moeflow: unexpected argument 'x' after help info (moeflow help CMD prints a command's "
           "options)\n");
    /* a word with CMD --help is refused naming it, as one after help CMD is, where the help was printed, exit 0;
     * options with it are let be (a command line with --help added prints the help) */
    static const char *const help_words[][2] = {
        { "generate --help extra", "generate: unexpected argument 'extra'" },
        { "info -h x", "info: unexpected argument 'x'" },
        { "tokenize hello --help", "tokenize: unexpected argument 'hello'" },
        { "bench --help x", "bench: unexpected argument 'x'" },
        { "bench batch --help x", "bench batch: unexpected argument 'x'" },
#ifdef TEST_SERVER
        { "serve --help x", "serve: unexpected argument 'x'" },
#endif
    };
    for (size_t i = 0; i < sizeof(help_words) / sizeof(help_words[0]); i++) {
        snprintf(want, sizeof(want), "moeflow %s with --help (moeflow help CMD prints a command's options)\n",
                 help_words[i][1]);
        expect(help_words[i][0], want);
    }
    static const char *const help_opts[] = { "generate --help --prompt x", "generate --max-tokens 3 --prompt x -h",
                                             "trace --help --out t.jsonl" };
    for (size_t i = 0; i < sizeof(help_opts) / sizeof(help_opts[0]); i++) {
        static char help[65536];
        int st = run_out(help_opts[i], help, sizeof(help));
        CHECK(st == 0 && !strncmp(help, "usage: moeflow ", 15), "moeflow %s: exit %d: %.200s", help_opts[i], st, help);
    }
    /* what --help and --version print must reach stdout, as a command's output must: a full disk fails them, with
     * the reason also where the write failed while the help was printed (generate's, longer than the stream's
     * buffer), which left nothing for the last flush to fail on */
    static const struct { const char *args, *cmd; } top_args[] = {
        { "--help", "" }, { "-h", "" }, { "help", "" }, { "--version", "" }, { "info --help", " info" },
        { "generate --help", " generate" }, { "help trace", " trace" },
        /* a command's own output: tokenize said only that the write failed */
        { "tokenize --text hi", " tokenize" }, { "tokenize --decode --ids [1,2,3]", " tokenize" },
    };
    for (size_t i = 0; i < sizeof(top_args) / sizeof(top_args[0]); i++) {
        char cmd[8192], out[8192];
        snprintf(cmd, sizeof(cmd), "'%s' %s 2>&1 >/dev/full </dev/null", exe, top_args[i].args);
        int st = t_run(cmd, out, sizeof(out));
        snprintf(want, sizeof(want), "moeflow%s: writing to stdout failed: No space left on device\n", top_args[i].cmd);
        CHECK(st == 1 && !strcmp(out, want), "moeflow %s >/dev/full: exit %d, output '%s', want '%s'",
              top_args[i].args, st, out, want);
    }
    /* generate's ranges read as every command's do, where --max-tokens said 1..1048576 and --seed gave none */
    expect("generate --prompt x --max-tokens 0",
           "moeflow generate: --max-tokens '0': expected an integer in [1, 1048576]\n");
    expect("generate --prompt x --seed -1",
           "moeflow generate: --seed '-1': expected an integer in [0, 18446744073709551615]\n");
    /* trace's usage line lists the options docs/trace-format.md's lists, where it left out --max-tokens and
     * --weights */
    {
        static char help[8192];
        const char *usage = "usage: moeflow trace [--model DIR] (--text FILE | --ids FILE) [--seq-len N] "
                            "[--max-tokens N] [--weights]\n                     --out F.jsonl\n";
        CHECK(run_out("trace --help", help, sizeof(help)) == 0 && !strncmp(help, usage, strlen(usage)),
              "moeflow trace --help: %.200s", help);
    }
    if (help_pid < 0) {
        check_help();
    } else {
        int st = 0;
        pid_t r;
        while ((r = waitpid(help_pid, &st, 0)) < 0 && errno == EINTR) continue;
        CHECK(r == help_pid && WIFEXITED(st), "the help checks' process (%d) did not exit: status %d", (int)help_pid,
              st);
        if (r == help_pid && WIFEXITED(st)) t_failures += WEXITSTATUS(st);
    }
    return t_result("test_cli_options");
}
