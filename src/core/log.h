/* Log lines on stderr: one per request (§8) and a few about the process.
 * Secrets never reach here: callers pass names, not keys. */
#ifndef SSEGATE_LOG_H
#define SSEGATE_LOG_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "core/loop.h"
#include "core/slice.h"
#include "core/wbuf.h"

typedef struct access_record {
    slice req_id, method, path, client, model, upstream, upstream_req_id;
    int status;
    int64_t ttfb_ms; /* -1 when no upstream byte came */
    uint64_t dur_ms, bytes_in, bytes_out, chunks, prompt_tokens, completion_tokens;
    unsigned retries;
    bool resumed;      /* answered from a resumable stream's replay */
    const char *error; /* NULL when none */
} access_record;

typedef struct log_field {
    const char *key, *value;
} log_field;

void log_set_format(log_format f);
/* With a loop, access lines are batched: a batch is written when the next
 * line would take it past PIPE_BUF (4 KiB: one atomic write to a pipe),
 * else 20 ms after its first line; and at log_attach (NULL on shutdown),
 * before any other line (log_message), and at exit(). Without a loop (or
 * after log_attach(NULL)), each line is written at once. */
void log_attach(loop *l);
void log_flush(void);
void log_access(const access_record *r);
void log_message(const char *level, const char *msg, const log_field *fields, size_t count);

/* The formatting behind those, for tests. A timestamp is ISO 8601 in UTC
 * with milliseconds, "2024-05-01T12:34:56.789Z", always LOG_TIMESTAMP_LEN
 * bytes (years outside 0000..9999 print as the nearest end). An access line
 * is written without its newline, in the format set by log_set_format.
 * String values longer than 1024 bytes once escaped end cut, in "...". */
enum { LOG_TIMESTAMP_LEN = 24 };
void log_put_timestamp(wbuf *b, int64_t unix_ms);
void log_put_access(wbuf *b, const access_record *r, int64_t unix_ms);

#endif
