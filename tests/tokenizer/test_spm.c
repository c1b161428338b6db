/* SentencePiece-style tokenizer.json (the kind Llama and Mixtral publish):
 * every line of tests/fixtures/tokenizer/spm-vectors.jsonl (ids computed by
 * the Hugging Face library, gen_spm_vectors.js) encodes to its ids, decodes
 * back to the library's decoded text, and with the post-processor's BOS
 * where the line has "with_special"; decode-only lines (runs of <0xXX>
 * tokens that are not UTF-8 decode to one U+FFFD per byte) decode alike; and
 * every line's ids streamed one at a time give the same text (but for the
 * spaces a whole decode drops in front).  The three tokenizer files
 * (gen_spm_tokenizers.py) cover the Prepend/Replace normalizer with
 * ByteFallback + Fuse + Strip decoding (Mixtral's layout), the Metaspace
 * pre-tokenizer with prepend_scheme "first", and Metaspace with split and
 * "always", no byte fallback, as decoder too; spm-tiny.json is the first
 * layout with a vocabulary of 320 (the tiny Mixtral's).  Then the pieces of the split
 * kind, streaming bytes, what a streamed run of byte tokens gives out token by
 * token, and the combinations that are refused by name. */
#include "model/tokenizer.h"
#include "tests/test_util.h"

#include <jansson.h>

#define N_FILES 4
static const char *const files[N_FILES] = { "spm-legacy.json", "spm-metaspace.json", "spm-split.json",
                                            "spm-tiny.json" };

static struct moe_tokenizer *load(const char *name)
{
    char rel[256], path[4096];
    snprintf(rel, sizeof(rel), "tests/fixtures/tokenizer/%s", name);
    struct moe_tokenizer *t = moe_tokenizer_load(t_path(path, sizeof(path), rel));
    REQUIRE(t, "%s: %s", name, moe_last_error());
    return t;
}

static bool same_ids(const int *ids, size_t n, json_t *want)
{
    if (n != json_array_size(want))
        return false;
    for (size_t i = 0; i < n; i++)
        if (ids[i] != json_integer_value(json_array_get(want, i)))
            return false;
    return true;
}

/* ids streamed one at a time (moe_tokenizer_stream), then the end: their text, malloc'd, NUL-ended. */
static char *streamed(const struct moe_tokenizer *t, const int *ids, size_t n, size_t *len)
{
    struct moe_tok_stream x = { 0 };
    char *all = malloc(3 * 64 * (n + 1) + 1);
    REQUIRE(all, "out of memory");
    *len = 0;
    for (size_t i = 0; i <= n; i++) {
        size_t k;
        const char *s = i < n ? moe_tokenizer_stream(t, &x, ids[i], &k) : moe_tokenizer_stream_end(&x, &k);
        REQUIRE(s && k <= 3 * 64, "stream: %zu bytes", s ? k : 0);
        memcpy(all + *len, s, k);
        *len += k;
    }
    all[*len] = 0;
    moe_tok_stream_free(&x);
    return all;
}

/* Streamed, ids give the library's decoded text but for the spaces a whole decode drops in front
 * (Strip, or a Metaspace decoder's first token). */
static bool check_streamed(const struct moe_tokenizer *t, const int *ids, size_t n, json_t *jd, size_t line)
{
    size_t len, dl = json_string_length(jd), front = 0;
    char *s = streamed(t, ids, n, &len);
    while (front < len && len - front > dl && s[front] == ' ')
        front++;
    bool ok = len - front == dl && !memcmp(s + front, json_string_value(jd), dl);
    CHECK(ok, "line %zu: ids stream as \"%.60s\", not \"%.60s\"", line, s, json_string_value(jd));
    free(s);
    return ok;
}

