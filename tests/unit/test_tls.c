/* tls.c end to end: a client and a server tls_conn over a non-blocking
 * socketpair, pumped with poll() from one thread. Certificates are made on
 * the fly with the openssl command line in a temporary directory. */
#include "upstream/tls.h"
#include "unit.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/arena.h"
#include "demo/fakeai.h"
#include "core/loop.h"
#include "upstream/upstream.h"

/* ---- fixture: certificates ------------------------------------------------ */

static char fx_dir[64];
static int fx_state; /* 0 not tried, 1 ready, -1 failed */

static const char gen_script[] =
    "set -e\n"
    "cat > x.cnf <<'EOF'\n"
    "[req]\n"
    "distinguished_name = dn\n"
    "prompt = no\n"
    "[dn]\n"
    "CN = ssegate test CA\n"
    "[v3_ca]\n"
    "basicConstraints = critical, CA:TRUE\n"
    "keyUsage = critical, keyCertSign, cRLSign\n"
    "subjectKeyIdentifier = hash\n"
    "[leaf]\n"
    "basicConstraints = critical, CA:FALSE\n"
    "keyUsage = critical, digitalSignature\n"
    "extendedKeyUsage = serverAuth\n"
    "subjectAltName = DNS:localhost\n"
    "[leaf_ip4]\n"
    "basicConstraints = critical, CA:FALSE\n"
    "keyUsage = critical, digitalSignature\n"
    "extendedKeyUsage = serverAuth\n"
    "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
    "[leaf_ip6]\n"
    "basicConstraints = critical, CA:FALSE\n"
    "keyUsage = critical, digitalSignature\n"
    "extendedKeyUsage = serverAuth\n"
    "subjectAltName = IP:::1\n"
    "[leaf_badsan]\n"
    "basicConstraints = critical, CA:FALSE\n"
    "keyUsage = critical, digitalSignature\n"
    "extendedKeyUsage = serverAuth\n"
    "subjectAltName = DER:30:03:87:01:01\n" /* an iPAddress of one byte */
    "[leaf_rsa]\n"
    "basicConstraints = critical, CA:FALSE\n"
    "keyUsage = critical, digitalSignature, keyEncipherment\n"
    "extendedKeyUsage = serverAuth\n"
    "subjectAltName = DNS:localhost\n"
    "[ca]\n"
    "default_ca = testca\n"
    "[testca]\n"
    "database = index.txt\n"
    "new_certs_dir = .\n"
    "serial = serial\n"
    "default_md = sha256\n"
    "policy = anything\n"
    "[anything]\n"
    "commonName = supplied\n"
    "EOF\n"
    /* CA 1 (EC key in SEC1 form) and a P-256 leaf for localhost (PKCS#8). */
    "openssl ecparam -name prime256v1 -genkey -noout -out ca.key\n"
    "openssl req -x509 -new -key ca.key -config x.cnf -extensions v3_ca -days 30 -out ca.pem\n"
    "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out leaf.key\n"
    "openssl ec -in leaf.key -out leaf-sec1.key\n"
    "openssl req -new -key leaf.key -subj /CN=localhost -out leaf.csr\n"
    "openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30"
    " -extfile x.cnf -extensions leaf -out leaf.pem\n"
    "cat leaf.pem ca.pem > chain.pem\n"
    /* The same key as leaves for 127.0.0.1 and for ::1, and every leaf in
     * DER for the subjectAltName parser. */
    "for v in ip4 ip6 badsan; do\n"
    "  openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30"
    " -extfile x.cnf -extensions leaf_$v -out $v.pem\n"
    "  cat $v.pem ca.pem > $v-chain.pem\n"
    "done\n"
    "for c in leaf ip4 ip6 ca; do openssl x509 -in $c.pem -outform DER -out $c.der; done\n"
    /* An RSA leaf (PKCS#1 key) under the same CA. */
    "openssl genrsa -traditional -out rsa.key 2048\n"
    "openssl req -new -key rsa.key -subj /CN=localhost -out rsa.csr\n"
    "openssl x509 -req -in rsa.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30"
    " -extfile x.cnf -extensions leaf_rsa -out rsa.pem\n"
    "cat rsa.pem ca.pem > rsa-chain.pem\n"
    /* A leaf for the same key that expired long ago. */
    ": > index.txt\n"
    "echo 1000 > serial\n"
    "openssl ca -batch -config x.cnf -cert ca.pem -keyfile ca.key -in leaf.csr -notext"
    " -startdate 20200101000000Z -enddate 20200201000000Z -extfile x.cnf -extensions leaf"
    " -out expired.pem\n"
    "cat expired.pem ca.pem > expired-chain.pem\n"
    /* An unrelated CA. */
    "openssl ecparam -name prime256v1 -genkey -noout -out ca2.key\n"
    "openssl req -x509 -new -key ca2.key -config x.cnf -extensions v3_ca -subj '/CN=other CA'"
    " -days 30 -out ca2.pem\n"
    "printf 'just text\\n' > empty.pem\n";

static void fx_cleanup(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "test_tls: could not remove %s\n", fx_dir);
}

static bool fixture(void)
{
    if (fx_state != 0)
        return fx_state > 0;
    fx_state = -1;
    snprintf(fx_dir, sizeof fx_dir, "/tmp/ssegate-tls-XXXXXX");
    if (mkdtemp(fx_dir) == NULL)
        return false;
    atexit(fx_cleanup);
    char path[128], cmd[256];
    snprintf(path, sizeof path, "%s/gen.sh", fx_dir);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return false;
    fputs(gen_script, f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "cd '%s' && sh gen.sh > gen.log 2>&1", fx_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "test_tls: certificate generation failed, see %s/gen.log\n", fx_dir);
        return false;
    }
    fx_state = 1;
    return true;
}

/* Path of a fixture file; rotates through a few buffers so that two can be
 * used in one call. */
static const char *fx(const char *name)
{
    static char bufs[4][128];
    static unsigned next;
    char *b = bufs[next++ % 4];
    snprintf(b, sizeof bufs[0], "%s/%s", fx_dir, name);
    return b;
}

/* ---- driving two endpoints --------------------------------------------- */

typedef struct {
    tls_conn *c;
    int fd;
    const unsigned char *out;
    size_t out_len, out_off;
    unsigned char *in;
    size_t in_len, in_cap;
    bool eof, err;
    int err_no;
    unsigned short_writes; /* tls_write took less than offered */
    size_t chunk;          /* when set, write at most this much per tls_write */
} side;

static void side_init(side *s, tls_conn *c, int fd)
{
    *s = (side){ .c = c, .fd = fd };
}

static void side_fail(side *s)
{
    s->err = true;
    s->err_no = errno;
}

/* Does whatever the endpoint can do without blocking. */
static void side_step(side *s)
{
    if (s->err || s->c == NULL)
        return;
    while (s->out_off < s->out_len) {
        size_t want = s->out_len - s->out_off;
        if (s->chunk > 0 && want > s->chunk)
            want = s->chunk;
        ssize_t n = tls_write(s->c, s->fd, s->out + s->out_off, want);
        if (n < 0) {
            if (errno != EAGAIN)
                side_fail(s);
            break;
        }
        if ((size_t)n < want)
            s->short_writes++;
        s->out_off += (size_t)n;
    }
    if (!s->err && tls_flush(s->c, s->fd) < 0 && errno != EAGAIN)
        side_fail(s);
    while (!s->eof && !s->err) {
        unsigned char tmp[3000]; /* smaller than a record: exercise partial reads */
        ssize_t n = tls_read(s->c, s->fd, tmp, sizeof tmp);
        if (n > 0) {
            if (s->in_len + (size_t)n > s->in_cap) {
                size_t cap = s->in_cap ? s->in_cap * 2 : 65536;
                while (cap < s->in_len + (size_t)n)
                    cap *= 2;
                s->in = realloc(s->in, cap);
                s->in_cap = cap;
            }
            memcpy(s->in + s->in_len, tmp, (size_t)n);
            s->in_len += (size_t)n;
        } else if (n == 0) {
            s->eof = true;
        } else {
            if (errno != EAGAIN)
                side_fail(s);
            break;
        }
    }
}

