/* --workers N: a parent process that keeps N forked workers running. It
 * restarts a worker that dies (100 ms backoff, doubling to 5 s, back to
 * 100 ms once a worker has lived 30 s), forwards SIGTERM and SIGINT (drain)
 * and SIGHUP (reload) to every worker, and returns once they are gone. No
 * reactor: a signalfd, a pipe on which workers report ready, and poll(). */
#ifndef SSEGATE_SUPERVISOR_H
#define SSEGATE_SUPERVISOR_H

#include <stdint.h>

typedef struct supervisor_plan {
    unsigned workers;
    /* After SIGTERM or SIGINT, workers still running this long are killed. */
    uint64_t stop_grace_ms;
    /* Runs in each forked worker; its return value is the worker's exit status.
     * SIGTERM, SIGINT and SIGHUP arrive blocked, for the worker's signalfd. */
    int (*worker)(void *ctx);
    /* Runs in the supervisor once every worker of the first generation has
     * called supervisor_worker_ready. */
    void (*serving)(void *ctx);
    void *ctx;
} supervisor_plan;

/* Starts the workers and supervises them until they have all exited after
 * SIGTERM or SIGINT. Returns the process's exit status: 0 when every worker
 * drained cleanly, 1 when one failed or had to be killed; when a worker of
 * the first generation exits before it is ready, the others are stopped and
 * its exit status (or 1) is returned. SIGTERM, SIGINT, SIGHUP and SIGCHLD
 * stay blocked in the calling process. */
int supervise(const supervisor_plan *plan);

/* Tells the supervisor that this worker accepts connections. Does nothing
 * in a process that no supervisor forked. */
void supervisor_worker_ready(void);

#endif
