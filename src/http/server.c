#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
#include "gateway/auth.h"
#include "gateway/json.h"
#include "gateway/keys.h"
#include "gateway/metrics.h"
#include "core/log.h"
#include "core/netaddr.h"
#include "gateway/relay.h"
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
    upstream_target *target;
    auth *auth;
    metrics *metrics;
    relay_env env;
    int listen_fd;
    loop_io listen_io;
    char address[80];
    bool ready, draining;
    size_t conn_count, active_requests;
    client *clients; /* all connections, for draining and shutdown */
    buffer_pool in_buffers, out_buffers, read_buffers;
    loop_timer drain_timer;
    uint64_t id_state;
};

struct client {
    server *srv;
    client *next, *prev;
    int fd;
    loop_io io;
    loop_timer timer;
    loop_deferred deferred, freeing;
    client_state state;
    char peer[64];

    char *in;
    size_t in_len, scanned;
    http_request req;
    arena arena;

    char *body;
    size_t body_len, body_cap;
    http_chunked chunked;

    char *out;
    size_t out_start, out_len;

    relay *relay;
    relay_request relay_req;
    access_record record;
    char req_id[REQ_ID_MAX + 1];
    char traceparent[TRACEPARENT_LEN + 1];
    auth_identity caller;
    bool has_caller;
    uint64_t started_ms;
    size_t in_used; /* bytes at the start of `in` that belong to this request */
    bool request_done, reusable, dead, closing_after_write, in_request;
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
    pool_put(&c->srv->out_buffers, c->out);
    c->out = NULL;
    return 0;
}

