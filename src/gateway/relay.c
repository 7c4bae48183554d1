#include "gateway/relay.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>

#include "gateway/json.h"
#include "gateway/scrub.h"
#include "upstream/retry.h"
#include "gateway/sse.h"
#include "core/wbuf.h"
#include "gateway/evbuf.h"
#include "gateway/relay_head.h"

typedef enum relay_state {
    RELAY_CONNECTING,
    RELAY_SENDING,
    RELAY_AWAIT_HEAD,
    RELAY_STREAM, /* text/event-stream answer, event by event */
    RELAY_BODY,   /* any other answer, passed through */
    RELAY_ERROR_BODY, /* an upstream error answer, held whole to be checked */
    RELAY_FINISHED
} relay_state;

#define EVENT_TOO_LARGE "upstream sent an event larger than --max-event"

enum { HEARTBEAT_MS = 15000, RESPONSE_HEAD_MAX = 16 * 1024 };

/* What a relay keeps of the answer's head. The parsed head with its
 * header array is the reactor's one scratch (head_scratch), valid while
 * the head is handled: a held stream does not carry 3 KiB of headers. */
typedef struct answer_facts {
    int status;
    size_t head_len;
    http_body_kind body_kind;
    uint64_t content_length;
    bool keep_alive;
} answer_facts;

static http_response head_scratch;

struct relay {
    relay_state state;
    const relay_env *env;
    arena *arena;
    relay_request *req;
    const relay_sink *sink;
    void *client;
    upstream_conn *up;
    json_request_info info;
    unsigned retries;
    bool fresh_only; /* skip the pool after a stale pooled connection */
    ssize_t last_read;

    /* where it goes: the route's plan, this attempt's upstream */
    route_plan plan;
    gw_upstream *u;
    bool on_upstream;         /* counted in u->def->active */
    bool judged;              /* this attempt reported to passive health */
    uint64_t t_connect, t_first, t_idle; /* this upstream's timeouts */
    loop_timer backoff;       /* the wait before the next attempt */
    int last_status;          /* the last failure, answered when the plan runs dry */
    const char *last_message, *last_code;
    json_edit model_edit;     /* an alias's model, spliced in place of the client's */
    gen_waiter waiter;        /* queued for a slot under max_conns */
    bool waiting;

    /* the request as sent upstream */
    struct iovec out[6];
    size_t out_count, out_index, out_offset;

    /* the answer */
    evbuf in;                 /* pooled; grows while one event is longer than a pooled buffer */
    char *buf;                /* == in.ptr */
    size_t len;               /* bytes in buf */
    size_t dec_start, dec_end;/* decoded body bytes not yet relayed */
    size_t raw_start;         /* first byte not yet decoded */
    answer_facts res;
    const http_response *head; /* head_scratch, while the head is handled */
    http_chunked chunked;
    uint64_t body_left;       /* Content-Length still to come */
    bool body_complete, upstream_reusable, head_sent, saw_done, client_wants_usage;
    bool terminated; /* the client's chunked body has its last chunk */
    bool first_event_sent; /* the answer's first event is out, in a write of its own */
    bool client_chunked; /* HTTP/1.1 client: chunked bodies; else close-delimited */
    /* what the relay needs of the client's request once its head is gone
     * (the server releases it when the answer's first byte went out) */
    bool client_keep_alive, client_head_method, models_path, up_chunked;
    sse_parser sse;
    slice client_head;        /* response head waiting to go out with the first bytes */
    secrets secrets;          /* masked in whatever the upstream echoes */
    limit_verdict verdict;    /* the caller's limits, for the answer's x-ratelimit-* headers */
    bool limited;             /* the caller has limits: ours replace the upstream's headers */
    bool usage_seen, streaming, settled;
    uint64_t content_deltas;  /* the completion's size when no usage arrives */
    bool retain;              /* keep a JSON answer whole in buf, to read its usage at the end */
    size_t body_start;

    /* a body that is not JSON, streamed up as it arrives (§4) */
    char *up_buf;             /* framed body bytes waiting for the upstream socket */
    size_t up_len, up_off;
    bool uploading;           /* the client's body is still going up */
    bool up_last;             /* the body's end is in up_buf */
    bool up_started;          /* a body byte went up: no retry may repeat the request */
    bool up_wanted;           /* the server holds bytes we had no room for */
    bool up_cut;              /* the answer came before the body was all up */
    bool pumping;

    /* a tapped stream: the events go to req->tap, not to the client */
    bool tapped, tap_full;
    slice ev_content;         /* what inspect_event_in found in the event */
    bool ev_error;

    loop_timer phase_timer;   /* first byte, then idle between chunks */
    loop_timer deadline;      /* the whole request */
    loop_timer heartbeat;     /* `: keep-alive` while the upstream is silent */
    uint64_t started_ms;
};

static void finish(relay *r, bool client_reusable);
static void retry_or_fail(relay *r, int status, const char *message, const char *code);

/* ---- small helpers ---- */

static uint64_t now(const relay *r) { return loop_now_ms(r->env->loop); }

static void stop_waiting(relay *r);

static void stop_timers(relay *r)
{
    loop *l = r->env->loop;
    stop_waiting(r);
    loop_timer_stop(l, &r->phase_timer);
    loop_timer_stop(l, &r->deadline);
    loop_timer_stop(l, &r->heartbeat);
    loop_timer_stop(l, &r->backoff);
}

/* Passive health: this attempt's verdict on its upstream, once. */
static void judge_upstream(relay *r, bool ok)
{
    if (!r->on_upstream || r->judged)
        return;
    r->judged = true;
    upstream_def *d = r->u->def;
    uint64_t t = now(r), until = d->health.until_ms;
    upstream_health_report(d, ok, t);
    if (d->health.until_ms > until && d->health.until_ms > t)
        metrics_upstream_ejection(r->env->metrics, r->u->metrics_id);
}

/* Leaves this attempt's upstream: its slot under max_conns; a half-open
 * probe that got no verdict (the client left) is given back. */
static void leave_upstream(relay *r)
{
    if (!r->on_upstream)
        return;
    upstream_def *d = r->u->def;
    r->on_upstream = false;
    if (d->active)
        d->active--;
    if (!r->judged)
        upstream_probe_cancel(d);
    r->judged = false;
    if (d->max_conns)
        generation_wake_one(r->req->gen); /* a slot freed */
}

static void stop_waiting(relay *r)
{
    if (r->waiting) {
        generation_unwait(r->req->gen, &r->waiter);
        r->waiting = false;
    }
}

/* The connection and buffers, not the upstream: a stale pooled connection
 * is replaced on the same upstream. */
static void release_conn(relay *r, bool reusable)
{
    if (r->up) {
        upstream_release(r->up, reusable);
        r->up = NULL;
    }
    evbuf_release(&r->in, r->env->read_buffers);
    r->buf = NULL;
    if (r->up_buf && !r->uploading) {
        pool_put(r->env->read_buffers, r->up_buf);
        r->up_buf = NULL;
    }
}

static void release_upstream(relay *r, bool reusable)
{
    release_conn(r, reusable);
    leave_upstream(r);
}

/* Once per request: the completion's size (reported, or counted from the
 * content deltas relayed when no usage came) and the stream gauge. */
static void settle(relay *r)
{
    if (r->settled)
        return;
    r->settled = true;
    if (!r->usage_seen && r->content_deltas)
        r->req->record->completion_tokens = r->content_deltas;
    if (r->streaming) {
        metrics_gauge_streams(r->env->metrics, -1);
        metrics_chunks(r->env->metrics, r->req->record->chunks);
    }
}

/* The upstream's share of a failure, for ssegate_upstream_errors_total;
 * false when the failure is not the upstream's. */
