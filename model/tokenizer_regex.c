/* Split pre-tokenizer regexes (see tokenizer_regex.h): pattern text ->
 * syntax tree -> program for a backtracking machine.  Every character class
 * is a sorted list of code point ranges (with a bitmap of its ASCII part),
 * so \p{L}, [^\r\n\p{L}] and a literal are all one instruction. */
#include "tokenizer_regex.h"
#include "tokenizer_unicode.h"
#include "utf8.h"

#include <stdlib.h>
#include <string.h>

#define RE_MAX_TEXT 8192     /* bytes of a pattern */
#define RE_MAX_NEST 32       /* groups inside groups */
#define RE_MAX_REPEAT 1000   /* the largest count in {n,m} */
#define RE_MAX_PROG 65536    /* instructions of one pattern */
#define RE_MAX_LOOK 8        /* lookaheads inside lookaheads */
#define CP_MAX 0x10ffffu

/* A class's ranges are the Unicode tables' kind (cls 1: in the class), so
 * one lookup serves both. */
typedef struct moe_tok_range rng_t;

struct cls {
    int off, n;              /* ranges rs[off .. off + n), sorted, disjoint, not adjacent */
    uint64_t ascii[2];       /* which of U+0000..U+007F it holds */
};

enum { N_CLASS, N_CAT, N_ALT, N_REP, N_LOOK, N_EMPTY, N_ANCHOR };
/* Anchors, as Oniguruma reads them: ^ and $ at line breaks too, \A \z \Z at the text's ends. */
enum { A_LINE_BEGIN, A_LINE_END, A_TEXT_BEGIN, A_TEXT_END, A_TEXT_END_NL };
enum { REP_GREEDY, REP_LAZY, REP_POSSESSIVE };

struct node {
    int kind;
    int a, b;        /* CAT, ALT: the two sides; REP, LOOK: a, the inner node */
    int min, max;    /* REP: counts, max -1 for no bound */
    int mode;        /* REP: REP_*; LOOK: 1 when negative; ANCHOR: A_* */
    int cls;         /* CLASS: index into classes */
    bool nullable;   /* can match the empty text */
    int first;       /* the class of the characters a match starts with, -1 when unknown or nullable */
};

enum { OP_CLASS, OP_RCLASS, OP_SPLIT, OP_JMP, OP_LOOK, OP_MATCH, OP_ASSERT };

struct inst {
    uint8_t op;
    bool flag;       /* RCLASS: possessive; LOOK: negative */
    int x, y;        /* CLASS, RCLASS: x the class; SPLIT: x first, y second; JMP, LOOK: x the target;
                        ASSERT: x the anchor (A_*) */
    int fx, fy;      /* SPLIT: the class that must hold the next character for x / y to match, -1 any */
    int min, max;    /* RCLASS: counts, max -1 for no bound */
    int memo;        /* RCLASS: its slot in the workspace's dead spans, -1 for none (see mark_memo) */
};

struct moe_tok_regex {
    struct inst *prog;
    int n_prog;
    struct cls *classes;
    rng_t *rs;
    int first;       /* class of the characters a match can start with */
    int n_memo;      /* class loops with a dead span (inst.memo) */
};

struct moe_tok_frame {
    int pc;
    size_t pos;
};

/* ---- classes ------------------------------------------------------------ */

struct parser {
    const char *p, *end;
    struct node *nodes;
    int nn;
    size_t cap_n;
    struct cls *classes;
    int nc;
    size_t cap_c;
    rng_t *rs;
    int nr;
    size_t cap_r;
    rng_t *tmp;     /* a class being built */
    int nt;
    size_t cap_t;
    int depth;
    bool icase;
    const char *err, *err_at;
};

static bool fail(struct parser *x, const char *msg)
{
    if (!x->err) {
        x->err = msg;
        x->err_at = x->p;
    }
    return false;
}

static bool tmp_add(struct parser *x, uint32_t lo, uint32_t hi)
{
    if (!moe_grow((void **)&x->tmp, &x->cap_t, x->nt + 1, sizeof(rng_t), 16))
        return fail(x, "out of memory");
    x->tmp[x->nt++] = (rng_t){lo, hi, 1};
    return true;
}

static int rng_cmp(const void *a, const void *b)
{
    const rng_t *p = a, *q = b;
    return p->lo < q->lo ? -1 : p->lo > q->lo;
}

/* Sort and merge tmp[from..nt) in place; complement it when neg. */
static bool tmp_normalize(struct parser *x, int from, bool neg)
{
    rng_t *r = x->tmp + from;
    int n = x->nt - from, k = 0;
    if (n > 1)
        qsort(r, (size_t)n, sizeof(*r), rng_cmp);
    for (int i = 0; i < n; i++) {
        if (k > 0 && r[i].lo <= r[k - 1].hi + 1) {
            if (r[i].hi > r[k - 1].hi)
                r[k - 1].hi = r[i].hi;
        } else {
            r[k++] = r[i];
        }
    }
    x->nt = from + k;
    if (!neg)
        return true;
    /* the gaps between the k ranges: at most k + 1 */
    rng_t *c = malloc(sizeof(*c) * (size_t)(k + 1));
    if (!c)
        return fail(x, "out of memory");
    int m = 0;
    uint32_t next = 0;
    for (int i = 0; i < k; i++) {
        if (r[i].lo > next)
            c[m++] = (rng_t){next, r[i].lo - 1, 1};
        next = r[i].hi + 1;
    }
    if (next <= CP_MAX)
        c[m++] = (rng_t){next, CP_MAX, 1};
    x->nt = from;
    bool ok = true;
    for (int i = 0; i < m && ok; i++)
        ok = tmp_add(x, c[i].lo, c[i].hi);
    free(c);
    return ok;
}

