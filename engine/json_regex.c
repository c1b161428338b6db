/* Regular expressions (the ECMA-262 subset a JSON Schema "pattern" is
 * written in) to deterministic automata over Unicode code points, which the
 * recognizer (json_guide.c) steps one character at a time.  Pattern text ->
 * syntax tree -> Thompson NFA -> DFA by subset construction; every limit is a
 * clear error, never an automaton that is cut short. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_schema_int.h"

#include "../model/utf8.h"

#define RX_MAX_TEXT 4096   /* bytes of a pattern */
#define RX_MAX_NEST 64     /* groups inside groups */
#define RX_MAX_REPEAT 1000 /* the largest count in {n,m} */
#define RX_MAX_NFA 4096    /* NFA states of one pattern */
#define CP_MAX 0x10ffffu
#define SUR_LO 0xd800u     /* surrogates: never characters of a string */
#define SUR_HI 0xdfffu

struct rng {
    uint32_t lo, hi;
};

enum { A_SET, A_CAT, A_ALT, A_REP, A_EMPTY };

struct ast {
    int kind;
    int a, b;     /* CAT, ALT: the two sides; REP: a, the repeated node */
    int min, max; /* REP: counts, max -1 for no bound */
    int rf, rn;   /* SET: ranges rs[rf .. rf + rn), sorted, disjoint, without surrogates */
};

struct rx {
    const char *p, *end;
    struct ast *n;
    int nn;
    size_t cap;
    struct rng *rs; /* every set's ranges */
    int nr;
    size_t capr;
    int depth;
    const char *err; /* the first error, with where (p) it was found */
    const char *err_at;
};

static bool fail_rx(struct rx *x, const char *msg)
{
    if (!x->err) {
        x->err = msg;
        x->err_at = x->p;
    }
    return false;
}

/* fail_rx for functions that return a node: -1. */
static int fail_node(struct rx *x, const char *msg)
{
    fail_rx(x, msg);
    return -1;
}

static int new_ast(struct rx *x, struct ast a)
{
    if (!moe_grow((void **)&x->n, &x->cap, (size_t)x->nn + 1, sizeof(*x->n), 16)) {
        fail_rx(x, "out of memory");
        return -1;
    }
    x->n[x->nn] = a;
    return x->nn++;
}

/* ---- character sets -------------------------------------------------------------- */

/* A set being built: ranges in any order, normalised by set_done. */
struct set {
    struct rng r[512];
    int n;
    bool full; /* more ranges than fit */
};

static void set_add(struct set *s, uint32_t lo, uint32_t hi)
{
    if (s->n == (int)(sizeof(s->r) / sizeof(s->r[0]))) s->full = true;
    else s->r[s->n++] = (struct rng){ lo, hi };
}

static int rng_cmp(const void *a, const void *b)
{
    const struct rng *x = a, *y = b;
    return (x->lo > y->lo) - (x->lo < y->lo);
}

/* Sorted, merged, negated if asked, surrogates taken out; into x's pool as a SET node. */
static int set_done(struct rx *x, struct set *s, bool negate)
{
    if (s->full) {
        fail_rx(x, "a character class of more than 512 ranges");
        return -1;
    }
    qsort(s->r, (size_t)s->n, sizeof(s->r[0]), rng_cmp);
    struct rng m[513];
    int k = 0;
    for (int i = 0; i < s->n; i++) {
        if (k && s->r[i].lo <= m[k - 1].hi + 1) {
            if (s->r[i].hi > m[k - 1].hi) m[k - 1].hi = s->r[i].hi;
        } else {
            m[k++] = s->r[i];
        }
    }
    if (negate) {
        struct rng c[514];
        int kc = 0;
        uint32_t at = 0;
        for (int i = 0; i < k; i++) {
            if (m[i].lo > at) c[kc++] = (struct rng){ at, m[i].lo - 1 };
            at = m[i].hi + 1;
        }
        if (at <= CP_MAX) c[kc++] = (struct rng){ at, CP_MAX };
        memcpy(m, c, sizeof(c[0]) * (size_t)kc);
        k = kc;
    }
    if (!moe_grow((void **)&x->rs, &x->capr, (size_t)(x->nr + k + 1), sizeof(*x->rs), 16)) {
        fail_rx(x, "out of memory");
        return -1;
    }
    int rf = x->nr;
    for (int i = 0; i < k; i++) { /* without the surrogates */
        struct rng r = m[i];
        if (r.lo < SUR_LO && r.hi > SUR_HI) {
            x->rs[x->nr++] = (struct rng){ r.lo, SUR_LO - 1 };
            r.lo = SUR_HI + 1;
        } else if (r.lo >= SUR_LO && r.lo <= SUR_HI) {
            r.lo = SUR_HI + 1;
        } else if (r.hi >= SUR_LO && r.hi <= SUR_HI) {
            r.hi = SUR_LO - 1;
        }
        if (r.lo <= r.hi) x->rs[x->nr++] = r;
    }
    return new_ast(x, (struct ast){ .kind = A_SET, .rf = rf, .rn = x->nr - rf });
}

