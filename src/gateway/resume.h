/* Streams that outlive their client (§7): a resumable request's relay runs
 * on its own (its own arena and copies of the request), its events go into
 * a replay ring, and clients read them as readers: the one that started
 * it, and any that come back with Last-Event-ID, each from its own
 * position. The upstream is cancelled only when the replay window passes
 * with nobody attached (or on an explicit cancel). */
#ifndef SSEGATE_RESUME_H
#define SSEGATE_RESUME_H

#include <stdbool.h>
#include <stddef.h>

#include "core/config.h"
#include "core/loop.h"
#include "gateway/auth.h"
#include "gateway/generation.h"
#include "gateway/relay.h"
#include "gateway/replay.h"
#include "http/http.h"

typedef struct resume_hub resume_hub;
typedef struct resume_reader resume_reader;

resume_hub *resume_hub_new(loop *l, const config *cfg, metrics *m);
void resume_hub_free(resume_hub *h);

typedef struct resume_request {
    const http_request *http;   /* copied: the client may go away */
    const char *body;
    size_t body_len;
    slice req_id, traceparent;
    generation *gen;            /* a reference is taken */
    auth_identity *caller;      /* moved into the stream (NULL: anonymous) */
    bool chat_stream;           /* /chat/stream: events become message/done/error */
    bool http10;                /* the client speaks HTTP/1.0: no chunks, the close ends it */
} resume_request;

/* Starts a resumable request; the client (sink, client) is its first reader.
 * NULL after the client was answered (an error, before any stream). */
resume_reader *resume_start(resume_hub *h, const relay_env *env, const resume_request *req, const relay_sink *sink,
                            void *client);

/* A client back with Last-Event-ID: TOKEN.N for a stream owned by `owner`.
 * Returns the reader, or NULL with *status 404 (unknown, expired, foreign)
 * or 409 (the position is no longer kept). `chat_stream`: how the stream's
 * events are framed (its own, or /v1's). */
resume_reader *resume_attach(resume_hub *h, slice last_event_id, const char *owner, bool http10,
                             const relay_sink *sink, void *client, int *status);

/* The reader's client queue drained: send more. */
void resume_reader_drained(resume_reader *r);
/* The reader's client left: detach (the stream goes on). */
void resume_reader_gone(resume_reader *r);
/* Bytes the reader sent, for the client's log line. */
uint64_t resume_reader_bytes(const resume_reader *r);

/* Cancels a stream now (DELETE /streams/TOKEN): 0, or 404 as above. */
int resume_cancel(resume_hub *h, slice token, const char *owner);

/* For metrics and tests. */
size_t resume_hub_bytes(const resume_hub *h);

#endif
