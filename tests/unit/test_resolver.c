/* The resolver on the reactor against a fake nameserver on the same loop
 * (UDP and TCP on 127.0.0.1, ephemeral ports): literals and the hosts file
 * without a query, both families asked and interleaved, the cache, negative
 * answers, spoofed answers ignored, the TCP fallback, timeouts and the next
 * nameserver, the search list, cancelling, and callbacks never made from
 * inside dns_resolve. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/loop.h"
#include "dns_msg.h"
#include "unit.h"
#include "upstream/resolver.h"

/* ---- the fake nameserver ---- */

typedef struct fake_conn {
    struct fake_ns *ns;
    int fd;
    loop_io io;
    uint8_t buf[600];
    size_t len;
    loop_deferred gone;
} fake_conn;

typedef struct fake_ns {
    loop *l;
    int udp, tcp;
    loop_io udp_io, tcp_io;
    uint16_t port;
    size_t udp_queries, tcp_queries;
} fake_ns;

/* The question's name, dotted and lowercased, and its type. */
static bool read_question(const uint8_t *q, size_t n, char *name, size_t cap, uint16_t *qtype, size_t *end)
{
    size_t p = 12, o = 0;
    while (p < n && q[p] != 0) {
        size_t len = q[p];
        if (p + 1 + len >= n || o + len + 2 > cap)
            return false;
        if (o)
            name[o++] = '.';
        for (size_t i = 0; i < len; i++) {
            char c = (char)q[p + 1 + i];
            name[o++] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
        }
        p += 1 + len;
    }
    name[o] = '\0';
    if (p + 5 > n)
        return false;
    *qtype = (uint16_t)(q[p + 1] << 8 | q[p + 2]);
    *end = p + 5;
    return true;
}

static void begin_reply(dns_msg *m, const uint8_t *q, size_t qend, unsigned flags, unsigned an, unsigned ns)
{
    msg_header(m, (uint16_t)(q[0] << 8 | q[1]), flags, 1, an, ns);
    msg_bytes(m, q + 12, qend - 12);
}

/* The zone: answers by name (see each test for what it asks). Returns how
 * many messages were written into out[] (0 for silence). */
static size_t fake_answers(const uint8_t *q, size_t n, bool tcp, dns_msg out[3])
{
    char name[256];
    uint16_t qtype;
    size_t qend;
    if (n < 12 || !read_question(q, n, name, sizeof name, &qtype, &qend))
        return 0;
    bool a = qtype == 1;
    dns_msg *m = &out[0];
    if (strcmp(name, "silent.test") == 0)
        return 0;
    if (strcmp(name, "gone.test") == 0) {
        begin_reply(m, q, qend, MSG_RESPONSE | 3, 0, 1);
        msg_soa(m, "test", 3600, 30);
        return 1;
    }
    if (strcmp(name, "sf.test") == 0 || strcmp(name, "refused.test") == 0) {
        begin_reply(m, q, qend, MSG_RESPONSE | (name[0] == 's' ? 2u : 5u), 0, 0);
        return 1;
    }
    if (strcmp(name, "tc.test") == 0 && !tcp) {
        begin_reply(m, q, qend, MSG_RESPONSE | 0x0200, 0, 0);
        return 1;
    }
    if (strcmp(name, "spoof.test") == 0 && a) {
        /* first a wrong id, then a wrong question, then the answer */
        begin_reply(&out[0], q, qend, MSG_RESPONSE, 1, 0);
        out[0].b[1] ^= 1;
        msg_ptr(&out[0], MSG_QUESTION_AT);
        msg_a(&out[0], 60, 6, 6, 6, 6);
        msg_header(&out[1], (uint16_t)(q[0] << 8 | q[1]), MSG_RESPONSE, 1, 1, 0);
        msg_question(&out[1], "spoof.tesu", 1);
        msg_ptr(&out[1], MSG_QUESTION_AT);
        msg_a(&out[1], 60, 6, 6, 6, 6);
        begin_reply(&out[2], q, qend, MSG_RESPONSE, 1, 0);
        msg_ptr(&out[2], MSG_QUESTION_AT);
        msg_a(&out[2], 60, 10, 0, 0, 7);
        return 3;
    }
    bool both = strcmp(name, "both.test") == 0;
    bool v4 = strcmp(name, "v4.test") == 0 || strcmp(name, "spoof.test") == 0 || strcmp(name, "tc.test") == 0 ||
              strcmp(name, "short.corp.test") == 0;
    if (!both && !v4) {
        begin_reply(m, q, qend, MSG_RESPONSE | 3, 0, 1);
        msg_soa(m, "test", 3600, 30);
        return 1;
    }
    if (a) {
        begin_reply(m, q, qend, MSG_RESPONSE, both ? 2 : 1, 0);
        msg_ptr(m, MSG_QUESTION_AT);
        msg_a(m, 60, 10, 0, 0, 1);
        if (both) {
            msg_ptr(m, MSG_QUESTION_AT);
            msg_a(m, 60, 10, 0, 0, 2);
        }
    } else if (both) {
        begin_reply(m, q, qend, MSG_RESPONSE, 1, 0);
        msg_ptr(m, MSG_QUESTION_AT);
        size_t at = msg_rr(m, 28, 60);
        uint8_t ip[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 1};
        msg_bytes(m, ip, 16);
        msg_rr_end(m, at);
    } else { /* NODATA */
        begin_reply(m, q, qend, MSG_RESPONSE, 0, 1);
        msg_soa(m, "test", 3600, 30);
    }
    return 1;
}

