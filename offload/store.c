/* Expert store: packer and validating opener (see store.h, docs/expert-store.md). */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

struct moe_store {
    char path[4096];
    struct moe_store_info info;
    struct moe_store_record *rec;   /* [n_records] */
    int32_t *index;                 /* [n_layers * n_experts] record index or -1 */
};

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}
static uint64_t align_up(uint64_t x) { return (x + MOE_STORE_ALIGN - 1) / MOE_STORE_ALIGN * MOE_STORE_ALIGN; }

/* Fixed-header field offsets (docs/expert-store.md). */
enum {
    H_MAGIC = 0, H_VERSION = 8, H_HEADER_BYTES = 12, H_MODEL = 16, H_FAMILY = 80, H_LAYERS = 84,
    H_HIDDEN = 88, H_INTER = 92, H_EXPERTS = 96, H_TOPK = 100, H_NREC = 104, H_FLAGS = 108,
    H_FINGERPRINT = 112, H_GATE = 120, H_UP = 128, H_DOWN = 136, H_RECBYTES = 144,
    H_STRIDE = 152, H_DATA = 160, H_HCHECK = 168, H_DTYPE = 176, /* char[8] */
    H_BLOCK_ROWS = 184, H_BLOCK_COLS = 188,
};

#define FINGERPRINT_BYTES 64 /* of each expert matrix, as the checkpoint stores it */

uint64_t moe_store_fingerprint(const struct moe_model *m)
{
    const struct moe_config *c = &m->cfg;
    XXH3_state_t *xs = XXH3_createState();
    if (!xs) return 0;
    XXH3_64bits_reset(xs);
    for (int l = 0; l < c->n_layers; l++) {
        if (!c->is_moe[l]) continue;
        const struct moe_wview *r = &m->layers[l].router;
        if (r->data) XXH3_64bits_update(xs, r->data, (size_t)r->nbytes);
        /* and the first bytes of every expert matrix: weights trained with the router frozen (expert
         * fine-tuning) differ there, at the cost of one page of each matrix read */
        for (int e = 0; e < c->n_experts; e++) {
            const struct moe_expert_w *x = moe_model_expert(m, l, e);
            const struct moe_wview *w3[3] = { &x->gate, &x->up, &x->down };
            for (int k = 0; k < 3; k++)
                if (w3[k]->data)
                    XXH3_64bits_update(xs, w3[k]->data, (size_t)(w3[k]->nbytes < FINGERPRINT_BYTES ? w3[k]->nbytes
                                                                                                     : FINGERPRINT_BYTES));
        }
    }
    uint64_t f = XXH3_64bits_digest(xs);
    XXH3_freeState(xs);
    return f;
}

enum moe_status moe_store_info_of(const struct moe_model *m, struct moe_store_info *out)
{
    const struct moe_config *c = &m->cfg;
    memset(out, 0, sizeof(*out));
    moe_model_dir_name(m->dir, out->model, sizeof(out->model)); /* as trace and train-predictor record it */
    out->family = (uint32_t)c->family;
    out->n_layers = (uint32_t)c->n_layers;
    out->hidden = (uint32_t)c->hidden;
    out->expert_inter = (uint32_t)c->expert_inter;
    out->n_experts = (uint32_t)c->n_experts;
    out->top_k = (uint32_t)c->top_k;
    bool first = true;
    for (int l = 0; l < c->n_layers; l++) {
        if (!c->is_moe[l]) continue;
        out->n_records += (uint32_t)c->n_experts;
        const struct moe_expert_w *x = moe_model_expert(m, l, 0);
        if (first) { /* as the records hold them: an FP8 checkpoint's experts as FP8 records */
            out->dtype = moe_wview_stored_dtype(&x->gate);
            if (x->gate.scale) {
                out->block_rows = (uint32_t)x->gate.block_rows;
                out->block_cols = (uint32_t)x->gate.block_cols;
            }
            out->gate_bytes = moe_wview_stored_bytes(&x->gate);
            out->up_bytes = moe_wview_stored_bytes(&x->up);
            out->down_bytes = moe_wview_stored_bytes(&x->down);
            first = false;
        }
    }
    if (first) return moe_errorf(MOE_EINVAL, "%s: model has no MoE layer, nothing to pack", m->dir);
    out->record_bytes = out->gate_bytes + out->up_bytes + out->down_bytes;
    out->record_stride = align_up(out->record_bytes);
    out->data_offset = align_up(MOE_STORE_FIXED + (uint64_t)out->n_records * MOE_STORE_ENTRY);
    return MOE_OK;
}