static bool count_upstream_error(relay *r, const char *code)
{
    static const struct {
        const char *code;
        metrics_upstream_error_kind kind;
    } kinds[] = {{"upstream_connect_error", UPERR_CONNECT},   {"upstream_connect_timeout", UPERR_TIMEOUT},
                 {"upstream_timeout", UPERR_TIMEOUT},         {"request_timeout", UPERR_TIMEOUT},
                 {"upstream_tls_error", UPERR_TLS},           {"upstream_protocol_error", UPERR_PROTOCOL},
                 {"upstream_closed", UPERR_PROTOCOL},         {"upstream_io_error", UPERR_PROTOCOL},
                 {"upstream_auth_error", UPERR_AUTH},         {"upstream_dns_error", UPERR_DNS}};
    for (size_t i = 0; code && i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(code, kinds[i].code) == 0) {
            if (r->u)
                metrics_upstream_error(r->env->metrics, r->u->metrics_id, kinds[i].kind);
            return true;
        }
    return false;
}

static void record_error(relay *r, const char *message)
{
    if (!r->req->record->error)
        r->req->record->error = arena_strndup(r->arena, message, strlen(message));
}

/* Before any byte of the answer went out: a §6 error answer. */
static void fail_before_answer(relay *r, int status, const char *message, const char *code)
{
    record_error(r, message);
    r->req->record->status = status;
    stop_timers(r);
    r->uploading = false;
    release_upstream(r, false);
    r->state = RELAY_FINISHED;
    settle(r);
    r->sink->error(r->client, status, message, status == 504 ? "timeout_error" : "upstream_error", code, NULL);
}

static int send_iov(relay *r, const struct iovec *iov, size_t count)
{
    if (r->sink->send(r->client, iov, count) != 0)
        return -1;
    for (size_t i = 0; i < count; i++)
        r->req->record->bytes_out += iov[i].iov_len;
    return 0;
}

/* After the 200 went out on a stream: an error event and a proper end. */
static void fail_stream(relay *r, const char *message, const char *code)
{
    record_error(r, message);
    if (r->tapped) {
        stop_timers(r);
        release_upstream(r, false);
        r->req->tap->ended(r->req->tap_ctx, message, code);
        finish(r, true);
        return;
    }
    char mem[1024];
    wbuf b = wbuf_over(mem, sizeof mem);
    wbuf_puts(&b, "data: ");
    json_write_error(&b, message, "upstream_error", code);
    wbuf_puts(&b, "\n\n");
    sse_frame f;
    sse_frame_begin(&f, r->head_sent ? (slice){NULL, 0} : r->client_head, r->client_chunked);
    r->head_sent = true;
    sse_frame_add(&f, wbuf_slice(&b));
    sse_frame_end(&f);
    sse_frame_last(&f);
    stop_timers(r);
    release_upstream(r, false);
    bool ok = send_iov(r, f.iov, f.count) == 0;
    finish(r, ok && r->client_chunked); /* close-delimited: the close ends it */
}

/* Upstream failed: answer as the phase allows. */
static void fail(relay *r, int status, const char *message, const char *code)
{
    if (r->state == RELAY_FINISHED)
        return;
    if (count_upstream_error(r, code))
        judge_upstream(r, false);
    if (!r->head_sent) {
        fail_before_answer(r, status, message, code);
    } else if (r->state == RELAY_STREAM) {
        fail_stream(r, message, code);
    } else {
        /* A plain body cut short: only closing the connection says so. */
        record_error(r, message);
        stop_timers(r);
        release_upstream(r, false);
        finish(r, false);
    }
}

static void finish(relay *r, bool client_reusable)
{
    if (r->state == RELAY_FINISHED)
        return;
    r->state = RELAY_FINISHED;
    stop_timers(r);
    r->uploading = false;
    release_upstream(r, r->upstream_reusable && !r->up_cut);
    settle(r);
    r->sink->finished(r->client, client_reusable);
}

/* ---- timers ---- */

static void on_phase_timeout(void *ctx)
{
    relay *r = ctx;
    if ((r->state == RELAY_STREAM || r->state == RELAY_BODY) &&
        r->sink->pending(r->client) >= RELAY_CLIENT_HIGH_WATER) {
        /* Not the upstream's silence: the client stopped reading. */
        record_error(r, "client stopped reading its answer");
        stop_timers(r);
        release_upstream(r, false);
        finish(r, false);
        return;
    }
    if (r->state == RELAY_SENDING)
        retry_or_fail(r, 504, "upstream connect timed out (TLS handshake or sending the request)",
                      "upstream_connect_timeout");
    else if (r->state == RELAY_AWAIT_HEAD && r->uploading)
        fail(r, 504, "upstream stopped taking the request body", "upstream_timeout");
    else if (r->state == RELAY_AWAIT_HEAD)
        fail(r, 504, "upstream did not answer within the first-byte timeout", "upstream_timeout");
    else
        fail(r, 504, "upstream went silent for longer than the idle timeout", "upstream_timeout");
}

static void on_deadline(void *ctx)
{
    fail(ctx, 504, "request exceeded the request timeout", "request_timeout");
}

static void on_heartbeat(void *ctx)
{
    relay *r = ctx;
    if (r->tapped)
        return; /* a tapped stream has no client of its own */
    static const char beat[] = "e\r\n: keep-alive\n\n\r\n";
    /* without chunked framing, the comment alone */
    struct iovec iov = r->client_chunked ? (struct iovec){(void *)beat, sizeof beat - 1}
                                         : (struct iovec){(void *)(beat + 3), sizeof beat - 6};
    if (send_iov(r, &iov, 1) != 0)
        return;
    loop_timer_arm(r->env->loop, &r->heartbeat, HEARTBEAT_MS, on_heartbeat, r);
}

/* ---- building the upstream request ---- */

static int build_request(relay *r)
{
    const upstream_def *d = r->u->def;
    const config *cfg = r->env->cfg;
    /* the body's edits, in order: an alias's model, the usage switch */
    const json_edit *edits[2] = {&r->model_edit, &r->info.usage_edit};
    if (edits[0]->active && edits[1]->active && edits[1]->at < edits[0]->at) {
        edits[0] = &r->info.usage_edit;
        edits[1] = &r->model_edit;
    }
    size_t body_len = r->req->body_len;
    for (size_t i = 0; i < 2; i++)
        if (edits[i]->active)
            body_len = body_len - edits[i]->remove + edits[i]->insert.len;
    request_head_spec spec = {.http = r->req->http,
                              .target = &r->u->target,
                              .org = d->org ? d->org : cfg->upstream_org,
                              .project = d->project ? d->project : cfg->upstream_project,
                              .traceparent = r->req->traceparent,
                              .req_id = r->req->req_id,
                              .upload = r->req->upload,
                              .body_len = body_len};
    size_t cap = relay_request_head_room(&spec);
    char *mem = arena_alloc(r->arena, cap);
    if (!mem)
        return -1;
    wbuf b = wbuf_over(mem, cap);
    if (!relay_write_request_head(&b, &spec))
        return -1;

    const char *body = r->req->body;
    r->out[0] = (struct iovec){mem, b.len};
    r->out_count = 1;
    size_t at = 0;
    for (size_t i = 0; i < 2; i++) {
        const json_edit *e = edits[i];
        if (!e->active)
            continue;
        r->out[r->out_count++] = (struct iovec){(void *)(body + at), e->at - at};
        r->out[r->out_count++] = (struct iovec){(void *)e->insert.ptr, e->insert.len};
        at = e->at + e->remove;
    }
    if (r->req->body_len > at)
        r->out[r->out_count++] = (struct iovec){(void *)(body + at), r->req->body_len - at};
    r->out_index = r->out_offset = 0;
    return 0;
}

/* ---- the client's answer head ---- */

static int build_client_head(relay *r, bool stream)
{
    answer_head_spec spec = {.head = r->head,
                             .status = r->res.status,
                             .body_kind = r->res.body_kind,
                             .content_length = r->res.content_length,
                             .stream = stream,
                             .head_method = r->client_head_method,
                             .client_chunked = r->client_chunked,
                             .keep_alive = r->client_keep_alive,
                             .req_id = r->req->req_id,
                             .limits = r->limited ? &r->verdict : NULL,
                             .secrets = &r->secrets};
    size_t cap = relay_answer_head_room(&spec);
    char *mem = arena_alloc(r->arena, cap);
    if (!mem)
        return -1;
    wbuf b = wbuf_over(mem, cap);
    if (!relay_write_answer_head(&b, &spec))
        return -1;
    r->client_head = wbuf_slice(&b);
    return 0;
}

