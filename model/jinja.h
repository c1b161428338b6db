/* Chat templates: the subset of Jinja2 that tokenizer_config.json
 * "chat_template" strings use, rendered as the Hugging Face library renders
 * them (apply_chat_template: trim_blocks and lstrip_blocks on, loop controls,
 * raise_exception(), strftime_now(), tojson without ASCII escaping, a default
 * Undefined that prints as nothing and fails on attribute access).
 *
 * Supported: text, {{ expr }}, {% if / elif / else %}, {% for x[, y ...] in
 * expr [if cond] [recursive] %} with else, loop.*, loop.cycle(), loop.changed()
 * and loop(items) of a recursive loop, cycler() and joiner(),
 * break / continue, {% set %} (names, several names unpacking a value,
 * namespace attributes, blocks, blocks through filters), {% with %},
 * {% filter %}, {% macro %} (caller, varargs, kwargs) and calls, {% call %},
 * {% raw %}, {% generation %}; whitespace control with - and +; literals (strings,
 * numbers, lists, tuples, dicts, true/false/none), arithmetic, comparisons,
 * in, and/or/not, ~, % formatting, conditional expressions, slices, the
 * common filters, tests and string/dict methods (moe_jinja_compile names
 * what it does not support).
 * Printing follows Python: None, True, 1.0, lists as [1, 'a'].
 *
 * Bounds: a template of at most 1 MiB, blocks and parenthesised expressions
 * nested 64 deep; per render an expression tree evaluated at most 1024 deep,
 * values (lists in lists) printed or compared at most 512 deep, output of at
 * most MOE_JINJA_MAX_OUTPUT bytes, a bounded number of evaluation steps and of
 * memory; past any of them compile or render fails with a message. */
#ifndef MOE_JINJA_H
#define MOE_JINJA_H

#include "../common/moe.h"

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_JINJA_MAX_OUTPUT (4u << 20) /* bytes one render may produce */

struct moe_jinja;

/* Parse a template.  NULL with the error set (MOE_EFORMAT for a syntax
 * error, MOE_ENOTSUP for a construct outside the subset, with its line). */
struct moe_jinja *moe_jinja_compile(const char *src, size_t len);
void moe_jinja_free(struct moe_jinja *t);

/* Render with the variables of vars (a JSON object: "messages",
 * "add_generation_prompt", "bos_token", ...).  *out is malloc'd and
 * NUL-terminated.  MOE_EINVAL: the template failed (raise_exception(), an
 * undefined attribute, a type error) with its message; MOE_ERANGE: a bound
 * was passed. */
enum moe_status moe_jinja_render(const struct moe_jinja *t, json_t *vars, char **out, size_t *out_len);

#ifdef __cplusplus
}
#endif
#endif
