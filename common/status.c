/* Status strings, the per-thread error detail, logging and small helpers. */
#define _POSIX_C_SOURCE 200809L
#include "moe.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *moe_status_str(enum moe_status st)
{
    switch (st) {
    case MOE_OK: return "ok";
    case MOE_EINVAL: return "invalid argument";
    case MOE_ENOMEM: return "out of memory";
    case MOE_EIO: return "I/O error";
    case MOE_EFORMAT: return "malformed data";
    case MOE_ENOTSUP: return "not supported";
    case MOE_ECHECKSUM: return "checksum mismatch";
    case MOE_EBUSY: return "busy";
    case MOE_ECANCELED: return "cancelled";
    case MOE_ETIMEDOUT: return "deadline exceeded";
    case MOE_EDEVICE: return "device error";
    case MOE_ENOENT: return "not found";
    case MOE_ERANGE: return "out of range";
    case MOE_EDEVLOST: return "device lost";
    }
    return "unknown status";
}

static _Thread_local char err_msg[1024];
static _Thread_local enum moe_status err_st;

enum moe_status moe_errorf(enum moe_status st, const char *fmt, ...)
{
    err_st = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof(err_msg), fmt, ap);
    va_end(ap);
    return st;
}

enum moe_status moe_error_prefix(enum moe_status st, const char *fmt, ...)
{
    char old[sizeof(err_msg)], pre[512];
    va_list ap;
    memcpy(old, err_msg, sizeof(old));
    va_start(ap, fmt);
    vsnprintf(pre, sizeof(pre), fmt, ap);
    va_end(ap);
    if (old[0])
        snprintf(err_msg, sizeof(err_msg), "%s: %s", pre, old);
    else
        snprintf(err_msg, sizeof(err_msg), "%s: %s", pre, moe_status_str(st));
    return st;
}

const char *moe_last_error(void) { return err_msg; }
enum moe_status moe_last_status(void) { return err_st; }
void moe_error_clear(void)
{
    err_msg[0] = 0;
    err_st = MOE_OK;
}

static int log_level = -1;

void moe_log_set_level(enum moe_log_level lvl) { log_level = (int)lvl; }

static int log_level_get(void)
{
    if (log_level < 0) {
        const char *e = getenv("MOEFLOW_LOG");
        log_level = MOE_LOG_WARN;
        if (e && *e) {
            if (!strcasecmp(e, "error")) log_level = MOE_LOG_ERROR;
            else if (!strcasecmp(e, "info")) log_level = MOE_LOG_INFO;
            else if (!strcasecmp(e, "debug")) log_level = MOE_LOG_DEBUG;
            else if (strcasecmp(e, "warn") && strcasecmp(e, "warning"))
                fprintf(stderr, "moeflow: MOEFLOW_LOG '%.32s' is not error, warn, info or debug: logging warnings\n", e);
        }
    }
    return log_level;
}

void moe_log_init(void) { (void)log_level_get(); }

void moe_log(enum moe_log_level lvl, const char *fmt, ...)
{
    static const char *names[] = { "error", "warn", "info", "debug" };
    char buf[2048];
    va_list ap;
    if ((int)lvl > log_level_get()) return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr, "moeflow: %s: %s\n", names[lvl], buf);
}

double moe_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

bool moe_host_memory(uint64_t *available, uint64_t *total)
{
    unsigned long long avail = 0, tot = 0, kb;
    char line[256];
    FILE *f = fopen("/proc/meminfo", "r");
    while (f && fgets(line, sizeof(line), f)) {
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) avail = kb << 10;
        else if (sscanf(line, "MemTotal: %llu kB", &kb) == 1) tot = kb << 10;
    }
    if (f) fclose(f);
    long page = sysconf(_SC_PAGESIZE);
    if (!tot && page > 0) tot = (unsigned long long)sysconf(_SC_PHYS_PAGES) * (unsigned long long)page;
    if (!avail && page > 0) avail = (unsigned long long)sysconf(_SC_AVPHYS_PAGES) * (unsigned long long)page;
    *available = avail;
    *total = tot;
    return tot > 0;
}

