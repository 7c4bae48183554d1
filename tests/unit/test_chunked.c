/* The chunked transfer coding: decoding in one call, across every split,
 * in place, and each kind of framing error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http.h"
#include "unit.h"

typedef struct decoded {
    http_chunked_result result;
    size_t consumed; /* raw bytes used in total */
    size_t produced;
    char out[8192];
} decoded;

/* One call over an exact-size heap copy into a separate buffer. */
static void decode_once(const char *in, size_t len, decoded *d)
{
    http_chunked st = {0};
    char *src = malloc(len ? len : 1);
    memcpy(src, in, len);
    d->result = http_chunked_decode(&st, d->out, src, len, &d->consumed, &d->produced);
    free(src);
}

/* Feeds the input in pieces of the given sizes (the last piece takes what
 * is left), carrying the state; stops at DONE or ERROR. */
static void decode_pieces(const char *in, size_t len, const size_t *sizes, size_t nsizes, decoded *d)
{
    http_chunked st = {0};
    size_t off = 0, out = 0, piece = 0;
    d->result = CHUNKED_MORE;
    while (off < len) {
        size_t n = piece < nsizes ? sizes[piece] : len - off;
        piece++;
        if (n > len - off)
            n = len - off;
        char *src = malloc(n ? n : 1);
        memcpy(src, in + off, n);
        size_t used = 0, made = 0;
        d->result = http_chunked_decode(&st, d->out + out, src, n, &used, &made);
        free(src);
        CHECK(made <= used);
        if (d->result == CHUNKED_MORE)
            CHECK_EQ_SIZE(used, n); /* everything offered is taken until the end */
        off += used;
        out += made;
        if (d->result != CHUNKED_MORE)
            break;
    }
    d->consumed = off;
    d->produced = out;
}

/* `in` is exactly one chunked body. */
static void check_decodes(const char *in, const char *payload)
{
    size_t body_len = strlen(in);
    decoded d;
    decode_once(in, strlen(in), &d);
    CHECK(d.result == CHUNKED_DONE);
    CHECK_EQ_SIZE(d.consumed, body_len);
    CHECK_EQ_SIZE(d.produced, strlen(payload));
    CHECK(memcmp(d.out, payload, strlen(payload)) == 0);
}

TEST(chunked_valid_bodies)
{
    check_decodes("5\r\nhello\r\n0\r\n\r\n", "hello");
    check_decodes("0\r\n\r\n", "");
    check_decodes("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world");
    check_decodes("A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", "0123456789abcdefghij");
    check_decodes("00005\r\nhello\r\n000\r\n\r\n", "hello");
    /* extensions, with and without values, quoted, and whitespace before them */
    check_decodes("5;name=value\r\nhello\r\n0;last\r\n\r\n", "hello");
    check_decodes("5 ; a=\"q s\" ;b\r\nhello\r\n0\r\n\r\n", "hello");
    /* BWS around ';' and '=', every form of value */
    check_decodes("5\t;\ta\t=\tb ;c = \"d\"\r\nhello\r\n0\r\n\r\n", "hello");
    check_decodes("5;a;b;c=d;e=\"\";f=\"x\\\"y\\\\\"\r\nhello\r\n0\r\n\r\n", "hello");
    check_decodes("5;a=\"caf\xc3\xa9 ;=\t!\"\r\nhello\r\n0\r\n\r\n", "hello"); /* obs-text, delimiters */
    check_decodes("5;!#$%&'*+-.^_`|~=!#$%&'*+-.^_`|~\r\nhello\r\n0\r\n\r\n", "hello");
    /* trailers, one with an empty value */
    check_decodes("5\r\nhello\r\n0\r\nX-Trailer: 1\r\nY: two\r\n\r\n", "hello");
    check_decodes("5\r\nhello\r\n0\r\nX-Empty:\r\nZ:\tv \t\r\n\r\n", "hello");
    /* data holding CR, LF and NUL bytes passes through untouched */
    static const char bin[] = "4\r\n\r\n\0\n\r\n0\r\n\r\n";
    decoded d;
    decode_once(bin, sizeof bin - 1, &d);
    CHECK(d.result == CHUNKED_DONE);
    CHECK_EQ_SIZE(d.produced, 4);
    CHECK(memcmp(d.out, "\r\n\0\n", 4) == 0);
}

