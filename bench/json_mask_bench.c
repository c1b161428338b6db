/* JSON mode's cost per generated token: moe_json_mask over a model's whole
 * vocabulary, at every token of a JSON document as the model's tokenizer
 * splits it, with no schema, a schema, the schema with lengths and ranges and
 * one with patterns on its strings, and in JSON mode after a reasoning block
 * (the block's text, then the document), and held to a JSON grammar in GBNF instead of JSON
 * mode, and the time each schema (and one of seven formats) takes to compile,
 * against feeding every token on its
 * own (the reference the mask must equal).  Prints one JSON line per case.
 *
 * usage: json_mask_bench [--model DIR] [--reps N] [--vocab N]  (N: the vocabulary grown to N tokens) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/moe.h"
#include "engine/json_guide.h"
#include "model/tokenizer.h"

static const char *doc =
    "{\"name\": \"Rex\", \"kind\": \"dog\", \"age\": 7, \"weight\": 31.5, \"indoor\": false,\n"
    "  \"tags\": [\"big\", \"old\"], \"owner\": {\"id\": 1024}}";

static const char *schema =
    "{\"$defs\":{\"Owner\":{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"}},"
    "\"required\":[\"id\"],\"additionalProperties\":false}},\"type\":\"object\",\"properties\":{"
    "\"name\":{\"type\":\"string\"},\"kind\":{\"enum\":[\"cat\",\"dog\",\"bird\"]},\"age\":{\"type\":\"integer\"},"
    "\"weight\":{\"type\":\"number\"},\"indoor\":{\"type\":\"boolean\"},\"tags\":{\"type\":\"array\",\"items\":"
    "{\"enum\":[\"small\",\"big\",\"old\"]},\"maxItems\":3},\"owner\":{\"anyOf\":[{\"type\":\"null\"},"
    "{\"$ref\":\"#/$defs/Owner\"}]}},\"required\":[\"name\",\"kind\",\"age\"],\"additionalProperties\":false}";

/* Reasoning before the document (serve's reasoning parser): the block is free text. */
static const char *reasoning =
    "<think>\nThe user wants a pet as JSON. A dog is a good choice: call it Rex, seven years old, 31.5 kg,\n"
    "kept outdoors. Tags: big and old. The owner's id is 1024.\n</think>\n\n";

/* The same schema with lengths and ranges, which the document meets. */
static const char *bounded =
    "{\"$defs\":{\"Owner\":{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\",\"minimum\":1,"
    "\"maximum\":99999}},\"required\":[\"id\"],\"additionalProperties\":false}},\"type\":\"object\",\"properties\":{"
    "\"name\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":16},\"kind\":{\"enum\":[\"cat\",\"dog\",\"bird\"]},"
    "\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":30},\"weight\":{\"type\":\"number\",\"exclusiveMinimum\":0,"
    "\"maximum\":100},\"indoor\":{\"type\":\"boolean\"},\"tags\":{\"type\":\"array\",\"items\":"
    "{\"enum\":[\"small\",\"big\",\"old\"]},\"maxItems\":3},\"owner\":{\"anyOf\":[{\"type\":\"null\"},"
    "{\"$ref\":\"#/$defs/Owner\"}]}},\"required\":[\"name\",\"kind\",\"age\"],\"additionalProperties\":false}";

/* ... and with patterns on the strings. */
static const char *patterned =
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"pattern\":\"^[A-Z][a-z]{1,15}$\"},"
    "\"kind\":{\"enum\":[\"cat\",\"dog\",\"bird\"]},\"age\":{\"type\":\"integer\"},\"weight\":{\"type\":\"number\"},"
    "\"indoor\":{\"type\":\"boolean\"},\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"pattern\":"
    "\"^[a-z]+$\"},\"maxItems\":3},\"owner\":{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"}}}},"
    "\"required\":[\"name\",\"kind\",\"age\"],\"additionalProperties\":false}";

/* JSON as a GBNF grammar (the same language as JSON mode's, whitespace aside), through the
 * grammar recognizer. */
static const char *json_gbnf =
    "root   ::= object\n"
    "value  ::= object | array | string | number | (\"true\" | \"false\" | \"null\")\n"
    "object ::= \"{\" ws ( string \":\" ws value ws (\",\" ws string \":\" ws value ws)* )? \"}\"\n"
    "array  ::= \"[\" ws ( value ws (\",\" ws value ws)* )? \"]\"\n"
    "string ::= \"\\\"\" ( [^\"\\\\\\x00-\\x1f] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4}) )* \"\\\"\"\n"
    "number ::= \"-\"? ([0-9] | [1-9] [0-9]*) (\".\" [0-9]+)? ([eE] [-+]? [0-9]+)?\n"
    "ws     ::= [ \\t\\n]{0,20}\n";

