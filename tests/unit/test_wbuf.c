/* The bounded write buffer and its number and JSON-string writers. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "unit.h"
#include "core/wbuf.h"

static const char *text_of(wbuf *b)
{
    static char out[512];
    size_t n = b->len < sizeof out - 1 ? b->len : sizeof out - 1;
    memcpy(out, b->ptr, n);
    out[n] = '\0';
    return out;
}

TEST(wbuf_numbers)
{
    char mem[128];
    wbuf b = wbuf_over(mem, sizeof mem);
    wbuf_put_u64(&b, 0);
    wbuf_put_char(&b, ' ');
    wbuf_put_u64(&b, UINT64_MAX);
    wbuf_put_char(&b, ' ');
    wbuf_put_i64(&b, INT64_MIN);
    wbuf_put_char(&b, ' ');
    wbuf_put_i64(&b, -1);
    wbuf_put_char(&b, ' ');
    wbuf_put_i64(&b, INT64_MAX);
    wbuf_put_char(&b, ' ');
    wbuf_put_hex(&b, 0);
    wbuf_put_char(&b, ' ');
    wbuf_put_hex(&b, 0xdeadbeef);
    wbuf_put_char(&b, ' ');
    wbuf_put_hex(&b, UINT64_MAX);
    CHECK(!b.overflow);
    CHECK_STR(text_of(&b), "0 18446744073709551615 -9223372036854775808 -1 9223372036854775807 0 deadbeef "
                           "ffffffffffffffff");
}

TEST(wbuf_json_escaping)
{
    char mem[256];
    wbuf b = wbuf_over(mem, sizeof mem);
    static const char in[] = "a\"b\\c\nd\re\tf\x01g\x1fh\x7f\xc3\xa9\0z";
    wbuf_put_json_escaped(&b, (slice){in, sizeof in - 1});
    CHECK(!b.overflow);
    CHECK_STR(text_of(&b), "a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001fh\x7f\xc3\xa9\\u0000z");
    b = wbuf_over(mem, sizeof mem);
    wbuf_put_json_escaped(&b, SLICE_LIT(""));
    CHECK_EQ_SIZE(b.len, 0);
    wbuf_put_json_escaped(&b, SLICE_LIT("plain"));
    CHECK_STR(text_of(&b), "plain");
}

TEST(wbuf_overflow)
{
    char mem[8];
    wbuf b = wbuf_over(mem, sizeof mem);
    wbuf_puts(&b, "12345678");
    CHECK(!b.overflow);
    CHECK_EQ_SIZE(b.len, 8);
    wbuf_put_char(&b, 'x');
    CHECK(b.overflow);
    CHECK_EQ_SIZE(b.len, 8);
    /* Once overflowed, even what would fit is dropped. */
    b = wbuf_over(mem, sizeof mem);
    wbuf_puts(&b, "123456789");
    CHECK(b.overflow);
    CHECK_EQ_SIZE(b.len, 0);
    wbuf_puts(&b, "1");
    CHECK_EQ_SIZE(b.len, 0);
    /* A zero-capacity buffer takes empty writes only. */
    b = wbuf_over(NULL, 0);
    wbuf_put(&b, "", 0);
    CHECK(!b.overflow);
    wbuf_put_slice(&b, SLICE_LIT("a"));
    CHECK(b.overflow);
}

/* Two digits at a time: every length from 1 to 20 digits, and both sides of
 * each power of ten, against the obvious digit-by-digit writer. */
TEST(wbuf_numbers_every_length)
{
    uint64_t p = 1;
    for (int digits = 1; digits <= 20; digits++) {
        uint64_t values[] = {p - 1, p, p + 1, p + p / 2, digits == 20 ? UINT64_MAX : p * 10 - 1};
        for (size_t k = 0; k < sizeof values / sizeof values[0]; k++) {
            char mem[32], want[32];
            wbuf b = wbuf_over(mem, sizeof mem);
            wbuf_put_u64(&b, values[k]);
            size_t n = 0;
            uint64_t v = values[k];
            char rev[32];
            do {
                rev[n++] = (char)('0' + v % 10);
                v /= 10;
            } while (v);
            for (size_t i = 0; i < n; i++)
                want[i] = rev[n - 1 - i];
            want[n] = '\0';
            CHECK_STR(text_of(&b), want);
        }
        if (digits < 20)
            p *= 10;
    }
    char mem[2];
    wbuf b = wbuf_over(mem, sizeof mem);
    wbuf_put_u64(&b, 100);
    CHECK(b.overflow);
    CHECK_EQ_SIZE(b.len, 0);
}

/* The plain byte-by-byte escaper the fast one must agree with. */
static size_t reference_escape(const unsigned char *in, size_t len, char *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = in[i];
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c == '\n' || c == '\r' || c == '\t') {
            out[n++] = '\\';
            out[n++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, 7, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return n;
}

/* Every byte value at every position of strings up to 40 bytes long (so in
 * every lane of the 8-byte scan and in the tail after it), among bytes that
 * sit just beside the ones that need escaping (0x1f/0x20, 0x21/0x23, 0x5b/0x5d,
 * 0x7f, 0x80, 0xff). */
TEST(wbuf_json_escaping_every_byte_everywhere)
{
    static const unsigned char fillers[] = {0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff, 'a'};
    unsigned char in[40];
    static char got[512], want[512];
    size_t wrong = 0;
    for (size_t len = 1; len <= sizeof in && wrong < 5; len++)
        for (size_t at = 0; at < len; at++)
            for (unsigned c = 0; c < 256; c++) {
                for (size_t i = 0; i < len; i++)
                    in[i] = fillers[(i + len) % sizeof fillers];
                in[at] = (unsigned char)c;
                wbuf b = wbuf_over(got, sizeof got - 1);
                wbuf_put_json_escaped(&b, (slice){(const char *)in, len});
                got[b.len] = '\0';
                size_t n = reference_escape(in, len, want);
                if (b.overflow || b.len != n || memcmp(got, want, n) != 0) {
                    unit_fail(__FILE__, __LINE__, "len %zu, byte 0x%02x at %zu: \"%s\", want \"%s\"", len, c,
                              at, got, want);
                    wrong++;
                }
            }
    /* Several escapes in one word, and escapes at both ends. */
    static const char mixed[] = "\"\"\\\\\n\x01\x02\x03" "abcdefgh\"";
    wbuf b = wbuf_over(got, sizeof got - 1);
    wbuf_put_json_escaped(&b, (slice){mixed, sizeof mixed - 1});
    got[b.len] = '\0';
    reference_escape((const unsigned char *)mixed, sizeof mixed - 1, want);
    CHECK_STR(got, want);
}
