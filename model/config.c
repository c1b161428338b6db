/* config.json for Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3, GLM-4.5, MiniMax-M2 and
 * dots.llm1.
 *
 * Fields are read with the spellings of different transformers versions and
 * the defaults of each family's transformers config class; every size is
 * range-checked, and an error names the file, the field and the value. */
#include "config.h"
#include "json_error.h"

#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CFG_MAX_SIZE (1 << 24) /* upper bound for any dimension or count field */
#define SUPPORTED_TYPES                                                                                               \
    "mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3, kimi_k2, glm4_moe, minimax_m2, dots1, "  \
    "ernie4_5_moe"

const char *moe_family_name(enum moe_family f)
{
    switch (f) {
    case MOE_FAM_MIXTRAL: return "mixtral";
    case MOE_FAM_QWEN2_MOE: return "qwen2_moe";
    case MOE_FAM_QWEN3_MOE: return "qwen3_moe";
    case MOE_FAM_OLMOE: return "olmoe";
    case MOE_FAM_DEEPSEEK_V3: return "deepseek_v3";
    case MOE_FAM_DEEPSEEK_V2: return "deepseek_v2";
    case MOE_FAM_GLM4_MOE: return "glm4_moe";
    case MOE_FAM_MINIMAX_M2: return "minimax_m2";
    case MOE_FAM_DOTS1: return "dots1";
    case MOE_FAM_ERNIE4_5_MOE: return "ernie4_5_moe";
    }
    return "unknown";
}

/* The families: their router and q/k norm (GLM-4.5's by use_qk_norm), and the defaults of their
 * transformers config classes for the fields config.json may leave out. */
static const struct family {
    const char *model_type, *arch;
    enum moe_family fam;
    enum moe_router_kind router;
    enum moe_qk_norm qk_norm;
    int max_pos;          /* max_position_embeddings */
    double rope_theta, rms_eps;
    bool tie_embeddings;  /* tie_word_embeddings */
    int n_kv_heads;       /* num_key_value_heads; 0: num_attention_heads (MLA: every head its own) */
    int bos, eos;         /* bos_token_id, eos_token_id; -1: none */
} families[] = {
    { "mixtral", "MixtralForCausalLM", MOE_FAM_MIXTRAL, MOE_ROUTER_TOPK_SOFTMAX, MOE_QK_NORM_NONE, 4096 * 32, 1e6,
      1e-5, false, 8, 1, 2 },
    { "qwen2_moe", "Qwen2MoeForCausalLM", MOE_FAM_QWEN2_MOE, MOE_ROUTER_SOFTMAX_TOPK, MOE_QK_NORM_NONE, 32768, 1e4,
      1e-6, false, 16, -1, -1 },
    { "qwen3_moe", "Qwen3MoeForCausalLM", MOE_FAM_QWEN3_MOE, MOE_ROUTER_SOFTMAX_TOPK, MOE_QK_NORM_HEAD, 32768, 1e4,
      1e-6, false, 4, -1, -1 },
    { "olmoe", "OlmoeForCausalLM", MOE_FAM_OLMOE, MOE_ROUTER_SOFTMAX_TOPK, MOE_QK_NORM_FULL, 4096, 1e4, 1e-5, false,
      0, -1, 50279 },
    { "deepseek_v3", "DeepseekV3ForCausalLM", MOE_FAM_DEEPSEEK_V3, MOE_ROUTER_SIGMOID_GROUP, MOE_QK_NORM_NONE, 4096,
      1e4, 1e-6, false, 0, 0, 1 },
    /* Kimi K2: DeepSeek-V3's architecture and config class under its own model_type */
    { "kimi_k2", "DeepseekV3ForCausalLM", MOE_FAM_DEEPSEEK_V3, MOE_ROUTER_SIGMOID_GROUP, MOE_QK_NORM_NONE, 4096, 1e4,
      1e-6, false, 0, 0, 1 },
    { "deepseek_v2", "DeepseekV2ForCausalLM", MOE_FAM_DEEPSEEK_V2, MOE_ROUTER_SOFTMAX_GROUP, MOE_QK_NORM_NONE, 2048,
      1e4, 1e-6, false, 0, 1, 2 },
    { "glm4_moe", "Glm4MoeForCausalLM", MOE_FAM_GLM4_MOE, MOE_ROUTER_SIGMOID_GROUP, MOE_QK_NORM_NONE, 4096 * 32, 1e4,
      1e-5, false, 8, -1, -1 },
    { "minimax_m2", "MiniMaxM2ForCausalLM", MOE_FAM_MINIMAX_M2, MOE_ROUTER_SIGMOID_GROUP, MOE_QK_NORM_FULL, 196608,
      5e6, 1e-6, false, 8, 200034, 200020 },
    { "dots1", "Dots1ForCausalLM", MOE_FAM_DOTS1, MOE_ROUTER_SIGMOID_GROUP, MOE_QK_NORM_HEAD /* Qwen3's attention */,
      2048, 1e4, 1e-6, false, 32, -1, -1 },
    { "ernie4_5_moe", "Ernie4_5_MoeForCausalLM", MOE_FAM_ERNIE4_5_MOE, MOE_ROUTER_SOFTMAX_BIAS, MOE_QK_NORM_NONE,
      4096 * 32, 5e5, 1e-5, true, 4, 1, 2 },
};


/* A field that is absent or JSON null counts as missing. */
static json_t *field(json_t *root, const char *key)
{
    json_t *v = json_object_get(root, key);
    return json_is_null(v) ? NULL : v;
}

/* Integer field in [min, max]; *out = def when missing and !required. */
static enum moe_status get_int(const char *what, json_t *root, const char *key, bool required,
                               long long min, long long max, int def, int *out)
{
    json_t *v = field(root, key);
    long long x;
    if (!v) {
        if (required)
            return moe_errorf(MOE_EFORMAT, "%s: required field \"%s\" is missing", what, key);
        *out = def;
        return MOE_OK;
    }
    if (!json_is_integer(v))
        return moe_errorf(MOE_EFORMAT, "%s: field \"%s\" must be an integer", what, key);
    x = json_integer_value(v);
    if (x < min || x > max)
        return moe_errorf(MOE_ERANGE, "%s: field \"%s\" = %lld is out of range [%lld, %lld]", what, key, x,
                          min, max);
    *out = (int)x;
    return MOE_OK;
}

static enum moe_status get_bool(const char *what, json_t *root, const char *key, bool def, bool *out)
{
    json_t *v = field(root, key);
    if (!v) {
        *out = def;
        return MOE_OK;
    }
    if (!json_is_boolean(v))
        return moe_errorf(MOE_EFORMAT, "%s: field \"%s\" must be true or false", what, key);
    *out = json_is_true(v);
    return MOE_OK;
}

