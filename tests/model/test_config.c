/* config.json: every fixture parses to the expected values; the spellings of
 * different transformers versions agree; unsupported and malformed configs
 * are refused with an error naming the architecture or the field. */
#include "../test_util.h"
#include "model/config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <unistd.h>

static json_t *load_json(const char *rel)
{
    char path[4096];
    json_error_t err;
    json_t *j = json_load_file(t_path(path, sizeof(path), rel), 0, &err);
    REQUIRE(j != NULL, "%s: %s", rel, err.text);
    return j;
}

/* Parse a JSON object as config.json. */
static enum moe_status parse_obj(json_t *j, struct moe_config *c)
{
    char *s = json_dumps(j, JSON_COMPACT);
    enum moe_status st;
    REQUIRE(s != NULL, "json_dumps");
    st = moe_config_parse(s, strlen(s), "test config.json", c);
    free(s);
    return st;
}

static void load_fixture(const char *rel, struct moe_config *c)
{
    char dir[4096];
    enum moe_status st = moe_config_load(t_path(dir, sizeof(dir), rel), c);
    REQUIRE(st == MOE_OK, "%s: %s", rel, moe_last_error());
}

static bool all_moe(const struct moe_config *c)
{
    for (int l = 0; l < c->n_layers; l++)
        if (!c->is_moe[l]) return false;
    return true;
}

static bool cfg_equal(const struct moe_config *a, const struct moe_config *b)
{
    return a->family == b->family && !strcmp(a->model_type, b->model_type) && a->n_layers == b->n_layers &&
           a->hidden == b->hidden && a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads &&
           a->head_dim == b->head_dim && a->vocab == b->vocab && a->n_experts == b->n_experts &&
           a->top_k == b->top_k && a->expert_inter == b->expert_inter && a->dense_inter == b->dense_inter &&
           a->shared_inter == b->shared_inter && a->shared_gate == b->shared_gate &&
           a->norm_topk_prob == b->norm_topk_prob && a->router == b->router && a->qk_norm == b->qk_norm &&
           a->attn_qkv_bias == b->attn_qkv_bias && a->tie_embeddings == b->tie_embeddings &&
           a->rms_eps == b->rms_eps && a->rope_theta == b->rope_theta && a->max_pos == b->max_pos &&
           a->bos_id == b->bos_id && a->eos_id == b->eos_id && a->n_eos == b->n_eos &&
           !memcmp(a->is_moe, b->is_moe, sizeof(a->is_moe));
}

static void test_fixtures(void)
{
    struct moe_config c;

    load_fixture("tests/fixtures/hf-tiny/mixtral", &c);
    CHECK(c.family == MOE_FAM_MIXTRAL && !strcmp(c.model_type, "mixtral"), "mixtral family");
    CHECK(c.n_layers == 4 && c.hidden == 64 && c.n_heads == 4 && c.n_kv_heads == 2 && c.head_dim == 16,
          "mixtral dims");
    CHECK(c.vocab == 320 && c.n_experts == 8 && c.top_k == 2 && c.expert_inter == 96, "mixtral moe dims");
    CHECK(c.dense_inter == 0 && c.shared_inter == 0 && !c.shared_gate, "mixtral no dense/shared");
    CHECK(c.router == MOE_ROUTER_TOPK_SOFTMAX && c.qk_norm == MOE_QK_NORM_NONE && !c.attn_qkv_bias,
          "mixtral recipe");
    CHECK(!c.tie_embeddings && fabsf(c.rms_eps - 1e-6f) < 1e-12f && c.rope_theta == 10000.0f, "mixtral norms");
    CHECK(c.max_pos == 512 && c.bos_id == 1 && c.eos_id == 2 && c.n_eos == 1 && all_moe(&c), "mixtral ids");
    CHECK(!c.sliding_window && !c.sliding[0], "mixtral without a sliding window");
    json_t *mj = load_json("tests/fixtures/hf-tiny/mixtral/config.json");
    json_object_set_new(mj, "sliding_window", json_integer(64)); /* every layer slides; the context stays */
    CHECK(parse_obj(mj, &c) == MOE_OK && c.sliding_window == 64 && c.sliding[0] && c.sliding[c.n_layers - 1] &&
              c.max_pos == 512,
          "mixtral sliding_window: %s", moe_last_error());
    json_decref(mj);
    /* Qwen3-MoE: use_sliding_window turns on the layers from max_window_layers on (or layer_types'); off, no
     * layer slides whatever layer_types say */
    mj = load_json("tests/fixtures/hf-tiny/qwen3_moe/config.json");
    json_object_set_new(mj, "use_sliding_window", json_true());
    json_object_set_new(mj, "sliding_window", json_integer(8));
    json_object_set_new(mj, "max_window_layers", json_integer(2));
    CHECK(parse_obj(mj, &c) == MOE_OK && c.sliding_window == 8 && !c.sliding[1] && c.sliding[2] && c.sliding[3],
          "qwen3_moe use_sliding_window: %s", moe_last_error());
    json_object_set_new(mj, "layer_types", json_pack("[ssss]", "sliding_attention", "full_attention", "full_attention",
                                                     "full_attention"));
    CHECK(parse_obj(mj, &c) == MOE_OK && c.sliding[0] && !c.sliding[2], "qwen3_moe layer_types: %s", moe_last_error());
    json_object_set_new(mj, "use_sliding_window", json_false());
    CHECK(parse_obj(mj, &c) == MOE_OK && !c.sliding_window && !c.sliding[0], "qwen3_moe sliding off: %s",
          moe_last_error());
    /* on, but the window null: transformers keeps no window, and no layer slides (not 4096 from max_window_layers,
     * nor the layers layer_types name) */
    json_object_set_new(mj, "use_sliding_window", json_true());
    json_object_set_new(mj, "sliding_window", json_null());
    CHECK(parse_obj(mj, &c) == MOE_OK && !c.sliding_window && !c.sliding[0], "qwen3_moe null window, layer_types: %s",
          moe_last_error());
    json_object_del(mj, "layer_types");
    CHECK(parse_obj(mj, &c) == MOE_OK && !c.sliding_window && !c.sliding[2] && !c.sliding[3],
          "qwen3_moe null window: %s", moe_last_error());
    json_decref(mj);

    load_fixture("tests/fixtures/hf-tiny/qwen2_moe", &c);
    CHECK(c.family == MOE_FAM_QWEN2_MOE, "qwen2 family");
    CHECK(c.head_dim == 16, "qwen2 head_dim derived from hidden/heads: %d", c.head_dim);
    CHECK(c.n_experts == 8 && c.top_k == 2 && c.expert_inter == 48, "qwen2 moe dims");
    CHECK(c.shared_inter == 96 && c.shared_gate && c.attn_qkv_bias, "qwen2 shared expert / bias");
    CHECK(!c.norm_topk_prob && c.router == MOE_ROUTER_SOFTMAX_TOPK && c.qk_norm == MOE_QK_NORM_NONE,
          "qwen2 router");
    CHECK(c.bos_id == -1 && c.eos_id == -1 && c.n_eos == 0 && all_moe(&c) && c.dense_inter == 0,
          "qwen2 null ids");

    load_fixture("tests/fixtures/hf-tiny/qwen3_moe", &c);
    CHECK(c.family == MOE_FAM_QWEN3_MOE, "qwen3 family");
    CHECK(c.n_experts == 16 && c.top_k == 4 && c.expert_inter == 48 && c.head_dim == 16, "qwen3 dims");
    CHECK(c.norm_topk_prob && c.qk_norm == MOE_QK_NORM_HEAD && !c.attn_qkv_bias && c.shared_inter == 0,
          "qwen3 recipe");

    load_fixture("tests/fixtures/hf-tiny/olmoe", &c);
    CHECK(c.family == MOE_FAM_OLMOE, "olmoe family");
    CHECK(c.n_experts == 16 && c.top_k == 4 && c.expert_inter == 48 && c.head_dim == 16, "olmoe dims");
    CHECK(!c.norm_topk_prob && c.qk_norm == MOE_QK_NORM_FULL && c.router == MOE_ROUTER_SOFTMAX_TOPK,
          "olmoe recipe");
    CHECK(c.bos_id == -1 && c.eos_id == 50279, "olmoe ids %d %d", c.bos_id, c.eos_id);

    load_fixture("tests/fixtures/hf-tiny/deepseek_v3", &c);
    CHECK(c.family == MOE_FAM_DEEPSEEK_V3 && !strcmp(c.model_type, "deepseek_v3"), "deepseek family");
    CHECK(c.mla && c.q_lora_rank == 32 && c.kv_lora_rank == 32 && c.qk_nope_dim == 16 && c.qk_rope_dim == 8 &&
              c.v_head_dim == 16 && c.head_dim == 24 && c.n_kv_heads == c.n_heads && c.rope_interleave,
          "deepseek MLA dims: head_dim %d", c.head_dim);
    CHECK(c.n_experts == 16 && c.top_k == 4 && c.expert_inter == 32 && c.shared_inter == 32 && !c.shared_gate &&
              c.dense_inter == 128, "deepseek experts");
    CHECK(c.router == MOE_ROUTER_SIGMOID_GROUP && c.n_group == 4 && c.topk_group == 2 && c.norm_topk_prob &&
              c.routed_scale == 2.5f, "deepseek router");
    CHECK(!c.is_moe[0] && c.is_moe[1] && c.is_moe[2] && c.is_moe[3], "deepseek first_k_dense_replace");

    load_fixture("models/pycode-moe-18m", &c);
    CHECK(c.family == MOE_FAM_QWEN3_MOE && c.n_layers == 8 && c.hidden == 192 && c.head_dim == 48,
          "pycode dims");
    CHECK(c.n_experts == 32 && c.top_k == 4 && c.expert_inter == 96 && c.vocab == 8192, "pycode moe");
    CHECK(c.max_pos == 2048 && c.bos_id == 0 && c.eos_id == 0 && c.norm_topk_prob, "pycode ids");
}

