/* HTTP response heads: a head complete in the whole input is INCOMPLETE in
 * every shorter prefix and the same head in every longer one; framing
 * follows the status and the request method. */
#include "fuzz.h"
#include "http/http.h"

enum { MAX_HEAD = 2048 };

static int within(const char *buf, size_t len, slice s)
{
    return s.len == 0 || (s.ptr >= buf && s.ptr + s.len <= buf + len);
}

static http_response whole, part;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_rng rng = fuzz_rng_from(data, size);
    bool head = (fuzz_next(&rng) & 7) == 0;
    char *buf = fuzz_copy(data, size);
    http_parse_result r = http_parse_response(buf, size, MAX_HEAD, head, &whole);
    if (r != HTTP_PARSE_DONE && r != HTTP_PARSE_INCOMPLETE)
        FUZZ_CHECK(whole.error != NULL);
    if (r == HTTP_PARSE_INCOMPLETE)
        FUZZ_CHECK(size <= MAX_HEAD && (size < 5 || memcmp(buf, "HTTP/", 5) == 0));
    if (r == HTTP_PARSE_DONE) {
        size_t h = whole.head_len;
        FUZZ_CHECK(whole.error == NULL);
        FUZZ_CHECK(h > 0 && h <= size && h <= MAX_HEAD && buf[h - 1] == '\n');
        FUZZ_CHECK(memcmp(buf, "HTTP/1.", 7) == 0);
        FUZZ_CHECK(whole.status >= 100 && whole.status <= 999);
        FUZZ_CHECK(whole.header_count <= HTTP_MAX_HEADERS);
        for (size_t i = 0; i < whole.header_count; i++)
            FUZZ_CHECK(whole.headers[i].name.len > 0 && within(buf, h, whole.headers[i].name) &&
                       within(buf, h, whole.headers[i].value));
        FUZZ_CHECK(within(buf, h, whole.content_type));
        size_t crlf = 0, lf = 0;
        for (const char *nl = memchr(buf, '\n', h); nl; nl = memchr(nl + 1, '\n', (size_t)(buf + h - nl - 1)))
            *(nl > buf && nl[-1] == '\r' ? &crlf : &lf) += 1;
        FUZZ_CHECK(crlf == 0 || lf == 0); /* line ends of one kind */
        if (head || whole.status < 200 || whole.status == 204 || whole.status == 304)
            FUZZ_CHECK(whole.body_kind == HTTP_BODY_NONE && whole.content_length == 0);
        if (whole.body_kind == HTTP_BODY_UNTIL_CLOSE)
            FUZZ_CHECK(!whole.keep_alive);
        if (whole.body_kind != HTTP_BODY_LENGTH)
            FUZZ_CHECK(whole.content_length == 0);

        /* Prefixes: shorter ones are incomplete, longer ones the same head. */
        size_t k = 0;
        while (k < size) {
            k += fuzz_piece(&rng, size - k);
            char *prefix = fuzz_copy(data, k);
            http_parse_result rp = http_parse_response(prefix, k, MAX_HEAD, head, &part);
            if (k < h) {
                FUZZ_CHECK(rp == HTTP_PARSE_INCOMPLETE);
            } else {
                FUZZ_CHECK(rp == HTTP_PARSE_DONE);
                FUZZ_CHECK(part.head_len == h && part.status == whole.status);
                FUZZ_CHECK(part.body_kind == whole.body_kind && part.content_length == whole.content_length);
                FUZZ_CHECK(part.keep_alive == whole.keep_alive && part.header_count == whole.header_count);
            }
            free(prefix);
        }
    }
    free(buf);
    return 0;
}
