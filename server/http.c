/* HTTP front end (libevent evhttp): OpenAI-compatible completions and chat
 * completions (JSON or server-sent events), /v1/models, /health, /ready,
 * /metrics.  One event-loop thread; scheduler events arrive through the
 * inbox and an event made active from the scheduler thread, and so do large
 * requests prepared on the server's preparation threads (prep_start). */
#include <errno.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h> /* a request's HTTP version: libevent 2.1 has no call for it */
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "responses.h"
#include "srv.h"

#define HTTP_MAX_HEADERS (64 * 1024) /* bytes of a request's line and headers (evhttp answers 400 beyond) */

/* An open HTTP connection.  libevent 2.1's evhttp neither caps its connections nor bounds how long
 * one may take over a request (its timeout restarts on every byte), so slow clients could hold
 * descriptors without end.  The front end makes each connection's bufferevent itself
 * (evhttp_set_bevcb) and holds a reference to it: evhttp clears a bufferevent's callbacks when it
 * lets the connection go (its event callback is set for as long as it owns it), which ends the entry. */
struct hconn {
    struct bufferevent *bev;      /* our reference */
    double t0;                    /* opened, or its previous reply went out */
    bool busy;                    /* a whole request has arrived and is being answered */
    bool partial;                 /* bytes arrived since it opened or its previous reply went out: a request
                                     begun (one that misses http-read-timeout is answered 408) */
    bool over;                    /* opened beyond max-http-connections: answered 503 and closed */
    bool closing;                 /* shut down by the front end */
    size_t discarded;             /* bytes read and thrown away since evhttp let it go */
};

struct http_front {
    struct moe_server *srv;
    struct event_base *base;
    struct evhttp *http;
    struct event *wake_ev;
    struct evhttp_bound_socket *listener; /* NULL once closed for the drain */
    double stop_until;            /* stopping: moe_now() seconds until which replies may still go out */
    struct srv_inbox inbox;
    pthread_t thread;
    uint64_t next_id;
    char id_tag[16];              /* random per start: ids differ across restarts and replicas */
    struct hconn *conns;          /* open connections (HTTP thread only) */
    int n_conns;
    size_t cap_conns;
    struct event *sweep_ev;       /* every second */
    struct event *over_ev;        /* at once for a connection beyond the cap: an event of its own, since
                                   * activating the periodic one by hand pushes its next run a period later
                                   * (libevent reschedules a persistent timer from its scheduled time), so a
                                   * burst of N such connections postponed the read-timeout sweep N seconds;
                                   * also for a connection evhttp has let go that is still read */
    struct kept *kept;            /* [responses-store] the last responses (HTTP thread only) */
    int n_kept;                   /* slots used so far, deleted ones among them */
    uint64_t kept_seq;            /* responses kept so far: the next one's age */
};

/* A response kept for previous_response_id and GET /v1/responses/{id}. */
struct kept {
    uint64_t seq;                 /* when it was kept (http_front.kept_seq); 0: an empty slot */
    char id[160];
    json_t *object;               /* the response object as answered */
    json_t *conversation;         /* its messages, for the next response */
};

/* Usage of one prompt of a call: its tokens once, and of them those from a cached prefix (the fewest of
 * any of its choices). */
struct hprompt_use {
    int n_prompt, n_cached;
};

/* One HTTP completion call: its connection and reply, shared by its n choices (of each prompt of a batch). */
struct hcall {
    struct http_front *hf;
    struct evhttp_request *req;   /* NULL once the connection is gone */
    struct event *watch;          /* readable socket while generating: EOF = client gone */
    bool stream, chat, include_usage;
    bool tool_call;               /* the reply is a tool call (tool_choice): text held, sent as tool_calls */
    uint8_t tool_parse;           /* tool calls in the reply (an enum moe_tool_style) become tool_calls (auto) */
    json_t *tools;                /* ... the request's tools, which type calls written as text */
    bool reasoning;               /* serve --reasoning-parser think: <think>...</think> is reasoning_content */
    bool think_opened;            /* ... and the prompt opened the block: the reply starts inside it */
    char id[48];
    long long created;
    int n, n_open;                /* choices (of all prompts); those still generating */
    int n_per;                    /* choices per prompt (the request's n): choice k answers prompt k / n_per */
    struct hreq **ch;             /* [n]: each choice's state, NULL once it has finished */
    json_t *choices;              /* non-streamed: the finished choices, by index */
    struct srv_gen **done_g;      /* [n] non-streamed: the finished choices' generations, held (srv_gen_detach)
                                     until the reply is sent, so that one that cannot be counts them failed */
    struct hprompt_use *use;      /* [n / n_per] usage: each prompt once */
    int n_generated;              /* ... and the choices' tokens added up */
    int n_reasoning;              /* ... of the choices' tokens, those of their reasoning (reasoning parser) */
    struct moe_responses *resp;   /* POST /v1/responses: the chat reply turned into a response (responses.h) */
    struct hjob *prep;            /* its request being prepared (its choices not yet made) */
    bool watched;                 /* its connection is watched (hcall_watch) and its close callback set */
};

/* One choice of a call: its generation and what it has sent. */
struct hreq {
    struct hcall *c;
    int index;
    struct srv_gen *g;
    bool started;                 /* chat: the choice's first chunk (with its role) went out */
    bool in_call;                 /* streamed tool_parse: a call's tag began, the rest is held */
    struct evbuffer *text;        /* non-streamed: the text so far; streamed tool calls: the text held
                                     (with a reasoning parser: of the answer only) */
    struct evbuffer *all;         /* reasoning parser: the whole reply so far */
    struct evbuffer *reason;      /* ... non-streamed: the reasoning */
    size_t sent_r, sent_c;        /* ... bytes of the reasoning and of the answer passed on */
    struct moe_stop_scan scan;    /* the request's stop sequences (scan.n = 0: none) */
    int n_tokens;                 /* tokens turned into text so far */
    uint32_t *tok_at;             /* reasoning parser: where each token's text began in the reply [n_tokens] */
    size_t cap_tok_at;
    json_t *lp;                   /* log-probabilities not yet sent (the request asked), else NULL:
                                     chat, {"content": [...]}; completions, OpenAI's four arrays */
    size_t lp_offset;             /* completions: characters of the tokens so far (text_offset) */
    struct lp_held *held;         /* generated tokens' log-probabilities whose text the stop scanner holds */
    int n_held;
    size_t cap_held;
    size_t n_fed, n_released;     /* bytes of the reply's text into the stop scanner, and out of it */
    char *echo;                   /* completions' echo: the prompt's text, until it is sent (then NULL) */
    size_t echo_len;
};

/* A prepared request of a call is made of (hprompt_in, below). */
struct hprompt_in;

/* A request being prepared (srv_job_start): a copy of its body, and what work made of it. */
struct hjob {
    struct srv_job j;
    struct moe_server *srv;
    enum { HJ_COMPLETION, HJ_TOKENIZE, HJ_DETOKENIZE } kind;
    char *body;                   /* NUL-terminated */
    size_t n;
    bool chat;                    /* completion: a chat request, templated with tmpl */
    const struct moe_chat *tmpl;
    double ht;                    /* completion: its X-Request-Timeout (header_timeout) */
    /* made by work: an error (code and err, named: a request error, send_request_error's), or the
     * completion request and its prompts, or /tokenize's reply (out) */
    int code;
    bool named;
    char err[1024];
    bool decoded;                 /* gr holds a request */
    struct moe_gen_request gr;
    struct hprompt_in *in_p;
    int n_prompts;
    char *out;
};

/* libevent's own messages: into the log (a warning as a warning), except while the listener is bound,
 * when the bind's error says what to fix and libevent's (a resolver's "[warn] getaddrinfo: ...") is
 * only for the debug log. */
static atomic_bool log_binding;

static void event_log(int severity, const char *msg)
{
    int saved = errno; /* the bind's own error reads it */
    if (atomic_load(&log_binding) || severity < EVENT_LOG_WARN)
        MOE_DBG("libevent: %s", msg);
    else if (severity == EVENT_LOG_WARN)
        MOE_WARN("libevent: %s", msg);
    else
        MOE_ERR("libevent: %s", msg);
    errno = saved;
}

static void wake_cb(void *arg)
{
    struct http_front *h = arg;
    event_active(h->wake_ev, EV_READ, 0);
}

/* The standard reason phrase of a status this server answers with (RFC 9110, RFC 6585's 429: libevent's
 * own table has none past 417). */
static const char *status_phrase(int code)
{
    switch (code) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return code >= 500 ? "Server Error" : code >= 400 ? "Client Error" : "OK";
    }
}

/* A whole reply, its Content-Length always given: libevent leaves it out for HEAD and CONNECT (and
 * would send HEAD the body), which breaks the next reply on the connection.  HEAD gets the headers
 * GET would and no body; CONNECT (never a tunnel here) its error with the body framed. */
static void send_text(struct evhttp_request *req, int code, const char *ctype, const char *body,
                      size_t len)
{
    struct evkeyvalq *hd = evhttp_request_get_output_headers(req);
    evhttp_add_header(hd, "Content-Type", ctype);
    char n[32];
    snprintf(n, sizeof(n), "%zu", len);
    evhttp_add_header(hd, "Content-Length", n);
    struct evbuffer *b = NULL;
    if (evhttp_request_get_command(req) != EVHTTP_REQ_HEAD && (b = evbuffer_new()))
        evbuffer_add(b, body, len);
    evhttp_send_reply(req, code, status_phrase(code), b);
    if (b)
        evbuffer_free(b);
}

/* A JSON reply as json_dumps, the front end's way (malloc'd; NULL: out of memory). */
static char *dump_json(const json_t *j)
{
    return j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
}

/* s (dump_json's) as the reply; when it is NULL a 500 goes instead: false. */
static bool send_dumped(struct evhttp_request *req, int code, const char *s)
{
    static const char oom[] = "{\"error\":{\"message\":\"out of memory for the response\","
                              "\"type\":\"server_error\",\"param\":null,\"code\":500}}";
    if (s)
        send_text(req, code, "application/json", s, strlen(s));
    else
        send_text(req, 500, "application/json", oom, sizeof(oom) - 1);
    return s != NULL;
}

/* j as the reply; when it cannot be written out (j NULL, or out of memory) a 500 goes instead: false. */
static bool send_json(struct evhttp_request *req, int code, json_t *j)
{
    char *s = dump_json(j);
    bool ok = send_dumped(req, code, s);
    free(s);
    return ok;
}

static const char *err_type(int code)
{
    switch (code) {
    case 400: return "invalid_request_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 405: return "method_not_allowed";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 503: return "unavailable";
    case 504: return "timeout";
    default: return "server_error";
    }
}

/* OpenAI's error object; param (the field at fault) is null: the message names the field.  The
 * message may quote what a client sent (a percent-decoded path, text cut at a byte limit), which
 * need not be UTF-8: invalid bytes become U+FFFD, so the object is always made. */
static json_t *err_json(int code, const char *msg)
{
    size_t n = strlen(msg);
    char *u = malloc(3 * n + 1);
    json_t *j = json_pack("{s:{s:s%,s:s,s:n,s:i}}", "error", "message", u ? u : "out of memory",
                          u ? moe_utf8_lossy(msg, n, u, false, NULL) : strlen("out of memory"), "type",
                          err_type(code), "param", "code", code);
    free(u);
    return j;
}

static void send_error(struct evhttp_request *req, int code, const char *msg)
{
    json_t *j = err_json(code, msg);
    send_json(req, code, j);
    json_decref(j);
}

/* An error about a request before it runs; a Responses request's names its own fields, not those of the
 * chat completion request it was translated into. */
static void send_request_error(struct evhttp_request *req, const struct moe_responses *resp, int code,
                               const char *msg)
{
    char named[1024];
    if (resp) {
        moe_responses_error_names(resp, msg, named, sizeof(named));
        msg = named;
    }
    send_error(req, code, msg);
}

static void hreq_free(struct hreq *r)
{
    if (r->text)
        evbuffer_free(r->text);
    if (r->all)
        evbuffer_free(r->all);
    if (r->reason)
        evbuffer_free(r->reason);
    moe_stop_scan_free(&r->scan);
    free(r->tok_at);
    free(r->held);
    json_decref(r->lp);
    free(r->echo);
    free(r);
}

