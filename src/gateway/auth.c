#include "gateway/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "gateway/jwt.h"
#include "gateway/keys.h"

/* JWT subjects are not known in advance: each gets a slot, created when
 * first seen and recycled least-recently-used first, so memory stays
 * bounded whatever the tokens say. A slot held by a request in flight is
 * never recycled (its stream count and token charge are still to come). */
enum { SUBJECT_MAX = 16384, SUBJECT_BUCKETS = 4096, RECYCLE_SCAN = 64 };

struct subject {
    char name[sizeof ((jwt_claims *)0)->sub];
    uint64_t hash;
    limit_spec spec;
    limit_state state;
    uint32_t metrics_id;
    uint32_t refs;
    subject *chain;               /* next in the bucket */
    subject *newer, *older;       /* recency list */
};

struct auth {
    keyring *keys;
    jwt_keys *jwt;
    jwt_policy policy;
    metrics *metrics;
    uint64_t hash_seed;
    subject *buckets[SUBJECT_BUCKETS];
    subject *newest, *oldest;
    size_t subject_count;
};

auth *auth_new(const config *cfg, metrics *m, const client_key *extra, size_t extra_count, char *why,
               size_t why_cap)
{
    auth *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(why, why_cap, "out of memory");
        return NULL;
    }
    a->metrics = m;
    if (getrandom(&a->hash_seed, sizeof a->hash_seed, 0) != (ssize_t)sizeof a->hash_seed)
        a->hash_seed = 0x9e3779b97f4a7c15u;
    if (cfg->keys_file) {
        a->keys = keyring_load(cfg->keys_file, why, why_cap);
        if (!a->keys)
            goto fail;
    }
    if (extra_count) {
        keyring *merged = keyring_with(a->keys, extra, extra_count, why, why_cap);
        keyring_free(a->keys);
        a->keys = merged;
        if (!a->keys)
            goto fail;
    }
    if (a->keys) {
        for (size_t i = 0; i < keyring_count(a->keys); i++) {
            client_key *ck = keyring_at(a->keys, i);
            ck->metrics_id = metrics_client(m, slice_of(ck->name));
        }
    }
    if (cfg->jwt_secret_file || cfg->jwt_keys_file) {
        a->jwt = jwt_keys_new();
        const char *jwhy = NULL;
        if (!a->jwt) {
            snprintf(why, why_cap, "out of memory");
            goto fail;
        }
        if (cfg->jwt_secret_file && jwt_keys_load_secret(a->jwt, cfg->jwt_secret_file, &jwhy) != 0) {
            snprintf(why, why_cap, "--jwt-secret-file: %s", jwhy);
            goto fail;
        }
        if (cfg->jwt_keys_file && jwt_keys_load_public(a->jwt, cfg->jwt_keys_file, &jwhy) != 0) {
            snprintf(why, why_cap, "--jwt-keys-file: %s", jwhy);
            goto fail;
        }
        a->policy = (jwt_policy){.issuer = cfg->jwt_issuer, .audience = cfg->jwt_audience,
                                 .leeway_s = cfg->jwt_leeway_ms / 1000};
    }
    return a;
fail:
    auth_free(a);
    return NULL;
}

void auth_free(auth *a)
{
    if (!a)
        return;
    keyring_free(a->keys);
    if (a->jwt)
        jwt_keys_free(a->jwt);
    for (subject *s = a->newest, *next; s; s = next) {
        next = s->older;
        free(s);
    }
    free(a);
}

bool auth_required(const auth *a) { return a->keys || a->jwt; }

void auth_inherit(auth *to, const auth *from)
{
    if (!to->keys || !from->keys)
        return;
    for (size_t i = 0; i < keyring_count(to->keys); i++) {
        client_key *ck = keyring_at(to->keys, i);
        const client_key *old = keyring_find_digest(from->keys, ck->digest);
        if (old) { /* streams in flight release into the old entry: they are not carried */
            ck->state.req_tat_us = old->state.req_tat_us;
            ck->state.tok_tat_us = old->state.tok_tat_us;
        }
    }
}

size_t auth_key_count(const auth *a) { return a->keys ? keyring_count(a->keys) : 0; }


slice auth_credential(const http_header *headers, size_t count, bool *malformed)
{
    *malformed = false;
    const http_header *h = http_find_header(headers, count, SLICE_LIT("authorization"));
    if (h) {
        slice v = slice_trim_ows(h->value);
        if (v.len < 7 || !slice_eq_nocase((slice){v.ptr, 7}, SLICE_LIT("bearer "))) {
            *malformed = true;
            return (slice){NULL, 0};
        }
        return slice_trim_ows((slice){v.ptr + 7, v.len - 7});
    }
    h = http_find_header(headers, count, SLICE_LIT("x-api-key"));
    if (!h)
        h = http_find_header(headers, count, SLICE_LIT("api-key"));
    return h ? slice_trim_ows(h->value) : (slice){NULL, 0};
}

