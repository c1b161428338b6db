/* The learned routing-path predictor: a small MLP with one sigmoid head per
 * (MoE layer, expert).
 *
 *   input  x = [ rmsnormed token embedding (dim) | previous token's routing,
 *               multi-hot (n_moe * n_experts) ]
 *   h      = relu(W1 x + b1)                     W1 [width, n_in]
 *   p      = sigmoid(W2 h + b2)                  W2 [n_out, width], n_out = horizon * n_moe * n_experts
 *
 * horizon 1: the heads score this token's routing; horizon H > 1: block h
 * (1..H-1) of heads scores the routing of the h-th token after this one (used
 * to rank evictions steps ahead; trained on that token of the same sequence,
 * masked when the sequence ends before it).
 *
 * Trained with a multi-label (binary cross-entropy) loss and Adam on a routing
 * trace, with a held-out split and early stopping; saved as safetensors
 * (tensors w1, b1, w2, b2, F32; metadata format "moeflow-path-predictor"). */
#ifndef MOE_PATH_MODEL_H
#define MOE_PATH_MODEL_H

#include "../common/moe.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Blocks of heads at most: this token and the MOE_PATH_MAX_HORIZON - 1 after it. */
#define MOE_PATH_MAX_HORIZON 8

struct moe_path_model {
    int n_moe;        /* MoE layers */
    int n_experts;    /* experts per MoE layer */
    int top_k;        /* experts routed per token and layer */
    int dim;          /* token embedding width (model hidden size) */
    int width;        /* hidden units */
    int horizon;      /* 1..MOE_PATH_MAX_HORIZON blocks of heads (this token, the next, ...) */
    float hist_decay; /* > 0: a third input block, the sequence's recent use of each expert: an
                         exponential moving average of the earlier tokens' routing, multi-hot,
                         this decay per token (0: no such block) */
    bool context;     /* a fourth input block: the previous token's final hidden state (after the
                         model's final norm, the state its logits came from), unit RMS; zeros
                         when unknown (first token of a sequence, inside a prefill chunk) */
    int n_in, n_out;  /* dim + n_moe*n_experts (x2 with hist_decay) (+ dim with context),
                         horizon*n_moe*n_experts */
    float *w1, *b1;   /* [width, n_in], [width] */
    float *w2, *b2;   /* [n_out, width], [n_out] */
    char model_name[128]; /* model the predictor was trained for (metadata) */
};

/* Randomly initialised (He/Xavier, seeded); NULL on bad shape or no memory. */
struct moe_path_model *moe_path_model_create(int n_moe, int n_experts, int top_k, int dim, int width,
                                             int horizon, uint64_t seed);
/* Shape options beyond the required blocks. */
struct moe_path_opts {
    int horizon;      /* blocks of heads, 1..MOE_PATH_MAX_HORIZON */
    float hist_decay; /* history input block: decay in (0, 1); 0 = none */
    bool context;     /* context input block (previous token's final hidden state) */
};
struct moe_path_model *moe_path_model_create_ex(int n_moe, int n_experts, int top_k, int dim, int width,
                                                const struct moe_path_opts *o, uint64_t seed);
void moe_path_model_free(struct moe_path_model *m);

/* Build one input row: emb [dim] (raw embedding, normalised here), prev
 * [n_moe * top_k] expert ids of the previous token (NULL or -1 = unknown). */
void moe_path_model_features(const struct moe_path_model *m, const float *emb, const int *prev,
                             float *x /* [n_in] */);
/* The same with the optional blocks: hist [n_moe * n_experts] (NULL = no
 * history yet; ignored unless m->hist_decay > 0), ctx [dim] the previous
 * token's final hidden state (NULL = unknown; ignored unless m->context). */
void moe_path_model_features_ex(const struct moe_path_model *m, const float *emb, const int *prev,
                                const float *hist, const float *ctx, float *x /* [n_in] */);
