/* server/cli_util.c:
 * - moe_cli_json_string escapes quotes, backslashes and control bytes, and writes what is not UTF-8 as U+FFFD,
 *   also in a string longer than the pieces it is read in;
 * - moe_cli_write_token writes every byte of a token, also one longer than
 *   any fixed streaming buffer (an added token of 300 bytes), refuses a
 *   bad id without writing, and writes a run of byte-fallback tokens that is
 *   not UTF-8 as one U+FFFD per token;
 * - moe_cli_open_model opens the bundled model with its tokenizer, and on a
 *   missing directory or tokenizer.json, or a tokenizer larger than the
 *   model's vocabulary, says what to fix and leaves nothing open;
 * - moe_cli_check_out refuses an output path no file can be written to;
 * - an output through a symbolic link (moe_out_open) becomes the file the link named when it was opened, also
 *   when the link is pointed elsewhere before it is closed. */
#include "model/model.h"
#include "model/tokenizer.h"
#include "model/utf8.h"
#include "server/cli.h"
#include "tests/test_util.h"

#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>

#define LONG_TOKEN 300

/* A tokenizer.json whose id 3 is an added token of LONG_TOKEN 'x' bytes. */
static int write_tokenizer(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":3,\"content\":\"");
    for (int i = 0; i < LONG_TOKEN; i++) fputc('x', f);
    fprintf(f, "\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,"
               "\"special\":true}],\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\","
               "\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true},\"post_processor\":null,"
               "\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,"
               "\"use_regex\":true},\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,"
               "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}}");
    return fclose(f);
}

/* stderr caught into a malloc'd string between the two calls */
static FILE *saved_stderr;
static size_t caught_len;

static void catch_stderr(char **err)
{
    FILE *f = open_memstream(err, &caught_len);
    REQUIRE(f, "open_memstream");
    saved_stderr = stderr;
    stderr = f;
}

static void release_stderr(void)
{
    fclose(stderr);
    stderr = saved_stderr;
}

/* moe_cli_open_model with what it prints to stderr caught in *err (malloc'd). */
static bool open_quiet(const char *dir, struct moe_model **m, struct moe_tokenizer **t, char **err)
{
    catch_stderr(err);
    bool ok = moe_cli_open_model("test", dir, m, t);
    release_stderr();
    return ok;
}

