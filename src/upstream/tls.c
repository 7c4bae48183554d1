#include "upstream/tls.h"

#include "upstream/pem.h"

/* BearSSL's inline helpers trip -Wconversion; they are not our code. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wconversion"
#include <bearssl.h>
#pragma GCC diagnostic pop
#include <arpa/inet.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

/* Loader messages outlive the call (the API hands back a const char *);
 * loading happens at start-up on one thread, so one buffer will do. */
static char load_why[512];

/* Entries of 100 bytes each (BearSSL's fixed size): plenty for a test
 * upstream that sees a handful of clients. */
#define SERVER_CACHE_ENTRIES 256

struct tls_trust {
    br_x509_trust_anchor *tas;
    size_t count;
};

/* The server's session cache: BearSSL's LRU behind a vtable of ours, which
 * notes the session a connection got back from it, since BearSSL has no
 * flag for "this handshake resumed". */
struct server_cache {
    const br_ssl_session_cache_class *vtable; /* first: BearSSL passes &vtable */
    br_ssl_session_cache_lru lru;
};

struct tls_server_cred {
    br_x509_certificate *chain;
    size_t chain_len;
    int key_type;             /* BR_KEYTYPE_RSA or BR_KEYTYPE_EC */
    unsigned issuer_key_type; /* what signed the leaf; BearSSL needs it for ECDH suites */
    br_rsa_private_key rsa;
    br_ec_private_key ec;
    unsigned char *key_mem; /* backs the key fields above */
    size_t key_mem_len;
    /* Shared by every connection made from this credential, so a client's
     * second connection can resume. Separately allocated: conns get a
     * const cred but the cache mutates. */
    struct server_cache *cache;
    unsigned char *lru_store;
};

struct tls_session_cache {
    br_ssl_session_parameters params;
    bool valid;
};

/* Every client connection verifies through this x509 class, which makes
 * BearSSL's minimal engine (3 KiB) only when a full handshake sends a
 * chain and frees it once the handshake is over; a resumed handshake never
 * needs one. For hosts given as an IP address, whose certificate BearSSL
 * cannot match (it compares DNS names only), the chain is validated with
 * no name while the end-entity certificate is kept and its iPAddress
 * subjectAltNames checked here. */
enum { IP_CERT_MAX = 65536 }; /* larger end-entity certificates are refused */

typedef enum ip_outcome {
    IP_PENDING,   /* no chain checked yet */
    IP_MATCH,
    IP_NO_MATCH,
    IP_MALFORMED, /* the subjectAltName does not parse */
    IP_TOO_LARGE, /* over IP_CERT_MAX, or no memory to hold it */
} ip_outcome;

struct verifier {
    const br_x509_class *vtable; /* first: BearSSL passes &vtable */
    br_x509_minimal_context *inner; /* during a full handshake only */
    br_ssl_engine_context *eng;     /* whose hash and signature code inner uses */
    const tls_trust *trust;
    bool no_memory;                 /* inner could not be made */
    unsigned char ip[16];
    size_t ip_len; /* 4 or 16; 0 when the host is a name */
    uint32_t certs_started;
    unsigned char *ee; /* the end-entity certificate while it arrives */
    size_t ee_len, ee_cap;
    bool ee_lost; /* too large or no memory: cannot be checked */
    ip_outcome outcome;
};

struct tls_conn {
    br_ssl_engine_context *eng;
    struct verifier vf; /* clients only */
    bool is_client;
    bool hs_done;
    bool resumed;
    bool eof;         /* read() returned 0 */
    bool peer_closed; /* peer sent close_notify and then vanished before our reply */
    bool failed;      /* sticky; err holds the sentence */
    int fail_errno;
    tls_session_cache *cache;
    unsigned char offered_id[32];
    size_t offered_len;
    /* The start of the server's first flight (record header, handshake
     * header, version), kept to tell why a version was refused. */
    unsigned char hello_head[11];
    size_t hello_seen;
    char server_name[256];
    char err[320];
    unsigned char *rbuf; /* socket bytes read ahead of the engine */
    size_t rbuf_len, rpos, rlen; /* its size; the unconsumed bytes [rpos, rlen) */
    unsigned char *ibuf; /* the engine's input buffer */
    size_t in_touched;   /* how far into ibuf records have reached */
    unsigned char *map;  /* a client's one mapping (struct client_block); NULL on a server */
    size_t map_len;
    size_t trim_from;    /* offset in map from which pages hold only ibuf */
};

/* A client connection lives in one private mapping of its own, laid out
 *
 *     [ client_block | rbuf | obuf | ibuf (a full record, 16 KiB + 325) ]
 *
 * Resident memory counts the pages touched, and each buffer is touched
 * from its start as far as its largest use: the context is written
 * whole, rbuf as far as the longest read, obuf as far as the longest
 * record sent, ibuf as far as the longest record received. SSE events
 * are records of a few hundred bytes, so a streaming connection stays
 * within the first two pages; pages a large record reached past those
 * are given back once the input is empty again (after the handshake and
 * when the connection goes idle). munmap() at the end also takes the
 * keys and plaintext with it. Servers (the test upstream) keep
 * full-size buffers, so that they send records of every size. */
struct client_block {
    tls_conn conn; /* first: the connection is the block */
    br_ssl_client_context cc;
};

struct server_block {
    tls_conn conn; /* first */
    br_ssl_server_context sc;
    unsigned char rbuf[4096];
    unsigned char iobuf[BR_SSL_BUFSIZE_BIDI];
};

enum {
    LAYOUT_PAGE = 4096,
    /* Requests are small: records of up to 1 KiB of plaintext, a larger
     * request simply takes more of them (85 bytes: BearSSL's largest
     * record overhead on output). */
    CLIENT_OBUF_LEN = 1024 + (BR_SSL_BUFSIZE_OUTPUT - 16384),
    /* ibuf starts this far before the end of the second page, the room a
     * received record has before it touches a third one. */
    CLIENT_IBUF_SHARE = 1536,
    CLIENT_IBUF_AT = 2 * LAYOUT_PAGE - CLIENT_IBUF_SHARE,
    CLIENT_HEAD_LEN = (sizeof(struct client_block) + 15) / 16 * 16,
    CLIENT_RBUF_LEN = CLIENT_IBUF_AT - CLIENT_HEAD_LEN - CLIENT_OBUF_LEN,
    CLIENT_MAP_LEN = CLIENT_IBUF_AT + BR_SSL_BUFSIZE_INPUT,
};
_Static_assert(CLIENT_HEAD_LEN + CLIENT_OBUF_LEN + 512 <= CLIENT_IBUF_AT,
               "the client context leaves too little room for its read-ahead buffer");

static void server_cache_save(const br_ssl_session_cache_class **ctx, br_ssl_server_context *sc,
                              const br_ssl_session_parameters *params)
{
    struct server_cache *cache = (struct server_cache *)(void *)ctx;
    cache->lru.vtable->save(&cache->lru.vtable, sc, params);
}

