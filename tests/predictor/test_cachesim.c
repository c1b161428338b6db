/* Cache replay: Belady never misses more than LRU/LFU/predicted on the same
 * log; perfect predictions turn misses into useful prefetches; the on-demand
 * timeline stalls exactly one transfer per miss; every hint acted on is counted
 * as a prefetch or as dropped; runs are deterministic; the recording provider
 * logs what the engine asks for. */
#include "predictor/cachesim.h"
#include "tests/test_util.h"

#include <math.h>

#define M 4
#define E 8
#define K 2
#define STEPS 1500

static uint64_t rng = 99;
static uint32_t rnd(void) { return (uint32_t)(t_xorshift(&rng) >> 11); }

static int route[STEPS][M][K];

static void make_routes(void)
{
    int cur[M][K];
    for (int l = 0; l < M; l++) { cur[l][0] = l % E; cur[l][1] = (l + 3) % E; }
    for (int s = 0; s < STEPS; s++)
        for (int l = 0; l < M; l++) {
            for (int j = 0; j < K; j++) {
                uint32_t r = rnd() % 100;
                /* temporal locality plus a skewed popularity */
                if (r >= 45) cur[l][j] = r < 80 ? (int)(rnd() % 3) : (int)(rnd() % E);
            }
            if (cur[l][1] == cur[l][0]) cur[l][1] = (cur[l][0] + 1) % E;
            route[s][l][0] = cur[l][0];
            route[s][l][1] = cur[l][1];
        }
}

static void build(struct moe_evlog *lg, bool oracle)
{
    moe_evlog_init(lg, M, E, K);
    for (int s = 0; s < STEPS; s++) {
        moe_evlog_step(lg);
        if (oracle) {
            float sc[K] = { 1, 1 };
            for (int l = 0; l < M; l++) moe_evlog_prefetch(lg, l, K, route[s][l], sc, l + 1);
        }
        for (int l = 0; l < M; l++) moe_evlog_access(lg, l, K, route[s][l]);
    }
}

static struct moe_cachesim_stats run(const struct moe_evlog *lg, int cap, enum moe_cache_policy pol, bool pf,
                                     double xfer, double layer)
{
    struct moe_cachesim_params p = { .capacity = cap, .policy = pol, .prefetch = pf, .xfer_s = xfer, .layer_s = layer };
    struct moe_cachesim_stats st;
    enum moe_status s = moe_cachesim_run(lg, &p, &st);
    REQUIRE(s == MOE_OK, "run: %s", moe_last_error());
    return st;
}

/* inner provider for the recorder */
static int acquires;
static enum moe_status fake_acquire(void *self, int layer, int n, const int *ids, struct moe_expert_ref *out)
{
    (void)self; (void)layer; (void)ids;
    for (int i = 0; i < n; i++) out[i] = (struct moe_expert_ref){ 0 };
    acquires++;
    return MOE_OK;
}
static void fake_release(void *self, int layer) { (void)self; (void)layer; }
static const struct moe_provider_ops fake_ops = { .acquire = fake_acquire, .release = fake_release };

/* The oracle log: which hints it holds, where, from whom.  src: 3 steps, each with the predictor's
 * hints (score 0.5) at step start for steps +0..+2, and a gate hint (score 0.25) for layer 1 after
 * layer 0's access.  count(dst, score, h, after) counts the hints of that score for step +h issued
 * after MoE layer `after` (-1: at step start), over all steps. */
static int count_hints(const struct moe_evlog *d, float score, int h, int after)
{
    int n = 0, cur = -1;
    for (size_t i = 0; i < d->n_ev; i++) {
        const struct moe_ev *e = &d->ev[i];
        if (e->kind == MOE_EV_STEP) cur = -1;
        else if (e->kind == MOE_EV_ACCESS) cur = e->layer;
        else if (d->scores[e->off] == score && cur == after && (cur + e->distance - e->layer) / M == h) n++;
    }
    return n;
}

