/* The tokenizer.json kinds of other model families, on the bundled model's
 * vocabulary and merges: every line of
 * tests/fixtures/tokenizer/variant-vectors.jsonl (written by
 * gen_variant_vectors.py from Python's regex module and unicodedata, with a
 * BPE checked against the Hugging Face library's vectors) encodes to its ids,
 * the ids decode to the (NFC'd, where the variant normalizes) text, and the
 * pre-tokenizer cuts that text into the reference pieces:
 *   nfc-bytelevel  normalizer NFC + ByteLevel (GPT-NeoX, OLMoE)
 *   qwen2          normalizer NFC + Sequence[Split(Qwen2 regex), ByteLevel]
 *   qwen2-regex, gpt2-regex  the same regexes on the general matcher
 *   deepseek-v3    Sequence[] + Sequence[Split x 3, ByteLevel]
 *   deepseek-llm   Sequence[] + Sequence[Split x 6 (one `\s+$`), ByteLevel]; and a long run of spaces
 *                  before a digit cut within the matcher's budget
 *   cl100k, o200k  tiktoken-style Split regexes
 * Pre-tokenizers, normalizers and regexes of other kinds are refused by name. */
#include "model/tokenizer.h"
#include "model/tokenizer_nfc.h"
#include "tests/test_util.h"

#include <jansson.h>

/* The bundled tokenizer.json with its normalizer and pre_tokenizer replaced. */
static struct moe_tokenizer *variant(json_t *base, json_t *norm, json_t *pre)
{
    json_t *root = json_deep_copy(base);
    json_object_set(root, "normalizer", norm);
    json_object_set(root, "pre_tokenizer", pre);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    struct moe_tokenizer *t = moe_tokenizer_parse(s, strlen(s), "variant tokenizer.json");
    free(s);
    return t;
}

/* One vector: ids, decode, pieces.  Returns whether all matched. */
static bool check_vector(const struct moe_tokenizer *t, const char *name, bool nfc, json_t *v, size_t line)
{
    const char *text = json_string_value(json_object_get(v, "text"));
    size_t tlen = json_string_length(json_object_get(v, "text"));
    json_t *jids = json_object_get(v, "ids"), *jp = json_object_get(v, "pieces");
    int *ids = NULL;
    size_t n = 0;
    bool ok = moe_tokenizer_encode(t, text, tlen, &ids, &n) == MOE_OK && n == json_array_size(jids);
    for (size_t i = 0; ok && i < n; i++) ok = ids[i] == json_integer_value(json_array_get(jids, i));
    CHECK(ok, "%s line %zu: ids differ for \"%.60s\"", name, line, text);
    char *norm = NULL, *dec = NULL;
    size_t nlen = 0, dlen = 0;
    if (nfc) {
        REQUIRE(moe_tok_nfc(text, tlen, &norm, &nlen) == MOE_OK, "nfc: %s", moe_last_error());
    } else {
        REQUIRE((norm = malloc(tlen + 1)), "out of memory");
        memcpy(norm, text, tlen);
        nlen = tlen;
    }
    if (ok) {
        ok = moe_tokenizer_decode(t, ids, n, &dec, &dlen) == MOE_OK && dlen == nlen && !memcmp(dec, norm, nlen);
        CHECK(ok, "%s line %zu: ids do not decode to the text \"%.60s\"", name, line, text);
    }
    if (jp) {
        size_t *lens = NULL, np = 0, off = 0;
        bool same = moe_tokenizer_pretokenize(t, norm, nlen, &lens, &np) == MOE_OK && np == json_array_size(jp);
        for (size_t i = 0; same && i < np; i++) {
            json_t *p = json_array_get(jp, i);
            same = lens[i] == json_string_length(p) && !memcmp(norm + off, json_string_value(p), lens[i]);
            off += lens[i];
        }
        CHECK(same, "%s line %zu: pieces differ for \"%.60s\"", name, line, text);
        ok = ok && same;
        free(lens);
    }
    free(ids);
    free(norm);
    free(dec);
    return ok;
}

