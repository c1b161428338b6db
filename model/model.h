/* A loaded checkpoint: config + (sharded) safetensors, every tensor checked
 * for presence, dtype and shape against what config.json implies.
 *
 * Tensors stay in the mmap'd files; views point into them.  The engine converts
 * what it needs; expert weights are reached only through the expert provider
 * (offload/provider.h), which reads them from here or from a packed store. */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include "config.h"
#include "safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A 1-D or 2-D weight.  2-D weights are [rows, cols] row-major as in HF
 * (nn.Linear weight [out_features, in_features]). */
struct moe_wview {
    enum moe_dtype dtype;
    int64_t rows, cols;        /* 1-D: rows = 1, cols = n */
    const void *data;          /* NULL when the tensor is absent (optional weight) */
    uint64_t nbytes;
    /* An FP8 expert matrix (dtype F8_E4M3, left as the checkpoint stores it, so that experts
     * served from a packed store are never widened in RAM): its block factors, [ceil(rows /
     * block_rows), ceil(cols / block_cols)] of scale_dtype.  Records hold it as FP8 with F32 factors
     * (moe_wview_stored_*), kernels as its BF16 values; NULL for every other view. */
    const void *scale;
    enum moe_dtype scale_dtype;
    int block_rows, block_cols;
};

struct moe_layer_w {
    struct moe_wview attn_norm, ffn_norm;            /* [hidden] */
    struct moe_wview wq, wk, wv, wo;                 /* [nh*hd, hidden], [nkv*hd, hidden] x2, [hidden, nh*hd] */
    struct moe_wview bq, bk, bv;                     /* biases when attn_qkv_bias */
    struct moe_wview q_norm, k_norm;                 /* [hd] (HEAD) or [nh*hd]/[nkv*hd] (FULL) */
    struct moe_wview router;                         /* [n_experts, hidden] */
    struct moe_wview sh_gate, sh_up, sh_down;        /* shared expert, when shared_inter > 0 */
    struct moe_wview sh_scale;                       /* [1, hidden] shared_expert_gate */
    struct moe_wview d_gate, d_up, d_down;           /* dense MLP on non-MoE layers */
    /* MLA (DeepSeek-V3): wq is q_b_proj [nh*hd, q_lora_rank] (q_proj [nh*hd, hidden] without
     * the q bottleneck), wk/wv are unused, wo is [hidden, nh*v_head_dim] */
    struct moe_wview q_a, q_a_norm;                  /* [q_lora_rank, hidden], [q_lora_rank] */
    struct moe_wview kv_a, kv_a_norm;                /* [kv_lora_rank + qk_rope, hidden], [kv_lora_rank] */
    struct moe_wview kv_b;                           /* [nh*(qk_nope + v_head_dim), kv_lora_rank] */
    struct moe_wview router_bias;                    /* [n_experts] e_score_correction_bias */
};

/* One routed expert: SwiGLU down(silu(gate x) * up x). */
struct moe_expert_w {
    struct moe_wview gate, up;  /* [inter, hidden] */
    struct moe_wview down;      /* [hidden, inter] */
};

struct moe_model {
    struct moe_config cfg;
    char dir[4096];
    struct moe_wview embed;      /* [vocab, hidden] */
    struct moe_wview final_norm; /* [hidden] */
    struct moe_wview lm_head;    /* [vocab, hidden] (embed when tied) */
    struct moe_layer_w *layers;  /* [n_layers] */
    struct moe_expert_w *experts;/* [n_layers * n_experts]; zeroed views on dense layers */
    /* private */
    struct moe_st_file **shards;
    int n_shards;
    struct moe_model_priv *priv; /* name index over all shards */
};

/* Open model_dir: config.json, model.safetensors or model.safetensors.index.json
 * + shards.  Refuses pickle checkpoints (*.bin, *.pt) with an explanation.
 * Returns NULL with moe_last_error() set. */