static void test_oracle(void)
{
    struct moe_evlog src, d;
    moe_evlog_init(&src, M, E, K);
    float half[K] = { 0.5f, 0.5f }, quarter[K] = { 0.25f, 0.25f };
    for (int s = 0; s < 3; s++) {
        moe_evlog_step(&src);
        for (int h = 0; h <= 2; h++)
            for (int l = 0; l < M; l++) moe_evlog_prefetch(&src, l, K, route[s][l], half, h * M + l + 1);
        for (int l = 0; l < M; l++) {
            moe_evlog_access(&src, l, K, route[s][l]);
            if (l == 0) moe_evlog_prefetch(&src, 1, K, route[s][1], quarter, 1);
        }
    }
    struct moe_oracle_params p = { .horizon = 1, .reveal_layer = -1 };
    CHECK(moe_evlog_oracle(&src, &p, &d) == MOE_OK && d.steps == 3, "oracle: %s", moe_last_error());
    /* the truth of each step and the next at its start (the last step has no next); nothing of src's */
    CHECK(count_hints(&d, 1.0f, 0, -1) == 3 * M && count_hints(&d, 1.0f, 1, -1) == 2 * M &&
              count_hints(&d, 0.5f, 2, -1) == 0 && count_hints(&d, 0.25f, 0, 0) == 0,
          "horizon 1: %d %d", count_hints(&d, 1.0f, 0, -1), count_hints(&d, 1.0f, 1, -1));
    moe_evlog_free(&d);
    p.keep = true; /* src's hints beyond the horizon stay */
    CHECK(moe_evlog_oracle(&src, &p, &d) == MOE_OK && count_hints(&d, 0.5f, 2, -1) == 3 * M &&
              count_hints(&d, 0.5f, 0, -1) == 0 && count_hints(&d, 0.5f, 1, -1) == 0 &&
              count_hints(&d, 0.25f, 0, 0) == 0,
          "keep: %d", count_hints(&d, 0.5f, 2, -1));
    moe_evlog_free(&d);
    p.later_only = true; /* the step's own hints are src's, the gate's too; the truth only for the next */
    CHECK(moe_evlog_oracle(&src, &p, &d) == MOE_OK && count_hints(&d, 1.0f, 0, -1) == 0 &&
              count_hints(&d, 0.5f, 0, -1) == 3 * M && count_hints(&d, 0.25f, 0, 0) == 3 &&
              count_hints(&d, 1.0f, 1, -1) == 2 * M,
          "later only: %d %d", count_hints(&d, 0.5f, 0, -1), count_hints(&d, 0.25f, 0, 0));
    moe_evlog_free(&d);
    p.reveal_layer = 2; /* the next step's truth once layer 2 ran */
    CHECK(moe_evlog_oracle(&src, &p, &d) == MOE_OK && count_hints(&d, 1.0f, 1, -1) == 0 &&
              count_hints(&d, 1.0f, 1, 2) == 2 * M && count_hints(&d, 0.5f, 1, -1) == 0,
          "reveal at layer 2: %d", count_hints(&d, 1.0f, 1, 2));
    moe_evlog_free(&d);
    /* the accesses are src's, in order */
    CHECK(moe_evlog_oracle(&src, &(struct moe_oracle_params){ .horizon = 0, .reveal_layer = -1 }, &d) == MOE_OK,
          "horizon 0");
    int acc = 0;
    for (size_t i = 0; i < d.n_ev; i++)
        if (d.ev[i].kind == MOE_EV_ACCESS) {
            CHECK(d.ev[i].layer == acc % M && d.ids[d.ev[i].off] == route[acc / M][acc % M][0], "access %d", acc);
            acc++;
        }
    CHECK(acc == 3 * M, "%d accesses", acc);
    moe_evlog_free(&d);
    CHECK(moe_evlog_oracle(&src, &(struct moe_oracle_params){ .horizon = 0, .later_only = true, .reveal_layer = -1 },
                           &d) == MOE_EINVAL,
          "later only at horizon 0");
    moe_evlog_free(&d);
    CHECK(moe_evlog_oracle(&src, &(struct moe_oracle_params){ .horizon = 1, .reveal_layer = M }, &d) == MOE_EINVAL,
          "reveal past the last layer");
    moe_evlog_free(&d);
    moe_evlog_free(&src);
}

