/* Secrets must never leave the gateway (§6): the upstream key and the
 * caller's own credential are masked in whatever the upstream sends back
 * that could echo them (error bodies, error events, headers). */
#ifndef SSEGATE_SCRUB_H
#define SSEGATE_SCRUB_H

#include <stddef.h>

#include "core/slice.h"

enum { SCRUB_MAX_SECRETS = 2, SCRUB_MIN_SECRET = 4 };

typedef struct secrets {
    slice item[SCRUB_MAX_SECRETS];
    size_t count;
} secrets;

/* Adds a secret; ones shorter than SCRUB_MIN_SECRET are not worth masking
 * (they would mask ordinary text) and are ignored. */
void secrets_add(secrets *s, slice secret);

/* Overwrites every occurrence of each secret in buf with '*', keeping the
 * length (so framing and Content-Length stay right). Returns how many. */
size_t scrub(char *buf, size_t len, const secrets *s);

#endif
