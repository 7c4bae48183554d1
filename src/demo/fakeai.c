#include "demo/fakeai.h"
#include "demo/fakeai_wire.h"

#include <bearssl.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/arena.h"
#include "http/http.h"
#include "gateway/json.h"

enum {
    IN_INITIAL = 16 * 1024,
    IN_IDLE_MAX = 64 * 1024,    /* pipelined bytes held while answering; beyond that, reading pauses */
    OUT_INITIAL = 16 * 1024,
    OUT_HIGH_WATER = 64 * 1024, /* a stream stops generating until the socket drains below this */
    OUT_KEEP = 256 * 1024,      /* a bigger output buffer is released after its answer */
    HEAD_ROOM = 1024,           /* room kept in front of a fixed answer's body for its head */
    MAX_HEAD = 64 * 1024,
    MAX_TARGET = 16 * 1024,
    MAX_CHUNKS = FAKEAI_MAX_CHUNKS,
    MAX_EVENT_SIZE = 64 << 20,
    MODEL_MAX = 128,
    ID_LEN = 29,               /* random characters after "chatcmpl-", as OpenAI's */
    REQUEST_ID_HEX = 24,       /* hex digits after "req_" in x-request-id */
    ACCEPT_RETRY_MS = 100,
    LINGER_MS = 1000,
    TRICKLE_MS = 1,
};
#define MAX_BODY ((size_t)32 << 20)
#define OUT_MAX ((size_t)512 << 20)
#define MAX_DELAY_MS ((uint64_t)3600 * 1000)

static const char FINGERPRINT[] = "fp_f3a9c2e1d0";
static const char SECOND_MODEL[] = "mock-2"; /* /v1/models lists it after the configured one, with faults on */
/* The /v1 paths /_mock/stats counts one by one; the others count as "other". */
static const char *const COUNTED_PATHS[] = {"/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/responses"};
#define COUNTED_PATH_SLOTS (sizeof COUNTED_PATHS / sizeof COUNTED_PATHS[0] + 1)

/* ---- the server's state ---- */

typedef enum conn_state {
    CONN_READ_HEAD, /* waiting for (the rest of) a request head */
    CONN_READ_BODY, /* head parsed, body still arriving */
    CONN_RESPOND,   /* an answer is being produced and written */
    CONN_HANG,      /* silent on purpose: wait for the peer to leave */
    CONN_LINGER     /* our side is shut: drain input until the peer closes */
} conn_state;

typedef enum resp_kind { RESP_FIXED, RESP_STREAM } resp_kind;

/* What happens once the answer's last byte has left. */
typedef enum after_kind { AFTER_NEXT, AFTER_CLOSE, AFTER_RESET, AFTER_HANG } after_kind;

typedef enum flush_status { FLUSH_EMPTY, FLUSH_PENDING, FLUSH_FAILED } flush_status;

/* One reply's identity and shape. */
typedef struct reply {
    char id[9 + ID_LEN + 1];      /* "chatcmpl-..." or "resp_..." */
    char item_id[4 + ID_LEN + 1]; /* "msg_...": a Responses API output item */
    char model[MODEL_MAX];
    size_t model_len;
    uint64_t created;
    size_t chunks;
    uint64_t delay_ms;
    uint64_t prompt_tokens;
    bool include_usage;
    bool usage_set; /* X-Mock-Usage named the counts to report */
    uint64_t usage_prompt, usage_completion;
    size_t event_size; /* X-Mock-Event-Size: the first content delta is this many bytes of 'x' */
} reply;

/* A streamed reply's progress. Chat events: 0 role, 1..n content, n+1
 * finish, n+2 usage (when asked), n+3 [DONE], n+4 the last chunk of the
 * body. Responses API events: 0 created, 1..n deltas, n+1 completed, n+2
 * the last chunk; the event index is also its sequence_number. */
typedef struct stream {
    size_t next;
    size_t cut_at;  /* content deltas before a cut fault acts; SIZE_MAX: none */
    bool paced;     /* the pacing timer for `next` fired */
    bool chunked;   /* false: close-delimited */
    bool crlf, comments;
    bool responses; /* the Responses API's events, not chat chunks */
} stream;

typedef struct conn {
    struct fakeai *f;
    struct conn *prev, *next;
    int fd;
    loop_io io;
    loop_timer pace;    /* stream pacing, delayed fixed answers, linger deadline */
    loop_timer trickle; /* one byte a tick */
    loop_deferred reap;
    tls_conn *tls;
    conn_state state;
    bool closed, peer_gone, counted;
    /* Reading stopped on a full buffer. Resumed from conn_drive, not from
     * epoll: TLS may already hold the next bytes decrypted, and a drained
     * socket announces nothing. */
    bool in_paused;

    char *in;
    size_t in_len, in_cap;
    size_t scanned, head_len, body_len, raw_pos;
    http_chunked chunked;
    http_request req;

    char *out;
    size_t out_off, out_len, out_cap;
    resp_kind resp;
    after_kind after;
    bool resp_done;    /* every byte of the answer is queued */
    bool hold;         /* queued bytes wait for the pace timer */
    bool trickling, trickle_wait;
    bool head_only;    /* HEAD request */
    size_t head_room;  /* room fixed_begin kept in front of the body for the head */
    char request_id[4 + REQUEST_ID_HEX + 1]; /* "req_...", or "" when the answer carries none */
    /* The parsed head asks for a /v1 path. Kept as a flag: req's slices go
     * stale when the input buffer grows while a body arrives. */
    bool v1;
    fakeai_fault fault;
    reply r;
    stream s;
} conn;

struct fakeai {
    loop *l;
    char *reply_text, *model, *expect_key;
    const tls_server_cred *tls;
    size_t chunks;
    uint64_t delay_ms;
    bool faults;
    int fail_status;
    /* X-Mock-Fault-Times: how often each X-Mock-Id has failed so far */
    struct {
        uint64_t id_hash, count;
    } fault_ids[64];
    size_t fault_id_next;
    slice *words;
    size_t word_count;

    int lfd;
    loop_io lio;
    loop_timer accept_retry;
    char address[64];
    conn *conns;
    uint64_t open, total, requests;
    uint64_t by_path[COUNTED_PATH_SLOTS]; /* requests per COUNTED_PATHS entry, then the others */
    uint64_t resumed; /* counted connections whose TLS handshake resumed a session */
    uint64_t rng;

    char *last; /* the last /v1 request: its head, then its decoded body */
    size_t last_head_len, last_body_len, last_cap;
    char last_request_id[4 + REQUEST_ID_HEX + 1]; /* what its answer carried */
    char last_sni[256]; /* the SNI name its connection's client sent */
    bool last_tls;
    bool have_last;
};

static void conn_drive(conn *c);
static void conn_read(conn *c);

/* ---- small helpers ---- */

static uint64_t next_random(fakeai *f)
{
    /* xorshift64*: ids only need to look random */
    f->rng ^= f->rng >> 12;
    f->rng ^= f->rng << 25;
    f->rng ^= f->rng >> 27;
    return f->rng * 2685821657736338717u;
}

static fakeai_reply_meta meta_of(const conn *c)
{
    const reply *r = &c->r;
    return (fakeai_reply_meta){
        .id = slice_of(r->id),
        .item_id = slice_of(r->item_id),
        .created = r->created,
        .model = (slice){r->model, r->model_len},
        .fingerprint = SLICE_LIT(FINGERPRINT),
        .usage_null = r->include_usage,
        .no_usage = c->fault.kind == FAKEAI_FAULT_NO_USAGE,
        .prompt_tokens = r->usage_set ? r->usage_prompt : r->prompt_tokens,
        .completion_tokens = r->usage_set ? r->usage_completion : r->chunks,
        .words = c->f->words,
        .word_count = c->f->word_count,
        .chunks = r->chunks,
    };
}

static bool is_v1(slice path) { return slice_eq(path, SLICE_LIT("/v1")) || slice_starts_with(path, SLICE_LIT("/v1/")); }

/* ---- connection lifetime ---- */

static void conn_free(void *ctx) { free(ctx); }

/* Releases the socket and buffers; the struct itself goes at the end of the
 * tick (or at once from fakeai_stop) since an event may still point at it. */
