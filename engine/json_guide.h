/* JSON mode: a byte-level recognizer of one JSON object (RFC 8259), fed the
 * bytes of each candidate token, so decoding can be kept to text that is, at
 * every step, the beginning of a valid object, and stop when it is whole. */
#ifndef MOE_JSON_GUIDE_H
#define MOE_JSON_GUIDE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
 * blob[off[id] .. off[id + 1]) (none for special tokens). */
struct moe_token_bytes {
    int n;
    const char *blob;
    const uint32_t *off; /* [n + 1] */
};

#ifdef __cplusplus
}
#endif
#endif
