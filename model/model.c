/* Open a Hugging Face model directory: config.json plus model.safetensors or
 * model.safetensors.index.json with its shards, then bind every weight the
 * family's layer recipe needs, checking presence, dtype and shape. */
#include "model.h"
#include "fp8.h"
#include "json_error.h"
#include "utf8.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define INDEX_MAX_BYTES (256u << 20)

/* One checkpoint tensor, reachable by name (sorted by name). */
struct name_ent {
    const char *name;
    const struct moe_st_tensor *t;
    bool used;  /* bound to a weight view */
};

struct moe_model_priv {
    struct name_ent *ents; /* [n_ents] sorted by name */
    size_t n_ents;
    void **owned;          /* [n_owned] weights made at load (FP8 checkpoints' BF16 matrices) */
    size_t n_owned, cap_owned;
    bool binding_experts;  /* bind() is binding routed experts (FP8 ones stay FP8) */
};

static int cmp_ent(const void *a, const void *b)
{
    return strcmp(((const struct name_ent *)a)->name, ((const struct name_ent *)b)->name);
}

static struct name_ent *ent_find(const struct moe_model *m, const char *name)
{
    struct name_ent key = { .name = name };
    if (!m->priv) return NULL;
    return bsearch(&key, m->priv->ents, m->priv->n_ents, sizeof(key), cmp_ent);
}

const struct moe_st_tensor *moe_model_tensor(const struct moe_model *m, const char *name)
{
    struct name_ent *e = ent_find(m, name);
    return e ? e->t : NULL;
}

void moe_model_dir_name(const char *dir, char *out, size_t cap)
{
    char *abs = realpath(dir, NULL); /* "." or "../m" name the directory they resolve to */
    if (abs)
        dir = abs;
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/') b--;
    if (b == n && n > 0) b = 0; /* "/" */
    /* valid UTF-8 (the store's header, traces and predictor files hold it as JSON text): bytes that
     * are not become U+FFFD; cut at a character's end when cap is short */
    char *text = malloc(3 * (n - b) + 1);
    const char *name = dir + b;
    size_t len = n - b;
    if (text) {
        len = moe_utf8_lossy(dir + b, n - b, text, false, NULL);
        name = text;
    }
    size_t keep = 0;
    while (keep < len && cap > 0) {
        uint32_t cp;
        size_t l = moe_utf8_next((const unsigned char *)name + keep, len - keep, &cp);
        if (!l || keep + l > cap - 1)
            break;
        keep += l;
    }
    if (cap > 0)
        snprintf(out, cap, "%.*s", (int)keep, name);
    free(text);
    free(abs);
}

void moe_model_close(struct moe_model *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_shards; i++) moe_st_close(m->shards[i]);
    free(m->shards);
    if (m->priv) {
        free(m->priv->ents);
        for (size_t i = 0; i < m->priv->n_owned; i++) free(m->priv->owned[i]);
        free(m->priv->owned);
    }
    free(m->priv);
    free(m->layers);
    free(m->experts);
    free(m);
}

enum moe_status moe_model_check_files(const struct moe_model *m)
{
    for (int i = 0; i < m->n_shards; i++) {
        enum moe_status st = moe_st_check(m->shards[i]);
        if (st != MOE_OK) return st;
    }
    return MOE_OK;
}

static bool file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Something other than a regular file at path (a directory, a FIFO, ...):
 * "a directory, " (or "" for anything else) to put before "not a regular
 * file" in a message; NULL when nothing or a regular file is there. */
static const char *non_file_kind(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0 || S_ISREG(sb.st_mode)) return NULL;
    return S_ISDIR(sb.st_mode) ? "a directory, " : "";
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* No safetensors checkpoint: explain, naming a pickle file when there is one. */
static enum moe_status no_checkpoint(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char pickle[256] = "";
    if (d) {
        while ((de = readdir(d))) {
            if (ends_with(de->d_name, ".bin") || ends_with(de->d_name, ".pt") ||
                ends_with(de->d_name, ".pth")) {
                snprintf(pickle, sizeof(pickle), "%s", de->d_name);
                break;
            }
        }
        closedir(d);
    }
    if (pickle[0])
        return moe_errorf(MOE_ENOTSUP, "%s: only a pickle checkpoint (%s) was found; pickle files are "
                          "refused because loading them can execute arbitrary code: convert the model to "
                          "safetensors (e.g. transformers save_pretrained(..., safe_serialization=True)) "
                          "and retry", dir, pickle);
    return moe_errorf(MOE_ENOENT, "%s: no model.safetensors or model.safetensors.index.json found", dir);
}

static enum moe_status add_shard(struct moe_model *m, struct moe_st_file *f)
{
    struct moe_st_file **s = realloc(m->shards, (size_t)(m->n_shards + 1) * sizeof(*s));
    if (!s) {
        moe_st_close(f);
        return moe_errorf(MOE_ENOMEM, "%s: out of memory", m->dir);
    }
    m->shards = s;
    m->shards[m->n_shards++] = f;
    return MOE_OK;
}

/* Sharded checkpoint: every weight_map shard must exist and parse, and every
 * mapped tensor must be in the shard the index names. */
static enum moe_status open_index(struct moe_model *m, const char *index_path)
{
    char *buf = NULL, path[8400];
    size_t len, n_map, k = 0;
    json_error_t jerr;
    json_t *root = NULL, *map, *v;
    const char *name, *kind;
    enum moe_status st;

