/* fakeai: the content-token rule, word splitting, chunk JSON (checked with
 * the relay's own JSON inspector), fault parsing, and one in-process round
 * trip through the reactor (start, a streamed request, stats, stop). */
#include "demo/fakeai.h"
#include "unit.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/arena.h"
#include "gateway/json.h"

static const char probe[] = "q\"b\\s\n<\xc3\xa9\xf0\x9f\x98\x80> ";

static bool slice_is(slice s, const char *lit) { return slice_eq(s, slice_of(lit)); }

TEST(fakeai_default_token_rule)
{
    char scratch[FAKEAI_TOKEN_SCRATCH];
    CHECK(slice_is(fakeai_default_token(0, scratch), "tok0 "));
    CHECK(slice_is(fakeai_default_token(3, scratch), "tok3 "));
    CHECK(slice_is(fakeai_default_token(4, scratch), probe));
    CHECK(slice_is(fakeai_default_token(9, scratch), probe));
    CHECK(slice_is(fakeai_default_token(10, scratch), "tok10 "));
    CHECK(slice_is(fakeai_default_token(123456, scratch), "tok123456 "));
    CHECK(slice_is(fakeai_default_token((size_t)-3, scratch), "tok18446744073709551613 "));
}

TEST(fakeai_split_words_keeps_spaces)
{
    const char *text = "  Hello,  world!\tThis is\nit ";
    slice w[8];
    size_t n = fakeai_split_words(slice_of(text), w, 8);
    CHECK_EQ_SIZE(n, 5);
    CHECK(slice_is(w[0], "  Hello,  "));
    CHECK(slice_is(w[1], "world!\t"));
    CHECK(slice_is(w[2], "This "));
    CHECK(slice_is(w[3], "is\n"));
    CHECK(slice_is(w[4], "it "));
    char joined[64] = "";
    for (size_t i = 0; i < n; i++)
        strncat(joined, w[i].ptr, w[i].len);
    CHECK_STR(joined, text);

    CHECK_EQ_SIZE(fakeai_split_words(slice_of("a b c"), w, 2), 3); /* counts past max */
    CHECK(slice_is(w[1], "b "));
    CHECK_EQ_SIZE(fakeai_split_words(slice_of(""), w, 8), 0);
    CHECK_EQ_SIZE(fakeai_split_words(slice_of("one"), NULL, 0), 1);
}

static fakeai_reply_meta test_meta(bool usage_null)
{
    return (fakeai_reply_meta){
        .id = SLICE_LIT("chatcmpl-abc"),
        .created = 1700000000,
        .model = SLICE_LIT("gpt-4o-mini"),
        .fingerprint = SLICE_LIT("fp_123"),
        .usage_null = usage_null,
        .prompt_tokens = 11,
        .completion_tokens = 8,
    };
}

static void format(char *out, size_t cap, const fakeai_reply_meta *m, fakeai_chunk_kind kind, slice content)
{
    wbuf b = wbuf_over(out, cap - 1);
    fakeai_format_chunk(&b, m, kind, content);
    CHECK(!b.overflow);
    out[b.len] = '\0';
}

/* The chunk is one valid JSON object for the relay's inspector. */
static json_chunk_info inspect(const char *json)
{
    arena a;
    arena_init(&a);
    json_chunk_info info;
    CHECK(json_inspect_chunk(json, strlen(json), &a, &info) == 0);
    arena_reset(&a);
    return info;
}

TEST(fakeai_chunk_json_exact)
{
    char out[1024];
    fakeai_reply_meta m = test_meta(false);
    format(out, sizeof out, &m, FAKEAI_CHUNK_ROLE, (slice){"", 0});
    CHECK_STR(out, "{\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
                   "\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_123\",\"choices\":[{\"index\":0,"
                   "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}");
    format(out, sizeof out, &m, FAKEAI_CHUNK_CONTENT, SLICE_LIT("tok0 "));
    CHECK_STR(out, "{\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
                   "\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_123\",\"choices\":[{\"index\":0,"
                   "\"delta\":{\"content\":\"tok0 \"},\"logprobs\":null,\"finish_reason\":null}]}");
    format(out, sizeof out, &m, FAKEAI_CHUNK_FINISH, (slice){"", 0});
    CHECK_STR(out, "{\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
                   "\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_123\",\"choices\":[{\"index\":0,"
                   "\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}");
    format(out, sizeof out, &m, FAKEAI_CHUNK_USAGE, (slice){"", 0});
    CHECK_STR(out, "{\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
                   "\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_123\",\"choices\":[],"
                   "\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":8,\"total_tokens\":19}}");
}

