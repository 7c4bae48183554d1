#include "core/wbuf.h"

#include <string.h>

void wbuf_put(wbuf *b, const void *data, size_t len)
{
    if (b->overflow || len > b->cap - b->len) {
        b->overflow = true;
        return;
    }
    if (len)
        memcpy(b->ptr + b->len, data, len);
    b->len += len;
}

void wbuf_puts(wbuf *b, const char *s) { wbuf_put(b, s, strlen(s)); }

void wbuf_put_slice(wbuf *b, slice s) { wbuf_put(b, s.ptr, s.len); }

void wbuf_put_char(wbuf *b, char c) { wbuf_put(b, &c, 1); }

void wbuf_put_u64(wbuf *b, uint64_t v)
{
    char digits[20];
    size_t n = 0;
    do {
        digits[sizeof digits - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    wbuf_put(b, digits + sizeof digits - n, n);
}

void wbuf_put_i64(wbuf *b, int64_t v)
{
    if (v < 0) {
        wbuf_put_char(b, '-');
        wbuf_put_u64(b, (uint64_t)0 - (uint64_t)v);
    } else {
        wbuf_put_u64(b, (uint64_t)v);
    }
}

void wbuf_put_hex(wbuf *b, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    char digits[16];
    size_t n = 0;
    do {
        digits[sizeof digits - 1 - n++] = hex[v & 15];
        v >>= 4;
    } while (v);
    wbuf_put(b, digits + sizeof digits - n, n);
}

void wbuf_put_json_escaped(wbuf *b, slice s)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0; /* start of the pending run of bytes that need no escape */
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        wbuf_put(b, s.ptr + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': wbuf_put(b, "\\\"", 2); break;
        case '\\': wbuf_put(b, "\\\\", 2); break;
        case '\n': wbuf_put(b, "\\n", 2); break;
        case '\r': wbuf_put(b, "\\r", 2); break;
        case '\t': wbuf_put(b, "\\t", 2); break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            wbuf_put(b, u, sizeof u);
        }
        }
    }
    wbuf_put(b, s.ptr + run, s.len - run);
}
