/* GPU benchmark: decode steps through the MoE layers of a synthetic model with
 * real Mixtral-8x7B expert shapes (hidden 4096, inter 14336, 8 experts, top-2,
 * BF16: 336 MiB per expert), as many layers as the device holds, routing
 * replayed from a moeflow trace (--trace) or, without one, from a seeded
 * synthetic router with skewed popularity and temporal locality.  The GPU
 * tier holds 25 %, 50 % and 100 % of the experts; every step acquires each
 * layer's experts (copies on miss), permutes the batch's tokens, runs the
 * expert FFN, un-permutes and releases.  Attention and the dense parts are
 * not run: the figures isolate expert movement and expert compute.
 * --attention LIST adds a separate decode-attention case (batch 1, BF16 cache,
 * Mixtral's and DeepSeek-V3's latent head shapes at the listed contexts, the
 * split kernels against the unsplit one).
 *
 * Prints, per batch size and capacity: tokens/s, experts loaded per step,
 * achieved host->device GB/s, the bound (loads x transfer time at the PCIe
 * ceiling + compute time of the all-resident run) and tokens/s against it,
 * and expert GEMM GB/s against the device's measured copy bandwidth.
 * A benchmark, not a test: it never fails on timings. */
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../kernels/cuda/cuda_ops.h"
#include "../offload/cuda_tier.h"
#include "../offload/trace.h"

struct bench {
    struct moe_cuda_ctx *c;
    int hidden, inter, E, K, L;
    size_t mat_elems, slot_bytes;
    int n_payloads;
    uint16_t *h_payload;            /* [n_payloads][gate|up|down] pinned-or-not */
    bool pinned;
    struct moe_trace *trace;
    double pcie_ceiling;            /* GB/s */
    FILE *json;
    int json_first;
};

static const void *host_mat(void *ud, int layer, int e, int which)
{
    struct bench *b = ud;
    size_t p = ((size_t)layer * (size_t)b->E + (size_t)e) % (size_t)b->n_payloads;
    return b->h_payload + (p * 3 + (size_t)which) * b->mat_elems;
}

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct fill_part {
    uint16_t *p;   /* first element of this part */
    size_t n;      /* elements */
    uint64_t seed; /* xorshift state, never 0 */
};

/* Small random BF16 values: sign, exponent 2^-7..2^-4, 7 random mantissa bits. */
static void *fill_part_run(void *arg)
{
    const struct fill_part *f = arg;
    uint64_t x = f->seed;
    for (size_t i = 0; i < f->n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        f->p[i] = (uint16_t)((x & 0x8000u) | ((0x78u + ((x >> 16) & 3u)) << 7) | ((x >> 24) & 0x7fu));
    }
    return NULL;
}

/* Pinned host payloads filled with small random BF16 values, one part per
 * CPU (up to 32): the payloads are gigabytes, and one thread took seconds of
 * device time to fill them.  The values depend on the part count only through
 * where each part's seed starts, which the benchmark does not rely on. */
static enum moe_status payloads_alloc(struct bench *b)
{
    size_t n = (size_t)b->n_payloads * 3 * b->mat_elems;
    enum moe_status st = moe_cuda_host_alloc((void **)&b->h_payload, n * 2, &b->pinned);
    if (st != MOE_OK) return st;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int np = cpus < 1 ? 1 : cpus > 32 ? 32 : (int)cpus;
    struct fill_part parts[32];
    pthread_t tids[32];
    bool started[32] = { false };
    for (int i = 0; i < np; i++) {
        size_t lo = n * (size_t)i / (size_t)np, hi = n * (size_t)(i + 1) / (size_t)np;
        parts[i] = (struct fill_part){ b->h_payload + lo, hi - lo, mix((uint64_t)i) | 1u };
        started[i] = i > 0 && pthread_create(&tids[i], NULL, fill_part_run, &parts[i]) == 0;
    }
    for (int i = 0; i < np; i++)
        if (!started[i]) fill_part_run(&parts[i]); /* part 0, and any part whose thread did not start */
    for (int i = 1; i < np; i++)
        if (started[i]) pthread_join(tids[i], NULL);
    return MOE_OK;
}

/* Experts of sequence b at step s, layer l: from the trace (mapped onto E
 * experts, top-K, layer l % n_moe) or synthetic. */
