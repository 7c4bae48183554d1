/* A bounded write buffer. Writes past the capacity set `overflow` and are
 * dropped, so callers check once at the end instead of after every append. */
#ifndef SSEGATE_WBUF_H
#define SSEGATE_WBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/slice.h"

typedef struct wbuf {
    char *ptr;
    size_t len, cap;
    bool overflow;
} wbuf;

static inline wbuf wbuf_over(char *mem, size_t cap) { return (wbuf){mem, 0, cap, false}; }

void wbuf_put(wbuf *b, const void *data, size_t len);
/* Inline, so that the length of a literal is a constant, not a strlen call. */
static inline void wbuf_puts(wbuf *b, const char *s) { wbuf_put(b, s, strlen(s)); }
void wbuf_put_slice(wbuf *b, slice s);
void wbuf_put_char(wbuf *b, char c);
void wbuf_put_u64(wbuf *b, uint64_t v);
void wbuf_put_i64(wbuf *b, int64_t v);
void wbuf_put_hex(wbuf *b, uint64_t v);
/* Writes s as the inside of a JSON string (quotes not included). */
void wbuf_put_json_escaped(wbuf *b, slice s);

static inline slice wbuf_slice(const wbuf *b) { return (slice){b->ptr, b->len}; }

#endif