/* The general categories of mask, as ranges into tmp. */
static bool tmp_add_categories(struct parser *x, uint32_t mask)
{
    uint32_t prev_hi = 0;
    bool any = false;
    for (unsigned i = 0; i < moe_tok_n_gc_ranges; i++) {
        const struct moe_tok_range *g = &moe_tok_gc_ranges[i];
        /* unassigned code points (Cn) lie between the listed ranges */
        if ((mask >> MOE_TOK_GC_CN) & 1) {
            uint32_t gap_lo = any ? prev_hi + 1 : 0;
            if (g->lo > gap_lo && !tmp_add(x, gap_lo, g->lo - 1))
                return false;
        }
        if (((mask >> g->cls) & 1) && !tmp_add(x, g->lo, g->hi))
            return false;
        prev_hi = g->hi;
        any = true;
    }
    if (((mask >> MOE_TOK_GC_CN) & 1) && prev_hi < CP_MAX)
        return tmp_add(x, prev_hi + 1, CP_MAX);
    return true;
}

/* White_Space: U+0009..U+000D, U+0085 and the Z categories. */
static bool tmp_add_space(struct parser *x)
{
    return tmp_add(x, 0x09, 0x0d) && tmp_add(x, 0x85, 0x85) &&
           tmp_add_categories(x, 1u << MOE_TOK_GC_ZS | 1u << MOE_TOK_GC_ZL | 1u << MOE_TOK_GC_ZP);
}

/* tmp[from..nt) (normalized) as a new class; its index, -1 on failure. */
static int class_from_tmp(struct parser *x, int from)
{
    int n = x->nt - from;
    if (!moe_grow((void **)&x->rs, &x->cap_r, x->nr + n, sizeof(rng_t), 16) ||
        !moe_grow((void **)&x->classes, &x->cap_c, x->nc + 1, sizeof(struct cls), 16)) {
        fail(x, "out of memory");
        return -1;
    }
    struct cls *c = &x->classes[x->nc];
    memset(c, 0, sizeof(*c));
    c->off = x->nr;
    c->n = n;
    memcpy(x->rs + x->nr, x->tmp + from, sizeof(rng_t) * (size_t)n);
    x->nr += n;
    for (int i = 0; i < n; i++)
        for (uint32_t cp = x->tmp[from + i].lo; cp <= x->tmp[from + i].hi && cp < 0x80; cp++)
            c->ascii[cp >> 6] |= 1ull << (cp & 63);
    x->nt = from;
    return x->nc++;
}

static bool class_has(const struct moe_tok_regex *re, const struct cls *c, uint32_t cp)
{
    if (cp < 0x80)
        return (c->ascii[cp >> 6] >> (cp & 63)) & 1;
    return moe_tok_range_lookup(re->rs + c->off, (unsigned)c->n, cp, 0);
}

/* ---- parsing ------------------------------------------------------------ */

static int new_node(struct parser *x, int kind)
{
    if (!moe_grow((void **)&x->nodes, &x->cap_n, x->nn + 1, sizeof(struct node), 16)) {
        fail(x, "out of memory");
        return -1;
    }
    struct node *d = &x->nodes[x->nn];
    memset(d, 0, sizeof(*d));
    d->kind = kind;
    d->a = d->b = d->cls = d->first = -1;
    d->nullable = kind == N_EMPTY || kind == N_LOOK || kind == N_ANCHOR;
    return x->nn++;
}

static int pair_node(struct parser *x, int kind, int a, int b)
{
    int k = new_node(x, kind);
    if (k < 0)
        return -1;
    x->nodes[k].a = a;
    x->nodes[k].b = b;
    x->nodes[k].nullable = kind == N_CAT ? x->nodes[a].nullable && x->nodes[b].nullable
                                         : x->nodes[a].nullable || x->nodes[b].nullable;
    return k;
}

static int class_node(struct parser *x, int from)
{
    int c = class_from_tmp(x, from);
    if (c < 0)
        return -1;
    int k = new_node(x, N_CLASS);
    if (k >= 0)
        x->nodes[k].cls = c;
    return k;
}

static bool is_ascii_letter(uint32_t c)
{
    return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}

/* A literal code point into tmp; under (?i) with its ASCII case partner and
 * the two non-ASCII letters that fold to an ASCII one (U+017F to s, U+212A
 * to k). */
static bool tmp_add_literal(struct parser *x, uint32_t c)
{
    if (x->icase && c >= 0x80)
        return fail(x, "case-insensitive matching of non-ASCII characters is not supported");
    if (!x->icase || !is_ascii_letter(c))
        return tmp_add(x, c, c);
    uint32_t lc = c | 0x20;
    if (!tmp_add(x, lc, lc) || !tmp_add(x, lc - 0x20, lc - 0x20))
        return false;
    if (lc == 's')
        return tmp_add(x, 0x17f, 0x17f);
    if (lc == 'k')
        return tmp_add(x, 0x212a, 0x212a);
    return true;
}

/* The next code point of the pattern (valid UTF-8 checked up front). */
static uint32_t next_cp(struct parser *x)
{
    uint32_t cp = 0;
    size_t l = moe_utf8_next((const unsigned char *)x->p, (size_t)(x->end - x->p), &cp);
    x->p += l;
    return cp;
}

