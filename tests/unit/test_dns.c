/* DNS: the query builder, the answer parser (compression, loops, pointers
 * past the end, truncation, mismatches, CNAME chains, negative TTLs), the
 * address interleaving, resolv.conf and hosts parsing, the search list and
 * the TTL cache on a fake clock. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "dns_msg.h"
#include "unit.h"
#include "upstream/dns.h"
#include "upstream/dns_cache.h"
#include "upstream/dns_conf.h"

static dns_parse_status parse(const dns_msg *m, uint16_t id, const char *name, uint16_t qtype, dns_answer *a)
{
    return dns_parse_response(m->b, m->n, id, name, qtype, a);
}

static bool addr_is(const dns_addr *a, const char *text)
{
    dns_addr want;
    return dns_parse_ip(text, &want) && memcmp(a, &want, sizeof want) == 0;
}

/* The common case: mock.test A 127.0.0.1, the owner a pointer to the question. */
static void good_answer(dns_msg *m, uint16_t id, uint32_t ttl)
{
    msg_header(m, id, MSG_RESPONSE, 1, 1, 0);
    msg_question(m, "mock.test", DNS_TYPE_A);
    msg_ptr(m, MSG_QUESTION_AT);
    msg_a(m, ttl, 127, 0, 0, 1);
}

/* ---- the query ---- */

TEST(dns_query_bytes)
{
    uint8_t q[DNS_QUERY_MAX];
    size_t n = dns_build_query(q, sizeof q, 0xBEEF, "Api.Example.COM.", DNS_TYPE_AAAA);
    static const uint8_t want[] = {0xBE, 0xEF, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, 'a', 'p', 'i', 7, 'e', 'x',
                                   'a',  'm',  'p',  'l',  'e', 3, 'c', 'o', 'm', 0, 0, 28, 0, 1};
    CHECK_EQ_SIZE(n, sizeof want);
    CHECK(memcmp(q, want, sizeof want) == 0);
    /* without the final dot: the same question */
    uint8_t q2[DNS_QUERY_MAX];
    CHECK_EQ_SIZE(dns_build_query(q2, sizeof q2, 0xBEEF, "api.example.com", DNS_TYPE_AAAA), sizeof want);
    CHECK(memcmp(q2, want, sizeof want) == 0);
    /* the buffer must hold it all */
    CHECK_EQ_SIZE(dns_build_query(q, sizeof want - 1, 1, "api.example.com", DNS_TYPE_A), 0);
}

