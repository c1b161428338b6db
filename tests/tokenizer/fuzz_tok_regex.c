/* libFuzzer: the Split pre-tokenizer regexes (model/tokenizer_regex.c).
 * Input: pattern NUL text.  For a pattern the compiler takes and a text of
 * valid UTF-8, the matches found one after another are non-empty, in order,
 * inside the text and on character boundaries; and the same pattern in a
 * group, (?:P), and as P|P compiles too (unless that passes a size or nesting
 * limit) and finds exactly the same matches; and the plain backtracking search,
 * without the dead spans of class loops (moe_tok_regex_ws.no_memo), finds the
 * same matches too wherever neither search ran out of steps. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer_regex.h"
#include "model/utf8.h"

#define MAX_MATCHES 4096

/* The matches of re in s[0..n), one after another, into m (pairs); their
 * number, or -1 when the matcher stopped with an error. */
static long matches(const struct moe_tok_regex *re, const char *s, size_t n, size_t *m,
                    struct moe_tok_regex_ws *ws)
{
    long k = 0;
    for (size_t pos = 0; pos < n && k < MAX_MATCHES; k++) {
        size_t ms, me;
        bool found;
        if (moe_tok_regex_find(re, s, n, pos, &ms, &me, &found, ws))
            return -1;
        if (!found)
            break;
        uint32_t cp;
        if (ms < pos || me <= ms || me > n || !moe_utf8_next((const unsigned char *)s + ms, n - ms, &cp) ||
            (me < n && (s[me] & 0xc0) == 0x80))
            abort();
        m[2 * k] = ms;
        m[2 * k + 1] = me;
        pos = me;
    }
    return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    if (!nul)
        return 0;
    const char *pat = (const char *)data, *s = (const char *)nul + 1;
    size_t plen = (size_t)(nul - data), n = size - plen - 1;
    struct moe_tok_regex *re = NULL, *re2 = NULL;
    if (moe_tok_regex_compile(pat, plen, &re) != MOE_OK)
        return 0;
    static size_t m1[2 * MAX_MATCHES], m2[2 * MAX_MATCHES];
    struct moe_tok_regex_ws ws = {0};
    long k1 = moe_utf8_valid(s, n) ? matches(re, s, n, m1, &ws) : -1;
    if (k1 >= 0) {
        struct moe_tok_regex_ws plain = { .no_memo = true };
        long k0 = matches(re, s, n, m2, &plain);
        if (k0 >= 0 && (k0 != k1 || memcmp(m1, m2, sizeof(size_t) * 2 * (size_t)k1)))
            abort();
        moe_tok_regex_ws_free(&plain);
    }
    char *wrapped = malloc(2 * plen + 8);
    for (int form = 0; wrapped && k1 >= 0 && form < 2; form++) {
        size_t wl = form == 0 ? (size_t)sprintf(wrapped, "(?:%.*s)", (int)plen, pat)
                              : (size_t)sprintf(wrapped, "%.*s|%.*s", (int)plen, pat, (int)plen, pat);
        if (moe_tok_regex_compile(wrapped, wl, &re2) != MOE_OK) {
            const char *e = moe_last_error();
            if (!strstr(e, "too deep") && !strstr(e, "too many") && !strstr(e, "above the limit"))
                abort(); /* the same pattern refused for a reason other than a limit */
            continue;
        }
        long k2 = matches(re2, s, n, m2, &ws);
        if (k2 >= 0 && (k2 != k1 || memcmp(m1, m2, sizeof(size_t) * 2 * (size_t)k1)))
            abort();
        moe_tok_regex_free(re2);
        re2 = NULL;
    }
    free(wrapped);
    moe_tok_regex_ws_free(&ws);
    moe_tok_regex_free(re);
    return 0;
}
