/* Tokenizer error handling and behaviour on small hand-made tokenizers:
 * invalid UTF-8 and out-of-range ids are clear errors; every malformed
 * tokenizer.json in tests/tokenizer/corpus/bad-*.json is rejected with a
 * message naming the problem; merge ranks (a "#version" line skipped), added
 * tokens (lstrip/rstrip), unk fusing and dropped characters behave as in
 * Hugging Face tokenizers; 100 KB of text encodes and decodes back exactly. */
#include "model/tokenizer.h"
#include "tests/test_util.h"

static struct moe_tokenizer *load_rel(const char *rel)
{
    char path[4096];
    return moe_tokenizer_load(t_path(path, sizeof(path), rel));
}

static bool ids_eq(const int *got, size_t n, const int *want, size_t m)
{
    return n == m && (n == 0 || !memcmp(got, want, n * sizeof(int)));
}

#define ENCODE_EXPECT(t, text, ...)                                                              \
    do {                                                                                         \
        static const int want_[] = { __VA_ARGS__ };                                              \
        int *ids_ = NULL;                                                                        \
        size_t n_ = 0;                                                                           \
        enum moe_status st_ = moe_tokenizer_encode(t, text, strlen(text), &ids_, &n_);           \
        CHECK(st_ == MOE_OK && ids_eq(ids_, n_, want_, MOE_ARRAY_LEN(want_)),                    \
              "encode \"%s\": status %d, %zu ids (first %d)", text, st_, n_, n_ ? ids_[0] : -1); \
        free(ids_);                                                                              \
    } while (0)

