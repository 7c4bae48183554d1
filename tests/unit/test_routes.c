/* Routing over a generation: model lookup (aliases, exact, "*", models),
 * smooth weighted round-robin, passive health with doubling cooldowns and
 * half-open probes, a request's plan across fallbacks, and refcounts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream/cfgfile.h"
#include "upstream/routes.h"
#include "unit.h"

static int no_file(void *ctx, const char *path, char *out, size_t cap, const char **why)
{
    (void)ctx;
    (void)path;
    (void)out;
    (void)cap;
    *why = "no files in these tests";
    return -1;
}

static const char *no_env(void *ctx, const char *name)
{
    (void)ctx;
    (void)name;
    return NULL;
}

static const cfgfile_env none = {no_file, no_env, NULL};

static config_gen *gen_of(const char *text)
{
    char why[512];
    config_gen *g = cfgfile_parse(text, strlen(text), "test.json", &none, why, sizeof why);
    if (!g)
        unit_fail(__FILE__, __LINE__, "config refused: %s", why);
    return g;
}

static const char three[] =
    "{\"upstreams\": ["
    "{\"name\": \"openai\", \"url\": \"http://10.0.0.1\", \"weight\": 3, \"models\": [\"gpt-4o\", \"gpt-4o-mini\"]},"
    "{\"name\": \"openai-eu\", \"url\": \"http://10.0.0.2\"},"
    "{\"name\": \"local\", \"url\": \"http://127.0.0.1:11434/v1\", \"models\": [\"*\"]}],"
    " \"routes\": {\"gpt-4o\": [[\"openai\", \"openai-eu\"], \"local\"], \"*\": [\"local\"]},"
    " \"aliases\": {\"fast\": {\"upstream\": \"local\", \"model\": \"llama3.2\"}, \"smart\": {\"model\": \"gpt-4o\"}}}";

static const char *name_of(const config_gen *g, int i) { return i >= 0 ? g->upstreams[i].name : "(none)"; }

TEST(routes_swrr_exact_sequence_and_share)
{
    config_gen *g = gen_of(three);
    if (!g)
        return;
    route *r = gen_route(g, SLICE_LIT("gpt-4o"));
    CHECK(r != NULL);
    if (!r)
        return;
    /* weights 3:1 give a a b a, over and over */
    static const char *const want[] = {"openai", "openai", "openai-eu", "openai"};
    size_t counts[3] = {0};
    for (size_t i = 0; i < 400; i++) {
        int pick = routes_pick(g, r, 0, 1000, 0);
        CHECK(pick == 0 || pick == 1);
        if (pick < 0)
            break;
        counts[pick]++;
        if (strcmp(name_of(g, pick), want[i % 4]) != 0)
            unit_fail(__FILE__, __LINE__, "pick %zu: %s, want %s", i, name_of(g, pick), want[i % 4]);
    }
    CHECK_EQ_SIZE(counts[0], 300);
    CHECK_EQ_SIZE(counts[1], 100);
    CHECK(counts[0] >= 270 && counts[0] <= 330); /* the ±10% a random choice would need */
    /* a step past the route, and an excluded member */
    CHECK(routes_pick(g, r, 2, 1000, 0) == -1);
    for (int i = 0; i < 5; i++)
        CHECK(routes_pick(g, r, 0, 1000, 1u << 0) == 1);
    CHECK(routes_pick(g, r, 0, 1000, (1u << 0) | (1u << 1)) == -1);
    gen_release(g);
}

TEST(routes_swrr_five_one_one_is_smooth)
{
    config_gen *g = gen_of("{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\", \"weight\": 5},"
                           "{\"name\": \"b\", \"url\": \"http://h\"}, {\"name\": \"c\", \"url\": \"http://h\"}],"
                           " \"routes\": {\"m\": [[\"a\", \"b\", \"c\"]]}}");
    if (!g)
        return;
    route *r = gen_route(g, SLICE_LIT("m"));
    /* the well-known smooth order for 5:1:1, not a a a a a b c */
    static const char order[] = "aabacaa";
    for (size_t round = 0; round < 3; round++)
        for (size_t i = 0; i < 7; i++) {
            int pick = routes_pick(g, r, 0, 0, 0);
            CHECK(pick >= 0 && name_of(g, pick)[0] == order[i]);
        }
    gen_release(g);
}