/* Every choice still generating is cancelled and forgotten. */
static void hcall_abandon(struct hcall *c)
{
    for (int i = 0; i < c->n; i++) {
        struct hreq *r = c->ch[i];
        if (!r)
            continue;
        if (r->g)
            srv_gen_abandon(r->g);
        hreq_free(r);
        c->ch[i] = NULL;
    }
    c->n_open = 0;
}

/* The reply could not be sent: the finished choices count as failed. */
static void hcall_undeliverable(struct hcall *c, const char *msg)
{
    for (int i = 0; i < c->n; i++)
        if (c->done_g[i]) {
            srv_gen_undeliverable(c->done_g[i], msg);
            c->done_g[i] = NULL;
        }
}

static void hcall_free(struct hcall *c)
{
    if (c->prep) /* the job is freed where it is found */
        srv_job_let_go(&c->prep->j);
    hcall_abandon(c);
    for (int i = 0; i < c->n; i++)
        if (c->done_g[i])
            srv_gen_put(c->done_g[i]);
    free(c->done_g);
    free(c->use);
    if (c->watch)
        event_free(c->watch);
    json_decref(c->choices);
    json_decref(c->tools);
    moe_responses_free(c->resp);
    free(c->ch);
    free(c);
}

static struct kept *kept_find(struct http_front *h, const char *id)
{
    for (int i = 0; i < h->n_kept; i++)
        if (!strcmp(h->kept[i].id, id)) return &h->kept[i];
    return NULL;
}

static const json_t *kept_lookup(void *ud, const char *id)
{
    struct kept *k = kept_find(ud, id);
    return k ? k->conversation : NULL;
}

/* Keep a finished response: in a slot a DELETE emptied, else a new one; the oldest goes only when
 * every slot holds a response. */
static void kept_put(struct hcall *c, const json_t *object)
{
    struct http_front *h = c->hf;
    int cap = h->srv->cfg.responses_store;
    if (!c->resp || !object || cap <= 0 || !moe_responses_store_wanted(c->resp)) return;
    if (!h->kept && !(h->kept = calloc((size_t)cap, sizeof(*h->kept)))) return;
    json_t *conv = moe_responses_conversation(c->resp, object);
    if (!conv) return;
    struct kept *k = NULL;
    for (int i = 0; i < h->n_kept && (!k || k->seq); i++)
        if (!k || h->kept[i].seq < k->seq) k = &h->kept[i]; /* an empty slot (seq 0) first, else the oldest */
    if (h->n_kept < cap && (!k || k->seq)) k = &h->kept[h->n_kept++];
    k->seq = ++h->kept_seq;
    json_decref(k->object);
    json_decref(k->conversation);
    snprintf(k->id, sizeof(k->id), "%s", moe_responses_id(c->resp));
    k->object = json_deep_copy(object);
    k->conversation = conv;
}

/* GET /v1/responses/{id}: the kept response; DELETE: forget it. */
static void handle_kept(struct http_front *h, struct evhttp_request *req, const char *id, bool del)
{
    struct kept *k = kept_find(h, id);
    if (!k) {
        char msg[320];
        snprintf(msg, sizeof(msg), "no response '%.*s' is kept here (the last responses-store responses are)",
                 moe_utf8_cut(id, 100), id);
        send_error(req, 404, msg);
        return;
    }
    if (!del) {
        send_json(req, 200, k->object);
        return;
    }
    json_t *j = json_pack("{s:s,s:s,s:b}", "id", k->id, "object", "response", "deleted", 1);
    json_decref(k->object);
    json_decref(k->conversation);
    k->object = k->conversation = NULL;
    k->id[0] = 0; /* an empty slot: found by no id, taken by the next response kept */
    k->seq = 0;
    send_json(req, 200, j);
    json_decref(j);
}

/* The client went away: cancel the generations at once, forget the call. */
static void conn_close_cb(struct evhttp_connection *conn, void *arg)
{
    struct hcall *c = arg;
    /* A request whose connection failed under it is detached and left to
     * us (libevent frees only requests still attached to the connection). */
    if (c->req && !evhttp_request_get_connection(c->req))
        evhttp_request_free(c->req);
    c->req = NULL;
    hcall_free(c);
    (void)conn;
}

static void hcall_watch(struct hcall *c, short what);

/* evhttp does not read a connection while its reply is pending, so a client
 * that goes away unnoticed would keep its sequence running.  Peek at the
 * socket when it turns readable: end of stream or an error means the client
 * left (the connection is freed, its close callback cancels the request);
 * data means a pipelined request (or the CRLF some clients send after a
 * body), which stays readable: from then on the watch is for the client's
 * close alone (EV_CLOSED, where the event backend reports it). */
static void watch_cb(evutil_socket_t fd, short what, void *arg)
{
    struct hcall *c = arg;
    if (!(what & EV_CLOSED)) {
        char b;
        ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))) {
            if (n > 0) {
                event_free(c->watch);
                c->watch = NULL;
                if (event_base_get_features(c->hf->base) & EV_FEATURE_EARLY_CLOSE)
                    hcall_watch(c, EV_CLOSED);
            }
            return;
        }
    }
    if (c->req) {
        struct evhttp_connection *ec = evhttp_request_get_connection(c->req);
        if (ec) {
            evhttp_connection_free(ec); /* runs conn_close_cb, which frees c */
            return;
        }
    }
}

static void hcall_watch(struct hcall *c, short what)
{
    struct evhttp_connection *ec = evhttp_request_get_connection(c->req);
    struct bufferevent *bev = ec ? evhttp_connection_get_bufferevent(ec) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd < 0)
        return;
    c->watch = event_new(c->hf->base, fd, what | EV_PERSIST, watch_cb, c);
    if (c->watch)
        event_add(c->watch, NULL);
}

/* From the time its request is being prepared, or else generates: the call's close callback is set
 * and its connection watched for the client going away (hcall_detach undoes it). */
static void hcall_attach(struct hcall *c)
{
    if (c->watched)
        return;
    c->watched = true;
    evhttp_connection_set_closecb(evhttp_request_get_connection(c->req), conn_close_cb, c);
    hcall_watch(c, EV_READ);
}

static void hcall_detach(struct hcall *c)
{
    if (c->watch) {
        event_free(c->watch);
        c->watch = NULL;
    }
    if (c->req) {
        struct evhttp_connection *ec = evhttp_request_get_connection(c->req);
        if (ec)
            evhttp_connection_set_closecb(ec, NULL, NULL);
    }
}

static const char *obj_name(const struct hcall *c)
{
    if (c->chat)
        return c->stream ? "chat.completion.chunk" : "chat.completion";
    return "text_completion";
}

/* The call's usage: OpenAI's counts, the prompt's cached tokens and, with a reasoning parser, the
 * reasoning's tokens. */
static json_t *usage_json(const struct hcall *c)
{
    int n_prompt = 0, n_cached = 0;
    for (int p = 0; p < c->n / c->n_per; p++) {
        n_prompt += c->use[p].n_prompt;
        n_cached += c->use[p].n_cached;
    }
    json_t *u = json_pack("{s:i,s:i,s:i,s:{s:i}}", "prompt_tokens", n_prompt, "completion_tokens",
                          c->n_generated, "total_tokens", n_prompt + c->n_generated, "prompt_tokens_details",
                          "cached_tokens", n_cached);
    if (u && c->reasoning)
        json_object_set_new(u, "completion_tokens_details", json_pack("{s:i}", "reasoning_tokens", c->n_reasoning));
    return u;
}

/* ---- log-probabilities ---- */

static json_t *lp_new(bool chat)
{
    if (chat)
        return json_pack("{s:[]}", "content");
    return json_pack("{s:[],s:[],s:[],s:[]}", "tokens", "token_logprobs", "top_logprobs", "text_offset");
}

/* Token id as text (invalid UTF-8 as U+FFFD) and, for chat, its bytes; *chars: its characters. */
static json_t *token_text(const struct hreq *r, int id, json_t **bytes, size_t *chars)
{
    const struct moe_tokenizer *tok = r->c->hf->srv->tok;
    int n = moe_tokenizer_token_bytes(tok, id, NULL, 0);
    n = n < 0 ? 0 : n;
    char *b = malloc((size_t)n + 1), *u = malloc(3 * (size_t)n + 1);
    json_t *s = NULL;
    if (b && u) {
        moe_tokenizer_token_bytes(tok, id, b, (size_t)n);
        size_t un = moe_utf8_lossy(b, (size_t)n, u, false, NULL);
        s = json_stringn(u, un);
        *chars = 0;
        for (size_t i = 0; i < un; i++)
            *chars += ((unsigned char)u[i] & 0xc0) != 0x80;
        if (bytes && (*bytes = json_array()))
            for (int i = 0; i < n; i++)
                json_array_append_new(*bytes, json_integer((unsigned char)b[i]));
    }
    free(b);
    free(u);
    return s ? s : json_string("");
}

/* Completions: one step of the four arrays for token, with its logprob and top (both taken). */
static void lp_step(struct hreq *r, int token, json_t *logprob, json_t *top)
{
    size_t chars = 0;
    json_array_append_new(json_object_get(r->lp, "tokens"), token_text(r, token, NULL, &chars));
    json_array_append_new(json_object_get(r->lp, "token_logprobs"), logprob);
    json_array_append_new(json_object_get(r->lp, "top_logprobs"), top);
    json_array_append_new(json_object_get(r->lp, "text_offset"), json_integer((json_int_t)r->lp_offset));
    r->lp_offset += chars;
}

/* A generated token's log-probabilities, held until the text they belong to goes out. */
struct lp_held {
    int token;
    size_t at;                    /* where the token's text begins in the reply (hreq.n_fed) */
    struct moe_token_logprobs lp;
};

/* A log-probability as JSON, which has no infinities: -inf (a token beside an infinite logit) as
 * -9999.0, as vLLM writes it, and NaN (NaN logits) as null, so no entry is left out of its list. */
static json_t *lp_json(float v)
{
    if (isnan(v)) return json_null();
    return json_real(v == -INFINITY ? -9999.0 : (double)v);
}

/* One generated token's entry: chat {token, logprob, bytes, top_logprobs: [...]}, completions a
 * step of each of the four arrays (the top ones as an object token -> logprob). */
static void lp_add(struct hreq *r, int token, const struct moe_token_logprobs *lp)
{
    size_t chars = 0, ignored;
    if (r->c->chat) {
        json_t *bytes = NULL, *top = json_array();
        json_t *t = token_text(r, token, &bytes, &chars);
        for (int i = 0; i < lp->n; i++) {
            json_t *tb = NULL, *tt = token_text(r, lp->ids[i], &tb, &ignored);
            json_array_append_new(top, json_pack("{s:o,s:o,s:o}", "token", tt, "logprob", lp_json(lp->logprobs[i]),
                                                 "bytes", tb ? tb : json_array()));
        }
        json_array_append_new(json_object_get(r->lp, "content"),
                              json_pack("{s:o,s:o,s:o,s:o}", "token", t, "logprob", lp_json(lp->logprob), "bytes",
                                        bytes ? bytes : json_array(), "top_logprobs", top));
        return;
    }
    json_t *top = json_object();
    for (int i = 0; i < lp->n; i++) {
        json_t *tt = token_text(r, lp->ids[i], NULL, &ignored);
        json_object_set_new(top, json_string_value(tt), lp_json(lp->logprobs[i]));
        json_decref(tt);
    }
    lp_step(r, token, lp_json(lp->logprob), top);
}

/* A generated token whose text begins at r->n_fed: its log-probabilities wait for that text (false:
 * out of memory). */
static bool lp_hold(struct hreq *r, int token, const struct moe_token_logprobs *lp)
{
    if (!moe_grow((void **)&r->held, &r->cap_held, (size_t)r->n_held + 1, sizeof(*r->held), 8))
        return false;
    r->held[r->n_held++] = (struct lp_held){ .token = token, .at = r->n_fed, .lp = *lp };
    return true;
}

/* The text up to r->n_released has gone out (or is about to, in the chunk that takes r->lp): the
 * tokens whose text begins before it, straddling tokens included, join the reply's log-probabilities;
 * all: the reply is whole (a stop sequence did not cut it), tokens without text at its end too. */
