/* generate's --ids-out and --stats-json are written whole or not at all, as trace's --out is: a write
 * that fails (here the file-size limit, as a full disk would) exits 1 naming the flag and leaves an
 * existing file as it was, with no work file beside it.  pack's default output is checked before the
 * work as a given --out is.  An output named by a symbolic link replaces the file the link names (beside
 * which its work file is made), whether it exists yet or not, and the link stays a link.  A name longer than a
 * file name may be is refused before the work. */
#include "tests/test_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char exe[4200], model[512];

/* Files in dir (not . or ..). */
static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += e->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

/* moeflow generate ... FLAG PATH with writes to regular files limited to 8 bytes; its exit status,
 * stderr into err. */
static int run_limited(const char *flag, const char *path, const char *extra, char *err, size_t cap)
{
    int fds[2];
    REQUIRE(pipe(fds) == 0, "pipe");
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        struct rlimit rl = { 8, 8 };
        signal(SIGXFSZ, SIG_IGN); /* a write past the limit fails with EFBIG instead */
        setrlimit(RLIMIT_FSIZE, &rl);
        close(fds[0]);
        dup2(fds[1], 2);
        close(fds[1]);
        int dn = open("/dev/null", O_RDWR);
        dup2(dn, 0);
        dup2(dn, 1);
        execl(exe, exe, "generate", "--model", model, "--prompt", "def f(x):", "--max-tokens", "4", "--ignore-eos",
              flag, path, extra, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t r;
    while (len + 1 < cap && (r = read(fds[0], err + len, cap - 1 - len)) > 0) len += (size_t)r;
    err[len] = 0;
    close(fds[0]);
    int st = 0;
    REQUIRE(waitpid(pid, &st, 0) == pid, "waitpid");
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void check_whole(const char *flag, const char *extra)
{
    char dir[] = "/tmp/moe_outputs_XXXXXX", path[128], err[4096], got[64] = "";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    snprintf(path, sizeof(path), "%s/old.json", dir);
    char want[256];
    /* no file there before: none after, and the message does not speak of one left as it was */
    int rc = run_limited(flag, path, extra, err, sizeof(err));
    snprintf(want, sizeof(want), "%s %s: write failed", flag, path);
    CHECK(rc == 1 && strstr(err, want) && strstr(err, "; no file was made") && !strstr(err, "left as it was"),
          "%s past the file-size limit, no file before: exit %d, stderr '%s'", flag, rc, err);
    CHECK(count_files(dir) == 0, "%s: %d files in %s after a failed write", flag, count_files(dir), dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f, "create %s", path);
    fputs("OLD\n", f);
    fclose(f);
    rc = run_limited(flag, path, extra, err, sizeof(err));
    CHECK(rc == 1 && strstr(err, want) && strstr(err, "; the file was left as it was"),
          "%s past the file-size limit: exit %d, stderr '%s'", flag, rc, err);
    f = fopen(path, "r");
    REQUIRE(f, "%s gone", path);
    size_t n = fread(got, 1, sizeof(got) - 1, f);
    got[n] = 0;
    fclose(f);
    CHECK(!strcmp(got, "OLD\n"), "%s: the failed write changed %s to '%s'", flag, path, got);
    CHECK(count_files(dir) == 1, "%s: %d files in %s, a work file left", flag, count_files(dir), dir);
    unlink(path);
    /* whatever a failing run left there */
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));)
        if (e->d_name[0] != '.') {
            char p[600];
            snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
            unlink(p);
        }
    if (d) closedir(d);
    rmdir(dir);
}

/* pack --model DIR where DIR/experts.moestore, the default --out, is a directory: refused at once
 * (exit 2) as --out DIR is, not after the whole store was written beside it. */
