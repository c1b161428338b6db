/* GBNF grammars: the compiler and the parse-stack recognizer (grammar.h).
 *
 * A compiled grammar is one array of elements, rule after rule: each rule's alternatives in turn,
 * each a sequence of character sets (G_SET) and rule references (G_REF), the alternatives
 * separated by G_ALT and the rule closed by G_END.  Groups and repetitions become rules of their
 * own: x* is R ::= x R | (nothing), x? is O ::= x | (nothing), x{m,n} is m copies of x then n - m
 * nested optional rules.
 *
 * A parse stack holds, bottom to top, the positions of the elements still to read: the top is
 * always a set (a reference on top is replaced, once per alternative, by that alternative's first
 * element over the reference's continuation), and an empty stack is a whole sentence.  Reading a
 * character advances every stack whose top set holds it; the state is the set of stacks, without
 * repeats, as a tree of shared nodes (the recognizer, below). */
#include "grammar.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { G_END, G_ALT, G_SET, G_REF };

struct gel {
    uint32_t kind; /* G_* */
    uint32_t arg;  /* G_SET: the set; G_REF: the rule */
};

struct gset {
    uint32_t first, n;   /* its ranges, sorted and apart */
    bool neg;            /* holds the code points outside them */
    uint64_t ascii[2];   /* the ranges' code points below 128, as bits */
};

struct grange {
    uint32_t lo, hi;
};

struct moe_grammar {
    struct gel *el;
    uint32_t n_el;
    uint32_t start;       /* the element that refers to root (after every rule) */
    struct gset *set;
    struct grange *rng;
    uint32_t *alt;        /* each alternative's first element, rule after rule */
    uint32_t *alt_first;  /* [n_rules + 1]: rule r's alternatives are alt[alt_first[r] .. alt_first[r + 1]) */
    int n_rules;
};

#define MAX_ELEMENTS 65000  /* positions fit the state's 16-bit words */
#define STEP_BUDGET 8192    /* expansions one character may take */
#define MAX_DEPTH 1024      /* expansions inside one another (C stack) */
#define MAX_NESTING 64      /* groups inside groups */

/* ---- the compiler ------------------------------------------------------------------ */

struct rule {
    struct gel *el;
    uint32_t n;
    size_t cap;
    char *name;      /* NULL: made for a group or a repetition */
    uint32_t at;     /* the byte where it was defined, or made */
    uint32_t used;   /* the byte of its first reference */
    bool defined;
    bool repeat;     /* made for an open repetition: R ::= x R | (nothing) */
};

struct gp {
    const char *src;
    size_t len, pos;
    struct rule *r;
    int n_r;
    size_t cap_r;
    struct grange *rng;
    uint32_t n_rng;
    size_t cap_rng;
    struct gset *set;
    uint32_t n_set;
    size_t cap_set;
    uint32_t n_el;   /* elements in all rules */
    int nesting;
    bool failed;
};

