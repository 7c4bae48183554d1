/* ssegate: wires configuration, the upstreams, the server and the reactor;
 * with --workers N > 1, a supervisor and N such processes on one port. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/arena.h"
#include "core/config.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/netaddr.h"
#include "core/supervisor.h"
#include "demo/fakeai.h"
#include "gateway/generation.h"
#include "gateway/metrics.h"
#include "http/server.h"
#include "upstream/resolver.h"

#define SSEGATE_VERSION "0.3.0"

static const char demo_reply[] =
    "Hello! This is ssegate's demo upstream: no API key was given, so this reply streams from inside the "
    "gateway, one token every 20 ms, through the same relay that serves real upstreams. Set OPENAI_API_KEY "
    "or --upstream to talk to a real model.";

/* One serving process: everything main builds, in the order it builds it. */
typedef struct gateway {
    const config *cfg;
    metrics *metrics;
    loop *loop;
    fakeai *demo;
    dns_resolver *resolver; /* the upstreams' names, resolved in the reactor */
    generation *gen; /* until the server takes it */
    const char *upstream_url;
    char demo_url[96];
    char upstream_name[URL_HOST_MAX + 16]; /* without --config: the one upstream's, for logs and metrics */
    server *server;
} gateway;

/* SIGHUP (§3): a new generation from the files, or the old one stays. */
static void reload(gateway *g)
{
    char why[512];
    generation *next =
        generation_load(g->cfg, g->loop, g->metrics, g->resolver, g->upstream_url, g->upstream_name, why, sizeof why);
    if (!next) {
        metrics_config_reload(g->metrics, false);
        log_message("error", "reload failed; the running configuration stays", (log_field[]){{"error", why}}, 1);
        return;
    }
    generation_inherit(next, server_generation(g->server));
    server_set_generation(g->server, next);
    metrics_config_reload(g->metrics, true);
    char upstreams[24];
    snprintf(upstreams, sizeof upstreams, "%zu", next->routes->upstream_count);
    log_message("info", "configuration reloaded", (log_field[]){{"upstreams", upstreams}}, 1);
}

static void on_signal(void *ctx, int signo)
{
    gateway *g = ctx;
    if (signo == SIGTERM || signo == SIGINT) {
        log_message("info", "draining", (log_field[]){{"signal", signo == SIGTERM ? "SIGTERM" : "SIGINT"}}, 1);
        server_drain(g->server);
    } else if (signo == SIGHUP) {
        reload(g);
    }
}

/* §3: without client keys, only a loopback listener is safe. */
static bool listen_is_loopback(const char *listen)
{
    return strncmp(listen, "127.", 4) == 0 || strncmp(listen, "localhost:", 10) == 0 ||
           strncmp(listen, "[::1]:", 6) == 0;
}

static void gateway_close(gateway *g)
{
    server_free(g->server); /* releases the generation it holds */
    generation_release(g->gen);
    dns_resolver_free(g->resolver); /* after the upstreams that use it */
    fakeai_stop(g->demo);
    loop_free(g->loop);
    metrics_free(g->metrics);
    memset(g, 0, sizeof *g);
}

/* Everything but the listener. Returns 0, or an exit status after saying
 * why on stderr (and closing what was opened). */