/* ---- relaying the body ---- */

/* Decodes newly read bytes into the pending region; false on bad framing. */
static bool decode(relay *r)
{
    size_t raw = r->len - r->raw_start;
    if (r->res.body_kind == HTTP_BODY_CHUNKED) {
        size_t used = 0, produced = 0;
        http_chunked_result cr =
            http_chunked_decode(&r->chunked, r->buf + r->dec_end, r->buf + r->raw_start, raw, &used, &produced);
        r->raw_start += used;
        r->dec_end += produced;
        if (cr == CHUNKED_ERROR)
            return false;
        if (cr == CHUNKED_DONE)
            r->body_complete = true;
        return true;
    }
    if (r->res.body_kind == HTTP_BODY_LENGTH) {
        if (raw > r->body_left)
            raw = (size_t)r->body_left; /* bytes past the body are not ours */
        r->body_left -= raw;
        if (r->body_left == 0)
            r->body_complete = true;
    }
    r->raw_start += raw;
    r->dec_end += raw;
    return true;
}

static bool inspect_event_in(relay *r, const sse_event *ev);

/* Inspects one event; false when it should not reach the client. Scratch
 * memory for it goes back to the arena at once, so a long stream does not
 * grow its request's memory: a one-line event's (jsmn's tokens) inside
 * read_chunk, a multi-line one's joined data here. */
static bool inspect_event(relay *r, const sse_event *ev)
{
    if (ev->data_lines <= 1)
        return inspect_event_in(r, ev);
    arena_mark mark = arena_mark_now(r->arena);
    bool keep = inspect_event_in(r, ev);
    arena_rewind(r->arena, mark);
    return keep;
}

/* One chunk's JSON: the fast ways need no memory; the full path's tokens
 * are scratch (what it reads points into the data). */
static int read_chunk(relay *r, slice data, json_chunk_info *info)
{
    if (json_inspect_chunk_known(data.ptr, data.len, info))
        return 0;
    arena_mark mark = arena_mark_now(r->arena);
    int rc = json_inspect_chunk_full(data.ptr, data.len, r->arena, info);
    arena_rewind(r->arena, mark);
    return rc;
}

static bool inspect_event_in(relay *r, const sse_event *ev)
{
    access_record *rec = r->req->record;
    if (!ev->has_fields || ev->data_lines == 0)
        return ev->has_fields; /* comments are dropped; the heartbeat covers idle proxies */
    if (sse_is_done(ev)) {
        r->saw_done = true;
        return true;
    }
    r->ev_content = (slice){NULL, 0};
    r->ev_error = false;
    slice data = ev->data;
    if (ev->data_lines > 1) {
        size_t n = sse_join_data(ev->raw, NULL, 0);
        char *joined = arena_alloc(r->arena, n ? n : 1);
        if (!joined)
            return true;
        sse_join_data(ev->raw, joined, n);
        data = (slice){joined, n};
    }
    json_chunk_info info;
    if (read_chunk(r, data, &info) != 0) {
        /* not ours to judge: relay what the upstream said, less any secret */
        scrub((char *)ev->raw.ptr, ev->raw.len, &r->secrets);
        return true;
    }
    rec->chunks++;
    r->content_deltas += info.has_content;
    r->ev_content = info.content;
    r->ev_error = info.is_error;
    if (info.is_error)
        scrub((char *)ev->raw.ptr, ev->raw.len, &r->secrets); /* the event lies in our read buffer */
    if (info.has_usage) {
        r->usage_seen = true;
        rec->prompt_tokens = info.prompt_tokens;
        rec->completion_tokens = info.completion_tokens;
    }
    return !(info.usage_only && !r->client_wants_usage);
}

static int flush_frame(relay *r, sse_frame *f, bool last)
{
    sse_frame_end(f);
    if (last) {
        sse_frame_last(f);
        r->terminated = true;
    }
    if (f->count == 1 && f->iov[0].iov_len == 0)
        return 0;
    r->head_sent = true;
    return send_iov(r, f->iov, f->count);
}

/* Relays every complete event in the pending region, in one chunk; with
 * `last` the body's end goes in the same write. */
/* A tapped stream: each kept event to the tap. One it has no room for
 * stays in the buffer, uncounted, until relay_resume. */
static void tap_events(relay *r, bool at_eof)
{
    sse_event ev;
    access_record *rec = r->req->record;
    while (r->dec_start < r->dec_end || at_eof) {
        if (!sse_next_event(&r->sse, r->buf + r->dec_start, r->dec_end - r->dec_start, at_eof, &ev))
            break;
        uint64_t chunks = rec->chunks, deltas = r->content_deltas;
        arena_mark mark = arena_mark_now(r->arena);
        bool taken = true;
        if (inspect_event_in(r, &ev)) {
            relay_event out = {.raw = ev.raw, .content = r->ev_content, .done = sse_is_done(&ev),
                               .is_error = r->ev_error, .unterminated = ev.unterminated};
            taken = r->req->tap->event(r->req->tap_ctx, &out);
        }
        arena_rewind(r->arena, mark);
        if (!taken) { /* offered again later: count it then */
            rec->chunks = chunks;
            r->content_deltas = deltas;
            r->tap_full = true;
            return;
        }
        r->dec_start += ev.consumed;
        if (ev.unterminated)
            break;
    }
}

static int relay_events(relay *r, bool at_eof, bool last)
{
    if (r->tapped) {
        tap_events(r, at_eof);
        return 0;
    }
    sse_frame f;
    sse_frame_begin(&f, r->head_sent ? (slice){NULL, 0} : r->client_head, r->client_chunked);
    bool head_pending = !r->head_sent;
    sse_event ev;
    while (r->dec_start < r->dec_end || at_eof) {
        if (!sse_next_event(&r->sse, r->buf + r->dec_start, r->dec_end - r->dec_start, at_eof, &ev))
            break;
        if (ev.raw.len > r->env->cfg->max_event) { /* it came whole in one read */
            if (flush_frame(r, &f, false) == 0)
                fail(r, 502, EVENT_TOO_LARGE, "event_too_large");
            return -1;
        }
        if (inspect_event(r, &ev)) {
            if (!sse_frame_add(&f, ev.raw)) {
                if (flush_frame(r, &f, false) != 0)
                    return -1;
                sse_frame_begin(&f, (slice){NULL, 0}, r->client_chunked);
                sse_frame_add(&f, ev.raw);
            }
            if (ev.unterminated)
                sse_frame_add(&f, SLICE_LIT("\n\n"));
            /* The answer's first event goes out (with the head, if that
             * is still here) before the rest of the read is inspected:
             * the client's first token waits for no other. */
            if (!r->first_event_sent && f.payload) {
                r->first_event_sent = true;
                if (r->dec_start + ev.consumed < r->dec_end && !ev.unterminated) {
                    if (flush_frame(r, &f, false) != 0)
                        return -1;
                    head_pending = false;
                    sse_frame_begin(&f, (slice){NULL, 0}, r->client_chunked);
                }
            }
        }
        r->dec_start += ev.consumed;
        if (ev.unterminated)
            break;
    }
    /* The head goes out now even without an event: the client should see
     * its 200 as soon as the upstream sent one. */
    if (head_pending && f.payload == 0 && !last) {
        r->head_sent = true;
        return send_iov(r, f.iov, 1);
    }
    return flush_frame(r, &f, last);
}

static int relay_passthrough(relay *r, bool last)
{
    slice piece = {r->buf + r->dec_start, r->dec_end - r->dec_start};
    bool framed = r->client_chunked && r->res.body_kind != HTTP_BODY_LENGTH && !r->client_head_method;
    struct iovec iov[5];
    size_t n = 0;
    char size_line[18];
    if (!r->head_sent)
        iov[n++] = (struct iovec){(void *)r->client_head.ptr, r->client_head.len};
    r->head_sent = true;
    if (piece.len) {
        if (framed)
            iov[n++] = (struct iovec){size_line, http_chunk_header(size_line, piece.len)};
        iov[n++] = (struct iovec){(void *)piece.ptr, piece.len};
        if (framed)
            iov[n++] = (struct iovec){(void *)"\r\n", 2};
    }
    if (last && framed && r->res.body_kind != HTTP_BODY_NONE) {
        iov[n++] = (struct iovec){(void *)"0\r\n\r\n", 5};
        r->terminated = true;
    }
    r->dec_start = r->dec_end;
    r->req->record->chunks += piece.len ? 1 : 0;
    return n ? send_iov(r, iov, n) : 0;
}

