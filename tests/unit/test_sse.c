/* The SSE event parser (line ends, splits at every byte, comments,
 * multi-line data, BOM, EOF) and the zero-copy chunk framer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/sse.h"
#include "unit.h"

enum { MAX_EVENTS = 32, MAX_RAW = 256 };

typedef struct seen_event {
    size_t consumed; /* raw plus, for the first event, a leading BOM */
    char raw[MAX_RAW];
    size_t raw_len;
    char data[MAX_RAW];
    size_t data_len, data_lines;
    char joined[MAX_RAW];
    size_t joined_len;
    bool has_fields, unterminated, done;
} seen_event;

typedef struct event_list {
    seen_event ev[MAX_EVENTS];
    size_t count;
    size_t consumed; /* bytes of input the events took */
} event_list;

static void record(event_list *l, const sse_event *ev)
{
    if (l->count == MAX_EVENTS || ev->raw.len > MAX_RAW) {
        unit_fail(__FILE__, __LINE__, "too many or too large events");
        return;
    }
    seen_event *s = &l->ev[l->count++];
    memset(s, 0, sizeof *s);
    s->consumed = ev->consumed;
    if (ev->raw.len)
        memcpy(s->raw, ev->raw.ptr, ev->raw.len);
    s->raw_len = ev->raw.len;
    if (ev->data.len && ev->data.len <= MAX_RAW)
        memcpy(s->data, ev->data.ptr, ev->data.len);
    s->data_len = ev->data.len;
    s->data_lines = ev->data_lines;
    s->joined_len = sse_join_data(ev->raw, s->joined, sizeof s->joined);
    s->has_fields = ev->has_fields;
    s->unterminated = ev->unterminated;
    s->done = sse_is_done(ev);
}

/* Feeds `in` the way the relay does: bytes arrive `step` at a time (0: all
 * at once) and are appended to a pending region; after each arrival every
 * complete event is taken and ev.consumed bytes are dropped from the front.
 * The pending region is handed over as a fresh exact-size copy each call,
 * since the relay may move it (and ASan then sees any read past its end).
 * With `eof`, a last call says no more bytes will come. */
static void feed(const char *in, size_t len, size_t step, bool eof, event_list *l)
{
    memset(l, 0, sizeof *l);
    sse_parser p = {0};
    size_t start = 0, have = 0;
    if (step == 0)
        step = len ? len : 1;
    for (;;) {
        bool last = have == len;
        bool at_eof = last && eof;
        for (;;) {
            size_t n = have - start;
            char *pending = malloc(n ? n : 1);
            memcpy(pending, in + start, n);
            sse_event ev;
            bool got = sse_next_event(&p, pending, n, at_eof, &ev);
            if (got) {
                /* raw ends where the consumed bytes end; only a BOM precedes it */
                CHECK(ev.consumed > 0 && ev.consumed <= n);
                CHECK(ev.raw.len <= ev.consumed && ev.consumed - ev.raw.len <= 3);
                CHECK(ev.raw.len == 0 || ev.raw.ptr + ev.raw.len == pending + ev.consumed);
                record(l, &ev);
                start += ev.consumed;
            }
            free(pending);
            if (!got || ev.unterminated || ev.consumed == 0)
                break;
        }
        if (last)
            break;
        have = have + step < len ? have + step : len;
    }
    l->consumed = start;
}

static void feed_str(const char *in, size_t step, bool eof, event_list *l) { feed(in, strlen(in), step, eof, l); }

static bool same_events(const event_list *a, const event_list *b)
{
    if (a->count != b->count || a->consumed != b->consumed)
        return false;
    for (size_t i = 0; i < a->count; i++) {
        const seen_event *x = &a->ev[i], *y = &b->ev[i];
        if (x->consumed != y->consumed || x->raw_len != y->raw_len || memcmp(x->raw, y->raw, x->raw_len) != 0 || x->data_len != y->data_len ||
            memcmp(x->data, y->data, x->data_len) != 0 || x->data_lines != y->data_lines ||
            x->has_fields != y->has_fields || x->unterminated != y->unterminated || x->done != y->done ||
            x->joined_len != y->joined_len || memcmp(x->joined, y->joined, x->joined_len) != 0)
            return false;
    }
    return true;
}

/* Whatever the arrival pattern, the same events come out, and together
 * they are exactly the input consumed. */