/* Fail at byte at with a message naming its line and column. */
static bool fail(struct gp *p, size_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool fail(struct gp *p, size_t at, const char *fmt, ...)
{
    if (p->failed) return false;
    p->failed = true;
    int line = 1, col = 1;
    for (size_t i = 0; i < at && i < p->len; i++) {
        if (p->src[i] == '\n') line++, col = 1;
        else if (((unsigned char)p->src[i] & 0xc0) != 0x80) col++;
    }
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    moe_errorf(MOE_EINVAL, "grammar, line %d column %d: %s", line, col, msg);
    return false;
}

static bool oom(struct gp *p)
{
    if (!p->failed) moe_errorf(MOE_ENOMEM, "out of memory compiling a grammar");
    p->failed = true;
    return false;
}

static int rule_new(struct gp *p, const char *name, size_t nlen, size_t at)
{
    if (p->n_r >= MOE_GRAMMAR_MAX_RULES) {
        fail(p, at, "more than %d rules (groups and repetitions count as rules)", MOE_GRAMMAR_MAX_RULES);
        return -1;
    }
    if (!moe_grow((void **)&p->r, &p->cap_r, (size_t)p->n_r + 1, sizeof(*p->r), 8)) return oom(p), -1;
    struct rule *r = &p->r[p->n_r];
    *r = (struct rule){ .at = (uint32_t)at, .used = (uint32_t)at };
    if (name) {
        r->name = malloc(nlen + 1);
        if (!r->name) return oom(p), -1;
        memcpy(r->name, name, nlen);
        r->name[nlen] = 0;
    }
    return p->n_r++;
}

static int rule_named(struct gp *p, const char *name, size_t nlen, size_t at)
{
    for (int i = 0; i < p->n_r; i++)
        if (p->r[i].name && strlen(p->r[i].name) == nlen && !memcmp(p->r[i].name, name, nlen)) return i;
    return rule_new(p, name, nlen, at);
}

static bool emit(struct gp *p, int ri, uint32_t kind, uint32_t arg)
{
    struct rule *r = &p->r[ri];
    if (p->n_el >= MAX_ELEMENTS) return fail(p, p->pos, "the grammar is too large (over %d elements once "
                                             "repetitions are written out)", MAX_ELEMENTS);
    if (!moe_grow((void **)&r->el, &r->cap, r->n + 1, sizeof(*r->el), 8)) return oom(p);
    r->el[r->n++] = (struct gel){ kind, arg };
    p->n_el++;
    return true;
}

static int range_cmp(const void *a, const void *b)
{
    const struct grange *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* A new set of the ranges added since first (sorted and merged here). */
static bool set_emit(struct gp *p, int ri, uint32_t first, bool neg)
{
    struct grange *g = p->rng + first;
    uint32_t n = p->n_rng - first, m = 0;
    if (n > 1) qsort(g, n, sizeof(*g), range_cmp);
    for (uint32_t i = 0; i < n; i++) {
        if (m && g[i].lo <= g[m - 1].hi + 1) {
            if (g[i].hi > g[m - 1].hi) g[m - 1].hi = g[i].hi;
        } else {
            g[m++] = g[i];
        }
    }
    p->n_rng = first + m;
    if (!moe_grow((void **)&p->set, &p->cap_set, p->n_set + 1, sizeof(*p->set), 8)) return oom(p);
    struct gset *s = &p->set[p->n_set];
    *s = (struct gset){ .first = first, .n = m, .neg = neg };
    for (uint32_t i = 0; i < m; i++)
        for (uint32_t c = g[i].lo; c <= g[i].hi && c < 128; c++) s->ascii[c >> 6] |= 1ull << (c & 63);
    return emit(p, ri, G_SET, p->n_set++);
}

static bool range_add(struct gp *p, uint32_t lo, uint32_t hi)
{
    if (!moe_grow((void **)&p->rng, &p->cap_rng, p->n_rng + 1, sizeof(*p->rng), 8)) return oom(p);
    p->rng[p->n_rng++] = (struct grange){ lo, hi };
    return true;
}

static bool at_end(const struct gp *p) { return p->pos >= p->len; }
static int peek(const struct gp *p) { return at_end(p) ? -1 : (unsigned char)p->src[p->pos]; }
static bool is_word(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* Spaces, tabs and comments; line breaks too when newlines is set. */
static void space(struct gp *p, bool newlines)
{
    while (!at_end(p)) {
        int c = peek(p);
        if (c == ' ' || c == '\t' || (newlines && (c == '\n' || c == '\r'))) {
            p->pos++;
        } else if (c == '#') {
            while (!at_end(p) && peek(p) != '\n' && peek(p) != '\r') p->pos++;
        } else {
            break;
        }
    }
}

static int hexval(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* One character of a literal or class (an escape, or a UTF-8 sequence of the source). */
static bool read_char(struct gp *p, uint32_t *cp)
{
    size_t at = p->pos;
    const unsigned char *s = (const unsigned char *)p->src;
    unsigned c = s[p->pos++];
    if (c == '\\') {
        if (at_end(p)) return fail(p, at, "the grammar ends inside an escape");
        unsigned e = s[p->pos++];
        int digits = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
        static const char plain[] = "nrt\\\"[]-", value[] = "\n\r\t\\\"[]-";
        const char *k = digits ? NULL : strchr(plain, (int)e);
        if (!digits) {
            if (!k || !e) return fail(p, at, "unknown escape '\\%c' (\\n \\r \\t \\\\ \\\" \\[ \\] \\- \\xHH \\uHHHH "
                                      "\\UHHHHHHHH)", e >= 0x20 && e < 0x7f ? (char)e : '?');
            *cp = (unsigned char)value[k - plain];
            return true;
        }
        uint32_t v = 0;
        for (int i = 0; i < digits; i++) {
            int h = at_end(p) ? -1 : hexval(s[p->pos]);
            if (h < 0) return fail(p, at, "'\\%c' needs %d hexadecimal digits", (char)e, digits);
            v = v << 4 | (uint32_t)h;
            p->pos++;
        }
        if (v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
            return fail(p, at, "U+%X is not a Unicode character the output could hold", v);
        *cp = v;
        return true;
    }
    if (c < 0x80) {
        *cp = c;
        return true;
    }
    int n = c >= 0xf0 && c <= 0xf4 ? 3 : c >= 0xe0 ? 2 : c >= 0xc2 && c <= 0xdf ? 1 : -1;
    if (c > 0xf4) n = -1;
    uint32_t v = c & (0x3fu >> (n > 0 ? n : 0));
    for (int i = 0; i < n; i++) {
        if (at_end(p) || (s[p->pos] & 0xc0) != 0x80) return fail(p, at, "the grammar's text is not UTF-8");
        v = v << 6 | (s[p->pos++] & 0x3f);
    }
    static const uint32_t least[] = { 0, 0x80, 0x800, 0x10000 };
    if (n < 0 || v < least[n] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return fail(p, at, "the grammar's text is not UTF-8");
    *cp = v;
    return true;
}

static bool parse_alternatives(struct gp *p, int ri, bool nested);
static bool set_may(const struct moe_grammar *g, const struct gset *s, uint32_t lo, uint32_t hi);

/* A repetition's count: digits. */
static bool read_count(struct gp *p, uint32_t *v)
{
    size_t at = p->pos;
    uint64_t x = 0;
    if (!(peek(p) >= '0' && peek(p) <= '9')) return fail(p, at, "expected a number in the repetition");
    while (peek(p) >= '0' && peek(p) <= '9') {
        x = x * 10 + (uint64_t)(peek(p) - '0');
        if (x > MOE_GRAMMAR_MAX_REPEAT)
            return fail(p, at, "a repetition count above %d", MOE_GRAMMAR_MAX_REPEAT);
        p->pos++;
    }
    *v = (uint32_t)x;
    return true;
}

/* The last item of rule ri (its elements from s on) repeated as the operator at p->pos says. */
static bool repeat(struct gp *p, int ri, uint32_t s, size_t item_at)
{
    size_t at = p->pos;
    int op = peek(p);
    uint32_t lo = 0, hi = UINT32_MAX;
    p->pos++;
    if (op == '+') lo = 1;
    else if (op == '?') hi = 1;
    else if (op == '{') {
        space(p, true);
        if (!read_count(p, &lo)) return false;
        space(p, true);
        hi = lo;
        if (peek(p) == ',') {
            p->pos++;
            space(p, true);
            hi = UINT32_MAX;
            if (peek(p) != '}' && !read_count(p, &hi)) return false;
            space(p, true);
        }
        if (peek(p) != '}') return fail(p, p->pos, "expected '}' to close the repetition");
        p->pos++;
        if (hi < lo) return fail(p, at, "the repetition's maximum %u is below its minimum %u", hi, lo);
    }
    uint32_t n = p->r[ri].n - s;
    if (n == 0) return fail(p, item_at, "a repetition of an empty literal");
    struct gel x = p->r[ri].el[s];
    if (n > 1) { /* a literal of several characters: a rule of its own */
        int w = rule_new(p, NULL, 0, item_at);
        if (w < 0) return false;
        for (uint32_t i = 0; i < n; i++)
            if (!emit(p, w, p->r[ri].el[s + i].kind, p->r[ri].el[s + i].arg)) return false;
        if (!emit(p, w, G_END, 0)) return false;
        x = (struct gel){ G_REF, (uint32_t)w };
    }
    p->n_el -= p->r[ri].n - s;
    p->r[ri].n = s;
    for (uint32_t i = 0; i < lo; i++)
        if (!emit(p, ri, x.kind, x.arg)) return false;
    if (hi == UINT32_MAX) { /* R ::= x R | (nothing) */
        int rr = rule_new(p, NULL, 0, item_at);
        if (rr < 0) return false;
        p->r[rr].repeat = true;
        return emit(p, rr, x.kind, x.arg) && emit(p, rr, G_REF, (uint32_t)rr) && emit(p, rr, G_ALT, 0) &&
               emit(p, rr, G_END, 0) && emit(p, ri, G_REF, (uint32_t)rr);
    }
    /* up to hi - lo more: O1 ::= x O2 | (nothing), ..., Ok ::= x | (nothing) */
    int prev = -1;
    for (uint32_t i = lo; i < hi; i++) {
        int o = rule_new(p, NULL, 0, item_at);
        if (o < 0) return false;
        if (!emit(p, prev < 0 ? ri : prev, G_REF, (uint32_t)o)) return false;
        if (prev >= 0 && !(emit(p, prev, G_ALT, 0) && emit(p, prev, G_END, 0))) return false;
        if (!emit(p, o, x.kind, x.arg)) return false;
        prev = o;
    }
    return prev < 0 || (emit(p, prev, G_ALT, 0) && emit(p, prev, G_END, 0));
}

/* Items up to '|', ')', the end, or (outside a group) a line break. */
static bool parse_sequence(struct gp *p, int ri, bool nested)
{
    while (!at_end(p)) {
        int c = peek(p);
        size_t at = p->pos;
        uint32_t s = p->r[ri].n;
        if (c == '"') {
            p->pos++;
            for (;;) {
                if (at_end(p) || peek(p) == '\n') return fail(p, at, "a literal without its closing '\"'");
                if (peek(p) == '"') break;
                uint32_t cp, first = p->n_rng;
                if (!read_char(p, &cp) || !range_add(p, cp, cp) || !set_emit(p, ri, first, false)) return false;
            }
            p->pos++;
        } else if (c == '[') {
            p->pos++;
            bool neg = peek(p) == '^';
            p->pos += neg;
            uint32_t first = p->n_rng;
            for (;;) {
                if (at_end(p)) return fail(p, at, "a character class without its closing ']'");
                if (peek(p) == ']') break;
                uint32_t lo, hi;
                if (!read_char(p, &lo)) return false;
                hi = lo;
                if (peek(p) == '-' && p->pos + 1 < p->len && p->src[p->pos + 1] != ']') {
                    size_t rat = p->pos++;
                    if (!read_char(p, &hi)) return false;
                    if (hi < lo) return fail(p, rat, "the range's end U+%X is below its start U+%X", hi, lo);
                }
                if (!range_add(p, lo, hi)) return false;
            }
            p->pos++;
            if (!set_emit(p, ri, first, neg)) return false;
            const struct gset *cls = &p->set[p->n_set - 1];
            struct moe_grammar view = { .rng = p->rng };
            if (!set_may(&view, cls, 0, 0xd7ff) && !set_may(&view, cls, 0xe000, 0x10ffff))
                return fail(p, at, "a character class that matches no character");
        } else if (c == '.') {
            p->pos++;
            if (!set_emit(p, ri, p->n_rng, true)) return false;
        } else if (c == '(') {
            if (++p->nesting > MAX_NESTING) return fail(p, at, "groups nested more than %d deep", MAX_NESTING);
            p->pos++;
            space(p, true);
            int g = rule_new(p, NULL, 0, at);
            if (g < 0 || !parse_alternatives(p, g, true)) return false;
            if (peek(p) != ')') return fail(p, p->pos, "expected ')' to close the group opened at byte %zu", at + 1);
            p->pos++;
            p->nesting--;
            if (!emit(p, ri, G_REF, (uint32_t)g)) return false;
        } else if (is_word(c)) {
            size_t b = p->pos;
            while (is_word(peek(p))) p->pos++;
            size_t e = p->pos;
            space(p, false);
            if (p->len - p->pos >= 3 && !memcmp(p->src + p->pos, "::=", 3))
                return fail(p, b, "rule '%.*s' begins on the line of another rule: put each rule on a line of "
                            "its own", (int)(e - b), p->src + b);
            p->pos = e;
            int r = rule_named(p, p->src + b, e - b, b);
            if (r < 0 || !emit(p, ri, G_REF, (uint32_t)r)) return false;
        } else {
            return true;
        }
        space(p, nested);
        c = peek(p);
        if (c == '*' || c == '+' || c == '?' || c == '{') {
            if (!repeat(p, ri, s, at)) return false;
            space(p, nested);
        }
    }
    return true;
}

static bool parse_alternatives(struct gp *p, int ri, bool nested)
{
    for (;;) {
        if (!parse_sequence(p, ri, nested)) return false;
        if (!nested) { /* a line that begins with '|' goes on with the rule */
            size_t line_end = p->pos;
            space(p, true);
            if (peek(p) != '|') p->pos = line_end;
        }
        if (peek(p) != '|') break;
        p->pos++;
        space(p, true);
        if (!emit(p, ri, G_ALT, 0)) return false;
    }
    return emit(p, ri, G_END, 0);
}

static bool parse_rules(struct gp *p)
{
    space(p, true);
    while (!at_end(p)) {
        size_t b = p->pos;
        while (is_word(peek(p))) p->pos++;
        if (p->pos == b) return fail(p, b, "expected a rule name (letters, digits, '-' and '_')");
        size_t e = p->pos;
        int r = rule_named(p, p->src + b, e - b, b);
        if (r < 0) return false;
        if (p->r[r].defined) return fail(p, b, "rule '%s' is defined twice", p->r[r].name);
        p->r[r].defined = true;
        p->r[r].at = (uint32_t)b;
        space(p, false);
        if (p->len - p->pos < 3 || memcmp(p->src + p->pos, "::=", 3))
            return fail(p, p->pos, "expected '::=' after the rule name '%s'", p->r[r].name);
        p->pos += 3;
        space(p, true);
        if (!parse_alternatives(p, r, false)) return false;
        if (!at_end(p) && peek(p) != '\n' && peek(p) != '\r') {
            int c = peek(p);
            if (c == ')') return fail(p, p->pos, "a ')' that closes no group");
            return fail(p, p->pos, "unexpected '%c'", c >= 0x20 && c < 0x7f ? (char)c : '?');
        }
        space(p, true);
    }
    return true;
}

/* ---- checks over the compiled rules ------------------------------------------------------ */

static const char *rule_name(const struct gp *p, int r) { return p->r[r].name ? p->r[r].name : NULL; }

/* Whether each rule can derive the empty text. */
static void nullable(const struct moe_grammar *g, bool *nul)
{
    for (bool changed = true; changed;) {
        changed = false;
        for (int r = 0; r < g->n_rules; r++) {
            if (nul[r]) continue;
            for (uint32_t a = g->alt_first[r]; a < g->alt_first[r + 1] && !nul[r]; a++) {
                uint32_t i = g->alt[a];
                while (g->el[i].kind == G_REF && nul[g->el[i].arg]) i++;
                if (g->el[i].kind <= G_ALT) nul[r] = changed = true;
            }
        }
    }
}

/* Depth-first search for a rule that reaches itself before reading a character: color 1 on the
 * path (path[0 .. *depth)), 2 done.  Returns the rule the cycle closes at, or -1. */
static int left_cycle(const struct moe_grammar *g, const bool *nul, uint8_t *color, int r, int *path, int *depth)
{
    color[r] = 1;
    path[(*depth)++] = r;
    for (uint32_t a = g->alt_first[r]; a < g->alt_first[r + 1]; a++)
        for (uint32_t i = g->alt[a]; g->el[i].kind == G_REF; i++) {
            int s = (int)g->el[i].arg;
            if (color[s] == 1) return s;
            if (color[s] == 0) {
                int c = left_cycle(g, nul, color, s, path, depth);
                if (c >= 0) return c;
            }
            if (!nul[s]) break;
        }
    color[r] = 2;
    (*depth)--;
    return -1;
}

static bool check_left_recursion(struct gp *p, const struct moe_grammar *g)
{
    bool *nul = calloc((size_t)g->n_rules, sizeof(*nul));
    uint8_t *color = calloc((size_t)g->n_rules, 1);
    int *path = malloc(sizeof(*path) * (size_t)g->n_rules);
    if (!nul || !color || !path) {
        free(nul), free(color), free(path);
        return oom(p);
    }
    nullable(g, nul);
    bool ok = true;
    for (int r = 0; r < g->n_rules && ok; r++) {
        int depth = 0;
        int c = color[r] ? -1 : left_cycle(g, nul, color, r, path, &depth);
        if (c < 0) continue;
        int from = 0;
        while (path[from] != c) from++;
        for (int i = from; i < depth; i++) /* an open repetition of something that can be empty */
            if (p->r[path[i]].repeat) {
                ok = fail(p, p->r[path[i]].at, "this repetition repeats something that can match no text, so "
                          "it could go on without reading a character");
                break;
            }
        if (!ok) break;
        char cyc[256];
        size_t n = 0;
        for (int i = from; i <= depth && n < sizeof(cyc) - 40; i++) {
            int q = i < depth ? path[i] : c;
            if (!rule_name(p, q)) continue;
            n += (size_t)snprintf(cyc + n, sizeof(cyc) - n, "%s%s", n ? " -> " : "", rule_name(p, q));
        }
        int at = c;
        for (int i = from; i < depth; i++)
            if (rule_name(p, path[i])) {
                at = path[i];
                break;
            }
        ok = fail(p, p->r[at].at, "left recursion: a rule reaches itself before reading a character (%s); write it "
                  "with a repetition instead, as in  expr ::= term (\"+\" term)*", cyc);
    }
    free(nul), free(color), free(path);
    return ok;
}

/* ---- the recognizer ------------------------------------------------------------------------ */

/* The state: w[0] the stacks (their tops), w[1] the nodes; w[2 ..] each stack's top node; then
 * each node's two words: its element and the node under it.  Node 0 is the bottom (no element): a
 * stack whose top is node 0 is empty.  The stacks share the nodes under their tops, and equal
 * stacks are one node (a node is made once per element and node under it), so a state holds its
 * stacks once each and deep nesting costs a node per level, not per stack. */
#define MAX_NODES ((MOE_GRAMMAR_WORDS - 2 - 64) / 2) /* with 64 stacks at least beside them */
#define HASH_MAX 4096 /* a power of two, at least twice MAX_NODES */

_Static_assert(HASH_MAX >= 2 * MAX_NODES, "the node table must stay half empty");
_Static_assert(MAX_NODES <= UINT16_MAX && MOE_GRAMMAR_MAX_STACKS % 64 == 0, "nodes are named by 16-bit words");

static const uint16_t *nodes_of(const uint16_t *w) { return w + 2 + w[0]; }
static uint32_t node_el(const uint16_t *w, uint32_t n) { return nodes_of(w)[2 * n]; }
static uint32_t node_under(const uint16_t *w, uint32_t n) { return nodes_of(w)[2 * n + 1]; }

/* A state being made from another (or from nothing): its stacks' tops and its nodes apart, packed
 * into a state when done. */
struct build {
    const struct moe_grammar *g;
    const uint16_t *old;      /* the state read, or NULL */
    uint32_t n_tops, n_nodes;
    uint32_t budget;          /* expansions left */
    uint32_t depth;           /* expansions under way */
    uint32_t hsize;           /* slots of hash in use: a power of two */
    bool over;                /* more stacks or nodes than a state holds, or the budget spent */
    uint16_t tops[MOE_GRAMMAR_MAX_STACKS];
    uint64_t is_top[(MAX_NODES + 63) / 64];
    uint16_t nodes[2 * MAX_NODES];
    uint16_t memo[MAX_NODES]; /* an old node's copy + 1, 0: not copied yet */
    uint16_t hash[HASH_MAX];  /* node + 1 by its element and the node under it */
};

static uint32_t node_hash(uint32_t el, uint32_t under, uint32_t size)
{
    return ((el * 2654435761u) ^ (under * 2246822519u)) >> 7 & (size - 1);
}

static void build_init(struct build *b, const struct moe_grammar *g, const uint16_t *old)
{
    b->g = g;
    b->old = old;
    b->budget = STEP_BUDGET;
    b->depth = 0;
    b->over = false;
    b->n_tops = 0;
    uint32_t want = 2 * (old ? old[1] + 64u : 64u);
    for (b->hsize = 256; b->hsize < want && b->hsize < HASH_MAX;) b->hsize *= 2;
    memset(b->hash, 0, sizeof(b->hash[0]) * b->hsize);
    if (old) memset(b->memo, 0, sizeof(b->memo[0]) * old[1]);
    b->n_nodes = 1;
    b->nodes[0] = UINT16_MAX; /* node 0, the bottom */
    b->nodes[1] = 0;
    memset(b->is_top, 0, sizeof(b->is_top));
}

/* The state made, into w; false when it does not fit. */
static bool build_pack(const struct build *b, uint16_t *w)
{
    if (b->over || 2 + b->n_tops + 2 * b->n_nodes > MOE_GRAMMAR_WORDS) return false;
    w[0] = (uint16_t)b->n_tops;
    w[1] = (uint16_t)b->n_nodes;
    memcpy(w + 2, b->tops, sizeof(b->tops[0]) * b->n_tops);
    memcpy(w + 2 + b->n_tops, b->nodes, sizeof(b->nodes[0]) * 2 * b->n_nodes);
    return true;
}

/* The node of element el over node under, made if there is none. */
static uint32_t make(struct build *b, uint32_t el, uint32_t under)
{
    uint32_t h = node_hash(el, under, b->hsize);
    for (;; h = (h + 1) & (b->hsize - 1)) {
        uint32_t e = b->hash[h];
        if (!e) break;
        if (b->nodes[2 * (e - 1)] == el && b->nodes[2 * (e - 1) + 1] == under) return e - 1;
    }
    if (b->n_nodes >= MAX_NODES) {
        b->over = true;
        return 0;
    }
    uint32_t n = b->n_nodes++;
    b->nodes[2 * n] = (uint16_t)el;
    b->nodes[2 * n + 1] = (uint16_t)under;
    b->hash[h] = (uint16_t)(n + 1);
    if (2 * b->n_nodes > b->hsize && b->hsize < HASH_MAX) { /* keep the table half empty */
        b->hsize *= 2;
        memset(b->hash, 0, sizeof(b->hash[0]) * b->hsize);
        for (uint32_t i = 1; i < b->n_nodes; i++) {
            uint32_t k = node_hash(b->nodes[2 * i], b->nodes[2 * i + 1], b->hsize);
            while (b->hash[k]) k = (k + 1) & (b->hsize - 1);
            b->hash[k] = (uint16_t)(i + 1);
        }
    }
    return n;
}

/* The copy of the old state's node n (and of the nodes under it). */
static uint32_t copy_node(struct build *b, uint32_t n)
{
    if (n == 0) return 0;
    if (b->memo[n]) return b->memo[n] - 1u;
    uint32_t c = make(b, node_el(b->old, n), copy_node(b, node_under(b->old, n)));
    b->memo[n] = (uint16_t)(c + 1);
    return c;
}

static atomic_size_t overflows;

size_t moe_grammar_overflows(void) { return atomic_load_explicit(&overflows, memory_order_relaxed); }

static void top_add(struct build *b, uint32_t n)
{
    if (b->is_top[n / 64] >> (n % 64) & 1) return;
    if (b->n_tops >= MOE_GRAMMAR_MAX_STACKS) {
        b->over = true;
        return;
    }
    b->is_top[n / 64] |= 1ull << (n % 64);
    b->tops[b->n_tops++] = (uint16_t)n;
}

/* Add the stack topped by node n, its top reference (if any) replaced by each alternative,
 * recursively, so that every stack added has a set on top or is empty. */
static void expand(struct build *b, uint32_t n)
{
    const struct moe_grammar *g = b->g;
    if (b->over) return;
    if (b->budget == 0 || b->depth >= MAX_DEPTH) {
        b->over = true;
        return;
    }
    b->budget--;
    uint32_t top = b->nodes[2 * n];
    if (n == 0 || g->el[top].kind == G_SET) {
        top_add(b, n);
        return;
    }
    b->depth++;
    uint32_t base = b->nodes[2 * n + 1], r = g->el[top].arg;
    if (g->el[top + 1].kind >= G_SET) base = make(b, top + 1, base); /* the reference's continuation */
    for (uint32_t a = g->alt_first[r]; a < g->alt_first[r + 1] && !b->over; a++) {
        uint32_t first = g->alt[a];
        expand(b, g->el[first].kind < G_SET ? base : make(b, first, base)); /* an empty alternative: base */
    }
    b->depth--;
}

static bool set_has(const struct moe_grammar *g, const struct gset *s, uint32_t cp)
{
    bool in = false;
    if (cp < 128) {
        in = s->ascii[cp >> 6] >> (cp & 63) & 1;
    } else {
        const struct grange *r = g->rng + s->first;
        for (uint32_t i = 0; i < s->n && r[i].lo <= cp; i++)
            if (cp <= r[i].hi) {
                in = true;
                break;
            }
    }
    return in != s->neg;
}

static bool set_may(const struct moe_grammar *g, const struct gset *s, uint32_t lo, uint32_t hi)
{
    const struct grange *r = g->rng + s->first;
    if (!s->neg) {
        for (uint32_t i = 0; i < s->n; i++)
            if (r[i].hi >= lo && r[i].lo <= hi) return true;
        return false;
    }
    uint32_t x = lo; /* the lowest code point from lo not yet found inside a range */
    for (uint32_t i = 0; i < s->n && x <= hi; i++) {
        if (r[i].hi < x) continue;
        if (r[i].lo > x) return true;
        x = r[i].hi + 1;
    }
    return x <= hi;
}

/* The start state into st; false when it does not fit. */
static bool start(const struct moe_grammar *g, uint16_t *st)
{
    struct build *b = malloc(sizeof(*b));
    if (!b) return false;
    build_init(b, g, NULL);
    expand(b, make(b, g->start, 0));
    bool ok = build_pack(b, st);
    free(b);
    return ok;
}

void moe_grammar_start(const struct moe_grammar *g, uint16_t *st)
{
    if (!start(g, st)) st[0] = st[1] = 0; /* refused at compile time: never here (or out of memory) */
}

size_t moe_grammar_state_words(const uint16_t *st) { return 2u + st[0] + 2u * st[1]; }

bool moe_grammar_state_equal(const uint16_t *a, const uint16_t *b)
{
    return a[0] == b[0] && a[1] == b[1] && !memcmp(a + 2, b + 2, sizeof(*a) * (a[0] + 2u * a[1]));
}

bool moe_grammar_step(const struct moe_grammar *g, uint16_t *st, uint32_t cp)
{
    struct build b;
    build_init(&b, g, st);
    for (uint32_t i = 0; i < st[0] && !b.over; i++) {
        uint32_t t = st[2 + i];
        if (t == 0) continue;
        uint32_t e = node_el(st, t);
        if (!set_has(g, &g->set[g->el[e].arg], cp)) continue;
        uint32_t n = copy_node(&b, node_under(st, t));
        if (g->el[e + 1].kind >= G_SET) n = make(&b, e + 1, n);
        expand(&b, n);
    }
    if (b.over) atomic_fetch_add_explicit(&overflows, 1, memory_order_relaxed);
    if (b.over || b.n_tops == 0) return false;
    if (!build_pack(&b, st)) { /* more words than a state holds */
        atomic_fetch_add_explicit(&overflows, 1, memory_order_relaxed);
        return false;
    }
    return true;
}

int moe_grammar_byte_classes(const struct moe_grammar *g, const uint16_t *st, uint8_t cls[128])
{
    /* one class, split by each stack's set in turn (members and the rest of a class part ways),
     * numbered densely after each split; bytes no set holds are class 0 */
    uint16_t id[128], remap[260];
    uint64_t any[2] = { 0, 0 };
    int n = 1;
    for (int c = 0; c < 128; c++) id[c] = 1;
    for (uint32_t i = 0; i < st[0]; i++) {
        uint32_t t = st[2 + i];
        if (!t) continue;
        const struct gset *set = &g->set[g->el[node_el(st, t)].arg];
        uint64_t m[2] = { set->neg ? ~set->ascii[0] : set->ascii[0], set->neg ? ~set->ascii[1] : set->ascii[1] };
        any[0] |= m[0];
        any[1] |= m[1];
        memset(remap, 0, sizeof(remap[0]) * (size_t)(n + 1));
        int next = n;
        for (int c = 0; c < 128; c++)
            if (m[c >> 6] >> (c & 63) & 1) {
                if (!remap[id[c]]) remap[id[c]] = (uint16_t)++next;
                id[c] = remap[id[c]];
            }
        memset(remap, 0, sizeof(remap[0]) * (size_t)(next + 1));
        n = 0;
        for (int c = 0; c < 128; c++) {
            if (!remap[id[c]]) remap[id[c]] = (uint16_t)++n;
            id[c] = remap[id[c]];
        }
    }
    memset(remap, 0, sizeof(remap[0]) * (size_t)(n + 1));
    int k = 0;
    for (int c = 0; c < 128; c++) {
        if (!(any[c >> 6] >> (c & 63) & 1)) {
            cls[c] = 0;
            continue;
        }
        if (!remap[id[c]]) remap[id[c]] = (uint16_t)++k;
        cls[c] = (uint8_t)remap[id[c]];
    }
    return k;
}

/* Whether set s holds all of lo .. hi or none of it. */
static bool set_uniform(const struct moe_grammar *g, const struct gset *s, uint32_t lo, uint32_t hi)
{
    struct gset other = *s; /* its complement */
    other.neg = !s->neg;
    return !set_may(g, s, lo, hi) || !set_may(g, &other, lo, hi);
}

bool moe_grammar_high_uniform(const struct moe_grammar *g, const uint16_t *st)
{
    for (uint32_t i = 0; i < st[0]; i++) {
        uint32_t t = st[2 + i];
        if (!t) continue;
        const struct gset *s = &g->set[g->el[node_el(st, t)].arg];
        if (!set_uniform(g, s, 0x80, 0xd7ff) || !set_uniform(g, s, 0xe000, 0x10ffff) ||
            set_has(g, s, 0x80) != set_has(g, s, 0xe000))
            return false;
    }
    return true;
}

bool moe_grammar_may(const struct moe_grammar *g, const uint16_t *st, uint32_t lo, uint32_t hi)
{
    for (uint32_t i = 0; i < st[0]; i++) {
        uint32_t t = st[2 + i];
        if (t && set_may(g, &g->set[g->el[node_el(st, t)].arg], lo, hi)) return true;
    }
    return false;
}

bool moe_grammar_accepts(const uint16_t *st)
{
    for (uint32_t i = 0; i < st[0]; i++)
        if (st[2 + i] == 0) return true;
    return false;
}

bool moe_grammar_open(const uint16_t *st)
{
    for (uint32_t i = 0; i < st[0]; i++)
        if (st[2 + i] != 0) return true;
    return false;
}

/* ---- compile -------------------------------------------------------------------------------- */

void moe_grammar_free(struct moe_grammar *g)
{
    if (!g) return;
    free(g->el);
    free(g->set);
    free(g->rng);
    free(g->alt);
    free(g->alt_first);
    free(g);
}

/* The rules of p as one array of elements, with every alternative's start. */
static struct moe_grammar *flatten(struct gp *p, int root)
{
    struct moe_grammar *g = calloc(1, sizeof(*g));
    if (!g) return oom(p), NULL;
    g->n_rules = p->n_r;
    g->el = malloc(sizeof(*g->el) * (p->n_el + 2));
    g->alt = malloc(sizeof(*g->alt) * (p->n_el + 1));
    g->alt_first = malloc(sizeof(*g->alt_first) * ((size_t)p->n_r + 1));
    if (!g->el || !g->alt || !g->alt_first) {
        moe_grammar_free(g);
        return oom(p), NULL;
    }
    uint32_t *start = malloc(sizeof(*start) * (size_t)p->n_r);
    if (!start) {
        moe_grammar_free(g);
        return oom(p), NULL;
    }
    uint32_t n = 0, na = 0;
    for (int r = 0; r < p->n_r; r++) {
        start[r] = n;
        g->alt_first[r] = na;
        g->alt[na++] = n;
        for (uint32_t i = 0; i < p->r[r].n; i++) {
            g->el[n++] = p->r[r].el[i];
            if (p->r[r].el[i].kind == G_ALT) g->alt[na++] = n;
        }
    }
    g->alt_first[p->n_r] = na;
    g->start = n;
    g->el[n++] = (struct gel){ G_REF, (uint32_t)root };
    g->el[n++] = (struct gel){ G_END, 0 };
    g->n_el = n;
    free(start);
    g->set = p->set;
    g->rng = p->rng;
    p->set = NULL;
    p->rng = NULL;
    return g;
}

enum moe_status moe_grammar_compile(const char *text, size_t len, struct moe_grammar **out)
{
    *out = NULL;
    struct gp p = { .src = text, .len = len };
    struct moe_grammar *g = NULL;
    int root = -1;
    /* the range table exists even when no class has ranges ('.' alone) */
    if (!moe_grow((void **)&p.rng, &p.cap_rng, 1, sizeof(*p.rng), 8)) oom(&p);
    if (!p.failed && parse_rules(&p)) {
        for (int r = 0; r < p.n_r; r++) {
            if (p.r[r].name && !p.r[r].defined) {
                fail(&p, p.r[r].used, "rule '%s' is used but never defined", p.r[r].name);
                break;
            }
            if (p.r[r].name && !strcmp(p.r[r].name, "root")) root = r;
        }
        if (!p.failed && root < 0) fail(&p, 0, "no rule 'root': the output is what 'root' derives");
    }
    if (!p.failed) g = flatten(&p, root);
    uint16_t st[MOE_GRAMMAR_WORDS];
    if (g && check_left_recursion(&p, g) && !start(g, st))
        fail(&p, 0, "the grammar's beginning has more than %d ways to go on at once (or nests rules too deep)",
             MOE_GRAMMAR_MAX_STACKS);
    for (int r = 0; r < p.n_r; r++) {
        free(p.r[r].el);
        free(p.r[r].name);
    }
    free(p.r);
    free(p.rng);
    free(p.set);
    if (p.failed) {
        moe_grammar_free(g);
        return moe_last_status();
    }
    *out = g;
    return MOE_OK;
}
