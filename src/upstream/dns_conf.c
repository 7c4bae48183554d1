#include "upstream/dns_conf.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

enum { WORD_MAX = 256, DNS_PORT = 53 };

void dns_conf_defaults(dns_conf *c)
{
    memset(c, 0, sizeof *c);
    c->ndots = 1;
    c->timeout_s = 5;
    c->attempts = 2;
}

static bool is_blank(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\f' || ch == '\v'; }

/* One line at a time, its comment cut off: [*start, *end) on return. */
typedef struct line_reader {
    const char *text;
    size_t len, pos;
    bool semicolon_comments; /* resolv.conf's; a hosts file knows only '#' */
} line_reader;

static bool next_line(line_reader *r, const char **start, const char **end)
{
    if (r->pos >= r->len)
        return false;
    const char *s = r->text + r->pos;
    const char *nl = memchr(s, '\n', r->len - r->pos);
    const char *e = nl ? nl : r->text + r->len;
    r->pos = (size_t)(e - r->text) + (nl ? 1 : 0);
    for (const char *p = s; p < e; p++)
        if (*p == '#' || (*p == ';' && r->semicolon_comments)) {
            e = p;
            break;
        }
    *start = s;
    *end = e;
    return true;
}

/* The next blank-separated word of [*p, end) into word (NUL-terminated);
 * false when none. A word too long for the buffer comes back empty. */
static bool next_word(const char **p, const char *end, char word[WORD_MAX])
{
    const char *s = *p;
    while (s < end && is_blank(*s))
        s++;
    if (s >= end)
        return false;
    const char *w = s;
    while (s < end && !is_blank(*s))
        s++;
    size_t n = (size_t)(s - w);
    if (n >= WORD_MAX)
        n = 0;
    memcpy(word, w, n);
    word[n] = '\0';
    *p = s;
    return true;
}

static bool parse_port(const char *s, uint16_t *port)
{
    if (!*s || strlen(s) > 5)
        return false;
    unsigned v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        v = v * 10 + (unsigned)(*s - '0');
    }
    if (v == 0 || v > 65535)
        return false;
    *port = (uint16_t)v;
    return true;
}

static bool parse_v6(char *text, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    memset(s6, 0, sizeof *s6);
    char *zone = strchr(text, '%');
    if (zone) {
        *zone++ = '\0';
        char *endp;
        unsigned long id = strtoul(zone, &endp, 10);
        if (*zone && !*endp && id <= UINT32_MAX)
            s6->sin6_scope_id = (uint32_t)id;
        else if (!(s6->sin6_scope_id = if_nametoindex(zone)))
            return false;
    }
    if (inet_pton(AF_INET6, text, &s6->sin6_addr) != 1)
        return false;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    *len = sizeof *s6;
    return true;
}

