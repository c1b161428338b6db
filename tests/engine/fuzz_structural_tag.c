/* libFuzzer: structural tags as raw-text guides (structural_tag).  Input: the tag's JSON NUL text.
 * A tag the compiler takes must give a recognizer that reads the text the same whole, byte by byte
 * and in pieces of 1-7 bytes (the first text byte picks the size); a refused byte stays refused; no
 * beginning is a dead end (free text always goes on, a structure can be finished); the output is
 * never done; and the mask over a vocabulary cut from the text allows, at three points of it,
 * exactly the tokens that feeding one at a time takes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/json_guide.h"
#include "tests/engine/fuzz_guide.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    if (!nul) return 0;
    struct moe_json_schema *sc = NULL;
    if (moe_json_schema_tags((const char *)data, (size_t)(nul - data), &sc) != MOE_OK) return 0;
    const uint8_t *d = nul + 1;
    size_t n = size - (size_t)(nul - data) - 1;
    size_t a1 = fuzz_raw_text(sc, d, n);
    fuzz_mask_matches(sc, d, n, 0);
    fuzz_mask_matches(sc, d, n, a1 / 2);
    fuzz_mask_matches(sc, d, n, a1);
    moe_json_schema_unref(sc);
    return 0;
}
