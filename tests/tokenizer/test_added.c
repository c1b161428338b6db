/* Added tokens: overlapping contents match leftmost-longest, the
 * non-normalized ones before the normalized ones in the gaps, a single_word
 * token inside a word is skipped whole, a token that starts in the spaces an
 * rstrip token took is found all the same (as tokenizers finds them); and matching does not slow down with
 * the number of added tokens sharing a first byte (20,000 of them starting
 * with '<' against 200 KB of '<'). */
#include "model/tokenizer.h"
#include "model/tokenizer_nfc.h"
#include "tests/test_util.h"

#include <jansson.h>

static json_t *load_json(const char *rel)
{
    char path[4096];
    json_error_t err;
    json_t *j = json_load_file(t_path(path, sizeof(path), rel), 0, &err);
    REQUIRE(j != NULL, "%s: %s", rel, err.text);
    return j;
}

static void add_token_strip(json_t *j, int id, const char *content, bool normalized, bool single_word,
                            bool lstrip, bool rstrip)
{
    json_array_append_new(json_object_get(j, "added_tokens"),
                          json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", id, "content", content,
                                    "single_word", single_word, "lstrip", lstrip, "rstrip", rstrip, "normalized",
                                    normalized, "special", 1));
}

static void add_token(json_t *j, int id, const char *content, bool normalized, bool single_word)
{
    add_token_strip(j, id, content, normalized, single_word, false, false);
}

static struct moe_tokenizer *parse_obj(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    struct moe_tokenizer *t;
    REQUIRE(s != NULL, "json_dumps");
    t = moe_tokenizer_parse(s, strlen(s), "test tokenizer.json");
    free(s);
    REQUIRE(t != NULL, "parse: %s", moe_last_error());
    return t;
}

#define ENCODE_EXPECT(t, text, ...)                                                              \
    do {                                                                                         \
        static const int want_[] = { __VA_ARGS__ };                                              \
        int *ids_ = NULL;                                                                        \
        size_t n_ = 0;                                                                           \
        enum moe_status st_ = moe_tokenizer_encode(t, text, strlen(text), &ids_, &n_);           \
        CHECK(st_ == MOE_OK && n_ == MOE_ARRAY_LEN(want_) && !memcmp(ids_, want_, sizeof(want_)), \
              "encode \"%s\": status %d, %zu ids (first %d, last %d)", text, st_, n_,            \
              n_ ? ids_[0] : -1, n_ ? ids_[n_ - 1] : -1);                                        \
        free(ids_);                                                                              \
    } while (0)

/* valid-tiny: a=0 b=1 Ġ=2 ab=3 Ġa=4 Ġab=5 <s>=6; '<', '>' and 's' alone have no token (dropped). */
static void test_overlaps(void)
{
    json_t *j = load_json("tests/tokenizer/corpus/valid-tiny.json");
    struct moe_tokenizer *t;
    add_token(j, 7, "<s><", false, false);
    add_token(j, 8, "s><s", false, false);
    add_token(j, 9, "ab<s>", true, false);  /* longer, but normalized: only in the gaps */
    add_token(j, 10, "<a", false, true);    /* single_word */
    add_token(j, 11, "aa", false, false);
    t = parse_obj(j);
    json_decref(j);

    ENCODE_EXPECT(t, "<s><s>", 7);             /* longest at the leftmost start; "s>" dropped */
    ENCODE_EXPECT(t, "<s>a", 6, 0);
    ENCODE_EXPECT(t, "a<s><<s><", 0, 7, 7);
    ENCODE_EXPECT(t, "ab<s>", 3, 6);           /* the non-normalized "<s>" wins over "ab<s>" */
    ENCODE_EXPECT(t, "aab<s>", 11, 1, 6);
    ENCODE_EXPECT(t, "b<aa", 1, 0, 0);         /* "<a" inside a word: skipped whole, "aa" in it too */
    ENCODE_EXPECT(t, " <a b", 2, 10, 2, 1);    /* "<a" between spaces */
    /* a word character is \w (Alphabetic, marks, Nd, Pc, Join_Control), as tokenizers tests it: not
     * superscript two (No), but a combining acute (Mn), an undertie (Pc) and a circled A (So, Alphabetic) */
    ENCODE_EXPECT(t, "\xc2\xb2<a b", 10, 2, 1);
    ENCODE_EXPECT(t, "\xcc\x81<a b", 0, 2, 1);
    ENCODE_EXPECT(t, "\xe2\x80\xbf<a b", 0, 2, 1);
    ENCODE_EXPECT(t, "<a\xe2\x92\xb6 b", 0, 2, 1);
    moe_tokenizer_free(t);

    /* Only normalized tokens: matched in the first pass's gaps all the same. */
    j = load_json("tests/tokenizer/corpus/valid-tiny.json");
    json_array_clear(json_object_get(j, "added_tokens"));
    add_token(j, 6, "<s>", true, false);
    add_token(j, 7, "<s><", true, false);
    t = parse_obj(j);
    json_decref(j);
    ENCODE_EXPECT(t, "a<s><s>b", 0, 7, 1);
    moe_tokenizer_free(t);
}

