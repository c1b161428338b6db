/* How far do BF16-rounded GEMM activations (the cuBLAS modes of the CUDA
 * backend) move logits and greedy tokens from the Hugging Face references?
 * Runs on the CPU: the CPU backend wrapped so that linear layers and the
 * expert FFN round their inputs (and the expert's silu(g)*u) to BF16, as the
 * CUDA backend's cuBLAS path does.  Rounding variants:
 *   exact    no rounding (the CPU backend itself)
 *   all      every linear layer and the expert FFN
 *   cublas   what the CUDA LOOP/GROUPED modes do: the expert FFN and linear
 *            layers with more than 1024 outputs (routers and small projections
 *            stay F32)
 *   experts  the expert FFN only
 * usage: gpu_bf16_emulate MODEL_DIR  (reads MODEL_DIR/reference.safetensors) */
#include "engine/engine.h"
#include "engine/sampling.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "offload/provider.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct moe_backend_ops *orig;
static struct moe_backend_ops mine;
static int mode; /* 0 exact, 1 all, 2 cublas, 3 experts */
static const char *const mode_names[] = { "exact", "all", "cublas", "experts" };

static float r16(float x) { return moe_bf16_to_f32(moe_f32_to_bf16(x)); }

static enum moe_status w_linear(void *ctx, const float *x, const void *w, enum moe_dtype wdt, const float *bias,
                                int n, int in, int out, float *y)
{
    if (mode == 0 || mode == 3 || (mode == 2 && out <= 1024)) return orig->linear(ctx, x, w, wdt, bias, n, in, out, y);
    float *xr = malloc(sizeof(float) * (size_t)n * in);
    for (size_t i = 0; i < (size_t)n * in; i++) xr[i] = r16(x[i]);
    enum moe_status st = orig->linear(ctx, xr, w, wdt, bias, n, in, out, y);
    free(xr);
    return st;
}

static enum moe_status w_experts(void *ctx, const float *xp, int n_groups, const int *h_off,
                                 const struct moe_backend_expert *h_w, enum moe_dtype wdt, int hidden, int inter,
                                 float *yp)
{
    if (mode == 0) return orig->moe_experts(ctx, xp, n_groups, h_off, h_w, wdt, hidden, inter, yp);
    for (int g = 0; g < n_groups; g++) {
        int r0 = h_off[g], m = h_off[g + 1] - r0;
        if (!m) continue;
        float *xr = malloc(sizeof(float) * (size_t)m * hidden), *gg = malloc(sizeof(float) * (size_t)m * inter),
              *uu = malloc(sizeof(float) * (size_t)m * inter);
        for (size_t i = 0; i < (size_t)m * hidden; i++) xr[i] = r16(xp[(size_t)r0 * hidden + i]);
        orig->linear(ctx, xr, h_w[g].gate, wdt, NULL, m, hidden, inter, gg);
        orig->linear(ctx, xr, h_w[g].up, wdt, NULL, m, hidden, inter, uu);
        for (size_t i = 0; i < (size_t)m * inter; i++) gg[i] = r16(gg[i] / (1.0f + expf(-gg[i])) * uu[i]);
        orig->linear(ctx, gg, h_w[g].down, wdt, NULL, m, inter, hidden, yp + (size_t)r0 * hidden);
        free(xr), free(gg), free(uu);
    }
    return MOE_OK;
}

static float *ref_f32(struct moe_st_file *f, const char *name, int64_t *cols)
{
    const struct moe_st_tensor *t = moe_st_find(f, name);
    if (!t) return NULL;
    struct moe_wview v = moe_wview_from_tensor(t);
    float *out = malloc(sizeof(float) * (size_t)(v.rows * v.cols));
    moe_wview_to_f32(&v, out);
    if (cols) *cols = v.cols;
    return out;
}

