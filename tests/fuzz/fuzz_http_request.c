/* HTTP request heads: a one-shot parse, and the same bytes arriving in
 * pieces with `scanned` carried between calls, must agree; every slice of a
 * parsed request lies inside its head and obeys the grammar. */
#include "fuzz.h"
#include "http/http.h"

enum { MAX_HEAD = 2048, MAX_TARGET = 512 };

static int within(const char *buf, size_t len, slice s)
{
    return s.len == 0 || (s.ptr >= buf && s.ptr + s.len <= buf + len);
}

static int is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static void check_request(const char *buf, size_t len, const http_request *req)
{
    FUZZ_CHECK(req->error == NULL);
    FUZZ_CHECK(req->head_len > 0 && req->head_len <= len && req->head_len <= MAX_HEAD);
    size_t h = req->head_len;
    FUZZ_CHECK(buf[h - 1] == '\n');
    FUZZ_CHECK(within(buf, h, req->method_name) && req->method_name.len > 0);
    for (size_t i = 0; i < req->method_name.len; i++)
        FUZZ_CHECK(is_tchar((unsigned char)req->method_name.ptr[i]));
    FUZZ_CHECK(within(buf, h, req->target) && req->target.len > 0 && req->target.len <= MAX_TARGET);
    for (size_t i = 0; i < req->target.len; i++)
        FUZZ_CHECK(req->target.ptr[i] > 0x20 && req->target.ptr[i] < 0x7f);
    FUZZ_CHECK(within(buf, h, req->path) && within(buf, h, req->query));
    FUZZ_CHECK(req->path.len + (req->query.ptr ? req->query.len + 1 : 0) == req->target.len);
    FUZZ_CHECK(req->minor_version >= 0 && req->minor_version <= 9);
    FUZZ_CHECK(req->header_count <= HTTP_MAX_HEADERS);
    size_t hosts = 0, lengths = 0, codings = 0;
    for (size_t i = 0; i < req->header_count; i++) {
        const http_header *hd = &req->headers[i];
        FUZZ_CHECK(hd->name.len > 0 && within(buf, h, hd->name) && within(buf, h, hd->value));
        for (size_t j = 0; j < hd->name.len; j++)
            FUZZ_CHECK(is_tchar((unsigned char)hd->name.ptr[j]));
        for (size_t j = 0; j < hd->value.len; j++) {
            unsigned char c = (unsigned char)hd->value.ptr[j];
            FUZZ_CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
        }
        if (hd->value.len)
            FUZZ_CHECK(hd->value.ptr[0] != ' ' && hd->value.ptr[hd->value.len - 1] != ' ');
        hosts += slice_eq_nocase(hd->name, SLICE_LIT("host"));
        lengths += slice_eq_nocase(hd->name, SLICE_LIT("content-length"));
        codings += slice_eq_nocase(hd->name, SLICE_LIT("transfer-encoding"));
    }
    FUZZ_CHECK(hosts <= 1 && (req->minor_version == 0 || hosts == 1));
    const http_header *host = http_find_header(req->headers, req->header_count, SLICE_LIT("host"));
    for (size_t j = 0; host && j < host->value.len; j++) { /* uri-host [ ":" port ] has none of these */
        char c = host->value.ptr[j];
        FUZZ_CHECK(c > 0x20 && c < 0x7f && !strchr("/?#@\"<>\\^`{|}", c));
    }
    /* line ends of one kind from the request line on */
    const char *line = req->method_name.ptr, *head_end = buf + h;
    size_t crlf = 0, lf = 0;
    for (const char *nl = memchr(line, '\n', (size_t)(head_end - line)); nl;
         nl = memchr(nl + 1, '\n', (size_t)(head_end - nl - 1)))
        *(nl[-1] == '\r' ? &crlf : &lf) += 1;
    FUZZ_CHECK(crlf == 0 || lf == 0);
    FUZZ_CHECK(req->method_name.len <= 32);
    FUZZ_CHECK(lengths + codings <= 1);
    if (req->body_kind == HTTP_BODY_LENGTH)
        FUZZ_CHECK(lengths == 1 && req->content_length < 1000000000000000ull);
    else
        FUZZ_CHECK(req->content_length == 0);
    if (req->body_kind == HTTP_BODY_CHUNKED)
        FUZZ_CHECK(codings == 1 && req->minor_version >= 1);
    FUZZ_CHECK(req->body_kind != HTTP_BODY_UNTIL_CLOSE);
}

