/* HTTP/1.1 head parsers: valid requests and responses, every split point,
 * and each class of malformed input with the status it must map to. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http.h"
#include "unit.h"

enum { MAX_HEAD = 16 * 1024, MAX_TARGET = 8 * 1024 };

/* Parses text from an exact-size heap copy, so a read past the end shows
 * under ASan. Returns the result; *req is filled as the parser left it. */
static http_parse_result parse_req_n(const char *text, size_t len, size_t max_head, size_t max_target,
                                     http_request *req)
{
    char *copy = malloc(len ? len : 1);
    memcpy(copy, text, len);
    size_t scanned = 0;
    http_parse_result r = http_parse_request(copy, len, max_head, max_target, &scanned, req);
    free(copy);
    return r;
}

static http_parse_result parse_req(const char *text)
{
    http_request req;
    return parse_req_n(text, strlen(text), MAX_HEAD, MAX_TARGET, &req);
}

/* Two parses of the same head agree, compared by content and offset. */
static void check_same_request(const char *buf_a, const http_request *a, const char *buf_b,
                               const http_request *b)
{
    CHECK(a->method == b->method);
    CHECK(slice_eq(a->method_name, b->method_name));
    CHECK(slice_eq(a->target, b->target));
    CHECK(slice_eq(a->path, b->path));
    CHECK(slice_eq(a->query, b->query));
    CHECK_EQ_SIZE(a->target.ptr - buf_a, b->target.ptr - buf_b);
    CHECK(a->minor_version == b->minor_version);
    CHECK_EQ_SIZE(a->header_count, b->header_count);
    for (size_t i = 0; i < a->header_count && i < b->header_count; i++) {
        CHECK(slice_eq(a->headers[i].name, b->headers[i].name));
        CHECK(slice_eq(a->headers[i].value, b->headers[i].value));
    }
    CHECK_EQ_SIZE(a->head_len, b->head_len);
    CHECK(a->body_kind == b->body_kind);
    CHECK_EQ_SIZE(a->content_length, b->content_length);
    CHECK(a->keep_alive == b->keep_alive);
    CHECK(a->expect_continue == b->expect_continue);
}

/* Every strict prefix of a complete head is INCOMPLETE, both parsed afresh
 * and re-parsed as bytes arrive with `scanned` carried over; the full input
 * is DONE with results identical to a one-shot parse. */
static void check_every_split(const char *text)
{
    size_t len = strlen(text);
    http_request whole, part;
    CHECK(http_parse_request(text, len, MAX_HEAD, MAX_TARGET, &(size_t){0}, &whole) == HTTP_PARSE_DONE);
    CHECK_EQ_SIZE(whole.head_len, len);

    char *grow = malloc(len);
    size_t scanned = 0;
    for (size_t k = 0; k < len; k++) {
        http_parse_result fresh = parse_req_n(text, k, MAX_HEAD, MAX_TARGET, &part);
        if (fresh != HTTP_PARSE_INCOMPLETE)
            unit_fail(__FILE__, __LINE__, "prefix %zu of %zu: result %d, want INCOMPLETE", k, len, (int)fresh);
        grow[k] = text[k];
        http_parse_result inc = http_parse_request(grow, k + 1, MAX_HEAD, MAX_TARGET, &scanned, &part);
        if (k + 1 < len && inc != HTTP_PARSE_INCOMPLETE)
            unit_fail(__FILE__, __LINE__, "grown prefix %zu of %zu: result %d", k + 1, len, (int)inc);
        if (k + 1 == len) {
            CHECK(inc == HTTP_PARSE_DONE);
            check_same_request(text, &whole, grow, &part);
        }
    }
    free(grow);
}

static const char *header_value(const http_request *req, const char *name)
{
    static char out[256];
    const http_header *h = http_find_header(req->headers, req->header_count, slice_of(name));
    if (!h)
        return NULL;
    snprintf(out, sizeof out, "%.*s", (int)h->value.len, h->value.ptr);
    return out;
}

static const char *str_of(slice s)
{
    static char out[512];
    snprintf(out, sizeof out, "%.*s", (int)s.len, s.ptr ? s.ptr : "");
    return out;
}

TEST(http_request_simple_get)
{
    const char *text = "GET /v1/models?limit=2&x=y HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
    http_request req;
    CHECK(http_parse_request(text, strlen(text), MAX_HEAD, MAX_TARGET, &(size_t){0}, &req) == HTTP_PARSE_DONE);
    CHECK(req.method == HTTP_GET);
    CHECK_STR(str_of(req.method_name), "GET");
    CHECK_STR(str_of(req.target), "/v1/models?limit=2&x=y");
    CHECK_STR(str_of(req.path), "/v1/models");
    CHECK_STR(str_of(req.query), "limit=2&x=y");
    CHECK(req.minor_version == 1);
    CHECK_EQ_SIZE(req.header_count, 2);
    CHECK_STR(header_value(&req, "HOST"), "example.com");
    CHECK_STR(header_value(&req, "accept"), "*/*");
    CHECK_EQ_SIZE(req.head_len, strlen(text));
    CHECK(req.body_kind == HTTP_BODY_NONE);
    CHECK(req.keep_alive);
    CHECK(!req.expect_continue);
    CHECK(req.error == NULL);
}

