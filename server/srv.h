/* Internals shared by the server core (server.c) and its two front ends
 * (http.c, grpc.c).  Not a public header.
 *
 * Threads: the scheduler thread produces token and done events through the
 * scheduler callbacks; each front end runs its own thread and owns its
 * requests.  Events are handed over through the front end's inbox: a mutex,
 * a list of generations with new events, and a wake function (event_active
 * for libevent; the gRPC thread polls its completion queue with a short
 * timeout and drains the inbox after each wake-up).  A large request is
 * prepared (parsed, its chat template rendered, tokenized, checked) on the
 * server's preparation threads (srv_job_start), so that its front end's
 * thread goes on serving the others meanwhile; the prepared request comes back
 * through the same inbox. */
#ifndef MOE_SERVER_SRV_H
#define MOE_SERVER_SRV_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "../common/moe.h"
#include "../engine/engine.h"
#include "../model/model.h"
#include "../model/tokenizer.h"
#include "../offload/runtime.h"
#include "../predictor/predictor.h"
#include "../scheduler/scheduler.h"
#include "metrics.h"
#include "requests.h"
#include "serve_config.h"

struct srv_gen;
struct srv_job;

struct srv_inbox {
    pthread_mutex_t mu;
    struct srv_gen *head, *tail;   /* generations with unread events (each holds a ref) */
    struct srv_job *jhead, *jtail; /* jobs prepared, for the front end to finish */
    void (*wake)(void *arg);       /* called without mu held; may be NULL (polled) */
    void *wake_arg;
};

/* One generation request, shared by a front end and the scheduler. */
struct srv_gen {
    struct moe_server *srv;
    struct srv_inbox *inbox;
    uint64_t id;                   /* scheduler id */
    int n_prompt;                  /* prompt tokens */
    int max_tokens;                /* admitted max_tokens */
    int min_tokens;                /* vLLM's: stop sequences end nothing in the first min_tokens tokens' text */
    bool ignore_eos;
    /* guarded by inbox->mu */
    void *owner;                   /* front-end context; NULL once the front end let go */
    int refs;                      /* scheduler + front end + inbox list */
    bool queued;                   /* on the inbox list */
    struct srv_gen *next;
    int *toks;                     /* tokens not yet taken by the front end */
    struct moe_token_logprobs *lps; /* their log-probabilities (requests that asked), else NULL */
    int n_toks, cap_toks;
    bool toks_oom;                 /* a token could not be buffered: fail the request */
    bool done;                     /* on_done arrived */
    bool undelivered;              /* the front end let go, unable to deliver the reply: a request the
                                      scheduler still completes counts as failed (on_done) */
    enum moe_finish why;
    enum moe_status st;
    bool of_request;               /* a failure the request caused (moe_sched_result.of_request) */
    char msg[256];
    int n_generated;
    int n_cached;                  /* prompt tokens from a cached prefix */
    /* scheduler thread only */
    double t_submit, t_last;       /* moe_now() seconds */
    int n_seen;
    bool want_lp;                  /* the request asked for log-probabilities */
    /* echo: the prompt's ids and (with logprobs) its tokens' log-probabilities, [n_prompt]
     * (entry 0 unused): written by the scheduler thread before the first token or on_done, read by
     * the front end after it saw either */
    int *prompt_ids;
    struct moe_token_logprobs *prompt_lps;
    struct moe_token_logprobs lp_next; /* on_logprobs' value for the on_token that follows */
    /* front-end thread only */
    struct moe_tok_stream text;    /* the text held back: a cut character, a byte-fallback run */
    int n_streamed;                /* tokens handed out so far */
    bool finished_front;           /* terminal status delivered */
};

/* What a front end takes from one generation per wake-up. */
struct srv_events {
    int *toks;                     /* malloc'd, n_toks */
    struct moe_token_logprobs *lps; /* malloc'd, n_toks, when the request asked for them; else NULL */
    int n_toks;
    bool done;
    enum moe_finish why;
    enum moe_status st;
    bool of_request;               /* MOE_FINISH_ERROR the request caused, a client error (moe_sched_result) */
    char msg[256];
    int n_prompt, n_generated;
    int n_cached;                  /* of n_prompt, tokens taken from a cached prefix */
};