    if ((st = moe_read_file(index_path, &buf, &len, INDEX_MAX_BYTES)) != MOE_OK) return st;
    root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    free(buf);
    if (!root)
        return moe_errorf(MOE_EFORMAT, "%s: not valid JSON: %s (line %d)", index_path, moe_json_error_text(&jerr), jerr.line);
    map = json_object_get(root, "weight_map");
    if (!json_is_object(map) || json_object_size(map) == 0) {
        st = moe_errorf(MOE_EFORMAT, "%s: field \"weight_map\" missing, empty or not an object", index_path);
        goto out;
    }
    n_map = json_object_size(map);
    m->priv->ents = calloc(n_map, sizeof(*m->priv->ents));
    if (!m->priv->ents) {
        st = moe_errorf(MOE_ENOMEM, "%s: out of memory", index_path);
        goto out;
    }
    json_object_foreach(map, name, v) {
        const char *shard = json_string_value(v);
        struct moe_st_file *f = NULL;
        const struct moe_st_tensor *t;
        if (!shard || !shard[0] || strchr(shard, '/') || !strcmp(shard, ".") || !strcmp(shard, "..") ||
            !ends_with(shard, ".safetensors")) {
            st = moe_errorf(MOE_EFORMAT, "%s: weight_map[\"%s\"] must be a *.safetensors file name in the "
                            "model directory", index_path, name);
            goto out;
        }
        snprintf(path, sizeof(path), "%s/%s", m->dir, shard);
        for (int i = 0; i < m->n_shards; i++)
            if (!strcmp(moe_st_path(m->shards[i]), path)) f = m->shards[i];
        if (!f) {
            if ((kind = non_file_kind(path))) {
                st = moe_errorf(MOE_EIO, "%s: shard \"%s\" in %s is %snot a regular file", index_path, shard,
                                m->dir, kind);
                goto out;
            }
            if (!file_exists(path)) {
                st = moe_errorf(MOE_ENOENT, "%s: shard \"%s\" (holding \"%s\") does not exist in %s",
                                index_path, shard, name, m->dir);
                goto out;
            }
            if (!(f = moe_st_open(path))) {
                st = moe_error_prefix(MOE_EFORMAT, "%s: shard \"%s\"", index_path, shard);
                goto out;
            }
            if ((st = add_shard(m, f)) != MOE_OK) goto out;
        }
        if (!(t = moe_st_find(f, name))) {
            st = moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\" is mapped to shard \"%s\", which does not "
                            "contain it", index_path, name, shard);
            goto out;
        }
        m->priv->ents[k].name = t->name;
        m->priv->ents[k].t = t;
        k++;
    }
    m->priv->n_ents = k;
    {
        size_t stray = 0;
        const char *first = NULL;
        for (int i = 0; i < m->n_shards; i++)
            for (size_t j = 0; j < moe_st_count(m->shards[i]); j++)
                if (!json_object_get(map, moe_st_at(m->shards[i], j)->name) && !stray++)
                    first = moe_st_at(m->shards[i], j)->name;
        if (stray)
            MOE_WARN("%s: %zu shard tensor(s) are not in weight_map (first: \"%s\"); ignored", index_path,
                     stray, first);
    }
    st = MOE_OK;
out:
    json_decref(root);
    return st;
}

static enum moe_status open_single(struct moe_model *m, const char *path)
{
    struct moe_st_file *f = moe_st_open(path);
    enum moe_status st;
    size_t n;
    if (!f) return MOE_EFORMAT;
    if ((st = add_shard(m, f)) != MOE_OK) return st;
    n = moe_st_count(f);
    m->priv->ents = calloc(n + 1, sizeof(*m->priv->ents));
    if (!m->priv->ents) return moe_errorf(MOE_ENOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < n; i++) {
        m->priv->ents[i].name = moe_st_at(f, i)->name;
        m->priv->ents[i].t = moe_st_at(f, i);
    }
    m->priv->n_ents = n;
    return MOE_OK;
}

struct moe_wview moe_wview_from_tensor(const struct moe_st_tensor *t)
{
    struct moe_wview w = { 0 };
    if (!t) return w;
    w.dtype = t->dtype;
    w.data = t->data;
    w.nbytes = t->nbytes;
    w.cols = t->ndim ? t->shape[t->ndim - 1] : 1;
    w.rows = 1;
    for (int d = 0; d + 1 < t->ndim; d++) w.rows *= t->shape[d];
    return w;
}

/* float8_e5m2 (bias 15, IEEE-like); float8_e4m3fn's values are fp8.h's. */
static float f8_e5m2_to_f32(uint8_t b)
{
    int e = (b >> 2) & 31, mant = b & 3;
    float v = e == 31 ? (mant ? NAN : INFINITY) : e ? ldexpf(1.0f + (float)mant / 4.0f, e - 15)
                                                    : ldexpf((float)mant / 4.0f, -14);
    return b & 0x80 ? -v : v;
}

/* The FP8 matrix t ([rows, cols], float8_e4m3fn) as a view with its block factors in
 * "<name>_scale_inv" ([ceil(rows / br), ceil(cols / bc)]: F32 as DeepSeek-V3 stores them, BF16 or
 * F16 as Qwen3's FP8 checkpoints do). */