TEST(fakeai_chunk_json_parses)
{
    char out[1024];
    for (int with_usage = 0; with_usage < 2; with_usage++) {
        fakeai_reply_meta m = test_meta(with_usage);
        static const fakeai_chunk_kind kinds[] = {FAKEAI_CHUNK_ROLE, FAKEAI_CHUNK_CONTENT, FAKEAI_CHUNK_FINISH};
        for (size_t k = 0; k < 3; k++) {
            format(out, sizeof out, &m, kinds[k], slice_of(probe));
            json_chunk_info info = inspect(out);
            CHECK(!info.has_usage && !info.usage_only && !info.is_error);
            CHECK((strstr(out, ",\"usage\":null}") != NULL) == (with_usage == 1));
        }
        format(out, sizeof out, &m, FAKEAI_CHUNK_USAGE, (slice){"", 0});
        json_chunk_info info = inspect(out);
        CHECK(info.usage_only && info.has_usage);
        CHECK(info.prompt_tokens == 11 && info.completion_tokens == 8);
    }
}

TEST(fakeai_chunk_json_escapes_content)
{
    char out[1024];
    fakeai_reply_meta m = test_meta(false);
    format(out, sizeof out, &m, FAKEAI_CHUNK_CONTENT, slice_of(probe));
    CHECK(strstr(out, "\"delta\":{\"content\":\"q\\\"b\\\\s\\n<\xc3\xa9\xf0\x9f\x98\x80> \"}") != NULL);
    static const char ctl[] = {'a', 1, '\t', 0x1f, 'z'};
    format(out, sizeof out, &m, FAKEAI_CHUNK_CONTENT, (slice){ctl, sizeof ctl});
    CHECK(strstr(out, "\"content\":\"a\\u0001\\t\\u001fz\"") != NULL);
    inspect(out);
}

TEST(fakeai_chunk_json_overflow_is_flagged)
{
    char out[64];
    fakeai_reply_meta m = test_meta(false);
    wbuf b = wbuf_over(out, sizeof out);
    fakeai_format_chunk(&b, &m, FAKEAI_CHUNK_ROLE, (slice){"", 0});
    CHECK(b.overflow);
}