/* Work of a front end's request done on a preparation thread (srv_job_start): the front end embeds it
 * in its own job, which holds a copy of what work reads, and what work makes of it. */
struct srv_job {
    void (*work)(struct srv_job *j); /* a preparation thread's, or (run inline) the front end's */
    void (*free)(struct srv_job *j); /* frees the job and what it holds (any thread: no front-end state) */
    /* after work, once the front end let go of the job (its client left): counts the request as its front
     * end counts one it prepared itself whose client left (srv_gen_submit_gone); NULL: nothing to count.
     * Any thread: no front-end state */
    void (*gone)(struct srv_job *j);
    /* instead of work, when the front end let go of the job before a preparation thread took it (its client
     * left while it waited): counts the request as dropped unprepared (srv_gen_count_dropped); NULL:
     * nothing to count.  Any thread: no front-end state */
    void (*dropped)(struct srv_job *j);
    struct srv_inbox *inbox;       /* where the job comes back */
    /* guarded by inbox->mu */
    void *owner;                   /* front-end context; NULL once it let go (srv_job_let_go) */
    struct srv_job *next;
};

/* The preparation threads: a queue of jobs, taken in order. */
struct srv_prep {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct srv_job *head, *tail;
    pthread_t threads[2];
    int n_threads;                 /* running; 0: every job runs inline */
    bool stop;
    size_t inline_bytes;           /* requests smaller than this are prepared inline */
    char *gate;                    /* testing (MOEFLOW_TEST_PREP_GATE): a job is taken only while this path does
                                      not exist; NULL: at once */
};

struct moe_server {
    struct moe_serve_config cfg;
    struct moe_pred_spec pred;     /* cfg.predictor, parsed once (moe_cmd_serve) */
    char model_name[128];
    struct moe_model *model;
    struct moe_tokenizer *tok;
    struct moe_chat *chat;         /* the chat template, or NULL (moeflow's markers) */
    struct moe_token_bytes json_vocab; /* every token's bytes, for JSON mode */
    struct moe_provider *provider; /* tiered expert cache, or NULL (engine's resident one) */
    struct moe_backend *backend;   /* --backend cuda, or NULL (the engine's CPU backend) */
    struct moe_predictor *predictor; /* or NULL */
    struct moe_engine *engine;
    struct moe_sched *sched;
    int max_ctx;                   /* tokens per sequence */
    enum moe_dtype kv_dt;          /* the KV cache's elements (kv-dtype) */
    bool chat_fills;               /* no default-max-tokens configured: a chat request without
                                      max_tokens runs to max-output, the context's end or
                                      max-tokens-in-flight */
    struct moe_metrics metrics;
    atomic_bool loaded;            /* model, engine and scheduler exist (set once) */
    atomic_bool ready;             /* loaded, warm, not draining */
    atomic_bool draining;
    atomic_bool grpc_lost;         /* gRPC core stopped accepting connections for good: never ready again, and
                                      /health answers 503 so that a liveness probe restarts the process */
    atomic_bool device_failed;     /* a request failed with MOE_EDEVLOST (a sticky device error): stop,
                                      exit non-zero; MOE_EDEVICE fails the request alone.  Set once
                                      device_why is written */
    atomic_bool device_claimed;    /* the first such failure was seen (it writes device_why) */
    char device_why[256];          /* that failure's message: the drain tells the requests it cancels */
    atomic_bool files_damaged;     /* a checkpoint file shrank or failed to read while mapped (moe_model_check_files):
                                      nothing computed is the model's any more; not ready, /health 503, every
                                      generation refused (503 / UNAVAILABLE) naming the file.  Set once files_why
                                      is written */
    atomic_bool files_claimed;     /* the damage was seen first (it writes files_why) */
    char files_why[512];           /* moe_model_check_files' message, naming the file */
    atomic_int live_gens;          /* srv_gen objects alive */
    double t_start;
    long long created;             /* wall-clock start, seconds since the epoch (/v1/models) */
    struct http_front *http;
    struct grpc_front *grpc;
    struct srv_prep prep;
    struct srv_inbox gone;         /* of the generations submitted for clients that left (srv_gen_submit_gone):
                                      never woken, its lock theirs; freed after the scheduler */
    unsigned faults;               /* testing: enum srv_fault bits (MOEFLOW_TEST_FAIL_ALLOC), else 0 */
};

