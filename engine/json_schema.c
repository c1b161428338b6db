/* JSON Schema to the recognizer's nodes (json_schema_int.h): the subset a
 * byte-at-a-time recognizer can follow without looking back, every other
 * keyword refused by name. */
#include "../model/json_error.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_schema_int.h"

#define MAX_NEST 64 /* schemas inside schemas */

struct ref {
    const json_t *target;
    int node;
};

struct cc {
    struct json_node *nodes;
    int n_nodes, cap_nodes;
    struct json_prop *props;
    size_t n_props, cap_props;
    struct json_str *lits;
    size_t n_lits, cap_lits;
    uint16_t *lit_orig;         /* [n_lits]: each literal's place among its node's, as the schema gave them (a
                                   value given again not counted) */
    size_t cap_orig;
    uint16_t *branch;
    size_t n_branch, cap_branch;
    char *pool;
    size_t n_pool, cap_pool;
    struct ref *refs;
    int n_refs, cap_refs;
    struct json_dfa_build dfa;  /* the patterns' automata */
    const json_t *doc;
    int integer, boolean, null; /* shared nodes, 0 until made */
    char path[256];             /* where in the schema, for messages */
};

#define PENDING 0xff /* a node reserved for a $ref target still being compiled */

static const char *const annotations[] = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "$defs", "definitions", "discriminator",
};
static const char *const keywords[] = {
    "type", "properties", "required", "additionalProperties", "minProperties", "maxProperties", "items",
    "prefixItems", "minItems", "maxItems", "uniqueItems", "minLength", "maxLength", "pattern", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "enum", "const", "anyOf",
    "oneOf", "allOf", "$ref",
};
#define SUPPORTED "type, properties, required, additionalProperties, minProperties, maxProperties, items, " \
                  "prefixItems, minItems, maxItems, uniqueItems (of enums), minLength, maxLength, pattern, " \
                  "format, minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf (integers), enum, " \
                  "const, anyOf, oneOf, allOf (of one schema) and $ref"

static bool in_list(const char *k, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(k, list[i])) return true;
    return false;
}

static enum moe_status fail(struct cc *c, enum moe_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static enum moe_status fail(struct cc *c, enum moe_status st, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return moe_errorf(st, "JSON schema at '%s': %s", c->path[0] ? c->path : "/", msg);
}

/* Append "/seg" to the path; returns the length to restore. */
static size_t path_push(struct cc *c, const char *a, const char *b)
{
    size_t at = strlen(c->path);
    snprintf(c->path + at, sizeof(c->path) - at, "/%s%s%s", a, b ? "/" : "", b ? b : "");
    return at;
}

static int new_node(struct cc *c, struct json_node n)
{
    if (c->n_nodes >= MOE_JSON_MAX_NODES) {
        fail(c, MOE_ERANGE, "the schema needs more than %d nodes", MOE_JSON_MAX_NODES);
        return -1;
    }
    size_t cap = (size_t)c->cap_nodes;
    if (!moe_grow((void **)&c->nodes, &cap, (size_t)c->n_nodes + 1, sizeof(*c->nodes), 16)) {
        moe_errorf(MOE_ENOMEM, "out of memory compiling a JSON schema");
        return -1;
    }
    c->cap_nodes = (int)cap;
    c->nodes[c->n_nodes] = n;
    return c->n_nodes++;
}

/* Bytes into the pool; false when out of memory. */
static bool pool_add(struct cc *c, const char *b, size_t n, struct json_str *out)
{
    if (c->n_pool + n > UINT32_MAX || !moe_grow((void **)&c->pool, &c->cap_pool, c->n_pool + n, 1, 16)) return false;
    memcpy(c->pool + c->n_pool, b, n);
    *out = (struct json_str){ (uint32_t)c->n_pool, (uint32_t)n };
    c->n_pool += n;
    return true;
}

/* The fewest significant digits (1..17) that give the double x back. */
static int real_digits(double x)
{
    char buf[64];
    int p = 1;
    for (; p < 17; p++) {
        snprintf(buf, sizeof(buf), "%.*g", p, x);
        if (strtod(buf, NULL) == x) break;
    }
    return p;
}

/* The digits every number with a fraction inside v needs to be read back as it is (1 without any):
 * more digits than a number's fewest give it back too, its nearest decimal of that many digits being
 * no farther from it. */
static int inner_digits(const json_t *v)
{
    int p = 1, q;
    size_t i;
    const char *k;
    json_t *e;
    if (json_is_real(v)) return real_digits(json_real_value(v));
    json_array_foreach(v, i, e) {
        if ((q = inner_digits(e)) > p) p = q;
    }
    json_object_foreach((json_t *)v, k, e) {
        if ((q = inner_digits(e)) > p) p = q;
    }
    return p;
}

/* v with every number of an integer's value, at any depth, an integer (1.0 and 1 are one value to JSON
 * Schema, and -0.0 and 0; one text then): a new reference, NULL when out of memory. */
static json_t *literal_norm(const json_t *v)
{
    json_t *out = NULL, *e;
    size_t i;
    const char *k;
    switch (json_typeof(v)) {
    case JSON_REAL: {
        double x = json_real_value(v);
        return x == floor(x) && x >= -0x1p63 && x < 0x1p63 ? json_integer((json_int_t)x) : json_real(x);
    }
    case JSON_ARRAY:
        out = json_array();
        json_array_foreach(v, i, e) {
            if (!out || json_array_append_new(out, literal_norm(e)) != 0) goto oom;
        }
        return out;
    case JSON_OBJECT:
        out = json_object();
        json_object_foreach((json_t *)v, k, e) {
            if (!out || json_object_set_new(out, k, literal_norm(e)) != 0) goto oom;
        }
        return out;
    default:
        return json_incref((json_t *)v);
    }
oom:
    json_decref(out);
    return NULL;
}

/* A literal value as the output must write it: compact, numbers of an integer's value as integers, the
 * others in their shortest form (those inside an array or object with the digits the one that needs the
 * most needs, as jansson writes them), so that equal values are one text.  NULL when out of memory. */
static char *literal_text(const json_t *v)
{
    json_t *n = literal_norm(v);
    if (!n) return NULL;
    char *t;
    if (json_is_real(n)) {
        char buf[64];
        snprintf(buf, sizeof(buf), "%.*g", real_digits(json_real_value(n)), json_real_value(n));
        t = strdup(buf);
    } else {
        t = json_dumps(n, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(inner_digits(n)));
    }
    json_decref(n);
    return t;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "number";
    case JSON_TRUE: case JSON_FALSE: return "boolean";
    default: return "null";
    }
}

struct lit_key {
    const char *b;
    struct json_str s;
    uint16_t orig;
};

static int lit_cmp(const void *x, const void *y)
{
    const struct lit_key *a = x, *b = y;
    int c = memcmp(a->b, b->b, a->s.len < b->s.len ? a->s.len : b->s.len);
    return c ? c : (a->s.len > b->s.len) - (a->s.len < b->s.len);
}

/* The literal node of lits[first .. first + n): sorted by their bytes, a text before the texts it
 * begins (the recognizer narrows its candidates by binary search); their places as given kept in
 * lit_orig (a tag's branch). */
