/* JWT (RFC 7519, JWS compact form) verification for client authentication.
 * Keys are loaded once at start-up (an HMAC secret, public keys from PEM or
 * JWKS); jwt_verify is then pure: no I/O, no allocation, no shared state,
 * the token checked with stack buffers only.
 *
 * Algorithms: HS256/384/512 with the secret, RS256/384/512 with RSA keys of
 * 2048..4096 bits, ES256 with P-256 keys and ES384 with P-384 keys. "none",
 * the PS family and everything else is refused. A token's kid picks the keys
 * whose kid is equal, plus keys that have no kid (PEM keys and the secret);
 * without a kid every key of the alg's type is tried. */
#ifndef SSEGATE_JWT_H
#define SSEGATE_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/slice.h"

enum { JWT_MAX_TOKEN = 8192, JWT_MAX_SUB = 127 };

typedef struct jwt_keys jwt_keys;

/* An empty key set, or NULL when out of memory. */
jwt_keys *jwt_keys_new(void);
void jwt_keys_free(jwt_keys *k);
/* Public keys plus the secret (counted as one when set). */
size_t jwt_keys_count(const jwt_keys *k);

/* Every loader and parser below returns 0, or -1 with *why set to a message
 * naming the file (or `origin`) and what is wrong in it, with a line number
 * where one helps. The message lives in k until the next call on k. A
 * failed call adds no key. */

/* The HMAC secret: the file's bytes, one trailing "\n", "\r\n" or "\r"
 * removed. An empty secret is refused, and so is a second secret. */
int jwt_keys_load_secret(jwt_keys *k, const char *path, const char **why);
int jwt_keys_set_secret(jwt_keys *k, const void *secret, size_t len, const char **why);

/* Public keys from a JWKS file (its first non-blank byte is '{') or else a
 * PEM file of one or more "PUBLIC KEY" (SubjectPublicKeyInfo, RSA or EC),
 * "RSA PUBLIC KEY" (PKCS#1) or "CERTIFICATE" objects; of a certificate only
 * the key is taken (its dates, names and signature are not looked at).
 * "EC PARAMETERS" objects are skipped; private keys are refused. Loading
 * several files adds up. */
int jwt_keys_load_public(jwt_keys *k, const char *path, const char **why);

/* The parsers behind jwt_keys_load_public, on text in memory.
 * JWKS: {"keys":[...]} with RSA keys (n, e) and EC keys (crv P-256 or P-384,
 * x, y); kid and alg are kept when present (a key with an alg serves only
 * that alg). Keys the verifier cannot use (kty OKP, other curves, "use"
 * other than "sig", an alg outside the list above) are skipped, but a file
 * with no usable key is refused, and so is any key with private or secret
 * members (d, p, q, dp, dq, qi, oth, k). */
int jwt_keys_parse_jwks(jwt_keys *k, const char *text, size_t len, const char *origin,
                        const char **why);
int jwt_keys_parse_pem(jwt_keys *k, const char *text, size_t len, const char *origin,
                       const char **why);

/* One DER object, as found inside the PEM kinds above. */
typedef enum jwt_der_kind { JWT_DER_SPKI, JWT_DER_PKCS1_RSA, JWT_DER_CERTIFICATE } jwt_der_kind;
int jwt_keys_parse_der(jwt_keys *k, jwt_der_kind kind, const unsigned char *der, size_t len,
                       const char *origin, const char **why);

typedef struct jwt_policy {
    const char *issuer;   /* required iss when not NULL */
    const char *audience; /* must be aud or one of aud's strings when not NULL */
    uint64_t leeway_s;    /* clock skew allowed on exp and nbf */
} jwt_policy;

typedef struct jwt_claims {
    char sub[JWT_MAX_SUB + 1]; /* unescaped, NUL-terminated, no control characters */
    bool has_rpm, has_tpm, has_streams;
    uint64_t rpm, tpm, streams;
    uint64_t exp;
} jwt_claims;

/* Checks a compact JWS token: structure, alg, signature, then the claims
 * (exp required, nbf optional, iss and aud per policy, sub required;
 * exp, nbf, iat, rpm, tpm and streams must be non-negative integers when
 * present; aud is a string or an array of strings). p may be NULL: no
 * iss or aud requirement, no leeway. Returns 0 with *out filled, or -1 with
 * *out zeroed and *why a static sentence saying which check failed. now_s
 * is the current Unix time. */
int jwt_verify(const jwt_keys *k, const jwt_policy *p, slice token, uint64_t now_s,
               jwt_claims *out, const char **why);

#endif
