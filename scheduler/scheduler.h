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
#include "../engine/json_guide.h"
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

struct moe_predictor;

/* A routing path is a bitset of experts per MoE layer: words_per_layer uint64_t
 * words per MoE layer (bit e of layer l = expert e), MoE layers in model order. */
struct moe_sched_path_query {
    uint64_t id;              /* request id */
    int slot;                 /* engine sequence slot */
    int n_moe_layers;         /* MoE layers of the model */
    int n_experts;            /* routed experts per MoE layer */
    int words_per_layer;      /* (n_experts + 63) / 64 */
    const uint64_t *recent;   /* [n_moe_layers * words_per_layer] experts the sequence's
                                 most recent token was routed to */
    const int *tokens;        /* [n_tokens] the sequence so far (prompt + generated) */
    int n_tokens;
};

/* Pluggable source of the predicted routing path of a sequence's next token,
 * used by token regrouping and lookahead prefetch.  Called on the scheduler
 * thread; fills out[n_moe_layers * words_per_layer].  Returns false when it has
 * no prediction (the scheduler then uses q->recent). */
struct moe_sched_path_source {
    bool (*predict)(void *ud, const struct moe_sched_path_query *q, uint64_t *out);
    void *ud;
};

struct moe_sched_params {
    int max_running;          /* sequences decoding at once (<= engine max_seqs) */
    int max_queued;           /* waiting requests; beyond -> MOE_EBUSY at once */
    int64_t max_tokens_in_flight; /* sum over accepted of prompt + max_tokens (KV bound) */
    int max_prompt;           /* tokens per prompt */
    int max_output;           /* max_tokens per request */
    int micro_batch;          /* sequences per forward() */
    int prefill_chunk;        /* prompt tokens per forward() per sequence */
    enum moe_grouping grouping;
    /* Additions (all optional; zero = default). */
    int aging_steps;          /* a waiting request gains one priority level per this many
                                 steps waited (0 = 64), and a prompt passed over this many steps
                                 in a row gets the next prompt chunk: no request starves */
    float regroup_lag;        /* regroup: tokens a sequence may fall behind its fair share
                                 while others that fit a micro-batch better run (0 = 2);
                                 -1 = strict steps: each sequence once per step, the step's
                                 sequences partitioned by path overlap */
    float regroup_lead;       /* regroup: tokens a sequence may run ahead of it (0 = 1) */
    int lookahead;            /* micro-batches ahead whose predicted experts are prefetched
                                 (0 = 1, -1 = no prefetch) */
    struct moe_provider *provider; /* where prefetch hints go; NULL = the engine's provider
                                      (moe_sched_create) or none (moe_sched_create_backend) */
    struct moe_sched_path_source *path_source; /* predicted routing paths; NULL = most recent routing */
    bool prefix_cache;        /* a new request takes the free slot whose previous sequence shares the
                                 longest beginning with its prompt and computes only the rest
                                 (needs the backend's seq_claim; not with prompt_logprobs) */
    float path_decay;         /* without path_source/predictor: 0 = the path is the most recent
                                 token's routing; in (0, 1): the top_k experts per MoE layer of
                                 the sequence's routing history, each token weighted
                                 path_decay^age (a longer memory of what the sequence uses) */
    struct moe_engine_hooks hooks; /* engine hooks the scheduler chains to (it installs its own) */
    /* A routing-path predictor (predictor/predictor.h), or NULL.  moe_sched_create
     * then drives it around every forward() (begin/end, its engine hooks before
     * `hooks`, seq_reset on slot changes) and, without path_source, regroups on
     * moe_predictor_seq_path().  Its prefetches go where moe_predictor_set_provider
     * says. */
    struct moe_predictor *predictor;
    int sample_threads;       /* threads that sample a micro-batch's decode rows (0 = the online CPUs,
                                 up to 8; 1 = the scheduler thread alone); outputs do not depend on it */
    int engine_max_ctx;       /* limits to assume instead of the engine's own max_ctx / */
    int engine_max_batch_tokens; /* max_batch_tokens (0 = ask the engine; at most the engine's) */
    uint32_t fault_events_at; /* testing: the Nth micro-batch finds no memory for its token events, as
                                 out of memory would (its requests fail with MOE_ENOMEM); 0 = off */
    uint32_t fault_device_at; /* testing: the Nth forward() and every later one fail as on a lost
                                 device (its micro-batch's requests fail with MOE_EDEVLOST); 0 = off */
    const char *hold_path;    /* testing: while a file of this path exists, the scheduler thread admits
                                 requests but runs no forward (they stay running or waiting as
                                 admitted), so a test puts requests in place before any forward; NULL =
                                 off */
};

