/* tokenizer.json byte-level BPE, as the Hugging Face `tokenizers` library
 * runs it for GPT-2 style models (and the NFC + Qwen2 split of the Qwen and
 * GPT-NeoX tokenizers):
 *
 *   text ─▶ added tokens matched verbatim (leftmost-longest; first the
 *           non-normalized ones, then, in the gaps after the normalizer (none
 *           or NFC), the normalized ones), found by walking a byte trie of
 *           their contents
 *        ─▶ pre-tokenizer: the GPT-2 split regex of ByteLevel
 *             's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *           or Qwen2's Split regex (both hand-written matchers below), or
 *           a Sequence of Split regexes (tokenizer_regex.c: DeepSeek-V3's
 *           three, tiktoken-style ones), each piece's bytes mapped to the
 *           printable "byte-level" alphabet
 *        ─▶ BPE: merges applied lowest rank first (ties: leftmost), exactly
 *           like tokenizers' Word::merge_all
 *   ids  ─▶ ByteLevel decoder: token characters mapped back to bytes.
 *
 * Vocab and merges live in open-addressing hash maps; token strings in one
 * byte pool.  Encoding keeps its scratch in a per-call workspace, so a loaded
 * tokenizer is immutable and can be shared between threads. */
#include "tokenizer.h"
#include "json_error.h"
#include "tokenizer_nfc.h"
#include "tokenizer_regex.h"
#include "tokenizer_unicode.h"
#include "utf8.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOK_MAX_ID (1 << 22)      /* largest accepted token id + 1 (real vocabs are < 300k) */
#define TOK_MAX_JSON (1u << 30)   /* largest tokenizer.json read, bytes */
#define TOK_MAX_SPLITS 8          /* Split pre-tokenizers in a Sequence */

/* ---- small growable buffers -------------------------------------------- */

struct bytebuf {
    char *p;
    size_t len, cap;
};

static bool bytebuf_append(struct bytebuf *b, const void *s, size_t n)
{
    if (!moe_grow((void **)&b->p, &b->cap, b->len + n, 1, 256))
        return false;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    return true;
}

struct idbuf {
    int *p;
    size_t len, cap;
};

static bool idbuf_push(struct idbuf *b, int id)
{
    if (!moe_grow((void **)&b->p, &b->cap, b->len + 1, sizeof(*b->p), 64))
        return false;
    b->p[b->len++] = id;
    return true;
}

/* ---- hashing ----------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;   /* FNV-1a 64 */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;                         /* splitmix64 finaliser */
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static size_t table_cap_for(size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n + 1)
        cap *= 2;
    return cap;
}

/* String -> id map.  Keys are (offset, length) in the tokenizer's pool. */
struct strmap {
    uint32_t *slot;     /* [cap] entry index + 1, 0 = empty */
    size_t cap;         /* power of two */
    uint32_t *off, *len; /* [n] key bytes in pool */
    int *id;            /* [n] value */
    size_t n, n_cap;
};

struct merge_map {
    uint64_t *key;      /* [cap] (left id << 32 | right id) + 1, 0 = empty */
    uint32_t *rank;     /* [cap] position in the merges list */
    int *new_id;        /* [cap] id of the merged token */
    size_t cap, n;
};

/* One added token (tokenizer.json "added_tokens"). */
struct added_token {
    uint32_t off, len;  /* content bytes in pool */
    int id;
    bool single_word, lstrip, rstrip, normalized, special;
};

/* Byte trie of the added tokens' contents: node 0 is the root; the path to a
 * node spells a prefix of one or more contents.  Edges out of the root are a
 * table, the others an open-addressing map from (node, byte). */
struct added_trie {
    uint32_t root[256];  /* child of the root per byte, 0 = none */
    uint64_t *key;       /* [cap] (node << 8 | byte) + 1, 0 = empty */
    uint32_t *child;     /* [cap] */
    size_t cap;          /* power of two */
    uint32_t *term;      /* [n_nodes] index in added[] + 1 of the token the node spells, 0 = none */
    uint32_t n_nodes;
};

/* The pre-tokenizer's regex, hand-compiled (tokenizer.json names it). */
enum split_rule {
    SPLIT_NONE,   /* ByteLevel with use_regex false alone: the whole segment is one piece */
    SPLIT_GPT2,   /* ByteLevel's own regex (GPT-2's) */
    SPLIT_QWEN2,  /* Split with Qwen2's regex, then ByteLevel without its regex */
    SPLIT_METASPACE, /* Metaspace with split: a piece starts at every "\u2581" */
    SPLIT_REGEX,  /* Splits with other regexes (each cuts the pieces of the one before), then ByteLevel */
};

/* When the Metaspace pre-tokenizer puts "\u2581" before a segment that does
 * not start with one. */
enum prepend_scheme {
    PREPEND_ALWAYS,
    PREPEND_FIRST,  /* only before the segment at the start of the input */
    PREPEND_NEVER,
};

/* How ids decode (the decoder of tokenizer.json). */
enum decoder_kind {
    DEC_RAW,        /* null: a token decodes to its string */
    DEC_BYTE_LEVEL, /* ByteLevel: each char maps back to its byte */
    DEC_METASPACE,  /* "\u2581" -> " ", with byte fallback and strips (SentencePiece kinds) */
};

struct moe_tokenizer {
    struct bytebuf pool;        /* all token strings, back to back */

    struct strmap vocab;        /* model vocab: token string -> id */
    struct strmap added_map;    /* added token content -> id */
    struct merge_map merges;

    int n_ids;                  /* vocab size: largest id + 1 */
    uint32_t *dec_off, *dec_len; /* [n_ids] decoded bytes of each id in pool; len UINT32_MAX = no token */
    uint32_t *str_off, *str_len; /* [n_ids] token string of each id in pool */

    struct added_token *added;  /* [n_added], in file order */
    size_t n_added;
    size_t n_added_raw, n_added_normalized; /* of them: matched before / after the normalizer */
    struct added_trie trie;     /* of the added tokens' contents */

    int byte_id[256];           /* id of the byte-level char of each byte, -1 if absent */
    int byte_fb_id[256][2];     /* <0xXX> fallback ids of the char's UTF-8 bytes (-1 absent) */
    int byte_fb_n[256];         /* number of fallback ids (0 = fallback unusable) */
    int unk_id;                 /* -1 when the model has no unk token */
    bool fuse_unk, byte_fallback, ignore_merges;
    bool add_prefix_space;      /* ByteLevel pre-tokenizer option */
    bool nfc;                   /* normalizer NFC: text between added tokens is NFC'd first */
    enum split_rule split;      /* how text is cut into pieces before BPE */
    struct moe_tok_regex *splits[TOK_MAX_SPLITS]; /* SPLIT_REGEX: the Splits' regexes, in order */
    int n_splits;

    /* SentencePiece-style BPE (Llama, Mixtral): no ByteLevel anywhere */
    bool char_level;            /* BPE starts from the text's characters, not its bytes */
    int raw_fb_id[256];         /* <0xXX> id of each byte, -1 absent */
    bool sp_normalizer;         /* normalizer Sequence[Prepend("\u2581"), Replace(" ", "\u2581")] */
    bool metaspace;             /* pre-tokenizer Metaspace: " " -> "\u2581", then prepend_scheme */
    enum prepend_scheme prepend;
    enum decoder_kind decoder;
    bool dec_replace, dec_byte_fallback; /* DEC_METASPACE: "\u2581" -> " ", <0xXX> -> the byte */
    bool dec_first_drops_mark;  /* Metaspace decoder: the first token loses its "\u2581"s */
    int dec_strip_start, dec_strip_stop; /* Fuse + Strip: spaces cut from the decoded text's ends */
    int tmpl_pre[4], tmpl_post[4]; /* post_processor TemplateProcessing: ids around a text */
    int n_tmpl_pre, n_tmpl_post;
};

/* ---- byte-level alphabet ----------------------------------------------- */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * other 68 bytes to U+0100.. in increasing byte order. */
static uint32_t byte_to_cp(unsigned b)
{
    if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff))
        return b;
    unsigned n = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae && x <= 0xff)))
            n++;
    return 256 + n;
}

/* Code point at s[i] of already-validated UTF-8; *n gets its length. */
static uint32_t utf8_at(const char *s, size_t end, size_t i, size_t *n)
{
    uint32_t cp = 0;
    *n = moe_utf8_next((const unsigned char *)s + i, end - i, &cp);
    if (!*n) {          /* cannot happen on validated text; step one byte */
        *n = 1;
        return 0xfffd;
    }
    return cp;
}

static enum moe_tok_class cp_class(uint32_t cp)
{
    if (cp < 0x80) {
        if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z'))
            return MOE_TOK_CLASS_LETTER;
        if (cp >= '0' && cp <= '9')
            return MOE_TOK_CLASS_NUMBER;
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0d))
            return MOE_TOK_CLASS_SPACE;
        return MOE_TOK_CLASS_OTHER;
    }
    return moe_tok_classify(cp);
}

/* ---- pool and maps ----------------------------------------------------- */

static bool pool_add(struct moe_tokenizer *t, const char *s, size_t n, uint32_t *off)
{
    if (t->pool.len + n > UINT32_MAX)
        return false;
    *off = (uint32_t)t->pool.len;
    return bytebuf_append(&t->pool, s, n);
}

static int strmap_get(const struct moe_tokenizer *t, const struct strmap *m, const char *s, size_t n)
{
    if (!m->cap)
        return -1;
    size_t mask = m->cap - 1;
    for (size_t i = hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        uint32_t e = m->slot[i];
        if (!e)
            return -1;
        e--;
        if (m->len[e] == n && !memcmp(t->pool.p + m->off[e], s, n))
            return m->id[e];
    }
}

static bool strmap_init(struct strmap *m, size_t n)
{
    m->cap = table_cap_for(n);
    m->slot = calloc(m->cap, sizeof(*m->slot));
    m->n_cap = n ? n : 1;
    m->off = malloc(m->n_cap * sizeof(*m->off));
    m->len = malloc(m->n_cap * sizeof(*m->len));
    m->id = malloc(m->n_cap * sizeof(*m->id));
    return m->slot && m->off && m->len && m->id;
}

static void strmap_free(struct strmap *m)
{
    free(m->slot);
    free(m->off);
    free(m->len);
    free(m->id);
}

/* Insert a key already in the pool; false if the key is present (*old gets its id). */
static bool strmap_put(const struct moe_tokenizer *t, struct strmap *m, uint32_t off, uint32_t len,
                       int id, int *old)
{
    size_t mask = m->cap - 1;
    const char *s = t->pool.p + off;
    size_t i = hash_bytes(s, len) & mask;
    for (;; i = (i + 1) & mask) {
        uint32_t e = m->slot[i];
        if (!e)
            break;
        e--;
        if (m->len[e] == len && !memcmp(t->pool.p + m->off[e], s, len)) {
            *old = m->id[e];
            return false;
        }
    }
    m->off[m->n] = off;
    m->len[m->n] = len;
    m->id[m->n] = id;
    m->slot[i] = (uint32_t)++m->n;
    return true;
}

