#include "sse.h"

#include <string.h>

#include "http.h"

/* Position just past the line terminator starting at i, 0 if undecidable. */
static size_t line_end(const char *buf, size_t len, size_t i, bool at_eof)
{
    if (buf[i] == '\n')
        return i + 1;
    /* CR: alone or followed by LF; the next byte decides. */
    if (i + 1 < len)
        return buf[i + 1] == '\n' ? i + 2 : i + 1;
    return at_eof ? i + 1 : 0;
}

static size_t bom_length(const char *buf, size_t len)
{
    return len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
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

static void describe(sse_event *ev)
{
    line_iter it = {ev->raw, 0};
    slice line, name, value;
    while (next_field_line(&it, &line)) {
        if (line.len == 0 || line.ptr[0] == ':')
            continue;
        ev->has_fields = true;
        split_field(line, &name, &value);
        if (slice_eq(name, SLICE_LIT("data"))) {
            if (ev->data_lines++ == 0)
                ev->data = value;
        }
    }
}

bool sse_next_event(sse_parser *p, const char *buf, size_t len, bool at_eof, sse_event *ev)
{
    *ev = (sse_event){0};
    size_t start = 0;
    if (!p->seen_bytes) {
        if (len < 3 && !at_eof && memcmp(buf, "\xEF\xBB\xBF", len) == 0)
            return false;
        start = bom_length(buf, len);
        if (len > 0)
            p->seen_bytes = true;
    }
    /* An event ends at an empty line: a terminator at the start of a line. */
    size_t i = p->scanned > start ? p->scanned : start;
    bool line_start = i == start || buf[i - 1] == '\n' || buf[i - 1] == '\r';
    while (i < len) {
        char c = buf[i];
        if (c != '\n' && c != '\r') {
            line_start = false;
            i++;
            continue;
        }
        size_t next = line_end(buf, len, i, at_eof);
        if (next == 0)
            break;
        if (line_start) {
            ev->raw = (slice){buf + start, next - start};
            describe(ev);
            p->scanned = 0;
            return true;
        }
        line_start = true;
        i = next;
    }
    p->scanned = i;
    if (at_eof && len > start) {
        ev->raw = (slice){buf + start, len - start};
        ev->unterminated = true;
        describe(ev);
        p->scanned = 0;
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

void sse_frame_begin(sse_frame *f, slice prefix)
{
    f->iov[0] = (struct iovec){(void *)prefix.ptr, prefix.len};
    f->iov[1] = (struct iovec){f->size_line, 0};
    f->count = 2;
    f->payload = 0;
}

bool sse_frame_add(sse_frame *f, slice piece)
{
    if (piece.len == 0)
        return true;
    if (f->count + 1 >= SSE_FRAME_MAX_IOV) /* keep a slot for the CRLF */
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
    f->iov[1].iov_len = http_chunk_header(f->size_line, f->payload);
    f->iov[f->count++] = (struct iovec){(void *)"\r\n", 2};
}

size_t sse_frame_bytes(const sse_frame *f)
{
    size_t n = 0;
    for (size_t i = 0; i < f->count; i++)
        n += f->iov[i].iov_len;
    return n;
}
