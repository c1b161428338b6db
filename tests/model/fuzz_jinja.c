/* libFuzzer target: chat templates.  The input is a template; one that
 * compiles is rendered with a small conversation (and once more, to check
 * that a compiled template renders the same twice).  Failures must come back
 * as statuses, never as crashes, leaks or unbounded work. */
#include "model/jinja.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static json_t *vars;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!vars)
        vars = json_pack("{s:[{s:s, s:s}, {s:s, s:s}, {s:s, s:s}], s:s, s:s, s:b, s:[{s:s, s:{s:s}}]}",
                         "messages", "role", "system", "content", "Be brief.", "role", "user", "content",
                         "Hi \u00e9 {{ x }}", "role", "assistant", "content", " ok\n", "bos_token", "<s>",
                         "eos_token", "</s>", "add_generation_prompt", 1, "tools", "type", "function",
                         "function", "name", "add");
    struct moe_jinja *t = moe_jinja_compile((const char *)data, size);
    if (!t)
        return 0;
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    enum moe_status sa = moe_jinja_render(t, vars, &a, &na), sb = moe_jinja_render(t, vars, &b, &nb);
    /* strftime_now() may differ between the two renders; everything else is deterministic */
    bool clock = size >= 12 && memmem(data, size, "strftime_now", 12);
    bool same = sa == sb && (sa != MOE_OK || clock || (na == nb && !memcmp(a, b, na)));
    if (!same || (sa == MOE_OK && na > MOE_JINJA_MAX_OUTPUT))
        abort();
    free(a);
    free(b);
    moe_jinja_free(t);
    return 0;
}
