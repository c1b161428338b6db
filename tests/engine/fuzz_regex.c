/* libFuzzer: regular expressions as raw-text guides (guided_regex).  Input:
 * pattern NUL text.  A pattern the compiler takes must give an automaton the
 * recognizer follows the same whole, byte by byte and in pieces of 1-7 bytes
 * (the first text byte picks the size); a refused byte stays refused; where
 * the text may end it may also be whole only if nothing can follow; and a
 * walk that takes, at every byte, the first byte that continues the text never
 * meets a dead end before 64 bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/json_guide.h"

/* Bytes accepted before the first refusal (n when none); *end: whether the text may end there. */
static size_t accepted(const struct moe_json_schema *sc, const uint8_t *d, size_t n, size_t piece, bool *end)
{
    static struct moe_json_state s, t;
    moe_json_init(&s, sc);
    size_t i = 0;
    for (; i < n; i += piece) {
        size_t m = i + piece < n ? piece : n - i;
        moe_json_copy(&t, &s);
        if (!moe_json_feed(&t, (const char *)d + i, m)) {
            for (size_t j = 0; j < m; j++)
                if (!moe_json_feed(&s, (const char *)d + i + j, 1)) {
                    *end = false;
                    return i + j;
                }
            abort(); /* a piece refused whose bytes one by one are not */
        }
        moe_json_copy(&s, &t);
    }
    *end = moe_json_may_end(&s);
    if (moe_json_done(&s) && !*end) abort(); /* whole, yet it may not end */
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    if (!nul) return 0;
    struct moe_json_schema *sc = NULL;
    if (moe_json_schema_regex((const char *)data, (size_t)(nul - data), &sc) != MOE_OK) return 0;
    const uint8_t *d = nul + 1;
    size_t n = size - (size_t)(nul - data) - 1;
    size_t piece = n ? (size_t)(d[0] % 7) + 1 : 1;
    bool e1, e2, e3;
    size_t a1 = accepted(sc, d, n, n ? n : 1, &e1), a2 = accepted(sc, d, n, 1, &e2), a3 = accepted(sc, d, n, piece, &e3);
    if (a1 != a2 || a2 != a3 || e1 != e2 || e2 != e3) abort();
    /* the first continuing byte, 64 times: some byte always continues a text that may not end */
    static struct moe_json_state s, c;
    moe_json_init(&s, sc);
    for (int k = 0; k < 64 && !moe_json_done(&s); k++) {
        int b = 0;
        for (; b < 256; b++) {
            char ch = (char)b;
            moe_json_copy(&c, &s);
            if (moe_json_feed(&c, &ch, 1)) break;
        }
        if (b == 256) {
            if (!moe_json_may_end(&s)) abort(); /* a dead end */
            break;
        }
        moe_json_copy(&s, &c);
    }
    moe_json_schema_unref(sc);
    return 0;
}
