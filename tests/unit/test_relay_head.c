/* The heads a relay writes fit the room they are given: sized to the head
 * at hand, with no fixed reservation, even for the tightest input lines. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/relay_head.h"
#include "unit.h"

static bool contains(slice hay, const char *needle)
{
    return memmem(hay.ptr, hay.len, needle, strlen(needle)) != NULL;
}

/* A bare-LF head with HTTP_MAX_HEADERS - 1 one-byte headers, "a:b\n": each
 * one grows by two bytes when written back, which is what the room allows for. */
static size_t tight_head(char *out, size_t cap)
{
    wbuf b = wbuf_over(out, cap);
    wbuf_puts(&b, "POST /v1/chat/completions?x=1 HTTP/1.1\nHost:h\n");
    for (size_t i = 0; i + 2 < HTTP_MAX_HEADERS; i++) {
        wbuf_put_char(&b, (char)('a' + i % 26));
        wbuf_puts(&b, ":b\n");
    }
    wbuf_puts(&b, "\n");
    return b.len;
}

TEST(relay_request_head_fits_its_room)
{
    static char text[8192];
    size_t len = tight_head(text, sizeof text);
    static http_request req;
    CHECK(http_parse_request(text, len, sizeof text, sizeof text, &(size_t){0}, &req) == HTTP_PARSE_DONE);
    CHECK_EQ_SIZE(req.header_count, HTTP_MAX_HEADERS - 1);
    static upstream_target t;
    const char *why = NULL;
    CHECK(upstream_target_init(&t, "http://127.0.0.1:9/base/v1", "sk-unit-test-key", NULL, &why) == 0);
    request_head_spec spec = {.http = &req, .target = &t, .org = "org-1", .project = "proj-2",
                              .traceparent = SLICE_LIT("00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"),
                              .req_id = SLICE_LIT("req-42"), .body_len = 12345678901234567890u};
    size_t room = relay_request_head_room(&spec);
    char *mem = malloc(room);
    CHECK(mem != NULL);
    wbuf b = wbuf_over(mem, room);
    CHECK(relay_write_request_head(&b, &spec));
    slice head = wbuf_slice(&b);
    CHECK(b.len <= room);
    CHECK(contains(head, "POST /base/v1/chat/completions?x=1 HTTP/1.1\r\n"));
    CHECK(contains(head, "Authorization: Bearer sk-unit-test-key\r\n"));
    CHECK(contains(head, "\r\nb: b\r\n") && contains(head, "\r\nz: b\r\n"));
    CHECK(contains(head, "OpenAI-Organization: org-1\r\nOpenAI-Project: proj-2\r\n"));
    CHECK(contains(head, "\r\nContent-Length: 12345678901234567890\r\n\r\n"));
    CHECK(!contains(head, "Host: h\r\n"));
    /* One byte less than it wrote does not fit. */
    wbuf small = wbuf_over(mem, b.len - 1);
    CHECK(!relay_write_request_head(&small, &spec));
    free(mem);
    upstream_target_free(&t, NULL);
}

TEST(relay_answer_head_fits_its_room)
{
    static char text[8192];
    wbuf in = wbuf_over(text, sizeof text);
    wbuf_puts(&in, "HTTP/1.1 431 x\n"); /* the longest reason we write */
    for (size_t i = 0; i + 1 < HTTP_MAX_HEADERS; i++) {
        wbuf_put_char(&in, (char)('a' + i % 26));
        wbuf_puts(&in, ":b\n");
    }
    wbuf_puts(&in, "Content-Length:0\n\n");
    static http_response res;
    CHECK(http_parse_response(text, in.len, sizeof text, false, &res) == HTTP_PARSE_DONE);
    limit_verdict v = {.limit_requests = 18446744073709551615u, .remaining_requests = 18446744073709551615u,
                       .reset_requests_us = 18446744073709551615u, .limit_tokens = 18446744073709551615u,
                       .remaining_tokens = 18446744073709551615u, .reset_tokens_us = 18446744073709551615u};
    secrets none = {.count = 0};
    answer_head_spec spec = {.head = &res, .status = 431, .body_kind = HTTP_BODY_CHUNKED, .stream = true,
                             .client_chunked = false, .keep_alive = true,
                             .req_id = SLICE_LIT("a-request-id-of-some-length-0123456789"), .limits = &v,
                             .secrets = &none};
    size_t room = relay_answer_head_room(&spec);
    char *mem = malloc(room);
    CHECK(mem != NULL);
    wbuf b = wbuf_over(mem, room);
    CHECK(relay_write_answer_head(&b, &spec));
    slice head = wbuf_slice(&b);
    CHECK(contains(head, "HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    CHECK(contains(head, "Content-Type: text/event-stream; charset=utf-8\r\n"));
    CHECK(contains(head, "x-ratelimit-remaining-tokens: 18446744073709551615"));
    CHECK(contains(head, "\r\nConnection: close\r\n\r\n")); /* HTTP/1.0: the close ends the body */
    free(mem);
}