/* DeepSeek-LLM's `\s+$` Split over a run of 20000 spaces or no-break spaces then a digit: the
 * matcher reads the run once, not once for each place in it (20000 * 20000 / 2 characters, past its
 * budget of about a thousand steps a byte): the run is one piece, the digit another, and the text
 * encodes. */
static void check_long_run(const struct moe_tokenizer *t)
{
    static const char *const chars[] = {" ", "\xc2\xa0"};
    for (size_t c = 0; c < 2; c++) {
        size_t cl = strlen(chars[c]), n = 0;
        char *s = malloc(20000 * cl + 1);
        REQUIRE(s, "out of memory");
        for (int i = 0; i < 20000; i++, n += cl)
            memcpy(s + n, chars[c], cl);
        s[n++] = '1';
        size_t *lens = NULL, np = 0, n_ids = 0;
        int *ids = NULL;
        enum moe_status st = moe_tokenizer_pretokenize(t, s, n, &lens, &np);
        CHECK(st == MOE_OK && np == 2 && lens[0] == n - 1 && lens[1] == 1, "deepseek-llm: 20000 of \"%s\" then "
              "a digit: %s, %zu pieces", chars[c], st ? moe_last_error() : "cut", np);
        st = moe_tokenizer_encode(t, s, n, &ids, &n_ids);
        CHECK(st == MOE_OK && n_ids > 0, "deepseek-llm: encoding 20000 of \"%s\" then a digit: %s", chars[c],
              st ? moe_last_error() : "no ids");
        free(lens);
        free(ids);
        free(s);
    }
}

static void check_refused(json_t *base, const char *norm, const char *pre, const char *needle)
{
    json_t *jn = json_loads(norm, JSON_DECODE_ANY, NULL), *jp = json_loads(pre, 0, NULL);
    REQUIRE(jn && jp, "bad test JSON");
    struct moe_tokenizer *t = variant(base, jn, jp);
    CHECK(!t && strstr(moe_last_error(), needle), "%s / %s: %s", norm, pre, t ? "accepted" : moe_last_error());
    moe_tokenizer_free(t);
    json_decref(jn);
    json_decref(jp);
}