/* Positive finite number (integer or real). */
static enum moe_status get_pos_num(const char *what, json_t *root, const char *key, double def,
                                   double *out)
{
    json_t *v = field(root, key);
    double x;
    if (!v) {
        *out = def;
        return MOE_OK;
    }
    if (!json_is_number(v))
        return moe_errorf(MOE_EFORMAT, "%s: field \"%s\" must be a number", what, key);
    x = json_number_value(v);
    if (!isfinite(x) || x <= 0)
        return moe_errorf(MOE_ERANGE, "%s: field \"%s\" = %g must be a positive number", what, key, x);
    *out = x;
    return MOE_OK;
}

/* bos/eos: null or absent -> none; an integer; or a list of them.  The
 * distinct values are appended to ids[0..*n) (which already holds *n; a value
 * there is not repeated); more than cap distinct values in all is an error,
 * `also` naming where the ones already held came from (NULL: nowhere). */
static enum moe_status get_token_ids(const char *what, json_t *root, const char *key, int *ids, int cap,
                                     int *n, const char *also)
{
    json_t *v = field(root, key), *x;
    size_t i;
    if (!v) return MOE_OK;
    if (!json_is_array(v)) {
        json_t *one = v;
        v = json_array();
        json_array_append(v, one);
    } else {
        json_incref(v);
    }
    json_array_foreach(v, i, x) {
        int id, k;
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > INT_MAX) {
            json_decref(v);
            return moe_errorf(MOE_EFORMAT, "%s: field \"%s\" must be null, a non-negative integer or a "
                              "list of them", what, key);
        }
        id = (int)json_integer_value(x);
        for (k = 0; k < *n && ids[k] != id; k++) {}
        if (k < *n) continue;
        if (*n == cap) {
            json_decref(v);
            return moe_errorf(MOE_ERANGE, "%s: field \"%s\"%s%s lists more than %d distinct token ids, the "
                              "most supported; list only the ids that end a sequence", what, key,
                              also ? " together with " : "", also ? also : "", cap);
        }
        ids[(*n)++] = id;
    }
    json_decref(v);
    return MOE_OK;
}

/* bos/eos of config.json as get_token_ids reads them into ids[0..*n) (empty), or, when the key is left
 * out, the default of the family's transformers config class, def (-1: none). */
static enum moe_status get_token_ids_or(const char *what, json_t *root, const char *key, int def, int *ids, int *n)
{
    if (!json_object_get(root, key)) {
        if (def >= 0)
            ids[(*n)++] = def;
        return MOE_OK;
    }
    return get_token_ids(what, root, key, ids, MOE_MAX_EOS, n, NULL);
}

static bool is_deepseek(const char *s)
{
    return s && (!strncmp(s, "deepseek", 8) || !strncmp(s, "Deepseek", 8) || !strncmp(s, "DeepSeek", 8));
}

/* Family from model_type (or architectures[0] when model_type is absent): its row of families[]. */
static enum moe_status detect_family(const char *what, json_t *root, struct moe_config *c,
                                     const struct family **fam)
{
    json_t *mt = field(root, "model_type"), *ar = field(root, "architectures");
    const char *type = json_is_string(mt) ? json_string_value(mt) : NULL;
    const char *arch = json_is_array(ar) && json_is_string(json_array_get(ar, 0))
                           ? json_string_value(json_array_get(ar, 0)) : NULL;

    if (mt && !type) return moe_errorf(MOE_EFORMAT, "%s: field \"model_type\" must be a string", what);
    for (size_t i = 0; i < MOE_ARRAY_LEN(families); i++) {
        if ((type && !strcmp(type, families[i].model_type)) ||
            (!type && arch && !strcmp(arch, families[i].arch))) {
            c->family = families[i].fam;
            snprintf(c->model_type, sizeof(c->model_type), "%s", families[i].model_type);
            *fam = &families[i];
            return MOE_OK;
        }
    }
    if (!type && !arch)
        return moe_errorf(MOE_EFORMAT, "%s: required field \"model_type\" is missing (and no "
                          "\"architectures\")", what);
    if (is_deepseek(type) || is_deepseek(arch))
        return moe_errorf(MOE_ENOTSUP, "%s: DeepSeek before V2 (model_type \"%s\", architecture \"%s\") is "
                          "not supported (no latent attention); supported model_type values: " SUPPORTED_TYPES,
                          what, type ? type : "(none)", arch ? arch : "(none)");
    return moe_errorf(MOE_ENOTSUP, "%s: unsupported architecture: model_type \"%s\", architectures[0] "
                      "\"%s\"; supported model_type values: " SUPPORTED_TYPES, what,
                      type ? type : "(none)", arch ? arch : "(none)");
}

/* YaRN's fields of a rope_parameters / rope_scaling object h (transformers'
 * _compute_yarn_parameters: factor, original_max_position_embeddings,
 * beta_fast, beta_slow, attention_factor, mscale, mscale_all_dim, truncate). */
static enum moe_status get_yarn(const char *what, json_t *h, const char *holder, struct moe_yarn *y)
{
    static const struct { const char *key; size_t off; double def; } nums[] = {
        { "factor", offsetof(struct moe_yarn, factor), 0 },
        { "beta_fast", offsetof(struct moe_yarn, beta_fast), 32 },
        { "beta_slow", offsetof(struct moe_yarn, beta_slow), 1 },
        { "attention_factor", offsetof(struct moe_yarn, attention_factor), 0 },
        { "mscale", offsetof(struct moe_yarn, mscale), 0 },
        { "mscale_all_dim", offsetof(struct moe_yarn, mscale_all_dim), 0 },
    };
    char key[96];
    enum moe_status st;
    for (size_t i = 0; i < MOE_ARRAY_LEN(nums); i++) {
        snprintf(key, sizeof(key), "%s.%s", holder, nums[i].key);
        json_t *v = field(h, nums[i].key);
        double *out = (double *)((char *)y + nums[i].off), x;
        if (!v) {
            *out = nums[i].def;
            continue;
        }
        if (!json_is_number(v) || !isfinite(x = json_number_value(v)) || x < 0 || x > 1e6)
            return moe_errorf(MOE_ERANGE, "%s: field \"%s\" must be a number in [0, 1e6]", what, key);
        *out = x;
    }
    if (y->beta_fast == 0) y->beta_fast = 32; /* transformers: `or 32`, `or 1` */
    if (y->beta_slow == 0) y->beta_slow = 1;
    if (y->factor != 0 && y->factor < 1)
        return moe_errorf(MOE_ERANGE, "%s: field \"%s.factor\" = %g must be at least 1", what, holder, y->factor);
    snprintf(key, sizeof(key), "%s.original_max_position_embeddings", holder);
    if ((st = get_int(what, h, "original_max_position_embeddings", true, 1, INT_MAX, 0, &y->orig_max_pos)))
        return moe_error_prefix(st, "YaRN RoPE (%s)", key);
    return get_bool(what, h, "truncate", true, &y->truncate);
}