/* \d \w \s and their negations (ASCII digits and word characters, ECMA-262's white space). */
static void class_escape(struct set *s, char c)
{
    switch (c | 0x20) {
    case 'd': set_add(s, '0', '9'); break;
    case 'w':
        set_add(s, '0', '9');
        set_add(s, 'A', 'Z');
        set_add(s, 'a', 'z');
        set_add(s, '_', '_');
        break;
    default: /* s */
        set_add(s, '\t', '\r');
        set_add(s, ' ', ' ');
        set_add(s, 0xa0, 0xa0);
        set_add(s, 0x1680, 0x1680);
        set_add(s, 0x2000, 0x200a);
        set_add(s, 0x2028, 0x2029);
        set_add(s, 0x202f, 0x202f);
        set_add(s, 0x205f, 0x205f);
        set_add(s, 0x3000, 0x3000);
        set_add(s, 0xfeff, 0xfeff);
    }
}

/* The complement of a class escape's set, added to s (for [\D] and the like). */
static void class_escape_neg(struct set *s, char c)
{
    struct set t = { .n = 0 };
    class_escape(&t, c);
    qsort(t.r, (size_t)t.n, sizeof(t.r[0]), rng_cmp);
    uint32_t at = 0;
    for (int i = 0; i < t.n; i++) {
        if (t.r[i].lo > at) set_add(s, at, t.r[i].lo - 1);
        if (t.r[i].hi + 1 > at) at = t.r[i].hi + 1;
    }
    set_add(s, at, CP_MAX);
}

/* One character of the pattern (checked to be UTF-8 before parsing). */
static uint32_t next_cp(struct rx *x)
{
    uint32_t cp = 0;
    size_t n = moe_utf8_next((const unsigned char *)x->p, (size_t)(x->end - x->p), &cp);
    x->p += n ? n : 1;
    return cp;
}

/* \xHH or \uHHHH after the x / u: the code point, -1 when malformed. */
static int32_t hex_escape(struct rx *x, int digits)
{
    int32_t v = 0;
    for (int i = 0; i < digits; i++) {
        if (x->p >= x->end || json_hex_digit(*x->p) < 0) return -1;
        v = v * 16 + json_hex_digit(*x->p++);
    }
    return v;
}

/* An escape after '\' (x->p past it): one code point into *cp, or a class into s (returns 2);
 * 1 for a code point, 0 on an error. */
static int escape(struct rx *x, struct set *s, uint32_t *cp, bool in_class)
{
    if (x->p >= x->end) return fail_rx(x, "a pattern that ends with '\\'");
    char c = *x->p++;
    switch (c) {
    case 'd': case 'w': case 's':
        class_escape(s, c);
        return 2;
    case 'D': case 'W': case 'S':
        class_escape_neg(s, c);
        return 2;
    case 't': *cp = '\t'; return 1;
    case 'n': *cp = '\n'; return 1;
    case 'r': *cp = '\r'; return 1;
    case 'f': *cp = '\f'; return 1;
    case 'v': *cp = '\v'; return 1;
    case '0':
        if (x->p < x->end && *x->p >= '0' && *x->p <= '9') return fail_rx(x, "octal escapes are not supported");
        *cp = 0;
        return 1;
    case 'x':
    case 'u': {
        int32_t v = hex_escape(x, c == 'x' ? 2 : 4);
        if (v < 0) return fail_rx(x, c == 'x' ? "'\\x' needs two hex digits" : "'\\u' needs four hex digits");
        if (v >= (int32_t)SUR_LO && v <= (int32_t)SUR_HI)
            return fail_rx(x, "a surrogate ('\\uD800'-'\\uDFFF') cannot be matched: write the character itself");
        *cp = (uint32_t)v;
        return 1;
    }
    case 'b':
        if (in_class) {
            *cp = '\b';
            return 1;
        }
        return fail_rx(x, "word boundaries ('\\b', '\\B') are not supported");
    default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
            return fail_rx(x, c == 'p' || c == 'P' ? "Unicode property escapes ('\\p{...}') are not supported"
                              : c == 'k' ? "named back-references are not supported"
                                         : "an unknown escape (only \\d \\w \\s \\D \\W \\S \\t \\n \\r \\f \\v \\0 "
                                           "\\xHH \\uHHHH and escaped punctuation)");
        if (c >= '1' && c <= '9') return fail_rx(x, "back-references ('\\1') are not supported");
        x->p--;
        *cp = next_cp(x); /* escaped punctuation or any other character: itself */
        return 1;
    }
}

static int parse_alt(struct rx *x);

