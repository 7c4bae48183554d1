/* Settings from flags and environment variables (§3); flags win. */
#ifndef SSEGATE_CONFIG_H
#define SSEGATE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* More processes than this only add contention on the shared port. */
#define CONFIG_MAX_WORKERS 256u

typedef enum log_format { LOG_JSON, LOG_TEXT } log_format;

typedef struct config {
    const char *listen;
    const char *upstream; /* URL, or "demo" */
    const char *config_file; /* --config: upstreams, routes, aliases, clients (upstream/cfgfile.h); NULL when none */
    bool demo;
    char *upstream_key;   /* owned; NULL when none */
    const char *ca_file;
    const char *resolv_conf, *hosts_file; /* for resolving the upstream host */
    const char *keys_file;
    bool allow_anonymous;
    uint64_t connect_timeout_ms, first_byte_timeout_ms, idle_timeout_ms, request_timeout_ms;
    uint64_t header_timeout_ms, keepalive_timeout_ms, drain_timeout_ms;
    uint64_t max_body, max_upload;
    uint64_t max_event; /* longest SSE event relayed; a longer one ends its stream */
    size_t max_conns;
    unsigned retries;
    log_format log_format;
    unsigned workers; /* 1: one process; more: a supervisor and that many workers */
    /* client auth (§3) */
    const char *jwt_secret_file, *jwt_keys_file, *jwt_issuer, *jwt_audience;
    uint64_t jwt_leeway_ms;
    /* sent upstream next to the key, instead of the client's */
    const char *upstream_org, *upstream_project;
    char *metrics_token; /* owned; NULL: /metrics is open */
    unsigned metrics_max_clients;
    /* resumable streams (§7) */
    bool resumable;
    uint64_t replay_window_ms, replay_buffer;
} config;

/* Fills *c from argv and the environment. Returns 0 to run, 1 when --help
 * or --version was printed, -1 after printing an error to stderr. */
int config_load(config *c, int argc, char **argv);
void config_free(config *c);

/* "250ms", "3s", "2m", "10" (seconds). Returns -1 when malformed. */
int parse_duration_ms(const char *text, uint64_t *out);
/* "4MiB", "512KiB", "1024", "1k", "2M". Returns -1 when malformed. */
int parse_size(const char *text, uint64_t *out);

#endif
