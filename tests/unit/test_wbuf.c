/* The bounded write buffer and its number and JSON-string writers. */
#include <stdint.h>
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