static enum moe_status fp8_view(struct moe_model *m, const char *name, const struct moe_st_tensor *t,
                                int64_t rows, int64_t cols, struct moe_wview *w)
{
    const int br = m->cfg.fp8_block[0], bc = m->cfg.fp8_block[1];
    if (!br)
        return moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\" is FP8 but config.json has no quantization_config "
                          "with weight_block_size: the factors to read it with are unknown", m->dir, name);
    char sname[512];
    snprintf(sname, sizeof(sname), "%s_scale_inv", name);
    struct name_ent *se = ent_find(m, sname);
    const int64_t sr = (rows + br - 1) / br, sc = (cols + bc - 1) / bc;
    if (!se)
        return moe_errorf(MOE_ENOENT, "%s: FP8 tensor \"%s\" has no block factors \"%s\"", m->dir, name, sname);
    const struct moe_st_tensor *s = se->t;
    se->used = true;
    if ((s->dtype != MOE_DT_F32 && s->dtype != MOE_DT_BF16 && s->dtype != MOE_DT_F16) || s->ndim != 2 ||
        s->shape[0] != sr || s->shape[1] != sc)
        return moe_errorf(MOE_EFORMAT, "%s: \"%s\" must be F32, BF16 or F16 [%lld, %lld] (blocks of %d x %d over "
                          "[%lld, %lld])", m->dir, sname, (long long)sr, (long long)sc, br, bc, (long long)rows,
                          (long long)cols);
    *w = moe_wview_from_tensor(t);
    w->scale = s->data;
    w->scale_dtype = s->dtype;
    w->block_rows = br;
    w->block_cols = bc;
    return MOE_OK;
}

/* The block factor at fp (F32, BF16 or F16; mapped data need not be aligned). */
static float block_factor(const uint8_t *fp, enum moe_dtype dt)
{
    float f;
    uint16_t h;
    if (dt == MOE_DT_F32) {
        memcpy(&f, fp, 4);
        return f;
    }
    memcpy(&h, fp, 2);
    return dt == MOE_DT_BF16 ? moe_bf16_to_f32(h) : moe_f16_to_f32(h);
}

#if defined(__x86_64__)
/* One row's codes q[0..n) of a block with factor f as BF16 values, 16 at a time (SSE4.1).  A code's
 * value is k x 2^s with k < 16, so for |f| in [2^-100, 2^100] (every product a normal F32) its F32
 * product and the BF16 rounding of it are those of k x |f|, scaled: BF16(k |f|) with s added to the
 * exponent and the sign of code x f, bit for bit the scalar loop's.  p[k] = BF16(k |f|); fs is 0x80
 * for a negative f; the two NaN codes (and the tail) are left to the caller. */
__attribute__((target("sse4.1"))) static size_t fp8_row_sse(const uint8_t *q, size_t n, const uint16_t p[16],
                                                             uint8_t fs, uint16_t *out)
{
    uint8_t plo[16], phi[16];
    for (int k = 0; k < 16; k++) {
        plo[k] = (uint8_t)p[k];
        phi[k] = (uint8_t)(p[k] >> 8);
    }
    const __m128i tlo = _mm_loadu_si128((const __m128i *)plo), thi = _mm_loadu_si128((const __m128i *)phi);
    const __m128i zero = _mm_setzero_si128(), m7f = _mm_set1_epi8(0x7f), m80 = _mm_set1_epi8((char)0x80);
    const __m128i sgnf = _mm_set1_epi8((char)fs), one = _mm_set1_epi8(1), ten = _mm_set1_epi8(10);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i c = _mm_loadu_si128((const __m128i *)(q + i));
        __m128i mag = _mm_and_si128(c, m7f);
        if (_mm_movemask_epi8(_mm_cmpeq_epi8(mag, m7f))) break; /* a NaN code: the scalar loop from here */
        __m128i e = _mm_and_si128(_mm_srli_epi16(mag, 3), _mm_set1_epi8(0x0f));
        __m128i k = _mm_or_si128(_mm_and_si128(mag, _mm_set1_epi8(7)),
                                 _mm_and_si128(_mm_cmpgt_epi8(e, zero), _mm_set1_epi8(8)));
        __m128i lo = _mm_shuffle_epi8(tlo, k), hi = _mm_shuffle_epi8(thi, k);
        __m128i s = _mm_sub_epi8(_mm_max_epu8(e, one), ten); /* -9 .. 5 */
        __m128i sg = _mm_xor_si128(_mm_and_si128(c, m80), sgnf);
        __m128i v[2] = { _mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi) };
        __m128i sh[2] = { _mm_cvtepi8_epi16(s), _mm_cvtepi8_epi16(_mm_srli_si128(s, 8)) };
        __m128i sgn[2] = { _mm_unpacklo_epi8(zero, sg), _mm_unpackhi_epi8(zero, sg) };
        for (int h = 0; h < 2; h++) {
            __m128i nz = _mm_xor_si128(_mm_cmpeq_epi16(v[h], zero), _mm_set1_epi16(-1)); /* k > 0 */
            __m128i x = _mm_add_epi16(v[h], _mm_and_si128(nz, _mm_slli_epi16(sh[h], 7)));
            _mm_storeu_si128((__m128i *)(out + i + 8 * (size_t)h), _mm_or_si128(x, sgn[h]));
        }
    }
    return i;
}
#endif

