/* Routing-path predictors: which experts each MoE layer will need, before it runs.
 *
 * Seam: begin(batch) -> predicted path (experts of every MoE layer, scored),
 * then per layer on_moe_input(layer, hidden) and on_route(layer, actual) ->
 * corrections for the layers ahead.  Every prediction goes to an optional sink
 * (evaluation) and, when a provider is attached, becomes provider->prefetch()
 * calls in order of need (distance = MoE layers ahead of the one computing).
 *
 * Kinds (spec strings, moe_pred_spec_parse):
 *   none          no prediction (on-demand fetching)
 *   gate[:D]      pre-gating: routers of the next D MoE layers applied to the
 *                 hidden state entering layer l's MoE block (default D = 3)
 *   path[:FILE]   learned path predictor (predictor/path_model.h): from the
 *                 token's embedding and the previous token's actual routing,
 *                 scores every expert of every MoE layer before layer 0 runs
 *                 (FILE defaults to <model>/predictor.safetensors)
 *   history       per-layer transition counts and recency, learned online
 *   path+gate[:FILE] the path at step start, corrected layer by layer by the
 *                 lookahead gates (D = 3)
 *   auto          path+gate when <model>/predictor.safetensors exists, else gate
 *
 * Scores are membership probabilities in [0, 1] (about top_k per layer sum).
 * The predictor never changes what the engine computes. */
#ifndef MOE_PREDICTOR_H
#define MOE_PREDICTOR_H

#include "../common/moe.h"
#include "../engine/engine.h"
#include "../model/model.h"
#include "../offload/provider.h"

#ifdef __cplusplus
extern "C" {
#endif

enum moe_pred_kind {
    MOE_PRED_NONE,
    MOE_PRED_GATE,
    MOE_PRED_PATH,
    MOE_PRED_HISTORY,
    MOE_PRED_PATH_GATE,
};
const char *moe_pred_kind_name(enum moe_pred_kind k);

#define MOE_PRED_MAX_DEPTH 8

struct moe_pred_spec {
    enum moe_pred_kind kind;
    int depth;            /* gate lookahead in MoE layers (gate, path+gate), 1..MOE_PRED_MAX_DEPTH */
    char path[4096];      /* path predictor file (path, path+gate) */
};

/* Parse a --predictor value (NULL: auto); model_dir resolves the default path file.  The
 * error names the spec and what is accepted: MOE_EINVAL for a malformed or empty spec
 * (a usage error), MOE_ENOENT or MOE_EIO when its predictor file is missing,
 * a directory or its name cannot be looked up (the file is read later, by moe_predictor_create). */
enum moe_status moe_pred_spec_parse(const char *s, const char *model_dir, struct moe_pred_spec *out);

/* Where predictions go, besides the provider: one call per (MoE layer,
 * distance) prediction.  moe_index: 0..n_moe-1 (not the decoder layer).
 * step_start: made at begin() (the "path" prediction; distance is then
 * moe_index + 1).  scores [n_tokens, n_experts].  Predictions for the next
 * steps (path predictors of horizon >= 2: the routing of the token h steps
 * after this one, made at begin() with distance h * n_moe + moe_index + 1)
 * reach the sink only when it sets `ahead`; they always go to the provider: to
 * its hint() op when it has one (every expert's score, rank-only), else to
 * prefetch() with prefetch.next_step. */
struct moe_pred_sink {
    void *ud;
    void (*predict)(void *ud, int moe_index, int distance, bool step_start, int n_tokens,
                    const float *scores);
    bool ahead;           /* also the next tokens' predictions (distance > n_moe) */
};

/* The default prefetch threshold of generate, serve, bench and replay: the
 * value a sweep on the training split's tail picked (docs/results.md, section 4). */
#define MOE_PRED_MIN_SCORE 0.8f

/* How predictions become prefetches. */
struct moe_pred_prefetch {
    float min_score;      /* only experts scored at least this (0 = MOE_PRED_MIN_SCORE) */
    int max_per_layer;    /* at most this many per layer and prediction (0 = top_k) */
    bool next_step;       /* also hint the next tokens' experts (path predictors of horizon >= 2,
                             distance > n_moe): for policies that rank evictions with them */
    bool all_scores;      /* publish every expert's score, whatever min_score and max_per_layer
                             say (best first): for a receiver that ranks evictions with the whole
                             distribution and applies its own prefetch threshold (replay) */
    bool rank_only;       /* no prefetches: predictions only reach the provider's hint op, to
                             rank evictions (--no-prefetch); nothing moves ahead of need */
};

struct moe_predictor;

/* spec kinds gate/path+gate read the routers, path/path+gate the embeddings
 * and the path file.  max_seqs: sequence slots (their previous routing is
 * kept).  NULL on error with moe_last_error() set. */
struct moe_predictor *moe_predictor_create(const struct moe_model *m, const struct moe_pred_spec *spec,
                                           int max_seqs);
void moe_predictor_destroy(struct moe_predictor *p);
enum moe_pred_kind moe_predictor_kind(const struct moe_predictor *p);

void moe_predictor_set_sink(struct moe_predictor *p, const struct moe_pred_sink *sink);
/* Attach a provider (NULL detaches) that receives prefetch hints. */
void moe_predictor_set_provider(struct moe_predictor *p, struct moe_provider *prov,
                                const struct moe_pred_prefetch *pf);

/* A forward step begins: tokens of b are about to run.  Computes and
 * publishes the step-start path (path, history, path+gate). */
enum moe_status moe_predictor_begin(struct moe_predictor *p, const struct moe_batch *b);
/* Engine hook bodies: x [n, hidden] MoE input of `layer`; ids [n, k] actual routing. */
void moe_predictor_on_moe_input(struct moe_predictor *p, int layer, int n, const float *x);
void moe_predictor_on_route(struct moe_predictor *p, int layer, int n, const int *ids);
/* The step's forward ended (successfully or not): keep each sequence's routing
 * as its "previous token" and learn online (history). */
void moe_predictor_end(struct moe_predictor *p, bool ok);
/* Forget a sequence's previous routing (slot freed / new request). */
void moe_predictor_seq_reset(struct moe_predictor *p, int seq);
/* Sequence dst continues from src's latest token (a fork of all src has cached): it takes src's
 * previous routing, history block and context.  Outside the slots: nothing. */
void moe_predictor_seq_fork(struct moe_predictor *p, int dst, int src);

/* Hooks that feed the predictor from moe_engine_forward(); calls are passed on
 * to next (may be NULL) first.  Valid while p lives. */
struct moe_engine_hooks moe_predictor_hooks(struct moe_predictor *p, const struct moe_engine_hooks *next);

/* For the scheduler's token regrouping: the step-start predicted experts of a
 * sequence whose next token is `token`: ids [n_moe_layers * k], the k best
 * per MoE layer in descending score.  Without a step-start predictor (none,
 * gate) the ids are the sequence's previous routing (or -1 when unknown). */
enum moe_status moe_predictor_seq_path(struct moe_predictor *p, int seq, int token, int k, int *ids);

/* MoE layers of the model in order (model layer index of MoE index i). */
int moe_predictor_n_moe_layers(const struct moe_predictor *p);
int moe_predictor_moe_layer(const struct moe_predictor *p, int i);

#ifdef __cplusplus
}
#endif
#endif
