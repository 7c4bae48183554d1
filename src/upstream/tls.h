/* TLS through BearSSL's engine API, driven by the reactor: the caller owns
 * the non-blocking socket and asks which events the engine waits for. No
 * call here blocks. Client side verifies the chain against trust anchors
 * loaded once, checks the host name and sends SNI, or, for a host given as
 * an IP address, checks the certificate's iPAddress subjectAltName and
 * sends no SNI (RFC 6066 §3); server side exists for the test upstream in
 * tools/. */
#ifndef SSEGATE_TLS_H
#define SSEGATE_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct tls_trust tls_trust;             /* trust anchors from a PEM bundle */
typedef struct tls_server_cred tls_server_cred; /* certificate chain + private key */
typedef struct tls_session_cache tls_session_cache; /* one resumable session per upstream */
typedef struct tls_conn tls_conn;

/* Loads every certificate of a PEM bundle as a trust anchor. On failure
 * returns NULL and sets *why to a message naming the problem. */
tls_trust *tls_trust_load(const char *pem_path, const char **why);
size_t tls_trust_count(const tls_trust *t);
void tls_trust_free(tls_trust *t);

/* Loads a PEM certificate chain (leaf first) and an RSA or EC private key. */
tls_server_cred *tls_server_cred_load(const char *chain_path, const char *key_path, const char **why);
void tls_server_cred_free(tls_server_cred *c);

tls_session_cache *tls_session_cache_new(void);
void tls_session_cache_free(tls_session_cache *c);
/* Holds a session that the next client connection will offer. */
bool tls_session_cache_ready(const tls_session_cache *c);

/* A client connection to `server_name`: a DNS name (sent as SNI, and the
 * name the certificate must carry) or an IPv4/IPv6 literal without
 * brackets (no SNI; the certificate must carry the address as an iPAddress
 * subjectAltName). `cache` may be NULL; when given, the session is offered
 * for resumption and refreshed after each full handshake. */
tls_conn *tls_client_new(const tls_trust *trust, const char *server_name, tls_session_cache *cache);
tls_conn *tls_server_new(const tls_server_cred *cred);
void tls_free(tls_conn *c);

/* Reads decrypted bytes. Returns > 0 bytes, 0 on a clean close_notify or
 * EOF, or -1 with errno EAGAIN (wait for tls_events) or EPROTO/ECONNRESET/...
 * on failure (then tls_error says why). Drives the handshake as needed.
 * Only EAGAIN means the socket must be waited for: a caller that stops
 * earlier (its buffer full) must call again when it resumes, since the
 * engine may hold decrypted bytes that no socket event will announce. */
ssize_t tls_read(tls_conn *c, int fd, void *buf, size_t cap);

/* Queues up to len bytes for sending and pushes records to the socket as far
 * as it accepts them. Returns bytes taken (> 0), or -1 with errno as above. */
ssize_t tls_write(tls_conn *c, int fd, const void *buf, size_t len);

/* Pushes pending records. Returns 0 when nothing is left to send, -1 with
 * errno EAGAIN while records remain, or -1 with another errno on failure. */
int tls_flush(tls_conn *c, int fd);

/* The epoll events (EPOLLIN and/or EPOLLOUT) the engine waits for now. */
uint32_t tls_events(const tls_conn *c);

bool tls_handshake_done(const tls_conn *c);
bool tls_resumed(const tls_conn *c); /* the handshake resumed a cached session */
/* The SNI name: on a server, what the client sent; on a client, what it
 * sends. "" when there is none. */
const char *tls_server_name(const tls_conn *c);

/* A sentence for the last failure, e.g. "certificate has expired or is not
 * yet valid", "certificate is not for host example.com", "certificate is
 * not for address 127.0.0.1", "certificate chain is not trusted",
 * "upstream requires TLS 1.3; this build speaks TLS 1.2". */
const char *tls_error(const tls_conn *c);

typedef enum tls_san_check {
    TLS_SAN_MATCH,    /* an iPAddress entry holds the address */
    TLS_SAN_NO_MATCH, /* well formed, but no entry for it (or no subjectAltName) */
    TLS_SAN_MALFORMED /* the certificate or its subjectAltName does not parse */
} tls_san_check;

/* Looks for the address `ip` (4 bytes for IPv4, 16 for IPv6, network
 * order) among the iPAddress subjectAltNames of the DER certificate `der`.
 * Reads only within [der, der + len); the signature is not checked here. */
tls_san_check tls_cert_san_has_ip(const unsigned char *der, size_t len, const unsigned char *ip,
                                  size_t ip_len);

/* The connection waits unused (in a keep-alive pool): gives back the
 * memory that large records left touched, when the engine holds no input.
 * Harmless to call at any time. */
void tls_idle(tls_conn *c);

/* Bytes of the connection's own memory held in RAM now: on a client, the
 * touched pages of its mapping that were not given back; on a server, its
 * whole allocation. For tests and diagnostics. */
size_t tls_footprint(const tls_conn *c);

/* Sends close_notify if possible, without waiting. */
void tls_close(tls_conn *c, int fd);

#endif