/* The values of an FP8 matrix q [rows, cols] with block factors sp ([ceil(rows / br), ceil(cols /
 * bc)] of sdt): code value x factor in F32 (fp8.h's rule, the CUDA path's too), rounded to BF16; into out (BF16) or, when out is NULL,
 * into fo (those BF16 values as F32).  Into BF16 on x86-64 with SSE4.1, 16 codes at a time where
 * the factor allows it (fp8_row_sse), the same bits. */
static void fp8_decode(const uint8_t *q, const uint8_t *sp, enum moe_dtype sdt, int64_t rows, int64_t cols, int br,
                       int bc, uint16_t *out, float *fo)
{
    float lut[256];
    for (int i = 0; i < 256; i++) lut[i] = moe_fp8_e4m3_value((unsigned)i);
    const int64_t sc = (cols + bc - 1) / bc;
    size_t es = moe_dtype_size(sdt);
#if defined(__x86_64__)
    bool sse = out && __builtin_cpu_supports("sse4.1");
#endif
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c0 = 0; c0 < cols; c0 += bc) {
            float f = block_factor(sp + ((size_t)(r / br) * (size_t)sc + (size_t)(c0 / bc)) * es, sdt);
            int64_t c1 = c0 + bc < cols ? c0 + bc : cols, c = c0;
#if defined(__x86_64__)
            float af = fabsf(f);
            if (sse && af >= 0x1p-100f && af <= 0x1p100f) {
                uint16_t p[16];
                for (int k = 0; k < 16; k++) p[k] = moe_f32_to_bf16((float)k * af);
                size_t i = (size_t)r * (size_t)cols + (size_t)c0;
                c += (int64_t)fp8_row_sse(q + i, (size_t)(c1 - c0), p, signbit(f) ? 0x80 : 0, out + i);
            }
#endif
            for (; c < c1; c++) {
                size_t i = (size_t)r * (size_t)cols + (size_t)c;
                uint16_t b = moe_f32_to_bf16(moe_fp8_scaled(lut[q[i]], f));
                if (out)
                    out[i] = b;
                else
                    fo[i] = moe_bf16_to_f32(b);
            }
        }
    }
}

static void fp8_values(const struct moe_wview *w, uint16_t *out, float *fo)
{
    fp8_decode(w->data, w->scale, w->scale_dtype, w->rows, w->cols, w->block_rows, w->block_cols, out, fo);
}

uint64_t moe_fp8_record_bytes(int64_t rows, int64_t cols, int br, int bc)
{
    return (uint64_t)rows * (uint64_t)cols + (uint64_t)((rows + br - 1) / br) * (uint64_t)((cols + bc - 1) / bc) * 4;
}

void moe_fp8_record_decode(const void *rec, int64_t rows, int64_t cols, int br, int bc, uint16_t *out, float *fo)
{
    const uint8_t *q = rec;
    fp8_decode(q, q + (size_t)rows * (size_t)cols, MOE_DT_F32, rows, cols, br, bc, out, fo);
}

enum moe_dtype moe_wview_stored_dtype(const struct moe_wview *w)
{
    return w->scale ? MOE_DT_F8_E4M3 : w->dtype;
}

uint64_t moe_wview_stored_bytes(const struct moe_wview *w)
{
    return w->scale ? moe_fp8_record_bytes(w->rows, w->cols, w->block_rows, w->block_cols) : w->nbytes;
}

void moe_wview_copy_stored(const struct moe_wview *w, void *dst)
{
    if (w->scale) { /* the codes, then every block factor as F32 */
        size_t n = (size_t)w->rows * (size_t)w->cols, nf = (size_t)((w->rows + w->block_rows - 1) / w->block_rows) *
                                                            (size_t)((w->cols + w->block_cols - 1) / w->block_cols);
        uint8_t *d = dst;
        memcpy(d, w->data, n);
        size_t es = moe_dtype_size(w->scale_dtype);
        for (size_t i = 0; i < nf; i++) {
            float f = block_factor((const uint8_t *)w->scale + i * es, w->scale_dtype);
            memcpy(d + n + 4 * i, &f, 4);
        }
    } else if (w->nbytes) {
        memcpy(dst, w->data, w->nbytes);
    }
}

void moe_wview_fp8_to_bf16(const struct moe_wview *w, uint16_t *dst)
{
    fp8_values(w, dst, NULL);
}

static int range_cmp(const void *a, const void *b)
{
    uintptr_t x = ((const uintptr_t *)a)[0], y = ((const uintptr_t *)b)[0];
    return x < y ? -1 : x > y;
}

