/* The stream read buffer across read boundaries: events split over 2, 3
 * and 1,000 reads, a 15 MiB event, an event exactly at --max-event and
 * one byte over, and the memory going back to the pool afterwards. The
 * driver runs the relay's cycle: take a read buffer (with the parked bytes
 * of an incomplete event), read into the free end, take every complete
 * event, move the rest to the front, evbuf_settle, evbuf_park. */
#include <stdlib.h>
#include <string.h>

#include "gateway/evbuf.h"
#include "gateway/sse.h"
#include "unit.h"

enum { POOL_SIZE = 64 * 1024 };

typedef struct split_result {
    evbuf_result status; /* the first one that was not EVBUF_OK, or EVBUF_OK */
    size_t events;       /* events taken, each checked byte for byte */
    size_t mismatches;
    size_t reads;
    size_t max_cap;
    size_t parks;       /* reads after which an incomplete event waited in a small buffer */
    bool pooled_at_end; /* the buffer went back to a pooled one */
} split_result;

/* Feeds `len` bytes in reads of at most `piece` bytes (less when the buffer
 * has less room, as a socket read would be). */
static split_result run_split(const char *input, size_t len, size_t piece, size_t max_event)
{
    buffer_pool pool = {.size = POOL_SIZE, .max_free = 4};
    buffer_pool small1 = {.size = 1024, .max_free = 2}, small8 = {.size = 8192, .max_free = 2, .mapped = true};
    buffer_pool *const small[2] = {&small1, &small8};
    evbuf b = {0};
    sse_parser p = {0};
    split_result out = {.status = EVBUF_OK};
    size_t fed = 0, used = 0, taken = 0; /* taken: input bytes the events accounted for */
    CHECK(evbuf_acquire(&b, &pool));
    while (fed < len) {
        if (!evbuf_acquire(&b, &pool)) {
            out.status = EVBUF_NO_MEMORY;
            break;
        }
        size_t n = len - fed;
        if (n > piece)
            n = piece;
        if (n > b.cap - used)
            n = b.cap - used;
        memcpy(b.ptr + used, input + fed, n);
        fed += n;
        used += n;
        out.reads++;
        size_t start = 0;
        sse_event ev;
        while (sse_next_event(&p, b.ptr + start, used - start, fed == len, &ev)) {
            if (ev.raw.len > max_event) {
                out.status = EVBUF_TOO_LARGE;
                break;
            }
            if (memcmp(ev.raw.ptr, input + taken + (ev.consumed - ev.raw.len), ev.raw.len) != 0)
                out.mismatches++;
            out.events++;
            taken += ev.consumed;
            start += ev.consumed;
            if (ev.unterminated)
                break;
        }
        if (out.status != EVBUF_OK)
            break;
        memmove(b.ptr, b.ptr + start, used - start);
        used -= start;
        out.status = evbuf_settle(&b, &pool, used, used, max_event);
        if (b.cap > out.max_cap)
            out.max_cap = b.cap;
        if (out.status != EVBUF_OK)
            break;
        evbuf_park(&b, &pool, small, 2, used);
        out.parks += b.parked != NULL;
    }
    out.pooled_at_end = !b.mapped && !b.parked && b.cap == POOL_SIZE;
    evbuf_release(&b, &pool);
    pool_drain(&pool);
    pool_drain(&small1);
    pool_drain(&small8);
    return out;
}

/* An event of exactly `size` bytes, blank line included: a data field of x. */
static size_t put_event(char *at, size_t size)
{
    memcpy(at, "data: ", 6);
    memset(at + 6, 'x', size - 8);
    memcpy(at + size - 2, "\n\n", 2);
    return size;
}

/* Small events, then one of `size` bytes, then small ones again. */
static char *stream_with(size_t size, size_t *len)
{
    char *s = malloc(size + 4096);
    size_t n = 0;
    for (int i = 0; i < 5; i++)
        n += put_event(s + n, 40);
    n += put_event(s + n, size);
    for (int i = 0; i < 5; i++)
        n += put_event(s + n, 60);
    *len = n;
    return s;
}