/* hist = decay * hist + (1 - decay) * multi-hot(routing [n_moe * top_k], -1 = none). */
void moe_path_model_hist_update(const struct moe_path_model *m, float *hist, const int *routing);
/* Probabilities for B rows: x [B, n_in] -> p [B, n_out].  scratch [B, width].
 * be: a CPU backend whose linear op computes the two layers (each row's
 * scores then do not depend on the rows around it), or NULL for OpenBLAS (as
 * in training). */
struct moe_backend;
void moe_path_model_forward(const struct moe_path_model *m, struct moe_backend *be, int B, const float *x,
                            float *p, float *scratch);
/* The same for the first n_first outputs of each row only (p [B, n_first];
 * n_first = n_moe * n_experts: this token's routing), with the bits the full
 * forward gives them when be is set. */
void moe_path_model_forward_first(const struct moe_path_model *m, struct moe_backend *be, int B, const float *x,
                                  int n_first, float *p, float *scratch);

/* Whether a recorded model name (predictor metadata, trace header) names
 * another model than the one in model_dir; false when none was recorded. */
bool moe_path_model_other_model(const char *recorded, const char *model_dir);

enum moe_status moe_path_model_save(const struct moe_path_model *m, const char *path,
                                    const char *const *extra_meta /* key,value,...,NULL or NULL */);
/* Load and check shapes against expected (n_moe, n_experts, top_k, dim) when
 * those are > 0; error names the file and the mismatch. */
struct moe_path_model *moe_path_model_load(const char *path, int n_moe, int n_experts, int top_k, int dim);

/* Training set: n samples; per sample the embedding row of its token, the
 * previous token's routing and the actual routing. */
struct moe_path_data {
    int n;                 /* samples */
    const int *token;      /* [n] token id (row of emb) */
    const int *prev;       /* [n, n_moe * top_k], -1 = unknown (first token of a sequence) */
    const int *target;     /* [n, n_moe * top_k] actual experts */
    const int *next;       /* [n, n_moe * top_k] next token's experts (-1 = none: the sequence ends), or
                              NULL (horizon >= 2 only; token s+h's routing is next[s+h-1] when
                              next[s..s+h-1] are all present) */
    const float *hist;     /* [n, n_moe * n_experts] history block of each sample, or NULL (zeros) */
    const float *ctx;      /* [n, dim] previous token's final hidden state per sample, or NULL (zeros) */
    const float *emb;      /* [vocab, dim] f32 embeddings */
    int vocab;
};

struct moe_path_train_params {
    int max_epochs;        /* upper bound on passes over the training split */
    int batch;             /* rows per Adam step */
    float lr;              /* Adam step size */
    float weight_decay;    /* L2 on weights (decoupled), 0 = off */
    float val_frac;        /* held-out fraction, taken from the end (0..0.5) */
    int patience;          /* epochs without val-loss improvement before stopping */
    uint64_t seed;         /* shuffling */
    bool verbose;          /* one line per epoch on stderr */
};

struct moe_path_train_report {
    int epochs;            /* epochs run */
    int best_epoch;        /* 1-based epoch whose weights are kept */
    double train_loss;     /* mean BCE per output with a target (masked ones left out), last epoch */
    double val_loss;       /* best mean BCE per output with a target on the held-out split */
    double val_recall;     /* recall@top_k averaged over layers, held-out, best epoch */
    int n_train, n_val;    /* samples */
    double seconds;        /* wall time */
};

/* The routing around each token of a routed text (experts [n, row], row =
 * n_moe * top_k; seq and pos [n] as moeflow trace records them): prev[i] =
 * token i-1's experts and next[i] = token i+1's, where that token is in i's
 * sequence at the adjacent position, else -1s.  prev or next may be NULL. */
void moe_path_neighbours(const int *experts, const int *seq, const int *pos, size_t n, size_t row, int *prev,
                         int *next);

/* Train in place; on return m holds the weights of the best held-out epoch. */
enum moe_status moe_path_model_train(struct moe_path_model *m, const struct moe_path_data *d,
                                     const struct moe_path_train_params *tp,
                                     struct moe_path_train_report *rep);

#ifdef __cplusplus
}
#endif
#endif
