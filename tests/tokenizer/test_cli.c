/* `moeflow tokenize` through the built binary (argv[1]): encode --text and
 * --file give the library's ids as a JSON array, --decode (--ids and --file)
 * gives back the exact bytes, and bad usage / bad ids / bad UTF-8 exit with
 * 2 / 1 / 1 and a message saying what is wrong. */
#include "model/tokenizer.h"
#include "tests/test_util.h"

#include <fcntl.h>
#include <jansson.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[256];

struct run {
    int rc;                 /* exit status, -1 if it did not exit normally */
    char *out, *err;        /* captured stdout / stderr (NUL-terminated) */
    size_t out_len;
};

static struct run run_cmd(char *const argv[])
{
    struct run r = { .rc = -1 };
    char op[512], ep[512];
    snprintf(op, sizeof(op), "%s/stdout", tmpdir);
    snprintf(ep, sizeof(ep), "%s/stderr", tmpdir);
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork failed");
    if (pid == 0) {
        int fo = open(op, O_WRONLY | O_CREAT | O_TRUNC, 0600), fe = open(ep, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fo < 0 || fe < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0)
            _exit(127);
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    REQUIRE(waitpid(pid, &status, 0) == pid, "waitpid failed");
    if (WIFEXITED(status))
        r.rc = WEXITSTATUS(status);
    size_t elen;
    REQUIRE(moe_read_file(op, &r.out, &r.out_len, 64u << 20) == MOE_OK, "%s", moe_last_error());
    REQUIRE(moe_read_file(ep, &r.err, &elen, 64u << 20) == MOE_OK, "%s", moe_last_error());
    return r;
}

static void run_free(struct run *r)
{
    free(r->out);
    free(r->err);
}

static void write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    REQUIRE(f && fwrite(data, 1, len, f) == len && fclose(f) == 0, "cannot write %s", path);
}

