/* Plain C reference twins of the CUDA ops and shared GPU-test helpers. */
#include "gpu_ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t g_next(struct g_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float g_uniform(struct g_rng *r, float lo, float hi)
{
    return lo + (hi - lo) * (float)((g_next(r) >> 40) * (1.0 / 16777216.0));
}

void g_fill(struct g_rng *r, float *x, size_t n, float scale, bool adversarial)
{
    for (size_t i = 0; i < n; i++) {
        float v = (g_uniform(r, -1, 1) + g_uniform(r, -1, 1) + g_uniform(r, -1, 1)) * scale;
        if (adversarial) {
            switch (g_next(r) % 16) {
            case 0: v = scale * 3e3f * (g_next(r) & 1 ? 1.0f : -1.0f); break;
            case 1: v = 1e-30f; break;
            case 2: v = 0.0f; break;
            case 3: v = -0.0f; break;
            default: break;
            }
        }
        x[i] = v;
    }
}

void g_fill_bf16(struct g_rng *r, uint16_t *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = moe_f32_to_bf16((g_uniform(r, -1, 1) + g_uniform(r, -1, 1)) * scale);
}

double g_norm_err(const float *got, const float *ref, size_t n, float floor, size_t *nonfinite_mismatch)
{
    double mx = floor, err = 0;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(ref[i]) && fabs(ref[i]) > mx) mx = fabs(ref[i]);
    for (size_t i = 0; i < n; i++) {
        bool fa = isfinite(got[i]), fb = isfinite(ref[i]);
        if (!fa || !fb) {
            if (fa != fb || isnan(got[i]) != isnan(ref[i]) ||
                (isinf(got[i]) && signbit(got[i]) != signbit(ref[i])))
                bad++;
            continue;
        }
        double e = fabs((double)got[i] - (double)ref[i]);
        if (e > err) err = e;
    }
    if (nonfinite_mismatch) *nonfinite_mismatch = bad;
    return err / mx;
}

int g_buf_alloc(struct moe_cuda_ctx *c, struct g_buf *b, size_t bytes)
{
    b->bytes = bytes;
    if (moe_cuda_alloc(c, &b->d, bytes + G_GUARD, "test buffer") != MOE_OK) return -1;
    return moe_cuda_memset(c, b->d, G_GUARD_BYTE, bytes + G_GUARD) == MOE_OK ? 0 : -1;
}

int g_buf_upload(struct moe_cuda_ctx *c, struct g_buf *b, const void *h, size_t bytes)
{
    if (g_buf_alloc(c, b, bytes)) return -1;
    if (bytes && moe_cuda_h2d(c, b->d, h, bytes) != MOE_OK) return -1;
    return moe_cuda_ctx_sync(c) == MOE_OK ? 0 : -1;
}

int g_buf_download(struct moe_cuda_ctx *c, const struct g_buf *b, void *h, const char *what)
{
    unsigned char *tmp = malloc(b->bytes + G_GUARD);
    int rc = 0;
    if (!tmp) return -1;
    if (moe_cuda_d2h(c, tmp, b->d, b->bytes + G_GUARD) != MOE_OK || moe_cuda_ctx_sync(c) != MOE_OK) {
        fprintf(stderr, "%s: download failed: %s\n", what, moe_last_error());
        free(tmp);
        return -1;
    }
    for (size_t i = 0; i < G_GUARD; i++) {
        if (tmp[b->bytes + i] != G_GUARD_BYTE) {
            fprintf(stderr, "%s: guard byte %zu after the %zu-byte output was overwritten (0x%02x)\n",
                    what, i, b->bytes, tmp[b->bytes + i]);
            rc = -1;
            break;
        }
    }
    memcpy(h, tmp, b->bytes);
    free(tmp);
    return rc;
}

void g_buf_free(struct moe_cuda_ctx *c, struct g_buf *b)
{
    moe_cuda_free(c, b->d);
    b->d = NULL;
}

