#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "core/arena.h"
#include "http/http.h"
#include "http/page.h"
#include "gateway/auth.h"
#include "gateway/json.h"
#include "gateway/keys.h"
#include "gateway/metrics.h"
#include "gateway/resume.h"
#include "core/log.h"
#include "core/netaddr.h"
#include "gateway/relay.h"
#include "gateway/evbuf.h"
#include "core/wbuf.h"

enum {
    IN_BUFFER = 32 * 1024,
    MAX_HEAD = 16 * 1024,
    MAX_TARGET = 8 * 1024,
    OUT_BUFFER = 2 * RELAY_CLIENT_HIGH_WATER + RELAY_READ_BUFFER,
    ACCEPTS_PER_TICK = 64,
    REQ_ID_MAX = 128,
    TRACEPARENT_LEN = 55, /* 00-<32 hex>-<16 hex>-<2 hex> */
    LINGER_MS = 1000,
    REFUSAL_SLOTS = 64, /* connections past --max-conns that still get a polite 503 */
    REQUEST_PAGE = 4096, /* a client_req and, after it, the start of its arena */
    POOL_MAX_FREE = 4096, /* free buffers a pool ever keeps, however busy the last moment was */
    POOL_TRIM_MS = 100,   /* how often pools give back what the last interval did not need */
};

typedef enum client_state {
    CLIENT_READING_HEAD,
    CLIENT_READING_BODY,
    CLIENT_RELAYING,
    CLIENT_CLOSING,  /* answer written or being written; no more requests */
    CLIENT_LINGERING /* answer sent, our side shut: draining the client until it closes */
} client_state;

typedef struct client client;

struct server {
    loop *loop;
    const config *cfg;
    generation *gen; /* the configuration new requests start on */
    metrics *metrics;
    resume_hub *resume;
    retry_rng rng;
    relay_env env;
    int listen_fd;
    loop_io listen_io;
    char address[80];
    bool ready, draining;
    size_t conn_count, active_requests;
    client *clients; /* all connections, for draining and shutdown */
    buffer_pool in_buffers, out_buffers, read_buffers, requests;
    buffer_pool park_small, park_large; /* an incomplete event's bytes between reads */
    loop_timer drain_timer;
    loop_timer trim_timer; /* armed while a pool holds more than its reserve */
    uint64_t id_state;
};

/* One request, from its first byte to its end: taken from a pool when a
 * request starts and given back when it ends, so an idle keep-alive
 * connection holds only its `client`. */
typedef struct client_req {
    /* The head as parsed (its slices point into the input buffer) and the
     * body, in head_mem; both go once the answer's first byte went out
     * (release_head): no retry can need them after that. */
    http_request *http;
    arena head_mem;
    char *body;
    size_t body_len, body_cap;
    http_chunked chunked;
    /* what outlives the head, copied into `arena` by release_head */
    slice method_name, path;
    bool keep_alive, head_method;

    arena arena; /* the relay and what it keeps for the whole request */
    relay_request relay_req;
    access_record record;
    char req_id[REQ_ID_MAX + 1];
    char traceparent[TRACEPARENT_LEN + 1];
    auth_identity caller;
    bool has_caller;
    generation *gen; /* held from routing to the request's end */
    bool delegated;  /* its stream's job logs the request line */

    /* a body that is not JSON, streamed up as it arrives (§4) */
    bool up_complete;     /* the whole body was read (up_pending may still wait) */
    size_t up_pending;    /* decoded body bytes at in + in_used the relay has not taken */
    uint64_t up_remaining;/* Content-Length still to read */
    uint64_t up_total;
    uint64_t started_ms;
    /* The rest of the page: where `arena` starts, so the relay and what a
     * held stream keeps cost no block (and a page, given back, leaves). */
    _Alignas(16) unsigned char mem[];
} client_req;

_Static_assert(sizeof(client_req) + 2048 <= REQUEST_PAGE, "a request page leaves room for its relay");

/* A connection: what it holds between requests is this struct alone. */
struct client {
    server *srv;
    client *next, *prev;
    int fd;
    loop_io io;
    loop_timer timer;
    loop_deferred deferred, freeing;
    client_state state;

    char *in; /* pooled while bytes are there to parse or keep */
    size_t in_len, scanned;
    size_t in_used; /* bytes at the start of `in` that belong to this request */

    char *out;          /* == out_mem.ptr */
    evbuf out_mem;      /* pooled; grows to hold one long event for a slow reader */
    size_t out_start, out_len;

    client_req *rq;        /* NULL between requests */
    relay *relay;
    resume_reader *reader; /* this request reads a resumable stream */
    bool uploading;        /* this request's body goes up through relay_upload */
    bool up_done;          /* ... and was all handed to the relay */
    bool request_done, reusable, dead, closing_after_write, in_request;
    bool feeding, feed_again; /* feed_upload is on the stack; the relay asked for more meanwhile */
};

static void client_close(client *c);
static void process_input(client *c);
static void update_interest(client *c);
static void after_request(void *ctx);
static void close_gracefully(client *c);
static void arm_timer(client *c, uint64_t ms);

/* ---- output ---- */

static size_t pending_out(const client *c) { return c->out_len - c->out_start; }

static int flush_out(client *c)
{
    while (pending_out(c)) {
        ssize_t n = write(c->fd, c->out + c->out_start, pending_out(c));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0)
            return -1;
        c->out_start += (size_t)n;
    }
    /* Drained: the queue goes back to the pool, so an idle connection that
     * once had a slow moment does not keep half a megabyte. */
    c->out_start = c->out_len = 0;
    evbuf_release(&c->out_mem, &c->srv->out_buffers);
    c->out = NULL;
    return 0;
}

/* Queues what the socket did not take. */
static int queue_out(client *c, const struct iovec *iov, size_t count, size_t skip)
{
    if (!evbuf_acquire(&c->out_mem, &c->srv->out_buffers))
        return -1;
    c->out = c->out_mem.ptr;
    for (size_t i = 0; i < count; i++) {
        size_t len = iov[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        const char *p = (const char *)iov[i].iov_base + skip;
        len -= skip;
        skip = 0;
        if (len > c->out_mem.cap - c->out_len) {
            memmove(c->out, c->out + c->out_start, pending_out(c));
            c->out_len -= c->out_start;
            c->out_start = 0;
            /* Past the pooled size only for an event longer than the
             * high-water mark allows for: the relay stops reading meanwhile. */
            size_t limit = OUT_BUFFER + (size_t)c->srv->cfg->max_event;
            if (!evbuf_reserve(&c->out_mem, &c->srv->out_buffers, c->out_len, len, limit))
                return -1;
            c->out = c->out_mem.ptr;
        }
        memcpy(c->out + c->out_len, p, len);
        c->out_len += len;
    }
    return 0;
}

static int client_send(client *c, const struct iovec *iov, size_t count)
{
    if (c->dead)
        return -1;
    size_t total = 0;
    for (size_t i = 0; i < count; i++)
        total += iov[i].iov_len;
    size_t sent = 0;
    if (pending_out(c) == 0) {
        while (sent < total) {
            /* The vector again, past what the socket already took (the data
             * itself is not copied). */
            struct iovec local[64];
            size_t n = 0, skip = sent;
            for (size_t i = 0; i < count && n < 64; i++) {
                if (skip >= iov[i].iov_len) {
                    skip -= iov[i].iov_len;
                    continue;
                }
                local[n].iov_base = (char *)iov[i].iov_base + skip;
                local[n].iov_len = iov[i].iov_len - skip;
                skip = 0;
                n++;
            }
            ssize_t w = writev(c->fd, local, (int)n);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && errno == EAGAIN)
                break;
            if (w <= 0) {
                c->dead = true;
                loop_defer(c->srv->loop, &c->deferred, after_request, c);
                return -1;
            }
            sent += (size_t)w;
        }
    }
    if (sent < total) {
        if (queue_out(c, iov, count, sent) != 0) {
            c->dead = true;
            loop_defer(c->srv->loop, &c->deferred, after_request, c);
            return -1;
        }
        update_interest(c);
    }
    return 0;
}

static bool keeps_alive(const client *c) { return c->rq->http ? c->rq->http->keep_alive : c->rq->keep_alive; }

