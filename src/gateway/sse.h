/* Server-Sent Events: an incremental parser that finds complete events in
 * an upstream body (WHATWG rules: LF, CRLF or CR line ends, comments,
 * multi-line data), and a framer that turns event slices into one HTTP
 * chunk of iovecs without copying them. */
#ifndef SSEGATE_SSE_H
#define SSEGATE_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/uio.h>

#include "core/slice.h"

/* What is known of the pending event so far; offsets are from its start,
 * so the caller may move the pending bytes between calls. */
typedef struct sse_parser {
    size_t line_start;  /* start of the line being scanned */
    size_t data_lines;
    size_t data_off, data_len; /* the first data value */
    size_t skip;     /* a leading BOM, not part of the first event */
    bool has_fields;
    bool seen_bytes; /* a leading BOM is only stripped at the very start */
} sse_parser;

typedef struct sse_event {
    size_t consumed;   /* bytes of the input this event accounts for (a leading BOM too) */
    slice raw;         /* the whole event, blank line included, BOM excluded */
    slice data;        /* the first data field's value */
    size_t data_lines; /* > 1: the value is spread over lines; see sse_join_data */
    bool has_fields;   /* false for a block of comments only */
    bool unterminated; /* the final event at EOF, lacking its blank line */
} sse_event;

/* Looks for the next complete event at the start of buf[0..len). Returns
 * true and fills *ev (consume ev->consumed bytes). `at_eof`: no more bytes
 * will come, so a trailing CR ends its line and a final event lacking its
 * blank line is returned with `unterminated` set. */
bool sse_next_event(sse_parser *p, const char *buf, size_t len, bool at_eof, sse_event *ev);

/* Joins the values of all data lines with LF, as a client sees them. Writes
 * at most cap bytes; returns the full length. */
size_t sse_join_data(slice raw, char *out, size_t cap);

/* True for the `data: [DONE]` event that ends an OpenAI stream. */
bool sse_is_done(const sse_event *ev);

enum { SSE_FRAME_MAX_IOV = 64 };

/* One HTTP chunk: [prefix][chunk size][pieces...][CRLF]. The prefix slot
 * carries a response head so head and first event go in one write. */
typedef struct sse_frame {
    struct iovec iov[SSE_FRAME_MAX_IOV];
    size_t count;
    size_t payload;
    bool chunked; /* false: the pieces as they are (an HTTP/1.0 client) */
    char size_line[18];
} sse_frame;

void sse_frame_begin(sse_frame *f, slice prefix, bool chunked);
/* Adds a piece; false when the frame is full (send it and begin another). */
bool sse_frame_add(sse_frame *f, slice piece);
/* Fills in the chunk size and the closing CRLF (nothing when empty). */
void sse_frame_end(sse_frame *f);
/* After sse_frame_end: appends the zero-size chunk that ends the body. */
void sse_frame_last(sse_frame *f);
size_t sse_frame_bytes(const sse_frame *f);

#endif
