/* libFuzzer: regular expressions as raw-text guides (guided_regex).  Input:
 * pattern NUL text.  A pattern the compiler takes must give an automaton the
 * recognizer follows the same whole, byte by byte and in pieces of 1-7 bytes
 * (the first text byte picks the size); a refused byte stays refused; where
 * the text may end it may also be whole only if nothing can follow; and from
 * the taken beginning, a walk that takes at every byte the first byte that
 * continues (fuzz_guide.h) meets no dead end within 64 bytes. */
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
    if (moe_json_schema_regex((const char *)data, (size_t)(nul - data), &sc) != MOE_OK) return 0;
    const uint8_t *d = nul + 1;
    size_t n = size - (size_t)(nul - data) - 1;
    fuzz_raw_text(sc, d, n);
    moe_json_schema_unref(sc);
    return 0;
}