float moe_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    union { uint32_t u; float f; } v;
    if (exp == 0) {
        float f = ldexpf((float)man, -24);
        return sign ? -f : f;
    }
    if (exp == 31) v.u = sign | 0x7f800000u | (man << 13);
    else v.u = sign | ((exp + 112) << 23) | (man << 13);
    return v.f;
}

uint16_t moe_f32_to_f16(float f)
{
    union { uint32_t u; float f; } v = { .f = f };
    uint32_t sign = (v.u >> 16) & 0x8000, a = v.u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* overflow -> inf */
    if (a < 0x38800000u) {                                  /* subnormal or zero */
        float m = fabsf(f) * 16777216.0f;                   /* 2^24 */
        return (uint16_t)(sign | (uint32_t)lrintf(m));
    }
    a += 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | ((a - 0x38000000u) >> 13));
}

bool moe_grow(void **p, size_t *cap, size_t need, size_t size, size_t first)
{
    if (need <= *cap) return true;
    size_t n = *cap ? *cap : first, bytes;
    while (n < need) {
        if (n > SIZE_MAX / 2) return false;
        n *= 2;
    }
    if (__builtin_mul_overflow(n, size, &bytes)) return false;
    void *q = realloc(*p, bytes);
    if (!q) return false;
    *p = q;
    *cap = n;
    return true;
}

enum moe_status moe_read_file(const char *path, char **out, size_t *len, size_t max_len)
{
    /* not blocking: opening a FIFO with no writer would wait for one, for ever */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat sb;
    char *buf;
    if (fd < 0) return moe_errorf(errno == ENOENT ? MOE_ENOENT : MOE_EIO, "%s: %s", path, strerror(errno));
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return moe_errorf(MOE_EIO, "%s: not a regular file", path);
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return moe_errorf(MOE_ENOMEM, "%s: %s", path, strerror(errno));
    }
    if ((uint64_t)sb.st_size > max_len) {
        fclose(f);
        return moe_errorf(MOE_EFORMAT, "%s: %lld bytes is larger than the %zu-byte limit", path,
                          (long long)sb.st_size, max_len);
    }
    /* read to the end: the size is a first guess only, as a /proc or /sys file gives 0 or a page whatever
     * it holds, and a file can change while it is read */
    size_t cap = (size_t)sb.st_size + 1, n = 0;
    buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - 1 - n, f);
        if (n > max_len || n < cap - 1) /* over the limit, or the end (or a read error) */
            break;
        int c = fgetc(f); /* the buffer is full: more only when there is more */
        if (c == EOF)
            break;
        if (!moe_grow((void **)&buf, &cap, cap + 1, 1, 4096)) {
            free(buf);
            buf = NULL;
            break;
        }
        buf[n++] = (char)c;
    }
    enum moe_status st = MOE_OK;
    if (!buf)
        st = moe_errorf(MOE_ENOMEM, "%s: cannot allocate %zu bytes", path, cap);
    else if (n > max_len)
        st = moe_errorf(MOE_EFORMAT, "%s: more bytes than the %zu-byte limit", path, max_len);
    else if (ferror(f))
        st = moe_errorf(MOE_EIO, "%s: read failed: %s", path, strerror(errno));
    fclose(f);
    if (st) {
        free(buf);
        return st;
    }
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return MOE_OK;
}

/* Files of moe_create_tmp being written: a slot is claimed (BUSY) while its
 * name is copied in, and only a LIVE name is read by the signal handler. */
#define TMP_SLOTS 16
enum { TMP_FREE, TMP_BUSY, TMP_LIVE };
static char tmp_names[TMP_SLOTS][4200];
static _Atomic int tmp_state[TMP_SLOTS];
/* the signals that end a command; moe_create_tmp holds them off while it registers.  SIGPIPE
 * too: a progress line written to a reader that went away (moeflow pack 2>&1 | head -1) ends
 * the command as it would have anyway, but without its output's work file left behind; so does
 * SIGXFSZ, a write past the file-size limit (ulimit -f) */
static const int ending_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGXFSZ };

