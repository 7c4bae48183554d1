#include "upstream/dns_cache.h"

#include <stdlib.h>
#include <string.h>

typedef struct entry {
    struct entry *next; /* in its bucket */
    uint32_t hash;
    char key[DNS_NAME_MAX + 1];
    dns_cache_answer answer;
    uint64_t expires_ms;     /* the TTL's end, or the failure's hold */
    uint64_t stale_until_ms; /* last moment a positive answer may be served */
    uint64_t retry_ms;       /* no refresh starts before this */
    bool refreshing;
} entry;

struct dns_cache {
    entry **buckets;
    size_t bucket_mask, count, max;
    uint64_t generation;
};

static uint32_t hash_key(const char *key)
{
    uint32_t h = 2166136261u;
    for (; *key; key++)
        h = (h ^ (uint8_t)*key) * 16777619u;
    return h;
}

dns_cache *dns_cache_new(size_t max_entries)
{
    dns_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    size_t buckets = 16;
    while (buckets < max_entries && buckets < ((size_t)1 << 20))
        buckets <<= 1;
    c->buckets = calloc(buckets, sizeof *c->buckets);
    if (!c->buckets) {
        free(c);
        return NULL;
    }
    c->bucket_mask = buckets - 1;
    c->max = max_entries ? max_entries : 1;
    return c;
}

void dns_cache_free(dns_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i <= c->bucket_mask; i++)
        for (entry *e = c->buckets[i], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    free(c->buckets);
    free(c);
}

static entry *find(const dns_cache *c, const char *key, uint32_t h)
{
    for (entry *e = c->buckets[h & c->bucket_mask]; e; e = e->next)
        if (e->hash == h && strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

dns_cache_verdict dns_cache_get(dns_cache *c, const char *key, uint64_t now_ms, const dns_cache_answer **out)
{
    entry *e = find(c, key, hash_key(key));
    if (!e)
        return DNS_CACHE_MISS;
    *out = &e->answer;
    if (now_ms < e->expires_ms)
        return DNS_CACHE_HIT;
    if (e->answer.status != DNS_OK || now_ms >= e->stale_until_ms)
        return DNS_CACHE_MISS;
    if (e->refreshing || now_ms < e->retry_ms)
        return DNS_CACHE_HIT;
    e->refreshing = true;
    return DNS_CACHE_HIT_REFRESH;
}

static void unlink_entry(dns_cache *c, entry *victim)
{
    entry **at = &c->buckets[victim->hash & c->bucket_mask];
    while (*at != victim)
        at = &(*at)->next;
    *at = victim->next;
    c->count--;
    free(victim);
}

/* Full: the entry that stops being useful first goes, preferring one no
 * refresh is waiting on. A linear scan, paid only on inserts when full. */
static void evict_one(dns_cache *c)
{
    entry *victim = NULL;
    for (size_t i = 0; i <= c->bucket_mask; i++)
        for (entry *e = c->buckets[i]; e; e = e->next)
            if (!victim || (victim->refreshing && !e->refreshing) ||
                (victim->refreshing == e->refreshing && e->stale_until_ms < victim->stale_until_ms))
                victim = e;
    if (victim)
        unlink_entry(c, victim);
}

static entry *find_or_add(dns_cache *c, const char *key, bool *fresh)
{
    size_t n = strnlen(key, DNS_NAME_MAX + 1);
    if (n > DNS_NAME_MAX)
        return NULL;
    uint32_t h = hash_key(key);
    entry *e = find(c, key, h);
    *fresh = e == NULL;
    if (e)
        return e;
    if (c->count >= c->max)
        evict_one(c);
    e = malloc(sizeof *e); /* every field is set here or by the caller's replace() */
    if (!e)
        return NULL;
    e->answer.generation = 0;
    e->expires_ms = e->stale_until_ms = e->retry_ms = 0;
    e->refreshing = false;
    e->hash = h;
    memcpy(e->key, key, n + 1);
    e->next = c->buckets[h & c->bucket_mask];
    c->buckets[h & c->bucket_mask] = e;
    c->count++;
    return e;
}

static bool same_answer(const dns_cache_answer *a, const dns_cache_answer *b)
{
    return a->status == b->status && a->count == b->count && strcmp(a->detail, b->detail) == 0 &&
           memcmp(a->addrs, b->addrs, a->count * sizeof a->addrs[0]) == 0;
}

static void replace(dns_cache *c, entry *e, bool fresh, const dns_cache_answer *a)
{
    uint64_t keep = e->answer.generation;
    bool same = !fresh && same_answer(&e->answer, a);
    e->answer = *a;
    e->answer.generation = same ? keep : ++c->generation;
}

const dns_cache_answer *dns_cache_store(dns_cache *c, const char *key, const dns_cache_answer *a, uint32_t ttl_s,
                                        uint64_t now_ms)
{
    bool fresh;
    entry *e = find_or_add(c, key, &fresh);
    if (!e)
        return NULL;
    replace(c, e, fresh, a);
    if (ttl_s < DNS_TTL_MIN_S)
        ttl_s = DNS_TTL_MIN_S;
    if (ttl_s > DNS_TTL_MAX_S)
        ttl_s = DNS_TTL_MAX_S;
    e->expires_ms = now_ms + (uint64_t)ttl_s * 1000;
    e->stale_until_ms = e->expires_ms + (a->status == DNS_OK ? DNS_STALE_MAX_MS : 0);
    e->retry_ms = e->expires_ms;
    e->refreshing = false;
    return &e->answer;
}

const dns_cache_answer *dns_cache_fail(dns_cache *c, const char *key, dns_status status, const char *detail,
                                       uint64_t now_ms)
{
    bool fresh;
    entry *e = find_or_add(c, key, &fresh);
    if (!e)
        return NULL;
    e->refreshing = false;
    if (!fresh && e->answer.status == DNS_OK && now_ms < e->stale_until_ms) {
        e->retry_ms = now_ms + DNS_REFRESH_RETRY_MS;
        return &e->answer;
    }
    dns_cache_answer failed = {.status = status};
    const char *text = detail ? detail : dns_status_label(status);
    size_t n = strnlen(text, sizeof failed.detail - 1);
    memcpy(failed.detail, text, n);
    failed.detail[n] = '\0';
    replace(c, e, fresh, &failed);
    e->expires_ms = e->stale_until_ms = e->retry_ms = now_ms + DNS_FAIL_HOLD_MS;
    return &e->answer;
}

uint64_t dns_cache_new_generation(dns_cache *c) { return ++c->generation; }
size_t dns_cache_size(const dns_cache *c) { return c->count; }
