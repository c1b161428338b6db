/* The serve option table, its parser and its help text. */
#include "serve_config.h"
#include "../engine/engine.h"
#include "../kernels/backend.h"
#include "../offload/policy.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define OFF(f) offsetof(struct moe_serve_config, f)
#define SZ(f) sizeof(((struct moe_serve_config *)0)->f)

static const struct moe_serve_opt opts[] = {
    { "model", MOE_OPT_STRING, OFF(model), SZ(model), "", 0, 0,
      "model directory (default: the bundled model, or $MOEFLOW_MODEL)", 0 },
    { "model-name", MOE_OPT_STRING, OFF(model_name), SZ(model_name), "", 0, 0,
      "model name served by the APIs (default: the model directory's name)", 0 },
    { "host", MOE_OPT_STRING, OFF(host), SZ(host), "127.0.0.1", 0, 0,
      "address the gRPC and HTTP listeners bind", 0 },
    { "grpc-port", MOE_OPT_INT, OFF(grpc_port), 0, "50051", 0, 65535, "gRPC port (0 = off)", 0 },
    { "http-port", MOE_OPT_INT, OFF(http_port), 0, "8000", 0, 65535, "HTTP port (0 = off)", 0 },
    { "threads", MOE_OPT_INT, OFF(threads), 0, "1", 1, MOE_CPU_MAX_THREADS,
      "threads of the CPU backend's pool (GEMMs, attention; outputs do not depend on it; above 1 refused with "
      "--backend cuda)", 0 },
    { "max-seqs", MOE_OPT_INT, OFF(max_seqs), 0, "32", 1, 4096, "KV cache slots (sequences)", 0 },
    { "max-ctx", MOE_OPT_INT, OFF(max_ctx), 0, "0", 0, 1 << 20,
      "tokens per sequence, prompt + output (0 = the model's maximum; more is refused)", 0 },
    { "max-batch-tokens", MOE_OPT_INT, OFF(max_batch_tokens), 0, "512", 1, 1 << 16,
      "tokens per forward pass", 0 },
    { "max-running", MOE_OPT_INT, OFF(max_running), 0, "0", 0, 4096,
      "sequences decoding at once, <= max-seqs (0 = 16, or max-seqs when smaller)", 0 },
    { "max-queued", MOE_OPT_INT, OFF(max_queued), 0, "64", 1, 1 << 20,
      "waiting requests, including those about to start; more are refused at once "
      "(RESOURCE_EXHAUSTED / HTTP 429)", 0 },
    { "max-tokens-in-flight", MOE_OPT_I64, OFF(max_tokens_in_flight), 0, "1048576", 1, 1e12,
      "sum of prompt + max_tokens over accepted requests", 0 },
    { "max-prompt", MOE_OPT_INT, OFF(max_prompt), 0, "0", 0, 1 << 20,
      "tokens per prompt (0 = context - 1)", 0 },
    { "max-output", MOE_OPT_INT, OFF(max_output), 0, "0", 0, 1 << 20,
      "most tokens one request may ask for, max_tokens (0 = context - 1)", 0 },
    { "micro-batch", MOE_OPT_INT, OFF(micro_batch), 0, "0", 0, 4096,
      "sequences per forward pass (0 = max-running)", 0 },
    { "sample-threads", MOE_OPT_INT, OFF(sample_threads), 0, "0", 0, 64,
      "threads that sample a micro-batch's sequences (0 = the CPUs, up to 8); outputs do not depend on it", 0 },
    { "prefill-chunk", MOE_OPT_INT, OFF(prefill_chunk), 0, "128", 1, 1 << 16,
      "prompt tokens per forward pass per sequence", 0 },
    { "grouping", MOE_OPT_STRING, OFF(grouping), SZ(grouping), "fcfs", 0, 0,
      "micro-batch grouping: fcfs or regroup (token regrouping by experts)", 0 },
    { "aging-steps", MOE_OPT_INT, OFF(aging_steps), 0, "0", 0, 1 << 20,
      "a waiting request gains one priority level per this many steps, and a prompt passed over this "
      "many steps in a row gets the next prompt chunk (0 = 64)", 0 },
    { "lookahead", MOE_OPT_INT, OFF(lookahead), 0, "1", 0, 64,
      "micro-batches ahead whose predicted experts are prefetched (0 = none)", 0 },
    { "prefix-cache", MOE_OPT_INT, OFF(prefix_cache), 0, "1", 0, 1,
      "1: a request starts from the KV cache a finished request left in its sequence slot, for as many "
      "leading prompt tokens as they share (repeated system prompts, chat turns); 0: every prompt is "
      "computed whole", 0 },
    { "path-decay", MOE_OPT_DOUBLE, OFF(path_decay), 0, "0", 0, 0.999,
      "regroup on routing history weighted decay^age when no predictor (0 = last token only)", 0 },
    { "predictor", MOE_OPT_STRING, OFF(predictor), SZ(predictor), "none", 0, 0,
      "routing-path predictor: none, gate[:D], path[:FILE], history, path+gate[:FILE], auto (path+gate "
      "with the model's predictor.safetensors, else gate)", 0 },
    { "prefetch-min-score", MOE_OPT_DOUBLE, OFF(prefetch_min_score), 0, "0", 0, 1,
      "prefetch predicted experts scored at least this (0 = 0.8)", 0 },
    { "prefetch-max-per-layer", MOE_OPT_INT, OFF(prefetch_max_per_layer), 0, "0", 0, 4096,
      "prefetch at most this many experts per layer and prediction (0 = top_k)", 0 },
    { "prefetch", MOE_OPT_INT, OFF(prefetch), 0, "1", 0, 1,
      "1: predictions prefetch experts; 0: they only rank evictions (policy predicted)", 0 },
    { "backend", MOE_OPT_OFFLOAD, 0, 0, "cpu", 0, 0,
      "compute backend: cpu or cuda (GPU 0; gpu-experts sizes its expert tier)", MOE_OPT_BACKEND },
    { "store", MOE_OPT_OFFLOAD, 0, 0, "", 0, 0,
      "packed expert store (moeflow pack) as the lowest tier; default: the safetensors", MOE_OPT_STORE },
    { "gpu-experts", MOE_OPT_OFFLOAD, 0, 0, "", 0, 0,
      "expert slots of the device tier (unset = all experts resident)", MOE_OPT_GPU_EXPERTS },
    { "gpu-cache-bytes", MOE_OPT_OFFLOAD, 0, 0, "", 0, 0,
      "device tier size in bytes (alternative to gpu-experts)", MOE_OPT_GPU_BYTES },
    { "host-experts", MOE_OPT_OFFLOAD, 0, 0, "", 0, 0,
      "expert records of the host tier (default: as many as the device slots)", MOE_OPT_HOST_EXPERTS },
    { "host-cache-bytes", MOE_OPT_OFFLOAD, 0, 0, "", 0, 0,
      "host tier size in bytes (alternative to host-experts)", MOE_OPT_HOST_BYTES },
    { "policy", MOE_OPT_OFFLOAD, 0, 0, "predicted", 0, 0,
      "device tier eviction: predicted (farthest predicted next use, from the predictor's hints and the "
      "routing seen), lru or lfu", MOE_OPT_POLICY },
    { "queue-depth", MOE_OPT_OFFLOAD, 0, 0, "", 0, 0, "io_uring queue depth (default 32)",
      MOE_OPT_QUEUE_DEPTH },
    { "no-io-uring", MOE_OPT_OFFLOAD_FLAG, 0, 0, "", 0, 0,
      "read the store with pread instead of io_uring (config file: true/false)", MOE_OPT_NO_IO_URING },
    { "default-max-tokens", MOE_OPT_INT, OFF(default_max_tokens), 0, "0", 0, 1 << 20,
      "max_tokens of a request that gives none (0 = 16, or max-output when smaller, and chat requests "
      "run to max-output, the end of the context or max-tokens-in-flight)", 0 },
    { "request-timeout", MOE_OPT_DOUBLE, OFF(request_timeout), 0, "0", 0, 86400,
      "seconds; default deadline of a request (0 = none)", 0 },
    { "max-http-connections", MOE_OPT_INT, OFF(max_http_connections), 0, "4096", 1, 1 << 20,
      "HTTP connections open at once; one more is answered 503 and closed", 0 },
    { "responses-store", MOE_OPT_INT, OFF(responses_store), 0, "256", 0, 65536,
      "responses of /v1/responses kept in memory for previous_response_id and GET /v1/responses/{id} "
      "(0 = none; the oldest is forgotten first)", 0 },
    { "http-read-timeout", MOE_OPT_DOUBLE, OFF(http_read_timeout), 0, "60", 0.1, 3600,
      "seconds an HTTP connection has to send a whole request, from its opening or its previous reply; "
      "then it is closed (slow or idle clients)", 0 },
    { "max-body-bytes", MOE_OPT_INT, OFF(max_body_bytes), 0, "1048576", 256, 1 << 30,
      "largest HTTP request body (413 beyond)", 0 },
    { "max-message-bytes", MOE_OPT_INT, OFF(max_message_bytes), 0, "1048576", 256, 1 << 30,
      "largest gRPC message (RESOURCE_EXHAUSTED beyond)", 0 },
    { "grpc-max-streams", MOE_OPT_INT, OFF(grpc_max_streams), 0, "256", 1, 1 << 20,
      "calls open at once on one gRPC connection; a client's further calls wait until one ends", 0 },
    { "drain-timeout", MOE_OPT_DOUBLE, OFF(drain_timeout), 0, "30", 0, 86400,
      "seconds SIGTERM waits for in-flight requests before cancelling them", 0 },
    { "warmup-tokens", MOE_OPT_INT, OFF(warmup_tokens), 0, "2", 0, 1024,
      "tokens generated at start-up before readiness turns on (0 = none)", 0 },
    { "chat-template", MOE_OPT_STRING, OFF(chat_template), SZ(chat_template), "auto", 0, 0,
      "how chat messages become a prompt: auto (the model's tokenizer_config.json chat_template, else "
      "markers), markers (moeflow's <|role|> lines), or a Jinja template file", 0 },
    { "kv-dtype", MOE_OPT_STRING, OFF(kv_dtype), SZ(kv_dtype), "f32", 0, 0,
      "KV cache elements: f32, or bf16 (half the memory; keys and values rounded to BF16 when stored)", 0 },
    { "kv-cache-bytes", MOE_OPT_STRING, OFF(kv_cache_bytes), SZ(kv_cache_bytes), "auto", 0, 0,
      "with max-ctx 0: the KV cache's size, in bytes (K/M/G/T suffix), or auto (half of the backend's free "
      "memory less the other weights); the context per sequence is the model's, cut so that max-seqs "
      "sequences fit", 0 },
    { "reasoning-parser", MOE_OPT_STRING, OFF(reasoning_parser), SZ(reasoning_parser), "none", 0, 0,
      "chat replies of reasoning models: none (all of it is content), or think (a leading <think>...</think>, "
      "or the reply up to </think> when the prompt ends in <think>, goes out as reasoning_content)", 0 },
    { "cors-origin", MOE_OPT_STRING, OFF(cors_origin), SZ(cors_origin), "", 0, 0,
      "web origins allowed to call the HTTP API from a browser (CORS): *, or a comma-separated list such "
      "as https://a.example,http://localhost:3000 (default: none)", 0 },
    { NULL, 0, 0, 0, NULL, 0, 0, NULL, 0 },
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

static enum moe_status set_offload(struct moe_serve_config *c, const struct moe_serve_opt *o,
                                   const char *value)
{
    if (o->type == MOE_OPT_OFFLOAD_FLAG) {
        if (!strcmp(value, "false") || !strcmp(value, "0"))
            return MOE_OK; /* off is the default; the runtime has no "off" value */
        if (strcmp(value, "true") && strcmp(value, "1"))
            return moe_errorf(MOE_EINVAL, "%s: '%s' is not true or false", o->name, value);
        if (moe_offload_opts_parse(&c->offload, o->code, NULL) < 0)
            return moe_error_prefix(MOE_EINVAL, "%s", o->name);
        return MOE_OK;
    }
    /* an unknown policy is told the ones serve runs: belady, which the parser also knows, is refused by the checks
     * (it needs the routing of requests not yet sent) */
    enum moe_policy_kind pk;
    if (o->code == MOE_OPT_POLICY && !moe_policy_parse(value, &pk))
        return moe_errorf(MOE_EINVAL, "--policy '%s' unknown (use predicted, lru or lfu)", value);
    /* an empty value is refused by moe_offload_opts_parse, as the other commands refuse it: not taken as unset */
    if (o->code == MOE_OPT_BACKEND) { /* parsed to an enum: nothing to keep */
        if (moe_offload_opts_parse(&c->offload, o->code, value) < 0)
            return MOE_EINVAL; /* the message names the option and its value */
        return MOE_OK;
    }
    char *dst;
    size_t cap;
    if (o->code == MOE_OPT_STORE) {
        dst = c->store_path;
        cap = sizeof(c->store_path);
    } else {
        int slot = o->code - MOE_OPT_STORE;
        if (slot < 0 || slot >= (int)MOE_ARRAY_LEN(c->offload_args))
            return moe_errorf(MOE_EINVAL, "%s: option table error", o->name);
        dst = c->offload_args[slot];
        cap = sizeof(c->offload_args[slot]);
    }
    if (strlen(value) >= cap)
        return moe_errorf(MOE_EINVAL, "%s: value '%.64s' is too long (at most %zu bytes)", o->name,
                          value, cap - 1);
    strcpy(dst, value);
    if (moe_offload_opts_parse(&c->offload, o->code, dst) < 0)
        return MOE_EINVAL; /* the message names the option and its value */
    return MOE_OK;
}

/* What to give instead of an empty value, for the text options that take no empty one and have no list of
 * values to name; NULL for the others (cors-origin's empty list is none, its default). */
static const char *empty_hint(const char *name)
{
    static const char *const hints[][2] = {
        { "model", "name the model directory" },
        { "model-name", "give the name clients send (leave it out for the model directory's name)" },
        { "host", "give the address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface)" },
        { "chat-template", "give auto, markers or a Jinja template file" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(hints); i++)
        if (!strcmp(name, hints[i][0]))
            return hints[i][1];
    return NULL;
}

static enum moe_status set_opt(struct moe_serve_config *c, const struct moe_serve_opt *o,
                               const char *value)
{
    char *base = (char *)c + o->offset;
    if (o->type == MOE_OPT_OFFLOAD || o->type == MOE_OPT_OFFLOAD_FLAG)
        return set_offload(c, o, value);
    if (o->type == MOE_OPT_STRING) {
        /* an empty value (a variable left unset) is refused, not taken for the default */
        const char *hint = value[0] ? NULL : empty_hint(o->name);
        if (hint)
            return moe_errorf(MOE_EINVAL, "%s is empty: %s", o->name, hint);
        if (!value[0] && !strcmp(o->name, "predictor")) { /* with the other commands' message for --predictor '' */
            struct moe_offload_opts t;
            moe_offload_opts_init(&t);
            moe_offload_opts_parse(&t, MOE_OPT_PREDICTOR, value);
            return MOE_EINVAL;
        }
        if (strlen(value) >= o->size)
            return moe_errorf(MOE_EINVAL, "%s: value '%.64s...' is too long (at most %zu bytes)",
                              o->name, value, o->size - 1);
        /* the closed choices are checked before the value is kept: a bad one changes nothing */
        if (!strcmp(o->name, "grouping") && strcmp(value, "fcfs") && strcmp(value, "regroup"))
            return moe_errorf(MOE_EINVAL, "grouping: '%s' is not one of fcfs, regroup", value);
        if (!strcmp(o->name, "reasoning-parser") && strcmp(value, "none") && strcmp(value, "think"))
            return moe_errorf(MOE_EINVAL, "reasoning-parser: '%s' is not one of none, think", value);
        enum moe_dtype kd;
        if (!strcmp(o->name, "kv-dtype") && !moe_engine_kv_dtype_parse(value, &kd))
            return moe_errorf(MOE_EINVAL, "kv-dtype: '%s' is not one of f32, bf16", value);
        uint64_t bytes;
        if (!strcmp(o->name, "kv-cache-bytes") && strcmp(value, "auto") &&
            moe_offload_parse_bytes("kv-cache-bytes", value, &bytes) != 1)
            return moe_errorf(MOE_EINVAL, "kv-cache-bytes: '%s' is not auto or a byte count >= 1 (suffix K, M, G "
                              "or T)", value);
        memcpy(base, value, strlen(value) + 1);
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
    /* the value is the number alone: strto* would skip blanks and take a '+' or a hex "0x" */
    bool starts = isdigit((unsigned char)value[0]) || value[0] == '-' || value[0] == '.';
    bool range_err = errno == ERANGE; /* a number past what 64 bits or a double hold, or one that rounds to 0 */
    if (!starts || strpbrk(value, "xX") || !end || *end || (!range_err && !isfinite(v)))
        return moe_errorf(MOE_EINVAL, "%s: '%s' is not a %s", o->name, value,
                          o->type == MOE_OPT_DOUBLE ? "number" : "whole number");
    if (range_err && fabs(v) < 1)
        return moe_errorf(MOE_ERANGE, "%s: %s is too close to 0 to be held (write 0 or a larger number)", o->name,
                          value);
    if (range_err || v < o->min || v > o->max)
        return moe_errorf(MOE_ERANGE, "%s: %s is outside [%.15g, %.15g]", o->name, value, o->min,
                          o->max);
    switch (o->type) {
    case MOE_OPT_INT: *(int *)base = (int)iv; break;
    case MOE_OPT_I64: *(long long *)base = iv; break;
    case MOE_OPT_DOUBLE: *(double *)base = v; break;
    default: break;
    }
    return MOE_OK;
}

void moe_serve_config_defaults(struct moe_serve_config *c)
{
    memset(c, 0, sizeof(*c));
    moe_offload_opts_init(&c->offload);
    for (const struct moe_serve_opt *o = opts; o->name; o++)
        if (o->def[0] && set_opt(c, o, o->def) != MOE_OK) /* "": unset, as memset and the offload init leave it */
            MOE_ERR("serve option table: bad default of %s", o->name);
    c->offload.policy_given = false; /* a default turns nothing on */
}

enum moe_status moe_serve_config_set(struct moe_serve_config *c, const char *key, const char *value)
{
    const struct moe_serve_opt *o = find_opt(key);
    if (!o)
        return moe_errorf(MOE_EINVAL, "unknown option '%s' (see moeflow serve --help)", key);
    return set_opt(c, o, value);
}

static const char *const alternatives[][2] = { { "gpu-experts", "gpu-cache-bytes" },
                                               { "host-experts", "host-cache-bytes" } };

const char *moe_serve_config_alternative(const char *key)
{
    for (size_t i = 0; i < MOE_ARRAY_LEN(alternatives); i++)
        for (int j = 0; j < 2; j++)
            if (!strcmp(key, alternatives[i][j]))
                return alternatives[i][!j];
    return NULL;
}

void moe_serve_config_unset_alternative(struct moe_serve_config *c, const char *key)
{
    const char *alt = moe_serve_config_alternative(key);
    if (!alt)
        return;
    if (!strcmp(alt, "gpu-experts")) c->offload.gpu_experts = 0;
    else if (!strcmp(alt, "gpu-cache-bytes")) c->offload.gpu_cache_bytes = 0;
    else if (!strcmp(alt, "host-experts")) c->offload.host_experts = 0;
    else c->offload.host_cache_bytes = 0;
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
    if (!path[0])
        return moe_errorf(MOE_EINVAL, "--config '': name the config file to read");
    char *text = NULL;
    size_t len = 0;
    enum moe_status st = moe_read_file(path, &text, &len, 1 << 20);
    if (st != MOE_OK)
        return moe_error_prefix(st, "config file"); /* the message names the file */
    const char *nul = memchr(text, 0, len);
    if (nul) {
        int line = 1;
        for (const char *p = text; p < nul; p++)
            line += *p == '\n';
        st = moe_errorf(MOE_EINVAL, "%s:%d: a NUL byte: a config file is text", path, line);
    } else {
        /* a UTF-8 byte-order mark (what some editors begin a text file with) is no part of the first key */
        bool bom = len >= 3 && !memcmp(text, "\xef\xbb\xbf", 3);
        st = moe_serve_config_parse(c, text + (bom ? 3 : 0), path);
    }
    free(text);
    return st;
}

enum moe_status moe_serve_config_parse(struct moe_serve_config *c, char *text, const char *name)
{
    enum moe_status st = MOE_OK;
    int lineno = 0, set_on[MOE_ARRAY_LEN(opts)] = { 0 }; /* the line that set each option (0: none yet) */
    for (char *line = text, *next; line; line = next) {
        lineno++; /* every line counts, blank ones too */
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        bool quoted = false; /* '#' begins a comment outside a quoted value */
        for (char *q = line; *q; q++) {
            if (*q == '"')
                quoted = !quoted;
            else if (*q == '#' && !quoted) {
                *q = 0;
                break;
            }
        }
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq)
            return moe_errorf(MOE_EINVAL, "%s:%d: expected 'key = value', got '%.80s'", name, lineno, s);
        if (quoted)
            return moe_errorf(MOE_EINVAL, "%s:%d: a quote that is never closed in '%.80s'", name, lineno, s);
        *eq = 0;
        char *key = trim(s), *val = trim(eq + 1);
        size_t vn = strlen(val);
        if (vn >= 2 && val[0] == '"' && val[vn - 1] == '"') {
            val[vn - 1] = 0;
            val++;
        }
        /* a key given twice (however spelt) is a slip: which of the two values was meant cannot be told */
        const struct moe_serve_opt *o = find_opt(key);
        if (o && set_on[o - opts])
            return moe_errorf(MOE_EINVAL, "%s:%d: %s is given again, first on line %d: give each key once", name,
                              lineno, o->name, set_on[o - opts]);
        st = moe_serve_config_set(c, key, val);
        if (st != MOE_OK) {
            /* the offload options and the predictor say their flag (--gpu-experts 'x' ...): a file says its key */
            const char *m = moe_last_error();
            size_t kn = o ? strlen(o->name) : 0;
            if (o && !strncmp(m, "--", 2) && !strncmp(m + 2, o->name, kn) && (m[2 + kn] == ' ' || m[2 + kn] == ':')) {
                char why[1024];
                snprintf(why, sizeof why, "%s", m + 2);
                return moe_errorf(st, "%s:%d: %s", name, lineno, why);
            }
            return moe_error_prefix(st, "%s:%d", name, lineno);
        }
        set_on[o - opts] = lineno;
    }
    return st;
}

int moe_serve_max_running(const struct moe_serve_config *c)
{
    if (c->max_running > 0) return c->max_running;
    return c->max_seqs < 16 ? c->max_seqs : 16;
}

/* The entry of a comma-separated cors-origin list that starts at *p (its length in *n), p moved past it. */
static const char *cors_next(const char **p, size_t *n)
{
    const char *s = *p;
    while (*s == ' ')
        s++;
    const char *e = strchr(s, ',');
    if (!e)
        e = s + strlen(s);
    *p = *e ? e + 1 : e;
    while (e > s && e[-1] == ' ')
        e--;
    *n = (size_t)(e - s);
    return s;
}

static enum moe_status cors_check(const char *list)
{
    if (!list[0] || !strcmp(list, "*"))
        return MOE_OK;
    for (const char *p = list; *p;) {
        size_t n;
        const char *o = cors_next(&p, &n);
        size_t scheme = !strncmp(o, "http://", 7) ? 7 : !strncmp(o, "https://", 8) ? 8 : 0;
        bool ok = scheme && n > scheme;
        for (size_t i = scheme; ok && i < n; i++) /* a host and a port: no path, space or wildcard */
            ok = o[i] > ' ' && o[i] < 0x7f && o[i] != '/' && o[i] != '*' && o[i] != '"';
        if (!ok)
            return moe_errorf(MOE_EINVAL, "cors-origin: '%.*s' is not an origin: give * alone, or origins such as "
                              "https://app.example or http://localhost:3000 (scheme, host, optional port; no path), "
                              "separated by commas", (int)(n > 200 ? 200 : n), o);
    }
    return MOE_OK;
}

bool moe_serve_cors_allows(const char *list, const char *origin)
{
    if (!list[0] || !origin)
        return false;
    if (!strcmp(list, "*"))
        return true;
    size_t len = strlen(origin);
    for (const char *p = list; *p;) {
        size_t n;
        const char *o = cors_next(&p, &n);
        if (n == len && !strncasecmp(o, origin, n))
            return true;
    }
    return false;
}

enum moe_status moe_serve_config_check(const struct moe_serve_config *c)
{
    int running = moe_serve_max_running(c);
    if (running > c->max_seqs)
        return moe_errorf(MOE_EINVAL, "max-running %d exceeds max-seqs %d: raise max-seqs", running, c->max_seqs);
    if (c->micro_batch > running)
        return moe_errorf(MOE_EINVAL, "micro-batch %d exceeds max-running %d: lower micro-batch or raise "
                          "max-running", c->micro_batch, running);
    if (c->max_output && c->default_max_tokens > c->max_output)
        return moe_errorf(MOE_EINVAL, "default-max-tokens %d exceeds max-output %d: lower one or raise the other",
                          c->default_max_tokens, c->max_output);
    if (c->max_ctx > 0 && strcmp(c->kv_cache_bytes, "auto"))
        return moe_errorf(MOE_EINVAL, "kv-cache-bytes %s with max-ctx %d: kv-cache-bytes sizes the context only when "
                          "max-ctx is 0; drop one of the two", c->kv_cache_bytes, c->max_ctx);
    if (c->grpc_port && c->grpc_port == c->http_port)
        return moe_errorf(MOE_EINVAL, "grpc-port and http-port are both %d", c->grpc_port);
    if (!c->grpc_port && !c->http_port)
        return moe_errorf(MOE_EINVAL, "grpc-port and http-port are both 0 (off): nothing to serve");
    if (cors_check(c->cors_origin) != MOE_OK)
        return MOE_EINVAL;
    if (c->threads > 1 && c->offload.backend == MOE_COMPUTE_CUDA)
        return moe_errorf(MOE_EINVAL, "threads %d sizes the cpu backend's pool and backend cuda computes on the GPU, "
                          "where no pool runs: drop threads (or use backend cpu)", c->threads);
    if (c->offload.policy == MOE_POLICY_BELADY)
        return moe_errorf(MOE_EINVAL, "policy belady needs the routing of requests not yet sent; use lru, lfu or "
                          "predicted");
    return moe_offload_opts_check(&c->offload);
}

void moe_serve_config_help(FILE *f)
{
    static const char *tn[] = { "INT", "INT", "NUM", "TEXT", "VALUE", "" };
    for (const struct moe_serve_opt *o = opts; o->name; o++) {
        char flag[64], range[64] = "";
        snprintf(flag, sizeof(flag), "--%s %s", o->name, tn[o->type]);
        if (o->type <= MOE_OPT_DOUBLE)
            snprintf(range, sizeof(range), ", range %.15g..%.15g", o->min, o->max);
        if (o->def[0])
            fprintf(f, "  %-32s %s (default %s%s)\n", flag, o->help, o->def, range);
        else
            fprintf(f, "  %-32s %s\n", flag, o->help);
    }
}