static int lits_node(struct cc *c, size_t first, size_t n)
{
    struct lit_key *k = malloc(sizeof(*k) * n);
    if (!k || !moe_grow((void **)&c->lit_orig, &c->cap_orig, c->n_lits, sizeof(*c->lit_orig), 16)) {
        free(k);
        moe_errorf(MOE_ENOMEM, "out of memory compiling a JSON schema");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        k[i] = (struct lit_key){ c->pool + c->lits[first + i].off, c->lits[first + i], (uint16_t)i };
    qsort(k, n, sizeof(*k), lit_cmp);
    for (size_t i = 0; i < n; i++) {
        c->lits[first + i] = k[i].s;
        c->lit_orig[first + i] = k[i].orig;
    }
    free(k);
    return new_node(c, (struct json_node){ .kind = K_LITERALS, .n = (uint16_t)n, .first = (uint32_t)first });
}

/* A literal node of values v[0..n) (enum or const). */
static int literals(struct cc *c, json_t *const *v, size_t n)
{
    if (n == 0) {
        fail(c, MOE_EINVAL, "an empty enum: no value can be written");
        return -1;
    }
    if (n > MOE_JSON_MAX_ENUM) {
        fail(c, MOE_ERANGE, "an enum of %zu values; at most %d are supported", n, MOE_JSON_MAX_ENUM);
        return -1;
    }
    if (!moe_grow((void **)&c->lits, &c->cap_lits, c->n_lits + n, sizeof(*c->lits), 16)) goto oom;
    size_t first = c->n_lits;
    for (size_t i = 0; i < n; i++) {
        char *t = literal_text(v[i]);
        if (!t) goto oom;
        bool ok = pool_add(c, t, strlen(t), &c->lits[c->n_lits]);
        free(t);
        if (!ok) goto oom;
        c->n_lits++;
    }
    int node = lits_node(c, first, n);
    if (node < 0) return -1;
    /* a value given twice (JSON Schema allows it; 1 and 1.0 are one value, one text) is one literal:
     * sorted, repeats sit together */
    size_t m = 1;
    for (size_t i = 1; i < n; i++)
        if (!json_str_eq(c->pool, c->lits[first + m - 1], c->lits[first + i])) {
            c->lits[first + m] = c->lits[first + i];
            c->lit_orig[first + m] = c->lit_orig[first + i];
            m++;
        }
    c->n_lits = first + m;
    c->nodes[node].n = (uint16_t)m;
    if (m < n) { /* their places among the m kept, in the order given: below 64 when m is (uniqueItems) */
        uint16_t rank[MOE_JSON_MAX_ENUM];
        memset(rank, 0, sizeof(uint16_t) * n);
        for (size_t i = 0; i < m; i++) rank[c->lit_orig[first + i]] = 1;
        for (size_t i = 1; i < n; i++) rank[i] += rank[i - 1];
        for (size_t i = 0; i < m; i++) c->lit_orig[first + i] = (uint16_t)(rank[c->lit_orig[first + i]] - 1);
    }
    return node;
oom:
    moe_errorf(MOE_ENOMEM, "out of memory compiling a JSON schema");
    return -1;
}

/* The first bytes a value of node i can begin with (bit b of set[b / 64]). */
static void first_bytes(const struct cc *c, int i, uint64_t set[4])
{
    const struct json_node *n = &c->nodes[i];
    memset(set, 0, 4 * sizeof(uint64_t));
#define ADD(b) (set[(unsigned char)(b) / 64] |= 1ull << ((unsigned char)(b) % 64))
    switch (n->kind) {
    case K_OBJECT:
    case K_TAGGED: ADD('{'); break;
    case K_ARRAY: ADD('['); break;
    case K_STRING: ADD('"'); break;
    case K_NUMBER:
    case K_INTEGER:
        ADD('-');
        for (char d = '0'; d <= '9'; d++) ADD(d);
        break;
    case K_LITERALS:
        for (unsigned k = 0; k < n->n; k++) ADD(c->pool[c->lits[n->first + k].off]);
        break;
    case K_UNION:
        for (unsigned k = 0; k < n->n; k++) {
            uint64_t b[4];
            first_bytes(c, c->branch[n->first + k], b);
            for (int w = 0; w < 4; w++) set[w] |= b[w];
        }
        break;
    default: memset(set, 0xff, 4 * sizeof(uint64_t));
    }
#undef ADD
}

/* Objects obj[0..n) told apart by a tag: a property every one requires and fixes to a string of
 * its own (const, or an enum of one).  Returns the tagged node; -1 with *none set when they have no
 * tag, -1 alone on an error. */
static int make_tagged(struct cc *c, const int *obj, int n, bool *none)
{
    *none = false;
    const struct json_node first = c->nodes[obj[0]];
    for (unsigned p = 0; p < first.n; p++) {
        struct json_str name = c->props[first.first + p].name;
        struct json_str tag[64];
        bool ok = true;
        for (int i = 0; i < n && ok; i++) {
            const struct json_node *o = &c->nodes[obj[i]];
            int at = -1;
            for (unsigned q = 0; q < o->n; q++)
                if (json_str_eq(c->pool, c->props[o->first + q].name, name)) at = (int)q;
            const struct json_node *v = at >= 0 ? &c->nodes[c->props[o->first + (unsigned)at].node] : NULL;
            ok = v && ((o->required >> at) & 1) && v->kind == K_LITERALS && v->n == 1 &&
                 c->pool[c->lits[v->first].off] == '"';
            if (ok) tag[i] = c->lits[v->first];
            for (int j = 0; j < i && ok; j++) ok = !json_str_eq(c->pool, tag[i], tag[j]);
        }
        if (!ok) continue;
        if (!moe_grow((void **)&c->lits, &c->cap_lits, c->n_lits + (size_t)n, sizeof(*c->lits), 16) ||
            !moe_grow((void **)&c->branch, &c->cap_branch, c->n_branch + (size_t)n, sizeof(*c->branch), 16)) {
            moe_errorf(MOE_ENOMEM, "out of memory compiling a JSON schema");
            return -1;
        }
        size_t lit0 = c->n_lits, br0 = c->n_branch;
        for (int i = 0; i < n; i++) {
            c->lits[c->n_lits++] = tag[i];
            c->branch[c->n_branch++] = (uint16_t)obj[i];
        }
        int tags = lits_node(c, lit0, (size_t)n);
        if (tags < 0) return -1;
        return new_node(c, (struct json_node){ .kind = K_TAGGED, .n = (uint16_t)n, .first = (uint32_t)br0,
                                               .extra = -1, .required = 1, .tags = (uint32_t)tags, .key = name });
    }
    *none = true;
    return -1;
}

/* A union of the nodes b[0..n): nested unions flattened, integer dropped beside number, and
 * every branch's first bytes apart from the others'. */
static int make_union(struct cc *c, const int *b, int n, const char *what)
{
    int flat[64], nf = 0;
    for (int i = 0; i < n; i++) {
        const struct json_node *bn = &c->nodes[b[i]];
        if (bn->kind == PENDING) {
            fail(c, MOE_ENOTSUP, "%s: a branch that refers back to a schema around it is not supported", what);
            return -1;
        }
        int m = bn->kind == K_UNION ? bn->n : 1;
        for (int k = 0; k < m; k++) {
            if (nf == 64) {
                fail(c, MOE_ERANGE, "%s: more than 64 branches", what);
                return -1;
            }
            flat[nf++] = bn->kind == K_UNION ? c->branch[bn->first + k] : b[i];
        }
    }
    bool number = false; /* any number: integers are among them */
    for (int i = 0; i < nf; i++) number |= c->nodes[flat[i]].kind == K_NUMBER && !c->nodes[flat[i]].bounded;
    int k = 0;
    for (int i = 0; i < nf; i++) /* integer values are numbers */
        if (!(number && c->nodes[flat[i]].kind == K_INTEGER)) flat[k++] = flat[i];
    if (k < nf && !strcmp(what, "oneOf")) {
        fail(c, MOE_ENOTSUP, "oneOf: an integer matches both an integer branch and a number branch, and oneOf allows "
             "a value of one branch only (write anyOf, or leave the integer branch out)");
        return -1;
    }
    nf = k;
    int objs[64], no = 0;
    for (int i = 0; i < nf; i++)
        if (c->nodes[flat[i]].kind == K_OBJECT) objs[no++] = flat[i];
    if (no >= 2) { /* objects apart: by a tag, as one branch */
        bool none;
        int t = make_tagged(c, objs, no, &none);
        if (t < 0 && !none) return -1;
        if (t >= 0) {
            k = 0;
            for (int i = 0; i < nf; i++)
                if (c->nodes[flat[i]].kind != K_OBJECT) flat[k++] = flat[i];
            flat[k++] = t;
            nf = k;
        } else {
            fail(c, MOE_ENOTSUP, "%s: %d branches are objects; objects are told apart only by a tag: a property "
                 "every one requires and fixes to a string of its own (\"type\": {\"const\": \"cat\"}), written "
                 "first", what, no);
            return -1;
        }
    }
    for (int i = 0; i < nf; i++) {
        if (c->nodes[flat[i]].kind == K_ANY) {
            fail(c, MOE_ENOTSUP, "%s: a branch that allows any value cannot be told apart from the others", what);
            return -1;
        }
        uint64_t a[4];
        first_bytes(c, flat[i], a);
        for (int j = 0; j < i; j++) {
            uint64_t o[4];
            first_bytes(c, flat[j], o);
            for (int w = 0; w < 4; w++)
                if (a[w] & o[w]) {
                    int ch = w * 64 + __builtin_ctzll(a[w] & o[w]);
                    fail(c, MOE_ENOTSUP, "%s: two branches can both begin with '%c'; the branches must begin "
                         "with different characters (an object, an array, a string, a number, true/false, null "
                         "or enums of distinct first characters)", what, ch);
                    return -1;
                }
        }
    }
    if (nf == 1) return flat[0];
    if (!moe_grow((void **)&c->branch, &c->cap_branch, c->n_branch + (size_t)nf, sizeof(*c->branch), 16)) {
        moe_errorf(MOE_ENOMEM, "out of memory compiling a JSON schema");
        return -1;
    }
    size_t first = c->n_branch;
    for (int i = 0; i < nf; i++) c->branch[c->n_branch++] = (uint16_t)flat[i];
    return new_node(c, (struct json_node){ .kind = K_UNION, .n = (uint16_t)nf, .first = (uint32_t)first });
}

static int compile(struct cc *c, const json_t *v, int depth);

/* The node of the schema inside v at key (a sub-path for messages). */
static int compile_at(struct cc *c, const json_t *v, const char *a, const char *b, int depth)
{
    size_t at = path_push(c, a, b);
    int r = compile(c, v, depth + 1);
    if (r >= 0) c->path[at] = 0;
    return r;
}

static bool count_of(struct cc *c, const json_t *o, const char *key, uint32_t *out)
{
    const json_t *v = json_object_get(o, key);
    if (!v) return true;
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        fail(c, MOE_EINVAL, "'%s' must be a non-negative integer", key);
        return false;
    }
    if (json_integer_value(v) > UINT32_MAX - 1) {
        fail(c, MOE_EINVAL, "'%s' = %lld is more than the largest supported, %lu", key,
             (long long)json_integer_value(v), (unsigned long)(UINT32_MAX - 1));
        return false;
    }
    *out = (uint32_t)json_integer_value(v);
    return true;
}

