#include "gateway/resume.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/log.h"
#include "core/wbuf.h"
#include "gateway/chatstream.h"
#include "gateway/json.h"
#include "gateway/sse.h"

enum { READER_BATCH = 16, ID_LINE_MAX = 48 };

typedef struct job job;

struct resume_reader {
    resume_hub *hub;
    job *job;             /* while the stream's relay runs; it wakes us on new events */
    job *asked;           /* the job this client started, while it is that job's primary */
    replay_reader rr;
    bool attached, head_sent, done, chunked;
    const relay_sink *sink;
    void *client;
    uint64_t bytes;
    resume_reader *next, *prev; /* the job's readers */
    loop_deferred start, freeing;
};

struct job {
    resume_hub *hub;
    arena arena;
    http_request http;       /* parsed again from our copy of the head */
    char *body;
    size_t body_len;
    char req_id[129], traceparent[56];
    relay_request req;
    access_record record;
    auth_identity caller;
    bool has_caller;
    generation *gen;
    relay *relay;
    bool relay_done, chat_stream, first_event, blocked;
    replay_stream *stream;
    resume_reader *primary;  /* the client that asked, until its stream began */
    resume_reader *readers;
    uint64_t started_ms;
    loop_deferred ending;
};

struct resume_hub {
    loop *loop;
    const config *cfg;
    metrics *metrics;
    replay_store *store;
    loop_timer expiry;
};

static uint64_t now_ms(const resume_hub *h) { return loop_now_ms(h->loop); }

/* ---- the expiry timer: one for every stream ---- */

static void on_expiry(void *ctx);

static void arm_expiry(resume_hub *h)
{
    uint64_t deadline = replay_next_deadline(h->store), t = now_ms(h);
    if (deadline == UINT64_MAX) {
        loop_timer_stop(h->loop, &h->expiry);
        return;
    }
    loop_timer_arm(h->loop, &h->expiry, deadline > t ? deadline - t : 0, on_expiry, h);
}

/* ---- readers ---- */

static void free_reader(void *ctx) { free(ctx); }

static void unlink_reader(resume_reader *r)
{
    job *j = r->job;
    if (!j)
        return;
    if (r->prev)
        r->prev->next = r->next;
    else if (j->readers == r)
        j->readers = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->next = r->prev = NULL;
    r->job = NULL;
}

static void link_reader(job *j, resume_reader *r)
{
    r->job = j;
    r->prev = NULL;
    r->next = j->readers;
    if (j->readers)
        j->readers->prev = r;
    j->readers = r;
}

/* Off the ring and its job's list; freed at the end of the tick. */
static void release_reader(resume_reader *r)
{
    r->done = true;
    unlink_reader(r);
    if (r->attached)
        replay_detach(&r->rr, now_ms(r->hub));
    r->attached = false;
    arm_expiry(r->hub);
    loop_defer(r->hub->loop, &r->freeing, free_reader, r);
}

/* The reader's request is over; its client may go on. */
static void end_reader(resume_reader *r, bool reusable)
{
    if (r->done)
        return;
    release_reader(r);
    r->sink->finished(r->client, reusable);
}

static size_t reader_head(const resume_reader *r, char *out, size_t cap)
{
    wbuf b = wbuf_over(out, cap);
    wbuf_puts(&b, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
                  "X-Accel-Buffering: no\r\nSsegate-Stream: ");
    wbuf_puts(&b, replay_token(r->rr.st));
    wbuf_puts(&b, r->chunked ? "\r\nTransfer-Encoding: chunked\r\n\r\n" : "\r\nConnection: close\r\n\r\n");
    return b.overflow ? 0 : b.len;
}

/* Sends what the ring holds past the reader's position, as far as its
 * client takes it; ends the request at the stream's end. */
