/* Strict safetensors reader (mmap or in-memory image) and writer.
 *
 * File layout: u64 little-endian header length N, N bytes of UTF-8 JSON
 * (an object: tensor name -> {dtype, shape, data_offsets}, plus an optional
 * "__metadata__" object of string -> string), then the data section.  Every
 * data_offsets pair is relative to the start of the data section.  This
 * reader refuses anything the format does not allow, and also anything that
 * is legal JSON but cannot be a well-formed checkpoint: gaps, overlaps,
 * trailing bytes, sizes that disagree with dtype x shape. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    size_t size;
} dtype_info[MOE_DT_COUNT] = {
    [MOE_DT_F32] = { "F32", 4 },  [MOE_DT_F16] = { "F16", 2 }, [MOE_DT_BF16] = { "BF16", 2 },
    [MOE_DT_F64] = { "F64", 8 },  [MOE_DT_I64] = { "I64", 8 }, [MOE_DT_I32] = { "I32", 4 },
    [MOE_DT_I16] = { "I16", 2 },  [MOE_DT_I8] = { "I8", 1 },   [MOE_DT_U8] = { "U8", 1 },
    [MOE_DT_BOOL] = { "BOOL", 1 },
    [MOE_DT_F8_E4M3] = { "F8_E4M3", 1 }, [MOE_DT_F8_E5M2] = { "F8_E5M2", 1 },
};

size_t moe_dtype_size(enum moe_dtype dt)
{
    return (unsigned)dt < MOE_DT_COUNT ? dtype_info[dt].size : 0;
}

const char *moe_dtype_name(enum moe_dtype dt)
{
    return (unsigned)dt < MOE_DT_COUNT ? dtype_info[dt].name : "?";
}

bool moe_dtype_parse(const char *name, enum moe_dtype *out)
{
    for (int i = 0; i < MOE_DT_COUNT; i++) {
        if (!strcmp(name, dtype_info[i].name)) {
            *out = (enum moe_dtype)i;
            return true;
        }
    }
    return false;
}

struct st_meta {
    char *key, *value;
};

struct moe_st_file {
    char *what;                   /* path or caller's name, for messages */
    const uint8_t *base;          /* whole image */
    size_t size;                  /* bytes of the image */
    bool mapped;                  /* base is our mmap */
    struct moe_st_tensor *t;      /* [n], sorted by file offset */
    size_t n;
    size_t *by_name;              /* [n] indices into t, sorted by name */
    struct st_meta *meta;         /* [n_meta] */
    size_t n_meta;
    int guard;                    /* slot of st_guards holding the mapping; -1: none */
};

/* Mapped files whose pages cannot be read any more.  A page of a mapping past the file's end (the file
 * truncated or rewritten in place after it was mapped) or whose read fails raises SIGBUS on access, which
 * would end the process.  The handler puts zero pages over the rest of such a mapping, from the page that
 * faulted, and marks it damaged, so the access completes and moe_st_check reports the file; a fault
 * elsewhere goes to the handler that was there before.  The slots are process-wide as the signal
 * disposition is: a slot is claimed by setting hi, published by setting lo, freed in the reverse order. */
#define ST_GUARD_SLOTS 4096
static struct st_guard {
    _Atomic uintptr_t lo;     /* first byte of the mapping; 0: none (the handler skips the slot) */
    _Atomic uintptr_t hi;     /* one past its last byte; 0: slot free */
    atomic_bool damaged;      /* a fault was repaired with zero pages */
} st_guards[ST_GUARD_SLOTS];
static struct sigaction st_prev_bus; /* the disposition before st_on_sigbus */
static uintptr_t st_page = 4096;
static pthread_once_t st_guard_once = PTHREAD_ONCE_INIT;

