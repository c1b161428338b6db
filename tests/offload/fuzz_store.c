/* libFuzzer target: the expert-store header and record-table checks on
 * arbitrary bytes.  The input is the start of the file; the file is extended
 * with zeros to 1 MiB so table entries can point at data. */
#include "../../offload/store.h"

#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz_store", 0);
    if (fd < 0) return 0;
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    if (size && write(fd, data, size) != (ssize_t)size) goto out;
    if (size < (1u << 20) && ftruncate(fd, 1 << 20) != 0) goto out;
    struct moe_store *s = moe_store_open(path, NULL);
    if (s) {
        const struct moe_store_info *in = moe_store_get_info(s);
        for (uint32_t l = 0; l < in->n_layers; l++)
            for (uint32_t e = 0; e < in->n_experts && e < 64; e++) moe_store_find(s, (int)l, (int)e);
        moe_store_close(s);
    }
out:
    close(fd);
    return 0;
}
