/* Path predictor MLP: learns a synthetic routing rule from embeddings and the
 * previous token's routing well above chance, keeps the best held-out epoch,
 * builds its optional history and context input blocks, and survives a
 * safetensors round trip bit for bit; a file's metadata numbers are read whole or refused by name. */
#include "model/safetensors.h"
#include "predictor/path_model.h"
#include "kernels/backend.h"
#include "tests/test_util.h"

#include <math.h>
#include <unistd.h>

#define M 3
#define E 8
#define K 2
#define DIM 16
#define VOCAB 40
#define N 3000

static uint64_t rng = 12345;
static uint32_t rnd(void) { return (uint32_t)(t_xorshift(&rng) >> 11); }

/* The load's message for the file path written with one tensor of 4 floats, w1, and the metadata of a 3-layer,
 * 8-expert, top-2, dim-16, width-64 model, key set to value (added when that has no key). */
static const char *meta_load_error(const char *path, const char *key, const char *value)
{
    static const char *const base[] = { "format", "moeflow-path-predictor", "version", "1", "n_moe_layers", "3",
                                        "n_experts", "8", "top_k", "2", "dim", "16", "width", "64" };
    const char *meta[MOE_ARRAY_LEN(base) + 3];
    size_t n = 0;
    bool set = false;
    for (size_t i = 0; i < MOE_ARRAY_LEN(base); i += 2) {
        meta[n++] = base[i];
        meta[n++] = strcmp(base[i], key) ? base[i + 1] : (set = true, value);
    }
    if (!set) {
        meta[n++] = key;
        meta[n++] = value;
    }
    meta[n] = NULL;
    float w[4] = { 0 };
    struct moe_st_out t = { .name = "w1", .dtype = MOE_DT_F32, .ndim = 1, .shape = { 4 }, .data = w };
    REQUIRE(moe_st_write(path, &t, 1, meta) == MOE_OK, "write: %s", moe_last_error());
    struct moe_path_model *pm = moe_path_model_load(path, 0, 0, 0, 0);
    CHECK(!pm, "%s '%s': the 4-float w1 loaded", key, value);
    moe_path_model_free(pm);
    return moe_last_error();
}

/* The metadata's numbers: the whole text, base 10 for the sizes; a value taken gets as far as w1, whose shape is
 * wrong; one refused is named with what it must be. */
