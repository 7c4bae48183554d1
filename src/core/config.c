#include "core/config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum opt_kind { OPT_STRING, OPT_DURATION, OPT_DURATION0, OPT_SIZE, OPT_COUNT, OPT_FLAG, OPT_KEYFILE, OPT_LOGFMT } opt_kind;

typedef struct option {
    const char *flag, *env, *fallback, *help;
    opt_kind kind;
    size_t offset;
} option;

#define AT(field) offsetof(config, field)

static const option options[] = {
    {"--listen", "SSEGATE_LISTEN", "127.0.0.1:8080", "address to listen on, ADDR:PORT (port 0 picks one)", OPT_STRING, AT(listen)},
    {"--upstream", "OPENAI_BASE_URL", NULL, "upstream base URL, or 'demo' (default https://api.openai.com/v1 with a key, else demo)", OPT_STRING, AT(upstream)},
    {"--upstream-key-file", NULL, NULL, "file holding the upstream API key (else OPENAI_API_KEY)", OPT_KEYFILE, AT(upstream_key)},
    {"--upstream-org", "OPENAI_ORG_ID", NULL, "OpenAI-Organization sent upstream (the client's is dropped)", OPT_STRING, AT(upstream_org)},
    {"--upstream-project", "OPENAI_PROJECT_ID", NULL, "OpenAI-Project sent upstream (the client's is dropped)", OPT_STRING, AT(upstream_project)},
    {"--ca-file", "SSEGATE_CA_FILE", "/etc/ssl/certs/ca-certificates.crt", "PEM bundle that upstream certificates are verified against", OPT_STRING, AT(ca_file)},
    {"--resolv-conf", "SSEGATE_RESOLV_CONF", "/etc/resolv.conf", "nameservers, search list and options for resolving the upstream host", OPT_STRING, AT(resolv_conf)},
    {"--hosts-file", "SSEGATE_HOSTS_FILE", "/etc/hosts", "names looked up before DNS", OPT_STRING, AT(hosts_file)},
    {"--keys-file", "SSEGATE_KEYS_FILE", NULL, "client keys, 'KEY [name] [rpm] [tpm] [streams]' per line (none: no client auth, loopback only)", OPT_STRING, AT(keys_file)},
    {"--config", "SSEGATE_CONFIG", NULL, "JSON file of upstreams, routes, aliases and clients (reloaded on SIGHUP)", OPT_STRING, AT(config_file)},
    {"--jwt-secret-file", "SSEGATE_JWT_SECRET_FILE", NULL, "HS256/384/512 secret for client JWTs", OPT_STRING, AT(jwt_secret_file)},
    {"--jwt-keys-file", "SSEGATE_JWT_KEYS_FILE", NULL, "PEM public keys or a JWKS file for RS256/384/512, ES256/384 client JWTs", OPT_STRING, AT(jwt_keys_file)},
    {"--jwt-issuer", "SSEGATE_JWT_ISSUER", NULL, "required JWT iss (default: not checked)", OPT_STRING, AT(jwt_issuer)},
    {"--jwt-audience", "SSEGATE_JWT_AUDIENCE", NULL, "required JWT aud (default: not checked)", OPT_STRING, AT(jwt_audience)},
    {"--jwt-leeway", "SSEGATE_JWT_LEEWAY", "30s", "clock skew allowed for JWT exp/nbf", OPT_DURATION0, AT(jwt_leeway_ms)},
    {"--allow-anonymous", NULL, NULL, "allow no client auth on a non-loopback address", OPT_FLAG, AT(allow_anonymous)},
    {"--connect-timeout", "SSEGATE_CONNECT_TIMEOUT", "3s", "upstream connect and TLS handshake", OPT_DURATION, AT(connect_timeout_ms)},
    {"--first-byte-timeout", "SSEGATE_FIRST_BYTE_TIMEOUT", "120s", "upstream time to its first response byte", OPT_DURATION, AT(first_byte_timeout_ms)},
    {"--idle-timeout", "SSEGATE_IDLE_TIMEOUT", "60s", "upstream silence between chunks", OPT_DURATION, AT(idle_timeout_ms)},
    {"--request-timeout", "SSEGATE_REQUEST_TIMEOUT", "600s", "whole request", OPT_DURATION, AT(request_timeout_ms)},
    {"--header-timeout", "SSEGATE_HEADER_TIMEOUT", "10s", "client must send its request head", OPT_DURATION, AT(header_timeout_ms)},
    {"--keepalive-timeout", "SSEGATE_KEEPALIVE_TIMEOUT", "60s", "idle client connection", OPT_DURATION, AT(keepalive_timeout_ms)},
    {"--drain-timeout", "SSEGATE_DRAIN_TIMEOUT", "30s", "on SIGTERM, how long streams in flight may finish", OPT_DURATION, AT(drain_timeout_ms)},
    {"--max-body", "SSEGATE_MAX_BODY", "4MiB", "largest JSON request body (read whole)", OPT_SIZE, AT(max_body)},
    {"--max-upload", "SSEGATE_MAX_UPLOAD", "512MiB", "largest other request body (streamed up as it arrives)", OPT_SIZE, AT(max_upload)},
    {"--max-event", "SSEGATE_MAX_EVENT", "16MiB", "longest upstream SSE event; a longer one ends its stream", OPT_SIZE, AT(max_event)},
    {"--max-conns", "SSEGATE_MAX_CONNS", "10000", "client connections at once; more get 503", OPT_COUNT, AT(max_conns)},
    {"--retries", "SSEGATE_RETRIES", "2", "upstream retries before the first byte reaches the client", OPT_COUNT, AT(retries)},
    {"--log-format", "SSEGATE_LOG_FORMAT", "json", "json or text", OPT_LOGFMT, AT(log_format)},
    {"--workers", "SSEGATE_WORKERS", "1", "processes sharing the port (SO_REUSEPORT)", OPT_COUNT, AT(workers)},
    {"--metrics-token-file", "SSEGATE_METRICS_TOKEN_FILE", NULL, "file holding the bearer token /metrics requires (default: open)", OPT_KEYFILE, AT(metrics_token)},
    {"--resumable", "SSEGATE_RESUMABLE", NULL, "ids on every /v1 stream, resumable with Last-Event-ID (always on for /chat/stream)", OPT_FLAG, AT(resumable)},
    {"--replay-window", "SSEGATE_REPLAY_WINDOW", "60s", "how long a resumable stream's events are kept after it ended", OPT_DURATION, AT(replay_window_ms)},
    {"--replay-buffer", "SSEGATE_REPLAY_BUFFER", "1MiB", "events kept per resumable stream", OPT_SIZE, AT(replay_buffer)},
    {"--metrics-max-clients", "SSEGATE_METRICS_MAX_CLIENTS", "1000", "distinct client names in metrics; the rest count as 'other'", OPT_COUNT, AT(metrics_max_clients)},
};

