/* An interrupted command leaves no half-written output: `moeflow trace`
 * stopped by SIGTERM or SIGINT while it writes its trace ends as the signal
 * would (killed by it), and its work file beside --out is gone; so does
 * `moeflow pack` ended by SIGPIPE, and `moeflow logits` by SIGXFSZ (the file-size limit). */
#include "tests/test_util.h"

#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
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

/* Wait for pid, which signal sig must have ended (what names the case in the messages); then nothing may be left
 * in dir, which is removed. */
static void check_ended_clean(pid_t pid, int sig, const char *dir, const char *what)
{
    char name[256] = "", path[600];
    int st = 0;
    REQUIRE(waitpid(pid, &st, 0) == pid, "waitpid");
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == sig, "%s: status %#x, not ended by signal %d", what, st, sig);
    int left = count_files(dir, name, sizeof(name));
    CHECK(left == 0, "%s left %d file(s) in %s: %s", what, left, dir, name);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (left) unlink(path);
    rmdir(dir);
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
    check_ended_clean(pid, sig, dir, sig == SIGINT ? "trace stopped by SIGINT" : "trace stopped by SIGTERM");
}

/* moeflow pack whose stderr is a pipe no one reads (pack 2>&1 | head -1, head gone): its first progress
 * line raises SIGPIPE, which ends it as before, and its work file beside --out goes too. */
static void closed_pipe_pack(const char *exe)
{
    char dir[] = "/tmp/moe_interrupt_XXXXXX", out[64], model[512];
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
    check_ended_clean(pid, SIGPIPE, dir, "pack into a closed pipe");
}

/* moeflow logits whose output passes the file-size limit (ulimit -f) with SIGXFSZ at its default: ended by it,
 * as before, and its work file beside --out goes too. */
static void file_size_limit_logits(const char *exe)
{
    char dir[] = "/tmp/moe_interrupt_XXXXXX", out[64], model[512];
    REQUIRE(mkdtemp(dir), "mkdtemp");
    snprintf(out, sizeof(out), "%s/l.safetensors", dir);
    t_path(model, sizeof(model), "models/pycode-moe-18m");
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        struct rlimit rl = { 4096, 4096 }; /* the logits of 3 tokens take 96 KiB */
        signal(SIGXFSZ, SIG_DFL);
        setrlimit(RLIMIT_FSIZE, &rl);
        freopen("/dev/null", "w", stderr);
        execl(exe, exe, "logits", "--model", model, "--ids", "1,2,3", "--out", out, (char *)NULL);
        _exit(127);
    }
    check_ended_clean(pid, SIGXFSZ, dir, "logits past the file-size limit");
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
    file_size_limit_logits(exe);
    return t_result("test_interrupt");
}
