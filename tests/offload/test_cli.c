/* moeflow pack / trace / sim as the CLI runs them (exit codes, --help, usage
 * errors, --json keys), and the trace reader's errors on malformed traces. */
#include "../../offload/trace.h"
#include "../../server/cli.h"
#include "offload_test_common.h"

#include <fcntl.h>
#include <stdarg.h>
#include <jansson.h>

static int run_cmd(int (*fn)(int, char **), const char *out_path, int n, ...)
{
    char *argv[32];
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++) argv[i] = va_arg(ap, char *);
    va_end(ap);
    argv[n] = NULL;
    fflush(stdout);
    int saved = dup(1);
    if (out_path) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        close(fd);
    }
    int rc = fn(n, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    return rc;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    REQUIRE(f, "create %s", path);
    fputs(text, f);
    fclose(f);
}

static void expect_trace_error(const char *dir, const char *body, const char *needle)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/bad.jsonl", dir);
    write_text(path, body);
    struct moe_trace *t = NULL;
    CHECK(moe_trace_load(path, &t) != MOE_OK && !t, "malformed trace accepted: %s", body);
    CHECK(strstr(moe_last_error(), needle), "error '%s' lacks '%s'", moe_last_error(), needle);
}

#define HDR "{\"format\":\"moeflow-trace\",\"version\":1,\"model\":\"x\",\"layers\":2,\"experts\":4,\"top_k\":2,\"moe_layers\":[0,1]}\n"

