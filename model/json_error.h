/* The reason of a jansson parse error as a person reads it, for every message that reports a JSON text
 * (a request body, a schema, a trace line, a model's files) that does not parse. */
#ifndef MOE_JSON_ERROR_H
#define MOE_JSON_ERROR_H

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

/* e->text, or plain words where jansson names its own flag (a string that holds \u0000 reads "...
 * JSON_ALLOW_NUL") or where its words name nothing that shows (a UTF-8 byte-order mark before the text,
 * as Python's json and serde_json refuse it too): a static string or e->text, valid as long as e. */
const char *moe_json_error_text(const json_error_t *e);

#ifdef __cplusplus
}
#endif

#endif
