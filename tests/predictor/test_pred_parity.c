/* Tokens and logits do not depend on the predictor or on where experts live:
 * the bundled model decodes a Python snippet (teacher forcing, batch 1) with
 * no predictor through the resident provider, then with every predictor kind
 * (prefetch hints into the recording provider), and with path+gate driving a
 * tiered provider at 25 % device capacity under each eviction policy; every
 * logit must be bit-identical.  Then the live prediction-aware cache:
 * --policy predicted in the tiered provider over a packed store on disk, a
 * small device tier and host tier, fed by path+gate and by gate: the same
 * tokens and logits, and the predictions did reach the cache (prefetches).
 * Last, history, path and gate each drive the tiered provider under lru, lfu
 * and predicted, prefetching and rank-only (--no-prefetch): the same logits. */
#include "engine/sampling.h"
#include "offload/policy_predicted.h"
#include "offload/store.h"
#include "offload/tiered.h"
#include "predictor/drive.h"
#include "predictor/path_model.h"
#include "tests/predictor/pred_testutil.h"

#include <unistd.h>

#define N_TOK 24

static const char *snippet =
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n";

static enum moe_status decode(const struct moe_model *m, struct moe_provider *prov, struct moe_predictor *pred,
                              const int *toks, int n, float *logits)
{
    struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = 64, .max_batch_tokens = 8, .n_threads = 1,
                                    .provider = prov };
    if (pred) ep.hooks = moe_predictor_hooks(pred, NULL);
    struct moe_engine *e = moe_engine_create(m, &ep);
    if (!e) return MOE_EINVAL;
    int seq = moe_engine_seq_alloc(e);
    enum moe_status st = MOE_OK;
    for (int i = 0; i < n && !st; i++) {
        struct moe_batch b = { .n = 1, .tokens = &toks[i], .seq = &seq, .pos = &i };
        if (pred && (st = moe_predictor_begin(pred, &b))) break;
        st = moe_engine_forward(e, &b, logits + (size_t)i * m->cfg.vocab);
        if (pred) moe_predictor_end(pred, st == MOE_OK);
    }
    moe_engine_destroy(e);
    return st;
}