static bool merge_map_init(struct merge_map *m, size_t n)
{
    m->cap = table_cap_for(n);
    m->key = calloc(m->cap, sizeof(*m->key));
    m->rank = malloc(m->cap * sizeof(*m->rank));
    m->new_id = malloc(m->cap * sizeof(*m->new_id));
    return m->key && m->rank && m->new_id;
}

static void merge_map_free(struct merge_map *m)
{
    free(m->key);
    free(m->rank);
    free(m->new_id);
}

static uint64_t pair_key(int a, int b)
{
    return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
}

/* A later duplicate of a pair overwrites the earlier one, as tokenizers'
 * HashMap collect does. */
static void merge_map_put(struct merge_map *m, int a, int b, uint32_t rank, int new_id)
{
    uint64_t k = pair_key(a, b);
    size_t mask = m->cap - 1;
    size_t i = hash_u64(k) & mask;
    while (m->key[i] && m->key[i] != k)
        i = (i + 1) & mask;
    if (!m->key[i])
        m->n++;
    m->key[i] = k;
    m->rank[i] = rank;
    m->new_id[i] = new_id;
}

static bool merge_map_get(const struct merge_map *m, int a, int b, uint32_t *rank, int *new_id)
{
    uint64_t k = pair_key(a, b);
    size_t mask = m->cap - 1;
    for (size_t i = hash_u64(k) & mask; m->key[i]; i = (i + 1) & mask) {
        if (m->key[i] == k) {
            *rank = m->rank[i];
            *new_id = m->new_id[i];
            return true;
        }
    }
    return false;
}

/* ---- loading ----------------------------------------------------------- */

void moe_tokenizer_free(struct moe_tokenizer *t)
{
    if (!t)
        return;
    free(t->pool.p);
    strmap_free(&t->vocab);
    strmap_free(&t->added_map);
    merge_map_free(&t->merges);
    free(t->dec_off);
    free(t->dec_len);
    free(t->str_off);
    free(t->str_len);
    free(t->added);
    free(t->trie.key);
    free(t->trie.child);
    free(t->trie.term);
    for (int i = 0; i < t->n_splits; i++)
        moe_tok_regex_free(t->splits[i]);
    free(t);
}

/* Read an optional boolean field; absent or null keeps *out. */
static enum moe_status opt_bool(json_t *obj, const char *key, bool *out, const char *what,
                                const char *where)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return MOE_OK;
    if (!json_is_boolean(v))
        return moe_errorf(MOE_EFORMAT, "%s: %s.%s must be true or false", what, where, key);
    *out = json_is_true(v);
    return MOE_OK;
}

static enum moe_status parse_vocab(struct moe_tokenizer *t, json_t *vocab, const char *what)
{
    size_t n = json_object_size(vocab);
    if (n == 0)
        return moe_errorf(MOE_EFORMAT, "%s: model.vocab is empty", what);
    if (!strmap_init(&t->vocab, n))
        return moe_errorf(MOE_ENOMEM, "%s: no memory for a vocab of %zu tokens", what, n);
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        size_t klen = strlen(key);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= TOK_MAX_ID)
            return moe_errorf(MOE_EFORMAT,
                              "%s: model.vocab[\"%.64s\"] must be an integer id in [0, %d)", what, key,
                              TOK_MAX_ID);
        if (klen == 0)
            return moe_errorf(MOE_EFORMAT, "%s: model.vocab has an empty token string", what);
        int id = (int)json_integer_value(v), old;
        uint32_t off;
        if (!pool_add(t, key, klen, &off))
            return moe_errorf(MOE_ENOMEM, "%s: no memory for the vocab strings", what);
        if (!strmap_put(t, &t->vocab, off, (uint32_t)klen, id, &old))
            return moe_errorf(MOE_EFORMAT, "%s: model.vocab lists \"%.64s\" twice", what, key);
        if (id >= t->n_ids)
            t->n_ids = id + 1;
    }
    return MOE_OK;
}

static enum moe_status merge_parts(json_t *m, size_t i, const char **a, size_t *alen, const char **b,
                                   size_t *blen, const char *what)
{
    if (json_is_string(m)) {
        /* legacy "left right": exactly one space */
        const char *s = json_string_value(m);
        size_t n = json_string_length(m);
        const char *sp = memchr(s, ' ', n);
        if (!sp || sp == s || sp == s + n - 1 || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
            return moe_errorf(MOE_EFORMAT,
                              "%s: model.merges[%zu] \"%.64s\" must be two tokens separated by one space",
                              what, i, s);
        *a = s;
        *alen = (size_t)(sp - s);
        *b = sp + 1;
        *blen = n - *alen - 1;
        return MOE_OK;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *alen = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *blen = json_string_length(json_array_get(m, 1));
        return MOE_OK;
    }
    return moe_errorf(MOE_EFORMAT, "%s: model.merges[%zu] must be \"left right\" or [\"left\", \"right\"]",
                      what, i);
}

static enum moe_status parse_merges(struct moe_tokenizer *t, json_t *merges, const char *what)
{
    size_t n = json_array_size(merges);
    if (!merge_map_init(&t->merges, n))
        return moe_errorf(MOE_ENOMEM, "%s: no memory for %zu merges", what, n);
    struct bytebuf cat = { 0 };
    enum moe_status st = MOE_OK;
    for (size_t i = 0; i < n; i++) {
        const char *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        json_t *m = json_array_get(merges, i);
        /* a "#version..." line, as merges.txt starts with, is no merge: tokenizers skips it */
        if (json_is_string(m) && !strncmp(json_string_value(m), "#version", 8))
            continue;
        st = merge_parts(m, i, &a, &alen, &b, &blen, what);
        if (st)
            goto out;
        int ia = strmap_get(t, &t->vocab, a, alen);
        int ib = strmap_get(t, &t->vocab, b, blen);
        if (ia < 0 || ib < 0) {
            st = moe_errorf(MOE_EFORMAT, "%s: model.merges[%zu] names token \"%.*s\" that is not in model.vocab",
                            what, i, (int)(ia < 0 ? (alen > 64 ? 64 : alen) : (blen > 64 ? 64 : blen)),
                            ia < 0 ? a : b);
            goto out;
        }
        cat.len = 0;
        if (!bytebuf_append(&cat, a, alen) || !bytebuf_append(&cat, b, blen)) {
            st = moe_errorf(MOE_ENOMEM, "%s: no memory while reading merges", what);
            goto out;
        }
        int inew = strmap_get(t, &t->vocab, cat.p, cat.len);
        if (inew < 0) {
            st = moe_errorf(MOE_EFORMAT,
                            "%s: model.merges[%zu]: the merged token \"%.*s\" is not in model.vocab", what, i,
                            (int)(cat.len > 64 ? 64 : cat.len), cat.p);
            goto out;
        }
        merge_map_put(&t->merges, ia, ib, (uint32_t)i, inew);
    }
out:
    free(cat.p);
    return st;
}

/* Slot of the edge (node, c) (node > 0) in the map: its own, or the empty one
 * where it would go. */
static size_t trie_slot(const struct added_trie *tr, uint32_t node, unsigned char c)
{
    uint64_t k = ((uint64_t)node << 8 | c) + 1;
    size_t mask = tr->cap - 1, i = hash_u64(k) & mask;
    while (tr->key[i] && tr->key[i] != k)
        i = (i + 1) & mask;
    return i;
}

static uint32_t trie_next(const struct added_trie *tr, uint32_t node, unsigned char c)
{
    if (node == 0)
        return tr->root[c];
    size_t i = trie_slot(tr, node, c);
    return tr->key[i] ? tr->child[i] : 0;
}

/* The trie of added[0..n_added): at most one node per content byte. */
static enum moe_status build_added_trie(struct moe_tokenizer *t, const char *what)
{
    struct added_trie *tr = &t->trie;
    size_t bytes = 0, cap = 16;
    for (size_t i = 0; i < t->n_added; i++)
        bytes += t->added[i].len;
    if (bytes >= UINT32_MAX || bytes > SIZE_MAX / 64)
        return moe_errorf(MOE_EFORMAT, "%s: added tokens hold %zu bytes in all, more than supported", what,
                          bytes);
    while (cap < 2 * bytes)
        cap *= 2;
    tr->key = calloc(cap, sizeof(*tr->key));
    tr->child = calloc(cap, sizeof(*tr->child));
    tr->term = calloc(bytes + 1, sizeof(*tr->term));
    if (!tr->key || !tr->child || !tr->term)
        return moe_errorf(MOE_ENOMEM, "%s: no memory for the added tokens' trie (%zu bytes)", what, bytes);
    tr->cap = cap;
    tr->n_nodes = 1;
    for (size_t i = 0; i < t->n_added; i++) {
        const unsigned char *c = (const unsigned char *)t->pool.p + t->added[i].off;
        uint32_t node = 0;
        for (uint32_t j = 0; j < t->added[i].len; j++) {
            uint32_t next = trie_next(tr, node, c[j]);
            if (!next) {
                next = tr->n_nodes++;
                if (node == 0) {
                    tr->root[c[j]] = next;
                } else {
                    size_t h = trie_slot(tr, node, c[j]);
                    tr->key[h] = ((uint64_t)node << 8 | c[j]) + 1;
                    tr->child[h] = next;
                }
            }
            node = next;
        }
        tr->term[node] = (uint32_t)i + 1;   /* contents are distinct (added_map) */
    }
    return MOE_OK;
}

static enum moe_status parse_added(struct moe_tokenizer *t, json_t *arr, const char *what)
{
    size_t n = json_array_size(arr);
    if (!strmap_init(&t->added_map, n))
        return moe_errorf(MOE_ENOMEM, "%s: no memory for %zu added tokens", what, n);
    t->added = calloc(n ? n : 1, sizeof(*t->added));
    if (!t->added)
        return moe_errorf(MOE_ENOMEM, "%s: no memory for %zu added tokens", what, n);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i), *jid, *jc;
        char where[48];
        snprintf(where, sizeof(where), "added_tokens[%zu]", i);
        if (!json_is_object(o))
            return moe_errorf(MOE_EFORMAT, "%s: %s must be an object", what, where);
        jid = json_object_get(o, "id");
        jc = json_object_get(o, "content");
        if (!json_is_integer(jid) || json_integer_value(jid) < 0 || json_integer_value(jid) >= TOK_MAX_ID)
            return moe_errorf(MOE_EFORMAT, "%s: %s.id must be an integer in [0, %d)", what, where, TOK_MAX_ID);
        if (!json_is_string(jc) || json_string_length(jc) == 0)
            return moe_errorf(MOE_EFORMAT, "%s: %s.content must be a non-empty string", what, where);
        struct added_token *a = &t->added[t->n_added];
        a->id = (int)json_integer_value(jid);
        a->normalized = true;
        enum moe_status st;
        if ((st = opt_bool(o, "single_word", &a->single_word, what, where)) ||
            (st = opt_bool(o, "lstrip", &a->lstrip, what, where)) ||
            (st = opt_bool(o, "rstrip", &a->rstrip, what, where)) ||
            (st = opt_bool(o, "normalized", &a->normalized, what, where)) ||
            (st = opt_bool(o, "special", &a->special, what, where)))
            return st;
        const char *c = json_string_value(jc);
        size_t clen = json_string_length(jc);
        int vid = strmap_get(t, &t->vocab, c, clen), old;
        if (vid >= 0 && vid != a->id)
            return moe_errorf(MOE_EFORMAT, "%s: %s \"%.64s\" has id %d but model.vocab gives it id %d", what,
                              where, c, a->id, vid);
        if (!pool_add(t, c, clen, &a->off))
            return moe_errorf(MOE_ENOMEM, "%s: no memory for added tokens", what);
        a->len = (uint32_t)clen;
        if (!strmap_put(t, &t->added_map, a->off, a->len, a->id, &old)) {
            if (old != a->id)
                return moe_errorf(MOE_EFORMAT, "%s: %s \"%.64s\" is listed twice with ids %d and %d", what,
                                  where, c, old, a->id);
            continue;   /* exact repeat: keep the first */
        }
        if (a->id >= t->n_ids)
            t->n_ids = a->id + 1;
        t->n_added++;
        if (a->normalized)
            t->n_added_normalized++;
        else
            t->n_added_raw++;
    }
    return build_added_trie(t, what);
}

