/* The NVMe tier's read speed against its disk: the expert store's reader (offload/reader.h: io_uring,
 * O_DIRECT) fetching records of expert sizes at random places of a file, a batch at a time as the
 * tiered provider asks for a step's misses, against the disk's ceiling measured the way
 * docs/hw/README.md measures the device machine's (O_DIRECT sequential 16 MiB reads, one thread,
 * queue depth 1), with each record also cut into independent 4 MiB requests in flight at once, and
 * through buffered pread (the reader's fallback).  The file is written first (random bytes, then
 * fsync and dropped from the page cache); O_DIRECT reads bypass the cache, and the page cache is
 * dropped before each batch of buffered reads.
 * Prints one JSON line per case.
 *
 * usage: store_read_bench [--file PATH] [--mib N] [--reps R] */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/moe.h"
#include "offload/reader.h"

#define ALIGN 4096u

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_rand(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

/* Write a file of bytes random bytes, synced and out of the page cache. */
static int write_file(const char *path, size_t bytes)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return -1;
    size_t chunk = 16u << 20;
    uint64_t *b = malloc(chunk);
    if (!b) return close(fd), -1;
    for (size_t done = 0; done < bytes; done += chunk) {
        for (size_t i = 0; i < chunk / 8; i++) b[i] = next_rand();
        size_t n = bytes - done < chunk ? bytes - done : chunk;
        if (write(fd, b, n) != (ssize_t)n) return free(b), close(fd), -1;
    }
    free(b);
    int rc = fsync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    return rc;
}

/* GB/s of sequential O_DIRECT reads of 16 MiB, one at a time (the ceiling). */
static double seq_direct(const char *path, size_t bytes, void *buf)
{
    int fd = open(path, O_RDONLY | O_DIRECT);
    if (fd < 0) return -1;
    size_t chunk = 16u << 20, got = 0;
    double t0 = moe_now();
    for (size_t off = 0; off + chunk <= bytes; off += chunk) {
        ssize_t r = pread(fd, buf, chunk, (off_t)off);
        if (r != (ssize_t)chunk) return close(fd), -1;
        got += chunk;
    }
    double dt = moe_now() - t0;
    close(fd);
    return (double)got / dt / 1e9;
}

/* GB/s of reading n_batches batches of batch records of rec bytes at random aligned offsets (over the
 * reads' own time). */
static double records(const char *path, size_t bytes, size_t rec, int batch, int n_batches, int qd, uint32_t split,
                      bool no_uring, uint8_t *bufs, struct moe_reader_stats *stats)
{
    struct moe_reader_params p = { .queue_depth = qd, .no_io_uring = no_uring };
    struct moe_reader *r = moe_reader_open(path, &p);
    if (!r) return -1;
    static struct moe_read reqs[1024];
    size_t slots = (bytes - rec) / ALIGN;
    int cache_fd = no_uring ? open(path, O_RDONLY) : -1; /* buffered reads: the page cache dropped per batch */
    double dt = 0; /* the reads' time alone: dropping the cache is not part of a read */
    size_t got = 0;
    for (int k = 0; k < n_batches; k++) {
        if (cache_fd >= 0) posix_fadvise(cache_fd, 0, 0, POSIX_FADV_DONTNEED);
        int nq = 0;
        for (int i = 0; i < batch; i++) {
            uint64_t at = (next_rand() % slots) * ALIGN;
            for (size_t o = 0; o < rec; o += split ? split : rec) { /* split: requests of split bytes */
                size_t len = split && rec - o > split ? split : rec - o;
                reqs[nq++] = (struct moe_read){ .offset = at + o, .len = len,
                                                .buf = bufs + (size_t)i * rec + o, .buf_index = -1 };
            }
        }
        double t0 = moe_now();
        enum moe_status st = moe_reader_read(r, reqs, nq);
        dt += moe_now() - t0;
        if (st != MOE_OK) {
            if (cache_fd >= 0) close(cache_fd);
            moe_reader_close(r);
            return -1;
        }
        got += rec * (size_t)batch;
    }
    if (cache_fd >= 0) close(cache_fd);
    moe_reader_get_stats(r, stats);
    moe_reader_close(r);
    return (double)got / dt / 1e9;
}

