#include "upstream/url.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

static bool is_host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_';
}

static int fail(const char **why, const char *msg)
{
    *why = msg;
    return -1;
}

int url_parse(const char *text, url *out, const char **why)
{
    memset(out, 0, sizeof *out);
    const char *p;
    if (strncmp(text, "https://", 8) == 0) {
        out->tls = true;
        out->port = 443;
        p = text + 8;
    } else if (strncmp(text, "http://", 7) == 0) {
        out->port = 80;
        p = text + 7;
    } else {
        return fail(why, "upstream URL must start with http:// or https://");
    }

    size_t host_len = 0;
    bool bracketed = *p == '[';
    if (bracketed) {
        const char *close = strchr(p, ']');
        if (!close)
            return fail(why, "upstream URL has an unterminated [IPv6] host");
        host_len = (size_t)(close - p - 1);
        if (host_len == 0 || host_len >= URL_HOST_MAX)
            return fail(why, "upstream URL has an invalid IPv6 host");
        memcpy(out->host, p + 1, host_len);
        /* Brackets hold an IPv6 literal and nothing else ("[5A1]" is not one). */
        struct in6_addr addr;
        if (inet_pton(AF_INET6, out->host, &addr) != 1)
            return fail(why, "upstream URL has an invalid IPv6 host");
        p = close + 1;
    } else {
        while (p[host_len] && p[host_len] != ':' && p[host_len] != '/') {
            if (!is_host_char(p[host_len]))
                return fail(why, "upstream URL has an invalid character in its host");
            host_len++;
        }
        if (host_len == 0)
            return fail(why, "upstream URL has no host");
        if (host_len >= URL_HOST_MAX)
            return fail(why, "upstream URL host is too long");
        memcpy(out->host, p, host_len);
        p += host_len;
    }

    bool explicit_port = false;
    if (*p == ':') {
        p++;
        unsigned long port = 0;
        size_t digits = 0;
        while (*p >= '0' && *p <= '9' && digits < 6) {
            port = port * 10 + (unsigned long)(*p - '0');
            p++;
            digits++;
        }
        if (digits == 0 || port == 0 || port > 65535)
            return fail(why, "upstream URL has an invalid port");
        out->port = (unsigned short)port;
        explicit_port = true;
    }
    if (*p && *p != '/')
        return fail(why, "upstream URL has junk after the host");

    size_t path_len = strlen(p);
    if (strpbrk(p, "?# \t\r\n"))
        return fail(why, "upstream URL path may not hold a query, fragment or whitespace");
    while (path_len > 0 && p[path_len - 1] == '/')
        path_len--;
    if (path_len >= URL_PATH_MAX)
        return fail(why, "upstream URL path is too long");
    memcpy(out->path, p, path_len);

    bool default_port = out->port == (out->tls ? 443 : 80);
    const char *fmt = bracketed ? "[%s]" : "%s";
    int n = snprintf(out->host_header, sizeof out->host_header, fmt, out->host);
    if (explicit_port && !default_port && n > 0)
        snprintf(out->host_header + n, sizeof out->host_header - (size_t)n, ":%u", out->port);
    return 0;
}