static int server_cache_load(const br_ssl_session_cache_class **ctx, br_ssl_server_context *sc,
                             br_ssl_session_parameters *params)
{
    struct server_cache *cache = (struct server_cache *)(void *)ctx;
    int found = cache->lru.vtable->load(&cache->lru.vtable, sc, params);
    if (found) {
        struct server_block *b =
            (struct server_block *)(void *)((char *)sc - offsetof(struct server_block, sc));
        tls_conn *c = &b->conn;
        memcpy(c->offered_id, params->session_id, params->session_id_len);
        c->offered_len = params->session_id_len;
    }
    return found;
}

static const br_ssl_session_cache_class server_cache_class = {
    sizeof(struct server_cache), server_cache_save, server_cache_load};

/* ---- addresses in certificates ----------------------------------------- */

/* A bounded view of DER bytes still to read. */
typedef struct der_cursor {
    const unsigned char *p;
    size_t left;
} der_cursor;

enum {
    DER_BOOLEAN = 0x01,
    DER_OCTET_STRING = 0x04,
    DER_OID = 0x06,
    DER_SEQUENCE = 0x30,
    DER_EXTENSIONS = 0xA3, /* [3] EXPLICIT in TBSCertificate */
    DER_SAN_IP = 0x87,     /* GeneralName iPAddress, [7] IMPLICIT OCTET STRING */
};

/* Takes one element off `cur`: its tag byte and its contents. Refuses
 * multi-byte tags, indefinite lengths, lengths of more than four bytes and
 * contents that run past what is left. */
static bool der_take(der_cursor *cur, unsigned char *tag, der_cursor *contents)
{
    if (cur->left < 2 || (cur->p[0] & 0x1F) == 0x1F)
        return false;
    size_t head = 2, len = cur->p[1];
    if (len & 0x80) {
        size_t n = len & 0x7F;
        if (n == 0 || n > 4 || cur->left - 2 < n)
            return false;
        len = 0;
        for (size_t i = 0; i < n; i++)
            len = len << 8 | cur->p[2 + i];
        head += n;
    }
    if (cur->left - head < len)
        return false;
    *tag = cur->p[0];
    contents->p = cur->p + head;
    contents->left = len;
    cur->p += head + len;
    cur->left -= head + len;
    return true;
}

/* GeneralNames (a non-empty SEQUENCE OF GeneralName) inside the extension's
 * OCTET STRING. Every entry is read, so a broken one is never skipped by
 * an early match. */
static tls_san_check san_names_have_ip(der_cursor value, const unsigned char *ip, size_t ip_len)
{
    unsigned char tag;
    der_cursor names, name;
    if (!der_take(&value, &tag, &names) || tag != DER_SEQUENCE || value.left != 0 || names.left == 0)
        return TLS_SAN_MALFORMED;
    bool found = false;
    while (names.left > 0) {
        if (!der_take(&names, &tag, &name))
            return TLS_SAN_MALFORMED;
        if (tag != DER_SAN_IP)
            continue;
        /* RFC 5280 §4.2.1.6: four octets for IPv4, sixteen for IPv6. */
        if (name.left != 4 && name.left != 16)
            return TLS_SAN_MALFORMED;
        if (name.left == ip_len && memcmp(name.p, ip, ip_len) == 0)
            found = true;
    }
    return found ? TLS_SAN_MATCH : TLS_SAN_NO_MATCH;
}

tls_san_check tls_cert_san_has_ip(const unsigned char *der, size_t len, const unsigned char *ip,
                                  size_t ip_len)
{
    static const unsigned char san_oid[] = { 0x55, 0x1D, 0x11 }; /* 2.5.29.17 */
    der_cursor in = { der, len }, cert, tbs, field;
    unsigned char tag;
    if (!der_take(&in, &tag, &cert) || tag != DER_SEQUENCE || in.left != 0)
        return TLS_SAN_MALFORMED;
    if (!der_take(&cert, &tag, &tbs) || tag != DER_SEQUENCE)
        return TLS_SAN_MALFORMED;
    /* Version, serial, algorithm, names, validity, key and unique ids come
     * first; the extensions, when present, are the last field. */
    bool have_extensions = false;
    while (tbs.left > 0 && !have_extensions) {
        if (!der_take(&tbs, &tag, &field))
            return TLS_SAN_MALFORMED;
        have_extensions = tag == DER_EXTENSIONS;
    }
    if (!have_extensions)
        return TLS_SAN_NO_MATCH;
    der_cursor list;
    if (!der_take(&field, &tag, &list) || tag != DER_SEQUENCE || field.left != 0)
        return TLS_SAN_MALFORMED;
    tls_san_check result = TLS_SAN_NO_MATCH;
    bool seen = false;
    while (list.left > 0) {
        der_cursor ext, oid, value;
        if (!der_take(&list, &tag, &ext) || tag != DER_SEQUENCE)
            return TLS_SAN_MALFORMED;
        if (!der_take(&ext, &tag, &oid) || tag != DER_OID || !der_take(&ext, &tag, &value))
            return TLS_SAN_MALFORMED;
        if (tag == DER_BOOLEAN && (value.left != 1 || !der_take(&ext, &tag, &value)))
            return TLS_SAN_MALFORMED; /* the critical flag, then the value */
        if (tag != DER_OCTET_STRING || ext.left != 0)
            return TLS_SAN_MALFORMED;
        if (oid.left != sizeof san_oid || memcmp(oid.p, san_oid, sizeof san_oid) != 0)
            continue;
        if (seen) /* RFC 5280 §4.2: an extension appears at most once */
            return TLS_SAN_MALFORMED;
        seen = true;
        result = san_names_have_ip(value, ip, ip_len);
        if (result == TLS_SAN_MALFORMED)
            return result;
    }
    return result;
}

/* The x509 class in front of the minimal engine (see struct verifier). */

static struct verifier *verifier_of(const br_x509_class **ctx)
{
    return (struct verifier *)(void *)ctx;
}

static void ee_drop(struct verifier *v)
{
    free(v->ee);
    v->ee = NULL;
    v->ee_len = v->ee_cap = 0;
}

/* What br_ssl_client_init_full gives its minimal engine, with the
 * connection's own hash and signature code. */
static br_x509_minimal_context *minimal_new(const struct verifier *v)
{
    br_x509_minimal_context *xc = malloc(sizeof *xc);
    if (xc == NULL)
        return NULL;
    br_x509_minimal_init(xc, &br_sha256_vtable, v->trust ? v->trust->tas : NULL,
                         v->trust ? v->trust->count : 0);
    br_x509_minimal_set_rsa(xc, br_ssl_engine_get_rsavrfy(v->eng));
    br_x509_minimal_set_ecdsa(xc, br_ssl_engine_get_ec(v->eng), br_ssl_engine_get_ecdsa(v->eng));
    for (int id = br_md5_ID; id <= br_sha512_ID; id++)
        br_x509_minimal_set_hash(xc, id, br_ssl_engine_get_hash(v->eng, id));
    return xc;
}

/* Once the handshake is over nothing asks for the chain again
 * (renegotiation is off): what checked it goes. */
static void verifier_release(struct verifier *v)
{
    ee_drop(v);
    free(v->inner);
    v->inner = NULL;
}

static void vf_start_chain(const br_x509_class **ctx, const char *server_name)
{
    /* server_name is the SNI name, NULL for an address (checked below) */
    struct verifier *v = verifier_of(ctx);
    ee_drop(v);
    v->certs_started = 0;
    v->ee_lost = false;
    v->outcome = IP_PENDING;
    if (v->inner == NULL)
        v->inner = minimal_new(v);
    v->no_memory = v->inner == NULL;
    if (v->inner != NULL)
        v->inner->vtable->start_chain(&v->inner->vtable, server_name);
}