/* Testing (tests/server/test_serve_faults.py): MOEFLOW_TEST_FAIL_ALLOC, a comma-separated list of these
 * names, makes the allocations they name on a request's way to the scheduler fail as out of memory would:
 * job (the copy of a request a front end prepares), prompts (a completion's prepared prompts), stops (a
 * generation's stop sequences, when it has any), choice (a front end's object of one generation), gen
 * (the generation shared with the scheduler), tokenize (a request's text tokenized: srv_tokenize),
 * detokenize (a request's token ids decoded: srv_detokenize), reply (the packed reply of a gRPC Tokenize
 * call). */
enum srv_fault {
    SRV_FAULT_JOB = 1,
    SRV_FAULT_PROMPTS = 2,
    SRV_FAULT_STOPS = 4,
    SRV_FAULT_CHOICE = 8,
    SRV_FAULT_GEN = 16,
    SRV_FAULT_TOKENIZE = 32,
    SRV_FAULT_DETOKENIZE = 64,
    SRV_FAULT_REPLY = 128,
};
/* calloc(n, size), or NULL when MOEFLOW_TEST_FAIL_ALLOC names f. */
void *srv_calloc(const struct moe_server *s, enum srv_fault f, size_t n, size_t size);
/* A request's text tokenized as it runs (templated: already rendered by a chat template, so without the
 * tokenizer post-processor's special tokens): moe_tokenizer_encode or moe_tokenizer_encode_prompt.  Out of
 * memory (MOE_ENOMEM) says so first, as the server's own out of memory does: the caller answers it as
 * such (HTTP 500, RESOURCE_EXHAUSTED, counted as memory), any other error as the text's (invalid). */
enum moe_status srv_tokenize(const struct moe_server *s, bool templated, const char *text, size_t len, int **ids,
                             size_t *n_ids);
/* A request's token ids decoded (moe_tokenizer_decode): out of memory (MOE_ENOMEM) says so first, as
 * srv_tokenize does; any other error is the ids' (invalid). */
enum moe_status srv_detokenize(const struct moe_server *s, const int *ids, size_t n, char **text, size_t *len);
/* A generation request dropped before it was prepared, its client gone (srv_job.dropped): counted as
 * cancelled (moe_sched_count_dropped), or as refused while the model loads or the server drains, as its
 * preparation would have refused it then. */
void srv_gen_count_dropped(struct moe_server *s);
/* A request refused before admission with st, other than as busy or draining (counted where they are
 * found): counted as out of memory (MOE_ENOMEM) or invalid (any other status). */
void srv_count_refused(struct moe_server *s, enum moe_status st);
/* Whether the model is loaded (s->loaded); while it is not, a request refused for it is counted (loading)
 * when count: a request whose other refusals are counted (a generation, or a tokenizing one). */
bool srv_loaded(struct moe_server *s, bool count);
/* moe_stop_scan_init for a request's generation; an error (out of memory) is counted as its refusal. */
enum moe_status srv_stop_scan_init(struct moe_server *s, struct moe_stop_scan *sc, char *const *seq, int n);

/* The model's checkpoint files as they are read through their mappings (moe_model_check_files): NULL while
 * they are whole (or the model not loaded), else why not, naming the file.  The first caller to see the
 * damage turns readiness off for good and logs it.  Any thread. */
const char *srv_files_damaged(struct moe_server *s);

