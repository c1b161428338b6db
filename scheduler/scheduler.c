/* The request scheduler: admission control, a priority queue with aging,
 * continuous batching with chunked prefill, token regrouping and lookahead
 * prefetch.  See scheduler.h.
 *
 * Locking: s->mu guards the waiting list, the active array, every request's
 * state/cancel flag, the counters and the stats.  forward(), the path source
 * and the user callbacks run without the lock.  Only the thread that steps
 * (the scheduler thread, or the caller of moe_sched_step) changes a request's
 * engine state or frees a request, so it may read them unlocked. */
#include "scheduler.h"

#include "regroup.h"
#include "../kernels/pool.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum rq_state { RQ_WAITING, RQ_PREFILL, RQ_DECODE, RQ_DONE };

/* The room the first of n choices holds for the others: theirs until they are submitted or the submitter
 * gives it back (moe_sched_hold_release), whether or not the first still runs.  It also counts the
 * request's choices that wait, so that the request takes one place in max_queued while any of them
 * does: it lives while it is listed in s->holds or a choice of it waits. */
struct choice_hold {
    uint64_t id;               /* the first choice's request id (moe_gen_params.hold of the others) */
    int64_t room;              /* tokens in flight held, in s->held too */
    int left;                  /* choices not yet submitted */
    int waiting;               /* its choices in the waiting queue (rq.group) */
    bool listed;               /* in s->holds: further choices still take its room */
    struct choice_hold *next;
};

struct rq {
    uint64_t id;
    int *tokens;               /* [n_prompt + max_tokens]: prompt, then generated */
    int n_prompt;
    int n_generated;           /* tokens delivered through on_token */
    int n_fed;                 /* of them, those fed back (their rows in the KV cache): all but the last
                                  while it decodes, all once an end of sequence came from their logits */
    int n_prefilled;           /* prompt tokens in the KV cache */
    int n_cached;              /* prompt tokens taken from a cached prefix at admission */
    int n_chunks;              /* prompt chunks computed */
    uint64_t chunk_step;       /* s->steps when it last got a prompt chunk, or was admitted */
    int64_t need;              /* n_prompt + max_tokens: tokens-in-flight charge */
    struct moe_gen_params g;
    struct moe_sched_events ev;
    void *ud;
    struct moe_sampler sampler;
    enum rq_state state;
    int slot;                  /* engine slot, -1 while waiting */
    uint64_t submit_step;      /* s->steps when submitted (aging) */
    bool cancel;               /* cancel() asked for it */
    double cancel_at;          /* ... at this moe_now() second (the deadline's doing within its slack) */
    bool shutdown;             /* ... as the drain's time ran out (or as moe_sched_drain_why says) */
    bool stop;                 /* ... as finish(): it ends as finished by a stop sequence */
    enum moe_status fail_st;   /* ... as fail(): it ends as failed with fail_st and fail_msg */
    char fail_msg[256];
    bool have_route;           /* route holds a real routing */
    uint64_t *route;           /* [n_moe * words] experts of the most recent token */
    uint64_t *fresh;           /* [n_moe * words] experts of its row in the forward under way: route (and
                                  hist) take them when that forward succeeds (commit_forward) */
    uint64_t *pred;            /* [n_moe * words] predicted path (scratch per step) */
    float *hist;               /* [n_moe * n_experts] decayed routing counts (path_decay > 0) */
    double credit;             /* regroup: fair-share credit in tokens (1 = due now) */
    bool pred_stale;           /* pred is not for the current next token */
    uint64_t wait_pass;        /* prefix_cache: the admit() pass in which it waits for a prefill */
    struct moe_json_state json;/* g.json: the output so far, as the beginning of a value */
    int *ban;                  /* g.min_tokens: the ids masked until then (the EOS ids, g.stop_ids) */
    int n_ban;
    struct choice_hold *group; /* while it waits: the hold of the request of n choices it is one of, which
                                  counts it in max_queued (NULL: it counts as a request of its own) */
    struct rq *next;           /* waiting list / done list link */
    /* terminal outcome, reported by on_done */
    enum moe_finish why;
    enum moe_status st;
    char msg[512];
    bool of_request;           /* a failure the request caused (its guide allows no token), not the server */
};

struct tok_event {
    struct rq *r;
    int token;
    int prompt_pos;                /* >= 1: the log-probabilities of prompt token prompt_pos (no token) */
    bool has_lp;                   /* the request asked for log-probabilities: lp */
    struct moe_token_logprobs lp;
};

/* A sampling thread's working memory. */
struct sample_ws {
    float *masked;                 /* [vocab] JSON mode: the logits of the tokens that may come next */
    struct moe_sample_buf buf;     /* the sampler's */
};

/* A decode row's next token, picked without the lock. */
struct pick {
    int tok;                       /* -1: r cannot go on (st, msg) */
    enum moe_status st;
    const char *msg;
    struct moe_token_logprobs lp;  /* its log-probabilities, when the request wants them */
};

struct moe_sched {
    struct moe_sched_backend be;
    struct moe_sched_params p;
    void *adapter;                 /* owned backend state (engine adapter), or NULL */
    void (*adapter_free)(void *);
    int n_moe, words;              /* MoE layers, bitset words per layer */
    int *moe_ord;                  /* [n_layers] MoE ordinal or -1 */
    int max_ctx;

    pthread_mutex_t mu;
    pthread_cond_t wake;           /* work arrived (submit, cancel, drain, destroy) */
    pthread_cond_t idle;           /* a request finished */
    pthread_t thread;
    bool started, stop, draining;
    char drain_why[256];           /* why the drain cancels what is left ("": its time ran out) */
    char lost[512];                /* a forward failed with MOE_EDEVLOST, saying this ("": none did): no forward
                                      runs again; what is left waits for the drain, which cancels it at once */

    struct rq *wait_head, *wait_tail; /* submission order */
    int n_waiting;
    int n_queued;                  /* places they take in max_queued: a request of n choices one while any
                                      choice of it waits (its hold's count), any other request one */
    struct rq **active;            /* [max_running] admission order */
    int n_active;
    int n_unreported;              /* finished, on_done not yet returned */
    int64_t tif;                   /* tokens in flight */
    int64_t held;                  /* room held for further choices not yet submitted (holds' room summed) */
    struct choice_hold *holds;     /* one per request of n choices whose others are not all submitted */
    uint64_t next_id;
    struct moe_sched_stats st;

    /* step scratch (stepping thread only) */
    struct rq *done_head;          /* finished, on_done pending */
    struct rq *grave;              /* finished and reported; freed at step end */
    struct tok_event *tev;         /* the micro-batch's token events, room reserved before it runs */
    int n_tev;
    size_t cap_tev;
    uint32_t n_reserve;            /* reservations made (fault_events_at) */
    uint32_t n_forwards;           /* forward() calls made (fault_device_at) */
    struct rq **dec, **pre;        /* [max_running] decode / prefill requests of this step */
    struct rq **live, **grp, **next; /* [max_running] regroup: runnable now, chosen, chosen next */
    double *cred;                  /* [max_running] */
    int *order;                    /* [max_running] */
    uint64_t *paths;               /* [max_running * n_moe * words] */
    uint64_t *prev_union;          /* [n_moe * words] experts of the last micro-batch */
    bool have_prev;
    /* prefix_cache: what each slot's cache holds, kept when its request ends */
    bool *slot_busy;               /* [max_seqs] */
    int **slot_tok;                /* [max_seqs] the tokens cached (NULL until a request ends there) */
    int *slot_ntok;                /* [max_seqs] */
    uint64_t *slot_freed;          /* [max_seqs] when it was freed (free_clock), 0 = never used */
    uint64_t free_clock;
    uint64_t admit_pass;           /* admit() calls; a request that waits for a prefill skips one */
    struct cpu_pool *pool;         /* the threads that sample a micro-batch's rows (NULL: this thread) */
    int n_pool;
    struct sample_ws *ws;          /* [n_pool] each sampling thread's working memory */
    struct pick *b_pick;           /* [max_batch_tokens] each decode row's next token */
    int *b_tok, *b_seq, *b_pos;    /* [max_batch_tokens] */
    bool *b_want;
    struct rq **b_req;             /* [max_batch_tokens] request of each row */
    bool *b_route;                 /* row's routing becomes the request's recent routing */
    bool *b_dec;                   /* row is a decode token */
    float *logits;                 /* [logits_rows * vocab] */
    int logits_rows;               /* rows logits has room for */
    uint64_t *tmp_all;             /* [words] */
    /* Routing of the micro-batch under way, per MoE layer: of the forward under way (fw_*: staged, since a
     * forward may fail after some layers), and of its forwards that succeeded (mb_*: the one forward, or
     * its requests' forwards one by one after a failure), counted in the stats when it is done. */
    uint64_t *fw_all, *fw_dec;     /* [n_moe * words] experts of all rows / of the decode rows */
    uint64_t *mb_all, *mb_dec;
    bool *fw_seen;                 /* [n_moe] layer reported */
    unsigned char *mb_seen;        /* [n_moe] MB_ROUTED, MB_DECODE */
    int *ids;                      /* [n_experts] prefetch id list */
};

const char *moe_finish_str(enum moe_finish f)
{
    switch (f) {
    case MOE_FINISH_LENGTH: return "length";
    case MOE_FINISH_STOP: return "stop";
    case MOE_FINISH_CANCELLED: return "cancelled";
    case MOE_FINISH_DEADLINE: return "deadline";
    case MOE_FINISH_ERROR: return "error";
    }
    return "unknown";
}

/* ---- request bookkeeping (under s->mu) ---- */

static size_t path_words(const struct moe_sched *s) { return (size_t)s->n_moe * (size_t)s->words; }

static void rq_free(struct rq *r)
{
    if (!r)
        return;
    free(r->tokens);
    free(r->route);
    free(r->fresh);
    free(r->pred);
    free(r->hist);
    free(r->ban);
    moe_json_schema_unref(r->g.json_schema);
    free(r);
}

static void wait_remove(struct moe_sched *s, struct rq *r)
{
    struct rq **pp = &s->wait_head, *prev = NULL;
    while (*pp && *pp != r) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = r->next;
    if (s->wait_tail == r)
        s->wait_tail = prev;
    r->next = NULL;
    s->n_waiting--;
    struct choice_hold *h = r->group;
    r->group = NULL;
    if (h && --h->waiting > 0)
        return; /* another choice of its request still waits: the request keeps its place */
    s->n_queued--;
    if (h && !h->listed)
        free(h);
}

static void active_remove(struct moe_sched *s, struct rq *r)
{
    for (int i = 0; i < s->n_active; i++) {
        if (s->active[i] == r) {
            memmove(s->active + i, s->active + i + 1, sizeof(*s->active) * (size_t)(s->n_active - i - 1));
            s->n_active--;
            return;
        }
    }
}

/* Tokens of r's cache computed so far: its prompt's prefilled part, or its prompt and the generated
 * tokens fed back. */
static int rq_cached(const struct rq *r)
{
    return r->state == RQ_PREFILL ? r->n_prefilled : r->n_prompt + r->n_fed;
}

/* How many of the first lim tokens a and b share. */
static int common_prefix(const int *a, const int *b, int lim)
{
    int n = 0;
    while (n < lim && a[n] == b[n])
        n++;
    return n;
}

