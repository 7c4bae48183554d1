#include "core/log.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static log_format format = LOG_JSON;

/* A string value longer than VALUE_MAX bytes once escaped is cut there and
 * ends in "...", so that a hostile path or model name cannot make a line
 * longer than LINE_MAX_BYTES: every line stays whole, valid JSON. */
enum { VALUE_MAX = 1024, CUT_MARK_LEN = 3 };
/* The longest access line: 8 strings at their limit, 10 numbers of at most
 * 20 digits, and keys, timestamp, level and punctuation (under 600 bytes). */
enum {
    ACCESS_LINE_WORST = 8 * VALUE_MAX + 10 * 20 + 600,
    LINE_MAX_BYTES = 12 * 1024,
    BATCH_SIZE = 64 * 1024,
};
/* When a batch of access lines goes out: when the next line would take it
 * past PIPE_BUF (so that it leaves in one atomic write, cut at no search),
 * else FLUSH_MS after its first line. Not once per tick: at low concurrency
 * a tick is one request, and its write(2) would sit on the latency path. */
enum { FLUSH_MS = 20 };
_Static_assert(ACCESS_LINE_WORST <= LINE_MAX_BYTES, "an access line always fits its buffer");
_Static_assert(BATCH_SIZE >= 2 * LINE_MAX_BYTES, "a batch holds a few worst-case lines");

static char batch[BATCH_SIZE];
static size_t batch_len;
static loop *batch_loop;
static loop_timer batch_timer;
static bool flush_at_exit;

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

static void flush_due(void *ctx)
{
    (void)ctx;
    log_flush();
}

void log_attach(loop *l)
{
    log_flush();
    if (batch_loop && loop_timer_armed(&batch_timer))
        loop_timer_stop(batch_loop, &batch_timer);
    batch_loop = l;
    if (l && !flush_at_exit) /* exit() from anywhere still writes what is batched */
        flush_at_exit = atexit(log_flush) == 0;
}

/* wbuf_put for short pieces whose length is known where it is called: once
 * inlined, the copy is a few moves instead of a call. */
static inline void put_bytes(wbuf *b, const char *s, size_t n)
{
    if (b->overflow || n > b->cap - b->len) {
        b->overflow = true;
        return;
    }
    memcpy(b->ptr + b->len, s, n);
    b->len += n;
}

#define LIT(s) (s), sizeof(s) - 1

/* ---- timestamp ----------------------------------------------------------- */

/* The Gregorian date of a day counted from 1970-01-01. Years are counted from
 * March, so that February, and its leap day, ends the year; then every 400
 * years (146097 days) repeat, and within them the year and the day of the
 * year follow from the 4/100/400-year leap rules without tables. */
static void date_of_day(int64_t days, int64_t *year, unsigned *month, unsigned *day)
{
    days += 719468; /* days from 0000-03-01 to 1970-01-01 */
    int64_t era = (days >= 0 ? days : days - 146096) / 146097;
    int64_t day_of_era = days - era * 146097;                                    /* 0..146096 */
    int64_t year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365; /* 0..399 */
    int64_t day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); /* 0..365 */
    int64_t month_from_march = (5 * day_of_year + 2) / 153;                       /* 0..11 */
    *day = (unsigned)(day_of_year - (153 * month_from_march + 2) / 5 + 1);
    *month = (unsigned)(month_from_march < 10 ? month_from_march + 3 : month_from_march - 9);
    *year = year_of_era + era * 400 + (*month <= 2);
}

static void put_2digits(char *at, unsigned v)
{
    at[0] = (char)('0' + v / 10);
    at[1] = (char)('0' + v % 10);
}

/* The text of the second, kept: lines come many per second, and only the
 * milliseconds change between them. */
static int64_t cached_second = INT64_MIN;
static char cached_text[19]; /* YYYY-MM-DDTHH:MM:SS */

/* Four-digit years only: earlier or later times print as the first or last. */
static const int64_t TS_MIN_MS = -62167219200000; /* 0000-01-01T00:00:00.000Z */
static const int64_t TS_MAX_MS = 253402300799999; /* 9999-12-31T23:59:59.999Z */

