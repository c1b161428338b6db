/* moe_huge_alloc and moe_huge_advise: alignment, which pages are marked for transparent huge pages
 * (t_huge_marked), and, where madvise fails, the same memory unmarked. */
#include "common/moe.h"

#include "../test_util.h"

#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The madvise of this executable (moe_common is a static library, so its calls land here): counts the
 * calls and, while fail_madvise is set, fails as a kernel without transparent huge pages does. */
static bool fail_madvise;
static int n_madvise;

int madvise(void *addr, size_t len, int advice)
{
    n_madvise++;
    if (fail_madvise) {
        errno = EINVAL;
        return -1;
    }
    return (int)syscall(SYS_madvise, addr, len, advice);
}

static bool filled(const unsigned char *p, size_t n, unsigned char v)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return false;
    return true;
}

int main(void)
{
    const size_t H = MOE_HUGE_PAGE;
    /* a kernel with THP takes MADV_HUGEPAGE whatever its mode (never included) */
    bool thp = access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0;
    bool huge = !thp;

    /* Two whole huge pages and a tail: aligned, the huge pages marked, the tail not. */
    size_t n = 2 * H + H / 2 + 123;
    int calls = n_madvise;
    unsigned char *p = moe_huge_alloc(n, &huge);
    REQUIRE(p, "moe_huge_alloc(%zu): %s", n, strerror(errno));
    CHECK((uintptr_t)p % H == 0, "%zu bytes at %p: not 2 MiB-aligned", n, (void *)p);
    CHECK(n_madvise == calls + 1, "madvise called %d times for one buffer", n_madvise - calls);
    CHECK(huge == thp, "huge %d on a kernel %s transparent huge pages", huge, thp ? "with" : "without");
    memset(p, 0x5a, n);
    CHECK(filled(p, n, 0x5a), "buffer not writable throughout");
    if (thp) {
        CHECK(t_huge_marked(p) == 1, "first huge page not marked MADV_HUGEPAGE (smaps: %d)", t_huge_marked(p));
        CHECK(t_huge_marked(p + 2 * H - 1) == 1, "second huge page not marked (smaps: %d)", t_huge_marked(p + 2 * H - 1));
        CHECK(t_huge_marked(p + 2 * H) == 0, "the tail short of a huge page is marked (smaps: %d)", t_huge_marked(p + 2 * H));
    }
    free(p);

    /* Under one huge page: page-aligned, nothing to mark, madvise not called. */
    calls = n_madvise;
    huge = true;
    p = moe_huge_alloc(H - 1, &huge);
    REQUIRE(p, "moe_huge_alloc(H - 1)");
    CHECK((uintptr_t)p % 4096 == 0, "small buffer at %p: not page-aligned", (void *)p);
    CHECK(!huge && n_madvise == calls, "small buffer: huge %d, %d madvise calls", huge, n_madvise - calls);
    memset(p, 1, H - 1);
    free(p);
    p = moe_huge_alloc(0, NULL);
    CHECK(p != NULL, "moe_huge_alloc(0) gave NULL");
    free(p);

    /* madvise fails: the same memory, aligned and usable, reported unmarked. */
    fail_madvise = true;
    calls = n_madvise;
    huge = true;
    n = 3 * H;
    p = moe_huge_alloc(n, &huge);
    REQUIRE(p, "moe_huge_alloc(%zu) with madvise failing: %s", n, strerror(errno));
    CHECK(n_madvise == calls + 1, "madvise not tried (%d calls)", n_madvise - calls);
    CHECK(!huge, "huge reported though madvise failed");
    CHECK((uintptr_t)p % H == 0, "%p not 2 MiB-aligned with madvise failing", (void *)p);
    memset(p, 0xa5, n);
    CHECK(filled(p, n, 0xa5), "buffer not writable throughout with madvise failing");
    CHECK(t_huge_marked(p) != 1, "marked though madvise failed");
    CHECK(!moe_huge_advise(p, n), "moe_huge_advise succeeded though madvise failed");
    free(p);
    fail_madvise = false;

    /* moe_huge_advise on memory from elsewhere marks only the whole huge pages inside the range. */
    size_t len = 4 * H;
    unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(m != MAP_FAILED, "mmap");
    unsigned char *a = (unsigned char *)(((uintptr_t)m + H - 1) & ~(uintptr_t)(H - 1));
    calls = n_madvise;
    CHECK(!moe_huge_advise(a + 4096, H - 4096) && n_madvise == calls,
          "a range with no whole huge page inside was advised");
    CHECK(!moe_huge_advise(NULL, H), "NULL advised");
    CHECK(moe_huge_advise(a + 4096, 2 * H) == thp, "range over one whole huge page: not %d", thp);
    if (thp) {
        CHECK(t_huge_marked(a + H) == 1, "the whole huge page inside not marked");
        CHECK(t_huge_marked(a + 4096) == 0, "the part before the whole huge page marked");
        CHECK(t_huge_marked(a + 2 * H) == 0, "the part after the whole huge page marked");
    }
    munmap(m, len);

    if (t_failures) return T_FAIL;
    printf("ok (transparent huge pages %s)\n", thp ? "available" : "not in this kernel");
    return T_PASS;
}