enum { OPTION_COUNT = sizeof options / sizeof options[0] };

static void usage(FILE *out)
{
    fputs("usage: ssegate [options]\n\nAn OpenAI-compatible streaming gateway.\n\n", out);
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const option *o = &options[i];
        fprintf(out, "  %-24s %s", o->flag, o->help);
        if (o->env)
            fprintf(out, " [env %s]", o->env);
        if (o->fallback)
            fprintf(out, " (default %s)", o->fallback);
        fputc('\n', out);
    }
    fputs("  --help                   this text\n\nThe upstream key comes from OPENAI_API_KEY or "
          "--upstream-key-file.\nDurations take ms, s or m; sizes take KiB, MiB (or k, M).\n",
          out);
}

int parse_duration_ms(const char *text, uint64_t *out)
{
    char *end;
    errno = 0;
    /* strtoull would also take leading space, a sign, and negate "-5". */
    if (text[0] < '0' || text[0] > '9')
        return -1;
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text || errno)
        return -1;
    uint64_t scale;
    if (strcmp(end, "ms") == 0)
        scale = 1;
    else if (strcmp(end, "s") == 0 || *end == '\0')
        scale = 1000;
    else if (strcmp(end, "m") == 0)
        scale = 60000;
    else
        return -1;
    if (v > UINT64_MAX / scale / 4)
        return -1;
    *out = v * scale;
    return 0;
}

int parse_size(const char *text, uint64_t *out)
{
    char *end;
    errno = 0;
    if (text[0] < '0' || text[0] > '9')
        return -1; /* as above: " -1" would otherwise wrap to 2^64 - 1 */
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text || errno)
        return -1;
    static const struct {
        const char *suffix;
        uint64_t scale;
    } units[] = {{"", 1},         {"B", 1},       {"k", 1024},   {"K", 1024},   {"KB", 1000},
                 {"KiB", 1024},   {"M", 1 << 20}, {"MB", 1000000}, {"MiB", 1 << 20},
                 {"G", 1 << 30},  {"GiB", 1 << 30}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcmp(end, units[i].suffix) == 0) {
            if (v > UINT64_MAX / units[i].scale)
                return -1;
            *out = v * units[i].scale;
            return 0;
        }
    return -1;
}

