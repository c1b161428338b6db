/* Strict parsing of a number given as text (an option's value): the whole string, base 10, no overflow. */
#include "moe.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A value starts with its number: strto* would also skip blanks and take a '+'
 * (and strtod a hexadecimal "0x..."). */
static bool starts_number(const char *s)
{
    return ((*s >= '0' && *s <= '9') || *s == '-' || *s == '.') && !strpbrk(s, "xX");
}

bool moe_parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    if (!starts_number(s)) return false;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool moe_parse_u64_prefix(const char *s, uint64_t *out, const char **rest)
{
    char *end;
    if (*s < '0' || *s > '9') return false; /* no blank, sign (strtoull would wrap a '-') or '.' */
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno) return false;
    *out = v;
    *rest = end;
    return true;
}

bool moe_parse_u64(const char *s, uint64_t *out)
{
    uint64_t v;
    const char *rest;
    if (!moe_parse_u64_prefix(s, &v, &rest) || *rest) return false;
    *out = v;
    return true;
}

bool moe_parse_double_in(const char *s, double lo, double hi, double *out)
{
    char *end;
    if (!starts_number(s)) return false;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool moe_parse_double(const char *s, double lo, double *out)
{
    return moe_parse_double_in(s, lo, INFINITY, out);
}