/* gate + up + down is the record's size and the stride that size rounded up to MOE_STORE_ALIGN, with
 * no sum wrapping modulo 2^64 (a wrapped stride of 0 would put every record's end at its offset). */
static bool sizes_fit(const struct moe_store_info *in)
{
    uint64_t gate_up, sum, top;
    return moe_add_u64(in->gate_bytes, in->up_bytes, &gate_up) && moe_add_u64(gate_up, in->down_bytes, &sum) &&
           sum == in->record_bytes && moe_add_u64(in->record_bytes, MOE_STORE_ALIGN - 1, &top) &&
           in->record_stride == align_up(in->record_bytes);
}

/* Block factors only with FP8 records, and then the three matrices' sizes are those of their FP8
 * records (model.h). */
static bool blocks_fit(const struct moe_store_info *in)
{
    if (in->dtype != MOE_DT_F8_E4M3) return in->block_rows == 0 && in->block_cols == 0;
    if (in->block_rows == 0 || in->block_cols == 0 || in->block_rows > (1u << 20) || in->block_cols > (1u << 20))
        return false;
    int br = (int)in->block_rows, bc = (int)in->block_cols;
    uint64_t mat = moe_fp8_record_bytes(in->expert_inter, in->hidden, br, bc);
    return in->gate_bytes == mat && in->up_bytes == mat &&
           in->down_bytes == moe_fp8_record_bytes(in->hidden, in->expert_inter, br, bc);
}

static void encode_header(const struct moe_store_info *in, const struct moe_store_record *rec,
                          uint8_t *h)
{
    memset(h, 0, in->data_offset);
    memcpy(h + H_MAGIC, MOE_STORE_MAGIC, 8);
    put32(h + H_VERSION, MOE_STORE_VERSION);
    put32(h + H_HEADER_BYTES, MOE_STORE_FIXED + in->n_records * MOE_STORE_ENTRY);
    memcpy(h + H_MODEL, in->model, strnlen(in->model, 63));
    put32(h + H_FAMILY, in->family);
    put32(h + H_LAYERS, in->n_layers);
    put32(h + H_HIDDEN, in->hidden);
    put32(h + H_INTER, in->expert_inter);
    put32(h + H_EXPERTS, in->n_experts);
    put32(h + H_TOPK, in->top_k);
    put32(h + H_NREC, in->n_records);
    put64(h + H_FINGERPRINT, in->fingerprint);
    put64(h + H_GATE, in->gate_bytes);
    put64(h + H_UP, in->up_bytes);
    put64(h + H_DOWN, in->down_bytes);
    put64(h + H_RECBYTES, in->record_bytes);
    put64(h + H_STRIDE, in->record_stride);
    put64(h + H_DATA, in->data_offset);
    const char *dn = moe_dtype_name(in->dtype);
    memcpy(h + H_DTYPE, dn, strnlen(dn, 8));
    put32(h + H_BLOCK_ROWS, in->block_rows);
    put32(h + H_BLOCK_COLS, in->block_cols);
    for (uint32_t i = 0; i < in->n_records; i++) {
        uint8_t *e = h + MOE_STORE_FIXED + (size_t)i * MOE_STORE_ENTRY;
        put32(e, rec[i].layer);
        put32(e + 4, rec[i].expert);
        put64(e + 8, rec[i].offset);
        put64(e + 16, rec[i].size);
        put64(e + 24, rec[i].checksum);
    }
    uint32_t hb = MOE_STORE_FIXED + in->n_records * MOE_STORE_ENTRY;
    put64(h + H_HCHECK, XXH3_64bits(h, hb)); /* computed with the field zero */
}

static enum moe_status write_all(int fd, const void *buf, size_t len, uint64_t off, const char *path)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return moe_errorf(MOE_EIO, "%s: write at offset %llu failed: %s", path,
                                      (unsigned long long)off, w < 0 ? strerror(errno) : "no progress");
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return MOE_OK;
}

