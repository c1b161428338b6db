/* A JSON parse error's reason in plain words (see json_error.h). */
#include "json_error.h"

#include <string.h>

const char *moe_json_error_text(const json_error_t *e)
{
    if (strstr(e->text, "JSON_ALLOW_NUL"))
        return "a string holds \\u0000 (NUL): give text without NUL";
    /* jansson names the mark's bytes as the token it found (and they print as nothing) */
    if (e->line == 1 && e->position == 3 && strstr(e->text, "near '\xef\xbb\xbf'"))
        return "it starts with a UTF-8 byte-order mark (bytes EF BB BF), which JSON text may not: give it without "
               "the mark";
    return e->text;
}
