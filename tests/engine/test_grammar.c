/* GBNF grammars (engine/grammar.c) through the output recognizer: what compiles and what is
 * refused (with the line and column), texts the grammar derives accepted whole, in pieces and cut
 * inside a character, texts it does not refused at the byte where they go wrong, the end of
 * sequence allowed exactly where the text is a whole sentence, and on the bundled model's
 * vocabulary a mask equal to feeding every token on its own. */
#include "common/moe.h"
#include "engine/json_guide.h"
#include "model/tokenizer.h"
#include "tests/engine/mask_ref.h"
#include "tests/test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static struct moe_json_schema *grammar(const char *text)
{
    struct moe_json_schema *sc = NULL;
    enum moe_status st = moe_json_schema_grammar(text, strlen(text), &sc);
    REQUIRE(st == MOE_OK && sc, "%s: refused: %s", text, moe_last_error());
    REQUIRE(moe_json_schema_raw(sc), "a grammar's output is not raw text");
    return sc;
}

/* t is a sentence (want -1 or -2), accepted the same fed in pieces of 2..7 bytes through copies;
 * each proper prefix that is not itself a sentence is a beginning. */
static void good(const struct moe_json_schema *sc, const char *t, int want)
{
    size_t n = strlen(t);
    int v = feed_verdict(sc, t, n);
    CHECK(v == want, "'%s': verdict %d, want %d", t, v, want);
    for (size_t k = 2; k <= 7; k++) {
        struct moe_json_state s, c;
        moe_json_init(&s, sc);
        bool ok = true;
        for (size_t i = 0; i < n && ok; i += k) {
            moe_json_copy(&c, &s);
            ok = moe_json_feed(&c, t + i, i + k < n ? k : n - i);
            moe_json_copy(&s, &c);
        }
        CHECK(ok && moe_json_may_end(&s), "'%s': refused in pieces of %zu", t, k);
    }
    for (size_t j = 1; j < n; j++) {
        int p = feed_verdict(sc, t, j);
        CHECK(p <= -2, "'%s': its first %zu bytes: verdict %d", t, j, p);
    }
}

static void bad(const struct moe_json_schema *sc, const char *t, int at)
{
    int v = feed_verdict(sc, t, strlen(t));
    CHECK(v == at, "'%s': verdict %d, want refused at byte %d", t, v, at);
}

static void refused(const char *text, const char *needle)
{
    struct moe_json_schema *sc = NULL;
    enum moe_status st = moe_json_schema_grammar(text, strlen(text), &sc);
    CHECK(st == MOE_EINVAL && !sc && strstr(moe_last_error(), needle), "'%s': status %d, message '%s', want '%s'",
          text, st, moe_last_error(), needle);
    moe_json_schema_unref(sc);
}

static void test_refused(void)
{
    refused("rot ::= \"a\"", "line 1 column 1: no rule 'root'");
    refused("root ::= item\n", "line 1 column 10: rule 'item' is used but never defined");
    refused("root ::= expr\nexpr ::= expr \"+\" num | num\nnum ::= [0-9]+", "line 2 column 1: left recursion");
    refused("root ::= a\na ::= b? \"x\"\nb ::= a", "(a -> b -> a)");
    refused("root ::= (\"a\"?)* \"b\"", "line 1 column 10: this repetition repeats something that can match no text");
    refused("root ::= x*\nx ::= \"\" | \"y\"", "repeats something that can match no text");
    refused("root ::= \"a\"\nroot ::= \"b\"", "line 2 column 1: rule 'root' is defined twice");
    refused("root ::= \"a\\q\"", "line 1 column 12: unknown escape '\\q'");
    refused("root ::= \"\\x4\"", "needs 2 hexadecimal digits");
    refused("root ::= \"\\ud800\"", "U+D800 is not a Unicode character");
    refused("root ::= \"abc", "line 1 column 10: a literal without its closing '\"'");
    refused("root ::= [a-z", "a character class without its closing ']'");
    refused("root ::= [z-a]", "line 1 column 12: the range's end U+61 is below its start U+7A");
    refused("root ::= \"a\"{3,2}", "maximum 2 is below its minimum 3");
    refused("root ::= \"a\"{1001}", "a repetition count above 1000");
    refused("root ::= \"a\"{2", "expected '}'");
    refused("root \"a\"", "line 1 column 6: expected '::=' after the rule name 'root'");
    refused("root ::= (\"a\" \"b\"", "expected ')' to close the group");
    refused("root ::= \"a\")", "a ')' that closes no group");
    refused("root ::= \"a\" ; ", "line 1 column 14: unexpected ';'");
    refused("root ::= \"a\" b ::= \"c\"", "rule 'b' begins on the line of another rule");
    refused("root ::= \"\xff\"", "not UTF-8");
    refused("::= \"a\"", "expected a rule name");
    refused("root ::= \"\"*", "a repetition of an empty literal");
    refused("root ::= \"a\" []", "line 1 column 14: a character class that matches no character");
    refused("root ::= [^\\x00-\\U0010FFFF]", "matches no character");
    refused("root ::= [^\\x00-\\ud7ff\\ue000-\\U0010FFFF]", "matches no character"); /* surrogates only */
}