enum moe_status moe_store_pack(const struct moe_model *m, const char *path,
                               moe_store_progress_fn progress, void *ud)
{
    struct moe_store_info in;
    enum moe_status st = moe_store_info_of(m, &in);
    if (st) return st;
    in.fingerprint = moe_store_fingerprint(m);
    char tmp[4200] = "", target[PATH_MAX]; /* the file being written, once created, and the one it becomes */
    struct moe_store_record *rec = calloc(in.n_records, sizeof(*rec));
    uint8_t *buf = calloc(1, in.record_stride);
    uint8_t *hdr = calloc(1, in.data_offset);
    int fd = -1;
    if (!rec || !buf || !hdr) {
        st = moe_errorf(MOE_ENOMEM, "pack: cannot allocate %llu-byte record buffer",
                        (unsigned long long)in.record_stride);
        goto out;
    }
    fd = moe_create_tmp(path, tmp, sizeof(tmp), target, sizeof(target));
    if (fd < 0) {
        st = moe_errorf(MOE_EIO, "%s: cannot create %s: %s", path, tmp, strerror(errno));
        tmp[0] = 0;
        goto out;
    }
    uint32_t i = 0;
    uint64_t off = in.data_offset;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        if (!m->cfg.is_moe[l]) continue;
        for (int e = 0; e < m->cfg.n_experts; e++, i++) {
            const struct moe_expert_w *x = moe_model_expert(m, l, e);
            if (moe_wview_stored_bytes(&x->gate) != in.gate_bytes || moe_wview_stored_bytes(&x->up) != in.up_bytes ||
                moe_wview_stored_bytes(&x->down) != in.down_bytes || moe_wview_stored_dtype(&x->gate) != in.dtype) {
                st = moe_errorf(MOE_EFORMAT, "pack: layer %d expert %d differs in size or dtype "
                                "from the first expert", l, e);
                goto out;
            }
            moe_wview_copy_stored(&x->gate, buf);
            moe_wview_copy_stored(&x->up, buf + in.gate_bytes);
            moe_wview_copy_stored(&x->down, buf + in.gate_bytes + in.up_bytes);
            rec[i] = (struct moe_store_record){ .layer = (uint32_t)l, .expert = (uint32_t)e,
                                                .offset = off, .size = in.record_bytes,
                                                .checksum = XXH3_64bits(buf, in.record_bytes) };
            if ((st = write_all(fd, buf, in.record_stride, off, tmp))) goto out;
            off += in.record_stride;
            if (progress) progress(ud, i + 1, in.n_records);
        }
    }
    /* the records were copied from the checkpoint's mapping: a shard that shrank meanwhile gave zeros,
     * which the checksums would vouch for */
    if ((st = moe_model_check_files(m))) goto out;
    encode_header(&in, rec, hdr);
    if ((st = write_all(fd, hdr, in.data_offset, 0, tmp))) goto out;
    if (fsync(fd) != 0) {
        st = moe_errorf(MOE_EIO, "%s: fsync failed: %s", tmp, strerror(errno));
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        st = moe_errorf(MOE_EIO, "%s: close failed: %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    if (moe_tmp_commit(tmp, target) != 0) st = moe_errorf(MOE_EIO, "%s: cannot rename to %s: %s", tmp, path,
                                                strerror(errno));
out:
    if (fd >= 0) close(fd);
    if (st && tmp[0]) moe_tmp_discard(tmp);
    free(rec);
    free(buf);
    free(hdr);
    return st;
}

void moe_store_close(struct moe_store *s)
{
    if (!s) return;
    free(s->rec);
    free(s->index);
    free(s);
}

static enum moe_status mismatch(const char *path, const char *field, unsigned long long have,
                                unsigned long long want, const char *mdir)
{
    return moe_errorf(MOE_EFORMAT, "%s: expert store was written for another model (%s %llu, the "
                      "model in %s has %llu): re-run `moeflow pack --model %s`", path, field, have,
                      mdir, want, mdir);
}

/* The store's identity and shape against the model's: refused as written for another model (or other
 * weights) before an index of its layers x experts is allocated and its record table parsed. */
