/* Request decoders of the serving front ends: pure functions from wire bytes
 * to one validated struct moe_gen_request, so they can be fuzzed on their own.
 *
 * Decoders check what a message alone can tell (types, NaN, negative, huge,
 * required fields); limits that depend on the server (max-output, context)
 * are checked by the server when it admits the request.  On error the
 * request is left empty and moe_last_error() names the field and value. */
#ifndef MOE_SERVER_REQUESTS_H
#define MOE_SERVER_REQUESTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "../common/moe.h"
#include "../engine/sampling.h"
#include "../model/json_error.h"
#include "../model/utf8.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_REQ_MAX_PROMPT_BYTES (1u << 24) /* 16 MiB of prompt text at most */
#define MOE_REQ_MAX_IDS (1 << 20)           /* prompt ids at most */
#define MOE_REQ_MAX_STOP 4                  /* stop sequences per request (OpenAI's limit) */
#define MOE_REQ_MAX_STOP_BYTES 256          /* bytes per stop sequence */
#define MOE_REQ_MAX_N 16                    /* OpenAI's n: completions per request (of all its prompts) */

struct moe_json_schema;

/* One prompt of a batch: UTF-8 text (NUL-terminated, owned), or token ids (owned) when text is NULL. */
struct moe_req_prompt {
    char *text;
    size_t len;                 /* bytes */
    int *ids;
    int n_ids;
};

struct moe_gen_request {
    char *prompt;               /* UTF-8 text, NUL-terminated, owned (NULL when ids given) */
    size_t prompt_len;          /* bytes */
    int *prompt_ids;            /* owned, or NULL */
    int n_prompt_ids;
    struct moe_req_prompt *batch; /* completions: OpenAI's batch of prompts, [n_batch] (owned), each run with
                                     the other fields as a request of its own; prompt and prompt_ids NULL */
    int n_batch;                /* 2.. (n_batch x n at most MOE_REQ_MAX_N); 0: one prompt */
    int max_tokens;             /* 0 = server default, else >= 1 */
    struct moe_sampling sampling;
    bool stream;                /* stream tokens as they come */
    bool ignore_eos;
    bool include_usage;         /* OpenAI stream_options.include_usage */
    int priority;
    double timeout_s;           /* seconds from arrival; 0 = none */
    char model[128];            /* model named by the request ("" = any) */
    char id[128];               /* client's request id (KServe), echoed back */
    char *stop[MOE_REQ_MAX_STOP]; /* stop sequences (owned, non-empty UTF-8): the output ends
                                     before the first occurrence of any */
    int n_stop;
    int32_t stop_token_ids[MOE_MAX_STOP_TOKEN_IDS]; /* vLLM's: tokens that end the output as EOS does */
    int n_stop_token_ids;
    int min_tokens;             /* vLLM's: no EOS, stop token or stop sequence ends the output before this
                                   many tokens (<= max_tokens when that is given) */
    bool templated;             /* encode the prompt without the tokenizer post-processor's special
                                   tokens: one the model's chat template wrote (it writes its own),
                                   or add_special_tokens false */
    bool logprobs;              /* reply with each generated token's log-probability */
    int top_logprobs;           /* ... and this many most likely tokens (0..20) */
    bool echo;                  /* completions: the reply starts with the prompt (its log-probabilities
                                   too, with logprobs) */
    bool prompt_only;           /* echo with max_tokens 0: nothing is generated */
    bool chat;                  /* a chat completion: without max_tokens it may fill the context */
    bool has_seed;              /* sampling.seed was given; else the server draws one per request */
    int n;                      /* OpenAI's n: choices of one request (HTTP), of each prompt of a batch,
                                   1..MOE_REQ_MAX_N */
    int choice;                 /* which of the n (of all prompts: n x n_batch) a submission is (0 first):
                                   srv_gen_submit admits them as one */
    uint64_t hold;              /* choice > 0: choice 0's scheduler id (srv_gen.id), whose admission holds
                                   room for the others (srv_gen_hold_release) */
    int64_t need_all;           /* a batch's: the tokens in flight of all its submissions (each its prompt +
                                   max_tokens), which the first's admission checks; set by the endpoint */
    bool json_object;           /* JSON mode: the output is one JSON object */
    struct moe_json_schema *json_schema; /* ... or one value of this schema (owned reference; NULL: none) */
    bool tool_call;             /* chat tool_choice: the reply is {"name": ..., "arguments": {...}}, a call of
                                   one of the request's tools (json_schema holds their schema) */
    uint8_t tool_parse;         /* chat with tools, tool_choice auto, and a template that asks for
                                   tool calls (an enum moe_tool_style): calls in the reply are
                                   returned as tool_calls */
    json_t *tools;              /* ... the request's tools then (a reference), which type the
                                   arguments of calls written as text (MOE_TOOLS_QWEN_XML) */
    /* Set by the endpoint (a chat with the reasoning parser "think"): output held to JSON may
     * reason first, in a <think> block (already opened by the prompt: think_opened). */
    bool json_after_think, think_opened;
};

void moe_gen_request_free(struct moe_gen_request *r);

struct moe_chat;

/* OpenAI /v1/completions (chat = false) or /v1/chat/completions (chat = true)
 * JSON body.  Chat messages are rendered with the model's template tmpl
 * (model/chat.h; any role, content a string or null; add_generation_prompt,
 * continue_final_message and tools as variables, chat_template_kwargs over
 * them), or with moe_chat_markers() (model/chat.h) when tmpl is NULL. */
enum moe_status moe_req_parse_openai(const char *body, size_t len, bool chat, const struct moe_chat *tmpl,
                                     struct moe_gen_request *out);

