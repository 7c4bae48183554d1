#include "upstream/resolver.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "upstream/dns_conf.h"

enum {
    CACHE_ENTRIES = 1024,
    HOSTS_TTL_S = 10,         /* hosts answers are re-read from the file this often */
    RECHECK_FILES_MS = 1000,
    RESOLV_CONF_MAX = 64 * 1024,
    HOSTS_MAX = 16 * 1024 * 1024,
    UDP_ANSWER_MAX = 4096,    /* 512 without EDNS, but a server may send more */
    DATAGRAMS_PER_WAKE = 16,  /* stray datagrams read before yielding */
    MAX_NAMES = DNS_MAX_SEARCH + 1
};

/* How much a failure says, to keep the most telling one of several tries. */
enum { RANK_NONE, RANK_UNREACHABLE, RANK_TIMEOUT, RANK_OTHER, RANK_SERVFAIL };

typedef enum tx_state { TX_IDLE, TX_UDP, TX_TCP_CONNECTING, TX_TCP_WRITING, TX_TCP_READING, TX_DONE } tx_state;

typedef struct resolution resolution;

/* One question (one name, one type) walked through the nameservers. */
typedef struct transaction {
    resolution *res;
    uint16_t qtype, id;
    tx_state state;
    int fd;
    loop_io io;
    loop_timer timer;
    size_t tries, first_server, server;
    uint8_t query[2 + DNS_QUERY_MAX]; /* room for TCP's length prefix */
    size_t query_len, tcp_sent;
    uint8_t tcp_prefix[2];
    uint8_t *tcp_buf;
    size_t tcp_have, tcp_want;
    /* the outcome, or the most telling failure so far */
    dns_status status;
    int rank;
    char detail[DNS_DETAIL_MAX];
    dns_answer answer;
    unsigned finished_order;
} transaction;

/* The nameservers and options as they were when a lookup started. */
typedef struct ns_set {
    struct sockaddr_in6 addrs[DNS_MAX_NAMESERVERS]; /* room for either family */
    socklen_t lens[DNS_MAX_NAMESERVERS];
    size_t count;
    unsigned timeout_s, attempts;
    bool rotate;
} ns_set;

struct resolution {
    dns_resolver *r;
    resolution *next; /* in flight */
    char key[DNS_NAME_MAX + 1];
    dns_query *waiters;
    ns_set ns;
    char names[MAX_NAMES][DNS_NAME_MAX + 1]; /* what the search list makes of key */
    size_t name_count, name_index;
    uint8_t wire[DNS_NAME_MAX]; /* names[name_index], as asked */
    size_t wire_len;
    transaction tx[2];
    unsigned finished;
    bool got_servfail, got_other, got_nodata, done;
    char other_detail[DNS_DETAIL_MAX];
    uint32_t negative_ttl;
    loop_deferred free_later;
};

struct dns_query {
    dns_query *next, *prev; /* among its resolution's waiters */
    resolution *waiting_on;
    uint16_t port;
    dns_callback cb;
    void *ctx;
    bool delivering, cancelled;
    loop_deferred deferred;
    dns_cache_answer answer; /* what it will be told */
};

typedef struct watched_file {
    const char *path;
    bool present;
    struct stat st;
} watched_file;

struct dns_resolver {
    loop *loop;
    dns_conf conf;
    char *hosts;
    size_t hosts_len;
    watched_file conf_file, hosts_file;
    uint64_t checked_ms;
    dns_cache *cache;
    resolution *inflight;
    size_t rotate_next;
    uint8_t random[64];
    size_t random_left;
    uint64_t fallback_state;
    uint8_t datagram[UDP_ANSWER_MAX];
};

/* ---- files ---- */

