/* A byte-at-a-time JSON recognizer (RFC 8259) for one value of a compiled
 * schema (any object in JSON mode), and the vocabulary masks built on it. */
#include "json_guide.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "json_schema_int.h"

#include "../model/tokenizer.h"

enum {
    J_START,      /* the value, no whitespace before it */
    J_VALUE,      /* a value of node cur (after ':' or ',' in an array) */
    J_ARR_FIRST,  /* a value or ']' */
    J_KEY_FIRST,  /* a key string or '}' */
    J_KEY,        /* a key string (after ',') */
    J_COLON,      /* ':' */
    J_NEXT,       /* ',' or the closing bracket of the open container */
    J_STRING,     /* inside a string */
    J_ESC,        /* after '\' */
    J_HEX,        /* aux hex digits of \u left */
    J_LOW_ESC,    /* after a high surrogate's \u escape (ucp): the '\' of its low one */
    J_LOW_U,      /* ... its 'u' */
    J_LOW_HEX,    /* ... aux hex digits of it left (ucp: the high one's above bit 16, these below) */
    J_UTF8,       /* aux continuation bytes left */
    J_MINUS,      /* after '-' */
    J_ZERO,       /* a number's integer part is 0 */
    J_INT,        /* integer digits */
    J_DOT,        /* after '.' */
    J_FRAC,       /* fraction digits */
    J_EXP,        /* after 'e' */
    J_EXP_SIGN,   /* after 'e+' / 'e-' */
    J_EXP_DIGITS, /* exponent digits */
    J_LIT,        /* inside one of a node's literals (llo .. lhi, pos) */
    J_TEXT,       /* raw text of a K_TEXT root: UTF-8, each character through its automaton */
    J_DONE,       /* the value is complete */
    /* a structural tag (moe_json_schema_tags) */
    J_TAG_FREE,   /* free text (tpos bytes of trigger ttrig matched) */
    J_TAG_BEGIN,  /* a structure's begin (tpos bytes of the candidates' matched) */
    J_TAG_END,    /* the structure's end after its value (tpos bytes matched; ws before it) */
    /* before the value, with a reasoning block (moe_json_init_after_think) */
    J_THINK_MAY,  /* "<think>" (pos bytes of it read) or the value */
    J_THINK,      /* free text until "</think>" (pos bytes of it read) */
    J_THINK_WS,   /* whitespace (ws bytes so far), then the value */
};

/* ---- JSON mode's schema: any object ------------------------------------------ */

static const struct json_node any_nodes[N_BUILTIN] = {
    [N_ANY] = { .kind = K_ANY },
    [N_ANY_OBJECT] = { .kind = K_OBJECT, .extra = N_ANY },
    [N_ANY_ARRAY] = { .kind = K_ARRAY, .extra = N_ANY, .max_items = UINT32_MAX },
    [N_ANY_LITERAL] = { .kind = K_LITERALS, .n = 3 },
    [N_ANY_STRING] = { .kind = K_STRING },
    [N_ANY_NUMBER] = { .kind = K_NUMBER },
};
static const struct json_str any_lits[JSON_BUILTIN_LITS] = { { 4, 5 }, { 9, 4 }, { 0, 4 }, { 4, 5 }, { 0, 4 } };
static const uint16_t any_orig[JSON_BUILTIN_LITS] = { 0, 1, 2, 0, 1 };

const struct moe_json_schema moe_json_any_object = {
    .nodes = any_nodes,
    .lits = any_lits,
    .lit_orig = any_orig,
    .pool = "truefalsenull",
    .n_nodes = N_BUILTIN,
    .root = N_ANY_OBJECT,
};

/* ---- the recognizer ------------------------------------------------------------ */

static bool is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static bool is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

void moe_json_init(struct moe_json_state *s, const struct moe_json_schema *sc)
{
    if (!sc) sc = &moe_json_any_object;
    s->sc = sc;
    s->cand = 0;
    s->pos = 0;
    s->cur = sc->root;
    s->depth = 0;
    s->mode = J_START;
    s->aux = s->ws = s->nl = 0;
    s->lo = 0x80;
    s->hi = 0xbf;
    s->key = s->integer = s->bounded = false;
    s->nlen = 0;
    s->dfa = s->ucp = 0;
    s->text = false;
    s->tag = NULL;
    s->tcand = 0;
    s->tpos = 0;
    s->ttrig = s->tstruct = 0;
    const struct json_node *n = &sc->nodes[sc->root];
    if (sc->tags) {
        s->text = true;
        s->tag = sc;
        s->mode = J_TAG_FREE;
    } else if (sc->grammar) {
        s->text = true;
        moe_grammar_start(sc->grammar, s->g);
        s->mode = moe_grammar_open(s->g) ? J_TEXT : J_DONE;
    } else if (n->kind == K_TEXT) {
        s->text = true;
        s->dfa = n->pattern;
        s->mode = sc->dfa[s->dfa].open ? J_TEXT : J_DONE;
    }
}

void moe_json_init_after_think(struct moe_json_state *s, const struct moe_json_schema *sc, bool opened)
{
    moe_json_init(s, sc);
    if (!s->text) s->mode = opened ? J_THINK : J_THINK_MAY;
}

void moe_json_copy(struct moe_json_state *dst, const struct moe_json_state *src)
{
    memcpy(dst, src, offsetof(struct moe_json_state, f) + sizeof(src->f[0]) * src->depth);
    if (src->sc->grammar) memcpy(dst->g, src->g, sizeof(src->g[0]) * moe_grammar_state_words(src->g));
    if (src->bounded) memcpy(dst->num, src->num, src->nlen);
}

/* Whether prompt[0..len) ends in tag and whitespace. */
static bool ends_in_tag(const char *prompt, size_t len, const char *tag)
{
    while (len > 0 && strchr(" \n\t\r", prompt[len - 1]) && prompt[len - 1])
        len--;
    return len >= strlen(tag) && !memcmp(prompt + len - strlen(tag), tag, strlen(tag));
}

bool moe_think_opened(const char *prompt, size_t len) { return ends_in_tag(prompt, len, MOE_THINK_OPEN); }
bool moe_think_closed(const char *prompt, size_t len) { return ends_in_tag(prompt, len, MOE_THINK_CLOSE); }

bool moe_json_done(const struct moe_json_state *s) { return s->mode == J_DONE && !s->tag; }

bool moe_json_may_end(const struct moe_json_state *s)
{
    if (s->tag) /* free text, or right after a structure whose end is empty */
        return s->mode == J_TAG_FREE || (s->mode == J_DONE && s->tag->tags->elen[s->tstruct] == 0);
    if (s->mode != J_TEXT) return s->mode == J_DONE;
    return s->sc->grammar ? moe_grammar_accepts(s->g) : s->sc->dfa[s->dfa].accept;
}

static const struct json_node *node(const struct moe_json_state *s, unsigned i) { return &s->sc->nodes[i]; }
static struct moe_json_frame *top(struct moe_json_state *s) { return &s->f[s->depth - 1]; }

/* Bits 0..n-1. */
static uint64_t all_bits(unsigned n) { return n >= 64 ? ~0ull : (1ull << n) - 1; }

/* The byte of literal or property name str at s->pos, or -1 past its end. */
static int str_at(const struct moe_json_state *s, struct json_str str)
{
    return s->pos < str.len ? (unsigned char)s->sc->pool[str.off + s->pos] : -1;
}

/* A tagged object's tag value ended (s->llo: the one it is): the object goes on as that branch,
 * its tag property written. */
