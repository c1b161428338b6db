/* The compiled form of a JSON schema, shared by the compiler (json_schema.c)
 * and the recognizer (json_guide.c). */
#ifndef MOE_JSON_SCHEMA_INT_H
#define MOE_JSON_SCHEMA_INT_H

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "grammar.h"
#include "json_guide.h"

enum json_kind {
    K_ANY,      /* any value */
    K_OBJECT,   /* props[first .. first + n), other keys' values: extra (-1: none) */
    K_ARRAY,    /* min_items .. max_items values: the first n of nodes branch[first .. first + n)
                   (prefixItems), the others of node extra */
    K_STRING,   /* bounded: min_items .. max_items characters (code points) */
    K_NUMBER,   /* bounded: in range, written without an exponent */
    K_INTEGER,  /* bounded: in range (and a multiple of range.mult) */
    K_LITERALS, /* exactly one of lits[first .. first + n) (enum, const, boolean, null), sorted by
                   their bytes; lit_orig: each one's place as given */
    K_UNION,    /* the one of branch[first .. first + n) that the first byte selects */
    K_TAGGED,   /* one of the objects branch[first .. first + n), told apart by the value of their
                   property key, written first: one of the literals of node tags, in branch order */
    K_TEXT,     /* raw text (not JSON), the whole of which matches automaton pattern */
};

struct json_str {        /* bytes pool[off .. off + len) */
    uint32_t off, len;
};

static inline bool json_str_eq(const char *pool, struct json_str a, struct json_str b)
{
    return a.len == b.len && !memcmp(pool + a.off, pool + b.off, a.len);
}

/* The value of hexadecimal digit c, -1 for another character. */
static inline int json_hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') return (c | 0x20) - 'a' + 10;
    return -1;
}

/* The bounds of a number or an integer node. */
struct json_range {
    double lo, hi;         /* number: lo <= x <= hi; < and > where lo_excl / hi_excl */
    bool lo_excl, hi_excl;
    int64_t ilo, ihi;      /* integer: ilo <= x <= ihi, |x| < 10^18 (18 digits at most) */
    int64_t mult;          /* integer: a multiple of mult (1: any) */
    uint32_t dec;          /* number: the pool's JSON_NUM_BOUNDS bytes from here, the range in decimal
                              (json_number.c) */
};

/* A bounded number's range as the decimals it is written with (json_number.c): the least and the
 * greatest multiple of 10^-30 whose doubles are in range, each a sign ('+' or '-') and JSON_DEC_W
 * digits, JSON_DEC_INT of them before the point (10^33: beyond every number written). */
#define JSON_DEC_INT 34
#define JSON_DEC_W (JSON_DEC_INT + 30)
#define JSON_NUM_BOUNDS (2 * (1 + JSON_DEC_W))
/* Write r's bounds (lo, hi, lo_excl, hi_excl) to out[JSON_NUM_BOUNDS]. */
void json_num_bounds(const struct json_range *r, char *out);
/* Whether the number begun by t[0..len) (a sign, digits, a point, digits: no exponent; len 0, none
 * yet) can still end in the range bounds within MOE_JSON_MAX_NUM bytes. */
bool json_num_viable(const char *bounds, const char *t, int len);
/* Whether the number t[0..len), whole, is in the range bounds. */
bool json_num_in(const char *bounds, const char *t, int len);

/* A regular expression as a DFA over code points: state 0 is dead (no way on). */
struct json_dfa_range {      /* code points lo .. hi go to state next */
    uint32_t lo, hi, next;
};
#define JSON_DFA_LENS 256      /* accepting path lengths kept per state: 0 .. 255 */
#define JSON_DFA_LW (JSON_DFA_LENS / 64)
struct json_dfa_state {      /* ranges[first .. first + n), sorted and disjoint; a range to a state
                                from which nothing can match goes to 0 */
    uint32_t first, n;
    bool accept;             /* the text so far matches */
    bool open;               /* some character leads on */
    uint32_t far;            /* the fewest characters, JSON_DFA_LENS or more, a match is reachable with
                                (UINT32_MAX: none) */
    uint64_t lens[JSON_DFA_LW]; /* bit k: a match is reachable with exactly k more characters
                                   (lens and far: for a pattern compiled with count) */
};
struct json_dfa_build {
    struct json_dfa_state *states;
    size_t n_states, cap_states;
    struct json_dfa_range *ranges;
    size_t n_ranges, cap_ranges;
};
#define JSON_DFA_MAX 2048        /* states of one pattern's automaton */
#define JSON_DFA_MAX_TEXT "2048"
#define JSON_DFA_MAX_ALL 65536   /* states of one schema's automata */