/* Moves pending bytes to the front so the next read has room. */
static void compact(relay *r)
{
    if (r->retain) {
        if (r->len < RELAY_READ_BUFFER)
            return; /* room left: the answer stays whole for its usage */
        r->retain = false;
    }
    if (r->dec_start == r->dec_end && r->raw_start == r->len) {
        r->dec_start = r->dec_end = r->raw_start = r->len = 0;
        return;
    }
    if (r->dec_start == 0)
        return;
    size_t shift = r->dec_start;
    memmove(r->buf, r->buf + shift, r->len - shift);
    r->dec_start = 0;
    r->dec_end -= shift;
    r->raw_start -= shift;
    r->len -= shift;
}

static void end_of_answer(relay *r)
{
    if (r->tapped) {
        r->req->record->status = r->res.status;
        r->upstream_reusable = r->res.keep_alive && r->body_complete && r->raw_start == r->len;
        r->req->tap->ended(r->req->tap_ctx, NULL, NULL);
        finish(r, true);
        return;
    }
    bool stream = r->state == RELAY_STREAM;
    bool unsized = r->res.body_kind != HTTP_BODY_LENGTH && r->res.body_kind != HTTP_BODY_NONE &&
                   !r->client_head_method;
    r->upstream_reusable = r->res.keep_alive && r->body_complete && r->raw_start == r->len;
    if ((stream || unsized) && r->client_chunked && !r->terminated) {
        struct iovec end = {(void *)"0\r\n\r\n", 5};
        if (send_iov(r, &end, 1) != 0)
            return;
    }
    r->req->record->status = r->res.status;
    /* Without chunks, a body of unknown length ends by closing. */
    finish(r, r->client_keep_alive && (r->client_chunked || !(stream || unsized)));
}

/* Reads the usage of a JSON answer that stayed whole in buf. */
/* The first model of an upstream's /v1/models answer: /chat/stream's
 * default when its URL names none (§7). */
static void note_first_model(relay *r)
{
    slice body = {r->buf + r->body_start, r->dec_end - r->body_start};
    static const char key[] = "\"id\":\"";
    const char *at = memmem(body.ptr, body.len, key, sizeof key - 1);
    if (!at)
        return;
    const char *start = at + sizeof key - 1, *end = body.ptr + body.len;
    const char *close = memchr(start, '"', (size_t)(end - start));
    size_t n = close ? (size_t)(close - start) : 0;
    if (n == 0 || n >= sizeof r->req->gen->first_model || memchr(start, '\\', n))
        return; /* escaped names are left to the caller to spell */
    memcpy(r->req->gen->first_model, start, n);
    r->req->gen->first_model[n] = '\0';
}

static void read_answer_usage(relay *r)
{
    if (r->res.status == 200 && r->models_path)
        note_first_model(r);
    arena_mark mark = arena_mark_now(r->arena);
    json_chunk_info info;
    if (json_find_usage(r->buf + r->body_start, r->dec_end - r->body_start, r->arena, &info)) {
        r->usage_seen = true;
        r->req->record->prompt_tokens = info.prompt_tokens;
        r->req->record->completion_tokens = info.completion_tokens;
    }
    arena_rewind(r->arena, mark);
}

/* A Retry-After worth passing on: digits only. */
static void copy_retry_after(const relay *r, wbuf *b)
{
    const http_header *h = http_find_header(r->head->headers, r->head->header_count, SLICE_LIT("retry-after"));
    uint64_t v;
    if (h && slice_to_u64(h->value, 86400, &v)) {
        wbuf_puts(b, "\r\nRetry-After: ");
        wbuf_put_u64(b, v);
    }
}

/* An upstream error answer, held whole: a JSON one is relayed with its
 * status, less any secret it echoes; anything else (a proxy's HTML page)
 * becomes §6 JSON with the same status, its start kept for the log. */
static void answer_error_body(relay *r, bool complete)
{
    /* The head still lies at the buffer's start (an error body is held
     * whole, never compacted); the scratch may hold another's by now. */
    if (http_parse_response(r->buf, r->res.head_len, RESPONSE_HEAD_MAX, r->client_head_method, &head_scratch) !=
        HTTP_PARSE_DONE) {
        fail(r, 502, "upstream response head too large", "upstream_protocol_error");
        return;
    }
    r->head = &head_scratch;
    char *body = r->buf + r->dec_start;
    size_t len = r->dec_end - r->dec_start;
    scrub(body, len, &r->secrets);
    int status = r->res.status;
    json_chunk_info info;
    arena_mark mark = arena_mark_now(r->arena);
    bool json = complete && json_inspect_chunk(body, len, r->arena, &info) == 0;
    arena_rewind(r->arena, mark);
    if (json) {
        r->res.body_kind = HTTP_BODY_LENGTH; /* now known, whatever the upstream's framing */
        r->res.content_length = len;
        if (build_client_head(r, false) != 0) {
            fail(r, 502, "upstream response head too large", "upstream_protocol_error");
            return;
        }
        if (relay_passthrough(r, true) == 0)
            end_of_answer(r);
        return;
    }
    char msg[96];
    wbuf m = wbuf_over(msg, sizeof msg - 1);
    wbuf_puts(&m, "upstream returned ");
    wbuf_put_u64(&m, (uint64_t)status);
    wbuf_puts(&m, complete ? " with a non-JSON body" : " with an error body too large to relay");
    msg[m.len] = '\0';
    char logged[sizeof msg + 220];
    wbuf l = wbuf_over(logged, sizeof logged - 1);
    wbuf_puts(&l, msg);
    wbuf_puts(&l, ": ");
    wbuf_put(&l, body, len < 200 ? len : 200);
    logged[l.len] = '\0';
    record_error(r, logged);
    char extra[48];
    wbuf e = wbuf_over(extra, sizeof extra - 1);
    copy_retry_after(r, &e);
    extra[e.len] = '\0';
    r->req->record->status = status;
    stop_timers(r);
    release_upstream(r, false);
    r->state = RELAY_FINISHED;
    settle(r);
    r->sink->error(r->client, status, msg, "upstream_error", "upstream_non_json", e.len ? extra : NULL);
}

/* Handles the body bytes in buf; returns false once the relay has ended. */
static bool process_body(relay *r, bool at_eof)
{
    if (!decode(r)) {
        fail(r, 502, "upstream sent a malformed chunked body", "upstream_protocol_error");
        return false;
    }
    if (r->state == RELAY_ERROR_BODY) {
        if (r->body_complete || at_eof || r->len == RELAY_READ_BUFFER) {
            answer_error_body(r, r->body_complete || at_eof);
            return false;
        }
        return true;
    }
    bool last = r->body_complete;
    int rc = r->state == RELAY_STREAM ? relay_events(r, at_eof || last, last) : relay_passthrough(r, last);
    if (rc != 0)
        return false; /* the client is gone; the server aborts us */
    if (r->tap_full) {
        compact(r);
        return true; /* relay_resume goes on */
    }
    if (r->body_complete) {
        if (r->retain)
            read_answer_usage(r);
        end_of_answer(r);
        return false;
    }
    compact(r);
    if (r->len == 0 && !r->retain) {
        /* Nothing pending: the buffer goes back to the pool until the next
         * read, so a stream between chunks holds no buffer (the pool hands
         * the same warm buffer to whichever stream reads next). */
        evbuf_release(&r->in, r->env->read_buffers);
        r->buf = NULL;
        return true;
    }
    if (r->state != RELAY_STREAM) {
        if (r->len == r->in.cap) {
            fail(r, 502, "upstream sent an answer the relay could not buffer", "upstream_protocol_error");
            return false;
        }
        return true;
    }
    evbuf_result er = evbuf_settle(&r->in, r->env->read_buffers, r->len, r->dec_end - r->dec_start,
                                   (size_t)r->env->cfg->max_event);
    if (er == EVBUF_OK) /* the read buffer goes back; the partial event waits in a small one */
        evbuf_park(&r->in, r->env->read_buffers, r->env->park, 2, r->len);
    r->buf = r->in.ptr;
    if (er == EVBUF_OK)
        return true;
    if (er == EVBUF_TOO_LARGE)
        fail(r, 502, EVENT_TOO_LARGE, "event_too_large");
    else
        fail(r, 502, "out of memory for a long event", "internal_error");
    return false;
}

