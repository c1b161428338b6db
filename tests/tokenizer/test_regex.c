/* The Split pre-tokenizer regex matcher (model/tokenizer_regex.c) against
 * Python's regex module: every line of tests/fixtures/tokenizer/regex-vectors.jsonl
 * (random patterns of the syntax it takes, on random texts; written by
 * gen_regex_vectors.py) gives the same matches, one after another.  Then:
 * lazy, greedy and possessive counts, lookaheads at the end of the text,
 * case folding, anchors, and a pattern that backtracks without end stopped by its
 * step budget with a clear error. */
#include "model/tokenizer_regex.h"
#include "tests/test_util.h"

#include <jansson.h>

static uint64_t last_steps; /* the steps the last spans() took */

/* The matches of pat in text, one after another, as "[s,e)" pairs into out. */
static enum moe_status spans(const char *pat, const char *text, size_t n, char *out, size_t cap)
{
    struct moe_tok_regex *re;
    enum moe_status st = moe_tok_regex_compile(pat, strlen(pat), &re);
    if (st)
        return st;
    struct moe_tok_regex_ws ws = {0};
    size_t len = 0;
    out[0] = 0;
    for (size_t pos = 0; pos < n;) {
        size_t ms, me;
        bool found;
        if ((st = moe_tok_regex_find(re, text, n, pos, &ms, &me, &found, &ws)) || !found)
            break;
        len += (size_t)snprintf(out + len, cap - len, "[%zu,%zu)", ms, me);
        if (len >= cap)
            break;
        pos = me;
    }
    last_steps = ws.steps;
    moe_tok_regex_ws_free(&ws);
    moe_tok_regex_free(re);
    return st;
}

static void expect(const char *pat, const char *text, const char *want)
{
    char got[512];
    enum moe_status st = spans(pat, text, strlen(text), got, sizeof(got));
    CHECK(st == MOE_OK && !strcmp(got, want), "/%s/ on \"%s\": %s, want %s", pat, text,
          st ? moe_last_error() : got, want);
}

