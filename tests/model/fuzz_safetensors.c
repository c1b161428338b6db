/* libFuzzer target: the safetensors header parser over arbitrary images.
 * Every accepted image must be self-consistent: tensors inside the image,
 * back to back, each findable by name. */
#include "model/safetensors.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct moe_st_file *f = moe_st_open_memory(data, size, "fuzz");
    uint64_t end = 0;
    if (!f) return 0;
    for (size_t i = 0; i < moe_st_count(f); i++) {
        const struct moe_st_tensor *t = moe_st_at(f, i);
        if (t->file_offset + t->nbytes > size || (i && t->file_offset != end) ||
            moe_st_find(f, t->name) != t || t->nbytes != t->numel * moe_dtype_size(t->dtype))
            abort();
        end = t->file_offset + t->nbytes;
        if (t->nbytes) {
            volatile uint8_t sink = ((const uint8_t *)t->data)[t->nbytes - 1];
            (void)sink;
        }
    }
    if (moe_st_count(f) && end != size) abort();
    (void)moe_st_metadata(f, "format");
    moe_st_close(f);
    return 0;
}