/* Older / alternative spellings give the same configuration. */
static void test_spellings(void)
{
    struct moe_config a, b;
    json_t *j;

    load_fixture("tests/fixtures/hf-tiny/qwen3_moe", &a);
    j = load_json("tests/fixtures/hf-tiny/qwen3_moe/config.json");
    json_object_del(j, "rope_parameters");
    json_object_set_new(j, "rope_theta", json_real(10000.0));
    json_object_del(j, "num_local_experts");
    json_object_set_new(j, "num_experts", json_integer(16));
    json_object_del(j, "head_dim");
    json_object_set_new(j, "rope_scaling", json_null());
    REQUIRE(parse_obj(j, &b) == MOE_OK, "old qwen3 spelling: %s", moe_last_error());
    CHECK(cfg_equal(&a, &b), "old and new qwen3 spellings disagree (theta %g/%g, experts %d/%d, "
          "head_dim %d/%d)", a.rope_theta, b.rope_theta, a.n_experts, b.n_experts, a.head_dim, b.head_dim);

    /* rope_theta inside rope_scaling, both expert counts (agreeing). */
    json_object_del(j, "rope_theta");
    json_object_set_new(j, "rope_scaling", json_pack("{s:s, s:f}", "rope_type", "default", "rope_theta", 5e5));
    json_object_set_new(j, "num_local_experts", json_integer(16));
    REQUIRE(parse_obj(j, &b) == MOE_OK, "rope_scaling spelling: %s", moe_last_error());
    CHECK(b.rope_theta == 5e5f && b.n_experts == 16, "rope_scaling theta %g", b.rope_theta);
    json_decref(j);

    /* Qwen2: qkv_bias vs attention_bias vs neither (older versions hard-wired biases). */
    j = load_json("tests/fixtures/hf-tiny/qwen2_moe/config.json");
    json_object_del(j, "qkv_bias");
    REQUIRE(parse_obj(j, &b) == MOE_OK, "qwen2 without qkv_bias: %s", moe_last_error());
    CHECK(b.attn_qkv_bias, "qwen2 default biases");
    json_object_set_new(j, "attention_bias", json_false());
    REQUIRE(parse_obj(j, &b) == MOE_OK, "qwen2 attention_bias: %s", moe_last_error());
    CHECK(!b.attn_qkv_bias, "qwen2 attention_bias false ignored");
    json_object_set_new(j, "qkv_bias", json_true());
    REQUIRE(parse_obj(j, &b) == MOE_OK, "qwen2 qkv_bias: %s", moe_last_error());
    CHECK(b.attn_qkv_bias, "qwen2 qkv_bias true ignored");

    /* Dense layers: decoder_sparse_step and mlp_only_layers. */
    json_object_set_new(j, "decoder_sparse_step", json_integer(2));
    json_object_set_new(j, "mlp_only_layers", json_pack("[i]", 3));
    json_object_set_new(j, "eos_token_id", json_pack("[i,i]", 5, 6));
    json_object_set_new(j, "tie_word_embeddings", json_true());
    REQUIRE(parse_obj(j, &b) == MOE_OK, "qwen2 sparse step: %s", moe_last_error());
    CHECK(!b.is_moe[0] && b.is_moe[1] && !b.is_moe[2] && !b.is_moe[3], "sparse step / mlp_only_layers");
    CHECK(b.dense_inter == 128, "dense_inter %d", b.dense_inter);
    CHECK(b.eos_id == 5 && b.n_eos == 2 && b.eos_ids[1] == 6 && b.tie_embeddings, "eos list / tie");
    json_decref(j);
}

/* Mutate a fixture config and expect status st with every word of `needles` in the message. */
static void expect_refused(const char *rel, json_t *j, enum moe_status want, const char *needle)
{
    struct moe_config c;
    enum moe_status st = parse_obj(j, &c);
    CHECK(st == want, "%s: status %s, want %s (%s)", needle, moe_status_str(st), moe_status_str(want),
          moe_last_error());
    CHECK(strstr(moe_last_error(), needle) != NULL, "%s: error does not name \"%s\": %s", rel, needle,
          moe_last_error());
    json_decref(j);
}