/* Decoded bytes of a token string under the ByteLevel decoder: each char maps
 * back to its byte; a token with any char outside the alphabet is kept as its
 * raw UTF-8 (tokenizers does the same). */
static bool decode_token_string(const char *s, size_t n, const int16_t *cp_byte, struct bytebuf *out)
{
    size_t start = out->len;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = moe_utf8_next((const unsigned char *)s + i, n - i, &cp);
        if (!l || cp > 0x143 || cp_byte[cp] < 0) {
            out->len = start;
            return bytebuf_append(out, s, n);
        }
        char c = (char)cp_byte[cp];
        if (!bytebuf_append(out, &c, 1))
            return false;
        i += l;
    }
    return true;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* The byte a "<0xXX>" token stands for (ByteFallback), -1 for any other string. */
static int fallback_byte(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>' || hex_digit(s[3]) < 0 || hex_digit(s[4]) < 0)
        return -1;
    return hex_digit(s[3]) * 16 + hex_digit(s[4]);
}

#define METASPACE "\xe2\x96\x81"   /* U+2581, SentencePiece's word mark */
#define METASPACE_LEN 3

/* Decoded bytes of a token string under a SentencePiece decoder: a byte
 * fallback token is its byte, every other token its string with each mark
 * replaced by mark_to (" ", or "" for the first token of a Metaspace decoder). */
static bool decode_metaspace_string(const struct moe_tokenizer *t, const char *s, size_t n, const char *mark_to,
                                    struct bytebuf *out)
{
    int b = t->dec_byte_fallback ? fallback_byte(s, n) : -1;
    if (b >= 0) {
        char c = (char)b;
        return bytebuf_append(out, &c, 1);
    }
    for (size_t i = 0; i < n;) {
        if (mark_to && i + METASPACE_LEN <= n && !memcmp(s + i, METASPACE, METASPACE_LEN)) {
            if (!bytebuf_append(out, mark_to, strlen(mark_to)))
                return false;
            i += METASPACE_LEN;
        } else {
            if (!bytebuf_append(out, s + i, 1))
                return false;
            i++;
        }
    }
    return true;
}

static enum moe_status build_id_tables(struct moe_tokenizer *t, const char *what)
{
    size_t n = (size_t)t->n_ids;
    t->str_off = malloc(n * sizeof(uint32_t));
    t->str_len = malloc(n * sizeof(uint32_t));
    t->dec_off = malloc(n * sizeof(uint32_t));
    t->dec_len = malloc(n * sizeof(uint32_t));
    if (!t->str_off || !t->str_len || !t->dec_off || !t->dec_len)
        return moe_errorf(MOE_ENOMEM, "%s: no memory for the id table of %zu tokens", what, n);
    memset(t->str_len, 0xff, n * sizeof(uint32_t));
    memset(t->dec_len, 0xff, n * sizeof(uint32_t));
    for (size_t e = 0; e < t->vocab.n; e++) {
        int id = t->vocab.id[e];
        if (t->str_len[id] != UINT32_MAX)
            return moe_errorf(MOE_EFORMAT, "%s: model.vocab gives id %d to both \"%.*s\" and \"%.*s\"", what,
                              id, (int)(t->str_len[id] > 64 ? 64 : t->str_len[id]),
                              t->pool.p + t->str_off[id], (int)(t->vocab.len[e] > 64 ? 64 : t->vocab.len[e]),
                              t->pool.p + t->vocab.off[e]);
        t->str_off[id] = t->vocab.off[e];
        t->str_len[id] = t->vocab.len[e];
    }
    for (size_t i = 0; i < t->n_added; i++) {
        const struct added_token *a = &t->added[i];
        if (t->str_len[a->id] != UINT32_MAX &&
            (t->str_len[a->id] != a->len || memcmp(t->pool.p + t->str_off[a->id], t->pool.p + a->off, a->len)))
            return moe_errorf(MOE_EFORMAT, "%s: added token \"%.64s\" reuses id %d of another token", what,
                              t->pool.p + a->off, a->id);
        t->str_off[a->id] = a->off;
        t->str_len[a->id] = a->len;
    }

    int16_t cp_byte[0x144];
    for (size_t i = 0; i < MOE_ARRAY_LEN(cp_byte); i++)
        cp_byte[i] = -1;
    for (unsigned b = 0; b < 256; b++)
        cp_byte[byte_to_cp(b)] = (int16_t)b;

    struct bytebuf dec = { 0 };
    for (size_t id = 0; id < n; id++) {
        if (t->str_len[id] == UINT32_MAX)
            continue;
        size_t before = dec.len;
        const char *s = t->pool.p + t->str_off[id];
        bool ok;
        switch (t->decoder) {
        case DEC_BYTE_LEVEL: ok = decode_token_string(s, t->str_len[id], cp_byte, &dec); break;
        case DEC_METASPACE:
            ok = decode_metaspace_string(t, s, t->str_len[id], t->dec_replace ? " " : NULL, &dec);
            break;
        default: ok = bytebuf_append(&dec, s, t->str_len[id]); break;
        }
        if (!ok) {
            free(dec.p);
            return moe_errorf(MOE_ENOMEM, "%s: no memory for decoded tokens", what);
        }
        t->dec_off[id] = (uint32_t)before;   /* offsets into dec, rebased below */
        t->dec_len[id] = (uint32_t)(dec.len - before);
    }
    uint32_t base;
    bool ok = pool_add(t, dec.p, dec.len, &base);
    free(dec.p);
    if (!ok)
        return moe_errorf(MOE_ENOMEM, "%s: no memory for decoded tokens", what);
    for (size_t id = 0; id < n; id++)
        if (t->dec_len[id] != UINT32_MAX)
            t->dec_off[id] += base;
    return MOE_OK;
}

static void build_byte_ids(struct moe_tokenizer *t)
{
    for (unsigned b = 0; b < 256; b++) {
        char u[4], fb[8];
        snprintf(fb, sizeof(fb), "<0x%02X>", b);
        t->raw_fb_id[b] = strmap_get(t, &t->vocab, fb, strlen(fb));
        size_t n = moe_utf8_put(byte_to_cp(b), u);
        t->byte_id[b] = strmap_get(t, &t->vocab, u, n);
        t->byte_fb_n[b] = (int)n;
        for (size_t k = 0; k < n; k++) {
            snprintf(fb, sizeof(fb), "<0x%02X>", (unsigned char)u[k]);
            t->byte_fb_id[b][k] = strmap_get(t, &t->vocab, fb, strlen(fb));
            if (t->byte_fb_id[b][k] < 0)
                t->byte_fb_n[b] = 0;
        }
    }
}

/* "type" of an optional component object; NULL when the component is null/absent. */
static enum moe_status component_type(json_t *root, const char *key, const char **type, json_t **obj,
                                      const char *what)
{
    json_t *o = json_object_get(root, key);
    *obj = o;
    *type = NULL;
    if (!o || json_is_null(o))
        return MOE_OK;
    if (!json_is_object(o) || !json_is_string(json_object_get(o, "type")))
        return moe_errorf(MOE_EFORMAT, "%s: %s must be null or an object with a \"type\" string", what, key);
    *type = json_string_value(json_object_get(o, "type"));
    return MOE_OK;
}

static enum moe_status parse_model(struct moe_tokenizer *t, json_t *root, const char *what)
{
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model))
        return moe_errorf(MOE_EFORMAT, "%s: \"model\" is missing or not an object", what);
    json_t *type = json_object_get(model, "type");
    if (type && !json_is_string(type))
        return moe_errorf(MOE_EFORMAT, "%s: model.type must be a string", what);
    if (type && strcmp(json_string_value(type), "BPE"))
        return moe_errorf(MOE_ENOTSUP, "%s: model.type \"%.64s\" is not supported (only \"BPE\")", what,
                          json_string_value(type));
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab))
        return moe_errorf(MOE_EFORMAT, "%s: model.vocab is missing or not an object", what);
    if (!json_is_array(merges))
        return moe_errorf(MOE_EFORMAT, "%s: model.merges is missing or not an array", what);

    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && !(json_is_number(dropout) && json_number_value(dropout) == 0.0))
        return moe_errorf(MOE_ENOTSUP, "%s: model.dropout must be null or 0 (BPE dropout is not deterministic)",
                          what);
    const char *affix[] = { "continuing_subword_prefix", "end_of_word_suffix" };
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get(model, affix[i]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return moe_errorf(MOE_ENOTSUP, "%s: model.%s is not supported (set it to null)",
                              what, affix[i]);
    }
    enum moe_status st;
    if ((st = opt_bool(model, "fuse_unk", &t->fuse_unk, what, "model")) ||
        (st = opt_bool(model, "byte_fallback", &t->byte_fallback, what, "model")) ||
        (st = opt_bool(model, "ignore_merges", &t->ignore_merges, what, "model")))
        return st;

    if ((st = parse_vocab(t, vocab, what)) || (st = parse_merges(t, merges, what)))
        return st;

    t->unk_id = -1;
    json_t *unk = json_object_get(model, "unk_token");
    if (unk && !json_is_null(unk)) {
        if (!json_is_string(unk))
            return moe_errorf(MOE_EFORMAT, "%s: model.unk_token must be a string or null", what);
        t->unk_id = strmap_get(t, &t->vocab, json_string_value(unk), json_string_length(unk));
        if (t->unk_id < 0)
            return moe_errorf(MOE_EFORMAT, "%s: model.unk_token \"%.64s\" is not in model.vocab", what,
                              json_string_value(unk));
    }
    return MOE_OK;
}

/* A normalized added token is matched in normalized text; one whose content
 * the normalizer would change (not NFC) could only match as tokenizers does,
 * by its normalized form, which the trie of contents does not hold. */
