/* Every fixture checkpoint and the bundled sharded model open, with every
 * weight bound at the shape config.json implies. */
#include "../test_util.h"
#include "model/model.h"

#include <math.h>

static void check_view(const char *what, const struct moe_wview *w, int64_t rows, int64_t cols)
{
    CHECK(w->data != NULL, "%s: view is empty", what);
    CHECK(w->rows == rows && w->cols == cols, "%s: got [%lld, %lld], want [%lld, %lld]", what,
          (long long)w->rows, (long long)w->cols, (long long)rows, (long long)cols);
    CHECK(w->nbytes == (uint64_t)(rows * cols) * moe_dtype_size(w->dtype), "%s: nbytes %llu", what,
          (unsigned long long)w->nbytes);
}

static void check_model(const char *rel, enum moe_family fam, int n_experts, int n_shards)
{
    char dir[4096];
    struct moe_model *m = moe_model_open(t_path(dir, sizeof(dir), rel));
    const struct moe_config *c;
    REQUIRE(m != NULL, "%s: open failed: %s", rel, moe_last_error());
    c = &m->cfg;
    CHECK(c->family == fam, "%s: family %s", rel, moe_family_name(c->family));
    CHECK(c->n_experts == n_experts, "%s: n_experts %d", rel, c->n_experts);
    CHECK(m->n_shards == n_shards, "%s: %d shards, want %d", rel, m->n_shards, n_shards);
    check_view("embed", &m->embed, c->vocab, c->hidden);
    check_view("lm_head", &m->lm_head, c->vocab, c->hidden);
    check_view("final_norm", &m->final_norm, 1, c->hidden);
    for (int l = 0; l < c->n_layers; l++) {
        const struct moe_layer_w *L = &m->layers[l];
        int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
        if (c->mla) {
            check_view("q_a", &L->q_a, c->q_lora_rank, c->hidden);
            check_view("q_b", &L->wq, q, c->q_lora_rank);
            check_view("kv_a", &L->kv_a, c->kv_lora_rank + c->qk_rope_dim, c->hidden);
            check_view("kv_b", &L->kv_b, (int64_t)c->n_heads * (c->qk_nope_dim + c->v_head_dim), c->kv_lora_rank);
            check_view("wo", &L->wo, c->hidden, (int64_t)c->n_heads * c->v_head_dim);
        } else {
            check_view("wq", &L->wq, q, c->hidden);
            check_view("wk", &L->wk, kv, c->hidden);
            check_view("wv", &L->wv, kv, c->hidden);
            check_view("wo", &L->wo, c->hidden, q);
        }
        if (!c->is_moe[l]) {
            check_view("dense gate", &L->d_gate, c->dense_inter, c->hidden);
            continue;
        }
        check_view("attn_norm", &L->attn_norm, 1, c->hidden);
        check_view("router", &L->router, c->n_experts, c->hidden);
        CHECK(c->attn_qkv_bias == (L->bq.data != NULL), "%s: bias presence", rel);
        if (c->qk_norm == MOE_QK_NORM_HEAD) check_view("q_norm", &L->q_norm, 1, c->head_dim);
        if (c->qk_norm == MOE_QK_NORM_FULL) {
            check_view("q_norm", &L->q_norm, 1, q);
            check_view("k_norm", &L->k_norm, 1, kv);
        }
        if (c->qk_norm == MOE_QK_NORM_NONE) CHECK(L->q_norm.data == NULL, "%s: unexpected q_norm", rel);
        if (c->shared_inter) {
            check_view("sh_up", &L->sh_up, c->shared_inter, c->hidden);
            check_view("sh_down", &L->sh_down, c->hidden, c->shared_inter);
            if (c->shared_gate) check_view("sh_scale", &L->sh_scale, 1, c->hidden);
        }
        if (moe_router_has_bias(c->router)) check_view("router bias", &L->router_bias, 1, c->n_experts);
        for (int e = 0; e < c->n_experts; e++) {
            const struct moe_expert_w *x = moe_model_expert(m, l, e);
            check_view("gate", &x->gate, c->expert_inter, c->hidden);
            check_view("up", &x->up, c->expert_inter, c->hidden);
            check_view("down", &x->down, c->hidden, c->expert_inter);
        }
    }
    CHECK(moe_model_expert_bytes(m) == 3ull * (uint64_t)c->expert_inter * (uint64_t)c->hidden * 2,
          "%s: expert bytes %llu", rel, (unsigned long long)moe_model_expert_bytes(m));
    /* A bf16 weight converts to the floats its bits say. */
    {
        const struct moe_st_tensor *t = moe_model_tensor(m, "model.norm.weight");
        float *f = malloc((size_t)c->hidden * sizeof(float));
        REQUIRE(t && f, "model.norm.weight lookup");
        CHECK(t->data == m->final_norm.data, "lookup and bound view disagree");
        moe_wview_to_f32(&m->final_norm, f);
        for (int i = 0; i < c->hidden; i++) {
            uint16_t h;
            memcpy(&h, (const char *)t->data + 2 * i, 2);
            CHECK(f[i] == moe_bf16_to_f32(h) && isfinite(f[i]), "norm[%d] = %g", i, f[i]);
        }
        free(f);
    }
    CHECK(moe_model_tensor(m, "no.such.tensor") == NULL, "absent tensor found");
    moe_model_close(m);
}

int main(void)
{
    char dir[4096];
    struct moe_model *m;
    check_model("tests/fixtures/hf-tiny/mixtral", MOE_FAM_MIXTRAL, 8, 1);
    check_model("tests/fixtures/hf-tiny/qwen2_moe", MOE_FAM_QWEN2_MOE, 8, 1);
    check_model("tests/fixtures/hf-tiny/qwen3_moe", MOE_FAM_QWEN3_MOE, 16, 1);
    check_model("tests/fixtures/hf-tiny/olmoe", MOE_FAM_OLMOE, 16, 1);
    check_model("models/pycode-moe-18m", MOE_FAM_QWEN3_MOE, 32, 4);

    check_model("tests/fixtures/hf-tiny/deepseek_v3", MOE_FAM_DEEPSEEK_V3, 16, 1);

    m = moe_model_open(t_path(dir, sizeof(dir), "tests/fixtures/no-such-model"));
    CHECK(m == NULL && strstr(moe_last_error(), "no-such-model"), "missing dir: %s", moe_last_error());
    return t_result("test_model_open");
}