static void lp_release(struct hreq *r, bool all)
{
    int k = 0;
    if (!r->n_held)
        return;
    while (k < r->n_held && (all || r->held[k].at < r->n_released)) {
        lp_add(r, r->held[k].token, &r->held[k].lp);
        k++;
    }
    memmove(r->held, r->held + k, (size_t)(r->n_held - k) * sizeof(*r->held));
    r->n_held -= k;
}

/* Completions' echo: the first prompt token, which has no log-probability (null, as OpenAI sends). */
static void lp_add_first(struct hreq *r, int token)
{
    lp_step(r, token, json_null(), json_null());
}

/* Whether log-probabilities were collected since the last chunk (none when the request did not ask). */
static bool lp_pending(const struct hreq *r)
{
    json_t *first = r->lp ? json_object_iter_value(json_object_iter(r->lp)) : NULL;
    return first && json_array_size(first);
}

/* The choice's "logprobs": what was collected since the last chunk (then a fresh collection), or
 * null when the request did not ask. */
static json_t *lp_take(struct hreq *r)
{
    if (!lp_pending(r)) /* nothing asked, or nothing new since the last chunk */
        return json_null();
    json_t *j = r->lp;
    r->lp = lp_new(r->c->chat);
    return j;
}

/* The call's reply object around choices (a new reference taken), with usage when not NULL. */
static json_t *reply_json(const struct hcall *c, json_t *choices, json_t *usage)
{
    json_t *j = json_pack("{s:s,s:s,s:I,s:s,s:o}", "id", c->id, "object", obj_name(c), "created",
                          (json_int_t)c->created, "model", c->hf->srv->model_name, "choices", choices);
    if (usage)
        json_object_set_new(j, "usage", usage);
    return j;
}

/* A streamed chunk: the choice's next text (its answer; or, when key is "reasoning_content", its
 * reasoning), or its end. */
static json_t *chunk_json_as(struct hreq *r, const char *key, const char *text, size_t len, const char *finish)
{
    json_t *choice;
    json_t *fr = finish ? json_string(finish) : json_null();
    if (r->c->chat) {
        json_t *delta = json_object();
        if (!r->started)
            json_object_set_new(delta, "role", json_string("assistant"));
        if (len || !finish)
            json_object_set_new(delta, key, json_stringn(text, len));
        choice = json_pack("{s:i,s:o,s:o,s:o}", "index", r->index, "delta", delta, "logprobs", lp_take(r),
                           "finish_reason", fr);
    } else {
        choice = json_pack("{s:i,s:s%,s:o,s:o}", "index", r->index, "text", text, len, "logprobs", lp_take(r),
                           "finish_reason", fr);
    }
    return reply_json(r->c, json_pack("[o]", choice), NULL);
}

static json_t *chunk_json(struct hreq *r, const char *text, size_t len, const char *finish)
{
    return chunk_json_as(r, "content", text, len, finish);
}

/* One server-sent event: its data, after its type when it has one. */
static void sse_event(struct hcall *c, const char *type, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    struct evbuffer *b = evbuffer_new();
    if (s && b) {
        if (type)
            evbuffer_add_printf(b, "event: %s\n", type);
        evbuffer_add_printf(b, "data: %s\n\n", s);
        evhttp_send_reply_chunk(c->req, b);
    }
    free(s);
    if (b)
        evbuffer_free(b);
    json_decref(j);
}

static void resp_emit(void *ud, const char *type, json_t *data)
{
    sse_event(ud, type, data);
}

/* A streamed chunk (or error) out: as it is, or as the Responses stream's events. */
static void sse_send(struct hcall *c, json_t *j)
{
    if (c->resp) {
        if (j)
            moe_responses_stream_chunk(c->resp, j, resp_emit, c);
        json_decref(j);
        return;
    }
    sse_event(c, NULL, j);
}

static void sse_done(struct hcall *c)
{
    struct evbuffer *b = c->resp ? NULL : evbuffer_new(); /* a Responses stream ends with its last event */
    if (b) {
        evbuffer_add_printf(b, "data: [DONE]\n\n");
        evhttp_send_reply_chunk(c->req, b);
        evbuffer_free(b);
    }
    evhttp_send_reply_end(c->req);
}

/* The answer's text for the client: a streamed chunk or the choice's text so far.  chunk: a token's
 * text, whose chunk goes out empty only to carry log-probabilities that have no text of their own to go
 * with (text held back, for a stop sequence or a tool call, sends nothing meanwhile). */
static void emit_content(struct hreq *r, const char *t, size_t len, bool chunk)
{
    chunk = chunk && lp_pending(r);
    if (r->c->stream && r->c->tool_parse) { /* content until a <tool_call> tag, which is held with the rest */
        evbuffer_add(r->text, t, len);
        if (r->in_call)
            return;
        size_t n = evbuffer_get_length(r->text);
        const char *held = (const char *)evbuffer_pullup(r->text, -1);
        size_t out = held ? moe_tool_calls_release(held, n, r->c->tool_parse, &r->in_call) : 0;
        if (out || (chunk && !n)) {
            sse_send(r->c, chunk_json(r, held ? held : "", out, NULL));
            r->started = true;
            evbuffer_drain(r->text, out);
        }
    } else if (r->c->stream && !r->c->tool_call) {
        if (chunk || len) {
            sse_send(r->c, chunk_json(r, t, len, NULL));
            r->started = true;
        }
    } else if (len) {
        evbuffer_add(r->text, t, len);
    }
}

/* Reasoning parser: the next token's text begins where the reply's text so far ends, r->n_fed (a stop
 * scanner holds text back but never changes it, so these are places in r->all too). */
static bool tok_at_add(struct hreq *r)
{
    if (!moe_grow((void **)&r->tok_at, &r->cap_tok_at, (size_t)r->n_tokens + 1, sizeof(*r->tok_at), 64))
        return false;
    r->tok_at[r->n_tokens] = (uint32_t)r->n_fed;
    return true;
}

/* Of a finished choice's tokens, those whose text began inside its reasoning block (up to the end of
 * its closing tag; all of them when the block never closed). */
static int reasoning_tokens(const struct hreq *r)
{
    size_t n = evbuffer_get_length(r->all);
    const char *s = n ? (const char *)evbuffer_pullup(r->all, -1) : "";
    struct moe_think_split sp;
    moe_think_split(s, n, r->c->think_opened, true, &sp);
    size_t end = !sp.content ? SIZE_MAX : sp.cb ? sp.re + strlen(MOE_THINK_CLOSE) : 0;
    int k = 0;
    while (k < r->n_tokens && r->tok_at[k] < end)
        k++;
    return k;
}

/* Text for the client.  With a reasoning parser the reply so far is split (moe_think_split): what
 * is decided of its reasoning goes out as reasoning_content (streamed) or is kept for the message,
 * what is decided of its answer goes on as content; last: the reply is whole. */
static void emit_text_as(struct hreq *r, const char *t, size_t len, bool chunk, bool last)
{
    if (!r->c->reasoning) {
        emit_content(r, t, len, chunk);
        return;
    }
    evbuffer_add(r->all, t, len);
    size_t n = evbuffer_get_length(r->all);
    const char *s = n ? (const char *)evbuffer_pullup(r->all, -1) : "";
    struct moe_think_split sp;
    moe_think_split(s, n, r->c->think_opened, last, &sp);
    bool sent = false;
    if (sp.re > sp.rb + r->sent_r) {
        const char *p = s + sp.rb + r->sent_r;
        size_t m = sp.re - sp.rb - r->sent_r;
        if (r->c->stream) {
            sse_send(r->c, chunk_json_as(r, "reasoning_content", p, m, NULL));
            r->started = sent = true;
        } else {
            evbuffer_add(r->reason, p, m);
        }
        r->sent_r += m;
    }
    size_t avail = sp.content && n > sp.cb + r->sent_c ? n - sp.cb - r->sent_c : 0;
    if (avail || (chunk && !sent))
        emit_content(r, s + sp.cb + r->sent_c, avail, chunk && !sent);
    r->sent_c += avail;
}

static void emit_text(struct hreq *r, const char *t, size_t len, bool chunk)
{
    emit_text_as(r, t, len, chunk, false);
}

/* t (malloc'd, *len bytes) through the stop scanner when the request has stop
 * sequences: replaced by what may go out now (all of it when last).  1 = a
 * stop sequence completed (in t, or in a byte run the text stream still holds),
 * 0 = not, -1 = out of memory (t freed, NULL). */
static int stop_filter(struct hreq *r, char **t, size_t *len, bool last)
{
    if (!r->scan.n || !*t)
        return *t ? 0 : -1;
    char *o;
    size_t n, n_ahead;
    const char *ahead = srv_gen_pending(r->g, &n_ahead);
    int m = moe_stop_scan_feed(&r->scan, *t, *len, ahead, n_ahead, last, &o, &n);
    free(*t);
    *t = o;
    *len = n;
    return m;
}

/* The id prefix of a choice's tool calls: call_<the request id's tail>_<choice>. */
static void call_id(const struct hreq *r, char *id, size_t cap)
{
    const char *dash = strchr(r->c->id, '-');
    snprintf(id, cap, "call_%s_%d", dash ? dash + 1 : r->c->id, r->index);
}

/* The tool calls a finished choice's text holds: its whole text as one call (tool_choice), or its
 * <tool_call> blocks (tool_parse, *content_len = the text before them); NULL when there are none. */
static json_t *choice_calls(const struct hreq *r, const char *txt, size_t n, enum moe_finish why, size_t *content_len)
{
    char id[128];
    call_id(r, id, sizeof(id));
    *content_len = 0;
    if (r->c->tool_parse)
        return moe_tool_calls_parse(txt ? txt : "", n, r->c->tool_parse, r->c->tools, id, content_len);
    if (!r->c->tool_call || why != MOE_FINISH_STOP)
        return NULL;
    strcat(id, "_0");
    json_t *one = moe_tool_call_entry(txt, n, id);
    return one ? json_pack("[o]", one) : NULL;
}

/* A choice's generation ended (why/st/emsg): its final chunk goes out, or its choice is kept for the
 * reply; a failure ends the whole call with the error.  When no choice is left, the call ends. */