TEST(fakeai_parse_fault_values)
{
    fakeai_fault f;
    CHECK(fakeai_parse_fault(SLICE_LIT("status:503"), &f) && f.kind == FAKEAI_FAULT_STATUS && f.arg == 503);
    CHECK(fakeai_parse_fault(SLICE_LIT("status:200"), &f) && f.arg == 200);
    CHECK(fakeai_parse_fault(SLICE_LIT("close-after:3"), &f) && f.kind == FAKEAI_FAULT_CLOSE_AFTER && f.arg == 3);
    CHECK(fakeai_parse_fault(SLICE_LIT("reset-after:0"), &f) && f.kind == FAKEAI_FAULT_RESET_AFTER && f.arg == 0);
    CHECK(fakeai_parse_fault(SLICE_LIT("hang-after:7"), &f) && f.kind == FAKEAI_FAULT_HANG_AFTER && f.arg == 7);
    CHECK(fakeai_parse_fault(SLICE_LIT("hang"), &f) && f.kind == FAKEAI_FAULT_HANG);
    CHECK(fakeai_parse_fault(SLICE_LIT("garbage"), &f) && f.kind == FAKEAI_FAULT_GARBAGE);
    CHECK(fakeai_parse_fault(SLICE_LIT("bad-chunked"), &f) && f.kind == FAKEAI_FAULT_BAD_CHUNKED && f.arg == 2);
    CHECK(fakeai_parse_fault(SLICE_LIT("close-delimited"), &f) && f.kind == FAKEAI_FAULT_CLOSE_DELIMITED);
    CHECK(fakeai_parse_fault(SLICE_LIT("trickle"), &f) && f.kind == FAKEAI_FAULT_TRICKLE);
    CHECK(fakeai_parse_fault(SLICE_LIT("crlf"), &f) && f.kind == FAKEAI_FAULT_CRLF);
    CHECK(fakeai_parse_fault(SLICE_LIT("comments"), &f) && f.kind == FAKEAI_FAULT_COMMENTS);

    CHECK(!fakeai_parse_fault(SLICE_LIT("status:99"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("status:600"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("status:"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("status:4x9"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("status"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("hang:1"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("close-after"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("close-after:-1"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("close-after:99999999999999999999"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("Garbage"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT(""), &f));
}

/* ---- one round trip through the reactor ---- */

static void stop_loop(void *ctx) { loop_stop(ctx); }

/* Runs the loop for `ms`, then reads whatever the client socket holds. */
static size_t run_and_read(loop *l, int fd, char *buf, size_t cap, uint64_t ms)
{
    loop_timer t = {0};
    loop_timer_arm(l, &t, ms, stop_loop, l);
    loop_run(l);
    size_t len = 0;
    while (len < cap - 1) {
        ssize_t n = recv(fd, buf + len, cap - 1 - len, MSG_DONTWAIT);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    return len;
}

static int connect_to(const char *address)
{
    const char *colon = strrchr(address, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

TEST(fakeai_serves_on_the_reactor)
{
    loop *l = loop_new();
    CHECK(l != NULL);
    if (!l)
        return;
    fakeai_config cfg = {.reply_text = "Hello there, friend.", .model = "demo", .faults = true, .delay_ms = 1};
    const char *why = NULL;
    fakeai *f = fakeai_start(l, "127.0.0.1:0", &cfg, &why);
    CHECK(f != NULL);
    if (!f) {
        loop_free(l);
        return;
    }
    CHECK(strncmp(fakeai_address(f), "127.0.0.1:", 10) == 0 && atoi(fakeai_address(f) + 10) > 0);

    int fd = connect_to(fakeai_address(f));
    CHECK(fd >= 0);
    static const char body[] = "{\"stream\":true,\"stream_options\":{\"include_usage\":true}}";
    char req[512];
    int n = snprintf(req, sizeof req,
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n%s"
                     "GET /_mock/stats HTTP/1.1\r\nHost: t\r\n\r\n",
                     sizeof body - 1, body);
    CHECK(send(fd, req, (size_t)n, 0) == n);
    static char resp[16384];
    run_and_read(l, fd, resp, sizeof resp, 200);
    CHECK(strncmp(resp, "HTTP/1.1 200 OK\r\n", 17) == 0);
    CHECK(strstr(resp, "Content-Type: text/event-stream; charset=utf-8\r\n") != NULL);
    CHECK(strstr(resp, "\"model\":\"demo\"") != NULL);
    CHECK(strstr(resp, "{\"content\":\"Hello \"}") != NULL);
    CHECK(strstr(resp, "{\"content\":\"there, \"}") != NULL);
    CHECK(strstr(resp, "{\"content\":\"friend.\"}") != NULL);
    CHECK(strstr(resp, "\"completion_tokens\":3,") != NULL);
    CHECK(strstr(resp, "data: [DONE]\n\n\r\n0\r\n\r\n") != NULL);
    CHECK(strstr(resp, "{\"open\":1,\"total\":1,\"requests\":1,\"resumed\":0}") != NULL); /* pipelined after the stream */

    /* Without faults, X-Mock-* is ignored and /_mock/ is a 404. */
    fakeai_stop(f);
    close(fd);
    cfg.faults = false;
    cfg.reply_text = NULL;
    cfg.chunks = 2;
    cfg.delay_ms = 0;
    f = fakeai_start(l, "127.0.0.1:0", &cfg, &why);
    CHECK(f != NULL);
    if (!f) {
        loop_free(l);
        return;
    }
    fd = connect_to(fakeai_address(f));
    n = snprintf(req, sizeof req,
                 "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Mock-Fault: garbage\r\nContent-Length: 2\r\n\r\n{}"
                 "GET /_mock/stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    CHECK(send(fd, req, (size_t)n, 0) == n);
    run_and_read(l, fd, resp, sizeof resp, 100);
    CHECK(strstr(resp, "\"content\":\"tok0 tok1 \"") != NULL);
    CHECK(strstr(resp, "HTTP/1.1 404 Not Found\r\n") != NULL);
    fakeai_stop(f); /* the closing connection is still lingering: freed here */
    close(fd);

    CHECK(fakeai_start(l, "127.0.0.1:notaport", &cfg, &why) == NULL && why != NULL);
    CHECK(fakeai_start(l, "nocolon", &cfg, &why) == NULL);
    loop_free(l);
    arena_release_cached();
}

/* ---- a reader that pauses, then drains ---- */

static bool ends_with(const char *buf, size_t len, const char *tail)
{
    size_t n = strlen(tail);
    return len >= n && memcmp(buf + len - n, tail, n) == 0;
}

static size_t count_of(const char *buf, size_t len, const char *needle)
{
    size_t count = 0, n = strlen(needle);
    for (const char *p = buf; (p = memmem(p, len - (size_t)(p - buf), needle, n)) != NULL; p += n)
        count++;
    return count;
}

/* Runs the loop for `ms`, then appends what the client socket holds. */
static size_t run_and_drain(loop *l, int fd, char *buf, size_t cap, size_t *len, uint64_t ms)
{
    loop_timer t = {0};
    loop_timer_arm(l, &t, ms, stop_loop, l);
    loop_run(l);
    size_t got = 0;
    while (*len < cap) {
        ssize_t n = recv(fd, buf + *len, cap - *len, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        *len += (size_t)n;
        got += (size_t)n;
    }
    return got;
}

/* The stream stops producing at its output high-water mark while the socket
 * is full. Once the reader drains, a single flush can empty the buffer; the
 * stream must then produce again although no byte is left to ask for
 * EPOLLOUT. Regression: it stalled there for good. */
TEST(fakeai_stream_resumes_after_reader_pause)
{
    enum { CHUNKS = 20000, IDLE_SLICES = 200, MAX_SLICES = 4000 };
    loop *l = loop_new();
    CHECK(l != NULL);
    if (!l)
        return;
    fakeai_config cfg = {.chunks = CHUNKS};
    const char *why = NULL;
    fakeai *f = fakeai_start(l, "127.0.0.1:0", &cfg, &why);
    CHECK(f != NULL);
    size_t cap = (size_t)16 << 20; /* the ~5.4 MB stream with room to spare */
    char *buf = malloc(cap);
    CHECK(buf != NULL);
    if (!f || !buf) {
        free(buf);
        fakeai_stop(f);
        loop_free(l);
        return;
    }

    /* A small receive buffer, set before connecting so the window honours it. */
    const char *colon = strrchr(fakeai_address(f), ':');
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    int rcvbuf = 64 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    static const char req[] = "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 15\r\n\r\n"
                              "{\"stream\":true}";
    CHECK(send(fd, req, sizeof req - 1, 0) == (ssize_t)(sizeof req - 1));

    /* Not reading: the kernel buffers fill and the mock stops at its mark. */
    loop_timer pause = {0};
    loop_timer_arm(l, &pause, 150, stop_loop, l);
    loop_run(l);

    /* Now read everything, in short slices of loop time. */
    static const char tail[] = "data: [DONE]\n\n\r\n0\r\n\r\n";
    size_t len = 0, idle = 0;
    for (size_t i = 0; i < MAX_SLICES && idle < IDLE_SLICES && !ends_with(buf, len, tail); i++)
        idle = run_and_drain(l, fd, buf, cap, &len, 5) ? 0 : idle + 1;
    CHECK(ends_with(buf, len, tail));
    CHECK(len > 4 * 1024 * 1024);
    CHECK(len >= 17 && memcmp(buf, "HTTP/1.1 200 OK\r\n", 17) == 0);
    CHECK_EQ_SIZE(count_of(buf, len, "\"delta\":{\"content\":"), CHUNKS);
    CHECK(count_of(buf, len, "{\"content\":\"tok19998 \"}") == 1);
    CHECK(count_of(buf, len, "\"finish_reason\":\"stop\"") == 1);

    free(buf);
    close(fd);
    fakeai_stop(f);
    loop_free(l);
    arena_release_cached();
}