static void route(const struct bench *bb, int b, int s, int l, int *ids)
{
    if (bb->trace) {
        const struct moe_trace *t = bb->trace;
        size_t i = ((size_t)b * 997 + (size_t)s) % t->n_tokens;
        const int *src = moe_trace_experts(t, i, l % t->info.n_moe);
        int n = 0;
        for (int j = 0; j < t->info.top_k && n < bb->K; j++) {
            int e = src[j] % bb->E, dup = 0;
            for (int q = 0; q < n; q++) dup |= ids[q] == e;
            if (!dup) ids[n++] = e;
        }
        for (int e = 0; n < bb->K; e++) {
            int dup = 0;
            for (int q = 0; q < n; q++) dup |= ids[q] == e;
            if (!dup) ids[n++] = e;
        }
        return;
    }
    /* synthetic: a token keeps its previous choice at this layer with
     * probability 1/2 (runs of 2 steps), else draws by Zipf(1) popularity over
     * a per-layer permutation of the experts */
    int s_eff = s - (int)(mix(((uint64_t)b << 40) ^ ((uint64_t)l << 20) ^ (uint64_t)s) & 1);
    if (s_eff < 0) s_eff = 0;
    uint64_t h = mix(((uint64_t)b << 40) ^ ((uint64_t)l << 20) ^ (uint64_t)s_eff ^ 0x5eed);
    double hsum = 0;
    for (int e = 1; e <= bb->E; e++) hsum += 1.0 / e;
    int n = 0;
    while (n < bb->K) {
        double u = (double)((h = mix(h)) >> 11) * (1.0 / 9007199254740992.0) * hsum, acc = 0;
        int rank = 0;
        for (; rank < bb->E - 1; rank++) {
            acc += 1.0 / (rank + 1);
            if (u < acc) break;
        }
        int e = (int)((rank + (uint64_t)l * 3) % (uint64_t)bb->E);
        int dup = 0;
        for (int q = 0; q < n; q++) dup |= ids[q] == e;
        if (!dup) ids[n++] = e;
    }
}

struct result {
    double tok_s, step_s, loads_per_step, h2d_GBs, h2d_busy_GBs, bound_tok_s, ffn_weight_GBs;
    unsigned long long hits, misses, waits;
};

/* One configuration: batch B, slots, steps (after warm-up steps). */
static int run(struct bench *b, int B, int slots, int warm, int steps, bool prefetch, double compute_step_s,
               struct result *res)
{
    struct moe_cuda_tier_params tp = {
        .n_layers = b->L, .n_experts = b->E, .slots = slots,
        .mat_bytes = { b->mat_elems * 2, b->mat_elems * 2, b->mat_elems * 2 },
        .policy = MOE_POLICY_LRU, .host_mat = host_mat, .ud = b, .time_copies = true,
    };
    struct moe_cuda_tier *t = moe_cuda_tier_create(b->c, &tp);
    int rows = B * b->K, rc = 1;
    int *ids = malloc(sizeof(int) * (size_t)rows), *counts = malloc(sizeof(int) * (size_t)b->E),
        *offs = malloc(sizeof(int) * (size_t)(b->E + 1)), *prow = malloc(sizeof(int) * (size_t)rows),
        *inv = malloc(sizeof(int) * (size_t)rows), *nids = malloc(sizeof(int) * (size_t)rows);
    float *w = malloc(sizeof(float) * (size_t)rows);
    int *g_off = malloc(sizeof(int) * (size_t)(b->E + 1)), *g_e = malloc(sizeof(int) * (size_t)b->E);
    struct moe_expert_ref *refs = malloc(sizeof(*refs) * (size_t)b->E);
    struct moe_cuda_expert *ex = malloc(sizeof(*ex) * (size_t)b->E);
    void *dx = NULL, *dxp = NULL, *dyp = NULL, *dout = NULL, *drows = NULL, *dinv = NULL, *dw = NULL;
    struct moe_cuda_tier_stats s0, s1;
    double t0 = 0;
    uint64_t ffn_bytes = 0;

