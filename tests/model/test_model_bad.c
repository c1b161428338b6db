/* Malformed checkpoints: one ctest per case (`test_model_bad CASE`).  Each
 * case builds a broken model directory in a fresh temp dir from the Mixtral
 * fixture, opens it, and asserts a refusal whose message names the problem.
 * Cases named ok_* build legal variants (tied embeddings, a dense layer, F32
 * weights) that must open.
 *
 * `test_model_bad --write-corpus DIR` writes the safetensors-level cases,
 * derived from a small valid image, as libFuzzer seeds. */
#include "../test_util.h"
#include "model/model.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIXTURE "tests/fixtures/hf-tiny/mixtral"

struct buf {
    uint8_t *p;
    size_t len;
};

static struct buf buf_from(const void *a, size_t alen, const void *b, size_t blen)
{
    struct buf o = { malloc(alen + blen + 1), alen + blen };
    REQUIRE(o.p != NULL, "malloc");
    if (alen) memcpy(o.p, a, alen);
    if (blen) memcpy(o.p + alen, b, blen);
    return o;
}

/* A parsed safetensors image: header object and the data section. */
struct img {
    json_t *hdr;
    const uint8_t *data;
    size_t dlen;
};

static struct img img_parse(const struct buf *src)
{
    struct img im;
    uint64_t h = 0;
    json_error_t err;
    REQUIRE(src->len >= 8, "source too short");
    for (int i = 7; i >= 0; i--) h = (h << 8) | src->p[i];
    REQUIRE(h <= src->len - 8, "source header");
    im.hdr = json_loadb((const char *)src->p + 8, (size_t)h, 0, &err);
    REQUIRE(im.hdr != NULL, "source header: %s", err.text);
    im.data = src->p + 8 + h;
    im.dlen = src->len - 8 - (size_t)h;
    return im;
}

/* Header text + data, with the true header length (or hlen_override if nonzero). */
static struct buf img_build_text(const char *text, const uint8_t *data, size_t dlen, uint64_t hlen_override)
{
    size_t tl = strlen(text);
    uint64_t h = hlen_override ? hlen_override : tl;
    uint8_t lenb[8];
    struct buf a, o;
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)(h >> (8 * i));
    a = buf_from(lenb, 8, text, tl);
    o = buf_from(a.p, a.len, data, dlen);
    free(a.p);
    return o;
}

static char *hdr_text(json_t *hdr)
{
    char *s = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    REQUIRE(s != NULL, "json_dumps");
    return s;
}

static struct buf img_build(const struct img *im, const uint8_t *data, size_t dlen)
{
    char *s = hdr_text(im->hdr);
    struct buf o = img_build_text(s, data, dlen, 0);
    free(s);
    return o;
}

static json_int_t t_begin(json_t *t) { return json_integer_value(json_array_get(json_object_get(t, "data_offsets"), 0)); }

/* Name of the tensor with the smallest (first) or largest (!first) data offset. */
static const char *by_offset(json_t *hdr, bool first)
{
    const char *k, *best = NULL;
    json_t *v;
    json_int_t bo = 0;
    json_object_foreach(hdr, k, v) {
        if (!strcmp(k, "__metadata__")) continue;
        if (!best || (first ? t_begin(v) < bo : t_begin(v) > bo)) {
            best = k;
            bo = t_begin(v);
        }
    }
    REQUIRE(best != NULL, "no tensors");
    return best;
}

static void set_offsets(json_t *t, json_int_t b, json_int_t e)
{
    json_object_set_new(t, "data_offsets", json_pack("[I,I]", b, e));
}

