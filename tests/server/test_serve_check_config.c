/* moeflow serve --check-config: the config file and the flags over it pass the option table's checks
 * and the cross-field ones (exit 0, 'configuration ok'), or the error names the file, line and key
 * (exit 2); neither the model nor the store is opened, so paths that do not exist here pass (one that is there
 * must be a file). */
#include "tests/test_util.h"

#include <unistd.h>

static char dir[] = "/tmp/moe-check-config-XXXXXX", exe[4200];

static const char *write_conf(const char *name, const char *text)
{
    static char path[4300];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    REQUIRE(f && fputs(text, f) >= 0 && fclose(f) == 0, "write %s", path);
    return path;
}

/* serve --check-config --config FILE FLAGS: its exit status, its output in out */
static int check(const char *conf, const char *flags, char *out, size_t cap)
{
    char cmd[8192];
    snprintf(cmd, sizeof(cmd), "'%s' serve --check-config --config '%s' %s 2>&1", exe, conf, flags);
    return t_run(cmd, out, cap);
}

int main(void)
{
    const char *bin = getenv("MOEFLOW_BINARY_DIR");
    snprintf(exe, sizeof(exe), "%s/server/moeflow", bin ? bin : ".");
    REQUIRE(access(exe, X_OK) == 0, "%s not built", exe);
    REQUIRE(mkdtemp(dir), "mkdtemp");
    char out[8192];

    const char *good = write_conf("good.conf", "model = /nonexistent/model   # not opened\n"
                                               "store = /nonexistent/experts.moestore\n"
                                               "host = 0.0.0.0\ngpu-experts = 64\nhost-experts = 128\n"
                                               "max-seqs = 8\nmax-running = 8\ndrain-timeout = 45\n");
    int st = check(good, "", out, sizeof(out));
    CHECK(st == 0 && !strcmp(out, "moeflow serve: configuration ok\n"), "good: exit %d: %s", st, out);

    /* a flag over the file is checked with it */
    st = check(good, "--max-running 16", out, sizeof(out));
    CHECK(st == 2 && strstr(out, "max-running 16 exceeds max-seqs 8"), "flag over file: exit %d: %s", st, out);
    st = check(good, "--max-running 16 --max-seqs 16", out, sizeof(out));
    CHECK(st == 0, "both flags: exit %d: %s", st, out);

    /* a file that begins with a UTF-8 byte-order mark: its first key is the key after it */
    const char *bom = write_conf("bom.conf", "\xef\xbb\xbfmax-seqs = 4\nmax-running = 8\n");
    st = check(bom, "", out, sizeof(out));
    CHECK(st == 2 && strstr(out, "max-running 8 exceeds max-seqs 4"), "a byte-order mark: exit %d: %s", st, out);

    const char *unknown = write_conf("unknown.conf", "http-port = 8000\n\nmax-sequences = 8\n");
    st = check(unknown, "", out, sizeof(out));
    CHECK(st == 2 && strstr(out, "unknown.conf:3: unknown option 'max-sequences'"), "unknown key: exit %d: %s", st,
          out);
    /* a key given twice, however spelt, is refused naming both lines, where the last value silently won */
    const char *twice = write_conf("twice.conf", "max-seqs = 8\nhttp-port = 8000\n# max-seqs = 2\nmax_seqs = 16\n");
    st = check(twice, "", out, sizeof(out));
    CHECK(st == 2 && strstr(out, "/twice.conf:4: max-seqs is given again, first on line 1: give each key once\n"),
          "a key twice: exit %d: %s", st, out);
    const char *range = write_conf("range.conf", "drain-timeout = -1\n");
    st = check(range, "", out, sizeof(out));
    CHECK(st == 2 && strstr(out, "range.conf:1: drain-timeout: -1 is outside"), "range: exit %d: %s", st, out);
    const char *ports = write_conf("ports.conf", "grpc-port = 9000\nhttp-port = 9000\n");
    st = check(ports, "", out, sizeof(out));
    CHECK(st == 2 && strstr(out, "grpc-port and http-port are both 9000"), "ports: exit %d: %s", st, out);

    /* kv-cache-bytes sizes the context only with max-ctx 0: both given is refused, not one ignored */
    const char *kv = write_conf("kv.conf", "kv-cache-bytes = 8G\n");
    st = check(kv, "", out, sizeof(out));
    CHECK(st == 0, "kv-cache-bytes alone: exit %d: %s", st, out);
    st = check(kv, "--max-ctx 4096", out, sizeof(out));
    CHECK(st == 2 && strstr(out, "kv-cache-bytes 8G with max-ctx 4096") && strstr(out, "drop one"),
          "kv-cache-bytes with max-ctx: exit %d: %s", st, out);
    st = check(kv, "--max-ctx 4096 --kv-cache-bytes auto", out, sizeof(out));
    CHECK(st == 0, "max-ctx with kv-cache-bytes auto: exit %d: %s", st, out);

    /* a tier option's message names it and its value once, from a flag and from the file */
    st = check(good, "--policy foo", out, sizeof(out));
    CHECK(st == 2 && !strcmp(out, "moeflow serve: --policy 'foo' unknown (use predicted, lru or lfu)\n"),
          "tier flag: exit %d: %s", st, out);
    /* belady, which the other commands take with a trace, is not offered: serve refuses it */
    st = check(good, "--policy belady --gpu-experts 8", out, sizeof(out));
    CHECK(st == 2 && strstr(out, "policy belady needs the routing of requests not yet sent"),
          "policy belady: exit %d: %s", st, out);
    const char *tier = write_conf("tier.conf", "gpu-experts = 0\n");
    st = check(tier, "", out, sizeof(out));
    CHECK(st == 2 && strstr(out, "tier.conf:1: gpu-experts '0' must be an integer") && !strstr(out, "= '0'"),
          "tier key: exit %d: %s", st, out);
    /* a number too large for 64 bits or a double is outside the option's range, not "not a number"; one that
     * rounds to 0 says so; text that is no number stays that */
    static const struct { const char *flags, *want; } numbers[] = {
        { "--max-seqs 99999999999999999999", "moeflow serve: --max-seqs: 99999999999999999999 is outside [1, 4096]\n" },
        { "--max-seqs -99999999999999999999", "moeflow serve: --max-seqs: -99999999999999999999 is outside [1, 4096]\n" },
        { "--max-tokens-in-flight 9223372036854775808",
          "moeflow serve: --max-tokens-in-flight: 9223372036854775808 is outside [1, 1000000000000]\n" },
        { "--request-timeout 1e400", "moeflow serve: --request-timeout: 1e400 is outside [0, 86400]\n" },
        { "--request-timeout -1e400", "moeflow serve: --request-timeout: -1e400 is outside [0, 86400]\n" },
        { "--request-timeout 1e-400",
          "moeflow serve: --request-timeout: 1e-400 is too close to 0 to be held (write 0 or a larger number)\n" },
        { "--max-seqs 8x", "moeflow serve: --max-seqs: '8x' is not a whole number\n" },
        { "--max-seqs 1e3", "moeflow serve: --max-seqs: '1e3' is not a whole number\n" },
        { "--request-timeout inf", "moeflow serve: --request-timeout: 'inf' is not a number\n" },
        { "--request-timeout -nan", "moeflow serve: --request-timeout: '-nan' is not a number\n" },
        { "--request-timeout -inf", "moeflow serve: --request-timeout: '-inf' is not a number\n" },
        { "--request-timeout ' 5'", "moeflow serve: --request-timeout: ' 5' is not a number\n" },
    };
    const char *plain = write_conf("plain.conf", "# nothing but the flags\n");
    for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++) {
        st = check(plain, numbers[i].flags, out, sizeof(out));
        CHECK(st == 2 && !strcmp(out, numbers[i].want), "%s: exit %d: '%s', want '%s'", numbers[i].flags, st, out,
              numbers[i].want);
    }
    const char *big = write_conf("big.conf", "max-queued = 18446744073709551616\n");
    st = check(big, "", out, sizeof(out));
    CHECK(st == 2 && strstr(out, "big.conf:1: max-queued: 18446744073709551616 is outside [1, 1048576]"),
          "a file's value past 64 bits: exit %d: %s", st, out);
    /* an empty model directory is refused naming the line, as --model '' is, not taken for the default model */
    const char *no_model = write_conf("no-model.conf", "http-port = 8000\nmodel =\n");
    st = check(no_model, "", out, sizeof(out));
    CHECK(st == 2 && strstr(out, "no-model.conf:2: model is empty: name the model directory\n"), "model =: exit %d: %s",
          st, out);
    /* an empty value (a variable left unset, 'key =') is refused naming the option, and in the file its line, as a
     * bad value is, where the tier options, model-name, host and chat-template took it for unset or the default
     * (cors-origin's empty list is none, its default) */
    static const struct { const char *key, *why; } empty[] = {
        { "model", "model is empty: name the model directory" },
        { "model-name", "model-name is empty: give the name clients send (leave it out for the model directory's "
          "name)" },
        { "host", "host is empty: give the address to bind (127.0.0.1: this machine only; 0.0.0.0: every "
          "interface)" },
        { "chat-template", "chat-template is empty: give auto, markers or a Jinja template file" },
        { "predictor", "--predictor '' is empty (use none, gate[:D], path[:FILE], history, path+gate[:FILE] or auto)" },
        { "backend", "--backend '' unknown (use cpu or cuda)" },
        { "store", "--store is empty: name the file to read" },
        { "gpu-experts", "--gpu-experts '' must be an integer in [1, 16777216]" },
        { "gpu-cache-bytes", "--gpu-cache-bytes '' must be a byte count >= 1 (suffix K, M, G or T allowed)" },
        { "host-experts", "--host-experts '' must be an integer in [1, 16777216]" },
        { "host-cache-bytes", "--host-cache-bytes '' must be a byte count >= 1 (suffix K, M, G or T allowed)" },
        { "policy", "--policy '' unknown (use predicted, lru or lfu)" },
        { "queue-depth", "--queue-depth '' must be an integer in [1, 4096]" },
        { "no-io-uring", "no-io-uring: '' is not true or false" }, /* a flag on the command line: the file alone */
    };
    for (size_t i = 0; i < sizeof(empty) / sizeof(empty[0]); i++) {
        char flag[128], want[512], text[256];
        if (strcmp(empty[i].key, "no-io-uring")) {
            snprintf(flag, sizeof(flag), "--%s ''", empty[i].key);
            snprintf(want, sizeof(want), "moeflow serve: %s%s\n", strncmp(empty[i].why, "--", 2) ? "--" : "",
                     empty[i].why);
            st = check(write_conf("plain.conf", "# nothing but the flags\n"), flag, out, sizeof(out));
            CHECK(st == 2 && !strcmp(out, want), "%s: exit %d: '%s', want '%s'", flag, st, out, want);
        }
        /* in the file, bare and quoted */
        for (int q = 0; q < 2; q++) {
            snprintf(text, sizeof(text), "http-port = 8000\n%s = %s\n", empty[i].key, q ? "\"\"" : "");
            const char *conf = write_conf("empty.conf", text);
            /* the file's message names the key as written there, the flag's the flag */
            snprintf(want, sizeof(want), "empty.conf:2: %s\n", empty[i].why + (strncmp(empty[i].why, "--", 2) ? 0 : 2));
            st = check(conf, "", out, sizeof(out));
            CHECK(st == 2 && strstr(out, want), "'%s = %s' in the file: exit %d: '%s', want '%s'", empty[i].key,
                  q ? "\"\"" : "", st, out, want);
        }
    }
    /* a store or chat template named that is there but is a directory or a device is refused naming the option,
     * as serve refuses it at start, from a flag and from the file, where it passed; one not there still passes */
    static const struct { const char *flags, *want; } files[] = {
        { "--chat-template /", "moeflow serve: --chat-template /: is a directory (give a readable file holding a "
          "Jinja chat template)\n" },
        { "--chat-template /dev/null", "moeflow serve: --chat-template /dev/null: not a regular file (give a readable "
          "file holding a Jinja chat template)\n" },
        { "--gpu-experts 8 --store /", "moeflow serve: --store /: is a directory (give a readable file holding an "
          "expert store, as moeflow pack writes)\n" },
        { "--chat-template /nonexistent/t.jinja --gpu-experts 8 --store /nonexistent/e.moestore",
          "moeflow serve: configuration ok\n" },
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        st = check(write_conf("plain.conf", "# nothing but the flags\n"), files[i].flags, out, sizeof(out));
        CHECK(st == (strstr(files[i].want, " ok") ? 0 : 2) && !strcmp(out, files[i].want), "%s: exit %d: '%s', "
              "want '%s'", files[i].flags, st, out, files[i].want);
    }
    st = check(write_conf("dirs.conf", "chat-template = /\n"), "", out, sizeof(out));
    CHECK(st == 2 && strstr(out, "--chat-template /: is a directory"), "chat-template = / in the file: exit %d: %s",
          st, out);
    const char *no_cors = write_conf("no-cors.conf", "cors-origin =\n");
    st = check(no_cors, "--cors-origin ''", out, sizeof(out));
    CHECK(st == 0, "an empty cors-origin (none): exit %d: %s", st, out);
    /* an empty file name is named as such, not as the system's error for "" */
    st = check("", "", out, sizeof(out));
    CHECK(st == 2 && strstr(out, "--config '': name the config file"), "empty --config: exit %d: %s", st, out);

    char cmd[8192];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "rm %s", dir);
    return t_result("test_serve_check_config");
}