static void tmp_remember(const char *tmp)
{
    if (strlen(tmp) >= sizeof(tmp_names[0])) return;
    for (int i = 0; i < TMP_SLOTS; i++) {
        int want = TMP_FREE;
        if (atomic_compare_exchange_strong(&tmp_state[i], &want, TMP_BUSY)) {
            strcpy(tmp_names[i], tmp);
            atomic_store(&tmp_state[i], TMP_LIVE);
            return;
        }
    }
}

static void tmp_forget(const char *tmp)
{
    for (int i = 0; i < TMP_SLOTS; i++)
        if (atomic_load(&tmp_state[i]) == TMP_LIVE && !strcmp(tmp_names[i], tmp)) {
            atomic_store(&tmp_state[i], TMP_FREE);
            return;
        }
}

const char *moe_out_target(const char *path, char *buf, size_t cap)
{
    char cur[PATH_MAX], link[PATH_MAX];
    const char *p = path;
    struct stat sb;
    for (int hops = 0; hops < 40 && lstat(p, &sb) == 0 && S_ISLNK(sb.st_mode); hops++) {
        ssize_t n = readlink(p, link, sizeof(link) - 1);
        if (n <= 0) return path;
        link[n] = 0;
        const char *slash = strrchr(p, '/');
        int dir = link[0] == '/' || !slash ? 0 : (int)(slash - p + 1); /* a relative link is beside p */
        int len = snprintf(cur, sizeof(cur), "%.*s%s", dir, p, link);
        if (len < 0 || (size_t)len >= sizeof(cur) || (size_t)len >= cap) return path;
        memcpy(buf, cur, (size_t)len + 1);
        p = buf;
    }
    return lstat(p, &sb) == 0 && S_ISLNK(sb.st_mode) ? path : p;
}

int moe_create_tmp(const char *path, char *tmp, size_t cap, char *target, size_t tcap)
{
    static _Atomic unsigned serial;
    char buf[PATH_MAX];
    path = moe_out_target(path, buf, sizeof(buf));
    if ((size_t)snprintf(target, tcap, "%s", path) >= tcap) {
        errno = ENAMETOOLONG;
        return -1;
    }
    /* a name the rename could not give (longer than a file name or a path may be) fails now, before the work,
     * not once the output is whole (the short name below is for a suffix that does not fit, not for this) */
    const char *base = strrchr(path, '/');
    if (strlen(path) >= PATH_MAX || strlen(base ? base + 1 : path) > NAME_MAX) {
        errno = ENAMETOOLONG;
        return -1;
    }
    /* a signal that ends the process must not come between the file's creation
     * and its registration, or the handler would miss it */
    sigset_t ending, old;
    sigemptyset(&ending);
    for (size_t i = 0; i < MOE_ARRAY_LEN(ending_signals); i++) sigaddset(&ending, ending_signals[i]);
    pthread_sigmask(SIG_BLOCK, &ending, &old);
    int fd = -1;
    for (int tries = 0; tries < 100; tries++) {
        unsigned k = serial++;
        int n = snprintf(tmp, cap, "%s.tmp.%ld.%u", path, (long)getpid(), k);
        errno = ENAMETOOLONG;
        if (n >= 0 && (size_t)n < cap)
            fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0 && errno == ENAMETOOLONG) {
            /* path's name leaves no room for the suffix: a short hidden name beside it */
            const char *slash = strrchr(path, '/');
            n = snprintf(tmp, cap, "%.*s.moeflow.%ld.%u.tmp", slash ? (int)(slash - path + 1) : 0, path,
                         (long)getpid(), k);
            if (n < 0 || (size_t)n >= cap)
                break;
            fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        }
        if (fd >= 0) {
            tmp_remember(tmp);
            /* a file replaced keeps its permission bits (a private output stays private), never its
             * set-user-ID, set-group-ID or sticky bit, as cp without -p does */
            struct stat old_st;
            if (stat(path, &old_st) == 0 && S_ISREG(old_st.st_mode))
                (void)fchmod(fd, old_st.st_mode & 0777);
            break;
        }
        if (errno != EEXIST)
            break;
    }
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return fd;
}

int moe_tmp_commit(const char *tmp, const char *target)
{
    if (rename(tmp, target) != 0) return -1;
    tmp_forget(tmp);
    return 0;
}

void moe_tmp_discard(const char *tmp)
{
    unlink(tmp);
    tmp_forget(tmp);
}