static void hreq_finish(struct hreq *r, enum moe_finish why, enum moe_status st, const char *emsg,
                        const struct srv_events *ev, int n_generated, bool stopped)
{
    struct hcall *c = r->c;
    struct srv_gen *g = r->g;
    bool ok = why == MOE_FINISH_LENGTH || why == MOE_FINISH_STOP;
    const char *finish = moe_finish_str(why);
    char msg[320];
    snprintf(msg, sizeof(msg), "request %s%s%s", finish, emsg[0] ? ": " : "", emsg);
    bool last = c->n_open == 1;
    if (ok) {
        struct hprompt_use *u = &c->use[r->index / c->n_per];
        u->n_cached = u->n_prompt && ev->n_cached > u->n_cached ? u->n_cached : ev->n_cached;
        u->n_prompt = ev->n_prompt;
        c->n_generated += n_generated;
    }
    json_t *calls = NULL;
    size_t content_n = 0;
    if (ok && c->reasoning) { /* the reply is whole: what was held as a possible tag is decided */
        emit_text_as(r, "", 0, false, true);
        c->n_reasoning += reasoning_tokens(r);
    }
    if (ok && (c->tool_call || c->tool_parse)) { /* the held text: calls, or (none) plain content */
        size_t n = evbuffer_get_length(r->text);
        const char *txt = (const char *)evbuffer_pullup(r->text, -1);
        if ((calls = choice_calls(r, txt, n, why, &content_n)) != NULL) finish = "tool_calls";
        if (c->stream && calls) {
            if (content_n) /* text before the first call that was still held */
                sse_send(c, chunk_json(r, txt, content_n, NULL));
            json_t *j = chunk_json(r, "", 0, NULL);
            json_t *delta = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "delta");
            json_object_del(delta, "content");
            json_t *streamed = json_deep_copy(calls);
            for (size_t i = 0; i < json_array_size(streamed); i++) /* a streamed call's place in the list */
                json_object_set_new(json_array_get(streamed, i), "index", json_integer((json_int_t)i));
            json_object_set_new(delta, "tool_calls", streamed);
            sse_send(c, j);
            r->started = true;
        } else if (c->stream && n) {
            sse_send(c, chunk_json(r, txt, n, NULL));
            r->started = true;
        }
    }
    if (ok && c->stream) {
        /* usage goes out once: in the last finishing chunk, or with include_usage in OpenAI's usage
         * chunk after it (clients that add up the usage of every chunk would count it twice) */
        json_t *j = chunk_json(r, "", 0, finish);
        if (last && !c->include_usage)
            json_object_set_new(j, "usage", usage_json(c));
        sse_send(c, j);
    } else if (ok) {
        size_t n = evbuffer_get_length(r->text);
        const char *txt = (const char *)evbuffer_pullup(r->text, -1);
        /* the choice's log-probabilities: all of them, an empty collection when nothing was generated
         * (EOS first), null only when the request did not ask */
        json_t *lp = r->lp ? r->lp : json_null(), *choice;
        r->lp = NULL;
        if (c->chat && calls) {
            json_t *content = content_n ? json_stringn(txt, content_n) : json_null();
            choice = json_pack("{s:i,s:{s:s,s:o,s:O},s:o,s:s}", "index", r->index, "message", "role", "assistant",
                               "content", content, "tool_calls", calls, "logprobs", lp, "finish_reason", finish);
        } else if (c->chat)
            choice = json_pack("{s:i,s:{s:s,s:s%},s:o,s:s}", "index", r->index, "message", "role", "assistant",
                               "content", txt ? txt : "", n, "logprobs", lp, "finish_reason", finish);
        else
            choice = json_pack("{s:i,s:s%,s:o,s:s}", "index", r->index, "text", txt ? txt : "", n,
                               "logprobs", lp, "finish_reason", finish);
        if (c->chat && c->reasoning) { /* the reasoning apart from the answer, null when there was none */
            size_t rn = evbuffer_get_length(r->reason);
            json_object_set_new(json_object_get(choice, "message"), "reasoning_content",
                                rn ? json_stringn((const char *)evbuffer_pullup(r->reason, -1), rn) : json_null());
        }
        json_array_set_new(c->choices, (size_t)r->index, choice);
    } else {
        int code = srv_finish_http_status(why, st, st == ev->st && ev->of_request);
        if (c->stream)
            sse_send(c, err_json(code, msg));
        else
            send_error(c->req, code, msg);
    }
    json_decref(calls);
    r->g = NULL;
    c->ch[r->index] = NULL;
    c->n_open--;
    if (ok && !c->stream) { /* held until the reply is sent */
        srv_gen_detach(g, stopped);
        c->done_g[r->index] = g;
    } else if (stopped) {
        srv_gen_abandon_stopped(g); /* the rest of the generation is not wanted */
    } else {
        srv_gen_abandon(g); /* done, or failed here: cancels what still runs */
    }
    hreq_free(r);
    if (ok && !last)
        return;
    hcall_abandon(c); /* after a failure: the other choices are not wanted */
    if (!ok && !c->stream) /* the client gets the error alone: the choices that finished are not sent */
        hcall_undeliverable(c, "not sent: another choice of its call failed");
    if (c->stream) {
        if (ok && c->include_usage) /* OpenAI's usage chunk: no choices, the whole call's usage */
            sse_send(c, reply_json(c, json_array(), usage_json(c)));
        if (ok && c->resp)
            kept_put(c, moe_responses_final(c->resp));
        sse_done(c);
    } else if (ok) {
        json_t *j = reply_json(c, json_incref(c->choices), usage_json(c));
        json_t *rj = c->resp ? moe_responses_reply(c->resp, j) : json_incref(j);
        if (send_json(c->req, 200, rj))
            kept_put(c, rj);
        else /* the reply could not be built or written out (out of memory): its requests failed */
            hcall_undeliverable(c, "out of memory for the response");
        json_decref(rj);
        json_decref(j);
    }
    hcall_detach(c);
    hcall_free(c);
}

/* Completions' echo, once the prompt has run: its text first, and its tokens' log-probabilities. */
static void echo_prompt(struct hreq *r)
{
    struct srv_gen *g = r->g;
    if (r->lp)
        for (int i = 0; i < g->n_prompt; i++) {
            if (i == 0)
                lp_add_first(r, g->prompt_ids[0]);
            else
                lp_add(r, g->prompt_ids[i], &g->prompt_lps[i]);
        }
    emit_text(r, r->echo, r->echo_len, true);
    free(r->echo);
    r->echo = NULL;
}

/* Deliver new events of one generation to its HTTP request. */
static void hreq_progress(struct hreq *r)
{
    struct srv_gen *g = r->g;
    struct srv_events ev;
    srv_gen_events(g, &ev);
    /* every prompt log-probability came before the first token or a successful end; a request that
     * failed before then has not scored its prompt, and its client gets the error alone */
    if (r->echo && (ev.n_toks > 0 || (ev.done && (ev.why == MOE_FINISH_LENGTH || ev.why == MOE_FINISH_STOP))))
        echo_prompt(r);
    int m = 0;
    for (int i = 0; i < ev.n_toks && m == 0; i++) {
        bool last = ev.done && i == ev.n_toks - 1;
        size_t len = 0;
        char *t = srv_gen_text(g, &ev.toks[i], 1, last, &len);
        if ((r->c->reasoning && !tok_at_add(r)) || (r->lp && ev.lps && !lp_hold(r, ev.toks[i], &ev.lps[i]))) {
            free(t);
            t = NULL; /* out of memory, as below */
        }
        r->n_fed += len;
        r->scan.quiet = r->n_tokens < g->min_tokens; /* its text ends no stop sequence (min_tokens) */
        m = stop_filter(r, &t, &len, last);
        r->n_tokens++;
        if (t) { /* the log-probabilities of the tokens whose text goes out go with it */
            r->n_released += len;
            lp_release(r, false);
            emit_text(r, t, len, true);
        }
        free(t);
    }
    free(ev.toks);
    free(ev.lps);
    if (m == 1) {
        hreq_finish(r, MOE_FINISH_STOP, MOE_OK, "", &ev, r->n_tokens, true);
        return;
    }
    if (m < 0) {
        hreq_finish(r, MOE_FINISH_ERROR, MOE_ENOMEM, "out of memory", &ev, r->n_tokens, false);
        return;
    }
    if (!ev.done)
        return;
    if (ev.n_toks == 0) {
        size_t len = 0;
        char *t = srv_gen_text(g, NULL, 0, true, &len); /* flush held-back bytes */
        r->n_fed += len;
        int stop = stop_filter(r, &t, &len, true);
        if (t) {
            r->n_released += len;
            lp_release(r, false);
            emit_text(r, t, len, false);
        }
        free(t);
        if (stop == 1) {
            hreq_finish(r, MOE_FINISH_STOP, MOE_OK, "", &ev, r->n_tokens, true);
            return;
        }
    }
    lp_release(r, true); /* no stop sequence cut the reply: every token's log-probabilities */
    hreq_finish(r, ev.why, ev.st, ev.msg, &ev, ev.n_generated, false);
}

static void hjob_finish(struct hcall *c, struct hjob *q);

static void wake_event_cb(evutil_socket_t fd, short what, void *arg)
{
    struct http_front *h = arg;
    void *owner;
    for (struct srv_job *j; (j = srv_inbox_pop_job(&h->inbox, &owner));) {
        struct hcall *c = owner;
        c->prep = NULL;
        hjob_finish(c, (struct hjob *)j);
    }
    for (struct srv_gen *g; (g = srv_inbox_pop(&h->inbox));) {
        pthread_mutex_lock(&h->inbox.mu);
        struct hreq *r = g->owner;
        pthread_mutex_unlock(&h->inbox.mu);
        if (r && r->g == g)
            hreq_progress(r);
        srv_gen_put(g);
    }
    (void)fd;
    (void)what;
}

static double header_timeout(struct evhttp_request *req)
{
    const char *v = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Request-Timeout");
    if (!v)
        return 0;
    char *end;
    double d = strtod(v, &end);
    if (end == v || *end || !(d > 0 && d <= 86400))
        return -1;
    return d;
}

/* libevent keeps an HTTP/1.0 connection open when the request's first Connection header begins with
 * "keep-alive" (its own test: "keep-alive, x" is one), and then says "Connection: keep-alive" in the
 * reply beside any "Connection: close" of ours: a reply after which the connection ends takes such
 * headers out of the request first. */
static void drop_keep_alive(struct evhttp_request *req)
{
    struct evkeyvalq *ih = evhttp_request_get_input_headers(req);
    for (const char *conn; (conn = evhttp_find_header(ih, "Connection")) &&
                           !evutil_ascii_strncasecmp(conn, "keep-alive", 10);)
        evhttp_remove_header(ih, "Connection");
}

/* The connection closes after this reply, whatever its request asked. */
static void close_after(struct evhttp_request *req)
{
    drop_keep_alive(req);
    struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
    if (!evhttp_find_header(oh, "Connection"))
        evhttp_add_header(oh, "Connection", "close");
}

/* Whether a request's Connection headers list the "close" option (RFC 9112 9.6: the server closes the
 * connection after its reply), where libevent sees it only as the whole of the first one. */
static bool asks_close(struct evhttp_request *req)
{
    for (struct evkeyval *kv = evhttp_request_get_input_headers(req)->tqh_first; kv; kv = kv->next.tqe_next) {
        if (evutil_ascii_strcasecmp(kv->key, "Connection"))
            continue;
        for (const char *t = kv->value; *t;) {
            t += strspn(t, " \t,");
            size_t n = strcspn(t, " \t,");
            if (n == 5 && !evutil_ascii_strncasecmp(t, "close", 5))
                return true;
            t += n;
        }
    }
    return false;
}

/* One prompt of a request: the prompt itself, or prompt p of its batch (the request's other fields as
 * they are; its prompt borrowed from r, so the view is never freed). */
static struct moe_gen_request prompt_of(const struct moe_gen_request *r, int p)
{
    struct moe_gen_request one = *r;
    if (r->n_batch) {
        one.prompt = r->batch[p].text;
        one.prompt_len = r->batch[p].len;
        one.prompt_ids = r->batch[p].ids;
        one.n_prompt_ids = r->batch[p].n_ids;
    }
    return one;
}

/* Choice k of a request (n per prompt, each prompt's in turn): its prompt's view (prompt_of), drawing with
 * the request's seed + its index among its prompt's choices (or each its own random one), as that prompt
 * sent alone would. */
static struct moe_gen_request choice_of(const struct moe_gen_request *r, int k)
{
    struct moe_gen_request one = prompt_of(r, k / r->n);
    one.sampling.seed = r->sampling.seed + (uint64_t)(k % r->n);
    one.choice = k;
    return one;
}

/* Completions' echo of prompt r: its text as sent, or its ids decoded (bytes that are not UTF-8, as a
 * character split at the prompt's end or ids that make none, as U+FFFD, as in generated text). */
static enum moe_status echo_text(struct moe_server *s, const struct moe_gen_request *r, char **out, size_t *len)
{
    static const char oom[] = "out of memory for the echoed prompt";
    if (r->prompt) {
        if (!(*out = malloc(r->prompt_len + 1)))
            return moe_errorf(MOE_ENOMEM, "%s", oom);
        memcpy(*out, r->prompt, r->prompt_len + 1);
        *len = r->prompt_len;
        return MOE_OK;
    }
    char *raw = NULL;
    size_t raw_len = 0;
    enum moe_status st = srv_detokenize(s, r->prompt_ids, (size_t)r->n_prompt_ids, &raw, &raw_len);
    if (st == MOE_OK && !(*out = malloc(3 * raw_len + 1)))
        st = MOE_ENOMEM;
    if (st == MOE_OK) {
        *len = moe_utf8_lossy(raw, raw_len, *out, false, NULL);
        (*out)[*len] = 0;
    }
    free(raw);
    return st == MOE_ENOMEM ? moe_errorf(st, "%s", oom) : st;
}

/* A prompt of a call before it runs: as srv_gen_prepare made it, and its echo (completions' echo). */
struct hprompt_in {
    struct srv_prompt sp;
    char *echo;
    size_t echo_len;
};

static void prompts_free(struct hprompt_in *in_p, int n)
{
    for (int p = 0; in_p && p < n; p++) {
        free(in_p[p].sp.ids);
        free(in_p[p].echo);
    }
    free(in_p);
}

