/* The shared --backend factory (offload/runtime.h) on a GPU, as the CLI uses
 * it: moe_offload_runtime_create() with --backend cuda gives the CUDA backend
 * and the GPU tier over the tiered provider; the bundled model's greedy tokens
 * equal the CPU backend's, and with the tier at 25 % of the experts (by
 * --gpu-experts and by --gpu-cache-bytes, LRU and LFU, a small host tier) the
 * logits are bit-identical to the all-resident GPU run.  The tier stats reach
 * --stats (device = the GPU tier).  Last, a device fault raised inside a
 * forward pass: the pass returns MOE_EDEVLOST, moe_offload_explain() says the
 * process must restart, the backend reports poisoned, the next pass fails too,
 * and everything is destroyed without hanging.  A model without MoE layers
 * (all_dense) gets the CUDA backend alone, the engine's own provider, with the
 * prompt's logits within 5e-2 of its reference; an offload flag is refused.
 * A --store that cannot be opened fails with the store's status (MOE_EIO) and
 * message, not as out of memory.  Skips (77) without a device. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../../engine/engine.h"
#include "../../engine/sampling.h"
#include "../../kernels/cuda/cuda_backend.h"
#include "../../offload/cuda_tier.h"
#include "../../offload/runtime.h"
#include "../engine/model_variants.h"
#include "../test_util.h"

#define N_PROMPT 12
#define N_GEN 24

static const int prompt[N_PROMPT] = { 563, 1201, 40, 77, 912, 3051, 58, 11, 2048, 301, 17, 999 };

struct run_out {
    int tokens[N_GEN];
    float *logits; /* [N_GEN][vocab]: the logits each token was chosen from */
};

struct fault {
    struct moe_backend *be;
    int armed;      /* forward calls left before the fault (counted in on_route of layer 0) */
    bool fired;
};

static void on_route_fault(void *ud, int layer, int n, const float *logits, const int *ids, const float *w)
{
    struct fault *f = ud;
    (void)n, (void)logits, (void)ids, (void)w;
    if (layer != 0 || f->fired || --f->armed > 0) return;
    struct moe_cuda_ctx *c = moe_backend_cuda_ctx(f->be);
    void *x = NULL, *rows = NULL, *out = NULL;
    int bad = 1 << 28; /* row 2^28 of a 1-row buffer: 1 TiB out of bounds */
    if (moe_cuda_alloc(c, &x, 1024 * 4, "x") || moe_cuda_alloc(c, &rows, 4, "rows") ||
        moe_cuda_alloc(c, &out, 1024 * 4, "out") || moe_cuda_h2d(c, rows, &bad, 4))
        return;
    (void)moe_cuda_gather_rows(c, x, rows, 1, 1024, out);
    f->fired = true;
}

/* Greedy decode of the prompt; returns the status of the first failing pass. */
static enum moe_status decode(const struct moe_model *m, struct moe_backend *be, struct moe_provider *prov,
                              const struct moe_engine_hooks *hooks, struct run_out *r)
{
    int V = m->cfg.vocab;
    struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = N_PROMPT + N_GEN + 1, .max_batch_tokens = N_PROMPT,
                                    .provider = prov, .backend = be };
    if (hooks) ep.hooks = *hooks;
    struct moe_engine *e = moe_engine_create(m, &ep);
    if (!e) return moe_offload_explain(MOE_EINVAL, be, prov);
    float *lg = malloc(sizeof(float) * (size_t)V);
    REQUIRE(lg, "out of memory");
    int seq = moe_engine_seq_alloc(e), pos[N_PROMPT], sq[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++) pos[i] = i, sq[i] = seq;
    bool want[N_PROMPT] = { false };
    want[N_PROMPT - 1] = true;
    struct moe_batch b = { .n = N_PROMPT, .tokens = prompt, .seq = sq, .pos = pos, .want_logits = want };
    enum moe_status st = moe_engine_forward(e, &b, lg);
    for (int g = 0; g < N_GEN && st == MOE_OK; g++) {
        memcpy(r->logits + (size_t)g * (size_t)V, lg, sizeof(float) * (size_t)V);
        int t = r->tokens[g] = moe_argmax(lg, V);
        int p = moe_engine_seq_len(e, seq);
        struct moe_batch d = { .n = 1, .tokens = &t, .seq = &seq, .pos = &p };
        st = moe_engine_forward(e, &d, lg);
    }
    if (st != MOE_OK) {
        st = moe_offload_explain(st, be, prov);
        /* a poisoned context keeps failing */
        if (st == MOE_EDEVLOST) {
            int t = 1, p = moe_engine_seq_len(e, seq);
            struct moe_batch d = { .n = 1, .tokens = &t, .seq = &seq, .pos = &p };
            char msg[1024];
            snprintf(msg, sizeof(msg), "%s", moe_last_error());
            CHECK(moe_engine_forward(e, &d, lg) != MOE_OK, "a pass after the device error succeeded");
            moe_errorf(st, "%s", msg);
        }
    }
    free(lg);
    moe_engine_destroy(e);
    return st;
}