static enum moe_status check_model(const char *path, const struct moe_store_info *in, const struct moe_model *m)
{
    struct moe_store_info want_in;
    enum moe_status st = moe_store_info_of(m, &want_in);
    if (st) return st;
    const char *md = m->dir;
    if (in->family != want_in.family) st = mismatch(path, "family", in->family, want_in.family, md);
    else if (in->n_layers != want_in.n_layers) st = mismatch(path, "layers", in->n_layers, want_in.n_layers, md);
    else if (in->n_experts != want_in.n_experts) st = mismatch(path, "experts", in->n_experts, want_in.n_experts, md);
    else if (in->hidden != want_in.hidden) st = mismatch(path, "hidden_size", in->hidden, want_in.hidden, md);
    else if (in->expert_inter != want_in.expert_inter) st = mismatch(path, "expert intermediate size", in->expert_inter, want_in.expert_inter, md);
    else if (in->top_k != want_in.top_k) st = mismatch(path, "top_k", in->top_k, want_in.top_k, md);
    else if (in->dtype != want_in.dtype)
        st = moe_errorf(MOE_EFORMAT, "%s: expert store holds %s records, the model in %s is served from %s "
                        "ones%s: re-run `moeflow pack --model %s`", path, moe_dtype_name(in->dtype), md,
                        moe_dtype_name(want_in.dtype),
                        want_in.dtype == MOE_DT_F8_E4M3 ? " (FP8 experts are stored as FP8 now)" : "", md);
    else if (in->block_rows != want_in.block_rows) st = mismatch(path, "FP8 block rows", in->block_rows, want_in.block_rows, md);
    else if (in->block_cols != want_in.block_cols) st = mismatch(path, "FP8 block columns", in->block_cols, want_in.block_cols, md);
    else if (in->n_records != want_in.n_records) st = mismatch(path, "records", in->n_records, want_in.n_records, md);
    else if (in->record_bytes != want_in.record_bytes) st = mismatch(path, "record bytes", in->record_bytes, want_in.record_bytes, md);
    /* the split of a record, not only its sum: convert() reads each part where it says */
    else if (in->gate_bytes != want_in.gate_bytes) st = mismatch(path, "gate bytes", in->gate_bytes, want_in.gate_bytes, md);
    else if (in->up_bytes != want_in.up_bytes) st = mismatch(path, "up bytes", in->up_bytes, want_in.up_bytes, md);
    else if (in->down_bytes != want_in.down_bytes) st = mismatch(path, "down bytes", in->down_bytes, want_in.down_bytes, md);
    /* the fingerprint is read from the checkpoint's mapping: a shard that shrank is said, not other weights */
    else if (in->fingerprint != (want_in.fingerprint = moe_store_fingerprint(m)) &&
             (st = moe_model_check_files(m)) == MOE_OK)
        st = moe_errorf(MOE_EFORMAT, "%s: expert store was written for other weights (weights "
                        "fingerprint %016llx, the model in %s has %016llx): re-run `moeflow "
                        "pack --model %s`", path, (unsigned long long)in->fingerprint, md,
                        (unsigned long long)want_in.fingerprint, md);
    return st;
}