TEST(chunked_stops_at_end_of_body)
{
    /* Bytes after the final CRLF belong to the next message. */
    const char *in = "3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n";
    decoded d;
    decode_once(in, strlen(in), &d);
    CHECK(d.result == CHUNKED_DONE);
    CHECK_EQ_SIZE(d.consumed, 13);
    CHECK_EQ_SIZE(d.produced, 3);
    /* A decoder that is done takes nothing more. */
    http_chunked st = {0};
    char out[32];
    size_t used, made;
    CHECK(http_chunked_decode(&st, out, in, 13, &used, &made) == CHUNKED_DONE);
    CHECK(st.state == CHUNK_DONE);
    CHECK(http_chunked_decode(&st, out, in + 13, 5, &used, &made) == CHUNKED_DONE);
    CHECK_EQ_SIZE(used, 0);
    CHECK_EQ_SIZE(made, 0);
    /* An empty call changes nothing. */
    http_chunked fresh = {0};
    CHECK(http_chunked_decode(&fresh, out, in, 0, &used, &made) == CHUNKED_MORE);
    CHECK_EQ_SIZE(used, 0);
}

static const char *const split_inputs[] = {
    "5\r\nhello\r\n0\r\n\r\n",
    "1a;ext=1;q=\"x y\"\r\nabcdefghijklmnopqrstuvwxyz\r\n3\r\n\r\n\r\r\n0;e\r\nTrailer-A: x\r\nB: y\r\n\r\n",
    "5 ;a = \"q\\\";\" ; b\r\nhello\r\n2;c=d\r\nhi\r\n0 ; z\r\nT: 1\r\nU:\r\n\r\n",
    "0\r\n\r\n",
};

TEST(chunked_every_split)
{
    for (size_t t = 0; t < sizeof split_inputs / sizeof split_inputs[0]; t++) {
        const char *in = split_inputs[t];
        size_t len = strlen(in);
        decoded whole, part;
        decode_once(in, len, &whole);
        CHECK(whole.result == CHUNKED_DONE);
        CHECK_EQ_SIZE(whole.consumed, len);
        /* two pieces, at every split point */
        for (size_t k = 0; k <= len; k++) {
            size_t sizes[1] = {k};
            decode_pieces(in, len, sizes, 1, &part);
            if (part.result != CHUNKED_DONE || part.produced != whole.produced || part.consumed != len ||
                memcmp(part.out, whole.out, whole.produced) != 0)
                unit_fail(__FILE__, __LINE__, "input %zu split at %zu: result %d, %zu bytes", t, k,
                          (int)part.result, part.produced);
        }
        /* three pieces, at every pair of split points */
        for (size_t i = 0; i <= len; i++)
            for (size_t j = 0; i + j <= len; j++) {
                size_t sizes[2] = {i, j};
                decode_pieces(in, len, sizes, 2, &part);
                if (part.result != CHUNKED_DONE || part.produced != whole.produced ||
                    memcmp(part.out, whole.out, whole.produced) != 0)
                    unit_fail(__FILE__, __LINE__, "input %zu split at %zu+%zu", t, i, j);
            }
        /* one byte at a time */
        size_t ones[256];
        for (size_t i = 0; i < 256; i++)
            ones[i] = 1;
        decode_pieces(in, len, ones, len < 256 ? len : 256, &part);
        CHECK(part.result == CHUNKED_DONE);
        CHECK_EQ_SIZE(part.produced, whole.produced);
        CHECK(memcmp(part.out, whole.out, whole.produced) == 0);
    }
}

TEST(chunked_in_place)
{
    /* dst == src: the payload ends up at the front of the same buffer. */
    const char *in = split_inputs[1];
    size_t len = strlen(in);
    decoded whole;
    decode_once(in, len, &whole);
    char *buf = malloc(len);
    memcpy(buf, in, len);
    http_chunked st = {0};
    size_t used, made;
    CHECK(http_chunked_decode(&st, buf, buf, len, &used, &made) == CHUNKED_DONE);
    CHECK_EQ_SIZE(made, whole.produced);
    CHECK(memcmp(buf, whole.out, made) == 0);
    free(buf);
}

TEST(chunked_in_place_as_bytes_arrive)
{
    /* The relay's way: raw bytes land after what is already decoded, and each
     * call decodes from raw_start down to dec_end (dst < src once framing has
     * been removed), for every arrival pattern of one byte or a few. */
    const char *in = "3\r\nabc\r\n4;x=y\r\ndefg\r\n1\r\nh\r\n0\r\nT: v\r\n\r\n";
    size_t len = strlen(in);
    for (size_t step = 1; step <= len; step++) {
        char *buf = malloc(len);
        http_chunked st = {0};
        size_t have = 0, raw_start = 0, dec_end = 0;
        http_chunked_result r = CHUNKED_MORE;
        while (have < len && r == CHUNKED_MORE) {
            size_t n = step < len - have ? step : len - have;
            memcpy(buf + have, in + have, n);
            have += n;
            size_t used, made;
            r = http_chunked_decode(&st, buf + dec_end, buf + raw_start, have - raw_start, &used, &made);
            CHECK(dec_end + made <= raw_start + used);
            raw_start += used;
            dec_end += made;
        }
        if (r != CHUNKED_DONE || dec_end != 8 || memcmp(buf, "abcdefgh", 8) != 0)
            unit_fail(__FILE__, __LINE__, "step %zu: result %d, %zu bytes", step, (int)r, dec_end);
        CHECK_EQ_SIZE(raw_start, len);
        free(buf);
    }
}