static int gateway_open(gateway *g, const config *cfg)
{
    memset(g, 0, sizeof *g);
    g->cfg = cfg;
    g->metrics = metrics_new(cfg->metrics_max_clients, 64, SSEGATE_VERSION);
    g->loop = g->metrics ? loop_new() : NULL;
    if (!g->loop) {
        fprintf(stderr, "ssegate: cannot create the event loop\n");
        gateway_close(g);
        return 1;
    }
    const char *why = NULL;
    g->upstream_url = cfg->upstream;
    bool demo = cfg->demo && !cfg->config_file;
    if (demo) {
        fakeai_config fc = {.chunks = 0, .delay_ms = 20, .reply_text = demo_reply, .model = "demo"};
        g->demo = fakeai_start(g->loop, "127.0.0.1:0", &fc, &why);
        if (!g->demo) {
            fprintf(stderr, "ssegate: cannot start the demo upstream: %s\n", why);
            gateway_close(g);
            return 1;
        }
        snprintf(g->demo_url, sizeof g->demo_url, "http://%s/v1", fakeai_address(g->demo));
        g->upstream_url = g->demo_url;
    }
    url parsed;
    snprintf(g->upstream_name, sizeof g->upstream_name, "demo"); /* logs name the demo, not its address */
    if (!demo && !cfg->config_file && url_parse(g->upstream_url, &parsed, &why) == 0)
        snprintf(g->upstream_name, sizeof g->upstream_name, "%s:%u", parsed.host, parsed.port);
    /* Only the files are read here; the first lookup goes out from the loop. */
    g->resolver = dns_resolver_new(g->loop, cfg->resolv_conf, cfg->hosts_file, &why);
    if (!g->resolver) {
        fprintf(stderr, "ssegate: cannot set up name resolution: %s\n", why);
        gateway_close(g);
        return 2;
    }
    char why_load[512];
    g->gen = generation_load(cfg, g->loop, g->metrics, g->resolver, g->upstream_url, g->upstream_name, why_load,
                             sizeof why_load);
    if (!g->gen) {
        fprintf(stderr, "ssegate: %s\n", why_load);
        gateway_close(g);
        return 2;
    }
    if (!auth_required(g->gen->auth) && !listen_is_loopback(cfg->listen) && !cfg->allow_anonymous) {
        fprintf(stderr, "ssegate: refusing to listen on %s without client keys; "
                        "give --keys-file or a JWT key, or --allow-anonymous to accept anyone\n",
                cfg->listen);
        gateway_close(g);
        return 2;
    }
    return 0;
}

/* The start-up lines; the first names the address actually listened on. */
static void log_banner(const config *cfg, const char *address, bool demo, size_t upstreams, bool auth_on,
                       size_t key_count)
{
    char workers[16], count[24];
    snprintf(workers, sizeof workers, "%u", cfg->workers);
    snprintf(count, sizeof count, "%zu", upstreams);
    size_t n_workers = cfg->workers > 1 ? 1 : 0; /* the field only when there are several */
    if (demo) {
        char try_it[256];
        snprintf(try_it, sizeof try_it,
                 "curl -N http://%s/v1/chat/completions -d '{\"model\":\"demo\",\"stream\":true,\"messages\":[{"
                 "\"role\":\"user\",\"content\":\"hi\"}]}'",
                 address);
        char page[96];
        snprintf(page, sizeof page, "http://%s/", address);
        log_field f[] = {{"listen", address}, {"upstream", "demo"}, {"page", page}, {"try", try_it},
                         {"workers", workers}};
        log_message("info", "ssegate serving the built-in demo upstream (no API key given)", f, 4 + n_workers);
    } else {
        log_field f[] = {{"listen", address},
                         {"upstream", cfg->config_file ? cfg->config_file : cfg->upstream},
                         {"upstreams", count},
                         {"workers", workers}};
        log_message("info", "ssegate listening", f, 3 + n_workers);
    }
    if (auth_on) {
        char keys[24];
        snprintf(keys, sizeof keys, "%zu", key_count);
        log_field f[] = {{"keys", keys}, {"jwt", cfg->jwt_secret_file || cfg->jwt_keys_file ? "on" : "off"}};
        log_message("info", "client auth on", f, 2);
    }
}

/* Binds the listener and runs the reactor until drained. Under a supervisor
 * the supervisor logs the banner, once for all workers. */
static int gateway_serve(gateway *g, bool supervised)
{
    const char *why = NULL;
    generation *gen = g->gen;
    bool auth_on = auth_required(gen->auth);
    size_t keys = auth_key_count(gen->auth), upstreams = gen->routes->upstream_count;
    g->server = server_new(g->loop, g->cfg, gen, g->metrics, &why);
    if (!g->server) {
        fprintf(stderr, "ssegate: %s\n", why);
        return 2;
    }
    g->gen = NULL; /* the server's now */
    static const int signals[] = {SIGTERM, SIGINT, SIGHUP};
    loop_signals(g->loop, signals, sizeof signals / sizeof signals[0], on_signal, g);
    if (!supervised)
        log_banner(g->cfg, server_address(g->server), g->demo != NULL, upstreams, auth_on, keys);
    server_set_ready(g->server, true);
    supervisor_worker_ready();
    log_attach(g->loop);
    int rc = loop_run(g->loop);
    log_attach(NULL); /* from here on, lines go out as they are written */
    log_message("info", "stopped", NULL, 0);
    return rc == 0 ? 0 : 1;
}

