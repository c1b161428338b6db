/* The regular expressions of tokenizer.json's Split pre-tokenizers (the
 * Oniguruma syntax the `tokenizers` library compiles them with), matched
 * leftmost-first by a backtracking machine over code points.
 *
 * Supported: literals and escapes (\t \n \r \f \v \a \e \xHH \x{H...}
 * \uHHHH, escaped punctuation), `.`, classes [...] with ranges and negation,
 * \d \D \s \S \w \W \h \H, \p{X} \P{X} \p{^X} for Unicode general categories
 * (L Lu Ll Lt Lm Lo LC M Mn Mc Me N Nd Nl No P Pc Pd Ps Pe Pi Pf Po S Sm Sc
 * Sk So Z Zs Zl Zp C Cc Cf Cs Co Cn and their long names), groups (...)
 * (?:...) (?i:...), alternation, quantifiers ? * + {n} {n,} {n,m} {,m} (lazy
 * with a trailing ?, possessive ?+ *+ ++ on one character or class),
 * lookahead (?=...) (?!...), anchors ^ $ (at line breaks too, as Oniguruma
 * reads them) \A \z \Z.  Refused with the reason and the offset: anything
 * else (lookbehind, back-references, \b, scripts such as \p{Han},
 * case-insensitive non-ASCII letters), patterns that can match the empty
 * text, and patterns past the size limits.
 *
 * A compiled regex is immutable and may be shared between threads; the
 * backtracking stack lives in a per-caller workspace. */
#ifndef MOE_TOKENIZER_REGEX_H
#define MOE_TOKENIZER_REGEX_H

#include "../common/moe.h"

#include <stddef.h>
#include <stdint.h>

struct moe_tok_regex;

/* Backtracking stack of a caller; zero-initialise, free with
 * moe_tok_regex_ws_free. */
struct moe_tok_regex_ws {
    struct moe_tok_frame *stack;
    size_t top, cap;
    size_t *dead;       /* per class loop of the regex searched: where entering it fails */
    size_t dead_cap;
    bool memo_on;       /* dead spans are kept (in a search, once a start failed) */
    bool no_memo;       /* set by a caller to keep none: the plain backtracking search, which
                           the fuzz target compares the matches with */
    uint64_t steps;     /* the steps every search with this workspace took (instructions run and
                           characters class loops read), for tests to see the work done */
};

/* pat[0..len) (UTF-8) to a regex in *out; an error names the problem and
 * its byte offset in the pattern. */
enum moe_status moe_tok_regex_compile(const char *pat, size_t len, struct moe_tok_regex **out);
void moe_tok_regex_free(struct moe_tok_regex *re);

/* The leftmost match in s[from..n) of valid UTF-8, the first alternative
 * that matches at that place (as a backtracking engine finds it): sets
 * [*ms, *me) and *found.  The text ends at n: a lookahead sees nothing
 * beyond it.  Fails only on memory or when the pattern backtracks past its
 * step budget on this text (a million steps and 1024 a byte of s[from..n),
 * a step an instruction run or a character a class loop reads). */
enum moe_status moe_tok_regex_find(const struct moe_tok_regex *re, const char *s, size_t n, size_t from,
                                   size_t *ms, size_t *me, bool *found, struct moe_tok_regex_ws *ws);

void moe_tok_regex_ws_free(struct moe_tok_regex_ws *ws);

#endif