static int object_node(struct cc *c, const json_t *o, int depth)
{
    const json_t *props = json_object_get(o, "properties"), *req = json_object_get(o, "required"),
                 *add = json_object_get(o, "additionalProperties");
    if (props && !json_is_object(props)) {
        fail(c, MOE_EINVAL, "'properties' must be an object of schemas");
        return -1;
    }
    size_t n = props ? json_object_size(props) : 0;
    if (n > MOE_JSON_MAX_PROPS) {
        fail(c, MOE_ERANGE, "%zu properties; at most %d are supported in one object", n, MOE_JSON_MAX_PROPS);
        return -1;
    }
    int extra = N_ANY;
    if (add && json_is_false(add)) extra = -1;
    else if (add && (extra = compile_at(c, add, "additionalProperties", NULL, depth)) < 0) return -1;
    /* the property nodes first: the object's props[] must be contiguous */
    int nodes[MOE_JSON_MAX_PROPS];
    const char *names[MOE_JSON_MAX_PROPS];
    size_t i = 0;
    const char *k;
    json_t *pv;
    json_object_foreach((json_t *)props, k, pv) {
        names[i] = k;
        if ((nodes[i] = compile_at(c, pv, "properties", k, depth)) < 0) return -1;
        i++;
    }
    if (!moe_grow((void **)&c->props, &c->cap_props, c->n_props + n, sizeof(*c->props), 16)) goto oom;
    size_t first = c->n_props;
    for (i = 0; i < n; i++) {
        json_t *js = json_string(names[i]);
        char *t = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
        json_decref(js);
        if (!t) goto oom;
        bool ok = pool_add(c, t + 1, strlen(t) - 2, &c->props[c->n_props].name); /* without the quotes */
        free(t);
        if (!ok) goto oom;
        c->props[c->n_props++].node = (uint16_t)nodes[i];
    }
    uint64_t required = 0;
    if (req) {
        size_t ri;
        json_t *rv;
        if (!json_is_array(req)) {
            fail(c, MOE_EINVAL, "'required' must be an array of property names");
            return -1;
        }
        json_array_foreach(req, ri, rv) {
            if (!json_is_string(rv)) {
                fail(c, MOE_EINVAL, "'required' must be an array of property names");
                return -1;
            }
            for (i = 0; i < n && strcmp(names[i], json_string_value(rv)); i++) {}
            if (i == n) {
                fail(c, MOE_ENOTSUP, "required property '%.64s' is not among 'properties' (name it there, with "
                     "its schema)", json_string_value(rv));
                return -1;
            }
            required |= 1ull << i;
        }
    }
    uint32_t minp = 0, maxp = UINT32_MAX;
    if (!count_of(c, o, "minProperties", &minp) || !count_of(c, o, "maxProperties", &maxp)) return -1;
    uint32_t nreq = (uint32_t)__builtin_popcountll(required);
    if (minp > maxp || nreq > maxp || (extra < 0 && minp > n)) {
        fail(c, MOE_EINVAL, "no object meets minProperties %u and maxProperties %u with %u required and %zu %s "
             "properties", minp, maxp == UINT32_MAX ? 0 : maxp, nreq, n, extra < 0 ? "allowed" : "declared");
        return -1;
    }
    return new_node(c, (struct json_node){ .kind = K_OBJECT, .n = (uint16_t)n, .first = (uint32_t)first,
                                           .extra = extra, .required = required, .min_items = minp,
                                           .max_items = maxp, .bounded = minp > 0 || maxp != UINT32_MAX });
oom:
    moe_errorf(MOE_ENOMEM, "out of memory compiling a JSON schema");
    return -1;
}

/* A shared node made on first use. */
static int shared(struct cc *c, int *slot, struct json_node n)
{
    if (!*slot) *slot = new_node(c, n);
    return *slot;
}

static bool has_any(const json_t *o, const char *const *words, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (json_object_get(o, words[i])) return true;
    return false;
}

/* The nodes of a list of 1 to 64 schemas at key (anyOf, oneOf, prefixItems) into b; their count, -1
 * on an error. */
static int compile_list(struct cc *c, const json_t *list, const char *key, int depth, int b[64])
{
    if (!json_is_array(list) || json_array_size(list) == 0 || json_array_size(list) > 64) {
        fail(c, MOE_EINVAL, "'%s' must be an array of 1 to 64 schemas", key);
        return -1;
    }
    size_t i;
    json_t *bv;
    json_array_foreach(list, i, bv) {
        char idx[24];
        snprintf(idx, sizeof(idx), "%zu", i);
        if ((b[i] = compile_at(c, bv, key, idx, depth)) < 0) return -1;
    }
    return (int)i;
}

/* prefixItems (or draft 7's items as an array): the schemas of the first values, in n's branches. */
static bool prefix_items(struct cc *c, const json_t *list, const char *key, struct json_node *n, int depth)
{
    int b[64], i = compile_list(c, list, key, depth, b);
    if (i < 0) return false;
    if (!moe_grow((void **)&c->branch, &c->cap_branch, c->n_branch + (size_t)i, sizeof(*c->branch), 16)) {
        moe_errorf(MOE_ENOMEM, "out of memory compiling a JSON schema");
        return false;
    }
    n->first = (uint32_t)c->n_branch;
    n->n = (uint16_t)i;
    for (int k = 0; k < i; k++) c->branch[c->n_branch++] = (uint16_t)b[k];
    return true;
}

static int array_node(struct cc *c, const json_t *o, int depth)
{
    const json_t *items = json_object_get(o, "items"), *prefix = json_object_get(o, "prefixItems");
    struct json_node n = { .kind = K_ARRAY, .extra = N_ANY, .max_items = UINT32_MAX };
    if (!count_of(c, o, "minItems", &n.min_items) || !count_of(c, o, "maxItems", &n.max_items)) return -1;
    if (n.min_items > n.max_items) {
        fail(c, MOE_EINVAL, "minItems %u is above maxItems %u", n.min_items, n.max_items);
        return -1;
    }
    if (prefix && !prefix_items(c, prefix, "prefixItems", &n, depth)) return -1;
    if (!prefix && json_is_array(items)) { /* draft 7's tuples; the other values: any */
        if (!prefix_items(c, items, "items", &n, depth)) return -1;
        items = NULL;
    }
    if (items && json_is_false(items)) {
        if (n.min_items > n.n) {
            fail(c, MOE_EINVAL, "'items': false with minItems %u: at most %u values (prefixItems) can be written",
                 n.min_items, n.n);
            return -1;
        }
        if (n.max_items > n.n) n.max_items = n.n;
    } else if (items && (n.extra = compile_at(c, items, "items", NULL, depth)) < 0) {
        return -1;
    }
    const json_t *uniq = json_object_get(o, "uniqueItems");
    if (uniq && !json_is_boolean(uniq)) {
        fail(c, MOE_EINVAL, "'uniqueItems' must be true or false");
        return -1;
    }
    if (json_is_true(uniq) && n.max_items > 1) { /* elements that differ: literals, each written once */
        const struct json_node *it = &c->nodes[n.extra];
        bool dup = false;
        for (unsigned i = 1; it->kind == K_LITERALS && i < it->n; i++)
            dup |= json_str_eq(c->pool, c->lits[it->first + i - 1], c->lits[it->first + i]);
        if (n.n || it->kind != K_LITERALS || it->n > 64 || dup) {
            fail(c, MOE_ENOTSUP, "'uniqueItems' is supported for arrays whose items are an enum or const of up to "
                 "64 distinct values, without prefixItems");
            return -1;
        }
        if (n.min_items > it->n) {
            fail(c, MOE_EINVAL, "minItems %u with uniqueItems: the items have %u values", n.min_items, it->n);
            return -1;
        }
        n.unique = true;
    }
    return new_node(c, n);
}

/* A pattern's automaton (whole: matching the whole text, else anywhere unless anchored; count: with
 * the lengths of its matches); its start state, 0 on an error. */