struct moe_store *moe_store_open(const char *path, const struct moe_model *m)
{
    struct moe_store *s = calloc(1, sizeof(*s));
    uint8_t fixed[MOE_STORE_FIXED], *hdr = NULL;
    /* not blocking: a FIFO would wait for a writer in open() */
    int fd = path[0] ? open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) : -1;
    enum moe_status st = MOE_OK;
    if (!s) {
        st = moe_errorf(MOE_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    if (!path[0]) {
        st = moe_errorf(MOE_EINVAL, "the expert store's path is empty: give the file moeflow pack wrote");
        goto out;
    }
    snprintf(s->path, sizeof(s->path), "%s", path);
    if (fd < 0) {
        st = moe_errorf(MOE_EIO, "%s: cannot open expert store: %s", path, strerror(errno));
        goto out;
    }
    struct stat sb;
    bool have_sb = fstat(fd, &sb) == 0;
    if (have_sb && S_ISDIR(sb.st_mode)) {
        st = moe_errorf(MOE_EIO, "%s: is a directory; give the store file (moeflow pack --out FILE)", path);
        goto out;
    }
    if (have_sb && !S_ISREG(sb.st_mode)) {
        st = moe_errorf(MOE_EIO, "%s: not a regular file (a pipe or device cannot be read at offsets); give "
                        "the store file (moeflow pack --out FILE)", path);
        goto out;
    }
    if (!have_sb) {
        st = moe_errorf(MOE_EIO, "%s: cannot stat expert store: %s", path, strerror(errno));
        goto out;
    }
    ssize_t got = (uint64_t)sb.st_size < sizeof(fixed) ? 0 : pread(fd, fixed, sizeof(fixed), 0);
    if (got < 0) {
        st = moe_errorf(MOE_EIO, "%s: cannot read the expert store header: %s", path, strerror(errno));
        goto out;
    }
    if (got != (ssize_t)sizeof(fixed)) {
        st = moe_errorf(MOE_EFORMAT, "%s: %lld bytes, too short for an expert store (its fixed header alone is %u "
                        "bytes): the file is truncated or not a store; write it with `moeflow pack`", path,
                        (long long)sb.st_size, MOE_STORE_FIXED);
        goto out;
    }
    if (memcmp(fixed + H_MAGIC, MOE_STORE_MAGIC, 8)) {
        st = moe_errorf(MOE_EFORMAT, "%s: not a moeflow expert store (bad magic); write one with "
                        "`moeflow pack`", path);
        goto out;
    }
    uint32_t ver = get32(fixed + H_VERSION);
    if (ver != MOE_STORE_VERSION) {
        st = moe_errorf(MOE_EFORMAT, "%s: expert store format version %u, this build reads version "
                        "%u: re-run `moeflow pack`", path, ver, MOE_STORE_VERSION);
        goto out;
    }
    struct moe_store_info *in = &s->info;
    memcpy(in->model, fixed + H_MODEL, 63);
    in->family = get32(fixed + H_FAMILY);
    in->n_layers = get32(fixed + H_LAYERS);
    in->hidden = get32(fixed + H_HIDDEN);
    in->expert_inter = get32(fixed + H_INTER);
    in->n_experts = get32(fixed + H_EXPERTS);
    in->top_k = get32(fixed + H_TOPK);
    in->n_records = get32(fixed + H_NREC);
    in->fingerprint = get64(fixed + H_FINGERPRINT);
    in->gate_bytes = get64(fixed + H_GATE);
    in->up_bytes = get64(fixed + H_UP);
    in->down_bytes = get64(fixed + H_DOWN);
    in->record_bytes = get64(fixed + H_RECBYTES);
    in->record_stride = get64(fixed + H_STRIDE);
    in->data_offset = get64(fixed + H_DATA);
    in->block_rows = get32(fixed + H_BLOCK_ROWS);
    in->block_cols = get32(fixed + H_BLOCK_COLS);
    char dn[9] = {0};
    memcpy(dn, fixed + H_DTYPE, 8);
    uint32_t hb = get32(fixed + H_HEADER_BYTES);
    uint64_t nk = (uint64_t)in->n_layers * in->n_experts;
    if (!moe_dtype_parse(dn, &in->dtype) || in->n_layers == 0 || in->n_layers > MOE_MAX_LAYERS ||
        in->n_experts == 0 || in->n_experts > (1u << 20) || in->n_records == 0 ||
        in->n_records > nk || in->n_records % in->n_experts ||
        hb != MOE_STORE_FIXED + (uint64_t)in->n_records * MOE_STORE_ENTRY || in->data_offset != align_up(hb) ||
        in->record_bytes == 0 || !sizes_fit(in) || !blocks_fit(in)) {
        st = moe_errorf(MOE_EFORMAT, "%s: inconsistent expert store header (dtype '%s', %u records, "
                        "header %u bytes): the file is damaged; re-run `moeflow pack`", path, dn,
                        in->n_records, hb);
        goto out;
    }
    if ((uint64_t)sb.st_size < in->data_offset) {
        st = moe_errorf(MOE_EFORMAT, "%s: %lld bytes, shorter than its header and record table (%llu bytes): the "
                        "file is truncated; re-run `moeflow pack`", path, (long long)sb.st_size,
                        (unsigned long long)in->data_offset);
        goto out;
    }
    /* Every record takes a stride of at least MOE_STORE_ALIGN bytes after the table, and a MoE layer
     * stores all its experts (n_experts divides n_records): so the index of layers x experts allocated
     * below is at most a quarter of the file's size (MOE_MAX_LAYERS x 4 bytes per 4 KiB record), whatever
     * the header claims; with a model, the store's shape is the model's before it is allocated. */
    uint64_t data_bytes, data_end;
    if (!moe_mul_u64(in->n_records, in->record_stride, &data_bytes) ||
        !moe_add_u64(in->data_offset, data_bytes, &data_end) || data_end > (uint64_t)sb.st_size) {
        st = moe_errorf(MOE_EFORMAT, "%s: %lld bytes, shorter than its header and %u records of %llu bytes: the "
                        "file is truncated; re-run `moeflow pack`", path, (long long)sb.st_size, in->n_records,
                        (unsigned long long)in->record_stride);
        goto out;
    }
    if (!(hdr = malloc(hb))) {
        st = moe_errorf(MOE_ENOMEM, "%s: out of memory for %u records", path, in->n_records);
        goto out;
    }
    if ((got = pread(fd, hdr, hb, 0)) != (ssize_t)hb) {
        st = moe_errorf(MOE_EIO, "%s: cannot read the record table: %s", path,
                        got < 0 ? strerror(errno) : "the file shrank while it was read");
        goto out;
    }
    uint64_t want = get64(hdr + H_HCHECK);
    put64(hdr + H_HCHECK, 0);
    if (XXH3_64bits(hdr, hb) != want) {
        st = moe_errorf(MOE_ECHECKSUM, "%s: header checksum mismatch: the file is damaged; re-run "
                        "`moeflow pack`", path);
        goto out;
    }
    if (m && (st = check_model(path, in, m))) goto out;
    s->rec = calloc(in->n_records, sizeof(*s->rec));
    s->index = malloc(nk * sizeof(int32_t));
    if (!s->rec || !s->index) {
        st = moe_errorf(MOE_ENOMEM, "%s: out of memory for %u records", path, in->n_records);
        goto out;
    }
    for (uint64_t k = 0; k < nk; k++) s->index[k] = -1;
    for (uint32_t i = 0; i < in->n_records; i++) {
        const uint8_t *e = hdr + MOE_STORE_FIXED + (size_t)i * MOE_STORE_ENTRY;
        struct moe_store_record *r = &s->rec[i];
        r->layer = get32(e);
        r->expert = get32(e + 4);
        r->offset = get64(e + 8);
        r->size = get64(e + 16);
        r->checksum = get64(e + 24);
        uint64_t end;
        if (r->layer >= in->n_layers || r->expert >= in->n_experts || r->size != in->record_bytes ||
            r->offset % MOE_STORE_ALIGN || r->offset < in->data_offset ||
            !moe_add_u64(r->offset, in->record_stride, &end) || end > (uint64_t)sb.st_size ||
            s->index[(size_t)r->layer * in->n_experts + r->expert] >= 0) {
            st = moe_errorf(MOE_EFORMAT, "%s: record %u (layer %u expert %u) has a bad offset, size "
                            "or duplicate entry, or the file is truncated: re-run `moeflow pack`",
                            path, i, r->layer, r->expert);
            goto out;
        }
        s->index[(size_t)r->layer * in->n_experts + r->expert] = (int32_t)i;
    }
    if (m) {
        /* every MoE expert needs its record: the count matches, so a record on a dense layer leaves
         * an expert without one, which moe_store_find would not find when it is needed */
        for (int l = 0; l < m->cfg.n_layers && !st; l++)
            for (int e = 0; m->cfg.is_moe[l] && e < m->cfg.n_experts && !st; e++)
                if (s->index[(size_t)l * in->n_experts + (size_t)e] < 0)
                    st = moe_errorf(MOE_EFORMAT, "%s: no record for layer %d expert %d (the table lists a layer "
                                    "without experts instead): re-run `moeflow pack --model %s`", path, l, e, m->dir);
        if (st) goto out;
    }
out:
    free(hdr);
    if (fd >= 0) close(fd);
    if (st) {
        moe_store_close(s);
        return NULL;
    }
    return s;
}

const struct moe_store_info *moe_store_get_info(const struct moe_store *s) { return &s->info; }
const char *moe_store_path(const struct moe_store *s) { return s->path; }

const struct moe_store_record *moe_store_find(const struct moe_store *s, int layer, int expert)
{
    if (layer < 0 || expert < 0 || (uint32_t)layer >= s->info.n_layers ||
        (uint32_t)expert >= s->info.n_experts)
        return NULL;
    int32_t i = s->index[(size_t)layer * s->info.n_experts + (size_t)expert];
    return i >= 0 ? &s->rec[i] : NULL;
}

bool moe_store_verify(const struct moe_store_record *r, const void *buf)
{
    return XXH3_64bits(buf, (size_t)r->size) == r->checksum;
}
