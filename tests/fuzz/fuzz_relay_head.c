/* The heads a relay writes: whatever request or response head parses, the
 * room the relay sizes for its copy suffices, and the copy parses again
 * (when its lines are not more than the parser takes).
 * The input is a request head, a NUL byte, then a response head; the first
 * byte picks the answer's options. */
#include "fuzz.h"
#include "gateway/relay_head.h"

/* ADDED_MAX: more than the lines either head adds to those it copies. */
enum { MAX_HEAD = 16 * 1024, REPARSE_MAX = 64 * 1024, ADDED_MAX = 16 };

static http_request req, back_req;
static http_response res, back_res;
static upstream_target target;
static char upstream_key[] = "Bearer sk-fuzz-upstream";

static void request_head(const char *buf, size_t len, uint8_t opts)
{
    size_t scanned = 0;
    if (http_parse_request(buf, len, MAX_HEAD, MAX_HEAD, &scanned, &req) != HTTP_PARSE_DONE)
        return;
    request_head_spec spec = {.http = &req, .target = &target,
                              .org = opts & 1 ? "org-fuzz" : NULL, .project = opts & 2 ? "proj-fuzz" : NULL,
                              .traceparent = SLICE_LIT("00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"),
                              .req_id = SLICE_LIT("fuzz-request-id"), .upload = (opts & 4) != 0,
                              .body_len = opts & 8 ? 999999999999999u : 0}; /* the most the parser takes back */
    size_t room = relay_request_head_room(&spec);
    char *mem = malloc(room);
    FUZZ_CHECK(mem != NULL);
    wbuf b = wbuf_over(mem, room);
    FUZZ_CHECK(relay_write_request_head(&b, &spec));
    size_t again = 0;
    if (req.header_count + ADDED_MAX <= HTTP_MAX_HEADERS) { /* else more lines than the parser takes */
        FUZZ_CHECK(http_parse_request(mem, b.len, REPARSE_MAX, REPARSE_MAX, &again, &back_req) == HTTP_PARSE_DONE);
        FUZZ_CHECK(back_req.head_len == b.len && back_req.method == req.method);
    }
    free(mem);
}

static void answer_head(const char *buf, size_t len, uint8_t opts)
{
    if (http_parse_response(buf, len, MAX_HEAD, false, &res) != HTTP_PARSE_DONE || res.status < 200)
        return;
    static const limit_verdict most = {.limit_requests = UINT64_MAX, .remaining_requests = UINT64_MAX,
                                       .reset_requests_us = UINT64_MAX, .limit_tokens = UINT64_MAX,
                                       .remaining_tokens = UINT64_MAX, .reset_tokens_us = UINT64_MAX};
    secrets keys = {.item = {SLICE_LIT("sk-fuzz-secret")}, .count = 1};
    answer_head_spec spec = {.head = &res, .status = res.status, .body_kind = res.body_kind,
                             .content_length = res.content_length, .stream = opts & 16,
                             .head_method = opts & 32, .client_chunked = opts & 64, .keep_alive = opts & 128,
                             .req_id = SLICE_LIT("fuzz-request-id"), .limits = opts & 1 ? &most : NULL,
                             .secrets = &keys};
    size_t room = relay_answer_head_room(&spec);
    char *mem = malloc(room);
    FUZZ_CHECK(mem != NULL);
    wbuf b = wbuf_over(mem, room);
    FUZZ_CHECK(relay_write_answer_head(&b, &spec));
    if (res.header_count + ADDED_MAX <= HTTP_MAX_HEADERS) {
        FUZZ_CHECK(http_parse_response(mem, b.len, REPARSE_MAX, spec.head_method, &back_res) == HTTP_PARSE_DONE);
        FUZZ_CHECK(back_res.head_len == b.len && back_res.status == res.status);
    }
    free(mem);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!target.base.path[0]) { /* what upstream_target_init makes of http://127.0.0.1:9/base/v1 with a key */
        FUZZ_CHECK(url_parse("http://127.0.0.1:9/base/v1", &target.base, &(const char *){NULL}) == 0);
        target.auth_header = upstream_key;
    }
    if (size < 1)
        return 0;
    uint8_t opts = data[0];
    char *buf = fuzz_copy(data + 1, size - 1);
    size_t len = size - 1;
    const char *nul = memchr(buf, '\0', len);
    size_t req_len = nul ? (size_t)(nul - buf) : len;
    request_head(buf, req_len, opts);
    if (nul)
        answer_head(nul + 1, len - req_len - 1, opts);
    free(buf);
    return 0;
}
