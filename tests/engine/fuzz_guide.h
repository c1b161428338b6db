/* What the recognizer's fuzz targets (fuzz_json_guide, fuzz_regex) check alike. */
#ifndef MOE_FUZZ_GUIDE_H
#define MOE_FUZZ_GUIDE_H

#include <stdint.h>
#include <stdlib.h>

#include "engine/json_guide.h"

/* What comes before the value: 0 nothing, 1 a reasoning block the output may open, 2 one it
 * begins inside (moe_json_init_after_think). */
static int fuzz_think;

static void fuzz_init(struct moe_json_state *s, const struct moe_json_schema *sc)
{
    if (fuzz_think)
        moe_json_init_after_think(s, sc, fuzz_think == 2);
    else
        moe_json_init(s, sc);
}

/* The bytes of d[0..n) taken before the first refusal (n when none), fed in pieces of piece bytes
 * (a refused piece searched byte by byte: its bytes one by one must be refused too); *end: whether
 * all were taken and the output may end there.  Whole implies it may end; no more open containers
 * than the limit. */
static size_t fuzz_accepted(const struct moe_json_schema *sc, const uint8_t *d, size_t n, size_t piece, bool *end)
{
    static struct moe_json_state s, t;
    fuzz_init(&s, sc);
    for (size_t i = 0; i < n; i += piece) {
        size_t m = i + piece < n ? piece : n - i;
        moe_json_copy(&t, &s);
        if (!moe_json_feed(&t, (const char *)d + i, m)) { /* find the byte inside the piece */
            for (size_t j = 0; j < m; j++)
                if (!moe_json_feed(&s, (const char *)d + i + j, 1)) {
                    *end = false;
                    return i + j;
                }
            abort(); /* a piece refused whose bytes one by one are not */
        }
        moe_json_copy(&s, &t);
        if (s.depth > MOE_JSON_MAX_DEPTH) abort();
    }
    *end = moe_json_may_end(&s);
    if (moe_json_done(&s) && !*end) abort(); /* whole, yet it may not end */
    return n;
}

/* Cleared by fuzz_no_dead_end at a dead end when set beforehand (the caller decides), else a dead
 * end aborts. */
static bool fuzz_dead_end_ok;

/* From the taken beginning d[0..n), 64 bytes more, each the first that continues (from a start that
 * moves with rot): some byte always continues an output that may not end yet. */
static void fuzz_no_dead_end(const struct moe_json_schema *sc, const uint8_t *d, size_t n, unsigned rot)
{
    static struct moe_json_state s, c;
    fuzz_init(&s, sc);
    if (n && !moe_json_feed(&s, (const char *)d, n)) abort();
    for (unsigned k = 0; k < 64 && !moe_json_done(&s); k++) {
        bool found = false;
        for (unsigned b = 0; b < 256 && !found; b++) {
            char ch = (char)((b + rot + k * 37) & 0xff);
            moe_json_copy(&c, &s);
            found = moe_json_feed(&c, &ch, 1);
        }
        if (!found) {
            if (!moe_json_may_end(&s)) { /* a dead end */
                if (!fuzz_dead_end_ok) abort();
                fuzz_dead_end_ok = false;
            }
            return;
        }
        moe_json_copy(&s, &c);
    }
}

#endif