/* The safetensors-level malformations.  Returns false for an unknown name. */
static bool make_bad_image(const char *name, const struct buf *src, struct buf *out, const char **needle)
{
    struct img im = img_parse(src);
    json_t *t0 = json_object_get(im.hdr, by_offset(im.hdr, true));
    json_t *tl = json_object_get(im.hdr, by_offset(im.hdr, false));
    bool ok = true;

    if (!strcmp(name, "truncated")) {
        *out = buf_from(src->p, src->len / 2, NULL, 0);
        *needle = "truncated";
    } else if (!strcmp(name, "header_len_huge")) {
        *out = buf_from(src->p, src->len, NULL, 0);
        memset(out->p, 0xff, 8);
        *needle = "header length";
    } else if (!strcmp(name, "header_len_zero")) {
        *out = buf_from(src->p, src->len, NULL, 0);
        memset(out->p, 0, 8);
        *needle = "header length is 0";
    } else if (!strcmp(name, "header_not_utf8")) {
        char *s = hdr_text(im.hdr);
        s[2] = (char)0xff; /* first byte of the first key */
        *out = img_build_text(s, im.data, im.dlen, 0);
        free(s);
        *needle = "UTF-8";
    } else if (!strcmp(name, "header_not_json")) {
        char *s = hdr_text(im.hdr);
        *strchr(s, ':') = ';';
        *out = img_build_text(s, im.data, im.dlen, 0);
        free(s);
        *needle = "not valid JSON";
    } else if (!strcmp(name, "duplicate_key")) {
        /* Repeat the first tensor's entry right after the opening brace. */
        const char *k = by_offset(im.hdr, true);
        char *s = hdr_text(im.hdr), *e = json_dumps(t0, JSON_COMPACT | JSON_PRESERVE_ORDER);
        size_t n = strlen(s) + strlen(k) + strlen(e) + 8;
        char *d = malloc(n);
        REQUIRE(e && d, "malloc");
        snprintf(d, n, "{\"%s\":%s,%s", k, e, s + 1);
        *out = img_build_text(d, im.data, im.dlen, 0);
        free(s);
        free(e);
        free(d);
        *needle = "duplicate";
    } else if (!strcmp(name, "overlap")) {
        /* The last tensor moves back by 2 bytes into its predecessor; same size. */
        json_int_t b = t_begin(tl), e = json_integer_value(json_array_get(json_object_get(tl, "data_offsets"), 1));
        set_offsets(tl, b - 2, e - 2);
        *out = img_build(&im, im.data, im.dlen);
        *needle = "overlap";
    } else if (!strcmp(name, "gap")) {
        /* The last tensor moves forward by 8 bytes; the data section grows to match. */
        json_int_t b = t_begin(tl), e = json_integer_value(json_array_get(json_object_get(tl, "data_offsets"), 1));
        uint8_t pad[8] = { 0 };
        struct buf d = buf_from(im.data, im.dlen, pad, 8);
        set_offsets(tl, b + 8, e + 8);
        *out = img_build(&im, d.p, d.len);
        free(d.p);
        *needle = "gap";
    } else if (!strcmp(name, "trailing")) {
        uint8_t pad[16] = { 0 };
        *out = buf_from(src->p, src->len, pad, sizeof(pad));
        *needle = "trailing";
    } else if (!strcmp(name, "numel_overflow")) {
        json_object_set_new(t0, "shape", json_pack("[I,I,i]", (json_int_t)1 << 32, (json_int_t)1 << 32, 4));
        *out = img_build(&im, im.data, im.dlen);
        *needle = "overflow";
    } else if (!strcmp(name, "dtype_size_mismatch")) {
        json_object_set_new(t0, "dtype", json_string("F64"));
        *out = img_build(&im, im.data, im.dlen);
        *needle = "F64";
    } else if (!strcmp(name, "unknown_dtype")) {
        json_object_set_new(t0, "dtype", json_string("Q4_K"));
        *out = img_build(&im, im.data, im.dlen);
        *needle = "Q4_K";
    } else if (!strcmp(name, "offsets_reversed")) {
        set_offsets(t0, 10, 2);
        *out = img_build(&im, im.data, im.dlen);
        *needle = "before begin";
    } else if (!strcmp(name, "negative_shape")) {
        json_object_set_new(t0, "shape", json_pack("[i,i]", -1, 4));
        *out = img_build(&im, im.data, im.dlen);
        *needle = "shape";
    } else {
        ok = false;
    }
    json_decref(im.hdr);
    return ok;
}

static const char *const image_cases[] = {
    "truncated", "header_len_huge", "header_len_zero", "header_not_utf8", "header_not_json",
    "duplicate_key", "overlap", "gap", "trailing", "numel_overflow", "dtype_size_mismatch",
    "unknown_dtype", "offsets_reversed", "negative_shape",
};

/* ---- temp model directories ---- */

static void write_buf(const char *dir, const char *name, const void *p, size_t len)
{
    char path[4200];
    FILE *f;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "wb");
    REQUIRE(f && fwrite(p, 1, len, f) == len && fclose(f) == 0, "write %s: %s", path, strerror(errno));
}

static struct buf read_rel(const char *rel)
{
    char path[4096];
    struct buf b;
    char *p;
    REQUIRE(moe_read_file(t_path(path, sizeof(path), rel), &p, &b.len, 64u << 20) == MOE_OK, "%s: %s", rel,
            moe_last_error());
    b.p = (uint8_t *)p;
    return b;
}

