#include "gateway/sse.h"

#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "http/http.h"

static size_t bom_length(const char *buf, size_t len)
{
    return len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
}

/* The first CR or LF in [p, end), or NULL: one pass, 16 bytes at a time
 * where SSE2 is there (two memchr calls cost twice the bytes and more). */
static const char *line_end(const char *p, const char *end)
{
#ifdef __SSE2__
    const __m128i lf = _mm_set1_epi8('\n'), cr = _mm_set1_epi8('\r');
    /* Four blocks a turn, passed while no byte is <= CR (one min and one
     * compare a block; a tab stops it too, then the exact step below goes
     * on from there): an event's data line is a few hundred bytes. */
    const __m128i low = _mm_set1_epi8('\r');
    while (end - p >= 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(p + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(const void *)(p + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(const void *)(p + 48));
        __m128i m = _mm_min_epu8(_mm_min_epu8(a, b), _mm_min_epu8(c, d));
        if (_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(m, low), m)))
            break;
        p += 64;
    }
    while (end - p >= 32) { /* two blocks a turn: half the loop's own cost */
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i y = _mm_loadu_si128((const __m128i *)(const void *)(p + 16));
        unsigned mask = (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(x, lf), _mm_cmpeq_epi8(x, cr))) |
                        (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(y, lf), _mm_cmpeq_epi8(y, cr))) << 16;
        if (mask)
            return p + __builtin_ctz(mask);
        p += 32;
    }
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
        unsigned mask = (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(x, lf), _mm_cmpeq_epi8(x, cr)));
        if (mask)
            return p + __builtin_ctz(mask);
        p += 16;
    }
#endif
    for (; p < end; p++)
        if (*p == '\n' || *p == '\r')
            return p;
    return NULL;
}

/* Walks the lines of one raw event. */
typedef struct line_iter {
    slice raw;
    size_t pos;
} line_iter;

static bool next_field_line(line_iter *it, slice *line)
{
    const char *p = it->raw.ptr;
    size_t len = it->raw.len;
    if (it->pos >= len)
        return false;
    size_t start = it->pos, i = start;
    while (i < len && p[i] != '\n' && p[i] != '\r')
        i++;
    *line = (slice){p + start, i - start};
    if (i < len && p[i] == '\r' && i + 1 < len && p[i + 1] == '\n')
        i++;
    it->pos = i + 1;
    return true;
}

/* Splits a line into field name and value (one leading space dropped). */
static void split_field(slice line, slice *name, slice *value)
{
    const char *colon = memchr(line.ptr, ':', line.len);
    if (!colon) {
        *name = line;
        *value = (slice){line.ptr + line.len, 0};
        return;
    }
    *name = (slice){line.ptr, (size_t)(colon - line.ptr)};
    const char *v = colon + 1, *end = line.ptr + line.len;
    if (v < end && *v == ' ')
        v++;
    *value = (slice){v, (size_t)(end - v)};
}

/* Notes what one complete, non-empty line contributes to the event. */
static void take_line(sse_parser *p, const char *event, slice line)
{
    if (line.ptr[0] == ':')
        return; /* a comment */
    p->has_fields = true;
    slice name, value;
    if (line.len >= 5 && memcmp(line.ptr, "data:", 5) == 0) { /* nearly every line */
        const char *v = line.ptr + 5, *end = line.ptr + line.len;
        if (v < end && *v == ' ')
            v++;
        name = (slice){line.ptr, 4};
        value = (slice){v, (size_t)(end - v)};
    } else {
        split_field(line, &name, &value);
    }
    if (slice_eq(name, SLICE_LIT("data")) && p->data_lines++ == 0) {
        p->data_off = (size_t)(value.ptr - event);
        p->data_len = value.len;
    }
}

static void emit(sse_parser *p, const char *buf, size_t len, bool unterminated, sse_event *ev)
{
    const char *event = buf + p->skip;
    ev->consumed = len;
    ev->raw = (slice){event, len - p->skip};
    ev->data = (slice){buf + p->data_off, p->data_len};
    ev->data_lines = p->data_lines;
    ev->has_fields = p->has_fields;
    ev->unterminated = unterminated;
    bool seen = p->seen_bytes;
    *p = (sse_parser){0};
    p->seen_bytes = seen;
}

