/* Upstream base URLs: http or https, host (name, IPv4 or [IPv6]), optional
 * port, optional path prefix such as /v1. */
#ifndef SSEGATE_URL_H
#define SSEGATE_URL_H

#include <stdbool.h>
#include <stddef.h>

enum { URL_HOST_MAX = 256, URL_PATH_MAX = 1024 };

typedef struct url {
    bool tls;
    char host[URL_HOST_MAX]; /* without brackets for IPv6 */
    unsigned short port;
    char path[URL_PATH_MAX]; /* prefix without a trailing slash; "" for none */
    char host_header[URL_HOST_MAX + 8]; /* host[:port] as the Host header wants it */
} url;

/* Returns 0, or -1 with *why set to what is wrong. */
int url_parse(const char *text, url *out, const char **why);

#endif