static short poll_events(const side *s)
{
    if (s->c == NULL || s->err || s->eof)
        return 0;
    uint32_t ev = tls_events(s->c);
    return (short)(((ev & EPOLLIN) ? POLLIN : 0) | ((ev & EPOLLOUT) ? POLLOUT : 0));
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Steps both sides, sleeping in poll() on what the engines ask for, until
 * done() or 5 s pass. */
static bool run(side *a, side *b, bool (*done)(const side *, const side *))
{
    long deadline = now_ms() + 5000;
    for (;;) {
        side_step(a);
        side_step(b);
        if (done(a, b))
            return true;
        long left = deadline - now_ms();
        if (left <= 0)
            return false;
        struct pollfd pf[2] = { { a->fd, poll_events(a), 0 }, { b->fd, poll_events(b), 0 } };
        poll(pf, 2, left < 100 ? (int)left : 100);
    }
}

static bool both_handshaken(const side *a, const side *b)
{
    return a->err || b->err ||
           (tls_handshake_done(a->c) && tls_handshake_done(b->c) && a->out_off == a->out_len &&
            b->out_off == b->out_len);
}

static bool exchanged(const side *a, const side *b)
{
    return a->err || b->err || (a->in_len == b->out_len && b->in_len == a->out_len);
}

static bool client_done(const side *a, const side *b)
{
    (void)b;
    return a->err || a->eof;
}

static bool both_eof(const side *a, const side *b)
{
    return a->err || b->err || (a->eof && b->eof);
}

typedef struct {
    int fds[2];
    side cli, srv;
} pair;

static bool pair_open(pair *p, tls_conn *client, tls_conn *server)
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, p->fds) < 0)
        return false;
    side_init(&p->cli, client, p->fds[0]);
    side_init(&p->srv, server, p->fds[1]);
    return true;
}

static void pair_close(pair *p)
{
    tls_free(p->cli.c);
    tls_free(p->srv.c);
    free(p->cli.in);
    free(p->srv.in);
    if (p->fds[0] >= 0)
        close(p->fds[0]);
    if (p->fds[1] >= 0)
        close(p->fds[1]);
}

static unsigned char *pattern(size_t len, unsigned seed)
{
    unsigned char *b = malloc(len);
    for (size_t i = 0; i < len; i++)
        b[i] = (unsigned char)((i * 31 + seed) ^ (i >> 8));
    return b;
}

/* A client against a server made from chain/key, run until the client
 * fails or both finish the handshake; returns the client's error text
 * (copied) or NULL when the handshake worked. */
static char *handshake_error(const tls_trust *trust, const char *host, const char *chain,
                             const char *key)
{
    static char msg[400];
    const char *why = NULL;
    tls_server_cred *cred = tls_server_cred_load(chain, key, &why);
    CHECK(cred != NULL);
    if (cred == NULL)
        return NULL;
    pair p;
    CHECK(pair_open(&p, tls_client_new(trust, host, NULL), tls_server_new(cred)));
    CHECK(run(&p.cli, &p.srv, both_handshaken));
    char *ret = NULL;
    if (p.cli.err) {
        snprintf(msg, sizeof msg, "%s", tls_error(p.cli.c));
        CHECK_EQ_SIZE(p.cli.err_no, EPROTO);
        CHECK(!tls_handshake_done(p.cli.c));
        ret = msg;
    }
    pair_close(&p);
    tls_server_cred_free(cred);
    return ret;
}

/* ---- tests -------------------------------------------------------------- */

TEST(tls_trust_load_errors)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    const char *why = NULL;
    CHECK(tls_trust_load("/nonexistent/ca.pem", &why) == NULL);
    CHECK(why != NULL && strncmp(why, "cannot open CA file /nonexistent/ca.pem: ", 41) == 0);

    why = NULL;
    const char *empty = fx("empty.pem");
    CHECK(tls_trust_load(empty, &why) == NULL);
    char want[200];
    snprintf(want, sizeof want, "no certificates in %s", empty);
    CHECK_STR(why, want);

    /* A key file holds PEM objects but no certificate. */
    why = NULL;
    CHECK(tls_trust_load(fx("leaf.key"), &why) == NULL);
    CHECK(why != NULL && strncmp(why, "no certificates in ", 19) == 0);

    tls_trust *t = tls_trust_load(fx("ca.pem"), &why);
    CHECK(t != NULL);
    CHECK_EQ_SIZE(tls_trust_count(t), 1);
    tls_trust_free(t);

    t = tls_trust_load(fx("chain.pem"), &why);
    CHECK_EQ_SIZE(tls_trust_count(t), 2);
    tls_trust_free(t);

    /* The system bundle, when present, should load nearly whole. */
    if (access("/etc/ssl/certs/ca-certificates.crt", R_OK) == 0) {
        t = tls_trust_load("/etc/ssl/certs/ca-certificates.crt", &why);
        CHECK(t != NULL);
        CHECK(tls_trust_count(t) > 100);
        tls_trust_free(t);
    }
}

TEST(tls_server_cred_formats)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    const char *why = NULL;
    tls_server_cred *c = tls_server_cred_load(fx("chain.pem"), fx("leaf.key"), &why);
    CHECK(c != NULL); /* PKCS#8 "PRIVATE KEY" */
    tls_server_cred_free(c);
    c = tls_server_cred_load(fx("chain.pem"), fx("leaf-sec1.key"), &why);
    CHECK(c != NULL); /* "EC PRIVATE KEY" */
    tls_server_cred_free(c);
    c = tls_server_cred_load(fx("rsa-chain.pem"), fx("rsa.key"), &why);
    CHECK(c != NULL); /* "RSA PRIVATE KEY" */
    tls_server_cred_free(c);

    why = NULL;
    CHECK(tls_server_cred_load(fx("chain.pem"), fx("rsa.key"), &why) == NULL);
    CHECK(why != NULL && strstr(why, "private key") != NULL);
    why = NULL;
    CHECK(tls_server_cred_load(fx("chain.pem"), fx("ca.pem"), &why) == NULL);
    CHECK(why != NULL && strncmp(why, "no private key in ", 18) == 0);
    why = NULL;
    CHECK(tls_server_cred_load(fx("leaf.key"), fx("leaf.key"), &why) == NULL);
    CHECK(why != NULL && strncmp(why, "no certificates in ", 19) == 0);
    why = NULL;
    CHECK(tls_server_cred_load("/nonexistent/chain.pem", fx("leaf.key"), &why) == NULL);
    CHECK(why != NULL && strncmp(why, "cannot open certificate file ", 29) == 0);
}

/* Both directions at once, much more than the socket buffers hold, so
 * that writes come back short and EAGAIN is met on both sides. */
static void roundtrip(const char *chain, const char *key)
{
    const char *why = NULL;
    tls_trust *trust = tls_trust_load(fx("ca.pem"), &why);
    tls_server_cred *cred = tls_server_cred_load(chain, key, &why);
    CHECK(trust != NULL && cred != NULL);
    if (trust == NULL || cred == NULL) {
        tls_trust_free(trust);
        tls_server_cred_free(cred);
        return;
    }
    pair p;
    CHECK(pair_open(&p, tls_client_new(trust, "localhost", NULL), tls_server_new(cred)));
    /* Before anything runs the client has a ClientHello to send and the
     * server waits for it. */
    CHECK(tls_events(p.cli.c) & EPOLLOUT);
    CHECK_EQ_SIZE(tls_events(p.srv.c), EPOLLIN);

    const size_t a_len = 700000, b_len = 500001;
    unsigned char *a = pattern(a_len, 1), *b = pattern(b_len, 2);
    p.cli.out = a;
    p.cli.out_len = a_len;
    p.srv.out = b;
    p.srv.out_len = b_len;
    CHECK(run(&p.cli, &p.srv, exchanged));
    CHECK(!p.cli.err && !p.srv.err);
    CHECK(tls_handshake_done(p.cli.c) && tls_handshake_done(p.srv.c));
    CHECK(!tls_resumed(p.cli.c) && !tls_resumed(p.srv.c));
    CHECK_EQ_SIZE(p.srv.in_len, a_len);
    CHECK_EQ_SIZE(p.cli.in_len, b_len);
    CHECK(p.cli.short_writes > 0 && p.srv.short_writes > 0);
    CHECK(p.srv.in_len == a_len && memcmp(p.srv.in, a, a_len) == 0);
    CHECK(p.cli.in_len == b_len && memcmp(p.cli.in, b, b_len) == 0);
    /* Idle after the exchange: only input is awaited. */
    CHECK_EQ_SIZE(tls_events(p.cli.c), EPOLLIN);

    /* close_notify from the client: the server reads 0, answers with its own
     * close_notify, and the client reads 0 too. */
    tls_close(p.cli.c, p.cli.fd);
    CHECK(run(&p.cli, &p.srv, both_eof));
    CHECK(p.cli.eof && p.srv.eof);
    CHECK(!p.cli.err && !p.srv.err);
    CHECK(tls_error(p.cli.c) == NULL); /* a clean close is no failure */
    /* Writing after the close is refused. */
    errno = 0;
    CHECK(tls_write(p.srv.c, p.srv.fd, "x", 1) == -1 && errno == EPIPE);
    CHECK_STR(tls_error(p.srv.c), "TLS connection already closed");

    free(a);
    free(b);
    pair_close(&p);
    tls_server_cred_free(cred);
    tls_trust_free(trust);
}

