#include "core/log.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/wbuf.h"

static log_format format = LOG_JSON;

enum { BATCH_SIZE = 64 * 1024, LINE_MAX_BYTES = 4096 };
static char batch[BATCH_SIZE];
static size_t batch_len;
static loop *batch_loop;
static loop_deferred batch_flush;

void log_set_format(log_format f) { format = f; }

static void write_all(const char *p, size_t left)
{
    while (left) {
        ssize_t n = write(STDERR_FILENO, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* a stuck stderr must not stop the gateway */
        p += n;
        left -= (size_t)n;
    }
}

/* In pieces of at most PIPE_BUF bytes cut at line ends: such a write to a
 * pipe is atomic, so the lines of workers sharing one stderr never mix. */
void log_flush(void)
{
    size_t done = 0;
    while (done < batch_len) {
        size_t piece = batch_len - done;
        if (piece > PIPE_BUF) {
            const char *nl = memrchr(batch + done, '\n', PIPE_BUF);
            piece = nl ? (size_t)(nl - (batch + done)) + 1 : PIPE_BUF;
        }
        write_all(batch + done, piece);
        done += piece;
    }
    batch_len = 0;
}

static void flush_deferred(void *ctx)
{
    (void)ctx;
    log_flush();
}

void log_attach(loop *l)
{
    log_flush();
    batch_loop = l;
}

static void put_timestamp(wbuf *b)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char text[32];
    size_t n = strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
    wbuf_put(b, text, n);
    long ms = ts.tv_nsec / 1000000;
    char frac[5] = {'.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 'Z'};
    wbuf_put(b, frac, sizeof frac);
}

/* Whole lines only, so lines from concurrent processes do not interleave. */
static void emit(wbuf *b, bool batched)
{
    if (b->overflow) {
        b->overflow = false;
        b->len = b->cap - 1;
    }
    b->ptr[b->len++] = '\n';
    if (!batched || !batch_loop) {
        log_flush(); /* keep the order of lines */
        write_all(b->ptr, b->len);
        return;
    }
    if (b->len > BATCH_SIZE - batch_len)
        log_flush();
    memcpy(batch + batch_len, b->ptr, b->len);
    batch_len += b->len;
    loop_defer(batch_loop, &batch_flush, flush_deferred, NULL);
}

static void field_str(wbuf *b, bool *first, const char *key, slice value)
{
    if (format == LOG_JSON) {
        wbuf_puts(b, *first ? "{\"" : ",\"");
        wbuf_puts(b, key);
        wbuf_puts(b, "\":\"");
        wbuf_put_json_escaped(b, value);
        wbuf_put_char(b, '"');
    } else {
        if (!*first)
            wbuf_put_char(b, ' ');
        wbuf_puts(b, key);
        wbuf_put_char(b, '=');
        wbuf_put_json_escaped(b, value);
    }
    *first = false;
}

static void field_num(wbuf *b, bool *first, const char *key, int64_t value)
{
    wbuf_puts(b, format == LOG_JSON ? (*first ? "{\"" : ",\"") : (*first ? "" : " "));
    wbuf_puts(b, key);
    wbuf_puts(b, format == LOG_JSON ? "\":" : "=");
    wbuf_put_i64(b, value);
    *first = false;
}

static void begin(wbuf *b, bool *first, const char *level)
{
    char ts[40];
    wbuf t = wbuf_over(ts, sizeof ts);
    put_timestamp(&t);
    field_str(b, first, "ts", wbuf_slice(&t));
    field_str(b, first, "level", slice_of(level));
}

static void finish(wbuf *b, bool batched)
{
    if (format == LOG_JSON)
        wbuf_put_char(b, '}');
    emit(b, batched);
}

void log_access(const access_record *r)
{
    char mem[LINE_MAX_BYTES];
    wbuf b = wbuf_over(mem, sizeof mem - 1);
    bool first = true;
    begin(&b, &first, r->status >= 500 ? "error" : r->status >= 400 ? "warn" : "info");
    field_str(&b, &first, "req_id", r->req_id);
    field_str(&b, &first, "method", r->method);
    field_str(&b, &first, "path", r->path);
    field_num(&b, &first, "status", r->status);
    field_str(&b, &first, "client", r->client);
    field_str(&b, &first, "model", r->model);
    field_str(&b, &first, "upstream", r->upstream);
    field_str(&b, &first, "upstream_req_id", r->upstream_req_id);
    field_num(&b, &first, "ttfb_ms", r->ttfb_ms);
    field_num(&b, &first, "dur_ms", (int64_t)r->dur_ms);
    field_num(&b, &first, "bytes_in", (int64_t)r->bytes_in);
    field_num(&b, &first, "bytes_out", (int64_t)r->bytes_out);
    field_num(&b, &first, "chunks", (int64_t)r->chunks);
    field_num(&b, &first, "prompt_tokens", (int64_t)r->prompt_tokens);
    field_num(&b, &first, "completion_tokens", (int64_t)r->completion_tokens);
    field_num(&b, &first, "retries", r->retries);
    if (format == LOG_JSON)
        wbuf_puts(&b, r->resumed ? ",\"resumed\":true" : ",\"resumed\":false");
    else
        wbuf_puts(&b, r->resumed ? " resumed=true" : " resumed=false");
    if (r->error)
        field_str(&b, &first, "error", slice_of(r->error));
    else if (format == LOG_JSON)
        wbuf_puts(&b, ",\"error\":null");
    finish(&b, true);
}

void log_message(const char *level, const char *msg, const log_field *fields, size_t count)
{
    char mem[2048];
    wbuf b = wbuf_over(mem, sizeof mem - 1);
    bool first = true;
    begin(&b, &first, level);
    field_str(&b, &first, "msg", slice_of(msg));
    for (size_t i = 0; i < count; i++)
        field_str(&b, &first, fields[i].key, slice_of(fields[i].value));
    finish(&b, false);
}
