/* The all-resident provider hands out every expert's checkpoint values: the bundled model's BF16
 * experts copied out of the checkpoint's mapping into memory marked for transparent huge pages (on a
 * kernel with them, when half the available memory holds them), its F32 conversions in such memory
 * too, and a fixture's experts, too few bytes for a huge page, read where the model maps them. */
#include "../../offload/provider.h"
#include "../test_util.h"

#include <unistd.h>

/* The model at rel (*m) and its all-resident provider in dt. */
static struct moe_provider *open_resident(const char *rel, enum moe_dtype dt, struct moe_model **m)
{
    char p[512];
    *m = moe_model_open(t_path(p, sizeof(p), rel));
    REQUIRE(*m, "%s: %s", rel, moe_last_error());
    struct moe_provider *r = moe_provider_resident_create(*m, dt);
    REQUIRE(r, "%s: resident: %s", rel, moe_last_error());
    return r;
}

static void check(const char *rel, enum moe_dtype dt, bool thp)
{
    struct moe_model *m;
    struct moe_provider *r = open_resident(rel, dt, &m);
    const struct moe_config *c = &m->cfg;
    size_t n_all = (size_t)c->n_layers * (size_t)c->n_experts, n_moe = 0, mat = (size_t)c->expert_inter * c->hidden;
    for (int l = 0; l < c->n_layers; l++) n_moe += c->is_moe[l];
    uint64_t avail, total;
    bool fits = moe_host_memory(&avail, &total) && n_moe * c->n_experts * moe_model_expert_bytes(m) <= avail / 2;
    /* the copies span one buffer laid out [layers][experts] */
    bool huge = thp && n_all * 3 * mat * moe_dtype_size(dt) >= MOE_HUGE_PAGE && (dt == MOE_DT_F32 || fits);
    int *ids = malloc(sizeof(int) * (size_t)c->n_experts);
    struct moe_expert_ref *out = malloc(sizeof(*out) * (size_t)c->n_experts);
    float *f = malloc(sizeof(float) * mat);
    REQUIRE(ids && out && f, "out of memory");
    for (int e = 0; e < c->n_experts; e++) ids[e] = e;
    int wrong = 0, in_place = 0, unmarked = 0;
    for (int l = 0; l < c->n_layers; l++) {
        if (!c->is_moe[l]) continue;
        REQUIRE(r->ops->acquire(r->self, l, c->n_experts, ids, out) == MOE_OK, "acquire: %s", moe_last_error());
        for (int e = 0; e < c->n_experts; e++) {
            const struct moe_expert_w *x = moe_model_expert(m, l, e);
            const struct moe_wview *w[3] = { &x->gate, &x->up, &x->down };
            const void *got[3] = { out[e].gate, out[e].up, out[e].down };
            CHECK(out[e].dtype == dt, "%s layer %d expert %d: dtype %s", rel, l, e, moe_dtype_name(out[e].dtype));
            for (int k = 0; k < 3; k++) {
                if (dt == MOE_DT_BF16) {
                    wrong += memcmp(got[k], w[k]->data, mat * 2) != 0;
                    in_place += got[k] == w[k]->data;
                } else {
                    moe_wview_to_f32(w[k], f);
                    wrong += memcmp(got[k], f, mat * sizeof(float)) != 0;
                }
                unmarked += t_huge_marked(got[k]) != 1;
            }
        }
        r->ops->release(r->self, l);
    }
    int n = (int)n_moe * c->n_experts * 3;
    CHECK(!wrong, "%s %s: %d of %d matrices differ from the checkpoint's", rel, moe_dtype_name(dt), wrong, n);
    if (dt == MOE_DT_BF16)
        CHECK(in_place == (huge ? 0 : n), "%s: %d of %d matrices read in place, expected %s", rel, in_place, n,
              huge ? "none (copied into huge pages)" : "all");
    /* the copy's tail past its last whole huge page stays in small pages: a few matrices there */
    if (huge) CHECK(unmarked < c->n_experts * 3, "%s %s: %d of %d matrices outside huge-page memory", rel,
                    moe_dtype_name(dt), unmarked, n);
    printf("%s %s: %d matrices, %d read in place, %d outside memory marked for huge pages\n", rel,
           moe_dtype_name(dt), n, in_place, unmarked);
    free(ids);
    free(out);
    free(f);
    moe_provider_destroy(r);
    moe_model_close(m);
}

/* A layer outside the model (MOE_EINVAL), or one without experts (MOE_ENOENT, provider.h), is refused as
 * the tiered provider refuses it, where a layer past the last read past the provider's tables. */
static void check_bad_layers(const char *rel)
{
    struct moe_model *m;
    struct moe_provider *r = open_resident(rel, MOE_DT_BF16, &m);
    const struct moe_config *c = &m->cfg;
    int dense = -1;
    for (int l = 0; l < c->n_layers && dense < 0; l++)
        if (!c->is_moe[l]) dense = l;
    const int layers[] = { -1, c->n_layers, c->n_layers + 1000, 1 << 24, dense };
    for (size_t i = 0; i < MOE_ARRAY_LEN(layers); i++) {
        if (i + 1 == MOE_ARRAY_LEN(layers) && dense < 0) break;
        int id = 0;
        struct moe_expert_ref out;
        char want[64];
        snprintf(want, sizeof(want), "layer %d is not a MoE layer", layers[i]);
        enum moe_status st = dense >= 0 && layers[i] == dense ? MOE_ENOENT : MOE_EINVAL;
        CHECK(r->ops->acquire(r->self, layers[i], 1, &id, &out) == st && strstr(moe_last_error(), want),
              "%s: layer %d of %d: want %s: %s", rel, layers[i], c->n_layers, moe_status_str(st), moe_last_error());
    }
    moe_provider_destroy(r);
    moe_model_close(m);
}

int main(void)
{
    check_bad_layers("models/pycode-moe-18m");
    check_bad_layers("tests/fixtures/hf-tiny/deepseek_v3"); /* its layer 0 is dense */
    bool thp = access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0;
    check("models/pycode-moe-18m", MOE_DT_BF16, thp);
    check("models/pycode-moe-18m", MOE_DT_F32, thp);
    check("tests/fixtures/hf-tiny/qwen3_moe", MOE_DT_BF16, thp);
    return t_failures ? T_FAIL : T_PASS;
}