    if (!t) {
        fprintf(stderr, "gpu_moe_decode: %s\n", moe_last_error());
        goto out;
    }
    if (moe_cuda_alloc(b->c, &dx, sizeof(float) * (size_t)B * b->hidden, "x") ||
        moe_cuda_alloc(b->c, &dxp, sizeof(float) * (size_t)rows * b->hidden, "xp") ||
        moe_cuda_alloc(b->c, &dyp, sizeof(float) * (size_t)rows * b->hidden, "yp") ||
        moe_cuda_alloc(b->c, &dout, sizeof(float) * (size_t)B * b->hidden, "out") ||
        moe_cuda_alloc(b->c, &drows, sizeof(int) * (size_t)rows, "rows") ||
        moe_cuda_alloc(b->c, &dinv, sizeof(int) * (size_t)rows, "inv") ||
        moe_cuda_alloc(b->c, &dw, sizeof(float) * (size_t)rows, "w")) {
        fprintf(stderr, "gpu_moe_decode: %s\n", moe_last_error());
        goto out;
    }
    moe_cuda_memset(b->c, dx, 0, sizeof(float) * (size_t)B * b->hidden);
    for (int i = 0; i < rows; i++) w[i] = 1.0f / (float)b->K;

    for (int s = 0; s < warm + steps; s++) {
        if (s == warm) {
            if (moe_cuda_ctx_sync(b->c) || moe_cuda_tier_drain(t)) goto dev_err;
            moe_cuda_tier_get_stats(t, &s0);
            ffn_bytes = 0;
            t0 = moe_now();
        }
        for (int l = 0; l < b->L; l++) {
            int ng = 0;
            for (int q = 0; q < B; q++) route(b, q, s, l, ids + (size_t)q * b->K);
            if (moe_moe_plan(ids, B, b->K, b->E, counts, offs, prow, inv)) goto dev_err;
            g_off[0] = 0;
            for (int e = 0; e < b->E; e++) {
                int cnt = offs[e + 1] - offs[e];
                if (!cnt) continue;
                g_e[ng] = e;
                g_off[ng + 1] = g_off[ng] + cnt;
                ng++;
            }
            if (moe_cuda_tier_acquire(t, l, ng, g_e, refs)) goto dev_err;
            if (prefetch && l + 1 < b->L) { /* after acquire: this layer's experts are pinned */
                for (int q = 0; q < B; q++) route(b, q, s, l + 1, nids + (size_t)q * b->K);
                moe_cuda_tier_prefetch(t, l + 1, rows, nids, NULL, 1);
            }
            for (int g = 0; g < ng; g++) {
                ex[g].gate = refs[g].gate;
                ex[g].up = refs[g].up;
                ex[g].down = refs[g].down;
            }
            ffn_bytes += (uint64_t)ng * b->slot_bytes;
            /* the host plan arrays are uploaded on the compute stream (pageable: staged at the call) */
            if (moe_cuda_h2d(b->c, drows, prow, sizeof(int) * (size_t)rows) ||
                moe_cuda_h2d(b->c, dinv, inv, sizeof(int) * (size_t)rows) ||
                moe_cuda_h2d(b->c, dw, w, sizeof(float) * (size_t)rows) ||
                moe_cuda_gather_rows(b->c, dx, drows, rows, b->hidden, dxp) ||
                moe_cuda_expert_ffn(b->c, dxp, ng, g_off, ex, MOE_DT_BF16, b->hidden, b->inter, dyp) ||
                moe_cuda_moe_combine(b->c, dyp, dinv, dw, B, b->K, b->hidden, false, dout))
                goto dev_err;
            moe_cuda_tier_release(t, l);
            /* the plan arrays are reused next layer: keep host and device in step */
            if (moe_cuda_ctx_sync(b->c)) goto dev_err;
        }
    }
    if (moe_cuda_ctx_sync(b->c)) goto dev_err;
    {
        double el = moe_now() - t0;
        if (moe_cuda_tier_drain(t)) goto dev_err;
        moe_cuda_tier_get_stats(t, &s1);
        double loads = (double)(s1.loads - s0.loads);
        double xfer_s = (double)b->slot_bytes / (b->pcie_ceiling * 1e9);
        res->step_s = el / steps;
        res->tok_s = (double)B * steps / el;
        res->loads_per_step = loads / steps;
        res->h2d_GBs = loads > 0 ? loads * (double)b->slot_bytes / el / 1e9 : 0;
        res->h2d_busy_GBs = s1.copy_s > s0.copy_s ? (double)(s1.bytes_h2d - s0.bytes_h2d) / (s1.copy_s - s0.copy_s) / 1e9
                                                  : 0;
        res->bound_tok_s = compute_step_s > 0
            ? (double)B / (res->loads_per_step * xfer_s + compute_step_s) : 0;
        res->ffn_weight_GBs = (double)ffn_bytes / el / 1e9;
        res->hits = s1.hits - s0.hits;
        res->misses = s1.misses - s0.misses;
        res->waits = s1.waits - s0.waits;
    }
    rc = 0;
    goto out;
dev_err:
    fprintf(stderr, "gpu_moe_decode: batch %d slots %d: %s\n", B, slots, moe_last_error());
out:
    moe_cuda_free(b->c, dx); moe_cuda_free(b->c, dxp); moe_cuda_free(b->c, dyp); moe_cuda_free(b->c, dout);
    moe_cuda_free(b->c, drows); moe_cuda_free(b->c, dinv); moe_cuda_free(b->c, dw);
    moe_cuda_tier_destroy(t);
    free(ids); free(counts); free(offs); free(prow); free(inv); free(nids); free(w); free(g_off); free(g_e);
    free(refs); free(ex);
    return rc;
}

