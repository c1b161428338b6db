/* `moeflow logits --ids` through the built binary: a JSON array (what
 * `moeflow tokenize` prints) gives the same file as the comma list, the
 * output of tokenize can be passed as it is, and a malformed array is a usage
 * error (exit 2) naming --ids. */
#include "model/safetensors.h"
#include "tests/test_util.h"

#include <sys/wait.h>
#include <unistd.h>

static char exe[4200], model[4096];

/* The logits tensor of a file `logits` wrote, malloc'd; *n floats. */
static float *read_logits(const char *path, size_t *n)
{
    struct moe_st_file *f = moe_st_open(path);
    const struct moe_st_tensor *t;
    float *v;
    REQUIRE(f, "%s", moe_last_error());
    t = moe_st_find(f, "logits");
    REQUIRE(t && t->dtype == MOE_DT_F32 && t->ndim == 2, "%s: no F32 [T, vocab] logits", path);
    *n = (size_t)(t->shape[0] * t->shape[1]);
    v = malloc(*n * sizeof(float));
    REQUIRE(v, "malloc");
    memcpy(v, t->data, *n * sizeof(float));
    moe_st_close(f);
    return v;
}

int main(void)
{
    char dir_t[] = "/tmp/moe-cli-logits-XXXXXX", cmd[32768], out[8192], a[4300], b[4300], c[4300];
    const char *bin = getenv("MOEFLOW_BINARY_DIR"), *dir = mkdtemp(dir_t);
    static const char *bad[] = { "'[1,'", "'[]'", "'[1, -2]'", "'[1.5]'", "'[\"1\"]'", "'[[1]]'", "'[1] 2'" };
    size_t na, nb, nc;
    float *la, *lb, *lc;
    int st;

    REQUIRE(dir != NULL, "mkdtemp");
    snprintf(exe, sizeof(exe), "%s/server/moeflow", bin ? bin : ".");
    REQUIRE(access(exe, X_OK) == 0, "%s not built", exe);
    t_path(model, sizeof(model), "models/pycode-moe-18m");
    snprintf(a, sizeof(a), "%s/comma.safetensors", dir);
    snprintf(b, sizeof(b), "%s/json.safetensors", dir);
    snprintf(c, sizeof(c), "%s/tokenize.safetensors", dir);

    /* "def f" is [324, 285] with this tokenizer. */
    snprintf(cmd, sizeof(cmd), "'%s' logits --model '%s' --ids 324,285 --out '%s' 2>&1", exe, model, a);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 0, "comma list: exit %d: %s", st, out);
    snprintf(cmd, sizeof(cmd), "'%s' logits --model '%s' --ids '[324, 285]' --out '%s' 2>&1", exe, model, b);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 0, "JSON array: exit %d: %s", st, out);
    snprintf(cmd, sizeof(cmd), "'%s' logits --model '%s' --ids \"$('%s' tokenize --model '%s' --text 'def f')\" "
             "--out '%s' 2>&1", exe, model, exe, model, c);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 0, "tokenize's output: exit %d: %s", st, out);
    if (!t_failures) {
        la = read_logits(a, &na);
        lb = read_logits(b, &nb);
        lc = read_logits(c, &nc);
        CHECK(na == nb && !memcmp(la, lb, na * sizeof(float)), "JSON array and comma list give different logits");
        CHECK(na == nc && !memcmp(la, lc, na * sizeof(float)), "tokenize's ids give different logits");
        free(la);
        free(lb);
        free(lc);
    }
    unlink(a);
    unlink(b);
    unlink(c);

    for (size_t i = 0; i < MOE_ARRAY_LEN(bad); i++) {
        snprintf(cmd, sizeof(cmd), "'%s' logits --model '%s' --ids %s --out '%s' 2>&1", exe, model, bad[i], a);
        st = t_run(cmd, out, sizeof(out));
        CHECK(st == 2 && strstr(out, "--ids"), "--ids %s: exit %d, want 2 naming --ids: %s", bad[i], st, out);
        CHECK(access(a, F_OK) != 0, "--ids %s: wrote %s", bad[i], a);
    }
    /* an id past the int range is named as out of range, not as "not an integer" */
    const char *big[] = { "99999999999", "'[99999999999]'" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(big); i++) {
        snprintf(cmd, sizeof(cmd), "'%s' logits --model '%s' --ids %s --out '%s' 2>&1", exe, model, big[i], a);
        st = t_run(cmd, out, sizeof(out));
        CHECK(st == 2 && strstr(out, "99999999999") && strstr(out, "outside the token ids' range [0, 2147483647]"),
              "--ids %s: exit %d: %s", big[i], st, out);
    }
    snprintf(cmd, sizeof(cmd), "'%s' logits --help", exe);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 0 && strstr(out, "JSON array"), "--help does not mention the JSON array: %s", out);
    rmdir(dir);
    return t_result("test_cli_logits");
}