struct moe_model *moe_model_open(const char *model_dir);
void moe_model_close(struct moe_model *m);
/* MOE_OK while every checkpoint file read through its mapping was read whole; else MOE_EIO naming the
 * first shard that shrank or failed to read since it was opened (moe_st_check): the weights read from it
 * are zeros from there on, so nothing computed from them is the model's. */
enum moe_status moe_model_check_files(const struct moe_model *m);

/* The name a model directory is recorded under (the packed store's header, moeflow trace,
 * train-predictor) and compared by: the last component of the path it resolves to ("." and "m/"
 * name that directory), of the path as given when it does not resolve; "" for "".  Always valid
 * UTF-8, as the files that record it hold JSON text: a byte that is not becomes U+FFFD, and a name
 * longer than cap - 1 bytes is cut at the end of a character. */
void moe_model_dir_name(const char *dir, char *out, size_t cap);

static inline const struct moe_expert_w *moe_model_expert(const struct moe_model *m, int layer, int e)
{
    return &m->experts[(size_t)layer * (size_t)m->cfg.n_experts + (size_t)e];
}

/* Bytes of one expert's three matrices in their stored dtype. */
uint64_t moe_model_expert_bytes(const struct moe_model *m);
/* Bytes of every weight but the routed experts (embeddings, attention, norms, routers, dense and shared
 * MLPs, lm_head unless tied) in their stored dtype: what the engine keeps wherever it runs. */
uint64_t moe_model_dense_bytes(const struct moe_model *m);

/* A view's dtype and bytes as expert records (packed store, host tier) hold it: its own, or for an
 * FP8 matrix with block factors F8_E4M3 in the FP8 record form: its rows x cols codes, then its
 * ceil(rows / block_rows) x ceil(cols / block_cols) block factors as F32 (little-endian, not
 * aligned), half the bytes of its BF16 values. */
enum moe_dtype moe_wview_stored_dtype(const struct moe_wview *w);
uint64_t moe_wview_stored_bytes(const struct moe_wview *w);
/* The view's elements in their stored form (moe_wview_stored_bytes bytes at dst). */
void moe_wview_copy_stored(const struct moe_wview *w, void *dst);
/* Bytes of an FP8 record of a [rows, cols] matrix with blocks of br x bc. */
uint64_t moe_fp8_record_bytes(int64_t rows, int64_t cols, int br, int bc);
/* The values an FP8 record stands for, as the kernels take them: code value x block factor in F32
 * (where that is NaN, by fp8.h's rule), rounded to BF16 (DeepSeek's FP8-to-BF16 conversion), into
 * out; or, when out is NULL, those BF16 values as F32 into fo. */
void moe_fp8_record_decode(const void *rec, int64_t rows, int64_t cols, int br, int bc, uint16_t *out, float *fo);
/* The same for an FP8 matrix with block factors as the checkpoint holds it (w->scale set). */
void moe_wview_fp8_to_bf16(const struct moe_wview *w, uint16_t *dst);

/* Layer l's routed experts, read in place from the checkpoint's mapping, once copied elsewhere: the
 * pages wholly within them unmapped from this process and marked cold in the page cache (MADV_COLD,
 * MADV_DONTNEED), so that memory pressure reclaims them first while a process that reads the file soon
 * still finds them cached.  Read again, they map back in. */
void moe_model_release_experts(const struct moe_model *m, int layer);

/* Find a tensor in any shard by its checkpoint name (NULL if absent). */
const struct moe_st_tensor *moe_model_tensor(const struct moe_model *m, const char *name);

/* Convert the rows*cols elements of a view to f32 (BF16, F16, F32, an FP8 matrix with block factors
 * as its BF16 values; also F64, integer and bare FP8 dtypes, for reference tensors).  out holds
 * rows*cols floats. */
void moe_wview_to_f32(const struct moe_wview *w, float *out);

/* View of any checkpoint tensor: cols = last dimension, rows = product of the
 * others (0-D: 1 x 1).  A zeroed view for NULL. */
struct moe_wview moe_wview_from_tensor(const struct moe_st_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