TEST(routes_health_ejects_after_five_and_doubles)
{
    config_gen *g = gen_of(three);
    if (!g)
        return;
    upstream_def *u = gen_upstream(g, SLICE_LIT("openai-eu"));
    uint64_t now = 50000;
    for (int i = 0; i < HEALTH_EJECT_AFTER - 1; i++)
        upstream_health_report(u, false, now);
    CHECK(upstream_available(u, now));
    upstream_health_report(u, true, now); /* a success in between resets the count */
    for (int i = 0; i < HEALTH_EJECT_AFTER - 1; i++)
        upstream_health_report(u, false, now);
    CHECK(upstream_available(u, now));
    upstream_health_report(u, false, now);
    CHECK(!upstream_available(u, now));
    CHECK(!upstream_available(u, now + 9999));
    /* failures of requests already under way do not stretch the cooldown */
    upstream_health_report(u, false, now + 5000);
    upstream_health_report(u, true, now + 5000);
    CHECK(!upstream_available(u, now + 9999));
    CHECK(upstream_available(u, now + 10000));

    /* each failed probe doubles the cooldown up to five minutes */
    static const uint64_t cooldowns[] = {20000, 40000, 80000, 160000, 300000, 300000};
    uint64_t t = now + 10000;
    for (size_t i = 0; i < sizeof cooldowns / sizeof cooldowns[0]; i++) {
        CHECK(upstream_available(u, t));
        upstream_health_report(u, false, t); /* one failure suffices while half-open */
        CHECK(!upstream_available(u, t + cooldowns[i] - 1));
        if (!upstream_available(u, t + cooldowns[i]) || upstream_available(u, t + cooldowns[i] - 1))
            unit_fail(__FILE__, __LINE__, "cooldown %zu is not %llu ms", i, (unsigned long long)cooldowns[i]);
        t += cooldowns[i];
    }
    /* a success ends it all: the next ejection starts at 10 s again */
    upstream_health_report(u, true, t);
    CHECK(!u->health.half_open && u->health.ejections == 0);
    for (int i = 0; i < HEALTH_EJECT_AFTER; i++)
        upstream_health_report(u, false, t);
    CHECK(!upstream_available(u, t + 9999));
    CHECK(upstream_available(u, t + 10000));
    gen_release(g);
}

TEST(routes_half_open_lets_one_probe_through)
{
    config_gen *g = gen_of(three);
    if (!g)
        return;
    route *r = gen_route(g, SLICE_LIT("gpt-4o"));
    upstream_def *a = &g->upstreams[0];
    for (int i = 0; i < HEALTH_EJECT_AFTER; i++)
        upstream_health_report(a, false, 0);
    /* while it cools every pick goes to the other member */
    for (int i = 0; i < 6; i++)
        CHECK(routes_pick(g, r, 0, 5000, 0) == 1);
    /* after the cooldown: the first pick that lands on it is the probe... */
    int probe = -1;
    for (int i = 0; i < 4 && probe < 0; i++)
        if (routes_pick(g, r, 0, 10000, 0) == 0)
            probe = 0;
    CHECK(probe == 0);
    CHECK(a->health.probing);
    CHECK(!upstream_available(a, 10001));
    /* ...and no other request reaches it while the probe is out */
    for (int i = 0; i < 8; i++)
        CHECK(routes_pick(g, r, 0, 10001, 0) == 1);
    /* no verdict (the client left): the next request may probe */
    upstream_probe_cancel(a);
    CHECK(upstream_available(a, 10002));
    probe = -1;
    for (int i = 0; i < 4 && probe < 0; i++)
        if (routes_pick(g, r, 0, 10002, 0) == 0)
            probe = 0;
    CHECK(probe == 0);
    /* the probe succeeds: healthy, sharing by weight again */
    upstream_health_report(a, true, 10003);
    CHECK(upstream_available(a, 10003));
    size_t to_a = 0;
    for (int i = 0; i < 40; i++)
        to_a += routes_pick(g, r, 0, 10003, 0) == 0;
    CHECK_EQ_SIZE(to_a, 30);
    gen_release(g);
}

