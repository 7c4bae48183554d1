/* Request arenas and the fixed-size buffer pool. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "unit.h"

TEST(arena_alignment_and_separation)
{
    arena a;
    arena_init(&a);
    unsigned char *prev = NULL;
    size_t prev_len = 0;
    size_t expect_total = 0;
    for (size_t size = 0; size < 200; size++) {
        unsigned char *p = arena_alloc(&a, size);
        CHECK(p != NULL);
        CHECK(((uintptr_t)p & 15) == 0);
        memset(p, (int)(size & 0xff), size);
        /* The previous allocation is untouched by this one. */
        for (size_t i = 0; i < prev_len; i++)
            if (prev[i] != (unsigned char)((size - 1) & 0xff)) {
                unit_fail(__FILE__, __LINE__, "allocation %zu overwritten", size - 1);
                break;
            }
        prev = p;
        prev_len = size;
        expect_total += (size + 15) & ~(size_t)15;
    }
    CHECK_EQ_SIZE(a.total, expect_total);
    arena_reset(&a);
    CHECK(a.head == NULL);
    CHECK_EQ_SIZE(a.total, 0);
    arena_release_cached();
}

TEST(arena_big_allocations)
{
    arena a;
    arena_init(&a);
    char *small1 = arena_alloc(&a, 10);
    char *big = arena_alloc(&a, 3 * ARENA_BLOCK_SIZE + 1);
    char *small2 = arena_alloc(&a, 10);
    CHECK(small1 && big && small2);
    CHECK(((uintptr_t)big & 15) == 0);
    memset(big, 'b', 3 * ARENA_BLOCK_SIZE + 1);
    memset(small1, '1', 10);
    memset(small2, '2', 10);
    CHECK(small1[9] == '1' && big[0] == 'b');
    /* Exactly a block, and a block plus one. */
    char *exact = arena_alloc(&a, ARENA_BLOCK_SIZE);
    char *over = arena_alloc(&a, ARENA_BLOCK_SIZE + 1);
    CHECK(exact && over);
    memset(exact, 'e', ARENA_BLOCK_SIZE);
    memset(over, 'o', ARENA_BLOCK_SIZE + 1);
    CHECK(big[0] == 'b' && big[3 * ARENA_BLOCK_SIZE] == 'b');
    /* Filling many blocks. */
    for (int i = 0; i < 100; i++) {
        char *p = arena_alloc(&a, 5000);
        CHECK(p != NULL);
        memset(p, 'f', 5000);
    }
    arena_reset(&a);
    arena_release_cached();
}

TEST(arena_impossible_sizes)
{
    arena a;
    arena_init(&a);
    CHECK(arena_alloc(&a, SIZE_MAX) == NULL);
    /* These round to a size that fits in size_t, but not with the block
     * header added. (Sizes that merely fail in malloc are not tried: ASan
     * aborts on those instead of returning NULL.) */
    CHECK(arena_alloc(&a, SIZE_MAX - 15) == NULL);
    CHECK(arena_alloc(&a, SIZE_MAX - 20) == NULL);
    /* The arena still works afterwards. */
    char *p = arena_alloc(&a, 16);
    CHECK(p != NULL);
    arena_reset(&a);
    arena_release_cached();
}

TEST(arena_reset_reuses_blocks)
{
    arena a;
    arena_init(&a);
    char *first = arena_alloc(&a, 100);
    CHECK(first != NULL);
    arena_reset(&a);
    /* The block went back to the free list and comes out again. */
    char *again = arena_alloc(&a, 100);
    CHECK(again == first);
    /* Several blocks come back too, and big ones are not cached. */
    void *blocks[4];
    for (int i = 0; i < 4; i++)
        blocks[i] = arena_alloc(&a, ARENA_BLOCK_SIZE - 64);
    arena_alloc(&a, 4 * ARENA_BLOCK_SIZE);
    arena_reset(&a);
    arena b;
    arena_init(&b);
    int found = 0;
    for (int i = 0; i < 5; i++) {
        void *p = arena_alloc(&b, ARENA_BLOCK_SIZE - 64);
        for (int j = 0; j < 4; j++)
            found += p == blocks[j];
    }
    CHECK(found == 4);
    arena_reset(&b);
    arena_release_cached();
    arena_init(&a);
    CHECK(arena_alloc(&a, 1) != NULL);
    arena_reset(&a);
    arena_release_cached();
}