/* 0 and the contents (NUL-terminated, malloc'd), ENOENT, or another errno. */
static int read_file(const char *path, size_t max, char **text, size_t *len, struct stat *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int err = fstat(fd, st) != 0             ? errno
              : !S_ISREG(st->st_mode)            ? EINVAL
              : (uint64_t)st->st_size > max      ? EFBIG
                                                 : 0;
    if (err) {
        close(fd);
        return err;
    }
    size_t cap = (size_t)st->st_size;
    char *buf = malloc(cap + 1);
    if (!buf) {
        close(fd);
        return ENOMEM;
    }
    size_t got = 0;
    while (got < cap) {
        ssize_t n = read(fd, buf + got, cap - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    *text = buf;
    *len = got;
    return 0;
}

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

static int load_conf(dns_resolver *r)
{
    char *text = NULL;
    size_t len = 0;
    int err = read_file(r->conf_file.path, RESOLV_CONF_MAX, &text, &len, &r->conf_file.st);
    if (err && err != ENOENT)
        return err;
    r->conf_file.present = err == 0;
    dns_conf_parse(text ? text : "", len, &r->conf);
    free(text);
    return 0;
}

static int load_hosts(dns_resolver *r)
{
    char *text = NULL;
    size_t len = 0;
    int err = read_file(r->hosts_file.path, HOSTS_MAX, &text, &len, &r->hosts_file.st);
    if (err && err != ENOENT)
        return err;
    r->hosts_file.present = err == 0;
    free(r->hosts);
    r->hosts = text;
    r->hosts_len = len;
    return 0;
}

/* Re-reads a file that changed; one that vanished or went bad keeps what
 * was read before. */
static void maybe_reload(dns_resolver *r)
{
    uint64_t now = loop_now_ms(r->loop);
    if (r->checked_ms && now - r->checked_ms < RECHECK_FILES_MS)
        return;
    r->checked_ms = now;
    struct stat st;
    if (stat(r->conf_file.path, &st) == 0 && (!r->conf_file.present || !same_file(&st, &r->conf_file.st))) {
        dns_conf keep = r->conf;
        if (load_conf(r) != 0)
            r->conf = keep;
    }
    if (stat(r->hosts_file.path, &st) == 0 && (!r->hosts_file.present || !same_file(&st, &r->hosts_file.st)))
        load_hosts(r);
}

dns_resolver *dns_resolver_new(loop *l, const char *resolv_conf_path, const char *hosts_path, const char **why)
{
    dns_resolver *r = calloc(1, sizeof *r);
    if (!r) {
        *why = "out of memory";
        return NULL;
    }
    r->loop = l;
    r->conf_file.path = resolv_conf_path;
    r->hosts_file.path = hosts_path;
    r->cache = dns_cache_new(CACHE_ENTRIES);
    static char msg[320];
    int err;
    if (!r->cache) {
        *why = "out of memory";
    } else if ((err = load_conf(r)) != 0) {
        snprintf(msg, sizeof msg, "cannot read %s: %s", resolv_conf_path, strerror(err));
        *why = msg;
    } else if ((err = load_hosts(r)) != 0) {
        snprintf(msg, sizeof msg, "cannot read %s: %s", hosts_path, strerror(err));
        *why = msg;
    } else {
        r->checked_ms = loop_now_ms(l);
        return r;
    }
    dns_cache_free(r->cache);
    free(r->hosts);
    free(r);
    return NULL;
}

/* ---- small helpers ---- */

/* snprintf("%s") without the formatting machinery: lookups copy a few. */
static void copy_text(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static uint16_t random16(dns_resolver *r)
{
    if (r->random_left < 2) {
        ssize_t n = getrandom(r->random, sizeof r->random, GRND_NONBLOCK);
        if (n == (ssize_t)sizeof r->random) {
            r->random_left = sizeof r->random;
        } else {
            /* Only before the kernel's pool is ready (early boot): a
             * splitmix64 over the clock, weaker but never blocking. */
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            uint64_t z = (r->fallback_state += 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_nsec);
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            return (uint16_t)(z ^ (z >> 31));
        }
    }
    r->random_left -= 2;
    return (uint16_t)(r->random[r->random_left] << 8 | r->random[r->random_left + 1]);
}

static void server_text(const struct sockaddr_in6 *ss, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ss->sin6_family == AF_INET6) {
        inet_ntop(AF_INET6, &ss->sin6_addr, ip, sizeof ip);
        snprintf(out, cap, "[%s]:%u", ip, ntohs(ss->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)ss;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        snprintf(out, cap, "%s:%u", ip, ntohs(s4->sin_port));
    }
}

/* Lowercased, at most one final dot kept (it makes the name absolute). */
static bool normalise(const char *name, char key[DNS_NAME_MAX + 1])
{
    size_t n = strnlen(name, DNS_NAME_MAX + 1);
    if (n == 0 || n > DNS_NAME_MAX - 1 || (n >= 2 && name[n - 1] == '.' && name[n - 2] == '.'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        key[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    key[n] = '\0';
    return true;
}

static bool is_localhost(const char *key)
{
    size_t n = strlen(key);
    if (n > 0 && key[n - 1] == '.')
        n--;
    static const char suffix[] = ".localhost";
    size_t s = sizeof suffix - 1;
    return (n == s - 1 && memcmp(key, suffix + 1, n) == 0) || (n > s && memcmp(key + n - s, suffix, s) == 0);
}

static void fill_result(dns_result *out, const dns_cache_answer *a, uint16_t port)
{
    out->status = a->status;
    copy_text(out->message, sizeof out->message, a->detail);
    out->count = a->status == DNS_OK ? a->count : 0;
    for (size_t i = 0; i < out->count; i++)
        out->lens[i] = dns_addr_to_sockaddr(&a->addrs[i], port, &out->addrs[i]);
    out->generation = a->generation;
}

/* ---- delivering ---- */

static void deliver(void *ctx)
{
    dns_query *q = ctx;
    if (!q->cancelled) {
        dns_result res;
        fill_result(&res, &q->answer, q->port);
        q->cb(q->ctx, &res);
    }
    free(q);
}

static void schedule(dns_resolver *r, dns_query *q)
{
    q->delivering = true;
    loop_defer(r->loop, &q->deferred, deliver, q);
}

static void free_resolution(void *ctx) { free(ctx); }

static void unlink_inflight(resolution *res)
{
    resolution **at = &res->r->inflight;
    while (*at && *at != res)
        at = &(*at)->next;
    if (*at)
        *at = res->next;
}

/* The lookup is over: into the cache, out to every waiter. */
static void complete(resolution *res, const dns_cache_answer *answer, uint32_t ttl_s)
{
    dns_resolver *r = res->r;
    res->done = true;
    unlink_inflight(res);
    uint64_t now = loop_now_ms(r->loop);
    const dns_cache_answer *stored =
        answer->status == DNS_OK || answer->status == DNS_NXDOMAIN || answer->status == DNS_NODATA
            ? dns_cache_store(r->cache, res->key, answer, ttl_s, now)
            : dns_cache_fail(r->cache, res->key, answer->status, answer->detail, now);
    dns_cache_answer uncached;
    if (!stored) {
        uncached = *answer;
        uncached.generation = dns_cache_new_generation(r->cache);
        stored = &uncached;
    }
    while (res->waiters) {
        dns_query *q = res->waiters;
        res->waiters = q->next;
        q->next = q->prev = NULL;
        q->waiting_on = NULL;
        q->answer = *stored;
        schedule(r, q);
    }
    loop_defer(r->loop, &res->free_later, free_resolution, res);
}

static void complete_status(resolution *res, dns_status status, const char *detail, uint32_t ttl_s)
{
    dns_cache_answer a = {.status = status};
    copy_text(a.detail, sizeof a.detail, detail ? detail : dns_status_label(status));
    complete(res, &a, ttl_s);
}

static void complete_addrs(resolution *res, dns_addr *addrs, size_t count, uint32_t ttl_s)
{
    dns_cache_answer a = {.status = DNS_OK};
    copy_text(a.detail, sizeof a.detail, dns_status_label(DNS_OK));
    dns_interleave(addrs, count, addrs[0].family);
    a.count = count < DNS_MAX_ADDRS ? count : DNS_MAX_ADDRS;
    memcpy(a.addrs, addrs, a.count * sizeof *addrs);
    complete(res, &a, ttl_s);
}

/* ---- one question through the nameservers ---- */

static void start_name(resolution *res);
static void on_tx_io(void *ctx, uint32_t events);
static void on_tx_timeout(void *ctx);

static void tx_close(transaction *tx)
{
    dns_resolver *r = tx->res->r;
    loop_timer_stop(r->loop, &tx->timer);
    if (tx->fd >= 0) {
        loop_io_del(r->loop, &tx->io);
        close(tx->fd);
        tx->fd = -1;
    }
    free(tx->tcp_buf);
    tx->tcp_buf = NULL;
}

static void note(transaction *tx, dns_status status, int rank, const char *detail)
{
    if (rank <= tx->rank)
        return;
    tx->rank = rank;
    tx->status = status;
    copy_text(tx->detail, sizeof tx->detail, detail ? detail : dns_status_label(status));
}

static void note_server(transaction *tx, dns_status status, int rank, const char *what)
{
    char where[64];
    server_text(&tx->res->ns.addrs[tx->server], where, sizeof where);
    char detail[DNS_DETAIL_MAX];
    snprintf(detail, sizeof detail, "%s %s", what, where);
    note(tx, status, rank, detail);
}

static void candidate_done(resolution *res);

static void tx_finish(transaction *tx)
{
    tx_close(tx);
    tx->state = TX_DONE;
    resolution *res = tx->res;
    tx->finished_order = ++res->finished;
    if (res->finished == 2)
        candidate_done(res);
}

static void tx_finish_with(transaction *tx, dns_status status, const char *detail)
{
    tx->status = status;
    copy_text(tx->detail, sizeof tx->detail, detail ? detail : dns_status_label(status));
    tx_finish(tx);
}

/* A fresh id and a fresh socket for the next try; the tries run out after
 * `attempts` rounds over the nameservers. */
static void tx_send(transaction *tx)
{
    resolution *res = tx->res;
    dns_resolver *r = res->r;
    const ns_set *c = &res->ns;
    for (;;) {
        tx_close(tx);
        if (tx->tries >= c->count * c->attempts) {
            if (tx->rank == RANK_NONE)
                note(tx, DNS_TIMEOUT, RANK_TIMEOUT, NULL);
            tx_finish(tx);
            return;
        }
        tx->server = (tx->first_server + tx->tries) % c->count;
        tx->tries++;
        tx->id = random16(r);
        tx->query_len = dns_build_query_wire(tx->query + 2, DNS_QUERY_MAX, tx->id, res->wire, res->wire_len, tx->qtype);
        const struct sockaddr_in6 *ss = &c->addrs[tx->server];
        int fd = socket(ss->sin6_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            note_server(tx, DNS_OTHER, RANK_UNREACHABLE, "no socket for nameserver");
            continue;
        }
        /* connect: the kernel picks a random source port and drops datagrams from anyone else. */
        ssize_t sent = -1;
        if (connect(fd, (const struct sockaddr *)ss, c->lens[tx->server]) == 0)
            sent = send(fd, tx->query + 2, tx->query_len, 0);
        if (sent != (ssize_t)tx->query_len ||
            loop_io_add(r->loop, &tx->io, fd, EPOLLIN, on_tx_io, tx) != 0) {
            close(fd);
            note_server(tx, DNS_OTHER, RANK_UNREACHABLE, "cannot reach nameserver");
            continue;
        }
        tx->fd = fd;
        tx->state = TX_UDP;
        loop_timer_arm(r->loop, &tx->timer, (uint64_t)c->timeout_s * 1000, on_tx_timeout, tx);
        return;
    }
}

/* TC: the same question to the same server over TCP, length-prefixed. */
static void tx_start_tcp(transaction *tx)
{
    resolution *res = tx->res;
    dns_resolver *r = res->r;
    const ns_set *c = &res->ns;
    tx_close(tx);
    tx->id = random16(r);
    tx->query_len = dns_build_query_wire(tx->query + 2, DNS_QUERY_MAX, tx->id, res->wire, res->wire_len, tx->qtype);
    tx->query[0] = (uint8_t)(tx->query_len >> 8);
    tx->query[1] = (uint8_t)tx->query_len;
    tx->tcp_sent = tx->tcp_have = tx->tcp_want = 0;
    const struct sockaddr_in6 *ss = &c->addrs[tx->server];
    int fd = socket(ss->sin6_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int rc = fd < 0 ? -1 : connect(fd, (const struct sockaddr *)ss, c->lens[tx->server]);
    if (fd < 0 || (rc != 0 && errno != EINPROGRESS) ||
        loop_io_add(r->loop, &tx->io, fd, EPOLLOUT, on_tx_io, tx) != 0) {
        if (fd >= 0)
            close(fd);
        note_server(tx, DNS_OTHER, RANK_UNREACHABLE, "TCP fallback failed for nameserver");
        tx_send(tx);
        return;
    }
    tx->fd = fd;
    tx->state = TX_TCP_CONNECTING;
    loop_timer_arm(r->loop, &tx->timer, (uint64_t)c->timeout_s * 1000, on_tx_timeout, tx);
}

static const char *rcode_name(unsigned rcode)
{
    static const char *const names[] = {"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
                                        "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE"};
    return rcode < sizeof names / sizeof names[0] ? names[rcode] : "an unknown RCODE";
}

static void tx_answer(transaction *tx, const dns_answer *a, bool over_tcp)
{
    if (a->truncated) {
        if (!over_tcp) {
            tx_start_tcp(tx);
            return;
        }
        note_server(tx, DNS_OTHER, RANK_OTHER, "truncated answer over TCP from");
        tx_send(tx);
        return;
    }
    if (a->rcode == DNS_RCODE_SERVFAIL || a->rcode == DNS_RCODE_OTHER) {
        char what[48];
        snprintf(what, sizeof what, "%s from", rcode_name(a->rcode_value));
        if (a->rcode == DNS_RCODE_SERVFAIL)
            note(tx, DNS_SERVFAIL, RANK_SERVFAIL, NULL);
        else
            note_server(tx, DNS_OTHER, RANK_OTHER, what);
        tx_send(tx);
        return;
    }
    tx->answer = *a;
    if (a->chain_too_long)
        tx_finish_with(tx, DNS_OTHER, "CNAME chain too long");
    else if (a->count > 0)
        tx_finish_with(tx, DNS_OK, NULL);
    else
        tx_finish_with(tx, a->rcode == DNS_RCODE_NXDOMAIN ? DNS_NXDOMAIN : DNS_NODATA, NULL);
}

static void on_tx_timeout(void *ctx)
{
    transaction *tx = ctx;
    note(tx, DNS_TIMEOUT, RANK_TIMEOUT, NULL);
    tx_send(tx);
}

static void on_udp(transaction *tx)
{
    dns_resolver *r = tx->res->r;
    for (int i = 0; i < DATAGRAMS_PER_WAKE; i++) {
        ssize_t n = recv(tx->fd, r->datagram, sizeof r->datagram, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n < 0) { /* an ICMP error: nobody listens there */
            note_server(tx, DNS_OTHER, RANK_UNREACHABLE, "no answer (port unreachable) from nameserver");
            tx_send(tx);
            return;
        }
        dns_answer a;
        dns_parse_status st = dns_parse_response_wire(r->datagram, (size_t)n, tx->id, tx->res->wire,
                                                      tx->res->wire_len, tx->qtype, &a);
        if (st == DNS_PARSE_NOT_OURS)
            continue; /* late, spoofed or stray: keep waiting for ours */
        if (st == DNS_PARSE_MALFORMED) {
            note_server(tx, DNS_OTHER, RANK_OTHER, "malformed answer from");
            tx_send(tx);
            return;
        }
        tx_answer(tx, &a, false);
        return;
    }
}

static void tcp_failed(transaction *tx, const char *what)
{
    note_server(tx, DNS_OTHER, RANK_UNREACHABLE, what);
    tx_send(tx);
}

static void on_tcp(transaction *tx, uint32_t events)
{
    dns_resolver *r = tx->res->r;
    if (tx->state == TX_TCP_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(tx->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            tcp_failed(tx, "TCP connect failed to nameserver");
            return;
        }
        tx->state = TX_TCP_WRITING;
    }
    if (tx->state == TX_TCP_WRITING) {
        size_t total = tx->query_len + 2;
        while (tx->tcp_sent < total) {
            ssize_t n = send(tx->fd, tx->query + tx->tcp_sent, total - tx->tcp_sent, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN)
                return;
            if (n <= 0) {
                tcp_failed(tx, "TCP write failed to nameserver");
                return;
            }
            tx->tcp_sent += (size_t)n;
        }
        tx->state = TX_TCP_READING;
        loop_io_set(r->loop, &tx->io, EPOLLIN);
        events = EPOLLIN;
    }
    if (tx->state != TX_TCP_READING || !(events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return;
    for (;;) {
        bool prefix = tx->tcp_buf == NULL;
        uint8_t *into = prefix ? tx->tcp_prefix + tx->tcp_have : tx->tcp_buf + tx->tcp_have;
        size_t want = (prefix ? 2 : tx->tcp_want) - tx->tcp_have;
        ssize_t n = recv(tx->fd, into, want, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            tcp_failed(tx, "TCP answer cut short by nameserver");
            return;
        }
        tx->tcp_have += (size_t)n;
        if (prefix && tx->tcp_have == 2) {
            tx->tcp_want = (size_t)tx->tcp_prefix[0] << 8 | tx->tcp_prefix[1];
            tx->tcp_have = 0;
            if (tx->tcp_want < DNS_HEADER_LEN || !(tx->tcp_buf = malloc(tx->tcp_want))) {
                tcp_failed(tx, "unusable TCP answer from nameserver");
                return;
            }
        } else if (!prefix && tx->tcp_have == tx->tcp_want) {
            dns_answer a;
            dns_parse_status st = dns_parse_response_wire(tx->tcp_buf, tx->tcp_want, tx->id, tx->res->wire,
                                                          tx->res->wire_len, tx->qtype, &a);
            if (st != DNS_PARSE_OK) { /* on our own connection, a wrong id is no better than garbage */
                note_server(tx, DNS_OTHER, RANK_OTHER, "malformed TCP answer from");
                tx_send(tx);
                return;
            }
            tx_answer(tx, &a, true);
            return;
        }
    }
}

static void on_tx_io(void *ctx, uint32_t events)
{
    transaction *tx = ctx;
    if (tx->state == TX_UDP)
        on_udp(tx);
    else if (tx->state >= TX_TCP_CONNECTING && tx->state <= TX_TCP_READING)
        on_tcp(tx, events);
}

/* ---- one lookup: the search list, both families ---- */

static uint32_t min32(uint32_t a, uint32_t b) { return a < b ? a : b; }

static bool negative(const transaction *tx) { return tx->status == DNS_NXDOMAIN || tx->status == DNS_NODATA; }

static uint32_t negative_ttl(const transaction *tx) { return tx->answer.has_soa ? tx->answer.negative_ttl : 0; }

static void candidate_done(resolution *res)
{
    transaction *a = &res->tx[0], *b = &res->tx[1];
    transaction *first = a->finished_order < b->finished_order ? a : b, *second = first == a ? b : a;
    if (first->status == DNS_OK || second->status == DNS_OK) {
        dns_addr addrs[2 * DNS_MAX_ADDRS];
        size_t n = 0;
        uint32_t ttl = UINT32_MAX;
        const transaction *order[2] = {first, second};
        for (size_t k = 0; k < 2; k++) {
            const transaction *tx = order[k];
            if (tx->status == DNS_OK) {
                memcpy(addrs + n, tx->answer.addrs, tx->answer.count * sizeof addrs[0]);
                n += tx->answer.count;
                ttl = min32(ttl, tx->answer.ttl);
            } else if (negative(tx)) { /* learn of the other family when it appears */
                ttl = min32(ttl, negative_ttl(tx));
            }
        }
        complete_addrs(res, addrs, n, ttl);
        return;
    }
    if (negative(a) && negative(b)) {
        res->negative_ttl = min32(res->negative_ttl, min32(negative_ttl(a), negative_ttl(b)));
        if (a->status == DNS_NODATA && b->status == DNS_NODATA)
            res->got_nodata = true;
    } else {
        const transaction *worse = negative(a) ? b : negative(b) ? a : (a->rank >= b->rank ? a : b);
        if (worse->status == DNS_TIMEOUT) { /* asking further would only multiply the wait */
            complete_status(res, DNS_TIMEOUT, NULL, 0);
            return;
        }
        if (worse->status == DNS_SERVFAIL) {
            res->got_servfail = true;
        } else {
            res->got_other = true;
            copy_text(res->other_detail, sizeof res->other_detail, worse->detail);
        }
    }
    if (++res->name_index < res->name_count) {
        start_name(res);
        return;
    }
    if (res->got_servfail)
        complete_status(res, DNS_SERVFAIL, NULL, 0);
    else if (res->got_other)
        complete_status(res, DNS_OTHER, res->other_detail, 0);
    else
        complete_status(res, res->got_nodata ? DNS_NODATA : DNS_NXDOMAIN, NULL, res->negative_ttl);
}

static void tx_reset(transaction *tx, resolution *res, uint16_t qtype, size_t first_server)
{
    tx->res = res;
    tx->qtype = qtype;
    tx->state = TX_IDLE;
    tx->fd = -1;
    tx->io.fd = -1;
    tx->timer.slot = 0;
    tx->tries = 0;
    tx->first_server = tx->server = first_server;
    tx->tcp_buf = NULL;
    tx->status = DNS_TIMEOUT;
    tx->rank = RANK_NONE;
    tx->detail[0] = '\0';
    tx->answer.count = 0;
    tx->answer.has_soa = false;
    tx->finished_order = 0;
}

static void start_name(resolution *res)
{
    dns_resolver *r = res->r;
    res->finished = 0;
    res->wire_len = dns_name_to_wire(res->names[res->name_index], res->wire);
    static const uint16_t types[2] = {DNS_TYPE_AAAA, DNS_TYPE_A};
    for (size_t i = 0; i < 2; i++) {
        transaction *tx = &res->tx[i];
        tx_close(tx);
        tx_reset(tx, res, types[i], res->ns.rotate ? r->rotate_next++ % res->ns.count : 0);
    }
    if (res->wire_len == 0) { /* a search domain made it too long, or a label is bad */
        res->tx[0].status = res->tx[1].status = DNS_NXDOMAIN;
        res->tx[0].finished_order = 1;
        res->tx[1].finished_order = 2;
        res->finished = 2;
        candidate_done(res);
        return;
    }
    /* Both go out before either can finish: a lookup that fails at once
     * must not look like a finished pair. */
    for (size_t i = 0; i < 2 && !res->done; i++)
        tx_send(&res->tx[i]);
}

static bool answer_from_files(resolution *res)
{
    dns_resolver *r = res->r;
    dns_addr addrs[DNS_MAX_ADDRS];
    size_t n = r->hosts ? dns_hosts_lookup(r->hosts, r->hosts_len, res->key, addrs, DNS_MAX_ADDRS) : 0;
    if (n == 0 && is_localhost(res->key)) {
        addrs[0] = (dns_addr){.family = AF_INET, .ip = {127, 0, 0, 1}};
        addrs[1] = (dns_addr){.family = AF_INET6, .ip = {[15] = 1}};
        n = 2;
    }
    if (n == 0)
        return false;
    complete_addrs(res, addrs, n, HOSTS_TTL_S);
    return true;
}

static void begin(resolution *res)
{
    dns_resolver *r = res->r;
    maybe_reload(r);
    const dns_conf *c = &r->conf;
    res->ns.count = c->server_count;
    for (size_t i = 0; i < c->server_count; i++) {
        memcpy(&res->ns.addrs[i], &c->servers[i], c->server_lens[i]);
        res->ns.lens[i] = c->server_lens[i];
    }
    res->ns.timeout_s = c->timeout_s;
    res->ns.attempts = c->attempts;
    res->ns.rotate = c->rotate;
    if (answer_from_files(res))
        return;
    uint8_t wire[DNS_NAME_MAX];
    res->name_count = dns_name_to_wire(res->key, wire) ? dns_search_names(c, res->key, res->names, MAX_NAMES) : 0;
    if (res->name_count == 0) {
        complete_status(res, DNS_OTHER, "invalid host name", 0);
        return;
    }
    start_name(res);
}

static resolution *find_inflight(dns_resolver *r, const char *key)
{
    for (resolution *res = r->inflight; res; res = res->next)
        if (strcmp(res->key, key) == 0)
            return res;
    return NULL;
}

static resolution *new_resolution(dns_resolver *r, const char *key)
{
    resolution *res = malloc(sizeof *res); /* not calloc: most of it is buffers written before use */
    if (!res)
        return NULL;
    res->r = r;
    copy_text(res->key, sizeof res->key, key);
    res->waiters = NULL;
    res->name_count = res->name_index = res->wire_len = 0;
    res->finished = 0;
    res->got_servfail = res->got_other = res->got_nodata = res->done = false;
    res->other_detail[0] = '\0';
    res->negative_ttl = UINT32_MAX;
    res->free_later = (loop_deferred){0};
    for (size_t i = 0; i < 2; i++)
        tx_reset(&res->tx[i], res, 0, 0);
    res->next = r->inflight;
    r->inflight = res;
    return res;
}

static void start_refresh(dns_resolver *r, const char *key)
{
    if (find_inflight(r, key))
        return;
    resolution *res = new_resolution(r, key);
    if (res)
        begin(res);
    else /* lets a later lookup try again */
        dns_cache_fail(r->cache, key, DNS_OTHER, "out of memory", loop_now_ms(r->loop));
}

/* ---- the public face ---- */

static dns_query *ready_query(dns_resolver *r, dns_query *q, dns_status status, const char *message)
{
    q->answer = (dns_cache_answer){.status = status, .generation = dns_cache_new_generation(r->cache)};
    copy_text(q->answer.detail, sizeof q->answer.detail, message);
    schedule(r, q);
    return q;
}

dns_query *dns_resolve(dns_resolver *r, const char *name, uint16_t port, dns_callback cb, void *ctx)
{
    dns_query *q = malloc(sizeof *q);
    if (!q)
        return NULL;
    q->next = q->prev = NULL;
    q->waiting_on = NULL;
    q->delivering = q->cancelled = false;
    q->deferred = (loop_deferred){0};
    q->port = port;
    q->cb = cb;
    q->ctx = ctx;
    char key[DNS_NAME_MAX + 1];
    if (!normalise(name, key))
        return ready_query(r, q, DNS_OTHER, "invalid host name");
    dns_addr literal;
    if (dns_parse_ip(key, &literal)) { /* nothing to ask */
        q->answer = (dns_cache_answer){.status = DNS_OK, .count = 1, .addrs = {literal},
                                       .generation = dns_cache_new_generation(r->cache)};
        copy_text(q->answer.detail, sizeof q->answer.detail, dns_status_label(DNS_OK));
        schedule(r, q);
        return q;
    }
    const dns_cache_answer *a;
    dns_cache_verdict v = dns_cache_get(r->cache, key, loop_now_ms(r->loop), &a);
    if (v != DNS_CACHE_MISS) {
        q->answer = *a;
        schedule(r, q);
        if (v == DNS_CACHE_HIT_REFRESH)
            start_refresh(r, key);
        return q;
    }
    resolution *res = find_inflight(r, key);
    bool fresh = res == NULL;
    if (fresh && !(res = new_resolution(r, key)))
        return ready_query(r, q, DNS_OTHER, "out of memory");
    q->waiting_on = res;
    q->next = res->waiters;
    if (res->waiters)
        res->waiters->prev = q;
    res->waiters = q;
    if (fresh)
        begin(res); /* may complete at once (hosts file): q is then scheduled, not called */
    return q;
}

void dns_cancel(dns_query *q)
{
    if (!q)
        return;
    if (q->delivering) {
        q->cancelled = true; /* deliver() frees it */
        return;
    }
    resolution *res = q->waiting_on;
    if (res) {
        if (q->prev)
            q->prev->next = q->next;
        else
            res->waiters = q->next;
        if (q->next)
            q->next->prev = q->prev;
    }
    free(q);
}

dns_peek_verdict dns_peek(dns_resolver *r, const char *name, uint16_t port, uint64_t known_generation,
                          dns_result *out)
{
    char key[DNS_NAME_MAX + 1];
    if (!normalise(name, key))
        return DNS_PEEK_MISS;
    const dns_cache_answer *a;
    dns_cache_verdict v = dns_cache_get(r->cache, key, loop_now_ms(r->loop), &a);
    if (v == DNS_CACHE_MISS)
        return DNS_PEEK_MISS;
    if (v == DNS_CACHE_HIT_REFRESH) {
        start_refresh(r, key);
        /* a refresh from the hosts file is done already: look again */
        if (dns_cache_get(r->cache, key, loop_now_ms(r->loop), &a) == DNS_CACHE_MISS)
            return DNS_PEEK_MISS;
    }
    if (a->generation == known_generation)
        return DNS_PEEK_SAME;
    fill_result(out, a, port);
    return DNS_PEEK_CHANGED;
}

void dns_resolver_free(dns_resolver *r)
{
    if (!r)
        return;
    while (r->inflight) {
        resolution *res = r->inflight;
        r->inflight = res->next;
        for (size_t i = 0; i < 2; i++)
            tx_close(&res->tx[i]);
        while (res->waiters) { /* their owners are gone without cancelling: drop them */
            dns_query *q = res->waiters;
            res->waiters = q->next;
            free(q);
        }
        free(res);
    }
    dns_cache_free(r->cache);
    free(r->hosts);
    free(r);
}
