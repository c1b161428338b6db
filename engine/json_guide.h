/* JSON mode and JSON schemas: a byte-level recognizer of one JSON value (RFC
 * 8259) that follows a compiled schema, fed the bytes of each candidate token,
 * so decoding can be kept to text that is, at every step, the beginning of a
 * valid value, and stop when it is whole.  Without a schema the value is any
 * JSON object. */
#ifndef MOE_JSON_GUIDE_H
#define MOE_JSON_GUIDE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/moe.h"
#include "grammar.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_JSON_MAX_DEPTH 64      /* nested objects and arrays */
#define MOE_JSON_MAX_WS 32         /* whitespace bytes in a row between tokens, at most (a model that
                                      would write whitespace without end cannot); fewer near the top:
                                      2 + 4 per open object or array, two line breaks */
#define MOE_JSON_MAX_PROPS 64      /* properties of one object schema */
#define MOE_JSON_MAX_ENUM 1024     /* values of one enum, texts of one choice */
#define MOE_JSON_MAX_NODES 4096    /* compiled schema nodes */
#define MOE_JSON_MAX_SCHEMA 262144 /* bytes of a schema's text */
#define MOE_JSON_MAX_TAGS 64       /* structures of a structural tag */
#define MOE_JSON_MAX_TRIGGERS 16   /* ... and its triggers */
#define MOE_JSON_MAX_TAG_BYTES 256 /* bytes of a trigger, a begin or an end */
#define MOE_JSON_MAX_NUM 32        /* bytes of a number with bounds (minimum, maximum, ...), sign and
                                      point included; an integer with bounds has up to 18 digits */

/* A compiled schema (json_schema.c), shared by reference: immutable once made. */
struct moe_json_schema;

/* Compile a JSON Schema given as JSON text.  Supported: type (one or a list), properties,
 * required, additionalProperties, items, prefixItems, minItems, maxItems, minLength, maxLength,
 * pattern (json_regex.c), minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf (integers), enum, const,
 * anyOf / oneOf whose branches begin with different characters, allOf of one schema, $ref to
 * any JSON pointer inside the schema, and the annotations (title, description, default,
 * examples, ...), which are ignored.  Any other keyword is refused by name (MOE_ENOTSUP), as is
 * a root the output could not end with (a bare number).  The result has one reference;
 * moe_json_schema_unref frees it. */
enum moe_status moe_json_schema_parse(const char *text, size_t len, struct moe_json_schema **out);
/* Where jansson refused text (what: "JSON schema", "request body") for a number it cannot hold, an
 * integer beyond int64 or a number beyond a double, which is valid JSON: MOE_ERANGE with a message that
 * says so; MOE_OK for any other refusal (the text is not JSON). */
struct json_error_t;
enum moe_status moe_json_number_refused(const struct json_error_t *e, const char *what);
/* A "schema" whose value is exactly one of n texts, as they are (not JSON: vLLM's guided_choice):
 * 1..MOE_JSON_MAX_ENUM non-empty texts, none the beginning of another (the output could not end
 * after it).  One reference, as moe_json_schema_parse. */
enum moe_status moe_json_schema_choice(const char *const *texts, const size_t *lens, int n,
                                       struct moe_json_schema **out);
/* A "schema" whose value is raw text (not JSON) that the regular expression pat[0..len) (UTF-8,
 * ECMA-262 syntax as for a schema's pattern) matches as a whole: vLLM's guided_regex.  An empty
 * pattern (len 0) is refused, MOE_EINVAL, as an empty choice text is ('()' matches the empty text
 * alone).  One reference, as moe_json_schema_parse. */
enum moe_status moe_json_schema_regex(const char *pat, size_t len, struct moe_json_schema **out);
/* A "schema" whose value is raw text that the GBNF grammar text[0..len) derives from its rule
 * `root` (grammar.h): vLLM's guided_grammar, llama.cpp's grammar.  One reference, as
 * moe_json_schema_parse. */
enum moe_status moe_json_schema_grammar(const char *text, size_t len, struct moe_json_schema **out);
/* A "schema" of free text with structures in it (vLLM's structural_tag): JSON text {"structures":
 * [{"begin": text, "schema": JSON Schema, "end": text}, ...], "triggers": [text, ...]}.  Where the
 * output writes a trigger it is committed to a structure whose begin starts with it: the rest of
 * that begin, one value of its schema (whitespace and all, as JSON mode writes it), up to 32 bytes
 * of whitespace and its end; then free text again.  The output may end in free text only.  Each
 * begin starts with a trigger, each trigger begins a structure, no begin begins another.  One
 * reference, as moe_json_schema_parse. */
enum moe_status moe_json_schema_tags(const char *text, size_t len, struct moe_json_schema **out);
/* Whether sc holds the output to raw text (a choice, a regular expression, a grammar or a
 * structural tag), not to JSON. */
bool moe_json_schema_raw(const struct moe_json_schema *sc);
/* Hold the output to compact JSON: between tokens one space at most, no line break (tool calls),
 * or with tight, no whitespace at all (vLLM's disable_any_whitespace).  Only before sc is shared. */
void moe_json_schema_compact(struct moe_json_schema *sc, bool tight);
struct moe_json_schema *moe_json_schema_ref(struct moe_json_schema *sc);
void moe_json_schema_unref(struct moe_json_schema *sc);

struct moe_json_frame {   /* an object or array being read */
    uint64_t seen;        /* object: the declared properties written; unique array: the literals */
    uint32_t count;       /* array: the values written; object: the keys */
    uint16_t node;        /* its schema node */
    uint16_t value;       /* object: the node of the value after the current key */
};

