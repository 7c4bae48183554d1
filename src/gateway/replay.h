/* Resumable streams (§7): the events of each stream, kept so that a client
 * that lost its connection can come back with `Last-Event-ID: TOKEN.N` and
 * be sent the events after N, then the live ones.
 *
 * Pure bookkeeping: no sockets, no timers; the caller passes the time in
 * (now_ms, from a monotonic clock) and arms one timer for the deadline
 * replay_expire returns.
 *
 * A stream's events live in a ring that is allocated as they arrive, in size
 * classes (4 KiB, 16 KiB, 64 KiB, ... times four, the last one exactly the
 * per-stream maximum), each growth a copy into the next class. Each event
 * costs its bytes plus a 4-byte length. When the ring is at its maximum and
 * an event does not fit:
 *   - with a reader attached, the oldest events are evicted; a reader that
 *     had not read them gets REPLAY_LOST on its next read;
 *   - with no reader attached, replay_append answers REPLAY_FULL and stores
 *     nothing, so the caller stops reading the upstream (TCP backpressure)
 *     instead of dropping events nobody has seen.
 * An event that cannot fit even alone (more than the maximum less 4 bytes)
 * is never kept: with a reader attached it is numbered, everything older is
 * evicted, and it is not stored (the readers get REPLAY_LOST); with none,
 * REPLAY_FULL as above.
 *
 * Lifetime: a stream is kept until window_ms after replay_end, or, if it
 * never ends, until nobody has been attached for window_ms ("abandoned": the
 * caller is told so that it cancels the upstream). replay_cancel drops it at
 * once. A stream that goes while readers are attached gives its memory back
 * at once; what remains is a small husk that answers REPLAY_LOST until the
 * last reader detaches. */
#ifndef SSEGATE_REPLAY_H
#define SSEGATE_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/slice.h"
#include "core/wbuf.h"

enum {
    REPLAY_TOKEN_BYTES = 16, /* 128 random bits */
    REPLAY_TOKEN_CHARS = 22, /* their base64url, no padding */
};
/* The accepted range of the per-stream maximum (--replay-buffer). */
#define REPLAY_MIN_BUFFER ((size_t)64)
#define REPLAY_MAX_BUFFER ((size_t)1 << 30)

typedef struct replay_store replay_store;
typedef struct replay_stream replay_stream;

/* NULL when max_bytes_per_stream is outside [REPLAY_MIN_BUFFER,
 * REPLAY_MAX_BUFFER] or memory runs out. */
replay_store *replay_store_new(size_t max_bytes_per_stream, uint64_t window_ms);
/* Frees every stream; no reader may be used afterwards. */
void replay_store_free(replay_store *s);

/* A new stream owned by `owner` (the key's client name or the JWT subject),
 * with nobody attached yet (so its abandonment clock starts at now_ms). Its
 * token, 22 characters and a NUL, goes to token_out. NULL when getrandom or
 * malloc fails. */
replay_stream *replay_open(replay_store *s, const char *owner, uint64_t now_ms, char token_out[23]);

typedef enum { REPLAY_OK, REPLAY_FULL } replay_append_result;
/* Stores one event, its bytes as relayed without the id line or any HTTP
 * chunk framing; its number (1, 2, ...) goes to *n. On REPLAY_FULL nothing
 * is stored or numbered: call again with the same event once
 * replay_attached() is non-zero (or, if it already is, memory ran out for
 * a bigger ring: call again later). Invalidates the slices readers hold.
 * Not after replay_end. */
replay_append_result replay_append(replay_stream *st, slice event, uint64_t *n);

/* The upstream finished: no more events, and the window starts. */
void replay_end(replay_stream *st, uint64_t now_ms);

/* Drops the stream at once (its token is not found from now on); the caller
 * must not use st afterwards. Attached readers get REPLAY_LOST. */
void replay_cancel(replay_stream *st);

/* Parses a Last-Event-ID value, exactly "TOKEN.N": 22 base64url characters
 * (the canonical spelling of 16 bytes), a dot, and N in decimal (at most 19
 * digits, no sign, no leading zero; "0" means before the first event). False
 * when malformed, leaving token and *n alone. */
bool replay_parse_last_event_id(slice header, char token[23], uint64_t *n);

typedef enum { REPLAY_FOUND, REPLAY_NOT_FOUND, REPLAY_POSITION_LOST } replay_lookup;
/* The stream named by token (a NUL-terminated string) if `owner` started it
 * and its window has not passed at now_ms; unknown, expired, cancelled and
 * foreign tokens are all REPLAY_NOT_FOUND. REPLAY_POSITION_LOST when the
 * events right after after_n are no longer kept, or after_n is beyond the
 * newest event. *out is set only on REPLAY_FOUND. */
replay_lookup replay_find(replay_store *s, const char *token, const char *owner, uint64_t after_n,
                          uint64_t now_ms, replay_stream **out);

/* One reader of a stream, each with its own position. `st` and `next` (the
 * number of the next event it will read) may be looked at; the rest belongs
 * to the stream. */
typedef struct replay_reader {
    replay_stream *st;
    uint64_t next;
    size_t at;                               /* ring offset of event `next`, once stored */
    struct replay_reader *link_prev, *link_next; /* the stream's readers */
} replay_reader;

/* Attaches r to read the events after after_n (0: from the first); a
 * position beyond the newest event means "the live ones". */
void replay_attach(replay_stream *st, replay_reader *r, uint64_t after_n);

typedef enum {
    REPLAY_EVENT, /* *event and *n set; the slice is valid until the next append */
    REPLAY_WAIT,  /* caught up: nothing new yet */
    REPLAY_DONE,  /* caught up and the stream has ended */
    REPLAY_LOST,  /* the next event is gone (evicted, or the stream expired or was cancelled) */
} replay_next;
replay_next replay_read(replay_reader *r, slice *event, uint64_t *n);

/* Detaches r; when it was the last reader of a live stream that has not
 * ended, the abandonment clock starts at now_ms. */
void replay_detach(replay_reader *r, uint64_t now_ms);

size_t replay_attached(const replay_stream *st);
bool replay_ended(const replay_stream *st);
/* The stream's token (22 characters, NUL-terminated). */
const char *replay_token(const replay_stream *st);
/* The number of the newest event (0 before the first). */
uint64_t replay_last(const replay_stream *st);

/* Writes "id: TOKEN.N\n", the line that goes before event n's bytes. */
void replay_write_id(wbuf *b, const replay_stream *st, uint64_t n);

/* Frees the streams whose window has passed at now_ms. Streams that never
 * ended and had nobody attached for window_ms are passed to `abandoned`
 * first (may be NULL), so the caller cancels their upstream and forgets st;
 * they are freed when it returns (calling replay_cancel on st from inside
 * is allowed and changes nothing). Returns the next deadline (UINT64_MAX:
 * none); deadlines made later are never earlier than it, so a caller with
 * no timer armed arms one after replay_end, replay_detach or replay_open
 * (see replay_next_deadline). */
uint64_t replay_expire(replay_store *s, uint64_t now_ms, void (*abandoned)(void *ctx, replay_stream *st),
                       void *ctx);
/* The deadline replay_expire would return now (UINT64_MAX: none). */
uint64_t replay_next_deadline(const replay_store *s);

/* Memory held by the streams (rings, owners, per-stream state), for metrics
 * and tests; 0 when no stream is left. */
size_t replay_store_bytes(const replay_store *s);
size_t replay_store_streams(const replay_store *s); /* streams that can still be found */

/* The relay hangs its state here. */
void replay_set_user(replay_stream *st, void *user);
void *replay_user(const replay_stream *st);

#endif
