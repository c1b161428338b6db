/* moeflow generate and moeflow logits, run as programs:
 * - `generate --prompt "def fibonacci(n):" --max-tokens 64 --temperature 0`
 *   prints exactly the greedy continuation computed here in-process (engine +
 *   tokenizer), and it looks like Python (contains "return" or "fibonacci");
 * - `logits --ids ... --out F` writes logits equal to an in-process prefill;
 * - bad flags and values exit 2 with a message naming the flag; a --json-schema or --grammar file that
 *   cannot be read exits 1, as every command's input file;
 * - `info --json` is one JSON object, a model directory's name that is not UTF-8 in it with U+FFFD. */
#include "engine_testutil.h"
#include "engine/json_guide.h"
#include "model/tokenizer.h"

#include <sys/wait.h>
#include <unistd.h>

static char *run(const char *cmd, int *status)
{
    FILE *p = popen(cmd, "r");
    REQUIRE(p, "popen %s", cmd);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + len, 1, cap - 1 - len, p)) > 0) len += r;
    buf[len] = 0;
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return buf;
}

/* `moeflow generate --prompt x FLAG FILE` with FILE holding text: its output and exit status. */
static char *generate_with_file(const char *exe, const char *dir, const char *flag, const char *text, int *status)
{
    char path[64], cmd[1024];
    snprintf(path, sizeof(path), "/tmp/moeflow-test-guide-%d.txt", (int)getpid());
    FILE *f = fopen(path, "w");
    REQUIRE(f, "%s", path);
    fputs(text, f);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "'%s' generate --prompt x %s %s --model '%s' 2>&1", exe, flag, path, dir);
    char *out = run(cmd, status);
    unlink(path);
    return out;
}