/* Each prompt of gr prepared and its echo made, into in_p (a batch's named prompt[i] in the errors about
 * it); for a batch, gr->need_all: the tokens in flight of all its n choices of every prompt, which the
 * first's admission checks.  Errors are counted as rejections of the request. */
static enum moe_status prepare_prompts(struct moe_server *s, struct moe_gen_request *gr, struct hprompt_in *in_p)
{
    int n_prompts = gr->n_batch ? gr->n_batch : 1;
    int64_t need = 0;
    for (int p = 0; p < n_prompts; p++) {
        struct moe_gen_request one = prompt_of(gr, p);
        char name[32];
        snprintf(name, sizeof(name), "prompt[%d]", p);
        enum moe_status st = srv_gen_prepare(s, &one, gr->n_batch ? name : NULL, &in_p[p].sp);
        if (st == MOE_OK && gr->echo && (st = echo_text(s, &one, &in_p[p].echo, &in_p[p].echo_len)) != MOE_OK) {
            srv_count_refused(s, st);
            if (gr->n_batch)
                moe_error_prefix(st, "'%s'", name);
        }
        if (st != MOE_OK)
            return st;
        need += ((int64_t)in_p[p].sp.n_ids + in_p[p].sp.max_tokens) * gr->n;
    }
    gr->need_all = gr->n_batch ? need : 0;
    return MOE_OK;
}

/* A completion request's body parsed (its chat template rendered), checked, and its prompts prepared
 * (a preparation thread's work); an error is counted as a rejection of the request. */
static void completion_work(struct hjob *q)
{
    struct moe_server *s = q->srv;
    enum moe_status st = moe_req_parse_openai(q->body, q->n, q->chat, q->tmpl, &q->gr);
    /* ids the decoder cannot bound: refused here as invalid (not as the scheduler's refusal) */
    if (st == MOE_OK && (st = moe_gen_request_check_vocab(&q->gr, s->model->cfg.vocab, "prompt")) != MOE_OK)
        moe_gen_request_free(&q->gr);
    q->named = true;
    if (st != MOE_OK) {
        srv_count_refused(s, st);
        goto out;
    }
    q->decoded = true;
    if (q->ht < 0) {
        moe_metrics_count(&s->metrics, &s->metrics.rejected_invalid, 1);
        q->named = false;
        st = moe_errorf(MOE_EINVAL, "header X-Request-Timeout must be seconds in (0, 86400]");
        goto out;
    }
    if (q->ht > 0 && (q->gr.timeout_s == 0 || q->ht < q->gr.timeout_s))
        q->gr.timeout_s = q->ht;
    /* the prompts (each of a batch) tokenized and checked, and their echo made, before any runs */
    q->n_prompts = q->gr.n_batch ? q->gr.n_batch : 1;
    q->in_p = srv_calloc(s, SRV_FAULT_PROMPTS, (size_t)q->n_prompts, sizeof(*q->in_p));
    if (!q->in_p) {
        srv_count_refused(s, MOE_ENOMEM);
        st = moe_errorf(MOE_ENOMEM, "out of memory");
    } else {
        st = prepare_prompts(s, &q->gr, q->in_p);
    }
out:
    q->code = st == MOE_OK ? 200 : srv_http_status(st);
    if (st != MOE_OK)
        snprintf(q->err, sizeof(q->err), "%s", moe_last_error());
}

/* The call of a prepared completion request: its choices submitted, its reply begun (or its error
 * answered). */
static void completion_finish(struct hcall *c, struct hjob *q)
{
    struct http_front *h = c->hf;
    struct moe_server *s = h->srv;
    struct evhttp_request *req = c->req;
    struct moe_gen_request gr = q->gr; /* its pointers the job's, freed with it */
    struct hprompt_in *in_p = q->in_p;
    bool chat = c->chat;
    if (q->code != 200) {
        hcall_detach(c);
        if (q->named)
            send_request_error(req, c->resp, q->code, q->err);
        else
            send_error(req, q->code, q->err);
        hcall_free(c);
        return;
    }
    int n_prompts = q->n_prompts;
    size_t n_all = (size_t)n_prompts * (size_t)gr.n;
    if (!(c->ch = calloc(n_all, sizeof(*c->ch))) || !(c->done_g = calloc(n_all, sizeof(*c->done_g))) ||
        !(c->use = calloc((size_t)n_prompts, sizeof(*c->use))) || !(c->choices = json_array())) {
        srv_count_refused(s, MOE_ENOMEM);
        hcall_detach(c);
        send_error(req, 500, "out of memory");
        hcall_free(c);
        return;
    }
    c->stream = gr.stream;
    c->include_usage = gr.include_usage;
    c->tool_call = gr.tool_call;
    c->tool_parse = gr.tool_parse;
    c->tools = json_incref(gr.tools);
    /* output held to JSON (JSON mode, a schema, a forced tool call) may reason first: the value follows
     * a <think> block, unless the prompt closed one (reasoning turned off); a choice or a regular
     * expression holds the whole reply, block and all */
    c->reasoning = chat && !strcmp(h->srv->cfg.reasoning_parser, "think");
    c->think_opened = c->reasoning && gr.prompt && moe_think_opened(gr.prompt, gr.prompt_len);
    gr.json_after_think = c->reasoning && (gr.json_object || (gr.json_schema && !moe_json_schema_raw(gr.json_schema))) &&
                          !(gr.prompt && moe_think_closed(gr.prompt, gr.prompt_len));
    gr.think_opened = c->think_opened;
    c->created = (long long)time(NULL);
    c->n = (int)n_all;
    c->n_per = gr.n;
    snprintf(c->id, sizeof(c->id), "%s-%s%llu", chat ? "chatcmpl" : "cmpl", h->id_tag,
             (unsigned long long)++h->next_id);
    if (c->resp) {
        moe_responses_name(c->resp, c->id, c->created, s->model_name);
        moe_responses_set_stored(c->resp, s->cfg.responses_store > 0 && moe_responses_store_wanted(c->resp));
    }
    /* the choices: n of each prompt, one generation each (choice_of), the others in the room the first's
     * admission holds for them (hold) */
    enum moe_status st = MOE_OK;
    uint64_t hold = 0;
    for (int k = 0; k < c->n && st == MOE_OK; k++) {
        struct hprompt_in *pi = &in_p[k / gr.n];
        json_array_append_new(c->choices, json_null());
        struct hreq *r = srv_calloc(s, SRV_FAULT_CHOICE, 1, sizeof(*r));
        if (!r || !(r->text = evbuffer_new()) || (gr.logprobs && !(r->lp = lp_new(chat))) ||
            (pi->echo && !(r->echo = malloc(pi->echo_len + 1))) ||
            (c->reasoning && (!(r->all = evbuffer_new()) || !(r->reason = evbuffer_new())))) {
            if (r)
                hreq_free(r);
            srv_count_refused(s, MOE_ENOMEM);
            st = moe_errorf(MOE_ENOMEM, "out of memory");
            break;
        }
        r->c = c;
        r->index = k;
        if (pi->echo) {
            memcpy(r->echo, pi->echo, pi->echo_len + 1);
            r->echo_len = pi->echo_len;
        }
        c->ch[k] = r;
        c->n_open++;
        struct moe_gen_request one = choice_of(&gr, k);
        one.hold = hold;
        st = srv_stop_scan_init(s, &r->scan, gr.stop, gr.n_stop);
        if (st == MOE_OK)
            st = srv_gen_submit_prepared(s, &h->inbox, r, &one, &pi->sp, 0, &r->g);
        if (st == MOE_OK && k == 0 && c->n > 1)
            hold = r->g->id;
    }
    srv_gen_hold_release(s, hold);
    if (st != MOE_OK) { /* the choices submitted so far are cancelled with the call */
        hcall_detach(c);
        send_request_error(req, c->resp, srv_http_status(st), moe_last_error());
        hcall_free(c);
        return;
    }
    hcall_attach(c);
    if (c->stream) {
        /* The stream's length is unknown: HTTP/1.1 gets it chunked, and an HTTP/1.0 client reads until
         * the connection closes.  libevent would answer an HTTP/1.0 keep-alive request with
         * "Content-Length: 0" before the events and keep the connection, so the client would take the
         * events for its next reply: the stream ends the connection instead. */
        drop_keep_alive(req);
        struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
        evhttp_add_header(oh, "Content-Type", "text/event-stream");
        evhttp_add_header(oh, "Cache-Control", "no-cache");
        evhttp_send_reply_start(req, 200, "OK");
        if (c->resp)
            moe_responses_stream_start(c->resp, resp_emit, c);
    }
}

/* POST /tokenize ({"prompt": text} or chat {"messages": [...]}, as a completion request would run them)
 * -> {"count", "max_model_len", "tokens"}; POST /detokenize ({"tokens": [ids]}) -> {"prompt": text}
 * (bytes that are not UTF-8 as U+FFFD).  vLLM's endpoints. */
static void tokenize_work(struct hjob *q)
{
    struct moe_server *s = q->srv;
    bool detok = q->kind == HJ_DETOKENIZE;
    size_t n = q->n;
    const char *body = q->body;
    json_error_t jerr;
    json_t *root = json_loadb(body, n, JSON_REJECT_DUPLICATES, &jerr), *out = NULL;
    int *ids = NULL;
    size_t n_ids = 0;
    char msg[400] = "";
    int code = 400;
    json_t *model = json_object_get(root, "model");
    if (!root && moe_json_number_refused(&jerr, "the body") != MOE_OK) {
        snprintf(msg, sizeof(msg), "%s", moe_last_error());
    } else if (!root) {
        snprintf(msg, sizeof(msg), "the body is not valid JSON: %s at line %d column %d", moe_json_error_text(&jerr),
                 jerr.line, jerr.column);
    } else if (!json_is_object(root)) {
        snprintf(msg, sizeof(msg), "the body must be a JSON object");
    } else if (model && !json_is_null(model) && !json_is_string(model)) {
        snprintf(msg, sizeof(msg), "'model' must be a string");
    } else if (json_string_length(model) && strcmp(json_string_value(model), s->model_name)) {
        /* as the completion endpoints answer a model that is not served */
        const char *name = json_string_value(model);
        code = 404, snprintf(msg, sizeof(msg), "model '%.*s' is not served here (this server serves '%s')",
                             moe_utf8_cut(name, 200), name, s->model_name);
    } else if (detok) {
        json_t *t = json_object_get(root, "tokens"), *v;
        size_t i;
        if (!json_is_array(t)) {
            snprintf(msg, sizeof(msg), "'tokens' must be an array of token ids");
        } else if (!(ids = malloc((json_array_size(t) + 1) * sizeof(int)))) {
            code = 500, snprintf(msg, sizeof(msg), "out of memory");
        } else {
            json_array_foreach(t, i, v) {
                json_int_t id = json_integer_value(v);
                if (!json_is_integer(v) || id < 0 || id >= s->model->cfg.vocab) {
                    snprintf(msg, sizeof(msg), "'tokens'[%zu] is not a token id in [0, %d)", i, s->model->cfg.vocab);
                    break;
                }
                ids[n_ids++] = (int)id;
            }
            char *raw = NULL, *u = NULL;
            size_t raw_len = 0;
            enum moe_status st = msg[0] ? MOE_OK : srv_detokenize(s, ids, n_ids, &raw, &raw_len);
            if (st != MOE_OK)
                code = st == MOE_ENOMEM ? 500 : 400, snprintf(msg, sizeof(msg), "%s", moe_last_error());
            else if (!msg[0] && !(u = malloc(3 * raw_len + 1)))
                code = 500, snprintf(msg, sizeof(msg), "out of memory");
            if (u)
                out = json_pack("{s:s%}", "prompt", u, moe_utf8_lossy(raw, raw_len, u, false, NULL));
            free(raw);
            free(u);
        }
    } else {
        bool chat = json_object_get(root, "messages") != NULL;
        struct moe_gen_request gr;
        const struct moe_chat *tmpl = s->chat;
        if (!chat && !json_is_string(json_object_get(root, "prompt")))
            snprintf(msg, sizeof(msg), "give 'prompt' (a string) or 'messages' (a chat)");
        else if (moe_req_parse_openai(body, n, chat, tmpl, &gr) != MOE_OK)
            code = srv_http_status(moe_last_status()), snprintf(msg, sizeof(msg), "%s", moe_last_error());
        else {
            enum moe_status st = srv_tokenize(s, gr.templated, gr.prompt, gr.prompt_len, &ids, &n_ids);
            if (st == MOE_ENOMEM)
                code = 500, snprintf(msg, sizeof(msg), "%s", moe_last_error());
            else if (st != MOE_OK)
                snprintf(msg, sizeof(msg), "prompt: %s", moe_last_error());
            moe_gen_request_free(&gr);
        }
        json_t *strs = NULL;
        json_t *want_strs = json_object_get(root, "return_token_strs");
        if (!msg[0] && want_strs && !json_is_null(want_strs) && !json_is_boolean(want_strs))
            snprintf(msg, sizeof(msg), "'return_token_strs' must be a boolean");
        else if (!msg[0] && json_is_true(want_strs) && (strs = json_array())) /* vLLM's: the vocabulary's strings */
            for (size_t i = 0; i < n_ids; i++) {
                size_t k = 0;
                const char *t = moe_tokenizer_token_str(s->tok, ids[i], &k);
                json_array_append_new(strs, json_stringn(t ? t : "", t ? k : 0));
            }
        if (!msg[0] && (!json_is_true(want_strs) || strs)) {
            json_t *arr = json_array();
            for (size_t i = 0; arr && i < n_ids; i++)
                json_array_append_new(arr, json_integer(ids[i]));
            out = arr ? json_pack("{s:I,s:i,s:o}", "count", (json_int_t)n_ids, "max_model_len", s->max_ctx,
                                  "tokens", arr) : NULL;
            if (out && strs && json_object_set(out, "token_strs", strs)) {
                json_decref(out);
                out = NULL;
            }
        }
        json_decref(strs);
    }
    if (!msg[0] && !out)
        code = 500, snprintf(msg, sizeof(msg), "out of memory");
    if (msg[0] && code == 500) /* out of memory */
        srv_count_refused(s, MOE_ENOMEM);
    else if (msg[0])
        moe_metrics_count(&s->metrics, &s->metrics.rejected_invalid, code == 400 || code == 404);
    else
        q->out = dump_json(out), code = 200;
    q->code = code;
    snprintf(q->err, sizeof(q->err), "%s", msg);
    json_decref(out);
    json_decref(root);
    free(ids);
}