/* What a request refused, or a call ended, because the server drains says. */
#define SRV_DRAINING_MSG "the server is draining (shutting down); retry elsewhere"

/* Map a status to HTTP and gRPC codes: a request refused (srv_http_status, srv_grpc_code), or a generation
 * that ended (why, st; of_request: a failure the request caused, moe_sched_result.of_request).  A
 * generation's failure that the request did not cause is the server's: 500 / INTERNAL, whatever its status
 * would blame (a forward's MOE_EINVAL, the NaN logits' MOE_ERANGE); out of memory, a deadline and the
 * drain keep their own codes. */
int srv_http_status(enum moe_status st);
int srv_grpc_code(enum moe_status st);      /* grpc_status_code value */
int srv_finish_http_status(enum moe_finish why, enum moe_status st, bool of_request);
int srv_finish_grpc_code(enum moe_finish why, enum moe_status st, bool of_request);

/* Admit a decoded request: tokenize, check limits (max-output, max-prompt,
 * context, model name), submit.  On success *out holds a generation owned by
 * `owner` (one ref for the front end).  Errors: MOE_EINVAL/ERANGE (bad field,
 * named in moe_last_error), MOE_EBUSY (queue full), MOE_ECANCELED (draining),
 * others. */
enum moe_status srv_gen_submit(struct moe_server *s, struct srv_inbox *ib, void *owner,
                               const struct moe_gen_request *r, double deadline,
                               struct srv_gen **out);
/* srv_gen_submit in two steps, so that a front end checks all the prompts of a batch before it submits
 * any: srv_gen_prepare tokenizes r's prompt and checks it (the server's state, the model name, the limits;
 * its errors, counted as srv_gen_submit counts them; those of the prompt itself begin with 'name' when
 * name is not NULL), srv_gen_submit_prepared submits it (p is not taken: the caller frees p->ids). */
struct srv_prompt {
    int *ids;                      /* malloc'd, n_ids */
    int n_ids;
    int max_tokens;                /* as admitted */
};
enum moe_status srv_gen_prepare(struct moe_server *s, const struct moe_gen_request *r, const char *name,
                                struct srv_prompt *out);
enum moe_status srv_gen_submit_prepared(struct moe_server *s, struct srv_inbox *ib, void *owner,
                                        const struct moe_gen_request *r, const struct srv_prompt *p,
                                        double deadline, struct srv_gen **out);
/* A prepared request whose client left before its front end submitted it (srv_job.gone): submitted and
 * cancelled at once, so that it counts as a request its front end prepared itself and then found its
 * client gone: accepted and cancelled, or refused (busy, draining) as srv_gen_submit_prepared counts.
 * Any thread; the caller stops at the first refusal, as a front end does.  Its scheduler id into *id
 * (NULL: not wanted), the hold of a first choice. */
enum moe_status srv_gen_submit_gone(struct moe_server *s, const struct moe_gen_request *r, const struct srv_prompt *p,
                                    double deadline, uint64_t *id);
/* The room choice 0 (scheduler id hold; 0: none) holds for a request's other choices given back, once the
 * front end submitted what it will of them: after the last it is a no-op, after a refusal it frees the
 * room of those that will not come. */
void srv_gen_hold_release(struct moe_server *s, uint64_t hold);
/* Take the first generation with unread events off the inbox, or NULL: it
 * holds a ref that srv_gen_put drops.  One at a time, so the scheduler may
 * queue it again (new events) while its consumer works: the inbox's links
 * are only ever followed under its lock. */
struct srv_gen *srv_inbox_pop(struct srv_inbox *ib);
/* Move g's unread events into ev (caller frees ev->toks). */
void srv_gen_events(struct srv_gen *g, struct srv_events *ev);
/* Text of tokens, valid UTF-8, what is not yet sure held until final (moe_tokenizer_stream: a cut
 * character, a run of byte-fallback tokens).  malloc'd NUL-terminated; *len bytes. */