int main(void)
{
    char dir[4096], pfile[] = "/tmp/moeflow-test-pred-XXXXXX";
    int *toks;
    size_t nt;
    struct moe_model *m = t_bundled_encode(dir, sizeof dir, snippet, &toks, &nt);
    REQUIRE(m && nt >= N_TOK, "bundled model and snippet (%zu tokens)", m ? nt : 0);
    size_t V = (size_t)m->cfg.vocab;
    float *ref = malloc(sizeof(float) * V * N_TOK), *got = malloc(sizeof(float) * V * N_TOK);
    REQUIRE(ref && got, "oom");
    REQUIRE(decode(m, NULL, NULL, toks, N_TOK, ref) == MOE_OK, "reference decode: %s", moe_last_error());

    /* a small path predictor trained on the snippet's own routing */
    int *ex, *sq, *ps;
    REQUIRE(moe_drive_route(m, toks, nt, 64, 16, 1, 0, &ex, &sq, &ps, NULL) == MOE_OK, "route: %s", moe_last_error());
    int n_moe = moe_config_n_moe(&m->cfg);
    size_t row = (size_t)n_moe * m->cfg.top_k;
    int *prev = malloc(sizeof(int) * nt * row);
    float *emb = malloc(sizeof(float) * V * (size_t)m->cfg.hidden);
    REQUIRE(prev && emb, "oom");
    for (size_t i = 0; i < nt * row; i++) prev[i] = i < row ? -1 : ex[i - row];
    moe_wview_to_f32(&m->embed, emb);
    struct moe_path_model *pm = moe_path_model_create(n_moe, m->cfg.n_experts, m->cfg.top_k, m->cfg.hidden, 32, 2, 3);
    REQUIRE(pm, "path model");
    struct moe_path_data d = { .n = (int)nt, .token = toks, .prev = prev, .target = ex, .emb = emb,
                               .vocab = m->cfg.vocab };
    struct moe_path_train_params tp = { .max_epochs = 3, .batch = 8, .lr = 1e-2f, .val_frac = 0.2f, .patience = 3,
                                        .seed = 1 };
    struct moe_path_train_report rep;
    REQUIRE(moe_path_model_train(pm, &d, &tp, &rep) == MOE_OK, "train: %s", moe_last_error());
    int fd = mkstemp(pfile);
    REQUIRE(fd >= 0, "mkstemp");
    close(fd);
    REQUIRE(moe_path_model_save(pm, pfile, NULL) == MOE_OK, "save: %s", moe_last_error());

    char specs[5][4200];
    snprintf(specs[0], sizeof specs[0], "none");
    snprintf(specs[1], sizeof specs[1], "gate:3");
    snprintf(specs[2], sizeof specs[2], "history");
    snprintf(specs[3], sizeof specs[3], "path:%s", pfile);
    snprintf(specs[4], sizeof specs[4], "path+gate:%s", pfile);
    for (int s = 0; s < 5; s++) {
        struct moe_pred_spec sp;
        REQUIRE(moe_pred_spec_parse(specs[s], dir, &sp) == MOE_OK, "spec %s: %s", specs[s], moe_last_error());
        struct moe_evlog log;
        struct moe_drive_params dp = { .spec = &sp, .prefetch = { .min_score = 0.3f }, .seq_len = 64,
                                       .n_threads = 1, .log = &log, .logits = got };
        REQUIRE(moe_drive_text(m, toks, N_TOK, &dp) == MOE_OK, "%s: %s", specs[s], moe_last_error());
        CHECK(!memcmp(ref, got, sizeof(float) * V * N_TOK), "predictor %s changed the logits", specs[s]);
        CHECK(log.steps == N_TOK, "%s: %llu steps logged", specs[s], (unsigned long long)log.steps);
        moe_evlog_free(&log);
    }

    /* tiered provider at 25 % of the experts, prefetches from path+gate */
    /* Belady's future: every access in the engine's order (layers in order, a
     * layer's experts ascending) */
    int K = m->cfg.top_k, *future = malloc(sizeof(int) * N_TOK * row);
    REQUIRE(future, "oom");
    for (int i = 0; i < N_TOK; i++)
        for (int li = 0; li < n_moe; li++) {
            int *f = future + ((size_t)i * n_moe + li) * K;
            memcpy(f, ex + ((size_t)i * n_moe + li) * K, sizeof(int) * K);
            for (int a = 1; a < K; a++)
                for (int b = a; b > 0 && f[b] < f[b - 1]; b--) {
                    int t = f[b]; f[b] = f[b - 1]; f[b - 1] = t;
                }
            for (int j = 0; j < K; j++) f[j] += li * m->cfg.n_experts; /* every layer of this model is MoE */
        }
    enum moe_policy_kind pols[3] = { MOE_POLICY_LRU, MOE_POLICY_LFU, MOE_POLICY_BELADY };
    for (int pi = 0; pi < 3; pi++) {
        struct moe_tiered_params tpp = { .dev_slots = n_moe * m->cfg.n_experts / 4, .host_slots = 16,
                                         .policy = pols[pi], .numa_node = -1, .future = future,
                                         .n_future = (size_t)N_TOK * row };
        struct moe_provider *tiered = moe_provider_tiered_create(m, &tpp);
        if (!tiered) {
            fprintf(stderr, "tiered provider unavailable (%s): skipping that part\n", moe_last_error());
            break;
        }
        struct moe_pred_spec sp;
        moe_pred_spec_parse(specs[4], dir, &sp);
        struct moe_predictor *pred = moe_predictor_create(m, &sp, 1);
        REQUIRE(pred, "predictor: %s", moe_last_error());
        moe_predictor_set_provider(pred, tiered, NULL);
        CHECK(decode(m, tiered, pred, toks, N_TOK, got) == MOE_OK, "tiered decode: %s", moe_last_error());
        CHECK(!memcmp(ref, got, sizeof(float) * V * N_TOK), "tiered provider (%s) + path+gate changed the logits",
              moe_policy_name(pols[pi]));
        moe_predictor_destroy(pred);
        moe_provider_destroy(tiered);
    }
    free(future);

    /* the predicted policy needs the model's layers */
    enum moe_policy_kind pk;
    CHECK(moe_policy_parse("predicted", &pk) && pk == MOE_POLICY_PREDICTED &&
              !strcmp(moe_policy_name(pk), "predicted"), "policy name predicted");
    CHECK(moe_policy_create(MOE_POLICY_PREDICTED, 16, NULL, 0) == NULL, "predicted without layers accepted");
    struct moe_policy *pp = moe_policy_create_model(MOE_POLICY_PREDICTED, m->cfg.n_layers, m->cfg.n_experts,
                                                    m->cfg.is_moe, NULL, 0);
    CHECK(pp && !strcmp(pp->ops->name, "predicted") && pp->ops->on_prediction, "create_model predicted: %s",
          moe_last_error());
    moe_policy_destroy(pp);

    /* live tiered provider under --policy predicted: store on disk, small tiers */
    char store[] = "/tmp/moeflow-test-pred-store-XXXXXX";
    int sfd = mkstemp(store);
    REQUIRE(sfd >= 0, "mkstemp");
    close(sfd);
    REQUIRE(moe_store_pack(m, store, NULL, NULL) == MOE_OK, "pack: %s", moe_last_error());
    snprintf(specs[1], sizeof specs[1], "gate:2");
    const int live_specs[2] = { 4, 1 }; /* path+gate, gate */
    const int dev_slots[2] = { m->cfg.top_k + 2, n_moe * m->cfg.n_experts / 8 };
    for (int si = 0; si < 2; si++)
        for (int di = 0; di < 2; di++) {
            const char *spec = specs[live_specs[si]];
            struct moe_tiered_params tpp = { .store_path = store, .dev_slots = dev_slots[di], .host_slots = 6,
                                             .policy = MOE_POLICY_PREDICTED, .numa_node = -1 };
            struct moe_provider *tiered = moe_provider_tiered_create(m, &tpp);
            CHECK(tiered, "tiered provider with policy predicted: %s", moe_last_error());
            if (!tiered) continue;
            struct moe_pred_spec sp;
            REQUIRE(moe_pred_spec_parse(spec, dir, &sp) == MOE_OK, "spec %s", spec);
            struct moe_predictor *pred = moe_predictor_create(m, &sp, 1);
            REQUIRE(pred, "predictor: %s", moe_last_error());
            moe_predictor_set_provider(pred, tiered, NULL);
            memset(got, 0, sizeof(float) * V * N_TOK);
            CHECK(decode(m, tiered, pred, toks, N_TOK, got) == MOE_OK, "predicted/%s decode: %s", spec,
                  moe_last_error());
            CHECK(!memcmp(ref, got, sizeof(float) * V * N_TOK),
                  "policy predicted + %s (%d device slots) changed the logits", spec, dev_slots[di]);
            int same_tokens = 1;
            for (int i = 0; i < N_TOK; i++)
                same_tokens &= moe_argmax(ref + (size_t)i * V, (int)V) == moe_argmax(got + (size_t)i * V, (int)V);
            CHECK(same_tokens, "policy predicted + %s changed a greedy token", spec);
            struct moe_offload_stats os;
            CHECK(moe_provider_tiered_stats(tiered, &os) && os.device.prefetches > 0 && os.from_store &&
                      os.dev_slots == dev_slots[di],
                  "policy predicted + %s: %llu prefetches reached the device tier", spec,
                  (unsigned long long)os.device.prefetches);
            moe_predictor_destroy(pred);
            moe_provider_destroy(tiered);
        }

    /* the rest of what generate --gpu-experts --predictor allows: history and path alone, each policy, with
     * prefetches and rank-only (--no-prefetch), over the store with a small device tier */
    const int more_specs[3] = { 2, 3, 1 }; /* history, path, gate */
    const enum moe_policy_kind more_pols[3] = { MOE_POLICY_LRU, MOE_POLICY_LFU, MOE_POLICY_PREDICTED };
    uint64_t moved_ahead[3] = { 0, 0, 0 }; /* per spec: prefetches that reached the device tier */
    for (int si = 0; si < 3; si++)
        for (int pi = 0; pi < 3; pi++)
            for (int ro = 0; ro < 2; ro++) {
                const char *spec = specs[more_specs[si]];
                struct moe_tiered_params tpp = { .store_path = store, .dev_slots = m->cfg.top_k + 1 + pi,
                                                 .host_slots = 3, .policy = more_pols[pi], .numa_node = -1 };
                struct moe_provider *tiered = moe_provider_tiered_create(m, &tpp);
                REQUIRE(tiered, "tiered provider: %s", moe_last_error());
                struct moe_pred_spec sp;
                REQUIRE(moe_pred_spec_parse(spec, dir, &sp) == MOE_OK, "spec %s", spec);
                struct moe_predictor *pred = moe_predictor_create(m, &sp, 1);
                REQUIRE(pred, "predictor: %s", moe_last_error());
                moe_predictor_set_provider(pred, tiered, &(struct moe_pred_prefetch){ .min_score = 0.3f,
                                                                                      .rank_only = ro });
                memset(got, 0, sizeof(float) * V * N_TOK);
                CHECK(decode(m, tiered, pred, toks, N_TOK, got) == MOE_OK, "%s/%s decode: %s", spec,
                      moe_policy_name(more_pols[pi]), moe_last_error());
                CHECK(!memcmp(ref, got, sizeof(float) * V * N_TOK), "policy %s + %s%s changed the logits",
                      moe_policy_name(more_pols[pi]), spec, ro ? " (rank-only)" : "");
                struct moe_offload_stats os;
                CHECK(moe_provider_tiered_stats(tiered, &os) && (ro ? os.device.prefetches == 0 : true) &&
                          os.device.hits + os.device.misses > 0,
                      "policy %s + %s%s: %llu prefetches", moe_policy_name(more_pols[pi]), spec,
                      ro ? " (rank-only)" : "", (unsigned long long)os.device.prefetches);
                moved_ahead[si] += os.device.prefetches;
                moe_predictor_destroy(pred);
                moe_provider_destroy(tiered);
            }
    for (int si = 0; si < 3; si++)
        CHECK(moved_ahead[si] > 0, "%s moved nothing ahead of need: the runs above checked no prefetch",
              specs[more_specs[si]]);
    unlink(store);
    unlink(pfile);
    moe_path_model_free(pm);
    free(prev);
    free(emb);
    free(ex);
    free(sq);
    free(ps);
    free(toks);
    free(ref);
    free(got);
    moe_model_close(m);
    return t_result("test_pred_parity");
}