/* A decode-only line (no "text"): its ids decode to the library's text. */
static bool check_decode(const struct moe_tokenizer *t, json_t *v, size_t line)
{
    json_t *ji = json_object_get(v, "ids"), *jd = json_object_get(v, "decoded");
    size_t n = json_array_size(ji), dlen = 0;
    int *ids = malloc(sizeof(int) * (n ? n : 1));
    REQUIRE(ids, "out of memory");
    for (size_t i = 0; i < n; i++) ids[i] = (int)json_integer_value(json_array_get(ji, i));
    char *dec = NULL;
    bool ok = moe_tokenizer_decode(t, ids, n, &dec, &dlen) == MOE_OK && dlen == json_string_length(jd) &&
              !memcmp(dec, json_string_value(jd), dlen);
    CHECK(ok, "%s line %zu: ids decode to \"%.60s\", not \"%.60s\"",
          json_string_value(json_object_get(v, "tokenizer")), line, dec ? dec : "", json_string_value(jd));
    ok = check_streamed(t, ids, n, jd, line) && ok;
    free(ids);
    free(dec);
    return ok;
}

static bool check_vector(const struct moe_tokenizer *t, json_t *v, size_t line)
{
    const char *name = json_string_value(json_object_get(v, "tokenizer"));
    json_t *jt = json_object_get(v, "text"), *jd = json_object_get(v, "decoded");
    json_t *js = json_object_get(v, "with_special");
    if (!jt)
        return check_decode(t, v, line);
    const char *text = json_string_value(jt);
    int *ids = NULL;
    size_t n = 0;
    bool ok = moe_tokenizer_encode(t, text, json_string_length(jt), &ids, &n) == MOE_OK &&
              same_ids(ids, n, json_object_get(v, "ids"));
    CHECK(ok, "%s line %zu: ids differ for \"%.60s\"", name, line, text);
    char *dec = NULL;
    size_t dlen = 0;
    if (ok) {
        ok = moe_tokenizer_decode(t, ids, n, &dec, &dlen) == MOE_OK && dlen == json_string_length(jd) &&
             !memcmp(dec, json_string_value(jd), dlen);
        CHECK(ok, "%s line %zu: \"%.60s\" decodes to \"%.60s\", not \"%.60s\"", name, line, text, dec ? dec : "",
              json_string_value(jd));
        ok = check_streamed(t, ids, n, jd, line) && ok;
    }
    free(ids);
    free(dec);
    if (js) {
        bool sp = moe_tokenizer_encode_prompt(t, text, json_string_length(jt), &ids, &n) == MOE_OK &&
                  same_ids(ids, n, js);
        CHECK(sp, "%s line %zu: ids with the template differ for \"%.60s\"", name, line, text);
        ok = ok && sp;
        free(ids);
    }
    return ok;
}

static void check_vectors(struct moe_tokenizer *const *tok)
{
    char path[4096];
    char *buf;
    size_t len;
    REQUIRE(moe_read_file(t_path(path, sizeof(path), "tests/fixtures/tokenizer/spm-vectors.jsonl"), &buf, &len,
                          16u << 20) == MOE_OK, "%s", moe_last_error());
    size_t line = 0, n_ok = 0, n_vec[N_FILES] = { 0 }, n_special = 0;
    const char *text;
    size_t tl;
    for (size_t pos = 0; t_next_line(buf, len, &pos, &text, &tl);) {
        line++;
        json_error_t jerr;
        json_t *v = json_loadb(text, tl, JSON_ALLOW_NUL, &jerr);
        REQUIRE(v, "line %zu: %s", line, jerr.text);
        const char *name = json_string_value(json_object_get(v, "tokenizer"));
        int f = 0;
        while (f < N_FILES && (!name || strcmp(name, files[f])))
            f++;
        REQUIRE(f < N_FILES, "line %zu: unknown tokenizer", line);
        n_vec[f]++;
        n_special += json_object_get(v, "with_special") != NULL;
        n_ok += check_vector(tok[f], v, line);
        json_decref(v);
    }
    free(buf);
    printf("%zu of %zu vectors match (%zu / %zu / %zu / %zu per file, %zu with the template)\n", n_ok, line,
           n_vec[0], n_vec[1], n_vec[2], n_vec[3], n_special);
    CHECK(n_vec[0] > 100 && n_vec[1] > 100 && n_vec[2] > 100 && n_vec[3] > 40 && n_special > 150,
          "the vector file is incomplete");
}