char *srv_gen_text(struct srv_gen *g, const int *toks, int n, bool final, size_t *len);
/* What srv_gen_text holds that the text would end with were the tokens given so far the last (a
 * byte run that is UTF-8 so far: moe_tokenizer_stream_pending), for stop sequences; valid until
 * the next srv_gen_text call. */
const char *srv_gen_pending(const struct srv_gen *g, size_t *len);

/* The front end lets go: cancel in the scheduler if still running, drop its ref. */
void srv_gen_abandon(struct srv_gen *g);
/* The front end found a stop sequence in the text: end the generation now as
 * finished by a stop (moe_sched_finish) and drop the front end's ref. */
void srv_gen_abandon_stopped(struct srv_gen *g);
/* The front end lets go of g's events as srv_gen_abandon (at_stop: srv_gen_abandon_stopped) does, and
 * keeps its ref, to be dropped by srv_gen_put or srv_gen_undeliverable once its reply is sent or not. */
void srv_gen_detach(struct srv_gen *g, bool at_stop);
/* The front end cannot deliver g's reply (a message over max-message-bytes, a reply that could not be
 * written out): the request counts as failed whether it still runs (ended now, with msg) or was
 * completed already; the front end lets go as with srv_gen_abandon (after srv_gen_detach too), and
 * answers its client with the error itself.  Logged. */
void srv_gen_undeliverable(struct srv_gen *g, const char *msg);
/* The front end lets go of g because the call that carries its reply ended before the reply could go
 * out: a generation still running is cancelled; one that completed already (its last events not yet
 * taken), or completes before the cancel reaches it, counts as failed. */
void srv_gen_abandon_unsent(struct srv_gen *g);
/* Drop one ref (front end or inbox list). */
void srv_gen_put(struct srv_gen *g);

/* Run job j (its owner, inbox, work and free set; all it reads its own) of a request of `bytes` bytes:
 * on a preparation thread when the request is large enough for its preparation to hold up the front
 * end's other requests and the threads run (true: j comes back through its inbox, srv_inbox_pop_job),
 * else here and now (false: the caller finishes it at once). */
bool srv_job_start(struct moe_server *s, struct srv_job *j, size_t bytes);
/* The front end lets go of a job it started (its request ended: a client gone, a call cancelled, the
 * front end stopping): the job is still prepared (work), then counted (gone) and freed where it is next
 * found, unanswered. */
void srv_job_let_go(struct srv_job *j);
/* The first job back with its owner (*owner), or NULL; jobs whose owner let go are counted (gone) and
 * freed on the way.  The caller finishes the job and frees it (j->free). */
struct srv_job *srv_inbox_pop_job(struct srv_inbox *ib, void **owner);
/* The preparation threads: started before the front ends; stopped (every job queued runs to its end and
 * comes back, those that start later run inline) before they are. */
void srv_prep_start(struct moe_server *s);
void srv_prep_stop(struct moe_server *s);

void srv_inbox_init(struct srv_inbox *ib, void (*wake)(void *), void *arg);
/* 64 random bits (the kernel's; before it has entropy, the time, the pid and a count): request
 * seeds and the per-start id tag. */
uint64_t srv_random64(void);
void srv_inbox_free(struct srv_inbox *ib);

/* Prometheus text of all metrics (malloc'd). */
char *srv_metrics_text(struct moe_server *s, size_t *len);

/* Front ends. */
struct http_front *srv_http_start(struct moe_server *s);
/* Stop the HTTP front: no new connections or requests; connections still delivering a reply (one being
 * answered, or output not yet written out, as to a client slow to read) go on until they are done or
 * moe_now() reaches until (0: closed at once), then what is left is closed. */
void srv_http_stop(struct http_front *h, double until);
struct grpc_front *srv_grpc_start(struct moe_server *s);
/* Stop the gRPC front: no new calls; calls still delivering a reply (messages or a status not yet sent
 * out, as to a client slow to read) go on until they end or moe_now() reaches until (0: cancelled at
 * once), then what is left is cancelled. */
void srv_grpc_stop(struct grpc_front *g, double until);

#endif
