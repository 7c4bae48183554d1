#include "core/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Requests larger than a block get a block of their own size, which becomes
 * the head; those are not cached, so a 4 MiB body does not pin 4 MiB forever. */
struct arena_block {
    arena_block *next;
    size_t cap;
    _Alignas(16) unsigned char data[];
};

/* Blocks kept for reuse, per size: enough for the requests of a busy
 * moment to do no malloc, few enough that an idle process holds little
 * (a cached block stays resident). */
enum { MAX_CACHED_BLOCKS = 32 };

typedef struct block_cache {
    arena_block *list;
    size_t count;
} block_cache;

static block_cache caches[2]; /* [0] standard blocks, [1] small ones */

static block_cache *cache_for(size_t cap)
{
    return cap == ARENA_BLOCK_SIZE ? &caches[0] : cap == ARENA_SMALL_BLOCK ? &caches[1] : NULL;
}

void arena_init(arena *a) { *a = (arena){0}; }

void arena_init_small(arena *a) { *a = (arena){.small = true}; }

static arena_block *block_new(size_t cap)
{
    block_cache *c = cache_for(cap);
    if (c && c->list) {
        arena_block *b = c->list;
        c->list = b->next;
        c->count--;
        return b;
    }
    if (cap > SIZE_MAX - sizeof(arena_block))
        return NULL; /* the header would wrap the size round to a tiny block */
    arena_block *b = malloc(sizeof *b + cap);
    if (b)
        b->cap = cap;
    return b;
}

static void block_free(arena_block *b)
{
    block_cache *c = cache_for(b->cap);
    if (c && c->count < MAX_CACHED_BLOCKS) {
        b->next = c->list;
        c->list = b;
        c->count++;
    } else {
        free(b);
    }
}

void *arena_alloc(arena *a, size_t size)
{
    size_t need = (size + 15) & ~(size_t)15;
    if (need < size)
        return NULL;
    if (!a->head || a->head->cap - a->used < need) {
        size_t cap = need > ARENA_BLOCK_SIZE ? need : ARENA_BLOCK_SIZE;
        if (a->small && !a->head && need <= ARENA_SMALL_BLOCK)
            cap = ARENA_SMALL_BLOCK;
        arena_block *b = block_new(cap);
        if (!b)
            return NULL;
        b->next = a->head;
        a->head = b;
        a->used = 0;
    }
    void *p = a->head->data + a->used;
    a->used += need;
    a->total += need;
    return p;
}

void arena_reset(arena *a)
{
    arena_block *b = a->head;
    while (b) {
        arena_block *next = b->next;
        block_free(b);
        b = next;
    }
    *a = (arena){.small = a->small};
}

arena_mark arena_mark_now(const arena *a) { return (arena_mark){a->head, a->used, a->total}; }

void arena_rewind(arena *a, arena_mark m)
{
    /* Blocks newer than the mark sit in front of it. */
    while (a->head && a->head != m.head) {
        arena_block *next = a->head->next;
        block_free(a->head);
        a->head = next;
    }
    a->used = m.used;
    a->total = m.total;
}

char *arena_strndup(arena *a, const char *s, size_t len)
{
    char *p = arena_alloc(a, len + 1);
    if (p) {
        memcpy(p, s, len);
        p[len] = '\0';
    }
    return p;
}

void arena_release_cached(void)
{
    for (size_t i = 0; i < 2; i++) {
        while (caches[i].list) {
            arena_block *b = caches[i].list;
            caches[i].list = b->next;
            free(b);
        }
        caches[i].count = 0;
    }
}

void *pool_get(buffer_pool *p)
{
    if (p->free_list) {
        void *buf = p->free_list;
        memcpy(&p->free_list, buf, sizeof(void *));
        p->free_count--;
        return buf;
    }
    return malloc(p->size);
}

void pool_put(buffer_pool *p, void *buf)
{
    if (!buf)
        return;
    if (p->free_count >= p->max_free) {
        free(buf);
        return;
    }
    memcpy(buf, &p->free_list, sizeof(void *));
    p->free_list = buf;
    p->free_count++;
}

void pool_drain(buffer_pool *p)
{
    while (p->free_list) {
        void *buf = p->free_list;
        memcpy(&p->free_list, buf, sizeof(void *));
        free(buf);
    }
    p->free_count = 0;
}
