/* JSON schemas: what compiles and what is refused (by name, with the place in
 * the schema); documents that follow a schema are accepted whole, in pieces
 * and at every prefix; documents that break it are refused at the byte where
 * they go wrong; masks over a small vocabulary allow exactly the tokens that
 * can continue, and on the bundled model's vocabulary exactly those that fed one
 * by one continue the value. */
#include "common/moe.h"
#include "engine/json_guide.h"
#include "model/tokenizer.h"
#include "model/utf8.h"
#include "tests/engine/mask_ref.h"
#include "tests/test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static struct moe_json_schema *compile(const char *text)
{
    struct moe_json_schema *sc = NULL;
    enum moe_status st = moe_json_schema_parse(text, strlen(text), &sc);
    CHECK(st == MOE_OK && sc, "%s: refused: %s", text, moe_last_error());
    return sc;
}

/* The byte at which t is refused, -1 when all is accepted and the value is whole, -2 when it is
 * accepted but not whole. */
static int verdict(const struct moe_json_schema *sc, const char *t)
{
    int v = feed_verdict(sc, t, strlen(t));
    return v == -3 ? -2 : v;
}

/* Accepted whole, in pieces of 2..5 bytes, and every proper prefix accepted and not whole. */
static void good(const struct moe_json_schema *sc, const char *t)
{
    CHECK(verdict(sc, t) == -1, "%s: verdict %d", t, verdict(sc, t));
    size_t n = strlen(t);
    for (size_t k = 2; k <= 5; k++) {
        struct moe_json_state s, c;
        moe_json_init(&s, sc);
        bool ok = true;
        for (size_t i = 0; i < n && ok; i += k) {
            moe_json_copy(&c, &s); /* the copy carries the frames in use */
            ok = moe_json_feed(&c, t + i, i + k < n ? k : n - i);
            moe_json_copy(&s, &c);
        }
        CHECK(ok && moe_json_done(&s), "%s: refused in pieces of %zu", t, k);
    }
    for (size_t j = 1; j < n; j++) {
        char p[512];
        snprintf(p, sizeof(p), "%.*s", (int)j, t);
        bool trailing_ws = strspn(t + j, " \n") == n - j;
        if (!trailing_ws) CHECK(verdict(sc, p) == -2, "%s: prefix %zu verdict %d", t, j, verdict(sc, p));
    }
}

static void bad(const struct moe_json_schema *sc, const char *t, int at)
{
    CHECK(verdict(sc, t) == at, "%s: verdict %d, want %d", t, verdict(sc, t), at);
}

/* Refused exactly where the text breaks: after prefix, at rest's first byte. */
static void bad_at(const struct moe_json_schema *sc, const char *prefix, const char *rest)
{
    char t[256];
    snprintf(t, sizeof(t), "%s%s", prefix, rest);
    bad(sc, t, (int)strlen(prefix));
}

static void refused(const char *text, enum moe_status want, const char *needle)
{
    struct moe_json_schema *sc = NULL;
    enum moe_status st = moe_json_schema_parse(text, strlen(text), &sc);
    CHECK(st == want && !sc, "%s: status %d, want %d", text, st, want);
    CHECK(strstr(moe_last_error(), needle), "%s: message '%s' lacks '%s'", text, moe_last_error(), needle);
    moe_json_schema_unref(sc);
}

static const char *owner =
    "{\"$defs\":{\"Pet\":{\"type\":\"object\",\"title\":\"Pet\",\"properties\":{\"name\":{\"type\":\"string\"},"
    "\"kind\":{\"enum\":[\"cat\",\"dog\"]}},\"required\":[\"name\",\"kind\"],\"additionalProperties\":false}},"
    "\"type\":\"object\",\"title\":\"Owner\",\"description\":\"d\",\"properties\":{\"id\":{\"type\":\"integer\"},"
    "\"score\":{\"type\":\"number\"},\"pets\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/Pet\"},"
    "\"maxItems\":2},\"nick\":{\"type\":[\"string\",\"null\"]},\"ok\":{\"type\":\"boolean\"}},"
    "\"required\":[\"id\",\"pets\"],\"additionalProperties\":false}";

static void test_owner(void)
{
    struct moe_json_schema *sc = compile(owner);
    if (!sc) return;
    good(sc, "{\"id\":7,\"pets\":[]}");
    good(sc, "{\"pets\":[{\"name\":\"a\",\"kind\":\"dog\"}],\"id\":-3,\"nick\":null,\"ok\":true,\"score\":1.5e3}");
    good(sc, "{ \"id\" : 0 , \"pets\" : [ { \"kind\":\"cat\" , \"name\":\"x\\\"y\" } ] , \"nick\":\"n\" }");
    bad(sc, "[", 0);
    bad(sc, " {", 0);
    bad(sc, "{\"id\":1.5", 7);                    /* an integer */
    bad(sc, "{\"id\":1e3", 7);
    bad(sc, "{\"id\":1}", 7);                     /* pets is required */
    bad(sc, "{\"pets\":[],\"pets\"", 12);         /* written twice */
    bad(sc, "{\"id\":1,\"pets\":[{\"name\":\"a\",\"kind\":\"bird\"", 36);
    bad(sc, "{\"id\":1,\"pets\":[{\"name\":\"a\"}", 27); /* kind is required */
    bad(sc, "{\"id\":1,\"pets\":[],\"extra\":1", 19);  /* no other properties */
    bad(sc, "{\"id\":1,\"pets\":[],\"i\"", 19);        /* "id" again */
    bad(sc, "{\"id\":1,\"pets\":[{\"name\":\"a\",\"kind\":\"cat\"},{\"name\":\"b\",\"kind\":\"cat\"},", 67);
    bad(sc, "{\"id\":1,\"pets\":[],\"nick\":5", 25);
    bad(sc, "{\"id\":1,\"pets\":[],\"ok\":tru}", 26);
    bad(sc, "{\"id\":1,\"pets\":[],\"ok\":true,\"nick\":null,\"score\":1,", 49); /* no property left */
    CHECK(verdict(sc, "{\"id\":1,\"pets\":[],\"nick\":null,\"ok\":true,\"score\":2") == -2, "score incomplete");
    moe_json_schema_unref(sc);
}

static void test_literals(void)
{
    struct moe_json_schema *sc = compile("{\"type\":\"object\",\"properties\":{\"n\":{\"enum\":[1,10,\"a\",null,"
                                         "{\"x\":[1]},2.5,0.1]}}}");
    if (!sc) return;
    good(sc, "{\"n\":1}");
    good(sc, "{\"n\":10}");
    good(sc, "{\"n\":1 }");
    good(sc, "{\"n\":\"a\"}");
    good(sc, "{\"n\":null}");
    good(sc, "{\"n\":{\"x\":[1]}}");
    good(sc, "{\"n\":2.5}");
    good(sc, "{\"n\":0.1}");                  /* the shortest form of 0.1 */
    good(sc, "{\"m\":[true,{\"q\":-1}],\"n\":1}"); /* other properties: any value */
    bad(sc, "{\"n\":2}", 6);
    bad(sc, "{\"n\":100", 7);
    bad(sc, "{\"n\":\"b\"", 6);
    bad(sc, "{\"n\":{\"x\": [1]}}", 10);    /* an enum value is written compactly */
    bad(sc, "{\"n\":1,\"n\"", 9);             /* a declared property twice */
    moe_json_schema_unref(sc);

    /* numbers inside an array or object with the digits that give each back, not 15 */
    sc = compile("{\"enum\":[[0.30000000000000004,0.5],{\"a\":1.0000000000000002},[0.1,2.5,1.0]]}");
    if (sc) {
        good(sc, "[0.30000000000000004,0.5]");
        bad_at(sc, "[0.3", ",");
        good(sc, "{\"a\":1.0000000000000002}");
        bad_at(sc, "{\"a\":1.0", "}");
        good(sc, "[0.1,2.5,1]"); /* the shortest forms; 1.0 is 1, as it is outside an array */
        bad_at(sc, "[0.1,2.5,1", ".0");
    }
    moe_json_schema_unref(sc);

    /* numbers of an integer's value are one value with the integer at any depth ([1] and [1.0], {"a":-0.0}
     * and {"a":0}, 1e17 and 100000000000000000), one text: repeats are one literal, and uniqueItems
     * tells them apart from none */
    sc = compile("{\"enum\":[[1],[1.0],{\"a\":-0.0},{\"a\":0},1e17]}");
    if (sc) {
        good(sc, "[1]");
        bad_at(sc, "[1", ".");
        good(sc, "{\"a\":0}");
        bad_at(sc, "{\"a\":", "-");
        good(sc, "100000000000000000");
        bad_at(sc, "1", "e");
    }
    moe_json_schema_unref(sc);
    sc = compile("{\"type\":\"array\",\"items\":{\"enum\":[[1],[1.0],[2.5]]},\"uniqueItems\":true}");
    if (sc) {
        good(sc, "[[1],[2.5]]");
        bad_at(sc, "[[1],[", "1");
        bad_at(sc, "[[1", ".");
    }
    moe_json_schema_unref(sc);
    refused("{\"type\":\"array\",\"items\":{\"enum\":[[1],[1.0]]},\"uniqueItems\":true,\"minItems\":2}",
            MOE_EINVAL, "the items have 1 value");

    sc = compile("{\"enum\":[\"yes\",\"no\"]}");
    if (sc) {
        good(sc, "\"yes\"");
        good(sc, "\"no\"");
        bad(sc, "\"ye\"", 3);
        bad(sc, "\"yes\" ", 5);
    }
    moe_json_schema_unref(sc);
    sc = compile("{\"const\":true}");
    if (sc) {
        good(sc, "true");
        bad(sc, "false", 0);
    }
    moe_json_schema_unref(sc);
}

static void test_arrays_unions_refs(void)
{
    struct moe_json_schema *sc = compile("{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":1,"
                                         "\"maxItems\":3}");
    if (sc) {
        good(sc, "[1]");
        good(sc, "[1, 2,3]");
        bad(sc, "[]", 1);
        bad(sc, "[1.0", 2);
        bad(sc, "[1,2,3,", 6);
    }
    moe_json_schema_unref(sc);
    sc = compile("{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"object\",\"properties\":{\"a\":{\"const\":true}},"
                 "\"required\":[\"a\"]},{\"type\":\"array\",\"items\":false}]}");
    if (sc) {
        good(sc, "\"x\"");
        good(sc, "{\"a\":true}");
        good(sc, "[]");
        bad(sc, "[1", 1);
        bad(sc, "{}", 1);
        bad(sc, "null", 0);
    }
    moe_json_schema_unref(sc);
    sc = compile("{\"type\":\"object\",\"properties\":{\"child\":{\"$ref\":\"#\"},\"v\":{\"type\":[\"integer\","
                 "\"number\",\"boolean\"]}},\"additionalProperties\":false}");
    if (sc) { /* recursive: a tree of any depth up to the limit */
        good(sc, "{\"child\":{\"child\":{\"v\":1.5}},\"v\":false}");
        bad(sc, "{\"child\":[", 9);
    }
    moe_json_schema_unref(sc);
    /* '$ref' is a URI fragment: %XX escapes decoded before ~0 and ~1 (RFC 6901) */
    sc = compile("{\"$defs\":{\"a b\":{\"type\":\"integer\"},\"c/d%\":{\"type\":\"null\"}},\"type\":\"object\","
                 "\"properties\":{\"x\":{\"$ref\":\"#/$defs/a%20b\"},\"y\":{\"$ref\":\"#/%24defs/c~1d%25\"}}}");
    if (sc) {
        good(sc, "{\"x\":1,\"y\":null}");
        bad(sc, "{\"x\":\"", 5);
    }
    moe_json_schema_unref(sc);
    /* a name of any length: 300 A's, not the 255 A's beside them */
    char long_a[320], refs[1200];
    memset(long_a, 'A', 300);
    long_a[300] = 0;
    snprintf(refs, sizeof(refs), "{\"$defs\":{\"%.255s\":{\"type\":\"string\"},\"%s\":{\"type\":\"boolean\"}},"
             "\"type\":\"object\",\"properties\":{\"z\":{\"$ref\":\"#/$defs/%s\"}}}", long_a, long_a, long_a);
    sc = compile(refs);
    if (sc) {
        good(sc, "{\"z\":true}");
        bad(sc, "{\"z\":\"", 5);
    }
    moe_json_schema_unref(sc);
    sc = compile("{\"type\":\"object\",\"properties\":{\"a\\\"b\":{\"type\":\"null\"}},\"additionalProperties\":false}");
    if (sc) { /* a key with an escape is written as the schema's JSON writes it */
        good(sc, "{\"a\\\"b\":null}");
        bad(sc, "{\"a\\u0022b\":null}", 4);
    }
    moe_json_schema_unref(sc);
    /* other keys allowed: a key is still written in the one way a declared name is, so a declared name
     * is never written another way as another key, beside it or instead of it, with any value */
    sc = compile("{\"type\":\"object\",\"properties\":{\"gr\xc3\xb6\xc3\x9f" "e\":{\"type\":\"integer\"},\"a/b\":"
                 "{\"type\":\"integer\"},\"c\\u001F\":{\"type\":\"integer\"}},\"required\":[\"gr\xc3\xb6\xc3\x9f" "e\"]}");
    if (sc) {
        good(sc, "{\"gr\xc3\xb6\xc3\x9f" "e\":1,\"a/b\":2,\"c\\u001F\":3,\"x\\n\\u0001\":\"\\u00e9\\/\"}");
        bad_at(sc, "{\"gr\xc3\xb6\xc3\x9f" "e\":1,\"gr\\u00", "f6\\u00dfe\":\"x\"}"); /* U+00F6 as an escape */
        bad_at(sc, "{\"gr\xc3\xb6\xc3\x9f" "e\":1,\"a\\", "/b\":\"x\"}");              /* '/' as an escape */
        bad_at(sc, "{\"gr\xc3\xb6\xc3\x9f" "e\":1,\"c\\u001", "f\":\"x\"}");           /* hex as JSON writes it */
        bad_at(sc, "{\"x\\u", "d83d\\ude00\":1}");                                       /* a surrogate escape */
    }
    moe_json_schema_unref(sc);
}

