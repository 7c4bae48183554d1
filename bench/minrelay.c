/* minrelay: the floor the bench compares proxies to. For every accepted
 * client it opens one connection to the upstream and copies bytes both ways,
 * parsing nothing. One epoll loop, non-blocking sockets, edge-triggered; any
 * event on either side pumps both directions, and a direction stops reading
 * while its buffer still holds bytes the peer has not taken (backpressure).
 * Usage: minrelay LISTEN_PORT UPSTREAM_PORT (both on 127.0.0.1). Prints
 * "LISTEN 127.0.0.1:PORT" once it accepts; a port of 0 picks one. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { BUF_SIZE = 16384, MAX_EVENTS = 256 };

typedef struct pair pair;

/* One direction: bytes read from `from` wait in buf[off..len) for `to`. */
typedef struct {
    int from, to;
    char *buf; /* BUF_SIZE bytes, malloc'd: pages become resident only when used */
    size_t off, len;
    bool eof;      /* `from` said it sends no more */
    bool shut;     /* and `to` was told so, once buf drained */
} flow;

typedef struct {
    pair *p;
} end; /* what epoll hands back for one socket */

struct pair {
    end client_end, upstream_end;
    flow up, down; /* client to upstream, upstream to client */
    bool dead;
    pair *next_dead;
};

static struct sockaddr_in upstream_addr;
static pair *dead_list;

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Closing removes both sockets from epoll; the memory waits until the
 * current batch of events, which may still name it, is done. */
static void pair_close(pair *p)
{
    if (p->dead)
        return;
    p->dead = true;
    close(p->up.from);
    close(p->up.to);
    p->next_dead = dead_list;
    dead_list = p;
}

/* Moves what it can; false when the pair must close. */
static bool flow_pump(flow *f)
{
    for (;;) {
        while (f->off < f->len) {
            ssize_t n = write(f->to, f->buf + f->off, f->len - f->off);
            if (n > 0) {
                f->off += (size_t)n;
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == ENOTCONN))
                return true; /* peer full (or still connecting): read no more for now */
            return false;
        }
        f->off = f->len = 0;
        if (f->eof) {
            if (!f->shut) {
                f->shut = true;
                shutdown(f->to, SHUT_WR);
            }
            return true;
        }
        ssize_t n = read(f->from, f->buf, BUF_SIZE);
        if (n > 0) {
            f->len = (size_t)n;
            continue;
        }
        if (n == 0) {
            f->eof = true;
            continue;
        }
        if (errno == EINTR)
            continue;
        return errno == EAGAIN;
    }
}

static void pair_pump(pair *p)
{
    if (p->dead)
        return;
    if (!flow_pump(&p->up) || !flow_pump(&p->down) || (p->up.shut && p->down.shut))
        pair_close(p);
}

static void accept_one(int ep, int client)
{
    set_nodelay(client);
    int upstream = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (upstream < 0) {
        close(client);
        return;
    }
    set_nodelay(upstream);
    if (connect(upstream, (struct sockaddr *)&upstream_addr, sizeof upstream_addr) < 0 && errno != EINPROGRESS) {
        close(client);
        close(upstream);
        return;
    }
    pair *p = calloc(1, sizeof *p);
    char *bufs = malloc(2 * BUF_SIZE);
    if (!p || !bufs) {
        free(p);
        free(bufs);
        close(client);
        close(upstream);
        return;
    }
    p->up.buf = bufs;
    p->down.buf = bufs + BUF_SIZE;
    p->client_end.p = p;
    p->upstream_end.p = p;
    p->up.from = client;
    p->up.to = upstream;
    p->down.from = upstream;
    p->down.to = client;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
    ev.data.ptr = &p->client_end;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, client, &ev) < 0) {
        pair_close(p);
        return;
    }
    ev.data.ptr = &p->upstream_end;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, upstream, &ev) < 0) {
        pair_close(p);
        return;
    }
    pair_pump(p);
}

static int parse_port(const char *s)
{
    char *end_of;
    long v = strtol(s, &end_of, 10);
    return (*s && !*end_of && v >= 0 && v <= 65535) ? (int)v : -1;
}

int main(int argc, char **argv)
{
    int listen_port = argc == 3 ? parse_port(argv[1]) : -1;
    int upstream_port = argc == 3 ? parse_port(argv[2]) : -1;
    if (listen_port < 0 || upstream_port <= 0) {
        fputs("usage: minrelay LISTEN_PORT UPSTREAM_PORT\n", stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    upstream_addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)upstream_port)};
    upstream_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons((uint16_t)listen_port)};
    la.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t la_len = sizeof la;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&la, sizeof la) < 0 || listen(lfd, 4096) < 0 ||
        getsockname(lfd, (struct sockaddr *)&la, &la_len) < 0) {
        perror("minrelay: listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0) {
        perror("minrelay: epoll");
        return 1;
    }
    printf("LISTEN 127.0.0.1:%d\n", ntohs(la.sin_port));
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("minrelay: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            end *e = events[i].data.ptr;
            if (!e) {
                for (;;) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0)
                        break; /* EAGAIN, or out of descriptors: try again on the next event */
                    accept_one(ep, c);
                }
                continue;
            }
            if (events[i].events & EPOLLERR)
                pair_close(e->p);
            else
                pair_pump(e->p);
        }
        while (dead_list) {
            pair *p = dead_list;
            dead_list = p->next_dead;
            free(p->up.buf);
            free(p);
        }
    }
}
