/* The resolver's memory: answers by name with their lifetimes, a pure
 * structure over a clock the caller passes in (the reactor's, or a test's).
 *
 * Positive and negative answers live their TTL clamped to 1 s .. 1 h. Past
 * its TTL a positive answer is still served while one refresh runs (the
 * first lookup after expiry is told to start it); a failed refresh keeps the
 * old answer, retried every DNS_REFRESH_RETRY_MS, for at most
 * DNS_STALE_MAX_MS past the TTL. A failed lookup with no answer to fall back
 * on is remembered for DNS_FAIL_HOLD_MS, so a dead server is not asked again
 * by every request. */
#ifndef SSEGATE_DNS_CACHE_H
#define SSEGATE_DNS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "upstream/dns.h"

enum {
    DNS_TTL_MIN_S = 1,
    DNS_TTL_MAX_S = 3600,
    DNS_STALE_MAX_MS = 5 * 60 * 1000,
    DNS_REFRESH_RETRY_MS = 5000,
    DNS_FAIL_HOLD_MS = 1000,
    DNS_DETAIL_MAX = 96
};

typedef struct dns_cache_answer {
    dns_status status;
    char detail[DNS_DETAIL_MAX]; /* the sentence for DNS_OTHER, else the label */
    size_t count;
    dns_addr addrs[DNS_MAX_ADDRS];
    /* Changes whenever the answer does (other addresses, another failure),
     * so a holder of an older copy knows to take the new one. */
    uint64_t generation;
} dns_cache_answer;

typedef enum dns_cache_verdict {
    DNS_CACHE_MISS,       /* nothing usable: resolve, and wait for it */
    DNS_CACHE_HIT,        /* use *out */
    DNS_CACHE_HIT_REFRESH /* use *out, and start a refresh: store or fail will follow */
} dns_cache_verdict;

typedef struct dns_cache dns_cache;

dns_cache *dns_cache_new(size_t max_entries);
void dns_cache_free(dns_cache *c);

/* *out stays valid until the next store, fail or free. */
dns_cache_verdict dns_cache_get(dns_cache *c, const char *key, uint64_t now_ms, const dns_cache_answer **out);

/* An answer (DNS_OK, DNS_NXDOMAIN or DNS_NODATA) for key, valid ttl_s
 * seconds (clamped). Returns the stored copy, NULL when out of memory. */
const dns_cache_answer *dns_cache_store(dns_cache *c, const char *key, const dns_cache_answer *a, uint32_t ttl_s,
                                        uint64_t now_ms);

/* A lookup failed (SERVFAIL, timeout, other). Returns what key now maps
 * to: the old answer when it may still be served, else the failure. */
const dns_cache_answer *dns_cache_fail(dns_cache *c, const char *key, dns_status status, const char *detail,
                                       uint64_t now_ms);

/* A generation no answer has had yet, for answers that are not stored. */
uint64_t dns_cache_new_generation(dns_cache *c);
size_t dns_cache_size(const dns_cache *c);

#endif