static void conn_release(conn *c, bool reset)
{
    fakeai *f = c->f;
    c->closed = true;
    loop_timer_stop(f->l, &c->pace);
    loop_timer_stop(f->l, &c->trickle);
    loop_io_del(f->l, &c->io);
    if (c->tls) {
        if (!reset)
            tls_close(c->tls, c->fd);
        tls_free(c->tls);
        c->tls = NULL;
    }
    if (reset) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0}; /* close() sends RST */
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(c->fd);
    c->fd = -1;
    if (c->prev)
        c->prev->next = c->next;
    else
        f->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->counted)
        f->open--;
    free(c->in);
    free(c->out);
    c->in = c->out = NULL;
    c->in_len = c->in_cap = c->out_len = c->out_off = c->out_cap = 0;
}

static void conn_close(conn *c, bool reset)
{
    if (c->closed)
        return;
    conn_release(c, reset);
    loop_defer(c->f->l, &c->reap, conn_free, c);
}

/* ---- output buffer ---- */

static size_t out_pending(const conn *c) { return c->out_len - c->out_off; }

/* Makes room for n more bytes at out + out_len. */
static bool out_reserve(conn *c, size_t n)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_cap - c->out_len >= n)
        return true;
    if (c->out_off) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
        if (c->out_cap - c->out_len >= n)
            return true;
    }
    if (n > OUT_MAX - c->out_len)
        return false;
    size_t need = c->out_len + n;
    size_t cap = c->out_cap ? c->out_cap : OUT_INITIAL;
    while (cap < need)
        cap *= 2;
    char *p = realloc(c->out, cap);
    if (!p)
        return false;
    c->out = p;
    c->out_cap = cap;
    return true;
}

static bool out_append(conn *c, const char *data, size_t len)
{
    if (!out_reserve(c, len))
        return false;
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return true;
}

/* ---- socket I/O ---- */

static ssize_t io_read(conn *c, void *buf, size_t cap)
{
    if (c->tls)
        return tls_read(c->tls, c->fd, buf, cap);
    return recv(c->fd, buf, cap, 0);
}

static ssize_t io_write(conn *c, const void *buf, size_t len)
{
    if (c->tls)
        return tls_write(c->tls, c->fd, buf, len);
    return send(c->fd, buf, len, MSG_NOSIGNAL);
}

/* How much input the current state may hold. */
static size_t in_limit(const conn *c)
{
    switch (c->state) {
    case CONN_READ_HEAD: return MAX_HEAD + IN_IDLE_MAX;
    case CONN_READ_BODY: return c->head_len + MAX_BODY + IN_IDLE_MAX;
    default: return IN_IDLE_MAX;
    }
}

static bool in_grow(conn *c)
{
    size_t limit = in_limit(c);
    if (c->in_cap >= limit)
        return false;
    size_t cap = c->in_cap ? c->in_cap * 2 : IN_INITIAL;
    if (cap > limit)
        cap = limit;
    char *p = realloc(c->in, cap);
    if (!p)
        return false;
    c->in = p;
    c->in_cap = cap;
    return true;
}

static void on_trickle(void *ctx);

/* Writes what is queued. Trickle mode writes one byte per timer tick. */
static flush_status conn_flush(conn *c)
{
    if (c->hold)
        return out_pending(c) ? FLUSH_PENDING : FLUSH_EMPTY;
    while (c->out_off < c->out_len) {
        if (c->trickle_wait)
            return FLUSH_PENDING;
        size_t n = c->trickling ? 1 : c->out_len - c->out_off;
        ssize_t w = io_write(c, c->out + c->out_off, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return FLUSH_PENDING;
            conn_close(c, false);
            return FLUSH_FAILED;
        }
        c->out_off += (size_t)w;
        if (c->trickling && c->out_off < c->out_len) {
            c->trickle_wait = true;
            loop_timer_arm(c->f->l, &c->trickle, TRICKLE_MS, on_trickle, c);
        }
    }
    c->out_off = c->out_len = 0;
    if (c->tls && tls_flush(c->tls, c->fd) != 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return FLUSH_PENDING;
        conn_close(c, false);
        return FLUSH_FAILED;
    }
    return FLUSH_EMPTY;
}

/* ---- response heads and fixed answers ---- */

typedef enum framing { FRAME_LENGTH, FRAME_CHUNKED, FRAME_NONE } framing;