static void pump(resume_reader *r)
{
    while (!r->done && r->attached) {
        if (r->sink->pending(r->client) >= RELAY_CLIENT_HIGH_WATER)
            return; /* resume_reader_drained brings us back */
        char head[320], ids[READER_BATCH][ID_LINE_MAX];
        size_t head_len = r->head_sent ? 0 : reader_head(r, head, sizeof head);
        sse_frame f;
        sse_frame_begin(&f, (slice){head, head_len}, r->chunked);
        replay_next rn = REPLAY_WAIT;
        size_t events = 0;
        while (events < READER_BATCH) {
            slice ev;
            uint64_t n;
            rn = replay_read(&r->rr, &ev, &n);
            if (rn != REPLAY_EVENT)
                break;
            wbuf id = wbuf_over(ids[events], ID_LINE_MAX);
            replay_write_id(&id, r->rr.st, n);
            sse_frame_add(&f, wbuf_slice(&id));
            sse_frame_add(&f, ev);
            events++;
        }
        char lost[256];
        if (rn == REPLAY_LOST) { /* evicted before this reader got it: say so, and end */
            wbuf b = wbuf_over(lost, sizeof lost);
            wbuf_puts(&b, "data: ");
            json_write_error(&b, "this stream's events before the reader's position are no longer kept",
                             "invalid_request_error", "stream_position_lost");
            wbuf_puts(&b, "\n\n");
            sse_frame_add(&f, wbuf_slice(&b));
        }
        bool end = rn == REPLAY_DONE || rn == REPLAY_LOST;
        sse_frame_end(&f);
        if (end && r->chunked)
            sse_frame_last(&f);
        if (sse_frame_bytes(&f) > 0) {
            r->head_sent = true;
            if (r->sink->send(r->client, f.iov, f.count) != 0)
                return; /* the client is gone: the server tells us */
            r->bytes += sse_frame_bytes(&f);
        }
        if (end) {
            end_reader(r, r->chunked);
            return;
        }
        if (rn == REPLAY_WAIT)
            return;
    }
}

static void notify_readers(job *j)
{
    for (resume_reader *r = j->readers, *next; r; r = next) {
        next = r->next; /* a reader may end, and unlink, here */
        pump(r);
    }
}

static void start_reader(void *ctx)
{
    resume_reader *r = ctx;
    if (!r->done)
        pump(r);
}

/* ---- the job: the relay that feeds the ring ---- */

static void end_job(void *ctx);

static void unblock(job *j)
{
    if (j->blocked && !j->relay_done) {
        j->blocked = false;
        relay_resume(j->relay);
    }
}

/* Before the stream begins the relay's answer goes to the client that
 * asked, as any answer does; after it, the tap takes the events. */
static int job_send(void *ctx, const struct iovec *iov, size_t count)
{
    job *j = ctx;
    return j->primary ? j->primary->sink->send(j->primary->client, iov, count) : -1;
}

static size_t job_pending(void *ctx)
{
    job *j = ctx;
    if (j->blocked)
        return RELAY_CLIENT_HIGH_WATER; /* the ring is full and nobody reads it: stop reading upstream */
    if (j->stream)
        return 0;
    return j->primary ? j->primary->sink->pending(j->primary->client) : 0;
}

static void job_error(void *ctx, int status, const char *message, const char *type, const char *code,
                      const char *extra)
{
    job *j = ctx;
    resume_reader *p = j->primary;
    j->primary = NULL;
    if (p) {
        p->done = true;
        p->sink->error(p->client, status, message, type, code, extra);
        loop_defer(j->hub->loop, &p->freeing, free_reader, p);
    }
    j->relay_done = true;
    loop_defer(j->hub->loop, &j->ending, end_job, j);
}

static void job_finished(void *ctx, bool reusable)
{
    job *j = ctx;
    resume_reader *p = j->primary;
    j->primary = NULL;
    if (p) { /* not a stream after all: the answer went to its client as it came */
        p->done = true;
        p->sink->finished(p->client, reusable);
        loop_defer(j->hub->loop, &p->freeing, free_reader, p);
    }
    j->relay_done = true;
    loop_defer(j->hub->loop, &j->ending, end_job, j);
}

static void job_upload_more(void *ctx) { (void)ctx; }

