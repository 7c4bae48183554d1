/* JSON through jsmn, tokenised in place: what the relay needs to know about a
 * request body and about each streamed chunk, and the §6 error shape. */
#ifndef SSEGATE_JSON_H
#define SSEGATE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/arena.h"
#include "core/slice.h"
#include "core/wbuf.h"

/* Tokens jsmn gets on the stack; a chunk that needs more goes to the arena. */
enum { JSON_STACK_TOKENS = 512 };

/* One splice of a body: replace `remove` bytes at `at` with `insert`. */
typedef struct json_edit {
    bool active;
    size_t at, remove;
    slice insert;
} json_edit;

typedef struct json_request_info {
    slice model;         /* raw string contents, still JSON-escaped; empty when absent */
    bool stream;
    bool client_wants_usage; /* stream_options.include_usage was true */
    json_edit usage_edit;    /* turns include_usage on upstream when streaming */
} json_request_info;

/* Checks that body is one JSON object and reads model / stream /
 * stream_options. Returns 0, or -1 with *why. Token memory comes from `a`. */
int json_inspect_request(const char *body, size_t len, arena *a, json_request_info *out, const char **why);

typedef struct json_chunk_info {
    bool usage_only; /* "choices":[] with a "usage" object: the final usage chunk */
    bool has_usage;
    uint64_t prompt_tokens, completion_tokens; /* also the Responses API's input/output_tokens */
    bool is_error;    /* an {"error":...} object */
    bool has_content; /* a non-empty content delta: what a stream without usage is counted by */
    slice content;    /* that delta's text, still JSON-escaped, pointing into the chunk */
} json_chunk_info;

/* Checks one chunk's JSON structure and reads what the relay records (the
 * full RFC 8259 checks are for client bodies): chat chunks and completions,
 * and Responses API events (usage inside "response"). No malloc: tokens live on
 * the stack, or in `a` for unusually large chunks. */
int json_inspect_chunk(const char *data, size_t len, arena *a, json_chunk_info *out);

/* The two halves of json_inspect_chunk, public for the tests that hold them
 * to agree. The fast one reads a chunk in one pass without tokens, and only
 * takes the bulk of a stream: valid JSON carrying no usage, error or
 * finish_reason (each null or absent) and no "response"; for it, it fills
 * *out exactly as the full one would and returns true. Anything else (and
 * anything it is unsure of) is false, for the full path, jsmn's. */
bool json_inspect_chunk_fast(const char *data, size_t len, json_chunk_info *out);
/* The middle way, for a stream's last chunks: the same one-pass reader
 * checks the whole chunk, and the objects that carry what is counted (a
 * top-level "usage" object, a choice with a finish_reason) are tokenised by
 * jsmn alone, each into a small array. Errors, the Responses API's
 * "response", a usage or finish anywhere else, and anything the reader does
 * not vouch for are false, for the full path. When true, *out is what the
 * full path reads. */
bool json_inspect_chunk_final(const char *data, size_t len, json_chunk_info *out);
/* Both of the above, the cheapest first: what json_inspect_chunk tries
 * before the full path. */
bool json_inspect_chunk_known(const char *data, size_t len, json_chunk_info *out);
int json_inspect_chunk_full(const char *data, size_t len, arena *a, json_chunk_info *out);

/* The usage of a whole JSON answer (chat, completions, responses,
 * embeddings) without tokenising all of it: the last "usage" member whose
 * value is an object is found by a byte scan and only that object is
 * tokenised. False when there is none. */
bool json_find_usage(const char *body, size_t len, arena *a, json_chunk_info *out);

/* true, false, null, or a number as RFC 8259 §6 has it: what strict JSON
 * allows where jsmn saw a primitive. */
bool json_primitive_ok(slice v);

/* {"error":{"message":..,"type":..,"param":null,"code":..}} */
void json_write_error(wbuf *b, const char *message, const char *type, const char *code);

#endif
