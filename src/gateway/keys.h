/* Client keys (§3): the keys file, one client a line, `KEY [name] [rpm]
 * [tpm] [streams]` with `-` for a limit not set. Keys are kept only as
 * their SHA-256 digests, in a table keyed by the digest; a presented key is
 * hashed and its digest compared in constant time, so neither the key nor
 * how much of it matched leaks through timing. */
#ifndef SSEGATE_KEYS_H
#define SSEGATE_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "core/slice.h"
#include "gateway/limits.h"

enum { CLIENT_NAME_MAX = 64, KEY_DIGEST_LEN = 32 };

typedef struct client_key {
    unsigned char digest[KEY_DIGEST_LEN];
    char name[CLIENT_NAME_MAX + 1]; /* the given name, or "key:" and 8 hex digits of the digest */
    limit_spec spec;
    limit_state state;
    uint32_t metrics_id;
} client_key;

typedef struct keyring keyring;

/* Parses a keys file's text; `source` names it in errors. On failure returns
 * NULL and writes "SOURCE line N: what is wrong" into why. */
keyring *keyring_parse(const char *text, size_t len, const char *source, char *why, size_t why_cap);
/* Reads and parses the file at path. */
keyring *keyring_load(const char *path, char *why, size_t why_cap);
void keyring_free(keyring *k);
/* A new keyring holding base's clients (base may be NULL) and then `more`
 * (e.g. a --config file's clients), states and all. On a key held twice
 * returns NULL and writes which two clients share it into why. */
keyring *keyring_with(const keyring *base, const client_key *more, size_t count, char *why, size_t why_cap);

size_t keyring_count(const keyring *k);
client_key *keyring_at(keyring *k, size_t i);
/* The client whose key this is, or NULL. */
client_key *keyring_find(keyring *k, slice presented);
client_key *keyring_find_digest(keyring *k, const unsigned char digest[KEY_DIGEST_LEN]);


/* SHA-256 of data; also names unnamed clients. */
void key_digest(slice data, unsigned char out[KEY_DIGEST_LEN]);
/* 1 when equal; time depends only on the length. */
int digest_equal(const unsigned char *a, const unsigned char *b, size_t len);

#endif
