/* GPU benchmark: greedy decode tokens/s of a real model (default: the bundled
 * models/pycode-moe-18m) through the engine on the CUDA backend with the GPU
 * expert tier, at batch 1, 8 and 64 (one token per sequence per step), with
 * the tier holding 25 %, 50 % and 100 % of the routed experts, in the cuBLAS
 * (loop) and batch-invariant GEMM modes.  Prints tokens/s, step time and the
 * tier's loads per step.  A benchmark, not a test: it never fails on timings. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/engine.h"
#include "../engine/sampling.h"
#include "../kernels/cuda/cuda_backend.h"
#include "../offload/cuda_tier.h"

static int parse_list(const char *s, int *out, int cap)
{
    int n = 0;
    while (*s && n < cap) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v <= 0 || (*end && *end != ',')) return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: gpu_model_decode [options]\n"
               "  --model DIR       model directory (default: the bundled model)\n"
               "  --batches LIST    sequences decoded together (default 1,8,64)\n"
               "  --capacities LIST GPU-tier capacity in %% of routed experts (default 25,50,100)\n"
               "  --modes LIST      loop,invariant (default both)\n"
               "  --prompt N        prompt tokens per sequence (default 16)\n"
               "  --steps N         timed decode steps (default 32)\n"
               "  --kv-dtype T      KV cache elements: f32 (default) or bf16\n"
               "  --json FILE       also write the results as JSON\n");
}

int main(int argc, char **argv)
{
    const char *model = moe_default_model_dir(), *json = NULL, *modes = "loop,invariant";
    int batches[8] = { 1, 8, 64 }, nb = 3, caps[8] = { 25, 50, 100 }, nc = 3, prompt = 16, steps = 32, warm = 2;
    enum moe_dtype kv_dtype = MOE_DT_F32;
    static const struct option opts[] = {
        { "model", required_argument, 0, 'm' }, { "batches", required_argument, 0, 'b' },
        { "capacities", required_argument, 0, 'c' }, { "modes", required_argument, 0, 'M' },
        { "prompt", required_argument, 0, 'p' }, { "steps", required_argument, 0, 's' },
        { "json", required_argument, 0, 'j' }, { "help", no_argument, 0, 'h' },
        { "kv-dtype", required_argument, 0, 'k' }, { 0, 0, 0, 0 },
    };
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'm': model = optarg; break;
        case 'b': nb = parse_list(optarg, batches, 8); break;
        case 'c': nc = parse_list(optarg, caps, 8); break;
        case 'M': modes = optarg; break;
        case 'p': prompt = atoi(optarg); break;
        case 's': steps = atoi(optarg); break;
        case 'j': json = optarg; break;
        case 'k':
            if (!moe_engine_kv_dtype_parse(optarg, &kv_dtype)) {
                fprintf(stderr, "gpu_model_decode: --kv-dtype '%s': expected f32 or bf16\n", optarg);
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (nb <= 0 || nc <= 0 || prompt <= 0 || steps <= 0) {
        fprintf(stderr, "gpu_model_decode: --batches/--capacities are comma-separated positive integers; "
                        "--prompt and --steps must be > 0\n");
        return 2;
    }
    for (int i = 0; i < nc; i++)
        if (caps[i] > 100) {
            fprintf(stderr, "gpu_model_decode: --capacities %d: at most 100\n", caps[i]);
            return 2;
        }
    if (moe_cuda_device_count() == 0) {
        fprintf(stderr, "gpu_model_decode: no CUDA device (skipped)\n");
        return 77;
    }
    struct moe_model *m = moe_model_open(model);
    if (!m) {
        fprintf(stderr, "gpu_model_decode: %s\n", moe_last_error());
        return 1;
    }
    const struct moe_config *cfg = &m->cfg;
    int n_moe = moe_config_n_moe(cfg), maxb = 0, V = cfg->vocab;
    for (int i = 0; i < nb; i++) maxb = batches[i] > maxb ? batches[i] : maxb;
    FILE *jf = json ? fopen(json, "w") : NULL;
    if (json && !jf) {
        fprintf(stderr, "gpu_model_decode: cannot write %s\n", json);
        return 1;
    }
    if (jf) fprintf(jf, "{\"bench\":\"gpu_model_decode\",\"model\":\"%s\",\"kv_dtype\":\"%s\",\"steps\":%d,"
                    "\"prompt\":%d,\"runs\":[", cfg->model_type, moe_dtype_name(kv_dtype), steps, prompt);
    printf("%s: %d layers, %d experts top-%d; prompt %d, %d timed steps\n", model, cfg->n_layers,
           cfg->n_experts, cfg->top_k, prompt, steps);
    printf("%10s %6s %5s %6s %10s %10s %10s\n", "mode", "batch", "cap%", "slots", "tok/s", "ms/step",
           "loads/step");
    int rc = 0, njs = 0;
    int *tok = malloc(sizeof(int) * (size_t)maxb), *sq = malloc(sizeof(int) * (size_t)maxb),
        *ps = malloc(sizeof(int) * (size_t)maxb), *pr = malloc(sizeof(int) * (size_t)prompt),
        *prs = malloc(sizeof(int) * (size_t)prompt), *prp = malloc(sizeof(int) * (size_t)prompt);
    float *lg = malloc(sizeof(float) * (size_t)maxb * V);
    for (int mi = 0; mi < 2; mi++) {
        const char *mname = mi ? "invariant" : "loop";
        if (!strstr(modes, mname)) continue;
        struct moe_backend_cuda_params bp = { .device = 0, .workspace_bytes = (size_t)256 << 20,
                                              .gemm_mode = mi ? MOE_CUDA_GEMM_INVARIANT : MOE_CUDA_GEMM_LOOP };
        struct moe_backend *be = moe_backend_cuda_create(&bp);
        if (!be) {
            fprintf(stderr, "gpu_model_decode: %s\n", moe_last_error());
            rc = 1;
            break;
        }
        for (int ci = 0; ci < nc; ci++) {
            int slots = (int)ceil((double)n_moe * cfg->n_experts * caps[ci] / 100.0);
            if (slots < cfg->top_k) slots = cfg->top_k;
            struct moe_provider_cuda_params pp = { .slots = slots, .policy = MOE_POLICY_LRU };
            struct moe_provider *prov = moe_provider_cuda_create(m, be, &pp);
            struct moe_engine_params ep = { .max_seqs = maxb, .max_ctx = prompt + warm + steps + 1,
                                            .max_batch_tokens = maxb > prompt ? maxb : prompt,
                                            .provider = prov, .backend = be, .kv_dtype = kv_dtype };
            struct moe_engine *e = prov ? moe_engine_create(m, &ep) : NULL;
            if (!e) {
                fprintf(stderr, "gpu_model_decode: %s\n", moe_last_error());
                moe_provider_destroy(prov);
                rc = 1;
                continue;
            }
            for (int bi = 0; bi < nb; bi++) {
                int B = batches[bi];
                struct moe_cuda_tier_stats s0, s1;
                double t0 = 0;
                enum moe_status st = MOE_OK;
                int nseq = 0; /* sequences allocated for this batch: the ones to free */
                for (int b = 0; b < B && st == MOE_OK; b++) {
                    sq[b] = moe_engine_seq_alloc(e);
                    if (sq[b] < 0) {
                        st = moe_errorf(MOE_ENOMEM, "no free sequence for row %d of %d", b, B);
                        break;
                    }
                    nseq++;
                    for (int i = 0; i < prompt; i++) {
                        pr[i] = (int)((7u * (unsigned)b + 13u * (unsigned)i + 1u) % (unsigned)V);
                        prs[i] = sq[b];
                        prp[i] = i;
                    }
                    bool *want = calloc((size_t)prompt, sizeof(bool));
                    want[prompt - 1] = true;
                    struct moe_batch pb = { .n = prompt, .tokens = pr, .seq = prs, .pos = prp, .want_logits = want };
                    st = moe_engine_forward(e, &pb, lg);
                    free(want);
                    tok[b] = moe_argmax(lg, V);
                    ps[b] = prompt;
                }
                for (int s = 0; s < warm + steps && st == MOE_OK; s++) {
                    if (s == warm) {
                        moe_provider_cuda_stats(prov, &s0);
                        t0 = moe_now();
                    }
                    struct moe_batch db = { .n = B, .tokens = tok, .seq = sq, .pos = ps };
                    st = moe_engine_forward(e, &db, lg);
                    for (int b = 0; b < B; b++) {
                        tok[b] = moe_argmax(lg + (size_t)b * V, V);
                        ps[b]++;
                    }
                }
                double el = moe_now() - t0;
                for (int b = 0; b < nseq; b++) moe_engine_seq_free(e, sq[b]);
                if (st != MOE_OK) {
                    fprintf(stderr, "gpu_model_decode: %s batch %d: %s\n", mname, B, moe_last_error());
                    rc = 1;
                    continue;
                }
                moe_provider_cuda_stats(prov, &s1);
                double lps = (double)(s1.loads - s0.loads) / steps;
                printf("%10s %6d %5d %6d %10.1f %10.3f %10.1f\n", mname, B, caps[ci], slots, B * steps / el,
                       1e3 * el / steps, lps);
                if (jf)
                    fprintf(jf, "%s{\"mode\":\"%s\",\"batch\":%d,\"capacity_pct\":%d,\"slots\":%d,\"tok_s\":%.2f,"
                            "\"step_ms\":%.4f,\"loads_per_step\":%.2f}", njs++ ? "," : "", mname, B, caps[ci],
                            slots, B * steps / el, 1e3 * el / steps, lps);
            }
            moe_engine_destroy(e);
            moe_provider_destroy(prov);
        }
        moe_backend_destroy(be);
    }
    if (jf) {
        fprintf(jf, "]}\n");
        fclose(jf);
    }
    free(tok), free(sq), free(ps), free(pr), free(prs), free(prp), free(lg);
    moe_model_close(m);
    return rc;
}