static const relay_sink job_sink = {job_send, job_pending, job_error, job_finished, job_upload_more};

static bool tap_begin(void *ctx, const http_response *res)
{
    (void)res;
    job *j = ctx;
    if (!j->primary)
        return false;
    char token[23];
    j->stream = replay_open(j->hub->store, j->has_caller ? j->caller.name : "anonymous", now_ms(j->hub), token);
    if (!j->stream)
        return false; /* not resumable, then: the answer streams to its client as usual */
    replay_set_user(j->stream, j);
    resume_reader *p = j->primary;
    j->primary = NULL;
    p->asked = NULL; /* a reader like any other from here on */
    replay_attach(j->stream, &p->rr, 0);
    p->attached = true;
    link_reader(j, p);
    pump(p); /* the 200 goes out at once */
    return true;
}

/* The bytes kept for one event: as relayed for /v1, or /chat/stream's own. */
static bool tap_event(void *ctx, const relay_event *ev)
{
    job *j = ctx;
    if (!j->stream)
        return true;
    arena_mark mark = arena_mark_now(&j->arena);
    size_t cap = 6 * (ev->raw.len + ev->content.len) + 64;
    char *mem = arena_alloc(&j->arena, cap);
    if (!mem)
        return true;
    wbuf b = wbuf_over(mem, cap);
    if (j->chat_stream) {
        if (!j->first_event)
            chatstream_write_retry(&b);
        if (ev->done)
            chatstream_write_done(&b);
        else if (ev->is_error) {
            wbuf_puts(&b, "event: error\n");
            wbuf_put_slice(&b, ev->raw);
        } else if (ev->content.len)
            chatstream_write_message_json(&b, ev->content);
        else {
            arena_rewind(&j->arena, mark);
            return true; /* role and finish chunks carry no text */
        }
    } else {
        wbuf_put_slice(&b, ev->raw);
        if (ev->unterminated)
            wbuf_puts(&b, "\n\n");
    }
    uint64_t n;
    replay_append_result rc = b.overflow ? REPLAY_OK : replay_append(j->stream, wbuf_slice(&b), &n);
    arena_rewind(&j->arena, mark);
    if (rc == REPLAY_FULL) {
        j->blocked = true;
        return false;
    }
    j->first_event = true;
    notify_readers(j);
    return true;
}

static void tap_ended(void *ctx, const char *message, const char *code)
{
    job *j = ctx;
    if (!j->stream)
        return;
    if (message) {
        char mem[1024];
        wbuf b = wbuf_over(mem, sizeof mem);
        if (j->chat_stream) {
            chatstream_write_error(&b, message, "upstream_error", code);
        } else {
            wbuf_puts(&b, "data: ");
            json_write_error(&b, message, "upstream_error", code);
            wbuf_puts(&b, "\n\n");
        }
        uint64_t n;
        if (!b.overflow)
            (void)replay_append(j->stream, wbuf_slice(&b), &n); /* best effort: the ring may be full */
    }
    replay_end(j->stream, now_ms(j->hub));
    notify_readers(j);
    arm_expiry(j->hub);
}

static const relay_tap job_tap = {tap_begin, tap_event, tap_ended};

/* At the end of the tick in which the relay ended: the request's accounting
 * and log line, then the job's memory. The ring lives on in the store. */
