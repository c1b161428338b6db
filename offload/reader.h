/* Batched positional reads of the expert store: io_uring with O_DIRECT, queue
 * depth configurable, registered buffers where RLIMIT_MEMLOCK allows.  Short
 * reads are continued, -EAGAIN/-EINTR retried, a full completion queue drained
 * before more is submitted.  When io_uring cannot be set up (EPERM/ENOSYS,
 * e.g. under seccomp) or O_DIRECT is refused (tmpfs), the reader falls back to
 * buffered pread, says so once in the log and counts it in its stats;
 * no_io_uring forces that fallback. */
#ifndef MOE_READER_H
#define MOE_READER_H

#include "../common/moe.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_READER_DEFAULT_QD 32
#define MOE_READER_MAX_IO (1u << 30) /* bytes one read asks for at most (io_uring's length is 32-bit) */

struct moe_reader_params {
    int queue_depth;          /* reads in flight at once (0 = MOE_READER_DEFAULT_QD), 1..4096 */
    bool no_io_uring;         /* force the buffered-pread fallback */
    uint32_t max_io_bytes;    /* 0 = whole request per read (up to MOE_READER_MAX_IO); else each read
                                 is cut to this many bytes (multiple of 4096) and continued like a
                                 short read */
    uint32_t fault_eagain_every; /* testing: every Nth completion (N >= 2) is treated as -EAGAIN
                                    (its bytes discarded and the read resubmitted); 0 = off */
    uint32_t fault_submit_at; /* testing: the Nth io_uring submit fails with -ENOMEM, as a broken
                                 ring would (the reads in flight are waited for, the rest are
                                 done with pread); 0 = off */
    int fault_submit_errno;   /* testing: the error that submit returns instead, taking nothing
                                 (0 = ENOMEM; EINTR, EAGAIN or EBUSY: the reads stay prepared and
                                 are submitted again) */
    uint32_t fault_scratch_at; /* testing: the Nth batch read through io_uring finds no memory for its
                                  bookkeeping, as out of memory would (its reads fail, MOE_ENOMEM); 0 = off */
};

struct moe_reader_stats {
    uint64_t reads;           /* requests completed */
    uint64_t bytes;           /* bytes of the requests completed (a request that fails counts none of
                                 the bytes its earlier short reads got) */
    uint64_t continuations;   /* short reads continued */
    uint64_t retries;         /* -EAGAIN / -EINTR resubmissions */
    uint64_t cq_full;         /* submissions deferred because the completion queue was full */
    uint64_t fallbacks;       /* 1 when this reader fell back to buffered pread */
    bool io_uring;            /* reads go through io_uring */
    bool direct;              /* the file is open with O_DIRECT */
    bool registered;          /* buffers registered with the ring */
};

struct moe_read {
    uint64_t offset;          /* file offset (multiple of 4096 with O_DIRECT) */
    uint64_t len;             /* bytes (multiple of 4096 with O_DIRECT); more than 4 GiB is read as
                                 reads of at most MOE_READER_MAX_IO bytes, continued */
    void *buf;                /* 4096-aligned */
    int buf_index;            /* registered buffer index or -1 */
    enum moe_status st;       /* out: this read's result */
    char msg[200];            /* out: why it failed ("" when it did not, or no reason is known) */
};

struct moe_reader;

struct moe_reader *moe_reader_open(const char *path, const struct moe_reader_params *p);
void moe_reader_close(struct moe_reader *r);
/* Register n buffers of len bytes each (io_uring fixed buffers); buf_index i
 * then refers to bufs[i].  Skipped (not an error) when RLIMIT_MEMLOCK or the
 * kernel refuses. */
void moe_reader_register(struct moe_reader *r, void *const *bufs, size_t len, int n);
/* Read all n requests; returns MOE_OK or the first failing request's status
 * (each request's own status is in reqs[i].st). */
enum moe_status moe_reader_read(struct moe_reader *r, struct moe_read *reqs, int n);
void moe_reader_get_stats(const struct moe_reader *r, struct moe_reader_stats *out);

#ifdef __cplusplus
}
#endif
#endif