void moe_model_release_experts(const struct moe_model *m, int layer)
{
    long pg = sysconf(_SC_PAGESIZE);
    int n = 0, E = m->cfg.n_experts;
    uintptr_t(*r)[2] = malloc(sizeof(*r) * 3 * (size_t)(E > 0 ? E : 1));
    if (!r || pg <= 0 || layer < 0 || layer >= m->cfg.n_layers || !m->cfg.is_moe[layer]) {
        free(r);
        return;
    }
    for (int e = 0; e < E; e++) {
        const struct moe_expert_w *x = moe_model_expert(m, layer, e);
        const struct moe_wview *v[3] = { &x->gate, &x->up, &x->down };
        for (int k = 0; k < 3; k++)
            if (v[k]->data) {
                r[n][0] = (uintptr_t)v[k]->data;
                r[n++][1] = (uintptr_t)v[k]->data + (uintptr_t)v[k]->nbytes;
            }
    }
    /* tensors that follow one another in a shard (a layer's experts mostly do) in one call each */
    qsort(r, (size_t)n, sizeof(*r), range_cmp);
    uintptr_t mask = (uintptr_t)pg - 1;
    for (int i = 0; i < n;) {
        uintptr_t lo = r[i][0], hi = r[i][1];
        for (i++; i < n && r[i][0] <= hi; i++)
            if (r[i][1] > hi) hi = r[i][1];
        uintptr_t a = (lo + mask) & ~mask, b = hi & ~mask;
        if (b <= a) continue;
#ifdef MADV_COLD
        madvise((void *)a, b - a, MADV_COLD); /* advice: a kernel without it leaves the pages as they are */
#endif
        madvise((void *)a, b - a, MADV_DONTNEED);
    }
    free(r);
}

/* A non-expert FP8 matrix widened to BF16 once, at load: the buffer is the model's (freed at close). */
static enum moe_status widen_fp8(struct moe_model *m, const char *name, struct moe_wview *w)
{
    struct moe_model_priv *p = m->priv;
    if (!moe_grow((void **)&p->owned, &p->cap_owned, p->n_owned + 1, sizeof(*p->owned), 64))
        return moe_errorf(MOE_ENOMEM, "%s: out of memory", m->dir);
    uint64_t bytes = (uint64_t)w->rows * (uint64_t)w->cols * 2;
    uint16_t *out = malloc((size_t)bytes + 1);
    if (!out)
        return moe_errorf(MOE_ENOMEM, "%s: out of memory for the BF16 copy of FP8 tensor \"%s\" (%lld x %lld)",
                          m->dir, name, (long long)w->rows, (long long)w->cols);
    p->owned[p->n_owned++] = out;
    fp8_values(w, out, NULL);
    *w = (struct moe_wview){ .dtype = MOE_DT_BF16, .data = out, .nbytes = bytes, .rows = w->rows, .cols = w->cols };
    return MOE_OK;
}

/* Bind the weight `name` with shape [rows, cols] (rows == 0: 1-D [cols]). */
static enum moe_status bind(struct moe_model *m, struct moe_wview *w, const char *name, int64_t rows,
                            int64_t cols, bool required)
{
    struct name_ent *e = ent_find(m, name);
    const struct moe_st_tensor *t;
    int nd = rows ? 2 : 1;
    memset(w, 0, sizeof(*w));
    if (!e) {
        if (!required) return MOE_OK;
        return moe_errorf(MOE_ENOENT, "%s: tensor \"%s\" is missing from the checkpoint (config.json "
                          "model_type %s requires it)", m->dir, name, m->cfg.model_type);
    }
    t = e->t;
    if (t->dtype != MOE_DT_BF16 && t->dtype != MOE_DT_F16 && t->dtype != MOE_DT_F32 &&
        !(t->dtype == MOE_DT_F8_E4M3 && nd == 2))
        return moe_errorf(MOE_ENOTSUP, "%s: tensor \"%s\" has dtype %s; weights must be BF16, F16 or F32 (or "
                          "F8_E4M3 matrices with block factors)", m->dir, name, moe_dtype_name(t->dtype));
    if (t->ndim != nd || (nd == 2 && (t->shape[0] != rows || t->shape[1] != cols)) ||
        (nd == 1 && t->shape[0] != cols)) {
        char got[160] = "[", *p = got + 1;
        for (int d = 0; d < t->ndim && p < got + sizeof(got) - 24; d++)
            p += sprintf(p, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        strcpy(p, "]");
        if (nd == 2)
            return moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\" has shape %s, config.json implies [%lld, %lld]",
                              m->dir, name, got, (long long)rows, (long long)cols);
        return moe_errorf(MOE_EFORMAT, "%s: tensor \"%s\" has shape %s, config.json implies [%lld]", m->dir,
                          name, got, (long long)cols);
    }
    e->used = true;
    if (t->dtype == MOE_DT_F8_E4M3) { /* experts stay FP8 (widened where they are read), the rest now */
        enum moe_status st = fp8_view(m, name, t, rows, cols, w);
        return st == MOE_OK && !m->priv->binding_experts ? widen_fp8(m, name, w) : st;
    }
    *w = moe_wview_from_tensor(t);
    return MOE_OK;
}

#define BINDF(w, rows, cols, req, ...)                                             \
    do {                                                                           \
        snprintf(nm, sizeof(nm), __VA_ARGS__);                                     \
        if ((st = bind(m, (w), nm, (rows), (cols), (req))) != MOE_OK) return st;   \
    } while (0)