enum moe_status moe_out_open(struct moe_out *o, const char *what, const char *path)
{
    memset(o, 0, sizeof(*o));
    if ((size_t)snprintf(o->path, sizeof(o->path), "%s", path) >= sizeof(o->path))
        return moe_errorf(MOE_EINVAL, "%s %s: path longer than %zu bytes; use a shorter one", what, path,
                          sizeof(o->path) - 1);
    struct stat sb;
    o->existed = stat(path, &sb) == 0;
    o->direct = o->existed && !S_ISREG(sb.st_mode) && !S_ISDIR(sb.st_mode);
    int fd = -1;
    if (o->direct) {
        snprintf(o->tmp, sizeof(o->tmp), "%s", path);
        o->f = fopen(path, "w");
    } else if ((fd = moe_create_tmp(path, o->tmp, sizeof(o->tmp), o->target, sizeof(o->target))) >= 0 &&
               !(o->f = fdopen(fd, "w"))) {
        int e = errno;
        close(fd);
        moe_tmp_discard(o->tmp);
        errno = e;
    }
    if (!o->f) return moe_errorf(MOE_EIO, "%s %s: cannot create: %s", what, path, strerror(errno));
    return MOE_OK;
}

enum moe_status moe_out_close(struct moe_out *o, const char *what)
{
    if (!o->f) return MOE_OK;
    enum moe_status st = MOE_OK;
    int err = 0;
    errno = 0;
    if (fflush(o->f) != 0 || ferror(o->f)) err = errno ? errno : EIO;
    if (fclose(o->f) != 0 && !err) err = errno ? errno : EIO;
    o->f = NULL;
    if (err)
        st = moe_errorf(MOE_EIO, "%s %s: write failed (%s)%s", what, o->path, strerror(err),
                        o->direct ? "" : o->existed ? "; the file was left as it was" : "; no file was made");
    else if (!o->direct && moe_tmp_commit(o->tmp, o->target) != 0)
        st = moe_errorf(MOE_EIO, "%s %s: cannot rename %s into place: %s", what, o->path, o->tmp, strerror(errno));
    if (st && !o->direct) moe_tmp_discard(o->tmp);
    return st;
}

void moe_out_abort(struct moe_out *o)
{
    if (!o->f) return;
    fclose(o->f);
    o->f = NULL;
    if (!o->direct) moe_tmp_discard(o->tmp);
}

static void on_ending_signal(int sig)
{
    for (int i = 0; i < TMP_SLOTS; i++)
        if (atomic_load(&tmp_state[i]) == TMP_LIVE) unlink(tmp_names[i]);
    raise(sig); /* SA_RESETHAND: the default action now */
}

void moe_tmp_remove_on_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_ending_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < MOE_ARRAY_LEN(ending_signals); i++) {
        struct sigaction old;
        /* a signal ignored by the parent (nohup, a shell's background job) stays ignored */
        if (sigaction(ending_signals[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
            sigaction(ending_signals[i], &sa, NULL);
    }
}

/* The bundled model as `cmake --install` lays it out beside the binary (MOEFLOW_INSTALLED_MODEL_REL: from the
 * binary's directory), when it is there; else the one the build was configured with (the source tree's). */
static char default_model[4096];
static pthread_once_t default_model_once = PTHREAD_ONCE_INIT;

static void find_default_model(void)
{
    snprintf(default_model, sizeof(default_model), "%s", MOEFLOW_DEFAULT_MODEL_DIR);
#ifdef MOEFLOW_INSTALLED_MODEL_REL
    char exe[4096], cand[8192], real[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash)
        return;
    *slash = 0;
    snprintf(cand, sizeof(cand), "%s/%s/config.json", exe, MOEFLOW_INSTALLED_MODEL_REL);
    if (!realpath(cand, real) || strlen(real) >= sizeof(default_model))
        return;
    *strrchr(real, '/') = 0;
    memcpy(default_model, real, strlen(real) + 1);
#endif
}

const char *moe_default_model_dir(void)
{
    const char *e = getenv("MOEFLOW_MODEL");
    if (e && *e) return e;
    pthread_once(&default_model_once, find_default_model);
    return default_model;
}
