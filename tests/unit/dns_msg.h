/* A writer of DNS messages for the tests: headers, questions and records
 * laid down byte by byte, so a test can build exactly the broken answer it
 * means (a pointer loop, a short record) as well as good ones. */
#ifndef SSEGATE_TEST_DNS_MSG_H
#define SSEGATE_TEST_DNS_MSG_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct dns_msg {
    uint8_t b[4096];
    size_t n;
} dns_msg;

static inline void msg_u8(dns_msg *m, unsigned v)
{
    if (m->n < sizeof m->b)
        m->b[m->n++] = (uint8_t)v;
}

static inline void msg_u16(dns_msg *m, unsigned v)
{
    msg_u8(m, v >> 8);
    msg_u8(m, v & 0xff);
}

static inline void msg_u32(dns_msg *m, uint32_t v)
{
    msg_u16(m, v >> 16);
    msg_u16(m, v & 0xffff);
}

static inline void msg_bytes(dns_msg *m, const void *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        msg_u8(m, ((const uint8_t *)p)[i]);
}

/* Dotted name, uncompressed, with the root label. */
static inline void msg_name(dns_msg *m, const char *dotted)
{
    const char *s = dotted;
    while (*s) {
        const char *dot = strchr(s, '.');
        size_t len = dot ? (size_t)(dot - s) : strlen(s);
        msg_u8(m, (unsigned)len);
        msg_bytes(m, s, len);
        s += len + (dot ? 1 : 0);
    }
    msg_u8(m, 0);
}

static inline void msg_ptr(dns_msg *m, size_t offset) { msg_u16(m, 0xC000u | (unsigned)offset); }

/* flags: QR, RD, RA set; rcode in the low bits. */
static inline void msg_header(dns_msg *m, uint16_t id, unsigned flags, unsigned qd, unsigned an, unsigned ns)
{
    m->n = 0;
    msg_u16(m, id);
    msg_u16(m, flags);
    msg_u16(m, qd);
    msg_u16(m, an);
    msg_u16(m, ns);
    msg_u16(m, 0);
}

enum { MSG_RESPONSE = 0x8180, MSG_QUESTION_AT = 12 };

static inline void msg_question(dns_msg *m, const char *name, unsigned type)
{
    msg_name(m, name);
    msg_u16(m, type);
    msg_u16(m, 1);
}

/* Type, class IN, TTL and RDLENGTH (the owner is written before); returns
 * where RDLENGTH sits, for msg_rr_end. */
static inline size_t msg_rr(dns_msg *m, unsigned type, uint32_t ttl)
{
    msg_u16(m, type);
    msg_u16(m, 1);
    msg_u32(m, ttl);
    size_t at = m->n;
    msg_u16(m, 0);
    return at;
}

static inline void msg_rr_end(dns_msg *m, size_t at)
{
    size_t len = m->n - at - 2;
    m->b[at] = (uint8_t)(len >> 8);
    m->b[at + 1] = (uint8_t)len;
}

static inline void msg_a(dns_msg *m, uint32_t ttl, uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
    size_t at = msg_rr(m, 1, ttl);
    uint8_t ip[4] = {a, b, c, d};
    msg_bytes(m, ip, 4);
    msg_rr_end(m, at);
}

static inline void msg_cname(dns_msg *m, uint32_t ttl, const char *target)
{
    size_t at = msg_rr(m, 5, ttl);
    msg_name(m, target);
    msg_rr_end(m, at);
}

/* An SOA owned by zone with the given TTL and MINIMUM. */
static inline void msg_soa(dns_msg *m, const char *zone, uint32_t ttl, uint32_t minimum)
{
    msg_name(m, zone);
    size_t at = msg_rr(m, 6, ttl);
    msg_name(m, "ns.example");
    msg_name(m, "hostmaster.example");
    msg_u32(m, 1);
    msg_u32(m, 3600);
    msg_u32(m, 600);
    msg_u32(m, 86400);
    msg_u32(m, minimum);
    msg_rr_end(m, at);
}

#endif
