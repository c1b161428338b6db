/* Shared set-up of the predictor tests that run the bundled model. */
#ifndef MOE_PRED_TESTUTIL_H
#define MOE_PRED_TESTUTIL_H

#include "model/model.h"
#include "model/tokenizer.h"
#include "predictor/path_model.h"
#include "predictor/predictor.h"
#include "tests/test_util.h"

#include <unistd.h>

/* Open the bundled model (its directory into dir) and encode text with its
 * tokenizer: *toks malloc'd, *nt tokens.  NULL with a message on failure. */
static inline struct moe_model *t_bundled_encode(char *dir, size_t cap, const char *text, int **toks, size_t *nt)
{
    t_path(dir, cap, "models/pycode-moe-18m");
    struct moe_model *m = moe_model_open(dir);
    if (!m) {
        fprintf(stderr, "open %s: %s\n", dir, moe_last_error());
        return NULL;
    }
    char tkp[4200];
    snprintf(tkp, sizeof tkp, "%s/tokenizer.json", dir);
    struct moe_tokenizer *tk = moe_tokenizer_load(tkp);
    if (!tk || moe_tokenizer_encode(tk, text, strlen(text), toks, nt) != MOE_OK) {
        fprintf(stderr, "tokenizer %s: %s\n", tkp, moe_last_error());
        moe_tokenizer_free(tk);
        moe_model_close(m);
        return NULL;
    }
    moe_tokenizer_free(tk);
    return m;
}

/* A path model for m with the history (decay 0.9) and context blocks, 24 hidden units and random weights (seed 11),
 * saved to a new file named by the mkstemp template pfile (the name written back), and *sp the spec of a
 * predictor that reads it ("path:FILE", the model in dir).  The caller frees the model and unlinks the file. */
static inline struct moe_path_model *t_context_path_model(const struct moe_model *m, const char *dir, char *pfile,
                                                          struct moe_pred_spec *sp)
{
    const struct moe_config *cfg = &m->cfg;
    struct moe_path_model *pm =
        moe_path_model_create_ex(moe_config_n_moe(cfg), cfg->n_experts, cfg->top_k, cfg->hidden, 24,
                                 &(struct moe_path_opts){ .horizon = 2, .hist_decay = 0.9f, .context = true }, 11);
    REQUIRE(pm, "path model: %s", moe_last_error());
    int fd = mkstemp(pfile);
    REQUIRE(fd >= 0, "mkstemp");
    close(fd);
    REQUIRE(moe_path_model_save(pm, pfile, NULL) == MOE_OK, "save: %s", moe_last_error());
    char spec_s[4200];
    snprintf(spec_s, sizeof spec_s, "path:%s", pfile);
    REQUIRE(moe_pred_spec_parse(spec_s, dir, sp) == MOE_OK, "spec: %s", moe_last_error());
    return pm;
}

#endif