TEST(tls_roundtrip_ec)
{
    CHECK(fixture());
    if (fx_state > 0)
        roundtrip(fx("chain.pem"), fx("leaf.key"));
}

/* Many tiny records (one per tls_write, like SSE chunks) in both
 * directions. */
TEST(tls_small_records)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    const char *why = NULL;
    tls_trust *trust = tls_trust_load(fx("ca.pem"), &why);
    tls_server_cred *cred = tls_server_cred_load(fx("chain.pem"), fx("leaf.key"), &why);
    CHECK(trust && cred);
    if (trust && cred) {
        pair p;
        CHECK(pair_open(&p, tls_client_new(trust, "localhost", NULL), tls_server_new(cred)));
        const size_t a_len = 37 * 3000, b_len = 53 * 2000;
        unsigned char *a = pattern(a_len, 3), *b = pattern(b_len, 4);
        p.cli.out = a;
        p.cli.out_len = a_len;
        p.cli.chunk = 37;
        p.srv.out = b;
        p.srv.out_len = b_len;
        p.srv.chunk = 53;
        CHECK(run(&p.cli, &p.srv, exchanged));
        CHECK(!p.cli.err && !p.srv.err);
        CHECK(p.srv.in_len == a_len && memcmp(p.srv.in, a, a_len) == 0);
        CHECK(p.cli.in_len == b_len && memcmp(p.cli.in, b, b_len) == 0);
        free(a);
        free(b);
        pair_close(&p);
    }
    tls_server_cred_free(cred);
    tls_trust_free(trust);
}

TEST(tls_roundtrip_rsa)
{
    CHECK(fixture());
    if (fx_state > 0)
        roundtrip(fx("rsa-chain.pem"), fx("rsa.key"));
}

TEST(tls_wrong_host)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    const char *why = NULL;
    tls_trust *trust = tls_trust_load(fx("ca.pem"), &why);
    CHECK(trust != NULL);
    const char *msg = handshake_error(trust, "example.com", fx("chain.pem"), fx("leaf.key"));
    CHECK_STR(msg, "certificate is not for host example.com");
    tls_trust_free(trust);
}

TEST(tls_untrusted_ca)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    const char *why = NULL;
    tls_trust *trust = tls_trust_load(fx("ca2.pem"), &why);
    CHECK(trust != NULL);
    const char *msg = handshake_error(trust, "localhost", fx("chain.pem"), fx("leaf.key"));
    CHECK_STR(msg, "certificate chain is not trusted");
    tls_trust_free(trust);
}

TEST(tls_expired_certificate)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    const char *why = NULL;
    tls_trust *trust = tls_trust_load(fx("ca.pem"), &why);
    CHECK(trust != NULL);
    const char *msg =
        handshake_error(trust, "localhost", fx("expired-chain.pem"), fx("leaf.key"));
    CHECK_STR(msg, "certificate has expired or is not yet valid");
    tls_trust_free(trust);
}

/* One connection with a small exchange; reports whether it resumed. */
static bool connect_once(const tls_trust *trust, const tls_server_cred *cred,
                         tls_session_cache *cache, bool *ok)
{
    pair p;
    *ok = false;
    if (!pair_open(&p, tls_client_new(trust, "localhost", cache), tls_server_new(cred)))
        return false;
    p.cli.out = (const unsigned char *)"ping";
    p.cli.out_len = 4;
    p.srv.out = (const unsigned char *)"pong!";
    p.srv.out_len = 5;
    *ok = run(&p.cli, &p.srv, exchanged) && !p.cli.err && !p.srv.err &&
          p.cli.in_len == 5 && memcmp(p.cli.in, "pong!", 5) == 0 && p.srv.in_len == 4 &&
          memcmp(p.srv.in, "ping", 4) == 0;
    bool resumed = tls_resumed(p.cli.c);
    /* both ends must agree on what happened */
    *ok = *ok && tls_resumed(p.srv.c) == resumed;
    tls_close(p.cli.c, p.cli.fd);
    *ok = *ok && run(&p.cli, &p.srv, both_eof) && !p.cli.err && !p.srv.err;
    pair_close(&p);
    return resumed;
}

TEST(tls_session_resumption)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    const char *why = NULL;
    tls_trust *trust = tls_trust_load(fx("ca.pem"), &why);
    tls_server_cred *cred = tls_server_cred_load(fx("chain.pem"), fx("leaf.key"), &why);
    tls_server_cred *other = tls_server_cred_load(fx("chain.pem"), fx("leaf.key"), &why);
    tls_session_cache *cache = tls_session_cache_new();
    CHECK(trust && cred && other && cache);
    if (trust && cred && other && cache) {
        bool ok;
        CHECK(!connect_once(trust, cred, cache, &ok)); /* first: full handshake */
        CHECK(ok);
        CHECK(connect_once(trust, cred, cache, &ok)); /* second: resumed */
        CHECK(ok);
        CHECK(connect_once(trust, cred, cache, &ok)); /* and again */
        CHECK(ok);
        CHECK(!connect_once(trust, cred, NULL, &ok)); /* no cache, no resumption */
        CHECK(ok);
        /* A server that does not know the session: full handshake, which
         * refreshes the cache for that server... */
        CHECK(!connect_once(trust, other, cache, &ok));
        CHECK(ok);
        CHECK(connect_once(trust, other, cache, &ok));
        CHECK(ok);
    }
    tls_session_cache_free(cache);
    tls_server_cred_free(other);
    tls_server_cred_free(cred);
    tls_trust_free(trust);
}

/* A client's buffers are small where that is safe: requests bigger than
 * its output records go out as many records, the server's full-size
 * records still come in, and the pages those touched go back when the
 * connection waits idle. Many exchanges on one connection with a cached
 * session, as a pooled upstream connection sees them. */
TEST(tls_client_small_buffers_pooled)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    const char *why = NULL;
    tls_trust *trust = tls_trust_load(fx("ca.pem"), &why);
    tls_server_cred *cred = tls_server_cred_load(fx("chain.pem"), fx("leaf.key"), &why);
    tls_session_cache *cache = tls_session_cache_new();
    CHECK(trust && cred && cache);
    if (!trust || !cred || !cache)
        goto out;
    /* The footprint figures hold for 4 KiB pages (two pages at rest). */
    const bool small_pages = sysconf(_SC_PAGESIZE) == 4096;
    const size_t rest = 2 * 4096;
    for (int conn = 0; conn < 2; conn++) { /* a full handshake, then a resumed one */
        pair p;
        CHECK(pair_open(&p, tls_client_new(trust, "localhost", cache), tls_server_new(cred)));
        static const size_t up[] = { 40, 1024, 1025, 5000, 70000, 300 };
        static const size_t down[] = { 200, 40000, 16384, 300, 100000, 16385 };
        const size_t kinds = sizeof up / sizeof up[0];
        for (unsigned round = 0; round < 30; round++) {
            size_t a_len = up[round % kinds], b_len = down[(round / kinds + round) % kinds];
            unsigned char *a = pattern(a_len, round), *b = pattern(b_len, round + 100);
            p.cli.out = a;
            p.cli.out_len = a_len;
            p.srv.out = b;
            p.srv.out_len = b_len;
            p.cli.out_off = p.srv.out_off = p.cli.in_len = p.srv.in_len = 0;
            CHECK(run(&p.cli, &p.srv, exchanged));
            CHECK(!p.cli.err && !p.srv.err);
            CHECK(p.srv.in_len == a_len && memcmp(p.srv.in, a, a_len) == 0);
            CHECK(p.cli.in_len == b_len && memcmp(p.cli.in, b, b_len) == 0);
            if (small_pages && round == 0) /* the handshake's records were given back */
                CHECK(tls_footprint(p.cli.c) <= rest);
            if (small_pages && b_len > 4096) /* records of up to 16 KiB came in */
                CHECK(tls_footprint(p.cli.c) > rest);
            tls_idle(p.cli.c);
            if (small_pages)
                CHECK(tls_footprint(p.cli.c) <= rest);
            free(a);
            free(b);
            if (p.cli.err || p.srv.err)
                break;
        }
        CHECK(tls_resumed(p.cli.c) == (conn == 1));
        tls_close(p.cli.c, p.cli.fd);
        CHECK(run(&p.cli, &p.srv, both_eof));
        CHECK(!p.cli.err && !p.srv.err);
        pair_close(&p);
    }
out:
    tls_session_cache_free(cache);
    tls_server_cred_free(cred);
    tls_trust_free(trust);
}

/* tls_idle with input still in the engine keeps it: the rest of the
 * record is read afterwards, whole. */
