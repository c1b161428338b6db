/* The numbers a bounded number node is written with: -?(0|[1-9][0-9]*)(\.[0-9]+)?, at most
 * MOE_JSON_MAX_NUM bytes, no exponent.  Each is a multiple of 10^-30 (no more digits fit after the
 * point: "0." and 30), and its double (as strtod reads it, what a range is held to) is in range
 * exactly when it lies between the least and the greatest multiple of 10^-30 whose doubles are, found
 * once when the schema is compiled (json_num_bounds): from there the range is held in decimal, so
 * whether a number begun can still end in range is known exactly, digit by digit. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_schema_int.h"

#define W JSON_DEC_W
#define POINT JSON_DEC_INT /* the first digit after the point */
#define Z8 "00000000"
static const char zero[W + 1] = Z8 Z8 Z8 Z8 Z8 Z8 Z8 Z8;

/* ---- magnitudes in fixed point: W digits '0'..'9', POINT of them before the point ---------- */

static bool dec_zero(const char *a) { return !memcmp(a, zero, W); }

/* Add one at digit i (10^(POINT - 1 - i)), carrying; the result stays below 10^POINT here. */
static void dec_inc(char *a, int i)
{
    for (; i >= 0 && a[i] == '9'; i--) a[i] = '0';
    if (i >= 0) a[i]++;
}

/* Take one unit (10^-30) from a > 0. */
static void dec_dec(char *a)
{
    int i = W - 1;
    for (; a[i] == '0'; i--) a[i] = '9';
    a[i]--;
}

/* out = the floor of (a + b) / 2. */
static void dec_mid(const char *a, const char *b, char *out)
{
    int sum[W], carry = 0;
    for (int i = W - 1; i >= 0; i--) {
        int d = (a[i] - '0') + (b[i] - '0') + carry;
        sum[i] = d % 10;
        carry = d / 10;
    }
    int rem = carry; /* the digit above the first, 0 or 1 */
    for (int i = 0; i < W; i++) {
        int d = rem * 10 + sum[i];
        out[i] = (char)('0' + d / 2);
        rem = d % 2;
    }
}

/* x (0 <= x < 10^POINT) rounded to a multiple of 10^-30. */
static void dec_of_double(double x, char *out)
{
    char buf[POINT + 40];
    int n = snprintf(buf, sizeof(buf), "%.30f", x + 0.0); /* no "-0" */
    int ip = n - 31;                                      /* digits before the point */
    memcpy(out, zero, W);
    memcpy(out + POINT - ip, buf, (size_t)ip);
    memcpy(out + POINT, buf + ip + 1, 30);
}

/* The double of a magnitude (negated where neg), as strtod reads its decimal text. */
static double dec_double(const char *a, bool neg)
{
    char buf[W + 3], *p = buf;
    int i = 0;
    while (i < POINT - 1 && a[i] == '0') i++;
    if (neg) *p++ = '-';
    memcpy(p, a + i, (size_t)(POINT - i));
    p += POINT - i;
    *p++ = '.';
    memcpy(p, a + POINT, W - POINT);
    p[W - POINT] = 0;
    return strtod(buf, NULL);
}

/* The least multiple of 10^-30 whose double is x or more (x > 0), or with most, the greatest whose
 * double is x or less (x >= 0); 10^33, beyond any number written, where x is from there. */
static void dec_search(double x, bool most, char *out)
{
    if (x >= 1e33) {
        memcpy(out, zero, W);
        out[0] = '1';
        return;
    }
    /* lo's double is below x (most: x or less), hi's x or more (most: above x); halved to one apart */
    char lo[W], hi[W], mid[W], next[W];
    dec_of_double(most ? x : nextafter(x, 0), lo); /* within half a unit of it */
    if (!dec_zero(lo)) dec_dec(lo);
    dec_of_double(most ? nextafter(x, INFINITY) : x, hi);
    dec_inc(hi, W - 1);
    for (;;) {
        memcpy(next, lo, W);
        dec_inc(next, W - 1);
        if (memcmp(next, hi, W) >= 0) break;
        dec_mid(lo, hi, mid);
        double v = dec_double(mid, false);
        if (most ? v > x : v >= x) memcpy(hi, mid, W);
        else memcpy(lo, mid, W);
    }
    memcpy(out, most ? lo : hi, W);
}

void json_num_bounds(const struct json_range *r, char *out)
{
    double lo = r->lo_excl ? nextafter(r->lo, INFINITY) : r->lo;
    double hi = r->hi_excl ? nextafter(r->hi, -INFINITY) : r->hi;
    char *l = out, *h = out + 1 + W;
    if (lo > 0) {
        l[0] = '+';
        dec_search(lo, false, l + 1);
    } else {
        dec_search(-lo, true, l + 1);
        l[0] = dec_zero(l + 1) ? '+' : '-';
    }
    if (hi >= 0) {
        h[0] = '+';
        dec_search(hi + 0.0, true, h + 1);
    } else {
        h[0] = '-';
        dec_search(-hi, false, h + 1);
    }
}