static void check_splits(const char *in, const event_list *whole)
{
    size_t len = strlen(in);
    event_list part;
    for (size_t step = 1; step <= len; step++) {
        feed(in, len, step, true, &part);
        if (!same_events(whole, &part))
            unit_fail(__FILE__, __LINE__, "step %zu: %zu events vs %zu", step, part.count, whole->count);
    }
    /* Also two pieces split at every byte. */
    for (size_t k = 1; k < len; k++) {
        memset(&part, 0, sizeof part);
        sse_parser p = {0};
        size_t start = 0;
        for (int round = 0; round < 2; round++) {
            size_t have = round == 0 ? k : len;
            sse_event ev;
            while (sse_next_event(&p, in + start, have - start, round == 1, &ev)) {
                record(&part, &ev);
                start += ev.consumed;
                if (ev.unterminated)
                    break;
            }
        }
        part.consumed = start;
        if (!same_events(whole, &part))
            unit_fail(__FILE__, __LINE__, "split at %zu: %zu events vs %zu", k, part.count, whole->count);
    }
    /* The events concatenate back to the input (a leading BOM aside). */
    size_t off = 0;
    for (size_t i = 0; i < whole->count; i++) {
        const seen_event *e = &whole->ev[i];
        CHECK(memcmp(in + off + e->consumed - e->raw_len, e->raw, e->raw_len) == 0);
        if (e->consumed != e->raw_len)
            CHECK(i == 0 && memcmp(in, "\xEF\xBB\xBF", 3) == 0);
        off += e->consumed;
    }
    CHECK_EQ_SIZE(off, whole->consumed);
}

static const char *data_of(const seen_event *e)
{
    static char out[MAX_RAW + 1];
    memcpy(out, e->data, e->data_len);
    out[e->data_len] = '\0';
    return out;
}

static const char *raw_of(const seen_event *e)
{
    static char out[MAX_RAW + 1];
    memcpy(out, e->raw, e->raw_len);
    out[e->raw_len] = '\0';
    return out;
}

TEST(sse_lf_events)
{
    const char *in = "data: {\"a\":1}\n\ndata: two\n\ndata: [DONE]\n\n";
    event_list l;
    feed_str(in, 0, false, &l);
    CHECK_EQ_SIZE(l.count, 3);
    CHECK_STR(raw_of(&l.ev[0]), "data: {\"a\":1}\n\n");
    CHECK_STR(data_of(&l.ev[0]), "{\"a\":1}");
    CHECK_EQ_SIZE(l.ev[0].data_lines, 1);
    CHECK(l.ev[0].has_fields);
    CHECK(!l.ev[0].unterminated);
    CHECK(!l.ev[0].done);
    CHECK_STR(data_of(&l.ev[1]), "two");
    CHECK(l.ev[2].done);
    CHECK_EQ_SIZE(l.consumed, strlen(in));
    check_splits(in, &l);
}

TEST(sse_crlf_events)
{
    const char *in = "data: one\r\n\r\nevent: x\r\ndata: two\r\nid: 7\r\n\r\n";
    event_list l;
    feed_str(in, 0, false, &l);
    CHECK_EQ_SIZE(l.count, 2);
    CHECK_STR(raw_of(&l.ev[0]), "data: one\r\n\r\n");
    CHECK_STR(data_of(&l.ev[0]), "one");
    CHECK_STR(data_of(&l.ev[1]), "two");
    CHECK_EQ_SIZE(l.ev[1].data_lines, 1);
    check_splits(in, &l);
}

TEST(sse_cr_only_events)
{
    /* A CR is only known to end a line when the next byte is not LF, so the
     * last event waits for one more byte, or for EOF. */
    const char *in = "data: one\r\rdata: two\r\r";
    event_list l;
    feed_str(in, 0, false, &l);
    CHECK_EQ_SIZE(l.count, 1);
    CHECK_STR(data_of(&l.ev[0]), "one");
    CHECK_STR(raw_of(&l.ev[0]), "data: one\r\r");
    feed_str(in, 0, true, &l);
    CHECK_EQ_SIZE(l.count, 2);
    CHECK_STR(data_of(&l.ev[1]), "two");
    CHECK_EQ_SIZE(l.consumed, strlen(in));
    check_splits(in, &l);
}

