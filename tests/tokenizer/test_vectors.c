/* Acceptance: every line of tests/fixtures/tokenizer/pycode-vectors.jsonl
 * (reference ids from the Hugging Face tokenizers library) encodes to exactly
 * its ids with the bundled model's tokenizer.json, and the ids decode back to
 * exactly the text.  Also prints the encode throughput on the concatenated
 * texts (a figure, not a check). */
#include "model/tokenizer.h"
#include "tests/test_util.h"

#include <jansson.h>

static void print_ids(const char *label, const int *ids, size_t n)
{
    fprintf(stderr, "  %s (%zu):", label, n);
    for (size_t i = 0; i < n && i < 64; i++)
        fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, n > 64 ? " ...\n" : "\n");
}

int main(void)
{
    char path[4096], vpath[4096];
    struct moe_tokenizer *t = moe_tokenizer_load_dir(t_path(path, sizeof(path), "models/pycode-moe-18m"));
    REQUIRE(t, "load: %s", moe_last_error());
    CHECK(moe_tokenizer_vocab_size(t) == 8192, "vocab size %d", moe_tokenizer_vocab_size(t));
    CHECK(moe_tokenizer_token_id(t, "<|endoftext|>") == 0, "special token id");

    char *buf;
    size_t len;
    REQUIRE(moe_read_file(t_path(vpath, sizeof(vpath), "tests/fixtures/tokenizer/pycode-vectors.jsonl"), &buf,
                          &len, 64u << 20) == MOE_OK,
            "%s", moe_last_error());

    struct { char *p; size_t len, cap; } all = { 0 };
    size_t n_lines = 0, n_ok = 0, n_ids_total = 0;
    const char *line;
    size_t ll;
    for (size_t pos = 0; t_next_line(buf, len, &pos, &line, &ll);) {
        if (!ll)
            continue;
        n_lines++;
        json_error_t jerr;
        json_t *o = json_loadb(line, ll, JSON_ALLOW_NUL, &jerr);
        REQUIRE(o, "line %zu: %s", n_lines, jerr.text);
        json_t *jt = json_object_get(o, "text"), *ji = json_object_get(o, "ids");
        REQUIRE(json_is_string(jt) && json_is_array(ji), "line %zu: bad vector", n_lines);
        const char *text = json_string_value(jt);
        size_t tlen = json_string_length(jt), nref = json_array_size(ji);
        int *ref = malloc((nref ? nref : 1) * sizeof(int));
        REQUIRE(ref, "oom");
        for (size_t i = 0; i < nref; i++)
            ref[i] = (int)json_integer_value(json_array_get(ji, i));

        int *ids = NULL;
        size_t n = 0;
        enum moe_status st = moe_tokenizer_encode(t, text, tlen, &ids, &n);
        bool ok = st == MOE_OK && n == nref && !memcmp(ids, ref, n * sizeof(int));
        CHECK(ok, "line %zu: encode mismatch (%s) for text \"%.80s\"", n_lines,
              st ? moe_last_error() : "ids differ", text);
        if (!ok && st == MOE_OK) {
            print_ids("want", ref, nref);
            print_ids("got ", ids, n);
        }
        char *dec = NULL;
        size_t dlen = 0;
        st = moe_tokenizer_decode(t, ref, nref, &dec, &dlen);
        bool dok = st == MOE_OK && dlen == tlen && !memcmp(dec, text, tlen);
        CHECK(dok, "line %zu: decode mismatch (%s)", n_lines, st ? moe_last_error() : "bytes differ");
        /* token_bytes of each id concatenates to the same text */
        size_t k = 0;
        bool bok = true;
        for (size_t i = 0; i < nref && bok; i++) {
            char tb[256];
            int m = moe_tokenizer_token_bytes(t, ref[i], tb, sizeof(tb));
            bok = m >= 0 && (size_t)m <= sizeof(tb) && k + (size_t)m <= tlen && !memcmp(text + k, tb, (size_t)m);
            k += m > 0 ? (size_t)m : 0;
        }
        CHECK(bok && k == tlen, "line %zu: token_bytes do not rebuild the text", n_lines);
        n_ok += ok && dok && bok;
        n_ids_total += nref;

        if (all.len + tlen + 1 > all.cap) {
            all.cap = (all.len + tlen + 1) * 2;
            all.p = realloc(all.p, all.cap);
            REQUIRE(all.p, "oom");
        }
        memcpy(all.p + all.len, text, tlen);
        all.len += tlen;
        all.p[all.len++] = '\n';
        free(ids);
        free(dec);
        free(ref);
        json_decref(o);
    }
    CHECK(n_lines == 187, "expected 187 vectors, read %zu", n_lines);
    printf("vectors: %zu/%zu match (%zu reference ids)\n", n_ok, n_lines, n_ids_total);

    /* throughput figure on the concatenated texts */
    int *ids = NULL;
    size_t n = 0;
    double t0 = moe_now();
    enum moe_status st = moe_tokenizer_encode(t, all.p, all.len, &ids, &n);
    double dt = moe_now() - t0;
    CHECK(st == MOE_OK, "encode of all texts: %s", moe_last_error());
    printf("encode: %zu bytes -> %zu ids in %.3f ms (%.1f MB/s)\n", all.len, n, dt * 1e3,
           all.len / (dt > 0 ? dt : 1e-9) / 1e6);
    free(ids);
    free(all.p);
    free(buf);
    moe_tokenizer_free(t);
    return t_result("test_tokenizer_vectors");
}