/* Objects told apart by a tag (a discriminated union, as pydantic writes one): the tag first. */
static void test_tagged(void)
{
    struct moe_json_schema *sc = compile(
        "{\"$defs\":{\"Cat\":{\"type\":\"object\",\"properties\":{\"pet_type\":{\"const\":\"cat\"},"
        "\"lives\":{\"type\":\"integer\"}},\"required\":[\"pet_type\",\"lives\"],\"additionalProperties\":false},"
        "\"Dog\":{\"type\":\"object\",\"properties\":{\"good\":{\"type\":\"boolean\"},\"pet_type\":{\"enum\":[\"dog\"]}},"
        "\"required\":[\"pet_type\"]}},\"type\":\"object\",\"properties\":{\"pet\":{\"oneOf\":[{\"$ref\":\"#/$defs/Cat\"},"
        "{\"$ref\":\"#/$defs/Dog\"},{\"type\":\"null\"}],\"discriminator\":{\"propertyName\":\"pet_type\"}}},"
        "\"required\":[\"pet\"],\"additionalProperties\":false}");
    if (!sc) return;
    good(sc, "{\"pet\":{\"pet_type\":\"cat\",\"lives\":9}}");
    good(sc, "{\"pet\": { \"pet_type\": \"dog\" }}");
    good(sc, "{\"pet\":{\"pet_type\":\"dog\",\"good\":true,\"x\":[1]}}"); /* Dog takes other keys */
    good(sc, "{\"pet\":null}");
    bad(sc, "{\"pet\":{\"lives\":9", 9);                      /* the tag comes first */
    bad(sc, "{\"pet\":{}", 8);
    bad(sc, "{\"pet\":{\"pet_type\":\"cow\"", 21);
    bad(sc, "{\"pet\":{\"pet_type\":\"cat\"}", 24);          /* lives is required */
    bad(sc, "{\"pet\":{\"pet_type\":\"cat\",\"good\"", 26);   /* Cat takes no other keys */
    bad(sc, "{\"pet\":{\"pet_type\":\"dog\",\"pet_type\"", 34); /* the tag once */
    moe_json_schema_unref(sc);

    /* the tags' order is not their bytes' order: each still leads to its own branch */
    sc = compile("{\"oneOf\":[{\"type\":\"object\",\"properties\":{\"t\":{\"const\":\"zebra\"},\"z\":{\"type\":"
                 "\"integer\"}},\"required\":[\"t\",\"z\"],\"additionalProperties\":false},{\"type\":\"object\","
                 "\"properties\":{\"t\":{\"const\":\"ant\"},\"a\":{\"type\":\"boolean\"}},\"required\":[\"t\"],"
                 "\"additionalProperties\":false}]}");
    if (!sc) return;
    good(sc, "{\"t\":\"zebra\",\"z\":1}");
    good(sc, "{\"t\":\"ant\",\"a\":true}");
    good(sc, "{\"t\":\"ant\"}");
    bad_at(sc, "{\"t\":\"zebra\"", "}");
    bad_at(sc, "{\"t\":\"ant\",\"", "z");
    moe_json_schema_unref(sc);
}

/* Enums of up to MOE_JSON_MAX_ENUM values, sorted so the recognizer narrows them by bisection. */
static void test_big_enum(void)
{
    static char text[MOE_JSON_MAX_ENUM * 12 + 64];
    size_t at = (size_t)snprintf(text, sizeof(text), "{\"type\":\"array\",\"items\":{\"enum\":[");
    for (int i = 0; i < 1000; i++) /* given out of order: 997, 994, ... */
        at += (size_t)snprintf(text + at, sizeof(text) - at, "%s\"k%03d\"", i ? "," : "", (i * 997) % 1000);
    snprintf(text + at, sizeof(text) - at, ",7,70,null]}}");
    struct moe_json_schema *sc = compile(text);
    if (sc) {
        good(sc, "[\"k000\",\"k999\",\"k500\",7,70,null]");
        bad_at(sc, "[\"k1", "a");
        bad_at(sc, "[\"k999", "x");
        bad_at(sc, "[7", "1");
        good(sc, "[70]");
    }
    moe_json_schema_unref(sc);
    at = (size_t)snprintf(text, sizeof(text), "{\"enum\":[");
    for (int i = 0; i <= MOE_JSON_MAX_ENUM; i++) at += (size_t)snprintf(text + at, sizeof(text) - at, "%s%d", i ? "," : "", i);
    snprintf(text + at, sizeof(text) - at, "]}");
    refused(text, MOE_ERANGE, "at most 1024");
}

/* A compact schema (tool calls): one space between tokens at most, no line break. */
static void test_compact(void)
{
    struct moe_json_schema *sc = compile("{\"type\":\"object\"}");
    if (!sc) return;
    moe_json_schema_compact(sc, false);
    good(sc, "{\"a\": 1, \"b\": [true, null]}");
    bad(sc, "{\"a\":  1", 6);
    bad(sc, "{\n", 1);
    good(sc, "{\"a\":\"x  \\n  y\"}"); /* inside a string: text */
    moe_json_schema_unref(sc);
    sc = compile("{\"type\":\"object\"}"); /* tight: no whitespace between tokens at all */
    if (!sc) return;
    moe_json_schema_compact(sc, true);
    good(sc, "{\"a\":1,\"b\":[true,null],\"c\":\"x y\"}");
    bad(sc, "{\"a\": 1", 5);
    bad(sc, "{ ", 1);
    moe_json_schema_unref(sc);
}

/* A choice among texts as they are (vLLM's guided_choice). */
static void test_choice(void)
{
    const char *texts[] = { "yes", "no", "maybe later", "{raw}" };
    size_t lens[] = { 3, 2, 11, 5 };
    struct moe_json_schema *sc = NULL;
    REQUIRE(moe_json_schema_choice(texts, lens, 4, &sc) == MOE_OK && sc, "%s", moe_last_error());
    good(sc, "yes");
    good(sc, "maybe later");
    good(sc, "{raw}");
    good(sc, "no");
    bad(sc, "\"yes\"", 0);
    bad(sc, "ye ", 2);
    bad(sc, "yes ", 3);
    moe_json_schema_unref(sc);
    const char *pre[] = { "a", "ab" };
    size_t plen[] = { 1, 2 };
    CHECK(moe_json_schema_choice(pre, plen, 2, &sc) != MOE_OK && !sc && strstr(moe_last_error(), "begins another"),
          "a choice that begins another: %s", moe_last_error());
    /* a text given twice begins no longer text: taken as once */
    const char *dup[] = { "ab", "ab", "c" };
    REQUIRE(moe_json_schema_choice(dup, (size_t[]){ 2, 2, 1 }, 3, &sc) == MOE_OK && sc, "a repeated choice: %s",
            moe_last_error());
    good(sc, "ab");
    good(sc, "c");
    bad(sc, "abab", 2);
    moe_json_schema_unref(sc);
    sc = NULL;
    CHECK(moe_json_schema_choice(pre, (size_t[]){ 0, 2 }, 2, &sc) != MOE_OK && strstr(moe_last_error(), "empty"),
          "an empty choice: %s", moe_last_error());
    CHECK(moe_json_schema_choice(pre, plen, 0, &sc) != MOE_OK, "no choices accepted");
}