/* One field of a fixture's config.json set to a JSON value: refused with status st, the message naming
 * says. */
struct bad_field {
    const char *key, *json;
    enum moe_status st;
    const char *says;
};

static void refuse_each(const char *rel, const struct bad_field *bad, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        json_t *j = load_json(rel);
        json_object_set_new(j, bad[i].key, json_loads(bad[i].json, JSON_DECODE_ANY, NULL));
        expect_refused(rel, j, bad[i].st, bad[i].says);
    }
}

/* YaRN: the frequency table and attention factor of transformers' _compute_yarn_parameters
 * (values from its formulas in double precision: low 11, high 20 for these settings), and
 * DeepSeek-V3's mscale^2 on the softmax scale. */
static void test_yarn(void)
{
    static const double want[32] = {
        1, 0.649381632, 0.421696503, 0.273841963, 0.177827941, 0.115478198, 0.0749894209, 0.0486967525,
        0.0316227766, 0.0205352503, 0.0133352143, 0.00865964323, 0.00515479548, 0.00304311773,
        0.00177853028, 0.00102661768, 0.000583333333, 0.000324690816, 0.000175706876, 9.12806545e-05,
        4.44569853e-05, 2.88695496e-05, 1.87473552e-05, 1.21741881e-05, 7.90569415e-06, 5.13381257e-06,
        3.33380358e-06, 2.16491081e-06, 1.40585331e-06, 9.12935318e-07, 5.92843426e-07, 3.84981632e-07,
    };
    const char *q3 = "tests/fixtures/hf-tiny/qwen3_moe/config.json";
    struct moe_config c;
    json_t *j = load_json(q3);
    json_object_del(j, "rope_parameters");
    json_object_set_new(j, "rope_theta", json_real(1e6));
    json_object_set_new(j, "rope_scaling", json_pack("{s:s,s:f,s:i}", "rope_type", "yarn", "factor", 4.0,
                                                     "original_max_position_embeddings", 32768));
    REQUIRE(parse_obj(j, &c) == MOE_OK, "yarn config: %s", moe_last_error());
    json_decref(j);
    CHECK(c.rope_kind == MOE_ROPE_YARN && c.yarn.factor == 4 && c.yarn.orig_max_pos == 32768 &&
              c.yarn.beta_fast == 32 && c.yarn.beta_slow == 1 && c.yarn.truncate, "yarn fields");
    float f[32], scale;
    moe_config_rope(&c, 64, f, &scale);
    for (int i = 0; i < 32; i++)
        CHECK(fabs(f[i] - want[i]) <= 2e-6 * want[i], "yarn inv_freq[%d] = %.9g, want %.9g", i, f[i], want[i]);
    CHECK(fabsf(scale - 1.138629436f) < 1e-6f, "yarn attention factor %.9g", scale);
    CHECK(moe_config_attn_scale(&c) == 1.0f / sqrtf((float)c.head_dim), "qwen3 yarn changes the softmax scale");

    /* the default RoPE: the table every backend used before, factor 1 */
    load_fixture("tests/fixtures/hf-tiny/qwen3_moe", &c);
    moe_config_rope(&c, 16, f, &scale);
    for (int i = 0; i < 8; i++)
        CHECK(f[i] == 1.0f / powf(c.rope_theta, (float)(2 * i) / 16.0f), "default inv_freq[%d] = %g", i, f[i]);
    CHECK(scale == 1.0f && c.rope_kind == MOE_ROPE_DEFAULT, "default rope scale %g", scale);

    /* DeepSeek-V3 as published: mscale = mscale_all_dim = 1, factor 40 -> cos/sin x 1, softmax x m^2 */
    j = load_json("tests/fixtures/hf-tiny/deepseek_v3/config.json");
    json_object_set_new(j, "rope_parameters", json_pack("{s:s,s:f,s:i,s:f,s:f,s:f,s:f,s:f}", "rope_type", "yarn",
                                                        "rope_theta", 10000.0, "original_max_position_embeddings",
                                                        64, "factor", 40.0, "mscale", 1.0, "mscale_all_dim", 1.0,
                                                        "beta_fast", 32.0, "beta_slow", 1.0));
    REQUIRE(parse_obj(j, &c) == MOE_OK, "deepseek yarn config: %s", moe_last_error());
    json_decref(j);
    moe_config_rope(&c, c.qk_rope_dim, f, &scale);
    double m = 0.1 * log(40.0) + 1.0;
    CHECK(scale == 1.0f, "deepseek yarn cos/sin factor %g", scale);
    CHECK(fabs(moe_config_attn_scale(&c) - m * m / sqrt(24.0)) < 1e-6, "deepseek yarn softmax scale %.9g",
          moe_config_attn_scale(&c));
}