TEST(routes_retry_after_cooldown_and_max_conns)
{
    config_gen *g = gen_of("{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\", \"max_conns\": 2}]}");
    if (!g)
        return;
    upstream_def *u = &g->upstreams[0];
    upstream_cooldown(u, 60000);
    CHECK(!upstream_available(u, 59999));
    upstream_cooldown(u, 30000); /* never shortened */
    CHECK(!upstream_available(u, 59999));
    CHECK(upstream_available(u, 60000));
    CHECK(u->health.half_open); /* and probed before it takes everything again */
    upstream_health_report(u, true, 60001);
    CHECK(!u->health.half_open);
    /* full at max_conns */
    u->active = 2;
    CHECK(!upstream_available(u, 70000));
    u->active = 1;
    CHECK(upstream_available(u, 70000));
    gen_release(g);
}

TEST(routes_resolve_aliases_routes_and_models)
{
    config_gen *g = gen_of(three);
    if (!g)
        return;
    route_target t;
    /* exact route */
    CHECK(routes_resolve(g, SLICE_LIT("gpt-4o"), &t) == 0);
    CHECK(t.route == gen_route(g, SLICE_LIT("gpt-4o")) && t.pinned == -1 && !t.rewritten);
    CHECK(slice_eq(t.model, SLICE_LIT("gpt-4o")));
    /* "*" for anything else, though openai lists gpt-4o-mini: routes come first */
    CHECK(routes_resolve(g, SLICE_LIT("gpt-4o-mini"), &t) == 0);
    CHECK(t.route == g->fallback);
    CHECK(routes_resolve(g, SLICE_LIT("whatever"), &t) == 0);
    CHECK(t.route == g->fallback);
    /* an alias pinned to an upstream, model rewritten */
    CHECK(routes_resolve(g, SLICE_LIT("fast"), &t) == 0);
    CHECK(t.route == NULL && t.pinned == 2 && t.rewritten);
    CHECK(slice_eq(t.model, SLICE_LIT("llama3.2")));
    /* an alias that routes by its real model */
    CHECK(routes_resolve(g, SLICE_LIT("smart"), &t) == 0);
    CHECK(t.route == gen_route(g, SLICE_LIT("gpt-4o")) && t.pinned == -1 && t.rewritten);
    CHECK(slice_eq(t.model, SLICE_LIT("gpt-4o")));
    /* names are exact: no case folding, no prefixes */
    CHECK(gen_route(g, SLICE_LIT("GPT-4o")) == NULL);
    CHECK(gen_route(g, SLICE_LIT("gpt-4")) == NULL);
    gen_release(g);

    /* no routes at all: the upstreams whose models admit the model */
    g = gen_of("{\"upstreams\": ["
               "{\"name\": \"a\", \"url\": \"http://h\", \"models\": [\"m1\", \"m2\"]},"
               "{\"name\": \"b\", \"url\": \"http://h\", \"models\": [\"m2\", \"m3\"]},"
               "{\"name\": \"c\", \"url\": \"http://h\", \"models\": [\"m3\"]}]}");
    if (!g)
        return;
    CHECK(upstream_serves(&g->upstreams[0], SLICE_LIT("m1")));
    CHECK(upstream_serves(&g->upstreams[0], SLICE_LIT("m2")));
    CHECK(!upstream_serves(&g->upstreams[0], SLICE_LIT("m3")));
    CHECK(!upstream_serves(&g->upstreams[0], SLICE_LIT("m")));
    CHECK(!upstream_serves(&g->upstreams[0], SLICE_LIT("m12")));
    CHECK(routes_resolve(g, SLICE_LIT("m3"), &t) == 0);
    CHECK(t.route == NULL && t.pinned == -1);
    route_plan p;
    plan_init(&p, g, &t, 5);
    upstream_def *u = plan_next(&p, 0);
    CHECK(u && strcmp(u->name, "b") == 0);
    u = plan_next(&p, 0);
    CHECK(u && strcmp(u->name, "c") == 0);
    /* nothing serves it: the 404 and its message */
    CHECK(routes_resolve(g, SLICE_LIT("gpt-5"), &t) == -1);
    char msg[64];
    wbuf b = wbuf_over(msg, sizeof msg);
    routes_write_not_found(&b, SLICE_LIT("gpt-5"));
    CHECK(slice_eq(wbuf_slice(&b), SLICE_LIT("no upstream serves model \"gpt-5\"")));
    gen_release(g);
}

