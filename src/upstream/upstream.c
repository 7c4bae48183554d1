#include "upstream/upstream.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/log.h"

typedef enum conn_state { CONN_RESOLVING, CONN_CONNECTING, CONN_WAITING_SESSION, CONN_READY, CONN_IDLE } conn_state;

/* At most this many connections wait for an upstream's first TLS session;
 * any more make full handshakes of their own. */
enum { MAX_SESSION_WAITERS = 256 };

struct upstream_conn {
    upstream_target *target;
    loop *loop;
    loop_io io;
    int fd;
    conn_state state;
    size_t addr_index;
    uint64_t addr_generation; /* of the target's addresses addr_index counts in */
    struct sockaddr_storage peer; /* the address connected to, for the pool to follow DNS */
    socklen_t peer_len;
    dns_query *query;             /* while resolving */
    tls_conn *tls;
    bool reused, want_read, want_write;
    loop_timer timer; /* connect timeout, or idle expiry in the pool */
    loop_deferred deferred;
    const upstream_events *ev;
    void *ctx;
    int last_errno;
    upstream_conn *next_idle, *prev_idle;
    upstream_conn *next_waiting, *prev_waiting;
    loop_deferred wake; /* ends the wait for the first TLS session */
    char error[512];
};

int upstream_target_init(upstream_target *t, const char *base_url, const char *api_key, const char *ca_file,
                         const char **why)
{
    memset(t, 0, sizeof *t);
    t->max_idle = 256;
    t->idle_timeout_ms = 30000;
    if (url_parse(base_url, &t->base, why) != 0)
        return -1;
    snprintf(t->name, sizeof t->name, "%s:%u", t->base.host, t->base.port);

    dns_addr literal;
    t->needs_dns = !dns_parse_ip(t->base.host, &literal);
    if (!t->needs_dns) {
        t->addr_lens[0] = dns_addr_to_sockaddr(&literal, t->base.port, &t->addrs[0]);
        t->addr_count = 1;
    }

    if (api_key && *api_key) {
        size_t n = strlen(api_key) + sizeof "Bearer ";
        t->auth_header = malloc(n);
        if (!t->auth_header) {
            *why = "out of memory";
            return -1;
        }
        snprintf(t->auth_header, n, "Bearer %s", api_key);
    }
    if (t->base.tls) {
        t->trust = tls_trust_load(ca_file, why);
        if (!t->trust)
            return -1;
        t->sessions = tls_session_cache_new();
        if (!t->sessions) {
            *why = "out of memory";
            return -1;
        }
    }
    return 0;
}

static void conn_close(upstream_conn *c);

static bool pool_may_keep(const upstream_target *t, const upstream_conn *c)
{
    for (size_t i = 0; i < t->addr_count; i++)
        if (t->addr_lens[i] == c->peer_len && memcmp(&t->addrs[i], &c->peer, c->peer_len) == 0)
            return true;
    return false;
}

/* A newer answer for the host: the addresses to connect to from now on;
 * idle connections to addresses the name no longer has are closed. */
static void take_answer(upstream_target *t, const dns_result *res)
{
    if (res->generation <= t->dns_generation)
        return;
    t->dns_generation = res->generation;
    t->dns_failed = res->status != DNS_OK;
    snprintf(t->dns_error, sizeof t->dns_error, "%s", res->message);
    size_t n = t->dns_failed ? 0 : res->count < UPSTREAM_MAX_ADDRS ? res->count : UPSTREAM_MAX_ADDRS;
    memcpy(t->addrs, res->addrs, n * sizeof t->addrs[0]);
    memcpy(t->addr_lens, res->lens, n * sizeof t->addr_lens[0]);
    t->addr_count = n;
    for (upstream_conn *c = t->idle, *next; c; c = next) {
        next = c->next_idle;
        if (!pool_may_keep(t, c))
            conn_close(c);
    }
}

static void on_prefetched(void *ctx, const dns_result *res)
{
    upstream_target *t = ctx;
    t->prefetch = NULL;
    take_answer(t, res);
    if (res->status != DNS_OK) {
        log_field f[] = {{"upstream", t->base.host}, {"error", res->message}};
        log_message("warn", "upstream DNS lookup failed", f, 2);
    }
}

void upstream_target_use_resolver(upstream_target *t, dns_resolver *r)
{
    t->resolver = r;
    if (t->needs_dns && r && !t->prefetch)
        t->prefetch = dns_resolve(r, t->base.host, t->base.port, on_prefetched, t);
}