static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[4200];
    if (!d) return;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        if (unlink(path) != 0) rmdir(path); /* the *_is_dir cases' empty directories */
    }
    closedir(d);
    rmdir(dir);
}

/* A fixture's config.json, without drop_field and with patch's keys set. */
static void write_config_from(const char *dir, const char *fixture, const char *drop_field, json_t *patch)
{
    char path[4096], rel[512];
    json_error_t err;
    json_t *j;
    char *s;
    snprintf(rel, sizeof(rel), "%s/config.json", fixture);
    j = json_load_file(t_path(path, sizeof(path), rel), 0, &err);
    REQUIRE(j != NULL, "fixture config: %s", err.text);
    if (drop_field) json_object_del(j, drop_field);
    if (patch) json_object_update(j, patch);
    s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    write_buf(dir, "config.json", s, strlen(s));
    free(s);
    json_decref(j);
    json_decref(patch);
}

static void write_config(const char *dir, const char *drop_field)
{
    write_config_from(dir, FIXTURE, drop_field, NULL);
}

/* How to rewrite a fixture checkpoint. */
struct variant {
    const char *fixture;        /* default FIXTURE */
    const char *drop_prefix;    /* drop tensors whose name starts with this */
    const char *reshape;        /* transpose this 2-D tensor's shape */
    const char *retype;         /* reinterpret this tensor as retype_dt (same element size) */
    enum moe_dtype retype_dt;
    const char *to_f32_prefix;  /* convert BF16 tensors starting with this to F32 ("" = all) */
    const struct moe_st_out *extra; /* tensors appended */
    size_t n_extra;
};

static bool starts_with(const char *s, const char *p) { return p && !strncmp(s, p, strlen(p)); }

static void write_variant_ex(const char *dir, const struct variant *v)
{
    char path[4200], rel[512];
    struct moe_st_file *f;
    struct moe_st_out *o;
    float **conv;
    size_t n = 0, cnt;
    snprintf(rel, sizeof(rel), "%s/model.safetensors", v->fixture ? v->fixture : FIXTURE);
    f = moe_st_open(t_path(path, sizeof(path), rel));
    REQUIRE(f != NULL, "fixture: %s", moe_last_error());
    cnt = moe_st_count(f);
    o = calloc(cnt + v->n_extra, sizeof(*o));
    conv = calloc(cnt, sizeof(*conv));
    REQUIRE(o && conv, "calloc");
    for (size_t i = 0; i < cnt; i++) {
        const struct moe_st_tensor *t = moe_st_at(f, i);
        if (starts_with(t->name, v->drop_prefix)) continue;
        o[n] = (struct moe_st_out){ .name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data };
        memcpy(o[n].shape, t->shape, sizeof(t->shape));
        if (v->reshape && !strcmp(t->name, v->reshape)) {
            o[n].shape[0] = t->shape[1];
            o[n].shape[1] = t->shape[0];
        }
        if (v->retype && !strcmp(t->name, v->retype)) o[n].dtype = v->retype_dt;
        if (starts_with(t->name, v->to_f32_prefix) && t->dtype == MOE_DT_BF16) {
            struct moe_wview w = moe_wview_from_tensor(t);
            conv[i] = malloc((size_t)t->numel * sizeof(float) + 1);
            REQUIRE(conv[i] != NULL, "malloc");
            moe_wview_to_f32(&w, conv[i]);
            o[n].dtype = MOE_DT_F32;
            o[n].data = conv[i];
        }
        n++;
    }
    for (size_t i = 0; i < v->n_extra; i++) o[n++] = v->extra[i];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    REQUIRE(moe_st_write(path, o, n, (const char *const[]){ "format", "pt", NULL }) == MOE_OK, "write: %s",
            moe_last_error());
    for (size_t i = 0; i < cnt; i++) free(conv[i]);
    free(conv);
    free(o);
    moe_st_close(f);
}

/* Rewrite the fixture checkpoint without `drop` and with `reshape` transposed. */
static void write_variant(const char *dir, const char *drop, const char *reshape)
{
    struct variant v = { .drop_prefix = drop, .reshape = reshape };
    write_variant_ex(dir, &v);
}

