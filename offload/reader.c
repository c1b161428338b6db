/* io_uring / pread reader of the expert store (see reader.h). */
#include "reader.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

struct moe_reader {
    char path[4096];
    int fd;
    int qd;
    uint32_t max_io;
    uint32_t fault_every;     /* fault injection: every Nth completion -> -EAGAIN */
    uint64_t n_comp;          /* completions seen (fault injection) */
    uint32_t fault_submit;    /* fault injection: this submit fails with -fault_errno, taking nothing */
    int fault_errno;
    uint64_t n_submit;        /* submits made (fault injection) */
    uint32_t fault_scratch;   /* fault injection: this batch finds no memory for its scratch */
    uint64_t n_batch;         /* batches read through the ring (fault injection) */
    char ring_failed[256];    /* why uring_read gave up on the ring (for the fallback's message) */
    bool have_ring;
    struct io_uring ring;
    struct moe_reader_stats st;
    uint64_t *done;           /* scratch: [cap] bytes done per request */
    int *queue;               /* scratch: [cap] ring of request indices awaiting submission */
    int cap;
};

/* Log the fallback once and count it. */
static void fall_back(struct moe_reader *r, const char *why)
{
    if (r->st.fallbacks == 0)
        MOE_WARN("expert store %s: %s; falling back to buffered pread", r->path, why);
    r->st.fallbacks = 1;
    if (r->have_ring) {
        io_uring_queue_exit(&r->ring);
        r->have_ring = false;
    }
    r->st.io_uring = false;
    r->st.registered = false;
    if (r->st.direct) {
        int fd = open(r->path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            close(r->fd);
            r->fd = fd;
            r->st.direct = false;
        }
    }
}

struct moe_reader *moe_reader_open(const char *path, const struct moe_reader_params *p)
{
    struct moe_reader *r = calloc(1, sizeof(*r));
    if (!r) {
        moe_errorf(MOE_ENOMEM, "reader: out of memory");
        return NULL;
    }
    int qd = p->queue_depth ? p->queue_depth : MOE_READER_DEFAULT_QD;
    if (qd < 1 || qd > 4096 || (p->max_io_bytes % 4096) || p->fault_eagain_every == 1) {
        moe_errorf(MOE_EINVAL, "reader: queue depth %d must be in [1, 4096], max_io_bytes %u a "
                   "multiple of 4096 and fault_eagain_every %u not 1", qd, p->max_io_bytes,
                   p->fault_eagain_every);
        free(r);
        return NULL;
    }
    snprintf(r->path, sizeof(r->path), "%s", path);
    r->qd = qd;
    r->max_io = p->max_io_bytes;
    r->fault_every = p->fault_eagain_every;
    r->fault_submit = p->fault_submit_at;
    r->fault_errno = p->fault_submit_errno ? p->fault_submit_errno : ENOMEM;
    r->fault_scratch = p->fault_scratch_at;
    r->fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (r->fd >= 0) {
        r->st.direct = true;
    } else if (errno == EINVAL) {
        r->fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    struct stat sb;
    if (r->fd >= 0 && (fstat(r->fd, &sb) != 0 || !S_ISREG(sb.st_mode))) {
        close(r->fd);
        r->fd = -1;
        errno = EISDIR;
    }
    if (r->fd < 0) {
        moe_errorf(MOE_EIO, "%s: cannot open expert store: %s", path, strerror(errno));
        free(r);
        return NULL;
    }
    if (!r->st.direct) {
        fall_back(r, "O_DIRECT refused by the file system");
    } else if (p->no_io_uring) {
        fall_back(r, "io_uring disabled (--no-io-uring)");
    } else if (!r->st.fallbacks) {
        int ret = io_uring_queue_init((unsigned)qd, &r->ring, 0);
        if (ret < 0) {
            char why[128];
            snprintf(why, sizeof(why), "io_uring_queue_init failed: %s", strerror(-ret));
            fall_back(r, why);
        } else {
            r->have_ring = true;
            r->st.io_uring = true;
        }
    }
    return r;
}

void moe_reader_close(struct moe_reader *r)
{
    if (!r) return;
    if (r->have_ring) io_uring_queue_exit(&r->ring);
    if (r->fd >= 0) close(r->fd);
    free(r->done);
    free(r->queue);
    free(r);
}

void moe_reader_register(struct moe_reader *r, void *const *bufs, size_t len, int n)
{
    if (!r->have_ring || n <= 0) return;
    struct rlimit rl;
    uint64_t need = (uint64_t)len * (uint64_t)n;
    if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && need > rl.rlim_cur) {
        MOE_INFO("expert store %s: not registering %llu buffer bytes (RLIMIT_MEMLOCK %llu)",
                 r->path, (unsigned long long)need, (unsigned long long)rl.rlim_cur);
        return;
    }
    struct iovec *iov = calloc((size_t)n, sizeof(*iov));
    if (!iov) return;
    for (int i = 0; i < n; i++) iov[i] = (struct iovec){ .iov_base = bufs[i], .iov_len = len };
    int ret = io_uring_register_buffers(&r->ring, iov, (unsigned)n);
    free(iov);
    if (ret < 0)
        MOE_INFO("expert store %s: buffer registration refused (%s); using plain reads", r->path,
                 strerror(-ret));
    else
        r->st.registered = true;
}