TEST(tls_idle_keeps_pending_input)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    const char *why = NULL;
    tls_trust *trust = tls_trust_load(fx("ca.pem"), &why);
    tls_server_cred *cred = tls_server_cred_load(fx("chain.pem"), fx("leaf.key"), &why);
    CHECK(trust && cred);
    if (trust && cred) {
        pair p;
        CHECK(pair_open(&p, tls_client_new(trust, "localhost", NULL), tls_server_new(cred)));
        CHECK(run(&p.cli, &p.srv, both_handshaken));
        const size_t len = 16384;
        unsigned char *b = pattern(len, 9);
        /* One full record from the server, read by the client a little at
         * a time, with an idle call after each piece. */
        p.srv.out = b;
        p.srv.out_len = len;
        long deadline = now_ms() + 5000;
        while (p.srv.out_off < len && now_ms() < deadline)
            side_step(&p.srv);
        CHECK_EQ_SIZE(p.srv.out_off, len);
        unsigned char *got = malloc(len);
        size_t have = 0;
        while (have < len && now_ms() < deadline) {
            ssize_t n = tls_read(p.cli.c, p.cli.fd, got + have, len - have < 100 ? len - have : 100);
            if (n > 0)
                have += (size_t)n;
            else if (n < 0 && errno == EAGAIN)
                side_step(&p.srv);
            else
                break;
            tls_idle(p.cli.c);
        }
        CHECK(have == len && memcmp(got, b, len) == 0);
        free(got);
        free(b);
        pair_close(&p);
    }
    tls_server_cred_free(cred);
    tls_trust_free(trust);
}

TEST(tls_eof_semantics)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    const char *why = NULL;
    tls_trust *trust = tls_trust_load(fx("ca.pem"), &why);
    tls_server_cred *cred = tls_server_cred_load(fx("chain.pem"), fx("leaf.key"), &why);
    CHECK(trust && cred);
    if (trust && cred) {
        /* Peer vanishes after the handshake without close_notify: EOF (0). */
        pair p;
        CHECK(pair_open(&p, tls_client_new(trust, "localhost", NULL), tls_server_new(cred)));
        p.srv.out = (const unsigned char *)"bye";
        p.srv.out_len = 3;
        CHECK(run(&p.cli, &p.srv, exchanged));
        close(p.fds[1]);
        p.fds[1] = -1;
        p.srv.c = (tls_free(p.srv.c), NULL);
        CHECK(run(&p.cli, &p.srv, client_done));
        CHECK(p.cli.eof && !p.cli.err);
        CHECK(p.cli.in_len == 3 && memcmp(p.cli.in, "bye", 3) == 0);
        CHECK_STR(tls_error(p.cli.c), "connection closed without TLS close_notify");
        pair_close(&p);

        /* Peer sends close_notify and closes the socket at once, as HTTP
         * servers do: our answering close_notify meets EPIPE, which is
         * still a clean EOF. */
        CHECK(pair_open(&p, tls_client_new(trust, "localhost", NULL), tls_server_new(cred)));
        p.srv.out = (const unsigned char *)"last";
        p.srv.out_len = 4;
        CHECK(run(&p.cli, &p.srv, exchanged));
        tls_close(p.srv.c, p.srv.fd);
        close(p.fds[1]);
        p.fds[1] = -1;
        p.srv.c = (tls_free(p.srv.c), NULL);
        CHECK(run(&p.cli, &p.srv, client_done));
        CHECK(p.cli.eof && !p.cli.err);
        CHECK(tls_error(p.cli.c) == NULL);
        CHECK_EQ_SIZE(tls_events(p.cli.c), EPOLLIN | EPOLLOUT);
        pair_close(&p);

        /* Peer vanishes during the handshake: an error. */
        CHECK(pair_open(&p, tls_client_new(trust, "localhost", NULL), NULL));
        close(p.fds[1]);
        p.fds[1] = -1;
        CHECK(run(&p.cli, &p.srv, client_done));
        CHECK(p.cli.err && !p.cli.eof);
        CHECK(p.cli.err_no == ECONNRESET || p.cli.err_no == EPIPE);
        CHECK(strstr(tls_error(p.cli.c), "during TLS handshake") != NULL);
        pair_close(&p);

        /* A peer that does not speak TLS. */
        CHECK(pair_open(&p, tls_client_new(trust, "localhost", NULL), NULL));
        const char junk[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        CHECK(write(p.fds[1], junk, sizeof junk - 1) == (ssize_t)(sizeof junk - 1));
        CHECK(run(&p.cli, &p.srv, client_done));
        CHECK(p.cli.err && p.cli.err_no == EPROTO);
        CHECK(strncmp(tls_error(p.cli.c), "TLS handshake failed: ", 22) == 0);
        pair_close(&p);

        /* No name: refused up front rather than skipping the check. */
        tls_conn *c = tls_client_new(trust, "", NULL);
        char buf[8];
        CHECK(tls_read(c, -1, buf, sizeof buf) == -1 && errno == EINVAL);
        CHECK_STR(tls_error(c), "no server name to verify the certificate against");
        tls_free(c);
    }
    tls_server_cred_free(cred);
    tls_trust_free(trust);
}

/* ---- a reader that pauses mid-record ------------------------------------ */

/* An HTTP head as its own small record, then a body of many full records. */
enum { PAUSE_HEAD = 160, PAUSE_BODY = 300000, PAUSE_WINDOW = 131072 };

/* A reader that stops before EAGAIN because its buffer is full, and takes
 * more later, as fakeai does when a parsed head raises its input limit.
 * The small first record puts the pause in the middle of a record, so the
 * engine keeps decrypted bytes that no socket event will announce: resuming
 * must start with tls_read, and every byte must still arrive. */
TEST(tls_read_resumes_mid_record)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    const char *why = NULL;
    tls_trust *trust = tls_trust_load(fx("ca.pem"), &why);
    tls_server_cred *cred = tls_server_cred_load(fx("chain.pem"), fx("leaf.key"), &why);
    CHECK(trust && cred);
    pair p;
    if (!trust || !cred || !pair_open(&p, tls_client_new(trust, "localhost", NULL), tls_server_new(cred))) {
        tls_server_cred_free(cred);
        tls_trust_free(trust);
        return;
    }
    CHECK(run(&p.cli, &p.srv, both_handshaken));
    const size_t total = PAUSE_HEAD + PAUSE_BODY;
    unsigned char *sent = pattern(total, 5);
    unsigned char *got = malloc(total);
    CHECK(tls_write(p.cli.c, p.cli.fd, sent, PAUSE_HEAD) == PAUSE_HEAD);
    p.cli.out = sent + PAUSE_HEAD;
    p.cli.out_len = PAUSE_BODY;

    size_t got_len = 0, limit = PAUSE_WINDOW;
    bool paused = false, failed = false;
    long deadline = now_ms() + 5000;
    while (got_len < total && !failed && !p.cli.err && now_ms() < deadline) {
        side_step(&p.cli);
        for (;;) {
            if (got_len == limit) {
                if (limit == total)
                    break;
                /* Paused with a partial record inside the engine. */
                paused = true;
                limit = total;
                ssize_t n = tls_read(p.srv.c, p.srv.fd, got + got_len, limit - got_len);
                CHECK(n > 0); /* no socket input needed */
                if (n <= 0) {
                    failed = true;
                    break;
                }
                got_len += (size_t)n;
                continue;
            }
            ssize_t n = tls_read(p.srv.c, p.srv.fd, got + got_len, limit - got_len);
            if (n > 0) {
                got_len += (size_t)n;
                continue;
            }
            failed = n == 0 || errno != EAGAIN;
            break;
        }
        if (got_len == total || failed)
            break;
        /* The server waits only for what its engine asks for. */
        uint32_t ev = tls_events(p.srv.c);
        struct pollfd pf[2] = {
            { p.cli.fd, poll_events(&p.cli), 0 },
            { p.srv.fd, (short)(((ev & EPOLLIN) ? POLLIN : 0) | ((ev & EPOLLOUT) ? POLLOUT : 0)), 0 },
        };
        poll(pf, 2, 100);
    }
    CHECK(!failed && !p.cli.err);
    CHECK(paused);
    CHECK_EQ_SIZE(got_len, total);
    CHECK(got_len == total && memcmp(got, sent, total) == 0);
    free(got);
    free(sent);
    pair_close(&p);
    tls_server_cred_free(cred);
    tls_trust_free(trust);
}

/* ---- fakeai over TLS ---------------------------------------------------- */

static void stop_loop(void *ctx)
{
    loop_stop(ctx);
}