/* Sharded layout over a copy of the fixture; `extra` adds one weight_map entry. */
static void write_index(const char *dir, const char *other_name, const char *other_shard)
{
    char path[4200];
    struct moe_st_file *f = moe_st_open(t_path(path, sizeof(path), FIXTURE "/model.safetensors"));
    json_t *map = json_object(), *root;
    struct buf b = read_rel(FIXTURE "/model.safetensors");
    char *s;
    REQUIRE(f != NULL, "fixture: %s", moe_last_error());
    write_buf(dir, "model-00001-of-00002.safetensors", b.p, b.len);
    free(b.p);
    for (size_t i = 0; i < moe_st_count(f); i++)
        json_object_set_new(map, moe_st_at(f, i)->name, json_string("model-00001-of-00002.safetensors"));
    json_object_set_new(map, other_name, json_string(other_shard));
    root = json_pack("{s:{s:i}, s:o}", "metadata", "total_size", 0, "weight_map", map);
    s = json_dumps(root, JSON_INDENT(2));
    write_buf(dir, "model.safetensors.index.json", s, strlen(s));
    free(s);
    json_decref(root);
    moe_st_close(f);
}

static bool has_all(const char *msg, const char *a, const char *b)
{
    return strstr(msg, a) && (!b || strstr(msg, b));
}

/* Legal variants that must open: tied embeddings, dense layers, F32 weights. */
static int run_ok_case(const char *name, const char *dir)
{
    struct moe_model *m = NULL;
    if (!strcmp(name, "ok_tied_embeddings")) {
        write_config_from(dir, FIXTURE, NULL, json_pack("{s:b}", "tie_word_embeddings", 1));
        write_variant(dir, "lm_head.weight", NULL);
        m = moe_model_open(dir);
        REQUIRE(m != NULL, "%s: %s", name, moe_last_error());
        CHECK(m->cfg.tie_embeddings && m->lm_head.data == m->embed.data, "lm_head is not the embedding");
    } else if (!strcmp(name, "ok_dense_layer")) {
        /* Qwen2-MoE with layer 1 dense (mlp_only_layers): its mlp.* replaced by a dense MLP. */
        static uint16_t w[128 * 64];
        struct moe_st_out ex[3] = {
            { .name = "model.layers.1.mlp.gate_proj.weight", .dtype = MOE_DT_BF16, .ndim = 2, .shape = { 128, 64 }, .data = w },
            { .name = "model.layers.1.mlp.up_proj.weight", .dtype = MOE_DT_BF16, .ndim = 2, .shape = { 128, 64 }, .data = w },
            { .name = "model.layers.1.mlp.down_proj.weight", .dtype = MOE_DT_BF16, .ndim = 2, .shape = { 64, 128 }, .data = w },
        };
        struct variant v = { .fixture = "tests/fixtures/hf-tiny/qwen2_moe", .drop_prefix = "model.layers.1.mlp.",
                             .extra = ex, .n_extra = 3 };
        for (size_t i = 0; i < MOE_ARRAY_LEN(w); i++) w[i] = moe_f32_to_bf16((float)i * 1e-4f);
        write_config_from(dir, "tests/fixtures/hf-tiny/qwen2_moe", NULL, json_pack("{s:[i]}", "mlp_only_layers", 1));
        write_variant_ex(dir, &v);
        m = moe_model_open(dir);
        REQUIRE(m != NULL, "%s: %s", name, moe_last_error());
        CHECK(!m->cfg.is_moe[1] && m->cfg.is_moe[0] && m->cfg.dense_inter == 128, "dense layer config");
        CHECK(m->layers[1].d_gate.rows == 128 && m->layers[1].d_down.cols == 128, "dense views");
        CHECK(m->layers[1].router.data == NULL && moe_model_expert(m, 1, 0)->gate.data == NULL,
              "dense layer has MoE views");
        CHECK(m->layers[0].router.data != NULL && moe_model_expert(m, 0, 7)->down.data != NULL, "MoE layer 0");
    } else if (!strcmp(name, "ok_f32_weights")) {
        struct variant v = { .to_f32_prefix = "" };
        float x[64];
        write_config(dir, NULL);
        write_variant_ex(dir, &v);
        m = moe_model_open(dir);
        REQUIRE(m != NULL, "%s: %s", name, moe_last_error());
        CHECK(m->embed.dtype == MOE_DT_F32 && moe_model_expert(m, 2, 3)->up.dtype == MOE_DT_F32, "dtype");
        CHECK(moe_model_expert_bytes(m) == 3u * 96u * 64u * 4u, "expert bytes %llu",
              (unsigned long long)moe_model_expert_bytes(m));
        moe_wview_to_f32(&m->final_norm, x);
        for (int i = 0; i < 64; i++) CHECK(isfinite(x[i]) && x[i] != 0.0f, "norm[%d] = %g", i, x[i]);
    } else {
        fprintf(stderr, "unknown case \"%s\"\n", name);
        rm_tree(dir);
        return T_FAIL;
    }
    moe_model_close(m);
    rm_tree(dir);
    return t_result(name);
}

