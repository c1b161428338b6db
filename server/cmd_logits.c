/* moeflow logits: run a token sequence through the model in one prefill and
 * write the F32 logits of every position, [T, vocab], to a safetensors file
 * (tensor "logits"; the ids go along as I64 tensor "input_ids"). */
#include "cli.h"

#include "../engine/engine.h"
#include "../model/json_error.h"
#include "../model/model.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moeflow logits [--model DIR] --ids 1,2,3 --out F.safetensors [--threads N]\n"
            "Write the F32 logits [T, vocab] of every position of the token ids to F.\n\n"
            "  -m, --model DIR  model directory (default %s)\n"
            "  -i, --ids LIST   token ids, comma-separated (1,2,3) or a JSON array ([1, 2, 3]) as\n"
            "                   moeflow tokenize prints: --ids \"$(moeflow tokenize --text hi)\"\n"
            "  -o, --out FILE   output safetensors file (tensors \"logits\" and \"input_ids\")\n"
            "  -t, --threads N  CPU threads (default 1)\n"
            "  -h, --help       this help\n",
            moe_default_model_dir());
}

/* "[1, 2, 3]" (what moeflow tokenize prints) -> ids; false with a message. */
static bool parse_json_ids(const char *s, int **out, int *n)
{
    json_error_t jerr;
    json_t *a = json_loads(s, 0, &jerr), *x;
    int *ids;
    size_t i;
    if (!json_is_array(a)) {
        if (a)
            fprintf(stderr, "moeflow logits: --ids: want a JSON array of token ids like [1, 2, 3]\n");
        else
            fprintf(stderr, "moeflow logits: --ids: not valid JSON at column %d: %s (want an array of ids "
                    "like [1, 2, 3], or 1,2,3)\n", jerr.column, moe_json_error_text(&jerr));
        json_decref(a);
        return false;
    }
    if (json_array_size(a) == 0 || json_array_size(a) > 0x7fffffff) {
        fprintf(stderr, "moeflow logits: --ids is %s\n", json_array_size(a) ? "too long" : "an empty array");
        json_decref(a);
        return false;
    }
    if (!(ids = malloc(sizeof(int) * json_array_size(a)))) {
        fprintf(stderr, "moeflow logits: out of memory for %zu ids\n", json_array_size(a));
        json_decref(a);
        return false;
    }
    json_array_foreach(a, i, x) {
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > 0x7fffffff) {
            if (json_is_integer(x))
                fprintf(stderr, "moeflow logits: --ids: item %zu of the array, %" JSON_INTEGER_FORMAT
                        ", is outside the token ids' range [0, 2147483647]\n", i + 1, json_integer_value(x));
            else
                fprintf(stderr, "moeflow logits: --ids: item %zu of the array is not an integer\n", i + 1);
            free(ids);
            json_decref(a);
            return false;
        }
        ids[i] = (int)json_integer_value(x);
    }
    *out = ids;
    *n = (int)json_array_size(a);
    json_decref(a);
    return true;
}

/* "1,2,3" or "[1, 2, 3]" -> ids; false with a message naming the bad item. */
static bool parse_ids(const char *s, int **out, int *n)
{
    int cap = 16, k = 0;
    int *ids = malloc(sizeof(int) * (size_t)cap);
    const char *p = s;
    if (*s == '[') {
        free(ids);
        return parse_json_ids(s, out, n);
    }
    if (!ids) return false;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (*p < '0' || *p > '9' || end == p || errno || v < 0 || v > 0x7fffffff || (*end && *end != ',')) {
            bool digits = *p >= '0' && *p <= '9' && end != p && (!*end || *end == ',');
            fprintf(stderr, "moeflow logits: --ids: item %d ('%.*s') is %s\n", k + 1, (int)strcspn(p, ","), p,
                    digits ? "outside the token ids' range [0, 2147483647]" : "not a non-negative integer");
            free(ids);
            return false;
        }
        if (k == cap) {
            int *g = realloc(ids, sizeof(int) * (size_t)(cap *= 2));
            if (!g) {
                free(ids);
                return false;
            }
            ids = g;
        }
        ids[k++] = (int)v;
        p = *end ? end + 1 : end;
        if (*end == ',' && !*p) {
            fprintf(stderr, "moeflow logits: --ids ends with a comma\n");
            free(ids);
            return false;
        }
    }
    if (k == 0) {
        fprintf(stderr, "moeflow logits: --ids is empty\n");
        free(ids);
        return false;
    }
    *out = ids;
    *n = k;
    return true;
}