static void test_refused(void)
{
    static const struct {
        const char *schema;
        enum moe_status st;
        const char *needle; /* in the message */
    } no[] = {
        { "{\"not\":{\"type\":\"string\"}}", MOE_ENOTSUP, "'not' is not supported" },
        { "{\"type\":\"object\",\"properties\":{\"d\":{\"type\":\"string\",\"format\":\"ipv6\"}}}",
          MOE_ENOTSUP, "at '/properties/d': format 'ipv6' is not supported" },
        { "{\"type\":\"number\"}", MOE_ENOTSUP, "bare number" },
        { "{}", MOE_ENOTSUP, "bare number" },
        { "true", MOE_ENOTSUP, "bare number" },
        { "{\"type\":[\"string\",\"integer\"]}", MOE_ENOTSUP, "bare number" },
        { "{\"anyOf\":[{\"type\":\"object\"},{\"type\":\"object\",\"properties\":{}}]}",
          MOE_ENOTSUP, "told apart only by a tag" },
        { "{\"oneOf\":[{\"type\":\"object\",\"properties\":{\"t\":{\"const\":\"a\"}},\"required\":[\"t\"]},"
          "{\"type\":\"object\",\"properties\":{\"t\":{\"const\":\"a\"}},\"required\":[\"t\"]}]}",
          MOE_ENOTSUP, "told apart only by a tag" }, /* the same tag twice */
        { "{\"oneOf\":[{\"type\":\"object\",\"properties\":{\"t\":{\"const\":\"a\"}}},"
          "{\"type\":\"object\",\"properties\":{\"t\":{\"const\":\"b\"}},\"required\":[\"t\"]}]}",
          MOE_ENOTSUP, "told apart only by a tag" }, /* not required in one */
        { "{\"oneOf\":[{\"enum\":[\"a\"]},{\"type\":\"string\"}]}", MOE_ENOTSUP, "both begin with '\"'" },
        /* an integer is a number too: it would match both branches, which oneOf refuses */
        { "{\"type\":\"array\",\"items\":{\"oneOf\":[{\"type\":\"integer\"},{\"type\":\"number\"}]}}", MOE_ENOTSUP,
          "oneOf: an integer matches both" },
        { "{\"type\":\"array\",\"items\":{\"oneOf\":[{\"type\":[\"integer\",\"string\"]},{\"anyOf\":[{\"type\":"
          "\"number\"}]}]}}", MOE_ENOTSUP, "oneOf: an integer matches both" },
        { "{\"type\":\"object\",\"required\":[\"x\"]}", MOE_ENOTSUP, "required property 'x'" },
        { "{\"$ref\":\"#/$defs/Nope\"}", MOE_EINVAL, "names nothing" },
        { "{\"$ref\":\"https://example.com/s.json\"}", MOE_EINVAL, "names nothing" },
        { "{\"type\":\"object\",\"properties\":{\"a\":{\"enum\":[]}}}", MOE_EINVAL, "empty enum" },
        { "{\"type\":\"objekt\"}", MOE_EINVAL, "unknown type 'objekt'" },
        { "{\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#/properties/a\"}}}",
          MOE_EINVAL, "refers to itself" },
        { "not json", MOE_EFORMAT, "not valid JSON" },
        /* valid JSON, an integer jansson holds only up to int64: said so, with what to write instead */
        { "{\"type\":\"integer\",\"maximum\":10000000000000000000}", MOE_ERANGE,
          "holds a number out of range at line 1 column 48 (too big integer near '10000000000000000000'): it is "
          "valid JSON, but integers are read as 64-bit" },
        { "{\"type\":\"integer\",\n\"minimum\":-9223372036854775809}", MOE_ERANGE,
          "at line 2 column 30 (too big negative integer" },
        { "{\"type\":\"integer\",\"maximum\":10000000000000000000}", MOE_ERANGE,
          "up to about 1.8e308; write a larger integer with an exponent (1e19)" },
        /* a number past a double: no exponent makes it fit, so none is offered */
        { "{\"type\":\"number\",\"maximum\":1e999}", MOE_ERANGE,
          "(real number overflow near '1e999'): it is valid JSON, but integers are read as 64-bit, "
          "[-9223372036854775808, 9223372036854775807], and other numbers as doubles, up to about 1.8e308; a number "
          "past that cannot be held: give one within it" },
        { "{\"type\":\"string\",\"items\":{}}", MOE_EINVAL, "array keywords" },
        { "{\"enum\":[1,10]}", MOE_ENOTSUP, "begins another" },
        { "{\"type\":\"array\",\"minItems\":3,\"maxItems\":2}", MOE_EINVAL, "minItems 3 is above maxItems 2" },
        { "{\"type\":\"array\",\"minItems\":-1}", MOE_EINVAL, "non-negative integer" },
        { "false", MOE_EINVAL, "allows no value" },
        { "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"enum\":[1]}}}",
          MOE_EINVAL, "enum value 0 is of type integer" },
        { "{\"type\":\"object\",\"allOf\":[]}", MOE_EINVAL, "'allOf' must be an array of schemas" },
        { "{\"allOf\":[{\"type\":\"object\"},{\"required\":[]}]}", MOE_ENOTSUP, "'allOf' is supported only of one" },
        { "{\"type\":\"object\",\"allOf\":[{\"type\":\"object\"}]}", MOE_ENOTSUP, "'allOf' is supported only of one" },
        { "{\"type\":\"string\",\"minLength\":3,\"maxLength\":2}", MOE_EINVAL, "minLength 3 is above maxLength 2" },
        { "{\"type\":\"string\",\"maxLength\":1.5}", MOE_EINVAL, "'maxLength' must be a non-negative integer" },
        { "{\"type\":\"string\",\"maxLength\":4611686018427387904}", MOE_EINVAL,
          "'maxLength' = 4611686018427387904 is more than the largest supported, 4294967294" },
        { "[{\"type\":\"number\",\"multipleOf\":0.5}]", MOE_EINVAL, "a schema must be an object" },
        { "{\"type\":\"array\",\"items\":{\"type\":\"number\",\"multipleOf\":2}}", MOE_ENOTSUP, "for integers only" },
        { "{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"multipleOf\":0.5}}", MOE_EINVAL, "whole number" },
        { "{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}}",
          MOE_EINVAL, "no integer" },
        { "{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":4,\"multipleOf\":5}}",
          MOE_EINVAL, "no integer" },
        { "{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"exclusiveMinimum\":0.5,\"exclusiveMaximum\":1}}",
          MOE_EINVAL, "no integer" },
        { "{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"minimum\":1e19}}", MOE_EINVAL, "no integer" },
        { "{\"type\":\"array\",\"items\":{\"type\":\"number\",\"exclusiveMinimum\":1,\"maximum\":1}}",
          MOE_EINVAL, "no number meets" },
        { "{\"type\":\"array\",\"items\":{\"type\":\"number\",\"minimum\":\"1\"}}",
          MOE_EINVAL, "'minimum' must be a number" },
        { "{\"type\":\"string\",\"minimum\":1}", MOE_EINVAL, "number keywords (minimum, maximum" },
        { "{\"minLength\":1,\"minimum\":1}", MOE_ENOTSUP, "string and number keywords without a 'type'" },
        { "{\"enum\":[\"a\"],\"maxLength\":3}", MOE_ENOTSUP, "beside 'enum'" },
        { "{\"type\":\"array\",\"prefixItems\":[]}", MOE_EINVAL, "'prefixItems' must be an array of 1 to 64" },
        { "{\"type\":\"array\",\"prefixItems\":[true],\"items\":false,\"minItems\":2}",
          MOE_EINVAL, "at most 1 values" },
        { "{\"$ref\":\"#\",\"type\":\"object\"}", MOE_ENOTSUP, "'$ref' with other keywords" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(no); i++) refused(no[i].schema, no[i].st, no[i].needle);
    char big[4096] = "{\"type\":\"object\",\"properties\":{";
    for (int i = 0; i <= MOE_JSON_MAX_PROPS; i++)
        snprintf(big + strlen(big), sizeof(big) - strlen(big), "%s\"p%d\":{}", i ? "," : "", i);
    strcat(big, "}}");
    refused(big, MOE_ERANGE, "65 properties");
    char deep[4096] = "";
    for (int i = 0; i < 70; i++) strcat(deep, "{\"type\":\"array\",\"items\":");
    strcat(deep, "true");
    for (int i = 0; i < 70; i++) strcat(deep, "}");
    refused(deep, MOE_ERANGE, "nested more than");
}


/* minLength / maxLength count characters: UTF-8 sequences and escapes as one, no surrogate escapes. */
static void test_string_bounds(void)
{
    struct moe_json_schema *sc = compile("{\"type\":\"object\",\"properties\":{\"s\":{\"type\":\"string\","
                                         "\"minLength\":2,\"maxLength\":4},\"k\":{\"type\":[\"string\",\"null\"],"
                                         "\"maxLength\":0}},\"required\":[\"s\"]}");
    if (!sc) return;
    good(sc, "{\"s\":\"ab\"}");
    good(sc, "{\"s\":\"abcd\"}");
    good(sc, "{\"s\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\\n\"}"); /* é € 😀 \n: four characters */
    good(sc, "{\"s\":\"\\u00e9\\\"\"}");
    good(sc, "{\"s\":\"ab\",\"k\":\"\",\"longer key\":\"free text of any length\"}");
    good(sc, "{\"s\":\"ab\",\"k\":null}");
    bad_at(sc, "{\"s\":\"a", "\"}");
    bad_at(sc, "{\"s\":\"abcd", "e");
    bad_at(sc, "{\"s\":\"abc\xc3\xa9", "\xc3\xa9");
    bad_at(sc, "{\"s\":\"abcd", "\\n");
    bad_at(sc, "{\"s\":\"\\ud", "83d\\ude00\"}"); /* a surrogate escape */
    bad_at(sc, "{\"s\":\"\\u00", "41\"}");          /* printable ASCII, written as itself */
    good(sc, "{\"s\":\"\\u0022\\u005c\\u000a\\u00e9\"}"); /* a quote, a backslash, a line break, é */
    bad_at(sc, "{\"s\":\"ab\",\"k\":\"", "x");
    moe_json_schema_unref(sc);
}

/* An integer range: every value in a window is taken exactly when it is in range (and a multiple). */
static void test_integer_bounds(void)
{
    const struct {
        const char *kw;
        long lo, hi, mult;
    } cases[] = {
        { "\"minimum\":-5,\"exclusiveMaximum\":100,\"multipleOf\":5", -5, 99, 5 },
        { "\"exclusiveMinimum\":-1.5,\"maximum\":7.9", -1, 7, 1 },
        { "\"minimum\":12,\"maximum\":12", 12, 12, 1 },
        { "\"minimum\":0,\"exclusiveMinimum\":true,\"maximum\":130", 1, 130, 1 }, /* draft 4 */
        { "\"maximum\":-100,\"multipleOf\":7", -1000000, -100, 7 },
        { "\"minimum\":-3,\"exclusiveMinimum\":-3", -2, 1000000, 1 }, /* the tighter end */
        { "\"minimum\":-1e19,\"maximum\":1e19", -1000000, 1000000, 1 }, /* beyond int64, as the message says */
    };
    for (size_t k = 0; k < MOE_ARRAY_LEN(cases); k++) {
        char schema[256];
        snprintf(schema, sizeof(schema), "{\"type\":\"array\",\"items\":{\"type\":\"integer\",%s}}", cases[k].kw);
        struct moe_json_schema *sc = compile(schema);
        if (!sc) continue;
        int taken = 0;
        for (long v = -160; v <= 160; v++) {
            char t[32];
            snprintf(t, sizeof(t), "[%ld]", v);
            bool want = v >= cases[k].lo && v <= cases[k].hi && v % cases[k].mult == 0;
            int got = verdict(sc, t);
            CHECK((got == -1) == want, "%s: %s verdict %d, want %s", cases[k].kw, t, got, want ? "taken" : "refused");
            taken += got == -1;
        }
        CHECK(taken > 0, "%s: nothing taken", cases[k].kw);
        moe_json_schema_unref(sc);
    }
    struct moe_json_schema *sc = compile("{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"minimum\":0}}");
    if (sc) {
        good(sc, "[999999999999999999,-0,0]");
        bad_at(sc, "[999999999999999999", "9");
        bad_at(sc, "[-", "1"); /* -0 is 0 */
        bad_at(sc, "[1", ".0]");
    }
    moe_json_schema_unref(sc);
    /* the tighter of two bounds above 2^53, where their doubles are equal: compared exactly */
    sc = compile("{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"exclusiveMinimum\":500000000000000001,"
                 "\"minimum\":500000000000000005,\"maximum\":500000000000000007,\"exclusiveMaximum\":500000000000000006}}");
    if (sc) {
        good(sc, "[500000000000000005]");
        bad_at(sc, "[50000000000000000", "2]");
        bad_at(sc, "[50000000000000000", "6]");
    }
    moe_json_schema_unref(sc);
    /* an excluded bound written as a double above 2^53 is excluded still */
    sc = compile("{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"exclusiveMinimum\":1e16,"
                 "\"exclusiveMaximum\":1.5e17}}");
    if (sc) {
        good(sc, "[10000000000000001,149999999999999999]");
        bad_at(sc, "[10000000000000000", "]");
        bad_at(sc, "[15000000000000000", "0]");
    }
    moe_json_schema_unref(sc);
}

/* A number range: quarters in a window are taken exactly when in range; no exponent. */
static void test_number_bounds(void)
{
    const struct {
        const char *kw;
        double lo, hi;
        bool lo_x, hi_x;
    } cases[] = {
        { "\"minimum\":-2.5,\"maximum\":3", -2.5, 3, false, false },
        { "\"exclusiveMinimum\":0,\"exclusiveMaximum\":1.25", 0, 1.25, true, true },
        { "\"minimum\":0.75,\"maximum\":0.75", 0.75, 0.75, false, false },
        { "\"maximum\":-10", -INFINITY, -10, false, false },
        { "\"minimum\":5,\"exclusiveMinimum\":5.5", 5.5, INFINITY, true, false },
    };
    for (size_t k = 0; k < MOE_ARRAY_LEN(cases); k++) {
        char schema[256];
        snprintf(schema, sizeof(schema), "{\"type\":\"array\",\"items\":{\"type\":\"number\",%s}}", cases[k].kw);
        struct moe_json_schema *sc = compile(schema);
        if (!sc) continue;
        for (int q = -60; q <= 60; q++) {
            double v = q / 4.0;
            char t[64];
            snprintf(t, sizeof(t), "[%g]", v);
            bool want = (cases[k].lo_x ? v > cases[k].lo : v >= cases[k].lo) &&
                        (cases[k].hi_x ? v < cases[k].hi : v <= cases[k].hi);
            int got = verdict(sc, t);
            CHECK((got == -1) == want, "%s: %s verdict %d, want %s", cases[k].kw, t, got, want ? "taken" : "refused");
        }
        moe_json_schema_unref(sc);
    }
    struct moe_json_schema *sc = compile("{\"type\":\"array\",\"items\":{\"type\":\"number\",\"minimum\":0.1,"
                                         "\"maximum\":0.3}}");
    if (sc) {
        good(sc, "[0.1,0.3,0.2999,0.10000]");
        bad_at(sc, "[0.0", "8"); /* no 0.08... reaches 0.1 */
        bad_at(sc, "[0.3000", "1");
        bad_at(sc, "[0.2", "e1");
        bad_at(sc, "[0.3", "1]");
    }
    moe_json_schema_unref(sc);
    /* steps finer than a double can tell apart: the number as written is what counts */
    sc = compile("{\"type\":\"array\",\"items\":{\"type\":\"number\",\"exclusiveMinimum\":1,\"maximum\":1e30}}");
    if (sc) {
        good(sc, "[1.0000000000000002,1.0000000000000005,100000000000000000000000]");
        bad_at(sc, "[1.000000000000000", "0");
    }
    moe_json_schema_unref(sc);
}

/* Random walks through bounded numbers: at every byte some byte continues the value (no dead end),
 * and every number written is in range. */
static void test_bounds_walk(void)
{
    static const char *const ends[] = { "-1000", "-3.25", "-0.5", "0", "0.1", "0.001", "7", "12.5", "1000", "1e15" };
    enum { E = (int)MOE_ARRAY_LEN(ends) };
    uint64_t rng = 99;
    int walks = 0, numbers = 0;
    for (int lo = 0; lo < E; lo++)
        for (int hi = lo; hi < E; hi++)
            for (int mode = 0; mode < 3; mode++) { /* 0: number, 1: number with exclusive ends, 2: integer */
                char schema[256];
                bool excl = mode == 1, integer = mode == 2;
                if (excl && lo == hi) continue;
                snprintf(schema, sizeof(schema), "{\"type\":\"array\",\"items\":{\"type\":\"%s\",\"%s\":%s,\"%s\":%s%s},"
                         "\"minItems\":1,\"maxItems\":4}", integer ? "integer" : "number",
                         excl ? "exclusiveMinimum" : "minimum", ends[lo], excl ? "exclusiveMaximum" : "maximum",
                         ends[hi], integer && hi > lo + 2 ? ",\"multipleOf\":3" : "");
                struct moe_json_schema *sc = NULL;
                if (moe_json_schema_parse(schema, strlen(schema), &sc) != MOE_OK) continue; /* no integer in range */
                double l = strtod(ends[lo], NULL), h = strtod(ends[hi], NULL);
                for (int w = 0; w < 6; w++, walks++) {
                    struct moe_json_state s;
                    moe_json_init(&s, sc);
                    char text[512];
                    size_t len = 0;
                    while (!moe_json_done(&s) && len < sizeof(text) - 1) {
                        static const char bytes[] = "0123456789.-,]e[";
                        char ok[sizeof(bytes)];
                        int m = 0;
                        for (const char *b = bytes; *b; b++) {
                            struct moe_json_state c;
                            moe_json_copy(&c, &s);
                            if (moe_json_feed(&c, b, 1)) ok[m++] = *b;
                        }
                        if (m == 0) break;
                        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                        char pick = ok[(rng >> 33) % (uint64_t)m];
                        for (int j = 0; j < m && (rng >> 17) % 4 == 0; j++) /* end a number now and then */
                            if (ok[j] == ',' || ok[j] == ']') pick = ok[j];
                        moe_json_feed(&s, &pick, 1);
                        text[len++] = pick;
                    }
                    text[len] = 0;
                    CHECK(moe_json_done(&s), "%s: a dead end after '%s'", schema, text);
                    for (char *p = text + 1; moe_json_done(&s) && *p && *p != ']'; numbers++) {
                        char *e;
                        double v = strtod(p, &e);
                        bool in = (excl ? v > l : v >= l) && (excl ? v < h : v <= h) &&
                                  (!integer || (v == floor(v) && !memchr(p, '.', (size_t)(e - p))));
                        CHECK(in, "%s: %.*s out of range", schema, (int)(e - p), p);
                        p = *e == ',' ? e + 1 : e;
                    }
                }
                moe_json_schema_unref(sc);
            }
    CHECK(walks > 300 && numbers > 500, "%d walks, %d numbers", walks, numbers);
}

/* Feed a number of sc's array items one byte at a time, each byte drawn (rng) from those that continue
 * it; the number written into out.  False at a dead end: no byte continues it. */
static bool walk_number(const struct moe_json_schema *sc, uint64_t *rng, int end_one_in, char *out, size_t cap)
{
    struct moe_json_state s;
    moe_json_init(&s, sc);
    moe_json_feed(&s, "[", 1);
    size_t n = 0;
    for (;;) {
        static const char bytes[] = "0123456789.-]";
        char ok[sizeof(bytes)];
        int m = 0;
        for (const char *b = bytes; *b; b++) {
            struct moe_json_state c;
            moe_json_copy(&c, &s);
            if ((*b != ']' || n > 0) && moe_json_feed(&c, b, 1)) ok[m++] = *b;
        }
        out[n] = 0;
        if (m == 0 || n + 1 >= cap) return false;
        *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
        char pick = ok[(*rng >> 33) % (uint64_t)m];
        if ((*rng >> 13) % (uint64_t)end_one_in == 0 && ok[m - 1] == ']') pick = ']';
        moe_json_feed(&s, &pick, 1);
        if (pick == ']') return moe_json_done(&s);
        out[n++] = pick;
    }
}

/* Ranges that no number written (at most 32 characters, no exponent) meets are refused when the
 * schema is read, naming the keywords; the tightest that some number meets compile, and the output
 * reaches one of them without a dead end. */
static void test_bounds_limits(void)
{
    static const struct {
        const char *kw, *needle;
    } refusals[] = {
        { "\"minimum\":1e40", "meets 'minimum' 1e+40: lower it" },
        { "\"maximum\":-1e32", "meets 'maximum' -1e+32: raise it" },
        { "\"exclusiveMinimum\":0,\"maximum\":1e-35", "meets 'exclusiveMinimum' 0 and 'maximum' 1e-35: widen" },
        { "\"exclusiveMinimum\":-1e-30,\"exclusiveMaximum\":0", "30 digits after the point" },
        { "\"minimum\":1.2345678901234567e-20,\"maximum\":1.2345678901234567e-20", "'maximum' 1.2345678901234567e-20" },
        { "\"exclusiveMinimum\":1,\"exclusiveMaximum\":1.0000000000000002", "no number meets 'exclusiveMinimum' 1" },
        { "\"minimum\":3,\"exclusiveMinimum\":true,\"maximum\":3", "'minimum' 3 ('exclusiveMinimum' true)" },
    };
    for (size_t k = 0; k < MOE_ARRAY_LEN(refusals); k++) {
        char schema[256];
        snprintf(schema, sizeof(schema), "{\"type\":\"array\",\"items\":{\"type\":\"number\",%s}}", refusals[k].kw);
        refused(schema, MOE_EINVAL, refusals[k].needle);
    }
    refused("{\"type\":\"integer\",\"minimum\":1.5,\"maximum\":1.7}", MOE_EINVAL,
            "no integer meets 'minimum' 1.5 and 'maximum' 1.7: widen the range");
    refused("{\"type\":\"integer\",\"minimum\":1e19}", MOE_EINVAL, "(at most 18 digits: below 10^18) meets 'minimum'");
    refused("{\"type\":\"integer\",\"exclusiveMinimum\":0,\"maximum\":9,\"multipleOf\":10}", MOE_EINVAL,
            "a multiple of 'multipleOf' 10 meets 'exclusiveMinimum' 0 and 'maximum' 9");
    /* the multiples of 100 near 10^18 all have 19 digits: the cap is named, not the range alone */
    refused("{\"type\":\"integer\",\"minimum\":999999999999999901,\"multipleOf\":100}", MOE_EINVAL,
            "no integer the output can write (at most 18 digits: from -10^18 to 10^18, both excluded) that is a "
            "multiple of 'multipleOf' 100 meets 'minimum' 999999999999999901: move the range toward 0");
    static const struct {
        const char *kw, *text; /* a number it takes */
    } tight[] = {
        { "\"minimum\":1e32", "99999999999999999999999999999999" },
        { "\"maximum\":-1e31", "-9999999999999999999999999999999" },
        { "\"minimum\":9e31", "90000000000000000000000000000000" },
        { "\"exclusiveMinimum\":0,\"maximum\":1e-30", "0.000000000000000000000000000001" },
        { "\"exclusiveMaximum\":0,\"minimum\":-1e-29", "-0.00000000000000000000000000001" },
        { "\"minimum\":1e-20,\"maximum\":1e-20", "0.00000000000000000001" },
        { "\"exclusiveMinimum\":1,\"maximum\":1.0000000000000002", "1.0000000000000002" },
    };
    uint64_t rng = 5;
    for (size_t k = 0; k < MOE_ARRAY_LEN(tight); k++) {
        char schema[256], t[64];
        snprintf(schema, sizeof(schema), "{\"type\":\"array\",\"items\":{\"type\":\"number\",%s}}", tight[k].kw);
        struct moe_json_schema *sc = compile(schema);
        if (!sc) continue;
        snprintf(t, sizeof(t), "[%s]", tight[k].text);
        good(sc, t);
        for (int w = 0; w < 20; w++) {
            char num[64];
            bool whole = walk_number(sc, &rng, 40, num, sizeof(num));
            CHECK(whole, "%s: a dead end after '[%s'", schema, num);
        }
        moe_json_schema_unref(sc);
    }
}

/* A number with no fraction is an integer, as JSON Schema reads it: 1.0 is a value of type integer
 * (written as 1); 1.5 is not. */
static void test_integer_enum(void)
{
    struct moe_json_schema *sc = compile("{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"enum\":[1.0,2,3e0,-4.0]}}");
    if (sc) {
        good(sc, "[1,2,3,-4]");
        bad_at(sc, "[1", ".");
    }
    moe_json_schema_unref(sc);
    sc = compile("{\"type\":\"object\",\"properties\":{\"n\":{\"type\":[\"integer\",\"null\"],\"const\":2.0}},"
                 "\"required\":[\"n\"]}");
    if (sc) good(sc, "{\"n\":2}");
    moe_json_schema_unref(sc);
    refused("{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"enum\":[1.0,1.5]}}", MOE_EINVAL,
            "enum value 1 is of type number, which 'type' does not allow");
}

/* Decimal texts near x: x with 0 to 31 digits after the point, one up and one down in the last. */
static int texts_near(double x, char out[][48])
{
    int n = 0;
    if (!isfinite(x) || fabs(x) > 1e33) return 0;
    for (int p = 0; p <= 31; p++) {
        char t[512];
        snprintf(t, sizeof(t), "%.*f", p, x);
        if (strlen(t) > 40) continue;
        for (int step = -1; step <= 1; step++) {
            char *u = out[n];
            snprintf(u, 48, "%s", t);
            bool neg = u[0] == '-', up = (step > 0) != neg;
            int i = (int)strlen(u) - 1;
            for (; step && i >= neg; i--) { /* one in the last digit, carried */
                if (u[i] == '.') continue;
                if (u[i] == (up ? '9' : '0')) {
                    u[i] = up ? '0' : '9';
                } else {
                    u[i] = (char)(u[i] + (up ? 1 : -1));
                    break;
                }
            }
            if (step && i < neg) continue; /* carried out of the number: left out */
            while (u[neg] == '0' && u[neg + 1] >= '0' && u[neg + 1] <= '9') memmove(u + neg, u + neg + 1, strlen(u + neg));
            n++;
        }
    }
    return n;
}

/* Whether t is a number the output can write: -?(0|[1-9][0-9]*)(.[0-9]+)?, at most 32 bytes. */
static bool writable(const char *t)
{
    size_t n = strlen(t), i = t[0] == '-';
    if (n > 32 || i == n || (t[i] == '0' && i + 1 < n && t[i + 1] != '.')) return false;
    while (i < n && t[i] >= '0' && t[i] <= '9') i++;
    if (i < n && t[i++] == '.') {
        if (i == n) return false;
        while (i < n && t[i] >= '0' && t[i] <= '9') i++;
    }
    return i == n && t[n - 1] != '.';
}

/* Random ranges near the limits of what is written (tiny steps, 32 digits, doubles a step apart): a
 * range compiles exactly when some number written near its ends, or between them, is in range (as
 * strtod reads it, as JSON Schema's validators do); numbers near its ends are taken exactly when in
 * range; and a walk never meets a dead end. */
static void test_bounds_exact(void)
{
    static const double ends[] = { 0, 1e-20, 1.2345678901234567e-20, 0.1, 1e32, 9e31, 1e31, 1, 5e-324, 1e-30,
                                   1.5e-30, 9.9e-31, 1e-29, 123456789.123456789, 1e15 + 0.5, 9007199254740993.0,
                                   3.25, 1e-15, 3e-14, 0.9999999999999999, 2.5e-30, 1e-300, 1e300, 6.02e23 };
    uint64_t rng = 77;
    int compiled = 0, refusals = 0, walks = 0, texts = 0;
    for (int it = 0; it < 1500; it++) {
        double b[2];
        for (int e = 0; e < 2; e++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            double x = ends[(rng >> 33) % MOE_ARRAY_LEN(ends)];
            int how = (int)((rng >> 20) % 5);
            b[e] = how == 1 ? -x : how == 2 ? nextafter(x, INFINITY) : how == 3 ? nextafter(x, -INFINITY) : x;
        }
        if (b[0] > b[1] && (rng >> 7) % 4) {
            double t = b[0];
            b[0] = b[1];
            b[1] = t;
        }
        bool lx = (rng >> 40) % 3 == 0, hx = (rng >> 44) % 3 == 0;
        char schema[256], lo[64], hi[64];
        snprintf(lo, sizeof(lo), "%.17g", b[0]);
        snprintf(hi, sizeof(hi), "%.17g", b[1]);
        double l = strtod(lo, NULL), h = strtod(hi, NULL);
        snprintf(schema, sizeof(schema), "{\"type\":\"array\",\"items\":{\"type\":\"number\",\"%s\":%s,\"%s\":%s}}",
                 lx ? "exclusiveMinimum" : "minimum", lo, hx ? "exclusiveMaximum" : "maximum", hi);
        char near[5 * 96][48];
        int n = 0;
        double around[5] = { l, h, nextafter(l, INFINITY), nextafter(h, -INFINITY), l / 2 + h / 2 };
        for (int a = 0; a < 5; a++) n += texts_near(around[a], near + n);
        static const char *const far[] = { "0", "99999999999999999999999999999999", "-9999999999999999999999999999999",
                                           "0.000000000000000000000000000001", "-0.00000000000000000000000000001" };
        bool some = false;
        for (int i = 0; i < n + (int)MOE_ARRAY_LEN(far); i++) {
            const char *t = i < n ? near[i] : far[i - n];
            double v = strtod(t, NULL);
            some |= writable(t) && (lx ? v > l : v >= l) && (hx ? v < h : v <= h);
        }
        struct moe_json_schema *sc = NULL;
        bool ok = moe_json_schema_parse(schema, strlen(schema), &sc) == MOE_OK;
        CHECK(ok == some, "%s: %s, yet a number written %s", schema, ok ? "compiled" : moe_last_error(),
              some ? "meets it" : "meets none near its ends");
        if (!ok) {
            refusals++;
            continue;
        }
        compiled++;
        for (int i = 0; i < n; i++) {
            if (!writable(near[i])) continue;
            double v = strtod(near[i], NULL);
            bool in = (lx ? v > l : v >= l) && (hx ? v < h : v <= h);
            char t[64];
            snprintf(t, sizeof(t), "[%.47s]", near[i]);
            CHECK((verdict(sc, t) == -1) == in, "%s: %s %s", schema, t, in ? "refused" : "taken");
            texts++;
        }
        for (int w = 0; w < 4; w++, walks++) {
            char num[64];
            bool whole = walk_number(sc, &rng, w % 2 ? 4 : 40, num, sizeof(num));
            double v = strtod(num, NULL);
            CHECK(whole, "%s: a dead end after '[%s'", schema, num);
            CHECK(!whole || ((lx ? v > l : v >= l) && (hx ? v < h : v <= h)), "%s: %s out of range", schema, num);
        }
        moe_json_schema_unref(sc);
    }
    CHECK(compiled > 800 && refusals > 100 && texts > 50000, "%d compiled, %d refused, %d texts", compiled, refusals,
          texts);
}

/* uniqueItems over an enum: each value at most once, and no ',' once every one is written. */
static void test_unique(void)
{
    struct moe_json_schema *sc = compile("{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\",1,10]},"
                                         "\"uniqueItems\":true}");
    if (sc) {
        good(sc, "[\"a\",\"b\",1,10]");
        good(sc, "[10,1]");
        good(sc, "[]");
        bad_at(sc, "[\"a\",\"", "a\"");
        bad_at(sc, "[1,1", "]");
        bad_at(sc, "[10,1", "0");
        bad_at(sc, "[\"a\",\"b\",1,10", ",");
    }
    moe_json_schema_unref(sc);
    sc = compile("{\"$defs\":{\"C\":{\"enum\":[\"red\",\"green\"]}},\"type\":\"array\",\"items\":"
                 "{\"$ref\":\"#/$defs/C\"},\"uniqueItems\":true,\"minItems\":2}");
    if (sc) {
        good(sc, "[\"green\",\"red\"]");
        bad_at(sc, "[\"green\"", "]");
    }
    moe_json_schema_unref(sc);
    sc = compile("{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"uniqueItems\":false}");
    if (sc) good(sc, "[\"x\",\"x\"]");
    moe_json_schema_unref(sc);
    refused("{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"uniqueItems\":true}", MOE_ENOTSUP,
            "'uniqueItems' is supported for arrays whose items are an enum");
    /* a value the enum gives twice is one value: written at most once */
    sc = compile("{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\",\"a\"]},\"uniqueItems\":true}");
    if (sc) {
        good(sc, "[\"b\",\"a\"]");
        bad_at(sc, "[\"a\",\"", "a\"");
        bad_at(sc, "[\"a\",\"b\"", ",");
    }
    moe_json_schema_unref(sc);
    sc = compile("{\"type\":\"array\",\"items\":{\"enum\":[1,1.0]},\"uniqueItems\":true}");
    if (sc) {
        good(sc, "[1]");
        bad_at(sc, "[1", ",");
    }
    moe_json_schema_unref(sc);
    /* 0 and -0.0 are one value too, written 0 */
    sc = compile("{\"type\":\"array\",\"items\":{\"enum\":[0,-0.0,2]},\"uniqueItems\":true}");
    if (sc) {
        good(sc, "[0,2]");
        bad_at(sc, "[", "-");
        bad_at(sc, "[0,2", ",");
    }
    moe_json_schema_unref(sc);
    refused("{\"type\":\"array\",\"items\":{\"enum\":[0,-0.0]},\"uniqueItems\":true,\"minItems\":2}", MOE_EINVAL,
            "the items have 1 value");
    /* 96 values of which 64 differ (0..31 twice, then 100..131): each of the 64 is written once, those
     * given past the 64th place too, and writing one of them leaves the others free (100 does not bar 0) */
    {
        char schema[1024], all[512];
        size_t k = snprintf(schema, sizeof(schema), "{\"type\":\"array\",\"uniqueItems\":true,\"items\":{\"enum\":[");
        size_t a = snprintf(all, sizeof(all), "[");
        for (int i = 0; i < 96; i++)
            k += snprintf(schema + k, sizeof(schema) - k, "%s%d", i ? "," : "", i < 64 ? i % 32 : i - 64 + 100);
        for (int i = 0; i < 64; i++)
            a += snprintf(all + a, sizeof(all) - a, "%s%d", i ? "," : "", i < 32 ? i : i - 32 + 100);
        snprintf(schema + k, sizeof(schema) - k, "]}}");
        snprintf(all + a, sizeof(all) - a, "]");
        sc = compile(schema);
        if (sc) {
            good(sc, "[0,100]");
            good(sc, "[131,31]");
            good(sc, all);
            bad_at(sc, "[100,5,10", "0");
        }
        moe_json_schema_unref(sc);
    }
    sc = compile("{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"const\":-0.0}}");
    if (sc) {
        good(sc, "[0]");
        bad_at(sc, "[", "-0");
    }
    moe_json_schema_unref(sc);
    refused("{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\",\"a\"]},\"uniqueItems\":true,\"minItems\":3}",
            MOE_EINVAL, "the items have 2 values");
    refused("{\"type\":\"array\",\"items\":{\"enum\":[1,2]},\"uniqueItems\":true,\"minItems\":3}", MOE_EINVAL,
            "the items have 2 values");
    refused("{\"type\":\"array\",\"uniqueItems\":1}", MOE_EINVAL, "true or false");
}

/* minProperties / maxProperties: '}' once there are enough keys, ',' while there is room, and no
 * optional key where the required ones still need the room. */
static void test_properties_count(void)
{
    struct moe_json_schema *sc = compile("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":"
                                         "{\"type\":\"integer\"},\"c\":{\"type\":\"integer\"}},\"required\":[\"c\"],"
                                         "\"minProperties\":2,\"maxProperties\":2}");
    if (sc) {
        good(sc, "{\"c\":1,\"a\":2}");
        good(sc, "{\"a\":1,\"c\":2}");
        good(sc, "{\"b\":1,\"c\":3}");
        bad_at(sc, "{\"c\":1", "}");
        bad_at(sc, "{\"a\":1,\"", "b");
        bad_at(sc, "{\"c\":1,\"a\":2", ",");
    }
    moe_json_schema_unref(sc);
    sc = compile("{\"type\":\"object\",\"maxProperties\":1}");
    if (sc) {
        good(sc, "{}");
        good(sc, "{\"x\":[1]}");
        bad_at(sc, "{\"x\":1", ",");
    }
    moe_json_schema_unref(sc);
    sc = compile("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"},\"minProperties\":2}");
    if (sc) {
        good(sc, "{\"x\":1,\"y\":2}");
        bad_at(sc, "{\"x\":1", "}");
        bad_at(sc, "{", "}");
    }
    moe_json_schema_unref(sc);
    refused("{\"type\":\"object\",\"properties\":{\"a\":{}},\"additionalProperties\":false,\"minProperties\":2}",
            MOE_EINVAL, "no object meets minProperties 2");
    refused("{\"type\":\"object\",\"properties\":{\"a\":{},\"b\":{}},\"required\":[\"a\",\"b\"],\"maxProperties\":1}",
            MOE_EINVAL, "with 2 required");
    refused("{\"type\":\"object\",\"minProperties\":3,\"maxProperties\":2}", MOE_EINVAL, "no object meets");
}