void log_put_timestamp(wbuf *b, int64_t unix_ms)
{
    unix_ms = unix_ms < TS_MIN_MS ? TS_MIN_MS : unix_ms > TS_MAX_MS ? TS_MAX_MS : unix_ms;
    int64_t second = unix_ms >= 0 ? unix_ms / 1000 : (unix_ms - 999) / 1000;
    unsigned ms = (unsigned)(unix_ms - second * 1000);
    if (second != cached_second) {
        int64_t days = second >= 0 ? second / 86400 : (second - 86399) / 86400;
        unsigned of_day = (unsigned)(second - days * 86400);
        int64_t year;
        unsigned month, day;
        date_of_day(days, &year, &month, &day);
        char *t = cached_text;
        put_2digits(t, (unsigned)(year / 100));
        put_2digits(t + 2, (unsigned)(year % 100));
        t[4] = '-';
        put_2digits(t + 5, month);
        t[7] = '-';
        put_2digits(t + 8, day);
        t[10] = 'T';
        put_2digits(t + 11, of_day / 3600);
        t[13] = ':';
        put_2digits(t + 14, of_day / 60 % 60);
        t[16] = ':';
        put_2digits(t + 17, of_day % 60);
        cached_second = second;
    }
    char text[LOG_TIMESTAMP_LEN];
    memcpy(text, cached_text, sizeof cached_text);
    text[19] = '.';
    text[20] = (char)('0' + ms / 100);
    put_2digits(text + 21, ms % 100);
    text[23] = 'Z';
    put_bytes(b, text, sizeof text);
}

static int64_t wall_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- fields -------------------------------------------------------------- */

static size_t escaped_len(unsigned char c)
{
    if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t')
        return 2;
    return c < 0x20 ? 6 : 1;
}

/* A string value, escaped (JSON's rules, in both formats), cut to VALUE_MAX. */
static void put_value(wbuf *b, slice v)
{
    if (v.len <= VALUE_MAX / 6) { /* cannot grow past the limit: the usual case */
        wbuf_put_json_escaped(b, v);
        return;
    }
    size_t out = 0, fits = 0, cut = 0; /* v[0..fits) fits whole, v[0..cut) with the mark */
    while (fits < v.len) {
        out += escaped_len((unsigned char)v.ptr[fits]);
        if (out > VALUE_MAX)
            break;
        fits++;
        if (out <= VALUE_MAX - CUT_MARK_LEN)
            cut = fits;
    }
    if (fits == v.len) {
        wbuf_put_json_escaped(b, v);
        return;
    }
    while (cut > 0 && ((unsigned char)v.ptr[cut] & 0xc0) == 0x80)
        cut--; /* cut before a UTF-8 sequence, not inside it */
    wbuf_put_json_escaped(b, (slice){v.ptr, cut});
    put_bytes(b, LIT("..."));
}

/* The text between two values, in the current format, as a literal: its
 * length is a constant, and the copy a few moves. */
#define SEP(b, json, text) (format == LOG_JSON ? put_bytes(b, LIT(json)) : put_bytes(b, LIT(text)))

void log_put_access(wbuf *b, const access_record *r, int64_t unix_ms)
{
    SEP(b, "{\"ts\":\"", "ts=");
    log_put_timestamp(b, unix_ms);
    if (r->status >= 500)
        SEP(b, "\",\"level\":\"error\",\"req_id\":\"", " level=error req_id=");
    else if (r->status >= 400)
        SEP(b, "\",\"level\":\"warn\",\"req_id\":\"", " level=warn req_id=");
    else
        SEP(b, "\",\"level\":\"info\",\"req_id\":\"", " level=info req_id=");
    put_value(b, r->req_id);
    SEP(b, "\",\"method\":\"", " method=");
    put_value(b, r->method);
    SEP(b, "\",\"path\":\"", " path=");
    put_value(b, r->path);
    SEP(b, "\",\"status\":", " status=");
    wbuf_put_i64(b, r->status);
    SEP(b, ",\"client\":\"", " client=");
    put_value(b, r->client);
    SEP(b, "\",\"model\":\"", " model=");
    put_value(b, r->model);
    SEP(b, "\",\"upstream\":\"", " upstream=");
    put_value(b, r->upstream);
    SEP(b, "\",\"upstream_req_id\":\"", " upstream_req_id=");
    put_value(b, r->upstream_req_id);
    SEP(b, "\",\"ttfb_ms\":", " ttfb_ms=");
    wbuf_put_i64(b, r->ttfb_ms);
    SEP(b, ",\"dur_ms\":", " dur_ms=");
    wbuf_put_u64(b, r->dur_ms);
    SEP(b, ",\"bytes_in\":", " bytes_in=");
    wbuf_put_u64(b, r->bytes_in);
    SEP(b, ",\"bytes_out\":", " bytes_out=");
    wbuf_put_u64(b, r->bytes_out);
    SEP(b, ",\"chunks\":", " chunks=");
    wbuf_put_u64(b, r->chunks);
    SEP(b, ",\"prompt_tokens\":", " prompt_tokens=");
    wbuf_put_u64(b, r->prompt_tokens);
    SEP(b, ",\"completion_tokens\":", " completion_tokens=");
    wbuf_put_u64(b, r->completion_tokens);
    SEP(b, ",\"retries\":", " retries=");
    wbuf_put_u64(b, r->retries);
    if (r->resumed)
        SEP(b, ",\"resumed\":true", " resumed=true");
    else
        SEP(b, ",\"resumed\":false", " resumed=false");
    if (r->error) {
        SEP(b, ",\"error\":\"", " error=");
        put_value(b, slice_of(r->error));
        if (format == LOG_JSON)
            put_bytes(b, LIT("\"}"));
    } else if (format == LOG_JSON) {
        put_bytes(b, LIT(",\"error\":null}"));
    }
}