static void vf_start_cert(const br_x509_class **ctx, uint32_t length)
{
    struct verifier *v = verifier_of(ctx);
    if (v->inner == NULL)
        return;
    if (v->ip_len > 0 && v->certs_started++ == 0) {
        /* Only the end-entity certificate names the server; one
         * allocation per full handshake, sized by the peer's own count. */
        if (length > 0 && length <= IP_CERT_MAX)
            v->ee = malloc(length);
        if (v->ee != NULL)
            v->ee_cap = length;
        else
            v->ee_lost = true;
    }
    v->inner->vtable->start_cert(&v->inner->vtable, length);
}

static void vf_append(const br_x509_class **ctx, const unsigned char *buf, size_t len)
{
    struct verifier *v = verifier_of(ctx);
    if (v->inner == NULL)
        return;
    if (v->certs_started == 1 && v->ee != NULL) {
        if (len > v->ee_cap - v->ee_len) {
            v->ee_lost = true; /* more bytes than announced: the engine fails it too */
            ee_drop(v);
        } else {
            memcpy(v->ee + v->ee_len, buf, len);
            v->ee_len += len;
        }
    }
    v->inner->vtable->append(&v->inner->vtable, buf, len);
}

static void vf_end_cert(const br_x509_class **ctx)
{
    struct verifier *v = verifier_of(ctx);
    if (v->inner != NULL)
        v->inner->vtable->end_cert(&v->inner->vtable);
}

static unsigned vf_end_chain(const br_x509_class **ctx)
{
    struct verifier *v = verifier_of(ctx);
    if (v->inner == NULL)
        return BR_ERR_X509_LIMIT_EXCEEDED; /* no_memory tells the reason */
    unsigned err = v->inner->vtable->end_chain(&v->inner->vtable);
    if (err == BR_ERR_OK && v->ip_len > 0) {
        /* The chain is trusted; now whether it speaks for this address. */
        if (v->ee_lost || v->ee == NULL)
            v->outcome = IP_TOO_LARGE;
        else {
            tls_san_check r = tls_cert_san_has_ip(v->ee, v->ee_len, v->ip, v->ip_len);
            v->outcome = r == TLS_SAN_MATCH ? IP_MATCH : r == TLS_SAN_NO_MATCH ? IP_NO_MATCH : IP_MALFORMED;
        }
        if (v->outcome != IP_MATCH)
            err = BR_ERR_X509_BAD_SERVER_NAME;
    }
    ee_drop(v);
    return err;
}

static const br_x509_pkey *vf_get_pkey(const br_x509_class *const *ctx, unsigned *usages)
{
    const struct verifier *v = (const struct verifier *)(const void *)ctx;
    if (v->inner == NULL)
        return NULL;
    return v->inner->vtable->get_pkey(&v->inner->vtable, usages);
}

static const br_x509_class verifier_class = {
    sizeof(struct verifier), vf_start_chain, vf_start_cert, vf_append,
    vf_end_cert,             vf_end_chain,   vf_get_pkey,
};

/* ---- small helpers ----------------------------------------------------- */

static bool would_block(int e)
{
    return e == EAGAIN || e == EWOULDBLOCK;
}

static ssize_t sock_send(int fd, const void *p, size_t len)
{
    for (;;) {
        /* MSG_NOSIGNAL: a peer that vanished must give EPIPE, not SIGPIPE. */
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == ENOTSOCK)
            n = write(fd, p, len);
        if (n >= 0 || errno != EINTR)
            return n;
    }
}

static ssize_t sock_recv(int fd, void *p, size_t len)
{
    for (;;) {
        ssize_t n = read(fd, p, len);
        if (n >= 0 || errno != EINTR)
            return n;
    }
}

static const char *alert_name(int a)
{
    switch (a) {
    case BR_ALERT_CLOSE_NOTIFY: return "close_notify";
    case BR_ALERT_UNEXPECTED_MESSAGE: return "unexpected_message";
    case BR_ALERT_BAD_RECORD_MAC: return "bad_record_mac";
    case BR_ALERT_RECORD_OVERFLOW: return "record_overflow";
    case BR_ALERT_DECOMPRESSION_FAILURE: return "decompression_failure";
    case BR_ALERT_HANDSHAKE_FAILURE: return "handshake_failure";
    case BR_ALERT_BAD_CERTIFICATE: return "bad_certificate";
    case BR_ALERT_UNSUPPORTED_CERTIFICATE: return "unsupported_certificate";
    case BR_ALERT_CERTIFICATE_REVOKED: return "certificate_revoked";
    case BR_ALERT_CERTIFICATE_EXPIRED: return "certificate_expired";
    case BR_ALERT_CERTIFICATE_UNKNOWN: return "certificate_unknown";
    case BR_ALERT_ILLEGAL_PARAMETER: return "illegal_parameter";
    case BR_ALERT_UNKNOWN_CA: return "unknown_ca";
    case BR_ALERT_ACCESS_DENIED: return "access_denied";
    case BR_ALERT_DECODE_ERROR: return "decode_error";
    case BR_ALERT_DECRYPT_ERROR: return "decrypt_error";
    case BR_ALERT_PROTOCOL_VERSION: return "protocol_version";
    case BR_ALERT_INSUFFICIENT_SECURITY: return "insufficient_security";
    case BR_ALERT_INTERNAL_ERROR: return "internal_error";
    case BR_ALERT_USER_CANCELED: return "user_canceled";
    case BR_ALERT_NO_RENEGOTIATION: return "no_renegotiation";
    case BR_ALERT_UNSUPPORTED_EXTENSION: return "unsupported_extension";
    case BR_ALERT_NO_APPLICATION_PROTOCOL: return "no_application_protocol";
    default: return "unknown alert";
    }
}

static const char *engine_error_text(int err)
{
    switch (err) {
    case BR_ERR_BAD_PARAM: return "invalid TLS parameter";
    case BR_ERR_BAD_STATE: return "TLS engine in a bad state";
    case BR_ERR_UNSUPPORTED_VERSION: return "no TLS version in common with the peer";
    case BR_ERR_BAD_VERSION: return "peer switched TLS versions";
    case BR_ERR_BAD_LENGTH: return "malformed TLS record length";
    case BR_ERR_TOO_LARGE: return "TLS record too large";
    case BR_ERR_BAD_MAC: return "TLS record failed its integrity check";
    case BR_ERR_NO_RANDOM: return "no entropy source for TLS";
    case BR_ERR_UNKNOWN_TYPE: return "unknown TLS record type (peer may not speak TLS)";
    case BR_ERR_UNEXPECTED: return "unexpected TLS message";
    case BR_ERR_BAD_CCS: return "malformed ChangeCipherSpec";
    case BR_ERR_BAD_ALERT: return "malformed TLS alert";
    case BR_ERR_BAD_HANDSHAKE: return "malformed TLS handshake message";
    case BR_ERR_OVERSIZED_ID: return "oversized TLS session id";
    case BR_ERR_BAD_CIPHER_SUITE: return "no acceptable cipher suite in common";
    case BR_ERR_BAD_COMPRESSION: return "unsupported TLS compression";
    case BR_ERR_BAD_FRAGLEN: return "bad maximum fragment length";
    case BR_ERR_BAD_SECRENEG: return "secure renegotiation failed";
    case BR_ERR_EXTRA_EXTENSION: return "peer sent an unexpected TLS extension";
    case BR_ERR_BAD_SNI: return "malformed server name indication";
    case BR_ERR_BAD_HELLO_DONE: return "malformed ServerHelloDone";
    case BR_ERR_LIMIT_EXCEEDED: return "TLS implementation limit exceeded";
    case BR_ERR_BAD_FINISHED: return "TLS Finished message mismatch";
    case BR_ERR_RESUME_MISMATCH: return "resumed session parameters mismatch";
    case BR_ERR_INVALID_ALGORITHM: return "unsupported algorithm";
    case BR_ERR_BAD_SIGNATURE: return "bad handshake signature";
    case BR_ERR_WRONG_KEY_USAGE: return "certificate key usage does not allow the cipher suite";
    case BR_ERR_NO_CLIENT_AUTH: return "peer requires a client certificate";
    case BR_ERR_IO: return "I/O error";
    default: return NULL;
    }
}