/* rope_theta at top level, in rope_parameters, or in rope_scaling; the default
 * RoPE or YaRN (into c->rope_kind and c->yarn). */
static enum moe_status get_rope(const char *what, json_t *root, double def, double *theta, struct moe_config *c)
{
    static const char *const holders[] = { "rope_parameters", "rope_scaling" };
    enum moe_status st;
    bool found = false;
    *theta = def;
    if (field(root, "rope_theta")) {
        if ((st = get_pos_num(what, root, "rope_theta", def, theta)) != MOE_OK) return st;
        found = true;
    }
    for (size_t i = 0; i < MOE_ARRAY_LEN(holders); i++) {
        json_t *h = field(root, holders[i]), *ty;
        const char *tys, *tykey = "rope_type";
        if (!h) continue;
        if (!json_is_object(h))
            return moe_errorf(MOE_EFORMAT, "%s: field \"%s\" must be an object or null", what, holders[i]);
        ty = field(h, tykey);
        if (!ty) ty = field(h, tykey = "type"); /* older transformers' spelling */
        tys = json_is_string(ty) ? json_string_value(ty) : NULL;
        if (tys && !strcmp(tys, "yarn")) {
            c->rope_kind = MOE_ROPE_YARN;
            if ((st = get_yarn(what, h, holders[i], &c->yarn)) != MOE_OK) return st;
        } else if (ty && (!tys || strcmp(tys, "default"))) {
            return moe_errorf(MOE_ENOTSUP, "%s: field \"%s.%s\" = \"%s\": only \"default\" and \"yarn\" RoPE "
                              "are supported", what, holders[i], tykey, tys ? tys : "(not a string)");
        }
        if (field(h, "rope_theta")) {
            double t;
            char key[64];
            snprintf(key, sizeof(key), "%s.rope_theta", holders[i]);
            if (!json_is_number(field(h, "rope_theta")) || !isfinite(t = json_number_value(field(h, "rope_theta"))) ||
                t <= 0)
                return moe_errorf(MOE_ERANGE, "%s: field \"%s\" must be a positive number", what, key);
            if (found && t != *theta)
                return moe_errorf(MOE_EFORMAT, "%s: field \"%s\" = %g disagrees with rope_theta = %g", what,
                                  key, t, *theta);
            *theta = t;
            found = true;
        }
    }
    return MOE_OK;
}

/* head_dim: given, or hidden_size / num_attention_heads; GQA groups whole. */
static enum moe_status parse_head_dim(const char *what, json_t *root, struct moe_config *c)
{
    if (c->n_heads % c->n_kv_heads)
        return moe_errorf(MOE_ERANGE, "%s: num_attention_heads = %d is not a multiple of num_key_value_heads "
                          "= %d%s", what, c->n_heads, c->n_kv_heads,
                          json_object_get(root, "num_key_value_heads") ? ""
                                                                        : " (the family's default: give "
                                                                          "num_key_value_heads)");
    if (field(root, "head_dim")) return get_int(what, root, "head_dim", true, 1, 4096, 0, &c->head_dim);
    if (c->family == MOE_FAM_MINIMAX_M2) { /* MiniMaxM2Config's default, whatever hidden_size is */
        c->head_dim = 128;
        return MOE_OK;
    }
    if (c->hidden % c->n_heads)
        return moe_errorf(MOE_ERANGE, "%s: no \"head_dim\" and hidden_size = %d is not a multiple of "
                          "num_attention_heads = %d", what, c->hidden, c->n_heads);
    c->head_dim = c->hidden / c->n_heads;
    return MOE_OK;
}

/* An integer field in [min, max] that may be null for "none" (0); absent: def. */
static enum moe_status get_int_or_null(const char *what, json_t *root, const char *key, long long min,
                                       long long max, int def, int *out)
{
    json_t *v = json_object_get(root, key);
    if (v && json_is_null(v)) {
        *out = 0;
        return MOE_OK;
    }
    return get_int(what, root, key, false, min, max, def, out);
}

/* DeepSeek-V3's MLA attention (transformers' DeepseekV3Config defaults). */
static enum moe_status parse_mla(const char *what, json_t *root, struct moe_config *c)
{
    enum moe_status st;
    c->mla = true;
    if ((st = get_int_or_null(what, root, "q_lora_rank", 1, CFG_MAX_SIZE, 1536, &c->q_lora_rank)) ||
        (st = get_int(what, root, "kv_lora_rank", false, 1, CFG_MAX_SIZE, 512, &c->kv_lora_rank)) ||
        (st = get_int(what, root, "qk_nope_head_dim", false, 0, 4096, 128, &c->qk_nope_dim)) ||
        (st = get_int(what, root, "qk_rope_head_dim", false, 2, 4096, 64, &c->qk_rope_dim)) ||
        (st = get_int(what, root, "v_head_dim", false, 1, 4096, 128, &c->v_head_dim)))
        return st;
    /* transformers' DeepSeek-V2 always turns interleaved pairs; V3 has the option */
    c->rope_interleave = true;
    if (c->family == MOE_FAM_DEEPSEEK_V3 && (st = get_bool(what, root, "rope_interleave", true, &c->rope_interleave)))
        return st;
    if (c->qk_rope_dim % 2)
        return moe_errorf(MOE_ERANGE, "%s: field \"qk_rope_head_dim\" = %d must be even", what, c->qk_rope_dim);
    c->head_dim = c->qk_nope_dim + c->qk_rope_dim;
    if (c->head_dim > 4096)
        return moe_errorf(MOE_ERANGE, "%s: qk_nope_head_dim + qk_rope_head_dim = %d is above 4096", what,
                          c->head_dim);
    c->n_kv_heads = c->n_heads; /* every head gets its own k and v from the shared latent */
    return MOE_OK;
}

