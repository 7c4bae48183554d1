#include "gateway/replay.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>

#include "core/base64.h"

/* Every event is stored as a 4-byte length and its bytes, never split, so
 * a reader is handed one slice: a record that does not fit before the end of
 * the ring starts again at offset 0 (the ring is then "wrapped", and the
 * bytes from `wrap` to the end stay unused until the records before them are
 * evicted). Each reader keeps the offset of its next record; readers are
 * linked from their stream so that an append can tell the caught-up ones
 * where their next event went, which keeps every read O(1). */
enum { HEADER = 4, FIRST_CLASS = 4096, CLASS_STEP = 4, FIRST_SLOTS = 16 };

struct replay_stream {
    replay_store *store;
    unsigned char key[REPLAY_TOKEN_BYTES];
    uint64_t hash;
    char token[REPLAY_TOKEN_CHARS + 1];
    char *owner;
    size_t owner_len;

    /* the ring: records in [head, tail), or, wrapped, [head, wrap) then [0, tail) */
    unsigned char *buf;
    size_t cap, head, tail, wrap;
    bool wrapped;
    size_t kept_bytes; /* sum of the kept records, headers included */
    uint64_t first_n;  /* the oldest kept event; == next_n when none is kept */
    uint64_t next_n;   /* the number the next event gets */

    replay_reader *readers;
    size_t nreaders;
    bool ended;
    bool dead;        /* expired or cancelled while readers were attached: a husk */
    bool in_callback; /* being handed to the abandoned callback */

    /* The pending deadline (end + window, or idle + window), if any, in the
     * store's list sorted by it. */
    bool has_deadline;
    uint64_t deadline;
    replay_stream *dl_prev, *dl_next;

    replay_stream *all_prev, *all_next; /* every stream, husks too */
    void *user;
};

struct replay_store {
    size_t max_bytes;
    uint64_t window_ms;
    uint64_t seed; /* keys the token hash */
    replay_stream **slots; /* open addressing, linear probing */
    size_t nslots, count;
    replay_stream *dl_first, *dl_last;
    replay_stream *all;
    size_t bytes;
};

/* ---- randomness and the token table ------------------------------------ */

