/* A stream's read buffer: a pooled buffer while events fit in it; private
 * pages, doubling, while one event is longer (up to a limit), and back to
 * the pool once the long event has gone out. Between reads, the bytes of
 * an incomplete event can wait in a small buffer instead (evbuf_park), so
 * a stream holds no read buffer while its upstream is silent. */
#ifndef SSEGATE_EVBUF_H
#define SSEGATE_EVBUF_H

#include <stdbool.h>
#include <stddef.h>

#include "core/arena.h"

typedef struct evbuf {
    char *ptr;   /* NULL until acquired */
    size_t cap;
    bool mapped; /* pages of its own, not the pool's */
    buffer_pool *parked; /* ptr is a small buffer of this pool, holding `held` bytes */
    size_t held;
} evbuf;

typedef enum { EVBUF_OK, EVBUF_TOO_LARGE, EVBUF_NO_MEMORY } evbuf_result;

/* A pooled buffer, when there is none yet (holding the parked bytes, when
 * they were parked); false when out of memory. */
bool evbuf_acquire(evbuf *b, buffer_pool *pool);

/* Called once the complete events went out and the rest moved to the front:
 * `used` bytes are held, of which `pending` are an event still incomplete.
 * Makes room for the next read (growing when full, up to max_event plus
 * one pooled buffer) or goes back to a pooled buffer when the rest fits in
 * half of one. EVBUF_TOO_LARGE: the pending event reached max_event bytes
 * without ending, so it is longer than the limit. */
evbuf_result evbuf_settle(evbuf *b, buffer_pool *pool, size_t used, size_t pending, size_t max_event);

/* Room for `need` more bytes after `used` ones, growing by doubling up to
 * `limit` bytes in all; false when that is past the limit or out of memory. */
bool evbuf_reserve(evbuf *b, buffer_pool *pool, size_t used, size_t need, size_t limit);

/* Between reads: the `used` bytes at the front (an incomplete event) move
 * to the first of the `count` small pools (smallest first) whose buffers
 * hold them, and the pooled buffer goes back to `pool`. Nothing changes
 * when none is large enough, the buffer is mapped, or memory is short. */
void evbuf_park(evbuf *b, buffer_pool *pool, buffer_pool *const *small, size_t count, size_t used);

void evbuf_release(evbuf *b, buffer_pool *pool);

#endif
