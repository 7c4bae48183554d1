#include "core/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

enum {
    BACKOFF_FIRST_MS = 100,
    BACKOFF_MAX_MS = 5000,
    STABLE_AFTER_MS = 30000, /* a worker that lived this long resets its backoff */
    POLL_MAX_MS = 60000,
};

typedef struct slot {
    pid_t pid; /* 0 when not running */
    bool ready;
    uint64_t started_ms;
    uint64_t restart_at_ms; /* 0: no restart scheduled */
    uint64_t backoff_ms;
} slot;

typedef struct supervisor {
    const supervisor_plan *plan;
    slot *slots;
    pid_t self;
    int signal_fd;
    int ready_read, ready_write;
    sigset_t worker_mask;
    bool serving;  /* the first generation is up */
    bool stopping; /* SIGTERM or SIGINT seen, or a start-up failure */
    int status;    /* what supervise returns */
    uint64_t kill_at_ms;
} supervisor;

/* The write end of the ready pipe, in a worker; -1 elsewhere. */
static int ready_fd = -1;

void supervisor_worker_ready(void)
{
    if (ready_fd < 0)
        return;
    int32_t pid = (int32_t)getpid(); /* four bytes: one atomic pipe write */
    ssize_t n;
    do
        n = write(ready_fd, &pid, sizeof pid);
    while (n < 0 && errno == EINTR);
    close(ready_fd);
    ready_fd = -1;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static const char *signal_name(int signo)
{
    switch (signo) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    case SIGKILL: return "SIGKILL";
    case SIGSEGV: return "SIGSEGV";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    default: return NULL;
    }
}

/* The two fields that say how a worker ended: exit code or signal. */
static void describe_end(int wstatus, log_field *f, char *text, size_t cap)
{
    if (WIFSIGNALED(wstatus)) {
        const char *name = signal_name(WTERMSIG(wstatus));
        if (name)
            snprintf(text, cap, "%s", name);
        else
            snprintf(text, cap, "%d", WTERMSIG(wstatus));
        *f = (log_field){"signal", text};
    } else {
        snprintf(text, cap, "%d", WEXITSTATUS(wstatus));
        *f = (log_field){"exit_code", text};
    }
}

static unsigned live_count(const supervisor *sv)
{
    unsigned n = 0;
    for (unsigned i = 0; i < sv->plan->workers; i++)
        n += sv->slots[i].pid != 0;
    return n;
}

static void signal_workers(const supervisor *sv, int signo)
{
    for (unsigned i = 0; i < sv->plan->workers; i++)
        if (sv->slots[i].pid)
            kill(sv->slots[i].pid, signo);
}

static _Noreturn void run_worker(supervisor *sv)
{
    /* A worker must not outlive its supervisor: it drains instead. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != sv->self)
        _exit(1); /* the supervisor died before prctl took effect */
    close(sv->signal_fd);
    close(sv->ready_read);
    ready_fd = sv->ready_write;
    sigprocmask(SIG_SETMASK, &sv->worker_mask, NULL);
    free(sv->slots);
    int status = sv->plan->worker(sv->plan->ctx);
    exit(status);
}

static void schedule_restart(slot *s, uint64_t now)
{
    s->restart_at_ms = now + s->backoff_ms;
    s->backoff_ms = s->backoff_ms * 2 < BACKOFF_MAX_MS ? s->backoff_ms * 2 : BACKOFF_MAX_MS;
}

/* Returns false when fork failed (a retry is then scheduled). */
static bool spawn(supervisor *sv, unsigned index)
{
    slot *s = &sv->slots[index];
    uint64_t now = now_ms();
    s->restart_at_ms = 0;
    char worker[16], detail[64];
    snprintf(worker, sizeof worker, "%u", index);
    pid_t pid = fork();
    if (pid == 0)
        run_worker(sv);
    if (pid < 0) {
        snprintf(detail, sizeof detail, "%s", strerror(errno));
        schedule_restart(s, now);
        char retry[24];
        snprintf(retry, sizeof retry, "%llu", (unsigned long long)(s->restart_at_ms - now));
        log_field f[] = {{"worker", worker}, {"error", detail}, {"retry_in_ms", retry}};
        log_message("error", "cannot start a worker", f, 3);
        return false;
    }
    s->pid = pid;
    s->ready = false;
    s->started_ms = now;
    snprintf(detail, sizeof detail, "%d", (int)pid);
    log_field f[] = {{"worker", worker}, {"pid", detail}};
    log_message("info", "worker started", f, 2);
    return true;
}