/* q failed with st: keep the message moe_errorf just set (this thread's) with it. */
static enum moe_status read_failed(struct moe_read *q, enum moe_status st)
{
    snprintf(q->msg, sizeof(q->msg), "%s", moe_last_error());
    return st;
}

/* Bytes of the next read of a request with left bytes to go: at most max_io_bytes, and MOE_READER_MAX_IO. */
static uint32_t next_io(const struct moe_reader *r, uint64_t left)
{
    uint64_t cap = r->max_io && r->max_io < MOE_READER_MAX_IO ? r->max_io : MOE_READER_MAX_IO;
    return (uint32_t)(left < cap ? left : cap);
}

static enum moe_status pread_one(struct moe_reader *r, struct moe_read *q)
{
    uint64_t done = 0;
    while (done < q->len) {
        size_t want = next_io(r, q->len - done);
        ssize_t got = pread(r->fd, (char *)q->buf + done, want, (off_t)(q->offset + done));
        if (got > 0 && r->fault_every && ++r->n_comp % r->fault_every == 0) {
            got = -1;
            errno = EAGAIN;
        }
        if (got < 0 && (errno == EINTR || errno == EAGAIN)) {
            r->st.retries++;
            continue;
        }
        if (got < 0)
            return moe_errorf(MOE_EIO, "%s: read of %llu bytes at offset %llu failed: %s", r->path,
                              (unsigned long long)q->len, (unsigned long long)q->offset, strerror(errno));
        if (got == 0)
            return moe_errorf(MOE_EIO, "%s: unexpected end of file at offset %llu (truncated "
                              "store?)", r->path, (unsigned long long)(q->offset + done));
        done += (uint64_t)got;
        if (done < q->len) r->st.continuations++;
    }
    r->st.bytes += done;
    return MOE_OK;
}

static enum moe_status ensure_scratch(struct moe_reader *r, int n)
{
    if (r->fault_scratch && ++r->n_batch == r->fault_scratch)
        return moe_errorf(MOE_ENOMEM, "reader: out of memory for %d requests", n);
    if (n <= r->cap) return MOE_OK;
    uint64_t *d = realloc(r->done, (size_t)n * sizeof(*d));
    if (d) r->done = d;
    int *q = realloc(r->queue, (size_t)n * sizeof(*q));
    if (q) r->queue = q;
    if (!d || !q) return moe_errorf(MOE_ENOMEM, "reader: out of memory for %d requests", n);
    r->cap = n;
    return MOE_OK;
}

/* Wait for n reads in flight on a ring that is being given up: the kernel
 * writes into the callers' buffers until they complete.  If waiting fails,
 * tearing the ring down (fall_back) cancels what is left. */
static void drain_in_flight(struct moe_reader *r, int n)
{
    while (n > 0) {
        struct io_uring_cqe *cqe;
        int ret = io_uring_wait_cqe(&r->ring, &cqe);
        if (ret == -EINTR)
            continue;
        if (ret < 0)
            return;
        io_uring_cqe_seen(&r->ring, cqe);
        n--;
    }
}

/* io_uring path.  Returns MOE_ENOTSUP when the ring cannot do the reads: O_DIRECT
 * refused at read time (-EINVAL), or a submit failed for another reason than a
 * full queue or an interruption; r->ring_failed says which.  The caller then
 * falls back and redoes every read of the batch. */
