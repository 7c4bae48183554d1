/* One request relayed to the upstream and its answer relayed back: the
 * state machine between a client connection and an upstream connection.
 * SSE answers go through the SSE parser and framer event by event; other
 * answers are passed through as they arrive. */
#ifndef SSEGATE_RELAY_H
#define SSEGATE_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/uio.h>

#include "core/arena.h"
#include "core/config.h"
#include "http/http.h"
#include "core/log.h"
#include "core/loop.h"
#include "upstream/retry.h"
#include "upstream/upstream.h"
#include "gateway/auth.h"
#include "gateway/generation.h"
#include "gateway/limits.h"
#include "gateway/metrics.h"

/* The client as the relay sees it: where bytes go, nothing more. */
typedef struct relay_sink {
    /* Sends or queues all of iov; -1 when the client is gone. */
    int (*send)(void *client, const struct iovec *iov, size_t count);
    size_t (*pending)(void *client);
    /* Answers with a §6 JSON error (before any byte of an answer was sent);
     * `extra` is more header lines, each "\r\nName: value", or NULL. */
    void (*error)(void *client, int status, const char *message, const char *type, const char *code,
                  const char *extra);
    /* The answer is complete; `reusable` when the client connection may go on. */
    void (*finished)(void *client, bool reusable);
    /* A streamed upload has room again: offer more with relay_upload. */
    void (*upload_more)(void *client);
} relay_sink;

/* A stream that outlives its client (§7) takes the events instead of a
 * client: the relay offers each one as the upstream framed it. */
typedef struct relay_event {
    slice raw;      /* the whole event, blank line included (unless `unterminated`) */
    slice content;  /* a content delta's text, still JSON-escaped; empty when none */
    bool done;      /* data: [DONE] */
    bool is_error;  /* an {"error":...} event */
    bool unterminated;
} relay_event;

typedef struct relay_tap {
    /* A 200 event stream's head arrived: true to take its events from here on. */
    bool (*begin)(void *ctx, const http_response *res);
    /* One event; false when there is no room now: it is offered again after relay_resume. */
    bool (*event)(void *ctx, const relay_event *ev);
    /* The stream ended: whole (message NULL) or with the §6 error it ended on. */
    void (*ended)(void *ctx, const char *message, const char *code);
} relay_tap;

typedef struct relay_env {
    loop *loop;
    const config *cfg;
    buffer_pool *read_buffers; /* RELAY_READ_BUFFER bytes each */
    buffer_pool *park[2];      /* small buffers, smallest first, for an incomplete event between reads */
    metrics *metrics;
    retry_rng *rng;            /* jitter for backoffs */
} relay_env;

enum { RELAY_READ_BUFFER = 64 * 1024, RELAY_CLIENT_HIGH_WATER = 256 * 1024 };

typedef struct relay_request {
    const http_request *http;
    const char *body;
    size_t body_len;
    slice req_id;
    slice traceparent;             /* W3C trace context sent upstream */
    generation *gen;               /* routes and upstreams; the client holds it for the request */
    const auth_identity *caller;   /* who asked: limits, and a credential to scrub */
    access_record *record; /* the relay fills status, model, upstream, timings, counts, error */
    bool holds_stream;     /* out: a stream slot of the caller's limit was taken */
    bool upload;           /* the body is not here: it streams in through relay_upload */
    const relay_tap *tap;  /* NULL, or who takes a stream's events instead of the client */
    void *tap_ctx;
} relay_request;

typedef struct relay relay;

/* Starts relaying; memory comes from `a`. Returns NULL after answering the
 * client itself (bad body: 400). */
relay *relay_start(const relay_env *env, arena *a, relay_request *req, const relay_sink *sink, void *client);
/* The client went away: close the upstream connection now, release all. */
void relay_abort(relay *r);
/* The client's queue drained below the high-water mark. */
void relay_resume(relay *r);
/* The client took bytes although its queue is still above the mark: it is
 * reading, slowly, so the idle clock that would drop it starts again. */
void relay_client_progress(relay *r);

/* A body that is not JSON goes up as it arrives (§4): takes what fits of
 * data (framed upstream as the client framed it) and says how much in
 * *taken; the rest is offered again after sink->upload_more. `last`: data
 * ends the body. True when all of it, the end included, was taken (or is
 * no longer wanted: the answer came first). Once a body byte went up the
 * request is not retried. */
bool relay_upload(relay *r, const char *data, size_t len, bool last, size_t *taken);

#endif