struct moe_gen_params {
    int max_tokens;
    struct moe_sampling sampling;
    int priority;             /* higher first; FCFS within a priority */
    double deadline;          /* moe_now() seconds; 0 = none, any other value (a negative one too: it has
                                 passed) is a deadline; NaN is refused */
    bool ignore_eos;
    /* vLLM's stop_token_ids: stop_ids[0..n_stop_ids) (ids in the vocabulary) end the request as EOS does
     * (finish stop, the token not delivered nor counted), with ignore_eos too. */
    int n_stop_ids;           /* 0..MOE_MAX_STOP_TOKEN_IDS */
    int32_t stop_ids[MOE_MAX_STOP_TOKEN_IDS];
    /* vLLM's min_tokens, 0..max_tokens: while fewer tokens were generated, the EOS tokens (ignore_eos or
     * not) and stop_ids are not sampled, their logits -inf (moe_logits_ban; the log-probabilities stay the
     * model's), unless no other token could be (a guide that only lets the output end): the request then
     * ends as it would without min_tokens. */
    int min_tokens;
    bool logprobs;            /* report each token's log-probability (on_logprobs) */
    int top_logprobs;         /* ... and this many most likely tokens, 0..MOE_MAX_TOP_LOGPROBS */
    bool prompt_logprobs;     /* also every prompt token's after the first (on_prompt_logprobs);
                                 max_tokens may then be 0: the prompt only */
    /* JSON mode (engine/json_guide.h): only tokens that keep the output the beginning of one JSON
     * value are sampled, and the request ends (stop) when the value is whole; the vocabulary's
     * bytes, or NULL for free text.  Must outlive the request. */
    const struct moe_token_bytes *json;
    /* With json: the value's schema (moe_json_schema_parse), NULL for any object; the scheduler
     * holds its own reference while the request lives. */
    struct moe_json_schema *json_schema;
    /* With json: the value may follow a reasoning block, "<think>" free text "</think>" (with
     * think_opened the output begins inside it); moe_json_init_after_think. */
    bool json_after_think, think_opened;
    /* The n choices of one request (n > 1) are n submissions in a row: the first has choices = n,
     * and its admission checks room for all n at once (tokens in flight for n of it; an error, not
     * "retry later", when n of it never fit); the others have more_choice set and hold = the id
     * moe_sched_submit gave the first: they take no place of their own in the max_queued bound (a
     * request counts once while any choice of it waits, also after its first was admitted, and a further
     * choice whose room is held is never refused for the queue) and take the room the first's admission holds for them.  That room stays held
     * (whether or not the first still runs) until the last of them is submitted or the submitter gives
     * it back (moe_sched_hold_release), so nothing submitted between them, from any thread, can take
     * it.  A further choice whose room is not held (given back) is checked as a request of its own, in
     * tokens in flight and in max_queued.  When the choices' prompts differ (a batch of prompts), the first has choices_need: the tokens in
     * flight of all of them together (each its prompt + max_tokens), checked and held in place of
     * choices times its own. */
    int choices;
    bool more_choice;
    int64_t choices_need;
    uint64_t hold;            /* more_choice: the first choice's id */
};

/* How a request ended, as on_done reports it. */
struct moe_sched_result {
    enum moe_finish why;
    enum moe_status st;
    const char *msg;  /* why it failed or was cancelled ("" when it completed) */
    int n_prompt;     /* prompt tokens */
    int n_generated;  /* tokens delivered through on_token */
    int n_cached;     /* prompt tokens taken from a cached prefix (prefix_cache), counted in n_prompt */
    bool of_request;  /* MOE_FINISH_ERROR the request caused: its guide allows no token of the vocabulary (a
                         client error); false: the server's (a forward failed, NaN logits, out of memory) */
};