TEST(sse_mixed_line_ends)
{
    const char *in = "data: a\r\ndata: b\rdata: c\n\r\n: note\r\rdata: d\n\r\r\n";
    event_list l;
    feed_str(in, 0, true, &l);
    CHECK(l.count >= 3);
    CHECK_EQ_SIZE(l.ev[0].data_lines, 3);
    CHECK_STR(data_of(&l.ev[0]), "a");
    CHECK_EQ_SIZE(l.ev[0].joined_len, 5);
    CHECK(memcmp(l.ev[0].joined, "a\nb\nc", 5) == 0);
    CHECK(!l.ev[1].has_fields); /* the comment alone */
    CHECK_STR(data_of(&l.ev[2]), "d");
    CHECK_EQ_SIZE(l.consumed, strlen(in));
    check_splits(in, &l);
}

TEST(sse_comments_and_fields)
{
    const char *in = ": ping\n\n:\n\n: c1\ndata: x\n: c2\n\nevent: e\nid: 1\nretry: 5\n\ndata\n\ndata:\n\n"
                     "data:  two spaces\n\nDATA: upper\n\ndata:x:y\n\n";
    event_list l;
    feed_str(in, 0, false, &l);
    CHECK_EQ_SIZE(l.count, 9);
    CHECK(!l.ev[0].has_fields);
    CHECK_EQ_SIZE(l.ev[0].data_lines, 0);
    CHECK(!l.ev[1].has_fields);
    CHECK(l.ev[2].has_fields);
    CHECK_STR(data_of(&l.ev[2]), "x");
    CHECK_EQ_SIZE(l.ev[2].data_lines, 1);
    CHECK(l.ev[3].has_fields); /* fields, but no data */
    CHECK_EQ_SIZE(l.ev[3].data_lines, 0);
    CHECK_EQ_SIZE(l.ev[4].data_lines, 1); /* "data" alone: an empty value */
    CHECK_EQ_SIZE(l.ev[4].data_len, 0);
    CHECK_EQ_SIZE(l.ev[5].data_lines, 1);
    CHECK_EQ_SIZE(l.ev[5].data_len, 0);
    CHECK_STR(data_of(&l.ev[6]), " two spaces"); /* only one space is dropped */
    CHECK_EQ_SIZE(l.ev[7].data_lines, 0);      /* names are case-sensitive */
    CHECK(l.ev[7].has_fields);
    CHECK_STR(data_of(&l.ev[8]), "x:y");
    check_splits(in, &l);
}

TEST(sse_multiline_data)
{
    const char *in = "data: {\"a\":\ndata:  1}\n: between\ndata\nevent: ignored\ndata: end\n\n";
    event_list l;
    feed_str(in, 0, false, &l);
    CHECK_EQ_SIZE(l.count, 1);
    CHECK_EQ_SIZE(l.ev[0].data_lines, 4);
    CHECK_STR(data_of(&l.ev[0]), "{\"a\":");
    const char *want = "{\"a\":\n 1}\n\nend";
    CHECK_EQ_SIZE(l.ev[0].joined_len, strlen(want));
    CHECK(memcmp(l.ev[0].joined, want, strlen(want)) == 0);
    check_splits(in, &l);

    /* A short output buffer gets a prefix; the full length is returned. */
    slice raw = {l.ev[0].raw, l.ev[0].raw_len};
    char small[6];
    memset(small, '#', sizeof small);
    CHECK_EQ_SIZE(sse_join_data(raw, small, 4), strlen(want));
    CHECK(memcmp(small, "{\"a\"##", 6) == 0);
    CHECK_EQ_SIZE(sse_join_data(raw, NULL, 0), strlen(want));
    CHECK_EQ_SIZE(sse_join_data(SLICE_LIT(": only a comment\n\n"), NULL, 0), 0);
}

