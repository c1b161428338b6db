/* The chat-template interpreter against Jinja2: every line of
 * tests/fixtures/jinja/vectors.jsonl (gen_jinja_vectors.py: templates
 * rendered by Jinja2 as the Hugging Face library sets it up) renders to the
 * same text, or fails where Jinja2 raised.  Then what is refused at compile
 * time, the bounds, and a render shared by two threads. */
#include "model/jinja.h"
#include "tests/test_util.h"

#include <pthread.h>

static bool check_vector(json_t *v, size_t line)
{
    const char *name = json_string_value(json_object_get(v, "name"));
    json_t *tmpl = json_object_get(v, "template"), *out = json_object_get(v, "out");
    struct moe_jinja *t = moe_jinja_compile(json_string_value(tmpl), json_string_length(tmpl));
    if (!t && out) {
        CHECK(false, "line %zu (%s): compile failed: %s", line, name, moe_last_error());
        return false;
    }
    char *text = NULL;
    size_t len = 0;
    enum moe_status st = t ? moe_jinja_render(t, json_object_get(v, "vars"), &text, &len) : MOE_EFORMAT;
    bool ok;
    if (out) {
        ok = st == MOE_OK && len == json_string_length(out) && !memcmp(text, json_string_value(out), len);
        CHECK(ok, "line %zu (%s): rendered\n  \"%s\"\nnot\n  \"%s\"\n  (%s)", line, name, text ? text : "",
              json_string_value(out), st ? moe_last_error() : "ok");
    } else {
        ok = st != MOE_OK;
        CHECK(ok, "line %zu (%s): rendered \"%.80s\" where Jinja2 raised %s", line, name, text ? text : "",
              json_string_value(json_object_get(v, "error")));
    }
    free(text);
    moe_jinja_free(t);
    return ok;
}

static void check_refused(const char *src, enum moe_status want, const char *needle)
{
    struct moe_jinja *t = moe_jinja_compile(src, strlen(src));
    CHECK(!t && moe_last_status() == want && strstr(moe_last_error(), needle), "\"%s\": %s", src,
          t ? "compiled" : moe_last_error());
    moe_jinja_free(t);
}

static void check_render_fails(const char *src, enum moe_status want, const char *needle)
{
    struct moe_jinja *t = moe_jinja_compile(src, strlen(src));
    REQUIRE(t, "\"%s\": %s", src, moe_last_error());
    char *out = NULL;
    size_t n = 0;
    enum moe_status st = moe_jinja_render(t, NULL, &out, &n);
    CHECK(st == want && !out && strstr(moe_last_error(), needle), "\"%.60s\": status %d, %s", src, st,
          st ? moe_last_error() : "rendered");
    free(out);
    moe_jinja_free(t);
}

struct shared {
    const struct moe_jinja *t;
    json_t *vars;
    char *out;
};

static void *render_thread(void *p)
{
    struct shared *s = p;
    size_t n;
    if (moe_jinja_render(s->t, s->vars, &s->out, &n) != MOE_OK)
        s->out = NULL;
    return NULL;
}

