/* A JSON parse error's reason in plain words (see json_error.h). */
#include "json_error.h"

#include <string.h>

const char *moe_json_error_text(const json_error_t *e)
{
    return strstr(e->text, "JSON_ALLOW_NUL") ? "a string holds \\u0000 (NUL): give text without NUL" : e->text;
}
