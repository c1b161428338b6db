/* gRPC front end on gRPC C-core: one completion queue polled by one thread,
 * raw byte buffers, protobuf-c messages.  Serves moeflow.v1.Generation,
 * the KServe v2 subset of inference.GRPCInferenceService and
 * grpc.health.v1.Health.
 *
 * Each call is a small state machine: initial metadata + first message are
 * received together; a RECV_CLOSE_ON_SERVER batch stays pending the whole
 * call and completes early with cancelled=1 when the client cancels, goes
 * away or the deadline passes (then the generation is cancelled at once).
 * Outgoing messages wait in a per-call queue: one SEND_MESSAGE in flight at
 * a time, the status goes last.  A decoupled ModelStreamInfer stream keeps
 * receiving while its requests generate (up to GRPC_STREAM_GENS at once; past
 * that it reads the next request when one finishes, and not while
 * GRPC_STREAM_BACKLOG responses wait for the client), each response naming
 * its request's id.  A health Watch stays open, sending its service's status
 * whenever readiness changes (watch_update), until the front end stops.
 * A large request message is decoded and tokenized on the server's
 * preparation threads (prep_start), a stream's next request read once it is
 * back.  Scheduler events and prepared requests reach this thread through
 * the inbox, which is drained after every completion-queue wake-up (at most
 * GRPC_POLL_MS apart while any generation is alive or any request is being
 * prepared). */
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc_service.pb-c.h"
#include "health.pb-c.h"
#include "moeflow.pb-c.h"
#include "srv.h"

#define GRPC_POLL_MS 2        /* completion-queue poll while tokens may be pending */
#define GRPC_IDLE_POLL_MS 100  /* otherwise */
#define GRPC_PENDING_ACCEPTS 8
#define GRPC_STREAM_GENS 32    /* requests of one ModelStreamInfer stream generating at once */
#define GRPC_STREAM_BACKLOG 64 /* responses a ModelStreamInfer stream may hold unsent before it stops
                                  reading requests (a client that does not read holds up its own stream) */

enum gmethod {
    GM_UNKNOWN,
    GM_GENERATE, GM_TOKENIZE, GM_MODEL_INFO,
    GM_HEALTH, GM_HEALTH_WATCH,
    GM_LIVE, GM_READY, GM_MODEL_READY, GM_SERVER_META, GM_MODEL_META, GM_INFER, GM_STREAM_INFER,
};

static const struct { const char *path; enum gmethod m; } methods[] = {
    { "/moeflow.v1.Generation/Generate", GM_GENERATE },
    { "/moeflow.v1.Generation/Tokenize", GM_TOKENIZE },
    { "/moeflow.v1.Generation/ModelInfo", GM_MODEL_INFO },
    { "/grpc.health.v1.Health/Check", GM_HEALTH },
    { "/grpc.health.v1.Health/Watch", GM_HEALTH_WATCH },
    { "/inference.GRPCInferenceService/ServerLive", GM_LIVE },
    { "/inference.GRPCInferenceService/ServerReady", GM_READY },
    { "/inference.GRPCInferenceService/ModelReady", GM_MODEL_READY },
    { "/inference.GRPCInferenceService/ServerMetadata", GM_SERVER_META },
    { "/inference.GRPCInferenceService/ModelMetadata", GM_MODEL_META },
    { "/inference.GRPCInferenceService/ModelInfer", GM_INFER },
    { "/inference.GRPCInferenceService/ModelStreamInfer", GM_STREAM_INFER },
};

typedef Grpc__Health__V1__HealthCheckResponse__ServingStatus health_status;
#define HEALTH(x) GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__##x

enum gop { GOP_NEW, GOP_RECV, GOP_SEND, GOP_CLOSE, GOP_STATUS, GOP_SHUTDOWN };

struct gcall;

/* One generation of a call: a unary call has at most one, a decoupled
 * ModelStreamInfer stream up to GRPC_STREAM_GENS. */
struct cgen {
    struct gcall *c;
    struct srv_gen *g;
    bool kstream;                  /* ModelStreamInfer: one response per batch of new tokens */
    char kid[128];                 /* KServe request id */
    struct moe_strbuf acc;         /* ModelInfer / non-streamed: text so far */
    struct moe_stop_scan scan;     /* Generate: stop sequences (scan.n = 0: none) */
    int n_out;                     /* Generate with stop: tokens turned into text */
    struct cgen *next;
};

struct gtag {
    struct gcall *c;
    enum gop op;
};

/* A call's request message being prepared (srv_job_start): a copy of the message, and what work made
 * of it. */
struct gjob {
    struct srv_job j;
    struct moe_server *srv;
    enum gmethod m;
    uint8_t *msg;
    size_t len;
    /* Tokenize: the reply, a message (has_reply) and the status; a refusal counts as refused's
     * (srv_count_refused) */
    grpc_status_code code;
    enum moe_status refused;
    char status_msg[512];
    uint8_t *reply;
    size_t reply_len;
    bool has_reply;
    /* Generate, ModelInfer, ModelStreamInfer: the request decoded and prepared, or st and err */
    enum moe_status st;
    char err[1024];
    bool decoded;                  /* r holds a request */
    struct moe_gen_request r;
    struct srv_prompt p;
    struct moe_stop_scan scan;
    char kid[128];                 /* KServe request id */
    double deadline;               /* the call's (gcall.deadline) */
};

struct gmsg {
    grpc_byte_buffer *bb;
    struct gmsg *next;
};

struct gcall {
    struct grpc_front *gf;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    enum gmethod m;
    struct gtag t_new, t_recv, t_send, t_close, t_status;
    grpc_byte_buffer *recv_bb;
    grpc_byte_buffer *send_bb;     /* message in flight, destroyed when its send completes */
    int cancelled;                 /* set by RECV_CLOSE_ON_SERVER */
    int pending;                   /* batches in flight */
    bool started;                  /* NEW completed: the call exists */
    bool close_done, send_busy, status_queued, status_started, recv_eof, got_msg, recv_busy;
    struct gmsg *q_head, *q_tail;
    int n_queued;                  /* messages on q_head */
    grpc_status_code code;
    char status_msg[512];
    struct cgen *gens;             /* generations in progress */
    int n_gens;
    struct gjob *prep;             /* its request being prepared: a stream reads its next one after */
    double deadline;               /* moe_now() seconds, 0 = none */
    health_status watch;           /* Watch: the status last sent (UNKNOWN: none yet) */
    struct gcall *next_live, *prev_live; /* on grpc_front.live once started */
};

struct grpc_front {
    struct moe_server *srv;
    grpc_server *server;
    grpc_completion_queue *cq;
    struct srv_inbox inbox;
    pthread_t thread;
    atomic_bool stop;
    _Atomic double stop_until;     /* with stop: moe_now() seconds until which calls may still deliver
                                      their replies (0: none) */
    bool shutdown_started, shutdown_done, cq_shutdown, cancelled_all, watches_ended, idle_ended;
    bool watch_ready;              /* readiness as the health Watch calls were last brought up to date */
    struct gtag t_shutdown;
    int n_calls;                   /* gcall objects alive (including pending accepts) */
    int n_prep;                    /* calls whose request is being prepared */
    struct gcall *live;            /* started calls */
};

/* ---- gRPC core's log ---- */

static _Atomic(struct moe_server *) log_srv; /* the server whose listener the log speaks of */
static atomic_bool log_binding;              /* the port is being bound: a failure is said once, by us */

/* gRPC core's messages go to stderr as before.  One of them matters to readiness and liveness: after
 * an accept() fails (out of file descriptors) gRPC core never accepts on the port again, so the server
 * is no longer ready, nor alive to /health (grpc_lost); a supervisor should restart it. */
static void grpc_log(gpr_log_func_args *a)
{
    const char *file = strrchr(a->file, '/') ? strrchr(a->file, '/') + 1 : a->file;
    if (atomic_load(&log_binding)) /* the bind's own error names the address and what to do */
        MOE_DBG("grpc %s %s:%d] %s", gpr_log_severity_string(a->severity), file, a->line, a->message);
    else
        fprintf(stderr, "grpc %s %s:%d] %s\n", gpr_log_severity_string(a->severity), file, a->line, a->message);
    struct moe_server *s = atomic_load(&log_srv);
    if (s && strstr(a->message, "Failed accept4") && !atomic_exchange(&s->grpc_lost, true)) {
        atomic_store(&s->ready, false);
        MOE_ERR("the gRPC listener stopped accepting connections (%s) and gRPC core does not resume it: "
                "not ready any more, /health answers 503; restart the server (and raise its open-file limit)",
                a->message);
    }
}

/* ---- calls ---- */

static void accept_one(struct grpc_front *gf);