static void tag_done(struct moe_json_state *s, struct moe_json_frame *f, const struct json_node *n)
{
    unsigned obj = s->sc->branch[n->first + s->sc->lit_orig[s->llo]];
    const struct json_node *o = node(s, obj);
    f->node = (uint16_t)obj;
    f->seen = 0;
    for (unsigned q = 0; q < o->n; q++)
        if (json_str_eq(s->sc->pool, s->sc->props[o->first + q].name, n->key)) f->seen = 1ull << q;
}

/* A value ended: what may follow it. */
static void value_done(struct moe_json_state *s)
{
    if (s->depth == 0) {
        s->mode = J_DONE;
        return;
    }
    struct moe_json_frame *f = top(s);
    const struct json_node *n = node(s, f->node);
    if (n->kind == K_ARRAY) f->count++;
    else if (n->kind == K_TAGGED) tag_done(s, f, n);
    s->mode = J_NEXT;
}

static bool open_container(struct moe_json_state *s, unsigned nd, bool object)
{
    if (s->depth >= MOE_JSON_MAX_DEPTH) return false;
    s->f[s->depth++] = (struct moe_json_frame){ .node = (uint16_t)nd };
    s->mode = object ? J_KEY_FIRST : J_ARR_FIRST;
    return true;
}

static void close_container(struct moe_json_state *s)
{
    s->depth--;
    value_done(s);
}

/* The first of the candidate literals lits[lo .. hi) (sorted, sharing their first s->pos bytes)
 * whose byte at s->pos is c or more (one that ends there counts as less than any byte). */
static uint32_t lit_bound(const struct moe_json_state *s, uint32_t lo, uint32_t hi, int c)
{
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (str_at(s, s->sc->lits[mid]) < c) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* The array whose elements must differ (uniqueItems: its elements are literals) that the literal
 * being read is an element of, or NULL. */
static struct moe_json_frame *unique_frame(struct moe_json_state *s)
{
    if (!s->depth) return NULL;
    const struct json_node *n = node(s, top(s)->node);
    return n->kind == K_ARRAY && n->unique ? top(s) : NULL;
}

/* Whether literal i may still be written (not already an element of its unique array). */
static bool lit_free(const struct moe_json_state *s, const struct moe_json_frame *u, uint32_t i)
{
    return !u || !(u->seen >> s->sc->lit_orig[i] & 1);
}

/* Keep the candidates whose byte at s->pos is c; false when none is (or none may be written). */
static bool lits_with(struct moe_json_state *s, int c)
{
    uint32_t lo = lit_bound(s, s->llo, s->lhi, c), hi = lit_bound(s, lo, s->lhi, c + 1);
    const struct moe_json_frame *u = unique_frame(s);
    uint32_t i = lo;
    while (i < hi && !lit_free(s, u, i)) i++;
    if (i == hi) return false;
    s->llo = lo;
    s->lhi = hi;
    return true;
}

/* Whether one of the candidates is complete (the first: the shortest), and whether one goes on. */
static void lits_state(struct moe_json_state *s, bool *complete, bool *longer)
{
    const struct moe_json_frame *u = unique_frame(s);
    if (!u) {
        *complete = s->sc->lits[s->llo].len == s->pos;
        *longer = s->sc->lits[s->lhi - 1].len > s->pos;
        return;
    }
    *complete = *longer = false;
    for (uint32_t i = s->llo; i < s->lhi; i++)
        if (lit_free(s, u, i)) *(s->sc->lits[i].len == s->pos ? complete : longer) = true;
}

/* A literal ends (the complete candidate): in a unique array, it is written now. */
static void lit_end(struct moe_json_state *s)
{
    struct moe_json_frame *u = unique_frame(s);
    for (uint32_t i = s->llo; u && i < s->lhi; i++)
        if (s->sc->lits[i].len == s->pos && lit_free(s, u, i)) {
            u->seen |= 1ull << s->sc->lit_orig[i];
            break;
        }
    value_done(s);
}

/* ---- bounded numbers and strings ------------------------------------------------- */

#define INT_DIGITS 18 /* of a bounded integer: below 10^18, so every sum here fits an int64 */
static const int64_t pow10i[INT_DIGITS + 1] = {
    1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000, 10000000000, 100000000000,
    1000000000000, 10000000000000, 100000000000000, 1000000000000000, 10000000000000000, 100000000000000000,
    1000000000000000000,
};

/* Whether an integer in [a, b] is in r (and a multiple of r->mult). */
static bool int_meets(const struct json_range *r, int64_t a, int64_t b)
{
    if (a < r->ilo) a = r->ilo;
    if (b > r->ihi) b = r->ihi;
    if (a > b) return false;
    int64_t q = b / r->mult - (b % r->mult < 0); /* the floor of b / mult */
    return q * r->mult >= a;
}

/* The integer of text t[0..len) (a sign and digits, at most INT_DIGITS of them). */
static int64_t int_of(const char *t, int len)
{
    int64_t m = 0;
    for (int i = t[0] == '-'; i < len; i++) m = m * 10 + (t[i] - '0');
    return t[0] == '-' ? -m : m;
}

/* Whether the integer begun by t[0..len) can still end in r: its digits so far followed by up to
 * INT_DIGITS of them in all (none after a leading zero). */
static bool int_viable(const struct json_range *r, const char *t, int len)
{
    bool neg = t[0] == '-';
    int d = len - neg;
    if (d > INT_DIGITS) return false;
    int64_t top = pow10i[INT_DIGITS] - 1;
    if (d == 0) return int_meets(r, -top, 0); /* '-' alone */
    int64_t m = neg ? -int_of(t, len) : int_of(t, len);
    for (int k = 0; k <= INT_DIGITS - d && (k == 0 || m > 0); k++) {
        int64_t a = m * pow10i[k], b = a + pow10i[k] - 1;
        if (neg ? int_meets(r, -b, -a) : int_meets(r, a, b)) return true;
    }
    return false;
}

/* One more byte of the number being read, for a bounded node: kept while the number can still end in
 * range (within its length). */
static bool num_push(struct moe_json_state *s, unsigned char c)
{
    if (!s->bounded) return true;
    const struct json_node *n = node(s, s->cur);
    if (s->nlen >= MOE_JSON_MAX_NUM) return false;
    s->num[s->nlen++] = (char)c;
    return n->kind == K_INTEGER ? int_viable(&n->range, s->num, s->nlen)
                                : json_num_viable(s->sc->pool + n->range.dec, s->num, s->nlen);
}

/* Whether the number read may end here. */
static bool num_ends(const struct moe_json_state *s)
{
    if (!s->bounded) return true;
    const struct json_node *n = node(s, s->cur);
    if (n->kind == K_INTEGER) {
        int64_t v = int_of(s->num, s->nlen);
        return int_meets(&n->range, v, v);
    }
    return json_num_in(s->sc->pool + n->range.dec, s->num, s->nlen);
}

/* The characters a string value may still take (UINT32_MAX: any number); keys are not bounded. */
static uint32_t string_room(const struct moe_json_state *s)
{
    return !s->key && s->bounded ? node(s, s->cur)->max_items - s->pos : UINT32_MAX;
}

/* A character of a string value begins: one more, if its bounds allow it. */
static bool string_char(struct moe_json_state *s)
{
    if (string_room(s) == 0) return false;
    if (!s->key) s->pos++;
    return true;
}

/* ---- patterns: each character of a string (or raw text) through an automaton ----------- */

/* The state after code point cp from state st (0: none). */
static uint32_t dfa_step(const struct moe_json_schema *sc, uint32_t st, uint32_t cp)
{
    const struct json_dfa_range *r = sc->dfa_ranges + sc->dfa[st].first;
    uint32_t lo = 0, hi = sc->dfa[st].n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (r[mid].hi < cp) lo = mid + 1;
        else hi = mid;
    }
    return lo < sc->dfa[st].n && r[lo].lo <= cp ? r[lo].next : 0;
}