int main(void)
{
    make_routes();
    test_oracle();
    struct moe_evlog lg, orc;
    build(&lg, false);
    build(&orc, true);
    CHECK(lg.steps == STEPS, "steps %llu", (unsigned long long)lg.steps);
    for (int cap = K; cap <= M * E; cap *= 2) {
        struct moe_cachesim_stats b = run(&lg, cap, MOE_CACHE_BELADY, false, 0, 0);
        struct moe_cachesim_stats l = run(&lg, cap, MOE_CACHE_LRU, false, 0, 0);
        struct moe_cachesim_stats f = run(&lg, cap, MOE_CACHE_LFU, false, 0, 0);
        struct moe_cachesim_stats p = run(&lg, cap, MOE_CACHE_PREDICTED, false, 0, 0);
        printf("cap %2d: misses belady %llu lru %llu lfu %llu predicted %llu\n", cap,
               (unsigned long long)b.transfers, (unsigned long long)l.transfers, (unsigned long long)f.transfers,
               (unsigned long long)p.transfers);
        CHECK(b.accesses == (uint64_t)STEPS * M * K && l.accesses == b.accesses, "accesses %llu",
              (unsigned long long)b.accesses);
        CHECK(b.transfers <= l.transfers && b.transfers <= f.transfers && b.transfers <= p.transfers,
              "belady is not the minimum at capacity %d", cap);
        CHECK(b.hits + b.transfers == b.accesses, "hits + misses != accesses");
        if (cap == M * E) CHECK(l.transfers <= (uint64_t)M * E, "cold misses only when everything fits");
    }
    /* perfect predictions, instant transfers: (almost) every access hits a useful prefetch */
    struct moe_cachesim_stats o = run(&orc, M * K, MOE_CACHE_PREDICTED, true, 0, 0);
    printf("oracle: hits %llu/%llu transfers %llu prefetches %llu useful %llu\n", (unsigned long long)o.hits,
           (unsigned long long)o.accesses, (unsigned long long)o.transfers, (unsigned long long)o.prefetches,
           (unsigned long long)o.prefetch_useful);
    CHECK(o.hits >= o.accesses * 95 / 100, "oracle hits %llu of %llu", (unsigned long long)o.hits,
          (unsigned long long)o.accesses);
    CHECK(o.prefetch_useful == o.prefetches, "oracle prefetches wasted: %llu useful of %llu",
          (unsigned long long)o.prefetch_useful, (unsigned long long)o.prefetches);
    /* on-demand timeline: each miss stalls one transfer */
    struct moe_cachesim_stats t = run(&lg, 8, MOE_CACHE_LRU, false, 0.006, 0.0006);
    CHECK(fabs(t.stall_s - 0.006 * (double)t.transfers) < 1e-6, "stall %.6f for %llu misses", t.stall_s,
          (unsigned long long)t.transfers);
    CHECK(fabs(t.compute_s - 0.0006 * STEPS * M) < 1e-6, "compute %.6f", t.compute_s);
    /* prefetching perfect predictions with a slow link hides part of it */
    struct moe_cachesim_stats tp = run(&orc, 8, MOE_CACHE_PREDICTED, true, 0.0006, 0.0006);
    CHECK(tp.stall_s < t.stall_s * 0.2, "oracle prefetch stall %.4f vs on-demand %.4f (same link = compute)",
          tp.stall_s, t.stall_s * 0.1);
    /* every hint acted on is a prefetch or dropped (resident, already queued, or its layer came before the
     * link could start it), with instant transfers and over a slow link alike */
    struct moe_cachesim_stats ts = run(&orc, 8, MOE_CACHE_LRU, true, 0.006, 0.0006);
    const struct moe_cachesim_stats *hs[3] = { &o, &tp, &ts };
    for (int i = 0; i < 3; i++)
        CHECK(hs[i]->prefetches + hs[i]->prefetch_dropped == (uint64_t)STEPS * M * K,
              "run %d: %llu prefetches + %llu dropped of %d hints", i, (unsigned long long)hs[i]->prefetches,
              (unsigned long long)hs[i]->prefetch_dropped, STEPS * M * K);
    struct moe_cachesim_stats t2 = run(&lg, 8, MOE_CACHE_LRU, false, 0.006, 0.0006);
    CHECK(!memcmp(&t, &t2, sizeof t), "replay not deterministic");
    struct moe_cachesim_params bad = { .capacity = K - 1, .policy = MOE_CACHE_LRU };
    struct moe_cachesim_stats bs;
    CHECK(moe_cachesim_run(&lg, &bad, &bs) == MOE_EINVAL, "capacity below top_k accepted");

    /* bytes moved (sim --predictor, replay): transfers x expert bytes, refused when that wraps */
    uint64_t moved = 1;
    CHECK(moe_cachesim_bytes_moved(&t, 110592, &moved) == MOE_OK && moved == t.transfers * 110592ull,
          "bytes moved %llu for %llu transfers", (unsigned long long)moved, (unsigned long long)t.transfers);
    struct moe_cachesim_stats big = { .transfers = (1ull << 24) + 1 };
    CHECK(moe_cachesim_bytes_moved(&big, 1ull << 40, &moved) == MOE_ERANGE && moved == 0 &&
              strstr(moe_last_error(), "16777217 transfers") && strstr(moe_last_error(), "--expert-bytes"),
          "2^24 + 1 transfers of 1 TiB: %llu (%s)", (unsigned long long)moved, moe_last_error());

    /* recording provider */
    struct moe_provider inner = { .ops = &fake_ops };
    struct moe_evlog rl;
    moe_evlog_init(&rl, 2, E, K);
    int moe_index[3] = { 0, -1, 1 };
    struct moe_provider *rp = moe_evlog_provider_create(&inner, &rl, moe_index, 3);
    REQUIRE(rp, "recorder: %s", moe_last_error());
    int ids[K] = { 3, 5 };
    float sc[K] = { 0.9f, 0.6f };
    struct moe_expert_ref refs[K];
    moe_evlog_step(&rl);
    rp->ops->prefetch(rp->self, 2, K, ids, sc, 1);
    CHECK(rp->ops->acquire(rp->self, 0, K, ids, refs) == MOE_OK, "acquire");
    CHECK(rp->ops->acquire(rp->self, 1, K, ids, refs) == MOE_OK, "acquire dense");
    rp->ops->release(rp->self, 0);
    CHECK(acquires == 2, "inner acquire calls %d", acquires);
    CHECK(rl.n_ev == 3 && rl.ev[1].kind == MOE_EV_PREFETCH && rl.ev[1].layer == 1 && rl.ev[1].distance == 1 &&
              rl.ev[2].kind == MOE_EV_ACCESS && rl.ev[2].layer == 0 && rl.scores[rl.ev[1].off] == 0.9f,
          "log has %zu events", rl.n_ev);
    /* a hint's ids that are not experts are left out of the log and counted; the replay of what is
     * logged indexes only real experts */
    int badid[4] = { E, 4, -1, 7 };
    float bsc[4] = { 0.9f, 0.8f, 0.7f, 0.6f };
    rp->ops->prefetch(rp->self, 2, 4, badid, bsc, 1);
    rp->ops->prefetch(rp->self, 0, 1, badid, bsc, 2);
    moe_evlog_prefetch(&rl, 2, 2, ids, sc, 1);
    CHECK(rl.n_ev == 4 && rl.ev[3].kind == MOE_EV_PREFETCH && rl.ev[3].n == 2 && rl.ids[rl.ev[3].off] == 4 &&
              rl.ids[rl.ev[3].off + 1] == 7 && rl.scores[rl.ev[3].off + 1] == 0.6f && rl.dropped_ids == 5 &&
              rl.n_ids == (size_t)rl.ev[3].off + 2,
          "bad hints: %zu events, %llu ids dropped", rl.n_ev, (unsigned long long)rl.dropped_ids);
    for (size_t i = 0; i < rl.n_ev; i++)
        for (int j = 0; j < rl.ev[i].n; j++)
            CHECK(rl.ids[rl.ev[i].off + j] >= 0 && rl.ids[rl.ev[i].off + j] < E, "event %zu logs id %d", i,
                  rl.ids[rl.ev[i].off + j]);
    struct moe_cachesim_stats rs = run(&rl, K, MOE_CACHE_LRU, true, 0.006, 0.0006);
    CHECK(rs.accesses == K, "replay of the recorded log: %llu accesses", (unsigned long long)rs.accesses);
    moe_evlog_clear(&rl);
    CHECK(rl.dropped_ids == 0, "clear keeps %llu dropped ids", (unsigned long long)rl.dropped_ids);
    rp->ops->destroy(rp->self);
    moe_evlog_free(&rl);
    moe_evlog_free(&lg);
    moe_evlog_free(&orc);
    return t_result("test_cachesim");
}