static void test_write_token(void)
{
    char dir[] = "/tmp/moe_cli_util_XXXXXX", path[64];
    REQUIRE(mkdtemp(dir), "mkdtemp");
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    REQUIRE(write_tokenizer(path) == 0, "write %s", path);
    struct moe_tokenizer *t = moe_tokenizer_load(path);
    REQUIRE(t, "load %s: %s", path, moe_last_error());
    CHECK(moe_tokenizer_token_bytes(t, 3, NULL, 0) == LONG_TOKEN, "added token length %d",
          moe_tokenizer_token_bytes(t, 3, NULL, 0));

    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    REQUIRE(f, "open_memstream");
    struct moe_tok_stream x = { 0 };
    CHECK(moe_cli_write_token(f, t, 2, &x), "token 'ab'");
    CHECK(moe_cli_write_token(f, t, 3, &x), "long token");
    CHECK(!moe_cli_write_token(f, t, 99, &x) && !moe_cli_write_token(f, t, -1, &x), "bad ids accepted");
    CHECK(moe_cli_write_end(f, &x) && x.n_held == 0, "end");
    fclose(f);
    CHECK(len == 2 + LONG_TOKEN, "wrote %zu bytes, want %d", len, 2 + LONG_TOKEN);
    bool all_x = len == 2 + LONG_TOKEN && !memcmp(out, "ab", 2);
    for (size_t i = 2; all_x && i < len; i++) all_x = out[i] == 'x';
    CHECK(all_x, "bytes written are not 'ab' and %d 'x'", LONG_TOKEN);
    free(out);
    moe_tokenizer_free(t);

    /* a SentencePiece tokenizer's byte-fallback run that is not UTF-8: one U+FFFD for each of its tokens
     * (as the Hugging Face library's ByteFallback decoder gives it), not one for the cut character */
    char spm[4096];
    struct moe_tokenizer *st = moe_tokenizer_load(t_path(spm, sizeof(spm), "tests/fixtures/tokenizer/spm-tiny.json"));
    REQUIRE(st, "load %s: %s", spm, moe_last_error());
    f = open_memstream(&out, &len);
    REQUIRE(f, "open_memstream");
    /* "\xe2\x96\x81" "a" is the token "▁a" (the literal cut so that the escape ends at \x81) */
    static const char *const run[] = { "<0x41>", "<0xE2>", "<0x82>", ("\xe2\x96\x81" "a"), "<0xE2>", "<0x82>" };
    for (size_t i = 0; i < sizeof(run) / sizeof(run[0]); i++)
        CHECK(moe_cli_write_token(f, st, moe_tokenizer_token_id(st, run[i]), &x), "token %s", run[i]);
    CHECK(moe_cli_write_end(f, &x) && x.n_held == 0, "end of the run");
    fclose(f);
    static const char want[] = "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd a\xef\xbf\xbd\xef\xbf\xbd";
    CHECK(len == strlen(want) && !memcmp(out, want, len), "byte tokens written as \"%.*s\"", (int)len, out);
    free(out);
    moe_tokenizer_free(st);

    /* text that is not UTF-8: one U+FFFD for each maximal subpart (as Python's "replace" and Rust's
     * from_utf8_lossy read it); with more to come, a character cut by the end waits */
    static const struct {
        const char *in, *want;
        bool partial;
        size_t used;
    } lossy[] = {
        { "a\xf0\x9f\x98", "a\xef\xbf\xbd", false, 4 },
        { "a\xf0\x9f\x98", "a", true, 1 },
        { "\xe2\x84X", "\xef\xbf\xbdX", true, 3 },
        { "\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", false, 3 },
        { "\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd", true, 2 },
        { "\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", false, 4 },
        { "\xf0\x9f\x98\x80!", "\xf0\x9f\x98\x80!", true, 5 },
    };
    for (size_t i = 0; i < sizeof(lossy) / sizeof(lossy[0]); i++) {
        char o[64];
        size_t used = 99, w = moe_utf8_lossy(lossy[i].in, strlen(lossy[i].in), o, lossy[i].partial, &used);
        CHECK(w == strlen(lossy[i].want) && !memcmp(o, lossy[i].want, w) && used == lossy[i].used,
              "lossy case %zu: %zu bytes, %zu read", i, w, used);
    }

    /* a model directory without a model: the message names what to set */
    struct moe_model *m = (struct moe_model *)1;
    struct moe_tokenizer *tk = (struct moe_tokenizer *)1;
    char *err = NULL;
    bool ok = open_quiet(dir, &m, &tk, &err);
    CHECK(!ok && !m, "opened a model from %s", dir);
    CHECK(err && strstr(err, "moeflow test: ") && strstr(err, "--model DIR"), "message: %s", err ? err : "");
    free(err);
    unlink(path);
    rmdir(dir);
}