/* Whether a string in automaton state st, with the characters counted so far (the one being read
 * too), can still match within its length bounds: a match some number of characters on lands in
 * minLength .. maxLength. */
static bool reach_at(const struct moe_json_state *s, uint32_t st, uint32_t pos)
{
    if (!st) return false; /* every other state reaches a match (json_regex.c cut the rest) */
    if (s->text || !s->bounded) return true;
    const struct json_node *n = node(s, s->cur);
    if (n->min_items == 0 && n->max_items == UINT32_MAX) return true; /* no lengths (nor lens kept) */
    const struct json_dfa_state *d = &s->sc->dfa[st];
    uint32_t lo = n->min_items > pos ? n->min_items - pos : 0, hi = n->max_items - pos;
    for (uint32_t k = lo; k < JSON_DFA_LENS && k <= hi; k++)
        if (d->lens[k / 64] >> (k % 64) & 1) return true;
    return d->far != UINT32_MAX && d->far <= hi; /* the compiler holds minLength below JSON_DFA_LENS */
}

static bool reach(const struct moe_json_state *s, uint32_t st) { return reach_at(s, st, s->pos); }

/* Whether some code point in lo .. hi (surrogates aside) leads on from the automaton's state. */
static bool cp_may(const struct moe_json_state *s, uint32_t lo, uint32_t hi)
{
    if (s->sc->grammar) return moe_grammar_may(s->sc->grammar, s->g, lo, hi);
    if (!s->dfa) return true;
    const struct json_dfa_state *st = &s->sc->dfa[s->dfa];
    const struct json_dfa_range *r = s->sc->dfa_ranges + st->first;
    for (uint32_t i = 0; i < st->n; i++) /* the automaton's ranges hold no surrogates */
        if (r[i].hi >= lo && r[i].lo <= hi && reach(s, r[i].next)) return true;
    return false;
}

/* Whether a \u escape may write some code point in lo .. hi (on from the automaton's state): not
 * printable ASCII but for '"' and '\\' (the others are written as themselves), and a surrogate
 * only in a string without a pattern or lengths (which count a pair of escapes as one character),
 * and only as a pair: a high one first (D800-DBFF), then, in the next escape, a low one (DC00-DFFF).
 * In a key, only a control character without a short escape: a key is written as the schema's JSON
 * writes its property names (every other character as itself or \", \\, \b, \f, \n, \r, \t, hex
 * digits in upper case), so that its bytes tell whether it is one of them. */
static bool esc_may(const struct moe_json_state *s, uint32_t lo, uint32_t hi)
{
    static const uint32_t ok[][2] = { { 0, 0x1f }, { 0x22, 0x22 }, { 0x5c, 0x5c }, { 0x7f, 0xd7ff },
                                      { 0xd800, 0xdbff }, { 0xe000, 0xffff } };
    static const uint32_t key_ok[][2] = { { 0, 0x07 }, { 0x0b, 0x0b }, { 0x0e, 0x1f } };
    if (s->mode == J_LOW_HEX) return lo <= 0xdfff && hi >= 0xdc00;
    bool plain = !s->dfa && string_room(s) == UINT32_MAX;
    size_t n = s->key ? sizeof(key_ok) / sizeof(key_ok[0]) : sizeof(ok) / sizeof(ok[0]);
    for (size_t i = 0; i < n; i++) {
        const uint32_t *r = s->key ? key_ok[i] : ok[i];
        uint32_t a = lo > r[0] ? lo : r[0], b = hi < r[1] ? hi : r[1];
        if (a <= b && (r[0] != 0xd800 || plain) && cp_may(s, a, b)) return true;
    }
    return false;
}

/* A character ends: on through the automaton. */
static bool cp_done(struct moe_json_state *s, uint32_t cp)
{
    if (s->sc->grammar) {
        if (!moe_grammar_step(s->sc->grammar, s->g, cp)) return false;
        if (!moe_grammar_open(s->g)) s->mode = J_DONE; /* a whole sentence that cannot go on */
        return true;
    }
    if (!s->dfa) return true;
    uint32_t next = dfa_step(s->sc, s->dfa, cp);
    if (!reach(s, next)) return false;
    s->dfa = next;
    if (s->text && !s->sc->dfa[next].open) s->mode = J_DONE; /* raw text that cannot go on: whole */
    return true;
}

/* The code points a character begun by k of its bits (v) with r groups of 6 left can be. */
static bool cp_may_partial(const struct moe_json_state *s, uint32_t v, unsigned r)
{
    return cp_may(s, v << (6 * r), (v << (6 * r)) | ((1u << (6 * r)) - 1));
}

/* A UTF-8 lead byte (RFC 3629): its continuation bytes, the first of which is narrower after E0 and
 * F0 (no overlong forms), ED (no surrogates) and F4 (nothing above U+10FFFF); false if c is none. */
static bool utf8_lead(struct moe_json_state *s, unsigned char c)
{
    s->lo = 0x80;
    s->hi = 0xbf;
    uint32_t lo, hi;
    if (c >= 0xc2 && c <= 0xdf) s->aux = 1, s->ucp = c & 0x1f, lo = s->ucp << 6, hi = lo | 0x3f;
    else if (c >= 0xe0 && c <= 0xef) s->aux = 2, s->ucp = c & 0x0f, lo = s->ucp << 12, hi = lo | 0xfff;
    else if (c >= 0xf0 && c <= 0xf4) s->aux = 3, s->ucp = c & 0x07, lo = s->ucp << 18, hi = lo | 0x3ffff;
    else return false;
    if (c == 0xe0) s->lo = 0xa0, lo = 0x800;
    else if (c == 0xed) s->hi = 0x9f, hi = 0xd7ff;
    else if (c == 0xf0) s->lo = 0x90, lo = 0x10000;
    else if (c == 0xf4) s->hi = 0x8f, hi = 0x10ffff;
    s->mode = J_UTF8;
    return cp_may(s, lo, hi);
}

/* The node a union (or any value) takes for a value beginning with c; -1: none. */
static int select_branch(const struct moe_json_state *s, unsigned nd, unsigned char c)
{
    const struct json_node *n = node(s, nd);
    if (n->kind == K_ANY) {
        switch (c) {
        case '{': return N_ANY_OBJECT;
        case '[': return N_ANY_ARRAY;
        case '"': return N_ANY_STRING;
        case 't': case 'f': case 'n': return N_ANY_LITERAL;
        default: return c == '-' || is_digit(c) ? N_ANY_NUMBER : -1;
        }
    }
    if (n->kind != K_UNION) return (int)nd;
    for (unsigned i = 0; i < n->n; i++) { /* the compiler made the branches' first bytes disjoint */
        unsigned b = s->sc->branch[n->first + i];
        const struct json_node *bn = node(s, b);
        bool ok;
        switch (bn->kind) {
        case K_OBJECT: case K_TAGGED: ok = c == '{'; break;
        case K_ARRAY: ok = c == '['; break;
        case K_STRING: ok = c == '"'; break;
        case K_NUMBER: case K_INTEGER: ok = c == '-' || is_digit(c); break;
        case K_LITERALS:
            ok = false;
            for (unsigned k = 0; k < bn->n; k++) ok |= (unsigned char)s->sc->pool[s->sc->lits[bn->first + k].off] == c;
            break;
        default: ok = false;
        }
        if (ok) return (int)b;
    }
    return -1;
}

