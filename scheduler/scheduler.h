/* Request scheduler: a bounded queue, admission control, continuous batching
 * (sequences join and leave at step boundaries, long prompts prefilled in
 * chunks), token regrouping of runnable sequences into micro-batches.
 *
 * One scheduler thread owns the engine.  Callbacks are invoked on that thread
 * and must not block; they must copy what they need.  Every accepted request
 * gets exactly one on_done. */
#ifndef MOE_SCHEDULER_H
#define MOE_SCHEDULER_H

#include "../common/moe.h"
#include "../engine/engine.h"
#include "../engine/sampling.h"

#ifdef __cplusplus
extern "C" {
#endif

enum moe_finish {
    MOE_FINISH_LENGTH,    /* max_tokens reached */
    MOE_FINISH_STOP,      /* EOS */
    MOE_FINISH_CANCELLED, /* client cancel/disconnect, or shutdown */
    MOE_FINISH_DEADLINE,  /* deadline expired */
    MOE_FINISH_ERROR,     /* engine/provider failure (message in on_done) */
};
const char *moe_finish_str(enum moe_finish f); /* "length", "stop", "cancelled", "deadline", "error" */

enum moe_grouping { MOE_GROUP_FCFS, MOE_GROUP_REGROUP };

struct moe_sched_params {
    int max_running;          /* sequences decoding at once (<= engine max_seqs) */
    int max_queued;           /* waiting requests; beyond -> MOE_EBUSY at once */
    int64_t max_tokens_in_flight; /* sum over accepted of prompt + max_tokens (KV bound) */
    int max_prompt;           /* tokens per prompt */
    int max_output;           /* max_tokens per request */
    int micro_batch;          /* sequences per forward() */
    int prefill_chunk;        /* prompt tokens per forward() per sequence */
    enum moe_grouping grouping;
};

struct moe_gen_params {
    int max_tokens;
    struct moe_sampling sampling;
    int priority;             /* higher first; FCFS within a priority */
    double deadline;          /* moe_now() seconds; 0 = none */
    bool ignore_eos;
};

struct moe_sched_events {
    void (*on_token)(void *ud, uint64_t id, int token);
    void (*on_done)(void *ud, uint64_t id, enum moe_finish why, enum moe_status st,
                    const char *msg, int n_prompt, int n_generated);
};

struct moe_sched_stats {
    uint64_t accepted, rejected;                   /* submit() outcomes */
    uint64_t completed, cancelled, failed;         /* terminal statuses (deadline counts as failed? no: cancelled) */
    uint64_t by_finish[5];                         /* per enum moe_finish */
    int running, waiting;                          /* now */
    uint64_t prompt_tokens, generated_tokens;      /* totals */
    uint64_t steps, layer_steps, experts_activated;/* distinct experts summed over MoE layer-steps */
};

struct moe_sched;
struct moe_sched *moe_sched_create(struct moe_engine *e, const struct moe_sched_params *p);
void moe_sched_destroy(struct moe_sched *s);  /* cancels what is left, joins the thread */
enum moe_status moe_sched_start(struct moe_sched *s); /* spawn the scheduler thread */
/* Admit or reject at once (reason in moe_last_error(): which bound). */
enum moe_status moe_sched_submit(struct moe_sched *s, const int *prompt, int n_prompt,
                                 const struct moe_gen_params *g,
                                 const struct moe_sched_events *ev, void *ud, uint64_t *id);
enum moe_status moe_sched_cancel(struct moe_sched *s, uint64_t id);
/* Stop admission; wait up to timeout_s for in-flight work; cancel the rest. */
enum moe_status moe_sched_drain(struct moe_sched *s, double timeout_s);
void moe_sched_stats(struct moe_sched *s, struct moe_sched_stats *out);

#ifdef __cplusplus
}
#endif
#endif