static void pack_default_out(void)
{
    char dir[] = "/tmp/moe_outputs_XXXXXX", p[600], cmd[8192], out[4096];
    REQUIRE(mkdtemp(dir), "mkdtemp");
    static const char *const files[] = { "config.json", "model.safetensors.index.json", "tokenizer.json",
                                         "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                                         "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors" };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char src[700];
        snprintf(src, sizeof(src), "%s/%s", model, files[i]);
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        REQUIRE(symlink(src, p) == 0, "symlink %s", p);
    }
    snprintf(p, sizeof(p), "%s/experts.moestore", dir);
    REQUIRE(mkdir(p, 0755) == 0, "mkdir %s", p);
    snprintf(cmd, sizeof(cmd), "'%s' pack --model %s --quiet 2>&1", exe, dir);
    int rc = t_run(cmd, out, sizeof(out));
    char want[700];
    snprintf(want, sizeof(want), "moeflow pack: default --out %s is a directory: name a file in it\n", p);
    CHECK(rc == 2 && !strcmp(out, want), "pack into a directory by default: exit %d, output '%s'", rc, out);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    REQUIRE(system(cmd) == 0, "%s", cmd);
}

/* The first bytes of path into buf ("" when it cannot be read). */
static const char *head(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(buf, 1, cap - 1, f) : 0;
    buf[n] = 0;
    if (f) fclose(f);
    return buf;
}

/* moeflow CMD ... LINK for each writer (trace's and generate's text outputs, logits' safetensors, pack's store),
 * LINK a relative symbolic link to a file in another directory: an old file there, then none. */
static void out_through_link(void)
{
    char top[] = "/tmp/moe_outputs_XXXXXX", dir[64], link[64], target[96], cmd[8192], out[4096], got[32];
    REQUIRE(mkdtemp(top), "mkdtemp");
    snprintf(dir, sizeof(dir), "%s/real", top);
    snprintf(link, sizeof(link), "%s/link", top);
    REQUIRE(mkdir(dir, 0755) == 0, "mkdir %s", dir);
    FILE *f = NULL;
    snprintf(target, sizeof(target), "%s/ids.json", top);
    REQUIRE((f = fopen(target, "w")) && fputs("[[1,2,3]]", f) >= 0 && fclose(f) == 0, "write %s", target);
    static const struct { const char *args, *magic; } runs[] = { /* run in top; what the output begins with */
        { "trace --ids ids.json --out", "{\"format\":\"moeflow-trace\"" },
        { "generate --prompt x --max-tokens 2 --ids-out", "[[" },
        { "logits --ids 1,2 --out", "" },
        { "pack --quiet --out", "MOESTORE" },
    };
    for (int existing = 1; existing >= 0; existing--)
        for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
            char rel[32];
            snprintf(rel, sizeof(rel), "real/out%zu", i);
            snprintf(target, sizeof(target), "%s/%s", top, rel);
            unlink(link);
            unlink(target);
            if (existing) /* a private file: what replaces it stays private */
                REQUIRE((f = fopen(target, "w")) && fputs("OLD\n", f) >= 0 && fclose(f) == 0 && chmod(target, 0600) == 0,
                        "write %s", target);
            REQUIRE(symlink(rel, link) == 0, "symlink %s", link);
            snprintf(cmd, sizeof(cmd), "cd %s && '%s' %s link --model %s 2>&1 >/dev/null </dev/null", top, exe,
                     runs[i].args, model);
            int rc = t_run(cmd, out, sizeof(out));
            CHECK(rc == 0, "moeflow %s link: exit %d: %s", runs[i].args, rc, out);
            struct stat sb;
            CHECK(lstat(link, &sb) == 0 && S_ISLNK(sb.st_mode), "moeflow %s link replaced the link", runs[i].args);
            head(target, got, sizeof(got));
            CHECK(stat(target, &sb) == 0 && sb.st_size > 4 && strcmp(got, "OLD\n") &&
                      !strncmp(got, runs[i].magic, strlen(runs[i].magic)),
                  "moeflow %s link (%s file there): %s holds '%s'", runs[i].args, existing ? "an old" : "no", target,
                  got);
            CHECK(!existing || (sb.st_mode & 07777) == 0600, "moeflow %s link: the file replaced had mode 0600, "
                  "the new one %o", runs[i].args, (unsigned)(sb.st_mode & 07777));
            CHECK(count_files(dir) == 1, "moeflow %s link: %d files in %s", runs[i].args, count_files(dir), dir);
            unlink(target);
        }
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", top);
    REQUIRE(system(cmd) == 0, "%s", cmd);
}

