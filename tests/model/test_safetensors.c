/* Safetensors writer/reader round trip, lookups, metadata, dtype helpers and
 * the f32 conversion of weight views. */
#include "../test_util.h"
#include "model/model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_dtypes(void)
{
    enum moe_dtype dt;
    for (int i = 0; i < MOE_DT_COUNT; i++) {
        CHECK(moe_dtype_parse(moe_dtype_name((enum moe_dtype)i), &dt) && dt == (enum moe_dtype)i,
              "dtype %d name round trip", i);
        CHECK(moe_dtype_size((enum moe_dtype)i) > 0, "dtype %d size", i);
    }
    CHECK(moe_dtype_size(MOE_DT_BF16) == 2 && moe_dtype_size(MOE_DT_F32) == 4 && moe_dtype_size(MOE_DT_I64) == 8,
          "dtype sizes");
    CHECK(!moe_dtype_parse("bf16", &dt) && !moe_dtype_parse("", &dt), "lower-case dtype accepted");
}

static void test_round_trip(const char *dir)
{
    char path[4200];
    float a[6] = { 1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e30f };
    uint16_t b[4], h[3];
    int64_t ids[3] = { 7, -1, 1LL << 40 };
    uint8_t empty = 0;
    struct moe_st_out o[5] = {
        { .name = "z.a", .dtype = MOE_DT_F32, .ndim = 2, .shape = { 2, 3 }, .data = a },
        { .name = "b", .dtype = MOE_DT_BF16, .ndim = 1, .shape = { 4 }, .data = b },
        { .name = "ids", .dtype = MOE_DT_I64, .ndim = 1, .shape = { 3 }, .data = ids },
        { .name = "empty", .dtype = MOE_DT_F32, .ndim = 2, .shape = { 0, 5 }, .data = &empty },
        { .name = "h", .dtype = MOE_DT_F16, .ndim = 3, .shape = { 1, 1, 3 }, .data = h },
    };
    const char *meta[] = { "format", "pt", "note", "round trip", NULL };
    struct moe_st_file *f;
    const struct moe_st_tensor *t;
    float out[6];
    struct moe_wview w;

    for (int i = 0; i < 4; i++) b[i] = moe_f32_to_bf16(a[i]);
    for (int i = 0; i < 3; i++) h[i] = moe_f32_to_f16(a[i]);
    snprintf(path, sizeof(path), "%s/rt.safetensors", dir);
    REQUIRE(moe_st_write(path, o, 5, meta) == MOE_OK, "write: %s", moe_last_error());
    f = moe_st_open(path);
    REQUIRE(f != NULL, "reopen: %s", moe_last_error());
    CHECK(moe_st_count(f) == 5, "count %zu", moe_st_count(f));
    CHECK(!strcmp(moe_st_path(f), path), "path");
    CHECK(moe_st_metadata(f, "note") && !strcmp(moe_st_metadata(f, "note"), "round trip"), "metadata");
    CHECK(moe_st_metadata(f, "absent") == NULL, "absent metadata");
    /* In file order (by offset): the writer keeps the given order. */
    for (size_t i = 0; i < 5; i++) {
        t = moe_st_at(f, i);
        CHECK(t && !strcmp(t->name, o[i].name), "order %zu: %s", i, t ? t->name : "(null)");
    }
    CHECK(moe_st_at(f, 5) == NULL, "at past end");
    t = moe_st_find(f, "z.a");
    REQUIRE(t != NULL, "find z.a");
    CHECK(t->dtype == MOE_DT_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->numel == 6 &&
          t->nbytes == 24, "z.a shape");
    CHECK((t->file_offset - 8) % 8 == 0, "header padded to 8 bytes (offset %llu)",
          (unsigned long long)t->file_offset);
    CHECK(!memcmp(t->data, a, sizeof(a)), "z.a data");
    t = moe_st_find(f, "ids");
    CHECK(t && !memcmp(t->data, ids, sizeof(ids)), "ids data");
    t = moe_st_find(f, "empty");
    CHECK(t && t->numel == 0 && t->nbytes == 0, "empty tensor");
    CHECK(moe_st_find(f, "nope") == NULL && moe_st_find(f, "") == NULL, "find absent");

    w = moe_wview_from_tensor(moe_st_find(f, "z.a"));
    CHECK(w.rows == 2 && w.cols == 3, "view shape");
    moe_wview_to_f32(&w, out);
    CHECK(!memcmp(out, a, sizeof(a)), "f32 view");
    w = moe_wview_from_tensor(moe_st_find(f, "b"));
    moe_wview_to_f32(&w, out);
    for (int i = 0; i < 4; i++) CHECK(out[i] == a[i], "bf16[%d] = %g", i, out[i]);
    w = moe_wview_from_tensor(moe_st_find(f, "h"));
    CHECK(w.rows == 1 && w.cols == 3, "3-D view folds leading dims");
    moe_wview_to_f32(&w, out);
    for (int i = 0; i < 3; i++) CHECK(out[i] == a[i], "f16[%d] = %g", i, out[i]);
    w = moe_wview_from_tensor(moe_st_find(f, "ids"));
    moe_wview_to_f32(&w, out);
    CHECK(out[0] == 7.0f && out[1] == -1.0f, "i64 to f32");
    moe_st_close(f);

    /* The same bytes parse in memory. */
    {
        char *img;
        size_t len;
        REQUIRE(moe_read_file(path, &img, &len, 1 << 20) == MOE_OK, "%s", moe_last_error());
        f = moe_st_open_memory(img, len, "rt image");
        CHECK(f && moe_st_count(f) == 5 && moe_st_find(f, "h"), "memory image: %s", moe_last_error());
        moe_st_close(f);
        free(img);
    }
    unlink(path);

    /* No tensors at all: "{}" padded. */
    snprintf(path, sizeof(path), "%s/empty.safetensors", dir);
    REQUIRE(moe_st_write(path, NULL, 0, NULL) == MOE_OK, "write empty: %s", moe_last_error());
    f = moe_st_open(path);
    CHECK(f && moe_st_count(f) == 0, "empty file: %s", moe_last_error());
    moe_st_close(f);
    unlink(path);

    /* Writer refuses duplicate and reserved names and leaves no file behind. */
    {
        struct moe_st_out d[2] = { o[0], o[0] };
        snprintf(path, sizeof(path), "%s/dup.safetensors", dir);
        CHECK(moe_st_write(path, d, 2, NULL) == MOE_EINVAL && strstr(moe_last_error(), "z.a"), "dup: %s",
              moe_last_error());
        CHECK(access(path, F_OK) != 0, "file left after refused write");
        d[0].name = "__metadata__";
        CHECK(moe_st_write(path, d, 1, NULL) == MOE_EINVAL, "reserved name accepted");
        d[0] = o[0];
        d[0].shape[0] = -2;
        CHECK(moe_st_write(path, d, 1, NULL) == MOE_EINVAL, "negative shape accepted");
        /* metadata is JSON strings: a key or value that is not UTF-8 is refused naming the key (Latin-1 e) */
        const char *bad_val[] = { "format", "pt", "source", "caf\xe9.txt", NULL };
        CHECK(moe_st_write(path, o, 1, bad_val) == MOE_EINVAL && strstr(moe_last_error(), "\"source\"") &&
              strstr(moe_last_error(), "UTF-8"), "a value not UTF-8: %s", moe_last_error());
        CHECK(access(path, F_OK) != 0, "file left after a refused value");
        const char *bad_key[] = { "caf\xe9", "x", NULL };
        CHECK(moe_st_write(path, o, 1, bad_key) == MOE_EINVAL && strstr(moe_last_error(), "UTF-8"),
              "a key not UTF-8: %s", moe_last_error());
        CHECK(access(path, F_OK) != 0, "file left after a refused key");
    }
    snprintf(path, sizeof(path), "%s/no-such-dir/x.safetensors", dir);
    CHECK(moe_st_write(path, o, 1, NULL) == MOE_EIO && strstr(moe_last_error(), "no-such-dir"),
          "unwritable path: %s", moe_last_error());
    CHECK(moe_st_open(path) == NULL && strstr(moe_last_error(), "no-such-dir"), "open missing: %s",
          moe_last_error());
}

