#include "upstream/routes.h"

#include <stdlib.h>
#include <string.h>

/* ---- memory: bump allocation in chunks, all wiped and freed at once ---- */

enum { GEN_CHUNK_SIZE = 16 * 1024 };

struct gen_chunk {
    gen_chunk *next;
    size_t size, used;
    max_align_t data[]; /* 16-byte aligned on the targets we build for */
};

config_gen *gen_new(void)
{
    config_gen *g = calloc(1, sizeof *g);
    if (g)
        g->refs = 1;
    return g;
}

void *gen_alloc(config_gen *g, size_t size)
{
    if (size > SIZE_MAX / 2)
        return NULL;
    size_t need = size ? (size + 15) & ~(size_t)15 : 16;
    gen_chunk *c = g->mem;
    if (!c || c->size - c->used < need) {
        size_t cap = need > GEN_CHUNK_SIZE ? need : GEN_CHUNK_SIZE;
        c = calloc(1, sizeof *c + cap);
        if (!c)
            return NULL;
        c->size = cap;
        /* A big block goes behind the head so the head's room stays usable. */
        if (g->mem && need > GEN_CHUNK_SIZE / 4) {
            c->next = g->mem->next;
            g->mem->next = c;
        } else {
            c->next = g->mem;
            g->mem = c;
        }
    }
    void *p = (unsigned char *)c->data + c->used;
    c->used += need;
    return p;
}

config_gen *gen_acquire(config_gen *g)
{
    g->refs++;
    return g;
}

void gen_release(config_gen *g)
{
    if (!g || --g->refs > 0)
        return;
    if (g->cleanup)
        g->cleanup(g, g->cleanup_ctx);
    for (gen_chunk *c = g->mem, *next; c; c = next) {
        next = c->next;
        explicit_bzero(c->data, c->size); /* upstream keys live here */
        free(c);
    }
    free(g);
}

void gen_inherit_health(config_gen *to, const config_gen *from)
{
    for (size_t i = 0; i < to->upstream_count; i++) {
        upstream_def *u = &to->upstreams[i];
        for (size_t j = 0; j < from->upstream_count; j++) {
            const upstream_def *old = &from->upstreams[j];
            if (strcmp(old->name, u->name) == 0 && strcmp(old->url_text, u->url_text) == 0) {
                u->health = old->health;
                u->health.probing = false; /* the old probe reports to the old generation */
                break;
            }
        }
    }
}

/* ---- ordering and lookups ---- */

static int slice_order(slice a, slice b)
{
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
    if (c)
        return c;
    return a.len < b.len ? -1 : a.len > b.len;
}

static int by_slice(const void *a, const void *b) { return slice_order(*(const slice *)a, *(const slice *)b); }
static int by_route(const void *a, const void *b)
{
    return slice_order(((const route *)a)->model, ((const route *)b)->model);
}
static int by_alias(const void *a, const void *b)
{
    return slice_order(((const model_alias *)a)->name, ((const model_alias *)b)->name);
}

size_t models_sort(slice *models, size_t n)
{
    if (n > 1)
        qsort(models, n, sizeof *models, by_slice);
    for (size_t i = 1; i < n; i++)
        if (slice_eq(models[i - 1], models[i]))
            return i;
    return n;
}

void gen_seal(config_gen *g)
{
    if (g->route_count > 1)
        qsort(g->routes, g->route_count, sizeof *g->routes, by_route);
    if (g->alias_count > 1)
        qsort(g->aliases, g->alias_count, sizeof *g->aliases, by_alias);
}

upstream_def *gen_upstream(config_gen *g, slice name)
{
    for (size_t i = 0; i < g->upstream_count; i++)
        if (slice_eq(slice_of(g->upstreams[i].name), name))
            return &g->upstreams[i];
    return NULL;
}

