/* moeflow — shared status codes, error detail, logging and small helpers.
 *
 * Every action function returns enum moe_status (0 ok, negative error).  The
 * human-readable detail of the most recent error on the calling thread is kept
 * errno-style and read with moe_last_error(); it always names what to fix
 * (the file, the field, the value). */
#ifndef MOE_COMMON_H
#define MOE_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

enum moe_status {
    MOE_OK = 0,
    MOE_EINVAL = -1,     /* bad argument, request field or config value */
    MOE_ENOMEM = -2,     /* allocation failed or a configured bound was hit */
    MOE_EIO = -3,        /* read/write/open failed */
    MOE_EFORMAT = -4,    /* malformed file or message */
    MOE_ENOTSUP = -5,    /* unsupported architecture, dtype or feature */
    MOE_ECHECKSUM = -6,  /* stored data failed its checksum */
    MOE_EBUSY = -7,      /* queue or capacity full; retry later */
    MOE_ECANCELED = -8,  /* cancelled by the client or by shutdown */
    MOE_ETIMEDOUT = -9,  /* deadline expired */
    MOE_EDEVICE = -10,   /* an accelerator operation failed; the device stays usable */
    MOE_ENOENT = -11,    /* file, tensor or key not found */
    MOE_ERANGE = -12,    /* value outside its allowed range (context, ids, ...) */
    MOE_EDEVLOST = -13,  /* the accelerator's context is lost (a sticky error): nothing more runs on
                            it, the process must restart */
};

const char *moe_status_str(enum moe_status st);

/* Record a formatted detail message for the calling thread and return st, so
 * call sites read `return moe_errorf(MOE_EFORMAT, "%s: ...", path);`. */
