/* JSON mode's recognizer: whole objects are accepted and complete; every
 * beginning of one is accepted and not complete; anything else (another
 * top-level value, whitespace before the object or after it or runs of it
 * beyond the limits, bad escapes, numbers, literals, control characters,
 * invalid UTF-8 (overlong forms, surrogates, beyond U+10FFFF), a \u surrogate escape outside a high-low pair, nesting
 * beyond the limit) is refused at the byte where it goes
 * wrong; token-sized pieces give the same verdict as bytes. */
#include "common/moe.h"
#include "engine/json_guide.h"
#include "tests/test_util.h"

#include <string.h>

static bool whole(const char *t)
{
    struct moe_json_state s;
    moe_json_init(&s, NULL);
    return moe_json_feed(&s, t, strlen(t)) && moe_json_done(&s);
}

/* Fed in pieces of k bytes: every prefix accepted, done only at the end. */
static bool pieces(const char *t, size_t k)
{
    struct moe_json_state s;
    moe_json_init(&s, NULL);
    size_t n = strlen(t);
    for (size_t i = 0; i < n; i += k) {
        size_t m = i + k < n ? k : n - i;
        if (!moe_json_feed(&s, t + i, m) || (i + m < n && moe_json_done(&s))) return false;
    }
    return moe_json_done(&s);
}

/* The byte at which t is refused, or -1. */
static int refused_at(const char *t)
{
    struct moe_json_state s;
    moe_json_init(&s, NULL);
    for (size_t i = 0; t[i]; i++)
        if (!moe_json_feed(&s, t + i, 1)) return (int)i;
    return -1;
}