static const char tls13_only[] = "upstream requires TLS 1.3; this build speaks TLS 1.2";

/* The version in the server's first ServerHello, or 0 if none was seen. */
static unsigned server_hello_version(const tls_conn *c)
{
    const unsigned char *h = c->hello_head;
    if (c->hello_seen < sizeof c->hello_head || h[0] != 22 /* handshake record */ ||
        h[5] != 2 /* ServerHello */)
        return 0;
    return (unsigned)h[9] << 8 | h[10];
}

/* The peer refused every version this build offers (TLS 1.0 to 1.2) and so
 * speaks only something newer. A TLS 1.3-only server answers a hello
 * without supported_versions with a protocol_version alert (RFC 8446
 * §4.2.1); a ServerHello naming a version above 1.2 says the same. */
static bool peer_wants_newer_tls(const tls_conn *c, int e)
{
    if (!c->is_client || c->hs_done)
        return false;
    if (e == BR_ERR_RECV_FATAL_ALERT + BR_ALERT_PROTOCOL_VERSION)
        return true;
    return e == BR_ERR_UNSUPPORTED_VERSION && server_hello_version(c) > BR_TLS12;
}

/* Notes bytes going into the engine at p (inside ibuf): how far the
 * input has reached, and the first bytes the server sends. */
static void note_input(tls_conn *c, const unsigned char *p, size_t n)
{
    size_t end = (size_t)(p - c->ibuf) + n;
    if (end > c->in_touched)
        c->in_touched = end;
    if (!c->is_client || c->hello_seen >= sizeof c->hello_head)
        return;
    size_t room = sizeof c->hello_head - c->hello_seen;
    size_t take = n < room ? n : room;
    memcpy(c->hello_head + c->hello_seen, p, take);
    c->hello_seen += take;
}

static const char *address_failure(const tls_conn *c)
{
    switch (c->vf.outcome) {
    case IP_MALFORMED: return "certificate has a malformed subjectAltName extension";
    case IP_TOO_LARGE: return "certificate too large to check its addresses";
    default: return NULL;
    }
}

/* Turns BearSSL's error code into c->err. */
static void describe_engine_error(tls_conn *c, int e)
{
    const char *stage = c->hs_done ? "TLS connection failed" : "TLS handshake failed";
    const char *txt;
    bool by_address = c->is_client && c->vf.ip_len > 0;
    if (peer_wants_newer_tls(c, e))
        snprintf(c->err, sizeof c->err, "%s", tls13_only);
    else if (c->is_client && c->vf.no_memory)
        snprintf(c->err, sizeof c->err, "out of memory verifying the certificate");
    else if (e == BR_ERR_X509_EXPIRED)
        snprintf(c->err, sizeof c->err, "certificate has expired or is not yet valid");
    else if (e == BR_ERR_X509_BAD_SERVER_NAME && by_address && address_failure(c) != NULL)
        snprintf(c->err, sizeof c->err, "%s", address_failure(c));
    else if (e == BR_ERR_X509_BAD_SERVER_NAME && by_address)
        snprintf(c->err, sizeof c->err, "certificate is not for address %s", c->server_name);
    else if (e == BR_ERR_X509_BAD_SERVER_NAME)
        snprintf(c->err, sizeof c->err, "certificate is not for host %s", c->server_name);
    else if (e == BR_ERR_X509_NOT_TRUSTED)
        snprintf(c->err, sizeof c->err, "certificate chain is not trusted");
    else if (e >= BR_ERR_X509_OK && e < BR_ERR_X509_OK + 32)
        snprintf(c->err, sizeof c->err, "certificate rejected (BearSSL error %d)", e);
    else if (e >= BR_ERR_SEND_FATAL_ALERT)
        snprintf(c->err, sizeof c->err, "%s: sent alert %s (%d)", stage,
                 alert_name(e - BR_ERR_SEND_FATAL_ALERT), e - BR_ERR_SEND_FATAL_ALERT);
    else if (e >= BR_ERR_RECV_FATAL_ALERT)
        snprintf(c->err, sizeof c->err, "%s: peer sent alert %s (%d)", stage,
                 alert_name(e - BR_ERR_RECV_FATAL_ALERT), e - BR_ERR_RECV_FATAL_ALERT);
    else if ((txt = engine_error_text(e)) != NULL)
        snprintf(c->err, sizeof c->err, "%s: %s (BearSSL error %d)", stage, txt, e);
    else
        snprintf(c->err, sizeof c->err, "%s (BearSSL error %d)", stage, e);
}

static void cache_forget(tls_session_cache *cache)
{
    explicit_bzero(&cache->params, sizeof cache->params);
    cache->valid = false;
}

static void fail_with(tls_conn *c, int err_no, const char *msg)
{
    if (c->failed)
        return;
    c->failed = true;
    c->fail_errno = err_no;
    snprintf(c->err, sizeof c->err, "%s", msg);
    /* A session that ends in a failed handshake is not worth offering again. */
    if (!c->hs_done && c->cache != NULL)
        cache_forget(c->cache);
}

static void fail_engine(tls_conn *c, int e)
{
    if (c->failed)
        return;
    char msg[sizeof c->err];
    describe_engine_error(c, e);
    memcpy(msg, c->err, sizeof msg);
    fail_with(c, EPROTO, msg);
}

static void fail_io(tls_conn *c, int e)
{
    char msg[sizeof c->err];
    snprintf(msg, sizeof msg, "socket error%s: %s", c->hs_done ? "" : " during TLS handshake",
             strerror(e));
    fail_with(c, e, msg);
}

static void fail_eof_in_handshake(tls_conn *c)
{
    fail_with(c, ECONNRESET, "connection closed by peer during TLS handshake");
}

/* Gives back the pages of a client's ibuf that records reached past the
 * ones it shares with the rest of the connection, when the engine holds
 * no input: it then writes the next record at ibuf[0] again, and a page
 * given back reads as zeros when touched next. */
