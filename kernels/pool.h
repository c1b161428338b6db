/* A small fixed thread pool (kernels/cpu/pool.c): cpu_pool_run() hands one
 * function to every worker and waits for all of them; the calling thread is
 * worker 0.  Used by the CPU backend's kernels and by the scheduler to sample
 * a micro-batch's rows. */
#ifndef MOE_POOL_H
#define MOE_POOL_H

#ifdef __cplusplus
extern "C" {
#endif

struct cpu_pool;

struct cpu_pool *cpu_pool_create(int n_threads); /* NULL with moe_last_error() on failure */
void cpu_pool_destroy(struct cpu_pool *p);
int cpu_pool_size(const struct cpu_pool *p);     /* 1 for a NULL pool */
/* Run fn(arg, tid, nth) for tid = 0..nth-1 concurrently and wait for all.
 * A NULL pool, or a call from inside a task, runs fn(arg, 0, 1) inline. */
void cpu_pool_run(struct cpu_pool *p, void (*fn)(void *arg, int tid, int nth), void *arg);

#ifdef __cplusplus
}
#endif
#endif
