/* JSON mode: a byte-level recognizer of one JSON object (RFC 8259), fed the
 * bytes of each candidate token, so decoding can be kept to text that is, at
 * every step, the beginning of a valid object, and stop when it is whole. */
#ifndef MOE_JSON_GUIDE_H
#define MOE_JSON_GUIDE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/moe.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_JSON_MAX_DEPTH 64 /* nested objects and arrays */
#define MOE_JSON_MAX_WS 32    /* whitespace bytes in a row between tokens (a model that would
                                 write whitespace without end cannot) */

struct moe_json_state {
    uint64_t stack;   /* bit d: level d is an object (1) or an array (0) */
    uint8_t depth;    /* open containers */
    uint8_t mode;     /* what the next byte may be (json_guide.c) */
    uint8_t aux;      /* literal position, \u hex digits left, or UTF-8 continuation bytes left */
    uint8_t lit;      /* which literal (true, false, null) */
    bool key;         /* the string being read is an object key */
    uint8_t ws;       /* whitespace bytes in a row */
};

/* Expect an object: '{' first (no whitespace before it), nothing after its '}'. */
void moe_json_init(struct moe_json_state *s);
/* Feed n bytes; false (s then undefined: feed a copy) when they cannot continue the object. */
bool moe_json_feed(struct moe_json_state *s, const char *b, size_t n);
/* Whether the object is complete. */
bool moe_json_done(const struct moe_json_state *s);

/* Every token's bytes (the vocabulary as text), for masking candidates: token id's bytes are
 * blob[off[id] .. off[id + 1]) (none past the tokenizer's vocabulary). */
struct moe_token_bytes {
    int n;
    const char *blob;
    const uint32_t *off; /* [n + 1] */
};

struct moe_tokenizer;
/* Build t for a model vocabulary of vocab ids from the tokenizer (streamed text's bytes); free with
 * moe_token_bytes_free. */
enum moe_status moe_token_bytes_build(const struct moe_tokenizer *tok, int vocab, struct moe_token_bytes *t);
void moe_token_bytes_free(struct moe_token_bytes *t);

/* JSON mode's step: out[id] = logits[id] for every token whose bytes continue the object from s and
 * that is not an end-of-sequence token (is_eos(ud, id)), else -inf.  Returns how many are allowed
 * (0: none continues the object). */
int moe_json_mask(const struct moe_json_state *s, const struct moe_token_bytes *t, const float *logits, int vocab,
                  bool (*is_eos)(const void *ud, int id), const void *ud, float *out);
/* Advance s by token id's bytes (one moe_json_mask allowed). */
void moe_json_take(struct moe_json_state *s, const struct moe_token_bytes *t, int id);

#ifdef __cplusplus
}
#endif
#endif
