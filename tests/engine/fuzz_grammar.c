/* libFuzzer: GBNF grammars as raw-text guides (guided_grammar).  Input: grammar NUL text.  A
 * grammar the compiler takes must give a recognizer that reads the text the same whole, byte by
 * byte and in pieces of 1-7 bytes (the first text byte picks the size); a refused byte stays
 * refused; whole implies it may end; and from the taken beginning, a walk that takes at every byte
 * the first byte that continues (fuzz_guide.h) meets no dead end within 64 bytes, unless the
 * recognizer refused a character for its limits (moe_grammar_overflows); and the mask over a
 * vocabulary cut from the text allows, at three points of it, exactly the tokens that feeding
 * one at a time takes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/grammar.h"
#include "engine/json_guide.h"
#include "tests/engine/fuzz_guide.h"

/* A vocabulary from the text: every printable ASCII byte and line break alone, then the text cut
 * into tokens of 2, 3 and 5 bytes (up to 96 of them).  The mask over it from the state after the
 * text's first k bytes must equal feeding every token on its own. */
static void mask_matches(const struct moe_json_schema *sc, const uint8_t *d, size_t n, size_t k)
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    if (!nul) return 0;
    struct moe_json_schema *sc = NULL;
    if (moe_json_schema_grammar((const char *)data, (size_t)(nul - data), &sc) != MOE_OK) return 0;
    const uint8_t *d = nul + 1;
    size_t n = size - (size_t)(nul - data) - 1;
    size_t piece = n ? (size_t)(d[0] % 7) + 1 : 1;
    size_t over = moe_grammar_overflows();
    bool e1, e2, e3;
    size_t a1 = fuzz_accepted(sc, d, n, n ? n : 1, &e1), a2 = fuzz_accepted(sc, d, n, 1, &e2),
           a3 = fuzz_accepted(sc, d, n, piece, &e3);
    if (moe_grammar_overflows() == over && (a1 != a2 || a2 != a3 || e1 != e2 || e2 != e3)) abort();
    if (moe_grammar_overflows() == over) { /* the mask along the text taken, where no limit was met */
        mask_matches(sc, d, n, 0);
        mask_matches(sc, d, n, a1 / 2);
        mask_matches(sc, d, n, a1);
    }
    if (moe_grammar_overflows() == over) {
        fuzz_dead_end_ok = true;
        fuzz_no_dead_end(sc, d, a1, (unsigned)piece * 41u);
        if (moe_grammar_overflows() == over && !fuzz_dead_end_ok) abort();
    }
    moe_json_schema_unref(sc);
    return 0;
}
