/* Routing trace reader and writer (see trace.h). */
#include "trace.h"
#include "../model/json_error.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_LINE (1u << 24) /* bytes per line */

static enum moe_status get_int(json_t *o, const char *key, const char *path, size_t line, int lo,
                               int hi, int *out)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        return moe_errorf(MOE_EFORMAT, "%s:%zu: field \"%s\" missing or not an integer", path,
                          line, key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return moe_errorf(MOE_EFORMAT, "%s:%zu: field \"%s\" = %lld outside [%d, %d]", path, line,
                          key, (long long)x, lo, hi);
    *out = (int)x;
    return MOE_OK;
}

static enum moe_status parse_header(json_t *h, const char *path, struct moe_trace_info *info)
{
    enum moe_status st;
    json_t *f = json_object_get(h, "format");
    if (!json_is_string(f) || strcmp(json_string_value(f), MOE_TRACE_FORMAT))
        return moe_errorf(MOE_EFORMAT, "%s:1: not a routing trace (\"format\" must be \"%s\")",
                          path, MOE_TRACE_FORMAT);
    int version = 0; /* set by get_int; initialised for -O3 -Wmaybe-uninitialized */
    if ((st = get_int(h, "version", path, 1, 0, 1 << 30, &version))) return st;
    if (version != MOE_TRACE_VERSION)
        return moe_errorf(MOE_EFORMAT, "%s:1: trace version %d, this build reads version %d "
                          "(re-record it with moeflow trace)", path, version, MOE_TRACE_VERSION);
    json_t *m = json_object_get(h, "model");
    snprintf(info->model, sizeof(info->model), "%s", json_is_string(m) ? json_string_value(m) : "");
    if ((st = get_int(h, "layers", path, 1, 1, MOE_MAX_LAYERS, &info->layers))) return st;
    if ((st = get_int(h, "experts", path, 1, 1, MOE_TRACE_MAX_EXPERTS, &info->experts))) return st;
    if ((st = get_int(h, "top_k", path, 1, 1,
                      info->experts < MOE_TRACE_MAX_K ? info->experts : MOE_TRACE_MAX_K,
                      &info->top_k)))
        return st;
    json_t *ml = json_object_get(h, "moe_layers");
    if (!json_is_array(ml) || json_array_size(ml) == 0 || json_array_size(ml) > (size_t)info->layers)
        return moe_errorf(MOE_EFORMAT, "%s:1: \"moe_layers\" must be a non-empty array of at most "
                          "%d layer indices", path, info->layers);
    info->n_moe = (int)json_array_size(ml);
    for (int i = 0; i < info->n_moe; i++) {
        json_t *v = json_array_get(ml, (size_t)i);
        json_int_t x = json_is_integer(v) ? json_integer_value(v) : -1;
        if (x < 0 || x >= info->layers || (i > 0 && x <= info->moe_layers[i - 1]))
            return moe_errorf(MOE_EFORMAT, "%s:1: moe_layers[%d] must be an ascending layer index "
                              "in [0, %d)", path, i, info->layers);
        info->moe_layers[i] = (int)x;
    }
    /* optional, but when present it must be usable: a bad value is an error, not "unknown" */
    json_t *eb = json_object_get(h, "expert_bytes");
    info->expert_bytes = 0;
    if (eb) {
        if (!json_is_integer(eb))
            return moe_errorf(MOE_EFORMAT, "%s:1: field \"expert_bytes\" must be an integer number of "
                              "bytes in [1, %llu] (or absent)", path, MOE_TRACE_MAX_EXPERT_BYTES);
        json_int_t x = json_integer_value(eb);
        if (x < 1 || (unsigned long long)x > MOE_TRACE_MAX_EXPERT_BYTES)
            return moe_errorf(MOE_EFORMAT, "%s:1: field \"expert_bytes\" = %lld outside [1, %llu] "
                              "(1 TiB per expert at most)", path, (long long)x, MOE_TRACE_MAX_EXPERT_BYTES);
        info->expert_bytes = (uint64_t)x;
    }
    return MOE_OK;
}