/* request_id and extra (whole header lines) may be empty. */
static void put_head(wbuf *h, int status, const char *content_type, framing fr, size_t length, bool keep_alive,
                     slice request_id, slice extra)
{
    wbuf_puts(h, "HTTP/1.1 ");
    wbuf_put_u64(h, (uint64_t)status);
    wbuf_put_char(h, ' ');
    wbuf_puts(h, http_reason(status));
    wbuf_puts(h, "\r\nContent-Type: ");
    wbuf_puts(h, content_type);
    wbuf_puts(h, "\r\n");
    if (fr == FRAME_LENGTH) {
        wbuf_puts(h, "Content-Length: ");
        wbuf_put_u64(h, length);
        wbuf_puts(h, "\r\n");
    } else if (fr == FRAME_CHUNKED) {
        wbuf_puts(h, "Transfer-Encoding: chunked\r\n");
    }
    wbuf_puts(h, keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n");
    if (request_id.len) {
        wbuf_puts(h, "x-request-id: ");
        wbuf_put_slice(h, request_id);
        wbuf_puts(h, "\r\n");
    }
    wbuf_put_slice(h, extra);
    wbuf_puts(h, "\r\n");
}

static const char BAD_CHUNK[] = "zz\r\n{\"not\":\"a chunk size\"}\r\n";

/* A fixed answer's body is written at out + out_len + head_room; fixed_end
 * puts the head in front once the body's length is known. head_room must
 * hold the head and bad-chunked's bytes: HEAD_ROOM does, unless extra
 * header lines are long. */
static bool fixed_begin_room(conn *c, size_t head_room, size_t bound, wbuf *b)
{
    if (head_room > OUT_MAX || bound > OUT_MAX - head_room || !out_reserve(c, head_room + bound)) {
        conn_close(c, false);
        return false;
    }
    c->head_room = head_room;
    *b = wbuf_over(c->out + c->out_len + head_room, bound);
    return true;
}

static bool fixed_begin(conn *c, size_t bound, wbuf *b) { return fixed_begin_room(c, HEAD_ROOM, bound, b); }

static void fixed_end(conn *c, const wbuf *b, int status, const char *content_type, slice extra)
{
    if (b->overflow) { /* a bound above is wrong: fail loudly rather than send a truncated body */
        conn_close(c, false);
        return;
    }
    fakeai_fault_kind fault = c->fault.kind;
    framing fr = FRAME_LENGTH;
    if (fault == FAKEAI_FAULT_CLOSE_DELIMITED) {
        fr = FRAME_NONE;
        c->after = AFTER_CLOSE;
    } else if (fault == FAKEAI_FAULT_BAD_CHUNKED) {
        fr = FRAME_CHUNKED;
        c->after = AFTER_CLOSE;
    }
    /* The head goes straight in front of the body, leaving room for BAD_CHUNK. */
    wbuf h = wbuf_over(c->out + c->out_len, c->head_room - (sizeof BAD_CHUNK - 1));
    put_head(&h, status, content_type, fr, b->len, c->after == AFTER_NEXT, slice_of(c->request_id), extra);
    if (h.overflow) {
        conn_close(c, false);
        return;
    }
    size_t body_at = c->out_len + c->head_room;
    c->out_len += h.len;
    size_t body_len = c->head_only ? 0 : b->len;
    if (fault == FAKEAI_FAULT_BAD_CHUNKED) {
        memcpy(c->out + c->out_len, BAD_CHUNK, sizeof BAD_CHUNK - 1);
        c->out_len += sizeof BAD_CHUNK - 1;
        body_len = 0;
    }
    memmove(c->out + c->out_len, c->out + body_at, body_len);
    switch (fault) {
    case FAKEAI_FAULT_CLOSE_AFTER: c->after = AFTER_CLOSE; body_len /= 2; break;
    case FAKEAI_FAULT_RESET_AFTER: c->after = AFTER_RESET; body_len /= 2; break;
    case FAKEAI_FAULT_HANG_AFTER: c->after = AFTER_HANG; body_len /= 2; break;
    case FAKEAI_FAULT_TRICKLE: c->trickling = true; break;
    default: break;
    }
    c->out_len += body_len;
    c->resp_done = true;
}

static void answer_error(conn *c, int status, const char *message, const char *type, const char *code,
                         const char *extra)
{
    wbuf b;
    if (!fixed_begin(c, 256 + 6 * strlen(message), &b))
        return;
    json_write_error(&b, message, type, code);
    fixed_end(c, &b, status, "application/json", slice_of(extra));
}

/* The error answer OpenAI gives for a status, as the status:CODE fault plays it. */
static void answer_status_fault(conn *c, int status)
{
    switch (status) {
    case 400: answer_error(c, 400, "Invalid request (mock fault).", "invalid_request_error", NULL, NULL); break;
    case 401:
        answer_error(c, 401, "Incorrect API key provided (mock fault).", "invalid_request_error", "invalid_api_key",
                     NULL);
        break;
    case 403:
        answer_error(c, 403, "You are not allowed to access this resource (mock fault).", "invalid_request_error",
                     "forbidden", NULL);
        break;
    case 404:
        answer_error(c, 404, "The model does not exist or you do not have access to it (mock fault).",
                     "invalid_request_error", "model_not_found", NULL);
        break;
    case 429:
        answer_error(c, 429, "Rate limit reached for requests (mock fault).", "requests", "rate_limit_exceeded",
                     "Retry-After: 1\r\n");
        break;
    default:
        if (status >= 500)
            answer_error(c, status, "The server had an error while processing your request (mock fault).",
                         "server_error", NULL, NULL);
        else
            answer_error(c, status, "Mock fault answer.", "invalid_request_error", NULL, NULL);
    }
}

/* ---- streamed replies ---- */

/* Event payloads are written after 18 bytes of room for the chunk-size line. */
static bool event_begin(conn *c, size_t bound, wbuf *b)
{
    if (!out_reserve(c, 18 + bound + 2)) {
        conn_close(c, false);
        return false;
    }
    *b = wbuf_over(c->out + c->out_len + (c->s.chunked ? 18 : 0), bound);
    return true;
}

static bool event_end(conn *c, const wbuf *b)
{
    if (b->overflow) {
        conn_close(c, false);
        return false;
    }
    if (!c->s.chunked) {
        c->out_len += b->len;
        return true;
    }
    char size_line[18];
    size_t n = http_chunk_header(size_line, b->len);
    memcpy(c->out + c->out_len, size_line, n);
    memmove(c->out + c->out_len + n, b->ptr, b->len);
    c->out_len += n + b->len;
    memcpy(c->out + c->out_len, "\r\n", 2);
    c->out_len += 2;
    return true;
}

static const char *eol_of(const conn *c) { return c->s.crlf ? "\r\n" : "\n"; }

/* Splits an event's JSON over two data: lines, between "object" and
 * "created", where a newline is valid JSON whitespace: SSE joins the lines
 * with "\n", so the reassembled data still parses. */
static void split_data_line(wbuf *b, size_t json_at, const char *eol)
{
    static const char mark[] = ",\"created\":";
    const char *at = memmem(b->ptr + json_at, b->len - json_at, mark, sizeof mark - 1);
    if (!at)
        return;
    size_t pos = (size_t)(at - b->ptr) + 1, eol_len = strlen(eol);
    size_t ins = eol_len + 6;
    if (b->cap - b->len < ins) {
        b->overflow = true;
        return;
    }
    memmove(b->ptr + pos + ins, b->ptr + pos, b->len - pos);
    memcpy(b->ptr + pos, eol, eol_len);
    memcpy(b->ptr + pos + eol_len, "data: ", 6);
    b->len += ins;
}

static bool emit_chunk(conn *c, fakeai_chunk_kind kind, slice content, size_t index)
{
    wbuf b;
    if (!event_begin(c, 512 + c->r.model_len + 6 * content.len, &b))
        return false;
    const char *eol = eol_of(c);
    bool odd_comment = kind == FAKEAI_CHUNK_CONTENT && c->s.comments && index % 2 == 1;
    if (odd_comment) { /* a comment line inside the event, then a two-line data field */
        wbuf_puts(&b, ": ping");
        wbuf_puts(&b, eol);
    }
    wbuf_puts(&b, "data: ");
    size_t json_at = b.len;
    fakeai_reply_meta m = meta_of(c);
    fakeai_format_chunk(&b, &m, kind, content);
    if (odd_comment)
        split_data_line(&b, json_at, eol);
    wbuf_puts(&b, eol);
    wbuf_puts(&b, eol);
    return event_end(c, &b);
}

static bool emit_text(conn *c, const char *line)
{
    wbuf b;
    if (!event_begin(c, 64, &b))
        return false;
    wbuf_puts(&b, line);
    wbuf_puts(&b, eol_of(c));
    wbuf_puts(&b, eol_of(c));
    return event_end(c, &b);
}

/* A cut fault acts where content delta `cut_at` would have gone. */
static bool apply_cut(conn *c)
{
    switch (c->fault.kind) {
    case FAKEAI_FAULT_CLOSE_AFTER: c->after = AFTER_CLOSE; break;
    case FAKEAI_FAULT_RESET_AFTER: c->after = AFTER_RESET; break;
    case FAKEAI_FAULT_HANG_AFTER: c->after = AFTER_HANG; break;
    case FAKEAI_FAULT_BAD_CHUNKED: {
        static const char bad[] = "zz\r\ndata: {\"not\":\"a chunk size\"}\n\n\r\n";
        if (!out_append(c, bad, sizeof bad - 1)) {
            conn_close(c, false);
            return false;
        }
        c->after = AFTER_CLOSE;
        break;
    }
    default: break;
    }
    c->resp_done = true;
    return true;
}

/* The reply's last byte: the chunked body's terminator, if chunked. */
static bool end_body(conn *c)
{
    c->resp_done = true;
    return !c->s.chunked || out_append(c, "0\r\n\r\n", 5);
}

/* One content delta of event_size bytes, for relaying events of any size. */
static bool emit_big_delta(conn *c)
{
    char *text = malloc(c->r.event_size);
    if (!text)
        return false;
    memset(text, 'x', c->r.event_size);
    bool ok = emit_chunk(c, FAKEAI_CHUNK_CONTENT, (slice){text, c->r.event_size}, 0);
    free(text);
    return ok;
}

/* Queues chat event e (see `stream`) of a reply of n content deltas. */
static bool emit_chat_event(conn *c, size_t e, size_t n)
{
    if (e == 0)
        return emit_chunk(c, FAKEAI_CHUNK_ROLE, (slice){"", 0}, 0);
    if (e <= n) {
        if (c->s.comments && (e - 1) % 2 == 0 && !emit_text(c, ": ping"))
            return false;
        if (e == 1 && c->r.event_size)
            return emit_big_delta(c);
        char scratch[FAKEAI_TOKEN_SCRATCH];
        fakeai_reply_meta m = meta_of(c);
        return emit_chunk(c, FAKEAI_CHUNK_CONTENT, fakeai_token(&m, e - 1, scratch), e - 1);
    }
    if (e == n + 1)
        return emit_chunk(c, FAKEAI_CHUNK_FINISH, (slice){"", 0}, 0);
    if (e == n + 2) {
        if (!c->r.include_usage || c->fault.kind == FAKEAI_FAULT_NO_USAGE)
            return true;
        return emit_chunk(c, FAKEAI_CHUNK_USAGE, (slice){"", 0}, 0);
    }
    if (e == n + 3)
        return emit_text(c, "data: [DONE]");
    return end_body(c);
}

/* Queues Responses API event e (see `stream`); no [DONE] follows them. */
static bool emit_response_event(conn *c, size_t e, size_t n)
{
    if (e > n + 1)
        return end_body(c);
    fakeai_response_event kind = e == 0 ? FAKEAI_RESPONSE_CREATED : e <= n ? FAKEAI_RESPONSE_DELTA
                                                                           : FAKEAI_RESPONSE_COMPLETED;
    fakeai_reply_meta m = meta_of(c);
    char scratch[FAKEAI_TOKEN_SCRATCH];
    slice delta = {"", 0};
    size_t bound = 512 + 2 * c->r.model_len;
    if (kind == FAKEAI_RESPONSE_DELTA) {
        if (c->s.comments && (e - 1) % 2 == 0 && !emit_text(c, ": ping"))
            return false;
        delta = fakeai_token(&m, e - 1, scratch);
        bound += 6 * delta.len;
    } else if (kind == FAKEAI_RESPONSE_COMPLETED) {
        bound += 512 + fakeai_text_bound(&m);
    }
    wbuf b;
    if (!event_begin(c, bound, &b))
        return false;
    const char *eol = eol_of(c);
    wbuf_puts(&b, "event: ");
    wbuf_puts(&b, fakeai_response_event_name(kind));
    wbuf_puts(&b, eol);
    wbuf_puts(&b, "data: ");
    fakeai_format_response_event(&b, &m, kind, e, delta);
    wbuf_puts(&b, eol);
    wbuf_puts(&b, eol);
    return event_end(c, &b);
}

static void on_pace(void *ctx);

/* Queues events until the reply ends, the pacing timer must run, or the
 * socket lags. Returns true when it queued anything or finished. */
static bool stream_pump(conn *c)
{
    stream *s = &c->s;
    size_t n = c->r.chunks;
    bool moved = false;
    while (!c->resp_done && !c->closed) {
        if (out_pending(c) >= OUT_HIGH_WATER)
            break;
        size_t e = s->next;
        bool is_cut = s->cut_at != SIZE_MAX && e == s->cut_at + 1;
        bool paced = (e >= 1 && e <= n) || is_cut;
        if (paced && c->r.delay_ms && !s->paced) {
            if (!loop_timer_armed(&c->pace))
                loop_timer_arm(c->f->l, &c->pace, c->r.delay_ms, on_pace, c);
            break;
        }
        s->paced = false;
        moved = true;
        if (is_cut) {
            apply_cut(c);
            break;
        }
        bool ok = s->responses ? emit_response_event(c, e, n) : emit_chat_event(c, e, n);
        if (!ok) {
            conn_close(c, false);
            break;
        }
        s->next++;
    }
    return moved;
}

static void start_stream(conn *c, bool responses)
{
    stream *s = &c->s;
    *s = (stream){.cut_at = SIZE_MAX, .chunked = true, .responses = responses};
    switch (c->fault.kind) {
    case FAKEAI_FAULT_CLOSE_AFTER:
    case FAKEAI_FAULT_RESET_AFTER:
    case FAKEAI_FAULT_HANG_AFTER:
    case FAKEAI_FAULT_BAD_CHUNKED:
        s->cut_at = c->fault.arg < c->r.chunks ? (size_t)c->fault.arg : c->r.chunks;
        break;
    case FAKEAI_FAULT_CLOSE_DELIMITED:
        s->chunked = false;
        c->after = AFTER_CLOSE; /* the end of the body is the end of the connection */
        break;
    case FAKEAI_FAULT_TRICKLE: c->trickling = true; break;
    case FAKEAI_FAULT_CRLF: s->crlf = true; break;
    case FAKEAI_FAULT_COMMENTS: s->comments = true; break;
    default: break;
    }
    char head[HEAD_ROOM];
    wbuf h = wbuf_over(head, sizeof head);
    put_head(&h, 200, "text/event-stream; charset=utf-8", s->chunked ? FRAME_CHUNKED : FRAME_NONE, 0,
             c->after == AFTER_NEXT, slice_of(c->request_id), SLICE_LIT("Cache-Control: no-cache\r\n"));
    c->resp = RESP_STREAM;
    if (h.overflow || !out_append(c, head, h.len))
        conn_close(c, false);
}

/* ---- fixed answers ---- */

/* A whole answer arrives when its streamed form would have finished. */
static void hold_like_stream(conn *c)
{
    size_t n = c->r.chunks;
    uint64_t wait = c->r.delay_ms * (uint64_t)n;
    if (n && wait / n != c->r.delay_ms)
        wait = MAX_DELAY_MS;
    if (wait && !c->closed) {
        c->hold = true;
        loop_timer_arm(c->f->l, &c->pace, wait < MAX_DELAY_MS ? wait : MAX_DELAY_MS, on_pace, c);
    }
}

static void answer_completion(conn *c)
{
    fakeai_reply_meta m = meta_of(c);
    wbuf b;
    if (!fixed_begin(c, 1024 + 6 * c->r.model_len + fakeai_text_bound(&m), &b))
        return;
    fakeai_format_completion(&b, &m);
    fixed_end(c, &b, 200, "application/json", (slice){NULL, 0});
    hold_like_stream(c);
}

static void answer_response(conn *c)
{
    fakeai_reply_meta m = meta_of(c);
    wbuf b;
    if (!fixed_begin(c, 1024 + 6 * c->r.model_len + fakeai_text_bound(&m), &b))
        return;
    fakeai_format_response(&b, &m, true);
    fixed_end(c, &b, 200, "application/json", (slice){NULL, 0});
    hold_like_stream(c);
}

static void answer_models(conn *c)
{
    slice ids[] = {{c->r.model, c->r.model_len}, SLICE_LIT(SECOND_MODEL)};
    wbuf b;
    if (!fixed_begin(c, 512 + c->r.model_len, &b))
        return;
    fakeai_format_models(&b, ids, c->f->faults ? 2 : 1);
    fixed_end(c, &b, 200, "application/json", (slice){NULL, 0});
}

static void answer_embeddings(conn *c)
{
    fakeai_reply_meta m = meta_of(c);
    wbuf b;
    if (!fixed_begin(c, 512 + c->r.model_len, &b))
        return;
    fakeai_format_embeddings(&b, &m);
    fixed_end(c, &b, 200, "application/json", (slice){NULL, 0});
}

/* TRACE, as an origin that honours it: the request head comes back as the
 * body, showing exactly what reached the upstream. */
static void answer_trace(conn *c)
{
    wbuf b;
    if (!fixed_begin(c, c->head_len, &b))
        return;
    wbuf_put(&b, c->in, c->head_len);
    fixed_end(c, &b, 200, "message/http", (slice){NULL, 0});
}

static void answer_stats(conn *c)
{
    const fakeai *f = c->f;
    wbuf b;
    if (!fixed_begin(c, 256 + 48 * COUNTED_PATH_SLOTS, &b))
        return;
    wbuf_puts(&b, "{\"open\":");
    wbuf_put_u64(&b, f->open);
    wbuf_puts(&b, ",\"total\":");
    wbuf_put_u64(&b, f->total);
    wbuf_puts(&b, ",\"requests\":");
    wbuf_put_u64(&b, f->requests);
    wbuf_puts(&b, ",\"resumed\":");
    wbuf_put_u64(&b, f->resumed);
    wbuf_puts(&b, ",\"by_path\":{");
    for (size_t i = 0; i < COUNTED_PATH_SLOTS; i++) {
        wbuf_puts(&b, i ? ",\"" : "\"");
        wbuf_puts(&b, i < COUNTED_PATH_SLOTS - 1 ? COUNTED_PATHS[i] : "other");
        wbuf_puts(&b, "\":");
        wbuf_put_u64(&b, f->by_path[i]);
    }
    wbuf_puts(&b, "}}");
    fixed_end(c, &b, 200, "application/json", (slice){NULL, 0});
}

static void answer_last(conn *c)
{
    const fakeai *f = c->f;
    if (!f->have_last) {
        answer_error(c, 404, "No /v1 request received yet.", "mock_error", NULL, NULL);
        return;
    }
    http_request *req = malloc(sizeof *req); /* ~3 KiB: not on the stack */
    size_t scanned = 0;
    if (!req || http_parse_request(f->last, f->last_head_len, MAX_HEAD, MAX_TARGET, &scanned, req) != HTTP_PARSE_DONE) {
        free(req);
        answer_error(c, 500, "Stored request does not parse.", "mock_error", NULL, NULL);
        return;
    }
    wbuf b;
    if (!fixed_begin(c, 256 + 6 * (f->last_head_len + f->last_body_len + sizeof f->last_sni), &b)) {
        free(req);
        return;
    }
    wbuf_puts(&b, "{\"method\":\"");
    wbuf_put_json_escaped(&b, req->method_name);
    wbuf_puts(&b, "\",\"path\":\"");
    wbuf_put_json_escaped(&b, req->path);
    wbuf_puts(&b, "\",\"query\":\"");
    wbuf_put_json_escaped(&b, req->query);
    wbuf_puts(&b, "\",\"headers\":{");
    for (size_t i = 0; i < req->header_count; i++) {
        const http_header *h = &req->headers[i];
        wbuf_puts(&b, i ? ",\"" : "\"");
        for (size_t k = 0; k < h->name.len; k++) /* token characters: no escaping needed */
            wbuf_put_char(&b, ascii_lower(h->name.ptr[k]));
        wbuf_puts(&b, "\":\"");
        wbuf_put_json_escaped(&b, h->value);
        wbuf_put_char(&b, '"');
    }
    wbuf_puts(&b, "},\"body\":\"");
    wbuf_put_json_escaped(&b, (slice){f->last + f->last_head_len, f->last_body_len});
    wbuf_puts(&b, "\",\"request_id\":\"");
    wbuf_puts(&b, f->last_request_id);
    /* null over plain HTTP, "" when a TLS client sent no SNI */
    wbuf_puts(&b, f->last_tls ? "\",\"tls_server_name\":\"" : "\",\"tls_server_name\":null");
    if (f->last_tls) {
        wbuf_put_json_escaped(&b, slice_of(f->last_sni));
        wbuf_put_char(&b, '"');
    }
    wbuf_puts(&b, "}");
    free(req);
    fixed_end(c, &b, 200, "application/json", (slice){NULL, 0});
}

/* ---- request dispatch ---- */

/* x-request-id as OpenAI sends it: "req_" and random hex. */
static void new_request_id(conn *c)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t bits = 0;
    memcpy(c->request_id, "req_", 4);
    for (size_t i = 0; i < REQUEST_ID_HEX; i++) {
        if (i % 16 == 0)
            bits = next_random(c->f);
        c->request_id[4 + i] = hex[bits & 15];
        bits >>= 4;
    }
    c->request_id[4 + REQUEST_ID_HEX] = '\0';
}

