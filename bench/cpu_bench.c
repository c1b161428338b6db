/* CPU throughput of the engine on a model (default: the bundled one):
 * prefill of one 512-token prompt, and greedy decode at batch 1 and at batch
 * 16 (16 sequences, one token each per step), all experts resident.
 * Prints the figures and one JSON line, tokens per second of wall time and
 * (the *_tok_cpu_s fields) of the process's CPU time, steadier on a machine
 * other processes share.  A benchmark, not a test: it never fails on a timing.
 *
 *   cpu_bench [--model DIR] [--threads N] [--steps N] [--blas] [--reps N] [--kv-dtype f32|bf16] */
#include "common/moe.h"
#include "engine/engine.h"
#include "engine/sampling.h"
#include "model/model.h"

#include <getopt.h>
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct bench_opts {
    const char *model_dir;
    int threads;      /* engine n_threads */
    int steps;        /* decode steps timed */
    int reps;         /* prefill repetitions (best is reported) */
    bool blas;        /* GEMMs via OpenBLAS (not batch-invariant) */
    enum moe_dtype kv_dtype; /* the KV cache's elements */
};

/* Seconds of CPU time this process has used (all its threads). */
static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void fill_ids(int *ids, int n, int vocab, uint32_t seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        ids[i] = 1 + (int)((seed >> 8) % (uint32_t)(vocab - 1));
    }
}

/* Prefill n tokens of one fresh sequence; returns seconds, and in *cpu the
 * process's CPU seconds. */
static double time_prefill(struct moe_engine *e, const int *ids, int n, float *logits, double *cpu)
{
    int seq = moe_engine_seq_alloc(e);
    int *pos = malloc(sizeof(int) * (size_t)n), *sq = malloc(sizeof(int) * (size_t)n);
    bool *want = calloc((size_t)n, sizeof(bool));
    for (int i = 0; i < n; i++) pos[i] = i, sq[i] = seq;
    want[n - 1] = true;
    struct moe_batch b = { .n = n, .tokens = ids, .seq = sq, .pos = pos, .want_logits = want };
    double t0 = moe_now(), c0 = cpu_now();
    enum moe_status st = moe_engine_forward(e, &b, logits);
    double dt = moe_now() - t0;
    *cpu = cpu_now() - c0;
    if (st != MOE_OK) {
        fprintf(stderr, "cpu_bench: prefill: %s\n", moe_last_error());
        dt = -1;
    }
    moe_engine_seq_free(e, seq);
    free(pos), free(sq), free(want);
    return dt;
}

/* nseq sequences, each prefilled with plen tokens, then `steps` greedy decode
 * steps of one token per sequence; returns decode seconds, and in *cpu the
 * process's CPU seconds. */
static double time_decode(struct moe_engine *e, int nseq, int plen, int steps, int vocab, double *cpu)
{
    int *slot = malloc(sizeof(int) * (size_t)nseq), *tok = malloc(sizeof(int) * (size_t)nseq);
    int *pos = malloc(sizeof(int) * (size_t)nseq);
    int *ids = malloc(sizeof(int) * (size_t)plen);
    float *lg = malloc(sizeof(float) * (size_t)nseq * (size_t)vocab);
    double dt = -1;
    for (int s = 0; s < nseq; s++) {
        slot[s] = moe_engine_seq_alloc(e);
        fill_ids(ids, plen, vocab, 77u + (uint32_t)s);
        int pp[512], sq[512];
        bool want[512];
        for (int i = 0; i < plen; i++) pp[i] = i, sq[i] = slot[s], want[i] = i == plen - 1;
        struct moe_batch b = { .n = plen, .tokens = ids, .seq = sq, .pos = pp, .want_logits = want };
        if (moe_engine_forward(e, &b, lg) != MOE_OK) goto out;
        tok[s] = moe_argmax(lg, vocab);
    }
    double t0 = moe_now(), c0 = cpu_now();
    for (int st = 0; st < steps; st++) {
        for (int s = 0; s < nseq; s++) pos[s] = moe_engine_seq_len(e, slot[s]);
        struct moe_batch b = { .n = nseq, .tokens = tok, .seq = slot, .pos = pos };
        if (moe_engine_forward(e, &b, lg) != MOE_OK) goto out;
        for (int s = 0; s < nseq; s++) tok[s] = moe_argmax(lg + (size_t)s * vocab, vocab);
    }
    dt = moe_now() - t0;
    *cpu = cpu_now() - c0;
out:
    if (dt < 0) fprintf(stderr, "cpu_bench: decode: %s\n", moe_last_error());
    for (int s = 0; s < nseq; s++) moe_engine_seq_free(e, slot[s]);
    free(slot), free(tok), free(pos), free(ids), free(lg);
    return dt;
}

