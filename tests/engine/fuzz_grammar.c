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
        fuzz_mask_matches(sc, d, n, 0);
        fuzz_mask_matches(sc, d, n, a1 / 2);
        fuzz_mask_matches(sc, d, n, a1);
    }
    if (moe_grammar_overflows() == over) {
        fuzz_dead_end_ok = true;
        fuzz_no_dead_end(sc, d, a1, (unsigned)piece * 41u);
        if (moe_grammar_overflows() == over && !fuzz_dead_end_ok) abort();
    }
    moe_json_schema_unref(sc);
    return 0;
}