/* Metaspace with split: a piece starts at every space, in the text's own bytes. */
static void check_pieces(const struct moe_tokenizer *split, const struct moe_tokenizer *whole)
{
    size_t *lens = NULL, n = 0;
    const char *s = "ab  c d";
    CHECK(moe_tokenizer_pretokenize(split, s, strlen(s), &lens, &n) == MOE_OK && n == 4 && lens[0] == 2 &&
          lens[1] == 1 && lens[2] == 2 && lens[3] == 2, "split pieces of \"%s\": %zu", s, n);
    free(lens);
    CHECK(moe_tokenizer_pretokenize(whole, s, strlen(s), &lens, &n) == MOE_OK && n == 1 && lens[0] == strlen(s),
          "unsplit pieces of \"%s\": %zu", s, n);
    free(lens);
}

/* Streaming: a token's bytes keep its leading space (it continues a text);
 * only a whole decode drops the first one. */
static void check_stream(const struct moe_tokenizer *t)
{
    int *ids = NULL;
    size_t n = 0;
    REQUIRE(moe_tokenizer_encode(t, "a b", 3, &ids, &n) == MOE_OK && n >= 2, "encode: %s", moe_last_error());
    char buf[16];
    int k = moe_tokenizer_token_bytes(t, ids[n - 1], buf, sizeof(buf));
    CHECK(k >= 2 && buf[0] == ' ' && buf[1] == 'b', "the last token of \"a b\" streams as \"%.*s\"", k, buf);
    k = moe_tokenizer_token_bytes(t, moe_tokenizer_token_id(t, "<0x41>"), buf, sizeof(buf));
    CHECK(k == 1 && buf[0] == 'A', "<0x41> streams as %d bytes", k);
    free(ids);
}

/* A run of <0xXX> tokens streamed: what each token gives out, then the end.  The Hugging Face
 * library's ByteFallback decoder (tokenizers/src/decoders/byte_fallback.rs) gathers a run of byte
 * tokens and gives its bytes when they are UTF-8 as a whole, else one U+FFFD for each token of the
 * run (the decode-only lines of spm-vectors.jsonl, which it computed, are such runs); so a run is
 * held until it ends (a valid start may still be spoiled: <0x41><0xE2> is two U+FFFD, not "A" and
 * one), and goes out as U+FFFDs as soon as it cannot be UTF-8.  Maximal subparts (moe_utf8_lossy)
 * would give one U+FFFD for <0xE2><0x82>, and "A" and one for <0x41><0xE2>. */