static bool is_event_stream(slice content_type)
{
    return content_type.len >= 17 && slice_eq_nocase((slice){content_type.ptr, 17}, SLICE_LIT("text/event-stream"));
}

static bool may_retry(const relay *r);
static void retry_after(relay *r, uint64_t delay_ms, int status, const char *message, const char *code);

/* An upstream 429/5xx before any byte reached the client: another attempt
 * when allowed, after the upstream's Retry-After when it gives one within
 * the backoff cap. A longer one cools that upstream for as long and the
 * next one is tried. True when an attempt was started. */
static bool retry_answer(relay *r, int status)
{
    retry_hints hints;
    retry_hints_read(r->head->headers, r->head->header_count, &hints);
    if (hints.should_retry == 0 || !may_retry(r))
        return false;
    uint64_t delay = retry_delay_ms(r->retries, &hints, retry_rng_next(r->env->rng));
    if (hints.has_delay && hints.delay_ms > RETRY_CAP_MS) {
        upstream_cooldown(r->u->def, now(r) + hints.delay_ms);
        if (r->req->gen->routes->upstream_count == 1)
            return false; /* nowhere else to go: the client gets the answer and its Retry-After */
        delay = 0;
    }
    char msg[64];
    snprintf(msg, sizeof msg, "upstream answered %d", status);
    retry_after(r, delay, status, msg, status == 429 ? "upstream_rate_limited" : "upstream_error");
    return true;
}

/* Returns false once the relay has ended. */
static bool process_head(relay *r)
{
    http_response *head = &head_scratch;
    http_parse_result pr = http_parse_response(r->buf, r->len, RESPONSE_HEAD_MAX, r->client_head_method, head);
    if (pr == HTTP_PARSE_INCOMPLETE) {
        if (r->len == RELAY_READ_BUFFER) {
            fail(r, 502, "upstream response head too large", "upstream_protocol_error");
            return false;
        }
        return true;
    }
    if (pr != HTTP_PARSE_DONE) {
        char msg[160];
        wbuf b = wbuf_over(msg, sizeof msg - 1);
        wbuf_puts(&b, "upstream protocol error: ");
        wbuf_puts(&b, head->error ? head->error : "malformed response");
        msg[b.len] = '\0';
        fail(r, 502, msg, "upstream_protocol_error");
        return false;
    }
    if (head->status < 200) {
        /* 1xx: drop it and wait for the real answer. */
        memmove(r->buf, r->buf + head->head_len, r->len - head->head_len);
        r->len -= head->head_len;
        return r->len ? process_head(r) : true;
    }
    r->head = head;
    r->res = (answer_facts){.status = head->status, .head_len = head->head_len, .body_kind = head->body_kind,
                            .content_length = head->content_length, .keep_alive = head->keep_alive};
    if (r->uploading) { /* the upstream answered early (e.g. 413): the rest of the body is not wanted */
        r->uploading = false;
        r->up_cut = true;
        r->up_off = r->up_len = 0;
    }
    access_record *rec = r->req->record;
    uint64_t ttfb = now(r) - r->started_ms;
    rec->ttfb_ms = (int64_t)ttfb;
    rec->status = r->res.status;
    metrics_ttfb(r->env->metrics, r->u->metrics_id, ttfb * 1000);
    if (upstream_is_tls(r->up) && !upstream_was_reused(r->up))
        metrics_tls_handshake(r->env->metrics, upstream_tls_resumed(r->up));
    const http_header *up_id = http_response_field(head, HTTP_FIELD_X_REQUEST_ID);
    if (up_id && up_id->value.len <= 128) /* copied: the read buffer goes back to its pool first */
        rec->upstream_req_id = slice_of(arena_strndup(r->arena, up_id->value.ptr, up_id->value.len));
    int status = r->res.status;
    bool overloaded = status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
    if (overloaded)
        metrics_upstream_error(r->env->metrics, r->u->metrics_id, status == 429 ? UPERR_STATUS_429 : UPERR_STATUS_5XX);
    judge_upstream(r, status < 500 && status != 401 && status != 403); /* a 4xx is the request's fault, not the upstream's */
    if (overloaded && retry_answer(r, status))
        return false;
    if (status == 401 || status == 403) {
        /* §6: the client's key was fine; the server's own is not */
        const char *msg = !r->u->target.auth_header
                              ? "the upstream asks for an API key and the gateway has no upstream key configured"
                          : status == 401 ? "the upstream refused the gateway's own API key (401); the client's key "
                                            "was fine: the server's upstream key needs fixing"
                                          : "the upstream refused the gateway's own API key (403); the client's key "
                                            "was fine: the server's upstream key lacks access";
        fail(r, 502, msg, "upstream_auth_error");
        return false;
    }
    bool has_body = r->res.body_kind != HTTP_BODY_NONE && !r->client_head_method;
    bool stream = is_event_stream(head->content_type) && r->res.body_kind != HTTP_BODY_NONE;
    r->body_left = r->res.content_length;
    r->dec_start = r->dec_end = r->raw_start = r->res.head_len;
    r->body_complete = r->res.body_kind == HTTP_BODY_NONE ||
                       (r->res.body_kind == HTTP_BODY_LENGTH && r->res.content_length == 0);
    if (status >= 400 && has_body) {
        r->state = RELAY_ERROR_BODY;
        return process_body(r, false);
    }
    if (build_client_head(r, stream) != 0) {
        fail(r, 502, "upstream response head too large", "upstream_protocol_error");
        return false;
    }
    r->state = stream ? RELAY_STREAM : RELAY_BODY;
    if (stream && status == 200 && r->req->tap && r->req->tap->begin(r->req->tap_ctx, head)) {
        r->tapped = true;
        r->head_sent = true; /* from here on the stream is the tap's: no retry */
    }
    if (stream) {
        r->streaming = true;
        metrics_gauge_streams(r->env->metrics, 1);
        loop_timer_arm(r->env->loop, &r->heartbeat, HEARTBEAT_MS, on_heartbeat, r);
    } else {
        r->retain = status < 300 && has_body && head->content_type.len >= 16 &&
                    slice_eq_nocase((slice){head->content_type.ptr, 16}, SLICE_LIT("application/json"));
        r->body_start = r->res.head_len;
    }
    return process_body(r, false);
}

/* ---- upstream I/O ---- */

static void start_attempt(relay *r);
static void connect_upstream(relay *r);

static void on_backoff(void *ctx) { start_attempt(ctx); }

/* Whether another attempt may be made: nothing of the answer reached the
 * client, no body byte went up, attempts and time are left (§ retries). */
static bool may_retry(const relay *r)
{
    return !r->head_sent && !r->up_started && r->plan.attempts < r->plan.max_attempts &&
           now(r) - r->started_ms < r->env->cfg->request_timeout_ms;
}

/* This attempt failed; the next one starts after `delay_ms` (the backoff,
 * or the upstream's own Retry-After), on the plan's next upstream. */
static void retry_after(relay *r, uint64_t delay_ms, int status, const char *message, const char *code)
{
    r->last_status = status;
    r->last_message = arena_strndup(r->arena, message, strlen(message));
    r->last_code = code;
    metrics_retry(r->env->metrics, r->u->metrics_id);
    r->retries++;
    r->req->record->retries = r->retries;
    r->state = RELAY_CONNECTING;
    release_upstream(r, false);
    loop_timer_stop(r->env->loop, &r->phase_timer);
    loop_timer_arm(r->env->loop, &r->backoff, delay_ms, on_backoff, r);
}

