/* When to try an upstream again: exponential backoff with full jitter, and
 * what an upstream's answer says about retrying (Retry-After,
 * retry-after-ms, x-should-retry). Pure: the random bits come from the
 * caller, so tests choose them. */
#ifndef SSEGATE_RETRY_H
#define SSEGATE_RETRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/slice.h"
#include "http/http.h"

enum {
    RETRY_BASE_MS = 100,
    RETRY_CAP_MS = 2000,
    RETRY_HINT_MAX_MS = 86400000, /* longer hints are taken as a day */
};

/* Full jitter: uniform in [0, min(cap, base * 2^attempt)] drawn from
 * random_bits; attempt 0 is the first retry. */
uint64_t retry_backoff_ms(unsigned attempt, uint64_t random_bits);

/* A small xorshift source for the relay's draws. */
typedef struct retry_rng {
    uint64_t s;
} retry_rng;
void retry_rng_seed(retry_rng *r, uint64_t seed);
uint64_t retry_rng_next(retry_rng *r);

/* Retry-After: delay-seconds (a fraction is allowed, as upstreams send
 * "0.5"). An HTTP-date is refused: false, the same as no hint. */
bool retry_after_parse(slice value, uint64_t *ms);
/* retry-after-ms: milliseconds, fraction allowed. */
bool retry_after_ms_parse(slice value, uint64_t *ms);
/* x-should-retry: 1 for true, 0 for false, -1 for anything else. */
int should_retry_parse(slice value);

typedef struct retry_hints {
    bool has_delay;
    uint64_t delay_ms;   /* retry-after-ms, else Retry-After */
    int should_retry;    /* x-should-retry: 1, 0, or -1 when absent */
} retry_hints;

void retry_hints_read(const http_header *headers, size_t count, retry_hints *out);

/* The wait before retry number `attempt`: the upstream's delay when it
 * gave one within the cap, else the backoff. A delay past the cap is the
 * caller's cue to cool the upstream (upstream_cooldown) and move on. */
uint64_t retry_delay_ms(unsigned attempt, const retry_hints *h, uint64_t random_bits);

#endif