static enum moe_status check_normalized_added(const struct moe_tokenizer *t, const char *what)
{
    for (size_t i = 0; t->sp_normalizer && i < t->n_added; i++)
        if (t->added[i].normalized) /* its content would be matched "\u2581"-prefixed, as the normalizer makes it */
            return moe_errorf(MOE_ENOTSUP, "%s: added token %d \"%.*s\" is normalized, which the Prepend/Replace "
                              "normalizer does not support (mark it \"normalized\": false)", what, t->added[i].id,
                              (int)(t->added[i].len < 64 ? t->added[i].len : 64), t->pool.p + t->added[i].off);
    for (size_t i = 0; t->nfc && i < t->n_added; i++) {
        const struct added_token *a = &t->added[i];
        const char *c = t->pool.p + a->off;
        if (!a->normalized || moe_tok_nfc_quick(c, a->len))
            continue;
        char *norm;
        size_t len;
        if (moe_tok_nfc(c, a->len, &norm, &len))
            return moe_error_prefix(MOE_ENOMEM, "%s", what);
        bool same = len == a->len && !memcmp(norm, c, len);
        free(norm);
        if (!same)
            return moe_errorf(MOE_ENOTSUP, "%s: added token %d \"%.*s\" is normalized but not in NFC: matching it "
                              "by its NFC form is not supported (mark it \"normalized\": false)", what, a->id,
                              (int)(a->len < 64 ? a->len : 64), c);
    }
    return MOE_OK;
}

/* Qwen2's split regex, as its tokenizer.json spells it (Qwen2-MoE, Qwen3-MoE). */
static const char QWEN2_REGEX[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* ByteLevel's options into t; its regex is the split unless an earlier Split
 * did it (then use_regex must be false: one split only). */
static enum moe_status parse_byte_level(struct moe_tokenizer *t, json_t *obj, bool after_split, const char *what)
{
    bool use_regex = true;
    enum moe_status st;
    if ((st = opt_bool(obj, "add_prefix_space", &t->add_prefix_space, what, "pre_tokenizer")) ||
        (st = opt_bool(obj, "use_regex", &use_regex, what, "pre_tokenizer")))
        return st;
    if (after_split && use_regex)
        return moe_errorf(MOE_ENOTSUP, "%s: pre_tokenizer ByteLevel after a Split must have use_regex false "
                          "(two regex splits in a row are not supported)", what);
    if (after_split && t->add_prefix_space)
        return moe_errorf(MOE_ENOTSUP, "%s: pre_tokenizer ByteLevel after a Split must have add_prefix_space "
                          "false (a space before every piece is not supported)", what);
    if (!after_split)
        t->split = use_regex ? SPLIT_GPT2 : SPLIT_NONE;
    return MOE_OK;
}

/* Split: a regex whose matches and the text between them are pieces of their
 * own ("Isolated").  Qwen2's regex alone takes the hand-written matcher. */
static enum moe_status parse_split(struct moe_tokenizer *t, json_t *obj, bool alone, const char *what)
{
    json_t *pat = json_object_get(obj, "pattern");
    json_t *re = json_is_object(pat) ? json_object_get(pat, "Regex") : NULL;
    json_t *beh = json_object_get(obj, "behavior"), *inv = json_object_get(obj, "invert");
    if (!json_is_string(re))
        return moe_errorf(MOE_ENOTSUP, "%s: pre_tokenizer Split: only a pattern {\"Regex\": \"...\"} is "
                          "supported", what);
    if (!json_is_string(beh) || strcmp(json_string_value(beh), "Isolated") || (inv && !json_is_false(inv)))
        return moe_errorf(MOE_ENOTSUP, "%s: pre_tokenizer Split: only behavior \"Isolated\" without invert is "
                          "supported", what);
    if (alone && !strcmp(json_string_value(re), QWEN2_REGEX)) {
        t->split = SPLIT_QWEN2;
        return MOE_OK;
    }
    if (t->n_splits == TOK_MAX_SPLITS)
        return moe_errorf(MOE_ENOTSUP, "%s: pre_tokenizer: more than %d Splits", what, TOK_MAX_SPLITS);
    enum moe_status st = moe_tok_regex_compile(json_string_value(re), json_string_length(re),
                                               &t->splits[t->n_splits]);
    if (st)
        return moe_error_prefix(st, "%s: pre_tokenizer Split %d", what, t->n_splits + 1);
    t->n_splits++;
    t->split = SPLIT_REGEX;
    return MOE_OK;
}

/* An optional string field that, when present, must equal want. */
static enum moe_status want_string(json_t *obj, const char *key, const char *want, const char *what,
                                   const char *where)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return MOE_OK;
    if (!json_is_string(v) || strcmp(json_string_value(v), want))
        return moe_errorf(MOE_ENOTSUP, "%s: %s.%s must be \"%s\" (other values are not supported)", what, where,
                          key, want);
    return MOE_OK;
}

/* Metaspace (as pre-tokenizer or decoder): replacement "\u2581", prepend_scheme
 * (or the older add_prefix_space), split (default true). */
static enum moe_status parse_metaspace(struct moe_tokenizer *t, json_t *obj, const char *where, const char *what)
{
    enum moe_status st;
    if ((st = want_string(obj, "replacement", METASPACE, what, where)) ||
        (st = want_string(obj, "str_rep", METASPACE, what, where)))
        return st;
    bool prefix = true, split = true;
    if ((st = opt_bool(obj, "add_prefix_space", &prefix, what, where)) ||
        (st = opt_bool(obj, "split", &split, what, where)))
        return st;
    enum prepend_scheme ps = prefix ? PREPEND_ALWAYS : PREPEND_NEVER;
    json_t *v = json_object_get(obj, "prepend_scheme");
    if (v && !json_is_null(v)) {
        const char *x = json_string_value(v);
        if (x && !strcmp(x, "always"))
            ps = PREPEND_ALWAYS;
        else if (x && !strcmp(x, "first"))
            ps = PREPEND_FIRST;
        else if (x && !strcmp(x, "never"))
            ps = PREPEND_NEVER;
        else
            return moe_errorf(MOE_EFORMAT, "%s: %s.prepend_scheme must be \"always\", \"first\" or \"never\"",
                              what, where);
    }
    if (!strcmp(where, "decoder")) {
        t->decoder = DEC_METASPACE;
        t->dec_replace = true;
        t->dec_first_drops_mark = ps != PREPEND_NEVER;
        return MOE_OK;
    }
    t->char_level = true;
    t->metaspace = true;
    t->prepend = ps;
    t->split = split ? SPLIT_METASPACE : SPLIT_NONE;
    return MOE_OK;
}

/* Replace of one plain string by another ({"String": from} -> to). */
static bool is_replace(json_t *o, const char *from, const char *to)
{
    json_t *pat = json_object_get(o, "pattern");
    const char *p = json_string_value(json_object_get(pat, "String"));
    const char *c = json_string_value(json_object_get(o, "content"));
    return json_is_object(pat) && json_object_size(pat) == 1 && p && c && !strcmp(p, from) && !strcmp(c, to);
}

static const char *type_of(json_t *o)
{
    return json_string_value(json_object_get(o, "type"));
}

static bool is_type(json_t *o, const char *type)
{
    const char *t = type_of(o);
    return t && !strcmp(t, type);
}

/* null, NFC, or SentencePiece's Sequence[Prepend("\u2581"), Replace(" ", "\u2581")]
 * (either order: the same text either way). */
static enum moe_status parse_normalizer(struct moe_tokenizer *t, json_t *root, const char *what)
{
    const char *type;
    json_t *obj;
    enum moe_status st;
    if ((st = component_type(root, "normalizer", &type, &obj, what)))
        return st;
    if (!type)
        return MOE_OK;
    if (!strcmp(type, "NFC")) {
        t->nfc = true;
        return MOE_OK;
    }
    json_t *seq = !strcmp(type, "Sequence") ? json_object_get(obj, "normalizers") : NULL;
    if (json_is_array(seq) && json_array_size(seq) == 0) /* DeepSeek-V3's: no normalizer */
        return MOE_OK;
    if (json_array_size(seq) == 2) {
        json_t *a = json_array_get(seq, 0), *b = json_array_get(seq, 1);
        json_t *pre = is_type(a, "Prepend") ? a : b, *rep = pre == a ? b : a;
        const char *pc = json_string_value(json_object_get(pre, "prepend"));
        if (is_type(pre, "Prepend") && pc && !strcmp(pc, METASPACE) && is_type(rep, "Replace") &&
            is_replace(rep, " ", METASPACE)) {
            t->sp_normalizer = true;
            return MOE_OK;
        }
    }
    return moe_errorf(MOE_ENOTSUP, "%s: normalizer \"%s\" is not supported (only null, \"NFC\", or the "
                      "\"Sequence\" of Prepend(\"\u2581\") and Replace(\" \", \"\u2581\") of SentencePiece-style "
                      "tokenizers)", what, type);
}

/* null, ByteLevel, Metaspace, or SentencePiece's Sequence of Replace("\u2581",
 * " "), ByteFallback, Fuse and Strip(" ", start, stop), in that order, each
 * at most once (Strip after Fuse, so that it cuts the text's ends). */
static enum moe_status parse_decoder(struct moe_tokenizer *t, json_t *root, const char *what)
{
    const char *type;
    json_t *obj;
    enum moe_status st;
    if ((st = component_type(root, "decoder", &type, &obj, what)))
        return st;
    if (!type)
        return MOE_OK;
    if (!strcmp(type, "ByteLevel")) {
        t->decoder = DEC_BYTE_LEVEL;
        return MOE_OK;
    }
    if (!strcmp(type, "Metaspace"))
        return parse_metaspace(t, obj, "decoder", what);
    json_t *seq = !strcmp(type, "Sequence") ? json_object_get(obj, "decoders") : NULL;
    static const char *const order[] = { "Replace", "ByteFallback", "Fuse", "Strip" };
    size_t next = 0;
    for (size_t i = 0; seq && i < json_array_size(seq); i++) {
        json_t *d = json_array_get(seq, i);
        const char *dt = type_of(d);
        size_t k = dt ? next : 4; /* a member without a type is no step at all */
        while (k < 4 && strcmp(dt, order[k]))
            k++;
        json_t *cont = json_object_get(d, "content");
        json_t *ja = json_object_get(d, "start"), *jb = json_object_get(d, "stop");
        json_int_t a = json_integer_value(ja), b = json_integer_value(jb);
        bool ok = k < 4;
        if (k == 0)
            ok = is_replace(d, METASPACE, " ");
        if (k == 3)
            ok = next == 3 && json_is_string(cont) && !strcmp(json_string_value(cont), " ") && json_is_integer(ja) &&
                 json_is_integer(jb) && a >= 0 && a <= 64 && b >= 0 && b <= 64;
        if (!ok)
            return moe_errorf(MOE_ENOTSUP, "%s: decoder Sequence: member %zu (%s) is not supported: only "
                              "Replace(\"\u2581\", \" \"), ByteFallback, Fuse and Strip(\" \") after Fuse, in "
                              "that order", what, i, dt ? dt : "no type");
        t->dec_replace |= k == 0;
        t->dec_byte_fallback |= k == 1;
        if (k == 3) {
            t->dec_strip_start = (int)a;
            t->dec_strip_stop = (int)b;
        }
        next = k + 1;
    }
    if (!seq)
        return moe_errorf(MOE_ENOTSUP, "%s: decoder \"%s\" is not supported (only null, \"ByteLevel\", "
                          "\"Metaspace\", or the \"Sequence\" of Replace, ByteFallback, Fuse and Strip of "
                          "SentencePiece-style tokenizers)", what, type);
    t->decoder = DEC_METASPACE;
    return MOE_OK;
}

