/* Who is calling (§3): the credential from Authorization: Bearer, x-api-key
 * or api-key, checked against the keys file or, for a three-part bearer
 * token when JWT keys are configured, as a JWT. The answer is an identity:
 * a name for logs and metrics, limits, and where the limit counters live. */
#ifndef SSEGATE_AUTH_H
#define SSEGATE_AUTH_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "core/slice.h"
#include "gateway/keys.h"
#include "gateway/limits.h"
#include "gateway/metrics.h"
#include "http/http.h"

typedef struct auth auth;
typedef struct subject subject;

typedef struct auth_identity {
    const char *name;    /* lives as long as the identity is held */
    limit_spec spec;
    limit_state *state;  /* NULL: no limits */
    uint32_t metrics_id;
    slice presented;     /* the credential as sent, to scrub from what is relayed */
    subject *pin;        /* a JWT subject, kept alive until auth_release */
} auth_identity;

typedef enum auth_status {
    AUTH_OK,
    AUTH_MISSING,       /* no credential */
    AUTH_INVALID_KEY,   /* not a known key */
    AUTH_INVALID_TOKEN, /* a JWT that failed a check */
    AUTH_BUSY           /* every subject slot is held by requests in flight */
} auth_status;

/* Loads the keys file and JWT keys named in cfg, plus `extra` clients (from
 * the config file). NULL with a message in why when one cannot be used.
 * With none configured, auth_required is false. */
auth *auth_new(const config *cfg, metrics *m, const client_key *extra, size_t extra_count, char *why,
               size_t why_cap);
/* After a reload: each client keeps its limit counters. */
void auth_inherit(auth *to, const auth *from);
void auth_free(auth *a);
bool auth_required(const auth *a);
size_t auth_key_count(const auth *a);

/* Checks the request's credential at unix_now_ms (wall-clock time: a JWT's
 * exp and nbf are Unix times). On AUTH_OK fills *id; release it with
 * auth_release when the request ends. Otherwise *why says why. */
auth_status auth_check(auth *a, const http_header *headers, size_t count, uint64_t unix_now_ms, auth_identity *id,
                       const char **why);
/* The same for a credential found elsewhere (/chat/stream's key parameter:
 * EventSource cannot set headers). */
auth_status auth_check_credential(auth *a, slice credential, bool malformed, uint64_t unix_now_ms,
                                  auth_identity *id, const char **why);
void auth_release(auth *a, auth_identity *id);

/* The credential a request carries: Bearer value, else x-api-key, else
 * api-key; empty when none. *malformed is set for an Authorization header
 * that is not a Bearer one. */
slice auth_credential(const http_header *headers, size_t count, bool *malformed);

#endif
