/* libFuzzer target for the tokenizer.
 *
 * - An input starting with '{' is parsed as a tokenizer.json; when it parses,
 *   the input itself and a fixed sample are encoded with it and the ids decoded.
 * - Every input is encoded with the bundled model's tokenizer (loaded once);
 *   valid UTF-8 must encode, and its ids must decode to the same bytes.
 *
 * The bundled tokenizer is found through MOEFLOW_SOURCE_DIR (set by ctest),
 * else the source directory this was built from. */
#include "model/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static struct moe_tokenizer *real;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *root = getenv("MOEFLOW_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof(path), "%s/models/pycode-moe-18m", root ? root : MOEFLOW_SOURCE_DIR_DEFAULT);
    real = moe_tokenizer_load_dir(path);
    if (!real) {
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
    return 0;
}