static void trim_input(tls_conn *c)
{
    if (c->map == NULL || c->in_touched <= c->trim_from - CLIENT_IBUF_AT)
        return;
    size_t len;
    if (br_ssl_engine_recvrec_buf(c->eng, &len) != c->ibuf)
        return; /* part of a record is in, or the engine is closed */
    if (madvise(c->map + c->trim_from, c->map_len - c->trim_from, MADV_DONTNEED) == 0)
        c->in_touched = c->trim_from - CLIENT_IBUF_AT;
}

/* Marks the handshake done the first time the engine lets application data
 * through, and settles resumption and the session cache at that point. */
static void note_handshake(tls_conn *c)
{
    if (c->hs_done)
        return;
    unsigned st = br_ssl_engine_current_state(c->eng);
    if (!(st & (BR_SSL_SENDAPP | BR_SSL_RECVAPP)))
        return;
    c->hs_done = true;
    br_ssl_session_parameters sp;
    br_ssl_engine_get_session_parameters(c->eng, &sp);
    /* Resumed exactly when the session ends up with the id the client offered
     * (client side) or the cache handed back (server side); a full handshake
     * makes a new id, or none. */
    c->resumed = c->offered_len > 0 && sp.session_id_len == c->offered_len &&
                 memcmp(sp.session_id, c->offered_id, c->offered_len) == 0;
    if (!c->is_client) {
        explicit_bzero(&sp, sizeof sp);
        return;
    }
    if (c->cache != NULL) {
        if (sp.session_id_len > 0) {
            c->cache->params = sp;
            c->cache->valid = true;
        } else {
            cache_forget(c->cache);
        }
    }
    explicit_bzero(&sp, sizeof sp);
    verifier_release(&c->vf);
    trim_input(c); /* a server's certificates may have spread over several pages */
}

/* Moves records between the engine and the socket until neither direction
 * progresses. Never blocks. Returns the bytes moved (0 when nothing could
 * move), or -1 after recording a failure. Sets c->eof on EOF. */
static ssize_t pump(tls_conn *c, int fd, bool may_read)
{
    size_t moved = 0;
    for (;;) {
        bool progress = false;
        size_t len;
        unsigned char *p = br_ssl_engine_sendrec_buf(c->eng, &len);
        if (p != NULL && !c->peer_closed) {
            ssize_t n = sock_send(fd, p, len);
            if (n > 0) {
                br_ssl_engine_sendrec_ack(c->eng, (size_t)n);
                moved += (size_t)n;
                progress = true;
            } else if (n < 0 && !would_block(errno)) {
                size_t dummy;
                /* Engine takes no more input: the peer's close_notify came
                 * in and we were only answering it. That is a clean end. */
                if ((errno == EPIPE || errno == ECONNRESET) && c->hs_done &&
                    br_ssl_engine_recvrec_buf(c->eng, &dummy) == NULL &&
                    br_ssl_engine_recvapp_buf(c->eng, &dummy) == NULL) {
                    c->peer_closed = true;
                    return (ssize_t)moved;
                }
                fail_io(c, errno);
                return -1;
            }
        }
        if (may_read) {
            p = br_ssl_engine_recvrec_buf(c->eng, &len);
            if (p != NULL && c->rpos < c->rlen) {
                size_t n = c->rlen - c->rpos < len ? c->rlen - c->rpos : len;
                memcpy(p, c->rbuf + c->rpos, n);
                c->rpos += n;
                note_input(c, p, n);
                br_ssl_engine_recvrec_ack(c->eng, n);
                moved += n;
                progress = true;
            } else if (p != NULL && !c->eof) {
                /* The engine asks for one record header or body at a time;
                 * small ones go through rbuf so that a burst of small SSE
                 * records costs one read(), large bodies land directly. */
                bool direct = len >= c->rbuf_len;
                ssize_t n = sock_recv(fd, direct ? p : c->rbuf, direct ? len : c->rbuf_len);
                if (n > 0) {
                    if (direct) {
                        note_input(c, p, (size_t)n);
                        br_ssl_engine_recvrec_ack(c->eng, (size_t)n);
                    } else {
                        c->rpos = 0;
                        c->rlen = (size_t)n;
                    }
                    moved += (size_t)n;
                    progress = true;
                } else if (n == 0) {
                    c->eof = true;
                } else if (!would_block(errno)) {
                    fail_io(c, errno);
                    return -1;
                }
            }
        }
        if (!progress)
            return (ssize_t)moved;
    }
}

/* Notices a closed or failed engine. Returns -1 (errno set) on failure,
 * 0 when the engine closed cleanly, 1 while open. */
static int engine_status(tls_conn *c)
{
    if (c->failed) {
        errno = c->fail_errno;
        return -1;
    }
    if (br_ssl_engine_current_state(c->eng) & BR_SSL_CLOSED) {
        int e = br_ssl_engine_last_error(c->eng);
        if (e != BR_ERR_OK)
            fail_engine(c, e);
        else if (!c->hs_done)
            fail_eof_in_handshake(c);
        else
            return 0;
        errno = c->fail_errno;
        return -1;
    }
    if (c->eof && !c->hs_done) {
        fail_eof_in_handshake(c);
        errno = c->fail_errno;
        return -1;
    }
    return c->peer_closed ? 0 : 1;
}

/* ---- trust anchors ----------------------------------------------------- */


static bool is_cert_name(const char *name)
{
    return strcmp(name, "CERTIFICATE") == 0 || strcmp(name, "X509 CERTIFICATE") == 0;
}

/* Decodes one certificate into an anchor whose DN and key bytes live in a
 * single allocation (freed through dn.data). Returns 0 or -1. */
static int make_anchor(br_x509_trust_anchor *ta, const unsigned char *der, size_t len)
{
    br_x509_decoder_context dc;
    byte_sink dn = { 0 };
    br_x509_decoder_init(&dc, byte_sink_append, &dn);
    br_x509_decoder_push(&dc, der, len);
    const br_x509_pkey *pk = br_x509_decoder_get_pkey(&dc);
    size_t k1, k2;
    if (pk == NULL || dn.oom)
        goto bad;
    if (pk->key_type == BR_KEYTYPE_RSA) {
        k1 = pk->key.rsa.nlen;
        k2 = pk->key.rsa.elen;
    } else if (pk->key_type == BR_KEYTYPE_EC) {
        k1 = pk->key.ec.qlen;
        k2 = 0;
    } else {
        goto bad;
    }
    unsigned char *mem = malloc(dn.len + k1 + k2 + 1);
    if (mem == NULL)
        goto bad;
    if (dn.len > 0)
        memcpy(mem, dn.buf, dn.len);
    *ta = (br_x509_trust_anchor){ 0 };
    ta->dn.data = mem;
    ta->dn.len = dn.len;
    ta->flags = br_x509_decoder_isCA(&dc) ? BR_X509_TA_CA : 0;
    ta->pkey.key_type = pk->key_type;
    if (pk->key_type == BR_KEYTYPE_RSA) {
        ta->pkey.key.rsa.n = mem + dn.len;
        ta->pkey.key.rsa.nlen = k1;
        memcpy(ta->pkey.key.rsa.n, pk->key.rsa.n, k1);
        ta->pkey.key.rsa.e = mem + dn.len + k1;
        ta->pkey.key.rsa.elen = k2;
        memcpy(ta->pkey.key.rsa.e, pk->key.rsa.e, k2);
    } else {
        ta->pkey.key.ec.curve = pk->key.ec.curve;
        ta->pkey.key.ec.q = mem + dn.len;
        ta->pkey.key.ec.qlen = k1;
        memcpy(ta->pkey.key.ec.q, pk->key.ec.q, k1);
    }
    free(dn.buf);
    return 0;
bad:
    free(dn.buf);
    return -1;
}