/* prefixItems (and draft 7's items as a list), allOf of one schema. */
static void test_tuples_allof(void)
{
    struct moe_json_schema *sc = compile("{\"type\":\"array\",\"prefixItems\":[{\"type\":\"integer\"},{\"type\":"
                                         "\"string\"}],\"items\":false,\"minItems\":2}");
    if (sc) {
        good(sc, "[1,\"a\"]");
        bad_at(sc, "[1,", "2");
        bad_at(sc, "[1", "]");
        bad_at(sc, "[1,\"a\"", ",");
        bad_at(sc, "[", "\"a\"");
    }
    moe_json_schema_unref(sc);
    sc = compile("{\"type\":\"array\",\"prefixItems\":[{\"const\":\"x\"}],\"items\":{\"type\":\"boolean\"}}");
    if (sc) {
        good(sc, "[]");
        good(sc, "[\"x\",true,false]");
        bad_at(sc, "[\"x\",", "\"x\"");
    }
    moe_json_schema_unref(sc);
    sc = compile("{\"type\":\"array\",\"items\":[{\"type\":\"boolean\"}]}");
    if (sc) {
        good(sc, "[true,1,\"x\"]");
        bad_at(sc, "[", "1");
    }
    moe_json_schema_unref(sc);
    sc = compile("{\"$defs\":{\"P\":{\"enum\":[\"a\",\"b\"]}},\"type\":\"object\",\"properties\":{\"p\":{\"allOf\":"
                 "[{\"$ref\":\"#/$defs/P\"}],\"description\":\"the p\"}},\"additionalProperties\":false}");
    if (sc) {
        good(sc, "{\"p\":\"b\"}");
        bad_at(sc, "{\"p\":\"", "c");
    }
    moe_json_schema_unref(sc);
}