static bool is_head_request(const client *c)
{
    return c->rq->http ? c->rq->http->method == HTTP_HEAD : c->rq->head_method;
}

static void send_simple(client *c, int status, const char *content_type, slice body, bool close, const char *extra)
{
    char mem[2048];
    wbuf b = wbuf_over(mem, sizeof mem);
    wbuf_puts(&b, "HTTP/1.1 ");
    wbuf_put_u64(&b, (uint64_t)status);
    wbuf_put_char(&b, ' ');
    wbuf_puts(&b, http_reason(status));
    wbuf_puts(&b, "\r\nContent-Type: ");
    wbuf_puts(&b, content_type);
    wbuf_puts(&b, "\r\nContent-Length: ");
    wbuf_put_u64(&b, body.len);
    if (c->rq && c->rq->req_id[0]) {
        wbuf_puts(&b, "\r\nX-Request-Id: ");
        wbuf_puts(&b, c->rq->req_id);
    }
    if (extra)
        wbuf_puts(&b, extra);
    if (close)
        wbuf_puts(&b, "\r\nConnection: close");
    wbuf_puts(&b, "\r\n\r\n");
    bool head_only = (c->in_request && is_head_request(c)) || status == 304;
    struct iovec iov[2] = {{mem, b.len}, {(void *)body.ptr, head_only ? 0 : body.len}};
    if (client_send(c, iov, 2) == 0 && c->rq)
        c->rq->record.bytes_out += b.len + iov[1].iov_len;
}

/* `extra`: more header lines, each "\r\nName: value". */
static void send_error_with(client *c, int status, const char *message, const char *type, const char *code,
                            bool close, const char *extra)
{
    char mem[1024];
    wbuf b = wbuf_over(mem, sizeof mem);
    json_write_error(&b, message, type, code);
    if (c->rq) {
        c->rq->record.status = status;
        if (!c->rq->record.error)
            c->rq->record.error = message;
    }
    send_simple(c, status, "application/json", wbuf_slice(&b), close,
                extra ? extra : status == 503 ? "\r\nRetry-After: 1" : NULL);
}

static void send_error(client *c, int status, const char *message, const char *type, const char *code, bool close)
{
    send_error_with(c, status, message, type, code, close, NULL);
}

/* ---- request bookkeeping ---- */

/* splitmix64 over a random seed: unique enough, no syscall per request.
 * Ids are labels, not secrets (stream tokens come from getrandom). Each
 * 64-bit draw gives 16 digits at once: its nibbles spread to one per byte,
 * then each byte n becomes '0' + n, plus 39 more ('a' - '0' - 10) when n
 * is 10 or more, which n + 6 carrying into bit 4 tells. */
static void put_random_hex(server *s, char *out, size_t digits)
{
    const uint64_t nibbles = 0x0f0f0f0f0f0f0f0fu, ones = 0x0101010101010101u;
    for (size_t i = 0; i < digits; i += 16) {
        uint64_t z = (s->id_state += 0x9e3779b97f4a7c15u);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
        z ^= z >> 31;
        uint64_t half[2] = {z & nibbles, (z >> 4) & nibbles};
        char text[16];
        for (size_t h = 0; h < 2; h++) {
            uint64_t letters = ((half[h] + ones * 6) >> 4) & ones;
            uint64_t chars = half[h] + ones * '0' + letters * 39;
            memcpy(text + 8 * h, &chars, 8);
        }
        if (digits - i >= 16)
            memcpy(out + i, text, 16); /* a constant length: two moves */
        else
            memcpy(out + i, text, digits - i);
    }
}

static void make_request_id(client *c)
{
    const http_header *h = http_request_field(c->rq->http, HTTP_FIELD_X_REQUEST_ID);
    if (h && h->value.len > 0 && h->value.len <= REQ_ID_MAX) {
        bool clean = true;
        for (size_t i = 0; i < h->value.len; i++) {
            unsigned char ch = (unsigned char)h->value.ptr[i];
            clean &= ch > 0x20 && ch < 0x7f && ch != '"' && ch != '\\';
        }
        if (clean) {
            memcpy(c->rq->req_id, h->value.ptr, h->value.len);
            c->rq->req_id[h->value.len] = '\0';
            return;
        }
    }
    put_random_hex(c->srv, c->rq->req_id, 32);
    c->rq->req_id[32] = '\0';
}

static bool is_lower_hex(slice s)
{
    for (size_t i = 0; i < s.len; i++)
        if (!((s.ptr[i] >= '0' && s.ptr[i] <= '9') || (s.ptr[i] >= 'a' && s.ptr[i] <= 'f')))
            return false;
    return true;
}

/* W3C trace context: the client's when well formed, else a new trace. */
static void make_traceparent(client *c)
{
    const http_header *h = http_request_field(c->rq->http, HTTP_FIELD_TRACEPARENT);
    if (h && h->value.len == TRACEPARENT_LEN && h->value.ptr[2] == '-' && h->value.ptr[35] == '-' &&
        h->value.ptr[52] == '-' && !slice_starts_with(h->value, SLICE_LIT("ff")) &&
        is_lower_hex((slice){h->value.ptr, 2}) && is_lower_hex((slice){h->value.ptr + 3, 32}) &&
        is_lower_hex((slice){h->value.ptr + 36, 16}) && is_lower_hex((slice){h->value.ptr + 53, 2})) {
        memcpy(c->rq->traceparent, h->value.ptr, TRACEPARENT_LEN);
        c->rq->traceparent[TRACEPARENT_LEN] = '\0';
        return;
    }
    memcpy(c->rq->traceparent, "00-", 3);
    put_random_hex(c->srv, c->rq->traceparent + 3, 32);
    c->rq->traceparent[35] = '-';
    put_random_hex(c->srv, c->rq->traceparent + 36, 16);
    memcpy(c->rq->traceparent + 52, "-01", 4);
}

/* The end of a request, once: the caller's tokens and stream slot, the
 * metrics, the log line. */
static void log_request(client *c)
{
    if (!c->in_request)
        return;
    server *s = c->srv;
    access_record *r = &c->rq->record;
    uint64_t now_ms = loop_now_ms(s->loop);
    r->req_id = slice_of(c->rq->req_id);
    r->method = c->rq->http ? c->rq->http->method_name : c->rq->method_name;
    r->path = c->rq->http ? c->rq->http->path : c->rq->path;
    r->client = c->rq->has_caller ? slice_of(c->rq->caller.name) : SLICE_LIT("anonymous");
    r->dur_ms = now_ms - c->rq->started_ms;
    if (c->rq->delegated) { /* the stream's job writes this request's line when its upstream ends */
        c->rq->delegated = false;
        c->in_request = false;
        generation_release(c->rq->gen);
        c->rq->gen = NULL;
        return;
    }
    uint64_t tokens = r->prompt_tokens + r->completion_tokens;
    if (c->rq->has_caller) {
        auth_identity *who = &c->rq->caller;
        if (who->state) {
            limits_charge_tokens(who->state, &who->spec, now_ms * 1000, tokens);
            if (c->rq->relay_req.holds_stream)
                limits_stream_ended(who->state);
        }
        if (tokens)
            metrics_tokens(s->metrics, who->metrics_id, r->prompt_tokens, r->completion_tokens);
        auth_release(c->rq->gen->auth, who);
        c->rq->has_caller = false;
    } else if (tokens) {
        metrics_tokens(s->metrics, metrics_client(s->metrics, r->client), r->prompt_tokens, r->completion_tokens);
    }
    c->rq->relay_req.holds_stream = false;
    metrics_request(s->metrics, metrics_route_of(r->path), r->status, r->dur_ms * 1000);
    log_access(r);
    c->in_request = false;
    generation_release(c->rq->gen); /* after the log line: its names may live in the generation */
    c->rq->gen = NULL;
}

/* The request's memory goes back: its arenas and its record. */
static void on_trim(void *ctx)
{
    server *s = ctx;
    bool more = pool_trim(&s->in_buffers);
    more |= pool_trim(&s->out_buffers);
    more |= pool_trim(&s->read_buffers);
    more |= pool_trim(&s->requests);
    more |= pool_trim(&s->park_small);
    more |= pool_trim(&s->park_large);
    more |= arena_trim_cached();
    if (more)
        loop_timer_arm(s->loop, &s->trim_timer, POOL_TRIM_MS, on_trim, s);
}