static int run_case(const char *name)
{
    char tmpl[] = "/tmp/moe-model-bad-XXXXXX";
    const char *dir = mkdtemp(tmpl), *needle = NULL, *needle2 = NULL;
    struct moe_model *m;
    struct buf src, bad;

    REQUIRE(dir != NULL, "mkdtemp: %s", strerror(errno));
    if (!strncmp(name, "ok_", 3)) return run_ok_case(name, dir);
    src = read_rel(FIXTURE "/model.safetensors");
    if (make_bad_image(name, &src, &bad, &needle)) {
        struct moe_st_file *f;
        char path[4200];
        write_config(dir, NULL);
        write_buf(dir, "model.safetensors", bad.p, bad.len);
        /* The same image in memory and as a file. */
        f = moe_st_open_memory(bad.p, bad.len, "image");
        CHECK(f == NULL, "%s: in-memory image accepted", name);
        CHECK(has_all(moe_last_error(), needle, NULL), "%s: memory error lacks \"%s\": %s", name, needle,
              moe_last_error());
        moe_st_close(f);
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        f = moe_st_open(path);
        CHECK(f == NULL, "%s: file accepted", name);
        CHECK(has_all(moe_last_error(), needle, path), "%s: file error lacks \"%s\" or the path: %s", name,
              needle, moe_last_error());
        moe_st_close(f);
        free(bad.p);
        needle2 = "model.safetensors";
    } else if (!strcmp(name, "missing_tensor")) {
        write_config(dir, NULL);
        write_variant(dir, needle = "model.layers.2.block_sparse_moe.experts.5.w2.weight", NULL);
        needle2 = "missing";
    } else if (!strcmp(name, "wrong_shape")) {
        write_config(dir, NULL);
        write_variant(dir, NULL, needle = "model.layers.1.self_attn.k_proj.weight");
        needle2 = "[64, 32]";
    } else if (!strcmp(name, "index_missing_shard")) {
        write_config(dir, NULL);
        write_index(dir, "model.layers.9.extra.weight", needle = "model-00002-of-00002.safetensors");
        needle2 = "does not exist";
    } else if (!strcmp(name, "shard_is_dir")) {
        char path[4200];
        write_config(dir, NULL);
        write_index(dir, "model.layers.9.extra.weight", needle = "model-00002-of-00002.safetensors");
        snprintf(path, sizeof(path), "%s/%s", dir, needle);
        REQUIRE(mkdir(path, 0700) == 0, "mkdir %s: %s", path, strerror(errno));
        needle2 = "is a directory, not a regular file";
    } else if (!strcmp(name, "checkpoint_is_dir") || !strcmp(name, "index_is_dir")) {
        char path[4200];
        write_config(dir, NULL);
        needle = name[0] == 'c' ? "/model.safetensors:" : "/model.safetensors.index.json:";
        snprintf(path, sizeof(path), "%s%.*s", dir, (int)strlen(needle) - 1, needle);
        REQUIRE(mkdir(path, 0700) == 0, "mkdir %s: %s", path, strerror(errno));
        needle2 = "is a directory, not a regular file";
    } else if (!strcmp(name, "index_tensor_not_in_shard")) {
        write_config(dir, NULL);
        write_index(dir, needle = "model.layers.9.extra.weight", "model-00001-of-00002.safetensors");
        needle2 = "does not contain";
    } else if (!strcmp(name, "config_is_fifo") || !strcmp(name, "generation_config_is_fifo")) {
        /* refused at once, where opening it waited for a writer for ever (alarm: the test fails then) */
        char path[4200];
        bool gen = name[0] == 'g';
        if (gen) write_config(dir, NULL);
        write_buf(dir, "model.safetensors", src.p, src.len);
        needle = gen ? "/generation_config.json: " : "/config.json: ";
        snprintf(path, sizeof(path), "%s%.*s", dir, (int)strlen(needle) - 2, needle);
        REQUIRE(mkfifo(path, 0600) == 0, "mkfifo %s: %s", path, strerror(errno));
        needle2 = "not a regular file";
        alarm(20);
    } else if (!strcmp(name, "config_missing_field")) {
        write_config(dir, needle = "num_attention_heads");
        write_buf(dir, "model.safetensors", src.p, src.len);
        needle2 = "config.json";
    } else if (!strcmp(name, "pickle_only")) {
        static const char pk[] = "\x80\x02}q\x00.";
        write_config(dir, NULL);
        write_buf(dir, "pytorch_model.bin", pk, sizeof(pk) - 1);
        needle = "pytorch_model.bin";
        needle2 = "convert";
    } else if (!strcmp(name, "weight_not_float")) {
        struct variant v = { .retype = needle = "model.norm.weight", .retype_dt = MOE_DT_I16 };
        write_config(dir, NULL);
        write_variant_ex(dir, &v);
        needle2 = "I16";
    } else if (!strcmp(name, "expert_dtype_mixed")) {
        struct variant v = { .to_f32_prefix = "model.layers.3.block_sparse_moe.experts.6." };
        write_config(dir, NULL);
        write_variant_ex(dir, &v);
        needle = "layer 3 expert 6's gate matrix has dtype F32, the other expert matrices BF16";
        needle2 = "one dtype";
    } else if (!strcmp(name, "expert_dtype_first")) { /* the odd one is the first matrix read */
        struct variant v = { .to_f32_prefix = "model.layers.0.block_sparse_moe.experts.0.w1." };
        write_config(dir, NULL);
        write_variant_ex(dir, &v);
        needle = "layer 0 expert 0's gate matrix has dtype F32, the other expert matrices BF16";
        needle2 = "one dtype";
    } else if (!strcmp(name, "lm_head_missing")) {
        write_config(dir, NULL);
        write_variant(dir, needle = "lm_head.weight", NULL);
        needle2 = "missing";
    } else if (!strcmp(name, "no_checkpoint")) {
        write_config(dir, NULL);
        needle = "no model.safetensors";
    } else {
        fprintf(stderr, "unknown case \"%s\"\n", name);
        free(src.p);
        rm_tree(dir);
        return T_FAIL;
    }
    m = moe_model_open(dir);
    CHECK(m == NULL, "%s: model opened", name);
    CHECK(has_all(moe_last_error(), needle, needle2), "%s: error lacks \"%s\"/\"%s\": %s", name, needle,
          needle2 ? needle2 : "", moe_last_error());
    printf("%s: %s\n", name, moe_last_error());
    moe_model_close(m);
    free(src.p);
    rm_tree(dir);
    return t_result(name);
}

