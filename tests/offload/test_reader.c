/* Store reader: batches larger than the queue depth, continued short reads,
 * forced and automatic fallback to buffered pread (tmpfs may refuse
 * O_DIRECT), a failing read that fails only its own request and counts none
 * of the bytes it got before it failed, a batch without memory for its
 * bookkeeping that fails each of its reads, a request of more than 4 GiB,
 * and every record's checksum through each path. */
#include "../../offload/reader.h"
#include "offload_test_common.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

static void check_reads(const char *store_path, const struct moe_reader_params *rp, const char *what,
                        bool expect_fallback)
{
    struct moe_store *s = moe_store_open(store_path, NULL);
    REQUIRE(s, "%s", moe_last_error());
    const struct moe_store_info *in = moe_store_get_info(s);
    struct moe_reader *r = moe_reader_open(store_path, rp);
    REQUIRE(r, "%s: %s", what, moe_last_error());
    int n = (int)in->n_records + 1;
    struct moe_read *q = calloc((size_t)n, sizeof(*q));
    void **bufs = calloc((size_t)n, sizeof(void *));
    for (int i = 0; i < n; i++) REQUIRE(posix_memalign(&bufs[i], 4096, in->record_stride) == 0, "alloc");
    moe_reader_register(r, bufs, in->record_stride, n);
    int i = 0;
    for (uint32_t l = 0; l < in->n_layers; l++)
        for (uint32_t e = 0; e < in->n_experts; e++) {
            const struct moe_store_record *rec = moe_store_find(s, (int)l, (int)e);
            if (!rec) continue;
            q[i] = (struct moe_read){ .offset = rec->offset, .len = in->record_stride,
                                      .buf = bufs[i], .buf_index = i };
            i++;
        }
    /* one read past the end of the file */
    struct stat sb;
    stat(store_path, &sb);
    q[i] = (struct moe_read){ .offset = ((uint64_t)sb.st_size + 4095) / 4096 * 4096 + 65536,
                              .len = 4096, .buf = bufs[i], .buf_index = i };
    enum moe_status st = moe_reader_read(r, q, n);
    CHECK(st != MOE_OK && q[n - 1].st == MOE_EIO, "%s: read past EOF must fail (%d)", what, q[n - 1].st);
    i = 0;
    int bad = 0;
    for (uint32_t l = 0; l < in->n_layers; l++)
        for (uint32_t e = 0; e < in->n_experts; e++) {
            const struct moe_store_record *rec = moe_store_find(s, (int)l, (int)e);
            if (!rec) continue;
            if (q[i].st != MOE_OK || !moe_store_verify(rec, bufs[i])) bad++;
            i++;
        }
    CHECK(bad == 0, "%s: %d record(s) failed", what, bad);
    struct moe_reader_stats rs;
    moe_reader_get_stats(r, &rs);
    CHECK(rs.reads == (uint64_t)(n - 1), "%s: %llu reads", what, (unsigned long long)rs.reads);
    if (expect_fallback) CHECK(rs.fallbacks == 1 && !rs.io_uring, "%s: fallback not taken", what);
    if (!rs.direct || !rs.io_uring) CHECK(rs.fallbacks == 1, "%s: fallback not counted", what);
    if (rp->fault_eagain_every) CHECK(rs.retries > 0, "%s: no retry", what);
    if (rp->max_io_bytes && rp->max_io_bytes < in->record_stride)
        CHECK(rs.continuations > 0, "%s: no continuation", what);
    printf("%-28s reads %llu bytes %llu continuations %llu retries %llu %s%s%s fallbacks %llu\n",
           what, (unsigned long long)rs.reads, (unsigned long long)rs.bytes,
           (unsigned long long)rs.continuations, (unsigned long long)rs.retries, rs.io_uring ? "io_uring" : "pread",
           rs.direct ? " O_DIRECT" : "", rs.registered ? " registered" : "",
           (unsigned long long)rs.fallbacks);
    for (int k = 0; k < n; k++) free(bufs[k]);
    free(bufs);
    free(q);
    moe_reader_close(r);
    moe_store_close(s);
}

/* A read that gets part of its bytes (a short read at the end of the file) and then fails counts none of
 * them: the reader's bytes are those of the requests completed, as its reads are. */