static void run_loop_ms(loop *l, uint64_t ms)
{
    loop_timer t = { 0 };
    loop_timer_arm(l, &t, ms, stop_loop, l);
    loop_run(l);
    loop_timer_stop(l, &t);
}

static int connect_nonblocking(const char *address)
{
    const char *colon = strrchr(address, ':');
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_port = htons((uint16_t)atoi(colon + 1)) };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A complete HTTP response (head with Content-Length, and that much body)? */
static bool response_complete(const unsigned char *b, size_t len)
{
    const char *end = memmem(b, len, "\r\n\r\n", 4);
    if (end == NULL)
        return false;
    size_t head = (size_t)(end - (const char *)b) + 4;
    const char *cl = memmem(b, head, "Content-Length: ", 16);
    return cl != NULL && len - head >= strtoul(cl + 16, NULL, 10);
}

/* The mock's stall: a POST whose head comes as one small record and whose
 * body (larger than what fakeai reads while it looks for a head) is on the
 * socket all at once. Reading pauses at the head-state limit in the middle
 * of a record; once the head is parsed fakeai must take the rest from the
 * engine itself, since the socket will not wake it. */
TEST(tls_fakeai_big_body_after_small_record)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    const char *why = NULL;
    tls_trust *trust = tls_trust_load(fx("ca.pem"), &why);
    tls_server_cred *cred = tls_server_cred_load(fx("chain.pem"), fx("leaf.key"), &why);
    loop *l = loop_new();
    fakeai_config cfg = { .chunks = 2, .model = "m", .tls = cred };
    fakeai *f = (trust && cred && l) ? fakeai_start(l, "127.0.0.1:0", &cfg, &why) : NULL;
    CHECK(f != NULL);
    int fd = f ? connect_nonblocking(fakeai_address(f)) : -1;
    CHECK(fd >= 0);
    tls_conn *c = fd >= 0 ? tls_client_new(trust, "localhost", NULL) : NULL;

    char head[256];
    static const char pre[] = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"";
    static const char post[] = "\"}]}";
    const size_t body_len = sizeof pre - 1 + PAUSE_BODY + sizeof post - 1;
    char *body = malloc(body_len);
    memcpy(body, pre, sizeof pre - 1);
    memset(body + sizeof pre - 1, 'x', PAUSE_BODY);
    memcpy(body + body_len - (sizeof post - 1), post, sizeof post - 1);
    int head_len = snprintf(head, sizeof head,
                            "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                            "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                            body_len);

    unsigned char *resp = malloc(65536);
    size_t resp_len = 0;
    bool ok = c != NULL, sent = false;
    long deadline = now_ms() + 5000;
    while (ok && now_ms() < deadline) {
        if (!tls_handshake_done(c)) {
            ok = tls_flush(c, fd) == 0 || errno == EAGAIN;
        } else if (!sent) {
            /* Everything goes out before fakeai runs again: the head as
             * its own record, then the body. */
            const char *parts[2] = { head, body };
            size_t lens[2] = { (size_t)head_len, body_len };
            for (size_t i = 0; i < 2 && ok; i++) {
                size_t off = 0;
                while (off < lens[i] && ok && now_ms() < deadline) {
                    ssize_t n = tls_write(c, fd, parts[i] + off, lens[i] - off);
                    if (n > 0)
                        off += (size_t)n;
                    else if (errno == EAGAIN)
                        run_loop_ms(l, 1); /* socket full: let fakeai read */
                    else
                        ok = false;
                }
            }
            sent = true;
        }
        for (;;) {
            ssize_t n = tls_read(c, fd, resp + resp_len, 65536 - resp_len);
            if (n > 0 && resp_len + (size_t)n < 65536) {
                resp_len += (size_t)n;
                continue;
            }
            ok = n < 0 && errno == EAGAIN;
            break;
        }
        if (response_complete(resp, resp_len))
            break;
        run_loop_ms(l, 1);
    }
    CHECK(ok);
    CHECK(response_complete(resp, resp_len));
    CHECK(resp_len >= 17 && memcmp(resp, "HTTP/1.1 200 OK\r\n", 17) == 0);
    CHECK(memmem(resp, resp_len, "\"content\":\"tok0 tok1 \"", 22) != NULL);

    free(resp);
    free(body);
    tls_free(c);
    if (fd >= 0)
        close(fd);
    fakeai_stop(f);
    loop_free(l);
    tls_server_cred_free(cred);
    tls_trust_free(trust);
    arena_release_cached();
}

/* ---- hosts given as IP addresses ---------------------------------------- */

static unsigned char *read_fixture(const char *name, size_t *len)
{
    FILE *f = fopen(fx(name), "rb");
    if (f == NULL)
        return NULL;
    unsigned char *buf = malloc(65536);
    *len = buf ? fread(buf, 1, 65536, f) : 0;
    fclose(f);
    return buf;
}

static const unsigned char ip4_loopback[4] = { 127, 0, 0, 1 };
static const unsigned char ip6_loopback[16] = { [15] = 1 };

TEST(tls_san_ip_real_certificates)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    size_t n4 = 0, n6 = 0, nd = 0;
    unsigned char *ip4 = read_fixture("ip4.der", &n4);
    unsigned char *ip6 = read_fixture("ip6.der", &n6);
    unsigned char *dns = read_fixture("leaf.der", &nd);
    CHECK(ip4 && ip6 && dns && n4 > 100 && n6 > 100 && nd > 100);
    if (ip4 && ip6 && dns) {
        static const unsigned char other4[4] = { 127, 0, 0, 2 };
        CHECK(tls_cert_san_has_ip(ip4, n4, ip4_loopback, 4) == TLS_SAN_MATCH);
        CHECK(tls_cert_san_has_ip(ip4, n4, other4, 4) == TLS_SAN_NO_MATCH);
        CHECK(tls_cert_san_has_ip(ip4, n4, ip6_loopback, 16) == TLS_SAN_NO_MATCH);
        CHECK(tls_cert_san_has_ip(ip6, n6, ip6_loopback, 16) == TLS_SAN_MATCH);
        CHECK(tls_cert_san_has_ip(ip6, n6, ip4_loopback, 4) == TLS_SAN_NO_MATCH);
        /* DNS:localhost only: well formed, no address */
        CHECK(tls_cert_san_has_ip(dns, nd, ip4_loopback, 4) == TLS_SAN_NO_MATCH);
        /* Every strict prefix is broken, and is read within its bounds
         * (ASan checks the copy, made to the exact length). */
        bool prefixes_refused = true;
        for (size_t cut = 0; cut < n4; cut++) {
            unsigned char *part = malloc(cut ? cut : 1);
            memcpy(part, ip4, cut);
            if (tls_cert_san_has_ip(part, cut, ip4_loopback, 4) != TLS_SAN_MALFORMED)
                prefixes_refused = false;
            free(part);
        }
        CHECK(prefixes_refused);
        /* Any byte flipped: never read out of bounds, whatever the verdict. */
        unsigned char *copy = malloc(n4);
        for (size_t i = 0; i < n4; i++) {
            memcpy(copy, ip4, n4);
            copy[i] ^= 0xFF;
            (void)tls_cert_san_has_ip(copy, n4, ip4_loopback, 4);
        }
        free(copy);
    }
    /* The CA has no subjectAltName at all. */
    size_t nc = 0;
    unsigned char *ca = read_fixture("ca.der", &nc);
    CHECK(ca != NULL && tls_cert_san_has_ip(ca, nc, ip4_loopback, 4) == TLS_SAN_NO_MATCH);
    free(ca);
    free(ip4);
    free(ip6);
    free(dns);
}

/* DER by hand: just enough structure for the walker (it does not look into
 * the fields before the extensions). */
typedef struct {
    unsigned char b[512];
    size_t len;
} der_buf;

static void der_raw(der_buf *d, const void *p, size_t n)
{
    if (d->len + n <= sizeof d->b) {
        memcpy(d->b + d->len, p, n);
        d->len += n;
    }
}

/* Appends tag, short-form length and contents. */
static void der_tlv(der_buf *d, unsigned char tag, const der_buf *contents)
{
    unsigned char head[2] = { tag, (unsigned char)contents->len };
    der_raw(d, head, 2);
    der_raw(d, contents->b, contents->len);
}

/* A certificate whose extensions are `exts` (the contents of the
 * SEQUENCE OF Extension). */
