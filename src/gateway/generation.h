/* What one load of the configuration produced (§3): the routes and their
 * upstreams (each with its connection pool and TLS session cache), and the
 * client table. Immutable once loaded but for health and counters; SIGHUP
 * loads a new one and swaps it in. Reference counted: a request holds the
 * generation it started on until it ends, so streams in flight finish on
 * their configuration while new requests take the new one. */
#ifndef SSEGATE_GENERATION_H
#define SSEGATE_GENERATION_H

#include <stdint.h>

#include "core/config.h"
#include "core/loop.h"
#include "gateway/auth.h"
#include "gateway/metrics.h"
#include "upstream/routes.h"
#include "upstream/upstream.h"

/* One upstream as the gateway runs it. */
typedef struct gw_upstream {
    upstream_target target;
    upstream_def *def;
    uint32_t metrics_id;
} gw_upstream;

/* A request waiting for a slot under some upstream's max_conns (§ passive
 * health and caps): woken, first come first served, when one frees. */
typedef struct gen_waiter {
    struct gen_waiter *next, *prev;
    void (*wake)(void *ctx);
    void *ctx;
    loop_deferred deferred;
} gen_waiter;

enum { GEN_MAX_WAITERS = 1024 };

typedef struct generation {
    unsigned refs;
    gen_waiter *wait_head, *wait_tail;
    size_t waiting;
    config_gen *routes;
    gw_upstream *upstreams; /* routes->upstream_count of them, in the same order */
    auth *auth;
    loop *loop;
    metrics *metrics;
    char first_model[128]; /* the first model an upstream's /v1/models listed, once one was asked */
} generation;

/* Loads --config (or, without one, the single upstream of the flags, at
 * `single_url` named `single_name`) and the client keys. NULL with a
 * message in why when anything is wrong; nothing is half-loaded. */
generation *generation_load(const config *cfg, loop *l, metrics *m, dns_resolver *resolver, const char *single_url,
                            const char *single_name, char *why, size_t why_cap);
/* After a reload: health and clients' limit counters carry over from the
 * generation being replaced. */
void generation_inherit(generation *to, const generation *from);

generation *generation_acquire(generation *g);
void generation_release(generation *g);

/* The gateway's name of the upstream behind a plan's pick. */
static inline gw_upstream *generation_upstream(generation *g, const upstream_def *d) { return &g->upstreams[d->index]; }

/* Queues w (false when the queue is full: answer 503). */
bool generation_wait(generation *g, gen_waiter *w);
void generation_unwait(generation *g, gen_waiter *w);
/* A slot freed: the first waiter is woken at the end of the tick. */
void generation_wake_one(generation *g);

/* Ready for traffic: some upstream can be tried now (§8 /readyz). */
bool generation_has_available(const generation *g, uint64_t now_ms);

#endif
