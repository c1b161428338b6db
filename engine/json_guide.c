/* A byte-at-a-time JSON recognizer (RFC 8259) for one top-level object, and
 * the vocabulary masks of JSON mode built on it. */
#include "json_guide.h"

#include <math.h>
#include <stdlib.h>

#include "../model/tokenizer.h"

enum {
    J_START,      /* '{' */
    J_VALUE,      /* a value (after ':' or ',' in an array, or first in an array) */
    J_ARR_FIRST,  /* a value or ']' */
    J_KEY_FIRST,  /* a key string or '}' */
    J_KEY,        /* a key string (after ',') */
    J_COLON,      /* ':' */
    J_NEXT,       /* ',' or the closing bracket of the open container */
    J_STRING,     /* inside a string */
    J_ESC,        /* after '\' */
    J_HEX,        /* aux hex digits of \u left */
    J_UTF8,       /* aux continuation bytes left */
    J_MINUS,      /* after '-' */
    J_ZERO,       /* a number's integer part is 0 */
    J_INT,        /* integer digits */
    J_DOT,        /* after '.' */
    J_FRAC,       /* fraction digits */
    J_EXP,        /* after 'e' */
    J_EXP_SIGN,   /* after 'e+' / 'e-' */
    J_EXP_DIGITS, /* exponent digits */
    J_LIT,        /* inside true / false / null */
    J_DONE,       /* the object is complete */
};

static const char *const lits[3] = { "true", "false", "null" };

static bool is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static bool is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

void moe_json_init(struct moe_json_state *s)
{
    *s = (struct moe_json_state){ .mode = J_START };
}

bool moe_json_done(const struct moe_json_state *s) { return s->mode == J_DONE; }

/* A value ended: what may follow it. */
static void value_done(struct moe_json_state *s)
{
    s->mode = s->depth == 0 ? J_DONE : J_NEXT;
}

static bool open_container(struct moe_json_state *s, bool object)
{
    if (s->depth >= MOE_JSON_MAX_DEPTH) return false;
    if (object) s->stack |= 1ull << s->depth;
    else s->stack &= ~(1ull << s->depth);
    s->depth++;
    s->mode = object ? J_KEY_FIRST : J_ARR_FIRST;
    return true;
}

static bool top_is_object(const struct moe_json_state *s) { return (s->stack >> (s->depth - 1)) & 1; }

/* The start of a value (after any whitespace). */
static bool value_start(struct moe_json_state *s, unsigned char c)
{
    switch (c) {
    case '{': return open_container(s, true);
    case '[': return open_container(s, false);
    case '"': s->mode = J_STRING; s->key = false; return true;
    case '-': s->mode = J_MINUS; return true;
    case '0': s->mode = J_ZERO; return true;
    case 't': case 'f': case 'n':
        s->lit = c == 't' ? 0 : c == 'f' ? 1 : 2;
        s->aux = 1;
        s->mode = J_LIT;
        return true;
    default:
        if (c >= '1' && c <= '9') {
            s->mode = J_INT;
            return true;
        }
        return false;
    }
}

/* A number ends at c: c goes on in the context after the value. */
static bool number_end(struct moe_json_state *s, unsigned char c);