static void check_whole(size_t size, size_t piece, size_t min_reads)
{
    size_t len;
    char *s = stream_with(size, &len);
    split_result r = run_split(s, len, piece, 16u << 20);
    CHECK(r.status == EVBUF_OK);
    CHECK_EQ_SIZE(r.events, 11);
    CHECK_EQ_SIZE(r.mismatches, 0);
    CHECK(r.reads >= min_reads);
    CHECK(r.pooled_at_end);
    free(s);
}

TEST(evbuf_event_split_over_two_reads)
{
    check_whole(40 * 1024, 21 * 1024, 2);
}

TEST(evbuf_event_split_over_three_reads_past_the_pool_size)
{
    size_t len;
    char *s = stream_with(150 * 1024, &len);
    split_result r = run_split(s, len, 51 * 1024, 16u << 20);
    CHECK(r.status == EVBUF_OK);
    CHECK_EQ_SIZE(r.events, 11);
    CHECK_EQ_SIZE(r.mismatches, 0);
    CHECK(r.reads >= 3);
    CHECK(r.max_cap >= 150 * 1024); /* grew for the long event */
    CHECK(r.pooled_at_end);        /* and went back after it */
    free(s);
}

TEST(evbuf_event_split_over_a_thousand_reads)
{
    check_whole(1000 * 1000, 1000, 1000);
}

TEST(evbuf_split_at_every_boundary_of_a_small_stream)
{
    size_t len;
    char *s = stream_with(300, &len);
    for (size_t piece = 1; piece <= len; piece++) {
        split_result r = run_split(s, len, piece, 16u << 20);
        CHECK(r.status == EVBUF_OK && r.events == 11 && r.mismatches == 0);
        if (piece < 40) /* the first event ends in a later read: its start waited parked */
            CHECK(r.parks > 0);
    }
    free(s);
}

TEST(evbuf_fifteen_mib_event)
{
    check_whole(15u << 20, POOL_SIZE, (15u << 20) / POOL_SIZE);
}

TEST(evbuf_event_exactly_at_the_limit)
{
    size_t len;
    char *s = stream_with(200 * 1024, &len);
    split_result r = run_split(s, len, POOL_SIZE, 200 * 1024);
    CHECK(r.status == EVBUF_OK);
    CHECK_EQ_SIZE(r.events, 11);
    CHECK_EQ_SIZE(r.mismatches, 0);
    CHECK(r.max_cap <= 200 * 1024 + POOL_SIZE);
    free(s);
}

TEST(evbuf_event_one_byte_over_the_limit)
{
    size_t len;
    char *s = stream_with(200 * 1024 + 1, &len);
    split_result r = run_split(s, len, POOL_SIZE, 200 * 1024);
    CHECK(r.status == EVBUF_TOO_LARGE);
    CHECK_EQ_SIZE(r.events, 5); /* the ones before it went out */
    CHECK_EQ_SIZE(r.mismatches, 0);
    free(s);
}

TEST(evbuf_limit_below_the_pool_size)
{
    size_t len;
    char *s = stream_with(1024, &len);
    split_result ok = run_split(s, len, 100, 1024);
    CHECK(ok.status == EVBUF_OK && ok.events == 11);
    free(s);
    s = stream_with(1025, &len);
    split_result over = run_split(s, len, 100, 1024); /* arrives piece by piece */
    CHECK(over.status == EVBUF_TOO_LARGE);
    CHECK_EQ_SIZE(over.events, 5);
    split_result whole = run_split(s, len, len, 1024); /* arrives complete in one read */
    CHECK(whole.status == EVBUF_TOO_LARGE);
    free(s);
}

