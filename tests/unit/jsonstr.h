/* A strict decoder of one JSON string (RFC 8259 §7), for tests of what the
 * writers produce: raw control characters, bad escapes, unpaired surrogates
 * and ill-formed UTF-8 are all refused. Shared by the unit tests and the
 * replay fuzz target. */
#ifndef SSEGATE_TEST_JSONSTR_H
#define SSEGATE_TEST_JSONSTR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Length of the well-formed UTF-8 sequence at p[0..n), or 0. */
static inline size_t jsonstr_utf8_len(const unsigned char *p, size_t n)
{
    if (p[0] < 0x80)
        return 1;
    size_t len = p[0] >= 0xf0 ? 4 : p[0] >= 0xe0 ? 3 : 2;
    if (p[0] < 0xc2 || p[0] > 0xf4 || n < len)
        return 0;
    uint32_t cp = p[0] & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < least[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static inline bool jsonstr_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t len = jsonstr_utf8_len(p + i, n - i);
        if (len == 0)
            return false;
        i += len;
    }
    return true;
}

static inline int jsonstr_hex4(const char *p)
{
    int v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p[k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v = v << 4 | d;
    }
    return v;
}

static inline void jsonstr_put_cp(char *out, size_t cap, size_t *o, uint32_t cp, bool *ok)
{
    unsigned char b[4];
    size_t len;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        len = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xc0 | cp >> 6);
        b[1] = (unsigned char)(0x80 | (cp & 0x3f));
        len = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xe0 | cp >> 12);
        b[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
        b[2] = (unsigned char)(0x80 | (cp & 0x3f));
        len = 3;
    } else {
        b[0] = (unsigned char)(0xf0 | cp >> 18);
        b[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
        b[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
        b[3] = (unsigned char)(0x80 | (cp & 0x3f));
        len = 4;
    }
    if (cap - *o < len) {
        *ok = false;
        return;
    }
    for (size_t i = 0; i < len; i++)
        out[(*o)++] = (char)b[i];
}

/* Decodes the contents of a JSON string (s[0..n), the quotes excluded) into
 * out[0..cap) as UTF-8. False when s is not well-formed. */
static inline bool jsonstr_decode(const char *s, size_t n, char *out, size_t cap, size_t *out_len)
{
    size_t o = 0;
    bool ok = true;
    for (size_t i = 0; i < n && ok;) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"')
            return false;
        if (c != '\\') {
            size_t len = jsonstr_utf8_len((const unsigned char *)s + i, n - i);
            if (len == 0 || cap - o < len)
                return false;
            for (size_t k = 0; k < len; k++)
                out[o++] = s[i + k];
            i += len;
            continue;
        }
        if (i + 1 >= n)
            return false;
        char e = s[i + 1];
        const char *simple = "\"\\/bfnrt", *value = "\"\\/\b\f\n\r\t";
        const char *hit = NULL;
        for (const char *q = simple; *q; q++)
            if (*q == e)
                hit = q;
        if (hit) {
            jsonstr_put_cp(out, cap, &o, (unsigned char)value[hit - simple], &ok);
            i += 2;
            continue;
        }
        if (e != 'u' || n - i < 6)
            return false;
        int v = jsonstr_hex4(s + i + 2);
        if (v < 0 || (v >= 0xdc00 && v <= 0xdfff))
            return false;
        i += 6;
        uint32_t cp = (uint32_t)v;
        if (v >= 0xd800 && v <= 0xdbff) {
            if (n - i < 6 || s[i] != '\\' || s[i + 1] != 'u')
                return false;
            int w = jsonstr_hex4(s + i + 2);
            if (w < 0xdc00 || w > 0xdfff)
                return false;
            cp = 0x10000 + ((uint32_t)(v - 0xd800) << 10) + (uint32_t)(w - 0xdc00);
            i += 6;
        }
        jsonstr_put_cp(out, cap, &o, cp, &ok);
    }
    *out_len = o;
    return ok;
}

#endif