static bool step(struct moe_json_state *s, unsigned char c)
{
    switch (s->mode) {
    case J_START:
        return c == '{' && open_container(s, true);
    case J_VALUE:
        return is_ws(c) || value_start(s, c);
    case J_ARR_FIRST:
        if (is_ws(c)) return true;
        if (c == ']') {
            s->depth--;
            value_done(s);
            return true;
        }
        return value_start(s, c);
    case J_KEY_FIRST:
    case J_KEY:
        if (is_ws(c)) return true;
        if (c == '}' && s->mode == J_KEY_FIRST) {
            s->depth--;
            value_done(s);
            return true;
        }
        if (c != '"') return false;
        s->mode = J_STRING;
        s->key = true;
        return true;
    case J_COLON:
        if (is_ws(c)) return true;
        if (c != ':') return false;
        s->mode = J_VALUE;
        return true;
    case J_NEXT:
        if (is_ws(c)) return true;
        if (c == ',') {
            s->mode = top_is_object(s) ? J_KEY : J_VALUE;
            return true;
        }
        if (c == (top_is_object(s) ? '}' : ']')) {
            s->depth--;
            value_done(s);
            return true;
        }
        return false;
    case J_STRING:
        if (c == '"') {
            if (s->key) s->mode = J_COLON;
            else value_done(s);
            return true;
        }
        if (c == '\\') {
            s->mode = J_ESC;
            return true;
        }
        if (c < 0x20) return false; /* control characters must be escaped */
        if (c < 0x80) return true;
        /* UTF-8: a lead byte and its continuation bytes */
        if (c >= 0xc2 && c <= 0xdf) s->aux = 1;
        else if (c >= 0xe0 && c <= 0xef) s->aux = 2;
        else if (c >= 0xf0 && c <= 0xf4) s->aux = 3;
        else return false;
        s->mode = J_UTF8;
        return true;
    case J_UTF8:
        if ((c & 0xc0) != 0x80) return false;
        if (--s->aux == 0) s->mode = J_STRING;
        return true;
    case J_ESC:
        if (c == 'u') {
            s->mode = J_HEX;
            s->aux = 4;
            return true;
        }
        if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') {
            s->mode = J_STRING;
            return true;
        }
        return false;
    case J_HEX:
        if (!is_hex(c)) return false;
        if (--s->aux == 0) s->mode = J_STRING;
        return true;
    case J_MINUS:
        if (c == '0') s->mode = J_ZERO;
        else if (c >= '1' && c <= '9') s->mode = J_INT;
        else return false;
        return true;
    case J_ZERO:
        if (c == '.') s->mode = J_DOT;
        else if (c == 'e' || c == 'E') s->mode = J_EXP;
        else return number_end(s, c);
        return true;
    case J_INT:
        if (is_digit(c)) return true;
        if (c == '.') s->mode = J_DOT;
        else if (c == 'e' || c == 'E') s->mode = J_EXP;
        else return number_end(s, c);
        return true;
    case J_DOT:
        if (!is_digit(c)) return false;
        s->mode = J_FRAC;
        return true;
    case J_FRAC:
        if (is_digit(c)) return true;
        if (c == 'e' || c == 'E') {
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
    case J_LIT:
        if (c != (unsigned char)lits[s->lit][s->aux]) return false;
        if (!lits[s->lit][++s->aux]) value_done(s);
        return true;
    case J_DONE:
    default:
        return false; /* nothing follows the object */
    }
}

static bool number_end(struct moe_json_state *s, unsigned char c)
{
    value_done(s);
    return step(s, c);
}

/* Whitespace between tokens (not inside a string or a number) counts toward MOE_JSON_MAX_WS. */
static bool in_token(const struct moe_json_state *s)
{
    return s->mode == J_STRING || s->mode == J_ESC || s->mode == J_HEX || s->mode == J_UTF8;
}

bool moe_json_feed(struct moe_json_state *s, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)b[i];
        bool ws = is_ws(c) && !in_token(s);
        if (!step(s, c)) return false;
        s->ws = ws ? (uint8_t)(s->ws + 1) : 0;
        if (s->ws > MOE_JSON_MAX_WS) return false;
    }
    return true;
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
    *t = (struct moe_token_bytes){ .n = vocab, .blob = blob, .off = off };
    return MOE_OK;
}

void moe_token_bytes_free(struct moe_token_bytes *t)
{
    free((char *)t->blob);
    free((uint32_t *)t->off);
    *t = (struct moe_token_bytes){ 0 };
}

int moe_json_mask(const struct moe_json_state *s, const struct moe_token_bytes *t, const float *logits, int vocab,
                  bool (*is_eos)(const void *ud, int id), const void *ud, float *out)
{
    int allowed = 0;
    for (int id = 0; id < vocab; id++) {
        struct moe_json_state js = *s;
        uint32_t a = id < t->n ? t->off[id] : 0, b = id < t->n ? t->off[id + 1] : 0;
        /* an end-of-sequence token would end the text before the object: never one */
        bool ok = b > a && !(is_eos && is_eos(ud, id)) && moe_json_feed(&js, t->blob + a, b - a);
        out[id] = ok ? logits[id] : -INFINITY;
        allowed += ok;
    }
    return allowed;
}

void moe_json_take(struct moe_json_state *s, const struct moe_token_bytes *t, int id)
{
    if (id >= 0 && id < t->n) moe_json_feed(s, t->blob + t->off[id], t->off[id + 1] - t->off[id]);
}