/* prefix_cache: remember what r leaves in its slot's cache (nothing after an error: a failed forward
 * may have written part of it): the prompt and the generated tokens fed back so far. */
static void slot_keep(struct moe_sched *s, struct rq *r, bool valid)
{
    if (!s->slot_busy)
        return;
    int slot = r->slot, n = 0;
    s->slot_busy[slot] = false;
    s->slot_freed[slot] = ++s->free_clock;
    if (valid)
        n = rq_cached(r);
    if (n > 0 && !s->slot_tok[slot] && !(s->slot_tok[slot] = malloc(sizeof(int) * (size_t)s->max_ctx)))
        n = 0;
    if (n > s->max_ctx)
        n = s->max_ctx;
    if (n > 0)
        memcpy(s->slot_tok[slot], r->tokens, sizeof(int) * (size_t)n);
    s->slot_ntok[slot] = n;
}

/* prefix_cache: a free slot for r and how many of its prompt tokens the slot's cache already holds:
 * the longest beginning shared with what a slot keeps (the last prompt token is always computed, for
 * its logits), else the slot freed longest ago.  -1 when none is free. */
static int slot_pick(struct moe_sched *s, const struct rq *r, int *keep)
{
    int best = -1, best_n = -1;
    for (int slot = 0; slot < s->be.max_seqs; slot++) {
        if (s->slot_busy[slot])
            continue;
        int lim = r->g.prompt_logprobs ? 0 : r->n_prompt - 1;
        int n = common_prefix(s->slot_tok[slot], r->tokens, lim < s->slot_ntok[slot] ? lim : s->slot_ntok[slot]);
        if (best < 0 || n > best_n || (n == best_n && s->slot_freed[slot] < s->slot_freed[best])) {
            best = slot;
            best_n = n;
        }
    }
    *keep = best_n;
    return best;
}

/* End r with its terminal outcome: leave the queues, free the slot, release
 * its tokens-in-flight, count it, and queue its on_done. */
static void rq_finish(struct moe_sched *s, struct rq *r, enum moe_finish why, enum moe_status st,
                      const char *msg)
{
    if (r->state == RQ_DONE)
        return;
    if (r->state == RQ_WAITING)
        wait_remove(s, r);
    else
        active_remove(s, r);
    if (r->slot >= 0) {
        slot_keep(s, r, why != MOE_FINISH_ERROR);
        s->be.seq_free(s->be.self, r->slot);
        r->slot = -1;
    }
    r->state = RQ_DONE;
    r->why = why;
    r->st = st;
    snprintf(r->msg, sizeof(r->msg), "%s", msg ? msg : "");
    s->tif -= r->need;
    s->st.by_finish[why]++;
    if (why == MOE_FINISH_LENGTH || why == MOE_FINISH_STOP)
        s->st.completed++;
    else if (why == MOE_FINISH_ERROR)
        s->st.failed++;
    else
        s->st.cancelled++;
    r->next = s->done_head;
    s->done_head = r;
    s->n_unreported++;
}

/* The message of a request cancelled while queued or during prefill or decode (where); shutdown: by the
 * drain, saying why (drain_why, else its time ran out). */
static void cancel_msg(const struct moe_sched *s, bool shutdown, const char *where, char *msg, size_t cap)
{
    if (!shutdown)
        snprintf(msg, cap, "cancelled %s", where);
    else if (s->drain_why[0])
        snprintf(msg, cap, "%s; cancelled %s; retry elsewhere", s->drain_why, where);
    else if (s->lost[0])
        snprintf(msg, cap, "shutting down: the device was lost (%.200s); cancelled %s; retry elsewhere", s->lost,
                 where);
    else
        snprintf(msg, cap, "shutting down: the drain timeout passed %s; retry elsewhere", where);
}

/* r has a deadline: any value but 0 (none), a negative one included (moe_now() is never negative, so it
 * has passed). */
static bool rq_has_deadline(const struct rq *r)
{
    return r->g.deadline != 0;
}

/* A cancel that came when r's deadline had passed, or within MOE_SCHED_DEADLINE_SLACK_S of it: r's client
 * gave up at its deadline (not a drain's cancel). */
static bool cancel_expired(const struct rq *r)
{
    return r->cancel && !r->shutdown && rq_has_deadline(r) && r->cancel_at >= r->g.deadline - MOE_SCHED_DEADLINE_SLACK_S;
}

/* Cancellations and expired deadlines of waiting and active requests. */
static void reap(struct moe_sched *s)
{
    double now = moe_now();
    char msg[sizeof(((struct rq *)0)->msg)];
    for (struct rq *r = s->wait_head, *nx; r; r = nx) {
        nx = r->next;
        if (r->cancel && r->fail_st != MOE_OK) {
            rq_finish(s, r, MOE_FINISH_ERROR, r->fail_st, r->fail_msg);
        } else if (r->cancel && r->stop) {
            rq_finish(s, r, MOE_FINISH_STOP, MOE_OK, "stop sequence");
        } else if (r->cancel && !cancel_expired(r)) {
            cancel_msg(s, r->shutdown, "while queued", msg, sizeof(msg));
            rq_finish(s, r, MOE_FINISH_CANCELLED, MOE_ECANCELED, msg);
        } else if (rq_has_deadline(r) && (now >= r->g.deadline || r->cancel)) {
            rq_finish(s, r, MOE_FINISH_DEADLINE, MOE_ETIMEDOUT, "deadline expired while queued");
        }
    }
    for (int i = s->n_active - 1; i >= 0; i--) {
        struct rq *r = s->active[i];
        const char *where = r->state == RQ_PREFILL ? "prefill" : "decode";
        if (r->cancel && r->fail_st != MOE_OK) {
            rq_finish(s, r, MOE_FINISH_ERROR, r->fail_st, r->fail_msg);
        } else if (r->cancel && r->stop) {
            rq_finish(s, r, MOE_FINISH_STOP, MOE_OK, "stop sequence");
        } else if (r->cancel && !cancel_expired(r)) {
            char in[32];
            snprintf(in, sizeof(in), "during %s", where);
            cancel_msg(s, r->shutdown, in, msg, sizeof(msg));
            rq_finish(s, r, MOE_FINISH_CANCELLED, MOE_ECANCELED, msg);
        } else if (rq_has_deadline(r) && (now >= r->g.deadline || r->cancel)) {
            snprintf(msg, sizeof(msg), "deadline expired during %s", where);
            rq_finish(s, r, MOE_FINISH_DEADLINE, MOE_ETIMEDOUT, msg);
        }
    }
}

#define PREFIX_WAIT_MIN 16 /* prompt tokens a prefill under way must share to make a request wait for it */

/* prefix_cache: take a slot for r, starting from what a cache already holds of its prompt: a free
 * slot's (slot_pick), or a running request's, copied (seq_fork).  A request that shares
 * PREFIX_WAIT_MIN or more prompt tokens with a prefill under way, more than any cache holds now,
 * waits for it: -2.  -1 when no slot is free; else the slot, with *keep the prompt tokens already in
 * its cache. */
static int prefix_slot(struct moe_sched *s, struct rq *r, int *keep)
{
    int keep_free, slot = slot_pick(s, r, &keep_free);
    if (slot < 0)
        return -1;
    int lim = r->g.prompt_logprobs ? 0 : r->n_prompt - 1, share = 0, coming = 0;
    struct rq *src = NULL;
    for (int i = 0; s->be.seq_fork && i < s->n_active; i++) {
        struct rq *a = s->active[i];
        if (a->slot < 0 || (a->state != RQ_PREFILL && a->state != RQ_DECODE))
            continue;
        int cached = rq_cached(a), n = common_prefix(a->tokens, r->tokens, lim < cached ? lim : cached);
        if (n > share) {
            share = n;
            src = a;
        }
        if (a->state == RQ_PREFILL) {
            int later = common_prefix(a->tokens, r->tokens, lim < a->n_prompt ? lim : a->n_prompt);
            if (later > coming)
                coming = later;
        }
    }
    int have = share > keep_free ? share : keep_free;
    if (coming >= PREFIX_WAIT_MIN && coming > have)
        return -2;
    *keep = keep_free;
    if (src && share > keep_free) { /* copy the running request's cache into an emptied slot */
        *keep = 0;
        if (s->be.seq_claim(s->be.self, slot, 0) != slot)
            return -1;
        if (s->be.seq_fork(s->be.self, slot, src->slot, share) == MOE_OK)
            *keep = share;
    } else if (s->be.seq_claim(s->be.self, slot, keep_free) != slot) {
        *keep = 0; /* the backend disagrees: an empty slot then */
        slot = s->be.seq_claim(s->be.self, slot, 0);
    }
    if (slot >= 0)
        s->slot_busy[slot] = true;
    return slot;
}

/* Admit waiting requests into free engine slots: highest effective priority
 * first (priority + one level per aging_steps waited), FCFS among equals.  One
 * that waits for a prefill under way (prefix_cache) keeps its turn: the slot it
 * is due stays free for it, and only the slots beyond go to those after it. */
static void admit(struct moe_sched *s)
{
    s->admit_pass++;
    int due = 0; /* slots kept for the requests that wait this pass */
    while (s->n_waiting > 0 && s->n_active + due < s->p.max_running) {
        struct rq *best = NULL;
        int64_t best_key = 0;
        for (struct rq *r = s->wait_head; r; r = r->next) {
            if (r->wait_pass == s->admit_pass)
                continue; /* waits this time for a prefill under way */
            int64_t key = (int64_t)r->g.priority + (int64_t)((s->st.steps - r->submit_step) /
                                                             (uint64_t)s->p.aging_steps);
            if (!best || key > best_key) {
                best = r;
                best_key = key;
            }
        }
        if (!best)
            break;
        int keep = 0, slot = s->slot_busy ? prefix_slot(s, best, &keep) : s->be.seq_alloc(s->be.self);
        if (slot == -2) {
            best->wait_pass = s->admit_pass;
            due++;
            continue;
        }
        if (slot < 0)
            break;
        wait_remove(s, best);
        best->slot = slot;
        best->state = RQ_PREFILL;
        best->n_prefilled = best->n_cached = keep;
        best->chunk_step = s->st.steps;
        s->st.prefix_hit_tokens += (uint64_t)keep;
        s->st.prompt_tokens += (uint64_t)keep;
        s->active[s->n_active++] = best;
    }
}

/* Room for the events of a micro-batch of n rows, made before any of its tokens is taken, so that no
 * token is ever taken without its event: a row gives at most one (a decode row its token; a prompt row
 * the next prompt token's log-probabilities or, the prompt's last row, its first token).  False when
 * out of memory (or at the fault_events_at-th reservation, for tests). */
static bool tev_reserve(struct moe_sched *s, int n)
{
    if (s->p.fault_events_at && ++s->n_reserve == s->p.fault_events_at)
        return false;
    return moe_grow((void **)&s->tev, &s->cap_tev, (size_t)s->n_tev + (size_t)n, sizeof(*s->tev), 64);
}

/* The event of a generated token (prompt_pos 0) or of prompt token prompt_pos's log-probabilities, in
 * the room tev_reserve made. */