/* Multiply-adds of the weight matrices one token goes through below the
 * lm_head (projections, router, its top-k experts, shared expert or dense
 * MLP).  2 x this = matmul FLOPs. */
static double body_macs(const struct moe_config *c)
{
    double H = c->hidden, Q = (double)c->n_heads * c->head_dim, KV = (double)c->n_kv_heads * c->head_dim;
    double macs = 0;
    for (int l = 0; l < c->n_layers; l++) {
        macs += 2 * Q * H + 2 * KV * H;
        if (c->is_moe[l])
            macs += (double)c->n_experts * H + (double)c->top_k * 3 * c->expert_inter * H +
                    3.0 * c->shared_inter * H;
        else
            macs += 3.0 * c->dense_inter * H;
    }
    return macs;
}

/* ... of the lm_head, for a token whose logits are wanted */
static double head_macs(const struct moe_config *c)
{
    return (double)c->vocab * c->hidden;
}

/* ... of attention (scores and the weighted sum) for a token seeing ctx positions */
static double attn_macs(const struct moe_config *c, double ctx)
{
    return 2.0 * c->n_layers * c->n_heads * c->head_dim * ctx;
}

/* Bytes of the weight matrices of the whole model (every expert), wbytes a
 * weight: the working set decode reads from, token by token. */
static double model_weight_bytes(const struct moe_config *c, double wbytes)
{
    struct moe_config all = *c;
    all.top_k = c->n_experts;
    return wbytes * (body_macs(&all) + head_macs(c));
}

/* The machine's ceilings for this work, measured on the thread that runs
 * the engine: how fast one core reads a buffer the size of the model's
 * weights (AVX2 loads, best of 20 passes), and its peak of F32 FMAs (ten
 * independent chains, enough to fill two FMA ports of latency 4-5). */
__attribute__((target("avx2,fma"))) static double read_ceiling_gbs(size_t bytes)
{
    size_t n = bytes / 32 * 32;
    __m256i *buf = aligned_alloc(64, n);
    if (!buf) return 0;
    memset(buf, 1, n);
    double best = 0;
    for (int pass = 0; pass < 21; pass++) {
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        double t0 = moe_now();
        for (size_t i = 0; i + 4 <= n / 32; i += 4) {
            a0 = _mm256_xor_si256(a0, _mm256_load_si256(buf + i));
            a1 = _mm256_xor_si256(a1, _mm256_load_si256(buf + i + 1));
            a2 = _mm256_xor_si256(a2, _mm256_load_si256(buf + i + 2));
            a3 = _mm256_xor_si256(a3, _mm256_load_si256(buf + i + 3));
        }
        double dt = moe_now() - t0;
        volatile int sink = _mm256_extract_epi32(_mm256_xor_si256(_mm256_xor_si256(a0, a1),
                                                                  _mm256_xor_si256(a2, a3)), 0);
        (void)sink;
        if (pass > 0 && dt > 0 && n / dt > best) best = (double)n / dt; /* pass 0 warms the caches */
    }
    free(buf);
    return best * 1e-9;
}

/* ten named accumulators: an array could be kept in memory at -O2, and the
 * chains would then wait on loads and stores, not on the FMA units */
__attribute__((target("avx2,fma"))) static double fma_peak_gflops(void)
{
    __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-3f);
    __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2), a3 = _mm256_set1_ps(3),
           a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5), a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7),
           a8 = _mm256_set1_ps(8), a9 = _mm256_set1_ps(9);
    const long iters = 20000000;
    double t0 = moe_now();
    for (long it = 0; it < iters; it++) {
        a0 = _mm256_fmadd_ps(a0, x, y), a1 = _mm256_fmadd_ps(a1, x, y), a2 = _mm256_fmadd_ps(a2, x, y);
        a3 = _mm256_fmadd_ps(a3, x, y), a4 = _mm256_fmadd_ps(a4, x, y), a5 = _mm256_fmadd_ps(a5, x, y);
        a6 = _mm256_fmadd_ps(a6, x, y), a7 = _mm256_fmadd_ps(a7, x, y), a8 = _mm256_fmadd_ps(a8, x, y);
        a9 = _mm256_fmadd_ps(a9, x, y);
    }
    double dt = moe_now() - t0;
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)),
                                           _mm256_add_ps(a8, a9)));
    volatile float sink = _mm256_cvtss_f32(s);
    (void)sink;
    return dt > 0 ? 10.0 * 16.0 * (double)iters / dt * 1e-9 : 0;
}