static void st_on_sigbus(int sig, siginfo_t *si, void *uc)
{
    int saved = errno;
    uintptr_t a = (uintptr_t)si->si_addr;
    for (size_t i = 0; si->si_code > 0 && i < ST_GUARD_SLOTS; i++) { /* > 0: a fault, not a kill() */
        uintptr_t lo = atomic_load(&st_guards[i].lo), hi = atomic_load(&st_guards[i].hi);
        if (!lo || a < lo || a >= hi) continue;
        uintptr_t pg = a & ~(st_page - 1);
        if (mmap((void *)pg, hi - pg, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
            break;
        atomic_store(&st_guards[i].damaged, true);
        errno = saved;
        return; /* the access is made again, on zeros */
    }
    if (st_prev_bus.sa_flags & SA_SIGINFO) {
        st_prev_bus.sa_sigaction(sig, si, uc);
    } else if (st_prev_bus.sa_handler != SIG_DFL && st_prev_bus.sa_handler != SIG_IGN) {
        st_prev_bus.sa_handler(sig);
    } else { /* the default action, once the access faults again */
        struct sigaction dfl = { .sa_handler = SIG_DFL };
        sigemptyset(&dfl.sa_mask);
        sigaction(SIGBUS, &dfl, NULL);
    }
    errno = saved;
}

static void st_guard_install(void)
{
    long pg = sysconf(_SC_PAGESIZE);
    if (pg > 0) st_page = (uintptr_t)pg;
    struct sigaction sa = { .sa_sigaction = st_on_sigbus, .sa_flags = SA_SIGINFO | SA_RESTART };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &st_prev_bus);
}

/* A slot for the mapping [p, p + n), or -1 when all are taken (the mapping is then left unguarded). */
static int st_guard_add(const void *p, size_t n)
{
    pthread_once(&st_guard_once, st_guard_install);
    for (int i = 0; i < ST_GUARD_SLOTS; i++) {
        uintptr_t free_hi = 0;
        if (atomic_compare_exchange_strong(&st_guards[i].hi, &free_hi, (uintptr_t)p + n)) {
            atomic_store(&st_guards[i].damaged, false);
            atomic_store(&st_guards[i].lo, (uintptr_t)p);
            return i;
        }
    }
    return -1;
}

static void st_guard_remove(int i)
{
    if (i < 0) return;
    atomic_store(&st_guards[i].lo, 0);
    atomic_store(&st_guards[i].hi, 0);
}

/* Offset of the first invalid UTF-8 sequence in s[0..len), or len if valid.
 * Rejects overlong forms, surrogates and code points above U+10FFFF. */
static size_t utf8_invalid_at(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t need;
        uint32_t cp, min;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) { need = 1; cp = c & 0x1f; min = 0x80; }
        else if (c >= 0xe0 && c <= 0xef) { need = 2; cp = c & 0x0f; min = 0x800; }
        else if (c >= 0xf0 && c <= 0xf4) { need = 3; cp = c & 0x07; min = 0x10000; }
        else return i;
        if (len - i <= need) return i;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += need + 1;
    }
    return len;
}

static int cmp_offset(const void *a, const void *b)
{
    const struct moe_st_tensor *x = a, *y = b;
    uint64_t xb = x->file_offset, yb = y->file_offset;
    if (xb != yb) return xb < yb ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* (name, index) pairs, sorted by name to build the lookup index. */
struct name_ref {
    const char *name;
    size_t idx;
};

static int cmp_name_ref(const void *a, const void *b)
{
    return strcmp(((const struct name_ref *)a)->name, ((const struct name_ref *)b)->name);
}

void moe_st_close(struct moe_st_file *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) free((char *)f->t[i].name);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->meta);
    free(f->t);
    free(f->by_name);
    st_guard_remove(f->guard);
    if (f->mapped && f->base) munmap((void *)f->base, f->size);
    free(f->what);
    free(f);
}