static void tokenize_finish(struct hcall *c, const struct hjob *q)
{
    hcall_detach(c);
    if (q->code != 200)
        send_error(c->req, q->code, q->err);
    else
        send_dumped(c->req, 200, q->out);
    hcall_free(c);
}

static void hjob_work(struct srv_job *j)
{
    struct hjob *q = (struct hjob *)j;
    if (q->kind == HJ_COMPLETION)
        completion_work(q);
    else
        tokenize_work(q);
}

/* A prepared request whose client left (srv_job.gone): its choices submitted and cancelled, as
 * completion_finish submits them and hcall_free cancels them when the client leaves after.  A refusal
 * was counted by the work, and /tokenize counts nothing more. */
static void hjob_gone(struct srv_job *j)
{
    struct hjob *q = (struct hjob *)j;
    if (q->kind != HJ_COMPLETION || q->code != 200)
        return;
    int n_all = q->n_prompts * q->gr.n;
    uint64_t hold = 0;
    for (int k = 0; k < n_all; k++) {
        struct moe_gen_request one = choice_of(&q->gr, k);
        one.hold = hold;
        if (srv_gen_submit_gone(q->srv, &one, &q->in_p[k / q->gr.n].sp, 0, k == 0 && n_all > 1 ? &hold : NULL) !=
            MOE_OK)
            break;
    }
    srv_gen_hold_release(q->srv, hold);
}

/* A request whose client left before it was prepared (srv_job.dropped): a completion counts as one
 * cancelled generation (its choices never made), /tokenize as nothing. */
static void hjob_dropped(struct srv_job *j)
{
    struct hjob *q = (struct hjob *)j;
    if (q->kind == HJ_COMPLETION)
        srv_gen_count_dropped(q->srv);
}

static void hjob_free(struct srv_job *j)
{
    struct hjob *q = (struct hjob *)j;
    free(q->body);
    if (q->decoded)
        moe_gen_request_free(&q->gr);
    prompts_free(q->in_p, q->n_prompts);
    free(q->out);
    free(q);
}

/* A prepared request finished on this thread (the call answered, or its choices submitted), and its
 * job freed. */
static void hjob_finish(struct hcall *c, struct hjob *q)
{
    if (q->kind == HJ_COMPLETION)
        completion_finish(c, q);
    else
        tokenize_finish(c, q);
    hjob_free(&q->j);
}

/* Call c of req (NULL: out of memory; a completion's chat and resp set) with its request's body[0..n):
 * the request is prepared on a preparation thread when it is large, meanwhile the call waits (its
 * client watched, as one that generates is) and is finished when it comes back (wake_event_cb); a small
 * one here and now. */
static void prep_start(struct http_front *h, struct evhttp_request *req, struct hcall *c, int kind,
                       const char *body, size_t n)
{
    struct hjob *q = c ? srv_calloc(h->srv, SRV_FAULT_JOB, 1, sizeof(*q)) : NULL;
    if (!q || !(q->body = malloc(n + 1))) {
        free(q);
        srv_count_refused(h->srv, MOE_ENOMEM);
        send_error(req, 500, "out of memory");
        if (c)
            hcall_free(c);
        return;
    }
    memcpy(q->body, body ? body : "", body ? n : 0);
    q->n = body ? n : 0;
    q->body[q->n] = 0;
    q->srv = h->srv;
    q->kind = kind;
    q->chat = c->chat;
    /* the template is set while loading; a request before then is refused as not ready anyway */
    q->tmpl = atomic_load(&h->srv->loaded) ? h->srv->chat : NULL;
    q->ht = kind == HJ_COMPLETION ? header_timeout(req) : 0;
    q->j.work = hjob_work;
    q->j.free = hjob_free;
    q->j.gone = hjob_gone;
    q->j.dropped = hjob_dropped;
    q->j.inbox = &h->inbox;
    q->j.owner = c;
    if (srv_job_start(h->srv, &q->j, q->n)) {
        c->prep = q;
        hcall_attach(c);
        return;
    }
    hjob_finish(c, q);
}

static void handle_completion(struct http_front *h, struct evhttp_request *req, bool chat, bool responses)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    const char *body = (const char *)evbuffer_pullup(in, -1);
    struct moe_responses *resp = NULL;
    char *chat_body = NULL;
    if (responses) { /* a Responses request, as the chat completion request it means */
        enum moe_status st = moe_responses_request(body ? body : "", body ? n : 0, kept_lookup, h, &chat_body, &resp);
        if (st != MOE_OK) {
            free(chat_body);
            srv_count_refused(h->srv, st);
            send_request_error(req, resp, srv_http_status(st), moe_last_error());
            moe_responses_free(resp);
            return;
        }
        body = chat_body;
        n = chat_body ? strlen(chat_body) : 0;
    }
    struct hcall *c = calloc(1, sizeof(*c));
    if (c) {
        c->hf = h;
        c->req = req;
        c->chat = chat;
        c->resp = resp;
    } else {
        moe_responses_free(resp);
    }
    prep_start(h, req, c, HJ_COMPLETION, body, n);
    free(chat_body);
}

/* POST /tokenize and /detokenize: as completions, prepared off this thread when large. */
static void handle_tokenize(struct http_front *h, struct evhttp_request *req, bool detok)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    const char *body = (const char *)evbuffer_pullup(in, -1);
    struct hcall *c = calloc(1, sizeof(*c));
    if (c) {
        c->hf = h;
        c->req = req;
    }
    prep_start(h, req, c, detok ? HJ_DETOKENIZE : HJ_TOKENIZE, body, n);
}

static json_t *model_json(const struct moe_server *s)
{
    return json_pack("{s:s,s:s,s:I,s:s,s:i}", "id", s->model_name, "object", "model", "created",
                     (json_int_t)s->created, "owned_by", "moeflow", "max_model_len", s->max_ctx);
}

/* GET /v1/models lists the served model; GET /v1/models/{id} (id URL-encoded, as OpenAI's clients
 * send it) is that model, or a 404 for any other id. */
static void handle_models(struct http_front *h, struct evhttp_request *req, const char *id)
{
    struct moe_server *s = h->srv;
    if (!id) {
        json_t *j = json_pack("{s:s,s:[o]}", "object", "list", "data", model_json(s));
        send_json(req, 200, j);
        json_decref(j);
        return;
    }
    char *name = evhttp_uridecode(id, 0, NULL);
    if (name && !strcmp(name, s->model_name)) {
        json_t *j = model_json(s);
        send_json(req, 200, j);
        json_decref(j);
    } else {
        char msg[400];
        const char *shown = name ? name : id;
        snprintf(msg, sizeof(msg), "model '%.*s' is not served here (this server serves '%s')",
                 moe_utf8_cut(shown, 200), shown, s->model_name);
        send_error(req, 404, msg);
    }
    free(name);
}

/* Whether a header name is a token (RFC 9110 5.6.2).  libevent takes the name as it stands before the
 * colon, so "Transfer-Encoding : chunked" is a header of another name to it, and the body is read by
 * its Content-Length; a proxy in front that trims the space would read it chunked. */
static bool header_name_ok(const char *name)
{
    static const char tchar[] = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    size_t n = strlen(name);
    return n > 0 && strspn(name, tchar) == n;
}

/* Why a request's headers are refused (false when they are not; why is set).  Those that do not settle
 * where its body ends: libevent takes the first of several Content-Length headers, a sign before its
 * digits, an HTTP/1.0 request's chunked body (RFC 9112: its framing is faulty), and reads a body under a
 * Transfer-Encoding other than chunked as none, so a proxy in front that reads them otherwise would see
 * other requests on the connection than we do.  And a Host header missing from an HTTP/1.1 request, or
 * given more than once (RFC 9112 3.2: 400), which libevent takes as it comes. */
static bool bad_headers(struct evhttp_request *req, char *why, size_t cap)
{
    const char *cl = NULL;
    int n_te = 0, n_host = 0;
    for (struct evkeyval *kv = evhttp_request_get_input_headers(req)->tqh_first; kv; kv = kv->next.tqe_next) {
        if (!header_name_ok(kv->key)) {
            snprintf(why, cap, "header name '%.*s' is not a token (RFC 9110): no whitespace before its colon, "
                     "and none of ()<>@,;:\\\"/[]?={} or control characters", moe_utf8_cut(kv->key, 100), kv->key);
            return true;
        }
        if (!evutil_ascii_strcasecmp(kv->key, "Content-Length")) {
            /* digits only: libevent's strtoll takes "+5" and "-0"; it leaves a tab before the value
             * (whitespace the field may have, skipped by strtoll too) */
            const char *v = kv->value + strspn(kv->value, " \t");
            if (!v[0] || strspn(v, "0123456789") != strlen(v)) {
                snprintf(why, cap, "Content-Length '%.*s' is not a number of bytes (digits only)",
                         moe_utf8_cut(kv->value, 40), kv->value);
                return true;
            }
            if (cl && strcmp(cl, v)) {
                snprintf(why, cap, "the request has Content-Length headers that differ");
                return true;
            }
            cl = v;
        } else if (!evutil_ascii_strcasecmp(kv->key, "Transfer-Encoding")) {
            if (req->major < 1 || (req->major == 1 && req->minor < 1)) {
                snprintf(why, cap, "Transfer-Encoding in an HTTP/%d.%d request: chunked bodies are HTTP/1.1's "
                         "(give Content-Length)", req->major, req->minor);
                return true;
            }
            if (++n_te > 1 || evutil_ascii_strcasecmp(kv->value, "chunked")) {
                snprintf(why, cap, "Transfer-Encoding other than one 'chunked' is not supported");
                return true;
            }
        } else if (!evutil_ascii_strcasecmp(kv->key, "Host") && ++n_host > 1) {
            snprintf(why, cap, "the request has more than one Host header (RFC 9112: give one)");
            return true;
        }
    }
    if (!n_host && (req->major > 1 || (req->major == 1 && req->minor >= 1))) {
        snprintf(why, cap, "an HTTP/%d.%d request needs a Host header (RFC 9112), as 'Host: localhost'",
                 req->major, req->minor);
        return true;
    }
    return false;
}

