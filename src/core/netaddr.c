#include "core/netaddr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int netaddr_parse(const char *spec, struct sockaddr_storage *out, socklen_t *len, const char **why)
{
    char host[64];
    const char *colon = strrchr(spec, ':');
    if (!colon || colon - spec >= (long)sizeof host) {
        *why = "--listen must be ADDR:PORT";
        return -1;
    }
    size_t hl = (size_t)(colon - spec);
    memcpy(host, spec, hl);
    host[hl] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 0 || port > 65535) {
        *why = "--listen has an invalid port";
        return -1;
    }
    memset(out, 0, sizeof *out);
    if (host[0] == '[' && hl >= 2 && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host + 1, &a6->sin6_addr) != 1) {
            *why = "--listen has an invalid IPv6 address";
            return -1;
        }
        *len = sizeof *a6;
        return 0;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)out;
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    if (hl == 0 || strcmp(host, "*") == 0)
        a4->sin_addr.s_addr = htonl(INADDR_ANY);
    else if (strcmp(host, "localhost") == 0)
        a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    else if (inet_pton(AF_INET, host, &a4->sin_addr) != 1) {
        *why = "--listen has an invalid IPv4 address";
        return -1;
    }
    *len = sizeof *a4;
    return 0;
}

void netaddr_format(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    char text[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a6->sin6_addr, text, sizeof text);
        snprintf(out, cap, "[%s]:%u", text, ntohs(a6->sin6_port));
    } else {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a4->sin_addr, text, sizeof text);
        snprintf(out, cap, "%s:%u", text, ntohs(a4->sin_port));
    }
}

int netaddr_bind(const char *spec, bool shared, bool listening, const char **why)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (netaddr_parse(spec, &ss, &len, why) != 0)
        return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *why = strerror(errno);
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if ((shared && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
        bind(fd, (struct sockaddr *)&ss, len) != 0 || (listening && listen(fd, SOMAXCONN) != 0)) {
        static char msg[160];
        snprintf(msg, sizeof msg, "cannot listen on %s: %s", spec, strerror(errno));
        *why = msg;
        close(fd);
        return -1;
    }
    return fd;
}

void netaddr_local(int fd, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    memset(&ss, 0, sizeof ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        ss.ss_family = AF_UNSPEC; /* formats as 0.0.0.0:0 rather than garbage */
    netaddr_format(&ss, out, cap);
}
