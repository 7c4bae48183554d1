/* A view of bytes owned by someone else: the zero-copy currency of the parsers. */
#ifndef SSEGATE_SLICE_H
#define SSEGATE_SLICE_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

typedef struct slice {
    const char *ptr;
    size_t len;
} slice;

#define SLICE_LIT(s) ((slice){(s), sizeof(s) - 1})

static inline slice slice_of(const char *s) { return (slice){s, s ? strlen(s) : 0}; }

static inline bool slice_eq(slice a, slice b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static inline char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c; }

static inline bool slice_eq_nocase(slice a, slice b)
{
    if (a.len != b.len)
        return false;
    for (size_t i = 0; i < a.len; i++)
        if (ascii_lower(a.ptr[i]) != ascii_lower(b.ptr[i]))
            return false;
    return true;
}

static inline bool slice_starts_with(slice s, slice prefix)
{
    return s.len >= prefix.len && memcmp(s.ptr, prefix.ptr, prefix.len) == 0;
}

#endif
