/* Invariant: greedy tokens and logits are bit-identical between the
 * all-resident run and tiered runs (device tier at top_k, host tier at 1
 * expert, experts read from the store on disk), with each policy, through
 * io_uring and the pread fallback, for every fixture family and the bundled
 * model; and the engine's device-tier hits and misses equal `sim` replaying
 * the routing the engine reported for the same capacity and policy. */
#include "../../engine/engine.h"
#include "../../engine/sampling.h"
#include "../../offload/runtime.h"
#include "../../offload/sim.h"
#include "offload_test_common.h"

#define PROMPT 6
#define GEN 6
#define TOTAL (PROMPT + GEN)

struct route_rec {
    const struct moe_config *c;
    int li_of[MOE_MAX_LAYERS], n_moe;
    int n_tok;                 /* tokens recorded (token-by-token runs) */
    int ids[TOTAL * 64 * 16];  /* [token][n_moe][k] */
};

static void on_route(void *ud, int layer, int n, const float *logits, const int *ids,
                     const float *w)
{
    struct route_rec *r = ud;
    (void)logits;
    (void)w;
    if (n != 1 || r->li_of[layer] < 0) return;
    int k = r->c->top_k;
    memcpy(&r->ids[((size_t)r->n_tok * r->n_moe + r->li_of[layer]) * k], ids, sizeof(int) * k);
    if (r->li_of[layer] == r->n_moe - 1) r->n_tok++;
}

/* Run prompt + greedy decode; logits of every decode step into out [GEN][vocab]; blas: the CPU
 * backend's OpenBLAS GEMMs. */
static enum moe_status run_blas(const struct moe_model *m, struct moe_provider *prov, bool batched,
                                struct route_rec *rec, int *tokens, float *out, bool blas)
{
    const struct moe_config *c = &m->cfg;
    struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = TOTAL + 1, .max_batch_tokens = TOTAL,
                                    .n_threads = 1, .provider = prov, .cpu_blas = blas };
    if (rec) ep.hooks = (struct moe_engine_hooks){ .ud = rec, .on_route = on_route };
    struct moe_engine *e = moe_engine_create(m, &ep);
    if (!e) return MOE_EINVAL;
    enum moe_status st = MOE_OK;
    int seq = moe_engine_seq_alloc(e), sv[TOTAL], pv[TOTAL];
    float *lg = malloc(sizeof(float) * (size_t)c->vocab);
    for (int i = 0; i < PROMPT; i++) tokens[i] = (i * 37 + 5) % c->vocab;
    for (int i = 0; i < TOTAL; i++) {
        sv[i] = seq;
        pv[i] = i;
    }
    bool want[TOTAL] = { false };
    want[PROMPT - 1] = true;
    if (batched) {
        struct moe_batch b = { .n = PROMPT, .tokens = tokens, .seq = sv, .pos = pv, .want_logits = want };
        st = moe_engine_forward(e, &b, lg);
    } else {
        for (int i = 0; i < PROMPT && !st; i++) {
            struct moe_batch b = { .n = 1, .tokens = &tokens[i], .seq = sv, .pos = &pv[i] };
            st = moe_engine_forward(e, &b, lg);
        }
    }
    for (int g = 0; g < GEN && !st; g++) {
        memcpy(out + (size_t)g * c->vocab, lg, sizeof(float) * (size_t)c->vocab);
        tokens[PROMPT + g] = moe_argmax(lg, c->vocab);
        if (g + 1 == GEN) break;
        struct moe_batch b = { .n = 1, .tokens = &tokens[PROMPT + g], .seq = sv, .pos = &pv[PROMPT + g] };
        st = moe_engine_forward(e, &b, lg);
    }
    free(lg);
    moe_engine_destroy(e);
    return st;
}

static enum moe_status run(const struct moe_model *m, struct moe_provider *prov, bool batched,
                           struct route_rec *rec, int *tokens, float *out)
{
    return run_blas(m, prov, batched, rec, tokens, out, false);
}

/* With OpenBLAS GEMMs (generate --blas) too, an expert gives the same bits from the device tier (its
 * BF16 slots) as from the all-resident copy (F32 holding the same values): both go through OpenBLAS,
 * which rounds otherwise than the batch-invariant kernel. */