/* Parse a [[..k..] x n_moe] array into dst (ints or floats). */
static enum moe_status parse_grid(json_t *a, const char *key, const struct moe_trace_info *info,
                                  const char *path, size_t line, int *ids, float *w)
{
    if (!json_is_array(a) || json_array_size(a) != (size_t)info->n_moe)
        return moe_errorf(MOE_EFORMAT, "%s:%zu: \"%s\" must hold %d lists (one per MoE layer)",
                          path, line, key, info->n_moe);
    for (int li = 0; li < info->n_moe; li++) {
        json_t *row = json_array_get(a, (size_t)li);
        if (!json_is_array(row) || json_array_size(row) != (size_t)info->top_k)
            return moe_errorf(MOE_EFORMAT, "%s:%zu: \"%s\"[%d] must list %d entries", path, line,
                              key, li, info->top_k);
        for (int j = 0; j < info->top_k; j++) {
            json_t *v = json_array_get(row, (size_t)j);
            size_t o = (size_t)li * (size_t)info->top_k + (size_t)j;
            if (ids) {
                json_int_t x = json_is_integer(v) ? json_integer_value(v) : -1;
                if (x < 0 || x >= info->experts)
                    return moe_errorf(MOE_EFORMAT, "%s:%zu: experts[%d][%d] must be an expert id "
                                      "in [0, %d)", path, line, li, j, info->experts);
                for (int q = 0; q < j; q++)
                    if (ids[o - (size_t)j + (size_t)q] == (int)x)
                        return moe_errorf(MOE_EFORMAT, "%s:%zu: experts[%d] lists expert %d twice",
                                          path, line, li, (int)x);
                ids[o] = (int)x;
            } else {
                if (!json_is_number(v))
                    return moe_errorf(MOE_EFORMAT, "%s:%zu: weights[%d][%d] must be a number",
                                      path, line, li, j);
                w[o] = (float)json_number_value(v);
            }
        }
    }
    return MOE_OK;
}

void moe_trace_free(struct moe_trace *t)
{
    if (!t) return;
    free(t->seq);
    free(t->pos);
    free(t->token);
    free(t->experts);
    free(t->weights);
    free(t);
}

static bool grow(struct moe_trace *t, size_t *cap, size_t per)
{
    size_t nc = *cap ? *cap * 2 : 64;
    int *s = realloc(t->seq, nc * sizeof(int));
    if (s) t->seq = s;
    int *p = realloc(t->pos, nc * sizeof(int));
    if (p) t->pos = p;
    int *k = realloc(t->token, nc * sizeof(int));
    if (k) t->token = k;
    int *e = realloc(t->experts, nc * per * sizeof(int));
    if (e) t->experts = e;
    float *w = realloc(t->weights, nc * per * sizeof(float));
    if (w) t->weights = w;
    if (!s || !p || !k || !e || !w) return false;
    *cap = nc;
    return true;
}

/* Token i's seq and pos against the token before it (docs/trace-format.md):
 * sequences are numbered 0, 1, ... in file order and each one's positions
 * run 0, 1, ... (what moeflow trace writes).  So the first token is seq 0
 * pos 0, and every later one either continues its sequence (same seq, pos
 * + 1) or starts the next one (seq + 1, pos 0). */