static int hex_val(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Hex digits at p: exactly n of them (n > 0), or up to 8 before a '}' (n 0). */
static bool parse_hex(struct parser *x, int n, uint32_t *out)
{
    uint32_t v = 0;
    int k = 0;
    while (x->p < x->end && (n ? k < n : *x->p != '}')) {
        int d = hex_val(*x->p);
        if (d < 0 || k == 8)
            return fail(x, "bad hexadecimal escape");
        v = v * 16 + (uint32_t)d;
        x->p++;
        k++;
    }
    if (k == 0 || (n && k < n))
        return fail(x, "bad hexadecimal escape");
    if (!n) {
        if (x->p >= x->end)
            return fail(x, "unterminated \\x{...}");
        x->p++;
    }
    if (v > CP_MAX || (v >= 0xd800 && v <= 0xdfff))
        return fail(x, "escape names no Unicode character");
    *out = v;
    return true;
}

struct category_name {
    const char *name;
    uint32_t mask;
};

#define GC(c) (1u << MOE_TOK_GC_##c)
#define GC_L (GC(LU) | GC(LL) | GC(LT) | GC(LM) | GC(LO))
#define GC_M (GC(MN) | GC(MC) | GC(ME))
#define GC_N (GC(ND) | GC(NL) | GC(NO))
#define GC_P (GC(PC) | GC(PD) | GC(PS) | GC(PE) | GC(PI) | GC(PF) | GC(PO))
#define GC_S (GC(SM) | GC(SC) | GC(SK) | GC(SO))
#define GC_Z (GC(ZS) | GC(ZL) | GC(ZP))
#define GC_C (GC(CC) | GC(CF) | GC(CS) | GC(CO) | GC(CN))

static const struct category_name categories[] = {
    {"L", GC_L}, {"Letter", GC_L}, {"LC", GC(LU) | GC(LL) | GC(LT)}, {"L&", GC(LU) | GC(LL) | GC(LT)},
    {"Cased_Letter", GC(LU) | GC(LL) | GC(LT)}, {"Lu", GC(LU)}, {"Uppercase_Letter", GC(LU)},
    {"Ll", GC(LL)}, {"Lowercase_Letter", GC(LL)}, {"Lt", GC(LT)}, {"Titlecase_Letter", GC(LT)},
    {"Lm", GC(LM)}, {"Modifier_Letter", GC(LM)}, {"Lo", GC(LO)}, {"Other_Letter", GC(LO)},
    {"M", GC_M}, {"Mark", GC_M}, {"Combining_Mark", GC_M}, {"Mn", GC(MN)}, {"Nonspacing_Mark", GC(MN)},
    {"Mc", GC(MC)}, {"Spacing_Mark", GC(MC)}, {"Me", GC(ME)}, {"Enclosing_Mark", GC(ME)},
    {"N", GC_N}, {"Number", GC_N}, {"Nd", GC(ND)}, {"Decimal_Number", GC(ND)}, {"Nl", GC(NL)},
    {"Letter_Number", GC(NL)}, {"No", GC(NO)}, {"Other_Number", GC(NO)},
    {"P", GC_P}, {"Punctuation", GC_P}, {"Pc", GC(PC)}, {"Connector_Punctuation", GC(PC)},
    {"Pd", GC(PD)}, {"Dash_Punctuation", GC(PD)}, {"Ps", GC(PS)}, {"Open_Punctuation", GC(PS)},
    {"Pe", GC(PE)}, {"Close_Punctuation", GC(PE)}, {"Pi", GC(PI)}, {"Initial_Punctuation", GC(PI)},
    {"Pf", GC(PF)}, {"Final_Punctuation", GC(PF)}, {"Po", GC(PO)}, {"Other_Punctuation", GC(PO)},
    {"S", GC_S}, {"Symbol", GC_S}, {"Sm", GC(SM)}, {"Math_Symbol", GC(SM)}, {"Sc", GC(SC)},
    {"Currency_Symbol", GC(SC)}, {"Sk", GC(SK)}, {"Modifier_Symbol", GC(SK)}, {"So", GC(SO)},
    {"Other_Symbol", GC(SO)},
    {"Z", GC_Z}, {"Separator", GC_Z}, {"Zs", GC(ZS)}, {"Space_Separator", GC(ZS)}, {"Zl", GC(ZL)},
    {"Line_Separator", GC(ZL)}, {"Zp", GC(ZP)}, {"Paragraph_Separator", GC(ZP)},
    {"C", GC_C}, {"Other", GC_C}, {"Cc", GC(CC)}, {"Control", GC(CC)}, {"Cf", GC(CF)}, {"Format", GC(CF)},
    {"Cs", GC(CS)}, {"Surrogate", GC(CS)}, {"Co", GC(CO)}, {"Private_Use", GC(CO)}, {"Cn", GC(CN)},
    {"Unassigned", GC(CN)},
};

/* \p{...} / \P{...} after the 'p' or 'P': the categories into tmp[from..),
 * complemented when negated. */
static bool parse_property(struct parser *x, bool neg)
{
    if (x->p >= x->end || *x->p != '{')
        return fail(x, "\\p and \\P need a category in braces, as in \\p{L}");
    x->p++;
    if (x->p < x->end && *x->p == '^') {
        neg = !neg;
        x->p++;
    }
    const char *name = x->p;
    while (x->p < x->end && *x->p != '}')
        x->p++;
    if (x->p >= x->end)
        return fail(x, "unterminated \\p{...}");
    size_t len = (size_t)(x->p - name);
    x->p++;
    for (size_t i = 0; i < sizeof(categories) / sizeof(categories[0]); i++) {
        if (strlen(categories[i].name) != len || memcmp(categories[i].name, name, len))
            continue;
        uint32_t m = categories[i].mask;
        if (x->icase && (m & (GC(LU) | GC(LL) | GC(LT))) && (m & GC_L) != GC_L)
            return fail(x, "case-insensitive matching of a cased-letter category is not supported");
        int from = x->nt;
        return tmp_add_categories(x, m) && tmp_normalize(x, from, neg);
    }
    x->p = name;
    return fail(x, "unknown Unicode category (general categories such as L, Lu, M, N, P, S, Z, C only; "
                   "scripts such as Han are not supported)");
}

/* The escape after a backslash, into tmp: a class escape, or one code point
 * (*cp set, *single true) that a range in [...] may use. */
static bool parse_escape(struct parser *x, uint32_t *cp, bool *single)
{
    *single = false;
    if (x->p >= x->end)
        return fail(x, "pattern ends in a backslash");
    char c = *x->p++;
    int from = x->nt;
    switch (c) {
    case 'd': case 'D':
        return tmp_add_categories(x, GC(ND)) && tmp_normalize(x, from, c == 'D');
    case 's': case 'S':
        return tmp_add_space(x) && tmp_normalize(x, from, c == 'S');
    case 'w': case 'W': /* Oniguruma's Unicode word: letters, marks, decimal digits, connectors */
        return tmp_add_categories(x, GC_L | GC_M | GC(ND) | GC(PC)) && tmp_normalize(x, from, c == 'W');
    case 'h': case 'H': /* Oniguruma's hexadecimal digit */
        return tmp_add(x, '0', '9') && tmp_add(x, 'A', 'F') && tmp_add(x, 'a', 'f') &&
               tmp_normalize(x, from, c == 'H');
    case 'p': case 'P':
        return parse_property(x, c == 'P');
    case 't': *cp = '\t'; break;
    case 'n': *cp = '\n'; break;
    case 'r': *cp = '\r'; break;
    case 'f': *cp = '\f'; break;
    case 'v': *cp = '\v'; break;
    case 'a': *cp = 0x07; break;
    case 'e': *cp = 0x1b; break;
    case 'x':
        if (x->p < x->end && *x->p == '{') {
            x->p++;
            if (!parse_hex(x, 0, cp))
                return false;
        } else if (!parse_hex(x, 2, cp)) {
            return false;
        }
        break;
    case 'u':
        if (!parse_hex(x, 4, cp))
            return false;
        break;
    default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
            x->p--;
            return fail(x, "unsupported escape (back-references, \\b and \\G are not supported)");
        }
        if ((unsigned char)c >= 0x80) {
            x->p--;
            *cp = next_cp(x);
        } else {
            *cp = (unsigned char)c;
        }
    }
    *single = true;
    return tmp_add_literal(x, *cp);
}