static void test_refusals(void)
{
    const char *q3 = "tests/fixtures/hf-tiny/qwen3_moe/config.json";
    const char *q2 = "tests/fixtures/hf-tiny/qwen2_moe/config.json";
    json_t *j;
    struct moe_config c;
    char dir[4096];

    /* DeepSeek-V3: each change (fields as JSON, null deletes) refused with its status and words */
    const char *ds = "tests/fixtures/hf-tiny/deepseek_v3/config.json";
    static const struct {
        const char *change;
        enum moe_status st;
        const char *says;
    } ds_bad[] = {
        { "{\"model_type\": \"deepseek\", \"architectures\": [\"DeepseekForCausalLM\"]}", MOE_ENOTSUP,
          "DeepSeek before V2" },
        { "{\"rope_scaling\": {\"type\": \"linear\", \"factor\": 4.0}}", MOE_ENOTSUP, "linear" },
        { "{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 40.0}}", MOE_EFORMAT,
          "original_max_position_embeddings" },
        { "{\"n_group\": 3}", MOE_ERANGE, "n_group" },
        { "{\"topk_group\": 5}", MOE_ERANGE, "topk_group" },
        { "{\"n_group\": 2, \"topk_group\": null}", MOE_ERANGE,
          "topk_group = 4 (the default) is more than n_group = 2" },
        { "{\"scoring_func\": \"softmax\"}", MOE_ENOTSUP, "scoring_func" },
        { "{\"v_head_dim\": 0}", MOE_ERANGE, "v_head_dim" },
        { "{\"n_shared_experts\": -1}", MOE_ERANGE, "n_shared_experts" },
        { "{\"intermediate_size\": null}", MOE_EFORMAT, "first_k_dense_replace = 1) but \"intermediate_size\"" },
        /* positive, but infinity or zero as the F32 the weights are scaled in */
        { "{\"routed_scaling_factor\": 1e39}", MOE_ERANGE, "\"routed_scaling_factor\" = 1e+39 is out of range" },
        { "{\"routed_scaling_factor\": 1e-50}", MOE_ERANGE, "\"routed_scaling_factor\" = 1e-50 is out of range" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(ds_bad); i++) {
        json_t *ch = json_loads(ds_bad[i].change, 0, NULL), *v;
        const char *key;
        REQUIRE(ch, "change %zu is not JSON", i);
        j = load_json(ds);
        json_object_foreach(ch, key, v) {
            if (json_is_null(v))
                json_object_del(j, key);
            else
                json_object_set(j, key, v);
        }
        json_decref(ch);
        expect_refused(ds, j, ds_bad[i].st, ds_bad[i].says);
    }
    j = load_json(ds);
    json_object_set_new(j, "q_lora_rank", json_null());
    CHECK(parse_obj(j, &c) == MOE_OK && c.q_lora_rank == 0, "q_lora_rank null: %s", moe_last_error());
    json_decref(j);
    j = load_json(ds); /* every layer MoE: no dense size needed */
    json_object_set_new(j, "first_k_dense_replace", json_integer(0));
    json_object_del(j, "intermediate_size");
    CHECK(parse_obj(j, &c) == MOE_OK && c.dense_inter == 0, "all-MoE without intermediate_size: %s",
          moe_last_error());
    json_decref(j);
    j = load_json(ds); /* values wider than keys: the latent cache holds no per-head value */
    json_object_set_new(j, "v_head_dim", json_integer(32));
    CHECK(parse_obj(j, &c) == MOE_OK && c.v_head_dim == 32, "v_head_dim 32: %s", moe_last_error());
    json_decref(j);
    j = load_json(ds);
    json_object_set_new(j, "n_shared_experts", json_integer(0));
    CHECK(parse_obj(j, &c) == MOE_OK && c.shared_inter == 0, "n_shared_experts 0: %s", moe_last_error());
    json_decref(j);
    (void)dir;

    /* DeepSeek-V2: softmax routing, greedy (one group, whatever n_group says) or group-limited; V2's
     * defaults (no dense layer first, two shared experts, scale 1); renormalised weights refused */
    const char *v2 = "tests/fixtures/deepseek-v3-variants/v2_group/config.json";
    load_fixture("tests/fixtures/deepseek-v3-variants/v2_group", &c);
    CHECK(c.family == MOE_FAM_DEEPSEEK_V2 && !strcmp(c.model_type, "deepseek_v2") && c.mla && c.rope_interleave &&
              c.router == MOE_ROUTER_SOFTMAX_GROUP && c.n_group == 4 && c.topk_group == 2 && !c.norm_topk_prob &&
              c.routed_scale == 16.0f && c.shared_inter == 2 * c.expert_inter,
          "deepseek_v2 group-limited routing");
    j = load_json(v2);
    json_object_set_new(j, "topk_method", json_string("greedy"));
    json_object_set_new(j, "rope_interleave", json_false()); /* not a V2 field: V2 always interleaves */
    json_object_del(j, "first_k_dense_replace");
    json_object_del(j, "n_shared_experts");
    json_object_del(j, "routed_scaling_factor");
    CHECK(parse_obj(j, &c) == MOE_OK && c.n_group == 1 && c.topk_group == 1 && c.rope_interleave && c.is_moe[0] &&
              c.shared_inter == 2 * c.expert_inter && c.routed_scale == 1.0f,
          "deepseek_v2 greedy with V2's defaults: %s", moe_last_error());
    json_decref(j);
    static const struct bad_field v2_bad[] = {
        { "topk_method", "\"noaux_tc\"", MOE_ENOTSUP, "only \"greedy\" or \"group_limited_greedy\"" },
        { "scoring_func", "\"sigmoid\"", MOE_ENOTSUP, "only \"softmax\"" },
        { "norm_topk_prob", "true", MOE_ENOTSUP, "does not renormalise" },
        { "n_group", "3", MOE_ERANGE, "n_group = 3" },
    };
    refuse_each(v2, v2_bad, MOE_ARRAY_LEN(v2_bad));

    j = load_json(q3);
    json_object_set_new(j, "model_type", json_string("llama"));
    json_object_set_new(j, "architectures", json_pack("[s]", "LlamaForCausalLM"));
    expect_refused(q3, j, MOE_ENOTSUP, "llama");

    j = load_json(q3);
    json_object_del(j, "model_type");
    json_object_set_new(j, "architectures", json_pack("[s]", "FooForCausalLM"));
    expect_refused(q3, j, MOE_ENOTSUP, "FooForCausalLM");

    j = load_json(q3);
    json_object_del(j, "hidden_size");
    expect_refused(q3, j, MOE_EFORMAT, "hidden_size");

    j = load_json(q3);
    json_object_del(j, "num_local_experts");
    expect_refused(q3, j, MOE_EFORMAT, "num_experts");

    j = load_json(q3);
    json_object_set_new(j, "num_experts_per_tok", json_integer(99));
    expect_refused(q3, j, MOE_ERANGE, "num_experts_per_tok");

    j = load_json(q3);
    json_object_set_new(j, "num_hidden_layers", json_integer(0));
    expect_refused(q3, j, MOE_ERANGE, "num_hidden_layers");

    j = load_json(q3);
    json_object_set_new(j, "num_hidden_layers", json_integer(100000));
    expect_refused(q3, j, MOE_ERANGE, "num_hidden_layers");

    j = load_json(q3);
    json_object_set_new(j, "hidden_size", json_string("64"));
    expect_refused(q3, j, MOE_EFORMAT, "hidden_size");

    j = load_json(q3);
    json_object_set_new(j, "num_key_value_heads", json_integer(3));
    expect_refused(q3, j, MOE_ERANGE, "num_key_value_heads");

    j = load_json(q3);
    json_object_set_new(j, "num_experts", json_integer(8));
    expect_refused(q3, j, MOE_EFORMAT, "num_local_experts");

    j = load_json(q3);
    json_object_set_new(j, "rope_parameters", json_pack("{s:s, s:f}", "rope_type", "dynamic", "rope_theta", 1e4));
    expect_refused(q3, j, MOE_ENOTSUP, "rope_type");

    j = load_json(q3);
    json_object_set_new(j, "rope_scaling", json_pack("{s:s, s:f}", "type", "linear", "factor", 2.0));
    expect_refused(q3, j, MOE_ENOTSUP, "\"rope_scaling.type\" = \"linear\"");

    j = load_json(q3);
    json_object_set_new(j, "rms_norm_eps", json_real(-1.0));
    expect_refused(q3, j, MOE_ERANGE, "rms_norm_eps");

    j = load_json(q3);
    json_object_set_new(j, "rms_norm_eps", json_real(1e-206)); /* 0 as a float */
    expect_refused(q3, j, MOE_ERANGE, "rms_norm_eps");

    j = load_json(q3);
    json_object_set_new(j, "rope_parameters", json_pack("{s:s, s:f}", "rope_type", "default", "rope_theta", 1e300));
    expect_refused(q3, j, MOE_ERANGE, "rope_theta");

    j = load_json(q3);
    json_object_set_new(j, "decoder_sparse_step", json_integer(0));
    expect_refused(q3, j, MOE_ERANGE, "decoder_sparse_step");

    j = load_json(q3);
    json_object_set_new(j, "mlp_only_layers", json_pack("[i]", 4));
    expect_refused(q3, j, MOE_ERANGE, "mlp_only_layers");

    j = load_json(q3);
    json_object_set_new(j, "hidden_act", json_string("gelu"));
    expect_refused(q3, j, MOE_ENOTSUP, "hidden_act");

    j = load_json(q2);
    json_object_del(j, "shared_expert_intermediate_size");
    expect_refused(q2, j, MOE_EFORMAT, "shared_expert_intermediate_size");

    j = load_json(q2);
    json_object_set_new(j, "bos_token_id", json_integer(-3));
    expect_refused(q2, j, MOE_EFORMAT, "bos_token_id");

    CHECK(moe_config_parse("{\"model_type\": ", 15, "trunc.json", &c) == MOE_EFORMAT &&
          strstr(moe_last_error(), "trunc.json"), "truncated JSON: %s", moe_last_error());
    CHECK(moe_config_parse("[1]", 3, "arr.json", &c) == MOE_EFORMAT, "array top level");
    /* a byte-order mark is named, where the message quoted its bytes, which print as nothing */
    CHECK(moe_config_parse("\xef\xbb\xbf{}", 5, "bom.json", &c) == MOE_EFORMAT &&
          strstr(moe_last_error(), "bom.json") && strstr(moe_last_error(), "byte-order mark"), "BOM: %s",
          moe_last_error());
    CHECK(moe_config_parse("{\"a\":1,\"a\":2}", 13, "dup.json", &c) == MOE_EFORMAT &&
          strstr(moe_last_error(), "duplicate"), "duplicate key: %s", moe_last_error());
    CHECK(moe_config_load(t_path(dir, sizeof(dir), "tests/fixtures"), &c) == MOE_ENOENT &&
          strstr(moe_last_error(), "config.json"), "no config.json: %s", moe_last_error());
}

/* GLM-4.5: GQA with biases or q/k norm, RoPE over part of each head, DeepSeek-V3's routing by GLM's
 * defaults (one group, weights x 1, one dense layer first, half the head rotated). */
static void test_glm4_moe(void)
{
    struct moe_config c;
    const char *air = "tests/fixtures/glm4-moe/air/config.json";
    load_fixture("tests/fixtures/glm4-moe/air", &c);
    CHECK(c.family == MOE_FAM_GLM4_MOE && !strcmp(c.model_type, "glm4_moe") && !c.mla && c.attn_qkv_bias &&
              c.qk_norm == MOE_QK_NORM_NONE && c.head_dim == 24 && c.rope_dim == 12 && c.n_kv_heads == 2 &&
              c.router == MOE_ROUTER_SIGMOID_GROUP && c.n_group == 1 && c.norm_topk_prob && !c.is_moe[0] &&
              c.is_moe[1] && c.dense_inter == 96 && c.shared_inter == c.expert_inter && c.n_eos == 2,
          "glm4_moe (air)");
    load_fixture("tests/fixtures/glm4-moe/qk_norm", &c);
    CHECK(c.qk_norm == MOE_QK_NORM_HEAD && c.head_dim == 16 && c.rope_dim == 8 && c.n_group == 4 &&
              c.topk_group == 2 && c.routed_scale == 2.5f && c.n_layers == 4,
          "glm4_moe (qk_norm)");
    load_fixture("tests/fixtures/glm4-moe/yarn_quarter", &c);
    CHECK(c.rope_dim == 6 && c.rope_kind == MOE_ROPE_YARN && !c.attn_qkv_bias && c.is_moe[0] &&
              c.shared_inter == 2 * c.expert_inter, "glm4_moe (yarn_quarter)");

    json_t *j = load_json(air);
    static const char *const gone[] = { "partial_rotary_factor", "n_group", "topk_group", "routed_scaling_factor",
                                        "first_k_dense_replace", "norm_topk_prob", "attention_bias",
                                        "use_qk_norm", "rms_norm_eps", "max_position_embeddings", "head_dim" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(gone); i++) json_object_del(j, gone[i]);
    CHECK(parse_obj(j, &c) == MOE_OK && c.head_dim == 16 && c.rope_dim == 8 && c.n_group == 1 &&
              c.topk_group == 1 && c.routed_scale == 1.0f && !c.is_moe[0] && c.is_moe[1] && c.norm_topk_prob &&
              !c.attn_qkv_bias && c.qk_norm == MOE_QK_NORM_NONE && c.rms_eps == 1e-5f && c.max_pos == 131072,
          "glm4_moe defaults: %s", moe_last_error());
    json_decref(j);
    j = load_json(air); /* DeepSeek's routing fields are not GLM's: not checked */
    json_object_set_new(j, "topk_method", json_string("greedy"));
    CHECK(parse_obj(j, &c) == MOE_OK, "glm4_moe with a topk_method: %s", moe_last_error());
    json_decref(j);
    static const struct bad_field bad[] = {
        { "partial_rotary_factor", "1.5", MOE_ERANGE, "\"partial_rotary_factor\" = 1.5 is above 1" },
        { "partial_rotary_factor", "0.125", MOE_ERANGE, "= 3 rotated dims; they must be even" },
        { "partial_rotary_factor", "0", MOE_ERANGE, "partial_rotary_factor" },
        { "head_dim", "26", MOE_ERANGE, "= 13 rotated dims" },
        { "n_group", "3", MOE_ERANGE, "n_group = 3" },
        { "use_qk_norm", "\"yes\"", MOE_EFORMAT, "use_qk_norm" },
        { "n_routed_experts", "null", MOE_EFORMAT, "\"n_routed_experts\" (or \"num_local_experts\") is missing" },
    };
    refuse_each(air, bad, MOE_ARRAY_LEN(bad));
}

/* MiniMax-M2: Mixtral's names and intermediate_size, q/k norm over the whole projection, sigmoid routing
 * with its bias in one group, RoPE over rotary_dim (head_dim / 2 by default), head_dim 128 by default. */
static void test_minimax_m2(void)
{
    struct moe_config c;
    const char *m2 = "tests/fixtures/minimax-m2/m2/config.json";
    load_fixture("tests/fixtures/minimax-m2/m2", &c);
    CHECK(c.family == MOE_FAM_MINIMAX_M2 && !strcmp(c.model_type, "minimax_m2") && c.qk_norm == MOE_QK_NORM_FULL &&
              c.head_dim == 24 && c.rope_dim == 12 && c.router == MOE_ROUTER_SIGMOID_GROUP && c.n_group == 1 &&
              c.topk_group == 1 && c.norm_topk_prob && c.routed_scale == 1.0f && c.shared_inter == 0 &&
              c.expert_inter == 16 && c.n_experts == 16 && c.is_moe[0] && !c.attn_qkv_bias && c.rope_theta == 5e6f,
          "minimax_m2 (m2)");
    load_fixture("tests/fixtures/minimax-m2/defaults", &c);
    CHECK(c.head_dim == 128 && c.rope_dim == 64 && c.rope_theta == 1e4f && c.rms_eps == 1e-6f, "minimax_m2 (defaults)");
    json_t *j = load_json(m2);
    json_object_del(j, "max_position_embeddings");
    json_object_del(j, "rope_theta");
    json_object_del(j, "rms_norm_eps");
    CHECK(parse_obj(j, &c) == MOE_OK && c.max_pos == 196608 && c.rope_theta == 5e6f && c.rms_eps == 1e-6f,
          "minimax_m2 defaults: %s", moe_last_error());
    json_decref(j);
    j = load_json(m2); /* FP8 as MiniMax-M2 publishes it: fmt "float8_e4m3fn", 128 x 128 blocks */
    json_object_set_new(j, "quantization_config",
                        json_pack("{s:s,s:s,s:s,s:[i,i],s:[s,s,s]}", "activation_scheme", "dynamic", "fmt",
                                  "float8_e4m3fn", "quant_method", "fp8", "weight_block_size", 128, 128,
                                  "modules_to_not_convert", "gate", "e_score_correction_bias", "lm_head"));
    CHECK(parse_obj(j, &c) == MOE_OK && c.fp8_block[0] == 128 && c.fp8_block[1] == 128,
          "minimax_m2 fp8: %s", moe_last_error());
    json_decref(j);
    static const struct bad_field bad[] = {
        { "rotary_dim", "13", MOE_ERANGE, "rotary_dim = 13 must be even" },
        { "rotary_dim", "26", MOE_ERANGE, "\"rotary_dim\" = 26 is out of range [1, 24]" },
        { "attention_bias", "true", MOE_ENOTSUP, "attention_bias" },
        { "intermediate_size", "null", MOE_EFORMAT, "\"intermediate_size\" is missing" },
        { "num_local_experts", "null", MOE_EFORMAT, "\"num_experts\" (or \"num_local_experts\") is missing" },
    };
    refuse_each(m2, bad, MOE_ARRAY_LEN(bad));
}

/* dots.llm1: Qwen3's attention and DeepSeek-V3's MoE block by Dots1Config's defaults; n_shared_experts has
 * none; sliding layers from layer_types, or from max_window_layers on when there is a sliding_window. */
static void test_dots1(void)
{
    struct moe_config c;
    const char *llm1 = "tests/fixtures/dots1/llm1/config.json";
    load_fixture("tests/fixtures/dots1/llm1", &c);
    CHECK(c.family == MOE_FAM_DOTS1 && !strcmp(c.model_type, "dots1") && c.qk_norm == MOE_QK_NORM_HEAD &&
              c.rope_dim == c.head_dim && c.router == MOE_ROUTER_SIGMOID_GROUP && c.norm_topk_prob &&
              c.routed_scale == 2.5f && c.shared_inter == 2 * c.expert_inter && !c.is_moe[0] && c.is_moe[1] &&
              !c.sliding_window && !c.sliding[2] && c.max_pos == 512,
          "dots1 (llm1)");
    load_fixture("tests/fixtures/dots1/defaults", &c);
    CHECK(!c.norm_topk_prob && c.routed_scale == 1.0f && c.is_moe[0] && c.n_group == 4 && c.sliding_window == 64 &&
              !c.sliding[0] && c.sliding[1] && c.sliding[2] && c.max_pos == 512 && c.rope_theta == 1e4f,
          "dots1 (defaults)");
    json_t *j = load_json(llm1);
    json_object_del(j, "sliding_window"); /* Dots1Config's 4096, from max_window_layers on */
    json_object_set_new(j, "max_window_layers", json_integer(2));
    CHECK(parse_obj(j, &c) == MOE_OK && c.sliding_window == 4096 && !c.sliding[1] && c.sliding[2],
          "dots1 default window: %s", moe_last_error());
    json_object_set_new(j, "layer_types", json_pack("[sss]", "sliding_attention", "full_attention", "full_attention"));
    CHECK(parse_obj(j, &c) == MOE_OK && c.sliding[0] && !c.sliding[2], "dots1 layer_types: %s", moe_last_error());
    json_object_set_new(j, "layer_types", json_pack("[sss]", "full_attention", "full_attention", "full_attention"));
    CHECK(parse_obj(j, &c) == MOE_OK && !c.sliding_window, "dots1 full layer_types: %s", moe_last_error());
    json_decref(j);
    static const struct bad_field bad[] = {
        { "n_shared_experts", "null", MOE_EFORMAT, "required field \"n_shared_experts\" is missing" },
        { "layer_types", "[\"full_attention\", \"chunked_attention\", \"full_attention\"]", MOE_ENOTSUP,
          "\"layer_types\"[1] = \"chunked_attention\"" },
        { "layer_types", "[\"full_attention\"]", MOE_EFORMAT, "one type per layer (3)" },
        { "layer_types", "[\"full_attention\", \"sliding_attention\", \"full_attention\"]", MOE_EFORMAT,
          "\"sliding_window\" is null" },
        { "attention_bias", "true", MOE_ENOTSUP, "attention_bias" },
    };
    refuse_each(llm1, bad, MOE_ARRAY_LEN(bad));
}

/* Kimi K2: DeepSeek-V3 under model_type kimi_k2, the name kept. */
static void test_kimi(void)
{
    struct moe_config c;
    load_fixture("tests/fixtures/deepseek-v3-variants/kimi_k2", &c);
    CHECK(c.family == MOE_FAM_DEEPSEEK_V3 && !strcmp(c.model_type, "kimi_k2") && c.mla && c.n_experts == 32 &&
              c.top_k == 8 && c.n_group == 1 && c.routed_scale == 2.827f && c.router == MOE_ROUTER_SIGMOID_GROUP &&
              c.rope_kind == MOE_ROPE_YARN && c.yarn.factor == 32.0 && c.rope_interleave && !c.is_moe[0],
          "kimi_k2");
    json_t *j = load_json("tests/fixtures/deepseek-v3-variants/kimi_k2/config.json");
    json_object_set_new(j, "quantization_config", json_pack("{ss}", "quant_method", "compressed-tensors"));
    CHECK(parse_obj(j, &c) == MOE_ENOTSUP && strstr(moe_last_error(), "compressed-tensors"),
          "kimi_k2 INT4 (compressed-tensors): %s", moe_last_error());
    json_decref(j);
}

/* ERNIE-4.5: its own names for the experts (moe_num_experts, moe_k, ...), MoE layers by start, end and
 * interval, softmax routing with a selection bias, RoPE over adjacent pairs, tied embeddings, by
 * Ernie4_5_MoeConfig's defaults. */
static void test_ernie(void)
{
    struct moe_config c;
    const char *a3b = "tests/fixtures/ernie4_5-moe/a3b/config.json";
    load_fixture("tests/fixtures/ernie4_5-moe/a3b", &c);
    CHECK(c.family == MOE_FAM_ERNIE4_5_MOE && !strcmp(c.model_type, "ernie4_5_moe") && c.n_experts == 16 &&
              c.top_k == 4 && c.expert_inter == 16 && c.dense_inter == 96 && c.shared_inter == 32 && !c.is_moe[0] &&
              c.is_moe[1] && c.is_moe[2] && c.router == MOE_ROUTER_SOFTMAX_BIAS && c.norm_topk_prob &&
              c.n_group == 1 && c.routed_scale == 1.0f && c.rope_interleave && !c.mla && c.head_dim == 24 &&
              c.rope_dim == 24 && c.tie_embeddings && c.qk_norm == MOE_QK_NORM_NONE && !c.attn_qkv_bias,
          "ernie4_5_moe (a3b)");
    load_fixture("tests/fixtures/ernie4_5-moe/defaults", &c);
    CHECK(c.top_k == 6 && c.shared_inter == 2 * c.expert_inter && !c.is_moe[0] && c.is_moe[1] && c.is_moe[2] &&
              c.tie_embeddings && c.rope_theta == 5e5f && c.rms_eps == 1e-5f && c.head_dim == 16 &&
              c.max_pos == 512,
          "ernie4_5_moe (defaults)");
    load_fixture("tests/fixtures/ernie4_5-moe/interval", &c);
    CHECK(!c.is_moe[0] && c.is_moe[1] && !c.is_moe[2] && c.is_moe[3] && c.shared_inter == 0 && !c.tie_embeddings,
          "ernie4_5_moe (interval)");
    json_t *j = load_json(a3b);
    json_object_set_new(j, "moe_layer_interval", json_integer(2));
    json_object_set_new(j, "moe_layer_end_index", json_integer(0)); /* layer 1 is past the end */
    CHECK(parse_obj(j, &c) == MOE_ERANGE && strstr(moe_last_error(), "no MoE layer"), "ernie: all dense: %s",
          moe_last_error());
    json_decref(j);
    static const struct bad_field bad[] = {
        { "use_bias", "true", MOE_ENOTSUP, "\"use_bias\" = true" },
        { "moe_norm_min", "1e-6", MOE_ENOTSUP, "\"moe_norm_min\" = 1e-06: only 1e-12" },
        { "moe_k", "17", MOE_ERANGE, "moe_k" },
        { "moe_layer_end_index", "3", MOE_ERANGE, "moe_layer_end_index" },
        { "moe_layer_start_index", "-1", MOE_ERANGE, "moe_layer_start_index" },
        { "moe_layer_interval", "0", MOE_ERANGE, "moe_layer_interval" },
        { "hidden_act", "\"gelu\"", MOE_ENOTSUP, "only \"silu\"" },
    };
    refuse_each(a3b, bad, MOE_ARRAY_LEN(bad));
    j = load_json(a3b);
    json_object_del(j, "moe_k");
    json_object_set_new(j, "num_experts_per_tok", json_integer(4));
    CHECK(parse_obj(j, &c) == MOE_EFORMAT && strstr(moe_last_error(), "\"moe_k\""), "ernie: num_experts_per_tok: %s",
          moe_last_error());
    json_decref(j);
    /* transformers' other name for moe_num_experts: alone, refused (not the default 64 experts) */
    j = load_json(a3b);
    json_object_del(j, "moe_num_experts");
    json_object_set_new(j, "num_experts", json_integer(16));
    CHECK(parse_obj(j, &c) == MOE_EFORMAT && strstr(moe_last_error(), "its routed experts \"moe_num_experts\""),
          "ernie: num_experts: %s", moe_last_error());
    json_object_set_new(j, "num_experts", json_integer(128)); /* the alias named, not moe_k = 100 above the default 64 */
    json_object_set_new(j, "moe_k", json_integer(100));
    CHECK(parse_obj(j, &c) == MOE_EFORMAT && strstr(moe_last_error(), "its routed experts \"moe_num_experts\""),
          "ernie: num_experts 128: %s", moe_last_error());
    json_decref(j);
    /* beside the ERNIE name: the same value taken, another refused (transformers would take the alias's) */
    static const struct bad_field alias_bad[] = {
        { "num_experts", "8", MOE_EFORMAT, "\"num_experts\" disagrees with \"moe_num_experts\" = 16" },
        { "num_experts_per_tok", "2", MOE_EFORMAT, "\"num_experts_per_tok\" disagrees with \"moe_k\" = 4" },
    };
    refuse_each(a3b, alias_bad, MOE_ARRAY_LEN(alias_bad));
    j = load_json(a3b);
    json_object_set_new(j, "num_experts", json_integer(16));
    json_object_set_new(j, "num_experts_per_tok", json_integer(4));
    CHECK(parse_obj(j, &c) == MOE_OK && c.n_experts == 16 && c.top_k == 4, "ernie: agreeing aliases: %s",
          moe_last_error());
    json_decref(j);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[4200];
    FILE *f;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    REQUIRE(f != NULL, "%s: %s", path, strerror(errno));
    fputs(text, f);
    REQUIRE(fclose(f) == 0, "%s: %s", path, strerror(errno));
}

/* A model directory: the qwen3 fixture's config.json with eos_token_id = eos
 * (a JSON value), and generation_config.json = gen (NULL: none). */
static enum moe_status load_with_eos(const char *dir, const char *eos, const char *gen, struct moe_config *c)
{
    char path[4200];
    json_t *j = load_json("tests/fixtures/hf-tiny/qwen3_moe/config.json");
    char *s;
    json_object_set_new(j, "eos_token_id", json_loads(eos, JSON_DECODE_ANY, NULL));
    s = json_dumps(j, JSON_COMPACT);
    REQUIRE(s != NULL, "json_dumps");
    write_text(dir, "config.json", s);
    free(s);
    json_decref(j);
    snprintf(path, sizeof(path), "%s/generation_config.json", dir);
    unlink(path);
    if (gen) write_text(dir, "generation_config.json", gen);
    return moe_config_load(dir, c);
}

/* eos_token_id: every distinct id up to MOE_MAX_EOS kept, more refused by
 * name; generation_config.json's ids added to config.json's. */
static void test_eos_ids(void)
{
    char tmpl[] = "/tmp/moe-config-XXXXXX", path[4200];
    const char *dir = mkdtemp(tmpl);
    struct moe_config c;
    enum moe_status st;
    REQUIRE(dir != NULL, "mkdtemp: %s", strerror(errno));

    st = load_with_eos(dir, "[1, 2, 3, 4, 5, 6, 7, 8, 8, 1]", NULL, &c);
    CHECK(st == MOE_OK && c.n_eos == 8 && c.eos_id == 1 && c.eos_ids[7] == 8, "8 eos ids: %s n_eos %d",
          moe_last_error(), c.n_eos);
    st = load_with_eos(dir, "[1, 2, 3, 4, 5, 6, 7, 8, 9]", NULL, &c);
    CHECK(st == MOE_ERANGE && strstr(moe_last_error(), "eos_token_id") && strstr(moe_last_error(), " 8 "),
          "9 eos ids: %s %s", moe_status_str(st), moe_last_error());

    /* Qwen3: config.json 151645, generation_config.json [151645, 151643]. */
    st = load_with_eos(dir, "151645", "{\"eos_token_id\": [151645, 151643], \"bos_token_id\": 7}", &c);
    CHECK(st == MOE_OK && c.n_eos == 2 && c.eos_id == 151645 && c.eos_ids[1] == 151643 && c.bos_id == -1,
          "generation_config union: %s n_eos %d", moe_last_error(), c.n_eos);
    st = load_with_eos(dir, "null", "{\"eos_token_id\": 4}", &c);
    CHECK(st == MOE_OK && c.n_eos == 1 && c.eos_id == 4, "generation_config only: %s", moe_last_error());
    st = load_with_eos(dir, "[1, 2]", "{\"do_sample\": true}", &c);
    CHECK(st == MOE_OK && c.n_eos == 2 && c.eos_id == 1, "generation_config without eos: %s",
          moe_last_error());
    st = load_with_eos(dir, "[1, 2, 3, 4, 5]", "{\"eos_token_id\": [5, 6, 7, 8, 9]}", &c);
    CHECK(st == MOE_ERANGE && strstr(moe_last_error(), "generation_config.json") &&
          strstr(moe_last_error(), "eos_token_id") && strstr(moe_last_error(), " 8 "),
          "union of 9: %s %s", moe_status_str(st), moe_last_error());
    st = load_with_eos(dir, "1", "{\"eos_token_id\": \"</s>\"}", &c);
    CHECK(st == MOE_EFORMAT && strstr(moe_last_error(), "generation_config.json") &&
          strstr(moe_last_error(), "eos_token_id"), "string eos: %s", moe_last_error());
    st = load_with_eos(dir, "1", "{\"eos_token_id\": ", &c);
    CHECK(st == MOE_EFORMAT && strstr(moe_last_error(), "generation_config.json"), "bad JSON: %s",
          moe_last_error());

    snprintf(path, sizeof(path), "%s/generation_config.json", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

/* num_key_value_heads left out: the default of the family's transformers config class (Mixtral 8,
 * Qwen2-MoE 16, Qwen3-MoE 4, GLM-4.5 8, MiniMax-M2 8, dots1 32, ERNIE 4; OLMoE and DeepSeek's
 * attention every head); null: every head. */
static void test_kv_heads_default(void)
{
    static const struct { const char *dir; int want; } cases[] = {
        { "tests/fixtures/hf-tiny/mixtral", 8 },       { "tests/fixtures/hf-tiny/qwen2_moe", 16 },
        { "tests/fixtures/hf-tiny/qwen3_moe", 4 },     { "tests/fixtures/hf-tiny/olmoe", 32 },
        { "tests/fixtures/hf-tiny/deepseek_v3", 32 },  { "tests/fixtures/deepseek-v3-variants/v2_lite", 32 },
        { "tests/fixtures/glm4-moe/air", 8 },          { "tests/fixtures/minimax-m2/m2", 8 },
        { "tests/fixtures/dots1/llm1", 32 },           { "tests/fixtures/ernie4_5-moe/a3b", 4 },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(cases); i++) {
        char rel[256];
        struct moe_config c;
        snprintf(rel, sizeof(rel), "%s/config.json", cases[i].dir);
        json_t *j = load_json(rel);
        json_object_set_new(j, "num_attention_heads", json_integer(32));
        json_object_set_new(j, "head_dim", json_integer(24)); /* whatever hidden_size is */
        json_object_del(j, "num_key_value_heads");
        enum moe_status st = parse_obj(j, &c);
        CHECK(st == MOE_OK && c.n_kv_heads == cases[i].want, "%s without num_key_value_heads: %s, %d kv heads "
              "(want %d)", cases[i].dir, moe_last_error(), st ? -1 : c.n_kv_heads, cases[i].want);
        json_object_set_new(j, "num_key_value_heads", json_null());
        st = parse_obj(j, &c);
        CHECK(st == MOE_OK && c.n_kv_heads == 32, "%s num_key_value_heads null: %s", cases[i].dir, moe_last_error());
        json_decref(j);
    }
    /* a default that does not divide the heads: the message says it is one, and what to give */
    json_t *j = load_json("tests/fixtures/hf-tiny/qwen2_moe/config.json");
    json_object_set_new(j, "num_attention_heads", json_integer(4));
    json_object_set_new(j, "head_dim", json_integer(16));
    json_object_del(j, "num_key_value_heads");
    expect_refused("qwen2_moe", j, MOE_ERANGE, "num_key_value_heads = 16 (the family's default: give "
                   "num_key_value_heads)");
}

/* bos_token_id / eos_token_id left out: the defaults of the family's transformers config class (what
 * transformers' generate stops on without a generation_config.json); null: none. */
static void test_token_ids_default(void)
{
    static const struct { const char *dir; int bos, eos; } cases[] = {
        { "tests/fixtures/hf-tiny/mixtral", 1, 2 },         { "tests/fixtures/hf-tiny/qwen2_moe", -1, -1 },
        { "tests/fixtures/hf-tiny/qwen3_moe", -1, -1 },     { "tests/fixtures/hf-tiny/olmoe", -1, 50279 },
        { "tests/fixtures/hf-tiny/deepseek_v3", 0, 1 },     { "tests/fixtures/deepseek-v3-variants/v2_lite", 1, 2 },
        { "tests/fixtures/glm4-moe/air", -1, -1 },          { "tests/fixtures/minimax-m2/m2", 200034, 200020 },
        { "tests/fixtures/dots1/llm1", -1, -1 },            { "tests/fixtures/ernie4_5-moe/a3b", 1, 2 },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(cases); i++) {
        char rel[256];
        struct moe_config c;
        snprintf(rel, sizeof(rel), "%s/config.json", cases[i].dir);
        json_t *j = load_json(rel);
        json_object_del(j, "bos_token_id");
        json_object_del(j, "eos_token_id");
        enum moe_status st = parse_obj(j, &c);
        CHECK(st == MOE_OK && c.bos_id == cases[i].bos && c.eos_id == cases[i].eos &&
                  c.n_eos == (cases[i].eos >= 0),
              "%s without bos/eos: %s, bos %d eos %d (want %d %d)", cases[i].dir, moe_last_error(), c.bos_id,
              c.eos_id, cases[i].bos, cases[i].eos);
        json_object_set_new(j, "bos_token_id", json_null());
        json_object_set_new(j, "eos_token_id", json_null());
        st = parse_obj(j, &c);
        CHECK(st == MOE_OK && c.bos_id == -1 && c.eos_id == -1 && c.n_eos == 0, "%s bos/eos null: %s",
              cases[i].dir, moe_last_error());
        json_decref(j);
    }
}

int main(void)
{
    test_fixtures();
    test_spellings();
    test_refusals();
    test_glm4_moe();
    test_minimax_m2();
    test_dots1();
    test_kimi();
    test_ernie();
    test_yarn();
    test_eos_ids();
    test_kv_heads_default();
    test_token_ids_default();
    return t_result("test_config");
}