static void run_cuda(const struct moe_model *m, const struct moe_offload_opts *o, struct run_out *r,
                     const char *label, int want_slots)
{
    struct moe_backend *be = NULL;
    struct moe_provider *prov = NULL;
    REQUIRE(moe_offload_runtime_create(m, o, &be, &prov) == MOE_OK, "%s: %s", label, moe_last_error());
    REQUIRE(be && moe_backend_cuda_ctx(be) && prov, "%s: not the CUDA backend and GPU tier", label);
    enum moe_status st = decode(m, be, prov, NULL, r);
    CHECK(st == MOE_OK, "%s: %s", label, moe_last_error());
    struct moe_offload_stats s;
    CHECK(moe_offload_stats_get(prov, &s), "%s: no tier stats", label);
    CHECK(s.dev_slots == want_slots, "%s: %d GPU slots, want %d", label, s.dev_slots, want_slots);
    CHECK(s.device.misses > 0 && s.device.bytes > 0 && s.host.misses > 0,
          "%s: stats miss the GPU or host tier (device misses %llu, bytes %llu, host misses %llu)", label,
          (unsigned long long)s.device.misses, (unsigned long long)s.device.bytes,
          (unsigned long long)s.host.misses);
    printf("  %-34s GPU slots %3d: hits %6llu misses %5llu, host hits %5llu misses %4llu\n", label, s.dev_slots,
           (unsigned long long)s.device.hits, (unsigned long long)s.device.misses,
           (unsigned long long)s.host.hits, (unsigned long long)s.host.misses);
    moe_provider_destroy(prov);
    moe_backend_destroy(be);
}

/* --backend cuda on a model without MoE layers: the CUDA backend and no provider (nothing routed for a
 * GPU tier to hold; the engine makes its own), the prompt's logits within 5e-2 of the reference as
 * test_gpu_variants holds them; with --gpu-experts, MOE_EINVAL and nothing made. */
static void check_dense(void)
{
    struct variant v = variant_open("deepseek-v3-variants/all_dense");
    struct moe_offload_opts o;
    struct moe_backend *be = NULL;
    struct moe_provider *prov = NULL;
    REQUIRE(moe_config_n_moe(&v.m->cfg) == 0, "all_dense has MoE layers");
    moe_offload_opts_init(&o);
    o.backend = MOE_COMPUTE_CUDA;
    enum moe_status st = moe_offload_runtime_create(v.m, &o, &be, &prov);
    CHECK(st == MOE_OK && be && moe_backend_cuda_ctx(be) && !prov, "dense model, --backend cuda: %s (%s backend, %s)",
          moe_status_str(st), be ? "a" : "no", prov ? "a provider" : "no provider");
    if (st == MOE_OK && be && !prov) {
        size_t n = (size_t)v.T * (size_t)v.m->cfg.vocab;
        float *lg = malloc(sizeof(float) * n);
        struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = 32, .max_batch_tokens = 16, .backend = be };
        struct moe_engine *e = moe_engine_create(v.m, &ep);
        REQUIRE(lg, "out of memory");
        CHECK(e, "dense model: engine on the CUDA backend: %s", moe_last_error());
        st = e ? run_prompt(e, moe_engine_seq_alloc(e), v.ids, (int)v.T, lg) : MOE_EINVAL;
        CHECK(!e || st == MOE_OK, "dense model: forward: %s", moe_last_error());
        if (e && st == MOE_OK) {
            double d = max_abs_diff(lg, v.want, n);
            printf("  dense model (all_dense), --backend cuda: logits max abs diff %.3g\n", d);
            CHECK(d < 5e-2, "dense model: logits differ from the reference by %g", d);
        }
        moe_engine_destroy(e);
        free(lg);
    }
    moe_backend_destroy(be);
    o.gpu_experts = 4;
    be = NULL;
    st = moe_offload_runtime_create(v.m, &o, &be, &prov);
    CHECK(st == MOE_EINVAL && !be && !prov && strstr(moe_last_error(), "no MoE layer"),
          "dense model, --backend cuda --gpu-experts 4: %s: %s", moe_status_str(st), moe_last_error());
    moe_provider_destroy(prov);
    moe_backend_destroy(be);
    variant_close(&v);
}