/* The start of a value of node cur (after any whitespace). */
static bool value_start(struct moe_json_state *s, unsigned char c)
{
    int nd = select_branch(s, s->cur, c);
    if (nd < 0) return false;
    const struct json_node *n = node(s, (unsigned)nd);
    switch (n->kind) {
    case K_OBJECT:
    case K_TAGGED: return c == '{' && open_container(s, (unsigned)nd, true);
    case K_ARRAY: return c == '[' && open_container(s, (unsigned)nd, false);
    case K_STRING:
        if (c != '"') return false;
        s->mode = J_STRING;
        s->key = false;
        s->cur = (uint16_t)nd;
        s->bounded = n->bounded;
        s->dfa = n->pattern;
        s->pos = 0; /* characters written */
        return true;
    case K_NUMBER:
    case K_INTEGER:
        s->integer = n->kind == K_INTEGER;
        s->cur = (uint16_t)nd;
        s->bounded = n->bounded;
        s->nlen = 0;
        if (c == '-') s->mode = J_MINUS;
        else if (c == '0') s->mode = J_ZERO;
        else if (c >= '1' && c <= '9') s->mode = J_INT;
        else return false;
        return num_push(s, c);
    case K_LITERALS: {
        s->cur = (uint16_t)nd;
        s->pos = 0;
        s->llo = n->first;
        s->lhi = n->first + n->n;
        if (!lits_with(s, c)) return false;
        s->pos = 1;
        s->mode = J_LIT;
        bool complete, longer;
        lits_state(s, &complete, &longer);
        if (!longer) lit_end(s);
        return true;
    }
    default:
        return false;
    }
}

/* The keys the object on top may still take: its declared properties not yet written (only the
 * required ones once maxProperties leaves room for no other), and whether other keys may come. */
static uint64_t keys_open(const struct moe_json_state *s, bool *extra)
{
    const struct moe_json_frame *f = &s->f[s->depth - 1];
    const struct json_node *n = node(s, f->node);
    uint64_t open = all_bits(n->n) & ~f->seen;
    *extra = n->extra >= 0;
    if (n->kind == K_OBJECT && n->bounded) {
        uint64_t need = n->required & ~f->seen;
        if (f->count + 1 + (uint32_t)__builtin_popcountll(need) > n->max_items) {
            open = need;
            *extra = false;
        }
    }
    return open;
}

/* A key's opening quote in the object on top. */
static bool key_start(struct moe_json_state *s)
{
    const struct json_node *n = node(s, top(s)->node);
    bool extra;
    uint64_t open = keys_open(s, &extra);
    s->cand = n->kind == K_TAGGED ? 1 : all_bits(n->n); /* a tagged object's tag comes first */
    if (!extra && !(s->cand & open)) return false; /* every property written (or no room for one) */
    s->pos = 0;
    s->key = true;
    s->dfa = 0;
    s->mode = J_STRING;
    return true;
}

/* One byte of a key (inside its quotes, closing = its closing quote): which declared property it
 * can still be; without other properties allowed, one not yet written. */
static bool key_byte(struct moe_json_state *s, unsigned char c, bool closing)
{
    struct moe_json_frame *f = top(s);
    const struct json_node *n = node(s, f->node);
    uint64_t keep = 0;
    for (uint64_t m = s->cand; m; m &= m - 1) {
        int i = __builtin_ctzll(m);
        int b = str_at(s, n->kind == K_TAGGED ? n->key : s->sc->props[n->first + (unsigned)i].name);
        if (closing ? b < 0 : b == c) keep |= 1ull << i;
    }
    s->cand = keep;
    bool extra;
    uint64_t open = keys_open(s, &extra);
    if (!closing) {
        if (keep) s->pos++;
        return (keep & open) || extra;
    }
    if (keep) { /* names are distinct: one property */
        if (!(keep & open)) return false; /* a key written twice, or one maxProperties has no room for */
        f->seen |= keep;
        f->count++;
        unsigned i = (unsigned)__builtin_ctzll(keep);
        f->value = n->kind == K_TAGGED ? (uint16_t)n->tags : s->sc->props[n->first + i].node;
        return true;
    }
    if (!extra) return false;
    f->count++;
    f->value = (uint16_t)n->extra;
    return true;
}

/* The node of an array's value i: its prefixItems schema, else its items schema. */
static uint16_t item_node(const struct moe_json_state *s, const struct json_node *n, uint32_t i)
{
    return i < n->n ? s->sc->branch[n->first + i] : (uint16_t)n->extra;
}

/* Whether the object on top may end: its required properties written, and minProperties keys. */
static bool required_done(struct moe_json_state *s)
{
    struct moe_json_frame *f = top(s);
    const struct json_node *n = node(s, f->node);
    return (f->seen & n->required) == n->required && (!n->bounded || f->count >= n->min_items);
}

/* Whether another key may follow (',' in an object). */
static bool more_keys(struct moe_json_state *s)
{
    const struct json_node *n = node(s, top(s)->node);
    if (n->bounded && top(s)->count >= n->max_items) return false;
    bool extra;
    return keys_open(s, &extra) || extra;
}

/* A number ends at c: c goes on in the context after the value. */
static bool number_end(struct moe_json_state *s, unsigned char c);

static bool string_byte(struct moe_json_state *s, unsigned char c)
{
    if (c == '"') {
        if (s->key) {
            if (!key_byte(s, c, true)) return false;
            s->mode = J_COLON;
        } else {
            if (s->bounded && s->pos < node(s, s->cur)->min_items) return false;
            if (s->dfa && !s->sc->dfa[s->dfa].accept) return false; /* the pattern unmatched */
            value_done(s);
        }
        return true;
    }
    if (s->key && !key_byte(s, c, false)) return false;
    if (c < 0x20) return false; /* control characters must be escaped */
    if ((c < 0x80 || (c >= 0xc2 && c <= 0xf4)) && !string_char(s)) return false; /* a character begins */
    if (c == '\\') { /* an escape: '/' or a \u escape's character (the others are among those) */
        s->mode = J_ESC;
        return cp_may(s, '/', '/') || esc_may(s, 0, 0xffff);
    }
    if (c < 0x80) return cp_done(s, c);
    return utf8_lead(s, c);
}

/* The character of a one-letter escape (after '\'), -1 for none. */
static int escaped(unsigned char c)
{
    switch (c) {
    case '"': case '\\': case '/': return c;
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    default: return -1;
    }
}