int main(void)
{
    char p[512], model[512], store[600], ids[600], tr[600], out[600], txt[600];
    const char *dir = t_tmp_make("/tmp");
    REQUIRE(dir, "mkdtemp");
    t_path(model, sizeof(model), "tests/fixtures/hf-tiny/mixtral");
    snprintf(store, sizeof(store), "%s/x.moestore", dir);
    snprintf(ids, sizeof(ids), "%s/ids.json", dir);
    snprintf(tr, sizeof(tr), "%s/t.jsonl", dir);
    snprintf(out, sizeof(out), "%s/out.txt", dir);
    snprintf(txt, sizeof(txt), "%s/t.txt", dir);

    /* pack */
    CHECK(run_cmd(moe_cmd_pack, out, 2, "pack", "--help") == 0, "pack --help");
    CHECK(run_cmd(moe_cmd_pack, NULL, 2, "pack", "--bogus") == 2, "pack usage error");
    CHECK(run_cmd(moe_cmd_pack, NULL, 4, "pack", "--model", "/nonexistent/model", "--quiet") == 1,
          "pack of a missing model");
    CHECK(run_cmd(moe_cmd_pack, NULL, 6, "pack", "--model", model, "--out", store, "--quiet") == 0,
          "pack: %s", moe_last_error());
    CHECK(access(store, R_OK) == 0, "store written");

    /* trace --ids (through the tiered provider reading the store), then sim */
    write_text(ids, "[[1, 5, 9, 2, 7, 3], [4, 4, 8, 1]]");
    CHECK(run_cmd(moe_cmd_trace, NULL, 2, "trace", "--help") == 0, "trace --help");
    CHECK(run_cmd(moe_cmd_trace, NULL, 4, "trace", "--model", model, "--ids") == 2, "trace missing arg");
    CHECK(run_cmd(moe_cmd_trace, NULL, 4, "trace", "--model", model, "--out") == 2, "trace no input");
    CHECK(run_cmd(moe_cmd_trace, NULL, 10, "trace", "--model", model, "--ids", ids, "--out", tr,
                  "--store", store, "--weights") == 0, "trace --ids");
    struct moe_trace *t = NULL;
    REQUIRE(moe_trace_load(tr, &t) == MOE_OK, "load trace: %s", moe_last_error());
    CHECK(t->n_tokens == 10 && t->weights && t->info.top_k == 2 && t->info.expert_bytes > 0,
          "trace: %zu tokens", t->n_tokens);
    CHECK(t->seq[6] == 1 && t->pos[6] == 0 && t->token[6] == 4, "second sequence");
    moe_trace_free(t);
    write_text(ids, "[[1, 99999]]");
    CHECK(run_cmd(moe_cmd_trace, NULL, 7, "trace", "--model", model, "--ids", ids, "--out", tr) == 1,
          "out-of-range id must fail");

    /* trace --text on the bundled model */
    write_text(txt, "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n");
    char bundled[512];
    t_path(bundled, sizeof(bundled), "models/pycode-moe-18m");
    snprintf(p, sizeof(p), "%s/text.jsonl", dir);
    CHECK(run_cmd(moe_cmd_trace, NULL, 9, "trace", "--model", bundled, "--text", txt, "--seq-len",
                  "8", "--out", p) == 0, "trace --text");
    REQUIRE(moe_trace_load(p, &t) == MOE_OK, "%s", moe_last_error());
    CHECK(t->n_tokens > 8 && t->seq[8] == 1 && t->pos[8] == 0, "cut into 8-token sequences");
    moe_trace_free(t);
    CHECK(run_cmd(moe_cmd_trace, NULL, 9, "trace", "--model", bundled, "--text", txt, "--seq-len",
                  "1000000", "--out", p) == 2, "--seq-len beyond the context is a usage error");
    REQUIRE(moe_trace_load(p, &t) == MOE_OK, "the refused run spoiled %s: %s", p, moe_last_error());
    moe_trace_free(t);

    /* sim */
    CHECK(run_cmd(moe_cmd_sim, NULL, 2, "sim", "--help") == 0, "sim --help");
    CHECK(run_cmd(moe_cmd_sim, NULL, 5, "sim", "--trace", p, "--policy", "lru") == 2, "no capacity");
    CHECK(run_cmd(moe_cmd_sim, NULL, 7, "sim", "--trace", p, "--policy", "lru", "--capacity-frac",
                  "1.5") == 2, "bad frac");
    CHECK(run_cmd(moe_cmd_sim, NULL, 7, "sim", "--trace", p, "--policy", "mru", "--capacity", "8") == 2,
          "bad policy");
    CHECK(run_cmd(moe_cmd_sim, NULL, 7, "sim", "--trace", p, "--policy", "lru", "--capacity", "2") == 2,
          "capacity below top_k is a usage error");
    CHECK(run_cmd(moe_cmd_sim, NULL, 7, "sim", "--trace", "/nonexistent.jsonl", "--policy", "lru",
                  "--capacity", "8") == 1, "missing trace");
    CHECK(run_cmd(moe_cmd_sim, out, 12, "sim", "--trace", p, "--policy", "belady", "--capacity-frac",
                  "0.25", "--json", "--link-gbps", "55", "--expert-ms", "0.153") == 0, "sim --json");
    json_error_t je;
    json_t *j = json_load_file(out, 0, &je);
    REQUIRE(j, "sim --json output is not JSON: %s", je.text);
    static const char *keys[] = { "hits", "misses", "hit_rate", "transfers_per_token",
                                  "bytes_moved", "stall_s", "tokens_per_s" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(keys); i++)
        CHECK(json_object_get(j, keys[i]), "sim --json lacks %s", keys[i]);
    CHECK(json_integer_value(json_object_get(j, "capacity")) == 64, "floor(0.25 x 8 x 32) = 64");
    json_decref(j);

    /* trace reader errors name the line and the field */
    expect_trace_error(dir, "", "empty");
    expect_trace_error(dir, "{\"format\":\"other\"}\n", "format");
    expect_trace_error(dir, "{\"format\":\"moeflow-trace\",\"version\":2}\n", "version 2");
    expect_trace_error(dir, HDR "{\"seq\":0,\"pos\":0,\"token\":1,\"experts\":[[0,1]]}\n", ":2:");
    expect_trace_error(dir, HDR "{\"seq\":0,\"pos\":0,\"token\":1,\"experts\":[[0,1],[2,2]]}\n", "twice");
    expect_trace_error(dir, HDR "{\"seq\":0,\"pos\":0,\"token\":1,\"experts\":[[0,1],[2,9]]}\n", "experts[1][1]");
    expect_trace_error(dir, HDR "{\"seq\":0,\"pos\":0,\"experts\":[[0,1],[2,3]]}\n", "token");
    expect_trace_error(dir, HDR "not json\n", ":2:");

    t_tmp_remove(dir);
    return t_result("test_cli");
}