int main(void)
{
    static const char *good[] = {
        "{}", "{ \n\t }", "{\"a\":1}", "{\"a\": -0.5e+10, \"b\": [1, 2.25, -3, 0, 1E5]}",
        "{\"s\": \"x\\\"y\\\\z\\/\\b\\f\\n\\r\\t\\u00e9\\uD83D\\uDE00\"}", "{\"k\": true, \"f\": false, \"n\": null}",
        "{\"nested\": {\"a\": [[], {}, [{\"b\": []}]]}}", "{\"utf8\": \"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\"}",
        "{\"a\":\"}\",\"b\":\"{[\"}", "{\"\":\"\"}", "{\"edge\":\"\xed\x9f\xbf \xf4\x8f\xbf\xbf \xe0\xa0\x80\"}",
        "{\"pairs\":\"\\ud800\\udc00\\uDBFF\\uDFFF\\uD7FF\\uE000\"}",
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(good); i++) {
        CHECK(whole(good[i]), "refused: %s", good[i]);
        for (size_t k = 1; k <= 5; k++) CHECK(pieces(good[i], k), "refused in pieces of %zu: %s", k, good[i]);
        struct moe_json_state s; /* every proper prefix accepted and incomplete */
        size_t n = strlen(good[i]);
        for (size_t j = 0; j + 1 < n; j++) {
            moe_json_init(&s, NULL);
            bool ok = moe_json_feed(&s, good[i], j);
            CHECK(ok, "prefix %zu of %s refused", j, good[i]);
            if (ok && j > 0 && good[i][j] != ' ' && good[i][j] != '\n')
                CHECK(!moe_json_done(&s) || strspn(good[i] + j, " \n") == n - j, "prefix %zu of %s complete", j, good[i]);
        }
    }
    static const struct {
        const char *text;
        int at; /* the byte refused */
    } bad[] = {
        { "[1]", 0 }, { "\"s\"", 0 }, { "1", 0 }, { " {}", 0 }, { "{} ", 2 }, { "{}{}", 2 }, { "{\"a\" 1}", 5 },
        { "{\"a\":01}", 6 }, { "{\"a\":1.}", 7 }, { "{\"a\":-}", 6 }, { "{\"a\":tru}", 8 },
        { "{\"a\":\"\\x\"}", 7 }, { "{\"a\":\"\\u12g4\"}", 10 }, { "{\"a\":\"\t\"}", 6 }, { "{a:1}", 1 },
        { "{\"a\":1,}", 7 }, { "{\"a\":[1,]}", 8 }, { "{\"a\":[1}", 7 }, { "{\"a\":\"\xff\"}", 6 },
        { "{\"a\":\"\xc3x\"}", 7 }, { "{\"a\":1e}", 7 }, { "{\"a\":nul1}", 8 },
        { "{\"a\":\"\xe0\x9f\xbf\"}", 7 }, { "{\"a\":\"\xed\xa0\x80\"}", 7 },     /* overlong, surrogate */
        { "{\"a\":\"\xf0\x8f\xbf\xbf\"}", 7 }, { "{\"a\":\"\xf4\x90\x80\x80\"}", 7 }, /* overlong, > U+10FFFF */
        { "{\"a\":\"\xc0\xaf\"}", 6 },
        /* a \u escape of a surrogate only as a pair, high then low (RFC 8259, section 7) */
        { "{\"a\":\"\\uD83D\"}", 12 }, { "{\"a\":\"\\uD83Dx\"}", 12 }, { "{\"a\":\"\\uD83D\\n\"}", 13 },
        { "{\"a\":\"\\uD83D\\uD83D\"}", 15 }, { "{\"a\":\"\\uD83D\\u00e9\"}", 14 }, { "{\"a\":\"\\uDE00\"}", 9 },
        { "{\"a\":\"\\udbff\\udfff\\ud\"}", 21 },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(bad); i++)
        CHECK(refused_at(bad[i].text) == bad[i].at, "%s: refused at %d, want %d", bad[i].text, refused_at(bad[i].text),
              bad[i].at);
    /* whitespace runs: 2 + 4 per open container (at most MOE_JSON_MAX_WS), two line breaks */
    char ws[256];
    for (int depth = 1; depth <= 10; depth++) {
        int lim = 2 + 4 * depth < MOE_JSON_MAX_WS ? 2 + 4 * depth : MOE_JSON_MAX_WS;
        size_t w = 0;
        ws[w++] = '{';
        for (int d = 1; d < depth; d++) w += (size_t)sprintf(ws + w, "\"a\":{");
        w += (size_t)sprintf(ws + w, "\"a\":");
        memset(ws + w, ' ', (size_t)lim);
        ws[w + (size_t)lim] = 0;
        CHECK(refused_at(ws) == -1, "%d spaces in a row refused at depth %d", lim, depth);
        strcat(ws, " ");
        CHECK(refused_at(ws) == (int)w + lim, "%d spaces in a row accepted at depth %d", lim + 1, depth);
    }
    CHECK(whole("{\r\n  \"a\": [\n    1,\n    {\n\t\t\"b\": null\n    }\n  ]\n}"), "pretty-printed refused");
    CHECK(refused_at("{\"a\":\n\n\n1}") == 7, "three line breaks in a row accepted");
    size_t w;
    strcpy(ws, "{\"a\":\"");
    w = strlen(ws);
    memset(ws + w, ' ', MOE_JSON_MAX_WS + 4); /* inside a string: text, not whitespace between tokens */
    ws[w + MOE_JSON_MAX_WS + 4] = 0;
    CHECK(refused_at(ws) == -1, "spaces inside a string refused");
    char deep[2 * MOE_JSON_MAX_DEPTH + 16] = "{\"a\":";
    size_t n = strlen(deep);
    for (int d = 1; d < MOE_JSON_MAX_DEPTH; d++) deep[n++] = '[';
    deep[n] = 0;
    CHECK(refused_at(deep) == -1, "%d levels refused", MOE_JSON_MAX_DEPTH);
    deep[n++] = '[';
    deep[n] = 0;
    CHECK(refused_at(deep) == (int)n - 1, "%d levels accepted", MOE_JSON_MAX_DEPTH + 1);
    return t_result("test_engine_json_guide");
}
