/* The server core: model, engine and scheduler; the generation objects shared
 * by the front ends and the scheduler thread; readiness and draining. */
#include "server.h"

#include <errno.h>
#include <libgen.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>
#include <unistd.h>

#include <grpc/status.h>

#include "srv.h"
#include "../kernels/backend.h"
#include "../model/chat.h"

/* ---- status maps ---- */

int srv_http_status(enum moe_status st)
{
    switch (st) {
    case MOE_OK: return 200;
    case MOE_EINVAL: case MOE_ERANGE: case MOE_EFORMAT: case MOE_ENOTSUP: return 400;
    case MOE_ENOENT: return 404;
    case MOE_EBUSY: return 429;
    case MOE_ECANCELED: return 503;
    case MOE_ETIMEDOUT: return 504;
    default: return 500;
    }
}

int srv_grpc_code(enum moe_status st)
{
    switch (st) {
    case MOE_OK: return GRPC_STATUS_OK;
    /* a feature the request asks for that is not supported is the request's to change, as HTTP's 400;
     * UNIMPLEMENTED is a method not served here, answered where the call arrives */
    case MOE_EINVAL: case MOE_ERANGE: case MOE_EFORMAT: case MOE_ENOTSUP: return GRPC_STATUS_INVALID_ARGUMENT;
    case MOE_ENOENT: return GRPC_STATUS_NOT_FOUND;
    case MOE_EBUSY: case MOE_ENOMEM: return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case MOE_ECANCELED: return GRPC_STATUS_UNAVAILABLE;
    case MOE_ETIMEDOUT: return GRPC_STATUS_DEADLINE_EXCEEDED;
    default: return GRPC_STATUS_INTERNAL;
    }
}

/* A generation that failed with st, not by the request's doing: a status that would blame the request
 * (a bad argument, a value out of range, a format, a feature: a forward's or the sampler's own check) is
 * the server's fault here. */
static bool blames_request(enum moe_status st, bool of_request)
{
    bool client = st == MOE_EINVAL || st == MOE_ERANGE || st == MOE_EFORMAT || st == MOE_ENOTSUP || st == MOE_ENOENT;
    return client && !of_request;
}

int srv_finish_http_status(enum moe_finish why, enum moe_status st, bool of_request)
{
    switch (why) {
    case MOE_FINISH_LENGTH: case MOE_FINISH_STOP: return 200;
    case MOE_FINISH_CANCELLED: return 503;
    case MOE_FINISH_DEADLINE: return 504;
    case MOE_FINISH_ERROR: return st == MOE_OK || blames_request(st, of_request) ? 500 : srv_http_status(st);
    }
    return 500;
}

int srv_finish_grpc_code(enum moe_finish why, enum moe_status st, bool of_request)
{
    switch (why) {
    case MOE_FINISH_LENGTH: case MOE_FINISH_STOP: return GRPC_STATUS_OK;
    /* the client that cancelled sees its own CANCELLED; a status that reaches a client
     * is the server's: the drain's time ran out, so retry elsewhere */
    case MOE_FINISH_CANCELLED: return GRPC_STATUS_UNAVAILABLE;
    case MOE_FINISH_DEADLINE: return GRPC_STATUS_DEADLINE_EXCEEDED;
    case MOE_FINISH_ERROR:
        return st == MOE_OK || blames_request(st, of_request) ? GRPC_STATUS_INTERNAL : srv_grpc_code(st);
    }
    return GRPC_STATUS_INTERNAL;
}

/* ---- inbox and generations ---- */

void srv_inbox_init(struct srv_inbox *ib, void (*wake)(void *), void *arg)
{
    memset(ib, 0, sizeof(*ib));
    pthread_mutex_init(&ib->mu, NULL);
    ib->wake = wake;
    ib->wake_arg = arg;
}

/* A queue of jobs (the preparation threads', an inbox's): j put at its end, or its first taken off. */
static void job_push(struct srv_job **head, struct srv_job **tail, struct srv_job *j)
{
    j->next = NULL;
    if (*tail)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
}

static struct srv_job *job_pop(struct srv_job **head, struct srv_job **tail)
{
    struct srv_job *j = *head;
    if (j) {
        *head = j->next;
        if (!*head)
            *tail = NULL;
        j->next = NULL;
    }
    return j;
}

/* A job whose owner let go: its request counted as its front end counts one whose client left (when its
 * work made one), and the job freed. */
static void job_gone(struct srv_job *j)
{
    if (j->gone)
        j->gone(j);
    j->free(j);
}

void srv_inbox_free(struct srv_inbox *ib)
{
    for (struct srv_gen *g; (g = srv_inbox_pop(ib));)
        srv_gen_put(g);
    /* the preparation threads have stopped, and the front end has let go of every call */
    for (struct srv_job *j; (j = job_pop(&ib->jhead, &ib->jtail));)
        job_gone(j);
    pthread_mutex_destroy(&ib->mu);
}

/* ---- preparation threads ---- */

/* A request under this many bytes is prepared on its front end's thread: it holds the others up for a
 * few milliseconds at most (tokenizing runs at several megabytes a second), no longer than a hand-over
 * back to the gRPC thread may take (it polls its inbox). */
#define SRV_PREP_INLINE_BYTES 16384

/* Run j on this thread and hand it back, or count and free it when its owner let go.  A job whose owner
 * let go before it ran (its client left while it waited for a preparation thread) is not prepared: its
 * request is dropped, counted as cancelled (j->dropped), and nothing is tokenized or submitted for it. */
static void job_run(struct srv_job *j)
{
    struct srv_inbox *ib = j->inbox;
    pthread_mutex_lock(&ib->mu);
    bool owned = j->owner != NULL;
    pthread_mutex_unlock(&ib->mu);
    if (!owned) {
        if (j->dropped)
            j->dropped(j);
        j->free(j);
        return;
    }
    j->work(j);
    pthread_mutex_lock(&ib->mu);
    owned = j->owner != NULL;
    if (owned)
        job_push(&ib->jhead, &ib->jtail, j);
    pthread_mutex_unlock(&ib->mu);
    if (!owned)
        job_gone(j);
    else if (ib->wake)
        ib->wake(ib->wake_arg);
}

static void *prep_thread(void *arg)
{
    struct srv_prep *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->head && !p->stop)
            pthread_cond_wait(&p->cv, &p->mu);
        while (p->gate && access(p->gate, F_OK) == 0) { /* testing: held while the gate exists */
            pthread_mutex_unlock(&p->mu);
            nanosleep(&(struct timespec){ 0, 5000000 }, NULL);
            pthread_mutex_lock(&p->mu);
        }
        struct srv_job *j = job_pop(&p->head, &p->tail);
        if (!j)
            break; /* stopping, and every job taken */
        pthread_mutex_unlock(&p->mu);
        job_run(j);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