struct moe_json_state {
    const struct moe_json_schema *sc;
    uint64_t cand;        /* the key's candidates still matching */
    uint32_t llo, lhi;    /* the literal's: lits[llo .. lhi) */
    uint32_t pos;         /* bytes of the key or literal read */
    uint32_t dfa;         /* the pattern's automaton state in the string or text being read (0: none) */
    uint32_t ucp;         /* the bits of the character being read (UTF-8 or \u escape) */
    uint16_t cur;         /* the node of the value expected or being read */
    uint8_t depth;        /* open containers */
    uint8_t mode;         /* what the next byte may be (json_guide.c) */
    uint8_t aux;          /* \u hex digits or UTF-8 continuation bytes left */
    uint8_t ws;           /* whitespace bytes in a row */
    uint8_t nl;           /* ... of which line breaks */
    uint8_t lo, hi;       /* the range of the next UTF-8 continuation byte */
    uint8_t nlen;         /* bytes of num */
    bool key;             /* the string being read is an object key */
    bool integer;         /* the number being read is an integer */
    bool bounded;         /* the string or number being read has bounds (its node: cur) */
    bool text;            /* raw text, not JSON (moe_json_schema_regex) */
    const struct moe_json_schema *tag; /* a structural tag's (its free text; sc is a structure's inside
                                          one), else NULL */
    uint64_t tcand;       /* the structures whose begin still matches */
    uint16_t tpos;        /* bytes of the trigger, begin or end matched */
    uint8_t ttrig;        /* the trigger partly matched */
    uint8_t tstruct;      /* the structure being read */
    union {
        struct moe_json_frame f[MOE_JSON_MAX_DEPTH];
        uint16_t g[MOE_GRAMMAR_WORDS]; /* a grammar's parse stacks (grammar.h) */
    };
    char num[MOE_JSON_MAX_NUM]; /* a bounded number's text so far (after the frames: copied only
                                   while in use) */
};

/* Expect one value of the schema sc (NULL: any JSON object); its first byte is not whitespace,
 * nothing follows it.  sc must outlive s. */
void moe_json_init(struct moe_json_state *s, const struct moe_json_schema *sc);
/* The tags of a reasoning block (serve's reasoning parser "think"). */
#define MOE_THINK_OPEN "<think>"
#define MOE_THINK_CLOSE "</think>"
/* Whether a prompt opens a reasoning block: it ends in "<think>" and whitespace. */
bool moe_think_opened(const char *prompt, size_t len);
/* Whether a prompt closes one (a template that turns reasoning off writes an empty block): it ends
 * in "</think>" and whitespace. */
bool moe_think_closed(const char *prompt, size_t len);

/* The same value after an optional reasoning block: the output may begin with "<think>" (opened:
 * it begins inside the block, the prompt opened it), whose text up to "</think>" is free, then
 * whitespace, then the value (serve's reasoning parser "think").  A raw-text sc (a choice or a
 * regular expression) holds the whole output as moe_json_init does. */
void moe_json_init_after_think(struct moe_json_state *s, const struct moe_json_schema *sc, bool opened);
/* Copy src to dst (only the frames and number text in use). */
void moe_json_copy(struct moe_json_state *dst, const struct moe_json_state *src);
/* Feed n bytes; false (s then undefined: feed a copy) when they cannot continue the value. */
bool moe_json_feed(struct moe_json_state *s, const char *b, size_t n);
/* Whether the value is complete: nothing can follow. */
bool moe_json_done(const struct moe_json_state *s);
/* Whether the output may end here: the value is complete, or raw text matches its pattern (and
 * could also go on); an end-of-sequence token is then allowed. */
bool moe_json_may_end(const struct moe_json_state *s);

/* Every token's bytes (the vocabulary as text), for masking candidates: token id's bytes are
 * blob[off[id] .. off[id + 1]) (none past the tokenizer's vocabulary). */
struct moe_token_bytes {
    int n;
    const char *blob;
    const uint32_t *off; /* [n + 1] */
    int n_sorted;        /* the ids with bytes, ... */
    const int *order;    /* [n_sorted] ... in the order of their bytes */
    const uint32_t *lcp; /* [n_sorted]: bytes order[i] shares with order[i - 1] at its start */
    const bool *plain;   /* [n]: the token is whole characters of text, no quote or backslash */
    const uint32_t *chars; /* [n]: a plain token's characters (code points) */
};

struct moe_tokenizer;
/* Build t for a model vocabulary of vocab ids from the tokenizer (streamed text's bytes); free with
 * moe_token_bytes_free. */
enum moe_status moe_token_bytes_build(const struct moe_tokenizer *tok, int vocab, struct moe_token_bytes *t);
/* Build t from n tokens' bytes (token id's are blob[off[id] .. off[id + 1])), copied. */
enum moe_status moe_token_bytes_make(const char *blob, const uint32_t *off, int n, struct moe_token_bytes *t);
void moe_token_bytes_free(struct moe_token_bytes *t);

/* One guided step: out[id] = logits[id] for every token whose bytes continue the value from s and
 * that is not an end-of-sequence token (is_eos(ud, id)), and for the end-of-sequence tokens where
 * the output may end (moe_json_may_end) but could go on, else -inf.  is_eos NULL (ignore_eos: no
 * token ends the output): every token by its bytes.  Returns how many are allowed (0: none
 * continues the value). */
int moe_json_mask(const struct moe_json_state *s, const struct moe_token_bytes *t, const float *logits, int vocab,
                  bool (*is_eos)(const void *ud, int id), const void *ud, float *out);
/* Advance s by token id's bytes (one moe_json_mask allowed). */
void moe_json_take(struct moe_json_state *s, const struct moe_token_bytes *t, int id);

#ifdef __cplusplus
}
#endif
#endif
