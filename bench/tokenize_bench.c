/* Tokenizer throughput per pre-tokenizer kind: the bundled model's vocabulary
 * and merges with each variant of tests/fixtures/tokenizer/variant-vectors.jsonl
 * (GPT-2's and Qwen2's hand-written splits, the same regexes on the general
 * Split matcher, DeepSeek-V3's three Splits, cl100k, o200k), on one text.
 * Prints one JSON line per variant: MB/s of text cut into pieces
 * (moe_tokenizer_pretokenize) and encoded to ids (moe_tokenizer_encode, which
 * adds BPE), and ids per second.
 *
 * usage: tokenize_bench [--text FILE] [--reps N]
 *   (default text: bench/data/pycode/eval.txt; run from the repository root) */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/moe.h"
#include "model/tokenizer.h"

#define VECTORS "tests/fixtures/tokenizer/variant-vectors.jsonl"

/* The bundled tokenizer.json with the variant's normalizer and pre_tokenizer. */
static struct moe_tokenizer *variant(json_t *base, json_t *v)
{
    json_t *root = json_deep_copy(base);
    json_object_set(root, "normalizer", json_object_get(v, "normalizer"));
    json_object_set(root, "pre_tokenizer", json_object_get(v, "pre_tokenizer"));
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    struct moe_tokenizer *t = s ? moe_tokenizer_parse(s, strlen(s), "variant tokenizer.json") : NULL;
    free(s);
    return t;
}

/* Best of reps runs of one variant over text: seconds to pre-tokenize and to
 * encode, and the number of ids. */
static int measure(const struct moe_tokenizer *t, const char *text, size_t len, int reps, double *pre_s,
                   double *enc_s, size_t *n_ids)
{
    *pre_s = *enc_s = 1e30;
    for (int r = 0; r < reps; r++) {
        size_t *lens = NULL, np = 0;
        int *ids = NULL;
        double t0 = moe_now();
        if (moe_tokenizer_pretokenize(t, text, len, &lens, &np))
            return -1;
        double t1 = moe_now();
        if (moe_tokenizer_encode(t, text, len, &ids, n_ids))
            return -1;
        double t2 = moe_now();
        free(lens);
        free(ids);
        *pre_s = t1 - t0 < *pre_s ? t1 - t0 : *pre_s;
        *enc_s = t2 - t1 < *enc_s ? t2 - t1 : *enc_s;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *text_path = "bench/data/pycode/eval.txt";
    int reps = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--text") && i + 1 < argc) {
            text_path = argv[++i];
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: tokenize_bench [--text FILE] [--reps N]\n");
            return argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? 0 : 2;
        }
    }
    if (reps < 1) {
        fprintf(stderr, "tokenize_bench: --reps must be at least 1\n");
        return 2;
    }
    char *text, *vec, tok_path[4096];
    size_t len, vlen;
    snprintf(tok_path, sizeof(tok_path), "%s/tokenizer.json", moe_default_model_dir());
    json_error_t jerr;
    json_t *base = json_load_file(tok_path, 0, &jerr);
    if (!base || moe_read_file(text_path, &text, &len, 1u << 30) || moe_read_file(VECTORS, &vec, &vlen, 64u << 20)) {
        fprintf(stderr, "tokenize_bench: %s\n", base ? moe_last_error() : jerr.text);
        return 1;
    }
    int rc = 0;
    for (char *line = vec, *end; rc == 0 && line < vec + vlen; line = end + 1) {
        end = memchr(line, '\n', (size_t)(vec + vlen - line));
        if (!end)
            end = vec + vlen;
        json_t *v = json_loadb(line, (size_t)(end - line), 0, NULL);
        if (v && json_object_get(v, "pre_tokenizer")) {
            const char *name = json_string_value(json_object_get(v, "variant"));
            struct moe_tokenizer *t = variant(base, v);
            double pre_s, enc_s;
            size_t n_ids = 0;
            if (!t || measure(t, text, len, reps, &pre_s, &enc_s, &n_ids)) {
                fprintf(stderr, "tokenize_bench: %s: %s\n", name, moe_last_error());
                rc = 1;
            } else {
                printf("{\"bench\":\"tokenize\",\"variant\":\"%s\",\"text_bytes\":%zu,\"ids\":%zu,"
                       "\"pretokenize_mb_s\":%.1f,\"encode_mb_s\":%.1f,\"encode_ids_per_s\":%.0f}\n",
                       name, len, n_ids, len / pre_s / 1e6, len / enc_s / 1e6, n_ids / enc_s);
            }
            moe_tokenizer_free(t);
        }
        json_decref(v);
    }
    json_decref(base);
    free(text);
    free(vec);
    return rc;
}
