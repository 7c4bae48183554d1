/* The SSE parser fed the way the relay feeds it: bytes arrive in random
 * pieces into a pending region, every complete event is taken and its
 * `consumed` bytes dropped from the front, and at the end EOF is signalled.
 * The events must be the same as with the whole input at once, and together
 * be exactly the input (a leading BOM is consumed but not in any raw). */
#include "fuzz.h"
#include "gateway/sse.h"

enum { MAX_EVENTS = 4096 };

typedef struct event_rec {
    size_t off, consumed;      /* the input bytes this event accounts for */
    size_t len;                /* raw: the last len of those */
    size_t data_off, data_len; /* data, likewise */
    size_t data_lines;
    bool has_fields, unterminated, done;
} event_rec;

static event_rec once_events[MAX_EVENTS], split_events[MAX_EVENTS];

static void check_event(const char *pending, size_t n, size_t base, const sse_event *ev)
{
    FUZZ_CHECK(ev->consumed > 0 && ev->consumed <= n && ev->raw.len <= ev->consumed);
    if (ev->raw.len)
        FUZZ_CHECK(ev->raw.ptr + ev->raw.len == pending + ev->consumed);
    /* Only the stream's first event can have skipped bytes: its BOM. */
    if (ev->consumed != ev->raw.len)
        FUZZ_CHECK(base == 0 && ev->consumed - ev->raw.len == 3 && memcmp(pending, "\xEF\xBB\xBF", 3) == 0);
    FUZZ_CHECK(ev->data.len <= ev->raw.len);
    if (ev->data.len)
        FUZZ_CHECK(ev->data.ptr >= ev->raw.ptr && ev->data.ptr + ev->data.len <= ev->raw.ptr + ev->raw.len);
    if (ev->data_lines == 0)
        FUZZ_CHECK(ev->data.len == 0);
    if (ev->data_lines)
        FUZZ_CHECK(ev->has_fields);
    if (!ev->unterminated && ev->raw.len) {
        char last = ev->raw.ptr[ev->raw.len - 1];
        FUZZ_CHECK(last == '\n' || last == '\r');
    }
    /* The joined data: its length whatever the buffer, the first line first. */
    size_t joined = sse_join_data(ev->raw, NULL, 0);
    char *out = fuzz_alloc(joined);
    FUZZ_CHECK(sse_join_data(ev->raw, out, joined) == joined);
    if (ev->data_lines == 1) {
        FUZZ_CHECK(joined == ev->data.len);
        FUZZ_CHECK(joined == 0 || memcmp(out, ev->data.ptr, joined) == 0);
    }
    if (ev->data_lines > 1)
        FUZZ_CHECK(joined >= ev->data.len + ev->data_lines - 1 && memcmp(out, ev->data.ptr, ev->data.len) == 0);
    free(out);
    if (sse_is_done(ev))
        FUZZ_CHECK(ev->data_lines == 1 && ev->data.len == 6);
}

static void record(event_rec *r, size_t base, const char *pending, const sse_event *ev)
{
    r->off = base;
    r->consumed = ev->consumed;
    r->len = ev->raw.len;
    r->data_off = ev->data.len ? base + (size_t)(ev->data.ptr - pending) : 0;
    r->data_len = ev->data.len;
    r->data_lines = ev->data_lines;
    r->has_fields = ev->has_fields;
    r->unterminated = ev->unterminated;
    r->done = sse_is_done(ev);
}

/* Feeds the input; piece sizes from rng, or all at once when rng is NULL. */
static size_t feed(const uint8_t *data, size_t size, fuzz_rng *rng, event_rec *events)
{
    sse_parser p = {0};
    size_t start = 0, have = 0, count = 0;
    for (;;) {
        bool at_eof = have == size;
        for (;;) {
            size_t n = have - start;
            char *pending = fuzz_copy(data + start, n);
            sse_event ev;
            bool got = sse_next_event(&p, pending, n, at_eof, &ev);
            bool stop = !got;
            if (got) {
                check_event(pending, n, start, &ev);
                FUZZ_CHECK(count < MAX_EVENTS);
                record(&events[count++], start, pending, &ev);
                start += ev.consumed;
                stop = ev.unterminated;
            }
            free(pending);
            if (stop)
                break;
        }
        if (at_eof)
            break;
        have += rng ? fuzz_piece(rng, size - have) : size - have;
    }
    /* At EOF everything is consumed. */
    FUZZ_CHECK(start == size);
    return count;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024)
        return 0;
    size_t n_once = feed(data, size, NULL, once_events);
    fuzz_rng rng = fuzz_rng_from(data, size);
    size_t n_split = feed(data, size, &rng, split_events);
    FUZZ_CHECK(n_once == n_split);
    size_t off = 0;
    for (size_t i = 0; i < n_once; i++) {
        const event_rec *a = &once_events[i], *b = &split_events[i];
        FUZZ_CHECK(a->off == off && a->off == b->off && a->consumed == b->consumed && a->len == b->len);
        FUZZ_CHECK(a->data_off == b->data_off && a->data_len == b->data_len && a->data_lines == b->data_lines);
        FUZZ_CHECK(a->has_fields == b->has_fields && a->unterminated == b->unterminated && a->done == b->done);
        /* Only the last event can lack its blank line. */
        if (a->unterminated)
            FUZZ_CHECK(i == n_once - 1);
        off += a->consumed;
    }
    FUZZ_CHECK(off == size);
    return 0;
}