/* Host -> device GB/s of n expert loads into empty slots. */
static double measure_h2d(struct bench *b, int n)
{
    struct moe_cuda_tier_params tp = {
        .n_layers = b->L, .n_experts = b->E, .slots = n,
        .mat_bytes = { b->mat_elems * 2, b->mat_elems * 2, b->mat_elems * 2 },
        .policy = MOE_POLICY_LRU, .host_mat = host_mat, .ud = b,
    };
    struct moe_cuda_tier *t = moe_cuda_tier_create(b->c, &tp);
    double gbs = 0;
    if (!t) return 0;
    int *ids = malloc(sizeof(int) * (size_t)b->E);
    for (int e = 0; e < b->E; e++) ids[e] = e;
    /* warm the path once, then time n fresh loads */
    moe_cuda_tier_prefetch(t, 0, 1, ids, NULL, 0);
    moe_cuda_tier_drain(t);
    moe_cuda_tier_destroy(t);
    t = moe_cuda_tier_create(b->c, &tp);
    if (t) {
        double t0 = moe_now();
        int done = 0;
        for (int l = 0; l < b->L && done < n; l++) {
            int m = n - done < b->E ? n - done : b->E;
            moe_cuda_tier_prefetch(t, l, m, ids, NULL, 0);
            done += m;
        }
        if (moe_cuda_tier_drain(t) == MOE_OK) gbs = (double)done * (double)b->slot_bytes / (moe_now() - t0) / 1e9;
        moe_cuda_tier_destroy(t);
    }
    free(ids);
    return gbs;
}

/* Device-to-device copy bandwidth (bytes read + written), the HBM reference. */
static double measure_d2d(struct bench *b)
{
    size_t bytes = (size_t)1 << 30;
    void *a = NULL, *z = NULL;
    double gbs = 0;
    if (moe_cuda_alloc(b->c, &a, bytes, "d2d a") || moe_cuda_alloc(b->c, &z, bytes, "d2d b")) goto out;
    moe_cuda_d2d(b->c, z, a, bytes);
    moe_cuda_ctx_sync(b->c);
    double t0 = moe_now();
    for (int i = 0; i < 10; i++) moe_cuda_d2d(b->c, z, a, bytes);
    if (moe_cuda_ctx_sync(b->c) == MOE_OK) gbs = 10.0 * 2.0 * (double)bytes / (moe_now() - t0) / 1e9;
out:
    moe_cuda_free(b->c, a);
    moe_cuda_free(b->c, z);
    return gbs;
}

/* Decode attention, one token: Mixtral-8x7B's heads (32 query heads over 8 KV heads of 128) and
 * DeepSeek-V3's latent attention (128 heads over one KV head of 576, keys and values the same rows,
 * as the engine passes them) over a BF16 cache of max(contexts) positions, the token at each
 * context's last position (that position the call's pos_max, as the engine gives it: the split's
 * partials and block count follow the context, not the cache); split as the context chooses
 * (auto) and unsplit (one block per head group); microseconds per call over `reps` calls after 3
 * untimed ones, and the cache bytes the call covers per second.  Returns 0, or 1 on a device
 * error. */