/* Compile pattern pat[0..len) (UTF-8) into automaton states appended to b: matched anywhere in the
 * text unless anchored by '^' / '$' (JSON Schema's pattern), or by the whole text (whole); with
 * count, each state's lens and far too (for minLength / maxLength), else those are empty.  Returns
 * the start state; 0 on an error, described in err. */
uint32_t json_regex_compile(const char *pat, size_t len, bool whole, bool count, struct json_dfa_build *b,
                            char *err, size_t errlen);

struct json_node {
    uint8_t kind;
    bool bounded;        /* string: min_items / max_items (characters) or pattern hold; object:
                            min_items / max_items keys; number, integer: range */
    bool unique;         /* array: its elements (literals of node extra) differ (frame's seen) */
    uint16_t n;
    uint32_t first;
    int32_t extra;
    uint64_t required;   /* object: bits of the properties that must be written */
    uint32_t min_items, max_items;
    uint32_t tags;       /* tagged: the literal node of the tag values */
    struct json_str key; /* tagged: the tag property's name, as written */
    uint32_t pattern;    /* string, text: the automaton's start state (0: none) */
    struct json_range range;
};

struct json_prop {
    struct json_str name; /* the key as written, escaped, without its quotes */
    uint16_t node;
};

/* A structural tag: free text in which a trigger commits the text to one of the structures whose
 * begin starts with it: that begin, a JSON value of its schema, its end. */
struct json_tags {
    int n, n_trig;
    char *begin[MOE_JSON_MAX_TAGS], *end[MOE_JSON_MAX_TAGS];
    uint16_t blen[MOE_JSON_MAX_TAGS], elen[MOE_JSON_MAX_TAGS];
    struct moe_json_schema *sc[MOE_JSON_MAX_TAGS];
    char *trig[MOE_JSON_MAX_TRIGGERS];
    uint16_t tlen[MOE_JSON_MAX_TRIGGERS];
    bool first[256];    /* bytes that begin some trigger */
};

struct moe_json_schema {
    atomic_int refs;     /* 0: static, never freed */
    const struct json_node *nodes;
    const struct json_prop *props;
    const struct json_str *lits;
    const uint16_t *lit_orig;
    const uint16_t *branch;
    const char *pool;
    const struct json_dfa_state *dfa;
    const struct json_dfa_range *dfa_ranges;
    const struct moe_grammar *grammar; /* a grammar's text (moe_json_schema_grammar), else NULL */
    const struct json_tags *tags;      /* a structural tag (moe_json_schema_tags), else NULL */
    int n_nodes;
    uint16_t root;
    uint8_t compact;     /* whitespace between tokens: 1, one space at most and no line break; 2, none */
    bool raw;            /* a choice of texts or a regular expression: the output is text, not JSON */
};

/* Nodes every schema begins with (the "any value" grammar). */
enum {
    N_ANY,
    N_ANY_OBJECT,
    N_ANY_ARRAY,
    N_ANY_LITERAL, /* true, false, null */
    N_ANY_STRING,
    N_ANY_NUMBER,
    N_BUILTIN,
};

/* The schema of JSON mode (any object): its nodes, literals and pool begin every compiled schema. */
extern const struct moe_json_schema moe_json_any_object;
#define JSON_BUILTIN_LITS 5  /* false null true (any literal), false true (boolean) */
#define JSON_BUILTIN_POOL 13 /* "truefalsenull" */

#endif
