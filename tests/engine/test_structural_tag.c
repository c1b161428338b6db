/* Structural tags (vLLM's structural_tag) through the output recognizer: free text in which a
 * trigger commits the text to a structure (its begin, a JSON value of its schema, its end), then free
 * text again; what compiles and what is refused by name; texts accepted and refused at the byte
 * where they go wrong; the end of sequence allowed in free text only; and on a toy and the bundled
 * model's vocabulary, masks equal to feeding every token on its own. */
#include "common/moe.h"
#include "engine/json_guide.h"
#include "tests/engine/mask_ref.h"
#include "tests/test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *weather =
    "{\"type\":\"structural_tag\",\"structures\":[{\"begin\":\"<function=get_weather>\",\"schema\":{\"type\":"
    "\"object\",\"properties\":{\"city\":{\"enum\":[\"Paris\",\"Oslo\"]}},\"required\":[\"city\"],"
    "\"additionalProperties\":false},\"end\":\"</function>\"},{\"begin\":\"<function=get_time>\",\"schema\":{\"type\":"
    "\"object\",\"properties\":{\"tz\":{\"type\":\"string\",\"maxLength\":8}}},\"end\":\"</function>\"}],"
    "\"triggers\":[\"<function=\"]}";

static struct moe_json_schema *tags(const char *text)
{
    struct moe_json_schema *sc = NULL;
    REQUIRE(moe_json_schema_tags(text, strlen(text), &sc) == MOE_OK && sc, "%s: %s", text, moe_last_error());
    REQUIRE(moe_json_schema_raw(sc), "a structural tag's output is not raw text");
    return sc;
}

/* The byte at which t is refused; -2 when all is taken and the output may end there, -3 when not. */
static int verdict(const struct moe_json_schema *sc, const char *t)
{
    int v = feed_verdict(sc, t, strlen(t));
    CHECK(v != -1, "'%s': done (a structural tag's text can always go on)", t);
    return v;
}

static void refused(const char *text, const char *needle)
{
    struct moe_json_schema *sc = NULL;
    enum moe_status st = moe_json_schema_tags(text, strlen(text), &sc);
    CHECK(st != MOE_OK && !sc && strstr(moe_last_error(), needle), "'%s': status %d, '%s', want '%s'", text, st,
          moe_last_error(), needle);
}

static void test_compile(void)
{
    refused("{\"structures\":[],\"triggers\":[\"<f\"]}", "'structures' must be an array of 1 to 64");
    refused("{\"structures\":[{\"begin\":\"<f>\",\"schema\":{},\"end\":\"\"}]}", "'triggers' must be an array");
    refused("{\"structures\":[{\"begin\":\"<g>\",\"schema\":{\"type\":\"object\"},\"end\":\"\"}],\"triggers\":[\"<f\"]}",
            "structures[0]'s begin '<g>' starts with no trigger");
    refused("{\"structures\":[{\"begin\":\"<f>\",\"schema\":{\"type\":\"object\"},\"end\":\"\"}],\"triggers\":[\"<f\","
            "\"<g\"]}", "trigger '<g' begins no structure");
    refused("{\"structures\":[{\"begin\":\"<f\",\"schema\":{\"type\":\"object\"},\"end\":\"\"},{\"begin\":\"<fa\","
            "\"schema\":{\"type\":\"object\"},\"end\":\"\"}],\"triggers\":[\"<f\"]}", "begins structures[1]'s too");
    refused("{\"structures\":[{\"begin\":\"<f>\",\"end\":\"\"}],\"triggers\":[\"<f\"]}", "needs a 'schema'");
    refused("{\"structures\":[{\"begin\":\"<f>\",\"schema\":{\"not\":{}},\"end\":\"\"}],\"triggers\":[\"<f\"]}",
            "structures[0]");
    refused("{\"structures\":[{\"begin\":\"<f>\",\"schema\":{\"type\":\"object\"}}],\"triggers\":[\"<f\"]}",
            "needs a string 'end'");
    refused("{\"type\":\"structural_tag\",\"format\":{\"type\":\"triggered_tags\"}}", "the 'format' form");
    refused("{\"type\":\"json\"}", "'type' must be \"structural_tag\"");
    refused("[1]", "must be an object");
    refused("{\"structures\":", "not JSON");
}

static void test_texts(void)
{
    struct moe_json_schema *sc = tags(weather);
    CHECK(verdict(sc, "") == -2 && verdict(sc, "The weather, then:") == -2, "free text may end");
    CHECK(verdict(sc, "x <function=get_weather>{\"city\": \"Oslo\"}</function> and <function=get_time>{}\n"
                      "</function>!") == -2, "two structures in free text");
    CHECK(verdict(sc, "<funct") == -2 && verdict(sc, "<function=get") == -3, "a trigger's beginning is free text; "
                                                                             "a whole trigger commits");
    CHECK(verdict(sc, "<func<function=get_time>{\"tz\":\"UTC\"}</function>") == -2, "a trigger after a false start");
    CHECK(verdict(sc, "<function=set_x>") == 10, "no structure begins <function=s: refused at 10 (%d)",
          verdict(sc, "<function=set_x>"));
    CHECK(verdict(sc, "<function=get_weather>{\"city\": \"Rome\"}") == 32, "a value the schema refuses: at 32 (%d)",
          verdict(sc, "<function=get_weather>{\"city\": \"Rome\"}"));
    CHECK(verdict(sc, "<function=get_weather>{\"city\":\"Paris\"}</fn>") == 41, "the wrong end: at 41 (%d)",
          verdict(sc, "<function=get_weather>{\"city\":\"Paris\"}</fn>"));
    CHECK(verdict(sc, "<function=get_weather>{\"city\":\"Paris\"}") == -3, "inside a structure the output may not end");
    moe_json_schema_unref(sc);
    /* overlapping triggers; a begin that is its trigger; an empty end */
    sc = tags("{\"structures\":[{\"begin\":\"@@\",\"schema\":{\"type\":\"array\",\"maxItems\":1},\"end\":\"\"}],"
              "\"triggers\":[\"@@\"]}");
    CHECK(verdict(sc, "a@b @@[1] c @@[]") == -2 && verdict(sc, "@@x") == 2 && verdict(sc, "@@@") == 2,
          "a begin that is its trigger");
    moe_json_schema_unref(sc);
}