/* A transport failure before any answer byte: try again if allowed. */
static void retry_or_fail(relay *r, int status, const char *message, const char *code)
{
    /* A pooled connection the upstream had quietly closed is no failure of
     * the upstream: go again on a fresh one, without using up a retry. */
    if (r->len == 0 && !r->head_sent && !r->up_started && r->up && upstream_was_reused(r->up) && !r->fresh_only) {
        r->fresh_only = true;
        release_conn(r, false);
        connect_upstream(r);
        return;
    }
    count_upstream_error(r, code);
    judge_upstream(r, false);
    if (r->len == 0 && may_retry(r)) {
        retry_after(r, retry_backoff_ms(r->retries, retry_rng_next(r->env->rng)), status, message, code);
        return;
    }
    fail(r, status, message, code);
}

static void want_io(relay *r)
{
    bool reading = r->state >= RELAY_AWAIT_HEAD && r->state != RELAY_FINISHED &&
                   r->sink->pending(r->client) < RELAY_CLIENT_HIGH_WATER;
    bool writing = r->state == RELAY_SENDING || (r->uploading && r->up_off < r->up_len);
    upstream_want(r->up, reading, writing);
}

static void first_byte_wait(relay *r)
{
    loop_timer_arm(r->env->loop, &r->phase_timer, r->t_first, on_phase_timeout, r);
}

/* Writes the upload buffer to the upstream; when it has room again, asks
 * the server for more of the client's body. Iterative: the server's answer
 * lands in the buffer and this loop writes it. */
static void pump_upload(relay *r)
{
    if (r->pumping)
        return;
    r->pumping = true;
    for (;;) {
        while (r->up_off < r->up_len) {
            struct iovec iov = {r->up_buf + r->up_off, r->up_len - r->up_off};
            ssize_t w = upstream_writev(r->up, &iov, 1);
            if (w < 0 && errno == EAGAIN)
                break;
            if (w < 0) {
                r->pumping = false;
                char msg[256];
                wbuf b = wbuf_over(msg, sizeof msg - 1);
                wbuf_puts(&b, "upstream write failed while sending the request body: ");
                wbuf_puts(&b, upstream_error(r->up));
                msg[b.len] = '\0';
                retry_or_fail(r, 502, msg, "upstream_io_error");
                return;
            }
            r->up_started = true;
            r->up_off += (size_t)w;
        }
        if (r->up_off == r->up_len) {
            r->up_off = r->up_len = 0;
            if (r->up_last) { /* all of it went up: now the answer */
                r->uploading = false;
                pool_put(r->env->read_buffers, r->up_buf);
                r->up_buf = NULL;
                first_byte_wait(r);
                break;
            }
        }
        size_t queued = r->up_len - r->up_off;
        if (!r->up_wanted || queued > RELAY_READ_BUFFER / 2)
            break;
        r->up_wanted = false;
        r->sink->upload_more(r->client);
        if (r->state == RELAY_FINISHED || r->up_len - r->up_off == queued)
            break; /* ended, or nothing new came */
    }
    r->pumping = false;
    if (r->state == RELAY_FINISHED)
        return;
    if (r->uploading) {
        if (r->up_off < r->up_len) /* the upstream's pace, not the client's, is timed here */
            loop_timer_arm(r->env->loop, &r->phase_timer, r->t_idle, on_phase_timeout, r);
        else
            loop_timer_stop(r->env->loop, &r->phase_timer);
    }
    want_io(r);
}

static void send_request(relay *r)
{
    while (r->out_index < r->out_count) {
        struct iovec iov[4];
        size_t n = 0;
        for (size_t i = r->out_index; i < r->out_count; i++)
            iov[n++] = r->out[i];
        iov[0].iov_base = (char *)iov[0].iov_base + r->out_offset;
        iov[0].iov_len -= r->out_offset;
        ssize_t w = upstream_writev(r->up, iov, n);
        int err = errno;
        if (w < 0) {
            if (err == EAGAIN)
                break;
            bool tls = upstream_is_tls(r->up) && !upstream_was_reused(r->up);
            char msg[256];
            wbuf b = wbuf_over(msg, sizeof msg - 1);
            wbuf_puts(&b, tls ? "upstream TLS failed: " : "upstream write failed: ");
            wbuf_puts(&b, upstream_error(r->up));
            msg[b.len] = '\0';
            if (tls && err == EPROTO) /* a certificate does not get better by asking again */
                fail(r, 502, msg, "upstream_tls_error");
            else
                retry_or_fail(r, 502, msg, tls ? "upstream_tls_error" : "upstream_io_error");
            return;
        }
        size_t done = (size_t)w;
        while (done && r->out_index < r->out_count) {
            size_t left = r->out[r->out_index].iov_len - r->out_offset;
            if (done < left) {
                r->out_offset += done;
                done = 0;
            } else {
                done -= left;
                r->out_index++;
                r->out_offset = 0;
            }
        }
        while (r->out_index < r->out_count && r->out[r->out_index].iov_len == 0)
            r->out_index++;
    }
    if (r->out_index == r->out_count) {
        r->state = RELAY_AWAIT_HEAD;
        if (r->uploading) {
            pump_upload(r);
            return;
        }
        first_byte_wait(r);
    }
    want_io(r);
}

static void read_once(relay *r);

/* TLS may hold decrypted bytes that epoll cannot see: read until the engine
 * is empty, the buffer is full, or the client needs to catch up. */
static void read_answer(relay *r)
{
    do
        read_once(r);
    while (r->up && upstream_is_tls(r->up) && r->state >= RELAY_AWAIT_HEAD && r->state != RELAY_FINISHED &&
           r->last_read > 0 && (!r->buf || r->in.parked || r->len < r->in.cap) && r->sink->pending(r->client) < RELAY_CLIENT_HIGH_WATER);
}

static void read_once(relay *r)
{
    if (!evbuf_acquire(&r->in, r->env->read_buffers)) {
        fail(r, 502, "out of memory", "internal_error");
        return;
    }
    r->buf = r->in.ptr;
    ssize_t n = upstream_read(r->up, r->buf + r->len, r->in.cap - r->len);
    int err = errno;
    r->last_read = n;
    if (n < 0 && err == EAGAIN) {
        /* TLS reads until EAGAIN (read_answer): a stream between events
         * must not keep the buffer that last try took. */
        if (r->len == 0 && !r->retain) {
            evbuf_release(&r->in, r->env->read_buffers);
            r->buf = NULL;
        } else if (r->state == RELAY_STREAM) { /* nor the buffer the parked event came back into */
            evbuf_park(&r->in, r->env->read_buffers, r->env->park, 2, r->len);
            r->buf = r->in.ptr;
        }
        want_io(r);
        return;
    }
    if (n <= 0) {
        bool tls = upstream_is_tls(r->up);
        if (r->state == RELAY_AWAIT_HEAD && r->len == 0) {
            /* On a fresh TLS connection the first read completes the handshake. */
            bool handshake = n < 0 && tls && !upstream_was_reused(r->up);
            char msg[256];
            wbuf b = wbuf_over(msg, sizeof msg - 1);
            wbuf_puts(&b, handshake ? "upstream TLS failed: " : "upstream closed the connection before answering");
            if (n < 0 && !handshake)
                wbuf_puts(&b, ": ");
            if (n < 0)
                wbuf_puts(&b, upstream_error(r->up));
            msg[b.len] = '\0';
            if (n < 0 && tls && err == EPROTO)
                fail(r, 502, msg, "upstream_tls_error");
            else
                retry_or_fail(r, 502, msg, n < 0 && tls ? "upstream_tls_error" : "upstream_closed");
            return;
        }
        if (r->state == RELAY_AWAIT_HEAD) {
            fail(r, 502, "upstream closed the connection in the middle of its response head", "upstream_closed");
            return;
        }
        if (n == 0 && r->res.body_kind == HTTP_BODY_UNTIL_CLOSE) {
            r->body_complete = true;
            r->res.keep_alive = false;
            process_body(r, true);
            return;
        }
        if (r->saw_done) {
            /* Everything arrived; only the framing's end is missing. */
            r->body_complete = true;
            r->res.keep_alive = false;
            process_body(r, true);
            return;
        }
        fail(r, 502, n == 0 ? "upstream closed the stream before it ended" : "upstream connection failed mid-stream",
             "upstream_closed");
        return;
    }
    r->len += (size_t)n;
    loop *l = r->env->loop;
    if (r->state == RELAY_AWAIT_HEAD) {
        loop_timer_stop(l, &r->phase_timer);
        if (!process_head(r))
            return;
    } else if (!process_body(r, false)) {
        return;
    }
    loop_timer_arm(l, &r->phase_timer, r->t_idle, on_phase_timeout, r);
    if (r->state == RELAY_STREAM)
        loop_timer_arm(l, &r->heartbeat, HEARTBEAT_MS, on_heartbeat, r);
    want_io(r);
}