static void test_malformed(void)
{
    static const struct {
        const char *file;
        const char *phrase;   /* must appear in the error message */
    } cases[] = {
        { "bad-not-json.json", "not valid JSON at line 1" },
        { "bad-truncated.json", "not valid JSON" },
        { "bad-top-array.json", "top level must be a JSON object" },
        { "bad-missing-model.json", "\"model\" is missing" },
        { "bad-missing-merges.json", "model.merges is missing" },
        { "bad-merge-unknown-token.json", "model.merges[1] names token \"x\"" },
        { "bad-merge-unknown-result.json", "merged token \"ba\" is not in model.vocab" },
        { "bad-merge-format.json", "model.merges[0]" },
        { "bad-dup-key-vocab.json", "duplicate" },
        { "bad-dup-key-top.json", "duplicate" },
        { "bad-vocab-id.json", "model.vocab[\"b\"]" },
        { "bad-vocab-dup-id.json", "gives id 0 to both" },
        { "bad-model-type.json", "\"WordPiece\" is not supported" },
        { "bad-normalizer.json", "normalizer \"NFKC\" is not supported" },
        { "bad-added-id.json", "added_tokens[0] \"<s>\" has id 2" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(cases); i++) {
        char rel[256];
        snprintf(rel, sizeof(rel), "tests/tokenizer/corpus/%s", cases[i].file);
        moe_error_clear();
        struct moe_tokenizer *t = load_rel(rel);
        CHECK(!t, "%s: loaded, should be rejected", cases[i].file);
        moe_tokenizer_free(t);
        CHECK(strstr(moe_last_error(), cases[i].phrase), "%s: message \"%s\" lacks \"%s\"", cases[i].file,
              moe_last_error(), cases[i].phrase);
        CHECK(strstr(moe_last_error(), cases[i].file), "%s: message \"%s\" does not name the file",
              cases[i].file, moe_last_error());
    }
    /* in-memory parse, a missing file, empty input */
    struct moe_tokenizer *t = moe_tokenizer_parse("{}", 2, "inline");
    CHECK(!t && strstr(moe_last_error(), "inline: \"model\" is missing"), "{}: %s", moe_last_error());
    t = moe_tokenizer_parse("", 0, "empty");
    CHECK(!t && strstr(moe_last_error(), "not valid JSON"), "empty: %s", moe_last_error());
    t = moe_tokenizer_load("/nonexistent/dir/tokenizer.json");
    CHECK(!t && strstr(moe_last_error(), "/nonexistent/dir/tokenizer.json"), "missing file: %s",
          moe_last_error());
    t = moe_tokenizer_load_dir("/nonexistent/dir");
    CHECK(!t && strstr(moe_last_error(), "/nonexistent/dir/tokenizer.json"), "missing dir: %s", moe_last_error());
}

static void test_tiny(void)
{
    struct moe_tokenizer *t = load_rel("tests/tokenizer/corpus/valid-tiny.json");
    REQUIRE(t, "valid-tiny: %s", moe_last_error());
    CHECK(moe_tokenizer_vocab_size(t) == 7, "vocab size %d", moe_tokenizer_vocab_size(t));
    CHECK(moe_tokenizer_token_id(t, "Ġab") == 5 && moe_tokenizer_token_id(t, "<s>") == 6 &&
          moe_tokenizer_token_id(t, "zz") == -1, "token_id");
    /* " ab": "a b" (rank 0) merges before "Ġ a" (rank 1), then "Ġ ab" (rank 3) */
    ENCODE_EXPECT(t, "ab ab<s>a", 3, 5, 6, 0);
    ENCODE_EXPECT(t, "b a", 1, 4);
    ENCODE_EXPECT(t, "<s><s>", 6, 6);
    ENCODE_EXPECT(t, "abc", 3);          /* 'c' has no token and there is no unk: dropped */
    int *ids = (int *)1;
    size_t n = 7;
    CHECK(moe_tokenizer_encode(t, "", 0, &ids, &n) == MOE_OK && n == 0, "empty text");
    free(ids);

    char *text = NULL;
    size_t len = 99;
    static const int dec_ids[] = { 5, 6, 2, 0 };
    CHECK(moe_tokenizer_decode(t, dec_ids, 4, &text, &len) == MOE_OK && len == 8 && !strcmp(text, " ab<s> a"),
          "decode: \"%s\"", text ? text : "(null)");
    free(text);
    CHECK(moe_tokenizer_decode(t, NULL, 0, &text, &len) == MOE_OK && len == 0 && text && !text[0], "empty decode");
    free(text);

    /* out-of-range ids */
    static const int bad_hi[] = { 0, 7 }, bad_neg[] = { -1 };
    text = NULL;
    CHECK(moe_tokenizer_decode(t, bad_hi, 2, &text, &len) == MOE_ERANGE && !text, "id 7 accepted");
    CHECK(strstr(moe_last_error(), "token id 7 at position 1 is out of range"), "message: %s", moe_last_error());
    CHECK(moe_tokenizer_decode(t, bad_neg, 1, &text, &len) == MOE_ERANGE, "id -1 accepted");
    CHECK(strstr(moe_last_error(), "token id -1"), "message: %s", moe_last_error());
    char b[8];
    CHECK(moe_tokenizer_token_bytes(t, 7, b, sizeof(b)) == -1 && moe_tokenizer_token_bytes(t, -3, b, 8) == -1,
          "token_bytes of bad ids");
    CHECK(moe_tokenizer_token_bytes(t, 5, NULL, 0) == 3, "token_bytes length query");
    CHECK(moe_tokenizer_token_bytes(t, 5, b, 2) == 3 && b[0] == ' ' && b[1] == 'a', "token_bytes truncation");
    moe_tokenizer_free(t);

    t = load_rel("tests/tokenizer/corpus/valid-unk-strip.json");
    REQUIRE(t, "valid-unk-strip: %s", moe_last_error());
    /* lstrip/rstrip absorb the spaces around <s>; unknown chars become <unk>, runs fused */
    ENCODE_EXPECT(t, "ac d <s> b", 0, 3, 2, 3, 6, 1);
    ENCODE_EXPECT(t, "acd  <s>", 0, 3, 6);
    moe_tokenizer_free(t);

    /* merges in the "a b" form may start with merges.txt's "#version: 0.2" line, which tokenizers skips
     * (convert_merges_to_hashmap): no merge, where it was refused as naming tokens not in the vocab */
    static const char versioned[] =
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2},"
        " \"merges\": [\"#version: 0.2\", \"a b\"]}, \"pre_tokenizer\": {\"type\": \"ByteLevel\","
        " \"add_prefix_space\": false, \"trim_offsets\": true}, \"decoder\": null}";
    t = moe_tokenizer_parse(versioned, strlen(versioned), "versioned merges");
    REQUIRE(t, "#version line: %s", moe_last_error());
    ENCODE_EXPECT(t, "ab", 2);
    moe_tokenizer_free(t);

    /* byte-level BPE with byte fallback and unk: as tokenizers' merge_word, an unk waits for the
     * next char found in the vocab (or the piece's end), so fallback tokens of the chars between
     * come before it, and unk chars after them still fuse with it ('d', 'Ġ' have no token, 'c' has
     * its <0x63>) */
    static const char fallback_unk[] =
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"<0x63>\": 1, \"<unk>\": 2}, \"merges\": [],"
        " \"unk_token\": \"<unk>\", \"byte_fallback\": true, \"fuse_unk\": %s}, \"pre_tokenizer\": {\"type\":"
        " \"ByteLevel\", \"add_prefix_space\": false}, \"decoder\": {\"type\": \"ByteLevel\"}}";
    char json[512];
    snprintf(json, sizeof(json), fallback_unk, "true");
    t = moe_tokenizer_parse(json, strlen(json), "byte fallback and unk");
    REQUIRE(t, "byte fallback and unk: %s", moe_last_error());
    ENCODE_EXPECT(t, "dcd a", 1, 2, 2, 0);
    ENCODE_EXPECT(t, "ddc", 1, 2);
    ENCODE_EXPECT(t, "cdc", 1, 1, 2);
    moe_tokenizer_free(t);
    snprintf(json, sizeof(json), fallback_unk, "false");
    t = moe_tokenizer_parse(json, strlen(json), "byte fallback and unk, not fused");
    REQUIRE(t, "byte fallback and unk, not fused: %s", moe_last_error());
    ENCODE_EXPECT(t, "dcd a", 1, 2, 2, 2, 0);
    ENCODE_EXPECT(t, "ddc", 2, 1, 2);
    moe_tokenizer_free(t);
}

