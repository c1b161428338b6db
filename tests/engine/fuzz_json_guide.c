/* libFuzzer: the JSON recognizer over arbitrary bytes.  Input: [schema NUL]
 * piece-size byte, document.  Without a NUL the document is read in JSON mode
 * (any object); with one, the bytes before it are compiled as a JSON schema
 * (refusals are fine).  Fed whole, byte by byte and in pieces of 1-7 bytes
 * (the piece-size byte picks the size and whether a reasoning block may come
 * first, or the document begins inside one), the document must be accepted to the
 * same byte and reach the same completion; a refused byte stays refused with
 * more bytes after it; no beginning is a dead end (some byte continues it, 64
 * bytes on); a whole value must be JSON that jansson reads (but for
 * numbers beyond its range): \u surrogate escapes come in pairs. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/json_guide.h"
#include "tests/engine/fuzz_guide.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct moe_json_schema *sc = NULL;
    const uint8_t *nul = memchr(data, 0, size);
    if (nul) {
        if (moe_json_schema_parse((const char *)data, (size_t)(nul - data), &sc) != MOE_OK) return 0;
        size -= (size_t)(nul - data) + 1;
        data = nul + 1;
    }
    if (size >= 1) {
        size_t piece = (size_t)(data[0] % 7) + 1;
        fuzz_think = data[0] / 7 % 3;
        const uint8_t *d = data + 1;
        size_t n = size - 1;
        bool d1, d2, d3;
        size_t a1 = fuzz_accepted(sc, d, n, n ? n : 1, &d1), a2 = fuzz_accepted(sc, d, n, 1, &d2),
               a3 = fuzz_accepted(sc, d, n, piece, &d3);
        if (a1 != a2 || a2 != a3 || d1 != d2 || d2 != d3) abort();
        fuzz_no_dead_end(sc, d, a1, (unsigned)piece * 41u);
        if (d1) { /* the value is whole: valid JSON (after the reasoning block and its whitespace) */
            size_t v = 0;
            if (fuzz_think == 2 || (fuzz_think == 1 && n >= 7 && !memcmp(d, "<think>", 7))) {
                const uint8_t *c = memmem(d, n, "</think>", 8);
                if (!c) abort(); /* whole, yet the block never closed */
                v = (size_t)(c - d) + 8;
                while (v < n && strchr(" \t\r\n", d[v]) && d[v]) v++;
            }
            json_error_t e;
            json_t *j = json_loadb((const char *)d + v, n - v, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
            if (!j && !strstr(e.text, "overflow") && !strstr(e.text, "too big"))
                abort();
            json_decref(j);
        }
    }
    moe_json_schema_unref(sc);
    return 0;
}