float g_bf16_round(float x) { return moe_bf16_to_f32(moe_f32_to_bf16(x)); }

void ref_embed_bf16(const uint16_t *table, int vocab, int hidden, const int *ids, int n, float *out)
{
    for (int t = 0; t < n; t++)
        for (int d = 0; d < hidden; d++)
            out[(size_t)t * hidden + d] = ids[t] >= 0 && ids[t] < vocab
                ? moe_bf16_to_f32(table[(size_t)ids[t] * hidden + d]) : NAN;
}

void ref_rmsnorm(const float *x, const float *w, float *y, int rows, int dim, float eps)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * dim;
        double ss = 0;
        for (int i = 0; i < dim; i++) ss += (double)xr[i] * xr[i];
        float inv = (float)(1.0 / sqrt(ss / dim + eps));
        for (int i = 0; i < dim; i++) y[(size_t)r * dim + i] = xr[i] * inv * w[i];
    }
}

void ref_rope(float *x, const int *pos, int n, int n_heads, int head_dim, int rot_dim, float theta)
{
    int half = rot_dim / 2;
    for (int t = 0; t < n; t++)
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * head_dim;
            for (int j = 0; j < half; j++) {
                /* the CPU backend's and Hugging Face's float formula */
                float inv_freq = 1.0f / powf(theta, (float)(2 * j) / (float)rot_dim);
                float ang = (float)pos[t] * inv_freq;
                float cs = cosf(ang), sn = sinf(ang), a = v[j], b = v[j + half];
                v[j] = a * cs - b * sn;
                v[j + half] = b * cs + a * sn;
            }
        }
}

void ref_attention(const float *q, const float *kc, const float *vc, const int *seq, const int *pos, int n,
                   int nh, int nkv, int hd, int max_ctx, int window, float scale, float *out)
{
    size_t kv_dim = (size_t)nkv * hd;
    double *sc = malloc(sizeof(double) * (size_t)max_ctx);
    for (int t = 0; t < n; t++)
        for (int h = 0; h < nh; h++) {
            int kvh = h / (nh / nkv), last = pos[t], j0 = window > 0 && last + 1 > window ? last + 1 - window : 0;
            const float *qh = q + ((size_t)t * nh + h) * hd;
            const float *kb = kc + (size_t)seq[t] * max_ctx * kv_dim + (size_t)kvh * hd;
            const float *vb = vc + (size_t)seq[t] * max_ctx * kv_dim + (size_t)kvh * hd;
            double mx = -INFINITY, sum = 0;
            for (int j = j0; j <= last; j++) {
                double d = 0;
                for (int i = 0; i < hd; i++) d += (double)qh[i] * kb[(size_t)j * kv_dim + i];
                sc[j] = d * scale;
                if (sc[j] > mx) mx = sc[j];
            }
            for (int j = j0; j <= last; j++) sum += (sc[j] = exp(sc[j] - mx));
            for (int i = 0; i < hd; i++) {
                double a = 0;
                for (int j = j0; j <= last; j++) a += sc[j] * vb[(size_t)j * kv_dim + i];
                out[((size_t)t * nh + h) * hd + i] = (float)(a / sum);
            }
        }
    free(sc);
}

