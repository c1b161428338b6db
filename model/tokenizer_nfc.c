/* Unicode NFC (UAX #15) for the tokenizer's NFC normalizer.
 *
 * Most text is already NFC, so the work is organised around "inert" code
 * points: starters with NFC_Quick_Check=Yes (no combining class, not a
 * decomposition that NFC refuses, nothing before them composes with them).
 * Nothing moves across an inert code point or combines with it from the left,
 * so the text splits into independent segments: an inert code point followed
 * by the non-inert ones up to the next inert one.  Every code point below
 * U+0300 is inert (gen_nfc_tables.py checks it), so ASCII and Latin-1 are
 * skipped without table lookups.  A segment with a non-inert code point is
 * first run through the quick check (no Quick_Check No/Maybe, combining
 * classes not decreasing); only if that fails is it normalized:
 *
 *   decompose  each code point fully (table, recursively; Hangul syllables
 *              by arithmetic) into a buffer of (code point, class)
 *   reorder    each run of non-starters stably by combining class
 *   compose    each code point with the last starter unless blocked (UAX #15
 *              D117): primary composites from the table, Hangul LV / LVT by
 *              arithmetic
 *
 * and written out; the bytes between such segments are copied as they are. */
#include "tokenizer_nfc.h"
#include "utf8.h"

#include <stdlib.h>
#include <string.h>

#define NFC_NOT_INERT (MOE_NFC_QCNO | MOE_NFC_CCC | MOE_NFC_SECOND)

/* Hangul (Unicode 14 section 3.12) */
#define SBASE 0xAC00u
#define LBASE 0x1100u
#define VBASE 0x1161u
#define TBASE 0x11A7u
#define LCOUNT 19u
#define VCOUNT 21u
#define TCOUNT 28u
#define SCOUNT (LCOUNT * VCOUNT * TCOUNT)

#define CP_MASK 0x1FFFFFu   /* 21 bits: one code point of a packed decomposition */

static inline unsigned nfc_props(uint32_t cp)
{
    if (cp >= MOE_NFC_PROP_LIMIT)
        return 0;
    const uint64_t *blk = moe_nfc_stage2 + 8 * (size_t)moe_nfc_stage1[cp >> 7];
    return (unsigned)(blk[(cp & 127) >> 4] >> (4 * (cp & 15))) & 15u;
}

/* Class of a code point with MOE_NFC_CCC: a binary search over the few runs of its block. */
static unsigned ccc_lookup(uint32_t cp)
{
    if (cp >> 7 >= MOE_NFC_CCC_BLOCKS)
        return 0;
    unsigned lo = moe_nfc_ccc_index[cp >> 7], hi = moe_nfc_ccc_index[(cp >> 7) + 1];
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        uint32_t e = moe_nfc_ccc[mid], first = e >> 12;
        if (cp < first)
            hi = mid;
        else if (cp > first + ((e >> 8) & 15))
            lo = mid + 1;
        else
            return e & 255;
    }
    return 0;
}

unsigned moe_tok_nfc_ccc(uint32_t cp)
{
    return (nfc_props(cp) & MOE_NFC_CCC) ? ccc_lookup(cp) : 0;
}

/* The decomposition entry of cp, which must have MOE_NFC_DECOMP. */
static uint64_t decomp_entry(uint32_t cp)
{
    unsigned lo = 0, hi = moe_nfc_n_decomp;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        uint64_t e = moe_nfc_decomp[mid];
        if ((e >> 42) < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return moe_nfc_decomp[lo];
}

/* Primary composite of the pair (a, b), 0 if there is none. */
static uint32_t compose_pair(uint32_t a, uint32_t b)
{
    if (a - LBASE < LCOUNT && b - VBASE < VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a - SBASE < SCOUNT && (a - SBASE) % TCOUNT == 0 && b - TBASE - 1 < TCOUNT - 1)
        return a + (b - TBASE);
    if (!(nfc_props(b) & MOE_NFC_SECOND))   /* cheap filter: most marks start no pair */
        return 0;
    uint64_t key = (uint64_t)a << 21 | b;
    unsigned lo = 0, hi = moe_nfc_n_comp;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        uint64_t e = moe_nfc_decomp[moe_nfc_comp[mid]];
        uint64_t k = e & (((uint64_t)1 << 42) - 1);
        if (k < key)
            lo = mid + 1;
        else if (k > key)
            hi = mid;
        else
            return (uint32_t)(e >> 42);
    }
    return 0;
}

/* Length of the run of ASCII bytes at s[0..n), 8 bytes at a time. */
static size_t ascii_run(const unsigned char *s, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080u)
            break;
    }
    while (i < n && s[i] < 0x80)
        i++;
    return i;
}

/* ---- segment normalization ----------------------------------------------- */

