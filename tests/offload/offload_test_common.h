/* Helpers shared by the offload tests: temp dirs, model list, packing. */
#ifndef OFFLOAD_TEST_COMMON_H
#define OFFLOAD_TEST_COMMON_H

#include "../../offload/store.h"
#include "../test_util.h"

#include <dirent.h>
#include <unistd.h>

static const char *const t_models[] = {
    "tests/fixtures/hf-tiny/mixtral", "tests/fixtures/hf-tiny/qwen2_moe",
    "tests/fixtures/hf-tiny/qwen3_moe", "tests/fixtures/hf-tiny/olmoe", "tests/fixtures/hf-tiny/deepseek_v3",
    "models/pycode-moe-18m",
    "tests/fixtures/deepseek-v3-variants/fp8", /* FP8 experts: FP8 records, widened in the device tier */
};

/* An expert's gate | up | down as records hold them (an FP8 checkpoint's widened to BF16): malloc'd,
 * *mat: bytes of one matrix. */
static inline uint8_t *t_expert_stored(const struct moe_model *m, int l, int e, size_t mat[3])
{
    const struct moe_expert_w *x = moe_model_expert(m, l, e);
    const struct moe_wview *w[3] = { &x->gate, &x->up, &x->down };
    size_t total = 0;
    for (int k = 0; k < 3; k++) total += mat[k] = (size_t)moe_wview_stored_bytes(w[k]);
    uint8_t *b = malloc(total + 1);
    REQUIRE(b, "out of memory");
    for (int k = 0, at = 0; k < 3; at += (int)mat[k], k++) moe_wview_copy_stored(w[k], b + at);
    return b;
}

static char t_tmpdir[256];

static const char *t_tmp_make(const char *base)
{
    snprintf(t_tmpdir, sizeof(t_tmpdir), "%s/moe_offload_XXXXXX", base);
    return mkdtemp(t_tmpdir);
}

static void t_tmp_remove(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[600];
    if (!d) return;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

#endif
