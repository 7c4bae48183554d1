/* Per-client limits (§3): requests per minute, tokens per minute and
 * concurrent streams. Requests and tokens are GCRA cells (one "theoretical
 * arrival time" each), so a check is O(1) and a client's whole state is
 * three numbers. Tokens are charged after the fact, when the usage is known:
 * a client that spent past its budget is refused until the window frees it. */
#ifndef SSEGATE_LIMITS_H
#define SSEGATE_LIMITS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/wbuf.h"

/* 0 means no limit of that kind. */
typedef struct limit_spec {
    uint64_t rpm, tpm, streams;
} limit_spec;

typedef struct limit_state {
    uint64_t req_tat_us; /* GCRA: when the request cell is next fully drained */
    uint64_t tok_tat_us;
    uint64_t streams;    /* streams in flight */
} limit_state;

typedef enum limit_refusal { REFUSED_NONE, REFUSED_REQUESTS, REFUSED_TOKENS, REFUSED_STREAMS } limit_refusal;

/* What one check found: the refusal (if any) and the figures OpenAI's
 * x-ratelimit-* headers carry. */
typedef struct limit_verdict {
    limit_refusal refused;
    uint64_t retry_after_s; /* when refused: whole seconds, rounded up, at least 1 */
    uint64_t limit_requests, remaining_requests, reset_requests_us;
    uint64_t limit_tokens, remaining_tokens, reset_tokens_us;
} limit_verdict;

static inline bool limit_spec_any(const limit_spec *s) { return s->rpm || s->tpm || s->streams; }

/* Checks the limits for one request at now_us; on admission counts the
 * request (and the stream when `stream`). */
bool limits_admit(limit_state *st, const limit_spec *spec, uint64_t now_us, bool stream, limit_verdict *v);
/* Charges tokens once the request's usage is known. */
void limits_charge_tokens(limit_state *st, const limit_spec *spec, uint64_t now_us, uint64_t tokens);
/* A stream admitted with `stream` has ended. */
void limits_stream_ended(limit_state *st);

/* Appends "\r\nx-ratelimit-...: ..." header lines (and Retry-After when
 * refused) for the limits the spec sets; nothing for unset ones. */
void limits_write_headers(wbuf *b, const limit_verdict *v);

/* "20ms", "1.5s", "6m0s": the duration format of OpenAI's reset headers. */
void limits_put_duration(wbuf *b, uint64_t us);

#endif