TEST(dns_query_rejects_bad_names)
{
    uint8_t q[DNS_QUERY_MAX];
    static const char *const bad[] = {"", ".", "a..b", ".a", "a b", "a\tb", "caf\xc3\xa9.test", "a\x7f"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (dns_build_query(q, sizeof q, 1, bad[i], DNS_TYPE_A) != 0)
            unit_fail(__FILE__, __LINE__, "name \"%s\" accepted", bad[i]);
    char label[80];
    memset(label, 'x', 64);
    label[64] = '\0';
    CHECK_EQ_SIZE(dns_build_query(q, sizeof q, 1, label, DNS_TYPE_A), 0);
    label[63] = '\0';
    CHECK(dns_build_query(q, sizeof q, 1, label, DNS_TYPE_A) > 0);
    /* 253 characters is the longest name; 254 is one too many */
    char name[300];
    size_t o = 0;
    while (o + 4 <= 253) {
        memcpy(name + o, "abc.", 4);
        o += 4;
    }
    name[o - 1] = 'x';
    while (o < 253)
        name[o++] = 'y';
    name[o] = '\0';
    CHECK_EQ_SIZE(strlen(name), 253);
    CHECK(dns_build_query(q, sizeof q, 1, name, DNS_TYPE_A) > 0);
    name[253] = 'z';
    name[254] = '\0';
    CHECK_EQ_SIZE(dns_build_query(q, sizeof q, 1, name, DNS_TYPE_A), 0);
}

/* ---- the answer ---- */

TEST(dns_parse_simple_answer)
{
    dns_msg m;
    good_answer(&m, 7, 300);
    dns_answer a;
    CHECK(parse(&m, 7, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
    CHECK(a.rcode == DNS_RCODE_NOERROR && !a.truncated && !a.chain_too_long);
    CHECK_EQ_SIZE(a.count, 1);
    CHECK(addr_is(&a.addrs[0], "127.0.0.1"));
    CHECK(a.ttl == 300);
    /* the question's name is compared without case, the final dot ignored */
    CHECK(parse(&m, 7, "MOCK.Test.", DNS_TYPE_A, &a) == DNS_PARSE_OK && a.count == 1);
}

TEST(dns_parse_mismatches_are_not_ours)
{
    dns_msg m;
    good_answer(&m, 7, 300);
    dns_answer a;
    CHECK(parse(&m, 8, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_NOT_OURS);      /* another id */
    CHECK(parse(&m, 7, "mock.tes", DNS_TYPE_A, &a) == DNS_PARSE_NOT_OURS);       /* another name */
    CHECK(parse(&m, 7, "other.test", DNS_TYPE_A, &a) == DNS_PARSE_NOT_OURS);
    CHECK(parse(&m, 7, "mock.test", DNS_TYPE_AAAA, &a) == DNS_PARSE_NOT_OURS);   /* another type */
    dns_msg q = m;
    q.b[2] &= 0x7f; /* QR clear: a query, not an answer */
    CHECK(parse(&q, 7, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_NOT_OURS);
    q = m;
    q.b[12 + 11 + 3] = 3; /* class CH in the question */
    CHECK(parse(&q, 7, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_NOT_OURS);
    CHECK(dns_parse_response(m.b, 11, 7, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_NOT_OURS); /* no header */
}

TEST(dns_parse_malformed_headers)
{
    dns_msg m;
    dns_answer a;
    good_answer(&m, 7, 300);
    m.b[2] |= 0x08; /* opcode 1 */
    CHECK(parse(&m, 7, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
    good_answer(&m, 7, 300);
    m.b[5] = 2; /* two questions */
    CHECK(parse(&m, 7, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
    m.b[5] = 0; /* none */
    CHECK(parse(&m, 7, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
}

TEST(dns_parse_every_cut_is_refused)
{
    dns_msg m;
    good_answer(&m, 7, 300);
    dns_answer a;
    /* A message cut short anywhere (without TC) is never taken for an answer. */
    for (size_t len = 0; len < m.n; len++) {
        dns_parse_status st = dns_parse_response(m.b, len, 7, "mock.test", DNS_TYPE_A, &a);
        if (st == DNS_PARSE_OK)
            unit_fail(__FILE__, __LINE__, "a message cut to %zu of %zu bytes parsed", len, m.n);
    }
    CHECK(dns_parse_response(m.b, m.n, 7, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
}

TEST(dns_parse_truncated_flag)
{
    dns_msg m;
    msg_header(&m, 9, MSG_RESPONSE | 0x0200, 1, 3, 0); /* TC, and answers that are not there */
    msg_question(&m, "big.test", DNS_TYPE_A);
    dns_answer a;
    CHECK(parse(&m, 9, "big.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
    CHECK(a.truncated && a.count == 0);
}

TEST(dns_parse_rcodes)
{
    dns_msg m;
    dns_answer a;
    static const struct {
        unsigned rcode;
        dns_rcode_kind kind;
    } cases[] = {{2, DNS_RCODE_SERVFAIL}, {5, DNS_RCODE_OTHER}, {1, DNS_RCODE_OTHER}, {4, DNS_RCODE_OTHER}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        msg_header(&m, 3, MSG_RESPONSE | cases[i].rcode, 1, 0, 0);
        msg_question(&m, "x.test", DNS_TYPE_A);
        CHECK(parse(&m, 3, "x.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
        CHECK(a.rcode == cases[i].kind && a.rcode_value == cases[i].rcode);
    }
}

TEST(dns_parse_compression_pointers)
{
    dns_msg m;
    dns_answer a;
    /* A CNAME whose target ends in a pointer into the question: a.mock.test -> x + ptr(mock.test). */
    msg_header(&m, 1, MSG_RESPONSE, 1, 2, 0);
    msg_question(&m, "a.mock.test", DNS_TYPE_A);
    msg_ptr(&m, MSG_QUESTION_AT);
    size_t at = msg_rr(&m, DNS_TYPE_CNAME, 60);
    size_t target = m.n;
    msg_u8(&m, 1);
    msg_u8(&m, 'x');
    msg_ptr(&m, MSG_QUESTION_AT + 2); /* "mock.test" inside the question */
    msg_rr_end(&m, at);
    msg_ptr(&m, target); /* owner: x.mock.test, by a pointer to a name that itself ends in one */
    msg_a(&m, 30, 10, 0, 0, 2);
    CHECK(parse(&m, 1, "a.mock.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
    CHECK_EQ_SIZE(a.count, 1);
    CHECK(addr_is(&a.addrs[0], "10.0.0.2"));
    CHECK(a.cname_hops == 1 && a.ttl == 30);
}

TEST(dns_parse_pointer_loops_and_strays)
{
    dns_answer a;
    dns_msg m;
    /* the answer's owner points at itself */
    msg_header(&m, 1, MSG_RESPONSE, 1, 1, 0);
    msg_question(&m, "mock.test", DNS_TYPE_A);
    size_t self = m.n;
    msg_ptr(&m, self);
    msg_a(&m, 60, 1, 2, 3, 4);
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
    /* a pointer forward (to the A record's own bytes) */
    m.b[self + 1] = (uint8_t)(self + 4);
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
    /* a pointer past the end of the message */
    m.b[self] = 0xC0 | 0x3F;
    m.b[self + 1] = 0xFF;
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
    /* a pointer into the header */
    m.b[self] = 0xC0;
    m.b[self + 1] = 4;
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
    /* a pointer cut in half at the end */
    msg_header(&m, 1, MSG_RESPONSE, 1, 1, 0);
    msg_question(&m, "mock.test", DNS_TYPE_A);
    msg_u8(&m, 0xC0);
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
    /* the reserved label types 01 and 10 */
    msg_header(&m, 1, MSG_RESPONSE, 1, 1, 0);
    msg_question(&m, "mock.test", DNS_TYPE_A);
    msg_u8(&m, 0x41);
    msg_u8(&m, 'x');
    msg_u8(&m, 0);
    msg_a(&m, 60, 1, 2, 3, 4);
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
}

/* Pointers strung backwards inside an unknown record's RDATA (where the
 * parser does not look), each a lone pointer to the one before, the first
 * to the question; the next record's owner points at the last of them. */
static void pointer_chain(dns_msg *m, size_t depth)
{
    msg_header(m, 1, MSG_RESPONSE, 1, 2, 0);
    msg_question(m, "mock.test", DNS_TYPE_A);
    msg_name(m, "pad.test");
    size_t at = msg_rr(m, 99, 60);
    size_t prev = MSG_QUESTION_AT;
    for (size_t i = 0; i < depth; i++) {
        size_t here = m->n;
        msg_ptr(m, prev);
        prev = here;
    }
    msg_rr_end(m, at);
    msg_ptr(m, prev);
    msg_a(m, 60, 1, 2, 3, 4);
}

TEST(dns_parse_pointer_chains_are_bounded)
{
    dns_msg m;
    dns_answer a;
    pointer_chain(&m, 3);
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_OK && a.count == 1);
    pointer_chain(&m, DNS_POINTER_MAX - 1); /* with the owner's own: DNS_POINTER_MAX jumps */
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_OK && a.count == 1);
    /* every pointer points back, but following them all is too many jumps */
    pointer_chain(&m, DNS_POINTER_MAX);
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
    pointer_chain(&m, 200);
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
}

TEST(dns_parse_name_over_255_is_refused)
{
    /* 5 labels of 63 in the owner: 321 bytes of name. */
    dns_msg m;
    dns_answer a;
    msg_header(&m, 1, MSG_RESPONSE, 1, 1, 0);
    msg_question(&m, "mock.test", DNS_TYPE_A);
    for (int i = 0; i < 5; i++) {
        msg_u8(&m, 63);
        for (int k = 0; k < 63; k++)
            msg_u8(&m, 'a');
    }
    msg_u8(&m, 0);
    msg_a(&m, 60, 1, 2, 3, 4);
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
}

TEST(dns_parse_bad_records)
{
    dns_msg m;
    dns_answer a;
    /* an A record of 5 bytes */
    msg_header(&m, 1, MSG_RESPONSE, 1, 1, 0);
    msg_question(&m, "mock.test", DNS_TYPE_A);
    msg_ptr(&m, MSG_QUESTION_AT);
    size_t at = msg_rr(&m, DNS_TYPE_A, 60);
    msg_bytes(&m, "\1\2\3\4\5", 5);
    msg_rr_end(&m, at);
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
    /* RDLENGTH past the end */
    good_answer(&m, 1, 60);
    m.b[m.n - 5] = 9;
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
    /* more answers announced than there are */
    good_answer(&m, 1, 60);
    m.b[7] = 2;
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
    /* a CNAME whose target runs past its RDATA */
    msg_header(&m, 1, MSG_RESPONSE, 1, 1, 0);
    msg_question(&m, "mock.test", DNS_TYPE_A);
    msg_ptr(&m, MSG_QUESTION_AT);
    at = msg_rr(&m, DNS_TYPE_CNAME, 60);
    msg_name(&m, "other.test");
    msg_rr_end(&m, at);
    m.b[at + 1] = 3;
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
}

TEST(dns_parse_many_addresses)
{
    dns_msg m;
    dns_answer a;
    msg_header(&m, 1, MSG_RESPONSE, 1, 12, 0);
    msg_question(&m, "mock.test", DNS_TYPE_A);
    for (int i = 0; i < 12; i++) {
        msg_ptr(&m, MSG_QUESTION_AT);
        msg_a(&m, (uint32_t)(100 + i), 10, 0, 0, (uint8_t)(i < 2 ? 1 : i)); /* 10.0.0.1 twice */
    }
    CHECK(parse(&m, 1, "mock.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
    CHECK_EQ_SIZE(a.count, DNS_MAX_ADDRS);
    CHECK(addr_is(&a.addrs[0], "10.0.0.1") && addr_is(&a.addrs[1], "10.0.0.2"));
    CHECK(a.ttl == 100);
}

TEST(dns_parse_aaaa_and_ttl_top_bit)
{
    dns_msg m;
    dns_answer a;
    msg_header(&m, 1, MSG_RESPONSE, 1, 1, 0);
    msg_question(&m, "six.test", DNS_TYPE_AAAA);
    msg_ptr(&m, MSG_QUESTION_AT);
    size_t at = msg_rr(&m, DNS_TYPE_AAAA, 0x80000010u); /* the top bit: means 0 */
    uint8_t ip[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 5};
    msg_bytes(&m, ip, 16);
    msg_rr_end(&m, at);
    CHECK(parse(&m, 1, "six.test", DNS_TYPE_AAAA, &a) == DNS_PARSE_OK);
    CHECK_EQ_SIZE(a.count, 1);
    CHECK(addr_is(&a.addrs[0], "2001:db8::5"));
    CHECK(a.ttl == 0);
}

/* ---- aliases ---- */

TEST(dns_parse_cname_chain_in_any_order)
{
    dns_msg m;
    dns_answer a;
    /* a -> b -> c, c A; records listed backwards, with a record for an
     * unrelated name (out of bailiwick) in between. */
    msg_header(&m, 1, MSG_RESPONSE, 1, 4, 0);
    msg_question(&m, "a.test", DNS_TYPE_A);
    msg_name(&m, "c.test");
    msg_a(&m, 50, 10, 0, 0, 3);
    msg_name(&m, "evil.test");
    msg_a(&m, 9999, 6, 6, 6, 6);
    msg_name(&m, "b.test");
    msg_cname(&m, 40, "C.test");
    msg_ptr(&m, MSG_QUESTION_AT);
    msg_cname(&m, 70, "b.test");
    CHECK(parse(&m, 1, "a.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
    CHECK_EQ_SIZE(a.count, 1);
    CHECK(addr_is(&a.addrs[0], "10.0.0.3"));
    CHECK_EQ_SIZE(a.cname_hops, 2);
    CHECK(a.ttl == 40); /* the least along the chain */
}

TEST(dns_parse_only_the_chain_counts)
{
    dns_msg m;
    dns_answer a;
    /* The question's name has a CNAME and (wrongly) an A of its own: only the
     * alias's target may give addresses. An A for an unrelated name is ignored. */
    msg_header(&m, 1, MSG_RESPONSE, 1, 4, 0);
    msg_question(&m, "www.test", DNS_TYPE_A);
    msg_ptr(&m, MSG_QUESTION_AT);
    msg_a(&m, 60, 6, 6, 6, 6);
    msg_ptr(&m, MSG_QUESTION_AT);
    msg_cname(&m, 60, "real.test");
    msg_name(&m, "real.test");
    msg_a(&m, 60, 10, 1, 1, 1);
    msg_name(&m, "unrelated.test");
    msg_a(&m, 60, 7, 7, 7, 7);
    CHECK(parse(&m, 1, "www.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
    CHECK_EQ_SIZE(a.count, 1);
    CHECK(addr_is(&a.addrs[0], "10.1.1.1"));
    /* With no CNAME, the unrelated name's record gives nothing: NODATA. */
    msg_header(&m, 1, MSG_RESPONSE, 1, 1, 0);
    msg_question(&m, "www.test", DNS_TYPE_A);
    msg_name(&m, "unrelated.test");
    msg_a(&m, 60, 7, 7, 7, 7);
    CHECK(parse(&m, 1, "www.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
    CHECK_EQ_SIZE(a.count, 0);
}

static void chain_of(dns_msg *m, size_t hops, bool loop)
{
    char name[32], next[32];
    msg_header(m, 1, MSG_RESPONSE, 1, (unsigned)hops + (loop ? 0 : 1), 0);
    msg_question(m, "n0.test", DNS_TYPE_A);
    for (size_t i = 0; i < hops; i++) {
        snprintf(name, sizeof name, "n%zu.test", i);
        snprintf(next, sizeof next, "n%zu.test", loop && i + 1 == hops ? (size_t)0 : i + 1);
        msg_name(m, name);
        msg_cname(m, 60, next);
    }
    if (!loop) {
        snprintf(name, sizeof name, "n%zu.test", hops);
        msg_name(m, name);
        msg_a(m, 60, 10, 9, 9, 9);
    }
}

TEST(dns_parse_cname_chain_bounds)
{
    dns_msg m;
    dns_answer a;
    chain_of(&m, DNS_CNAME_MAX, false);
    CHECK(parse(&m, 1, "n0.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
    CHECK(!a.chain_too_long && a.count == 1 && a.cname_hops == DNS_CNAME_MAX);
    chain_of(&m, DNS_CNAME_MAX + 1, false);
    CHECK(parse(&m, 1, "n0.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
    CHECK(a.chain_too_long && a.count == 0);
    chain_of(&m, 2, true); /* n0 -> n1 -> n0 */
    CHECK(parse(&m, 1, "n0.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
    CHECK(a.chain_too_long && a.count == 0);
}

/* ---- negative answers (RFC 2308) ---- */

TEST(dns_parse_negative_ttl)
{
    dns_msg m;
    dns_answer a;
    msg_header(&m, 1, MSG_RESPONSE | 3, 1, 0, 1);
    msg_question(&m, "gone.example.test", DNS_TYPE_A);
    msg_soa(&m, "Example.test", 3600, 300);
    CHECK(parse(&m, 1, "gone.example.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
    CHECK(a.rcode == DNS_RCODE_NXDOMAIN && a.count == 0);
    CHECK(a.has_soa && a.negative_ttl == 300); /* min(TTL, MINIMUM) */
    msg_header(&m, 1, MSG_RESPONSE, 1, 0, 1); /* NODATA, the SOA's own TTL smaller */
    msg_question(&m, "gone.example.test", DNS_TYPE_AAAA);
    msg_soa(&m, "test", 20, 300);
    CHECK(parse(&m, 1, "gone.example.test", DNS_TYPE_AAAA, &a) == DNS_PARSE_OK);
    CHECK(a.rcode == DNS_RCODE_NOERROR && a.count == 0 && a.has_soa && a.negative_ttl == 20);
    /* an SOA for a zone the name is not in says nothing */
    msg_header(&m, 1, MSG_RESPONSE | 3, 1, 0, 1);
    msg_question(&m, "gone.example.test", DNS_TYPE_A);
    msg_soa(&m, "other.test", 3600, 300);
    CHECK(parse(&m, 1, "gone.example.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
    CHECK(!a.has_soa);
    /* "ample.test" is no ancestor of "gone.example.test" either */
    msg_header(&m, 1, MSG_RESPONSE | 3, 1, 0, 1);
    msg_question(&m, "gone.example.test", DNS_TYPE_A);
    msg_soa(&m, "ample.test", 3600, 300);
    CHECK(parse(&m, 1, "gone.example.test", DNS_TYPE_A, &a) == DNS_PARSE_OK && !a.has_soa);
    /* a broken SOA in the authority section */
    msg_header(&m, 1, MSG_RESPONSE | 3, 1, 0, 1);
    msg_question(&m, "gone.example.test", DNS_TYPE_A);
    msg_soa(&m, "test", 3600, 300);
    m.n -= 4; /* its RDLENGTH now claims bytes past the end */
    CHECK(parse(&m, 1, "gone.example.test", DNS_TYPE_A, &a) == DNS_PARSE_MALFORMED);
}

TEST(dns_parse_negative_after_alias)
{
    /* www -> cdn.other, which does not exist: the SOA is the target's zone's. */
    dns_msg m;
    dns_answer a;
    msg_header(&m, 1, MSG_RESPONSE | 3, 1, 1, 1);
    msg_question(&m, "www.test", DNS_TYPE_A);
    msg_ptr(&m, MSG_QUESTION_AT);
    msg_cname(&m, 60, "cdn.other");
    msg_soa(&m, "other", 900, 120);
    CHECK(parse(&m, 1, "www.test", DNS_TYPE_A, &a) == DNS_PARSE_OK);
    CHECK(a.rcode == DNS_RCODE_NXDOMAIN && a.count == 0 && a.cname_hops == 1);
    CHECK(a.has_soa && a.negative_ttl == 120);
}

/* ---- ordering ---- */

TEST(dns_interleave_families)
{
    dns_addr in[5];
    const char *texts[] = {"10.0.0.1", "10.0.0.2", "2001:db8::1", "2001:db8::2", "2001:db8::3"};
    for (size_t i = 0; i < 5; i++)
        CHECK(dns_parse_ip(texts[i], &in[i]));
    dns_addr v[5];
    memcpy(v, in, sizeof v);
    dns_interleave(v, 5, AF_INET6);
    const char *want6[] = {"2001:db8::1", "10.0.0.1", "2001:db8::2", "10.0.0.2", "2001:db8::3"};
    for (size_t i = 0; i < 5; i++)
        CHECK(addr_is(&v[i], want6[i]));
    memcpy(v, in, sizeof v);
    dns_interleave(v, 5, AF_INET);
    const char *want4[] = {"10.0.0.1", "2001:db8::1", "10.0.0.2", "2001:db8::2", "2001:db8::3"};
    for (size_t i = 0; i < 5; i++)
        CHECK(addr_is(&v[i], want4[i]));
    /* one family only: the order stays */
    memcpy(v, in + 2, 3 * sizeof v[0]);
    dns_interleave(v, 3, AF_INET);
    CHECK(addr_is(&v[0], "2001:db8::1") && addr_is(&v[2], "2001:db8::3"));
}

TEST(dns_sockaddr_and_literals)
{
    dns_addr a;
    struct sockaddr_storage ss;
    CHECK(dns_parse_ip("192.0.2.7", &a) && a.family == AF_INET);
    CHECK(dns_addr_to_sockaddr(&a, 8443, &ss) == sizeof(struct sockaddr_in));
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
    CHECK(s4->sin_family == AF_INET && ntohs(s4->sin_port) == 8443 && s4->sin_addr.s_addr == htonl(0xC0000207));
    CHECK(dns_parse_ip("::1", &a) && a.family == AF_INET6);
    CHECK(dns_addr_to_sockaddr(&a, 53, &ss) == sizeof(struct sockaddr_in6));
    CHECK(!dns_parse_ip("mock.test", &a) && !dns_parse_ip("1.2.3", &a) && !dns_parse_ip("fe80::1%eth0", &a));
    CHECK(strcmp(dns_status_label(DNS_NXDOMAIN), "NXDOMAIN") == 0 &&
          strcmp(dns_status_label(DNS_SERVFAIL), "SERVFAIL") == 0 &&
          strcmp(dns_status_label(DNS_TIMEOUT), "timeout") == 0);
}

/* ---- resolv.conf ---- */

static void check_server(const dns_conf *c, size_t i, const char *ip, unsigned port)
{
    char text[INET6_ADDRSTRLEN] = "";
    unsigned got_port = 0;
    if (c->servers[i].ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&c->servers[i];
        inet_ntop(AF_INET6, &s6->sin6_addr, text, sizeof text);
        got_port = ntohs(s6->sin6_port);
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&c->servers[i];
        inet_ntop(AF_INET, &s4->sin_addr, text, sizeof text);
        got_port = ntohs(s4->sin_port);
    }
    if (strcmp(text, ip) != 0 || got_port != port)
        unit_fail(__FILE__, __LINE__, "server %zu is %s port %u, want %s port %u", i, text, got_port, ip, port);
}

TEST(dns_resolv_conf_defaults)
{
    dns_conf c;
    dns_conf_parse("", 0, &c);
    CHECK_EQ_SIZE(c.server_count, 1);
    check_server(&c, 0, "127.0.0.1", 53);
    CHECK(c.ndots == 1 && c.timeout_s == 5 && c.attempts == 2 && !c.rotate && c.search_count == 0);
}

TEST(dns_resolv_conf_full)
{
    static const char text[] = "# generated\n"
                               "; also a comment\n"
                               "nameserver 10.0.0.1\n"
                               "nameserver   2001:db8::53   # trailing words are ignored\n"
                               "nameserver not-an-address\n"
                               "nameserver 127.0.0.1:5353\n"
                               "nameserver [::1]:5300\n" /* a fourth: over the limit */
                               "domain first.example\n"
                               "search corp.example. lab.example\n"
                               "options ndots:3 timeout:2 attempts:4 rotate edns0\n"
                               "options ndots:99 attempts:0\n"
                               "sortlist 10.0.0.0/8\n";
    dns_conf c;
    dns_conf_parse(text, sizeof text - 1, &c);
    CHECK_EQ_SIZE(c.server_count, 3);
    check_server(&c, 0, "10.0.0.1", 53);
    check_server(&c, 1, "2001:db8::53", 53);
    check_server(&c, 2, "127.0.0.1", 5353);
    CHECK_EQ_SIZE(c.search_count, 2); /* the last of search/domain wins */
    CHECK_STR(c.search[0], "corp.example");
    CHECK_STR(c.search[1], "lab.example");
    CHECK(c.ndots == DNS_NDOTS_MAX && c.timeout_s == 2 && c.attempts == 1 && c.rotate);
}

TEST(dns_resolv_conf_v6_forms)
{
    static const char text[] = "nameserver [::1]:5300\nnameserver fe80::1%7\nnameserver [2001:db8::1]\n";
    dns_conf c;
    dns_conf_parse(text, sizeof text - 1, &c);
    CHECK_EQ_SIZE(c.server_count, 3);
    check_server(&c, 0, "::1", 5300);
    check_server(&c, 1, "fe80::1", 53);
    CHECK(((const struct sockaddr_in6 *)&c.servers[1])->sin6_scope_id == 7);
    check_server(&c, 2, "2001:db8::1", 53);
    /* bad ports and brackets are skipped, leaving the default */
    static const char bad[] = "nameserver 1.2.3.4:0\nnameserver 1.2.3.4:65536\nnameserver [::1\n"
                              "nameserver [::1]x\nnameserver ::1%nosuchinterface0\nnameserver\n";
    dns_conf_parse(bad, sizeof bad - 1, &c);
    CHECK_EQ_SIZE(c.server_count, 1);
    check_server(&c, 0, "127.0.0.1", 53);
    /* no final newline, CRLF lines */
    static const char crlf[] = "nameserver 10.1.1.1\r\noptions timeout:7";
    dns_conf_parse(crlf, sizeof crlf - 1, &c);
    check_server(&c, 0, "10.1.1.1", 53);
    CHECK(c.timeout_s == 7);
}

TEST(dns_search_names_ndots)
{
    dns_conf c;
    static const char text[] = "search a.example b.example\noptions ndots:2\n";
    dns_conf_parse(text, sizeof text - 1, &c);
    char names[8][DNS_NAME_MAX + 1];
    /* one dot, fewer than ndots: the search list first */
    CHECK_EQ_SIZE(dns_search_names(&c, "api.svc", names, 8), 3);
    CHECK_STR(names[0], "api.svc.a.example");
    CHECK_STR(names[1], "api.svc.b.example");
    CHECK_STR(names[2], "api.svc");
    /* two dots: as it is first */
    CHECK_EQ_SIZE(dns_search_names(&c, "api.openai.com", names, 8), 3);
    CHECK_STR(names[0], "api.openai.com");
    CHECK_STR(names[2], "api.openai.com.b.example");
    /* absolute: only itself */
    CHECK_EQ_SIZE(dns_search_names(&c, "host.", names, 8), 1);
    CHECK_STR(names[0], "host");
    /* a cap */
    CHECK_EQ_SIZE(dns_search_names(&c, "api", names, 1), 1);
    CHECK_STR(names[0], "api.a.example");
    CHECK_EQ_SIZE(dns_search_names(&c, "", names, 8), 0);
    CHECK_EQ_SIZE(dns_search_names(&c, ".", names, 8), 0);
}

/* ---- hosts ---- */

TEST(dns_hosts_lookup_lines)
{
    static const char text[] = "# /etc/hosts\n"
                               "127.0.0.1\tlocalhost\n"
                               "::1 localhost ip6-localhost ip6-loopback\n"
                               "10.0.0.5   api.internal  API   # the API box\n"
                               "10.0.0.6 api.internal\n"
                               "10.0.0.5 api.internal\n" /* a duplicate */
                               "not-an-ip api.internal\n"
                               "   # indented comment\n"
                               "fe80::1%eth0 api.internal\n"
                               "10.0.0.7 #api.internal in a comment\n"
                               "2001:db8::9 api.internal.";
    dns_addr out[8];
    size_t n = dns_hosts_lookup(text, sizeof text - 1, "API.internal", out, 8);
    CHECK_EQ_SIZE(n, 3);
    CHECK(addr_is(&out[0], "10.0.0.5"));
    CHECK(addr_is(&out[1], "10.0.0.6"));
    CHECK(addr_is(&out[2], "2001:db8::9"));
    CHECK_EQ_SIZE(dns_hosts_lookup(text, sizeof text - 1, "api", out, 8), 1);
    n = dns_hosts_lookup(text, sizeof text - 1, "localhost.", out, 8);
    CHECK_EQ_SIZE(n, 2);
    CHECK(addr_is(&out[0], "127.0.0.1") && addr_is(&out[1], "::1"));
    CHECK_EQ_SIZE(dns_hosts_lookup(text, sizeof text - 1, "ip6-loopback", out, 8), 1);
    CHECK_EQ_SIZE(dns_hosts_lookup(text, sizeof text - 1, "api.internal", out, 1), 1); /* the cap */
    CHECK_EQ_SIZE(dns_hosts_lookup(text, sizeof text - 1, "nothere", out, 8), 0);
    CHECK_EQ_SIZE(dns_hosts_lookup(text, sizeof text - 1, "", out, 8), 0);
    CHECK_EQ_SIZE(dns_hosts_lookup("", 0, "localhost", out, 8), 0);
    /* a hosts file knows no ';' comments */
    static const char semi[] = "10.0.0.8 semi.test;x semi.test\n";
    CHECK_EQ_SIZE(dns_hosts_lookup(semi, sizeof semi - 1, "semi.test", out, 8), 1);
}

TEST(dns_hosts_long_lines)
{
    /* A name of 300 characters on a line is no match and no overflow. */
    char text[1024];
    size_t o = 0;
    memcpy(text, "10.0.0.1 ", 9);
    o = 9;
    for (int i = 0; i < 300; i++)
        text[o++] = 'a';
    memcpy(text + o, " short.test\n", 12);
    o += 12;
    dns_addr out[4];
    CHECK_EQ_SIZE(dns_hosts_lookup(text, o, "short.test", out, 4), 1);
}

/* ---- the cache, on a fake clock ---- */

static dns_cache_answer answer_of(const char *ip)
{
    dns_cache_answer a = {.status = DNS_OK, .count = 1};
    dns_parse_ip(ip, &a.addrs[0]);
    return a;
}

TEST(dns_cache_ttl_and_clamps)
{
    dns_cache *c = dns_cache_new(16);
    const dns_cache_answer *got;
    dns_cache_answer a = answer_of("10.0.0.1");
    CHECK(dns_cache_get(c, "x.test", 0, &got) == DNS_CACHE_MISS);
    CHECK(dns_cache_store(c, "x.test", &a, 30, 1000) != NULL);
    CHECK(dns_cache_get(c, "x.test", 1000, &got) == DNS_CACHE_HIT && addr_is(&got->addrs[0], "10.0.0.1"));
    CHECK(dns_cache_get(c, "x.test", 30999, &got) == DNS_CACHE_HIT);
    CHECK(dns_cache_get(c, "X.test", 1000, &got) == DNS_CACHE_MISS); /* keys come normalised */
    /* TTL 0 lives 1 s; a day lives an hour */
    dns_cache_store(c, "zero.test", &a, 0, 0);
    CHECK(dns_cache_get(c, "zero.test", 999, &got) == DNS_CACHE_HIT);
    CHECK(dns_cache_get(c, "zero.test", 1000, &got) == DNS_CACHE_HIT_REFRESH);
    dns_cache_store(c, "day.test", &a, 86400, 0);
    CHECK(dns_cache_get(c, "day.test", 3599999, &got) == DNS_CACHE_HIT);
    CHECK(dns_cache_get(c, "day.test", 3600000, &got) == DNS_CACHE_HIT_REFRESH);
    CHECK_EQ_SIZE(dns_cache_size(c), 3);
    dns_cache_free(c);
}

TEST(dns_cache_serves_stale_while_refreshing)
{
    dns_cache *c = dns_cache_new(16);
    const dns_cache_answer *got;
    dns_cache_answer a = answer_of("10.0.0.1"), b = answer_of("10.0.0.2");
    const dns_cache_answer *s = dns_cache_store(c, "x.test", &a, 1, 0);
    uint64_t g1 = s->generation;
    /* the first lookup past the TTL starts the one refresh; the rest just use it */
    CHECK(dns_cache_get(c, "x.test", 1000, &got) == DNS_CACHE_HIT_REFRESH);
    CHECK(dns_cache_get(c, "x.test", 1001, &got) == DNS_CACHE_HIT && got->generation == g1);
    CHECK(dns_cache_get(c, "x.test", 5000, &got) == DNS_CACHE_HIT);
    /* the same answer again: the generation stays */
    s = dns_cache_store(c, "x.test", &a, 1, 5000);
    CHECK(s->generation == g1);
    CHECK(dns_cache_get(c, "x.test", 5500, &got) == DNS_CACHE_HIT);
    /* a new address: a new generation */
    CHECK(dns_cache_get(c, "x.test", 6000, &got) == DNS_CACHE_HIT_REFRESH);
    s = dns_cache_store(c, "x.test", &b, 1, 6000);
    CHECK(s->generation > g1 && addr_is(&s->addrs[0], "10.0.0.2"));
    dns_cache_free(c);
}

TEST(dns_cache_failed_refresh_keeps_the_answer_for_a_while)
{
    dns_cache *c = dns_cache_new(16);
    const dns_cache_answer *got;
    dns_cache_answer a = answer_of("10.0.0.1");
    uint64_t g = dns_cache_store(c, "x.test", &a, 10, 0)->generation;
    CHECK(dns_cache_get(c, "x.test", 10000, &got) == DNS_CACHE_HIT_REFRESH);
    const dns_cache_answer *now = dns_cache_fail(c, "x.test", DNS_TIMEOUT, NULL, 11000);
    CHECK(now->status == DNS_OK && now->generation == g); /* the old answer stays */
    /* no new refresh until the retry time */
    CHECK(dns_cache_get(c, "x.test", 11000 + DNS_REFRESH_RETRY_MS - 1, &got) == DNS_CACHE_HIT);
    CHECK(dns_cache_get(c, "x.test", 11000 + DNS_REFRESH_RETRY_MS, &got) == DNS_CACHE_HIT_REFRESH);
    dns_cache_fail(c, "x.test", DNS_SERVFAIL, NULL, 11000 + DNS_REFRESH_RETRY_MS);
    /* at most DNS_STALE_MAX_MS past the TTL */
    CHECK(dns_cache_get(c, "x.test", 10000 + DNS_STALE_MAX_MS - 1, &got) != DNS_CACHE_MISS);
    CHECK(dns_cache_get(c, "x.test", 10000 + DNS_STALE_MAX_MS, &got) == DNS_CACHE_MISS);
    /* then the failure itself is what a lookup finds, for DNS_FAIL_HOLD_MS */
    uint64_t t = 10000 + DNS_STALE_MAX_MS;
    now = dns_cache_fail(c, "x.test", DNS_SERVFAIL, NULL, t);
    CHECK(now->status == DNS_SERVFAIL && strcmp(now->detail, "SERVFAIL") == 0 && now->generation != g);
    CHECK(dns_cache_get(c, "x.test", t + DNS_FAIL_HOLD_MS - 1, &got) == DNS_CACHE_HIT && got->status == DNS_SERVFAIL);
    CHECK(dns_cache_get(c, "x.test", t + DNS_FAIL_HOLD_MS, &got) == DNS_CACHE_MISS);
    dns_cache_free(c);
}

TEST(dns_cache_negative_answers)
{
    dns_cache *c = dns_cache_new(16);
    const dns_cache_answer *got;
    dns_cache_answer nx = {.status = DNS_NXDOMAIN};
    snprintf(nx.detail, sizeof nx.detail, "NXDOMAIN");
    dns_cache_store(c, "gone.test", &nx, 60, 0);
    CHECK(dns_cache_get(c, "gone.test", 59999, &got) == DNS_CACHE_HIT && got->status == DNS_NXDOMAIN);
    /* a negative answer is never served stale */
    CHECK(dns_cache_get(c, "gone.test", 60000, &got) == DNS_CACHE_MISS);
    dns_cache_store(c, "brief.test", &nx, 0, 0); /* no SOA: 1 s */
    CHECK(dns_cache_get(c, "brief.test", 999, &got) == DNS_CACHE_HIT);
    CHECK(dns_cache_get(c, "brief.test", 1000, &got) == DNS_CACHE_MISS);
    dns_cache_store(c, "long.test", &nx, 86400, 0); /* clamped to an hour */
    CHECK(dns_cache_get(c, "long.test", 3600000, &got) == DNS_CACHE_MISS);
    /* a name that comes back replaces its negative entry */
    dns_cache_answer a = answer_of("10.0.0.1");
    const dns_cache_answer *s = dns_cache_store(c, "gone.test", &a, 60, 70000);
    CHECK(s->status == DNS_OK && s->generation != 0);
    dns_cache_free(c);
}

TEST(dns_cache_is_bounded)
{
    dns_cache *c = dns_cache_new(4);
    dns_cache_answer a = answer_of("10.0.0.1");
    char key[32];
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof key, "n%d.test", i);
        CHECK(dns_cache_store(c, key, &a, (uint32_t)(100 + i), 0) != NULL);
    }
    CHECK_EQ_SIZE(dns_cache_size(c), 4);
    const dns_cache_answer *got;
    /* the ones that expire first went */
    CHECK(dns_cache_get(c, "n0.test", 0, &got) == DNS_CACHE_MISS);
    CHECK(dns_cache_get(c, "n9.test", 0, &got) == DNS_CACHE_HIT);
    CHECK(dns_cache_get(c, "n6.test", 0, &got) == DNS_CACHE_HIT);
    dns_cache_free(c);
}
