/* Event collection for scheduler tests: one record per request. */
#ifndef TEST_SCHED_COLLECT_H
#define TEST_SCHED_COLLECT_H

#include "scheduler/scheduler.h"

#include <pthread.h>

#define SC_MAX_TOK 512

struct sc_req {
    uint64_t id;
    int tokens[SC_MAX_TOK];
    int n_tokens;              /* on_token calls */
    int n_done;                /* on_done calls: must end at exactly 1 */
    enum moe_finish why;
    enum moe_status st;
    char msg[256];
    int n_prompt, n_generated; /* as reported by on_done */
    int n_cached;              /* ... of them from a cached prefix */
    int tokens_after_done;     /* on_token calls after on_done (must be 0) */
    pthread_mutex_t *mu;       /* NULL or a lock guarding the record */
};

static void sc_on_token(void *ud, uint64_t id, int token)
{
    struct sc_req *r = ud;
    if (r->mu) pthread_mutex_lock(r->mu);
    if (r->n_done)
        r->tokens_after_done++;
    if (r->n_tokens < SC_MAX_TOK)
        r->tokens[r->n_tokens] = token;
    r->n_tokens++;
    (void)id;
    if (r->mu) pthread_mutex_unlock(r->mu);
}

static void sc_on_done(void *ud, uint64_t id, const struct moe_sched_result *res)
{
    struct sc_req *r = ud;
    if (r->mu) pthread_mutex_lock(r->mu);
    r->n_done++;
    r->why = res->why;
    r->st = res->st;
    snprintf(r->msg, sizeof(r->msg), "%s", res->msg ? res->msg : "");
    r->n_prompt = res->n_prompt;
    r->n_generated = res->n_generated;
    r->n_cached = res->n_cached;
    (void)id;
    if (r->mu) pthread_mutex_unlock(r->mu);
}

static const struct moe_sched_events sc_events = { .on_token = sc_on_token, .on_done = sc_on_done };

#endif
