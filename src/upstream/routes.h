/* Several upstreams: a configuration "generation" (what the --config file
 * says, immutable once loaded) and the pure routing logic the relay runs on
 * it: which upstreams a model goes to, load shared by weight inside a group
 * (smooth weighted round-robin), passive health (ejection after consecutive
 * failures, doubling cooldowns, one half-open probe at a time), and one
 * request's plan of attempts across fallbacks.
 *
 * A generation is reference counted so a reload can swap it while requests
 * in flight keep theirs. Only the reactor thread touches it; what changes
 * after load is marked "mutable" below (SWRR weights, health, active counts).
 * No I/O and no clock here: callers pass now_ms (the loop's monotonic time). */
#ifndef SSEGATE_ROUTES_H
#define SSEGATE_ROUTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/slice.h"
#include "core/wbuf.h"
#include "gateway/keys.h"
#include "upstream/url.h"

enum {
    ROUTES_MAX_UPSTREAMS = 64, /* a plan's masks are one uint64_t */
    UPSTREAM_NAME_MAX = 64,
    MODEL_NAME_MAX = 256,
    HEALTH_EJECT_AFTER = 5,            /* consecutive failures */
    HEALTH_COOLDOWN_BASE_MS = 10000,   /* first ejection; doubles per consecutive one */
    HEALTH_COOLDOWN_MAX_MS = 300000,
};

/* Passive health. Healthy → (HEALTH_EJECT_AFTER failures) → cooling until
 * `until_ms` → half-open: one request at a time probes it; a success makes
 * it healthy, a failure cools it again for twice as long (up to the cap). */
typedef struct upstream_health {
    unsigned failures;  /* consecutive, while healthy */
    unsigned ejections; /* consecutive ejections: the cooldown's doubling */
    uint64_t until_ms;  /* cooling until then */
    bool half_open;     /* after a cooldown, until a success */
    bool probing;       /* the half-open probe is in flight */
} upstream_health;

typedef struct upstream_def {
    const char *name;
    const char *url_text; /* as written: what upstream_target_init takes */
    url base;             /* parsed (and so validated) at load */
    const char *key;      /* NULL: keyless (http:// only) */
    const char *org, *project; /* OpenAI-Organization / OpenAI-Project to send; NULL when unset */
    uint32_t weight;      /* its share inside a group; default 1 */
    size_t max_conns;     /* 0: none of its own */
    uint64_t connect_timeout_ms, first_byte_timeout_ms, idle_timeout_ms; /* 0: the flag's */
    const slice *models;  /* sorted; NULL when the file lists none */
    size_t model_count;
    bool any_model;       /* no models list, or "*" in it */
    unsigned index;       /* place in the file; its bit in plan masks */
    /* mutable */
    upstream_health health;
    size_t active;        /* requests the relay has on it (the relay counts); full at max_conns */
    void *user;           /* the owner's, e.g. its upstream_target */
} upstream_def;

/* Upstreams sharing load by weight: one entry of a route. */
typedef struct route_group {
    const uint8_t *members; /* upstream indexes */
    int64_t *current;       /* mutable: SWRR current weight per member */
    size_t count;
} route_group;

typedef struct route {
    slice model;        /* "*" for the fallback route */
    route_group *steps; /* tried in order: the fallbacks */
    size_t step_count;
} route;

typedef struct model_alias {
    slice name;   /* what clients send */
    slice model;  /* what goes upstream; holds no JSON escapes, so it splices into a body as is */
    int upstream; /* the upstream it sends to, or -1: routed by `model` */
} model_alias;

typedef struct gen_chunk gen_chunk;

typedef struct config_gen {
    unsigned refs;
    upstream_def *upstreams; /* file order */
    size_t upstream_count;
    route *routes; /* sorted by model; "*" is not among them */
    size_t route_count;
    route *fallback; /* the "*" route, or NULL */
    model_alias *aliases; /* sorted by name */
    size_t alias_count;
    client_key *clients; /* from "clients", to merge into the key table (keyring_with) */
    size_t client_count;
    /* Set by the owner: runs once, just before the generation is freed. */
    void (*cleanup)(struct config_gen *g, void *ctx);
    void *cleanup_ctx;
    gen_chunk *mem; /* everything above lives here */
} config_gen;

/* ---- building (the loader, cfgfile.c) ---- */

/* An empty generation holding one reference; NULL when out of memory. */
config_gen *gen_new(void);
/* Zeroed, 16-byte aligned memory that lives as long as g; NULL on OOM. */
void *gen_alloc(config_gen *g, size_t size);
/* Sorts an upstream's models list as upstream_serves wants it. Returns the
 * index of a model listed twice, or n when none is. */
