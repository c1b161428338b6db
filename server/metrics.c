/* Prometheus histograms and counters of the serving front ends. */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double lat_buckets[MOE_HIST_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
};

void moe_metrics_init(struct moe_metrics *m)
{
    memset(m, 0, sizeof(*m));
    pthread_mutex_init(&m->mu, NULL);
    m->ttft.le = m->itl.le = m->e2e.le = lat_buckets;
}

void moe_metrics_free(struct moe_metrics *m) { pthread_mutex_destroy(&m->mu); }

void moe_metrics_observe(struct moe_metrics *m, struct moe_hist *h, double seconds)
{
    pthread_mutex_lock(&m->mu);
    int i = 0;
    while (i < MOE_HIST_BUCKETS && seconds > h->le[i])
        i++;
    h->count[i]++;
    h->sum += seconds;
    h->n++;
    pthread_mutex_unlock(&m->mu);
}

void moe_metrics_count(struct moe_metrics *m, uint64_t *counter, uint64_t n)
{
    pthread_mutex_lock(&m->mu);
    *counter += n;
    pthread_mutex_unlock(&m->mu);
}

void moe_strbuf_printf(struct moe_strbuf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->len;
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if (b->s && (size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        if (!moe_grow((void **)&b->s, &b->cap, b->len + (size_t)n + 1, 1, 4096)) {
            b->oom = true;
            return;
        }
    }
}

void moe_strbuf_add(struct moe_strbuf *b, const char *p, size_t n)
{
    if (b->oom)
        return;
    if (!moe_grow((void **)&b->s, &b->cap, b->len + n + 1, 1, 4096)) {
        b->oom = true;
        return;
    }
    memcpy(b->s + b->len, p, n);
    b->len += n;
    b->s[b->len] = 0;
}

void moe_strbuf_free(struct moe_strbuf *b)
{
    free(b->s);
    memset(b, 0, sizeof(*b));
}

void moe_metrics_render_hist(struct moe_strbuf *b, const char *name, const char *help,
                             const struct moe_hist *h, const char *labels)
{
    moe_strbuf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (int i = 0; i < MOE_HIST_BUCKETS; i++) {
        cum += h->count[i];
        moe_strbuf_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, h->le[i],
                          (unsigned long long)cum);
    }
    cum += h->count[MOE_HIST_BUCKETS];
    moe_strbuf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                      (unsigned long long)cum);
    moe_strbuf_printf(b, "%s_sum{%s} %.9g\n%s_count{%s} %llu\n", name, labels, h->sum, name, labels,
                      (unsigned long long)h->n);
}

void moe_metrics_render(struct moe_metrics *m, struct moe_strbuf *b, const char *model_label)
{
    pthread_mutex_lock(&m->mu);
    moe_metrics_render_hist(b, "moeflow:time_to_first_token_seconds",
                            "Seconds from admission to the first generated token.", &m->ttft,
                            model_label);
    moe_metrics_render_hist(b, "moeflow:time_per_output_token_seconds",
                            "Seconds between consecutive generated tokens of a request.", &m->itl,
                            model_label);
    moe_metrics_render_hist(b, "moeflow:e2e_request_latency_seconds",
                            "Seconds from admission to the terminal status of a request.", &m->e2e,
                            model_label);
    moe_strbuf_printf(b, "# HELP moeflow:request_rejected_total Requests refused before admission, by reason.\n"
                         "# TYPE moeflow:request_rejected_total counter\n");
    moe_strbuf_printf(b, "moeflow:request_rejected_total{%s,reason=\"invalid\"} %llu\n", model_label,
                      (unsigned long long)m->rejected_invalid);
    moe_strbuf_printf(b, "moeflow:request_rejected_total{%s,reason=\"busy\"} %llu\n", model_label,
                      (unsigned long long)m->rejected_busy);
    moe_strbuf_printf(b, "moeflow:request_rejected_total{%s,reason=\"draining\"} %llu\n", model_label,
                      (unsigned long long)m->rejected_draining);
    moe_strbuf_printf(b, "moeflow:request_rejected_total{%s,reason=\"loading\"} %llu\n", model_label,
                      (unsigned long long)m->rejected_loading);
    moe_strbuf_printf(b, "moeflow:request_rejected_total{%s,reason=\"memory\"} %llu\n", model_label,
                      (unsigned long long)m->rejected_memory);
    moe_strbuf_printf(b, "moeflow:request_rejected_total{%s,reason=\"damaged\"} %llu\n", model_label,
                      (unsigned long long)m->rejected_damaged);
    moe_strbuf_printf(b, "# HELP moeflow:http_connections HTTP connections open now.\n"
                         "# TYPE moeflow:http_connections gauge\nmoeflow:http_connections{%s} %llu\n"
                         "# HELP moeflow:http_connections_closed_total HTTP connections the server closed, by reason.\n"
                         "# TYPE moeflow:http_connections_closed_total counter\n"
                         "moeflow:http_connections_closed_total{%s,reason=\"limit\"} %llu\n"
                         "moeflow:http_connections_closed_total{%s,reason=\"read_timeout\"} %llu\n",
                      model_label, (unsigned long long)m->http_connections, model_label,
                      (unsigned long long)m->http_closed_limit, model_label,
                      (unsigned long long)m->http_closed_timeout);
    moe_strbuf_printf(b, "# HELP moeflow:http_requests_total HTTP requests received, every endpoint.\n"
                         "# TYPE moeflow:http_requests_total counter\nmoeflow:http_requests_total{%s} %llu\n"
                         "# HELP moeflow:grpc_calls_total gRPC calls received, every method.\n"
                         "# TYPE moeflow:grpc_calls_total counter\nmoeflow:grpc_calls_total{%s} %llu\n",
                      model_label, (unsigned long long)m->http_requests, model_label,
                      (unsigned long long)m->grpc_calls);
    pthread_mutex_unlock(&m->mu);
}
