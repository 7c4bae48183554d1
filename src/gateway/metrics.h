/* The gateway's counters, gauges and histograms, and their Prometheus text
 * exposition (format 0.0.4). Updates are plain integer stores on the hot
 * path; every table, the name store and the page buffer are allocated once
 * in metrics_new, so nothing here allocates afterwards and rendering cannot
 * overflow. Single-threaded, like the reactor that owns it. No I/O. */
#ifndef SSEGATE_METRICS_H
#define SSEGATE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/slice.h"

/* Client and upstream names keep at most this many bytes (cut at a UTF-8
 * character boundary); bytes that are not UTF-8, and control characters
 * other than tab and newline, become '?'. */
enum { METRICS_NAME_MAX = 128 };

typedef enum metrics_route {
    ROUTE_CHAT,        /* /v1/chat/completions */
    ROUTE_COMPLETIONS, /* /v1/completions */
    ROUTE_RESPONSES,   /* /v1/responses */
    ROUTE_EMBEDDINGS,  /* /v1/embeddings */
    ROUTE_MODELS,      /* /v1/models, /v1/models/... */
    ROUTE_OTHER_V1,    /* any other /v1, /v1/... */
    ROUTE_CHAT_STREAM, /* /chat/stream */
    ROUTE_PAGE,        /* / */
    ROUTE_INTERNAL,    /* everything else: /ping, /metrics, 404s */
    ROUTE_COUNT
} metrics_route;

/* Maps a request path (no query) to its route. */
metrics_route metrics_route_of(slice path);

typedef struct metrics metrics;

/* max_clients: distinct client names with their own series (besides
 * "other"); max_upstreams: at least 1 is kept. NULL on out-of-memory or
 * absurd sizes. */
metrics *metrics_new(size_t max_clients, size_t max_upstreams, const char *version);
void metrics_free(metrics *m);

/* Client ids: the name "other" and, once max_clients distinct names have
 * their own id, every new name share the id of "other". O(1) average.
 * Functions given a client id never handed out count it as "other". */
uint32_t metrics_client(metrics *m, slice name);
/* Upstream ids, registered at start-up; once max_upstreams names are
 * registered, new names get the last id. */
uint32_t metrics_upstream(metrics *m, slice name);

/* A status outside 100..599 is counted as status="0". */
void metrics_request(metrics *m, metrics_route route, int status, uint64_t duration_us);
void metrics_ttfb(metrics *m, uint32_t upstream, uint64_t us);
void metrics_chunks(metrics *m, uint64_t n);
void metrics_tokens(metrics *m, uint32_t client, uint64_t prompt, uint64_t completion);

/* The enum types are named *_kind and *_reason: the functions taking them
 * have the plain names. */
typedef enum metrics_upstream_error_kind {
    UPERR_DNS,
    UPERR_CONNECT,
    UPERR_TLS,
    UPERR_TIMEOUT,
    UPERR_PROTOCOL,
    UPERR_STATUS_5XX,
    UPERR_STATUS_429,
    UPERR_AUTH,
    UPERR_COUNT
} metrics_upstream_error_kind;

void metrics_upstream_error(metrics *m, uint32_t upstream, metrics_upstream_error_kind kind);
void metrics_retry(metrics *m, uint32_t upstream);
/* Passive health took the upstream out of rotation. */
void metrics_upstream_ejection(metrics *m, uint32_t upstream);
void metrics_tls_handshake(metrics *m, bool resumed);

typedef enum metrics_limit_kind { LIMIT_REQUESTS, LIMIT_TOKENS, LIMIT_STREAMS, LIMIT_KIND_COUNT } metrics_limit_kind;

void metrics_rate_limited(metrics *m, uint32_t client, metrics_limit_kind kind);

typedef enum metrics_auth_failure_reason {
    AUTHFAIL_MISSING,
    AUTHFAIL_INVALID_KEY,
    AUTHFAIL_INVALID_TOKEN,
    AUTHFAIL_COUNT
} metrics_auth_failure_reason;

void metrics_auth_failure(metrics *m, metrics_auth_failure_reason reason);
void metrics_stream_resumed(metrics *m);
void metrics_config_reload(metrics *m, bool ok);
void metrics_gauge_connections(metrics *m, int64_t delta);
void metrics_gauge_streams(metrics *m, int64_t delta);

/* Renders the whole page into the buffer m owns (valid until the next
 * render or metrics_free). The buffer is sized at metrics_new for the worst
 * case: every client and upstream with the longest name, every route with
 * every status, every value at its widest. A NULL slice would mean that
 * bound is wrong (the unit tests check it): no half page is served. */
slice metrics_render(metrics *m);
/* That worst-case size, in bytes. */
size_t metrics_render_capacity(const metrics *m);

#endif