bool srv_job_start(struct moe_server *s, struct srv_job *j, size_t bytes)
{
    struct srv_prep *p = &s->prep;
    pthread_mutex_lock(&p->mu);
    bool queued = p->n_threads > 0 && !p->stop && bytes >= p->inline_bytes;
    if (queued) {
        job_push(&p->head, &p->tail, j);
        pthread_cond_signal(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    if (!queued)
        j->work(j);
    return queued;
}

void srv_job_let_go(struct srv_job *j)
{
    pthread_mutex_lock(&j->inbox->mu);
    j->owner = NULL;
    pthread_mutex_unlock(&j->inbox->mu);
}

struct srv_job *srv_inbox_pop_job(struct srv_inbox *ib, void **owner)
{
    for (;;) {
        pthread_mutex_lock(&ib->mu);
        struct srv_job *j = job_pop(&ib->jhead, &ib->jtail);
        if (j)
            *owner = j->owner;
        pthread_mutex_unlock(&ib->mu);
        if (!j || *owner)
            return j;
        job_gone(j);
    }
}

void srv_prep_start(struct moe_server *s)
{
    struct srv_prep *p = &s->prep;
    /* testing (tests/server): MOEFLOW_TEST_PREP_INLINE_BYTES=0 prepares every request on the threads */
    const char *t = getenv("MOEFLOW_TEST_PREP_INLINE_BYTES");
    p->inline_bytes = t ? (size_t)strtoull(t, NULL, 10) : SRV_PREP_INLINE_BYTES;
    /* ... and MOEFLOW_TEST_PREP_GATE=PATH holds the threads while PATH exists: jobs wait, queued */
    if ((t = getenv("MOEFLOW_TEST_PREP_GATE")))
        p->gate = strdup(t);
    /* two: before, each of the two front ends prepared one request at a time on its own thread */
    for (int i = 0; i < (int)MOE_ARRAY_LEN(p->threads); i++) {
        if (pthread_create(&p->threads[i], NULL, prep_thread, p) != 0) {
            MOE_WARN("cannot start a request preparation thread: %d of %d run (with none, requests are "
                     "prepared on the front ends' threads)", i, (int)MOE_ARRAY_LEN(p->threads));
            break;
        }
        p->n_threads = i + 1; /* read by srv_job_start only once the front ends run */
    }
}

void srv_prep_stop(struct moe_server *s)
{
    struct srv_prep *p = &s->prep;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    int n = p->n_threads;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_lock(&p->mu);
    p->n_threads = 0;
    free(p->gate);
    p->gate = NULL;
    pthread_mutex_unlock(&p->mu);
}

uint64_t srv_random64(void)
{
    static _Atomic uint64_t n;
    uint64_t x;
    if (getrandom(&x, sizeof x, GRND_NONBLOCK) == sizeof x)
        return x;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_sec * 1000000007u ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid() << 32) +
           0x9E3779B97F4A7C15ull * ++n;
}

static void gen_free(struct srv_gen *g)
{
    atomic_fetch_sub(&g->srv->live_gens, 1);
    free(g->toks);
    free(g->lps);
    free(g->prompt_ids);
    free(g->prompt_lps);
    moe_tok_stream_free(&g->text);
    free(g);
}

/* Under ib->mu: put g on the inbox list (one ref for the list). */
static bool gen_queue_locked(struct srv_gen *g)
{
    if (g->queued || !g->owner)
        return false;
    g->queued = true;
    g->refs++;
    g->next = NULL;
    if (g->inbox->tail)
        g->inbox->tail->next = g;
    else
        g->inbox->head = g;
    g->inbox->tail = g;
    return true;
}

static void on_token(void *ud, uint64_t id, int token)
{
    struct srv_gen *g = ud;
    struct moe_server *s = g->srv;
    double now = moe_now();
    if (g->n_seen == 0)
        moe_metrics_observe(&s->metrics, &s->metrics.ttft, now - g->t_submit);
    else
        moe_metrics_observe(&s->metrics, &s->metrics.itl, now - g->t_last);
    g->t_last = now;
    g->n_seen++;
    struct srv_inbox *ib = g->inbox;
    pthread_mutex_lock(&ib->mu);
    if (g->n_toks == g->cap_toks) {
        int cap = g->cap_toks ? g->cap_toks * 2 : 16;
        int *t = realloc(g->toks, (size_t)cap * sizeof(int));
        if (t)
            g->toks = t;
        struct moe_token_logprobs *l = g->want_lp ? realloc(g->lps, (size_t)cap * sizeof(*l)) : NULL;
        if (l)
            g->lps = l;
        if (t && (l || !g->want_lp))
            g->cap_toks = cap;
    }
    if (g->n_toks < g->cap_toks) {
        if (g->want_lp)
            g->lps[g->n_toks] = g->lp_next;
        g->toks[g->n_toks++] = token;
    } else {
        g->toks_oom = true;
    }
    bool wake = gen_queue_locked(g);
    pthread_mutex_unlock(&ib->mu);
    (void)id;
    if (wake && ib->wake)
        ib->wake(ib->wake_arg);
}

static void on_prompt_logprobs(void *ud, uint64_t id, int pos, const struct moe_token_logprobs *lp)
{
    struct srv_gen *g = ud;
    if (g->prompt_lps && pos > 0 && pos < g->n_prompt)
        g->prompt_lps[pos] = *lp; /* published to the front end by on_token's or on_done's lock */
    (void)id;
}

static void on_logprobs(void *ud, uint64_t id, const struct moe_token_logprobs *lp)
{
    struct srv_gen *g = ud;
    g->lp_next = *lp; /* the scheduler thread's: on_token, next, files it with its token */
    (void)id;
}

static void server_notify_device_error(void);

static void on_done(void *ud, uint64_t id, const struct moe_sched_result *res)
{
    enum moe_finish why = res->why;
    enum moe_status st = res->st;
    const char *msg = res->msg;
    struct srv_gen *g = ud;
    struct moe_server *s = g->srv;
    /* a failure on a context that a sticky error poisoned is the lost device's, whatever its status */
    bool lost = st == MOE_EDEVLOST || (why == MOE_FINISH_ERROR && moe_offload_backend_poisoned(s->backend));
    if (lost && !atomic_exchange(&s->device_claimed, true)) {
        /* A sticky accelerator error poisons the process: readiness off, fail
         * the requests whose forward failed, cancel the rest saying why (moe_server_run's drain), exit
         * non-zero so a supervisor restarts us. */
        atomic_store(&s->ready, false);
        MOE_ERR("device error: %s", msg ? msg : "");
        snprintf(s->device_why, sizeof(s->device_why), "%.*s", moe_utf8_cut(msg ? msg : "", 150), msg ? msg : "");
        atomic_store(&s->device_failed, true); /* device_why is whole */
        server_notify_device_error();
    } else if (st == MOE_EIO && srv_files_damaged(s)) {
        /* a forward read a checkpoint file that is damaged: every later one would compute on zeros */
        MOE_ERR("request %llu failed: the model's files are damaged", (unsigned long long)id);
    } else if (st == MOE_EDEVICE && !lost) {
        /* A device operation failed, the device stays usable: this request fails (alone, or with the
         * others of its micro-batch that failed alone too: the scheduler reruns them one by one);
         * serving goes on. */
        MOE_ERR("request %llu failed on a device error; the device stays usable, serving goes on: %s",
                (unsigned long long)id, msg ? msg : "");
    }
    moe_metrics_observe(&s->metrics, &s->metrics.e2e, moe_now() - g->t_submit);
    struct srv_inbox *ib = g->inbox;
    pthread_mutex_lock(&ib->mu);
    bool undelivered = g->undelivered;
    g->done = true;
    g->why = why;
    g->st = st;
    snprintf(g->msg, sizeof(g->msg), "%s", msg ? msg : "");
    g->n_generated = res->n_generated;
    g->n_cached = res->n_cached;
    g->of_request = res->of_request;
    bool wake = gen_queue_locked(g);
    bool last = --g->refs == 0;
    pthread_mutex_unlock(&ib->mu);
    if (undelivered) /* it completed before the front end's moe_sched_fail reached it */
        moe_sched_reply_failed(s->sched, why);
    if (last)
        gen_free(g);
    else if (wake && ib->wake)
        ib->wake(ib->wake_arg);
}

struct srv_gen *srv_inbox_pop(struct srv_inbox *ib)
{
    pthread_mutex_lock(&ib->mu);
    struct srv_gen *g = ib->head;
    if (g) {
        ib->head = g->next;
        if (!ib->head)
            ib->tail = NULL;
        g->next = NULL;
        g->queued = false;
    }
    pthread_mutex_unlock(&ib->mu);
    return g;
}

void srv_gen_events(struct srv_gen *g, struct srv_events *ev)
{
    memset(ev, 0, sizeof(*ev));
    pthread_mutex_lock(&g->inbox->mu);
    if (g->n_toks) {
        ev->toks = malloc((size_t)g->n_toks * sizeof(int));
        ev->lps = g->want_lp ? malloc((size_t)g->n_toks * sizeof(*ev->lps)) : NULL;
        if (ev->toks && (ev->lps || !g->want_lp)) {
            memcpy(ev->toks, g->toks, (size_t)g->n_toks * sizeof(int));
            if (ev->lps)
                memcpy(ev->lps, g->lps, (size_t)g->n_toks * sizeof(*ev->lps));
            ev->n_toks = g->n_toks;
        } else {
            free(ev->toks);
            free(ev->lps);
            ev->toks = NULL;
            ev->lps = NULL;
            g->toks_oom = true;
        }
        g->n_toks = 0;
    }
    ev->done = g->done;
    ev->why = g->why;
    ev->st = g->st;
    ev->of_request = g->of_request;
    memcpy(ev->msg, g->msg, sizeof(ev->msg));
    if (g->toks_oom && !g->done) {
        /* Lost a token: the text can no longer be right.  Fail this request. */
        ev->done = true;
        ev->why = MOE_FINISH_ERROR;
        ev->st = MOE_ENOMEM;
        ev->of_request = false;
        snprintf(ev->msg, sizeof(ev->msg), "out of memory buffering tokens");
    }
    ev->n_generated = g->n_generated;
    ev->n_prompt = g->n_prompt;
    ev->n_cached = g->n_cached;
    pthread_mutex_unlock(&g->inbox->mu);
    g->n_streamed += ev->n_toks;
}

char *srv_gen_text(struct srv_gen *g, const int *toks, int n, bool final, size_t *len)
{
    struct moe_server *s = g->srv;
    size_t cap = 0, off = 0;
    char *out = NULL;
    for (int i = 0; i <= n; i++) { /* i == n: the end, when final, and room for the NUL */
        size_t k = 0;
        const char *t = "";
        if (i < n && !g->ignore_eos && moe_config_is_eos(&s->model->cfg, toks[i]))
            continue; /* an end-of-sequence marker carries no text */
        if (i < n)
            t = moe_tokenizer_stream(s->tok, &g->text, toks[i], &k);
        else if (final)
            t = moe_tokenizer_stream_end(&g->text, &k);
        if (!t || !moe_grow((void **)&out, &cap, off + k + 1, 1, 64)) {
            free(out);
            return NULL;
        }
        memcpy(out + off, t, k);
        off += k;
    }
    out[off] = 0;
    *len = off;
    return out;
}

const char *srv_gen_pending(const struct srv_gen *g, size_t *len)
{
    return moe_tokenizer_stream_pending(&g->text, len);
}

void srv_gen_put(struct srv_gen *g)
{
    pthread_mutex_lock(&g->inbox->mu);
    bool last = --g->refs == 0;
    pthread_mutex_unlock(&g->inbox->mu);
    if (last)
        gen_free(g);
}

/* The front end lets go of g's events; a generation still running ends at once (KV and pins freed
 * before the next step; on_done follows): cancelled, or finished by a stop sequence. */
void srv_gen_detach(struct srv_gen *g, bool at_stop)
{
    pthread_mutex_lock(&g->inbox->mu);
    bool running = !g->done;
    g->owner = NULL;
    pthread_mutex_unlock(&g->inbox->mu);
    if (running)
        (at_stop ? moe_sched_finish : moe_sched_cancel)(g->srv->sched, g->id);
}

void srv_gen_abandon(struct srv_gen *g)
{
    srv_gen_detach(g, false);
    srv_gen_put(g);
}

void srv_gen_abandon_stopped(struct srv_gen *g)
{
    srv_gen_detach(g, true);
    srv_gen_put(g);
}

/* The front end lets go of g, whose reply will not be sent: a generation still running ends now, failed
 * with msg (NULL: cancelled); one that completed already, or completes before that reaches it, counts as
 * failed. */
static void gen_let_go_unsent(struct srv_gen *g, const char *msg)
{
    struct moe_server *s = g->srv;
    pthread_mutex_lock(&g->inbox->mu);
    bool running = !g->done;
    enum moe_finish why = g->why;
    g->owner = NULL;
    g->undelivered = running;
    pthread_mutex_unlock(&g->inbox->mu);
    if (running && msg)
        moe_sched_fail(s->sched, g->id, MOE_ENOMEM, msg); /* ENOENT: it ended meanwhile, on_done counts it */
    else if (running)
        moe_sched_cancel(s->sched, g->id);
    else
        moe_sched_reply_failed(s->sched, why);
    srv_gen_put(g);
}

void srv_gen_undeliverable(struct srv_gen *g, const char *msg)
{
    MOE_WARN("request %llu: %s", (unsigned long long)g->id, msg);
    gen_let_go_unsent(g, msg);
}

void srv_gen_abandon_unsent(struct srv_gen *g)
{
    gen_let_go_unsent(g, NULL);
}

void *srv_calloc(const struct moe_server *s, enum srv_fault f, size_t n, size_t size)
{
    return s->faults & f ? NULL : calloc(n, size);
}

/* MOEFLOW_TEST_FAIL_ALLOC's names as srv_fault bits (a name it does not know is warned of). */
static unsigned faults_parse(const char *list)
{
    static const struct { const char *name; enum srv_fault f; } names[] = {
        { "job", SRV_FAULT_JOB }, { "prompts", SRV_FAULT_PROMPTS }, { "stops", SRV_FAULT_STOPS },
        { "choice", SRV_FAULT_CHOICE }, { "gen", SRV_FAULT_GEN }, { "tokenize", SRV_FAULT_TOKENIZE },
        { "detokenize", SRV_FAULT_DETOKENIZE }, { "reply", SRV_FAULT_REPLY },
    };
    unsigned faults = 0;
    for (const char *p = list; p && *p;) {
        size_t n = strcspn(p, ",");
        size_t i = 0;
        while (i < MOE_ARRAY_LEN(names) && (strlen(names[i].name) != n || strncmp(p, names[i].name, n)))
            i++;
        if (i < MOE_ARRAY_LEN(names))
            faults |= names[i].f;
        else
            MOE_WARN("MOEFLOW_TEST_FAIL_ALLOC: '%.*s' is not job, prompts, stops, choice, gen, tokenize, "
                     "detokenize or reply", (int)n, p);
        p += n + (p[n] == ',');
    }
    return faults;
}

enum moe_status srv_tokenize(const struct moe_server *s, bool templated, const char *text, size_t len, int **ids,
                             size_t *n_ids)
{
    enum moe_status st;
    if (s->faults & SRV_FAULT_TOKENIZE) {
        *ids = NULL;
        *n_ids = 0;
        st = moe_errorf(MOE_ENOMEM, "tokenizer: no memory to encode");
    } else {
        st = (templated ? moe_tokenizer_encode : moe_tokenizer_encode_prompt)(s->tok, text, len, ids, n_ids);
    }
    return st == MOE_ENOMEM ? moe_error_prefix(st, "out of memory tokenizing the text") : st;
}

enum moe_status srv_detokenize(const struct moe_server *s, const int *ids, size_t n, char **text, size_t *len)
{
    enum moe_status st;
    if (s->faults & SRV_FAULT_DETOKENIZE) {
        *text = NULL;
        *len = 0;
        st = moe_errorf(MOE_ENOMEM, "tokenizer: no memory to decode");
    } else {
        st = moe_tokenizer_decode(s->tok, ids, n, text, len);
    }
    return st == MOE_ENOMEM ? moe_error_prefix(st, "out of memory decoding the token ids") : st;
}

void srv_count_refused(struct moe_server *s, enum moe_status st)
{
    moe_metrics_count(&s->metrics, st == MOE_ENOMEM ? &s->metrics.rejected_memory : &s->metrics.rejected_invalid, 1);
}

enum moe_status srv_stop_scan_init(struct moe_server *s, struct moe_stop_scan *sc, char *const *seq, int n)
{
    enum moe_status st;
    if ((s->faults & SRV_FAULT_STOPS) && n > 0) { /* none: nothing to allocate */
        memset(sc, 0, sizeof(*sc));
        st = moe_errorf(MOE_ENOMEM, "stop sequences: out of memory");
    } else {
        st = moe_stop_scan_init(sc, seq, n);
    }
    if (st != MOE_OK)
        srv_count_refused(s, st);
    return st;
}

bool srv_loaded(struct moe_server *s, bool count)
{
    bool loaded = atomic_load(&s->loaded);
    if (!loaded && count)
        moe_metrics_count(&s->metrics, &s->metrics.rejected_loading, 1);
    return loaded;
}

const char *srv_files_damaged(struct moe_server *s)
{
    if (atomic_load(&s->files_damaged))
        return s->files_why;
    if (!atomic_load(&s->loaded) || moe_model_check_files(s->model) == MOE_OK)
        return NULL;
    if (atomic_exchange(&s->files_claimed, true))
        return NULL; /* another thread is saying so; the next look sees it */
    const char *err = moe_last_error();
    snprintf(s->files_why, sizeof(s->files_why), "%.*s", moe_utf8_cut(err, 500), err);
    atomic_store(&s->ready, false);
    atomic_store(&s->files_damaged, true);
    MOE_ERR("the model's files are damaged: not ready any more, every generation refused, /health answers 503; "
            "restart the server once they are whole: %s", s->files_why);
    return s->files_why;
}

/* The model's files are damaged: a generation refused (and counted) as one the server cannot run. */
static enum moe_status refuse_damaged(struct moe_server *s)
{
    const char *why = srv_files_damaged(s);
    if (!why)
        return MOE_OK;
    moe_metrics_count(&s->metrics, &s->metrics.rejected_damaged, 1);
    return moe_errorf(MOE_ECANCELED, "the server cannot generate: the model's files are damaged (%s); retry elsewhere",
                      why);
}

/* The server is draining: refused (and counted) as such. */
static enum moe_status refuse_draining(struct moe_server *s)
{
    if (!atomic_load(&s->draining))
        return MOE_OK;
    moe_metrics_count(&s->metrics, &s->metrics.rejected_draining, 1);
    return moe_errorf(MOE_ECANCELED, "%s", SRV_DRAINING_MSG);
}

enum moe_status srv_gen_prepare(struct moe_server *s, const struct moe_gen_request *r, const char *name,
                                struct srv_prompt *out)
{
    memset(out, 0, sizeof(*out));
    if (refuse_draining(s) != MOE_OK)
        return MOE_ECANCELED;
    if (!srv_loaded(s, true))
        return moe_errorf(MOE_ECANCELED, "the model is still loading; retry when /ready says ready");
    if (refuse_damaged(s) != MOE_OK)
        return MOE_ECANCELED;
    enum moe_status st = MOE_OK;
    bool of_prompt = true; /* the error is the prompt's (named by name), not the request's */
    int *ids = NULL;
    size_t n_ids = 0;
    if (r->model[0] && strcmp(r->model, s->model_name)) {
        st = moe_errorf(MOE_ENOENT, "model '%s' is not served here (this server serves '%s')",
                        r->model, s->model_name);
        of_prompt = false;
        goto out;
    }
    if (r->prompt_ids) {
        ids = malloc((size_t)r->n_prompt_ids * sizeof(int));
        if (!ids) {
            st = moe_errorf(MOE_ENOMEM, "out of memory copying prompt ids");
            goto out;
        }
        memcpy(ids, r->prompt_ids, (size_t)r->n_prompt_ids * sizeof(int));
        n_ids = (size_t)r->n_prompt_ids;
        int vocab = s->model->cfg.vocab;
        for (size_t i = 0; i < n_ids; i++)
            if (ids[i] >= vocab) {
                st = moe_errorf(MOE_ERANGE, "prompt token id %d at index %zu is outside the "
                                "vocabulary [0, %d)", ids[i], i, vocab);
                goto out;
            }
    } else {
        st = srv_tokenize(s, r->templated, r->prompt ? r->prompt : "", r->prompt_len, &ids, &n_ids);
        if (st == MOE_ENOMEM) { /* the server's, not the prompt's */
            of_prompt = false;
            goto out;
        }
        if (st != MOE_OK) {
            moe_error_prefix(MOE_EINVAL, "prompt");
            st = MOE_EINVAL;
            goto out;
        }
    }
    if (n_ids == 0) {
        st = moe_errorf(MOE_EINVAL, "the prompt is empty");
        goto out;
    }
    int max_tokens = r->prompt_only ? 0 : r->max_tokens > 0 ? r->max_tokens : s->cfg.default_max_tokens;
    const char *fill = NULL; /* a chat's reply without max_tokens: what bounds it */
    if (!r->prompt_only && r->max_tokens == 0 && r->chat && s->chat_fills) {
        /* as OpenAI's chat API: no max_tokens = until the end of the sequence or of the context, and as far
         * as max-tokens-in-flight lets the n choices go (their prompt + max_tokens each), else the request
         * would be refused for a max_tokens it never asked for */
        int64_t room = (int64_t)s->max_ctx - (int64_t)n_ids;
        int choices = r->n > 1 ? r->n : 1;
        int64_t flight = s->cfg.max_tokens_in_flight / choices - (int64_t)n_ids;
        bool by_flight = flight < room; /* the reply cut to what max-tokens-in-flight leaves it */
        if (by_flight)
            room = flight;
        max_tokens = room < s->cfg.max_output ? (int)(room > 0 ? room : 0) : s->cfg.max_output;
        fill = room > s->cfg.max_output ? "this server's max-output"
               : by_flight              ? "as much as max-tokens-in-flight leaves the reply"
                                        : "as much as the context leaves the reply";
        if (max_tokens < 1 && by_flight) {
            st = choices > 1
                     ? moe_errorf(MOE_ERANGE, "%d choices of the prompt (%zu tokens each) leave no room for a reply "
                                  "in this server's max-tokens-in-flight %lld; lower n or shorten the messages",
                                  choices, n_ids, (long long)s->cfg.max_tokens_in_flight)
                     : moe_errorf(MOE_ERANGE, "the prompt (%zu tokens) leaves no room for a reply in this server's "
                                  "max-tokens-in-flight %lld; shorten the messages", n_ids,
                                  (long long)s->cfg.max_tokens_in_flight);
            goto out;
        }
        if (max_tokens < 1) {
            st = moe_errorf(MOE_ERANGE, "the prompt (%zu tokens) fills the context of %d tokens: no room for "
                            "a reply; shorten the messages", n_ids, s->max_ctx);
            goto out;
        }
    }
    if (r->min_tokens > max_tokens) { /* vLLM's min_tokens: at most max_tokens, given or not */
        /* a chat's filled reply is already as long as the server lets it be: giving max_tokens cannot raise it */
        const char *which = r->max_tokens > 0 || r->prompt_only ? "the request's" : fill ? fill : "this server's default";
        st = moe_errorf(MOE_EINVAL, "min_tokens = %d is more than max_tokens = %d (%s): lower min_tokens%s",
                        r->min_tokens, max_tokens, which, fill ? "" : " or raise max_tokens");
        of_prompt = false;
        goto out;
    }
    if (max_tokens > s->cfg.max_output) {
        st = moe_errorf(MOE_ERANGE, "max_tokens = %d exceeds this server's limit %d (max-output)",
                        max_tokens, s->cfg.max_output);
        of_prompt = false;
        goto out;
    }
    if (n_ids > (size_t)s->cfg.max_prompt) {
        st = moe_errorf(MOE_ERANGE, "the prompt is %zu tokens, more than this server's limit %d "
                        "(max-prompt)", n_ids, s->cfg.max_prompt);
        goto out;
    }
    if ((int64_t)n_ids + max_tokens > s->max_ctx) {
        bool dflt = !r->prompt_only && r->max_tokens == 0; /* the request gave none: say whose it is */
        st = moe_errorf(MOE_ERANGE, "prompt (%zu tokens) + max_tokens (%d%s) = %lld exceeds the "
                        "context of %d tokens; shorten the prompt or %s max_tokens",
                        n_ids, max_tokens, dflt ? ", this server's default: the request gave none" : "",
                        (long long)n_ids + max_tokens, s->max_ctx, dflt ? "give a smaller" : "lower");
        goto out;
    }
    out->ids = ids;
    out->n_ids = (int)n_ids;
    out->max_tokens = max_tokens;
    return MOE_OK;
out:
    free(ids);
    if (name && of_prompt)
        moe_error_prefix(st, "'%s'", name);
    srv_count_refused(s, st);
    return st;
}

enum moe_status srv_gen_submit_prepared(struct moe_server *s, struct srv_inbox *ib, void *owner,
                                        const struct moe_gen_request *r, const struct srv_prompt *p,
                                        double deadline, struct srv_gen **out)
{
    *out = NULL;
    if (refuse_draining(s) != MOE_OK)
        return MOE_ECANCELED;
    const int *ids = p->ids;
    size_t n_ids = (size_t)p->n_ids;
    int max_tokens = p->max_tokens;
    struct srv_gen *g = srv_calloc(s, SRV_FAULT_GEN, 1, sizeof(*g));
    if (!g) {
        srv_count_refused(s, MOE_ENOMEM);
        return moe_errorf(MOE_ENOMEM, "out of memory");
    }
    g->srv = s;
    g->inbox = ib;
    g->owner = owner;
    g->refs = 2; /* scheduler + front end */
    g->n_prompt = (int)n_ids;
    g->max_tokens = max_tokens;
    g->min_tokens = r->min_tokens;
    g->ignore_eos = r->ignore_eos;
    g->t_submit = moe_now();
    atomic_fetch_add(&s->live_gens, 1);
    struct moe_gen_params gp = {
        .max_tokens = max_tokens,
        .sampling = r->sampling,
        .priority = r->priority,
        .deadline = deadline,
        .ignore_eos = r->ignore_eos,
        .n_stop_ids = r->n_stop_token_ids,
        .min_tokens = r->min_tokens,
        .logprobs = r->logprobs,
        .top_logprobs = r->top_logprobs,
        .prompt_logprobs = r->echo && (r->logprobs || r->prompt_only), /* the scheduler's prompt-only mode */
        .json = r->json_object || r->json_schema ? &s->json_vocab : NULL,
        .choices = r->choice == 0 ? r->n * (r->n_batch ? r->n_batch : 1) : 0,
        .more_choice = r->choice > 0,
        .hold = r->choice > 0 ? r->hold : 0,
        .choices_need = r->choice == 0 ? r->need_all : 0,
        .json_schema = r->json_schema,
        .json_after_think = r->json_after_think,
        .think_opened = r->think_opened,
    };
    memcpy(gp.stop_ids, r->stop_token_ids, sizeof(gp.stop_ids));
    if (!r->has_seed) /* as OpenAI: without a seed, every request draws anew */
        gp.sampling.seed = srv_random64();
    g->want_lp = r->logprobs;
    if (r->echo) {
        g->prompt_ids = malloc(n_ids * sizeof(int));
        g->prompt_lps = r->logprobs ? calloc(n_ids, sizeof(*g->prompt_lps)) : NULL;
        if (!g->prompt_ids || (r->logprobs && !g->prompt_lps)) {
            gen_free(g);
            srv_count_refused(s, MOE_ENOMEM);
            return moe_errorf(MOE_ENOMEM, "out of memory for the echoed prompt");
        }
        memcpy(g->prompt_ids, ids, n_ids * sizeof(int));
    }
    if (r->timeout_s > 0) {
        double d = g->t_submit + r->timeout_s;
        if (!gp.deadline || d < gp.deadline)
            gp.deadline = d;
    } else if (!gp.deadline && s->cfg.request_timeout > 0) {
        gp.deadline = g->t_submit + s->cfg.request_timeout;
    }
    static const struct moe_sched_events ev = { .on_token = on_token, .on_done = on_done,
                                                .on_logprobs = on_logprobs,
                                                .on_prompt_logprobs = on_prompt_logprobs };
    enum moe_status st = moe_sched_submit(s->sched, ids, (int)n_ids, &gp, &ev, g, &g->id);
    if (st != MOE_OK) {
        gen_free(g);
        if (st == MOE_EBUSY)
            moe_metrics_count(&s->metrics, &s->metrics.rejected_busy, 1);
        else if (st == MOE_ECANCELED) /* the drain began after refuse_draining looked: 503, as it answers */
            moe_metrics_count(&s->metrics, &s->metrics.rejected_draining, 1);
        else
            srv_count_refused(s, st);
        return st;
    }
    *out = g;
    return MOE_OK;
}

enum moe_status srv_gen_submit_gone(struct moe_server *s, const struct moe_gen_request *r, const struct srv_prompt *p,
                                    double deadline, uint64_t *id)
{
    struct srv_gen *g;
    enum moe_status st = srv_gen_submit_prepared(s, &s->gone, NULL, r, p, deadline, &g);
    if (st == MOE_OK) {
        if (id)
            *id = g->id;
        srv_gen_abandon(g);
    }
    return st;
}

void srv_gen_count_dropped(struct moe_server *s)
{
    if (!srv_loaded(s, true) || refuse_draining(s) != MOE_OK)
        return;
    moe_sched_count_dropped(s->sched);
    moe_metrics_observe(&s->metrics, &s->metrics.e2e, 0); /* ended as it would have been submitted */
}

void srv_gen_hold_release(struct moe_server *s, uint64_t hold)
{
    if (hold)
        moe_sched_hold_release(s->sched, hold);
}

enum moe_status srv_gen_submit(struct moe_server *s, struct srv_inbox *ib, void *owner,
                               const struct moe_gen_request *r, double deadline,
                               struct srv_gen **out)
{
    struct srv_prompt p;
    *out = NULL;
    enum moe_status st = srv_gen_prepare(s, r, NULL, &p);
    if (st == MOE_OK)
        st = srv_gen_submit_prepared(s, ib, owner, r, &p, deadline, out);
    free(p.ids);
    return st;
}

/* ---- metrics ---- */

/* model_name="..." with the exposition format's escapes (backslash, quote, newline). */
static void model_label(const char *name, char *out, size_t cap)
{
    size_t o = (size_t)snprintf(out, cap, "model_name=\"");
    for (const char *p = name; *p && o + 4 < cap; p++) {
        if (*p == '\\' || *p == '"') {
            out[o++] = '\\';
            out[o++] = *p;
        } else if (*p == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *p;
        }
    }
    snprintf(out + o, cap - o, "\"");
}

char *srv_metrics_text(struct moe_server *s, size_t *len)
{
    struct moe_strbuf b = { 0 };
    char lbl[2 * sizeof(s->model_name) + 16];
    model_label(s->model_name, lbl, sizeof(lbl));
    /* what the load builds (scheduler, expert cache, engine, context) is read once it is all there: a scrape
     * while the model loads reads 0 for them */
    bool loaded = atomic_load(&s->loaded);
    struct moe_sched_stats ss;
    memset(&ss, 0, sizeof(ss));
    if (loaded)
        moe_sched_stats(s->sched, &ss);
    moe_strbuf_printf(&b,
        "# HELP moeflow:num_requests_running Requests decoding now.\n"
        "# TYPE moeflow:num_requests_running gauge\nmoeflow:num_requests_running{%s} %d\n"
        "# HELP moeflow:num_requests_waiting Requests queued now.\n"
        "# TYPE moeflow:num_requests_waiting gauge\nmoeflow:num_requests_waiting{%s} %d\n",
        lbl, ss.running, lbl, ss.waiting);
    moe_strbuf_printf(&b,
        "# HELP moeflow:tokens_in_flight Prompt + max_tokens of accepted, unfinished requests (KV bound).\n"
        "# TYPE moeflow:tokens_in_flight gauge\nmoeflow:tokens_in_flight{%s} %lld\n",
        lbl, (long long)ss.tokens_in_flight);
    moe_strbuf_printf(&b,
        "# HELP moeflow:prompt_tokens_total Prompt tokens put in sequences' KV caches, computed or taken from "
        "the prefix cache: a request's prompt once per choice (n), where usage.prompt_tokens counts it once.\n"
        "# TYPE moeflow:prompt_tokens_total counter\nmoeflow:prompt_tokens_total{%s} %llu\n"
        "# HELP moeflow:prefix_cache_hit_tokens_total Prompt tokens taken from a slot's cache, not computed.\n"
        "# TYPE moeflow:prefix_cache_hit_tokens_total counter\nmoeflow:prefix_cache_hit_tokens_total{%s} %llu\n"
        "# HELP moeflow:generation_tokens_total Generated tokens.\n"
        "# TYPE moeflow:generation_tokens_total counter\nmoeflow:generation_tokens_total{%s} %llu\n",
        lbl, (unsigned long long)ss.prompt_tokens, lbl, (unsigned long long)ss.prefix_hit_tokens, lbl,
        (unsigned long long)ss.generated_tokens);
    moe_strbuf_printf(&b,
        "# HELP moeflow:requests_accepted_total Requests admitted by the scheduler.\n"
        "# TYPE moeflow:requests_accepted_total counter\nmoeflow:requests_accepted_total{%s} %llu\n"
        "# HELP moeflow:requests_completed_total Requests that finished (length or stop).\n"
        "# TYPE moeflow:requests_completed_total counter\nmoeflow:requests_completed_total{%s} %llu\n"
        "# HELP moeflow:requests_cancelled_total Requests cancelled (client, deadline or shutdown).\n"
        "# TYPE moeflow:requests_cancelled_total counter\nmoeflow:requests_cancelled_total{%s} %llu\n"
        "# HELP moeflow:requests_failed_total Requests that failed.\n"
        "# TYPE moeflow:requests_failed_total counter\nmoeflow:requests_failed_total{%s} %llu\n"
        "# HELP moeflow:requests_rejected_total Requests the scheduler refused at submission (a bound reached, draining, or one it cannot run).\n"
        "# TYPE moeflow:requests_rejected_total counter\nmoeflow:requests_rejected_total{%s} %llu\n",
        lbl, (unsigned long long)ss.accepted, lbl, (unsigned long long)ss.completed, lbl,
        (unsigned long long)ss.cancelled, lbl, (unsigned long long)ss.failed, lbl,
        (unsigned long long)ss.rejected);
    moe_strbuf_printf(&b, "# HELP moeflow:request_success_total Finished requests by finish reason.\n"
                          "# TYPE moeflow:request_success_total counter\n");
    for (int f = 0; f < 5; f++)
        moe_strbuf_printf(&b, "moeflow:request_success_total{%s,finished_reason=\"%s\"} %llu\n", lbl,
                          moe_finish_str((enum moe_finish)f), (unsigned long long)ss.by_finish[f]);
    moe_strbuf_printf(&b,
        "# HELP moeflow:experts_activated_total Distinct experts summed over MoE layer-steps.\n"
        "# TYPE moeflow:experts_activated_total counter\nmoeflow:experts_activated_total{%s} %llu\n"
        "# HELP moeflow:moe_layer_steps_total MoE layer-steps computed.\n"
        "# TYPE moeflow:moe_layer_steps_total counter\nmoeflow:moe_layer_steps_total{%s} %llu\n",
        lbl, (unsigned long long)ss.experts_activated, lbl, (unsigned long long)ss.layer_steps);
    moe_metrics_render(&s->metrics, &b, lbl);
    struct moe_offload_stats os;
    memset(&os, 0, sizeof(os));
    bool tiered = loaded && s->provider && moe_offload_stats_get(s->provider, &os);
    moe_strbuf_printf(&b,
        "# HELP moeflow:expert_cache_hits_total Expert acquires served from the tier.\n"
        "# TYPE moeflow:expert_cache_hits_total counter\n"
        "moeflow:expert_cache_hits_total{%s,tier=\"device\"} %llu\n"
        "moeflow:expert_cache_hits_total{%s,tier=\"host\"} %llu\n"
        "# HELP moeflow:expert_cache_misses_total Expert acquires not served from the tier.\n"
        "# TYPE moeflow:expert_cache_misses_total counter\n"
        "moeflow:expert_cache_misses_total{%s,tier=\"device\"} %llu\n"
        "moeflow:expert_cache_misses_total{%s,tier=\"host\"} %llu\n"
        "# HELP moeflow:expert_cache_bytes_total Bytes moved into the tier.\n"
        "# TYPE moeflow:expert_cache_bytes_total counter\n"
        "moeflow:expert_cache_bytes_total{%s,tier=\"device\"} %llu\n"
        "moeflow:expert_cache_bytes_total{%s,tier=\"host\"} %llu\n"
        "# HELP moeflow:expert_prefetches_total Expert loads started by prefetch (device tier).\n"
        "# TYPE moeflow:expert_prefetches_total counter\nmoeflow:expert_prefetches_total{%s} %llu\n"
        "# HELP moeflow:expert_prefetch_hits_total Demand hits on prefetched experts (device tier).\n"
        "# TYPE moeflow:expert_prefetch_hits_total counter\nmoeflow:expert_prefetch_hits_total{%s} %llu\n"
        "# HELP moeflow:expert_prefetch_accuracy Prefetch hits / prefetches (0 when none).\n"
        "# TYPE moeflow:expert_prefetch_accuracy gauge\nmoeflow:expert_prefetch_accuracy{%s} %.6f\n"
        "# HELP moeflow:expert_cache_tiered 1 when experts are served by the tiered cache.\n"
        "# TYPE moeflow:expert_cache_tiered gauge\nmoeflow:expert_cache_tiered{%s} %d\n",
        lbl, (unsigned long long)os.device.hits, lbl, (unsigned long long)os.host.hits,
        lbl, (unsigned long long)os.device.misses, lbl, (unsigned long long)os.host.misses,
        lbl, (unsigned long long)os.device.bytes, lbl, (unsigned long long)os.host.bytes,
        lbl, (unsigned long long)os.device.prefetches, lbl, (unsigned long long)os.device.prefetch_hits,
        lbl, os.device.prefetches ? (double)os.device.prefetch_hits / (double)os.device.prefetches : 0.0,
        lbl, tiered ? 1 : 0);
    moe_strbuf_printf(&b,
        "# HELP moeflow:expert_store_reads_total Expert records read from the lowest tier.\n"
        "# TYPE moeflow:expert_store_reads_total counter\nmoeflow:expert_store_reads_total{%s} %llu\n"
        "# HELP moeflow:expert_store_checksum_failures_total Records that failed their checksum (re-read "
        "when next needed).\n"
        "# TYPE moeflow:expert_store_checksum_failures_total counter\n"
        "moeflow:expert_store_checksum_failures_total{%s} %llu\n"
        "# HELP moeflow:expert_store_fallback 1 when the store reader fell back to buffered pread.\n"
        "# TYPE moeflow:expert_store_fallback gauge\nmoeflow:expert_store_fallback{%s} %llu\n",
        lbl, (unsigned long long)os.disk_reads, lbl, (unsigned long long)os.checksum_failures, lbl,
        (unsigned long long)os.fallbacks);
    moe_strbuf_printf(&b,
        "# HELP moeflow:expert_pins Experts pinned now (acquired by a forward pass, not yet released).\n"
        "# TYPE moeflow:expert_pins gauge\n"
        "moeflow:expert_pins{%s,tier=\"device\"} %d\n"
        "moeflow:expert_pins{%s,tier=\"host\"} %d\n"
        "# HELP moeflow:expert_transfers_in_flight Expert loads queued or running on the transfer thread.\n"
        "# TYPE moeflow:expert_transfers_in_flight gauge\nmoeflow:expert_transfers_in_flight{%s} %d\n"
        "# HELP moeflow:expert_cache_resident Slots of the tier holding an expert now.\n"
        "# TYPE moeflow:expert_cache_resident gauge\n"
        "moeflow:expert_cache_resident{%s,tier=\"device\"} %d\n"
        "moeflow:expert_cache_resident{%s,tier=\"host\"} %d\n"
        "# HELP moeflow:expert_cache_slots Expert slots of the tier (0 when all experts are resident).\n"
        "# TYPE moeflow:expert_cache_slots gauge\n"
        "moeflow:expert_cache_slots{%s,tier=\"device\"} %d\n"
        "moeflow:expert_cache_slots{%s,tier=\"host\"} %d\n",
        lbl, os.dev_pinned, lbl, os.host_pinned_records, lbl, os.transfers_in_flight,
        lbl, os.dev_resident, lbl, os.host_resident, lbl, os.dev_slots, lbl, os.host_slots);
    int kv_slots = 0, kv_total = 0;
    int64_t kv_tokens = 0;
    double kv_cap = 0;
    if (loaded) {
        moe_engine_kv_usage(s->engine, &kv_slots, &kv_tokens);
        kv_total = moe_engine_max_seqs(s->engine);
        kv_cap = (double)kv_total * (double)s->max_ctx;
    }
    moe_strbuf_printf(&b,
        "# HELP moeflow:kv_slots_used KV cache sequence slots in use now.\n"
        "# TYPE moeflow:kv_slots_used gauge\nmoeflow:kv_slots_used{%s} %d\n"
        "# HELP moeflow:kv_slots KV cache sequence slots (max-seqs).\n"
        "# TYPE moeflow:kv_slots gauge\nmoeflow:kv_slots{%s} %d\n"
        "# HELP moeflow:kv_tokens_used Tokens cached now over the KV slots in use.\n"
        "# TYPE moeflow:kv_tokens_used gauge\nmoeflow:kv_tokens_used{%s} %lld\n"
        "# HELP moeflow:kv_cache_usage_perc Cached tokens / (slots x context), 0..1.\n"
        "# TYPE moeflow:kv_cache_usage_perc gauge\nmoeflow:kv_cache_usage_perc{%s} %.6f\n",
        lbl, kv_slots, lbl, kv_total, lbl, (long long)kv_tokens,
        lbl, kv_cap > 0 ? (double)kv_tokens / kv_cap : 0.0);
    moe_strbuf_printf(&b,
        "# HELP moeflow:server_ready 1 when loaded, warm, not draining and the gRPC listener accepts.\n"
        "# TYPE moeflow:server_ready gauge\nmoeflow:server_ready{%s} %d\n"
        "# HELP moeflow:live_generations Generation objects alive (requests in the front ends).\n"
        "# TYPE moeflow:live_generations gauge\nmoeflow:live_generations{%s} %d\n",
        lbl, atomic_load(&s->ready) ? 1 : 0, lbl, atomic_load(&s->live_gens));
    if (b.oom) {
        moe_strbuf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.s;
}

/* ---- lifecycle ---- */

/* SIGTERM, SIGINT and SIGHUP (the terminal that started serve closing) each
 * drain the server, and are blocked in every thread the server starts (a thread
 * inherits its creator's mask, and moe_server_block_signals runs before the
 * first) and taken by the thread in moe_server_run with sigwait: no handler
 * interrupts the work of a server thread.  A thread started before the mask
 * was set (OpenBLAS starts its pool in a library constructor, before main)
 * could still receive a signal sent to the process and take the default
 * action; there a handler hands the signal on to the waiting thread, where
 * it stays pending until that thread takes it. */
static _Atomic bool sig_blocked;
static _Atomic(pthread_t) sig_waiter;

static void forward_signal(int sig)
{
    int saved = errno;
    pthread_kill(atomic_load(&sig_waiter), sig);
    errno = saved;
}

static void stop_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
}

/* The name of a signal stop_signals holds, for the log. */
static const char *stop_signal_name(int sig)
{
    return sig == SIGINT ? "SIGINT" : sig == SIGHUP ? "SIGHUP" : "SIGTERM";
}

void moe_server_block_signals(void)
{
    sigset_t set;
    stop_signals(&set);
    atomic_store(&sig_waiter, pthread_self());
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = forward_signal;
    sa.sa_mask = set;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    atomic_store(&sig_blocked, true);
}

/* A lost device wakes the waiting thread as a signal would; moe_server_run
 * tells the two apart by s->device_failed, set first. */
static void server_notify_device_error(void)
{
    if (atomic_load(&sig_blocked))
        pthread_kill(atomic_load(&sig_waiter), SIGTERM);
}

static int wait_signal(void)
{
    sigset_t set;
    stop_signals(&set);
    int sig = 0;
    if (sigwait(&set, &sig) != 0)
        return SIGTERM;
    return sig;
}

/* Generate a few tokens through the whole stack so the first client does not
 * pay for first-touch page faults and lazy initialisation. */
static enum moe_status server_warmup(struct moe_server *s)
{
    if (s->cfg.warmup_tokens <= 0)
        return MOE_OK;
    struct srv_inbox ib;
    srv_inbox_init(&ib, NULL, NULL);
    struct moe_gen_request r = { 0 };
    r.prompt = "def main():";
    r.prompt_len = strlen(r.prompt);
    r.max_tokens = s->cfg.warmup_tokens;
    r.ignore_eos = true;
    r.sampling.top_p = 1;
    int tag = 0;
    struct srv_gen *g = NULL;
    enum moe_status st = srv_gen_submit(s, &ib, &tag, &r, moe_now() + 300, &g);
    if (st != MOE_OK) {
        srv_inbox_free(&ib);
        return moe_error_prefix(st, "warm-up request of warmup-tokens = %d (lower warmup-tokens, or 0 for none)",
                                s->cfg.warmup_tokens);
    }
    bool done = false;
    struct srv_events ev;
    while (!done) {
        struct timespec ts = { 0, 2000000 };
        nanosleep(&ts, NULL);
        for (struct srv_gen *p; (p = srv_inbox_pop(&ib));) {
            srv_gen_events(p, &ev);
            free(ev.toks);
            free(ev.lps);
            if (ev.done) {
                done = true;
                if (ev.why == MOE_FINISH_ERROR || ev.why == MOE_FINISH_DEADLINE)
                    st = moe_errorf(MOE_EDEVICE, "warm-up request failed: %s", ev.msg);
            }
            srv_gen_put(p);
        }
    }
    srv_gen_put(g);
    srv_inbox_free(&ib);
    return st;
}

struct moe_server *moe_server_create(const struct moe_serve_config *cfg, const struct moe_pred_spec *pred)
{
    struct moe_server *s = calloc(1, sizeof(*s));
    if (!s) {
        moe_errorf(MOE_ENOMEM, "out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    s->pred = *pred;
    s->t_start = moe_now();
    s->created = (long long)time(NULL);
    moe_metrics_init(&s->metrics);
    pthread_mutex_init(&s->prep.mu, NULL);
    pthread_cond_init(&s->prep.cv, NULL);
    srv_inbox_init(&s->gone, NULL, NULL);
    s->faults = faults_parse(getenv("MOEFLOW_TEST_FAIL_ALLOC"));
    const char *dir = cfg->model[0] ? cfg->model : moe_default_model_dir();
    if (cfg->model_name[0]) {
        snprintf(s->model_name, sizeof(s->model_name), "%s", cfg->model_name);
    } else {
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%s", dir);
        size_t n = strlen(tmp);
        while (n > 1 && tmp[n - 1] == '/')
            tmp[--n] = 0;
        snprintf(s->model_name, sizeof(s->model_name), "%s", basename(tmp));
    }
    return s;
}

/* --chat-template: auto takes the model's template when it has one (a
 * template moeflow cannot run is said and the markers are used), markers
 * none, anything else is a file that must compile. */
/* A template that compiles may still fail at every render (a construct outside the subset that only
 * rendering meets): it renders one user message here, at start-up. */
static enum moe_status chat_probe(const struct moe_chat *c)
{
    json_t *msgs = json_pack("[{s:s,s:s}]", "role", "user", "content", "Hello");
    char *text = NULL;
    size_t len = 0;
    enum moe_status st = msgs ? moe_chat_render(c, msgs, NULL, &text, &len) : MOE_ENOMEM;
    free(text);
    json_decref(msgs);
    return st;
}

static enum moe_status load_chat_template(struct moe_server *s, const char *dir)
{
    const char *spec = s->cfg.chat_template[0] ? s->cfg.chat_template : "auto";
    enum moe_status st = MOE_OK;
    if (!strcmp(spec, "markers"))
        return MOE_OK;
    if (strcmp(spec, "auto")) {
        st = moe_chat_load_file(spec, dir, &s->chat);
        if (st == MOE_OK && (st = chat_probe(s->chat)) != MOE_OK)
            moe_error_prefix(st, "it cannot render one user message");
        return st ? moe_error_prefix(st, "--chat-template") : MOE_OK;
    }
    st = moe_chat_load_dir(dir, &s->chat);
    if (st == MOE_OK && s->chat && (st = chat_probe(s->chat)) != MOE_OK && st != MOE_ENOMEM) {
        moe_error_prefix(st, "the chat template of %s compiles but cannot render one user message",
                         moe_chat_source(s->chat));
        moe_chat_free(s->chat);
        s->chat = NULL;
    }
    if (st == MOE_ENOMEM)
        return st;
    if (st)
        fprintf(stderr, "moeflow serve: warning: %s; chat prompts use moeflow's <|role|> markers instead (give "
                "--chat-template FILE with a template of the supported subset, or markers)\n", moe_last_error());
    else if (s->chat)
        fprintf(stderr, "moeflow serve: chat prompts follow the chat template of %s\n", moe_chat_source(s->chat));
    return MOE_OK;
}

/* The context per sequence (s->max_ctx): max-ctx when given (past the model's: an error), else the model's, cut
 * so that the KV cache of max-seqs sequences fits kv-cache-bytes (auto: half of what the backend has free once
 * the expert tiers are allocated and the engine's other weights counted); under 64 tokens per sequence is an
 * error that says what to change. */
static enum moe_status pick_context(struct moe_server *s)
{
    const struct moe_serve_config *cfg = &s->cfg;
    int model_ctx = s->model->cfg.max_pos;
    /* a context past the model's is refused as --seq-len past it is, not served shorter than asked */
    if (cfg->max_ctx > model_ctx)
        return moe_errorf(MOE_EINVAL, "max-ctx %d exceeds the model's context of %d tokens (max_position_embeddings): "
                          "lower it, or give 0 for the model's", cfg->max_ctx, model_ctx);
    s->max_ctx = cfg->max_ctx > 0 ? cfg->max_ctx : model_ctx;
    if (cfg->max_ctx > 0)
        return MOE_OK;
    uint64_t budget = 0;
    bool automatic = !strcmp(cfg->kv_cache_bytes, "auto");
    if (!automatic) {
        moe_offload_parse_bytes("kv-cache-bytes", cfg->kv_cache_bytes, &budget); /* checked when set */
    } else {
        /* no backend yet: the engine will make a CPU one, in the host's memory */
        size_t fr = 0, tot = 0;
        uint64_t avail = 0, total = 0;
        bool known = s->backend ? s->backend->ops->mem_info && s->backend->ops->mem_info(s->backend->ctx, &fr, &tot) == MOE_OK
                                : moe_host_memory(&avail, &total);
        if (!known) {
            moe_error_clear();
            return MOE_OK; /* nothing to size it by: the model's context */
        }
        /* the engine's own weights go into the same memory before the cache */
        uint64_t have = s->backend ? (uint64_t)fr : avail, dense = moe_model_dense_bytes(s->model);
        budget = have > dense ? (have - dense) / 2 : 0;
    }
    uint64_t per_token = moe_engine_kv_bytes_per_token(&s->model->cfg, s->kv_dt);
    uint64_t fit = budget / (per_token * (uint64_t)cfg->max_seqs);
    if (fit >= (uint64_t)model_ctx)
        return MOE_OK;
    if (fit < 64)
        return moe_errorf(MOE_ENOMEM, "the KV cache (%llu bytes per token in %s) holds %llu tokens per sequence for "
                          "max-seqs %d in %s%llu bytes: lower max-seqs, set max-ctx, use kv-dtype bf16%s",
                          (unsigned long long)per_token, cfg->kv_dtype, (unsigned long long)fit, cfg->max_seqs,
                          automatic ? "half the backend's free memory, " : "kv-cache-bytes ",
                          (unsigned long long)budget, automatic ? "" : " or raise kv-cache-bytes");
    s->max_ctx = (int)fit;
    bool gib = budget >= (uint64_t)1 << 30; /* a small budget in MiB, where it read 0.00 GiB */
    MOE_WARN("context %d tokens per sequence (the model's is %d): the KV cache of max-seqs %d sequences at %llu "
             "bytes per token fits %s (%.*f %s); set max-ctx, max-seqs, kv-dtype or kv-cache-bytes to choose",
             s->max_ctx, model_ctx, cfg->max_seqs, (unsigned long long)per_token,
             automatic ? "half the backend's free memory" : "kv-cache-bytes", gib ? 2 : 1,
             (double)budget / (gib ? 1 << 30 : 1 << 20), gib ? "GiB" : "MiB");
    return MOE_OK;
}

/* Load the model, tokenizer, expert cache, predictor, engine and scheduler,
 * then warm up.  The listeners are already open (readiness off). */
static enum moe_status server_load(struct moe_server *s)
{
    const struct moe_serve_config *cfg = &s->cfg;
    const char *dir = cfg->model[0] ? cfg->model : moe_default_model_dir();
    /* testing (tests/server/test_serve_api.py): the load waits for SIGTERM, SIGINT or SIGHUP before it starts, so
     * the front ends can be seen while a model loads */
    if (getenv("MOEFLOW_TEST_HOLD_LOAD"))
        return moe_errorf(MOE_ECANCELED, "%s while the load was held (MOEFLOW_TEST_HOLD_LOAD)",
                          stop_signal_name(wait_signal()));
    s->model = moe_model_open(dir);
    if (!s->model)
        return moe_error_prefix(MOE_EIO, "--model"); /* the message names the directory */
    char tpath[4200];
    snprintf(tpath, sizeof(tpath), "%s/tokenizer.json", dir);
    s->tok = moe_tokenizer_load(tpath);
    if (!s->tok)
        return MOE_EIO; /* the message names the tokenizer's file */
    if (moe_tokenizer_vocab_size(s->tok) > s->model->cfg.vocab)
        return moe_errorf(MOE_EFORMAT, "%s has %d tokens, more than the model's vocabulary of %d (vocab_size "
                          "in %s/config.json): the two files are not of the same model", tpath,
                          moe_tokenizer_vocab_size(s->tok), s->model->cfg.vocab, dir);
    enum moe_status cst = load_chat_template(s, dir);
    if (cst)
        return cst;
    if ((cst = moe_token_bytes_build(s->tok, s->model->cfg.vocab, &s->json_vocab)) != MOE_OK)
        return cst;
    enum moe_status st = moe_offload_runtime_create(s->model, &s->cfg.offload, &s->backend, &s->provider);
    if (st != MOE_OK) /* MOE_EINVAL: a tier size or trace that does not fit this model */
        return moe_error_prefix(st, "expert cache");
    s->kv_dt = MOE_DT_F32;
    moe_engine_kv_dtype_parse(cfg->kv_dtype, &s->kv_dt); /* checked when the option was set */
    if ((st = pick_context(s)) != MOE_OK)
        return st;
    /* 0 = derived from the context. */
    if (s->cfg.max_prompt <= 0)
        s->cfg.max_prompt = s->max_ctx - 1;
    if (s->cfg.max_output <= 0)
        s->cfg.max_output = s->max_ctx - 1;
    s->chat_fills = s->cfg.default_max_tokens <= 0;
    if (s->cfg.default_max_tokens <= 0) /* 0 = 16, within max-output */
        s->cfg.default_max_tokens = s->cfg.max_output < 16 ? s->cfg.max_output : 16;
    if (s->cfg.default_max_tokens > s->cfg.max_output) /* max-output derived from the context */
        return moe_errorf(MOE_EINVAL, "default-max-tokens %d exceeds max-output %d (the context less one): "
                          "lower it", s->cfg.default_max_tokens, s->cfg.max_output);
    if (s->pred.kind != MOE_PRED_NONE) {
        s->predictor = moe_predictor_create(s->model, &s->pred, cfg->max_seqs);
        if (!s->predictor) {
            return moe_error_prefix(MOE_EINVAL, "--predictor '%s'", cfg->predictor);
        }
        struct moe_pred_prefetch pf = {
            .min_score = (float)cfg->prefetch_min_score,
            .max_per_layer = cfg->prefetch_max_per_layer,
            .rank_only = !cfg->prefetch,
        };
        moe_predictor_set_provider(s->predictor, s->provider, &pf);
    }
    struct moe_engine_params ep = {
        .max_seqs = cfg->max_seqs,
        .max_ctx = s->max_ctx,
        .max_batch_tokens = cfg->max_batch_tokens,
        .n_threads = cfg->threads,
        .provider = s->provider,
        .backend = s->backend,
        .kv_dtype = s->kv_dt,
    };
    s->engine = moe_engine_create(s->model, &ep);
    if (!s->engine) {
        moe_offload_explain(MOE_EINVAL, s->backend, s->provider);
        moe_error_prefix(MOE_ENOMEM, "engine");
        return MOE_EINVAL;
    }
    struct moe_sched_params sp = {
        .max_running = moe_serve_max_running(cfg),
        .max_queued = cfg->max_queued,
        .max_tokens_in_flight = cfg->max_tokens_in_flight,
        .max_prompt = s->cfg.max_prompt,
        .max_output = s->cfg.max_output,
        .micro_batch = cfg->micro_batch,
        .sample_threads = cfg->sample_threads,
        .prefill_chunk = cfg->prefill_chunk,
        .grouping = strcmp(cfg->grouping, "regroup") ? MOE_GROUP_FCFS : MOE_GROUP_REGROUP,
        .aging_steps = cfg->aging_steps,
        .lookahead = cfg->lookahead > 0 ? cfg->lookahead : -1, /* the scheduler's 0 means 1 */
        .provider = s->provider,
        .path_decay = (float)cfg->path_decay,
        .prefix_cache = cfg->prefix_cache != 0,
        .predictor = s->predictor,
        .engine_max_ctx = s->max_ctx,
        .engine_max_batch_tokens = cfg->max_batch_tokens,
    };
    moe_sched_params_test_faults(&sp); /* tests/server/test_serve_faults.py */
    s->sched = moe_sched_create(s->engine, &sp);
    if (!s->sched)
        return MOE_EINVAL; /* the scheduler's message names it */
    if (moe_sched_start(s->sched) != MOE_OK) {
        moe_error_prefix(MOE_EINVAL, "scheduler thread");
        return MOE_EINVAL;
    }
    atomic_store(&s->loaded, true);
    return server_warmup(s);
}

/* Seconds the front ends have, once the scheduler has ended every generation, to deliver the last
 * replies (terminal statuses, the end of streams) before they stop. */
#define SRV_DELIVER_S 5.0

/* Drain the scheduler (moe_sched_drain_why), then give the front ends SRV_DELIVER_S from the drain's end
 * to deliver the replies of the generations they hold: the deadline returned, which their stop keeps too. */
static double drain_and_deliver(struct moe_server *s, double timeout_s, const char *why)
{
    moe_sched_drain_why(s->sched, timeout_s, why);
    double until = moe_now() + SRV_DELIVER_S;
    while (atomic_load(&s->live_gens) > 0 && moe_now() < until) {
        struct timespec ts = { 0, 5000000 };
        nanosleep(&ts, NULL);
    }
    return until;
}

enum moe_status moe_server_run(struct moe_server *s)
{
    enum moe_status st = MOE_OK;
    double drain_end = 0; /* the drain's end: the front ends deliver the replies they hold until then */
    srv_prep_start(s);
    if (s->cfg.http_port) {
        s->http = srv_http_start(s);
        if (!s->http)
            return moe_error_prefix(MOE_EIO, "HTTP listener %s:%d", s->cfg.host, s->cfg.http_port);
    }
    if (s->cfg.grpc_port) {
        s->grpc = srv_grpc_start(s);
        if (!s->grpc) {
            st = moe_error_prefix(MOE_EIO, "gRPC listener %s:%d", s->cfg.host, s->cfg.grpc_port);
            goto out_stop;
        }
    }
    /* Listeners first: /ready and health answer "not ready" while loading. */
    st = server_load(s);
    if (st != MOE_OK)
        goto out_stop;
    atomic_store(&s->ready, !atomic_load(&s->grpc_lost)); /* a listener lost while loading stays lost */
    char grpc_at[300] = "off", http_at[300] = "off";
    bool v6 = strchr(s->cfg.host, ':') && s->cfg.host[0] != '['; /* an IPv6 literal goes in brackets */
    if (s->cfg.grpc_port)
        snprintf(grpc_at, sizeof(grpc_at), "%s%s%s:%d", v6 ? "[" : "", s->cfg.host, v6 ? "]" : "", s->cfg.grpc_port);
    if (s->cfg.http_port)
        snprintf(http_at, sizeof(http_at), "%s%s%s:%d", v6 ? "[" : "", s->cfg.host, v6 ? "]" : "", s->cfg.http_port);
    double kv_mib = (double)moe_engine_kv_bytes_per_token(&s->model->cfg, s->kv_dt) * s->max_ctx * s->cfg.max_seqs /
                    (1 << 20);
    fprintf(stderr, "moeflow serve: ready: model %s, gRPC %s, HTTP %s; %d sequences of up to %d tokens (KV "
            "cache %.1f MiB in %s) (%.1f s to load and warm up)\n", s->model_name, grpc_at, http_at,
            s->cfg.max_seqs, s->max_ctx, kv_mib, moe_dtype_name(s->kv_dt), moe_now() - s->t_start);
    fflush(stderr);

    if (!atomic_load(&sig_blocked))
        moe_server_block_signals();
    int sig = wait_signal();
    bool device = atomic_load(&s->device_failed);
    char stop_why[300] = "";
    if (device) {
        snprintf(stop_why, sizeof(stop_why), "the server is stopping: the device failed (%s)", s->device_why);
        fprintf(stderr, "moeflow serve: %s: cancelling the requests in flight and exiting\n", stop_why);
    } else {
        fprintf(stderr, "moeflow serve: %s: draining (up to %.1f s)\n",
                stop_signal_name(sig), s->cfg.drain_timeout);
    }
    atomic_store(&s->ready, false);
    atomic_store(&s->draining, true);
    double t0 = moe_now();
    /* the front ends have SRV_DELIVER_S from the drain's end, not from the end of its timeout: after a lost
     * device (no timeout) or a drain that ended early they do not wait for a slow client that long */
    drain_end = drain_and_deliver(s, device ? 0 : s->cfg.drain_timeout, device ? stop_why : NULL);
    if (!device && atomic_load(&s->device_failed)) { /* lost during the drain: it ended the drain */
        device = true;
        fprintf(stderr, "moeflow serve: the device failed while draining (%s): the requests left were cancelled\n",
                s->device_why);
    }
    struct moe_sched_stats ss;
    moe_sched_stats(s->sched, &ss);
    fprintf(stderr, "moeflow serve: drained in %.2f s: accepted %llu = completed %llu + cancelled "
            "%llu + failed %llu\n", moe_now() - t0, (unsigned long long)ss.accepted,
            (unsigned long long)ss.completed, (unsigned long long)ss.cancelled,
            (unsigned long long)ss.failed);
    if (device)
        st = moe_errorf(MOE_EDEVLOST, "stopped after a device error (see the log above)");
out_stop:
    /* A load that failed once the scheduler ran (the warm-up) may have admitted requests meanwhile: they
     * end here (cancelled, as a drain whose time ran out ends them, their clients told that the warm-up
     * failed and why), their last events delivered to the front ends' inboxes before the front ends stop
     * and free them, and the front ends given the time to deliver them, as after a drain; the scheduler
     * refuses any later one.  After a drain, nothing is left to end. */
    if (atomic_load(&s->loaded) && !atomic_exchange(&s->draining, true)) {
        const char *err = moe_last_error(); /* the warm-up's, which the caller reports */
        char why[256];
        snprintf(why, sizeof(why), "the server is stopping: its warm-up failed (%.*s)", moe_utf8_cut(err, 150), err);
        atomic_store(&s->ready, false);
        drain_end = drain_and_deliver(s, 0, why);
    }
    /* the preparations under way end first (a request they made is refused as draining, or the
     * front end delivers its reply as it stops); the front ends prepare what comes after inline */
    srv_prep_stop(s);
    if (s->grpc)
        srv_grpc_stop(s->grpc, drain_end);
    s->grpc = NULL;
    if (s->http)
        srv_http_stop(s->http, drain_end);
    s->http = NULL;
    return st;
}

void moe_server_destroy(struct moe_server *s)
{
    if (!s)
        return;
    srv_prep_stop(s); /* before the front ends, whose inboxes its jobs come back to */
    if (s->grpc)
        srv_grpc_stop(s->grpc, 0);
    if (s->http)
        srv_http_stop(s->http, 0);
    if (s->sched)
        moe_sched_destroy(s->sched); /* the last on_done of a generation of s->gone is before it returns */
    srv_inbox_free(&s->gone);
    if (s->engine)
        moe_engine_destroy(s->engine);
    if (s->predictor)
        moe_predictor_destroy(s->predictor);
    if (s->provider)
        moe_provider_destroy(s->provider);
    moe_backend_destroy(s->backend);
    if (s->tok)
        moe_tokenizer_free(s->tok);
    moe_token_bytes_free(&s->json_vocab);
    moe_chat_free(s->chat);
    if (s->model)
        moe_model_close(s->model);
    moe_metrics_free(&s->metrics);
    pthread_cond_destroy(&s->prep.cv);
    pthread_mutex_destroy(&s->prep.mu);
    free(s);
}