static uint32_t pattern_dfa(struct cc *c, const char *pat, size_t len, bool whole, bool count)
{
    char err[256];
    uint32_t start = json_regex_compile(pat, len, whole, count, &c->dfa, err, sizeof(err));
    if (!start) {
        fail(c, MOE_EINVAL, "%s", err);
        return 0;
    }
    if (c->dfa.n_states > JSON_DFA_MAX_ALL) {
        fail(c, MOE_ERANGE, "the schema's patterns need more than %d automaton states in all", JSON_DFA_MAX_ALL);
        return 0;
    }
    return start;
}

/* The formats followed, as regular expressions matching the whole string and a most characters: each a
 * subset of what its RFC allows (RFC 3339 dates and times with upper-case T and Z, years 1000-9999, no
 * February 29th and no leap second; ISO 8601 durations without fractions; lower-case UUIDs; RFC 1123
 * host names, up to 253 characters as DNS carries them; e-mail addresses of the common form, RFC 5321's
 * dot-string local part of up to 64 characters (no dot first, last or twice in a row), up to 254 in all;
 * URIs of RFC 3986's characters, percent signs unchecked). */
#define RX_DATE "[1-9][0-9]{3}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|" \
                "02-(0[1-9]|1[0-9]|2[0-8]))"
#define RX_TIME "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
#define RX_DUR_T "T([0-9]+H([0-9]+M)?([0-9]+S)?|[0-9]+M([0-9]+S)?|[0-9]+S)"
#define RX_LABEL "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#define RX_ATOM "[A-Za-z0-9_%+-]+"
static const struct {
    const char *name, *rx;
    uint32_t max_len;          /* characters at most (0: as the expression allows) */
} formats[] = {
    { "date-time", RX_DATE "T" RX_TIME, 0 },
    { "date", RX_DATE, 0 },
    { "time", RX_TIME, 0 },
    { "duration", "P(" RX_DUR_T "|[0-9]+W|[0-9]+D(" RX_DUR_T ")?|[0-9]+M([0-9]+D)?(" RX_DUR_T ")?|"
                  "[0-9]+Y([0-9]+M)?([0-9]+D)?(" RX_DUR_T ")?)", 0 },
    { "uuid", "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", 0 },
    { "ipv4", "((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])", 0 },
    { "hostname", RX_LABEL "(\\." RX_LABEL ")*", 253 },
    { "email", "(?=[A-Za-z0-9._%+-]{1,64}@)" RX_ATOM "(\\." RX_ATOM ")*@" RX_LABEL "(\\." RX_LABEL ")+", 254 },
    { "uri", "[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9._~:/?#@!$&'()*+,;=%\\[\\]-]*", 0 },
};

static const char *const string_words[] = { "minLength", "maxLength", "pattern", "format" };

static int string_node(struct cc *c, const json_t *o)
{
    struct json_node n = { .kind = K_STRING, .max_items = UINT32_MAX };
    const json_t *pat = json_object_get(o, "pattern"), *fmt = json_object_get(o, "format");
    if (!has_any(o, string_words, MOE_ARRAY_LEN(string_words))) return N_ANY_STRING;
    if (pat && !json_is_string(pat)) {
        fail(c, MOE_EINVAL, "'pattern' must be a string (a regular expression)");
        return -1;
    }
    if (pat && fmt) {
        fail(c, MOE_ENOTSUP, "'pattern' and 'format' together are not supported (write the format into the pattern)");
        return -1;
    }
    if (!count_of(c, o, "minLength", &n.min_items) || !count_of(c, o, "maxLength", &n.max_items)) return -1;
    size_t f = 0;
    while (fmt && f < MOE_ARRAY_LEN(formats) && (!json_is_string(fmt) || strcmp(json_string_value(fmt), formats[f].name)))
        f++;
    if (fmt && f == MOE_ARRAY_LEN(formats)) {
        fail(c, MOE_ENOTSUP, "format '%.32s' is not supported (date-time, date, time, duration, uuid, ipv4, "
             "hostname, email or uri)", json_is_string(fmt) ? json_string_value(fmt) : "?");
        return -1;
    }
    if (fmt && formats[f].max_len && n.max_items > formats[f].max_len) { /* the format's own bound */
        if (n.min_items > formats[f].max_len) {
            fail(c, MOE_EINVAL, "minLength %u is above %u, the most characters of format '%s': no string can be "
                 "written", n.min_items, formats[f].max_len, formats[f].name);
            return -1;
        }
        n.max_items = formats[f].max_len;
    }
    if (n.min_items > n.max_items) {
        fail(c, MOE_EINVAL, "minLength %u is above maxLength %u: no string can be written", n.min_items, n.max_items);
        return -1;
    }
    bool lengths = n.min_items > 0 || n.max_items != UINT32_MAX;
    if ((pat || fmt) && n.min_items >= JSON_DFA_LENS) {
        fail(c, MOE_ENOTSUP, "minLength of %d or more beside '%s' is not supported (give the length in the "
             "pattern, or leave it out)", JSON_DFA_LENS, pat ? "pattern" : "format");
        return -1;
    }
    if (fmt && !(n.pattern = pattern_dfa(c, formats[f].rx, strlen(formats[f].rx), true, lengths))) return -1;
    if (pat && !(n.pattern = pattern_dfa(c, json_string_value(pat), json_string_length(pat), false, lengths)))
        return -1;
    if (n.pattern && lengths) { /* some match of the pattern within the lengths */
        const struct json_dfa_state *d = &c->dfa.states[n.pattern];
        bool some = d->far != UINT32_MAX && d->far <= n.max_items; /* UINT32_MAX: no such length */
        for (uint32_t k = n.min_items; k < JSON_DFA_LENS && k <= n.max_items && !some; k++)
            some = d->lens[k / 64] >> (k % 64) & 1;
        if (!some && n.max_items == UINT32_MAX) {
            fail(c, MOE_EINVAL, "no string of %u or more characters matches the pattern", n.min_items);
            return -1;
        }
        if (!some) {
            fail(c, MOE_EINVAL, "no string of %u to %u characters matches the pattern", n.min_items, n.max_items);
            return -1;
        }
    }
    n.bounded = true;
    return new_node(c, n);
}

#define INT_TOP 999999999999999999LL /* a bounded integer has at most 18 digits */

/* The least integer above (excl) or at least v, or the greatest below or at most v (up), held to
 * one past INT_TOP. */
static int64_t int_bound(const json_t *v, bool excl, bool up)
{
    const int64_t lim = INT_TOP + 1;
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        x = x < -lim ? -lim : x > lim ? lim : x;
        return excl ? (up ? x - 1 : x + 1) : x;
    }
    double d = json_real_value(v);
    d = d < (double)-lim ? (double)-lim : d > (double)lim ? (double)lim : d;
    double r = up ? floor(d) : ceil(d);
    int64_t k = (int64_t)r; /* stepped past an excluded bound as an integer: above 2^53 a double's 1 is lost */
    if (excl && r == d) k += up ? -1 : 1;
    return k;
}

/* One end of a range: the inclusive and exclusive keywords (draft 4's boolean form too), the tighter
 * winning; false on a malformed value. */
static long double num_exact(const json_t *v)
{
    return json_is_integer(v) ? (long double)json_integer_value(v) : (long double)json_real_value(v);
}

static bool range_end(struct cc *c, const json_t *o, bool upper, const json_t **at, bool *excl)
{
    const char *inc = upper ? "maximum" : "minimum", *exc = upper ? "exclusiveMaximum" : "exclusiveMinimum";
    const json_t *vi = json_object_get(o, inc), *ve = json_object_get(o, exc);
    *at = NULL;
    *excl = false;
    if ((vi && !json_is_number(vi)) || (ve && !json_is_number(ve) && !json_is_boolean(ve))) {
        fail(c, MOE_EINVAL, "'%s' must be a number%s", vi && !json_is_number(vi) ? inc : exc,
             vi && !json_is_number(vi) ? "" : " (or, beside the other, a boolean)");
        return false;
    }
    if (ve && json_is_boolean(ve)) { /* draft 4: whether the other keyword's bound is excluded */
        *at = vi;
        *excl = vi && json_is_true(ve);
        return true;
    }
    *at = vi;
    if (ve) {
        /* the tighter one, compared exactly: a long double (x86-64, AArch64) holds every int64 and every
         * double, where two integers above 2^53 can have one double */
        long double e = num_exact(ve), i = vi ? num_exact(vi) : 0;
        if (!vi || (upper ? e <= i : e >= i)) {
            *at = ve;
            *excl = true;
        }
    }
    return true;
}

