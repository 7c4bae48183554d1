/* tools/mock-upstream: the fake OpenAI upstream of src/demo/fakeai.c as a process,
 * with its fault modes on, for the integration tests and benchmarks.
 * Prints "LISTEN 127.0.0.1:PORT" once ready; SIGTERM/SIGINT end it cleanly. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "demo/fakeai.h"
#include "core/loop.h"
#include "upstream/tls.h"

static void usage(FILE *to)
{
    fputs("usage: mock-upstream --listen HOST:PORT [--tls-cert chain.pem --tls-key key.pem]\n"
          "                     [--chunks N (default 8)] [--delay-ms D (default 0)] [--expect-key K]\n"
          "                     [--fail STATUS (every /v1 request gets it: a failing upstream)]\n"
          "                     [--reply-text TEXT (word tokens instead of the tok<i> rule)]\n"
          "Serves OpenAI's wire format; per request, X-Mock-Chunks, X-Mock-Delay-Ms,\n"
          "X-Mock-Fault and X-Mock-Usage override; GET /_mock/stats and /_mock/last\n"
          "report what it saw.\n",
          to);
}

static bool parse_count(const char *s, unsigned long long max, unsigned long long *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return false;
    *out = v;
    return true;
}

static void on_signal(void *ctx, int signo)
{
    (void)signo;
    loop_stop(ctx);
}

int main(int argc, char **argv)
{
    const char *listen_addr = "127.0.0.1:0", *cert = NULL, *key = NULL, *expect_key = NULL, *reply_text = NULL;
    unsigned long long chunks = 8, delay_ms = 0, fail = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!val) {
            fprintf(stderr, "mock-upstream: %s needs a value (or is unknown)\n", arg);
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(arg, "--listen"))
            listen_addr = val;
        else if (!strcmp(arg, "--tls-cert"))
            cert = val;
        else if (!strcmp(arg, "--tls-key"))
            key = val;
        else if (!strcmp(arg, "--expect-key"))
            expect_key = val;
        else if (!strcmp(arg, "--reply-text"))
            reply_text = val;
        else if (!strcmp(arg, "--chunks")) {
            if (!parse_count(val, 1000000, &chunks)) {
                fprintf(stderr, "mock-upstream: --chunks must be 0..1000000\n");
                return 2;
            }
        } else if (!strcmp(arg, "--fail")) {
            if (!parse_count(val, 599, &fail) || fail < 400) {
                fprintf(stderr, "mock-upstream: --fail must be a status from 400 to 599\n");
                return 2;
            }
        } else if (!strcmp(arg, "--delay-ms")) {
            if (!parse_count(val, 3600000, &delay_ms)) {
                fprintf(stderr, "mock-upstream: --delay-ms must be 0..3600000\n");
                return 2;
            }
        } else {
            fprintf(stderr, "mock-upstream: unknown option %s\n", arg);
            usage(stderr);
            return 2;
        }
    }
    if (!cert != !key) {
        fprintf(stderr, "mock-upstream: --tls-cert and --tls-key go together\n");
        return 2;
    }

    /* A peer that vanishes mid-write must be an error code, not a signal. */
    signal(SIGPIPE, SIG_IGN);

    tls_server_cred *cred = NULL;
    if (cert) {
        const char *why = NULL;
        cred = tls_server_cred_load(cert, key, &why);
        if (!cred) {
            fprintf(stderr, "mock-upstream: %s\n", why ? why : "cannot load the TLS certificate or key");
            return 1;
        }
    }
    loop *l = loop_new();
    if (!l) {
        fprintf(stderr, "mock-upstream: cannot create the event loop\n");
        tls_server_cred_free(cred);
        return 1;
    }
    fakeai_config cfg = {
        .chunks = (size_t)chunks,
        .delay_ms = (uint64_t)delay_ms,
        .reply_text = reply_text,
        .model = "gpt-4o-mini",
        .expect_key = expect_key,
        .tls = cred,
        .faults = true,
        .fail_status = (int)fail,
    };
    const char *why = NULL;
    fakeai *f = fakeai_start(l, listen_addr, &cfg, &why);
    if (!f) {
        fprintf(stderr, "mock-upstream: %s: %s\n", listen_addr, why);
        loop_free(l);
        tls_server_cred_free(cred);
        return 1;
    }
    static const int sigs[] = {SIGTERM, SIGINT};
    if (loop_signals(l, sigs, sizeof sigs / sizeof sigs[0], on_signal, l) != 0) {
        fprintf(stderr, "mock-upstream: cannot watch signals\n");
        fakeai_stop(f);
        loop_free(l);
        tls_server_cred_free(cred);
        return 1;
    }
    printf("LISTEN %s\n", fakeai_address(f));
    fflush(stdout);

    int rc = loop_run(l);
    fakeai_stop(f);
    loop_free(l);
    tls_server_cred_free(cred);
    arena_release_cached();
    return rc == 0 ? 0 : 1;
}