/* TemplateProcessing whose "single" template is special tokens, the text
 * ("Sequence" A), special tokens: their ids go around an encoded prompt
 * (moe_tokenizer_encode_prompt). */
static enum moe_status parse_template(struct moe_tokenizer *t, json_t *obj, const char *what)
{
    if (t->n_tmpl_pre || t->n_tmpl_post)
        return moe_errorf(MOE_ENOTSUP, "%s: post_processor has more than one TemplateProcessing", what);
    json_t *single = json_object_get(obj, "single"), *specials = json_object_get(obj, "special_tokens");
    bool seen_text = false;
    for (size_t i = 0; i < json_array_size(single); i++) {
        json_t *item = json_array_get(single, i);
        json_t *sp = json_object_get(item, "SpecialToken"), *sq = json_object_get(item, "Sequence");
        if (sq && !sp && !seen_text) {
            seen_text = true;
            continue;
        }
        json_t *def = json_object_get(specials, json_string_value(json_object_get(sp, "id")));
        json_t *ids = json_object_get(def, "ids");
        int *dst = seen_text ? t->tmpl_post : t->tmpl_pre, *n = seen_text ? &t->n_tmpl_post : &t->n_tmpl_pre;
        if (!sp || !json_is_array(ids))
            return moe_errorf(MOE_EFORMAT, "%s: post_processor.single[%zu] must be a SpecialToken listed in "
                              "special_tokens with its ids, or the one Sequence", what, i);
        for (size_t k = 0; k < json_array_size(ids); k++) {
            json_t *id = json_array_get(ids, k);
            if (*n == (int)MOE_ARRAY_LEN(t->tmpl_pre))
                return moe_errorf(MOE_ENOTSUP, "%s: post_processor.single puts more than %zu ids on one side of "
                                  "the text", what, MOE_ARRAY_LEN(t->tmpl_pre));
            if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= TOK_MAX_ID)
                return moe_errorf(MOE_EFORMAT, "%s: post_processor special token ids must be integers in [0, %d)",
                                  what, TOK_MAX_ID);
            dst[(*n)++] = (int)json_integer_value(id);
        }
    }
    if (!seen_text)
        return moe_errorf(MOE_EFORMAT, "%s: post_processor.single has no {\"Sequence\": ...} for the text", what);
    return MOE_OK;
}

/* post_processor: null, ByteLevel (offsets only), TemplateProcessing, or a
 * Sequence of them (Llama 3's layout). */
static enum moe_status parse_post_processor(struct moe_tokenizer *t, json_t *root, const char *what)
{
    const char *type;
    json_t *obj;
    enum moe_status st;
    if ((st = component_type(root, "post_processor", &type, &obj, what)))
        return st;
    json_t *seq = type && !strcmp(type, "Sequence") ? json_object_get(obj, "processors") : NULL;
    size_t n = seq ? json_array_size(seq) : 1;
    for (size_t i = 0; type && i < n; i++) {
        json_t *p = seq ? json_array_get(seq, i) : obj;
        const char *pt = type_of(p);
        if (is_type(p, "ByteLevel"))
            continue;
        if (is_type(p, "TemplateProcessing")) {
            if ((st = parse_template(t, p, what)))
                return st;
            continue;
        }
        return moe_errorf(MOE_ENOTSUP, "%s: post_processor \"%s\" is not supported (only null, \"ByteLevel\", "
                          "\"TemplateProcessing\" or a \"Sequence\" of them)", what, pt ? pt : "without a type");
    }
    return MOE_OK;
}

/* ByteLevel alone, Metaspace, or Sequence[Split..., ByteLevel(use_regex false)]. */
static enum moe_status parse_pre_tokenizer(struct moe_tokenizer *t, json_t *root, const char *what)
{
    const char *type;
    json_t *obj;
    enum moe_status st;
    if ((st = component_type(root, "pre_tokenizer", &type, &obj, what)))
        return st;
    if (!type) { /* the whole segment is one piece of characters */
        t->char_level = true;
        t->split = SPLIT_NONE;
        return MOE_OK;
    }
    if (!strcmp(type, "ByteLevel"))
        return parse_byte_level(t, obj, false, what);
    if (!strcmp(type, "Metaspace"))
        return parse_metaspace(t, obj, "pre_tokenizer", what);
    json_t *seq = type && !strcmp(type, "Sequence") ? json_object_get(obj, "pretokenizers") : NULL;
    size_t n = json_array_size(seq), i = 0;
    while (i < n && is_type(json_array_get(seq, i), "Split"))
        i++;
    if (i > 0 && i + 1 == n && is_type(json_array_get(seq, i), "ByteLevel")) {
        for (size_t k = 0; k < i; k++)
            if ((st = parse_split(t, json_array_get(seq, k), i == 1, what)))
                return st;
        return parse_byte_level(t, json_array_get(seq, i), true, what);
    }
    return moe_errorf(MOE_ENOTSUP, "%s: pre_tokenizer \"%s\" is not supported (only null, \"ByteLevel\", "
                      "\"Metaspace\", or a \"Sequence\" of \"Split\"s then \"ByteLevel\")", what, type);
}

static enum moe_status parse_root(struct moe_tokenizer *t, json_t *root, const char *what)
{
    if (!json_is_object(root))
        return moe_errorf(MOE_EFORMAT, "%s: the top level must be a JSON object", what);
    if (!json_is_object(json_object_get(root, "model")))
        return moe_errorf(MOE_EFORMAT, "%s: \"model\" is missing or not an object", what);
    enum moe_status st;
    if ((st = parse_normalizer(t, root, what)) || (st = parse_pre_tokenizer(t, root, what)) ||
        (st = parse_decoder(t, root, what)) || (st = parse_post_processor(t, root, what)))
        return st;
    /* the two families do not mix: bytes mapped to printable chars, or characters and "\u2581" */
    if (t->sp_normalizer && !t->char_level)
        return moe_errorf(MOE_ENOTSUP, "%s: the Prepend/Replace normalizer goes with no pre_tokenizer or "
                          "Metaspace, not ByteLevel", what);
    if ((t->decoder == DEC_BYTE_LEVEL && t->char_level) || (t->decoder == DEC_METASPACE && !t->char_level))
        return moe_errorf(MOE_ENOTSUP, "%s: a %s decoder with a %s pre_tokenizer is not supported", what,
                          t->decoder == DEC_BYTE_LEVEL ? "ByteLevel" : "SentencePiece-style",
                          t->char_level ? "null or Metaspace" : "ByteLevel");

    if ((st = parse_model(t, root, what)))
        return st;

    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_null(added) && !json_is_array(added))
        return moe_errorf(MOE_EFORMAT, "%s: added_tokens must be an array", what);
    if ((st = parse_added(t, json_is_array(added) ? added : NULL, what)))
        return st;
    if ((st = check_normalized_added(t, what)))
        return st;

    if ((st = build_id_tables(t, what)))
        return st;
    build_byte_ids(t);
    for (int i = 0; i < t->n_tmpl_pre + t->n_tmpl_post; i++) {
        int id = i < t->n_tmpl_pre ? t->tmpl_pre[i] : t->tmpl_post[i - t->n_tmpl_pre];
        if (id >= t->n_ids || t->str_len[id] == UINT32_MAX)
            return moe_errorf(MOE_EFORMAT, "%s: post_processor names token id %d, which has no token", what, id);
    }
    return MOE_OK;
}

struct moe_tokenizer *moe_tokenizer_parse(const char *json, size_t len, const char *what)
{
    if (!what)
        what = "tokenizer.json";
    if (!json) {
        moe_errorf(MOE_EINVAL, "%s: no JSON text given", what);
        return NULL;
    }
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        moe_errorf(MOE_EFORMAT, "%s: not valid JSON at line %d column %d: %s", what, jerr.line, jerr.column,
                   moe_json_error_text(&jerr));
        return NULL;
    }
    struct moe_tokenizer *t = calloc(1, sizeof(*t));
    if (!t) {
        json_decref(root);
        moe_errorf(MOE_ENOMEM, "%s: no memory for the tokenizer", what);
        return NULL;
    }
    enum moe_status st = parse_root(t, root, what);
    json_decref(root);
    if (st) {
        moe_tokenizer_free(t);
        return NULL;
    }
    return t;
}

struct moe_tokenizer *moe_tokenizer_load(const char *path)
{
    char *buf;
    size_t len;
    enum moe_status st = moe_read_file(path, &buf, &len, TOK_MAX_JSON);
    if (st) {
        moe_error_prefix(st, "tokenizer"); /* the message names the file */
        return NULL;
    }
    struct moe_tokenizer *t = moe_tokenizer_parse(buf, len, path);
    free(buf);
    return t;
}

struct moe_tokenizer *moe_tokenizer_load_dir(const char *dir)
{
    char path[4096];
    if (!dir || snprintf(path, sizeof(path), "%s/tokenizer.json", dir) >= (int)sizeof(path)) {
        moe_errorf(MOE_EINVAL, "model directory path is missing or too long");
        return NULL;
    }
    return moe_tokenizer_load(path);
}

int moe_tokenizer_vocab_size(const struct moe_tokenizer *t)
{
    return t ? t->n_ids : 0;
}

int moe_tokenizer_token_id(const struct moe_tokenizer *t, const char *token)
{
    if (!t || !token)
        return -1;
    size_t n = strlen(token);
    int id = strmap_get(t, &t->added_map, token, n);
    return id >= 0 ? id : strmap_get(t, &t->vocab, token, n);
}

const char *moe_tokenizer_token_str(const struct moe_tokenizer *t, int id, size_t *len)
{
    if (!t || id < 0 || id >= t->n_ids || t->str_len[id] == UINT32_MAX)
        return NULL;
    *len = t->str_len[id];
    return t->pool.p + t->str_off[id];
}

/* ---- encoding ---------------------------------------------------------- */

struct bpe_sym {
    int id;             /* token id of this symbol */
    int prev, next;     /* neighbours in the word, -1 at the ends */
    bool gone;          /* merged into its left neighbour */
};

struct bpe_cand {
    uint32_t rank;      /* merge rank: lower merges first */
    uint32_t pos;       /* index of the left symbol; ties go leftmost */
    int new_id;
};

struct encode_ws {
    struct idbuf *out;
    struct bpe_sym *sym;
    size_t sym_cap;
    struct bpe_cand *heap;
    size_t heap_len, heap_cap;
    struct bytebuf scratch;
    struct bytebuf marked;  /* a segment with its spaces as "\u2581" (Metaspace) */
    struct moe_tok_regex_ws rx; /* SPLIT_REGEX: the regex matcher's backtracking stack */
};

static bool cand_less(const struct bpe_cand *a, const struct bpe_cand *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static bool heap_push(struct encode_ws *w, struct bpe_cand c)
{
    if (!moe_grow((void **)&w->heap, &w->heap_cap, w->heap_len + 1, sizeof(*w->heap), 64))
        return false;
    size_t i = w->heap_len++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &w->heap[p]))
            break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = c;
    return true;
}