/* quantization_config: only block-wise FP8 (DeepSeek-V3's and Qwen3's FP8 checkpoints). */
static enum moe_status parse_quantization(const char *what, json_t *root, struct moe_config *c)
{
    json_t *q = field(root, "quantization_config");
    if (!q)
        return MOE_OK;
    const char *method = json_string_value(json_object_get(q, "quant_method"));
    if (!json_is_object(q) || !method)
        return moe_errorf(MOE_EFORMAT, "%s: \"quantization_config\" must be an object with a string "
                          "\"quant_method\"", what);
    if (strcmp(method, "fp8"))
        return moe_errorf(MOE_ENOTSUP, "%s: quantization_config quant_method \"%.40s\" is not supported (only "
                          "\"fp8\" with weight_block_size; use a BF16, F16 or F32 checkpoint)", what, method);
    json_t *fmt = field(q, "fmt"); /* DeepSeek-V3 writes "e4m3", MiniMax-M2 "float8_e4m3fn" */
    const char *fs = json_string_value(fmt);
    if (fmt && (!fs || (strcmp(fs, "e4m3") && strcmp(fs, "float8_e4m3fn"))))
        return moe_errorf(MOE_ENOTSUP, "%s: quantization_config fmt must be \"e4m3\" or \"float8_e4m3fn\" "
                          "(float8_e4m3fn weights)", what);
    json_t *bs = field(q, "weight_block_size");
    if (!json_is_array(bs) || json_array_size(bs) != 2 || !json_is_integer(json_array_get(bs, 0)) ||
        !json_is_integer(json_array_get(bs, 1)))
        return moe_errorf(MOE_ENOTSUP, "%s: quantization_config needs \"weight_block_size\": [rows, columns] "
                          "(per-tensor FP8 scales are not supported)", what);
    for (int i = 0; i < 2; i++) {
        json_int_t b = json_integer_value(json_array_get(bs, (size_t)i));
        if (b < 1 || b > CFG_MAX_SIZE)
            return moe_errorf(MOE_ERANGE, "%s: quantization_config weight_block_size[%d] = %lld must be in [1, %d]",
                              what, i, (long long)b, CFG_MAX_SIZE);
        c->fp8_block[i] = (int)b;
    }
    return MOE_OK;
}

/* A string field that, when present, must be one of want[0..n). */
static enum moe_status one_of(const char *what, json_t *root, const char *key, const char *const *want, int n,
                              int *which)
{
    json_t *v = field(root, key);
    *which = 0;
    if (!v)
        return MOE_OK;
    for (int i = 0; json_is_string(v) && i < n; i++)
        if (!strcmp(json_string_value(v), want[i])) {
            *which = i;
            return MOE_OK;
        }
    return moe_errorf(MOE_ENOTSUP, "%s: field \"%s\" = \"%s\": only \"%s\"%s%s%s is supported", what, key,
                      json_is_string(v) ? json_string_value(v) : "(not a string)", want[0], n > 1 ? " or \"" : "",
                      n > 1 ? want[1] : "", n > 1 ? "\"" : "");
}

/* Which layers attend over a sliding window (c->sliding[], c->sliding_window), as transformers derives
 * it for dots1 and Qwen2/Qwen3-MoE: layer_types ("full_attention" or "sliding_attention" per layer), or,
 * without them, the layers from max_window_layers on (default 62 for dots1, 28 for Qwen); none without a
 * window (dots1: sliding_window null; Qwen: use_sliding_window false or sliding_window null, whatever
 * layer_types say, as its config class keeps no window then and its attention slides over none).  The
 * window's default is 4096. */
static enum moe_status sliding_layers(const char *what, json_t *root, struct moe_config *c)
{
    json_t *lt = field(root, "layer_types"), *x;
    size_t i;
    bool qwen = c->family == MOE_FAM_QWEN2_MOE || c->family == MOE_FAM_QWEN3_MOE, use = true;
    int win = 4096, first = qwen ? 28 : 62;
    enum moe_status st;
    bool no_window = json_is_null(json_object_get(root, "sliding_window"));
    if (qwen && ((st = get_bool(what, root, "use_sliding_window", false, &use)) || !use || no_window))
        return st;
    if ((!no_window && (st = get_int(what, root, "sliding_window", false, 1, INT_MAX, 4096, &win))) ||
        (st = get_int(what, root, "max_window_layers", false, 0, INT_MAX, first, &first)))
        return st;
    bool any = false;
    if (lt) {
        if (!json_is_array(lt) || json_array_size(lt) != (size_t)c->n_layers)
            return moe_errorf(MOE_EFORMAT, "%s: field \"layer_types\" must list one type per layer (%d)", what,
                              c->n_layers);
        json_array_foreach(lt, i, x) {
            const char *t = json_string_value(x);
            if (!t || (strcmp(t, "full_attention") && strcmp(t, "sliding_attention")))
                return moe_errorf(MOE_ENOTSUP, "%s: field \"layer_types\"[%zu] = \"%s\": only \"full_attention\" "
                                  "and \"sliding_attention\" are supported", what, i, t ? t : "(not a string)");
            any |= c->sliding[i] = !strcmp(t, "sliding_attention");
        }
    } else {
        for (int l = first; !no_window && l < c->n_layers; l++) any = c->sliding[l] = true;
    }
    if (any && no_window)
        return moe_errorf(MOE_EFORMAT, "%s: \"sliding_attention\" layers but \"sliding_window\" is null", what);
    c->sliding_window = any ? win : 0;
    return MOE_OK;
}

/* RoPE's rotated width: qk_rope_head_dim under MLA; for GLM-4.5 the first
 * int(head_dim * partial_rotary_factor) dims of each head (transformers'
 * default and YaRN tables take that width, apply_rotary_pos_emb rotates those
 * dims and passes the rest); for MiniMax-M2 its rotary_dim (transformers makes
 * that the partial factor, whatever rope_parameters says); the whole head
 * otherwise. */
static enum moe_status parse_rope_dim(const char *what, json_t *root, struct moe_config *c)
{
    double f = 1.0;
    enum moe_status st;
    if (c->mla) {
        c->rope_dim = c->qk_rope_dim;
        return MOE_OK;
    }
    if (c->family == MOE_FAM_GLM4_MOE && (st = get_pos_num(what, root, "partial_rotary_factor", 0.5, &f)))
        return st;
    if (c->family == MOE_FAM_MINIMAX_M2) { /* rotary_dim, head_dim / 2 when absent (MiniMaxM2Config) */
        if ((st = get_int(what, root, "rotary_dim", false, 1, c->head_dim, c->head_dim / 2, &c->rope_dim)))
            return st;
        if (c->rope_dim < 2 || c->rope_dim % 2)
            return moe_errorf(MOE_ERANGE, "%s: rotary_dim = %d must be even and at least 2", what, c->rope_dim);
        return MOE_OK;
    }
    if (f > 1.0)
        return moe_errorf(MOE_ERANGE, "%s: field \"partial_rotary_factor\" = %g is above 1", what, f);
    c->rope_dim = (int)(c->head_dim * f);
    if (c->rope_dim < 2 || c->rope_dim % 2)
        return moe_errorf(MOE_ERANGE, "%s: head_dim %d x partial_rotary_factor %g = %d rotated dims; they must be "
                          "even and at least 2", what, c->head_dim, f, c->rope_dim);
    return MOE_OK;
}

