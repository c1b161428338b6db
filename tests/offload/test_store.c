/* Expert store: pack round trip for every fixture family, refusal of a store
 * of another model or version, damaged headers, and a record with one flipped
 * byte failing only the requests that need it, with an error naming layer and
 * expert.  Headers whose checksum was recomputed after an edit (a buggy
 * writer's, or a crafted one) are checked field by field: a record split that
 * wraps to the right sum, a record size whose stride wraps to 0, a record table
 * listing a layer without experts. */
#include "../../offload/tiered.h"
#include "offload_test_common.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <xxhash.h>

static void flip_byte(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    REQUIRE(fd >= 0, "open %s", path);
    unsigned char b;
    REQUIRE(pread(fd, &b, 1, (off_t)off) == 1, "pread");
    b ^= 0x10;
    REQUIRE(pwrite(fd, &b, 1, (off_t)off) == 1, "pwrite");
    close(fd);
}

/* Set the n-byte little-endian field at off of the store's header (the
 * record table included) to v, and recompute the header checksum. */
static void set_field(const char *path, uint64_t off, int n, uint64_t v)
{
    int fd = open(path, O_RDWR);
    REQUIRE(fd >= 0, "open %s", path);
    uint8_t fixed[MOE_STORE_FIXED];
    REQUIRE(pread(fd, fixed, sizeof(fixed), 0) == (ssize_t)sizeof(fixed), "pread");
    uint32_t hb = (uint32_t)fixed[12] | (uint32_t)fixed[13] << 8 | (uint32_t)fixed[14] << 16 |
                  (uint32_t)fixed[15] << 24;
    uint8_t *h = malloc(hb);
    REQUIRE(h && pread(fd, h, hb, 0) == (ssize_t)hb && off + (uint64_t)n <= hb, "header");
    for (int i = 0; i < n; i++) h[off + (uint64_t)i] = (uint8_t)(v >> (8 * i));
    memset(h + 168, 0, 8);
    uint64_t sum = XXH3_64bits(h, hb);
    for (int i = 0; i < 8; i++) h[168 + i] = (uint8_t)(sum >> (8 * i));
    REQUIRE(pwrite(fd, h, hb, 0) == (ssize_t)hb, "pwrite");
    free(h);
    close(fd);
}

static void copy_file(const char *from, const char *to)
{
    char *buf;
    size_t len;
    REQUIRE(moe_read_file(from, &buf, &len, 1u << 30) == MOE_OK, "read %s", from);
    FILE *f = fopen(to, "wb");
    REQUIRE(f && fwrite(buf, 1, len, f) == len, "write %s", to);
    fclose(f);
    free(buf);
}

/* The process's peak resident memory so far, in MiB. */
static long peak_rss_mib(void)
{
    struct rusage ru;
    REQUIRE(getrusage(RUSAGE_SELF, &ru) == 0, "getrusage");
    return ru.ru_maxrss / 1024;
}

/* A header that claims 256 layers x 2^20 experts, whose index of layers x experts would take 1 GiB, is
 * refused before that index is allocated: with 32 records (the store of `from`, mixtral's, its
 * checksum redone) as inconsistent, with or without a model (a MoE layer stores all its experts, so the
 * records are a multiple of the experts); with 2^20 records in a file as long as they need (4 GiB,
 * sparse), as written for another model.  Neither open raises the peak resident memory by the 1 GiB
 * the index takes. */