static struct bpe_cand heap_pop(struct encode_ws *w)
{
    struct bpe_cand top = w->heap[0], last = w->heap[--w->heap_len];
    size_t i = 0, n = w->heap_len;
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        const struct bpe_cand *best = &last;
        if (l < n && cand_less(&w->heap[l], best))
            m = l, best = &w->heap[l];
        if (l + 1 < n && cand_less(&w->heap[l + 1], best))
            m = l + 1;
        if (m == i)
            break;
        w->heap[i] = w->heap[m];
        i = m;
    }
    if (n)
        w->heap[i] = last;
    return top;
}

static bool push_pair(const struct moe_tokenizer *t, struct encode_ws *w, int left)
{
    int right = w->sym[left].next;
    uint32_t rank;
    int new_id;
    if (right < 0 || !merge_map_get(&t->merges, w->sym[left].id, w->sym[right].id, &rank, &new_id))
        return true;
    return heap_push(w, (struct bpe_cand){ rank, (uint32_t)left, new_id });
}

/* First symbols of a piece of characters (SentencePiece kinds), as tokenizers'
 * BPE::merge_word makes them: a character in the vocab is its token; else its
 * UTF-8 bytes' <0xXX> tokens under byte fallback; else unk, a run of them one
 * unk with fuse_unk.  As there, an unk is only written when the next
 * character found in the vocab comes (or the piece ends), so the byte
 * fallback tokens of characters in between come before it.  sym has room for
 * n symbols. */
static size_t char_symbols(const struct moe_tokenizer *t, struct bpe_sym *sym, const char *p, size_t n)
{
    size_t ns = 0, l;
    bool unk = false;
    for (size_t i = 0; i < n; i += l) {
        utf8_at(p, n, i, &l);
        int id = strmap_get(t, &t->vocab, p + i, l);
        if (id >= 0) {
            if (unk)
                sym[ns++] = (struct bpe_sym){ t->unk_id, 0, 0, false };
            unk = false;
            sym[ns++] = (struct bpe_sym){ id, 0, 0, false };
            continue;
        }
        bool fallback = t->byte_fallback;
        for (size_t k = 0; k < l; k++)
            fallback = fallback && t->raw_fb_id[(unsigned char)p[i + k]] >= 0;
        if (fallback) {
            for (size_t k = 0; k < l; k++)
                sym[ns++] = (struct bpe_sym){ t->raw_fb_id[(unsigned char)p[i + k]], 0, 0, false };
        } else if (t->unk_id >= 0) {
            if (unk && !t->fuse_unk)
                sym[ns++] = (struct bpe_sym){ t->unk_id, 0, 0, false };
            unk = true;
        }
        /* else: no token and no unk token: dropped, as tokenizers does */
    }
    if (unk)
        sym[ns++] = (struct bpe_sym){ t->unk_id, 0, 0, false };
    return ns;
}

/* BPE over one pre-tokenized piece (raw bytes): symbols start as the
 * piece's byte-level chars (or its characters, char_level) and merge by rank
 * (tokenizers' Word::merge_all). */
static enum moe_status bpe_piece(const struct moe_tokenizer *t, struct encode_ws *w, const char *p, size_t n)
{
    if (t->ignore_merges && t->char_level) {
        int id = strmap_get(t, &t->vocab, p, n);
        if (id >= 0)
            return idbuf_push(w->out, id) ? MOE_OK : moe_errorf(MOE_ENOMEM, "tokenizer: no memory to encode");
    } else if (t->ignore_merges) {
        struct bytebuf *s = &w->scratch;
        s->len = 0;
        for (size_t i = 0; i < n; i++) {
            char u[4];
            if (!bytebuf_append(s, u, moe_utf8_put(byte_to_cp((unsigned char)p[i]), u)))
                return moe_errorf(MOE_ENOMEM, "tokenizer: no memory to encode");
        }
        int id = strmap_get(t, &t->vocab, s->p, s->len);
        if (id >= 0)
            return idbuf_push(w->out, id) ? MOE_OK : moe_errorf(MOE_ENOMEM, "tokenizer: no memory to encode");
    }
    if (w->sym_cap < 2 * n) {
        size_t cap = 2 * n;
        struct bpe_sym *s = realloc(w->sym, cap * sizeof(*s));
        if (!s)
            return moe_errorf(MOE_ENOMEM, "tokenizer: no memory for a %zu-byte piece", n);
        w->sym = s;
        w->sym_cap = cap;
    }
    size_t ns = 0;
    bool unk = false;   /* an unk is pending, as in char_symbols: byte fallback tokens go before it */
    if (t->char_level)
        ns = char_symbols(t, w->sym, p, n);
    for (size_t i = 0; !t->char_level && i < n; i++) {
        unsigned b = (unsigned char)p[i];
        int id = t->byte_id[b];
        if (id >= 0) {
            if (unk)
                w->sym[ns++] = (struct bpe_sym){ t->unk_id, 0, 0, false };
            unk = false;
            w->sym[ns++] = (struct bpe_sym){ id, 0, 0, false };
        } else if (t->byte_fallback && t->byte_fb_n[b]) {
            for (int k = 0; k < t->byte_fb_n[b]; k++)
                w->sym[ns++] = (struct bpe_sym){ t->byte_fb_id[b][k], 0, 0, false };
        } else if (t->unk_id >= 0) {
            if (unk && !t->fuse_unk)
                w->sym[ns++] = (struct bpe_sym){ t->unk_id, 0, 0, false };
            unk = true;
        }
        /* else: the char has no token and there is no unk token: dropped, as tokenizers does */
    }
    if (unk)
        w->sym[ns++] = (struct bpe_sym){ t->unk_id, 0, 0, false };
    for (size_t i = 0; i < ns; i++) {
        w->sym[i].prev = (int)i - 1;
        w->sym[i].next = i + 1 < ns ? (int)i + 1 : -1;
    }
    w->heap_len = 0;
    for (size_t i = 0; i + 1 < ns; i++)
        if (!push_pair(t, w, (int)i))
            return moe_errorf(MOE_ENOMEM, "tokenizer: no memory to encode");
    while (w->heap_len) {
        struct bpe_cand c = heap_pop(w);
        struct bpe_sym *s = &w->sym[c.pos];
        if (s->gone || s->next < 0)
            continue;
        int r = s->next;
        uint32_t rank;
        int new_id;
        /* stale entry: the pair here no longer merges into the same token */
        if (!merge_map_get(&t->merges, s->id, w->sym[r].id, &rank, &new_id) || new_id != c.new_id)
            continue;
        s->id = c.new_id;
        w->sym[r].gone = true;
        s->next = w->sym[r].next;
        if (s->next >= 0)
            w->sym[s->next].prev = (int)c.pos;
        if ((s->prev >= 0 && !push_pair(t, w, s->prev)) || !push_pair(t, w, (int)c.pos))
            return moe_errorf(MOE_ENOMEM, "tokenizer: no memory to encode");
    }
    for (int i = ns ? 0 : -1; i >= 0; i = w->sym[i].next)
        if (!idbuf_push(w->out, w->sym[i].id))
            return moe_errorf(MOE_ENOMEM, "tokenizer: no memory to encode");
    return MOE_OK;
}

/* Length of the GPT-2 regex match at s[i..end) (never 0 when i < end):
 *   's|'t|'re|'ve|'m|'ll|'d | ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ | \s+(?!\S) | \s+
 * tried in that order, as a backtracking engine does. */