static bool fill_random(void *out, size_t len)
{
    unsigned char *p = out;
    while (len > 0) {
        ssize_t got = getrandom(p, len, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        p += got;
        len -= (size_t)got;
    }
    return true;
}

static uint64_t load64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The tokens are random already; the seed and the finaliser (MurmurHash3's)
 * keep a lookup's bucket from telling a prober anything about the bits of a
 * token it does not hold. */
static uint64_t key_hash(const replay_store *s, const unsigned char *key)
{
    uint64_t h = load64(key) ^ (load64(key + 8) * 0x9e3779b97f4a7c15ull) ^ s->seed;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* Compares all 16 bytes whatever they hold. */
static bool key_equal(const unsigned char *a, const unsigned char *b)
{
    unsigned diff = 0;
    for (size_t i = 0; i < REPLAY_TOKEN_BYTES; i++)
        diff |= (unsigned)(a[i] ^ b[i]);
    return diff == 0;
}

static size_t slot_of(const replay_store *s, const unsigned char *key, uint64_t hash)
{
    size_t mask = s->nslots - 1;
    for (size_t i = (size_t)hash & mask;; i = (i + 1) & mask)
        if (!s->slots[i] || key_equal(s->slots[i]->key, key))
            return i;
}

static bool table_grow(replay_store *s)
{
    size_t n = s->nslots ? s->nslots * 2 : FIRST_SLOTS;
    replay_stream **old = s->slots;
    size_t old_n = s->nslots;
    s->slots = calloc(n, sizeof *s->slots);
    if (!s->slots) {
        s->slots = old;
        return false;
    }
    s->nslots = n;
    for (size_t i = 0; i < old_n; i++)
        if (old[i])
            s->slots[slot_of(s, old[i]->key, old[i]->hash)] = old[i];
    free(old);
    return true;
}

/* Removes st and shifts back the entries after it that probed past its slot,
 * so lookups need no tombstones. */
static void table_remove(replay_store *s, replay_stream *st)
{
    size_t mask = s->nslots - 1;
    size_t hole = slot_of(s, st->key, st->hash);
    if (s->slots[hole] != st)
        return;
    s->slots[hole] = NULL;
    s->count--;
    for (size_t j = (hole + 1) & mask; s->slots[j]; j = (j + 1) & mask) {
        size_t home = (size_t)s->slots[j]->hash & mask;
        /* it may move into the hole unless its home lies in (hole, j] */
        bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            s->slots[hole] = s->slots[j];
            s->slots[j] = NULL;
            hole = j;
        }
    }
}

static replay_stream *table_find(const replay_store *s, const unsigned char *key)
{
    if (s->count == 0)
        return NULL;
    return s->slots[slot_of(s, key, key_hash(s, key))];
}

/* ---- deadlines ---------------------------------------------------------- */

static void deadline_clear(replay_store *s, replay_stream *st)
{
    if (!st->has_deadline)
        return;
    if (st->dl_prev)
        st->dl_prev->dl_next = st->dl_next;
    else
        s->dl_first = st->dl_next;
    if (st->dl_next)
        st->dl_next->dl_prev = st->dl_prev;
    else
        s->dl_last = st->dl_prev;
    st->dl_prev = st->dl_next = NULL;
    st->has_deadline = false;
}

/* With a monotonic clock every new deadline is the latest, so this is a
 * push at the end; the walk keeps the order for any clock. */
static void deadline_set(replay_store *s, replay_stream *st, uint64_t at)
{
    deadline_clear(s, st);
    st->has_deadline = true;
    st->deadline = at;
    replay_stream *after = s->dl_last;
    while (after && after->deadline > at)
        after = after->dl_prev;
    st->dl_prev = after;
    st->dl_next = after ? after->dl_next : s->dl_first;
    if (st->dl_next)
        st->dl_next->dl_prev = st;
    else
        s->dl_last = st;
    if (after)
        after->dl_next = st;
    else
        s->dl_first = st;
}

static uint64_t add_window(const replay_store *s, uint64_t now_ms)
{
    return now_ms > UINT64_MAX - s->window_ms ? UINT64_MAX : now_ms + s->window_ms;
}

/* ---- the store ---------------------------------------------------------- */

replay_store *replay_store_new(size_t max_bytes_per_stream, uint64_t window_ms)
{
    if (max_bytes_per_stream < REPLAY_MIN_BUFFER || max_bytes_per_stream > REPLAY_MAX_BUFFER)
        return NULL;
    replay_store *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->max_bytes = max_bytes_per_stream;
    s->window_ms = window_ms;
    if (!fill_random(&s->seed, sizeof s->seed) || !table_grow(s)) {
        free(s->slots);
        free(s);
        return NULL;
    }
    return s;
}

static size_t stream_overhead(const replay_stream *st) { return sizeof *st + st->owner_len + 1; }

static void free_ring(replay_stream *st)
{
    st->store->bytes -= st->cap;
    free(st->buf);
    st->buf = NULL;
    st->cap = st->head = st->tail = st->wrap = st->kept_bytes = 0;
    st->wrapped = false;
}

static void unlink_all(replay_store *s, replay_stream *st)
{
    if (st->all_prev)
        st->all_prev->all_next = st->all_next;
    else
        s->all = st->all_next;
    if (st->all_next)
        st->all_next->all_prev = st->all_prev;
}

static void free_stream(replay_stream *st)
{
    replay_store *s = st->store;
    free_ring(st);
    s->bytes -= stream_overhead(st);
    unlink_all(s, st);
    free(st->owner);
    free(st);
}

/* The stream can no longer be found; its memory goes now, or, while readers
 * are attached, all but the husk they point at. */
static void drop_stream(replay_stream *st)
{
    replay_store *s = st->store;
    if (!st->dead) {
        table_remove(s, st);
        deadline_clear(s, st);
    }
    if (st->nreaders == 0) {
        free_stream(st);
        return;
    }
    st->dead = true;
    free_ring(st);
}

void replay_store_free(replay_store *s)
{
    if (!s)
        return;
    while (s->all)
        free_stream(s->all);
    free(s->slots);
    free(s);
}

replay_stream *replay_open(replay_store *s, const char *owner, uint64_t now_ms, char token_out[23])
{
    if (!owner)
        owner = "";
    if ((s->count + 1) * 2 > s->nslots && !table_grow(s))
        return NULL;
    replay_stream *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->owner_len = strlen(owner);
    st->owner = malloc(st->owner_len + 1);
    if (!st->owner) {
        free(st);
        return NULL;
    }
    memcpy(st->owner, owner, st->owner_len + 1);
    /* 128 random bits collide with a live token in practice never, but a
     * collision must not hand out another client's stream. */
    do {
        if (!fill_random(st->key, sizeof st->key)) {
            free(st->owner);
            free(st);
            return NULL;
        }
        st->hash = key_hash(s, st->key);
    } while (s->slots[slot_of(s, st->key, st->hash)]);
    base64url_encode(st->key, sizeof st->key, st->token, REPLAY_TOKEN_CHARS);
    st->token[REPLAY_TOKEN_CHARS] = '\0';
    st->store = s;
    st->first_n = st->next_n = 1;
    s->slots[slot_of(s, st->key, st->hash)] = st;
    s->count++;
    st->all_next = s->all;
    if (s->all)
        s->all->all_prev = st;
    s->all = st;
    s->bytes += stream_overhead(st);
    deadline_set(s, st, add_window(s, now_ms));
    memcpy(token_out, st->token, sizeof st->token);
    return st;
}

/* ---- the ring ----------------------------------------------------------- */

static size_t record_len(const replay_stream *st, size_t off)
{
    uint32_t len;
    memcpy(&len, st->buf + off, sizeof len);
    return len;
}

/* Where the record after the one at off starts (it must exist). */
static size_t record_after(const replay_stream *st, size_t off)
{
    size_t next = off + HEADER + record_len(st, off);
    return st->wrapped && next == st->wrap ? 0 : next;
}

/* Where a record of `need` bytes can go without touching kept ones, or
 * SIZE_MAX. */
static size_t place(const replay_stream *st, size_t need)
{
    if (st->first_n == st->next_n)
        return need <= st->cap ? 0 : SIZE_MAX;
    if (st->wrapped)
        return st->tail + need <= st->head ? st->tail : SIZE_MAX;
    if (st->tail + need <= st->cap)
        return st->tail;
    return need <= st->head ? 0 : SIZE_MAX;
}

static void evict_oldest(replay_stream *st)
{
    size_t size = HEADER + record_len(st, st->head);
    st->head += size;
    st->kept_bytes -= size;
    st->first_n++;
    if (st->first_n == st->next_n) {
        st->head = st->tail = 0;
        st->wrapped = false;
    } else if (st->wrapped && st->head == st->wrap) {
        st->head = 0;
        st->wrapped = false;
    }
}

/* The smallest size class holding `bytes`, capped at the maximum. */
static size_t class_for(size_t max, size_t bytes)
{
    size_t c = FIRST_CLASS;
    while (c < bytes && c < max)
        c *= CLASS_STEP;
    return c < max ? c : max;
}

/* Growth happens only below the maximum and eviction only at it (or of
 * everything, for an event that can never fit), so a ring that grows holds
 * its records from offset 0 on, unwrapped, and realloc keeps every offset
 * that readers hold. False (nothing changed) when memory runs out. */
static bool grow(replay_stream *st, size_t cap)
{
    unsigned char *buf = realloc(st->buf, cap);
    if (!buf)
        return false;
    st->store->bytes += cap - st->cap;
    st->buf = buf;
    st->cap = cap;
    return true;
}

replay_append_result replay_append(replay_stream *st, slice event, uint64_t *n)
{
    size_t max = st->store->max_bytes;
    bool fits_ever = event.len <= max - HEADER;
    size_t need = HEADER + (fits_ever ? event.len : 0);
    size_t off = fits_ever ? place(st, need) : SIZE_MAX;
    if (off == SIZE_MAX && fits_ever && st->cap < max) {
        /* out of memory: hold the upstream as when full, rather than
         * evict below the maximum */
        if (!grow(st, class_for(max, st->kept_bytes + need)))
            return REPLAY_FULL;
        off = place(st, need);
    }
    if (off == SIZE_MAX) {
        /* Nobody would see what eviction drops: hold the upstream instead. */
        if (st->nreaders == 0)
            return REPLAY_FULL;
        while (off == SIZE_MAX && st->first_n != st->next_n) {
            evict_oldest(st);
            if (fits_ever)
                off = place(st, need);
        }
    }
    *n = st->next_n++;
    if (off == SIZE_MAX) {
        /* Bigger than the ring can ever be: numbered, not kept, and the
         * readers waiting for it have lost it. */
        st->first_n = st->next_n;
        return REPLAY_OK;
    }
    uint32_t len = (uint32_t)event.len;
    memcpy(st->buf + off, &len, sizeof len);
    if (event.len)
        memcpy(st->buf + off + HEADER, event.ptr, event.len);
    if (off == 0 && st->first_n != *n && !st->wrapped) {
        st->wrapped = true;
        st->wrap = st->tail;
    }
    st->tail = off + need;
    st->kept_bytes += need;
    for (replay_reader *r = st->readers; r; r = r->link_next)
        if (r->next == *n)
            r->at = off;
    return REPLAY_OK;
}

void replay_end(replay_stream *st, uint64_t now_ms)
{
    if (st->ended || st->dead)
        return;
    st->ended = true;
    deadline_set(st->store, st, add_window(st->store, now_ms));
}

void replay_cancel(replay_stream *st)
{
    if (st->in_callback || st->dead)
        return;
    drop_stream(st);
}

/* ---- lookup ------------------------------------------------------------- */

/* The 22 characters must be the one spelling of 16 bytes. */
static bool token_key(slice token, unsigned char key[REPLAY_TOKEN_BYTES])
{
    size_t len = 0;
    return token.len == REPLAY_TOKEN_CHARS && base64url_decode(token, key, REPLAY_TOKEN_BYTES, &len) &&
           len == REPLAY_TOKEN_BYTES;
}

bool replay_parse_last_event_id(slice header, char token[23], uint64_t *n)
{
    unsigned char key[REPLAY_TOKEN_BYTES];
    if (header.len < REPLAY_TOKEN_CHARS + 2 || header.ptr[REPLAY_TOKEN_CHARS] != '.')
        return false;
    slice tok = {header.ptr, REPLAY_TOKEN_CHARS};
    slice num = {header.ptr + REPLAY_TOKEN_CHARS + 1, header.len - REPLAY_TOKEN_CHARS - 1};
    uint64_t v;
    if (!token_key(tok, key) || (num.len > 1 && num.ptr[0] == '0') || !slice_to_u64(num, UINT64_MAX, &v))
        return false;
    memcpy(token, tok.ptr, REPLAY_TOKEN_CHARS);
    token[REPLAY_TOKEN_CHARS] = '\0';
    *n = v;
    return true;
}

replay_lookup replay_find(replay_store *s, const char *token, const char *owner, uint64_t after_n,
                          uint64_t now_ms, replay_stream **out)
{
    unsigned char key[REPLAY_TOKEN_BYTES];
    if (!token || !token_key((slice){token, strnlen(token, REPLAY_TOKEN_CHARS + 1)}, key))
        return REPLAY_NOT_FOUND;
    replay_stream *st = table_find(s, key);
    /* foreign and unknown tokens get the same answer, so a token guessed or
     * leaked from another client tells nothing about that client */
    if (!st || strcmp(st->owner, owner ? owner : "") != 0)
        return REPLAY_NOT_FOUND;
    /* past its window (or abandoned) though replay_expire has not run yet */
    if (st->has_deadline && st->deadline <= now_ms)
        return REPLAY_NOT_FOUND;
    if (after_n < st->first_n - 1 || after_n > st->next_n - 1)
        return REPLAY_POSITION_LOST;
    *out = st;
    return REPLAY_FOUND;
}

/* ---- readers ------------------------------------------------------------ */

void replay_attach(replay_stream *st, replay_reader *r, uint64_t after_n)
{
    r->st = st;
    r->next = after_n >= st->next_n - 1 ? st->next_n : after_n + 1;
    r->at = 0;
    if (r->next >= st->first_n && r->next < st->next_n) {
        /* once per attach: walk from the oldest record to the reader's */
        size_t off = st->head;
        for (uint64_t i = st->first_n; i < r->next; i++)
            off = record_after(st, off);
        r->at = off;
    }
    r->link_prev = NULL;
    r->link_next = st->readers;
    if (st->readers)
        st->readers->link_prev = r;
    st->readers = r;
    st->nreaders++;
    if (!st->ended && !st->dead)
        deadline_clear(st->store, st);
}

replay_next replay_read(replay_reader *r, slice *event, uint64_t *n)
{
    replay_stream *st = r->st;
    if (st->dead || r->next < st->first_n)
        return REPLAY_LOST;
    if (r->next == st->next_n)
        return st->ended ? REPLAY_DONE : REPLAY_WAIT;
    size_t off = r->at;
    *event = (slice){(const char *)st->buf + off + HEADER, record_len(st, off)};
    *n = r->next++;
    if (r->next < st->next_n)
        r->at = record_after(st, off);
    return REPLAY_EVENT;
}

void replay_detach(replay_reader *r, uint64_t now_ms)
{
    replay_stream *st = r->st;
    if (!st)
        return;
    if (r->link_prev)
        r->link_prev->link_next = r->link_next;
    else
        st->readers = r->link_next;
    if (r->link_next)
        r->link_next->link_prev = r->link_prev;
    r->link_prev = r->link_next = NULL;
    r->st = NULL;
    st->nreaders--;
    if (st->nreaders > 0)
        return;
    if (st->dead)
        free_stream(st);
    else if (!st->ended)
        deadline_set(st->store, st, add_window(st->store, now_ms));
}

size_t replay_attached(const replay_stream *st) { return st->nreaders; }
bool replay_ended(const replay_stream *st) { return st->ended; }
const char *replay_token(const replay_stream *st) { return st->token; }
uint64_t replay_last(const replay_stream *st) { return st->next_n - 1; }

void replay_write_id(wbuf *b, const replay_stream *st, uint64_t n)
{
    wbuf_put(b, "id: ", 4);
    wbuf_put(b, st->token, REPLAY_TOKEN_CHARS);
    wbuf_put_char(b, '.');
    wbuf_put_u64(b, n);
    wbuf_put_char(b, '\n');
}

/* ---- expiry ------------------------------------------------------------- */

uint64_t replay_expire(replay_store *s, uint64_t now_ms, void (*abandoned)(void *ctx, replay_stream *st), void *ctx)
{
    replay_stream *st;
    while ((st = s->dl_first) != NULL && st->deadline <= now_ms) {
        deadline_clear(s, st);
        if (!st->ended && abandoned) {
            st->in_callback = true;
            abandoned(ctx, st);
            st->in_callback = false;
        }
        drop_stream(st);
    }
    return replay_next_deadline(s);
}

uint64_t replay_next_deadline(const replay_store *s) { return s->dl_first ? s->dl_first->deadline : UINT64_MAX; }

size_t replay_store_bytes(const replay_store *s) { return s->bytes; }
size_t replay_store_streams(const replay_store *s) { return s->count; }

void replay_set_user(replay_stream *st, void *user) { st->user = user; }
void *replay_user(const replay_stream *st) { return st->user; }