/* [...] after the '[': a class node. */
static int parse_class(struct parser *x)
{
    int from = x->nt;
    bool neg = false;
    if (x->p < x->end && *x->p == '^') {
        neg = true;
        x->p++;
    }
    bool first = true;
    for (;;) {
        if (x->p >= x->end) {
            fail(x, "unterminated character class");
            return -1;
        }
        if (*x->p == ']' && !first)
            break;
        if (*x->p == '[') {
            fail(x, "nested character classes are not supported");
            return -1;
        }
        if (*x->p == '&' && x->p + 1 < x->end && x->p[1] == '&') {
            fail(x, "class intersection (&&) is not supported");
            return -1;
        }
        first = false;
        uint32_t lo = 0;
        bool single = true;
        if (*x->p == '\\') {
            x->p++;
            if (!parse_escape(x, &lo, &single))
                return -1;
        } else {
            lo = next_cp(x);
            if (!tmp_add_literal(x, lo))
                return -1;
        }
        /* a range: a single character, '-', a single character other than ']' */
        if (!single || x->p + 1 >= x->end || *x->p != '-' || x->p[1] == ']')
            continue;
        const char *dash = x->p++;
        uint32_t hi = 0;
        bool hs = true;
        if (*x->p == '\\') {
            x->p++;
            int mark = x->nt;
            if (!parse_escape(x, &hi, &hs))
                return -1;
            x->nt = mark;
        } else {
            hi = next_cp(x);
        }
        if (!hs) {
            x->p = dash;
            fail(x, "a range in a class must end in one character");
            return -1;
        }
        if (hi < lo) {
            x->p = dash;
            fail(x, "a range in a class runs backwards");
            return -1;
        }
        if (x->icase && hi >= 0x80) {
            x->p = dash;
            fail(x, "case-insensitive matching of non-ASCII characters is not supported");
            return -1;
        }
        for (uint32_t c = lo; x->icase && c <= hi && c < 0x80; c++)
            if (!tmp_add_literal(x, c))
                return -1;
        if (!tmp_add(x, lo, hi))
            return -1;
    }
    x->p++;
    if (!tmp_normalize(x, from, neg))
        return -1;
    if (x->nt == from) {
        fail(x, "the class matches no character");
        return -1;
    }
    return class_node(x, from);
}

static int parse_alt(struct parser *x);

/* One atom: a character, a class, a group or a lookahead. */
static int parse_atom(struct parser *x)
{
    const char *at = x->p;
    char c = *x->p;
    int from = x->nt;
    if (c == '(') {
        x->p++;
        bool icase = x->icase, look = false, neg = false;
        if (x->p < x->end && *x->p == '?') {
            x->p++;
            char k = x->p < x->end ? *x->p : 0;
            if (k == ':') {
                x->p++;
            } else if (k == '=' || k == '!') {
                look = true;
                neg = k == '!';
                x->p++;
            } else if (k == 'i' && x->p + 1 < x->end && x->p[1] == ':') {
                x->icase = true;
                x->p += 2;
            } else {
                x->p = at;
                fail(x, "unsupported group (only (...), (?:...), (?i:...), (?=...) and (?!...))");
                return -1;
            }
        }
        if (++x->depth > RE_MAX_NEST) {
            fail(x, "groups nested too deep");
            return -1;
        }
        int inner = parse_alt(x);
        x->depth--;
        x->icase = icase;
        if (inner < 0)
            return -1;
        if (x->p >= x->end || *x->p != ')') {
            fail(x, "missing ')'");
            return -1;
        }
        x->p++;
        if (!look)
            return inner;
        int k = new_node(x, N_LOOK);
        if (k >= 0) {
            x->nodes[k].a = inner;
            x->nodes[k].mode = neg;
        }
        return k;
    }
    if (c == '[') {
        x->p++;
        return parse_class(x);
    }
    if (c == '.') { /* any character but a line feed, as Oniguruma's default */
        x->p++;
        if (!tmp_add(x, '\n', '\n') || !tmp_normalize(x, from, true))
            return -1;
        return class_node(x, from);
    }
    if (c == '\\' && x->p + 1 < x->end && (x->p[1] == 'A' || x->p[1] == 'z' || x->p[1] == 'Z')) {
        x->p += 2;
        int k = new_node(x, N_ANCHOR);
        if (k >= 0)
            x->nodes[k].mode = x->p[-1] == 'A' ? A_TEXT_BEGIN : x->p[-1] == 'z' ? A_TEXT_END : A_TEXT_END_NL;
        return k;
    }
    if (c == '\\') {
        x->p++;
        uint32_t cp;
        bool single;
        if (!parse_escape(x, &cp, &single) || !tmp_normalize(x, from, false))
            return -1;
        return class_node(x, from);
    }
    if (c == '^' || c == '$') {
        x->p++;
        int k = new_node(x, N_ANCHOR);
        if (k >= 0)
            x->nodes[k].mode = c == '^' ? A_LINE_BEGIN : A_LINE_END;
        return k;
    }
    if (c == '*' || c == '+' || c == '?') {
        fail(x, "nothing to repeat");
        return -1;
    }
    uint32_t cp = next_cp(x);
    if (!tmp_add_literal(x, cp) || !tmp_normalize(x, from, false))
        return -1;
    return class_node(x, from);
}