static bool toy_eos(const void *ud, int id)
{
    (void)ud;
    return id == 0;
}

static void test_mask_toy(void)
{
    static const char *toks[] = { "</s>", "hi ", "<func", "tion=", "get_weather>", "get_time>", "{\"city\":",
                                  " \"Paris\"", "}", "</function>", "<function=get_time>{}", "x<", "set>", "\n",
                                  "<function=s", "a<function=get_time>{}</function>b" };
    enum { N = sizeof(toks) / sizeof(toks[0]) };
    struct moe_token_bytes tb;
    toy_vocab(toks, N, &tb);
    struct moe_json_schema *sc = tags(weather);
    static const char *prefix[] = { "", "hi x<", "<func", "<function=", "<function=get_weather>{\"city\": \"Paris\"",
                                    "<function=get_weather>{\"city\":\"Oslo\"}", "<function=get_time>{}</function>" };
    float logits[N], out[N];
    for (int i = 0; i < N; i++) logits[i] = (float)(i + 1);
    for (size_t k = 0; k < MOE_ARRAY_LEN(prefix); k++) {
        struct moe_json_state s, c;
        moe_json_init(&s, sc);
        REQUIRE(moe_json_feed(&s, prefix[k], strlen(prefix[k])), "'%s' refused", prefix[k]);
        int n = moe_json_mask(&s, &tb, logits, N, toy_eos, NULL, out), m = 0, differ = 0;
        for (int id = 1; id < N; id++) {
            moe_json_copy(&c, &s);
            bool want = moe_json_feed(&c, tb.blob + tb.off[id], tb.off[id + 1] - tb.off[id]);
            m += want;
            differ += want != (out[id] == logits[id]);
        }
        bool eos = moe_json_may_end(&s);
        CHECK(differ == 0 && n == m + eos && (out[0] == logits[0]) == eos,
              "after '%s': %d differ, %d allowed, %d fed, end of sequence %d", prefix[k], differ, n, m, eos);
    }
    moe_json_schema_unref(sc);
    moe_token_bytes_free(&tb);
}

/* Random walks on the bundled vocabulary with the trigger "(" (which code writes often) opening a
 * structure of one small object and ")": the mask equals feeding every token on its own at every
 * step, inside structures and out. */
static void test_mask_vocab(void)
{
    struct mask_vocab mv;
    mask_vocab_open(&mv, 83);
    struct moe_json_schema *sc = tags("{\"structures\":[{\"begin\":\"(\",\"schema\":{\"type\":\"object\","
                                      "\"properties\":{\"n\":{\"type\":\"string\",\"maxLength\":4}},\"required\":"
                                      "[\"n\"],\"additionalProperties\":false},\"end\":\")\"}],\"triggers\":[\"(\"]}");
    uint64_t rng = 4242;
    int steps = 0, differ = 0, inside = 0;
    for (int walk = 0; walk < 4; walk++) {
        struct moe_json_state s;
        moe_json_init(&s, sc);
        for (int step = 0; step < 60; step++, steps++) {
            int n, m;
            differ += mask_check(&mv, &s, &n, &m);
            CHECK(n == m, "walk %d step %d: %d allowed, %d by the reference", walk, step, n, m);
            if (m == 0) break;
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            int pick = mv.ok[(rng >> 33) % (uint64_t)m];
            bool in = !moe_json_may_end(&s);
            for (int j = 0; j < m && (rng >> 21) % 3 == 0; j++) { /* into a structure, and through it */
                char c0 = mv.tb.blob[mv.tb.off[mv.ok[j]]];
                if ((!in && c0 == '(') || (in && (c0 == '}' || c0 == '"' || c0 == ')'))) {
                    pick = mv.ok[j];
                    break;
                }
            }
            moe_json_take(&s, &mv.tb, pick);
            inside += !moe_json_may_end(&s);
        }
    }
    CHECK(differ == 0, "%d token verdicts differ from the reference over %d steps", differ, steps);
    CHECK(steps > 100 && inside > 10, "only %d steps walked, %d inside a structure", steps, inside);
    moe_json_schema_unref(sc);
    mask_vocab_close(&mv);
}

int main(void)
{
    test_compile();
    test_texts();
    test_mask_toy();
    test_mask_vocab();
    return t_failures ? T_FAIL : T_PASS;
}