/* Resets the per-answer state as a new answer starts. With faults on, every
 * answer to a /v1 request gets its own x-request-id. */
static void begin_answer(conn *c, after_kind after)
{
    c->state = CONN_RESPOND;
    c->resp = RESP_FIXED;
    c->resp_done = c->hold = c->trickling = c->trickle_wait = false;
    c->head_only = false;
    c->after = after;
    c->fault = (fakeai_fault){FAKEAI_FAULT_NONE, 0};
    c->request_id[0] = '\0';
    if (c->f->faults && c->v1)
        new_request_id(c);
}

static void answer_too_large(conn *c)
{
    begin_answer(c, AFTER_CLOSE); /* the body is not read */
    answer_error(c, 413, "Request body too large for the mock.", "invalid_request_error", NULL, NULL);
}

static void remember_last(fakeai *f, const conn *c, slice body)
{
    size_t need = c->head_len + body.len;
    if (need > f->last_cap) {
        char *p = realloc(f->last, need);
        if (!p) {
            f->have_last = false;
            return;
        }
        f->last = p;
        f->last_cap = need;
    }
    memcpy(f->last, c->in, c->head_len);
    if (body.len)
        memcpy(f->last + c->head_len, body.ptr, body.len);
    f->last_head_len = c->head_len;
    f->last_body_len = body.len;
    memcpy(f->last_request_id, c->request_id, sizeof f->last_request_id);
    f->last_tls = c->tls != NULL;
    snprintf(f->last_sni, sizeof f->last_sni, "%s", c->tls ? tls_server_name(c->tls) : "");
    f->have_last = true;
}

