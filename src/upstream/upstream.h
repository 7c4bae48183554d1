/* Connections to the upstream: the host resolved at connect time through
 * the reactor's resolver (cached: the steady state is a hash lookup), a
 * non-blocking connect under a timeout trying each address, plain or TLS
 * transport, and a pool of idle keep-alive connections reused by later
 * requests, which follows the addresses when DNS moves them. */
#ifndef SSEGATE_UPSTREAM_H
#define SSEGATE_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "core/loop.h"
#include "upstream/resolver.h"
#include "upstream/tls.h"
#include "upstream/url.h"

enum { UPSTREAM_MAX_ADDRS = 8 };

typedef struct upstream_conn upstream_conn;

typedef struct upstream_target {
    url base;
    char name[URL_HOST_MAX + 16]; /* host:port, for logs */
    struct sockaddr_storage addrs[UPSTREAM_MAX_ADDRS];
    socklen_t addr_lens[UPSTREAM_MAX_ADDRS];
    size_t addr_count;
    char *auth_header; /* "Bearer <key>", or NULL */
    tls_trust *trust;  /* NULL for http:// */
    tls_session_cache *sessions;
    upstream_conn *idle; /* pool of idle connections */
    size_t idle_count, max_idle;
    /* TLS cold start: while one connection makes the first session, later
     * ones wait for it (connected, before their ClientHello) and resume it. */
    upstream_conn *tls_first;
    upstream_conn *tls_waiting, *tls_waiting_tail; /* FIFO */
    size_t tls_waiting_count;
    bool tls_sessionless; /* its last first handshake gave no session: no waiting */
    uint64_t idle_timeout_ms;
    uint64_t connects, reuses; /* counters */
    /* A host name (not an IP literal) is resolved at connect time; addrs
     * then hold the latest answer, of generation dns_generation. */
    bool needs_dns;
    dns_resolver *resolver;
    dns_query *prefetch;
    uint64_t dns_generation;
    bool dns_failed; /* the latest answer was a failure, which dns_error names */
    char dns_error[DNS_DETAIL_MAX];
} upstream_target;

/* Parses the URL, takes an IP literal host as the address (a name needs
 * upstream_target_use_resolver), loads the CA bundle for https. Nothing
 * blocks. Returns 0, or -1 with *why. */
int upstream_target_init(upstream_target *t, const char *base_url, const char *api_key, const char *ca_file,
                         const char **why);
/* Resolves a host name through r from now on, and starts a first lookup
 * without waiting for it. */
void upstream_target_use_resolver(upstream_target *t, dns_resolver *r);
void upstream_target_free(upstream_target *t, loop *l);

typedef enum upstream_failure {
    UPSTREAM_FAIL_CONNECT,
    UPSTREAM_FAIL_CONNECT_TIMEOUT,
    UPSTREAM_FAIL_TLS,
    UPSTREAM_FAIL_IO,
    UPSTREAM_FAIL_DNS /* "upstream DNS failed: <host>: <NXDOMAIN|SERVFAIL|timeout|...>" */
} upstream_failure;

typedef struct upstream_events {
    void (*ready)(void *ctx);  /* connected; TLS may still be handshaking inside read/write */
    void (*io)(void *ctx, uint32_t events);
    void (*failed)(void *ctx, upstream_failure kind, const char *message);
} upstream_events;

/* Hands out a pooled connection when `pooled` (ready is called from a
 * deferred step) or starts a new one. Never calls back before returning.
 * Over TLS with no session cached yet, a new connection waits for the first
 * full handshake in flight to that upstream, within the connect timeout. */
upstream_conn *upstream_open(upstream_target *t, loop *l, uint64_t connect_timeout_ms, bool pooled,
                             const upstream_events *ev, void *ctx);
bool upstream_was_reused(const upstream_conn *c);

/* I/O on a ready connection. -1 with errno EAGAIN means wait for io(). */
ssize_t upstream_read(upstream_conn *c, void *buf, size_t cap);
ssize_t upstream_writev(upstream_conn *c, const struct iovec *iov, size_t count);
/* Which directions the owner wants io() for; TLS may add its own needs. */
void upstream_want(upstream_conn *c, bool read, bool write);
/* Why the last read/write failed: a TLS error sentence or strerror. */
const char *upstream_error(const upstream_conn *c);
bool upstream_is_tls(const upstream_conn *c);
bool upstream_tls_resumed(const upstream_conn *c);

/* Ends the owner's use: back to the pool when `reusable`, closed otherwise. */
void upstream_release(upstream_conn *c, bool reusable);

#endif
