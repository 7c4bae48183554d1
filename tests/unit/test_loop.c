/* The reactor: timer heap order and bookkeeping, deferred work, io watches
 * and the suppression of events for watches deleted within a tick. */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/loop.h"
#include "unit.h"

/* ---- timers ---- */

typedef struct fire_log {
    loop *l;
    int order[64];
    uint64_t due[64];
    size_t count;
    int stop_after; /* loop_stop once this many have fired */
} fire_log;

typedef struct test_timer {
    loop_timer t;
    fire_log *log;
    int id;
    int fired;
} test_timer;

static void on_timer(void *ctx)
{
    test_timer *tt = ctx;
    fire_log *log = tt->log;
    tt->fired++;
    if (log->count < 64) {
        log->order[log->count] = tt->id;
        log->due[log->count] = tt->t.due_ms;
    }
    log->count++;
    CHECK(!loop_timer_armed(&tt->t));
    if ((int)log->count == log->stop_after)
        loop_stop(log->l);
}

static void on_stop(void *ctx) { loop_stop(ctx); }

TEST(loop_timers_fire_in_due_order)
{
    loop *l = loop_new();
    CHECK(l != NULL);
    fire_log log = {.l = l, .stop_after = 6};
    static const uint64_t after[] = {30, 10, 20, 5, 15, 0};
    test_timer timers[6];
    memset(timers, 0, sizeof timers);
    for (int i = 0; i < 6; i++) {
        timers[i].log = &log;
        timers[i].id = (int)after[i];
        loop_timer_arm(l, &timers[i].t, after[i], on_timer, &timers[i]);
        CHECK(loop_timer_armed(&timers[i].t));
    }
    uint64_t start = loop_now_ms(l);
    CHECK(loop_run(l) == 0);
    CHECK_EQ_SIZE(log.count, 6);
    static const int want[] = {0, 5, 10, 15, 20, 30};
    for (size_t i = 0; i < 6; i++)
        CHECK(log.order[i] == want[i]);
    /* Nothing fires early. */
    CHECK(loop_now_ms(l) >= start + 30);
    loop_free(l);
}

TEST(loop_timer_stop_and_rearm)
{
    loop *l = loop_new();
    fire_log log = {.l = l, .stop_after = -1};
    test_timer a = {.log = &log, .id = 1}, b = {.log = &log, .id = 2}, c = {.log = &log, .id = 3};
    loop_timer end = {0};
    loop_timer_arm(l, &a.t, 5, on_timer, &a);
    loop_timer_arm(l, &b.t, 10, on_timer, &b);
    loop_timer_arm(l, &c.t, 1000, on_timer, &c);
    loop_timer_stop(l, &a.t);
    CHECK(!loop_timer_armed(&a.t));
    loop_timer_stop(l, &a.t); /* stopping twice is harmless */
    /* Re-arming an armed timer moves it rather than adding it twice. */
    loop_timer_arm(l, &c.t, 1, on_timer, &c);
    loop_timer_arm(l, &c.t, 2, on_timer, &c);
    loop_timer_arm(l, &end, 40, on_stop, l);
    CHECK(loop_run(l) == 0);
    CHECK(a.fired == 0);
    CHECK(b.fired == 1);
    CHECK(c.fired == 1);
    CHECK_EQ_SIZE(log.count, 2);
    CHECK(log.order[0] == 3 && log.order[1] == 2);
    CHECK(!loop_timer_armed(&b.t) && !loop_timer_armed(&c.t) && !loop_timer_armed(&end));

    /* A stopped timer can be armed again, and fires. */
    loop_timer_arm(l, &a.t, 1, on_timer, &a);
    loop_timer_arm(l, &end, 5, on_stop, l);
    CHECK(loop_run(l) == 0);
    CHECK(a.fired == 1);
    loop_free(l);
}

/* A timer handler that re-arms itself a few times. */
typedef struct repeating {
    loop *l;
    loop_timer t;
    int left;
} repeating;

static void on_repeat(void *ctx)
{
    repeating *r = ctx;
    if (--r->left > 0)
        loop_timer_arm(r->l, &r->t, 1, on_repeat, r);
    else
        loop_stop(r->l);
}

