/* NFC normalizer (model/tokenizer_nfc.c) against Python's unicodedata, as
 * written by tests/tokenizer/gen_nfc_vectors.py:
 *   - every line of tests/fixtures/tokenizer/nfc-vectors.jsonl normalizes to
 *     exactly its "nfc", and that is normalized to itself;
 *   - every code point U+0000..U+10FFFF (surrogates aside), alone and followed
 *     by U+0334 (which sends it through decomposition and recomposition), gives
 *     the NFC of tests/fixtures/tokenizer/nfc-codepoints.txt, and has its
 *     combining class;
 *   - moe_tok_nfc_quick never says "NFC" of a string that NFC changes;
 *   - edges: empty input, invalid bytes passed through, a long run of marks. */
#include "model/tokenizer_nfc.h"
#include "model/utf8.h"
#include "tests/test_util.h"

#include <jansson.h>

#define PROBE 0x334u

static void print_hex(const char *label, const char *s, size_t n)
{
    fprintf(stderr, "  %s:", label);
    for (size_t i = 0; i < n && i < 96; i++)
        fprintf(stderr, " %02x", (unsigned char)s[i]);
    fprintf(stderr, n > 96 ? " ...\n" : "\n");
}

/* NFC of s must be exactly want; also checks the NUL and that the quick check
 * does not call a string NFC that changes.  Returns whether it matched. */
static bool check_nfc(const char *what, const char *s, size_t n, const char *want, size_t want_n)
{
    char *out = NULL;
    size_t out_n = 0;
    enum moe_status st = moe_tok_nfc(s, n, &out, &out_n);
    bool ok = st == MOE_OK && out_n == want_n && !memcmp(out, want, want_n) && out[out_n] == '\0';
    CHECK(ok, "%s: %s", what, st ? moe_last_error() : "output differs");
    if (!ok && st == MOE_OK) {
        print_hex("in  ", s, n);
        print_hex("want", want, want_n);
        print_hex("got ", out, out_n);
    }
    bool same = want_n == n && !memcmp(s, want, n);
    CHECK(same || !moe_tok_nfc_quick(s, n), "%s: quick check says NFC, but NFC changes it", what);
    free(out);
    return ok;
}

static void test_vectors(void)
{
    char path[4096];
    char *buf;
    size_t len;
    const char *file = t_path(path, sizeof(path), "tests/fixtures/tokenizer/nfc-vectors.jsonl");
    REQUIRE(moe_read_file(file, &buf, &len, 16u << 20) == MOE_OK,
            "%s", moe_last_error());
    size_t n_lines = 0, n_ok = 0;
    const char *line;
    size_t ll;
    for (size_t pos = 0; t_next_line(buf, len, &pos, &line, &ll);) {
        if (!ll)
            continue;
        n_lines++;
        json_error_t jerr;
        json_t *o = json_loadb(line, ll, JSON_ALLOW_NUL, &jerr);
        REQUIRE(o, "nfc-vectors.jsonl line %zu: %s", n_lines, jerr.text);
        json_t *ji = json_object_get(o, "in"), *jn = json_object_get(o, "nfc");
        REQUIRE(json_is_string(ji) && json_is_string(jn), "nfc-vectors.jsonl line %zu: bad vector", n_lines);
        char what[64];
        snprintf(what, sizeof(what), "nfc-vectors.jsonl line %zu", n_lines);
        bool ok = check_nfc(what, json_string_value(ji), json_string_length(ji), json_string_value(jn),
                            json_string_length(jn));
        snprintf(what, sizeof(what), "nfc-vectors.jsonl line %zu (nfc again)", n_lines);
        ok &= check_nfc(what, json_string_value(jn), json_string_length(jn), json_string_value(jn),
                        json_string_length(jn));
        n_ok += ok;
        json_decref(o);
    }
    CHECK(n_lines >= 3000, "expected >= 3000 vectors, read %zu", n_lines);
    printf("vectors: %zu/%zu match\n", n_ok, n_lines);
    free(buf);
}

/* One "n"/"p" line of nfc-codepoints.txt: its code point and expected UTF-8. */
struct cp_entry {
    uint32_t cp;
    char s[40];
    size_t n;
};