/* ---- numbers begun ---------------------------------------------------------------------- */

/* The digits before the point of a (0 where a < 1). */
static int int_digits(const char *a)
{
    for (int i = 0; i < POINT; i++)
        if (a[i] != '0') return POINT - i;
    return 0;
}

/* out = the magnitude m[0..ml) (digits, a point, digits) with k zeros more before the point (none
 * after one); returns its digits after the point. */
static int dec_of_text(const char *m, int ml, int k, char *out)
{
    const char *dot = memchr(m, '.', (size_t)ml);
    int ip = dot ? (int)(dot - m) : ml, mf = dot ? ml - ip - 1 : 0;
    memcpy(out, zero, W);
    memcpy(out + POINT - ip - k, m, (size_t)ip);
    if (mf) memcpy(out + POINT, dot + 1, (size_t)mf);
    return mf;
}

/* Whether a number whose magnitude begins with m[0..ml) (digits, a point, digits), followed by k more
 * digits before the point and holding f digits after it (more zeros; none before the point where it
 * has one), can lie in [p, q]. */
static bool family_meets(const char *p, const char *q, const char *m, int ml, int k, int f)
{
    char lo[W], hi[W];
    int mf = dec_of_text(m, ml, k, lo);
    memcpy(hi, lo, W);
    memset(hi + POINT - k, '9', (size_t)k);
    memset(hi + POINT + mf, '9', (size_t)(f - mf));
    const char *a = memcmp(lo, p, W) > 0 ? lo : p, *b = memcmp(hi, q, W) < 0 ? hi : q;
    char c[W]; /* the least number of f decimals from a */
    memcpy(c, a, W);
    bool up = false;
    for (int i = POINT + f; i < W; i++) {
        up |= c[i] != '0';
        c[i] = '0';
    }
    if (up) dec_inc(c, POINT + f - 1);
    return memcmp(c, b, W) <= 0;
}

/* Whether a magnitude begun by m[0..ml) can end in [p, q] within room bytes. */
static bool magnitude_viable(const char *p, const char *q, const char *m, int ml, int room)
{
    if (ml == 0) {
        for (char d = '0'; d <= '9'; d++)
            if (magnitude_viable(p, q, &d, 1, room)) return true;
        return false;
    }
    int left = room - ml;
    const char *dot = memchr(m, '.', (size_t)ml);
    if (dot) { /* the rest: digits after the point, one at least */
        int f = ml - (int)(dot - m) - 1;
        return (f > 0 || left > 0) && family_meets(p, q, m, ml, 0, f + left);
    }
    int np = int_digits(p), nq = int_digits(q);
    for (int k = 0; k <= left && (k == 0 || m[0] != '0'); k++) { /* k more digits before the point */
        int n = m[0] == '0' ? 0 : ml + k; /* of the numbers this way: below 10^n, from 10^(n-1) */
        if (n > nq) break;
        if (n < np) continue;
        if ((n > np && n < nq) || /* from 10^(n-1) to below 10^n: all in range */
            family_meets(p, q, m, ml, k, left - k >= 2 ? left - k - 1 : 0))
            return true;
    }
    return false;
}

/* The magnitudes [*p, *q] of the numbers of the sign neg in range; false: none. */
static bool side(const char *bounds, bool neg, const char **p, const char **q)
{
    const char *l = bounds, *h = bounds + 1 + W;
    if (!neg) {
        *p = l[0] == '-' ? zero : l + 1;
        *q = h + 1;
        return h[0] == '+';
    }
    *p = h[0] == '-' ? h + 1 : zero;
    *q = l + 1;
    return l[0] == '-' || dec_zero(l + 1);
}

bool json_num_viable(const char *bounds, const char *t, int len)
{
    if (len == 0) return json_num_viable(bounds, "-", 1) || json_num_viable(bounds, "+", 1);
    if (len > MOE_JSON_MAX_NUM) return false;
    bool neg = t[0] == '-', sign = neg || t[0] == '+';
    const char *p, *q;
    return side(bounds, neg, &p, &q) &&
           magnitude_viable(p, q, t + sign, len - sign, MOE_JSON_MAX_NUM - neg);
}

bool json_num_in(const char *bounds, const char *t, int len)
{
    bool neg = t[0] == '-';
    const char *p, *q;
    if (!side(bounds, neg, &p, &q)) return false;
    char v[W];
    dec_of_text(t + neg, len - neg, 0, v);
    return memcmp(v, p, W) >= 0 && memcmp(v, q, W) <= 0;
}