static bool authorized(const fakeai *f, const http_request *req)
{
    if (!f->expect_key)
        return true;
    const http_header *h = http_find_header(req->headers, req->header_count, SLICE_LIT("authorization"));
    if (!h || !slice_starts_with(h->value, SLICE_LIT("Bearer ")))
        return false;
    slice key = {h->value.ptr + 7, h->value.len - 7};
    return slice_eq(key, slice_of(f->expect_key));
}

/* X-Mock-Fault-Times: K with X-Mock-Id: ID plays the fault for the first K
 * requests carrying that id only, so a retry of the same request succeeds. */
static bool fault_still_due(conn *c)
{
    const http_request *req = &c->req;
    const http_header *times = http_find_header(req->headers, req->header_count, SLICE_LIT("x-mock-fault-times"));
    const http_header *id = http_find_header(req->headers, req->header_count, SLICE_LIT("x-mock-id"));
    uint64_t k;
    if (!times || !id || !slice_to_u64(times->value, 1000000, &k))
        return true;
    fakeai *f = c->f;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < id->value.len; i++)
        h = (h ^ (unsigned char)id->value.ptr[i]) * 1099511628211ull;
    size_t n = sizeof f->fault_ids / sizeof f->fault_ids[0];
    for (size_t i = 0; i < n; i++)
        if (f->fault_ids[i].id_hash == h && f->fault_ids[i].count)
            return f->fault_ids[i].count++ < k;
    size_t slot = f->fault_id_next++ % n; /* the oldest id makes room */
    f->fault_ids[slot].id_hash = h;
    f->fault_ids[slot].count = 1;
    return k > 0;
}

/* Reads X-Mock-Chunks / X-Mock-Delay-Ms / X-Mock-Event-Size / X-Mock-Fault / X-Mock-Usage;
 * false (and an answer queued) when one is malformed. */
static bool read_overrides(conn *c)
{
    const http_request *req = &c->req;
    const http_header *h = http_find_header(req->headers, req->header_count, SLICE_LIT("x-mock-chunks"));
    uint64_t v;
    if (h) {
        if (!slice_to_u64(h->value, MAX_CHUNKS, &v)) {
            answer_error(c, 400, "X-Mock-Chunks must be an integer from 0 to 1000000.", "mock_error", NULL, NULL);
            return false;
        }
        c->r.chunks = (size_t)v;
    }
    h = http_find_header(req->headers, req->header_count, SLICE_LIT("x-mock-delay-ms"));
    if (h) {
        if (!slice_to_u64(h->value, MAX_DELAY_MS, &v)) {
            answer_error(c, 400, "X-Mock-Delay-Ms must be an integer from 0 to 3600000.", "mock_error", NULL, NULL);
            return false;
        }
        c->r.delay_ms = v;
    }
    h = http_find_header(req->headers, req->header_count, SLICE_LIT("x-mock-event-size"));
    if (h) {
        if (!slice_to_u64(h->value, MAX_EVENT_SIZE, &v)) {
            answer_error(c, 400, "X-Mock-Event-Size must be an integer from 0 to 67108864.", "mock_error", NULL, NULL);
            return false;
        }
        c->r.event_size = (size_t)v;
    }
    h = http_find_header(req->headers, req->header_count, SLICE_LIT("x-mock-fault"));
    if (h && !fakeai_parse_fault(h->value, &c->fault)) {
        answer_error(c, 400, "Unknown X-Mock-Fault.", "mock_error", NULL, NULL);
        return false;
    }
    h = http_find_header(req->headers, req->header_count, SLICE_LIT("x-mock-usage"));
    if (h) {
        if (!fakeai_parse_usage(h->value, &c->r.usage_prompt, &c->r.usage_completion)) {
            answer_error(c, 400, "X-Mock-Usage must be P,C: two integers from 0 to 9007199254740991.", "mock_error",
                         NULL, NULL);
            return false;
        }
        c->r.usage_set = true;
    }
    return true;
}

static void set_model(conn *c, slice model)
{
    /* The request's model is echoed when it is short and escape-free (it is
     * then valid inside our JSON strings as is). */
    const fakeai *f = c->f;
    bool usable = model.len > 0 && model.len < MODEL_MAX && !memchr(model.ptr, '\\', model.len);
    if (!usable)
        model = slice_of(f->model);
    memcpy(c->r.model, model.ptr, model.len);
    c->r.model_len = model.len;
}

static void new_reply(conn *c, slice body)
{
    fakeai *f = c->f;
    reply *r = &c->r;
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    memcpy(r->id, "chatcmpl-", 9);
    for (size_t i = 0; i < ID_LEN; i++)
        r->id[9 + i] = alnum[next_random(f) % (sizeof alnum - 1)];
    r->id[9 + ID_LEN] = '\0';
    memcpy(r->item_id, "msg_", 4);
    memcpy(r->item_id + 4, r->id + 9, ID_LEN + 1);
    r->created = (uint64_t)time(NULL);
    r->chunks = f->word_count ? f->word_count : f->chunks;
    r->delay_ms = f->delay_ms;
    r->prompt_tokens = body.len / 4 > 0 ? body.len / 4 : 1; /* deterministic, roughly OpenAI's scale */
    r->include_usage = false;
    r->usage_set = false;
    r->event_size = 0;
    set_model(c, (slice){NULL, 0});
}

/* Takes the reply's model from a JSON request body and tells whether it
 * asks for a stream; false when the body is no JSON object. */
static bool inspect_body(conn *c, slice body, json_request_info *info)
{
    arena a;
    arena_init(&a);
    const char *why = NULL;
    int rc = json_inspect_request(body.ptr, body.len, &a, info, &why);
    if (rc == 0)
        set_model(c, info->model);
    arena_reset(&a);
    return rc == 0;
}

/* Uploads (files, audio): what arrived, so a test can check it byte for
 * byte without the mock echoing megabytes: size, SHA-256, content type. */
