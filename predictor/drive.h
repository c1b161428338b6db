/* Driving the real engine over a text for predictor measurement: the tokens
 * are fed one by one as batch-1 decode steps (teacher forcing) in sequences of
 * seq_len tokens, with a predictor attached through the engine hooks, an
 * event-log provider recording prefetch hints and expert accesses, and
 * optionally a recall/precision evaluator.  Also the routing of a text in
 * prefill chunks (training data for the path predictor). */
#ifndef MOE_PRED_DRIVE_H
#define MOE_PRED_DRIVE_H

#include "cachesim.h"
#include "metrics.h"
#include "predictor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_drive_params {
    const struct moe_pred_spec *spec;
    const char *spec_arg;              /* NULL or the spec as given: a predictor that fails names it,
                                          "--predictor SPEC: ..." */
    struct moe_pred_prefetch prefetch; /* hint selection (see predictor.h) */
    int seq_len;                       /* tokens per sequence (cache reset after), > 0 */
    int n_threads;                     /* BLAS threads, 0 = 1 */
    struct moe_evlog *log;             /* NULL: no event log */
    struct moe_pred_eval *eval;        /* NULL: no recall/precision */
    float *logits;                     /* NULL or [n_tokens, vocab]: every step's logits */
    int *argmax;                       /* NULL or [n_tokens]: greedy token of every step */
    struct moe_backend *backend;       /* NULL: the engine's CPU backend; else (e.g. CUDA) borrowed */
    struct moe_provider *provider;     /* NULL: a resident provider made here; else borrowed (its
                                          expert pointers must be in backend memory) */
};

/* Decode tokens[0..n) through engine + predictor.  The log (if any) is
 * initialised here (n_moe, n_experts, top_k of the model). */
enum moe_status moe_drive_text(const struct moe_model *m, const int *tokens, size_t n,
                               const struct moe_drive_params *p);

/* Routing of tokens[0..n) with the all-resident engine, in prefill chunks of
 * up to `chunk` tokens, sequences of seq_len: experts [n, n_moe, top_k] and
 * seq/pos [n] (malloc'd); with final_hidden non-NULL also each token's hidden
 * state after the final norm, [n, hidden] (malloc'd).  progress_s > 0: a line
 * "routing: N / n tokens" on stderr every progress_s seconds and at the end. */
enum moe_status moe_drive_route(const struct moe_model *m, const int *tokens, size_t n, int seq_len, int chunk,
                                int n_threads, double progress_s, int **experts, int **seq, int **pos,
                                float **final_hidden);

#ifdef __cplusplus
}
#endif
#endif