static const char *arith = "# sums and differences of numbers, with parentheses\n"
                           "root ::= expr\n"
                           "expr ::= term ((\"+\" | \"-\") term)*\n"
                           "term ::= num\n"
                           "       | \"(\" ws expr ws \")\"   # a line that begins with '|' goes on\n"
                           "num  ::= [0-9]+\n"
                           "ws   ::= [ \\t]{0,2}\n";

static void test_arith(void)
{
    struct moe_json_schema *sc = grammar(arith);
    good(sc, "1+2", -2);
    good(sc, "(1+2)-30", -2);
    good(sc, "((7))", -2);
    good(sc, "( 4-( 5\t\t) )", -2);
    bad(sc, "+1", 0);
    bad(sc, "1++", 2);
    bad(sc, "(   1)", 3); /* two spaces at most */
    bad(sc, "(1))", 3);
    CHECK(feed_verdict(sc, "(1+", 3) == -3, "'(1+' is a beginning only");
    moe_json_schema_unref(sc);
}

static void test_classes_and_unicode(void)
{
    struct moe_json_schema *sc = grammar("root ::= [α-ω]+ \"!\" [^a-z\"\\\\]? .");
    good(sc, "αβγ!Xé", -1);
    good(sc, "ω!\xf0\x9f\x99\x82", -2); /* an emoji: the any-character, or the class with one to come */
    good(sc, "ω!Ab", -1);
    bad(sc, "a!", 0);
    bad(sc, "\xe2\x82\xac", 0);   /* U+20AC: its lead byte already cannot begin a Greek letter */
    bad(sc, "\xce\x91", 1);       /* U+0391, capital alpha: the second byte decides */
    good(sc, "α!q", -1);  /* 'q' is outside the class: the any-character */
    bad(sc, "α!qq", 4);
    moe_json_schema_unref(sc);
    sc = grammar("root ::= \"\\x41\\u00e9\\U0001F642\\n\\t\\\"\\[\\]\\-\\\\\"");
    good(sc, "A\xc3\xa9\xf0\x9f\x99\x82\n\t\"[]-\\", -1);
    bad(sc, "A\xc3\xa8", 2);
    CHECK(feed_verdict(sc, "A\xc3", 2) == -3, "half of a character: a beginning");
    moe_json_schema_unref(sc);
}

static void test_repetition(void)
{
    struct moe_json_schema *sc = grammar("root ::= [a-z]{2,3} \";\" \"ab\"{2} \"x\"{1,} \"y\"?");
    good(sc, "ab;ababx", -2);
    good(sc, "abc;ababxxy", -1);
    bad(sc, "a;", 1);
    bad(sc, "abcd", 3);
    bad(sc, "ab;abx", 5);
    moe_json_schema_unref(sc);
    /* ambiguous: two loops over the same class */
    sc = grammar("root ::= [a-z]* [a-z]* \".\"");
    good(sc, "abc.", -1);
    good(sc, ".", -1);
    moe_json_schema_unref(sc);
    /* the same text by two alternatives: one sentence */
    sc = grammar("root ::= (\"yes\" | \"y\" \"es\") | \"no\"");
    good(sc, "yes", -1);
    good(sc, "no", -1);
    bad(sc, "yo", 1);
    moe_json_schema_unref(sc);
}