static void check_huge_claims(const char *from, const char *other, const struct moe_model *mx)
{
    copy_file(from, other);
    set_field(other, 84, 4, MOE_MAX_LAYERS);
    set_field(other, 96, 4, 1u << 20);
    long before = peak_rss_mib();
    CHECK(!moe_store_open(other, mx) && strstr(moe_last_error(), "inconsistent"),
          "32 records for 256 x 2^20 experts, with a model: %s", moe_last_error());
    CHECK(!moe_store_open(other, NULL) && strstr(moe_last_error(), "inconsistent"),
          "32 records for 256 x 2^20 experts, without a model: %s", moe_last_error());
    long grew = peak_rss_mib() - before;
    CHECK(grew < 512, "opening a store that claims 256 x 2^20 experts raised the peak resident memory by %ld MiB",
          grew);

    uint8_t fixed[MOE_STORE_FIXED];
    int fd = open(from, O_RDONLY);
    REQUIRE(fd >= 0 && pread(fd, fixed, sizeof(fixed), 0) == (ssize_t)sizeof(fixed), "read %s", from);
    close(fd);
    uint64_t stride = 0;
    for (int i = 0; i < 8; i++) stride |= (uint64_t)fixed[152 + i] << (8 * i);
    uint32_t n = 1u << 20, hb = MOE_STORE_FIXED + n * MOE_STORE_ENTRY;
    uint64_t data = (hb + MOE_STORE_ALIGN - 1) / MOE_STORE_ALIGN * MOE_STORE_ALIGN;
    const struct { int off, len; uint64_t v; } fields[] = {
        { 84, 4, MOE_MAX_LAYERS }, { 96, 4, n }, { 104, 4, n }, { 12, 4, hb }, { 160, 8, data }, { 168, 8, 0 },
    };
    for (size_t f = 0; f < MOE_ARRAY_LEN(fields); f++)
        for (int i = 0; i < fields[f].len; i++) fixed[fields[f].off + i] = (uint8_t)(fields[f].v >> (8 * i));
    uint8_t *h = calloc(1, hb); /* the record table: zeros */
    REQUIRE(h, "out of memory");
    memcpy(h, fixed, sizeof(fixed));
    uint64_t sum = XXH3_64bits(h, hb);
    free(h);
    for (int i = 0; i < 8; i++) fixed[168 + i] = (uint8_t)(sum >> (8 * i));
    fd = open(other, O_WRONLY | O_TRUNC);
    REQUIRE(fd >= 0 && ftruncate(fd, (off_t)(data + (uint64_t)n * stride)) == 0 &&
                pwrite(fd, fixed, sizeof(fixed), 0) == (ssize_t)sizeof(fixed), "write %s", other);
    close(fd);
    before = peak_rss_mib();
    CHECK(!moe_store_open(other, mx) && strstr(moe_last_error(), "another model (layers 256"),
          "2^20 records for 256 x 2^20 experts, with a model: %s", moe_last_error());
    grew = peak_rss_mib() - before;
    CHECK(grew < 512, "opening a store of 2^20 records for 256 x 2^20 experts with a model raised the peak resident "
          "memory by %ld MiB", grew);
    unlink(other);
}

/* An FP8 checkpoint's record: F8_E4M3 with the config's blocks, each matrix's codes as the checkpoint
 * holds them, and decoded, the BF16 values the loader widens FP8 matrices to. */
static void check_fp8_record(const struct moe_model *m, const struct moe_store_info *in, const struct moe_expert_w *x,
                             const uint8_t *rec, const char *what)
{
    const struct moe_wview *w[3] = { &x->gate, &x->up, &x->down };
    uint64_t bf16 = 0, at = 0;
    for (int k = 0; k < 3; k++) bf16 += (uint64_t)w[k]->rows * (uint64_t)w[k]->cols * 2;
    CHECK(in->dtype == MOE_DT_F8_E4M3 && in->block_rows == (uint32_t)m->cfg.fp8_block[0] &&
              in->block_cols == (uint32_t)m->cfg.fp8_block[1] && in->record_bytes < bf16 / 2 + bf16 / 8,
          "%s: FP8 record dtype %d, blocks %ux%u, %llu bytes (BF16 %llu)", what, (int)in->dtype, in->block_rows,
          in->block_cols, (unsigned long long)in->record_bytes, (unsigned long long)bf16);
    for (int k = 0; k < 3; k++) {
        size_t n = (size_t)(w[k]->rows * w[k]->cols);
        uint16_t *a = malloc(n * 2), *b = malloc(n * 2);
        REQUIRE(a && b, "out of memory");
        moe_fp8_record_decode(rec + at, w[k]->rows, w[k]->cols, m->cfg.fp8_block[0], m->cfg.fp8_block[1], a, NULL);
        moe_wview_fp8_to_bf16(w[k], b);
        CHECK(!memcmp(rec + at, w[k]->data, n) && !memcmp(a, b, n * 2), "%s: FP8 record matrix %d", what, k);
        at += moe_wview_stored_bytes(w[k]);
        free(a);
        free(b);
    }
}

