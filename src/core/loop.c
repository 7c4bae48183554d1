#include "core/loop.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

enum { MAX_EVENTS = 256 };

struct loop {
    int epfd;
    bool stopping;
    uint64_t now_ms;
    loop_timer **heap;
    size_t heap_len, heap_cap;
    loop_deferred *deferred_head, *deferred_tail;
    loop_io signal_io;
    signal_handler signal_fn;
    void *signal_ctx;
};

static uint64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

loop *loop_new(void)
{
    loop *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        free(l);
        return NULL;
    }
    l->signal_io.fd = -1;
    l->now_ms = monotonic_ms();
    return l;
}

static void run_deferred(loop *l);

void loop_free(loop *l)
{
    if (!l)
        return;
    run_deferred(l); /* frees queued by the last tick */
    if (l->signal_io.fd >= 0)
        close(l->signal_io.fd);
    close(l->epfd);
    free(l->heap);
    free(l);
}

uint64_t loop_now_ms(const loop *l) { return l->now_ms; }

int loop_io_add(loop *l, loop_io *w, int fd, uint32_t events, io_handler fn, void *ctx)
{
    w->fd = fd;
    w->events = events;
    w->fn = fn;
    w->ctx = ctx;
    struct epoll_event ev = {.events = events, .data.ptr = w};
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev);
}

int loop_io_set(loop *l, loop_io *w, uint32_t events)
{
    if (w->fd < 0 || w->events == events)
        return 0;
    w->events = events;
    struct epoll_event ev = {.events = events, .data.ptr = w};
    return epoll_ctl(l->epfd, EPOLL_CTL_MOD, w->fd, &ev);
}

void loop_io_del(loop *l, loop_io *w)
{
    if (w->fd < 0)
        return;
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    w->fd = -1;
}

/* ---- timers: a binary min-heap keyed on due_ms ---- */

static void heap_place(loop *l, size_t i, loop_timer *t)
{
    l->heap[i] = t;
    t->slot = i + 1;
}

static void heap_sift_up(loop *l, size_t i)
{
    loop_timer *t = l->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (l->heap[parent]->due_ms <= t->due_ms)
            break;
        heap_place(l, i, l->heap[parent]);
        i = parent;
    }
    heap_place(l, i, t);
}

static void heap_sift_down(loop *l, size_t i)
{
    loop_timer *t = l->heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= l->heap_len)
            break;
        if (child + 1 < l->heap_len && l->heap[child + 1]->due_ms < l->heap[child]->due_ms)
            child++;
        if (t->due_ms <= l->heap[child]->due_ms)
            break;
        heap_place(l, i, l->heap[child]);
        i = child;
    }
    heap_place(l, i, t);
}

void loop_timer_stop(loop *l, loop_timer *t)
{
    if (!t->slot)
        return;
    size_t i = t->slot - 1;
    t->slot = 0;
    l->heap_len--;
    if (i == l->heap_len)
        return;
    loop_timer *moved = l->heap[l->heap_len];
    heap_place(l, i, moved);
    heap_sift_down(l, i);
    heap_sift_up(l, moved->slot - 1);
}

void loop_timer_arm(loop *l, loop_timer *t, uint64_t after_ms, timer_handler fn, void *ctx)
{
    loop_timer_stop(l, t);
    if (l->heap_len == l->heap_cap) {
        size_t cap = l->heap_cap ? l->heap_cap * 2 : 64;
        loop_timer **grown = realloc(l->heap, cap * sizeof *grown);
        if (!grown)
            abort(); /* a timer that silently never fires would hang a request */
        l->heap = grown;
        l->heap_cap = cap;
    }
    t->due_ms = l->now_ms + after_ms;
    t->fn = fn;
    t->ctx = ctx;
    heap_place(l, l->heap_len, t);
    l->heap_len++;
    heap_sift_up(l, l->heap_len - 1);
}

static void run_due_timers(loop *l)
{
    /* At most the timers present at the start: one re-armed for 0 ms from
     * its own callback runs on the next tick instead of spinning this one. */
    size_t budget = l->heap_len;
    while (budget-- > 0 && l->heap_len > 0 && l->heap[0]->due_ms <= l->now_ms) {
        loop_timer *t = l->heap[0];
        loop_timer_stop(l, t);
        t->fn(t->ctx);
    }
}

static int next_timeout_ms(const loop *l)
{
    if (l->deferred_head)
        return 0;
    if (l->heap_len == 0)
        return -1;
    uint64_t due = l->heap[0]->due_ms;
    if (due <= l->now_ms)
        return 0;
    uint64_t wait = due - l->now_ms;
    return wait > 60000 ? 60000 : (int)wait;
}

/* ---- deferred work ---- */

void loop_defer(loop *l, loop_deferred *d, deferred_handler fn, void *ctx)
{
    if (d->queued)
        return;
    d->queued = true;
    d->fn = fn;
    d->ctx = ctx;
    d->next = NULL;
    if (l->deferred_tail)
        l->deferred_tail->next = d;
    else
        l->deferred_head = d;
    l->deferred_tail = d;
}

static void run_deferred(loop *l)
{
    while (l->deferred_head) {
        loop_deferred *d = l->deferred_head;
        l->deferred_head = d->next;
        if (!l->deferred_head)
            l->deferred_tail = NULL;
        d->queued = false;
        d->fn(d->ctx);
    }
}

/* ---- signals ---- */

static void on_signalfd(void *ctx, uint32_t events)
{
    loop *l = ctx;
    (void)events;
    struct signalfd_siginfo si;
    for (;;) {
        ssize_t n = read(l->signal_io.fd, &si, sizeof si);
        if (n < 0 && errno == EINTR)
            continue;
        if (n != (ssize_t)sizeof si)
            return;
        l->signal_fn(l->signal_ctx, (int)si.ssi_signo);
    }
}

int loop_signals(loop *l, const int *signals, size_t count, signal_handler fn, void *ctx)
{
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < count; i++)
        sigaddset(&set, signals[i]);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        return -1;
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        return -1;
    l->signal_fn = fn;
    l->signal_ctx = ctx;
    if (loop_io_add(l, &l->signal_io, fd, EPOLLIN, on_signalfd, l) != 0) {
        close(fd);
        l->signal_io.fd = -1;
        return -1;
    }
    return 0;
}

/* ---- the run loop ---- */

void loop_stop(loop *l) { l->stopping = true; }

int loop_run(loop *l)
{
    struct epoll_event events[MAX_EVENTS];
    l->stopping = false;
    while (!l->stopping) {
        int n = epoll_wait(l->epfd, events, MAX_EVENTS, next_timeout_ms(l));
        if (n < 0 && errno != EINTR)
            return -1;
        l->now_ms = monotonic_ms();
        for (int i = 0; i < n; i++) {
            loop_io *w = events[i].data.ptr;
            if (w->fd >= 0) /* deleted earlier in this tick */
                w->fn(w->ctx, events[i].events);
        }
        run_due_timers(l);
        run_deferred(l);
    }
    return 0;
}
