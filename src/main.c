/* ssegate: wires configuration, the upstream, the server and the reactor. */
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "core/arena.h"
#include "core/config.h"
#include "demo/fakeai.h"
#include "gateway/auth.h"
#include "gateway/metrics.h"
#include "core/log.h"
#include "core/loop.h"
#include "http/server.h"
#include "upstream/resolver.h"
#include "upstream/upstream.h"

#define SSEGATE_VERSION "0.3.0"

static const char demo_reply[] =
    "Hello! This is ssegate's demo upstream: no API key was given, so this reply streams from inside the "
    "gateway, one token every 20 ms, through the same relay that serves real upstreams. Set OPENAI_API_KEY "
    "or --upstream to talk to a real model.";

typedef struct app {
    loop *loop;
    server *server;
} app;

static void on_signal(void *ctx, int signo)
{
    app *a = ctx;
    if (signo == SIGTERM || signo == SIGINT) {
        log_message("info", "draining", (log_field[]){{"signal", signo == SIGTERM ? "SIGTERM" : "SIGINT"}}, 1);
        server_drain(a->server);
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

    metrics *m = metrics_new(cfg.metrics_max_clients, 16, SSEGATE_VERSION);
    char why_auth[512];
    auth *clients = m ? auth_new(&cfg, m, why_auth, sizeof why_auth) : NULL;
    if (!clients) {
        fprintf(stderr, "ssegate: %s\n", m ? why_auth : "out of memory");
        metrics_free(m);
        config_free(&cfg);
        return 2;
    }
    if (!auth_required(clients) && !listen_is_loopback(cfg.listen) && !cfg.allow_anonymous) {
        fprintf(stderr, "ssegate: refusing to listen on %s without client keys; "
                        "give --keys-file or a JWT key, or --allow-anonymous to accept anyone\n",
                cfg.listen);
        auth_free(clients);
        metrics_free(m);
        config_free(&cfg);
        return 2;
    }

    app a = {0};
    a.loop = loop_new();
    if (!a.loop) {
        fprintf(stderr, "ssegate: cannot create the event loop\n");
        return 1;
    }
    const char *why = NULL;
    fakeai *demo = NULL;
    char demo_url[96];
    const char *upstream_url = cfg.upstream;
    if (cfg.demo) {
        fakeai_config fc = {.chunks = 0, .delay_ms = 20, .reply_text = demo_reply, .model = "demo"};
        demo = fakeai_start(a.loop, "127.0.0.1:0", &fc, &why);
        if (!demo) {
            fprintf(stderr, "ssegate: cannot start the demo upstream: %s\n", why);
            return 1;
        }
        snprintf(demo_url, sizeof demo_url, "http://%s/v1", fakeai_address(demo));
        upstream_url = demo_url;
    }

    upstream_target target;
    if (upstream_target_init(&target, upstream_url, cfg.demo ? NULL : cfg.upstream_key, cfg.ca_file, &why) != 0) {
        fprintf(stderr, "ssegate: upstream %s: %s\n", upstream_url, why);
        upstream_target_free(&target, a.loop);
        fakeai_stop(demo);
        loop_free(a.loop);
        auth_free(clients);
        metrics_free(m);
        config_free(&cfg);
        return 2;
    }
    if (cfg.demo) /* logs name the demo, not its loopback address */
        snprintf(target.name, sizeof target.name, "demo");
    dns_resolver *resolver = NULL;
    if (target.needs_dns) {
        /* Only the files are read here; the first lookup goes out from the loop. */
        resolver = dns_resolver_new(a.loop, cfg.resolv_conf, cfg.hosts_file, &why);
        if (!resolver) {
            fprintf(stderr, "ssegate: resolving the upstream host: %s\n", why);
            upstream_target_free(&target, a.loop);
            fakeai_stop(demo);
            loop_free(a.loop);
            auth_free(clients);
            metrics_free(m);
            config_free(&cfg);
            return 2;
        }
        upstream_target_use_resolver(&target, resolver);
    }
    a.server = server_new(a.loop, &cfg, &target, clients, m, &why);
    if (!a.server) {
        fprintf(stderr, "ssegate: %s\n", why);
        upstream_target_free(&target, a.loop);
        dns_resolver_free(resolver);
        fakeai_stop(demo);
        loop_free(a.loop);
        auth_free(clients);
        metrics_free(m);
        config_free(&cfg);
        return 2;
    }
    static const int signals[] = {SIGTERM, SIGINT, SIGHUP};
    loop_signals(a.loop, signals, sizeof signals / sizeof signals[0], on_signal, &a);

    char try_it[256];
    snprintf(try_it, sizeof try_it,
             "curl -N http://%s/v1/chat/completions -d '{\"model\":\"demo\",\"stream\":true,\"messages\":[{\"role\":"
             "\"user\",\"content\":\"hi\"}]}'",
             server_address(a.server));
    if (cfg.demo) {
        log_field f[] = {{"listen", server_address(a.server)}, {"upstream", "demo"}, {"try", try_it}};
        log_message("info", "ssegate serving the built-in demo upstream (no API key given)", f, 3);
    } else {
        log_field f[] = {{"listen", server_address(a.server)}, {"upstream", upstream_url}};
        log_message("info", "ssegate listening", f, 2);
    }
    if (auth_required(clients)) {
        char keys[24];
        snprintf(keys, sizeof keys, "%zu", auth_key_count(clients));
        log_field f[] = {{"keys", keys}, {"jwt", cfg.jwt_secret_file || cfg.jwt_keys_file ? "on" : "off"}};
        log_message("info", "client auth on", f, 2);
    }
    server_set_ready(a.server, true);
    log_attach(a.loop);
    rc = loop_run(a.loop);
    log_attach(NULL); /* from here on, lines go out as they are written */
    log_message("info", "stopped", NULL, 0);

    server_free(a.server);
    upstream_target_free(&target, a.loop);
    dns_resolver_free(resolver);
    fakeai_stop(demo);
    loop_free(a.loop);
    auth_free(clients);
    metrics_free(m);
    config_free(&cfg);
    arena_release_cached();
    return rc == 0 ? 0 : 1;
}