void ref_router(const float *logits, int n, int E, int k, bool softmax_first, bool norm_topk, int *ids,
                float *w)
{
    char *taken = malloc((size_t)E);
    float sel[64];
    for (int t = 0; t < n; t++) {
        const float *lg = logits + (size_t)t * E;
        memset(taken, 0, (size_t)E);
        for (int s = 0; s < k; s++) {
            int bi = -1;
            float bv = -INFINITY;
            for (int e = 0; e < E; e++) {
                if (taken[e]) continue;
                if (bi < 0 ? !isnan(lg[e]) : lg[e] > bv) { bi = e; bv = lg[e]; }
            }
            if (bi < 0)
                for (int e = 0; e < E && bi < 0; e++)
                    if (!taken[e]) bi = e;
            taken[bi] = 1;
            ids[(size_t)t * k + s] = bi;
            sel[s] = lg[bi];
        }
        double mx = -INFINITY, sum = 0, tot = 0;
        if (softmax_first) {
            for (int e = 0; e < E; e++) if (lg[e] > mx) mx = lg[e];
            for (int e = 0; e < E; e++) sum += exp(lg[e] - mx);
        } else {
            for (int s = 0; s < k; s++) if (sel[s] > mx) mx = sel[s];
            for (int s = 0; s < k; s++) sum += exp(sel[s] - mx);
        }
        for (int s = 0; s < k; s++) tot += exp(sel[s] - mx) / sum;
        for (int s = 0; s < k; s++) {
            double p = exp(sel[s] - mx) / sum;
            w[(size_t)t * k + s] = (float)(softmax_first && norm_topk ? p / tot : p);
        }
    }
    free(taken);
}

void ref_combine(const float *y, const int *inv, const float *w, int n, int k, int dim, bool accumulate,
                 float *out)
{
    for (int t = 0; t < n; t++)
        for (int d = 0; d < dim; d++) {
            double a = 0;
            for (int s = 0; s < k; s++)
                a += (double)w[(size_t)t * k + s] * y[(size_t)inv[(size_t)t * k + s] * dim + d];
            out[(size_t)t * dim + d] = accumulate ? out[(size_t)t * dim + d] + (float)a : (float)a;
        }
}

void ref_swiglu(const float *g, const float *u, float *o, size_t n)
{
    for (size_t i = 0; i < n; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void ref_sigmoid_scale_add(const float *s, const float *y, int n, int dim, float *out)
{
    for (int t = 0; t < n; t++)
        for (int d = 0; d < dim; d++)
            out[(size_t)t * dim + d] += y[(size_t)t * dim + d] / (1.0f + expf(-s[t]));
}

static float wget(const void *w, enum moe_dtype dt, size_t i)
{
    return dt == MOE_DT_BF16 ? moe_bf16_to_f32(((const uint16_t *)w)[i]) : ((const float *)w)[i];
}

void ref_linear(const float *x, const void *w, enum moe_dtype wdt, int n, int in, int out, bool accumulate,
                bool round_x, float *y)
{
    for (int t = 0; t < n; t++)
        for (int o = 0; o < out; o++) {
            double a = 0;
            for (int i = 0; i < in; i++) {
                float xv = x[(size_t)t * in + i];
                if (round_x && wdt == MOE_DT_BF16) xv = g_bf16_round(xv);
                a += (double)xv * wget(w, wdt, (size_t)o * in + i);
            }
            y[(size_t)t * out + o] = accumulate ? y[(size_t)t * out + o] + (float)a : (float)a;
        }
}

void ref_expert_rows(const float *x, int rows, const void *gate, const void *up, const void *down,
                     enum moe_dtype wdt, int hidden, int inter, bool round_x, float *y)
{
    float *g = malloc(sizeof(float) * (size_t)rows * inter);
    float *u = malloc(sizeof(float) * (size_t)rows * inter);
    ref_linear(x, gate, wdt, rows, hidden, inter, false, round_x, g);
    ref_linear(x, up, wdt, rows, hidden, inter, false, round_x, u);
    ref_swiglu(g, u, g, (size_t)rows * inter);
    ref_linear(g, down, wdt, rows, inter, hidden, false, round_x, y); /* h rounded like x */
    free(g);
    free(u);
}

int ref_argmax(const float *x, int n)
{
    int bi = -1;
    for (int i = 0; i < n; i++) {
        if (isnan(x[i])) continue;
        if (bi < 0 || x[i] > x[bi]) bi = i;
    }
    return bi < 0 ? 0 : bi;
}
