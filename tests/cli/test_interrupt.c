/* An interrupted command leaves no half-written output: `moeflow trace`
 * stopped by SIGTERM or SIGINT while it writes its trace ends as the signal
 * would (killed by it), and its work file beside --out is gone; so does
 * `moeflow pack` ended by SIGPIPE. */
#include "tests/test_util.h"

#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Files in dir (not . or ..); the first name into first. */
static int count_files(const char *dir, char *first, size_t cap)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        if (e->d_name[0] != '.' && n++ == 0) snprintf(first, cap, "%s", e->d_name);
    if (d) closedir(d);
    return n;
}

static void interrupt_trace(const char *exe, int sig)
{
    char dir[] = "/tmp/moe_interrupt_XXXXXX", out[64], model[512], text[512], name[256] = "";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    snprintf(out, sizeof(out), "%s/t.jsonl", dir);
    t_path(model, sizeof(model), "models/pycode-moe-18m");
    t_path(text, sizeof(text), "bench/data/pycode/train.txt");
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        signal(sig, SIG_DFL); /* whatever the test runner left ignored */
        freopen("/dev/null", "w", stderr);
        execl(exe, exe, "trace", "--model", model, "--text", text, "--out", out, (char *)NULL);
        _exit(127);
    }
    /* wait until the trace is being written (its work file exists), at most 60 s */
    struct timespec nap = { 0, 20 * 1000 * 1000 };
    for (int i = 0; i < 3000 && count_files(dir, name, sizeof(name)) == 0; i++) nanosleep(&nap, NULL);
    CHECK(count_files(dir, name, sizeof(name)) == 1 && strstr(name, "t.jsonl.tmp."),
          "no work file appeared in %s (found '%s')", dir, name);
    nanosleep(&nap, NULL);
    kill(pid, sig);
    int st = 0;
    REQUIRE(waitpid(pid, &st, 0) == pid, "waitpid");
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == sig, "signal %d: status %#x, not killed by it", sig, st);
    int left = count_files(dir, name, sizeof(name));
    CHECK(left == 0, "signal %d left %d file(s) in %s: %s", sig, left, dir, name);
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (left) unlink(path);
    rmdir(dir);
}

/* moeflow pack whose stderr is a pipe no one reads (pack 2>&1 | head -1, head gone): its first progress
 * line raises SIGPIPE, which ends it as before, and its work file beside --out goes too. */
static void closed_pipe_pack(const char *exe)
{
    char dir[] = "/tmp/moe_interrupt_XXXXXX", out[64], model[512], name[256] = "";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    snprintf(out, sizeof(out), "%s/x.moestore", dir);
    t_path(model, sizeof(model), "models/pycode-moe-18m");
    int fds[2];
    REQUIRE(pipe(fds) == 0, "pipe");
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        signal(SIGPIPE, SIG_DFL);
        close(fds[0]);
        dup2(fds[1], 2);
        close(fds[1]);
        execl(exe, exe, "pack", "--model", model, "--out", out, (char *)NULL);
        _exit(127);
    }
    close(fds[0]);
    close(fds[1]);
    int st = 0;
    REQUIRE(waitpid(pid, &st, 0) == pid, "waitpid");
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGPIPE, "pack into a closed pipe: status %#x, not SIGPIPE", st);
    int left = count_files(dir, name, sizeof(name));
    CHECK(left == 0, "SIGPIPE left %d file(s) in %s: %s", left, dir, name);
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (left) unlink(path);
    rmdir(dir);
}

int main(void)
{
    char exe[4200];
    const char *bin = getenv("MOEFLOW_BINARY_DIR");
    snprintf(exe, sizeof(exe), "%s/server/moeflow", bin ? bin : ".");
    REQUIRE(access(exe, X_OK) == 0, "%s not built", exe);
    interrupt_trace(exe, SIGTERM);
    interrupt_trace(exe, SIGINT);
    closed_pipe_pack(exe);
    return t_result("test_interrupt");
}