static struct gcall *gcall_new(struct grpc_front *gf)
{
    struct gcall *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->gf = gf;
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    c->t_new = (struct gtag){ c, GOP_NEW };
    c->t_recv = (struct gtag){ c, GOP_RECV };
    c->t_send = (struct gtag){ c, GOP_SEND };
    c->t_close = (struct gtag){ c, GOP_CLOSE };
    c->t_status = (struct gtag){ c, GOP_STATUS };
    gf->n_calls++;
    return c;
}

static void gcall_drop_queue(struct gcall *c)
{
    while (c->q_head) {
        struct gmsg *m = c->q_head;
        c->q_head = m->next;
        grpc_byte_buffer_destroy(m->bb);
        free(m);
    }
    c->q_tail = NULL;
    c->n_queued = 0;
}

/* Unlink k from its call and free it; a generation still running is cancelled. */
static void cgen_drop(struct cgen *k)
{
    struct gcall *c = k->c;
    for (struct cgen **pp = &c->gens; *pp; pp = &(*pp)->next)
        if (*pp == k) {
            *pp = k->next;
            c->n_gens--;
            break;
        }
    if (k->g)
        srv_gen_abandon(k->g); /* frees KV and pins at once when still running */
    moe_strbuf_free(&k->acc);
    moe_stop_scan_free(&k->scan);
    free(k);
}

static void gcall_drop_gens(struct gcall *c)
{
    while (c->gens)
        cgen_drop(c->gens);
}

/* The call ended while its request was being prepared: the job is freed where it is found. */
static void gcall_drop_prep(struct gcall *c)
{
    if (!c->prep)
        return;
    MOE_DBG("grpc: call %p ended while its request was prepared or waited to be", (void *)c);
    srv_job_let_go(&c->prep->j);
    c->prep = NULL;
    c->gf->n_prep--;
}

static void gcall_free(struct gcall *c)
{
    gcall_drop_prep(c);
    gcall_drop_gens(c);
    gcall_drop_queue(c);
    if (c->recv_bb)
        grpc_byte_buffer_destroy(c->recv_bb);
    if (c->call)
        grpc_call_unref(c->call);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    if (c->started) {
        if (c->prev_live)
            c->prev_live->next_live = c->next_live;
        else
            c->gf->live = c->next_live;
        if (c->next_live)
            c->next_live->prev_live = c->prev_live;
    }
    c->gf->n_calls--;
    free(c);
}

/* Free the call once nothing is in flight and it has ended. */
static bool gcall_maybe_free(struct gcall *c)
{
    if (c->pending == 0 && c->close_done) {
        gcall_free(c);
        return true;
    }
    return false;
}

static bool start_batch(struct gcall *c, const grpc_op *ops, size_t n, struct gtag *tag)
{
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, tag, NULL);
    if (e != GRPC_CALL_OK) {
        MOE_WARN("grpc: start_batch failed (%d)", (int)e);
        return false;
    }
    c->pending++;
    return true;
}

static void send_status_now(struct gcall *c)
{
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    op.data.send_status_from_server.status = c->code;
    grpc_slice det = grpc_slice_from_copied_string(c->status_msg);
    op.data.send_status_from_server.status_details = c->code == GRPC_STATUS_OK ? NULL : &det;
    c->status_started = true;
    start_batch(c, &op, 1, &c->t_status);
    grpc_slice_unref(det);
}

static void pump_send(struct gcall *c)
{
    if (c->send_busy || c->status_started || c->cancelled)
        return;
    if (c->q_head) {
        struct gmsg *m = c->q_head;
        c->q_head = m->next;
        if (!c->q_head)
            c->q_tail = NULL;
        c->n_queued--;
        grpc_op op;
        memset(&op, 0, sizeof(op));
        op.op = GRPC_OP_SEND_MESSAGE;
        op.data.send_message.send_message = m->bb;
        c->send_busy = true;
        c->send_bb = m->bb;
        free(m);
        if (!start_batch(c, &op, 1, &c->t_send)) {
            c->send_busy = false;
            grpc_byte_buffer_destroy(c->send_bb);
            c->send_bb = NULL;
        }
        return;
    }
    if (c->status_queued)
        send_status_now(c);
}

static void queue_bytes(struct gcall *c, const uint8_t *buf, size_t len)
{
    if (c->cancelled || c->status_queued)
        return;
    struct gmsg *m = calloc(1, sizeof(*m));
    if (!m)
        return;
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)buf, len);
    m->bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    if (c->q_tail)
        c->q_tail->next = m;
    else
        c->q_head = m;
    c->q_tail = m;
    c->n_queued++;
    pump_send(c);
}

#define QUEUE_PACKED(c, fn, msg, size)                                        \
    do {                                                                      \
        size_t _n = (size);                                                   \
        uint8_t *_b = malloc(_n ? _n : 1);                                    \
        if (_b) {                                                             \
            fn##__pack(msg, _b);                                              \
            queue_bytes(c, _b, _n);                                           \
            free(_b);                                                         \
        }                                                                     \
    } while (0)
/* A call's reply message queued when it fits max-message-bytes, else the call ends RESOURCE_EXHAUSTED
 * naming its size (queue_over_max). */
#define QUEUE_MSG(c, fn, msg)                                                 \
    do {                                                                      \
        size_t _m = fn##__get_packed_size(msg);                               \
        if (over_max(c, _m))                                                  \
            queue_over_max(c, _m);                                            \
        else                                                                  \
            QUEUE_PACKED(c, fn, msg, _m);                                     \
    } while (0)

/* A reply message of n bytes over max-message-bytes: gRPC core would end the whole call with its own
 * RESOURCE_EXHAUSTED, and the request would count as completed. */
static bool over_max(const struct gcall *c, size_t n)
{
    return n > (size_t)c->gf->srv->cfg.max_message_bytes;
}

/* What a reply message of n bytes over s's max-message-bytes says: its size, detail after it, and fix
 * (ending ", or ") before raising the limit. */
static void over_max_msg(char *msg, size_t cap, const struct moe_server *s, size_t n, const char *detail,
                         const char *fix)
{
    snprintf(msg, cap, "the reply message of %zu bytes%s exceeds max-message-bytes (%d): %sraise the server's "
             "max-message-bytes", n, detail, s->cfg.max_message_bytes, fix);
}

/* A generation's reply message: queued as QUEUE_MSG when it fits max-message-bytes, else nothing is
 * queued and big = its size (reply_over_max). */
#define QUEUE_REPLY(c, fn, msg, big)                                          \
    do {                                                                      \
        size_t _s = fn##__get_packed_size(msg);                               \
        if (over_max(c, _s))                                                  \
            (big) = _s;                                                       \
        else                                                                  \
            QUEUE_PACKED(c, fn, msg, _s);                                     \
    } while (0)

/* A GenerateResponse with its text text[0..n) queued as QUEUE_REPLY queues it.  protobuf-c writes a
 * string up to its first NUL and a token's text may hold one, so the text (field 2, length-delimited)
 * is written after the other fields by hand: a parser takes the fields in any order. */
static void queue_generate(struct gcall *c, Moeflow__V1__GenerateResponse *rs, const char *text, size_t n, size_t *big)
{
    uint8_t key[11];
    size_t k = 0;
    if (n) {
        key[k++] = 2 << 3 | 2;
        for (size_t v = n; v; v >>= 7)
            key[k++] = (uint8_t)((v & 0x7f) | (v >> 7 ? 0x80 : 0));
    }
    rs->text = "";
    size_t head = moeflow__v1__generate_response__get_packed_size(rs), total = head + k + n;
    if (over_max(c, total)) {
        *big = total;
        return;
    }
    uint8_t *b = malloc(total ? total : 1);
    if (!b)
        return;
    moeflow__v1__generate_response__pack(rs, b);
    if (n) {
        memcpy(b + head, key, k);
        memcpy(b + head + k, text, n);
    }
    queue_bytes(c, b, total);
    free(b);
}

static void queue_status(struct gcall *c, grpc_status_code code, const char *msg)
{
    if (c->status_queued)
        return;
    c->status_queued = true;
    c->code = code;
    snprintf(c->status_msg, sizeof(c->status_msg), "%.*s", (int)sizeof(c->status_msg) - 1, msg ? msg : "");
    pump_send(c);
}

