/* The batched forward pass over a loaded model, with a paged-free per-sequence
 * KV cache.  One call computes any mix of prefill chunks and single-token
 * decode steps of several sequences: token i belongs to sequence seq[i] at
 * position pos[i]; positions of one sequence in a batch are consecutive and
 * continue that sequence's cache.
 *
 * Experts are reached only through the expert provider; routing and hidden
 * states can be observed through hooks (traces, predictors, parity tests). */
#ifndef MOE_ENGINE_H
#define MOE_ENGINE_H

#include "../common/moe.h"
#include "../model/model.h"
#include "../offload/provider.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_engine;
struct moe_backend; /* kernels/backend.h */

/* Observation hooks, all optional, called synchronously inside forward(). */
struct moe_engine_hooks {
    void *ud;
    /* j = 0: embeddings; 1..L-1: output of decoder layer j-1; L: after final norm. h: [n, hidden] */
    void (*on_hidden)(void *ud, int j, int n, const float *h);
    /* MoE layer routed. logits [n, E] (pre-softmax), ids/weights [n, k] in descending weight. */
    void (*on_route)(void *ud, int layer, int n, const float *logits, const int *ids,
                     const float *weights);
    /* Input of layer's MoE block (after post-attention norm), [n, hidden], before
     * the router runs: predictors (pre-gating) issue prefetches from here. */
    void (*on_moe_input)(void *ud, int layer, int n, const float *x);
    /* on_hidden only for j = L (after the final norm): on a GPU backend each
     * hidden state reported is a copy to the host and a synchronisation. */
    bool hidden_final_only;
};

struct moe_engine_params {
    int max_seqs;                 /* sequence slots (KV caches) (0 = 1) */
    int max_ctx;                  /* tokens per sequence; <= cfg.max_pos (0 = cfg.max_pos) */
    int max_batch_tokens;         /* tokens per forward() call (0 = 512) */
    int n_threads;                /* the CPU backend's worker threads (0 = 1) */
    struct moe_provider *provider;/* NULL: the engine creates and owns a resident provider */
    struct moe_engine_hooks hooks;
    /* Compute backend; NULL: the engine creates and owns the CPU backend
     * (n_threads workers).  The provider's expert pointers must be in this
     * backend's memory. */
    struct moe_backend *backend;
    bool cpu_blas;                /* CPU backend GEMMs via OpenBLAS: faster on some machines, but a
                                     token's result then depends on its batch (not batch-invariant) */
    enum moe_dtype kv_dtype;      /* KV cache elements: MOE_DT_F32 (the default, 0) or MOE_DT_BF16 (half the
                                     memory; keys and values rounded to BF16 when stored) */
};

struct moe_engine *moe_engine_create(const struct moe_model *m, const struct moe_engine_params *p);
/* Bytes of KV cache one token of one sequence takes over all layers, in cache elements of kv_dtype:
 * its key and value of every KV head, or under MLA the one latent row. */
size_t moe_engine_kv_bytes_per_token(const struct moe_config *c, enum moe_dtype kv_dtype);
/* "f32" or "bf16" (any case) as a KV cache dtype; false for anything else. */
bool moe_engine_kv_dtype_parse(const char *s, enum moe_dtype *out);
void moe_engine_destroy(struct moe_engine *e);
const struct moe_model *moe_engine_model(const struct moe_engine *e);
/* Replace the hooks (NULL clears them). */
void moe_engine_set_hooks(struct moe_engine *e, const struct moe_engine_hooks *h);
struct moe_backend *moe_engine_backend(const struct moe_engine *e);
struct moe_provider *moe_engine_provider(const struct moe_engine *e);
int moe_engine_max_ctx(const struct moe_engine *e);   /* tokens per sequence */
int moe_engine_max_batch(const struct moe_engine *e); /* tokens per forward() */
int moe_engine_max_seqs(const struct moe_engine *e);  /* sequence slots */
/* The element type the engine's weight matrices are held in (the dense ones, and the experts when all are
 * resident): MOE_DT_BF16, or MOE_DT_F32 where the backend takes F32 (the CPU backend with cpu_blas) or the
 * checkpoint's matrices are not all BF16 on a backend that keeps weights exact.  Bytes read per weight. */
enum moe_dtype moe_engine_weight_dtype(const struct moe_engine *e);

/* Claim a free sequence slot (empty cache): slot id >= 0, or -1 when all are in use. */
int moe_engine_seq_alloc(struct moe_engine *e);
/* Free a sequence's slot.  Its cache stays where it is until the slot is claimed again. */
void moe_engine_seq_free(struct moe_engine *e, int seq);
/* Claim free slot seq keeping the first `keep` tokens its previous sequence cached (0 = empty), so a
 * sequence that begins with the same tokens at the same positions computes only the rest: seq, or
 * -1 when seq is in use, out of range, or held fewer than keep tokens. */
int moe_engine_seq_claim(struct moe_engine *e, int seq, int keep);
/* Copy the first n tokens of sequence src's cache into sequence dst, which must be allocated and
 * empty (a sequence that begins as src does then computes only the rest). */
enum moe_status moe_engine_seq_fork(struct moe_engine *e, int dst, int src, int n);
/* Tokens currently cached for seq. */
int moe_engine_seq_len(const struct moe_engine *e, int seq);
/* KV occupancy now: sequence slots in use and tokens cached over them (either
 * may be NULL).  Safe to call from another thread while the engine runs (e.g.
 * a metrics endpoint); the value is then a momentary snapshot. */
void moe_engine_kv_usage(const struct moe_engine *e, int *seqs_used, int64_t *tokens_cached);

struct moe_batch {
    int n;              /* tokens */
    const int *tokens;  /* [n] */
    const int *seq;     /* [n] slot ids */
    const int *pos;     /* [n] position of each token in its sequence */
    const bool *want_logits; /* [n] or NULL = all */
};

/* Run the batch; writes logits [n_wanted, vocab] (rows in batch order of the
 * tokens with want_logits) into logits, which may be NULL.  On error nothing is
 * appended to any KV cache. */
enum moe_status moe_engine_forward(struct moe_engine *e, const struct moe_batch *b, float *logits);

#ifdef __cplusplus
}
#endif
#endif