int main(int argc, char **argv)
{
    const char *path = "/tmp/moeflow-store-read-bench.bin";
    size_t mib = 2048;
    int reps = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--file") && i + 1 < argc) path = argv[++i];
        else if (!strcmp(argv[i], "--mib") && i + 1 < argc) mib = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: store_read_bench [--file PATH] [--mib N] [--reps R]\n");
            return 2;
        }
    }
    if (mib < 512 || reps < 1) {
        fprintf(stderr, "store_read_bench: --mib must be at least 512 and --reps positive\n");
        return 2;
    }
    size_t bytes = mib << 20;
    /* expert records: Qwen3-30B-A3B's BF16 expert (9 MiB), DeepSeek-V3's as FP8 records (about 42
     * MiB: docs/expert-store.md) */
    static const struct {
        const char *name;
        size_t bytes;
    } sizes[] = { { "qwen3-30b-a3b bf16", 9u << 20 }, { "deepseek-v3 fp8", 42u << 20 } };
    static const int batches[] = { 1, 4, 8 };
    uint8_t *bufs = NULL;
    if (posix_memalign((void **)&bufs, ALIGN, 8 * (42u << 20))) {
        fprintf(stderr, "store_read_bench: out of memory\n");
        return 1;
    }
    memset(bufs, 0, 8 * (42u << 20));
    fprintf(stderr, "store_read_bench: writing %zu MiB to %s\n", mib, path);
    if (write_file(path, bytes) != 0) {
        fprintf(stderr, "store_read_bench: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    double ceiling = 0;
    for (int r = 0; r < reps; r++) {
        double g = seq_direct(path, bytes, bufs);
        if (g < 0) {
            fprintf(stderr, "store_read_bench: O_DIRECT reads of %s failed (a file system without O_DIRECT?)\n", path);
            unlink(path);
            return 1;
        }
        if (g > ceiling) ceiling = g;
    }
    printf("{\"bench\":\"store_read\",\"case\":\"ceiling: sequential O_DIRECT 16 MiB, one at a time\",\"mib\":%zu,"
           "\"gbs\":%.3f}\n", mib, ceiling);
    fflush(stdout);
    for (size_t s = 0; s < MOE_ARRAY_LEN(sizes); s++)
        for (size_t b = 0; b < MOE_ARRAY_LEN(batches); b++)
            for (int mode = 0; mode < 3; mode++) { /* whole records; 4 MiB requests; buffered pread */
                int batch = batches[b], n = (int)(((size_t)512 << 20) / (sizes[s].bytes * (size_t)batch));
                if (n < 2) n = 2;
                double best = 0;
                struct moe_reader_stats st = { 0 };
                for (int r = 0; r < reps; r++) {
                    double g = records(path, bytes, sizes[s].bytes, batch, n, 32, mode == 1 ? 4u << 20 : 0, mode == 2,
                                       bufs, &st);
                    if (g < 0) {
                        fprintf(stderr, "store_read_bench: %s\n", moe_last_error());
                        unlink(path);
                        return 1;
                    }
                    if (g > best) best = g;
                }
                printf("{\"bench\":\"store_read\",\"record\":\"%s\",\"record_mib\":%.0f,\"batch\":%d,\"batches\":%d,"
                       "\"queue_depth\":32,\"reads\":\"%s\",\"io_uring\":%s,\"direct\":%s,\"gbs\":%.3f,"
                       "\"of_ceiling\":%.3f}\n",
                       sizes[s].name, (double)sizes[s].bytes / (1 << 20), batch, n,
                       mode == 0 ? "whole records" : mode == 1 ? "4 MiB requests" : "buffered pread",
                       st.io_uring ? "true" : "false", st.direct ? "true" : "false", best, best / ceiling);
                fflush(stdout);
            }
    unlink(path);
    free(bufs);
    return 0;
}