static void check_same(const char *a_buf, const http_request *a, const char *b_buf, const http_request *b)
{
    FUZZ_CHECK(a->head_len == b->head_len);
    FUZZ_CHECK(a->header_count == b->header_count);
    FUZZ_CHECK(a->target.ptr - a_buf == b->target.ptr - b_buf && a->target.len == b->target.len);
    FUZZ_CHECK(a->body_kind == b->body_kind && a->content_length == b->content_length);
    FUZZ_CHECK(a->keep_alive == b->keep_alive && a->expect_continue == b->expect_continue);
    for (size_t i = 0; i < a->header_count; i++) {
        FUZZ_CHECK(a->headers[i].name.ptr - a_buf == b->headers[i].name.ptr - b_buf);
        FUZZ_CHECK(a->headers[i].value.len == b->headers[i].value.len);
    }
}

static http_request whole, part, fresh;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = fuzz_copy(data, size);
    size_t scanned = 0;
    http_parse_result r_whole = http_parse_request(buf, size, MAX_HEAD, MAX_TARGET, &scanned, &whole);
    if (r_whole == HTTP_PARSE_DONE)
        check_request(buf, size, &whole);
    else if (r_whole != HTTP_PARSE_INCOMPLETE)
        FUZZ_CHECK(whole.error != NULL);

    /* The same bytes arriving in pieces, as the server reads them. */
    fuzz_rng rng = fuzz_rng_from(data, size);
    size_t have = 0;
    scanned = 0;
    for (;;) {
        have += size - have ? fuzz_piece(&rng, size - have) : 0;
        char *prefix = fuzz_copy(data, have);
        http_parse_result r = http_parse_request(prefix, have, MAX_HEAD, MAX_TARGET, &scanned, &part);
        FUZZ_CHECK(scanned <= have);
        size_t scanned0 = 0;
        http_parse_result r0 = http_parse_request(prefix, have, MAX_HEAD, MAX_TARGET, &scanned0, &fresh);
        FUZZ_CHECK(r == r0);
        if (r == HTTP_PARSE_DONE) {
            check_request(prefix, have, &part);
            check_same(prefix, &part, prefix, &fresh);
            /* A head complete in a prefix is the same head in the whole. */
            FUZZ_CHECK(r_whole == HTTP_PARSE_DONE);
            check_same(prefix, &part, buf, &whole);
        }
        /* An early verdict on a prefix is the verdict on the whole. */
        if (r != HTTP_PARSE_INCOMPLETE && r != HTTP_PARSE_DONE)
            FUZZ_CHECK(r == r_whole && strcmp(part.error, whole.error) == 0);
        free(prefix);
        if (r != HTTP_PARSE_INCOMPLETE || have == size) {
            if (have == size)
                FUZZ_CHECK(r == r_whole);
            break;
        }
    }

    /* A pipelined follow-on request after the body. */
    if (r_whole == HTTP_PARSE_DONE) {
        size_t next = whole.head_len;
        if (whole.body_kind == HTTP_BODY_LENGTH)
            next = whole.content_length <= size - next ? next + (size_t)whole.content_length : size;
        size_t s2 = 0;
        if (http_parse_request(buf + next, size - next, MAX_HEAD, MAX_TARGET, &s2, &part) == HTTP_PARSE_DONE)
            check_request(buf + next, size - next, &part);
    }
    free(buf);
    return 0;
}
