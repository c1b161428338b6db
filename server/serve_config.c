/* The serve option table, its parser and its help text. */
#include "serve_config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define OFF(f) offsetof(struct moe_serve_config, f)
#define SZ(f) sizeof(((struct moe_serve_config *)0)->f)

static const struct moe_serve_opt opts[] = {
    { "model", MOE_OPT_STRING, OFF(model), SZ(model), "", 0, 0,
      "model directory (default: the bundled model, or $MOEFLOW_MODEL)" },
    { "model-name", MOE_OPT_STRING, OFF(model_name), SZ(model_name), "", 0, 0,
      "model name served by the APIs (default: the model directory's name)" },
    { "host", MOE_OPT_STRING, OFF(host), SZ(host), "127.0.0.1", 0, 0,
      "address the gRPC and HTTP listeners bind" },
    { "grpc-port", MOE_OPT_INT, OFF(grpc_port), 0, "50051", 0, 65535, "gRPC port (0 = off)" },
    { "http-port", MOE_OPT_INT, OFF(http_port), 0, "8000", 0, 65535, "HTTP port (0 = off)" },
    { "threads", MOE_OPT_INT, OFF(threads), 0, "1", 1, 256, "BLAS threads of the engine" },
    { "max-seqs", MOE_OPT_INT, OFF(max_seqs), 0, "32", 1, 4096, "KV cache slots (sequences)" },
    { "max-ctx", MOE_OPT_INT, OFF(max_ctx), 0, "0", 0, 1 << 20,
      "tokens per sequence, prompt + output (0 = the model's maximum)" },
    { "max-batch-tokens", MOE_OPT_INT, OFF(max_batch_tokens), 0, "512", 1, 1 << 16,
      "tokens per forward pass" },
    { "max-running", MOE_OPT_INT, OFF(max_running), 0, "16", 1, 4096,
      "sequences decoding at once (<= max-seqs)" },
    { "max-queued", MOE_OPT_INT, OFF(max_queued), 0, "64", 0, 1 << 20,
      "waiting requests; more are refused at once (RESOURCE_EXHAUSTED / HTTP 429)" },
    { "max-tokens-in-flight", MOE_OPT_I64, OFF(max_tokens_in_flight), 0, "1048576", 1, 1e12,
      "sum of prompt + max_tokens over accepted requests" },
    { "max-prompt", MOE_OPT_INT, OFF(max_prompt), 0, "0", 0, 1 << 20,
      "tokens per prompt (0 = context - 1)" },
    { "max-output", MOE_OPT_INT, OFF(max_output), 0, "0", 0, 1 << 20,
      "most tokens one request may ask for, max_tokens (0 = context - 1)" },
    { "micro-batch", MOE_OPT_INT, OFF(micro_batch), 0, "16", 1, 4096, "sequences per forward pass" },
    { "prefill-chunk", MOE_OPT_INT, OFF(prefill_chunk), 0, "128", 1, 1 << 16,
      "prompt tokens per forward pass per sequence" },
    { "grouping", MOE_OPT_STRING, OFF(grouping), SZ(grouping), "fcfs", 0, 0,
      "micro-batch grouping: fcfs or regroup (token regrouping by experts)" },
    { "default-max-tokens", MOE_OPT_INT, OFF(default_max_tokens), 0, "16", 1, 1 << 20,
      "max_tokens of a request that gives none" },
    { "request-timeout", MOE_OPT_DOUBLE, OFF(request_timeout), 0, "0", 0, 86400,
      "seconds; default deadline of a request (0 = none)" },
    { "max-body-bytes", MOE_OPT_INT, OFF(max_body_bytes), 0, "1048576", 256, 1 << 30,
      "largest HTTP request body (413 beyond)" },
    { "max-message-bytes", MOE_OPT_INT, OFF(max_message_bytes), 0, "1048576", 256, 1 << 30,
      "largest gRPC message (RESOURCE_EXHAUSTED beyond)" },
    { "drain-timeout", MOE_OPT_DOUBLE, OFF(drain_timeout), 0, "30", 0, 86400,
      "seconds SIGTERM waits for in-flight requests before cancelling them" },
    { "warmup-tokens", MOE_OPT_INT, OFF(warmup_tokens), 0, "2", 0, 1024,
      "tokens generated at start-up before readiness turns on (0 = none)" },
    { NULL, 0, 0, 0, NULL, 0, 0, NULL },
};

const struct moe_serve_opt *moe_serve_opts(void) { return opts; }

static const struct moe_serve_opt *find_opt(const char *key)
{
    for (const struct moe_serve_opt *o = opts; o->name; o++)
        if (!strcmp(o->name, key))
            return o;
    /* Accept underscores for dashes in config files. */
    char k[64];
    size_t n = strlen(key);
    if (n >= sizeof(k))
        return NULL;
    for (size_t i = 0; i <= n; i++)
        k[i] = key[i] == '_' ? '-' : key[i];
    for (const struct moe_serve_opt *o = opts; o->name; o++)
        if (!strcmp(o->name, k))
            return o;
    return NULL;
}