/* A JSON grammar written in GBNF: nested values, and nesting deep enough to use the state. */
static const char *json_gbnf = "root   ::= object\n"
                               "value  ::= object | array | string | number | (\"true\" | \"false\" | \"null\")\n"
                               "object ::=\n"
                               "  \"{\" ws ( string \":\" ws value (\",\" ws string \":\" ws value)* )? \"}\"\n"
                               "array  ::= \"[\" ws ( value (\",\" ws value)* )? \"]\"\n"
                               "string ::= \"\\\"\" ( [^\"\\\\\\x00-\\x1f] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4}) )* \"\\\"\"\n"
                               "number ::= \"-\"? ([0-9] | [1-9] [0-9]*) (\".\" [0-9]+)? ([eE] [-+]? [0-9]+)?\n"
                               "ws     ::= [ \\n]{0,4}\n";

static void test_json_grammar(void)
{
    struct moe_json_schema *sc = grammar(json_gbnf);
    good(sc, "{\"a\": [1, 2.5e3, \"x\\u00e9\\n\"], \"b\":{\"c\":null,\n \"d\":[true,false,[]]}}", -1);
    bad(sc, "{\"a\": 01}", 7);
    bad(sc, "{\"a\" : 1}", 4);
    /* 200 arrays inside one another: about a word of state per level */
    char deep[512] = "{\"k\":";
    size_t n = strlen(deep);
    for (int i = 0; i < 200; i++) deep[n++] = '[';
    for (int i = 0; i < 200; i++) deep[n++] = ']';
    deep[n++] = '}';
    deep[n] = 0;
    good(sc, deep, -1);
    moe_json_schema_unref(sc);
    /* past what one state holds: refused there (documented), not a crash */
    sc = grammar("root ::= \"(\" root \")\" | \"x\"");
    static char many[3000];
    memset(many, '(', sizeof(many));
    size_t over = moe_grammar_overflows();
    int v = feed_verdict(sc, many, sizeof(many));
    CHECK(v >= 1500 && v < (int)sizeof(many) && moe_grammar_overflows() == over + 1,
          "3000 open parentheses: refused at %d", v);
    moe_json_schema_unref(sc);
    /* an enumeration of 600 words: 600 stacks at its start */
    static char words[16384];
    strcpy(words, "root ::= (w \"; \")+\nw ::= \"w0\"");
    for (int i = 1; i < 600; i++) snprintf(words + strlen(words), sizeof(words) - strlen(words), " | \"w%d\"", i);
    sc = grammar(words);
    good(sc, "w599; w12; w0; ", -2);
    bad(sc, "w600", 3);
    bad(sc, "w12;w", 4);
    moe_json_schema_unref(sc);
}

static bool toy_eos(const void *ud, int id)
{
    (void)ud;
    return id == 3;
}

static void test_mask_toy(void)
{
    static const char *toks[] = { "ye", "s", "no", "</s>", "yes", "\xce", "\xb1", "x" };
    struct moe_token_bytes tb;
    toy_vocab(toks, 8, &tb);
    struct moe_json_schema *sc = grammar("root ::= (\"yes\" | \"no\" | \"α\") \"s\"*");
    float logits[8] = { 1, 2, 3, 4, 5, 6, 7, 8 }, out[8];
    struct moe_json_state s;
    moe_json_init(&s, sc);
    int n = moe_json_mask(&s, &tb, logits, 8, toy_eos, NULL, out);
    CHECK(n == 4 && !isinf(out[0]) && !isinf(out[2]) && !isinf(out[4]) && !isinf(out[5]) && isinf(out[3]) &&
          isinf(out[6]) && isinf(out[1]), "start: %d allowed", n);
    moe_json_take(&s, &tb, 5); /* half of alpha: only its second byte goes on */
    n = moe_json_mask(&s, &tb, logits, 8, toy_eos, NULL, out);
    CHECK(n == 1 && !isinf(out[6]), "inside a character: %d allowed", n);
    moe_json_take(&s, &tb, 6);
    n = moe_json_mask(&s, &tb, logits, 8, toy_eos, NULL, out);
    CHECK(n == 2 && !isinf(out[1]) && out[3] == 4, "a whole sentence that may go on: %d allowed, eos %g", n, out[3]);
    moe_json_schema_unref(sc);
    sc = grammar("root ::= \"no\"");
    moe_json_init(&s, sc);
    moe_json_take(&s, &tb, 2);
    CHECK(moe_json_done(&s), "\"no\" is whole and cannot go on");
    moe_json_schema_unref(sc);
    moe_token_bytes_free(&tb);
}

/* Characters above 127 in tokens: whole ones go on at once where every such character reads alike
 * (inside a string), a token that splits one is walked; the mask equals feeding every token on its
 * own in each state along a text. */