static void end_job(void *ctx)
{
    job *j = ctx;
    resume_hub *h = j->hub;
    access_record *rec = &j->record;
    uint64_t t = now_ms(h);
    rec->dur_ms = t - j->started_ms;
    uint64_t tokens = rec->prompt_tokens + rec->completion_tokens;
    if (j->has_caller) {
        auth_identity *who = &j->caller;
        if (who->state) {
            limits_charge_tokens(who->state, &who->spec, t * 1000, tokens);
            if (j->req.holds_stream)
                limits_stream_ended(who->state);
        }
        if (tokens)
            metrics_tokens(h->metrics, who->metrics_id, rec->prompt_tokens, rec->completion_tokens);
        rec->client = slice_of(who->name);
    } else {
        rec->client = SLICE_LIT("anonymous");
        if (tokens)
            metrics_tokens(h->metrics, metrics_client(h->metrics, rec->client), rec->prompt_tokens,
                           rec->completion_tokens);
    }
    metrics_request(h->metrics, metrics_route_of(j->http.path), rec->status, rec->dur_ms * 1000);
    log_access(rec);
    if (j->stream) {
        replay_set_user(j->stream, NULL);
        for (resume_reader *r = j->readers, *next; r; r = next) {
            next = r->next;
            unlink_reader(r); /* no new events will come: they read on by themselves */
        }
    }
    if (j->primary) /* its stream never began, and its client is still there */
        j->primary->asked = NULL;
    if (j->has_caller)
        auth_release(j->gen->auth, &j->caller);
    generation_release(j->gen);
    arena_reset(&j->arena);
    free(j);
    arm_expiry(h);
}

static void on_expiry_abandoned(void *ctx, replay_stream *st)
{
    (void)ctx;
    job *j = replay_user(st);
    if (!j)
        return;
    /* nobody came back within the window: the upstream is not wanted */
    j->stream = NULL;
    if (!j->relay_done) {
        relay_abort(j->relay);
        j->relay_done = true;
        if (!j->record.error)
            j->record.error = "nobody attached within the replay window";
        loop_defer(j->hub->loop, &j->ending, end_job, j);
    }
}

static void on_expiry(void *ctx)
{
    resume_hub *h = ctx;
    replay_expire(h->store, now_ms(h), on_expiry_abandoned, h);
    arm_expiry(h);
}

/* ---- the public face ---- */

resume_hub *resume_hub_new(loop *l, const config *cfg, metrics *m)
{
    resume_hub *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->loop = l;
    h->cfg = cfg;
    h->metrics = m;
    h->store = replay_store_new((size_t)cfg->replay_buffer, cfg->replay_window_ms);
    if (!h->store) {
        free(h);
        return NULL;
    }
    return h;
}

void resume_hub_free(resume_hub *h)
{
    if (!h)
        return;
    loop_timer_stop(h->loop, &h->expiry);
    replay_store_free(h->store);
    free(h);
}

static resume_reader *new_reader(resume_hub *h, const relay_sink *sink, void *client, bool http10)
{
    resume_reader *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->hub = h;
    r->sink = sink;
    r->client = client;
    r->chunked = !http10;
    return r;
}

/* Our own copy of the request: head parsed again, body copied. */
static bool copy_request(job *j, const resume_request *q)
{
    const http_request *h = q->http;
    char *head = arena_alloc(&j->arena, h->head_len);
    j->body = arena_alloc(&j->arena, q->body_len ? q->body_len : 1);
    if (!head || !j->body)
        return false;
    memcpy(head, h->method_name.ptr, h->head_len); /* the head starts at its method */
    if (q->body_len)
        memcpy(j->body, q->body, q->body_len);
    j->body_len = q->body_len;
    size_t scanned = 0;
    if (http_parse_request(head, h->head_len, h->head_len + 1, h->head_len + 1, &scanned, &j->http) != HTTP_PARSE_DONE)
        return false;
    snprintf(j->req_id, sizeof j->req_id, "%.*s", (int)q->req_id.len, q->req_id.ptr);
    snprintf(j->traceparent, sizeof j->traceparent, "%.*s", (int)q->traceparent.len, q->traceparent.ptr);
    return true;
}

