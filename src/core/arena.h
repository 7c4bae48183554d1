/* Memory for one request: bump allocation from blocks that return to a
 * process-wide free list in one step when the request ends. Also a pool of
 * fixed-size buffers for connection I/O. After warm-up neither calls malloc. */
#ifndef SSEGATE_ARENA_H
#define SSEGATE_ARENA_H

#include <stdbool.h>
#include <stddef.h>

/* Two block sizes, each with its own cache: a small arena starts in one
 * small block (a page with its header), so what a long-held request keeps
 * costs a page, and goes on in standard blocks once that is full. */
enum { ARENA_BLOCK_SIZE = 16 * 1024, ARENA_SMALL_BLOCK = 4096 - 64 };

typedef struct arena_block arena_block;

typedef struct arena {
    arena_block *head; /* newest block first */
    size_t used;       /* bytes used in head */
    size_t total;      /* bytes handed out since the last reset */
    bool small;        /* the first block is a small one */
} arena;

void arena_init(arena *a);
void arena_init_small(arena *a);
/* Returns 16-byte aligned memory, or NULL when the process is out of memory. */
void *arena_alloc(arena *a, size_t size);
/* Gives every block back; the arena can be used again. */
void arena_reset(arena *a);

/* A point to return to: everything allocated after arena_mark is given
 * back by arena_rewind, for scratch memory inside a long-lived request. */
typedef struct arena_mark {
    arena_block *head;
    size_t used, total;
} arena_mark;

arena_mark arena_mark_now(const arena *a);
void arena_rewind(arena *a, arena_mark m);
char *arena_strndup(arena *a, const char *s, size_t len);

/* Fixed-size buffers: pool_get returns one of `size` bytes (NULL on OOM);
 * pool_put takes it back, keeping at most max_free for reuse (what is kept
 * stays resident, so that bound is what an idle process holds). One pool
 * per buffer size. */
typedef struct buffer_pool {
    size_t size;
    void *free_list;
    size_t free_count, max_free;
} buffer_pool;

void *pool_get(buffer_pool *p);
void pool_put(buffer_pool *p, void *buf);
void pool_drain(buffer_pool *p);

/* Releases the arena blocks cached on the free list (for leak checks). */
void arena_release_cached(void);

#endif
