/* A small fixed thread pool: cpu_pool_run() hands one function to every
 * worker and waits for all of them.  Work is split by the caller in a way that
 * never changes per-element arithmetic, so results do not depend on the
 * number of threads. */
#include "cpu_internal.h"

#include <pthread.h>
#include <stdlib.h>

struct cpu_pool {
    int n;                      /* threads including the caller */
    pthread_t *th;              /* [n - 1] workers */
    pthread_mutex_t mu;
    pthread_cond_t cv_go, cv_done;
    uint64_t gen;               /* bumped for every run */
    int pending;                /* workers still running the current job */
    bool stop;
    bool busy;                  /* a run is in progress (nested runs go inline) */
    void (*fn)(void *, int, int);
    void *arg;
};

struct worker_arg {
    struct cpu_pool *p;
    int tid;
};

static void *worker_main(void *a)
{
    struct worker_arg wa = *(struct worker_arg *)a;
    struct cpu_pool *p = wa.p;
    free(a);
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->gen == seen)
            pthread_cond_wait(&p->cv_go, &p->mu);
        if (p->stop) break;
        seen = p->gen;
        void (*fn)(void *, int, int) = p->fn;
        void *arg = p->arg;
        pthread_mutex_unlock(&p->mu);
        fn(arg, wa.tid, p->n);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->cv_done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

struct cpu_pool *cpu_pool_create(int n_threads)
{
    if (n_threads < 1) n_threads = 1;
    struct cpu_pool *p = calloc(1, sizeof(*p));
    if (!p) goto out_nomem;
    p->n = n_threads;
    if (pthread_mutex_init(&p->mu, NULL)) goto out_free;
    if (pthread_cond_init(&p->cv_go, NULL)) goto out_mu;
    if (pthread_cond_init(&p->cv_done, NULL)) goto out_go;
    if (n_threads > 1) {
        p->th = calloc((size_t)n_threads - 1, sizeof(pthread_t));
        if (!p->th) goto out_done;
    }
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *wa = malloc(sizeof(*wa));
        if (wa) {
            wa->p = p;
            wa->tid = i;
        }
        if (!wa || pthread_create(&p->th[i - 1], NULL, worker_main, wa)) {
            free(wa);
            p->n = i; /* threads 1..i-1 exist */
            cpu_pool_destroy(p);
            moe_errorf(MOE_ENOMEM, "cpu backend: cannot start worker thread %d of %d (lower n_threads)",
                       i, n_threads);
            return NULL;
        }
    }
    return p;
out_done:
    pthread_cond_destroy(&p->cv_done);
out_go:
    pthread_cond_destroy(&p->cv_go);
out_mu:
    pthread_mutex_destroy(&p->mu);
out_free:
    free(p);
out_nomem:
    moe_errorf(MOE_ENOMEM, "cpu backend: cannot create a pool of %d threads", n_threads);
    return NULL;
}

void cpu_pool_destroy(struct cpu_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cv_go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->th[i - 1], NULL);
    pthread_cond_destroy(&p->cv_done);
    pthread_cond_destroy(&p->cv_go);
    pthread_mutex_destroy(&p->mu);
    free(p->th);
    free(p);
}

int cpu_pool_size(const struct cpu_pool *p) { return p ? p->n : 1; }

void cpu_pool_run(struct cpu_pool *p, void (*fn)(void *arg, int tid, int nth), void *arg)
{
    if (!p || p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    if (p->busy) { /* nested: run inline on this thread */
        pthread_mutex_unlock(&p->mu);
        fn(arg, 0, 1);
        return;
    }
    p->busy = true;
    p->fn = fn;
    p->arg = arg;
    p->pending = p->n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->cv_go);
    pthread_mutex_unlock(&p->mu);

    fn(arg, 0, p->n);

    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->cv_done, &p->mu);
    p->busy = false;
    pthread_mutex_unlock(&p->mu);
}