TEST(routes_fallback_route_takes_what_models_admit)
{
    config_gen *g = gen_of("{\"upstreams\": ["
                           "{\"name\": \"big\", \"url\": \"http://h\", \"models\": [\"gpt-4o\"], \"weight\": 9},"
                           "{\"name\": \"small\", \"url\": \"http://h\", \"models\": [\"llama3.2\", \"gpt-4o\"]},"
                           "{\"name\": \"other\", \"url\": \"http://h\", \"models\": [\"qwen\"]}],"
                           " \"routes\": {\"*\": [[\"big\", \"small\"]]}}");
    if (!g)
        return;
    route_target t;
    CHECK(routes_resolve(g, SLICE_LIT("llama3.2"), &t) == 0);
    CHECK(t.route == g->fallback);
    route_plan p;
    plan_init(&p, g, &t, 3);
    for (int i = 0; i < 3; i++) {
        upstream_def *u = plan_next(&p, 0);
        CHECK(u && strcmp(u->name, "small") == 0); /* big never, whatever its weight */
    }
    CHECK(plan_next(&p, 0) == NULL);
    /* "*" names nobody that serves qwen: the upstreams' models decide */
    CHECK(routes_resolve(g, SLICE_LIT("qwen"), &t) == 0);
    CHECK(t.route == NULL);
    plan_init(&p, g, &t, 2);
    upstream_def *u = plan_next(&p, 0);
    CHECK(u && strcmp(u->name, "other") == 0);
    CHECK(routes_resolve(g, SLICE_LIT("mistral"), &t) == -1);
    gen_release(g);
}

TEST(routes_plan_walks_groups_then_fallbacks)
{
    config_gen *g = gen_of(three);
    if (!g)
        return;
    route_target t;
    CHECK(routes_resolve(g, SLICE_LIT("gpt-4o"), &t) == 0);
    route_plan p;
    /* 1 + 3 retries: the group by weight, then local, then round again */
    plan_init(&p, g, &t, 4);
    static const char *const want[] = {"openai", "openai-eu", "local", "openai"};
    for (size_t i = 0; i < 4; i++) {
        upstream_def *u = plan_next(&p, 0);
        CHECK(u && strcmp(u->name, want[i]) == 0);
    }
    CHECK(plan_next(&p, 0) == NULL); /* the attempts are spent */

    /* openai ejected: the group gives openai-eu, then the fallback */
    for (int i = 0; i < HEALTH_EJECT_AFTER; i++)
        upstream_health_report(&g->upstreams[0], false, 100);
    plan_init(&p, g, &t, 3);
    upstream_def *u = plan_next(&p, 200);
    CHECK(u && strcmp(u->name, "openai-eu") == 0);
    u = plan_next(&p, 200);
    CHECK(u && strcmp(u->name, "local") == 0);
    u = plan_next(&p, 200);
    CHECK(u && strcmp(u->name, "openai-eu") == 0);

    /* everything cooling: no attempt, and how long until one may go */
    for (int i = 0; i < HEALTH_EJECT_AFTER; i++) {
        upstream_health_report(&g->upstreams[1], false, 3000);
        upstream_health_report(&g->upstreams[2], false, 4000);
    }
    plan_init(&p, g, &t, 3);
    CHECK(plan_next(&p, 5000) == NULL);
    CHECK_EQ_SIZE(plan_wait_ms(&p, 5000), 5100); /* openai's, from 100 + 10 s */
    /* openai comes back half-open: one probe, then nothing more */
    plan_init(&p, g, &t, 3);
    u = plan_next(&p, 10100);
    CHECK(u && strcmp(u->name, "openai") == 0);
    CHECK(plan_next(&p, 10100) == NULL);
    route_plan q;
    plan_init(&q, g, &t, 3);
    CHECK(plan_next(&q, 10100) == NULL);
    CHECK_EQ_SIZE(plan_wait_ms(&q, 10100), 2900); /* openai-eu's */
    gen_release(g);
}