static void test_code_points(void)
{
    char path[4096];
    char *buf;
    size_t len;
    const char *file = t_path(path, sizeof(path), "tests/fixtures/tokenizer/nfc-codepoints.txt");
    REQUIRE(moe_read_file(file, &buf, &len, 16u << 20) == MOE_OK,
            "%s", moe_last_error());
    uint8_t *ccc = calloc(0x110000, 1);
    struct cp_entry *nl = calloc(4096, sizeof(*nl)), *pl = calloc(4096, sizeof(*pl));
    REQUIRE(ccc && nl && pl, "oom");
    size_t n_n = 0, n_p = 0, n_c = 0;
    for (char *line = buf, *end; line < buf + len; line = end + 1) {
        end = memchr(line, '\n', (size_t)(buf + len - line));
        REQUIRE(end, "nfc-codepoints.txt: last line unterminated");
        *end = '\0';
        if (line[0] == '#' || line[0] == '\0')
            continue;
        char *p;
        if (line[0] == 'c') {
            unsigned long lo = strtoul(line + 1, &p, 16), hi = strtoul(p, &p, 16), k = strtoul(p, &p, 10);
            REQUIRE(lo <= hi && hi < 0x110000 && k > 0 && k < 256 && *p == '\0', "bad line: %s", line);
            for (unsigned long cp = lo; cp <= hi; cp++)
                ccc[cp] = (uint8_t)k;
            n_c++;
            continue;
        }
        REQUIRE(line[0] == 'n' || line[0] == 'p', "bad line: %s", line);
        struct cp_entry *e = line[0] == 'n' ? &nl[n_n++] : &pl[n_p++];
        REQUIRE(n_n < 4096 && n_p < 4096, "too many lines");
        e->cp = (uint32_t)strtoul(line + 1, &p, 16);
        while (*p) {
            unsigned long x = strtoul(p, &p, 16);
            REQUIRE(x < 0x110000 && e->n + 4 <= sizeof(e->s), "bad line: %s", line);
            e->n += moe_utf8_put((uint32_t)x, e->s + e->n);
        }
    }
    REQUIRE(n_c > 300 && n_n > 1000 && n_p > 100, "nfc-codepoints.txt: %zu/%zu/%zu lines", n_c, n_n, n_p);

    size_t in_n = 0, ip = 0, n_bad = 0;
    for (uint32_t cp = 0; cp < 0x110000; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF) {
            CHECK(moe_tok_nfc_ccc(cp) == 0, "ccc of surrogate U+%04X", cp);
            continue;
        }
        int before = t_failures;
        CHECK(moe_tok_nfc_ccc(cp) == ccc[cp], "ccc(U+%04X) = %u, want %u", cp, moe_tok_nfc_ccc(cp), ccc[cp]);

        char s[8], want[48], what[48];
        size_t n = moe_utf8_put(cp, s), want_n;
        if (in_n < n_n && nl[in_n].cp == cp) {
            memcpy(want, nl[in_n].s, nl[in_n].n);
            want_n = nl[in_n++].n;
        } else {
            memcpy(want, s, n);
            want_n = n;
        }
        snprintf(what, sizeof(what), "NFC(U+%04X)", cp);
        check_nfc(what, s, n, want, want_n);

        /* with the probe: NFC(cp) U+0334 unless listed */
        size_t n2 = n + moe_utf8_put(PROBE, s + n);
        if (ip < n_p && pl[ip].cp == cp) {
            memcpy(want, pl[ip].s, pl[ip].n);
            want_n = pl[ip++].n;
        } else {
            want_n += moe_utf8_put(PROBE, want + want_n);
        }
        snprintf(what, sizeof(what), "NFC(U+%04X U+%04X)", cp, PROBE);
        check_nfc(what, s, n2, want, want_n);
        snprintf(what, sizeof(what), "NFC(NFC(U+%04X U+%04X))", cp, PROBE);
        check_nfc(what, want, want_n, want, want_n);
        if (t_failures != before && ++n_bad >= 20) {
            fprintf(stderr, "code points: stopping after 20 bad ones\n");
            break;
        }
    }
    CHECK(in_n == n_n && ip == n_p, "not every listed code point was reached (%zu/%zu, %zu/%zu)", in_n, n_n,
          ip, n_p);
    CHECK(moe_tok_nfc_ccc(0x110000) == 0 && moe_tok_nfc_ccc(UINT32_MAX) == 0, "ccc beyond U+10FFFF");
    printf("code points: 0x10F800 checked, %zu change alone, %zu change with U+%04X\n", n_n, n_p, PROBE);
    free(ccc);
    free(nl);
    free(pl);
    free(buf);
}