static void on_upstream_io(void *ctx, uint32_t events)
{
    relay *r = ctx;
    if (r->state == RELAY_SENDING && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
        send_request(r);
    if (r->state >= RELAY_AWAIT_HEAD && r->state != RELAY_FINISHED &&
        (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))) {
        if (r->sink->pending(r->client) < RELAY_CLIENT_HIGH_WATER || (events & (EPOLLERR | EPOLLHUP)))
            read_answer(r);
        if (r->uploading && r->state == RELAY_AWAIT_HEAD && (events & EPOLLOUT))
            pump_upload(r);
    } else if (r->uploading && r->state == RELAY_AWAIT_HEAD && (events & EPOLLOUT)) {
        pump_upload(r);
    } else if (r->state == RELAY_SENDING && (events & EPOLLIN)) {
        /* TLS may need to read handshake records before it can write. */
        send_request(r);
    }
}

static void on_upstream_ready(void *ctx)
{
    relay *r = ctx;
    r->state = RELAY_SENDING;
    r->out_index = 0;
    r->out_offset = 0;
    /* The TLS handshake and the request's bytes share the connect budget. */
    loop_timer_arm(r->env->loop, &r->phase_timer, r->t_connect, on_phase_timeout, r);
    send_request(r);
}

static void on_upstream_failed(void *ctx, upstream_failure kind, const char *message)
{
    relay *r = ctx;
    r->up = NULL; /* upstream.c closed it */
    if (kind == UPSTREAM_FAIL_DNS) { /* the resolver has been through its nameservers: no retry */
        fail(r, 502, message, "upstream_dns_error");
        return;
    }
    bool timeout = kind == UPSTREAM_FAIL_CONNECT_TIMEOUT;
    retry_or_fail(r, timeout ? 504 : 502, message, timeout ? "upstream_connect_timeout" : "upstream_connect_error");
}

static const upstream_events upstream_callbacks = {on_upstream_ready, on_upstream_io, on_upstream_failed};

static void connect_upstream(relay *r)
{
    r->state = RELAY_CONNECTING;
    r->len = 0;
    r->up = upstream_open(&r->u->target, r->env->loop, r->t_connect, !r->fresh_only, &upstream_callbacks, r);
    if (!r->up)
        fail(r, 502, "out of memory", "internal_error");
}

/* Appends an upstream's name to the log's "upstream": a>b when a failed over to b. */
static void note_upstream(relay *r, const char *name)
{
    access_record *rec = r->req->record;
    size_t had = rec->upstream.len, n = strlen(name);
    if (had && had + 1 + n > 200)
        return;
    char *joined = arena_alloc(r->arena, had + 1 + n + 1);
    if (!joined)
        return;
    if (had) {
        memcpy(joined, rec->upstream.ptr, had);
        joined[had++] = '>';
    }
    memcpy(joined + had, name, n + 1);
    rec->upstream = (slice){joined, had + n};
}

static void on_slot_free(void *ctx)
{
    relay *r = ctx;
    r->waiting = false;
    loop_timer_stop(r->env->loop, &r->phase_timer);
    r->plan.step = 0; /* a new pass over the route: the slot may be anywhere on it */
    r->plan.tried = 0;
    if (r->state != RELAY_FINISHED)
        start_attempt(r);
}

static void on_wait_timeout(void *ctx)
{
    relay *r = ctx;
    stop_waiting(r);
    fail(r, 503, "every upstream for this request is at its max_conns; try again shortly", "upstream_busy");
}

/* The plan ran dry: the last failure, or why nothing could be tried. */
static void no_upstream_left(relay *r)
{
    uint64_t wait = plan_wait_ms(&r->plan, now(r));
    if (!wait && !r->last_message && r->plan.attempts < r->plan.max_attempts) {
        /* nothing cools: the upstreams are full (max_conns); wait in line for a slot */
        r->waiter = (gen_waiter){.wake = on_slot_free, .ctx = r};
        if (generation_wait(r->req->gen, &r->waiter)) {
            r->waiting = true;
            r->state = RELAY_CONNECTING;
            loop_timer_arm(r->env->loop, &r->phase_timer, r->env->cfg->connect_timeout_ms, on_wait_timeout, r);
            return;
        }
    }
    if (r->last_message) {
        fail(r, r->last_status, r->last_message, r->last_code);
        return;
    }
    char msg[160];
    snprintf(msg, sizeof msg, "no upstream is available for this request%s",
             wait ? " (all cooling down)" : " (every one is at its max_conns)");
    record_error(r, msg);
    r->req->record->status = 503;
    stop_timers(r);
    r->state = RELAY_FINISHED;
    settle(r);
    char extra[40];
    snprintf(extra, sizeof extra, "\r\nRetry-After: %llu", (unsigned long long)(wait ? (wait + 999) / 1000 : 1));
    r->sink->error(r->client, 503, msg, "server_error", "upstream_unavailable", extra);
}

static uint64_t or_default(uint64_t v, uint64_t fallback) { return v ? v : fallback; }

/* The next attempt, on the upstream the route's plan gives. */
static void start_attempt(relay *r)
{
    upstream_def *d = plan_next(&r->plan, now(r));
    config_gen *routes = r->req->gen->routes;
    if (!d && r->plan.attempts == 0 && routes->upstream_count == 1 && plan_wait_ms(&r->plan, now(r))) {
        /* A lone upstream that cools is still the only one there is: ask it, so the
         * client hears its real failure rather than "all cooling down". */
        d = &routes->upstreams[0];
        r->plan.attempts++;
    }
    if (!d) {
        no_upstream_left(r);
        return;
    }
    const config *cfg = r->env->cfg;
    r->u = generation_upstream(r->req->gen, d);
    r->on_upstream = true;
    d->active++;
    r->t_connect = or_default(d->connect_timeout_ms, cfg->connect_timeout_ms);
    r->t_first = or_default(d->first_byte_timeout_ms, cfg->first_byte_timeout_ms);
    r->t_idle = or_default(d->idle_timeout_ms, cfg->idle_timeout_ms);
    note_upstream(r, r->u->target.name);
    /* this upstream's key is the secret to scrub now */
    r->secrets.item[0] = r->u->target.auth_header ? slice_of(r->u->target.auth_header + 7) : (slice){"", 0};
    r->fresh_only = false;
    if (build_request(r) != 0) {
        fail(r, 431, "request head too large to forward", "headers_too_large");
        return;
    }
    connect_upstream(r);
}

/* ---- the caller's limits ---- */

/* Checks the caller's limits before the upstream is asked; false after
 * answering 429 (§3). */