static int parse_class(struct rx *x)
{
    struct set s = { .n = 0 };
    bool negate = x->p < x->end && *x->p == '^';
    if (negate) x->p++;
    bool first = true;
    for (;;) {
        if (x->p >= x->end) return fail_node(x, "a '[' without its ']'");
        if (*x->p == ']') {
            if (first) return fail_node(x, "an empty class, or a ']' first in a class: write '\\]'");
            x->p++;
            break;
        }
        first = false;
        uint32_t lo, hi;
        int k = 1;
        if (*x->p == '\\') {
            x->p++;
            if (!(k = escape(x, &s, &lo, true))) return -1;
        } else {
            lo = next_cp(x);
        }
        if (k == 2) continue;
        hi = lo;
        if (x->p + 1 < x->end && *x->p == '-' && x->p[1] != ']') { /* a range */
            x->p++;
            if (*x->p == '\\') {
                x->p++;
                struct set t = { .n = 0 };
                int k2 = escape(x, &t, &hi, true);
                if (!k2) return -1;
                if (k2 == 2) return fail_node(x, "a range that ends with a class ('[a-\\d]')");
            } else {
                hi = next_cp(x);
            }
            if (hi < lo) return fail_node(x, "a range out of order ('[z-a]')");
        }
        set_add(&s, lo, hi);
    }
    return set_done(x, &s, negate);
}

/* {n}, {n,}, {n,m} at x->p: true with the counts when it is one (else '{' is a character). */
static bool counts(struct rx *x, int *min, int *max)
{
    const char *p = x->p + 1;
    long a = 0, b;
    int nd = 0;
    for (; p < x->end && *p >= '0' && *p <= '9' && nd < 8; p++, nd++) a = a * 10 + (*p - '0');
    if (!nd) return false;
    b = a;
    if (p < x->end && *p == ',') {
        p++;
        b = -1;
        int md = 0;
        long v = 0;
        for (; p < x->end && *p >= '0' && *p <= '9' && md < 8; p++, md++) v = v * 10 + (*p - '0');
        if (md) b = v;
    }
    if (p >= x->end || *p != '}') return false;
    x->p = p + 1;
    *min = (int)a;
    *max = (int)b;
    return true;
}

static bool is_quant(struct rx *x)
{
    if (x->p >= x->end) return false;
    if (*x->p == '*' || *x->p == '+' || *x->p == '?') return true;
    int a, b;
    const char *save = x->p;
    bool q = *x->p == '{' && counts(x, &a, &b);
    x->p = save;
    return q;
}

static int parse_atom(struct rx *x)
{
    char c = *x->p;
    struct set s = { .n = 0 };
    if (c == '(') {
        x->p++;
        if (x->p < x->end && *x->p == '?') {
            const char *q = x->p + 1;
            if (q < x->end && *q == ':') {
                x->p = q + 1;
            } else if (q < x->end && (*q == '<' || *q == 'P') && q + 1 < x->end && q[1] != '=' && q[1] != '!') {
                const char *gt = memchr(q, '>', (size_t)(x->end - q)); /* a named group: a group */
                if (!gt || (*q == 'P' && q[1] != '<')) return fail_node(x, "a malformed group name");
                x->p = gt + 1;
            } else {
                return fail_node(x, "lookaround and other '(?' groups are not supported (only '(?:' and named "
                               "groups)");
            }
        }
        if (++x->depth > RX_MAX_NEST) return fail_node(x, "groups nested more than 64 deep");
        int in = parse_alt(x);
        x->depth--;
        if (in < 0) return -1;
        if (x->p >= x->end || *x->p != ')') return fail_node(x, "a '(' without its ')'");
        x->p++;
        return in;
    }
    if (c == '[') {
        x->p++;
        return parse_class(x);
    }
    if (c == '.') { /* any character but a line terminator */
        x->p++;
        set_add(&s, '\n', '\n');
        set_add(&s, '\r', '\r');
        set_add(&s, 0x2028, 0x2029);
        return set_done(x, &s, true);
    }
    if (c == '^' || c == '$')
        return fail_node(x, "'^' and '$' are supported only at the pattern's start and end");
    if (c == '*' || c == '+' || c == '?' || is_quant(x)) return fail_node(x, "a quantifier with nothing to repeat");
    if (c == '{') return fail_node(x, "a '{' that is not a count ('{2}', '{2,}', '{2,5}'): write '\\{'");
    if (c == ')') return fail_node(x, "a ')' without its '('");
    uint32_t cp;
    if (c == '\\') {
        x->p++;
        int k = escape(x, &s, &cp, false);
        if (!k) return -1;
        if (k == 2) return set_done(x, &s, false);
    } else {
        cp = next_cp(x);
    }
    set_add(&s, cp, cp);
    return set_done(x, &s, false);
}

static int parse_rep(struct rx *x)
{
    int a = parse_atom(x);
    if (a < 0 || !is_quant(x)) return a;
    int min, max;
    char c = *x->p;
    if (c == '{') {
        counts(x, &min, &max);
        if (max >= 0 && max < min) return fail_node(x, "a count out of order ('{3,2}')");
        if (min > RX_MAX_REPEAT || max > RX_MAX_REPEAT) return fail_node(x, "a count above 1000");
    } else {
        x->p++;
        min = c == '+';
        max = c == '?' ? 1 : -1;
    }
    if (x->p < x->end && *x->p == '?') x->p++; /* lazy: the same language */
    if (is_quant(x)) return fail_node(x, "a quantifier after a quantifier");
    return new_ast(x, (struct ast){ .kind = A_REP, .a = a, .min = min, .max = max });
}