static void on_fake_udp(void *ctx, uint32_t events)
{
    (void)events;
    fake_ns *f = ctx;
    for (;;) {
        uint8_t q[600];
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(f->udp, q, sizeof q, 0, (struct sockaddr *)&peer, &plen);
        if (n < 0)
            return;
        f->udp_queries++;
        dns_msg out[3];
        size_t count = fake_answers(q, (size_t)n, false, out);
        for (size_t i = 0; i < count; i++)
            sendto(f->udp, out[i].b, out[i].n, 0, (struct sockaddr *)&peer, plen);
    }
}

static void free_conn(void *ctx) { free(ctx); }

static void close_conn(fake_conn *c)
{
    loop_io_del(c->ns->l, &c->io);
    close(c->fd);
    loop_defer(c->ns->l, &c->gone, free_conn, c);
}

static void on_fake_conn(void *ctx, uint32_t events)
{
    (void)events;
    fake_conn *c = ctx;
    ssize_t n = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
    if (n <= 0) {
        if (n < 0 && errno == EAGAIN)
            return;
        close_conn(c);
        return;
    }
    c->len += (size_t)n;
    if (c->len < 2 || c->len < 2 + (size_t)(c->buf[0] << 8 | c->buf[1]))
        return;
    c->ns->tcp_queries++;
    dns_msg out[3];
    size_t count = fake_answers(c->buf + 2, c->len - 2, true, out);
    for (size_t i = 0; i < count; i++) {
        uint8_t prefix[2] = {(uint8_t)(out[i].n >> 8), (uint8_t)out[i].n};
        if (write(c->fd, prefix, 2) != 2 || write(c->fd, out[i].b, out[i].n) != (ssize_t)out[i].n)
            break;
    }
    close_conn(c);
}