static bool step(struct moe_json_state *s, unsigned char c)
{
    switch (s->mode) {
    case J_START:
        return value_start(s, c);
    case J_VALUE:
        return is_ws(c) || value_start(s, c);
    case J_ARR_FIRST: {
        if (is_ws(c)) return true;
        const struct json_node *n = node(s, top(s)->node);
        if (c == ']') {
            if (n->min_items > 0) return false;
            close_container(s);
            return true;
        }
        if (n->max_items == 0) return false;
        s->cur = item_node(s, n, 0);
        return value_start(s, c);
    }
    case J_KEY_FIRST:
    case J_KEY:
        if (is_ws(c)) return true;
        if (c == '}' && s->mode == J_KEY_FIRST) {
            if (!required_done(s)) return false;
            close_container(s);
            return true;
        }
        return c == '"' && key_start(s);
    case J_COLON:
        if (is_ws(c)) return true;
        if (c != ':') return false;
        s->cur = top(s)->value;
        s->mode = J_VALUE;
        return true;
    case J_NEXT: {
        if (is_ws(c)) return true;
        struct moe_json_frame *f = top(s);
        const struct json_node *n = node(s, f->node);
        bool object = n->kind == K_OBJECT;
        if (c == ',') {
            if (object) {
                if (!more_keys(s)) return false;
                s->mode = J_KEY;
            } else {
                if (f->count >= n->max_items) return false;
                if (n->unique && __builtin_popcountll(f->seen) >= node(s, (unsigned)n->extra)->n) return false;
                s->cur = item_node(s, n, f->count);
                s->mode = J_VALUE;
            }
            return true;
        }
        if (c == (object ? '}' : ']')) {
            if (object ? !required_done(s) : f->count < n->min_items) return false;
            close_container(s);
            return true;
        }
        return false;
    }
    case J_STRING:
        return string_byte(s, c);
    case J_UTF8:
        if (c < s->lo || c > s->hi) return false;
        s->lo = 0x80;
        s->hi = 0xbf;
        if (s->key && !key_byte(s, c, false)) return false;
        s->ucp = s->ucp << 6 | (c & 0x3f);
        if (--s->aux > 0) return cp_may_partial(s, s->ucp, s->aux);
        s->mode = s->text ? J_TEXT : J_STRING;
        return cp_done(s, s->ucp);
    case J_ESC:
        if (s->key && (c == '/' || !key_byte(s, c, false))) return false; /* a key's '/' as itself */
        if (c == 'u') {
            s->mode = J_HEX;
            s->aux = 4;
            s->ucp = 0;
            return esc_may(s, 0, 0xffff);
        }
        if (escaped(c) < 0) return false;
        s->mode = J_STRING;
        return cp_done(s, (uint32_t)escaped(c));
    case J_HEX:
    case J_LOW_HEX: {
        if (!is_hex(c)) return false;
        if (s->key && (c >= 'a' || !key_byte(s, c, false))) return false; /* a key's hex digits in upper case */
        uint32_t high = s->ucp >> 16, v = (s->ucp & 0xffff) << 4 | (uint32_t)(is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10);
        s->ucp = high << 16 | v;
        if (--s->aux > 0) {
            uint32_t lo = v << (4 * s->aux);
            return esc_may(s, lo, lo | ((1u << (4 * s->aux)) - 1));
        }
        if (!esc_may(s, v, v)) return false;
        if (s->mode == J_HEX && v >= 0xd800 && v <= 0xdbff) { /* a high surrogate: its low one follows */
            s->mode = J_LOW_ESC;
            return true;
        }
        s->mode = J_STRING;
        return cp_done(s, high ? 0x10000 + ((high - 0xd800) << 10) + (v - 0xdc00) : v);
    }
    case J_LOW_ESC:
        if (c != '\\') return false;
        s->mode = J_LOW_U;
        return true;
    case J_LOW_U:
        if (c != 'u') return false;
        s->mode = J_LOW_HEX;
        s->aux = 4;
        s->ucp <<= 16; /* the high surrogate, above the low one's digits */
        return true;
    case J_TEXT:
        if (c < 0x80) return cp_done(s, c);
        return utf8_lead(s, c);
    case J_MINUS:
        if (c == '0') s->mode = J_ZERO;
        else if (c >= '1' && c <= '9') s->mode = J_INT;
        else return false;
        return num_push(s, c);
    case J_ZERO:
    case J_INT:
        if (is_digit(c) && s->mode == J_INT) return num_push(s, c);
        if (c == '.' && !s->integer) {
            s->mode = J_DOT;
            return num_push(s, c);
        }
        if ((c == 'e' || c == 'E') && !s->integer && !s->bounded) {
            s->mode = J_EXP;
            return true;
        }
        return number_end(s, c);
    case J_DOT:
        if (!is_digit(c)) return false;
        s->mode = J_FRAC;
        return num_push(s, c);
    case J_FRAC:
        if (is_digit(c)) return num_push(s, c);
        if ((c == 'e' || c == 'E') && !s->bounded) {
            s->mode = J_EXP;
            return true;
        }
        return number_end(s, c);
    case J_EXP:
        if (c == '+' || c == '-') s->mode = J_EXP_SIGN;
        else if (is_digit(c)) s->mode = J_EXP_DIGITS;
        else return false;
        return true;
    case J_EXP_SIGN:
        if (!is_digit(c)) return false;
        s->mode = J_EXP_DIGITS;
        return true;
    case J_EXP_DIGITS:
        if (is_digit(c)) return true;
        return number_end(s, c);
    case J_LIT: {
        bool complete, longer;
        if (lits_with(s, c)) {
            s->pos++;
            lits_state(s, &complete, &longer);
            if (!longer) lit_end(s);
            return true;
        }
        lits_state(s, &complete, &longer); /* lits_with left the candidates as they were */
        if (!complete) return false;
        lit_end(s); /* a literal that another one extends (1 before 10) ends at c */
        return step(s, c);
    }
    case J_DONE:
    default:
        return false; /* nothing follows the value */
    }
}

static bool number_end(struct moe_json_state *s, unsigned char c)
{
    if (!num_ends(s)) return false;
    value_done(s);
    return step(s, c);
}

/* Whitespace inside a string or a literal is text, not whitespace between tokens. */
static bool in_token(const struct moe_json_state *s)
{
    return s->mode == J_STRING || s->mode == J_ESC || s->mode == J_HEX || s->mode == J_LOW_ESC || s->mode == J_LOW_U ||
           s->mode == J_LOW_HEX || s->mode == J_UTF8 || s->mode == J_LIT || s->mode == J_TEXT;
}

/* Whitespace between tokens: a run holds at most two line breaks and 2 + 4 x depth bytes (room for
 * a line break and indentation of up to four per level, the layouts JSON is printed in), and never
 * more than MOE_JSON_MAX_WS; in a compact schema, one space. */
static bool ws_ok(const struct moe_json_state *s)
{
    if (s->sc->compact) return s->sc->compact == 1 && s->ws <= 1 && s->nl == 0;
    unsigned lim = 2u + 4u * s->depth;
    return s->nl <= 2 && s->ws <= (lim < MOE_JSON_MAX_WS ? lim : MOE_JSON_MAX_WS);
}

/* One byte before the value when it may follow a reasoning block: the block is free text, its
 * tags are matched byte by byte ("</think>" has no proper prefix that is also its suffix, so a
 * mismatch restarts the match at this byte), the value begins after at most MOE_JSON_MAX_WS bytes
 * of whitespace. */
static bool think_step(struct moe_json_state *s, unsigned char c)
{
    switch (s->mode) {
    case J_THINK_MAY:
        if (c == (unsigned char)MOE_THINK_OPEN[s->pos]) {
            if (++s->pos == strlen(MOE_THINK_OPEN)) {
                s->mode = J_THINK;
                s->pos = 0;
            }
            return true;
        }
        if (s->pos) return false;
        s->mode = J_START; /* no block: the value, from this byte */
        return step(s, c);
    case J_THINK:
        if (c == (unsigned char)MOE_THINK_CLOSE[s->pos]) {
            if (++s->pos == strlen(MOE_THINK_CLOSE)) {
                s->mode = J_THINK_WS;
                s->pos = 0;
                s->ws = 0;
            }
        } else {
            s->pos = c == (unsigned char)MOE_THINK_CLOSE[0];
        }
        return true;
    default: /* J_THINK_WS */
        if (is_ws(c)) return ++s->ws <= MOE_JSON_MAX_WS;
        s->ws = 0;
        s->mode = J_START;
        return step(s, c);
    }
}

/* ---- structural tags ------------------------------------------------------------------------ */

/* Back to free text after a structure. */
static void tag_free(struct moe_json_state *s) { moe_json_init(s, s->tag); }

/* Structure i's begin is whole: its value follows. */
static void tag_value(struct moe_json_state *s, int i)
{
    const struct moe_json_schema *tag = s->tag;
    moe_json_init(s, tag->tags->sc[i]);
    s->tag = tag;
    s->tstruct = (uint8_t)i;
}

