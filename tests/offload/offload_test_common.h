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
    "tests/fixtures/deepseek-v3-variants/fp8", /* FP8 experts: widened when packed or read from safetensors */
};

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