/* lp: the token's log-probabilities when already computed (NULL: from logits, when wanted). */
static void tev_push(struct moe_sched *s, struct rq *r, int token, const float *logits, int prompt_pos,
                     const struct moe_token_logprobs *lp)
{
    struct tok_event *ev = &s->tev[s->n_tev++];
    ev->r = r;
    ev->token = token;
    ev->prompt_pos = prompt_pos;
    ev->has_lp = r->g.logprobs || prompt_pos > 0;
    if (ev->has_lp && lp)
        ev->lp = *lp;
    else if (ev->has_lp)
        moe_token_logprobs(logits, s->be.vocab, token, r->g.top_logprobs, &ev->lp);
}

/* Deliver queued on_token and on_done events (without the lock). */
static void dispatch(struct moe_sched *s)
{
    for (int i = 0; i < s->n_tev; i++) {
        struct rq *r = s->tev[i].r;
        if (s->tev[i].prompt_pos > 0) {
            if (r->ev.on_prompt_logprobs)
                r->ev.on_prompt_logprobs(r->ud, r->id, s->tev[i].prompt_pos, &s->tev[i].lp);
            continue;
        }
        if (s->tev[i].has_lp && r->ev.on_logprobs)
            r->ev.on_logprobs(r->ud, r->id, &s->tev[i].lp);
        if (r->ev.on_token)
            r->ev.on_token(r->ud, r->id, s->tev[i].token);
    }
    s->n_tev = 0;
    pthread_mutex_lock(&s->mu);
    struct rq *d = s->done_head;
    s->done_head = NULL;
    pthread_mutex_unlock(&s->mu);
    /* reverse to report in finishing order */
    struct rq *rev = NULL;
    while (d) {
        struct rq *nx = d->next;
        d->next = rev;
        rev = d;
        d = nx;
    }
    while (rev) {
        struct rq *nx = rev->next;
        if (rev->ev.on_done) {
            struct moe_sched_result res = { .why = rev->why, .st = rev->st, .msg = rev->msg,
                                             .n_prompt = rev->n_prompt, .n_generated = rev->n_generated,
                                             .n_cached = rev->n_cached,
                                             .of_request = rev->why == MOE_FINISH_ERROR && rev->of_request };
            rev->ev.on_done(rev->ud, rev->id, &res);
        }
        rev->next = s->grave;
        s->grave = rev;
        rev = nx;
        pthread_mutex_lock(&s->mu);
        s->n_unreported--;
        pthread_cond_broadcast(&s->idle);
        pthread_mutex_unlock(&s->mu);
    }
}

static void free_grave(struct moe_sched *s)
{
    while (s->grave) {
        struct rq *nx = s->grave->next;
        rq_free(s->grave);
        s->grave = nx;
    }
}

/* A sampled token for r (under s->mu): EOS ends it (not delivered), otherwise
 * it is appended, delivered, and max_tokens ends it. */
static bool is_eos(const struct moe_sched *s, int tok)
{
    if (s->be.eos_id >= 0 && tok == s->be.eos_id)
        return true;
    for (int i = 0; i < s->be.n_eos && s->be.eos_ids; i++)
        if (tok == s->be.eos_ids[i])
            return true;
    return false;
}

/* tok is one of r's stop_token_ids. */
static bool is_stop_id(const struct rq *r, int tok)
{
    for (int i = 0; i < r->g.n_stop_ids; i++)
        if (tok == r->g.stop_ids[i])
            return true;
    return false;
}

/* tok, sampled from logits [vocab], continues r (or ends it as EOS or a stop token). */
static void take_token(struct moe_sched *s, struct rq *r, int tok, const float *logits,
                       const struct moe_token_logprobs *lp)
{
    if ((!r->g.ignore_eos && is_eos(s, tok)) || is_stop_id(r, tok)) {
        rq_finish(s, r, MOE_FINISH_STOP, MOE_OK, "");
        return;
    }
    r->tokens[r->n_prompt + r->n_generated++] = tok;
    r->pred_stale = true;
    s->st.generated_tokens++;
    tev_push(s, r, tok, logits, 0, lp);
    if (r->g.json && moe_json_done(&r->json)) /* JSON mode: the object is whole, even at max_tokens */
        rq_finish(s, r, MOE_FINISH_STOP, MOE_OK, "");
    else if (r->n_generated >= r->g.max_tokens)
        rq_finish(s, r, MOE_FINISH_LENGTH, MOE_OK, "");
}

/* ---- routing capture ---- */

struct fwd_ctx {
    struct moe_sched *s;
    int n_rows;
    int row0;      /* the forward's row 0 is the micro-batch's row row0 (s->b_*) */
};

#define MB_ROUTED 1 /* mb_seen: a forward of the micro-batch that succeeded reported the layer */
#define MB_DECODE 2 /* ... one with decode rows */

/* A MoE layer's routing of the forward under way, staged (s->fw_*, the routed rows' fresh) until the
 * forward succeeds: one that fails after some layers leaves no trace. */
static void on_route(void *ud, int layer, int n, const int *ids)
{
    struct fwd_ctx *fc = ud;
    struct moe_sched *s = fc->s;
    if (layer < 0 || layer >= s->be.n_layers || s->moe_ord[layer] < 0 || n != fc->n_rows)
        return;
    int ord = s->moe_ord[layer], k = s->be.top_k, W = s->words;
    size_t at = (size_t)ord * (size_t)W;
    uint64_t *all = s->fw_all + at, *dec = s->fw_dec + at;
    memset(all, 0, sizeof(uint64_t) * (size_t)W);
    memset(dec, 0, sizeof(uint64_t) * (size_t)W);
    s->fw_seen[ord] = true;
    for (int i = 0; i < n; i++) {
        int row = fc->row0 + i;
        uint64_t *rt = s->b_route[row] ? s->b_req[row]->fresh + at : NULL;
        if (rt)
            memset(rt, 0, sizeof(uint64_t) * (size_t)W);
        for (int j = 0; j < k; j++) {
            int e = ids[(size_t)i * (size_t)k + (size_t)j];
            if (e < 0 || e >= s->be.n_experts)
                continue;
            uint64_t bit = 1ull << (e & 63);
            all[e >> 6] |= bit;
            if (s->b_dec[row])
                dec[e >> 6] |= bit;
            if (rt)
                rt[e >> 6] |= bit;
        }
    }
}

/* The forward over rows row0 .. row0 + rows succeeded: its routing joins the micro-batch's (s->mb_*), and
 * becomes each routed request's most recent routing (route, and history when path_decay is set). */
static void commit_forward(struct moe_sched *s, int row0, int rows, bool any_dec)
{
    int W = s->words, E = s->be.n_experts;
    for (int ord = 0; ord < s->n_moe; ord++) {
        if (!s->fw_seen[ord])
            continue;
        size_t at = (size_t)ord * (size_t)W;
        for (int w = 0; w < W; w++) {
            s->mb_all[at + (size_t)w] |= s->fw_all[at + (size_t)w];
            s->mb_dec[at + (size_t)w] |= s->fw_dec[at + (size_t)w];
        }
        s->mb_seen[ord] |= MB_ROUTED | (any_dec ? MB_DECODE : 0);
        for (int row = row0; row < row0 + rows; row++) {
            if (!s->b_route[row])
                continue;
            struct rq *r = s->b_req[row];
            memcpy(r->route + at, r->fresh + at, sizeof(uint64_t) * (size_t)W);
            r->have_route = true;
            if (!r->hist)
                continue;
            float *hs = r->hist + (size_t)ord * (size_t)E;
            for (int e = 0; e < E; e++) {
                hs[e] *= s->p.path_decay;
                if ((r->fresh[at + (size_t)(e >> 6)] >> (e & 63)) & 1u)
                    hs[e] += 1.0f;
            }
        }
    }
}

/* The micro-batch's layer-steps into the stats (s->mu held): one per MoE layer its forwards reported, with
 * the distinct experts of all of them. */
static void count_micro_batch(struct moe_sched *s)
{
    int W = s->words;
    for (int ord = 0; ord < s->n_moe; ord++) {
        if (!(s->mb_seen[ord] & MB_ROUTED))
            continue;
        int all = 0, dec = 0;
        for (int w = 0; w < W; w++) {
            all += __builtin_popcountll(s->mb_all[(size_t)ord * (size_t)W + (size_t)w]);
            dec += __builtin_popcountll(s->mb_dec[(size_t)ord * (size_t)W + (size_t)w]);
        }
        s->st.layer_steps++;
        s->st.experts_activated += (uint64_t)all;
        if (s->mb_seen[ord] & MB_DECODE) {
            s->st.decode_layer_steps++;
            s->st.decode_experts_activated += (uint64_t)dec;
        }
    }
}

/* ---- planning a step ---- */

/* Predicted path of each decode request into r->pred. */
static void predict_paths(struct moe_sched *s, struct rq **v, int n)
{
    size_t pw = path_words(s);
    for (int i = 0; i < n; i++) {
        struct rq *r = v[i];
        bool got = false;
        if (s->p.path_source && s->p.path_source->predict) {
            struct moe_sched_path_query q = {
                .id = r->id, .slot = r->slot, .n_moe_layers = s->n_moe, .n_experts = s->be.n_experts,
                .words_per_layer = s->words, .recent = r->route, .tokens = r->tokens,
                .n_tokens = r->n_prompt + r->n_generated,
            };
            got = s->p.path_source->predict(s->p.path_source->ud, &q, r->pred);
        }
        if (!got && r->hist && r->have_route) {
            /* top_k experts of each layer by decayed count; ties to the lower id */
            memset(r->pred, 0, sizeof(uint64_t) * pw);
            int E = s->be.n_experts;
            for (int l = 0; l < s->n_moe; l++) {
                const float *h = r->hist + (size_t)l * (size_t)E;
                uint64_t *out = r->pred + (size_t)l * (size_t)s->words;
                for (int j = 0; j < s->be.top_k; j++) {
                    int best = -1;
                    for (int e = 0; e < E; e++)
                        if (!((out[e >> 6] >> (e & 63)) & 1u) && h[e] > 0 && (best < 0 || h[e] > h[best]))
                            best = e;
                    if (best < 0)
                        break;
                    out[best >> 6] |= 1ull << (best & 63);
                }
            }
            got = true;
        }
        if (!got)
            memcpy(r->pred, r->route, sizeof(uint64_t) * pw);
    }
}

/* Hint the provider with the predicted experts of the micro-batch `ahead`
 * micro-batches after the one about to run (distance in MoE layers). */
static void prefetch_group(struct moe_sched *s, struct rq **v, int n, int ahead)
{
    struct moe_provider *pv = s->p.provider;
    if (!pv || !pv->ops || !pv->ops->prefetch || n <= 0)
        return;
    int W = s->words, hints = 0;
    for (int layer = 0; layer < s->be.n_layers; layer++) {
        int ord = s->moe_ord[layer];
        if (ord < 0)
            continue;
        memset(s->tmp_all, 0, sizeof(uint64_t) * (size_t)W);
        for (int i = 0; i < n; i++)
            for (int w = 0; w < W; w++)
                s->tmp_all[w] |= v[i]->pred[(size_t)ord * (size_t)W + (size_t)w];
        int m = 0;
        for (int w = 0; w < W; w++)
            for (uint64_t x = s->tmp_all[w]; x; x &= x - 1)
                s->ids[m++] = w * 64 + __builtin_ctzll(x);
        if (m == 0)
            continue;
        pv->ops->prefetch(pv->self, layer, m, s->ids, NULL, ahead * s->n_moe + ord);
        hints += m;
    }
    pthread_mutex_lock(&s->mu);
    s->st.prefetch_hints += (uint64_t)hints;
    pthread_mutex_unlock(&s->mu);
}