bool sse_next_event(sse_parser *p, const char *buf, size_t len, bool at_eof, sse_event *ev)
{
    *ev = (sse_event){0};
    if (!p->seen_bytes) {
        if (len < 3 && !at_eof && memcmp(buf, "\xEF\xBB\xBF", len) == 0)
            return false;
        if (len > 0) {
            p->seen_bytes = true;
            p->line_start = p->skip = bom_length(buf, len);
        }
    }
    size_t i = p->line_start;
    /* Nearly every event is one data line and a blank one, ended alike by
     * LF or CRLF: read it with one search and no field parsing. */
    if (i == p->skip && len - i > 5 && memcmp(buf + i, "data:", 5) == 0) {
        const char *term = line_end(buf + i + 5, buf + len);
        if (!term && !at_eof)
            return false; /* not even the first line is complete */
        size_t t = term ? (size_t)(term - buf) : len;
        size_t end = 0;
        if (t + 1 < len && buf[t] == '\n' && buf[t + 1] == '\n')
            end = t + 2;
        else if (t + 3 < len && memcmp(buf + t, "\r\n\r\n", 4) == 0)
            end = t + 4;
        if (end) {
            size_t v = i + 5 + (buf[i + 5] == ' ');
            p->has_fields = true;
            p->data_lines = 1;
            p->data_off = v;
            p->data_len = t - v;
            emit(p, buf, end, false, ev);
            return true;
        }
    }
    /* One pass, line end to line end: each search stops at the first CR or
     * LF, so no call crosses the later events again. */
    while (i < len) {
        const char *term = line_end(buf + i, buf + len);
        if (!term)
            break;
        size_t t = (size_t)(term - buf), next = t + 1;
        if (*term == '\r') {
            if (t + 1 == len && !at_eof)
                break; /* CR or CRLF: the next byte decides */
            if (t + 1 < len && buf[t + 1] == '\n')
                next = t + 2;
        }
        slice line = {buf + i, t - i};
        if (line.len == 0) {
            emit(p, buf, next, false, ev);
            return true;
        }
        take_line(p, buf, line);
        i = p->line_start = next;
    }
    if (at_eof && len > 0) {
        if (i < len) /* a last line lacking its terminator */
            take_line(p, buf, (slice){buf + i, len - i});
        emit(p, buf, len, true, ev);
        return true;
    }
    return false;
}

size_t sse_join_data(slice raw, char *out, size_t cap)
{
    line_iter it = {raw, 0};
    slice line, name, value;
    size_t n = 0;
    bool first = true;
    while (next_field_line(&it, &line)) {
        if (line.len == 0 || line.ptr[0] == ':')
            continue;
        split_field(line, &name, &value);
        if (!slice_eq(name, SLICE_LIT("data")))
            continue;
        if (!first) {
            if (n < cap)
                out[n] = '\n';
            n++;
        }
        first = false;
        if (n < cap)
            memcpy(out + n, value.ptr, value.len <= cap - n ? value.len : cap - n);
        n += value.len;
    }
    return n;
}

bool sse_is_done(const sse_event *ev)
{
    return ev->data_lines == 1 && slice_eq(ev->data, SLICE_LIT("[DONE]"));
}

void sse_frame_begin(sse_frame *f, slice prefix, bool chunked)
{
    f->iov[0] = (struct iovec){(void *)prefix.ptr, prefix.len};
    f->iov[1] = (struct iovec){f->size_line, 0};
    f->count = 2;
    f->payload = 0;
    f->chunked = chunked;
}

bool sse_frame_add(sse_frame *f, slice piece)
{
    if (piece.len == 0)
        return true;
    if (f->count + 2 >= SSE_FRAME_MAX_IOV) /* keep slots for the CRLF and the last chunk */
        return false;
    f->iov[f->count++] = (struct iovec){(void *)piece.ptr, piece.len};
    f->payload += piece.len;
    return true;
}

void sse_frame_end(sse_frame *f)
{
    if (f->payload == 0) {
        f->count = 1; /* the prefix alone, if any */
        return;
    }
    if (!f->chunked)
        return;
    f->iov[1].iov_len = http_chunk_header(f->size_line, f->payload);
    f->iov[f->count++] = (struct iovec){(void *)"\r\n", 2};
}

void sse_frame_last(sse_frame *f)
{
    if (f->chunked)
        f->iov[f->count++] = (struct iovec){(void *)"0\r\n\r\n", 5};
}

size_t sse_frame_bytes(const sse_frame *f)
{
    size_t n = 0;
    for (size_t i = 0; i < f->count; i++)
        n += f->iov[i].iov_len;
    return n;
}
