/* libFuzzer target: the path predictor file loader (metadata, shapes, tensors)
 * on arbitrary bytes, with no model shape to match; a loaded predictor must be
 * usable: one row's features and forward pass.  The corpus holds metadata that
 * promises far more than the tensors hold (huge_*): refused without allocating
 * for it, where the smoke's 2 GiB malloc limit would stop the run. */
#include "predictor/path_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz_path_model", 0);
    if (fd < 0) return 0;
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    if (size && write(fd, data, size) != (ssize_t)size) goto out;
    struct moe_path_model *m = moe_path_model_load(path, 0, 0, 0, 0);
    if (m) {
        float *emb = calloc((size_t)m->dim, sizeof(float)), *x = calloc((size_t)m->n_in, sizeof(float));
        float *p = calloc((size_t)m->n_out, sizeof(float)), *h = calloc((size_t)m->width, sizeof(float));
        int *prev = malloc(sizeof(int) * (size_t)m->n_moe * (size_t)m->top_k);
        if (emb && x && p && h && prev) {
            for (int i = 0; i < m->dim; i++) emb[i] = (float)(i % 7) - 3.0f;
            for (int i = 0; i < m->n_moe * m->top_k; i++) prev[i] = i % m->n_experts;
            moe_path_model_features_ex(m, emb, prev, NULL, emb, x);
            moe_path_model_forward(m, NULL, 1, x, p, h);
            /* sigmoids: NaN only where finite weights overflow to inf - inf */
            for (int i = 0; i < m->n_out; i++)
                if (p[i] < 0 || p[i] > 1) abort();
        }
        free(emb);
        free(x);
        free(p);
        free(h);
        free(prev);
        moe_path_model_free(m);
    }
out:
    close(fd);
    return 0;
}