/* pattern: a string's characters (escapes decoded) through the regular expression's automaton;
 * found anywhere unless anchored. */
static void test_patterns(void)
{
    struct moe_json_schema *sc = compile(
        "{\"type\":\"object\",\"properties\":{\"zip\":{\"type\":\"string\",\"pattern\":\"^[0-9]{5}(-[0-9]{4})?$\"},"
        "\"code\":{\"type\":\"string\",\"pattern\":\"[A-Z]{2}\"},\"word\":{\"type\":\"string\",\"pattern\":"
        "\"^\\\\w+$\",\"maxLength\":5},\"e\":{\"pattern\":\"^\xc3\xa9+\\\\.?$\"}},\"additionalProperties\":false}");
    if (!sc) return;
    good(sc, "{\"zip\":\"12345\"}");
    good(sc, "{\"zip\":\"12345-6789\"}");
    good(sc, "{\"code\":\"\\u00e9AB\\n\"}");   /* escapes are their characters */
    bad_at(sc, "{\"zip\":\"", "\\u0031");     /* no \\u escape of a character written as itself */
    good(sc, "{\"code\":\"xxABy\"}");
    good(sc, "{\"code\":\"AB\"}");
    good(sc, "{\"word\":\"ab_1\"}");
    good(sc, "{\"e\":\"\xc3\xa9\xc3\xa9.\"}");
    bad_at(sc, "{\"zip\":\"1234", "\"}");
    bad_at(sc, "{\"zip\":\"12", "a");
    bad_at(sc, "{\"zip\":\"12345", "6");
    bad_at(sc, "{\"zip\":\"12345-", "\"");
    good(sc, "{\"e\":\"\\u00e9\xc3\xa9\"}");
    bad_at(sc, "{\"e\":\"\\u0", "1");      /* U+00E9 does not lie in U+0100..U+01FF */
    bad_at(sc, "{\"code\":\"aB", "\"");
    bad_at(sc, "{\"word\":\"abcde", "f");
    bad_at(sc, "{\"word\":\"a", " ");
    bad_at(sc, "{\"e\":\"\xc3", "\xa8");   /* U+00E8: the lead byte could begin U+00E9 */
    bad_at(sc, "{\"e\":\"", "\xc4");        /* no character of U+0100..U+013F is é */
    bad_at(sc, "{\"e\":\"\xc3\xa9.", ".");
    moe_json_schema_unref(sc);

    static const struct {
        const char *pattern, *needle;
    } no[] = {
        { "(?=a)b", "lookaround" },
        { "^(?<=a)b", "lookaround" },
        { "(a)\\\\1", "back-references" },
        { "\\\\bfoo", "word boundaries" },
        { "a{2,1}", "out of order" },
        { "[z-a]", "out of order" },
        { "(a", "without its ')'" },
        { "a)", "without its '('" },
        { "^a|b$", "write '^(a|b)$'" },
        { "a{1001}", "above 1000" },
        { "[]", "empty class" },
        { "a**", "after a quantifier" },
        { "*a", "nothing to repeat" },
        { "x{", "not a count" },
        { "a^b", "start and end" },
        { "\\\\p{L}", "property escapes" },
        { "\\\\q", "unknown escape" },
        { "(a|b)*a(a|b){12}", "more than 2048 automaton states" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(no); i++) {
        char schema[256];
        snprintf(schema, sizeof(schema), "{\"type\":\"string\",\"pattern\":\"%s\"}", no[i].pattern);
        refused(schema, MOE_EINVAL, no[i].needle);
    }
    refused("{\"type\":\"string\",\"pattern\":5}", MOE_EINVAL, "'pattern' must be a string");
    refused("{\"type\":\"string\",\"pattern\":\"a[^\\\\s\\\\S]\"}", MOE_EINVAL, "matches no text");
    refused("{\"type\":\"string\",\"pattern\":\"a\",\"minLength\":300}", MOE_ENOTSUP, "beside 'pattern'");
    /* a long maxLength beside a pattern or format (pydantic's URLs: maxLength 2083) */
    sc = compile("{\"type\":\"string\",\"format\":\"uri\",\"minLength\":1,\"maxLength\":2083}");
    if (sc) good(sc, "\"https://example.com/a\"");
    moe_json_schema_unref(sc);
    sc = compile("{\"type\":\"string\",\"pattern\":\"^(abc){100,}$\",\"maxLength\":400}");
    if (sc) { /* 300, 303, ... 399 characters: after 399 of them, no room for another abc */
        char t[512] = "\"";
        for (int i = 0; i < 99; i++) strcat(t, "abc");
        strcat(t, "\"");
        bad(sc, t, 298); /* 297 characters: too few */
        t[strlen(t) - 1] = 0;
        for (int i = 99; i < 133; i++) strcat(t, "abc");
        strcat(t, "a");
        bad(sc, t, 400);
        t[strlen(t) - 1] = '"';
        good(sc, t);
    }
    moe_json_schema_unref(sc);
    refused("{\"type\":\"string\",\"pattern\":\"^(abc){100,}$\",\"maxLength\":299}", MOE_EINVAL,
            "no string of 0 to 299");
    /* a minLength above every match, no maxLength: refused, not a string that cannot be finished */
    refused("{\"type\":\"string\",\"pattern\":\"^a{2,4}$\",\"minLength\":5}", MOE_EINVAL,
            "no string of 5 or more characters");
    refused("{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"string\",\"pattern\":"
            "\"^[a$z]{2,4}-(\\\\d{1,3}|x1)$\",\"minLength\":9}}}", MOE_EINVAL, "no string of 9 or more");

    sc = compile("{\"type\":\"string\",\"pattern\":\"^$\"}"); /* an automaton without a range */
    if (sc) {
        good(sc, "\"\"");
        bad(sc, "\"a", 1);
    }
    moe_json_schema_unref(sc);
    {   /* a refused pattern of characters beyond ASCII: its quote in the message is cut between them */
        char bad[200] = "";
        for (int i = 0; i < 30; i++) strcat(bad, "\xe4\xb8\xad"); /* U+4E2D */
        strcat(bad, "(");
        struct moe_json_schema *b = NULL;
        CHECK(moe_json_schema_regex(bad, strlen(bad), &b) != MOE_OK &&
                  moe_utf8_valid(moe_last_error(), strlen(moe_last_error())),
              "the message quotes a character cut: %s", moe_last_error());
        moe_json_schema_unref(b);
    }
    {   /* an empty pattern is refused, as an empty choice text is; '()' and '|' match the empty text alone */
        struct moe_json_schema *e = NULL;
        CHECK(moe_json_schema_regex("", 0, &e) == MOE_EINVAL && !e && strstr(moe_last_error(), "pattern is empty"),
              "an empty pattern: %s", moe_last_error());
        REQUIRE(moe_json_schema_regex("()", 2, &e) == MOE_OK, "%s", moe_last_error());
        struct moe_json_state es;
        moe_json_init(&es, e);
        CHECK(moe_json_done(&es), "the empty text is not whole under '()'");
        moe_json_schema_unref(e);
    }
    REQUIRE(moe_json_schema_regex("|", 1, &sc) == MOE_OK, "%s", moe_last_error());
    struct moe_json_state s;
    moe_json_init(&s, sc);
    CHECK(moe_json_done(&s), "the empty text is not whole under '|'");
    moe_json_schema_unref(sc);

    /* a pattern and lengths together: only what meets both (here "abab") */
    sc = compile("{\"type\":\"string\",\"pattern\":\"^(ab)+$\",\"minLength\":3,\"maxLength\":5}");
    if (sc) {
        good(sc, "\"abab\"");
        bad_at(sc, "\"ab", "\"");
        bad_at(sc, "\"abab", "a");
    }
    moe_json_schema_unref(sc);
}

/* format: each known format as the regular expression of a subset of its RFC's texts. */
static void test_formats(void)
{
    static const struct {
        const char *format, *good[3], *bad_prefix, *bad_rest;
    } f[] = {
        { "date-time", { "2024-06-30T12:34:56Z", "2024-01-31T23:59:59.123+05:30", NULL }, "2024-02-", "30T" },
        { "date", { "1999-12-31", "2024-04-30", NULL }, "2024-1", "3-01" },
        { "time", { "23:59:59Z", "00:00:00.5-01:00", NULL }, "2", "4:00:00Z" },
        { "duration", { "P1Y2M3DT4H5M6S", "P3W", "PT0S" }, "PT", "\"" },
        { "uuid", { "123e4567-e89b-12d3-a456-426614174000", NULL, NULL }, "123", "E" },
        { "ipv4", { "192.168.0.1", "0.0.0.0", "255.255.255.255" }, "25", "6" },
        { "hostname", { "a-b.example", "localhost", NULL }, "", "-a" },
        { "email", { "x.y+z@mail.example.org", NULL, NULL }, "a@b", "\"" },
        { "uri", { "https://example.com/a?b=c#d", "urn:isbn:0451450523", NULL }, "http:", " " },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(f); i++) {
        char schema[128], t[128], p[128];
        snprintf(schema, sizeof(schema), "{\"type\":\"string\",\"format\":\"%s\"}", f[i].format);
        struct moe_json_schema *sc = compile(schema);
        if (!sc) continue;
        for (int k = 0; k < 3 && f[i].good[k]; k++) {
            snprintf(t, sizeof(t), "\"%s\"", f[i].good[k]);
            good(sc, t);
        }
        snprintf(p, sizeof(p), "\"%s", f[i].bad_prefix);
        bad_at(sc, p, f[i].bad_rest);
        moe_json_schema_unref(sc);
    }
    /* email: RFC 5321's dot-string local part (no dot first, last or twice in a row), of up to 64 characters */
    struct moe_json_schema *sc = compile("{\"type\":\"string\",\"format\":\"email\"}");
    if (sc) {
        good(sc, "\"a@b.c\"");
        good(sc, "\"a.b.c_d%e@b.c\"");
        bad_at(sc, "\"", ".");
        bad_at(sc, "\"a.", ".");
        bad_at(sc, "\"a.", "@");
        char t[128] = "\"";
        memset(t + 1, 'a', 64);
        t[65] = 0;
        bad_at(sc, t, "a");
        strcat(t, "@b.c\"");
        good(sc, t);
    }
    moe_json_schema_unref(sc);
    /* hostname: up to 253 characters in all (labels of up to 63) */
    sc = compile("{\"type\":\"string\",\"format\":\"hostname\"}");
    if (sc) {
        char t[256] = "\"";
        for (int i = 0; i < 4; i++) {
            memset(t + strlen(t), 'a', i < 3 ? 63 : 61);
            t[1 + 64 * i + (i < 3 ? 63 : 61)] = 0;
            if (i < 3) strcat(t, ".");
        }
        REQUIRE(strlen(t) == 254, "hostname of %zu", strlen(t) - 1);
        bad_at(sc, t, "a");
        bad_at(sc, t, ".");
        strcat(t, "\"");
        good(sc, t);
    }
    moe_json_schema_unref(sc);
    refused("{\"type\":\"string\",\"format\":\"hostname\",\"minLength\":254}", MOE_EINVAL,
            "minLength 254 is above 253, the most characters of format 'hostname'");
    refused("{\"type\":\"string\",\"format\":\"date\",\"pattern\":\"x\"}", MOE_ENOTSUP, "together");
    refused("{\"type\":\"string\",\"format\":\"date\",\"maxLength\":9}", MOE_EINVAL, "no string of 0 to 9");
}

/* Random walks through strings under a pattern and lengths: at every byte some byte continues the
 * value (the automaton and the lengths never leave a string that cannot be finished). */
static void test_pattern_walk(void)
{
    static const char *const patterns[] = {
        "^[ab]+-[0-9]{2,3}$", "a|b", "^(ab|ba)*$", "^\\\\w+@\\\\w+\\\\.(com|org)$", "\\\\d\\\\.\\\\d", "^\\\\u00e9?[a-z]{1,4}$",
    };
    static const char bytes[] = "ab0123456789-.@comrgdef\"\\u\xc3\xa9 "; /* hex digits enough for any escape */
    uint64_t rng = 7;
    int walks = 0, ended = 0;
    for (size_t k = 0; k < MOE_ARRAY_LEN(patterns); k++)
        for (int lo = 0; lo <= 6; lo += 3)
            for (int hi = lo; hi <= lo + 16; hi += 4) { /* lo + 16: no maxLength */
                char schema[256], max[32] = "";
                if (hi < lo + 16) snprintf(max, sizeof(max), ",\"maxLength\":%d", hi);
                snprintf(schema, sizeof(schema), "{\"type\":\"string\",\"pattern\":\"%s\",\"minLength\":%d%s}",
                         patterns[k], lo, max);
                struct moe_json_schema *sc = NULL;
                if (moe_json_schema_parse(schema, strlen(schema), &sc) != MOE_OK) { /* lengths no match has */
                    CHECK(strstr(moe_last_error(), "matches the pattern"), "%s: %s", schema, moe_last_error());
                    continue;
                }
                for (int w = 0; w < 8; w++, walks++) {
                    struct moe_json_state s;
                    moe_json_init(&s, sc);
                    char text[256];
                    size_t len = 0;
                    bool stuck = false;
                    while (!moe_json_done(&s) && len < 200) {
                        char ok[sizeof(bytes)];
                        int m = 0;
                        for (const char *b = bytes; *b; b++) {
                            struct moe_json_state c;
                            moe_json_copy(&c, &s);
                            if (moe_json_feed(&c, b, 1)) ok[m++] = *b;
                        }
                        if (m == 0) {
                            stuck = true;
                            break;
                        }
                        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                        char pick = ok[(rng >> 33) % (uint64_t)m];
                        moe_json_feed(&s, &pick, 1);
                        text[len++] = pick;
                    }
                    text[len] = 0;
                    CHECK(!stuck, "%s: a dead end after %s", schema, text);
                    ended += moe_json_done(&s);
                }
                moe_json_schema_unref(sc);
            }
    CHECK(walks > 200 && ended > walks / 2, "%d walks, %d ended", walks, ended);
}

/* A lookahead right after '^': pydantic's Decimal (not only signs and points), a required digit, a
 * text that is not blank. */
static void test_lookahead(void)
{
    struct moe_json_schema *sc = compile("{\"type\":\"object\",\"properties\":{"
                                         "\"d\":{\"type\":\"string\",\"pattern\":\"^(?!^[-+.]*$)[+-]?0*\\\\d*\\\\.?\\\\d*$\"},"
                                         "\"p\":{\"type\":\"string\",\"pattern\":\"^(?=.*[0-9])[a-z0-9]{4,8}$\"},"
                                         "\"t\":{\"type\":\"string\",\"pattern\":\"^(?!\\\\s*$).+\"}}}");
    if (!sc) return;
    good(sc, "{\"d\":\"1.5\",\"p\":\"abc1\",\"t\":\" a\"}");
    good(sc, "{\"d\":\"-0.25\"}");
    good(sc, "{\"d\":\"007\"}");
    good(sc, "{\"p\":\"1abcdefg\"}");
    bad_at(sc, "{\"d\":\"-", "\"");
    bad_at(sc, "{\"d\":\"", "\"");
    bad_at(sc, "{\"d\":\"+.", "\"");
    bad_at(sc, "{\"p\":\"abcd", "\"");
    bad_at(sc, "{\"p\":\"abcdefg", "h");
    bad_at(sc, "{\"t\":\"  ", "\"");
    moe_json_schema_unref(sc);
    refused("{\"type\":\"string\",\"pattern\":\"^(?=a)b\"}", MOE_EINVAL, "matches no text");
    refused("{\"type\":\"string\",\"pattern\":\"^(?=a\"}", MOE_EINVAL, "without its ')'");
    refused("{\"type\":\"string\",\"pattern\":\"x(?!a)\"}", MOE_EINVAL, "lookaround");
    /* guided_regex: the whole text, a lookahead at its start */
    const char *pat = "(?!no)[a-z]+";
    REQUIRE(moe_json_schema_regex(pat, strlen(pat), &sc) == MOE_OK, "%s", moe_last_error());
    CHECK(verdict(sc, "nope") == 1 && verdict(sc, "nay") == -2, "(?!no): %d %d", verdict(sc, "nope"), verdict(sc, "nay"));
    moe_json_schema_unref(sc);
}

/* A regular expression over raw text (vLLM's guided_regex): the whole output matches; it may end
 * wherever it matches, and is done where nothing can follow. */
static void test_regex_text(void)
{
    struct moe_json_schema *sc = NULL;
    const char *pat = "[0-9]{3}-[a-z]+( ok)?";
    REQUIRE(moe_json_schema_regex(pat, strlen(pat), &sc) == MOE_OK && sc, "%s", moe_last_error());
    struct moe_json_state s;
    moe_json_init(&s, sc);
    CHECK(!moe_json_may_end(&s), "the empty text matches");
    CHECK(moe_json_feed(&s, "123", 3) && !moe_json_may_end(&s), "123: refused, or may end");
    CHECK(moe_json_feed(&s, "-ab", 3) && moe_json_may_end(&s) && !moe_json_done(&s), "123-ab: may not end");
    CHECK(moe_json_feed(&s, " ok", 3) && moe_json_done(&s), "123-ab ok: not done");
    CHECK(verdict(sc, "12a") == 2 && verdict(sc, "123-ab o ") == 8 && verdict(sc, "123-ab ok!") == 9,
          "refused at the wrong byte");
    moe_json_schema_unref(sc);
    pat = "(yes|no)\\.";
    REQUIRE(moe_json_schema_regex(pat, strlen(pat), &sc) == MOE_OK && sc, "%s", moe_last_error());
    good(sc, "yes.");
    good(sc, "no.");
    bad(sc, "maybe", 0);
    moe_json_schema_unref(sc);
    /* anchors at its ends, as a schema's pattern writes them, say what the whole text says already */
    static const struct {
        const char *pat, *good, *bad;
        int at; /* the byte bad is refused at */
    } anchored[] = { { "^(yes|no)\\.$", "no.", "no.x", 3 }, { "^yes|no$", "yes", "noyes", 2 },
                     { "(yes|no)$", "yes", "yesno", 3 }, { "^(?!no)[a-z]+$", "nay", "no", 1 },
                     { "^\\^a\\$$", "^a$", "a", 0 } };
    for (size_t i = 0; i < MOE_ARRAY_LEN(anchored); i++) {
        pat = anchored[i].pat;
        CHECK(moe_json_schema_regex(pat, strlen(pat), &sc) == MOE_OK && sc, "%s: %s", pat, moe_last_error());
        if (!sc) continue;
        moe_json_init(&s, sc);
        CHECK(moe_json_feed(&s, anchored[i].good, strlen(anchored[i].good)) && moe_json_may_end(&s), "%s: %s refused",
              pat, anchored[i].good);
        moe_json_init(&s, sc);
        bool whole = moe_json_feed(&s, anchored[i].bad, strlen(anchored[i].bad)) && moe_json_may_end(&s);
        CHECK(!whole && verdict(sc, anchored[i].bad) == anchored[i].at, "%s: %s verdict %d, want %d", pat,
              anchored[i].bad, verdict(sc, anchored[i].bad), anchored[i].at);
        moe_json_schema_unref(sc);
    }
    CHECK(moe_json_schema_regex("(a", 2, &sc) == MOE_EINVAL && !sc && strstr(moe_last_error(), "without its ')'"),
          "a bad regex: %s", moe_last_error());
    CHECK(moe_json_schema_regex("a\xff", 2, &sc) == MOE_EINVAL && !sc && strstr(moe_last_error(), "not valid UTF-8"),
          "a pattern that is not UTF-8: %s", moe_last_error());
}

static bool toy_eos(const void *ud, int id)
{
    (void)ud;
    return id == 3;
}

/* The mask allows an end-of-sequence token exactly where raw text may end. */
static void test_regex_mask(void)
{
    static const char *toks[] = { "1", "2", "a", "</s>", "b" };
    struct moe_token_bytes tb;
    toy_vocab(toks, 5, &tb);
    struct moe_json_schema *sc = NULL;
    REQUIRE(moe_json_schema_regex("1+a?", 4, &sc) == MOE_OK, "%s", moe_last_error());
    float logits[5] = { 1, 2, 3, 4, 5 }, out[5];
    struct moe_json_state s;
    moe_json_init(&s, sc);
    int n = moe_json_mask(&s, &tb, logits, 5, toy_eos, NULL, out);
    CHECK(n == 1 && !isinf(out[0]) && isinf(out[3]), "start: %d allowed, eos %g", n, out[3]);
    moe_json_take(&s, &tb, 0);
    n = moe_json_mask(&s, &tb, logits, 5, toy_eos, NULL, out);
    CHECK(n == 3 && !isinf(out[0]) && !isinf(out[2]) && out[3] == 4 && isinf(out[1]), "after 1: %d allowed", n);
    moe_json_take(&s, &tb, 2);
    CHECK(moe_json_done(&s), "1a: not done");
    moe_json_schema_unref(sc);
    moe_token_bytes_free(&tb);
}

/* After a reasoning block: t fed byte by byte, the byte refused, -2 when the output may end before
 * t does, else -1 with *done: whether the value is then complete. */
static int think_refused_at(const struct moe_json_schema *sc, bool opened, const char *t, bool *done)
{
    struct moe_json_state s;
    moe_json_init_after_think(&s, sc, opened);
    for (size_t i = 0; t[i]; i++) {
        if (!moe_json_feed(&s, t + i, 1)) return (int)i;
        if (t[i + 1] && moe_json_may_end(&s)) return -2; /* complete before its end */
    }
    *done = moe_json_done(&s);
    return -1;
}

/* moe_json_init_after_think: "<think>" free text "</think>" whitespace, then the value; or the value
 * at once; a raw-text guide keeps the whole output. */
static void test_after_think(void)
{
    static const struct {
        bool opened;
        const char *text;
        int at;    /* refused at, -1 none */
        bool done; /* taken whole: the value is complete */
    } cases[] = {
        { false, "{\"a\":1}", -1, true },
        { false, "<think>hm, {x} </think>\n\n{\"a\":1}", -1, true },
        { false, "<think></think>{}", -1, true },
        { false, "<think>a</thin</think> {}", -1, true },     /* a mismatch restarts the close tag */
        { false, "<think>a<</think>{}", -1, true },           /* ... at a '<' */
        { false, "<think><think></think>{}", -1, true },      /* an inner open tag is text */
        { false, "<think>never closed {}", -1, false },
        { false, " <think>", 0, false },                      /* nothing before the tag or the value */
        { false, "<thimk>", 4, false },
        { false, "<think>x</think>\n\nx", 18, false },
        { false, "<think>x</think>[1]", 16, false },          /* the value is still an object */
        { false, "<think>x</think>{}{", -2, false },
        { true, "x</think>\n{}", -1, true },
        { true, "{}", -1, false },                            /* inside the block: text */
        { true, "</think>{\"a\":}", 13, false },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(cases); i++) {
        bool done = false;
        int at = think_refused_at(NULL, cases[i].opened, cases[i].text, &done);
        CHECK(at == cases[i].at && (at != -1 || done == cases[i].done), "%s%s: refused at %d (want %d), done %d",
              cases[i].opened ? "(opened) " : "", cases[i].text, at, cases[i].at, done);
    }
    /* whitespace between the block and the value: up to MOE_JSON_MAX_WS bytes, even for a compact
     * value (a tool call) */
    char t[128] = "<think>x</think>";
    size_t n = strlen(t);
    memset(t + n, '\n', MOE_JSON_MAX_WS);
    strcpy(t + n + MOE_JSON_MAX_WS, "{}");
    struct moe_json_schema *sc = compile("{\"type\":\"object\"}");
    if (sc) {
        moe_json_schema_compact(sc, true);
        bool done = false;
        CHECK(think_refused_at(sc, false, t, &done) == -1 && done, "%d line breaks before a compact value refused",
              MOE_JSON_MAX_WS);
        t[n + MOE_JSON_MAX_WS] = '\n';
        strcpy(t + n + MOE_JSON_MAX_WS + 1, "{}");
        CHECK(think_refused_at(sc, false, t, &done) == (int)(n + MOE_JSON_MAX_WS), "%d line breaks accepted",
              MOE_JSON_MAX_WS + 1);
        CHECK(think_refused_at(sc, false, "<think></think>{ }", &done) == 16, "compact: a space inside accepted");
        moe_json_schema_unref(sc);
    }
    /* a regular expression or a choice holds the whole output: no block */
    if (moe_json_schema_regex("<think>a", 8, &sc) == MOE_OK) {
        bool done = false;
        CHECK(think_refused_at(sc, false, "<think>a", &done) == -1 && done, "regex: <think>a refused");
        CHECK(think_refused_at(sc, false, "<think>b", &done) == 7, "regex: read as a reasoning block");
        moe_json_schema_unref(sc);
    }
}

static bool eos10(const void *ud, int id)
{
    (void)ud;
    return id == 10;
}

/* Masks around a reasoning block over a toy vocabulary. */
static void test_after_think_mask(void)
{
    static const char *toks[] = { "<think>", "<", "think>", "hello", "</think>", "</think>\n\n{", "x</think>]", "{",
                                  "}", "\n\n", "</s>", "</", "think>]", "", " <think>" };
    enum { V = (int)MOE_ARRAY_LEN(toks) };
    struct moe_token_bytes tb;
    toy_vocab(toks, V, &tb);
    float logits[V], out[V];
    for (int i = 0; i < V; i++) logits[i] = (float)i;
    struct {
        const int *path;
        int n_path;
        bool opened;
        const char *allowed; /* 'x' per allowed token */
    } steps[] = {
        { NULL, 0, false, "xx.....x......." },        /* "<think>", "<" or the value's "{" */
        { (const int[]){ 1 }, 1, false, "..x.........x.." }, /* "<": the rest of the open tag */
        { (const int[]){ 0 }, 1, false, "xxxxxx.xxx.xx.x" }, /* free text: not EOS, not an empty token, not "x</think>]" */
        { (const int[]){ 0, 3, 11 }, 3, false, "xxxxxx.xxx.x..x" }, /* "</" read: "think>" + "]" refused too */
        { (const int[]){ 4 }, 1, true, ".......x.x....." },   /* after the block: whitespace or the value */
        { (const int[]){ 5 }, 1, true, "........xx....." },   /* "{" read through the merged token */
    };
    for (size_t k = 0; k < MOE_ARRAY_LEN(steps); k++) {
        struct moe_json_state s;
        moe_json_init_after_think(&s, NULL, steps[k].opened);
        for (int j = 0; j < steps[k].n_path; j++) moe_json_take(&s, &tb, steps[k].path[j]);
        int n = moe_json_mask(&s, &tb, logits, V, eos10, NULL, out), m = 0;
        for (int i = 0; i < V; i++) {
            bool want = steps[k].allowed[i] == 'x';
            m += want;
            CHECK((isinf(out[i]) == 0) == want && (!want || out[i] == logits[i]), "step %zu: token %d ('%s') allowed %d",
                  k, i, toks[i], !isinf(out[i]));
        }
        CHECK(n == m, "step %zu: %d allowed, want %d", k, n, m);
    }
    moe_token_bytes_free(&tb);
}

/* Masks over a toy vocabulary. */
static void test_mask(void)
{
    static const char *toks[] = { "{", "}", "\"", "id", "\":", "7", ".5", " ", ",", "\"pets\":[]", "[]" };
    enum { V = (int)MOE_ARRAY_LEN(toks) };
    struct moe_token_bytes tb;
    toy_vocab(toks, V, &tb);
    struct moe_json_schema *sc = compile(owner);
    if (!sc) {
        moe_token_bytes_free(&tb);
        return;
    }
    float logits[V], out[V];
    for (int i = 0; i < V; i++) logits[i] = (float)i;
    struct moe_json_state s;
    moe_json_init(&s, sc);
    int n = moe_json_mask(&s, &tb, logits, V, NULL, NULL, out);
    CHECK(n == 1 && out[0] == 0.0f, "start: %d allowed", n);
    const int path[] = { 0, 2, 3, 4, 5 }; /* {"id":7 */
    for (size_t i = 0; i < MOE_ARRAY_LEN(path); i++) moe_json_take(&s, &tb, path[i]);
    n = moe_json_mask(&s, &tb, logits, V, NULL, NULL, out);
    /* more digits, whitespace or ',': not '}' (pets is required), not ".5" (an integer) */
    bool want[V] = { [5] = true, [7] = true, [8] = true };
    for (int i = 0; i < V; i++)
        CHECK((isinf(out[i]) != 0) == !want[i], "after {\"id\":7 token %d ('%s') allowed %d", i, toks[i], !isinf(out[i]));
    CHECK(n == 3, "after {\"id\":7: %d allowed", n);
    moe_json_take(&s, &tb, 8);
    moe_json_take(&s, &tb, 9);
    n = moe_json_mask(&s, &tb, logits, V, NULL, NULL, out);
    CHECK(!isinf(out[1]) && n == 3, "after the required properties: '}' allowed, %d in all", n);
    moe_json_take(&s, &tb, 1);
    CHECK(moe_json_done(&s), "not done after '}'");
    moe_json_schema_unref(sc);
    moe_token_bytes_free(&tb);
}

/* The bundled model's vocabulary: at every step of random walks through JSON text (any object, and
 * two schemas), moe_json_mask allows exactly the tokens that fed one by one continue the value. */
static void test_mask_vocab(void)
{
    struct mask_vocab mv;
    mask_vocab_open(&mv, 97);
    const struct moe_token_bytes *tb = &mv.tb;
    const int *ok = mv.ok;
    int V = mv.V;
    const char *schemas[] = { NULL, owner, "{\"type\":\"array\",\"items\":{\"type\":[\"string\",\"number\","
                              "\"null\"]},\"maxItems\":6}",
                              "{\"type\":\"array\",\"items\":{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"k\":"
                              "{\"const\":\"a\"},\"v\":{\"type\":\"integer\"}},\"required\":[\"k\",\"v\"]},{\"type\":"
                              "\"object\",\"properties\":{\"k\":{\"const\":\"b\"}},\"required\":[\"k\"],"
                              "\"additionalProperties\":false}]},\"maxItems\":4}",
                              "{\"type\":\"object\",\"properties\":{\"s\":{\"type\":\"string\",\"minLength\":2,\"maxLength\":5},"
                              "\"i\":{\"type\":\"integer\",\"minimum\":-20,\"maximum\":300,\"multipleOf\":3},\"x\":"
                              "{\"type\":\"number\",\"exclusiveMinimum\":0,\"maximum\":2.5},\"t\":{\"type\":\"array\","
                              "\"prefixItems\":[{\"type\":\"boolean\"},{\"type\":\"string\",\"maxLength\":1}],"
                              "\"items\":false}},\"additionalProperties\":false}",
                              "{\"type\":\"array\",\"items\":{\"anyOf\":[{\"type\":\"string\",\"pattern\":"
                              "\"^[a-z_]+(\\\\.[a-z]+)?\\\\(?$\",\"maxLength\":12},{\"type\":\"object\",\"properties\":"
                              "{\"k\":{\"type\":\"string\",\"pattern\":\"[0-9] \\\\w\",\"minLength\":4}}}]},\"maxItems\":4}" };
    uint64_t rng = 12345;
    int steps = 0, mismatches = 0;
    for (size_t k = 0; k < MOE_ARRAY_LEN(schemas); k++) {
        struct moe_json_schema *sc = schemas[k] ? compile(schemas[k]) : NULL;
        if (schemas[k] && !sc) continue;
        for (int walk = 0; walk < 4; walk++) {
            struct moe_json_state s;
            moe_json_init(&s, sc);
            for (int step = 0; step < 120 && !moe_json_done(&s); step++, steps++) {
                int n, m;
                mismatches += mask_check(&mv, &s, &n, &m);
                CHECK(n == m, "schema %zu walk %d step %d: %d allowed, %d by the reference", k, walk, step, n, m);
                if (m == 0) break;
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                int pick = ok[(rng >> 33) % (uint64_t)m];
                /* lean toward structure so walks finish: a token that closes or separates, half the time */
                for (int j = 0; j < m && (rng >> 20) & 1; j++) {
                    char c0 = tb->blob[tb->off[ok[j]]];
                    if (c0 == '}' || c0 == ']' || c0 == ',' || c0 == '"') {
                        pick = ok[j];
                        break;
                    }
                }
                moe_json_take(&s, tb, pick);
            }
        }
        moe_json_schema_unref(sc);
    }
    CHECK(mismatches == 0, "%d token verdicts differ from the reference over %d steps", mismatches, steps);
    CHECK(steps > 100, "only %d steps walked", steps);
    /* around a reasoning block: before it, inside it (part of the close tag read or not), after it */
    static const struct {
        bool opened;
        const char *fed;
    } think[] = { { false, "" }, { false, "<th" }, { false, "<think>" }, { true, "def f(x):\n  return x</" },
                  { true, "<</think>\n" }, { true, "</think>{\"a\": [1, " } };
    for (size_t k = 0; k < MOE_ARRAY_LEN(think); k++) {
        struct moe_json_state s;
        moe_json_init_after_think(&s, NULL, think[k].opened);
        REQUIRE(moe_json_feed(&s, think[k].fed, strlen(think[k].fed)), "%s refused", think[k].fed);
        int n, m, bad = mask_check(&mv, &s, &n, &m);
        CHECK(bad == 0 && n == m, "after %s: %d verdicts differ, %d allowed, %d by the reference", think[k].fed, bad,
              n, m);
        CHECK(m > 0 && (strcmp(think[k].fed, "<think>") || m > V / 2), "after %s: %d of %d allowed", think[k].fed,
              m, V);
    }
    mask_vocab_close(&mv);
}

int main(void)
{
    test_owner();
    test_literals();
    test_arrays_unions_refs();
    test_tagged();
    test_big_enum();
    test_compact();
    test_choice();
    test_refused();
    test_string_bounds();
    test_integer_bounds();
    test_number_bounds();
    test_bounds_walk();
    test_bounds_limits();
    test_integer_enum();
    test_bounds_exact();
    test_tuples_allof();
    test_unique();
    test_properties_count();
    test_patterns();
    test_pattern_walk();
    test_formats();
    test_regex_text();
    test_lookahead();
    test_regex_mask();
    test_mask();
    test_mask_vocab();
    test_after_think();
    test_after_think_mask();
    return t_result("test_engine_json_schema");
}
