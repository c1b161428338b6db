/* A checkpoint cut short while the model is open (rewritten in place, truncated): what reads the
 * weights through the mapping reads zeros past the new end (model/safetensors.c), and the engine
 * and the packer refuse to use them, naming the file, where the read raised SIGBUS and ended the
 * process.  A copy of the mixtral fixture is cut at its layer-1 experts:
 *  - an engine created after the cut fails (its dense weights are uploaded from there);
 *  - a forward after the cut fails with MOE_EIO, its experts being read in place from the mapping
 *    (a build that copied them at create computes the model's logits, never zeros' ones);
 *  - moe_store_pack after the cut fails and writes no store, where its records would have been
 *    zeros that their checksums vouch for;
 *  - moe_store_open of the whole checkpoint's store after the cut names the cut file, where it said
 *    the store was written for other weights. */
#include "engine_testutil.h"
#include "model/safetensors.h"
#include "offload/store.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* A fresh copy of the fixture in dir; the byte offset to cut the copy at (its first layer-1 expert). */
static uint64_t fresh_copy(const char *src, const char *dir)
{
    char p[4400], q[4400];
    for (int i = 0; i < 2; i++) {
        const char *name = i ? "model.safetensors" : "config.json";
        snprintf(p, sizeof p, "%s/%s", src, name);
        snprintf(q, sizeof q, "%s/%s", dir, name);
        t_copy_file(p, q);
    }
    struct moe_model *m = moe_model_open(dir);
    REQUIRE(m, "open %s: %s", dir, moe_last_error());
    const struct moe_st_tensor *t = moe_model_tensor(m, "model.layers.1.block_sparse_moe.experts.0.w1.weight");
    REQUIRE(t, "no layer-1 expert in the fixture");
    uint64_t cut = t->file_offset;
    moe_model_close(m);
    return cut;
}

static void cut(const char *dir, uint64_t at)
{
    char p[4400];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    REQUIRE(truncate(p, (off_t)at) == 0, "truncate %s: %s", p, strerror(errno));
}

static bool names_file(const char *dir)
{
    char p[4400];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    return strstr(moe_last_error(), p) && strstr(moe_last_error(), "shrank");
}

int main(void)
{
    char src[4096], dir[64] = "/tmp/moeflow-shrink-XXXXXX", p[4400];
    t_path(src, sizeof src, "tests/fixtures/hf-tiny/mixtral");
    REQUIRE(mkdtemp(dir), "mkdtemp");
    struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = 64, .max_batch_tokens = 16 };
    int ids[4] = { 1, 5, 9, 2 };

    /* the logits of the whole fixture */
    struct moe_model *m = moe_model_open(src);
    REQUIRE(m, "open %s: %s", src, moe_last_error());
    int V = m->cfg.vocab;
    float *want = malloc(sizeof(float) * 4 * (size_t)V), *got = malloc(sizeof(float) * 4 * (size_t)V);
    REQUIRE(want && got, "oom");
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e && run_prompt(e, moe_engine_seq_alloc(e), ids, 4, want) == MOE_OK, "fixture: %s", moe_last_error());
    moe_engine_destroy(e);
    moe_model_close(m);

    /* cut before the engine is created */
    uint64_t at = fresh_copy(src, dir);
    m = moe_model_open(dir);
    REQUIRE(m, "open %s: %s", dir, moe_last_error());
    cut(dir, at);
    e = moe_engine_create(m, &ep);
    CHECK(!e && names_file(dir), "engine created over a cut checkpoint: %s", e ? "(no error)" : moe_last_error());
    moe_engine_destroy(e);
    moe_model_close(m);

    /* cut between the engine's creation and a forward */
    at = fresh_copy(src, dir);
    m = moe_model_open(dir);
    REQUIRE(m, "open %s: %s", dir, moe_last_error());
    e = moe_engine_create(m, &ep);
    REQUIRE(e, "engine: %s", moe_last_error());
    cut(dir, at);
    enum moe_status st = run_prompt(e, moe_engine_seq_alloc(e), ids, 4, got);
    if (st == MOE_OK)
        CHECK(!memcmp(got, want, sizeof(float) * 4 * (size_t)V), "a forward over zeros gave logits as if whole");
    else
        CHECK(st == MOE_EIO && names_file(dir), "forward after the cut: %s: %s", moe_status_str(st),
              moe_last_error());
    moe_engine_destroy(e);
    moe_model_close(m);

    /* cut before the store is packed */
    at = fresh_copy(src, dir);
    m = moe_model_open(dir);
    REQUIRE(m, "open %s: %s", dir, moe_last_error());
    cut(dir, at);
    snprintf(p, sizeof p, "%s/experts.moestore", dir);
    st = moe_store_pack(m, p, NULL, NULL);
    struct stat sb;
    CHECK(st == MOE_EIO && names_file(dir), "pack over a cut checkpoint: %s: %s", moe_status_str(st),
          moe_last_error());
    CHECK(stat(p, &sb) != 0, "pack left %s", p);
    moe_model_close(m);

    /* cut before the store of the whole checkpoint is opened: the cut file is named, where the store was
     * said to be written for other weights (its fingerprint read from zeros) */
    m = moe_model_open(src);
    REQUIRE(m && moe_store_pack(m, p, NULL, NULL) == MOE_OK, "pack %s: %s", src, moe_last_error());
    moe_model_close(m);
    at = fresh_copy(src, dir);
    m = moe_model_open(dir);
    REQUIRE(m, "open %s: %s", dir, moe_last_error());
    cut(dir, at);
    struct moe_store *s = moe_store_open(p, m);
    CHECK(!s && names_file(dir), "store opened over a cut checkpoint: %s", s ? "(no error)" : moe_last_error());
    moe_store_close(s);
    moe_model_close(m);

    free(want);
    free(got);
    unlink(p);
    t_remove_copy(dir);
    return t_result("test_engine_model_shrink");
}