TEST(http_request_post_content_length)
{
    const char *text = "POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
                       "Content-Length: 17\r\n\r\n{\"model\":\"gpt\"}xx";
    http_request req;
    CHECK(http_parse_request(text, strlen(text), MAX_HEAD, MAX_TARGET, &(size_t){0}, &req) == HTTP_PARSE_DONE);
    CHECK(req.method == HTTP_POST);
    CHECK_STR(str_of(req.path), "/v1/chat/completions");
    CHECK_EQ_SIZE(req.query.len, 0);
    CHECK(req.body_kind == HTTP_BODY_LENGTH);
    CHECK_EQ_SIZE(req.content_length, 17);
    CHECK_EQ_SIZE(req.head_len, strlen(text) - 17);
}

TEST(http_request_methods_and_versions)
{
    static const struct {
        const char *name;
        http_method m;
    } methods[] = {{"GET", HTTP_GET},         {"HEAD", HTTP_HEAD},       {"POST", HTTP_POST},
                   {"PUT", HTTP_PUT},         {"DELETE", HTTP_DELETE},   {"PATCH", HTTP_PATCH},
                   {"OPTIONS", HTTP_OPTIONS}, {"BREW", HTTP_OTHER},      {"get", HTTP_OTHER}};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        char text[128];
        snprintf(text, sizeof text, "%s / HTTP/1.1\r\nHost: h\r\n\r\n", methods[i].name);
        http_request req;
        CHECK(http_parse_request(text, strlen(text), MAX_HEAD, MAX_TARGET, &(size_t){0}, &req) ==
              HTTP_PARSE_DONE);
        CHECK(req.method == methods[i].m);
    }
    /* HTTP/1.0: no Host needed, close unless keep-alive is asked for. */
    http_request req;
    const char *v10 = "GET / HTTP/1.0\r\n\r\n";
    CHECK(http_parse_request(v10, strlen(v10), MAX_HEAD, MAX_TARGET, &(size_t){0}, &req) == HTTP_PARSE_DONE);
    CHECK(req.minor_version == 0);
    CHECK(!req.keep_alive);
    const char *v10ka = "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n";
    CHECK(http_parse_request(v10ka, strlen(v10ka), MAX_HEAD, MAX_TARGET, &(size_t){0}, &req) ==
          HTTP_PARSE_DONE);
    CHECK(req.keep_alive);
    const char *v11c = "GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\n";
    CHECK(http_parse_request(v11c, strlen(v11c), MAX_HEAD, MAX_TARGET, &(size_t){0}, &req) ==
          HTTP_PARSE_DONE);
    CHECK(!req.keep_alive);
}

TEST(http_request_header_details)
{
    /* OWS around values trimmed, empty value kept, obs-text allowed, LF-only
     * line ends accepted, leading empty lines skipped. */
    const char *text = "\r\n\nGET / HTTP/1.1\nHost:h\nX-Empty:\nX-Pad: \t a b \t\nX-Obs: caf\xc3\xa9\n"
                       "Expect: 100-continue\nTransfer-Encoding: Chunked\n\n";
    http_request req;
    CHECK(http_parse_request(text, strlen(text), MAX_HEAD, MAX_TARGET, &(size_t){0}, &req) == HTTP_PARSE_DONE);
    CHECK_STR(header_value(&req, "host"), "h");
    CHECK_STR(header_value(&req, "x-empty"), "");
    CHECK_STR(header_value(&req, "x-pad"), "a b");
    CHECK_STR(header_value(&req, "x-obs"), "caf\xc3\xa9");
    CHECK(req.expect_continue);
    CHECK(req.body_kind == HTTP_BODY_CHUNKED);
    CHECK_EQ_SIZE(req.head_len, strlen(text));
    CHECK(http_find_header(req.headers, req.header_count, SLICE_LIT("absent")) == NULL);
}

