/* Serving metrics in Prometheus text format, vLLM-style names with the
 * "moeflow:" prefix.  Observations come from any thread (scheduler callbacks,
 * front ends); one mutex guards them.  Counters that the scheduler owns
 * (accepted, completed, ...) are read from moe_sched_stats at render time. */
#ifndef MOE_SERVER_METRICS_H
#define MOE_SERVER_METRICS_H

#include <pthread.h>
#include <stdint.h>

#include "../common/moe.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_HIST_BUCKETS 16

struct moe_hist {
    const double *le;          /* [MOE_HIST_BUCKETS] upper bounds, seconds */
    uint64_t count[MOE_HIST_BUCKETS + 1]; /* per bucket, last = +Inf (not cumulative) */
    double sum;                /* seconds */
    uint64_t n;
};

struct moe_metrics {
    pthread_mutex_t mu;
    struct moe_hist ttft;      /* submit -> first token, seconds */
    struct moe_hist itl;       /* between consecutive tokens of a request, seconds */
    struct moe_hist e2e;       /* submit -> terminal status, seconds */
    uint64_t rejected_invalid; /* refused before admission: bad field, too long (a prompt, a body, a message) */
    uint64_t rejected_busy;    /* refused by the scheduler: queue or token bound */
    uint64_t rejected_draining;/* refused while draining */
    uint64_t rejected_loading; /* refused while the model loads */
    uint64_t rejected_memory;  /* refused out of memory before admission (its copy, prompts, generation) */
    uint64_t rejected_damaged; /* refused as the model's files are damaged (srv_files_damaged) */
    uint64_t http_requests, grpc_calls; /* front-end traffic (all endpoints) */
    uint64_t http_connections;          /* HTTP connections open now */
    uint64_t http_closed_limit;         /* ... refused: max-http-connections were open */
    uint64_t http_closed_timeout;       /* ... closed: no whole request within http-read-timeout */
};

void moe_metrics_init(struct moe_metrics *m);
void moe_metrics_free(struct moe_metrics *m);
void moe_metrics_observe(struct moe_metrics *m, struct moe_hist *h, double seconds);
void moe_metrics_count(struct moe_metrics *m, uint64_t *counter, uint64_t n);

/* Growable text buffer for rendering. */
struct moe_strbuf {
    char *s;
    size_t len, cap;
    bool oom;
};
void moe_strbuf_printf(struct moe_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append p[0..n) as it is, NUL bytes included (a "%.*s" stops at the first). */
void moe_strbuf_add(struct moe_strbuf *b, const char *p, size_t n);
void moe_strbuf_free(struct moe_strbuf *b);

/* Append one histogram in Prometheus exposition format. */
void moe_metrics_render_hist(struct moe_strbuf *b, const char *name, const char *help,
                             const struct moe_hist *h, const char *labels);
/* Append the front-end metrics (histograms and rejections). */
void moe_metrics_render(struct moe_metrics *m, struct moe_strbuf *b, const char *model_label);

#ifdef __cplusplus
}
#endif
#endif