static bool sched_is_eos(const void *ud, int id) { return is_eos(ud, id); }

#define PICK_WHOLE (-2) /* pick_token: the guided output is whole before any token (a pattern of "") */

/* The next token of r from its logits row lg, on sampling thread tid.  Runs without the lock: while
 * a step runs, r's sampler, JSON state and tokens are this thread's alone (other threads only
 * change r->state, and r is freed at step end).  -1 with *st and *msg when r cannot go on;
 * PICK_WHOLE when its guide takes nothing more. */
static int pick_token(struct moe_sched *s, struct rq *r, const float *lg, int tid, enum moe_status *st,
                      const char **msg)
{
    const float *from = lg;
    const struct moe_token_bytes *tb = r->g.json;
    struct sample_ws *w = &s->ws[tid];
    bool hold = r->n_generated < r->g.min_tokens; /* min_tokens: no end yet */
    if ((tb || hold) && !w->masked && !(w->masked = malloc(sizeof(float) * (size_t)s->be.vocab))) {
        *st = MOE_ENOMEM;
        *msg = tb ? "JSON mode: out of memory" : "min_tokens: out of memory";
        return -1;
    }
    if (tb) { /* JSON mode: the tokens that keep the output a value's beginning, the rest -inf */
        if (moe_json_done(&r->json))
            return PICK_WHOLE;
        /* with ignore_eos an EOS ends nothing: a token like any other, allowed where its text goes on */
        if (!moe_json_mask(&r->json, tb, lg, s->be.vocab, r->g.ignore_eos ? NULL : sched_is_eos, s, w->masked)) {
            *st = MOE_EINVAL;
            *msg = moe_json_schema_raw(r->g.json_schema)
                       ? "structured output: no token of the vocabulary continues the text its choice, pattern or "
                         "grammar allows (or the grammar recognizer's limits refused every one: docs/api.md)"
                       : "JSON mode: no token of the vocabulary continues the value";
            return -1;
        }
        from = w->masked;
    }
    if (hold) { /* the EOS ids and stop ids -inf, on this request's row alone (after the guide's mask) */
        if (from != w->masked)
            memcpy(w->masked, lg, sizeof(float) * (size_t)s->be.vocab);
        moe_logits_ban(w->masked, s->be.vocab, r->ban, r->n_ban);
        from = w->masked;
    }
    int tok = moe_sampler_sample_buf(&r->sampler, &s->ws[tid].buf, from, s->be.vocab, r->tokens, r->n_prompt,
                                     r->n_prompt + r->n_generated);
    if (tok < 0) {
        *st = MOE_ENOMEM;
        *msg = "sampling: out of memory";
        return -1;
    }
    if (tb && (isnan(from[tok]) || from[tok] == -INFINITY)) {
        /* the sampler found no token to draw (its fallback, the first id, is one the guide may refuse):
         * every token the guide allows has a NaN or -inf logit */
        *st = MOE_ERANGE;
        *msg = "structured output: the model's logits are NaN or -inf for every token the guide allows: no "
               "token can be drawn";
        return -1;
    }
    if (tb)
        moe_json_take(&r->json, tb, tok);
    return tok;
}

/* A picked token (or its failure) taken by r (s->mu held). */
static void apply_pick(struct moe_sched *s, struct rq *r, int tok, enum moe_status st, const char *msg,
                       const float *lg, const struct moe_token_logprobs *lp)
{
    if (tok == PICK_WHOLE)
        rq_finish(s, r, MOE_FINISH_STOP, MOE_OK, "");
    else if (tok < 0) { /* it fails alone */
        r->of_request = st == MOE_EINVAL; /* pick_token's one MOE_EINVAL: its guide allows no token */
        rq_finish(s, r, MOE_FINISH_ERROR, st, msg);
    }
    else
        take_token(s, r, tok, lg, lp); /* log-probabilities from the model's own logits; a whole value stops */
}

/* The next token of r, picked and taken on this thread (s->mu held). */
struct pick_job {
    struct moe_sched *s;
    int n;                         /* decode rows 0..n) */
    struct rq *pf;                 /* and, when not NULL, the request whose prompt this step ended: its
                                      first token from logits row pf_row, into pick n */
    int pf_row;
};

/* Sampling thread tid of nth: every nth row from tid. */
static void pick_rows(void *arg, int tid, int nth)
{
    struct pick_job *j = arg;
    struct moe_sched *s = j->s;
    for (int i = tid; i < j->n + (j->pf != NULL); i += nth) {
        bool first = i == j->n;
        struct rq *r = first ? j->pf : s->b_req[i];
        const float *lg = s->logits + (size_t)(first ? j->pf_row : i) * (size_t)s->be.vocab;
        struct pick *p = &s->b_pick[i];
        if (!first && !s->b_want[i]) { /* a decode row whose request failed on its own (isolate_failure) */
            p->tok = -1;
            continue;
        }
        p->tok = pick_token(s, r, lg, tid, &p->st, &p->msg);
        if (p->tok >= 0 && r->g.logprobs) /* O(vocab) too: here rather than under the lock */
            moe_token_logprobs(lg, s->be.vocab, p->tok, r->g.top_logprobs, &p->lp);
    }
}

/* forward() over rows row0 .. row0 + rows of the micro-batch planned in s->b_*, their logits from
 * row logit_row0 of s->logits on. */
static enum moe_status forward_rows(struct moe_sched *s, int row0, int rows, int logit_row0, bool any_dec)
{
    struct moe_batch b = { .n = rows, .tokens = s->b_tok + row0, .seq = s->b_seq + row0, .pos = s->b_pos + row0,
                           .want_logits = s->b_want + row0 };
    struct fwd_ctx fc = { .s = s, .n_rows = rows, .row0 = row0 };
    memset(s->fw_seen, 0, sizeof(bool) * (size_t)s->n_moe);
    if (s->p.fault_device_at && ++s->n_forwards >= s->p.fault_device_at)
        return moe_errorf(MOE_EDEVLOST, "device error: injected at forward %u (fault_device_at); the device is "
                          "unusable: restart the process", s->n_forwards);
    enum moe_status st = s->be.forward(s->be.self, &b, s->logits + (size_t)logit_row0 * (size_t)s->be.vocab,
                                       on_route, &fc);
    if (st == MOE_OK)
        commit_forward(s, row0, rows, any_dec);
    else if (st != MOE_EDEVLOST && s->be.lost && s->be.lost(s->be.self))
        st = MOE_EDEVLOST; /* a poisoned device fails every later forward too: not rerun, none runs after */
    return st;
}

/* A failed forward that may have failed for one request's rows only: an expert's data (a record failing
 * its checksum, a read error) or a device operation that failed on a device that stays usable (a bad
 * launch configuration or argument, MOE_EDEVICE; a lost device, MOE_EDEVLOST, is not). */
static bool may_isolate(enum moe_status st)
{
    return st == MOE_ECHECKSUM || st == MOE_EIO || st == MOE_EDEVICE;
}

/* After a failed forward (may_isolate): the micro-batch's requests run again, one forward each, and
 * those whose own forward fails end with its error (under s->mu, taken here); *pf_failed says whether
 * pf's chunk did.  A row's values do not depend on the rows beside it, so the cache rows the failed
 * forward wrote are written again alike.  MOE_OK, or the status of a forward that failed otherwise
 * (the device was lost meanwhile), with its message in err: the rest of the micro-batch ends with it. */
static enum moe_status isolate_failure(struct moe_sched *s, int n_dec, struct rq *pf, int chunk, bool *pf_failed,
                                       char *err, size_t cap)
{
    char msg[512];
    for (int u = 0; u < n_dec + (chunk > 0); u++) {
        bool dec = u < n_dec;
        enum moe_status st = dec ? forward_rows(s, u, 1, u, true) : forward_rows(s, n_dec, chunk, n_dec, false);
        if (st == MOE_OK)
            continue;
        snprintf(msg, sizeof(msg), "forward failed: %s", moe_last_error()[0] ? moe_last_error() : moe_status_str(st));
        if (!may_isolate(st)) {
            snprintf(err, cap, "%s", msg);
            return st;
        }
        pthread_mutex_lock(&s->mu);
        rq_finish(s, dec ? s->b_req[u] : pf, MOE_FINISH_ERROR, st, msg);
        pthread_mutex_unlock(&s->mu);
        if (dec)
            s->b_want[u] = false; /* no token is picked for it */
        else
            *pf_failed = true;
    }
    return MOE_OK;
}

/* One forward() over decode requests v[0..nd) plus, when pf != NULL, the next
 * prompt chunk of pf; then sampling and bookkeeping. */