enum moe_status moe_errorf(enum moe_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prefix the current detail message: "<prefix>: <old message>". */
enum moe_status moe_error_prefix(enum moe_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Detail of the last error on this thread ("" if none). */
const char *moe_last_error(void);
/* Status of the last moe_errorf on this thread (the cause, whatever prefixes
 * came after; MOE_OK if none): for constructors that return NULL. */
enum moe_status moe_last_status(void);
void moe_error_clear(void);

/* Logging to stderr. Level from MOEFLOW_LOG (error|warn|info|debug), default warn. */
enum moe_log_level { MOE_LOG_ERROR, MOE_LOG_WARN, MOE_LOG_INFO, MOE_LOG_DEBUG };
void moe_log(enum moe_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void moe_log_set_level(enum moe_log_level lvl);
/* Reads MOEFLOW_LOG now (else at the first message): a value it does not know is said at once. */
void moe_log_init(void);
#define MOE_ERR(...)  moe_log(MOE_LOG_ERROR, __VA_ARGS__)
#define MOE_WARN(...) moe_log(MOE_LOG_WARN, __VA_ARGS__)
#define MOE_INFO(...) moe_log(MOE_LOG_INFO, __VA_ARGS__)
#define MOE_DBG(...)  moe_log(MOE_LOG_DEBUG, __VA_ARGS__)

/* Monotonic clock in seconds. */
double moe_now(void);

/* The host's memory: what it could hand out now without swapping (/proc/meminfo's MemAvailable, page
 * cache included; else free pages) and its total, in bytes.  false when neither can be read. */
bool moe_host_memory(uint64_t *available, uint64_t *total);

/* Transparent huge pages for big, long-lived buffers (weights, expert pools): where the kernel's THP mode
 * is "madvise", only memory marked MADV_HUGEPAGE gets 2 MiB pages, fewer TLB misses when a decode step
 * streams through the weights.  moe_huge_alloc returns bytes of memory aligned to MOE_HUGE_PAGE when
 * bytes is at least that (else to 4096 bytes), the whole huge pages inside it marked; a tail short of
 * a huge page stays in small pages, so no memory is added.  Freed with free().  NULL with errno set
 * when the allocation fails; *huge (may be NULL) says whether the marking took: false for a buffer
 * under MOE_HUGE_PAGE, or where madvise fails (a kernel without THP: the same memory in small pages).
 * moe_huge_advise marks the whole huge pages within [p, p + bytes) of memory got elsewhere; false when
 * there is none or madvise fails. */
#define MOE_HUGE_PAGE ((size_t)2 << 20)
void *moe_huge_alloc(size_t bytes, bool *huge);
bool moe_huge_advise(void *p, size_t bytes);

/* Numeric conversions used by loaders and kernels (round-to-nearest-even). */
static inline float moe_bf16_to_f32(uint16_t h)
{
    union { uint32_t u; float f; } v = { .u = (uint32_t)h << 16 };
    return v.f;
}
static inline uint16_t moe_f32_to_bf16(float f)
{
    union { uint32_t u; float f; } v = { .f = f };
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40); /* quiet NaN */
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)(v.u >> 16);
}
float moe_f16_to_f32(uint16_t h);
uint16_t moe_f32_to_f16(float f);

/* Checked arithmetic: false on overflow. */
static inline bool moe_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool moe_add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

/* Strict parsing of a number given as text (common/parse.c): the whole string, base 10, no blank, '+' or
 * hexadecimal, no overflow; false leaves *out untouched.  long: in [lo, hi]; u64: no sign; double: finite and
 * >= lo, and <= hi for moe_parse_double_in. */
bool moe_parse_long(const char *s, long lo, long hi, long *out);
bool moe_parse_u64(const char *s, uint64_t *out);
bool moe_parse_double(const char *s, double lo, double *out);
bool moe_parse_double_in(const char *s, double lo, double hi, double *out);
/* The digits s begins with (at least one; no blank or sign before them, no overflow) into *out, and in *rest
 * the text after them (a unit, say); false leaves both untouched. */
bool moe_parse_u64_prefix(const char *s, uint64_t *out, const char **rest);

/* Room in *p, an array of *cap elements of size bytes each, for need of them: when need > *cap, *p
 * is reallocated to the first capacity that holds need, doubling from *cap (from first when *cap is
 * 0), and *cap set to it.  False, nothing changed, when out of memory or the size overflows. */
bool moe_grow(void **p, size_t *cap, size_t need, size_t size, size_t first);

/* Whole-file read into a NUL-terminated malloc'd buffer (caller frees); anything but a regular file
 * (a directory, a FIFO, a device) is MOE_EIO "PATH: not a regular file", a FIFO without waiting for a
 * writer. */
enum moe_status moe_read_file(const char *path, char **out, size_t *len, size_t max_len);

/* Create a new, empty file beside path (beside the file it names when path is a
 * symbolic link, so that the output replaces that file, not the link) to write it
 * under, named "path.tmp.<pid>.<n>" (or, when that name is too long, ".moeflow.<pid>.<n>.tmp"
 * in path's directory; never an existing file; mode 0644 less the umask, or the permission bits
 * (& 0777) of the regular file path names, which the output replaces), for
 * the write-then-rename of a whole output.  Writes the name into tmp (cap
 * bytes) and the file the output becomes (moe_out_target's, read once here) into target (tcap bytes, PATH_MAX
 * are enough) for moe_tmp_commit, and returns an fd opened for writing, or -1 with errno set
 * (ENAMETOOLONG when a name does not fit, or path's own name is longer than NAME_MAX or PATH_MAX allow).  The name is remembered until
 * moe_tmp_commit or moe_tmp_discard, so that a signal that ends the process
 * removes the file (moe_tmp_remove_on_signals). */
int moe_create_tmp(const char *path, char *tmp, size_t cap, char *target, size_t tcap);
/* The file an output to path becomes: path with its symbolic links followed (a link to a file not made yet
 * names that file, a relative link is read from its own directory), written into buf (cap bytes) and returned, so
 * that the rename replaces the file the link names, not the link; path itself when it is no link or its links
 * cannot be followed (a loop, a name too long), as rename would take it. */
const char *moe_out_target(const char *path, char *buf, size_t cap);
/* Rename the whole output tmp to target, the file moe_create_tmp named (the links of the output's path are
 * not read again: a link changed meanwhile does not move the output elsewhere); 0, or -1 with errno set (tmp
 * is then still there: discard it). */
int moe_tmp_commit(const char *tmp, const char *target);
/* Remove tmp, an output given up. */
void moe_tmp_discard(const char *tmp);
/* A text output written whole or not at all: a path that exists and is not a
 * regular file (a pipe, /dev/stdout) is written in place; anything else through
 * a file of moe_create_tmp beside it, renamed over path by moe_out_close once
 * every write succeeded, so that a failed write (a full disk) or a signal
 * leaves an existing path as it was. */
struct moe_out {
    FILE *f;
    bool direct;       /* written in place */
    bool existed;      /* path was there before (a failed write leaves it as it was) */
    char path[4096];   /* as given, for messages */
    char tmp[4200];
    char target[4096]; /* the file path names (its links followed), which tmp becomes */
};
/* Open o for path; MOE_EIO "WHAT PATH: cannot create ..." when it cannot. */
enum moe_status moe_out_open(struct moe_out *o, const char *what, const char *path);
/* Flush and close o, then put it into place; on a write error MOE_EIO "WHAT PATH:
 * write failed (...)" with the work file removed.  o->f is NULL after. */
enum moe_status moe_out_close(struct moe_out *o, const char *what);
/* Give o up: closed, the work file removed (a NULL o->f: nothing to do). */
void moe_out_abort(struct moe_out *o);

/* From now on SIGINT, SIGTERM, SIGHUP, SIGPIPE or SIGXFSZ (unless ignored already) removes every
 * file of moe_create_tmp not committed or discarded, then ends the process as
 * the signal would. */
void moe_tmp_remove_on_signals(void);

/* Directory of the default model: $MOEFLOW_MODEL, else the bundled model installed beside the binary
 * (<bindir>/../share/moeflow/models/pycode-moe-18m by `cmake --install`), else the source tree's. */
const char *moe_default_model_dir(void);

#define MOE_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#ifdef __cplusplus
}
#endif
#endif