/* Decimal digits at q into *v (-1 when none; capped above RE_MAX_REPEAT). */
static const char *read_count(const char *q, const char *end, long *v)
{
    *v = -1;
    for (; q < end && *q >= '0' && *q <= '9'; q++)
        *v = *v < 0 ? *q - '0' : *v > RE_MAX_REPEAT ? *v : *v * 10 + (*q - '0');
    return q;
}

/* {n}, {n,}, {n,m} or {,m} at p: true with the counts, or false (p kept)
 * when the brace starts no count and is a literal '{'. */
static bool parse_counts(struct parser *x, int *min, int *max)
{
    long a, b = -1;
    const char *q = read_count(x->p + 1, x->end, &a);
    bool comma = q < x->end && *q == ',';
    if (comma)
        q = read_count(q + 1, x->end, &b);
    if (q >= x->end || *q != '}' || (a < 0 && b < 0))
        return false;
    if (a > RE_MAX_REPEAT || b > RE_MAX_REPEAT) {
        fail(x, "a count in {n,m} is above 1000");
        return false;
    }
    *min = a < 0 ? 0 : (int)a;
    *max = !comma ? *min : b < 0 ? -1 : (int)b;
    x->p = q + 1;
    return true;
}

/* An atom and its quantifiers. */
static int parse_piece(struct parser *x)
{
    int a = parse_atom(x);
    if (a < 0)
        return -1;
    bool counted = false;
    while (x->p < x->end) {
        const char *at = x->p;
        int min, max;
        char c = *x->p;
        if (c == '?' || c == '*' || c == '+') {
            x->p++;
            min = c == '+';
            max = c == '?' ? 1 : -1;
        } else if (c == '{') {
            if (!parse_counts(x, &min, &max)) {
                if (x->err)
                    return -1;
                break;
            }
            if (max >= 0 && max < min) {
                x->p = at;
                fail(x, "{n,m} with m below n");
                return -1;
            }
        } else {
            break;
        }
        if (counted) {
            x->p = at;
            fail(x, "a quantifier after a quantifier is not supported (write a group)");
            return -1;
        }
        counted = true;
        int mode = REP_GREEDY;
        if (x->p < x->end && *x->p == '?') {
            mode = REP_LAZY;
            x->p++;
        } else if (x->p < x->end && *x->p == '+' && c != '{') {
            mode = REP_POSSESSIVE;
            x->p++;
            if (x->nodes[a].kind != N_CLASS) {
                x->p = at;
                fail(x, "a possessive quantifier is supported on one character or class only");
                return -1;
            }
        }
        if (x->nodes[a].nullable && max < 0) {
            x->p = at;
            fail(x, "a repeated group that can match the empty text");
            return -1;
        }
        int k = new_node(x, N_REP);
        if (k < 0)
            return -1;
        x->nodes[k].a = a;
        x->nodes[k].min = min;
        x->nodes[k].max = max;
        x->nodes[k].mode = mode;
        x->nodes[k].nullable = min == 0 || x->nodes[a].nullable;
        a = k;
    }
    return a;
}

static int parse_seq(struct parser *x)
{
    int acc = -1;
    while (x->p < x->end && *x->p != '|' && *x->p != ')') {
        int k = parse_piece(x);
        if (k < 0)
            return -1;
        acc = acc < 0 ? k : pair_node(x, N_CAT, acc, k);
        if (acc < 0)
            return -1;
    }
    return acc < 0 ? new_node(x, N_EMPTY) : acc;
}

static int parse_alt(struct parser *x)
{
    int acc = parse_seq(x);
    while (acc >= 0 && x->p < x->end && *x->p == '|') {
        x->p++;
        int k = parse_seq(x);
        acc = k < 0 ? -1 : pair_node(x, N_ALT, acc, k);
    }
    return acc;
}

/* ---- first characters ---------------------------------------------------- */

/* The characters a match of node k can start with, added to tmp; a node
 * that may match empty lets the caller go on to what follows it.  Lookaheads
 * add nothing: what follows them starts the match. */