int main(void)
{
    char path[4096], *buf;
    size_t len;
    REQUIRE(moe_read_file(t_path(path, sizeof(path), "tests/fixtures/tokenizer/regex-vectors.jsonl"), &buf, &len,
                          16u << 20) == MOE_OK, "%s", moe_last_error());
    size_t line = 0, n_ok = 0, n_spans = 0;
    const char *text;
    size_t tl;
    for (size_t pos = 0; t_next_line(buf, len, &pos, &text, &tl);) {
        line++;
        json_error_t jerr;
        json_t *v = json_loadb(text, tl, 0, &jerr);
        REQUIRE(v, "line %zu: %s", line, jerr.text);
        const char *pat = json_string_value(json_object_get(v, "pattern"));
        json_t *jt = json_object_get(v, "text"), *js = json_object_get(v, "spans");
        char want[4096] = "", got[4096];
        size_t wl = 0;
        for (size_t i = 0; i < json_array_size(js); i++) {
            json_t *sp = json_array_get(js, i);
            wl += (size_t)snprintf(want + wl, sizeof(want) - wl, "[%lld,%lld)",
                                   json_integer_value(json_array_get(sp, 0)), json_integer_value(json_array_get(sp, 1)));
        }
        n_spans += json_array_size(js);
        enum moe_status st = spans(pat, json_string_value(jt), json_string_length(jt), got, sizeof(got));
        bool ok = st == MOE_OK && !strcmp(got, want);
        CHECK(ok, "line %zu: /%s/ on \"%s\": %s, want %s", line, pat, json_string_value(jt),
              st ? moe_last_error() : got, want);
        n_ok += ok;
        json_decref(v);
    }
    printf("%zu of %zu vectors match (%zu matches)\n", n_ok, line, n_spans);
    CHECK(line >= 1600 && n_spans > 3000, "the vector file is incomplete");
    free(buf);

    expect("a+?", "aaa", "[0,1)[1,2)[2,3)");
    expect("a{2,3}", "aaaaaaa", "[0,3)[3,6)");
    expect("a{2,3}?", "aaaaa", "[0,2)[2,4)");
    expect("a*+a|b", "aaab", "[3,4)");               /* possessive gives nothing back */
    expect("a*a|b", "aaab", "[0,3)[3,4)");
    expect("\\s+(?!\\S)|\\s+", "a   b  ", "[1,3)[3,4)[5,7)"); /* the lookahead sees the text's end */
    expect("(?i:'s|k)", "'S 'ſ K \xe2\x84\xaa", "[0,2)[3,6)[7,8)[9,12)");
    expect("\\p{N}{1,3}", "12345\xef\xbc\x91", "[0,3)[3,8)");
    expect("[^\\r\\n\\p{L}\\p{N}]?\\p{L}+", " foo\nbar", "[0,4)[5,8)");
    expect("x(?=y)|y", "xyxz", "[0,1)[1,2)");
    expect("\\s+$", "a  \nb  ", "[1,3)[5,7)");            /* $ before a line break and at the end */
    expect("^x", "x\nx x", "[0,1)[2,3)");                   /* ^ after a line break */
    expect("\\Ax|x\\z", "x\nx x", "[0,1)[4,5)");          /* the text's own ends only */
    expect("x\\Z", "x\nx\n", "[2,3)");                     /* the end, or before a final line break */

    /* a class loop reads a run once in a search, not once for each place in it the search starts at:
     * DeepSeek-LLM's `\s+$` split over 8000 spaces or no-break spaces then a digit finds nothing in at
     * most 8 steps a character (reading the run from every start takes 8000 * 8000 / 2, past the
     * budget), and so do `\s+\z` and a loop in a repeated group.  A loop in a lookahead keeps no record
     * (mark_memo): it reads the run from every start, and the budget stops it, a character read being
     * a step. */
    {
        static char sp[2 * 8000 + 2];
        static const char *const runs[][2] = {{" ", "\\s+$"}, {"\xc2\xa0", "\\s+$"}, {" ", "\\s+\\z"},
                                              {" ", "(?:\\s+x)+$"}, {" ", "\\s+(?=\\s*$)"}};
        for (size_t r = 0; r < sizeof(runs) / sizeof(runs[0]); r++) {
            size_t cl = strlen(runs[r][0]), n = 0;
            for (int i = 0; i < 8000; i++, n += cl)
                memcpy(sp + n, runs[r][0], cl);
            sp[n++] = '1';
            char sgot[64];
            enum moe_status sst = spans(runs[r][1], sp, n, sgot, sizeof(sgot));
            bool look = strstr(runs[r][1], "(?=") != NULL;
            CHECK(sst == (look ? MOE_ERANGE : MOE_OK) && !sgot[0] && (look || last_steps <= 8 * 8000),
                  "/%s/ over 8000 of \"%s\" and a digit: %s %s, %llu steps", runs[r][1], runs[r][0],
                  sst ? moe_last_error() : "", sgot, (unsigned long long)last_steps);
        }
    }
    expect("\\s+$", "ab  \ncd   ", "[2,4)[7,10)");
    expect("(?:a+a)+$", "aaaa\naa", "[0,4)[5,7)");  /* a loop entered again in a run still being tried */
    expect("(?:\\s+\\S)+$", " a  b c1\n  x", "[8,12)");
    expect("(?:\\s+\\S)+$", " a  b c\n  x", "[0,11)");
    expect("(?:[ab]+b)+c", "ababbxabababc", "[6,13)");

    /* a pattern past the program's size is refused, and the program cut short is not read past its
     * end (ASan found that read in the possessive-loop pass over such a program) */
    {
        static const char big[] = "(?::ab|(?:{378}?cu:ab~a){378}?cuaa){314}?cu";
        struct moe_tok_regex *re = NULL;
        enum moe_status bst = moe_tok_regex_compile(big, strlen(big), &re);
        CHECK(bst == MOE_ENOTSUP && strstr(moe_last_error(), "too many instructions") && !re, "oversized: %s",
              bst ? moe_last_error() : "compiled");
        moe_tok_regex_free(re);
    }

    /* exponential backtracking ends at the step budget, with an error */
    char as[64];
    memset(as, 'a', 40);
    as[40] = 0;
    char got[64];
    double t0 = moe_now();
    enum moe_status st = spans("(?:a|a)+b", as, 40, got, sizeof(got));
    CHECK(st == MOE_ERANGE && strstr(moe_last_error(), "backtracks too much"), "budget: %s",
          st ? moe_last_error() : "no error");
    printf("runaway pattern stopped after %.3f s\n", moe_now() - t0);
    return t_result("test_tokenizer_regex");
}