static int parse_cat(struct rx *x)
{
    int node = -1;
    while (x->p < x->end && *x->p != '|' && *x->p != ')') {
        int r = parse_rep(x);
        if (r < 0) return -1;
        node = node < 0 ? r : new_ast(x, (struct ast){ .kind = A_CAT, .a = node, .b = r });
        if (node < 0) return -1;
    }
    return node < 0 ? new_ast(x, (struct ast){ .kind = A_EMPTY }) : node;
}

static int parse_alt(struct rx *x)
{
    int node = parse_cat(x);
    while (node >= 0 && x->p < x->end && *x->p == '|') {
        x->p++;
        int r = parse_cat(x);
        if (r < 0) return -1;
        node = new_ast(x, (struct ast){ .kind = A_ALT, .a = node, .b = r });
    }
    return node;
}

/* ---- NFA --------------------------------------------------------------------------- */

struct nstate {
    int eps[2], neps;
    int next;   /* on a character of set (rf, rn) */
    int rf, rn; /* rn 0: no character edge */
};

struct nfa {
    struct nstate *s;
    int n;
    size_t cap;
    const struct rx *x;
    bool full;
};

static int nfa_new(struct nfa *a)
{
    if (a->n >= RX_MAX_NFA || !moe_grow((void **)&a->s, &a->cap, (size_t)a->n + 1, sizeof(*a->s), 16)) {
        a->full = true;
        return -1;
    }
    a->s[a->n] = (struct nstate){ .neps = 0, .rn = 0 };
    return a->n++;
}

/* An epsilon edge; build() gives no state more than two. */
static void eps(struct nfa *a, int from, int to) { a->s[from].eps[a->s[from].neps++] = to; }

struct frag {
    int in, out; /* out: no edges yet */
};

static bool build(struct nfa *a, int i, struct frag *f)
{
    const struct ast *t = &a->x->n[i];
    struct frag l, r;
    switch (t->kind) {
    case A_EMPTY:
        f->in = f->out = nfa_new(a);
        return f->in >= 0;
    case A_SET:
        f->in = nfa_new(a);
        f->out = nfa_new(a);
        if (f->out < 0) return false;
        a->s[f->in].next = f->out;
        a->s[f->in].rf = t->rf;
        a->s[f->in].rn = t->rn;
        return true;
    case A_CAT:
        if (!build(a, t->a, &l) || !build(a, t->b, &r)) return false;
        eps(a, l.out, r.in);
        *f = (struct frag){ l.in, r.out };
        return true;
    case A_ALT:
        if (!build(a, t->a, &l) || !build(a, t->b, &r)) return false;
        f->in = nfa_new(a);
        f->out = nfa_new(a);
        if (f->out < 0) return false;
        eps(a, f->in, l.in);
        eps(a, f->in, r.in);
        eps(a, l.out, f->out);
        eps(a, r.out, f->out);
        return true;
    default: { /* A_REP: min copies, then (max - min) optional ones or a loop */
        int at = nfa_new(a);
        if (at < 0) return false;
        f->in = at;
        for (int k = 0; k < t->min; k++) {
            if (!build(a, t->a, &l)) return false;
            eps(a, at, l.in);
            at = l.out;
        }
        f->out = nfa_new(a);
        if (f->out < 0) return false;
        if (t->max < 0) {
            int loop = nfa_new(a);
            if (loop < 0 || !build(a, t->a, &l)) return false;
            eps(a, at, loop);
            eps(a, loop, l.in);
            eps(a, loop, f->out);
            eps(a, l.out, loop);
            return true;
        }
        for (int k = t->min; k < t->max; k++) {
            if (!build(a, t->a, &l)) return false;
            int fork = nfa_new(a);
            if (fork < 0) return false;
            eps(a, at, fork);
            eps(a, fork, l.in);
            eps(a, fork, f->out);
            at = l.out;
        }
        eps(a, at, f->out);
        return true;
    }
    }
}

/* ---- DFA by subset construction ---------------------------------------------------- */

struct edge {
    uint32_t lo, hi;
    int to;
};

/* Add state i and everything its epsilon edges reach to set. */
static void closure(const struct nfa *a, uint64_t *set, int i, int *stack)
{
    int sp = 0;
    if (set[i / 64] >> (i % 64) & 1) return;
    set[i / 64] |= 1ull << (i % 64);
    stack[sp++] = i;
    while (sp) {
        const struct nstate *s = &a->s[stack[--sp]];
        for (int k = 0; k < s->neps; k++) {
            int j = s->eps[k];
            if (!(set[j / 64] >> (j % 64) & 1)) {
                set[j / 64] |= 1ull << (j % 64);
                stack[sp++] = j;
            }
        }
    }
}

static uint64_t set_hash(const uint64_t *set, int words)
{
    uint64_t h = 1469598103934665603ull;
    for (int w = 0; w < words; w++) h = (h ^ set[w]) * 1099511628211ull;
    return h;
}

/* The id of key (key_size bytes) in an open-addressing table of hsize slots (a power of two), each 0
 * or an id + 1, the ids' keys lying one after another in keys; looked for from slot *h on: -1 when it
 * is not there, *h then the empty slot to put it in. */
