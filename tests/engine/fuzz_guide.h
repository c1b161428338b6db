/* What the recognizer's fuzz targets (fuzz_json_guide, fuzz_regex) check alike. */
#ifndef MOE_FUZZ_GUIDE_H
#define MOE_FUZZ_GUIDE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

/* A raw-text guide over d[0..n) (the first byte picks the piece size): read the same whole, byte by
 * byte and in pieces, then no dead end from what was taken.  Returns the bytes taken. */
__attribute__((unused)) static size_t fuzz_raw_text(const struct moe_json_schema *sc, const uint8_t *d, size_t n)
{
    size_t piece = n ? (size_t)(d[0] % 7) + 1 : 1;
    bool e1, e2, e3;
    size_t a1 = fuzz_accepted(sc, d, n, n ? n : 1, &e1), a2 = fuzz_accepted(sc, d, n, 1, &e2),
           a3 = fuzz_accepted(sc, d, n, piece, &e3);
    if (a1 != a2 || a2 != a3 || e1 != e2 || e2 != e3) abort();
    fuzz_no_dead_end(sc, d, a1, (unsigned)piece * 41u);
    return a1;
}

/* A vocabulary from the text: every printable ASCII byte and line break alone, then the text cut
 * into tokens of 2, 3 and 5 bytes (up to 96 of them).  The mask over it from the state after the
 * text's first k bytes must equal feeding every token on its own. */
__attribute__((unused)) static void fuzz_mask_matches(const struct moe_json_schema *sc, const uint8_t *d, size_t n, size_t k)
{
    static char blob[96 + 96 * 5];
    static uint32_t off[200];
    int v = 0;
    uint32_t at = 0;
    for (int c = 32; c < 127; c++) off[v++] = at, blob[at++] = (char)c;
    off[v++] = at, blob[at++] = '\n';
    static const size_t cut[] = { 2, 3, 5 };
    for (size_t w = 0; w < 3; w++)
        for (size_t i = 0; i + cut[w] <= n && v < 96 + 96; i += cut[w] * 2) {
            off[v++] = at;
            memcpy(blob + at, d + i, cut[w]);
            at += (uint32_t)cut[w];
        }
    off[v] = at;
    struct moe_token_bytes tb;
    if (moe_token_bytes_make(blob, off, v, &tb) != MOE_OK) abort();
    static struct moe_json_state s, c;
    static float logits[200], out[200];
    for (int i = 0; i < v; i++) logits[i] = (float)i;
    moe_json_init(&s, sc);
    if (k && !moe_json_feed(&s, (const char *)d, k)) abort();
    int allowed = moe_json_mask(&s, &tb, logits, v, NULL, NULL, out), want = 0;
    for (int id = 0; id < v; id++) {
        moe_json_copy(&c, &s);
        bool ok = moe_json_feed(&c, blob + off[id], off[id + 1] - off[id]);
        want += ok;
        if (ok != (out[id] == logits[id])) abort(); /* the mask and feeding the token disagree */
    }
    if (allowed != want) abort();
    moe_token_bytes_free(&tb);
}

#endif
