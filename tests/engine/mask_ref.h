/* The bundled model's vocabulary for the mask tests (test_json_schema, test_grammar): the mask
 * against its reference, every token fed on its own to a copy of the recognizer. */
#ifndef MOE_MASK_REF_H
#define MOE_MASK_REF_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/json_guide.h"
#include "model/tokenizer.h"
#include "tests/test_util.h"

struct mask_vocab {
    struct moe_tokenizer *tok;
    struct moe_token_bytes tb;
    int V;
    float *logits, *out; /* [V]: logit i is i % mod; the mask's output */
    int *ok;             /* [V]: the tokens the reference allows, after mask_check */
};

/* t[0..n) fed byte by byte from the start of sc: the byte at which it is refused; -1 when it is whole
 * and cannot go on, -2 when the output may end there and go on, -3 when it is a beginning only. */
static inline int feed_verdict(const struct moe_json_schema *sc, const char *t, size_t n)
{
    struct moe_json_state s;
    moe_json_init(&s, sc);
    for (size_t i = 0; i < n; i++)
        if (!moe_json_feed(&s, t + i, 1)) return (int)i;
    return moe_json_done(&s) ? -1 : moe_json_may_end(&s) ? -2 : -3;
}

static void mask_vocab_open(struct mask_vocab *mv, int mod)
{
    char path[512];
    t_path(path, sizeof(path), "models/pycode-moe-18m/tokenizer.json");
    mv->tok = moe_tokenizer_load(path);
    REQUIRE(mv->tok, "%s: %s", path, moe_last_error());
    mv->V = moe_tokenizer_vocab_size(mv->tok);
    REQUIRE(moe_token_bytes_build(mv->tok, mv->V, &mv->tb) == MOE_OK, "%s", moe_last_error());
    mv->logits = malloc(sizeof(float) * (size_t)mv->V);
    mv->out = malloc(sizeof(float) * (size_t)mv->V);
    mv->ok = malloc(sizeof(int) * (size_t)mv->V);
    REQUIRE(mv->logits && mv->out && mv->ok, "out of memory");
    for (int i = 0; i < mv->V; i++) mv->logits[i] = (float)(i % mod);
}

static void mask_vocab_close(struct mask_vocab *mv)
{
    free(mv->logits);
    free(mv->out);
    free(mv->ok);
    moe_token_bytes_free(&mv->tb);
    moe_tokenizer_free(mv->tok);
}

/* A toy vocabulary: token i's bytes are toks[i] (up to 64 tokens, 1024 bytes in all). */
static void toy_vocab(const char *const *toks, int n, struct moe_token_bytes *tb)
{
    char blob[1024];
    uint32_t off[65], at = 0;
    REQUIRE(n < 64, "%d toy tokens", n);
    for (int i = 0; i < n; i++) {
        size_t l = strlen(toks[i]);
        REQUIRE(at + l <= sizeof(blob), "toy tokens beyond %zu bytes", sizeof(blob));
        off[i] = at;
        memcpy(blob + at, toks[i], l);
        at += (uint32_t)l;
    }
    off[n] = at;
    REQUIRE(moe_token_bytes_make(blob, off, n, tb) == MOE_OK, "%s", moe_last_error());
}

/* Mask from s, then feed every token on its own: *n the tokens the mask allowed, *m those the
 * reference allows (mv->ok[0 .. *m)); returns the tokens on which the two differ (or where an
 * allowed token's logit was changed). */
static int mask_check(struct mask_vocab *mv, const struct moe_json_state *s, int *n, int *m)
{
    static struct moe_json_state c;
    const struct moe_token_bytes *tb = &mv->tb;
    *n = moe_json_mask(s, tb, mv->logits, mv->V, NULL, NULL, mv->out);
    *m = 0;
    int differ = 0;
    for (int id = 0; id < mv->V; id++) {
        moe_json_copy(&c, s);
        uint32_t a = tb->off[id], b = tb->off[id + 1];
        bool want = b > a && moe_json_feed(&c, tb->blob + a, b - a);
        differ += want != !isinf(mv->out[id]) || (want && mv->out[id] != mv->logits[id]);
        if (want) mv->ok[(*m)++] = id;
    }
    return differ;
}

#endif