static void answer_upload(conn *c, slice body)
{
    unsigned char digest[32];
    br_sha256_context h;
    br_sha256_init(&h);
    br_sha256_update(&h, body.ptr, body.len);
    br_sha256_out(&h, digest);
    const http_header *ct = http_find_header(c->req.headers, c->req.header_count, SLICE_LIT("content-type"));
    wbuf b;
    if (!fixed_begin(c, 512 + (ct ? 6 * ct->value.len : 0), &b))
        return;
    bool audio = slice_starts_with(c->req.path, SLICE_LIT("/v1/audio/"));
    wbuf_puts(&b, audio ? "{\"text\":\"mock transcript\",\"bytes\":" : "{\"id\":\"file-mock\",\"object\":\"file\",\"bytes\":");
    wbuf_put_u64(&b, body.len);
    wbuf_puts(&b, ",\"sha256\":\"");
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof digest; i++) {
        wbuf_put_char(&b, hex[digest[i] >> 4]);
        wbuf_put_char(&b, hex[digest[i] & 15]);
    }
    wbuf_puts(&b, "\",\"content_type\":\"");
    if (ct)
        wbuf_put_json_escaped(&b, ct->value);
    wbuf_puts(&b, audio ? "\"}" : "\",\"filename\":\"upload\",\"purpose\":\"assistants\",\"status\":\"processed\"}");
    fixed_end(c, &b, 200, "application/json", (slice){NULL, 0});
}

static void route_v1(conn *c, slice body)
{
    const http_request *req = &c->req;
    bool post = req->method == HTTP_POST;
    bool chat = slice_eq(req->path, SLICE_LIT("/v1/chat/completions"));
    bool embeddings = slice_eq(req->path, SLICE_LIT("/v1/embeddings"));
    bool responses = c->f->faults && slice_eq(req->path, SLICE_LIT("/v1/responses"));
    if (post && (chat || embeddings || responses)) {
        json_request_info info;
        if (!inspect_body(c, body, &info)) {
            answer_error(c, 400,
                         "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                         "using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
                         "invalid_request_error", NULL, NULL);
            return;
        }
        c->r.include_usage = chat && info.stream && info.client_wants_usage;
        if (responses) { /* same random part, the Responses API's prefix */
            memcpy(c->r.id, "resp_", 5);
            memcpy(c->r.id + 5, c->r.item_id + 4, ID_LEN + 1);
        }
        if (embeddings)
            answer_embeddings(c);
        else if (info.stream)
            start_stream(c, responses);
        else if (responses)
            answer_response(c);
        else
            answer_completion(c);
        return;
    }
    if ((req->method == HTTP_GET || req->method == HTTP_HEAD) && slice_eq(req->path, SLICE_LIT("/v1/models"))) {
        answer_models(c);
        return;
    }
    if (post && c->f->faults && (slice_eq(req->path, SLICE_LIT("/v1/files")) ||
                                 slice_starts_with(req->path, SLICE_LIT("/v1/audio/")))) {
        answer_upload(c, body);
        return;
    }
    char msg[160];
    snprintf(msg, sizeof msg, "Invalid URL (%.*s %.*s)", (int)(req->method_name.len > 16 ? 16 : req->method_name.len),
             req->method_name.ptr, (int)(req->path.len > 100 ? 100 : req->path.len), req->path.ptr);
    answer_error(c, 404, msg, "invalid_request_error", NULL, NULL);
}

/* ---- the leaking faults: providers that repeat the key, for the gateway to scrub ---- */

/* The key the request's Authorization header carries; empty without one. */
static slice request_key(const conn *c)
{
    const http_header *h = http_find_header(c->req.headers, c->req.header_count, SLICE_LIT("authorization"));
    return h ? fakeai_bearer_key(h->value) : (slice){"", 0};
}

/* echo:CODE: the key in the error message and in two headers. */
static void answer_echo(conn *c, int status, slice body)
{
    slice key = request_key(c), said = fakeai_body_prefix(body);
    size_t extra_cap = 2 * key.len + 64;
    char *extra = malloc(extra_cap); /* a key can be as long as a header: not on the stack */
    if (!extra) {
        conn_close(c, false);
        return;
    }
    wbuf x = wbuf_over(extra, extra_cap);
    wbuf_puts(&x, "X-Mock-Echo: ");
    wbuf_put_slice(&x, key);
    wbuf_puts(&x, "\r\nWWW-Authenticate: Bearer realm=\"");
    wbuf_put_slice(&x, key);
    wbuf_puts(&x, "\"\r\n");
    wbuf b;
    if (x.overflow)
        conn_close(c, false);
    else if (fixed_begin_room(c, HEAD_ROOM + x.len, 256 + 6 * (key.len + said.len), &b)) {
        fakeai_format_echo_error(&b, key, said);
        fixed_end(c, &b, status, "application/json", wbuf_slice(&x));
    }
    free(extra);
}

/* html:CODE: an nginx-style error page, with the key in a comment. */
static void answer_html(conn *c, int status)
{
    slice key = request_key(c);
    wbuf b;
    if (!fixed_begin(c, 256 + key.len, &b))
        return;
    fakeai_format_html_error(&b, (uint64_t)status, key);
    fixed_end(c, &b, status, "text/html", (slice){NULL, 0});
}

/* echo-event: a chat stream of a role chunk and two content chunks, then an
 * error event repeating the key and the body's start, then the end of the
 * body without [DONE]. Queued at once: the body is gone after dispatch. */
static void answer_echo_event(conn *c, slice body)
{
    json_request_info info;
    inspect_body(c, body, &info); /* the model, if the body names one; any body will do */
    start_stream(c, false);
    if (c->closed)
        return;
    slice key = request_key(c), said = fakeai_body_prefix(body);
    size_t contents = c->r.chunks < 2 ? c->r.chunks : 2;
    bool ok = true;
    for (size_t e = 0; ok && e <= contents; e++)
        ok = emit_chat_event(c, e, c->r.chunks);
    wbuf b;
    if (!ok || !event_begin(c, 256 + 6 * (key.len + said.len), &b)) {
        conn_close(c, false);
        return;
    }
    wbuf_puts(&b, "data: ");
    fakeai_format_echo_event(&b, key, said);
    wbuf_puts(&b, eol_of(c));
    wbuf_puts(&b, eol_of(c));
    if (!event_end(c, &b) || !end_body(c))
        conn_close(c, false);
}

static void dispatch(conn *c, slice body)
{
    fakeai *f = c->f;
    const http_request *req = &c->req;
    begin_answer(c, req->keep_alive ? AFTER_NEXT : AFTER_CLOSE);
    c->head_only = req->method == HTTP_HEAD;
    new_reply(c, body);

    if (f->faults && slice_starts_with(req->path, SLICE_LIT("/_mock/"))) {
        if (req->method == HTTP_GET && slice_eq(req->path, SLICE_LIT("/_mock/stats")))
            answer_stats(c);
        else if (req->method == HTTP_GET && slice_eq(req->path, SLICE_LIT("/_mock/last")))
            answer_last(c);
        else
            answer_error(c, 404, "Unknown mock endpoint.", "mock_error", NULL, NULL);
        return;
    }
    if (!is_v1(req->path)) {
        answer_error(c, 404, "Not found.", "invalid_request_error", NULL, NULL);
        return;
    }
    if (!c->counted) {
        c->counted = true;
        f->open++;
        f->total++;
        if (c->tls && tls_resumed(c->tls))
            f->resumed++;
    }
    f->requests++;
    size_t slot = 0;
    while (slot < COUNTED_PATH_SLOTS - 1 && !slice_eq(req->path, slice_of(COUNTED_PATHS[slot])))
        slot++;
    f->by_path[slot]++;
    remember_last(f, c, body);
    /* An origin that honours TRACE echoes it before any API logic runs. */
    if (f->faults && slice_eq(req->method_name, SLICE_LIT("TRACE"))) {
        answer_trace(c);
        return;
    }
    if (!authorized(f, req)) {
        bool none = !http_find_header(req->headers, req->header_count, SLICE_LIT("authorization"));
        answer_error(c, 401,
                     none ? "You didn't provide an API key. You need to provide your API key in an Authorization "
                            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                          : "Incorrect API key provided.",
                     "invalid_request_error", none ? NULL : "invalid_api_key", NULL);
        return;
    }
    if (f->faults && !read_overrides(c))
        return;
    if (f->fail_status) {
        answer_status_fault(c, f->fail_status);
        return;
    }
    if (c->fault.kind != FAKEAI_FAULT_NONE && !fault_still_due(c))
        c->fault.kind = FAKEAI_FAULT_NONE;
    switch (c->fault.kind) {
    case FAKEAI_FAULT_STATUS: {
        fakeai_fault status = c->fault;
        c->fault.kind = FAKEAI_FAULT_NONE; /* the error answer itself is well formed */
        answer_status_fault(c, (int)status.arg);
        return;
    }
    case FAKEAI_FAULT_GARBAGE: {
        static const char garbage[] = "SSH-2.0-notHTTP\r\n\x01\x02\xff garbage, not an HTTP response\r\n\r\n";
        if (!out_append(c, garbage, sizeof garbage - 1)) {
            conn_close(c, false);
            return;
        }
        c->after = AFTER_CLOSE;
        c->resp_done = true;
        return;
    }
    case FAKEAI_FAULT_HANG: c->state = CONN_HANG; return;
    case FAKEAI_FAULT_ECHO:
    case FAKEAI_FAULT_HTML: {
        fakeai_fault leak = c->fault;
        c->fault.kind = FAKEAI_FAULT_NONE; /* well framed: only the content leaks */
        if (leak.kind == FAKEAI_FAULT_ECHO)
            answer_echo(c, (int)leak.arg, body);
        else
            answer_html(c, (int)leak.arg);
        return;
    }
    case FAKEAI_FAULT_ECHO_EVENT: answer_echo_event(c, body); return;
    default: route_v1(c, body); return;
    }
}

