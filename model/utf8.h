/* UTF-8 decoding, validation and encoding, shared by the tokenizer, its
 * normalizer, the chat templates and the request decoders. */
#ifndef MOE_UTF8_H
#define MOE_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Length of the valid UTF-8 sequence at s[0..n) (RFC 3629: no overlongs, no
 * surrogates, <= U+10FFFF), 0 if invalid; *cp gets the code point. */
static inline size_t moe_utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        if (n < 2 || (s[1] & 0xc0) != 0x80)
            return 0;
        *cp = ((c & 0x1fu) << 6) | (s[1] & 0x3fu);
        return 2;
    }
    if (c >= 0xe0 && c <= 0xef) {
        if (n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0))
            return 0;   /* overlong / surrogate */
        *cp = ((c & 0x0fu) << 12) | ((s[1] & 0x3fu) << 6) | (s[2] & 0x3fu);
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (n < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90))
            return 0;   /* overlong / above U+10FFFF */
        *cp = ((c & 0x07u) << 18) | ((s[1] & 0x3fu) << 12) | ((s[2] & 0x3fu) << 6) | (s[3] & 0x3fu);
        return 4;
    }
    return 0;
}

/* Whether s[0..n) is valid UTF-8 throughout. */
static inline bool moe_utf8_valid(const char *s, size_t n)
{
    uint32_t cp;
    for (size_t i = 0, l; i < n; i += l)
        if (!(l = moe_utf8_next((const unsigned char *)s + i, n - i, &cp)))
            return false;
    return true;
}

/* cp (<= U+10FFFF) as UTF-8 into out (room for 4 bytes); returns its length. */
static inline size_t moe_utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* The sequence b[0] begins (b[0..n), n > 0): *need gets the continuation bytes its lead takes (0 for
 * ASCII and for a byte no sequence begins with); returns how many bytes of b are its lead and the
 * continuation bytes after it that fit it (no overlong forms, no surrogates, nothing past U+10FFFF),
 * at most need + 1.  A whole character when that is need + 1 or b[0] is ASCII; cut short by b's end
 * when less and n. */
static inline size_t moe_utf8_fit(const unsigned char *b, size_t n, size_t *need)
{
    unsigned char c = b[0];
    *need = c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xf0 && c <= 0xf4 ? 3 : 0;
    unsigned char lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80, hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
    size_t k = 1;
    while (k <= *need && k < n && b[k] >= (k == 1 ? lo : 0x80) && b[k] <= (k == 1 ? hi : 0xbf))
        k++;
    return k;
}

/* in[0..n) into out (room for 3n bytes) as valid UTF-8: each maximal subpart of an ill-formed
 * sequence (a lead byte and the continuation bytes that still fit it, or a byte no sequence begins
 * with) becomes one U+FFFD, as Unicode recommends and Rust's from_utf8_lossy (the Hugging Face
 * byte-level decoder's) and Python's "replace" read it.  With partial, a sequence that in's end cuts
 * short (its bytes so far fitting) is not read: *used (when not NULL) says how many bytes of in were.
 * Returns the bytes written. */
static inline size_t moe_utf8_lossy(const char *in, size_t n, char *out, bool partial, size_t *used)
{
    const unsigned char *b = (const unsigned char *)in;
    size_t o = 0, i = 0;
    while (i < n) {
        if (b[i] < 0x80) {
            out[o++] = in[i++];
            continue;
        }
        size_t need, k = moe_utf8_fit(b + i, n - i, &need);
        if (need && k == need + 1) {
            for (size_t j = 0; j < k; j++)
                out[o + j] = in[i + j];
            o += k;
        } else if (need && partial && i + k == n) {
            break; /* cut by the end: the next piece may complete it */
        } else {
            o += moe_utf8_put(0xFFFD, out + o);
        }
        i += k;
    }
    if (used)
        *used = i;
    return o;
}

#endif