static der_buf cert_with(const der_buf *exts)
{
    static const unsigned char fields[] = {
        0xA0, 0x03, 0x02, 0x01, 0x02, /* version v3 */
        0x02, 0x01, 0x07,             /* serial */
        0x30, 0x00, 0x30, 0x00, 0x30, 0x00, 0x30, 0x00, 0x30, 0x00, /* alg, names, validity, key */
    };
    der_buf seq = { { 0 }, 0 }, ext3 = { { 0 }, 0 }, tbs = { { 0 }, 0 }, cert = { { 0 }, 0 }, out = { { 0 }, 0 };
    der_tlv(&seq, 0x30, exts);
    der_tlv(&ext3, 0xA3, &seq);
    der_raw(&tbs, fields, sizeof fields);
    der_raw(&tbs, ext3.b, ext3.len);
    der_tlv(&cert, 0x30, &tbs);
    der_raw(&cert, "\x30\x00\x03\x01\x00", 5); /* signature algorithm and value */
    der_tlv(&out, 0x30, &cert);
    return out;
}

/* One Extension holding `value` (the OCTET STRING's contents). */
static void add_ext(der_buf *exts, const unsigned char *oid, size_t oid_len, bool critical,
                    const der_buf *value)
{
    der_buf e = { { 0 }, 0 }, o = { { 0 }, 0 };
    der_raw(&o, oid, oid_len);
    der_tlv(&e, 0x06, &o);
    if (critical)
        der_raw(&e, "\x01\x01\xFF", 3);
    der_tlv(&e, 0x04, value);
    der_tlv(exts, 0x30, &e);
}

static const unsigned char san_oid[] = { 0x55, 0x1D, 0x11 };
static const unsigned char ku_oid[] = { 0x55, 0x1D, 0x0F };

/* A SubjectAltName value from raw GeneralName bytes. */
static der_buf san_value(const void *names, size_t len)
{
    der_buf n = { { 0 }, 0 }, v = { { 0 }, 0 };
    der_raw(&n, names, len);
    der_tlv(&v, 0x30, &n);
    return v;
}

static tls_san_check check_names(const void *names, size_t len, bool critical)
{
    der_buf exts = { { 0 }, 0 };
    der_buf ku = { { 0 }, 0 };
    der_raw(&ku, "\x03\x02\x07\x80", 4);
    add_ext(&exts, ku_oid, sizeof ku_oid, true, &ku);
    der_buf v = san_value(names, len);
    add_ext(&exts, san_oid, sizeof san_oid, critical, &v);
    der_buf cert = cert_with(&exts);
    return tls_cert_san_has_ip(cert.b, cert.len, ip4_loopback, 4);
}

TEST(tls_san_ip_handmade)
{
    /* dNSName, then iPAddress 127.0.0.1: found after another entry, with
     * the critical flag present or not. */
    static const unsigned char good[] = { 0x82, 0x01, 'x', 0x87, 0x04, 127, 0, 0, 1 };
    CHECK(check_names(good, sizeof good, false) == TLS_SAN_MATCH);
    CHECK(check_names(good, sizeof good, true) == TLS_SAN_MATCH);
    static const unsigned char other[] = { 0x87, 0x04, 10, 0, 0, 1 };
    CHECK(check_names(other, sizeof other, false) == TLS_SAN_NO_MATCH);
    /* an IPv6 entry for the IPv4 address's bytes does not count */
    static const unsigned char v6[] = { 0x87, 0x10, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
    CHECK(check_names(v6, sizeof v6, false) == TLS_SAN_NO_MATCH);

    /* Malformed: an address of 5 bytes (even after a match), a length past
     * the end, an indefinite length, a multi-byte tag, no names at all. */
    static const unsigned char five[] = { 0x87, 0x04, 127, 0, 0, 1, 0x87, 0x05, 1, 2, 3, 4, 5 };
    CHECK(check_names(five, sizeof five, false) == TLS_SAN_MALFORMED);
    static const unsigned char overrun[] = { 0x87, 0x09, 127, 0, 0, 1 };
    CHECK(check_names(overrun, sizeof overrun, false) == TLS_SAN_MALFORMED);
    static const unsigned char indefinite[] = { 0x87, 0x80, 127, 0, 0, 1 };
    CHECK(check_names(indefinite, sizeof indefinite, false) == TLS_SAN_MALFORMED);
    static const unsigned char long_tag[] = { 0x9F, 0x21, 0x00 };
    CHECK(check_names(long_tag, sizeof long_tag, false) == TLS_SAN_MALFORMED);
    CHECK(check_names("", 0, false) == TLS_SAN_MALFORMED);

    /* The extension twice; a value that is not a SEQUENCE; bytes after it. */
    der_buf exts = { { 0 }, 0 };
    der_buf v = san_value(good, sizeof good);
    add_ext(&exts, san_oid, sizeof san_oid, false, &v);
    add_ext(&exts, san_oid, sizeof san_oid, false, &v);
    der_buf cert = cert_with(&exts);
    CHECK(tls_cert_san_has_ip(cert.b, cert.len, ip4_loopback, 4) == TLS_SAN_MALFORMED);

    exts.len = 0;
    der_buf not_seq = { { 0 }, 0 };
    der_raw(&not_seq, "\x31\x06\x87\x04\x7F\x00\x00\x01", 8);
    add_ext(&exts, san_oid, sizeof san_oid, false, &not_seq);
    cert = cert_with(&exts);
    CHECK(tls_cert_san_has_ip(cert.b, cert.len, ip4_loopback, 4) == TLS_SAN_MALFORMED);

    exts.len = 0;
    der_raw(&v, "\x05\x00", 2);
    add_ext(&exts, san_oid, sizeof san_oid, false, &v);
    cert = cert_with(&exts);
    CHECK(tls_cert_san_has_ip(cert.b, cert.len, ip4_loopback, 4) == TLS_SAN_MALFORMED);

    /* A long-form length (0x81) is fine; a certificate with no extensions
     * has no address; trailing bytes after the certificate are not. */
    exts.len = 0;
    v = san_value(good, sizeof good);
    add_ext(&exts, san_oid, sizeof san_oid, false, &v);
    cert = cert_with(&exts);
    der_buf longform = { { 0 }, 0 };
    der_raw(&longform, "\x30\x81", 2);
    der_raw(&longform, cert.b + 1, cert.len - 1);
    CHECK(tls_cert_san_has_ip(longform.b, longform.len, ip4_loopback, 4) == TLS_SAN_MATCH);
    der_raw(&cert, "\x00", 1);
    CHECK(tls_cert_san_has_ip(cert.b, cert.len, ip4_loopback, 4) == TLS_SAN_MALFORMED);
    static const unsigned char bare[] = { 0x30, 0x0A, 0x30, 0x03, 0x02, 0x01, 0x07,
                                          0x30, 0x00, 0x03, 0x01, 0x00 };
    CHECK(tls_cert_san_has_ip(bare, sizeof bare, ip4_loopback, 4) == TLS_SAN_NO_MATCH);
    CHECK(tls_cert_san_has_ip(bare, 0, ip4_loopback, 4) == TLS_SAN_MALFORMED);
}

/* A handshake to `host`; returns the client's error (NULL when it worked)
 * and the SNI name the server saw in sni_seen. */
static char *ip_handshake(const tls_trust *trust, const char *host, const tls_server_cred *cred,
                          tls_session_cache *cache, char *sni_seen, size_t sni_cap, bool *resumed)
{
    static char msg[400];
    pair p;
    CHECK(pair_open(&p, tls_client_new(trust, host, cache), tls_server_new(cred)));
    p.cli.out = (const unsigned char *)"hi";
    p.cli.out_len = 2;
    CHECK(run(&p.cli, &p.srv, both_handshaken));
    char *ret = NULL;
    if (p.cli.err) {
        snprintf(msg, sizeof msg, "%s", tls_error(p.cli.c));
        CHECK_EQ_SIZE(p.cli.err_no, EPROTO);
        ret = msg;
    } else {
        CHECK(run(&p.cli, &p.srv, exchanged));
        CHECK(p.srv.in_len == 2 && memcmp(p.srv.in, "hi", 2) == 0);
    }
    snprintf(sni_seen, sni_cap, "%s", tls_server_name(p.srv.c));
    if (resumed)
        *resumed = tls_resumed(p.cli.c);
    pair_close(&p);
    return ret;
}

TEST(tls_ip_hosts)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    const char *why = NULL;
    tls_trust *trust = tls_trust_load(fx("ca.pem"), &why);
    tls_session_cache *cache = tls_session_cache_new();
    /* one credential (and so one server session cache) per chain */
    tls_server_cred *ip4 = tls_server_cred_load(fx("ip4-chain.pem"), fx("leaf.key"), &why);
    tls_server_cred *ip6 = tls_server_cred_load(fx("ip6-chain.pem"), fx("leaf.key"), &why);
    tls_server_cred *dns = tls_server_cred_load(fx("chain.pem"), fx("leaf.key"), &why);
    CHECK(trust && cache && ip4 && ip6 && dns);
    if (!trust || !cache || !ip4 || !ip6 || !dns) {
        tls_server_cred_free(ip4);
        tls_server_cred_free(ip6);
        tls_server_cred_free(dns);
        tls_session_cache_free(cache);
        tls_trust_free(trust);
        return;
    }
    char sni[300];
    bool resumed = true;

    /* 127.0.0.1 against a leaf carrying IP:127.0.0.1: accepted, no SNI;
     * the session it makes is resumed by the next connection. */
    CHECK(!tls_session_cache_ready(cache));
    CHECK(ip_handshake(trust, "127.0.0.1", ip4, cache, sni, sizeof sni, &resumed) == NULL);
    CHECK_STR(sni, "");
    CHECK(!resumed);
    CHECK(tls_session_cache_ready(cache));
    CHECK(ip_handshake(trust, "127.0.0.1", ip4, cache, sni, sizeof sni, &resumed) == NULL);
    CHECK(resumed);
    CHECK_STR(sni, "");

    /* ::1 against IP:::1; and the names still go out as SNI. */
    CHECK(ip_handshake(trust, "::1", ip6, NULL, sni, sizeof sni, NULL) == NULL);
    CHECK_STR(sni, "");
    CHECK(ip_handshake(trust, "localhost", ip4, NULL, sni, sizeof sni, NULL) == NULL);
    CHECK_STR(sni, "localhost");

    /* Wrong or missing addresses. */
    CHECK_STR(ip_handshake(trust, "127.0.0.1", dns, NULL, sni, sizeof sni, NULL),
              "certificate is not for address 127.0.0.1");
    CHECK_STR(ip_handshake(trust, "127.0.0.2", ip4, NULL, sni, sizeof sni, NULL),
              "certificate is not for address 127.0.0.2");
    CHECK_STR(ip_handshake(trust, "::1", ip4, NULL, sni, sizeof sni, NULL),
              "certificate is not for address ::1");
    CHECK_STR(ip_handshake(trust, "127.0.0.1", ip6, NULL, sni, sizeof sni, NULL),
              "certificate is not for address 127.0.0.1");
    /* An address entry does not stand for a name. */
    CHECK_STR(ip_handshake(trust, "localhost", ip6, NULL, sni, sizeof sni, NULL),
              "certificate is not for host localhost");
    tls_server_cred *bad = tls_server_cred_load(fx("badsan-chain.pem"), fx("leaf.key"), &why);
    CHECK(bad != NULL);
    if (bad != NULL)
        CHECK_STR(ip_handshake(trust, "127.0.0.1", bad, NULL, sni, sizeof sni, NULL),
                  "certificate has a malformed subjectAltName extension");
    tls_server_cred_free(bad);
    /* The chain is still checked first. */
    tls_trust *other = tls_trust_load(fx("ca2.pem"), &why);
    CHECK(other != NULL);
    CHECK_STR(ip_handshake(other, "127.0.0.1", ip4, NULL, sni, sizeof sni, NULL),
              "certificate chain is not trusted");
    tls_trust_free(other);
    tls_server_cred_free(ip4);
    tls_server_cred_free(ip6);
    tls_server_cred_free(dns);
    tls_session_cache_free(cache);
    tls_trust_free(trust);
}