static size_t gpt2_match(const char *s, size_t i, size_t end)
{
    size_t l0, l;
    uint32_t c0 = utf8_at(s, end, i, &l0);
    if (c0 == '\'' && i + 1 < end) {
        char a = s[i + 1], b = i + 2 < end ? s[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd')
            return 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
            return 3;
    }
    enum moe_tok_class k0 = cp_class(c0);
    /* ` ?X+` for X = letters, numbers, other */
    size_t j = i;
    enum moe_tok_class kx = k0;
    if (c0 == ' ' && i + 1 < end) {
        j = i + 1;
        kx = cp_class(utf8_at(s, end, j, &l));
    }
    if (kx != MOE_TOK_CLASS_SPACE) {
        while (j < end && cp_class(utf8_at(s, end, j, &l)) == kx)
            j += l;
        return j - i;
    }
    /* whitespace run [i, j); last char starts at last */
    size_t last = i;
    j = i;
    while (j < end && cp_class(utf8_at(s, end, j, &l)) == MOE_TOK_CLASS_SPACE) {
        last = j;
        j += l;
    }
    if (j == end)
        return j - i;            /* \s+(?!\S) up to the end */
    if (last > i)
        return last - i;         /* \s+(?!\S): leave the last space for the next word */
    return j - i;                /* \s+ */
}

static bool is_crlf(uint32_t c)
{
    return c == '\r' || c == '\n';
}

/* Length of Qwen2's regex match at s[i..end) (never 0 when i < end):
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N} |
 *    ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
 * tried in that order, as a backtracking engine does. */
static size_t qwen2_match(const char *s, size_t i, size_t end)
{
    size_t l0, l1 = 0, l;
    uint32_t c0 = utf8_at(s, end, i, &l0), c1 = i + l0 < end ? utf8_at(s, end, i + l0, &l1) : 0;
    if (c0 == '\'' && i + 1 < end) { /* contractions, case folded ('\u017f' LONG S folds to 's') */
        uint32_t a = c1 < 0x80 ? (c1 | 0x20) : c1 == 0x17f ? 's' : 0;
        uint32_t b = i + 1 + l1 < end ? (uint32_t)((unsigned char)s[i + 1 + l1] | 0x20) : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd')
            return 1 + l1;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
            return 1 + l1 + 1;
    }
    enum moe_tok_class k0 = cp_class(c0), k1 = i + l0 < end ? cp_class(c1) : MOE_TOK_CLASS_OTHER;
    bool has1 = i + l0 < end;
    size_t j;
    /* [^\r\n\p{L}\p{N}]?\p{L}+: one char that is no letter, number or line break, then letters */
    if (k0 == MOE_TOK_CLASS_LETTER || (has1 && k1 == MOE_TOK_CLASS_LETTER && !is_crlf(c0) &&
                                       k0 != MOE_TOK_CLASS_NUMBER)) {
        j = k0 == MOE_TOK_CLASS_LETTER ? i : i + l0;
        while (j < end && cp_class(utf8_at(s, end, j, &l)) == MOE_TOK_CLASS_LETTER)
            j += l;
        return j - i;
    }
    if (k0 == MOE_TOK_CLASS_NUMBER)
        return l0;
    /*  ?[^\s\p{L}\p{N}]+[\r\n]*: other chars (after one optional space), then line breaks */
    bool sp = c0 == ' ' && has1 && k1 == MOE_TOK_CLASS_OTHER;
    if (k0 == MOE_TOK_CLASS_OTHER || sp) {
        j = sp ? i + l0 : i;
        while (j < end && cp_class(utf8_at(s, end, j, &l)) == MOE_TOK_CLASS_OTHER)
            j += l;
        while (j < end && is_crlf(utf8_at(s, end, j, &l)))
            j += l;
        return j - i;
    }
    /* whitespace run [i, j) */
    size_t last = i, brk = 0;      /* start of its last char; end of its last line break (0: none) */
    j = i;
    while (j < end) {
        uint32_t c = utf8_at(s, end, j, &l);
        if (cp_class(c) != MOE_TOK_CLASS_SPACE)
            break;
        last = j;
        j += l;
        if (is_crlf(c))
            brk = j;
    }
    if (brk)
        return brk - i;            /* \s*[\r\n]+: up to the run's last line break */
    if (j == end)
        return j - i;              /* \s+(?!\S) up to the end */
    if (last > i)
        return last - i;           /* \s+(?!\S): leave the last space for the next word */
    return j - i;                  /* \s+ */
}

static bool is_mark(const char *s, size_t i, size_t n)
{
    return i + METASPACE_LEN <= n && !memcmp(s + i, METASPACE, METASPACE_LEN);
}

/* Metaspace's split ("MergedWithNext"): a piece runs from a "\u2581" (or a
 * space, in text not yet marked) up to the next one. */
static size_t metaspace_match(const char *s, size_t i, size_t n)
{
    size_t j = i + (s[i] == ' ' ? 1 : is_mark(s, i, n) ? METASPACE_LEN : 0);
    while (j < n && s[j] != ' ' && !is_mark(s, j, n))
        j++;
    return j > i ? j - i : n - i;
}

/* Length of the pre-tokenizer's piece at s[i..n) (never 0 when i < n). */
static size_t split_match(const struct moe_tokenizer *t, const char *s, size_t i, size_t n)
{
    switch (t->split) {
    case SPLIT_QWEN2: return qwen2_match(s, i, n);
    case SPLIT_GPT2: return gpt2_match(s, i, n);
    case SPLIT_METASPACE: return metaspace_match(s, i, n);
    default: return n - i;
    }
}

typedef enum moe_status (*piece_fn)(void *ctx, const char *p, size_t n);

/* SPLIT_REGEX from Split `level` on: each Split cuts every piece of the one
 * before it on its own, into its matches and the text between them. */
static enum moe_status split_level(const struct moe_tokenizer *t, struct moe_tok_regex_ws *rx, int level,
                                   const char *s, size_t n, piece_fn fn, void *ctx)
{
    if (level == t->n_splits)
        return fn(ctx, s, n);
    enum moe_status st;
    for (size_t pos = 0; pos < n;) {
        size_t ms = n, me = n;
        bool found;
        if ((st = moe_tok_regex_find(t->splits[level], s, n, pos, &ms, &me, &found, rx)))
            return moe_error_prefix(st, "tokenizer: pre_tokenizer Split %d", level + 1);
        if (!found)
            ms = me = n;
        if (ms > pos && (st = split_level(t, rx, level + 1, s + pos, ms - pos, fn, ctx)))
            return st;
        if (me > ms && (st = split_level(t, rx, level + 1, s + ms, me - ms, fn, ctx)))
            return st;
        pos = me;
    }
    return MOE_OK;
}

/* Cut one segment (no added tokens inside) into the pre-tokenizer's pieces,
 * each handed to fn in order. */
static enum moe_status for_each_piece(const struct moe_tokenizer *t, struct moe_tok_regex_ws *rx, const char *s,
                                      size_t n, piece_fn fn, void *ctx)
{
    if (t->split == SPLIT_REGEX)
        return split_level(t, rx, 0, s, n, fn, ctx);
    enum moe_status st;
    for (size_t i = 0; i < n;) {
        size_t m = split_match(t, s, i, n);
        if ((st = fn(ctx, s + i, m)))
            return st;
        i += m;
    }
    return MOE_OK;
}

struct bpe_ctx {
    const struct moe_tokenizer *t;
    struct encode_ws *w;
};

static enum moe_status bpe_cb(void *ctx, const char *p, size_t n)
{
    struct bpe_ctx *c = ctx;
    return bpe_piece(c->t, c->w, p, n);
}

/* Pre-tokenize one segment (no added tokens inside) and BPE each piece. */
static enum moe_status encode_pieces(const struct moe_tokenizer *t, struct encode_ws *w, const char *s, size_t n)
{
    struct bpe_ctx c = {t, w};
    return for_each_piece(t, &w->rx, s, n, bpe_cb, &c);
}

struct lens {
    size_t *p, len, cap;
};

static enum moe_status lens_cb(void *ctx, const char *p, size_t n)
{
    (void)p;
    struct lens *l = ctx;
    if (!moe_grow((void **)&l->p, &l->cap, l->len + 1, sizeof(*l->p), 16))
        return moe_errorf(MOE_ENOMEM, "tokenizer: no memory to pre-tokenize");
    l->p[l->len++] = n;
    return MOE_OK;
}

enum moe_status moe_tokenizer_pretokenize(const struct moe_tokenizer *t, const char *text, size_t len,
                                          size_t **lens, size_t *n)
{
    if (!t || !lens || !n || (!text && len))
        return moe_errorf(MOE_EINVAL, "tokenizer pretokenize: missing tokenizer, text or output");
    struct lens l = {0};
    struct moe_tok_regex_ws rx = {0};
    enum moe_status st = for_each_piece(t, &rx, text, len, lens_cb, &l);
    moe_tok_regex_ws_free(&rx);
    if (!st && !l.p && !(l.p = malloc(sizeof(size_t))))
        st = moe_errorf(MOE_ENOMEM, "tokenizer: no memory to pre-tokenize");
    if (st) {
        free(l.p);
        return st;
    }
    *lens = l.p;
    *n = l.len;
    return MOE_OK;
}

/* s[0..n) with each space as "\u2581" into dst, after a "\u2581" when pre
 * (SentencePiece's word mark: the Metaspace pre-tokenizer and the
 * Prepend/Replace normalizer both make it). */
static bool mark_spaces(struct bytebuf *dst, const char *s, size_t n, bool pre)
{
    dst->len = 0;
    if (pre && !bytebuf_append(dst, METASPACE, METASPACE_LEN))
        return false;
    for (size_t i = 0, j; i < n; i = j + 1) {
        for (j = i; j < n && s[j] != ' ';)
            j++;
        if (!bytebuf_append(dst, s + i, j - i) || (j < n && !bytebuf_append(dst, METASPACE, METASPACE_LEN)))
            return false;
    }
    return true;
}

/* Pre-tokenize and BPE a segment without added tokens; at0: it starts the input. */
static enum moe_status encode_plain(const struct moe_tokenizer *t, struct encode_ws *w, const char *s, size_t n,
                                    bool at0)
{
    if (n == 0)
        return MOE_OK;
    if (t->metaspace) { /* prepended unless the segment starts with a space (or mark) already */
        bool pre = (t->prepend == PREPEND_ALWAYS || (t->prepend == PREPEND_FIRST && at0)) && s[0] != ' ' &&
                   !is_mark(s, 0, n);
        if (!mark_spaces(&w->marked, s, n, pre))
            return moe_errorf(MOE_ENOMEM, "tokenizer: no memory to encode");
        return encode_pieces(t, w, w->marked.p, w->marked.len);
    }
    if (!t->add_prefix_space || s[0] == ' ')
        return encode_pieces(t, w, s, n);
    /* ByteLevel add_prefix_space: the segment is encoded as if it began with a space */
    struct bytebuf tmp = { 0 };
    enum moe_status st;
    if (!bytebuf_append(&tmp, " ", 1) || !bytebuf_append(&tmp, s, n))
        st = moe_errorf(MOE_ENOMEM, "tokenizer: no memory to encode");
    else
        st = encode_pieces(t, w, tmp.p, tmp.len);
    free(tmp.p);
    return st;
}

/* \w of the regex tokenizers tests single_word with: Alphabetic (letters, Nl, and the marks and the
 * circled and squared Latin letters of Other_Alphabetic), marks, Nd, Pc and Join_Control; not No. */
static bool is_word_char(uint32_t cp)
{
    if (cp < 0x80)
        return cp == '_' || (cp >= '0' && cp <= '9') || ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z');
    if (cp == 0x200c || cp == 0x200d || (cp >= 0x24b6 && cp <= 0x24e9) || (cp >= 0x1f130 && cp <= 0x1f149) ||
        (cp >= 0x1f150 && cp <= 0x1f169) || (cp >= 0x1f170 && cp <= 0x1f189))
        return true;
    enum moe_tok_gc g = moe_tok_category(cp);
    return g <= MOE_TOK_GC_ND || g == MOE_TOK_GC_NL || g == MOE_TOK_GC_PC; /* L*, M*, Nd in that order */
}

/* Code point ending at s[i) (i > 0) of validated UTF-8. */
static uint32_t utf8_before(const char *s, size_t i, size_t *n)
{
    size_t k = i - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xc0) == 0x80 && i - k < 4)
        k--;
    return utf8_at(s, i, k, n);
}

static enum moe_status encode_added(const struct moe_tokenizer *t, struct encode_ws *w, const char *s, size_t n,
                                    int pass, bool at0);

/* Text between non-normalized added tokens: through the normalizer, then the
 * normalized added tokens, then pre-tokenizer and BPE. */
static enum moe_status encode_normalized(const struct moe_tokenizer *t, struct encode_ws *w, const char *s,
                                         size_t n, bool at0)
{
    int pass = t->n_added_normalized ? 1 : 2;
    if (t->sp_normalizer && n) { /* normalized into a buffer of its own: encode_plain reuses w->marked */
        struct bytebuf b = { 0 };
        enum moe_status st = mark_spaces(&b, s, n, true) ? encode_added(t, w, b.p, b.len, pass, at0)
                                                          : moe_errorf(MOE_ENOMEM, "tokenizer: no memory to encode");
        free(b.p);
        return st;
    }
    if (!t->nfc || moe_tok_nfc_quick(s, n))
        return encode_added(t, w, s, n, pass, at0);
    char *norm;
    size_t len;
    enum moe_status st = moe_tok_nfc(s, n, &norm, &len);
    if (st)
        return st;
    st = encode_added(t, w, norm, len, pass, at0);
    free(norm);
    return st;
}

/* Split s[0..n) at added tokens of one pass (pass 0: normalized == false,
 * pass 1: normalized == true), leftmost-longest; gaps go to the next pass.
 * at0: s starts the input. */