/* ---- request parsing ---- */

static void answer_parse_error(conn *c, http_parse_result r, const char *why)
{
    static const int status[] = {
        [HTTP_PARSE_BAD_REQUEST] = 400,     [HTTP_PARSE_URI_TOO_LONG] = 414,
        [HTTP_PARSE_HEADERS_TOO_LARGE] = 431, [HTTP_PARSE_NOT_IMPLEMENTED] = 501,
        [HTTP_PARSE_BAD_VERSION] = 505,
    };
    begin_answer(c, AFTER_CLOSE); /* framing is in doubt */
    int code = (size_t)r < sizeof status / sizeof status[0] && status[r] ? status[r] : 400;
    answer_error(c, code, why ? why : "Malformed request.", "invalid_request_error", NULL, NULL);
}

/* Parses what the buffer holds. Returns true when an answer was started. */
static bool parse_step(conn *c)
{
    if (c->state == CONN_READ_HEAD) {
        if (c->in_len == 0)
            return false;
        http_parse_result r = http_parse_request(c->in, c->in_len, MAX_HEAD, MAX_TARGET, &c->scanned, &c->req);
        if (r == HTTP_PARSE_INCOMPLETE)
            return false;
        c->v1 = r == HTTP_PARSE_DONE && is_v1(c->req.path);
        if (r != HTTP_PARSE_DONE) {
            answer_parse_error(c, r, c->req.error);
            return true;
        }
        c->head_len = c->req.head_len;
        if (c->req.body_kind == HTTP_BODY_LENGTH && c->req.content_length > MAX_BODY) {
            answer_too_large(c);
            return true;
        }
        c->state = CONN_READ_BODY;
        c->body_len = 0;
        c->raw_pos = c->head_len;
        c->chunked = (http_chunked){0};
        bool complete = c->req.body_kind == HTTP_BODY_NONE ||
                        (c->req.body_kind == HTTP_BODY_LENGTH && c->in_len - c->head_len >= c->req.content_length);
        if (c->req.expect_continue && !complete) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            if (!out_append(c, cont, sizeof cont - 1)) {
                conn_close(c, false);
                return true;
            }
        }
    }

    size_t consumed;
    switch (c->req.body_kind) {
    case HTTP_BODY_NONE:
        c->body_len = 0;
        consumed = c->head_len;
        break;
    case HTTP_BODY_LENGTH:
        if (c->in_len - c->head_len < c->req.content_length)
            return false;
        c->body_len = (size_t)c->req.content_length;
        consumed = c->head_len + c->body_len;
        break;
    case HTTP_BODY_CHUNKED: {
        /* Decode in place: payload moves down over the framing, and the
         * undecoded rest is kept right after it. */
        size_t used = 0, produced = 0;
        size_t dst = c->head_len + c->body_len;
        http_chunked_result cr = http_chunked_decode(&c->chunked, c->in + dst, c->in + c->raw_pos,
                                                     c->in_len - c->raw_pos, &used, &produced);
        c->body_len += produced;
        dst += produced;
        size_t rest = c->in_len - c->raw_pos - used;
        memmove(c->in + dst, c->in + c->raw_pos + used, rest);
        c->in_len = dst + rest;
        c->raw_pos = dst;
        if (cr == CHUNKED_ERROR) {
            answer_parse_error(c, HTTP_PARSE_BAD_REQUEST, "malformed chunked request body");
            return true;
        }
        if (c->body_len > MAX_BODY) {
            answer_too_large(c);
            return true;
        }
        if (cr == CHUNKED_MORE)
            return false;
        consumed = dst;
        break;
    }
    default:
        answer_parse_error(c, HTTP_PARSE_BAD_REQUEST, NULL);
        return true;
    }

    /* The buffer may have moved since the head was parsed: refresh the slices. */
    size_t scanned = 0;
    http_parse_request(c->in, c->head_len, MAX_HEAD, MAX_TARGET, &scanned, &c->req);
    dispatch(c, (slice){c->in + c->head_len, c->body_len});
    if (c->closed)
        return true;
    /* Everything the answer needs was copied: drop the request, keep what was
     * pipelined behind it. */
    memmove(c->in, c->in + consumed, c->in_len - consumed);
    c->in_len -= consumed;
    c->scanned = 0;
    return true;
}

/* ---- the connection's driver ---- */

static void start_linger(conn *c)
{
    if (c->tls)
        tls_close(c->tls, c->fd);
    shutdown(c->fd, SHUT_WR);
    c->state = CONN_LINGER;
    c->in_len = 0;
    loop_timer_arm(c->f->l, &c->pace, LINGER_MS, on_pace, c);
}

static void response_complete(conn *c)
{
    if (c->out_cap > OUT_KEEP) {
        free(c->out);
        c->out = NULL;
        c->out_cap = c->out_len = c->out_off = 0;
    }
    if (c->in_cap > IN_IDLE_MAX && c->in_len <= IN_INITIAL) { /* a big body is gone: give its room back */
        char *p = realloc(c->in, IN_INITIAL);
        if (p) {
            c->in = p;
            c->in_cap = IN_INITIAL;
        }
    }
    c->trickling = c->trickle_wait = false;
    switch (c->after) {
    case AFTER_NEXT: c->state = CONN_READ_HEAD; break;
    case AFTER_CLOSE: start_linger(c); break;
    case AFTER_RESET: conn_close(c, true); break;
    case AFTER_HANG: c->state = CONN_HANG; break;
    }
}

static void update_events(conn *c)
{
    if (c->closed)
        return;
    bool want_read = c->state == CONN_LINGER || c->in_len < in_limit(c);
    uint32_t ev = EPOLLRDHUP;
    if (c->tls) {
        uint32_t t = tls_events(c->tls);
        if (want_read || !tls_handshake_done(c->tls))
            ev |= t & EPOLLIN;
        ev |= t & EPOLLOUT;
    } else {
        if (want_read)
            ev |= EPOLLIN;
        if (out_pending(c) && !c->hold && !c->trickle_wait)
            ev |= EPOLLOUT;
    }
    if (loop_io_set(c->f->l, &c->io, ev) != 0)
        conn_close(c, false);
}

/* Moves the connection as far as it can go without waiting. */
static void conn_drive(conn *c)
{
    while (!c->closed) {
        bool moved = false;
        if (c->state == CONN_READ_HEAD || c->state == CONN_READ_BODY)
            moved = parse_step(c);
        else if (c->state == CONN_RESPOND && c->resp == RESP_STREAM && !c->resp_done)
            moved = stream_pump(c);
        if (c->closed)
            return;
        size_t queued = out_pending(c);
        flush_status fs = conn_flush(c);
        if (fs == FLUSH_FAILED)
            return;
        /* Bytes went out: a stream stopped at its high-water mark may produce
         * again, and nothing else would wake it once the buffer is empty
         * (update_events asks for EPOLLOUT only while bytes wait). */
        if (out_pending(c) < queued)
            moved = true;
        if (fs == FLUSH_EMPTY && c->state == CONN_RESPOND && c->resp_done) {
            response_complete(c);
            moved = true;
        }
        /* The state now takes more input (a head parsed, a request answered):
         * pick up what reading left behind when it paused. */
        if (c->in_paused && c->in_len < in_limit(c)) {
            size_t had = c->in_len;
            conn_read(c);
            if (c->closed)
                return;
            if (c->in_len > had)
                moved = true;
        }
        if (!moved)
            break;
    }
    update_events(c);
}

