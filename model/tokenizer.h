/* tokenizer.json BPE: byte-level (GPT-2 style: the ByteLevel pre-tokenizer
 * with its regex, or Qwen2's split) or SentencePiece-style (Llama, Mixtral:
 * spaces as "\u2581", BPE over characters with byte fallback); merges by rank,
 * added/special tokens matched verbatim before pre-tokenisation.  Encodes
 * UTF-8 text to ids and decodes ids back to bytes. */
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
/* The token string of id as the vocabulary spells it (tokenizer.json's, as Hugging Face's
 * convert_ids_to_tokens gives it: "Ġdef", "<0x0A>", an added token's content): *len bytes in the
 * tokenizer's memory, not NUL-terminated; NULL when id is no token. */
const char *moe_tokenizer_token_str(const struct moe_tokenizer *t, int id, size_t *len);

/* Encode len bytes of UTF-8 text.  *ids is malloc'd (caller frees). Special
 * tokens in the text are recognised.  Invalid UTF-8 is an error. */
enum moe_status moe_tokenizer_encode(const struct moe_tokenizer *t, const char *text, size_t len,
                                     int **ids, size_t *n_ids);
/* As moe_tokenizer_encode, with the ids that the post_processor's
 * TemplateProcessing puts around a single text (a Llama/Mixtral BOS), as the
 * Hugging Face library does with add_special_tokens: a prompt to generate from. */
enum moe_status moe_tokenizer_encode_prompt(const struct moe_tokenizer *t, const char *text, size_t len,
                                            int **ids, size_t *n_ids);
/* The pieces the pre-tokenizer cuts text into before BPE: text is len bytes
 * of valid UTF-8, already normalized, without added tokens (none are looked
 * for), and ByteLevel's add_prefix_space is not applied.  Metaspace's pieces
 * are cut at spaces (each starts one) and are given in the bytes of text,
 * before spaces become "\u2581" and one is put in front.  *lens (malloc'd)
 * gets each piece's length in bytes, *n their number. */
enum moe_status moe_tokenizer_pretokenize(const struct moe_tokenizer *t, const char *text, size_t len,
                                          size_t **lens, size_t *n);
/* Decode ids to bytes; *text malloc'd and NUL-terminated.  Out-of-range ids are an error.
 * Decoders that strip the text's first space (SentencePiece kinds) do so here,
 * not in moe_tokenizer_token_bytes. */
enum moe_status moe_tokenizer_decode(const struct moe_tokenizer *t, const int *ids, size_t n,
                                     char **text, size_t *len);
/* Bytes of one token as decoded (for streaming, where a token continues the
 * text before it: a "\u2581" is always a space); returns length, or -1 for a bad id.
 * buf gets at most cap bytes (the first min(length, cap)); buf may be NULL to ask the length.
 * A token may hold part of a UTF-8 character: join bytes before printing text. */
int moe_tokenizer_token_bytes(const struct moe_tokenizer *t, int id, char *buf, size_t cap);

/* Generated text as its tokens come (what generate prints and serve sends), valid UTF-8: each
 * token's bytes as moe_tokenizer_token_bytes gives them, with what is not yet sure held for the
 * next token:
 *  - the bytes of a character that a token leaves cut; what turns out not to be UTF-8 becomes one
 *    U+FFFD per maximal subpart (moe_utf8_lossy), as the Hugging Face byte-level decoder reads it;
 *  - under a ByteFallback decoder, a run of <0xXX> byte tokens until a token of another kind (or
 *    the end) ends it: the run is its bytes when they are UTF-8 as a whole, else one U+FFFD for each
 *    of its tokens, as moe_tokenizer_decode and the Hugging Face ByteFallback decoder turn it; once
 *    the run can no longer be UTF-8 its U+FFFDs go out at once.
 * Zero-initialise; moe_tok_stream_free frees it. */
struct moe_tok_stream {
    char *held;        /* bytes not given out yet */
    size_t n_held, cap_held;
    size_t whole;      /* in a run: held[0..whole) are whole characters */
    bool run, bad;     /* held is a run of byte tokens (a byte each); bad: the run cannot be UTF-8 */
    char *out;         /* the text of the last call */
    size_t cap_out;
};
/* The text token id adds, *len bytes, valid until the next call with x: "" for an id without a
 * token (which changes nothing), NULL when out of memory. */
const char *moe_tokenizer_stream(const struct moe_tokenizer *t, struct moe_tok_stream *x, int id, size_t *len);
/* What x holds that the end would give out as it is: a run of byte tokens that is whole UTF-8 so
 * far (the text of the tokens streamed, were they the last; a later byte token may still turn the
 * run into U+FFFDs).  *len 0 when nothing held is sure in that sense.  Valid until the next call. */
const char *moe_tokenizer_stream_pending(const struct moe_tok_stream *x, size_t *len);
/* The end of the tokens: what x holds, as text (a cut character or a run that is not UTF-8 as
 * U+FFFD); x is then empty, as new.  NULL when out of memory. */
const char *moe_tokenizer_stream_end(struct moe_tok_stream *x, size_t *len);
void moe_tok_stream_free(struct moe_tok_stream *x);

#ifdef __cplusplus
}
#endif
#endif
