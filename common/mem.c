/* Memory for big, long-lived buffers (weights, expert pools) in transparent huge pages. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* MADV_HUGEPAGE */
#endif
#include "moe.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

bool moe_huge_advise(void *p, size_t bytes)
{
    const uintptr_t mask = (uintptr_t)MOE_HUGE_PAGE - 1;
    if (!p || bytes > UINTPTR_MAX - (uintptr_t)p) return false;
    uintptr_t a = ((uintptr_t)p + mask) & ~mask, e = ((uintptr_t)p + bytes) & ~mask;
    if (a < (uintptr_t)p || e <= a) return false; /* no whole huge page inside */
#ifdef MADV_HUGEPAGE
    return madvise((void *)a, e - a, MADV_HUGEPAGE) == 0;
#else
    return false;
#endif
}

void *moe_huge_alloc(size_t bytes, bool *huge)
{
    void *p = NULL;
    bool big = bytes >= MOE_HUGE_PAGE;
    if (huge) *huge = false;
    int err = posix_memalign(&p, big ? MOE_HUGE_PAGE : 4096, bytes ? bytes : 1);
    if (err) {
        errno = err;
        return NULL;
    }
    if (big && moe_huge_advise(p, bytes) && huge) *huge = true;
    return p;
}
