/* Memory for one request: bump allocation from blocks that return to a
 * process-wide free list in one step when the request ends. Also a pool of
 * fixed-size buffers for connection I/O. After warm-up neither calls malloc. */
#ifndef SSEGATE_ARENA_H
#define SSEGATE_ARENA_H

#include <stdbool.h>
#include <stddef.h>

enum { ARENA_BLOCK_SIZE = 16 * 1024 };

typedef struct arena_block arena_block;

typedef struct arena {
    arena_block *head; /* newest block first */
    size_t used;       /* bytes used in head */
    size_t total;      /* bytes handed out since the last reset */
    arena_block *own;  /* the caller's memory, used first and never freed */
} arena;

void arena_init(arena *a);
/* An arena that starts in the caller's `size` bytes at `mem` (16-byte
 * aligned, at least ARENA_OWN_MIN): small requests use no block at all,
 * bigger ones go on in standard blocks. `mem` outlives the arena. */
enum { ARENA_OWN_MIN = 64 };
void arena_init_over(arena *a, void *mem, size_t size);
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
 * pool_put takes it back for reuse, up to max_free. What is kept stays
 * resident, so the pool follows demand: pool_trim, called every so often,
 * keeps as many free buffers as the busiest moment since the last trim
 * needed beyond those in use now, and never fewer than `reserve`. Under a
 * steady load nothing is allocated or given back; after a burst the pool
 * shrinks to `reserve` within two trims. One pool per buffer size.
 * `mapped`: buffers are pages of their own (size a multiple of the page
 * size), so one given back leaves the process at once, whatever the
 * allocator keeps. */
typedef struct buffer_pool {
    size_t size;
    size_t reserve;  /* free buffers always kept */
    size_t max_free; /* free buffers ever kept */
    bool mapped;
    void *free_list;
    size_t free_count;
    size_t in_use, peak; /* taken now, and the most at once since the last trim */
} buffer_pool;

void *pool_get(buffer_pool *p);
void pool_put(buffer_pool *p, void *buf);
/* Gives back the free buffers the last interval did not need; true while
 * the pool still holds more than its reserve (so another trim is due). */
bool pool_trim(buffer_pool *p);
void pool_drain(buffer_pool *p);

/* The arena blocks cached for reuse follow the same rule. */
bool arena_trim_cached(void);
/* Releases the arena blocks cached on the free list (for leak checks). */
void arena_release_cached(void);

#endif