static void end_request(client *c)
{
    client_req *q = c->rq;
    if (!q)
        return;
    arena_reset(&q->head_mem);
    arena_reset(&q->arena);
    pool_put(&c->srv->requests, q);
    c->rq = NULL;
    if (!loop_timer_armed(&c->srv->trim_timer))
        loop_timer_arm(c->srv->loop, &c->srv->trim_timer, POOL_TRIM_MS, on_trim, c->srv);
}

/* False when out of memory. */
static bool begin_request(client *c)
{
    end_request(c); /* a request that ended without its reset (a framing error after it) */
    client_req *q = pool_get(&c->srv->requests);
    if (!q)
        return false;
    memset(q, 0, sizeof *q);
    arena_init(&q->head_mem);
    arena_init_over(&q->arena, q->mem, REQUEST_PAGE - sizeof *q);
    q->http = arena_alloc(&q->head_mem, sizeof *q->http);
    if (!q->http) {
        pool_put(&c->srv->requests, q);
        return false;
    }
    /* Everything but the header array, which the parser fills as far as
     * header_count says: 3 KiB of zeros per request are not needed. */
    http_request *h = q->http;
    memset(h, 0, offsetof(http_request, headers));
    memset(&h->header_count, 0, sizeof *h - offsetof(http_request, header_count));
    q->started_ms = loop_now_ms(c->srv->loop);
    q->record.ttfb_ms = -1;
    c->rq = q;
    c->in_request = true;
    c->uploading = c->up_done = false;
    return true;
}

static slice keep_copy(client_req *q, slice s)
{
    char *p = arena_strndup(&q->arena, s.ptr ? s.ptr : "", s.len);
    return p ? (slice){p, s.len} : (slice){NULL, 0};
}

/* The answer's first byte went out, so no retry can need the request any
 * more: its head, body and input buffer go back now rather than at its
 * end (a held stream keeps only its state). What the log and the relay
 * use later was copied first; bytes pipelined after the request stay. */
static void release_head(client *c)
{
    client_req *q = c->rq;
    if (!q || !q->http || c->uploading || c->reader)
        return;
    const http_request *h = q->http;
    q->keep_alive = h->keep_alive;
    q->head_method = h->method == HTTP_HEAD;
    q->method_name = keep_copy(q, h->method_name);
    q->path = keep_copy(q, h->path);
    if (q->record.model.len) /* it points into the body */
        q->record.model = keep_copy(q, q->record.model);
    q->http = NULL;
    q->body = NULL;
    q->body_len = q->body_cap = 0;
    q->relay_req.http = NULL;
    q->relay_req.body = NULL;
    arena_reset(&q->head_mem);
    size_t rest = c->in_len - c->in_used;
    if (rest == 0) {
        pool_put(&c->srv->in_buffers, c->in);
        c->in = NULL;
    } else {
        memmove(c->in, c->in + c->in_used, rest);
    }
    c->in_len = rest;
    c->in_used = 0;
    c->scanned = 0;
}

/* Forgets the finished request; keeps pipelined bytes that follow it. */
static void reset_request(client *c, size_t consumed)
{
    if (consumed < c->in_len)
        memmove(c->in, c->in + consumed, c->in_len - consumed);
    c->in_len -= consumed;
    c->scanned = 0;
    end_request(c);
    c->relay = NULL;
    c->request_done = false;
    c->state = CLIENT_READING_HEAD;
}

/* Called at the end of the tick in which a request finished. */
static void after_request(void *ctx)
{
    client *c = ctx;
    if (c->fd < 0)
        return;
    if (c->dead) { /* aborts the relay if it is still running */
        client_close(c);
        return;
    }
    log_request(c);
    if (c->relay) {
        c->srv->active_requests--;
        c->relay = NULL;
    }
    if (!c->reusable || c->srv->draining) {
        c->state = CLIENT_CLOSING;
        c->closing_after_write = true;
        if (pending_out(c) == 0) {
            close_gracefully(c);
        } else {
            arm_timer(c, c->srv->cfg->keepalive_timeout_ms); /* bounded wait for a slow reader */
            update_interest(c);
        }
        return;
    }
    reset_request(c, c->in_used);
    process_input(c);
}

static void request_finished(client *c, bool reusable)
{
    c->request_done = true;
    c->reader = NULL; /* the hub frees it */
    /* an upload answered before its body was all read leaves bytes we cannot parse */
    c->reusable = reusable && keeps_alive(c) && (!c->uploading || c->up_done);
    loop_defer(c->srv->loop, &c->deferred, after_request, c);
}

/* ---- the relay's view of this client ---- */

static int sink_send(void *ctx, const struct iovec *iov, size_t count)
{
    client *c = ctx;
    if (client_send(c, iov, count) != 0)
        return -1;
    release_head(c);
    return 0;
}

static size_t sink_pending(void *ctx) { return pending_out(ctx); }

static void sink_error(void *ctx, int status, const char *message, const char *type, const char *code,
                       const char *extra)
{
    client *c = ctx;
    send_error_with(c, status, message, type, code, !keeps_alive(c), extra);
    request_finished(c, true);
}

static void sink_finished(void *ctx, bool reusable) { request_finished(ctx, reusable); }

static void feed_upload(client *c);

static void sink_upload_more(void *ctx)
{
    client *c = ctx;
    feed_upload(c);
    update_interest(c);
}

static const relay_sink sink = {sink_send, sink_pending, sink_error, sink_finished, sink_upload_more};

/* A resumable stream's reader: what it sends counts toward this request. */
static int reader_send(void *ctx, const struct iovec *iov, size_t count)
{
    client *c = ctx;
    if (client_send(c, iov, count) != 0)
        return -1;
    for (size_t i = 0; i < count; i++)
        c->rq->record.bytes_out += iov[i].iov_len;
    return 0;
}

static const relay_sink reader_sink = {reader_send, sink_pending, sink_error, sink_finished, sink_upload_more};

/* ---- routing ---- */

static void answer_json(client *c, int status, const char *json)
{
    c->rq->record.status = status;
    send_simple(c, status, "application/json", slice_of(json), !keeps_alive(c), NULL);
    request_finished(c, true);
}

static void reject(client *c, int status, const char *message, const char *code)
{
    send_error(c, status, message, "invalid_request_error", code, !keeps_alive(c));
    request_finished(c, true);
}

static void start_relay(client *c)
{
    server *s = c->srv;
    c->state = CLIENT_RELAYING;
    make_traceparent(c);
    c->rq->relay_req = (relay_request){.http = c->rq->http,
                                       .body = c->rq->body,
                                       .body_len = c->rq->body_len,
                                       .req_id = slice_of(c->rq->req_id),
                                       .traceparent = (slice){c->rq->traceparent, TRACEPARENT_LEN},
                                       .caller = c->rq->has_caller ? &c->rq->caller : NULL,
                                       .gen = c->rq->gen,
                                       .record = &c->rq->record,
                                       .upload = c->uploading};
    c->rq->record.bytes_in = c->rq->http->head_len + c->rq->body_len;
    s->active_requests++;
    c->relay = relay_start(&s->env, &c->rq->arena, &c->rq->relay_req, &sink, c);
    if (!c->relay)
        s->active_requests--;
    update_interest(c);
}

static bool is_v1(slice path)
{
    return slice_eq(path, SLICE_LIT("/v1")) || slice_starts_with(path, SLICE_LIT("/v1/"));
}

