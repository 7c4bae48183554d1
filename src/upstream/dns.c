#include "upstream/dns.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

enum {
    FLAG_QR = 0x8000,
    FLAG_TC = 0x0200,
    FLAG_RD = 0x0100,
    RR_FIXED = 10,       /* type, class, TTL, RDLENGTH */
    SOA_FIXED = 20,      /* serial, refresh, retry, expire, minimum */
    INTERLEAVE_MAX = 2 * DNS_MAX_ADDRS
};

const char *dns_status_label(dns_status s)
{
    switch (s) {
    case DNS_OK:
        return "ok";
    case DNS_NXDOMAIN:
        return "NXDOMAIN";
    case DNS_NODATA:
        return "NODATA";
    case DNS_SERVFAIL:
        return "SERVFAIL";
    case DNS_TIMEOUT:
        return "timeout";
    case DNS_OTHER:
        break;
    }
    return "other";
}

static uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }
static uint16_t get16(const uint8_t *p) { return (uint16_t)((unsigned)p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void put16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static uint32_t min32(uint32_t a, uint32_t b) { return a < b ? a : b; }

/* RFC 2181 §8: a TTL with the top bit set means zero. */
static uint32_t sane_ttl(uint32_t ttl) { return (ttl & 0x80000000u) ? 0 : ttl; }

size_t dns_name_to_wire(const char *name, uint8_t out[DNS_NAME_MAX])
{
    /* One pass: out[len_at] gets each label's length when its end is seen. */
    size_t len_at = 0, o = 1;
    for (const char *p = name;; p++) {
        uint8_t c = (uint8_t)*p;
        if (c != '.' && c != '\0') {
            /* ASCII only (IDNs come punycoded), and room left for the root */
            if (c <= ' ' || c >= 0x7f || o >= DNS_NAME_MAX - 1)
                return 0;
            out[o++] = lower(c);
            continue;
        }
        size_t label = o - len_at - 1;
        if (label == 0 || label > DNS_LABEL_MAX) /* "", ".", "a..b", ".a" */
            return 0;
        out[len_at] = (uint8_t)label;
        len_at = o++;
        if (c == '\0' || p[1] == '\0') { /* the end, or a final dot */
            out[len_at] = 0;
            return len_at + 1;
        }
    }
}

size_t dns_build_query_wire(uint8_t *buf, size_t cap, uint16_t id, const uint8_t *wire, size_t wire_len,
                            uint16_t qtype)
{
    if (wire_len == 0 || wire_len > DNS_NAME_MAX || cap < DNS_HEADER_LEN + wire_len + 4)
        return 0;
    memset(buf, 0, DNS_HEADER_LEN);
    put16(buf, id);
    put16(buf + 2, FLAG_RD);
    put16(buf + 4, 1);
    memcpy(buf + DNS_HEADER_LEN, wire, wire_len);
    put16(buf + DNS_HEADER_LEN + wire_len, qtype);
    put16(buf + DNS_HEADER_LEN + wire_len + 2, DNS_CLASS_IN);
    return DNS_HEADER_LEN + wire_len + 4;
}

size_t dns_build_query(uint8_t *buf, size_t cap, uint16_t id, const char *name, uint16_t qtype)
{
    uint8_t wire[DNS_NAME_MAX];
    size_t wl = dns_name_to_wire(name, wire);
    return wl ? dns_build_query_wire(buf, cap, id, wire, wl, qtype) : 0;
}

/* Reads the (possibly compressed) name at *pos into out, lowercased wire
 * form, and moves *pos past it. Pointers must point backwards, below the
 * pointer itself and past the header, so a name cannot loop; their number
 * is bounded all the same. */
static bool read_name(const uint8_t *msg, size_t len, size_t *pos, uint8_t out[DNS_NAME_MAX], size_t *out_len)
{
    size_t p = *pos, o = 0, after = 0, jumps = 0;
    for (;;) {
        if (p >= len)
            return false;
        uint8_t b = msg[p];
        if ((b & 0xC0) == 0xC0) {
            if (len - p < 2)
                return false;
            size_t target = (size_t)(b & 0x3F) << 8 | msg[p + 1];
            if (target >= p || target < DNS_HEADER_LEN || ++jumps > DNS_POINTER_MAX)
                return false;
            if (jumps == 1)
                after = p + 2;
            p = target;
            continue;
        }
        if (b & 0xC0) /* the 01 and 10 label types are reserved or obsolete */
            return false;
        if (b == 0) {
            out[o++] = 0;
            *pos = jumps ? after : p + 1;
            *out_len = o;
            return true;
        }
        if (len - p - 1 < b || o + 1 + b + 1 > DNS_NAME_MAX)
            return false;
        out[o++] = b;
        for (size_t i = 0; i < b; i++)
            out[o++] = lower(msg[p + 1 + i]);
        p += 1 + (size_t)b;
    }
}

static bool same_name(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    return alen == blen && memcmp(a, b, alen) == 0;
}

/* zone is `name` or one of its ancestors. */
static bool is_within(const uint8_t *name, size_t nlen, const uint8_t *zone, size_t zlen)
{
    for (size_t k = 0; k < nlen; k += 1 + (size_t)name[k]) {
        if (nlen - k == zlen && memcmp(name + k, zone, zlen) == 0)
            return true;
        if (name[k] == 0)
            break;
    }
    return false;
}

typedef struct rr {
    uint8_t owner[DNS_NAME_MAX];
    size_t owner_len;
    uint16_t type, klass;
    uint32_t ttl;
    size_t rdata, rdlen;
} rr;

static bool read_rr(const uint8_t *msg, size_t len, size_t *pos, rr *r)
{
    if (!read_name(msg, len, pos, r->owner, &r->owner_len) || len - *pos < RR_FIXED)
        return false;
    const uint8_t *p = msg + *pos;
    r->type = get16(p);
    r->klass = get16(p + 2);
    r->ttl = sane_ttl(get32(p + 4));
    r->rdlen = get16(p + 8);
    *pos += RR_FIXED;
    if (len - *pos < r->rdlen)
        return false;
    r->rdata = *pos;
    *pos += r->rdlen;
    return true;
}

static bool holds(const dns_answer *a, const dns_addr *x)
{
    for (size_t i = 0; i < a->count; i++)
        if (memcmp(&a->addrs[i], x, sizeof *x) == 0)
            return true;
    return false;
}

/* Follows the alias chain from the question's name through the answer
 * section, taking only records owned by the name the chain has reached;
 * records may come in any order, so the section is walked again after each
 * alias (at most DNS_CNAME_MAX + 1 walks). The first walk reads every
 * record, so nothing is believed of a broken section, and leaves *end at
 * the authority section. Leaves the chain's end in cur. */
static dns_parse_status walk_answers(const uint8_t *msg, size_t len, size_t start, size_t count, uint16_t qtype,
                                     uint8_t cur[DNS_NAME_MAX], size_t *cur_len, size_t *end, dns_answer *out)
{
    uint32_t chain_ttl = UINT32_MAX, addr_ttl = UINT32_MAX;
    for (size_t walk = 0; walk < DNS_CNAME_MAX + 2; walk++) {
        bool moved = false;
        out->count = 0;
        addr_ttl = UINT32_MAX;
        size_t pos = start;
        for (size_t i = 0; i < count; i++) {
            rr r;
            if (!read_rr(msg, len, &pos, &r))
                return DNS_PARSE_MALFORMED;
            if (out->chain_too_long || r.klass != DNS_CLASS_IN || !same_name(r.owner, r.owner_len, cur, *cur_len))
                continue;
            if (r.type == DNS_TYPE_CNAME) {
                if (out->cname_hops == DNS_CNAME_MAX) {
                    out->chain_too_long = true; /* read on to the end, believing nothing more */
                    continue;
                }
                size_t rp = r.rdata;
                if (!read_name(msg, len, &rp, cur, cur_len) || rp != r.rdata + r.rdlen)
                    return DNS_PARSE_MALFORMED;
                out->cname_hops++;
                chain_ttl = min32(chain_ttl, r.ttl);
                moved = true;
                out->count = 0; /* a name with an alias has no addresses of its own */
                addr_ttl = UINT32_MAX;
            } else if (r.type == qtype) {
                size_t want = qtype == DNS_TYPE_A ? 4 : 16;
                if (r.rdlen != want)
                    return DNS_PARSE_MALFORMED;
                dns_addr a = {.family = qtype == DNS_TYPE_A ? AF_INET : AF_INET6};
                memcpy(a.ip, msg + r.rdata, want);
                if (out->count < DNS_MAX_ADDRS && !holds(out, &a))
                    out->addrs[out->count++] = a;
                addr_ttl = min32(addr_ttl, r.ttl);
            }
        }
        if (walk == 0)
            *end = pos;
        if (out->chain_too_long) {
            out->count = 0;
            return DNS_PARSE_OK;
        }
        if (!moved)
            break;
    }
    out->ttl = out->count ? min32(chain_ttl, addr_ttl) : (chain_ttl == UINT32_MAX ? 0 : chain_ttl);
    return DNS_PARSE_OK;
}

/* RFC 2308 §5: a negative answer lives min(SOA TTL, SOA MINIMUM), from the
 * SOA of a zone that holds the name. */
static dns_parse_status read_soa(const uint8_t *msg, size_t len, size_t pos, size_t count, const uint8_t *name,
                                 size_t name_len, dns_answer *out)
{
    for (size_t i = 0; i < count; i++) {
        rr r;
        if (!read_rr(msg, len, &pos, &r))
            return DNS_PARSE_MALFORMED;
        if (r.type != DNS_TYPE_SOA || r.klass != DNS_CLASS_IN || !is_within(name, name_len, r.owner, r.owner_len))
            continue;
        uint8_t skip[DNS_NAME_MAX];
        size_t skip_len, rp = r.rdata;
        if (!read_name(msg, len, &rp, skip, &skip_len) || !read_name(msg, len, &rp, skip, &skip_len) ||
            rp > r.rdata + r.rdlen || r.rdata + r.rdlen - rp != SOA_FIXED)
            return DNS_PARSE_MALFORMED;
        out->has_soa = true;
        out->negative_ttl = min32(r.ttl, sane_ttl(get32(msg + rp + 16)));
        return DNS_PARSE_OK;
    }
    return DNS_PARSE_OK;
}

dns_parse_status dns_parse_response(const uint8_t *msg, size_t len, uint16_t id, const char *name, uint16_t qtype,
                                    dns_answer *out)
{
    uint8_t wire[DNS_NAME_MAX];
    size_t wl = dns_name_to_wire(name, wire);
    if (wl == 0) {
        memset(out, 0, sizeof *out);
        return DNS_PARSE_NOT_OURS; /* we never asked that */
    }
    return dns_parse_response_wire(msg, len, id, wire, wl, qtype, out);
}

dns_parse_status dns_parse_response_wire(const uint8_t *msg, size_t len, uint16_t id, const uint8_t *wire,
                                         size_t wire_len, uint16_t qtype, dns_answer *out)
{
    memset(out, 0, sizeof *out);
    if (len < DNS_HEADER_LEN || get16(msg) != id)
        return DNS_PARSE_NOT_OURS;
    unsigned flags = get16(msg + 2);
    if (!(flags & FLAG_QR))
        return DNS_PARSE_NOT_OURS;
    if (((flags >> 11) & 0xF) != 0 || get16(msg + 4) != 1)
        return DNS_PARSE_MALFORMED;
    size_t an = get16(msg + 6), ns = get16(msg + 8);

    uint8_t cur[DNS_NAME_MAX];
    size_t cur_len, pos = DNS_HEADER_LEN;
    if (wire_len == 0 || wire_len > DNS_NAME_MAX)
        return DNS_PARSE_NOT_OURS;
    if (!read_name(msg, len, &pos, cur, &cur_len) || len - pos < 4)
        return DNS_PARSE_MALFORMED;
    if (!same_name(cur, cur_len, wire, wire_len) || get16(msg + pos) != qtype ||
        get16(msg + pos + 2) != DNS_CLASS_IN)
        return DNS_PARSE_NOT_OURS;
    pos += 4;

    out->rcode_value = flags & 0xF;
    out->rcode = out->rcode_value == 0   ? DNS_RCODE_NOERROR
                 : out->rcode_value == 3 ? DNS_RCODE_NXDOMAIN
                 : out->rcode_value == 2 ? DNS_RCODE_SERVFAIL
                                         : DNS_RCODE_OTHER;
    out->truncated = (flags & FLAG_TC) != 0;
    if (out->truncated || out->rcode == DNS_RCODE_SERVFAIL || out->rcode == DNS_RCODE_OTHER)
        return DNS_PARSE_OK;

    size_t authority = pos;
    dns_parse_status st = walk_answers(msg, len, pos, an, qtype, cur, &cur_len, &authority, out);
    if (st != DNS_PARSE_OK || out->chain_too_long)
        return st;
    if (out->rcode == DNS_RCODE_NXDOMAIN)
        out->count = 0;
    if (out->count > 0)
        return DNS_PARSE_OK;
    return read_soa(msg, len, authority, ns, cur, cur_len, out);
}

void dns_interleave(dns_addr *addrs, size_t count, int first_family)
{
    if (count > INTERLEAVE_MAX)
        count = INTERLEAVE_MAX;
    dns_addr first[INTERLEAVE_MAX], second[INTERLEAVE_MAX];
    size_t nf = 0, ns = 0;
    for (size_t i = 0; i < count; i++) {
        if (addrs[i].family == first_family)
            first[nf++] = addrs[i];
        else
            second[ns++] = addrs[i];
    }
    size_t o = 0, i = 0, j = 0;
    while (i < nf || j < ns) {
        if (i < nf)
            addrs[o++] = first[i++];
        if (j < ns)
            addrs[o++] = second[j++];
    }
}

socklen_t dns_addr_to_sockaddr(const dns_addr *a, uint16_t port, struct sockaddr_storage *out)
{
    if (a->family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)out;
        memset(s6, 0, sizeof *s6);
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        memcpy(&s6->sin6_addr, a->ip, 16);
        return sizeof *s6;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)out;
    memset(s4, 0, sizeof *s4);
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    memcpy(&s4->sin_addr, a->ip, 4);
    return sizeof *s4;
}

bool dns_parse_ip(const char *text, dns_addr *out)
{
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, text, out->ip) == 1) {
        out->family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, text, out->ip) == 1) {
        out->family = AF_INET6;
        return true;
    }
    return false;
}