int moe_cmd_logits(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' }, { "ids", required_argument, NULL, 'i' },
        { "out", required_argument, NULL, 'o' },   { "threads", required_argument, NULL, 't' },
        { "help", no_argument, NULL, 'h' },        { 0, 0, 0, 0 },
    };
    const char *model_dir = moe_default_model_dir(), *ids_arg = NULL, *out_path = NULL;
    int threads = 1, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:i:o:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (!moe_cli_check_model("logits", optarg)) return 2;
            model_dir = optarg;
            break;
        case 'i': ids_arg = optarg; break;
        case 'o': out_path = optarg; break;
        case 't':
            if (!moe_cli_opt_threads("logits", optarg, &threads)) return 2;
            break;
        case 'h': return moe_cli_help("logits", argc, argv, ":m:i:o:t:h", opts, usage);
        default: return moe_cli_bad_option("logits", c, argv, opts);
        }
    }
    if (!moe_cli_no_operands("logits", argc, argv, NULL)) return 2;
    if (out_path && !moe_cli_check_out("logits", "--out", out_path, false)) return 2;
    if (!ids_arg || !out_path) {
        fprintf(stderr, "moeflow logits: %s is required (see --help)\n", !ids_arg ? "--ids LIST" : "--out FILE");
        return 2;
    }
    int *ids = NULL, n = 0, rc = 1;
    if (!parse_ids(ids_arg, &ids, &n)) return 2;

    struct moe_model *m = NULL;
    struct moe_engine *e = NULL;
    float *logits = NULL;
    int64_t *ids64 = NULL;
    if (!moe_cli_open_model("logits", model_dir, &m, NULL)) goto out;
    int V = m->cfg.vocab;
    for (int i = 0; i < n; i++)
        if (ids[i] >= V) {
            fprintf(stderr, "moeflow logits: --ids item %d is %d, outside the vocabulary [0, %d)\n",
                    i + 1, ids[i], V);
            rc = 2;
            goto out;
        }
    if (n > m->cfg.max_pos) {
        fprintf(stderr, "moeflow logits: %d ids exceed the model's context of %d\n", n, m->cfg.max_pos);
        rc = 2;
        goto out;
    }
    int chunk = n < 512 ? n : 512;
    struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = n, .max_batch_tokens = chunk,
                                    .n_threads = threads };
    e = moe_engine_create(m, &ep);
    logits = malloc(sizeof(float) * (size_t)n * (size_t)V);
    ids64 = malloc(sizeof(int64_t) * (size_t)n);
    int pos[512], seqv[512];
    if (!e || !logits || !ids64) {
        fprintf(stderr, "moeflow logits: %s\n", e ? "out of memory" : moe_last_error());
        goto out;
    }
    int seq = moe_engine_seq_alloc(e);
    if (seq < 0) {
        fprintf(stderr, "moeflow logits: the engine has no free sequence slot\n");
        goto out;
    }
    for (int i0 = 0; i0 < n; i0 += chunk) {
        int k = n - i0 < chunk ? n - i0 : chunk;
        for (int i = 0; i < k; i++) pos[i] = i0 + i, seqv[i] = seq;
        struct moe_batch b = { .n = k, .tokens = ids + i0, .seq = seqv, .pos = pos };
        if (moe_engine_forward(e, &b, logits + (size_t)i0 * V) != MOE_OK) {
            fprintf(stderr, "moeflow logits: %s\n", moe_last_error());
            goto out;
        }
    }
    for (int i = 0; i < n; i++) ids64[i] = ids[i];
    struct moe_st_out t[2] = {
        { .name = "input_ids", .dtype = MOE_DT_I64, .ndim = 1, .shape = { n }, .data = ids64 },
        { .name = "logits", .dtype = MOE_DT_F32, .ndim = 2, .shape = { n, V }, .data = logits },
    };
    const char *meta[] = { "format", "pt", "producer", "moeflow logits", NULL };
    if (moe_st_write(out_path, t, 2, meta) != MOE_OK) {
        fprintf(stderr, "moeflow logits: --out: %s\n", moe_last_error()); /* the message names the file */
        goto out;
    }
    rc = 0;
out:
    moe_engine_destroy(e);
    moe_model_close(m);
    free(logits);
    free(ids64);
    free(ids);
    return rc;
}