/* The token ids a decoded request names (its prompt's, a batch's prompts' as prompt_field[i], logit_bias's,
 * stop_token_ids') against a vocabulary of vocab tokens, which the decoders do not know: MOE_ERANGE naming
 * the field and the id otherwise. */
enum moe_status moe_gen_request_check_vocab(const struct moe_gen_request *r, int vocab, const char *prompt_field);
/* The name of the first string field of a protobuf message of descriptor d, at any depth, that holds a
 * NUL byte in p[0..n), or NULL (protobuf-c hands strings over NUL-terminated, which a NUL would cut). */
struct ProtobufCMessageDescriptor;
const char *moe_pb_nul_field(const struct ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n);
/* A message of descriptor d in p[0..n) whose string field, at any depth, holds a NUL byte or is not valid
 * UTF-8: MOE_EINVAL naming the message and the field (the first NUL, else the first not UTF-8). */
enum moe_status moe_pb_check_text(const struct ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n);

/* moeflow.v1.GenerateRequest protobuf. */
enum moe_status moe_req_parse_generate(const uint8_t *buf, size_t len, struct moe_gen_request *out);

/* inference.ModelInferRequest protobuf: inputs text_input (BYTES, one
 * element), optional max_tokens (INT32), stream (BOOL); also accepted as
 * request parameters of the same names. */
enum moe_status moe_req_parse_kserve(const uint8_t *buf, size_t len, struct moe_gen_request *out);

/* Tool calls.  One OpenAI tool_calls entry ({"id", "type": "function", "function": {"name",
 * "arguments": JSON text}}) from a call's JSON ({"name": ..., "arguments": {...} or a string}), or
 * NULL when it is not one. */
json_t *moe_tool_call_entry(const char *txt, size_t n, const char *id);
/* The tool calls of a reply written in style (an enum moe_tool_style): <tool_call>...</tool_call>
 * blocks (Hermes, Qwen; the last may lack its closing tag; Qwen3-Coder's XML functions inside, their
 * parameters typed by tools, the request's tool list, when it names them), [TOOL_CALLS] and a JSON
 * array of calls (Mistral), or DeepSeek's markers: a JSON array of entries with ids id_prefix_0, _1,
 * ..., and *content_len, the bytes before the first tag; NULL when there is none or what follows it
 * is not calls. */
json_t *moe_tool_calls_parse(const char *text, size_t len, int style, const json_t *tools, const char *id_prefix,
                             size_t *content_len);
/* Streaming: the bytes of text[0..len) that can go out as content now: those before the style's tag
 * (*found set when it is there), holding back a tail that could begin it. */
size_t moe_tool_calls_release(const char *text, size_t len, int style, bool *found);

/* Reasoning (serve --reasoning-parser think): a reply that starts with "<think>" (after whitespace)
 * reasons up to "</think>", then answers; when the prompt opened the block itself (it ends in
 * "<think>" and whitespace, as some templates end the generation prompt), the reply reasons from its
 * first byte.  For the reply so far text[0..len) (all of it when last): the reasoning is [rb, re)
 * and, once content is true, the answer runs from cb to len (the line breaks right after "</think>"
 * left out).  Only what is decided is given: bytes that may still become a tag are held back. */
struct moe_think_split {
    size_t rb, re, cb;
    bool content;
};
void moe_think_split(const char *text, size_t len, bool opened, bool last, struct moe_think_split *out);
/* moe_think_opened and moe_think_closed (whether a prompt opens or closes a reasoning block) are
 * engine/json_guide.h's. */

/* Stop-sequence scanner over text produced piece by piece: holds back the
 * tail that could still begin a stop sequence, and reports the first
 * completed one.  Text is passed through unchanged otherwise. */
struct moe_stop_scan {
    char *seq[MOE_REQ_MAX_STOP]; /* copies of the stop sequences */
    int n;
    char *held;                 /* text not yet released */
    size_t n_held, cap;
    /* min_tokens (vLLM's rule): set by the caller before it feeds text of the first min_tokens tokens (the
     * final feed keeps the last token's setting): no stop sequence ends in that text, though one may begin
     * in it and end in later text. */
    bool quiet;
    size_t n_quiet;             /* the first bytes of held that are such text */
};
/* Copies seq[0..n) (n <= MOE_REQ_MAX_STOP); MOE_ENOMEM leaves s empty. */
enum moe_status moe_stop_scan_init(struct moe_stop_scan *s, char *const *seq, int n);
void moe_stop_scan_free(struct moe_stop_scan *s);
/* Feed text[0..n); last: the generation's text ends here, so nothing is held
 * back.  ahead[0..n_ahead): text that would follow were the generation to end
 * now, not fed yet (a tokenizer's pending byte run, moe_tokenizer_stream_pending):
 * a stop sequence that completes in it counts, otherwise it is not taken (it
 * comes again as text).  Returns 1 when a stop sequence completed: *out is the
 * text before it (everything after is dropped); 0 when not: *out is what can be
 * released now; -1 out of memory.  *out is malloc'd (NUL-terminated, *out_len
 * bytes), the caller frees it. */
int moe_stop_scan_feed(struct moe_stop_scan *s, const char *text, size_t n, const char *ahead, size_t n_ahead,
                       bool last, char **out, size_t *out_len);

/* Length of the longest prefix of buf[0..n) that is complete UTF-8 (an
 * incomplete multi-byte sequence at the end is held back for streaming). */
size_t moe_utf8_complete_prefix(const char *buf, size_t n);
/* The bytes of NUL-terminated s to quote in a message of at most max bytes, whole characters only:
 * for "%.*s", so that a client's text cut short stays UTF-8. */
int moe_utf8_cut(const char *s, size_t max);
/* moe_utf8_valid(): model/utf8.h */

#ifdef __cplusplus
}
#endif
#endif