/* Seeds: a small valid image and each malformation of it. */
static int write_corpus(const char *dir)
{
    char path[4200];
    float a[6] = { 1, 2, 3, 4, 5, 6 };
    uint16_t b[4] = { 0x3f80, 0x4000, 0xbf80, 0 };
    int64_t ids[3] = { 1, 2, 3 };
    struct moe_st_out o[3] = {
        { .name = "w.a", .dtype = MOE_DT_F32, .ndim = 2, .shape = { 2, 3 }, .data = a },
        { .name = "w.b", .dtype = MOE_DT_BF16, .ndim = 1, .shape = { 4 }, .data = b },
        { .name = "ids", .dtype = MOE_DT_I64, .ndim = 1, .shape = { 3 }, .data = ids },
    };
    struct buf src, bad;
    const char *needle;
    char *p;
    snprintf(path, sizeof(path), "%s/valid.safetensors", dir);
    REQUIRE(moe_st_write(path, o, 3, (const char *const[]){ "format", "pt", NULL }) == MOE_OK, "%s",
            moe_last_error());
    REQUIRE(moe_read_file(path, &p, &src.len, 1 << 20) == MOE_OK, "%s", moe_last_error());
    src.p = (uint8_t *)p;
    for (size_t i = 0; i < MOE_ARRAY_LEN(image_cases); i++) {
        char nm[128];
        REQUIRE(make_bad_image(image_cases[i], &src, &bad, &needle), "case %s", image_cases[i]);
        snprintf(nm, sizeof(nm), "%s.safetensors", image_cases[i]);
        write_buf(dir, nm, bad.p, bad.len);
        free(bad.p);
    }
    free(src.p);
    return T_PASS;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--write-corpus")) return write_corpus(argv[2]);
    if (argc != 2) {
        fprintf(stderr, "usage: test_model_bad CASE | --write-corpus DIR\n");
        return T_FAIL;
    }
    return run_case(argv[1]);
}
