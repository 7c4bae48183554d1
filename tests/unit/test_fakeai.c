/* fakeai: the content-token rule, word splitting, chunk JSON (checked with
 * the relay's own JSON inspector), fault parsing, and one in-process round
 * trip through the reactor (start, a streamed request, stats, stop). */
#include "demo/fakeai.h"
#include "demo/fakeai_wire.h"
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

TEST(fakeai_parse_fault_leaks_and_usage)
{
    fakeai_fault f;
    CHECK(fakeai_parse_fault(SLICE_LIT("echo:401"), &f) && f.kind == FAKEAI_FAULT_ECHO && f.arg == 401);
    CHECK(fakeai_parse_fault(SLICE_LIT("echo:400"), &f) && f.kind == FAKEAI_FAULT_ECHO && f.arg == 400);
    CHECK(fakeai_parse_fault(SLICE_LIT("echo:599"), &f) && f.kind == FAKEAI_FAULT_ECHO && f.arg == 599);
    CHECK(fakeai_parse_fault(SLICE_LIT("html:502"), &f) && f.kind == FAKEAI_FAULT_HTML && f.arg == 502);
    CHECK(fakeai_parse_fault(SLICE_LIT("html:400"), &f) && f.arg == 400);
    CHECK(fakeai_parse_fault(SLICE_LIT("echo-event"), &f) && f.kind == FAKEAI_FAULT_ECHO_EVENT && f.arg == 2);
    CHECK(fakeai_parse_fault(SLICE_LIT("no-usage"), &f) && f.kind == FAKEAI_FAULT_NO_USAGE);

    CHECK(!fakeai_parse_fault(SLICE_LIT("echo:399"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("echo:200"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("echo:600"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("echo"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("echo:"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("echo:40x"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("html:399"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("html:600"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("html"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("echo-event:3"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("no-usage:1"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("No-Usage"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("echo-events"), &f));
    /* A value that fails leaves the previous parse alone. */
    CHECK(fakeai_parse_fault(SLICE_LIT("html:418"), &f));
    CHECK(!fakeai_parse_fault(SLICE_LIT("echo:700"), &f) && f.kind == FAKEAI_FAULT_HTML && f.arg == 418);

    uint64_t p = 0, c = 0;
    CHECK(fakeai_parse_usage(SLICE_LIT("12,34"), &p, &c) && p == 12 && c == 34);
    CHECK(fakeai_parse_usage(SLICE_LIT("0,0"), &p, &c) && p == 0 && c == 0);
    CHECK(fakeai_parse_usage(SLICE_LIT("9007199254740991,1"), &p, &c) && p == FAKEAI_USAGE_MAX && c == 1);
    CHECK(!fakeai_parse_usage(SLICE_LIT("9007199254740992,1"), &p, &c));
    CHECK(!fakeai_parse_usage(SLICE_LIT("1,9007199254740992"), &p, &c));
    CHECK(!fakeai_parse_usage(SLICE_LIT("5"), &p, &c));
    CHECK(!fakeai_parse_usage(SLICE_LIT("5,"), &p, &c));
    CHECK(!fakeai_parse_usage(SLICE_LIT(",5"), &p, &c));
    CHECK(!fakeai_parse_usage(SLICE_LIT("1,2,3"), &p, &c));
    CHECK(!fakeai_parse_usage(SLICE_LIT("1, 2"), &p, &c));
    CHECK(!fakeai_parse_usage(SLICE_LIT("-1,2"), &p, &c));
    CHECK(!fakeai_parse_usage(SLICE_LIT("a,b"), &p, &c));
    CHECK(!fakeai_parse_usage(SLICE_LIT(""), &p, &c));
    CHECK(p == FAKEAI_USAGE_MAX && c == 1); /* failures write nothing */
}

TEST(fakeai_bearer_key_and_body_prefix)
{
    CHECK(slice_is(fakeai_bearer_key(SLICE_LIT("Bearer sk-123")), "sk-123"));
    CHECK(slice_is(fakeai_bearer_key(SLICE_LIT("bearer sk-123")), "sk-123"));
    CHECK(slice_is(fakeai_bearer_key(SLICE_LIT("Bearer ")), ""));
    CHECK(slice_is(fakeai_bearer_key(SLICE_LIT("Bearer")), "Bearer"));
    CHECK(slice_is(fakeai_bearer_key(SLICE_LIT("Basic dXNlcg==")), "Basic dXNlcg=="));

    char body[260];
    memset(body, 'x', sizeof body);
    CHECK_EQ_SIZE(fakeai_body_prefix((slice){body, 150}).len, 150);
    CHECK_EQ_SIZE(fakeai_body_prefix((slice){body, 200}).len, 200);
    CHECK_EQ_SIZE(fakeai_body_prefix((slice){body, sizeof body}).len, 200);
    memcpy(body + 199, "\xc3\xa9", 2); /* é straddles the cut: left out whole */
    CHECK_EQ_SIZE(fakeai_body_prefix((slice){body, sizeof body}).len, 199);
    memcpy(body + 198, "\xf0\x9f\x98\x80", 4);
    CHECK_EQ_SIZE(fakeai_body_prefix((slice){body, sizeof body}).len, 198);
    memcpy(body + 196, "\xf0\x9f\x98\x80", 4); /* ends right at the cut: kept */
    memcpy(body + 200, "yyyy", 4);
    CHECK_EQ_SIZE(fakeai_body_prefix((slice){body, sizeof body}).len, 200);
    memset(body, 0x80, sizeof body); /* no UTF-8 to save: cut at 200 */
    CHECK_EQ_SIZE(fakeai_body_prefix((slice){body, sizeof body}).len, 200);
}

static const char *formatted(wbuf *b)
{
    CHECK(!b->overflow && b->len < b->cap);
    b->ptr[b->len < b->cap ? b->len : b->cap - 1] = '\0';
    return b->ptr;
}

TEST(fakeai_leak_answers_exact)
{
    char out[1024];
    wbuf b = wbuf_over(out, sizeof out);
    fakeai_format_echo_error(&b, SLICE_LIT("sk-\"x"), SLICE_LIT("{\"a\":\"\n\"}"));
    CHECK_STR(formatted(&b), "{\"error\":{\"message\":\"Incorrect API key provided: sk-\\\"x. Request body began: "
                             "{\\\"a\\\":\\\"\\n\\\"}\",\"type\":\"invalid_request_error\",\"param\":null,"
                             "\"code\":\"invalid_api_key\"}}");
    CHECK(inspect(out).is_error);

    b = wbuf_over(out, sizeof out);
    fakeai_format_echo_event(&b, SLICE_LIT("sk-1"), SLICE_LIT("{}"));
    CHECK_STR(formatted(&b), "{\"error\":{\"message\":\"upstream failed for key sk-1; body began: {}\","
                             "\"type\":\"server_error\",\"param\":null,\"code\":null}}");
    CHECK(inspect(out).is_error);

    b = wbuf_over(out, sizeof out);
    fakeai_format_html_error(&b, 502, SLICE_LIT("sk-1"));
    CHECK_STR(formatted(&b), "<html><head><title>502</title></head><body><center><h1>502</h1></center><hr>"
                             "<center>nginx</center><!-- key: sk-1 --></body></html>");

    b = wbuf_over(out, sizeof out);
    fakeai_format_echo_error(&b, SLICE_LIT("k"), SLICE_LIT("0123456789"));
    CHECK_EQ_SIZE(b.len, 154);
    b = wbuf_over(out, 153); /* one short */
    fakeai_format_echo_error(&b, SLICE_LIT("k"), SLICE_LIT("0123456789"));
    CHECK(b.overflow);
}

static fakeai_reply_meta response_meta(void)
{
    static const slice words[] = {SLICE_LIT("Hi "), SLICE_LIT("\"you\"")};
    return (fakeai_reply_meta){
        .id = SLICE_LIT("resp_abc"),
        .item_id = SLICE_LIT("msg_abc"),
        .created = 1700000000,
        .model = SLICE_LIT("gpt-4o-mini"),
        .prompt_tokens = 5,
        .completion_tokens = 2,
        .words = words,
        .word_count = 2,
        .chunks = 2,
    };
}

TEST(fakeai_responses_json_exact)
{
    char out[2048];
    fakeai_reply_meta m = response_meta();
    static const char completed[] =
        "{\"id\":\"resp_abc\",\"object\":\"response\",\"created_at\":1700000000,\"status\":\"completed\","
        "\"model\":\"gpt-4o-mini\",\"output\":[{\"id\":\"msg_abc\",\"type\":\"message\",\"status\":\"completed\","
        "\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"annotations\":[],"
        "\"text\":\"Hi \\\"you\\\"\"}]}],\"usage\":{\"input_tokens\":5,\"input_tokens_details\":"
        "{\"cached_tokens\":0},\"output_tokens\":2,\"output_tokens_details\":{\"reasoning_tokens\":0},"
        "\"total_tokens\":7}}";
    wbuf b = wbuf_over(out, sizeof out);
    fakeai_format_response(&b, &m, true);
    CHECK_STR(formatted(&b), completed);
    inspect(out);
    CHECK(fakeai_text_bound(&m) >= strlen("Hi \\\"you\\\""));

    b = wbuf_over(out, sizeof out);
    fakeai_format_response_event(&b, &m, FAKEAI_RESPONSE_CREATED, 0, (slice){"", 0});
    CHECK_STR(formatted(&b), "{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_abc\","
                             "\"object\":\"response\",\"created_at\":1700000000,\"status\":\"in_progress\","
                             "\"model\":\"gpt-4o-mini\",\"output\":[],\"usage\":null}}");
    b = wbuf_over(out, sizeof out);
    fakeai_format_response_event(&b, &m, FAKEAI_RESPONSE_DELTA, 2, SLICE_LIT("\"you\""));
    CHECK_STR(formatted(&b), "{\"type\":\"response.output_text.delta\",\"sequence_number\":2,\"item_id\":\"msg_abc\","
                             "\"output_index\":0,\"content_index\":0,\"delta\":\"\\\"you\\\"\"}");
    b = wbuf_over(out, sizeof out);
    fakeai_format_response_event(&b, &m, FAKEAI_RESPONSE_COMPLETED, 3, (slice){"", 0});
    char want[sizeof completed + 64];
    snprintf(want, sizeof want, "{\"type\":\"response.completed\",\"sequence_number\":3,\"response\":%s}", completed);
    CHECK_STR(formatted(&b), want);
    CHECK_STR(fakeai_response_event_name(FAKEAI_RESPONSE_CREATED), "response.created");
    CHECK_STR(fakeai_response_event_name(FAKEAI_RESPONSE_DELTA), "response.output_text.delta");
    CHECK_STR(fakeai_response_event_name(FAKEAI_RESPONSE_COMPLETED), "response.completed");

    m.no_usage = true;
    b = wbuf_over(out, sizeof out);
    fakeai_format_response(&b, &m, true);
    CHECK(strstr(formatted(&b), "}]}],\"usage\":null}") != NULL);
}

TEST(fakeai_usage_left_out_on_no_usage)
{
    char out[2048];
    fakeai_reply_meta m = response_meta();
    m.id = SLICE_LIT("chatcmpl-abc");
    m.fingerprint = SLICE_LIT("fp_1");
    wbuf b = wbuf_over(out, sizeof out);
    fakeai_format_completion(&b, &m);
    CHECK_STR(formatted(&b), "{\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion\",\"created\":1700000000,"
                             "\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                             "\"content\":\"Hi \\\"you\\\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":"
                             "\"stop\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7},"
                             "\"system_fingerprint\":\"fp_1\"}");
    m.no_usage = true;
    b = wbuf_over(out, sizeof out);
    fakeai_format_completion(&b, &m);
    CHECK(strstr(formatted(&b), "\"usage\"") == NULL && strstr(out, "\"finish_reason\":\"stop\"}],\"system_") != NULL);
    inspect(out);
    b = wbuf_over(out, sizeof out);
    fakeai_format_embeddings(&b, &m);
    CHECK(strstr(formatted(&b), "\"usage\"") == NULL);
    m.no_usage = false;
    b = wbuf_over(out, sizeof out);
    fakeai_format_embeddings(&b, &m);
    CHECK(strstr(formatted(&b), "\"model\":\"gpt-4o-mini\",\"usage\":{\"prompt_tokens\":5,\"total_tokens\":5}}") != NULL);

    slice ids[] = {SLICE_LIT("a"), SLICE_LIT("mock-2")};
    b = wbuf_over(out, sizeof out);
    fakeai_format_models(&b, ids, 2);
    CHECK_STR(formatted(&b), "{\"object\":\"list\",\"data\":[{\"id\":\"a\",\"object\":\"model\",\"created\":1715367049,"
                             "\"owned_by\":\"system\"},{\"id\":\"mock-2\",\"object\":\"model\",\"created\":1715367049,"
                             "\"owned_by\":\"system\"}]}");
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
    CHECK(strstr(resp, "{\"open\":1,\"total\":1,\"requests\":1,\"resumed\":0,\"by_path\":{\"/v1/chat/completions\":1,"
                       "\"/v1/embeddings\":0,\"/v1/models\":0,\"/v1/responses\":0,\"other\":0}}") != NULL); /* pipelined after the stream */

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
                 "GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n"
                 "GET /_mock/stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    CHECK(send(fd, req, (size_t)n, 0) == n);
    run_and_read(l, fd, resp, sizeof resp, 100);
    CHECK(strstr(resp, "\"content\":\"tok0 tok1 \"") != NULL);
    CHECK(strstr(resp, "{\"object\":\"list\",\"data\":[{\"id\":\"demo\",\"object\":\"model\",\"created\":1715367049,"
                       "\"owned_by\":\"system\"}]}") != NULL); /* one model: the demo's list is as it was */
    CHECK(strstr(resp, "HTTP/1.1 404 Not Found\r\n") != NULL);
    CHECK(strstr(resp, "x-request-id") == NULL);
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

/* ---- the leaking faults, TRACE, the Responses API and x-request-id ---- */

static const char *find_last(const char *hay, const char *needle)
{
    const char *last = NULL;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
        last = p;
    return last;
}

TEST(fakeai_security_faults_on_the_reactor)
{
    loop *l = loop_new();
    CHECK(l != NULL);
    if (!l)
        return;
    fakeai_config cfg = {.chunks = 4, .model = "m0", .faults = true};
    const char *why = NULL;
    fakeai *f = fakeai_start(l, "127.0.0.1:0", &cfg, &why);
    CHECK(f != NULL);
    if (!f) {
        loop_free(l);
        return;
    }
    int fd = connect_to(fakeai_address(f));
    CHECK(fd >= 0);
    static const char req[] =
        "TRACE /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-t\r\n\r\n"
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-t\r\nX-Mock-Fault: echo:401\r\n"
        "Content-Length: 9\r\n\r\n{\"a\":\"b\"}"
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-t\r\nX-Mock-Fault: html:503\r\n"
        "Content-Length: 2\r\n\r\n{}"
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-t\r\nX-Mock-Fault: echo-event\r\n"
        "Content-Length: 15\r\n\r\n{\"stream\":true}"
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Mock-Fault: no-usage\r\nContent-Length: 55\r\n\r\n"
        "{\"stream\":true,\"stream_options\":{\"include_usage\":true}}"
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Mock-Usage: 7,9\r\nContent-Length: 2\r\n\r\n{}"
        "POST /v1/responses HTTP/1.1\r\nHost: t\r\nX-Mock-Chunks: 3\r\nContent-Length: 28\r\n\r\n"
        "{\"model\":\"r1\",\"stream\":true}"
        "POST /v1/responses HTTP/1.1\r\nHost: t\r\nX-Mock-Usage: 1,2\r\nContent-Length: 2\r\n\r\n{}"
        "GET /_mock/last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    CHECK(send(fd, req, sizeof req - 1, 0) == (ssize_t)(sizeof req - 1));
    static char resp[65536];
    run_and_read(l, fd, resp, sizeof resp, 200);

    CHECK(strstr(resp, "HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: 76\r\n") == resp);
    CHECK(strstr(resp, "\r\n\r\nTRACE /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-t\r\n\r\n"
                       "HTTP/1.1 401 ") != NULL);
    CHECK(strstr(resp, "X-Mock-Echo: sk-t\r\nWWW-Authenticate: Bearer realm=\"sk-t\"\r\n\r\n{\"error\":{\"message\":"
                       "\"Incorrect API key provided: sk-t. Request body began: {\\\"a\\\":\\\"b\\\"}\"") != NULL);
    CHECK(strstr(resp, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\n") != NULL);
    CHECK(strstr(resp, "<!-- key: sk-t --></body></html>") != NULL);
    /* echo-event: role, two contents, the error event, the body's end */
    CHECK(strstr(resp, "{\"content\":\"tok1 \"}") != NULL && strstr(resp, "{\"content\":\"tok2 \"}") != NULL);
    CHECK(strstr(resp, "data: {\"error\":{\"message\":\"upstream failed for key sk-t; body began: "
                       "{\\\"stream\\\":true}\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n\r\n"
                       "0\r\n\r\nHTTP/1.1 200 OK\r\n") != NULL);
    /* no-usage: "usage":null chunks as asked, but no usage chunk */
    CHECK(strstr(resp, "\"usage\":null") != NULL);
    CHECK(strstr(resp, "\"choices\":[],") == NULL);
    CHECK(strstr(resp, "\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":9,\"total_tokens\":16}") != NULL);
    CHECK_EQ_SIZE(count_of(resp, strlen(resp), "event: response.created\ndata: {\"type\":\"response.created\","), 1);
    CHECK_EQ_SIZE(count_of(resp, strlen(resp), "event: response.output_text.delta\ndata: "), 3);
    CHECK(strstr(resp, "\"delta\":\"tok2 \"}\n\n") != NULL);
    CHECK(strstr(resp, "\"model\":\"r1\"") != NULL);
    CHECK(strstr(resp, "\"usage\":{\"input_tokens\":1,\"input_tokens_details\":{\"cached_tokens\":0},"
                       "\"output_tokens\":2,") != NULL);
    CHECK(strstr(resp, "\"object\":\"response\"") != NULL && strstr(resp, "\"id\":\"resp_") != NULL);

    /* Every /v1 answer carries its own id; /_mock/last names the last one. */
    CHECK_EQ_SIZE(count_of(resp, strlen(resp), "\r\nx-request-id: req_"), 8);
    const char *first = strstr(resp, "x-request-id: req_"), *second = first ? strstr(first + 1, "x-request-id: ") : NULL;
    CHECK(first && second && strncmp(first, second, 14 + 28) != 0);
    const char *last_id = find_last(resp, "x-request-id: req_");
    const char *reported = strstr(resp, "\"request_id\":\"req_");
    CHECK(last_id && reported && strncmp(last_id + 14, reported + 14, 28) == 0 && reported[14 + 28] == '"');
    for (size_t i = 0; last_id && i < 24; i++)
        CHECK(strchr("0123456789abcdef", last_id[18 + i]) != NULL);
    CHECK(last_id && last_id[18 + 24] == '\r');

    close(fd);
    fakeai_stop(f);
    loop_free(l);
    arena_release_cached();
}
