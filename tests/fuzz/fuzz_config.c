/* The --config file: any text is accepted into a consistent generation or
 * refused with a message naming the source. An accepted one is then
 * driven: every route and alias resolves to upstreams that serve it, plans
 * stay within their attempts, and health reports drawn from the input keep
 * the state machine sane.
 * Secrets come from a fake env: paths and names starting with "no" are
 * missing, the rest yield a key derived from them. */
#include "fuzz.h"
#include "upstream/cfgfile.h"
#include "upstream/routes.h"

static int fake_read(void *ctx, const char *path, char *out, size_t cap, const char **why)
{
    (void)ctx;
    if (strncmp(path, "no", 2) == 0) {
        *why = "No such file or directory";
        return -1;
    }
    snprintf(out, cap, "sk-file-%.40s", path);
    return 0;
}

static const char *fake_env(void *ctx, const char *name)
{
    (void)ctx;
    if (strncmp(name, "no", 2) == 0)
        return NULL;
    return strncmp(name, "EMPTY", 5) == 0 ? "" : "sk-env-key";
}

static const cfgfile_env fake = {fake_read, fake_env, NULL};

static void check_target(config_gen *g, const route_target *t)
{
    FUZZ_CHECK(t->pinned < (int)g->upstream_count);
    if (t->pinned >= 0)
        FUZZ_CHECK(upstream_serves(&g->upstreams[t->pinned], t->model));
    FUZZ_CHECK(t->model.len > 0 || !t->rewritten);
}

static void drive_plan(config_gen *g, const route_target *t, fuzz_rng *rng, uint64_t *now)
{
    route_plan p;
    unsigned max = (unsigned)(fuzz_next(rng) % 6);
    plan_init(&p, g, t, max);
    unsigned got = 0;
    for (;;) {
        upstream_def *u = plan_next(&p, *now);
        if (!u)
            break;
        got++;
        FUZZ_CHECK(u >= g->upstreams && u < g->upstreams + g->upstream_count);
        FUZZ_CHECK(upstream_serves(u, t->model));
        FUZZ_CHECK((p.tried >> u->index) & 1);
        uint64_t r = fuzz_next(rng);
        switch (r & 3) {
        case 0:
            upstream_health_report(u, true, *now);
            break;
        case 1:
        case 2:
            upstream_health_report(u, false, *now);
            break;
        default:
            if (r & 4)
                upstream_probe_cancel(u);
            else
                upstream_cooldown(u, *now + ((r >> 8) % 600000));
        }
        FUZZ_CHECK(u->health.until_ms <= *now + 600000); /* the longest cooldown set above */
        FUZZ_CHECK(!u->health.probing || u->health.half_open);
        FUZZ_CHECK(u->health.half_open || u->health.failures < HEALTH_EJECT_AFTER);
        *now += (r >> 32) % 4000;
    }
    FUZZ_CHECK(got <= (max ? max : 1));
    if (got < (max ? max : 1))
        (void)plan_wait_ms(&p, *now);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    char *text = fuzz_copy(data, size);
    char why[512];
    config_gen *g = cfgfile_parse(text, size, "fuzz", &fake, why, sizeof why);
    if (!g) {
        FUZZ_CHECK(strncmp(why, "fuzz: ", 6) == 0 && strlen(why) > 6);
        free(text);
        return 0;
    }
    /* the generation owns everything: the text can go */
    memset(text, 'x', size);
    free(text);

    FUZZ_CHECK(g->refs == 1);
    FUZZ_CHECK(g->upstream_count >= 1 && g->upstream_count <= ROUTES_MAX_UPSTREAMS);
    for (size_t i = 0; i < g->upstream_count; i++) {
        const upstream_def *u = &g->upstreams[i];
        FUZZ_CHECK(u->index == i && u->weight >= 1 && u->name && u->url_text);
        FUZZ_CHECK(u->key || !u->base.tls);
        FUZZ_CHECK(u->any_model || u->model_count > 0);
        for (size_t k = 1; k < u->model_count; k++)
            FUZZ_CHECK(!slice_eq(u->models[k - 1], u->models[k]));
        for (size_t k = 0; k < u->model_count; k++)
            FUZZ_CHECK(upstream_serves(u, u->models[k]));
        FUZZ_CHECK(gen_upstream(g, slice_of(u->name)) == u);
    }
    fuzz_rng rng = fuzz_rng_from(data, size);
    uint64_t now = 1000;
    for (size_t i = 0; i < g->route_count + (g->fallback != NULL); i++) {
        route *r = i < g->route_count ? &g->routes[i] : g->fallback;
        FUZZ_CHECK(r->step_count > 0);
        for (size_t s = 0; s < r->step_count; s++) {
            FUZZ_CHECK(r->steps[s].count > 0);
            for (size_t k = 0; k < r->steps[s].count; k++)
                FUZZ_CHECK(r->steps[s].members[k] < g->upstream_count);
        }
        if (r == g->fallback)
            continue;
        FUZZ_CHECK(gen_route(g, r->model) == r);
        route_target t;
        if (!gen_alias(g, r->model)) {
            FUZZ_CHECK(routes_resolve(g, r->model, &t) == 0 && t.route == r && !t.rewritten);
            check_target(g, &t);
            drive_plan(g, &t, &rng, &now);
        }
    }
    for (size_t i = 0; i < g->alias_count; i++) {
        const model_alias *a = &g->aliases[i];
        FUZZ_CHECK(gen_alias(g, a->name) == a);
        FUZZ_CHECK(memchr(a->model.ptr, '\\', a->model.len) == NULL);
        route_target t;
        FUZZ_CHECK(routes_resolve(g, a->name, &t) == 0);
        FUZZ_CHECK(slice_eq(t.model, a->model) && t.pinned == a->upstream);
        check_target(g, &t);
        drive_plan(g, &t, &rng, &now);
    }
    /* a model from the input's own bytes */
    route_target t;
    slice probe = {(const char *)data, size < 16 ? size : 16};
    if (routes_resolve(g, probe, &t) == 0) {
        check_target(g, &t);
        drive_plan(g, &t, &rng, &now);
    }
    for (size_t i = 0; i < g->client_count; i++) {
        size_t len = strnlen(g->clients[i].name, sizeof g->clients[i].name);
        FUZZ_CHECK(len > 0 && len <= CLIENT_NAME_MAX);
    }
    config_gen *held = gen_acquire(g);
    gen_release(g);
    FUZZ_CHECK(held->refs == 1);
    gen_release(held);
    return 0;
}