TEST(http_request_every_split)
{
    check_every_split("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    check_every_split("POST /v1/chat/completions?stream=1 HTTP/1.1\r\nHost: localhost:8080\r\n"
                      "Authorization: Bearer sk-x\r\nContent-Type: application/json\r\nContent-Length: 42\r\n"
                      "Connection: keep-alive\r\nX-Request-Id: abc\r\n\r\n");
    check_every_split("GET /x HTTP/1.1\nHost: a\nX: y\n\n");
    check_every_split("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    check_every_split("GET / HTTP/1.0\r\n\r\n");
}

TEST(http_request_pipelined_pair)
{
    const char *first = "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n";
    const char *body = "hello";
    const char *second = "GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    char buf[256];
    snprintf(buf, sizeof buf, "%s%s%s", first, body, second);
    size_t len = strlen(buf), flen = strlen(first);

    http_request req;
    /* Any prefix holding the whole first head gives the same first request. */
    for (size_t k = flen; k <= len; k++) {
        CHECK(parse_req_n(buf, k, MAX_HEAD, MAX_TARGET, &req) == HTTP_PARSE_DONE);
        CHECK_EQ_SIZE(req.head_len, flen);
    }
    CHECK(http_parse_request(buf, len, MAX_HEAD, MAX_TARGET, &(size_t){0}, &req) == HTTP_PARSE_DONE);
    CHECK_STR(str_of(req.path), "/a");
    CHECK_EQ_SIZE(req.content_length, 5);
    size_t next = req.head_len + (size_t)req.content_length;
    CHECK(http_parse_request(buf + next, len - next, MAX_HEAD, MAX_TARGET, &(size_t){0}, &req) ==
          HTTP_PARSE_DONE);
    CHECK_STR(str_of(req.path), "/b");
    CHECK_EQ_SIZE(req.head_len, strlen(second));

    /* Two bodiless requests back to back. */
    const char *pair = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n";
    CHECK(http_parse_request(pair, strlen(pair), MAX_HEAD, MAX_TARGET, &(size_t){0}, &req) == HTTP_PARSE_DONE);
    CHECK_STR(str_of(req.path), "/1");
    size_t h1 = req.head_len;
    CHECK_EQ_SIZE(h1, strlen(pair) / 2);
    CHECK(http_parse_request(pair + h1, strlen(pair) - h1, MAX_HEAD, MAX_TARGET, &(size_t){0}, &req) ==
          HTTP_PARSE_DONE);
    CHECK_STR(str_of(req.path), "/2");
}

TEST(http_request_framing_errors)
{
    CHECK(parse_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n") ==
          HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n") ==
          HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n") ==
          HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n") ==
          HTTP_PARSE_BAD_REQUEST);
    static const char *const bad_lengths[] = {"",   "5a", "a5", "5, 5", "5,5", "+5", "-1", "0x10", "5 5",
                                              "1e3", "1234567890123456"};
    for (size_t i = 0; i < sizeof bad_lengths / sizeof bad_lengths[0]; i++) {
        char text[256];
        snprintf(text, sizeof text, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %s\r\n\r\n", bad_lengths[i]);
        http_request req;
        http_parse_result r = parse_req_n(text, strlen(text), MAX_HEAD, MAX_TARGET, &req);
        if (r != HTTP_PARSE_BAD_REQUEST)
            unit_fail(__FILE__, __LINE__, "Content-Length \"%s\": result %d", bad_lengths[i], (int)r);
        else
            CHECK(req.error != NULL);
    }
    /* OWS around a good length is fine. */
    http_request req;
    const char *ok = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length:  007 \r\n\r\n";
    CHECK(parse_req_n(ok, strlen(ok), MAX_HEAD, MAX_TARGET, &req) == HTTP_PARSE_DONE);
    CHECK_EQ_SIZE(req.content_length, 7);
    CHECK(parse_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n") ==
          HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
}

TEST(http_request_unknown_transfer_coding)
{
    CHECK(parse_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n") == HTTP_PARSE_NOT_IMPLEMENTED);
    CHECK(parse_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n") ==
          HTTP_PARSE_NOT_IMPLEMENTED);
    CHECK(parse_req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: CHUNKED\r\n\r\n") == HTTP_PARSE_DONE);
}

TEST(http_request_field_syntax_errors)
{
    /* obs-fold */
    CHECK(parse_req("GET / HTTP/1.1\r\nHost: h\r\nX-A: one\r\n two\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("GET / HTTP/1.1\r\nHost: h\r\nX-A: one\r\n\ttwo\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    /* bare CR in a value, in a name, and ending a line */
    CHECK(parse_req("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("GET / HTTP/1.1\r\nHost: h\r\nX\r-A: a\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\rX-B: b\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("GET / HTTP/1.1\r\nHost: h\r\n\rX-A: a\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("GET /\r HTTP/1.1\r\nHost: h\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    /* NUL and other controls in a value */
    static const char nul[] = "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n";
    http_request req;
    CHECK(parse_req_n(nul, sizeof nul - 1, MAX_HEAD, MAX_TARGET, &req) == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01" "b\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x7f\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    /* invalid token characters in a name; space before the colon; no colon */
    static const char *const names[] = {"X(A)", "X A", "X\"A", "X/A", "X@A", "X[A]", "X\xc3\xa9", "X{A}", ""};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char text[128];
        snprintf(text, sizeof text, "GET / HTTP/1.1\r\nHost: h\r\n%s: v\r\n\r\n", names[i]);
        if (parse_req(text) != HTTP_PARSE_BAD_REQUEST)
            unit_fail(__FILE__, __LINE__, "header name \"%s\" accepted", names[i]);
    }
    CHECK(parse_req("GET / HTTP/1.1\r\nHost : h\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("GET / HTTP/1.1\r\nHost\t: h\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("GET / HTTP/1.1\r\nHost: h\r\nX-Ok!#$%&'*+-.^_`|~: v\r\n\r\n") == HTTP_PARSE_DONE);
}

TEST(http_request_host_rules)
{
    CHECK(parse_req("GET / HTTP/1.1\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("GET / HTTP/1.1\r\nHost: a\r\nhOST: b\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("GET / HTTP/1.1\r\nHost:\r\n\r\n") == HTTP_PARSE_DONE); /* empty Host is allowed */
    CHECK(parse_req("GET / HTTP/1.1\r\nHost:  \t \r\n\r\n") == HTTP_PARSE_DONE);
    CHECK(parse_req("GET / HTTP/1.0\r\n\r\n") == HTTP_PARSE_DONE);
}

static http_parse_result parse_host(const char *value, const char *version, http_request *req)
{
    char text[256];
    snprintf(text, sizeof text, "GET / HTTP/%s\r\nHost: %s\r\n\r\n", version, value);
    return parse_req_n(text, strlen(text), MAX_HEAD, MAX_TARGET, req);
}

TEST(http_request_host_syntax)
{
    static const char *const good[] = {
        "example.com", "example.com:8080", "127.0.0.1:80", "[::1]:8080", "a-b.c_d~e%41",
        "EXAMPLE.COM", "x:0", "x:65535", "x:00080", "x:", /* RFC 3986: the port may be empty */
        "localhost", "sub-delims!$&'()*+,;=", "%7e%7E", "256.1.1.1", /* a reg-name then */
        "[::1]", "[::]", "[1:2:3:4:5:6:7:8]", "[1::]", "[1::8]", "[1:2:3:4:5:6:7::]", "[::2:3:4:5:6:7:8]",
        "[fe80::1:2]:443", "[::ffff:192.0.2.1]", "[::192.0.2.1]", "[1:2:3:4:5:6:192.0.2.1]", "[ABCD:ef01::]",
        "[v1.fe80::a+en1]", "[V7.x]:1",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        http_request req;
        http_parse_result r = parse_host(good[i], "1.1", &req);
        if (r != HTTP_PARSE_DONE)
            unit_fail(__FILE__, __LINE__, "Host \"%s\": result %d (%s)", good[i], (int)r,
                      req.error ? req.error : "-");
    }
    static const char *const bad[] = {
        "exa mple.com", "a/b", "user@host", "host:port", "host:123456", "::1", "[::1", "host:80:80",
        "x:65536", "x:99999", "x:8o", "x: 80", "x:-1", ":80", ":", "a%4", "a%zz", "a%", "caf\xc3\xa9",
        "a?b", "a#b", "a\"b", "a<b", "a\\b", "a\tb", "a[b]", "a]", "[::1]x", "[::1]:80:80", "[::1]]", "[]",
        "[1:2:3:4:5:6:7:8:9]", "[1:2:3:4:5:6:7]", "[1::2::3]", "[:::]", "[:1::]", "[1:]", "[12345::]",
        "[::1.2.3]", "[::1.2.3.256]", "[::01.2.3.4]", "[1.2.3.4]", "[1:2:3:4:5:6:7:1.2.3.4]", "[::1%25en0]",
        "[fe80::g]", "[v.x]", "[v1.]", "[v1x]", "[v1.a b]", "[example.com]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        http_request req;
        http_parse_result r = parse_host(bad[i], "1.1", &req);
        if (r != HTTP_PARSE_BAD_REQUEST || !req.error || strcmp(req.error, "invalid Host header") != 0)
            unit_fail(__FILE__, __LINE__, "Host \"%s\": result %d (%s)", bad[i], (int)r,
                      req.error ? req.error : "-");
    }
    /* HTTP/1.0 needs no Host, but one it sends must be valid. */
    http_request req;
    CHECK(parse_host("a b", "1.0", &req) == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_host("a:1", "1.0", &req) == HTTP_PARSE_DONE);
    /* Control bytes never get as far as the Host check. */
    static const char nul[] = "GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n";
    CHECK(parse_req_n(nul, sizeof nul - 1, MAX_HEAD, MAX_TARGET, &req) == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_req("GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n") == HTTP_PARSE_BAD_REQUEST);
}

/* `text` must be rejected with `want` and `why` once its first `at` bytes
 * are in, and not before: each prefix parsed afresh, and grown byte by byte
 * with `scanned` carried over as the server does. */
static void check_rejected_at(const char *text, size_t len, size_t at, http_parse_result want, const char *why)
{
    size_t scanned = 0;
    http_request fresh, grown;
    for (size_t k = 1; k <= len; k++) {
        http_parse_result a = parse_req_n(text, k, MAX_HEAD, MAX_TARGET, &fresh);
        http_parse_result b = http_parse_request(text, k, MAX_HEAD, MAX_TARGET, &scanned, &grown);
        http_parse_result expect = k < at ? HTTP_PARSE_INCOMPLETE : want;
        if (a != expect || b != expect) {
            unit_fail(__FILE__, __LINE__, "\"%.*s\" prefix %zu: results %d/%d, want %d", (int)len, text, k, (int)a,
                      (int)b, (int)expect);
            return;
        }
        bool fresh_why = fresh.error && strcmp(fresh.error, why) == 0;
        bool grown_why = grown.error && strcmp(grown.error, why) == 0;
        if (k >= at && !(fresh_why && grown_why)) {
            unit_fail(__FILE__, __LINE__, "\"%.*s\" prefix %zu: error \"%s\", want \"%s\"", (int)len, text, k,
                      fresh.error ? fresh.error : "-", why);
            return;
        }
        if (k >= at)
            break; /* the server stops reading here */
    }
}

static void check_rejected(const char *text, size_t at, http_parse_result want, const char *why)
{
    check_rejected_at(text, strlen(text), at, want, why);
}

TEST(http_request_early_rejection)
{
    /* The first bytes of a TLS ClientHello: record type 0x16, version 3.1,
     * length, handshake type 1, ... Rejected on the first byte. */
    static const char hello[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x8a\x11";
    const char *tls = "not an HTTP request (is this TLS on a plain port?)";
    check_rejected_at(hello, sizeof hello - 1, 1, HTTP_PARSE_BAD_REQUEST, tls);
    for (size_t k = 1; k < sizeof hello; k++) {
        http_request req;
        CHECK(parse_req_n(hello, k, MAX_HEAD, MAX_TARGET, &req) == HTTP_PARSE_BAD_REQUEST);
        CHECK_STR(req.error, tls);
    }
    /* ... also after empty lines, which are still skipped. */
    check_rejected("\r\n\n\x16\x03\x01", 4, HTTP_PARSE_BAD_REQUEST, tls);

    /* A byte that cannot be in a method, before the first space. */
    const char *mrl = "malformed request line";
    check_rejected("\x80GET / HTTP/1.1\r\n", 1, HTTP_PARSE_BAD_REQUEST, mrl);
    check_rejected("{\"model\":\"x\"}", 1, HTTP_PARSE_BAD_REQUEST, mrl);
    check_rejected(" GET / HTTP/1.1\r\n", 1, HTTP_PARSE_BAD_REQUEST, mrl);
    check_rejected_at("\0GET", 4, 1, HTTP_PARSE_BAD_REQUEST, mrl);
    check_rejected("\rX", 2, HTTP_PARSE_BAD_REQUEST, mrl);
    check_rejected("GE(T / HTTP/1.1\r\n", 3, HTTP_PARSE_BAD_REQUEST, "invalid character in method");
    check_rejected("GET\x01 / HTTP/1.1\r\n", 4, HTTP_PARSE_BAD_REQUEST, "invalid character in method");
    check_rejected("SSH-2.0-OpenSSH_9.2\r\n", 20, HTTP_PARSE_BAD_REQUEST, mrl);
    check_rejected("GET\r\nHost: a\r\n", 4, HTTP_PARSE_BAD_REQUEST, mrl);
    /* A method of more than 32 bytes, space or not. */
    char method[64];
    memset(method, 'M', sizeof method);
    method[sizeof method - 1] = '\0';
    check_rejected(method, 33, HTTP_PARSE_BAD_REQUEST, "request method too long");
    char text[128];
    snprintf(text, sizeof text, "%.32s / HTTP/1.1\r\nHost: a\r\n\r\n", method);
    CHECK(parse_req(text) == HTTP_PARSE_DONE);
    /* The target: a control byte, DEL, non-ASCII, a line end, two spaces. */
    check_rejected("GET /a\x01b HTTP/1.1\r\n", 7, HTTP_PARSE_BAD_REQUEST, "invalid character in request target");
    check_rejected("GET /a\x7f HTTP/1.1\r\n", 7, HTTP_PARSE_BAD_REQUEST, "invalid character in request target");
    check_rejected("GET /a\tb HTTP/1.1\r\n", 7, HTTP_PARSE_BAD_REQUEST, "invalid character in request target");
    check_rejected("GET /\xc3\xa9 HTTP/1.1\r\n", 6, HTTP_PARSE_BAD_REQUEST, "invalid character in request target");
    check_rejected("GET /\r\nHost: a\r\n", 6, HTTP_PARSE_BAD_REQUEST, mrl);
    check_rejected("GET /\nHost: a\n", 6, HTTP_PARSE_BAD_REQUEST, mrl);
    check_rejected("GET  / HTTP/1.1\r\n", 5, HTTP_PARSE_BAD_REQUEST, mrl);
    /* The version: its shape is known byte by byte. */
    const char *mv = "malformed HTTP version";
    check_rejected("GET / HTTX/1.1\r\n", 10, HTTP_PARSE_BAD_REQUEST, mv);
    check_rejected("GET / http/1.1\r\n", 7, HTTP_PARSE_BAD_REQUEST, mv);
    check_rejected("GET / HTTP/1.10\r\n", 15, HTTP_PARSE_BAD_REQUEST, mv);
    check_rejected("GET / HTTP/1.1 \r\n", 15, HTTP_PARSE_BAD_REQUEST, mv);
    check_rejected("GET / HTTP/1\r\n", 13, HTTP_PARSE_BAD_REQUEST, mv);
    check_rejected("GET / x HTTP/1.1\r\n", 7, HTTP_PARSE_BAD_REQUEST, mv);
    check_rejected("GET / HTTP/1.1\rX", 16, HTTP_PARSE_BAD_REQUEST, "bare CR in request line");
    check_rejected("GET / HTTP/2.0\r\nHost: a\r\n", 16, HTTP_PARSE_BAD_VERSION, "HTTP version not supported");
    /* 414 as soon as the target outgrows the limit, whatever the method. */
    char longer[MAX_TARGET + 64];
    memset(longer, 'a', sizeof longer);
    memcpy(longer, "OPTIONS /", 9);
    longer[sizeof longer - 1] = '\0';
    check_rejected(longer, 8 + MAX_TARGET + 1, HTTP_PARSE_URI_TOO_LONG, "request target too long");

    /* Valid beginnings stay INCOMPLETE: empty lines, a lone CR, a CR ending
     * the request line. */
    static const char *const fine[] = {"",          "\r",        "\r\n",          "\n\n\r",        "G",
                                       "GET",       "GET ",      "GET /",         "GET / H",       "GET / HTTP/1.",
                                       "GET / HTTP/1.1", "GET / HTTP/1.1\r", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\n",
                                       "\r\nGET / HTTP/1.1\r\nHost: a\r\n"};
    for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++) {
        http_request req;
        http_parse_result r = parse_req_n(fine[i], strlen(fine[i]), MAX_HEAD, MAX_TARGET, &req);
        if (r != HTTP_PARSE_INCOMPLETE)
            unit_fail(__FILE__, __LINE__, "prefix %zu: result %d (%s)", i, (int)r, req.error ? req.error : "-");
    }
}

TEST(http_request_scanned_after_line)
{
    /* Once the request line is complete, later calls need not judge it again;
     * header bytes arriving one at a time give the same verdicts as fresh
     * parses, up to the error in the header section. */
    const char *text = "POST /v1/chat HTTP/1.1\r\nHost: a\r\nX-A: b\r\nX-\x01: c\r\n\r\n";
    size_t len = strlen(text), scanned = 0;
    http_request req;
    for (size_t k = 1; k <= len; k++) {
        http_parse_result a = http_parse_request(text, k, MAX_HEAD, MAX_TARGET, &scanned, &req);
        http_parse_result b = parse_req_n(text, k, MAX_HEAD, MAX_TARGET, &req);
        CHECK(a == b);
        CHECK(scanned <= k);
        CHECK(a == (k < len ? HTTP_PARSE_INCOMPLETE : HTTP_PARSE_BAD_REQUEST));
    }
}

TEST(http_request_mixed_line_endings)
{
    static const char *const mixed[] = {
        "GET / HTTP/1.1\r\nHost: a\n\r\n",     "GET / HTTP/1.1\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\n",     "GET / HTTP/1.1\nHost: a\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", "GET / HTTP/1.0\r\n\n",
        "\r\n\r\nGET / HTTP/1.1\nHost: a\r\n\n",
    };
    for (size_t i = 0; i < sizeof mixed / sizeof mixed[0]; i++) {
        http_request req;
        http_parse_result r = parse_req_n(mixed[i], strlen(mixed[i]), MAX_HEAD, MAX_TARGET, &req);
        const char *why = "mixed line endings in the request head";
        if (r != HTTP_PARSE_BAD_REQUEST || !req.error || strcmp(req.error, why) != 0)
            unit_fail(__FILE__, __LINE__, "mixed head %zu: result %d (%s)", i, (int)r, req.error ? req.error : "-");
    }
    /* One kind throughout is fine; empty lines before the request line do not count. */
    CHECK(parse_req("GET / HTTP/1.1\nHost: a\nX: b\n\n") == HTTP_PARSE_DONE);
    CHECK(parse_req("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\r\n") == HTTP_PARSE_DONE);
    CHECK(parse_req("\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n") == HTTP_PARSE_DONE);
    CHECK(parse_req("\r\n\nGET / HTTP/1.0\n\n") == HTTP_PARSE_DONE);
    /* A body after a CRLF head may hold bare LFs: it is not part of the head. */
    const char *body = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\na\nb\n";
    http_request req;
    CHECK(parse_req_n(body, strlen(body), MAX_HEAD, MAX_TARGET, &req) == HTTP_PARSE_DONE);
    CHECK_EQ_SIZE(req.head_len, strlen(body) - 4);
}

TEST(http_request_line_errors)
{
    CHECK(parse_req("GET / HTTP/2.0\r\nHost: h\r\n\r\n") == HTTP_PARSE_BAD_VERSION);
    CHECK(parse_req("GET / HTTP/3.0\r\nHost: h\r\n\r\n") == HTTP_PARSE_BAD_VERSION);
    CHECK(parse_req("GET / HTTP/0.9\r\nHost: h\r\n\r\n") == HTTP_PARSE_BAD_VERSION);
    /* malformed versions are not a version at all: 400 */
    static const char *const bad[] = {
        "GET / HTTP/1.1 \r\nHost: h\r\n\r\n",  "GET / HTTP/11\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.x\r\nHost: h\r\n\r\n",   "GET / http/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.10\r\nHost: h\r\n\r\n",  "GET /\r\nHost: h\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: h\r\n\r\n",  " GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET / x HTTP/1.1\r\nHost: h\r\n\r\n", "G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n", "GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /\t HTTP/1.1\r\nHost: h\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        http_parse_result r = parse_req(bad[i]);
        if (r != HTTP_PARSE_BAD_REQUEST)
            unit_fail(__FILE__, __LINE__, "request line %zu: result %d, want 400", i, (int)r);
    }
}

TEST(http_request_limits)
{
    http_request req;
    size_t max_target = 64;
    char text[4096];
    /* Target of exactly max_target is fine; one more is 414. */
    char target[80];
    memset(target, 'a', sizeof target);
    target[0] = '/';
    snprintf(text, sizeof text, "GET %.*s HTTP/1.1\r\nHost: h\r\n\r\n", (int)max_target, target);
    CHECK(parse_req_n(text, strlen(text), MAX_HEAD, max_target, &req) == HTTP_PARSE_DONE);
    snprintf(text, sizeof text, "GET %.*s HTTP/1.1\r\nHost: h\r\n\r\n", (int)max_target + 1, target);
    CHECK(parse_req_n(text, strlen(text), MAX_HEAD, max_target, &req) == HTTP_PARSE_URI_TOO_LONG);
    /* A request line still arriving is judged early once clearly too long. */
    memset(text, 'a', sizeof text);
    memcpy(text, "GET /", 5);
    CHECK(parse_req_n(text, max_target + 32, MAX_HEAD, max_target, &req) == HTTP_PARSE_URI_TOO_LONG);
    CHECK(parse_req_n(text, 40, MAX_HEAD, max_target, &req) == HTTP_PARSE_INCOMPLETE);

    /* Head size: exactly max_head is fine, one more byte of header is 431. */
    const char *pre = "GET / HTTP/1.1\r\nHost: h\r\nX-Big: ";
    size_t max_head = 512, fixed = strlen(pre) + 4;
    char value[600];
    memset(value, 'v', sizeof value);
    snprintf(text, sizeof text, "%s%.*s\r\n\r\n", pre, (int)(max_head - fixed), value);
    CHECK_EQ_SIZE(strlen(text), max_head);
    CHECK(parse_req_n(text, strlen(text), max_head, MAX_TARGET, &req) == HTTP_PARSE_DONE);
    snprintf(text, sizeof text, "%s%.*s\r\n\r\n", pre, (int)(max_head - fixed + 1), value);
    CHECK(parse_req_n(text, strlen(text), max_head, MAX_TARGET, &req) == HTTP_PARSE_HEADERS_TOO_LARGE);
    /* ... and while incomplete, as soon as more than max_head bytes are in. */
    snprintf(text, sizeof text, "%s%.*s", pre, 590, value);
    CHECK(parse_req_n(text, strlen(text), max_head, MAX_TARGET, &req) == HTTP_PARSE_HEADERS_TOO_LARGE);
    CHECK(parse_req_n(text, max_head, max_head, MAX_TARGET, &req) == HTTP_PARSE_INCOMPLETE);
}

TEST(http_request_too_many_headers)
{
    char *text = malloc(8192);
    for (size_t count = HTTP_MAX_HEADERS; count <= HTTP_MAX_HEADERS + 1; count++) {
        size_t n = (size_t)snprintf(text, 8192, "GET / HTTP/1.1\r\nHost: h\r\n");
        for (size_t i = 1; i < count; i++)
            n += (size_t)snprintf(text + n, 8192 - n, "X-%zu: v\r\n", i);
        n += (size_t)snprintf(text + n, 8192 - n, "\r\n");
        http_request req;
        http_parse_result r = parse_req_n(text, n, MAX_HEAD, MAX_TARGET, &req);
        CHECK(r == (count <= HTTP_MAX_HEADERS ? HTTP_PARSE_DONE : HTTP_PARSE_HEADERS_TOO_LARGE));
        if (r == HTTP_PARSE_DONE)
            CHECK_EQ_SIZE(req.header_count, HTTP_MAX_HEADERS);
    }
    free(text);
}

/* ---- responses ---- */

static http_parse_result parse_res_n(const char *text, size_t len, bool head, http_response *res)
{
    char *copy = malloc(len ? len : 1);
    memcpy(copy, text, len);
    http_parse_result r = http_parse_response(copy, len, MAX_HEAD, head, res);
    free(copy);
    return r;
}

static http_parse_result parse_res(const char *text, bool head, http_response *res)
{
    return parse_res_n(text, strlen(text), head, res);
}

TEST(http_response_framing)
{
    http_response res;
    CHECK(parse_res("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n", false, &res) ==
          HTTP_PARSE_DONE);
    CHECK(res.status == 200);
    CHECK(res.minor_version == 1);
    CHECK(res.body_kind == HTTP_BODY_LENGTH);
    CHECK_EQ_SIZE(res.content_length, 12);
    CHECK(res.keep_alive);
    CHECK_STR(str_of(res.content_type), "application/json");

    CHECK(parse_res("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n", false,
                    &res) == HTTP_PARSE_DONE);
    CHECK(res.body_kind == HTTP_BODY_CHUNKED);
    CHECK_STR(str_of(res.content_type), "text/event-stream");

    CHECK(parse_res("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n", false, &res) == HTTP_PARSE_DONE);
    CHECK(res.body_kind == HTTP_BODY_UNTIL_CLOSE);
    CHECK(!res.keep_alive);

    CHECK(parse_res("HTTP/1.1 204 No Content\r\n\r\n", false, &res) == HTTP_PARSE_DONE);
    CHECK(res.status == 204);
    CHECK(res.body_kind == HTTP_BODY_NONE);
    CHECK(res.keep_alive);
    CHECK(res.content_type.len == 0);

    CHECK(parse_res("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false, &res) == HTTP_PARSE_DONE);
    CHECK(res.body_kind == HTTP_BODY_NONE);
    CHECK(parse_res("HTTP/1.1 100 Continue\r\n\r\n", false, &res) == HTTP_PARSE_DONE);
    CHECK(res.body_kind == HTTP_BODY_NONE);

    /* A HEAD answer carries no body whatever its headers say. */
    CHECK(parse_res("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", true, &res) == HTTP_PARSE_DONE);
    CHECK(res.body_kind == HTTP_BODY_NONE);
    CHECK_EQ_SIZE(res.content_length, 0);
    CHECK(parse_res("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, &res) == HTTP_PARSE_DONE);
    CHECK(res.body_kind == HTTP_BODY_NONE);

    /* HTTP/1.0 and Connection: close */
    CHECK(parse_res("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, &res) == HTTP_PARSE_DONE);
    CHECK(res.minor_version == 0);
    CHECK(!res.keep_alive);
    CHECK(parse_res("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", false, &res) ==
          HTTP_PARSE_DONE);
    CHECK(!res.keep_alive);

    /* No reason phrase at all, and an empty one. */
    CHECK(parse_res("HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n", false, &res) == HTTP_PARSE_DONE);
    CHECK(res.status == 503);
    CHECK(parse_res("HTTP/1.1 429 \r\nContent-Length: 0\r\n\r\n", false, &res) == HTTP_PARSE_DONE);
    CHECK(res.status == 429);
}

TEST(http_response_every_split)
{
    const char *text = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                       "X-Request-Id: r1\r\n\r\n";
    size_t len = strlen(text);
    http_response whole, part;
    CHECK(parse_res(text, false, &whole) == HTTP_PARSE_DONE);
    CHECK_EQ_SIZE(whole.head_len, len);
    for (size_t k = 0; k < len; k++) {
        http_parse_result r = parse_res_n(text, k, false, &part);
        if (r != HTTP_PARSE_INCOMPLETE)
            unit_fail(__FILE__, __LINE__, "response prefix %zu: result %d", k, (int)r);
    }
    /* Body bytes after the head do not change the head. */
    char buf[256];
    snprintf(buf, sizeof buf, "%s5\r\nhello\r\n", text);
    CHECK(parse_res(buf, false, &part) == HTTP_PARSE_DONE);
    CHECK_EQ_SIZE(part.head_len, len);
    CHECK(part.body_kind == whole.body_kind);
    CHECK_EQ_SIZE(part.header_count, whole.header_count);
}

TEST(http_response_errors)
{
    http_response res;
    /* Garbage is spotted from its first five bytes, head end or not. */
    CHECK(parse_res("SSH-2.0-OpenSSH_9.2", false, &res) == HTTP_PARSE_BAD_REQUEST);
    CHECK(res.error != NULL);
    CHECK(parse_res("hello", false, &res) == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_res("HTTP", false, &res) == HTTP_PARSE_INCOMPLETE);
    CHECK(parse_res("\x16\x03\x01\x02\x05", false, &res) == HTTP_PARSE_BAD_REQUEST);
    CHECK(parse_res("X\n\n", false, &res) == HTTP_PARSE_BAD_REQUEST);
    static const char *const bad[] = {
        "HTTP/1.1 20 OK\r\n\r\n",          "HTTP/1.1 2000 OK\r\n\r\n",          "HTTP/1.1 200OK\r\n\r\n",
        "HTTP/1.1 099 Low\r\n\r\n",        "HTTP/1.1 abc OK\r\n\r\n",           "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1  200 OK\r\n\r\n",        "HTTP/1.1\r\n\r\n",                  "HTTP/1.x 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX : y\r\n\r\n", "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", "HTTP/1.1 200 OK\r\n fold\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        http_parse_result r = parse_res(bad[i], false, &res);
        if (r != HTTP_PARSE_BAD_REQUEST)
            unit_fail(__FILE__, __LINE__, "bad response %zu: result %d", i, (int)r);
    }
    CHECK(parse_res("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, &res) == HTTP_PARSE_NOT_IMPLEMENTED);

    /* Line ends: one kind throughout. */
    static const char *const mixed[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n", "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n", "HTTP/1.1 204 No Content\r\n\n",
    };
    for (size_t i = 0; i < sizeof mixed / sizeof mixed[0]; i++) {
        http_parse_result r = parse_res(mixed[i], false, &res);
        const char *why = "mixed line endings in the response head";
        if (r != HTTP_PARSE_BAD_REQUEST || !res.error || strcmp(res.error, why) != 0)
            unit_fail(__FILE__, __LINE__, "mixed response %zu: result %d", i, (int)r);
    }
    CHECK(parse_res("HTTP/1.1 200 OK\nContent-Length: 0\nX: y\n\n", false, &res) == HTTP_PARSE_DONE);
    CHECK_EQ_SIZE(res.header_count, 2);
    CHECK(parse_res("HTTP/1.1 204 No Content\n\n", false, &res) == HTTP_PARSE_DONE);

    /* An endless head is cut off at max_head. */
    char big[MAX_HEAD + 64];
    memset(big, 'x', sizeof big);
    memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 20);
    CHECK(parse_res_n(big, MAX_HEAD, false, &res) == HTTP_PARSE_INCOMPLETE);
    CHECK(parse_res_n(big, sizeof big, false, &res) == HTTP_PARSE_HEADERS_TOO_LARGE);
}

TEST(http_helpers)
{
    CHECK(http_is_hop_by_hop(SLICE_LIT("Connection")));
    CHECK(http_is_hop_by_hop(SLICE_LIT("transfer-encoding")));
    CHECK(http_is_hop_by_hop(SLICE_LIT("Keep-Alive")));
    CHECK(http_is_hop_by_hop(SLICE_LIT("TE")));
    CHECK(http_is_hop_by_hop(SLICE_LIT("Upgrade")));
    CHECK(!http_is_hop_by_hop(SLICE_LIT("Content-Type")));
    CHECK(!http_is_hop_by_hop(SLICE_LIT("Authorization")));
    CHECK(!http_is_hop_by_hop(SLICE_LIT("Tee")));

    CHECK(http_list_has_token(SLICE_LIT("keep-alive, Close"), SLICE_LIT("close")));
    CHECK(http_list_has_token(SLICE_LIT(" close "), SLICE_LIT("close")));
    CHECK(http_list_has_token(SLICE_LIT("a,,close"), SLICE_LIT("close")));
    CHECK(!http_list_has_token(SLICE_LIT("closed"), SLICE_LIT("close")));
    CHECK(!http_list_has_token(SLICE_LIT(""), SLICE_LIT("close")));

    CHECK_STR(http_reason(200), "OK");
    CHECK_STR(http_reason(431), "Request Header Fields Too Large");
    CHECK_STR(http_reason(505), "HTTP Version Not Supported");
    CHECK(http_reason(299) != NULL);
}