static void run_prompt(struct moe_engine *e, int seq, const int *ids, int n, float *out)
{
    int *pos = malloc(sizeof(int) * n), *sq = malloc(sizeof(int) * n);
    int base = moe_engine_seq_len(e, seq);
    for (int i = 0; i < n; i++) pos[i] = base + i, sq[i] = seq;
    struct moe_batch b = { .n = n, .tokens = ids, .seq = sq, .pos = pos };
    if (moe_engine_forward(e, &b, out)) {
        fprintf(stderr, "gpu_bf16_emulate: %s\n", moe_last_error());
        exit(1);
    }
    free(pos), free(sq);
}

int main(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(argc == 2 ? stdout : stderr, "usage: gpu_bf16_emulate MODEL_DIR\n");
        return argc == 2 && !strcmp(argv[1], "--help") ? 0 : 2;
    }
    const char *dir = argv[1];
    char rp[4200];
    struct moe_model *m = moe_model_open(dir);
    if (!m) {
        fprintf(stderr, "gpu_bf16_emulate: %s\n", moe_last_error());
        return 1;
    }
    snprintf(rp, sizeof rp, "%s/reference.safetensors", dir);
    struct moe_st_file *ref = moe_st_open(rp);
    struct moe_backend *cb = moe_backend_cpu_create(NULL);
    if (!ref || !cb) {
        fprintf(stderr, "gpu_bf16_emulate: %s\n", moe_last_error());
        return 1;
    }
    orig = cb->ops;
    mine = *orig;
    mine.linear = w_linear;
    mine.moe_experts = w_experts;
    struct moe_backend wb = *cb;
    wb.ops = &mine;
    int V = m->cfg.vocab;
    for (mode = 0; mode < 4; mode++) {
        struct moe_engine_params ep = { .max_seqs = 2, .max_ctx = 128, .max_batch_tokens = 64, .backend = &wb };
        struct moe_engine *e = moe_engine_create(m, &ep);
        if (!e) {
            fprintf(stderr, "gpu_bf16_emulate: %s\n", moe_last_error());
            return 1;
        }
        for (int p = 0; p < 2; p++) {
            char nm[64];
            int64_t T = 0, G = 0;
            snprintf(nm, sizeof nm, "p%d.input_ids", p);
            float *idf = ref_f32(ref, nm, &T);
            if (!idf) break;
            snprintf(nm, sizeof nm, "p%d.logits", p);
            float *rl = ref_f32(ref, nm, NULL);
            snprintf(nm, sizeof nm, "p%d.greedy_ids", p);
            float *gf = ref_f32(ref, nm, &G);
            int ids[256];
            if (T > 256) T = 256;
            for (int i = 0; i < T; i++) ids[i] = (int)idf[i];
            float *lg = malloc(sizeof(float) * (size_t)T * V);
            int seq = moe_engine_seq_alloc(e);
            run_prompt(e, seq, ids, (int)T, lg);
            double d = 0, mx = 0;
            for (size_t i = 0; i < (size_t)T * V; i++) {
                d = fmax(d, fabs(lg[i] - rl[i]));
                mx = fmax(mx, fabs(rl[i]));
            }
            int tok = moe_argmax(lg + (size_t)(T - 1) * V, V), mism = -1;
            for (int g = 0; g < G; g++) {
                if (tok != (int)gf[g] && mism < 0) mism = g;
                if (g + 1 == G) break;
                run_prompt(e, seq, &tok, 1, lg);
                tok = moe_argmax(lg, V);
            }
            printf("%-8s p%d: logits max abs diff vs HF %.4f (max |logit| %.1f); greedy: %s (%lld tokens, "
                   "prompt not pad-masked)\n", mode_names[mode], p, d, mx,
                   mism < 0 ? "all equal" : "differs", (long long)G);
            moe_engine_seq_free(e, seq);
            free(idf), free(rl), free(gf), free(lg);
        }
        moe_engine_destroy(e);
    }
    moe_backend_destroy(cb);
    moe_st_close(ref);
    moe_model_close(m);
    return 0;
}