static void check_meta_numbers(const char *path)
{
    static const char *const keys[] = { "n_moe_layers", "n_experts", "top_k", "dim", "width" };
    static const char *const zero_led[] = { "03", "08", "02", "016", "064" }; /* meta_load_error's, 0 before */
    static const char *const int_bad[] = { "0", "-1", "-0", "", "x", "3x", "3 ", "3\n", "3.0", "0x3", "1e1",
                                           "1048577", "99999999999999999999", "-99999999999999999999",
                                           " 3", "\t3", "+3", "\n3" };
    const char *err;
    for (size_t k = 0; k < MOE_ARRAY_LEN(keys); k++) {
        err = meta_load_error(path, keys[k], zero_led[k]);
        CHECK(strstr(err, "tensor 'w1' must be F32 ["), "%s '%s' refused: %s", keys[k], zero_led[k], err);
        for (size_t i = 0; i < MOE_ARRAY_LEN(int_bad); i++) {
            err = meta_load_error(path, keys[k], int_bad[i]);
            CHECK(strstr(err, ": metadata n_moe_layers/n_experts/top_k/dim/width missing or not positive"),
                  "%s '%s': %s", keys[k], int_bad[i], err);
        }
    }
    /* integers of no shape a model has: the message names the value and its bounds */
    err = meta_load_error(path, "n_moe_layers", "1048576");
    CHECK(strstr(err, ": bad shape in metadata: n_moe_layers 1048576 is outside 1..1024") &&
              strstr(err, "retrain it with moeflow train-predictor"), "n_moe_layers 1048576: %s", err);
    err = meta_load_error(path, "top_k", "9");
    CHECK(strstr(err, ": bad shape in metadata: top_k 9 is outside 1..8"), "top_k 9 of 8 experts: %s", err);
    err = meta_load_error(path, "width", "65537");
    CHECK(strstr(err, ": bad shape in metadata: width 65537 is outside 1..65536"), "width 65537: %s", err);
    static const char *const horizon_ok[] = { "1", "2", "8", "08" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(horizon_ok); i++) {
        err = meta_load_error(path, "horizon", horizon_ok[i]);
        CHECK(strstr(err, "tensor 'w1' must be F32 ["), "horizon '%s' refused: %s", horizon_ok[i], err);
    }
    static const char *const horizon_bad[] = { "0", "9", "-1", "", "2x", "2.0", "99999999999999999999", " 2", "+2" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(horizon_bad); i++) {
        err = meta_load_error(path, "horizon", horizon_bad[i]);
        CHECK(strstr(err, ": metadata horizon must be 1..8"), "horizon '%s': %s", horizon_bad[i], err);
    }
    /* hist_decay: a number in (0, 1) once a float: 0.99999999 is 1 and 1e-50 is 0 */
    static const char *const decay_ok[] = { "0.5", ".5", "5e-1", "0.999", "0.999999", "1e-30", "1e-40", "0.0625" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(decay_ok); i++) {
        err = meta_load_error(path, "hist_decay", decay_ok[i]);
        CHECK(strstr(err, "tensor 'w1' must be F32 ["), "hist_decay '%s' refused: %s", decay_ok[i], err);
    }
    static const char *const decay_bad[] = { "0", "1", "-0.5", "1.5", "nan", "inf", "-inf", "", "0.5x", "0.5 ",
                                             "0.99999999", "1e-50", "1e400", "0.5.5", " 0.5", "\t.5", "+0.5",
                                             "0x1p-1", "0X.8" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(decay_bad); i++) {
        char want[128];
        snprintf(want, sizeof want, "%s: metadata hist_decay '%s' must be a number in (0, 1)", path, decay_bad[i]);
        err = meta_load_error(path, "hist_decay", decay_bad[i]);
        CHECK(!strcmp(err, want), "hist_decay '%s': '%s', want '%s'", decay_bad[i], err, want);
    }
}

/* m written to a temporary file and loaded back (expected shape of m), or NULL. */
static struct moe_path_model *round_trip(const struct moe_path_model *m)
{
    char p[] = "/tmp/moeflow-test-pathrt-XXXXXX";
    int fd = mkstemp(p);
    if (fd < 0) return NULL;
    close(fd);
    struct moe_path_model *l = NULL;
    if (moe_path_model_save(m, p, NULL) == MOE_OK) l = moe_path_model_load(p, m->n_moe, m->n_experts, m->top_k, m->dim);
    unlink(p);
    return l;
}