/* Header edge cases that are legal: trailing spaces, unaligned data. */
static void test_legal_headers(void)
{
    static const char hdr[] = "{\"x\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}}   ";
    uint8_t img[8 + sizeof(hdr) - 1 + 3];
    struct moe_st_file *f;
    size_t hl = sizeof(hdr) - 1;
    memset(img, 0, 8);
    img[0] = (uint8_t)hl;
    memcpy(img + 8, hdr, hl);
    memcpy(img + 8 + hl, "abc", 3);
    f = moe_st_open_memory(img, sizeof(img), "legal");
    CHECK(f && moe_st_find(f, "x") && !memcmp(moe_st_find(f, "x")->data, "abc", 3), "legal header: %s",
          moe_last_error());
    moe_st_close(f);
    /* Unknown entry key and non-string metadata are refused. */
    {
        static const char h2[] = "{\"__metadata__\":{\"a\":1}}";
        uint8_t im2[8 + sizeof(h2) - 1] = { sizeof(h2) - 1 };
        memcpy(im2 + 8, h2, sizeof(h2) - 1);
        f = moe_st_open_memory(im2, sizeof(im2), "meta");
        CHECK(!f && strstr(moe_last_error(), "__metadata__"), "non-string metadata: %s", moe_last_error());
        moe_st_close(f);
    }
    /* an unknown dtype: the message lists every dtype the reader knows */
    {
        static const char h3[] = "{\"x\":{\"dtype\":\"F8_E8M0\",\"shape\":[1],\"data_offsets\":[0,1]}}";
        uint8_t im3[8 + sizeof(h3) - 1 + 1] = { sizeof(h3) - 1 };
        memcpy(im3 + 8, h3, sizeof(h3) - 1);
        f = moe_st_open_memory(im3, sizeof(im3), "dtype");
        CHECK(!f && strstr(moe_last_error(), "\"F8_E8M0\""), "unknown dtype: %s", moe_last_error());
        for (int i = 0; i < MOE_DT_COUNT; i++) {
            char word[24];
            snprintf(word, sizeof(word), " %s", moe_dtype_name((enum moe_dtype)i));
            CHECK(strstr(moe_last_error(), word), "unknown dtype: %s is not named: %s", word + 1, moe_last_error());
        }
        moe_st_close(f);
    }
    CHECK(moe_st_open_memory(img, 7, "short") == NULL && strstr(moe_last_error(), "short"), "7-byte image");
    CHECK(moe_st_open_memory(NULL, 0, "null") == NULL, "empty image accepted");
}

