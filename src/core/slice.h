/* A view of bytes owned by someone else: the zero-copy currency of the parsers. */
#ifndef SSEGATE_SLICE_H
#define SSEGATE_SLICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
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

/* Decimal digits only (at most 19, so no overflow), worth at most max. */
static inline bool slice_to_u64(slice s, uint64_t max, uint64_t *out)
{
    if (s.len == 0 || s.len > 19)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.ptr[i] < '0' || s.ptr[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s.ptr[i] - '0');
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

/* Without the spaces and tabs around it (HTTP's optional white space). */
static inline slice slice_trim_ows(slice s)
{
    while (s.len && (s.ptr[0] == ' ' || s.ptr[0] == '\t')) {
        s.ptr++;
        s.len--;
    }
    while (s.len && (s.ptr[s.len - 1] == ' ' || s.ptr[s.len - 1] == '\t'))
        s.len--;
    return s;
}

static inline bool slice_starts_with(slice s, slice prefix)
{
    return s.len >= prefix.len && memcmp(s.ptr, prefix.ptr, prefix.len) == 0;
}

#endif