static void test_mask_high(void)
{
    static const char *toks[] = { "\"", "\xc3\xa9", "a\xc3\xa9", "\xc3\xa9" "a", "\xe6\x97\xa5\xe6\x9c\xac", "\xe6",
                                  "\x97\xa5", "a\"", "\xc3\xa9\"", "\\", "\xf0\x9f\x99\x82", "ab", "\xce\xb1",
                                  "\xce\xb1" "b" };
    enum { N = sizeof(toks) / sizeof(toks[0]) };
    struct moe_token_bytes tb;
    toy_vocab(toks, N, &tb);
    /* a string of anything but quotes and backslashes; one of Greek letters only (not uniform above
     * 127); one whose first character may be any letter above 127; one of ASCII letters (none above
     * 127 goes on); letters then Greek too */
    const char *gs[] = { "root ::= \"\\\"\" [^\"\\\\]* \"\\\"\"", "root ::= \"\\\"\" [α-ω]* \"\\\"\"",
                         "root ::= [^a-z\"]+ \"\\\"\"", "root ::= \"\\\"\" [a-z]* \"\\\"\"",
                         "root ::= \"\\\"\" [a-z] [a-zα-ω]*" };
    const char *text = "\"a\xc3\xa9\xe6\x97\xa5\"";
    float logits[N], out[N];
    for (int i = 0; i < N; i++) logits[i] = (float)(i + 1);
    int differ = 0, allowed = 0;
    for (size_t k = 0; k < MOE_ARRAY_LEN(gs); k++) {
        struct moe_json_schema *sc = grammar(gs[k]);
        for (size_t pre = 0; pre <= strlen(text); pre++) {
            struct moe_json_state s, c;
            moe_json_init(&s, sc);
            if (!moe_json_feed(&s, text, pre)) break;
            int n = moe_json_mask(&s, &tb, logits, N, NULL, NULL, out), m = 0;
            for (int id = 0; id < N; id++) {
                moe_json_copy(&c, &s);
                bool want = moe_json_feed(&c, tb.blob + tb.off[id], tb.off[id + 1] - tb.off[id]);
                m += want;
                differ += want != (out[id] == logits[id]);
            }
            CHECK(n == m, "grammar %zu after %zu bytes: %d allowed, %d by the reference", k, pre, n, m);
            allowed += n;
        }
        moe_json_schema_unref(sc);
    }
    CHECK(differ == 0 && allowed > 20, "%d verdicts differ from feeding each token (%d allowed in all)", differ,
          allowed);
    moe_token_bytes_free(&tb);
}

static void test_mask_vocab(void)
{
    struct mask_vocab mv;
    mask_vocab_open(&mv, 89);
    const char *grammars[] = {
        arith, json_gbnf,
        "root ::= \"def \" name \"(\" (name (\", \" name)*)? \"):\\n\" (\"    \" stmt \"\\n\"){1,3}\n"
        "name ::= [a-z_] [a-z_0-9]{0,11}\n"
        "stmt ::= \"return \" name | name \" = \" name | \"pass\"\n",
    };
    uint64_t rng = 777;
    int steps = 0, mismatches = 0;
    for (size_t k = 0; k < MOE_ARRAY_LEN(grammars); k++) {
        struct moe_json_schema *sc = grammar(grammars[k]);
        for (int walk = 0; walk < 4; walk++) {
            struct moe_json_state s;
            moe_json_init(&s, sc);
            for (int step = 0; step < 60 && !moe_json_done(&s); step++, steps++) {
                int n, m;
                mismatches += mask_check(&mv, &s, &n, &m);
                CHECK(n == m, "grammar %zu walk %d step %d: %d allowed, %d by the reference", k, walk, step, n, m);
                if (m == 0) break;
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                moe_json_take(&s, &mv.tb, mv.ok[(rng >> 33) % (uint64_t)m]);
            }
        }
        moe_json_schema_unref(sc);
    }
    CHECK(mismatches == 0, "%d token verdicts differ from the reference over %d steps", mismatches, steps);
    CHECK(steps > 100, "only %d steps walked", steps);
    mask_vocab_close(&mv);
}

int main(void)
{
    test_refused();
    test_arith();
    test_classes_and_unicode();
    test_repetition();
    test_json_grammar();
    test_mask_toy();
    test_mask_high();
    test_mask_vocab();
    return t_failures ? T_FAIL : T_PASS;
}