int main(void)
{
    if (moe_cuda_device_count() == 0) {
        printf("test_gpu_runtime: no CUDA device, skipping\n");
        return T_SKIP;
    }
    char dir[4096];
    t_path(dir, sizeof(dir), "models/pycode-moe-18m");
    struct moe_model *m = moe_model_open(dir);
    REQUIRE(m, "open %s: %s", dir, moe_last_error());
    const struct moe_config *c = &m->cfg;
    int V = c->vocab, n_moe = moe_config_n_moe(c);
    int all = n_moe * c->n_experts, quarter = all / 4;
    size_t lbytes = sizeof(float) * (size_t)N_GEN * (size_t)V;
    struct run_out cpu = { .logits = malloc(lbytes) }, gpu = { .logits = malloc(lbytes) },
                   q = { .logits = malloc(lbytes) };
    REQUIRE(cpu.logits && gpu.logits && q.logits, "out of memory");

    /* --backend cpu: the factory leaves backend and provider to the engine */
    struct moe_offload_opts o;
    moe_offload_opts_init(&o);
    struct moe_backend *be = NULL;
    struct moe_provider *prov = NULL;
    REQUIRE(moe_offload_runtime_create(m, &o, &be, &prov) == MOE_OK && !be && !prov, "cpu: %s", moe_last_error());
    REQUIRE(decode(m, NULL, NULL, NULL, &cpu) == MOE_OK, "cpu decode: %s", moe_last_error());

    /* --backend cuda, every expert in the GPU tier */
    REQUIRE(moe_offload_opts_parse(&o, MOE_OPT_BACKEND, "cuda") == 1, "--backend cuda: %s", moe_last_error());
    run_cuda(m, &o, &gpu, "all resident", all);
    int first = -1;
    float dmax = 0;
    for (int g = 0; g < N_GEN; g++) {
        if (first < 0 && gpu.tokens[g] != cpu.tokens[g]) first = g;
        for (int v = 0; first < 0 && v < V; v++) {
            float d = fabsf(gpu.logits[(size_t)g * V + v] - cpu.logits[(size_t)g * V + v]);
            if (d > dmax) dmax = d;
        }
    }
    printf("  cuda vs cpu: greedy tokens %s (first difference at %d), logits max abs diff %.5f\n",
           first < 0 ? "equal" : "differ", first, dmax);
    CHECK(first < 0, "cuda greedy token %d is %d, cpu's %d", first, first < 0 ? 0 : gpu.tokens[first],
          first < 0 ? 0 : cpu.tokens[first]);
    CHECK(dmax < 5e-2f, "cuda logits differ from cpu's by %.5f", dmax);

    /* 25 % of the experts: offload-invariant, so bit-identical to all resident */
    struct {
        const char *label;
        int gpu_experts;
        bool by_bytes;
        enum moe_policy_kind pol;
        int host;
    } cases[] = {
        { "--gpu-experts 25% (lru)", quarter, false, MOE_POLICY_LRU, 0 },
        { "--gpu-cache-bytes 25% (lfu)", quarter, true, MOE_POLICY_LFU, 0 },
        { "--gpu-experts top_k, --host-experts 8", c->top_k, false, MOE_POLICY_LRU, 8 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct moe_offload_opts oq = o;
        if (cases[i].by_bytes) oq.gpu_cache_bytes = (uint64_t)cases[i].gpu_experts * moe_provider_cuda_slot_bytes(m);
        else oq.gpu_experts = cases[i].gpu_experts;
        oq.policy = cases[i].pol;
        oq.host_experts = cases[i].host;
        run_cuda(m, &oq, &q, cases[i].label, cases[i].gpu_experts);
        CHECK(!memcmp(q.tokens, gpu.tokens, sizeof(q.tokens)), "%s: tokens differ from all resident", cases[i].label);
        CHECK(!memcmp(q.logits, gpu.logits, lbytes), "%s: logits not bit-identical to all resident", cases[i].label);
    }

    check_dense();

    /* a store the host tier cannot open fails with the store's status and message, not as out of memory */
    {
        struct moe_offload_opts os = o;
        os.store = "/nonexistent/experts.moestore";
        os.gpu_experts = quarter;
        enum moe_status sst = moe_offload_runtime_create(m, &os, &be, &prov);
        CHECK(sst == MOE_EIO && !be && !prov && strstr(moe_last_error(), "host tier") &&
                  strstr(moe_last_error(), "cannot open expert store"),
              "--store /nonexistent/experts.moestore: %s: %s", moe_status_str(sst), moe_last_error());
    }

    /* a sticky device error in the middle of decoding (runs last: the context cannot recover) */
    REQUIRE(moe_offload_runtime_create(m, &o, &be, &prov) == MOE_OK, "cuda: %s", moe_last_error());
    struct fault f = { .be = be, .armed = 3 };
    struct moe_engine_hooks h = { .ud = &f, .on_route = on_route_fault };
    enum moe_status st = decode(m, be, prov, &h, &q);
    printf("  after a device fault: %s: %s\n", moe_status_str(st), moe_last_error());
    CHECK(f.fired, "the fault was not raised");
    CHECK(st == MOE_EDEVLOST, "decode after the fault returned %s", moe_status_str(st));
    CHECK(strstr(moe_last_error(), "device error") && strstr(moe_last_error(), "restart"),
          "message does not say device error / restart: %s", moe_last_error());
    CHECK(moe_offload_backend_poisoned(be), "backend not reported poisoned");
    moe_provider_destroy(prov);
    moe_backend_destroy(be);

    free(cpu.logits), free(gpu.logits), free(q.logits);
    moe_model_close(m);
    return t_result("test_gpu_runtime");
}
