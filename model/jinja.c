/* Chat-template interpreter: the Jinja2 subset of jinja.h.
 *
 *   source ─▶ newlines normalized, one trailing newline dropped (as Jinja2)
 *          ─▶ lexer: text / {{ / {% / {# with -, + and trim/lstrip_blocks,
 *             expression tokens inside tags
 *          ─▶ recursive-descent parser (Jinja2's precedence) ─▶ AST
 *   render ─▶ tree walk over values converted from the JSON variables.
 *
 * Parse and render keep everything in arenas and leave on an error by
 * longjmp to their entry point, which frees what the arena does not hold
 * (the output buffer).  A compiled template is immutable and can be rendered
 * from several threads at once. */
#include "jinja.h"
#include "jinja_case.h"
#include "jinja_html.h"
#include "tokenizer_unicode.h"
#include "utf8.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define JJ_MAX_SRC (1u << 20)       /* template bytes */
#define JJ_MAX_DEPTH 64             /* nesting of blocks and expressions */
#define JJ_MAX_EVAL_DEPTH 1024      /* expression tree depth evaluated (a+b+...+z chains are left-deep) */
#define JJ_MAX_VALUE_DEPTH 512      /* nesting of lists and dicts that printing and comparing walk */
#define JJ_MAX_STEPS 5000000L       /* evaluation steps per render (test_jinja renders 4096 messages within it) */
#define JJ_STEP_BYTES 64            /* bytes of a string operand that cost one step */
#define JJ_MAX_ARENA (256u << 20)   /* bytes of values per render */
#define JJ_MAX_ARGS 1024            /* positional and (apart) keyword arguments of one call, * and ** included */

/* ---- arena --------------------------------------------------------------- */

struct chunk {
    struct chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

struct arena {
    struct chunk *head;
    size_t total;
};

/* Zeroed memory, NULL when out of memory or past JJ_MAX_ARENA. */
static void *arena_alloc(struct arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > (64u << 10) ? n : (64u << 10);
        if (a->total + cap > JJ_MAX_ARENA)
            return NULL;
        struct chunk *c = malloc(sizeof(*c) + cap);
        if (!c)
            return NULL;
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
        a->total += cap;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}

/* A point to release back to: what was allocated after it is freed. */
struct arena_mark {
    struct chunk *head;
    size_t used, total;
};

static struct arena_mark arena_mark(const struct arena *a)
{
    return (struct arena_mark){ a->head, a->head ? a->head->used : 0, a->total };
}

static void arena_release(struct arena *a, struct arena_mark m)
{
    while (a->head != m.head) {
        struct chunk *c = a->head;
        a->head = c->next;
        free(c);
    }
    if (a->head)
        a->head->used = m.used;
    a->total = m.total;
}

static void arena_free(struct arena *a)
{
    for (struct chunk *c = a->head, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    a->head = NULL;
    a->total = 0;
}

/* ---- values -------------------------------------------------------------- */

enum vtype { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_FUNC, V_MACRO, V_METHOD, V_OBJ };

struct str {
    size_t n;
    char p[];   /* n bytes + NUL */
};

struct val;

struct list {
    size_t n;
    struct val *v;
    bool tuple;  /* written (a, b): printed with parentheses */
    bool group;  /* a groupby() group, Python's namedtuple (grouper, list): .grouper and .list are items 0, 1 */
    bool gen;    /* made by select, reject, map, unique, reverse, batch or slice, which Jinja2 makes generators:
                    always true, no length or index, not printable; |list makes it a list */
    const int64_t *range; /* made by range() (or sliced from one): its start, stop and step, as Python's range
                             prints (range(0, 3)), slices and compares; no JSON, no + or * */
    char view;   /* 'k', 'v', 'i': a dict's keys(), values() or items(), printed as dict_keys([...]); no JSON,
                    not a sequence (no index, no slice), no + or * */
};

struct dict {
    size_t n, cap;
    const struct str **k;  /* the keys: strings, or for a key that is not one, str() of it */
    struct val *v;
    struct val *kv;        /* NULL while every key is a string; else each key as it is (a number, bool, none) */
    bool ns;    /* namespace(): attributes can be set */
    bool loop;  /* a for loop's `loop`: has cycle() and changed() */
    struct val *changed; /* loop: the arguments of its last changed() (a tuple), undefined before any */
    const struct node *rec;  /* loop of a recursive for loop: the loop, which loop(items) runs again */
    struct frame *rec_fr;    /* ... in the scope it ran in */
};

enum builtin { FN_RANGE, FN_NAMESPACE, FN_RAISE, FN_STRFTIME, FN_DICT, FN_CYCLER, FN_JOINER };

/* What Jinja2's cycler(*items) and joiner(sep) make: objects with a state that their calls change. */
struct object {
    char kind;                /* 'c' a cycler, 'j' a joiner */
    size_t pos;               /* cycler: the index of its current item */
    bool used;                /* joiner: called before, so the next call gives sep */
    const struct list *items; /* cycler: its items (a tuple) */
    struct val *sep;          /* joiner: what it gives after the first call */
};

struct node;
struct macro;
struct bound;

struct val {
    uint8_t t;  /* enum vtype */
    bool markup; /* V_STR: markupsafe's Markup (escape, safe): + and % escape the plain strings they take */
    union {
        bool b;
        int64_t i;
        double f;
        const struct str *s;   /* V_STR; V_UNDEF: the name, or NULL */
        const struct list *l;
        struct dict *d;
        int fn;                /* enum builtin */
        const struct macro *macro;
        const struct bound *bm;  /* V_METHOD: x.name of a method of x, not called */
        struct object *o;        /* V_OBJ: a cycler or a joiner */
    };
};

struct bound {
    struct val self;
    const char *name;
};

/* ---- AST ----------------------------------------------------------------- */

enum nkind {
    /* statements */
    N_BLOCK, N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_MACRO, N_BREAK, N_CONTINUE, N_WITH, N_FILTER,
    N_CALL, /* {% call %}: a = the call, b = the N_MACRO of its body (named caller) */
    /* expressions */
    E_LIT, E_VAR, E_ATTR, E_INDEX, E_SLICE, E_CALL, E_FILTER, E_TEST, E_NOT, E_NEG, E_BIN, E_AND, E_OR,
    E_COND, E_LIST, E_DICT, E_CMP,
    E_SLOT, /* the text of the filter block being filtered */
};

enum binop { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_CONCAT };
enum cmpop { C_EQ, C_NE, C_LT, C_LE, C_GT, C_GE, C_IN, C_NOTIN };

/* The names a macro's body uses that Jinja2 makes special parameters (MACRO_* bits of an N_MACRO's op). */
static const char *const SPECIAL_NAMES[] = { "caller", "varargs", "kwargs" };
enum { MACRO_CALLER = 1, MACRO_VARARGS = 2, MACRO_KWARGS = 4, MACRO_ANONYMOUS = 8 /* a call block's body */ };

struct node {
    uint8_t k;          /* enum nkind */
    uint8_t op;         /* enum binop for E_BIN; N_MACRO: MACRO_* */
    bool neg;           /* E_TEST: "is not"; N_FOR: recursive */
    int line;
    struct val lit;     /* E_LIT; N_TEXT: the text */
    const char *name;   /* E_VAR, E_ATTR, E_FILTER, E_TEST, N_SET, N_MACRO, N_FOR first target */
    const char *name2;  /* N_SET: the attribute (ns.attr); N_FOR: the second target */
    struct node *a, *b, *c, *d; /* operands; N_IF: cond, then, else; N_FOR: iter, body, else, filter;
                                   N_FILTER: the filters (on an E_SLOT), body; N_SETBLOCK: b body, c its
                                   filters (on an E_SLOT) or NULL */
    struct node **args;  /* call / filter / test arguments, list items, dict keys, block statements,
                            E_CMP operands, N_MACRO parameter defaults (NULL: none) */
    int nargs;
    const char **kwnames; /* keyword arguments; N_MACRO: parameter names; N_WITH: the names set; N_FOR, N_SET:
                             the target's names (op 1: a tuple, the value unpacked into them) */
    struct node **kwargs; /* their values; E_DICT: the values; N_WITH: the values of the names */
    int nkw;
    uint8_t *ops;        /* E_CMP: nargs - 1 comparisons */
};

/* ---- errors ---------------------------------------------------------------- */

struct fail {
    jmp_buf jb;
    enum moe_status st;
};

__attribute__((format(printf, 4, 5))) static _Noreturn void fail_at(struct fail *f, enum moe_status st, int line,
                                                                    const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (line > 0)
        moe_errorf(st, "chat template line %d: %s", line, msg);
    else
        moe_errorf(st, "chat template: %s", msg);
    f->st = st;
    longjmp(f->jb, 1);
}

/* ---- lexer ----------------------------------------------------------------- */

enum tkind {
    T_EOF, T_TEXT, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END,
    T_NAME, T_STRING, T_INT, T_FLOAT, T_OP,
};

struct token {
    uint8_t k;        /* enum tkind */
    int line;
    const char *s;    /* T_TEXT, T_NAME, T_STRING (decoded, NUL-terminated), T_OP */
    size_t n;         /* bytes of s */
    int64_t i;
    double f;
};

struct compiler {
    struct fail f;
    struct arena *arena;
    const char *src;  /* normalized source */
    size_t len;
    struct token *tok;
    size_t ntok, cap;
    size_t pos;       /* parser position in tok */
    int depth;
    size_t line_pos;  /* line_of's memo: src[0..line_pos) holds line - 1 newlines */
    int line;
    /* per macro body being parsed (innermost last), per special name: 0 not met yet, 1 read before any
     * assignment (Jinja2's find_undeclared: the macro takes it as a special parameter), 2 assigned first */
    uint8_t scan[JJ_MAX_DEPTH + 1][MOE_ARRAY_LEN(SPECIAL_NAMES)];
    int nscan;
    int loops;        /* for loop bodies around the statement being parsed, in its macro body (or the top) */
    int fors;         /* for loops (target, body, else) around the statement being parsed, macros or not */
};

/* A name read (store false) or assigned, as the macro bodies being parsed see it. */
static void note_name(struct compiler *c, const char *name, bool store)
{
    for (size_t k = 0; k < MOE_ARRAY_LEN(SPECIAL_NAMES); k++)
        if (!strcmp(name, SPECIAL_NAMES[k]))
            for (int i = 0; i < c->nscan; i++)
                if (!c->scan[i][k])
                    c->scan[i][k] = store ? 2 : 1;
}

static void *c_alloc(struct compiler *c, size_t n)
{
    void *p = arena_alloc(c->arena, n);
    if (!p)
        fail_at(&c->f, MOE_ENOMEM, 0, "out of memory");
    return p;
}

static struct token *push_tok(struct compiler *c, enum tkind k, int line)
{
    if (c->ntok == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 256;
        struct token *t = c_alloc(c, cap * sizeof(*t));
        if (c->ntok)
            memcpy(t, c->tok, c->ntok * sizeof(*t));
        c->tok = t;
        c->cap = cap;
    }
    struct token *t = &c->tok[c->ntok++];
    memset(t, 0, sizeof(*t));
    t->k = (uint8_t)k;
    t->line = line;
    return t;
}

/* Python's str.isspace(): the whitespace of Jinja2's \\s and rstrip(), between a tag's tokens and
 * what "-" and lstrip_blocks take around tags. */
static bool py_space(uint32_t cp)
{
    return cp == ' ' || (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x1f) || cp == 0x85 || cp == 0xa0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
           cp == 0x205f || cp == 0x3000;
}

/* Bytes of the whitespace character at src[i], 0 when there is none. */
static size_t space_at(const struct compiler *c, size_t i)
{
    uint32_t cp;
    size_t l = i < c->len ? moe_utf8_next((const unsigned char *)c->src + i, c->len - i, &cp) : 0;
    return l && py_space(cp) ? l : 0;
}

/* Bytes of the whitespace character that ends at src[i), not before src[a]; 0 when there is none. */
static size_t space_before(const struct compiler *c, size_t a, size_t i)
{
    size_t k = i;
    while (k > a && i - k < 4 && ((unsigned char)c->src[--k] & 0xc0) == 0x80)
        ;
    return k < i && space_at(c, k) == i - k ? i - k : 0;
}

/* Past the whitespace at src[i]. */
static size_t skip_space(const struct compiler *c, size_t i)
{
    for (size_t l; (l = space_at(c, i));)
        i += l;
    return i;
}

/* src[a..b) less the whitespace at its end: all of it, or (line) what follows its last newline. */
static size_t strip_end(const struct compiler *c, size_t a, size_t b, bool line)
{
    for (size_t l; b > a && !(line && c->src[b - 1] == '\n') && (l = space_before(c, a, b));)
        b -= l;
    return b;
}

static bool is_name_start(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}

/* Bytes of the name character at src[i], 0 for none: ASCII letters, digits and _, and beyond ASCII what
 * Jinja2's names take, Unicode letters, digits, marks and connectors. *kind: 2 one that may begin a Python
 * identifier (letters, _), 1 one that may follow (digits, marks, connectors), 0 one that Jinja2 reads into a
 * name but Python refuses there (other numbers: a² is not a name). */
static bool is_digit(char ch);
static size_t name_char(const struct compiler *c, size_t i, int *kind)
{
    unsigned char ch = (unsigned char)c->src[i];
    if (ch < 0x80) {
        *kind = is_name_start((char)ch) ? 2 : 1;
        return is_name_start((char)ch) || is_digit((char)ch);
    }
    uint32_t cp;
    size_t l = moe_utf8_next((const unsigned char *)c->src + i, c->len - i, &cp);
    uint32_t gc = l ? moe_tok_category(cp) : MOE_TOK_GC_CN;
    *kind = gc <= MOE_TOK_GC_LO || gc == MOE_TOK_GC_NL ? 2 : gc == MOE_TOK_GC_NO ? 0 : 1;
    return gc <= MOE_TOK_GC_MC || (gc >= MOE_TOK_GC_ND && gc <= MOE_TOK_GC_NO) || gc == MOE_TOK_GC_PC ? l : 0;
}

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

/* Line of offset pos (lexing moves forwards, so counting resumes where it stopped). */
static int line_of(struct compiler *c, size_t pos)
{
    if (pos < c->line_pos) {
        c->line_pos = 0;
        c->line = 1;
    }
    for (; c->line_pos < pos && c->line_pos < c->len; c->line_pos++)
        c->line += c->src[c->line_pos] == '\n';
    return c->line;
}

/* A string literal at s[*i] (the quote): its decoded bytes into the arena. */
static void lex_string(struct compiler *c, size_t *i, size_t end, struct token *t)
{
    char q = c->src[*i];
    size_t j = *i + 1;
    char *out = c_alloc(c, end - *i + 1);
    size_t n = 0;
    while (j < end && c->src[j] != q) {
        char ch = c->src[j++];
        if (ch != '\\' || j >= end) {
            out[n++] = ch;
            continue;
        }
        char e = c->src[j++];
        uint32_t cp = 0;
        int hex = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
        switch (e) {
        case 'n': out[n++] = '\n'; break;
        case 't': out[n++] = '\t'; break;
        case 'r': out[n++] = '\r'; break;
        case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7': /* octal, 1 to 3 digits */
            cp = (uint32_t)(e - '0');
            for (int k = 1; k < 3 && j < end && c->src[j] >= '0' && c->src[j] <= '7'; k++)
                cp = cp * 8 + (uint32_t)(c->src[j++] - '0');
            n += moe_utf8_put(cp, out + n);
            break;
        case 'a': out[n++] = '\a'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'v': out[n++] = '\v'; break;
        case '\\': case '\'': case '"': out[n++] = e; break;
        case '\n': break; /* line continuation */
        case 'N': /* a character by its Unicode name: Python's table of names is not here */
            fail_at(&c->f, MOE_ENOTSUP, t->line, "\\N{...} escapes are not supported: write the character itself");
        default:
            if (!hex) { /* unknown escapes stay as written, as in Python */
                out[n++] = '\\';
                out[n++] = e;
                break;
            }
            for (int k = 0; k < hex; k++, j++) {
                char h = j < end ? c->src[j] : 0;
                int v = is_digit(h) ? h - '0' : (h | 0x20) >= 'a' && (h | 0x20) <= 'f' ? (h | 0x20) - 'a' + 10 : -1;
                if (v < 0)
                    fail_at(&c->f, MOE_EFORMAT, t->line, "bad \\%c escape in a string", e);
                cp = cp * 16 + (uint32_t)v;
            }
            if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                fail_at(&c->f, MOE_EFORMAT, t->line, "\\%c escape is not a Unicode scalar value", e);
            n += moe_utf8_put(cp, out + n);
        }
    }
    if (j >= end)
        fail_at(&c->f, MOE_EFORMAT, t->line, "unterminated string");
    out[n] = 0;
    t->k = T_STRING;
    t->s = out;
    t->n = n;
    *i = j + 1;
}

static const char *const OPS2[] = { "==", "!=", "<=", ">=", "//", "**" };
static const char OPS1[] = "+-*/%~|.,:()[]{}<>=";

static bool is_op(const struct token *t, const char *op);

/* Tokens of a tag's inside, from *i up to its closing delimiter ("}}" or
 * "%}", possibly with - or + before it); *i ends after the delimiter, *strip
 * says whether it had "-" and *plus whether it had "+". */
static void lex_tag(struct compiler *c, size_t *i, const char *close, bool *strip, bool *plus)
{
    size_t end = c->len;
    int open = 0; /* brackets open: inside them "}}" closes a dict, not the tag (as Jinja2's balancing) */
    *strip = *plus = false;
    for (;;) {
        *i = skip_space(c, *i);
        if (*i >= end)
            fail_at(&c->f, MOE_EFORMAT, line_of(c, *i), "a tag is not closed by %s", close);
        const char *s = c->src + *i;
        /* "+%}" keeps trim_blocks off; before "}}" a '+' is the operator, as in Jinja2's lexer */
        if (!open && (s[0] == '-' || (s[0] == '+' && close[0] == '%')) && *i + 2 < end && s[1] == close[0] &&
            s[2] == close[1]) {
            *strip = s[0] == '-';
            *plus = s[0] == '+';
            *i += 3;
            return;
        }
        if (!open && *i + 1 < end && s[0] == close[0] && s[1] == close[1]) {
            *i += 2;
            return;
        }
        if (s[0] == '(' || s[0] == '[' || s[0] == '{')
            open++;
        else if ((s[0] == ')' || s[0] == ']' || s[0] == '}') && open > 0)
            open--;
        struct token *t = push_tok(c, T_OP, line_of(c, *i));
        int kind;
        if (s[0] == '\'' || s[0] == '"') {
            lex_string(c, i, end, t);
        } else if (!is_digit(s[0]) && name_char(c, *i, &kind)) {
            size_t j = *i;
            for (size_t k; j < end && (k = name_char(c, j, &kind)); j += k)
                if (kind < (j == *i ? 2 : 1)) /* Python's isidentifier(), which Jinja2 asks */
                    fail_at(&c->f, MOE_EFORMAT, t->line, "'%.*s' is not a name: a name begins with a letter or _ "
                            "and goes on with letters, digits and _", (int)(j + k - *i), s);
            t->k = T_NAME;
            t->s = s;
            t->n = j - *i;
            *i = j;
        } else if (is_digit(s[0])) {
            size_t j = *i;
            bool fl = false;
            /* after a '.', an index: x.0.1 is x[0][1], not x[0.1] */
            bool index = c->ntok >= 2 && is_op(&c->tok[c->ntok - 2], ".");
            while (j < end && (is_digit(c->src[j]) || c->src[j] == '_'))
                j++;
            if (!index && j + 1 < end && c->src[j] == '.' && is_digit(c->src[j + 1])) {
                fl = true;
                for (j++; j < end && (is_digit(c->src[j]) || c->src[j] == '_');)
                    j++;
            }
            if (!index && j < end && (c->src[j] == 'e' || c->src[j] == 'E')) {
                size_t k = j + 1;
                if (k < end && (c->src[k] == '+' || c->src[k] == '-'))
                    k++;
                if (k < end && is_digit(c->src[k])) {
                    fl = true;
                    for (j = k; j < end && is_digit(c->src[j]);)
                        j++;
                }
            }
            char buf[64];
            size_t n = 0;
            for (size_t k = *i; k < j && n + 1 < sizeof(buf); k++)
                if (c->src[k] != '_')
                    buf[n++] = c->src[k];
            buf[n] = 0;
            if (fl) {
                t->k = T_FLOAT;
                t->f = strtod(buf, NULL);
            } else {
                t->k = T_INT;
                errno = 0;
                long long v = strtoll(buf, NULL, 10);
                if (errno || n >= sizeof(buf) - 1)
                    fail_at(&c->f, MOE_ENOTSUP, t->line, "integer literal %s is too large", buf);
                t->i = v;
            }
            *i = j;
        } else {
            size_t k;
            for (k = 0; k < MOE_ARRAY_LEN(OPS2); k++)
                if (*i + 1 < end && !memcmp(s, OPS2[k], 2))
                    break;
            if (k < MOE_ARRAY_LEN(OPS2)) {
                t->s = OPS2[k];
                t->n = 2;
                *i += 2;
            } else if (strchr(OPS1, s[0]) && s[0]) {
                t->s = strchr(OPS1, s[0]);
                t->n = 1;
                *i += 1;
            } else {
                fail_at(&c->f, MOE_EFORMAT, t->line, "unexpected character '%.*s' in a tag",
                        (int)moe_utf8_next((const unsigned char *)s, end - *i, &(uint32_t){ 0 }), s);
            }
        }
    }
}

/* Start of the tag or comment after i: its offset, or len. */
static size_t next_tag(const struct compiler *c, size_t i)
{
    for (; i + 1 < c->len; i++)
        if (c->src[i] == '{' && (c->src[i + 1] == '{' || c->src[i + 1] == '%' || c->src[i + 1] == '#'))
            return i;
    return c->len;
}

/* Text src[a..b) as a T_TEXT token, after the whitespace rules of the tag
 * that follows it: strip all trailing whitespace ("{%-"), or with
 * lstrip_blocks the spaces and tabs between the line's start and a block or
 * comment tag. */
static void emit_text(struct compiler *c, size_t a, size_t b, bool strip, bool lstrip)
{
    if (strip) {
        b = strip_end(c, a, b, false);
    } else if (lstrip) {
        size_t k = strip_end(c, a, b, true);
        if ((k > a && c->src[k - 1] == '\n') || (k == a && (a == 0 || c->src[a - 1] == '\n')))
            b = k;
    }
    if (b > a) {
        struct token *t = push_tok(c, T_TEXT, line_of(c, a));
        t->s = c->src + a;
        t->n = b - a;
    }
}

/* The block tag at i (its "{%") holds just the word `name`: then true, with the sign after its
 * "{%" in *open and the one before its "%}" in *close ('-', '+' or 0), and *end after it. */
static bool bare_tag(const struct compiler *c, size_t i, const char *name, char *open, char *close, size_t *end)
{
    size_t j = i + 2, n = strlen(name);
    if (c->src[i + 1] != '%')
        return false;
    *open = j < c->len && (c->src[j] == '-' || c->src[j] == '+') ? c->src[j++] : 0;
    j = skip_space(c, j);
    int kind;
    if (c->len - j < n || memcmp(c->src + j, name, n) || (j + n < c->len && name_char(c, j + n, &kind)))
        return false;
    j = skip_space(c, j + n);
    *close = j < c->len && (c->src[j] == '-' || c->src[j] == '+') ? c->src[j++] : 0;
    if (c->len - j < 2 || memcmp(c->src + j, "%}", 2))
        return false;
    *end = j + 2;
    return true;
}

/* {% raw %} at i (the "{%"): whether it is one; if so its text up to {% endraw %} is emitted
 * verbatim, under the whitespace rules of the two tags as Jinja2 lexes them ("{% raw +%}" is no
 * raw tag there, and "{% endraw %}" lstrips the body's last line), and *i moves past the end tag. */
static bool lex_raw(struct compiler *c, size_t *i, size_t text_start)
{
    char open, body_open, body_close, close;
    size_t body, e;
    if (!bare_tag(c, *i, "raw", &open, &body_open, &body) || body_open == '+')
        return false;
    emit_text(c, text_start, *i, open == '-', !open);
    if (body_open == '-')
        body = skip_space(c, body);
    for (size_t k = body; (k = next_tag(c, k)) < c->len; k++) {
        if (!bare_tag(c, k, "endraw", &body_close, &close, &e))
            continue;
        emit_text(c, body, k, body_close == '-', !body_close);
        *i = e;
        if (close == '-')
            *i = skip_space(c, *i);
        else if (close != '+' && *i < c->len && c->src[*i] == '\n') /* trim_blocks, unless "+%}" */
            (*i)++;
        return true;
    }
    fail_at(&c->f, MOE_EFORMAT, line_of(c, *i), "{%% raw %%} without {%% endraw %%}");
}

static void lex(struct compiler *c)
{
    size_t i = 0, text = 0;
    for (;;) {
        size_t t = next_tag(c, i);
        if (t >= c->len) {
            emit_text(c, text, c->len, false, false);
            break;
        }
        char kind = c->src[t + 1];
        bool strip_before = t + 2 < c->len && c->src[t + 2] == '-';
        bool plus_before = t + 2 < c->len && c->src[t + 2] == '+';
        if (kind == '%' && lex_raw(c, &t, text)) {
            i = text = t;
            continue;
        }
        emit_text(c, text, t, strip_before, kind != '{' && !plus_before);
        i = t + 2 + (strip_before || plus_before);
        bool strip_after, plus_after;
        if (kind == '#') {
            size_t e = i;
            while (e + 1 < c->len && !(c->src[e] == '#' && c->src[e + 1] == '}'))
                e++;
            if (e + 1 >= c->len)
                fail_at(&c->f, MOE_EFORMAT, line_of(c, t), "a comment is not closed by #}");
            strip_after = e > i && c->src[e - 1] == '-';
            plus_after = e > i && c->src[e - 1] == '+';
            i = e + 2;
        } else {
            int line = line_of(c, t);
            push_tok(c, kind == '{' ? T_VAR_BEGIN : T_BLOCK_BEGIN, line);
            lex_tag(c, &i, kind == '{' ? "}}" : "%}", &strip_after, &plus_after);
            push_tok(c, kind == '{' ? T_VAR_END : T_BLOCK_END, line_of(c, i));
        }
        if (strip_after) {
            i = skip_space(c, i);
        } else if (kind != '{' && !plus_after && i < c->len && c->src[i] == '\n') {
            i++; /* trim_blocks */
        }
        text = i;
    }
    push_tok(c, T_EOF, line_of(c, c->len));
}

/* ---- parser ---------------------------------------------------------------- */

static struct token *peek(struct compiler *c)
{
    return &c->tok[c->pos];
}

static struct token *next(struct compiler *c)
{
    struct token *t = &c->tok[c->pos];
    if (t->k != T_EOF)
        c->pos++;
    return t;
}

static bool is_op(const struct token *t, const char *op)
{
    return t->k == T_OP && t->n == strlen(op) && !memcmp(t->s, op, t->n);
}

static bool is_name(const struct token *t, const char *name)
{
    return t->k == T_NAME && t->n == strlen(name) && !memcmp(t->s, name, t->n);
}

static bool accept_op(struct compiler *c, const char *op)
{
    if (!is_op(peek(c), op))
        return false;
    next(c);
    return true;
}

static bool accept_name(struct compiler *c, const char *name)
{
    if (!is_name(peek(c), name))
        return false;
    next(c);
    return true;
}

static const char *describe(const struct token *t, char *buf, size_t cap)
{
    switch (t->k) {
    case T_EOF: return "the end of the template";
    case T_TEXT: return "text";
    case T_VAR_END: return "'}}'";
    case T_BLOCK_END: return "'%}'";
    case T_VAR_BEGIN: return "'{{'";
    case T_BLOCK_BEGIN: return "'{%'";
    case T_INT: snprintf(buf, cap, "the number %lld", (long long)t->i); return buf;
    case T_FLOAT: snprintf(buf, cap, "the number %g", t->f); return buf;
    default: snprintf(buf, cap, "'%.*s'", (int)(t->n < 40 ? t->n : 40), t->s ? t->s : "?"); return buf;
    }
}

static _Noreturn void expected(struct compiler *c, const char *what)
{
    char buf[64];
    struct token *t = peek(c);
    fail_at(&c->f, MOE_EFORMAT, t->line, "expected %s, found %s", what, describe(t, buf, sizeof(buf)));
}

static void expect_op(struct compiler *c, const char *op)
{
    if (!accept_op(c, op)) {
        char w[16];
        snprintf(w, sizeof(w), "'%s'", op);
        expected(c, w);
    }
}

static const char *expect_name(struct compiler *c)
{
    struct token *t = peek(c);
    if (t->k != T_NAME)
        expected(c, "a name");
    next(c);
    char *s = c_alloc(c, t->n + 1);
    memcpy(s, t->s, t->n);
    return s;
}

static struct node *new_node(struct compiler *c, enum nkind k, int line)
{
    struct node *n = c_alloc(c, sizeof(*n));
    n->k = (uint8_t)k;
    n->line = line;
    return n;
}

/* v (n of *cap slots of elem bytes in use) with room for one more: copied
 * into a twice larger arena block when full. */
static void *arena_grow(struct compiler *c, void *v, int n, int *cap, size_t elem)
{
    if (n < *cap)
        return v;
    int grown = *cap ? 2 * *cap : 8;
    void *w = c_alloc(c, (size_t)grown * elem);
    if (n)
        memcpy(w, v, (size_t)n * elem);
    *cap = grown;
    return w;
}

/* Growable arrays in the arena: node pointers, and names (keyword arguments,
 * macro parameters). */
struct nodes {
    struct node **v;
    int n, cap;
};

struct names {
    const char **v;
    int n, cap;
};

static void nodes_push(struct compiler *c, struct nodes *a, struct node *x)
{
    a->v = arena_grow(c, a->v, a->n, &a->cap, sizeof(*a->v));
    a->v[a->n++] = x;
}

static void names_push(struct compiler *c, struct names *a, const char *name)
{
    a->v = arena_grow(c, (void *)a->v, a->n, &a->cap, sizeof(*a->v));
    a->v[a->n++] = name;
}

/* In a comma-separated list closed by `close` (its opener read), `done`
 * items in: whether another item follows (a trailing comma is allowed). */
static bool list_more(struct compiler *c, const char *close, int done)
{
    if (accept_op(c, close))
        return false;
    if (done)
        expect_op(c, ",");
    return !accept_op(c, close);
}

static struct node *parse_expr(struct compiler *c, bool with_cond);
static struct node *parse_unary(struct compiler *c, bool with_filter);

static void enter(struct compiler *c)
{
    if (++c->depth > JJ_MAX_DEPTH)
        fail_at(&c->f, MOE_ENOTSUP, peek(c)->line, "nested deeper than %d", JJ_MAX_DEPTH);
}

/* (args, name=value, ...) after the '(' */
static void parse_call_args(struct compiler *c, struct node *n)
{
    struct nodes args = { 0 }, kw = { 0 };
    struct names names = { 0 };
    while (list_more(c, ")", args.n + kw.n + !!n->c + !!n->d)) {
        int line = peek(c)->line;
        if (is_op(peek(c), "*") || is_op(peek(c), "**")) { /* *iterable, then **mapping: one each, as Jinja2 */
            bool two = next(c)->n == 2;
            if (n->d || (!two && n->c))
                fail_at(&c->f, MOE_EFORMAT, line, "invalid syntax for function call expression: %s",
                        two ? "a second **argument" : n->d ? "a *argument after the **argument" : "a second *argument");
            *(two ? &n->d : &n->c) = parse_expr(c, true);
        } else if (peek(c)->k == T_NAME && is_op(&c->tok[c->pos + 1], "=")) {
            if (n->d)
                fail_at(&c->f, MOE_EFORMAT, line, "a keyword argument after a **argument");
            const char *name = expect_name(c);
            for (int i = 0; i < names.n; i++)
                if (!strcmp(names.v[i], name)) /* Python's syntax error, at compile time in Jinja2 */
                    fail_at(&c->f, MOE_EFORMAT, line, "keyword argument '%s' repeated", name);
            next(c);
            nodes_push(c, &kw, parse_expr(c, true));
            names_push(c, &names, name);
        } else {
            if (kw.n || n->c || n->d)
                fail_at(&c->f, MOE_EFORMAT, line, "a positional argument after a %s%sargument",
                        kw.n ? "keyword" : n->d ? "**" : "*", kw.n ? " " : "");
            nodes_push(c, &args, parse_expr(c, true));
        }
    }
    n->args = args.v;
    n->nargs = args.n;
    n->kwargs = kw.v;
    n->kwnames = names.v;
    n->nkw = kw.n;
}

static struct node *literal(struct compiler *c, int line, struct val v)
{
    struct node *n = new_node(c, E_LIT, line);
    n->lit = v;
    return n;
}

static struct str *c_str(struct compiler *c, const char *s, size_t n)
{
    struct str *r = c_alloc(c, sizeof(*r) + n + 1);
    r->n = n;
    memcpy(r->p, s, n);
    return r;
}

static struct node *parse_primary(struct compiler *c)
{
    struct token *t = peek(c);
    int line = t->line;
    if (t->k == T_STRING) { /* adjacent strings join */
        size_t n = 0, p0 = c->pos;
        while (peek(c)->k == T_STRING)
            n += next(c)->n;
        struct str *s = c_alloc(c, sizeof(*s) + n + 1);
        for (size_t k = p0; k < c->pos; k++) {
            memcpy(s->p + s->n, c->tok[k].s, c->tok[k].n);
            s->n += c->tok[k].n;
        }
        return literal(c, line, (struct val){ .t = V_STR, .s = s });
    }
    if (t->k == T_INT) {
        next(c);
        return literal(c, line, (struct val){ .t = V_INT, .i = t->i });
    }
    if (t->k == T_FLOAT) {
        next(c);
        return literal(c, line, (struct val){ .t = V_FLOAT, .f = t->f });
    }
    if (t->k == T_NAME) {
        if (is_name(t, "true") || is_name(t, "True") || is_name(t, "false") || is_name(t, "False")) {
            next(c);
            return literal(c, line, (struct val){ .t = V_BOOL, .b = t->s[0] == 't' || t->s[0] == 'T' });
        }
        if (is_name(t, "none") || is_name(t, "None")) {
            next(c);
            return literal(c, line, (struct val){ .t = V_NONE });
        }
        struct node *n = new_node(c, E_VAR, line);
        n->name = expect_name(c);
        note_name(c, n->name, false);
        return n;
    }
    if (accept_op(c, "(")) { /* parenthesized expression or tuple (a list here) */
        enter(c);
        if (accept_op(c, ")")) {
            c->depth--;
            struct node *n = new_node(c, E_LIST, line);
            n->op = 1;
            return n;
        }
        struct node *first = parse_expr(c, true);
        if (accept_op(c, ")")) {
            c->depth--;
            return first;
        }
        struct nodes items = { 0 };
        nodes_push(c, &items, first);
        while (accept_op(c, ",")) {
            if (is_op(peek(c), ")"))
                break;
            nodes_push(c, &items, parse_expr(c, true));
        }
        expect_op(c, ")");
        c->depth--;
        struct node *n = new_node(c, E_LIST, line);
        n->op = 1; /* a tuple */
        n->args = items.v;
        n->nargs = items.n;
        return n;
    }
    if (accept_op(c, "[")) {
        enter(c);
        struct nodes items = { 0 };
        while (list_more(c, "]", items.n))
            nodes_push(c, &items, parse_expr(c, true));
        c->depth--;
        struct node *n = new_node(c, E_LIST, line);
        n->args = items.v;
        n->nargs = items.n;
        return n;
    }
    if (accept_op(c, "{")) {
        enter(c);
        struct nodes keys = { 0 }, vals = { 0 };
        while (list_more(c, "}", keys.n)) {
            nodes_push(c, &keys, parse_expr(c, true));
            expect_op(c, ":");
            nodes_push(c, &vals, parse_expr(c, true));
        }
        c->depth--;
        struct node *n = new_node(c, E_DICT, line);
        n->args = keys.v;
        n->kwargs = vals.v;
        n->nargs = keys.n;
        return n;
    }
    expected(c, "an expression");
}

/* One item between a subscript's brackets: an expression (false, in parts[0]) or a slice's start, stop and
 * step, each NULL where left out (true). */
static bool parse_subscribed(struct compiler *c, struct node *parts[3])
{
    parts[0] = parts[1] = parts[2] = NULL;
    if (!is_op(peek(c), ":")) {
        parts[0] = parse_expr(c, true);
        if (!is_op(peek(c), ":"))
            return false;
    }
    for (int k = 1; k < 3 && accept_op(c, ":"); k++)
        if (!is_op(peek(c), ":") && !is_op(peek(c), "]") && !is_op(peek(c), ","))
            parts[k] = parse_expr(c, true);
    return true;
}

static struct node *parse_postfix(struct compiler *c, struct node *n)
{
    for (;;) {
        int line = peek(c)->line;
        if (accept_op(c, ".")) {
            struct token *t = peek(c);
            struct node *m = new_node(c, E_ATTR, line);
            m->a = n;
            if (t->k == T_INT) { /* x.0 is x[0] */
                next(c);
                m->k = E_INDEX;
                m->b = literal(c, line, (struct val){ .t = V_INT, .i = t->i });
            } else {
                m->name = expect_name(c);
                m->lit = (struct val){ .t = V_STR, .s = c_str(c, m->name, strlen(m->name)) }; /* the key, made once */
            }
            n = m;
        } else if (accept_op(c, "[")) { /* x[k], x[a:b:c], and x[a, b] or x[] of a tuple key, as Jinja2 parses them */
            enter(c);
            struct nodes items = { 0 };
            struct node *parts[3];
            bool slice = false;
            while (!is_op(peek(c), "]")) {
                if (items.n)
                    expect_op(c, ",");
                if (slice || (items.n && parse_subscribed(c, parts)))
                    fail_at(&c->f, MOE_EFORMAT, line, "a slice cannot be part of a tuple key");
                slice = !items.n && parse_subscribed(c, parts);
                nodes_push(c, &items, parts[0]);
            }
            next(c);
            c->depth--;
            struct node *m = new_node(c, slice ? E_SLICE : E_INDEX, line);
            m->a = n;
            if (slice) {
                m->b = parts[0];
                m->c = parts[1];
                m->d = parts[2];
            } else if (items.n == 1) {
                m->b = items.v[0];
            } else {
                m->b = new_node(c, E_LIST, line);
                m->b->op = 1; /* a tuple */
                m->b->args = items.v;
                m->b->nargs = items.n;
            }
            n = m;
        } else if (accept_op(c, "(")) {
            enter(c);
            struct node *m = new_node(c, E_CALL, line);
            m->a = n;
            parse_call_args(c, m);
            c->depth--;
            n = m;
        } else {
            return n;
        }
    }
}

/* Python's signatures of the filters, tests, methods and functions, beyond the value they apply to: the
 * parameters in order, space-separated, "name!" one that must be given, "/name" one taken by position only;
 * "*" takes anything (it checks its own). */
struct sig {
    const char *name, *params;
};
static const struct sig FILTER_SIGS[] = {
    { "abs", "" }, { "attr", "name!" }, { "batch", "linecount! fill_with" }, { "capitalize", "" },
    { "center", "width" }, { "count", "" }, { "d", "default_value boolean" }, { "default", "default_value boolean" },
    { "dictsort", "case_sensitive by reverse" }, { "e", "" }, { "escape", "" }, { "first", "" }, { "float", "default" },
    { "forceescape", "" }, { "format", "*" }, { "groupby", "attribute! default case_sensitive" },
    { "indent", "width first blank" }, { "int", "default base" }, { "items", "" }, { "join", "d attribute" },
    { "last", "" }, { "length", "" }, { "list", "" }, { "lower", "" }, { "map", "*" },
    { "max", "case_sensitive attribute" }, { "min", "case_sensitive attribute" }, { "pprint", "" }, { "reject", "*" },
    { "rejectattr", "*" }, { "replace", "old! new! count" }, { "reverse", "" }, { "round", "precision method" },
    { "safe", "" }, { "select", "*" }, { "selectattr", "*" }, { "slice", "slices! fill_with" },
    { "sort", "reverse case_sensitive attribute" },
    { "string", "" }, { "striptags", "" }, { "sum", "attribute start" }, { "title", "" },
    { "tojson", "ensure_ascii indent separators sort_keys" }, { "trim", "chars" },
    { "truncate", "length killwords end leeway" }, { "unique", "case_sensitive attribute" }, { "upper", "" },
    { "urlencode", "" }, { "wordcount", "" }, { "xmlattr", "autospace" }, { "wordwrap", "width break_long_words wrapstring break_on_hyphens" },
};

/* The parameters sigs (n of them) give name, or NULL when it has none there. */
static const char *sig_params(const struct sig *sigs, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(sigs[i].name, name))
            return sigs[i].params;
    return NULL;
}
static const char *const TESTS[] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false", "filter", "float",
    "ge", "greaterthan", "gt", "in", "integer", "iterable", "le", "lessthan", "lower", "lt", "mapping", "ne", "none",
    "number", "odd", "sameas", "sequence", "string", "test", "true", "undefined", "upper",
};
/* The names Jinja2's environment (as the Hugging Face library sets it up) holds, which the tests filter
 * and test look a name up in: those this subset does not run too. */
static const char *const JINJA2_FILTERS[] = {
    "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape",
    "filesizeformat", "first", "float", "forceescape", "format", "groupby", "indent", "int", "items", "join", "last",
    "length", "list", "lower", "map", "max", "min", "pprint", "random", "reject", "rejectattr", "replace", "reverse",
    "round", "safe", "select", "selectattr", "slice", "sort", "string", "striptags", "sum", "title", "tojson", "trim",
    "truncate", "unique", "upper", "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr",
};
static const char *const JINJA2_TESTS[] = {
    "!=", "<", "<=", "==", ">", ">=", "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped",
    "even", "false", "filter", "float", "ge", "greaterthan", "gt", "in", "integer", "iterable", "le", "lessthan",
    "lower", "lt", "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string", "test", "true",
    "undefined", "upper",
};

static bool in_list(const char *const *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(list[i], name))
            return true;
    return false;
}

/* Why a filter of Jinja2's is left out, for its message ("" where it is just not done). */
static const char *unsupported_why(const char *name)
{
    return !strcmp(name, "random") ? ": it picks an item at random, and a chat template renders the same prompt "
                                     "from the same conversation every time" : "";
}

/* The filter name[(args)] after a '|', applied to n. */
static struct node *parse_filter(struct compiler *c, struct node *n, int line)
{
    struct node *m = new_node(c, E_FILTER, line);
    m->name = expect_name(c);
    if (!sig_params(FILTER_SIGS, MOE_ARRAY_LEN(FILTER_SIGS), m->name))
        fail_at(&c->f, MOE_ENOTSUP, line, "filter '%s' is not supported%s", m->name, unsupported_why(m->name));
    m->a = n;
    if (accept_op(c, "(")) {
        enter(c);
        parse_call_args(c, m);
        c->depth--;
    }
    return m;
}

/* Filters (| name(args)) and tests (is [not] name args) after a unary expression. */
static struct node *parse_filter_expr(struct compiler *c, struct node *n)
{
    for (;;) {
        int line = peek(c)->line;
        if (accept_op(c, "|")) {
            n = parse_filter(c, n, line);
        } else if (accept_name(c, "is")) {
            struct node *m = new_node(c, E_TEST, line);
            m->neg = accept_name(c, "not");
            m->name = expect_name(c);
            if (!in_list(TESTS, MOE_ARRAY_LEN(TESTS), m->name))
                fail_at(&c->f, MOE_ENOTSUP, line, "test '%s' is not supported", m->name);
            m->a = n;
            struct token *t = peek(c);
            if (accept_op(c, "(")) {
                enter(c);
                parse_call_args(c, m);
                c->depth--;
            } else if ((t->k == T_STRING || t->k == T_INT || t->k == T_FLOAT ||
                        (t->k == T_NAME && !is_name(t, "and") && !is_name(t, "or") && !is_name(t, "else"))) ||
                       is_op(t, "[") || is_op(t, "{")) {
                /* as Jinja2 reads it: any other name is the argument ('x is none if c' is the test none(if)) */
                if (is_name(t, "is"))
                    fail_at(&c->f, MOE_EFORMAT, line, "tests cannot be chained with 'is'");
                struct node *arg = parse_postfix(c, parse_primary(c));
                m->args = c_alloc(c, sizeof(*m->args));
                m->args[0] = arg;
                m->nargs = 1;
            }
            n = m;
        } else {
            return n;
        }
    }
}

static struct node *parse_unary(struct compiler *c, bool with_filter)
{
    enter(c);
    int line = peek(c)->line;
    struct node *n;
    if (accept_op(c, "-")) {
        n = new_node(c, E_NEG, line);
        n->a = parse_unary(c, false);
    } else if (accept_op(c, "+")) {
        n = new_node(c, E_NEG, line);
        n->op = 1; /* +x: a number, as it is */
        n->a = parse_unary(c, false);
    } else {
        n = parse_postfix(c, parse_primary(c));
    }
    if (with_filter)
        n = parse_filter_expr(c, n);
    c->depth--;
    return n;
}

static struct node *binary(struct compiler *c, enum binop op, struct node *a, struct node *b, int line)
{
    struct node *n = new_node(c, E_BIN, line);
    n->op = (uint8_t)op;
    n->a = a;
    n->b = b;
    return n;
}

/* Whether Jinja2 folds e to a constant when it compiles (literals and operators on them). */
static bool const_expr(const struct node *e)
{
    switch (e->k) {
    case E_LIT: return true;
    case E_NEG: case E_NOT: return const_expr(e->a);
    case E_BIN: return const_expr(e->a) && const_expr(e->b);
    case E_LIST:
        for (int i = 0; i < e->nargs; i++)
            if (!const_expr(e->args[i]))
                return false;
        return true;
    default: return false;
    }
}

static struct node *parse_pow(struct compiler *c)
{
    struct node *n = parse_unary(c, true);
    while (is_op(peek(c), "**")) {
        int line = next(c)->line;
        struct node *b = parse_unary(c, true);
        const struct node *lit = n->k == E_NEG && !n->op ? n->a : NULL;
        if (lit && lit->k == E_LIT && !const_expr(b) &&
            ((lit->lit.t == V_INT && lit->lit.i > 0) || (lit->lit.t == V_BOOL && lit->lit.b) ||
             (lit->lit.t == V_FLOAT && !isnan(lit->lit.f)))) {
            /* Jinja2 writes the folded -1 of -1 ** x into Python as is, where ** binds first: -(1 ** x) */
            struct node *neg = n;
            neg->a = binary(c, OP_POW, n->a, b, line);
            n = neg;
        } else {
            n = binary(c, OP_POW, n, b, line);
        }
    }
    return n;
}

static struct node *parse_math2(struct compiler *c)
{
    struct node *n = parse_pow(c);
    for (;;) {
        struct token *t = peek(c);
        enum binop op = is_op(t, "*") ? OP_MUL : is_op(t, "/") ? OP_DIV : is_op(t, "//") ? OP_FLOORDIV
                      : is_op(t, "%") ? OP_MOD : OP_CONCAT;
        if (op == OP_CONCAT)
            return n;
        next(c);
        n = binary(c, op, n, parse_pow(c), t->line);
    }
}

static struct node *parse_concat(struct compiler *c)
{
    struct node *n = parse_math2(c);
    while (is_op(peek(c), "~")) {
        int line = next(c)->line;
        n = binary(c, OP_CONCAT, n, parse_math2(c), line);
    }
    return n;
}

static struct node *parse_math1(struct compiler *c)
{
    struct node *n = parse_concat(c);
    for (;;) {
        struct token *t = peek(c);
        if (!is_op(t, "+") && !is_op(t, "-"))
            return n;
        next(c);
        n = binary(c, is_op(t, "+") ? OP_ADD : OP_SUB, n, parse_concat(c), t->line);
    }
}

static struct node *parse_compare(struct compiler *c)
{
    struct node *first = parse_math1(c);
    struct nodes operands = { 0 };
    uint8_t ops[64];
    int nops = 0;
    int line = peek(c)->line;
    for (;;) {
        struct token *t = peek(c);
        int op = -1;
        if (is_op(t, "==")) op = C_EQ;
        else if (is_op(t, "!=")) op = C_NE;
        else if (is_op(t, "<")) op = C_LT;
        else if (is_op(t, "<=")) op = C_LE;
        else if (is_op(t, ">")) op = C_GT;
        else if (is_op(t, ">=")) op = C_GE;
        else if (is_name(t, "in")) op = C_IN;
        else if (is_name(t, "not") && is_name(&c->tok[c->pos + 1], "in")) op = C_NOTIN;
        if (op < 0)
            break;
        next(c);
        if (op == C_NOTIN)
            next(c);
        if (nops == (int)sizeof(ops))
            fail_at(&c->f, MOE_ENOTSUP, t->line, "more than %zu chained comparisons", sizeof(ops));
        if (!operands.n)
            nodes_push(c, &operands, first);
        ops[nops++] = (uint8_t)op;
        nodes_push(c, &operands, parse_math1(c));
    }
    if (!nops)
        return first;
    struct node *n = new_node(c, E_CMP, line);
    n->args = operands.v;
    n->nargs = operands.n;
    n->ops = c_alloc(c, (size_t)nops);
    memcpy(n->ops, ops, (size_t)nops);
    return n;
}

static struct node *parse_not(struct compiler *c)
{
    int line = peek(c)->line;
    if (is_name(peek(c), "not")) {
        next(c);
        enter(c);
        struct node *n = new_node(c, E_NOT, line);
        n->a = parse_not(c);
        c->depth--;
        return n;
    }
    return parse_compare(c);
}

/* operand (word operand)*, left-deep nodes of kind k */
static struct node *parse_chain(struct compiler *c, const char *word, enum nkind k,
                                struct node *(*operand)(struct compiler *))
{
    struct node *n = operand(c);
    while (is_name(peek(c), word)) {
        struct node *m = new_node(c, k, next(c)->line);
        m->a = n;
        m->b = operand(c);
        n = m;
    }
    return n;
}

static struct node *parse_and(struct compiler *c)
{
    return parse_chain(c, "and", E_AND, parse_not);
}

static struct node *parse_or(struct compiler *c)
{
    return parse_chain(c, "or", E_OR, parse_and);
}

/* An expression; with_cond: "a if b else c" allowed (not in a for's iterable). */
static struct node *parse_expr(struct compiler *c, bool with_cond)
{
    enter(c);
    struct node *n = parse_or(c);
    while (with_cond && is_name(peek(c), "if")) {
        struct node *m = new_node(c, E_COND, next(c)->line);
        m->a = parse_or(c);
        m->b = n;
        m->c = accept_name(c, "else") ? parse_expr(c, true) : NULL;
        n = m;
    }
    c->depth--;
    return n;
}

/* ---- statements ---- */

static void expect_block_end(struct compiler *c)
{
    if (peek(c)->k != T_BLOCK_END)
        expected(c, "'%}'");
    next(c);
}

/* Statements up to a {% name %} among ends (returned, its name consumed). */
static struct node *parse_body(struct compiler *c, const char *const *ends, int nends, const char **which);

/* Statements up to {% end %}, consumed with its %}. */
static struct node *parse_until(struct compiler *c, const char *end)
{
    const char *const ends[] = { end };
    const char *which;
    struct node *body = parse_body(c, ends, 1, &which);
    expect_block_end(c);
    return body;
}

/* After a body that ended at {% else %} or at end: the else body, through end. */
static struct node *parse_else(struct compiler *c, const char *which, const char *end)
{
    expect_block_end(c);
    return strcmp(which, "else") ? NULL : parse_until(c, end);
}

/* if / elif ... / else / endif: an elif is an N_IF in its predecessor's else
 * slot, built in a loop (a template may chain thousands of them). */
static struct node *parse_if(struct compiler *c, int line)
{
    static const char *const ends[] = { "elif", "else", "endif" };
    struct node *first = NULL, *prev = NULL;
    for (;;) {
        struct node *n = new_node(c, N_IF, line);
        n->a = parse_expr(c, true);
        expect_block_end(c);
        const char *which;
        n->b = parse_body(c, ends, 3, &which);
        if (prev)
            prev->c = n;
        else
            first = n;
        prev = n;
        if (strcmp(which, "elif")) {
            n->c = parse_else(c, which, "endif");
            return first;
        }
        line = peek(c)->line;
    }
}

/* An expression, or a tuple of several without parentheses (1, 2): what Jinja2's parse_tuple reads in
 * {{ }}, a set's value and a for loop's iterable. */
static struct node *parse_tuple(struct compiler *c, bool with_cond)
{
    int line = peek(c)->line;
    struct node *first = parse_expr(c, with_cond);
    if (!is_op(peek(c), ","))
        return first;
    struct nodes items = { 0 };
    nodes_push(c, &items, first);
    while (accept_op(c, ",")) {
        struct token *t = peek(c);
        if (t->k == T_VAR_END || t->k == T_BLOCK_END || is_op(t, ")") || is_name(t, "recursive"))
            break;
        nodes_push(c, &items, parse_expr(c, with_cond));
    }
    struct node *n = new_node(c, E_LIST, line);
    n->op = 1; /* a tuple */
    n->args = items.v;
    n->nargs = items.n;
    return n;
}

/* A for loop's or set's target: a name, or names separated by commas (in parentheses or not), which
 * the value is unpacked into (n->op 1). */
static void parse_targets(struct compiler *c, struct node *n)
{
    struct names names = { 0 };
    bool paren = accept_op(c, "(");
    for (;;) {
        if (is_op(peek(c), "("))
            fail_at(&c->f, MOE_ENOTSUP, n->line, "nested tuples of names are not supported");
        names_push(c, &names, expect_name(c));
        note_name(c, names.v[names.n - 1], true);
        if (c->fors && !strcmp(names.v[names.n - 1], "loop")) /* Jinja2's compile error, anywhere in a for */
            fail_at(&c->f, MOE_EFORMAT, n->line, "cannot assign to 'loop' in a for loop: it is the loop's variable");
        if (!accept_op(c, ","))
            break;
        n->op = 1;
        if (paren && is_op(peek(c), ")"))
            break; /* (a,): a tuple of one */
    }
    if (paren) {
        expect_op(c, ")");
        n->op = 1;
    }
    n->name = names.v[0];
    n->kwnames = names.v;
    n->nkw = names.n;
}

static struct node *parse_for(struct compiler *c, int line)
{
    struct node *n = new_node(c, N_FOR, line);
    c->fors++;
    parse_targets(c, n);
    if (!accept_name(c, "in"))
        expected(c, "'in'");
    n->a = parse_tuple(c, false);
    if (accept_name(c, "if"))
        n->d = parse_expr(c, false);
    n->neg = accept_name(c, "recursive");
    expect_block_end(c);
    static const char *const ends[] = { "else", "endfor" };
    const char *which;
    c->loops++;
    n->b = parse_body(c, ends, 2, &which);
    c->loops--;
    n->c = parse_else(c, which, "endfor");
    c->fors--;
    return n;
}

/* name[(args)] [| name[(args)]] ... after a block's '|': the filters on an E_SLOT, the block's text. */
static struct node *parse_filter_chain(struct compiler *c, int line)
{
    struct node *n = parse_filter(c, new_node(c, E_SLOT, line), line);
    while (accept_op(c, "|"))
        n = parse_filter(c, n, line);
    return n;
}

static struct node *parse_set(struct compiler *c, int line)
{
    struct node *n = new_node(c, N_SET, line);
    if (peek(c)->k == T_NAME && is_op(&c->tok[c->pos + 1], ".")) { /* ns.attr */
        n->name = expect_name(c);
        next(c);
        n->name2 = expect_name(c);
    } else {
        parse_targets(c, n);
    }
    if (accept_op(c, "=")) {
        n->a = parse_tuple(c, true);
        expect_block_end(c);
        return n;
    }
    if (n->op)
        fail_at(&c->f, MOE_ENOTSUP, line, "a set block of several names is not supported");
    if (accept_op(c, "|")) /* {% set x | filters %}: the body's text through them, as a filter block's */
        n->c = parse_filter_chain(c, line);
    expect_block_end(c);
    n->k = N_SETBLOCK;
    n->b = parse_until(c, "endset");
    return n;
}

/* A macro's (or call block's) parameters after the '(', and its body up to {% end %}: an N_MACRO. */
static struct node *parse_macro_rest(struct compiler *c, struct node *n, bool params, const char *end)
{
    struct nodes defs = { 0 };
    struct names names = { 0 };
    /* as Jinja2's signatures: names once each, no trailing comma, the defaults last */
    while (params && !accept_op(c, ")")) {
        if (names.n)
            expect_op(c, ",");
        int line = peek(c)->line;
        const char *name = expect_name(c);
        for (int i = 0; i < names.n; i++)
            if (!strcmp(names.v[i], name))
                fail_at(&c->f, MOE_EFORMAT, line, "parameter '%s' repeated", name);
        names_push(c, &names, name);
        note_name(c, name, true);
        nodes_push(c, &defs, accept_op(c, "=") ? parse_expr(c, true) : NULL);
        if (!defs.v[defs.n - 1] && defs.n > 1 && defs.v[defs.n - 2])
            fail_at(&c->f, MOE_EFORMAT, line, "parameter '%s' without a default follows one with a default", name);
    }
    n->kwnames = names.v;
    n->args = defs.v;
    n->nargs = names.n;
    if (n->k == N_CALL) { /* {% call(params) the_call(args) %} */
        struct node *call = parse_expr(c, true);
        if (call->k != E_CALL)
            fail_at(&c->f, MOE_EFORMAT, n->line, "{%% call %%} needs a call, as {%% call m(args) %%}");
        for (int i = 0; i < call->nkw; i++)
            if (!strcmp(call->kwnames[i], "caller"))
                fail_at(&c->f, MOE_EFORMAT, n->line, "keyword argument 'caller' repeated: the {%% call %%} block "
                        "passes its body as caller");
        struct node *body = new_node(c, N_MACRO, n->line);
        body->name = "caller";
        body->op = MACRO_ANONYMOUS;
        body->kwnames = n->kwnames;
        body->args = n->args;
        body->nargs = n->nargs;
        n->a = call;
        n->b = body;
        n = body;
    }
    expect_block_end(c);
    if (c->nscan > JJ_MAX_DEPTH)
        fail_at(&c->f, MOE_ENOTSUP, n->line, "macros nested deeper than %d", JJ_MAX_DEPTH);
    memset(c->scan[c->nscan++], 0, sizeof(c->scan[0]));
    int loops = c->loops; /* a macro's body is a function of its own: no loop around it to break */
    c->loops = 0;
    n->b = parse_until(c, end);
    c->loops = loops;
    c->nscan--;
    for (size_t k = 0; k < MOE_ARRAY_LEN(SPECIAL_NAMES); k++) {
        int param = -1; /* a parameter of that name is an ordinary one */
        for (int i = 0; i < n->nargs; i++)
            if (!strcmp(n->kwnames[i], SPECIAL_NAMES[k]))
                param = i;
        if (c->scan[c->nscan][k] == 1 && param < 0)
            n->op |= (uint8_t)(1u << k);
        if (c->scan[c->nscan][k] == 1 && k == 0 && param >= 0 && !n->args[param])
            fail_at(&c->f, MOE_EFORMAT, n->line, "a macro's parameter 'caller' that its body uses needs a default "
                    "(or leave it out: caller() is then the {%% call %%} block's body)");
    }
    return n;
}

static struct node *parse_macro(struct compiler *c, int line)
{
    struct node *n = new_node(c, N_MACRO, line);
    n->name = expect_name(c);
    expect_op(c, "(");
    return parse_macro_rest(c, n, true, "endmacro");
}

/* {% call[(params)] m(args) %} body {% endcall %}: m called with caller=, a macro of the body. */
static struct node *parse_call_block(struct compiler *c, int line)
{
    struct node *n = new_node(c, N_CALL, line);
    parse_macro_rest(c, n, accept_op(c, "("), "endcall");
    return n;
}

/* {% with [name = expr, ...] %}: the names set for the body only, each value evaluated outside. */
static struct node *parse_with(struct compiler *c, int line)
{
    struct node *n = new_node(c, N_WITH, line);
    struct nodes vals = { 0 };
    struct names names = { 0 };
    while (peek(c)->k != T_BLOCK_END) {
        if (names.n)
            expect_op(c, ",");
        names_push(c, &names, expect_name(c));
        note_name(c, names.v[names.n - 1], true);
        if (is_op(peek(c), ","))
            fail_at(&c->f, MOE_ENOTSUP, line, "setting several names at once is not supported");
        expect_op(c, "=");
        nodes_push(c, &vals, parse_expr(c, true));
    }
    n->kwnames = names.v;
    n->kwargs = vals.v;
    n->nkw = names.n;
    expect_block_end(c);
    n->b = parse_until(c, "endwith");
    return n;
}

/* {% filter name[(args)] [| name[(args)]] ... %}: the body's text through the filters. */
static struct node *parse_filter_block(struct compiler *c, int line)
{
    struct node *n = new_node(c, N_FILTER, line);
    n->a = parse_filter_chain(c, line);
    expect_block_end(c);
    n->b = parse_until(c, "endfilter");
    return n;
}

static struct node *parse_statement(struct compiler *c)
{
    int line = peek(c)->line;
    struct token *t = peek(c);
    if (t->k != T_NAME)
        expected(c, "a statement name");
    static const struct {
        const char *name;
        struct node *(*parse)(struct compiler *c, int line);
    } blocks[] = {
        { "if", parse_if }, { "for", parse_for }, { "set", parse_set }, { "macro", parse_macro },
        { "with", parse_with }, { "filter", parse_filter_block }, { "call", parse_call_block },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(blocks); i++)
        if (accept_name(c, blocks[i].name))
            return blocks[i].parse(c, line);
    if (accept_name(c, "break") || accept_name(c, "continue")) {
        if (!c->loops) /* Python's syntax error in Jinja2 (a macro's or call block's body counts no outer loop) */
            fail_at(&c->f, MOE_EFORMAT, line, "'%s' outside a for loop", t->s[0] == 'b' ? "break" : "continue");
        struct node *n = new_node(c, t->s[0] == 'b' ? N_BREAK : N_CONTINUE, line);
        expect_block_end(c);
        return n;
    }
    if (accept_name(c, "generation")) { /* the assistant-mask marker of apply_chat_template: its body, which */
        expect_block_end(c);          /* the Hugging Face library makes a call block's: a scope, no loop around */
        struct node *n = new_node(c, N_WITH, line);
        int loops = c->loops;
        c->loops = 0;
        n->b = parse_until(c, "endgeneration");
        c->loops = loops;
        return n;
    }
    fail_at(&c->f, MOE_ENOTSUP, line, "statement '%.*s' is not supported", (int)(t->n < 40 ? t->n : 40), t->s);
}

static struct node *parse_body(struct compiler *c, const char *const *ends, int nends, const char **which)
{
    enter(c);
    struct node *blk = new_node(c, N_BLOCK, peek(c)->line);
    struct nodes stmts = { 0 };
    for (;;) {
        struct token *t = peek(c);
        if (t->k == T_EOF) {
            if (!nends)
                break;
            fail_at(&c->f, MOE_EFORMAT, t->line, "missing {%% %s %%}", ends[nends - 1]);
        }
        if (t->k == T_TEXT) {
            next(c);
            struct node *n = new_node(c, N_TEXT, t->line);
            n->lit = (struct val){ .t = V_STR, .s = c_str(c, t->s, t->n) };
            nodes_push(c, &stmts, n);
        } else if (t->k == T_VAR_BEGIN) {
            next(c);
            struct node *n = new_node(c, N_OUT, t->line);
            n->a = parse_tuple(c, true);
            if (peek(c)->k != T_VAR_END)
                expected(c, "'}}'");
            next(c);
            nodes_push(c, &stmts, n);
        } else if (t->k == T_BLOCK_BEGIN) {
            next(c);
            for (int e = 0; e < nends; e++)
                if (is_name(peek(c), ends[e])) {
                    next(c);
                    *which = ends[e];
                    goto done;
                }
            static const char *const closers[] = { "endif", "endfor", "else", "elif", "endset", "endmacro",
                                                   "endgeneration", "endraw", "endwith", "endfilter", "endcall" };
            struct token *s = peek(c);
            for (size_t e = 0; e < MOE_ARRAY_LEN(closers); e++)
                if (is_name(s, closers[e]))
                    fail_at(&c->f, MOE_EFORMAT, s->line, "unexpected {%% %.*s %%}", (int)s->n, s->s);
            nodes_push(c, &stmts, parse_statement(c));
        } else {
            char buf[64];
            fail_at(&c->f, MOE_EFORMAT, t->line, "unexpected %s", describe(t, buf, sizeof(buf)));
        }
    }
done:
    blk->args = stmts.v;
    blk->nargs = stmts.n;
    c->depth--;
    return blk;
}

/* ---- scopes ------------------------------------------------------------------ */

/* Jinja2 decides when it compiles what a name holds where a scope (the template, a for loop's body or
 * else, a macro's or call block's body, a with, filter or set block) starts: a name the scope assigns
 * whose first mention in it (outside its if blocks, which make no scope) is that assignment, and that no
 * scope around mentions, starts undefined, hiding a variable of the render of that name; any other
 * name is looked up outwards, as moeflow's frames do.  scope_scan lists the first kind on the body's
 * N_BLOCK (kwnames), which binds them to undefined as it starts. */
struct scope {
    const struct scope *up;
    const char **seen;  /* open addressing: the names the scope mentions (assigns, reads, takes) */
    size_t n, cap;      /* names held, slots (a power of two, or 0) */
    struct names undef; /* the names that start undefined, in order */
};

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* Whether the scope mentions name; add adds it (true: it was new). */
static bool scope_seen(struct compiler *c, struct scope *sc, const char *name, bool add)
{
    if (add && 2 * (sc->n + 1) > sc->cap) {
        size_t cap = sc->cap ? 2 * sc->cap : 16;
        const char **v = c_alloc(c, cap * sizeof(*v));
        memset(v, 0, cap * sizeof(*v));
        for (size_t i = 0; i < sc->cap; i++)
            if (sc->seen[i]) {
                size_t j = name_hash(sc->seen[i]) & (cap - 1);
                while (v[j]) j = (j + 1) & (cap - 1);
                v[j] = sc->seen[i];
            }
        sc->seen = v;
        sc->cap = cap;
    }
    if (!sc->cap)
        return false;
    size_t j = name_hash(name) & (sc->cap - 1);
    for (; sc->seen[j]; j = (j + 1) & (sc->cap - 1))
        if (!strcmp(sc->seen[j], name))
            return add ? false : true;
    if (add) {
        sc->seen[j] = name;
        sc->n++;
    }
    return add;
}

/* A name mentioned: read, taken as a parameter, or assigned (store) outside an if block (top). */
static void scope_note(struct compiler *c, struct scope *sc, const char *name, bool store, bool top)
{
    if (!scope_seen(c, sc, name, true) || !store || !top)
        return;
    for (const struct scope *up = sc->up; up; up = up->up)
        if (scope_seen(c, (struct scope *)up, name, false))
            return;
    names_push(c, &sc->undef, name);
}

static void scope_expr(struct compiler *c, struct scope *sc, const struct node *e)
{
    if (!e)
        return;
    if (e->k == E_VAR)
        scope_note(c, sc, e->name, false, false);
    const struct node *kids[] = { e->a, e->b, e->c, e->d };
    for (size_t i = 0; i < MOE_ARRAY_LEN(kids); i++) scope_expr(c, sc, kids[i]);
    for (int i = 0; i < e->nargs; i++) scope_expr(c, sc, e->args[i]);
    for (int i = 0; i < (e->k == E_DICT ? e->nargs : e->nkw); i++) /* an E_DICT's values, else named arguments */
        scope_expr(c, sc, e->kwargs[i]);
}

static void scope_scan(struct compiler *c, const struct scope *up, const struct node *owner, struct node *body,
                       const struct node *after);

/* The statements of one scope, in order: what they mention in it (pass 0), then the scopes they hold
 * (pass 1, once the scope's names are all known). */
static void scope_stmts(struct compiler *c, struct scope *sc, const struct node *n, bool top, int pass)
{
    switch (n->k) {
    case N_BLOCK:
        for (int i = 0; i < n->nargs; i++) scope_stmts(c, sc, n->args[i], top, pass);
        break;
    case N_OUT:
        if (!pass)
            scope_expr(c, sc, n->a);
        break;
    case N_IF:
        if (!pass)
            scope_expr(c, sc, n->a);
        scope_stmts(c, sc, n->b, false, pass);
        if (n->c)
            scope_stmts(c, sc, n->c, false, pass);
        break;
    case N_FOR:
        if (!pass) {
            scope_expr(c, sc, n->a);
            break;
        }
        scope_scan(c, sc, n, n->b, NULL);
        if (n->c)
            scope_scan(c, sc, n, n->c, NULL);
        break;
    case N_SET:
    case N_SETBLOCK:
        if (pass) {
            if (n->k == N_SETBLOCK)
                scope_scan(c, sc, NULL, n->b, n->c);
            break;
        }
        if (n->k == N_SET)
            scope_expr(c, sc, n->a);
        if (n->name2)
            scope_note(c, sc, n->name, false, top);
        else if (n->k == N_SETBLOCK)
            scope_note(c, sc, n->name, true, top);
        else
            for (int i = 0; i < n->nkw; i++) scope_note(c, sc, n->kwnames[i], true, top);
        break;
    case N_MACRO:
        if (pass)
            scope_scan(c, sc, n, n->b, NULL);
        else
            scope_note(c, sc, n->name, true, top);
        break;
    case N_CALL:
        if (pass)
            scope_scan(c, sc, n->b, n->b->b, NULL);
        else
            scope_expr(c, sc, n->a);
        break;
    case N_WITH:
        if (pass)
            scope_scan(c, sc, n, n->b, NULL);
        else
            for (int i = 0; i < n->nkw; i++) scope_expr(c, sc, n->kwargs[i]);
        break;
    case N_FILTER:
        if (pass)
            scope_scan(c, sc, NULL, n->b, n->a);
        else
            scope_expr(c, sc, n->a);
        break;
    default:
        break;
    }
}

/* One scope, body, made by owner: a for loop's body takes its targets and loop, a with block's body its
 * names, a macro's or call block's body (owner the N_MACRO) its parameters and the special names it
 * reads, its defaults read in it; after: what the scope reads after its body (a filter block's filters). */
static void scope_scan(struct compiler *c, const struct scope *up, const struct node *owner, struct node *body,
                       const struct node *after)
{
    struct scope sc = { .up = up };
    if (owner && (owner->k == N_WITH || (owner->k == N_FOR && body == owner->b)))
        for (int i = 0; i < owner->nkw; i++) scope_note(c, &sc, owner->kwnames[i], false, false);
    if (owner && owner->k == N_FOR && body == owner->b)
        scope_note(c, &sc, "loop", false, false);
    if (owner && owner->k == N_MACRO) {
        for (int i = 0; i < owner->nargs; i++) scope_note(c, &sc, owner->kwnames[i], false, false);
        for (size_t k = 0; k < MOE_ARRAY_LEN(SPECIAL_NAMES); k++)
            if (owner->op & (1u << k))
                scope_note(c, &sc, SPECIAL_NAMES[k], false, false);
        for (int i = 0; i < owner->nargs; i++) scope_expr(c, &sc, owner->args[i]);
    }
    scope_stmts(c, &sc, body, true, 0);
    scope_expr(c, &sc, after);
    body->kwnames = sc.undef.v;
    body->nkw = sc.undef.n;
    scope_stmts(c, &sc, body, true, 1);
}

struct moe_jinja {
    struct arena arena;
    struct node *root;
};

/* Jinja2's newline handling of the source (3.0 on): \r\n and \r become \n, and one trailing
 * newline goes; the other line separators of Python's splitlines (\v, \f, U+0085, U+2028, ...)
 * are characters like any other. */
static char *normalize_source(struct compiler *c, const char *src, size_t len, size_t *out_len)
{
    char *o = c_alloc(c, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        if (src[i] == '\r') {
            o[n++] = '\n';
            i += i + 1 < len && src[i + 1] == '\n' ? 2 : 1;
        } else {
            o[n++] = src[i++];
        }
    }
    if (n && o[n - 1] == '\n')
        n--;
    o[n] = 0;
    *out_len = n;
    return o;
}

struct moe_jinja *moe_jinja_compile(const char *src, size_t len)
{
    if (!src && len) {
        moe_errorf(MOE_EINVAL, "chat template: no text given");
        return NULL;
    }
    if (len > JJ_MAX_SRC) {
        moe_errorf(MOE_ERANGE, "chat template: %zu bytes, more than the %u supported", len, JJ_MAX_SRC);
        return NULL;
    }
    if (!moe_utf8_valid(src, len)) {
        moe_errorf(MOE_EFORMAT, "chat template: not valid UTF-8");
        return NULL;
    }
    struct moe_jinja *t = calloc(1, sizeof(*t));
    if (!t) {
        moe_errorf(MOE_ENOMEM, "chat template: out of memory");
        return NULL;
    }
    struct compiler c = { .arena = &t->arena, .line = 1 };
    if (setjmp(c.f.jb)) {
        moe_jinja_free(t);
        return NULL;
    }
    c.src = normalize_source(&c, src ? src : "", len, &c.len);
    lex(&c);
    t->root = parse_body(&c, NULL, 0, NULL);
    scope_scan(&c, NULL, NULL, t->root, NULL);
    return t;
}

void moe_jinja_free(struct moe_jinja *t)
{
    if (!t)
        return;
    arena_free(&t->arena);
    free(t);
}

/* ---- render: context ------------------------------------------------------------- */

struct frame {
    struct frame *up;
    struct dict vars;
    const struct node *ended; /* the for loop or set block whose scope this was, once that scope has ended */
};

/* A macro value: its definition and the scope it was defined in, which its body sees as Jinja2's
 * closures do: by reference (a name set there after the definition is seen as set), and for as long
 * as the macro can be called. */
struct macro {
    const struct node *n;
    struct frame *env;
};

struct render {
    struct fail f;
    struct arena arena;
    char *heap_out;      /* the output buffer (malloc'd, freed on failure) */
    long escapes;        /* namespace writes and arena buffer growth: values that outlive a loop iteration */
    long steps;
    int depth;
    int edepth;          /* eval recursion */
    int vdepth;          /* nesting of the value being printed or compared */
    int flow;            /* 1 break, 2 continue, while unwinding a loop body */
    struct val slot;     /* the text of the filter block whose filters are being evaluated */
    struct frame *root;  /* the template's variables */
    struct frame *cur;   /* the innermost scope of the statement being run */
    const struct macro *macro; /* the macro whose body or defaults are being run, NULL outside macros */
};

static void *r_alloc(struct render *r, size_t n)
{
    void *p = arena_alloc(&r->arena, n);
    if (!p)
        fail_at(&r->f, MOE_ERANGE, 0, "rendering needs more than %u MiB of memory", JJ_MAX_ARENA >> 20);
    return p;
}

static void step(struct render *r, int line)
{
    if (++r->steps > JJ_MAX_STEPS)
        fail_at(&r->f, MOE_ERANGE, line, "rendering takes more than %ld steps", JJ_MAX_STEPS);
}

/* n bytes of a string read through (compared): a step per JJ_STEP_BYTES of them, so that work
 * on long strings inside lists and dicts is bounded as work on a string operand is (see eval). */
static void step_bytes(struct render *r, size_t n, int line)
{
    if (n >= JJ_STEP_BYTES) {
        r->steps += (long)(n / JJ_STEP_BYTES);
        step(r, line);
    }
}

struct buf {
    char *p;
    size_t n, cap;
    bool heap;  /* grown with realloc (the render's output), else in the arena */
};

static void buf_add(struct render *r, struct buf *b, const char *s, size_t n)
{
    /* on every add: a buffer grown past the limit (by the add that brought it to exactly the limit,
     * its NUL needing one byte more) would otherwise take adds up to its capacity unchecked */
    if (b->n + n > MOE_JINJA_MAX_OUTPUT)
        fail_at(&r->f, MOE_ERANGE, 0, "output longer than %u bytes", MOE_JINJA_MAX_OUTPUT);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p;
        if (b->heap) {
            p = realloc(b->p, cap);
            if (!p)
                fail_at(&r->f, MOE_ENOMEM, 0, "out of memory for %zu bytes of output", cap);
            r->heap_out = p;
        } else {
            p = r_alloc(r, cap);
            if (b->n)
                memcpy(p, b->p, b->n);
            r->escapes++;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void buf_adds(struct render *r, struct buf *b, const char *s)
{
    buf_add(r, b, s, strlen(s));
}

/* n bytes ch (a space or '0'). */
static void buf_fill(struct render *r, struct buf *b, char ch, size_t n)
{
    char run[32];
    memset(run, ch, sizeof(run));
    for (size_t k; n; n -= k)
        buf_add(r, b, run, k = n < sizeof(run) ? n : sizeof(run));
}

__attribute__((format(printf, 3, 4))) static void buf_addf(struct render *r, struct buf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    buf_add(r, b, tmp, (size_t)(n < (int)sizeof(tmp) ? n : (int)sizeof(tmp) - 1));
}

static const struct str *r_str(struct render *r, const char *s, size_t n)
{
    struct str *o = r_alloc(r, sizeof(*o) + n + 1);
    o->n = n;
    memcpy(o->p, s, n);
    return o;
}

static struct val vstr(struct render *r, const char *s, size_t n)
{
    return (struct val){ .t = V_STR, .s = r_str(r, s, n) };
}

static struct val vbuf(struct render *r, const struct buf *b)
{
    return vstr(r, b->p ? b->p : "", b->n);
}

static struct val vbool(bool b)
{
    return (struct val){ .t = V_BOOL, .b = b };
}

static struct val vint(int64_t i)
{
    return (struct val){ .t = V_INT, .i = i };
}

static struct val vundef(const struct str *name)
{
    return (struct val){ .t = V_UNDEF, .s = name };
}

static struct list *new_list(struct render *r, size_t n)
{
    struct list *l = r_alloc(r, sizeof(*l));
    l->n = n;
    l->v = n ? r_alloc(r, n * sizeof(*l->v)) : NULL;
    return l;
}

/* range(start, stop, step) of its cnt items. */
static struct val new_range(struct render *r, int64_t start, int64_t stop, int64_t stepv, int64_t cnt)
{
    struct list *l = new_list(r, (size_t)cnt);
    for (int64_t k = 0; k < cnt; k++) /* each between start and stop; k * stepv alone may be past int64_t */
        l->v[k] = vint((int64_t)((uint64_t)start + (uint64_t)k * (uint64_t)stepv));
    int64_t *rg = r_alloc(r, 3 * sizeof(*rg));
    rg[0] = start;
    rg[1] = stop;
    rg[2] = stepv;
    l->range = rg;
    return (struct val){ .t = V_LIST, .l = l };
}

static struct dict *new_dict(struct render *r)
{
    return r_alloc(r, sizeof(struct dict));
}

/* Whether key i of d is a string (not a number, bool or none). */
static bool key_is_str(const struct dict *d, size_t i)
{
    return !d->kv || d->kv[i].t == V_STR;
}

/* Key i of d as the value it is. */
static struct val dict_key(const struct dict *d, size_t i)
{
    return key_is_str(d, i) ? (struct val){ .t = V_STR, .s = d->k[i] } : d->kv[i];
}

/* The value of d's string key k (n bytes), NULL when it has none; *read (when given) counts the bytes compared. */
static const struct val *dict_get_read(const struct dict *d, const char *k, size_t n, size_t *read)
{
    for (size_t i = 0; i < d->n; i++) {
        if (d->k[i]->n != n || !key_is_str(d, i))
            continue;
        if (read)
            *read += n;
        if (!memcmp(d->k[i]->p, k, n))
            return &d->v[i];
    }
    return NULL;
}

static const struct val *dict_get(const struct dict *d, const char *k, size_t n)
{
    return dict_get_read(d, k, n, NULL);
}

/* Two keys that are not strings, as Python's dict finds them: none, or numbers equal (1, 1.0 and true). */
static bool same_key(const struct val *a, const struct val *b);

/* The value of d's key *key (a string, number, bool or none), NULL when d has none; the bytes of the keys
 * compared cost steps as a string operand's do. */
static const struct val *dict_find(struct render *r, const struct dict *d, const struct val *key, int line)
{
    if (key->t == V_STR) {
        size_t read = 0;
        const struct val *v = dict_get_read(d, key->s->p, key->s->n, &read);
        step_bytes(r, read, line);
        return v;
    }
    for (size_t i = 0; d->kv && i < d->n; i++)
        if (d->kv[i].t != V_STR && same_key(&d->kv[i], key))
            return &d->v[i];
    return NULL;
}

/* A new last entry k (kv: the key's value, NULL for the string k) = v. */
static void dict_append(struct render *r, struct dict *d, const struct str *k, const struct val *kv, struct val v)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 8;
        const struct str **kk = r_alloc(r, cap * sizeof(*kk));
        struct val *vv = r_alloc(r, cap * sizeof(*vv)), *kvs = d->kv ? r_alloc(r, cap * sizeof(*kvs)) : NULL;
        if (d->n) {
            memcpy(kk, d->k, d->n * sizeof(*kk));
            memcpy(vv, d->v, d->n * sizeof(*vv));
            if (kvs)
                memcpy(kvs, d->kv, d->n * sizeof(*kvs));
        }
        d->k = kk;
        d->v = vv;
        d->kv = kvs;
        d->cap = cap;
    }
    if (kv && !d->kv) { /* the first key that is not a string: the others as the strings they are */
        d->kv = r_alloc(r, d->cap * sizeof(*d->kv));
        for (size_t i = 0; i < d->n; i++) d->kv[i] = (struct val){ .t = V_STR, .s = d->k[i] };
    }
    if (d->kv)
        d->kv[d->n] = kv ? *kv : (struct val){ .t = V_STR, .s = k };
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

static void dict_set(struct render *r, struct dict *d, const struct str *k, struct val v)
{
    size_t read = 0;
    struct val *old = (struct val *)dict_get_read(d, k->p, k->n, &read);
    step_bytes(r, read, 0);
    if (old)
        *old = v;
    else
        dict_append(r, d, k, NULL, v);
}

static void dict_sets(struct render *r, struct dict *d, const char *k, struct val v)
{
    dict_set(r, d, r_str(r, k, strlen(k)), v);
}


static struct val from_json(struct render *r, json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        struct dict *d = new_dict(r);
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) dict_set(r, d, r_str(r, k, strlen(k)), from_json(r, v));
        return (struct val){ .t = V_DICT, .d = d };
    }
    case JSON_ARRAY: {
        struct list *l = new_list(r, json_array_size(j));
        for (size_t i = 0; i < l->n; i++) l->v[i] = from_json(r, json_array_get(j, i));
        return (struct val){ .t = V_LIST, .l = l };
    }
    case JSON_STRING: return vstr(r, json_string_value(j), json_string_length(j));
    case JSON_INTEGER: return vint(json_integer_value(j));
    case JSON_REAL: return (struct val){ .t = V_FLOAT, .f = json_real_value(j) };
    case JSON_TRUE: return vbool(true);
    case JSON_FALSE: return vbool(false);
    default: return (struct val){ .t = V_NONE };
    }
}

/* ---- render: Python semantics of values ------------------------------------------ */

static const char *type_name(const struct val *v)
{
    static const char *const names[] = { "undefined", "none", "bool", "int", "float", "string", "list", "dict",
                                         "function", "macro", "method", "object" };
    if (v->t == V_OBJ)
        return v->o->kind == 'c' ? "cycler" : "joiner";
    if (v->t == V_DICT && (v->d->ns || v->d->loop))
        return v->d->ns ? "namespace" : "loop";
    if (v->t == V_LIST && (v->l->range || v->l->tuple))
        return v->l->range ? "range" : "tuple";
    return names[v->t];
}

/* The article of a type_name: "an int", "a list". */
static const char *article(const char *name)
{
    return strchr("aeiou", name[0]) ? "an" : "a";
}

static bool truthy(const struct val *v)
{
    switch (v->t) {
    case V_BOOL: return v->b;
    case V_INT: return v->i != 0;
    case V_FLOAT: return v->f != 0;
    case V_STR: return v->s->n > 0;
    case V_LIST: return v->l->gen || v->l->n > 0;
    case V_DICT: return v->d->ns || v->d->n > 0;
    case V_FUNC: case V_MACRO: case V_METHOD: case V_OBJ: return true;
    default: return false;
    }
}

static bool is_num(const struct val *v)
{
    return v->t == V_INT || v->t == V_FLOAT || v->t == V_BOOL;
}

static double num(const struct val *v)
{
    return v->t == V_FLOAT ? v->f : v->t == V_INT ? (double)v->i : v->b;
}

static int64_t inum(const struct val *v)
{
    return v->t == V_INT ? v->i : v->b;
}

/* One more level of a nested value walked by printing or comparing (a
 * template can nest a list in itself in a loop): bounded. */
static void value_enter(struct render *r, int line)
{
    if (++r->vdepth > JJ_MAX_VALUE_DEPTH)
        fail_at(&r->f, MOE_ERANGE, line, "a value nested deeper than %d lists or dicts", JJ_MAX_VALUE_DEPTH);
}

/* Two numbers ordered exactly, as Python orders an int and a float (not through a double): -1, 0, 1, or 2
 * where one is nan. */
static int num_order(const struct val *a, const struct val *b)
{
    if (a->t != V_FLOAT && b->t != V_FLOAT)
        return inum(a) < inum(b) ? -1 : inum(a) > inum(b);
    long double x = a->t == V_FLOAT ? a->f : (long double)inum(a), y = b->t == V_FLOAT ? b->f : (long double)inum(b);
    return x < y ? -1 : x > y ? 1 : x == y ? 0 : 2;
}

static bool same_key(const struct val *a, const struct val *b)
{
    if (a->t == V_NONE || b->t == V_NONE)
        return a->t == b->t;
    return is_num(a) && is_num(b) && num_order(a, b) == 0;
}

static bool hashable(struct render *r, const struct val *v, int line);
static void to_str(struct render *r, struct buf *b, const struct val *v, int line);

/* d[key] = v for a key that is a string, a number, a bool or none: an equal key (1, 1.0 and true are one) keeps
 * its first form, as in Python. */
static void dict_set_key(struct render *r, struct dict *d, const struct val *key, struct val v, int line)
{
    if (key->t == V_STR) {
        dict_set(r, d, key->s, v);
        return;
    }
    if (!is_num(key) && key->t != V_NONE) {
        if (!hashable(r, key, line))
            fail_at(&r->f, MOE_EINVAL, line, "%s %s cannot be a dict key (a list or dict)", article(type_name(key)),
                    type_name(key));
        fail_at(&r->f, MOE_ENOTSUP, line, "dict keys must be strings, numbers, booleans or none here, not %s",
                type_name(key));
    }
    for (size_t i = 0; d->kv && i < d->n; i++)
        if (d->kv[i].t != V_STR && same_key(&d->kv[i], key)) {
            d->v[i] = v;
            return;
        }
    struct buf b = { 0 };
    buf_add(r, &b, "", 0);
    to_str(r, &b, key, line);
    dict_append(r, d, r_str(r, b.p, b.n), key, v);
}

static bool equal(struct render *r, const struct val *a, const struct val *b);

static bool equal_rec(struct render *r, const struct val *a, const struct val *b)
{
    if (is_num(a) && is_num(b))
        return num_order(a, b) == 0;
    if (a->t != b->t)
        return false;
    switch (a->t) {
    case V_UNDEF: case V_NONE: return true;
    case V_STR:
        if (a->s->n != b->s->n)
            return false;
        step_bytes(r, a->s->n, 0);
        return !memcmp(a->s->p, b->s->p, a->s->n);
    case V_LIST:
        if (a->l->gen || b->l->gen)
            return a->l == b->l;
        if (a->l->n != b->l->n || a->l->tuple != b->l->tuple || !a->l->range != !b->l->range ||
            a->l->view != b->l->view || (a->l->view == 'v' && a->l != b->l))
            return false; /* values() views equal only themselves */
        if (a->l->view) { /* keys() and items() views compare as sets */
            for (size_t i = 0; i < a->l->n; i++) {
                bool found = false;
                for (size_t j = 0; j < b->l->n && !found; j++) found = equal(r, &a->l->v[i], &b->l->v[j]);
                if (!found)
                    return false;
            }
            return true;
        }
        for (size_t i = 0; i < a->l->n; i++)
            if (!equal(r, &a->l->v[i], &b->l->v[i]))
                return false;
        return true;
    case V_DICT:
        if (a->d->ns || b->d->ns)
            return a->d == b->d;
        if (a->d->n != b->d->n)
            return false;
        for (size_t i = 0; i < a->d->n; i++) {
            struct val k = dict_key(a->d, i);
            const struct val *o = dict_find(r, b->d, &k, 0);
            if (!o || !equal(r, &a->d->v[i], o))
                return false;
        }
        return true;
    case V_FUNC: return a->fn == b->fn;
    case V_METHOD: return !strcmp(a->bm->name, b->bm->name) && equal(r, &a->bm->self, &b->bm->self);
    case V_MACRO: return a->macro == b->macro;
    case V_OBJ: return a->o == b->o;
    default: return false;
    }
}

static bool equal(struct render *r, const struct val *a, const struct val *b)
{
    step(r, 0); /* each pair of items compared inside lists and dicts counts */
    value_enter(r, 0);
    bool e = equal_rec(r, a, b);
    r->vdepth--;
    return e;
}

/* a < b for numbers and strings (bytes of UTF-8 order as code points). */
static int compare(struct render *r, const struct val *a, const struct val *b, int line);

static int compare_rec(struct render *r, const struct val *a, const struct val *b, int line)
{
    if (is_num(a) && is_num(b)) {
        int c = num_order(a, b);
        return c == 2 ? 0 : c;
    }
    if (a->t == V_STR && b->t == V_STR) {
        size_t n = a->s->n < b->s->n ? a->s->n : b->s->n;
        step_bytes(r, n, line);
        int c = memcmp(a->s->p, b->s->p, n);
        return c ? (c < 0 ? -1 : 1) : (a->s->n < b->s->n ? -1 : a->s->n > b->s->n);
    }
    if (a->t == V_LIST && b->t == V_LIST && !a->l->range && !b->l->range && a->l->tuple == b->l->tuple) {
        for (size_t i = 0; i < a->l->n && i < b->l->n; i++) {
            if (equal(r, &a->l->v[i], &b->l->v[i]))
                continue;
            return compare(r, &a->l->v[i], &b->l->v[i], line);
        }
        return a->l->n < b->l->n ? -1 : a->l->n > b->l->n;
    }
    fail_at(&r->f, MOE_EINVAL, line, "cannot order %s and %s", type_name(a), type_name(b));
}

static int compare(struct render *r, const struct val *a, const struct val *b, int line)
{
    step(r, line);
    value_enter(r, line);
    int c = compare_rec(r, a, b, line);
    r->vdepth--;
    return c;
}

static void repr(struct render *r, struct buf *b, const struct val *v, int line);

/* Python's repr() of a float: the shortest digits that read back, in its
 * notation (1.0, 0.1, 1e+20, 1.5e-07, inf, nan). */
static void float_repr(struct render *r, struct buf *b, double f)
{
    if (isnan(f)) {
        buf_adds(r, b, "nan");
        return;
    }
    if (isinf(f)) {
        buf_adds(r, b, f < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[64];
    int p;
    for (p = 1; p < 17; p++) {
        snprintf(tmp, sizeof(tmp), "%.*e", p - 1, f);
        if (strtod(tmp, NULL) == f)
            break;
    }
    snprintf(tmp, sizeof(tmp), "%.*e", p - 1, f);
    /* tmp: [-]d[.ddd]e[+-]XX */
    char digits[32];
    int nd = 0;
    bool neg = tmp[0] == '-';
    const char *s = tmp + neg;
    for (; *s && *s != 'e'; s++)
        if (*s != '.')
            digits[nd++] = *s;
    int exp10 = atoi(s + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    if (neg)
        buf_adds(r, b, "-");
    if (exp10 < -4 || exp10 >= 16) {
        buf_add(r, b, digits, 1);
        if (nd > 1) {
            buf_adds(r, b, ".");
            buf_add(r, b, digits + 1, (size_t)nd - 1);
        }
        buf_addf(r, b, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    } else if (exp10 < 0) {
        buf_adds(r, b, "0.");
        for (int k = 0; k < -exp10 - 1; k++)
            buf_adds(r, b, "0");
        buf_add(r, b, digits, (size_t)nd);
    } else {
        for (int k = 0; k <= exp10; k++)
            buf_add(r, b, k < nd ? digits + k : "0", 1);
        buf_adds(r, b, ".");
        if (nd > exp10 + 1)
            buf_add(r, b, digits + exp10 + 1, (size_t)(nd - exp10 - 1));
        else
            buf_adds(r, b, "0");
    }
}

/* A code point Python's repr() writes escaped: not isprintable(), of the categories C* and Z* but the space. */
static bool py_unprintable(uint32_t cp)
{
    return cp != ' ' && moe_tok_category(cp) >= MOE_TOK_GC_ZS;
}

/* cp as Python's repr() and ascii() escape it: \xhh, \uhhhh or \Uhhhhhhhh. */
static void py_escape_cp(struct render *r, struct buf *b, uint32_t cp)
{
    buf_addf(r, b, cp < 0x100 ? "\\x%02x" : cp < 0x10000 ? "\\u%04x" : "\\U%08x", cp);
}

/* The code point at s[i] and its length; a byte that starts no valid UTF-8
 * sequence stands for itself, length 1. */
static size_t str_cp(const struct str *s, size_t i, uint32_t *cp)
{
    size_t l = moe_utf8_next((const unsigned char *)s->p + i, s->n - i, cp);
    if (!l) {
        *cp = (unsigned char)s->p[i];
        l = 1;
    }
    return l;
}

static void str_repr(struct render *r, struct buf *b, const struct str *s)
{
    bool sq = memchr(s->p, '\'', s->n) != NULL, dq = memchr(s->p, '"', s->n) != NULL;
    char q = sq && !dq ? '"' : '\'';
    buf_add(r, b, &q, 1);
    for (size_t i = 0; i < s->n;) {
        uint32_t cp;
        size_t l = str_cp(s, i, &cp);
        if (cp == '\\' || cp == (uint32_t)q) {
            buf_adds(r, b, "\\");
            buf_add(r, b, s->p + i, 1);
        } else if (cp == '\n') {
            buf_adds(r, b, "\\n");
        } else if (cp == '\r') {
            buf_adds(r, b, "\\r");
        } else if (cp == '\t') {
            buf_adds(r, b, "\\t");
        } else if (py_unprintable(cp)) {
            py_escape_cp(r, b, cp);
        } else {
            buf_add(r, b, s->p + i, l);
        }
        i += l;
    }
    buf_add(r, b, &q, 1);
}

/* Python's str() of a value, as {{ }} prints it. */
static void to_str(struct render *r, struct buf *b, const struct val *v, int line)
{
    switch (v->t) {
    case V_UNDEF: break;
    case V_STR: buf_add(r, b, v->s->p, v->s->n); break;
    default: repr(r, b, v, line); break;
    }
}

static void repr(struct render *r, struct buf *b, const struct val *v, int line)
{
    step(r, line);
    value_enter(r, line);
    switch (v->t) {
    case V_UNDEF: buf_adds(r, b, "Undefined"); break; /* inside a printed container, as Python's repr */
    case V_NONE: buf_adds(r, b, "None"); break;
    case V_BOOL: buf_adds(r, b, v->b ? "True" : "False"); break;
    case V_INT: buf_addf(r, b, "%lld", (long long)v->i); break;
    case V_FLOAT: float_repr(r, b, v->f); break;
    case V_STR:
        buf_adds(r, b, v->markup ? "Markup(" : "");
        str_repr(r, b, v->s);
        buf_adds(r, b, v->markup ? ")" : "");
        break;
    case V_LIST:
        if (v->l->gen)
            fail_at(&r->f, MOE_EINVAL, line, "printing a generator (select, map, unique, reverse, batch, slice): "
                    "apply |list or |join first");
        if (v->l->range) {
            const int64_t *rg = v->l->range;
            buf_addf(r, b, "range(%lld, %lld", (long long)rg[0], (long long)rg[1]);
            buf_adds(r, b, rg[2] == 1 ? ")" : "");
            if (rg[2] != 1)
                buf_addf(r, b, ", %lld)", (long long)rg[2]);
            break;
        }
        if (v->l->view)
            buf_adds(r, b, v->l->view == 'k' ? "dict_keys(" : v->l->view == 'v' ? "dict_values(" : "dict_items(");
        buf_adds(r, b, v->l->tuple ? "(" : "[");
        for (size_t i = 0; i < v->l->n; i++) {
            if (i)
                buf_adds(r, b, ", ");
            repr(r, b, &v->l->v[i], line);
        }
        buf_adds(r, b, v->l->tuple ? (v->l->n == 1 ? ",)" : ")") : "]");
        buf_adds(r, b, v->l->view ? ")" : "");
        break;
    case V_DICT:
        if (v->d->loop) { /* Jinja2's LoopContext prints its position */
            const struct val *i = dict_get(v->d, "index", 5), *n = dict_get(v->d, "length", 6);
            buf_addf(r, b, "<LoopContext %lld/%lld>", (long long)(i ? i->i : 0), (long long)(n ? n->i : 0));
            break;
        }
        buf_adds(r, b, v->d->ns ? "<Namespace {" : "{");
        for (size_t i = 0; i < v->d->n; i++) {
            if (i)
                buf_adds(r, b, ", ");
            struct val k = dict_key(v->d, i);
            repr(r, b, &k, line);
            buf_adds(r, b, ": ");
            repr(r, b, &v->d->v[i], line);
        }
        buf_adds(r, b, v->d->ns ? "}>" : "}");
        break;
    case V_FUNC: buf_adds(r, b, "<built-in function>"); break;
    case V_METHOD: /* Jinja2 prints the object's address */
        fail_at(&r->f, MOE_EINVAL, line, "printing the method '%s' of %s %s: call it, as %s()", v->bm->name,
                article(type_name(&v->bm->self)), type_name(&v->bm->self), v->bm->name);
    case V_OBJ: /* Jinja2 prints the object's address */
        fail_at(&r->f, MOE_EINVAL, line, "printing a %s: Jinja2 prints its address", type_name(v));
    default: /* Jinja2's Macro */
        if (v->macro->n->op & MACRO_ANONYMOUS) {
            buf_adds(r, b, "<Macro anonymous>");
        } else {
            buf_adds(r, b, "<Macro ");
            str_repr(r, b, r_str(r, v->macro->n->name, strlen(v->macro->n->name)));
            buf_adds(r, b, ">");
        }
        break;
    }
    r->vdepth--;
}

static struct val stringify(struct render *r, const struct val *v, int line)
{
    if (v->t == V_STR)
        return *v;
    struct buf b = { 0 };
    to_str(r, &b, v, line);
    return vbuf(r, &b);
}

/* v, a Markup when m (a string only). */
static struct val as_markup(struct val v, bool m)
{
    v.markup = v.t == V_STR && m;
    return v;
}

/* markupsafe's escape(v): a Markup as it is, else str(v) with & < > ' " written as HTML entities. */
static struct val html_escape(struct render *r, const struct val *v, int line)
{
    if (v->t == V_STR && v->markup)
        return *v;
    struct val s = stringify(r, v, line);
    struct buf b = { 0 };
    buf_add(r, &b, "", 0);
    size_t from = 0;
    for (size_t i = 0; i < s.s->n; i++) {
        const char *c = s.s->p[i] == '&' ? "&amp;" : s.s->p[i] == '<' ? "&lt;" : s.s->p[i] == '>' ? "&gt;"
                      : s.s->p[i] == '\'' ? "&#39;" : s.s->p[i] == '"' ? "&#34;" : NULL;
        if (!c)
            continue;
        buf_add(r, &b, s.s->p + from, i - from);
        buf_adds(r, &b, c);
        from = i + 1;
    }
    buf_add(r, &b, s.s->p + from, s.s->n - from);
    return as_markup(vbuf(r, &b), true);
}

/* A string argument x of a method of self: escaped when self is a Markup, as its methods escape theirs. */
static const struct str *markup_arg(struct render *r, const struct val *self, const struct str *x, int line)
{
    return self->markup && x ? html_escape(r, &(struct val){ .t = V_STR, .s = x }, line).s : x;
}

/* The options of json.dumps that the tojson filter takes. */
struct json_opts {
    const struct str *indent;   /* NULL: one line; else the string per level (an int n: n spaces) */
    const struct str *item_sep, *key_sep;
    bool sort_keys, ensure_ascii;
};

static void json_quote(struct render *r, struct buf *b, const struct str *s, bool ascii)
{
    buf_adds(r, b, "\"");
    for (size_t i = 0; i < s->n;) {
        unsigned char ch = (unsigned char)s->p[i];
        uint32_t cp;
        size_t l = str_cp(s, i, &cp);
        if (ch == '"') buf_adds(r, b, "\\\"");
        else if (ch == '\\') buf_adds(r, b, "\\\\");
        else if (ch == '\n') buf_adds(r, b, "\\n");
        else if (ch == '\r') buf_adds(r, b, "\\r");
        else if (ch == '\t') buf_adds(r, b, "\\t");
        else if (ch == '\b') buf_adds(r, b, "\\b");
        else if (ch == '\f') buf_adds(r, b, "\\f");
        else if (ch < 0x20 || (ascii && ch == 0x7f)) buf_addf(r, b, "\\u%04x", ch);
        else if (ascii && ch >= 0x80 && cp >= 0x10000) /* a surrogate pair, as Python writes it */
            buf_addf(r, b, "\\u%04x\\u%04x", 0xd800 + ((cp - 0x10000) >> 10), 0xdc00 + ((cp - 0x10000) & 0x3ff));
        else if (ascii && ch >= 0x80) buf_addf(r, b, "\\u%04x", cp);
        else buf_add(r, b, s->p + i, l);
        i += l;
    }
    buf_adds(r, b, "\"");
}

static void json_newline(struct render *r, struct buf *b, const struct json_opts *o, int level)
{
    buf_adds(r, b, "\n");
    for (int k = 0; k < level; k++)
        buf_add(r, b, o->indent->p, o->indent->n);
}

/* json.dumps(v, ensure_ascii, indent, separators, sort_keys), as the
 * tojson filter of apply_chat_template calls it. */
static void to_json(struct render *r, struct buf *b, const struct val *v, const struct json_opts *o, int level,
                    int line)
{
    step(r, line);
    if (level > JJ_MAX_VALUE_DEPTH)
        fail_at(&r->f, MOE_ERANGE, line, "a value nested deeper than %d lists or dicts", JJ_MAX_VALUE_DEPTH);
    switch (v->t) {
    case V_NONE: buf_adds(r, b, "null"); return;
    case V_BOOL: buf_adds(r, b, v->b ? "true" : "false"); return;
    case V_INT: buf_addf(r, b, "%lld", (long long)v->i); return;
    case V_FLOAT:
        if (isnan(v->f))
            buf_adds(r, b, "NaN");
        else if (isinf(v->f))
            buf_adds(r, b, v->f < 0 ? "-Infinity" : "Infinity");
        else
            float_repr(r, b, v->f);
        return;
    case V_STR: json_quote(r, b, v->s, o->ensure_ascii); return;
    case V_LIST:
    case V_DICT: {
        bool list = v->t == V_LIST;
        if ((!list && v->d->ns) || (list && (v->l->gen || v->l->range || v->l->view)))
            break;
        size_t n = list ? v->l->n : v->d->n;
        buf_adds(r, b, list ? "[" : "{");
        if (!n) {
            buf_adds(r, b, list ? "]" : "}");
            return;
        }
        size_t *order = NULL; /* sort_keys: the dict's entries by key */
        if (!list && o->sort_keys) {
            order = r_alloc(r, n * sizeof(*order));
            for (size_t i = 0; i < n; i++) {
                order[i] = i;
                for (size_t j = i; j > 0; j--) { /* Python's sorted() of the keys as they are: 1 and 'a' fail */
                    struct val x = dict_key(v->d, order[j - 1]), y = dict_key(v->d, order[j]);
                    if (x.t == V_NONE || y.t == V_NONE)
                        fail_at(&r->f, MOE_EINVAL, line, "tojson: cannot sort the keys %s and %s (sort_keys)",
                                type_name(&x), type_name(&y));
                    if (compare(r, &x, &y, line) <= 0)
                        break;
                    size_t t = order[j];
                    order[j] = order[j - 1];
                    order[j - 1] = t;
                    step(r, line);
                }
            }
        }
        for (size_t i = 0; i < n; i++) {
            size_t e = order ? order[i] : i;
            if (i)
                buf_add(r, b, o->item_sep->p, o->item_sep->n);
            if (o->indent)
                json_newline(r, b, o, level + 1);
            if (!list) { /* json.dumps writes a key that is not a string as JSON writes its value, in quotes */
                struct val k = dict_key(v->d, e);
                if (k.t == V_STR) {
                    json_quote(r, b, k.s, o->ensure_ascii);
                } else {
                    buf_adds(r, b, "\"");
                    to_json(r, b, &k, o, level + 1, line);
                    buf_adds(r, b, "\"");
                }
                buf_add(r, b, o->key_sep->p, o->key_sep->n);
            }
            to_json(r, b, list ? &v->l->v[e] : &v->d->v[e], o, level + 1, line);
        }
        if (o->indent)
            json_newline(r, b, o, level);
        buf_adds(r, b, list ? "]" : "}");
        return;
    }
    default: break;
    }
    fail_at(&r->f, MOE_EINVAL, line, "tojson: %s %s is not JSON serializable", article(type_name(v)), type_name(v));
}

/* ---- render: strings by code point ------------------------------------------- */

/* First occurrence of needle in hay, or NULL. */
static const char *find_bytes(const char *hay, size_t n, const char *needle, size_t k)
{
    /* memmem's time is linear in n + k, where comparing at every place takes n * k */
    return k == 0 ? hay : memmem(hay, n, needle, k);
}

/* The last place of needle[0..k) in hay[0..n), or NULL (an empty needle: hay's end).  Knuth-Morris-Pratt
 * over both strings read from their ends, linear in n + k; comparing at every place (what it does when its
 * table cannot be had) takes n * k. */
static const char *rfind_bytes(const char *hay, size_t n, const char *needle, size_t k)
{
#define RB(s, len, j) ((s)[(len) - 1 - (j)]) /* byte j of s[0..len) read backwards */
    if (k == 0 || k > n) return k == 0 ? hay + n : NULL;
    size_t *fail = malloc(k * sizeof(*fail)); /* fail[j]: the longest proper border of the first j + 1 */
    if (!fail) {
        for (size_t i = n - k + 1; i-- > 0;)
            if (!memcmp(hay + i, needle, k)) return hay + i;
        return NULL;
    }
    fail[0] = 0;
    for (size_t j = 1, m = 0; j < k; j++) {
        while (m && RB(needle, k, j) != RB(needle, k, m)) m = fail[m - 1];
        m += RB(needle, k, j) == RB(needle, k, m);
        fail[j] = m;
    }
    const char *hit = NULL;
    for (size_t i = 0, m = 0; i < n && !hit; i++) {
        while (m && RB(hay, n, i) != RB(needle, k, m)) m = fail[m - 1];
        m += RB(hay, n, i) == RB(needle, k, m);
        if (m == k) hit = hay + (n - 1 - i); /* the match read backwards ends at i: it starts there */
    }
    free(fail);
    return hit;
#undef RB
}

/* Code points of p[0..n). */
static size_t utf8_count(const char *p, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)p[i] & 0xc0) != 0x80;
    return k;
}

/* Byte offset of code point k of p[0..n), n when it has no more. */
static size_t utf8_offset(const char *p, size_t n, size_t k)
{
    size_t i = 0;
    for (; i < n && k; k--)
        for (i++; i < n && ((unsigned char)p[i] & 0xc0) == 0x80;)
            i++;
    return i;
}

static size_t cp_count(const struct str *s)
{
    return utf8_count(s->p, s->n);
}

/* Byte offset of code point k of s (k <= count). */
static size_t cp_offset(const struct str *s, size_t k)
{
    return utf8_offset(s->p, s->n, k);
}

/* strip / lstrip / rstrip (which: 1 left, 2 right, 3 both) of whitespace, or of the characters of chars. */
static struct val strip(struct render *r, const struct str *s, const struct str *chars, int which)
{
    size_t a = 0, b = s->n;
    for (;;) { /* from the left */
        if (!(which & 1) || a >= b)
            break;
        uint32_t cp;
        size_t l = moe_utf8_next((const unsigned char *)s->p + a, b - a, &cp);
        bool drop = chars ? l && find_bytes(chars->p, chars->n, s->p + a, l) != NULL : l && py_space(cp);
        if (!drop)
            break;
        a += l;
    }
    while ((which & 2) && b > a) {
        size_t k = b - 1;
        while (k > a && ((unsigned char)s->p[k] & 0xc0) == 0x80)
            k--;
        uint32_t cp;
        size_t l = moe_utf8_next((const unsigned char *)s->p + k, b - k, &cp);
        bool drop = chars ? l && find_bytes(chars->p, chars->n, s->p + k, l) != NULL : l && py_space(cp);
        if (!drop)
            break;
        b = k;
    }
    return vstr(r, s->p + a, b - a);
}

/* cp's properties (enum moe_case_prop). */
static unsigned case_props(uint32_t cp)
{
    return moe_tok_range_lookup(moe_case_props, moe_case_n_props, cp, 0);
}

/* Python's str.isalnum() of one character: a letter (category L*) or of a Numeric_Type (isnumeric()). */
static bool py_alnum(uint32_t cp)
{
    return moe_tok_category(cp) <= MOE_TOK_GC_LO || (case_props(cp) & MOE_CASE_NUMERIC);
}

/* Python's \w, as re and so Jinja2's wordcount read it: str.isalnum() or '_'. */
static bool py_word(uint32_t cp)
{
    return cp == '_' || py_alnum(cp);
}

/* The index of cp among n records of size bytes at base, sorted by their first field, the code point; n when
 * it is not there. */
static size_t cp_find(const void *base, size_t n, size_t size, uint32_t cp)
{
    for (size_t lo = 0, hi = n; lo < hi;) {
        size_t mid = lo + (hi - lo) / 2;
        uint32_t at = *(const uint32_t *)(const void *)((const char *)base + mid * size);
        if (cp == at)
            return mid;
        if (cp < at)
            hi = mid;
        else
            lo = mid + 1;
    }
    return n;
}

/* A 0-terminated mapping of up to 3 code points into out: its count. */
static size_t map_copy(const uint32_t m[3], uint32_t out[3])
{
    size_t n = 0;
    for (; n < 3 && m[n]; n++) out[n] = m[n];
    return n;
}

/* cp's full mapping which (0 upper, 1 lower, 2 title) into out, as Python's str methods map one character:
 * its count, 1 to 3 ('ß' uppers to "SS"). */
static size_t case_map(uint32_t cp, int which, uint32_t out[3])
{
    size_t sp = cp_find(moe_case_specials, moe_case_n_specials, sizeof(moe_case_specials[0]), cp);
    if (sp < moe_case_n_specials)
        return map_copy(moe_case_specials[sp].map[which], out);
    unsigned lo, hi;
    out[0] = cp;
    for (lo = 0, hi = moe_case_n_runs; lo < hi;) { /* the run holding cp, if any */
        unsigned mid = lo + (hi - lo) / 2;
        const struct moe_case_run *run = &moe_case_runs[mid];
        if (cp < run->lo) {
            hi = mid;
        } else if (cp > run->hi) {
            lo = mid + 1;
        } else {
            if ((cp - run->lo) % run->stride == 0)
                out[0] = (uint32_t)((int32_t)cp + run->delta[which]);
            break;
        }
    }
    return 1;
}

/* Whether the capital sigma at cps[i] ends a word, in cps[lo, hi), as Python's str.lower() decides it
 * (Final_Sigma: after a cased character and not before one, case-ignorable ones skipped): it lowers to ς. */
static bool final_sigma(const uint32_t *cps, size_t lo, size_t hi, size_t i)
{
    size_t j = i;
    while (j > lo && (case_props(cps[j - 1]) & MOE_CASE_IGNORABLE))
        j--;
    if (j == lo || !(case_props(cps[j - 1]) & MOE_CASE_CASED))
        return false;
    for (j = i + 1; j < hi && (case_props(cps[j]) & MOE_CASE_IGNORABLE);)
        j++;
    return j == hi || !(case_props(cps[j]) & MOE_CASE_CASED);
}

enum case_mode {
    CASE_LOWER, CASE_UPPER,
    CASE_TITLE,      /* str.title(): a word starts after any uncased character */
    CASE_CAPITALIZE, /* str.capitalize(): the first character title-cased, the rest lower */
    CASE_JTITLE,     /* Jinja's title filter: after runs of whitespace and -({[<, the first character of a
                        piece upper and the rest, on its own, lower */
    CASE_SWAP,       /* str.swapcase(): upper case lowered (a final sigma too), lower case uppered */
    CASE_FOLD,       /* str.casefold(): the full case folding ('ß' is "ss"), else lower (no final sigma) */
};

/* cp's full case folding into out: its count, 1 to 3. */
static size_t case_fold(uint32_t cp, uint32_t out[3])
{
    size_t f = cp_find(moe_case_folds, moe_case_n_folds, sizeof(moe_case_folds[0]), cp);
    return f < moe_case_n_folds ? map_copy(moe_case_folds[f].map, out) : case_map(cp, 1, out);
}

/* cps[lo, hi) cased as mode says (not CASE_JTITLE) onto b. */
static void case_span(struct render *r, struct buf *b, const uint32_t *cps, size_t lo, size_t hi, enum case_mode mode)
{
    bool prev_cased = false;
    for (size_t i = lo; i < hi; i++) {
        unsigned p = case_props(cps[i]);
        int which = mode == CASE_UPPER ? 0 : mode == CASE_LOWER ? 1
                  : mode == CASE_TITLE ? (prev_cased ? 1 : 2)
                  : mode == CASE_SWAP ? (p & MOE_CASE_UPPER ? 1 : p & MOE_CASE_LOWER ? 0 : -1)
                  : mode == CASE_FOLD ? -2 : i == lo ? 2 : 1;
        uint32_t m[3];
        size_t n = which == 1 && cps[i] == 0x3a3 ? (m[0] = final_sigma(cps, lo, hi, i) ? 0x3c2 : 0x3c3, 1)
                 : which == -1 ? (m[0] = cps[i], 1) : which == -2 ? case_fold(cps[i], m)
                 : case_map(cps[i], which, m);
        for (size_t k = 0; k < n; k++) {
            char enc[4];
            buf_add(r, b, enc, moe_utf8_put(m[k], enc));
        }
        prev_cased = p & MOE_CASE_CASED;
    }
}

static struct val str_case(struct render *r, const struct str *s, enum case_mode mode)
{
    size_t n = cp_count(s);
    uint32_t *cps = r_alloc(r, (n ? n : 1) * sizeof(*cps));
    for (size_t i = 0, k = 0; i < s->n; k++) i += str_cp(s, i, &cps[k]);
    struct buf b = { 0 };
    buf_add(r, &b, "", 0);
    if (mode != CASE_JTITLE) {
        case_span(r, &b, cps, 0, n, mode);
        return vbuf(r, &b);
    }
    for (size_t a = 0, e; a < n; a = e) { /* Jinja2: item[0].upper() + item[1:].lower() of each piece */
        bool sep = py_space(cps[a]) || (cps[a] < 0x80 && strchr("-({[<", (int)cps[a]));
        for (e = a + 1; e < n && sep == (py_space(cps[e]) || (cps[e] < 0x80 && strchr("-({[<", (int)cps[e])));)
            e++;
        case_span(r, &b, cps, a, a + 1, CASE_UPPER);
        case_span(r, &b, cps, a + 1, e, CASE_LOWER);
    }
    return vbuf(r, &b);
}

/* Python's str predicate name ("isalpha", ...) of s: whether every character is of its kind (isascii and
 * isprintable true for "", the others false); islower, isupper and istitle as Python reads the case of s. */
static bool str_is(const struct str *s, const char *name)
{
    /* the kind, read once from name: what each character must be */
    enum { IS_ALPHA, IS_ALNUM, IS_DECIMAL, IS_DIGIT, IS_NUMERIC, IS_SPACE, IS_ASCII, IS_PRINTABLE, IS_IDENTIFIER,
           IS_LOWER, IS_UPPER, IS_TITLE, IS_NONE };
    static const char *const kinds[] = { "alpha", "alnum", "decimal", "digit", "numeric", "space", "ascii",
                                         "printable", "identifier", "lower", "upper", "title" };
    int kind = 0;
    while (kind < IS_NONE && strcmp(name + 2, kinds[kind]))
        kind++;
    bool cased = false, prev_cased = false;
    unsigned want = kind == IS_LOWER ? MOE_CASE_LOWER : kind == IS_UPPER ? MOE_CASE_UPPER : 0;
    uint32_t cp;
    for (size_t i = 0; i < s->n;) {
        bool first = !i;
        i += str_cp(s, i, &cp);
        unsigned p = case_props(cp);
        uint32_t gc = moe_tok_category(cp);
        if (kind == IS_TITLE) { /* upper or title case only after an uncased character, lower case only after a cased one */
            if (p & (MOE_CASE_UPPER | MOE_CASE_TITLE) ? prev_cased : p & MOE_CASE_LOWER ? !prev_cased : false)
                return false;
            prev_cased = p & (MOE_CASE_UPPER | MOE_CASE_TITLE | MOE_CASE_LOWER);
            cased |= prev_cased;
            continue;
        }
        if (want) { /* none of the other cases, one at least of want */
            if (p & ((MOE_CASE_LOWER | MOE_CASE_UPPER | MOE_CASE_TITLE) & ~want))
                return false;
            cased |= p & want;
            continue;
        }
        bool ok;
        switch (kind) {
        case IS_ALPHA: ok = gc <= MOE_TOK_GC_LO; break;
        case IS_ALNUM: ok = py_alnum(cp); break;
        case IS_DECIMAL: ok = gc == MOE_TOK_GC_ND; break;
        case IS_DIGIT: ok = p & MOE_CASE_DIGIT; break;
        case IS_NUMERIC: ok = p & MOE_CASE_NUMERIC; break;
        case IS_SPACE: ok = py_space(cp); break;
        case IS_ASCII: ok = cp < 0x80; break;
        case IS_PRINTABLE: ok = !py_unprintable(cp); break;
        case IS_IDENTIFIER: ok = p & (first ? MOE_CASE_ID_START : MOE_CASE_ID_CONTINUE); break;
        default: ok = false;
        }
        if (!ok)
            return false;
    }
    return kind == IS_TITLE || want ? cased : s->n || kind == IS_ASCII || kind == IS_PRINTABLE;
}

/* s padded with fill (NULL: a space) to width characters as Python's str.ljust (where 'l'), rjust ('r') and
 * center ('c') do it: center's odd one on the left when width is odd. */
static struct val str_pad(struct render *r, const struct val *s, int64_t width, const struct str *fill, char where)
{
    int64_t len = (int64_t)cp_count(s->s);
    if (width <= len)
        return *s;
    int64_t marg = width - len, left = where == 'l' ? 0 : where == 'r' ? marg : marg / 2 + (marg & width & 1);
    struct buf b = { 0 };
    buf_add(r, &b, "", 0);
    for (int64_t k = 0; k < marg; k++) { /* the output bound stops a huge one */
        if (k == left)
            buf_add(r, &b, s->s->p, s->s->n);
        buf_add(r, &b, fill ? fill->p : " ", fill ? fill->n : 1);
    }
    if (left == marg)
        buf_add(r, &b, s->s->p, s->s->n);
    return as_markup(vbuf(r, &b), s->markup);
}

static struct val split(struct render *r, const struct str *s, const struct str *sep, int64_t maxsplit)
{
    size_t cap = 8, n = 0;
    struct val *v = r_alloc(r, cap * sizeof(*v));
    size_t i = 0;
    for (;;) {
        if (n + 1 >= cap) {
            struct val *w = r_alloc(r, 2 * cap * sizeof(*w));
            memcpy(w, v, n * sizeof(*v));
            v = w;
            cap *= 2;
        }
        if (!sep) { /* runs of whitespace; no empty pieces */
            uint32_t cp;
            size_t l;
            while (i < s->n && (l = moe_utf8_next((const unsigned char *)s->p + i, s->n - i, &cp)) && py_space(cp))
                i += l;
            if (i >= s->n)
                break;
            size_t j = i;
            if (maxsplit >= 0 && (int64_t)n >= maxsplit) { /* the rest, trailing whitespace kept */
                v[n++] = vstr(r, s->p + j, s->n - j);
                break;
            }
            while (j < s->n && (l = moe_utf8_next((const unsigned char *)s->p + j, s->n - j, &cp)) && !py_space(cp))
                j += l;
            v[n++] = vstr(r, s->p + i, j - i);
            i = j;
            continue;
        }
        bool more = maxsplit < 0 || (int64_t)n < maxsplit;
        const char *hit = more ? find_bytes(s->p + i, s->n - i, sep->p, sep->n) : NULL;
        if (!hit) {
            v[n++] = vstr(r, s->p + i, s->n - i);
            break;
        }
        v[n++] = vstr(r, s->p + i, (size_t)(hit - (s->p + i)));
        i = (size_t)(hit - s->p) + sep->n;
    }
    struct list *l = new_list(r, 0);
    l->v = v;
    l->n = n;
    return (struct val){ .t = V_LIST, .l = l };
}

/* str.rsplit(sep, maxsplit): the splits made from the right. */
static struct val rsplit(struct render *r, const struct str *s, const struct str *sep, int64_t maxsplit)
{
    if (maxsplit < 0) /* no bound: as many as there are places (from the right: 'aaa'.rsplit('aa') is ['a', '']) */
        maxsplit = (int64_t)s->n;
    if (!sep) { /* the last maxsplit words, after what is before them (its leading whitespace kept) */
        const struct list *w = split(r, s, NULL, -1).l;
        if ((int64_t)w->n <= maxsplit)
            return (struct val){ .t = V_LIST, .l = w };
        size_t k = w->n - (size_t)maxsplit;
        struct list *l = new_list(r, (size_t)maxsplit + 1);
        const struct str *last = w->v[k - 1].s; /* where the rest ends: after the k-th word */
        size_t at = 0;
        for (size_t i = 0; i < k; i++) { /* the words are found again in order, past the previous */
            at = (size_t)(find_bytes(s->p + at, s->n - at, w->v[i].s->p, w->v[i].s->n) - s->p);
            at += i + 1 < k ? w->v[i].s->n : 0;
        }
        l->v[0] = vstr(r, s->p, at + last->n);
        for (size_t i = 1; i < l->n; i++) l->v[i] = w->v[k + i - 1];
        return (struct val){ .t = V_LIST, .l = l };
    }
    if (!sep->n)
        fail_at(&r->f, MOE_EINVAL, 0, "rsplit: empty separator");
    struct val *v = r_alloc(r, ((size_t)(maxsplit < (int64_t)s->n ? maxsplit : (int64_t)s->n) + 1) * sizeof(*v));
    size_t n = 0, end = s->n;
    while ((int64_t)n < maxsplit && end >= sep->n) {
        const char *hit = rfind_bytes(s->p, end, sep->p, sep->n);
        if (!hit)
            break;
        size_t at = (size_t)(hit - s->p);
        v[n++] = vstr(r, s->p + at + sep->n, end - at - sep->n);
        end = at;
    }
    v[n++] = vstr(r, s->p, end);
    struct list *l = new_list(r, n);
    for (size_t i = 0; i < n; i++) l->v[i] = v[n - 1 - i];
    return (struct val){ .t = V_LIST, .l = l };
}

static struct val replace(struct render *r, const struct str *s, const struct str *old, const struct str *new_,
                          int64_t count)
{
    struct buf b = { 0 };
    buf_add(r, &b, "", 0);
    size_t i = 0;
    int64_t done = 0;
    if (!old->n) { /* Python: the new string between every character and at both ends */
        for (size_t k = 0; k <= s->n; k++) {
            if (k == s->n || ((unsigned char)s->p[k] & 0xc0) != 0x80) {
                if (count < 0 || done < count) {
                    buf_add(r, &b, new_->p, new_->n);
                    done++;
                }
            }
            if (k < s->n)
                buf_add(r, &b, s->p + k, 1);
        }
        return vbuf(r, &b);
    }
    while (i <= s->n) {
        const char *hit = (count < 0 || done < count) ? find_bytes(s->p + i, s->n - i, old->p, old->n) : NULL;
        if (!hit) {
            buf_add(r, &b, s->p + i, s->n - i);
            break;
        }
        buf_add(r, &b, s->p + i, (size_t)(hit - (s->p + i)));
        buf_add(r, &b, new_->p, new_->n);
        i = (size_t)(hit - s->p) + old->n;
        done++;
    }
    return vbuf(r, &b);
}

/* Bytes of the line break at p[0..n) as Python's str.splitlines() sees them (\n, \r, \r\n, \v, \f,
 * U+001C-U+001E, U+0085, U+2028, U+2029), 0 when none is there. */
static size_t line_break(const char *p, size_t n)
{
    unsigned char c = (unsigned char)p[0];
    if (c == '\r')
        return n > 1 && p[1] == '\n' ? 2 : 1;
    if (c == '\n' || c == '\v' || c == '\f' || (c >= 0x1c && c <= 0x1e))
        return 1;
    if (c == 0xc2 && n > 1 && (unsigned char)p[1] == 0x85)
        return 2;
    if (c == 0xe2 && n > 2 && (unsigned char)p[1] == 0x80 && ((unsigned char)p[2] | 1) == 0xa9)
        return 3;
    return 0;
}

/* Jinja2's indent filter: s with "\n" added split into lines (str.splitlines()), joined again with "\n",
 * every line but the first (that too with first) led by ind, the empty ones too only with blank. */
static struct val indent(struct render *r, const struct str *s, const struct str *ind, bool first, bool blank)
{
    struct buf b = { 0 };
    buf_add(r, &b, "", 0);
    if (first)
        buf_add(r, &b, ind->p, ind->n);
    size_t start = 0;
    for (size_t i = 0, k = 0;; k++) {
        size_t brk = 0;
        while (i < s->n && !(brk = line_break(s->p + i, s->n - i)))
            i++;
        if (k) { /* the lines after the first */
            buf_adds(r, &b, "\n");
            if (blank || i > start)
                buf_add(r, &b, ind->p, ind->n);
        }
        buf_add(r, &b, s->p + start, i - start);
        if (i >= s->n) /* the last line, ended by the added "\n" */
            return vbuf(r, &b);
        i += brk;
        start = i;
    }
}

/* ---- render: evaluation -------------------------------------------------------- */

static struct val eval(struct render *r, const struct node *n);
static void exec(struct render *r, struct frame *fr, const struct node *n, struct buf *out);

static struct val lookup(struct render *r, struct frame *fr, const char *name)
{
    size_t n = strlen(name);
    for (; fr; fr = fr->up) {
        const struct val *v = dict_get(&fr->vars, name, n);
        if (v && fr->ended) /* Jinja2 gives what the name last held in any iteration, or its internal 'missing' */
            fail_at(&r->f, MOE_ENOTSUP, fr->ended->line,
                    "macro '%s' uses '%s' of a %s that has ended: call the macro inside it, or pass '%s' as an "
                    "argument", r->macro ? r->macro->n->name : "?", name,
                    fr->ended->k == N_FOR ? "for loop iteration" : fr->ended->k == N_WITH ? "with block"
                    : fr->ended->k == N_FILTER ? "filter block" : fr->ended->k == N_BLOCK ? "for loop's else block"
                    : "set block", name);
        if (v)
            return *v;
    }
    static const struct { const char *name; int fn; } builtins[] = {
        { "range", FN_RANGE }, { "namespace", FN_NAMESPACE }, { "raise_exception", FN_RAISE },
        { "strftime_now", FN_STRFTIME }, { "dict", FN_DICT }, { "cycler", FN_CYCLER }, { "joiner", FN_JOINER },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(builtins); i++)
        if (!strcmp(name, builtins[i].name))
            return (struct val){ .t = V_FUNC, .fn = builtins[i].fn };
    return vundef(r_str(r, name, n));
}

static _Noreturn void undefined_error(struct render *r, const struct val *v, int line)
{
    if (v->s)
        fail_at(&r->f, MOE_EINVAL, line, "'%.*s' is undefined", (int)(v->s->n < 80 ? v->s->n : 80), v->s->p);
    fail_at(&r->f, MOE_EINVAL, line, "a value is undefined");
}

/* obj.name or obj[key]: an item of a dict, else undefined (named for errors). */
static int method_kind(const struct val *obj, const char *name);
static struct val bound_method(struct render *r, const struct val *obj, const char *name);
static struct val py_getattr(struct render *r, const struct val *obj, const struct val *name, int line);

/* obj[key] as Jinja2's getitem: the item, else for a string key the method of that name (as getattr
 * finds it: d['items'] of a dict without that key is its method), else undefined. */
static struct val get_item(struct render *r, const struct val *obj, const struct val *key, int line)
{
    if (obj->t == V_UNDEF)
        undefined_error(r, obj, line);
    if (obj->t == V_DICT && (key->t == V_STR || is_num(key) || key->t == V_NONE)) {
        const struct val *v = dict_find(r, obj->d, key, line);
        if (v)
            return *v;
    } else if (((obj->t == V_LIST && !obj->l->gen && !obj->l->view) || obj->t == V_STR) &&
               (key->t == V_INT || key->t == V_BOOL)) {
        int64_t len = obj->t == V_LIST ? (int64_t)obj->l->n : (int64_t)cp_count(obj->s), i = inum(key);
        if (i < 0)
            i += len;
        if (i >= 0 && i < len) {
            if (obj->t == V_LIST)
                return obj->l->v[i];
            size_t a = cp_offset(obj->s, (size_t)i), b = cp_offset(obj->s, (size_t)i + 1);
            return as_markup(vstr(r, obj->s->p + a, b - a), obj->markup);
        }
    }
    if (obj->t == V_LIST && obj->l->group && key->t == V_STR &&
        ((key->s->n == 7 && !memcmp(key->s->p, "grouper", 7)) || (key->s->n == 4 && !memcmp(key->s->p, "list", 4))))
        return obj->l->v[key->s->p[0] == 'l'];
    if (key->t == V_STR && (is_num(obj) || (obj->t == V_LIST && obj->l->range) || obj->t == V_OBJ ||
                            obj->t == V_MACRO)) /* (5).real, range(3).stop, a cycler's current, a macro's name */
        return py_getattr(r, obj, key, line);
    if (key->t == V_STR && !memchr(key->s->p, 0, key->s->n) && method_kind(obj, key->s->p) == 1)
        return bound_method(r, obj, key->s->p);
    struct buf b = { 0 };
    to_str(r, &b, key, line);
    return vundef(r_str(r, b.p ? b.p : "", b.n));
}

static int64_t slice_index(struct render *r, const struct node *n, int64_t dflt)
{
    if (!n)
        return dflt;
    struct val v = eval(r, n);
    if (v.t == V_NONE)
        return dflt;
    if (v.t != V_INT && v.t != V_BOOL)
        fail_at(&r->f, MOE_EINVAL, n->line, "slice indices must be integers, not %s", type_name(&v));
    return inum(&v);
}

static struct val do_slice(struct render *r, const struct node *n)
{
    struct val obj = eval(r, n->a);
    if (obj.t == V_UNDEF)
        undefined_error(r, &obj, n->line);
    if (((obj.t != V_LIST && obj.t != V_STR) || (obj.t == V_LIST && obj.l->gen)) && n->a->k == E_LIT)
        return vundef(NULL); /* 11[:2]: Jinja2 folds a literal's slice when it compiles, to its failed getitem */
    if ((obj.t != V_LIST && obj.t != V_STR) || (obj.t == V_LIST && (obj.l->gen || obj.l->view))) /* TypeError */
        fail_at(&r->f, MOE_EINVAL, n->line, "a %s cannot be sliced (only a string, list or tuple)",
                obj.t == V_LIST && obj.l->view ? "dict view (keys(), values(), items(); apply |list first)"
                : obj.t == V_LIST ? "generator (select, map, ...; apply |list first)"
                : obj.t == V_DICT && obj.d->loop ? "loop" : type_name(&obj));
    int64_t len = obj.t == V_LIST ? (int64_t)obj.l->n : (int64_t)cp_count(obj.s);
    int64_t stepv = slice_index(r, n->d, 1);
    if (stepv == 0)
        fail_at(&r->f, MOE_EINVAL, n->line, "slice step cannot be zero");
    int64_t lo = stepv > 0 ? 0 : -1, hi = stepv > 0 ? len : len - 1;
    int64_t a = slice_index(r, n->b, stepv > 0 ? 0 : len - 1), b = slice_index(r, n->c, stepv > 0 ? len : -len - 1);
    /* Python's PySlice_AdjustIndices */
    if (a < 0) a = a + len < lo ? lo : a + len;
    else if (a > hi) a = hi;
    if (b < 0) b = b + len < lo ? lo : b + len;
    else if (b > hi) b = hi;
    int64_t cnt = stepv > 0 ? (b > a ? (b - a + stepv - 1) / stepv : 0) : (a > b ? (a - b - stepv - 1) / -stepv : 0);
    if (obj.t == V_LIST && obj.l->range) { /* a range: range(start + a * step, start + b * step, step * stepv) */
        const int64_t *rg = obj.l->range;
        int64_t from, to, by;
        if (__builtin_mul_overflow(a, rg[2], &from) || __builtin_add_overflow(from, rg[0], &from) ||
            __builtin_mul_overflow(b, rg[2], &to) || __builtin_add_overflow(to, rg[0], &to) ||
            __builtin_mul_overflow(rg[2], stepv, &by))
            fail_at(&r->f, MOE_ERANGE, n->line, "a slice of a range past 64-bit integers");
        return new_range(r, from, to, by, cnt);
    }
    if (obj.t == V_LIST) {
        struct list *l = new_list(r, (size_t)cnt);
        l->tuple = obj.l->tuple;
        for (int64_t k = 0; k < cnt; k++) l->v[k] = obj.l->v[a + k * stepv];
        return (struct val){ .t = V_LIST, .l = l };
    }
    struct buf b2 = { 0 };
    buf_add(r, &b2, "", 0);
    for (int64_t k = 0; k < cnt; k++) {
        size_t x = cp_offset(obj.s, (size_t)(a + k * stepv)), y = cp_offset(obj.s, (size_t)(a + k * stepv) + 1);
        buf_add(r, &b2, obj.s->p + x, y - x);
    }
    return as_markup(vbuf(r, &b2), obj.markup);
}

/* Items to iterate: a list's values, a dict's keys, a string's characters. */
static struct list *iter_list(struct render *r, const struct val *v, int line)
{
    if (v->t == V_LIST)
        return (struct list *)v->l;
    if (v->t == V_UNDEF || v->t == V_NONE) {
        if (v->t == V_NONE)
            fail_at(&r->f, MOE_EINVAL, line, "'NoneType' object is not iterable");
        return new_list(r, 0);
    }
    if (v->t == V_DICT && !v->d->ns) {
        struct list *l = new_list(r, v->d->n);
        for (size_t i = 0; i < v->d->n; i++) l->v[i] = dict_key(v->d, i);
        return l;
    }
    if (v->t == V_STR) {
        struct list *l = new_list(r, cp_count(v->s));
        for (size_t i = 0; i < l->n; i++) {
            size_t a = cp_offset(v->s, i), b = cp_offset(v->s, i + 1);
            l->v[i] = vstr(r, v->s->p + a, b - a);
        }
        return l;
    }
    fail_at(&r->f, MOE_EINVAL, line, "%s %s is not iterable", article(type_name(v)), type_name(v));
}

/* Whether Python can hash v (a set's or dict's key): not a list or dict, nor a tuple holding one. */
static bool hashable(struct render *r, const struct val *v, int line)
{
    if (v->t == V_LIST && !v->l->gen && !v->l->range) {
        if (!v->l->tuple)
            return false;
        value_enter(r, line);
        bool ok = true;
        for (size_t i = 0; i < v->l->n && ok; i++) ok = hashable(r, &v->l->v[i], line);
        r->vdepth--;
        return ok;
    }
    return v->t != V_DICT || v->d->ns || v->d->loop;
}

static bool contains(struct render *r, const struct val *item, const struct val *in, int line)
{
    if (in->t == V_STR) {
        if (item->t != V_STR)
            fail_at(&r->f, MOE_EINVAL, line, "'in <string>' needs a string on the left, not %s", type_name(item));
        return item->s->n == 0 || find_bytes(in->s->p, in->s->n, item->s->p, item->s->n) != NULL;
    }
    if (in->t == V_DICT && !in->d->ns) {
        if (!hashable(r, item, line))
            fail_at(&r->f, MOE_EINVAL, line, "'in <dict>' needs a key on the left, not %s %s (a list or dict cannot be "
                    "one)", article(type_name(item)), type_name(item));
        return dict_find(r, in->d, item, line) != NULL;
    }
    if (in->t == V_LIST && (in->l->view == 'k' || in->l->view == 'i')) { /* looked up as the dict's key, as there */
        const struct list *p = item->t == V_LIST && item->l->tuple && item->l->n == 2 ? item->l : NULL;
        const struct val *key = in->l->view == 'k' ? item : p ? &p->v[0] : NULL; /* items: a (key, value) pair */
        if (key && !hashable(r, key, line))
            fail_at(&r->f, MOE_EINVAL, line, "'in <dict_%s>' needs a key %s, not %s %s (a list or dict cannot be one)",
                    in->l->view == 'k' ? "keys" : "items", in->l->view == 'k' ? "on the left" : "in the pair",
                    article(type_name(key)), type_name(key));
    }
    const struct list *l = iter_list(r, in, line);
    for (size_t i = 0; i < l->n; i++)
        if (equal(r, item, &l->v[i]))
            return true;
    return false;
}

/* Arguments of a call: positional values and named ones. */
struct args {
    struct val *pos;     /* npos, in the render's arena */
    int npos;
    const char **names;  /* nkw names and their values kw; room for one more (a call block's caller) */
    struct val *kw;
    int nkw;
};

/* Room in the arena for npos positional and nkw (and one more) keyword arguments. */
static void args_alloc(struct render *r, struct args *a, size_t npos, size_t nkw, int line)
{
    if (npos > JJ_MAX_ARGS || nkw > JJ_MAX_ARGS)
        fail_at(&r->f, MOE_ERANGE, line, "a call with more than %d %s arguments", JJ_MAX_ARGS,
                npos > JJ_MAX_ARGS ? "positional" : "keyword");
    *a = (struct args){ .pos = r_alloc(r, (npos + 1) * sizeof(*a->pos)),
                        .names = r_alloc(r, (nkw + 1) * sizeof(*a->names)),
                        .kw = r_alloc(r, (nkw + 1) * sizeof(*a->kw)) };
}

/* The arguments of call, filter or test n, as Python passes f(args, names=values, *c, **d): the positions
 * then the items of c, the names then the items of the mapping d. */
static void eval_args(struct render *r, const struct node *n, struct args *a)
{
    struct val star = n->c ? eval(r, n->c) : (struct val){ .t = V_NONE }, dstar = { .t = V_NONE };
    if (n->c && !(star.t == V_LIST || star.t == V_STR || star.t == V_UNDEF || (star.t == V_DICT && !star.d->ns)))
        fail_at(&r->f, MOE_EINVAL, n->line, "the argument after * must be iterable, not %s", type_name(&star));
    const struct list *items = n->c ? iter_list(r, &star, n->line) : NULL;
    if (n->d) {
        dstar = eval(r, n->d);
        if (dstar.t != V_DICT || dstar.d->ns || dstar.d->loop)
            fail_at(&r->f, MOE_EINVAL, n->line, "the argument after ** must be a mapping, not %s", type_name(&dstar));
    }
    args_alloc(r, a, (size_t)n->nargs + (items ? items->n : 0), (size_t)n->nkw + (n->d ? dstar.d->n : 0), n->line);
    for (int i = 0; i < n->nargs; i++) a->pos[a->npos++] = eval(r, n->args[i]);
    for (size_t i = 0; items && i < items->n; i++) a->pos[a->npos++] = items->v[i];
    for (int i = 0; i < n->nkw; i++) {
        a->names[a->nkw] = n->kwnames[i];
        a->kw[a->nkw++] = eval(r, n->kwargs[i]);
    }
    for (size_t i = 0; n->d && i < dstar.d->n; i++) {
        const struct str *k = dstar.d->k[i];
        if (!key_is_str(dstar.d, i))
            fail_at(&r->f, MOE_EINVAL, n->line, "keyword argument names after ** must be strings, not %s",
                    type_name(&dstar.d->kv[i]));
        if (memchr(k->p, 0, k->n))
            fail_at(&r->f, MOE_EINVAL, n->line, "a keyword argument name after ** holds a NUL character");
        for (int j = 0; j < n->nkw; j++)
            if (!strcmp(a->names[j], k->p))
                fail_at(&r->f, MOE_EINVAL, n->line, "got multiple values for keyword argument '%s'", k->p);
        a->names[a->nkw] = k->p;
        a->kw[a->nkw++] = dstar.d->v[i];
    }
}

/* Argument i, or the one named name, or NULL. */
static const struct val *arg(const struct args *a, int i, const char *name)
{
    if (i >= 0 && i < a->npos)
        return &a->pos[i];
    for (int k = 0; name && k < a->nkw; k++)
        if (!strcmp(a->names[k], name))
            return &a->kw[k];
    return NULL;
}

static const struct str *arg_str(struct render *r, const struct args *a, int i, const char *name, const char *what,
                                 int line)
{
    const struct val *v = arg(a, i, name);
    if (!v || v->t == V_NONE)
        return NULL;
    if (v->t != V_STR)
        fail_at(&r->f, MOE_EINVAL, line, "%s: argument %d must be a string, not %s", what, i + 1, type_name(v));
    return v->s;
}

static int64_t arg_int(struct render *r, const struct args *a, int i, const char *name, int64_t dflt,
                       const char *what, int line)
{
    const struct val *v = arg(a, i, name);
    if (!v || v->t == V_NONE)
        return dflt;
    if (v->t != V_INT && v->t != V_BOOL)
        fail_at(&r->f, MOE_EINVAL, line, "%s: argument %d must be an integer, not %s", what, i + 1, type_name(v));
    return inum(v);
}

/* A filter's attribute argument (see attr_path): a string or an integer; NULL when absent or none. */
static const struct val *arg_attr(struct render *r, const struct args *a, int i, const char *name, const char *what,
                                  int line)
{
    const struct val *v = arg(a, i, name);
    if (!v || v->t == V_NONE)
        return NULL;
    if (v->t != V_STR && v->t != V_INT && v->t != V_BOOL)
        fail_at(&r->f, MOE_EINVAL, line, "%s: the attribute must be a string or an integer, not %s", what,
                type_name(v));
    return v;
}

static bool run_test(struct render *r, const char *name, const struct val *v, const struct args *a, int line);

static const struct sig TEST_SIGS[] = {
    { "divisibleby", "num!" }, { "eq", "/b!" }, { "equalto", "/b!" }, { "ge", "/b!" }, { "gt", "/b!" },
    { "in", "seq!" }, { "le", "/b!" }, { "lt", "/b!" }, { "ne", "/b!" }, { "sameas", "other!" },
}; /* the others: none */
static const struct sig STR_METHOD_SIGS[] = {
    { "capitalize", "" }, { "casefold", "" }, { "center", "/width! /fillchar" }, { "count", "/sub! /start /end" },
    { "endswith", "/suffix! /start /end" }, { "expandtabs", "tabsize" }, { "find", "/sub! /start /end" },
    { "index", "/sub! /start /end" }, { "isalnum", "" }, { "isalpha", "" }, { "isascii", "" }, { "isdecimal", "" },
    { "isdigit", "" }, { "isidentifier", "" }, { "islower", "" }, { "isnumeric", "" }, { "isprintable", "" },
    { "isspace", "" }, { "istitle", "" }, { "isupper", "" }, { "join", "/iterable!" }, { "ljust", "/width! /fillchar" },
    { "lower", "" }, { "lstrip", "/chars" }, { "partition", "/sep!" }, { "removeprefix", "/prefix!" },
    { "removesuffix", "/suffix!" }, { "replace", "/old! /new! /count" }, { "rfind", "/sub! /start /end" },
    { "rindex", "/sub! /start /end" }, { "rjust", "/width! /fillchar" }, { "rpartition", "/sep!" },
    { "rsplit", "sep maxsplit" }, { "rstrip", "/chars" }, { "split", "sep maxsplit" }, { "splitlines", "keepends" },
    { "startswith", "/prefix! /start /end" }, { "strip", "/chars" }, { "swapcase", "" }, { "title", "" },
    { "upper", "" }, { "zfill", "/width!" },
};
static const struct sig LIST_METHOD_SIGS[] = {
    { "copy", "" }, { "count", "/value!" }, { "index", "/value! /start /stop" },
};
static const struct sig DICT_METHOD_SIGS[] = {
    { "copy", "" }, { "fromkeys", "/iterable! /value" }, { "get", "/key! /default" }, { "items", "" }, { "keys", "" },
    { "values", "" },
};

/* a against the signature of name in sigs (none there: dflt, NULL not checked), failing as Python's
 * TypeError does. */
static void check_args(struct render *r, const struct sig *sigs, size_t nsigs, const char *name, const char *dflt,
                       const struct args *a, int line)
{
    const char *params = sig_params(sigs, nsigs, name);
    params = params ? params : dflt;
    if (!params || !strcmp(params, "*"))
        return;
    struct { const char *p; int n; bool need, pos_only; } ps[8];
    int np = 0;
    for (const char *p = params; *p; np++) {
        ps[np].pos_only = *p == '/';
        p += ps[np].pos_only;
        ps[np].p = p;
        ps[np].n = (int)strcspn(p, "! ");
        p += ps[np].n;
        ps[np].need = *p == '!';
        p += ps[np].need;
        p += *p == ' ';
    }
    if (a->npos > np && !np)
        fail_at(&r->f, MOE_EINVAL, line, "%s() takes no arguments (%d given)", name, a->npos);
    if (a->npos > np)
        fail_at(&r->f, MOE_EINVAL, line, "%s() takes at most %d argument%s (%d given)", name, np, np == 1 ? "" : "s",
                a->npos);
    bool given[8] = { false };
    for (int i = 0; i < a->npos; i++) given[i] = true;
    for (int k = 0; k < a->nkw; k++) {
        int i = 0;
        while (i < np && (ps[i].pos_only || (int)strlen(a->names[k]) != ps[i].n ||
                          memcmp(a->names[k], ps[i].p, (size_t)ps[i].n)))
            i++;
        if (i == np)
            fail_at(&r->f, MOE_EINVAL, line, "%s() got an unexpected keyword argument '%s'", name, a->names[k]);
        if (given[i])
            fail_at(&r->f, MOE_EINVAL, line, "%s() got multiple values for argument '%s'", name, a->names[k]);
        given[i] = true;
    }
    for (int i = 0; i < np; i++)
        if (ps[i].need && !given[i])
            fail_at(&r->f, MOE_EINVAL, line, "%s() is missing the argument '%.*s'", name, ps[i].n, ps[i].p);
}

static struct val call_builtin(struct render *r, int fn, const struct args *a, int line)
{
    switch (fn) {
    case FN_RANGE: {
        int64_t start = 0, stop = 0, stepv = 1;
        if (a->npos == 1) {
            stop = arg_int(r, a, 0, NULL, 0, "range", line);
        } else if (a->npos == 2 || a->npos == 3) { /* else refused below */
            start = arg_int(r, a, 0, NULL, 0, "range", line);
            stop = arg_int(r, a, 1, NULL, 0, "range", line);
            stepv = arg_int(r, a, 2, NULL, 1, "range", line);
        }
        if (a->npos < 1 || a->npos > 3 || a->nkw)
            fail_at(&r->f, MOE_EINVAL, line, "range() takes 1 to 3 arguments, none by name");
        if (!stepv)
            fail_at(&r->f, MOE_EINVAL, line, "range() step must not be zero");
        /* in unsigned arithmetic: stop - start may be past int64_t */
        uint64_t span = stepv > 0 ? (stop > start ? (uint64_t)stop - (uint64_t)start : 0)
                                  : (start > stop ? (uint64_t)start - (uint64_t)stop : 0);
        uint64_t by = stepv > 0 ? (uint64_t)stepv : 0 - (uint64_t)stepv, cnt = span ? (span - 1) / by + 1 : 0;
        if (cnt > 100000) /* the sandbox's MAX_RANGE */
            fail_at(&r->f, MOE_ERANGE, line, "range() of %llu items is too long (100000 at most)",
                    (unsigned long long)cnt);
        return new_range(r, start, stop, stepv, (int64_t)cnt);
    }
    case FN_NAMESPACE:
    case FN_DICT: {
        struct dict *d = new_dict(r);
        d->ns = fn == FN_NAMESPACE;
        for (int i = 0; i < a->npos; i++) { /* namespace(a_dict) copies its items */
            if (a->pos[i].t != V_DICT)
                fail_at(&r->f, MOE_EINVAL, line, "%s() takes a dict or names=values",
                        fn == FN_NAMESPACE ? "namespace" : "dict");
            for (size_t k = 0; k < a->pos[i].d->n; k++) {
                struct val key = dict_key(a->pos[i].d, k);
                if (key.t != V_STR && d->ns)
                    fail_at(&r->f, MOE_EINVAL, line, "namespace(): attribute names must be strings, not %s",
                            type_name(&key));
                dict_set_key(r, d, &key, a->pos[i].d->v[k], line);
            }
        }
        for (int i = 0; i < a->nkw; i++) dict_sets(r, d, a->names[i], a->kw[i]);
        return (struct val){ .t = V_DICT, .d = d };
    }
    case FN_CYCLER: case FN_JOINER: {
        static const struct sig sig[] = { { "joiner", "sep" } };
        if (fn == FN_JOINER)
            check_args(r, sig, 1, "joiner", NULL, a, line);
        struct object *o = r_alloc(r, sizeof(*o));
        *o = (struct object){ .kind = fn == FN_CYCLER ? 'c' : 'j' };
        if (fn == FN_CYCLER) {
            if (!a->npos || a->nkw)
                fail_at(&r->f, MOE_EINVAL, line, "cycler() takes one item at least, none by name");
            struct list *l = new_list(r, (size_t)a->npos);
            l->tuple = true;
            for (int i = 0; i < a->npos; i++) l->v[i] = a->pos[i];
            o->items = l;
        } else {
            o->sep = r_alloc(r, sizeof(*o->sep));
            const struct val *sep = arg(a, 0, "sep");
            *o->sep = sep ? *sep : vstr(r, ", ", 2);
        }
        return (struct val){ .t = V_OBJ, .o = o };
    }
    case FN_RAISE: {
        struct buf b = { 0 };
        if (a->npos)
            to_str(r, &b, &a->pos[0], line);
        fail_at(&r->f, MOE_EINVAL, 0, "%s", b.p ? b.p : "raise_exception()");
    }
    case FN_STRFTIME: { /* the Hugging Face library's strftime_now(format) */
        static const struct sig sig[] = { { "strftime_now", "format!" } };
        check_args(r, sig, 1, "strftime_now", NULL, a, line);
        const struct str *fmt = arg_str(r, a, 0, "format", "strftime_now", line);
        char tmp[256] = "";
        time_t now = time(NULL);
        struct tm tm;
        if (fmt && localtime_r(&now, &tm)) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral" /* the template's own format, as Python's strftime */
            if (!strftime(tmp, sizeof(tmp), fmt->p, &tm))
                tmp[0] = 0;
#pragma GCC diagnostic pop
        }
        return vstr(r, tmp, strlen(tmp));
    }
    default: fail_at(&r->f, MOE_EINVAL, line, "not callable");
    }
}

/* A macro called, as Jinja2's Macro.__call__ binds the arguments: positions first, then the names of the
 * parameters left; a body that reads caller, varargs or kwargs takes the call block's macro, the extra
 * positions and the extra names there, else these are errors. */
static struct val call_macro(struct render *r, const struct macro *mc, const struct args *a, int line)
{
    const struct node *m = mc->n;
    if (++r->depth > JJ_MAX_DEPTH)
        fail_at(&r->f, MOE_ERANGE, line, "macros call each other deeper than %d", JJ_MAX_DEPTH);
    if (a->npos > m->nargs && !(m->op & MACRO_VARARGS))
        fail_at(&r->f, MOE_EINVAL, line, "macro '%s' takes not more than %d argument(s), not %d", m->name, m->nargs,
                a->npos);
    /* in the arena: a macro defined in the body keeps this scope after the call returns */
    struct frame *fr = r_alloc(r, sizeof(*fr)), *caller = r->cur;
    *fr = (struct frame){ .up = mc->env };
    bool *used = r_alloc(r, ((size_t)a->nkw + 1) * sizeof(*used));
    int *param = r_alloc(r, ((size_t)a->nkw + 1) * sizeof(*param)); /* the parameter each named argument is for,
                                                                       or -1 */
    memset(used, 0, ((size_t)a->nkw + 1) * sizeof(*used));
    for (int k = 0; k < a->nkw; k++) {
        param[k] = -1;
        for (int i = a->npos; i < m->nargs && param[k] < 0; i++)
            if (!strcmp(a->names[k], m->kwnames[i])) {
                bool taken = false;
                for (int j = 0; j < k; j++)
                    taken |= param[j] == i;
                if (!taken) {
                    param[k] = i;
                    used[k] = true;
                }
            }
    }
    if (m->op & MACRO_CALLER) { /* the {% call %} block's body, else undefined */
        struct val v = vundef(r_str(r, "caller", 6));
        for (int k = 0; k < a->nkw; k++)
            if (!used[k] && !strcmp(a->names[k], "caller")) {
                used[k] = true;
                v = a->kw[k];
            }
        dict_sets(r, &fr->vars, "caller", v);
    }
    if (m->op & MACRO_VARARGS) {
        struct list *l = new_list(r, a->npos > m->nargs ? (size_t)(a->npos - m->nargs) : 0);
        l->tuple = true;
        for (size_t i = 0; i < l->n; i++) l->v[i] = a->pos[(size_t)m->nargs + i];
        dict_sets(r, &fr->vars, "varargs", (struct val){ .t = V_LIST, .l = l });
    }
    struct dict *extra = new_dict(r);
    for (int k = 0; k < a->nkw; k++)
        if (!used[k]) {
            if (!(m->op & MACRO_KWARGS))
                fail_at(&r->f, MOE_EINVAL, line, !strcmp(a->names[k], "caller")
                        ? "macro '%s' is called by a {%% call %%} block but does not use caller()"
                        : "macro '%s' takes no keyword argument '%s'", m->name, a->names[k]);
            dict_sets(r, extra, a->names[k], a->kw[k]);
        }
    if (m->op & MACRO_KWARGS)
        dict_sets(r, &fr->vars, "kwargs", (struct val){ .t = V_DICT, .d = extra });
    const struct macro *calling = r->macro;
    r->macro = mc;
    r->cur = fr; /* defaults are evaluated in the macro's scope, where the parameters before them are set */
    for (int i = 0; i < m->nargs; i++) {
        const struct val *v = i < a->npos ? &a->pos[i] : NULL;
        for (int k = 0; k < a->nkw; k++)
            if (param[k] == i)
                v = &a->kw[k];
        const char *p = m->kwnames[i];
        struct val x = v ? *v : m->args[i] ? eval(r, m->args[i]) : vundef(r_str(r, p, strlen(p)));
        dict_sets(r, &fr->vars, p, x);
    }
    r->cur = caller;
    struct buf out = { 0 };
    buf_add(r, &out, "", 0);
    exec(r, fr, m->b, &out);
    r->macro = calling;
    r->depth--;
    return vbuf(r, &out);
}

/* What Python's getattr(obj, name) finds for Jinja2's immutable sandbox, which obj.name tries before
 * obj['name']: 1 a method (of a string, a dict, a list or a loop), 2 one that would change obj (refused
 * there: undefined), 0 none (the item is looked up). */
static int method_kind(const struct val *obj, const char *name)
{
    static const char *const str_methods[] = {
        "capitalize", "casefold", "center", "count", "encode", "endswith", "expandtabs", "find", "format",
        "format_map", "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower",
        "isnumeric", "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "maketrans",
        "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit",
        "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title", "translate", "upper", "zfill",
    };
    static const char *const dict_methods[] = { "copy", "fromkeys", "get", "items", "keys", "values" };
    static const char *const dict_changes[] = { "clear", "pop", "popitem", "setdefault", "update" };
    static const char *const list_methods[] = { "copy", "count", "index" };
    static const char *const list_changes[] = { "append", "clear", "extend", "insert", "pop", "remove", "reverse",
                                                "sort" };
    static const char *const loop_methods[] = { "changed", "cycle" };
    static const char *const cycler_methods[] = { "next", "reset" };
    static const char *const int_methods[] = { "as_integer_ratio", "bit_count", "bit_length", "conjugate" };
    static const char *const float_methods[] = { "as_integer_ratio", "conjugate", "is_integer" };
    switch (obj->t) {
    case V_INT:
    case V_BOOL: return in_list(int_methods, MOE_ARRAY_LEN(int_methods), name);
    case V_FLOAT: return in_list(float_methods, MOE_ARRAY_LEN(float_methods), name);
    case V_STR: return in_list(str_methods, MOE_ARRAY_LEN(str_methods), name);
    case V_LIST:
        if (obj->l->gen || obj->l->view) /* a generator, a dict's view: none of these */
            return 0;
        if (obj->l->tuple || obj->l->range)
            return strcmp(name, "count") && strcmp(name, "index") ? 0 : 1;
        return in_list(list_methods, MOE_ARRAY_LEN(list_methods), name) ? 1
             : in_list(list_changes, MOE_ARRAY_LEN(list_changes), name) ? 2 : 0;
    case V_DICT:
        if (obj->d->loop)
            return in_list(loop_methods, MOE_ARRAY_LEN(loop_methods), name);
        if (obj->d->ns)
            return 0;
        return in_list(dict_methods, MOE_ARRAY_LEN(dict_methods), name) ? 1
             : in_list(dict_changes, MOE_ARRAY_LEN(dict_changes), name) ? 2 : 0;
    case V_OBJ: return obj->o->kind == 'c' && in_list(cycler_methods, MOE_ARRAY_LEN(cycler_methods), name);
    default: return 0;
    }
}

/* obj.name, a method of obj (method_kind 1) not called yet. */
static struct val bound_method(struct render *r, const struct val *obj, const char *name)
{
    struct bound *bm = r_alloc(r, sizeof(*bm));
    *bm = (struct bound){ .self = *obj, .name = name };
    return (struct val){ .t = V_METHOD, .bm = bm };
}

/* The optional start and end of str.find(sub, start, end) and its kin (list.index too), arguments i and
 * i + 1 (none: all len items), as Python adjusts them (negative from the end, end clamped; *cs may be past
 * the end); str_span: in the characters of s, and *bs, *be in its bytes. */
static void span_args(struct render *r, const struct args *a, int i, int64_t len, const char *name, int line,
                      int64_t *cs, int64_t *ce)
{
    int64_t v[2] = { 0, len };
    for (int k = 0; k < 2; k++) {
        const struct val *x = arg(a, i + k, NULL);
        if (!x || x->t == V_NONE)
            continue;
        if (x->t != V_INT && x->t != V_BOOL)
            fail_at(&r->f, MOE_EINVAL, line, "%s: slice indices must be integers or none, not %s", name, type_name(x));
        v[k] = inum(x);
        if (v[k] < 0)
            v[k] = v[k] + len < 0 ? 0 : v[k] + len;
    }
    *cs = v[0];
    *ce = v[1] > len ? len : v[1];
}

static void str_span(struct render *r, const struct str *s, const struct args *a, int i, const char *name, int line,
                     int64_t *cs, int64_t *ce, size_t *bs, size_t *be)
{
    int64_t len = (int64_t)cp_count(s);
    span_args(r, a, i, len, name, line, cs, ce);
    *bs = *cs <= len ? cp_offset(s, (size_t)*cs) : s->n;
    *be = cp_offset(s, (size_t)*ce);
}

static struct val str_format(struct render *r, const struct val *s, const char *name, const struct args *a,
                             int line);

/* The methods of an int (a bool too) and a float that method_kind names, called. */
static struct val num_method(struct render *r, const struct val *x, const char *name, int line)
{
    bool fl = x->t == V_FLOAT;
    if (!strcmp(name, "conjugate"))
        return fl ? *x : vint(inum(x));
    if (!strcmp(name, "is_integer"))
        return vbool(isfinite(x->f) && x->f == floor(x->f));
    int64_t num = fl ? 0 : inum(x), den = 1;
    uint64_t mag = num < 0 ? 0 - (uint64_t)num : (uint64_t)num;
    if (!strcmp(name, "bit_length"))
        return vint(mag ? 64 - __builtin_clzll(mag) : 0);
    if (!strcmp(name, "bit_count"))
        return vint(__builtin_popcountll(mag));
    if (fl) { /* as_integer_ratio: the exact fraction in lowest terms, a power of two below */
        if (!isfinite(x->f))
            fail_at(&r->f, MOE_EINVAL, line, "cannot convert %s to integer ratio", isnan(x->f) ? "NaN" : "Infinity");
        int e;
        double m = frexp(x->f, &e);
        for (; m != floor(m); e--) m *= 2;
        if (fabs(ldexp(m, e > 0 ? e : 0)) >= 0x1p63 || e < -62)
            fail_at(&r->f, MOE_ERANGE, line, "as_integer_ratio: the numerator or denominator of %.17g is past 64 "
                    "bits", x->f);
        num = (int64_t)ldexp(m, e > 0 ? e : 0);
        den = e < 0 ? (int64_t)1 << -e : 1;
    }
    struct list *l = new_list(r, 2);
    l->tuple = true;
    l->v[0] = vint(num);
    l->v[1] = vint(den);
    return (struct val){ .t = V_LIST, .l = l };
}

/* obj.name(args): the string, dict and loop methods. */
static struct val call_method(struct render *r, const struct val *obj, const char *name, const struct args *a,
                              int line)
{
    if (obj->t == V_STR)
        check_args(r, STR_METHOD_SIGS, MOE_ARRAY_LEN(STR_METHOD_SIGS), name, NULL, a, line);
    else if (obj->t == V_LIST)
        check_args(r, LIST_METHOD_SIGS, MOE_ARRAY_LEN(LIST_METHOD_SIGS), name, NULL, a, line);
    else if (obj->t == V_DICT && !obj->d->loop)
        check_args(r, DICT_METHOD_SIGS, MOE_ARRAY_LEN(DICT_METHOD_SIGS), name, NULL, a, line);
    else if (is_num(obj) || obj->t == V_OBJ)
        check_args(r, NULL, 0, name, "", a, line); /* none takes arguments */
    if (is_num(obj))
        return num_method(r, obj, name, line);
    if (obj->t == V_OBJ) { /* a cycler's next() (its current item, then it moves on) or reset() */
        struct object *o = obj->o;
        size_t at = o->pos;
        o->pos = name[0] == 'n' ? (at + 1) % o->items->n : 0;
        return name[0] == 'n' ? o->items->v[at] : (struct val){ .t = V_NONE };
    }
    if (obj->t == V_STR) {
        const struct str *s = obj->s;
        if (!strcmp(name, "format") || !strcmp(name, "format_map"))
            return str_format(r, obj, name, a, line);
        if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
            const struct val *p = arg(a, 0, NULL);
            bool start = name[0] == 's';
            int64_t cs, ce;
            size_t bs, be;
            str_span(r, s, a, 1, name, line, &cs, &ce, &bs, &be);
            const struct val *cands = p;
            size_t nc = 1;
            if (p && p->t == V_LIST) {
                if (!p->l->tuple)
                    fail_at(&r->f, MOE_EINVAL, line, "%s: the argument must be a string or a tuple of strings", name);
                cands = p->l->v;
                nc = p->l->n;
            }
            for (size_t i = 0; p && i < nc; i++) {
                if (cands[i].t != V_STR)
                    fail_at(&r->f, MOE_EINVAL, line, "%s: the argument must be a string", name);
                const struct str *x = cands[i].s; /* within s[cs:ce], as Python's tailmatch */
                if (ce - cs >= (int64_t)cp_count(x) && x->n <= be - bs &&
                    !memcmp(start ? s->p + bs : s->p + be - x->n, x->p, x->n))
                    return vbool(true);
            }
            if (!p)
                fail_at(&r->f, MOE_EINVAL, line, "%s() needs an argument", name);
            return vbool(false);
        }
        /* a Markup's methods give Markups (its string arguments escaped), but removeprefix and removesuffix */
        if (!strcmp(name, "strip") || !strcmp(name, "lstrip") || !strcmp(name, "rstrip"))
            return as_markup(strip(r, s, markup_arg(r, obj, arg_str(r, a, 0, "chars", name, line), line),
                                   name[0] == 'l' ? 1 : name[0] == 'r' ? 2 : 3), obj->markup);
        if (!strcmp(name, "split") || !strcmp(name, "rsplit")) {
            const struct str *sep = arg_str(r, a, 0, "sep", name, line);
            if (sep && !sep->n)
                fail_at(&r->f, MOE_EINVAL, line, "%s: empty separator", name);
            int64_t maxsplit = arg_int(r, a, 1, "maxsplit", -1, name, line);
            struct val l = name[0] == 'r' ? rsplit(r, s, sep, maxsplit) : split(r, s, sep, maxsplit);
            for (size_t i = 0; i < l.l->n; i++) l.l->v[i] = as_markup(l.l->v[i], obj->markup);
            return l;
        }
        if (!strcmp(name, "splitlines")) { /* at Python's line breaks; with keepends, each line keeps its own */
            const struct val *ke = arg(a, 0, "keepends");
            bool keep = ke && truthy(ke);
            struct list *l = new_list(r, 0);
            size_t cap = 0;
            for (size_t i = 0, start = 0, brk; start < s->n; i += brk, start = i) {
                while (i < s->n && !(brk = line_break(s->p + i, s->n - i)))
                    i++;
                if (i >= s->n)
                    brk = 0;
                if (l->n == cap) {
                    struct val *w = r_alloc(r, (cap = cap ? 2 * cap : 8) * sizeof(*w));
                    if (l->n)
                        memcpy(w, l->v, l->n * sizeof(*w));
                    l->v = w;
                }
                l->v[l->n++] = as_markup(vstr(r, s->p + start, i - start + (keep ? brk : 0)), obj->markup);
            }
            return (struct val){ .t = V_LIST, .l = l };
        }
        if (!strcmp(name, "removeprefix") || !strcmp(name, "removesuffix")) {
            const struct str *x = arg_str(r, a, 0, NULL, name, line);
            if (!x)
                fail_at(&r->f, MOE_EINVAL, line, "%s() needs a string", name);
            bool pre = name[6] == 'p';
            if (x->n <= s->n && !memcmp(pre ? s->p : s->p + s->n - x->n, x->p, x->n))
                return vstr(r, s->p + (pre ? x->n : 0), s->n - x->n);
            return as_markup(*obj, false);
        }
        if (!strcmp(name, "lower") || !strcmp(name, "upper") || !strcmp(name, "title") || !strcmp(name, "capitalize"))
            return as_markup(str_case(r, s, name[0] == 'l' ? CASE_LOWER : name[0] == 'u' ? CASE_UPPER
                                           : name[0] == 't' ? CASE_TITLE : CASE_CAPITALIZE), obj->markup);
        if (!strcmp(name, "replace")) {
            const struct str *o = arg_str(r, a, 0, NULL, name, line), *nw = arg_str(r, a, 1, NULL, name, line);
            if (!o || !nw)
                fail_at(&r->f, MOE_EINVAL, line, "replace() needs two strings");
            return as_markup(replace(r, s, markup_arg(r, obj, o, line), markup_arg(r, obj, nw, line),
                                     arg_int(r, a, 2, "count", -1, name, line)), obj->markup);
        }
        if (!strcmp(name, "join")) { /* sep.join(strings) */
            const struct val *it = arg(a, 0, NULL);
            if (!it)
                fail_at(&r->f, MOE_EINVAL, line, "join() needs an iterable");
            const struct list *l = iter_list(r, it, line);
            struct buf b = { 0 };
            buf_add(r, &b, "", 0);
            for (size_t i = 0; i < l->n; i++) {
                struct val x = obj->markup ? html_escape(r, &l->v[i], line) : l->v[i]; /* a Markup's: any item */
                if (x.t != V_STR)
                    fail_at(&r->f, MOE_EINVAL, line, "join(): item %zu is %s %s, not a string",
                            i, article(type_name(&x)), type_name(&x));
                if (i)
                    buf_add(r, &b, s->p, s->n);
                buf_add(r, &b, x.s->p, x.s->n);
            }
            return as_markup(vbuf(r, &b), obj->markup);
        }
        if (!strcmp(name, "find") || !strcmp(name, "rfind") || !strcmp(name, "index") || !strcmp(name, "rindex") ||
            !strcmp(name, "count")) {
            const struct str *x = arg_str(r, a, 0, NULL, name, line);
            if (!x)
                fail_at(&r->f, MOE_EINVAL, line, "%s() needs a string", name);
            int64_t cs, ce; /* in s[cs:ce] (start and end arguments), as Python searches */
            size_t bs, be;
            str_span(r, s, a, 1, name, line, &cs, &ce, &bs, &be);
            bool fits = ce - cs >= (int64_t)cp_count(x) && x->n <= be - bs;
            if (strcmp(name, "count")) { /* the first (or, r..., the last) place of x, in characters */
                const char *hit = fits ? (name[0] == 'r' ? rfind_bytes : find_bytes)(s->p + bs, be - bs, x->p, x->n)
                                       : NULL;
                if (!hit && strstr(name, "index"))
                    fail_at(&r->f, MOE_EINVAL, line, "%s: substring not found", name);
                return vint(hit ? (int64_t)utf8_count(s->p, (size_t)(hit - s->p)) : -1);
            }
            if (!fits)
                return vint(0);
            if (!x->n)
                return vint(ce - cs + 1);
            int64_t k = 0;
            for (const char *q = s->p + bs; (q = find_bytes(q, be - (size_t)(q - s->p), x->p, x->n)); q += x->n) k++;
            return vint(k);
        }
        if (!strncmp(name, "is", 2))
            return vbool(str_is(s, name));
        if (!strcmp(name, "swapcase") || !strcmp(name, "casefold")) /* a Markup's casefold() is a str */
            return as_markup(str_case(r, s, name[0] == 's' ? CASE_SWAP : CASE_FOLD), obj->markup && name[0] == 's');
        if (!strcmp(name, "ljust") || !strcmp(name, "rjust") || !strcmp(name, "center")) {
            const struct val *w = arg(a, 0, NULL);
            if (w->t != V_INT && w->t != V_BOOL)
                fail_at(&r->f, MOE_EINVAL, line, "%s: the width must be an integer, not %s", name, type_name(w));
            const struct str *fill = markup_arg(r, obj, arg_str(r, a, 1, NULL, name, line), line);
            if (fill && utf8_count(fill->p, fill->n) != 1)
                fail_at(&r->f, MOE_EINVAL, line, "%s: the fill character must be exactly one character long", name);
            return str_pad(r, obj, inum(w), fill, name[0]);
        }
        if (!strcmp(name, "zfill")) { /* '0's on the left, after a leading sign */
            int64_t width = arg_int(r, a, 0, NULL, 0, name, line), len = (int64_t)cp_count(s);
            if (width <= len)
                return *obj;
            struct buf b = { 0 };
            bool sign = s->n && (s->p[0] == '+' || s->p[0] == '-');
            buf_add(r, &b, s->p, sign);
            buf_fill(r, &b, '0', (size_t)(width - len)); /* the output bound stops a huge one */
            buf_add(r, &b, s->p + sign, s->n - sign);
            return as_markup(vbuf(r, &b), obj->markup);
        }
        if (!strcmp(name, "partition") || !strcmp(name, "rpartition")) { /* (before, sep, after) at the first or
                                                                           last sep; not found: s at the end */
            const struct str *sep = markup_arg(r, obj, arg_str(r, a, 0, NULL, name, line), line);
            if (!sep)
                fail_at(&r->f, MOE_EINVAL, line, "%s: the separator must be a string, not none", name);
            if (!sep->n)
                fail_at(&r->f, MOE_EINVAL, line, "%s: empty separator", name);
            bool rev = name[0] == 'r';
            const char *hit = (rev ? rfind_bytes : find_bytes)(s->p, s->n, sep->p, sep->n);
            size_t at = hit ? (size_t)(hit - s->p) : rev ? 0 : s->n;
            struct list *l = new_list(r, 3);
            l->tuple = true;
            l->v[0] = as_markup(vstr(r, s->p, at), obj->markup);
            l->v[1] = as_markup(vstr(r, hit ? sep->p : "", hit ? sep->n : 0), obj->markup);
            l->v[2] = as_markup(hit ? vstr(r, hit + sep->n, s->n - at - sep->n) : rev ? *obj : vstr(r, "", 0),
                                obj->markup);
            return (struct val){ .t = V_LIST, .l = l };
        }
        if (!strcmp(name, "expandtabs")) { /* each tab to the next column a multiple of tabsize (none if <= 0) */
            int64_t tab = arg_int(r, a, 0, "tabsize", 8, name, line), col = 0;
            struct buf b = { 0 };
            buf_add(r, &b, "", 0);
            uint32_t cp;
            for (size_t i = 0, n; i < s->n; i += n) {
                n = str_cp(s, i, &cp);
                if (cp == '\t' && tab > 0) {
                    buf_fill(r, &b, ' ', (size_t)(tab - col % tab));
                    col += tab - col % tab;
                } else if (cp != '\t') {
                    buf_add(r, &b, s->p + i, n);
                    col = cp == '\n' || cp == '\r' ? 0 : col + 1;
                }
            }
            return as_markup(vbuf(r, &b), obj->markup);
        }
        if (!strcmp(name, "encode") || !strcmp(name, "translate") || !strcmp(name, "maketrans"))
            fail_at(&r->f, MOE_ENOTSUP, line, "the string method %s() is not supported (it needs bytes or a "
                    "translation table): write the template without it", name);
    } else if (obj->t == V_LIST && !obj->l->gen && !strcmp(name, "copy")) { /* a new list of the same items */
        struct list *l = new_list(r, obj->l->n);
        if (obj->l->n)
            memcpy(l->v, obj->l->v, obj->l->n * sizeof(*l->v));
        return (struct val){ .t = V_LIST, .l = l };
    } else if (obj->t == V_LIST && !obj->l->gen && (!strcmp(name, "index") || !strcmp(name, "count"))) {
        const struct val *x = arg(a, 0, NULL);
        if (!x)
            fail_at(&r->f, MOE_EINVAL, line, "%s() needs a value", name);
        int64_t k = 0, from = 0, to = (int64_t)obj->l->n;
        if (name[0] == 'i') /* index(x, start, stop) */
            span_args(r, a, 1, to, name, line, &from, &to);
        for (size_t i = (size_t)from; (int64_t)i < to; i++)
            if (equal(r, &obj->l->v[i], x)) {
                if (name[0] == 'i')
                    return vint((int64_t)i);
                k++;
            }
        if (name[0] == 'i')
            fail_at(&r->f, MOE_EINVAL, line, "index: the value is not in the %s", obj->l->tuple ? "tuple" : "list");
        return vint(k);
    } else if (obj->t == V_DICT && !obj->d->ns) {
        const struct dict *d = obj->d;
        if (!strcmp(name, "copy") || !strcmp(name, "fromkeys")) { /* a new dict: d's items, or the keys given */
            struct dict *nd = new_dict(r);
            const struct list *keys = name[0] == 'f' ? iter_list(r, arg(a, 0, NULL), line) : NULL;
            const struct val *v = arg(a, 1, NULL);
            for (size_t i = 0; i < (keys ? keys->n : d->n); i++) {
                struct val k = keys ? keys->v[i] : dict_key(d, i);
                dict_set_key(r, nd, &k, keys ? (v ? *v : (struct val){ .t = V_NONE }) : d->v[i], line);
            }
            return (struct val){ .t = V_DICT, .d = nd };
        }
        if (!strcmp(name, "items") || !strcmp(name, "keys") || !strcmp(name, "values")) {
            struct list *l = new_list(r, d->n);
            for (size_t i = 0; i < d->n; i++) {
                struct val k = dict_key(d, i);
                if (name[0] == 'i') { /* (key, value) tuples, as Python prints them */
                    struct list *p = new_list(r, 2);
                    p->tuple = true;
                    p->v[0] = k;
                    p->v[1] = d->v[i];
                    l->v[i] = (struct val){ .t = V_LIST, .l = p };
                } else {
                    l->v[i] = name[0] == 'k' ? k : d->v[i];
                }
            }
            l->view = name[0];
            return (struct val){ .t = V_LIST, .l = l };
        }
        if (!strcmp(name, "get")) {
            const struct val *k = arg(a, 0, NULL), *dflt = arg(a, 1, NULL);
            if (k && !hashable(r, k, line))
                fail_at(&r->f, MOE_EINVAL, line, "get: %s %s cannot be a key (a list or dict)",
                        article(type_name(k)), type_name(k));
            const struct val *v = k ? dict_find(r, d, k, line) : NULL;
            return v ? *v : dflt ? *dflt : (struct val){ .t = V_NONE };
        }
        if (d->loop && !strcmp(name, "cycle")) {
            if (!a->npos || a->nkw)
                fail_at(&r->f, MOE_EINVAL, line, "loop.cycle() needs arguments, none by name");
            const struct val *i0 = dict_get(d, "index0", 6);
            return a->pos[i0 ? inum(i0) % a->npos : 0];
        }
        if (d->loop && !strcmp(name, "changed")) { /* true when called first or with other values than last */
            if (a->nkw)
                fail_at(&r->f, MOE_EINVAL, line, "loop.changed() takes no keyword arguments");
            struct list *l = new_list(r, (size_t)a->npos);
            l->tuple = true;
            for (int i = 0; i < a->npos; i++) l->v[i] = a->pos[i];
            struct val now = { .t = V_LIST, .l = l };
            if (d->changed->t != V_UNDEF && equal(r, d->changed, &now))
                return vbool(false);
            *d->changed = now;
            r->escapes++; /* kept past this iteration */
            return vbool(true);
        }
    }
    fail_at(&r->f, MOE_ENOTSUP, line, "%s %s has no method '%s' here", article(type_name(obj)), type_name(obj), name);
}

static void for_level(struct render *r, struct frame *fr, const struct node *n, const struct val *it, int depth,
                      struct buf *out);

/* loop(items) in a recursive for loop: its body run over items one level deeper, as text. */
static struct val call_loop(struct render *r, const struct dict *loop, const struct args *a, int line)
{
    if (!loop->rec)
        fail_at(&r->f, MOE_EINVAL, line, "the loop must have the 'recursive' marker to be called recursively");
    static const struct sig sig[] = { { "loop", "iterable!" } };
    check_args(r, sig, 1, "loop", NULL, a, line);
    const struct val *depth0 = dict_get(loop, "depth0", 6);
    if (++r->depth > JJ_MAX_DEPTH)
        fail_at(&r->f, MOE_ERANGE, line, "a recursive loop goes deeper than %d (or macros and it together)",
                JJ_MAX_DEPTH);
    struct buf b = { 0 };
    buf_add(r, &b, "", 0);
    int saved_flow = r->flow;
    struct frame *saved_cur = r->cur;
    for_level(r, loop->rec_fr, loop->rec, arg(a, 0, "iterable"), (int)inum(depth0) + 1, &b);
    r->flow = saved_flow;
    r->cur = saved_cur;
    r->depth--;
    return vbuf(r, &b);
}

/* f(args) */
static struct val call_value(struct render *r, const struct val *f, const struct args *a, int line)
{
    if (f->t == V_FUNC)
        return call_builtin(r, f->fn, a, line);
    if (f->t == V_MACRO)
        return call_macro(r, f->macro, a, line);
    if (f->t == V_METHOD)
        return call_method(r, &f->bm->self, f->bm->name, a, line);
    if (f->t == V_DICT && f->d->loop)
        return call_loop(r, f->d, a, line);
    if (f->t == V_OBJ && f->o->kind == 'j') { /* "" the first time, then sep */
        check_args(r, NULL, 0, "joiner", "", a, line);
        bool used = f->o->used;
        f->o->used = true;
        return used ? *f->o->sep : vstr(r, "", 0);
    }
    if (f->t == V_UNDEF)
        undefined_error(r, f, line);
    fail_at(&r->f, MOE_EINVAL, line, "%s %s is not callable", article(type_name(f)), type_name(f));
}

static struct val call(struct render *r, const struct node *n)
{
    struct args a;
    if (n->a->k == E_ATTR) { /* a method wins over an item of the same name, as attributes do in Jinja2 */
        struct val obj = eval(r, n->a->a);
        const char *m = n->a->name;
        int kind = method_kind(&obj, m);
        if (kind == 2)
            fail_at(&r->f, MOE_EINVAL, n->line, "access to the method '%s' of %s %s is unsafe (a template cannot "
                    "change a value)", m, article(type_name(&obj)), type_name(&obj));
        if (kind) {
            eval_args(r, n, &a);
            return call_method(r, &obj, m, &a, n->line);
        }
    }
    struct val f = eval(r, n->a);
    eval_args(r, n, &a);
    return call_value(r, &f, &a, n->line);
}

static int64_t length(struct render *r, const struct val *v, int line)
{
    switch (v->t) {
    case V_STR: return (int64_t)cp_count(v->s);
    case V_LIST:
        if (v->l->gen)
            fail_at(&r->f, MOE_EINVAL, line, "a generator has no length (apply |list first)");
        return (int64_t)v->l->n;
    case V_DICT: return (int64_t)v->d->n;
    case V_UNDEF: return 0;
    default: fail_at(&r->f, MOE_EINVAL, line, "%s %s has no length", article(type_name(v)), type_name(v));
    }
}

/* v's attribute path of a filter (Jinja2's make_attrgetter): an integer, one index; or a string of
 * parts split at '.', a part of digits an index (into a list or a string, not a dict's key "0") and
 * any other a key, each looked up as v[part] is (an undefined value on the way fails).  With dflt
 * (map's default=), an undefined result of a part becomes dflt. */
static struct val attr_path(struct render *r, const struct val *v, const struct val *path, const struct val *dflt,
                            int line)
{
    struct val cur = *v;
    if (path->t != V_STR) {
        cur = get_item(r, &cur, path, line);
        return dflt && cur.t == V_UNDEF ? *dflt : cur;
    }
    const char *p = path->s->p, *end = p + path->s->n;
    for (;;) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        size_t n = dot ? (size_t)(dot - p) : (size_t)(end - p), k = 0;
        int64_t index = 0;
        for (; k < n && is_digit(p[k]); k++)
            index = index > (INT64_MAX - 9) / 10 ? INT64_MAX : index * 10 + (p[k] - '0'); /* past any length */
        struct val key = n && k == n ? vint(index) : vstr(r, p, n);
        cur = get_item(r, &cur, &key, line);
        if (dflt && cur.t == V_UNDEF)
            cur = *dflt;
        if (!dot)
            return cur;
        p = dot + 1;
    }
}

/* ---- render: printf-style formatting ------------------------------------------------ */

/* Where fmt % args takes its values from, as CPython's PyUnicode_Format walks them: the items of a
 * tuple, else args itself, once (len -1); after a %(key), the mapping's item under key. */
struct pct_args {
    const struct val *args;
    const struct val *dict; /* args when it is a mapping to Python: a dict, a list or undefined */
    struct val keyed;       /* the mapping's item named by the last %(key) */
    int64_t len, idx;
};

static const struct val *pct_next(struct render *r, struct pct_args *pa, int line)
{
    if (pa->idx >= pa->len)
        fail_at(&r->f, MOE_EINVAL, line, "not enough arguments for format string");
    pa->idx++;
    return pa->len < 0 ? pa->args : &pa->args->l->v[pa->idx - 1];
}

/* The integer of v for the conversion conv (d, i, u, x, X, o, c, or '*' for a width or precision). */
static int64_t pct_int(struct render *r, const struct val *v, char conv, int line)
{
    if (v->t == V_UNDEF)
        undefined_error(r, v, line);
    if (v->t == V_INT || v->t == V_BOOL)
        return inum(v);
    if (v->t == V_FLOAT && (conv == 'd' || conv == 'i' || conv == 'u')) /* int(): toward zero */
        return (int64_t)v->f; /* |f| < 2^63 here (pct_convert writes the others) */
    if (conv == '*')
        fail_at(&r->f, MOE_EINVAL, line, "* wants int");
    if (conv == 'c')
        fail_at(&r->f, MOE_EINVAL, line, "%%c requires int or char");
    fail_at(&r->f, MOE_EINVAL, line, "%%%c format: %s is required, not %s", conv,
            conv == 'd' || conv == 'i' || conv == 'u' ? "a real number" : "an integer", type_name(v));
}

/* Python's str() (conv 's'), repr() ('r') or ascii() ('a': repr() with what is not ASCII escaped) of v, as
 * the % operator's and str.format's conversions give it. */
static struct val py_convert(struct render *r, char conv, const struct val *v, int line)
{
    struct buf t = { 0 };
    buf_add(r, &t, "", 0);
    if (conv == 's')
        to_str(r, &t, v, line);
    else
        repr(r, &t, v, line);
    struct val s = vbuf(r, &t);
    if (conv != 'a')
        return s;
    struct buf asc = { 0 };
    buf_add(r, &asc, "", 0);
    for (size_t i = 0; i < s.s->n;) {
        uint32_t cp;
        size_t l = str_cp(s.s, i, &cp);
        if (cp < 0x80)
            buf_add(r, &asc, s.s->p + i, l);
        else
            py_escape_cp(r, &asc, cp);
        i += l;
    }
    return vbuf(r, &asc);
}

/* The text of one conversion into body, before width and sign: false when it is not a number's.  In a
 * Markup's format (markup), the text of s, r and a is escaped unless a Markup's own (s), as markupsafe's
 * argument wrapper gives it, and the wrapper has no integer for x, X, o and c. */
static bool pct_convert(struct render *r, struct buf *body, char conv, const struct val *v, bool alt, int64_t prec,
                        bool markup, int line)
{
    if (markup && strchr("xXoc", conv))
        fail_at(&r->f, MOE_EINVAL, line, "%%%c format: an integer is required, not a Markup's argument", conv);
    switch (conv) {
    case 's': case 'r': case 'a': {
        struct val t = py_convert(r, conv, v, line);
        if (markup && !(conv == 's' && v->t == V_STR && v->markup))
            t = html_escape(r, &t, line);
        buf_add(r, body, t.s->p, prec >= 0 ? utf8_offset(t.s->p, t.s->n, (size_t)prec) : t.s->n); /* prec chars */
        return false;
    }
    case 'c': {
        if (v->t == V_STR && cp_count(v->s) == 1) {
            buf_add(r, body, v->s->p, v->s->n);
            return false;
        }
        int64_t c = pct_int(r, v->t == V_STR ? &(struct val){ .t = V_NONE } : v, 'c', line);
        if (c < 0 || c > 0x10ffff)
            fail_at(&r->f, MOE_EINVAL, line, "%%c arg not in range(0x110000)");
        if (c >= 0xd800 && c <= 0xdfff)
            fail_at(&r->f, MOE_ENOTSUP, line, "%%c of a surrogate (0x%llx) has no UTF-8", (long long)c);
        char enc[4];
        buf_add(r, body, enc, moe_utf8_put((uint32_t)c, enc));
        return false;
    }
    case 'd': case 'i': case 'u': case 'x': case 'X': case 'o': {
        if (v->t == V_FLOAT && strchr("diu", conv) && !(fabs(v->f) < 0x1p63)) { /* an integer past 64 bits */
            if (!isfinite(v->f))
                fail_at(&r->f, MOE_EINVAL, line, "cannot convert float %s to integer",
                        isnan(v->f) ? "NaN" : "infinity");
            char t[400];
            int n = snprintf(t, sizeof(t), "%.0f", v->f); /* exact: a float this large is an integer */
            bool neg = t[0] == '-';
            if (neg)
                buf_adds(r, body, "-");
            if (prec > n - neg)
                buf_fill(r, body, '0', (size_t)(prec - (n - neg)));
            buf_add(r, body, t + neg, (size_t)(n - neg));
            return true;
        }
        int64_t x = pct_int(r, v, conv, line);
        uint64_t mag = x < 0 ? (uint64_t)0 - (uint64_t)x : (uint64_t)x;
        unsigned base = conv == 'o' ? 8 : conv == 'x' || conv == 'X' ? 16 : 10;
        const char *digs = conv == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
        char d[24];
        int nd = 0;
        do {
            d[nd++] = digs[mag % base];
            mag /= base;
        } while (mag);
        if (x < 0)
            buf_adds(r, body, "-");
        if (alt && base != 10) /* 0x, 0X, 0o */
            buf_add(r, body, conv == 'o' ? "0o" : conv == 'x' ? "0x" : "0X", 2);
        if (prec > nd)
            buf_fill(r, body, '0', (size_t)(prec - nd));
        while (nd)
            buf_add(r, body, &d[--nd], 1);
        return true;
    }
    case 'e': case 'E': case 'f': case 'F': case 'g': case 'G': {
        if (v->t == V_UNDEF)
            undefined_error(r, v, line);
        if (!is_num(v))
            fail_at(&r->f, MOE_EINVAL, line, "must be real number, not %s", type_name(v));
        double x = num(v);
        bool upper = conv == 'E' || conv == 'F' || conv == 'G';
        if (!isfinite(x)) { /* Python's words, and no sign on a NaN */
            buf_adds(r, body, isnan(x) ? (upper ? "NAN" : "nan") : x < 0 ? (upper ? "-INF" : "-inf")
                                                                        : (upper ? "INF" : "inf"));
            return true;
        }
        char spec[8];
        snprintf(spec, sizeof(spec), "%%%s.*%c", alt ? "#" : "", conv);
        int pr = prec < 0 ? 6 : (int)prec;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral" /* one of the six float conversions, built above */
        int len = snprintf(NULL, 0, spec, pr, x);
        if (len < 0 || (size_t)len > MOE_JINJA_MAX_OUTPUT)
            fail_at(&r->f, MOE_ERANGE, line, "output longer than %u bytes", MOE_JINJA_MAX_OUTPUT);
        char *t = r_alloc(r, (size_t)len + 1);
        snprintf(t, (size_t)len + 1, spec, pr, x);
#pragma GCC diagnostic pop
        buf_add(r, body, t, (size_t)len);
        return true;
    }
    default: return false;
    }
}

/* fmt % args: Python's printf-style formatting (conversions s r a c d i u x X o e E f F g G, flags
 * - + space # 0, width and precision, * for either, %(key) taking the value from a mapping), as
 * Jinja2's % on a string and its format filter run it. */
static struct val pct_format(struct render *r, const struct val *fmtv, const struct val *args, int line)
{
    const struct str *fmt = fmtv->s;
    struct pct_args pa = { .args = args, .len = -1, .idx = -2 };
    if (args->t == V_LIST && args->l->tuple) {
        pa.len = (int64_t)args->l->n;
        pa.idx = 0;
    } else if (args->t == V_UNDEF || (args->t == V_LIST && !args->l->gen) ||
               (args->t == V_DICT && !args->d->ns && !args->d->loop)) {
        pa.dict = args;
    }
    struct buf out = { 0 }, body = { 0 };
    buf_add(r, &out, "", 0);
    const char *p = fmt->p, *end = fmt->p + fmt->n;
    for (const char *pc; p < end; p++) {
        pc = memchr(p, '%', (size_t)(end - p));
        buf_add(r, &out, p, (size_t)((pc ? pc : end) - p));
        if (!pc)
            break;
        p = pc + 1;
        if (p < end && *p == '%') {
            buf_adds(r, &out, "%");
            continue;
        }
        if (p < end && *p == '(') { /* %(key): the mapping's item */
            const char *k = ++p;
            for (int open = 1; p < end && (open += (*p == '(') - (*p == ')')) > 0;)
                p++;
            if (p >= end)
                fail_at(&r->f, MOE_EINVAL, line, "incomplete format key");
            if (!pa.dict)
                fail_at(&r->f, MOE_EINVAL, line, "format requires a mapping");
            if (pa.dict->t == V_UNDEF)
                undefined_error(r, pa.dict, line);
            const struct val *v = pa.dict->t == V_DICT ? dict_get(pa.dict->d, k, (size_t)(p - k)) : NULL;
            if (!v)
                fail_at(&r->f, MOE_EINVAL, line, "format: %s '%.*s'", pa.dict->t == V_DICT ? "no key" :
                        "a list has no key", (int)(p - k < 80 ? p - k : 80), k);
            pa.keyed = *v;
            pa.args = &pa.keyed;
            pa.len = -1;
            pa.idx = -2;
            p++;
        }
        bool ljust = false, sign = false, blank = false, alt = false, zero = false;
        for (; p < end && *p && strchr("-+ #0", *p); p++) {
            ljust |= *p == '-';
            sign |= *p == '+';
            blank |= *p == ' ';
            alt |= *p == '#';
            zero |= *p == '0';
        }
        int64_t wp[2] = { -1, -1 }; /* width, precision */
        for (int k = 0; k < 2; k++) {
            if (k) {
                if (!(p < end && *p == '.'))
                    break;
                p++;
                wp[1] = 0;
            }
            if (p < end && *p == '*') {
                int64_t v = pct_int(r, pct_next(r, &pa, line), '*', line);
                p++;
                if (v > INT32_MAX || v < INT32_MIN) /* a C int in CPython */
                    fail_at(&r->f, MOE_ERANGE, line, "* value %lld is too large", (long long)v);
                if (v < 0 && !k) { /* a negative width: left-justified */
                    ljust = true;
                    v = v == INT64_MIN ? INT64_MAX : -v;
                }
                wp[k] = v < 0 ? 0 : v;
                continue;
            }
            for (; p < end && is_digit(*p); p++) {
                wp[k] = (wp[k] < 0 ? 0 : wp[k]) * 10 + (*p - '0');
                if (wp[k] > MOE_JINJA_MAX_OUTPUT)
                    fail_at(&r->f, MOE_ERANGE, line, "%s too big in a format", k ? "precision" : "width");
            }
        }
        if (wp[0] > MOE_JINJA_MAX_OUTPUT || wp[1] > MOE_JINJA_MAX_OUTPUT)
            fail_at(&r->f, MOE_ERANGE, line, "output longer than %u bytes", MOE_JINJA_MAX_OUTPUT);
        while (p < end && (*p == 'h' || *p == 'l' || *p == 'L'))
            p++;
        if (p >= end)
            fail_at(&r->f, MOE_EINVAL, line, "incomplete format");
        char conv = *p;
        const struct val *v = pct_next(r, &pa, line);
        if (!strchr("sracdiuxXoeEfFgG", conv) || !conv) {
            uint32_t cp;
            size_t l = moe_utf8_next((const unsigned char *)p, (size_t)(end - p), &cp);
            fail_at(&r->f, MOE_EINVAL, line, "unsupported format character '%.*s' (0x%x) at index %zu", (int)l, p, cp,
                    utf8_count(fmt->p, (size_t)(p - fmt->p)));
        }
        body.n = 0;
        buf_add(r, &body, "", 0);
        bool numeric = pct_convert(r, &body, conv, v, alt, wp[1], fmtv->markup, line);
        /* CPython's output stage: the sign taken out, then fill, sign, 0x prefix, digits and padding */
        const char *bp = body.p;
        size_t blen = body.n;
        char signc = 0;
        if (numeric && blen && (bp[0] == '-' || bp[0] == '+')) {
            signc = bp[0];
            bp++;
            blen--;
        } else if (numeric) {
            signc = sign ? '+' : blank ? ' ' : 0;
        }
        char fill = numeric && zero ? '0' : ' ';
        int64_t len = (int64_t)utf8_count(bp, blen), width = wp[0] < len ? len : wp[0];
        if (signc && fill == '0')
            buf_add(r, &out, &signc, 1);
        if (signc && width > len)
            width--;
        size_t prefix = alt && (conv == 'x' || conv == 'X' || conv == 'o') ? 2 : 0;
        if (prefix && fill == '0') {
            buf_add(r, &out, bp, prefix);
            bp += prefix;
            blen -= prefix;
            prefix = 0;
            width -= 2;
            len -= 2;
        } else if (prefix) {
            width -= 2;
            len -= 2;
        }
        if (width > len && !ljust) {
            buf_fill(r, &out, fill, (size_t)(width - len));
            width = len;
        }
        if (signc && fill == ' ')
            buf_add(r, &out, &signc, 1);
        buf_add(r, &out, bp, blen); /* a 0x prefix not yet written with it */
        if (width > len)
            buf_fill(r, &out, ' ', (size_t)(width - len));
    }
    if (pa.idx < pa.len && !pa.dict)
        fail_at(&r->f, MOE_EINVAL, line, "not all arguments converted during string formatting");
    return as_markup(vbuf(r, &out), fmtv->markup);
}

static struct val arith(struct render *r, int op, struct val a, struct val b, int line);

/* What sorting, min, max and unique compare: strings lowercased unless case_sensitive. */
/* x rounded to a multiple of 10^k (k >= 1), halves to even, exactly as Python's round(x, -k) of a float:
 * from x's exact decimal digits, then the nearest double. */
static double round_float_tens(struct render *r, double x, int64_t k, int line)
{
    char d[400];
    double t = trunc(fabs(x));
    int n = snprintf(d + 1, sizeof(d) - 1, "%.0f", t); /* t's exact digits, at most 309 */
    d[0] = '0';
    int keep = n + 1 - (int)k; /* digits of d (with the leading 0) above 10^k */
    if (keep < 1)
        return 0.0 * x;
    int c = d[keep] > '5' ? 1 : d[keep] < '5' ? -1 : 0; /* the rest against half a unit: below, equal, above */
    for (int i = keep + 1; i <= n && !c; i++)
        c = d[i] != '0';
    if (!c && fabs(x) != t)
        c = 1;
    if (c > 0 || (!c && (d[keep - 1] - '0') % 2)) {
        int i = keep - 1;
        for (; d[i] == '9'; i--) d[i] = '0';
        d[i]++;
    }
    char num[440];
    snprintf(num, sizeof(num), "%s%.*se%lld", x < 0 ? "-" : "", keep, d, (long long)k);
    double y = strtod(num, NULL);
    if (isinf(y))
        fail_at(&r->f, MOE_EINVAL, line, "round: rounded value too large to represent");
    return y;
}

/* Jinja2's round filter: Python's round(v, prec) for method 'r' (common), else math.'c'eil or math.'f'loor of
 * v * 10**prec divided by 10**prec, an int's quotient as Python divides ints (never -0.0). */
static struct val py_round(struct render *r, const struct val *v, int64_t prec, char method, int line)
{
    bool is_int = v->t != V_FLOAT;
    double x = num(v);
    if (method == 'r') {
        if (is_int && prec >= 0) /* Python's round of an int is the int */
            return vint(inum(v));
        if (is_int) { /* halves to even, in integers */
            if (prec < -19) /* |v| < 2**63 is below half of 10**20 */
                return vint(0);
            __int128 p = 1, i = inum(v);
            for (int64_t k = 0; k < -prec; k++) p *= 10;
            __int128 q = i / p, rem = i % p;
            if (rem < 0) {
                q--;
                rem += p;
            }
            if (2 * rem > p || (2 * rem == p && (q & 1)))
                q++;
            __int128 y = q * p;
            if (y > INT64_MAX || y < INT64_MIN)
                fail_at(&r->f, MOE_ERANGE, line, "round: the result is past 64-bit integers");
            return vint((int64_t)y);
        }
        if (!isfinite(x) || prec > 323)
            return *v;
        if (prec < -308)
            return (struct val){ .t = V_FLOAT, .f = 0.0 * x };
        if (prec < 0)
            return (struct val){ .t = V_FLOAT, .f = round_float_tens(r, x, -prec, line) };
        char tmp[700]; /* correctly rounded, halves to even, as Python; 309 + 1 + 323 characters at most */
        snprintf(tmp, sizeof(tmp), "%.*f", (int)prec, x);
        return (struct val){ .t = V_FLOAT, .f = strtod(tmp, NULL) };
    }
    if (is_int && prec >= 0) /* v * 10**prec / 10**prec in integers: v's nearest double */
        return (struct val){ .t = V_FLOAT, .f = (double)inum(v) };
    if (prec > 308)
        fail_at(&r->f, MOE_EINVAL, line, "round: int too large to convert to float (10**%lld)", (long long)prec);
    double p;
    if (prec >= 0) {
        char e[32];
        snprintf(e, sizeof(e), "1e%lld", (long long)prec);
        p = strtod(e, NULL); /* Python's float(10**prec), correctly rounded */
    } else {
        p = pow(10, (double)prec); /* Python's 10**prec, a float */
    }
    double y = x * p;
    if (isnan(y))
        fail_at(&r->f, MOE_EINVAL, line, "round: cannot convert float NaN to integer");
    if (isinf(y))
        fail_at(&r->f, MOE_EINVAL, line, "round: cannot convert float infinity to integer");
    y = method == 'f' ? floor(y) : ceil(y);
    if (p == 0)
        fail_at(&r->f, MOE_EINVAL, line, "round: float division by zero (10**%lld is 0.0)", (long long)prec);
    if (y == 0) /* an int's 0, never -0.0 */
        return (struct val){ .t = V_FLOAT, .f = 0.0 };
    if (prec < 0)
        return (struct val){ .t = V_FLOAT, .f = y / p };
    char q[400]; /* the integer y over 10**prec, correctly rounded as Python's int division */
    snprintf(q, sizeof(q), "%.0fe-%lld", y, (long long)prec);
    return (struct val){ .t = V_FLOAT, .f = strtod(q, NULL) };
}

static int ascii_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* The value of the digit c in base (up to 36), or -1. */
static int digit_value(int c, int base)
{
    c = ascii_lower(c);
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'z' ? c - 'a' + 10 : 99;
    return v < base ? v : -1;
}

/* The digits of a Python number literal in s[0, n) into out (at most cap bytes with the NUL): an
 * underscore only between two digits (of base, 10 for a float), dropped.  False where one is misplaced. */
static bool py_digits(const char *s, size_t n, int base, char *out, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '_') {
            if (!i || i + 1 == n || digit_value(s[i - 1], base) < 0 || digit_value(s[i + 1], base) < 0)
                return false;
            continue;
        }
        if (k + 1 >= cap)
            return false;
        out[k++] = s[i];
    }
    out[k] = 0;
    return k > 0;
}

/* s as Python's int() and float() read it first: every decimal digit (category Nd, encoded in runs of ten
 * from 0 to 9) as its ASCII digit, any other character past ASCII as '?', which no number takes. */
static struct val ascii_decimal(struct render *r, const struct str *s)
{
    struct buf b = { 0 };
    buf_add(r, &b, "", 0);
    for (size_t i = 0; i < s->n;) {
        uint32_t cp;
        size_t l = str_cp(s, i, &cp);
        char c = cp < 0x80 ? (char)cp : '?';
        if (cp >= 0x80 && moe_tok_category(cp) == MOE_TOK_GC_ND) {
            uint32_t k = 0;
            while (moe_tok_category(cp - k - 1) == MOE_TOK_GC_ND) k++;
            c = (char)('0' + k % 10);
        }
        buf_add(r, &b, &c, 1);
        i += l;
    }
    return vbuf(r, &b);
}

/* Python's int(s, base) of a stripped string: an optional sign, the prefix 0x, 0o or 0b that base
 * allows (any with base 0, where a decimal cannot start with 0), digits with single underscores between
 * them.  0 parsed, -1 not a number (ValueError), 1 past 64 bits. */
static int py_parse_int(const char *s, size_t n, int64_t base, int64_t *out)
{
    if (base != 0 && (base < 2 || base > 36))
        return -1;
    size_t i = n && (s[0] == '-' || s[0] == '+');
    bool neg = n && s[0] == '-';
    if (i + 1 < n && s[i] == '0') {
        int p = ascii_lower(s[i + 1]), pb = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
        if (pb && (base == 0 || base == pb)) {
            base = pb;
            i += 2;
            if (i < n && s[i] == '_') /* 0x_1f */
                i++;
        }
    }
    if (base == 0) {
        base = 10;
        for (size_t k = i; k + 1 < n && s[k] == '0'; k++)
            if (s[k + 1] != '0' && s[k + 1] != '_')
                return -1; /* 010 with base 0 */
    }
    char d[400];
    if ((i < n && s[i] == '_') || !py_digits(s + i, n - i, (int)base, d, sizeof(d)))
        return -1;
    uint64_t v = 0;
    bool big = false;
    for (const char *p = d; *p; p++) {
        int dv = digit_value(*p, (int)base);
        if (dv < 0)
            return -1;
        big |= v > (UINT64_MAX - (uint64_t)dv) / (uint64_t)base;
        v = v * (uint64_t)base + (uint64_t)dv;
    }
    if (big || v > (uint64_t)INT64_MAX + neg)
        return 1;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

/* Python's float(s) of a stripped string: a sign, inf, infinity or nan in any case, or a decimal with an
 * exponent, underscores between digits.  False where it is none of these. */
static bool py_parse_float(const char *s, size_t n, double *out)
{
    size_t i = n && (s[0] == '-' || s[0] == '+');
    const char *const words[] = { "inf", "infinity", "nan" };
    for (size_t k = 0; k < MOE_ARRAY_LEN(words); k++) {
        size_t j = 0;
        while (i + j < n && words[k][j] && ascii_lower(s[i + j]) == words[k][j]) j++;
        if (i + j == n && !words[k][j]) {
            *out = k < 2 ? (s[0] == '-' ? -INFINITY : INFINITY) : NAN;
            return true;
        }
    }
    for (size_t k = i; k < n; k++)
        if (!is_digit(s[k]) && !strchr("._eE+-", s[k]))
            return false; /* no hex, no words strtod would take */
    char d[400], *e;
    if (!py_digits(s, n, 10, d, sizeof(d)))
        return false;
    *out = strtod(d, &e);
    return !*e && e != d;
}

/* Python's a < b of two sort keys: lists of nk values (the first values that differ (==), ordered), or with
 * !wrapped one value each, ordered as they are. */
static bool sort_lt(struct render *r, const struct val *a, const struct val *b, size_t nk, bool wrapped, int line)
{
    step(r, line);
    if (!wrapped)
        return compare(r, a, b, line) < 0;
    for (size_t k = 0; k < nk; k++)
        if (!equal(r, &a[k], &b[k]))
            return compare(r, &a[k], &b[k], line) < 0;
    return false;
}

static void sort_swap(struct val *v, struct val *keys, size_t nk, size_t i, size_t j)
{
    struct val t = v[i];
    v[i] = v[j];
    v[j] = t;
    for (size_t k = 0; k < nk; k++) {
        t = keys[i * nk + k];
        keys[i * nk + k] = keys[j * nk + k];
        keys[j * nk + k] = t;
    }
}

/* v[lo, hi) sorted as CPython sorts a slice shorter than 64: the run at its start (a strictly descending one
 * reversed), then binary insertion of the rest; the same comparisons in the same order, so the same
 * result where the order is not total (nan) and the same error where two items cannot be ordered. */
static void sort_run(struct render *r, struct val *v, struct val *keys, size_t nk, bool wrapped, size_t lo, size_t hi,
                     int line)
{
    if (hi - lo < 2)
        return;
    size_t run = lo + 2;
    if (sort_lt(r, &keys[(lo + 1) * nk], &keys[lo * nk], nk, wrapped, line)) {
        while (run < hi && sort_lt(r, &keys[run * nk], &keys[(run - 1) * nk], nk, wrapped, line)) run++;
        for (size_t i = lo, j = run - 1; i < j; i++, j--) sort_swap(v, keys, nk, i, j);
    } else {
        while (run < hi && !sort_lt(r, &keys[run * nk], &keys[(run - 1) * nk], nk, wrapped, line)) run++;
    }
    for (size_t i = run; i < hi; i++) {
        size_t a = lo, b = i;
        while (a < b) {
            size_t m = a + ((b - a) >> 1);
            if (sort_lt(r, &keys[i * nk], &keys[m * nk], nk, wrapped, line))
                b = m;
            else
                a = m + 1;
        }
        for (size_t j = i; j > a; j--) sort_swap(v, keys, nk, j, j - 1);
    }
}

/* Python's sorted(v, key, reverse) of n items with keys of nk values each (see sort_lt): stable (reverse keeps equal
 * items in their order); CPython's exact comparisons below 64 items, above runs of 32 merged. */
static void py_sort(struct render *r, struct val *v, struct val *keys, size_t nk, bool wrapped, size_t n, bool reverse,
                    int line)
{
    if (reverse)
        for (size_t i = 0, j = n ? n - 1 : 0; i < j; i++, j--) sort_swap(v, keys, nk, i, j);
    size_t width = n < 64 ? n : 32;
    for (size_t lo = 0; lo < n; lo += width)
        sort_run(r, v, keys, nk, wrapped, lo, lo + width < n ? lo + width : n, line);
    if (width < n) {
        struct val *tv = r_alloc(r, n * sizeof(*tv)), *tk = r_alloc(r, n * nk * sizeof(*tk));
        for (; width < n; width *= 2)
            for (size_t lo = 0; lo + width < n; lo += 2 * width) {
                size_t mid = lo + width, hi = mid + width < n ? mid + width : n, i = lo, j = mid, o = lo;
                while (i < mid || j < hi) {
                    bool right = j < hi && (i == mid || sort_lt(r, &keys[j * nk], &keys[i * nk], nk, wrapped, line));
                    size_t from = right ? j++ : i++;
                    tv[o] = v[from];
                    memcpy(&tk[o * nk], &keys[from * nk], nk * sizeof(*tk));
                    o++;
                }
                memcpy(&v[lo], &tv[lo], (hi - lo) * sizeof(*v));
                memcpy(&keys[lo * nk], &tk[lo * nk], (hi - lo) * nk * sizeof(*keys));
            }
    }
    if (reverse)
        for (size_t i = 0, j = n ? n - 1 : 0; i < j; i++, j--) sort_swap(v, keys, nk, i, j);
}

static struct val sort_key(struct render *r, struct val v, bool case_sensitive)
{
    return v.t == V_STR && !case_sensitive ? str_case(r, v.s, CASE_LOWER) : v;
}

/* The items of src sorted (stably, as Python's sorted) by their attribute paths attr (NULL: the items;
 * dflt for an undefined part, see attr_path), strings compared lowercased unless case_sensitive; *keys
 * (when asked for) the sorted keys. */
static struct list *sorted_by(struct render *r, const struct list *src, const struct val *attr,
                              const struct val *dflt, bool case_sensitive, bool rev, bool multi, struct val **keys_out,
                              int line)
{
    /* multi (the sort filter): Jinja2's key is the list of the comma-separated attributes' values (the item
     * itself without one); else (groupby) the one attribute's value itself, keys_out one per item */
    size_t nk = 1;
    for (size_t i = 0; multi && attr && attr->t == V_STR && i < attr->s->n; i++) nk += attr->s->p[i] == ',';
    struct val *parts = r_alloc(r, nk * sizeof(*parts));
    for (size_t k = 0, from = 0; k < nk; k++) {
        size_t to = from;
        while (nk > 1 && to < attr->s->n && attr->s->p[to] != ',') to++;
        parts[k] = nk > 1 ? vstr(r, attr->s->p + from, to - from) : attr ? *attr : (struct val){ 0 };
        from = to + 1;
    }
    struct list *l = new_list(r, src->n);
    struct val *keys = src->n ? r_alloc(r, src->n * nk * sizeof(*keys)) : NULL;
    for (size_t i = 0; i < src->n; i++) {
        l->v[i] = src->v[i];
        for (size_t k = 0; k < nk; k++)
            keys[i * nk + k] = sort_key(r, attr ? attr_path(r, &src->v[i], &parts[k], dflt, line) : src->v[i],
                                        case_sensitive);
    }
    py_sort(r, l->v, keys, nk, multi, l->n, rev, line);
    if (keys_out)
        *keys_out = keys;
    return l;
}

/* Python's getattr(obj, name) in Jinja2's sandbox (the attr filter): methods (the unsafe ones, which change
 * a value, and names of _ undefined), a loop's and a namespace's attributes, a groupby group's grouper and
 * list, a range's start, stop and step, a number's real, imag, numerator and denominator; else undefined. */
static struct val py_getattr(struct render *r, const struct val *obj, const struct val *name, int line)
{
    static const char *const number_methods[] = { "as_integer_ratio", "bit_count", "bit_length", "conjugate",
                                                  "from_bytes", "fromhex", "hex", "is_integer", "to_bytes" };
    if (obj->t == V_UNDEF)
        undefined_error(r, obj, line);
    if (name->t != V_STR)
        fail_at(&r->f, MOE_EINVAL, line, "attr: the attribute name must be a string, not %s", type_name(name));
    const char *k = name->s->p;
    struct val undef = vundef(name->s);
    if (memchr(k, 0, name->s->n) || k[0] == '_')
        return undef;
    int kind = method_kind(obj, k);
    if (kind)
        return kind == 1 ? bound_method(r, obj, k) : undef;
    if (obj->t == V_MACRO) { /* Jinja2's Macro: its name, parameter names and what its body uses */
        const struct node *m = obj->macro->n;
        if (!strcmp(k, "name"))
            return m->op & MACRO_ANONYMOUS ? (struct val){ .t = V_NONE } : vstr(r, m->name, strlen(m->name));
        if (!strcmp(k, "arguments")) {
            struct list *l = new_list(r, (size_t)m->nargs);
            l->tuple = true;
            for (int i = 0; i < m->nargs; i++) l->v[i] = vstr(r, m->kwnames[i], strlen(m->kwnames[i]));
            return (struct val){ .t = V_LIST, .l = l };
        }
        static const char *const uses[] = { "caller", "catch_varargs", "catch_kwargs" }; /* MACRO_* order */
        for (int i = 0; i < 3; i++)
            if (!strcmp(k, uses[i]))
                return vbool(m->op & (1 << i));
        return undef;
    }
    if (obj->t == V_OBJ) { /* a cycler's current item and its items */
        if (obj->o->kind == 'c' && !strcmp(k, "current"))
            return obj->o->items->v[obj->o->pos];
        if (obj->o->kind == 'c' && !strcmp(k, "items"))
            return (struct val){ .t = V_LIST, .l = obj->o->items };
        return undef;
    }
    if (obj->t == V_DICT && (obj->d->ns || obj->d->loop)) {
        const struct val *x = dict_get(obj->d, k, name->s->n);
        return x ? *x : undef;
    }
    if (obj->t == V_LIST && (obj->l->group || obj->l->range)) {
        static const char *const names[2][3] = { { "grouper", "list" }, { "start", "stop", "step" } };
        for (int i = 0; i < 3; i++)
            if (names[!obj->l->group][i] && !strcmp(k, names[!obj->l->group][i]))
                return obj->l->group ? obj->l->v[i] : vint(obj->l->range[i]);
        return undef;
    }
    if (!is_num(obj))
        return undef;
    if (in_list(number_methods, MOE_ARRAY_LEN(number_methods), k))
        fail_at(&r->f, MOE_ENOTSUP, line, "the number method %s is not supported", k);
    bool fl = obj->t == V_FLOAT;
    if (!strcmp(k, "real") || (!fl && !strcmp(k, "numerator")))
        return fl ? *obj : vint(inum(obj));
    if (!strcmp(k, "imag"))
        return fl ? (struct val){ .t = V_FLOAT, .f = 0.0 } : vint(0);
    return !fl && !strcmp(k, "denominator") ? vint(1) : undef;
}

/* ---- render: str.format() ------------------------------------------------------------ */

/* A replacement field's format spec as Python's format() reads it:
 * [[fill]align][sign][z][#][0][width][grouping][.precision][type]. */
struct fmt_spec {
    char fill[5];       /* one character, UTF-8 */
    size_t nfill;
    char align;         /* '<', '>', '^', '=' or 0: the type's own */
    char sign;          /* '+', '-', ' ' or 0 */
    bool z, alt, zero;  /* negative zero made positive, alternate form, a 0 before the width */
    int64_t width;      /* characters, -1 none */
    char group;         /* ',', '_' or 0 */
    int64_t prec;       /* -1 none */
    char type;          /* the presentation type, 0 none */
};

static void fmt_parse_spec(struct render *r, const struct str *spec, const char *tname, struct fmt_spec *fs,
                           int line)
{
    *fs = (struct fmt_spec){ .fill = " ", .nfill = 1, .width = -1, .prec = -1 };
    const char *p = spec->p, *end = p + spec->n;
    uint32_t cp;
    size_t l = p < end ? moe_utf8_next((const unsigned char *)p, (size_t)(end - p), &cp) : 0;
    bool fill_given = false;
    if (l && p + l < end && strchr("<>=^", p[l])) {
        memcpy(fs->fill, p, l);
        fs->nfill = l;
        fs->align = p[l];
        p += l + 1;
        fill_given = true;
    } else if (p < end && strchr("<>=^", *p)) {
        fs->align = *p++;
    }
    if (p < end && strchr("+- ", *p))
        fs->sign = *p++;
    if (p < end && *p == 'z')
        fs->z = *p++ == 'z';
    if (p < end && *p == '#')
        fs->alt = *p++ == '#';
    if (p < end && *p == '0' && !fill_given) { /* 0 fill (sign-aware for a number unless aligned) */
        fs->zero = true;
        p++;
        memcpy(fs->fill, "0", fs->nfill = 1);
    }
    for (int k = 0; k < 2; k++) {
        if (k) {
            if (p < end && (*p == ',' || *p == '_'))
                fs->group = *p++;
            if (fs->group && p < end && (*p == ',' || *p == '_'))
                fail_at(&r->f, MOE_EINVAL, line, "Cannot specify ',' with ','.");
            if (!(p < end && *p == '.'))
                break;
            if (++p >= end || !is_digit(*p))
                fail_at(&r->f, MOE_EINVAL, line, "Format specifier missing precision");
        }
        int64_t *x = k ? &fs->prec : &fs->width;
        for (; p < end && is_digit(*p); p++) {
            *x = (*x < 0 ? 0 : *x) * 10 + (*p - '0');
            if (*x > MOE_JINJA_MAX_OUTPUT)
                fail_at(&r->f, MOE_ERANGE, line, "output longer than %u bytes", MOE_JINJA_MAX_OUTPUT);
        }
    }
    if (p < end)
        fs->type = *p++;
    if (p < end || (fs->type && (unsigned char)fs->type >= 0x80))
        fail_at(&r->f, MOE_EINVAL, line, "Invalid format specifier '%.*s' for object of type '%s'",
                (int)(spec->n < 80 ? spec->n : 80), spec->p, tname);
}

/* digits (ASCII) with sep between groups of every digits, from the right, zeros added on the left to make
 * it min_width long at least (never starting with sep), into b. */
static void fmt_group(struct render *r, struct buf *b, const char *d, size_t n, char sep, int every,
                      int64_t min_width)
{
    size_t len = 0, k = 0; /* the grouped length, walking right to left */
    for (;; k++) {
        if (k >= n && (int64_t)len >= min_width)
            break;
        len += (k && sep && k % (size_t)every == 0) + 1;
    }
    char *o = r_alloc(r, len + 1), *q = o + len;
    for (size_t i = 0; i < k; i++) {
        if (i && sep && i % (size_t)every == 0)
            *--q = sep;
        *--q = i < n ? d[n - 1 - i] : '0';
    }
    buf_add(r, b, o, len);
}

/* A float as format() writes it for the types e E f F g G % n and none (the shortest repr without a
 * precision; with one, g's with a '.0' kept and the exponent from precision - 1). */
static void fmt_float(struct render *r, struct buf *b, double x, const struct fmt_spec *fs, char type)
{
    if (!isfinite(x)) {
        bool up = type == 'E' || type == 'F' || type == 'G';
        buf_adds(r, b, isnan(x) ? (up ? "NAN" : "nan") : x < 0 ? (up ? "-INF" : "-inf") : (up ? "INF" : "inf"));
        buf_adds(r, b, type == '%' ? "%" : "");
        return;
    }
    if (!type && fs->prec < 0) {
        float_repr(r, b, x);
        return;
    }
    int prec = fs->prec < 0 ? 6 : (int)fs->prec;
    char conv = type == '%' ? 'f' : type == 'n' || !type ? 'g' : type, spec[8];
    if (!type) { /* as g, but the exponent form from precision - 1 on, and '1.0' where g writes '1' */
        prec = prec ? prec : 1;
        char e[64];
        snprintf(e, sizeof(e), "%.*e", prec - 1, x);
        const char *ep = strchr(e, 'e');
        if (ep && atoi(ep + 1) == prec - 1 && prec - 1 >= -4)
            conv = 'e', prec--;
    }
    snprintf(spec, sizeof(spec), "%%%s.*%c", fs->alt ? "#" : "", conv);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral" /* one of the float conversions, built above */
    int len = snprintf(NULL, 0, spec, prec, type == '%' ? x * 100 : x);
    if (len < 0 || (size_t)len > MOE_JINJA_MAX_OUTPUT)
        fail_at(&r->f, MOE_ERANGE, 0, "output longer than %u bytes", MOE_JINJA_MAX_OUTPUT);
    char *t = r_alloc(r, (size_t)len + 1);
    snprintf(t, (size_t)len + 1, spec, prec, type == '%' ? x * 100 : x);
#pragma GCC diagnostic pop
    if (conv == 'e' && !type && !fs->alt) { /* g's trailing zeros of the mantissa dropped */
        char *e = strchr(t, 'e'), *z = e;
        while (z > t && z[-1] == '0')
            z--;
        if (z > t && z[-1] == '.')
            z--;
        memmove(z, e, strlen(e) + 1);
        len = (int)strlen(t);
    }
    buf_add(r, b, t, (size_t)len);
    if (!type && !strpbrk(t, ".e"))
        buf_adds(r, b, ".0");
    buf_adds(r, b, type == '%' ? "%" : "");
}

/* format(v, spec) as Python's types do it: strings, integers (and bools), floats; another type only with
 * an empty spec (its str()). */
static void fmt_value(struct render *r, struct buf *out, const struct val *v, const struct str *spec, int line)
{
    if (!spec->n || (v->t != V_STR && v->t != V_INT && v->t != V_BOOL && v->t != V_FLOAT)) {
        if (spec->n)
            fail_at(&r->f, MOE_EINVAL, line, "unsupported format string passed to %s.__format__",
                    v->t == V_UNDEF ? "Undefined" : v->t == V_NONE ? "NoneType" : type_name(v));
        to_str(r, out, v, line);
        return;
    }
    const char *tname = v->t == V_STR ? "str" : v->t == V_FLOAT ? "float" : v->t == V_BOOL ? "bool" : "int";
    struct fmt_spec fs;
    fmt_parse_spec(r, spec, tname, &fs, line);
    char t = fs.type;
    bool whole = v->t == V_INT || v->t == V_BOOL;
    bool is_int = whole && (!t || strchr("bcdoxXn", t));
    bool is_float = (v->t == V_FLOAT && (!t || strchr("eEfFgGn%", t))) || (whole && t && strchr("eEfFgG%", t));
    if (v->t == V_STR ? t && t != 's' : !is_int && !is_float && t)
        fail_at(&r->f, MOE_EINVAL, line, "Unknown format code '%c' for object of type '%s'", t, tname);
    const char *what = v->t == V_STR ? "string" : is_int ? "integer" : "float";
    if (v->t == V_STR && fs.sign)
        fail_at(&r->f, MOE_EINVAL, line, "Sign not allowed in string format specifier");
    if (v->t == V_STR && fs.alt)
        fail_at(&r->f, MOE_EINVAL, line, "Alternate form (#) not allowed in string format specifier");
    if (v->t == V_STR && fs.align == '=')
        fail_at(&r->f, MOE_EINVAL, line, "'=' alignment not allowed in string format specifier");
    if ((v->t == V_STR || t == 'c' || t == 'n' || (fs.group == ',' && t && strchr("boxX", t))) && fs.group)
        fail_at(&r->f, MOE_EINVAL, line, "Cannot specify '%c' with '%c'.", fs.group, t ? t : 's');
    if (is_int && fs.prec >= 0)
        fail_at(&r->f, MOE_EINVAL, line, "Precision not allowed in integer format specifier");
    if (fs.z && v->t != V_FLOAT && !is_float)
        fail_at(&r->f, MOE_EINVAL, line, "Negative zero coercion (z) not allowed in %s format specifier", what);
    if (t == 'c' && (fs.sign || fs.alt))
        fail_at(&r->f, MOE_EINVAL, line, "%s not allowed with integer format specifier 'c'",
                fs.sign ? "Sign" : "Alternate form (#)");
    struct buf body = { 0 };
    buf_add(r, &body, "", 0);
    char sign = 0, prefix[3] = "";
    if (v->t == V_STR) { /* at most precision characters */
        size_t n = fs.prec >= 0 ? cp_offset(v->s, (size_t)fs.prec) : v->s->n;
        buf_add(r, &body, v->s->p, n > v->s->n ? v->s->n : n);
    } else if (t == 'c') {
        int64_t c = inum(v);
        if (c < 0 || c > 0x10ffff)
            fail_at(&r->f, MOE_EINVAL, line, "%%c arg not in range(0x110000)");
        if (c >= 0xd800 && c <= 0xdfff)
            fail_at(&r->f, MOE_ENOTSUP, line, "%%c of a surrogate (0x%llx) has no UTF-8", (long long)c);
        char enc[4];
        buf_add(r, &body, enc, moe_utf8_put((uint32_t)c, enc));
    } else if (is_int) {
        int64_t x = inum(v);
        uint64_t mag = x < 0 ? (uint64_t)0 - (uint64_t)x : (uint64_t)x;
        unsigned base = t == 'b' ? 2 : t == 'o' ? 8 : t == 'x' || t == 'X' ? 16 : 10;
        char d[72];
        int nd = 0;
        do {
            d[nd++] = (t == 'X' ? "0123456789ABCDEF" : "0123456789abcdef")[mag % base];
            mag /= base;
        } while (mag);
        for (int i = 0; i < nd / 2; i++) {
            char c = d[i];
            d[i] = d[nd - 1 - i];
            d[nd - 1 - i] = c;
        }
        buf_add(r, &body, d, (size_t)nd);
        sign = x < 0 ? '-' : 0;
        if (fs.alt && base != 10)
            snprintf(prefix, sizeof(prefix), "0%c", t);
    } else {
        fmt_float(r, &body, num(v), &fs, t);
        if (body.p[0] == '-') {
            sign = '-';
            memmove(body.p, body.p + 1, body.n--);
        }
        if (sign && fs.z && !strpbrk(body.p, "123456789") && isfinite(num(v))) /* -0.0: 0.0 */
            sign = 0;
    }
    if (v->t != V_STR && t != 'c' && !sign)
        sign = fs.sign == '+' ? '+' : fs.sign == ' ' ? ' ' : 0;
    /* the number's integer digits (grouped), then the rest: [sign][prefix][fill if '='][digits][rest] */
    size_t ndig = 0;
    for (char c; v->t != V_STR && t != 'c' && ndig < body.n; ndig++) /* hex digits only in an integer's */
        if (c = body.p[ndig], !is_digit(c) && !(is_int && ((c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))))
            break;
    int64_t head = (sign != 0) + (int64_t)strlen(prefix), rest = (int64_t)utf8_count(body.p + ndig, body.n - ndig);
    char align = fs.align ? fs.align : fs.zero && v->t != V_STR ? '=' : v->t == V_STR ? '<' : '>';
    bool zero_group = fs.group && align == '=' && fs.nfill == 1 && fs.fill[0] == '0';
    struct buf num_text = { 0 };
    buf_add(r, &num_text, "", 0);
    if (v->t != V_STR && t != 'c')
        fmt_group(r, &num_text, body.p, ndig, fs.group, fs.group == '_' && !is_float && strchr("boxX", t ? t : 'd')
                  ? 4 : 3, zero_group && fs.width > head + rest ? fs.width - head - rest : 0);
    else
        buf_add(r, &num_text, body.p, ndig);
    int64_t len = head + (int64_t)utf8_count(num_text.p, num_text.n) + rest;
    int64_t pad = fs.width > len ? fs.width - len : 0;
    int64_t left = align == '>' ? pad : align == '^' ? pad / 2 : 0, right = align == '=' ? 0 : pad - left;
    for (int64_t i = 0; i < left; i++) buf_add(r, out, fs.fill, fs.nfill); /* the output bound stops a huge one */
    if (sign)
        buf_add(r, out, &sign, 1);
    buf_adds(r, out, prefix);
    for (int64_t i = 0; align == '=' && i < pad; i++) buf_add(r, out, fs.fill, fs.nfill);
    buf_add(r, out, num_text.p, num_text.n);
    buf_add(r, out, body.p + ndig, body.n - ndig);
    for (int64_t i = 0; i < right; i++) buf_add(r, out, fs.fill, fs.nfill);
}

struct fmt_state {
    const struct args *a;
    int auto_idx;   /* the next {} field's argument; -1 once a field was numbered */
    bool markup;    /* a Markup's format(): the fields' text escaped, a Markup argument's kept */
};

static void fmt_run(struct render *r, struct buf *out, const struct str *f, struct fmt_state *st, int depth,
                    int line);

/* One replacement field: the argument name..name_end, with its .attr (the sandbox's getattr, then the
 * item) and [key] (its getitem) parts, through the conversion conv (s, r, a or 0), formatted by the spec
 * spec..spec_end once its own fields are replaced. */
static void fmt_field(struct render *r, struct buf *out, const char *name, const char *name_end, char conv,
                      const char *spec, const char *spec_end, struct fmt_state *st, int depth, int line)
{
    const char *q = name;
    while (q < name_end && *q != '.' && *q != '[')
        q++;
    bool digits = q > name;
    int64_t idx = 0;
    for (const char *d = name; d < q && digits; d++) {
        digits = is_digit(*d);
        idx = idx > 100000 ? idx : idx * 10 + (*d - '0');
    }
    if (name_end == name) { /* {} or {:spec}: the next argument */
        if (st->auto_idx < 0)
            fail_at(&r->f, MOE_EINVAL, line, "format: cannot switch from manual field specification to automatic "
                    "field numbering");
        idx = st->auto_idx++;
        digits = true;
    } else if (digits && q == name_end) { /* only a number: no automatic numbering from here on */
        if (st->auto_idx > 0)
            fail_at(&r->f, MOE_EINVAL, line, "format: cannot switch from automatic field numbering to manual field "
                    "specification");
        st->auto_idx = -1;
    }
    const struct val *v = NULL;
    if (digits) {
        if (idx >= st->a->npos)
            fail_at(&r->f, MOE_EINVAL, line, "format: replacement index %lld out of range for the %d positional "
                    "argument(s)", (long long)idx, st->a->npos);
        v = &st->a->pos[idx];
    } else {
        for (int k = 0; k < st->a->nkw && !v; k++)
            if (strlen(st->a->names[k]) == (size_t)(q - name) && !memcmp(st->a->names[k], name, (size_t)(q - name)))
                v = &st->a->kw[k];
        if (!v)
            fail_at(&r->f, MOE_EINVAL, line, "format: no argument named '%.*s'", (int)(q - name < 80 ? q - name : 80),
                    name);
    }
    struct val x = *v;
    while (q < name_end) {
        bool dot = *q++ == '.';
        const char *e = q;
        while (e < name_end && (dot ? *e != '.' && *e != '[' : *e != ']'))
            e++;
        if (e == q)
            fail_at(&r->f, MOE_EINVAL, line, "format: empty attribute in format string");
        if (!dot && e >= name_end)
            fail_at(&r->f, MOE_EINVAL, line, "format: missing ']' in format string");
        bool num_key = !dot;
        int64_t k = 0;
        for (const char *d = q; d < e && num_key; d++) {
            num_key = is_digit(*d);
            k = k > INT64_MAX / 10 - 9 ? INT64_MAX : k * 10 + (*d - '0');
        }
        struct val key = num_key ? vint(k) : vstr(r, q, (size_t)(e - q));
        if (dot) {
            struct val got = py_getattr(r, &x, &key, line);
            x = got.t == V_UNDEF ? get_item(r, &x, &key, line) : got;
        } else {
            x = get_item(r, &x, &key, line);
        }
        q = dot ? e : e + 1;
        if (!dot && q < name_end && *q != '.' && *q != '[')
            fail_at(&r->f, MOE_EINVAL, line, "format: only '.' or '[' may follow ']' in format field specifier");
    }
    struct buf sp = { 0 };
    buf_add(r, &sp, "", 0);
    fmt_run(r, &sp, r_str(r, spec, (size_t)(spec_end - spec)), st, depth + 1, line);
    if (conv)
        x = py_convert(r, conv, &x, line);
    if (st->markup && x.t == V_STR && x.markup) { /* Markup's __html_format__: no spec, the text as it is */
        if (sp.n)
            fail_at(&r->f, MOE_EINVAL, line, "format: unsupported format specification for Markup");
        buf_add(r, out, x.s->p, x.s->n);
        return;
    }
    struct buf text = { 0 };
    buf_add(r, &text, "", 0);
    fmt_value(r, &text, &x, vbuf(r, &sp).s, line);
    struct val tv = vbuf(r, &text);
    if (st->markup)
        tv = html_escape(r, &tv, line);
    buf_add(r, out, tv.s->p, tv.s->n);
}

/* f with its replacement fields formatted ({{ and }} for the braces themselves), as string.Formatter parses
 * them; a spec's own fields are replaced at depth + 1, and a field two specs deep is refused. */
static void fmt_run(struct render *r, struct buf *out, const struct str *f, struct fmt_state *st, int depth,
                    int line)
{
    const char *p = f->p, *end = p + f->n;
    while (p < end) {
        step(r, line);
        const char *b = p;
        while (b < end && *b != '{' && *b != '}')
            b++;
        buf_add(r, out, p, (size_t)(b - p));
        if (b >= end)
            break;
        if (b + 1 < end && b[1] == *b) { /* {{ or }} */
            buf_add(r, out, b, 1);
            p = b + 2;
            continue;
        }
        if (*b == '}')
            fail_at(&r->f, MOE_EINVAL, line, "format: single '}' encountered in format string");
        if (depth >= 2)
            fail_at(&r->f, MOE_EINVAL, line, "format: max string recursion exceeded");
        const char *s = b + 1, *name = s;
        char c = 0;
        while (s < end) { /* the name, up to }, : or ! (a [key] may hold them) */
            c = *s++;
            if (c == '{')
                fail_at(&r->f, MOE_EINVAL, line, "format: unexpected '{' in field name");
            if (c == '[')
                while (s < end && *s != ']')
                    s++;
            if (c == '}' || c == ':' || c == '!')
                break;
            c = 0;
        }
        if (!c)
            fail_at(&r->f, MOE_EINVAL, line, "format: expected '}' before end of string");
        const char *name_end = s - 1, *spec = s, *spec_end = s;
        char conv = 0;
        if (c == '!') {
            if (s >= end)
                fail_at(&r->f, MOE_EINVAL, line, "format: end of string while looking for conversion specifier");
            conv = *s++;
            c = s < end ? *s++ : 0;
            if (c != '}' && c != ':')
                fail_at(&r->f, MOE_EINVAL, line, "format: expected ':' after conversion specifier");
            if (conv != 's' && conv != 'r' && conv != 'a')
                fail_at(&r->f, MOE_EINVAL, line, "format: unknown conversion specifier %c", conv);
            spec = spec_end = s;
        }
        if (c == ':') { /* the spec, up to the matching } */
            int open = 1;
            for (spec_end = s; spec_end < end && (open += (*spec_end == '{') - (*spec_end == '}')) > 0;)
                spec_end++;
            if (spec_end >= end)
                fail_at(&r->f, MOE_EINVAL, line, "format: unmatched '{' in format spec");
            s = spec_end + 1;
        }
        fmt_field(r, out, name, name_end, conv, spec, spec_end, st, depth, line);
        p = s;
    }
}

/* s.format(args) and s.format_map(mapping), as Jinja2's sandbox runs them (string.Formatter, with the
 * sandbox's attribute and item lookups); a Markup's escapes its fields' text. */
static struct val str_format(struct render *r, const struct val *s, const char *name, const struct args *a, int line)
{
    struct args kw;
    if (!strcmp(name, "format_map")) {
        if (a->npos != 1 || a->nkw)
            fail_at(&r->f, MOE_EINVAL, line, "format_map() takes exactly one argument, a mapping");
        const struct val *m = &a->pos[0];
        if (m->t != V_DICT || m->d->ns || m->d->loop)
            fail_at(&r->f, MOE_EINVAL, line, "format_map: %s %s is not a mapping", article(type_name(m)), type_name(m));
        args_alloc(r, &kw, 0, m->d->n, line);
        for (size_t i = 0; i < m->d->n; i++) {
            if (!key_is_str(m->d, i))
                continue; /* a field name is looked up as a string */
            kw.names[kw.nkw] = m->d->k[i]->p;
            kw.kw[kw.nkw++] = m->d->v[i];
        }
        a = &kw;
    }
    struct fmt_state st = { .a = a, .markup = s->markup };
    struct buf out = { 0 };
    buf_add(r, &out, "", 0);
    fmt_run(r, &out, s->s, &st, 0, line);
    return as_markup(vbuf(r, &out), s->markup);
}

/* Whether pprint writes v over several lines when its repr is too long: a list's, tuple's or dict's items
 * (Python's own types: not a groupby group, a range, a namespace or a loop), a string's pieces. */
static bool pp_splits(const struct val *v)
{
    return (v->t == V_LIST && !v->l->gen && !v->l->range && !v->l->group) ||
           (v->t == V_DICT && !v->d->ns && !v->d->loop) || (v->t == V_STR && !v->markup);
}

/* The order of d's keys, sorted as Python sorts strings (by code point: UTF-8's byte order). */
static size_t *pp_sorted_keys(struct render *r, const struct dict *d, int line)
{
    for (size_t i = 0; i < d->n; i++)
        if (!key_is_str(d, i)) /* pprint orders keys of mixed types by a rule of its own */
            fail_at(&r->f, MOE_ENOTSUP, line, "pprint of a dict with keys other than strings is not supported");
    size_t *o = r_alloc(r, (d->n + 1) * sizeof(*o));
    for (size_t i = 0; i < d->n; i++) {
        size_t j = i;
        for (; j > 0; j--) { /* insertion sort */
            step(r, line);
            const struct str *x = d->k[o[j - 1]], *y = d->k[i];
            int c = memcmp(x->p, y->p, x->n < y->n ? x->n : y->n);
            if (c < 0 || (!c && x->n <= y->n))
                break;
            o[j] = o[j - 1];
        }
        o[j] = i;
    }
    return o;
}

/* pprint's _safe_repr: repr, with the keys of dicts (in lists, tuples and dicts) sorted. */
static void pp_repr(struct render *r, struct buf *b, const struct val *v, int line)
{
    if (!pp_splits(v) || v->t == V_STR) {
        repr(r, b, v, line);
        return;
    }
    value_enter(r, line);
    bool dict = v->t == V_DICT, tuple = !dict && v->l->tuple;
    size_t n = dict ? v->d->n : v->l->n, *order = dict ? pp_sorted_keys(r, v->d, line) : NULL;
    buf_adds(r, b, dict ? "{" : tuple ? "(" : "[");
    for (size_t i = 0; i < n; i++) {
        buf_adds(r, b, i ? ", " : "");
        if (dict) {
            str_repr(r, b, v->d->k[order[i]]);
            buf_adds(r, b, ": ");
        }
        pp_repr(r, b, dict ? &v->d->v[order[i]] : &v->l->v[i], line);
    }
    buf_adds(r, b, dict ? "}" : !tuple ? "]" : n == 1 ? ",)" : ")");
    r->vdepth--;
}

/* One piece of a string pprint breaks: the repr of s[a..b) after a line break and the indent (none before
 * the first). */
static void pp_piece(struct render *r, struct buf *chunks, size_t *n, int64_t indent, const struct str *s, size_t a,
                     size_t b)
{
    if ((*n)++) {
        buf_adds(r, chunks, "\n");
        buf_fill(r, chunks, ' ', (size_t)indent);
    }
    str_repr(r, chunks, r_str(r, s->p + a, b - a));
}

/* pprint.pformat's layout (width 80, indent 1): v's repr where it fits in the width less indent and
 * allowance (the columns taken on its left and right), else a list's, tuple's or dict's items one a line
 * and a string in pieces at its line breaks and spaces (in parentheses at the top, level 0). */
static void pformat(struct render *r, struct buf *b, const struct val *v, int64_t indent, int64_t allowance, int level,
                    int line)
{
    step(r, line);
    struct buf rep = { 0 };
    buf_add(r, &rep, "", 0);
    pp_repr(r, &rep, v, line);
    if ((int64_t)utf8_count(rep.p, rep.n) <= 80 - indent - allowance || !pp_splits(v)) {
        buf_add(r, b, rep.p, rep.n);
        return;
    }
    value_enter(r, line);
    if (v->t == V_STR) { /* _pprint_str */
        const struct str *s = v->s;
        if (level == 0) {
            indent++;
            allowance++;
        }
        int64_t width = 80 - indent;
        struct buf chunks = { 0 }; /* the pieces' reprs, each after a line break and the indent */
        buf_add(r, &chunks, "", 0);
        size_t nchunks = 0;
        for (size_t start = 0, i = 0, brk; start < s->n; start = i) { /* each line with its break */
            while (i < s->n && !(brk = line_break(s->p + i, s->n - i)))
                i++;
            i = i < s->n ? i + brk : s->n;
            bool last_line = i >= s->n;
            struct buf t = { 0 };
            buf_add(r, &t, "", 0);
            str_repr(r, &t, r_str(r, s->p + start, i - start));
            if ((int64_t)utf8_count(t.p, t.n) <= width - (last_line ? allowance : 0)) {
                pp_piece(r, &chunks, &nchunks, indent, s, start, i);
                continue;
            }
            size_t cur = start; /* current: s[cur..k), the parts (\S*\s*) taken so far */
            for (size_t k = start, e; k < i; k = e) {
                uint32_t cp;
                for (e = k; e < i && (str_cp(s, e, &cp), !py_space(cp));)
                    e += str_cp(s, e, &cp);
                for (; e < i && (str_cp(s, e, &cp), py_space(cp));)
                    e += str_cp(s, e, &cp);
                step(r, line);
                t.n = 0;
                str_repr(r, &t, r_str(r, s->p + cur, e - cur));
                if ((int64_t)utf8_count(t.p, t.n) > width - (last_line && e >= i ? allowance : 0)) {
                    if (k > cur)
                        pp_piece(r, &chunks, &nchunks, indent, s, cur, k);
                    cur = k;
                }
            }
            if (cur < i)
                pp_piece(r, &chunks, &nchunks, indent, s, cur, i);
        }
        if (nchunks <= 1) { /* one piece (none: the empty string's repr) */
            buf_add(r, b, nchunks ? chunks.p : rep.p, nchunks ? chunks.n : rep.n);
        } else {
            buf_adds(r, b, level == 0 ? "(" : "");
            buf_add(r, b, chunks.p, chunks.n);
            buf_adds(r, b, level == 0 ? ")" : "");
        }
        r->vdepth--;
        return;
    }
    bool dict = v->t == V_DICT, tuple = !dict && v->l->tuple;
    const char *close = dict ? "}" : !tuple ? "]" : v->l->n == 1 ? ",)" : ")";
    size_t n = dict ? v->d->n : v->l->n, *order = dict ? pp_sorted_keys(r, v->d, line) : NULL;
    int64_t after = allowance + (int64_t)strlen(close); /* what the last item leaves at its right */
    buf_adds(r, b, dict ? "{" : tuple ? "(" : "[");
    indent++;
    for (size_t i = 0; i < n; i++) {
        if (i) {
            buf_adds(r, b, ",\n");
            buf_fill(r, b, ' ', (size_t)indent);
        }
        int64_t right = i + 1 == n ? after : 1;
        if (dict) {
            size_t at = b->n;
            str_repr(r, b, v->d->k[order[i]]);
            buf_adds(r, b, ": ");
            pformat(r, b, &v->d->v[order[i]], indent + (int64_t)utf8_count(b->p + at, b->n - at), right, level + 1,
                    line);
        } else {
            pformat(r, b, &v->l->v[i], indent, right, level + 1, line);
        }
    }
    buf_adds(r, b, close);
    r->vdepth--;
}

/* textwrap's chunks of one line (cps[0..n)), as its word-splitting regex splits them: runs of ASCII
 * whitespace, a -- dash between words, and words, broken after a hyphen between letters when hyphens
 * count; *ends the end of each (ends has room for n). */
static size_t wrap_chunks(const uint32_t *c, size_t n, bool hyphens, size_t *ends)
{
#define TW_WS(x) ((x) == ' ' || ((x) >= '\t' && (x) <= '\r'))
#define TW_LETTER(k) (py_word(c[k]) && moe_tok_category(c[k]) != MOE_TOK_GC_ND) /* [^\d\W] */
#define TW_PUNCT(k) (py_word(c[k]) || (c[k] < 0x80 && c[k] && strchr("!\"'&.,?", (int)c[k])))
    size_t m = 0;
    for (size_t i = 0, j; i < n; i = j, ends[m++] = j) {
        size_t d = i; /* an em-dash at i: two or more '-' before a \w, after a word character or punctuation */
        while (hyphens && d < n && c[d] == '-')
            d++;
        if (TW_WS(c[i])) {
            for (j = i; j < n && TW_WS(c[j]);)
                j++;
        } else if (i && d - i >= 2 && d < n && py_word(c[d]) && TW_PUNCT(i - 1)) {
            j = d;
        } else if (!hyphens) {
            for (j = i; j < n && !TW_WS(c[j]);)
                j++;
        } else {
            for (j = i + 1;; j++) { /* the shortest word followed by one of these */
                if (j < n && c[j] == '-' && ((j >= 2 && TW_LETTER(j - 2) && TW_LETTER(j - 1)) ||
                                             (j >= 3 && TW_LETTER(j - 3) && c[j - 2] == '-' && TW_LETTER(j - 1))) &&
                    j + 2 < n && TW_LETTER(j + 1) &&
                    (TW_LETTER(j + 2) || (c[j + 2] == '-' && j + 3 < n && TW_LETTER(j + 3)))) {
                    j++; /* a hyphen between letters: the word ends after it */
                    break;
                }
                if (j == n || TW_WS(c[j]))
                    break;
                size_t e = j;
                while (e < n && c[e] == '-')
                    e++;
                if (e - j >= 2 && e < n && py_word(c[e]) && TW_PUNCT(j - 1))
                    break;
            }
        }
    }
    return m;
#undef TW_WS
#undef TW_LETTER
#undef TW_PUNCT
}

/* Jinja2's wordwrap: each line of s (Python's splitlines) wrapped by textwrap.wrap (width, break_long_words,
 * break_on_hyphens; tabs and whitespace kept, whitespace dropped at the ends of the lines it makes), the
 * lines joined with wrapstring. */
static struct val wordwrap(struct render *r, const struct str *s, const struct val *width, bool long_words,
                           const struct str *wrapstring, bool hyphens, int line)
{
    double wd = num(width);
    struct buf out = { 0 };
    buf_add(r, &out, "", 0);
    uint32_t *c = r_alloc(r, (s->n + 1) * sizeof(*c));
    size_t *off = r_alloc(r, (s->n + 1) * sizeof(*off)), *ends = r_alloc(r, (s->n + 1) * sizeof(*ends));
    size_t *starts = r_alloc(r, (s->n + 1) * sizeof(*starts)), (*cur)[2] = r_alloc(r, (s->n + 1) * sizeof(*cur));
    for (size_t start = 0, i = 0, brk, para = 0; start < s->n; i += brk, start = i, para++) {
        while (i < s->n && !(brk = line_break(s->p + i, s->n - i)))
            i++;
        if (i >= s->n)
            brk = 0;
        if (para)
            buf_add(r, &out, wrapstring->p, wrapstring->n);
        size_t n = 0;
        for (size_t k = start; k < i; n++) {
            size_t l = moe_utf8_next((const unsigned char *)s->p + (off[n] = k), i - k, &c[n]);
            if (!l) /* a byte that starts no valid UTF-8 stands for itself */
                c[n] = (unsigned char)s->p[k], l = 1;
            k += l;
        }
        off[n] = i;
        size_t m = wrap_chunks(c, n, hyphens, ends);
        for (size_t k = 0; k < m; k++) starts[k] = k ? ends[k - 1] : 0;
        bool any_line = false;
        for (size_t k = 0; k < m;) { /* textwrap's _wrap_chunks */
            step(r, line);
            bool blank = true;
            for (size_t x = starts[k]; x < ends[k] && blank; x++) blank = py_space(c[x]);
            if (any_line && blank) /* a line does not start with whitespace, but the first */
                k++;
            size_t ncur = 0, cur_len = 0;
            for (; k < m && (double)(cur_len + ends[k] - starts[k]) <= wd; k++) {
                cur[ncur][0] = starts[k];
                cur[ncur++][1] = ends[k];
                cur_len += ends[k] - starts[k];
            }
            if (k < m && (double)(ends[k] - starts[k]) > wd) { /* a word longer than any line */
                if (long_words) {
                    if (width->t == V_FLOAT)
                        fail_at(&r->f, MOE_EINVAL, line, "wordwrap: slice indices must be integers, not float");
                    size_t space = wd < 1 ? 1 : (size_t)inum(width) - cur_len, cut = space;
                    if (hyphens && ends[k] - starts[k] > space) /* after its last hyphen within the space */
                        for (size_t h = starts[k] + space; h-- > starts[k] + 1;)
                            if (c[h] == '-') {
                                bool word = false;
                                for (size_t x = starts[k]; x < h && !word; x++) word = c[x] != '-';
                                if (word)
                                    cut = h + 1 - starts[k];
                                break;
                            }
                    cur[ncur][0] = starts[k];
                    cur[ncur++][1] = starts[k] += cut;
                } else if (!ncur) {
                    cur[ncur][0] = starts[k];
                    cur[ncur++][1] = ends[k++];
                }
            }
            if (ncur) { /* without a last piece of whitespace */
                blank = true;
                for (size_t x = cur[ncur - 1][0]; x < cur[ncur - 1][1] && blank; x++) blank = py_space(c[x]);
                ncur -= blank;
            }
            if (!ncur)
                continue;
            if (any_line)
                buf_add(r, &out, wrapstring->p, wrapstring->n);
            any_line = true;
            for (size_t x = 0; x < ncur; x++)
                buf_add(r, &out, s->p + off[cur[x][0]], off[cur[x][1]] - off[cur[x][0]]);
        }
    }
    return vbuf(r, &out);
}

/* Jinja2's url_quote(v): urllib's quote of the UTF-8 of str(v), letters, digits and _.-~ kept (and '/' unless
 * for a query, where a space is '+'), every other byte %XX. */
static void url_quote(struct render *r, struct buf *b, const struct val *v, bool query, int line)
{
    struct val s = stringify(r, v, line);
    size_t from = 0;
    for (size_t i = 0; i < s.s->n; i++) {
        unsigned char ch = (unsigned char)s.s->p[i];
        if ((ch >= '0' && ch <= '9') || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z') || (ch && strchr("_.-~", ch)) ||
            (ch == '/' && !query))
            continue;
        buf_add(r, b, s.s->p + from, i - from);
        if (ch == ' ' && query)
            buf_adds(r, b, "+");
        else
            buf_addf(r, b, "%%%02X", ch);
        from = i + 1;
    }
    buf_add(r, b, s.s->p + from, s.s->n - from);
}

static void buf_cp(struct render *r, struct buf *b, uint32_t cp)
{
    char enc[4];
    buf_add(r, b, enc, moe_utf8_put(cp, enc));
}

static int entity_cmp(const void *key, const void *elem)
{
    const struct str *k = key;
    const char *name = ((const struct moe_html_entity *)elem)->name;
    size_t n = strlen(name);
    int c = memcmp(k->p, name, k->n < n ? k->n : n);
    return c ? c : (k->n > n) - (k->n < n);
}

static const struct moe_html_entity *entity_find(const char *p, size_t n)
{
    struct { size_t n; char p[40]; } k; /* a struct str of at most 33 bytes */
    memcpy(k.p, p, n);
    k.n = n;
    return bsearch(&k, moe_html_entities, moe_html_n_entities, sizeof(*moe_html_entities), entity_cmp);
}

/* Python's html.unescape(s): each &#digits, &#xhex (';' optional) and &name reference read as its character(s).
 * A number is remapped as HTML5 says (Windows-1252 for 0x80-0x9f, U+FFFD for 0, a surrogate or one past
 * U+10FFFF) or dropped (controls, noncharacters); a name is the longest known one that begins the up to 32
 * characters after '&' (outside tab, newline, form feed, space, <, &, # and ;) and the ';' after them. */
static struct val html_unescape(struct render *r, const struct str *s)
{
    if (!memchr(s->p, '&', s->n))
        return (struct val){ .t = V_STR, .s = s };
    struct buf b = { 0 };
    buf_add(r, &b, "", 0);
    size_t from = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->p[i] != '&')
            continue;
        const char *p = s->p + i + 1, *end = s->p + s->n;
        size_t taken = 0; /* bytes after '&' read as the reference */
        if (p < end && *p == '#') {
            bool hex = p + 2 <= end && (p[1] == 'x' || p[1] == 'X') && !(p[1] >= '0' && p[1] <= '9');
            const char *d = p + 1 + hex;
            uint32_t num = 0;
            size_t nd = 0;
            for (; d + nd < end; nd++) {
                int c = d[nd], v = c >= '0' && c <= '9' ? c - '0'
                                 : hex && (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (c | 0x20) - 'a' + 10 : -1;
                if (v < 0)
                    break;
                num = num > 0x10FFFF ? num : num * (hex ? 16 : 10) + (uint32_t)v;
            }
            if (!nd)
                continue; /* '&#' not followed by a number: as it is */
            taken = (size_t)(d + nd - p) + (d + nd < end && d[nd] == ';');
            buf_add(r, &b, s->p + from, i - from);
            const struct moe_html_charref *cr = NULL;
            for (unsigned k = 0; k < moe_html_n_invalid_charrefs && !cr; k++)
                if (moe_html_invalid_charrefs[k].from == num)
                    cr = &moe_html_invalid_charrefs[k];
            bool drop = false;
            for (unsigned k = 0; k < moe_html_n_invalid_cps && !drop; k++) drop = moe_html_invalid_cps[k] == num;
            if (cr)
                buf_cp(r, &b, cr->to);
            else if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF)
                buf_cp(r, &b, 0xFFFD);
            else if (!drop)
                buf_cp(r, &b, num);
        } else {
            size_t n = 0, ncp = 0, ascii = 0; /* bytes of the name, its characters, its ASCII bytes at the start */
            while (p + n < end && ncp < 32 && !strchr("\t\n\f <&#;", p[n])) {
                uint32_t cp;
                size_t k = moe_utf8_next((const unsigned char *)p + n, (size_t)(end - p - n), &cp);
                if (ascii == n && k == 1) /* one byte: ASCII; 0 (not UTF-8) leaves cp unset */
                    ascii++;
                n += k ? k : 1;
                ncp++;
            }
            if (!n)
                continue;
            bool semi = p + n < end && p[n] == ';';
            const struct moe_html_entity *e = ascii == n ? entity_find(p, n + semi) : NULL;
            size_t len = n + semi;
            /* else the longest known name that begins it, of at least 2 characters, the rest kept */
            for (size_t x = (ncp + semi - 1 < ascii ? ncp + semi - 1 : ascii); !e && x >= 2; x--)
                if ((e = entity_find(p, x)))
                    len = x;
            if (!e)
                continue;
            buf_add(r, &b, s->p + from, i - from);
            buf_cp(r, &b, e->cp[0]);
            if (e->cp[1])
                buf_cp(r, &b, e->cp[1]);
            taken = len;
        }
        from = i + 1 + taken;
        i = from - 1;
    }
    buf_add(r, &b, s->p + from, s->n - from);
    return vbuf(r, &b);
}

/* markupsafe's Markup.striptags() of str(v): comments (<!-- to the first --> after it) taken out, then tags
 * (< to the first > after it), each time the first one left, and where one has no end the rest kept; runs of
 * whitespace made one space, the ends trimmed; references unescaped. */
static struct val striptags(struct render *r, const struct val *v, int line)
{
    const struct str *s = stringify(r, v, line).s;
    struct buf b = { 0 }, c = { 0 };
    buf_add(r, &b, "", 0);
    buf_add(r, &c, "", 0);
    size_t i = 0;
    /* comments: the text so far never holds "<!--", so the first one is the first to be completed */
    for (; i < s->n; i++) {
        buf_add(r, &b, s->p + i, 1);
        if (b.n < 4 || memcmp(b.p + b.n - 4, "<!--", 4))
            continue;
        /* "-->" from the comment's start: "<!-->" and "<!--->" end where they begin */
        const char *rest = s->p + i + 1;
        size_t left = s->n - i - 1, e;
        if (left >= 1 && rest[0] == '>')
            e = 1;
        else if (left >= 2 && rest[0] == '-' && rest[1] == '>')
            e = 2;
        else {
            const char *m = find_bytes(rest, left, "-->", 3);
            if (!m)
                break;
            e = (size_t)(m - rest) + 3;
        }
        b.n -= 4;
        b.p[b.n] = 0;
        i += e;
    }
    if (i < s->n)
        buf_add(r, &b, s->p + i + 1, s->n - i - 1);
    /* tags: each '<' to the first '>' after it; from one without, the text as it is */
    for (i = 0; i < b.n; i++) {
        if (b.p[i] != '<') {
            buf_add(r, &c, b.p + i, 1);
            continue;
        }
        const char *gt = memchr(b.p + i + 1, '>', b.n - i - 1);
        if (!gt) {
            buf_add(r, &c, b.p + i, b.n - i);
            break;
        }
        i = (size_t)(gt - b.p);
    }
    /* " ".join(value.split()) */
    struct buf w = { 0 };
    buf_add(r, &w, "", 0);
    bool gap = false;
    for (size_t k = 0; k < c.n;) {
        uint32_t cp;
        size_t len = moe_utf8_next((const unsigned char *)c.p + k, c.n - k, &cp);
        len = len ? len : 1;
        if (py_space(cp)) {
            gap = w.n > 0;
        } else {
            if (gap)
                buf_adds(r, &w, " ");
            gap = false;
            buf_add(r, &w, c.p + k, len);
        }
        k += len;
    }
    return html_unescape(r, vbuf(r, &w).s);
}

static struct val filter(struct render *r, const struct node *n)
{
    struct val v = eval(r, n->a);
    struct args a;
    eval_args(r, n, &a);
    const char *f = n->name;
    int line = n->line;
    check_args(r, FILTER_SIGS, MOE_ARRAY_LEN(FILTER_SIGS), f, NULL, &a, line);
    if (!strcmp(f, "length") || !strcmp(f, "count"))
        return vint(length(r, &v, line));
    if (!strcmp(f, "safe")) /* Markup(str(value)) */
        return as_markup(stringify(r, &v, line), true);
    if (!strcmp(f, "escape") || !strcmp(f, "e")) /* escape(value): HTML entities, once */
        return html_escape(r, &v, line);
    if (!strcmp(f, "forceescape")) { /* escape(str(value)): a Markup's text escaped again */
        struct val s = as_markup(stringify(r, &v, line), false);
        return html_escape(r, &s, line);
    }
    if (!strcmp(f, "string"))
        return stringify(r, &v, line);
    if (!strcmp(f, "striptags"))
        return striptags(r, &v, line);
    if (!strcmp(f, "xmlattr")) { /* xmlattr(autospace=True): key="value" of each item, escaped; none and undefined
                                     left out; a key with whitespace, '/', '>' or '=' refused, as Jinja2 3.1.4 does */
        if (v.t != V_DICT || v.d->ns)
            fail_at(&r->f, MOE_EINVAL, line, "xmlattr: %s %s is not a mapping", article(type_name(&v)), type_name(&v));
        const struct val *as = arg(&a, 0, "autospace");
        struct buf b = { 0 };
        buf_add(r, &b, "", 0);
        for (size_t i = 0; i < v.d->n; i++) {
            const struct val *x = &v.d->v[i];
            if (x->t == V_NONE || x->t == V_UNDEF)
                continue;
            const struct str *k = v.d->k[i];
            if (!key_is_str(v.d, i))
                fail_at(&r->f, MOE_EINVAL, line, "xmlattr: attribute names must be strings, not %s",
                        type_name(&v.d->kv[i]));
            for (size_t j = 0; j < k->n; j++)
                if (strchr(" \t\n\r\f\v/>=", k->p[j]) && k->p[j])
                    fail_at(&r->f, MOE_EINVAL, line, "xmlattr: invalid character in attribute name '%s'", k->p);
            if (b.n || !as || truthy(as))
                buf_adds(r, &b, " ");
            struct val key = { .t = V_STR, .s = k }, ek = html_escape(r, &key, line), ev = html_escape(r, x, line);
            buf_add(r, &b, ek.s->p, ek.s->n);
            buf_adds(r, &b, "=\"");
            buf_add(r, &b, ev.s->p, ev.s->n);
            buf_adds(r, &b, "\"");
        }
        return vbuf(r, &b);
    }
    if (!strcmp(f, "urlencode")) { /* a string or a value that does not iterate quoted; else key=value pairs */
        struct buf b = { 0 };
        buf_add(r, &b, "", 0);
        if (v.t == V_STR || !(v.t == V_LIST || v.t == V_UNDEF || (v.t == V_DICT && !v.d->ns))) {
            url_quote(r, &b, &v, false, line);
            return vbuf(r, &b);
        }
        const struct list *items = iter_list(r, &v, line);
        for (size_t i = 0; i < items->n; i++) {
            struct val k = items->v[i], x; /* a dict's key and value, else an item unpacked into two */
            if (v.t == V_DICT) {
                x = v.d->v[i];
            } else {
                const struct list *kv = k.t == V_LIST || k.t == V_STR || (k.t == V_DICT && !k.d->ns)
                                      ? iter_list(r, &k, line) : NULL;
                if (!kv || kv->n != 2)
                    fail_at(&r->f, MOE_EINVAL, line, "urlencode: each item must be a (key, value) pair, not %s %s",
                            article(type_name(&k)), type_name(&k));
                k = kv->v[0];
                x = kv->v[1];
            }
            if (i)
                buf_adds(r, &b, "&");
            url_quote(r, &b, &k, true, line);
            buf_adds(r, &b, "=");
            url_quote(r, &b, &x, true, line);
        }
        return vbuf(r, &b);
    }
    if (!strcmp(f, "tojson")) { /* tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False) */
        const struct val *asc = arg(&a, 0, "ensure_ascii"), *ind = arg(&a, 1, "indent");
        const struct val *sep = arg(&a, 2, "separators"), *sk = arg(&a, 3, "sort_keys");
        struct json_opts o = { .ensure_ascii = asc && truthy(asc), .sort_keys = sk && truthy(sk) };
        if (ind && ind->t == V_STR) {
            o.indent = ind->s;
        } else if (ind && ind->t != V_NONE) {
            /* k spaces, at most as many as the output may hold: any use of more fails there all the same */
            int64_t k = arg_int(r, &a, 1, "indent", 0, f, line);
            size_t nsp = k <= 0 ? 0 : k > (int64_t)MOE_JINJA_MAX_OUTPUT ? MOE_JINJA_MAX_OUTPUT : (size_t)k;
            static const char spaces[] = "                                                                ";
            struct buf sp = { 0 };
            buf_add(r, &sp, "", 0);
            for (size_t i = 0; i < nsp; i += sizeof(spaces) - 1)
                buf_add(r, &sp, spaces, nsp - i < sizeof(spaces) - 1 ? nsp - i : sizeof(spaces) - 1);
            o.indent = vbuf(r, &sp).s;
        }
        o.item_sep = vstr(r, o.indent ? "," : ", ", o.indent ? 1 : 2).s;
        o.key_sep = vstr(r, ": ", 2).s;
        if (sep && sep->t == V_STR && cp_count(sep->s) == 2) { /* Python unpacks a string too: 'ab' is 'a', 'b' */
            size_t k = cp_offset(sep->s, 1);
            o.item_sep = vstr(r, sep->s->p, k).s;
            o.key_sep = vstr(r, sep->s->p + k, sep->s->n - k).s;
        } else if (sep && sep->t != V_NONE) {
            if (sep->t != V_LIST || sep->l->n != 2 || sep->l->v[0].t != V_STR || sep->l->v[1].t != V_STR)
                fail_at(&r->f, MOE_EINVAL, line, "tojson: separators must be two strings");
            o.item_sep = sep->l->v[0].s;
            o.key_sep = sep->l->v[1].s;
        }
        struct buf b = { 0 };
        buf_add(r, &b, "", 0);
        to_json(r, &b, &v, &o, 0, line);
        return vbuf(r, &b);
    }
    if (!strcmp(f, "default") || !strcmp(f, "d")) {
        const struct val *dv = arg(&a, 0, "default_value");
        const struct val *boolean = arg(&a, 1, "boolean");
        bool use = v.t == V_UNDEF || (boolean && truthy(boolean) && !truthy(&v));
        return use ? (dv ? *dv : vstr(r, "", 0)) : v;
    }
    if (!strcmp(f, "items")) {
        if (v.t == V_UNDEF)
            return (struct val){ .t = V_LIST, .l = new_list(r, 0) };
        if (v.t != V_DICT)
            fail_at(&r->f, MOE_EINVAL, line, "items: %s %s is not a mapping", article(type_name(&v)), type_name(&v));
        struct val items = call_method(r, &v, "items", &a, line);
        struct list *l = (struct list *)items.l;
        l->view = 0;
        l->gen = true; /* Jinja2's items filter is a generator of the pairs */
        return items;
    }
    if (!strcmp(f, "dictsort")) { /* dictsort(case_sensitive=False, by='key', reverse=False) */
        if (v.t != V_DICT)
            fail_at(&r->f, MOE_EINVAL, line, "dictsort: %s %s is not a mapping", article(type_name(&v)), type_name(&v));
        const struct val *cs = arg(&a, 0, "case_sensitive"), *rv = arg(&a, 2, "reverse");
        const struct str *by = arg_str(r, &a, 1, "by", f, line);
        if (by && strcmp(by->p, "key") && strcmp(by->p, "value"))
            fail_at(&r->f, MOE_EINVAL, line, "dictsort: by must be 'key' or 'value'");
        int at = by && by->p[0] == 'v';
        bool sens = cs && truthy(cs), rev = rv && truthy(rv);
        struct args none = { 0 };
        struct val items = call_method(r, &v, "items", &none, line);
        struct list *l = (struct list *)items.l;
        l->view = 0; /* sorted(): a list */
        for (size_t i = 1; i < l->n; i++) /* insertion sort: stable, as Python's */
            for (size_t j = i; j > 0; j--) {
                step(r, line);
                struct val x = sort_key(r, l->v[j - 1].l->v[at], sens), y = sort_key(r, l->v[j].l->v[at], sens);
                int c = compare(r, &x, &y, line);
                if (rev ? c >= 0 : c <= 0)
                    break;
                struct val t = l->v[j];
                l->v[j] = l->v[j - 1];
                l->v[j - 1] = t;
            }
        return items;
    }
    if (!strcmp(f, "format")) { /* str(value) % args, or % {name: value} for keyword arguments */
        if (a.npos && a.nkw)
            fail_at(&r->f, MOE_EINVAL, line, "format: positional and keyword arguments at the same time");
        struct val s = stringify(r, &v, line), args;
        if (a.nkw) {
            struct dict *d = new_dict(r);
            for (int i = 0; i < a.nkw; i++) dict_sets(r, d, a.names[i], a.kw[i]);
            args = (struct val){ .t = V_DICT, .d = d };
        } else {
            struct list *l = new_list(r, (size_t)a.npos);
            l->tuple = true;
            for (int i = 0; i < a.npos; i++) l->v[i] = a.pos[i];
            args = (struct val){ .t = V_LIST, .l = l };
        }
        return pct_format(r, &s, &args, line);
    }
    if (!strcmp(f, "wordwrap")) { /* wordwrap(width=79, break_long_words=True, wrapstring=None, break_on_hyphens) */
        if (v.t == V_UNDEF)
            undefined_error(r, &v, line);
        if (v.t != V_STR)
            fail_at(&r->f, MOE_EINVAL, line, "wordwrap: %s %s is not a string", article(type_name(&v)), type_name(&v));
        const struct val *w = arg(&a, 0, "width"), *blw = arg(&a, 1, "break_long_words");
        const struct val *hy = arg(&a, 3, "break_on_hyphens");
        const struct str *ws = arg_str(r, &a, 2, "wrapstring", f, line);
        struct val dw = vint(79);
        w = w ? w : &dw;
        if (!is_num(w))
            fail_at(&r->f, MOE_EINVAL, line, "wordwrap: the width must be a number, not %s", type_name(w));
        if (num(w) <= 0)
            fail_at(&r->f, MOE_EINVAL, line, "wordwrap: invalid width %g (must be > 0)", num(w));
        return wordwrap(r, v.s, w, !blw || truthy(blw), ws ? ws : r_str(r, "\n", 1), !hy || truthy(hy), line);
    }
    if (!strcmp(f, "pprint")) { /* pprint.pformat(value) */
        struct buf b = { 0 };
        buf_add(r, &b, "", 0);
        pformat(r, &b, &v, 0, 0, 0, line);
        return vbuf(r, &b);
    }
    if (!strcmp(f, "attr")) /* getattr(value, name), never the item of that name */
        return py_getattr(r, &v, arg(&a, 0, "name"), line);
    if (!strcmp(f, "wordcount")) { /* the runs of Python's \w (letters, numbers, '_') in str(value) */
        struct val s = stringify(r, &v, line);
        int64_t words = 0;
        bool in_word = false;
        for (size_t i = 0; i < s.s->n;) {
            uint32_t cp;
            i += str_cp(s.s, i, &cp);
            bool w = py_word(cp);
            words += w && !in_word;
            in_word = w;
        }
        return vint(words);
    }
    if (!strcmp(f, "center")) { /* str(value).center(width=80), the odd space on the left when width is odd */
        struct val s = stringify(r, &v, line);
        const struct val *w = arg(&a, 0, "width");
        if (w && w->t != V_INT && w->t != V_BOOL)
            fail_at(&r->f, MOE_EINVAL, line, "center: the width must be an integer, not %s", type_name(w));
        return str_pad(r, &s, w ? inum(w) : 80, NULL, 'c');
    }
    if (!strcmp(f, "truncate")) { /* truncate(length=255, killwords=False, end='...', leeway=5) */
        const struct val *lenv = arg(&a, 0, "length"), *kw = arg(&a, 1, "killwords"), *endv = arg(&a, 2, "end");
        const struct val *lw = arg(&a, 3, "leeway");
        struct val dlen = vint(255), dend = vstr(r, "...", 3), dlw = vint(5); /* leeway: Jinja2's policy */
        lenv = lenv ? lenv : &dlen;
        endv = endv ? endv : &dend;
        lw = lw && lw->t != V_NONE ? lw : &dlw;
        int64_t end_len = length(r, endv, line);
        if (!is_num(lenv) || !is_num(lw))
            fail_at(&r->f, MOE_EINVAL, line, "truncate: '>=' is not supported between a %s and an int",
                    type_name(is_num(lenv) ? lw : lenv));
        if (num(lenv) < (double)end_len)
            fail_at(&r->f, MOE_EINVAL, line, "truncate: expected length >= %lld", (long long)end_len);
        if (num(lw) < 0)
            fail_at(&r->f, MOE_EINVAL, line, "truncate: expected leeway >= 0");
        if (v.t != V_STR && v.t != V_UNDEF && (v.t != V_LIST || v.l->gen) && v.t != V_DICT)
            fail_at(&r->f, MOE_EINVAL, line, "truncate: %s %s has no length", article(type_name(&v)), type_name(&v));
        if ((double)length(r, &v, line) <= num(lenv) + num(lw)) /* short enough: the value as it is */
            return v;
        if (v.t != V_STR)
            fail_at(&r->f, MOE_EINVAL, line, "truncate: %s %s cannot be cut as a string",
                    article(type_name(&v)), type_name(&v));
        if (lenv->t == V_FLOAT)
            fail_at(&r->f, MOE_EINVAL, line, "truncate: slice indices must be integers, not float");
        if (endv->t != V_STR)
            fail_at(&r->f, MOE_EINVAL, line, "truncate: can only concatenate a string (not %s %s) to a string",
                    article(type_name(endv)), type_name(endv));
        size_t cut = cp_offset(v.s, (size_t)(inum(lenv) - end_len)); /* s[:length - len(end)] */
        if (!(kw && truthy(kw))) /* then without its last word: up to the last space */
            for (size_t k = cut; k-- > 0;)
                if (v.s->p[k] == ' ') {
                    cut = k;
                    break;
                }
        struct val e = v.markup ? html_escape(r, endv, line) : *endv; /* Markup + end: the end escaped */
        struct buf b = { 0 };
        buf_add(r, &b, v.s->p, cut);
        buf_add(r, &b, e.s->p, e.s->n);
        return as_markup(vbuf(r, &b), v.markup);
    }
    if (!strcmp(f, "indent")) { /* indent(width=4, first=False, blank=False): width spaces, or a string */
        if (v.t == V_UNDEF)
            undefined_error(r, &v, line);
        if (v.t != V_STR)
            fail_at(&r->f, MOE_EINVAL, line, "indent: %s %s is not a string", article(type_name(&v)), type_name(&v));
        const struct val *w = arg(&a, 0, "width"), *first = arg(&a, 1, "first"), *blank = arg(&a, 2, "blank");
        const struct str *ind;
        if (w && w->t == V_STR) {
            ind = w->s;
        } else {
            if (w && w->t == V_NONE)
                fail_at(&r->f, MOE_EINVAL, line, "indent: the width must be an integer or a string, not none");
            int64_t k = arg_int(r, &a, 0, "width", 4, f, line);
            struct buf sp = { 0 };
            buf_add(r, &sp, "", 0);
            buf_fill(r, &sp, ' ', k < 0 ? 0 : (size_t)k); /* the output bound stops a huge one */
            ind = vbuf(r, &sp).s;
        }
        return as_markup(indent(r, v.s, ind, first && truthy(first), blank && truthy(blank)), v.markup);
    }
    /* these keep a Markup one (str(value) is Markup's own there), but title, which joins pieces to a str */
    if (!strcmp(f, "trim")) {
        struct val s = stringify(r, &v, line);
        return as_markup(strip(r, s.s, markup_arg(r, &s, arg_str(r, &a, 0, "chars", f, line), line), 3), s.markup);
    }
    if (!strcmp(f, "upper") || !strcmp(f, "lower") || !strcmp(f, "title") || !strcmp(f, "capitalize")) {
        struct val s = stringify(r, &v, line);
        return as_markup(str_case(r, s.s, f[0] == 'l' ? CASE_LOWER : f[0] == 'u' ? CASE_UPPER
                                         : f[0] == 't' ? CASE_JTITLE : CASE_CAPITALIZE), s.markup && f[0] != 't');
    }
    if (!strcmp(f, "replace")) {
        struct val s = stringify(r, &v, line);
        const struct str *o = arg_str(r, &a, 0, "old", f, line), *nw = arg_str(r, &a, 1, "new", f, line);
        if (!o || !nw)
            fail_at(&r->f, MOE_EINVAL, line, "replace needs two strings");
        return replace(r, s.s, o, nw, arg_int(r, &a, 2, "count", -1, f, line));
    }
    if (!strcmp(f, "int")) { /* int(value, base), else int(float(value)), else the default */
        if (v.t == V_UNDEF)
            undefined_error(r, &v, line);
        if (v.t == V_INT || v.t == V_BOOL)
            return vint(inum(&v));
        double x = v.t == V_FLOAT ? v.f : NAN;
        if (v.t == V_STR) {
            struct val t = strip(r, v.s, NULL, 3);
            t = ascii_decimal(r, t.s);
            int64_t i, base = arg_int(r, &a, 1, "base", 10, f, line);
            int st = py_parse_int(t.s->p, t.s->n, base, &i);
            if (st > 0)
                fail_at(&r->f, MOE_ERANGE, line, "int: %.40s is beyond 64 bits", t.s->p);
            if (!st)
                return vint(i);
            if (!py_parse_float(t.s->p, t.s->n, &x) || isinf(x))
                x = NAN; /* int(float(value)) failing, the default */
        }
        if (isinf(x)) /* int() of an infinite float: Python's OverflowError, which Jinja2 does not catch */
            fail_at(&r->f, MOE_EINVAL, line, "int: cannot convert float infinity to integer");
        if (isfinite(x) && fabs(x) >= 0x1p63)
            fail_at(&r->f, MOE_ERANGE, line, "int: %g is beyond 64 bits", x);
        if (isfinite(x))
            return vint((int64_t)x);
        const struct val *dv = arg(&a, 0, "default"); /* any value, as it is */
        return dv ? *dv : vint(0);
    }
    if (!strcmp(f, "float")) { /* float(value), else the default (0.0) */
        if (v.t == V_UNDEF)
            undefined_error(r, &v, line);
        if (is_num(&v))
            return (struct val){ .t = V_FLOAT, .f = num(&v) };
        double x;
        struct val t = v.t == V_STR ? strip(r, v.s, NULL, 3) : v;
        if (v.t == V_STR)
            t = ascii_decimal(r, t.s);
        if (v.t == V_STR && py_parse_float(t.s->p, t.s->n, &x))
            return (struct val){ .t = V_FLOAT, .f = x };
        const struct val *dv = arg(&a, 0, "default");
        return dv ? *dv : (struct val){ .t = V_FLOAT, .f = 0.0 };
    }
    if (!strcmp(f, "abs")) {
        if (v.t == V_INT || v.t == V_BOOL)
            return vint(inum(&v) < 0 ? -inum(&v) : inum(&v));
        if (v.t == V_FLOAT)
            return (struct val){ .t = V_FLOAT, .f = fabs(v.f) };
        fail_at(&r->f, MOE_EINVAL, line, "abs: %s %s is not a number", article(type_name(&v)), type_name(&v));
    }
    if (!strcmp(f, "round")) { /* round(precision=0, method='common'|'ceil'|'floor') */
        if (v.t == V_UNDEF)
            undefined_error(r, &v, line);
        if (!is_num(&v))
            fail_at(&r->f, MOE_EINVAL, line, "round: %s %s is not a number", article(type_name(&v)), type_name(&v));
        int64_t prec = arg_int(r, &a, 0, "precision", 0, f, line);
        const struct str *method = arg_str(r, &a, 1, "method", f, line);
        const char *m = method ? method->p : "common";
        if (strcmp(m, "common") && strcmp(m, "ceil") && strcmp(m, "floor"))
            fail_at(&r->f, MOE_EINVAL, line, "round: method must be common, ceil or floor");
        return py_round(r, &v, prec, strcmp(m, "common") ? m[0] : 'r', line);
    }
    /* the rest work on sequences */
    if (!strcmp(f, "first") || !strcmp(f, "last")) {
        if (f[0] == 'l' && v.t == V_LIST && v.l->gen)
            fail_at(&r->f, MOE_EINVAL, line, "last: a generator cannot be reversed (apply |list first)");
        const struct list *l = iter_list(r, &v, line);
        if (!l->n)
            return vundef(NULL);
        return l->v[f[0] == 'f' ? 0 : l->n - 1];
    }
    if (!strcmp(f, "list")) {
        const struct list *src = iter_list(r, &v, line);
        if (!src->gen && !src->tuple && !src->range && !src->view)
            return (struct val){ .t = V_LIST, .l = src };
        struct list *l = new_list(r, src->n);
        if (src->n)
            memcpy(l->v, src->v, src->n * sizeof(*l->v));
        return (struct val){ .t = V_LIST, .l = l };
    }
    if (!strcmp(f, "reverse")) {
        if (v.t == V_STR) {
            struct list *l = iter_list(r, &v, line);
            struct buf b = { 0 };
            buf_add(r, &b, "", 0);
            for (size_t i = l->n; i-- > 0;) buf_add(r, &b, l->v[i].s->p, l->v[i].s->n);
            return as_markup(vbuf(r, &b), v.markup);
        }
        const struct list *src = iter_list(r, &v, line);
        struct list *l = new_list(r, src->n);
        l->gen = true; /* reversed() */
        for (size_t i = 0; i < src->n; i++) l->v[i] = src->v[src->n - 1 - i];
        return (struct val){ .t = V_LIST, .l = l };
    }
    if (!strcmp(f, "join")) {
        const struct list *l = iter_list(r, &v, line);
        const struct str *sep = arg_str(r, &a, 0, "d", f, line);
        const struct val *attr = arg_attr(r, &a, 1, "attribute", f, line);
        struct buf b = { 0 };
        buf_add(r, &b, "", 0);
        for (size_t i = 0; i < l->n; i++) {
            if (i && sep)
                buf_add(r, &b, sep->p, sep->n);
            struct val x = attr ? attr_path(r, &l->v[i], attr, NULL, line) : l->v[i];
            to_str(r, &b, &x, line);
        }
        return vbuf(r, &b);
    }
    if (!strcmp(f, "sort")) { /* sort(reverse=false, case_sensitive=false, attribute=none) */
        const struct list *src = iter_list(r, &v, line);
        const struct val *rv = arg(&a, 0, "reverse"), *cs = arg(&a, 1, "case_sensitive");
        const struct val *attr = arg_attr(r, &a, 2, "attribute", f, line);
        return (struct val){ .t = V_LIST, .l = sorted_by(r, src, attr, NULL, cs && truthy(cs), rv && truthy(rv), true,
                                                         NULL, line) };
    }
    if (!strcmp(f, "groupby")) { /* groupby(attribute, default=None, case_sensitive=False) */
        const struct list *src = iter_list(r, &v, line);
        const struct val *attr = arg_attr(r, &a, 0, "attribute", f, line);
        const struct val *dflt = arg(&a, 1, "default"), *cs = arg(&a, 2, "case_sensitive");
        if (dflt && dflt->t == V_NONE)
            dflt = NULL; /* as Jinja2: a default of none is none given */
        struct val *keys;
        const struct list *l = sorted_by(r, src, attr, dflt, cs && truthy(cs), false, false, &keys, line);
        struct list *groups = new_list(r, l->n);
        groups->n = 0;
        for (size_t i = 0, j; i < l->n; i = j) { /* runs of equal keys, as itertools.groupby */
            for (j = i + 1; j < l->n && equal(r, &keys[i], &keys[j]); j++)
                step(r, line);
            struct list *items = new_list(r, j - i), *g = new_list(r, 2);
            memcpy(items->v, l->v + i, (j - i) * sizeof(*items->v));
            g->tuple = g->group = true;
            g->v[0] = attr ? attr_path(r, &l->v[i], attr, dflt, line) : l->v[i]; /* the first item's, case kept */
            g->v[1] = (struct val){ .t = V_LIST, .l = items };
            groups->v[groups->n++] = (struct val){ .t = V_LIST, .l = g };
        }
        return (struct val){ .t = V_LIST, .l = groups };
    }
    if (!strcmp(f, "slice")) { /* slice(slices, fill_with=None): a generator of slices lists, the first
                                    len % slices of them one longer, the others filled to that length */
        const struct list *src = iter_list(r, &v, line);
        const struct val *nv = arg(&a, 0, "slices"), *fill = arg(&a, 1, "fill_with");
        if (nv->t != V_INT && nv->t != V_BOOL)
            fail_at(&r->f, MOE_EINVAL, line, "slice: the number of slices must be an integer, not %s", type_name(nv));
        int64_t ns = inum(nv), len = (int64_t)src->n;
        if (!ns)
            fail_at(&r->f, MOE_EINVAL, line, "slice: integer division or modulo by zero");
        if (ns > (int64_t)(JJ_MAX_ARENA / sizeof(struct val)))
            fail_at(&r->f, MOE_ERANGE, line, "rendering needs more than %u MiB of memory", JJ_MAX_ARENA >> 20);
        struct list *out = new_list(r, ns > 0 ? (size_t)ns : 0);
        out->gen = true;
        /* Python's floor division and modulo; a negative count makes no slices */
        int64_t per = ns > 0 ? len / ns : 0, extra = ns > 0 ? len % ns : 0;
        bool filled = fill && fill->t != V_NONE;
        for (int64_t k = 0, start = 0; k < ns; k++) {
            int64_t cnt = per + (k < extra), pad = filled && k >= extra;
            struct list *b = new_list(r, (size_t)(cnt + pad));
            if (cnt)
                memcpy(b->v, src->v + start, (size_t)cnt * sizeof(*b->v));
            if (pad)
                b->v[cnt] = *fill;
            out->v[k] = (struct val){ .t = V_LIST, .l = b };
            start += cnt;
        }
        return (struct val){ .t = V_LIST, .l = out };
    }
    if (!strcmp(f, "batch")) { /* batch(linecount, fill_with=None): a generator of lists of linecount items */
        const struct list *src = iter_list(r, &v, line);
        const struct val *lc = arg(&a, 0, "linecount"), *fill = arg(&a, 1, "fill_with");
        struct list *out = new_list(r, src->n + 1);
        out->n = 0;
        out->gen = true;
        size_t start = 0;
        for (size_t i = 0; i <= src->n; i++) { /* a batch ends where it holds linecount items (Python's ==) */
            bool full = i < src->n && is_num(lc) && (double)(i - start) == num(lc);
            if (!full && !(i == src->n && start < i))
                continue;
            size_t cnt = i - start, extra = 0;
            if (!full && fill && fill->t != V_NONE) { /* the last, filled up to linecount */
                if (!is_num(lc))
                    fail_at(&r->f, MOE_EINVAL, line, "batch: '<' is not supported between an int and %s %s",
                            article(type_name(lc)), type_name(lc));
                if ((double)cnt < num(lc)) {
                    if (lc->t == V_FLOAT)
                        fail_at(&r->f, MOE_EINVAL, line, "batch: can't multiply a list by a float");
                    if (inum(lc) - (int64_t)cnt > (int64_t)(JJ_MAX_ARENA / sizeof(struct val)))
                        fail_at(&r->f, MOE_ERANGE, line, "rendering needs more than %u MiB of memory",
                                JJ_MAX_ARENA >> 20);
                    extra = (size_t)(inum(lc) - (int64_t)cnt);
                }
            }
            struct list *b = new_list(r, cnt + extra);
            if (cnt)
                memcpy(b->v, src->v + start, cnt * sizeof(*b->v));
            for (size_t k = cnt; k < cnt + extra; k++) b->v[k] = *fill;
            out->v[out->n++] = (struct val){ .t = V_LIST, .l = b };
            start = i;
        }
        return (struct val){ .t = V_LIST, .l = out };
    }
    if (!strcmp(f, "unique")) { /* unique(case_sensitive=False, attribute=None): a generator */
        const struct list *src = iter_list(r, &v, line);
        const struct val *cs = arg(&a, 0, "case_sensitive");
        const struct val *attr = arg_attr(r, &a, 1, "attribute", f, line);
        bool sens = cs && truthy(cs);
        struct list *l = new_list(r, src->n);
        struct val *keys = src->n ? r_alloc(r, src->n * sizeof(*keys)) : NULL;
        l->n = 0;
        l->gen = true;
        for (size_t i = 0; i < src->n; i++) {
            struct val k = sort_key(r, attr ? attr_path(r, &src->v[i], attr, NULL, line) : src->v[i], sens);
            if (!hashable(r, &k, line)) /* Jinja2 keeps what it has seen in a set */
                fail_at(&r->f, MOE_EINVAL, line, "unique: %s %s cannot be compared as a set's item (a list or dict)",
                        article(type_name(&k)), type_name(&k));
            bool seen = false;
            for (size_t j = 0; j < l->n && !seen; j++) {
                step(r, line);
                seen = equal(r, &keys[j], &k);
            }
            if (!seen) {
                keys[l->n] = k;
                l->v[l->n++] = src->v[i];
            }
        }
        return (struct val){ .t = V_LIST, .l = l };
    }
    if (!strcmp(f, "sum") || !strcmp(f, "min") || !strcmp(f, "max")) {
        const struct list *l = iter_list(r, &v, line);
        if (f[1] == 'u') { /* sum(attribute=None, start=0) */
            const struct val *attr = arg_attr(r, &a, 0, "attribute", f, line);
            const struct val *start = arg(&a, 1, "start");
            struct val acc = start ? *start : vint(0);
            if (acc.t == V_STR) /* Python's sum() refuses a string start, however many items */
                fail_at(&r->f, MOE_EINVAL, line, "sum: can't sum strings (use join instead)");
            for (size_t i = 0; i < l->n; i++)
                acc = arith(r, OP_ADD, acc, attr ? attr_path(r, &l->v[i], attr, NULL, line) : l->v[i], line);
            return acc;
        }
        if (!l->n) /* min/max(case_sensitive=False, attribute=None) */
            return vundef(NULL);
        const struct val *cs = arg(&a, 0, "case_sensitive");
        const struct val *attr = arg_attr(r, &a, 1, "attribute", f, line);
        bool sens = cs && truthy(cs);
        size_t best = 0;
        struct val bk = sort_key(r, attr ? attr_path(r, &l->v[0], attr, NULL, line) : l->v[0], sens);
        for (size_t i = 1; i < l->n; i++) {
            struct val k = sort_key(r, attr ? attr_path(r, &l->v[i], attr, NULL, line) : l->v[i], sens);
            int c = compare(r, &k, &bk, line);
            if (f[1] == 'i' ? c < 0 : c > 0) {
                best = i;
                bk = k;
            }
        }
        return l->v[best];
    }
    if (!strcmp(f, "map") || !strcmp(f, "select") || !strcmp(f, "reject") || !strcmp(f, "selectattr") ||
        !strcmp(f, "rejectattr")) {
        if (!truthy(&v)) { /* as Jinja2's: a false value (0, none, '') gives nothing, its arguments unread */
            struct list *l = new_list(r, 0);
            l->gen = true;
            return (struct val){ .t = V_LIST, .l = l };
        }
        const struct list *src = iter_list(r, &v, line);
        struct list *l = new_list(r, src->n);
        l->n = 0;
        bool attr = !strcmp(f + strlen(f) - 4, "attr"), sel = f[0] == 's', map = f[0] == 'm';
        /* map(attribute=, default=), without a filter's name before */
        const struct val *attribute = map && !a.npos ? arg_attr(r, &a, -1, "attribute", f, line) : NULL;
        const struct val *dflt = attribute ? arg(&a, -1, "default") : NULL;
        for (int i = 0; attribute && i < a.nkw; i++)
            if (strcmp(a.names[i], "attribute") && strcmp(a.names[i], "default"))
                fail_at(&r->f, MOE_EINVAL, line, "map: unexpected keyword argument '%s'", a.names[i]);
        if (dflt && dflt->t == V_NONE)
            dflt = NULL; /* as Jinja2: a default of none is none given */
        int first = attr ? 1 : 0; /* selectattr(attr, test, args...) */
        const struct val *an = attr ? arg_attr(r, &a, 0, NULL, f, line) : NULL;
        const struct str *tname = map ? NULL : arg_str(r, &a, first, NULL, f, line);
        if (attr && !an)
            fail_at(&r->f, MOE_EINVAL, line, "%s needs an attribute name", f);
        if (map && !attribute) { /* map('filter', args...): the filter with the other arguments on each item */
            const struct str *fname = arg_str(r, &a, 0, NULL, f, line);
            if (!fname)
                fail_at(&r->f, MOE_EINVAL, line, "map needs attribute= or the name of a filter");
            if (!sig_params(FILTER_SIGS, MOE_ARRAY_LEN(FILTER_SIGS), fname->p))
                fail_at(&r->f, MOE_ENOTSUP, line, "map: filter '%s' is not supported%s", fname->p,
                        unsupported_why(fname->p));
            struct node lit = { .k = E_LIT, .line = line };
            struct node *lits = r_alloc(r, (size_t)(a.npos + a.nkw) * sizeof(*lits));
            struct node **ptrs = r_alloc(r, (size_t)(a.npos + a.nkw) * sizeof(*ptrs));
            struct node fake = { .k = E_FILTER, .name = fname->p, .line = line, .a = &lit, .args = ptrs,
                                 .kwnames = a.names, .kwargs = ptrs + a.npos, .nkw = a.nkw };
            for (int i = 0; i < a.npos + a.nkw; i++) {
                lits[i] = (struct node){ .k = E_LIT, .line = line, .lit = i < a.npos ? a.pos[i] : a.kw[i - a.npos] };
                ptrs[i] = &lits[i];
            }
            fake.args++; /* the arguments after the filter's name */
            fake.nargs = a.npos - 1;
            for (size_t i = 0; i < src->n; i++) {
                lit.lit = src->v[i];
                l->v[l->n++] = filter(r, &fake);
            }
            l->gen = true;
            return (struct val){ .t = V_LIST, .l = l };
        }
        struct args targs; /* the test's: the arguments after its name, those by name too */
        args_alloc(r, &targs, (size_t)a.npos, (size_t)a.nkw, line);
        for (int i = first + 1; i < a.npos; i++) targs.pos[targs.npos++] = a.pos[i];
        for (int i = 0; tname && i < a.nkw; i++) {
            targs.names[targs.nkw] = a.names[i];
            targs.kw[targs.nkw++] = a.kw[i];
        }
        for (size_t i = 0; i < src->n; i++) {
            if (map) {
                l->v[l->n++] = attr_path(r, &src->v[i], attribute, dflt, line);
                continue;
            }
            struct val x = attr ? attr_path(r, &src->v[i], an, NULL, line) : src->v[i];
            bool ok = tname ? run_test(r, tname->p, &x, &targs, line) : truthy(&x);
            if (ok == sel)
                l->v[l->n++] = src->v[i];
        }
        l->gen = true;
        return (struct val){ .t = V_LIST, .l = l };
    }
    fail_at(&r->f, MOE_ENOTSUP, line, "filter '%s' is not supported", f);
}

static bool run_test(struct render *r, const char *t, const struct val *v, const struct args *a, int line)
{
    static const char *const aliases[][2] = { /* Jinja2's other names of the comparisons */
        { "==", "eq" }, { "!=", "ne" }, { ">", "gt" }, { ">=", "ge" }, { "<", "lt" }, { "<=", "le" },
        { "greaterthan", "gt" }, { "lessthan", "lt" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(aliases); i++)
        if (!strcmp(t, aliases[i][0]))
            t = aliases[i][1];
    check_args(r, TEST_SIGS, MOE_ARRAY_LEN(TEST_SIGS), t, "", a, line);
    const struct val *x = arg(a, 0, !strcmp(t, "in") ? "seq" : !strcmp(t, "sameas") ? "other" : NULL);
    if (!strcmp(t, "defined")) return v->t != V_UNDEF;
    if (!strcmp(t, "undefined")) return v->t == V_UNDEF;
    if (!strcmp(t, "none")) return v->t == V_NONE;
    if (!strcmp(t, "boolean")) return v->t == V_BOOL;
    if (!strcmp(t, "true")) return v->t == V_BOOL && v->b;
    if (!strcmp(t, "false")) return v->t == V_BOOL && !v->b;
    if (!strcmp(t, "integer")) return v->t == V_INT;
    if (!strcmp(t, "float")) return v->t == V_FLOAT;
    if (!strcmp(t, "number")) return is_num(v);
    if (!strcmp(t, "string")) return v->t == V_STR;
    if (!strcmp(t, "mapping")) return v->t == V_DICT;
    /* Jinja2's Undefined iterates (as nothing), has a length (0) and can be called (it raises) */
    if (!strcmp(t, "iterable"))
        return v->t == V_LIST || v->t == V_STR || v->t == V_UNDEF || (v->t == V_DICT && !v->d->ns);
    if (!strcmp(t, "sequence"))
        return (v->t == V_LIST && !v->l->gen && !v->l->view) || v->t == V_STR || v->t == V_UNDEF ||
               (v->t == V_DICT && !v->d->ns);
    if (!strcmp(t, "callable"))
        return v->t == V_FUNC || v->t == V_MACRO || v->t == V_METHOD || v->t == V_UNDEF ||
               (v->t == V_OBJ && v->o->kind == 'j');
    if (!strcmp(t, "escaped")) return v->t == V_STR && v->markup;
    if (!strcmp(t, "filter") || !strcmp(t, "test")) { /* value in env.filters (env.tests): a name there */
        if (!hashable(r, v, line))
            fail_at(&r->f, MOE_EINVAL, line, "test %s: %s %s cannot be a name (a list or dict)", t,
                    article(type_name(v)), type_name(v));
        if (v->t != V_STR || strlen(v->s->p) != v->s->n)
            return false;
        return t[0] == 'f' ? in_list(JINJA2_FILTERS, MOE_ARRAY_LEN(JINJA2_FILTERS), v->s->p)
                           : in_list(JINJA2_TESTS, MOE_ARRAY_LEN(JINJA2_TESTS), v->s->p);
    }
    if (!strcmp(t, "lower") || !strcmp(t, "upper")) { /* str(value).islower(), isupper() */
        if (v->t == V_UNDEF)
            return false;
        struct val sv = stringify(r, v, line);
        return str_is(sv.s, t[0] == 'l' ? "islower" : "isupper");
    }
    if (!strcmp(t, "odd") || !strcmp(t, "even") || !strcmp(t, "divisibleby")) {
        if (!is_num(v))
            fail_at(&r->f, MOE_EINVAL, line, "test %s: %s %s is not a number", t, article(type_name(v)), type_name(v));
        const struct val *dv = t[0] == 'd' ? arg(a, 0, "num") : NULL;
        if (dv && !is_num(dv))
            fail_at(&r->f, MOE_EINVAL, line, "divisibleby: the divisor must be a number, not %s", type_name(dv));
        struct val d = dv ? *dv : vint(2);
        if (d.t == V_FLOAT ? d.f == 0 : !inum(&d))
            fail_at(&r->f, MOE_EINVAL, line, "divisibleby 0");
        if (v->t == V_FLOAT && t[0] != 'd') { /* Python's v % 2 == 1 (odd) or == 0 (even): 0.5 is neither */
            double m = fmod(v->f, 2);
            return m + (m < 0 ? 2 : 0) == (t[0] == 'o' ? 1 : 0);
        }
        /* Python's v % num == 0, in floats when either is one (a remainder is 0 where fmod's is) */
        bool zero = v->t == V_FLOAT || d.t == V_FLOAT ? fmod(num(v), num(&d)) == 0
                  : inum(&d) == -1 || inum(v) % inum(&d) == 0;
        return t[0] == 'o' ? !zero : zero;
    }
    if (!x)
        fail_at(&r->f, MOE_EINVAL, line, "test %s needs an argument", t);
    if (!strcmp(t, "sameas")) /* Python's `is`: the same object; equal scalars of one type count as that */
        return v->t != x->t ? false
             : v->t == V_LIST ? v->l == x->l
             : v->t == V_DICT ? v->d == x->d
             : equal(r, v, x);
    if (!strcmp(t, "eq") || !strcmp(t, "equalto")) return equal(r, v, x);
    if (!strcmp(t, "ne")) return !equal(r, v, x);
    if (!strcmp(t, "lt")) return compare(r, v, x, line) < 0;
    if (!strcmp(t, "le")) return compare(r, v, x, line) <= 0;
    if (!strcmp(t, "gt")) return compare(r, v, x, line) > 0;
    if (!strcmp(t, "ge")) return compare(r, v, x, line) >= 0;
    if (!strcmp(t, "in")) return contains(r, v, x, line);
    fail_at(&r->f, MOE_ENOTSUP, line, "test '%s' is not supported", t);
}

static struct val arith(struct render *r, int op, struct val a, struct val b, int line)
{
    if (op == OP_CONCAT) {
        struct buf o = { 0 };
        buf_add(r, &o, "", 0);
        to_str(r, &o, &a, line);
        to_str(r, &o, &b, line);
        return vbuf(r, &o);
    }
    if (op == OP_MOD && a.t == V_STR) /* an undefined right side is a mapping there, as in Jinja2 */
        return pct_format(r, &a, &b, line);
    if (a.t == V_UNDEF)
        undefined_error(r, &a, line);
    if (b.t == V_UNDEF)
        undefined_error(r, &b, line);
    if (op == OP_ADD && a.t == V_STR && b.t == V_STR) {
        bool m = a.markup || b.markup; /* Markup + str: the str escaped, as Markup.__add__ and __radd__ */
        if (m) {
            a = html_escape(r, &a, line);
            b = html_escape(r, &b, line);
        }
        struct buf o = { 0 };
        buf_add(r, &o, a.s->p, a.s->n);
        buf_add(r, &o, b.s->p, b.s->n);
        return as_markup(vbuf(r, &o), m);
    }
    if (op == OP_ADD && a.t == V_LIST && b.t == V_LIST && !a.l->gen && !b.l->gen && !a.l->range && !b.l->range &&
        !a.l->view && !b.l->view) {
        if (a.l->tuple != b.l->tuple)
            fail_at(&r->f, MOE_EINVAL, line, "can only concatenate a %s to a %s", a.l->tuple ? "tuple" : "list",
                    a.l->tuple ? "tuple" : "list");
        struct list *l = new_list(r, a.l->n + b.l->n);
        l->tuple = a.l->tuple;
        for (size_t i = 0; i < a.l->n; i++) l->v[i] = a.l->v[i];
        for (size_t i = 0; i < b.l->n; i++) l->v[a.l->n + i] = b.l->v[i];
        return (struct val){ .t = V_LIST, .l = l };
    }
    bool ai = a.t == V_INT || a.t == V_BOOL, bi = b.t == V_INT || b.t == V_BOOL;
    if (op == OP_MUL && ((a.t == V_STR && bi) || (b.t == V_STR && ai))) {
        const struct str *s = a.t == V_STR ? a.s : b.s;
        int64_t k = a.t == V_STR ? inum(&b) : inum(&a);
        struct buf o = { 0 };
        buf_add(r, &o, "", 0);
        for (int64_t i = 0; s->n && i < k; i++) buf_add(r, &o, s->p, s->n); /* the output bound stops it */
        return as_markup(vbuf(r, &o), a.t == V_STR ? a.markup : b.markup);
    }
    if (op == OP_MUL && ((a.t == V_LIST && bi && !a.l->gen && !a.l->range && !a.l->view) ||
                         (b.t == V_LIST && ai && !b.l->gen && !b.l->range && !b.l->view))) {
        const struct list *src = a.t == V_LIST ? a.l : b.l;
        int64_t k = a.t == V_LIST ? inum(&b) : inum(&a);
        if (k < 0 || !src->n)
            k = 0;
        if (k && (uint64_t)k * src->n > 1000000)
            fail_at(&r->f, MOE_ERANGE, line, "a list of %llu items is too long", (unsigned long long)k * src->n);
        struct list *l = new_list(r, (size_t)k * src->n);
        l->tuple = src->tuple;
        for (size_t i = 0; i < l->n; i++) l->v[i] = src->v[i % src->n];
        return (struct val){ .t = V_LIST, .l = l };
    }
    if (!is_num(&a) || !is_num(&b))
        fail_at(&r->f, MOE_EINVAL, line, "unsupported operand types %s and %s", type_name(&a), type_name(&b));
    bool fl = a.t == V_FLOAT || b.t == V_FLOAT || op == OP_DIV;
    if (op == OP_POW && !fl && inum(&b) < 0)
        fl = true;
    if (fl) {
        double x = num(&a), y = num(&b), z;
        switch (op) {
        case OP_ADD: z = x + y; break;
        case OP_SUB: z = x - y; break;
        case OP_MUL: z = x * y; break;
        case OP_POW: /* Python's float pow: C's for infinities and nan, its errors for finite values */
            if (x == 0 && y < 0 && !isinf(y))
                fail_at(&r->f, MOE_EINVAL, line, "0 cannot be raised to a negative power");
            if (x < 0 && isfinite(x) && isfinite(y) && y != floor(y))
                fail_at(&r->f, MOE_EINVAL, line, "a negative number raised to a fractional power is complex");
            z = pow(x, y);
            if (isinf(z) && isfinite(x) && isfinite(y))
                fail_at(&r->f, MOE_ERANGE, line, "numerical result out of range (%s ** %s)",
                        a.t == V_FLOAT ? "float" : "int", b.t == V_FLOAT ? "float" : "int");
            break;
        default:
            if (y == 0)
                fail_at(&r->f, MOE_EINVAL, line, "division by zero");
            if (op == OP_DIV) {
                z = x / y;
                break;
            }
            /* Python's float divmod: the remainder by fmod, with the divisor's sign; the quotient from it */
            double m = fmod(x, y), div = (x - m) / y;
            if (m && (y < 0) != (m < 0)) {
                m += y;
                div -= 1.0;
            } else if (!m) {
                m = copysign(0.0, y);
            }
            double fd = div ? floor(div) : copysign(0.0, x / y);
            if (div && div - fd > 0.5)
                fd += 1.0;
            z = op == OP_FLOORDIV ? fd : m;
        }
        return (struct val){ .t = V_FLOAT, .f = z };
    }
    int64_t x = inum(&a), y = inum(&b), z = 0;
    bool ovf = false;
    switch (op) {
    case OP_ADD: ovf = __builtin_add_overflow(x, y, &z); break;
    case OP_SUB: ovf = __builtin_sub_overflow(x, y, &z); break;
    case OP_MUL: ovf = __builtin_mul_overflow(x, y, &z); break;
    case OP_POW: { /* y >= 0 here; |x| >= 2 overflows within 63 factors */
        int64_t p = 1;
        if (x == 0 && y > 0)
            p = 0;
        else if (x == -1)
            p = y % 2 ? -1 : 1;
        else if (x != 1)
            for (int64_t k = 0; k < y && !ovf; k++) ovf = __builtin_mul_overflow(p, x, &p);
        z = p;
        break;
    }
    default:
        if (y == 0)
            fail_at(&r->f, MOE_EINVAL, line, "division by zero");
        if (x == INT64_MIN && y == -1)
            ovf = true;
        else if (op == OP_FLOORDIV)
            z = x / y - ((x % y != 0) && ((x < 0) != (y < 0)));
        else
            z = x % y + (((x % y != 0) && ((x < 0) != (y < 0))) ? y : 0);
    }
    if (ovf)
        fail_at(&r->f, MOE_ERANGE, line, "integer overflow");
    return vint(z);
}

static struct val eval_node(struct render *r, const struct node *n);

static struct val eval(struct render *r, const struct node *n)
{
    if (++r->edepth > JJ_MAX_EVAL_DEPTH)
        fail_at(&r->f, MOE_ERANGE, n->line, "expression nested deeper than %d", JJ_MAX_EVAL_DEPTH);
    struct val v = eval_node(r, n);
    r->edepth--;
    /* a string operand costs steps by its length: what is done with it (in, find, count, ==, a
     * filter) reads it through, so a loop over a long string is bounded as a loop over many values */
    if (v.t == V_STR)
        step_bytes(r, v.s->n, n->line);
    return v;
}

static struct val eval_node(struct render *r, const struct node *n)
{
    step(r, n->line);
    switch (n->k) {
    case E_LIT: return n->lit;
    case E_SLOT: return r->slot;
    case E_VAR: return lookup(r, r->cur, n->name);
    case E_ATTR: { /* a method, as Python's getattr finds it first; else the item */
        struct val o = eval(r, n->a);
        int kind = o.t == V_UNDEF ? 0 : method_kind(&o, n->name);
        if (kind == 1)
            return bound_method(r, &o, n->name);
        return kind ? vundef(n->lit.s) : get_item(r, &o, &n->lit, n->line);
    }
    case E_INDEX: {
        struct val o = eval(r, n->a), k = eval(r, n->b);
        return get_item(r, &o, &k, n->line);
    }
    case E_SLICE: return do_slice(r, n);
    case E_CALL: return call(r, n);
    case E_FILTER: return filter(r, n);
    case E_TEST: {
        struct val v = eval(r, n->a);
        struct args a;
        eval_args(r, n, &a);
        return vbool(run_test(r, n->name, &v, &a, n->line) != n->neg);
    }
    case E_NOT: {
        struct val v = eval(r, n->a);
        return vbool(!truthy(&v));
    }
    case E_NEG: { /* op 1: unary plus */
        struct val v = eval(r, n->a);
        if (v.t == V_FLOAT)
            return (struct val){ .t = V_FLOAT, .f = n->op ? v.f : -v.f };
        if ((v.t != V_INT && v.t != V_BOOL) || (!n->op && inum(&v) == INT64_MIN))
            fail_at(&r->f, MOE_EINVAL, n->line, "bad operand type for unary %c: %s", n->op ? '+' : '-', type_name(&v));
        return vint(n->op ? inum(&v) : -inum(&v));
    }
    case E_BIN: return arith(r, n->op, eval(r, n->a), eval(r, n->b), n->line);
    case E_AND: {
        struct val a = eval(r, n->a);
        return truthy(&a) ? eval(r, n->b) : a;
    }
    case E_OR: {
        struct val a = eval(r, n->a);
        return truthy(&a) ? a : eval(r, n->b);
    }
    case E_COND: {
        struct val c = eval(r, n->a);
        if (truthy(&c))
            return eval(r, n->b);
        return n->c ? eval(r, n->c) : vundef(NULL);
    }
    case E_LIST: {
        struct list *l = new_list(r, (size_t)n->nargs);
        l->tuple = n->op == 1;
        for (int i = 0; i < n->nargs; i++) l->v[i] = eval(r, n->args[i]);
        return (struct val){ .t = V_LIST, .l = l };
    }
    case E_DICT: {
        struct dict *d = new_dict(r);
        for (int i = 0; i < n->nargs; i++) {
            struct val k = eval(r, n->args[i]);
            dict_set_key(r, d, &k, eval(r, n->kwargs[i]), n->line);
        }
        return (struct val){ .t = V_DICT, .d = d };
    }
    case E_CMP: {
        struct val a = eval(r, n->args[0]);
        for (int i = 1; i < n->nargs; i++) {
            struct val b = eval(r, n->args[i]);
            bool ok;
            switch (n->ops[i - 1]) {
            case C_EQ: ok = equal(r, &a, &b); break;
            case C_NE: ok = !equal(r, &a, &b); break;
            case C_LT: ok = compare(r, &a, &b, n->line) < 0; break;
            case C_LE: ok = compare(r, &a, &b, n->line) <= 0; break;
            case C_GT: ok = compare(r, &a, &b, n->line) > 0; break;
            case C_GE: ok = compare(r, &a, &b, n->line) >= 0; break;
            case C_IN: ok = contains(r, &a, &b, n->line); break;
            default: ok = !contains(r, &a, &b, n->line); break;
            }
            if (!ok)
                return vbool(false);
            a = b;
        }
        return vbool(true);
    }
    default: fail_at(&r->f, MOE_EINVAL, n->line, "not an expression");
    }
}

#define LOOP_KEYS 11

/* x bound to the target names of a for loop or set (keys, n->nkw of them), unpacked as Python does
 * a, b = x when the target is a tuple. */
static void bind_targets(struct render *r, struct dict *vars, const struct node *n, const struct str *const *keys,
                         struct val x)
{
    if (!n->op) {
        dict_set(r, vars, keys[0], x);
        return;
    }
    if (x.t != V_LIST && x.t != V_STR && x.t != V_DICT && x.t != V_UNDEF)
        fail_at(&r->f, MOE_EINVAL, n->line, "cannot unpack %s %s (not iterable)",
                article(type_name(&x)), type_name(&x));
    const struct list *l = iter_list(r, &x, n->line);
    if (l->n != (size_t)n->nkw)
        fail_at(&r->f, MOE_EINVAL, n->line, "%s values to unpack (expected %d, got %zu)",
                l->n > (size_t)n->nkw ? "too many" : "not enough", n->nkw, l->n);
    for (int i = 0; i < n->nkw; i++) dict_set(r, vars, keys[i], l->v[i]);
}

/* The target names of a for loop or set as keys. */
static const struct str **target_keys(struct render *r, const struct node *n)
{
    const struct str **keys = r_alloc(r, (size_t)n->nkw * sizeof(*keys));
    for (int i = 0; i < n->nkw; i++) keys[i] = r_str(r, n->kwnames[i], strlen(n->kwnames[i]));
    return keys;
}

/* One level of a for loop over it, in the scope fr: the loop's own items, or (depth > 0) those a
 * recursive loop's loop(items) passed, its body seeing fr as the first level's does. */
static void for_level(struct render *r, struct frame *fr, const struct node *n, const struct val *it, int depth,
                      struct buf *out)
{
    const struct list *src = iter_list(r, it, n->line);
    const struct list *items = src;
    const struct str **keys = target_keys(r, n);
    if (n->d) { /* for x in y if cond: filter first, so loop.* counts what is kept */
        struct list *kept = new_list(r, src->n);
        kept->n = 0;
        for (size_t i = 0; i < src->n; i++) {
            struct frame tmp = { .up = fr };
            bind_targets(r, &tmp.vars, n, keys, src->v[i]);
            r->cur = &tmp;
            struct val c = eval(r, n->d);
            r->cur = fr;
            if (truthy(&c))
                kept->v[kept->n++] = src->v[i];
        }
        items = kept;
    }
    bool finished = false; /* a body ran to its end (not left by break or continue): else is skipped */
    static const char *const names[LOOP_KEYS] = { "index", "index0", "revindex", "revindex0", "first", "last",
                                                  "length", "depth", "depth0", "previtem", "nextitem" };
    const struct str **loop_keys = r_alloc(r, sizeof(*loop_keys) * LOOP_KEYS);
    for (int k = 0; k < LOOP_KEYS; k++) loop_keys[k] = r_str(r, names[k], strlen(names[k]));
    const struct str *key_loop = r_str(r, "loop", 4);
    struct val *changed = r_alloc(r, sizeof(*changed)); /* loop.changed()'s memory, for every iteration */
    for (size_t i = 0; i < items->n; i++) {
        step(r, n->line);
        struct arena_mark mark = arena_mark(&r->arena);
        long escapes = r->escapes;
        struct frame *it_fr = r_alloc(r, sizeof(*it_fr)); /* a macro defined in the body refers to it */
        *it_fr = (struct frame){ .up = fr };
        bind_targets(r, &it_fr->vars, n, keys, items->v[i]);
        int64_t len = (int64_t)items->n, k = (int64_t)i;
        struct val lv[LOOP_KEYS] = { vint(k + 1), vint(k), vint(len - k), vint(len - k - 1), vbool(k == 0),
                                     vbool(k == len - 1), vint(len), vint(depth + 1), vint(depth),
                                     k > 0 ? items->v[k - 1] : vundef(NULL),
                                     k + 1 < len ? items->v[k + 1] : vundef(NULL) };
        struct dict *loop = new_dict(r);
        loop->loop = true;
        loop->changed = changed;
        loop->rec = n->neg ? n : NULL;
        loop->rec_fr = fr;
        loop->k = loop_keys;   /* shared by every iteration: a loop object is never assigned to */
        loop->n = loop->cap = LOOP_KEYS;
        loop->v = r_alloc(r, sizeof(lv));
        memcpy(loop->v, lv, sizeof(lv));
        dict_set(r, &it_fr->vars, key_loop, (struct val){ .t = V_DICT, .d = loop });
        exec(r, it_fr, n->b, out);
        it_fr->ended = n;
        if (r->escapes == escapes) /* nothing made in this iteration is reachable any more */
            arena_release(&r->arena, mark);
        finished |= r->flow == 0;
        if (r->flow == 1) {
            r->flow = 0;
            break;
        }
        r->flow = 0;
    }
    if (!finished && n->c) { /* as Jinja2: else also when every body was left early; its sets stay in it */
        struct frame *else_fr = r_alloc(r, sizeof(*else_fr));
        *else_fr = (struct frame){ .up = fr };
        exec(r, else_fr, n->c, out);
        else_fr->ended = n->c;
    }
}

static void exec_for(struct render *r, struct frame *fr, const struct node *n, struct buf *out)
{
    struct val it = eval(r, n->a);
    for_level(r, fr, n, &it, 0, out);
}

/* A filter or set block's filters (on an E_SLOT) applied to its text, their arguments seeing the body's
 * scope, inner (as Jinja2 evaluates them in the block's frame). */
static struct val filter_slot(struct render *r, struct frame *inner, const struct node *filters, struct val text)
{
    struct frame *saved = r->cur;
    r->slot = text;
    r->cur = inner;
    struct val v = eval(r, filters);
    r->cur = saved;
    return v;
}

static void exec(struct render *r, struct frame *fr, const struct node *n, struct buf *out)
{
    struct frame *saved = r->cur;
    r->cur = fr;
    step(r, n->line);
    switch (n->k) {
    case N_BLOCK:
        for (int i = 0; i < n->nkw; i++) /* a scope's names that Jinja2 starts undefined (scope_scan) */
            dict_sets(r, &fr->vars, n->kwnames[i], vundef(r_str(r, n->kwnames[i], strlen(n->kwnames[i]))));
        for (int i = 0; i < n->nargs && !r->flow; i++) exec(r, fr, n->args[i], out);
        break;
    case N_TEXT: buf_add(r, out, n->lit.s->p, n->lit.s->n); break;
    case N_OUT: {
        struct val v = eval(r, n->a);
        to_str(r, out, &v, n->line);
        break;
    }
    case N_IF: /* the elif chain in a loop: an else that is itself an N_IF is an elif */
        for (const struct node *x = n;;) {
            struct val c = eval(r, x->a);
            if (truthy(&c)) {
                exec(r, fr, x->b, out);
            } else if (x->c && x->c->k == N_IF) {
                x = x->c;
                step(r, x->line);
                continue;
            } else if (x->c) {
                exec(r, fr, x->c, out);
            }
            break;
        }
        break;
    case N_FOR: exec_for(r, fr, n, out); break;
    case N_SET:
    case N_SETBLOCK: {
        struct val v;
        if (n->k == N_SET) {
            v = eval(r, n->a);
        } else { /* the block's own sets stay inside it, as in Jinja2 */
            struct buf b = { 0 };
            struct frame *inner = r_alloc(r, sizeof(*inner));
            *inner = (struct frame){ .up = fr };
            buf_add(r, &b, "", 0);
            exec(r, inner, n->b, &b);
            if (!r->flow && n->c) /* any value, not only text */
                v = filter_slot(r, inner, n->c, vbuf(r, &b));
            else
                v = vbuf(r, &b);
            inner->ended = n;
            if (r->flow) /* left by break or continue: as in Jinja2, the name is not set */
                break;
        }
        if (n->name2) {
            struct val ns = lookup(r, fr, n->name);
            if (ns.t != V_DICT || !ns.d->ns)
                fail_at(&r->f, MOE_EINVAL, n->line, "cannot set an attribute of '%s', %s %s (only of a namespace())",
                        n->name, article(type_name(&ns)), type_name(&ns));
            dict_sets(r, ns.d, n->name2, v);
            r->escapes++;
        } else if (n->k == N_SET) {
            bind_targets(r, &fr->vars, n, target_keys(r, n), v);
        } else {
            dict_sets(r, &fr->vars, n->name, v);
        }
        break;
    }
    case N_WITH: { /* the values evaluated outside, the names set in a scope of the body's own */
        struct frame *inner = r_alloc(r, sizeof(*inner));
        *inner = (struct frame){ .up = fr };
        for (int i = 0; i < n->nkw; i++) dict_sets(r, &inner->vars, n->kwnames[i], eval(r, n->kwargs[i]));
        exec(r, inner, n->b, out);
        inner->ended = n;
        break;
    }
    case N_FILTER: { /* the body in a scope of its own; its filters' arguments see the body's sets */
        struct buf b = { 0 };
        struct frame *inner = r_alloc(r, sizeof(*inner));
        *inner = (struct frame){ .up = fr };
        buf_add(r, &b, "", 0);
        exec(r, inner, n->b, &b);
        struct val v = { 0 };
        if (!r->flow) /* not left by break or continue, when Jinja2 filters and writes nothing */
            v = filter_slot(r, inner, n->a, vbuf(r, &b));
        inner->ended = n;
        if (r->flow)
            break;
        if (v.t != V_STR) /* Jinja2 joins the output: only text can be in it */
            fail_at(&r->f, MOE_EINVAL, n->line, "a filter block gave %s %s, not a string (add |string)",
                    article(type_name(&v)), type_name(&v));
        buf_add(r, out, v.s->p, v.s->n);
        break;
    }
    case N_CALL: { /* the call, with caller= the body as a macro of this scope */
        struct macro *m = r_alloc(r, sizeof(*m));
        *m = (struct macro){ .n = n->b, .env = fr };
        struct val f = eval(r, n->a->a);
        struct args a;
        eval_args(r, n->a, &a);
        for (int k = 0; k < a.nkw; k++) /* from a **mapping: the others are refused when compiled */
            if (!strcmp(a.names[k], "caller"))
                fail_at(&r->f, MOE_EINVAL, n->line, "got multiple values for keyword argument 'caller'");
        a.names[a.nkw] = "caller"; /* in the room args_alloc keeps */
        a.kw[a.nkw++] = (struct val){ .t = V_MACRO, .macro = m };
        struct val v = call_value(r, &f, &a, n->line);
        to_str(r, out, &v, n->line);
        break;
    }
    case N_MACRO: {
        struct macro *m = r_alloc(r, sizeof(*m));
        *m = (struct macro){ .n = n, .env = fr };
        dict_sets(r, &fr->vars, n->name, (struct val){ .t = V_MACRO, .macro = m });
        break;
    }
    case N_BREAK: r->flow = 1; break;
    case N_CONTINUE: r->flow = 2; break;
    default: fail_at(&r->f, MOE_EINVAL, n->line, "not a statement");
    }
    r->cur = saved;
}

enum moe_status moe_jinja_render(const struct moe_jinja *t, json_t *vars, char **out, size_t *out_len)
{
    if (!t || !out || !out_len || (vars && !json_is_object(vars)))
        return moe_errorf(MOE_EINVAL, "chat template: render needs a template, an object of variables and an output");
    *out = NULL;
    *out_len = 0;
    struct render r = { 0 };
    struct frame root = { 0 };
    struct buf b = { .heap = true };
    if (setjmp(r.f.jb)) {
        free(r.heap_out);
        arena_free(&r.arena);
        return r.f.st;
    }
    r.root = &root;
    if (vars) {
        struct val v = from_json(&r, vars);
        root.vars = *v.d;
    }
    buf_add(&r, &b, "", 0);
    exec(&r, &root, t->root, &b);
    *out = b.p;
    *out_len = b.n;
    arena_free(&r.arena);
    return MOE_OK;
}
