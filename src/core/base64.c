#include "core/base64.h"

static const char alphabet[64] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* The 6-bit value of c, or -1 outside the base64url alphabet. */
static int sextet(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

bool base64url_decode(slice in, unsigned char *out, size_t cap, size_t *out_len)
{
    size_t rem = in.len % 4;
    if (rem == 1)
        return false;
    size_t need = base64url_decoded_len(in.len);
    if (need > cap)
        return false;
    size_t o = 0;
    uint32_t acc = 0;
    for (size_t i = 0; i < in.len; i++) {
        int v = sextet(in.ptr[i]);
        if (v < 0)
            return false;
        acc = acc << 6 | (uint32_t)v;
        if (i % 4 == 3) {
            out[o++] = (unsigned char)(acc >> 16);
            out[o++] = (unsigned char)(acc >> 8);
            out[o++] = (unsigned char)acc;
            acc = 0;
        }
    }
    /* A short last group carries 4 (two characters) or 2 (three) unused
     * bits; they must be zero, or two spellings would mean the same bytes. */
    if (rem == 2) {
        if (acc & 0xf)
            return false;
        out[o++] = (unsigned char)(acc >> 4);
    } else if (rem == 3) {
        if (acc & 0x3)
            return false;
        out[o++] = (unsigned char)(acc >> 10);
        out[o++] = (unsigned char)(acc >> 2);
    }
    *out_len = o;
    return true;
}

size_t base64url_encode(const void *in, size_t len, char *out, size_t cap)
{
    size_t need = base64url_encoded_len(len);
    if (need > cap)
        return 0;
    const unsigned char *p = in;
    size_t o = 0, i = 0;
    for (; len - i >= 3; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = alphabet[v >> 6 & 63];
        out[o++] = alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[v >> 12 & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = alphabet[v >> 6 & 63];
    }
    return o;
}
