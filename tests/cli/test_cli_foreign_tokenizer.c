/* What README's "Supported models" says of a model whose tokenizer.json is of
 * an unsupported kind (here the bundled model with BERT's Whitespace
 * pre-tokenizer): `logits --ids` and `trace --ids` run on token ids, while
 * `tokenize` and `generate` stop with a message naming the pre-tokenizer; a
 * TemplateProcessing post_processor's BOS goes before a prompt (generate,
 * tokenize --prompt), not before plain text (tokenize). */
#include "common/moe.h"
#include "tests/test_util.h"

#include <jansson.h>
#include <sys/wait.h>
#include <unistd.h>

/* dir: the bundled model's files as links, and its tokenizer.json with key = val. */
static void make_model(const char *dir, const char *key, json_t *val)
{
    static const char *const files[] = { "config.json", "generation_config.json", "model.safetensors.index.json",
                                         "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                                         "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors" };
    char src[4200], dst[4200], abs_src[4200];
    json_error_t err;
    json_t *t;
    for (size_t i = 0; i < MOE_ARRAY_LEN(files); i++) {
        char rel[256];
        snprintf(rel, sizeof(rel), "models/pycode-moe-18m/%s", files[i]);
        t_path(src, sizeof(src), rel);
        snprintf(dst, sizeof(dst), "%s/%s", dir, files[i]);
        unlink(dst);
        REQUIRE(realpath(src, abs_src) && symlink(abs_src, dst) == 0, "symlink %s", dst);
    }
    t = json_load_file(t_path(src, sizeof(src), "models/pycode-moe-18m/tokenizer.json"), 0, &err);
    REQUIRE(t, "tokenizer.json: %s", err.text);
    json_object_set_new(t, key, val);
    snprintf(dst, sizeof(dst), "%s/tokenizer.json", dir);
    REQUIRE(json_dump_file(t, dst, JSON_COMPACT) == 0, "write %s", dst);
    json_decref(t);
}

static void rm_model(const char *dir)
{
    static const char *const names[] = { "config.json", "generation_config.json", "model.safetensors.index.json",
                                         "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                                         "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                                         "tokenizer.json", "ids.json", "out.safetensors", "trace.jsonl" };
    char p[4200];
    for (size_t i = 0; i < MOE_ARRAY_LEN(names); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

int main(void)
{
    char tmpl[] = "/tmp/moe-cli-foreign-XXXXXX", exe[4200], cmd[32768], out[8192], p[4200];
    const char *bin = getenv("MOEFLOW_BINARY_DIR"), *dir = mkdtemp(tmpl);
    FILE *f;
    int st;
    REQUIRE(dir, "mkdtemp");
    snprintf(exe, sizeof(exe), "%s/server/moeflow", bin ? bin : ".");
    REQUIRE(access(exe, X_OK) == 0, "%s not built", exe);

    make_model(dir, "pre_tokenizer", json_pack("{s:s}", "type", "Whitespace"));
    snprintf(cmd, sizeof(cmd), "'%s' logits --model '%s' --ids 324,285 --out '%s/out.safetensors' 2>&1", exe, dir,
             dir);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 0, "logits --ids: exit %d: %s", st, out);
    snprintf(p, sizeof(p), "%s/ids.json", dir);
    REQUIRE((f = fopen(p, "w")) && fputs("[[324, 285]]\n", f) >= 0 && fclose(f) == 0, "write %s", p);
    snprintf(cmd, sizeof(cmd), "'%s' trace --model '%s' --ids '%s' --out '%s/trace.jsonl' 2>&1", exe, dir, p, dir);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 0, "trace --ids: exit %d: %s", st, out);
    snprintf(cmd, sizeof(cmd), "'%s' tokenize --model '%s' --text hi 2>&1", exe, dir);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 1 && strstr(out, "pre_tokenizer \"Whitespace\" is not supported"), "tokenize: exit %d: %s", st, out);
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt hi --max-tokens 1 2>&1", exe, dir);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 1 && strstr(out, "pre_tokenizer \"Whitespace\" is not supported"), "generate: exit %d: %s", st, out);

    /* A TemplateProcessing BOS: "def f" is [324,285] as text, [0,324,285] as a prompt. */
    make_model(dir, "post_processor",
               json_pack("{s:s, s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}], s:[], s:{s:{s:s, s:[i], s:[s]}}}", "type",
                         "TemplateProcessing", "single", "SpecialToken", "id", "<|endoftext|>", "type_id", 0,
                         "Sequence", "id", "A", "type_id", 0, "pair", "special_tokens", "<|endoftext|>", "id",
                         "<|endoftext|>", "ids", 0, "tokens", "<|endoftext|>"));
    snprintf(cmd, sizeof(cmd), "'%s' tokenize --model '%s' --text 'def f' 2>&1", exe, dir);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 0 && !strcmp(out, "[324,285]\n"), "tokenize with a post_processor: exit %d: %s", st, out);
    snprintf(cmd, sizeof(cmd), "'%s' tokenize --model '%s' --prompt --text 'def f' 2>&1", exe, dir);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 0 && !strcmp(out, "[0,324,285]\n"), "tokenize --prompt with a post_processor: exit %d: %s", st, out);
    /* generate counts the BOS in its prompt (the context check says how many tokens) */
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt 'def f' --max-tokens 2047 2>&1", exe, dir);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 2 && strstr(out, "prompt (3 tokens)"), "generate with a post_processor: exit %d: %s", st, out);
    rm_model(dir);
    return t_result("test_cli_foreign_tokenizer");
}