/* ---- versions this build does not speak --------------------------------- */

/* The client's error after a "server" that answers with `reply`. */
static void version_reply(const unsigned char *reply, size_t len, char *msg, size_t cap)
{
    pair p;
    msg[0] = '\0';
    CHECK(pair_open(&p, tls_client_new(NULL, "localhost", NULL), NULL));
    CHECK(write(p.fds[1], reply, len) == (ssize_t)len);
    CHECK(run(&p.cli, &p.srv, client_done));
    CHECK(p.cli.err && p.cli.err_no == EPROTO);
    snprintf(msg, cap, "%s", tls_error(p.cli.c) ? tls_error(p.cli.c) : "");
    pair_close(&p);
}

/* A ServerHello record naming `version`, with an ECDHE suite and no
 * extensions. */
static size_t server_hello(unsigned char *b, unsigned version)
{
    size_t k = 0;
    const size_t body = 2 + 32 + 1 + 2 + 1;
    b[k++] = 22;
    b[k++] = 3;
    b[k++] = 3;
    b[k++] = 0;
    b[k++] = (unsigned char)(4 + body);
    b[k++] = 2;
    b[k++] = 0;
    b[k++] = 0;
    b[k++] = (unsigned char)body;
    b[k++] = (unsigned char)(version >> 8);
    b[k++] = (unsigned char)version;
    memset(b + k, 0x5A, 32);
    k += 32;
    b[k++] = 0;    /* no session id */
    b[k++] = 0xC0; /* TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 */
    b[k++] = 0x2F;
    b[k++] = 0;    /* no compression */
    return k;
}

TEST(tls_version_errors)
{
    static const char want[] = "upstream requires TLS 1.3; this build speaks TLS 1.2";
    char msg[400];
    /* What a TLS 1.3-only server answers a hello without supported_versions. */
    static const unsigned char alert70[] = { 21, 3, 3, 0, 2, 2, 70 };
    version_reply(alert70, sizeof alert70, msg, sizeof msg);
    CHECK_STR(msg, want);
    /* Another alert is not about versions. */
    static const unsigned char alert40[] = { 21, 3, 3, 0, 2, 2, 40 };
    version_reply(alert40, sizeof alert40, msg, sizeof msg);
    CHECK_STR(msg, "TLS handshake failed: peer sent alert handshake_failure (40)");

    unsigned char hello[64];
    size_t n = server_hello(hello, 0x0304);
    version_reply(hello, n, msg, sizeof msg);
    CHECK_STR(msg, want);
    /* Too old rather than too new: the plain BearSSL text. */
    n = server_hello(hello, 0x0300);
    version_reply(hello, n, msg, sizeof msg);
    CHECK(strstr(msg, "no TLS version in common") != NULL);
    CHECK(strstr(msg, "1.3") == NULL);
}

/* ---- upstream.c: the TLS cold start ------------------------------------- */

/* An owner of one upstream connection: writes a request once ready, reads
 * until the end of the answer's head. */
typedef struct {
    upstream_conn *up;
    bool ready, failed, done, resumed;
    upstream_failure kind;
    bool saw_first; /* when ready, watched_target had a first handshake in flight */
    char message[512];
    size_t sent, got;
    char in[4096];
} owner;

static const char owner_request[] = "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";

static void owner_drive(owner *o)
{
    while (o->sent < sizeof owner_request - 1) {
        struct iovec iov = { (char *)owner_request + o->sent, sizeof owner_request - 1 - o->sent };
        ssize_t n = upstream_writev(o->up, &iov, 1);
        if (n < 0) {
            o->failed = errno != EAGAIN;
            if (!o->failed)
                upstream_want(o->up, false, true);
            return;
        }
        o->sent += (size_t)n;
    }
    for (;;) {
        ssize_t n = upstream_read(o->up, o->in + o->got, sizeof o->in - 1 - o->got);
        if (n <= 0) {
            o->failed = n == 0 || errno != EAGAIN;
            if (!o->failed)
                upstream_want(o->up, true, false);
            return;
        }
        o->got += (size_t)n;
        o->in[o->got] = '\0';
        if (strstr(o->in, "\r\n\r\n") != NULL) {
            o->done = true;
            o->resumed = upstream_tls_resumed(o->up);
            upstream_release(o->up, false);
            o->up = NULL;
            return;
        }
    }
}

static const upstream_target *watched_target;

static void owner_ready(void *ctx)
{
    owner *o = ctx;
    o->ready = true;
    o->saw_first = watched_target != NULL && watched_target->tls_first != NULL;
    owner_drive(o);
}

static void owner_io(void *ctx, uint32_t events)
{
    (void)events;
    owner *o = ctx;
    if (o->up != NULL && !o->done && !o->failed)
        owner_drive(o);
}

static void owner_failed(void *ctx, upstream_failure kind, const char *message)
{
    owner *o = ctx;
    o->up = NULL; /* upstream.c closed it */
    o->failed = true;
    o->kind = kind;
    snprintf(o->message, sizeof o->message, "%s", message);
}

static const upstream_events owner_events = { owner_ready, owner_io, owner_failed };

/* Runs the loop in small steps until done(o, n) or about `ms` pass. */
static bool run_until(loop *l, bool (*done)(const owner *, size_t), const owner *o, size_t n, long ms)
{
    long deadline = now_ms() + ms;
    while (!done(o, n)) {
        if (now_ms() >= deadline)
            return false;
        run_loop_ms(l, 5);
    }
    return true;
}

static bool all_settled(const owner *o, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!o[i].done && !o[i].failed)
            return false;
    return true;
}

enum { COLD_OWNERS = 8 };

