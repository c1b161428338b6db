/* OpenAI's Responses API (POST /v1/responses) over the chat completions path: a request is
 * translated into a chat completion request (its input items into messages, instructions into a
 * system message, text.format into response_format, function tools into chat tools), and the chat
 * completion's reply into a response object, or its streamed chunks into the Responses stream's
 * events.  The server keeps the last responses' conversations for previous_response_id (http.c);
 * conversation objects, prompt templates and background responses are refused. */
#ifndef MOE_SERVER_RESPONSES_H
#define MOE_SERVER_RESPONSES_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "../common/moe.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_responses;

/* The conversation a stored response ended (its chat messages: those before it, then its own
 * answer), or NULL when no response of that id is kept; borrowed. */
typedef const json_t *(*moe_responses_lookup_fn)(void *ud, const char *id);

/* The chat completion request (JSON text, malloc'd) for the Responses request body[0..n), and the
 * call's state; MOE_EINVAL / MOE_ENOTSUP naming the field otherwise, MOE_ENOENT for a
 * previous_response_id that lookup (NULL: none kept) does not know. */
enum moe_status moe_responses_request(const char *body, size_t n, moe_responses_lookup_fn lookup, void *ud,
                                      char **chat_body, struct moe_responses **out);
void moe_responses_free(struct moe_responses *r);
/* msg, an error about the chat completion request moe_responses_request made (from its decoder or
 * the server's admission), in the Responses request's names into out[cap]: max_tokens is
 * max_output_tokens, 'messages[k]' the input item message k came from ('input[i]', or
 * 'instructions'), 'response_format' 'text.format'. */
void moe_responses_error_names(const struct moe_responses *r, const char *msg, char *out, size_t cap);
/* Name the response: id "resp_" + the call id's tail, its creation time and model. */
void moe_responses_name(struct moe_responses *r, const char *call_id, long long created, const char *model);

/* The reply: the chat completion object as a response object (a new reference, NULL when out of
 * memory). */
json_t *moe_responses_reply(struct moe_responses *r, const json_t *completion);

/* The response's id ("resp_..."), and whether the request asked for it to be stored ("store", true
 * by default). */
const char *moe_responses_id(const struct moe_responses *r);
bool moe_responses_store_wanted(const struct moe_responses *r);
/* Say whether the response will be stored (its objects' "store"). */
void moe_responses_set_stored(struct moe_responses *r, bool stored);
/* The conversation to keep for a later previous_response_id: the messages before this response,
 * its input (without its instructions, which do not carry over) and its answer, from the response
 * object (new reference). */
json_t *moe_responses_conversation(const struct moe_responses *r, const json_t *response);
/* The streamed response's final object once response.completed or .incomplete went out (borrowed),
 * else NULL. */
const json_t *moe_responses_final(const struct moe_responses *r);

/* A streamed event: its type and its data (stolen). */
typedef void (*moe_responses_emit_fn)(void *ud, const char *type, json_t *data);
/* The stream's first events (response.created, response.in_progress). */
void moe_responses_stream_start(struct moe_responses *r, moe_responses_emit_fn emit, void *ud);
/* One chat completion chunk (or an {"error": ...} object) as the events it makes. */
void moe_responses_stream_chunk(struct moe_responses *r, const json_t *chunk, moe_responses_emit_fn emit, void *ud);

#ifdef __cplusplus
}
#endif
#endif
