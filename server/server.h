/* moeflow serving: loads a model, warms it up, and serves it over gRPC
 * (moeflow.v1.Generation, KServe v2 inference.GRPCInferenceService,
 * grpc.health.v1.Health) and HTTP (OpenAI-compatible completions, health,
 * readiness, Prometheus metrics) until SIGTERM or SIGINT, then drains. */
#ifndef MOE_SERVER_H
#define MOE_SERVER_H

#include "../common/moe.h"
#include "serve_config.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_server;
struct moe_pred_spec;

/* A server for cfg and its predictor, pred (cfg->predictor as moe_pred_spec_parse read it; nothing
 * loaded yet).  NULL with moe_last_error() set. */
struct moe_server *moe_server_create(const struct moe_serve_config *cfg, const struct moe_pred_spec *pred);
/* Open the listeners (health and /ready say "not ready"), load the model,
 * create engine and scheduler, warm up, report ready, serve until
 * SIGTERM/SIGINT, then stop admission, turn readiness off, finish in-flight
 * work within drain-timeout and close.  Errors (bind, load) return with
 * moe_last_error() set. */
enum moe_status moe_server_run(struct moe_server *s);
void moe_server_destroy(struct moe_server *s);
/* Block SIGTERM and SIGINT (moe_server_run takes them with sigwait) and
 * ignore SIGPIPE; call on the thread that calls moe_server_run, before any
 * thread of the server starts (threads inherit the mask) and before loading
 * (a signal during loading then waits for run). */
void moe_server_block_signals(void);

#ifdef __cplusplus
}
#endif
#endif