bool upstream_serves(const upstream_def *u, slice model)
{
    if (u->any_model)
        return true;
    size_t lo = 0, hi = u->model_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = slice_order(u->models[mid], model);
        if (c == 0)
            return true;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

route *gen_route(config_gen *g, slice model)
{
    size_t lo = 0, hi = g->route_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = slice_order(g->routes[mid].model, model);
        if (c == 0)
            return &g->routes[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const model_alias *gen_alias(const config_gen *g, slice name)
{
    size_t lo = 0, hi = g->alias_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = slice_order(g->aliases[mid].name, name);
        if (c == 0)
            return &g->aliases[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static bool route_serves(const config_gen *g, const route *r, slice model)
{
    for (size_t s = 0; s < r->step_count; s++)
        for (size_t k = 0; k < r->steps[s].count; k++)
            if (upstream_serves(&g->upstreams[r->steps[s].members[k]], model))
                return true;
    return false;
}

int routes_resolve(config_gen *g, slice client_model, route_target *out)
{
    *out = (route_target){.pinned = -1, .model = client_model};
    const model_alias *a = gen_alias(g, client_model);
    if (a) {
        out->model = a->model;
        out->rewritten = !slice_eq(a->model, client_model);
        if (a->upstream >= 0) {
            out->pinned = a->upstream;
            return 0;
        }
    }
    out->route = gen_route(g, out->model);
    if (out->route)
        return 0;
    if (g->fallback && route_serves(g, g->fallback, out->model)) {
        out->route = g->fallback;
        return 0;
    }
    for (size_t i = 0; i < g->upstream_count; i++)
        if (upstream_serves(&g->upstreams[i], out->model))
            return 0;
    return -1;
}

void routes_write_not_found(wbuf *b, slice model)
{
    wbuf_puts(b, "no upstream serves model \"");
    wbuf_put_slice(b, model);
    wbuf_put_char(b, '"');
}

/* ---- health ---- */

bool upstream_available(const upstream_def *u, uint64_t now_ms)
{
    const upstream_health *h = &u->health;
    if (h->until_ms > now_ms || (h->half_open && h->probing))
        return false;
    return u->max_conns == 0 || u->active < u->max_conns;
}

static void eject(upstream_health *h, uint64_t now_ms)
{
    uint64_t cool = HEALTH_COOLDOWN_BASE_MS;
    for (unsigned i = 0; i < h->ejections && cool < HEALTH_COOLDOWN_MAX_MS; i++)
        cool *= 2;
    if (cool > HEALTH_COOLDOWN_MAX_MS)
        cool = HEALTH_COOLDOWN_MAX_MS;
    if (h->ejections < 64)
        h->ejections++;
    h->failures = 0;
    h->until_ms = now_ms + cool;
    h->half_open = true;
    h->probing = false;
}

void upstream_health_report(upstream_def *u, bool ok, uint64_t now_ms)
{
    upstream_health *h = &u->health;
    /* Answers to requests sent before it cooled say nothing new. */
    if (h->until_ms > now_ms)
        return;
    if (ok)
        *h = (upstream_health){0};
    else if (h->half_open || ++h->failures >= HEALTH_EJECT_AFTER)
        eject(h, now_ms);
}

void upstream_probe_cancel(upstream_def *u) { u->health.probing = false; }

void upstream_cooldown(upstream_def *u, uint64_t until_ms)
{
    upstream_health *h = &u->health;
    if (until_ms <= h->until_ms)
        return;
    h->until_ms = until_ms;
    h->half_open = true;
    h->probing = false;
}

/* A picked upstream is in use: a half-open one has its one probe out. */
static void take(upstream_def *u)
{
    if (u->health.half_open)
        u->health.probing = true;
}

/* ---- choosing ---- */

static bool excluded(uint64_t mask, unsigned index) { return (mask >> index) & 1u; }

int routes_pick(config_gen *g, route *r, size_t step, uint64_t now_ms, uint64_t exclude_mask)
{
    if (step >= r->step_count)
        return -1;
    route_group *grp = &r->steps[step];
    int64_t total = 0;
    size_t best = SIZE_MAX;
    for (size_t k = 0; k < grp->count; k++) {
        const upstream_def *u = &g->upstreams[grp->members[k]];
        if (excluded(exclude_mask, u->index) || !upstream_available(u, now_ms))
            continue;
        grp->current[k] += u->weight;
        total += u->weight;
        if (best == SIZE_MAX || grp->current[k] > grp->current[best])
            best = k;
    }
    if (best == SIZE_MAX)
        return -1;
    grp->current[best] -= total;
    take(&g->upstreams[grp->members[best]]);
    return grp->members[best];
}

static size_t plan_steps(const route_plan *p)
{
    if (p->target.pinned >= 0)
        return 1;
    if (p->target.route)
        return p->target.route->step_count;
    return p->gen->upstream_count;
}

/* The upstream a step names when it is not a group: the pinned one, or the
 * step-th upstream of the file when routing by models. */
static unsigned lone_upstream(const route_plan *p, size_t step)
{
    return p->target.pinned >= 0 ? (unsigned)p->target.pinned : (unsigned)step;
}

void plan_init(route_plan *p, config_gen *g, const route_target *t, unsigned max_attempts)
{
    *p = (route_plan){.gen = g, .target = *t, .max_attempts = max_attempts ? max_attempts : 1};
    const route *r = t->route;
    if (t->pinned >= 0)
        return;
    if (r) {
        for (size_t s = 0; s < r->step_count; s++)
            for (size_t k = 0; k < r->steps[s].count; k++) {
                const upstream_def *u = &g->upstreams[r->steps[s].members[k]];
                if (!upstream_serves(u, t->model))
                    p->skip |= (uint64_t)1 << u->index;
            }
        return;
    }
    for (size_t i = 0; i < g->upstream_count; i++)
        if (!upstream_serves(&g->upstreams[i], t->model))
            p->skip |= (uint64_t)1 << i;
}

static int pick_step(route_plan *p, size_t step, uint64_t now_ms)
{
    uint64_t exclude = p->tried | p->skip;
    if (p->target.route)
        return routes_pick(p->gen, p->target.route, step, now_ms, exclude);
    unsigned i = lone_upstream(p, step);
    upstream_def *u = &p->gen->upstreams[i];
    if (excluded(exclude, i) || !upstream_available(u, now_ms))
        return -1;
    take(u);
    return (int)i;
}

upstream_def *plan_next(route_plan *p, uint64_t now_ms)
{
    if (p->attempts >= p->max_attempts)
        return NULL;
    size_t steps = plan_steps(p);
    for (int pass = 0; pass < 2; pass++) {
        for (; p->step < steps; p->step++) {
            int i = pick_step(p, p->step, now_ms);
            if (i >= 0) {
                p->tried |= (uint64_t)1 << i;
                p->attempts++;
                return &p->gen->upstreams[i];
            }
        }
        if (p->tried == 0)
            return NULL; /* a whole pass found nothing to try */
        p->tried = 0;
        p->step = 0;
    }
    return NULL;
}

static void note_wait(const upstream_def *u, uint64_t now_ms, uint64_t *best)
{
    if (u->health.until_ms > now_ms) {
        uint64_t w = u->health.until_ms - now_ms;
        if (*best == 0 || w < *best)
            *best = w;
    }
}

uint64_t plan_wait_ms(const route_plan *p, uint64_t now_ms)
{
    uint64_t best = 0;
    const config_gen *g = p->gen;
    const route *r = p->target.route;
    if (r) {
        for (size_t s = 0; s < r->step_count; s++)
            for (size_t k = 0; k < r->steps[s].count; k++) {
                const upstream_def *u = &g->upstreams[r->steps[s].members[k]];
                if (!excluded(p->skip, u->index))
                    note_wait(u, now_ms, &best);
            }
        return best;
    }
    size_t steps = plan_steps(p);
    for (size_t s = 0; s < steps; s++) {
        unsigned i = lone_upstream(p, s);
        if (!excluded(p->skip, i))
            note_wait(&g->upstreams[i], now_ms, &best);
    }
    return best;
}