/* Trigger j is whole: the structures whose begin starts with it are the candidates. */
static void tag_begin(struct moe_json_state *s, int j)
{
    const struct json_tags *tg = s->tag->tags;
    s->mode = J_TAG_BEGIN;
    s->tpos = tg->tlen[j];
    s->tcand = 0;
    for (int i = 0; i < tg->n; i++)
        if (tg->blen[i] >= tg->tlen[j] && !memcmp(tg->begin[i], tg->trig[j], tg->tlen[j])) s->tcand |= 1ull << i;
    for (int i = 0; i < tg->n; i++)
        if (s->tcand >> i & 1 && tg->blen[i] == s->tpos) tag_value(s, i); /* a begin that is the trigger */
}

/* Free text: the longest end of the text that begins a trigger is kept; a trigger written whole
 * (at any of the text's ends) commits the text to a structure. */
static void trigger_step(struct moe_json_state *s, unsigned char c)
{
    const struct json_tags *tg = s->tag->tags;
    char buf[MOE_JSON_MAX_TAG_BYTES + 1];
    size_t n = s->tpos;
    memcpy(buf, tg->trig[s->ttrig], n);
    buf[n++] = (char)c;
    for (size_t k = n; k > 0; k--) /* a trigger whole */
        for (int j = 0; j < tg->n_trig; j++)
            if (tg->tlen[j] == k && !memcmp(tg->trig[j], buf + n - k, k)) {
                tag_begin(s, j);
                return;
            }
    for (size_t k = n; k > 0; k--) /* the longest beginning of one */
        for (int j = 0; j < tg->n_trig; j++)
            if (tg->tlen[j] > k && !memcmp(tg->trig[j], buf + n - k, k)) {
                s->ttrig = (uint8_t)j;
                s->tpos = (uint16_t)k;
                return;
            }
    s->tpos = 0;
}

static bool tag_step(struct moe_json_state *s, unsigned char c)
{
    const struct json_tags *tg = s->tag->tags;
    switch (s->mode) {
    case J_DONE: /* the structure's value is whole: its end follows */
        s->mode = J_TAG_END;
        s->tpos = 0;
        s->ws = 0;
        /* fall through */
    case J_TAG_END: {
        const char *e = tg->end[s->tstruct];
        if (tg->elen[s->tstruct] == 0) { /* no end: free text at once */
            tag_free(s);
            return tag_step(s, c);
        }
        if (s->tpos == 0 && c != (unsigned char)e[0] && is_ws(c)) return ++s->ws <= MOE_JSON_MAX_WS;
        if (c != (unsigned char)e[s->tpos]) return false;
        if (++s->tpos == tg->elen[s->tstruct]) tag_free(s);
        return true;
    }
    case J_TAG_BEGIN: {
        uint64_t cand = 0;
        for (int i = 0; i < tg->n; i++)
            if (s->tcand >> i & 1 && tg->blen[i] > s->tpos && (unsigned char)tg->begin[i][s->tpos] == c)
                cand |= 1ull << i;
        if (!cand) return false;
        s->tcand = cand;
        s->tpos++;
        for (int i = 0; i < tg->n; i++)
            if (cand >> i & 1 && tg->blen[i] == s->tpos) {
                tag_value(s, i);
                break;
            }
        return true;
    }
    default: /* J_TAG_FREE */
        trigger_step(s, c);
        return true;
    }
}

bool moe_json_feed(struct moe_json_state *s, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)b[i];
        if (s->tag && (s->mode == J_DONE || (s->mode >= J_TAG_FREE && s->mode <= J_TAG_END))) {
            if (!tag_step(s, c)) return false;
            continue;
        }
        if (s->mode >= J_THINK_MAY) {
            if (!think_step(s, c)) return false;
            continue;
        }
        bool ws = is_ws(c) && !in_token(s);
        if (!step(s, c)) return false;
        if (!ws) {
            s->ws = s->nl = 0;
            continue;
        }
        s->ws++;
        s->nl += c == '\n' || c == '\r';
        if (!ws_ok(s)) return false;
    }
    return true;
}

/* Whether bytes b[0..n) are whole characters of a string's text (no quote, backslash or control
 * character; valid UTF-8): inside a string they are text and leave the recognizer as it was. */
static bool string_text(const char *b, size_t n)
{
    struct moe_json_state s = { .sc = &moe_json_any_object, .mode = J_STRING };
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)b[i];
        if ((s.mode == J_STRING && (c == '"' || c == '\\')) || !step(&s, c)) return false;
    }
    return s.mode == J_STRING;
}

/* Whether s is inside a string whose text string_text() bytes cannot change (but for its length): a
 * value, or a key that no declared property constrains. */
static bool in_free_string(const struct moe_json_state *s)
{
    if (s->mode != J_STRING || s->dfa) return false; /* a pattern sees every character */
    if (!s->key) return true;
    return s->cand == 0 && node(s, s->f[s->depth - 1].node)->extra >= 0;
}

/* Token ids by their bytes: tokens that share a beginning sit together, so the mask feeds a shared
 * beginning once and skips every token under a refused one. */
struct tok_key {
    const char *b;
    uint32_t len;
    int id;
};

static int tok_cmp(const void *x, const void *y)
{
    const struct tok_key *a = x, *b = y;
    uint32_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->b, b->b, n);
    if (c) return c;
    return a->len != b->len ? (a->len < b->len ? -1 : 1) : (a->id > b->id) - (a->id < b->id);
}

enum moe_status moe_token_bytes_make(const char *blob, const uint32_t *off, int n, struct moe_token_bytes *t)
{
    *t = (struct moe_token_bytes){ 0 };
    size_t total = off[n];
    char *b = malloc(total + 1);
    uint32_t *o = malloc(sizeof(uint32_t) * ((size_t)n + 1));
    struct tok_key *keys = malloc(sizeof(*keys) * ((size_t)n + 1));
    int *order = malloc(sizeof(int) * ((size_t)n + 1));
    uint32_t *lcp = malloc(sizeof(uint32_t) * ((size_t)n + 1));
    bool *plain = malloc(sizeof(bool) * ((size_t)n + 1));
    uint32_t *chars = calloc((size_t)n + 1, sizeof(uint32_t));
    if (!b || !o || !keys || !order || !lcp || !plain || !chars) {
        free(chars);
        free(plain);
        free(b);
        free(o);
        free(keys);
        free(order);
        free(lcp);
        return moe_errorf(MOE_ENOMEM, "out of memory for the vocabulary's text (%zu bytes)", total);
    }
    memcpy(b, blob, total);
    memcpy(o, off, sizeof(uint32_t) * ((size_t)n + 1));
    for (int id = 0; id < n; id++) {
        plain[id] = o[id + 1] > o[id] && string_text(b + o[id], o[id + 1] - o[id]);
        for (uint32_t i = o[id]; plain[id] && i < o[id + 1]; i++) chars[id] += ((unsigned char)b[i] & 0xc0) != 0x80;
    }
    int m = 0;
    for (int id = 0; id < n; id++)
        if (o[id + 1] > o[id]) keys[m++] = (struct tok_key){ b + o[id], o[id + 1] - o[id], id };
    qsort(keys, (size_t)m, sizeof(*keys), tok_cmp);
    for (int i = 0; i < m; i++) {
        order[i] = keys[i].id;
        uint32_t l = 0;
        if (i > 0) {
            uint32_t lim = keys[i].len < keys[i - 1].len ? keys[i].len : keys[i - 1].len;
            while (l < lim && keys[i].b[l] == keys[i - 1].b[l]) l++;
        }
        lcp[i] = l;
    }
    free(keys);
    *t = (struct moe_token_bytes){ .n = n, .blob = b, .off = o, .n_sorted = m, .order = order, .lcp = lcp,
                                   .plain = plain, .chars = chars };
    return MOE_OK;
}