/* stdout must be exactly the JSON array of want[0..n) */
static void check_ids_output(const struct run *r, const int *want, size_t n, const char *label)
{
    CHECK(r->rc == 0, "%s: exit %d, stderr: %s", label, r->rc, r->err);
    json_error_t jerr;
    json_t *a = json_loadb(r->out, r->out_len, 0, &jerr);
    CHECK(a && json_is_array(a) && json_array_size(a) == n, "%s: stdout is not a JSON array of %zu ids: %.200s",
          label, n, r->out);
    for (size_t i = 0; a && json_is_array(a) && i < n && i < json_array_size(a); i++)
        CHECK(json_integer_value(json_array_get(a, i)) == want[i], "%s: id %zu is %lld, want %d", label, i,
              (long long)json_integer_value(json_array_get(a, i)), want[i]);
    CHECK(r->out_len > 0 && r->out[r->out_len - 1] == '\n', "%s: output not newline-terminated", label);
    json_decref(a);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_tokenizer_cli PATH/TO/moeflow\n");
        return T_FAIL;
    }
    char *bin = argv[1];
    if (access(bin, X_OK)) {
        fprintf(stderr, "%s is not executable: skipping\n", bin);
        return T_SKIP;
    }
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/moe-tok-cli-XXXXXX");
    REQUIRE(mkdtemp(tmpdir), "mkdtemp failed");

    char model[4096];
    t_path(model, sizeof(model), "models/pycode-moe-18m");
    struct moe_tokenizer *t = moe_tokenizer_load_dir(model);
    REQUIRE(t, "%s", moe_last_error());

    static char text[] = "def area(r):\n    # πr² — it's \"round\"\n\treturn 3.14159 * r ** 2<|endoftext|>\n";
    size_t tlen = strlen(text);
    int *ids;
    size_t n;
    REQUIRE(moe_tokenizer_encode(t, text, tlen, &ids, &n) == MOE_OK, "%s", moe_last_error());

    /* encode --text */
    char *a1[] = { bin, "tokenize", "--model", model, "--text", text, NULL };
    struct run r = run_cmd(a1);
    check_ids_output(&r, ids, n, "--text");
    char ids_json[65536];
    REQUIRE(r.out_len < sizeof(ids_json), "ids output too long");
    memcpy(ids_json, r.out, r.out_len + 1);
    run_free(&r);

    /* encode --file, default model */
    char tf[512], idf[512], badf[512];
    snprintf(tf, sizeof(tf), "%s/text.txt", tmpdir);
    snprintf(idf, sizeof(idf), "%s/ids.json", tmpdir);
    snprintf(badf, sizeof(badf), "%s/bad.txt", tmpdir);
    write_file(tf, text, tlen);
    char *a2[] = { bin, "tokenize", "--file", tf, NULL };
    r = run_cmd(a2);
    check_ids_output(&r, ids, n, "--file");
    run_free(&r);

    /* decode --ids and --file: exact bytes back */
    char *a3[] = { bin, "tokenize", "--model", model, "--decode", "--ids", ids_json, NULL };
    r = run_cmd(a3);
    CHECK(r.rc == 0 && r.out_len == tlen && !memcmp(r.out, text, tlen), "--decode --ids: exit %d, got \"%s\"",
          r.rc, r.out);
    run_free(&r);
    write_file(idf, ids_json, strlen(ids_json));
    char *a4[] = { bin, "tokenize", "--decode", "--file", idf, NULL };
    r = run_cmd(a4);
    CHECK(r.rc == 0 && r.out_len == tlen && !memcmp(r.out, text, tlen), "--decode --file: exit %d", r.rc);
    run_free(&r);

    /* errors: a bad value of an option exits 2 */
    /* an id outside the vocabulary, past an int or not, names the option, the element and the range, where one in
     * an int was said to be out of range without the option and one past it without the range */
    static const char *const bad_ids[] = { "8192", "-1", "2147483648" };
    for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++) {
        char arr[64], want[256];
        snprintf(arr, sizeof(arr), "[5, %s]", bad_ids[i]);
        snprintf(want, sizeof(want), "moeflow tokenize: --ids: element 1, %s, is outside the vocabulary "
                 "[0, 8192)\n", bad_ids[i]);
        char *e1[] = { bin, "tokenize", "--decode", "--ids", arr, NULL };
        r = run_cmd(e1);
        CHECK(r.rc == 2 && r.err && !strcmp(r.err, want), "--ids %s: exit %d, '%s'", arr, r.rc, r.err);
        run_free(&r);
    }
    char *e2[] = { bin, "tokenize", "--text", "x", "--file", tf, NULL };
    r = run_cmd(e2);
    CHECK(r.rc == 2 && strstr(r.err, "exactly one of --text and --file"), "two inputs: exit %d, %s", r.rc, r.err);
    run_free(&r);
    char *e3[] = { bin, "tokenize", "--decode", "--ids", "{\"a\":1}", NULL };
    r = run_cmd(e3);
    CHECK(r.rc == 2 && strstr(r.err, "JSON array"), "ids object: exit %d, %s", r.rc, r.err);
    run_free(&r);
    write_file(badf, "ok\xc3(", 4);
    char *e4[] = { bin, "tokenize", "--file", badf, NULL };
    r = run_cmd(e4);
    CHECK(r.rc == 1 && strstr(r.err, "not valid UTF-8") && strstr(r.err, "byte offset 2"), "bad UTF-8: exit %d, %s",
          r.rc, r.err);
    run_free(&r);
    char *e4t[] = { bin, "tokenize", "--text", "ok\xc3(", NULL };
    r = run_cmd(e4t);
    CHECK(r.rc == 2 && strstr(r.err, "--text: text is not valid UTF-8"), "bad UTF-8 in --text: exit %d, %s", r.rc,
          r.err);
    run_free(&r);
    char *e5[] = { bin, "tokenize", "--model", "/nonexistent-model", "--text", "x", NULL };
    r = run_cmd(e5);
    CHECK(r.rc == 1 && strstr(r.err, "/nonexistent-model/tokenizer.json"), "bad model: exit %d, %s", r.rc, r.err);
    run_free(&r);
    char *h[] = { bin, "tokenize", "--help", NULL };
    r = run_cmd(h);
    CHECK(r.rc == 0 && strstr(r.out, "--decode"), "--help: exit %d", r.rc);
    run_free(&r);

    char p[600];
    const char *names[] = { "stdout", "stderr", "text.txt", "ids.json", "bad.txt" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(names); i++) {
        snprintf(p, sizeof(p), "%s/%s", tmpdir, names[i]);
        unlink(p);
    }
    rmdir(tmpdir);
    free(ids);
    moe_tokenizer_free(t);
    return t_result("test_tokenizer_cli");
}