static int table_find(const int *hash, size_t hsize, uint64_t *h, const void *keys, size_t key_size, const void *key)
{
    for (; hash[*h]; *h = (*h + 1) & (hsize - 1))
        if (!memcmp((const char *)keys + (size_t)(hash[*h] - 1) * key_size, key, key_size)) return hash[*h] - 1;
    return -1;
}

static bool dfa_grow(struct json_dfa_build *b, size_t states, size_t ranges)
{
    return moe_grow((void **)&b->states, &b->cap_states, states, sizeof(*b->states), 16) &&
           moe_grow((void **)&b->ranges, &b->cap_ranges, ranges, sizeof(*b->ranges), 16);
}

/* Code points lo .. hi of state (the last one being filled, its room made) lead to next: a range
 * of its own, or the one before grown when that leads there too and ends at lo - 1. */
static void add_range(struct json_dfa_build *b, uint32_t state, uint32_t lo, uint32_t hi, uint32_t next)
{
    struct json_dfa_state *st = &b->states[state];
    struct json_dfa_range *prev = st->n ? &b->ranges[b->n_ranges - 1] : NULL;
    if (prev && prev->hi + 1 == lo && prev->next == next) {
        prev->hi = hi;
    } else {
        b->ranges[b->n_ranges++] = (struct json_dfa_range){ lo, hi, next };
        st->n++;
    }
}

/* The DFA of NFA a (start in, accepting state out) appended to b; its first state's index, 0 on
 * an error (*why set). */
static uint32_t determinize(const struct nfa *a, int in, int out, struct json_dfa_build *b, const char **why)
{
    size_t words = ((size_t)a->n + 63) / 64, cap_sets = 64, hsize = 2 * JSON_DFA_MAX, cap_e = 64;
    uint64_t *sets = calloc(cap_sets * words, sizeof(uint64_t));
    uint64_t *clo = calloc((size_t)a->n * words, sizeof(uint64_t)); /* states' epsilon closures, */
    uint8_t *have = calloc((size_t)a->n, 1);                          /* made on first use */
    int *hash = calloc(hsize, sizeof(int)), *stack = malloc(sizeof(int) * (size_t)a->n);
    struct edge *e = malloc(sizeof(*e) * cap_e);
    uint32_t *bound = malloc(sizeof(uint32_t) * 2 * cap_e);
    uint64_t *iv = NULL; /* the states each piece between two bounds leads to */
    size_t cap_iv = 0;
    uint32_t base = (uint32_t)b->n_states, result = 0;
    int nd = 0;
    *why = "out of memory";
    if (!sets || !clo || !have || !hash || !stack || !e || !bound) goto out;
    closure(a, sets, in, stack);
    hash[set_hash(sets, (int)words) & (hsize - 1)] = 1;
    nd = 1;
    for (int d = 0; d < nd; d++) {
        /* the character edges of the set's states, and every range's ends, sorted and distinct */
        int ne = 0;
        for (size_t w = 0; w < words; w++)
            for (uint64_t m = sets[(size_t)d * words + w]; m; m &= m - 1) {
                const struct nstate *ns = &a->s[w * 64 + (size_t)__builtin_ctzll(m)];
                for (int k = 0; k < ns->rn; k++) {
                    if ((size_t)ne == cap_e) {
                        cap_e *= 2;
                        void *p1 = realloc(e, sizeof(*e) * cap_e), *p2 = realloc(bound, sizeof(uint32_t) * 2 * cap_e);
                        if (p1) e = p1;
                        if (p2) bound = p2;
                        if (!p1 || !p2) goto out;
                    }
                    struct rng r = a->x->rs[ns->rf + k];
                    e[ne++] = (struct edge){ r.lo, r.hi, ns->next };
                }
            }
        int nu = 0; /* few distinct ends, many edges sharing them: kept sorted as they come */
        for (int k = 0; k < 2 * ne; k++) {
            uint32_t v = k % 2 ? e[k / 2].hi + 1 : e[k / 2].lo;
            int lo = 0, hi = nu;
            while (lo < hi) {
                int mid = (lo + hi) / 2;
                if (bound[mid] < v) lo = mid + 1;
                else hi = mid;
            }
            if (lo < nu && bound[lo] == v) continue;
            memmove(bound + lo + 1, bound + lo, sizeof(uint32_t) * (size_t)(nu - lo));
            bound[lo] = v;
            nu++;
        }
        if ((size_t)nu * words > cap_iv) {
            free(iv);
            cap_iv = (size_t)nu * words * 2;
            if (!(iv = malloc(sizeof(uint64_t) * cap_iv))) goto out;
        }
        if (nu) memset(iv, 0, sizeof(uint64_t) * (size_t)nu * words);
        for (int j = 0; j < ne; j++) { /* each edge into the pieces it covers */
            int lo = 0, hi = nu;
            while (lo < hi) {
                int mid = (lo + hi) / 2;
                if (bound[mid] < e[j].lo) lo = mid + 1;
                else hi = mid;
            }
            uint64_t *c = clo + (size_t)e[j].to * words;
            if (!have[e[j].to]) {
                closure(a, c, e[j].to, stack);
                have[e[j].to] = 1;
            }
            for (int k = lo; k + 1 < nu && bound[k] <= e[j].hi; k++)
                for (size_t w = 0; w < words; w++) iv[(size_t)k * words + w] |= c[w];
        }
        if (!dfa_grow(b, base + (size_t)d + 1, b->n_ranges + (size_t)nu)) goto out;
        struct json_dfa_state *st = &b->states[base + (uint32_t)d];
        st->first = (uint32_t)b->n_ranges;
        st->n = 0;
        st->accept = sets[(size_t)d * words + (size_t)out / 64] >> (out % 64) & 1;
        for (int k = 0; k + 1 < nu; k++) {
            uint64_t *t = iv + (size_t)k * words, any = 0;
            for (size_t w = 0; w < words; w++) any |= t[w];
            if (!any) continue;
            uint32_t lo = bound[k], hi = bound[k + 1] - 1;
            uint64_t h = set_hash(t, (int)words) & (hsize - 1);
            int id = table_find(hash, hsize, &h, sets, sizeof(uint64_t) * words, t);
            if (id < 0) {
                if (nd == JSON_DFA_MAX) {
                    *why = "the pattern needs more than " JSON_DFA_MAX_TEXT " automaton states (simplify it, or "
                           "anchor it with '^' and '$')";
                    goto out;
                }
                if ((size_t)nd == cap_sets) {
                    void *p = realloc(sets, sizeof(uint64_t) * words * cap_sets * 2);
                    if (!p) goto out;
                    sets = p;
                    cap_sets *= 2;
                }
                memcpy(sets + (size_t)nd * words, t, sizeof(uint64_t) * words);
                hash[h] = nd + 1;
                id = nd++;
            }
            add_range(b, base + (uint32_t)d, lo, hi, base + (uint32_t)id);
        }
    }
    b->n_states = base + (size_t)nd;
    result = base;
out:
    free(sets);
    free(clo);
    free(have);
    free(hash);
    free(stack);
    free(e);
    free(bound);
    free(iv);
    return result;
}