static enum moe_status encode_added(const struct moe_tokenizer *t, struct encode_ws *w, const char *s, size_t n,
                                    int pass, bool at0)
{
    if (pass == 2)
        return encode_plain(t, w, s, n, at0);
    if (pass == 0 && !t->n_added_raw)
        return encode_normalized(t, w, s, n, at0);
    enum moe_status st;
    size_t done = 0;   /* bytes before this are handled */
    for (size_t i = 0; i < n; i++) {
        const struct added_token *hit = NULL;
        /* The longest token of this pass starting at i: the deepest of its
         * nodes on the path spelling s[i..]. */
        for (uint32_t node = t->trie.root[(unsigned char)s[i]], j = 1; node;
             node = i + j < n ? trie_next(&t->trie, node, (unsigned char)s[i + j]) : 0, j++) {
            moe_tok_steps++;
            uint32_t k = t->trie.term[node];
            if (k && t->added[k - 1].normalized == (pass == 1))
                hit = &t->added[k - 1];
        }
        if (!hit)
            continue;
        size_t l;
        if (hit->single_word && ((i > 0 && is_word_char(utf8_before(s, i, &l))) ||
                                 (i + hit->len < n && is_word_char(utf8_at(s, n, i + hit->len, &l))))) {
            i += hit->len - 1;   /* inside a word: not a match; search on after it, like tokenizers */
            continue;
        }
        /* As tokenizers: the matches are found in the text as it is, then each strips the spaces
         * around it; a match that starts in the spaces the one before took (rstrip) is still one,
         * and the text after it is handled from its own end on. */
        size_t start = i, stop = i + hit->len;
        if (hit->lstrip)
            while (start > done && cp_class(utf8_before(s, start, &l)) == MOE_TOK_CLASS_SPACE)
                start -= l;
        if (hit->rstrip)
            while (stop < n && cp_class(utf8_at(s, n, stop, &l)) == MOE_TOK_CLASS_SPACE)
                stop += l;
        bool first = at0 && done == 0;
        if (start > done && (st = pass == 0 ? encode_normalized(t, w, s + done, start - done, first)
                                            : encode_added(t, w, s + done, start - done, pass + 1, first)))
            return st;
        if (!idbuf_push(w->out, hit->id))
            return moe_errorf(MOE_ENOMEM, "tokenizer: no memory to encode");
        done = stop;
        i += hit->len - 1;
    }
    bool first = at0 && done == 0;
    return pass == 0 ? encode_normalized(t, w, s + done, n - done, first)
                     : encode_added(t, w, s + done, n - done, 2, first);
}

enum moe_status moe_tokenizer_encode(const struct moe_tokenizer *t, const char *text, size_t len, int **ids,
                                     size_t *n_ids)
{
    if (!t || !ids || !n_ids || (!text && len))
        return moe_errorf(MOE_EINVAL, "tokenizer encode: missing tokenizer, text or output");
    *ids = NULL;
    *n_ids = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t l = moe_utf8_next((const unsigned char *)text + i, len - i, &cp);
        if (!l)
            return moe_errorf(MOE_EINVAL, "text is not valid UTF-8: bad byte 0x%02x at byte offset %zu",
                              (unsigned char)text[i], i);
        i += l;
    }
    struct idbuf out = { 0 };
    struct encode_ws w = { .out = &out };
    enum moe_status st = encode_added(t, &w, text ? text : "", len, 0, true);
    free(w.sym);
    free(w.heap);
    free(w.scratch.p);
    free(w.marked.p);
    moe_tok_regex_ws_free(&w.rx);
    if (st) {
        free(out.p);
        return st;
    }
    if (!out.p && !(out.p = malloc(sizeof(int)))) /* non-NULL even when empty */
        return moe_errorf(MOE_ENOMEM, "tokenizer: no memory to encode");
    *ids = out.p;
    *n_ids = out.len;
    return MOE_OK;
}

enum moe_status moe_tokenizer_encode_prompt(const struct moe_tokenizer *t, const char *text, size_t len, int **ids,
                                            size_t *n_ids)
{
    enum moe_status st = moe_tokenizer_encode(t, text, len, ids, n_ids);
    if (st || (!t->n_tmpl_pre && !t->n_tmpl_post))
        return st;
    size_t pre = (size_t)t->n_tmpl_pre, n = *n_ids + pre + (size_t)t->n_tmpl_post;
    int *all = realloc(*ids, n * sizeof(int));
    if (!all) {
        free(*ids);
        *ids = NULL;
        *n_ids = 0;
        return moe_errorf(MOE_ENOMEM, "tokenizer: no memory to encode");
    }
    memmove(all + pre, all, *n_ids * sizeof(int));
    memcpy(all, t->tmpl_pre, pre * sizeof(int));
    memcpy(all + pre + *n_ids, t->tmpl_post, (size_t)t->n_tmpl_post * sizeof(int));
    *ids = all;
    *n_ids = n;
    return MOE_OK;
}

/* ---- decoding ---------------------------------------------------------- */

int moe_tokenizer_token_bytes(const struct moe_tokenizer *t, int id, char *buf, size_t cap)
{
    if (!t || id < 0 || id >= t->n_ids || t->dec_len[id] == UINT32_MAX)
        return -1;
    size_t n = t->dec_len[id];
    if (buf && cap)
        memcpy(buf, t->pool.p + t->dec_off[id], n < cap ? n : cap);
    return (int)n;
}

/* Whether id is a <0xXX> token that a ByteFallback decoder turns into its byte. */
static bool is_fallback_token(const struct moe_tokenizer *t, int id)
{
    return fallback_byte(t->pool.p + t->str_off[id], t->str_len[id]) >= 0;
}

/* n U+FFFD into out; returns the bytes written. */
static size_t put_replacements(char *out, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        o += moe_utf8_put(0xFFFD, out + o);
    return o;
}

enum moe_status moe_tokenizer_decode(const struct moe_tokenizer *t, const int *ids, size_t n, char **text,
                                     size_t *len)
{
    if (!t || !text || !len || (!ids && n))
        return moe_errorf(MOE_EINVAL, "tokenizer decode: missing tokenizer, ids or output");
    *text = NULL;
    *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int id = ids[i];
        if (id < 0 || id >= t->n_ids)
            return moe_errorf(MOE_ERANGE, "token id %d at position %zu is out of range [0, %d)", id, i, t->n_ids);
        if (t->dec_len[id] == UINT32_MAX)
            return moe_errorf(MOE_ERANGE, "token id %d at position %zu has no token in the vocab", id, i);
        total += t->dec_len[id];
    }
    size_t cap = t->dec_byte_fallback ? 3 * total + 1 : total + 1; /* U+FFFD for a byte takes 3 */
    char *out = malloc(cap);
    if (!out)
        return moe_errorf(MOE_ENOMEM, "tokenizer: no memory to decode %zu bytes", total);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (t->dec_byte_fallback && is_fallback_token(t, ids[i])) {
            /* ByteFallback: a run of <0xXX> tokens is its bytes when they are UTF-8, else one U+FFFD
             * per byte, as the Hugging Face library decodes it */
            size_t j = i;
            for (; j < n && is_fallback_token(t, ids[j]); j++)
                out[k + j - i] = t->pool.p[t->dec_off[ids[j]]];
            k += moe_utf8_valid(out + k, j - i) ? j - i : put_replacements(out + k, j - i);
            i = j - 1;
            continue;
        }
        if (i == 0 && t->dec_first_drops_mark) { /* Metaspace decoder: the first token's marks vanish */
            struct bytebuf first = { out, 0, cap };
            decode_metaspace_string(t, t->pool.p + t->str_off[ids[0]], t->str_len[ids[0]], "", &first);
            k = first.len;  /* never grows: "" is shorter than " " */
            continue;
        }
        memcpy(out + k, t->pool.p + t->dec_off[ids[i]], t->dec_len[ids[i]]);
        k += t->dec_len[ids[i]];
    }
    /* Fuse + Strip: up to dec_strip_start spaces off the front, dec_strip_stop off the back */
    size_t a = 0, b = k;
    while (a < b && a < (size_t)t->dec_strip_start && out[a] == ' ')
        a++;
    while (b > a && k - b < (size_t)t->dec_strip_stop && out[b - 1] == ' ')
        b--;
    memmove(out, out + a, b - a);
    out[b - a] = 0;
    *text = out;
    *len = b - a;
    return MOE_OK;
}

/* ---- streamed text ------------------------------------------------------ */

/* Past the whole characters at the held run's end: false when the run can no longer be UTF-8 (what
 * follows whole stops neither fits nor is cut short by the end). */
static bool run_still_utf8(struct moe_tok_stream *x)
{
    const unsigned char *b = (const unsigned char *)x->held;
    while (x->whole < x->n_held) {
        size_t need, k = moe_utf8_fit(b + x->whole, x->n_held - x->whole, &need);
        if (b[x->whole] >= 0x80 && (!need || k < need + 1))
            return need && x->whole + k == x->n_held;
        x->whole += k;
    }
    return true;
}

/* A run of byte tokens ends: into out its bytes when they are UTF-8, else a U+FFFD for each (a run
 * found bad gave its own already); x holds nothing of it after.  Returns the bytes written. */
static size_t stream_end_run(struct moe_tok_stream *x, char *out)
{
    if (!x->run)
        return 0;
    size_t o = x->n_held;
    if (x->whole == x->n_held)
        memcpy(out, x->held, x->n_held);
    else
        o = put_replacements(out, x->n_held);
    x->n_held = x->whole = 0;
    x->run = x->bad = false;
    return o;
}

const char *moe_tokenizer_stream(const struct moe_tokenizer *t, struct moe_tok_stream *x, int id, size_t *len)
{
    *len = 0;
    int n = moe_tokenizer_token_bytes(t, id, NULL, 0);
    if (n < 0)
        return "";
    /* at most every byte held and every byte of the token as a U+FFFD */
    if (!moe_grow((void **)&x->out, &x->cap_out, 3 * (x->n_held + (size_t)n) + 1, 1, 64) ||
        !moe_grow((void **)&x->held, &x->cap_held, x->n_held + (size_t)n + 1, 1, 64))
        return NULL;
    size_t o = 0;
    if (t->dec_byte_fallback && is_fallback_token(t, id)) {
        if (!x->run) { /* a character cut before the run ends with it */
            o = moe_utf8_lossy(x->held, x->n_held, x->out, false, NULL);
            x->n_held = x->whole = 0;
            x->run = true;
        }
        if (x->bad) {
            o += put_replacements(x->out + o, 1);
        } else {
            x->held[x->n_held++] = t->pool.p[t->dec_off[id]];
            if (!run_still_utf8(x)) { /* the run's tokens so far are U+FFFD, and so will the rest be */
                o += put_replacements(x->out + o, x->n_held);
                x->n_held = x->whole = 0;
                x->bad = true;
            }
        }
        *len = o;
        return x->out;
    }
    o = stream_end_run(x, x->out);
    moe_tokenizer_token_bytes(t, id, x->held + x->n_held, (size_t)n);
    x->n_held += (size_t)n;
    size_t used;
    o += moe_utf8_lossy(x->held, x->n_held, x->out + o, true, &used);
    x->n_held -= used; /* at most 3 bytes: a lead and the continuation bytes that fit it */
    memmove(x->held, x->held + used, x->n_held);
    *len = o;
    return x->out;
}

const char *moe_tokenizer_stream_pending(const struct moe_tok_stream *x, size_t *len)
{
    *len = x->run && !x->bad && x->whole == x->n_held ? x->n_held : 0;
    return *len ? x->held : "";
}

const char *moe_tokenizer_stream_end(struct moe_tok_stream *x, size_t *len)
{
    *len = 0;
    if (!moe_grow((void **)&x->out, &x->cap_out, 3 * x->n_held + 1, 1, 64))
        return NULL;
    size_t o = stream_end_run(x, x->out);
    o += moe_utf8_lossy(x->held, x->n_held, x->out + o, false, NULL);
    x->n_held = 0;
    *len = o;
    return x->out;
}

void moe_tok_stream_free(struct moe_tok_stream *x)
{
    if (!x)
        return;
    free(x->held);
    free(x->out);
    memset(x, 0, sizeof(*x));
}