resume_reader *resume_start(resume_hub *h, const relay_env *env, const resume_request *q, const relay_sink *sink,
                            void *client)
{
    resume_reader *p = new_reader(h, sink, client, q->http10);
    job *j = p ? calloc(1, sizeof *j) : NULL;
    if (j)
        arena_init(&j->arena);
    if (!j || !copy_request(j, q)) {
        if (j) {
            arena_reset(&j->arena);
            free(j);
        }
        free(p);
        sink->error(client, 503, "out of memory", "server_error", "internal_error", NULL);
        return NULL;
    }
    j->hub = h;
    j->primary = p;
    p->asked = j;
    j->chat_stream = q->chat_stream;
    j->started_ms = now_ms(h);
    j->gen = generation_acquire(q->gen);
    if (q->caller) {
        j->caller = *q->caller; /* moved: the job releases it */
        j->has_caller = true;
    }
    j->record = (access_record){.req_id = slice_of(j->req_id), .method = j->http.method_name, .path = j->http.path,
                                .ttfb_ms = -1};
    j->record.bytes_in = j->http.head_len + j->body_len;
    j->req = (relay_request){.http = &j->http, .body = j->body, .body_len = j->body_len,
                             .req_id = slice_of(j->req_id), .traceparent = slice_of(j->traceparent),
                             .gen = j->gen, .caller = j->has_caller ? &j->caller : NULL, .record = &j->record,
                             .tap = &job_tap, .tap_ctx = j};
    j->relay = relay_start(env, &j->arena, &j->req, &job_sink, j);
    if (!j->relay) { /* answered already (job_error ran): the job ends at the end of the tick */
        j->relay_done = true;
        loop_defer(h->loop, &j->ending, end_job, j);
        return NULL;
    }
    return p->done ? NULL : p;
}

resume_reader *resume_attach(resume_hub *h, slice last_event_id, const char *owner, bool http10,
                             const relay_sink *sink, void *client, int *status)
{
    char token[23];
    uint64_t n;
    replay_stream *st = NULL;
    if (!replay_parse_last_event_id(last_event_id, token, &n)) {
        *status = 404;
        return NULL;
    }
    replay_lookup found = replay_find(h->store, token, owner, n, now_ms(h), &st);
    if (found != REPLAY_FOUND) {
        *status = found == REPLAY_POSITION_LOST ? 409 : 404;
        return NULL;
    }
    resume_reader *r = new_reader(h, sink, client, http10);
    if (!r) {
        *status = 503;
        return NULL;
    }
    replay_attach(st, &r->rr, n);
    r->attached = true;
    job *j = replay_user(st);
    if (j) {
        link_reader(j, r);
        unblock(j); /* someone reads it again: the upstream may go on */
    }
    metrics_stream_resumed(h->metrics);
    loop_defer(h->loop, &r->start, start_reader, r); /* the caller records us first */
    return r;
}

void resume_reader_drained(resume_reader *r)
{
    pump(r);
    if (r->job)
        unblock(r->job);
}

void resume_reader_gone(resume_reader *r)
{
    if (r->done)
        return;
    job *pj = r->asked;
    if (pj && pj->primary == r) { /* its stream had not begun: nobody can resume it */
        pj->primary = NULL;
        if (!pj->relay_done) {
            relay_abort(pj->relay);
            pj->relay_done = true;
            loop_defer(r->hub->loop, &pj->ending, end_job, pj);
        }
    }
    release_reader(r);
}

uint64_t resume_reader_bytes(const resume_reader *r) { return r->bytes; }

int resume_cancel(resume_hub *h, slice token, const char *owner)
{
    if (token.len != REPLAY_TOKEN_CHARS)
        return 404;
    char t[23];
    memcpy(t, token.ptr, REPLAY_TOKEN_CHARS);
    t[REPLAY_TOKEN_CHARS] = '\0';
    replay_stream *st = NULL;
    if (replay_find(h->store, t, owner, 0, now_ms(h), &st) != REPLAY_FOUND)
        return 404;
    job *j = replay_user(st);
    if (j) {
        j->stream = NULL;
        if (!j->relay_done) {
            relay_abort(j->relay);
            j->relay_done = true;
            j->record.error = "cancelled by its client";
            loop_defer(h->loop, &j->ending, end_job, j);
        }
        for (resume_reader *r = j->readers, *next; r; r = next) {
            next = r->next;
            unlink_reader(r);
        }
    }
    replay_cancel(st);
    arm_expiry(h);
    return 0;
}

size_t resume_hub_bytes(const resume_hub *h) { return replay_store_bytes(h->store); }
