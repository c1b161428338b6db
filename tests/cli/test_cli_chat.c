/* moeflow generate --chat [--system]: the prompt is the model's chat template
 * of the messages (a copy of the bundled model with a tokenizer_config.json
 * template), or moeflow's markers for a model without one (the bundled
 * model).  Prompt lengths are read from generate's context check and compared
 * with `moeflow tokenize` of the text the template must make. */
#include "common/moe.h"
#include "tests/test_util.h"

#include <dirent.h>
#include <unistd.h>

static char exe[4200], dir[] = "/tmp/moe-cli-chat-XXXXXX";

/* Tokens of text by `moeflow tokenize --model model`. */
static int n_tokens(const char *model, const char *text)
{
    char cmd[8192], out[65536];
    snprintf(cmd, sizeof(cmd), "'%s' tokenize --model '%s' --text '%s'", exe, model, text);
    REQUIRE(t_run(cmd, out, sizeof(out)) == 0, "tokenize: %s", out);
    int n = 0;
    for (const char *p = out; *p; p++)
        n += *p == ',';
    return strcmp(out, "[]\n") ? n + 1 : 0;
}

/* The prompt length generate reports at its context check (--max-tokens 2047). */
static int prompt_tokens(const char *model, const char *flags)
{
    char cmd[8192], out[8192];
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' %s --max-tokens 2047 2>&1", exe, model, flags);
    int st = t_run(cmd, out, sizeof(out));
    const char *p = strstr(out, "prompt (");
    CHECK(st == 2 && p, "generate %s: exit %d: %s", flags, st, out);
    return p ? atoi(p + 8) : -1;
}

int main(void)
{
    const char *bin = getenv("MOEFLOW_BINARY_DIR");
    snprintf(exe, sizeof(exe), "%s/server/moeflow", bin ? bin : ".");
    REQUIRE(access(exe, X_OK) == 0, "%s not built", exe);
    char bundled[4200], src[4600], dst[4600], out[8192], cmd[16384];
    REQUIRE(realpath(t_path(src, sizeof(src), "models/pycode-moe-18m"), bundled), "bundled model");

    /* no template: the markers */
    int n = prompt_tokens(bundled, "--chat --system 'Be brief.' --prompt 'def f'");
    CHECK(n == n_tokens(bundled, "<|system|>\nBe brief.\n<|user|>\ndef f\n<|assistant|>\n"), "markers: %d", n);
    n = prompt_tokens(bundled, "--chat --prompt 'def f'");
    CHECK(n == n_tokens(bundled, "<|user|>\ndef f\n<|assistant|>\n"), "markers, no system: %d", n);
    /* --assistant: the reply begun ends the prompt (serve's continue_final_message); --no-generation-prompt: the
     * user's message does (add_generation_prompt false) */
    n = prompt_tokens(bundled, "--chat --prompt 'def f' --assistant 'return x'");
    CHECK(n == n_tokens(bundled, "<|user|>\ndef f\n<|assistant|>\nreturn x"), "markers, --assistant: %d", n);
    n = prompt_tokens(bundled, "--chat --prompt 'def f' --no-generation-prompt");
    CHECK(n == n_tokens(bundled, "<|user|>\ndef f\n"), "markers, --no-generation-prompt: %d", n);

    /* a copy of the model with a template */
    REQUIRE(mkdtemp(dir), "mkdtemp");
    DIR *d = opendir(bundled);
    REQUIRE(d, "opendir %s", bundled);
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "tokenizer_config.json"))
            continue;
        snprintf(src, sizeof(src), "%s/%s", bundled, e->d_name);
        snprintf(dst, sizeof(dst), "%s/%s", dir, e->d_name);
        REQUIRE(symlink(src, dst) == 0, "symlink %s", dst);
    }
    closedir(d);
    snprintf(dst, sizeof(dst), "%s/tokenizer_config.json", dir);
    static const char config[] = "{\"bos_token\": \"<|endoftext|>\", \"chat_template\": \"{{ bos_token }}{% for m in "
                                 "messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}>"
                                 "{% endif %}\"}";
    FILE *f = fopen(dst, "w");
    REQUIRE(f && fputs(config, f) >= 0 && fclose(f) == 0, "write %s", dst);
    n = prompt_tokens(dir, "--chat --system S --prompt 'def f'");
    CHECK(n == n_tokens(dir, "<|endoftext|>[system]S[user]def f>"), "template: %d", n);
    n = prompt_tokens(dir, "--chat --system S --prompt 'def f' --assistant 'return x'");
    CHECK(n == n_tokens(dir, "<|endoftext|>[system]S[user]def f[assistant]return x"), "template, --assistant: %d", n);
    n = prompt_tokens(dir, "--chat --system S --prompt 'def f' --no-generation-prompt");
    CHECK(n == n_tokens(dir, "<|endoftext|>[system]S[user]def f"), "template, --no-generation-prompt: %d", n);

    /* usage errors, and a template that does not compile */
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --system S --prompt x 2>&1", exe, dir);
    int st = t_run(cmd, out, sizeof(out));
    CHECK(st == 2 && strstr(out, "--system goes with --chat"), "--system alone: %d %s", st, out);
    static const char *const bad[][2] = {
        { "--assistant A", "moeflow generate: --assistant goes with --chat (a plain prompt has no messages)\n" },
        { "--no-generation-prompt", "moeflow generate: --no-generation-prompt goes with --chat (a plain prompt has no "
          "messages)\n" },
        { "--chat --assistant A --no-generation-prompt", "moeflow generate: --assistant and --no-generation-prompt go "
          "alone: the reply begun ends the prompt already (give one)\n" },
        { "--chat --assistant ''", "moeflow generate: --assistant is empty: give the reply's beginning (leave it out "
          "for a reply from the start)\n" },
        { "--chat --assistant \"$(printf '\\377')\"", "moeflow generate: --assistant: text is not valid UTF-8" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt x %s 2>&1", exe, dir, bad[i][0]);
        st = t_run(cmd, out, sizeof(out));
        CHECK(st == 2 && !strncmp(out, bad[i][1], strlen(bad[i][1])), "%s: exit %d: '%s'", bad[i][0], st, out);
    }
    f = fopen(dst, "w");
    REQUIRE(f && fputs("{\"chat_template\": \"{% for m in messages %}\"}", f) >= 0 && fclose(f) == 0, "write");
    snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --chat --prompt x 2>&1", exe, dir);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 1 && strstr(out, "tokenizer_config.json") && strstr(out, "endfor"), "bad template: %d %s", st, out);

    d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(dst, sizeof(dst), "%s/%s", dir, e->d_name);
        unlink(dst);
    }
    if (d)
        closedir(d);
    rmdir(dir);
    return t_result("test_cli_chat");
}