/* The Hugging Face library finds the added tokens in the text first and only then strips the spaces
 * around each: a token that starts in the spaces an rstrip token took is still found, and what
 * follows is encoded from that token's end (valid-tiny as above). */
static void test_strip_then_match(void)
{
    json_t *j = load_json("tests/tokenizer/corpus/valid-tiny.json");
    struct moe_tokenizer *t;
    add_token_strip(j, 7, "<r>", false, false, false, true);
    add_token(j, 8, " a", false, false);
    add_token(j, 9, " ", true, false);
    add_token_strip(j, 10, "<l>", false, false, true, false);
    t = parse_obj(j);
    json_decref(j);
    ENCODE_EXPECT(t, "<r>b", 7, 1);
    ENCODE_EXPECT(t, "<r>   b", 7, 1);        /* the spaces go with "<r>": none left for " " */
    ENCODE_EXPECT(t, "<r> a b", 7, 8, 9, 1);  /* " a" starts in the space "<r>" took */
    ENCODE_EXPECT(t, "<r> <l>", 7, 10);
    ENCODE_EXPECT(t, "<r>  <l>a", 7, 10, 0);
    moe_tokenizer_free(t);
}

static void test_many_shared_first_byte(void)
{
    char path[4096];
    json_t *j = load_json("models/pycode-moe-18m/tokenizer.json");
    struct moe_tokenizer *plain = moe_tokenizer_load_dir(t_path(path, sizeof(path), "models/pycode-moe-18m"));
    struct moe_tokenizer *t;
    size_t n = 200000, n_a = 0, n_b = 0;
    char *text = malloc(n), tok[32];
    int *a = NULL, *b = NULL;
    double t0, dt;
    uint64_t steps;

    REQUIRE(plain && text, "load: %s", moe_last_error());
    for (int i = 0; i < 20000; i++) {
        snprintf(tok, sizeof(tok), "<|extra_%d|>", i);
        add_token(j, 8192 + i, tok, false, false);
    }
    t = parse_obj(j);
    json_decref(j);
    memset(text, '<', n);
    t0 = moe_now();
    steps = moe_tok_steps;
    REQUIRE(moe_tokenizer_encode(t, text, n, &a, &n_a) == MOE_OK, "%s", moe_last_error());
    steps = moe_tok_steps - steps;
    dt = moe_now() - t0;
    REQUIRE(moe_tokenizer_encode(plain, text, n, &b, &n_b) == MOE_OK, "%s", moe_last_error());
    CHECK(n_a == n_b && n_a && !memcmp(a, b, n_a * sizeof(int)), "ids differ from the plain tokenizer's");
    /* One trie step a byte: a walk on through every token that starts with '<' would be 20,000. */
    CHECK(steps <= n, "200 KB of '<' with 20,000 added tokens starting with '<' took %llu trie steps",
          (unsigned long long)steps);
    printf("200 KB of '<', 20,000 added tokens starting with '<': %llu trie steps, %.3f s\n",
           (unsigned long long)steps, dt);

    memcpy(text + 1000, "<|extra_19999|>", 15);
    memcpy(text + 5000, "<|extra_1|><|extra_12|>", 23);
    free(a);
    REQUIRE(moe_tokenizer_encode(t, text, 6000, &a, &n_a) == MOE_OK, "%s", moe_last_error());
    {
        int found[3] = { 0 }, k = 0;
        for (size_t i = 0; i < n_a; i++)
            if (a[i] >= 8192 && k < 3) found[k++] = a[i];
        CHECK(k == 3 && found[0] == 8192 + 19999 && found[1] == 8193 && found[2] == 8192 + 12,
              "added tokens found: %d %d %d", found[0], found[1], found[2]);
    }
    free(a);
    free(b);
    free(text);
    moe_tokenizer_free(t);
    moe_tokenizer_free(plain);
}

int main(void)
{
    test_overlaps();
    test_strip_then_match();
    test_many_shared_first_byte();
    return t_result("test_tokenizer_added");
}
