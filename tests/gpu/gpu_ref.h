/* Plain C reference twins of the CUDA ops (same contracts as
 * kernels/cuda/cuda_ops.h) and the comparison helpers the GPU tests share. */
#ifndef MOE_GPU_REF_H
#define MOE_GPU_REF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../kernels/cuda/cuda_ops.h"

/* ---- random inputs ---- */
struct g_rng { uint64_t s; };
uint64_t g_next(struct g_rng *r);
float g_uniform(struct g_rng *r, float lo, float hi);
/* Fill with N(0, scale)-ish values; adversarial = true mixes in huge, tiny,
 * zero and negative-zero values (finite). */
void g_fill(struct g_rng *r, float *x, size_t n, float scale, bool adversarial);
void g_fill_bf16(struct g_rng *r, uint16_t *x, size_t n, float scale);

/* ---- comparison ---- */
/* max |a-b| / max(max |ref|, floor) over finite pairs; *nonfinite_mismatch
 * counts positions where NaN-ness or infinities (with sign) differ. */
double g_norm_err(const float *got, const float *ref, size_t n, float floor, size_t *nonfinite_mismatch);

/* ---- device buffers with guard bytes ---- */
#define G_GUARD 256           /* bytes after each output */
#define G_GUARD_BYTE 0xA5
struct g_buf { void *d; size_t bytes; };
int g_buf_alloc(struct moe_cuda_ctx *c, struct g_buf *b, size_t bytes);      /* fills with the guard byte */
int g_buf_upload(struct moe_cuda_ctx *c, struct g_buf *b, const void *h, size_t bytes);
/* Download b->bytes into h and check the guard bytes after them: 0 ok, -1 fail. */
int g_buf_download(struct moe_cuda_ctx *c, const struct g_buf *b, void *h, const char *what);
void g_buf_free(struct moe_cuda_ctx *c, struct g_buf *b);

/* ---- reference ops ---- */
float g_bf16_round(float x);
void ref_embed_bf16(const uint16_t *table, int vocab, int hidden, const int *ids, int n, float *out);
void ref_rmsnorm(const float *x, const float *w, float *y, int rows, int dim, float eps);
void ref_rope(float *x, const int *pos, int n, int n_heads, int head_dim, int rot_dim, float theta);
void ref_attention(const float *q, const float *kc, const float *vc, const int *seq, const int *pos, int n,
                   int nh, int nkv, int hd, int max_ctx, int window, float scale, float *out);
void ref_router(const float *logits, int n, int E, int k, bool softmax_first, bool norm_topk, int *ids,
                float *w);
void ref_combine(const float *y, const int *inv, const float *w, int n, int k, int dim, bool accumulate,
                 float *out);
void ref_swiglu(const float *g, const float *u, float *o, size_t n);
void ref_sigmoid_scale_add(const float *s, const float *y, int n, int dim, float *out);
/* y [n, out] = x W^T, accumulated in double; x rounded to BF16 first when
 * round_x (the cuBLAS path with BF16 weights). */
void ref_linear(const float *x, const void *w, enum moe_dtype wdt, int n, int in, int out, bool accumulate,
                bool round_x, float *y);
/* expert FFN for rows of one expert; round_x: the cuBLAS path's rounding
 * points (BF16 x and h), else F32 throughout (invariant mode). */
void ref_expert_rows(const float *x, int rows, const void *gate, const void *up, const void *down,
                     enum moe_dtype wdt, int hidden, int inter, bool round_x, float *y);
int ref_argmax(const float *x, int n);

#endif