void upstream_target_free(upstream_target *t, loop *l)
{
    (void)l;
    dns_cancel(t->prefetch);
    while (t->idle)
        conn_close(t->idle);
    if (t->auth_header) {
        explicit_bzero(t->auth_header, strlen(t->auth_header));
        free(t->auth_header);
    }
    tls_trust_free(t->trust);
    tls_session_cache_free(t->sessions);
    memset(t, 0, sizeof *t);
}

/* ---- the pool ---- */

static void idle_unlink(upstream_conn *c)
{
    upstream_target *t = c->target;
    if (c->prev_idle)
        c->prev_idle->next_idle = c->next_idle;
    else
        t->idle = c->next_idle;
    if (c->next_idle)
        c->next_idle->prev_idle = c->prev_idle;
    c->next_idle = c->prev_idle = NULL;
    t->idle_count--;
}

static void free_conn(void *ctx) { free(ctx); }

/* ---- TLS cold start: one full handshake, the rest resume its session ---- */

static bool waiting_linked(const upstream_conn *c)
{
    return c->prev_waiting || c->target->tls_waiting == c;
}

static void waiting_unlink(upstream_conn *c)
{
    upstream_target *t = c->target;
    if (c->prev_waiting)
        c->prev_waiting->next_waiting = c->next_waiting;
    else
        t->tls_waiting = c->next_waiting;
    if (c->next_waiting)
        c->next_waiting->prev_waiting = c->prev_waiting;
    else
        t->tls_waiting_tail = c->prev_waiting;
    c->next_waiting = c->prev_waiting = NULL;
    t->tls_waiting_count--;
}

static void start_tls(upstream_conn *c);

static void on_session_wake(void *ctx)
{
    upstream_conn *c = ctx;
    if (c->fd >= 0 && c->state == CONN_WAITING_SESSION) /* not closed meanwhile */
        start_tls(c);
}

/* The first handshake finished or failed: the waiting connections go on in
 * order, resuming its session if there is one, each making its own
 * otherwise. Deferred, so that their owners do not run inside the first
 * connection's I/O call. */
static void first_handshake_over(upstream_target *t)
{
    t->tls_first = NULL;
    while (t->tls_waiting) {
        upstream_conn *w = t->tls_waiting;
        waiting_unlink(w);
        loop_defer(w->loop, &w->wake, on_session_wake, w);
    }
}

/* True when c, freshly connected, should wait for the handshake in flight
 * rather than start one of its own; it is then queued. */
static bool wait_for_first_session(upstream_conn *c)
{
    upstream_target *t = c->target;
    if (!t->tls_first || tls_session_cache_ready(t->sessions) ||
        t->tls_waiting_count >= MAX_SESSION_WAITERS)
        return false;
    c->state = CONN_WAITING_SESSION;
    c->next_waiting = NULL;
    c->prev_waiting = t->tls_waiting_tail;
    if (t->tls_waiting_tail)
        t->tls_waiting_tail->next_waiting = c;
    else
        t->tls_waiting = c;
    t->tls_waiting_tail = c;
    t->tls_waiting_count++;
    /* Only a hang-up can come now, and it ends the wait. */
    loop_io_set(c->loop, &c->io, EPOLLRDHUP);
    return true;
}

/* After I/O on the connection making the first session. A server that
 * completes a handshake but gives no session to resume is not waited for
 * again: waiting would only delay the others. */
static void check_first_handshake(upstream_conn *c, bool failed)
{
    upstream_target *t = c->target;
    if (t->tls_first != c || (!failed && !tls_handshake_done(c->tls)))
        return;
    if (!failed && !tls_session_cache_ready(t->sessions))
        t->tls_sessionless = true;
    first_handshake_over(t);
}

static void conn_close(upstream_conn *c)
{
    if (c->state == CONN_IDLE)
        idle_unlink(c);
    if (c->state == CONN_WAITING_SESSION && waiting_linked(c))
        waiting_unlink(c);
    if (c->target->tls_first == c)
        first_handshake_over(c->target);
    loop_timer_stop(c->loop, &c->timer);
    dns_cancel(c->query);
    c->query = NULL;
    if (c->fd >= 0) {
        loop_io_del(c->loop, &c->io);
        if (c->tls)
            tls_close(c->tls, c->fd);
        close(c->fd);
        c->fd = -1;
    }
    tls_free(c->tls);
    c->tls = NULL;
    /* An event for this fd may still be queued in this tick. */
    loop_defer(c->loop, &c->deferred, free_conn, c);
}