static const char *const number_words[] = { "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                                            "multipleOf" };

/* "'minimum' 2" for messages: bound v, given by keyword inc or exc (excl: excluded, draft 4's form). */
static void bound_text(const json_t *o, const json_t *v, bool excl, const char *inc, const char *exc, char *out,
                       size_t len)
{
    char *t = literal_text(v);
    bool by_inc = v == json_object_get(o, inc);
    snprintf(out, len, "'%s' %s%s%s%s", by_inc ? inc : exc, t ? t : "", by_inc && excl ? " ('" : "",
             by_inc && excl ? exc : "", by_inc && excl ? "' true)" : "");
    free(t);
}

/* Refuse a range that no number written meets (why: 'a' it lies above every one, 'b' below, 'c' the
 * part of it that integers written reach holds no multiple, 'e' it is empty, 'g' it falls between two
 * of them), naming its keywords and what to change. */
static void range_refused(struct cc *c, const json_t *o, const struct json_range *r, const json_t *lo,
                          const json_t *hi, const json_t *mult, bool integer, char why)
{
    char l[128] = "", h[128] = "", both[260], m[96] = "";
    if (lo) bound_text(o, lo, r->lo_excl, "minimum", "exclusiveMinimum", l, sizeof(l));
    if (hi) bound_text(o, hi, r->hi_excl, "maximum", "exclusiveMaximum", h, sizeof(h));
    snprintf(both, sizeof(both), "%s%s%s", l, lo && hi ? " and " : "", h);
    if (mult) {
        char *t = literal_text(mult);
        snprintf(m, sizeof(m), " that is a multiple of 'multipleOf' %s", t ? t : "");
        free(t);
    }
    const char *what = integer ? "integer" : "number";
    const char *form = integer ? "at most 18 digits" : "at most 32 characters, sign and point included, without an "
                                                       "exponent";
    if (why == 'a')
        fail(c, MOE_EINVAL, "no %s the output can write (%s: below %s) meets %s: lower it", what, form,
             integer ? "10^18" : "10^32", l);
    else if (why == 'b')
        fail(c, MOE_EINVAL, "no %s the output can write (%s: above %s) meets %s: raise it", what, form,
             integer ? "-10^18" : "-10^31", h);
    else if (why == 'c')
        fail(c, MOE_EINVAL, "no %s the output can write (%s: from -10^18 to 10^18, both excluded)%s meets %s: "
             "move the range toward 0 or change multipleOf", what, form, m, both);
    else if (why == 'e')
        fail(c, MOE_EINVAL, "no %s%s meets %s: widen the range%s", what, m, both, mult ? " or change multipleOf" : "");
    else
        fail(c, MOE_EINVAL, "no number the output can write (%s, so at most 30 digits after the point) meets %s: "
             "widen the range", form, both);
}

static int number_node(struct cc *c, const json_t *o, bool integer)
{
    if (!has_any(o, number_words, MOE_ARRAY_LEN(number_words)))
        return integer ? shared(c, &c->integer, (struct json_node){ .kind = K_INTEGER }) : N_ANY_NUMBER;
    const json_t *lo, *hi, *mult = json_object_get(o, "multipleOf");
    bool lo_x, hi_x;
    if (!range_end(c, o, false, &lo, &lo_x) || !range_end(c, o, true, &hi, &hi_x)) return -1;
    struct json_range r = { .lo = lo ? json_number_value(lo) : -INFINITY, .hi = hi ? json_number_value(hi) : INFINITY,
                            .lo_excl = lo_x, .hi_excl = hi_x, .ilo = -INT_TOP, .ihi = INT_TOP, .mult = 1 };
    if (mult) {
        if (!integer) {
            fail(c, MOE_ENOTSUP, "'multipleOf' is supported for integers only (give the type integer)");
            return -1;
        }
        double m = json_is_number(mult) ? json_number_value(mult) : 0;
        if (m <= 0 || m != floor(m) || m > (double)INT_TOP) {
            fail(c, MOE_EINVAL, "'multipleOf' of an integer must be a whole number from 1 to %lld", INT_TOP);
            return -1;
        }
        r.mult = (int64_t)m;
    }
    if (integer) {
        if (lo) r.ilo = int_bound(lo, lo_x, false);
        if (hi) r.ihi = int_bound(hi, hi_x, true);
        bool capped = !lo || !hi || r.ilo < -INT_TOP || r.ihi > INT_TOP; /* an end is the 18 digits' */
        char why = r.ilo > INT_TOP ? 'a' : r.ihi < -INT_TOP ? 'b' : capped ? 'c' : 'e';
        if (r.ilo < -INT_TOP) r.ilo = -INT_TOP;
        if (r.ihi > INT_TOP) r.ihi = INT_TOP;
        int64_t q = r.ihi / r.mult - (r.ihi % r.mult < 0);
        if (r.ilo > r.ihi || q * r.mult < r.ilo) {
            range_refused(c, o, &r, lo, hi, mult, true, why);
            return -1;
        }
        return new_node(c, (struct json_node){ .kind = K_INTEGER, .bounded = true, .range = r });
    }
    char b[JSON_NUM_BOUNDS];
    json_num_bounds(&r, b);
    if (!json_num_viable(b, "", 0)) { /* in doubles: an empty range, or one beyond or between the numbers written */
        double l = lo_x ? nextafter(r.lo, INFINITY) : r.lo, h = hi_x ? nextafter(r.hi, -INFINITY) : r.hi;
        range_refused(c, o, &r, lo, hi, NULL, false, l > h ? 'e' : l > 1e32 ? 'a' : h < -1e31 ? 'b' : 'g');
        return -1;
    }
    struct json_str at;
    if (!pool_add(c, b, sizeof(b), &at)) {
        moe_errorf(MOE_ENOMEM, "out of memory compiling a JSON schema");
        return -1;
    }
    r.dec = at.off;
    return new_node(c, (struct json_node){ .kind = K_NUMBER, .bounded = true, .range = r });
}

static const char *const object_words[] = { "properties", "required", "additionalProperties", "minProperties",
                                            "maxProperties" };
static const char *const array_words[] = { "items", "prefixItems", "minItems", "maxItems", "uniqueItems" };

/* The keywords of each type, which tell the type of a schema without one. */
static const struct word_group {
    const char *type;
    const char *const *words;
    size_t n;
    const char *list; /* for messages */
} groups[] = {
    { "object", object_words, MOE_ARRAY_LEN(object_words),
      "properties, required, additionalProperties, minProperties, maxProperties" },
    { "array", array_words, MOE_ARRAY_LEN(array_words), "items, prefixItems, minItems, maxItems, uniqueItems" },
    { "string", string_words, MOE_ARRAY_LEN(string_words), "minLength, maxLength, pattern, format" },
    { "number", number_words, MOE_ARRAY_LEN(number_words),
      "minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf" },
};

static int typed_node(struct cc *c, const json_t *o, const char *type, int depth)
{
    if (!strcmp(type, "object")) return object_node(c, o, depth);
    if (!strcmp(type, "array")) return array_node(c, o, depth);
    if (!strcmp(type, "string")) return string_node(c, o);
    if (!strcmp(type, "number")) return number_node(c, o, false);
    if (!strcmp(type, "integer")) return number_node(c, o, true);
    if (!strcmp(type, "boolean"))
        return shared(c, &c->boolean, (struct json_node){ .kind = K_LITERALS, .n = 2, .first = 3 });
    if (!strcmp(type, "null"))
        return shared(c, &c->null, (struct json_node){ .kind = K_LITERALS, .n = 1, .first = 1 });
    fail(c, MOE_EINVAL, "unknown type '%.32s' (object, array, string, number, integer, boolean or null)", type);
    return -1;
}

/* A JSON pointer in a URI fragment ("#", "#/$defs/name", "#/$defs/a%20b", ...) into the document: its
 * %XX escapes decoded, then each reference token's ~1 and ~0 (RFC 6901, sections 4 and 6).  NULL when
 * it names nothing (or out of memory: *oom). */
static const json_t *resolve(struct cc *c, const char *ref, bool *oom)
{
    *oom = false;
    if (ref[0] != '#') return NULL;
    size_t len = strlen(ref + 1), n = 0;
    char *ptr = malloc(len + 1), *seg = malloc(len + 1);
    if (!ptr || !seg) {
        free(ptr);
        free(seg);
        *oom = true;
        return NULL;
    }
    for (const char *q = ref + 1; *q; q++) {
        int hi = *q == '%' ? json_hex_digit(q[1]) : -1, lo = hi >= 0 ? json_hex_digit(q[2]) : -1;
        ptr[n++] = lo >= 0 ? (char)(hi * 16 + lo) : *q;
        q += lo >= 0 ? 2 : 0;
    }
    ptr[n] = 0;
    const json_t *at = c->doc;
    const char *p = ptr, *end = ptr + n;
    while (p < end && *p == '/' && at) {
        size_t k = 0;
        for (p++; p < end && *p != '/'; p++) {
            char ch = *p;
            if (ch == '~' && (p[1] == '0' || p[1] == '1')) ch = *++p == '0' ? '~' : '/';
            seg[k++] = ch;
        }
        seg[k] = 0;
        if (strlen(seg) != k) { /* %00: no key of a schema holds it */
            at = NULL;
        } else if (json_is_object(at)) {
            at = json_object_get(at, seg);
        } else if (json_is_array(at)) {
            char *e;
            long i = strtol(seg, &e, 10);
            at = *e || !k ? NULL : json_array_get(at, (size_t)i);
        } else {
            at = NULL;
        }
    }
    if (p < end) at = NULL;
    free(ptr);
    free(seg);
    return at;
}

static int ref_node(struct cc *c, const char *ref, int depth)
{
    bool oom;
    const json_t *t = resolve(c, ref, &oom);
    if (oom) {
        moe_errorf(MOE_ENOMEM, "out of memory compiling a JSON schema");
        return -1;
    }
    if (!t) {
        fail(c, MOE_EINVAL, "'$ref' '%.64s' names nothing in this schema (only references inside it, such as "
             "'#/$defs/Name', are followed)", ref);
        return -1;
    }
    for (int i = 0; i < c->n_refs; i++)
        if (c->refs[i].target == t) return c->refs[i].node;
    int slot = new_node(c, (struct json_node){ .kind = PENDING });
    size_t cap = (size_t)c->cap_refs;
    if (slot < 0) return -1;
    if (!moe_grow((void **)&c->refs, &cap, (size_t)c->n_refs + 1, sizeof(*c->refs), 16)) {
        moe_errorf(MOE_ENOMEM, "out of memory compiling a JSON schema");
        return -1;
    }
    c->cap_refs = (int)cap;
    c->refs[c->n_refs++] = (struct ref){ t, slot };
    char save[sizeof(c->path)];
    memcpy(save, c->path, sizeof(save));
    snprintf(c->path, sizeof(c->path), "%s", ref + 1);
    int r = compile(c, t, depth + 1);
    if (r < 0) return -1;
    memcpy(c->path, save, sizeof(save));
    c->nodes[slot] = c->nodes[r];
    return slot;
}

static int compile(struct cc *c, const json_t *v, int depth)
{
    if (json_is_true(v)) return N_ANY;
    if (json_is_false(v)) {
        fail(c, MOE_EINVAL, "the schema false allows no value");
        return -1;
    }
    if (!json_is_object(v)) {
        fail(c, MOE_EINVAL, "a schema must be an object (or true)");
        return -1;
    }
    if (depth > MAX_NEST) {
        fail(c, MOE_ERANGE, "schemas nested more than %d deep", MAX_NEST);
        return -1;
    }
    const char *k;
    json_t *x;
    int constraints = 0;
    json_object_foreach((json_t *)v, k, x) {
        if (in_list(k, annotations, MOE_ARRAY_LEN(annotations))) continue;
        if (!in_list(k, keywords, MOE_ARRAY_LEN(keywords))) {
            fail(c, MOE_ENOTSUP, "'%.64s' is not supported (supported: " SUPPORTED ")", k);
            return -1;
        }
        constraints++;
    }
    const json_t *ref = json_object_get(v, "$ref");
    if (ref) {
        if (!json_is_string(ref)) {
            fail(c, MOE_EINVAL, "'$ref' must be a string");
            return -1;
        }
        if (constraints > 1) {
            fail(c, MOE_ENOTSUP, "'$ref' with other keywords beside it is not supported");
            return -1;
        }
        return ref_node(c, json_string_value(ref), depth);
    }
    const json_t *all = json_object_get(v, "allOf");
    if (all) { /* of one schema: pydantic's way to put a description beside a reference */
        if (!json_is_array(all) || json_array_size(all) == 0) {
            fail(c, MOE_EINVAL, "'allOf' must be an array of schemas");
            return -1;
        }
        if (json_array_size(all) > 1 || constraints > 1) {
            fail(c, MOE_ENOTSUP, "'allOf' is supported only of one schema, with no other keywords beside it (write "
                 "the schemas as one)");
            return -1;
        }
        return compile_at(c, json_array_get(all, 0), "allOf", "0", depth);
    }
    const json_t *any = json_object_get(v, "anyOf"), *one = json_object_get(v, "oneOf");
    if (any || one) {
        const char *what = any ? "anyOf" : "oneOf";
        const json_t *list = any ? any : one;
        if (constraints > 1) {
            fail(c, MOE_ENOTSUP, "'%s' with other keywords beside it is not supported", what);
            return -1;
        }
        int b[64], n = compile_list(c, list, what, depth, b);
        return n < 0 ? -1 : make_union(c, b, n, what);
    }
    const json_t *type = json_object_get(v, "type");
    const char *types[8];
    int nt = 0;
    if (json_is_string(type)) {
        types[nt++] = json_string_value(type);
    } else if (json_is_array(type) && json_array_size(type) > 0 && json_array_size(type) <= 8) {
        size_t i;
        json_t *tv;
        json_array_foreach(type, i, tv) {
            if (!json_is_string(tv)) break;
            types[nt++] = json_string_value(tv);
        }
        if ((size_t)nt != json_array_size(type)) nt = -1;
    } else if (type) {
        nt = -1;
    }
    if (nt < 0) {
        fail(c, MOE_EINVAL, "'type' must be a type name or an array of 1 to 8 of them");
        return -1;
    }
    const json_t *en = json_object_get(v, "enum"), *cn = json_object_get(v, "const");
    if (en || cn) {
        if (en && cn) {
            fail(c, MOE_ENOTSUP, "'enum' and 'const' together are not supported");
            return -1;
        }
        if (en && !json_is_array(en)) {
            fail(c, MOE_EINVAL, "'enum' must be an array of values");
            return -1;
        }
        if (has_any(v, string_words, MOE_ARRAY_LEN(string_words)) ||
            has_any(v, number_words, MOE_ARRAY_LEN(number_words))) {
            fail(c, MOE_ENOTSUP, "length or range keywords beside '%s' are not supported (list only the values "
                 "that meet them)", en ? "enum" : "const");
            return -1;
        }
        size_t n = en ? json_array_size(en) : 1;
        json_t *const *vals = en ? NULL : (json_t *const *)&cn;
        json_t *tmp[MOE_JSON_MAX_ENUM];
        if (en) {
            for (size_t i = 0; i < n && i < MOE_JSON_MAX_ENUM; i++) tmp[i] = json_array_get(en, i);
            vals = tmp;
        }
        for (size_t i = 0; i < n && i < MOE_JSON_MAX_ENUM && nt > 0; i++) { /* each value of the type */
            const char *tn = type_name(vals[i]);
            bool ok = false;
            /* a number with no fraction is an integer (1.0 too, as JSON Schema reads it) */
            bool whole = json_is_integer(vals[i]) ||
                         (json_is_real(vals[i]) && json_real_value(vals[i]) == floor(json_real_value(vals[i])));
            for (int t = 0; t < nt; t++)
                ok |= !strcmp(types[t], tn) || (whole && (!strcmp(types[t], "number") || !strcmp(types[t], "integer")));
            if (!ok) {
                fail(c, MOE_EINVAL, "enum value %zu is of type %s, which 'type' does not allow", i, tn);
                return -1;
            }
        }
        return literals(c, vals, n);
    }
    const struct word_group *used = NULL;
    for (size_t g = 0; g < MOE_ARRAY_LEN(groups); g++) {
        const struct word_group *w = &groups[g];
        if (!has_any(v, w->words, w->n)) continue;
        if (nt == 0 && used) { /* no type: what its keywords describe, else any value */
            fail(c, MOE_ENOTSUP, "%s and %s keywords without a 'type' are not supported", used->type, w->type);
            return -1;
        }
        used = w;
        bool typed = false;
        for (int t = 0; t < nt; t++)
            typed |= !strcmp(types[t], w->type) || (w->words == number_words && !strcmp(types[t], "integer"));
        if (nt > 0 && !typed) {
            fail(c, MOE_EINVAL, "%s keywords (%s) with a 'type' that is not %s", w->type, w->list, w->type);
            return -1;
        }
    }
    if (nt == 0) {
        if (!used) return N_ANY;
        types[nt++] = used->type;
    }
    int b[8];
    for (int t = 0; t < nt; t++)
        if ((b[t] = typed_node(c, v, types[t], depth)) < 0) return -1;
    return make_union(c, b, nt, "type");
}

/* Whether one of the texts s[0..n) begins another (s[*x] the beginning of s[*y]): after it the
 * output could not tell whether it has ended. */
static bool begins_another(const char *pool, const struct json_str *s, unsigned n, unsigned *x, unsigned *y)
{
    /* sorted: a text and a text it begins have only texts it begins between them */
    for (*x = 0, *y = 1; *y < n; (*x)++, (*y)++)
        if (s[*x].len < s[*y].len && !memcmp(pool + s[*x].off, pool + s[*y].off, s[*x].len)) return true;
    return false;
}

/* The value must be able to end: a bare number, or a literal that another extends, at the root
 * would have no character to end it. */
static enum moe_status check_root(struct cc *c, int root)
{
    const struct json_node *n = &c->nodes[root];
    int m = n->kind == K_UNION ? n->n : 1;
    for (int i = 0; i < m; i++) {
        const struct json_node *b = n->kind == K_UNION ? &c->nodes[c->branch[n->first + i]] : n;
        if (b->kind == K_ANY || b->kind == K_NUMBER || b->kind == K_INTEGER)
            return fail(c, MOE_ENOTSUP, "the root allows a bare number, whose end the output could not mark: "
                        "give the root a type of object, array, string, boolean or null (or an enum)");
        unsigned x, y;
        if (b->kind == K_LITERALS && begins_another(c->pool, c->lits + b->first, b->n, &x, &y)) {
            struct json_str sx = c->lits[b->first + x], sy = c->lits[b->first + y];
            return fail(c, MOE_ENOTSUP, "root enum value %.*s begins another (%.*s), so the output could not "
                        "end after it", (int)sx.len, c->pool + sx.off, (int)sy.len, c->pool + sy.off);
        }
    }
    return MOE_OK;
}

static void cc_free(struct cc *c)
{
    free(c->nodes);
    free(c->props);
    free(c->lits);
    free(c->lit_orig);
    free(c->branch);
    free(c->pool);
    free(c->refs);
    free(c->dfa.states);
    free(c->dfa.ranges);
}

/* c with the "any value" grammar's nodes, literals and pool, as every schema begins. */
static bool cc_begin(struct cc *c)
{
    const struct moe_json_schema *any = &moe_json_any_object;
    struct json_str skip;
    if (!moe_grow((void **)&c->lits, &c->cap_lits, JSON_BUILTIN_LITS, sizeof(*c->lits), 16) ||
        !pool_add(c, any->pool, JSON_BUILTIN_POOL, &skip)) {
        moe_errorf(MOE_ENOMEM, "out of memory compiling a JSON schema");
        return false;
    }
    memcpy(c->lits, any->lits, sizeof(*c->lits) * JSON_BUILTIN_LITS);
    c->n_lits = JSON_BUILTIN_LITS;
    if (!moe_grow((void **)&c->lit_orig, &c->cap_orig, JSON_BUILTIN_LITS, sizeof(*c->lit_orig), 16)) {
        moe_errorf(MOE_ENOMEM, "out of memory compiling a JSON schema");
        return false;
    }
    memcpy(c->lit_orig, any->lit_orig, sizeof(*c->lit_orig) * JSON_BUILTIN_LITS);
    for (int i = 0; i < N_BUILTIN; i++)
        if (new_node(c, any->nodes[i]) < 0) return false;
    return true;
}

/* The schema of c's nodes, rooted at root (c's arrays move into it). */
static enum moe_status cc_finish(struct cc *c, int root, struct moe_json_schema **out)
{
    for (int i = 0; i < c->n_nodes; i++)
        if (c->nodes[i].kind == PENDING)
            return moe_errorf(MOE_EINVAL, "JSON schema: a '$ref' refers to itself without a schema in between");
    enum moe_status st = check_root(c, root);
    if (st != MOE_OK) return st;
    struct moe_json_schema *sc = malloc(sizeof(*sc));
    if (!sc) return moe_errorf(MOE_ENOMEM, "out of memory compiling a JSON schema");
    atomic_init(&sc->refs, 1);
    sc->nodes = c->nodes;
    sc->props = c->props;
    sc->lits = c->lits;
    sc->lit_orig = c->lit_orig;
    sc->branch = c->branch;
    sc->pool = c->pool;
    sc->dfa = c->dfa.states;
    sc->dfa_ranges = c->dfa.ranges;
    sc->grammar = NULL;
    sc->tags = NULL;
    sc->n_nodes = c->n_nodes;
    sc->root = (uint16_t)root;
    sc->compact = 0;
    sc->raw = false;
    c->nodes = NULL;
    c->props = NULL;
    c->lits = NULL;
    c->lit_orig = NULL;
    c->branch = NULL;
    c->pool = NULL;
    c->dfa.states = NULL;
    c->dfa.ranges = NULL;
    *out = sc;
    return MOE_OK;
}

enum moe_status moe_json_number_refused(const struct json_error_t *e, const char *what)
{
    if (json_error_code(e) != json_error_numeric_overflow)
        return MOE_OK;
    /* an integer past 64 bits has a double that holds it; a number past a double has nothing */
    bool integer = strstr(e->text, "integer") != NULL;
    return moe_errorf(MOE_ERANGE, "%s holds a number out of range at line %d column %d (%s): it is valid JSON, "
                      "but integers are read as 64-bit, [-9223372036854775808, 9223372036854775807], and other "
                      "numbers as doubles, up to about 1.8e308; %s", what, e->line, e->column, e->text,
                      integer ? "write a larger integer with an exponent (1e19)"
                              : "a number past that cannot be held: give one within it");
}

enum moe_status moe_json_schema_parse(const char *text, size_t len, struct moe_json_schema **out)
{
    *out = NULL;
    if (len > MOE_JSON_MAX_SCHEMA)
        return moe_errorf(MOE_ERANGE, "JSON schema of %zu bytes; at most %d are accepted", len, MOE_JSON_MAX_SCHEMA);
    json_error_t jerr;
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!doc && moe_json_number_refused(&jerr, "JSON schema") != MOE_OK)
        return moe_last_status();
    if (!doc)
        return moe_errorf(MOE_EFORMAT, "JSON schema is not valid JSON: %s at line %d column %d",
                          moe_json_error_text(&jerr),
                          jerr.line, jerr.column);
    struct cc c = { .doc = doc };
    enum moe_status st = MOE_ENOMEM;
    if (cc_begin(&c)) {
        int root = compile(&c, doc, 0);
        st = root < 0 ? moe_last_status() : cc_finish(&c, root, out);
    }
    cc_free(&c);
    json_decref(doc);
    return st;
}