/* The DFA's states first .. first + n: the transitions to states from which nothing matches cut
 * (each state's open set), and, with count, the lengths of the matches each can reach (lens, far);
 * false when the start matches nothing. */
static bool lengths(struct json_dfa_build *b, uint32_t first, uint32_t n, bool count)
{
    struct json_dfa_state *st = b->states + first;
    uint8_t *live = calloc(n, 1), *cur = calloc(n, 1), *nxt = calloc(n, 1);
    if (!live || !cur || !nxt) {
        free(live);
        free(cur);
        free(nxt);
        return false;
    }
    for (uint32_t i = 0; i < n; i++) {
        memset(st[i].lens, 0, sizeof(st[i].lens));
        st[i].far = UINT32_MAX;
        live[i] = cur[i] = st[i].accept;
    }
    for (bool more = true; more;) { /* live: some match ahead */
        more = false;
        for (uint32_t i = n; i-- > 0;) {
            const struct json_dfa_range *r = b->ranges + st[i].first;
            for (uint32_t j = 0; j < st[i].n && !live[i]; j++) more |= live[i] = live[r[j].next - first];
        }
    }
    /* cur: the states with a match exactly k characters on; the fewest beyond JSON_DFA_LENS - 1 is
     * within n more steps if there is one (a longer path repeats a state, and can be cut) */
    for (uint32_t k = 0; count && k < JSON_DFA_LENS + n; k++) {
        bool any = false;
        for (uint32_t i = 0; i < n; i++) {
            if (!cur[i]) continue;
            any = true;
            if (k < JSON_DFA_LENS) st[i].lens[k / 64] |= 1ull << (k % 64);
            else if (st[i].far == UINT32_MAX) st[i].far = k;
        }
        if (!any) break;
        for (uint32_t i = 0; i < n; i++) {
            nxt[i] = 0;
            const struct json_dfa_range *r = b->ranges + st[i].first;
            for (uint32_t j = 0; j < st[i].n && !nxt[i]; j++) nxt[i] = cur[r[j].next - first];
        }
        memcpy(cur, nxt, n);
    }
    for (uint32_t i = 0; i < n; i++) {
        st[i].open = false;
        struct json_dfa_range *r = b->ranges + st[i].first;
        for (uint32_t j = 0; j < st[i].n; j++) {
            if (!live[r[j].next - first]) r[j].next = 0;
            else st[i].open = true;
        }
    }
    bool start = live[0];
    free(live);
    free(cur);
    free(nxt);
    return start;
}

/* The first byte stop of pattern text p .. end outside escapes, classes and groups, or NULL; depth groups are
 * open at p, and a ')' as stop is the one that closes the last of them. */
static const char *find_top_level(const char *p, const char *end, int depth, char stop)
{
    bool cls = false;
    for (; p < end; p++) {
        if (*p == '\\') p++;
        else if (cls) cls = *p != ']';
        else if (*p == '[') cls = true;
        else if (*p == '(') depth++;
        else if (*p == ')') {
            if (--depth == 0 && stop == ')') return p;
        } else if (*p == stop && depth == 0) return p;
    }
    return NULL;
}