/* DeepSeek's routing.  V3: sigmoid scores, group-limited top-k (noaux_tc).
 * V2: softmax scores, top-k (greedy) or group-limited top-k
 * (group_limited_greedy), weights not renormalised (transformers' DeepseekV2
 * never does).  GLM-4.5 (glm4_moe) and dots.llm1 (dots1) route as V3 does, by
 * their own defaults (one group, weights x 1; GLM one shared expert, dots1 no
 * default: transformers needs n_shared_experts there), and have no topk_method
 * or scoring_func to check. */
static enum moe_status parse_deepseek_routing(const char *what, json_t *root, struct moe_config *c)
{
    static const char *const v3_method[] = { "noaux_tc" }, *const v3_score[] = { "sigmoid" };
    static const char *const v2_method[] = { "greedy", "group_limited_greedy" }, *const v2_score[] = { "softmax" };
    /* gqa: the block under grouped-query attention (GLM-4.5, dots1), not DeepSeek's own */
    bool v2 = c->family == MOE_FAM_DEEPSEEK_V2, gqa = !c->mla;
    enum moe_status st;
    int n_shared, method = 0, score;
    double scale = v2 || gqa ? 1.0 : 2.5;
    if (!gqa && ((st = one_of(what, root, "topk_method", v2 ? v2_method : v3_method, v2 ? 2 : 1, &method)) ||
                 (st = one_of(what, root, "scoring_func", v2 ? v2_score : v3_score, 1, &score))))
        return st;
    bool greedy = v2 && method == 0;
    int def_groups = greedy || gqa ? 1 : 8, def_kept = greedy || gqa ? 1 : 4;
    if ((st = get_int(what, root, "n_group", false, 1, c->n_experts, def_groups, &c->n_group)) ||
        (st = get_int(what, root, "topk_group", false, 1, c->n_group, def_kept, &c->topk_group)) ||
        /* 0: transformers builds a zero-width shared MLP, which adds nothing */
        (st = get_int_or_null(what, root, "n_shared_experts", 0, 64, v2 ? 2 : 1, &n_shared)) ||
        (c->family == MOE_FAM_DOTS1 && !field(root, "n_shared_experts") &&
         (st = moe_errorf(MOE_EFORMAT, "%s: required field \"n_shared_experts\" is missing", what))) ||
        (st = get_pos_num(what, root, "routed_scaling_factor", scale, &scale)))
        return st;
    if (greedy) /* every expert in one group, all of it kept: plain top-k */
        c->n_group = c->topk_group = 1;
    if (c->topk_group > c->n_group) /* the defaults (8 and 4) are not range-checked against each other */
        return moe_errorf(MOE_ERANGE, "%s: topk_group = %d%s is more than n_group = %d", what, c->topk_group,
                          field(root, "topk_group") ? "" : " (the default)", c->n_group);
    int per = c->n_experts / c->n_group;
    if (c->n_experts % c->n_group || per < (v2 ? 1 : 2))
        return moe_errorf(MOE_ERANGE, "%s: n_routed_experts = %d must split into n_group = %d groups of at least "
                          "%d experts", what, c->n_experts, c->n_group, v2 ? 1 : 2);
    if (c->top_k > c->topk_group * per)
        return moe_errorf(MOE_ERANGE, "%s: num_experts_per_tok = %d is more than the %d experts of topk_group = %d "
                          "groups", what, c->top_k, c->topk_group * per, c->topk_group);
    /* the weights are scaled in F32: a factor it holds as infinity or as zero (or a subnormal) is no scale */
    if (scale > FLT_MAX || scale < FLT_MIN)
        return moe_errorf(MOE_ERANGE, "%s: field \"routed_scaling_factor\" = %g is out of range [%g, %g] (the "
                          "routing weights are scaled in 32-bit floats)", what, scale, (double)FLT_MIN,
                          (double)FLT_MAX);
    c->routed_scale = (float)scale;
    c->shared_inter = n_shared * c->expert_inter;
    return MOE_OK;
}

/* The experts and which layers are MoE: num_experts / n_routed_experts (or num_local_experts),
 * num_experts_per_tok, the intermediate sizes, and the dense layers (DeepSeek's first_k_dense_replace,
 * Qwen's decoder_sparse_step and mlp_only_layers). */
static enum moe_status parse_experts(const char *what, json_t *root, struct moe_config *c)
{
    enum moe_status st;
    int inter = 0, step = 1, ne_a = -1, ne_b = -1;
    json_t *v;

    /* Experts: num_experts (Qwen/OLMoE) or num_local_experts (Mixtral, some exports). */
    const char *experts_key = moe_family_has_deepseek_moe(c->family) ? "n_routed_experts" : "num_experts";
    if ((st = get_int(what, root, experts_key, false, 1,
                      65536, -1, &ne_a)) ||
        (st = get_int(what, root, "num_local_experts", false, 1, 65536, -1, &ne_b)))
        return st;
    if (ne_a < 0 && ne_b < 0) {
        st = moe_errorf(MOE_EFORMAT, "%s: required field \"%s\" (or \"num_local_experts\") is missing", what,
                        experts_key);
        return st;
    }
    if (ne_a > 0 && ne_b > 0 && ne_a != ne_b) {
        st = moe_errorf(MOE_EFORMAT, "%s: \"%s\" = %d and \"num_local_experts\" = %d disagree", what,
                        experts_key, ne_a, ne_b);
        return st;
    }
    c->n_experts = ne_a > 0 ? ne_a : ne_b;
    if ((st = get_int(what, root, "num_experts_per_tok", true, 1, c->n_experts, 0, &c->top_k))) return st;

    /* Intermediate sizes. */
    bool inter_is_expert = c->family == MOE_FAM_MIXTRAL || c->family == MOE_FAM_OLMOE || c->family == MOE_FAM_MINIMAX_M2;
    if ((st = get_int(what, root, "intermediate_size", inter_is_expert, 1,
                      CFG_MAX_SIZE, 0, &inter)))
        return st;
    if (inter_is_expert) {
        c->expert_inter = inter;
    } else if ((st = get_int(what, root, "moe_intermediate_size", true, 1, CFG_MAX_SIZE, 0,
                             &c->expert_inter))) {
        return st;
    }

