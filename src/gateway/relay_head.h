/* The two heads a relay writes: the client's request as it goes upstream,
 * and the upstream's answer head as it goes to the client. Each is written
 * into room sized to the head at hand (no fixed reservation), so the
 * arena that holds it stays small. */
#ifndef SSEGATE_RELAY_HEAD_H
#define SSEGATE_RELAY_HEAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/slice.h"
#include "core/wbuf.h"
#include "gateway/limits.h"
#include "gateway/scrub.h"
#include "http/http.h"
#include "upstream/upstream.h"

typedef struct request_head_spec {
    const http_request *http;        /* the client's request */
    const upstream_target *target;   /* where it goes: base path, Host, the upstream key */
    const char *org, *project;       /* OpenAI-Organization and -Project, or NULL */
    slice traceparent, req_id;
    bool upload;                     /* the body streams up, framed as the client framed it */
    uint64_t body_len;               /* otherwise: the body's length after its edits */
} request_head_spec;

/* Bytes that always suffice for relay_write_request_head. */
size_t relay_request_head_room(const request_head_spec *s);
/* The head, blank line included; false when b overflowed. */
bool relay_write_request_head(wbuf *b, const request_head_spec *s);

typedef struct answer_head_spec {
    const http_response *head;       /* the upstream's head, its values in a writable buffer */
    int status;
    http_body_kind body_kind;        /* as relayed (an error body held whole has a length) */
    uint64_t content_length;
    bool stream;                     /* an event stream: our Content-Type and Cache-Control */
    bool head_method, client_chunked, keep_alive;
    slice req_id;
    const limit_verdict *limits;     /* the caller's limits, replacing the upstream's; or NULL */
    const secrets *secrets;          /* masked in the relayed values, in place */
} answer_head_spec;

size_t relay_answer_head_room(const answer_head_spec *s);
/* The head, blank line included; false when b overflowed. Without chunks
 * (HTTP/1.0) a body of unknown length ends with the connection, which the
 * head then says. */
bool relay_write_answer_head(wbuf *b, const answer_head_spec *s);

#endif