/* Formats: compiled only, for the time a request's schema takes to compile. */
static const char *formats =
    "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"format\":\"date-time\"},\"b\":{\"type\":"
    "\"string\",\"format\":\"uuid\"},\"c\":{\"type\":\"string\",\"format\":\"email\"},\"d\":{\"type\":\"string\","
    "\"format\":\"uri\"},\"e\":{\"type\":\"string\",\"format\":\"hostname\"},\"f\":{\"type\":\"string\","
    "\"format\":\"ipv4\"},\"g\":{\"type\":\"string\",\"format\":\"date\"}}}";

/* Microseconds to compile schema text (mean of reps). */
static double compile_us(const char *text, int reps, bool grammar)
{
    double t0 = moe_now();
    for (int r = 0; r < reps; r++) {
        struct moe_json_schema *sc = NULL;
        enum moe_status st = grammar ? moe_json_schema_grammar(text, strlen(text), &sc)
                                     : moe_json_schema_parse(text, strlen(text), &sc);
        if (st != MOE_OK) return -1;
        moe_json_schema_unref(sc);
    }
    return 1e6 * (moe_now() - t0) / reps;
}

/* Every token fed on its own: the reference. */
static int mask_each(const struct moe_json_state *s, const struct moe_token_bytes *t, const float *logits, int V,
                     float *out)
{
    int allowed = 0;
    for (int id = 0; id < V; id++) {
        struct moe_json_state c;
        moe_json_copy(&c, s);
        uint32_t a = t->off[id], b = t->off[id + 1];
        bool ok = b > a && moe_json_feed(&c, t->blob + a, b - a);
        out[id] = ok ? logits[id] : -INFINITY;
        allowed += ok;
    }
    return allowed;
}

/* The model's vocabulary grown to n tokens, as a large one might be: after the model's own tokens,
 * pairs of them joined (as BPE merges join tokens; at most 16 bytes) and, one in six, one to three
 * CJK characters (U+4E00..U+9FFF).  The ids of the model's tokens stay what they are. */
static int grow_vocab(struct moe_token_bytes *tb, int n)
{
    int v = tb->n;
    size_t cap = (size_t)tb->off[v] + (size_t)(n - v) * 16;
    char *blob = malloc(cap);
    uint32_t *off = malloc(sizeof(*off) * ((size_t)n + 1));
    if (!blob || !off) return -1;
    memcpy(blob, tb->blob, tb->off[v]);
    memcpy(off, tb->off, sizeof(*off) * ((size_t)v + 1));
    uint64_t x = 0x2545f4914f6cdd1dull;
    uint32_t at = tb->off[v];
    for (int id = v; id < n; id++) {
        off[id] = at;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        if (x % 6 == 0) {
            for (int k = 0; k <= (int)(x >> 8) % 3; k++) {
                uint32_t cp = 0x4e00 + (uint32_t)((x >> (16 + 5 * k)) % 0x5200);
                blob[at++] = (char)(0xe0 | cp >> 12);
                blob[at++] = (char)(0x80 | (cp >> 6 & 0x3f));
                blob[at++] = (char)(0x80 | (cp & 0x3f));
            }
        } else {
            int a = (int)((x >> 8) % (uint64_t)v), b = (int)((x >> 32) % (uint64_t)v);
            uint32_t la = tb->off[a + 1] - tb->off[a], lb = tb->off[b + 1] - tb->off[b];
            if (la > 8) la = 8;
            if (lb > 8) lb = 8;
            memcpy(blob + at, tb->blob + tb->off[a], la);
            memcpy(blob + at + la, tb->blob + tb->off[b], lb);
            at += la + lb;
        }
    }
    off[n] = at;
    moe_token_bytes_free(tb);
    enum moe_status st = moe_token_bytes_make(blob, off, n, tb);
    free(blob);
    free(off);
    return st == MOE_OK ? n : -1;
}

