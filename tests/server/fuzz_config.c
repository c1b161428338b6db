/* libFuzzer: the serve config file's text (moe_serve_config_parse).  Any text gets a status, never a
 * crash; the same text gives the same status and the same configuration twice; a text it takes passes
 * or fails moe_serve_config_check with a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/serve_config.h"

static enum moe_status parse(const uint8_t *data, size_t size, struct moe_serve_config *c)
{
    char *t = malloc(size + 1);
    if (!t)
        abort();
    memcpy(t, data, size);
    t[size] = 0; /* the loader refuses NUL bytes; here the text ends at the first */
    memset(c, 0, sizeof(*c)); /* padding too: the two parses are compared byte for byte */
    moe_serve_config_defaults(c);
    enum moe_status st = moe_serve_config_parse(c, t, "fuzz.conf");
    free(t);
    return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* parsed twice into one struct (the offload options point into it), compared byte for byte */
    static struct moe_serve_config a, first;
    enum moe_status sf = parse(data, size, &a);
    first = a;
    enum moe_status sa = parse(data, size, &a);
    if (sa != sf || memcmp(&a, &first, sizeof(a)))
        abort(); /* deterministic, and nothing uninitialised kept */
    if (sa != MOE_OK && !moe_last_error()[0])
        abort(); /* a refusal says why */
    if (sa == MOE_OK && moe_serve_config_check(&a) != MOE_OK && !moe_last_error()[0])
        abort();
    return 0;
}