/* Ends the line in b, whose capacity keeps a byte in reserve for the
 * newline; returns its length. A wbuf's length only counts bytes written to
 * it, so even a line that overflowed holds no stale bytes. */
static size_t end_line(wbuf *b)
{
    b->ptr[b->len++] = '\n';
    return b->len;
}

void log_access(const access_record *r)
{
    int64_t now = wall_clock_ms();
    if (batch_loop) {
        if (BATCH_SIZE - batch_len < LINE_MAX_BYTES)
            log_flush();
        size_t before = batch_len; /* below PIPE_BUF, as every call leaves it */
        wbuf b = wbuf_over(batch + batch_len, LINE_MAX_BYTES - 1);
        log_put_access(&b, r, now);
        batch_len += end_line(&b);
        if (batch_len > PIPE_BUF && before > 0) { /* the lines before this one go out whole */
            size_t line = batch_len - before;
            batch_len = before;
            log_flush();
            memmove(batch, batch + before, line);
            batch_len = line;
        }
        /* The timer may stay armed after a flush: it then finds less to write. */
        if (batch_len >= PIPE_BUF)
            log_flush(); /* one line of PIPE_BUF or more: in pieces */
        else if (!loop_timer_armed(&batch_timer))
            loop_timer_arm(batch_loop, &batch_timer, FLUSH_MS, flush_due, NULL);
        return;
    }
    char mem[LINE_MAX_BYTES];
    wbuf b = wbuf_over(mem, sizeof mem - 1);
    log_put_access(&b, r, now);
    write_all(mem, end_line(&b));
}

/* ts and level, which open every line (access lines write them themselves). */
static void begin_line(wbuf *b, int64_t unix_ms, slice level)
{
    SEP(b, "{\"ts\":\"", "ts=");
    log_put_timestamp(b, unix_ms);
    SEP(b, "\",\"level\":\"", " level=");
    put_value(b, level);
    if (format == LOG_JSON)
        put_bytes(b, LIT("\""));
}

void log_message(const char *level, const char *msg, const log_field *fields, size_t count)
{
    char mem[LINE_MAX_BYTES];
    wbuf b = wbuf_over(mem, sizeof mem - 2); /* room for "}\n" */
    bool json = format == LOG_JSON;
    begin_line(&b, wall_clock_ms(), slice_of(level));
    for (size_t i = 0; i <= count; i++) {
        const char *key = i == 0 ? "msg" : fields[i - 1].key;
        slice value = slice_of(i == 0 ? msg : fields[i - 1].value);
        size_t before = b.len;
        SEP(&b, ",\"", " ");
        wbuf_puts(&b, key);
        SEP(&b, "\":\"", "=");
        put_value(&b, value);
        if (json)
            put_bytes(&b, LIT("\""));
        if (b.overflow) { /* drop the fields that do not fit, keep the line whole */
            b.len = before;
            b.overflow = false;
            break;
        }
    }
    if (json)
        b.ptr[b.len++] = '}';
    log_flush(); /* keep the order of lines */
    write_all(mem, end_line(&b));
}