static void test_edges(void)
{
    static const char ascii[] = "def f(x):\n    return x * 2  # plain ASCII, returned as a copy\n";
    check_nfc("ascii", ascii, sizeof(ascii) - 1, ascii, sizeof(ascii) - 1);
    CHECK(moe_tok_nfc_quick(ascii, sizeof(ascii) - 1), "quick check of ASCII");
    CHECK(moe_tok_nfc_quick("caf\xc3\xa9 \xc3\xbf", 8), "quick check below U+0300");
    CHECK(!moe_tok_nfc_quick("e\xcc\x81", 3), "quick check of U+0301 (Maybe)");
    CHECK(moe_tok_nfc_quick("\xd8\xa8\xd9\x8e\xd9\x91", 6), "quick check of Arabic with marks in order");
    check_nfc("empty", "", 0, "", 0);

    /* Bytes that are not UTF-8 stay, and nothing composes across them. */
    check_nfc("invalid between", "e\xff\xcc\x81", 4, "e\xff\xcc\x81", 4);
    check_nfc("invalid after", "e\xcc\x81\xff", 4, "\xc3\xa9\xff", 3);
    check_nfc("truncated", "e\xcc\x81\xcc", 4, "\xc3\xa9\xcc", 3);
    check_nfc("surrogate bytes", "\xed\xa0\x80\xcc\x81", 5, "\xed\xa0\x80\xcc\x81", 5);

    /* A long run of alternating marks (class 220 U+0316, class 230 U+0301):
     * sorted stably, then the first U+0301 composes with the 'a'. */
    enum { PAIRS = 50000 };
    size_t n = 1 + 4 * PAIRS;
    char *in = malloc(n), *want = malloc(n);
    REQUIRE(in && want, "oom");
    in[0] = 'a';
    for (size_t i = 0; i < PAIRS; i++)
        memcpy(in + 1 + 4 * i, "\xcc\x81\xcc\x96", 4);
    size_t w = moe_utf8_put(0xE1, want);
    for (size_t i = 0; i < PAIRS; i++)
        w += moe_utf8_put(0x316, want + w);
    for (size_t i = 1; i < PAIRS; i++)
        w += moe_utf8_put(0x301, want + w);
    uint64_t steps = moe_tok_steps;
    check_nfc("long run of marks", in, n, want, w);
    steps = moe_tok_steps - steps;
    /* sorted in one pass (counting sort): an insertion sort would move about PAIRS^2 / 2 marks */
    CHECK(steps <= 2 * (uint64_t)PAIRS, "long run of %d marks: %llu reordering moves", 2 * PAIRS,
          (unsigned long long)steps);

    /* The segment in the middle of a long ASCII text: copied around exactly. */
    memset(in, 'x', n);
    memcpy(in + n / 2, "A\xcc\x8a", 3);
    memcpy(want, in, n / 2);
    memcpy(want + n / 2, "\xc3\x85", 2);
    memcpy(want + n / 2 + 2, in + n / 2 + 3, n - n / 2 - 3);
    check_nfc("mark inside ASCII", in, n, want, n - 1);
    free(in);
    free(want);
}

int main(void)
{
    printf("NFC tables: Unicode %s\n", moe_nfc_unicode_version);
    CHECK(!strcmp(moe_nfc_unicode_version, "14.0.0"), "tables from Unicode %s", moe_nfc_unicode_version);
    test_edges();
    test_vectors();
    test_code_points();
    return t_result("test_tokenizer_nfc");
}