enum moe_status moe_json_schema_choice(const char *const *texts, const size_t *lens, int n,
                                       struct moe_json_schema **out)
{
    *out = NULL;
    if (n < 1 || n > MOE_JSON_MAX_ENUM)
        return moe_errorf(MOE_EINVAL, "a choice of %d texts: give 1 to %d", n, MOE_JSON_MAX_ENUM);
    struct cc c = { 0 };
    enum moe_status st = MOE_ENOMEM;
    if (!cc_begin(&c) || !moe_grow((void **)&c.lits, &c.cap_lits, c.n_lits + (size_t)n, sizeof(*c.lits), 16))
        goto out;
    size_t first = c.n_lits;
    for (int i = 0; i < n; i++) {
        if (!lens[i]) {
            st = moe_errorf(MOE_EINVAL, "choice %d is empty", i);
            goto out;
        }
        if (!pool_add(&c, texts[i], lens[i], &c.lits[c.n_lits])) {
            st = moe_errorf(MOE_ENOMEM, "out of memory for the choices");
            goto out;
        }
        c.n_lits++;
    }
    int root = lits_node(&c, first, (size_t)n);
    unsigned x, y;
    if (root >= 0 && begins_another(c.pool, c.lits + first, (unsigned)n, &x, &y)) {
        struct json_str sx = c.lits[first + x], sy = c.lits[first + y];
        st = moe_errorf(MOE_EINVAL, "choice '%.*s' begins another ('%.*s'): the output could not end after it",
                        (int)(sx.len < 64 ? sx.len : 64), c.pool + sx.off, (int)(sy.len < 64 ? sy.len : 64),
                        c.pool + sy.off);
        goto out;
    }
    st = root < 0 ? moe_last_status() : cc_finish(&c, root, out);
    if (st == MOE_OK) (*out)->raw = true;
out:
    cc_free(&c);
    return st;
}