enum moe_status moe_token_bytes_build(const struct moe_tokenizer *tok, int vocab, struct moe_token_bytes *t)
{
    int nt = moe_tokenizer_vocab_size(tok);
    size_t total = 0;
    for (int id = 0; id < nt && id < vocab; id++) {
        int k = moe_tokenizer_token_bytes(tok, id, NULL, 0);
        total += k > 0 ? (size_t)k : 0;
    }
    if (total > UINT32_MAX)
        return moe_errorf(MOE_ERANGE, "the vocabulary's text is %zu bytes, more than JSON mode's table holds", total);
    char *blob = malloc(total + 1);
    uint32_t *off = malloc(sizeof(uint32_t) * ((size_t)vocab + 1));
    if (!blob || !off) {
        free(blob);
        free(off);
        return moe_errorf(MOE_ENOMEM, "out of memory for the vocabulary's text (%zu bytes)", total);
    }
    uint32_t at = 0;
    for (int id = 0; id < vocab; id++) {
        off[id] = at;
        int k = id < nt ? moe_tokenizer_token_bytes(tok, id, blob + at, total - at) : 0;
        at += k > 0 ? (uint32_t)k : 0;
    }
    off[vocab] = at;
    enum moe_status st = moe_token_bytes_make(blob, off, vocab, t);
    free(blob);
    free(off);
    return st;
}

void moe_token_bytes_free(struct moe_token_bytes *t)
{
    free((char *)t->blob);
    free((uint32_t *)t->off);
    free((int *)t->order);
    free((uint32_t *)t->lcp);
    free((bool *)t->plain);
    free((uint32_t *)t->chars);
    *t = (struct moe_token_bytes){ 0 };
}

#define MASK_DEPTH 24 /* the states after a token's first bytes kept for the next tokens */

/* The vocabulary in the order of its bytes: each token starts from the deepest kept state of the
 * bytes it shares with the last one fed, and is passed over when it begins with a beginning
 * already refused. */
struct sorted_walk {
    const struct moe_token_bytes *t;
    int i;
    uint32_t have;    /* kept: the states after the last token fed's first 0 .. have bytes */
    uint32_t shared;  /* the bytes the token at i shares with the last one fed */
    uint32_t refused; /* > 0: the last one fed failed at byte refused - 1 */
    const float *taken; /* tokens already allowed (finite), passed over; NULL: none */
};

/* The next token to feed, of the plain ones (plain 1), the others (0) or all (-1); *from: the bytes
 * of it the kept states cover.  False at the end. */
static bool walk_next(struct sorted_walk *w, int plain, int *id, uint32_t *from)
{
    for (; w->i < w->t->n_sorted; w->i++) {
        int tok = w->t->order[w->i];
        uint32_t l = w->t->lcp[w->i];
        w->shared = w->i == 0 ? 0 : l < w->shared ? l : w->shared;
        if ((w->refused && w->shared >= w->refused) || (plain >= 0 && w->t->plain[tok] != (plain == 1)) ||
            (w->taken && tok < w->t->n && !isinf(w->taken[tok])))
            continue;
        *id = tok;
        *from = w->shared < w->have ? w->shared : w->have;
        w->shared = UINT32_MAX; /* from here on, relative to this token */
        w->i++;
        return true;
    }
    return false;
}

/* The token walk_next gave was fed: the states after its first have bytes are kept; refused > 0:
 * it failed at byte refused - 1. */
static void walk_fed(struct sorted_walk *w, uint32_t have, uint32_t refused)
{
    w->have = have;
    w->refused = refused;
}

/* Where a string with a pattern is read: the tokens of plain text (whole characters, no quote or
 * backslash) only move its automaton and count characters, so they are walked in the order of
 * their bytes with that small state alone, a shared beginning stepped once. */
struct text_walk {
    uint32_t dfa, chars, ucp;
    uint8_t aux; /* continuation bytes left */
};

static int mask_pattern_text(const struct moe_json_state *s, const struct moe_token_bytes *t, const float *logits,
                             int vocab, bool (*is_eos)(const void *ud, int id), const void *ud, float *out)
{
    struct text_walk w[MASK_DEPTH + 1];
    w[0] = (struct text_walk){ .dfa = s->dfa };
    uint32_t room = string_room(s), k;
    int allowed = 0, id;
    for (struct sorted_walk sw = { .t = t }; walk_next(&sw, 1, &id, &k);) {
        const unsigned char *b = (const unsigned char *)t->blob + t->off[id];
        uint32_t len = t->off[id + 1] - t->off[id];
        struct text_walk cur = w[k];
        bool ok = true;
        for (; k < len && ok; k++) {
            unsigned char c = b[k];
            if (cur.aux) {
                cur.ucp = cur.ucp << 6 | (c & 0x3f);
                cur.aux--;
            } else if (c < 0x80) {
                cur.ucp = c;
                cur.chars++;
            } else { /* plain text is valid UTF-8: a lead byte */
                cur.aux = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : 1;
                cur.ucp = c & (0x3fu >> cur.aux);
                cur.chars++;
            }
            if (!cur.aux) cur.dfa = dfa_step(s->sc, cur.dfa, cur.ucp);
            ok = cur.dfa && cur.chars <= room;
            if (k + 1 <= MASK_DEPTH) w[k + 1] = cur;
        }
        walk_fed(&sw, k < MASK_DEPTH ? k : MASK_DEPTH, ok ? 0 : k);
        if (!ok) continue;
        if (id >= vocab || (is_eos && is_eos(ud, id)) || !reach_at(s, cur.dfa, s->pos + cur.chars)) continue;
        out[id] = logits[id];
        allowed++;
    }
    return allowed;
}

/* Inside a reasoning block the text is free: a token is refused only when it closes the block and
 * what follows in it cannot begin the value (and an end-of-sequence token, which would end the
 * output before the value).  Only a token with a '<', or any token while part of the closing tag
 * is read, can close it. */
static int mask_think(const struct moe_json_state *s, const struct moe_token_bytes *t, const float *logits, int vocab,
                      bool (*is_eos)(const void *ud, int id), const void *ud, float *out)
{
    int allowed = 0;
    struct moe_json_state cur;
    for (int id = 0; id < vocab; id++) {
        out[id] = -INFINITY;
        if (id >= t->n || (is_eos && is_eos(ud, id))) continue;
        const char *b = t->blob + t->off[id];
        uint32_t len = t->off[id + 1] - t->off[id];
        if (!len) continue; /* no bytes: as the value's mask, never */
        if (s->pos || memchr(b, '<', len)) {
            moe_json_copy(&cur, s);
            if (!moe_json_feed(&cur, b, len)) continue;
        }
        out[id] = logits[id];
        allowed++;
    }
    return allowed;
}

/* In a grammar's text, runs: the state t that the most ASCII bytes lead to from s, the bytes that
 * lead there (first) and those that leave t as it is (loop, as inside a string); and whether every
 * character above 127 leads from s to t (high_first) or leaves t as it is (high_loop).  A token of
 * whole characters whose first is in first and whose others are in loop goes on from s (and ends in
 * t).  Bytes of one class (moe_grammar_byte_classes) lead to the same state, as do the characters
 * above 127 where moe_grammar_high_uniform says so, so one of each is fed. */
struct runs {
    bool first[128], loop[128];
    bool high_first, high_loop;
};