static enum moe_status check_order(const struct moe_trace *t, size_t i, const char *path, size_t line)
{
    int s = t->seq[i], p = t->pos[i];
    int ps = i ? t->seq[i - 1] : -1, pp = i ? t->pos[i - 1] : -1;
    if (s == ps && p == pp + 1) return MOE_OK;
    if (s == ps + 1 && p == 0) return MOE_OK;
    if (s == ps)
        return moe_errorf(MOE_EFORMAT, "%s:%zu: \"pos\" = %d, but the token before is pos %d of the "
                          "same sequence %d (positions run 0, 1, ... within a sequence)", path, line, p,
                          pp, s);
    if (s == ps + 1)
        return moe_errorf(MOE_EFORMAT, "%s:%zu: \"pos\" = %d at the start of sequence %d (a sequence "
                          "starts at pos 0)", path, line, p, s);
    if (i == 0)
        return moe_errorf(MOE_EFORMAT, "%s:%zu: \"seq\" = %d on the first token (sequences are "
                          "numbered 0, 1, ... in file order)", path, line, s);
    return moe_errorf(MOE_EFORMAT, "%s:%zu: \"seq\" = %d after sequence %d (sequences are numbered "
                      "0, 1, ... in file order: the same or the next one)", path, line, s, ps);
}

