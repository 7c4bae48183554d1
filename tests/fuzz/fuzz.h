/* Shared helpers for the libFuzzer targets: a failed invariant aborts with
 * a message (libFuzzer then saves the input), split points come from a
 * PRNG seeded by the input itself so every run of an input is the same. */
#ifndef SSEGATE_FUZZ_H
#define SSEGATE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "invariant failed: %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

typedef struct fuzz_rng {
    uint64_t s;
} fuzz_rng;

/* FNV-1a over the input, so split points follow the bytes. */
static inline fuzz_rng fuzz_rng_from(const uint8_t *data, size_t size)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 1099511628211ull;
    return (fuzz_rng){h | 1};
}

static inline uint64_t fuzz_next(fuzz_rng *r)
{
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return r->s;
}

/* A piece size in 1..max, biased to small pieces (single bytes often). */
static inline size_t fuzz_piece(fuzz_rng *r, size_t max)
{
    if (max <= 1)
        return 1;
    uint64_t v = fuzz_next(r);
    size_t cap = (v & 3) == 0 ? 1 : (v & 3) == 1 ? 8 : max;
    size_t n = 1 + (size_t)((v >> 8) % cap);
    return n < max ? n : max;
}

/* An exact-size heap copy (at least one byte), so ASan sees reads past the end. */
static inline char *fuzz_copy(const void *data, size_t size)
{
    char *c = malloc(size ? size : 1);
    if (!c)
        abort();
    if (size)
        memcpy(c, data, size);
    return c;
}

/* Uninitialised exact-size memory (at least one byte). */
static inline char *fuzz_alloc(size_t size)
{
    char *c = malloc(size ? size : 1);
    if (!c)
        abort();
    return c;
}

#endif