static http_chunked_result decode_result(const char *in, size_t len)
{
    decoded d;
    decode_once(in, len, &d);
    return d.result;
}

/* The input is rejected, at the same byte, whether it comes in one call,
 * one byte at a time, or in two pieces split anywhere. */
static void check_error_n(const char *in, size_t len)
{
    decoded whole, part;
    decode_once(in, len, &whole);
    if (whole.result != CHUNKED_ERROR) {
        unit_fail(__FILE__, __LINE__, "accepted \"%.*s\"", (int)len, in);
        return;
    }
    size_t ones[256];
    for (size_t i = 0; i < 256; i++)
        ones[i] = 1;
    decode_pieces(in, len, ones, len < 256 ? len : 256, &part);
    if (part.result != CHUNKED_ERROR || part.consumed != whole.consumed)
        unit_fail(__FILE__, __LINE__, "byte by byte: \"%.*s\" gave %d at %zu, want an error at %zu", (int)len, in,
                  (int)part.result, part.consumed, whole.consumed);
    for (size_t k = 0; k <= len; k++) {
        size_t sizes[1] = {k};
        decode_pieces(in, len, sizes, 1, &part);
        if (part.result != CHUNKED_ERROR || part.consumed != whole.consumed)
            unit_fail(__FILE__, __LINE__, "split at %zu: \"%.*s\" gave %d at %zu", k, (int)len, in,
                      (int)part.result, part.consumed);
    }
}

static void check_error(const char *in) { check_error_n(in, strlen(in)); }

/* A body that must be rejected on the byte at `at`. */
static void check_error_at(const char *in, size_t at)
{
    check_error(in);
    decoded d;
    decode_once(in, strlen(in), &d);
    if (d.consumed != at)
        unit_fail(__FILE__, __LINE__, "\"%s\" rejected at byte %zu, want %zu", in, d.consumed, at);
}

TEST(chunked_errors)
{
    check_error("g\r\n");
    check_error("5x\r\nhello\r\n0\r\n\r\n");
    check_error("-5\r\nhello\r\n");
    check_error("0x5\r\nhello\r\n");
    check_error(" 5\r\nhello\r\n");
    check_error("\r\n");
    check_error(";ext\r\n");
    check_error("5\r\nhelloX\r\n0\r\n\r\n");     /* missing CRLF after the data */
    check_error("5\r\nhello\rX\n0\r\n\r\n");
    check_error("5\r\nhello0\r\n\r\n");
    check_error("5\rX\nhello\r\n");             /* CR not followed by LF */
    check_error("5;a\rb\r\nhello\r\n");
    check_error("0\r\n\rX");
    check_error("1234567890abcdef\r\n");        /* 16 digits: more than the 15 allowed */
    check_error("0000000000000000\r\n");
    check_error("5;a\x01\r\nhello\r\n0\r\n\r\n"); /* a control byte in an extension */
    check_error("5;a\x7f\r\nhello\r\n0\r\n\r\n");
    check_error_n("5;a\0\r\nhello\r\n0\r\n\r\n", 16);
    /* 15 digits are fine (leading zeros count) */
    const char *digits15 = "000000000000001\r\nx\r\n0\r\n\r\n";
    CHECK(decode_result(digits15, strlen(digits15)) == CHUNKED_DONE);

    /* An oversized extension, and oversized trailers. */
    size_t big = 5000;
    char *in = malloc(big + 64);
    memcpy(in, "5;", 2);
    memset(in + 2, 'e', big);
    memcpy(in + 2 + big, "\r\nhello\r\n0\r\n\r\n", 15);
    CHECK(decode_result(in, big + 16) == CHUNKED_ERROR);
    memcpy(in, "0\r\nX: ", 6);
    memset(in + 6, 't', big);
    memcpy(in + 6 + big, "\r\n\r\n", 4);
    CHECK(decode_result(in, big + 10) == CHUNKED_ERROR);
    /* Short ones are fine. */
    memcpy(in, "5;", 2);
    memset(in + 2, 'e', 1000);
    memcpy(in + 1002, "\r\nhello\r\n0\r\n\r\n", 15);
    CHECK(decode_result(in, 1016) == CHUNKED_DONE);
    free(in);
}