static void check_partial_failure(const char *dir, const struct moe_reader_params *rp, const char *what)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/three-pages.bin", dir);
    FILE *f = fopen(path, "wb");
    static char page[4096];
    memset(page, 0x5a, sizeof(page));
    REQUIRE(f && fwrite(page, 1, 4096, f) == 4096 && fwrite(page, 1, 4096, f) == 4096 &&
                fwrite(page, 1, 4096, f) == 4096 && fclose(f) == 0,
            "write %s", path);
    struct moe_reader *r = moe_reader_open(path, rp);
    REQUIRE(r, "%s: %s", what, moe_last_error());
    void *buf[2];
    for (int b = 0; b < 2; b++) REQUIRE(posix_memalign(&buf[b], 4096, 8192) == 0, "alloc");
    /* the second read's first half is the file's last page, its second half past the end */
    struct moe_read q[2] = { { .offset = 0, .len = 8192, .buf = buf[0], .buf_index = -1 },
                             { .offset = 8192, .len = 8192, .buf = buf[1], .buf_index = -1 } };
    enum moe_status st = moe_reader_read(r, q, 2);
    struct moe_reader_stats rs;
    moe_reader_get_stats(r, &rs);
    CHECK(st == MOE_EIO && q[0].st == MOE_OK && q[1].st == MOE_EIO && strstr(q[1].msg, "end of file"),
          "%s: batch %d, reads %d and %d (%s)", what, st, q[0].st, q[1].st, q[1].msg);
    CHECK(rs.reads == 1 && rs.bytes == 8192, "%s: %llu reads, %llu bytes counted (the completed read's 8192)", what,
          (unsigned long long)rs.reads, (unsigned long long)rs.bytes);
    printf("%-28s reads %llu bytes %llu %s%s\n", what, (unsigned long long)rs.reads, (unsigned long long)rs.bytes,
           rs.io_uring ? "io_uring" : "pread", rs.direct ? " O_DIRECT" : "");
    for (int b = 0; b < 2; b++) free(buf[b]);
    moe_reader_close(r);
    unlink(path);
}

/* A submit interrupted or refused (EINTR, EAGAIN, EBUSY) before it took anything, when every read of
 * the batch is prepared and none is in flight: the reads stay in the ring and must still be done in
 * this batch (read into their buffers, counted, no fallback), and the next batch must not meet them. */
static void check_submit_retry(const char *store_path, int err, const char *what)
{
    struct moe_store *s = moe_store_open(store_path, NULL);
    REQUIRE(s, "%s", moe_last_error());
    const struct moe_store_info *in = moe_store_get_info(s);
    struct moe_reader *r = moe_reader_open(store_path, &(struct moe_reader_params){
                                               .queue_depth = 4, .fault_submit_at = 1, .fault_submit_errno = err });
    REQUIRE(r, "%s: %s", what, moe_last_error());
    const struct moe_store_record *rec[2] = { moe_store_find(s, 0, 1), moe_store_find(s, 1, 2) };
    REQUIRE(rec[0] && rec[1], "%s: records", what);
    void *buf[2];
    for (int b = 0; b < 2; b++) REQUIRE(posix_memalign(&buf[b], 4096, in->record_stride) == 0, "alloc");
    for (int b = 0; b < 2; b++) { /* one read a batch: the first batch's submit is the one refused */
        memset(buf[b], 0, in->record_stride);
        struct moe_read q = { .offset = rec[b]->offset, .len = in->record_stride, .buf = buf[b],
                              .buf_index = -1 };
        enum moe_status st = moe_reader_read(r, &q, 1);
        CHECK(st == MOE_OK && q.st == MOE_OK && moe_store_verify(rec[b], buf[b]), "%s: batch %d: status %d (%s)",
              what, b, q.st, q.msg);
    }
    struct moe_reader_stats rs;
    moe_reader_get_stats(r, &rs);
    CHECK(rs.reads == 2 && rs.fallbacks == 0, "%s: %llu reads, %llu fallbacks", what, (unsigned long long)rs.reads,
          (unsigned long long)rs.fallbacks);
    for (int b = 0; b < 2; b++) free(buf[b]);
    moe_reader_close(r);
    moe_store_close(s);
}

/* A batch through io_uring that finds no memory for its bookkeeping fails every one of its reads with
 * MOE_ENOMEM and the reason, none left with the status it came with (the tiered worker's reads come as
 * MOE_OK: it would take a buffer never read into for a record); the next batch reads as ever. */
