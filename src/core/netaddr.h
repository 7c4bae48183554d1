/* --listen addresses: "ADDR:PORT" to a bound socket and back to text. */
#ifndef SSEGATE_NETADDR_H
#define SSEGATE_NETADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* "127.0.0.1:8080", "[::1]:0", "localhost:80" (IPv4 loopback), "*:80" or
 * ":80" (every IPv4 address). Returns 0, or -1 with *why. */
int netaddr_parse(const char *spec, struct sockaddr_storage *out, socklen_t *len, const char **why);

/* "ADDR:PORT", or "[ADDR]:PORT" for IPv6; cut to fit cap. */
void netaddr_format(const struct sockaddr_storage *ss, char *out, size_t cap);

/* A non-blocking TCP socket bound to spec, listening when `listening`;
 * SO_REUSEPORT when `shared`, so that several processes can bind the same
 * port. Returns the fd, or -1 with *why (valid until the next call). */
int netaddr_bind(const char *spec, bool shared, bool listening, const char **why);

/* The text form of what fd is bound to (port 0 resolved). */
void netaddr_local(int fd, char *out, size_t cap);

#endif