/* Whether a character above 127 (é stands for them all) leads from s to the state to. */
static bool high_leads(const struct moe_json_state *s, const struct moe_json_state *to)
{
    static _Thread_local struct moe_json_state c;
    if (!moe_grammar_high_uniform(s->sc->grammar, s->g)) return false;
    moe_json_copy(&c, s);
    return moe_json_feed(&c, "\xc3\xa9", 2) && c.mode == to->mode && moe_grammar_state_equal(c.g, to->g);
}

static bool grammar_runs(const struct moe_json_state *s, struct runs *w)
{
    static _Thread_local struct moe_json_state t, c;
    const struct moe_grammar *g = s->sc->grammar;
    uint8_t cls[128];
    int n = moe_grammar_byte_classes(g, s->g, cls), count[256] = { 0 }, best = 0, rep = -1;
    for (int b = 0; b < 128; b++) count[cls[b]]++;
    for (int k = 1; k <= n; k++)
        if (count[k] > count[best] || !best) best = k;
    for (int b = 0; b < 128; b++) {
        w->first[b] = best && cls[b] == best;
        w->loop[b] = false;
        if (w->first[b] && rep < 0) rep = b;
    }
    w->high_first = w->high_loop = false;
    if (rep < 0) return false;
    char ch = (char)rep;
    moe_json_copy(&t, s);
    if (!moe_json_feed(&t, &ch, 1)) return false; /* a class is only of bytes that go on */
    w->high_first = high_leads(s, &t);
    if (t.mode != J_TEXT) return true;            /* whole: a run of one character */
    n = moe_grammar_byte_classes(g, t.g, cls);
    for (int k = 1; k <= n; k++) {
        int r = 0;
        while (cls[r] != k) r++;
        ch = (char)r;
        moe_json_copy(&c, &t);
        bool same = moe_json_feed(&c, &ch, 1) && c.mode == t.mode && moe_grammar_state_equal(c.g, t.g);
        for (int b = r; b < 128 && same; b++) w->loop[b] |= cls[b] == k;
    }
    w->high_loop = high_leads(&t, &t);
    return true;
}

/* The bytes of one UTF-8 character led by c (its lead byte). */
static uint32_t utf8_len(unsigned char c) { return c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2; }

/* Tokens that are runs (grammar_runs), allowed; the others left to the walk.  A token with bytes
 * above 127 must be whole characters (plain: moe_token_bytes). */
static int mask_runs(const struct moe_json_state *s, const struct moe_token_bytes *t, const float *logits,
                     int vocab, bool (*is_eos)(const void *ud, int id), const void *ud, float *out)
{
    struct runs w;
    if (!grammar_runs(s, &w)) return 0;
    int allowed = 0;
    for (int id = 0; id < vocab && id < t->n; id++) {
        const unsigned char *b = (const unsigned char *)t->blob + t->off[id];
        uint32_t len = t->off[id + 1] - t->off[id], i = 0;
        if (len == 0 || (is_eos && is_eos(ud, id))) continue;
        bool ok = b[0] < 0x80 ? w.first[b[0]] : w.high_first && t->plain[id];
        for (i = utf8_len(b[0]); ok && i < len; i += utf8_len(b[i]))
            ok = b[i] < 0x80 ? w.loop[b[i]] : w.high_loop && t->plain[id];
        if (!ok || i != len) continue;
        out[id] = logits[id];
        allowed++;
    }
    return allowed;
}

/* A structural tag's free text: a token is fed only when some byte of it begins a trigger (or part of
 * one is matched); the others are free text and change nothing.  The output may end here. */
static int mask_tag_free(const struct moe_json_state *s, const struct moe_token_bytes *t, const float *logits,
                         int vocab, bool (*is_eos)(const void *ud, int id), const void *ud, float *out)
{
    const struct json_tags *tg = s->tag->tags;
    static _Thread_local struct moe_json_state c;
    int allowed = 0;
    for (int id = 0; id < vocab; id++) {
        out[id] = -INFINITY;
        bool eos = is_eos && is_eos(ud, id);
        if (!eos && id >= t->n) continue;
        uint32_t len = eos ? 0 : t->off[id + 1] - t->off[id];
        if (!eos && !len) continue;
        const unsigned char *b = (const unsigned char *)t->blob + (eos ? 0 : t->off[id]);
        bool feed = s->tpos > 0;
        for (uint32_t i = 0; i < len && !feed; i++) feed = tg->first[b[i]];
        if (feed) {
            moe_json_copy(&c, s);
            if (!moe_json_feed(&c, (const char *)b, len)) continue;
        }
        out[id] = logits[id];
        allowed++;
    }
    return allowed;
}

int moe_json_mask(const struct moe_json_state *s, const struct moe_token_bytes *t, const float *logits, int vocab,
                  bool (*is_eos)(const void *ud, int id), const void *ud, float *out)
{
    if (s->mode == J_THINK) return mask_think(s, t, logits, vocab, is_eos, ud, out);
    if (s->tag && s->mode == J_TAG_FREE) return mask_tag_free(s, t, logits, vocab, is_eos, ud, out);
    int allowed = 0;
    /* inside a free string, a token of plain text continues it and changes nothing but the count of
     * characters, which a bounded string holds to its room */
    bool text = in_free_string(s), pattern = s->mode == J_STRING && !s->key && s->dfa;
    uint32_t room = text ? string_room(s) : 0;
    for (int id = 0; id < vocab; id++) {
        bool ok = text && id < t->n && t->plain[id] && t->chars[id] <= room && !(is_eos && is_eos(ud, id));
        out[id] = ok ? logits[id] : -INFINITY;
        allowed += ok;
    }
    if (pattern) allowed += mask_pattern_text(s, t, logits, vocab, is_eos, ud, out);
    text |= pattern; /* plain tokens decided: the walk below takes the others */
    int looped = s->sc->grammar && s->mode == J_TEXT ? mask_runs(s, t, logits, vocab, is_eos, ud, out) : 0;
    allowed += looped;
    /* st[k]: the state after the last token fed's first k bytes, for k <= the walk's have */
    struct moe_json_state st[MASK_DEPTH + 1], tail;
    moe_json_copy(&st[0], s);
    uint32_t k;
    int id;
    for (struct sorted_walk sw = { .t = t, .taken = looped ? out : NULL }; walk_next(&sw, text ? 0 : -1, &id, &k);) {
        const char *b = t->blob + t->off[id];
        uint32_t len = t->off[id + 1] - t->off[id];
        bool ok = true;
        for (; k < len && k < MASK_DEPTH; k++) {
            moe_json_copy(&st[k + 1], &st[k]);
            if (!moe_json_feed(&st[k + 1], b + k, 1)) {
                ok = false;
                break;
            }
        }
        walk_fed(&sw, k, ok ? 0 : k + 1);
        if (!ok) continue;
        if (len > MASK_DEPTH) { /* a long token's rest, not kept */
            moe_json_copy(&tail, &st[MASK_DEPTH]);
            if (!moe_json_feed(&tail, b + MASK_DEPTH, len - MASK_DEPTH)) continue;
        }
        /* an end-of-sequence token would end the text before the value: never one */
        if (id >= vocab || (is_eos && is_eos(ud, id))) continue;
        out[id] = logits[id];
        allowed++;
    }
    if (is_eos && moe_json_may_end(s) && !moe_json_done(s)) /* raw text that matches: it may end */
        for (int e = 0; e < vocab; e++)
            if (is_eos(ud, e) && isinf(out[e])) {
                out[e] = logits[e];
                allowed++;
            }
    return allowed;
}

void moe_json_take(struct moe_json_state *s, const struct moe_token_bytes *t, int id)
{
    if (id >= 0 && id < t->n) moe_json_feed(s, t->blob + t->off[id], t->off[id + 1] - t->off[id]);
}
