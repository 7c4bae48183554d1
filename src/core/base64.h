/* base64url (RFC 4648 §5) as JOSE uses it: no padding, and a decoder that
 * accepts exactly one spelling of each byte string, so that a token's bytes
 * and its meaning cannot drift apart. */
#ifndef SSEGATE_BASE64_H
#define SSEGATE_BASE64_H

#include <stdbool.h>
#include <stddef.h>

#include "core/slice.h"

/* Characters that encoding len bytes takes (no padding). */
static inline size_t base64url_encoded_len(size_t len)
{
    return len / 3 * 4 + (len % 3 ? len % 3 + 1 : 0);
}

/* Bytes that a valid encoding of n characters decodes to (n % 4 != 1). */
static inline size_t base64url_decoded_len(size_t n)
{
    return n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
}

/* Decodes `in` into out[0..cap). Refuses '=' padding, '+', '/', white space,
 * any other byte outside the alphabet, a length of 1 mod 4, non-zero unused
 * bits in the last character, and output that does not fit in cap. Returns
 * true with *out_len set; on false, out may hold partial bytes. */
bool base64url_decode(slice in, unsigned char *out, size_t cap, size_t *out_len);

/* Encodes in[0..len) into out[0..cap) without padding or NUL. Returns the
 * number of characters written, or 0 (writing nothing) when cap is smaller
 * than base64url_encoded_len(len). */
size_t base64url_encode(const void *in, size_t len, char *out, size_t cap);

#endif