/* Whether the pattern has a '|' outside groups and classes. */
static bool top_level_alt(const char *p, const char *end) { return find_top_level(p, end, 0, '|') != NULL; }

/* b's state 0 (dead, no way on), made once, with room for a range so the table is never NULL. */
static bool dfa_begin(struct json_dfa_build *b)
{
    if (b->n_states) return true;
    if (!dfa_grow(b, 1, 1)) return false;
    b->states[b->n_states++] = (struct json_dfa_state){ 0 };
    return true;
}

/* Bytes of pattern p[0..len) an error quotes: at most 64, cut between characters. */
static int quote_len(const char *p, size_t len)
{
    size_t k = len < 64 ? len : 64;
    while (k > 0 && k < len && ((unsigned char)p[k] & 0xc0) == 0x80)
        k--;
    return (int)k;
}

/* The DFA of pattern text p .. end (anchored at its start by head, at its end by tail; otherwise
 * any text may come before or after a match) appended to b; its start state, 0 on an error (err:
 * about pat, the whole pattern). */
static uint32_t dfa_of(const char *p, const char *end, bool head, bool tail, struct json_dfa_build *b, const char *pat,
                       size_t len, char *err, size_t errlen)
{
    if (!dfa_begin(b)) {
        snprintf(err, errlen, "out of memory");
        return 0;
    }
    struct rx x = { .p = p, .end = end };
    struct nfa a = { .x = &x };
    uint32_t start = 0;
    int root = parse_alt(&x);
    if (root >= 0 && x.p < x.end) {
        fail_rx(&x, "a ')' without its '('");
        root = -1;
    }
    if (root >= 0 && !(head && tail)) { /* the text around a match: any characters */
        struct set any = { .n = 0 };
        set_add(&any, 0, CP_MAX);
        int dot = set_done(&x, &any, false);
        int star = dot < 0 ? -1 : new_ast(&x, (struct ast){ .kind = A_REP, .a = dot, .min = 0, .max = -1 });
        if (star >= 0 && !head) root = new_ast(&x, (struct ast){ .kind = A_CAT, .a = star, .b = root });
        if (star >= 0 && root >= 0 && !tail) root = new_ast(&x, (struct ast){ .kind = A_CAT, .a = root, .b = star });
        if (star < 0) root = -1;
    }
    if (root < 0) {
        snprintf(err, errlen, "pattern '%.*s': %s at byte %td", quote_len(pat, len), pat,
                 x.err ? x.err : "out of memory", x.err_at ? x.err_at - pat : (ptrdiff_t)0);
        goto out;
    }
    struct frag f;
    if (!build(&a, root, &f)) {
        snprintf(err, errlen, "pattern '%.*s': %s", quote_len(pat, len), pat,
                 a.full ? "more than 4096 automaton states before determinizing (smaller counts in {n,m})"
                        : "out of memory");
        goto out;
    }
    const char *why;
    start = determinize(&a, f.in, f.out, b, &why);
    if (!start) snprintf(err, errlen, "pattern '%.*s': %s", quote_len(pat, len), pat, why);
out:
    free(x.n);
    free(x.rs);
    free(a.s);
    return start;
}

/* The ')' closing the group whose text begins at p, or NULL. */
static const char *group_end(const char *p, const char *end) { return find_top_level(p, end, 1, ')'); }

/* Whether an unescaped '$' ends p .. end. */
static bool ends_with_dollar(const char *p, const char *end)
{
    size_t bs = 0;
    while (end - p >= (ptrdiff_t)bs + 2 && end[-2 - (ptrdiff_t)bs] == '\\') bs++;
    return end > p && end[-1] == '$' && bs % 2 == 0;
}

/* The DFA of the texts automaton sa of a accepts and automaton sc of c accepts (neg: does not),
 * appended to b: a product of the two, the states pairs of theirs (c's 0: c can no longer match).
 * Its start state, 0 on an error (*why). */
