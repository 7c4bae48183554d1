/* The request path's shortcuts against the long ways they stand for: known
 * header fields, the one-pass head parsers against the careful ones, short
 * copies and small numbers in wbuf, the backward search for usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/wbuf.h"
#include "gateway/json.h"
#include "gateway/metrics.h"
#include "http/http.h"
#include "unit.h"

enum { MAX_HEAD = 16 * 1024, MAX_TARGET = 8 * 1024 };

static const struct {
    const char *name;
    http_field field;
} known_fields[] = {
    {"connection", HTTP_FIELD_CONNECTION},
    {"keep-alive", HTTP_FIELD_KEEP_ALIVE},
    {"proxy-connection", HTTP_FIELD_PROXY_CONNECTION},
    {"te", HTTP_FIELD_TE},
    {"trailer", HTTP_FIELD_TRAILER},
    {"upgrade", HTTP_FIELD_UPGRADE},
    {"transfer-encoding", HTTP_FIELD_TRANSFER_ENCODING},
    {"proxy-authorization", HTTP_FIELD_PROXY_AUTHORIZATION},
    {"proxy-authenticate", HTTP_FIELD_PROXY_AUTHENTICATE},
    {"content-length", HTTP_FIELD_CONTENT_LENGTH},
    {"host", HTTP_FIELD_HOST},
    {"expect", HTTP_FIELD_EXPECT},
    {"content-type", HTTP_FIELD_CONTENT_TYPE},
    {"cache-control", HTTP_FIELD_CACHE_CONTROL},
    {"accept-encoding", HTTP_FIELD_ACCEPT_ENCODING},
    {"authorization", HTTP_FIELD_AUTHORIZATION},
    {"x-api-key", HTTP_FIELD_X_API_KEY},
    {"api-key", HTTP_FIELD_API_KEY},
    {"x-request-id", HTTP_FIELD_X_REQUEST_ID},
    {"traceparent", HTTP_FIELD_TRACEPARENT},
    {"openai-organization", HTTP_FIELD_OPENAI_ORGANIZATION},
    {"openai-project", HTTP_FIELD_OPENAI_PROJECT},
    {"retry-after", HTTP_FIELD_RETRY_AFTER},
    {"last-event-id", HTTP_FIELD_LAST_EVENT_ID},
    {"ssegate-resumable", HTTP_FIELD_SSEGATE_RESUMABLE},
    {"if-none-match", HTTP_FIELD_IF_NONE_MATCH},
};
enum { KNOWN_FIELDS = sizeof known_fields / sizeof known_fields[0] };

TEST(http_field_of_every_known_name)
{
    CHECK_EQ_SIZE(KNOWN_FIELDS, HTTP_FIELD_COUNT - 1); /* each field once */
    static const char tchars[] = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    for (size_t i = 0; i < KNOWN_FIELDS; i++) {
        char name[32];
        size_t len = strlen(known_fields[i].name);
        memcpy(name, known_fields[i].name, len);
        CHECK(http_field_of((slice){name, len}) == known_fields[i].field);
        for (size_t k = 0; k < len; k++) /* upper case, one byte at a time, then all */
            if (name[k] >= 'a' && name[k] <= 'z') {
                name[k] = (char)(name[k] - 32);
                CHECK(http_field_of((slice){name, len}) == known_fields[i].field);
            }
        memcpy(name, known_fields[i].name, len);
        /* any other token byte anywhere makes it another name */
        for (size_t k = 0; k < len; k++)
            for (const char *t = tchars; *t; t++) {
                char keep = name[k];
                if (*t == keep || (*t >= 'A' && *t <= 'Z' && *t + 32 == keep))
                    continue;
                name[k] = *t;
                CHECK(http_field_of((slice){name, len}) == HTTP_FIELD_OTHER);
                name[k] = keep;
            }
        CHECK(http_field_of((slice){name, len - 1}) == HTTP_FIELD_OTHER);
        CHECK(http_is_hop_by_hop((slice){name, len}) == http_field_is_hop_by_hop(known_fields[i].field));
    }
    CHECK(http_field_of(SLICE_LIT("")) == HTTP_FIELD_OTHER);
    CHECK(http_field_of(SLICE_LIT("x-should-retry")) == HTTP_FIELD_OTHER);
    CHECK(http_field_of(SLICE_LIT("content-lengths")) == HTTP_FIELD_OTHER);
    CHECK(!http_is_hop_by_hop(SLICE_LIT("content-type")));
    CHECK(http_is_hop_by_hop(SLICE_LIT("Transfer-Encoding")));
}