int main(int argc, char **argv)
{
    struct bench_opts o = { moe_default_model_dir(), 1, 64, 3, false, MOE_DT_F32 };
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' }, { "threads", required_argument, NULL, 't' },
        { "steps", required_argument, NULL, 's' }, { "reps", required_argument, NULL, 'r' },
        { "blas", no_argument, NULL, 'b' },        { "help", no_argument, NULL, 'h' },
        { "kv-dtype", required_argument, NULL, 'k' },
        { 0, 0, 0, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "m:t:s:r:bk:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model_dir = optarg; break;
        case 't': o.threads = atoi(optarg); break;
        case 's': o.steps = atoi(optarg); break;
        case 'r': o.reps = atoi(optarg); break;
        case 'b': o.blas = true; break;
        case 'k':
            if (!moe_engine_kv_dtype_parse(optarg, &o.kv_dtype)) {
                fprintf(stderr, "cpu_bench: --kv-dtype '%s': expected f32 or bf16\n", optarg);
                return 2;
            }
            break;
        case 'h':
            printf("usage: cpu_bench [--model DIR] [--threads N] [--steps N] [--reps N] [--blas] [--kv-dtype T]\n"
                   "Prefill of a 512-token prompt and decode at batch 1 and 16 on the CPU backend.\n");
            return 0;
        default: return 2;
        }
    }
    if (o.threads < 1 || o.threads > 1024 || o.steps < 1 || o.reps < 1) {
        fprintf(stderr, "cpu_bench: --threads, --steps and --reps must be >= 1\n");
        return 2;
    }
    struct moe_model *m = moe_model_open(o.model_dir);
    if (!m) {
        fprintf(stderr, "cpu_bench: %s\n", moe_last_error());
        return 1;
    }
    const int P = 512, B = 16, PL = 32;
    int V = m->cfg.vocab;
    int max_ctx = P + 8 > PL + o.steps + 1 ? P + 8 : PL + o.steps + 1;
    if (max_ctx > m->cfg.max_pos) max_ctx = m->cfg.max_pos;
    struct moe_engine_params ep = { .max_seqs = B, .max_ctx = max_ctx, .max_batch_tokens = P,
                                    .n_threads = o.threads, .cpu_blas = o.blas, .kv_dtype = o.kv_dtype };
    struct moe_engine *e = moe_engine_create(m, &ep);
    if (!e) {
        fprintf(stderr, "cpu_bench: %s\n", moe_last_error());
        moe_model_close(m);
        return 1;
    }
    int *ids = malloc(sizeof(int) * P);
    float *lg = malloc(sizeof(float) * (size_t)V);
    fill_ids(ids, P, V, 1234u);
    double cpu, best_cpu = -1, c1 = 0, c16 = 0;
    time_prefill(e, ids, 64, lg, &cpu); /* warm-up: first-touch of buffers and caches */
    double best = -1;
    for (int r = 0; r < o.reps; r++) {
        double dt = time_prefill(e, ids, P, lg, &cpu);
        if (dt > 0 && (best < 0 || dt < best)) best = dt;
        if (dt > 0 && (best_cpu < 0 || cpu < best_cpu)) best_cpu = cpu;
    }
    double d1 = time_decode(e, 1, PL, o.steps, V, &c1);
    double d16 = time_decode(e, B, PL, o.steps, V, &c16);
    double pf = best > 0 ? P / best : 0, t1 = d1 > 0 ? o.steps / d1 : 0,
           t16 = d16 > 0 ? (double)B * o.steps / d16 : 0;
    printf("model %s (%s, %d layers, %d experts top-%d), CPU backend, %d thread(s)%s\n", o.model_dir,
           moe_family_name(m->cfg.family), m->cfg.n_layers, m->cfg.n_experts, m->cfg.top_k, o.threads,
           o.blas ? ", OpenBLAS GEMMs" : "");
    printf("prefill %d tokens      %10.1f tokens/s  (best of %d: %.3f s)\n", P, pf, o.reps, best);
    printf("decode batch 1         %10.1f tokens/s  (%d steps, %.2f ms/token)\n", t1, o.steps,
           d1 > 0 ? 1e3 * d1 / o.steps : 0);
    printf("decode batch %-2d        %10.1f tokens/s  (%d steps, %.2f ms/step)\n", B, t16, o.steps,
           d16 > 0 ? 1e3 * d16 / o.steps : 0);
    /* the same per second of the process's CPU time: on a shared machine, the
     * time other processes held the cores left out (all threads counted) */
    double pf_cpu = best_cpu > 0 ? P / best_cpu : 0, t1_cpu = c1 > 0 ? o.steps / c1 : 0,
           t16_cpu = c16 > 0 ? (double)B * o.steps / c16 : 0;
    printf("per CPU second       prefill %.1f, decode b1 %.1f, b16 %.1f tokens\n", pf_cpu, t1_cpu, t16_cpu);
    /* FLOPs of the work done: prefill computes the logits of its last token
     * only; decode steps see PL + 1 .. PL + steps positions */
    const struct moe_config *cf = &m->cfg;
    double f_pre = 2 * (P * body_macs(cf) + head_macs(cf) + attn_macs(cf, (P + 1) / 2.0 * P));
    double f_dec = 2 * (o.steps * (body_macs(cf) + head_macs(cf)) + attn_macs(cf, (PL + 1 + PL + o.steps) / 2.0 * o.steps));
    double g_pre = best > 0 ? f_pre / best * 1e-9 : 0, g1 = d1 > 0 ? f_dec / d1 * 1e-9 : 0,
           g16 = d16 > 0 ? B * f_dec / d16 * 1e-9 : 0;
    printf("work                 %.2f MFLOP/token of matrices (%.2f of them lm_head) + attention; "
           "GFLOP/s: prefill %.1f, decode b1 %.1f, b16 %.1f\n", 2e-6 * (body_macs(cf) + head_macs(cf)),
           2e-6 * head_macs(cf), g_pre, g1, g16);
    /* decode at batch 1 reads each weight of its token's matrices once, in
     * the engine's weight dtype (BF16: 2 bytes per multiply-add; F32 with
     * --blas or an F32 checkpoint: 4); prefill is bound by the FMAs */
    /* the ceilings' loops are AVX2 + FMA: on a CPU without them they read 0 (not measured) */
    bool isa = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    double wbytes = (double)moe_dtype_size(moe_engine_weight_dtype(e));
    double wb = model_weight_bytes(cf, wbytes), rc = isa ? read_ceiling_gbs((size_t)wb) : 0, peak = isa ? fma_peak_gflops() : 0;
    if (!isa) fprintf(stderr, "cpu_bench: no AVX2 + FMA on this CPU: the ceilings are not measured (0)\n");
    double b1_gbs = wbytes * (body_macs(cf) + head_macs(cf)) * t1 * 1e-9;
    const char *wname = moe_dtype_name(moe_engine_weight_dtype(e));
    printf("ceilings, one core   read %.1f GB/s over %.1f MB (the model's weights, %s); F32 FMA peak %.1f GFLOP/s\n",
           rc, wb * 1e-6, wname, peak);
    printf("against them         decode b1 reads %.1f GB/s of weights = %.0f %% of the read ceiling; "
           "prefill %.0f %% of the FMA peak%s\n", b1_gbs, rc > 0 ? 100 * b1_gbs / rc : 0,
           peak > 0 ? 100 * g_pre / (peak * o.threads) : 0, o.threads > 1 ? " x threads" : "");
    printf("{\"bench\":\"cpu\",\"model\":\"%s\",\"threads\":%d,\"blas\":%s,\"kv_dtype\":\"%s\",\"prefill_tokens\":%d,"
           "\"prefill_tok_s\":%.1f,\"decode_b1_tok_s\":%.1f,\"decode_b16_tok_s\":%.1f,\"steps\":%d,"
           "\"mflop_per_token\":%.3f,\"prefill_gflops\":%.2f,\"decode_b1_gflops\":%.2f,"
           "\"decode_b16_gflops\":%.2f,\"weight_dtype\":\"%s\",\"decode_b1_weight_gbs\":%.2f,\"read_ceiling_gbs\":%.2f,"
           "\"fma_peak_gflops\":%.2f,\"prefill_tok_cpu_s\":%.1f,\"decode_b1_tok_cpu_s\":%.1f,"
           "\"decode_b16_tok_cpu_s\":%.1f}\n",
           cf->model_type, o.threads, o.blas ? "true" : "false", moe_dtype_name(o.kv_dtype), P, pf, t1, t16, o.steps,
           2e-6 * (body_macs(cf) + head_macs(cf)), g_pre, g1, g16, wname, b1_gbs, rc, peak, pf_cpu, t1_cpu, t16_cpu);
    free(ids);
    free(lg);
    moe_engine_destroy(e);
    moe_model_close(m);
    return best > 0 && d1 > 0 && d16 > 0 ? 0 : 1;
}