/* Queues what the socket did not take. */
static int queue_out(client *c, const struct iovec *iov, size_t count, size_t skip)
{
    if (!c->out) {
        c->out = pool_get(&c->srv->out_buffers);
        if (!c->out)
            return -1;
    }
    for (size_t i = 0; i < count; i++) {
        size_t len = iov[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        const char *p = (const char *)iov[i].iov_base + skip;
        len -= skip;
        skip = 0;
        if (len > OUT_BUFFER - c->out_len) {
            if (c->out_start == 0)
                return -1; /* the relay's high-water mark makes this unreachable */
            memmove(c->out, c->out + c->out_start, pending_out(c));
            c->out_len -= c->out_start;
            c->out_start = 0;
            if (len > OUT_BUFFER - c->out_len)
                return -1;
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
    if (c->req_id[0]) {
        wbuf_puts(&b, "\r\nX-Request-Id: ");
        wbuf_puts(&b, c->req_id);
    }
    if (extra)
        wbuf_puts(&b, extra);
    if (close)
        wbuf_puts(&b, "\r\nConnection: close");
    wbuf_puts(&b, "\r\n\r\n");
    bool head_only = c->in_request && c->req.method == HTTP_HEAD;
    struct iovec iov[2] = {{mem, b.len}, {(void *)body.ptr, head_only ? 0 : body.len}};
    if (client_send(c, iov, 2) == 0)
        c->record.bytes_out += b.len + iov[1].iov_len;
}

/* `extra`: more header lines, each "\r\nName: value". */
static void send_error_with(client *c, int status, const char *message, const char *type, const char *code,
                            bool close, const char *extra)
{
    char mem[1024];
    wbuf b = wbuf_over(mem, sizeof mem);
    json_write_error(&b, message, type, code);
    c->record.status = status;
    if (!c->record.error)
        c->record.error = message;
    send_simple(c, status, "application/json", wbuf_slice(&b), close,
                extra ? extra : status == 503 ? "\r\nRetry-After: 1" : NULL);
}

static void send_error(client *c, int status, const char *message, const char *type, const char *code, bool close)
{
    send_error_with(c, status, message, type, code, close, NULL);
}

/* ---- request bookkeeping ---- */

/* splitmix64 over a random seed: unique enough, no syscall per request */
static void put_random_hex(server *s, char *out, size_t digits)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < digits; i += 16) {
        uint64_t z = (s->id_state += 0x9e3779b97f4a7c15u);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
        z ^= z >> 31;
        for (size_t k = 0; k < 16 && i + k < digits; k++)
            out[i + k] = hex[(z >> (k * 4)) & 15];
    }
}

static void make_request_id(client *c)
{
    const http_header *h = http_find_header(c->req.headers, c->req.header_count, SLICE_LIT("x-request-id"));
    if (h && h->value.len > 0 && h->value.len <= REQ_ID_MAX) {
        bool clean = true;
        for (size_t i = 0; i < h->value.len; i++) {
            unsigned char ch = (unsigned char)h->value.ptr[i];
            clean &= ch > 0x20 && ch < 0x7f && ch != '"' && ch != '\\';
        }
        if (clean) {
            memcpy(c->req_id, h->value.ptr, h->value.len);
            c->req_id[h->value.len] = '\0';
            return;
        }
    }
    put_random_hex(c->srv, c->req_id, 32);
    c->req_id[32] = '\0';
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
    const http_header *h = http_find_header(c->req.headers, c->req.header_count, SLICE_LIT("traceparent"));
    if (h && h->value.len == TRACEPARENT_LEN && h->value.ptr[2] == '-' && h->value.ptr[35] == '-' &&
        h->value.ptr[52] == '-' && !slice_starts_with(h->value, SLICE_LIT("ff")) &&
        is_lower_hex((slice){h->value.ptr, 2}) && is_lower_hex((slice){h->value.ptr + 3, 32}) &&
        is_lower_hex((slice){h->value.ptr + 36, 16}) && is_lower_hex((slice){h->value.ptr + 53, 2})) {
        memcpy(c->traceparent, h->value.ptr, TRACEPARENT_LEN);
        c->traceparent[TRACEPARENT_LEN] = '\0';
        return;
    }
    memcpy(c->traceparent, "00-", 3);
    put_random_hex(c->srv, c->traceparent + 3, 32);
    c->traceparent[35] = '-';
    put_random_hex(c->srv, c->traceparent + 36, 16);
    memcpy(c->traceparent + 52, "-01", 4);
}

/* The end of a request, once: the caller's tokens and stream slot, the
 * metrics, the log line. */
static void log_request(client *c)
{
    if (!c->in_request)
        return;
    server *s = c->srv;
    access_record *r = &c->record;
    uint64_t now_ms = loop_now_ms(s->loop);
    r->req_id = slice_of(c->req_id);
    r->method = c->req.method_name;
    r->path = c->req.path;
    r->client = c->has_caller ? slice_of(c->caller.name) : SLICE_LIT("anonymous");
    r->dur_ms = now_ms - c->started_ms;
    uint64_t tokens = r->prompt_tokens + r->completion_tokens;
    if (c->has_caller) {
        auth_identity *who = &c->caller;
        if (who->state) {
            limits_charge_tokens(who->state, &who->spec, now_ms * 1000, tokens);
            if (c->relay_req.holds_stream)
                limits_stream_ended(who->state);
        }
        if (tokens)
            metrics_tokens(s->metrics, who->metrics_id, r->prompt_tokens, r->completion_tokens);
        auth_release(s->auth, who);
        c->has_caller = false;
    } else if (tokens) {
        metrics_tokens(s->metrics, metrics_client(s->metrics, r->client), r->prompt_tokens, r->completion_tokens);
    }
    c->relay_req.holds_stream = false;
    metrics_request(s->metrics, metrics_route_of(r->path), r->status, r->dur_ms * 1000);
    log_access(r);
    c->in_request = false;
}

static void begin_request(client *c)
{
    c->in_request = true;
    c->started_ms = loop_now_ms(c->srv->loop);
    memset(&c->record, 0, sizeof c->record);
    c->record.ttfb_ms = -1;
    c->req_id[0] = '\0';
    c->relay_req.holds_stream = false;
}

/* Forgets the finished request; keeps pipelined bytes that follow it. */
static void reset_request(client *c, size_t consumed)
{
    if (consumed < c->in_len)
        memmove(c->in, c->in + consumed, c->in_len - consumed);
    c->in_len -= consumed;
    c->scanned = 0;
    arena_reset(&c->arena);
    c->body = NULL;
    c->body_len = c->body_cap = 0;
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
    c->reusable = reusable && c->req.keep_alive;
    loop_defer(c->srv->loop, &c->deferred, after_request, c);
}

/* ---- the relay's view of this client ---- */

static int sink_send(void *ctx, const struct iovec *iov, size_t count) { return client_send(ctx, iov, count); }

static size_t sink_pending(void *ctx) { return pending_out(ctx); }

static void sink_error(void *ctx, int status, const char *message, const char *type, const char *code,
                       const char *extra)
{
    client *c = ctx;
    send_error_with(c, status, message, type, code, !c->req.keep_alive, extra);
    request_finished(c, true);
}

static void sink_finished(void *ctx, bool reusable) { request_finished(ctx, reusable); }

static const relay_sink sink = {sink_send, sink_pending, sink_error, sink_finished};

/* ---- routing ---- */

static void answer_json(client *c, int status, const char *json)
{
    c->record.status = status;
    send_simple(c, status, "application/json", slice_of(json), !c->req.keep_alive, NULL);
    request_finished(c, true);
}

static void reject(client *c, int status, const char *message, const char *code)
{
    send_error(c, status, message, "invalid_request_error", code, !c->req.keep_alive);
    request_finished(c, true);
}

static void start_relay(client *c)
{
    server *s = c->srv;
    c->state = CLIENT_RELAYING;
    make_traceparent(c);
    c->relay_req = (relay_request){.http = &c->req,
                                   .body = c->body,
                                   .body_len = c->body_len,
                                   .req_id = slice_of(c->req_id),
                                   .traceparent = slice_of(c->traceparent),
                                   .caller = c->has_caller ? &c->caller : NULL,
                                   .record = &c->record};
    c->record.bytes_in = c->req.head_len + c->body_len;
    s->active_requests++;
    c->relay = relay_start(&s->env, &c->arena, &c->relay_req, &sink, c);
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

/* §3: who is asking. False after answering 401 (or 503). */
static bool authenticate(client *c)
{
    server *s = c->srv;
    if (!auth_required(s->auth))
        return true;
    const char *why = NULL;
    auth_status st = auth_check(s->auth, c->req.headers, c->req.header_count, unix_now_ms(), &c->caller, &why);
    if (st == AUTH_OK) {
        c->has_caller = true;
        return true;
    }
    c->record.bytes_in = c->req.head_len + c->body_len;
    if (st == AUTH_BUSY) {
        send_error(c, 503, why, "server_error", "over_capacity", !c->req.keep_alive);
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
    c->record.error = token ? "invalid token" : st == AUTH_MISSING ? "missing API key" : "invalid API key";
    send_error_with(c, 401, msg, "invalid_request_error", token ? "invalid_token" : "invalid_api_key",
                    !c->req.keep_alive,
                    token ? "\r\nWWW-Authenticate: Bearer realm=\"ssegate\", error=\"invalid_token\""
                          : "\r\nWWW-Authenticate: Bearer realm=\"ssegate\"");
    request_finished(c, true);
    return false;
}

/* /metrics, behind a bearer token when one is configured (§8). */
static void answer_metrics(client *c)
{
    server *s = c->srv;
    const config *cfg = s->cfg;
    if (cfg->metrics_token) {
        bool malformed;
        slice given = auth_credential(c->req.headers, c->req.header_count, &malformed);
        unsigned char want[KEY_DIGEST_LEN], got[KEY_DIGEST_LEN];
        key_digest(slice_of(cfg->metrics_token), want);
        key_digest(given, got);
        if (malformed || !digest_equal(want, got, sizeof want)) {
            send_error_with(c, 401, "/metrics needs 'Authorization: Bearer <metrics token>'",
                            "invalid_request_error", "invalid_api_key", !c->req.keep_alive,
                            "\r\nWWW-Authenticate: Bearer realm=\"ssegate metrics\"");
            request_finished(c, true);
            return;
        }
    }
    c->record.status = 200;
    send_simple(c, 200, "text/plain; version=0.0.4; charset=utf-8", metrics_render(s->metrics), !c->req.keep_alive,
                NULL);
    request_finished(c, true);
}

/* Routes a request whose head (and body) arrived. */
static void route(client *c)
{
    slice path = c->req.path;
    http_method m = c->req.method;
    bool get = m == HTTP_GET || m == HTTP_HEAD;
    c->record.bytes_in = c->req.head_len + c->body_len;
    if (m == HTTP_OTHER) {
        /* TRACE would echo the upstream key back; CONNECT asks for a tunnel */
        static const char allow[] = "\r\nAllow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
        bool tunnel = slice_eq(c->req.method_name, SLICE_LIT("CONNECT"));
        send_error_with(c, 405, "method not allowed", "invalid_request_error", "method_not_allowed",
                        tunnel || !c->req.keep_alive, allow);
        request_finished(c, !tunnel);
        return;
    }
    if (is_v1(path)) {
        if (authenticate(c))
            start_relay(c);
        return;
    }
    if (slice_eq(path, SLICE_LIT("/metrics")) && get)
        answer_metrics(c);
    else if (slice_eq(path, SLICE_LIT("/ping")) && get)
        answer_json(c, 200, "{\"message\":\"pong\"}");
    else if (slice_eq(path, SLICE_LIT("/healthz")) && get)
        answer_json(c, 200, "{\"status\":\"ok\"}");
    else if (slice_eq(path, SLICE_LIT("/readyz")) && get)
        answer_json(c, c->srv->ready && !c->srv->draining ? 200 : 503,
                    c->srv->ready && !c->srv->draining ? "{\"status\":\"ready\"}" : "{\"status\":\"not ready\"}");
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
    if (!c->in_request)
        begin_request(c);
    send_error(c, status, message, "invalid_request_error", code, true);
    c->reusable = false;
    c->request_done = true;
    loop_defer(c->srv->loop, &c->deferred, after_request, c);
    c->state = CLIENT_CLOSING;
}

static bool body_grow(client *c, size_t need)
{
    if (need <= c->body_cap)
        return true;
    size_t cap = c->body_cap ? c->body_cap : 4096;
    while (cap < need)
        cap *= 2;
    if (cap > c->srv->cfg->max_body)
        cap = (size_t)c->srv->cfg->max_body;
    char *grown = arena_alloc(&c->arena, cap ? cap : 1);
    if (!grown)
        return false;
    if (c->body_len)
        memcpy(grown, c->body, c->body_len);
    c->body = grown;
    c->body_cap = cap;
    return true;
}

/* Moves body bytes from the input buffer; true when the body is complete.
 * A chunked body is decoded in place, then copied to the body buffer. */
static bool take_body(client *c)
{
    size_t avail = c->in_len - c->in_used;
    char *src = c->in + c->in_used;
    if (c->req.body_kind == HTTP_BODY_LENGTH) {
        size_t want = (size_t)c->req.content_length - c->body_len;
        size_t take = avail < want ? avail : want;
        memcpy(c->body + c->body_len, src, take);
        c->body_len += take;
        c->in_used += take;
        return c->body_len == c->req.content_length;
    }
    size_t used = 0, produced = 0;
    http_chunked_result r = http_chunked_decode(&c->chunked, src, src, avail, &used, &produced);
    if (r == CHUNKED_ERROR) {
        fail_and_close(c, 400, "malformed chunked request body", "bad_chunked_body");
        return false;
    }
    if (c->body_len + produced > c->srv->cfg->max_body) {
        fail_and_close(c, 413, "request body exceeds the maximum size", "body_too_large");
        return false;
    }
    if (!body_grow(c, c->body_len + produced)) {
        fail_and_close(c, 503, "out of memory", "internal_error");
        return false;
    }
    if (produced) /* a chunked body has no buffer until its first payload byte */
        memcpy(c->body + c->body_len, src, produced);
    c->body_len += produced;
    c->in_used += used;
    if (r == CHUNKED_DONE)
        return true;
    /* Drop the consumed bytes; the head stays, its slices point into it. */
    size_t rest = c->in_len - c->in_used;
    memmove(c->in + c->req.head_len, c->in + c->in_used, rest);
    c->in_used = c->req.head_len;
    c->in_len = c->in_used + rest;
    return false;
}

static void on_client_timer(void *ctx);

static void arm_timer(client *c, uint64_t ms) { loop_timer_arm(c->srv->loop, &c->timer, ms, on_client_timer, c); }

/* Parses and dispatches whatever complete requests the buffer holds. */
static void process_input(client *c)
{
    const config *cfg = c->srv->cfg;
    if (c->state == CLIENT_READING_HEAD) {
        if (c->in_len == 0) {
            arm_timer(c, cfg->keepalive_timeout_ms);
            update_interest(c);
            return;
        }
        if (!c->in_request) {
            begin_request(c);
            arm_timer(c, cfg->header_timeout_ms);
        }
        http_parse_result r = http_parse_request(c->in, c->in_len, MAX_HEAD, MAX_TARGET, &c->scanned, &c->req);
        if (r == HTTP_PARSE_INCOMPLETE) {
            update_interest(c);
            return;
        }
        if (r != HTTP_PARSE_DONE) {
            fail_and_close(c, parse_error_status(r), c->req.error, "bad_request");
            return;
        }
        make_request_id(c);
        c->in_used = c->req.head_len;
        if (c->req.body_kind == HTTP_BODY_LENGTH && c->req.content_length > cfg->max_body) {
            fail_and_close(c, 413, "request body exceeds the maximum size", "body_too_large");
            return;
        }
        if (c->req.body_kind == HTTP_BODY_NONE || (c->req.body_kind == HTTP_BODY_LENGTH && c->req.content_length == 0)) {
            loop_timer_stop(c->srv->loop, &c->timer);
            route(c);
            return;
        }
        c->chunked = (http_chunked){0};
        size_t initial = c->req.body_kind == HTTP_BODY_LENGTH ? (size_t)c->req.content_length : 0;
        if (!body_grow(c, initial)) {
            fail_and_close(c, 503, "out of memory", "internal_error");
            return;
        }
        c->state = CLIENT_READING_BODY;
        arm_timer(c, cfg->request_timeout_ms);
        if (c->req.expect_continue && c->in_len == c->in_used) {
            struct iovec cont = {(void *)"HTTP/1.1 100 Continue\r\n\r\n", 25};
            if (client_send(c, &cont, 1) != 0)
                return;
        }
    }
    if (c->state == CLIENT_READING_BODY && take_body(c)) {
        loop_timer_stop(c->srv->loop, &c->timer);
        route(c);
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
    if (c->relay && !c->request_done) {
        relay_abort(c->relay);
        s->active_requests--;
        c->relay = NULL;
    } else if (c->relay) {
        s->active_requests--;
        c->relay = NULL;
    }
    if (c->in_request) {
        if (!c->record.status)
            c->record.status = 499;
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
    pool_put(&s->out_buffers, c->out);
    c->in = c->out = NULL;
    arena_reset(&c->arena);
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
    bool direct = c->state == CLIENT_READING_BODY && c->req.body_kind == HTTP_BODY_LENGTH && c->in_used == c->in_len;
    if (direct) { /* large bodies go straight to their buffer */
        dst = c->body + c->body_len;
        room = (size_t)c->req.content_length - c->body_len;
    } else {
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
        c->body_len += (size_t)n;
    else
        c->in_len += (size_t)n;
    if (direct && c->body_len == c->req.content_length) {
        loop_timer_stop(c->srv->loop, &c->timer);
        route(c);
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
        update_interest(c);
    }
    if (!(events & (EPOLLIN | EPOLLRDHUP)))
        return;
    if (c->state == CLIENT_READING_HEAD || c->state == CLIENT_READING_BODY)
        read_input(c);
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
        client *c = calloc(1, sizeof *c);
        char *in = pool_get(&s->in_buffers);
        if (!c || !in) {
            free(c);
            pool_put(&s->in_buffers, in);
            close(fd);
            continue;
        }
        c->srv = s;
        c->fd = fd;
        c->in = in;
        arena_init(&c->arena);
        c->state = CLIENT_READING_HEAD;
        if (loop_io_add(s->loop, &c->io, fd, EPOLLIN | EPOLLRDHUP, on_client_io, c) != 0) {
            pool_put(&s->in_buffers, in);
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

server *server_new(loop *l, const config *cfg, upstream_target *target, auth *a, metrics *m, const char **why)
{
    server *s = calloc(1, sizeof *s);
    if (!s) {
        *why = "out of memory";
        return NULL;
    }
    s->loop = l;
    s->cfg = cfg;
    s->target = target;
    s->auth = a;
    s->metrics = m;
    s->listen_fd = -1;
    s->in_buffers = (buffer_pool){.size = IN_BUFFER, .max_free = 1024};
    s->out_buffers = (buffer_pool){.size = OUT_BUFFER, .max_free = 16};
    s->read_buffers = (buffer_pool){.size = RELAY_READ_BUFFER, .max_free = 256};
    s->env = (relay_env){.loop = l,
                         .cfg = cfg,
                         .target = target,
                         .read_buffers = &s->read_buffers,
                         .metrics = m,
                         .upstream_id = metrics_upstream(m, slice_of(target->name))};
    if (getrandom(&s->id_state, sizeof s->id_state, 0) != (ssize_t)sizeof s->id_state)
        s->id_state = (uint64_t)getpid() * 0x9e3779b97f4a7c15u;
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
    if (s->listen_fd >= 0) {
        loop_io_del(s->loop, &s->listen_io);
        close(s->listen_fd);
    }
    pool_drain(&s->in_buffers);
    pool_drain(&s->out_buffers);
    pool_drain(&s->read_buffers);
    free(s);
}