int main(void)
{
    char path[4096];
    json_error_t jerr;
    json_t *base = json_load_file(t_path(path, sizeof(path), "models/pycode-moe-18m/tokenizer.json"), 0, &jerr);
    REQUIRE(base, "%s: %s", path, jerr.text);
    char *buf;
    size_t len;
    REQUIRE(moe_read_file(t_path(path, sizeof(path), "tests/fixtures/tokenizer/variant-vectors.jsonl"), &buf, &len,
                          16u << 20) == MOE_OK, "%s", moe_last_error());
    struct moe_tokenizer *t = NULL;
    char name[64] = "";
    bool normalizes = false;
    size_t line = 0, n_vec = 0, n_ok = 0, n_pieces = 0, n_variants = 0;
    const char *text;
    size_t tl;
    for (size_t pos = 0; t_next_line(buf, len, &pos, &text, &tl);) {
        line++;
        json_t *v = json_loadb(text, tl, JSON_ALLOW_NUL, &jerr);
        REQUIRE(v, "line %zu: %s", line, jerr.text);
        if (json_object_get(v, "pre_tokenizer")) {
            moe_tokenizer_free(t);
            t = variant(base, json_object_get(v, "normalizer"), json_object_get(v, "pre_tokenizer"));
            REQUIRE(t, "line %zu: variant refused: %s", line, moe_last_error());
            snprintf(name, sizeof(name), "%s", json_string_value(json_object_get(v, "variant")));
            const char *nt = json_string_value(json_object_get(json_object_get(v, "normalizer"), "type"));
            normalizes = nt && !strcmp(nt, "NFC");
            n_variants++;
            if (!strcmp(name, "deepseek-llm"))
                check_long_run(t);
        } else {
            REQUIRE(t, "line %zu: a vector before its variant", line);
            n_vec++;
            n_pieces += json_object_get(v, "pieces") != NULL;
            n_ok += check_vector(t, name, normalizes, v, line);
        }
        json_decref(v);
    }
    printf("%zu variants, %zu of %zu vectors match (%zu with pieces)\n", n_variants, n_ok, n_vec, n_pieces);
    CHECK(n_variants == 8 && n_vec > 2700 && n_pieces > 2300, "the vector file is incomplete");
    moe_tokenizer_free(t);
    free(buf);

    check_refused(base, "{\"type\": \"NFD\"}", "{\"type\": \"ByteLevel\"}", "normalizer \"NFD\"");
    check_refused(base, "null", "{\"type\": \"Metaspace\"}", "ByteLevel decoder with a null or Metaspace");
    check_refused(base, "null", "{\"type\": \"Whitespace\"}", "pre_tokenizer \"Whitespace\"");
    static const struct {
        const char *regex, *needle;
    } bad_regex[] = {
        {"(?<=a)b", "unsupported group"},
        {"a*|b?", "can match the empty text"},
        {"\\\\p{Han}+", "unknown Unicode category"},
        {"\\\\bx", "back-references"},
        {"(a", "missing ')'"},
        {"[b-a]", "runs backwards"},
        {"(?i:\u00e9)", "non-ASCII"},
        {"(a?)+", "repeated group that can match the empty text"},
        {"a{2000}", "above 1000"},
        {"\\\\1", "unsupported escape"},
    };
    for (size_t i = 0; i < sizeof(bad_regex) / sizeof(bad_regex[0]); i++) {
        char pre[512];
        snprintf(pre, sizeof(pre), "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
                 "{\"Regex\": \"%s\"}, \"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", "
                 "\"use_regex\": false}]}", bad_regex[i].regex);
        check_refused(base, "null", pre, bad_regex[i].needle);
    }
    check_refused(base, "null", "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
                  "{\"String\": \" \"}, \"behavior\": \"Isolated\"}, {\"type\": \"ByteLevel\"}]}", "only a pattern");
    check_refused(base, "{\"type\": \"NFC\"}", "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", "
                  "\"pattern\": {\"Regex\": \"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| "
                  "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, \"behavior\": "
                  "\"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", \"add_prefix_space\": true, "
                  "\"use_regex\": false}]}", "add_prefix_space");

    /* normalized added tokens are matched in the NFC'd text: "cafe" + U+0301 finds
     * the token "caf\u00e9"; one whose content is not NFC is refused */
    json_t *nfc = json_pack("{s:s}", "type", "NFC"), *bl = json_pack("{s:s}", "type", "ByteLevel");
    json_t *with = json_deep_copy(base);
    json_array_append_new(json_object_get(with, "added_tokens"),
                          json_pack("{s:i, s:s, s:b, s:b}", "id", 8192, "content", "caf\u00e9", "normalized", 1,
                                    "special", 0));
    t = variant(with, nfc, bl);
    REQUIRE(t, "normalized added token: %s", moe_last_error());
    int *ids = NULL;
    size_t n = 0;
    CHECK(moe_tokenizer_encode(t, "x caf" "e\xcc\x81", 8, &ids, &n) == MOE_OK && n >= 2 && ids[n - 1] == 8192,
          "the normalized token was not found after NFC (%zu ids, last %d)", n, n ? ids[n - 1] : -1);
    free(ids);
    moe_tokenizer_free(t);
    json_object_set_new(json_array_get(json_object_get(with, "added_tokens"),
                                       json_array_size(json_object_get(with, "added_tokens")) - 1),
                        "content", json_string("\u212b"));
    t = variant(with, nfc, bl);
    CHECK(!t && strstr(moe_last_error(), "not in NFC"), "a normalized token not in NFC: %s",
          t ? "accepted" : moe_last_error());
    moe_tokenizer_free(t);
    json_decref(with);
    json_decref(nfc);
    json_decref(bl);
    json_decref(base);
    return t_result("test_tokenizer_variants");
}