static void test_open_model(void)
{
    char dir[512];
    t_path(dir, sizeof(dir), "models/pycode-moe-18m");
    struct moe_model *m = NULL;
    struct moe_tokenizer *t = NULL;
    REQUIRE(moe_cli_open_model("test", dir, &m, &t), "open %s", dir);
    CHECK(m && t && moe_tokenizer_vocab_size(t) > 0 && moe_tokenizer_vocab_size(t) <= m->cfg.vocab,
          "model and tokenizer");
    moe_tokenizer_free(t);
    moe_model_close(m);
    m = NULL;
    REQUIRE(moe_cli_open_model("test", dir, &m, NULL) && m, "open %s without its tokenizer", dir);
    moe_model_close(m);

    /* a model directory without tokenizer.json: fails with nothing left open */
    t_path(dir, sizeof(dir), "tests/fixtures/hf-tiny/mixtral");
    m = NULL;
    t = NULL;
    char *err = NULL;
    bool ok = open_quiet(dir, &m, &t, &err);
    CHECK(!ok && !m && !t, "%s has no tokenizer.json: opened, or left open after the failure", dir);
    CHECK(err && strstr(err, "tokenizer.json"), "message: %s", err ? err : "");
    free(err);

    /* a tokenizer with more tokens than the model's vocabulary (the bundled
     * model's beside a tiny model's weights): refused at once, naming both */
    char tmp[] = "/tmp/moe_cli_vocab_XXXXXX", src[512], dst[600];
    REQUIRE(mkdtemp(tmp), "mkdtemp");
    static const char *const files[][2] = { { "tests/fixtures/hf-tiny/mixtral", "config.json" },
                                            { "tests/fixtures/hf-tiny/mixtral", "model.safetensors" },
                                            { "models/pycode-moe-18m", "tokenizer.json" } };
    for (size_t i = 0; i < MOE_ARRAY_LEN(files); i++) {
        t_path(src, sizeof(src), files[i][0]);
        snprintf(src + strlen(src), sizeof(src) - strlen(src), "/%s", files[i][1]);
        snprintf(dst, sizeof(dst), "%s/%s", tmp, files[i][1]);
        char *abs = realpath(src, NULL);
        REQUIRE(abs && symlink(abs, dst) == 0, "symlink %s -> %s", dst, src);
        free(abs);
    }
    err = NULL;
    ok = open_quiet(tmp, &m, &t, &err);
    CHECK(!ok && !m && !t, "a tokenizer larger than the vocabulary was accepted");
    CHECK(err && strstr(err, "8192 tokens") && strstr(err, "vocabulary of 320") && !strstr(err, "--model"),
          "message: %s", err ? err : "");
    free(err);

    /* a broken config.json is the file's fault, not --model's */
    snprintf(dst, sizeof(dst), "%s/config.json", tmp);
    unlink(dst);
    FILE *f = fopen(dst, "w");
    REQUIRE(f, "write %s", dst);
    fputs("{\"model_type\": \"mixtral\"}", f);
    fclose(f);
    err = NULL;
    ok = open_quiet(tmp, &m, &t, &err);
    CHECK(!ok && !m && err && !strstr(err, "(set --model DIR)"), "message: %s", err ? err : "");
    free(err);
    err = NULL;
    ok = open_quiet("/nonexistent/model", &m, &t, &err);
    CHECK(!ok && !m && err && strstr(err, "(set --model DIR)"), "message: %s", err ? err : "");
    free(err);
    static const char *const names[] = { "config.json", "model.safetensors", "tokenizer.json" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(names); i++) {
        snprintf(dst, sizeof(dst), "%s/%s", tmp, names[i]);
        unlink(dst);
    }
    rmdir(tmp);
}

static void test_json_string(void)
{
    char *js = NULL;
    size_t jlen = 0;
    FILE *jf = open_memstream(&js, &jlen);
    REQUIRE(jf, "open_memstream");
    moe_cli_json_string(jf, "path:a\"b\\c\n\x01");
    fclose(jf);
    CHECK(!strcmp(js, "\"path:a\\\"b\\\\c\\u000a\\u0001\""), "json string %s", js);
    free(js);
    /* UTF-8 as it is; a byte no sequence begins with, a sequence cut short: U+FFFD each */
    jf = open_memstream(&js, &jlen);
    REQUIRE(jf, "open_memstream");
    moe_cli_json_string(jf, "p\xc3\xa9\xff\xe2\x82.st\xe2\x82");
    fclose(jf);
    CHECK(!strcmp(js, "\"p\xc3\xa9\xef\xbf\xbd\xef\xbf\xbd.st\xef\xbf\xbd\""), "json string of bytes not UTF-8: %s", js);
    free(js);
    /* a long string, read in pieces: a character across a piece's end stays whole, a sequence cut there and
     * not finished after it is one U+FFFD, and escapes far in are made */
    for (int pad = 250; pad < 262; pad++) {
        char in[1200], want[1400];
        int k = snprintf(in, sizeof(in), "%*s\xc3\xa9\xe2\x82x\"", pad, "");
        for (int rep = 0; rep < 3; rep++) k += snprintf(in + k, sizeof(in) - (size_t)k, "%*s\xf0\x9f\x98\x80\n", pad, "");
        k = snprintf(want, sizeof(want), "\"%*s\xc3\xa9\xef\xbf\xbdx\\\"", pad, "");
        for (int rep = 0; rep < 3; rep++)
            k += snprintf(want + k, sizeof(want) - (size_t)k, "%*s\xf0\x9f\x98\x80\\u000a", pad, "");
        snprintf(want + k, sizeof(want) - (size_t)k, "\"");
        jf = open_memstream(&js, &jlen);
        REQUIRE(jf, "open_memstream");
        moe_cli_json_string(jf, in);
        fclose(jf);
        CHECK(!strcmp(js, want), "json string of a %zu-byte text (pad %d): %.80s...", strlen(in), pad, js + pad);
        free(js);
    }
}

/* moe_cli_check_out(out) with its message caught in *err (malloc'd) */
static bool check_out_quiet(const char *out, bool in_place, char **err)
{
    catch_stderr(err);
    bool ok = moe_cli_check_out("test", "--out", out, in_place);
    release_stderr();
    return ok;
}