static void conn_read(conn *c)
{
    c->in_paused = false;
    for (;;) {
        if (c->in_len == c->in_cap && !in_grow(c)) {
            c->in_paused = true; /* update_events stops asking for input */
            return;
        }
        ssize_t n = io_read(c, c->in + c->in_len, c->in_cap - c->in_len);
        if (n > 0) {
            if (c->state != CONN_LINGER)
                c->in_len += (size_t)n;
            continue;
        }
        if (n == 0) {
            c->peer_gone = true;
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            conn_close(c, false);
        return;
    }
}

static void on_conn_io(void *ctx, uint32_t events)
{
    conn *c = ctx;
    if (events & EPOLLERR) {
        conn_close(c, false);
        return;
    }
    if (c->tls || (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))) {
        conn_read(c);
        if (c->closed)
            return;
        /* Input paused and the peer hung up: nobody is left to answer. */
        if ((events & (EPOLLRDHUP | EPOLLHUP)) && c->in_len >= in_limit(c))
            c->peer_gone = true;
    }
    conn_drive(c);
    /* A peer that left cancels what it asked for: what could be written was. */
    if (c->peer_gone)
        conn_close(c, false);
}

static void on_pace(void *ctx)
{
    conn *c = ctx;
    if (c->state == CONN_LINGER) {
        conn_close(c, false);
        return;
    }
    if (c->hold)
        c->hold = false;
    else
        c->s.paced = true;
    conn_drive(c);
}

static void on_trickle(void *ctx)
{
    conn *c = ctx;
    c->trickle_wait = false;
    conn_drive(c);
}

/* ---- listener ---- */

static void conn_open(fakeai *f, int fd)
{
    conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return;
    }
    c->f = f;
    c->fd = fd;
    c->state = CONN_READ_HEAD;
    int one = 1; /* SSE events are small writes that must leave at once */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (f->tls && !(c->tls = tls_server_new(f->tls))) {
        close(fd);
        free(c);
        return;
    }
    if (!in_grow(c) || loop_io_add(f->l, &c->io, fd, EPOLLIN | EPOLLRDHUP, on_conn_io, c) != 0) {
        tls_free(c->tls);
        free(c->in);
        close(fd);
        free(c);
        return;
    }
    c->next = f->conns;
    if (f->conns)
        f->conns->prev = c;
    f->conns = c;
}

static void on_accept_retry(void *ctx)
{
    fakeai *f = ctx;
    loop_io_set(f->l, &f->lio, EPOLLIN);
}

static void on_accept(void *ctx, uint32_t events)
{
    fakeai *f = ctx;
    (void)events;
    for (;;) {
        int fd = accept4(f->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            conn_open(f, fd);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* Out of descriptors: stop listening for a moment instead of spinning. */
            loop_io_set(f->l, &f->lio, 0);
            loop_timer_arm(f->l, &f->accept_retry, ACCEPT_RETRY_MS, on_accept_retry, f);
        }
        return;
    }
}

/* HOST:PORT with a literal host: IPv4, [IPv6], "localhost" (127.0.0.1), or
 * empty or "*" for every IPv4 address. No name lookup: a listener needs none. */
static int parse_listen(const char *addr, struct sockaddr_storage *ss, socklen_t *len, const char **why)
{
    const char *colon = strrchr(addr, ':');
    char host[64];
    size_t hl = colon ? (size_t)(colon - addr) : 0;
    if (!colon || hl >= sizeof host || !colon[1] || strlen(colon + 1) > 5) {
        *why = "listen address must be HOST:PORT";
        return -1;
    }
    unsigned long port = 0;
    for (const char *p = colon + 1; *p; p++) {
        if (*p < '0' || *p > '9') {
            *why = "listen address has an invalid port";
            return -1;
        }
        port = port * 10 + (unsigned long)(*p - '0');
    }
    if (port > 65535) {
        *why = "listen address has an invalid port";
        return -1;
    }
    memcpy(host, addr, hl);
    host[hl] = '\0';
    memset(ss, 0, sizeof *ss);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host + 1, &s6->sin6_addr) != 1) {
            *why = "listen address has an invalid IPv6 host";
            return -1;
        }
        *len = sizeof *s6;
        return 0;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)port);
    if (hl == 0 || strcmp(host, "*") == 0)
        s4->sin_addr.s_addr = htonl(INADDR_ANY);
    else if (strcmp(host, "localhost") == 0)
        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    else if (inet_pton(AF_INET, host, &s4->sin_addr) != 1) {
        *why = "listen address must be a literal IPv4, [IPv6] or localhost";
        return -1;
    }
    *len = sizeof *s4;
    return 0;
}

static int listen_on(const char *addr, char *bound, size_t bound_cap, const char **why)
{
    struct sockaddr_storage want;
    socklen_t want_len;
    if (parse_listen(addr, &want, &want_len, why) != 0)
        return -1;
    int fd = socket(want.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *why = "cannot bind the listen address";
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&want, want_len) != 0 || listen(fd, 1024) != 0) {
        close(fd);
        *why = "cannot bind the listen address";
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
            port = ntohs(s6->sin6_port);
            snprintf(bound, bound_cap, "[%s]:%u", ip, port);
        } else {
            const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
            port = ntohs(s4->sin_port);
            snprintf(bound, bound_cap, "%s:%u", ip, port);
        }
    }
    return fd;
}

/* ---- public API ---- */

static char *dup_or_null(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static void fakeai_free(fakeai *f)
{
    free(f->reply_text);
    free(f->model);
    free(f->expect_key);
    free(f->words);
    free(f->last);
    free(f);
}

fakeai *fakeai_start(loop *l, const char *listen_addr, const fakeai_config *cfg, const char **why)
{
    fakeai *f = calloc(1, sizeof *f);
    if (!f) {
        *why = "out of memory";
        return NULL;
    }
    f->l = l;
    f->lfd = -1;
    f->tls = cfg->tls;
    f->chunks = cfg->chunks > MAX_CHUNKS ? MAX_CHUNKS : cfg->chunks;
    f->delay_ms = cfg->delay_ms > MAX_DELAY_MS ? MAX_DELAY_MS : cfg->delay_ms;
    f->faults = cfg->faults;
    f->fail_status = cfg->fail_status;
    f->rng = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ 0x9e3779b97f4a7c15u;
    const char *model = cfg->model && cfg->model[0] && strlen(cfg->model) < MODEL_MAX ? cfg->model : "gpt-4o-mini";
    f->model = dup_or_null(model);
    f->reply_text = dup_or_null(cfg->reply_text);
    f->expect_key = dup_or_null(cfg->expect_key);
    bool oom = !f->model || (cfg->reply_text && !f->reply_text) || (cfg->expect_key && !f->expect_key);
    if (!oom && f->reply_text) {
        slice text = slice_of(f->reply_text);
        size_t n = fakeai_split_words(text, NULL, 0);
        if (n) {
            f->words = calloc(n, sizeof *f->words);
            oom = !f->words;
            if (!oom)
                f->word_count = fakeai_split_words(text, f->words, n);
        }
    }
    if (oom) {
        *why = "out of memory";
        fakeai_free(f);
        return NULL;
    }
    f->lfd = listen_on(listen_addr, f->address, sizeof f->address, why);
    if (f->lfd < 0) {
        fakeai_free(f);
        return NULL;
    }
    if (loop_io_add(l, &f->lio, f->lfd, EPOLLIN, on_accept, f) != 0) {
        *why = "cannot watch the listening socket";
        close(f->lfd);
        fakeai_free(f);
        return NULL;
    }
    return f;
}

const char *fakeai_address(const fakeai *f) { return f->address; }

void fakeai_stop(fakeai *f)
{
    if (!f)
        return;
    while (f->conns) {
        conn *c = f->conns;
        conn_release(c, false);
        free(c);
    }
    loop_timer_stop(f->l, &f->accept_retry);
    loop_io_del(f->l, &f->lio);
    close(f->lfd);
    fakeai_free(f);
}