int main(void)
{
    char p[512], store[600], other[600];
    const char *dir = t_tmp_make("/tmp");
    REQUIRE(dir, "mkdtemp");
    struct moe_model *mx = NULL;
    for (size_t i = 0; i < MOE_ARRAY_LEN(t_models); i++) {
        struct moe_model *m = moe_model_open(t_path(p, sizeof(p), t_models[i]));
        REQUIRE(m, "open %s: %s", t_models[i], moe_last_error());
        snprintf(store, sizeof(store), "%s/s%zu.moestore", dir, i);
        REQUIRE(moe_store_pack(m, store, NULL, NULL) == MOE_OK, "pack %s: %s", t_models[i],
                moe_last_error());
        struct moe_store *s = moe_store_open(store, m);
        REQUIRE(s, "open store of %s: %s", t_models[i], moe_last_error());
        const struct moe_store_info *in = moe_store_get_info(s);
        CHECK(in->record_stride % MOE_STORE_ALIGN == 0 && in->data_offset % MOE_STORE_ALIGN == 0,
              "alignment");
        /* Every record holds gate|up|down exactly as in the safetensors files. */
        uint8_t *buf = malloc(in->record_stride);
        int fd = open(store, O_RDONLY);
        for (int l = 0; l < m->cfg.n_layers; l++) {
            for (int e = 0; e < m->cfg.n_experts; e++) {
                const struct moe_store_record *r = moe_store_find(s, l, e);
                if (!m->cfg.is_moe[l]) {
                    CHECK(!r, "dense layer %d has a record", l);
                    continue;
                }
                REQUIRE(r, "%s: no record for layer %d expert %d", t_models[i], l, e);
                CHECK(r->offset % MOE_STORE_ALIGN == 0, "record offset alignment");
                REQUIRE(pread(fd, buf, in->record_stride, (off_t)r->offset) ==
                        (ssize_t)in->record_stride, "pread");
                CHECK(moe_store_verify(r, buf), "%s: checksum layer %d expert %d", t_models[i], l, e);
                /* the record is the expert's matrices as stored (an FP8 checkpoint's as FP8 records) */
                const struct moe_expert_w *x = moe_model_expert(m, l, e);
                size_t mb[3];
                uint8_t *want = t_expert_stored(m, l, e, mb);
                CHECK(mb[0] + mb[1] + mb[2] == in->record_bytes && !memcmp(buf, want, in->record_bytes),
                      "%s: record bytes layer %d expert %d", t_models[i], l, e);
                if (!x->gate.scale) /* BF16 / F32 checkpoints: their bytes as they are */
                    CHECK(!memcmp(buf, x->gate.data, x->gate.nbytes), "%s: gate bytes layer %d expert %d",
                          t_models[i], l, e);
                else if (l == 2 && e == 0) /* FP8: its codes, then F32 block factors, about half of BF16 */
                    check_fp8_record(m, in, x, buf, t_models[i]);
                free(want);
            }
        }
        close(fd);
        free(buf);
        moe_store_close(s);
        if (i == 0) mx = m;
        else moe_model_close(m);
    }
    snprintf(store, sizeof(store), "%s/s0.moestore", dir);
    snprintf(other, sizeof(other), "%s/huge.moestore", dir);
    check_huge_claims(store, other, mx);
    /* A store written for another model is refused, naming the reason. */
    snprintf(store, sizeof(store), "%s/s1.moestore", dir); /* qwen2_moe's */
    CHECK(!moe_store_open(store, mx), "qwen2 store accepted for mixtral");
    CHECK(strstr(moe_last_error(), "another model") && strstr(moe_last_error(), "moeflow pack"),
          "error: %s", moe_last_error());

    /* Another format version is refused; so is a damaged header. */
    snprintf(store, sizeof(store), "%s/s0.moestore", dir);
    snprintf(other, sizeof(other), "%s/v1.moestore", dir);
    copy_file(store, other);
    {
        int fd = open(other, O_RDWR);
        unsigned char v1[4] = { 1, 0, 0, 0 }; /* the version before the fingerprint read the experts */
        REQUIRE(pwrite(fd, v1, 4, 8) == 4, "pwrite");
        close(fd);
    }
    CHECK(!moe_store_open(other, mx), "version 1 store accepted");
    CHECK(strstr(moe_last_error(), "version 1") && strstr(moe_last_error(), "moeflow pack"), "error: %s",
          moe_last_error());

    /* The same model with other expert weights, its routers as they were (experts fine-tuned with the
     * router frozen): the store is refused for other weights */
    {
        char md[600], f[700];
        snprintf(md, sizeof(md), "%s/ft", dir);
        REQUIRE(mkdir(md, 0700) == 0, "mkdir %s", md);
        static const char *const files[] = { "config.json", "model.safetensors" };
        for (size_t k = 0; k < MOE_ARRAY_LEN(files); k++) {
            char from[700];
            snprintf(from, sizeof(from), "%s/%s", t_path(p, sizeof(p), t_models[0]), files[k]);
            snprintf(f, sizeof(f), "%s/%s", md, files[k]);
            copy_file(from, f);
        }
        /* the first byte of layer 1 expert 2's down matrix, found in the copy by its bytes */
        const struct moe_wview *dw = &moe_model_expert(mx, 1, 2)->down;
        FILE *fp = fopen(f, "rb");
        REQUIRE(fp, "%s", f);
        fseek(fp, 0, SEEK_END);
        long fsz = ftell(fp);
        rewind(fp);
        char *all = malloc((size_t)fsz);
        REQUIRE(all && fread(all, 1, (size_t)fsz, fp) == (size_t)fsz, "read %s", f);
        fclose(fp);
        const char *at = memmem(all, (size_t)fsz, dw->data, 64);
        REQUIRE(at && !memmem(at + 1, (size_t)(all + fsz - at - 1), dw->data, 64), "down matrix not found once");
        flip_byte(f, (uint64_t)(at - all));
        free(all);
        struct moe_model *ft = moe_model_open(md);
        REQUIRE(ft, "open %s: %s", md, moe_last_error());
        CHECK(!moe_store_open(store, ft) && strstr(moe_last_error(), "other weights"),
              "a store of other expert weights accepted: %s", moe_last_error());
        moe_model_close(ft);
    }
    copy_file(store, other);
    flip_byte(other, MOE_STORE_FIXED + 8); /* first record's offset in the table */
    CHECK(!moe_store_open(other, mx), "damaged table accepted");
    CHECK(moe_last_error()[0], "damaged table gives an error");
    /* a store cut short (an interrupted copy) says so and what to do, whether the cut falls in the fixed
     * header, in the record table or in the records */
    struct moe_store *s = moe_store_open(store, mx);
    REQUIRE(s, "%s", moe_last_error());
    off_t in_records = (off_t)(moe_store_get_info(s)->data_offset + moe_store_get_info(s)->record_stride);
    moe_store_close(s);
    const off_t cuts[] = { 0, 100, MOE_STORE_FIXED + 40, in_records };
    for (size_t k = 0; k < MOE_ARRAY_LEN(cuts); k++) {
        copy_file(store, other);
        REQUIRE(truncate(other, cuts[k]) == 0, "truncate");
        CHECK(!moe_store_open(other, mx) && strstr(moe_last_error(), other) &&
                  strstr(moe_last_error(), "truncated") && strstr(moe_last_error(), "moeflow pack"),
              "a store cut to %lld bytes: %s", (long long)cuts[k], moe_last_error());
    }
    CHECK(!moe_store_open("/nonexistent/x.moestore", mx), "missing file");
    /* a FIFO is refused at once (not waited on for a writer); so is an empty path */
    snprintf(other, sizeof(other), "%s/fifo", dir);
    REQUIRE(mkfifo(other, 0600) == 0, "mkfifo");
    CHECK(!moe_store_open(other, mx) && strstr(moe_last_error(), "not a regular file"), "a FIFO: %s",
          moe_last_error());
    unlink(other);
    CHECK(!moe_store_open("", mx) && strstr(moe_last_error(), "empty"), "an empty path: %s", moe_last_error());

    /* One flipped byte in the record of (layer 1, expert 2). */
    copy_file(store, other);
    s = moe_store_open(other, mx);
    REQUIRE(s, "%s", moe_last_error());
    const struct moe_store_record *bad = moe_store_find(s, 1, 2);
    flip_byte(other, bad->offset + bad->size / 2);
    moe_store_close(s);
    for (int forced = 0; forced < 2; forced++) {
        struct moe_tiered_params tp = { .store_path = other, .dev_slots = mx->cfg.top_k,
                                        .host_slots = 1, .numa_node = -1,
                                        .io = { .no_io_uring = forced } };
        struct moe_provider *prov = moe_provider_tiered_create(mx, &tp);
        REQUIRE(prov, "tiered: %s", moe_last_error());
        struct moe_expert_ref ref[8];
        int need_bad[2] = { 0, 2 }, fine[2] = { 0, 1 };
        enum moe_status st = prov->ops->acquire(prov->self, 1, 2, need_bad, ref);
        CHECK(st == MOE_ECHECKSUM, "corrupt record: status %d", st);
        CHECK(strstr(moe_last_error(), "layer 1 expert 2"), "error must name layer and expert: %s",
              moe_last_error());
        prov->ops->release(prov->self, 1);
        st = prov->ops->acquire(prov->self, 1, 2, fine, ref);
        CHECK(st == MOE_OK, "request without the corrupt expert: %s", moe_last_error());
        prov->ops->release(prov->self, 1);
        st = prov->ops->acquire(prov->self, 1, 1, &need_bad[1], ref);
        CHECK(st == MOE_ECHECKSUM, "retry of the corrupt expert fails again: %d", st);
        prov->ops->release(prov->self, 1);
        struct moe_offload_stats os;
        REQUIRE(moe_provider_tiered_stats(prov, &os), "stats");
        CHECK(os.checksum_failures == 2, "checksum failures %llu", (unsigned long long)os.checksum_failures);
        CHECK(os.fallbacks == (uint64_t)forced, "fallbacks %llu (forced %d)",
              (unsigned long long)os.fallbacks, forced);
        moe_provider_destroy(prov);
    }

    /* gate and up bytes that still sum to the record size, modulo 2^64: a damaged header, with or without
     * a model; without wrapping, the model's split is what refuses them */
    snprintf(store, sizeof(store), "%s/s0.moestore", dir);
    copy_file(store, other);
    s = moe_store_open(other, mx);
    REQUIRE(s, "%s", moe_last_error());
    uint64_t gate = moe_store_get_info(s)->gate_bytes, up = moe_store_get_info(s)->up_bytes;
    moe_store_close(s);
    set_field(other, 120, 8, (uint64_t)0 - 4096);
    set_field(other, 128, 8, up + gate + 4096);
    CHECK(!moe_store_open(other, mx) && strstr(moe_last_error(), "inconsistent"), "wrapped split accepted: %s",
          moe_last_error());
    CHECK(!moe_store_open(other, NULL) && strstr(moe_last_error(), "inconsistent"),
          "wrapped split accepted without a model: %s", moe_last_error());
    set_field(other, 120, 8, gate + 4096);
    set_field(other, 128, 8, up - 4096);
    CHECK(!moe_store_open(other, mx) && strstr(moe_last_error(), "gate bytes"), "shifted split accepted: %s",
          moe_last_error());

    /* A header that holds together only modulo 2^64, opened with no model to compare with (the fuzz
     * target's way): records of 2^64 - 16 bytes, whose stride rounds up to 0, so every record's end
     * is its offset, inside the file */
    {
        copy_file(store, other);
        s = moe_store_open(other, NULL);
        REQUIRE(s, "%s", moe_last_error());
        uint32_t nrec = moe_store_get_info(s)->n_records;
        uint64_t down = moe_store_get_info(s)->down_bytes, rb = (uint64_t)0 - 16;
        moe_store_close(s);
        set_field(other, 120, 8, rb - up - down);
        set_field(other, 144, 8, rb);
        set_field(other, 152, 8, 0);
        for (uint32_t i = 0; i < nrec; i++) set_field(other, MOE_STORE_FIXED + (uint64_t)i * MOE_STORE_ENTRY + 16, 8, rb);
        s = moe_store_open(other, NULL);
        CHECK(!s && strstr(moe_last_error(), "inconsistent"), "records of 2^64 - 16 bytes with stride 0 accepted: %s",
              s ? "opened" : moe_last_error());
        moe_store_close(s);
    }

    /* The right number of records, one layer's on a layer without experts.  Made by packing the
     * model with layer 1 taken as dense (its experts are then not stored) and moving layer 3's
     * records to layer 1. */
    mx->cfg.is_moe[1] = false;
    snprintf(other, sizeof(other), "%s/dense1.moestore", dir);
    REQUIRE(moe_store_pack(mx, other, NULL, NULL) == MOE_OK, "pack: %s", moe_last_error());
    s = moe_store_open(other, mx);
    REQUIRE(s, "store of the model with a dense layer: %s", moe_last_error());
    uint32_t nrec = moe_store_get_info(s)->n_records;
    moe_store_close(s);
    for (uint32_t i = 0; i < nrec; i++) {
        int fd = open(other, O_RDONLY);
        uint8_t layer[4];
        REQUIRE(fd >= 0 && pread(fd, layer, 4, MOE_STORE_FIXED + (off_t)i * MOE_STORE_ENTRY) == 4, "read table");
        close(fd);
        if (layer[0] == 3)
            set_field(other, MOE_STORE_FIXED + (uint64_t)i * MOE_STORE_ENTRY, 4, 1);
    }
    CHECK(!moe_store_open(other, mx) && strstr(moe_last_error(), "no record for layer 3 expert 0"),
          "a record table with a dense layer's records accepted: %s", moe_last_error());
    mx->cfg.is_moe[1] = true;

    /* An FP8 model with a store of BF16 records (as packed before FP8 records, here those of a BF16
     * model of the same shape): refused, saying to re-pack; and FP8 records whose block factors
     * do not fit their sizes are a damaged header. */
    {
        struct moe_model *f8 = moe_model_open(t_path(p, sizeof(p), "tests/fixtures/deepseek-v3-variants/fp8"));
        struct moe_model *bf = moe_model_open(t_path(p, sizeof(p), "tests/fixtures/deepseek-v3-variants/one_group"));
        REQUIRE(f8 && bf, "open: %s", moe_last_error());
        snprintf(other, sizeof(other), "%s/bf16.moestore", dir);
        REQUIRE(moe_store_pack(bf, other, NULL, NULL) == MOE_OK, "pack: %s", moe_last_error());
        CHECK(!moe_store_open(other, f8) && strstr(moe_last_error(), "holds BF16 records") &&
                  strstr(moe_last_error(), "F8_E4M3") && strstr(moe_last_error(), "moeflow pack"),
              "BF16 records for an FP8 model: %s", moe_last_error());
        snprintf(store, sizeof(store), "%s/fp8.moestore", dir);
        REQUIRE(moe_store_pack(f8, store, NULL, NULL) == MOE_OK, "pack: %s", moe_last_error());
        copy_file(store, other);
        set_field(other, 184, 4, 32); /* block rows 32: the factors' bytes no longer fit */
        CHECK(!moe_store_open(other, NULL) && strstr(moe_last_error(), "inconsistent"),
              "FP8 blocks that do not fit: %s", moe_last_error());
        copy_file(store, other);
        set_field(other, 188, 4, 0); /* FP8 without a block size */
        CHECK(!moe_store_open(other, NULL) && strstr(moe_last_error(), "inconsistent"),
              "FP8 without blocks: %s", moe_last_error());
        moe_model_close(f8);
        moe_model_close(bf);
    }

    /* the header names the model directory as trace and train-predictor do: "m/." and "m/" are "m" */
    static const char *const spell[] = { "", "/", "/." };
    for (size_t i = 0; i < MOE_ARRAY_LEN(spell); i++) {
        char md[600];
        snprintf(md, sizeof(md), "%s%s", t_path(p, sizeof(p), "tests/fixtures/hf-tiny/olmoe"), spell[i]);
        struct moe_model *m = moe_model_open(md);
        REQUIRE(m, "open %s: %s", md, moe_last_error());
        struct moe_store_info in;
        REQUIRE(moe_store_info_of(m, &in) == MOE_OK, "info of %s: %s", md, moe_last_error());
        CHECK(!strcmp(in.model, "olmoe"), "model %s recorded as '%s'", md, in.model);
        moe_model_close(m);
    }

    moe_model_close(mx);
    t_tmp_remove(dir);
    return t_result("test_store");
}