static enum moe_status uring_read(struct moe_reader *r, struct moe_read *reqs, int n)
{
    enum moe_status st = ensure_scratch(r, n);
    if (st) { /* no read of the batch was made: each fails with the reason */
        for (int i = 0; i < n; i++) reqs[i].st = read_failed(&reqs[i], st);
        return st;
    }
    uint64_t reads0 = r->st.reads, bytes0 = r->st.bytes; /* a batch given up is counted when redone */
    /* pending: reads prepared in the ring that no submit has taken yet (a submit interrupted, refused
     * for a full completion queue, or taking only part): they stay in the ring and go with the next */
    int head = 0, tail = 0, queued = 0, in_flight = 0, pending = 0;
    bool einval = false;
    for (int i = 0; i < n; i++) {
        r->done[i] = 0;
        reqs[i].st = MOE_EIO;
        reqs[i].msg[0] = 0;
        r->queue[tail] = i;
        tail = (tail + 1) % n;
        queued++;
    }
    while (queued > 0 || in_flight > 0 || pending > 0) {
        int prepared = 0;
        while (queued > 0 && in_flight + pending + prepared < r->qd) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
            if (!sqe) break;
            int i = r->queue[head];
            head = (head + 1) % n;
            queued--;
            struct moe_read *q = &reqs[i];
            uint32_t len = next_io(r, q->len - r->done[i]);
            char *dst = (char *)q->buf + r->done[i];
            if (r->st.registered && q->buf_index >= 0)
                io_uring_prep_read_fixed(sqe, r->fd, dst, len, q->offset + r->done[i], q->buf_index);
            else
                io_uring_prep_read(sqe, r->fd, dst, len, q->offset + r->done[i]);
            io_uring_sqe_set_data64(sqe, (uint64_t)i);
            prepared++;
        }
        pending += prepared;
        int ret = r->fault_submit && ++r->n_submit == r->fault_submit ? -r->fault_errno
                                                                        : io_uring_submit_and_wait(&r->ring, 1);
        if (ret < 0 && ret != -EBUSY && ret != -EINTR && ret != -EAGAIN) {
            snprintf(r->ring_failed, sizeof(r->ring_failed), "io_uring_submit failed (%s)", strerror(-ret));
            drain_in_flight(r, in_flight);
            for (int i = 0; i < n; i++) r->done[i] = 0;
            r->st.reads = reads0;
            r->st.bytes = bytes0;
            return MOE_ENOTSUP;
        }
        if (ret == -EBUSY) r->st.cq_full++;
        if (ret == -EINTR || ret == -EAGAIN) r->st.retries++;
        if (ret >= 0) {
            in_flight += ret;
            pending -= ret; /* a submit takes only prepared reads */
        } else if (pending > 0 && ret != -EBUSY) {
            continue; /* retry submitting what is prepared */
        }
        struct io_uring_cqe *cqe;
        unsigned seen = 0, hd;
        io_uring_for_each_cqe(&r->ring, hd, cqe) {
            int i = (int)io_uring_cqe_get_data64(cqe);
            int res = cqe->res;
            if (res > 0 && r->fault_every && ++r->n_comp % r->fault_every == 0) res = -EAGAIN;
            struct moe_read *q = &reqs[i];
            seen++;
            in_flight--;
            if (res == -EAGAIN || res == -EINTR) {
                r->st.retries++;
            } else if (res == -EINVAL && r->st.direct) {
                einval = true;
                continue;
            } else if (res < 0) {
                q->st = read_failed(q, moe_errorf(MOE_EIO, "%s: read of %llu bytes at offset %llu failed: %s",
                                                  r->path, (unsigned long long)q->len,
                                                  (unsigned long long)q->offset, strerror(-res)));
                continue;
            } else if (res == 0) {
                q->st = read_failed(q, moe_errorf(MOE_EIO, "%s: unexpected end of file at offset %llu "
                                                  "(truncated store?)", r->path,
                                                  (unsigned long long)(q->offset + r->done[i])));
                continue;
            } else {
                r->done[i] += (uint64_t)res;
                if (r->done[i] >= q->len) { /* counted whole: a read that fails later moved no record */
                    q->st = MOE_OK;
                    r->st.reads++;
                    r->st.bytes += r->done[i];
                    continue;
                }
                r->st.continuations++;
            }
            r->queue[tail] = i; /* continue or retry */
            tail = (tail + 1) % n;
            queued++;
        }
        io_uring_cq_advance(&r->ring, seen);
        if (einval && in_flight == 0) {
            for (int i = 0; i < n; i++) r->done[i] = 0;
            r->st.reads = reads0;
            r->st.bytes = bytes0;
            snprintf(r->ring_failed, sizeof(r->ring_failed), "O_DIRECT reads refused (EINVAL)");
            return MOE_ENOTSUP;
        }
        if (einval) queued = 0; /* drain what is in flight, then fall back */
    }
    return MOE_OK;
}

enum moe_status moe_reader_read(struct moe_reader *r, struct moe_read *reqs, int n)
{
    enum moe_status first = MOE_OK;
    if (n <= 0) return MOE_OK;
    if (r->have_ring) {
        enum moe_status st = uring_read(r, reqs, n);
        if (st == MOE_ENOTSUP) {
            fall_back(r, r->ring_failed);
        } else if (st) {
            return st;
        } else {
            for (int i = 0; i < n; i++)
                if (reqs[i].st && !first) first = reqs[i].st;
            return first;
        }
    }
    for (int i = 0; i < n; i++) {
        reqs[i].msg[0] = 0;
        reqs[i].st = pread_one(r, &reqs[i]);
        if (reqs[i].st == MOE_OK) {
            r->st.reads++;
        } else {
            read_failed(&reqs[i], reqs[i].st);
            if (!first) first = reqs[i].st;
        }
    }
    return first;
}

void moe_reader_get_stats(const struct moe_reader *r, struct moe_reader_stats *out) { *out = r->st; }