static http_parse_result parse_copy(const char *text, size_t scanned_from, http_request *req, char **copy)
{
    size_t len = strlen(text);
    *copy = malloc(len ? len : 1);
    memcpy(*copy, text, len);
    size_t scanned = scanned_from;
    return http_parse_request(*copy, len, MAX_HEAD, MAX_TARGET, &scanned, req);
}

/* The one-pass parse (a first look, scanned 0) and the careful one (forced
 * by a `scanned` past the first byte, which a head's end never is) agree on
 * every head: verdict, sentence, and everything parsed. */
TEST(http_request_fast_and_careful_agree)
{
    static const char *heads[] = {
        "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\nHost: a\n\n",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        "Content-Length: 76\r\n\r\n{}",
        "GET /x?y=1 HTTP/1.0\r\nConnection: Keep-Alive, Foo\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: foo\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Tab:\tv\tw\t \r\nX-Obs: caf\xc3\xa9\r\nX-Empty:\r\nX-Sp:   \r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Long: 0123456789abcdef0123456789abcdef\r\n\r\n",
        "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
        "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nExpect: nothing\r\n\r\n",
        "PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        "GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: b\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\n",
        "GET / HTTP/1.1\nHost: a\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n: empty name\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: y\r\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n", /* incomplete */
        "GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r", /* incomplete */
    };
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        static http_request fast, careful;
        char *a, *b;
        http_parse_result rf = parse_copy(heads[i], 0, &fast, &a);
        size_t lead = 0;
        while (heads[i][lead] == '\r' || heads[i][lead] == '\n')
            lead++;
        http_parse_result rc = parse_copy(heads[i], lead + 1, &careful, &b);
        if (rf != rc)
            printf("  head %zu: %d vs %d\n", i, (int)rf, (int)rc);
        CHECK(rf == rc);
        CHECK((fast.error == NULL) == (careful.error == NULL));
        if (fast.error && careful.error)
            CHECK_STR(fast.error, careful.error);
        if (rf == HTTP_PARSE_DONE && rc == HTTP_PARSE_DONE) {
            CHECK_EQ_SIZE(fast.head_len, careful.head_len);
            CHECK_EQ_SIZE(fast.header_count, careful.header_count);
            for (size_t k = 0; k < fast.header_count && k < careful.header_count; k++) {
                CHECK_EQ_SIZE(fast.headers[k].name.ptr - a, careful.headers[k].name.ptr - b);
                CHECK(slice_eq(fast.headers[k].name, careful.headers[k].name));
                CHECK_EQ_SIZE(fast.headers[k].value.ptr - a, careful.headers[k].value.ptr - b);
                CHECK(slice_eq(fast.headers[k].value, careful.headers[k].value));
            }
            CHECK(memcmp(&fast.fields, &careful.fields, sizeof fast.fields) == 0);
            CHECK(fast.body_kind == careful.body_kind && fast.content_length == careful.content_length);
            CHECK(fast.keep_alive == careful.keep_alive && fast.expect_continue == careful.expect_continue);
            CHECK(fast.method == careful.method && fast.minor_version == careful.minor_version);
            CHECK(slice_eq(fast.path, careful.path) && slice_eq(fast.query, careful.query));
        }
        free(a);
        free(b);
    }
}