    /* Which layers are MoE (Qwen: decoder_sparse_step and mlp_only_layers). */
    for (int l = 0; l < c->n_layers; l++) c->is_moe[l] = true;
    if (moe_family_has_deepseek_moe(c->family)) {
        /* the first first_k_dense_replace layers are dense; the rest MoE */
        int dense_first, freq;
        if ((st = get_int(what, root, "first_k_dense_replace", false, 0, c->n_layers,
                          c->family == MOE_FAM_DEEPSEEK_V3 ? 3 : c->family == MOE_FAM_GLM4_MOE ? 1 : 0, /* dots1: 0 */
                          &dense_first)) ||
            (st = get_int(what, root, "moe_layer_freq", false, 1, 1, 1, &freq)))
            return st;
        for (int l = 0; l < dense_first; l++) c->is_moe[l] = false;
        if (dense_first > 0 && !inter) {
            st = moe_errorf(MOE_EFORMAT, "%s: layers 0..%d are dense (first_k_dense_replace = %d) but "
                            "\"intermediate_size\" is missing", what, dense_first - 1, dense_first);
            return st;
        }
        if (dense_first > 0) c->dense_inter = inter;
        if ((st = parse_deepseek_routing(what, root, c))) return st;
    } else if (c->family == MOE_FAM_QWEN2_MOE || c->family == MOE_FAM_QWEN3_MOE) {
        size_t i;
        json_t *x;
        if ((st = get_int(what, root, "decoder_sparse_step", false, 1, MOE_MAX_LAYERS, 1, &step))) return st;
        v = field(root, "mlp_only_layers");
        if (v && !json_is_array(v)) {
            st = moe_errorf(MOE_EFORMAT, "%s: field \"mlp_only_layers\" must be a list of layer indices", what);
            return st;
        }
        for (int l = 0; l < c->n_layers; l++) c->is_moe[l] = (l + 1) % step == 0;
        json_array_foreach(v, i, x) {
            if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= c->n_layers) {
                st = moe_errorf(MOE_ERANGE, "%s: field \"mlp_only_layers\"[%zu] must be a layer index in "
                                "[0, %d)", what, i, c->n_layers);
                return st;
            }
            c->is_moe[json_integer_value(x)] = false;
        }
        for (int l = 0; l < c->n_layers; l++) {
            if (!c->is_moe[l]) {
                if (!inter) {
                    st = moe_errorf(MOE_EFORMAT, "%s: layer %d is dense (decoder_sparse_step / "
                                    "mlp_only_layers) but \"intermediate_size\" is missing", what, l);
                    return st;
                }
                c->dense_inter = inter;
            }
        }
    }
    return MOE_OK;
}

/* Ernie4_5_MoeConfig takes num_experts and num_experts_per_tok as other names of moe_num_experts and moe_k
 * (set after them, so they win): one given without the ERNIE name, or disagreeing with it, is refused, the
 * ERNIE name the one read. */
static enum moe_status ernie_alias(const char *what, json_t *root, const char *alias, const char *key,
                                   const char *meaning, int value)
{
    json_t *a = field(root, alias);
    if (!a)
        return MOE_OK;
    if (!field(root, key))
        return moe_errorf(MOE_EFORMAT, "%s: ernie4_5_moe names its %s \"%s\", not \"%s\"", what, meaning, key,
                          alias);
    if (!json_is_integer(a) || json_integer_value(a) != value)
        return moe_errorf(MOE_EFORMAT, "%s: field \"%s\" disagrees with \"%s\" = %d (ernie4_5_moe's name for its "
                          "%s; give one of them)", what, alias, key, value, meaning);
    return MOE_OK;
}

/* ERNIE-4.5's experts (Ernie4_5_MoeConfig's names and defaults): moe_num_experts, moe_k,
 * moe_intermediate_size; moe_num_shared_experts shared experts of that size as one MLP; layers
 * moe_layer_start_index..moe_layer_end_index (-1: the last) whose index + 1 is a multiple of
 * moe_layer_interval are MoE, the others dense MLPs of intermediate_size.  Routing: softmax, top-k by
 * probability + e_score_correction_bias, weights renormalised (MOE_ROUTER_SOFTMAX_BIAS). */
static enum moe_status parse_ernie_experts(const char *what, json_t *root, struct moe_config *c)
{
    enum moe_status st;
    int n_shared, first, last, every;
    bool bias;
    double norm_min;
    if ((st = get_int(what, root, "moe_num_experts", false, 1, 65536, 64, &c->n_experts)) ||
        (st = ernie_alias(what, root, "num_experts", "moe_num_experts", "routed experts", c->n_experts)) ||
        (st = get_int(what, root, "moe_k", false, 1, c->n_experts, c->n_experts < 6 ? c->n_experts : 6, &c->top_k)) ||
        (st = ernie_alias(what, root, "num_experts_per_tok", "moe_k", "experts per token", c->top_k)) ||
        (st = get_int(what, root, "moe_intermediate_size", false, 1, CFG_MAX_SIZE, 1536, &c->expert_inter)) ||
        (st = get_int(what, root, "intermediate_size", false, 1, CFG_MAX_SIZE, 12288, &c->dense_inter)) ||
        (st = get_int(what, root, "moe_num_shared_experts", false, 0, 64, 2, &n_shared)) ||
        (st = get_int(what, root, "moe_layer_start_index", false, 0, c->n_layers - 1, 1, &first)) ||
        (st = get_int(what, root, "moe_layer_end_index", false, -1, c->n_layers - 1, -1, &last)) ||
        (st = get_int(what, root, "moe_layer_interval", false, 1, MOE_MAX_LAYERS, 1, &every)) ||
        (st = get_pos_num(what, root, "moe_norm_min", MOE_ERNIE_NORM_MIN, &norm_min)) ||
        (st = get_bool(what, root, "use_bias", false, &bias)))
        return st;
    if ((float)norm_min != MOE_ERNIE_NORM_MIN)
        return moe_errorf(MOE_ENOTSUP, "%s: field \"moe_norm_min\" = %g: only 1e-12 (transformers' default) is "
                          "supported", what, norm_min);
    if (bias)
        return moe_errorf(MOE_ENOTSUP, "%s: field \"use_bias\" = true (biases on every linear layer) is not "
                          "supported for ernie4_5_moe", what);
    if (last < 0) last = c->n_layers - 1;
    bool any = false;
    for (int l = 0; l < c->n_layers; l++) any |= c->is_moe[l] = (l + 1) % every == 0 && l >= first && l <= last;
    if (!any)
        return moe_errorf(MOE_ERANGE, "%s: no MoE layer: moe_layer_start_index %d, moe_layer_end_index %d and "
                          "moe_layer_interval %d leave every one of the %d layers dense", what, first, last, every,
                          c->n_layers);
    c->shared_inter = n_shared * c->expert_inter;
    c->norm_topk_prob = true;
    c->n_group = c->topk_group = 1;
    c->routed_scale = 1.0f;
    c->rope_interleave = true; /* apply_rotary_pos_emb turns adjacent pairs */
    return MOE_OK;
}

