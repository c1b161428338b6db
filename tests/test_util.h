/* Minimal test helpers: CHECK macros, fixture paths, exit codes (0 pass, 1 fail, 77 skip). */
#ifndef MOE_TEST_UTIL_H
#define MOE_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