TEST(http_known_fields_of_a_request_and_a_response)
{
    static http_request req;
    char *copy;
    CHECK(parse_copy("GET / HTTP/1.1\r\nhost: a\r\nX-Request-Id: one\r\nx-request-id: two\r\n"
                     "TraceParent: t\r\n\r\n",
                     0, &req, &copy) == HTTP_PARSE_DONE);
    const http_header *id = http_request_field(&req, HTTP_FIELD_X_REQUEST_ID);
    CHECK(id && slice_eq(id->value, SLICE_LIT("one"))); /* the first, as http_find_header finds */
    CHECK(id == http_find_header(req.headers, req.header_count, SLICE_LIT("x-request-id")));
    CHECK(http_request_field(&req, HTTP_FIELD_TRACEPARENT) == &req.headers[3]);
    CHECK(http_request_field(&req, HTTP_FIELD_HOST) == &req.headers[0]);
    CHECK(http_request_field(&req, HTTP_FIELD_CONTENT_TYPE) == NULL);
    free(copy);

    static http_response res;
    const char *text = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                       "Connection: keep-alive\r\nX-Request-Id: up\r\n\r\n{}";
    CHECK(http_parse_response(text, strlen(text), MAX_HEAD, false, &res) == HTTP_PARSE_DONE);
    CHECK(res.status == 200 && res.body_kind == HTTP_BODY_LENGTH && res.content_length == 2 && res.keep_alive);
    CHECK(slice_eq(res.content_type, SLICE_LIT("application/json")));
    const http_header *up = http_response_field(&res, HTTP_FIELD_X_REQUEST_ID);
    CHECK(up && slice_eq(up->value, SLICE_LIT("up")));
    CHECK(http_response_field(&res, HTTP_FIELD_RETRY_AFTER) == NULL);
    /* the same head with bare LFs, a reason phrase with spaces, none at all */
    const char *lf = "HTTP/1.1 404 Not  Found\nContent-Length: 0\n\n";
    CHECK(http_parse_response(lf, strlen(lf), MAX_HEAD, false, &res) == HTTP_PARSE_DONE);
    CHECK(res.status == 404 && res.head_len == strlen(lf));
    const char *bare = "HTTP/1.0 204\r\n\r\n";
    CHECK(http_parse_response(bare, strlen(bare), MAX_HEAD, false, &res) == HTTP_PARSE_DONE);
    CHECK(res.status == 204 && res.body_kind == HTTP_BODY_NONE && !res.keep_alive);
    const char *mixed = "HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n";
    CHECK(http_parse_response(mixed, strlen(mixed), MAX_HEAD, false, &res) == HTTP_PARSE_BAD_REQUEST);
    const char *cr = "HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n";
    CHECK(http_parse_response(cr, strlen(cr), MAX_HEAD, false, &res) == HTTP_PARSE_BAD_REQUEST);
    const char *glued = "HTTP/1.1 200OK\r\nContent-Length: 0\r\n\r\n";
    CHECK(http_parse_response(glued, strlen(glued), MAX_HEAD, false, &res) == HTTP_PARSE_BAD_REQUEST);
    /* a head one byte over the limit is too large, at the limit it is not */
    CHECK(http_parse_response(text, strlen(text) - 2, strlen(text) - 3, false, &res) ==
          HTTP_PARSE_HEADERS_TOO_LARGE);
    CHECK(http_parse_response(text, strlen(text) - 2, strlen(text) - 2, false, &res) == HTTP_PARSE_DONE);
}

/* Every length 0..40 at every offset of a buffer, with room for it and one
 * byte short: the bytes land whole, or the buffer overflows untouched. */
TEST(wbuf_put_short_and_long)
{
    char src[41], mem[64];
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (char)('A' + i);
    for (size_t len = 0; len <= 40; len++)
        for (size_t at = 0; at <= 8; at++) {
            memset(mem, '.', sizeof mem);
            wbuf b = wbuf_over(mem, at + len);
            b.len = at;
            wbuf_put(&b, src, len);
            CHECK(!b.overflow && b.len == at + len);
            CHECK(memcmp(mem + at, src, len) == 0);
            CHECK(mem[at + len] == '.' && (at == 0 || mem[at - 1] == '.'));
            if (len) { /* one byte short */
                b = wbuf_over(mem, at + len - 1);
                b.len = at;
                wbuf_put(&b, src, len);
                CHECK(b.overflow && b.len == at);
            }
        }
}