TEST(sse_bom_at_start)
{
    /* A leading BOM is consumed with the first event but is not part of its
     * raw bytes, which are what the client is sent. */
    const char *in = "\xEF\xBB\xBF" "data: a\n\ndata: b\n\n";
    event_list l;
    feed_str(in, 0, false, &l);
    CHECK_EQ_SIZE(l.count, 2);
    CHECK_EQ_SIZE(l.ev[0].consumed, 12);
    CHECK_STR(raw_of(&l.ev[0]), "data: a\n\n");
    CHECK_EQ_SIZE(l.ev[1].consumed, 9);
    CHECK_STR(data_of(&l.ev[0]), "a");
    CHECK_EQ_SIZE(l.ev[0].data_lines, 1);
    CHECK_STR(data_of(&l.ev[1]), "b");
    CHECK_EQ_SIZE(l.consumed, strlen(in));
    check_splits(in, &l);

    /* With multi-line data after the BOM, the join sees the first line too. */
    const char *multi = "\xEF\xBB\xBF" "data: a\ndata: b\n\n";
    feed_str(multi, 0, false, &l);
    CHECK_EQ_SIZE(l.count, 1);
    CHECK_EQ_SIZE(l.ev[0].data_lines, 2);
    CHECK_EQ_SIZE(l.ev[0].joined_len, 3);
    CHECK(memcmp(l.ev[0].joined, "a\nb", 3) == 0);

    /* A BOM later in the stream is not special: the line is a field named
     * "\xEF\xBB\xBF" "data". */
    const char *later = "data: a\n\n\xEF\xBB\xBF" "data: b\n\n";
    feed_str(later, 0, false, &l);
    CHECK_EQ_SIZE(l.count, 2);
    CHECK_EQ_SIZE(l.ev[1].data_lines, 0);
    CHECK(l.ev[1].has_fields);
    check_splits(later, &l);

    /* Only a BOM's worth of bytes so far: wait for more. */
    sse_parser p = {0};
    sse_event ev;
    CHECK(!sse_next_event(&p, "\xEF\xBB", 2, false, &ev));
    CHECK(!sse_next_event(&p, "\xEF\xBB\xBF", 3, false, &ev));
    /* A stream of just a BOM: at EOF it is consumed, as an empty event. */
    feed_str("\xEF\xBB\xBF", 0, true, &l);
    CHECK_EQ_SIZE(l.count, 1);
    CHECK_EQ_SIZE(l.ev[0].consumed, 3);
    CHECK_EQ_SIZE(l.ev[0].raw_len, 0);
    CHECK(!l.ev[0].has_fields);
    /* Not quite a BOM: ordinary bytes of the first line. */
    feed_str("\xEF\xBB" "data: x\n\n", 0, false, &l);
    CHECK_EQ_SIZE(l.count, 1);
    CHECK_EQ_SIZE(l.ev[0].consumed, l.ev[0].raw_len);
    CHECK_EQ_SIZE(l.ev[0].data_lines, 0);
}

TEST(sse_unterminated_at_eof)
{
    const char *in = "data: a\n\ndata: b";
    event_list l;
    feed_str(in, 0, false, &l);
    CHECK_EQ_SIZE(l.count, 1);
    feed_str(in, 0, true, &l);
    CHECK_EQ_SIZE(l.count, 2);
    CHECK(!l.ev[0].unterminated);
    CHECK(l.ev[1].unterminated);
    CHECK_STR(data_of(&l.ev[1]), "b");
    CHECK_STR(raw_of(&l.ev[1]), "data: b");
    check_splits(in, &l);

    /* One line end but not two; a trailing CR at EOF ends its line. */
    static const char *const tails[] = {"data: b\n", "data: b\r\n", "data: b\r", "data: x\ndata: b\n"};
    for (size_t i = 0; i < sizeof tails / sizeof tails[0]; i++) {
        feed_str(tails[i], 0, true, &l);
        CHECK_EQ_SIZE(l.count, 1);
        CHECK(l.ev[0].unterminated);
        CHECK_EQ_SIZE(l.ev[0].raw_len, strlen(tails[i]));
        CHECK(l.ev[0].has_fields);
        check_splits(tails[i], &l);
    }
    feed_str("data: [DONE]", 0, true, &l);
    CHECK_EQ_SIZE(l.count, 1);
    CHECK(l.ev[0].done);

    /* Nothing left at EOF: no event. */
    sse_parser p = {0};
    sse_event ev;
    CHECK(!sse_next_event(&p, "", 0, true, &ev));
}

TEST(sse_done_detection)
{
    event_list l;
    feed_str("data: [DONE]\n\ndata:[DONE]\n\ndata: [DONE] \n\ndata: [DONE]\ndata: x\n\n"
             "event: end\ndata: [DONE]\n\ndata: [done]\n\n",
             0, false, &l);
    CHECK_EQ_SIZE(l.count, 6);
    CHECK(l.ev[0].done);
    CHECK(l.ev[1].done);
    CHECK(!l.ev[2].done);
    CHECK(!l.ev[3].done);
    CHECK(l.ev[4].done);
    CHECK(!l.ev[5].done);
}

