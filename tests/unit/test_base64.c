/* base64url: RFC 4648 vectors without padding, the URL-safe alphabet, and
 * every spelling the strict decoder must refuse. */
#include <stdbool.h>
#include <string.h>

#include "core/base64.h"
#include "unit.h"

static bool decodes_to(const char *in, const char *want, size_t want_len)
{
    unsigned char out[64];
    size_t len = 99;
    return base64url_decode(slice_of(in), out, sizeof out, &len) && len == want_len && memcmp(out, want, len) == 0;
}

static bool refused(slice in)
{
    unsigned char out[64];
    size_t len = 0;
    return !base64url_decode(in, out, sizeof out, &len);
}

TEST(base64url_rfc4648_vectors)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const coded[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        char out[16];
        size_t n = base64url_encode(plain[i], strlen(plain[i]), out, sizeof out);
        CHECK_EQ_SIZE(n, strlen(coded[i]));
        CHECK(memcmp(out, coded[i], n) == 0);
        CHECK_EQ_SIZE(base64url_encoded_len(strlen(plain[i])), strlen(coded[i]));
        CHECK_EQ_SIZE(base64url_decoded_len(strlen(coded[i])), strlen(plain[i]));
        CHECK(decodes_to(coded[i], plain[i], strlen(plain[i])));
    }
}

TEST(base64url_uses_the_url_alphabet)
{
    const char bytes[] = {(char)0xfb, (char)0xff, (char)0xbf};
    char out[8];
    size_t n = base64url_encode(bytes, 3, out, sizeof out);
    CHECK_EQ_SIZE(n, 4);
    CHECK(memcmp(out, "-_-_", 4) == 0);
    CHECK(decodes_to("-_-_", bytes, 3));
    CHECK(decodes_to("-_8", bytes, 2));
    CHECK(refused(SLICE_LIT("+/+/")));
    CHECK(refused(SLICE_LIT("+_-_")));
    CHECK(refused(SLICE_LIT("-/-_")));
}

TEST(base64url_refuses_padding_space_and_strays)
{
    CHECK(refused(SLICE_LIT("Zg==")));
    CHECK(refused(SLICE_LIT("Zm8=")));
    CHECK(refused(SLICE_LIT("Zg=")));
    CHECK(refused(SLICE_LIT("Zm9 v")));
    CHECK(refused(SLICE_LIT("Zm9v\n")));
    CHECK(refused(SLICE_LIT("\tZm9v")));
    CHECK(refused(SLICE_LIT("Zm9v.")));
    CHECK(refused(SLICE_LIT("Zm\0v")));
    CHECK(refused(SLICE_LIT("Zm9\x80")));
    /* a length of 1 mod 4 carries no whole byte */
    CHECK(refused(SLICE_LIT("Z")));
    CHECK(refused(SLICE_LIT("Zm9vY")));
}

TEST(base64url_refuses_noncanonical_trailing_bits)
{
    /* "Zg" is "f"; "Zh".."Zv" differ only in the 4 unused bits */
    CHECK(decodes_to("Zg", "f", 1));
    CHECK(refused(SLICE_LIT("Zh")));
    CHECK(refused(SLICE_LIT("Zv")));
    /* "Zm8" is "fo"; "Zm9" differs only in the 2 unused bits */
    CHECK(decodes_to("Zm8", "fo", 2));
    CHECK(refused(SLICE_LIT("Zm9")));
    CHECK(refused(SLICE_LIT("Zm-")));
}

TEST(base64url_respects_capacities)
{
    unsigned char out[4];
    size_t len = 0;
    CHECK(!base64url_decode(SLICE_LIT("Zm9vYg"), out, 3, &len));
    CHECK(base64url_decode(SLICE_LIT("Zm9vYg"), out, 4, &len));
    CHECK_EQ_SIZE(len, 4);
    char enc[8];
    memset(enc, '#', sizeof enc);
    CHECK_EQ_SIZE(base64url_encode("foob", 4, enc, 5), 0);
    CHECK(enc[0] == '#');
    CHECK_EQ_SIZE(base64url_encode("foob", 4, enc, 6), 6);
    CHECK_EQ_SIZE(base64url_encode(NULL, 0, enc, 0), 0);
    CHECK(base64url_decode(SLICE_LIT(""), NULL, 0, &len));
    CHECK_EQ_SIZE(len, 0);
}

TEST(base64url_round_trips_every_length)
{
    unsigned char in[70], back[70];
    char enc[100];
    unsigned x = 12345;
    for (size_t len = 0; len <= sizeof in; len++) {
        for (size_t i = 0; i < len; i++) {
            x = x * 1103515245u + 12345u;
            in[i] = (unsigned char)(x >> 16);
        }
        size_t n = base64url_encode(in, len, enc, sizeof enc);
        CHECK_EQ_SIZE(n, base64url_encoded_len(len));
        size_t got = 0;
        CHECK(base64url_decode((slice){enc, n}, back, sizeof back, &got));
        CHECK_EQ_SIZE(got, len);
        CHECK(len == 0 || memcmp(in, back, len) == 0);
    }
}