int main(int argc, char **argv)
{
    const char *dir = getenv("MOEFLOW_MODEL") ? getenv("MOEFLOW_MODEL") : "models/pycode-moe-18m";
    int reps = 20, grow = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--vocab") && i + 1 < argc) grow = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: json_mask_bench [--model DIR] [--reps N] [--vocab N]\n"
                            "  --vocab N   grow the model's vocabulary to N tokens (joined pairs and CJK\n"
                            "              characters), as a large vocabulary, e.g. Qwen's 151936\n");
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    char path[1024];
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    struct moe_tokenizer *tok = moe_tokenizer_load(path);
    if (!tok) {
        fprintf(stderr, "json_mask_bench: %s\n", moe_last_error());
        return 1;
    }
    int V = moe_tokenizer_vocab_size(tok);
    struct moe_token_bytes tb;
    struct moe_json_schema *sc[6] = { NULL };
    int *ids = NULL, *tids = NULL;
    size_t n = 0, tn = 0;
    char *tdoc = malloc(strlen(reasoning) + strlen(doc) + 1);
    if (!tdoc) return 1;
    strcat(strcpy(tdoc, reasoning), doc);
    if (moe_token_bytes_build(tok, V, &tb) != MOE_OK ||
        moe_json_schema_parse(schema, strlen(schema), &sc[1]) != MOE_OK ||
        moe_json_schema_parse(bounded, strlen(bounded), &sc[2]) != MOE_OK ||
        moe_json_schema_parse(patterned, strlen(patterned), &sc[3]) != MOE_OK ||
        moe_json_schema_grammar(json_gbnf, strlen(json_gbnf), &sc[5]) != MOE_OK ||
        moe_tokenizer_encode(tok, doc, strlen(doc), &ids, &n) != MOE_OK ||
        moe_tokenizer_encode(tok, tdoc, strlen(tdoc), &tids, &tn) != MOE_OK) {
        fprintf(stderr, "json_mask_bench: %s\n", moe_last_error());
        return 1;
    }
    if (grow > V && (V = grow_vocab(&tb, grow)) < 0) {
        fprintf(stderr, "json_mask_bench: cannot grow the vocabulary to %d tokens: %s\n", grow, moe_last_error());
        return 1;
    }
    float *logits = malloc(sizeof(float) * (size_t)V), *a = malloc(sizeof(float) * (size_t)V),
          *b = malloc(sizeof(float) * (size_t)V);
    if (!logits || !a || !b) return 1;
    for (int i = 0; i < V; i++) logits[i] = (float)i;
    const char *texts[6] = { NULL, schema, bounded, patterned, NULL, json_gbnf };
    for (int k = 0; k < 6; k++) { /* any object, the schema, with bounds, with patterns; reasoning first; a grammar */
        double t_mask = 0, t_each = 0;
        long allowed = 0, differ = 0;
        bool think = k == 4, gram = k == 5;
        const int *tk = think ? tids : ids;
        size_t nt = think ? tn : n;
        for (int r = 0; r < reps; r++) {
            struct moe_json_state s;
            if (think)
                moe_json_init_after_think(&s, NULL, false);
            else
                moe_json_init(&s, sc[k]);
            for (size_t i = 0; i < nt; i++) {
                double t0 = moe_now();
                int na = moe_json_mask(&s, &tb, logits, V, NULL, NULL, a);
                double t1 = moe_now();
                int nb = mask_each(&s, &tb, logits, V, b);
                double t2 = moe_now();
                t_mask += t1 - t0;
                t_each += t2 - t1;
                if (r == 0) {
                    allowed += na;
                    differ += na != nb || memcmp(a, b, sizeof(float) * (size_t)V);
                }
                moe_json_take(&s, &tb, tk[i]);
            }
        }
        double calls = (double)reps * (double)nt;
        printf("{\"bench\":\"json_mask\",\"schema\":%s,\"bounds\":%s,\"patterns\":%s,\"reasoning\":%s,"
               "\"grammar\":%s,\"vocab\":%d,\"steps\":%zu,\"reps\":%d,\"mask_us\":%.1f,\"each_us\":%.1f,\"speedup\":%.2f,\"mean_allowed\":%.1f,"
               "\"steps_differing\":%ld,\"compile_us\":%.1f}\n",
               k && !think && !gram ? "true" : "false", k == 2 ? "true" : "false", k == 3 ? "true" : "false",
               think ? "true" : "false", gram ? "true" : "false", V, nt, reps, 1e6 * t_mask / calls,
               1e6 * t_each / calls, t_each / t_mask, (double)allowed / (double)nt, differ,
               k && !think ? compile_us(texts[k], reps, gram) : 0.0);
    }
    free(logits);
    free(a);
    free(b);
    free(ids);
    free(tids);
    free(tdoc);
    printf("{\"bench\":\"json_schema_compile\",\"schema\":\"seven formats\",\"reps\":%d,\"compile_us\":%.1f}\n", reps,
           compile_us(formats, reps, false));
    for (int k = 0; k < 6; k++) moe_json_schema_unref(sc[k]);
    moe_token_bytes_free(&tb);
    moe_tokenizer_free(tok);
    return 0;
}