static void check_scratch_nomem(const char *store_path, const char *what)
{
    struct moe_store *s = moe_store_open(store_path, NULL);
    REQUIRE(s, "%s", moe_last_error());
    const struct moe_store_info *in = moe_store_get_info(s);
    struct moe_reader *r = moe_reader_open(store_path, &(struct moe_reader_params){ .queue_depth = 4,
                                                                                    .fault_scratch_at = 1 });
    REQUIRE(r, "%s: %s", what, moe_last_error());
    struct moe_reader_stats rs;
    moe_reader_get_stats(r, &rs);
    if (!rs.io_uring) {
        printf("%s: no io_uring here, skipped\n", what);
        moe_reader_close(r);
        moe_store_close(s);
        return;
    }
    const struct moe_store_record *rec[2] = { moe_store_find(s, 0, 1), moe_store_find(s, 1, 2) };
    REQUIRE(rec[0] && rec[1], "%s: records", what);
    void *buf[2];
    struct moe_read q[2];
    for (int b = 0; b < 2; b++) REQUIRE(posix_memalign(&buf[b], 4096, in->record_stride) == 0, "alloc");
    for (int pass = 0; pass < 2; pass++) {
        for (int b = 0; b < 2; b++) {
            memset(buf[b], 0, in->record_stride);
            q[b] = (struct moe_read){ .offset = rec[b]->offset, .len = in->record_stride, .buf = buf[b],
                                      .buf_index = -1 };
        }
        enum moe_status st = moe_reader_read(r, q, 2);
        for (int b = 0; b < 2; b++) {
            if (pass == 0)
                CHECK(st == MOE_ENOMEM && q[b].st == MOE_ENOMEM && strstr(q[b].msg, "out of memory"),
                      "%s: read %d of a batch without memory: batch %d, read %d (%s)", what, b, st, q[b].st, q[b].msg);
            else
                CHECK(st == MOE_OK && q[b].st == MOE_OK && moe_store_verify(rec[b], buf[b]),
                      "%s: read %d of the next batch: status %d (%s)", what, b, q[b].st, q[b].msg);
        }
    }
    moe_reader_get_stats(r, &rs);
    CHECK(rs.reads == 2 && rs.fallbacks == 0 && rs.io_uring, "%s: %llu reads, %llu fallbacks", what,
          (unsigned long long)rs.reads, (unsigned long long)rs.fallbacks);
    for (int b = 0; b < 2; b++) free(buf[b]);
    moe_reader_close(r);
    moe_store_close(s);
}

/* A request of more than 4 GiB (an expert record that large) is read whole: 4 GiB and two pages from a
 * sparse file whose last two pages hold a pattern, where a length kept in 32 bits read two pages.  The
 * buffer's first 4 GiB are one 16 MiB shared memory object mapped over and over (the bytes read there
 * are the file's hole, zeros), its last two pages memory of their own. */