static void on_idle_event(void *ctx, uint32_t events)
{
    (void)events; /* an idle upstream speaking or closing is done for */
    conn_close(ctx);
}

static void on_idle_expired(void *ctx) { conn_close(ctx); }

/* A TLS connection that stayed idle a moment gives back the pages large
 * records touched; one reused at once keeps them, so a busy pool does not
 * fault them in again on every request. */
enum { TLS_TRIM_AFTER_MS = 1000 };

static void on_idle_trim(void *ctx)
{
    upstream_conn *c = ctx;
    tls_idle(c->tls);
    /* armed only when the idle timeout is longer than TLS_TRIM_AFTER_MS */
    loop_timer_arm(c->loop, &c->timer, c->target->idle_timeout_ms - TLS_TRIM_AFTER_MS, on_idle_expired, c);
}

void upstream_release(upstream_conn *c, bool reusable)
{
    upstream_target *t = c->target;
    loop_timer_stop(c->loop, &c->timer);
    if (t->tls_first == c) /* its handshake will not go further */
        first_handshake_over(t);
    if (!reusable || c->state != CONN_READY || t->idle_count >= t->max_idle) {
        conn_close(c);
        return;
    }
    c->state = CONN_IDLE;
    c->ev = NULL;
    c->ctx = NULL;
    c->io.fn = on_idle_event;
    c->io.ctx = c;
    loop_io_set(c->loop, &c->io, EPOLLIN | EPOLLRDHUP);
    c->next_idle = t->idle;
    c->prev_idle = NULL;
    if (t->idle)
        t->idle->prev_idle = c;
    t->idle = c;
    t->idle_count++;
    if (c->tls && t->idle_timeout_ms > TLS_TRIM_AFTER_MS)
        loop_timer_arm(c->loop, &c->timer, TLS_TRIM_AFTER_MS, on_idle_trim, c);
    else
        loop_timer_arm(c->loop, &c->timer, t->idle_timeout_ms, on_idle_expired, c);
}

/* ---- connecting ---- */

static void on_conn_io(void *ctx, uint32_t events);

static void fail(upstream_conn *c, upstream_failure kind, const char *fmt, const char *detail)
{
    snprintf(c->error, sizeof c->error, fmt, c->target->name, detail);
    const upstream_events *ev = c->ev;
    void *ctx = c->ctx;
    conn_close(c);
    ev->failed(ctx, kind, c->error);
}

static void fail_dns(upstream_conn *c, const char *what)
{
    snprintf(c->error, sizeof c->error, "upstream DNS failed: %s: %s", c->target->base.host, what);
    const upstream_events *ev = c->ev;
    void *ctx = c->ctx;
    conn_close(c);
    ev->failed(ctx, UPSTREAM_FAIL_DNS, c->error);
}

static void update_events(upstream_conn *c)
{
    uint32_t want = EPOLLRDHUP;
    if (c->state == CONN_CONNECTING) {
        want |= EPOLLOUT;
    } else if (c->tls && !tls_handshake_done(c->tls)) {
        /* Mid-handshake the engine alone knows what it waits for; a
         * writable socket would wake the owner for nothing, again and again. */
        want |= tls_events(c->tls);
    } else {
        if (c->want_read)
            want |= EPOLLIN;
        if (c->want_write)
            want |= EPOLLOUT;
        if (c->tls) {
            /* Once the handshake is done, EPOLLIN is the owner's call alone:
             * an idle engine always asks for input, which would spin while
             * the owner holds back for backpressure. */
            uint32_t engine = tls_events(c->tls);
            if (tls_handshake_done(c->tls) && !c->want_read)
                engine &= ~(uint32_t)EPOLLIN;
            want |= engine;
        }
    }
    loop_io_set(c->loop, &c->io, want);
}