/* Parse a whole trace from f; path names it in errors.  Closes f. */
static enum moe_status load_stream(FILE *f, const char *path, struct moe_trace **out)
{
    enum moe_status st = MOE_OK;
    char *line = NULL;
    size_t line_cap = 0, cap = 0, lineno = 0;
    bool any_weights = false, all_weights = true, have_header = false;
    struct moe_trace *t = NULL;
    *out = NULL;
    t = calloc(1, sizeof(*t));
    if (!t) {
        st = moe_errorf(MOE_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    ssize_t len;
    size_t per = 0;
    while ((len = getline(&line, &line_cap, f)) >= 0) {
        lineno++;
        if ((size_t)len > MAX_LINE) {
            st = moe_errorf(MOE_EFORMAT, "%s:%zu: line longer than %u bytes", path, lineno, MAX_LINE);
            goto out;
        }
        if (len == 0 || line[0] == '\n') continue;
        json_error_t jerr;
        json_t *o = json_loadb(line, (size_t)len, JSON_REJECT_DUPLICATES, &jerr);
        if (!json_is_object(o)) {
            json_decref(o);
            st = moe_errorf(MOE_EFORMAT, "%s:%zu: not a JSON object (%s)", path, lineno,
                            o ? "other JSON value" : moe_json_error_text(&jerr));
            goto out;
        }
        if (!have_header) { /* the first line that is not blank */
            have_header = true;
            st = parse_header(o, path, &t->info);
            json_decref(o);
            if (st) goto out;
            per = (size_t)t->info.n_moe * (size_t)t->info.top_k;
            continue;
        }
        if (t->n_tokens == cap && !grow(t, &cap, per)) {
            json_decref(o);
            st = moe_errorf(MOE_ENOMEM, "%s:%zu: out of memory", path, lineno);
            goto out;
        }
        size_t i = t->n_tokens;
        if ((st = get_int(o, "seq", path, lineno, 0, 1 << 30, &t->seq[i])) ||
            (st = get_int(o, "pos", path, lineno, 0, 1 << 30, &t->pos[i])) ||
            (st = get_int(o, "token", path, lineno, 0, 1 << 30, &t->token[i])) ||
            (st = check_order(t, i, path, lineno)) ||
            (st = parse_grid(json_object_get(o, "experts"), "experts", &t->info, path, lineno,
                             t->experts + i * per, NULL))) {
            json_decref(o);
            goto out;
        }
        json_t *w = json_object_get(o, "weights");
        if (w) {
            any_weights = true;
            st = parse_grid(w, "weights", &t->info, path, lineno, NULL, t->weights + i * per);
            if (st) {
                json_decref(o);
                goto out;
            }
        } else {
            all_weights = false;
        }
        json_decref(o);
        t->n_tokens++;
    }
    if (ferror(f)) {
        st = moe_errorf(MOE_EIO, "%s:%zu: read failed: %s", path, lineno + 1, strerror(errno));
        goto out;
    }
    if (!have_header) {
        st = moe_errorf(MOE_EFORMAT, "%s: empty file, not a routing trace", path);
        goto out;
    }
    if (t->n_tokens == 0) { /* moeflow trace writes a token at least: this one was cut after its header */
        st = moe_errorf(MOE_EFORMAT, "%s: a header and no token: the trace is cut short (record it again with "
                        "moeflow trace)", path);
        goto out;
    }
    if (!(any_weights && all_weights)) {
        free(t->weights);
        t->weights = NULL;
    }
out:
    free(line);
    fclose(f);
    if (st) {
        moe_trace_free(t);
        return st;
    }
    *out = t;
    return MOE_OK;
}

enum moe_status moe_trace_load(const char *path, struct moe_trace **out)
{
    FILE *f = fopen(path, "r");
    struct stat sb;
    *out = NULL;
    if (!f) return moe_errorf(MOE_EIO, "%s: cannot open trace: %s", path, strerror(errno));
    if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fclose(f);
        return moe_errorf(MOE_EIO, "%s: is a directory, not a routing trace (give the .jsonl file "
                          "moeflow trace wrote)", path);
    }
    return load_stream(f, path, out);
}

enum moe_status moe_trace_parse(const char *buf, size_t len, const char *what, struct moe_trace **out)
{
    *out = NULL;
    if (len == 0) return moe_errorf(MOE_EFORMAT, "%s: empty file, not a routing trace", what);
    FILE *f = fmemopen((void *)buf, len, "r");
    if (!f) return moe_errorf(MOE_ENOMEM, "%s: cannot open a memory stream", what);
    return load_stream(f, what, out);
}

void moe_trace_layer_order(const struct moe_trace *t, size_t i, int li, int *out)
{
    const int *e = moe_trace_experts(t, i, li);
    int k = t->info.top_k;
    for (int j = 0; j < k; j++) {
        int v = e[j], q = j;
        while (q > 0 && out[q - 1] > v) {
            out[q] = out[q - 1];
            q--;
        }
        out[q] = v;
    }
}

enum moe_status moe_trace_keys(const struct moe_trace *t, int **keys, size_t *n)
{
    size_t per = (size_t)t->info.n_moe * (size_t)t->info.top_k;
    size_t total = t->n_tokens * per;
    int *k = malloc((total ? total : 1) * sizeof(int));
    if (!k) return moe_errorf(MOE_ENOMEM, "trace: cannot allocate %zu accesses", total);
    size_t o = 0;
    for (size_t i = 0; i < t->n_tokens; i++)
        for (int li = 0; li < t->info.n_moe; li++) {
            int *row = k + o;
            moe_trace_layer_order(t, i, li, row);
            for (int j = 0; j < t->info.top_k; j++) row[j] += t->info.moe_layers[li] * t->info.experts;
            o += (size_t)t->info.top_k;
        }
    *keys = k;
    *n = total;
    return MOE_OK;
}

bool moe_trace_layers_match(const struct moe_trace_info *in, const struct moe_config *c)
{
    if (in->layers != c->n_layers || in->n_moe != moe_config_n_moe(c)) return false;
    for (int i = 0; i < in->n_moe; i++)
        if (!c->is_moe[in->moe_layers[i]]) return false;
    return true;
}

void moe_trace_layers_str(const int *layers, int n, char *buf, size_t cap)
{
    if (!cap) return;
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && layers[j + 1] == layers[j] + 1) j++;
        char part[32];
        int w = j > i ? snprintf(part, sizeof(part), "%s%d-%d", i ? "," : "", layers[i], layers[j])
                      : snprintf(part, sizeof(part), "%s%d", i ? "," : "", layers[i]);
        if (len + (size_t)w + (j + 1 < n ? 4 : 0) >= cap) { /* after a part that is not the last, room
                                                              stays for ",..." */
            snprintf(buf + len, cap - len, "%s", i ? ",..." : "...");
            return;
        }
        memcpy(buf + len, part, (size_t)w + 1);
        len += (size_t)w;
        i = j + 1;
    }
}

struct moe_trace_writer {
    struct moe_out out;            /* --out, written whole or not at all (in place when a pipe) */
    struct moe_trace_info info;
};