static bool looks_like_jwt(slice s)
{
    size_t dots = 0;
    for (size_t i = 0; i < s.len; i++)
        dots += s.ptr[i] == '.';
    return dots == 2;
}

/* ---- JWT subjects ---- */

static uint64_t name_hash(const auth *a, const char *name)
{
    uint64_t h = 1469598103934665603ull ^ a->hash_seed;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return h;
}

static void unlink_recency(auth *a, subject *s)
{
    if (s->newer)
        s->newer->older = s->older;
    else
        a->newest = s->older;
    if (s->older)
        s->older->newer = s->newer;
    else
        a->oldest = s->newer;
    s->newer = s->older = NULL;
}

static void push_newest(auth *a, subject *s)
{
    s->older = a->newest;
    s->newer = NULL;
    if (a->newest)
        a->newest->newer = s;
    a->newest = s;
    if (!a->oldest)
        a->oldest = s;
}

static void unlink_bucket(auth *a, subject *s)
{
    subject **p = &a->buckets[s->hash % SUBJECT_BUCKETS];
    while (*p && *p != s)
        p = &(*p)->chain;
    if (*p)
        *p = s->chain;
}

/* The slot for `name`, made or recycled when new; NULL when all are held. */
static subject *subject_get(auth *a, const char *name)
{
    uint64_t h = name_hash(a, name);
    subject **bucket = &a->buckets[h % SUBJECT_BUCKETS];
    for (subject *s = *bucket; s; s = s->chain)
        if (s->hash == h && strcmp(s->name, name) == 0) {
            unlink_recency(a, s);
            push_newest(a, s);
            return s;
        }
    subject *s = NULL;
    if (a->subject_count < SUBJECT_MAX) {
        s = calloc(1, sizeof *s);
        if (s)
            a->subject_count++;
    }
    if (!s) {
        size_t scanned = 0;
        for (s = a->oldest; s && s->refs && scanned < RECYCLE_SCAN; s = s->newer)
            scanned++;
        if (!s || s->refs)
            return NULL;
        unlink_recency(a, s);
        unlink_bucket(a, s);
        memset(s, 0, sizeof *s);
    }
    snprintf(s->name, sizeof s->name, "%s", name);
    s->hash = h;
    s->metrics_id = metrics_client(a->metrics, slice_of(s->name));
    s->chain = *bucket;
    *bucket = s;
    push_newest(a, s);
    return s;
}

auth_status auth_check(auth *a, const http_header *headers, size_t count, uint64_t unix_now_ms, auth_identity *id,
                       const char **why)
{
    bool malformed;
    slice cred = auth_credential(headers, count, &malformed);
    return auth_check_credential(a, cred, malformed, unix_now_ms, id, why);
}

auth_status auth_check_credential(auth *a, slice cred, bool malformed, uint64_t unix_now_ms, auth_identity *id,
                                  const char **why)
{
    *id = (auth_identity){0};
    if (malformed) {
        *why = "the Authorization header must be 'Bearer <key>'";
        return AUTH_INVALID_KEY;
    }
    if (cred.len == 0) {
        *why = "missing API key: send it as 'Authorization: Bearer <key>'";
        return AUTH_MISSING;
    }
    id->presented = cred;
    if (a->keys) {
        client_key *ck = keyring_find(a->keys, cred);
        if (ck) {
            id->name = ck->name;
            id->spec = ck->spec;
            id->state = limit_spec_any(&ck->spec) ? &ck->state : NULL;
            id->metrics_id = ck->metrics_id;
            return AUTH_OK;
        }
    }
    if (a->jwt && looks_like_jwt(cred)) {
        jwt_claims claims;
        if (jwt_verify(a->jwt, &a->policy, cred, unix_now_ms / 1000, &claims, why) != 0)
            return AUTH_INVALID_TOKEN;
        subject *s = subject_get(a, claims.sub);
        if (!s) {
            *why = "too many distinct clients in flight";
            return AUTH_BUSY;
        }
        s->spec = (limit_spec){.rpm = claims.has_rpm ? claims.rpm : 0, .tpm = claims.has_tpm ? claims.tpm : 0,
                               .streams = claims.has_streams ? claims.streams : 0};
        s->refs++;
        id->pin = s;
        id->name = s->name;
        id->spec = s->spec;
        id->state = limit_spec_any(&s->spec) ? &s->state : NULL;
        id->metrics_id = s->metrics_id;
        return AUTH_OK;
    }
    *why = "Incorrect API key provided";
    return AUTH_INVALID_KEY;
}

void auth_release(auth *a, auth_identity *id)
{
    (void)a;
    if (id->pin && id->pin->refs)
        id->pin->refs--;
    id->pin = NULL;
}
