#include "gateway/evbuf.h"

#include <string.h>
#include <sys/mman.h>

bool evbuf_acquire(evbuf *b, buffer_pool *pool)
{
    if (b->ptr && b->parked) {
        char *p = pool_get(pool);
        if (!p)
            return false;
        memcpy(p, b->ptr, b->held);
        pool_put(b->parked, b->ptr);
        *b = (evbuf){.ptr = p, .cap = pool->size};
        return true;
    }
    if (b->ptr)
        return true;
    b->ptr = pool_get(pool);
    if (!b->ptr)
        return false;
    b->cap = pool->size;
    b->mapped = false;
    return true;
}

/* Mapped pages, not the heap: a long event's memory goes back to the
 * system when it is released, whatever the allocator's thresholds. */
static bool grow(evbuf *b, size_t used, size_t cap)
{
    if (b->mapped) {
        void *p = mremap(b->ptr, b->cap, cap, MREMAP_MAYMOVE);
        if (p == MAP_FAILED)
            return false;
        b->ptr = p;
        b->cap = cap;
        return true;
    }
    void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return false;
    memcpy(p, b->ptr, used);
    *b = (evbuf){.ptr = p, .cap = cap, .mapped = true};
    return true;
}

evbuf_result evbuf_settle(evbuf *b, buffer_pool *pool, size_t used, size_t pending, size_t max_event)
{
    if (pending >= max_event)
        return EVBUF_TOO_LARGE;
    if (used == b->cap) {
        size_t limit = max_event + pool->size;
        size_t cap = b->cap * 2 < limit ? b->cap * 2 : limit;
        if (cap <= b->cap)
            return EVBUF_TOO_LARGE;
        char *old = b->ptr;
        bool was_pooled = !b->mapped;
        if (!grow(b, used, cap))
            return EVBUF_NO_MEMORY;
        if (was_pooled)
            pool_put(pool, old);
        return EVBUF_OK;
    }
    if (b->mapped && used <= pool->size / 2) {
        char *p = pool_get(pool);
        if (!p)
            return EVBUF_OK; /* the pages serve until later */
        memcpy(p, b->ptr, used);
        munmap(b->ptr, b->cap);
        *b = (evbuf){.ptr = p, .cap = pool->size};
    }
    return EVBUF_OK;
}

bool evbuf_reserve(evbuf *b, buffer_pool *pool, size_t used, size_t need, size_t limit)
{
    if (!evbuf_acquire(b, pool))
        return false;
    if (need <= b->cap - used)
        return true;
    if (need > limit || used > limit - need)
        return false;
    size_t cap = b->cap;
    while (cap < used + need)
        cap = cap > limit / 2 ? limit : cap * 2;
    char *old = b->ptr;
    bool was_pooled = !b->mapped;
    if (!grow(b, used, cap))
        return false;
    if (was_pooled)
        pool_put(pool, old);
    return true;
}

void evbuf_park(evbuf *b, buffer_pool *pool, buffer_pool *const *small, size_t count, size_t used)
{
    if (!b->ptr || b->mapped || b->parked || used == 0)
        return;
    for (size_t i = 0; i < count; i++) {
        if (!small[i] || small[i]->size <= used) /* a full one would look like no room to read into */
            continue;
        char *p = pool_get(small[i]);
        if (!p)
            return;
        memcpy(p, b->ptr, used);
        pool_put(pool, b->ptr);
        *b = (evbuf){.ptr = p, .cap = small[i]->size, .parked = small[i], .held = used};
        return;
    }
}

void evbuf_release(evbuf *b, buffer_pool *pool)
{
    if (!b->ptr)
        return;
    if (b->parked)
        pool_put(b->parked, b->ptr);
    else if (b->mapped)
        munmap(b->ptr, b->cap);
    else
        pool_put(pool, b->ptr);
    *b = (evbuf){0};
}