static int attention_bench(struct bench *b, const int *ctxs, int nctx, int reps, double d2d)
{
    static const struct { const char *name; int nh, nkv, hd; } shapes[] = {
        { "mixtral", 32, 8, 128 }, { "deepseek_v3_latent", 128, 1, 576 },
    };
    int max_ctx = 0, rc = 0, seq = 0, rows = 0;
    for (int i = 0; i < nctx; i++) max_ctx = ctxs[i] > max_ctx ? ctxs[i] : max_ctx;
    printf("decode attention, batch 1, BF16 cache of %d positions (us per call; cache GB/s covered)\n", max_ctx);
    printf("%20s %8s %12s %12s %10s %10s\n", "shape", "context", "split us", "unsplit us", "split GB/s", "vs HBM");
    if (b->json) fprintf(b->json, ",\"attention\":{\"batch\":1,\"max_ctx\":%d,\"reps\":%d,\"runs\":[", max_ctx, reps);
    for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]) && !rc; si++) {
        int nh = shapes[si].nh, nkv = shapes[si].nkv, hd = shapes[si].hd;
        bool latent = nkv == 1;
        size_t kv_elems = (size_t)max_ctx * (size_t)nkv * (size_t)hd, q_elems = (size_t)nh * (size_t)hd;
        uint16_t *h = malloc(kv_elems * 2);
        float *hq = malloc(q_elems * 4);
        void *dk = NULL, *dv = NULL, *dq = NULL, *dout = NULL, *dsp = NULL;
        uint64_t x = 0x9e3779b97f4a7c15ull ^ si;
        if (!h || !hq) {
            fprintf(stderr, "gpu_moe_decode: attention: out of host memory\n");
            free(h), free(hq);
            return 1;
        }
        for (size_t i = 0; i < kv_elems + q_elems; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            if (i < kv_elems) /* BF16 of magnitude 2^-7..2^-4, random sign and mantissa */
                h[i] = (uint16_t)((x & 0x8000u) | ((0x78u + ((x >> 16) & 3u)) << 7) | ((x >> 24) & 0x7fu));
            else /* queries in [-2, 2) */
                hq[i - kv_elems] = (float)((int)(x >> 56) - 128) / 64.0f;
        }
        if (moe_cuda_alloc(b->c, &dk, kv_elems * 2, "attention K") ||
            (!latent && moe_cuda_alloc(b->c, &dv, kv_elems * 2, "attention V")) ||
            moe_cuda_alloc(b->c, &dq, q_elems * 4, "attention q") || moe_cuda_alloc(b->c, &dout, q_elems * 4, "attention out") ||
            moe_cuda_alloc(b->c, &dsp, 2 * sizeof(int), "attention seq/pos") ||
            moe_cuda_h2d(b->c, dk, h, kv_elems * 2) || (!latent && moe_cuda_h2d(b->c, dv, h, kv_elems * 2)) ||
            moe_cuda_h2d(b->c, dq, hq, q_elems * 4) || moe_cuda_h2d(b->c, dsp, &seq, sizeof(int)) ||
            moe_cuda_ctx_sync(b->c)) {
            fprintf(stderr, "gpu_moe_decode: attention: %s\n", moe_last_error());
            rc = 1;
        }
        const int *d_seq = dsp, *d_pos = (const int *)dsp + 1;
        for (int ci = 0; ci < nctx && !rc; ci++) {
            int pos = ctxs[ci] - 1;
            double us[2] = { 0, 0 };
            rc = moe_cuda_h2d(b->c, (int *)dsp + 1, &pos, sizeof(int)) != MOE_OK;
            for (int mode = 0; mode < 2 && !rc; mode++) { /* splits 0 (auto), then 1 (never) */
                rc = moe_cuda_ctx_set_attn_splits(b->c, mode) != MOE_OK;
                double t0 = 0;
                for (int i = 0; i < 3 + reps && !rc; i++) {
                    if (i == 3) {
                        rc = moe_cuda_ctx_sync(b->c) != MOE_OK;
                        t0 = moe_now();
                    }
                    if (!rc)
                        rc = moe_cuda_attention(b->c, dq, dk, latent ? dk : dv, MOE_DT_BF16, d_seq, d_pos, 1, pos,
                                                nh, nkv, hd, max_ctx, 0, 1.0f / sqrtf((float)hd), dout) != MOE_OK;
                }
                if (!rc) rc = moe_cuda_ctx_sync(b->c) != MOE_OK;
                us[mode] = (moe_now() - t0) / reps * 1e6;
            }
            if (rc) {
                fprintf(stderr, "gpu_moe_decode: attention: %s\n", moe_last_error());
                break;
            }
            /* the K and V rows the call covers (one set for latent attention: its keys are its values) */
            double bytes = (double)ctxs[ci] * (double)nkv * hd * 2.0 * (latent ? 1 : 2), gbs = bytes / (us[0] * 1e3);
            printf("%20s %8d %12.1f %12.1f %10.0f %9.0f%%\n", shapes[si].name, ctxs[ci], us[0], us[1], gbs,
                   d2d > 0 ? 100.0 * gbs / (d2d / 2) : 0);
            if (b->json)
                fprintf(b->json, "%s{\"shape\":\"%s\",\"heads\":%d,\"kv_heads\":%d,\"head_dim\":%d,\"context\":%d,"
                        "\"split_us\":%.2f,\"unsplit_us\":%.2f,\"split_GBs\":%.1f}", rows++ ? "," : "", shapes[si].name,
                        nh, nkv, hd, ctxs[ci], us[0], us[1], gbs);
        }
        moe_cuda_ctx_set_attn_splits(b->c, 0);
        moe_cuda_free(b->c, dk), moe_cuda_free(b->c, dv), moe_cuda_free(b->c, dq), moe_cuda_free(b->c, dout);
        moe_cuda_free(b->c, dsp);
        free(h), free(hq);
    }
    if (b->json) fprintf(b->json, "]}");
    return rc;
}

