/* ssegate: wires configuration, the upstreams, the server and the reactor. */
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "core/arena.h"
#include "core/config.h"
#include "core/log.h"
#include "core/loop.h"
#include "demo/fakeai.h"
#include "gateway/generation.h"
#include "gateway/metrics.h"
#include "http/server.h"

#define SSEGATE_VERSION "0.3.0"

static const char demo_reply[] =
    "Hello! This is ssegate's demo upstream: no API key was given, so this reply streams from inside the "
    "gateway, one token every 20 ms, through the same relay that serves real upstreams. Set OPENAI_API_KEY "
    "or --upstream to talk to a real model.";

typedef struct app {
    loop *loop;
    server *server;
    const config *cfg;
    metrics *metrics;
    const char *upstream_url, *upstream_name; /* without --config: the one upstream */
} app;

/* SIGHUP (§3): a new generation from the files, or the old one stays. */
static void reload(app *a)
{
    char why[512];
    generation *next = generation_load(a->cfg, a->loop, a->metrics, a->upstream_url, a->upstream_name, why, sizeof why);
    if (!next) {
        metrics_config_reload(a->metrics, false);
        log_message("error", "reload failed; the running configuration stays", (log_field[]){{"error", why}}, 1);
        return;
    }
    generation_inherit(next, server_generation(a->server));
    server_set_generation(a->server, next);
    metrics_config_reload(a->metrics, true);
    char upstreams[24];
    snprintf(upstreams, sizeof upstreams, "%zu", next->routes->upstream_count);
    log_message("info", "configuration reloaded", (log_field[]){{"upstreams", upstreams}}, 1);
}

static void on_signal(void *ctx, int signo)
{
    app *a = ctx;
    if (signo == SIGTERM || signo == SIGINT) {
        log_message("info", "draining", (log_field[]){{"signal", signo == SIGTERM ? "SIGTERM" : "SIGINT"}}, 1);
        server_drain(a->server);
    } else if (signo == SIGHUP) {
        reload(a);
    }
}

/* §3: without client keys, only a loopback listener is safe. */
static bool listen_is_loopback(const char *listen)
{
    return strncmp(listen, "127.", 4) == 0 || strncmp(listen, "localhost:", 10) == 0 ||
           strncmp(listen, "[::1]:", 6) == 0;
}

int main(int argc, char **argv)
{
    config cfg;
    int rc = config_load(&cfg, argc, argv);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    log_set_format(cfg.log_format);
    signal(SIGPIPE, SIG_IGN);

    app a = {.cfg = &cfg};
    a.loop = loop_new();
    a.metrics = metrics_new(cfg.metrics_max_clients, 64, SSEGATE_VERSION);
    if (!a.loop || !a.metrics) {
        fprintf(stderr, "ssegate: out of memory\n");
        return 1;
    }
    const char *why = NULL;
    fakeai *demo = NULL;
    char demo_url[96];
    a.upstream_url = cfg.upstream;
    if (cfg.demo && !cfg.config_file) {
        fakeai_config fc = {.chunks = 0, .delay_ms = 20, .reply_text = demo_reply, .model = "demo"};
        demo = fakeai_start(a.loop, "127.0.0.1:0", &fc, &why);
        if (!demo) {
            fprintf(stderr, "ssegate: cannot start the demo upstream: %s\n", why);
            return 1;
        }
        snprintf(demo_url, sizeof demo_url, "http://%s/v1", fakeai_address(demo));
        a.upstream_url = demo_url;
    }
    /* logs and metrics name the demo, not its loopback address; else host:port */
    url parsed;
    char name[URL_HOST_MAX + 16] = "demo";
    if (!(cfg.demo && !cfg.config_file) && !cfg.config_file && url_parse(a.upstream_url, &parsed, &why) == 0)
        snprintf(name, sizeof name, "%s:%u", parsed.host, parsed.port);
    a.upstream_name = name;

    char why_load[512];
    generation *gen = generation_load(&cfg, a.loop, a.metrics, a.upstream_url, a.upstream_name, why_load,
                                      sizeof why_load);
    int exit_code = 2;
    if (!gen) {
        fprintf(stderr, "ssegate: %s\n", why_load);
        goto out;
    }
    if (!auth_required(gen->auth) && !listen_is_loopback(cfg.listen) && !cfg.allow_anonymous) {
        fprintf(stderr, "ssegate: refusing to listen on %s without client keys; "
                        "give --keys-file or a JWT key, or --allow-anonymous to accept anyone\n",
                cfg.listen);
        generation_release(gen);
        goto out;
    }
    bool auth_on = auth_required(gen->auth);
    size_t keys = auth_key_count(gen->auth), upstreams = gen->routes->upstream_count;
    a.server = server_new(a.loop, &cfg, gen, a.metrics, &why);
    if (!a.server) {
        fprintf(stderr, "ssegate: %s\n", why);
        generation_release(gen);
        goto out;
    }
    static const int signals[] = {SIGTERM, SIGINT, SIGHUP};
    loop_signals(a.loop, signals, sizeof signals / sizeof signals[0], on_signal, &a);

    char try_it[256];
    snprintf(try_it, sizeof try_it,
             "curl -N http://%s/v1/chat/completions -d '{\"model\":\"demo\",\"stream\":true,\"messages\":[{\"role\":"
             "\"user\",\"content\":\"hi\"}]}'",
             server_address(a.server));
    if (demo) {
        log_field f[] = {{"listen", server_address(a.server)}, {"upstream", "demo"}, {"try", try_it}};
        log_message("info", "ssegate serving the built-in demo upstream (no API key given)", f, 3);
    } else {
        char count[24];
        snprintf(count, sizeof count, "%zu", upstreams);
        log_field f[] = {{"listen", server_address(a.server)},
                         {"upstream", cfg.config_file ? cfg.config_file : a.upstream_url},
                         {"upstreams", count}};
        log_message("info", "ssegate listening", f, 3);
    }
    if (auth_on) {
        char count[24];
        snprintf(count, sizeof count, "%zu", keys);
        log_field f[] = {{"keys", count}, {"jwt", cfg.jwt_secret_file || cfg.jwt_keys_file ? "on" : "off"}};
        log_message("info", "client auth on", f, 2);
    }
    server_set_ready(a.server, true);
    log_attach(a.loop);
    rc = loop_run(a.loop);
    log_attach(NULL); /* from here on, lines go out as they are written */
    log_message("info", "stopped", NULL, 0);
    exit_code = rc == 0 ? 0 : 1;
    server_free(a.server);
out:
    fakeai_stop(demo);
    loop_free(a.loop);
    metrics_free(a.metrics);
    config_free(&cfg);
    arena_release_cached();
    return exit_code;
}