static void check_over_4gib(const char *dir, const struct moe_reader_params *rp, const char *what)
{
    const uint64_t head = 1ull << 32, len = head + 8192, chunk = 16u << 20;
    char path[600];
    snprintf(path, sizeof(path), "%s/over4g.bin", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    static uint8_t tail[8192];
    for (size_t i = 0; i < sizeof(tail); i++) tail[i] = (uint8_t)(0xa5 ^ (i >> 12) ^ (i * 7));
    REQUIRE(fd >= 0 && ftruncate(fd, (off_t)len) == 0 &&
                pwrite(fd, tail, sizeof(tail), (off_t)head) == (ssize_t)sizeof(tail) && close(fd) == 0,
            "%s: sparse file %s", what, path);
    struct moe_reader *r = moe_reader_open(path, rp);
    REQUIRE(r, "%s: %s", what, moe_last_error());
    uint8_t *base = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    int mfd = memfd_create("over4g", 0);
    REQUIRE(base != MAP_FAILED && mfd >= 0 && ftruncate(mfd, (off_t)chunk) == 0, "%s: buffer", what);
    for (uint64_t at = 0; at < head; at += chunk)
        REQUIRE(mmap(base + at, chunk, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, mfd, 0) == base + at,
                "%s: map at %llu", what, (unsigned long long)at);
    REQUIRE(mmap(base + head, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
                base + head, "%s: tail pages", what);
    memset(base + head, 0, 8192);
    struct moe_read q = { .offset = 0, .len = len, .buf = base, .buf_index = -1 };
    enum moe_status st = moe_reader_read(r, &q, 1);
    struct moe_reader_stats rs;
    moe_reader_get_stats(r, &rs);
    CHECK(st == MOE_OK && q.st == MOE_OK && !memcmp(base + head, tail, sizeof(tail)),
          "%s: a read of %llu bytes: status %d (%s), its last two pages %s", what, (unsigned long long)len, q.st,
          q.msg, memcmp(base + head, tail, sizeof(tail)) ? "not read" : "read");
    CHECK(rs.reads == 1 && rs.bytes == len, "%s: %llu reads, %llu bytes counted (%llu)", what,
          (unsigned long long)rs.reads, (unsigned long long)rs.bytes, (unsigned long long)len);
    printf("%-28s reads %llu bytes %llu continuations %llu %s%s\n", what, (unsigned long long)rs.reads,
           (unsigned long long)rs.bytes, (unsigned long long)rs.continuations, rs.io_uring ? "io_uring" : "pread",
           rs.direct ? " O_DIRECT" : "");
    munmap(base, len);
    close(mfd);
    moe_reader_close(r);
    unlink(path);
}

int main(void)
{
    char p[512], store[600];
    struct moe_model *m = moe_model_open(t_path(p, sizeof(p), "models/pycode-moe-18m"));
    REQUIRE(m, "%s", moe_last_error());
    const char *bases[2] = { "/tmp", "/dev/shm" };
    for (int b = 0; b < 2; b++) {
        const char *dir = t_tmp_make(bases[b]);
        if (!dir) {
            printf("%s: not available, skipped\n", bases[b]);
            continue;
        }
        snprintf(store, sizeof(store), "%s/m.moestore", dir);
        REQUIRE(moe_store_pack(m, store, NULL, NULL) == MOE_OK, "pack: %s", moe_last_error());
        char what[64];
        snprintf(what, sizeof(what), "%s qd4", bases[b]);
        check_reads(store, &(struct moe_reader_params){ .queue_depth = 4 }, what, false);
        snprintf(what, sizeof(what), "%s qd16 short", bases[b]);
        check_reads(store, &(struct moe_reader_params){ .queue_depth = 16, .max_io_bytes = 8192 },
                    what, false);
        snprintf(what, sizeof(what), "%s EAGAIN every 3", bases[b]);
        check_reads(store, &(struct moe_reader_params){ .queue_depth = 8, .max_io_bytes = 16384,
                                                        .fault_eagain_every = 3 }, what, false);
        snprintf(what, sizeof(what), "%s submit fails", bases[b]); /* after the first: reads in flight */
        check_reads(store, &(struct moe_reader_params){ .queue_depth = 2, .fault_submit_at = 2 }, what, true);
        static const int errs[3] = { EINTR, EAGAIN, EBUSY };
        for (int k = 0; k < 3; k++) {
            snprintf(what, sizeof(what), "%s submit %s, retried", bases[b], strerror(errs[k]));
            check_submit_retry(store, errs[k], what);
        }
        snprintf(what, sizeof(what), "%s partial read fails", bases[b]);
        check_partial_failure(dir, &(struct moe_reader_params){ .queue_depth = 4 }, what);
        snprintf(what, sizeof(what), "%s partial pread fails", bases[b]);
        check_partial_failure(dir, &(struct moe_reader_params){ .no_io_uring = true }, what);
        snprintf(what, sizeof(what), "%s scratch out of memory", bases[b]);
        check_scratch_nomem(store, what);
        snprintf(what, sizeof(what), "%s pread EAGAIN every 2", bases[b]);
        check_reads(store, &(struct moe_reader_params){ .no_io_uring = true, .fault_eagain_every = 2 },
                    what, true);
        snprintf(what, sizeof(what), "%s forced pread", bases[b]);
        check_reads(store, &(struct moe_reader_params){ .no_io_uring = true, .max_io_bytes = 8192 },
                    what, true);
        if (b == 1) { /* tmpfs: a hole reads without filling memory or the page cache */
            snprintf(what, sizeof(what), "%s over 4 GiB", bases[b]);
            check_over_4gib(dir, &(struct moe_reader_params){ .queue_depth = 4 }, what);
            snprintf(what, sizeof(what), "%s over 4 GiB, pread", bases[b]);
            check_over_4gib(dir, &(struct moe_reader_params){ .no_io_uring = true }, what);
        }
        t_tmp_remove(dir);
    }
    CHECK(!moe_reader_open("/tmp", &(struct moe_reader_params){ .queue_depth = 0 }), "directory");
    CHECK(!moe_reader_open("/nonexistent/store", &(struct moe_reader_params){ 0 }), "missing file");
    CHECK(!moe_reader_open(store, &(struct moe_reader_params){ .queue_depth = 5000 }), "queue depth");
    moe_model_close(m);
    return t_result("test_reader");
}
