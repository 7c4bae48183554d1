/* HTTP/1.1 message heads, parsed in place: every slice points into the
 * caller's buffer, nothing is allocated. Also the chunked transfer coding. */
#ifndef SSEGATE_HTTP_H
#define SSEGATE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/slice.h"

enum { HTTP_MAX_HEADERS = 100 };

typedef struct http_header {
    slice name, value;
} http_header;

/* The fields the gateway acts on, recognised once per header as a head is
 * parsed, so that nothing downstream compares names again. */
typedef enum http_field {
    HTTP_FIELD_OTHER,
    /* hop-by-hop (RFC 9110 §7.6.1), and this hop's framing: never forwarded */
    HTTP_FIELD_CONNECTION,
    HTTP_FIELD_KEEP_ALIVE,
    HTTP_FIELD_PROXY_CONNECTION,
    HTTP_FIELD_TE,
    HTTP_FIELD_TRAILER,
    HTTP_FIELD_UPGRADE,
    HTTP_FIELD_TRANSFER_ENCODING,
    HTTP_FIELD_PROXY_AUTHORIZATION,
    HTTP_FIELD_PROXY_AUTHENTICATE,
    HTTP_FIELD_CONTENT_LENGTH,
    /* end-to-end */
    HTTP_FIELD_HOST,
    HTTP_FIELD_EXPECT,
    HTTP_FIELD_CONTENT_TYPE,
    HTTP_FIELD_CACHE_CONTROL,
    HTTP_FIELD_ACCEPT_ENCODING,
    HTTP_FIELD_AUTHORIZATION,
    HTTP_FIELD_X_API_KEY,
    HTTP_FIELD_API_KEY,
    HTTP_FIELD_X_REQUEST_ID,
    HTTP_FIELD_TRACEPARENT,
    HTTP_FIELD_OPENAI_ORGANIZATION,
    HTTP_FIELD_OPENAI_PROJECT,
    HTTP_FIELD_RETRY_AFTER,
    HTTP_FIELD_LAST_EVENT_ID,
    HTTP_FIELD_SSEGATE_RESUMABLE,
    HTTP_FIELD_IF_NONE_MATCH,
    HTTP_FIELD_COUNT
} http_field;

/* Which known field a name is, case-insensitively. `name` is a token, as
 * the parsers leave every header name. */
http_field http_field_of(slice name);

static inline bool http_field_is_hop_by_hop(http_field f)
{
    return f >= HTTP_FIELD_CONNECTION && f <= HTTP_FIELD_CONTENT_LENGTH;
}

/* Per known field, 1 + the index of its first header, 0 when absent. */
typedef struct http_field_index {
    uint8_t at[HTTP_FIELD_COUNT];
} http_field_index;

typedef enum http_method {
    HTTP_GET,
    HTTP_HEAD,
    HTTP_POST,
    HTTP_PUT,
    HTTP_DELETE,
    HTTP_PATCH,
    HTTP_OPTIONS,
    HTTP_OTHER
} http_method;

typedef enum http_body_kind {
    HTTP_BODY_NONE,
    HTTP_BODY_LENGTH,  /* Content-Length */
    HTTP_BODY_CHUNKED, /* Transfer-Encoding: chunked */
    HTTP_BODY_UNTIL_CLOSE
} http_body_kind;

/* What a parse call concluded. Errors carry the status to answer with. */
typedef enum http_parse_result {
    HTTP_PARSE_DONE = 0,
    HTTP_PARSE_INCOMPLETE,
    HTTP_PARSE_BAD_REQUEST,      /* 400 */
    HTTP_PARSE_URI_TOO_LONG,     /* 414 */
    HTTP_PARSE_HEADERS_TOO_LARGE,/* 431 */
    HTTP_PARSE_NOT_IMPLEMENTED,  /* 501: a transfer coding we do not speak */
    HTTP_PARSE_BAD_VERSION       /* 505 */
} http_parse_result;

typedef struct http_request {
    http_method method;
    slice method_name, target, path, query;
    int minor_version; /* HTTP/1.x */
    http_header headers[HTTP_MAX_HEADERS]; /* valid up to header_count; a new request clears the rest only */
    size_t header_count;
    http_field_index fields;
    size_t head_len; /* bytes of the head, request line to the blank line */
    http_body_kind body_kind;
    uint64_t content_length;
    bool keep_alive;
    bool expect_continue;
    const char *error; /* why, when the result is an error */
} http_request;

typedef struct http_response {
    int status;
    int minor_version;
    http_header headers[HTTP_MAX_HEADERS];
    size_t header_count;
    http_field_index fields;
    size_t head_len;
    http_body_kind body_kind;
    uint64_t content_length;
    bool keep_alive;
    slice content_type;
    const char *error;
} http_response;