/* The router's family settings: its kind and whether its weights are renormalised (Mixtral's and
 * MiniMax-M2's always, ERNIE's by parse_ernie_experts, DeepSeek-V2's never). */
static enum moe_status parse_routing(const char *what, json_t *root, const struct family *fam, struct moe_config *c)
{
    enum moe_status st;
    c->router = fam->router;
    if (c->family == MOE_FAM_MINIMAX_M2) {
        /* sigmoid scores, top-k by score + e_score_correction_bias, weights renormalised, no groups, no
         * shared expert, no scaling: transformers' MiniMaxM2 reads none of these from config.json */
        c->norm_topk_prob = true;
        c->n_group = c->topk_group = 1;
        c->routed_scale = 1.0f;
    } else if (c->family == MOE_FAM_MIXTRAL) {
        c->norm_topk_prob = true; /* softmax over the k chosen logits already sums to 1 */
    } else if (c->family == MOE_FAM_ERNIE4_5_MOE) {
        /* always renormalised (parse_ernie_experts) */
    } else if ((st = get_bool(what, root, "norm_topk_prob",
                              c->family == MOE_FAM_DEEPSEEK_V3 || c->family == MOE_FAM_GLM4_MOE, &c->norm_topk_prob))) {
        return st;
    } else if (c->family == MOE_FAM_DEEPSEEK_V2 && c->norm_topk_prob) {
        return moe_errorf(MOE_ENOTSUP, "%s: field \"norm_topk_prob\" = true is not supported for deepseek_v2 "
                          "(transformers does not renormalise its weights)", what);
    }
    return MOE_OK;
}

/* Attention's family settings: q/k norm, q/k/v biases (and Qwen2-MoE's gated shared expert, read
 * beside them), clip_qkv refused, sliding-window layers. */
static enum moe_status parse_attention(const char *what, json_t *root, const struct family *fam, struct moe_config *c)
{
    enum moe_status st;
    bool b = false; /* (set by get_bool whenever it returns MOE_OK) */
    c->qk_norm = fam->qk_norm;
    if (c->family == MOE_FAM_QWEN2_MOE) {
        /* Older transformers hard-wired q/k/v biases; newer configs spell it qkv_bias. */
        bool ab = true;
        if ((st = get_bool(what, root, "attention_bias", true, &ab)) ||
            (st = get_bool(what, root, "qkv_bias", ab, &c->attn_qkv_bias)))
            return st;
        if ((st = get_int(what, root, "shared_expert_intermediate_size", true, 0, CFG_MAX_SIZE, 0,
                          &c->shared_inter)))
            return st;
        c->shared_gate = c->shared_inter > 0;
    } else if (c->family == MOE_FAM_GLM4_MOE) {
        /* biases on q, k and v (never on o); RMSNorm over each head of q and k */
        if ((st = get_bool(what, root, "attention_bias", false, &c->attn_qkv_bias)) ||
            (st = get_bool(what, root, "use_qk_norm", false, &b)))
            return st;
        c->qk_norm = b ? MOE_QK_NORM_HEAD : MOE_QK_NORM_NONE;
    } else if (c->family != MOE_FAM_MIXTRAL) {
        if ((st = get_bool(what, root, "attention_bias", false, &b))) return st;
        if (b)
            return moe_errorf(MOE_ENOTSUP, "%s: field \"attention_bias\" = true (biases on q/k/v/o) is not "
                              "supported for %s", what, c->model_type);
    }
    if (c->family == MOE_FAM_OLMOE && field(root, "clip_qkv"))
        return moe_errorf(MOE_ENOTSUP, "%s: field \"clip_qkv\" must be null (q/k/v clipping is not supported)",
                          what);
    if (c->family == MOE_FAM_DOTS1 || c->family == MOE_FAM_QWEN2_MOE || c->family == MOE_FAM_QWEN3_MOE) {
        if ((st = sliding_layers(what, root, c))) return st;
    } else if ((st = get_bool(what, root, "use_sliding_window", false, &b))) {
        return st;
    } else if (b) {
        return moe_errorf(MOE_ENOTSUP, "%s: field \"use_sliding_window\" = true is not supported for %s", what,
                          c->model_type);
    }
    if (c->family == MOE_FAM_MIXTRAL && field(root, "sliding_window")) { /* every layer slides */
        if ((st = get_int(what, root, "sliding_window", true, 1, INT_MAX, 0, &c->sliding_window))) return st;
        for (int l = 0; l < c->n_layers; l++) c->sliding[l] = true;
    }
    return MOE_OK;
}

enum moe_status moe_config_parse(const char *json, size_t len, const char *what, struct moe_config *out)
{
    struct moe_config c;
    json_error_t jerr;
    json_t *root, *v;
    enum moe_status st;
    double d = 0;

    memset(&c, 0, sizeof(c));
    what = what ? what : "config.json";
    root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return moe_errorf(MOE_EFORMAT, "%s: not valid JSON: %s (line %d, column %d)", what, moe_json_error_text(&jerr),
                          jerr.line, jerr.column);
    if (!json_is_object(root)) {
        st = moe_errorf(MOE_EFORMAT, "%s: top level must be a JSON object", what);
        goto out;
    }
    const struct family *fam = NULL;
    if ((st = detect_family(what, root, &c, &fam)) != MOE_OK) goto out;
    if ((st = parse_quantization(what, root, &c)) != MOE_OK) goto out;

    if ((st = get_int(what, root, "num_hidden_layers", true, 1, MOE_MAX_LAYERS, 0, &c.n_layers)) ||
        (st = get_int(what, root, "hidden_size", true, 1, CFG_MAX_SIZE, 0, &c.hidden)) ||
        (st = get_int(what, root, "num_attention_heads", true, 1, 4096, 0, &c.n_heads)) ||
        /* absent: the family's default; null: num_attention_heads, as the config classes read None */
        (st = get_int(what, root, "num_key_value_heads", false, 1, 4096,
                      fam->n_kv_heads && !json_object_get(root, "num_key_value_heads") ? fam->n_kv_heads : c.n_heads,
                      &c.n_kv_heads)) ||
        (st = get_int(what, root, "vocab_size", true, 1, CFG_MAX_SIZE, 0, &c.vocab)) ||
        (st = get_int(what, root, "max_position_embeddings", false, 1, INT_MAX, fam->max_pos, &c.max_pos)))
        goto out;
    if (moe_family_is_deepseek(c.family)) {
        if ((st = parse_mla(what, root, &c))) goto out;
    } else if ((st = parse_head_dim(what, root, &c))) {
        goto out;
    }
    st = c.family == MOE_FAM_ERNIE4_5_MOE ? parse_ernie_experts(what, root, &c) : parse_experts(what, root, &c);
    if (st) goto out;