TEST(chunked_bare_lf_rejected)
{
    /* Every line of chunked framing ends in CRLF: a lone LF anywhere is an
     * error, found on that LF. */
    check_error_at("5\nhello\r\n0\r\n\r\n", 1);           /* after the size */
    check_error_at("5;x\nhello\r\n0\r\n\r\n", 3);         /* after an extension */
    check_error_at("5;x=\"y\"\nhello\r\n0\r\n\r\n", 7);
    check_error_at("5\r\nhello\nhello\r\n0\r\n\r\n", 8);  /* after the data */
    check_error_at("5\r\nhello\r\n0\n\r\n", 11);          /* after the last chunk */
    check_error_at("0\r\n\n", 3);                          /* the final line */
    check_error_at("0\r\nT: v\n\r\n", 7);                  /* a trailer line */
    check_error_at("0\r\nT: v\r\n\n", 9);
    check_error_at("5\nhello\n0\n\n", 1);                   /* all LF, as tolerated before */
    check_error("1A\nabcdefghijklmnopqrstuvwxyz\n0\n\n");
}

TEST(chunked_extension_grammar)
{
    /* Whitespace after the size, a name or a value only before ';' (or '=' after a name). */
    check_error_at("5 \r\nhello\r\n0\r\n\r\n", 2);
    check_error_at("5\t\r\nhello\r\n0\r\n\r\n", 2);
    check_error_at("5 x\r\nhello\r\n0\r\n\r\n", 2);
    check_error_at("5 5\r\nhello\r\n0\r\n\r\n", 2);
    check_error_at("5;a \r\nhello\r\n0\r\n\r\n", 4);
    check_error_at("5;a b\r\nhello\r\n0\r\n\r\n", 4);
    check_error_at("5;a=b \r\nhello\r\n0\r\n\r\n", 6);
    check_error_at("5;a=b c\r\nhello\r\n0\r\n\r\n", 6);
    check_error_at("5;a=\"b\" \r\nhello\r\n0\r\n\r\n", 8);
    /* Empty extensions: no name after ';'. */
    check_error_at("1;\r\na\r\n0\r\n\r\n", 2);
    check_error_at("1;;a\r\na\r\n0\r\n\r\n", 2);
    check_error_at("1; \r\na\r\n0\r\n\r\n", 3);
    check_error_at("1;a;\r\na\r\n0\r\n\r\n", 4);
    check_error_at("1;=v\r\na\r\n0\r\n\r\n", 2);
    check_error_at("1 ;\r\na\r\n0\r\n\r\n", 3);
    /* A '=' with no value. */
    check_error_at("1;a=\r\na\r\n0\r\n\r\n", 4);
    check_error_at("1;a= \r\na\r\n0\r\n\r\n", 5);
    check_error_at("1;a=;b\r\na\r\n0\r\n\r\n", 4);
    /* Names and token values are tokens. */
    check_error_at("1;a(b)\r\na\r\n0\r\n\r\n", 3);
    check_error_at("1;a=b,c\r\na\r\n0\r\n\r\n", 5);
    check_error_at("1;a=b/c\r\na\r\n0\r\n\r\n", 5);
    check_error_at("1;\"a\"\r\na\r\n0\r\n\r\n", 2);
    check_error_at("1;a==b\r\na\r\n0\r\n\r\n", 4);
    /* Quoted strings: balanced, nothing glued after, no controls, escapes complete. */
    check_error_at("1;a=\"b\r\na\r\n0\r\n\r\n", 6);
    check_error_at("1;a=\"b\\\"\r\na\r\n0\r\n\r\n", 8);
    check_error_at("1;a=\"b\"c\r\na\r\n0\r\n\r\n", 7);
    check_error_at("1;a=\"b\"\"c\"\r\na\r\n0\r\n\r\n", 7);
    check_error_at("1;a=b\"c\"\r\na\r\n0\r\n\r\n", 5);
    check_error_at("1;a=\"\x01\"\r\na\r\n0\r\n\r\n", 5);
    check_error_at("1;a=\"\x7f\"\r\na\r\n0\r\n\r\n", 5);
    check_error_at("1;a=\"\\\x01\"\r\na\r\n0\r\n\r\n", 6);
    check_error_at("1;a=\"\\\r\na\r\n0\r\n\r\n", 6);
    /* The same rules on the last chunk's line. */
    check_error_at("0;\r\n\r\n", 2);
    check_error_at("0 \r\n\r\n", 2);
    check_error_at("0;a=\"\r\n\r\n", 5);
    /* What is fine, for contrast. */
    static const char *const ok[] = {
        "1 ;a\r\nx\r\n0\r\n\r\n",         "1;a =b\r\nx\r\n0\r\n\r\n",     "1;a= b\r\nx\r\n0\r\n\r\n",
        "1;a=\"\"\r\nx\r\n0\r\n\r\n",        "1;a=\"\\\"\"\r\nx\r\n0\r\n\r\n",  "1 \t ; \t a\r\nx\r\n0\r\n\r\n",
        "1;a=\"b\";c\r\nx\r\n0\r\n\r\n",     "1;a=\"b\" ;c\r\nx\r\n0\r\n\r\n",  "0;a=b\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        decoded d;
        decode_once(ok[i], strlen(ok[i]), &d);
        if (d.result != CHUNKED_DONE || d.consumed != strlen(ok[i]))
            unit_fail(__FILE__, __LINE__, "rejected \"%s\" at %zu", ok[i], d.consumed);
    }
}