/* An output path is checked before any work: empty, a directory, a place
 * where no file can be created, or a device the output would be renamed over
 * is refused with the reason; a good one is accepted and nothing is left
 * behind. */
static void test_check_out(void)
{
    char dir[] = "/tmp/moe_cli_out_XXXXXX", out[64];
    REQUIRE(mkdtemp(dir), "mkdtemp");
    snprintf(out, sizeof(out), "%s/x.st", dir);
    char *err = NULL;
    CHECK(check_out_quiet(out, false, &err) && !*err, "good path refused: %s", err);
    free(err);
    /* a name with no room for the work file's suffix: a short name beside it is used */
    char longname[400];
    snprintf(longname, sizeof(longname), "%s/%0250d", dir, 0);
    err = NULL;
    CHECK(check_out_quiet(longname, false, &err) && !*err, "a 250-byte file name refused: %s", err);
    free(err);
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d) closedir(d);
    CHECK(n == 0, "the checks left %d file(s) in %s", n, dir);
    static const char *const bad[][2] = { { "", "is empty" }, { "/tmp", "is a directory" },
                                          { "/nonexistent-dir/x.st", "No such file or directory" } };
    for (size_t i = 0; i < MOE_ARRAY_LEN(bad); i++) {
        err = NULL;
        CHECK(!check_out_quiet(bad[i][0], false, &err) && strstr(err, bad[i][1]), "'%s': %s", bad[i][0], err);
        free(err);
    }
    err = NULL;
    CHECK(check_out_quiet("/dev/null", true, &err), "/dev/null (written in place) refused: %s", err);
    free(err);
    err = NULL; /* a device the output would be renamed over */
    CHECK(!check_out_quiet("/dev/null", false, &err) && strstr(err, "not a regular file"), "/dev/null: %s", err);
    free(err);
    rmdir(dir);
}

/* an operand getopt left is refused with the command's name, the operand and the hint */
static void test_no_operands(void)
{
    char a0[] = "moeflow", a1[] = "--json", a2[] = "stray";
    char *argv[] = { a0, a1, a2, NULL };
    char *err = NULL;
    optind = 3;
    CHECK(moe_cli_no_operands("test", 3, argv, NULL), "no operand left, refused");
    optind = 2;
    catch_stderr(&err);
    bool ok = moe_cli_no_operands("test", 3, argv, NULL);
    release_stderr();
    CHECK(!ok && err && !strcmp(err, "moeflow test: unexpected argument 'stray' (see --help)\n"), "message: %s",
          err ? err : "");
    free(err);
    err = NULL;
    catch_stderr(&err);
    ok = moe_cli_no_operands("test", 3, argv, "the prompt goes in --prompt");
    release_stderr();
    CHECK(!ok && err && strstr(err, "'stray' (the prompt goes in --prompt)"), "message: %s", err ? err : "");
    free(err);
}

/* An output opened through a link L -> A, with L pointed at B before it is put into place, becomes A, beside
 * which its work file was made: the link is read once, not again at the rename. */
static void test_out_link_read_once(void)
{
    char dir[] = "/tmp/moe_cli_link_XXXXXX", a[64], b[64], l[64], got[16] = "";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    snprintf(a, sizeof(a), "%s/a", dir);
    snprintf(b, sizeof(b), "%s/b", dir);
    snprintf(l, sizeof(l), "%s/l", dir);
    REQUIRE(symlink("a", l) == 0, "symlink %s", l);
    struct moe_out o;
    REQUIRE(moe_out_open(&o, "--out", l) == MOE_OK, "moe_out_open %s: %s", l, moe_last_error());
    fputs("NEW", o.f);
    REQUIRE(unlink(l) == 0 && symlink("b", l) == 0, "repoint %s", l);
    CHECK(moe_out_close(&o, "--out") == MOE_OK, "moe_out_close: %s", moe_last_error());
    FILE *f = fopen(a, "r");
    CHECK(f && fgets(got, sizeof(got), f) && !strcmp(got, "NEW"), "%s holds '%s', not the output", a, got);
    if (f) fclose(f);
    CHECK(access(b, F_OK) != 0, "the output went to %s, where the link pointed only at the rename", b);
    unlink(a);
    unlink(b);
    unlink(l);
    CHECK(rmdir(dir) == 0, "%s: a work file left behind", dir);
}

int main(void)
{
    test_out_link_read_once();
    test_json_string();
    test_no_operands();
    test_write_token();
    test_open_model();
    test_check_out();
    return t_result("test_cli_util");
}