    if ((st = parse_routing(what, root, fam, &c)) || (st = parse_attention(what, root, fam, &c))) goto out;
    v = field(root, "hidden_act");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "silu"))) {
        st = moe_errorf(MOE_ENOTSUP, "%s: field \"hidden_act\" = \"%s\": only \"silu\" is supported", what,
                        json_is_string(v) ? json_string_value(v) : "(not a string)");
        goto out;
    }

    if ((st = get_bool(what, root, "tie_word_embeddings", fam->tie_embeddings, &c.tie_embeddings)) ||
        (st = get_pos_num(what, root, "rms_norm_eps", fam->rms_eps, &d)))
        goto out;
    if (d < 1e-30 || d >= 1.0) {
        st = moe_errorf(MOE_ERANGE, "%s: field \"rms_norm_eps\" = %g is out of range [1e-30, 1)", what, d);
        goto out;
    }
    c.rms_eps = (float)d;
    if ((st = get_rope(what, root, fam->rope_theta, &d, &c)))
        goto out;
    if (d < 1.0 || d > 1e12) {
        st = moe_errorf(MOE_ERANGE, "%s: field \"rope_theta\" = %g is out of range [1, 1e12]", what, d);
        goto out;
    }
    c.rope_theta = (float)d;
    if ((st = parse_rope_dim(what, root, &c))) goto out;
    {
        int bos[MOE_MAX_EOS], nb = 0;
        if ((st = get_token_ids_or(what, root, "bos_token_id", fam->bos, bos, &nb)) ||
            (st = get_token_ids_or(what, root, "eos_token_id", fam->eos, c.eos_ids, &c.n_eos)))
            goto out;
        c.bos_id = nb ? bos[0] : -1;
        c.eos_id = c.n_eos ? c.eos_ids[0] : -1;
    }

    *out = c;
out:
    json_decref(root);
    return st;
}

/* generation_config.json, when the model directory has one: its eos_token_id
 * values (what transformers' generate stops on) are added to config.json's. */
static enum moe_status merge_generation_config(const char *model_dir, struct moe_config *c)
{
    char path[4200];
    char *buf;
    size_t len;
    json_error_t jerr;
    json_t *root;
    enum moe_status st;
    snprintf(path, sizeof(path), "%s/generation_config.json", model_dir);
    if ((st = moe_read_file(path, &buf, &len, 16u << 20)) != MOE_OK) {
        if (st == MOE_ENOENT) {
            moe_error_clear();
            return MOE_OK;
        }
        return st;
    }
    root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    free(buf);
    if (!root)
        return moe_errorf(MOE_EFORMAT, "%s: not valid JSON: %s (line %d, column %d)", path, moe_json_error_text(&jerr),
                          jerr.line, jerr.column);
    if (!json_is_object(root))
        st = moe_errorf(MOE_EFORMAT, "%s: top level must be a JSON object", path);
    else
        st = get_token_ids(path, root, "eos_token_id", c->eos_ids, MOE_MAX_EOS, &c->n_eos,
                           "config.json's");
    if (st == MOE_OK) c->eos_id = c->n_eos ? c->eos_ids[0] : -1;
    json_decref(root);
    return st;
}

enum moe_status moe_config_load(const char *model_dir, struct moe_config *out)
{
    char path[4200];
    char *buf;
    size_t len;
    enum moe_status st;
    struct moe_config c;
    snprintf(path, sizeof(path), "%s/config.json", model_dir);
    if ((st = moe_read_file(path, &buf, &len, 16u << 20)) != MOE_OK) {
        if (st == MOE_ENOENT)
            return moe_errorf(st, "%s: no config.json (is this a Hugging Face model directory?)", model_dir);
        return st;
    }
    st = moe_config_parse(buf, len, path, &c);
    free(buf);
    if (st == MOE_OK && (st = merge_generation_config(model_dir, &c)) == MOE_OK) *out = c;
    return st;
}

/* ---- RoPE frequencies ------------------------------------------------------ */

/* YaRN's attention factor (transformers' get_mscale). */
static double yarn_mscale(double scale, double mscale)
{
    return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

static double yarn_factor(const struct moe_config *c)
{
    return c->yarn.factor > 0 ? c->yarn.factor : (double)c->max_pos / c->yarn.orig_max_pos;
}

/* transformers' find_correction_dim: the dimension that turns num_rot times over max_pos positions. */
static double yarn_corr_dim(double num_rot, int dim, double base, int max_pos)
{
    return dim * log(max_pos / (num_rot * 2 * M_PI)) / (2 * log(base));
}

void moe_config_rope(const struct moe_config *c, int dim, float *inv_freq, float *cs_scale)
{
    /* the default table: 1 / theta^(2i/dim) in F32, as transformers (and the backends) compute it */
    for (int i = 0; i < dim / 2; i++) inv_freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)dim);
    *cs_scale = 1.0f;
    if (c->rope_kind != MOE_ROPE_YARN) return;
    const struct moe_yarn *y = &c->yarn;
    double factor = yarn_factor(c), base = c->rope_theta;
    double low = yarn_corr_dim(y->beta_fast, dim, base, y->orig_max_pos);
    double high = yarn_corr_dim(y->beta_slow, dim, base, y->orig_max_pos);
    if (y->truncate) {
        low = floor(low);
        high = ceil(high);
    }
    low = low > 0 ? low : 0;
    high = high < dim - 1 ? high : dim - 1;
    if (low == high) high += 0.001; /* as transformers avoids the division by zero */
    for (int i = 0; i < dim / 2; i++) {
        float pos_freq = powf(c->rope_theta, (float)(2 * i) / (float)dim);
        float extrapolation = 1.0f / pos_freq, interpolation = 1.0f / ((float)factor * pos_freq);
        float ramp = ((float)i - (float)low) / (float)(high - low);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float extra = 1.0f - ramp;
        inv_freq[i] = interpolation * (1.0f - extra) + extrapolation * extra;
    }
    if (y->attention_factor > 0)
        *cs_scale = (float)y->attention_factor;
    else if (y->mscale > 0 && y->mscale_all_dim > 0)
        *cs_scale = (float)(yarn_mscale(factor, y->mscale) / yarn_mscale(factor, y->mscale_all_dim));
    else
        *cs_scale = (float)yarn_mscale(factor, 1);
}

float moe_config_attn_scale(const struct moe_config *c)
{
    float s = 1.0f / sqrtf((float)c->head_dim);
    if (c->mla && c->rope_kind == MOE_ROPE_YARN && c->yarn.mscale_all_dim > 0) {
        /* DeepseekV3Attention: softmax scale times mscale^2 */
        double m = yarn_mscale(yarn_factor(c), c->yarn.mscale_all_dim);
        s = s * (float)m * (float)m;
    }
    return s;
}