TEST(chunked_trailer_grammar)
{
    check_error_at("0\r\nX\r\n\r\n", 4);        /* no colon */
    check_error_at("0\r\n: v\r\n\r\n", 3);      /* no name */
    check_error_at("0\r\n v\r\n\r\n", 3);       /* folded */
    check_error_at("0\r\nX : v\r\n\r\n", 4);
    check_error_at("0\r\nX(: v\r\n\r\n", 4);
    check_error_at("0\r\nX: a\x01\r\n\r\n", 7);
    check_error_at("0\r\nX: a\x7f\r\n\r\n", 7);
    check_error_at("0\r\nX: a\rb\r\n\r\n", 8);
    check_error_at("0\r\n\rX", 4);
    check_error_at("0\r\nX: v\r\nY\r\n\r\n", 10);
}

TEST(chunked_error_is_final)
{
    /* A decoder that failed takes nothing more, even valid bytes. */
    http_chunked st = {0};
    char out[32];
    size_t used, made;
    CHECK(http_chunked_decode(&st, out, "5 \r\n", 4, &used, &made) == CHUNKED_ERROR);
    CHECK_EQ_SIZE(used, 1 + 1);
    CHECK(st.state == CHUNK_INVALID);
    CHECK(http_chunked_decode(&st, out, "0\r\n\r\n", 5, &used, &made) == CHUNKED_ERROR);
    CHECK_EQ_SIZE(used, 0);
    CHECK_EQ_SIZE(made, 0);
    /* Data decoded before the error is still reported. */
    http_chunked st2 = {0};
    const char *in = "3\r\nabc\r\n1\nx";
    CHECK(http_chunked_decode(&st2, out, in, strlen(in), &used, &made) == CHUNKED_ERROR);
    CHECK_EQ_SIZE(made, 3);
    CHECK(memcmp(out, "abc", 3) == 0);
    CHECK_EQ_SIZE(used, 9);
}

TEST(chunked_header_writer)
{
    char out[18];
    size_t n = http_chunk_header(out, 0);
    CHECK_EQ_SIZE(n, 3);
    CHECK(memcmp(out, "0\r\n", 3) == 0);
    n = http_chunk_header(out, 1);
    CHECK(n == 3 && memcmp(out, "1\r\n", 3) == 0);
    n = http_chunk_header(out, 255);
    CHECK(n == 4 && memcmp(out, "ff\r\n", 4) == 0);
    n = http_chunk_header(out, 0x1000);
    CHECK(n == 6 && memcmp(out, "1000\r\n", 6) == 0);
    n = http_chunk_header(out, (size_t)-1);
    CHECK_EQ_SIZE(n, 2 * sizeof(size_t) + 2);
    CHECK(memcmp(out, "ffffffffffffffff", 2 * sizeof(size_t)) == 0);

    /* What the writer frames, the decoder reads back. */
    char body[1024];
    size_t len = 0;
    for (size_t size = 1; size < 300; size += 97) {
        len += http_chunk_header(body + len, size);
        memset(body + len, 'a' + (int)(size % 26), size);
        len += size;
        memcpy(body + len, "\r\n", 2);
        len += 2;
    }
    len += http_chunk_header(body + len, 0);
    memcpy(body + len, "\r\n", 2);
    len += 2;
    decoded d;
    decode_once(body, len, &d);
    CHECK(d.result == CHUNKED_DONE);
    CHECK_EQ_SIZE(d.consumed, len);
    CHECK_EQ_SIZE(d.produced, 1 + 98 + 195 + 292);
}
