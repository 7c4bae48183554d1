#include "core/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Requests larger than a block get a block of their own size, which becomes
 * the head; those are not cached, so a 4 MiB body does not pin 4 MiB forever. */
struct arena_block {
    arena_block *next;
    size_t cap;
    _Alignas(16) unsigned char data[];
};

/* Blocks kept for reuse: a pool like any other, so a busy moment's requests
 * do no malloc and an idle process keeps only the reserve. */
static buffer_pool block_pool = {.size = sizeof(arena_block) + ARENA_BLOCK_SIZE, .reserve = 8, .max_free = 1024};

void arena_init(arena *a) { *a = (arena){0}; }

void arena_init_over(arena *a, void *mem, size_t size)
{
    arena_block *own = mem;
    own->next = NULL;
    own->cap = size - sizeof *own;
    *a = (arena){.own = own};
}

static arena_block *block_new(size_t cap)
{
    arena_block *b;
    if (cap == ARENA_BLOCK_SIZE) {
        b = pool_get(&block_pool);
    } else {
        if (cap > SIZE_MAX - sizeof(arena_block))
            return NULL; /* the header would wrap the size round to a tiny block */
        b = malloc(sizeof *b + cap);
    }
    if (b)
        b->cap = cap;
    return b;
}

static void block_free(arena *a, arena_block *b)
{
    if (b == a->own)
        return;
    if (b->cap == ARENA_BLOCK_SIZE)
        pool_put(&block_pool, b);
    else
        free(b);
}

void *arena_alloc(arena *a, size_t size)
{
    size_t need = (size + 15) & ~(size_t)15;
    if (need < size)
        return NULL;
    if (!a->head || a->head->cap - a->used < need) {
        size_t cap = need > ARENA_BLOCK_SIZE ? need : ARENA_BLOCK_SIZE;
        arena_block *b = !a->head && a->own && need <= a->own->cap ? a->own : block_new(cap);
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
        block_free(a, b);
        b = next;
    }
    *a = (arena){.own = a->own};
}

arena_mark arena_mark_now(const arena *a) { return (arena_mark){a->head, a->used, a->total}; }

void arena_rewind(arena *a, arena_mark m)
{
    /* Blocks newer than the mark sit in front of it. */
    while (a->head && a->head != m.head) {
        arena_block *next = a->head->next;
        block_free(a, a->head);
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

bool arena_trim_cached(void) { return pool_trim(&block_pool); }

void arena_release_cached(void) { pool_drain(&block_pool); }

static void pool_release(const buffer_pool *p, void *buf)
{
    if (p->mapped)
        munmap(buf, p->size);
    else
        free(buf);
}

void *pool_get(buffer_pool *p)
{
    void *buf;
    if (p->free_list) {
        buf = p->free_list;
        memcpy(&p->free_list, buf, sizeof(void *));
        p->free_count--;
    } else if (!p->mapped) {
        buf = malloc(p->size);
    } else {
        buf = mmap(NULL, p->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (buf == MAP_FAILED)
            buf = NULL;
    }
    if (buf && ++p->in_use > p->peak)
        p->peak = p->in_use;
    return buf;
}

void pool_put(buffer_pool *p, void *buf)
{
    if (!buf)
        return;
    if (p->in_use)
        p->in_use--;
    if (p->free_count >= p->max_free) {
        pool_release(p, buf);
        return;
    }
    memcpy(buf, &p->free_list, sizeof(void *));
    p->free_list = buf;
    p->free_count++;
}

bool pool_trim(buffer_pool *p)
{
    size_t wanted = p->peak > p->in_use ? p->peak - p->in_use : 0;
    size_t keep = wanted > p->reserve ? wanted : p->reserve;
    while (p->free_count > keep) {
        void *buf = p->free_list;
        memcpy(&p->free_list, buf, sizeof(void *));
        p->free_count--;
        pool_release(p, buf);
    }
    p->peak = p->in_use;
    return p->free_count > p->reserve;
}

void pool_drain(buffer_pool *p)
{
    while (p->free_list) {
        void *buf = p->free_list;
        memcpy(&p->free_list, buf, sizeof(void *));
        pool_release(p, buf);
    }
    p->free_count = 0;
}