/* JWT exp and nbf are Unix times: the loop's monotonic clock is not one. */
static uint64_t unix_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* §3: who is asking. `fallback`: a credential from elsewhere when no header
 * carries one (/chat/stream's key parameter). False after answering 401. */
static bool authenticate_with(client *c, slice fallback)
{
    server *s = c->srv;
    if (!c->rq->gen)
        c->rq->gen = generation_acquire(s->gen);
    if (!auth_required(c->rq->gen->auth))
        return true;
    const char *why = NULL;
    bool malformed;
    slice cred = auth_credential(c->rq->http->headers, c->rq->http->header_count, &malformed);
    if (!cred.len && !malformed)
        cred = fallback;
    auth_status st = auth_check_credential(c->rq->gen->auth, cred, malformed, unix_now_ms(), &c->rq->caller, &why);
    if (st == AUTH_OK) {
        c->rq->has_caller = true;
        return true;
    }
    c->rq->record.bytes_in = c->rq->http->head_len + c->rq->body_len;
    if (st == AUTH_BUSY) {
        send_error(c, 503, why, "server_error", "over_capacity", !keeps_alive(c));
        request_finished(c, true);
        return false;
    }
    static const metrics_auth_failure_reason reasons[] = {[AUTH_MISSING] = AUTHFAIL_MISSING,
                                                   [AUTH_INVALID_KEY] = AUTHFAIL_INVALID_KEY,
                                                   [AUTH_INVALID_TOKEN] = AUTHFAIL_INVALID_TOKEN};
    metrics_auth_failure(s->metrics, reasons[st]);
    bool token = st == AUTH_INVALID_TOKEN;
    char msg[192];
    if (token)
        snprintf(msg, sizeof msg, "invalid token: %s", why);
    else
        snprintf(msg, sizeof msg, "%s", why);
    c->rq->record.error = token ? "invalid token" : st == AUTH_MISSING ? "missing API key" : "invalid API key";
    send_error_with(c, 401, msg, "invalid_request_error", token ? "invalid_token" : "invalid_api_key",
                    !keeps_alive(c),
                    token ? "\r\nWWW-Authenticate: Bearer realm=\"ssegate\", error=\"invalid_token\""
                          : "\r\nWWW-Authenticate: Bearer realm=\"ssegate\"");
    request_finished(c, true);
    return false;
}

static bool authenticate(client *c) { return authenticate_with(c, (slice){NULL, 0}); }

/* /metrics, behind a bearer token when one is configured (§8). */
static void answer_metrics(client *c)
{
    server *s = c->srv;
    const config *cfg = s->cfg;
    if (cfg->metrics_token) {
        bool malformed;
        slice given = auth_credential(c->rq->http->headers, c->rq->http->header_count, &malformed);
        unsigned char want[KEY_DIGEST_LEN], got[KEY_DIGEST_LEN];
        key_digest(slice_of(cfg->metrics_token), want);
        key_digest(given, got);
        if (malformed || !digest_equal(want, got, sizeof want)) {
            send_error_with(c, 401, "/metrics needs 'Authorization: Bearer <metrics token>'",
                            "invalid_request_error", "invalid_api_key", !keeps_alive(c),
                            "\r\nWWW-Authenticate: Bearer realm=\"ssegate metrics\"");
            request_finished(c, true);
            return;
        }
    }
    c->rq->record.status = 200;
    send_simple(c, 200, "text/plain; version=0.0.4; charset=utf-8", metrics_render(s->metrics), !keeps_alive(c),
                NULL);
    request_finished(c, true);
}

/* ---- resumable streams (§7) ---- */

static bool is_resumable(const client *c)
{
    const http_header *h = http_request_field(c->rq->http, HTTP_FIELD_SSEGATE_RESUMABLE);
    return c->srv->cfg->resumable || (h && slice_eq(h->value, SLICE_LIT("1"))) ||
           http_request_field(c->rq->http, HTTP_FIELD_LAST_EVENT_ID);
}

static const char *owner_of(const client *c) { return c->rq->has_caller ? c->rq->caller.name : "anonymous"; }

/* Last-Event-ID: the stream's events after it, from the ring; the upstream is not asked again. */
static void resume_stream(client *c, slice last_event_id)
{
    int status = 0;
    c->reader = resume_attach(c->srv->resume, last_event_id, owner_of(c), c->rq->http->minor_version == 0, &reader_sink, c,
                              &status);
    c->rq->record.resumed = true;
    if (!c->reader) {
        if (status == 409)
            send_error(c, 409, "this stream's events at that position are no longer kept; ask again",
                       "invalid_request_error", "stream_position_lost", !keeps_alive(c));
        else
            send_error(c, 404, "no such stream: it is unknown, expired, or not yours", "invalid_request_error",
                       "stream_not_found", !keeps_alive(c));
        request_finished(c, true);
        return;
    }
    c->rq->record.status = 200;
    c->state = CLIENT_RELAYING;
    update_interest(c);
}

/* A resumable request: its relay and its events outlive this connection.
 * `synthetic`: the request to send upstream when it is not the client's
 * own (/chat/stream), with its body in c->rq->body. */
static void start_resumable(client *c, const http_request *synthetic)
{
    const http_header *lei = http_find_header(c->rq->http->headers, c->rq->http->header_count, SLICE_LIT("last-event-id"));
    if (lei) {
        resume_stream(c, lei->value);
        return;
    }
    make_traceparent(c);
    c->rq->record.bytes_in = c->rq->http->head_len + c->rq->body_len;
    resume_request q = {.http = synthetic ? synthetic : c->rq->http, .body = c->rq->body, .body_len = c->rq->body_len,
                        .req_id = slice_of(c->rq->req_id), .traceparent = slice_of(c->rq->traceparent), .gen = c->rq->gen,
                        .caller = c->rq->has_caller ? &c->rq->caller : NULL, .chat_stream = synthetic != NULL,
                        .http10 = c->rq->http->minor_version == 0};
    c->rq->has_caller = false; /* moved into the stream's job, which releases it */
    c->rq->delegated = true;
    c->state = CLIENT_RELAYING;
    c->reader = resume_start(c->srv->resume, &c->srv->env, &q, &reader_sink, c);
    update_interest(c);
}

static int hex_value(char ch)
{
    return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
}

/* A query parameter's value, %-decoded ('+' is a space) into out. */
static bool query_param(slice query, slice name, char *out, size_t cap, size_t *len)
{
    for (size_t i = 0; i < query.len;) {
        const char *amp = memchr(query.ptr + i, '&', query.len - i);
        size_t end = amp ? (size_t)(amp - query.ptr) : query.len;
        slice pair = {query.ptr + i, end - i};
        i = end + 1;
        if (pair.len <= name.len || pair.ptr[name.len] != '=' || memcmp(pair.ptr, name.ptr, name.len) != 0)
            continue;
        size_t n = 0;
        for (size_t k = name.len + 1; k < pair.len; k++) {
            char ch = pair.ptr[k];
            if (ch == '+')
                ch = ' ';
            else if (ch == '%') {
                int hi = k + 2 < pair.len ? hex_value(pair.ptr[k + 1]) : -1, lo = hi >= 0 ? hex_value(pair.ptr[k + 2]) : -1;
                if (lo < 0)
                    return false;
                ch = (char)(hi * 16 + lo);
                k += 2;
            }
            if (n == cap)
                return false;
            out[n++] = ch;
        }
        *len = n;
        return true;
    }
    return false;
}

/* The model /chat/stream asks for when the URL names none. */
static const char *default_model(const server *s)
{
    if (s->gen->first_model[0])
        return s->gen->first_model; /* what the upstream listed (the page asks for /v1/models first) */
    const config_gen *routes = s->gen->routes;
    for (size_t i = 0; i < routes->upstream_count; i++)
        if (routes->upstreams[i].model_count)
            return routes->upstreams[i].models[0].ptr;
    return s->cfg->demo ? "demo" : "gpt-4o-mini";
}

/* GET /chat/stream?q=...&model=... (§7): a one-message chat, streamed as
 * message/done/error events for EventSource, always resumable. */
static void chat_stream(client *c)
{
    enum { Q_MAX = 8192, MODEL_MAX = 256, KEY_MAX = 1024 };
    char *q = arena_alloc(&c->rq->arena, Q_MAX), model[MODEL_MAX], key[KEY_MAX];
    size_t q_len = 0, model_len = 0, key_len = 0;
    bool has_key = query_param(c->rq->http->query, SLICE_LIT("key"), key, sizeof key, &key_len);
    if (!authenticate_with(c, has_key ? (slice){key, key_len} : (slice){NULL, 0}))
        return;
    explicit_bzero(key, sizeof key);
    if (http_find_header(c->rq->http->headers, c->rq->http->header_count, SLICE_LIT("last-event-id"))) {
        start_resumable(c, c->rq->http);
        return;
    }
    if (!q || !query_param(c->rq->http->query, SLICE_LIT("q"), q, Q_MAX, &q_len) || q_len == 0) {
        reject(c, 400, "/chat/stream needs a question: ?q=...", "missing_question");
        return;
    }
    if (!query_param(c->rq->http->query, SLICE_LIT("model"), model, sizeof model, &model_len) || model_len == 0) {
        const char *m = default_model(c->srv);
        model_len = strlen(m) < sizeof model ? strlen(m) : sizeof model - 1;
        memcpy(model, m, model_len);
    }
    size_t cap = 6 * (q_len + model_len) + 256;
    char *body = arena_alloc(&c->rq->arena, cap);
    static const char head[] = "POST /v1/chat/completions HTTP/1.1\r\nHost: ssegate\r\nContent-Type: application/json\r\n\r\n";
    http_request *up = arena_alloc(&c->rq->arena, sizeof *up);
    size_t scanned = 0;
    if (!body || !up ||
        http_parse_request(head, sizeof head - 1, sizeof head, sizeof head, &scanned, up) != HTTP_PARSE_DONE) {
        reject(c, 503, "out of memory", "internal_error");
        return;
    }
    wbuf b = wbuf_over(body, cap);
    wbuf_puts(&b, "{\"model\":\"");
    wbuf_put_json_escaped(&b, (slice){model, model_len});
    wbuf_puts(&b, "\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"");
    wbuf_put_json_escaped(&b, (slice){q, q_len});
    wbuf_puts(&b, "\"}]}");
    c->rq->body = body;
    c->rq->body_len = b.len;
    start_resumable(c, up);
}

/* DELETE /streams/TOKEN: the page's Stop, for a stream that would otherwise
 * wait out its replay window for a client to come back. */
static void cancel_stream(client *c, slice token)
{
    if (!authenticate(c))
        return;
    if (resume_cancel(c->srv->resume, token, owner_of(c)) != 0) {
        reject(c, 404, "no such stream: it is unknown, expired, or not yours", "stream_not_found");
        return;
    }
    c->rq->record.status = 204;
    send_simple(c, 204, "application/json", (slice){NULL, 0}, !keeps_alive(c), NULL);
    request_finished(c, true);
}

/* The built-in page and its assets; 304 when the client's copy is current. */
static void answer_page(client *c, const page_asset *a)
{
    const http_header *inm = http_find_header(c->rq->http->headers, c->rq->http->header_count, SLICE_LIT("if-none-match"));
    int status = inm && page_not_modified(a, inm->value) ? 304 : 200;
    char extra[PAGE_HEADERS_MAX + 1];
    wbuf b = wbuf_over(extra, PAGE_HEADERS_MAX);
    page_put_headers(&b, a);
    extra[b.len] = '\0';
    c->rq->record.status = status;
    send_simple(c, status, a->content_type, a->body, !keeps_alive(c), extra);
    request_finished(c, true);
}

/* Routes a request whose head (and body) arrived. */
static void dispatch(client *c)
{
    slice path = c->rq->http->path;
    http_method m = c->rq->http->method;
    bool get = m == HTTP_GET || m == HTTP_HEAD;
    c->rq->record.bytes_in = c->rq->http->head_len + c->rq->body_len;
    if (m == HTTP_OTHER) {
        /* TRACE would echo the upstream key back; CONNECT asks for a tunnel */
        static const char allow[] = "\r\nAllow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
        bool tunnel = slice_eq(c->rq->http->method_name, SLICE_LIT("CONNECT"));
        send_error_with(c, 405, "method not allowed", "invalid_request_error", "method_not_allowed",
                        tunnel || !keeps_alive(c), allow);
        request_finished(c, !tunnel);
        return;
    }
    if (is_v1(path)) {
        if (!authenticate(c))
            return;
        if (m == HTTP_POST && is_resumable(c))
            start_resumable(c, NULL);
        else
            start_relay(c);
        return;
    }
    if (slice_eq(path, SLICE_LIT("/chat/stream")) && get) {
        chat_stream(c);
        return;
    }
    if (slice_starts_with(path, SLICE_LIT("/streams/")) && m == HTTP_DELETE) {
        cancel_stream(c, (slice){path.ptr + 9, path.len - 9});
        return;
    }
    const page_asset *asset = page_find(path);
    if (asset && get)
        answer_page(c, asset);
    else if (asset)
        reject(c, 405, "method not allowed", "method_not_allowed");
    else if (slice_eq(path, SLICE_LIT("/metrics")) && get)
        answer_metrics(c);
    else if (slice_eq(path, SLICE_LIT("/ping")) && get)
        answer_json(c, 200, "{\"message\":\"pong\"}");
    else if (slice_eq(path, SLICE_LIT("/healthz")) && get)
        answer_json(c, 200, "{\"status\":\"ok\"}");
    else if (slice_eq(path, SLICE_LIT("/readyz")) && get) {
        server *s = c->srv;
        bool ready = s->ready && !s->draining && generation_has_available(s->gen, loop_now_ms(s->loop));
        answer_json(c, ready ? 200 : 503, ready ? "{\"status\":\"ready\"}" : "{\"status\":\"not ready\"}");
    }
    else if (slice_eq(path, SLICE_LIT("/ping")) || slice_eq(path, SLICE_LIT("/healthz")) ||
             slice_eq(path, SLICE_LIT("/readyz")) || slice_eq(path, SLICE_LIT("/metrics")))
        reject(c, 405, "method not allowed", "method_not_allowed");
    else
        reject(c, 404, "no such route", "not_found");
}

/* ---- reading requests ---- */

static int parse_error_status(http_parse_result r)
{
    switch (r) {
    case HTTP_PARSE_URI_TOO_LONG: return 414;
    case HTTP_PARSE_HEADERS_TOO_LARGE: return 431;
    case HTTP_PARSE_NOT_IMPLEMENTED: return 501;
    case HTTP_PARSE_BAD_VERSION: return 505;
    default: return 400;
    }
}

/* A framing error: answer and close, since what follows cannot be trusted. */
static void fail_and_close(client *c, int status, const char *message, const char *code)
{
    if (!c->in_request && !begin_request(c)) {
        client_close(c);
        return;
    }
    send_error(c, status, message, "invalid_request_error", code, true);
    c->reusable = false;
    c->request_done = true;
    loop_defer(c->srv->loop, &c->deferred, after_request, c);
    c->state = CLIENT_CLOSING;
}

static bool body_grow(client *c, size_t need)
{
    if (need <= c->rq->body_cap)
        return true;
    size_t cap = c->rq->body_cap ? c->rq->body_cap : 4096;
    while (cap < need)
        cap *= 2;
    if (cap > c->srv->cfg->max_body)
        cap = (size_t)c->srv->cfg->max_body;
    char *grown = arena_alloc(&c->rq->head_mem, cap ? cap : 1);
    if (!grown)
        return false;
    if (c->rq->body_len)
        memcpy(grown, c->rq->body, c->rq->body_len);
    c->rq->body = grown;
    c->rq->body_cap = cap;
    return true;
}

/* Moves body bytes from the input buffer; true when the body is complete.
 * A chunked body is decoded in place, then copied to the body buffer. */
static bool take_body(client *c)
{
    size_t avail = c->in_len - c->in_used;
    char *src = c->in + c->in_used;
    if (c->rq->http->body_kind == HTTP_BODY_LENGTH) {
        size_t want = (size_t)c->rq->http->content_length - c->rq->body_len;
        size_t take = avail < want ? avail : want;
        memcpy(c->rq->body + c->rq->body_len, src, take);
        c->rq->body_len += take;
        c->in_used += take;
        return c->rq->body_len == c->rq->http->content_length;
    }
    size_t used = 0, produced = 0;
    http_chunked_result r = http_chunked_decode(&c->rq->chunked, src, src, avail, &used, &produced);
    if (r == CHUNKED_ERROR) {
        fail_and_close(c, 400, "malformed chunked request body", "bad_chunked_body");
        return false;
    }
    if (c->rq->body_len + produced > c->srv->cfg->max_body) {
        fail_and_close(c, 413, "request body exceeds the maximum size", "body_too_large");
        return false;
    }
    if (!body_grow(c, c->rq->body_len + produced)) {
        fail_and_close(c, 503, "out of memory", "internal_error");
        return false;
    }
    if (produced) /* a chunked body has no buffer until its first payload byte */
        memcpy(c->rq->body + c->rq->body_len, src, produced);
    c->rq->body_len += produced;
    c->in_used += used;
    if (r == CHUNKED_DONE)
        return true;
    /* Drop the consumed bytes; the head stays, its slices point into it. */
    size_t rest = c->in_len - c->in_used;
    memmove(c->in + c->rq->http->head_len, c->in + c->in_used, rest);
    c->in_used = c->rq->http->head_len;
    c->in_len = c->in_used + rest;
    return false;
}

static void on_client_timer(void *ctx);

static void arm_timer(client *c, uint64_t ms) { loop_timer_arm(c->srv->loop, &c->timer, ms, on_client_timer, c); }

/* ---- streamed uploads (§4) ---- */

/* JSON bodies are read whole and inspected; anything else streams up. */
static bool body_is_json(const http_request *req)
{
    const http_header *h = http_request_field(req, HTTP_FIELD_CONTENT_TYPE);
    return !h || (h->value.len >= 16 && slice_eq_nocase((slice){h->value.ptr, 16}, SLICE_LIT("application/json")));
}

/* The body's bytes, pending and raw, move down to follow the head, so the
 * input buffer has room again (the head's slices stay valid). */
static void compact_upload(client *c)
{
    size_t head = c->rq->http->head_len;
    if (c->in_used <= head)
        return;
    memmove(c->in + head, c->in + c->in_used, c->in_len - c->in_used);
    c->in_len -= c->in_used - head;
    c->in_used = head;
}

static void upload_failed(client *c, int status, const char *message, const char *code)
{
    server *s = c->srv;
    if (c->rq->record.status && c->rq->record.status != 499) { /* the answer is under way: only closing says it */
        client_close(c);
        return;
    }
    if (c->relay) {
        relay_abort(c->relay);
        s->active_requests--;
        c->relay = NULL;
    }
    c->rq->record.error = NULL;
    fail_and_close(c, status, message, code);
}

/* Hands the client's body to the relay as far as it takes it: decoded
 * chunks or Content-Length bytes, checked against --max-upload. */
static void feed_upload_pass(client *c)
{
    const config *cfg = c->srv->cfg;
    while (c->relay && !c->up_done && c->fd >= 0) {
        if (c->rq->up_pending || c->rq->up_complete) {
            size_t taken = 0;
            bool all = relay_upload(c->relay, c->in + c->in_used, c->rq->up_pending, c->rq->up_complete, &taken);
            c->in_used += taken;
            c->rq->up_pending -= taken;
            if (!all)
                break; /* the relay asks again when it has room */
            if (c->rq->up_complete) {
                c->up_done = true;
                break;
            }
        }
        size_t avail = c->in_len - c->in_used;
        if (avail == 0)
            break;
        if (c->rq->http->body_kind == HTTP_BODY_LENGTH) {
            size_t take = avail < c->rq->up_remaining ? avail : (size_t)c->rq->up_remaining;
            c->rq->up_pending = take;
            c->rq->up_remaining -= take;
            c->rq->up_complete = c->rq->up_remaining == 0;
        } else {
            size_t used = 0, produced = 0;
            char *at = c->in + c->in_used;
            http_chunked_result r = http_chunked_decode(&c->rq->chunked, at, at, avail, &used, &produced);
            if (r == CHUNKED_ERROR) {
                upload_failed(c, 400, "malformed chunked request body", "bad_chunked_body");
                return;
            }
            /* decoded bytes now lie at `at`; the raw rest follows them */
            memmove(at + produced, at + used, avail - used);
            c->in_len -= used - produced;
            c->rq->up_pending = produced;
            c->rq->up_complete = r == CHUNKED_DONE;
            if (r == CHUNKED_MORE && used == 0)
                break; /* a chunk line not yet whole */
        }
        c->rq->up_total += c->rq->up_pending;
        if (c->rq->up_total > cfg->max_upload) {
            upload_failed(c, 413, "request body exceeds the maximum upload size", "body_too_large");
            return;
        }
    }
    if (c->fd >= 0)
        compact_upload(c);
}

/* relay_upload may write what it took at once and, the upstream having room,
 * ask for more (sink_upload_more) before it returns: that request waits until
 * this pass has counted what was taken, or the same bytes would go up twice. */
static void feed_upload(client *c)
{
    if (c->feeding) {
        c->feed_again = true;
        return;
    }
    c->feeding = true;
    do {
        c->feed_again = false;
        feed_upload_pass(c);
    } while (c->feed_again && c->rq && c->relay && c->fd >= 0);
    c->feeding = false;
}

static ssize_t read_some(client *c, char *dst, size_t room);

static void read_upload(client *c)
{
    compact_upload(c);
    if (c->in_len == IN_BUFFER) {
        update_interest(c); /* full: the relay's upload_more brings us back */
        return;
    }
    ssize_t n = read_some(c, c->in + c->in_len, IN_BUFFER - c->in_len);
    if (n <= 0)
        return;
    c->in_len += (size_t)n;
    c->rq->record.bytes_in += (uint64_t)n;
    feed_upload(c);
    update_interest(c);
}

/* A body that is not JSON: checked, then relayed while it arrives. */
static void start_upload(client *c)
{
    const config *cfg = c->srv->cfg;
    loop_timer_stop(c->srv->loop, &c->timer);
    if (c->rq->http->body_kind == HTTP_BODY_LENGTH && c->rq->http->content_length > cfg->max_upload) {
        fail_and_close(c, 413, "request body exceeds the maximum upload size", "body_too_large");
        return;
    }
    bool keep_alive = c->rq->http->keep_alive;
    c->rq->http->keep_alive = false; /* a refusal leaves the body unread: the connection closes after it */
    c->rq->record.bytes_in = c->rq->http->head_len;
    if (c->rq->http->method == HTTP_OTHER) {
        dispatch(c);
        return;
    }
    if (!authenticate(c))
        return;
    c->rq->http->keep_alive = keep_alive;
    c->uploading = true;
    c->rq->up_remaining = c->rq->http->content_length;
    c->rq->chunked = (http_chunked){0};
    start_relay(c);
    c->rq->record.bytes_in = c->rq->http->head_len + (c->in_len - c->in_used);
    if (!c->relay)
        return;
    arm_timer(c, cfg->request_timeout_ms);
    if (c->rq->http->expect_continue && c->in_len == c->in_used) {
        struct iovec cont = {(void *)"HTTP/1.1 100 Continue\r\n\r\n", 25};
        if (client_send(c, &cont, 1) != 0)
            return;
    }
    feed_upload(c);
    update_interest(c);
}

/* Parses and dispatches whatever complete requests the buffer holds. */
static void process_input(client *c)
{
    const config *cfg = c->srv->cfg;
    if (c->state == CLIENT_READING_HEAD) {
        if (c->in_len == 0) {
            /* Idle with nothing buffered: the input buffer waits in the
             * pool until the next request's first bytes. */
            pool_put(&c->srv->in_buffers, c->in);
            c->in = NULL;
            arm_timer(c, cfg->keepalive_timeout_ms);
            update_interest(c);
            return;
        }
        if (!c->in_request) {
            if (!begin_request(c)) {
                client_close(c);
                return;
            }
            arm_timer(c, cfg->header_timeout_ms);
        }
        http_parse_result r = http_parse_request(c->in, c->in_len, MAX_HEAD, MAX_TARGET, &c->scanned, c->rq->http);
        if (r == HTTP_PARSE_INCOMPLETE) {
            update_interest(c);
            return;
        }
        if (r != HTTP_PARSE_DONE) {
            fail_and_close(c, parse_error_status(r), c->rq->http->error, "bad_request");
            return;
        }
        make_request_id(c);
        c->in_used = c->rq->http->head_len;
        bool has_body = c->rq->http->body_kind == HTTP_BODY_CHUNKED ||
                        (c->rq->http->body_kind == HTTP_BODY_LENGTH && c->rq->http->content_length > 0);
        if (has_body && is_v1(c->rq->http->path) && !body_is_json(c->rq->http)) {
            start_upload(c);
            return;
        }
        if (c->rq->http->body_kind == HTTP_BODY_LENGTH && c->rq->http->content_length > cfg->max_body) {
            fail_and_close(c, 413, "request body exceeds the maximum size", "body_too_large");
            return;
        }
        if (c->rq->http->body_kind == HTTP_BODY_NONE || (c->rq->http->body_kind == HTTP_BODY_LENGTH && c->rq->http->content_length == 0)) {
            loop_timer_stop(c->srv->loop, &c->timer);
            dispatch(c);
            return;
        }
        c->rq->chunked = (http_chunked){0};
        size_t initial = c->rq->http->body_kind == HTTP_BODY_LENGTH ? (size_t)c->rq->http->content_length : 0;
        if (!body_grow(c, initial)) {
            fail_and_close(c, 503, "out of memory", "internal_error");
            return;
        }
        c->state = CLIENT_READING_BODY;
        arm_timer(c, cfg->request_timeout_ms);
        if (c->rq->http->expect_continue && c->in_len == c->in_used) {
            struct iovec cont = {(void *)"HTTP/1.1 100 Continue\r\n\r\n", 25};
            if (client_send(c, &cont, 1) != 0)
                return;
        }
    }
    if (c->state == CLIENT_READING_BODY && take_body(c)) {
        loop_timer_stop(c->srv->loop, &c->timer);
        dispatch(c);
        return;
    }
    update_interest(c);
}

static void update_interest(client *c)
{
    if (c->fd < 0)
        return;
    uint32_t ev = EPOLLRDHUP;
    /* EPOLLIN stays on while an answer is relayed (the next pipelined
     * request is stashed, a FIN noticed), so a request costs no epoll_ctl. */
    switch (c->state) {
    case CLIENT_READING_HEAD:
    case CLIENT_READING_BODY:
    case CLIENT_LINGERING:
        ev |= EPOLLIN;
        break;
    case CLIENT_RELAYING:
        if (c->in_len < IN_BUFFER)
            ev |= EPOLLIN;
        break;
    case CLIENT_CLOSING:
        break;
    }
    if (pending_out(c))
        ev |= EPOLLOUT;
    loop_io_set(c->srv->loop, &c->io, ev);
}

static void free_client(void *ctx) { free(ctx); }

static void maybe_finish_drain(server *s)
{
    if (s->draining && s->conn_count == 0)
        loop_stop(s->loop);
}

static void client_close(client *c)
{
    server *s = c->srv;
    if (c->fd < 0)
        return;
    if (c->reader) {
        resume_reader_gone(c->reader); /* the stream goes on for whoever comes back */
        c->reader = NULL;
    }
    if (c->relay && !c->request_done) {
        relay_abort(c->relay);
        s->active_requests--;
        c->relay = NULL;
    } else if (c->relay) {
        s->active_requests--;
        c->relay = NULL;
    }
    if (c->in_request) {
        if (!c->rq->record.status)
            c->rq->record.status = 499;
        log_request(c);
    }
    loop_timer_stop(s->loop, &c->timer);
    loop_io_del(s->loop, &c->io);
    close(c->fd);
    c->fd = -1;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->conn_count--;
    metrics_gauge_connections(s->metrics, -1);
    pool_put(&s->in_buffers, c->in);
    evbuf_release(&c->out_mem, &s->out_buffers);
    c->in = c->out = NULL;
    end_request(c);
    loop_defer(s->loop, &c->freeing, free_client, c);
    maybe_finish_drain(s);
}

static void on_client_timer(void *ctx)
{
    client *c = ctx;
    if (pending_out(c) && c->state == CLIENT_READING_HEAD && !c->in_request) {
        /* Still delivering the last answer: idle means not reading it. */
        arm_timer(c, c->srv->cfg->keepalive_timeout_ms);
        c->state = CLIENT_CLOSING;
        c->closing_after_write = true;
        return;
    }
    switch (c->state) {
    case CLIENT_READING_HEAD:
        if (!c->in_request) { /* idle keep-alive connection */
            client_close(c);
            return;
        }
        fail_and_close(c, 408, "timed out waiting for the request head", "request_timeout");
        arm_timer(c, 1000); /* give the 408 a moment to leave, no more */
        return;
    case CLIENT_READING_BODY:
        fail_and_close(c, 408, "timed out waiting for the request body", "request_timeout");
        arm_timer(c, 1000);
        return;
    case CLIENT_RELAYING:
    case CLIENT_CLOSING:
    case CLIENT_LINGERING:
        client_close(c); /* a client that will not read its answer, or will not close */
        return;
    }
}

/* Closing at once while request bytes sit unread makes the kernel send an
 * RST, which can destroy the answer before the client reads it: shut our
 * side instead and drain the client until it closes, for LINGER_MS at most. */
static void close_gracefully(client *c)
{
    if (c->in_request)
        log_request(c);
    if (shutdown(c->fd, SHUT_WR) != 0) {
        client_close(c);
        return;
    }
    c->state = CLIENT_LINGERING;
    arm_timer(c, LINGER_MS);
    update_interest(c);
}

static void drain_lingering(client *c)
{
    char sink_buf[4096];
    for (int i = 0; i < 16; i++) { /* bounded per event; level-triggered brings us back */
        ssize_t n = read(c->fd, sink_buf, sizeof sink_buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0)
            break;
    }
    client_close(c);
}

/* One read: > 0 bytes; 0 when there is nothing now (EAGAIN) or the client
 * ended or failed, in which case the connection is already closed. */
static ssize_t read_some(client *c, char *dst, size_t room)
{
    ssize_t n;
    do
        n = read(c->fd, dst, room);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EAGAIN)
        return 0;
    if (n <= 0) {
        client_close(c);
        return 0;
    }
    return n;
}

static void read_input(client *c)
{
    char *dst;
    size_t room;
    bool direct = c->state == CLIENT_READING_BODY && c->rq->http->body_kind == HTTP_BODY_LENGTH && c->in_used == c->in_len;
    if (direct) { /* large bodies go straight to their buffer */
        dst = c->rq->body + c->rq->body_len;
        room = (size_t)c->rq->http->content_length - c->rq->body_len;
    } else {
        if (!c->in && !(c->in = pool_get(&c->srv->in_buffers))) {
            client_close(c);
            return;
        }
        dst = c->in + c->in_len;
        room = IN_BUFFER - c->in_len;
    }
    if (room == 0) {
        /* Only a head that outgrew every limit gets here; the parser says so. */
        process_input(c);
        return;
    }
    ssize_t n = read_some(c, dst, room);
    if (n <= 0)
        return;
    if (direct)
        c->rq->body_len += (size_t)n;
    else
        c->in_len += (size_t)n;
    if (direct && c->rq->body_len == c->rq->http->content_length) {
        loop_timer_stop(c->srv->loop, &c->timer);
        dispatch(c);
        return;
    }
    if (!direct)
        process_input(c);
}

/* Bytes that arrive while an answer is relayed: the next pipelined request,
 * kept for later; or the end of the client. */
static void stash_input(client *c)
{
    if (c->in_len == IN_BUFFER)
        return; /* a zero-byte read would look like the client's end */
    if (!c->in && !(c->in = pool_get(&c->srv->in_buffers))) { /* released with the request's head */
        client_close(c);
        return;
    }
    ssize_t n = read_some(c, c->in + c->in_len, IN_BUFFER - c->in_len);
    if (n <= 0)
        return;
    c->in_len += (size_t)n;
    if (c->in_len == IN_BUFFER)
        update_interest(c);
}

static void on_client_io(void *ctx, uint32_t events)
{
    client *c = ctx;
    if (events & (EPOLLERR | EPOLLHUP)) {
        client_close(c);
        return;
    }
    if (c->state == CLIENT_LINGERING) {
        drain_lingering(c);
        return;
    }
    /* The client half-closed or left: nothing it asked for is wanted any more. */
    if ((events & EPOLLRDHUP) && (c->state == CLIENT_RELAYING || c->state == CLIENT_CLOSING)) {
        client_close(c);
        return;
    }
    if (events & EPOLLOUT) {
        size_t before = pending_out(c);
        if (flush_out(c) != 0) {
            c->dead = true;
            client_close(c);
            return;
        }
        if (pending_out(c) == 0 && c->closing_after_write) {
            close_gracefully(c);
            return;
        }
        if (c->relay && !c->request_done && pending_out(c) < RELAY_CLIENT_HIGH_WATER)
            relay_resume(c->relay);
        else if (c->relay && !c->request_done && pending_out(c) < before)
            relay_client_progress(c->relay);
        if (c->reader && !c->request_done && pending_out(c) < RELAY_CLIENT_HIGH_WATER)
            resume_reader_drained(c->reader);
        update_interest(c);
    }
    if (!(events & (EPOLLIN | EPOLLRDHUP)))
        return;
    if (c->state == CLIENT_READING_HEAD || c->state == CLIENT_READING_BODY)
        read_input(c);
    else if (c->state == CLIENT_RELAYING && c->uploading && !c->up_done)
        read_upload(c);
    else if (c->state == CLIENT_RELAYING)
        stash_input(c);
}

/* ---- accepting ---- */

static void refuse(int fd)
{
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                               "Retry-After: 1\r\nConnection: close\r\nContent-Length: 105\r\n\r\n"
                               "{\"error\":{\"message\":\"too many connections\",\"type\":\"server_error\","
                               "\"param\":null,\"code\":\"over_capacity\"}}";
    ssize_t n = write(fd, busy, sizeof busy - 1);
    (void)n; /* best effort: the connection is refused either way */
    close(fd);
}

static void on_accept(void *ctx, uint32_t events)
{
    server *s = ctx;
    (void)events;
    for (int i = 0; i < ACCEPTS_PER_TICK; i++) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof peer;
        int fd = accept4(s->listen_fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or EMFILE and friends: retried on the next event */
        if (s->conn_count >= s->cfg->max_conns + REFUSAL_SLOTS || s->draining) {
            refuse(fd); /* past every slot: a best-effort 503 */
            continue;
        }
        bool over_capacity = s->conn_count >= s->cfg->max_conns;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* The input buffer comes with the first bytes (read_input): a
         * connection that sends nothing holds this struct alone. */
        client *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->srv = s;
        c->fd = fd;
        c->state = CLIENT_READING_HEAD;
        if (loop_io_add(s->loop, &c->io, fd, EPOLLIN | EPOLLRDHUP, on_client_io, c) != 0) {
            free(c);
            close(fd);
            continue;
        }
        c->next = s->clients;
        if (s->clients)
            s->clients->prev = c;
        s->clients = c;
        s->conn_count++;
        metrics_gauge_connections(s->metrics, 1);
        arm_timer(c, s->cfg->header_timeout_ms);
        if (over_capacity) {
            send_error(c, 503, "too many connections; try again shortly", "server_error", "over_capacity", true);
            c->state = CLIENT_CLOSING;
            c->closing_after_write = true;
            if (pending_out(c) == 0)
                close_gracefully(c);
        }
    }
}

/* "127.0.0.1:8080", "[::1]:8080", ":8080" */
static int bind_listener(server *s, const char *spec, const char **why)
{
    /* Several workers share the port; the kernel spreads connections. */
    int fd = netaddr_bind(spec, s->cfg->workers > 1, true, why);
    if (fd < 0)
        return -1;
    netaddr_local(fd, s->address, sizeof s->address);
    s->listen_fd = fd;
    return 0;
}

server *server_new(loop *l, const config *cfg, generation *gen, metrics *m, const char **why)
{
    server *s = calloc(1, sizeof *s);
    if (!s) {
        *why = "out of memory";
        return NULL;
    }
    s->loop = l;
    s->cfg = cfg;
    s->gen = gen;
    s->metrics = m;
    s->resume = resume_hub_new(l, cfg, m);
    if (!s->resume) {
        *why = "out of memory (or a --replay-buffer out of range)";
        free(s);
        return NULL;
    }
    s->listen_fd = -1;
    /* What is kept for reuse stays resident, so each pool follows demand
     * (pool_trim on trim_timer) over a small reserve: a steady load does no
     * malloc or mmap, an idle server after a burst holds little. The read
     * buffer is taken only while a read is handled, so few are in use. */
    s->in_buffers = (buffer_pool){.size = IN_BUFFER, .reserve = 8, .max_free = POOL_MAX_FREE, .mapped = true};
    s->out_buffers = (buffer_pool){.size = OUT_BUFFER, .reserve = 2, .max_free = POOL_MAX_FREE, .mapped = true};
    s->read_buffers =
        (buffer_pool){.size = RELAY_READ_BUFFER, .reserve = 4, .max_free = POOL_MAX_FREE, .mapped = true};
    s->requests = (buffer_pool){.size = REQUEST_PAGE, .reserve = 8, .max_free = POOL_MAX_FREE, .mapped = true};
    s->park_small = (buffer_pool){.size = 1024, .reserve = 64, .max_free = POOL_MAX_FREE};
    s->park_large = (buffer_pool){.size = 8192, .reserve = 16, .max_free = POOL_MAX_FREE, .mapped = true};
    s->env = (relay_env){.loop = l, .cfg = cfg, .read_buffers = &s->read_buffers,
                         .park = {&s->park_small, &s->park_large}, .metrics = m, .rng = &s->rng};
    if (getrandom(&s->id_state, sizeof s->id_state, 0) != (ssize_t)sizeof s->id_state)
        s->id_state = (uint64_t)getpid() * 0x9e3779b97f4a7c15u;
    retry_rng_seed(&s->rng, s->id_state ^ 0x5bd1e995u);
    if (bind_listener(s, cfg->listen, why) != 0 ||
        loop_io_add(l, &s->listen_io, s->listen_fd, EPOLLIN, on_accept, s) != 0) {
        if (s->listen_fd >= 0)
            close(s->listen_fd);
        free(s);
        return NULL;
    }
    return s;
}

const char *server_address(const server *s) { return s->address; }

void server_set_generation(server *s, generation *gen)
{
    generation *old = s->gen;
    s->gen = gen;
    generation_release(old); /* freed when the last request on it ends */
}

generation *server_generation(const server *s) { return s->gen; }

void server_set_ready(server *s, bool ready) { s->ready = ready; }

static void on_drain_deadline(void *ctx)
{
    server *s = ctx;
    log_message("warn", "drain deadline reached; closing remaining connections", NULL, 0);
    while (s->clients)
        client_close(s->clients);
    loop_stop(s->loop);
}

void server_drain(server *s)
{
    if (s->draining)
        return;
    s->draining = true;
    s->ready = false;
    if (s->listen_fd >= 0) {
        loop_io_del(s->loop, &s->listen_io);
        close(s->listen_fd);
        s->listen_fd = -1;
    }
    /* Idle connections go now; busy ones close after their answer. */
    client *c = s->clients;
    while (c) {
        client *next = c->next;
        if (c->state == CLIENT_READING_HEAD && !c->in_request)
            client_close(c);
        c = next;
    }
    loop_timer_arm(s->loop, &s->drain_timer, s->cfg->drain_timeout_ms, on_drain_deadline, s);
    maybe_finish_drain(s);
}

void server_free(server *s)
{
    if (!s)
        return;
    while (s->clients)
        client_close(s->clients);
    loop_timer_stop(s->loop, &s->drain_timer);
    loop_timer_stop(s->loop, &s->trim_timer);
    if (s->listen_fd >= 0) {
        loop_io_del(s->loop, &s->listen_io);
        close(s->listen_fd);
    }
    resume_hub_free(s->resume);
    generation_release(s->gen);
    s->gen = NULL;
    pool_drain(&s->in_buffers);
    pool_drain(&s->out_buffers);
    pool_drain(&s->read_buffers);
    pool_drain(&s->requests);
    pool_drain(&s->park_small);
    pool_drain(&s->park_large);
    free(s);
}