static void check_blas(const struct moe_model *m, const char *store, const char *name)
{
    const struct moe_config *c = &m->cfg;
    size_t nl = (size_t)GEN * (size_t)c->vocab;
    float *ref = malloc(nl * 4), *got = malloc(nl * 4);
    int ref_tok[TOTAL], tok[TOTAL];
    REQUIRE(ref && got, "out of memory");
    REQUIRE(run_blas(m, NULL, true, NULL, ref_tok, ref, true) == MOE_OK, "resident blas: %s", moe_last_error());
    struct moe_tiered_params tp = { .store_path = store, .dev_slots = c->top_k, .host_slots = 1,
                                    .policy = MOE_POLICY_LRU, .numa_node = -1 };
    struct moe_provider *prov = moe_provider_tiered_create(m, &tp);
    REQUIRE(prov, "%s: %s", name, moe_last_error());
    CHECK(run_blas(m, prov, true, NULL, tok, got, true) == MOE_OK, "%s/blas: %s", name, moe_last_error());
    CHECK(!memcmp(tok, ref_tok, sizeof(tok)), "%s/blas: tokens differ", name);
    CHECK(!memcmp(got, ref, nl * 4), "%s/blas: logits differ from the all-resident run's", name);
    moe_provider_destroy(prov);
    free(ref);
    free(got);
}

struct cfg {
    const char *name;
    enum moe_policy_kind policy;
    bool no_uring, batched, store;
    int dev_extra;
};

/* Layer-0 routing of a one-token sequence (token id tok at position 0). */
struct first_route {
    int l0;
    int ids[64];
    int k;
};
static void on_route_first(void *ud, int layer, int n, const float *logits, const int *ids,
                           const float *w)
{
    struct first_route *f = ud;
    (void)logits;
    (void)w;
    (void)n;
    if (layer == f->l0) memcpy(f->ids, ids, sizeof(int) * (size_t)f->k);
}

static enum moe_status one_token(struct moe_engine *e, int tok, float *logits)
{
    int seq = moe_engine_seq_alloc(e), pos = 0;
    struct moe_batch b = { .n = 1, .tokens = &tok, .seq = &seq, .pos = &pos };
    enum moe_status st = moe_engine_forward(e, &b, logits);
    moe_engine_seq_free(e, seq);
    return st;
}

/* A flipped byte in one record: the request whose token routes to that expert
 * fails naming layer and expert; a following request that does not need it
 * succeeds with the all-resident logits.  Then every record of that layer is
 * corrupt (the layer's other experts fail while the first failure is being
 * reported) and mended again: the next request reads them anew and succeeds. */
static void flip_byte(const char *path, uint64_t off)
{
    FILE *f = fopen(path, "r+b");
    REQUIRE(f && fseek(f, (long)off, SEEK_SET) == 0, "seek %s", path);
    int ch = fgetc(f);
    fseek(f, (long)off, SEEK_SET);
    fputc(ch ^ 0x01, f);
    fclose(f);
}