static bool admit(relay *r, const auth_identity *who)
{
    bool stream = r->info.stream;
    r->limited = true;
    if (limits_admit(who->state, &who->spec, now(r) * 1000, stream, &r->verdict)) {
        r->req->holds_stream = stream;
        return true;
    }
    static const struct {
        metrics_limit_kind kind;
        const char *type, *what;
    } refusal[] = {[REFUSED_REQUESTS] = {LIMIT_REQUESTS, "requests", "requests per minute"},
                   [REFUSED_TOKENS] = {LIMIT_TOKENS, "tokens", "tokens per minute"},
                   [REFUSED_STREAMS] = {LIMIT_STREAMS, "streams", "concurrent streams"}};
    const limit_verdict *v = &r->verdict;
    uint64_t limit = v->refused == REFUSED_REQUESTS ? who->spec.rpm
                     : v->refused == REFUSED_TOKENS ? who->spec.tpm
                                                    : who->spec.streams;
    metrics_rate_limited(r->env->metrics, who->metrics_id, refusal[v->refused].kind);
    char msg[160];
    wbuf m = wbuf_over(msg, sizeof msg - 1);
    wbuf_puts(&m, "rate limit reached for ");
    wbuf_puts(&m, refusal[v->refused].what);
    wbuf_puts(&m, " (limit ");
    wbuf_put_u64(&m, limit);
    wbuf_puts(&m, "); try again in ");
    wbuf_put_u64(&m, v->retry_after_s);
    wbuf_puts(&m, " s");
    msg[m.len] = '\0';
    char extra[512];
    wbuf e = wbuf_over(extra, sizeof extra - 1);
    limits_write_headers(&e, v);
    extra[e.len] = '\0';
    access_record *rec = r->req->record;
    rec->status = 429;
    rec->error = arena_strndup(r->arena, msg, m.len);
    r->state = RELAY_FINISHED;
    r->sink->error(r->client, 429, msg, refusal[v->refused].type, "rate_limit_exceeded", extra);
    return false;
}

/* ---- the public face ---- */

relay *relay_start(const relay_env *env, arena *a, relay_request *req, const relay_sink *sink, void *client)
{
    relay *r = arena_alloc(a, sizeof *r);
    if (!r) {
        sink->error(client, 503, "out of memory", "server_error", "internal_error", NULL);
        return NULL;
    }
    memset(r, 0, sizeof *r);
    r->env = env;
    /* slot 0: the upstream key of the attempt under way; slot 1: the caller's own */
    r->secrets.count = 2;
    r->secrets.item[0] = r->secrets.item[1] = (slice){"", 0};
    if (req->caller && req->caller->presented.len) { /* copied: the client's head goes before the stream ends */
        char *key = arena_strndup(a, req->caller->presented.ptr, req->caller->presented.len);
        if (!key) { /* the head it points into goes back before the answer ends */
            sink->error(client, 503, "out of memory", "server_error", "internal_error", NULL);
            return NULL;
        }
        r->secrets.item[1] = (slice){key, req->caller->presented.len};
    }
    r->arena = a;
    r->req = req;
    r->sink = sink;
    r->client = client;
    r->started_ms = loop_now_ms(env->loop);
    r->client_chunked = req->http->minor_version >= 1;
    r->client_keep_alive = req->http->keep_alive;
    r->client_head_method = req->http->method == HTTP_HEAD;
    r->models_path = slice_eq(req->http->path, SLICE_LIT("/v1/models"));
    r->up_chunked = req->http->body_kind == HTTP_BODY_CHUNKED;
    access_record *rec = req->record;
    rec->upstream = (slice){NULL, 0};
    rec->ttfb_ms = -1;

    const http_request *h = req->http;
    r->uploading = req->upload;
    if (!req->upload && h->method == HTTP_POST &&
        (req->body_len > 0 || slice_eq(h->path, SLICE_LIT("/v1/chat/completions")))) {
        const char *why = NULL;
        if (json_inspect_request(req->body, req->body_len, a, &r->info, &why) != 0) {
            rec->status = 400;
            rec->error = why;
            sink->error(client, 400, why, "invalid_request_error", "invalid_json", NULL);
            return NULL;
        }
        rec->model = r->info.model;
        r->client_wants_usage = r->info.client_wants_usage;
        /* §5: only these report usage in a chunk of its own; other bodies go up unchanged */
        if (!slice_eq(h->path, SLICE_LIT("/v1/chat/completions")) && !slice_eq(h->path, SLICE_LIT("/v1/completions")))
            r->info.usage_edit.active = false;
    }
    route_target rt;
    if (routes_resolve(req->gen->routes, r->info.model, &rt) != 0) {
        if (r->info.model.len) {
            char msg[320];
            wbuf m = wbuf_over(msg, sizeof msg - 1);
            routes_write_not_found(&m, r->info.model);
            msg[m.len] = '\0';
            rec->status = 404;
            rec->error = arena_strndup(a, msg, m.len);
            sink->error(client, 404, msg, "invalid_request_error", "model_not_found", NULL);
            return NULL;
        }
        rt = (route_target){.route = NULL, .pinned = 0}; /* no model to route by (models, files): the first upstream */
    }
    if (rt.rewritten) { /* an alias: its model goes up in place of the client's */
        r->model_edit = (json_edit){.active = true, .at = (size_t)(r->info.model.ptr - req->body),
                                    .remove = r->info.model.len, .insert = rt.model};
    }
    if (req->caller && req->caller->state && !admit(r, req->caller))
        return NULL;
    plan_init(&r->plan, req->gen->routes, &rt, 1 + env->cfg->retries);
    loop_timer_arm(env->loop, &r->deadline, env->cfg->request_timeout_ms, on_deadline, r);
    start_attempt(r);
    return r;
}

void relay_abort(relay *r)
{
    if (r->state == RELAY_FINISHED)
        return;
    r->state = RELAY_FINISHED;
    record_error(r, "client closed the connection");
    if (!r->req->record->status || !r->head_sent)
        r->req->record->status = 499;
    stop_timers(r);
    r->uploading = false;
    release_upstream(r, false);
    settle(r);
}

void relay_client_progress(relay *r)
{
    if ((r->state == RELAY_STREAM || r->state == RELAY_BODY) &&
        r->sink->pending(r->client) >= RELAY_CLIENT_HIGH_WATER)
        loop_timer_arm(r->env->loop, &r->phase_timer, r->t_idle, on_phase_timeout, r);
}

void relay_resume(relay *r)
{
    if (r->state != RELAY_STREAM && r->state != RELAY_BODY)
        return;
    if (r->tap_full) {
        r->tap_full = false;
        if (!process_body(r, false))
            return;
    }
    want_io(r);
    /* Bytes may already wait in the TLS engine, where epoll cannot see them. */
    if (r->up && upstream_is_tls(r->up))
        read_answer(r);
}

static size_t upload_take(relay *r, const char *data, size_t len, bool last)
{
    if (r->state == RELAY_FINISHED || !r->uploading)
        return len; /* answered (or failed) first: nothing more goes up */
    if (!r->up_buf) {
        r->up_buf = pool_get(r->env->read_buffers);
        if (!r->up_buf) {
            fail(r, 502, "out of memory", "internal_error");
            return len;
        }
    }
    if (r->up_off && r->up_started) { /* room at the front; before the first write the buffer must stay whole */
        memmove(r->up_buf, r->up_buf + r->up_off, r->up_len - r->up_off);
        r->up_len -= r->up_off;
        r->up_off = 0;
    }
    bool chunked = r->up_chunked;
    size_t room = RELAY_READ_BUFFER - r->up_len;
    size_t framing = chunked ? 18 + 2 + 5 : 0; /* size line, CRLF, and the last chunk */
    size_t take = room > framing ? room - framing : 0;
    if (take > len)
        take = len;
    if (take == 0 && !(len == 0 && room >= framing)) {
        r->up_wanted = true;
        return 0;
    }
    if (take && chunked) {
        char size_line[18];
        size_t n = http_chunk_header(size_line, take);
        memcpy(r->up_buf + r->up_len, size_line, n);
        r->up_len += n;
    }
    if (take)
        memcpy(r->up_buf + r->up_len, data, take);
    r->up_len += take;
    if (take && chunked) {
        memcpy(r->up_buf + r->up_len, "\r\n", 2);
        r->up_len += 2;
    }
    if (last && take == len) {
        if (chunked) {
            memcpy(r->up_buf + r->up_len, "0\r\n\r\n", 5);
            r->up_len += 5;
        }
        r->up_last = true;
    } else if (take < len) {
        r->up_wanted = true;
    }
    if (r->state == RELAY_AWAIT_HEAD && r->up && !r->pumping)
        pump_upload(r);
    return take;
}

bool relay_upload(relay *r, const char *data, size_t len, bool last, size_t *taken)
{
    size_t n = upload_take(r, data, len, last);
    *taken = n;
    return n == len && (!last || r->up_last || !r->uploading || r->state == RELAY_FINISHED);
}