/* Limits: max_head bounds the whole head (431), max_target the request
 * target (414). `scanned` lets a caller that re-parses as bytes arrive
 * skip what it already searched for the end of the head: pass the previous
 * `*scanned` (start at 0).
 *
 * Strictness (RFC 9112): a request line is judged as its bytes arrive, so
 * bytes that cannot begin a request (a TLS ClientHello, a method of more
 * than 32 bytes, a control byte in the target, ...) are a 400 before the
 * head is complete; empty lines before it are skipped. A head's lines end
 * all in CRLF or all in a bare LF, never a mix. The Host value must be
 * `uri-host [ ":" port ]` (RFC 9110 §7.2): a reg-name, IPv4 address or
 * bracketed IPv6/IPvFuture literal, then at most five digits worth at most
 * 65535 or nothing (RFC 3986 lets the port be empty); an empty value is
 * allowed (a target without authority), a port without a host is not. */
http_parse_result http_parse_request(const char *buf, size_t len, size_t max_head, size_t max_target,
                                     size_t *scanned, http_request *req);

/* Parses a response head. `request_was_head` matters for body framing.
 * Line ends are all CRLF or all bare LF, as for requests. */
http_parse_result http_parse_response(const char *buf, size_t len, size_t max_head, bool request_was_head,
                                      http_response *res);

/* Finds a header by name, case-insensitively; NULL when absent. */
const http_header *http_find_header(const http_header *headers, size_t count, slice name);

/* The first header of a known field, found without comparing names; NULL
 * when absent. */
const http_header *http_request_field(const http_request *req, http_field f);
const http_header *http_response_field(const http_response *res, http_field f);

/* True for the headers that describe one connection, not the message
 * (RFC 9110 §7.6.1), plus those naming this hop's framing. */
bool http_is_hop_by_hop(slice name);

/* True when a Connection header value lists `token`. */
bool http_list_has_token(slice list, slice token);

const char *http_reason(int status);

/* ---- chunked transfer coding ---- */

/* Where the decoder is in `chunk-size *( BWS ";" BWS ext-name [ BWS "="
 * BWS ext-value ] ) CRLF data CRLF ... last-chunk trailer-section CRLF`. */
typedef enum http_chunked_state {
    CHUNK_SIZE_START,
    CHUNK_SIZE,
    CHUNK_EXT_BWS,         /* whitespace after the size or a value: ';' must follow */
    CHUNK_EXT_NAME_START,  /* after ';' */
    CHUNK_EXT_NAME,
    CHUNK_EXT_NAME_BWS,    /* whitespace after a name: '=' or ';' must follow */
    CHUNK_EXT_VALUE_START, /* after '=' */
    CHUNK_EXT_TOKEN,
    CHUNK_EXT_QUOTED,
    CHUNK_EXT_QUOTED_PAIR, /* after a backslash in a quoted value */
    CHUNK_EXT_QUOTED_END,
    CHUNK_SIZE_LF,
    CHUNK_DATA,
    CHUNK_DATA_CR,
    CHUNK_DATA_LF,
    CHUNK_TRAILER_START,
    CHUNK_TRAILER_NAME,
    CHUNK_TRAILER_VALUE,
    CHUNK_TRAILER_LF,
    CHUNK_END_LF,
    CHUNK_DONE,
    CHUNK_INVALID /* an error was seen; it stays */
} http_chunked_state;

typedef struct http_chunked {
    http_chunked_state state;
    uint64_t remaining;
    size_t size_digits;
    size_t overhead; /* extension + trailer bytes, bounded */
} http_chunked;

typedef enum http_chunked_result { CHUNKED_MORE, CHUNKED_DONE, CHUNKED_ERROR } http_chunked_result;

/* Decodes src[0..src_len) and writes the payload to dst, which may alias src
 * as long as dst <= src (data moves down over the framing; when dst == src
 * nothing moves). Reports raw bytes consumed and payload bytes produced; on
 * CHUNKED_ERROR, `consumed` stops before the offending byte.
 * Framing is strict (RFC 9112 §7.1): every line of it ends in CRLF, an
 * extension name is a token and its value a token or quoted-string,
 * trailer lines are `name: value`. Extension bytes of one chunk line, and
 * trailer bytes in all, are bounded (4096). */
http_chunked_result http_chunked_decode(http_chunked *d, char *dst, const char *src, size_t src_len,
                                        size_t *consumed, size_t *produced);

/* Writes "<hex>\r\n" for a chunk of `len` bytes; returns its length (<= 18). */
size_t http_chunk_header(char out[18], size_t len);

#endif
