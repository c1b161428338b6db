/* The install rules: `cmake --install` of this build into a temporary prefix, then the installed
 * moeflow run from another directory without $MOEFLOW_MODEL: its version, its default model (the
 * installed copy of the bundled model, found beside the binary, not the source tree's), a greedy
 * generate on it (the same text as the build tree's binary on the source tree's model), the
 * example serve.conf checked by the installed server, the systemd unit's ExecStart naming the
 * installed binary, and the other files the rules put under the prefix.  usage: test_install CMAKE */
#include "tests/test_util.h"

#include <limits.h>
#include <unistd.h>

static char dir[] = "/tmp/moe-install-XXXXXX";

static void cleanup(void)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

static void check_file(const char *prefix, const char *rel)
{
    char path[PATH_MAX + 256];
    snprintf(path, sizeof(path), "%s/%s", prefix, rel);
    CHECK(access(path, R_OK) == 0, "%s not installed", rel);
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 2, "usage: test_install CMAKE");
    const char *bin = getenv("MOEFLOW_BINARY_DIR");
    REQUIRE(bin, "MOEFLOW_BINARY_DIR unset (run through ctest)");
    REQUIRE(mkdtemp(dir), "mkdtemp");
    atexit(cleanup);
    char real[PATH_MAX], prefix[PATH_MAX + 16], cmd[3 * PATH_MAX], out[65536], want[8192];
    REQUIRE(realpath(dir, real), "realpath %s", dir);
    snprintf(prefix, sizeof(prefix), "%s/prefix", real);
    snprintf(cmd, sizeof(cmd), "'%s' --install '%s' --prefix '%s' 2>&1", argv[1], bin, prefix);
    int st = t_run(cmd, out, sizeof(out));
    REQUIRE(st == 0, "cmake --install: exit %d: %s", st, out);

    /* the installed binary, from another directory */
    const char *run = "cd / && env -u MOEFLOW_MODEL";
    snprintf(cmd, sizeof(cmd), "%s '%s/bin/moeflow' --version 2>&1", run, prefix);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 0 && !strcmp(out, "moeflow " MOEFLOW_VERSION "\n"), "--version: exit %d: %s", st, out);

    snprintf(cmd, sizeof(cmd), "%s '%s/bin/moeflow' info 2>&1", run, prefix);
    st = t_run(cmd, out, sizeof(out));
    snprintf(want, sizeof(want), "model      %s/share/moeflow/models/pycode-moe-18m (qwen3_moe)", prefix);
    CHECK(st == 0 && !strncmp(out, want, strlen(want)), "info: exit %d, wanted '%s...': %s", st, want, out);

    const char *gen = "generate --prompt 'def fibonacci(n):' --max-tokens 8 --temperature 0";
    snprintf(cmd, sizeof(cmd), "%s '%s/bin/moeflow' %s 2>&1", run, prefix, gen);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 0, "installed generate: exit %d: %s", st, out);
    char src_model[PATH_MAX];
    t_path(src_model, sizeof(src_model), "models/pycode-moe-18m");
    snprintf(cmd, sizeof(cmd), "'%s/server/moeflow' %s --model '%s' 2>&1", bin, gen, src_model);
    REQUIRE(t_run(cmd, want, sizeof(want)) == 0, "build tree's generate: %s", want);
    CHECK(!strcmp(out, want) && strlen(out) > 8, "installed generate '%s', build tree's '%s'", out, want);

    check_file(prefix, "share/moeflow/models/pycode-moe-18m/predictor.safetensors");
    check_file(prefix, "share/doc/moeflow/README.md");
    check_file(prefix, "share/doc/moeflow/api.md");
#ifdef TEST_SERVER
    check_file(prefix, "share/moeflow/proto/moeflow.proto");
    check_file(prefix, "share/moeflow/proto/grpc_service.proto");
    check_file(prefix, "share/moeflow/proto/health.proto");
    /* the example configuration, as the installed server reads it */
    snprintf(cmd, sizeof(cmd), "%s '%s/bin/moeflow' serve --config '%s/share/moeflow/serve.conf' --check-config 2>&1",
             run, prefix, prefix);
    st = t_run(cmd, out, sizeof(out));
    CHECK(st == 0 && !strcmp(out, "moeflow serve: configuration ok\n"), "serve.conf: exit %d: %s", st, out);
#endif
#ifdef TEST_SYSTEMD
    /* the unit's ExecStart names the binary this install put in the prefix */
    char unit[PATH_MAX + 64];
    snprintf(unit, sizeof(unit), "%s/lib/systemd/system/moeflow.service", prefix);
    FILE *f = fopen(unit, "r");
    CHECK(f, "%s not installed", unit);
    snprintf(want, sizeof(want), "ExecStart=%s/bin/moeflow serve --config /etc/moeflow/serve.conf\n", prefix);
    int exec_lines = 0, found = 0;
    for (char line[8192]; f && fgets(line, sizeof(line), f);) {
        exec_lines += !strncmp(line, "ExecStart=", 10);
        found += !strcmp(line, want);
    }
    if (f)
        fclose(f);
    CHECK(exec_lines == 1 && found == 1, "%s: %d ExecStart lines, %d of them '%s'", unit, exec_lines, found, want);
    check_file(prefix, "lib/sysusers.d/moeflow.conf");
#endif
    return t_result("test_install");
}
