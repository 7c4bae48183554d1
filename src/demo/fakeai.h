/* A fake OpenAI-compatible upstream served on the reactor: the gateway's demo
 * upstream and the engine of tools/mock-upstream. It speaks OpenAI's wire
 * format (streamed chat.completion.chunk events, chat.completion, models,
 * embeddings, error JSON; with faults on also the Responses API) over
 * plaintext or TLS, paced by loop timers, and when asked plays the faults
 * the gateway must survive. What its answers say is demo/fakeai_wire.h. */
#ifndef SSEGATE_FAKEAI_H
#define SSEGATE_FAKEAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "upstream/tls.h"

typedef struct fakeai fakeai;

typedef struct fakeai_config {
    size_t chunks;     /* content deltas per streamed reply (tok<i> rule) */
    uint64_t delay_ms; /* pause before each content delta; 0: as fast as the socket takes them */
    /* When set, the reply is this text split into word tokens (each keeps the
     * whitespace that follows it) and `chunks` is ignored; else the tok<i> rule. */
    const char *reply_text;
    const char *model;      /* model named in answers when the request names none */
    const char *expect_key; /* NULL: no check; else 401 unless "Authorization: Bearer <key>" */
    const tls_server_cred *tls; /* NULL: plaintext. Borrowed: keep it alive until fakeai_stop. */
    /* Honour X-Mock-* request headers, serve /_mock/stats and /_mock/last,
     * /v1/responses and TRACE, and give every /v1 answer an x-request-id. */
    bool faults;
    int fail_status; /* 0, or every /v1 request is answered with this status (a failing upstream) */
} fakeai_config;

/* Listens on listen_addr ("HOST:PORT", port 0 for an ephemeral one) and
 * serves on `l`. Strings in cfg are copied. On failure returns NULL with
 * *why set to a sentence. */
fakeai *fakeai_start(loop *l, const char *listen_addr, const fakeai_config *cfg, const char **why);

/* The address actually bound, e.g. "127.0.0.1:41234". */
const char *fakeai_address(const fakeai *f);

/* Closes the listener and every connection and frees everything, at once.
 * Call it when no event of this loop is being dispatched (after loop_run
 * returned): connections are freed immediately, not deferred. */
void fakeai_stop(fakeai *f);

#endif