int main(void)
{
    static float emb[VOCAB * DIM];
    static int token[N], prev[N * M * K], target[N * M * K];
    for (int i = 0; i < VOCAB * DIM; i++) emb[i] = (float)((int)(rnd() % 2001) - 1000) / 1000.0f;
    /* rule: layer 0 experts depend on the token; deeper layers partly on the
     * previous token's same layer */
    for (int s = 0; s < N; s++) {
        token[s] = (int)(rnd() % VOCAB);
        for (int l = 0; l < M; l++) {
            int *t = target + (s * M + l) * K;
            int *p = prev + (s * M + l) * K;
            if (s == 0 || s % 50 == 0) {
                p[0] = p[1] = -1;
            } else {
                p[0] = target[((s - 1) * M + l) * K];
                p[1] = target[((s - 1) * M + l) * K + 1];
            }
            t[0] = (token[s] * (l + 1)) % E;
            t[1] = (l > 0 && p[0] >= 0) ? (p[0] + 1) % E : (token[s] / 3 + l) % E;
            if (t[1] == t[0]) t[1] = (t[0] + 4) % E;
        }
    }
    struct moe_path_model *m = moe_path_model_create(M, E, K, DIM, 64, 1, 7);
    REQUIRE(m, "create: %s", moe_last_error());
    struct moe_path_data d = { .n = N, .token = token, .prev = prev, .target = target, .emb = emb, .vocab = VOCAB };
    struct moe_path_train_params tp = { .max_epochs = 40, .batch = 64, .lr = 3e-3f, .val_frac = 0.2f,
                                        .patience = 4, .seed = 1 };
    struct moe_path_train_report rep;
    REQUIRE(moe_path_model_train(m, &d, &tp, &rep) == MOE_OK, "train: %s", moe_last_error());
    printf("epochs %d best %d val loss %.4f recall %.3f (%.2f s)\n", rep.epochs, rep.best_epoch, rep.val_loss,
           rep.val_recall, rep.seconds);
    CHECK(rep.n_val == 600 && rep.n_train == 2400, "split %d/%d", rep.n_train, rep.n_val);
    CHECK(rep.val_recall > 0.8, "held-out recall@%d %.3f (chance %.3f)", K, rep.val_recall, (double)K / E);
    CHECK(rep.best_epoch >= 1 && rep.best_epoch <= rep.epochs, "best epoch %d of %d", rep.best_epoch, rep.epochs);

    /* horizon 3: blocks for the next two tokens, trained where the sequence
     * goes on (a new sequence starts every 50 samples), masked after it ends */
    {
        static int next[N * M * K], seqno[N], pos[N], prev2[N * M * K];
        for (int s2 = 0; s2 < N; s2++) {
            seqno[s2] = s2 / 50;
            pos[s2] = s2 % 50;
        }
        moe_path_neighbours(target, seqno, pos, N, M * K, prev2, next);
        CHECK(!memcmp(prev2, prev, sizeof prev), "moe_path_neighbours: prev is not the previous token's routing");
        bool next_ok = true;
        for (int s2 = 0; s2 < N; s2++)
            for (int j = 0; j < M * K; j++)
                next_ok = next_ok && next[s2 * M * K + j] ==
                                         (s2 + 1 < N && (s2 + 1) % 50 != 0 ? target[(s2 + 1) * M * K + j] : -1);
        CHECK(next_ok, "moe_path_neighbours: next is not the next token's routing");
        /* a gap in the positions (a lost token) ends the sequence on both sides */
        pos[120] = 71;
        moe_path_neighbours(target, seqno, pos, N, M * K, prev2, NULL);
        CHECK(prev2[120 * M * K] == -1 && prev2[121 * M * K] == -1 && prev2[122 * M * K] == target[121 * M * K],
              "moe_path_neighbours: a position gap is not a sequence break");
        pos[120] = 20;
        struct moe_path_model *mh = moe_path_model_create(M, E, K, DIM, 32, 3, 7);
        REQUIRE(mh && mh->n_out == 3 * M * E, "create horizon 3: %s", moe_last_error());
        struct moe_path_data dh = d;
        dh.next = next;
        struct moe_path_train_params tph = tp;
        tph.max_epochs = 3;
        struct moe_path_train_report rh;
        CHECK(moe_path_model_train(mh, &dh, &tph, &rh) == MOE_OK, "train horizon 3: %s", moe_last_error());
        CHECK(isfinite(rh.val_loss) && rh.val_loss > 0, "horizon 3 held-out loss %f", rh.val_loss);
        CHECK(rh.val_recall > 0.6, "horizon 3 block 0 recall %.3f", rh.val_recall);
        /* this token's block alone: the bits of the full forward's first block */
        struct moe_backend *be = moe_backend_cpu_create(&(struct moe_backend_cpu_params){ .n_threads = 1 });
        REQUIRE(be, "cpu backend: %s", moe_last_error());
        float xh[2 * (M * E + DIM)], full[2 * 3 * M * E], first[2 * M * E], hsh[2 * 32];
        for (int r = 0; r < 2; r++)
            moe_path_model_features(mh, emb + (size_t)(3 + r) * DIM, prev + (size_t)(5 + r) * M * K,
                                    xh + (size_t)r * mh->n_in);
        moe_path_model_forward(mh, be, 2, xh, full, hsh);
        moe_path_model_forward_first(mh, be, 2, xh, M * E, first, hsh);
        CHECK(!memcmp(first, full, sizeof(float) * M * E) &&
                  !memcmp(first + M * E, full + 3 * M * E, sizeof(float) * M * E),
              "the first block alone differs from the full forward's");
        moe_backend_destroy(be);
        moe_path_model_free(mh);
        /* every sequence ends after each token: the second block is masked throughout, and the losses are the
         * first block's mean BCE per output (a step of 1e-9 leaves the weights as they were, to 1e-9) */
        static int none[N * M * K];
        for (int i = 0; i < N * M * K; i++) none[i] = -1;
        struct moe_path_model *m2 = moe_path_model_create(M, E, K, DIM, 16, 2, 9);
        REQUIRE(m2, "create horizon 2: %s", moe_last_error());
        struct moe_path_data d2 = d;
        d2.next = none;
        struct moe_path_train_params tp2 = { .max_epochs = 1, .batch = 64, .lr = 1e-9f, .val_frac = 0.2f, .seed = 1 };
        struct moe_path_train_report r2;
        REQUIRE(moe_path_model_train(m2, &d2, &tp2, &r2) == MOE_OK, "train horizon 2: %s", moe_last_error());
        double want_val = 0, want_train = 0;
        for (int s2 = 0; s2 < N; s2++) {
            float x2[DIM + M * E], p2[2 * M * E], h2[16];
            moe_path_model_features(m2, emb + (size_t)token[s2] * DIM, prev + (size_t)s2 * M * K, x2);
            moe_path_model_forward(m2, NULL, 1, x2, p2, h2);
            for (int i = 0; i < M * E; i++) {
                bool y = false;
                for (int j = 0; j < K; j++) y |= target[(size_t)s2 * M * K + (size_t)(i / E) * K + (size_t)j] == i % E;
                double l = -log(y ? (double)p2[i] : 1.0 - (double)p2[i]);
                if (s2 < r2.n_train) want_train += l;
                else want_val += l;
            }
        }
        want_val /= (double)r2.n_val * M * E;
        want_train /= (double)r2.n_train * M * E;
        CHECK(fabs(r2.val_loss - want_val) < 1e-3 * want_val && fabs(r2.train_loss - want_train) < 1e-3 * want_train,
              "masked block: held-out loss %.6f, train loss %.6f; the first block's %.6f, %.6f", r2.val_loss,
              r2.train_loss, want_val, want_train);
        moe_path_model_free(m2);
        CHECK(!moe_path_model_create(M, E, K, DIM, 32, MOE_PATH_MAX_HORIZON + 1, 7) &&
                  strstr(moe_last_error(), "horizon 9 is outside 1..8"), "horizon above the maximum: %s",
              moe_last_error());
    }
    /* the history input block: a moving average of the sequence's routing, kept across a save/load */
    {
        struct moe_path_opts ho = { .horizon = 2, .hist_decay = 0.5f }, bad = { .horizon = 2, .hist_decay = 1.0f };
        struct moe_path_model *mh = moe_path_model_create_ex(M, E, K, DIM, 16, &ho, 3);
        REQUIRE(mh && mh->n_in == DIM + 2 * M * E, "create with history: %s", moe_last_error());
        CHECK(!moe_path_model_create_ex(M, E, K, DIM, 16, &bad, 3) &&
                  strstr(moe_last_error(), "history decay 1 is outside [0, 1)"),
              "history decay 1: %s", moe_last_error());
        float hist[M * E] = { 0 }, xh[DIM + 2 * M * E];
        moe_path_model_hist_update(mh, hist, target);
        moe_path_model_hist_update(mh, hist, target + M * K);
        int e0 = target[M * K]; /* layer 0 of sample 1, used last: weight 0.5 at least */
        CHECK(hist[e0] >= 0.5f - 1e-6f && hist[e0] <= 0.75f + 1e-6f, "history weight %f", hist[e0]);
        moe_path_model_features_ex(mh, emb, prev + 7 * M * K, hist, NULL, xh);
        CHECK(!memcmp(xh + DIM + M * E, hist, sizeof hist), "history block not in the input row");
        struct moe_path_model *ml = round_trip(mh);
        CHECK(ml && ml->hist_decay == 0.5f && ml->n_in == mh->n_in, "history decay lost on load: %s",
              ml ? "" : moe_last_error());
        moe_path_model_free(ml);
        moe_path_model_free(mh);
    }

    /* the context block: the previous token's final hidden state at unit RMS after the other blocks,
     * zeros when unknown; kept across a save/load */
    {
        struct moe_path_opts co = { .horizon = 2, .hist_decay = 0.5f, .context = true };
        struct moe_path_model *mc = moe_path_model_create_ex(M, E, K, DIM, 16, &co, 5);
        REQUIRE(mc && mc->context && mc->n_in == 2 * DIM + 2 * M * E, "create with context: %s", moe_last_error());
        float ctx[DIM], xc[2 * DIM + 2 * M * E];
        for (int i = 0; i < DIM; i++) ctx[i] = 3.0f * (float)(i - 5);
        moe_path_model_features_ex(mc, emb, prev + 7 * M * K, NULL, ctx, xc);
        const float *cb = xc + DIM + 2 * M * E;
        double ss = 0;
        for (int i = 0; i < DIM; i++) ss += (double)cb[i] * cb[i];
        CHECK(fabs(ss / DIM - 1.0) < 1e-4 && cb[5] == 0.0f && cb[6] > 0 && cb[0] < 0,
              "context block not the unit-RMS hidden state (mean square %f)", ss / DIM);
        moe_path_model_features_ex(mc, emb, prev + 7 * M * K, NULL, NULL, xc);
        bool zero = true;
        for (int i = 0; i < DIM; i++) zero = zero && cb[i] == 0.0f;
        CHECK(zero, "unknown context is not zeros");
        struct moe_path_model *ml = round_trip(mc);
        CHECK(ml && ml->context && ml->hist_decay == 0.5f && ml->n_in == mc->n_in, "context lost on load: %s",
              ml ? "" : moe_last_error());
        moe_path_model_free(ml);
        moe_path_model_free(mc);
    }

    /* bad input is refused, not crashed on */
    int bad_tok[4] = { 0, 1, VOCAB, 2 };
    struct moe_path_data bd = d;
    bd.n = 4;
    bd.token = bad_tok;
    CHECK(moe_path_model_train(m, &bd, &tp, &rep) == MOE_ERANGE, "token outside vocab accepted");

    /* a diverging run (weights overflow to NaN) fails, keeps finite weights and
     * never scores NaN as a hit in its epoch lines */
    {
        struct moe_path_model *md = moe_path_model_create(M, E, K, DIM, 32, 1, 7);
        REQUIRE(md, "create: %s", moe_last_error());
        size_t nw1 = (size_t)md->width * md->n_in;
        float *w1 = malloc(sizeof(float) * nw1);
        REQUIRE(w1, "malloc");
        memcpy(w1, md->w1, sizeof(float) * nw1);
        struct moe_path_data dd = d;
        dd.n = 200;
        struct moe_path_train_params tpd = { .max_epochs = 2, .batch = 1, .lr = 10, .weight_decay = 1,
                                             .val_frac = 0.2f, .patience = 3, .seed = 1, .verbose = true };
        char lp[] = "/tmp/moeflow-test-pathlog-XXXXXX";
        int lfd = mkstemp(lp), saved = dup(2);
        REQUIRE(lfd >= 0 && saved >= 0, "mkstemp/dup");
        fflush(stderr);
        dup2(lfd, 2);
        enum moe_status sd = moe_path_model_train(md, &dd, &tpd, &rep);
        fflush(stderr);
        dup2(saved, 2);
        close(saved);
        static char lines[4096];
        ssize_t nl = pread(lfd, lines, sizeof lines - 1, 0);
        lines[nl > 0 ? nl : 0] = 0;
        close(lfd);
        unlink(lp);
        CHECK(sd == MOE_ERANGE && strstr(moe_last_error(), "diverged") && strstr(moe_last_error(), "--lr"),
              "a diverging run: status %d: %s", (int)sd, moe_last_error());
        CHECK(strstr(lines, "nan, recall@2 0.0000") && !strstr(lines, "recall@2 1.0000"),
              "NaN scores counted as hits: %s", lines);
        bool finite = true;
        for (size_t i = 0; i < nw1; i++) finite = finite && isfinite(md->w1[i]);
        for (int i = 0; i < md->n_out; i++) finite = finite && isfinite(md->b2[i]);
        CHECK(finite && !memcmp(w1, md->w1, sizeof(float) * nw1),
              "a run with no finite epoch does not keep the initial weights");
        free(w1);
        moe_path_model_free(md);
    }

    char path[] = "/tmp/moeflow-test-path-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0, "mkstemp");
    close(fd);
    snprintf(m->model_name, sizeof m->model_name, "synthetic");
    REQUIRE(moe_path_model_save(m, path, NULL) == MOE_OK, "save: %s", moe_last_error());
    struct moe_path_model *m2 = moe_path_model_load(path, M, E, K, DIM);
    REQUIRE(m2, "load: %s", moe_last_error());
    CHECK(!strcmp(m2->model_name, "synthetic"), "model name '%s'", m2->model_name);
    float x[M * E + DIM], p1[M * E], p2[M * E], hs[64];
    moe_path_model_features(m, emb + 5 * DIM, prev + 7 * M * K, x);
    moe_path_model_forward(m, NULL, 1, x, p1, hs);
    moe_path_model_forward(m2, NULL, 1, x, p2, hs);
    CHECK(!memcmp(p1, p2, sizeof p1), "loaded model predicts differently");
    /* through the CPU backend's kernel: close to OpenBLAS, and a row's scores
     * are the same bits alone or among other rows */
    {
        struct moe_backend *be = moe_backend_cpu_create(&(struct moe_backend_cpu_params){ .n_threads = 1 });
        REQUIRE(be, "cpu backend: %s", moe_last_error());
        float x3[3 * (M * E + DIM)], p3[3 * M * E], pb[M * E], hs3[3 * 64], worst = 0;
        for (int r = 0; r < 3; r++) moe_path_model_features(m, emb + (size_t)(4 + r) * DIM, prev + (size_t)(6 + r) * M * K,
                                                            x3 + (size_t)r * m->n_in);
        moe_path_model_forward(m, be, 3, x3, p3, hs3);
        moe_path_model_forward(m, be, 1, x3 + m->n_in, pb, hs);
        CHECK(!memcmp(pb, p3 + m->n_out, sizeof pb), "path scores of a row depend on the rows around it");
        moe_path_model_forward(m, NULL, 1, x3 + m->n_in, p1, hs);
        for (int j = 0; j < M * E; j++) worst = fabsf(p1[j] - pb[j]) > worst ? fabsf(p1[j] - pb[j]) : worst;
        CHECK(worst < 1e-5f, "CPU-kernel path scores differ from OpenBLAS by %g", (double)worst);
        moe_backend_destroy(be);
    }
    struct moe_path_model *m3 = moe_path_model_load(path, M, E + 1, K, DIM);
    CHECK(!m3 && strstr(moe_last_error(), "moeflow train-predictor"), "shape mismatch not refused: %s",
          moe_last_error());
    moe_path_model_free(m3);
    /* malformed predictor files are refused with a reason, not crashed on */
    {
        float w[4] = { 0 };
        struct moe_st_out bad[1] = { { .name = "w1", .dtype = MOE_DT_F32, .ndim = 1, .shape = { 4 }, .data = w } };
        const char *meta_fmt[] = { "format", "something-else", NULL };
        REQUIRE(moe_st_write(path, bad, 1, meta_fmt) == MOE_OK, "write: %s", moe_last_error());
        CHECK(!moe_path_model_load(path, 0, 0, 0, 0) && strstr(moe_last_error(), "moeflow-path-predictor"),
              "wrong format accepted: %s", moe_last_error());
        const char *meta_v[] = { "format", "moeflow-path-predictor", "version", "2", NULL };
        REQUIRE(moe_st_write(path, bad, 1, meta_v) == MOE_OK, "write: %s", moe_last_error());
        CHECK(!moe_path_model_load(path, 0, 0, 0, 0) && strstr(moe_last_error(), "version 2"),
              "format version 2 accepted: %s", moe_last_error());
        const char *meta_h[] = { "format", "moeflow-path-predictor", "version", "1", "n_moe_layers", "3",
                                 "n_experts", "8", "top_k", "2", "dim", "16", "width", "64", "horizon", "9", NULL };
        REQUIRE(moe_st_write(path, bad, 1, meta_h) == MOE_OK, "write: %s", moe_last_error());
        CHECK(!moe_path_model_load(path, 0, 0, 0, 0) && strstr(moe_last_error(), "horizon"), "horizon 9 accepted: %s",
              moe_last_error());
        const char *meta_c[] = { "format", "moeflow-path-predictor", "version", "1", "n_moe_layers", "3",
                                 "n_experts", "8", "top_k", "2", "dim", "16", "width", "64", "context", "attention",
                                 NULL };
        REQUIRE(moe_st_write(path, bad, 1, meta_c) == MOE_OK, "write: %s", moe_last_error());
        CHECK(!moe_path_model_load(path, 0, 0, 0, 0) && strstr(moe_last_error(), "context"),
              "unknown context kind accepted: %s", moe_last_error());
        const char *meta_s[] = { "format", "moeflow-path-predictor", "version", "1", "n_moe_layers", "3",
                                 "n_experts", "8", "top_k", "2", "dim", "16", "width", "64", NULL };
        REQUIRE(moe_st_write(path, bad, 1, meta_s) == MOE_OK, "write: %s", moe_last_error());
        CHECK(!moe_path_model_load(path, 0, 0, 0, 0) && strstr(moe_last_error(), "w1"), "bad w1 shape accepted: %s",
              moe_last_error());
        check_meta_numbers(path);
    }
    /* a tensor of the wrong shape says the shape it must have; NaN or Inf weights are refused */
    {
        struct moe_st_out t4[4] = {
            { .name = "w1", .dtype = MOE_DT_F32, .ndim = 2, .shape = { m->width, m->n_in }, .data = m->w1 },
            { .name = "b1", .dtype = MOE_DT_F32, .ndim = 1, .shape = { m->width - 1 }, .data = m->b1 },
            { .name = "w2", .dtype = MOE_DT_F32, .ndim = 2, .shape = { m->n_out, m->width }, .data = m->w2 },
            { .name = "b2", .dtype = MOE_DT_F32, .ndim = 1, .shape = { m->n_out }, .data = m->b2 },
        };
        const char *meta_s[] = { "format", "moeflow-path-predictor", "version", "1", "n_moe_layers", "3",
                                 "n_experts", "8", "top_k", "2", "dim", "16", "width", "64", NULL };
        REQUIRE(moe_st_write(path, t4, 4, meta_s) == MOE_OK, "write: %s", moe_last_error());
        CHECK(!moe_path_model_load(path, 0, 0, 0, 0) && strstr(moe_last_error(), "'b1' must be F32 [64]") &&
                  !strstr(moe_last_error(), "[640]"),
              "b1 of the wrong shape: %s", moe_last_error());
        static const char *const which[] = { "b1", "w2" };
        for (int i = 0; i < 2; i++) {
            float *v = i ? &m2->w2[5] : &m2->b1[3], keep = *v;
            *v = i ? INFINITY : NAN;
            REQUIRE(moe_path_model_save(m2, path, NULL) == MOE_OK, "save: %s", moe_last_error());
            *v = keep;
            char want[64];
            snprintf(want, sizeof want, "tensor '%s' has non-finite values (retrain it)", which[i]);
            struct moe_path_model *mn = moe_path_model_load(path, M, E, K, DIM);
            CHECK(!mn && strstr(moe_last_error(), want) && strstr(moe_last_error(), path),
                  "a non-finite %s loaded: %s", which[i], mn ? "" : moe_last_error());
            moe_path_model_free(mn);
        }
    }
    unlink(path);
    moe_path_model_free(m2);
    moe_path_model_free(m);
    /* the recorded model name against a model directory given as "." or with a
     * trailing "/.": the directory it resolves to */
    char dot[4200];
    t_path(dot, sizeof(dot), "models/pycode-moe-18m/.");
    CHECK(!moe_path_model_other_model("pycode-moe-18m", dot), "%s taken for another model", dot);
    CHECK(moe_path_model_other_model("mixtral-8x7b", dot), "%s taken for mixtral-8x7b", dot);
    return t_result("test_path_model");
}