static void check_stream_runs(const struct moe_tokenizer *t)
{
#define R "\xef\xbf\xbd"
    static const struct {
        const char *tok[6]; /* token strings; NULL: the end */
        const char *out[6];  /* what each gives out */
        const char *pend[6]; /* then moe_tokenizer_stream_pending: what the end would give as it is */
    } cases[] = {
        { { "<0xE2>", "<0x82>", "<0xAC>", NULL }, { "", "", "", "\xe2\x82\xac" }, { "", "", "\xe2\x82\xac", "" } },
        { { "<0xE2>", "<0x82>", NULL }, { "", "", R R }, { "", "", "" } },
        { { "<0xE2>", "<0x82>", "\xe2\x96\x81" "a", NULL }, { "", "", R R " a", "" }, { "", "", "", "" } },
        { { "<0x41>", "<0xE2>", NULL }, { "", "", R R }, { "A", "", "" } },
        { { "<0x41>", "<0x42>", "\xe2\x96\x81" "a", NULL }, { "", "", "AB a", "" }, { "A", "AB", "", "" } },
        { { "<0xE2>", "<0x41>", "<0x42>", "\xe2\x96\x81" "a", "<0x43>", NULL },
          { "", R R, R, " a", "", "C" }, { "", "", "", "", "C", "" } },
        { { "<0xC3>", "<0xA9>", "<0xFF>", "<0xC3>", "<0xA9>", NULL }, { "", "", R R R, R, R, "" },
          { "", "\xc3\xa9", "", "", "", "" } },
        { { "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "\xe2\x96\x81" "a", NULL },
          { "", "", "", "", "\xf0\x9f\x98\x80 a", "" }, { "", "", "", "\xf0\x9f\x98\x80", "", "" } },
        { { "<0xED>", "<0xA0>", NULL }, { "", R R, "" }, { "", "", "" } }, /* a surrogate's lead: not UTF-8 */
        { { "<0x0A>", "<0x0A>", "<0xE4>", NULL }, { "", "", "", R R R }, { "\n", "\n\n", "", "" } },
    };
#undef R
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct moe_tok_stream x = { 0 };
        for (int i = 0; i < 6; i++) {
            size_t k = 0;
            const char *s;
            if (cases[c].tok[i]) {
                int id = moe_tokenizer_token_id(t, cases[c].tok[i]);
                REQUIRE(id >= 0, "no token %s", cases[c].tok[i]);
                s = moe_tokenizer_stream(t, &x, id, &k);
            } else {
                s = moe_tokenizer_stream_end(&x, &k);
            }
            CHECK(s && k == strlen(cases[c].out[i]) && !memcmp(s, cases[c].out[i], k),
                  "run %zu, token %d (%s): \"%.*s\", want \"%s\"", c, i, cases[c].tok[i] ? cases[c].tok[i] : "end",
                  (int)k, s ? s : "", cases[c].out[i]);
            s = moe_tokenizer_stream_pending(&x, &k);
            CHECK(k == strlen(cases[c].pend[i]) && !memcmp(s, cases[c].pend[i], k),
                  "run %zu, token %d (%s): pending \"%.*s\", want \"%s\"", c, i,
                  cases[c].tok[i] ? cases[c].tok[i] : "end", (int)k, s, cases[c].pend[i]);
            if (!cases[c].tok[i])
                break;
        }
        CHECK(x.n_held == 0 && !x.run, "run %zu: something held after the end", c);
        moe_tok_stream_free(&x);
    }
}

/* The tokenizer file name with key set to the JSON value. */
static struct moe_tokenizer *edited(const char *name, const char *key, const char *value)
{
    char path[4096], rel[256];
    snprintf(rel, sizeof(rel), "tests/fixtures/tokenizer/%s", name);
    json_error_t jerr;
    json_t *root = json_load_file(t_path(path, sizeof(path), rel), 0, &jerr);
    REQUIRE(root, "%s: %s", path, jerr.text);
    json_t *v = json_loads(value, JSON_DECODE_ANY, &jerr);
    REQUIRE(v, "bad test JSON %s: %s", value, jerr.text);
    json_object_set_new(root, key, v);
    char *s = json_dumps(root, JSON_COMPACT);
    struct moe_tokenizer *t = moe_tokenizer_parse(s, strlen(s), "edited tokenizer.json");
    free(s);
    json_decref(root);
    return t;
}

static void check_refused(const char *name, const char *key, const char *value, const char *needle)
{
    struct moe_tokenizer *t = edited(name, key, value);
    CHECK(!t && strstr(moe_last_error(), needle), "%s with %s %s: %s", name, key, value,
          t ? "accepted" : moe_last_error());
    moe_tokenizer_free(t);
}

/* Llama 3's post-processor layout, Sequence[ByteLevel, TemplateProcessing]: the
 * template's BOS still goes first; a template that appends puts its ids last. */
static void check_templates(void)
{
    static const char bos[] = "{\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\", "
                              "\"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, {\"SpecialToken\": "
                              "{\"id\": \"</s>\", \"type_id\": 0}}], \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", "
                              "\"ids\": [1], \"tokens\": [\"<s>\"]}, \"</s>\": {\"id\": \"</s>\", \"ids\": [2], "
                              "\"tokens\": [\"</s>\"]}}}";
    char seq[1024];
    snprintf(seq, sizeof(seq), "{\"type\": \"Sequence\", \"processors\": [{\"type\": \"ByteLevel\"}, %s]}", bos);
    struct moe_tokenizer *t = edited("spm-metaspace.json", "post_processor", seq);
    REQUIRE(t, "Sequence post_processor: %s", moe_last_error());
    int *ids = NULL;
    size_t n = 0;
    CHECK(moe_tokenizer_encode_prompt(t, "a", 1, &ids, &n) == MOE_OK && n == 3 && ids[0] == 1 && ids[2] == 2,
          "\"a\" as a prompt: %zu ids", n);
    free(ids);
    moe_tokenizer_free(t);
}