static bool first_chars(struct parser *x, int k)
{
    const struct node *d = &x->nodes[k];
    switch (d->kind) {
    case N_CLASS: {
        const struct cls *c = &x->classes[d->cls];
        for (int i = 0; i < c->n; i++)
            if (!tmp_add(x, x->rs[c->off + i].lo, x->rs[c->off + i].hi))
                return false;
        return true;
    }
    case N_CAT:
        return first_chars(x, d->a) && (!x->nodes[d->a].nullable || first_chars(x, d->b));
    case N_ALT:
        return first_chars(x, d->a) && first_chars(x, d->b);
    case N_REP:
        return d->max == 0 || first_chars(x, d->a);
    default:
        return true;
    }
}

/* The first characters of every alternative and repeated group that cannot
 * match empty, for the machine to skip a branch whose first character the
 * text does not have. */
static bool branch_filters(struct parser *x)
{
    for (int k = 0; k < x->nn; k++) {
        int kind = x->nodes[k].kind;
        const int kids[2] = {x->nodes[k].a, kind == N_ALT ? x->nodes[k].b : -1};
        if (kind != N_ALT && kind != N_REP)
            continue;
        for (int i = 0; i < 2; i++) {
            int c = kids[i];
            if (c < 0 || x->nodes[c].nullable || x->nodes[c].first >= 0)
                continue;
            int from = x->nt;
            if (!first_chars(x, c) || !tmp_normalize(x, from, false))
                return false;
            int cls = class_from_tmp(x, from);
            if (cls < 0)
                return false;
            x->nodes[c].first = cls;
        }
    }
    return true;
}

/* ---- code ---------------------------------------------------------------- */

struct emitter {
    struct inst *prog;
    int n;
    size_t cap;
    bool full;
};

static int emit(struct emitter *e, struct inst in)
{
    if (e->n >= RE_MAX_PROG || !moe_grow((void **)&e->prog, &e->cap, e->n + 1, sizeof(struct inst), 16)) {
        e->full = true;
        return e->n;
    }
    e->prog[e->n] = in;
    return e->n++;
}

static void gen(struct emitter *e, const struct parser *x, int k, int look_depth)
{
    if (e->full)
        return;
    const struct node *d = &x->nodes[k];
    switch (d->kind) {
    case N_CLASS:
        emit(e, (struct inst){.op = OP_CLASS, .x = d->cls});
        return;
    case N_CAT:
        gen(e, x, d->a, look_depth);
        gen(e, x, d->b, look_depth);
        return;
    case N_ALT: {
        int split = emit(e, (struct inst){.op = OP_SPLIT, .fx = x->nodes[d->a].first, .fy = x->nodes[d->b].first});
        gen(e, x, d->a, look_depth);
        int jmp = emit(e, (struct inst){.op = OP_JMP});
        int second = e->n;
        gen(e, x, d->b, look_depth);
        if (e->full)
            return;
        e->prog[split].x = split + 1;
        e->prog[split].y = second;
        e->prog[jmp].x = e->n;
        return;
    }
    case N_ANCHOR:
        emit(e, (struct inst){.op = OP_ASSERT, .x = d->mode});
        return;
    case N_LOOK: {
        if (look_depth >= RE_MAX_LOOK) {
            e->full = true;
            return;
        }
        int look = emit(e, (struct inst){.op = OP_LOOK, .flag = d->mode != 0});
        gen(e, x, d->a, look_depth + 1);
        emit(e, (struct inst){.op = OP_MATCH});
        if (!e->full)
            e->prog[look].x = e->n;
        return;
    }
    case N_REP: {
        const struct node *in = &x->nodes[d->a];
        if (in->kind == N_CLASS && d->mode != REP_LAZY) {
            emit(e, (struct inst){.op = OP_RCLASS, .x = in->cls, .min = d->min, .max = d->max,
                                  .flag = d->mode == REP_POSSESSIVE});
            return;
        }
        for (int i = 0; i < d->min && !e->full; i++)
            gen(e, x, d->a, look_depth);
        int body = in->first, lazy = d->mode == REP_LAZY;
        if (d->max < 0) { /* L: split(body, out); body; jmp L */
            int split = emit(e, (struct inst){.op = OP_SPLIT, .fx = lazy ? -1 : body, .fy = lazy ? body : -1});
            gen(e, x, d->a, look_depth);
            emit(e, (struct inst){.op = OP_JMP, .x = split});
            if (e->full)
                return;
            e->prog[split].x = lazy ? e->n : split + 1;
            e->prog[split].y = lazy ? split + 1 : e->n;
            return;
        }
        /* up to max - min more, each only after the one before it */
        int opt = d->max - d->min;
        int *splits = malloc(sizeof(int) * (size_t)(opt > 0 ? opt : 1));
        if (!splits) {
            e->full = true;
            return;
        }
        for (int i = 0; i < opt && !e->full; i++) {
            splits[i] = emit(e, (struct inst){.op = OP_SPLIT, .fx = lazy ? -1 : body, .fy = lazy ? body : -1});
            gen(e, x, d->a, look_depth);
        }
        for (int i = 0; i < opt && !e->full; i++) {
            e->prog[splits[i]].x = lazy ? e->n : splits[i] + 1;
            e->prog[splits[i]].y = lazy ? splits[i] + 1 : e->n;
        }
        free(splits);
        return;
    }
    default:
        return;
    }
}

/* Whether the program from pc always reaches a MATCH without reading a
 * character it could fail on (optional classes, jumps). */
static bool always_matches(const struct emitter *e, int pc)
{
    for (int steps = 0; steps < e->n && pc >= 0 && pc < e->n; steps++) {
        const struct inst *in = &e->prog[pc];
        if (in->op == OP_MATCH)
            return true;
        if (in->op == OP_JMP)
            pc = in->x;
        else if (in->op == OP_RCLASS && in->min == 0)
            pc++;
        else
            return false;
    }
    return false;
}