TEST(loop_timer_rearm_from_handler)
{
    loop *l = loop_new();
    repeating r = {.l = l, .left = 5};
    loop_timer_arm(l, &r.t, 1, on_repeat, &r);
    CHECK(loop_run(l) == 0);
    CHECK(r.left == 0);
    loop_free(l);
}

/* A handler that re-arms its timer for 0 ms must not starve the rest of
 * the tick: the deferred work below still gets to run and stop the loop. */
typedef struct spinner {
    loop *l;
    loop_timer t;
    loop_deferred d;
    long calls;
    bool stopped;
} spinner;

static void on_spin_deferred(void *ctx)
{
    spinner *s = ctx;
    s->stopped = true;
    loop_stop(s->l);
}

static void on_spin(void *ctx)
{
    spinner *s = ctx;
    if (s->calls++ == 0)
        loop_defer(s->l, &s->d, on_spin_deferred, s);
    /* The cap only keeps a broken loop from hanging the suite. */
    if (!s->stopped && s->calls < 1000000)
        loop_timer_arm(s->l, &s->t, 0, on_spin, s);
}

TEST(loop_timer_zero_rearm_does_not_spin)
{
    loop *l = loop_new();
    spinner s = {.l = l};
    loop_timer_arm(l, &s.t, 0, on_spin, &s);
    CHECK(loop_run(l) == 0);
    CHECK(s.stopped);
    CHECK(s.calls < 10);
    loop_timer_stop(l, &s.t);
    loop_free(l);
}

/* Stopping another timer from a handler: the heap stays consistent. */
typedef struct stopper {
    loop *l;
    loop_timer t;
    loop_timer *victim;
} stopper;

static void on_stopper(void *ctx)
{
    stopper *s = ctx;
    loop_timer_stop(s->l, s->victim);
}

TEST(loop_timer_stopped_by_handler)
{
    loop *l = loop_new();
    fire_log log = {.l = l, .stop_after = -1};
    test_timer victim = {.log = &log, .id = 9};
    stopper s = {.l = l, .victim = &victim.t};
    loop_timer end = {0};
    /* Both due in the same tick; the stopper runs first. */
    loop_timer_arm(l, &s.t, 0, on_stopper, &s);
    loop_timer_arm(l, &victim.t, 1, on_timer, &victim);
    loop_timer_arm(l, &end, 20, on_stop, l);
    usleep(5000);
    CHECK(loop_run(l) == 0);
    CHECK(victim.fired == 0);
    loop_free(l);
}

/* xorshift: deterministic pseudo-random numbers */
static uint32_t rng_state = 2463534242u;
static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

enum { MANY = 2000 };

typedef struct many_log {
    uint64_t last_due;
    size_t fired;
    bool out_of_order;
} many_log;

typedef struct many_timer {
    loop_timer t;
    many_log *log;
    bool live; /* armed and not stopped */
    int fired;
} many_timer;

static void on_many(void *ctx)
{
    many_timer *m = ctx;
    if (m->t.due_ms < m->log->last_due)
        m->log->out_of_order = true;
    m->log->last_due = m->t.due_ms;
    m->log->fired++;
    m->fired++;
}

/* The armed timers' slots are exactly 1..n, each once. */
static bool slots_consistent(const many_timer *timers, size_t n)
{
    size_t armed = 0;
    bool *seen = calloc(n + 1, sizeof *seen);
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        if (timers[i].live != loop_timer_armed(&timers[i].t))
            ok = false;
        if (!timers[i].live)
            continue;
        armed++;
        size_t s = timers[i].t.slot;
        if (s == 0 || s > n || seen[s])
            ok = false;
        else
            seen[s] = true;
    }
    for (size_t s = 1; s <= armed; s++)
        if (!seen[s])
            ok = false;
    free(seen);
    return ok;
}