TEST(sse_realistic_stream_byte_by_byte)
{
    const char *in =
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":"
        "{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n"
        ": keep-alive\n\n"
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"q\\\"b\\\\s\\n\"}}]}\n\n"
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n"
        "data: [DONE]\n\n";
    event_list l;
    feed_str(in, 0, false, &l);
    CHECK_EQ_SIZE(l.count, 5);
    CHECK(l.ev[4].done);
    check_splits(in, &l);
}

/* ---- framer ---- */

static size_t gather(const sse_frame *f, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < f->count; i++) {
        if (n + f->iov[i].iov_len > cap)
            return (size_t)-1;
        if (f->iov[i].iov_len) /* an empty prefix may be NULL */
            memcpy(out + n, f->iov[i].iov_base, f->iov[i].iov_len);
        n += f->iov[i].iov_len;
    }
    return n;
}

TEST(sse_frame_contents)
{
    const char *head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    sse_frame f;
    sse_frame_begin(&f, slice_of(head), true);
    CHECK(sse_frame_add(&f, SLICE_LIT("data: a\n\n")));
    CHECK(sse_frame_add(&f, SLICE_LIT("")));
    CHECK(sse_frame_add(&f, SLICE_LIT("data: bb\n\n")));
    sse_frame_end(&f);
    CHECK_EQ_SIZE(f.count, 5);
    CHECK_EQ_SIZE(f.payload, 19);
    CHECK(f.iov[0].iov_base == (void *)head);
    CHECK_EQ_SIZE(f.iov[1].iov_len, 4);
    CHECK(memcmp(f.iov[1].iov_base, "13\r\n", 4) == 0);
    CHECK(memcmp(f.iov[4].iov_base, "\r\n", 2) == 0);
    char out[256];
    size_t n = gather(&f, out, sizeof out);
    char want[256];
    snprintf(want, sizeof want, "%s13\r\ndata: a\n\ndata: bb\n\n\r\n", head);
    CHECK_EQ_SIZE(n, strlen(want));
    CHECK(n == strlen(want) && memcmp(out, want, n) == 0);
    CHECK_EQ_SIZE(sse_frame_bytes(&f), n);

    /* Without a prefix the first iovec is empty. */
    sse_frame_begin(&f, (slice){NULL, 0}, true);
    CHECK(sse_frame_add(&f, SLICE_LIT("data: x\n\n")));
    sse_frame_end(&f);
    n = gather(&f, out, sizeof out);
    CHECK_EQ_SIZE(n, 3 + 9 + 2);
    CHECK(memcmp(out, "9\r\ndata: x\n\n\r\n", n) == 0);
    CHECK_EQ_SIZE(f.iov[0].iov_len, 0);
}

TEST(sse_frame_full)
{
    sse_frame f;
    sse_frame_begin(&f, SLICE_LIT("HEAD"), true);
    size_t added = 0;
    while (added < 2 * SSE_FRAME_MAX_IOV && sse_frame_add(&f, SLICE_LIT("x")))
        added++;
    /* Most of the iovec array is for pieces; a refused piece stays refused. */
    CHECK(added >= SSE_FRAME_MAX_IOV / 2);
    CHECK(added < SSE_FRAME_MAX_IOV);
    CHECK(!sse_frame_add(&f, SLICE_LIT("y")));
    CHECK(sse_frame_add(&f, SLICE_LIT(""))); /* an empty piece needs no slot */
    CHECK_EQ_SIZE(f.payload, added);
    sse_frame_end(&f);
    CHECK_EQ_SIZE(f.count, 2 + added + 1);
    CHECK(memcmp(f.iov[f.count - 1].iov_base, "\r\n", 2) == 0);
    /* There is still room for the body's last chunk after a full frame. */
    sse_frame_last(&f);
    CHECK(f.count <= SSE_FRAME_MAX_IOV);
    char out[512], want[512];
    size_t n = gather(&f, out, sizeof out);
    size_t w = (size_t)snprintf(want, sizeof want, "HEAD%zx\r\n", added);
    memset(want + w, 'x', added);
    w += added;
    memcpy(want + w, "\r\n0\r\n\r\n", 7);
    w += 7;
    CHECK_EQ_SIZE(n, w);
    CHECK(n == w && memcmp(out, want, n) == 0);
    CHECK_EQ_SIZE(sse_frame_bytes(&f), w);

    /* After a refusal the caller sends the frame and starts another. */
    sse_frame_begin(&f, (slice){NULL, 0}, true);
    CHECK(sse_frame_add(&f, SLICE_LIT("y")));
    sse_frame_end(&f);
    n = gather(&f, out, sizeof out);
    CHECK(n == 6 && memcmp(out, "1\r\ny\r\n", 6) == 0);
}