struct moe_sched_events {
    void (*on_token)(void *ud, uint64_t id, int token);
    void (*on_done)(void *ud, uint64_t id, const struct moe_sched_result *res);
    /* With moe_gen_params.logprobs: the token's log-probabilities, just before its on_token. */
    void (*on_logprobs)(void *ud, uint64_t id, const struct moe_token_logprobs *lp);
    /* With moe_gen_params.prompt_logprobs: prompt token pos's (pos >= 1, in order, all before the
     * first generated token). */
    void (*on_prompt_logprobs)(void *ud, uint64_t id, int pos, const struct moe_token_logprobs *lp);
};

struct moe_sched_stats {
    uint64_t accepted, rejected;                   /* submit() outcomes */
    uint64_t completed, cancelled, failed;         /* terminal statuses (deadline counts as failed? no: cancelled) */
    uint64_t by_finish[5];                         /* per enum moe_finish */
    int running, waiting;                          /* now */
    uint64_t prompt_tokens, generated_tokens;      /* totals */
    uint64_t steps, layer_steps, experts_activated;/* distinct experts summed over MoE layer-steps */
    /* Additions.  A layer-step is one MoE layer of one forward() (micro-batch).  A forward() that failed
     * counts none of the routing it reported (nor does a request's routing history take it), and a
     * micro-batch whose requests ran again one by one after one counts as the one forward (each layer
     * once, the distinct experts of its passes that succeeded). */
    uint64_t forwards;                             /* micro-batches run: forward() calls, the reruns of a
                                                      micro-batch's requests after a failure not counted */
    uint64_t decode_layer_steps;                   /* layer-steps of forwards with decode tokens */
    uint64_t decode_experts_activated;             /* distinct experts over the decode tokens only,
                                                      summed over decode_layer_steps */
    uint64_t decode_tokens;                        /* decode rows computed */
    uint64_t prefill_chunks;                       /* prompt chunks computed */
    uint64_t prefix_hit_tokens;                    /* prompt tokens taken from a slot's cache (prefix_cache);
                                                      prompt_tokens counts them too */
    uint64_t prefetch_hints;                       /* expert ids passed to provider prefetch */
    int64_t tokens_in_flight;                      /* now: prompt + max_tokens of accepted, unfinished */
};

/* The testing faults asked for in the environment, into p: fault_events_at from $MOEFLOW_TEST_FAULT_EVENTS_AT,
 * fault_device_at from $MOEFLOW_TEST_FAULT_DEVICE_AT (decimal) and hold_path from $MOEFLOW_TEST_SCHED_GATE (a path;
 * the environment's string, kept); a variable not set leaves its field as it is.  The commands that run a
 * scheduler (serve, bench batch) call it; the fault tests set the variables. */
void moe_sched_params_test_faults(struct moe_sched_params *p);

struct moe_sched;
struct moe_sched *moe_sched_create(struct moe_engine *e, const struct moe_sched_params *p);
void moe_sched_destroy(struct moe_sched *s);  /* cancels what is left, joins the thread */
enum moe_status moe_sched_start(struct moe_sched *s); /* spawn the scheduler thread */
/* Admit or reject at once (reason in moe_last_error(): which bound): MOE_EINVAL / MOE_ERANGE for a request
 * that can never run here, MOE_EBUSY for one that may later (max_queued, max_tokens_in_flight reached),
 * MOE_ECANCELED once moe_sched_drain or moe_sched_destroy began (none will), MOE_ENOMEM. */
enum moe_status moe_sched_submit(struct moe_sched *s, const int *prompt, int n_prompt,
                                 const struct moe_gen_params *g,
                                 const struct moe_sched_events *ev, void *ud, uint64_t *id);
/* The room the first of n choices (id) holds for those not yet submitted given back: when they will not
 * all be submitted (one was refused, the client left).  A no-op once the last was submitted, and for an id
 * that holds none. */
void moe_sched_hold_release(struct moe_sched *s, uint64_t id);
/* End a request early as cancelled (its client left).  A cancel that comes after the request's deadline,
 * or MOE_SCHED_DEADLINE_SLACK_S or less before it, ends it as its deadline would (finish reason deadline,
 * MOE_ETIMEDOUT): a client whose own deadline ran out cancels a few milliseconds before the server's
 * (the server took the deadline as the request arrived), and that is the deadline's doing.  Not a drain's
 * cancel. */