size_t models_sort(slice *models, size_t n);
/* After the loader filled it: sorts routes and aliases for lookup. Names
 * must be unique by then. */
void gen_seal(config_gen *g);

/* ---- lifetime ---- */

config_gen *gen_acquire(config_gen *g);
/* Drops a reference; the last one runs cleanup and frees (secrets wiped). */
void gen_release(config_gen *g);
/* Carries health over a reload: each upstream of `to` with the name and
 * URL of one in `from` takes its health. */
void gen_inherit_health(config_gen *to, const config_gen *from);

/* ---- lookups ---- */

upstream_def *gen_upstream(config_gen *g, slice name);
/* Whether the upstream's models admit the model (no list, or "*", admit all). */
bool upstream_serves(const upstream_def *u, slice model);
route *gen_route(config_gen *g, slice model); /* exact only, or NULL */
const model_alias *gen_alias(const config_gen *g, slice name);

/* Where a request goes, from the client's model. */
typedef struct route_target {
    route *route;  /* NULL: pinned, or by the upstreams' models in file order */
    int pinned;    /* the upstream an alias sends to, or -1 */
    slice model;   /* the model to send upstream */
    bool rewritten;/* model is an alias's: splice it into the body in place of the client's */
} route_target;

/* Alias first, then the exact route, then "*" (when one of its upstreams
 * serves the model), then the upstreams whose models admit it. Returns 0,
 * or -1 when no upstream serves the model (404 model_not_found). The model
 * is compared byte for byte as the body holds it (still JSON-escaped). */
int routes_resolve(config_gen *g, slice client_model, route_target *out);
/* `no upstream serves model "X"`, for the 404. */
void routes_write_not_found(wbuf *b, slice model);

/* ---- health (call with the loop's now) ---- */

/* Not cooling, not full (max_conns), and not half-open with its probe out. */
bool upstream_available(const upstream_def *u, uint64_t now_ms);
/* The outcome of one attempt. Failures are what says the upstream is
 * unwell (connect errors, timeouts, 5xx); a 4xx answer is a success here.
 * Failures that arrive while it already cools are not counted again. */
void upstream_health_report(upstream_def *u, bool ok, uint64_t now_ms);
/* The attempt ended with no verdict (the client left): frees a half-open
 * probe slot without judging. */
void upstream_probe_cancel(upstream_def *u);
/* Cools it until until_ms (e.g. a Retry-After longer than the retry cap),
 * then probes it half-open; never shortens a cooldown. */
void upstream_cooldown(upstream_def *u, uint64_t until_ms);

/* ---- choosing ---- */

/* Picks the next upstream of entry `step` of route r by smooth weighted
 * round-robin (each pick adds every candidate's weight to its current,
 * takes the largest, first on ties, and takes the candidates' total from
 * it), over members available at now_ms and not in exclude_mask (bit i is
 * upstream i). The pick is taken: a half-open one is marked probing.
 * Returns the upstream index, or -1 when no member may be tried. */
int routes_pick(config_gen *g, route *r, size_t step, uint64_t now_ms, uint64_t exclude_mask);

/* One request's attempts: within an entry by weight, skipping unavailable
 * upstreams and those already tried, then the next entry; when every entry
 * is used up with attempts left, a new pass over the route may try an
 * upstream again (a lone upstream still gets its retries). */
typedef struct route_plan {
    config_gen *gen;
    route_target target;
    size_t step;      /* the entry being tried */
    uint64_t tried;   /* upstreams tried in this pass */
    uint64_t skip;    /* candidates whose models leave the model out ("*" and model routing) */
    unsigned attempts, max_attempts;
} route_plan;

/* max_attempts is 1 + the retries allowed (at least 1 is used). The plan
 * borrows g: the request holds a reference (gen_acquire) while it runs. */
void plan_init(route_plan *p, config_gen *g, const route_target *t, unsigned max_attempts);
/* The next upstream to try (taken, as routes_pick), or NULL when the
 * attempts are spent or no upstream of the plan may be tried now. */
upstream_def *plan_next(route_plan *p, uint64_t now_ms);
/* After plan_next gave NULL: milliseconds until the first of the plan's
 * cooling upstreams may be tried (for a 503's Retry-After); 0 when none
 * of them cools. */
uint64_t plan_wait_ms(const route_plan *p, uint64_t now_ms);

#endif