static enum moe_status parse_metadata(struct moe_st_file *f, json_t *md)
{
    const char *k;
    json_t *v;
    if (!json_is_object(md))
        return moe_errorf(MOE_EFORMAT, "%s: \"__metadata__\" must be an object of strings", f->what);
    f->meta = calloc(json_object_size(md) + 1, sizeof(*f->meta));
    if (!f->meta) return moe_errorf(MOE_ENOMEM, "%s: out of memory for metadata", f->what);
    json_object_foreach(md, k, v) {
        if (!json_is_string(v))
            return moe_errorf(MOE_EFORMAT, "%s: \"__metadata__\" value of \"%s\" must be a string",
                              f->what, k);
        f->meta[f->n_meta].key = strdup(k);
        f->meta[f->n_meta].value = strdup(json_string_value(v));
        f->n_meta++;
        if (!f->meta[f->n_meta - 1].key || !f->meta[f->n_meta - 1].value)
            return moe_errorf(MOE_ENOMEM, "%s: out of memory for metadata", f->what);
    }
    return MOE_OK;
}

/* Fill t from one header entry; data_begin/data_end relative to the data section. */
static enum moe_status parse_tensor(struct moe_st_file *f, const char *name, json_t *v,
                                   struct moe_st_tensor *t, uint64_t *begin, uint64_t *end)
{
    json_t *dt, *shape, *offs, *x;
    const char *k;
    size_t i;
    uint64_t numel = 1, nbytes;

    if (!json_is_object(v))
        return moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\": entry must be an object", f->what, name);
    json_object_foreach(v, k, x) {
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\": unknown key \"%s\"", f->what, name, k);
    }
    dt = json_object_get(v, "dtype");
    shape = json_object_get(v, "shape");
    offs = json_object_get(v, "data_offsets");
    if (!json_is_string(dt))
        return moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\": \"dtype\" missing or not a string",
                          f->what, name);
    if (!moe_dtype_parse(json_string_value(dt), &t->dtype)) {
        char known[128] = "";
        for (int d = 0; d < MOE_DT_COUNT; d++)
            snprintf(known + strlen(known), sizeof(known) - strlen(known), "%s%s", d ? " " : "", dtype_info[d].name);
        return moe_errorf(MOE_ENOTSUP, "%s: tensor \"%s\": unknown dtype \"%s\" (known: %s)", f->what, name,
                          json_string_value(dt), known);
    }
    if (!json_is_array(shape))
        return moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\": \"shape\" missing or not an array",
                          f->what, name);
    if (json_array_size(shape) > MOE_ST_MAX_DIMS)
        return moe_errorf(MOE_ENOTSUP, "%s: tensor \"%s\": %zu dimensions, at most %d supported",
                          f->what, name, json_array_size(shape), MOE_ST_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    json_array_foreach(shape, i, x) {
        json_int_t d;
        if (!json_is_integer(x) || (d = json_integer_value(x)) < 0)
            return moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\": shape[%zu] must be a non-negative "
                              "integer", f->what, name, i);
        t->shape[i] = (int64_t)d;
        if (!moe_mul_u64(numel, (uint64_t)d, &numel))
            return moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\": element count of the shape overflows "
                              "64 bits", f->what, name);
    }
    if (!moe_mul_u64(numel, moe_dtype_size(t->dtype), &nbytes))
        return moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\": %llu elements x %zu bytes (%s) overflows "
                          "64 bits", f->what, name, (unsigned long long)numel,
                          moe_dtype_size(t->dtype), moe_dtype_name(t->dtype));
    if (!json_is_array(offs) || json_array_size(offs) != 2 || !json_is_integer(json_array_get(offs, 0)) ||
        !json_is_integer(json_array_get(offs, 1)) || json_integer_value(json_array_get(offs, 0)) < 0 ||
        json_integer_value(json_array_get(offs, 1)) < 0)
        return moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\": \"data_offsets\" must be [begin, end] with "
                          "non-negative integers", f->what, name);
    *begin = (uint64_t)json_integer_value(json_array_get(offs, 0));
    *end = (uint64_t)json_integer_value(json_array_get(offs, 1));
    if (*end < *begin)
        return moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\": data_offsets end %llu is before begin %llu",
                          f->what, name, (unsigned long long)*end, (unsigned long long)*begin);
    if (*end - *begin != nbytes)
        return moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\": dtype %s x %llu elements = %llu bytes, but "
                          "data_offsets [%llu, %llu) hold %llu bytes", f->what, name,
                          moe_dtype_name(t->dtype), (unsigned long long)numel,
                          (unsigned long long)nbytes, (unsigned long long)*begin,
                          (unsigned long long)*end, (unsigned long long)(*end - *begin));
    t->numel = numel;
    t->nbytes = nbytes;
    return MOE_OK;
}

