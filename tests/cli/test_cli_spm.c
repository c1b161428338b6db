/* A Mixtral checkpoint with a SentencePiece-style tokenizer.json, from text
 * to text through the moeflow commands: the tiny Mixtral of
 * tests/fixtures/hf-tiny/mixtral with tests/fixtures/tokenizer/spm-tiny.json
 * (Mixtral's tokenizer layout, the checkpoint's 320-token vocabulary).
 * `tokenize --prompt` puts the template's BOS first, `generate` counts it in
 * its prompt and generates from it (the engine's agreement with the Hugging
 * Face model is test_parity_hf's). */
#include "common/moe.h"
#include "tests/test_util.h"

#include <unistd.h>

int main(void)
{
    char tmpl[] = "/tmp/moe-cli-spm-XXXXXX", exe[4200], cmd[16384], out[8192], src[4200], abs_src[4200],
         dst[4200];
    const char *bin = getenv("MOEFLOW_BINARY_DIR"), *dir = mkdtemp(tmpl);
    REQUIRE(dir, "mkdtemp");
    snprintf(exe, sizeof(exe), "%s/server/moeflow", bin ? bin : ".");
    REQUIRE(access(exe, X_OK) == 0, "%s not built", exe);
    static const char *const links[][2] = {
        { "tests/fixtures/hf-tiny/mixtral/config.json", "config.json" },
        { "tests/fixtures/hf-tiny/mixtral/generation_config.json", "generation_config.json" },
        { "tests/fixtures/hf-tiny/mixtral/model.safetensors", "model.safetensors" },
        { "tests/fixtures/tokenizer/spm-tiny.json", "tokenizer.json" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(links); i++) {
        t_path(src, sizeof(src), links[i][0]);
        snprintf(dst, sizeof(dst), "%s/%s", dir, links[i][1]);
        REQUIRE(realpath(src, abs_src) && symlink(abs_src, dst) == 0, "symlink %s", dst);
    }

    /* "def f(x): return x": 15 ids, 16 as a prompt */
    snprintf(cmd, sizeof(cmd), "'%s' tokenize --model '%s' --text 'def f(x): return x' 2>&1", exe, dir);
    int st = t_run(cmd, out, sizeof(out));
    CHECK(st == 0 && !strncmp(out, "[259,", 5), "tokenize: exit %d: %s", st, out);
    snprintf(cmd, sizeof(cmd), "'%s' tokenize --model '%s' --prompt --text 'def f(x): return x' 2>&1", exe, dir);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 0 && !strncmp(out, "[1,259,", 7), "tokenize --prompt: exit %d: %s", st, out);
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt 'def f(x): return x' --max-tokens 497 2>&1",
             exe, dir);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 2 && strstr(out, "prompt (16 tokens)"), "generate at the context: exit %d: %s", st, out);

    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt 'def f(x): return x' --max-tokens 8 "
             "--ignore-eos --temperature 0 2>/dev/null", exe, dir);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 0 && strlen(out) > 0, "generate: exit %d", st);

    for (size_t i = 0; i < MOE_ARRAY_LEN(links); i++) {
        snprintf(dst, sizeof(dst), "%s/%s", dir, links[i][1]);
        unlink(dst);
    }
    rmdir(dir);
    return t_result("test_cli_spm");
}