/* A file truncated while it is open (rewritten in place, cut short): reading a tensor past its new end
 * gives zeros and moe_st_check names the file, where the access raised SIGBUS and ended the process; a
 * file opened after it, and a fault in a mapping that is not a checkpoint's, are as before. */
static void test_truncated_while_mapped(const char *dir)
{
    char path[4200], other[4200];
    static uint8_t big[3 * 65536];
    memset(big, 0x5a, sizeof(big));
    struct moe_st_out o[2] = {
        { .name = "a", .dtype = MOE_DT_U8, .ndim = 1, .shape = { 64 }, .data = big },
        { .name = "b", .dtype = MOE_DT_U8, .ndim = 1, .shape = { sizeof(big) }, .data = big },
    };
    snprintf(path, sizeof(path), "%s/cut.safetensors", dir);
    snprintf(other, sizeof(other), "%s/whole.safetensors", dir);
    REQUIRE(moe_st_write(path, o, 2, NULL) == MOE_OK && moe_st_write(other, o, 2, NULL) == MOE_OK, "write: %s",
            moe_last_error());
    struct moe_st_file *f = moe_st_open(path);
    REQUIRE(f != NULL, "open: %s", moe_last_error());
    const struct moe_st_tensor *b = moe_st_find(f, "b");
    REQUIRE(b != NULL, "find b");
    CHECK(moe_st_check(f) == MOE_OK, "a whole file is damaged: %s", moe_last_error());
    CHECK(((const uint8_t *)b->data)[0] == 0x5a, "first byte");
    REQUIRE(truncate(path, (off_t)b->file_offset + 100) == 0, "truncate: %s", strerror(errno));
    const volatile uint8_t *d = b->data;
    uint8_t last = d[sizeof(big) - 1], mid = d[65536 + 7];
    CHECK(last == 0 && mid == 0, "bytes past the end read %#x and %#x, not zeros", last, mid);
    CHECK(d[0] == 0x5a && d[99] == 0x5a, "the bytes still in the file changed: %#x %#x", d[0], d[99]);
    CHECK(moe_st_check(f) == MOE_EIO && strstr(moe_last_error(), path) && strstr(moe_last_error(), "shrank"),
          "check after the fault: %s", moe_last_error());
    struct moe_st_file *g = moe_st_open(other);
    CHECK(g && moe_st_check(g) == MOE_OK, "another file after the fault: %s", moe_last_error());
    moe_st_close(g);
    moe_st_close(f);
    /* the file reopened as it is now: too short for its header's tensors */
    CHECK(moe_st_open(path) == NULL && strstr(moe_last_error(), "truncated"), "reopen: %s", moe_last_error());

    /* a mapping of another file, cut short: the fault is the default action's, as without the guard */
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(other, O_RDWR);
        volatile uint8_t *p = fd < 0 ? MAP_FAILED : mmap(NULL, sizeof(big), PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED || ftruncate(fd, 0) != 0) _exit(3);
        _exit(p[sizeof(big) - 1] == 0 ? 4 : 5);
    }
    int ws = 0;
    waitpid(pid, &ws, 0);
    /* (a sanitizer's handler, there before, reports it and exits instead) */
    CHECK((WIFSIGNALED(ws) && WTERMSIG(ws) == SIGBUS) || (WIFEXITED(ws) && WEXITSTATUS(ws) != 0 &&
                                                         WEXITSTATUS(ws) != 3 && WEXITSTATUS(ws) != 4),
          "a foreign mapping's fault was not left to the default action: status %#x", ws);
    unlink(path);
    unlink(other);
}

/* A FIFO is refused at once, where opening it waited for a writer for ever (the alarm fails the test then). */
static void test_fifo(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/fifo.safetensors", dir);
    REQUIRE(mkfifo(path, 0600) == 0, "mkfifo %s: %s", path, strerror(errno));
    alarm(20);
    CHECK(moe_st_open(path) == NULL && strstr(moe_last_error(), "not a regular file"), "a FIFO: %s",
          moe_last_error());
    alarm(0);
    unlink(path);
}

int main(void)
{
    char tmpl[] = "/tmp/moe-st-XXXXXX";
    const char *dir = mkdtemp(tmpl);
    REQUIRE(dir != NULL, "mkdtemp: %s", strerror(errno));
    test_dtypes();
    test_round_trip(dir);
    test_legal_headers();
    test_truncated_while_mapped(dir);
    test_fifo(dir);
    rmdir(dir);
    return t_result("test_safetensors");
}