enum moe_status moe_json_schema_regex(const char *pat, size_t len, struct moe_json_schema **out)
{
    *out = NULL;
    if (!len) /* a value left empty, as a choice text or a grammar is: refused, not read as "nothing" */
        return moe_errorf(MOE_EINVAL, "the pattern is empty: give one ('()' asks for an empty output)");
    struct cc c = { 0 };
    enum moe_status st = MOE_ENOMEM;
    char err[256];
    if (cc_begin(&c)) {
        uint32_t start = json_regex_compile(pat, len, true, false, &c.dfa, err, sizeof(err));
        int root = start ? new_node(&c, (struct json_node){ .kind = K_TEXT, .pattern = start }) : -1;
        if (!start) st = moe_errorf(MOE_EINVAL, "%s", err);
        else st = root < 0 ? moe_last_status() : cc_finish(&c, root, out);
        if (st == MOE_OK) (*out)->raw = true;
    }
    cc_free(&c);
    return st;
}

/* A schema of raw text whose recognizer lies outside the nodes (a grammar, a structural tag): its
 * root a text node without a pattern. */
static enum moe_status raw_text_schema(struct moe_json_schema **out)
{
    struct cc c = { 0 };
    enum moe_status st = MOE_ENOMEM;
    if (cc_begin(&c)) {
        int root = new_node(&c, (struct json_node){ .kind = K_TEXT });
        st = root < 0 ? moe_last_status() : cc_finish(&c, root, out);
    }
    cc_free(&c);
    if (st == MOE_OK) (*out)->raw = true;
    return st;
}

