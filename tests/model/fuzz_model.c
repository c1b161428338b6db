/* libFuzzer target: opening a model directory (moe_model_open): config.json, a single
 * model.safetensors or model.safetensors.index.json with its shards, and the binding of every weight
 * the family's recipe needs (presence, dtype, shape, FP8 block factors).
 *
 * The input is the directory's files one after another, each ended by the separator "\n@@FILE@@\n":
 * config.json, then either model.safetensors (one more part) or model.safetensors.index.json and the
 * shards a.safetensors and b.safetensors (three more).  A model that opens must have a view of every
 * expert matrix of its MoE layers inside one of its mappings; bad input must be refused with a
 * message, never crash.  The seeds (corpus_model/, written by gen_fuzz_model_seeds.py) are a tiny
 * Mixtral in one file and in two shards, and malformed indexes. */
#include "model/model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char dir[64];

static void remove_dir(void)
{
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(dir, sizeof(dir), "/tmp/moe-fuzz-model-XXXXXX");
    if (!mkdtemp(dir)) {
        fprintf(stderr, "fuzz_model: mkdtemp: %s\n", strerror(errno));
        exit(1);
    }
    atexit(remove_dir);
    return 0;
}

static void put(const char *name, const uint8_t *p, size_t n)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n)) abort();
    fclose(f);
}

static void drop(const char *name)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
}

static bool inside(const struct moe_model *m, const struct moe_wview *w)
{
    for (int i = 0; i < m->n_shards; i++)
        for (size_t k = 0; k < moe_st_count(m->shards[i]); k++) {
            const struct moe_st_tensor *t = moe_st_at(m->shards[i], k);
            if (t->data == w->data && t->nbytes == w->nbytes) return true;
        }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char sep[] = "\n@@FILE@@\n";
    const size_t sl = sizeof(sep) - 1;
    const uint8_t *part[5];
    size_t len[5], n = 0, at = 0;
    while (n < 5) {
        const uint8_t *s = at <= size ? memmem(data + at, size - at, sep, sl) : NULL;
        part[n] = data + at;
        len[n++] = s ? (size_t)(s - (data + at)) : size - at;
        if (!s) break;
        at = (size_t)(s - data) + sl;
    }
    static const char *const names[2][4] = {
        { "config.json", "model.safetensors", NULL, NULL },
        { "config.json", "model.safetensors.index.json", "a.safetensors", "b.safetensors" },
    };
    bool sharded = n >= 3;
    for (size_t i = 0; i < 4; i++) {
        const char *name = names[sharded][i];
        if (name && i < n) put(name, part[i], len[i]);
    }
    moe_error_clear();
    struct moe_model *m = moe_model_open(dir);
    if (m) {
        const struct moe_config *c = &m->cfg;
        for (int l = 0; l < c->n_layers; l++)
            for (int e = 0; c->is_moe[l] && e < c->n_experts; e++) {
                const struct moe_expert_w *x = moe_model_expert(m, l, e);
                if (!inside(m, &x->gate) || !inside(m, &x->up) || !inside(m, &x->down)) abort();
            }
        if (moe_model_check_files(m) != MOE_OK) abort();
        moe_model_close(m);
    } else if (!moe_last_error()[0]) {
        abort(); /* refused without saying why */
    }
    for (size_t s = 0; s < 2; s++)
        for (size_t i = 0; i < 4; i++)
            if (names[s][i]) drop(names[s][i]);
    return 0;
}