TEST(routes_plan_pinned_alias_keeps_its_retries)
{
    config_gen *g = gen_of(three);
    if (!g)
        return;
    route_target t;
    CHECK(routes_resolve(g, SLICE_LIT("fast"), &t) == 0);
    route_plan p;
    plan_init(&p, g, &t, 3);
    for (int i = 0; i < 3; i++) {
        upstream_def *u = plan_next(&p, 0);
        CHECK(u && strcmp(u->name, "local") == 0);
        if (u)
            upstream_health_report(u, false, 0);
    }
    CHECK(plan_next(&p, 0) == NULL);
    /* max_attempts 0 still allows the one attempt */
    plan_init(&p, g, &t, 0);
    CHECK(plan_next(&p, 0) != NULL);
    CHECK(plan_next(&p, 0) == NULL);
    /* pinned and cooling: wait for it */
    for (int i = 0; i < HEALTH_EJECT_AFTER; i++)
        upstream_health_report(&g->upstreams[2], false, 0);
    plan_init(&p, g, &t, 3);
    CHECK(plan_next(&p, 1) == NULL);
    CHECK_EQ_SIZE(plan_wait_ms(&p, 1), 9999);
    gen_release(g);
}

static unsigned cleanups;
static void count_cleanup(config_gen *g, void *ctx)
{
    CHECK(g->refs == 0);
    CHECK(ctx == &cleanups);
    cleanups++;
}

TEST(routes_generation_refcount_and_reload)
{
    config_gen *old = gen_of(three);
    if (!old)
        return;
    old->cleanup = count_cleanup;
    old->cleanup_ctx = &cleanups;
    cleanups = 0;
    /* two requests in flight hold it */
    config_gen *r1 = gen_acquire(old), *r2 = gen_acquire(old);
    CHECK(r1 == old && r2 == old && old->refs == 3);
    for (int i = 0; i < HEALTH_EJECT_AFTER; i++)
        upstream_health_report(&old->upstreams[1], false, 0);
    /* a reload: the new generation takes over the health it can match */
    config_gen *next = gen_of(three);
    if (!next)
        return;
    gen_inherit_health(next, old);
    CHECK(!upstream_available(&next->upstreams[1], 10));
    CHECK(upstream_available(&next->upstreams[0], 10));
    gen_release(old); /* the owner lets go: requests still hold it */
    CHECK_EQ_SIZE(cleanups, 0);
    CHECK_EQ_SIZE(r1->refs, 2);
    CHECK(strcmp(r1->upstreams[0].name, "openai") == 0);
    gen_release(r1);
    CHECK_EQ_SIZE(cleanups, 0);
    gen_release(r2);
    CHECK_EQ_SIZE(cleanups, 1);
    gen_release(NULL);
    gen_release(next);

    /* a renamed or moved upstream starts healthy */
    config_gen *a = gen_of("{\"upstreams\": [{\"name\": \"x\", \"url\": \"http://h1\"}]}");
    config_gen *b = gen_of("{\"upstreams\": [{\"name\": \"x\", \"url\": \"http://h2\"}]}");
    if (a && b) {
        for (int i = 0; i < HEALTH_EJECT_AFTER; i++)
            upstream_health_report(&a->upstreams[0], false, 0);
        gen_inherit_health(b, a);
        CHECK(upstream_available(&b->upstreams[0], 1));
    }
    gen_release(a);
    gen_release(b);
}

TEST(routes_generation_memory_holds_many_routes)
{
    /* enough routes to need several chunks and a sorted lookup */
    size_t cap = 256 * 1024;
    char *text = malloc(cap);
    wbuf b = wbuf_over(text, cap);
    wbuf_puts(&b, "{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\"}, {\"name\": \"b\", \"url\": \"http://h\"}],"
                  " \"routes\": {");
    for (unsigned i = 0; i < 3000; i++) {
        wbuf_puts(&b, i ? ", \"model-" : "\"model-");
        wbuf_put_u64(&b, (i * 7919u) % 3000u);
        wbuf_puts(&b, i % 2 ? "\": [\"a\", \"b\"]" : "\": [[\"b\", \"a\"]]");
    }
    wbuf_puts(&b, "}}");
    CHECK(!b.overflow);
    char why[256];
    config_gen *g = cfgfile_parse(text, b.len, "many.json", &none, why, sizeof why);
    free(text);
    CHECK(g != NULL);
    if (!g)
        return;
    CHECK_EQ_SIZE(g->route_count, 3000);
    for (unsigned i = 0; i < 3000; i++) {
        char name[32];
        snprintf(name, sizeof name, "model-%u", i);
        route *r = gen_route(g, slice_of(name));
        if (!r || !slice_eq(r->model, slice_of(name)))
            unit_fail(__FILE__, __LINE__, "route %s not found", name);
    }
    CHECK(gen_route(g, SLICE_LIT("model-3000")) == NULL);
    gen_release(g);
}