/* Slots for the dead spans of the class loops without an upper bound outside lookaheads.
 *
 * Such a loop at pc entered at i reads the class up to e (the first character outside it) and goes
 * on at some of i + min .. e, longest first.  Entered again at any p in [i, e], it would read up to
 * the same e and go on at p + min .. e, a part of those: all of them have failed already when the
 * machine gets back there, so the loop fails at once (the machine keeps no state but pc and the
 * position, and a search that finds a match stops):
 *   - back at pc after the run from i ended: everything tried from i failed;
 *   - back at pc while trying the way on at some q (the loop is in a repeated group, which reads a
 *     character at least): p + min > q unless min is 0, and then the rest of the group read a
 *     character, p > q; every way on past q was tried before q, longest first.
 * The span stays good across the starts of one search, but not into a lookahead's run, which can
 * end in a match that the search goes on from: loops inside lookaheads keep none.  So a run of a
 * class that fails at each start (DeepSeek-LLM's `\s+$` over spaces before a digit) is read once,
 * not once per start. */
static int mark_memo(struct emitter *e)
{
    int n = 0, look_end = -1;
    for (int pc = 0; pc < e->n; pc++) {
        struct inst *in = &e->prog[pc];
        if (in->op == OP_LOOK && in->x > look_end)
            look_end = in->x;
        in->memo = in->op == OP_RCLASS && in->max < 0 && pc >= look_end ? n++ : -1;
    }
    return n;
}

/* A greedy class loop followed by what always matches never backtracks into
 * its shorter counts (the longest one already matches): it keeps no places
 * to come back to. */
static void make_possessive(struct emitter *e)
{
    for (int pc = 0; pc < e->n; pc++)
        if (e->prog[pc].op == OP_RCLASS && always_matches(e, pc + 1))
            e->prog[pc].flag = true;
}

void moe_tok_regex_free(struct moe_tok_regex *re)
{
    if (!re)
        return;
    free(re->prog);
    free(re->classes);
    free(re->rs);
    free(re);
}

enum moe_status moe_tok_regex_compile(const char *pat, size_t len, struct moe_tok_regex **out)
{
    if (!pat || !out)
        return moe_errorf(MOE_EINVAL, "regex: missing pattern or output");
    *out = NULL;
    if (len > RE_MAX_TEXT)
        return moe_errorf(MOE_ENOTSUP, "regex: the pattern is %zu bytes, above the limit of %d", len, RE_MAX_TEXT);
    if (!moe_utf8_valid(pat, len))
        return moe_errorf(MOE_EFORMAT, "regex: the pattern is not valid UTF-8");
    struct parser x = {.p = pat, .end = pat + len};
    int root = len ? parse_alt(&x) : -1;
    if (root >= 0 && x.p < x.end)
        fail(&x, "unmatched ')'");
    if (!x.err && root < 0)
        fail(&x, "empty pattern");
    if (!x.err && x.nodes[root].nullable) {
        x.p = pat;
        fail(&x, "the pattern can match the empty text");
    }
    struct emitter e = {0};
    struct moe_tok_regex *re = NULL;
    int first = -1, n_memo = 0;
    if (!x.err) {
        if (!branch_filters(&x))
            fail(&x, "out of memory");
        gen(&e, &x, root, 0);
        emit(&e, (struct inst){.op = OP_MATCH});
        if (e.full) { /* a program cut short: its jumps may point past its end */
            x.p = pat;
            fail(&x, "the pattern compiles to too many instructions or lookaheads nest too deep");
        } else {
            make_possessive(&e);
            n_memo = mark_memo(&e);
        }
    }
    if (!x.err) {
        int from = x.nt;
        if (first_chars(&x, root) && tmp_normalize(&x, from, false))
            first = class_from_tmp(&x, from);
    }
    if (!x.err && first >= 0 && (re = calloc(1, sizeof(*re)))) {
        re->prog = e.prog;
        re->n_prog = e.n;
        re->classes = x.classes;
        re->rs = x.rs;
        re->first = first;
        re->n_memo = n_memo;
        e.prog = NULL;
        x.classes = NULL;
        x.rs = NULL;
    } else if (!x.err) {
        fail(&x, "out of memory");
    }
    enum moe_status st = MOE_OK;
    if (x.err)
        st = moe_errorf(strcmp(x.err, "out of memory") ? MOE_ENOTSUP : MOE_ENOMEM,
                        "regex: %s at byte %zu of %.*s", x.err, (size_t)(x.err_at - pat), (int)(len < 200 ? len : 200),
                        pat);
    free(x.nodes);
    free(x.classes);
    free(x.rs);
    free(x.tmp);
    free(e.prog);
    *out = re;
    return st;
}

/* ---- matching ------------------------------------------------------------ */

static bool push(struct moe_tok_regex_ws *w, int pc, size_t pos)
{
    if (!moe_grow((void **)&w->stack, &w->cap, w->top + 1, sizeof(*w->stack), 256))
        return false;
    w->stack[w->top++] = (struct moe_tok_frame){pc, pos};
    return true;
}

static uint32_t cp_at(const char *s, size_t n, size_t i, size_t *l)
{
    uint32_t cp = 0;
    *l = moe_utf8_next((const unsigned char *)s + i, n - i, &cp);
    if (!*l) { /* the caller's text is valid UTF-8; never stall on a bad byte */
        *l = 1;
        cp = 0xfffd;
    }
    return cp;
}

/* Whether anchor a (A_*) holds at pos of s[0..n). */
static bool at_anchor(int a, const char *s, size_t n, size_t pos)
{
    switch (a) {
    case A_LINE_BEGIN: return pos == 0 || s[pos - 1] == '\n';
    case A_LINE_END: return pos == n || s[pos] == '\n';
    case A_TEXT_BEGIN: return pos == 0;
    case A_TEXT_END: return pos == n;
    default: return pos == n || (pos + 1 == n && s[pos] == '\n');
    }
}

/* Run the program from pc at pos, anchored: *end the end of the first match
 * found (leftmost-first), SIZE_MAX when none. */
