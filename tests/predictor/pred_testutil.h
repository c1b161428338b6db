/* Shared set-up of the predictor tests that run the bundled model. */
#ifndef MOE_PRED_TESTUTIL_H
#define MOE_PRED_TESTUTIL_H

#include "model/model.h"
#include "model/tokenizer.h"
#include "tests/test_util.h"

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

#endif
