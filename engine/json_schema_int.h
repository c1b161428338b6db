/* The compiled form of a JSON schema, shared by the compiler (json_schema.c)
 * and the recognizer (json_guide.c). */
#ifndef MOE_JSON_SCHEMA_INT_H
#define MOE_JSON_SCHEMA_INT_H

#include <stdatomic.h>
#include <string.h>

#include "json_guide.h"

enum json_kind {
    K_ANY,      /* any value */
    K_OBJECT,   /* props[first .. first + n), other keys' values: extra (-1: none) */
    K_ARRAY,    /* min_items .. max_items values: the first n of nodes branch[first .. first + n)
                   (prefixItems), the others of node extra */
    K_STRING,   /* bounded: min_items .. max_items characters (code points) */
    K_NUMBER,   /* bounded: in range, written without an exponent */
    K_INTEGER,  /* bounded: in range (and a multiple of range.mult) */
    K_LITERALS, /* exactly one of lits[first .. first + n) (enum, const, boolean, null) */
    K_UNION,    /* the one of branch[first .. first + n) that the first byte selects */
    K_TAGGED,   /* one of the objects branch[first .. first + n), told apart by the value of their
                   property key, written first: one of the literals of node tags, in branch order */
};

struct json_str {        /* bytes pool[off .. off + len) */
    uint32_t off, len;
};

static inline bool json_str_eq(const char *pool, struct json_str a, struct json_str b)
{
    return a.len == b.len && !memcmp(pool + a.off, pool + b.off, a.len);
}

/* The bounds of a number or an integer node. */
struct json_range {
    double lo, hi;         /* number: lo <= x <= hi; < and > where lo_excl / hi_excl */
    bool lo_excl, hi_excl;
    int64_t ilo, ihi;      /* integer: ilo <= x <= ihi, |x| < 10^18 (18 digits at most) */
    int64_t mult;          /* integer: a multiple of mult (1: any) */
};

struct json_node {
    uint8_t kind;
    bool bounded;        /* string, number, integer: min_items / max_items or range hold */
    uint16_t n;
    uint32_t first;
    int32_t extra;
    uint64_t required;   /* object: bits of the properties that must be written */
    uint32_t min_items, max_items;
    uint32_t tags;       /* tagged: the literal node of the tag values */
    struct json_str key; /* tagged: the tag property's name, as written */
    struct json_range range;
};

struct json_prop {
    struct json_str name; /* the key as written, escaped, without its quotes */
    uint16_t node;
};

struct moe_json_schema {
    atomic_int refs;     /* 0: static, never freed */
    const struct json_node *nodes;
    const struct json_prop *props;
    const struct json_str *lits;
    const uint16_t *branch;
    const char *pool;
    int n_nodes;
    uint16_t root;
    bool compact;        /* whitespace between tokens: one space at most, no line break */
};

/* Nodes every schema begins with (the "any value" grammar). */
enum {
    N_ANY,
    N_ANY_OBJECT,
    N_ANY_ARRAY,
    N_ANY_LITERAL, /* true, false, null */
    N_ANY_STRING,
    N_ANY_NUMBER,
    N_BUILTIN,
};

/* The schema of JSON mode (any object): its nodes, literals and pool begin every compiled schema. */
extern const struct moe_json_schema moe_json_any_object;
#define JSON_BUILTIN_LITS 3
#define JSON_BUILTIN_POOL 13 /* "truefalsenull" */

#endif