TEST(arena_mark_and_rewind)
{
    arena a;
    arena_init(&a);
    /* A mark on an empty arena: rewinding gives every block back. */
    arena_mark empty = arena_mark_now(&a);
    CHECK(arena_alloc(&a, 100) != NULL);
    CHECK(arena_alloc(&a, 2 * ARENA_BLOCK_SIZE) != NULL);
    arena_rewind(&a, empty);
    CHECK(a.head == NULL);
    CHECK_EQ_SIZE(a.used, 0);
    CHECK_EQ_SIZE(a.total, 0);

    /* Memory from before the mark survives; after it is handed out again. */
    char *keep = arena_alloc(&a, 64);
    memset(keep, 'k', 64);
    arena_mark m = arena_mark_now(&a);
    char *scratch = arena_alloc(&a, 32);
    size_t total_at_mark = m.total;
    for (int round = 0; round < 3; round++) {
        arena_rewind(&a, m);
        CHECK_EQ_SIZE(a.total, total_at_mark);
        char *again = arena_alloc(&a, 32);
        CHECK(again == scratch);
        /* Spill into new blocks, big and small, then rewind over them. */
        for (int i = 0; i < 5; i++) {
            char *p = arena_alloc(&a, i == 2 ? 3 * ARENA_BLOCK_SIZE : 9000);
            CHECK(p != NULL);
            memset(p, 's', i == 2 ? 3 * ARENA_BLOCK_SIZE : 9000);
        }
    }
    arena_rewind(&a, m);
    for (int i = 0; i < 64; i++)
        if (keep[i] != 'k') {
            unit_fail(__FILE__, __LINE__, "byte %d before the mark changed", i);
            break;
        }
    /* Nested marks. */
    arena_mark outer = arena_mark_now(&a);
    arena_alloc(&a, 20000);
    arena_mark inner = arena_mark_now(&a);
    arena_alloc(&a, 20000);
    arena_rewind(&a, inner);
    CHECK_EQ_SIZE(a.total, inner.total);
    arena_rewind(&a, outer);
    CHECK_EQ_SIZE(a.total, outer.total);
    CHECK(arena_alloc(&a, 32) == scratch);
    arena_reset(&a);
    arena_release_cached();
}

TEST(arena_strndup_copies)
{
    arena a;
    arena_init(&a);
    char *s = arena_strndup(&a, "hello world", 5);
    CHECK_STR(s, "hello");
    char *e = arena_strndup(&a, "", 0);
    CHECK_STR(e, "");
    static const char bin[] = "a\0b";
    char *z = arena_strndup(&a, bin, 3);
    CHECK(z && z[0] == 'a' && z[1] == '\0' && z[2] == 'b' && z[3] == '\0');
    arena_reset(&a);
    arena_release_cached();
}

TEST(arena_pool)
{
    buffer_pool p = {.size = 4096, .max_free = 2};
    char *b1 = pool_get(&p), *b2 = pool_get(&p), *b3 = pool_get(&p);
    CHECK(b1 && b2 && b3);
    memset(b1, 1, 4096);
    memset(b2, 2, 4096);
    memset(b3, 3, 4096);
    CHECK_EQ_SIZE(p.free_count, 0);
    pool_put(&p, b1);
    pool_put(&p, b2);
    pool_put(&p, b3); /* over max_free: freed */
    CHECK_EQ_SIZE(p.free_count, 2);
    pool_put(&p, NULL);
    CHECK_EQ_SIZE(p.free_count, 2);
    /* Last in, first out. */
    CHECK(pool_get(&p) == b2);
    CHECK(pool_get(&p) == b1);
    CHECK_EQ_SIZE(p.free_count, 0);
    CHECK(p.free_list == NULL);
    pool_put(&p, b1);
    pool_put(&p, b2);
    pool_drain(&p);
    CHECK_EQ_SIZE(p.free_count, 0);
    CHECK(p.free_list == NULL);
    /* A drained pool still hands out buffers. */
    char *b4 = pool_get(&p);
    CHECK(b4 != NULL);
    pool_put(&p, b4);
    pool_drain(&p);

    /* max_free 0: nothing is kept. */
    buffer_pool none = {.size = 64};
    void *x = pool_get(&none);
    pool_put(&none, x);
    CHECK_EQ_SIZE(none.free_count, 0);
    CHECK(none.free_list == NULL);
}

/* An arena over the caller's memory: small requests stay in it, larger
 * ones go on in blocks, and reset or rewind never hand it to the cache. */