/* ADDR, [IPv6]:PORT, IPv4:PORT, or IPv6 (with an optional zone). */
static bool parse_server(char *word, struct sockaddr_storage *ss, socklen_t *len)
{
    uint16_t port = DNS_PORT;
    if (word[0] == '[') {
        char *close = strchr(word, ']');
        if (!close || (close[1] && (close[1] != ':' || !parse_port(close + 2, &port))))
            return false;
        *close = '\0';
        return parse_v6(word + 1, port, ss, len);
    }
    char *colon = strchr(word, ':');
    if (colon && !strchr(colon + 1, ':')) { /* exactly one colon: IPv4:PORT */
        if (!parse_port(colon + 1, &port))
            return false;
        *colon = '\0';
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    memset(s4, 0, sizeof *s4);
    if (inet_pton(AF_INET, word, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        *len = sizeof *s4;
        return true;
    }
    return !colon || strchr(colon + 1, ':') ? parse_v6(word, port, ss, len) : false;
}

static unsigned option_value(const char *word, size_t prefix, unsigned lo, unsigned hi, unsigned fallback)
{
    const char *v = word + prefix;
    if (!*v || strlen(v) > 6)
        return fallback;
    unsigned n = 0;
    for (; *v; v++) {
        if (*v < '0' || *v > '9')
            return fallback;
        n = n * 10 + (unsigned)(*v - '0');
    }
    return n < lo ? lo : n > hi ? hi : n;
}

static void set_search(dns_conf *c, const char **p, const char *end, size_t max)
{
    char word[WORD_MAX];
    c->search_count = 0;
    while (c->search_count < max && next_word(p, end, word)) {
        size_t n = strlen(word);
        while (n > 0 && word[n - 1] == '.')
            n--;
        if (n == 0 || n >= DNS_SEARCH_NAME_MAX)
            continue; /* "." is the root: nothing to append */
        memcpy(c->search[c->search_count], word, n);
        c->search[c->search_count][n] = '\0';
        c->search_count++;
    }
}

void dns_conf_parse(const char *text, size_t len, dns_conf *c)
{
    dns_conf_defaults(c);
    line_reader r = {text, len, 0, true};
    const char *s, *e;
    char word[WORD_MAX];
    while (next_line(&r, &s, &e)) {
        const char *p = s;
        if (!next_word(&p, e, word))
            continue;
        if (strcmp(word, "nameserver") == 0) {
            if (c->server_count < DNS_MAX_NAMESERVERS && next_word(&p, e, word) &&
                parse_server(word, &c->servers[c->server_count], &c->server_lens[c->server_count]))
                c->server_count++;
        } else if (strcmp(word, "search") == 0) {
            set_search(c, &p, e, DNS_MAX_SEARCH);
        } else if (strcmp(word, "domain") == 0) {
            set_search(c, &p, e, 1);
        } else if (strcmp(word, "options") == 0) {
            while (next_word(&p, e, word)) {
                if (strncmp(word, "ndots:", 6) == 0)
                    c->ndots = option_value(word, 6, 0, DNS_NDOTS_MAX, c->ndots);
                else if (strncmp(word, "timeout:", 8) == 0)
                    c->timeout_s = option_value(word, 8, 1, DNS_TIMEOUT_MAX_S, c->timeout_s);
                else if (strncmp(word, "attempts:", 9) == 0)
                    c->attempts = option_value(word, 9, 1, DNS_ATTEMPTS_MAX, c->attempts);
                else if (strcmp(word, "rotate") == 0)
                    c->rotate = true;
            }
        }
    }
    if (c->server_count == 0) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&c->servers[0];
        memset(s4, 0, sizeof *s4);
        s4->sin_family = AF_INET;
        s4->sin_port = htons(DNS_PORT);
        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        c->server_lens[0] = sizeof *s4;
        c->server_count = 1;
    }
}

/* Both without their final dots, compared without case. */
static bool host_name_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    while (alen > 0 && a[alen - 1] == '.')
        alen--;
    while (blen > 0 && b[blen - 1] == '.')
        blen--;
    if (alen != blen || alen == 0)
        return false;
    for (size_t i = 0; i < alen; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z')
            x = (char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

size_t dns_hosts_lookup(const char *text, size_t len, const char *name, dns_addr *out, size_t cap)
{
    size_t name_len = strnlen(name, DNS_NAME_MAX + 1), count = 0;
    if (name_len == 0 || name_len > DNS_NAME_MAX)
        return 0;
    line_reader r = {text, len, 0, false};
    const char *s, *e;
    char word[WORD_MAX];
    while (count < cap && next_line(&r, &s, &e)) {
        const char *p = s;
        dns_addr a;
        if (!next_word(&p, e, word) || !dns_parse_ip(word, &a))
            continue;
        while (next_word(&p, e, word)) {
            if (!host_name_eq(word, strlen(word), name, name_len))
                continue;
            bool seen = false;
            for (size_t i = 0; i < count && !seen; i++)
                seen = memcmp(&out[i], &a, sizeof a) == 0;
            if (!seen)
                out[count++] = a;
            break;
        }
    }
    return count;
}

size_t dns_search_names(const dns_conf *c, const char *name, char (*out)[DNS_NAME_MAX + 1], size_t cap)
{
    size_t n = strnlen(name, DNS_NAME_MAX + 1), count = 0;
    if (n == 0 || n > DNS_NAME_MAX || cap == 0)
        return 0;
    if (name[n - 1] == '.') {
        if (n == 1)
            return 0;
        memcpy(out[0], name, n - 1);
        out[0][n - 1] = '\0';
        return 1;
    }
    size_t dots = 0;
    for (size_t i = 0; i < n; i++)
        dots += name[i] == '.';
    bool as_is_first = dots >= c->ndots;
    if (as_is_first) {
        memcpy(out[count], name, n + 1);
        count++;
    }
    for (size_t i = 0; i < c->search_count && count < cap; i++) {
        size_t d = strlen(c->search[i]);
        if (n + 1 + d >= DNS_NAME_MAX - 1) /* 253 characters at most, as a name on the wire allows */
            continue;
        memcpy(out[count], name, n);
        out[count][n] = '.';
        memcpy(out[count] + n + 1, c->search[i], d + 1);
        count++;
    }
    if (!as_is_first && count < cap) {
        memcpy(out[count], name, n + 1);
        count++;
    }
    return count;
}
