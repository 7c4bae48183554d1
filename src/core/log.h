/* Log lines on stderr: one per request (§8) and a few about the process.
 * Secrets never reach here: callers pass names, not keys. */
#ifndef SSEGATE_LOG_H
#define SSEGATE_LOG_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "core/loop.h"
#include "core/slice.h"

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
/* With a loop, access lines are batched and written once at the end of each
 * tick; without one (or after log_attach(NULL)), each is written at once. */
void log_attach(loop *l);
void log_flush(void);
void log_access(const access_record *r);
void log_message(const char *level, const char *msg, const log_field *fields, size_t count);

#endif