struct moe_trace_writer *moe_trace_writer_open(const char *path, const struct moe_trace_info *info)
{
    struct moe_trace_writer *w = calloc(1, sizeof(*w));
    if (!w) {
        moe_errorf(MOE_ENOMEM, "trace writer: out of memory");
        return NULL;
    }
    if (moe_out_open(&w->out, "trace", path)) {
        free(w);
        return NULL;
    }
    w->info = *info;
    json_t *h = json_object();
    json_t *ml = json_array();
    for (int i = 0; i < info->n_moe; i++) json_array_append_new(ml, json_integer(info->moe_layers[i]));
    json_object_set_new(h, "format", json_string(MOE_TRACE_FORMAT));
    json_object_set_new(h, "version", json_integer(MOE_TRACE_VERSION));
    json_object_set_new(h, "model", json_string(info->model));
    json_object_set_new(h, "layers", json_integer(info->layers));
    json_object_set_new(h, "experts", json_integer(info->experts));
    json_object_set_new(h, "top_k", json_integer(info->top_k));
    json_object_set_new(h, "moe_layers", ml);
    if (info->expert_bytes) json_object_set_new(h, "expert_bytes", json_integer((json_int_t)info->expert_bytes));
    char *s = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    if (!s || fprintf(w->out.f, "%s\n", s) < 0) {
        moe_errorf(s ? MOE_EIO : MOE_ENOMEM, "%s: cannot write the trace header%s", w->out.path,
                   s ? "" : " (out of memory)");
        free(s);
        moe_trace_writer_abort(w);
        return NULL;
    }
    free(s);
    return w;
}

enum moe_status moe_trace_writer_token(struct moe_trace_writer *w, int seq, int pos, int token,
                                       const int *experts, const float *weights)
{
    const struct moe_trace_info *in = &w->info;
    /* JSON has no NaN or infinity: such a weight would make a line no reader takes */
    for (int i = 0; weights && i < in->n_moe * in->top_k; i++)
        if (!isfinite(weights[i]))
            return moe_errorf(MOE_ERANGE, "%s: token %d of sequence %d: routing weight %d of MoE layer %d is %g, "
                              "which a trace cannot hold (the model's routing produced a non-finite value)",
                              w->out.path, pos, seq, i % in->top_k, in->moe_layers[i / in->top_k],
                              (double)weights[i]);
    errno = 0;
    fprintf(w->out.f, "{\"seq\":%d,\"pos\":%d,\"token\":%d,\"experts\":[", seq, pos, token);
    for (int li = 0; li < in->n_moe; li++) {
        fputs(li ? ",[" : "[", w->out.f);
        for (int j = 0; j < in->top_k; j++)
            fprintf(w->out.f, j ? ",%d" : "%d", experts[li * in->top_k + j]);
        fputc(']', w->out.f);
    }
    fputc(']', w->out.f);
    if (weights) {
        fputs(",\"weights\":[", w->out.f);
        for (int li = 0; li < in->n_moe; li++) {
            fputs(li ? ",[" : "[", w->out.f);
            for (int j = 0; j < in->top_k; j++)
                fprintf(w->out.f, j ? ",%.6g" : "%.6g", (double)weights[li * in->top_k + j]);
            fputc(']', w->out.f);
        }
        fputc(']', w->out.f);
    }
    fputs("}\n", w->out.f);
    return ferror(w->out.f) ? moe_errorf(MOE_EIO, "%s: write failed: %s", w->out.path,
                                         errno ? strerror(errno) : "stream error")
                            : MOE_OK;
}

enum moe_status moe_trace_writer_close(struct moe_trace_writer *w)
{
    if (!w) return MOE_OK;
    enum moe_status st = moe_out_close(&w->out, "trace");
    free(w);
    return st;
}

void moe_trace_writer_abort(struct moe_trace_writer *w)
{
    if (!w) return;
    moe_out_abort(&w->out);
    free(w);
}
