#include "core/wbuf.h"

#include <string.h>

/* Copies n bytes, 1 to 16: two fixed-size moves that overlap when n is
 * not their size, where a call to memcpy would cost more than the copy. */
static inline void copy_short(char *dst, const char *src, size_t n)
{
    if (n >= 8) {
        memcpy(dst, src, 8);
        memcpy(dst + n - 8, src + n - 8, 8);
    } else if (n >= 4) {
        memcpy(dst, src, 4);
        memcpy(dst + n - 4, src + n - 4, 4);
    } else {
        dst[0] = src[0];
        dst[n / 2] = src[n / 2];
        dst[n - 1] = src[n - 1];
    }
}

void wbuf_put(wbuf *b, const void *data, size_t len)
{
    if (b->overflow || len > b->cap - b->len) {
        b->overflow = true;
        return;
    }
    if (len > 16)
        memcpy(b->ptr + b->len, data, len);
    else if (len) /* most pieces of a head or a log line */
        copy_short(b->ptr + b->len, data, len);
    b->len += len;
}

void wbuf_put_slice(wbuf *b, slice s) { wbuf_put(b, s.ptr, s.len); }

void wbuf_put_char(wbuf *b, char c) { wbuf_put(b, &c, 1); }

/* Two digits per division: half the divisions of one digit at a time. */
static const char digit_pairs[] = "00010203040506070809"
                                  "10111213141516171819"
                                  "20212223242526272829"
                                  "30313233343536373839"
                                  "40414243444546474849"
                                  "50515253545556575859"
                                  "60616263646566676869"
                                  "70717273747576777879"
                                  "80818283848586878889"
                                  "90919293949596979899";

void wbuf_put_u64(wbuf *b, uint64_t v)
{
    if (v < 100 && !b->overflow && b->cap - b->len >= 2) { /* most numbers in a log line or head */
        if (v < 10) {
            b->ptr[b->len++] = (char)('0' + v);
        } else {
            memcpy(b->ptr + b->len, digit_pairs + v * 2, 2);
            b->len += 2;
        }
        return;
    }
    size_t n = 1; /* digits, counted first so that they go straight in place */
    for (uint64_t above = 10; n < 20 && v >= above; above *= 10)
        n++;
    if (b->overflow || n > b->cap - b->len) {
        b->overflow = true;
        return;
    }
    char *at = b->ptr + b->len + n;
    b->len += n;
    while (v >= 100) {
        const char *pair = digit_pairs + (v % 100) * 2;
        v /= 100;
        at -= 2;
        at[0] = pair[0];
        at[1] = pair[1];
    }
    if (v >= 10) {
        at[-2] = digit_pairs[v * 2];
        at[-1] = digit_pairs[v * 2 + 1];
    } else {
        at[-1] = (char)('0' + v);
    }
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

/* For each byte, 0 when JSON takes it as it is, else the letter after the
 * backslash: 'u' for the \u00XX form of other control bytes. */
static const char json_escape[256] = {
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 't', 'n', 'u', 'u', 'r', 'u', 'u',
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u',
    ['"'] = '"', ['\\'] = '\\',
};

/* Whether any of 8 bytes needs escaping: a byte below 0x20, '"' or '\\'.
 * (x - 0x01..) & ~x & 0x80.. is nonzero exactly when some byte of x is 0;
 * with 0x20.. it finds a byte below 0x20. Bit 7 of a byte is the same in w
 * and in w xor '"'.. or '\\'.., so one ~w serves all three tests. */
static inline bool word_needs_escape(const char *p)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    uint64_t w;
    memcpy(&w, p, sizeof w);
    uint64_t quote = w ^ (ones * '"'), backslash = w ^ (ones * '\\');
    return (((w - ones * 0x20) | (quote - ones) | (backslash - ones)) & ~w & highs) != 0;
}

/* Copies s to dst, 8 bytes at a time while none needs escaping; returns how
 * many bytes it copied: all of s, or a prefix that ends before an escape. */
static size_t copy_clean(char *dst, slice s)
{
    size_t i = 0;
    if (s.len < 8) {
        while (i < s.len && !json_escape[(unsigned char)s.ptr[i]]) {
            dst[i] = s.ptr[i];
            i++;
        }
        return i;
    }
    for (; s.len - i >= 8; i += 8) {
        if (word_needs_escape(s.ptr + i))
            return i;
        memcpy(dst + i, s.ptr + i, 8);
    }
    /* The last 8 bytes again, overlapping what was copied, cover the rest. */
    if (i < s.len && word_needs_escape(s.ptr + s.len - 8))
        return i;
    memcpy(dst + s.len - 8, s.ptr + s.len - 8, 8);
    return s.len;
}

void wbuf_put_json_escaped(wbuf *b, slice s)
{
    static const char hex[] = "0123456789abcdef";
    size_t i = 0;
    if (!b->overflow && s.len <= b->cap - b->len) { /* the usual case: nothing to escape */
        i = copy_clean(b->ptr + b->len, s);
        b->len += i;
        if (i == s.len)
            return;
    }
    size_t run = i; /* s[run..i) is a pending run of bytes that need no escape */
    for (;;) {
        while (s.len - i >= 8 && !word_needs_escape(s.ptr + i))
            i += 8;
        while (i < s.len && !json_escape[(unsigned char)s.ptr[i]])
            i++;
        if (i == s.len)
            break;
        wbuf_put(b, s.ptr + run, i - run);
        unsigned char c = (unsigned char)s.ptr[i];
        if (json_escape[c] == 'u') {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            wbuf_put(b, u, sizeof u);
        } else {
            char pair[2] = {'\\', json_escape[c]};
            wbuf_put(b, pair, sizeof pair);
        }
        run = ++i;
    }
    wbuf_put(b, s.ptr + run, s.len - run);
}