/* ---- connections: a cap, and a deadline for each request ---- */

static struct hconn *conn_find(struct http_front *h, struct evhttp_request *req)
{
    struct evhttp_connection *ec = evhttp_request_get_connection(req);
    struct bufferevent *bev = ec ? evhttp_connection_get_bufferevent(ec) : NULL;
    for (int i = 0; bev && i < h->n_conns; i++)
        if (h->conns[i].bev == bev)
            return &h->conns[i];
    return NULL;
}

static void conn_gauge(struct http_front *h)
{
    struct moe_metrics *m = &h->srv->metrics;
    pthread_mutex_lock(&m->mu);
    m->http_connections = (uint64_t)h->n_conns;
    pthread_mutex_unlock(&m->mu);
}

static const char over_body[] = "{\"error\":{\"message\":\"too many connections open (max-http-connections): "
                                "retry later\",\"type\":\"unavailable\",\"param\":null,\"code\":503}}";
static const char timeout_body[] = "{\"error\":{\"message\":\"the request did not arrive whole within "
                                   "http-read-timeout: send it at once\",\"type\":\"invalid_request_error\","
                                   "\"param\":null,\"code\":408}}";

/* Drop the connections evhttp has let go; answer those beyond the cap (503) and close them, and with
 * deadlines, close those that have not sent a whole request in http-read-timeout (408 to one that began
 * a request). */
static void conns_sweep(struct http_front *h, bool deadlines)
{
    struct moe_server *s = h->srv;
    double now = moe_now();
    for (int i = 0; i < h->n_conns;) {
        struct hconn *c = &h->conns[i];
        bufferevent_event_cb ecb = NULL;
        bufferevent_getcb(c->bev, NULL, NULL, &ecb, NULL);
        if (!ecb) { /* evhttp has let it go: our reference is the last, and closes the socket */
            bufferevent_decref(c->bev);
            h->conns[i] = h->conns[--h->n_conns];
            continue;
        }
        evutil_socket_t fd = bufferevent_getfd(c->bev);
        bool late = deadlines && !c->busy && now - c->t0 > s->cfg.http_read_timeout;
        if (!c->closing && fd >= 0 && (c->over || late)) {
            /* no request read yet (beyond the cap), or one begun and not whole in time, with nothing of an
             * earlier reply left to go out: the reply goes out on the socket directly.  An idle connection
             * (nothing sent since its last reply) is closed without one */
            int code = 0;
            const char *body = NULL;
            if (c->over)
                code = 503, body = over_body;
            else if (c->partial && !evbuffer_get_length(bufferevent_get_output(c->bev)))
                code = 408, body = timeout_body;
            char msg[600];
            int n = body ? snprintf(msg, sizeof(msg), "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                                    "Connection: close\r\nContent-Length: %zu\r\n\r\n%s", code,
                                    status_phrase(code), strlen(body), body)
                         : 0;
            if (n > 0) {
                ssize_t w = send(fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
                (void)w; /* a client that cannot take it just sees the connection close */
            }
            shutdown(fd, SHUT_RDWR); /* evhttp reads the end and lets the connection go */
            c->closing = true;
            moe_metrics_count(&s->metrics, c->over ? &s->metrics.http_closed_limit : &s->metrics.http_closed_timeout, 1);
        }
        i++;
    }
    conn_gauge(h);
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    conns_sweep(arg, true);
    (void)fd;
    (void)what;
}

/* Bytes written on a tracked connection.  libevent answers a body over max-body-bytes (and a chunked body
 * it cannot read) with its own 413 before the request reaches gen_cb, so a reply that begins with that
 * status while no request of the connection is being answered here is such a refusal: counted as a
 * request refused (invalid, as a prompt over max-prompt is).  A reply begins with its status line, one
 * addition to the buffer. */
static void conn_output_cb(struct evbuffer *out, const struct evbuffer_cb_info *info, void *arg)
{
    struct http_front *h = arg;
    struct evbuffer_ptr at;
    struct evbuffer_iovec v; /* peeked: the buffer's start may be frozen, which refuses a copy */
    if (info->n_added < 12 || evbuffer_ptr_set(out, &at, info->orig_size, EVBUFFER_PTR_SET) ||
        evbuffer_peek(out, 12, &at, &v, 1) < 1 || v.iov_len < 12 || memcmp(v.iov_base, "HTTP/1.", 7) ||
        memcmp((const char *)v.iov_base + 8, " 413", 4))
        return;
    for (int i = 0; i < h->n_conns; i++) {
        if (bufferevent_get_output(h->conns[i].bev) == out) {
            moe_metrics_count(&h->srv->metrics, &h->srv->metrics.rejected_invalid, !h->conns[i].busy);
            return;
        }
    }
}

/* Bytes read on a tracked connection: a request begun.  On one evhttp has let go (after a 413 for a body
 * over max-body-bytes, say), our reference keeps its read event on until the sweep drops it: what the
 * client goes on sending would pile up in its input unread, as fast as the client sends, for up to a
 * second.  It is thrown away instead, up to max-body-bytes of it (so that a client that sends its whole
 * body before it reads gets its 413 rather than a reset connection); beyond, reading stops and the sweep
 * runs on the loop's next turn, which closes the socket. */
static void conn_input_cb(struct evbuffer *in, const struct evbuffer_cb_info *info, void *arg)
{
    struct http_front *h = arg;
    if (info->n_added == 0)
        return;
    for (int i = 0; i < h->n_conns; i++) {
        struct hconn *c = &h->conns[i];
        if (bufferevent_get_input(c->bev) != in)
            continue;
        bufferevent_event_cb ecb = NULL;
        bufferevent_getcb(c->bev, NULL, NULL, &ecb, NULL);
        if (!ecb) {
            c->discarded += evbuffer_get_length(in);
            evbuffer_drain(in, evbuffer_get_length(in));
            if (c->discarded > (size_t)h->srv->cfg.max_body_bytes) {
                bufferevent_disable(c->bev, EV_READ);
                event_active(h->over_ev, EV_TIMEOUT, 1);
            }
            return;
        }
        c->partial = true;
        return;
    }
}

/* evhttp's bufferevent for a new connection (its socket is set after): tracked, and marked when it
 * is beyond the cap.  A NULL return makes evhttp create one itself, untracked. */
static struct bufferevent *conn_new_cb(struct event_base *base, void *arg)
{
    struct http_front *h = arg;
    /* BEV_OPT_CLOSE_ON_FREE, as evhttp makes them: the socket closes when the last reference (ours,
     * dropped by the sweep) goes.  Were evhttp to close it while our reference keeps the bufferevent's
     * read event registered, a new connection given the same descriptor would have its bytes read by
     * that event. */
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!bev)
        return NULL;
    /* evhttp reads a connection while it writes a reply there (to see the client leave), and keeps what
     * it reads for the next request: all that a client sends during a streamed reply would be held.
     * Reading pauses once the connection holds what one request may need at once (its headers, and a
     * body or one chunk of it), and goes on as evhttp takes it. */
    bufferevent_setwatermark(bev, EV_READ, 0, (size_t)h->srv->cfg.max_body_bytes + 2 * HTTP_MAX_HEADERS);
    int max = h->srv->cfg.max_http_connections;
    if (h->n_conns >= max)
        conns_sweep(h, false); /* count only those still open */
    if (!moe_grow((void **)&h->conns, &h->cap_conns, (size_t)h->n_conns + 1, sizeof(*h->conns), 64))
        return bev; /* out of memory: served, not tracked */
    bool over = h->n_conns >= max;
    bufferevent_incref(bev);
    h->conns[h->n_conns++] = (struct hconn){ .bev = bev, .t0 = moe_now(), .over = over };
    evbuffer_add_cb(bufferevent_get_output(bev), conn_output_cb, h);
    evbuffer_add_cb(bufferevent_get_input(bev), conn_input_cb, h);
    if (over)
        event_active(h->over_ev, EV_TIMEOUT, 1); /* next turn of the loop: evhttp has set its socket */
    return bev;
}

/* Whether a reply asks for its connection to close: "Connection: close" in the request or the reply. */
static bool wants_close(struct evhttp_request *req)
{
    const char *in = evhttp_find_header(evhttp_request_get_input_headers(req), "Connection");
    const char *out = evhttp_find_header(evhttp_request_get_output_headers(req), "Connection");
    return (in && !evutil_ascii_strcasecmp(in, "close")) || (out && !evutil_ascii_strcasecmp(out, "close"));
}

/* A reply went out: the connection's clock for its next request starts now.  libevent 2.1 keeps a
 * CONNECT request's connection open whatever its Connection header says (it leaves CONNECT out of
 * that check): such a connection is shut down here, and evhttp lets it go when it reads the end. */
static void conn_reply_done_cb(struct evhttp_request *req, void *arg)
{
    struct hconn *c = conn_find(arg, req);
    if (c) {
        c->busy = false;
        c->partial = false;
        c->t0 = moe_now();
        evutil_socket_t fd = bufferevent_getfd(c->bev);
        if (evhttp_request_get_command(req) == EVHTTP_REQ_CONNECT && !c->closing && fd >= 0 && wants_close(req)) {
            shutdown(fd, SHUT_RDWR);
            c->closing = true;
        }
    }
}

/* A header value a preflight may echo: a list of header names (token characters, commas, spaces). */
static bool header_list_ok(const char *v)
{
    size_t n = strlen(v);
    return n <= 1024 && strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_, ") == n;
}

/* CORS (cors-origin set, a known path): the reply to a browser request from an allowed origin says
 * so; an OPTIONS preflight is answered here (true returned): 204 with the methods and the headers it
 * asked for, or 403 when its origin is not allowed. */
static bool cors(struct moe_server *s, struct evhttp_request *req, const char *methods, bool preflight)
{
    struct evkeyvalq *ih = evhttp_request_get_input_headers(req), *oh = evhttp_request_get_output_headers(req);
    const char *origin = evhttp_find_header(ih, "Origin");
    bool any = !strcmp(s->cfg.cors_origin, "*");
    if (moe_serve_cors_allows(s->cfg.cors_origin, origin)) {
        evhttp_add_header(oh, "Access-Control-Allow-Origin", any ? "*" : origin);
        if (!any)
            evhttp_add_header(oh, "Vary", "Origin");
    } else if (preflight) {
        char msg[400];
        const char *shown = origin ? origin : "(none)";
        snprintf(msg, sizeof(msg), "origin '%.*s' is not allowed to call this server from a browser (see "
                 "cors-origin)", moe_utf8_cut(shown, 200), shown);
        send_error(req, 403, msg);
        return true;
    }
    if (!preflight)
        return false;
    evhttp_add_header(oh, "Access-Control-Allow-Methods", methods);
    const char *want = evhttp_find_header(ih, "Access-Control-Request-Headers");
    if (want && header_list_ok(want))
        evhttp_add_header(oh, "Access-Control-Allow-Headers", want);
    evhttp_add_header(oh, "Access-Control-Max-Age", "600");
    evhttp_send_reply(req, 204, "No Content", NULL);
    return true;
}