TEST(loop_many_timers_random_stops)
{
    loop *l = loop_new();
    many_log log = {0};
    many_timer *timers = calloc(MANY, sizeof *timers);
    for (size_t i = 0; i < MANY; i++) {
        timers[i].log = &log;
        loop_timer_arm(l, &timers[i].t, rng() % 40, on_many, &timers[i]);
        timers[i].live = true;
    }
    CHECK(slots_consistent(timers, MANY));
    /* Stop about half, re-arm some of those and some live ones. */
    for (size_t round = 0; round < 3 * MANY; round++) {
        many_timer *m = &timers[rng() % MANY];
        switch (rng() % 3) {
        case 0:
            loop_timer_stop(l, &m->t);
            m->live = false;
            break;
        case 1:
            loop_timer_arm(l, &m->t, rng() % 40, on_many, m);
            m->live = true;
            break;
        default:
            loop_timer_stop(l, &m->t);
            m->live = false;
            loop_timer_stop(l, &m->t);
        }
    }
    CHECK(slots_consistent(timers, MANY));
    size_t live = 0;
    for (size_t i = 0; i < MANY; i++)
        live += timers[i].live;
    loop_timer end = {0};
    loop_timer_arm(l, &end, 60, on_stop, l);
    CHECK(loop_run(l) == 0);
    CHECK(!log.out_of_order);
    CHECK_EQ_SIZE(log.fired, live);
    for (size_t i = 0; i < MANY; i++)
        if (timers[i].fired != (timers[i].live ? 1 : 0)) {
            unit_fail(__FILE__, __LINE__, "timer %zu fired %d times (live %d)", i, timers[i].fired,
                      (int)timers[i].live);
            break;
        }
    free(timers);
    loop_free(l);
}

/* ---- deferred work ---- */

typedef struct defer_test {
    loop *l;
    loop_deferred d, d2;
    loop_timer t1, t2;
    int deferred_runs;
    int second_runs;
    bool t2_saw_deferred;  /* t2 ran after the deferred work: wrong */
    bool deferred_saw_t2;  /* the deferred work ran after t2: right */
    bool t2_ran;
} defer_test;

static void on_second(void *ctx)
{
    defer_test *dt = ctx;
    dt->second_runs++;
    loop_stop(dt->l);
}

static void on_deferred(void *ctx)
{
    defer_test *dt = ctx;
    dt->deferred_runs++;
    dt->deferred_saw_t2 = dt->t2_ran;
    /* Work deferred from deferred work runs in the same drain. */
    loop_defer(dt->l, &dt->d2, on_second, dt);
}

static void on_t1(void *ctx)
{
    defer_test *dt = ctx;
    loop_defer(dt->l, &dt->d, on_deferred, dt);
    loop_defer(dt->l, &dt->d, on_deferred, dt); /* already queued: once */
    CHECK(dt->d.queued);
    CHECK(dt->deferred_runs == 0);
}

static void on_t2(void *ctx)
{
    defer_test *dt = ctx;
    dt->t2_ran = true;
    dt->t2_saw_deferred = dt->deferred_runs > 0;
}

TEST(loop_deferred_runs_after_the_tick)
{
    loop *l = loop_new();
    defer_test dt = {.l = l};
    loop_timer_arm(l, &dt.t1, 0, on_t1, &dt);
    loop_timer_arm(l, &dt.t2, 1, on_t2, &dt);
    usleep(3000); /* both due by the first tick */
    CHECK(loop_run(l) == 0);
    CHECK(dt.deferred_runs == 1);
    CHECK(dt.second_runs == 1);
    CHECK(dt.t2_ran);
    CHECK(!dt.t2_saw_deferred);
    CHECK(dt.deferred_saw_t2);
    CHECK(!dt.d.queued && !dt.d2.queued);
    /* Deferred work left at loop_free still runs (it frees things). */
    loop_defer(l, &dt.d2, on_second, &dt);
    loop_free(l);
    CHECK(dt.second_runs == 2);
}

/* ---- io ---- */

typedef struct pipe_watch {
    loop *l;
    loop_io io;
    int fds[2];
    char got[16];
    size_t got_len;
    int calls;
    uint32_t last_events;
    struct pipe_watch *other; /* deleted by this one's handler */
} pipe_watch;

static void on_readable(void *ctx, uint32_t events)
{
    pipe_watch *w = ctx;
    w->calls++;
    w->last_events = events;
    ssize_t n = read(w->io.fd, w->got + w->got_len, sizeof w->got - w->got_len);
    if (n > 0)
        w->got_len += (size_t)n;
    if (w->other) {
        loop_io_del(w->l, &w->other->io);
        CHECK(w->other->io.fd == -1);
    }
    loop_stop(w->l);
}

