/* Routing traces (JSON Lines), written by `moeflow trace`, read by `moeflow sim`
 * and the predictor trainer.  Format: docs/trace-format.md.
 *   line 1: {"format":"moeflow-trace","version":1,"model":NAME,"layers":L,
 *            "experts":E,"top_k":K,"moe_layers":[...]}   (+ optional "expert_bytes")
 *   then per token: {"seq":S,"pos":P,"token":ID,"experts":[[e1..eK], ...per MoE layer]}
 *            (+ optional "weights" of the same shape) */
#ifndef MOE_TRACE_H
#define MOE_TRACE_H

#include "../common/moe.h"
#include "../model/config.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_TRACE_FORMAT "moeflow-trace"
#define MOE_TRACE_VERSION 1
#define MOE_TRACE_MAX_EXPERTS 65536 /* experts per layer a trace may declare */
#define MOE_TRACE_MAX_K 256         /* top_k a trace may declare */
#define MOE_TRACE_MAX_EXPERT_BYTES (1ull << 40) /* bytes of one expert (1 TiB) a trace header or
                                                   moeflow sim --expert-bytes may give */

struct moe_trace_info {
    char model[256];               /* model name (directory base name) */
    int layers;                    /* decoder layers */
    int experts;                   /* routed experts per MoE layer */
    int top_k;                     /* experts per token per MoE layer */
    int n_moe;                     /* MoE layers */
    int moe_layers[MOE_MAX_LAYERS];/* [n_moe] their decoder-layer indices, ascending */
    uint64_t expert_bytes;         /* bytes of one expert as stored, 1..MOE_TRACE_MAX_EXPERT_BYTES;
                                      0 = unknown (absent from the header) */
};

struct moe_trace {
    struct moe_trace_info info;
    size_t n_tokens;
    int *seq, *pos, *token;        /* [n_tokens]; seq 0, 1, ... and pos 0, 1, ... within a seq */
    int *experts;                  /* [n_tokens][n_moe][top_k], descending routing weight */
    float *weights;                /* same shape, or NULL when the trace has none */
};

/* Read a whole trace; errors name the file, the line and the field. */
enum moe_status moe_trace_load(const char *path, struct moe_trace **out);
/* The same from memory (len bytes; `what` names it in errors). */
enum moe_status moe_trace_parse(const char *buf, size_t len, const char *what, struct moe_trace **out);
void moe_trace_free(struct moe_trace *t);
/* Expert list of token i at MoE layer index li (0..n_moe-1): top_k ids. */
static inline const int *moe_trace_experts(const struct moe_trace *t, size_t i, int li)
{
    return t->experts + (i * (size_t)t->info.n_moe + (size_t)li) * (size_t)t->info.top_k;
}
/* The experts of token i at MoE layer index li in access order: ascending
 * expert id, the order in which the engine acquires a layer's experts. */
void moe_trace_layer_order(const struct moe_trace *t, size_t i, int li, int *out /* [top_k] */);
/* Every demand access in replay order (tokens in order, MoE layers in order,
 * experts by moe_trace_layer_order) as cache keys layer * experts + expert.  *keys malloc'd. */
enum moe_status moe_trace_keys(const struct moe_trace *t, int **keys, size_t *n);

/* Whether a trace was recorded with a model of c's layer layout: as many decoder layers, and its MoE
 * layers at the same indices (the counts of experts and top_k are the caller's to compare). */
bool moe_trace_layers_match(const struct moe_trace_info *in, const struct moe_config *c);
/* Ascending layer indices as ranges ("0-2,5,7-9") into buf, cut short with "..." to fit cap. */
void moe_trace_layers_str(const int *layers, int n, char *buf, size_t cap);

/* The writer writes a new PATH.tmp.* file and renames it to PATH on a successful close, so
 * a failed or interrupted run never leaves a partial trace that reads as a
 * whole one (an existing PATH stays as it was). */
struct moe_trace_writer;
struct moe_trace_writer *moe_trace_writer_open(const char *path, const struct moe_trace_info *info);
/* experts: [n_moe][top_k]; weights: same or NULL.  seq and pos must follow the
 * format's order (seq 0, 1, ...; pos 0, 1, ... within a seq).  A weight that
 * is NaN or infinite is MOE_ERANGE and nothing of the token is written. */
enum moe_status moe_trace_writer_token(struct moe_trace_writer *w, int seq, int pos, int token,
                                       const int *experts, const float *weights);
/* Flush, close and rename PATH.tmp.* to PATH; a write error (disk full) or a
 * failed rename is MOE_EIO, and PATH.tmp.* is removed.  Frees w either way. */
enum moe_status moe_trace_writer_close(struct moe_trace_writer *w);
/* Give up: close and remove PATH.tmp.*, leave PATH as it was, free w (NULL ok). */
void moe_trace_writer_abort(struct moe_trace_writer *w);

#ifdef __cplusplus
}
#endif
#endif