static void begin_stop(supervisor *sv, const char *why)
{
    if (!sv->stopping) {
        sv->stopping = true;
        sv->kill_at_ms = now_ms() + sv->plan->stop_grace_ms;
        for (unsigned i = 0; i < sv->plan->workers; i++)
            sv->slots[i].restart_at_ms = 0;
        char live[16];
        snprintf(live, sizeof live, "%u", live_count(sv));
        log_field f[] = {{"reason", why}, {"workers", live}};
        log_message("info", "stopping workers", f, 2);
    }
}

static void on_worker_end(supervisor *sv, slot *s, int wstatus)
{
    uint64_t now = now_ms();
    bool clean = WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
    char worker[16], pid[16], end[24], lived[24];
    snprintf(worker, sizeof worker, "%u", (unsigned)(s - sv->slots));
    snprintf(pid, sizeof pid, "%d", (int)s->pid);
    snprintf(lived, sizeof lived, "%llu", (unsigned long long)(now - s->started_ms));
    log_field f[5] = {{"worker", worker}, {"pid", pid}, {NULL, NULL}, {"lived_ms", lived}, {NULL, NULL}};
    describe_end(wstatus, &f[2], end, sizeof end);
    bool was_ready = s->ready;
    s->pid = 0;
    s->ready = false;

    if (sv->stopping) {
        if (!clean && sv->status == 0) /* a start-up failure's status stands */
            sv->status = 1;
        log_message(clean ? "info" : "error", "worker exited", f, 4);
        return;
    }
    if (!sv->serving && !was_ready) {
        /* The first generation cannot start: a restart would fail the same way. */
        log_message("error", "worker failed at start-up", f, 4);
        sv->status = WIFEXITED(wstatus) && WEXITSTATUS(wstatus) != 0 ? WEXITSTATUS(wstatus) : 1;
        begin_stop(sv, "a worker failed at start-up");
        signal_workers(sv, SIGTERM);
        return;
    }
    if (now - s->started_ms >= STABLE_AFTER_MS)
        s->backoff_ms = BACKOFF_FIRST_MS;
    schedule_restart(s, now);
    char retry[24];
    snprintf(retry, sizeof retry, "%llu", (unsigned long long)(s->restart_at_ms - now));
    f[4] = (log_field){"restart_in_ms", retry};
    /* Exit 0 unasked: someone drained this worker by hand. */
    log_message(clean ? "warn" : "error", "worker exited; restarting it", f, 5);
}

static void reap(supervisor *sv)
{
    int wstatus;
    pid_t pid;
    while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0) {
        for (unsigned i = 0; i < sv->plan->workers; i++)
            if (sv->slots[i].pid == pid) {
                on_worker_end(sv, &sv->slots[i], wstatus);
                break;
            }
    }
}

static void on_signals(supervisor *sv)
{
    struct signalfd_siginfo si;
    while (read(sv->signal_fd, &si, sizeof si) == (ssize_t)sizeof si) {
        int signo = (int)si.ssi_signo;
        if (signo == SIGCHLD) {
            reap(sv);
        } else if (signo == SIGTERM || signo == SIGINT) {
            begin_stop(sv, signal_name(signo));
            signal_workers(sv, signo); /* again on a second signal: harmless */
        } else if (signo == SIGHUP && !sv->stopping) {
            char live[16];
            snprintf(live, sizeof live, "%u", live_count(sv));
            log_field f[] = {{"signal", "SIGHUP"}, {"workers", live}};
            log_message("info", "forwarding to workers", f, 2);
            signal_workers(sv, SIGHUP);
        }
    }
}

