#include "gateway/generation.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream/cfgfile.h"

/* Without --config: one upstream from the flags, serving every model. */
static config_gen *single_upstream(const config *cfg, const char *url_text, const char *name, char *why,
                                   size_t why_cap)
{
    config_gen *g = gen_new();
    upstream_def *u = g ? gen_alloc(g, sizeof *u) : NULL;
    char *url_copy = u ? gen_alloc(g, strlen(url_text) + 1) : NULL;
    char *name_copy = url_copy ? gen_alloc(g, strlen(name) + 1) : NULL;
    const char *key = cfg->demo ? NULL : cfg->upstream_key;
    char *key_copy = name_copy && key ? gen_alloc(g, strlen(key) + 1) : NULL;
    if (!name_copy || (key && !key_copy)) {
        snprintf(why, why_cap, "out of memory");
        gen_release(g);
        return NULL;
    }
    const char *bad = NULL;
    if (url_parse(url_text, &u->base, &bad) != 0) {
        snprintf(why, why_cap, "upstream %s: %s", url_text, bad);
        gen_release(g);
        return NULL;
    }
    memcpy(url_copy, url_text, strlen(url_text) + 1);
    memcpy(name_copy, name, strlen(name) + 1);
    if (key)
        memcpy(key_copy, key, strlen(key) + 1);
    *u = (upstream_def){.name = name_copy, .url_text = url_copy, .base = u->base, .key = key_copy,
                        .org = cfg->upstream_org, .project = cfg->upstream_project, .weight = 1,
                        .any_model = true, .index = 0};
    g->upstreams = u;
    g->upstream_count = 1;
    gen_seal(g);
    return g;
}

static void free_targets(config_gen *routes, void *ctx)
{
    generation *gen = ctx;
    for (size_t i = 0; gen->upstreams && i < routes->upstream_count; i++)
        upstream_target_free(&gen->upstreams[i].target, gen->loop);
    free(gen->upstreams);
    gen->upstreams = NULL;
}

generation *generation_load(const config *cfg, loop *l, metrics *m, dns_resolver *resolver, const char *single_url,
                            const char *single_name, char *why, size_t why_cap)
{
    generation *gen = calloc(1, sizeof *gen);
    if (!gen) {
        snprintf(why, why_cap, "out of memory");
        return NULL;
    }
    gen->refs = 1;
    gen->loop = l;
    gen->metrics = m;
    gen->routes = cfg->config_file ? cfgfile_load(cfg->config_file, why, why_cap)
                                   : single_upstream(cfg, single_url, single_name, why, why_cap);
    if (!gen->routes) {
        free(gen);
        return NULL;
    }
    config_gen *r = gen->routes;
    gen->upstreams = calloc(r->upstream_count ? r->upstream_count : 1, sizeof *gen->upstreams);
    if (!gen->upstreams) {
        snprintf(why, why_cap, "out of memory");
        gen_release(r);
        free(gen);
        return NULL;
    }
    r->cleanup = free_targets;
    r->cleanup_ctx = gen;
    for (size_t i = 0; i < r->upstream_count; i++) {
        upstream_def *d = &r->upstreams[i];
        gw_upstream *u = &gen->upstreams[i];
        const char *bad = NULL;
        u->def = d;
        d->user = u;
        if (upstream_target_init(&u->target, d->url_text, d->key, cfg->ca_file, &bad) != 0) {
            snprintf(why, why_cap, "upstream %s (%s): %s", d->name, d->url_text, bad);
            generation_release(gen);
            return NULL;
        }
        snprintf(u->target.name, sizeof u->target.name, "%s", d->name);
        if (u->target.needs_dns)
            upstream_target_use_resolver(&u->target, resolver);
        u->metrics_id = metrics_upstream(m, slice_of(d->name));
    }
    gen->auth = auth_new(cfg, m, r->clients, r->client_count, why, why_cap);
    if (!gen->auth) {
        generation_release(gen);
        return NULL;
    }
    return gen;
}

void generation_inherit(generation *to, const generation *from)
{
    gen_inherit_health(to->routes, from->routes);
    auth_inherit(to->auth, from->auth);
}

generation *generation_acquire(generation *g)
{
    g->refs++;
    return g;
}

void generation_release(generation *g)
{
    if (!g || --g->refs > 0)
        return;
    auth_free(g->auth);
    gen_release(g->routes); /* its cleanup closes the upstreams' pools */
    free(g);
}

bool generation_has_available(const generation *g, uint64_t now_ms)
{
    for (size_t i = 0; i < g->routes->upstream_count; i++)
        if (upstream_available(&g->routes->upstreams[i], now_ms))
            return true;
    return false;
}

bool generation_wait(generation *g, gen_waiter *w)
{
    if (g->waiting >= GEN_MAX_WAITERS)
        return false;
    w->next = NULL;
    w->prev = g->wait_tail;
    if (g->wait_tail)
        g->wait_tail->next = w;
    else
        g->wait_head = w;
    g->wait_tail = w;
    g->waiting++;
    return true;
}

void generation_unwait(generation *g, gen_waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else if (g->wait_head == w)
        g->wait_head = w->next;
    else
        return; /* not queued */
    if (w->next)
        w->next->prev = w->prev;
    else
        g->wait_tail = w->prev;
    w->next = w->prev = NULL;
    g->waiting--;
}

static void run_waiter(void *ctx)
{
    gen_waiter *w = ctx;
    w->wake(w->ctx);
}

void generation_wake_one(generation *g)
{
    gen_waiter *w = g->wait_head;
    if (!w)
        return;
    generation_unwait(g, w);
    loop_defer(g->loop, &w->deferred, run_waiter, w);
}