/* Parse and check the image in f->base[0..f->size). */
static enum moe_status st_parse(struct moe_st_file *f)
{
    uint64_t hlen, data_size, cursor = 0;
    const uint8_t *h;
    size_t bad, i = 0;
    json_error_t jerr;
    json_t *root = NULL, *v;
    const char *k;
    enum moe_status st = MOE_OK;

    if (f->size < 8)
        return moe_errorf(MOE_EFORMAT, "%s: file is %zu bytes, too short for the 8-byte header length "
                          "(truncated?)", f->what, f->size);
    hlen = 0;
    for (int b = 7; b >= 0; b--) hlen = (hlen << 8) | f->base[b];
    if (hlen == 0)
        return moe_errorf(MOE_EFORMAT, "%s: header length is 0 (a header needs at least \"{}\")", f->what);
    if (hlen > MOE_ST_MAX_HEADER)
        return moe_errorf(MOE_EFORMAT, "%s: header length %llu exceeds the %u-byte limit (corrupt or "
                          "not a safetensors file)", f->what, (unsigned long long)hlen,
                          (unsigned)MOE_ST_MAX_HEADER);
    if (hlen > f->size - 8)
        return moe_errorf(MOE_EFORMAT, "%s: header length %llu runs past the end of the %zu-byte file "
                          "(truncated?)", f->what, (unsigned long long)hlen, f->size);
    h = f->base + 8;
    data_size = f->size - 8 - hlen;
    bad = utf8_invalid_at(h, (size_t)hlen);
    if (bad != hlen)
        return moe_errorf(MOE_EFORMAT, "%s: header is not valid UTF-8 (byte 0x%02x at header offset %zu)",
                          f->what, h[bad], bad);
    if (h[0] != '{')
        return moe_errorf(MOE_EFORMAT, "%s: header is not a JSON object (starts with 0x%02x, expected '{')",
                          f->what, h[0]);
    root = json_loadb((const char *)h, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (strstr(jerr.text, "duplicate"))
            return moe_errorf(MOE_EFORMAT, "%s: header has a duplicate key: %s", f->what, jerr.text);
        return moe_errorf(MOE_EFORMAT, "%s: header is not valid JSON: %s (header offset %d)", f->what,
                          jerr.text, jerr.position);
    }
    if (!json_is_object(root)) {
        st = moe_errorf(MOE_EFORMAT, "%s: header is not a JSON object", f->what);
        goto out_json;
    }
    f->t = calloc(json_object_size(root) + 1, sizeof(*f->t));
    if (!f->t) {
        st = moe_errorf(MOE_ENOMEM, "%s: out of memory for %zu tensors", f->what, json_object_size(root));
        goto out_json;
    }
    json_object_foreach(root, k, v) {
        struct moe_st_tensor *t = &f->t[f->n];
        uint64_t begin = 0, end = 0;
        if (!strcmp(k, "__metadata__")) {
            if ((st = parse_metadata(f, v)) != MOE_OK) goto out_json;
            continue;
        }
        if ((st = parse_tensor(f, k, v, t, &begin, &end)) != MOE_OK) goto out_json;
        if (end > data_size) {
            st = moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\": data_offsets [%llu, %llu) run past the end "
                            "of the %llu-byte data section (file truncated?)", f->what, k,
                            (unsigned long long)begin, (unsigned long long)end,
                            (unsigned long long)data_size);
            goto out_json;
        }
        t->name = strdup(k);
        if (!t->name) {
            st = moe_errorf(MOE_ENOMEM, "%s: out of memory", f->what);
            goto out_json;
        }
        t->file_offset = 8 + hlen + begin;
        t->data = f->base + t->file_offset;
        f->n++;
    }
    json_decref(root);
    root = NULL;

    /* Byte ranges: sorted by offset, each must start where the previous ended. */
    qsort(f->t, f->n, sizeof(*f->t), cmp_offset);
    for (i = 0; i < f->n; i++) {
        uint64_t b = f->t[i].file_offset - 8 - hlen;
        if (b > cursor)
            return moe_errorf(MOE_EFORMAT, "%s: gap of %llu unused bytes in the data section before "
                              "tensor \"%s\" (offset %llu; previous tensor ends at %llu)", f->what,
                              (unsigned long long)(b - cursor), f->t[i].name,
                              (unsigned long long)b, (unsigned long long)cursor);
        if (b < cursor)
            return moe_errorf(MOE_EFORMAT, "%s: byte ranges overlap: tensor \"%s\" starts at %llu, "
                              "inside tensor \"%s\" which ends at %llu", f->what, f->t[i].name,
                              (unsigned long long)b, i ? f->t[i - 1].name : "?",
                              (unsigned long long)cursor);
        cursor = b + f->t[i].nbytes;
    }
    if (cursor != data_size)
        return moe_errorf(MOE_EFORMAT, "%s: %llu trailing bytes after the last tensor (data section "
                          "is %llu bytes, tensors cover %llu)", f->what,
                          (unsigned long long)(data_size - cursor), (unsigned long long)data_size,
                          (unsigned long long)cursor);

    /* Name index for lookups. */
    {
        struct name_ref *refs = calloc(f->n + 1, sizeof(*refs));
        f->by_name = calloc(f->n + 1, sizeof(*f->by_name));
        if (!refs || !f->by_name) {
            free(refs);
            return moe_errorf(MOE_ENOMEM, "%s: out of memory", f->what);
        }
        for (i = 0; i < f->n; i++) refs[i] = (struct name_ref){ f->t[i].name, i };
        qsort(refs, f->n, sizeof(*refs), cmp_name_ref);
        for (i = 0; i < f->n; i++) f->by_name[i] = refs[i].idx;
        free(refs);
    }
    return MOE_OK;

