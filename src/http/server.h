/* Client connections: accept, parse requests, route them, write answers;
 * keep-alive, pipelining, timeouts, --max-conns, and draining on SIGTERM. */
#ifndef SSEGATE_SERVER_H
#define SSEGATE_SERVER_H

#include <stdbool.h>

#include "core/config.h"
#include "core/loop.h"
#include "gateway/generation.h"
#include "gateway/metrics.h"

typedef struct server server;

/* Binds cfg->listen. Takes the generation's reference; metrics are
 * borrowed. Returns NULL with *why on failure. */
server *server_new(loop *l, const config *cfg, generation *gen, metrics *m, const char **why);
/* A reload: new requests start on gen (whose reference is taken); the old
 * one is freed when the last request on it ends. */
void server_set_generation(server *s, generation *gen);
generation *server_generation(const server *s);
/* "ADDR:PORT" actually bound (port 0 resolved). */
const char *server_address(const server *s);
/* Ready for traffic: /readyz turns 200. */
void server_set_ready(server *s, bool ready);
/* Stops accepting, lets requests in flight finish, then stops the loop
 * (at the latest after cfg->drain_timeout_ms). */
void server_drain(server *s);
void server_free(server *s);

#endif
