/* Context-free grammars in GBNF (the notation of llama.cpp's `grammar` and of vLLM's
 * `guided_grammar`): a compiler, and a recognizer that reads the output one code point at a time
 * as a set of parse stacks, so decoding can be held to text the grammar's `root` rule derives.
 *
 * Notation: rules `name ::= alternatives` (names of letters, digits, '-' and '_'; `root` is where
 * the text begins); alternatives separated by '|'; sequences of literals "...", character classes
 * [...] and [^...] with ranges, '.' (any character), groups ( ... ) and rule names, each
 * optionally followed by '*', '+', '?', {m}, {m,} or {m,n}; '#' comments to the end of the line.
 * A newline ends a rule, except inside a group and after "::=" or '|'.  Escapes in literals and
 * classes: \n \r \t \\ \" \[ \] \- \xHH \uHHHH \UHHHHHHHH.  Refused with a message naming the line
 * and column: left recursion (a rule that can reach itself before reading a character, which
 * includes an open repetition of something that can be empty), undefined rules, a missing root,
 * repetition counts above MOE_GRAMMAR_MAX_REPEAT, a class that matches no character.
 *
 * The recognizer's state is an array of MOE_GRAMMAR_WORDS 16-bit words (it lives inside
 * struct moe_json_state); a character that would need more parse stacks than fit is refused. */
#ifndef MOE_GRAMMAR_H
#define MOE_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/moe.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_GRAMMAR_WORDS 4096       /* the recognizer's state: words of parse stacks */
#define MOE_GRAMMAR_MAX_STACKS 1024  /* parse stacks alive at once (a multiple of 64) */
#define MOE_GRAMMAR_MAX_REPEAT 1000  /* the largest count in {m}, {m,} and {m,n} */
#define MOE_GRAMMAR_MAX_RULES 4096   /* rules, those the compiler makes for groups and repetitions included */

struct moe_grammar;

/* Compile GBNF text[0..len); MOE_EINVAL with the line and column of the fault. */
enum moe_status moe_grammar_compile(const char *text, size_t len, struct moe_grammar **out);
void moe_grammar_free(struct moe_grammar *g);

/* The state before any character: st[0 .. MOE_GRAMMAR_WORDS). */
void moe_grammar_start(const struct moe_grammar *g, uint16_t *st);
/* Words of st in use (to copy it). */
size_t moe_grammar_state_words(const uint16_t *st);
/* Whether two states are the same, word for word where in use (equal states; unequal ones may
 * still read the same texts on). */
bool moe_grammar_state_equal(const uint16_t *a, const uint16_t *b);
/* Read code point cp; false (st unchanged) when the grammar has no text that goes on with it. */
bool moe_grammar_step(const struct moe_grammar *g, uint16_t *st, uint32_t cp);
/* The ASCII bytes by what reading them does: cls[b] = 0 when no text goes on with b, else a class
 * 1..n (returned), bytes of one class leading to equal states. */
int moe_grammar_byte_classes(const struct moe_grammar *g, const uint16_t *st, uint8_t cls[128]);
/* Whether every code point above 127 does the same when read (each parse stack's set holds all
 * of them or none), so that one of them stands for all. */
bool moe_grammar_high_uniform(const struct moe_grammar *g, const uint16_t *st);
/* Whether some code point in lo .. hi can come next. */
bool moe_grammar_may(const struct moe_grammar *g, const uint16_t *st, uint32_t lo, uint32_t hi);
/* Whether the text so far is a whole sentence of the grammar. */
bool moe_grammar_accepts(const uint16_t *st);
/* Whether the text so far can go on. */
bool moe_grammar_open(const uint16_t *st);
/* Characters refused so far (in this process) because the state could not hold what they would
 * lead to, not because the grammar has no text that goes on with them. */
size_t moe_grammar_overflows(void);

#ifdef __cplusplus
}
#endif
#endif
