/* Minimal test helpers: CHECK macros, fixture paths, exit codes (0 pass, 1 fail, 77 skip). */
#ifndef MOE_TEST_UTIL_H
#define MOE_TEST_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define T_PASS 0
#define T_FAIL 1
#define T_SKIP 77

static int t_failures;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
            t_failures++;                                                       \
        }                                                                       \
    } while (0)

#define REQUIRE(cond, ...)                                                      \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: REQUIRE(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
            exit(T_FAIL);                                                       \
        }                                                                       \
    } while (0)

/* One xorshift64 step of *state (non-zero): the tests' reproducible random stream. */
static inline uint64_t t_xorshift(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

/* Path under the source tree: t_path(buf, "tests/fixtures/hf-tiny/mixtral"). */
static inline const char *t_path(char *buf, size_t cap, const char *rel)
{
    const char *root = getenv("MOEFLOW_SOURCE_DIR");
    snprintf(buf, cap, "%s/%s", root ? root : ".", rel);
    return buf;
}

/* The line at *pos of buf[0..len) (without its '\n') into *line and *n,
 * *pos moved past it; false after the last line. */
static inline bool t_next_line(const char *buf, size_t len, size_t *pos, const char **line, size_t *n)
{
    if (*pos >= len) return false;
    const char *s = buf + *pos, *e = memchr(s, '\n', len - *pos);
    *line = s;
    *n = e ? (size_t)(e - s) : len - *pos;
    *pos += *n + 1;
    return true;
}

/* Whether the VmFlags of this process's mapping that holds addr (/proc/self/smaps) contain "hg", marked
 * for transparent huge pages (MADV_HUGEPAGE): 1 or 0; -1 when no mapping holds it or smaps is unread. */
static inline int t_huge_marked(const void *addr)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    bool in = false;
    int r = -1;
    while (f && fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = (uintptr_t)addr >= lo && (uintptr_t)addr < hi;
        } else if (in && !strncmp(line, "VmFlags:", 8)) {
            r = strstr(line, " hg") != NULL;
            break;
        }
    }
    if (f) fclose(f);
    return r;
}

/* Run a shell command: its exit status (-1 when it did not exit), and what it
 * printed on stdout (and stderr, if cmd redirects it) in out, NUL-terminated. */
static inline int t_run(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    size_t len = 0, r;
    if (!p) return -1;
    while (len + 1 < cap && (r = fread(out + len, 1, cap - 1 - len, p)) > 0) len += r;
    out[len] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Run the built moeflow with args (a shell command line) from the source tree,
 * stderr with stdout ("2>&1") or discarded (NULL); as t_run. */
static inline int t_moeflow(const char *args, const char *err, char *out, size_t cap)
{
    char cmd[8192];
    const char *bin = getenv("MOEFLOW_BINARY_DIR"), *src = getenv("MOEFLOW_SOURCE_DIR");
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s/server/moeflow' %s %s", src ? src : ".", bin ? bin : ".", args,
             err ? err : "2>/dev/null");
    return t_run(cmd, out, cap);
}

static inline int t_result(const char *name)
{
    if (t_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, t_failures);
        return T_FAIL;
    }
    printf("%s: ok\n", name);
    return T_PASS;
}

#endif