int main(void)
{
    char path[4096];
    char *buf;
    size_t len;
    REQUIRE(moe_read_file(t_path(path, sizeof(path), "tests/fixtures/jinja/vectors.jsonl"), &buf, &len, 4u << 20) ==
                MOE_OK, "%s", moe_last_error());
    size_t line = 0, n_ok = 0;
    const char *text;
    size_t tl;
    for (size_t pos = 0; t_next_line(buf, len, &pos, &text, &tl);) {
        line++;
        json_error_t jerr;
        json_t *v = json_loadb(text, tl, 0, &jerr);
        REQUIRE(v, "line %zu: %s", line, jerr.text);
        n_ok += check_vector(v, line);
        json_decref(v);
    }
    free(buf);
    printf("%zu of %zu templates render as Jinja2 does\n", n_ok, line);
    CHECK(line >= 80, "the vector file is incomplete (%zu lines)", line);

    check_refused("{% include 'x' %}", MOE_ENOTSUP, "statement 'include'");
    check_refused("{{ x | urlize }}", MOE_ENOTSUP, "filter 'urlize'");
    check_refused("{{ x is foo }}", MOE_ENOTSUP, "test 'foo'");
    /* random is left out on purpose, and says why */
    check_refused("{{ messages | random }}", MOE_ENOTSUP, "filter 'random' is not supported: it picks an item at random");
    check_refused("{% filter random %}ab{% endfilter %}", MOE_ENOTSUP, "'random' is not supported: it picks");
    check_refused("{{ x is defined is defined }}", MOE_EFORMAT, "tests cannot be chained");
    check_refused("{{ f(a=1, a=2) }}", MOE_EFORMAT, "keyword argument 'a' repeated");
    check_refused("{% macro m(a, b=1, c) %}{% endmacro %}", MOE_EFORMAT, "'c' without a default follows");
    check_refused("{{ x\xf0\x9f\x98\x80 }}", MOE_EFORMAT, "unexpected character '\xf0\x9f\x98\x80' in a tag");
    check_refused("{% if x %}", MOE_EFORMAT, "missing {% endif %}");
    check_refused("{% endfor %}", MOE_EFORMAT, "unexpected {% endfor %}");
    check_refused("{{ 'abc }}", MOE_EFORMAT, "unterminated string");
    check_refused("{{ x", MOE_EFORMAT, "not closed");
    check_refused("{# x", MOE_EFORMAT, "comment is not closed");
    check_refused("{{ 1 + }}", MOE_EFORMAT, "expected an expression");
    check_refused("{{ [1 2] }}", MOE_EFORMAT, "expected ',', found the number 2");
    check_refused("a\n\n{{ ) }}", MOE_EFORMAT, "line 3");
    check_refused("{% for x in y recursive if x %}{% endfor %}", MOE_EFORMAT, "expected '%}'");
    check_refused("{% for x in y %}\n{% set loop = 1 %}{% endfor %}", MOE_EFORMAT, "line 2: cannot assign to 'loop'");
    check_refused("{% with a, b = (1, 2) %}{% endwith %}", MOE_ENOTSUP, "several names");
    check_refused("{% with a = 1 %}", MOE_EFORMAT, "missing {% endwith %}");
    check_refused("{% endwith %}", MOE_EFORMAT, "unexpected {% endwith %}");
    check_refused("{% filter urlize %}x{% endfilter %}", MOE_ENOTSUP, "filter 'urlize'");
    check_refused("{% filter upper is defined %}x{% endfilter %}", MOE_EFORMAT, "expected '%}'");
    check_refused("{% filter upper %}x{% endfor %}", MOE_EFORMAT, "unexpected {% endfor %}");
    check_refused("{% call m %}x{% endcall %}", MOE_EFORMAT, "needs a call");
    check_refused("{% call m() %}x", MOE_EFORMAT, "missing {% endcall %}");
    check_refused("\xff", MOE_EFORMAT, "UTF-8");
    check_refused("{{ '\\N{BULLET}' }}", MOE_ENOTSUP, "\\N{...} escapes are not supported");
    char deep[400];
    size_t k = 0;
    for (int i = 0; i < 100; i++) deep[k++] = '(';
    deep[k++] = '1';
    for (int i = 0; i < 100; i++) deep[k++] = ')';
    deep[k] = 0;
    char tmpl[512];
    snprintf(tmpl, sizeof(tmpl), "{{ %s }}", deep);
    check_refused(tmpl, MOE_ENOTSUP, "nested deeper");

    check_render_fails("{% for i in range(2000) %}{% for j in range(2000) %}{{ i if j < 0 }}{% endfor %}{% endfor %}"
                       "{% for i in range(2000) %}{% for j in range(2000) %}{{ i if j < 0 }}{% endfor %}{% endfor %}",
                       MOE_ERANGE, "steps");
    check_render_fails("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", MOE_ERANGE, "output longer");
    /* finding a long string in a longer one takes time linear in both (the failure after it is reached) */
    check_render_fails("{{ ('a' * 1000000 + 'b') in ('a' * 3000000) }}{{ undefined_name | abs }}", MOE_EINVAL,
                       "abs: an undefined is not a number");
    check_render_fails("{{ ('a' * 3000000).rfind('a' * 1000000 + 'b') }}{{ undefined_name | abs }}", MOE_EINVAL,
                       "abs: an undefined is not a number"); /* and from its end */
    /* a string operand costs steps by its length: scanning 4 MB a hundred thousand times is refused */
    check_render_fails("{% set s = 'a' * 4000000 %}{% for i in range(100000) %}{% if 'b' in s %}x{% endif %}"
                       "{% endfor %}",
                       MOE_ERANGE, "steps");
    /* strings compared inside lists and dicts cost steps by their length as string operands do: == of two
     * lists, 'in' a list, sort, unique, dictsort and max of long strings, and a dict's long keys looked up, over
     * and over, meet the limit */
    static const char *const long_items[] = {
        "{% if l == m %}{% endif %}", "{% if l[-1] in m %}{% endif %}", "{{ m | sort(case_sensitive=true) | length }}",
        "{{ m | unique(case_sensitive=true) | list | length }}", "{{ d | dictsort(case_sensitive=true) | length }}",
        "{{ m | max(case_sensitive=true) | length }}", "{% if (s + 'q') in e %}{% endif %}", "{{ e[s + 'q'] }}",
        "{{ e.get(s + 'q') }}", "{% if e == e2 %}{% endif %}",
    };
    /* e and e2: two dicts of 25 keys of 100 kB that differ in their last byte */
    char keys25[25 * 20 + 8];
    size_t kl = 0;
    for (int i = 0; i < 25; i++) kl += (size_t)snprintf(keys25 + kl, sizeof(keys25) - kl, "%ss + '%c': %d", i ? ", " : "",
                                                        'a' + i, i);
    for (size_t i = 0; i < MOE_ARRAY_LEN(long_items); i++) {
        char many[2048];
        snprintf(many, sizeof(many), "{%% set s = 'a' * 100000 %%}{%% set l = [s + 'x', s + 'z'] * 12 + [s + 'y'] %%}"
                 "{%% set m = [s + 'x', s + 'z'] * 12 + [s + 'y'] %%}{%% set d = {s + 'h': 1, s + 'g': 2, s + 'f': 3, "
                 "s + 'e': 4, s + 'd': 5, s + 'c': 6, s + 'b': 7, s + 'a': 8} %%}{%% set e = {%s} %%}{%% set e2 = {%s} %%}"
                 "{%% for i in range(300) %%}%s{%% endfor %%}", keys25, keys25, long_items[i]);
        check_render_fails(many, MOE_ERANGE, "steps");
    }
    /* a type named in a message takes its article */
    check_render_fails("{% for x in 3 %}{% endfor %}", MOE_EINVAL, "an int is not iterable");
    check_render_fails("{{ undefined_name | abs }}", MOE_EINVAL, "abs: an undefined is not a number");
    /* a dict view's keys are looked up as the dict's: one that cannot be a key fails, as in Jinja2 */
    check_render_fails("{{ ['a'] in {'a': 1}.keys() }}", MOE_EINVAL, "'in <dict_keys>' needs a key on the left, not a list");
    check_render_fails("{{ (['a'], 1) in {'a': 1}.items() }}", MOE_EINVAL, "'in <dict_items>' needs a key in the pair");
    /* small pieces that land on exactly the limit, then go on past it */
    check_render_fails("{{ (range(100000) | list) * 7 }}", MOE_ERANGE, "output longer");
    check_render_fails("{{ 'x' * 4194304 }}{{ 'y' }}", MOE_ERANGE, "output longer");
    check_render_fails("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", MOE_ERANGE, "deeper");
    check_render_fails("{% for x in ['a'] recursive %}{{ loop(x) }}{% endfor %}", MOE_ERANGE,
                       "recursive loop goes deeper than 64");
    check_render_fails("{% for x in [[1]] %}{{ loop(x) }}{% endfor %}", MOE_EINVAL, "'recursive' marker");
    check_render_fails("{{ [1] | slice(1) }}", MOE_EINVAL, "printing a generator (select, map, unique, reverse, batch, "
                       "slice)");
    check_render_fails("{{ 5 | attr('hex') }}", MOE_ENOTSUP, "number method hex is not supported");
    check_render_fails("{{ (5).to_bytes(2) }}", MOE_ENOTSUP, "number method to_bytes is not supported");
    check_render_fails("{{ 9223372036854775807 + 1 }}", MOE_ERANGE, "overflow");
    { /* a chain of 20000 operators: a tree deeper than the stack would take, refused while rendering */
        size_t cap = 20000 * 4 + 16, clen = 0;
        char *chain = malloc(cap);
        REQUIRE(chain, "malloc");
        clen += (size_t)snprintf(chain, cap, "{{ 1");
        for (int i = 0; i < 20000; i++) clen += (size_t)snprintf(chain + clen, cap - clen, " + 1");
        snprintf(chain + clen, cap - clen, " }}");
        check_render_fails(chain, MOE_ERANGE, "nested deeper");
        free(chain);
    }
    { /* 100000 elifs (1 MB of template): a chain, not a nesting */
        size_t cap = 100000 * 10 + 64, clen = 0;
        char *elifs = malloc(cap);
        REQUIRE(elifs, "malloc");
        clen += (size_t)snprintf(elifs, cap, "{%%if 0%%}");
        for (int i = 1; i < 100000; i++) clen += (size_t)snprintf(elifs + clen, cap - clen, "{%%elif 0%%}");
        snprintf(elifs + clen, cap - clen, "{%%elif 1%%}yes{%%else%%}no{%%endif%%}");
        struct moe_jinja *t = moe_jinja_compile(elifs, strlen(elifs));
        char *out = NULL;
        size_t n = 0;
        CHECK(t && moe_jinja_render(t, NULL, &out, &n) == MOE_OK && !strcmp(out, "yes"), "elif chain: %s",
              out ? out : moe_last_error());
        free(out);
        moe_jinja_free(t);
        free(elifs);
    }
    /* a value nested in itself, 200000 deep: printing, JSON and comparing it are refused, not a crash */
    static const char *const nest[] = { "{{ ns.x }}", "{{ ns.x | tojson }}", "{{ ns.x == ns.x }}", "{{ ns.x < ns.x }}" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(nest); i++) {
        char nested[256];
        snprintf(nested, sizeof(nested), "{%% set ns = namespace(x=1) %%}{%% for i in range(100000) %%}{%% set ns.x = "
                 "[ns.x] %%}{%% endfor %%}%s", nest[i]);
        check_render_fails(nested, MOE_ERANGE, "nested deeper");
    }
    /* xmlattr refuses a key that would break the attribute list, as Jinja2 3.1.4 and later do */
    check_render_fails("{{ {'a': 1, 'b c': 2} | xmlattr }}", MOE_EINVAL, "invalid character in attribute name 'b c'");
    check_render_fails("{{ {'onload=x': 1} | xmlattr }}", MOE_EINVAL, "attribute name 'onload=x'");
    /* dict keys are strings, numbers, booleans or none; a tuple (which Python takes) is not supported */
    check_render_fails("{{ {(1, 2): 3} }}", MOE_ENOTSUP, "dict keys must be strings, numbers, booleans or none here, "
                       "not tuple");
    check_render_fails("{{ {1: 2} | pprint }}", MOE_ENOTSUP, "pprint of a dict with keys other than strings");
    check_render_fails("{{ {1: 2} | xmlattr }}", MOE_EINVAL, "xmlattr: attribute names must be strings, not int");
    check_render_fails("{{ raise_exception('stop here') }}", MOE_EINVAL, "stop here");
    check_render_fails("{{ (-8.5) ** 0.5 }}", MOE_EINVAL, "fractional power is complex"); /* complex in Python */
    check_render_fails("{% set x = 1 %}{% set x.a = 2 %}", MOE_EINVAL, "only of a namespace");
    check_render_fails("{{ ['a'] | map('urlize') | list }}", MOE_ENOTSUP, "map: filter 'urlize' is not supported");
    check_render_fails("{{ [[1, 2]] | map('random') | list }}", MOE_ENOTSUP,
                       "map: filter 'random' is not supported: it picks an item at random");
    /* Jinja2 prints a method not called with its address */
    check_render_fails("{% set d = {'items': 1} %}{{ d.items }}", MOE_EINVAL, "printing the method 'items' of a dict");
    check_render_fails("{% for x in [1] %}{{ loop.cycle }}{% endfor %}", MOE_EINVAL,
                       "printing the method 'cycle' of a loop");
    check_render_fails("{{ (1, 2).index }}", MOE_EINVAL, "printing the method 'index' of a tuple");
    check_render_fails("{{ (5).bit_length }}", MOE_EINVAL, "printing the method 'bit_length' of an int");
    /* a macro that outlives the loop iteration or set block it was defined in, and uses a name of it:
     * Jinja2 gives what the name held last in any iteration, or its internal 'missing' marker */
    check_render_fails("{% set ns = namespace(f=none) %}{% for x in [1, 2] %}{% macro m() %}{{ x }}{% endmacro %}"
                       "{% set ns.f = m %}{% endfor %}{{ ns.f() }}",
                       MOE_ENOTSUP, "macro 'm' uses 'x' of a for loop iteration that has ended");
    check_render_fails("{% set ns = namespace(f=none) %}{% for x in [1, 2] %}{% macro m() %}{{ x }}{% endmacro %}"
                       "{% if loop.first %}{% set ns.f = m %}{% else %}{{ ns.f() }}{% endif %}{% endfor %}",
                       MOE_ENOTSUP, "macro 'm' uses 'x' of a for loop iteration");
    check_render_fails("{% set ns = namespace(f=none) %}{% with a = 1 %}{% macro m() %}{{ a }}{% endmacro %}"
                       "{% set ns.f = m %}{% endwith %}{{ ns.f() }}",
                       MOE_ENOTSUP, "macro 'm' uses 'a' of a with block that has ended");
    check_render_fails("{% set ns = namespace(f=none) %}{% set b %}{% set z = 4 %}{% macro m(a=z) %}{% endmacro %}"
                       "{% set ns.f = m %}{% endset %}{{ ns.f() }}",
                       MOE_ENOTSUP, "macro 'm' uses 'z' of a set block that has ended");
    /* a call's arguments, * and ** ones too, are bounded, with an error that says which */
    check_render_fails("{% macro f() %}{% endmacro %}{{ f(*range(1025)) }}", MOE_ERANGE,
                       "a call with more than 1024 positional arguments");
    static char wide[32768];
    size_t at = (size_t)snprintf(wide, sizeof(wide), "{{ dict(**{");
    for (int i = 0; i < 1025; i++) at += (size_t)snprintf(wide + at, sizeof(wide) - at, "'k%d': %d, ", i, i);
    snprintf(wide + at, sizeof(wide) - at, "}) }}");
    check_render_fails(wide, MOE_ERANGE, "a call with more than 1024 keyword arguments");
    check_refused("{{ dict(**{}, *[2]) }}", MOE_EFORMAT, "a *argument after the **argument");

    /* the bounds leave room for the longest conversation a request may carry (4096 messages) */
    const char *chatml = "{% for m in messages %}{% if m.role == 'user' and not loop.first %}{{ '<|im_start|>' + "
                         "m.role + '\\n' + m.content | trim + '<|im_end|>\\n' }}{% elif m.role == 'assistant' %}"
                         "{{ m.content.strip() }}{% else %}{{ m.content }}{% endif %}{% endfor %}";
    struct moe_jinja *big = moe_jinja_compile(chatml, strlen(chatml));
    REQUIRE(big, "%s", moe_last_error());
    json_t *many = json_array();
    for (int i = 0; i < 4096; i++)
        json_array_append_new(many, json_pack("{s:s, s:s}", "role", i % 2 ? "assistant" : "user", "content",
                                              "a message of some forty characters, or so"));
    json_t *mv = json_pack("{s:o}", "messages", many);
    char *bo = NULL;
    size_t bn = 0;
    CHECK(moe_jinja_render(big, mv, &bo, &bn) == MOE_OK && bn > 4096 * 40, "4096 messages: %s",
          bo ? "short" : moe_last_error());
    free(bo);
    json_decref(mv);
    moe_jinja_free(big);

    /* one compiled template, two renders at once */
    const char *chat = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}";
    struct moe_jinja *t = moe_jinja_compile(chat, strlen(chat));
    REQUIRE(t, "%s", moe_last_error());
    json_t *vars = json_pack("{s:[{s:s, s:s}, {s:s, s:s}]}", "messages", "role", "user", "content", "hi", "role",
                             "assistant", "content", "yo");
    struct shared s[2] = { { t, vars, NULL }, { t, vars, NULL } };
    pthread_t th[2];
    for (int i = 0; i < 2; i++) REQUIRE(pthread_create(&th[i], NULL, render_thread, &s[i]) == 0, "pthread_create");
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        CHECK(s[i].out && !strcmp(s[i].out, "<user>hi<assistant>yo"), "thread %d: %s", i,
              s[i].out ? s[i].out : "failed");
        free(s[i].out);
    }
    json_decref(vars);
    moe_jinja_free(t);
    return t_result("test_jinja");
}
