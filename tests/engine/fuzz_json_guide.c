/* libFuzzer: JSON mode's recognizer over arbitrary bytes.  Fed whole, byte by
 * byte and in pieces of 1-7 bytes (the first byte picks the size), it must
 * accept the same prefix and reach the same completion; a refused byte stays
 * refused with more bytes after it. */
#include <stdint.h>
#include <stdlib.h>

#include "engine/json_guide.h"

/* The bytes accepted before the first refusal (n when none), and whether the object is then whole. */
static size_t accepted(const uint8_t *d, size_t n, size_t piece, bool *done)
{
    struct moe_json_state s;
    moe_json_init(&s);
    size_t i = 0;
    for (; i < n; i += piece) {
        size_t m = i + piece < n ? piece : n - i;
        struct moe_json_state t = s;
        if (!moe_json_feed(&t, (const char *)d + i, m)) { /* find the byte inside the piece */
            for (size_t j = 0; j < m; j++)
                if (!moe_json_feed(&s, (const char *)d + i + j, 1)) {
                    *done = false;
                    return i + j;
                }
            abort(); /* a piece refused whose bytes one by one are not */
        }
        s = t;
        if (s.depth > MOE_JSON_MAX_DEPTH) abort();
    }
    *done = moe_json_done(&s);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t piece = (size_t)(data[0] % 7) + 1;
    const uint8_t *d = data + 1;
    size_t n = size - 1;
    bool d1, d2, d3;
    size_t a1 = accepted(d, n, n ? n : 1, &d1), a2 = accepted(d, n, 1, &d2), a3 = accepted(d, n, piece, &d3);
    if (a1 != a2 || a2 != a3 || d1 != d2 || d2 != d3) abort();
    return 0;
}