/* The --gemm spelling of a mode. */
static const char *gemm_name(enum moe_cuda_gemm_mode m)
{
    return m == MOE_CUDA_GEMM_LOOP ? "loop" : m == MOE_CUDA_GEMM_GROUPED ? "grouped" : "invariant";
}

static void usage(FILE *f)
{
    fprintf(f, "usage: gpu_moe_decode [options]\n"
               "  --layers N        MoE layers (0 = as many as fit in 85%% of free device memory, max 64)\n"
               "  --batches LIST    batch sizes (default 1,8,64)\n"
               "  --capacities LIST GPU-tier capacity in %% of all experts (default 25,50,100)\n"
               "  --steps N         timed decode steps per configuration (default 8)\n"
               "  --warm N          untimed warm-up steps (default 2)\n"
               "  --trace FILE      replay routing from a moeflow trace (default: synthetic router)\n"
               "  --prefetch        also run with oracle next-layer prefetch\n"
               "  --hidden N --inter N --experts N --top-k N   expert shape (default Mixtral-8x7B)\n"
               "  --payloads N      distinct host expert payloads (default 16; keys alias onto them)\n"
               "  --pcie GBS        PCIe ceiling for the bound (default 55, docs/hw)\n"
               "  --gemm MODE       expert GEMMs: loop (cuBLAS, BF16 activations; default), grouped\n"
               "                    (cublasGemmGroupedBatchedEx; refused for BF16 weights, then loop runs: the\n"
               "                    output and the JSON \"gemm\" say which ran) or invariant (own F32-activation\n"
               "                    kernel, one grouped launch per projection)\n"
               "  --attention LIST  also time decode attention (batch 1, BF16 cache) at these contexts, split and\n"
               "                    unsplit, after the MoE runs (JSON: \"attention\")\n"
               "  --json FILE       also write the results as JSON\n");
}

static int parse_list(const char *s, int *out, int cap)
{
    int n = 0;
    while (*s && n < cap) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v <= 0) return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return n;
}