/* A reply (not a generation's) of n bytes over max-message-bytes: the call ends RESOURCE_EXHAUSTED. */
static void queue_over_max(struct gcall *c, size_t n)
{
    char msg[200];
    over_max_msg(msg, sizeof(msg), c->gf->srv, n, "", "");
    queue_status(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
}

/* A call whose status is queued reads no more messages. */
static void post_recv(struct gcall *c)
{
    if (c->recv_busy || c->recv_eof || c->cancelled || c->status_queued)
        return;
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv_bb;
    c->recv_busy = start_batch(c, &op, 1, &c->t_recv);
}

/* A decoupled stream reads its next request while it has room for one more
 * generation and the client keeps up with the responses (otherwise the
 * responses of request after request would pile up here); once the client
 * half-closed and nothing generates, it ends. */
static void stream_next(struct gcall *c)
{
    if (c->prep) /* requests are submitted in the order they came */
        return;
    if (c->recv_eof) {
        if (!c->gens)
            queue_status(c, GRPC_STATUS_OK, NULL);
    } else if (c->n_gens < GRPC_STREAM_GENS && c->n_queued < GRPC_STREAM_BACKLOG) {
        post_recv(c);
    }
}

static double call_deadline(const struct gcall *c)
{
    gpr_timespec inf = gpr_inf_future(c->details.deadline.clock_type);
    if (gpr_time_cmp(c->details.deadline, inf) == 0)
        return 0;
    gpr_timespec dl = gpr_convert_clock_type(c->details.deadline, GPR_CLOCK_MONOTONIC);
    gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
    double rem = gpr_timespec_to_micros(gpr_time_sub(dl, now)) / 1e6;
    if (rem > 1e7)
        return 0;
    return moe_now() + (rem > 0 ? rem : 0);
}

/* The request message buf[0..len) unpacked as desc's message; NULL when it is not one, malformed or with a
 * string field that holds a NUL byte (protobuf-c would cut the string short, and a name cut short could
 * name what is served) or is not UTF-8 (moe_pb_check_text): the call then ends with INVALID_ARGUMENT saying
 * which. */
static ProtobufCMessage *request_unpack(struct gcall *c, const ProtobufCMessageDescriptor *desc, const uint8_t *buf,
                                        size_t len)
{
    bool text_ok = moe_pb_check_text(desc, buf, len) == MOE_OK;
    ProtobufCMessage *m = text_ok ? protobuf_c_message_unpack(desc, NULL, len, buf) : NULL;
    if (!m) {
        char msg[200];
        if (text_ok)
            snprintf(msg, sizeof(msg), "%s: malformed protobuf", desc->short_name);
        queue_status(c, GRPC_STATUS_INVALID_ARGUMENT, text_ok ? msg : moe_last_error());
    }
    return m;
}

/* ---- health ---- */

/* The status of every service served here: readiness. */
static health_status health_now(bool ready)
{
    return ready ? HEALTH(SERVING) : HEALTH(NOT_SERVING);
}

static void health_send(struct gcall *c, health_status st)
{
    Grpc__Health__V1__HealthCheckResponse rs = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    rs.status = st;
    c->watch = st;
    QUEUE_MSG(c, grpc__health__v1__health_check_response, &rs);
}

/* Readiness changed since the Watch calls were last brought up to date: each sends the new status (a
 * service not served here stays SERVICE_UNKNOWN).  Readiness changes rarely, so the calls are walked
 * only then. */
static void watch_update(struct grpc_front *gf)
{
    bool ready = atomic_load(&gf->srv->ready);
    if (ready == gf->watch_ready)
        return;
    gf->watch_ready = ready;
    health_status st = health_now(ready);
    for (struct gcall *c = gf->live; c; c = c->next_live)
        if (c->m == GM_HEALTH_WATCH && c->watch != st && c->watch != HEALTH(UNKNOWN) &&
            c->watch != HEALTH(SERVICE_UNKNOWN))
            health_send(c, st);
}

/* Check answers the service's status, NOT_FOUND for a service not served here.  Watch sends the status at
 * once (SERVICE_UNKNOWN for a service not served here, as the health protocol has it) and stays open:
 * watch_update sends each change, watch_end ends it when the front end stops.  A Watch holds one of its
 * connection's calls (grpc-max-streams) and costs nothing between changes. */
static void do_health(struct gcall *c, const uint8_t *buf, size_t len)
{
    Grpc__Health__V1__HealthCheckRequest *rq = (Grpc__Health__V1__HealthCheckRequest *)request_unpack(
        c, &grpc__health__v1__health_check_request__descriptor, buf, len);
    if (!rq)
        return;
    const char *svc = rq->service ? rq->service : "";
    bool known = !svc[0] || !strcmp(svc, "moeflow.v1.Generation") ||
                 !strcmp(svc, "inference.GRPCInferenceService");
    if (!known && c->m == GM_HEALTH) {
        char msg[300];
        snprintf(msg, sizeof(msg), "unknown service '%.*s'", moe_utf8_cut(svc, 200), svc);
        grpc__health__v1__health_check_request__free_unpacked(rq, NULL);
        queue_status(c, GRPC_STATUS_NOT_FOUND, msg);
        return;
    }
    grpc__health__v1__health_check_request__free_unpacked(rq, NULL);
    srv_files_damaged(c->gf->srv); /* damage seen by no forward yet turns readiness off first */
    bool ready = atomic_load(&c->gf->srv->ready);
    if (c->m == GM_HEALTH_WATCH) { /* the other Watch calls brought up to date first: every Watch holds the
                                    * status watch_update last saw, so that its next change reaches them all */
        watch_update(c->gf);
        ready = c->gf->watch_ready;
    }
    health_send(c, known ? health_now(ready) : HEALTH(SERVICE_UNKNOWN));
    if (c->m == GM_HEALTH || c->gf->watches_ended) /* a Watch that came as the front end stops ends at once */
        queue_status(c, GRPC_STATUS_OK, NULL);
}

/* The front end stops: each Watch call, brought up to date, ends with OK after the statuses it holds. */
static void watch_end(struct grpc_front *gf)
{
    watch_update(gf);
    for (struct gcall *c = gf->live; c; c = c->next_live)
        if (c->m == GM_HEALTH_WATCH && c->watch != HEALTH(UNKNOWN))
            queue_status(c, GRPC_STATUS_OK, NULL);
}

/* ---- unary handlers ---- */

/* Tokenize's reply to q's message (a preparation thread's work); a refusal is counted, as HTTP's
 * /tokenize counts its own (invalid, or out of memory), and so is a reply over max-message-bytes (invalid:
 * the text is too long for one reply). */
static void tokenize_reply(struct gjob *q)
{
    const uint8_t *buf = q->msg;
    size_t len = q->len;
    q->code = GRPC_STATUS_INVALID_ARGUMENT;
    q->refused = MOE_EINVAL;
    if (moe_pb_check_text(&moeflow__v1__tokenize_request__descriptor, buf, len) != MOE_OK) {
        snprintf(q->status_msg, sizeof(q->status_msg), "%s", moe_last_error());
        return;
    }
    Moeflow__V1__TokenizeRequest *rq = moeflow__v1__tokenize_request__unpack(NULL, len, buf);
    if (!rq) {
        snprintf(q->status_msg, sizeof(q->status_msg), "TokenizeRequest: malformed protobuf");
        return;
    }
    int *ids = NULL;
    size_t n = 0;
    const char *text = rq->text ? rq->text : "";
    enum moe_status st = srv_tokenize(q->srv, false, text, strlen(text), &ids, &n);
    if (st == MOE_ENOMEM) {
        q->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        q->refused = MOE_ENOMEM;
        snprintf(q->status_msg, sizeof(q->status_msg), "%s", moe_last_error());
    } else if (st != MOE_OK) {
        snprintf(q->status_msg, sizeof(q->status_msg), "text: %s", moe_last_error());
    } else {
        Moeflow__V1__TokenizeResponse rs = MOEFLOW__V1__TOKENIZE_RESPONSE__INIT;
        int32_t *ids32 = malloc((n ? n : 1) * sizeof(int32_t));
        if (ids32) {
            for (size_t i = 0; i < n; i++)
                ids32[i] = ids[i];
            rs.n_token_ids = n;
            rs.token_ids = ids32;
            q->reply_len = moeflow__v1__tokenize_response__get_packed_size(&rs);
            if (q->reply_len > (size_t)q->srv->cfg.max_message_bytes) {
                /* gRPC core would end the call with its own words, and count nothing */
                q->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
                char ids_note[48];
                snprintf(ids_note, sizeof(ids_note), " (%zu token ids)", n);
                over_max_msg(q->status_msg, sizeof(q->status_msg), q->srv, q->reply_len, ids_note,
                             "send a shorter text, or ");
            } else if ((q->reply = srv_calloc(q->srv, SRV_FAULT_REPLY, q->reply_len ? q->reply_len : 1, 1))) {
                moeflow__v1__tokenize_response__pack(&rs, q->reply);
                q->has_reply = true;
                q->code = GRPC_STATUS_OK;
            } else {
                q->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
                q->refused = MOE_ENOMEM;
                snprintf(q->status_msg, sizeof(q->status_msg), "out of memory for the reply (%zu bytes)",
                         q->reply_len);
            }
        } else {
            q->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            q->refused = MOE_ENOMEM;
            snprintf(q->status_msg, sizeof(q->status_msg), "out of memory");
        }
        free(ids32);
    }
    free(ids);
    moeflow__v1__tokenize_request__free_unpacked(rq, NULL);
}

static void tokenize_work(struct gjob *q)
{
    tokenize_reply(q);
    if (q->code != GRPC_STATUS_OK)
        srv_count_refused(q->srv, q->refused);
}

static void tokenize_finish(struct gcall *c, const struct gjob *q)
{
    if (q->has_reply)
        queue_bytes(c, q->reply, q->reply_len);
    queue_status(c, q->code, q->code == GRPC_STATUS_OK ? NULL : q->status_msg);
}

/* A request message with no field to read is still checked: a body that does not parse as desc's message
 * is INVALID_ARGUMENT (false) as for every other call. */
static bool empty_request_ok(struct gcall *c, const ProtobufCMessageDescriptor *desc, const uint8_t *buf,
                             size_t len)
{
    ProtobufCMessage *m = request_unpack(c, desc, buf, len);
    if (!m)
        return false;
    protobuf_c_message_free_unpacked(m, NULL);
    return true;
}

static void do_model_info(struct gcall *c, const uint8_t *buf, size_t len)
{
    struct moe_server *s = c->gf->srv;
    if (!empty_request_ok(c, &moeflow__v1__model_info_request__descriptor, buf, len))
        return;
    const struct moe_config *mc = &s->model->cfg;
    Moeflow__V1__ModelInfoResponse rs = MOEFLOW__V1__MODEL_INFO_RESPONSE__INIT;
    rs.name = s->model_name;
    rs.family = (char *)moe_family_name(mc->family);
    rs.n_layers = mc->n_layers;
    rs.n_experts = mc->n_experts;
    rs.top_k = mc->top_k;
    rs.vocab_size = mc->vocab;
    rs.max_context = s->max_ctx;
    rs.eos_token_id = mc->eos_id;
    rs.max_output = s->cfg.max_output;
    rs.max_prompt = s->cfg.max_prompt;
    rs.kv_slots = moe_engine_max_seqs(s->engine);
    struct moe_offload_stats os;
    if (s->provider && moe_offload_stats_get(s->provider, &os)) {
        rs.device_expert_slots = os.dev_slots;
        rs.host_expert_slots = os.host_slots;
    }
    QUEUE_MSG(c, moeflow__v1__model_info_response, &rs);
    queue_status(c, GRPC_STATUS_OK, NULL);
}

/* A KServe request's model name and version name the model served here (the one version, "1"; a
 * version left empty asks for it). */
static bool serves_model(const struct moe_server *s, const char *name, const char *version)
{
    return name && !strcmp(name, s->model_name) && (!version || !version[0] || !strcmp(version, "1"));
}

static void do_kserve_simple(struct gcall *c, const uint8_t *buf, size_t len)
{
    struct moe_server *s = c->gf->srv;
    bool damaged = srv_files_damaged(s) != NULL; /* not live either, as /health says */
    bool ready = atomic_load(&s->ready);
    if ((c->m == GM_LIVE && !empty_request_ok(c, &inference__server_live_request__descriptor, buf, len)) ||
        (c->m == GM_READY && !empty_request_ok(c, &inference__server_ready_request__descriptor, buf, len)) ||
        (c->m == GM_SERVER_META && !empty_request_ok(c, &inference__server_metadata_request__descriptor, buf, len)))
        return;
    switch (c->m) {
    case GM_LIVE: {
        Inference__ServerLiveResponse rs = INFERENCE__SERVER_LIVE_RESPONSE__INIT;
        rs.live = !damaged;
        QUEUE_MSG(c, inference__server_live_response, &rs);
        break;
    }
    case GM_READY: {
        Inference__ServerReadyResponse rs = INFERENCE__SERVER_READY_RESPONSE__INIT;
        rs.ready = ready;
        QUEUE_MSG(c, inference__server_ready_response, &rs);
        break;
    }
    case GM_MODEL_READY: {
        Inference__ModelReadyRequest *rq = (Inference__ModelReadyRequest *)request_unpack(
            c, &inference__model_ready_request__descriptor, buf, len);
        if (!rq)
            return;
        Inference__ModelReadyResponse rs = INFERENCE__MODEL_READY_RESPONSE__INIT;
        rs.ready = ready && serves_model(s, rq->name, rq->version);
        inference__model_ready_request__free_unpacked(rq, NULL);
        QUEUE_MSG(c, inference__model_ready_response, &rs);
        break;
    }
    case GM_SERVER_META: {
        Inference__ServerMetadataResponse rs = INFERENCE__SERVER_METADATA_RESPONSE__INIT;
        rs.name = "moeflow";
        rs.version = MOEFLOW_VERSION; /* as `moeflow --version` */
        QUEUE_MSG(c, inference__server_metadata_response, &rs);
        break;
    }
    case GM_MODEL_META: {
        Inference__ModelMetadataRequest *rq = (Inference__ModelMetadataRequest *)request_unpack(
            c, &inference__model_metadata_request__descriptor, buf, len);
        if (!rq)
            return;
        bool match = serves_model(s, rq->name, rq->version);
        char msg[400];
        const char *name = rq->name ? rq->name : "", *version = rq->version ? rq->version : "";
        snprintf(msg, sizeof(msg), "model '%.*s' version '%.*s' is not served here (serving '%s' version 1)",
                 moe_utf8_cut(name, 200), name, moe_utf8_cut(version, 32), version, s->model_name);
        inference__model_metadata_request__free_unpacked(rq, NULL);
        if (!match) {
            queue_status(c, GRPC_STATUS_NOT_FOUND, msg);
            return;
        }
        Inference__ModelMetadataResponse rs = INFERENCE__MODEL_METADATA_RESPONSE__INIT;
        enum { N_IN = 7 };
        Inference__ModelMetadataResponse__TensorMetadata ti[N_IN], to[1];
        Inference__ModelMetadataResponse__TensorMetadata *pi[N_IN], *po[1];
        /* every input ModelInfer takes (max_tokens and top_k as INT32 or INT64, the floats as FP32 or FP64) */
        static const char *in_names[N_IN] = { "text_input", "max_tokens", "stream", "temperature", "top_p", "top_k",
                                              "ignore_eos" };
        static const char *in_types[N_IN] = { "BYTES", "INT32", "BOOL", "FP32", "FP32", "INT32", "BOOL" };
        int64_t shape1[1] = { 1 };
        for (int i = 0; i < N_IN; i++) {
            inference__model_metadata_response__tensor_metadata__init(&ti[i]);
            ti[i].name = (char *)in_names[i];
            ti[i].datatype = (char *)in_types[i];
            ti[i].n_shape = 1;
            ti[i].shape = shape1;
            pi[i] = &ti[i];
        }
        inference__model_metadata_response__tensor_metadata__init(&to[0]);
        to[0].name = "text_output";
        to[0].datatype = "BYTES";
        to[0].n_shape = 1;
        to[0].shape = shape1;
        po[0] = &to[0];
        char *versions[1] = { "1" };
        rs.name = s->model_name;
        rs.n_versions = 1;
        rs.versions = versions;
        rs.platform = "moeflow";
        rs.n_inputs = N_IN;
        rs.inputs = pi;
        rs.n_outputs = 1;
        rs.outputs = po;
        QUEUE_MSG(c, inference__model_metadata_response, &rs);
        break;
    }
    default:
        break;
    }
    queue_status(c, GRPC_STATUS_OK, NULL);
}

/* ---- generation ---- */

/* Queue a ModelInfer or ModelStreamInfer response; 0, or the message's size when it is over
 * max-message-bytes (nothing queued). */
static size_t kserve_send(struct gcall *c, const char *kid, const char *text, size_t len, bool final,
                          const char *err)
{
    struct moe_server *s = c->gf->srv;
    Inference__ModelInferResponse ir = INFERENCE__MODEL_INFER_RESPONSE__INIT;
    ir.model_name = s->model_name;
    ir.model_version = "1";
    ir.id = (char *)kid;
    Inference__InferParameter fp = INFERENCE__INFER_PARAMETER__INIT;
    fp.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
    fp.bool_param = final;
    Inference__ModelInferResponse__ParametersEntry pe = INFERENCE__MODEL_INFER_RESPONSE__PARAMETERS_ENTRY__INIT;
    pe.key = "triton_final_response";
    pe.value = &fp;
    Inference__ModelInferResponse__ParametersEntry *pes[1] = { &pe };
    ir.n_parameters = 1;
    ir.parameters = pes;
    Inference__ModelInferResponse__InferOutputTensor ot =
        INFERENCE__MODEL_INFER_RESPONSE__INFER_OUTPUT_TENSOR__INIT;
    Inference__InferTensorContents tc = INFERENCE__INFER_TENSOR_CONTENTS__INIT;
    ProtobufCBinaryData bd = { len, (uint8_t *)text };
    Inference__ModelInferResponse__InferOutputTensor *ots[1] = { &ot };
    int64_t shape1[1] = { 1 };
    if (!err) {
        ot.name = "text_output";
        ot.datatype = "BYTES";
        ot.n_shape = 1;
        ot.shape = shape1;
        tc.n_bytes_contents = 1;
        tc.bytes_contents = &bd;
        ot.contents = &tc;
        ir.n_outputs = 1;
        ir.outputs = ots;
    }
    size_t big = 0;
    if (c->m == GM_INFER) {
        QUEUE_REPLY(c, inference__model_infer_response, &ir, big);
        return big;
    }
    Inference__ModelStreamInferResponse sr = INFERENCE__MODEL_STREAM_INFER_RESPONSE__INIT;
    sr.error_message = err ? (char *)err : "";
    sr.infer_response = &ir;
    QUEUE_REPLY(c, inference__model_stream_infer_response, &sr, big);
    return big;
}

/* A ModelStreamInfer stream that cannot answer a request ends with code and msg: it reads no further
 * request (stream_next, on_recv), and its requests still generating are cancelled (a request that
 * completed with its reply unsent counts as failed); the responses queued before go out first. */
static void stream_end(struct gcall *c, grpc_status_code code, const char *msg)
{
    queue_status(c, code, msg);
    while (c->gens) {
        struct cgen *k = c->gens;
        if (k->g)
            srv_gen_abandon_unsent(k->g);
        k->g = NULL;
        cgen_drop(k);
    }
}

/* A ModelStreamInfer request's last response, an error: err, cut at a character's end as far as the
 * response must shrink to fit max-message-bytes (an id and an error that the client sent back can
 * pass it), so that the request is answered and its stream goes on: true.  false when not even the
 * response without its message fits (a long model name and request id): the stream ends with
 * RESOURCE_EXHAUSTED (stream_end), its message saying so and then err. */
static bool kserve_error(struct gcall *c, const char *kid, const char *err)
{
    /* error_message is a protobuf string: UTF-8, or the client's parser refuses the response and the stream
     * with it.  A byte of err that is not (a quote of the request cut short) becomes U+FFFD; a character
     * that err's end cuts short is left out. */
    const char *e = err ? err : "";
    char m[3 * 1024];
    size_t n = moe_utf8_lossy(e, strnlen(e, 1023), m, true, NULL), big;
    m[n] = 0;
    while ((big = kserve_send(c, kid, NULL, 0, true, m)) != 0 && n > 0) {
        size_t over = big - (size_t)c->gf->srv->cfg.max_message_bytes;
        n = n > over ? n - over : 0;
        while (n > 0 && ((unsigned char)m[n] & 0xc0) == 0x80) /* not inside a character */
            n--;
        m[n] = 0;
    }
    if (!big)
        return true;
    char msg[sizeof(c->status_msg)];
    snprintf(msg, sizeof(msg), "the error response to request '%.*s%s' exceeds max-message-bytes (%d) even "
             "without its message (%zu bytes): raise the server's max-message-bytes (or send a shorter request "
             "id); the stream ends here, its other requests cancelled. The error: %s", moe_utf8_cut(kid, 40), kid,
             strlen(kid) > 40 ? "..." : "", c->gf->srv->cfg.max_message_bytes, big, err ? err : "");
    stream_end(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
    return false;
}

/* k's next reply message is n bytes, over max-message-bytes: its request ends with an error that says
 * so, counted as failed (srv_gen_undeliverable).  A ModelStreamInfer stream answers it with an error
 * response and goes on; any other call ends with RESOURCE_EXHAUSTED.  Frees k. */
static void reply_over_max(struct cgen *k, size_t n)
{
    struct gcall *c = k->c;
    char msg[300], kid[sizeof(k->kid)];
    over_max_msg(msg, sizeof(msg), c->gf->srv, n, "",
                 c->m == GM_GENERATE ? "ask for fewer tokens or log-probabilities, or " : "ask for fewer tokens, or ");
    memcpy(kid, k->kid, sizeof(kid));
    srv_gen_undeliverable(k->g, msg);
    k->g = NULL;
    cgen_drop(k);
    if (c->m != GM_STREAM_INFER)
        queue_status(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
    else if (kserve_error(c, kid, msg))
        stream_next(c);
}

/* A request that failed (failed: its generation ended with an error, a deadline or the drain's end) after
 * text it had not yet sent: when that text's message is over max-message-bytes (*big, its size), the
 * message is dropped and the request still ends with its own error (failed_msg says what was dropped),
 * not with the size's.  Returns the dropped message's size, 0 when none was dropped. */
static size_t failed_reply_dropped(bool failed, size_t *big)
{
    size_t n = failed ? *big : 0;
    if (n)
        *big = 0;
    return n;
}

#define FAILED_MSG_LEN 512

/* A failed request's error message (msg[FAILED_MSG_LEN]): its finish and the scheduler's words, and the
 * size of a last message of its text that failed_reply_dropped dropped. */
static void failed_msg(const struct gcall *c, char *msg, const struct srv_events *ev, size_t dropped)
{
    int n = snprintf(msg, FAILED_MSG_LEN, "request %s%s%s", moe_finish_str(ev->why), ev->msg[0] ? ": " : "",
                     ev->msg);
    if (dropped && n > 0 && n < FAILED_MSG_LEN)
        snprintf(msg + n, FAILED_MSG_LEN - (size_t)n, " (the text generated before it was not sent: its "
                 "message of %zu bytes exceeds max-message-bytes, %d)", dropped, c->gf->srv->cfg.max_message_bytes);
}

/* A GenerateResponse's logprobs for tokens toks[0..n) with lps[0..n) (NULL: the request did not
 * ask: none).  The entries point into lps, which must outlive the message; out of memory leaves
 * the response without them (its tokens still go out).  Freed by gen_lps_free. */
struct gen_lps {
    Moeflow__V1__TokenLogprob *items, **ptrs;
};

static void gen_lps_fill(struct gen_lps *o, Moeflow__V1__GenerateResponse *rs, const int *toks,
                         struct moe_token_logprobs *lps, int n)
{
    memset(o, 0, sizeof(*o));
    if (!lps || n <= 0)
        return;
    o->items = calloc((size_t)n, sizeof(*o->items));
    o->ptrs = calloc((size_t)n, sizeof(*o->ptrs));
    if (!o->items || !o->ptrs)
        return;
    for (int i = 0; i < n; i++) {
        Moeflow__V1__TokenLogprob *t = &o->items[i];
        moeflow__v1__token_logprob__init(t);
        t->token_id = toks[i];
        t->logprob = lps[i].logprob;
        t->n_top_token_ids = t->n_top_logprobs = (size_t)lps[i].n;
        t->top_token_ids = lps[i].ids;
        t->top_logprobs = lps[i].logprobs;
        o->ptrs[i] = t;
    }
    rs->n_logprobs = (size_t)n;
    rs->logprobs = o->ptrs;
}

static void gen_lps_free(struct gen_lps *o)
{
    free(o->items);
    free(o->ptrs);
}

/* Generate with stop sequences: token by token through the scanner, the text
 * held back while it could begin one; at a stop sequence the final message
 * goes out and the rest of the generation is cancelled. */
static void generate_stop_progress(struct cgen *k)
{
    struct gcall *c = k->c;
    struct srv_gen *g = k->g;
    struct srv_events ev;
    srv_gen_events(g, &ev);
    struct moe_strbuf text = { 0 };
    int32_t *ids = malloc(((size_t)ev.n_toks + 1) * sizeof(int32_t));
    int n_ids = 0, m = ids ? 0 : -1;
    for (int i = 0; i < ev.n_toks && m == 0; i++) {
        bool last = ev.done && i == ev.n_toks - 1;
        size_t len = 0, ol = 0;
        char *t = srv_gen_text(g, &ev.toks[i], 1, last, &len), *o = NULL;
        size_t n_ahead;
        const char *ahead = srv_gen_pending(g, &n_ahead);
        k->scan.quiet = k->n_out < g->min_tokens; /* its text ends no stop sequence (min_tokens) */
        m = t ? moe_stop_scan_feed(&k->scan, t, len, ahead, n_ahead, last, &o, &ol) : -1;
        free(t);
        ids[n_ids++] = ev.toks[i];
        k->n_out++;
        if (o && ol)
            moe_strbuf_add(&text, o, ol);
        free(o);
    }
    bool ok = ev.why == MOE_FINISH_LENGTH || ev.why == MOE_FINISH_STOP;
    if (m == 0 && ev.done && ok) { /* ended without a stop sequence: release what was held */
        size_t len = 0, fl = 0;
        char *t = srv_gen_text(g, NULL, 0, true, &len), *f = NULL;
        m = t ? moe_stop_scan_feed(&k->scan, t, len, NULL, 0, true, &f, &fl) : -1;
        if (f && fl)
            moe_strbuf_add(&text, f, fl);
        free(t);
        free(f);
    }
    if (text.oom) /* a chunk of the text could not be kept: not sent cut short */
        m = -1;
    free(ev.toks);
    if (m < 0) {
        free(ev.lps);
        free(ids);
        moe_strbuf_free(&text);
        cgen_drop(k);
        queue_status(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    bool fin = m == 1 || (ev.done && ok);
    struct gen_lps lp = { 0 };
    size_t big = 0;
    if (n_ids || fin) {
        Moeflow__V1__GenerateResponse rs = MOEFLOW__V1__GENERATE_RESPONSE__INIT;
        rs.n_token_ids = (size_t)n_ids;
        rs.token_ids = ids;
        gen_lps_fill(&lp, &rs, ids, ev.lps, n_ids);
        if (fin) {
            rs.finished = true;
            rs.finish_reason = (char *)moe_finish_str(m == 1 ? MOE_FINISH_STOP : ev.why);
            rs.prompt_tokens = ev.n_prompt;
            rs.completion_tokens = m == 1 ? k->n_out : ev.n_generated;
            rs.cached_prompt_tokens = ev.n_cached;
        }
        queue_generate(c, &rs, text.s, text.len, &big);
    }
    gen_lps_free(&lp);
    free(ev.lps);
    free(ids);
    moe_strbuf_free(&text);
    size_t dropped = failed_reply_dropped(ev.done && !ok && m == 0, &big);
    if (big) {
        reply_over_max(k, big);
        return;
    }
    if (m == 1) {
        srv_gen_abandon_stopped(k->g); /* the rest of the generation is not wanted */
        k->g = NULL;
        cgen_drop(k);
        queue_status(c, GRPC_STATUS_OK, NULL);
        return;
    }
    if (!ev.done)
        return;
    char msg[FAILED_MSG_LEN];
    failed_msg(c, msg, &ev, dropped);
    cgen_drop(k);
    queue_status(c, ok ? GRPC_STATUS_OK : (grpc_status_code)srv_finish_grpc_code(ev.why, ev.st, ev.of_request),
                 ok ? NULL : msg);
}

static void gen_progress(struct cgen *k)
{
    if (k->scan.n) {
        generate_stop_progress(k);
        return;
    }
    struct gcall *c = k->c;
    struct srv_gen *g = k->g;
    struct srv_events ev;
    srv_gen_events(g, &ev);
    size_t len = 0, big = 0; /* big: a reply message over max-message-bytes, its size */
    char *text = srv_gen_text(g, ev.toks, ev.n_toks, ev.done, &len);
    bool ok = ev.why == MOE_FINISH_LENGTH || ev.why == MOE_FINISH_STOP;
    if (c->m == GM_GENERATE) {
        if (ev.n_toks || (ev.done && ok)) {
            Moeflow__V1__GenerateResponse rs = MOEFLOW__V1__GENERATE_RESPONSE__INIT;
            int32_t *ids = malloc(((size_t)ev.n_toks + 1) * sizeof(int32_t));
            for (int i = 0; ids && i < ev.n_toks; i++)
                ids[i] = ev.toks[i];
            rs.n_token_ids = ids ? (size_t)ev.n_toks : 0;
            rs.token_ids = ids;
            struct gen_lps lp;
            gen_lps_fill(&lp, &rs, ev.toks, ids ? ev.lps : NULL, ev.n_toks);
            if (ev.done && ok) {
                rs.finished = true;
                rs.finish_reason = (char *)moe_finish_str(ev.why);
                rs.prompt_tokens = ev.n_prompt;
                rs.completion_tokens = ev.n_generated;
                rs.cached_prompt_tokens = ev.n_cached;
            }
            queue_generate(c, &rs, text, text ? len : 0, &big);
            gen_lps_free(&lp);
            free(ids);
        }
    } else if (k->kstream) {
        if (ev.n_toks > 0 || ev.done) {
            if (ev.done && !ok) {
                if (len)
                    big = kserve_send(c, k->kid, text, len, false, NULL);
            } else {
                big = kserve_send(c, k->kid, text ? text : "", text ? len : 0, ev.done, NULL);
            }
        }
    } else if (text && len) {
        moe_strbuf_add(&k->acc, text, len); /* a token's text may hold a NUL byte */
    }
    free(text);
    free(ev.toks);
    free(ev.lps);
    if (!big && ev.done && ok && c->m != GM_GENERATE && !k->kstream) /* the whole text in one response */
        big = kserve_send(c, k->kid, k->acc.s ? k->acc.s : "", k->acc.len, true, NULL);
    size_t dropped = failed_reply_dropped(ev.done && !ok, &big);
    if (big) {
        reply_over_max(k, big);
        return;
    }
    if (!ev.done)
        return;
    char msg[FAILED_MSG_LEN];
    failed_msg(c, msg, &ev, dropped);
    if (c->m == GM_GENERATE || c->m == GM_INFER) {
        cgen_drop(k);
        queue_status(c, ok ? GRPC_STATUS_OK : (grpc_status_code)srv_finish_grpc_code(ev.why, ev.st, ev.of_request),
                     ok ? NULL : msg);
        return;
    }
    /* ModelStreamInfer: this request's last response; the stream goes on. */
    char kid[sizeof(k->kid)];
    memcpy(kid, k->kid, sizeof(kid));
    cgen_drop(k);
    if (ok || kserve_error(c, kid, msg))
        stream_next(c);
}

/* A generation request's message decoded and prepared (a preparation thread's work): tokenized and
 * checked as srv_gen_prepare does, its stop sequences ready for its cgen. */
static void generate_work(struct gjob *q)
{
    struct moe_server *s = q->srv;
    enum moe_status st;
    if (q->m == GM_GENERATE)
        st = moe_req_parse_generate(q->msg, q->len, &q->r);
    else
        st = moe_req_parse_kserve(q->msg, q->len, &q->r);
    /* ids the decoder cannot bound (prompt, logit_bias): refused here, as invalid */
    if (st == MOE_OK && (st = moe_gen_request_check_vocab(&q->r, s->model->cfg.vocab, q->m == GM_GENERATE ? "prompt_ids" : "text_input")) != MOE_OK)
        moe_gen_request_free(&q->r);
    if (st == MOE_OK) {
        q->decoded = true;
        if (q->m != GM_GENERATE)
            snprintf(q->kid, sizeof(q->kid), "%s", q->r.id);
        st = srv_stop_scan_init(s, &q->scan, q->r.stop, q->r.n_stop);
        if (st == MOE_OK)
            st = srv_gen_prepare(s, &q->r, NULL, &q->p);
    } else {
        srv_count_refused(s, st);
        if (q->m == GM_STREAM_INFER) { /* answer under the request's id when the message has one */
            Inference__ModelInferRequest *m = inference__model_infer_request__unpack(NULL, q->len, q->msg);
            if (m && m->id && moe_utf8_valid(m->id, strlen(m->id))) /* not echoed into a reply it would spoil */
                snprintf(q->kid, sizeof(q->kid), "%.*s", moe_utf8_cut(m->id, sizeof(q->kid) - 1), m->id);
            if (m)
                inference__model_infer_request__free_unpacked(m, NULL);
        }
    }
    q->st = st;
    if (st != MOE_OK)
        snprintf(q->err, sizeof(q->err), "%s", moe_last_error());
}

/* The prepared request submitted as a generation of c (q's request and stop sequences taken), or its
 * error answered. */
static void generate_finish(struct gcall *c, struct gjob *q)
{
    struct moe_server *s = c->gf->srv;
    enum moe_status st = q->st;
    const char *err = q->err;
    if (st == MOE_OK) {
        struct cgen *k = srv_calloc(s, SRV_FAULT_CHOICE, 1, sizeof(*k));
        if (k) {
            k->c = c;
            memcpy(k->kid, q->kid, sizeof(k->kid));
            k->kstream = c->m == GM_STREAM_INFER && q->r.stream;
            k->scan = q->scan;
            memset(&q->scan, 0, sizeof(q->scan));
            st = srv_gen_submit_prepared(s, &c->gf->inbox, k, &q->r, &q->p, c->deadline, &k->g);
            if (st == MOE_OK) {
                k->next = c->gens;
                c->gens = k;
                c->n_gens++;
            } else {
                moe_stop_scan_free(&k->scan);
                free(k);
            }
        } else {
            srv_count_refused(s, MOE_ENOMEM);
            st = moe_errorf(MOE_ENOMEM, "out of memory");
        }
        err = moe_last_error();
    }
    if (c->m == GM_STREAM_INFER) {
        /* Decoupled stream: an error is a response; the stream stays open. */
        if (st == MOE_OK || kserve_error(c, q->kid, err))
            stream_next(c);
        return;
    }
    if (st == MOE_OK)
        return;
    queue_status(c, (grpc_status_code)srv_grpc_code(st), err);
}

static void gjob_work(struct srv_job *j)
{
    struct gjob *q = (struct gjob *)j;
    if (q->m == GM_TOKENIZE)
        tokenize_work(q);
    else
        generate_work(q);
}

/* A prepared generation request whose call ended (srv_job.gone): submitted and cancelled, as
 * generate_finish submits it and on_close cancels it when the call ends after.  A refusal was counted by
 * the work (Tokenize's too), and Tokenize counts nothing more. */
static void gjob_gone(struct srv_job *j)
{
    struct gjob *q = (struct gjob *)j;
    if (q->m != GM_TOKENIZE && q->st == MOE_OK)
        srv_gen_submit_gone(q->srv, &q->r, &q->p, q->deadline, NULL);
}

/* A generation request whose call ended before it was prepared (srv_job.dropped): counted as cancelled;
 * Tokenize counts nothing. */
static void gjob_dropped(struct srv_job *j)
{
    struct gjob *q = (struct gjob *)j;
    if (q->m != GM_TOKENIZE)
        srv_gen_count_dropped(q->srv);
}

static void gjob_free(struct srv_job *j)
{
    struct gjob *q = (struct gjob *)j;
    free(q->msg);
    free(q->reply);
    if (q->decoded)
        moe_gen_request_free(&q->r);
    free(q->p.ids);
    moe_stop_scan_free(&q->scan);
    free(q);
}

/* A prepared request finished on this thread, and its job freed. */
static void gjob_finish(struct gcall *c, struct gjob *q)
{
    if (q->m == GM_TOKENIZE)
        tokenize_finish(c, q);
    else
        generate_finish(c, q);
    gjob_free(&q->j);
}

/* Tokenize, Generate, ModelInfer and ModelStreamInfer: the request is prepared (decoded, tokenized,
 * checked) on a preparation thread when it is large, and finished when it comes back (drain_inbox);
 * a small one here and now. */
static void prep_start(struct gcall *c, const uint8_t *buf, size_t len)
{
    struct gjob *q = srv_calloc(c->gf->srv, SRV_FAULT_JOB, 1, sizeof(*q));
    if (!q || !(q->msg = malloc(len ? len : 1))) {
        free(q);
        srv_count_refused(c->gf->srv, MOE_ENOMEM);
        if (c->m != GM_STREAM_INFER)
            queue_status(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        else if (kserve_error(c, "", "out of memory"))
            stream_next(c);
        return;
    }
    memcpy(q->msg, buf, len);
    q->len = len;
    q->srv = c->gf->srv;
    q->m = c->m;
    q->deadline = c->deadline;
    q->j.work = gjob_work;
    q->j.free = gjob_free;
    q->j.gone = gjob_gone;
    q->j.dropped = gjob_dropped;
    q->j.inbox = &c->gf->inbox;
    q->j.owner = c;
    if (srv_job_start(c->gf->srv, &q->j, len)) {
        c->prep = q;
        c->gf->n_prep++;
        return;
    }
    gjob_finish(c, q);
}

/* A call to a method not served here: UNIMPLEMENTED naming it, as soon as the call arrives (a client may
 * send a message, half-close without one, or wait for the server before it sends anything). */
static void not_served(struct gcall *c)
{
    char msg[300];
    char *m = grpc_slice_to_c_string(c->details.method);
    snprintf(msg, sizeof(msg), "method %.200s is not served here", m ? m : "?");
    gpr_free(m);
    queue_status(c, GRPC_STATUS_UNIMPLEMENTED, msg);
}

static void on_message(struct gcall *c, const uint8_t *buf, size_t len)
{
    /* ModelReady answers false while the model loads, ServerMetadata needs none */
    bool needs_model = c->m != GM_HEALTH && c->m != GM_HEALTH_WATCH && c->m != GM_LIVE && c->m != GM_READY &&
                       c->m != GM_MODEL_READY && c->m != GM_SERVER_META && c->m != GM_UNKNOWN;
    /* a generation or Tokenize request is counted as refused (as its other refusals are, and as HTTP's
     * completion and tokenizing requests are); the others are not */
    bool counted = c->m == GM_GENERATE || c->m == GM_INFER || c->m == GM_STREAM_INFER || c->m == GM_TOKENIZE;
    if (needs_model && !srv_loaded(c->gf->srv, counted)) {
        queue_status(c, GRPC_STATUS_UNAVAILABLE, "the model is still loading; retry when ready");
        return;
    }
    switch (c->m) {
    case GM_HEALTH: case GM_HEALTH_WATCH: do_health(c, buf, len); break;
    case GM_TOKENIZE: prep_start(c, buf, len); break;
    case GM_MODEL_INFO: do_model_info(c, buf, len); break;
    case GM_LIVE: case GM_READY: case GM_MODEL_READY: case GM_SERVER_META: case GM_MODEL_META:
        do_kserve_simple(c, buf, len);
        break;
    case GM_GENERATE: case GM_INFER: case GM_STREAM_INFER: prep_start(c, buf, len); break;
    case GM_UNKNOWN: break; /* answered when the call arrived (not_served) */
    }
}

/* ---- completion handling ---- */

static void on_new_call(struct gcall *c, bool ok)
{
    struct grpc_front *gf = c->gf;
    c->pending--;
    if (!ok) { /* server shutting down */
        gcall_free(c);
        return;
    }
    if (!atomic_load(&gf->stop))
        accept_one(gf);
    c->started = true;
    c->next_live = gf->live;
    if (gf->live)
        gf->live->prev_live = c;
    gf->live = c;
    moe_metrics_count(&gf->srv->metrics, &gf->srv->metrics.grpc_calls, 1);
    c->m = GM_UNKNOWN;
    for (size_t i = 0; i < MOE_ARRAY_LEN(methods); i++)
        if (!grpc_slice_str_cmp(c->details.method, methods[i].path))
            c->m = methods[i].m;
    c->deadline = call_deadline(c);
    MOE_DBG("grpc: new call %p method %d", (void *)c, (int)c->m);
    grpc_op ops[2];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_MESSAGE;
    ops[1].data.recv_message.recv_message = &c->recv_bb;
    bool a = start_batch(c, ops, 2, &c->t_recv);
    c->recv_busy = a;
    grpc_op cl;
    memset(&cl, 0, sizeof(cl));
    cl.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    cl.data.recv_close_on_server.cancelled = &c->cancelled;
    bool b = start_batch(c, &cl, 1, &c->t_close);
    if (!b)
        c->close_done = true;
    if (!a && !b)
        gcall_maybe_free(c);
    else if (c->m == GM_UNKNOWN)
        not_served(c);
}

static void on_recv(struct gcall *c, bool ok)
{
    c->pending--;
    c->recv_busy = false;
    grpc_byte_buffer *bb = c->recv_bb;
    c->recv_bb = NULL;
    /* A receive fails for a message the library refused, one over max-message-bytes as sent or once
     * decompressed (GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH: the library ends the call with RESOURCE_EXHAUSTED
     * itself, so a message read here fits), and just as well for a call cancelled, or past its deadline,
     * before its message was read: the library does not say which, so neither counts as a request refused.
     * (A call cancelled while its receive waits gets no message instead.) */
    if (!ok || c->cancelled || c->status_queued) { /* a message after the call's status was queued: not read */
        if (bb)
            grpc_byte_buffer_destroy(bb);
        return;
    }
    if (!bb) {
        c->recv_eof = true;
        if (c->m == GM_STREAM_INFER) {
            stream_next(c);
        } else if (!c->got_msg) {
            queue_status(c, GRPC_STATUS_INVALID_ARGUMENT, "no request message");
        }
        return;
    }
    c->got_msg = true;
    MOE_DBG("grpc: call %p message", (void *)c);
    grpc_byte_buffer_reader rd;
    if (!grpc_byte_buffer_reader_init(&rd, bb)) {
        grpc_byte_buffer_destroy(bb);
        queue_status(c, GRPC_STATUS_INVALID_ARGUMENT, "cannot read the request message");
        return;
    }
    grpc_slice sl = grpc_byte_buffer_reader_readall(&rd);
    grpc_byte_buffer_reader_destroy(&rd);
    grpc_byte_buffer_destroy(bb);
    on_message(c, GRPC_SLICE_START_PTR(sl), GRPC_SLICE_LENGTH(sl));
    grpc_slice_unref(sl);
}

static void on_close(struct gcall *c)
{
    c->pending--;
    c->close_done = true;
    if (c->cancelled) {
        gcall_drop_prep(c);
        gcall_drop_gens(c); /* client cancel, disconnect or deadline: free KV and pins now */
        gcall_drop_queue(c);
    }
}

static void handle_event(struct grpc_front *gf, struct gtag *t, bool ok)
{
    if (t == &gf->t_shutdown) {
        gf->shutdown_done = true;
        return;
    }
    struct gcall *c = t->c;
    switch (t->op) {
    case GOP_NEW: on_new_call(c, ok); return;
    case GOP_RECV: on_recv(c, ok); break;
    case GOP_SEND:
        c->pending--;
        c->send_busy = false;
        grpc_byte_buffer_destroy(c->send_bb);
        c->send_bb = NULL;
        if (!ok)
            gcall_drop_queue(c);
        pump_send(c);
        if (ok && c->m == GM_STREAM_INFER)
            stream_next(c); /* the client took a response: room for its next request */
        break;
    case GOP_STATUS: c->pending--; break;
    case GOP_CLOSE: on_close(c); break;
    case GOP_SHUTDOWN: break;
    }
    gcall_maybe_free(c);
}

static void drain_inbox(struct grpc_front *gf)
{
    void *owner;
    for (struct srv_job *j; (j = srv_inbox_pop_job(&gf->inbox, &owner));) {
        struct gcall *c = owner;
        c->prep = NULL;
        gf->n_prep--;
        gjob_finish(c, (struct gjob *)j);
        gcall_maybe_free(c);
    }
    for (struct srv_gen *g; (g = srv_inbox_pop(&gf->inbox));) {
        pthread_mutex_lock(&gf->inbox.mu);
        struct cgen *k = g->owner;
        pthread_mutex_unlock(&gf->inbox.mu);
        if (k && k->g == g) {
            struct gcall *c = k->c;
            gen_progress(k); /* may free k */
            gcall_maybe_free(c);
        }
        srv_gen_put(g);
    }
}

static void accept_one(struct grpc_front *gf)
{
    struct gcall *c = gcall_new(gf);
    if (!c)
        return;
    grpc_call_error e = grpc_server_request_call(gf->server, &c->call, &c->details, &c->md, gf->cq,
                                                 gf->cq, &c->t_new);
    if (e != GRPC_CALL_OK) {
        gcall_free(c);
        return;
    }
    c->pending++;
}

/* A call with a reply still to deliver: a request being prepared, a generation, messages or a status it
 * has not yet sent out.
 * One without (a stream between requests, a call whose request has not arrived) only waits. */
static bool gcall_delivering(const struct gcall *c)
{
    return c->prep || c->gens || c->q_head || c->send_busy || c->status_queued;
}

/* Stopping: no new calls; health Watch calls end (watch_end); the calls that still deliver a reply go on
 * until they end or stop_until passes.  Once none delivers, the calls left with nothing to send (a stream
 * between requests, a call whose request has not arrived) end with UNAVAILABLE saying the server drains
 * rather than gRPC core's "Cancelling all calls"; then, or when stop_until passes, every call left is
 * cancelled. */
static void grpc_stopping(struct grpc_front *gf)
{
    if (!gf->shutdown_started) {
        gf->shutdown_started = true;
        grpc_server_shutdown_and_notify(gf->server, gf->cq, &gf->t_shutdown);
    }
    if (!gf->watches_ended) {
        gf->watches_ended = true;
        watch_end(gf);
    }
    if (!gf->cancelled_all) {
        bool delivering = false;
        for (struct gcall *c = gf->live; c && !delivering; c = c->next_live)
            delivering = gcall_delivering(c);
        if (!delivering && !gf->idle_ended) {
            gf->idle_ended = true;
            for (struct gcall *c = gf->live; c; c = c->next_live)
                if (!c->cancelled && !c->status_queued) {
                    queue_status(c, GRPC_STATUS_UNAVAILABLE, SRV_DRAINING_MSG);
                    delivering = true;
                }
        }
        if (!delivering || moe_now() >= atomic_load(&gf->stop_until)) {
            gf->cancelled_all = true;
            grpc_server_cancel_all_calls(gf->server);
        }
    }
    if (gf->shutdown_done && gf->n_calls == 0 && !gf->cq_shutdown) {
        gf->cq_shutdown = true;
        grpc_completion_queue_shutdown(gf->cq);
    }
}

static void *grpc_thread(void *arg)
{
    struct grpc_front *gf = arg;
    for (;;) {
        /* Poll fast only while generations are alive or requests are being prepared; a new call wakes
         * the queue itself. */
        int ms = atomic_load(&gf->srv->live_gens) > 0 || gf->n_prep > 0 ? GRPC_POLL_MS : GRPC_IDLE_POLL_MS;
        gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                       gpr_time_from_millis(ms, GPR_TIMESPAN));
        grpc_event ev = grpc_completion_queue_next(gf->cq, dl, NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE)
            handle_event(gf, ev.tag, ev.success != 0);
        drain_inbox(gf);
        watch_update(gf);
        if (atomic_load(&gf->stop))
            grpc_stopping(gf);
    }
    return NULL;
}

struct grpc_front *srv_grpc_start(struct moe_server *s)
{
    struct grpc_front *gf = calloc(1, sizeof(*gf));
    if (!gf) {
        moe_errorf(MOE_ENOMEM, "out of memory");
        return NULL;
    }
    gf->srv = s;
    gf->t_shutdown.op = GOP_SHUTDOWN;
    srv_inbox_init(&gf->inbox, NULL, NULL);
    atomic_store(&log_srv, s);
    gpr_set_log_function(grpc_log);
    grpc_init();
    grpc_arg args[4];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = s->cfg.max_message_bytes;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = s->cfg.max_message_bytes;
    args[2].type = GRPC_ARG_INTEGER; /* a port in use is an error, not a share with another server */
    args[2].key = GRPC_ARG_ALLOW_REUSEPORT;
    args[2].value.integer = 0;
    args[3].type = GRPC_ARG_INTEGER; /* one connection cannot hold calls without bound */
    args[3].key = GRPC_ARG_MAX_CONCURRENT_STREAMS;
    args[3].value.integer = s->cfg.grpc_max_streams;
    grpc_channel_args ca = { 4, args };
    gf->server = grpc_server_create(&ca, NULL);
    gf->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(gf->server, gf->cq, NULL);
    char addr[300];
    /* an IPv6 literal goes in brackets before the port */
    bool v6 = strchr(s->cfg.host, ':') && s->cfg.host[0] != '[';
    snprintf(addr, sizeof(addr), v6 ? "[%s]:%d" : "%s:%d", s->cfg.host, s->cfg.grpc_port);
    grpc_server_credentials *cred = grpc_insecure_server_credentials_create();
    atomic_store(&log_binding, true);
    int port = grpc_server_add_http2_port(gf->server, addr, cred);
    atomic_store(&log_binding, false);
    grpc_server_credentials_release(cred);
    if (port == 0) {
        moe_errorf(MOE_EIO, "cannot bind %s (in use? pick another --grpc-port; or check --host)", addr);
        grpc_server_destroy(gf->server);
        grpc_completion_queue_shutdown(gf->cq);
        while (grpc_completion_queue_next(gf->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
               GRPC_QUEUE_SHUTDOWN) {
        }
        grpc_completion_queue_destroy(gf->cq);
        grpc_shutdown();
        srv_inbox_free(&gf->inbox);
        free(gf);
        return NULL;
    }
    grpc_server_start(gf->server);
    for (int i = 0; i < GRPC_PENDING_ACCEPTS; i++)
        accept_one(gf);
    if (pthread_create(&gf->thread, NULL, grpc_thread, gf) != 0) {
        moe_errorf(MOE_EIO, "cannot start the gRPC thread");
        atomic_store(&gf->stop, true);
        grpc_thread(gf); /* runs the shutdown on this thread */
        grpc_server_destroy(gf->server);
        grpc_completion_queue_destroy(gf->cq);
        grpc_shutdown();
        srv_inbox_free(&gf->inbox);
        free(gf);
        return NULL;
    }
    return gf;
}

void srv_grpc_stop(struct grpc_front *gf, double until)
{
    if (!gf)
        return;
    atomic_store(&gf->stop_until, until);
    atomic_store(&gf->stop, true);
    pthread_join(gf->thread, NULL);
    grpc_server_destroy(gf->server);
    grpc_completion_queue_destroy(gf->cq);
    grpc_shutdown();
    srv_inbox_free(&gf->inbox);
    free(gf);
}