TEST(evbuf_reserve_grows_to_the_limit_and_no_further)
{
    buffer_pool pool = {.size = 4096, .max_free = 4};
    evbuf b = {0};
    CHECK(evbuf_reserve(&b, &pool, 0, 100, 1 << 20));
    CHECK(!b.mapped && b.cap == 4096);
    memset(b.ptr, 'a', 4000);
    CHECK(evbuf_reserve(&b, &pool, 4000, 10000, 1 << 20));
    CHECK(b.mapped && b.cap >= 14000);
    CHECK(b.ptr[0] == 'a' && b.ptr[3999] == 'a'); /* kept across the move */
    CHECK(!evbuf_reserve(&b, &pool, 4000, 1 << 20, 1 << 20));
    CHECK(evbuf_reserve(&b, &pool, 4000, (1 << 20) - 4000, 1 << 20));
    CHECK_EQ_SIZE(b.cap, 1 << 20);
    evbuf_release(&b, &pool);
    CHECK(b.ptr == NULL);
    pool_drain(&pool);
}

/* An incomplete event between reads: its bytes wait in the smallest small
 * buffer that holds them, the read buffer goes back, and the next
 * acquire brings them back in front of a read buffer. */
TEST(evbuf_partial_event_parks_in_a_small_buffer)
{
    buffer_pool pool = {.size = POOL_SIZE, .max_free = 4};
    buffer_pool small1 = {.size = 1024, .max_free = 2}, small8 = {.size = 8192, .max_free = 2, .mapped = true};
    buffer_pool *const small[2] = {&small1, &small8};
    static const size_t sizes[] = {1, 100, 1023, 1024, 5000, 8191, 8192, 10000};
    static char pattern[10000];
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (char)('a' + i % 23);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t used = sizes[k];
        evbuf b = {0};
        CHECK(evbuf_acquire(&b, &pool));
        memcpy(b.ptr, pattern, used);
        CHECK(evbuf_settle(&b, &pool, used, used, 1u << 20) == EVBUF_OK);
        evbuf_park(&b, &pool, small, 2, used);
        buffer_pool *want = used < 1024 ? &small1 : used < 8192 ? &small8 : NULL;
        CHECK(b.parked == want);
        if (want) {
            CHECK_EQ_SIZE(b.cap, want->size);
            CHECK_EQ_SIZE(b.held, used);
            CHECK_EQ_SIZE(pool.free_count, 1); /* the read buffer is back */
        }
        CHECK(memcmp(b.ptr, pattern, used) == 0);
        CHECK(evbuf_acquire(&b, &pool));
        CHECK(b.parked == NULL && !b.mapped && b.cap == POOL_SIZE);
        CHECK(memcmp(b.ptr, pattern, used) == 0);
        if (want)
            CHECK_EQ_SIZE(want->free_count, 1); /* the small one is back */
        evbuf_release(&b, &pool);
    }
    /* Released while parked: back to its small pool. */
    evbuf b = {0};
    CHECK(evbuf_acquire(&b, &pool));
    memcpy(b.ptr, "data: x", 7);
    evbuf_park(&b, &pool, small, 2, 7);
    CHECK(b.parked == &small1);
    size_t before = small1.free_count;
    evbuf_release(&b, &pool);
    CHECK(b.ptr == NULL);
    CHECK_EQ_SIZE(small1.free_count, before + 1);
    /* Nothing held, or mapped pages: nothing to park. */
    CHECK(evbuf_acquire(&b, &pool));
    evbuf_park(&b, &pool, small, 2, 0);
    CHECK(b.parked == NULL && b.cap == POOL_SIZE);
    memset(b.ptr, 'x', POOL_SIZE);
    CHECK(evbuf_settle(&b, &pool, POOL_SIZE, POOL_SIZE, 1u << 20) == EVBUF_OK);
    CHECK(b.mapped);
    evbuf_park(&b, &pool, small, 2, 10);
    CHECK(b.parked == NULL && b.mapped);
    evbuf_release(&b, &pool);
    pool_drain(&pool);
    pool_drain(&small1);
    pool_drain(&small8);
}