out_json:
    json_decref(root);
    return st;
}

struct moe_st_file *moe_st_open_memory(const void *buf, size_t len, const char *what)
{
    struct moe_st_file *f = calloc(1, sizeof(*f));
    if (!f) {
        moe_errorf(MOE_ENOMEM, "%s: out of memory", what ? what : "safetensors image");
        return NULL;
    }
    f->guard = -1;
    f->what = strdup(what ? what : "safetensors image");
    f->base = buf;
    f->size = len;
    if (!f->what || (!buf && len)) {
        moe_errorf(MOE_EINVAL, "safetensors image: NULL buffer or out of memory");
        moe_st_close(f);
        return NULL;
    }
    if (!buf) f->base = (const uint8_t *)"";
    if (st_parse(f) != MOE_OK) {
        moe_st_close(f);
        return NULL;
    }
    return f;
}

struct moe_st_file *moe_st_open(const char *path)
{
    struct moe_st_file *f = calloc(1, sizeof(*f));
    struct stat sb;
    int fd = -1;
    void *p;

    if (f) f->guard = -1;
    if (!f || !(f->what = strdup(path))) {
        moe_errorf(MOE_ENOMEM, "%s: out of memory", path);
        goto out_free;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO: refused below, not waited on for a writer */
    if (fd < 0) {
        moe_errorf(errno == ENOENT ? MOE_ENOENT : MOE_EIO, "%s: cannot open: %s", path, strerror(errno));
        goto out_free;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        moe_errorf(MOE_EIO, "%s: not a regular file", path);
        goto out_close;
    }
    f->size = (size_t)sb.st_size;
    if (f->size >= 8) {
        p = mmap(NULL, f->size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            moe_errorf(MOE_EIO, "%s: mmap of %zu bytes failed: %s", path, f->size, strerror(errno));
            goto out_close;
        }
        f->base = p;
        f->mapped = true;
        f->guard = st_guard_add(p, f->size);
    } else {
        f->base = (const uint8_t *)"";
    }
    close(fd);
    fd = -1;
    /* a file that shrank before it was mapped reads as zeros past its end: said so, whatever the parse said */
    bool parsed = st_parse(f) == MOE_OK;
    if (moe_st_check(f) != MOE_OK || !parsed) goto out_free;
    return f;

out_close:
    close(fd);
out_free:
    moe_st_close(f);
    return NULL;
}

size_t moe_st_count(const struct moe_st_file *f) { return f->n; }

const struct moe_st_tensor *moe_st_at(const struct moe_st_file *f, size_t i)
{
    return i < f->n ? &f->t[i] : NULL;
}

const struct moe_st_tensor *moe_st_find(const struct moe_st_file *f, const char *name)
{
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->t[f->by_name[mid]].name);
        if (!c) return &f->t[f->by_name[mid]];
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

const char *moe_st_path(const struct moe_st_file *f) { return f->what; }

enum moe_status moe_st_check(const struct moe_st_file *f)
{
    if (f->guard < 0 || !atomic_load(&st_guards[f->guard].damaged)) return MOE_OK;
    return moe_errorf(MOE_EIO, "%s: part of the file could not be read once it was mapped: it shrank (truncated or "
                      "rewritten in place while in use?) or a read failed, and its data from there on read as zeros; "
                      "restart once the file is whole", f->what);
}

const char *moe_st_metadata(const struct moe_st_file *f, const char *key)
{
    for (size_t i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta[i].key, key)) return f->meta[i].value;
    return NULL;
}

