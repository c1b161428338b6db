/* libFuzzer target for the tokenizer.
 *
 * - An input starting with '{' is parsed as a tokenizer.json; when it parses,
 *   the input itself and a fixed sample are encoded with it and the ids decoded.
 * - Every input is encoded with the bundled model's tokenizer (loaded once);
 *   valid UTF-8 must encode, and its ids must decode to the same bytes.
 * - And with the bundled vocabulary under the Qwen2 kind (the normalizer and
 *   pre_tokenizer of corpus/valid-qwen2-nfc.json: NFC + Qwen2's Split): its ids
 *   must decode to the input's NFC, whose pre-tokenizer pieces must be non-empty
 *   and cover it exactly.
 * - And with the SentencePiece-style tokenizer of Mixtral's layout
 *   (tests/fixtures/tokenizer/spm-legacy.json: byte fallback, so every
 *   character encodes): text without added tokens or "\u2581" in it must
 *   decode to itself, and as a prompt it gets the BOS in front.
 *
 * The bundled tokenizer is found through MOEFLOW_SOURCE_DIR (set by ctest),
 * else the source directory this was built from. */
#include "model/tokenizer.h"
#include "model/tokenizer_nfc.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static struct moe_tokenizer *real, *qwen2, *spm;

/* The bundled tokenizer.json with the normalizer and pre_tokenizer of kind. */
static struct moe_tokenizer *load_kind(const char *root, const char *kind)
{
    char path[4096];
    json_error_t err;
    snprintf(path, sizeof(path), "%s/models/pycode-moe-18m/tokenizer.json", root);
    json_t *base = json_load_file(path, 0, &err);
    snprintf(path, sizeof(path), "%s/tests/tokenizer/corpus/%s", root, kind);
    json_t *k = json_load_file(path, 0, &err);
    if (!base || !k) {
        fprintf(stderr, "fuzz_tokenizer: %s: %s\n", path, err.text);
        exit(1);
    }
    json_object_set(base, "normalizer", json_object_get(k, "normalizer"));
    json_object_set(base, "pre_tokenizer", json_object_get(k, "pre_tokenizer"));
    char *text = json_dumps(base, JSON_COMPACT);
    struct moe_tokenizer *t = text ? moe_tokenizer_parse(text, strlen(text), kind) : NULL;
    free(text);
    json_decref(base);
    json_decref(k);
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *root = getenv("MOEFLOW_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof(path), "%s/models/pycode-moe-18m", root ? root : MOEFLOW_SOURCE_DIR_DEFAULT);
    real = moe_tokenizer_load_dir(path);
    qwen2 = load_kind(root ? root : MOEFLOW_SOURCE_DIR_DEFAULT, "valid-qwen2-nfc.json");
    snprintf(path, sizeof(path), "%s/tests/fixtures/tokenizer/spm-legacy.json",
             root ? root : MOEFLOW_SOURCE_DIR_DEFAULT);
    spm = moe_tokenizer_load(path);
    if (!real || !qwen2 || !spm) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", moe_last_error());
        exit(1);
    }
    return 0;
}

static void round_trip(const struct moe_tokenizer *t, const char *text, size_t len, bool must_match)
{
    int *ids = NULL;
    size_t n = 0;
    if (moe_tokenizer_encode(t, text, len, &ids, &n) != MOE_OK)
        return;   /* invalid UTF-8: rejected, which is fine */
    char *back = NULL;
    size_t blen = 0;
    enum moe_status st = moe_tokenizer_decode(t, ids, n, &back, &blen);
    if (must_match && (st != MOE_OK || blen != len || memcmp(back, text, len))) {
        fprintf(stderr, "fuzz_tokenizer: round trip changed %zu bytes into %zu (%s)\n", len, blen,
                st ? moe_last_error() : "bytes differ");
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        char b[16];
        if (moe_tokenizer_token_bytes(t, ids[i], b, sizeof(b)) < 0) {
            fprintf(stderr, "fuzz_tokenizer: encode produced id %d that has no bytes\n", ids[i]);
            abort();
        }
    }
    free(back);
    free(ids);
}

/* Under the Qwen2 kind: ids decode to NFC(text); the pieces of NFC(text) cover it. */
static void check_qwen2(const char *text, size_t len)
{
    int *ids = NULL;
    size_t n = 0, nlen = 0, blen = 0, np = 0, sum = 0;
    char *norm = NULL, *back = NULL;
    size_t *lens = NULL;
    if (moe_tokenizer_encode(qwen2, text, len, &ids, &n) != MOE_OK)
        return;   /* invalid UTF-8 */
    if (moe_tok_nfc(text, len, &norm, &nlen) != MOE_OK || moe_tokenizer_decode(qwen2, ids, n, &back, &blen) != MOE_OK ||
        blen != nlen || memcmp(back, norm, nlen)) {
        fprintf(stderr, "fuzz_tokenizer: qwen2 kind: ids do not decode to the NFC of %zu bytes\n", len);
        abort();
    }
    if (moe_tokenizer_pretokenize(qwen2, norm, nlen, &lens, &np) != MOE_OK)
        abort();
    for (size_t i = 0; i < np; i++) {
        if (!lens[i]) {
            fprintf(stderr, "fuzz_tokenizer: qwen2 kind: empty piece %zu\n", i);
            abort();
        }
        sum += lens[i];
    }
    if (sum != nlen) {
        fprintf(stderr, "fuzz_tokenizer: qwen2 kind: pieces cover %zu of %zu bytes\n", sum, nlen);
        abort();
    }
    free(lens);
    free(back);
    free(norm);
    free(ids);
}

static bool contains(const char *s, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(s + i, needle, k))
            return true;
    return false;
}

/* SentencePiece kind: plain text round-trips; a prompt is BOS + the text's ids. */
static void check_spm(const char *text, size_t len)
{
    bool plain = !contains(text, len, "<s>") && !contains(text, len, "</s>") && !contains(text, len, "<unk>") &&
                 !contains(text, len, "\xe2\x96\x81");
    round_trip(spm, text, len, plain);
    int *ids = NULL, *pids = NULL;
    size_t n = 0, pn = 0;
    if (moe_tokenizer_encode(spm, text, len, &ids, &n) != MOE_OK)
        return;
    if (moe_tokenizer_encode_prompt(spm, text, len, &pids, &pn) != MOE_OK || pn != n + 1 || pids[0] != 1 ||
        memcmp(pids + 1, ids, n * sizeof(int))) {
        fprintf(stderr, "fuzz_tokenizer: spm kind: the prompt of %zu bytes is not <s> + its ids\n", len);
        abort();
    }
    free(ids);
    free(pids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    if (size && data[0] == '{') {
        struct moe_tokenizer *t = moe_tokenizer_parse(text, size, "fuzz");
        if (t) {
            static const char sample[] = "ab ab<s>a  'll x\n\t 12 \xc3\xa9";
            round_trip(t, sample, sizeof(sample) - 1, false);
            round_trip(t, text, size, false);
            (void)moe_tokenizer_token_id(t, "ab");
            moe_tokenizer_free(t);
        }
    }
    round_trip(real, text, size, true);
    check_qwen2(text, size);
    check_spm(text, size);
    return 0;
}