struct nfc_ctx {
    char *out;              /* result, grown as needed; NULL until a segment changes */
    size_t out_len, out_cap;
    uint32_t *cp, *tmp_cp;  /* decomposed segment and the reordering scratch */
    uint8_t *cc, *tmp_cc;   /* their combining classes */
    size_t len, cap;
};

static bool out_reserve(struct nfc_ctx *c, size_t extra)
{
    return moe_grow((void **)&c->out, &c->out_cap, c->out_len + extra, 1, 256);
}

static bool out_append(struct nfc_ctx *c, const unsigned char *s, size_t n)
{
    if (!out_reserve(c, n))
        return false;
    if (n)
        memcpy(c->out + c->out_len, s, n);
    c->out_len += n;
    return true;
}

static bool seg_push(struct nfc_ctx *c, uint32_t cp, unsigned props)
{
    if (c->len == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 64;
        uint32_t *a = realloc(c->cp, cap * sizeof(*a));
        if (!a)
            return false;
        c->cp = a;
        uint32_t *b = realloc(c->tmp_cp, cap * sizeof(*b));
        if (!b)
            return false;
        c->tmp_cp = b;
        uint8_t *d = realloc(c->cc, cap);
        if (!d)
            return false;
        c->cc = d;
        uint8_t *e = realloc(c->tmp_cc, cap);
        if (!e)
            return false;
        c->tmp_cc = e;
        c->cap = cap;
    }
    c->cp[c->len] = cp;
    c->cc[c->len] = (uint8_t)((props & MOE_NFC_CCC) ? ccc_lookup(cp) : 0);
    c->len++;
    return true;
}

/* Full canonical decomposition of cp appended to the segment.  The recursion
 * only follows the first code point of a mapping (the second never decomposes
 * again) and is at most 4 deep; gen_nfc_tables.py checks both. */
static bool seg_decompose(struct nfc_ctx *c, uint32_t cp)
{
    if (cp - SBASE < SCOUNT) {
        uint32_t si = cp - SBASE, t = si % TCOUNT;
        if (!seg_push(c, LBASE + si / (VCOUNT * TCOUNT), 0) ||
            !seg_push(c, VBASE + (si % (VCOUNT * TCOUNT)) / TCOUNT, 0))
            return false;
        return t == 0 || seg_push(c, TBASE + t, 0);
    }
    unsigned p = nfc_props(cp);
    if (!(p & MOE_NFC_DECOMP))
        return seg_push(c, cp, p);
    uint64_t e = decomp_entry(cp);
    uint32_t first = (uint32_t)(e >> 21) & CP_MASK, second = (uint32_t)e & CP_MASK;
    if (!seg_decompose(c, first))
        return false;
    return second == 0 || seg_push(c, second, nfc_props(second));
}

_Thread_local uint64_t moe_tok_steps;

/* Canonical ordering: each run of non-starters sorted stably by class.  Short
 * runs (the usual case) by insertion; long ones by counting sort, so a long
 * stretch of alternating marks stays linear. */
static void seg_reorder(struct nfc_ctx *c)
{
    uint32_t *cp = c->cp;
    uint8_t *cc = c->cc;
    for (size_t i = 0, n = c->len; i < n;) {
        if (cc[i] == 0) {
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < n && cc[j])
            j++;
        if (j - i <= 32) {
            for (size_t k = i + 1; k < j; k++) {
                uint32_t x = cp[k];
                uint8_t kx = cc[k];
                size_t m = k;
                for (; m > i && cc[m - 1] > kx; m--) {
                    moe_tok_steps++;
                    cp[m] = cp[m - 1];
                    cc[m] = cc[m - 1];
                }
                cp[m] = x;
                cc[m] = kx;
            }
        } else {
            size_t start[256] = { 0 };
            for (size_t k = i; k < j; k++)
                start[cc[k]]++;
            for (size_t k = 0, sum = 0; k < 256; k++) {
                size_t cnt = start[k];
                start[k] = sum;
                sum += cnt;
            }
            moe_tok_steps += j - i;
            for (size_t k = i; k < j; k++) {
                size_t at = start[cc[k]]++;
                c->tmp_cp[at] = cp[k];
                c->tmp_cc[at] = cc[k];
            }
            memcpy(cp + i, c->tmp_cp, (j - i) * sizeof(*cp));
            memcpy(cc + i, c->tmp_cc, j - i);
        }
        i = j;
    }
}

/* Canonical composition in place; returns the new length.  A code point is
 * blocked from the last starter when something kept in between has class 0 or
 * a class >= its own.  What is kept after the last starter are non-starters in
 * class order (a kept starter would be the last starter), so that is: not
 * adjacent, and the last kept class >= its own. */
