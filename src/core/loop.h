/* The reactor: one epoll set for every socket, a binary min-heap of timers,
 * signals through signalfd, and work deferred to the end of a tick. */
#ifndef SSEGATE_LOOP_H
#define SSEGATE_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct loop loop;

typedef void (*io_handler)(void *ctx, uint32_t events);

/* Embedded in its owner. The owner's memory must stay valid until the end of
 * the tick in which loop_io_del was called (see loop_defer). */
typedef struct loop_io {
    int fd;
    uint32_t events;
    io_handler fn;
    void *ctx;
} loop_io;

typedef void (*timer_handler)(void *ctx);

typedef struct loop_timer {
    uint64_t due_ms;
    size_t slot; /* index in the heap + 1; 0 when not armed */
    timer_handler fn;
    void *ctx;
} loop_timer;

typedef void (*deferred_handler)(void *ctx);

typedef struct loop_deferred {
    struct loop_deferred *next;
    deferred_handler fn;
    void *ctx;
    bool queued;
} loop_deferred;

typedef void (*signal_handler)(void *ctx, int signo);

loop *loop_new(void);
void loop_free(loop *l);

int loop_io_add(loop *l, loop_io *w, int fd, uint32_t events, io_handler fn, void *ctx);
int loop_io_set(loop *l, loop_io *w, uint32_t events);
/* Stops watching w->fd (the caller closes it) and marks w dead, so an event
 * already fetched in this tick is not delivered. */
void loop_io_del(loop *l, loop_io *w);

/* Arms (or re-arms) t to fire after_ms from now. */
void loop_timer_arm(loop *l, loop_timer *t, uint64_t after_ms, timer_handler fn, void *ctx);
void loop_timer_stop(loop *l, loop_timer *t);
static inline bool loop_timer_armed(const loop_timer *t) { return t->slot != 0; }

/* Runs fn(ctx) after the current tick's events: the place to free objects
 * that an event later in the same tick might still point at. */
void loop_defer(loop *l, loop_deferred *d, deferred_handler fn, void *ctx);

/* Blocks the given signals and delivers them through a signalfd. */
int loop_signals(loop *l, const int *signals, size_t count, signal_handler fn, void *ctx);

/* Monotonic milliseconds, refreshed once per tick. */
uint64_t loop_now_ms(const loop *l);

/* Runs until loop_stop; returns 0, or -1 if epoll_wait fails. */
int loop_run(loop *l);
void loop_stop(loop *l);

#endif