static int open_pipe(pipe_watch *w)
{
    return pipe2(w->fds, O_NONBLOCK | O_CLOEXEC);
}

TEST(loop_io_pipe)
{
    loop *l = loop_new();
    pipe_watch w = {.l = l};
    CHECK(open_pipe(&w) == 0);
    CHECK(loop_io_add(l, &w.io, w.fds[0], EPOLLIN, on_readable, &w) == 0);
    CHECK(w.io.fd == w.fds[0]);
    CHECK(write(w.fds[1], "ping", 4) == 4);
    CHECK(loop_run(l) == 0);
    CHECK(w.calls == 1);
    CHECK(w.last_events & EPOLLIN);
    CHECK_EQ_SIZE(w.got_len, 4);
    CHECK(memcmp(w.got, "ping", 4) == 0);

    /* Interest set to nothing: no events, the timer ends the run. */
    CHECK(loop_io_set(l, &w.io, 0) == 0);
    CHECK(write(w.fds[1], "x", 1) == 1);
    loop_timer end = {0};
    loop_timer_arm(l, &end, 10, on_stop, l);
    CHECK(loop_run(l) == 0);
    CHECK(w.calls == 1);
    /* And back on. */
    CHECK(loop_io_set(l, &w.io, EPOLLIN) == 0);
    CHECK(loop_run(l) == 0);
    CHECK(w.calls == 2);
    CHECK_EQ_SIZE(w.got_len, 5);

    /* Closing the write end: the reader sees EPOLLHUP. */
    close(w.fds[1]);
    CHECK(loop_run(l) == 0);
    CHECK(w.calls == 3);
    CHECK(w.last_events & EPOLLHUP);
    loop_io_del(l, &w.io);
    loop_io_del(l, &w.io); /* twice is harmless */
    CHECK(loop_io_set(l, &w.io, EPOLLIN) == 0); /* a deleted watch ignores this */
    close(w.fds[0]);
    loop_free(l);
}

TEST(loop_io_del_suppresses_pending_event)
{
    /* Two pipes readable in the same tick; whichever handler runs first
     * deletes the other's watch, whose fetched event must not be delivered. */
    loop *l = loop_new();
    pipe_watch a = {.l = l}, b = {.l = l};
    CHECK(open_pipe(&a) == 0 && open_pipe(&b) == 0);
    a.other = &b;
    b.other = &a;
    CHECK(loop_io_add(l, &a.io, a.fds[0], EPOLLIN, on_readable, &a) == 0);
    CHECK(loop_io_add(l, &b.io, b.fds[0], EPOLLIN, on_readable, &b) == 0);
    CHECK(write(a.fds[1], "a", 1) == 1);
    CHECK(write(b.fds[1], "b", 1) == 1);
    CHECK(loop_run(l) == 0);
    CHECK(a.calls + b.calls == 1);
    /* The deleted watch stays silent in later ticks too. */
    pipe_watch *alive = a.calls ? &a : &b;
    alive->other = NULL;
    loop_timer end = {0};
    loop_timer_arm(l, &end, 10, on_stop, l);
    CHECK(loop_run(l) == 0);
    CHECK(a.calls + b.calls == 1);
    loop_io_del(l, &alive->io);
    close(a.fds[0]);
    close(a.fds[1]);
    close(b.fds[0]);
    close(b.fds[1]);
    loop_free(l);
}

/* ---- signals ---- */

typedef struct sig_test {
    loop *l;
    int signo;
} sig_test;

static void on_signal(void *ctx, int signo)
{
    sig_test *s = ctx;
    s->signo = signo;
    loop_stop(s->l);
}

TEST(loop_signalfd)
{
    loop *l = loop_new();
    sig_test s = {.l = l};
    int sigs[] = {SIGUSR2};
    CHECK(loop_signals(l, sigs, 1, on_signal, &s) == 0);
    CHECK(raise(SIGUSR2) == 0);
    CHECK(loop_run(l) == 0);
    CHECK(s.signo == SIGUSR2);
    loop_free(l);
}
