/* DNS messages (RFC 1035): one A or AAAA question out, its answer parsed
 * back with every read bounds-checked. Pure functions over bytes; the
 * reactor side lives in upstream/resolver.h. */
#ifndef SSEGATE_DNS_H
#define SSEGATE_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum {
    DNS_TYPE_A = 1,
    DNS_TYPE_CNAME = 5,
    DNS_TYPE_SOA = 6,
    DNS_TYPE_AAAA = 28,
    DNS_CLASS_IN = 1,
    DNS_NAME_MAX = 255,   /* wire form, with the root label */
    DNS_LABEL_MAX = 63,
    DNS_HEADER_LEN = 12,
    DNS_QUERY_MAX = DNS_HEADER_LEN + DNS_NAME_MAX + 4,
    DNS_MAX_ADDRS = 8,    /* addresses kept per answer (and per resolution) */
    DNS_CNAME_MAX = 8,    /* aliases followed before giving up */
    DNS_POINTER_MAX = 32  /* compression jumps within one name */
};

typedef struct dns_addr {
    uint8_t family; /* AF_INET or AF_INET6 */
    uint8_t ip[16]; /* 4 or 16 bytes used, network order */
} dns_addr;

/* How a lookup ended, for a cache entry or a caller. */
typedef enum dns_status {
    DNS_OK,
    DNS_NXDOMAIN, /* the name does not exist */
    DNS_NODATA,   /* the name exists, without A or AAAA records */
    DNS_SERVFAIL,
    DNS_TIMEOUT,
    DNS_OTHER     /* refused, malformed, unreachable...: a sentence says which */
} dns_status;

/* "NXDOMAIN", "NODATA", "SERVFAIL", "timeout", "other" (or "ok"). */
const char *dns_status_label(dns_status s);

typedef enum dns_rcode_kind { DNS_RCODE_NOERROR, DNS_RCODE_NXDOMAIN, DNS_RCODE_SERVFAIL, DNS_RCODE_OTHER } dns_rcode_kind;

typedef enum dns_parse_status {
    DNS_PARSE_OK,
    DNS_PARSE_NOT_OURS,  /* another id, not a response, another question: ignore, keep waiting */
    DNS_PARSE_MALFORMED  /* our answer, but broken: ask elsewhere */
} dns_parse_status;

typedef struct dns_answer {
    dns_rcode_kind rcode;
    unsigned rcode_value;  /* the raw RCODE, for messages */
    bool truncated;        /* TC: ask again over TCP; nothing past the question was read */
    bool chain_too_long;   /* more than DNS_CNAME_MAX aliases, or a loop */
    size_t cname_hops;
    size_t count;          /* addresses of the question's type, owner = the end of the alias chain */
    dns_addr addrs[DNS_MAX_ADDRS];
    uint32_t ttl;          /* least TTL over the aliases followed and the addresses kept */
    bool has_soa;
    uint32_t negative_ttl; /* RFC 2308: min(SOA TTL, SOA MINIMUM), when has_soa */
} dns_answer;

/* Writes a query for `name` (dotted, an optional final dot; no escapes) with
 * RD set into buf. Returns its length, or 0 when the name is not a valid
 * host name (empty label, label over 63, over 255 in all) or cap is short. */
size_t dns_build_query(uint8_t *buf, size_t cap, uint16_t id, const char *name, uint16_t qtype);

/* Reads the answer to the query (id, name, qtype) from msg[0..len). */
dns_parse_status dns_parse_response(const uint8_t *msg, size_t len, uint16_t id, const char *name, uint16_t qtype,
                                    dns_answer *out);

/* The same two with the name already in wire form (dns_name_to_wire), for
 * a caller that asks one name many times. */
size_t dns_build_query_wire(uint8_t *buf, size_t cap, uint16_t id, const uint8_t *wire, size_t wire_len,
                            uint16_t qtype);
dns_parse_status dns_parse_response_wire(const uint8_t *msg, size_t len, uint16_t id, const uint8_t *wire,
                                         size_t wire_len, uint16_t qtype, dns_answer *out);

/* The name in wire form, lowercased: length-prefixed labels and the root.
 * Returns the length (at most DNS_NAME_MAX), 0 when invalid. */
size_t dns_name_to_wire(const char *name, uint8_t out[DNS_NAME_MAX]);

/* Orders addrs in place RFC 8305 style: first_family first, then the
 * families alternate, each family keeping its own order. */
void dns_interleave(dns_addr *addrs, size_t count, int first_family);

/* The address with a port as a socket address; returns its length. */
socklen_t dns_addr_to_sockaddr(const dns_addr *a, uint16_t port, struct sockaddr_storage *out);

/* "1.2.3.4" or "::1" (no zone) into *out; false when it is neither. */
bool dns_parse_ip(const char *text, dns_addr *out);

#endif