/* Starts a connect to the next address; false when none is left. */
static bool try_next_address(upstream_conn *c)
{
    upstream_target *t = c->target;
    if (c->addr_generation != t->dns_generation) { /* DNS moved meanwhile: start over on the new list */
        c->addr_generation = t->dns_generation;
        c->addr_index = 0;
    }
    while (c->addr_index < t->addr_count) {
        size_t i = c->addr_index++;
        int fd = socket(t->addrs[i].ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            c->last_errno = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int rc;
        do
            rc = connect(fd, (const struct sockaddr *)&t->addrs[i], t->addr_lens[i]);
        while (rc < 0 && errno == EINTR);
        if (rc < 0 && errno != EINPROGRESS) {
            c->last_errno = errno;
            close(fd);
            continue;
        }
        c->fd = fd;
        memcpy(&c->peer, &t->addrs[i], t->addr_lens[i]);
        c->peer_len = t->addr_lens[i];
        if (loop_io_add(c->loop, &c->io, fd, EPOLLOUT | EPOLLRDHUP, on_conn_io, c) != 0) {
            c->last_errno = errno;
            close(fd);
            c->fd = -1;
            continue;
        }
        return true;
    }
    return false;
}

static void on_connect_timeout(void *ctx)
{
    upstream_conn *c = ctx;
    if (c->state == CONN_RESOLVING) { /* the connect budget covers the lookup too */
        fail_dns(c, dns_status_label(DNS_TIMEOUT));
        return;
    }
    fail(c, UPSTREAM_FAIL_CONNECT_TIMEOUT, "connect to upstream %s timed out%s",
         c->state == CONN_WAITING_SESSION ? " waiting for the first TLS handshake" : "");
}

static void become_ready(upstream_conn *c)
{
    loop_timer_stop(c->loop, &c->timer);
    c->state = CONN_READY;
    update_events(c);
    c->ev->ready(c->ctx);
}

static void connect_finished(upstream_conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err == 0) {
        if (!c->target->base.tls)
            become_ready(c);
        else if (!wait_for_first_session(c))
            start_tls(c);
        return;
    }
    c->last_errno = err;
    loop_io_del(c->loop, &c->io);
    close(c->fd);
    c->fd = -1;
    if (!try_next_address(c))
        fail(c, UPSTREAM_FAIL_CONNECT, "connect to upstream %s failed: %s", strerror(c->last_errno));
}

/* With no session cached, the first connection to get here makes it
 * and others wait for it (wait_for_first_session). */
static void start_tls(upstream_conn *c)
{
    upstream_target *t = c->target;
    c->tls = tls_client_new(t->trust, t->base.host, t->sessions);
    if (!c->tls) {
        fail(c, UPSTREAM_FAIL_TLS, "TLS with upstream %s failed: %s", "out of memory");
        return;
    }
    if (tls_session_cache_ready(t->sessions))
        t->tls_sessionless = false; /* it gives sessions after all */
    else if (!t->tls_first && !t->tls_sessionless)
        t->tls_first = c;
    become_ready(c);
}

static void on_conn_io(void *ctx, uint32_t events)
{
    upstream_conn *c = ctx;
    if (c->state == CONN_CONNECTING) {
        connect_finished(c);
        return;
    }
    if (c->state == CONN_WAITING_SESSION) {
        if (waiting_linked(c)) /* else already woken, its start deferred */
            waiting_unlink(c);
        fail(c, UPSTREAM_FAIL_CONNECT, "connect to upstream %s failed: %s",
             "closed by the upstream while waiting for the first TLS handshake");
        return;
    }
    /* Records the engine still holds go out whether or not the owner has
     * more to write. */
    if (c->tls && (events & EPOLLOUT) && tls_flush(c->tls, c->fd) != 0 && errno != EAGAIN)
        events |= EPOLLERR;
    if (c->tls)
        check_first_handshake(c, false);
    c->ev->io(c->ctx, events);
}

static void deliver_pooled(void *ctx)
{
    upstream_conn *c = ctx;
    if (c->fd < 0) { /* released before its delivery: conn_close's own deferral found this one queued */
        free(c);
        return;
    }
    c->ev->ready(c->ctx);
}

static void on_no_address(void *ctx)
{
    upstream_conn *c = ctx;
    fail(c, UPSTREAM_FAIL_CONNECT, "connect to upstream %s failed: %s",
         strerror(c->last_errno ? c->last_errno : EHOSTUNREACH));
}

static void on_resolved(void *ctx, const dns_result *res)
{
    upstream_conn *c = ctx;
    c->query = NULL;
    /* The target holds the newest answer, this one or one taken meanwhile. */
    take_answer(c->target, res);
    if (c->target->dns_failed) {
        fail_dns(c, c->target->dns_error);
        return;
    }
    c->state = CONN_CONNECTING;
    if (!try_next_address(c)) /* the timer still runs: the rest of the budget is the connect's */
        on_no_address(c);
}

static void on_dns_unusable(void *ctx)
{
    upstream_conn *c = ctx;
    fail_dns(c, c->target->resolver ? c->target->dns_error : "no resolver configured");
}

