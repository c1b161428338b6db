/* tokenizer.json byte-level BPE (GPT-2 style): the ByteLevel pre-tokenizer
 * with its regex, merges by rank, added/special tokens matched verbatim
 * before pre-tokenisation.  Encodes UTF-8 text to ids and decodes ids back
 * to the exact bytes. */
#ifndef MOE_TOKENIZER_H
#define MOE_TOKENIZER_H

#include "../common/moe.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_tokenizer;

struct moe_tokenizer *moe_tokenizer_load(const char *path);   /* tokenizer.json */
struct moe_tokenizer *moe_tokenizer_parse(const char *json, size_t len, const char *what);
/* <dir>/tokenizer.json of a model directory. */
struct moe_tokenizer *moe_tokenizer_load_dir(const char *dir);
void moe_tokenizer_free(struct moe_tokenizer *t);

int moe_tokenizer_vocab_size(const struct moe_tokenizer *t);
/* Id of a token string (special or regular), -1 if absent. */
int moe_tokenizer_token_id(const struct moe_tokenizer *t, const char *token);

/* Encode len bytes of UTF-8 text.  *ids is malloc'd (caller frees). Special
 * tokens in the text are recognised.  Invalid UTF-8 is an error. */
enum moe_status moe_tokenizer_encode(const struct moe_tokenizer *t, const char *text, size_t len,
                                     int **ids, size_t *n_ids);
/* The pieces the pre-tokenizer cuts text into before BPE: text is len bytes
 * of valid UTF-8, already normalized, without added tokens (none are looked
 * for), and ByteLevel's add_prefix_space is not applied.  *lens (malloc'd)
 * gets each piece's length in bytes, *n their number. */
enum moe_status moe_tokenizer_pretokenize(const struct moe_tokenizer *t, const char *text, size_t len,
                                          size_t **lens, size_t *n);
/* Decode ids to bytes; *text malloc'd and NUL-terminated.  Out-of-range ids are an error. */
enum moe_status moe_tokenizer_decode(const struct moe_tokenizer *t, const int *ids, size_t n,
                                     char **text, size_t *len);
/* Bytes of one token as decoded (for streaming); returns length, or -1 for a bad id.
 * buf gets at most cap bytes (the first min(length, cap)); buf may be NULL to ask the length.
 * A token may hold part of a UTF-8 character: join bytes before printing text. */
int moe_tokenizer_token_bytes(const struct moe_tokenizer *t, int id, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