static enum moe_status set_opt(struct moe_serve_config *c, const struct moe_serve_opt *o,
                               const char *value)
{
    char *base = (char *)c + o->offset;
    if (o->type == MOE_OPT_STRING) {
        if (strlen(value) >= o->size)
            return moe_errorf(MOE_EINVAL, "%s: value '%.64s...' is too long (at most %zu bytes)",
                              o->name, value, o->size - 1);
        memcpy(base, value, strlen(value) + 1);
        if (!strcmp(o->name, "grouping") && strcmp(value, "fcfs") && strcmp(value, "regroup"))
            return moe_errorf(MOE_EINVAL, "grouping: '%s' is not one of fcfs, regroup", value);
        return MOE_OK;
    }
    char *end = NULL;
    errno = 0;
    double v;
    long long iv = 0;
    if (o->type == MOE_OPT_DOUBLE) {
        v = strtod(value, &end);
    } else {
        iv = strtoll(value, &end, 10);
        v = (double)iv;
    }
    while (end && isspace((unsigned char)*end))
        end++;
    if (!*value || !end || *end || errno == ERANGE || !isfinite(v))
        return moe_errorf(MOE_EINVAL, "%s: '%s' is not a %s", o->name, value,
                          o->type == MOE_OPT_DOUBLE ? "number" : "whole number");
    if (v < o->min || v > o->max)
        return moe_errorf(MOE_ERANGE, "%s: %s is outside [%.15g, %.15g]", o->name, value, o->min,
                          o->max);
    switch (o->type) {
    case MOE_OPT_INT: *(int *)base = (int)iv; break;
    case MOE_OPT_I64: *(long long *)base = iv; break;
    case MOE_OPT_DOUBLE: *(double *)base = v; break;
    case MOE_OPT_STRING: break;
    }
    return MOE_OK;
}

void moe_serve_config_defaults(struct moe_serve_config *c)
{
    memset(c, 0, sizeof(*c));
    for (const struct moe_serve_opt *o = opts; o->name; o++)
        if (set_opt(c, o, o->def) != MOE_OK)
            MOE_ERR("serve option table: bad default of %s", o->name);
}

enum moe_status moe_serve_config_set(struct moe_serve_config *c, const char *key, const char *value)
{
    const struct moe_serve_opt *o = find_opt(key);
    if (!o)
        return moe_errorf(MOE_EINVAL, "unknown option '%s' (see moeflow serve --help)", key);
    return set_opt(c, o, value);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = 0;
    return s;
}

enum moe_status moe_serve_config_load(struct moe_serve_config *c, const char *path)
{
    char *text = NULL;
    size_t len = 0;
    enum moe_status st = moe_read_file(path, &text, &len, 1 << 20);
    if (st != MOE_OK)
        return moe_error_prefix(st, "config file %s", path);
    int lineno = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            st = moe_errorf(MOE_EINVAL, "%s:%d: expected 'key = value', got '%.80s'", path, lineno, s);
            goto out;
        }
        *eq = 0;
        char *key = trim(s), *val = trim(eq + 1);
        size_t vn = strlen(val);
        if (vn >= 2 && val[0] == '"' && val[vn - 1] == '"') {
            val[vn - 1] = 0;
            val++;
        }
        st = moe_serve_config_set(c, key, val);
        if (st != MOE_OK) {
            moe_error_prefix(st, "%s:%d", path, lineno);
            goto out;
        }
    }
out:
    free(text);
    return st;
}

enum moe_status moe_serve_config_check(const struct moe_serve_config *c)
{
    if (c->max_running > c->max_seqs)
        return moe_errorf(MOE_EINVAL, "max-running %d exceeds max-seqs %d: raise max-seqs",
                          c->max_running, c->max_seqs);
    if (c->micro_batch > c->max_running)
        return moe_errorf(MOE_EINVAL, "micro-batch %d exceeds max-running %d", c->micro_batch,
                          c->max_running);
    if (c->max_output && c->default_max_tokens > c->max_output)
        return moe_errorf(MOE_EINVAL, "default-max-tokens %d exceeds max-output %d",
                          c->default_max_tokens, c->max_output);
    if (c->grpc_port && c->grpc_port == c->http_port)
        return moe_errorf(MOE_EINVAL, "grpc-port and http-port are both %d", c->grpc_port);
    return MOE_OK;
}

void moe_serve_config_help(FILE *f)
{
    static const char *tn[] = { "INT", "INT", "SECONDS", "TEXT" };
    for (const struct moe_serve_opt *o = opts; o->name; o++) {
        char flag[64], range[64] = "";
        snprintf(flag, sizeof(flag), "--%s %s", o->name, tn[o->type]);
        if (o->type != MOE_OPT_STRING)
            snprintf(range, sizeof(range), ", range %.15g..%.15g", o->min, o->max);
        fprintf(f, "  %-32s %s (default %s%s)\n", flag, o->help, o->def[0] ? o->def : "\"\"",
                range);
    }
}