int main(int argc, char **argv)
{
    struct bench b = { .hidden = 4096, .inter = 14336, .E = 8, .K = 2, .n_payloads = 16, .pcie_ceiling = 55 };
    int batches[8] = { 1, 8, 64 }, nb = 3, caps[8] = { 25, 50, 100 }, nc = 3, steps = 8, warm = 2, layers = 0;
    int att_ctx[8], n_att = 0;
    bool prefetch = false;
    const char *trace = NULL, *json = NULL, *gemm = "loop";
    static const struct option opts[] = {
        { "layers", required_argument, 0, 'l' }, { "batches", required_argument, 0, 'b' },
        { "capacities", required_argument, 0, 'c' }, { "steps", required_argument, 0, 's' },
        { "warm", required_argument, 0, 'w' }, { "trace", required_argument, 0, 't' },
        { "prefetch", no_argument, 0, 'p' }, { "hidden", required_argument, 0, 'H' },
        { "inter", required_argument, 0, 'I' }, { "experts", required_argument, 0, 'E' },
        { "top-k", required_argument, 0, 'K' }, { "payloads", required_argument, 0, 'P' },
        { "pcie", required_argument, 0, 'X' }, { "json", required_argument, 0, 'j' },
        { "gemm", required_argument, 0, 'g' }, { "attention", required_argument, 0, 'A' },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'l': layers = atoi(optarg); break;
        case 'b': nb = parse_list(optarg, batches, 8); break;
        case 'c': nc = parse_list(optarg, caps, 8); break;
        case 's': steps = atoi(optarg); break;
        case 'w': warm = atoi(optarg); break;
        case 't': trace = optarg; break;
        case 'p': prefetch = true; break;
        case 'H': b.hidden = atoi(optarg); break;
        case 'I': b.inter = atoi(optarg); break;
        case 'E': b.E = atoi(optarg); break;
        case 'K': b.K = atoi(optarg); break;
        case 'P': b.n_payloads = atoi(optarg); break;
        case 'X': b.pcie_ceiling = atof(optarg); break;
        case 'j': json = optarg; break;
        case 'g': gemm = optarg; break;
        case 'A': n_att = parse_list(optarg, att_ctx, 8); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (nb <= 0 || nc <= 0 || steps <= 0 || warm < 0 || layers < 0 || b.hidden <= 0 || b.inter <= 0 ||
        b.E <= 0 || b.K <= 0 || b.K > b.E || b.n_payloads <= 0 || !(b.pcie_ceiling > 0) || n_att < 0) {
        fprintf(stderr, "gpu_moe_decode: bad option value (lists are comma-separated positive integers; "
                        "top-k <= experts)\n");
        return 2;
    }
    for (int i = 0; i < nc; i++)
        if (caps[i] > 100) {
            fprintf(stderr, "gpu_moe_decode: --capacities %d: at most 100\n", caps[i]);
            return 2;
        }
    enum moe_cuda_gemm_mode gm;
    if (!strcmp(gemm, "loop")) gm = MOE_CUDA_GEMM_LOOP;
    else if (!strcmp(gemm, "grouped")) gm = MOE_CUDA_GEMM_GROUPED;
    else if (!strcmp(gemm, "invariant")) gm = MOE_CUDA_GEMM_INVARIANT;
    else {
        fprintf(stderr, "gpu_moe_decode: --gemm %s: use loop, grouped or invariant\n", gemm);
        return 2;
    }
    if (moe_cuda_device_count() == 0) {
        fprintf(stderr, "gpu_moe_decode: no CUDA device (skipped)\n");
        return 77;
    }
    if (trace && moe_trace_load(trace, &b.trace)) {
        fprintf(stderr, "gpu_moe_decode: %s\n", moe_last_error());
        return 1;
    }
    struct moe_cuda_params cp = { .device = 0, .workspace_bytes = (size_t)512 << 20, .gemm_mode = gm };
    b.c = moe_cuda_ctx_create(&cp);
    if (!b.c) {
        fprintf(stderr, "gpu_moe_decode: %s\n", moe_last_error());
        return 1;
    }
    b.mat_elems = (size_t)b.hidden * (size_t)b.inter;
    b.slot_bytes = 3 * ((b.mat_elems * 2 + 255) & ~(size_t)255);
    if (payloads_alloc(&b) != MOE_OK) {
        fprintf(stderr, "gpu_moe_decode: %s\n", moe_last_error());
        return 1;
    }
    if (layers == 0) {
        size_t fr = 0, tot = 0;
        moe_cuda_mem_info(b.c, &fr, &tot);
        layers = (int)((double)fr * 0.85 / ((double)b.slot_bytes * b.E));
        if (layers > 64) layers = 64;
        if (layers < 1) layers = 1;
    }
    b.L = layers;
    double d2d = measure_d2d(&b), h2d = measure_h2d(&b, b.E * 2 < b.L * b.E ? b.E * 2 : b.L * b.E);
    printf("synthetic MoE: %d layers x %d experts (top-%d), expert %.1f MiB, routing %s, GEMMs %s (asked)\n", b.L, b.E,
           b.K, (double)b.slot_bytes / 1048576.0, trace ? trace : "synthetic (Zipf + locality)", gemm);
    printf("host pool %s; measured: H2D %.1f GB/s (ceiling %.0f), D2D %.0f GB/s (read + write)\n",
           b.pinned ? "pinned" : "PAGEABLE", h2d, b.pcie_ceiling, d2d);
    if (json) {
        b.json = fopen(json, "w");
        if (!b.json) {
            fprintf(stderr, "gpu_moe_decode: cannot write %s\n", json);
            return 1;
        }
        fprintf(b.json, "{\"bench\":\"gpu_moe_decode\",\"layers\":%d,\"experts\":%d,\"top_k\":%d,"
                "\"hidden\":%d,\"inter\":%d,\"expert_bytes\":%zu,\"routing\":\"%s\",\"host_pinned\":%s,"
                "\"h2d_GBs\":%.2f,\"d2d_GBs\":%.1f,\"pcie_ceiling_GBs\":%.1f,\"steps\":%d,\"gemm_asked\":\"%s\",\"runs\":[",
                b.L, b.E, b.K, b.hidden, b.inter, b.slot_bytes, trace ? "trace" : "synthetic",
                b.pinned ? "true" : "false", h2d, d2d, b.pcie_ceiling, steps, gemm);
    }
    printf("%6s %5s %6s %9s %10s %9s %9s %9s %11s %8s %12s %6s\n", "batch", "cap%", "slots", "prefetch",
           "tok/s", "loads/st", "H2D GB/s", "busy GB/s", "bound tok/s", "vs bound", "FFN wt GB/s", "vs HBM");
    int rc = 0;
    for (int i = 0; i < nb; i++) {
        double compute_step = 0;
        struct result full;
        int total = b.L * b.E;
        /* the all-resident run first: its step time is the compute term of the bound */
        if (run(&b, batches[i], total, warm + 1, steps, false, 0, &full)) { rc = 1; continue; }
        compute_step = full.step_s;
        for (int j = 0; j < nc; j++) {
            for (int pf = 0; pf < (prefetch ? 2 : 1); pf++) {
                struct result r;
                int slots = (int)ceil((double)total * caps[j] / 100.0);
                if (slots < b.E) slots = b.E; /* a layer's experts must fit at once */
                if (caps[j] == 100 && !pf) r = full;
                else if (run(&b, batches[i], slots, warm, steps, pf, compute_step, &r)) { rc = 1; continue; }
                if (caps[j] == 100 && !pf) r.bound_tok_s = (double)batches[i] / compute_step;
                printf("%6d %5d %6d %9s %10.2f %9.1f %9.1f %9.1f %11.2f %7.0f%% %12.0f %5.0f%%\n", batches[i],
                       caps[j], slots, pf ? "oracle" : "none", r.tok_s, r.loads_per_step, r.h2d_GBs, r.h2d_busy_GBs,
                       r.bound_tok_s,
                       r.bound_tok_s > 0 ? 100.0 * r.tok_s / r.bound_tok_s : 0, r.ffn_weight_GBs,
                       d2d > 0 ? 100.0 * r.ffn_weight_GBs / (d2d / 2) : 0);
                if (b.json) {
                    fprintf(b.json, "%s{\"batch\":%d,\"capacity_pct\":%d,\"slots\":%d,\"prefetch\":\"%s\","
                            "\"tok_s\":%.3f,\"step_s\":%.6f,\"loads_per_step\":%.2f,\"h2d_GBs\":%.2f,\"h2d_busy_GBs\":%.2f,"
                            "\"bound_tok_s\":%.3f,\"ffn_weight_GBs\":%.1f,\"hits\":%llu,\"misses\":%llu,"
                            "\"waits\":%llu}", b.json_first++ ? "," : "", batches[i], caps[j], slots,
                            pf ? "oracle" : "none", r.tok_s, r.step_s, r.loads_per_step, r.h2d_GBs, r.h2d_busy_GBs,
                            r.bound_tok_s, r.ffn_weight_GBs, r.hits, r.misses, r.waits);
                }
            }
        }
    }
    /* GROUPED with BF16 weights falls back to LOOP at its first call: report what ran */
    const char *ran = gemm_name(moe_cuda_ctx_gemm_mode(b.c));
    printf("GEMMs run: %s%s\n", ran, strcmp(ran, gemm) ? " (the context fell back from the mode asked)" : "");
    printf("H2D GB/s = bytes loaded / wall time; busy GB/s = bytes loaded / copy-engine time (CUDA events);\n"
           "bound = loads x (expert bytes / PCIe ceiling) + all-resident step time; "
           "vs HBM = expert weight bytes read per second / (D2D copy GB/s / 2)\n");
    if (b.json) fprintf(b.json, "],\"gemm\":\"%s\"", ran);
    if (n_att > 0 && attention_bench(&b, att_ctx, n_att, 20, d2d)) rc = 1;
    if (b.json) {
        fprintf(b.json, "}\n");
        fclose(b.json);
    }
    moe_cuda_host_free(b.h_payload, b.pinned);
    moe_trace_free(b.trace);
    moe_cuda_ctx_destroy(b.c);
    return rc;
}