static void check_corrupt_request(const char *dir)
{
    char p[512], store[600];
    struct moe_model *m = moe_model_open(t_path(p, sizeof(p), "models/pycode-moe-18m"));
    REQUIRE(m, "%s", moe_last_error());
    const struct moe_config *c = &m->cfg;
    snprintf(store, sizeof(store), "%s/corrupt.moestore", dir);
    REQUIRE(moe_store_pack(m, store, NULL, NULL) == MOE_OK, "pack: %s", moe_last_error());
    struct first_route fr = { .k = c->top_k };
    while (!c->is_moe[fr.l0]) fr.l0++;
    struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = 4, .max_batch_tokens = 1,
                                    .hooks = { .ud = &fr, .on_route = on_route_first } };
    struct moe_engine *res = moe_engine_create(m, &ep);
    REQUIRE(res, "%s", moe_last_error());
    float *want = malloc(sizeof(float) * (size_t)c->vocab), *got = malloc(sizeof(float) * (size_t)c->vocab);
    float *want1 = malloc(sizeof(float) * (size_t)c->vocab);
    int t1 = 11;
    REQUIRE(one_token(res, t1, want1) == MOE_OK, "%s", moe_last_error());
    int bad_e = fr.ids[0], t2 = -1;
    for (int cand = 12; cand < 200 && t2 < 0; cand++) {
        REQUIRE(one_token(res, cand, want) == MOE_OK, "%s", moe_last_error());
        bool uses = false;
        for (int j = 0; j < c->top_k; j++) uses |= fr.ids[j] == bad_e;
        if (!uses) t2 = cand;
    }
    REQUIRE(t2 >= 0, "no token avoids layer %d expert %d", fr.l0, bad_e);
    /* want = resident logits of t2 (last forward) */
    moe_engine_destroy(res);

    struct moe_store *s = moe_store_open(store, m);
    REQUIRE(s, "%s", moe_last_error());
    uint64_t offs[256];
    REQUIRE(c->n_experts <= 256, "experts");
    for (int x = 0; x < c->n_experts; x++) offs[x] = moe_store_find(s, fr.l0, x)->offset + 100;
    moe_store_close(s);
    flip_byte(store, offs[bad_e]);

    struct moe_tiered_params tp = { .store_path = store, .dev_slots = c->top_k, .host_slots = 1,
                                    .numa_node = -1 };
    struct moe_provider *prov = moe_provider_tiered_create(m, &tp);
    REQUIRE(prov, "%s", moe_last_error());
    ep.provider = prov;
    ep.hooks = (struct moe_engine_hooks){ 0 };
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e, "%s", moe_last_error());
    char needle[64];
    snprintf(needle, sizeof(needle), "layer %d expert %d", fr.l0, bad_e);
    enum moe_status st = one_token(e, t1, got);
    CHECK(st == MOE_ECHECKSUM, "request needing the corrupt expert: status %d", st);
    CHECK(!strncmp(moe_last_error(), needle, strlen(needle)) && strstr(moe_last_error(), "checksum"),
          "error must begin with %s, once: %s", needle, moe_last_error());
    st = one_token(e, t2, got);
    CHECK(st == MOE_OK, "following request without the corrupt expert: %s", moe_last_error());
    CHECK(st != MOE_OK || !memcmp(got, want, sizeof(float) * (size_t)c->vocab),
          "following request's logits differ from the resident run");
    CHECK(one_token(e, t1, got) == MOE_ECHECKSUM, "the corrupt expert fails again");
    struct moe_offload_stats os;
    moe_provider_tiered_stats(prov, &os);
    CHECK(os.checksum_failures == 2, "checksum failures %llu", (unsigned long long)os.checksum_failures);
    printf("corrupt layer %d expert %d: token %d fails, token %d ok\n", fr.l0, bad_e, t1, t2);
    for (int x = 0; x < c->n_experts; x++)
        if (x != bad_e) flip_byte(store, offs[x]); /* now every record of the layer is bad */
    CHECK(one_token(e, t1, got) == MOE_ECHECKSUM, "a layer of corrupt records: %s", moe_last_error());
    for (int x = 0; x < c->n_experts; x++) flip_byte(store, offs[x]); /* mended */
    st = one_token(e, t1, got);
    CHECK(st == MOE_OK && !memcmp(got, want1, sizeof(float) * (size_t)c->vocab),
          "after the store is mended, the request must read the records anew: %s",
          st ? moe_last_error() : "logits differ");
    moe_engine_destroy(e);
    moe_provider_destroy(prov);
    free(want);
    free(want1);
    free(got);
    moe_model_close(m);
}

