/* DNS: answers parsed against one of a few questions (the first byte picks
 * the name and type, the message's own id is expected), and whatever is
 * taken for an answer is consistent; the same bytes as resolv.conf and hosts
 * text stay within their bounds; a name the builder accepts makes a query
 * that, echoed back as an empty answer, parses as ours. */
#include <sys/socket.h>

#include "fuzz.h"
#include "upstream/dns.h"
#include "upstream/dns_conf.h"

static const char *const names[] = {"mock.test", "a.b.c.example", "x", "n0.test"};

static void check_answer(const dns_answer *a, uint16_t qtype)
{
    FUZZ_CHECK(a->count <= DNS_MAX_ADDRS);
    FUZZ_CHECK(a->cname_hops <= DNS_CNAME_MAX);
    if (a->truncated || a->chain_too_long || a->rcode != DNS_RCODE_NOERROR)
        FUZZ_CHECK(a->count == 0);
    for (size_t i = 0; i < a->count; i++) {
        FUZZ_CHECK(a->addrs[i].family == (qtype == DNS_TYPE_A ? AF_INET : AF_INET6));
        for (size_t k = 0; k < i; k++)
            FUZZ_CHECK(memcmp(&a->addrs[i], &a->addrs[k], sizeof a->addrs[i]) != 0);
    }
    FUZZ_CHECK(!a->has_soa || a->count == 0);
    FUZZ_CHECK((a->ttl & 0x80000000u) == 0 && (a->negative_ttl & 0x80000000u) == 0);

    /* Interleaving reorders without losing or inventing an address. */
    dns_addr mixed[DNS_MAX_ADDRS];
    memcpy(mixed, a->addrs, a->count * sizeof mixed[0]);
    dns_interleave(mixed, a->count, AF_INET6);
    for (size_t i = 0; i < a->count; i++) {
        bool found = false;
        for (size_t k = 0; k < a->count && !found; k++)
            found = memcmp(&mixed[i], &a->addrs[k], sizeof mixed[i]) == 0;
        FUZZ_CHECK(found);
    }
}

static void check_texts(const char *text, size_t len)
{
    dns_conf c;
    dns_conf_parse(text, len, &c);
    FUZZ_CHECK(c.server_count >= 1 && c.server_count <= DNS_MAX_NAMESERVERS);
    for (size_t i = 0; i < c.server_count; i++)
        FUZZ_CHECK(c.servers[i].ss_family == AF_INET || c.servers[i].ss_family == AF_INET6);
    FUZZ_CHECK(c.search_count <= DNS_MAX_SEARCH);
    for (size_t i = 0; i < c.search_count; i++) {
        size_t n = strnlen(c.search[i], DNS_SEARCH_NAME_MAX);
        FUZZ_CHECK(n > 0 && n < DNS_SEARCH_NAME_MAX && c.search[i][n - 1] != '.');
    }
    FUZZ_CHECK(c.ndots <= DNS_NDOTS_MAX && c.timeout_s >= 1 && c.timeout_s <= DNS_TIMEOUT_MAX_S);
    FUZZ_CHECK(c.attempts >= 1 && c.attempts <= DNS_ATTEMPTS_MAX);

    char search[DNS_MAX_SEARCH + 1][DNS_NAME_MAX + 1];
    size_t n = dns_search_names(&c, "api.svc", search, DNS_MAX_SEARCH + 1);
    FUZZ_CHECK(n >= 1 && n <= c.search_count + 1);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(strnlen(search[i], DNS_NAME_MAX + 1) <= 253);

    dns_addr found[4];
    static const char *const hosts_names[] = {"localhost", "api.internal", "a"};
    for (size_t i = 0; i < 3; i++) {
        size_t got = dns_hosts_lookup(text, len, hosts_names[i], found, 4);
        FUZZ_CHECK(got <= 4);
        for (size_t k = 0; k < got; k++)
            FUZZ_CHECK(found[k].family == AF_INET || found[k].family == AF_INET6);
    }
}

/* The bytes as a name: a query the builder accepts comes back as ours. */
static void check_query(const uint8_t *data, size_t size)
{
    char name[300];
    size_t n = size < sizeof name - 1 ? size : sizeof name - 1;
    memcpy(name, data, n);
    name[n] = '\0';
    uint8_t q[DNS_QUERY_MAX];
    size_t len = dns_build_query(q, sizeof q, 0x1234, name, DNS_TYPE_AAAA);
    if (len == 0)
        return;
    FUZZ_CHECK(len <= DNS_QUERY_MAX && len > DNS_HEADER_LEN + 4);
    q[2] |= 0x80; /* QR */
    dns_answer a;
    FUZZ_CHECK(dns_parse_response(q, len, 0x1234, name, DNS_TYPE_AAAA, &a) == DNS_PARSE_OK);
    FUZZ_CHECK(a.count == 0 && a.rcode == DNS_RCODE_NOERROR && !a.truncated);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    char *text = fuzz_copy(data, size);
    check_texts(text, size);
    free(text);
    check_query(data, size);
    if (size < 1)
        return 0;
    uint16_t qtype = (data[0] & 1) ? DNS_TYPE_AAAA : DNS_TYPE_A;
    const char *name = names[(data[0] >> 1) & 3];
    /* an exact-size copy of the message, so ASan sees any read past its end */
    uint8_t *msg = (uint8_t *)fuzz_copy(data + 1, size - 1);
    uint16_t id = size >= 3 ? (uint16_t)(msg[0] << 8 | msg[1]) : 0;
    dns_answer a;
    dns_parse_status st = dns_parse_response(msg, size - 1, id, name, qtype, &a);
    FUZZ_CHECK(st == DNS_PARSE_OK || st == DNS_PARSE_NOT_OURS || st == DNS_PARSE_MALFORMED);
    if (st == DNS_PARSE_OK)
        check_answer(&a, qtype);
    /* another id is never ours */
    FUZZ_CHECK(dns_parse_response(msg, size - 1, (uint16_t)(id ^ 0x5a5a), name, qtype, &a) == DNS_PARSE_NOT_OURS);
    free(msg);
    return 0;
}