/* Grouped-query attention: q/k/v/o projections, optional biases and q/k norms. */
static enum moe_status bind_gqa(struct moe_model *m, int l)
{
    const struct moe_config *c = &m->cfg;
    struct moe_layer_w *L = &m->layers[l];
    int64_t H = c->hidden, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    enum moe_status st;
    char nm[256];
    BINDF(&L->wq, q, H, true, "model.layers.%d.self_attn.q_proj.weight", l);
    BINDF(&L->wk, kv, H, true, "model.layers.%d.self_attn.k_proj.weight", l);
    BINDF(&L->wv, kv, H, true, "model.layers.%d.self_attn.v_proj.weight", l);
    BINDF(&L->wo, H, q, true, "model.layers.%d.self_attn.o_proj.weight", l);
    if (c->attn_qkv_bias) {
        BINDF(&L->bq, 0, q, true, "model.layers.%d.self_attn.q_proj.bias", l);
        BINDF(&L->bk, 0, kv, true, "model.layers.%d.self_attn.k_proj.bias", l);
        BINDF(&L->bv, 0, kv, true, "model.layers.%d.self_attn.v_proj.bias", l);
    }
    if (c->qk_norm == MOE_QK_NORM_HEAD) {
        BINDF(&L->q_norm, 0, c->head_dim, true, "model.layers.%d.self_attn.q_norm.weight", l);
        BINDF(&L->k_norm, 0, c->head_dim, true, "model.layers.%d.self_attn.k_norm.weight", l);
    } else if (c->qk_norm == MOE_QK_NORM_FULL) {
        BINDF(&L->q_norm, 0, q, true, "model.layers.%d.self_attn.q_norm.weight", l);
        BINDF(&L->k_norm, 0, kv, true, "model.layers.%d.self_attn.k_norm.weight", l);
    }
    return MOE_OK;
}

/* DeepSeek-V3's multi-head latent attention. */
static enum moe_status bind_mla(struct moe_model *m, int l)
{
    const struct moe_config *c = &m->cfg;
    struct moe_layer_w *L = &m->layers[l];
    int64_t H = c->hidden, nh = c->n_heads, qr = c->q_lora_rank, kvr = c->kv_lora_rank;
    enum moe_status st;
    char nm[256];
    if (qr) {
        BINDF(&L->q_a, qr, H, true, "model.layers.%d.self_attn.q_a_proj.weight", l);
        BINDF(&L->q_a_norm, 0, qr, true, "model.layers.%d.self_attn.q_a_layernorm.weight", l);
        BINDF(&L->wq, nh * c->head_dim, qr, true, "model.layers.%d.self_attn.q_b_proj.weight", l);
    } else {
        BINDF(&L->wq, nh * c->head_dim, H, true, "model.layers.%d.self_attn.q_proj.weight", l);
    }
    BINDF(&L->kv_a, kvr + c->qk_rope_dim, H, true, "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", l);
    BINDF(&L->kv_a_norm, 0, kvr, true, "model.layers.%d.self_attn.kv_a_layernorm.weight", l);
    BINDF(&L->kv_b, nh * (c->qk_nope_dim + c->v_head_dim), kvr, true, "model.layers.%d.self_attn.kv_b_proj.weight",
          l);
    BINDF(&L->wo, H, nh * c->v_head_dim, true, "model.layers.%d.self_attn.o_proj.weight", l);
    return MOE_OK;
}

static enum moe_status bind_layer(struct moe_model *m, int l)
{
    const struct moe_config *c = &m->cfg;
    struct moe_layer_w *L = &m->layers[l];
    int64_t H = c->hidden;
    /* Mixtral's names (block_sparse_moe, experts' w1 / w3 / w2), which MiniMax-M2 keeps */
    bool mix = c->family == MOE_FAM_MIXTRAL || c->family == MOE_FAM_MINIMAX_M2;
    const char *moe = mix ? "block_sparse_moe" : "mlp";
    const char *shared =
        moe_family_has_deepseek_moe(c->family) || c->family == MOE_FAM_ERNIE4_5_MOE ? "shared_experts" : "shared_expert";
    enum moe_status st;
    char nm[256];

    BINDF(&L->attn_norm, 0, H, true, "model.layers.%d.input_layernorm.weight", l);
    BINDF(&L->ffn_norm, 0, H, true, "model.layers.%d.post_attention_layernorm.weight", l);
    st = c->mla ? bind_mla(m, l) : bind_gqa(m, l);
    if (st != MOE_OK) return st;
    if (!c->is_moe[l]) {
        BINDF(&L->d_gate, c->dense_inter, H, true, "model.layers.%d.mlp.gate_proj.weight", l);
        BINDF(&L->d_up, c->dense_inter, H, true, "model.layers.%d.mlp.up_proj.weight", l);
        BINDF(&L->d_down, H, c->dense_inter, true, "model.layers.%d.mlp.down_proj.weight", l);
        return MOE_OK;
    }
    BINDF(&L->router, c->n_experts, H, true, "model.layers.%d.%s.gate.weight", l, moe);
    if (c->router == MOE_ROUTER_SIGMOID_GROUP) /* MiniMax-M2 keeps it beside the gate, not in it */
        BINDF(&L->router_bias, 0, c->n_experts, true, "model.layers.%d.%s.e_score_correction_bias", l,
              c->family == MOE_FAM_MINIMAX_M2 ? "block_sparse_moe" : "mlp.gate");
    else if (c->router == MOE_ROUTER_SOFTMAX_BIAS) /* ERNIE-4.5: [1, experts], in its moe_statics */
        BINDF(&L->router_bias, 1, c->n_experts, true, "model.layers.%d.mlp.moe_statics.e_score_correction_bias", l);
    if (c->shared_inter > 0) {
        BINDF(&L->sh_gate, c->shared_inter, H, true, "model.layers.%d.mlp.%s.gate_proj.weight", l, shared);
        BINDF(&L->sh_up, c->shared_inter, H, true, "model.layers.%d.mlp.%s.up_proj.weight", l, shared);
        BINDF(&L->sh_down, H, c->shared_inter, true, "model.layers.%d.mlp.%s.down_proj.weight", l, shared);
        if (c->shared_gate)
            BINDF(&L->sh_scale, 1, H, true, "model.layers.%d.mlp.shared_expert_gate.weight", l);
    }
    m->priv->binding_experts = true;
    for (int e = 0; e < c->n_experts; e++) {
        struct moe_expert_w *x = &m->experts[(size_t)l * (size_t)c->n_experts + (size_t)e];
        int64_t I = c->expert_inter;
        BINDF(&x->gate, I, H, true, "model.layers.%d.%s.experts.%d.%s.weight", l, moe, e,
              mix ? "w1" : "gate_proj");
        BINDF(&x->up, I, H, true, "model.layers.%d.%s.experts.%d.%s.weight", l, moe, e,
              mix ? "w3" : "up_proj");
        BINDF(&x->down, H, I, true, "model.layers.%d.%s.experts.%d.%s.weight", l, moe, e,
              mix ? "w2" : "down_proj");
    }
    m->priv->binding_experts = false; /* (an error above fails the whole open) */
    return MOE_OK;
}