TEST(arena_over_caller_memory)
{
    _Alignas(16) unsigned char mem[1024];
    arena a;
    arena_init_over(&a, mem, sizeof mem);
    unsigned char *lo = mem, *hi = mem + sizeof mem;
    char *p1 = arena_alloc(&a, 100), *p2 = arena_alloc(&a, 200);
    CHECK(p1 && p2);
    CHECK((unsigned char *)p1 >= lo && (unsigned char *)p2 + 200 <= hi);
    CHECK(((uintptr_t)p1 & 15) == 0 && ((uintptr_t)p2 & 15) == 0);
    memset(p1, 'a', 100);
    memset(p2, 'b', 200);
    /* Past what is left of it: a standard block, and the own memory keeps its bytes. */
    char *big = arena_alloc(&a, 2000);
    CHECK(big && ((unsigned char *)big < lo || (unsigned char *)big >= hi));
    memset(big, 'c', 2000);
    CHECK(p1[99] == 'a' && p2[0] == 'b');
    /* Rewinding past the block gives it back and leaves the own memory in use. */
    arena_mark m = arena_mark_now(&a);
    char *scratch = arena_alloc(&a, 3 * ARENA_BLOCK_SIZE);
    CHECK(scratch != NULL);
    arena_rewind(&a, m);
    CHECK(p2[199] == 'b');
    /* A reset starts over in the own memory, again and again. */
    for (int round = 0; round < 3; round++) {
        arena_reset(&a);
        CHECK(a.head == NULL && a.own != NULL);
        char *again = arena_alloc(&a, 100);
        CHECK(again == p1);
    }
    /* A first request bigger than the own memory goes to a block; after a reset the own memory is first again. */
    arena_reset(&a);
    char *first_big = arena_alloc(&a, 4096);
    CHECK(first_big && ((unsigned char *)first_big < lo || (unsigned char *)first_big >= hi));
    arena_reset(&a);
    CHECK(arena_alloc(&a, 16) == p1);
    /* Rewinding to an empty mark frees the blocks, not the own memory. */
    arena_reset(&a);
    arena_mark empty = arena_mark_now(&a);
    CHECK(arena_alloc(&a, 500) == p1);
    CHECK(arena_alloc(&a, 900) != NULL); /* spills */
    arena_rewind(&a, empty);
    CHECK(a.head == NULL);
    CHECK(arena_alloc(&a, 8) == p1);
    arena_reset(&a);
    arena_release_cached();
}

/* Mapped pools: page buffers, reused last in first out, kept up to max_free. */
TEST(arena_mapped_pool)
{
    buffer_pool p = {.size = 2 * 4096, .max_free = 2, .mapped = true};
    char *b[4];
    for (int i = 0; i < 4; i++) {
        b[i] = pool_get(&p);
        CHECK(b[i] != NULL);
        CHECK(((uintptr_t)b[i] & 4095) == 0);
        memset(b[i], 'a' + i, p.size);
    }
    for (int i = 0; i < 4; i++)
        pool_put(&p, b[i]);
    CHECK_EQ_SIZE(p.free_count, 2); /* the other two went back to the system */
    CHECK(pool_get(&p) == b[1]);
    CHECK(pool_get(&p) == b[0]);
    CHECK_EQ_SIZE(p.free_count, 0);
    char *fresh = pool_get(&p);
    CHECK(fresh != NULL);
    memset(fresh, 'z', p.size);
    pool_put(&p, b[0]);
    pool_put(&p, b[1]);
    pool_put(&p, fresh);
    pool_drain(&p);
    CHECK_EQ_SIZE(p.free_count, 0);
    CHECK(p.free_list == NULL);
}

/* A pool follows demand: a steady load of N at once keeps N buffers between
 * trims (no allocation once warm); after a burst it shrinks to its reserve
 * within two trims; max_free bounds it whatever the demand. */
TEST(pool_trim_follows_demand)
{
    buffer_pool p = {.size = 4096, .reserve = 2, .max_free = 16, .mapped = true};
    char *b[24];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 8; i++)
            CHECK((b[i] = pool_get(&p)) != NULL);
        for (int i = 0; i < 8; i++)
            pool_put(&p, b[i]);
        CHECK(pool_trim(&p)); /* the last interval needed 8: all 8 stay */
        CHECK_EQ_SIZE(p.free_count, 8);
    }
    /* the same 8 buffers came back each round: nothing new was mapped */
    char *again[8];
    for (int i = 0; i < 8; i++) {
        again[i] = pool_get(&p);
        bool known = false;
        for (int j = 0; j < 8; j++)
            known |= again[i] == b[j];
        CHECK(known);
    }
    for (int i = 0; i < 8; i++)
        pool_put(&p, again[i]);
    CHECK(pool_trim(&p));
    /* a quiet interval: back to the reserve */
    CHECK(!pool_trim(&p));
    CHECK_EQ_SIZE(p.free_count, 2);
    /* buffers still in use are not counted against what is kept */
    char *held = pool_get(&p);
    CHECK(!pool_trim(&p));
    CHECK_EQ_SIZE(p.free_count, 1);
    pool_put(&p, held);
    /* a burst past max_free: the excess goes back at once */
    for (int i = 0; i < 24; i++)
        CHECK((b[i] = pool_get(&p)) != NULL);
    for (int i = 0; i < 24; i++)
        pool_put(&p, b[i]);
    CHECK_EQ_SIZE(p.free_count, 16);
    CHECK_EQ_SIZE(p.in_use, 0);
    pool_trim(&p);
    CHECK(!pool_trim(&p));
    CHECK_EQ_SIZE(p.free_count, 2);
    pool_drain(&p);
}