static enum moe_status run(const struct moe_tok_regex *re, int pc, const char *s, size_t n, size_t pos,
                           size_t *end, struct moe_tok_regex_ws *w, uint64_t *budget)
{
    size_t base = w->top;
    uint64_t left = *budget; /* the steps left, *budget again when this returns */
    for (;;) {
        if (!left)
            goto spent;
        left--;
        const struct inst *in = &re->prog[pc];
        size_t l;
        switch (in->op) {
        case OP_CLASS:
            if (pos < n && class_has(re, &re->classes[in->x], cp_at(s, n, pos, &l))) {
                pos += l;
                pc++;
                continue;
            }
            break;
        case OP_RCLASS: {
            const struct cls *c = &re->classes[in->x];
            size_t *dead = NULL, at = pos;
            if (w->memo_on && in->memo >= 0) {
                dead = w->dead + 2 * in->memo;
                if (pos >= dead[0] && pos < dead[1])
                    break; /* entered where an earlier entry's reading covered: fails (mark_memo) */
            }
            /* before an anchor, a place to stop where the anchor fails would only be backtracked from:
             * not kept (so `\s+$` over a long run of spaces stays linear per start) */
            const struct inst *nx = &re->prog[pc + 1];
            bool anchored = nx->op == OP_ASSERT;
            int k = 0;
            while ((in->max < 0 || k < in->max) && pos < n && class_has(re, c, cp_at(s, n, pos, &l))) {
                if (k >= in->min && !in->flag && (!anchored || at_anchor(nx->x, s, n, pos)) && !push(w, pc + 1, pos))
                    goto nomem;
                pos += l;
                k++;
            }
            if (left < (uint64_t)k) /* a character read is a step */
                goto spent;
            left -= (uint64_t)k;
            if (dead) { /* [at, pos] dead, joined to the span before when they touch */
                bool join = at <= dead[1] && pos + 1 >= dead[0];
                dead[0] = join && dead[0] < at ? dead[0] : at;
                dead[1] = join && dead[1] > pos + 1 ? dead[1] : pos + 1;
            }
            if (k < in->min)
                break;
            pc++;
            continue;
        }
        case OP_SPLIT: {
            /* a branch whose first character is not the next one cannot match */
            uint32_t cp = pos < n ? cp_at(s, n, pos, &l) : 0;
            bool bx = in->fx < 0 || (pos < n && class_has(re, &re->classes[in->fx], cp));
            bool by = in->fy < 0 || (pos < n && class_has(re, &re->classes[in->fy], cp));
            if (bx && by && !push(w, in->y, pos))
                goto nomem;
            if (!bx && !by)
                break;
            pc = bx ? in->x : in->y;
            continue;
        }
        case OP_JMP:
            pc = in->x;
            continue;
        case OP_LOOK: {
            size_t e = SIZE_MAX;
            *budget = left;
            enum moe_status st = run(re, pc + 1, s, n, pos, &e, w, budget);
            left = *budget;
            if (st) {
                w->top = base;
                return st;
            }
            if ((e != SIZE_MAX) != in->flag) {
                pc = in->x;
                continue;
            }
            break;
        }
        case OP_MATCH:
            *end = pos;
            w->top = base;
            *budget = left;
            return MOE_OK;
        case OP_ASSERT:
            if (at_anchor(in->x, s, n, pos)) {
                pc++;
                continue;
            }
            break;
        }
        /* backtrack */
        if (w->top == base) {
            *end = SIZE_MAX;
            *budget = left;
            return MOE_OK;
        }
        w->top--;
        pc = w->stack[w->top].pc;
        pos = w->stack[w->top].pos;
    }
nomem:
    w->top = base;
    *budget = left;
    return moe_errorf(MOE_ENOMEM, "regex: no memory for the backtracking stack");
spent:
    w->top = base;
    *budget = 0;
    return moe_errorf(MOE_ERANGE, "regex: the pattern backtracks too much on this text");
}

enum moe_status moe_tok_regex_find(const struct moe_tok_regex *re, const char *s, size_t n, size_t from,
                                   size_t *ms, size_t *me, bool *found, struct moe_tok_regex_ws *ws)
{
    *found = false;
    /* linear in the text for the patterns tokenizers use; a pattern that
     * backtracks without end stops here */
    uint64_t budget = 1000000 + 1024 * (uint64_t)(n - from), start = budget;
    enum moe_status st = MOE_OK;
    const struct cls *first = &re->classes[re->first];
    bool hit = false;
    ws->memo_on = false; /* dead spans hold for one search, kept once a start has failed */
    for (size_t i = from, l; i < n && !hit; i += l) {
        uint32_t cp = cp_at(s, n, i, &l);
        if (!class_has(re, first, cp))
            continue;
        size_t e = SIZE_MAX;
        if ((st = run(re, 0, s, n, i, &e, ws, &budget)))
            break;
        if (e != SIZE_MAX) {
            *ms = i;
            *me = e;
            *found = hit = true;
        } else if (!ws->memo_on && re->n_memo && !ws->no_memo) {
            size_t need = 2 * (size_t)re->n_memo;
            if (!moe_grow((void **)&ws->dead, &ws->dead_cap, need, sizeof(*ws->dead), need)) {
                st = moe_errorf(MOE_ENOMEM, "regex: no memory for the matcher's workspace");
                break;
            }
            memset(ws->dead, 0, need * sizeof(*ws->dead));
            ws->memo_on = true;
        }
    }
    ws->steps += start - budget;
    return st;
}

void moe_tok_regex_ws_free(struct moe_tok_regex_ws *ws)
{
    if (!ws)
        return;
    free(ws->stack);
    free(ws->dead);
    ws->stack = NULL;
    ws->dead = NULL;
    ws->top = ws->cap = ws->dead_cap = 0;
}