/* All expert matrices share one dtype, so one expert's byte size holds for all. */
/* Every expert matrix in one dtype; where they are not, the first matrix that differs from the dtype
 * most of them have is named. */
static enum moe_status check_expert_dtype(struct moe_model *m)
{
    const struct moe_config *c = &m->cfg;
    static const char *const names[3] = { "gate", "up", "down" };
    size_t count[MOE_DT_COUNT] = { 0 };
    for (int pass = 0; pass < 2; pass++) {
        enum moe_dtype most = MOE_DT_F32;
        for (int d = 0; d < MOE_DT_COUNT; d++)
            if (count[d] > count[most]) most = (enum moe_dtype)d;
        for (int l = 0; l < c->n_layers; l++) {
            if (!c->is_moe[l]) continue;
            for (int e = 0; e < c->n_experts; e++) {
                const struct moe_expert_w *x = moe_model_expert(m, l, e);
                const struct moe_wview *w[3] = { &x->gate, &x->up, &x->down };
                for (int k = 0; k < 3; k++) {
                    if (pass == 0 && (unsigned)w[k]->dtype < MOE_DT_COUNT)
                        count[w[k]->dtype]++;
                    else if (pass == 1 && w[k]->dtype != most)
                        return moe_errorf(MOE_ENOTSUP, "%s: layer %d expert %d's %s matrix has dtype %s, the other "
                                          "expert matrices %s: all expert weights must share one dtype", m->dir, l,
                                          e, names[k], moe_dtype_name(w[k]->dtype), moe_dtype_name(most));
                }
            }
        }
    }
    return MOE_OK;
}

static enum moe_status bind_all(struct moe_model *m)
{
    const struct moe_config *c = &m->cfg;
    enum moe_status st;
    size_t unused = 0;
    const char *first_unused = NULL;
    char nm[256];

    BINDF(&m->embed, c->vocab, c->hidden, true, "model.embed_tokens.weight");
    BINDF(&m->final_norm, 0, c->hidden, true, "model.norm.weight");
    if (c->tie_embeddings) {
        m->lm_head = m->embed;
        if (ent_find(m, "lm_head.weight")) ent_find(m, "lm_head.weight")->used = true;
    } else {
        BINDF(&m->lm_head, c->vocab, c->hidden, true, "lm_head.weight");
    }
    for (int l = 0; l < c->n_layers; l++)
        if ((st = bind_layer(m, l)) != MOE_OK) return st;
    if ((st = check_expert_dtype(m)) != MOE_OK) return st;
    for (size_t i = 0; i < m->priv->n_ents; i++) {
        if (!m->priv->ents[i].used) {
            if (!unused) first_unused = m->priv->ents[i].name;
            unused++;
        }
    }
    if (unused)
        MOE_WARN("%s: %zu checkpoint tensor(s) not used by the %s recipe (first: \"%s\"); ignored", m->dir,
                 unused, c->model_type, first_unused);
    return MOE_OK;
}

struct moe_model *moe_model_open(const char *model_dir)
{
    struct moe_model *m = NULL;
    char path[8400];
    enum moe_status st;
    const char *kind;
    size_t n_all;