tls_trust *tls_trust_load(const char *pem_path, const char **why)
{
    pem_object *objs;
    size_t n;
    if (pem_read_file(pem_path, "CA file", &objs, &n, load_why, sizeof load_why) < 0) {
        *why = load_why;
        return NULL;
    }
    tls_trust *t = calloc(1, sizeof *t);
    if (t != NULL)
        t->tas = calloc(n ? n : 1, sizeof *t->tas);
    if (t == NULL || t->tas == NULL) {
        free(t);
        pem_free(objs, n);
        snprintf(load_why, sizeof load_why, "out of memory loading CA file %s", pem_path);
        *why = load_why;
        return NULL;
    }
    size_t certs = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_cert_name(objs[i].name))
            continue;
        certs++;
        /* A bundle may hold certificates BearSSL cannot parse; skip them. */
        if (make_anchor(&t->tas[t->count], objs[i].der, objs[i].len) == 0)
            t->count++;
    }
    pem_free(objs, n);
    if (t->count == 0) {
        if (certs == 0)
            snprintf(load_why, sizeof load_why, "no certificates in %s", pem_path);
        else
            snprintf(load_why, sizeof load_why,
                     "no usable certificates in %s (%zu could not be decoded)", pem_path,
                     certs);
        *why = load_why;
        tls_trust_free(t);
        return NULL;
    }
    return t;
}

size_t tls_trust_count(const tls_trust *t)
{
    return t ? t->count : 0;
}

void tls_trust_free(tls_trust *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->count; i++)
        free(t->tas[i].dn.data);
    free(t->tas);
    free(t);
}

/* ---- server credentials ------------------------------------------------ */

static bool is_key_name(const char *name)
{
    return strcmp(name, "EC PRIVATE KEY") == 0 || strcmp(name, "PRIVATE KEY") == 0 ||
           strcmp(name, "RSA PRIVATE KEY") == 0;
}

/* Copies the decoded private key into memory the credential owns. */
static int copy_key(tls_server_cred *cr, const br_skey_decoder_context *kc)
{
    cr->key_type = br_skey_decoder_key_type(kc);
    if (cr->key_type == BR_KEYTYPE_EC) {
        const br_ec_private_key *k = br_skey_decoder_get_ec(kc);
        cr->key_mem_len = k->xlen;
        cr->key_mem = malloc(k->xlen + 1);
        if (cr->key_mem == NULL)
            return -1;
        memcpy(cr->key_mem, k->x, k->xlen);
        cr->ec = (br_ec_private_key){ k->curve, cr->key_mem, k->xlen };
        return 0;
    }
    const br_rsa_private_key *k = br_skey_decoder_get_rsa(kc);
    if (k == NULL)
        return -1;
    cr->key_mem_len = k->plen + k->qlen + k->dplen + k->dqlen + k->iqlen;
    unsigned char *m = malloc(cr->key_mem_len + 1);
    if (m == NULL)
        return -1;
    cr->key_mem = m;
    cr->rsa.n_bitlen = k->n_bitlen;
    memcpy(m, k->p, k->plen);
    cr->rsa.p = m;
    cr->rsa.plen = k->plen;
    m += k->plen;
    memcpy(m, k->q, k->qlen);
    cr->rsa.q = m;
    cr->rsa.qlen = k->qlen;
    m += k->qlen;
    memcpy(m, k->dp, k->dplen);
    cr->rsa.dp = m;
    cr->rsa.dplen = k->dplen;
    m += k->dplen;
    memcpy(m, k->dq, k->dqlen);
    cr->rsa.dq = m;
    cr->rsa.dqlen = k->dqlen;
    m += k->dqlen;
    memcpy(m, k->iq, k->iqlen);
    cr->rsa.iq = m;
    cr->rsa.iqlen = k->iqlen;
    return 0;
}

/* Fills the chain from a PEM file; takes ownership of the DER buffers. */
static int load_chain(tls_server_cred *cr, const char *path)
{
    pem_object *objs;
    size_t n;
    if (pem_read_file(path, "certificate file", &objs, &n, load_why, sizeof load_why) < 0)
        return -1;
    cr->chain = calloc(n ? n : 1, sizeof *cr->chain);
    if (cr->chain == NULL) {
        pem_free(objs, n);
        snprintf(load_why, sizeof load_why, "out of memory loading %s", path);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (!is_cert_name(objs[i].name))
            continue;
        cr->chain[cr->chain_len++] = (br_x509_certificate){ objs[i].der, objs[i].len };
        objs[i].der = NULL;
        objs[i].len = 0;
    }
    pem_free(objs, n);
    if (cr->chain_len == 0) {
        snprintf(load_why, sizeof load_why, "no certificates in %s", path);
        return -1;
    }
    return 0;
}

/* Returns the leaf's public key type and records who signed it. */
static int inspect_leaf(tls_server_cred *cr, const char *path)
{
    br_x509_decoder_context dc;
    br_x509_decoder_init(&dc, NULL, NULL);
    br_x509_decoder_push(&dc, cr->chain[0].data, cr->chain[0].data_len);
    const br_x509_pkey *pk = br_x509_decoder_get_pkey(&dc);
    if (pk == NULL) {
        snprintf(load_why, sizeof load_why,
                 "cannot decode the first certificate in %s (BearSSL error %d)", path,
                 br_x509_decoder_last_error(&dc));
        return -1;
    }
    int signer = br_x509_decoder_get_signer_key_type(&dc);
    cr->issuer_key_type = signer == BR_KEYTYPE_RSA ? BR_KEYTYPE_RSA : BR_KEYTYPE_EC;
    return pk->key_type;
}

static int load_key(tls_server_cred *cr, const char *path)
{
    pem_object *objs;
    size_t n;
    if (pem_read_file(path, "key file", &objs, &n, load_why, sizeof load_why) < 0)
        return -1;
    const pem_object *key = NULL;
    bool encrypted = false;
    for (size_t i = 0; i < n && key == NULL; i++) {
        if (is_key_name(objs[i].name))
            key = &objs[i];
        else if (strcmp(objs[i].name, "ENCRYPTED PRIVATE KEY") == 0)
            encrypted = true;
    }
    int rc = -1;
    if (key == NULL) {
        snprintf(load_why, sizeof load_why,
                 encrypted ? "encrypted private key in %s is not supported"
                           : "no private key in %s",
                 path);
    } else {
        br_skey_decoder_context kc;
        br_skey_decoder_init(&kc);
        br_skey_decoder_push(&kc, key->der, key->len);
        int e = br_skey_decoder_last_error(&kc);
        if (e != 0)
            snprintf(load_why, sizeof load_why,
                     "cannot decode private key in %s (BearSSL error %d)", path, e);
        else if (copy_key(cr, &kc) < 0)
            snprintf(load_why, sizeof load_why, "out of memory loading %s", path);
        else
            rc = 0;
        explicit_bzero(&kc, sizeof kc); /* held the private key */
    }
    pem_free(objs, n);
    return rc;
}

