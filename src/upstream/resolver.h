/* A stub resolver on the reactor: nothing blocks, nothing calls back from
 * inside the call that asked.
 *
 * A name is looked up in the hosts file first, then (unless it is an IP
 * literal) asked of the resolv.conf nameservers over UDP, A and AAAA at
 * once, each query from a fresh socket (a kernel-chosen source port) with a
 * random id; nameservers in order (or rotated), `timeout` per try,
 * `attempts` rounds; a truncated answer is asked again over TCP; the search
 * list applies with ndots semantics. Answers are cached (upstream/dns_cache.h):
 * a hit costs one hash lookup, an expired answer is served while it is
 * refreshed. Both files are re-read when they change (checked at most once
 * a second, when a lookup starts). "localhost" and names under it map to
 * the loopback addresses when the hosts file does not name them (RFC 6761). */
#ifndef SSEGATE_RESOLVER_H
#define SSEGATE_RESOLVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/loop.h"
#include "upstream/dns.h"
#include "upstream/dns_cache.h"

typedef struct dns_resolver dns_resolver;
typedef struct dns_query dns_query;

typedef struct dns_result {
    dns_status status;
    /* "NXDOMAIN", "NODATA", "SERVFAIL", "timeout", or for DNS_OTHER a
     * sentence ("REFUSED by 127.0.0.1:53", "invalid host name", ...). */
    char message[DNS_DETAIL_MAX];
    size_t count; /* addresses, IPv6 and IPv4 interleaved, the family that answered first leading */
    struct sockaddr_storage addrs[DNS_MAX_ADDRS];
    socklen_t lens[DNS_MAX_ADDRS];
    uint64_t generation; /* changes when the name's answer does */
} dns_result;

typedef void (*dns_callback)(void *ctx, const dns_result *res);

/* Reads both files; a missing file means libc's defaults (nameserver
 * 127.0.0.1) or no hosts entries. NULL with *why when a file cannot be read. */
dns_resolver *dns_resolver_new(loop *l, const char *resolv_conf_path, const char *hosts_path, const char **why);
/* After every query was delivered or cancelled. */
void dns_resolver_free(dns_resolver *r);

/* Resolves name; cb runs once, from the loop, unless dns_cancel comes
 * first. The handle is dead once cb has run. NULL when out of memory. */
dns_query *dns_resolve(dns_resolver *r, const char *name, uint16_t port, dns_callback cb, void *ctx);
void dns_cancel(dns_query *q);

typedef enum dns_peek_verdict {
    DNS_PEEK_MISS,    /* nothing cached: dns_resolve, and wait */
    DNS_PEEK_SAME,    /* the cached answer is still known_generation's */
    DNS_PEEK_CHANGED  /* *out holds the cached answer, newer than known_generation */
} dns_peek_verdict;

/* The steady state, synchronous: what the cache holds for name, a refresh
 * started in the background when it has expired. Fills *out only when it
 * differs from what the caller last took. */
dns_peek_verdict dns_peek(dns_resolver *r, const char *name, uint16_t port, uint64_t known_generation,
                          dns_result *out);

#endif