/* A whole serving process: the only one with --workers 1, else a worker. */
static int serve(const config *cfg, bool supervised)
{
    gateway g;
    int rc = gateway_open(&g, cfg);
    if (rc != 0)
        return rc;
    rc = gateway_serve(&g, supervised);
    gateway_close(&g);
    return rc;
}

typedef struct workers_ctx {
    config *cfg;
    int reserved_fd; /* holds the port while workers come and go */
    char address[80];
    bool auth_on, demo;
    size_t key_count, upstreams;
} workers_ctx;

static int worker_main(void *ctx)
{
    workers_ctx *w = ctx;
    close(w->reserved_fd);
    int rc = serve(w->cfg, true);
    config_free(w->cfg);
    arena_release_cached();
    return rc;
}

static void workers_serving(void *ctx)
{
    const workers_ctx *w = ctx;
    log_banner(w->cfg, w->address, w->demo, w->upstreams, w->auth_on, w->key_count);
}

/* --workers N > 1: check the configuration once here, so that a mistake is
 * one message and exit 2 rather than N crashing workers; reserve the port
 * (port 0 resolved) with a bound socket that never listens, so it gets no
 * connections; then fork the workers, which bind it with SO_REUSEPORT. */
static int serve_with_workers(config *cfg)
{
    workers_ctx w = {.cfg = cfg, .reserved_fd = -1};
    gateway g;
    int rc = gateway_open(&g, cfg);
    if (rc != 0)
        return rc;
    w.auth_on = auth_required(g.gen->auth);
    w.key_count = auth_key_count(g.gen->auth);
    w.upstreams = g.gen->routes->upstream_count;
    w.demo = g.demo != NULL;
    gateway_close(&g);

    const char *why = NULL;
    w.reserved_fd = netaddr_bind(cfg->listen, true, false, &why);
    if (w.reserved_fd < 0) {
        fprintf(stderr, "ssegate: %s\n", why);
        return 2;
    }
    netaddr_local(w.reserved_fd, w.address, sizeof w.address);
    cfg->listen = w.address;
    supervisor_plan plan = {.workers = cfg->workers,
                            .stop_grace_ms = cfg->drain_timeout_ms + 5000,
                            .worker = worker_main,
                            .serving = workers_serving,
                            .ctx = &w};
    rc = supervise(&plan);
    close(w.reserved_fd);
    log_message("info", "stopped", NULL, 0);
    return rc;
}

/* Soft RLIMIT_NOFILE up to the hard limit: each client may need an
 * upstream socket as well, so --max-conns wants twice as many. */
static void raise_open_file_limit(size_t max_conns)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur != rl.rlim_max) {
        struct rlimit want = {.rlim_cur = rl.rlim_max, .rlim_max = rl.rlim_max};
        if (rl.rlim_max == RLIM_INFINITY) { /* the kernel caps it at fs.nr_open */
            unsigned long nr_open = 0;
            FILE *f = fopen("/proc/sys/fs/nr_open", "r");
            if (f && fscanf(f, "%lu", &nr_open) == 1 && nr_open > rl.rlim_cur)
                want.rlim_cur = nr_open;
            else
                want.rlim_cur = rl.rlim_cur;
            if (f)
                fclose(f);
        }
        if (setrlimit(RLIMIT_NOFILE, &want) == 0)
            rl = want;
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur / 2 < max_conns) {
        char have[24], conns[24];
        snprintf(have, sizeof have, "%llu", (unsigned long long)rl.rlim_cur);
        snprintf(conns, sizeof conns, "%zu", max_conns);
        log_field f[] = {{"nofile", have}, {"max_conns", conns}};
        log_message("warn", "open-file limit is below twice --max-conns; connections past it will fail", f, 2);
    }
}

int main(int argc, char **argv)
{
    config cfg;
    int rc = config_load(&cfg, argc, argv);
    if (rc != 0) {
        config_free(&cfg); /* the key may have been read before the mistake */
        return rc > 0 ? 0 : 2;
    }
    log_set_format(cfg.log_format);
    signal(SIGPIPE, SIG_IGN);
    raise_open_file_limit(cfg.max_conns);

    rc = cfg.workers > 1 ? serve_with_workers(&cfg) : serve(&cfg, false);
    config_free(&cfg);
    arena_release_cached();
    return rc;
}