static size_t seg_compose(struct nfc_ctx *c)
{
    uint32_t *cp = c->cp;
    uint8_t *cc = c->cc;
    size_t o = 0, starter = SIZE_MAX;
    unsigned last = 0;
    for (size_t i = 0; i < c->len; i++) {
        uint32_t x = cp[i];
        unsigned k = cc[i];
        if (starter != SIZE_MAX && (o - 1 == starter || last < k)) {
            uint32_t y = compose_pair(cp[starter], x);
            if (y) {
                cp[starter] = y;   /* composites are starters: cc[starter] stays 0 */
                continue;
            }
        }
        if (k == 0)
            starter = o;
        last = k;
        cp[o] = x;
        cc[o] = (uint8_t)k;
        o++;
    }
    return o;
}

static bool seg_normalize(struct nfc_ctx *c, const unsigned char *s, size_t n)
{
    c->len = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp = 0;
        i += moe_utf8_next(s + i, n - i, &cp);   /* segments hold only valid sequences */
        if (!seg_decompose(c, cp))
            return false;
    }
    seg_reorder(c);
    size_t m = seg_compose(c);
    if (!out_reserve(c, 4 * m))
        return false;
    for (size_t i = 0; i < m; i++)
        c->out_len += moe_utf8_put(c->cp[i], c->out + c->out_len);
    return true;
}

/* ---- API ------------------------------------------------------------------ */

enum moe_status moe_tok_nfc(const char *str, size_t n, char **out, size_t *out_n)
{
    const unsigned char *s = (const unsigned char *)str;
    struct nfc_ctx c = { 0 };
    /* copied: input consumed into c.out so far; boundary: start of the last
     * inert code point (where a segment starting before the next one begins) */
    size_t i = 0, copied = 0, boundary = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i += ascii_run(s + i, n - i);
            boundary = i - 1;
            continue;
        }
        uint32_t cp;
        size_t l = moe_utf8_next(s + i, n - i, &cp);
        if (l == 0) {   /* not UTF-8: kept as it is, and nothing combines across it */
            boundary = ++i;
            continue;
        }
        if (cp < 0x300 || !(nfc_props(cp) & NFC_NOT_INERT)) {
            boundary = i;
            i += l;
            continue;
        }
        /* Find the segment's end (the next inert code point) and quick-check it. */
        size_t j = i;
        bool work = false;
        unsigned last = 0;
        while (j < n) {
            l = moe_utf8_next(s + j, n - j, &cp);
            unsigned p = l && cp >= 0x300 ? nfc_props(cp) : 0;
            if (!(p & NFC_NOT_INERT))
                break;
            if (!work) {
                unsigned k = (p & MOE_NFC_CCC) ? ccc_lookup(cp) : 0;
                work = (p & (MOE_NFC_QCNO | MOE_NFC_SECOND)) || (k != 0 && last > k);
                last = k;
            }
            j += l;
        }
        if (work) {
            if (!c.out && !out_reserve(&c, n + n / 8 + 64))
                goto oom;
            if (!out_append(&c, s + copied, boundary - copied) ||
                !seg_normalize(&c, s + boundary, j - boundary))
                goto oom;
            copied = j;
        }
        i = j;
    }
    if (!c.out) {   /* already NFC */
        if (!(c.out = malloc(n + 1)))
            goto oom;
        if (n)
            memcpy(c.out, s, n);
        c.out_len = n;
    } else if (!out_append(&c, s + copied, n - copied)) {
        goto oom;
    }
    if (!out_reserve(&c, 1))
        goto oom;
    c.out[c.out_len] = '\0';
    free(c.cp);
    free(c.cc);
    free(c.tmp_cp);
    free(c.tmp_cc);
    *out = c.out;
    *out_n = c.out_len;
    return MOE_OK;
oom:
    free(c.out);
    free(c.cp);
    free(c.cc);
    free(c.tmp_cp);
    free(c.tmp_cc);
    return moe_errorf(MOE_ENOMEM, "NFC normalization of %zu bytes: out of memory", n);
}

bool moe_tok_nfc_quick(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    unsigned last = 0;   /* class of the previous code point */
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x80) {
            i += ascii_run(s + i, n - i);
            last = 0;
            continue;
        }
        uint32_t cp;
        size_t l = moe_utf8_next(s + i, n - i, &cp);
        if (l == 0) {   /* as moe_tok_nfc: passed through, a barrier */
            i++;
            last = 0;
            continue;
        }
        i += l;
        unsigned p = cp < 0x300 ? 0 : nfc_props(cp);
        if (p & (MOE_NFC_QCNO | MOE_NFC_SECOND))
            return false;
        unsigned k = (p & MOE_NFC_CCC) ? ccc_lookup(cp) : 0;
        if (k != 0 && last > k)
            return false;
        last = k;
    }
    return true;
}
