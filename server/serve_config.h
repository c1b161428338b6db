/* Configuration of `moeflow serve`: one table (name, type, default, min, max,
 * help) drives the command-line flags, the config file and --help.
 *
 * Config file: one `key = value` per line, keys spelled as the flags without
 * the leading dashes, `#` starts a comment.  Command-line flags override the
 * file.  Errors name the key, the value and the allowed range. */
#ifndef MOE_SERVE_CONFIG_H
#define MOE_SERVE_CONFIG_H

#include <stdio.h>

#include "../common/moe.h"
#include "../offload/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_serve_config {
    char model[4096];          /* model directory ("" = moe_default_model_dir()) */
    char host[256];            /* address both front ends bind */
    int grpc_port;             /* 0 = gRPC off */
    int http_port;             /* 0 = HTTP off */
    int threads;               /* BLAS threads of the engine */
    /* engine */
    int max_seqs;              /* KV cache slots */
    int max_ctx;               /* tokens per sequence, prompt + output (0 = model maximum) */
    int max_batch_tokens;      /* tokens per forward() */
    /* scheduler (struct moe_sched_params) */
    int max_running;           /* sequences decoding at once */
    int max_queued;            /* waiting requests; beyond -> RESOURCE_EXHAUSTED / 429 */
    long long max_tokens_in_flight; /* sum of prompt + max_tokens over accepted requests */
    int max_prompt;            /* tokens per prompt */
    int max_output;            /* max_tokens per request */
    int micro_batch;           /* sequences per forward() */
    int sample_threads;        /* threads sampling a micro-batch's rows (0 = the CPUs, up to 8) */
    int prefill_chunk;         /* prompt tokens per forward() per sequence */
    char grouping[16];         /* "fcfs" or "regroup" */
    int aging_steps;           /* steps per priority level gained while waiting (0 = default) */
    int lookahead;             /* micro-batches ahead prefetched (0 = default 1, -1 = none) */
    double path_decay;         /* routing-history decay for regrouping without a predictor */
    int prefix_cache;          /* 1: a request reuses the cache of a finished one that began alike */
    /* routing-path predictor (predictor/predictor.h) */
    char predictor[4200];      /* --predictor spec ("none", "gate", "path[:FILE]", ...) */
    double prefetch_min_score; /* prefetch experts scored at least this (0 = default) */
    int prefetch_max_per_layer;/* at most this many per layer (0 = top_k) */
    int prefetch;              /* 1: predictions prefetch experts; 0: they only rank evictions */
    /* expert cache tiers (offload/runtime.h flags, same names) */
    struct moe_offload_opts offload;
    char store_path[4096];     /* storage behind offload.store */
    char offload_args[8][64];  /* storage behind the other offload values */
    /* requests */
    int default_max_tokens;    /* when a request gives none */
    double request_timeout;    /* seconds; default deadline of a request (0 = none) */
    /* limits */
    int max_body_bytes;        /* HTTP request body */
    int max_http_connections;  /* HTTP connections open at once; more are answered 503 and closed */
    int responses_store;       /* /v1/responses kept in memory (the newest), 0 = none */
    double http_read_timeout;  /* seconds a connection has to send a whole request (after opening or
                                  after its previous reply) before it is closed */
    int max_message_bytes;     /* gRPC message, either direction */
    int grpc_max_streams;      /* calls open at once on one gRPC connection (HTTP/2 streams) */
    /* lifecycle */
    double drain_timeout;      /* seconds SIGTERM waits for in-flight work */
    int warmup_tokens;         /* tokens generated before reporting ready (0 = no warm-up) */
    char model_name[128];      /* name served in APIs ("" = model directory's basename) */
    char chat_template[4096];  /* "auto", "markers" or a template file (chat prompts) */
    char reasoning_parser[16]; /* "none", or "think": chat replies' <think>...</think> become
                                  reasoning_content */
    char kv_dtype[8];          /* "f32" or "bf16": the KV cache's elements */
    char kv_cache_bytes[32];   /* "auto" (half the backend's free memory) or a byte count: with max-ctx 0,
                                  the context is cut so that max-seqs sequences' KV cache fits */
    /* browsers */
    char cors_origin[1024];    /* origins allowed to call the HTTP API from a web page: "*", or a
                                  comma-separated list of exact origins ("" = none, no CORS headers) */
};

enum moe_serve_opt_type {
    MOE_OPT_INT, MOE_OPT_I64, MOE_OPT_DOUBLE, MOE_OPT_STRING,
    MOE_OPT_OFFLOAD,           /* value handed to moe_offload_opts_parse(code) */
    MOE_OPT_OFFLOAD_FLAG,      /* switch: a flag without value, or true/false in the file */
};

struct moe_serve_opt {
    const char *name;          /* flag without "--", and config-file key */
    enum moe_serve_opt_type type;
    size_t offset;             /* into struct moe_serve_config */
    size_t size;               /* string capacity (MOE_OPT_STRING) */
    const char *def;           /* default, as text */
    double min, max;           /* numeric range (inclusive) */
    const char *help;
    int code;                  /* MOE_OPT_OFFLOAD*: the offload/runtime.h getopt value */
};

/* The table, terminated by an entry with name == NULL. */
const struct moe_serve_opt *moe_serve_opts(void);

/* Fill every field with its default. */
void moe_serve_config_defaults(struct moe_serve_config *c);
/* Set one key from text; errors name the key, the value and the range. */
enum moe_status moe_serve_config_set(struct moe_serve_config *c, const char *key, const char *value);
/* The option that key is the alternative of (gpu-experts and gpu-cache-bytes, host-experts and
 * host-cache-bytes), NULL when it has none; and that one unset in c, so that key given on the command
 * line takes the place of the config file's alternative. */
const char *moe_serve_config_alternative(const char *key);
void moe_serve_config_unset_alternative(struct moe_serve_config *c, const char *key);
/* Apply a config file (see above); errors name the file, line, key and value. */
enum moe_status moe_serve_config_load(struct moe_serve_config *c, const char *path);
/* The same over a config file's text (NUL-terminated; changed in place), name in the messages. */
enum moe_status moe_serve_config_parse(struct moe_serve_config *c, char *text, const char *name);
/* Cross-field checks (e.g. max_running <= max_seqs). */
enum moe_status moe_serve_config_check(const struct moe_serve_config *c);
/* Whether a browser request from origin (its Origin header, NULL when none) may be answered with
 * CORS headers under cors-origin list ("" = no origin, "*" = any). */
bool moe_serve_cors_allows(const char *list, const char *origin);
/* max-running in effect: the option, or 16 (at most max-seqs) when it is 0. */
int moe_serve_max_running(const struct moe_serve_config *c);
/* One line per option: flag, type, default, range, help. */
void moe_serve_config_help(FILE *f);

#ifdef __cplusplus
}
#endif
#endif