int main(void)
{
    static const struct cfg cfgs[] = {
        { "min-lru-uring-batched", MOE_POLICY_LRU, false, true, true, 0 },
        { "min-lru-pread-batched", MOE_POLICY_LRU, true, true, true, 0 },
        { "min-lru", MOE_POLICY_LRU, false, false, true, 0 },
        { "min-lfu", MOE_POLICY_LFU, false, false, true, 0 },
        { "min-belady", MOE_POLICY_BELADY, false, false, true, 0 },
        { "wide-lfu-pread", MOE_POLICY_LFU, true, false, true, 5 },
        { "wide-belady", MOE_POLICY_BELADY, false, false, true, 5 },
        { "safetensors-lru", MOE_POLICY_LRU, false, true, false, 2 },
    };
    char p[512], store[600];
    const char *dir = t_tmp_make("/tmp");
    REQUIRE(dir, "mkdtemp");
    for (size_t mi = 0; mi < MOE_ARRAY_LEN(t_models); mi++) {
        struct moe_model *m = moe_model_open(t_path(p, sizeof(p), t_models[mi]));
        REQUIRE(m, "%s: %s", t_models[mi], moe_last_error());
        const struct moe_config *c = &m->cfg;
        snprintf(store, sizeof(store), "%s/m%zu.moestore", dir, mi);
        REQUIRE(moe_store_pack(m, store, NULL, NULL) == MOE_OK, "pack: %s", moe_last_error());
        size_t nl = (size_t)GEN * (size_t)c->vocab;
        float *ref[2] = { malloc(nl * 4), malloc(nl * 4) }, *got = malloc(nl * 4);
        int ref_tok[2][TOTAL], tok[TOTAL];
        static struct route_rec rec, rec2;
        memset(&rec, 0, sizeof(rec));
        rec.c = c;
        for (int l = 0; l < c->n_layers; l++) rec.li_of[l] = c->is_moe[l] ? rec.n_moe++ : -1;
        REQUIRE(rec.n_moe * c->top_k <= 64 * 16, "fixture too large for the test's buffer");
        REQUIRE(run(m, NULL, true, NULL, ref_tok[1], ref[1]) == MOE_OK, "resident: %s", moe_last_error());
        REQUIRE(run(m, NULL, false, &rec, ref_tok[0], ref[0]) == MOE_OK, "resident: %s", moe_last_error());
        REQUIRE(rec.n_tok == TOTAL - 1, "recorded %d tokens", rec.n_tok);
        struct moe_trace tr = { .n_tokens = (size_t)rec.n_tok, .experts = rec.ids };
        tr.info = (struct moe_trace_info){ .layers = c->n_layers, .experts = c->n_experts,
                                           .top_k = c->top_k, .n_moe = rec.n_moe };
        for (int l = 0, i = 0; l < c->n_layers; l++)
            if (c->is_moe[l]) tr.info.moe_layers[i++] = l;
        int *keys;
        size_t n_keys;
        REQUIRE(moe_trace_keys(&tr, &keys, &n_keys) == MOE_OK, "keys");
        for (size_t ci = 0; ci < MOE_ARRAY_LEN(cfgs); ci++) {
            const struct cfg *cf = &cfgs[ci];
            struct moe_tiered_params tp = {
                .store_path = cf->store ? store : NULL, .dev_slots = c->top_k + cf->dev_extra,
                .host_slots = 1 + cf->dev_extra, .policy = cf->policy, .future = keys,
                .n_future = n_keys, .numa_node = -1, .io = { .no_io_uring = cf->no_uring },
            };
            struct moe_provider *prov = moe_provider_tiered_create(m, &tp);
            REQUIRE(prov, "%s: %s", cf->name, moe_last_error());
            memset(&rec2, 0, sizeof(rec2));
            rec2.c = c;
            memcpy(rec2.li_of, rec.li_of, sizeof(rec.li_of));
            rec2.n_moe = rec.n_moe;
            enum moe_status st = run(m, prov, cf->batched, &rec2, tok, got);
            CHECK(st == MOE_OK, "%s/%s: %s", t_models[mi], cf->name, moe_last_error());
            int b = cf->batched ? 1 : 0;
            CHECK(!memcmp(tok, ref_tok[b], sizeof(tok)), "%s/%s: tokens differ", t_models[mi], cf->name);
            CHECK(!memcmp(got, ref[b], nl * 4), "%s/%s: logits differ", t_models[mi], cf->name);
            struct moe_offload_stats os;
            moe_provider_tiered_stats(prov, &os);
            if (!cf->batched) {
                struct moe_sim_params sp = { .capacity = tp.dev_slots, .policy = cf->policy };
                struct moe_sim_result r;
                REQUIRE(moe_sim_run(&tr, &sp, &r) == MOE_OK, "sim: %s", moe_last_error());
                CHECK(r.hits == os.device.hits && r.misses == os.device.misses,
                      "%s/%s: engine %llu/%llu hits/misses, sim %llu/%llu", t_models[mi], cf->name,
                      (unsigned long long)os.device.hits, (unsigned long long)os.device.misses,
                      (unsigned long long)r.hits, (unsigned long long)r.misses);
            }
            printf("%-32s %-22s hits %4llu misses %4llu disk reads %4llu %s\n", t_models[mi], cf->name,
                   (unsigned long long)os.device.hits, (unsigned long long)os.device.misses,
                   (unsigned long long)os.disk_reads, os.io_uring ? "io_uring" : "pread");
            moe_provider_destroy(prov);
        }
        check_blas(m, store, t_models[mi]);
        free(keys);
        free(ref[0]);
        free(ref[1]);
        free(got);
        moe_model_close(m);
    }
    check_corrupt_request(dir);
    t_tmp_remove(dir);
    return t_result("test_offload_engine");
}