static uint32_t product(const struct json_dfa_build *a, uint32_t sa, const struct json_dfa_build *c, uint32_t sc,
                        bool neg, struct json_dfa_build *b, const char **why)
{
    size_t hsize = 2 * JSON_DFA_MAX;
    uint32_t *pair = malloc(sizeof(uint32_t) * 2 * JSON_DFA_MAX); /* each state's (a state, c state) */
    int *hash = calloc(hsize, sizeof(int));
    uint32_t base = (uint32_t)b->n_states, result = 0;
    int nd = 1;
    *why = "out of memory";
    if (!pair || !hash) goto out;
    pair[0] = sa;
    pair[1] = sc;
    hash[((uint64_t)sa * 1000003u + sc) & (hsize - 1)] = 1;
    for (int d = 0; d < nd; d++) {
        uint32_t i = pair[2 * d], j = pair[2 * d + 1];
        const struct json_dfa_state *ai = &a->states[i], *cj = &c->states[j];
        if (!dfa_grow(b, base + (size_t)d + 1, b->n_ranges + 2 * ((size_t)ai->n + cj->n) + 1)) goto out;
        struct json_dfa_state *st = &b->states[base + (uint32_t)d];
        bool c_acc = j && cj->accept;
        *st = (struct json_dfa_state){ .first = (uint32_t)b->n_ranges, .accept = ai->accept && (neg ? !c_acc : c_acc) };
        const struct json_dfa_range *ra = a->ranges + ai->first, *rc = c->ranges + cj->first;
        uint32_t k = 0;
        for (uint32_t m = 0; m < ai->n; m++) { /* a's ranges, cut where c's begin and end */
            if (!ra[m].next) continue;
            uint32_t lo = ra[m].lo;
            while (lo <= ra[m].hi) {
                while (k < cj->n && rc[k].hi < lo) k++;
                uint32_t hi = ra[m].hi, nj = 0;
                if (k < cj->n && rc[k].lo <= lo) {
                    nj = rc[k].next;
                    if (rc[k].hi < hi) hi = rc[k].hi;
                } else if (k < cj->n && rc[k].lo <= hi) {
                    hi = rc[k].lo - 1; /* a gap of c's: it can no longer match there */
                }
                if (nj || neg) { /* with neg, c matching nothing more is what is wanted */
                    uint64_t h = ((uint64_t)ra[m].next * 1000003u + nj) & (hsize - 1);
                    const uint32_t key[2] = { ra[m].next, nj };
                    int id = table_find(hash, hsize, &h, pair, sizeof(key), key);
                    if (id < 0) {
                        if (nd == JSON_DFA_MAX) {
                            *why = "the pattern and its lookahead need more than " JSON_DFA_MAX_TEXT
                                   " automaton states together";
                            goto out;
                        }
                        pair[2 * nd] = ra[m].next;
                        pair[2 * nd + 1] = nj;
                        hash[h] = nd + 1;
                        id = nd++;
                    }
                    add_range(b, base + (uint32_t)d, lo, hi, base + (uint32_t)id);
                }
                if (hi == ra[m].hi) break;
                lo = hi + 1;
            }
        }
    }
    b->n_states = base + (size_t)nd;
    result = base;
out:
    free(pair);
    free(hash);
    return result;
}

uint32_t json_regex_compile(const char *pat, size_t len, bool whole, bool count, struct json_dfa_build *b,
                            char *err, size_t errlen)
{
    if (len > RX_MAX_TEXT) {
        snprintf(err, errlen, "a pattern of %zu bytes; at most %d are supported", len, RX_MAX_TEXT);
        return 0;
    }
    if (!moe_utf8_valid(pat, len)) {
        snprintf(err, errlen, "a pattern that is not valid UTF-8");
        return 0;
    }
    const char *p = pat, *end = pat + len;
    /* JSON Schema's patterns match anywhere unless anchored: '^' at the start, an unescaped '$' at
     * the end (a whole text's pattern may have them too: they say what it says already) */
    bool caret = len && pat[0] == '^', dollar = ends_with_dollar(pat + caret, end);
    bool head = whole || caret, tail = whole || dollar;
    p += caret;
    end -= dollar;
    /* a lookahead right after the start's anchor: (?=X) or (?!X), X matched from the start (to the
     * end when it ends with '$'); the pattern is then the rest's automaton and X's together */
    const char *look = NULL, *look_end = NULL;
    bool neg = false;
    if (head && end - p >= 3 && p[0] == '(' && p[1] == '?' && (p[2] == '=' || p[2] == '!')) {
        look = p + 3;
        if (!(look_end = group_end(look, end))) {
            snprintf(err, errlen, "pattern '%.*s': a '(' without its ')' at byte %td", quote_len(pat, len), pat,
                     p - pat);
            return 0;
        }
        neg = p[2] == '!';
        p = look_end + 1;
    }
    if ((!whole && (caret || dollar) && top_level_alt(p, end)) ||
        (look && ends_with_dollar(look, look_end) && top_level_alt(look, look_end))) {
        snprintf(err, errlen, "an anchor beside a '|' outside groups: write '^(a|b)$'");
        return 0;
    }
    uint32_t start = 0;
    struct json_dfa_build ra = { 0 }, rc = { 0 }; /* the rest's and X's automata, before their product */
    if (!look) {
        start = dfa_of(p, end, head, tail, b, pat, len, err, errlen);
    } else {
        const char *lx = look + (look < look_end && *look == '^'); /* '^' inside is where it already is */
        bool lx_tail = ends_with_dollar(lx, look_end);
        uint32_t sa = dfa_of(p, end, true, tail, &ra, pat, len, err, errlen);
        uint32_t sc = sa ? dfa_of(lx, look_end - lx_tail, true, lx_tail, &rc, pat, len, err, errlen) : 0;
        const char *why = "out of memory";
        if (sa && sc && (!dfa_begin(b) || !(start = product(&ra, sa, &rc, sc, neg, b, &why))))
            snprintf(err, errlen, "pattern '%.*s': %s", quote_len(pat, len), pat, why);
    }
    if (start && !lengths(b, start, (uint32_t)(b->n_states - start), count)) {
        snprintf(err, errlen, "pattern '%.*s' matches no text", quote_len(pat, len), pat);
        start = 0;
    }
    free(ra.states);
    free(ra.ranges);
    free(rc.states);
    free(rc.ranges);
    return start;
}