/* An output that replaces a file takes its permission bits, never its set-user-ID, set-group-ID or sticky bit,
 * as cp without -p does: a file the run writes is no program of the old file's owner. */
static void out_mode_bits(void)
{
    char dir[] = "/tmp/moe_outputs_XXXXXX", cmd[8192], out[4096], path[64];
    REQUIRE(mkdtemp(dir), "mkdtemp");
    snprintf(cmd, sizeof(cmd), "printf '[[1,2]]' > %s/ids.json && printf OLD > %s/out && chmod 07750 %s/out", dir, dir,
             dir);
    REQUIRE(system(cmd) == 0, "%s", cmd);
    snprintf(cmd, sizeof(cmd), "cd %s && '%s' trace --ids ids.json --out out --model %s 2>&1 >/dev/null </dev/null",
             dir, exe, model);
    int rc = t_run(cmd, out, sizeof(out));
    CHECK(rc == 0, "moeflow trace --out over a 07750 file: exit %d: %s", rc, out);
    snprintf(path, sizeof(path), "%s/out", dir);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 07777) == 0750,
          "moeflow trace --out over a file of mode 07750: the new one has mode %o, not 0750",
          (unsigned)(sb.st_mode & 07777));
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    REQUIRE(system(cmd) == 0, "%s", cmd);
}

/* An output whose own name is longer than a file name may be (NAME_MAX) is refused before the work (exit 2), as a
 * directory that cannot be written is, where the work file was made under a short name and the rename failed once
 * the output was whole; a name that leaves no room for the work file's suffix is still written (under the short
 * name, renamed). */
static void out_name_too_long(void)
{
    char dir[] = "/tmp/moe_outputs_XXXXXX", cmd[8192], out[8192], name[300];
    REQUIRE(mkdtemp(dir), "mkdtemp");
    static const char *const runs[] = { "pack --quiet --out", "logits --ids 1,2 --out", "trace --ids ids.json --out" };
    snprintf(cmd, sizeof(cmd), "printf '[[1,2]]' > %s/ids.json", dir);
    REQUIRE(system(cmd) == 0, "%s", cmd);
    for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++)
        for (int len = 250; len <= 256; len += 6) {
            memset(name, 'a' + (int)i, (size_t)len);
            name[len] = 0;
            snprintf(cmd, sizeof(cmd), "cd %s && '%s' %s %s --model %s 2>&1 >/dev/null </dev/null", dir, exe, runs[i],
                     name, model);
            int rc = t_run(cmd, out, sizeof(out));
            char path[400];
            snprintf(path, sizeof(path), "%s/%s", dir, name);
            if (len > 255)
                CHECK(rc == 2 && strstr(out, ": cannot create a file there: File name too long") &&
                          !strstr(out, "wrote") && !strstr(out, "packing"),
                      "moeflow %s <%d bytes>: exit %d: %.300s", runs[i], len, rc, out);
            else
                CHECK(rc == 0 && access(path, F_OK) == 0, "moeflow %s <%d bytes>: exit %d: %.300s", runs[i], len,
                      rc, out);
            CHECK(count_files(dir) == 1 + (len <= 255), "moeflow %s <%d bytes>: %d files in %s", runs[i], len,
                  count_files(dir), dir);
            unlink(path);
        }
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    REQUIRE(system(cmd) == 0, "%s", cmd);
}

int main(void)
{
    const char *bin = getenv("MOEFLOW_BINARY_DIR");
    snprintf(exe, sizeof(exe), "%s/server/moeflow", bin ? bin : ".");
    REQUIRE(access(exe, X_OK) == 0, "%s not built", exe);
    t_path(model, sizeof(model), "models/pycode-moe-18m");
    check_whole("--ids-out", NULL);
    check_whole("--stats-json", "--stats"); /* --stats prints to stderr, a pipe: no limit there */
    pack_default_out();
    out_through_link();
    out_mode_bits();
    out_name_too_long();
    return t_result("test_cli_outputs");
}