static void run_micro_batch(struct moe_sched *s, struct rq **v, int nd, struct rq *pf)
{
    int n = 0, nwant = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < nd && !s->lost[0]; i++) {
        struct rq *r = v[i];
        if (r->state != RQ_DECODE)
            continue; /* cancelled or ended since the plan */
        s->b_tok[n] = r->tokens[r->n_prompt + r->n_generated - 1];
        s->b_seq[n] = r->slot;
        s->b_pos[n] = r->n_prompt + r->n_generated - 1;
        s->b_want[n] = true;
        s->b_req[n] = r;
        s->b_route[n] = true;
        s->b_dec[n] = true;
        n++;
        nwant++;
    }
    int n_dec = n, chunk = 0;
    bool pf_first = false; /* this chunk ends pf's prompt, and pf generates */
    if (pf && pf->state == RQ_PREFILL && !s->lost[0]) {
        chunk = pf->n_prompt - pf->n_prefilled;
        if (chunk > s->p.prefill_chunk)
            chunk = s->p.prefill_chunk;
        bool last = pf->n_prefilled + chunk == pf->n_prompt;
        pf_first = last && pf->g.max_tokens > 0;
        for (int c = 0; c < chunk; c++) {
            s->b_tok[n] = pf->tokens[pf->n_prefilled + c];
            s->b_seq[n] = pf->slot;
            s->b_pos[n] = pf->n_prefilled + c;
            /* the chunk's last row samples the first token; every row gives the next prompt token's
             * log-probability when the request wants them */
            s->b_want[n] = (last && c == chunk - 1) || pf->g.prompt_logprobs;
            s->b_req[n] = pf;
            s->b_route[n] = c == chunk - 1;
            s->b_dec[n] = false;
            nwant += s->b_want[n];
            n++;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (n == 0)
        return;
    if (!tev_reserve(s, n)) { /* no token can be taken without its event: the micro-batch's requests fail */
        pthread_mutex_lock(&s->mu);
        for (int i = 0; i < n; i++)
            rq_finish(s, s->b_req[i], MOE_FINISH_ERROR, MOE_ENOMEM,
                      "scheduler: out of memory for the token events of a forward pass");
        pthread_mutex_unlock(&s->mu);
        return;
    }
    if (nwant > s->logits_rows) { /* a prompt chunk whose every row's logits are wanted */
        float *l = realloc(s->logits, (size_t)nwant * (size_t)s->be.vocab * sizeof(float));
        if (!l) { /* only the request that asked fails; the decode rows run again next step */
            pthread_mutex_lock(&s->mu);
            if (pf)
                rq_finish(s, pf, MOE_FINISH_ERROR, MOE_ENOMEM, "out of memory for the prompt's logits");
            pthread_mutex_unlock(&s->mu);
            return;
        }
        s->logits = l;
        s->logits_rows = nwant;
    }

    memset(s->mb_seen, 0, (size_t)s->n_moe);
    memset(s->mb_all, 0, sizeof(uint64_t) * path_words(s));
    memset(s->mb_dec, 0, sizeof(uint64_t) * path_words(s));
    enum moe_status st = forward_rows(s, 0, n, 0, n_dec > 0);
    char err[512];
    bool pf_failed = false;
    if (st != MOE_OK)
        snprintf(err, sizeof(err), "forward failed: %s", moe_last_error()[0] ? moe_last_error() : moe_status_str(st));
    if (may_isolate(st) && n_dec + (chunk > 0) > 1) {
        /* those that failed alone have ended; the others go on (MOE_OK), or all end (a lost device) */
        st = isolate_failure(s, n_dec, pf, chunk, &pf_failed, err, sizeof(err));
        pf_first = pf_first && !pf_failed;
    }

    if (st == MOE_OK && (n_dec > 0 || pf_first)) { /* the next tokens, in parallel and unlocked */
        struct pick_job job = { s, n_dec, pf_first ? pf : NULL,
                                pf_first && pf->g.prompt_logprobs ? n_dec + chunk - 1 : n_dec };
        cpu_pool_run(s->pool, pick_rows, &job);
    }

    pthread_mutex_lock(&s->mu);
    s->st.forwards++;
    count_micro_batch(s);
    if (st != MOE_OK) {
        for (int i = 0; i < n; i++)
            rq_finish(s, s->b_req[i], MOE_FINISH_ERROR, st, err);
        if (st == MOE_EDEVLOST) /* a lost device fails every later forward too: none runs */
            snprintf(s->lost, sizeof(s->lost), "%s", err);
        pthread_mutex_unlock(&s->mu);
        return;
    }
    for (int i = 0; i < n_dec; i++) /* a row that failed on its own (isolate_failure) computed nothing */
        s->st.decode_tokens += s->b_want[i];
    int row = 0;
    for (int i = 0; i < n_dec; i++, row++) {
        struct rq *r = s->b_req[i];
        if (r->state != RQ_DECODE) /* cancelled since the plan: its pick is dropped */
            continue;
        r->n_fed = r->n_generated; /* the row fed its latest token back */
        apply_pick(s, r, s->b_pick[i].tok, s->b_pick[i].st, s->b_pick[i].msg,
                   s->logits + (size_t)row * (size_t)s->be.vocab,
                   s->b_pick[i].tok >= 0 && r->g.logprobs ? &s->b_pick[i].lp : NULL);
    }
    if (chunk > 0 && !pf_failed) {
        s->st.prefill_chunks++;
        s->st.prompt_tokens += (uint64_t)chunk;
        if (pf->g.prompt_logprobs && pf->state == RQ_PREFILL) {
            for (int c = 0; c < chunk; c++) { /* row c predicts prompt token n_prefilled + c + 1 */
                int p = pf->n_prefilled + c + 1;
                if (p < pf->n_prompt)
                    tev_push(s, pf, pf->tokens[p], s->logits + (size_t)(row + c) * (size_t)s->be.vocab, p, NULL);
            }
            row += chunk - 1;
        }
        pf->n_prefilled += chunk;
        pf->n_chunks++;
        pf->chunk_step = s->st.steps;
        if (pf->n_prefilled == pf->n_prompt && pf->state == RQ_PREFILL) {
            if (pf->g.max_tokens == 0) { /* the prompt's log-probabilities only */
                rq_finish(s, pf, MOE_FINISH_LENGTH, MOE_OK, "");
            } else { /* its first token, picked with the decode rows' */
                pf->state = RQ_DECODE;
                pf->credit = 1.0;
                const struct pick *p = &s->b_pick[n_dec];
                apply_pick(s, pf, p->tok, p->st, p->msg, s->logits + (size_t)row * (size_t)s->be.vocab,
                           p->tok >= 0 && pf->g.logprobs ? &p->lp : NULL);
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
}

/* After a micro-batch: remember its experts (ordering the next one), end
 * what was cancelled meanwhile, deliver events. */
static void after_micro_batch(struct moe_sched *s, struct rq **v, int size)
{
    if (size > 0) {
        size_t pw = path_words(s);
        memset(s->prev_union, 0, sizeof(uint64_t) * pw);
        for (int i = 0; i < size; i++)
            for (size_t w = 0; w < pw; w++)
                s->prev_union[w] |= v[i]->route[w];
        s->have_prev = true;
    }
    pthread_mutex_lock(&s->mu);
    reap(s);
    pthread_mutex_unlock(&s->mu);
    dispatch(s);
}

/* The decode requests in the order of s->dec, cut into micro-batches; with
 * lookahead, their paths are predicted by the caller. */
static void run_in_order(struct moe_sched *s, int nd, int np, int ng, int n_mb)
{
    int mb = s->p.micro_batch;
    for (int g = 0; g < n_mb; g++) {
        struct rq **v = s->dec + (size_t)g * (size_t)mb;
        int size = g < ng ? moe_regroup_size(nd, mb, g) : 0;
        struct rq *pf = g < np ? s->pre[g] : NULL;
        /* lookahead: what the next micro-batches will need */
        for (int a = 1; a <= s->p.lookahead && g + a < ng; a++)
            prefetch_group(s, s->dec + (size_t)(g + a) * (size_t)mb, moe_regroup_size(nd, mb, g + a), a);
        run_micro_batch(s, v, size, pf);
        after_micro_batch(s, v, size);
    }
}

/* FCFS: the decode requests in admission order, cut into micro-batches. */
static void step_fcfs(struct moe_sched *s, int nd, int np, int ng, int n_mb)
{
    if (s->p.lookahead >= 0 && nd > 0)
        predict_paths(s, s->dec, nd);
    run_in_order(s, nd, np, ng, n_mb);
}

/* Regroup with strict steps (regroup_lag < 0): every decode request runs once
 * per step; the step's requests are partitioned into micro-batches by
 * predicted-path overlap and the micro-batches chained by shared experts. */
static void step_partition(struct moe_sched *s, int nd, int np, int ng, int n_mb)
{
    if (nd > 0) {
        predict_paths(s, s->dec, nd);
        size_t pw = path_words(s);
        for (int i = 0; i < nd; i++)
            memcpy(s->paths + (size_t)i * pw, s->dec[i]->pred, sizeof(uint64_t) * pw);
        struct moe_regroup_shape sh = { s->n_moe, s->be.n_experts, s->words };
        moe_regroup_plan(&sh, nd, s->paths, s->p.micro_batch, s->have_prev ? s->prev_union : NULL, s->order);
        for (int i = 0; i < nd; i++)
            s->live[i] = s->dec[s->order[i]];
        memcpy(s->dec, s->live, sizeof(*s->dec) * (size_t)nd);
    }
    run_in_order(s, nd, np, ng, n_mb); /* the paths just predicted serve the lookahead too */
}

/* Rolling selection over the runnable requests r[0..n): n_sel chosen into out. */
static int select_group(struct moe_sched *s, struct rq **r, int n, const double *cred, int size, struct rq **out)
{
    size_t pw = path_words(s);
    for (int i = 0; i < n; i++)
        memcpy(s->paths + (size_t)i * pw, r[i]->pred, sizeof(uint64_t) * pw);
    struct moe_regroup_shape sh = { s->n_moe, s->be.n_experts, s->words };
    int m = moe_regroup_select(&sh, n, s->paths, cred, size, s->p.regroup_lag, s->p.regroup_lead,
                               s->have_prev ? s->prev_union : NULL, s->order);
    for (int j = 0; j < m; j++)
        out[j] = r[s->order[j]];
    return m;
}

/* Fair share for a micro-batch of m chosen by select_group (indices order[0..m) of the n runnable
 * requests): every runnable request is owed m / n, the chosen pay 1. */
static void charge_group(double *cred, int n, const int *order, int m)
{
    double share = (double)m / (double)n;
    for (int i = 0; i < n; i++)
        cred[i] += share;
    for (int j = 0; j < m; j++)
        cred[order[j]] -= 1.0;
}

/* Regroup: every forward picks its micro-batch from all runnable requests by
 * predicted routing-path overlap, within a fair-share bound (regroup_lag /
 * regroup_lead tokens), so requests whose next tokens share experts run
 * together; a step still computes as many decode tokens as FCFS would. */
static void step_regroup(struct moe_sched *s, int nd, int np, int ng, int n_mb)
{
    for (int g = 0; g < n_mb; g++) {
        int n_live = 0;
        for (int i = 0; i < nd; i++)
            if (s->dec[i]->state == RQ_DECODE)
                s->live[n_live++] = s->dec[i];
        int size = g < ng ? moe_regroup_size(nd, s->p.micro_batch, g) : 0;
        if (size > n_live)
            size = n_live;
        int m = 0;
        if (size > 0) {
            int n_stale = 0;
            for (int i = 0; i < n_live; i++)
                if (s->live[i]->pred_stale) {
                    s->grp[n_stale++] = s->live[i];
                    s->live[i]->pred_stale = false;
                }
            if (n_stale > 0)
                predict_paths(s, s->grp, n_stale);
            for (int i = 0; i < n_live; i++)
                s->cred[i] = s->live[i]->credit;
            m = select_group(s, s->live, n_live, s->cred, size, s->grp);
            charge_group(s->cred, n_live, s->order, m);
            for (int i = 0; i < n_live; i++)
                s->live[i]->credit = s->cred[i];
            /* lookahead: the next micro-batches as they would be chosen now, each
             * charged to the credits the one after it is chosen on */
            for (int a = 1; a <= s->p.lookahead && g + a < ng; a++) {
                int nn = select_group(s, s->live, n_live, s->cred, moe_regroup_size(nd, s->p.micro_batch, g + a),
                                      s->next);
                prefetch_group(s, s->next, nn, a);
                charge_group(s->cred, n_live, s->order, nn);
            }
        }
        struct rq *pf = g < np ? s->pre[g] : NULL;
        run_micro_batch(s, s->grp, m, pf);
        after_micro_batch(s, s->grp, m);
    }
}

/* Prompt chunk order (s->mu held): a goes before b, which was admitted before it (else equal ones keep
 * admission order). */
static bool prefill_before(const struct moe_sched *s, const struct rq *a, const struct rq *b)
{
    uint64_t lim = (uint64_t)s->p.aging_steps;
    bool a_over = s->st.steps - a->chunk_step >= lim, b_over = s->st.steps - b->chunk_step >= lim;
    if (a_over || b_over)
        return a_over && (!b_over || a->chunk_step < b->chunk_step);
    return a->n_chunks < b->n_chunks;
}

enum moe_status moe_sched_step(struct moe_sched *s)
{
    /* testing: while hold_path exists requests are admitted, none computed (as with none to run) */
    bool held = s->p.hold_path && access(s->p.hold_path, F_OK) == 0;
    pthread_mutex_lock(&s->mu);
    reap(s);
    if (!s->lost[0])
        admit(s);
    int nd = 0, np = 0;
    for (int i = 0; i < s->n_active && !s->lost[0] && !held; i++) {
        struct rq *r = s->active[i];
        if (r->state == RQ_DECODE)
            s->dec[nd++] = r;
        else if (r->state == RQ_PREFILL)
            s->pre[np++] = r;
    }
    /* prompt chunks go round-robin: fewest chunks received first, then
     * admission order, so a short prompt never waits for a long one; but a
     * prompt passed over aging_steps steps in a row goes first (the longest
     * passed over first), so a stream of new short prompts, each with fewer
     * chunks, cannot starve a long one */
    for (int i = 1; i < np; i++) {
        struct rq *r = s->pre[i];
        int j = i;
        for (; j > 0 && prefill_before(s, r, s->pre[j - 1]); j--)
            s->pre[j] = s->pre[j - 1];
        s->pre[j] = r;
    }
    if (nd == 0 && np == 0) {
        pthread_mutex_unlock(&s->mu);
        dispatch(s);
        free_grave(s);
        return MOE_ENOENT;
    }
    s->st.steps++;
    pthread_mutex_unlock(&s->mu);
    dispatch(s);

    int mb = s->p.micro_batch;
    int ng = moe_regroup_count(nd, mb);
    /* Forwards this step: the decode micro-batches, or while prompts wait, as
     * many as a full step has (max_running / micro_batch), each carrying at most
     * one prompt chunk: prefill fills idle capacity but never lengthens a step
     * beyond a full one. */
    int full = moe_regroup_count(s->p.max_running, mb);
    int n_mb = ng;
    if (np > n_mb)
        n_mb = np < full ? np : full;
    if (n_mb < 1)
        n_mb = 1;
    if (s->p.grouping == MOE_GROUP_REGROUP && s->p.regroup_lag < 0)
        step_partition(s, nd, np, ng, n_mb);
    else if (s->p.grouping == MOE_GROUP_REGROUP)
        step_regroup(s, nd, np, ng, n_mb);
    else
        step_fcfs(s, nd, np, ng, n_mb);
    free_grave(s);
    return MOE_OK;
}

/* ---- thread, submit, cancel, drain ---- */

static void *sched_main(void *arg)
{
    struct moe_sched *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        if (s->n_active == 0 && s->n_waiting == 0) {
            pthread_cond_wait(&s->wake, &s->mu);
            continue;
        }
        pthread_mutex_unlock(&s->mu);
        enum moe_status st = moe_sched_step(s);
        pthread_mutex_lock(&s->mu);
        if (st == MOE_ENOENT && !s->stop) {
            /* waiting requests but no free slot: nap until woken or 10 ms */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 10 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&s->wake, &s->mu, &ts);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

enum moe_status moe_sched_start(struct moe_sched *s)
{
    if (!s)
        return moe_errorf(MOE_EINVAL, "scheduler: start: NULL scheduler");
    pthread_mutex_lock(&s->mu);
    if (s->started) {
        pthread_mutex_unlock(&s->mu);
        return moe_errorf(MOE_EINVAL, "scheduler: start: the scheduler thread is already running");
    }
    int rc = pthread_create(&s->thread, NULL, sched_main, s);
    if (rc == 0)
        s->started = true;
    pthread_mutex_unlock(&s->mu);
    if (rc != 0)
        return moe_errorf(MOE_ENOMEM, "scheduler: start: pthread_create failed (%s)", strerror(rc));
    return MOE_OK;
}

/* Hold h ended (s->mu held): its room given back, h unlisted, and freed unless a choice of its request
 * waits (wait_remove frees it when the last one leaves the queue). */
static void hold_drop(struct moe_sched *s, struct choice_hold *h)
{
    struct choice_hold **pp = &s->holds;
    while (*pp != h)
        pp = &(*pp)->next;
    *pp = h->next;
    s->held -= h->room;
    h->room = 0;
    h->listed = false;
    if (h->waiting == 0)
        free(h);
}

/* The hold of the first choice whose id is id (s->mu held), or NULL. */
static struct choice_hold *hold_find(const struct moe_sched *s, uint64_t id)
{
    struct choice_hold *h = s->holds;
    while (h && h->id != id)
        h = h->next;
    return h;
}

void moe_sched_hold_release(struct moe_sched *s, uint64_t id)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    struct choice_hold *h = hold_find(s, id);
    if (h)
        hold_drop(s, h);
    pthread_mutex_unlock(&s->mu);
}

/* The tokens in flight a submission's admission checks: its own (prompt + max_tokens), or, for the first
 * of n choices, all of theirs (choices_need when their prompts differ; never less than its own). */
static int64_t all_need(const struct moe_gen_params *g, int n_prompt)
{
    int64_t one = (int64_t)n_prompt + g->max_tokens;
    if (g->more_choice || g->choices <= 1)
        return one;
    if (g->choices_need > 0)
        return g->choices_need > one ? g->choices_need : one;
    return one * g->choices;
}

enum moe_status moe_sched_submit(struct moe_sched *s, const int *prompt, int n_prompt,
                                 const struct moe_gen_params *g,
                                 const struct moe_sched_events *ev, void *ud, uint64_t *id)
{
    enum moe_status st = MOE_OK;
    if (!s || !g)
        return moe_errorf(MOE_EINVAL, "scheduler: submit: NULL %s", s ? "generation params" : "scheduler");
    if (n_prompt < 1 || !prompt)
        st = moe_errorf(MOE_EINVAL, "request: empty prompt (n_prompt = %d): send at least one token", n_prompt);
    else if (g->max_tokens < (g->prompt_logprobs ? 0 : 1))
        st = moe_errorf(MOE_EINVAL, "request: max_tokens = %d: must be >= %d", g->max_tokens,
                        g->prompt_logprobs ? 0 : 1);
    else if (n_prompt > s->p.max_prompt)
        st = moe_errorf(MOE_ERANGE, "request: prompt of %d tokens exceeds max-prompt = %d", n_prompt,
                        s->p.max_prompt);
    else if (g->max_tokens > s->p.max_output)
        st = moe_errorf(MOE_ERANGE, "request: max_tokens = %d exceeds max-output = %d", g->max_tokens,
                        s->p.max_output);
    else if ((int64_t)n_prompt + g->max_tokens > s->max_ctx)
        st = moe_errorf(MOE_ERANGE, "request: prompt (%d) + max_tokens (%d) = %lld exceeds the context of %d tokens",
                        n_prompt, g->max_tokens, (long long)n_prompt + g->max_tokens, s->max_ctx);
    else if (all_need(g, n_prompt) > s->p.max_tokens_in_flight)
        st = g->choices > 1 && g->choices_need > 0
                 ? moe_errorf(MOE_ERANGE, "request: %d choices need %lld tokens in flight (each its prompt + "
                              "max_tokens %d), more than max-tokens-in-flight = %lld; ask for fewer prompts, choices or tokens",
                              g->choices, (long long)all_need(g, n_prompt), g->max_tokens,
                              (long long)s->p.max_tokens_in_flight)
             : g->choices > 1
                 ? moe_errorf(MOE_ERANGE, "request: %d choices of prompt (%d) + max_tokens (%d) exceed "
                              "max-tokens-in-flight = %lld; ask for fewer choices or tokens",
                              g->choices, n_prompt, g->max_tokens, (long long)s->p.max_tokens_in_flight)
                 : moe_errorf(MOE_ERANGE, "request: prompt (%d) + max_tokens (%d) exceeds max-tokens-in-flight = %lld",
                              n_prompt, g->max_tokens, (long long)s->p.max_tokens_in_flight);
    else if ((st = moe_sampling_validate(&g->sampling, s->be.vocab)) != MOE_OK)
        st = moe_error_prefix(st, "request"); /* the message begins "sampling: " */
    else if (g->deadline != g->deadline)
        st = moe_errorf(MOE_EINVAL, "request: deadline is NaN");
    else if (g->logprobs && (g->top_logprobs < 0 || g->top_logprobs > MOE_MAX_TOP_LOGPROBS))
        st = moe_errorf(MOE_ERANGE, "request: top_logprobs = %d is out of range [0, %d]", g->top_logprobs,
                        MOE_MAX_TOP_LOGPROBS);
    else if (g->n_stop_ids < 0 || g->n_stop_ids > MOE_MAX_STOP_TOKEN_IDS)
        st = moe_errorf(MOE_EINVAL, "request: stop_token_ids has %d ids, at most %d are accepted", g->n_stop_ids,
                        MOE_MAX_STOP_TOKEN_IDS);
    else if (g->min_tokens < 0 || g->min_tokens > g->max_tokens)
        st = moe_errorf(MOE_EINVAL, "request: min_tokens = %d must be in [0, max_tokens = %d]", g->min_tokens,
                        g->max_tokens);
    for (int i = 0; st == MOE_OK && i < g->n_stop_ids; i++)
        if (g->stop_ids[i] < 0 || g->stop_ids[i] >= s->be.vocab)
            st = moe_errorf(MOE_ERANGE, "request: stop_token_ids[%d] = %d is outside the vocabulary [0, %d)", i,
                            (int)g->stop_ids[i], s->be.vocab);
    if (st == MOE_OK) {
        for (int i = 0; i < n_prompt; i++)
            if (prompt[i] < 0 || prompt[i] >= s->be.vocab) {
                st = moe_errorf(MOE_ERANGE, "request: prompt token %d at index %d is outside the vocabulary [0, %d)",
                                prompt[i], i, s->be.vocab);
                break;
            }
    }
    if (st != MOE_OK) {
        pthread_mutex_lock(&s->mu);
        s->st.rejected++;
        pthread_mutex_unlock(&s->mu);
        return st;
    }

    struct rq *r = calloc(1, sizeof(*r));
    size_t pw = path_words(s);
    if (r) {
        r->tokens = malloc(sizeof(int) * ((size_t)n_prompt + (size_t)g->max_tokens));
        r->route = calloc(pw ? pw : 1, sizeof(uint64_t));
        r->fresh = calloc(pw ? pw : 1, sizeof(uint64_t));
        r->pred = calloc(pw ? pw : 1, sizeof(uint64_t));
    }
    if (r && g->min_tokens > 0) { /* what min_tokens masks: every EOS id, ignore_eos or not (vLLM), the stop ids */
        r->ban = malloc(sizeof(int) * (size_t)(1 + (s->be.eos_ids ? s->be.n_eos : 0) + g->n_stop_ids));
        if (r->ban && s->be.eos_id >= 0)
            r->ban[r->n_ban++] = s->be.eos_id;
        for (int i = 0; r->ban && s->be.eos_ids && i < s->be.n_eos; i++)
            r->ban[r->n_ban++] = s->be.eos_ids[i];
        for (int i = 0; r->ban && i < g->n_stop_ids; i++)
            r->ban[r->n_ban++] = g->stop_ids[i];
    }
    if (r && s->p.path_decay > 0)
        r->hist = calloc((size_t)(s->n_moe > 0 ? s->n_moe : 1) * (size_t)(s->be.n_experts > 0 ? s->be.n_experts : 1),
                         sizeof(float));
    struct choice_hold *hold = NULL;
    if (!g->more_choice && g->choices > 1)
        hold = calloc(1, sizeof(*hold));
    if (!r || !r->tokens || !r->route || !r->fresh || !r->pred || (s->p.path_decay > 0 && !r->hist) ||
        (g->min_tokens > 0 && !r->ban) || (!g->more_choice && g->choices > 1 && !hold)) {
        free(hold);
        rq_free(r);
        pthread_mutex_lock(&s->mu);
        s->st.rejected++;
        pthread_mutex_unlock(&s->mu);
        return moe_errorf(MOE_ENOMEM, "request: out of memory for a %d-token prompt", n_prompt);
    }
    memcpy(r->tokens, prompt, sizeof(int) * (size_t)n_prompt);
    r->n_prompt = n_prompt;
    r->need = (int64_t)n_prompt + g->max_tokens;
    r->g = *g;
    if (ev)
        r->ev = *ev;
    r->ud = ud;
    moe_sampler_init(&r->sampler, &g->sampling);
    moe_json_schema_ref(r->g.json_schema);
    if (g->json_after_think)
        moe_json_init_after_think(&r->json, r->g.json_schema, g->think_opened);
    else
        moe_json_init(&r->json, r->g.json_schema);
    r->state = RQ_WAITING;
    r->slot = -1;

    pthread_mutex_lock(&s->mu);
    /* a further choice takes room its first holds for it; what it needs beyond that (none held: the hold
     * was given back) is checked as a request's own */
    struct choice_hold *from = g->more_choice ? hold_find(s, g->hold) : NULL;
    int64_t take = from ? (from->room < r->need ? from->room : r->need) : 0;
    if (s->draining || s->stop) /* not "retry later" (MOE_EBUSY): this scheduler takes no more */
        st = moe_errorf(MOE_ECANCELED, "scheduler: not accepting requests (draining for shutdown); retry elsewhere");
    else if (!from && s->n_queued >= s->p.max_queued)
        st = moe_errorf(MOE_EBUSY, "scheduler: queue full: %d requests waiting (max-queued = %d); retry later",
                        s->n_queued, s->p.max_queued);
    else if (g->more_choice && s->tif + s->held + r->need - take > s->p.max_tokens_in_flight)
        st = moe_errorf(MOE_EBUSY,
                        "scheduler: tokens in flight %lld + this choice's %lld (prompt %d + max_tokens %d) not "
                        "held for it exceed max-tokens-in-flight = %lld; retry later",
                        (long long)(s->tif + s->held), (long long)(r->need - take), n_prompt, g->max_tokens,
                        (long long)s->p.max_tokens_in_flight);
    else if (!g->more_choice && s->tif + s->held + all_need(g, n_prompt) > s->p.max_tokens_in_flight)
        st = moe_errorf(MOE_EBUSY,
                        "scheduler: tokens in flight %lld + this request's %lld (%s %d + max_tokens %d, "
                        "%d choice%s) exceed max-tokens-in-flight = %lld; retry later",
                        (long long)(s->tif + s->held), (long long)all_need(g, n_prompt),
                        g->choices > 1 && g->choices_need > 0 ? "first prompt" : "prompt", n_prompt,
                        g->max_tokens, g->choices > 1 ? g->choices : 1, g->choices > 1 ? "s" : "",
                        (long long)s->p.max_tokens_in_flight);
    if (st != MOE_OK) {
        s->st.rejected++;
        pthread_mutex_unlock(&s->mu);
        free(hold);
        rq_free(r);
        return st;
    }
    r->id = ++s->next_id;
    r->submit_step = s->st.steps;
    if (s->wait_tail)
        s->wait_tail->next = r;
    else
        s->wait_head = r;
    s->wait_tail = r;
    s->n_waiting++;
    s->tif += r->need;
    if (hold) { /* hold room for the others until they come */
        hold->id = r->id;
        hold->room = all_need(g, n_prompt) - r->need;
        hold->left = g->choices - 1;
        hold->listed = true;
        hold->next = s->holds;
        s->holds = hold;
        s->held += hold->room;
    }
    /* the request takes one place in max_queued while any choice of it waits */
    r->group = from ? from : hold;
    if (!r->group || r->group->waiting++ == 0)
        s->n_queued++;
    if (from) { /* it takes room its first choice held for it; the last of them ends the hold */
        from->room -= take;
        s->held -= take;
        if (--from->left == 0)
            hold_drop(s, from);
    }
    s->st.accepted++;
    if (id)
        *id = r->id;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    return MOE_OK;
}

/* End request id at the next step: cancelled, finished by a stop sequence (stop), or failed with
 * fail_st and fail_msg (fail_st != MOE_OK). */
static enum moe_status end_early(struct moe_sched *s, uint64_t id, bool stop, enum moe_status fail_st,
                                 const char *fail_msg, const char *what)
{
    if (!s)
        return moe_errorf(MOE_EINVAL, "scheduler: %s: NULL scheduler", what);
    struct rq *found = NULL;
    pthread_mutex_lock(&s->mu);
    for (struct rq *r = s->wait_head; r && !found; r = r->next)
        if (r->id == id)
            found = r;
    for (int i = 0; i < s->n_active && !found; i++)
        if (s->active[i]->id == id)
            found = s->active[i];
    if (found) {
        if (!found->cancel)
            found->cancel_at = moe_now();
        found->cancel = true;
        found->stop = stop;
        found->fail_st = fail_st;
        snprintf(found->fail_msg, sizeof(found->fail_msg), "%s", fail_msg ? fail_msg : "");
        pthread_cond_signal(&s->wake);
    }
    pthread_mutex_unlock(&s->mu);
    if (!found)
        return moe_errorf(MOE_ENOENT, "scheduler: %s: no queued or running request with id %llu", what,
                          (unsigned long long)id);
    return MOE_OK;
}

enum moe_status moe_sched_cancel(struct moe_sched *s, uint64_t id)
{
    return end_early(s, id, false, MOE_OK, NULL, "cancel");
}

enum moe_status moe_sched_finish(struct moe_sched *s, uint64_t id)
{
    return end_early(s, id, true, MOE_OK, NULL, "finish");
}

enum moe_status moe_sched_fail(struct moe_sched *s, uint64_t id, enum moe_status st, const char *msg)
{
    return end_early(s, id, false, st != MOE_OK ? st : MOE_EINVAL, msg, "fail");
}

void moe_sched_reply_failed(struct moe_sched *s, enum moe_finish why)
{
    if (!s || (why != MOE_FINISH_LENGTH && why != MOE_FINISH_STOP))
        return;
    pthread_mutex_lock(&s->mu);
    if (s->st.completed > 0 && s->st.by_finish[why] > 0) {
        s->st.completed--;
        s->st.by_finish[why]--;
        s->st.failed++;
        s->st.by_finish[MOE_FINISH_ERROR]++;
    }
    pthread_mutex_unlock(&s->mu);
}

void moe_sched_count_dropped(struct moe_sched *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->st.accepted++;
    s->st.cancelled++;
    s->st.by_finish[MOE_FINISH_CANCELLED]++;
    pthread_mutex_unlock(&s->mu);
}

/* The drain's time ran out: cancel everything, saying why. */
static void cancel_all_locked(struct moe_sched *s)
{
    for (struct rq *r = s->wait_head; r; r = r->next)
        r->cancel = r->shutdown = true;
    for (int i = 0; i < s->n_active; i++)
        s->active[i]->cancel = s->active[i]->shutdown = true;
}

enum moe_status moe_sched_drain(struct moe_sched *s, double timeout_s)
{
    return moe_sched_drain_why(s, timeout_s, NULL);
}

enum moe_status moe_sched_drain_why(struct moe_sched *s, double timeout_s, const char *why)
{
    if (!s)
        return moe_errorf(MOE_EINVAL, "scheduler: drain: NULL scheduler");
    double t0 = moe_now(), until = t0 + (timeout_s > 0 ? timeout_s : 0);
    pthread_mutex_lock(&s->mu);
    s->draining = true;
    snprintf(s->drain_why, sizeof(s->drain_why), "%s", why ? why : "");
    pthread_cond_broadcast(&s->wake);
    if (s->started) {
        /* after a lost device nothing runs: what is left is cancelled at once */
        while (s->n_waiting + s->n_active + s->n_unreported > 0 && moe_now() < until &&
               !(s->lost[0] && s->n_waiting + s->n_active > 0)) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 20 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&s->idle, &s->mu, &ts);
        }
        if (s->n_waiting + s->n_active > 0) {
            MOE_INFO("scheduler: drain: cancelling %d requests after %.1f s", s->n_waiting + s->n_active,
                     moe_now() - t0); /* the time waited: a lost device ends the wait before the timeout */
            cancel_all_locked(s);
            pthread_cond_broadcast(&s->wake);
            while (s->n_waiting + s->n_active + s->n_unreported > 0)
                pthread_cond_wait(&s->idle, &s->mu);
        }
        pthread_mutex_unlock(&s->mu);
        return MOE_OK;
    }
    pthread_mutex_unlock(&s->mu);
    /* no scheduler thread: step on the caller's thread */
    while (timeout_s > 0 && moe_now() < until)
        if (moe_sched_step(s) == MOE_ENOENT)
            break;
    pthread_mutex_lock(&s->mu);
    cancel_all_locked(s);
    pthread_mutex_unlock(&s->mu);
    moe_sched_step(s);
    return MOE_OK;
}

void moe_sched_stats(struct moe_sched *s, struct moe_sched_stats *out)
{
    if (!s || !out)
        return;
    pthread_mutex_lock(&s->mu);
    *out = s->st;
    out->running = s->n_active;
    out->waiting = s->n_waiting;
    out->tokens_in_flight = s->tif;
    pthread_mutex_unlock(&s->mu);
}

/* ---- create / destroy ---- */

void moe_sched_destroy(struct moe_sched *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->wake);
    bool started = s->started;
    pthread_mutex_unlock(&s->mu);
    if (started)
        pthread_join(s->thread, NULL);
    /* end what is left on this thread: exactly one on_done each */
    pthread_mutex_lock(&s->mu);
    while (s->wait_head)
        rq_finish(s, s->wait_head, MOE_FINISH_CANCELLED, MOE_ECANCELED, "scheduler shut down");
    while (s->n_active > 0)
        rq_finish(s, s->active[0], MOE_FINISH_CANCELLED, MOE_ECANCELED, "scheduler shut down");
    while (s->holds)
        hold_drop(s, s->holds);
    pthread_mutex_unlock(&s->mu);
    dispatch(s);
    free_grave(s);
    if (s->adapter_free)
        s->adapter_free(s->adapter);
    pthread_cond_destroy(&s->wake);
    pthread_cond_destroy(&s->idle);
    pthread_mutex_destroy(&s->mu);
    free(s->moe_ord);
    free(s->active);
    free(s->tev);
    free(s->dec);
    free(s->pre);
    free(s->live);
    free(s->grp);
    free(s->next);
    free(s->cred);
    free(s->order);
    free(s->paths);
    free(s->prev_union);
    free(s->b_tok);
    free(s->b_seq);
    free(s->b_pos);
    free(s->b_want);
    free(s->b_req);
    free(s->b_route);
    free(s->b_dec);
    free(s->logits);
    free(s->tmp_all);
    free(s->fw_all);
    free(s->fw_dec);
    free(s->mb_all);
    free(s->mb_dec);
    free(s->fw_seen);
    free(s->mb_seen);
    free(s->ids);
    for (int i = 0; s->ws && i < s->n_pool; i++) {
        free(s->ws[i].masked);
        moe_sample_buf_free(&s->ws[i].buf);
    }
    free(s->ws);
    free(s->b_pick);
    cpu_pool_destroy(s->pool);
    for (int i = 0; s->slot_tok && i < s->be.max_seqs; i++)
        free(s->slot_tok[i]);
    free(s->slot_busy);
    free(s->slot_tok);
    free(s->slot_ntok);
    free(s->slot_freed);
    free(s);
}

/* Fill defaults and check the params against the backend. */
static enum moe_status params_resolve(const struct moe_sched_backend *be, struct moe_sched_params *p)
{
    if (p->max_running == 0)
        p->max_running = be->max_seqs;
    if (p->max_running < 1 || p->max_running > be->max_seqs)
        return moe_errorf(MOE_EINVAL, "scheduler: max-running = %d: must be in [1, %d] (engine max-seqs)",
                          p->max_running, be->max_seqs);
    if (p->max_queued == 0)
        p->max_queued = 256;
    if (p->max_queued < 0)
        return moe_errorf(MOE_EINVAL, "scheduler: max-queued = %d: must be >= 0", p->max_queued);
    if (p->max_prompt == 0)
        p->max_prompt = be->max_ctx - 1;
    if (p->max_output == 0)
        p->max_output = be->max_ctx - 1;
    if (p->max_prompt < 1 || p->max_prompt >= be->max_ctx)
        return moe_errorf(MOE_EINVAL, "scheduler: max-prompt = %d: must be in [1, %d] (context - 1)",
                          p->max_prompt, be->max_ctx - 1);
    if (p->max_output < 1 || p->max_output >= be->max_ctx)
        return moe_errorf(MOE_EINVAL, "scheduler: max-output = %d: must be in [1, %d] (context - 1)",
                          p->max_output, be->max_ctx - 1);
    if (p->max_tokens_in_flight == 0)
        p->max_tokens_in_flight = (int64_t)p->max_running * be->max_ctx;
    if (p->max_tokens_in_flight < 2)
        return moe_errorf(MOE_EINVAL, "scheduler: max-tokens-in-flight = %lld: must be >= 2",
                          (long long)p->max_tokens_in_flight);
    if (p->sample_threads == 0) { /* the online CPUs, up to 8 */
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        p->sample_threads = n < 1 ? 1 : n > 8 ? 8 : (int)n;
    }
    if (p->sample_threads < 1 || p->sample_threads > 64)
        return moe_errorf(MOE_EINVAL, "scheduler: sample-threads = %d: must be in [1, 64] (0 = the CPUs, up to 8)",
                          p->sample_threads);
    if (p->micro_batch == 0)
        p->micro_batch = p->max_running;
    if (p->micro_batch < 1 || p->micro_batch > p->max_running)
        return moe_errorf(MOE_EINVAL, "scheduler: micro-batch = %d: must be in [1, max-running = %d]",
                          p->micro_batch, p->max_running);
    if (p->prefill_chunk == 0)
        p->prefill_chunk = be->max_batch_tokens - p->micro_batch < 256 ? be->max_batch_tokens - p->micro_batch : 256;
    if (p->prefill_chunk < 1 || p->micro_batch + p->prefill_chunk > be->max_batch_tokens)
        return moe_errorf(MOE_EINVAL,
                          "scheduler: micro-batch (%d) + prefill-chunk (%d) must be <= the engine's "
                          "max-batch-tokens (%d), with prefill-chunk >= 1",
                          p->micro_batch, p->prefill_chunk, be->max_batch_tokens);
    if (p->grouping != MOE_GROUP_FCFS && p->grouping != MOE_GROUP_REGROUP)
        return moe_errorf(MOE_EINVAL, "scheduler: grouping = %d: must be fcfs or regroup", (int)p->grouping);
    if (p->aging_steps == 0)
        p->aging_steps = 64;
    if (p->aging_steps < 1)
        return moe_errorf(MOE_EINVAL, "scheduler: aging-steps = %d: must be >= 1", p->aging_steps);
    if (!(p->path_decay >= 0 && p->path_decay < 1))
        return moe_errorf(MOE_EINVAL, "scheduler: path-decay = %g: must be in [0, 1)", (double)p->path_decay);
    if (p->regroup_lag == 0)
        p->regroup_lag = 2.0f;
    if (p->regroup_lead == 0)
        p->regroup_lead = 1.0f;
    if (!(p->regroup_lag == -1 || (p->regroup_lag >= 0 && p->regroup_lag <= 1000)) ||
        !(p->regroup_lead >= 0 && p->regroup_lead <= 1000))
        return moe_errorf(MOE_EINVAL, "scheduler: regroup-lag = %g, regroup-lead = %g: must be in [0, 1000] "
                          "(regroup-lag -1: strict steps)",
                          (double)p->regroup_lag, (double)p->regroup_lead);
    if (p->lookahead == 0)
        p->lookahead = 1;
    if (p->lookahead < -1)
        return moe_errorf(MOE_EINVAL, "scheduler: lookahead = %d: must be -1 (off) or >= 1", p->lookahead);
    return MOE_OK;
}

void moe_sched_params_test_faults(struct moe_sched_params *p)
{
    const char *v;
    if ((v = getenv("MOEFLOW_TEST_FAULT_EVENTS_AT")))
        p->fault_events_at = (uint32_t)strtoul(v, NULL, 10);
    if ((v = getenv("MOEFLOW_TEST_FAULT_DEVICE_AT")))
        p->fault_device_at = (uint32_t)strtoul(v, NULL, 10);
    if ((v = getenv("MOEFLOW_TEST_SCHED_GATE")))
        p->hold_path = v;
}

struct moe_sched *moe_sched_create_backend(const struct moe_sched_backend *be,
                                           const struct moe_sched_params *params)
{
    if (!be || !params || !be->seq_alloc || !be->seq_free || !be->forward) {
        moe_errorf(MOE_EINVAL, "scheduler: create: NULL backend, params or backend op");
        return NULL;
    }
    if (be->vocab < 1 || be->n_layers < 1 || be->n_layers > MOE_MAX_LAYERS || be->n_experts < 0 ||
        be->top_k < 0 || be->max_seqs < 1 || be->max_ctx < 2 || be->max_batch_tokens < 2) {
        moe_errorf(MOE_EINVAL, "scheduler: create: backend shape out of range (vocab %d, layers %d, experts %d, "
                   "top_k %d, max_seqs %d, max_ctx %d, max_batch_tokens %d)", be->vocab, be->n_layers,
                   be->n_experts, be->top_k, be->max_seqs, be->max_ctx, be->max_batch_tokens);
        return NULL;
    }
    struct moe_sched_params p = *params;
    if (params_resolve(be, &p) != MOE_OK)
        return NULL;
    struct moe_sched *s = calloc(1, sizeof(*s));
    if (!s) {
        moe_errorf(MOE_ENOMEM, "scheduler: create: out of memory");
        return NULL;
    }
    s->be = *be;
    s->p = p;
    s->max_ctx = be->max_ctx;
    s->words = be->n_experts > 0 ? (be->n_experts + 63) / 64 : 1;
    s->moe_ord = malloc(sizeof(int) * (size_t)be->n_layers);
    if (s->moe_ord)
        for (int l = 0; l < be->n_layers; l++)
            s->moe_ord[l] = be->is_moe && be->is_moe[l] ? s->n_moe++ : -1;
    int n_moe = s->n_moe > 0 ? s->n_moe : 1;
    size_t pw = (size_t)n_moe * (size_t)s->words;
    size_t mr = (size_t)p.max_running, bt = (size_t)be->max_batch_tokens;
    s->active = calloc(mr, sizeof(*s->active));
    s->dec = calloc(mr, sizeof(*s->dec));
    s->pre = calloc(2 * mr, sizeof(*s->pre));
    s->live = calloc(mr, sizeof(*s->live));
    s->grp = calloc(mr, sizeof(*s->grp));
    s->next = calloc(mr, sizeof(*s->next));
    s->cred = calloc(mr, sizeof(double));
    s->order = calloc(mr, sizeof(int));
    s->paths = calloc(mr * pw, sizeof(uint64_t));
    s->prev_union = calloc(pw, sizeof(uint64_t));
    s->b_tok = calloc(bt, sizeof(int));
    s->b_seq = calloc(bt, sizeof(int));
    s->b_pos = calloc(bt, sizeof(int));
    s->b_want = calloc(bt, sizeof(bool));
    s->b_req = calloc(bt, sizeof(*s->b_req));
    s->b_route = calloc(bt, sizeof(bool));
    s->b_dec = calloc(bt, sizeof(bool));
    s->b_pick = calloc(bt, sizeof(*s->b_pick));
    s->n_pool = p.sample_threads;
    s->ws = calloc((size_t)s->n_pool, sizeof(*s->ws));
    s->pool = s->n_pool > 1 ? cpu_pool_create(s->n_pool) : NULL;
    s->logits_rows = p.micro_batch + 1; /* grown for prompt log-probabilities (a whole chunk's rows) */
    s->logits = calloc((size_t)s->logits_rows * (size_t)be->vocab, sizeof(float));
    s->tmp_all = calloc((size_t)s->words, sizeof(uint64_t));
    s->fw_all = calloc(pw, sizeof(uint64_t));
    s->fw_dec = calloc(pw, sizeof(uint64_t));
    s->mb_all = calloc(pw, sizeof(uint64_t));
    s->mb_dec = calloc(pw, sizeof(uint64_t));
    s->fw_seen = calloc((size_t)n_moe, sizeof(bool));
    s->mb_seen = calloc((size_t)n_moe, 1);
    s->ids = calloc((size_t)s->words * 64, sizeof(int));
    bool slots_ok = true;
    if (p.prefix_cache && be->seq_claim) {
        size_t ms = (size_t)be->max_seqs;
        s->slot_busy = calloc(ms, sizeof(bool));
        s->slot_tok = calloc(ms, sizeof(int *));
        s->slot_ntok = calloc(ms, sizeof(int));
        s->slot_freed = calloc(ms, sizeof(uint64_t));
        slots_ok = s->slot_busy && s->slot_tok && s->slot_ntok && s->slot_freed;
    }
    bool ok = slots_ok && s->moe_ord && s->active && s->dec && s->pre && s->live && s->grp && s->next && s->cred && s->order && s->paths && s->prev_union &&
              s->b_tok && s->b_seq && s->b_pos && s->b_want && s->b_req && s->b_route && s->b_dec &&
              s->b_pick && s->ws && (s->n_pool == 1 || s->pool) &&
              s->logits && s->tmp_all && s->fw_all && s->fw_dec && s->mb_all && s->mb_dec && s->fw_seen &&
              s->mb_seen && s->ids;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    pthread_cond_init(&s->idle, NULL);
    if (!ok) {
        moe_sched_destroy(s);
        moe_errorf(MOE_ENOMEM, "scheduler: create: out of memory for %d sequences", p.max_running);
        return NULL;
    }
    return s;
}

/* Used by the engine adapter (sched_engine.c) to hand its state to the scheduler. */
void moe_sched_own_adapter_(struct moe_sched *s, void *adapter, void (*free_fn)(void *));
void moe_sched_own_adapter_(struct moe_sched *s, void *adapter, void (*free_fn)(void *))
{
    s->adapter = adapter;
    s->adapter_free = free_fn;
}
