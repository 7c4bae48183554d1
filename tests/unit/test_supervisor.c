/* The --workers supervisor, with workers that are plain functions: a clean
 * drain, a first generation that cannot start, and restarts with backoff. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/supervisor.h"
#include "unit.h"

typedef struct probe {
    int serving_calls; /* in the supervisor */
    int starts_write;  /* every worker writes its start time here */
} probe;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The supervisor's log lines would clutter the runner's output. */
static int quiet_stderr(void)
{
    int saved = dup(STDERR_FILENO);
    int null = open("/dev/null", O_WRONLY);
    dup2(null, STDERR_FILENO);
    close(null);
    return saved;
}

static void restore_stderr(int saved)
{
    dup2(saved, STDERR_FILENO);
    close(saved);
}

/* supervise leaves its signals blocked: take what is pending, then unblock,
 * so the tests that follow run as before. */
static void restore_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    struct timespec zero = {0, 0};
    while (sigtimedwait(&set, NULL, &zero) > 0)
        ;
    sigprocmask(SIG_UNBLOCK, &set, NULL);
}

static int worker_until_sigterm(void *ctx)
{
    (void)ctx;
    supervisor_worker_ready();
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    int signo = 0;
    /* blocked by the supervisor for us, as for a worker's signalfd */
    if (sigwait(&set, &signo) != 0 || signo != SIGTERM)
        return 7;
    return 0;
}

static void serving_then_stop(void *ctx)
{
    probe *p = ctx;
    p->serving_calls++;
    kill(getpid(), SIGTERM);
}

TEST(supervisor_drains_on_sigterm)
{
    probe p = {0};
    supervisor_plan plan = {.workers = 3, .stop_grace_ms = 5000, .worker = worker_until_sigterm,
                            .serving = serving_then_stop, .ctx = &p};
    uint64_t t0 = mono_ms();
    int saved = quiet_stderr();
    int status = supervise(&plan);
    restore_stderr(saved);
    restore_signals();
    CHECK(status == 0);
    CHECK(p.serving_calls == 1);
    CHECK(mono_ms() - t0 < 3000);
    CHECK(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD); /* no worker left behind */
}

static int worker_fails_at_start(void *ctx)
{
    (void)ctx;
    return 3;
}

static void serving_counts(void *ctx)
{
    probe *p = ctx;
    p->serving_calls++;
}

TEST(supervisor_start_up_failure_is_the_exit_status)
{
    probe p = {0};
    supervisor_plan plan = {.workers = 2, .stop_grace_ms = 5000, .worker = worker_fails_at_start,
                            .serving = serving_counts, .ctx = &p};
    int saved = quiet_stderr();
    int status = supervise(&plan);
    restore_stderr(saved);
    restore_signals();
    CHECK(status == 3);
    CHECK(p.serving_calls == 0);
    CHECK(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD);
}

/* Ready, then a crash: the supervisor must restart it, later each time.
 * Each run writes when it started and when it ended; _exit, so that the time
 * a sanitizer spends at exit does not count as backoff. */
static int worker_crashes(void *ctx)
{
    probe *p = ctx;
    uint64_t span[2] = {mono_ms(), 0};
    supervisor_worker_ready();
    usleep(5000);
    span[1] = mono_ms();
    if (write(p->starts_write, span, sizeof span) != (ssize_t)sizeof span)
        _exit(9);
    _exit(1);
}

static void serving_stop_later(void *ctx)
{
    probe *p = ctx;
    p->serving_calls++;
    pid_t supervisor = getpid();
    if (fork() == 0) { /* a timer that outlives this callback; the supervisor reaps it */
        usleep(1000 * 1000);
        kill(supervisor, SIGTERM);
        _exit(0);
    }
}

TEST(supervisor_restarts_with_backoff)
{
    int fds[2];
    CHECK(pipe2(fds, O_NONBLOCK) == 0);
    probe p = {.starts_write = fds[1]};
    supervisor_plan plan = {.workers = 1, .stop_grace_ms = 5000, .worker = worker_crashes,
                            .serving = serving_stop_later, .ctx = &p};
    int saved = quiet_stderr();
    int status = supervise(&plan);
    restore_stderr(saved);
    restore_signals();
    close(fds[1]);
    while (waitpid(-1, NULL, WNOHANG) > 0) /* the timer child, if not reaped yet */
        ;
    CHECK(p.serving_calls == 1);
    /* Stopped while no worker ran, or while one was about to crash. */
    CHECK(status == 0 || status == 1);

    uint64_t spans[16][2];
    size_t n = 0;
    while (n < 16 && read(fds[0], spans[n], sizeof spans[n]) == (ssize_t)sizeof spans[n])
        n++;
    close(fds[0]);
    /* crash, 100 ms, crash, 200 ms, crash, 400 ms, crash: four runs in one second */
    if (n < 3 || n > 6)
        unit_fail(__FILE__, __LINE__, "%zu worker runs in one second, want 3 to 6", n);
    uint64_t want = 100;
    for (size_t i = 1; i < n && i <= 3; i++, want *= 2) {
        uint64_t gap = spans[i][0] - spans[i - 1][1]; /* from a crash to the next start */
        if (gap < want || gap > want + 250)
            unit_fail(__FILE__, __LINE__, "restart %zu came %llu ms after the crash, want %llu", i,
                      (unsigned long long)gap, (unsigned long long)want);
    }
}