/* Writer: header JSON in the given order, padded with spaces to a multiple of
 * 8 bytes, then the tensors back to back.  Written to a new path.tmp.* file
 * and renamed, so a reader never sees a half-written file. */
enum moe_status moe_st_write(const char *path, const struct moe_st_out *t, size_t n,
                             const char *const *meta_kv)
{
    json_t *root = json_object(), *md = NULL;
    char *hdr = NULL, *tmp = NULL;
    FILE *fp = NULL;
    uint64_t off = 0, *sizes = NULL;
    enum moe_status st = MOE_OK;
    size_t hlen, plen;

    sizes = calloc(n + 1, sizeof(*sizes));
    if (!root || !sizes) {
        st = moe_errorf(MOE_ENOMEM, "%s: out of memory building the header", path);
        goto out;
    }
    if (meta_kv && meta_kv[0]) {
        md = json_object();
        if (!md || json_object_set_new(root, "__metadata__", md)) {
            st = moe_errorf(MOE_ENOMEM, "%s: out of memory", path);
            goto out;
        }
        for (size_t i = 0; meta_kv[i]; i += 2) {
            if (!meta_kv[i + 1]) {
                st = moe_errorf(MOE_EINVAL, "%s: metadata key \"%s\" has no value", path, meta_kv[i]);
                goto out;
            }
            /* the header is JSON: a key or value must be UTF-8 to be written as it is */
            json_t *v = json_string(meta_kv[i + 1]);
            if (!v) {
                st = moe_errorf(MOE_EINVAL, "%s: metadata \"%s\": the value is not valid UTF-8", path, meta_kv[i]);
                goto out;
            }
            if (json_object_set_new(md, meta_kv[i], v)) {
                st = moe_errorf(MOE_EINVAL, "%s: metadata key \"%s\" is not valid UTF-8", path, meta_kv[i]);
                goto out;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t numel = 1;
        json_t *e, *shape;
        if (!t[i].name || !t[i].name[0] || !strcmp(t[i].name, "__metadata__") ||
            json_object_get(root, t[i].name)) {
            st = moe_errorf(MOE_EINVAL, "%s: tensor %zu: empty, reserved or duplicate name \"%s\"", path,
                            i, t[i].name ? t[i].name : "(null)");
            goto out;
        }
        if ((unsigned)t[i].dtype >= MOE_DT_COUNT || t[i].ndim < 0 || t[i].ndim > MOE_ST_MAX_DIMS) {
            st = moe_errorf(MOE_EINVAL, "%s: tensor \"%s\": bad dtype or ndim %d", path, t[i].name,
                            t[i].ndim);
            goto out;
        }
        shape = json_array();
        for (int d = 0; d < t[i].ndim; d++) {
            if (t[i].shape[d] < 0 || !moe_mul_u64(numel, (uint64_t)t[i].shape[d], &numel)) {
                json_decref(shape);
                st = moe_errorf(MOE_EINVAL, "%s: tensor \"%s\": bad shape[%d] = %lld", path, t[i].name, d,
                                (long long)t[i].shape[d]);
                goto out;
            }
            json_array_append_new(shape, json_integer(t[i].shape[d]));
        }
        if (!moe_mul_u64(numel, moe_dtype_size(t[i].dtype), &sizes[i]) ||
            !moe_add_u64(off, sizes[i], &off) || (sizes[i] && !t[i].data)) {
            json_decref(shape);
            st = moe_errorf(MOE_EINVAL, "%s: tensor \"%s\": size overflows or data is NULL", path,
                            t[i].name);
            goto out;
        }
        e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", moe_dtype_name(t[i].dtype), "shape", shape,
                      "data_offsets", (json_int_t)(off - sizes[i]), (json_int_t)off);
        if (!e || json_object_set_new(root, t[i].name, e)) {
            st = moe_errorf(MOE_ENOMEM, "%s: out of memory building the header", path);
            goto out;
        }
    }
    hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!hdr) {
        st = moe_errorf(MOE_ENOMEM, "%s: cannot serialise the header", path);
        goto out;
    }
    hlen = strlen(hdr);
    plen = (hlen + 7) / 8 * 8;
    size_t tcap = PATH_MAX + 48; /* beside the file a link at path names */
    tmp = malloc(tcap + PATH_MAX);
    char *target = tmp + tcap; /* that file */
    if (!tmp) {
        st = moe_errorf(MOE_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    int fd = moe_create_tmp(path, tmp, tcap, target, PATH_MAX);
    if (fd < 0 || !(fp = fdopen(fd, "wb"))) {
        st = moe_errorf(MOE_EIO, "%s: cannot create %s: %s", path, tmp, strerror(errno));
        if (fd >= 0) {
            close(fd);
            moe_tmp_discard(tmp);
        }
        goto out;
    }
    {
        uint8_t lenb[8];
        for (int b = 0; b < 8; b++) lenb[b] = (uint8_t)((uint64_t)plen >> (8 * b));
        if (fwrite(lenb, 1, 8, fp) != 8 || fwrite(hdr, 1, hlen, fp) != hlen) goto out_werr;
        for (size_t p = hlen; p < plen; p++)
            if (fputc(' ', fp) == EOF) goto out_werr;
        for (size_t i = 0; i < n; i++)
            if (sizes[i] && fwrite(t[i].data, 1, (size_t)sizes[i], fp) != sizes[i]) goto out_werr;
    }
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) goto out_werr;
    if (fclose(fp) != 0) {
        fp = NULL;
        goto out_werr;
    }
    fp = NULL;
    if (moe_tmp_commit(tmp, target) != 0) {
        st = moe_errorf(MOE_EIO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        moe_tmp_discard(tmp);
    }
    goto out;

out_werr:
    st = moe_errorf(MOE_EIO, "%s: write failed: %s", tmp, strerror(errno));
    if (fp) fclose(fp);
    fp = NULL;
    moe_tmp_discard(tmp);
out:
    free(tmp);
    free(hdr);
    free(sizes);
    json_decref(root);
    return st;
}