static void gen_cb(struct evhttp_request *req, void *arg)
{
    struct http_front *h = arg;
    struct moe_server *s = h->srv;
    moe_metrics_count(&s->metrics, &s->metrics.http_requests, 1);
    const char *uri = evhttp_request_get_uri(req);
    /* absolute-form ("http://host/path"), which RFC 9112 has a server take as well: its path.  libevent
     * marks such a request a proxy's, and then closes the connection after the reply unless a
     * Proxy-Connection header says keep-alive (saying nothing of it): it is served as any other. */
    if (!evutil_ascii_strncasecmp(uri, "http://", 7) || !evutil_ascii_strncasecmp(uri, "https://", 8)) {
        uri = strchr(uri, ':') + 3;
        uri += strcspn(uri, "/?");
        req->flags &= ~EVHTTP_PROXY_REQUEST;
    }
    char path[512]; /* a model id of 127 bytes, URL-encoded, fits */
    size_t i = 0;
    while (uri[i] && uri[i] != '?' && i < sizeof(path) - 1) {
        path[i] = uri[i];
        i++;
    }
    path[i] = 0;
    if (asks_close(req))
        close_after(req);
    struct hconn *conn = conn_find(h, req);
    if (conn) {
        conn->busy = true;
        evhttp_request_set_on_complete_cb(req, conn_reply_done_cb, h);
        if (conn->over) {
            /* the request came in before the sweep answered the connection; when the sweep came first
             * (its 503 sent, the socket shut down, counted), this reply goes nowhere and counts nothing */
            if (!conn->closing)
                moe_metrics_count(&s->metrics, &s->metrics.http_closed_limit, 1);
            conn->closing = true;
            close_after(req);
            send_error(req, 503, "too many connections open (max-http-connections): retry later");
            return;
        }
    }
    char framing[320];
    if (bad_headers(req, framing, sizeof(framing))) { /* what follows may not be told apart: answer, close */
        close_after(req);
        send_error(req, 400, framing);
        return;
    }
    bool tok_path = !strcmp(path, "/tokenize") || !strcmp(path, "/detokenize");
    bool post = !strcmp(path, "/v1/completions") || !strcmp(path, "/v1/chat/completions") ||
                !strcmp(path, "/v1/responses") || tok_path;
    const char *model_id = !strncmp(path, "/v1/models/", 11) ? path + 11 : NULL;
    const char *resp_id = !strncmp(path, "/v1/responses/", 14) && path[14] ? path + 14 : NULL;
    bool models = !strcmp(path, "/v1/models") || model_id;
    bool get = models || !strcmp(path, "/health") || !strcmp(path, "/ready") || !strcmp(path, "/metrics");
    bool gen_path = post || models; /* tokenizing needs the model's tokenizer, loaded with it */
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const char *methods = post ? "POST, OPTIONS" : resp_id ? "GET, HEAD, DELETE, OPTIONS" : "GET, HEAD, OPTIONS";
    if (s->cfg.cors_origin[0] && (post || get || resp_id) && cors(s, req, methods, cmd == EVHTTP_REQ_OPTIONS))
        return; /* a preflight, answered */
    if (resp_id && cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD && cmd != EVHTTP_REQ_DELETE) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD, DELETE");
        send_error(req, 405, "/v1/responses/{id} takes GET or DELETE");
        return;
    }
    if ((post && cmd != EVHTTP_REQ_POST) || (get && cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD)) {
        char msg[320];
        snprintf(msg, sizeof(msg), "%.*s takes %s", moe_utf8_cut(path, 200), path, post ? "POST" : "GET");
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", post ? "POST" : "GET, HEAD");
        send_error(req, 405, msg);
        return;
    }
    if (gen_path && !srv_loaded(s, post)) { /* a request counted as refused; a listing of the models not */
        send_error(req, 503, "the model is still loading; retry when /ready says ready");
        return;
    }
    if (!strcmp(path, "/v1/completions")) {
        handle_completion(h, req, false, false);
    } else if (!strcmp(path, "/v1/chat/completions")) {
        handle_completion(h, req, true, false);
    } else if (!strcmp(path, "/v1/responses")) {
        handle_completion(h, req, true, true);
    } else if (resp_id) {
        handle_kept(h, req, resp_id, cmd == EVHTTP_REQ_DELETE);
    } else if (tok_path) {
        handle_tokenize(h, req, path[1] == 'd');
    } else if (models) {
        handle_models(h, req, model_id);
    } else if (!strcmp(path, "/health") && atomic_load(&s->grpc_lost)) {
        static const char lost[] = "gRPC listener lost: it stopped accepting connections (out of file "
                                   "descriptors) and does not resume; restart the server\n";
        send_text(req, 503, "text/plain", lost, sizeof(lost) - 1);
    } else if (!strcmp(path, "/health") || !strcmp(path, "/ready")) {
        /* damaged model files: neither ready nor alive (a liveness probe restarts the server), saying why */
        const char *damaged = srv_files_damaged(s);
        char why[640];
        if (damaged)
            snprintf(why, sizeof(why), "model files damaged: %s\n", damaged);
        else if (path[1] == 'h')
            snprintf(why, sizeof(why), "ok\n");
        else
            snprintf(why, sizeof(why), "%s", atomic_load(&s->ready)       ? "ready\n"
                                             : atomic_load(&s->draining)  ? "draining\n"
                                             : atomic_load(&s->grpc_lost) ? "gRPC listener lost\n"
                                                                          : "loading\n");
        bool ok = !damaged && (path[1] == 'h' || atomic_load(&s->ready));
        send_text(req, ok ? 200 : 503, "text/plain", why, strlen(why));
    } else if (!strcmp(path, "/metrics")) {
        conns_sweep(h, false); /* the connections gauge: those open now, not those let go since the last sweep */
        size_t len = 0;
        char *t = srv_metrics_text(s, &len);
        if (t)
            send_text(req, 200, "text/plain; version=0.0.4", t, len);
        else
            send_error(req, 500, "out of memory rendering metrics");
        free(t);
    } else {
        char msg[320];
        snprintf(msg, sizeof(msg), "no such endpoint '%.*s' (see docs/api.md)", moe_utf8_cut(path, 200), path);
        send_error(req, 404, msg);
    }
}

static void resume_accept_cb(evutil_socket_t fd, short what, void *lev)
{
    evconnlistener_enable(lev);
    (void)fd;
    (void)what;
}

/* accept() failed (the listener's own argument is libevent's evhttp, so this
 * keeps no front-end state).  Out of descriptors, the pending connection stays
 * in the backlog and accept would fail again at once: stop listening for
 * 100 ms instead of spinning, and say so once in 10 s. */
static void accept_error_cb(struct evconnlistener *lev, void *unused)
{
    static _Atomic double warned_at = -1e9;
    int err = EVUTIL_SOCKET_ERROR();
    double now = moe_now();
    if (now - atomic_load(&warned_at) >= 10) {
        atomic_store(&warned_at, now);
        MOE_WARN("HTTP: cannot accept connections: %s%s", evutil_socket_error_to_string(err),
                 err == EMFILE || err == ENFILE ? " (raise the open-file limit, ulimit -n, or close idle clients)"
                                                : "");
    }
    if ((err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) &&
        event_base_once(evconnlistener_get_base(lev), -1, EV_TIMEOUT, resume_accept_cb, lev,
                        &(struct timeval){ 0, 100000 }) == 0)
        evconnlistener_disable(lev);
    (void)unused;
}

/* --host as libevent takes it: an IPv6 literal without the brackets of "[::1]". */
static void bare_host(const char *host, char *out, size_t cap)
{
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']')
        snprintf(out, cap, "%.*s", (int)(n - 2), host + 1);
    else
        snprintf(out, cap, "%s", host);
}

static void *http_thread(void *arg)
{
    struct http_front *h = arg;
    event_base_dispatch(h->base);
    return NULL;
}

struct http_front *srv_http_start(struct moe_server *s)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, (void (*)(void))evthread_use_pthreads);
    struct http_front *h = calloc(1, sizeof(*h));
    if (!h) {
        moe_errorf(MOE_ENOMEM, "out of memory");
        return NULL;
    }
    h->srv = s;
    uint64_t tag = srv_random64();
    snprintf(h->id_tag, sizeof(h->id_tag), "%012llx", (unsigned long long)(tag & 0xffffffffffffull));
    srv_inbox_init(&h->inbox, wake_cb, h);
    h->base = event_base_new();
    if (!h->base)
        goto out_fail;
    h->http = evhttp_new(h->base);
    h->wake_ev = event_new(h->base, -1, EV_PERSIST, wake_event_cb, h);
    h->sweep_ev = event_new(h->base, -1, EV_PERSIST, sweep_cb, h);
    h->over_ev = event_new(h->base, -1, 0, sweep_cb, h);
    if (!h->http || !h->wake_ev || !h->sweep_ev || !h->over_ev || event_add(h->sweep_ev, &(struct timeval){ 1, 0 }))
        goto out_fail;
    evhttp_set_bevcb(h->http, conn_new_cb, h);
    evhttp_set_max_body_size(h->http, (ev_ssize_t)s->cfg.max_body_bytes);
    evhttp_set_max_headers_size(h->http, HTTP_MAX_HEADERS);
    evhttp_set_timeout(h->http, 600);
    /* every method reaches gen_cb, which answers the wrong one with a JSON 405 and Allow */
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                            EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(h->http, gen_cb, h);
    char host[sizeof(s->cfg.host)];
    bare_host(s->cfg.host, host, sizeof(host));
    errno = 0;
    event_set_log_callback(event_log);
    atomic_store(&log_binding, true);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(h->http, host, (ev_uint16_t)s->cfg.http_port);
    atomic_store(&log_binding, false);
    h->listener = bs;
    if (!bs) {
        moe_errorf(MOE_EIO, "cannot bind: %s",
                   errno == EADDRINUSE ? "in use; pick another --http-port"
                                       : "check --host (an address of this machine) and --http-port");
        goto out_fail;
    }
    evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(bs), accept_error_cb);
    if (pthread_create(&h->thread, NULL, http_thread, h) != 0) {
        moe_errorf(MOE_EIO, "cannot start the HTTP thread");
        goto out_fail;
    }
    return h;
out_fail:
    if (!moe_last_error()[0])
        moe_errorf(MOE_EIO, "libevent setup failed");
    if (h->wake_ev)
        event_free(h->wake_ev);
    if (h->sweep_ev)
        event_free(h->sweep_ev);
    if (h->over_ev)
        event_free(h->over_ev);
    if (h->http)
        evhttp_free(h->http);
    if (h->base)
        event_base_free(h->base);
    srv_inbox_free(&h->inbox);
    free(h);
    return NULL;
}

/* On the HTTP thread (libevent's evhttp is not thread-safe). */
static void close_listener_cb(evutil_socket_t fd, short what, void *arg)
{
    struct http_front *h = arg;
    if (h->listener)
        evhttp_del_accept_socket(h->http, h->listener);
    h->listener = NULL;
    (void)fd;
    (void)what;
}

/* Stopping, on the HTTP thread: connections with a reply still to deliver (one being answered, or
 * output not yet written to the socket, as to a client slow to read) go on until they are done or
 * stop_until passes; the others are shut down (nothing new is answered).  The loop ends with none left. */
static void stopping_cb(evutil_socket_t fd, short what, void *arg)
{
    struct http_front *h = arg;
    conns_sweep(h, false); /* drop those evhttp has let go */
    bool delivering = false;
    for (int i = 0; i < h->n_conns; i++) {
        struct hconn *c = &h->conns[i];
        evutil_socket_t cfd = bufferevent_getfd(c->bev);
        if (c->closing || cfd < 0)
            continue;
        if (c->busy || evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
            delivering = true;
        } else {
            shutdown(cfd, SHUT_RDWR); /* evhttp reads the end and lets the connection go */
            c->closing = true;
        }
    }
    if (!delivering || moe_now() >= h->stop_until ||
        event_base_once(h->base, -1, EV_TIMEOUT, stopping_cb, h, &(struct timeval){ 0, 10000 }) != 0)
        event_base_loopexit(h->base, NULL);
    (void)fd;
    (void)what;
}

void srv_http_stop(struct http_front *h, double until)
{
    if (!h)
        return;
    h->stop_until = until; /* read on the HTTP thread after event_base_once (libevent's lock orders them) */
    /* Refuse new connections first, and give the loop a moment to answer (503, draining) what it
     * has already read, so a request that raced the exit gets a reply rather than a closed socket;
     * then the replies still going out may reach their clients until `until` (stopping_cb). */
    if (event_base_once(h->base, -1, EV_TIMEOUT, close_listener_cb, h, &(struct timeval){ 0, 0 }) != 0 ||
        event_base_once(h->base, -1, EV_TIMEOUT, stopping_cb, h, &(struct timeval){ 0, 50000 }) != 0)
        event_base_loopexit(h->base, NULL);
    pthread_join(h->thread, NULL);
    evhttp_free(h->http); /* closes connections: their close callbacks abandon what is left */
    for (int i = 0; i < h->n_conns; i++)
        bufferevent_decref(h->conns[i].bev);
    free(h->conns);
    for (int i = 0; i < h->n_kept; i++) {
        json_decref(h->kept[i].object);
        json_decref(h->kept[i].conversation);
    }
    free(h->kept);
    event_free(h->sweep_ev);
    event_free(h->over_ev);
    event_free(h->wake_ev);
    event_base_free(h->base);
    srv_inbox_free(&h->inbox);
    free(h);
}