int main(void)
{
    struct moe_tokenizer *tok[N_FILES];
    for (int f = 0; f < N_FILES; f++)
        tok[f] = load(files[f]);
    check_vectors(tok);
    check_pieces(tok[2], tok[1]);
    check_stream(tok[0]);
    check_stream_runs(tok[0]);
    check_stream_runs(tok[3]);
    check_templates();

    check_refused("spm-legacy.json", "decoder", "{\"type\": \"ByteLevel\"}", "ByteLevel decoder");
    check_refused("spm-legacy.json", "pre_tokenizer", "{\"type\": \"ByteLevel\"}", "Prepend/Replace normalizer");
    check_refused("spm-legacy.json", "normalizer", "{\"type\": \"Sequence\", \"normalizers\": [{\"type\": "
                  "\"Prepend\", \"prepend\": \"_\"}, {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, "
                  "\"content\": \"_\"}]}", "normalizer \"Sequence\"");
    check_refused("spm-legacy.json", "decoder", "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Fuse\"}, "
                  "{\"type\": \"Replace\", \"pattern\": {\"String\": \"\u2581\"}, \"content\": \" \"}]}",
                  "member 1 (Replace)");
    check_refused("spm-legacy.json", "decoder", "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Strip\", "
                  "\"content\": \" \", \"start\": 1, \"stop\": 0}]}", "member 0 (Strip)");
    check_refused("spm-legacy.json", "decoder", "{\"type\": \"Sequence\", \"decoders\": [{\"content\": \" \"}]}",
                  "member 0 (no type)");
    check_refused("spm-metaspace.json", "pre_tokenizer", "{\"type\": \"Metaspace\", \"replacement\": \"_\"}",
                  "replacement must be");
    check_refused("spm-metaspace.json", "pre_tokenizer", "{\"type\": \"Metaspace\", \"prepend_scheme\": \"once\"}",
                  "prepend_scheme must be");
    check_refused("spm-metaspace.json", "post_processor", "{\"type\": \"TemplateProcessing\", \"single\": "
                  "[{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}], \"special_tokens\": {\"<s>\": {\"id\": "
                  "\"<s>\", \"ids\": [1], \"tokens\": [\"<s>\"]}}}", "no {\"Sequence\"");
    check_refused("spm-metaspace.json", "post_processor", "{\"type\": \"TemplateProcessing\", \"single\": "
                  "[{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\"}}], "
                  "\"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [5000], \"tokens\": [\"<s>\"]}}}",
                  "token id 5000");
    check_refused("spm-metaspace.json", "post_processor", "{\"type\": \"RobertaProcessing\"}",
                  "post_processor \"RobertaProcessing\"");

    /* a normalized added token under the Prepend/Replace normalizer */
    char path[4096];
    json_t *root = json_load_file(t_path(path, sizeof(path), "tests/fixtures/tokenizer/spm-legacy.json"), 0, NULL);
    REQUIRE(root, "%s", path);
    json_object_set_new(json_array_get(json_object_get(root, "added_tokens"), 1), "normalized", json_true());
    char *s = json_dumps(root, JSON_COMPACT);
    struct moe_tokenizer *t = moe_tokenizer_parse(s, strlen(s), "edited tokenizer.json");
    CHECK(!t && strstr(moe_last_error(), "is normalized"), "normalized <s>: %s", t ? "accepted" : moe_last_error());
    moe_tokenizer_free(t);
    free(s);
    json_decref(root);

    for (int f = 0; f < N_FILES; f++)
        moe_tokenizer_free(tok[f]);
    return t_result("test_tokenizer_spm");
}