static void on_ready(supervisor *sv)
{
    int32_t pid;
    while (read(sv->ready_read, &pid, sizeof pid) == (ssize_t)sizeof pid) {
        for (unsigned i = 0; i < sv->plan->workers; i++)
            if (sv->slots[i].pid == (pid_t)pid)
                sv->slots[i].ready = true;
    }
    if (sv->serving || sv->stopping)
        return;
    for (unsigned i = 0; i < sv->plan->workers; i++)
        if (!sv->slots[i].ready)
            return;
    sv->serving = true;
    if (sv->plan->serving)
        sv->plan->serving(sv->plan->ctx);
}

/* Restarts that are due, and the kill deadline of a stop. Returns the poll
 * timeout until the next of them. */
static int on_time(supervisor *sv)
{
    uint64_t now = now_ms();
    uint64_t next = now + POLL_MAX_MS;
    if (sv->stopping) {
        if (sv->kill_at_ms && now >= sv->kill_at_ms) {
            char live[16];
            snprintf(live, sizeof live, "%u", live_count(sv));
            log_field f[] = {{"workers", live}};
            log_message("error", "workers did not drain in time; killing them", f, 1);
            signal_workers(sv, SIGKILL);
            sv->status = 1;
            sv->kill_at_ms = 0;
        }
        if (sv->kill_at_ms && sv->kill_at_ms < next)
            next = sv->kill_at_ms;
    } else {
        for (unsigned i = 0; i < sv->plan->workers; i++) {
            slot *s = &sv->slots[i];
            if (!s->restart_at_ms)
                continue;
            if (now >= s->restart_at_ms)
                spawn(sv, i);
            if (s->restart_at_ms && s->restart_at_ms < next) /* a failed fork reschedules */
                next = s->restart_at_ms;
        }
    }
    now = now_ms();
    return next > now ? (int)(next - now) : 0;
}

int supervise(const supervisor_plan *plan)
{
    supervisor sv = {.plan = plan, .self = getpid(), .signal_fd = -1, .ready_read = -1, .ready_write = -1};
    sigset_t handled, old;
    sigemptyset(&handled);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGINT);
    sigaddset(&handled, SIGHUP);
    sigaddset(&handled, SIGCHLD);
    sigprocmask(SIG_BLOCK, &handled, &old);
    /* Workers get the old mask with the drain and reload signals still
     * blocked: one sent before their signalfd exists stays pending for it. */
    sv.worker_mask = old;
    sigaddset(&sv.worker_mask, SIGTERM);
    sigaddset(&sv.worker_mask, SIGINT);
    sigaddset(&sv.worker_mask, SIGHUP);

    int pipe_fds[2];
    sv.slots = calloc(plan->workers, sizeof *sv.slots);
    sv.signal_fd = signalfd(-1, &handled, SFD_NONBLOCK | SFD_CLOEXEC);
    if (!sv.slots || sv.signal_fd < 0 || pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        fprintf(stderr, "ssegate: cannot start the supervisor: %s\n", sv.slots ? strerror(errno) : "out of memory");
        free(sv.slots);
        if (sv.signal_fd >= 0)
            close(sv.signal_fd);
        return 1;
    }
    sv.ready_read = pipe_fds[0];
    sv.ready_write = pipe_fds[1];

    for (unsigned i = 0; i < plan->workers && !sv.stopping; i++) {
        sv.slots[i].backoff_ms = BACKOFF_FIRST_MS;
        if (!spawn(&sv, i)) {
            sv.status = 1;
            begin_stop(&sv, "cannot fork the workers");
            signal_workers(&sv, SIGTERM);
        }
    }
    while (!sv.stopping || live_count(&sv) > 0) {
        int timeout = on_time(&sv);
        struct pollfd fds[2] = {{.fd = sv.signal_fd, .events = POLLIN}, {.fd = sv.ready_read, .events = POLLIN}};
        if (poll(fds, 2, timeout) < 0 && errno != EINTR) {
            log_field f[] = {{"error", strerror(errno)}};
            log_message("error", "supervisor poll failed; killing the workers", f, 1);
            signal_workers(&sv, SIGKILL);
            while (waitpid(-1, NULL, 0) > 0)
                ;
            sv.status = 1;
            break;
        }
        if (fds[1].revents)
            on_ready(&sv);
        if (fds[0].revents)
            on_signals(&sv);
    }
    close(sv.signal_fd);
    close(sv.ready_read);
    close(sv.ready_write);
    free(sv.slots);
    return sv.status;
}