static void on_fake_accept(void *ctx, uint32_t events)
{
    (void)events;
    fake_ns *f = ctx;
    int fd = accept4(f->tcp, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    fake_conn *c = calloc(1, sizeof *c);
    c->ns = f;
    c->fd = fd;
    loop_io_add(f->l, &c->io, fd, EPOLLIN, on_fake_conn, c);
}

static bool fake_start(fake_ns *f, loop *l)
{
    memset(f, 0, sizeof *f);
    f->l = l;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int tries = 0; tries < 20; tries++) {
        f->udp = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        sa.sin_port = 0;
        socklen_t len = sizeof sa;
        if (bind(f->udp, (struct sockaddr *)&sa, sizeof sa) != 0 || getsockname(f->udp, (struct sockaddr *)&sa, &len))
            return false;
        f->tcp = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (bind(f->tcp, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(f->tcp, 8) == 0)
            break;
        close(f->udp);
        close(f->tcp);
        f->udp = f->tcp = -1;
    }
    if (f->udp < 0)
        return false;
    f->port = ntohs(sa.sin_port);
    loop_io_add(l, &f->udp_io, f->udp, EPOLLIN, on_fake_udp, f);
    loop_io_add(l, &f->tcp_io, f->tcp, EPOLLIN, on_fake_accept, f);
    return true;
}

static void fake_stop(fake_ns *f)
{
    loop_io_del(f->l, &f->udp_io);
    loop_io_del(f->l, &f->tcp_io);
    close(f->udp);
    close(f->tcp);
}

/* ---- the harness ---- */

typedef struct world {
    loop *l;
    fake_ns ns;
    dns_resolver *r;
    char conf_path[64], hosts_path[64];
    loop_timer guard;
    size_t want, got;
} world;

typedef struct outcome {
    world *w;
    bool called;
    dns_result res;
    uint64_t at_ms;
} outcome;

static void write_file(char *path, const char *prefix, const char *text)
{
    snprintf(path, 64, "/tmp/ssegate-unit-%s-XXXXXX", prefix);
    int fd = mkstemp(path);
    if (fd < 0) {
        unit_fail(__FILE__, __LINE__, "mkstemp: %s", strerror(errno));
        return;
    }
    size_t n = strlen(text);
    if (write(fd, text, n) != (ssize_t)n)
        unit_fail(__FILE__, __LINE__, "write %s", path);
    close(fd);
}

/* resolv_extra follows the fake's nameserver line; "%d" in it is the fake's port. */
static bool world_start(world *w, const char *conf_text, const char *hosts_text)
{
    memset(w, 0, sizeof *w);
    w->l = loop_new();
    if (!w->l || !fake_start(&w->ns, w->l)) {
        unit_fail(__FILE__, __LINE__, "cannot start the fake nameserver");
        return false;
    }
    char conf[512];
    snprintf(conf, sizeof conf, conf_text, w->ns.port, w->ns.port);
    write_file(w->conf_path, "resolv", conf);
    write_file(w->hosts_path, "hosts", hosts_text);
    const char *why = NULL;
    w->r = dns_resolver_new(w->l, w->conf_path, w->hosts_path, &why);
    if (!w->r) {
        unit_fail(__FILE__, __LINE__, "dns_resolver_new: %s", why ? why : "?");
        return false;
    }
    return true;
}

static void world_end(world *w)
{
    dns_resolver_free(w->r);
    fake_stop(&w->ns);
    loop_free(w->l);
    unlink(w->conf_path);
    unlink(w->hosts_path);
}

static void on_guard(void *ctx)
{
    world *w = ctx;
    loop_stop(w->l);
}

static void on_result(void *ctx, const dns_result *res)
{
    outcome *o = ctx;
    if (o->called)
        unit_fail(__FILE__, __LINE__, "a callback ran twice");
    o->called = true;
    o->res = *res;
    o->at_ms = loop_now_ms(o->w->l);
    if (++o->w->got >= o->w->want)
        loop_stop(o->w->l);
}

/* Runs the loop until `count` more callbacks came, or limit_ms passed. */
static void run_for(world *w, size_t count, uint64_t limit_ms)
{
    w->want = w->got + count;
    loop_timer_arm(w->l, &w->guard, limit_ms, on_guard, w);
    loop_run(w->l);
    loop_timer_stop(w->l, &w->guard);
}

static dns_query *ask(world *w, outcome *o, const char *name, uint16_t port)
{
    memset(o, 0, sizeof *o);
    o->w = w;
    dns_query *q = dns_resolve(w->r, name, port, on_result, o);
    CHECK(q != NULL);
    CHECK(!o->called); /* never from inside dns_resolve */
    return q;
}

static bool result_has(const dns_result *r, size_t i, const char *ip, uint16_t port)
{
    if (i >= r->count)
        return false;
    char text[INET6_ADDRSTRLEN] = "";
    uint16_t p;
    if (r->addrs[i].ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&r->addrs[i];
        inet_ntop(AF_INET6, &s6->sin6_addr, text, sizeof text);
        p = ntohs(s6->sin6_port);
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&r->addrs[i];
        inet_ntop(AF_INET, &s4->sin_addr, text, sizeof text);
        p = ntohs(s4->sin_port);
    }
    return strcmp(text, ip) == 0 && p == port;
}

static const char one_server[] = "nameserver 127.0.0.1:%d\noptions timeout:1 attempts:1\n";

/* ---- the tests ---- */

TEST(resolver_literals_hosts_and_localhost_ask_nobody)
{
    world w;
    if (!world_start(&w, one_server, "10.9.9.9 pinned.test\n2001:db8::9 pinned.test\n10.9.9.8 pinned.test\n"))
        return;
    outcome lit, lit6, pinned, local;
    ask(&w, &lit, "10.1.2.3", 80);
    ask(&w, &lit6, "::1", 443);
    ask(&w, &pinned, "Pinned.Test.", 8080);
    ask(&w, &local, "api.localhost", 1);
    run_for(&w, 4, 2000);
    CHECK(lit.called && lit.res.status == DNS_OK && result_has(&lit.res, 0, "10.1.2.3", 80));
    CHECK(lit6.called && result_has(&lit6.res, 0, "::1", 443));
    /* the file's first family first, then alternating */
    CHECK(pinned.called && pinned.res.count == 3);
    CHECK(result_has(&pinned.res, 0, "10.9.9.9", 8080));
    CHECK(result_has(&pinned.res, 1, "2001:db8::9", 8080));
    CHECK(result_has(&pinned.res, 2, "10.9.9.8", 8080));
    CHECK(local.called && result_has(&local.res, 0, "127.0.0.1", 1) && result_has(&local.res, 1, "::1", 1));
    CHECK_EQ_SIZE(w.ns.udp_queries, 0);
    /* an invalid name is an answer too, from the loop */
    outcome bad;
    ask(&w, &bad, "a..b", 1);
    run_for(&w, 1, 2000);
    CHECK(bad.called && bad.res.status == DNS_OTHER && strcmp(bad.res.message, "invalid host name") == 0);
    world_end(&w);
}

TEST(resolver_both_families_then_the_cache)
{
    world w;
    if (!world_start(&w, one_server, ""))
        return;
    outcome o, again;
    ask(&w, &o, "both.test", 443);
    run_for(&w, 1, 3000);
    CHECK(o.called && o.res.status == DNS_OK);
    CHECK_EQ_SIZE(o.res.count, 3);
    /* interleaved: the first two are of different families */
    CHECK(o.res.count == 3 && o.res.addrs[0].ss_family != o.res.addrs[1].ss_family);
    CHECK_EQ_SIZE(w.ns.udp_queries, 2); /* A and AAAA */
    size_t v6 = 0;
    for (size_t i = 0; i < o.res.count; i++)
        v6 += o.res.addrs[i].ss_family == AF_INET6;
    CHECK_EQ_SIZE(v6, 1);
    /* from the cache: no query, the same generation, still from the loop */
    ask(&w, &again, "BOTH.test", 80);
    run_for(&w, 1, 1000);
    CHECK(again.called && again.res.count == 3 && again.res.generation == o.res.generation);
    CHECK(again.res.addrs[0].ss_family == o.res.addrs[0].ss_family);
    CHECK_EQ_SIZE(w.ns.udp_queries, 2);
    /* the synchronous peek */
    dns_result peeked;
    CHECK(dns_peek(w.r, "both.test", 443, o.res.generation, &peeked) == DNS_PEEK_SAME);
    CHECK(dns_peek(w.r, "both.test", 443, 0, &peeked) == DNS_PEEK_CHANGED && peeked.count == 3);
    CHECK(dns_peek(w.r, "never.test", 443, 0, &peeked) == DNS_PEEK_MISS);
    world_end(&w);
}

TEST(resolver_negative_answers)
{
    world w;
    if (!world_start(&w, one_server, ""))
        return;
    outcome gone, v4;
    ask(&w, &gone, "gone.test", 1);
    ask(&w, &v4, "v4.test", 2); /* AAAA is NODATA: the A alone */
    run_for(&w, 2, 3000);
    CHECK(gone.called && gone.res.status == DNS_NXDOMAIN && strcmp(gone.res.message, "NXDOMAIN") == 0);
    CHECK(gone.res.count == 0);
    CHECK(v4.called && v4.res.status == DNS_OK && v4.res.count == 1 && result_has(&v4.res, 0, "10.0.0.1", 2));
    /* the NXDOMAIN is cached */
    size_t asked = w.ns.udp_queries;
    outcome again;
    ask(&w, &again, "gone.test", 1);
    run_for(&w, 1, 1000);
    CHECK(again.called && again.res.status == DNS_NXDOMAIN && w.ns.udp_queries == asked);
    outcome sf, refused;
    ask(&w, &sf, "sf.test", 1);
    ask(&w, &refused, "refused.test", 1);
    run_for(&w, 2, 3000);
    CHECK(sf.called && sf.res.status == DNS_SERVFAIL && strcmp(sf.res.message, "SERVFAIL") == 0);
    char want[64];
    snprintf(want, sizeof want, "REFUSED from 127.0.0.1:%u", w.ns.port);
    CHECK(refused.called && refused.res.status == DNS_OTHER);
    CHECK_STR(refused.res.message, want);
    world_end(&w);
}

TEST(resolver_ignores_spoofed_and_stray_answers)
{
    world w;
    if (!world_start(&w, one_server, ""))
        return;
    outcome o;
    ask(&w, &o, "spoof.test", 1);
    run_for(&w, 1, 3000);
    CHECK(o.called && o.res.status == DNS_OK && o.res.count == 1 && result_has(&o.res, 0, "10.0.0.7", 1));
    world_end(&w);
}

TEST(resolver_truncated_goes_tcp)
{
    world w;
    if (!world_start(&w, one_server, ""))
        return;
    outcome o;
    ask(&w, &o, "tc.test", 5);
    run_for(&w, 1, 3000);
    CHECK(o.called && o.res.status == DNS_OK && result_has(&o.res, 0, "10.0.0.1", 5));
    CHECK(w.ns.tcp_queries == 2); /* A and AAAA, each after a TC */
    CHECK(w.ns.udp_queries == 2);
    world_end(&w);
}

TEST(resolver_timeout_then_the_next_nameserver)
{
    /* The first nameserver is a socket nobody reads: silence. */
    int mute = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    CHECK(bind(mute, (struct sockaddr *)&sa, sizeof sa) == 0 && getsockname(mute, (struct sockaddr *)&sa, &len) == 0);
    char conf[256];
    snprintf(conf, sizeof conf, "nameserver 127.0.0.1:%u\nnameserver 127.0.0.1:%%d\noptions timeout:1 attempts:1\n",
             ntohs(sa.sin_port));
    world w;
    if (!world_start(&w, conf, "")) {
        close(mute);
        return;
    }
    outcome o, silent;
    uint64_t t0 = loop_now_ms(w.l);
    ask(&w, &o, "v4.test", 1);
    run_for(&w, 1, 5000);
    CHECK(o.called && o.res.status == DNS_OK && result_has(&o.res, 0, "10.0.0.1", 1));
    CHECK(o.at_ms - t0 >= 900 && o.at_ms - t0 < 2500);
    /* a name nobody answers: timeout after one try at each */
    t0 = loop_now_ms(w.l);
    ask(&w, &silent, "silent.test", 1);
    run_for(&w, 1, 6000);
    CHECK(silent.called && silent.res.status == DNS_TIMEOUT && strcmp(silent.res.message, "timeout") == 0);
    CHECK(silent.at_ms - t0 >= 1900 && silent.at_ms - t0 < 4000);
    world_end(&w);
    close(mute);
}

TEST(resolver_port_unreachable_is_quick)
{
    int dead = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    CHECK(bind(dead, (struct sockaddr *)&sa, sizeof sa) == 0 && getsockname(dead, (struct sockaddr *)&sa, &len) == 0);
    close(dead); /* nothing listens there now */
    char conf[128];
    snprintf(conf, sizeof conf, "nameserver 127.0.0.1:%u\noptions timeout:5\n", ntohs(sa.sin_port));
    world w;
    if (!world_start(&w, conf, ""))
        return;
    outcome o;
    uint64_t t0 = loop_now_ms(w.l);
    ask(&w, &o, "v4.test", 1);
    run_for(&w, 1, 12000);
    CHECK(o.called && o.res.status == DNS_OTHER && strstr(o.res.message, "port unreachable") != NULL);
    CHECK(o.at_ms - t0 < 1000); /* two attempts, neither waiting out its 5 s */
    world_end(&w);
}

TEST(resolver_search_list)
{
    world w;
    if (!world_start(&w, "nameserver 127.0.0.1:%d\nsearch corp.test\noptions timeout:1 attempts:1\n", ""))
        return;
    outcome o;
    ask(&w, &o, "short", 1);
    run_for(&w, 1, 3000);
    CHECK(o.called && o.res.status == DNS_OK && result_has(&o.res, 0, "10.0.0.1", 1));
    CHECK_EQ_SIZE(w.ns.udp_queries, 2); /* short.corp.test answered: "short" alone never asked */
    outcome none;
    ask(&w, &none, "nothing", 1); /* nothing.corp.test, then nothing: both NXDOMAIN */
    run_for(&w, 1, 3000);
    CHECK(none.called && none.res.status == DNS_NXDOMAIN);
    CHECK_EQ_SIZE(w.ns.udp_queries, 6);
    world_end(&w);
}

TEST(resolver_cancel)
{
    world w;
    if (!world_start(&w, one_server, ""))
        return;
    outcome waiting, shared, cached;
    /* two waiting on one lookup; one leaves */
    dns_query *q = ask(&w, &waiting, "both.test", 1);
    ask(&w, &shared, "both.test", 2);
    dns_cancel(q);
    run_for(&w, 1, 3000);
    CHECK(!waiting.called && shared.called && shared.res.count == 3);
    CHECK_EQ_SIZE(w.ns.udp_queries, 2); /* one lookup for both */
    /* a cached answer already on its way: cancelled before the loop delivers it */
    q = ask(&w, &cached, "both.test", 3);
    dns_cancel(q);
    run_for(&w, 1, 200);
    CHECK(!cached.called);
    /* cancelled while the only waiter: the lookup goes on and fills the cache */
    outcome lone;
    q = ask(&w, &lone, "v4.test", 4);
    dns_cancel(q);
    run_for(&w, 1, 500);
    CHECK(!lone.called);
    dns_result peeked;
    CHECK(dns_peek(w.r, "v4.test", 4, 0, &peeked) == DNS_PEEK_CHANGED && peeked.count == 1);
    world_end(&w);
}