/* Reads a secret's file: the first line, trimmed. */
static char *read_key_file(const char *path, const char *flag)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "ssegate: %s: cannot read %s: %s\n", flag, path, strerror(errno));
        return NULL;
    }
    char line[4096];
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    if (!got) {
        fprintf(stderr, "ssegate: %s: %s is empty\n", flag, path);
        return NULL;
    }
    size_t n = strcspn(line, "\r\n");
    while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\t'))
        n--;
    line[n] = '\0';
    if (n == 0) {
        fprintf(stderr, "ssegate: %s: %s is empty\n", flag, path);
        return NULL;
    }
    char *copy = strdup(line);
    explicit_bzero(line, sizeof line);
    return copy;
}

static int apply(config *c, const option *o, const char *value, const char *source)
{
    char *field = (char *)c + o->offset;
    switch (o->kind) {
    case OPT_STRING:
        memcpy(field, &value, sizeof value);
        return 0;
    case OPT_FLAG:
        *(bool *)(void *)field = true;
        return 0;
    case OPT_KEYFILE: {
        char *key = read_key_file(value, o->flag);
        if (!key)
            return -1;
        char **slot = (char **)(void *)field;
        free(*slot);
        *slot = key;
        return 0;
    }
    case OPT_DURATION:
    case OPT_DURATION0:
        if (parse_duration_ms(value, (uint64_t *)(void *)field) != 0 ||
            (o->kind == OPT_DURATION && *(uint64_t *)(void *)field == 0))
            break;
        return 0;
    case OPT_SIZE:
        if (parse_size(value, (uint64_t *)(void *)field) != 0)
            break;
        return 0;
    case OPT_COUNT: {
        char *end;
        errno = 0;
        unsigned long v = strtoul(value, &end, 10);
        if (end == value || *end || errno || value[0] == '-' || v > 1000000)
            break;
        if (o->offset == AT(max_conns))
            c->max_conns = v;
        else
            *(unsigned *)(void *)field = (unsigned)v;
        return 0;
    }
    case OPT_LOGFMT:
        if (strcmp(value, "json") == 0)
            c->log_format = LOG_JSON;
        else if (strcmp(value, "text") == 0)
            c->log_format = LOG_TEXT;
        else
            break;
        return 0;
    }
    fprintf(stderr, "ssegate: invalid value '%s' for %s\n", value, source);
    return -1;
}

int config_load(config *c, int argc, char **argv)
{
    memset(c, 0, sizeof *c);
    /* Defaults, then environment, then flags: later wins. */
    for (size_t i = 0; i < OPTION_COUNT; i++)
        if (options[i].fallback && apply(c, &options[i], options[i].fallback, options[i].flag) != 0)
            return -1;
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const char *v = options[i].env ? getenv(options[i].env) : NULL;
        if (v && *v && apply(c, &options[i], v, options[i].env) != 0)
            return -1;
    }
    const char *env_key = getenv("OPENAI_API_KEY");
    if (env_key && *env_key)
        c->upstream_key = strdup(env_key);

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            usage(stdout);
            return 1;
        }
        const option *o = NULL;
        const char *value = NULL;
        for (size_t k = 0; k < OPTION_COUNT && !o; k++) {
            size_t n = strlen(options[k].flag);
            if (strncmp(arg, options[k].flag, n) == 0 && (arg[n] == '\0' || arg[n] == '=')) {
                o = &options[k];
                value = arg[n] == '=' ? arg + n + 1 : NULL;
            }
        }
        if (!o) {
            fprintf(stderr, "ssegate: unknown option '%s' (see --help)\n", arg);
            return -1;
        }
        if (o->kind == OPT_FLAG) {
            if (value) {
                fprintf(stderr, "ssegate: %s takes no value\n", o->flag);
                return -1;
            }
        } else if (!value) {
            if (i + 1 >= argc) {
                fprintf(stderr, "ssegate: %s needs a value\n", o->flag);
                return -1;
            }
            value = argv[++i];
        }
        if (apply(c, o, value ? value : "", o->flag) != 0)
            return -1;
    }

    /* §2: no key and no upstream named → the demo. */
    if (!c->upstream)
        c->upstream = c->upstream_key ? "https://api.openai.com/v1" : "demo";
    c->demo = strcmp(c->upstream, "demo") == 0;
    if (c->workers < 1 || c->workers > CONFIG_MAX_WORKERS) {
        fprintf(stderr, "ssegate: --workers must be between 1 and %u\n", CONFIG_MAX_WORKERS);
        return -1;
    }
    if (c->max_conns == 0) {
        fprintf(stderr, "ssegate: --max-conns must be at least 1\n");
        return -1;
    }
    return 0;
}

/* Secrets do not stay behind in freed memory. */
static void free_secret(char **s)
{
    if (*s) {
        explicit_bzero(*s, strlen(*s));
        free(*s);
    }
    *s = NULL;
}

void config_free(config *c)
{
    free_secret(&c->upstream_key);
    free_secret(&c->metrics_token);
}