    if (!model_dir || !model_dir[0]) {
        moe_errorf(MOE_EINVAL, "model directory: empty path");
        return NULL;
    }
    if (strlen(model_dir) >= sizeof(m->dir)) {
        moe_errorf(MOE_EINVAL, "model directory path is longer than %zu bytes", sizeof(m->dir) - 1);
        return NULL;
    }
    m = calloc(1, sizeof(*m));
    if (!m || !(m->priv = calloc(1, sizeof(*m->priv)))) {
        moe_errorf(MOE_ENOMEM, "%s: out of memory", model_dir);
        goto out_close;
    }
    snprintf(m->dir, sizeof(m->dir), "%s", model_dir);
    {
        struct stat sb;
        if (stat(model_dir, &sb) != 0) {
            moe_errorf(MOE_ENOENT, "%s: cannot open model directory: %s", model_dir, strerror(errno));
            goto out_close;
        }
        if (!S_ISDIR(sb.st_mode)) {
            moe_errorf(MOE_EINVAL, "%s: not a directory (pass the model directory, not a file)", model_dir);
            goto out_close;
        }
    }
    if (moe_config_load(model_dir, &m->cfg) != MOE_OK) goto out_close;

    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", model_dir);
    if (file_exists(path)) {
        st = open_index(m, path);
    } else if ((kind = non_file_kind(path))) {
        st = moe_errorf(MOE_EIO, "%s: is %snot a regular file (a sharded checkpoint's index must be a JSON "
                        "file)", path, kind);
    } else {
        snprintf(path, sizeof(path), "%s/model.safetensors", model_dir);
        if ((kind = non_file_kind(path)))
            st = moe_errorf(MOE_EIO, "%s: is %snot a regular file (a single-file checkpoint must be a "
                            "safetensors file)", path, kind);
        else
            st = file_exists(path) ? open_single(m, path) : no_checkpoint(model_dir);
    }
    if (st != MOE_OK) goto out_close;
    qsort(m->priv->ents, m->priv->n_ents, sizeof(*m->priv->ents), cmp_ent);

    n_all = (size_t)m->cfg.n_layers * (size_t)m->cfg.n_experts;
    m->layers = calloc((size_t)m->cfg.n_layers, sizeof(*m->layers));
    m->experts = calloc(n_all ? n_all : 1, sizeof(*m->experts));
    if (!m->layers || !m->experts) {
        moe_errorf(MOE_ENOMEM, "%s: out of memory for %zu expert views", model_dir, n_all);
        goto out_close;
    }
    if (bind_all(m) != MOE_OK) goto out_close;
    return m;

out_close:
    moe_model_close(m);
    return NULL;
}

uint64_t moe_model_expert_bytes(const struct moe_model *m)
{
    for (int l = 0; l < m->cfg.n_layers; l++) {
        if (m->cfg.is_moe[l]) {
            const struct moe_expert_w *x = moe_model_expert(m, l, 0);
            return moe_wview_stored_bytes(&x->gate) + moe_wview_stored_bytes(&x->up) +
                   moe_wview_stored_bytes(&x->down);
        }
    }
    return 0;
}

uint64_t moe_model_dense_bytes(const struct moe_model *m)
{
    uint64_t n = moe_wview_stored_bytes(&m->embed) + moe_wview_stored_bytes(&m->final_norm) +
                 (m->lm_head.data != m->embed.data ? moe_wview_stored_bytes(&m->lm_head) : 0);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const struct moe_layer_w *L = &m->layers[l];
        const struct moe_wview *v[] = { &L->attn_norm, &L->ffn_norm, &L->wq, &L->wk, &L->wv, &L->wo, &L->bq, &L->bk,
                                        &L->bv, &L->q_norm, &L->k_norm, &L->router, &L->sh_gate, &L->sh_up,
                                        &L->sh_down, &L->sh_scale, &L->d_gate, &L->d_up, &L->d_down, &L->q_a,
                                        &L->q_a_norm, &L->kv_a, &L->kv_a_norm, &L->kv_b, &L->router_bias };
        for (size_t i = 0; i < MOE_ARRAY_LEN(v); i++) n += v[i]->data ? moe_wview_stored_bytes(v[i]) : 0;
    }
    return n;
}

/* Element i of a view in f32; reads through memcpy (mapped data need not be aligned). */
void moe_wview_to_f32(const struct moe_wview *w, float *out)
{
    const uint8_t *p = w->data;
    size_t n, es = moe_dtype_size(w->dtype);
    if (!p || w->rows <= 0 || w->cols <= 0) return;
    n = (size_t)w->rows * (size_t)w->cols;
    if (es == 0 || (uint64_t)n * es > w->nbytes) n = es ? (size_t)(w->nbytes / es) : 0;
    switch (w->dtype) {
    case MOE_DT_F32:
        memcpy(out, p, n * sizeof(float));
        break;
    case MOE_DT_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = moe_bf16_to_f32(h);
        }
        break;
    case MOE_DT_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = moe_f16_to_f32(h);
        }
        break;
    case MOE_DT_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            out[i] = (float)d;
        }
        break;
    case MOE_DT_I64:
        for (size_t i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, p + 8 * i, 8);
            out[i] = (float)v;
        }
        break;
    case MOE_DT_I32:
        for (size_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            out[i] = (float)v;
        }
        break;
    case MOE_DT_I16:
        for (size_t i = 0; i < n; i++) {
            int16_t v;
            memcpy(&v, p + 2 * i, 2);
            out[i] = (float)v;
        }
        break;
    case MOE_DT_I8:
        for (size_t i = 0; i < n; i++) out[i] = (float)(int8_t)p[i];
        break;
    case MOE_DT_U8:
    case MOE_DT_BOOL:
        for (size_t i = 0; i < n; i++) out[i] = (float)p[i];
        break;
    case MOE_DT_F8_E4M3: /* with block factors: the BF16 values they make; else the bare code values */
        if (w->scale)
            fp8_values(w, NULL, out);
        else
            for (size_t i = 0; i < n; i++) out[i] = moe_fp8_e4m3_value(p[i]);
        break;
    case MOE_DT_F8_E5M2:
        for (size_t i = 0; i < n; i++) out[i] = f8_e5m2_to_f32(p[i]);
        break;
    case MOE_DT_COUNT:
        break;
    }
}