enum moe_status moe_json_schema_grammar(const char *text, size_t len, struct moe_json_schema **out)
{
    *out = NULL;
    if (len > MOE_JSON_MAX_SCHEMA)
        return moe_errorf(MOE_ERANGE, "the grammar is %zu bytes; at most %d", len, MOE_JSON_MAX_SCHEMA);
    struct moe_grammar *g;
    enum moe_status st = moe_grammar_compile(text, len, &g);
    if (st != MOE_OK) return st;
    if ((st = raw_text_schema(out)) != MOE_OK) {
        moe_grammar_free(g);
        return st;
    }
    (*out)->grammar = g;
    return MOE_OK;
}

static void tags_free(struct json_tags *tg)
{
    if (!tg) return;
    for (int i = 0; i < tg->n; i++) {
        free(tg->begin[i]);
        free(tg->end[i]);
        moe_json_schema_unref(tg->sc[i]);
    }
    for (int i = 0; i < tg->n_trig; i++) free(tg->trig[i]);
    free(tg);
}

/* A string field of a structural tag's object: copied, at most MOE_JSON_MAX_TAG_BYTES. */
static enum moe_status tag_text(json_t *o, const char *key, const char *where, bool empty_ok, char **out,
                                uint16_t *len)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        return moe_errorf(MOE_EINVAL, "structural tag: %s needs a string '%s'", where, key);
    size_t n = json_string_length(v);
    if ((!n && !empty_ok) || n > MOE_JSON_MAX_TAG_BYTES)
        return moe_errorf(MOE_EINVAL, "structural tag: %s's '%s' has %zu bytes: give %d to %d", where, key, n,
                          empty_ok ? 0 : 1, MOE_JSON_MAX_TAG_BYTES);
    if (!(*out = malloc(n + 1))) return moe_errorf(MOE_ENOMEM, "out of memory compiling a structural tag");
    memcpy(*out, json_string_value(v), n + 1);
    *len = (uint16_t)n;
    return MOE_OK;
}

static enum moe_status tags_compile(json_t *doc, struct json_tags *tg)
{
    json_t *type = json_object_get(doc, "type"), *structs = json_object_get(doc, "structures"),
           *trigs = json_object_get(doc, "triggers");
    if (!json_is_object(doc))
        return moe_errorf(MOE_EINVAL, "structural tag: must be an object {\"structures\": [...], \"triggers\": [...]}");
    if (type && (!json_is_string(type) || strcmp(json_string_value(type), "structural_tag")))
        return moe_errorf(MOE_EINVAL, "structural tag: 'type' must be \"structural_tag\"");
    if (json_object_get(doc, "format"))
        return moe_errorf(MOE_ENOTSUP, "structural tag: the 'format' form is not supported: give 'structures' "
                          "(begin, schema, end) and 'triggers'");
    size_t ns = json_array_size(structs), nt = json_array_size(trigs);
    if (!json_is_array(structs) || ns < 1 || ns > MOE_JSON_MAX_TAGS)
        return moe_errorf(MOE_EINVAL, "structural tag: 'structures' must be an array of 1 to %d {begin, schema, end}",
                          MOE_JSON_MAX_TAGS);
    if (!json_is_array(trigs) || nt < 1 || nt > MOE_JSON_MAX_TRIGGERS)
        return moe_errorf(MOE_EINVAL, "structural tag: 'triggers' must be an array of 1 to %d texts",
                          MOE_JSON_MAX_TRIGGERS);
    enum moe_status st;
    char where[64];
    for (size_t i = 0; i < nt; i++) {
        json_t *one = json_pack("{s:O}", "t", json_array_get(trigs, i));
        snprintf(where, sizeof(where), "triggers[%zu]", i);
        st = one ? tag_text(one, "t", where, false, &tg->trig[i], &tg->tlen[i]) : MOE_ENOMEM;
        json_decref(one);
        if (st) return st == MOE_ENOMEM ? st : moe_errorf(MOE_EINVAL, "structural tag: 'triggers[%zu]' must be "
                                                          "a non-empty text of at most %d bytes", i,
                                                          MOE_JSON_MAX_TAG_BYTES);
        tg->n_trig++;
        tg->first[(unsigned char)tg->trig[i][0]] = true;
    }
    for (size_t i = 0; i < ns; i++) {
        json_t *o = json_array_get(structs, i);
        snprintf(where, sizeof(where), "structures[%zu]", i);
        if (!json_is_object(o)) return moe_errorf(MOE_EINVAL, "structural tag: %s must be an object", where);
        tg->n++; /* freed with the tag from here, whatever of it is made */
        if ((st = tag_text(o, "begin", where, false, &tg->begin[i], &tg->blen[i])) ||
            (st = tag_text(o, "end", where, true, &tg->end[i], &tg->elen[i])))
            return st;
        json_t *schema = json_object_get(o, "schema");
        char *text = schema ? json_dumps(schema, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        if (!text) return moe_errorf(MOE_EINVAL, "structural tag: %s needs a 'schema' (a JSON Schema)", where);
        st = moe_json_schema_parse(text, strlen(text), &tg->sc[i]);
        free(text);
        if (st) return moe_error_prefix(st == MOE_ENOMEM ? st : MOE_EINVAL, "structural tag: %s", where);
        bool led = false;
        for (int t = 0; t < tg->n_trig && !led; t++)
            led = tg->tlen[t] <= tg->blen[i] && !memcmp(tg->begin[i], tg->trig[t], tg->tlen[t]);
        if (!led)
            return moe_errorf(MOE_EINVAL, "structural tag: %s's begin '%.64s' starts with no trigger", where,
                              tg->begin[i]);
    }
    for (int a = 0; a < tg->n; a++)
        for (int b = 0; b < tg->n; b++)
            if (a != b && tg->blen[a] <= tg->blen[b] && !memcmp(tg->begin[a], tg->begin[b], tg->blen[a]))
                return moe_errorf(MOE_EINVAL, "structural tag: structures[%d]'s begin '%.64s' begins structures[%d]'s "
                                  "too, so where it ends could not be told", a, tg->begin[a], b);
    for (int t = 0; t < tg->n_trig; t++) {
        bool leads = false;
        for (int i = 0; i < tg->n && !leads; i++)
            leads = tg->tlen[t] <= tg->blen[i] && !memcmp(tg->begin[i], tg->trig[t], tg->tlen[t]);
        if (!leads)
            return moe_errorf(MOE_EINVAL, "structural tag: trigger '%.64s' begins no structure", tg->trig[t]);
    }
    return MOE_OK;
}

enum moe_status moe_json_schema_tags(const char *text, size_t len, struct moe_json_schema **out)
{
    *out = NULL;
    if (len > MOE_JSON_MAX_SCHEMA)
        return moe_errorf(MOE_ERANGE, "structural tag of %zu bytes; at most %d are accepted", len, MOE_JSON_MAX_SCHEMA);
    json_error_t jerr;
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) return moe_errorf(MOE_EINVAL, "structural tag is not JSON: %s", moe_json_error_text(&jerr));
    struct json_tags *tg = calloc(1, sizeof(*tg));
    enum moe_status st = tg ? tags_compile(doc, tg) : moe_errorf(MOE_ENOMEM, "out of memory compiling a structural tag");
    json_decref(doc);
    if (st == MOE_OK) st = raw_text_schema(out);
    if (st != MOE_OK) {
        tags_free(tg);
        return st;
    }
    (*out)->tags = tg;
    return MOE_OK;
}

bool moe_json_schema_raw(const struct moe_json_schema *sc)
{
    return sc && sc->raw;
}

void moe_json_schema_compact(struct moe_json_schema *sc, bool tight)
{
    if (sc && atomic_load(&sc->refs) > 0) sc->compact = tight ? 2 : 1;
}

struct moe_json_schema *moe_json_schema_ref(struct moe_json_schema *sc)
{
    if (sc && atomic_load(&sc->refs) > 0) atomic_fetch_add(&sc->refs, 1);
    return sc;
}

void moe_json_schema_unref(struct moe_json_schema *sc)
{
    if (!sc || atomic_load(&sc->refs) == 0 || atomic_fetch_sub(&sc->refs, 1) != 1) return;
    free((void *)sc->nodes);
    free((void *)sc->props);
    free((void *)sc->lits);
    free((void *)sc->lit_orig);
    free((void *)sc->branch);
    free((void *)sc->pool);
    free((void *)sc->dfa);
    free((void *)sc->dfa_ranges);
    moe_grammar_free((struct moe_grammar *)sc->grammar);
    tags_free((struct json_tags *)sc->tags);
    free(sc);
}