tls_server_cred *tls_server_cred_load(const char *chain_path, const char *key_path,
                                      const char **why)
{
    tls_server_cred *cr = calloc(1, sizeof *cr);
    if (cr == NULL) {
        snprintf(load_why, sizeof load_why, "out of memory");
        goto fail;
    }
    if (load_chain(cr, chain_path) < 0)
        goto fail;
    int leaf_type = inspect_leaf(cr, chain_path);
    if (leaf_type < 0 || load_key(cr, key_path) < 0)
        goto fail;
    if (leaf_type != cr->key_type) {
        snprintf(load_why, sizeof load_why,
                 "private key in %s is %s but the certificate in %s holds an %s key", key_path,
                 cr->key_type == BR_KEYTYPE_EC ? "EC" : "RSA", chain_path,
                 leaf_type == BR_KEYTYPE_EC ? "EC" : "RSA");
        goto fail;
    }
    cr->cache = calloc(1, sizeof *cr->cache);
    cr->lru_store = calloc(SERVER_CACHE_ENTRIES, 100);
    if (cr->cache == NULL || cr->lru_store == NULL) {
        snprintf(load_why, sizeof load_why, "out of memory");
        goto fail;
    }
    br_ssl_session_cache_lru_init(&cr->cache->lru, cr->lru_store, (size_t)SERVER_CACHE_ENTRIES * 100);
    cr->cache->vtable = &server_cache_class;
    return cr;
fail:
    tls_server_cred_free(cr);
    *why = load_why;
    return NULL;
}

void tls_server_cred_free(tls_server_cred *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->chain_len; i++)
        free(c->chain[i].data);
    free(c->chain);
    if (c->key_mem != NULL)
        explicit_bzero(c->key_mem, c->key_mem_len);
    free(c->key_mem);
    if (c->lru_store != NULL)
        explicit_bzero(c->lru_store, (size_t)SERVER_CACHE_ENTRIES * 100);
    free(c->lru_store);
    free(c->cache);
    free(c);
}

/* ---- session cache ----------------------------------------------------- */

tls_session_cache *tls_session_cache_new(void)
{
    return calloc(1, sizeof(tls_session_cache));
}

void tls_session_cache_free(tls_session_cache *c)
{
    if (c == NULL)
        return;
    cache_forget(c);
    free(c);
}

bool tls_session_cache_ready(const tls_session_cache *c)
{
    return c != NULL && c->valid;
}

/* ---- connections ------------------------------------------------------- */

/* Maps a client's block and buffers (see struct client_block) with nothing
 * touched beyond what BearSSL's set-up writes. */