int main(void)
{
    char dir[4096], exe[4200], cmd[16384], tmpl[] = "/tmp/moeflow-logits-XXXXXX";
    const char *bin = getenv("MOEFLOW_BINARY_DIR");
    snprintf(exe, sizeof(exe), "%s/server/moeflow", bin ? bin : ".");
    if (access(exe, X_OK)) {
        fprintf(stderr, "%s not built\n", exe);
        return T_FAIL;
    }
    t_path(dir, sizeof(dir), "models/pycode-moe-18m");
    const char *prompt = "def fibonacci(n):";

    /* expected greedy continuation */
    struct moe_model *m = moe_model_open(dir);
    REQUIRE(m, "%s", moe_last_error());
    char tp[4300];
    snprintf(tp, sizeof(tp), "%s/tokenizer.json", dir);
    struct moe_tokenizer *tok = moe_tokenizer_load(tp);
    REQUIRE(tok, "%s", moe_last_error());
    int *ids;
    size_t n;
    REQUIRE(moe_tokenizer_encode(tok, prompt, strlen(prompt), &ids, &n) == MOE_OK, "%s", moe_last_error());
    struct moe_engine_params ep = { .max_seqs = 1, .max_ctx = 128, .max_batch_tokens = 64 };
    struct moe_engine *e = moe_engine_create(m, &ep);
    REQUIRE(e, "%s", moe_last_error());
    int V = m->cfg.vocab, greedy[64];
    float *lg = malloc(sizeof(float) * (size_t)n * V);
    REQUIRE(lg && t_greedy(e, moe_engine_seq_alloc(e), ids, (int)n, 64, greedy, lg) == MOE_OK, "%s",
            moe_last_error());
    char want[65536];
    size_t wl = 0;
    for (int g = 0; g < 64; g++) {
        int t = greedy[g];
        bool eos = false;
        for (int i = 0; i < m->cfg.n_eos; i++) eos |= t == m->cfg.eos_ids[i];
        if (eos) break;
        int k = moe_tokenizer_token_bytes(tok, t, want + wl, sizeof(want) - wl - 2);
        REQUIRE(k >= 0, "token bytes");
        wl += (size_t)k;
    }
    want[wl++] = '\n';
    want[wl] = 0;

    int status;
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt '%s' --max-tokens 64 --temperature 0",
             exe, dir, prompt);
    char *got = run(cmd, &status);
    printf("generate output:\n%s---\n", got);
    CHECK(status == 0, "generate exit %d", status);
    CHECK(strcmp(got, want) == 0, "generate output is not the greedy continuation:\nwant:\n%s", want);
    CHECK(strstr(got, "return") || strstr(got, "fibonacci"), "output does not look like Python code");
    free(got);

    /* --blas runs the same model through OpenBLAS GEMMs: not bit-identical by
     * design, but it must run and produce Python-looking text */
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt '%s' --max-tokens 64 --temperature 0 --blas",
             exe, dir, prompt);
    got = run(cmd, &status);
    CHECK(status == 0 && strlen(got) > 16, "generate --blas exit %d, output '%s'", status, got);
    CHECK(strstr(got, "return") || strstr(got, "fibonacci"), "--blas output does not look like Python code");
    free(got);

    /* --kv-dtype bf16: the KV cache in BF16 runs and writes Python; a dtype it does not take is refused */
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt '%s' --max-tokens 64 --temperature 0 "
             "--kv-dtype bf16", exe, dir, prompt);
    got = run(cmd, &status);
    CHECK(status == 0 && (strstr(got, "return") || strstr(got, "fibonacci")), "generate --kv-dtype bf16 exit %d: '%s'",
          status, got);
    free(got);
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt x --kv-dtype f16 2>&1", exe, dir);
    got = run(cmd, &status);
    CHECK(status == 2 && strstr(got, "expected f32 or bf16"),
          "generate --kv-dtype f16: status %d, '%s'", status, got);
    free(got);

    /* sampling is reproducible for a seed */
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt 'import os' --max-tokens 24 "
             "--temperature 0.9 --top-p 0.95 --top-k 40 --seed 11", exe, dir);
    char *s1 = run(cmd, &status), *s2 = run(cmd, &status);
    CHECK(status == 0 && strlen(s1) > 1 && !strcmp(s1, s2), "seeded sampling differs between runs");
    free(s1), free(s2);

    /* a top-p below the smallest float keeps the most likely token alone, as greedy does */
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt 'import os' --max-tokens 12 "
             "--temperature 0.9 --top-p 1e-300 --seed 11", exe, dir);
    s1 = run(cmd, &status);
    int status2;
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt 'import os' --max-tokens 12 --temperature 0",
             exe, dir);
    s2 = run(cmd, &status2);
    CHECK(status == 0 && status2 == 0 && strlen(s1) > 1 && !strcmp(s1, s2),
          "--top-p 1e-300 (exit %d): '%s', greedy (exit %d): '%s'", status, s1, status2, s2);
    free(s1), free(s2);

    /* logits */
    int fd = mkstemp(tmpl);
    REQUIRE(fd >= 0, "mkstemp");
    close(fd);
    char idl[1024];
    size_t il = 0;
    for (size_t i = 0; i < n; i++) il += (size_t)snprintf(idl + il, sizeof(idl) - il, i ? ",%d" : "%d", ids[i]);
    snprintf(cmd, sizeof(cmd), "'%s' logits --model '%s' --ids %s --out %s", exe, dir, idl, tmpl);
    free(run(cmd, &status));
    CHECK(status == 0, "logits exit %d", status);
    struct moe_st_file *f = moe_st_open(tmpl);
    REQUIRE(f, "%s", moe_last_error());
    const struct moe_st_tensor *t = moe_st_find(f, "logits");
    CHECK(t && t->dtype == MOE_DT_F32 && t->ndim == 2 && t->shape[0] == (int64_t)n && t->shape[1] == V,
          "logits tensor shape");
    if (t) CHECK(!memcmp(t->data, lg, sizeof(float) * n * V), "logits file differs from in-process logits");
    moe_st_close(f);
    unlink(tmpl);

    /* info --json: the experts and the other weights add up to the checkpoint's tensors */
    snprintf(cmd, sizeof(cmd), "'%s' info --model '%s' --json", exe, dir);
    got = run(cmd, &status);
    json_t *info = json_loads(got, 0, NULL);
    uint64_t tensors = 0;
    for (int sh = 0; sh < m->n_shards; sh++)
        for (size_t i = 0; i < moe_st_count(m->shards[sh]); i++) tensors += moe_st_at(m->shards[sh], i)->nbytes;
    json_int_t eb = json_integer_value(json_object_get(info, "expert_bytes")),
               all = json_integer_value(json_object_get(info, "experts_bytes")),
               other = json_integer_value(json_object_get(info, "other_bytes"));
    CHECK(status == 0 && info && eb > 0 && all == eb * 8 * 32 && (uint64_t)(all + other) == tensors &&
              json_integer_value(json_object_get(info, "kv_bytes_per_token_f32")) == 2 * 8 * 2 * 48 * 4 &&
              !strcmp(json_string_value(json_object_get(info, "model_type")), "qwen3_moe"),
          "info --json: exit %d, %s (checkpoint tensors %llu bytes)", status, got, (unsigned long long)tensors);
    json_decref(info);
    free(got);
    /* an FP8 checkpoint's experts: FP8 records (codes and F32 factors: 16 x 32 blocks), BF16 in the device tier */
    char f8[4096];
    t_path(f8, sizeof(f8), "tests/fixtures/deepseek-v3-variants/fp8");
    snprintf(cmd, sizeof(cmd), "'%s' info --model '%s' --json", exe, f8);
    got = run(cmd, &status);
    info = json_loads(got, 0, NULL);
    CHECK(status == 0 && info && !strcmp(json_string_value(json_object_get(info, "expert_dtype")), "F8_E4M3") &&
              json_integer_value(json_object_get(info, "expert_bytes")) == 3 * 16 * 64 + 4 * (2 + 2 + 4) &&
              json_integer_value(json_object_get(info, "device_expert_bytes")) == 3 * 16 * 64 * 2,
          "info --json of an FP8 checkpoint: exit %d, %s", status, got);
    json_decref(info);
    free(got);
    /* a copy of the model with a template that opens <think>, then with a tokenizer.json cut short */
    char cp[] = "/tmp/moeflow-info-XXXXXX";
    REQUIRE(mkdtemp(cp), "mkdtemp");
    snprintf(cmd, sizeof(cmd), "cd '%s' && for f in config.json model.safetensors.index.json model-0000*; do "
             "ln -s \"$PWD/$f\" '%s/'; done && cp tokenizer.json '%s/' && printf '%%s' '{\"chat_template\": "
             "\"{%% for m in messages %%}{{ m.content }}{%% endfor %%}\\n<think>\\n\"}' > "
             "'%s/tokenizer_config.json'", dir, cp, cp, cp);
    REQUIRE(system(cmd) == 0, "%s", cmd);
    snprintf(cmd, sizeof(cmd), "'%s' info --model '%s' --json", exe, cp);
    got = run(cmd, &status);
    info = json_loads(got, 0, NULL);
    CHECK(status == 0 && info && json_is_true(json_object_get(info, "opens_think")) &&
              json_is_true(json_object_get(info, "chat_template")) &&
              json_is_null(json_object_get(info, "tokenizer_error")),
          "info --json, a template that opens <think>: exit %d, %s", status, got);
    json_decref(info);
    free(got);
    snprintf(cmd, sizeof(cmd), "truncate -s 1000 '%s/tokenizer.json'", cp);
    REQUIRE(system(cmd) == 0, "%s", cmd);
    snprintf(cmd, sizeof(cmd), "'%s' info --model '%s' --json", exe, cp);
    got = run(cmd, &status);
    info = json_loads(got, 0, NULL);
    const char *terr = json_string_value(json_object_get(info, "tokenizer_error"));
    CHECK(status == 0 && info && terr && strstr(terr, "tokenizer.json") &&
              json_integer_value(json_object_get(info, "tokenizer_vocab")) == 0,
          "info --json, a tokenizer.json cut short: exit %d, %s", status, got);
    json_decref(info);
    free(got);
    /* the same copy under a name that is not UTF-8: the object still, the byte that is not as U+FFFD */
    snprintf(cmd, sizeof(cmd), "mv '%s' '%s\xff' && '%s' info --model '%s\xff' --json", cp, cp, exe, cp);
    got = run(cmd, &status);
    info = json_loads(got, 0, NULL);
    char want_model[64];
    snprintf(want_model, sizeof(want_model), "%s\xef\xbf\xbd", cp);
    terr = json_string_value(json_object_get(info, "tokenizer_error"));
    CHECK(status == 0 && info && !strcmp(json_string_value(json_object_get(info, "model")), want_model) && terr &&
              strstr(terr, want_model),
          "info --json, a model directory whose name is not UTF-8: exit %d, %s", status, got);
    json_decref(info);
    free(got);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s\xff'", cp);
    REQUIRE(system(cmd) == 0, "%s", cmd);
    snprintf(cmd, sizeof(cmd), "'%s' info --model /nonexistent 2>&1", exe);
    got = run(cmd, &status);
    CHECK(status == 1 && strstr(got, "/nonexistent") && strstr(got, "--model"), "info of no model: %d %s", status, got);
    free(got);

    /* after "<|endoftext|>" the model ends at once; --ignore-eos generates on */
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt '<|endoftext|>' --max-tokens 5", exe, dir);
    got = run(cmd, &status);
    CHECK(status == 0 && !strcmp(got, "\n"), "generate stopped at EOS: exit %d, '%s'", status, got);
    free(got);
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt '<|endoftext|>' --max-tokens 5 --ignore-eos", exe,
             dir);
    got = run(cmd, &status);
    CHECK(status == 0 && strlen(got) > 1, "generate --ignore-eos: exit %d, '%s'", status, got);
    free(got);
    /* --ignore-eos under a guide: the EOS (token 0, its text "<|endoftext|>", pushed up by a bias) ends
     * nothing, so its text is held to the pattern as any token's: "a+" takes only "a"s */
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt 'x = ' --regex 'a+' --max-tokens 6 --ignore-eos "
             "--logit-bias 0:100", exe, dir);
    got = run(cmd, &status);
    CHECK(status == 0 && !strcmp(got, "aaaaaa\n"), "generate --regex a+ --ignore-eos: exit %d, '%s'", status, got);
    free(got);

    /* usage errors */
    static const char *bad[] = { "generate", "generate --prompt x --top-p 1.5", "generate --prompt x --max-tokens -3",
                                 "generate --prompt x --temperature nan", "generate --prompt x --nope",
                                 "logits --ids 1,,2 --out /tmp/x", "logits --ids 1,2", "logits --ids 99999 --out /tmp/x",
                                 "logits --ids ' 1' --out /tmp/x", "logits --ids +1 --out /tmp/x",
                                 /* offload flags that cannot work together or with this model */
                                 "generate --prompt x --predictor gate", "generate --prompt x --no-prefetch",
                                 "generate --prompt x --policy lru",
                                 "generate --prompt x --belady-trace /tmp/x.jsonl --gpu-experts 8",
                                 "generate --prompt x --policy belady --gpu-experts 8",
                                 "generate --prompt x --gpu-experts 8 --gpu-cache-bytes 1M",
                                 "generate --prompt x --gpu-experts 3", "generate --prompt x --host-cache-bytes 1K",
                                 "generate --prompt x --gpu-experts 8 --predictor gate:+1",
                                 /* predictions that would not be used */
                                 "generate --prompt x --gpu-experts 8 --policy lru --predictor gate --no-prefetch",
                                 "generate --prompt x --gpu-experts 8 --policy lfu --predictor history --no-prefetch",
                                 "generate --prompt x --gpu-experts ' 8'", "generate --prompt x --gpu-cache-bytes +64M",
                                 "generate --prompt x --top-p ' 0.5'", "generate --prompt x --temperature 0x1",
                                 /* an output path that is empty or a directory, refused before any work */
                                 "logits --ids 1 --out /tmp", "logits --ids 1 --out ''", "pack --out /tmp",
                                 "info --nope", "info extra",
                                 "trace --ids /dev/null --out /tmp", "train-predictor --text x --out /tmp",
                                 "generate --prompt x --gpu-experts 8 --stats-json /tmp",
                                 "generate --prompt x --gpu-experts 8 --stats-json /nonexistent/s.json",
                                 "trace --ids /dev/null --out /tmp/x.jsonl --gpu-experts 8 --stats-json /nonexistent/s",
                                 /* a grammar given with another guide */
                                 "generate --prompt x --grammar /dev/null --regex a" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(bad); i++) {
        snprintf(cmd, sizeof(cmd), "'%s' %s --model '%s' 2>&1", exe, bad[i], dir);
        char *o = run(cmd, &status);
        CHECK(status == 2, "'%s' exits %d, want 2 (%s)", bad[i], status, o);
        CHECK(strstr(o, "--") != NULL, "'%s': message names no flag: %s", bad[i], o);
        free(o);
    }
    /* a schema, grammar, expert store or routing trace file that cannot be read (missing, a directory, a device)
     * fails as every command's input file does, exit 1, the message naming the file and what to give; a schema or
     * grammar past the size it may have is refused as such a text is, exit 2 */
    static const struct { const char *args, *want; } unread[] = {
        { "--json-schema /nonexistent.json", "moeflow generate: --json-schema /nonexistent.json: No such file or "
          "directory (give a readable file holding a JSON Schema)\n" },
        { "--json-schema /dev/null", "moeflow generate: --json-schema /dev/null: not a regular file (give a "
          "readable file holding a JSON Schema)\n" },
        { "--grammar /nonexistent.gbnf", "moeflow generate: --grammar /nonexistent.gbnf: No such file or directory "
          "(give a readable file holding a GBNF grammar)\n" },
        { "--grammar /", "moeflow generate: --grammar /: is a directory (give a readable file holding a GBNF "
          "grammar)\n" },
        /* the tiers' files name their option too, and say what to give */
        { "--gpu-experts 8 --store /", "moeflow generate: --store /: is a directory (give a readable file holding an "
          "expert store, as moeflow pack writes)\n" },
        { "--gpu-experts 8 --store /dev/null", "moeflow generate: --store /dev/null: not a regular file (give a "
          "readable file holding an expert store, as moeflow pack writes)\n" },
        { "--gpu-experts 8 --store /nonexistent.moestore", "moeflow generate: --store /nonexistent.moestore: No such "
          "file or directory (give a readable file holding an expert store, as moeflow pack writes)\n" },
        { "--gpu-experts 8 --policy belady --belady-trace /", "moeflow generate: --belady-trace /: is a directory "
          "(give a readable file holding a routing trace, as moeflow trace writes)\n" },
        { "--gpu-experts 8 --policy belady --belady-trace /nonexistent.jsonl", "moeflow generate: --belady-trace "
          "/nonexistent.jsonl: No such file or directory (give a readable file holding a routing trace, as moeflow "
          "trace writes)\n" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(unread); i++) {
        snprintf(cmd, sizeof(cmd), "'%s' generate --prompt x %s --model '%s' 2>&1", exe, unread[i].args, dir);
        char *o = run(cmd, &status);
        CHECK(status == 1 && !strcmp(o, unread[i].want), "%s: exit %d, '%s', want 1, '%s'", unread[i].args, status, o,
              unread[i].want);
        free(o);
    }
    {
        static char big[MOE_JSON_MAX_SCHEMA + 2];
        memset(big, ' ', sizeof(big) - 1);
        char *bo = generate_with_file(exe, dir, "--grammar", big, &status);
        char big_want[256];
        snprintf(big_want, sizeof(big_want), "moeflow generate: --grammar /tmp/moeflow-test-guide-%d.txt: %d bytes "
                 "is larger than the %d-byte limit\n", (int)getpid(), MOE_JSON_MAX_SCHEMA + 1, MOE_JSON_MAX_SCHEMA);
        CHECK(status == 2 && !strcmp(bo, big_want), "grammar too large: exit %d: %s", status, bo);
        free(bo);
    }
    /* a schema with a keyword not followed: exit 2 naming it */
    char *so = generate_with_file(exe, dir, "--json-schema", "{\"type\": \"string\", \"format\": \"ipv6\"}", &status);
    CHECK(status == 2 && strstr(so, "--json-schema") && strstr(so, "format 'ipv6' is not supported"),
          "bad schema: exit %d: %s", status, so);
    free(so);
    /* a schema whose string holds \u0000: the reason in plain words, not the name of jansson's flag */
    so = generate_with_file(exe, dir, "--json-schema", "{\"const\": \"a\\u0000b\"}", &status);
    CHECK(status == 2 && strstr(so, "--json-schema") &&
              strstr(so, "a string holds \\u0000 (NUL): give text without NUL") && !strstr(so, "JSON_ALLOW_NUL"),
          "a NUL in a schema: exit %d: %s", status, so);
    free(so);
    /* a range no number written meets: exit 2 naming its keywords, before anything is generated */
    so = generate_with_file(exe, dir, "--json-schema", "{\"type\": \"object\", \"properties\": {\"x\": {\"type\": "
                            "\"number\", \"exclusiveMinimum\": 0, \"maximum\": 1e-35}}, \"required\": [\"x\"]}", &status);
    CHECK(status == 2 && strstr(so, "--json-schema") && strstr(so, "at '/properties/x'") &&
              strstr(so, "meets 'exclusiveMinimum' 0 and 'maximum' 1e-35: widen the range"),
          "unmet range: exit %d: %s", status, so);
    free(so);
    /* a grammar with a rule it never defines: exit 2 with the line and column */
    so = generate_with_file(exe, dir, "--grammar", "root ::= \"a\"\n  | item\n", &status);
    CHECK(status == 2 && strstr(so, "--grammar") && strstr(so, "line 2 column 5: rule 'item' is used but never defined"),
          "bad grammar: exit %d: %s", status, so);
    free(so);
    /* a grammar whose every way on after its first character is more than the recognizer holds (1100
     * alternatives at once): no token continues, an error naming the flag, not a silent text */
    static char wide[16384] = "root ::= \"x\" y\ny ::= \"a\"";
    for (int i = 1; i < 1100; i++) strcat(wide, " | \"a\"");
    so = generate_with_file(exe, dir, "--grammar", wide, &status);
    CHECK(status == 1 && strstr(so, "moeflow generate: --grammar: no token of the vocabulary continues the text"),
          "grammar past the recognizer's limits: exit %d: %s", status, so);
    free(so);
    /* a pattern and a grammar whose one text is the empty one: nothing generated, not an error */
    so = generate_with_file(exe, dir, "--grammar", "root ::= \"\"\n", &status);
    CHECK(status == 0 && !strcmp(so, "\n"), "grammar of \"\": exit %d: '%s'", status, so);
    free(so);
    snprintf(cmd, sizeof(cmd), "'%s' generate --prompt x --regex '()' --model '%s' 2>&1", exe, dir);
    so = run(cmd, &status);
    CHECK(status == 0 && !strcmp(so, "\n"), "--regex '()': exit %d: '%s'", status, so);
    free(so);
    /* an empty pattern is a value left empty, refused as serve's guided_regex "" is, where it was taken as '()' */
    snprintf(cmd, sizeof(cmd), "'%s' generate --prompt x --regex '' --model '%s' 2>&1", exe, dir);
    so = run(cmd, &status);
    CHECK(status == 2 && !strcmp(so, "moeflow generate: --regex: the pattern is empty: give one ('()' asks for an "
                                     "empty output)\n"), "--regex '': exit %d: '%s'", status, so);
    free(so);
    /* output that cannot be written fails the command */
    static const char *full[] = { "generate --prompt x --max-tokens 4", "info", "info --json", "tokenize --text x" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(full); i++) {
        snprintf(cmd, sizeof(cmd), "'%s' %s --model '%s' 2>&1 >/dev/full", exe, full[i], dir);
        so = run(cmd, &status);
        CHECK(status == 1 && strstr(so, "writing to stdout failed") != NULL, "'%s' >/dev/full: exit %d: %s", full[i], status, so);
        free(so);
    }
    /* --no-prefetch under lru: the default predictor is then none, not refused as unused */
    snprintf(cmd, sizeof(cmd), "'%s' generate --prompt x --max-tokens 2 --gpu-experts 8 --policy lru --no-prefetch "
             "--model '%s' 2>&1", exe, dir);
    so = run(cmd, &status);
    CHECK(status == 0, "--no-prefetch under lru, no --predictor: exit %d: %s", status, so);
    free(so);
    snprintf(cmd, sizeof(cmd), "'%s' generate --help", exe);
    free(run(cmd, &status));
    CHECK(status == 0, "--help exits 0");

    free(lg), free(ids);
    moe_engine_destroy(e);
    moe_tokenizer_free(tok);
    moe_model_close(m);
    return t_result("test_engine_cli");
}