TEST(wbuf_small_numbers_and_tight_room)
{
    char mem[4];
    for (uint64_t v = 0; v < 1000; v++) {
        char want[8];
        int n = snprintf(want, sizeof want, "%llu", (unsigned long long)v);
        for (size_t cap = 0; cap <= 4; cap++) {
            wbuf b = wbuf_over(mem, cap);
            wbuf_put_u64(&b, v);
            if ((size_t)n <= cap) {
                CHECK(!b.overflow && b.len == (size_t)n && memcmp(mem, want, (size_t)n) == 0);
            } else {
                CHECK(b.overflow && b.len == 0);
            }
        }
    }
}

TEST(json_find_usage_from_the_end)
{
    arena a;
    arena_init(&a);
    json_chunk_info info;
    const char *cases[] = {
        "{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
        "{\"usage\":{\"prompt_tokens\":9},\"x\":\"usage\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
        "{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2},\"note\":\"\\\"usage\\\":{\\\"prompt_tokens\\\":7}\"}",
        "{\"a\":\"usag\",\"usage\" :\n{\"prompt_tokens\":1,\"completion_tokens\":2},\"sage\":\"\\\"\"}",
        "{\"uusage\":0,\"\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(json_find_usage(cases[i], strlen(cases[i]), &a, &info));
        CHECK(info.prompt_tokens == 1 && info.completion_tokens == 2);
    }
    /* backslash runs before a quote: even, the string ends; odd, it goes on */
    const char *runs[] = {
        "{\"usage\":{\"n\":\"a\\\\\",\"completion_tokens\":3}}",
        "{\"usage\":{\"n\":\"\\\\\\\\\",\"completion_tokens\":3}}",
        "{\"usage\":{\"n\":\"\\\\\\\"}\\\\\",\"completion_tokens\":3}}",
        "{\"usage\":{\"n\":\"\",\"completion_tokens\":3}}",
    };
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        CHECK(json_find_usage(runs[i], strlen(runs[i]), &a, &info));
        CHECK(info.completion_tokens == 3);
    }
    const char *unclosed = "{\"usage\":{\"n\":\"a\\\"}}";
    CHECK(!json_find_usage(unclosed, strlen(unclosed), &a, &info));
    /* every prefix of the whole key, and no key: none */
    const char *key = "\"usage\"";
    for (size_t n = 0; n <= strlen(key); n++)
        CHECK(!json_find_usage(key, n, &a, &info));
    CHECK(!json_find_usage("{\"x\":\"usage\"}", 13, &a, &info));
    arena_reset(&a);
}

/* A clean name is looked up as it is; one escaping changes (or cuts) is
 * escaped first: both ways reach the same label, and so the same id. */
TEST(metrics_clean_names_and_escaped_ones_meet)
{
    metrics *m = metrics_new(8, 1, "t");
    CHECK(m != NULL);
    if (!m)
        return;
    uint32_t anon = metrics_client(m, SLICE_LIT("anonymous"));
    CHECK(metrics_client(m, SLICE_LIT("anonymous")) == anon);
    char longer[200];
    memset(longer, 'n', sizeof longer);
    uint32_t cut = metrics_client(m, (slice){longer, sizeof longer}); /* cut to 128 bytes */
    CHECK(cut != anon);
    CHECK(metrics_client(m, (slice){longer, 128}) == cut);
    CHECK(metrics_client(m, (slice){longer, 127}) != cut);
    uint32_t ctl = metrics_client(m, SLICE_LIT("a\x01" "b"));
    CHECK(metrics_client(m, SLICE_LIT("a?b")) == ctl);
    metrics_free(m);
}