#define MOE_SCHED_DEADLINE_SLACK_S 0.05
enum moe_status moe_sched_cancel(struct moe_sched *s, uint64_t id);
/* End a request early as finished by a stop sequence (the client found one in
 * the text): like cancel, but counted as completed, finish reason stop. */
enum moe_status moe_sched_finish(struct moe_sched *s, uint64_t id);
/* End a request early as failed with st and msg (its caller cannot deliver the reply): like cancel,
 * but counted as failed, finish reason error. */
enum moe_status moe_sched_fail(struct moe_sched *s, uint64_t id, enum moe_status st, const char *msg);
/* A request that ended as completed (why: length or stop) but whose reply its caller could not
 * deliver: counted as failed instead (completed and by_finish[why] one less, failed and
 * by_finish[error] one more).  No-op for another why. */
void moe_sched_reply_failed(struct moe_sched *s, enum moe_finish why);
/* A request its caller dropped before submitting it (its client left while it waited to be prepared):
 * counted as accepted and cancelled, as one submitted and cancelled at once is, without running anything. */
void moe_sched_count_dropped(struct moe_sched *s);
/* Stop admission; wait up to timeout_s for in-flight work; cancel the rest ("shutting down: the drain
 * timeout passed while queued|during prefill|during decode; retry elsewhere").  A forward that failed
 * with MOE_EDEVLOST (a lost device) fails its micro-batch's requests and is the last to run: the
 * others wait, neither admitted nor stepped, for the drain, which cancels them at once ("shutting
 * down: the device was lost (WHY); cancelled ..." when no other reason is given). */
enum moe_status moe_sched_drain(struct moe_sched *s, double timeout_s);
/* moe_sched_drain, the requests it cancels told why (NULL: its time ran out): "WHY; cancelled while
 * queued|during prefill|during decode; retry elsewhere" (WHY cut to 255 bytes). */
enum moe_status moe_sched_drain_why(struct moe_sched *s, double timeout_s, const char *why);
void moe_sched_stats(struct moe_sched *s, struct moe_sched_stats *out);

/* Run one scheduling step on the calling thread (instead of moe_sched_start):
 * cancellations and deadlines, admission, one forward() per micro-batch.
 * Returns MOE_OK, or MOE_ENOENT when there was nothing to do (or nothing may
 * run: the device was lost, see moe_sched_drain).  Not to be mixed
 * with a started scheduler thread.  Deterministic for the same submissions. */
enum moe_status moe_sched_step(struct moe_sched *s);

/* The engine as the scheduler sees it: moe_sched_create wraps a moe_engine in
 * this; tests substitute a fake.  forward() must report each MoE layer's
 * routing of the batch rows through on_route (ids [n, top_k]). */
struct moe_sched_backend {
    void *self;
    int vocab, n_layers, n_experts, top_k; /* model shape */
    const bool *is_moe;                    /* [n_layers] */
    int eos_id;                            /* -1 = none */
    int n_eos;                             /* further end-of-sequence ids: eos_ids[0..n_eos) */
    const int *eos_ids;                    /*   (all of them stop a request; may be NULL) */
    int max_seqs, max_ctx, max_batch_tokens;
    int (*seq_alloc)(void *self);          /* slot or -1 */
    void (*seq_free)(void *self, int seq);
    /* Optional (prefix_cache): claim free slot seq keeping its first keep cached tokens; seq or -1
     * (moe_engine_seq_claim). */
    int (*seq_claim)(void *self, int seq, int keep);
    /* Optional (prefix_cache): copy the first n cached tokens of seq src into the empty, claimed dst
     * (moe_engine_seq_fork). */
    enum moe_status (*seq_fork)(void *self, int dst, int src, int n);
    enum moe_status (*forward)(void *self, const struct moe_batch *b, float *logits,
                               void (*on_route)(void *ud, int layer, int n, const int *ids),
                               void *route_ud);
    /* Optional: whether a sticky error poisoned the device (moe_offload_backend_poisoned): a forward
     * that failed then fails as a lost device's (MOE_EDEVLOST), whatever status it gave. */
    bool (*lost)(void *self);
};
/* Like moe_sched_create over any backend (copied; self must outlive the scheduler). */
struct moe_sched *moe_sched_create_backend(const struct moe_sched_backend *be,
                                           const struct moe_sched_params *p);

#ifdef __cplusplus
}
#endif
#endif