upstream_conn *upstream_open(upstream_target *t, loop *l, uint64_t connect_timeout_ms, bool pooled,
                             const upstream_events *ev, void *ctx)
{
    bool resolve = false;
    if (t->needs_dns && t->resolver) {
        dns_result res;
        dns_peek_verdict v = dns_peek(t->resolver, t->base.host, t->base.port, t->dns_generation, &res);
        if (v == DNS_PEEK_CHANGED)
            take_answer(t, &res);
        resolve = v == DNS_PEEK_MISS;
    }
    bool usable = !t->needs_dns || (t->resolver && !resolve && !t->dns_failed);
    upstream_conn *c = pooled && usable ? t->idle : NULL;
    if (c) {
        idle_unlink(c);
        loop_timer_stop(l, &c->timer);
        c->state = CONN_READY;
        c->reused = true;
        c->ev = ev;
        c->ctx = ctx;
        c->io.fn = on_conn_io;
        c->io.ctx = c;
        /* Interest stays EPOLLIN|EPOLLRDHUP as in the pool: that is what the
         * owner wants once its request is written, so no epoll_ctl here. */
        c->want_read = true;
        c->want_write = false;
        t->reuses++;
        /* Keep the promise of never calling back before returning. */
        loop_defer(l, &c->deferred, deliver_pooled, c);
        return c;
    }
    c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->target = t;
    c->loop = l;
    c->fd = -1;
    c->io.fd = -1;
    c->ev = ev;
    c->ctx = ctx;
    c->state = CONN_CONNECTING;
    c->addr_generation = t->dns_generation;
    t->connects++;
    if (resolve) {
        c->state = CONN_RESOLVING;
        c->query = dns_resolve(t->resolver, t->base.host, t->base.port, on_resolved, c);
        if (!c->query) {
            free(c);
            return NULL;
        }
        loop_timer_arm(l, &c->timer, connect_timeout_ms, on_connect_timeout, c);
        return c;
    }
    if (!usable)
        loop_timer_arm(l, &c->timer, 0, on_dns_unusable, c);
    else if (try_next_address(c))
        loop_timer_arm(l, &c->timer, connect_timeout_ms, on_connect_timeout, c);
    else /* report through the loop, not from inside this call */
        loop_timer_arm(l, &c->timer, 0, on_no_address, c);
    return c;
}

bool upstream_was_reused(const upstream_conn *c) { return c->reused; }
bool upstream_is_tls(const upstream_conn *c) { return c->tls != NULL; }
bool upstream_tls_resumed(const upstream_conn *c) { return c->tls && tls_resumed(c->tls); }

void upstream_want(upstream_conn *c, bool read, bool write)
{
    c->want_read = read;
    c->want_write = write;
    if (c->state == CONN_READY)
        update_events(c);
}

static void note_error(upstream_conn *c, int err)
{
    if (c->tls && tls_error(c->tls))
        snprintf(c->error, sizeof c->error, "%s", tls_error(c->tls));
    else
        snprintf(c->error, sizeof c->error, "%s", strerror(err));
}

/* After a read or write: remember why it failed, and let TLS state its
 * needs. errno survives for the caller. */
static ssize_t after_io(upstream_conn *c, ssize_t n)
{
    int err = errno;
    if (n < 0 && err != EAGAIN)
        note_error(c, err);
    if (c->tls) {
        check_first_handshake(c, n < 0 && err != EAGAIN);
        update_events(c);
    }
    errno = err;
    return n;
}

ssize_t upstream_read(upstream_conn *c, void *buf, size_t cap)
{
    ssize_t n;
    if (c->tls) {
        n = tls_read(c->tls, c->fd, buf, cap);
    } else {
        do
            n = read(c->fd, buf, cap);
        while (n < 0 && errno == EINTR);
    }
    return after_io(c, n);
}

ssize_t upstream_writev(upstream_conn *c, const struct iovec *iov, size_t count)
{
    ssize_t n;
    if (c->tls) {
        /* The engine copies into its own buffer; give it the first piece. */
        size_t i = 0;
        while (i < count && iov[i].iov_len == 0)
            i++;
        if (i == count)
            return 0;
        n = tls_write(c->tls, c->fd, iov[i].iov_base, iov[i].iov_len);
    } else {
        do
            n = writev(c->fd, iov, (int)(count > IOV_MAX ? IOV_MAX : count));
        while (n < 0 && errno == EINTR);
    }
    return after_io(c, n);
}

const char *upstream_error(const upstream_conn *c) { return c->error; }