static void test_utf8_and_size(void)
{
    char path[4096];
    struct moe_tokenizer *t = moe_tokenizer_load_dir(t_path(path, sizeof(path), "models/pycode-moe-18m"));
    REQUIRE(t, "%s", moe_last_error());
    static const struct {
        const char *s;
        size_t off;
    } bad[] = {
        { "abc\xff", 3 },                /* never valid */
        { "x\xc3", 1 },                  /* truncated 2-byte */
        { "\xc0\xaf", 0 },               /* overlong '/' */
        { "ok \xed\xa0\x80", 3 },        /* UTF-16 surrogate */
        { "\xf4\x90\x80\x80", 0 },       /* above U+10FFFF */
        { "\xe2\x82 x", 0 },             /* truncated 3-byte */
        { "\x80", 0 },                   /* lone continuation */
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(bad); i++) {
        int *ids = (int *)1;
        size_t n = 5;
        enum moe_status st = moe_tokenizer_encode(t, bad[i].s, strlen(bad[i].s), &ids, &n);
        char want[64];
        snprintf(want, sizeof(want), "byte offset %zu", bad[i].off);
        CHECK(st == MOE_EINVAL && !ids && n == 0, "bad UTF-8 case %zu accepted", i);
        CHECK(strstr(moe_last_error(), "not valid UTF-8") && strstr(moe_last_error(), want),
              "case %zu: message \"%s\"", i, moe_last_error());
    }
    /* a NUL byte inside the text is valid UTF-8 */
    int *ids = NULL;
    size_t n = 0;
    CHECK(moe_tokenizer_encode(t, "a\0b", 3, &ids, &n) == MOE_OK && n == 3, "embedded NUL");
    free(ids);

    /* 100 KB of mixed code and Unicode: encode, decode back, print the time */
    char rel_py[4096], rel_uni[4096];
    char *py, *uni;
    size_t npy, nuni;
    REQUIRE(moe_read_file(t_path(rel_py, sizeof(rel_py), "tests/tokenizer/corpus/text-python.txt"), &py, &npy,
                          1 << 20) == MOE_OK, "%s", moe_last_error());
    REQUIRE(moe_read_file(t_path(rel_uni, sizeof(rel_uni), "tests/tokenizer/corpus/text-unicode.txt"), &uni,
                          &nuni, 1 << 20) == MOE_OK, "%s", moe_last_error());
    size_t cap = 100 * 1024, len = 0;
    char *big = malloc(cap + npy + nuni);
    REQUIRE(big, "oom");
    for (int k = 0; len < cap; k++) {
        memcpy(big + len, k % 4 == 3 ? uni : py, k % 4 == 3 ? nuni : npy);
        len += k % 4 == 3 ? nuni : npy;
    }
    double t0 = moe_now();
    enum moe_status st = moe_tokenizer_encode(t, big, len, &ids, &n);
    double dt = moe_now() - t0;
    CHECK(st == MOE_OK, "100 KB encode: %s", moe_last_error());
    char *back = NULL;
    size_t blen = 0;
    CHECK(st == MOE_OK && moe_tokenizer_decode(t, ids, n, &back, &blen) == MOE_OK && blen == len &&
          !memcmp(back, big, len), "100 KB round trip");
    printf("encode %zu bytes -> %zu ids: %.2f ms\n", len, n, dt * 1e3);
    free(back);
    free(ids);
    free(big);
    free(py);
    free(uni);
    moe_tokenizer_free(t);
}

int main(void)
{
    test_malformed();
    test_tiny();
    test_utf8_and_size();
    return t_result("test_tokenizer_errors");
}