/* Connections opened together to a fresh upstream: the first makes a full
 * handshake, the others wait for it and resume its session. */
TEST(upstream_tls_cold_start_resumes)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    const char *why = NULL;
    tls_server_cred *cred = tls_server_cred_load(fx("ip4-chain.pem"), fx("leaf.key"), &why);
    loop *l = loop_new();
    fakeai_config cfg = { .chunks = 1, .model = "m", .tls = cred };
    fakeai *f = (cred && l) ? fakeai_start(l, "127.0.0.1:0", &cfg, &why) : NULL;
    CHECK(f != NULL);
    upstream_target t;
    char base[96];
    snprintf(base, sizeof base, "https://%s/v1", f ? fakeai_address(f) : "127.0.0.1:1");
    bool target_ok = f && upstream_target_init(&t, base, NULL, fx("ca.pem"), &why) == 0;
    CHECK(target_ok);
    if (target_ok) {
        static owner o[COLD_OWNERS];
        memset(o, 0, sizeof o);
        for (size_t i = 0; i < COLD_OWNERS; i++) {
            o[i].up = upstream_open(&t, l, 5000, false, &owner_events, &o[i]);
            CHECK(o[i].up != NULL);
        }
        CHECK(run_until(l, all_settled, o, COLD_OWNERS, 5000));
        size_t full = 0, resumed = 0;
        for (size_t i = 0; i < COLD_OWNERS; i++) {
            CHECK(o[i].done && !o[i].failed);
            CHECK(strncmp(o[i].in, "HTTP/1.1 200 ", 13) == 0);
            if (o[i].done && o[i].resumed)
                resumed++;
            else if (o[i].done)
                full++;
        }
        CHECK_EQ_SIZE(full, 1);
        CHECK_EQ_SIZE(resumed, COLD_OWNERS - 1);
        CHECK(tls_session_cache_ready(t.sessions));
        CHECK(t.tls_first == NULL && t.tls_waiting == NULL && t.tls_waiting_count == 0);
        run_loop_ms(l, 5); /* deferred frees */
        upstream_target_free(&t, l);
    }
    fakeai_stop(f);
    run_loop_ms(l, 5);
    loop_free(l);
    tls_server_cred_free(cred);
    arena_release_cached();
}

static bool first_settled(const owner *o, size_t n)
{
    return all_settled(o + 1, n - 1);
}

static bool all_ready(const owner *o, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!o[i].ready)
            return false;
    return true;
}

/* An upstream that completes TCP but never answers the ClientHello: the
 * waiting connections give up on their own connect timeout and say why,
 * and once the first is given up, the waiting ones go on by themselves. */
TEST(upstream_tls_cold_start_wait_bounded)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    int hole = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    socklen_t sl = sizeof sa;
    bool listening = hole >= 0 && bind(hole, (struct sockaddr *)&sa, sizeof sa) == 0 &&
                     listen(hole, 16) == 0 && getsockname(hole, (struct sockaddr *)&sa, &sl) == 0;
    CHECK(listening);
    loop *l = loop_new();
    upstream_target t;
    char base[96];
    snprintf(base, sizeof base, "https://127.0.0.1:%u/v1", (unsigned)ntohs(sa.sin_port));
    const char *why = NULL;
    bool target_ok = listening && l && upstream_target_init(&t, base, NULL, fx("ca.pem"), &why) == 0;
    CHECK(target_ok);
    if (target_ok) {
        static owner o[3];
        memset(o, 0, sizeof o);
        long t0 = now_ms();
        for (size_t i = 0; i < 3; i++)
            o[i].up = upstream_open(&t, l, 150, false, &owner_events, &o[i]);
        CHECK(run_until(l, first_settled, o, 3, 3000));
        long took = now_ms() - t0;
        CHECK(o[0].ready && !o[0].failed && !o[0].done); /* sent its hello, waits on */
        for (size_t i = 1; i < 3; i++) {
            CHECK(!o[i].ready && o[i].failed && o[i].kind == UPSTREAM_FAIL_CONNECT_TIMEOUT);
            CHECK(strstr(o[i].message, "timed out waiting for the first TLS handshake") != NULL);
        }
        CHECK(took >= 140 && took < 1000);
        CHECK(t.tls_first == o[0].up && t.tls_waiting_count == 0);

        /* Two more wait; when the first is given up they start their own. */
        static owner w[2];
        memset(w, 0, sizeof w);
        for (size_t i = 0; i < 2; i++)
            w[i].up = upstream_open(&t, l, 5000, false, &owner_events, &w[i]);
        run_loop_ms(l, 50);
        CHECK(!w[0].ready && !w[1].ready && t.tls_waiting_count == 2);
        upstream_release(o[0].up, false);
        o[0].up = NULL;
        CHECK(t.tls_first == NULL && t.tls_waiting_count == 0);
        CHECK(run_until(l, all_ready, w, 2, 1000));
        for (size_t i = 0; i < 2; i++) {
            CHECK(w[i].ready && !w[i].failed);
            if (w[i].up)
                upstream_release(w[i].up, false);
        }
        run_loop_ms(l, 5);
        upstream_target_free(&t, l);
    }
    if (hole >= 0)
        close(hole);
    loop_free(l);
}

/* openssl s_server with `extra` options on an ephemeral port of 127.0.0.1;
 * returns its pid (port in *port), or -1. */
static pid_t start_s_server(const char *const *extra, size_t n_extra, unsigned *port)
{
    int out[2];
    if (pipe(out) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        const char *argv[24] = { "openssl", "s_server", "-accept", "127.0.0.1:0",
                                 "-cert", fx("ip4.pem"), "-key", fx("leaf.key") };
        size_t argc = 8;
        for (size_t i = 0; i < n_extra && argc < 23; i++)
            argv[argc++] = extra[i];
        dup2(out[1], 1);
        dup2(out[1], 2);
        close(out[0]);
        close(out[1]);
        execvp("openssl", (char *const *)argv);
        _exit(127);
    }
    close(out[1]);
    /* "ACCEPT 127.0.0.1:PORT" within 5 s */
    char buf[512];
    size_t len = 0;
    long deadline = now_ms() + 5000;
    *port = 0;
    while (pid > 0 && *port == 0 && len < sizeof buf - 1 && now_ms() < deadline) {
        struct pollfd pf = { out[0], POLLIN, 0 };
        if (poll(&pf, 1, 100) <= 0)
            continue;
        ssize_t n = read(out[0], buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
        const char *a = strstr(buf, "ACCEPT 127.0.0.1:");
        if (a != NULL && strchr(a, '\n') != NULL)
            *port = (unsigned)atoi(a + 17);
    }
    close(out[0]);
    if (pid > 0 && *port == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

static void stop_s_server(pid_t pid)
{
    if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
}

/* A server that hands out no session ids (OpenSSL without its session cache
 * or tickets): after the first handshake shows it, nobody waits again, since
 * there would be nothing to resume. */
TEST(upstream_tls_sessionless_server_not_waited_for)
{
    CHECK(fixture());
    if (fx_state < 0)
        return;
    static const char *const opts[] = { "-tls1_2", "-no_cache", "-no_ticket", "-www" };
    unsigned port = 0;
    pid_t server = start_s_server(opts, sizeof opts / sizeof opts[0], &port);
    CHECK(server > 0);
    loop *l = loop_new();
    upstream_target t;
    char base[96];
    snprintf(base, sizeof base, "https://127.0.0.1:%u/v1", port);
    const char *why = NULL;
    bool target_ok = server > 0 && l && upstream_target_init(&t, base, NULL, fx("ca.pem"), &why) == 0;
    CHECK(target_ok);
    if (target_ok) {
        static owner o[4];
        memset(o, 0, sizeof o);
        o[0].up = upstream_open(&t, l, 5000, false, &owner_events, &o[0]);
        CHECK(run_until(l, all_settled, o, 1, 5000));
        CHECK(o[0].done && !o[0].resumed && strncmp(o[0].in, "HTTP/1.0 200 ", 13) == 0);
        CHECK(!tls_session_cache_ready(t.sessions));
        CHECK(t.tls_sessionless && t.tls_first == NULL);
        for (size_t i = 1; i < 4; i++)
            o[i].up = upstream_open(&t, l, 5000, false, &owner_events, &o[i]);
        watched_target = &t;
        CHECK(run_until(l, all_settled, o, 4, 5000));
        watched_target = NULL;
        for (size_t i = 1; i < 4; i++) /* each went its own way at once */
            CHECK(o[i].done && !o[i].resumed && !o[i].saw_first);
        CHECK(t.tls_waiting_count == 0);
        run_loop_ms(l, 5);
        upstream_target_free(&t, l);
    }
    stop_s_server(server);
    loop_free(l);
}