static tls_conn *client_map(void)
{
    void *m = mmap(NULL, CLIENT_MAP_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    struct client_block *b = m;
    tls_conn *c = &b->conn; /* fresh anonymous pages read as zeros */
    c->map = m;
    c->map_len = CLIENT_MAP_LEN;
    c->rbuf = c->map + CLIENT_HEAD_LEN;
    c->rbuf_len = CLIENT_RBUF_LEN;
    c->ibuf = c->map + CLIENT_IBUF_AT;
    long page = sysconf(_SC_PAGESIZE);
    size_t pg = page > 0 ? (size_t)page : LAYOUT_PAGE;
    /* Past the page holding ibuf's first byte; with larger pages there may
     * be nothing to give back. */
    c->trim_from = ((size_t)CLIENT_IBUF_AT / pg + 1) * pg;
    if (c->trim_from > c->map_len)
        c->trim_from = c->map_len;
    c->eng = &b->cc.eng;
    c->is_client = true;
    return c;
}

tls_conn *tls_client_new(const tls_trust *trust, const char *server_name,
                         tls_session_cache *cache)
{
    tls_conn *c = client_map();
    if (c == NULL)
        return NULL;
    struct client_block *b = (struct client_block *)(void *)c;
    c->cache = cache;
    if (server_name == NULL)
        server_name = "";
    snprintf(c->server_name, sizeof c->server_name, "%s", server_name);

    {
        /* init_full configures this minimal engine and links it; ours
         * takes its place and makes its own when a chain comes. */
        br_x509_minimal_context scratch;
        br_ssl_client_init_full(&b->cc, &scratch, NULL, 0);
    }
    struct verifier *vf = &c->vf;
    vf->vtable = &verifier_class;
    vf->eng = c->eng;
    vf->trust = trust;
    br_ssl_engine_set_x509(c->eng, &vf->vtable);
    br_ssl_engine_set_buffers_bidi(c->eng, c->ibuf, BR_SSL_BUFSIZE_INPUT,
                                   c->map + CLIENT_IBUF_AT - CLIENT_OBUF_LEN, CLIENT_OBUF_LEN);
    /* BearSSL would ask the server for records that fit the small output
     * buffer (the max_fragment_length extension); many servers ignore it
     * and some take it badly, so the input buffer takes full records and
     * the request says nothing. Outgoing records stay small regardless. */
    c->eng->log_max_frag_len = 14;
    br_ssl_engine_add_flags(c->eng, BR_OPT_NO_RENEGOTIATION);
    /* The caller needs the name checked: BearSSL skips the check when it
     * gets no name, so refuse that rather than connect unverified. */
    if (server_name[0] == '\0') {
        fail_with(c, EINVAL, "no server name to verify the certificate against");
        return c;
    }
    if (strlen(server_name) >= sizeof c->server_name) {
        fail_with(c, EINVAL, "server name too long for TLS");
        return c;
    }
    if (inet_pton(AF_INET, server_name, vf->ip) == 1)
        vf->ip_len = 4;
    else if (inet_pton(AF_INET6, server_name, vf->ip) == 1)
        vf->ip_len = 16;
    /* No SNI for an address; the verifier checks it instead. */
    const char *sni = vf->ip_len > 0 ? NULL : server_name;
    int resume = 0;
    if (cache != NULL && cache->valid) {
        br_ssl_engine_set_session_parameters(c->eng, &cache->params);
        c->offered_len = cache->params.session_id_len;
        memcpy(c->offered_id, cache->params.session_id, c->offered_len);
        resume = 1;
    }
    if (!br_ssl_client_reset(&b->cc, sni, resume))
        fail_engine(c, br_ssl_engine_last_error(c->eng));
    return c;
}

tls_conn *tls_server_new(const tls_server_cred *cred)
{
    struct server_block *b = calloc(1, sizeof *b);
    if (b == NULL)
        return NULL;
    tls_conn *c = &b->conn;
    c->eng = &b->sc.eng;
    c->rbuf = b->rbuf;
    c->rbuf_len = sizeof b->rbuf;
    if (cred->key_type == BR_KEYTYPE_EC)
        br_ssl_server_init_full_ec(&b->sc, cred->chain, cred->chain_len,
                                   cred->issuer_key_type, &cred->ec);
    else
        br_ssl_server_init_full_rsa(&b->sc, cred->chain, cred->chain_len, &cred->rsa);
    br_ssl_engine_set_buffer(c->eng, b->iobuf, sizeof b->iobuf, 1);
    c->ibuf = c->eng->ibuf;
    br_ssl_engine_add_flags(c->eng, BR_OPT_NO_RENEGOTIATION);
    br_ssl_server_set_cache(&b->sc, &cred->cache->vtable);
    if (!br_ssl_server_reset(&b->sc))
        fail_engine(c, br_ssl_engine_last_error(c->eng));
    return c;
}

void tls_free(tls_conn *c)
{
    if (c == NULL)
        return;
    if (c->is_client) {
        verifier_release(&c->vf); /* a handshake cut off midway */
        /* The pages go, and with them keys and plaintext. */
        munmap(c->map, c->map_len);
        return;
    }
    struct server_block *b = (struct server_block *)(void *)c;
    explicit_bzero(b, sizeof *b); /* the engine holds session keys and plaintext */
    free(b);
}

void tls_idle(tls_conn *c)
{
    trim_input(c);
}

size_t tls_footprint(const tls_conn *c)
{
    if (c->map == NULL)
        return sizeof(struct server_block);
    long page = sysconf(_SC_PAGESIZE);
    unsigned char vec[(CLIENT_MAP_LEN + 1023) / 1024]; /* pages of 1 KiB or more */
    size_t pg = page > 0 ? (size_t)page : LAYOUT_PAGE;
    size_t pages = (c->map_len + pg - 1) / pg;
    if (pages > sizeof vec || mincore(c->map, c->map_len, vec) != 0)
        return c->map_len; /* cannot tell: all of it */
    size_t resident = 0;
    for (size_t i = 0; i < pages; i++)
        resident += (vec[i] & 1) ? pg : 0;
    return resident;
}

ssize_t tls_read(tls_conn *c, int fd, void *buf, size_t cap)
{
    if (cap == 0) {
        errno = EINVAL;
        return -1;
    }
    for (;;) {
        size_t avail;
        unsigned char *p = br_ssl_engine_recvapp_buf(c->eng, &avail);
        if (p != NULL) {
            size_t n = avail < cap ? avail : cap;
            memcpy(buf, p, n);
            br_ssl_engine_recvapp_ack(c->eng, n);
            note_handshake(c);
            /* Freeing input space may let the engine queue records (e.g.
             * an alert); push them now. A failure shows on the next call. */
            (void)pump(c, fd, false);
            return (ssize_t)n;
        }
        int s = engine_status(c);
        if (s < 0)
            return -1;
        if (s == 0)
            return 0;
        if (c->eof) {
            /* EOF after the handshake without close_notify: reported as a
             * plain EOF; HTTP framing above catches truncated bodies. */
            if (c->err[0] == '\0')
                snprintf(c->err, sizeof c->err, "connection closed without TLS close_notify");
            return 0;
        }
        ssize_t moved = pump(c, fd, true);
        note_handshake(c);
        if (moved < 0)
            continue; /* engine_status reports it */
        if (moved == 0 && !c->eof) {
            errno = EAGAIN;
            return -1;
        }
    }
}

ssize_t tls_write(tls_conn *c, int fd, const void *buf, size_t len)
{
    const unsigned char *src = buf;
    size_t taken = 0;
    if (len == 0)
        return 0;
    for (;;) {
        int s = engine_status(c);
        if (s <= 0) {
            if (taken > 0)
                return (ssize_t)taken; /* the failure shows on the next call */
            if (s == 0) {
                if (c->err[0] == '\0')
                    snprintf(c->err, sizeof c->err, "TLS connection already closed");
                errno = EPIPE;
            }
            return -1;
        }
        size_t room;
        unsigned char *p = br_ssl_engine_sendapp_buf(c->eng, &room);
        if (p != NULL && taken < len) {
            size_t n = len - taken < room ? len - taken : room;
            memcpy(p, src + taken, n);
            br_ssl_engine_sendapp_ack(c->eng, n);
            taken += n;
            /* Each write is a record on the wire now: SSE chunks must not
             * linger in the engine waiting for more data. */
            br_ssl_engine_flush(c->eng, 0);
        }
        /* Reading is needed only to drive the handshake; afterwards input
         * waits for tls_read. */
        ssize_t moved = pump(c, fd, !c->hs_done);
        note_handshake(c);
        if (moved < 0)
            continue;
        if (taken == len)
            return (ssize_t)taken;
        if (c->eof && !c->hs_done)
            continue; /* engine_status turns it into a failure */
        if (moved == 0 && br_ssl_engine_sendapp_buf(c->eng, &room) == NULL)
            break; /* socket full or handshake waiting on the peer */
    }
    if (taken > 0)
        return (ssize_t)taken;
    errno = EAGAIN;
    return -1;
}

int tls_flush(tls_conn *c, int fd)
{
    int s = engine_status(c);
    if (s < 0)
        return -1;
    if (s == 0)
        return 0; /* closed: nothing more can be sent */
    br_ssl_engine_flush(c->eng, 0);
    ssize_t moved = pump(c, fd, !c->hs_done);
    note_handshake(c);
    if (moved < 0 || engine_status(c) < 0)
        return -1;
    size_t len;
    if (!c->peer_closed && br_ssl_engine_sendrec_buf(c->eng, &len) != NULL) {
        errno = EAGAIN;
        return -1;
    }
    return 0;
}

uint32_t tls_events(const tls_conn *c)
{
    unsigned st = br_ssl_engine_current_state(c->eng);
    /* Nothing left to wait for: ask for both so the caller wakes at once and
     * learns the outcome from tls_read/tls_write/tls_flush. */
    if (c->failed || c->peer_closed || (st & BR_SSL_CLOSED))
        return EPOLLIN | EPOLLOUT;
    if (c->eof)
        return (st & BR_SSL_SENDREC) ? EPOLLOUT : (EPOLLIN | EPOLLOUT);
    uint32_t ev = 0;
    if (st & BR_SSL_SENDREC)
        ev |= EPOLLOUT;
    if (st & BR_SSL_RECVREC)
        ev |= EPOLLIN;
    return ev;
}

bool tls_handshake_done(const tls_conn *c)
{
    return c->hs_done;
}

bool tls_resumed(const tls_conn *c)
{
    return c->resumed;
}

const char *tls_server_name(const tls_conn *c)
{
    return br_ssl_engine_get_server_name(c->eng);
}

const char *tls_error(const tls_conn *c)
{
    if (c->err[0] != '\0')
        return c->err;
    int e = br_ssl_engine_last_error(c->eng);
    if (e == BR_ERR_OK)
        return NULL; /* nothing failed */
    /* Not yet noticed by a read/write: give the table text without context. */
    if (peer_wants_newer_tls(c, e))
        return tls13_only;
    const char *txt = engine_error_text(e);
    if (txt != NULL)
        return txt;
    if (e == BR_ERR_X509_EXPIRED)
        return "certificate has expired or is not yet valid";
    if (e == BR_ERR_X509_NOT_TRUSTED)
        return "certificate chain is not trusted";
    if (e >= BR_ERR_X509_OK && e < BR_ERR_X509_OK + 32)
        return "certificate rejected";
    return "TLS failure";
}

void tls_close(tls_conn *c, int fd)
{
    if (c->failed || (br_ssl_engine_current_state(c->eng) & BR_SSL_CLOSED))
        return;
    br_ssl_engine_close(c->eng);
    (void)pump(c, fd, false);
}
