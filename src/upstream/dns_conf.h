/* resolv.conf and hosts files, parsed from their text: pure functions, so
 * the resolver can re-read them when they change and tests can feed them. */
#ifndef SSEGATE_DNS_CONF_H
#define SSEGATE_DNS_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "upstream/dns.h"

enum {
    DNS_MAX_NAMESERVERS = 3,
    DNS_MAX_SEARCH = 6,
    DNS_SEARCH_NAME_MAX = 254, /* dotted, with its NUL */
    DNS_NDOTS_MAX = 15,
    DNS_TIMEOUT_MAX_S = 30,
    DNS_ATTEMPTS_MAX = 5
};

typedef struct dns_conf {
    struct sockaddr_storage servers[DNS_MAX_NAMESERVERS];
    socklen_t server_lens[DNS_MAX_NAMESERVERS];
    size_t server_count;
    char search[DNS_MAX_SEARCH][DNS_SEARCH_NAME_MAX];
    size_t search_count;
    unsigned ndots, timeout_s, attempts;
    bool rotate;
} dns_conf;

/* What libc assumes without a file: ndots 1, 5 s, 2 attempts, and (once
 * parsed with no nameserver line) 127.0.0.1 port 53. */
void dns_conf_defaults(dns_conf *c);

/* Fills *c from resolv.conf text over the defaults, leniently as libc does:
 * unknown lines and options are skipped, values are clamped. Lines:
 *   nameserver ADDR     IPv4 or IPv6 (an IPv6 zone as %N or %ifname), up to 3;
 *                       also ADDR:PORT and [IPv6]:PORT (as systemd-resolved takes them)
 *   search D1 D2 ...    up to 6 domains; `domain D` is a search list of one; the last line wins
 *   options ndots:N timeout:N attempts:N rotate
 * '#' and ';' start comments. */
void dns_conf_parse(const char *text, size_t len, dns_conf *c);

/* The addresses a hosts file gives `name` (case-insensitive, final dots
 * ignored), in file order, duplicates dropped, at most cap. Lines are
 * "ADDRESS NAME [ALIAS...]", '#' starts a comment. */
size_t dns_hosts_lookup(const char *text, size_t len, const char *name, dns_addr *out, size_t cap);

/* The names to ask for `name`, in order, with ndots semantics: an absolute
 * name (final dot) as it is; one with at least ndots dots as it is, then
 * with each search domain; else with each search domain first, then as it
 * is. Writes up to cap names of DNS_SEARCH_NAME_MAX + 1 bytes; returns the count. */
size_t dns_search_names(const dns_conf *c, const char *name, char (*out)[DNS_NAME_MAX + 1], size_t cap);

#endif