TEST(sse_frame_empty)
{
    sse_frame f;
    sse_frame_begin(&f, SLICE_LIT("HTTP/1.1 200 OK\r\n\r\n"), true);
    sse_frame_end(&f);
    CHECK_EQ_SIZE(f.count, 1);
    CHECK_EQ_SIZE(f.payload, 0);
    CHECK_EQ_SIZE(sse_frame_bytes(&f), 19);
    sse_frame_begin(&f, (slice){NULL, 0}, true);
    CHECK(sse_frame_add(&f, (slice){NULL, 0}));
    sse_frame_end(&f);
    CHECK_EQ_SIZE(f.count, 1);
    CHECK_EQ_SIZE(sse_frame_bytes(&f), 0);
}

TEST(sse_frame_unchunked_and_last)
{
    /* Not chunked (an HTTP/1.0 client): the pieces as they are. */
    sse_frame f;
    sse_frame_begin(&f, SLICE_LIT("H"), false);
    CHECK(sse_frame_add(&f, SLICE_LIT("data: a\n\n")));
    CHECK(sse_frame_add(&f, SLICE_LIT("data: b\n\n")));
    sse_frame_end(&f);
    char out[128];
    size_t n = gather(&f, out, sizeof out);
    CHECK(n == 19 && memcmp(out, "Hdata: a\n\ndata: b\n\n", 19) == 0);
    sse_frame_last(&f);
    CHECK_EQ_SIZE(gather(&f, out, sizeof out), 19);

    /* Chunked, no payload: the prefix and then the last chunk. */
    sse_frame_begin(&f, SLICE_LIT("H"), true);
    sse_frame_end(&f);
    sse_frame_last(&f);
    n = gather(&f, out, sizeof out);
    CHECK(n == 6 && memcmp(out, "H0\r\n\r\n", 6) == 0);

    /* Chunked with payload, then the last chunk. */
    sse_frame_begin(&f, (slice){NULL, 0}, true);
    CHECK(sse_frame_add(&f, SLICE_LIT("data: [DONE]\n\n")));
    sse_frame_end(&f);
    sse_frame_last(&f);
    n = gather(&f, out, sizeof out);
    CHECK(n == 3 + 14 + 2 + 5 && memcmp(out, "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n", n) == 0);
}

TEST(sse_single_data_line_shortcut_agrees)
{
    /* One data line and a blank line is read in one search; its near
     * misses go the line-by-line way and must read the same. */
    const char *in = "data:\n\ndata:x\n\ndata:  two spaces\n\ndata: a\ndata: b\n\ndata: c\r\n\ndata: d\n\r\n"
                     "data: e\r\rdata: f\r\n\r\ndata\n\ndata: [DONE]\n\n";
    event_list l;
    feed_str(in, 0, true, &l);
    CHECK_EQ_SIZE(l.count, 10);
    CHECK_STR(data_of(&l.ev[0]), "");
    CHECK_EQ_SIZE(l.ev[0].data_lines, 1);
    CHECK(l.ev[0].has_fields);
    CHECK_STR(data_of(&l.ev[1]), "x");
    CHECK_STR(data_of(&l.ev[2]), " two spaces");
    CHECK_EQ_SIZE(l.ev[3].data_lines, 2);
    CHECK_STR(l.ev[3].joined, "a\nb");
    CHECK_STR(raw_of(&l.ev[4]), "data: c\r\n\n");
    CHECK_STR(data_of(&l.ev[4]), "c");
    CHECK_STR(raw_of(&l.ev[5]), "data: d\n\r\n");
    CHECK_STR(data_of(&l.ev[6]), "e");
    CHECK_STR(raw_of(&l.ev[7]), "data: f\r\n\r\n");
    CHECK_STR(data_of(&l.ev[8]), "");
    CHECK(l.ev[9].done);
    CHECK_EQ_SIZE(l.consumed, strlen(in));
    check_splits(in, &l);
}
