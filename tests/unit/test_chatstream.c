/* The /chat/stream event writer: exact frames, HTML-safe JSON escaping that
 * round-trips, UTF-8 kept, ill-formed bytes replaced, and the pass-through
 * of content that arrives still JSON-escaped. */
#include <stdio.h>
#include <string.h>

#include "gateway/chatstream.h"
#include "gateway/json.h"
#include "jsonstr.h"
#include "unit.h"

static char out[4096];

static const char *message(slice content)
{
    wbuf b = wbuf_over(out, sizeof out - 1);
    chatstream_write_message(&b, content);
    CHECK(!b.overflow);
    out[b.len] = '\0';
    return out;
}

static bool message_json_clean;

static const char *message_json(slice escaped)
{
    wbuf b = wbuf_over(out, sizeof out - 1);
    message_json_clean = chatstream_write_message_json(&b, escaped);
    CHECK(!b.overflow);
    out[b.len] = '\0';
    return out;
}

static const char head[] = "event: message\ndata: {\"content\":\"";
static const char tail[] = "\"}\n\n";

/* The JSON string inside a message frame, checked for the frame around it. */
static bool frame_contents(const char *frame, slice *contents)
{
    size_t len = strlen(frame);
    if (len < sizeof head - 1 + sizeof tail - 1 || memcmp(frame, head, sizeof head - 1) != 0 ||
        memcmp(frame + len - (sizeof tail - 1), tail, sizeof tail - 1) != 0)
        return false;
    *contents = (slice){frame + sizeof head - 1, len - (sizeof head - 1) - (sizeof tail - 1)};
    return true;
}

/* What the frame is for a browser: the data line a single line of valid
 * JSON, nothing HTML could act on, and the content decoded. */
static bool decodes_to(const char *frame, slice want)
{
    slice c;
    if (!frame_contents(frame, &c))
        return false;
    for (size_t i = 0; i < c.len; i++)
        if (c.ptr[i] == '<' || c.ptr[i] == '>' || c.ptr[i] == '&' || c.ptr[i] == '\n' || c.ptr[i] == '\r')
            return false;
    if (strstr(frame, "\xe2\x80\xa8") || strstr(frame, "\xe2\x80\xa9"))
        return false;
    char dec[4096];
    size_t n = 0;
    return jsonstr_decode(c.ptr, c.len, dec, sizeof dec, &n) && n == want.len && memcmp(dec, want.ptr, n) == 0;
}

#define FRAME(s) "event: message\ndata: {\"content\":\"" s "\"}\n\n"

TEST(chatstream_message_plain)
{
    CHECK_STR(message(SLICE_LIT("Hello, world")), FRAME("Hello, world"));
    CHECK_STR(message(SLICE_LIT("")), FRAME(""));
    CHECK(decodes_to(message(SLICE_LIT("Hello, world")), SLICE_LIT("Hello, world")));
}

TEST(chatstream_message_quotes_backslashes_controls)
{
    CHECK_STR(message(SLICE_LIT("say \"hi\"")), FRAME("say \\\"hi\\\""));
    CHECK_STR(message(SLICE_LIT("C:\\dir\\")), FRAME("C:\\\\dir\\\\"));
    CHECK_STR(message(SLICE_LIT("a\nb\r\nc\td")), FRAME("a\\nb\\r\\nc\\td"));
    CHECK_STR(message(SLICE_LIT("\x01\x08\x0c\x1f\x7f")), FRAME("\\u0001\\u0008\\u000c\\u001f\x7f"));
    const char nul[] = {'a', '\0', 'b'};
    CHECK_STR(message((slice){nul, 3}), FRAME("a\\u0000b"));
    CHECK(decodes_to(message((slice){nul, 3}), (slice){nul, 3}));
    CHECK(decodes_to(message(SLICE_LIT("q\"b\\n\n\r\t\x01\x1f")), SLICE_LIT("q\"b\\n\n\r\t\x01\x1f")));
    /* an SSE data field ends at a line end: none may get through raw */
    CHECK(strchr(message(SLICE_LIT("x\n\ndata: injected\n\n")) + sizeof head - 1, '\n') ==
          out + strlen(out) - 2);
}

TEST(chatstream_message_is_html_safe)
{
    CHECK_STR(message(SLICE_LIT("</script>")), FRAME("\\u003c/script\\u003e"));
    CHECK_STR(message(SLICE_LIT("<img src=x onerror=alert(1)>")),
              FRAME("\\u003cimg src=x onerror=alert(1)\\u003e"));
    CHECK_STR(message(SLICE_LIT("a && b")), FRAME("a \\u0026\\u0026 b"));
    CHECK_STR(message(SLICE_LIT("<!-- x -->")), FRAME("\\u003c!-- x --\\u003e"));
    CHECK(decodes_to(message(SLICE_LIT("</script><script>alert(1)</script>")),
                     SLICE_LIT("</script><script>alert(1)</script>")));
    CHECK(decodes_to(message(SLICE_LIT("<img src=x onerror=alert(1)>")), SLICE_LIT("<img src=x onerror=alert(1)>")));
}

TEST(chatstream_message_keeps_utf8)
{
    CHECK_STR(message(SLICE_LIT("h\xc3\xa9llo, \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e")),
              FRAME("h\xc3\xa9llo, \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"));
    CHECK_STR(message(SLICE_LIT("\xf0\x9f\x98\x80 \xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x92\xbb")),
              FRAME("\xf0\x9f\x98\x80 \xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x92\xbb"));
    CHECK(decodes_to(message(SLICE_LIT("\xf0\x9f\x98\x80")), SLICE_LIT("\xf0\x9f\x98\x80")));
    /* the highest code point, and the edges of each length */
    CHECK_STR(message(SLICE_LIT("\xf4\x8f\xbf\xbf\xc2\x80\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf")),
              FRAME("\xf4\x8f\xbf\xbf\xc2\x80\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf"));
    /* line and paragraph separators end lines in old JavaScript */
    CHECK_STR(message(SLICE_LIT("a\xe2\x80\xa8" "b\xe2\x80\xa9")), FRAME("a\\u2028b\\u2029"));
    CHECK(decodes_to(message(SLICE_LIT("a\xe2\x80\xa8" "b")), SLICE_LIT("a\xe2\x80\xa8" "b")));
}

TEST(chatstream_message_replaces_ill_formed_utf8)
{
    CHECK_STR(message(SLICE_LIT("a\xff" "b")), FRAME("a\\ufffdb"));
    CHECK_STR(message(SLICE_LIT("\x80")), FRAME("\\ufffd"));
    CHECK_STR(message(SLICE_LIT("\xc3")), FRAME("\\ufffd"));                 /* truncated at the end */
    CHECK_STR(message(SLICE_LIT("\xc3" "a")), FRAME("\\ufffda"));            /* truncated before ASCII */
    CHECK_STR(message(SLICE_LIT("\xc0\xaf")), FRAME("\\ufffd\\ufffd"));      /* overlong */
    CHECK_STR(message(SLICE_LIT("\xe0\x80\xaf")), FRAME("\\ufffd\\ufffd\\ufffd"));
    CHECK_STR(message(SLICE_LIT("\xed\xa0\x80")), FRAME("\\ufffd\\ufffd\\ufffd")); /* a surrogate */
    CHECK_STR(message(SLICE_LIT("\xf4\x90\x80\x80")), FRAME("\\ufffd\\ufffd\\ufffd\\ufffd"));
    CHECK_STR(message(SLICE_LIT("\xf0\x9f\x98")), FRAME("\\ufffd"));         /* a truncated emoji: one */
    CHECK_STR(message(SLICE_LIT("\xf0\x9f\x98<")), FRAME("\\ufffd\\u003c"));
    CHECK_STR(message(SLICE_LIT("\xe6\x97\xa5\xe6\x97")), FRAME("\xe6\x97\xa5\\ufffd"));
    CHECK(decodes_to(message(SLICE_LIT("\xfe")), SLICE_LIT("\xef\xbf\xbd")));
}

TEST(chatstream_message_json_copies_well_formed_escapes)
{
    static const char in[] = "Hi \\\"there\\\"\\\\ \\/ \\b\\f\\n\\r\\t \\u00e9 \\ud83d\\ude00 \\u0000 caf\xc3\xa9 \xf0\x9f\x98\x80";
    CHECK_STR(message_json(SLICE_LIT(in)), FRAME("Hi \\\"there\\\"\\\\ \\/ \\b\\f\\n\\r\\t \\u00e9 \\ud83d\\ude00 \\u0000 caf\xc3\xa9 \xf0\x9f\x98\x80"));
    CHECK(message_json_clean);
    static const char want[] = "Hi \"there\"\\ / \b\f\n\r\t \xc3\xa9 \xf0\x9f\x98\x80 \0 caf\xc3\xa9 \xf0\x9f\x98\x80";
    CHECK(decodes_to(out, (slice){want, sizeof want - 1}));
    CHECK_STR(message_json(SLICE_LIT("\\u003C/script\\u003E")), FRAME("\\u003C/script\\u003E"));
    CHECK(message_json_clean);
    CHECK_STR(message_json(SLICE_LIT("")), FRAME(""));
    CHECK(message_json_clean);
}

TEST(chatstream_message_json_makes_raw_markup_safe)
{
    CHECK_STR(message_json(SLICE_LIT("</script><img src=x onerror=alert(1)> & co")),
              FRAME("\\u003c/script\\u003e\\u003cimg src=x onerror=alert(1)\\u003e \\u0026 co"));
    CHECK(message_json_clean); /* valid JSON as it was: made safe, not repaired */
    CHECK_STR(message_json(SLICE_LIT("x\xe2\x80\xa8y")), FRAME("x\\u2028y"));
    CHECK(message_json_clean);
}

TEST(chatstream_message_json_repairs)
{
    CHECK_STR(message_json(SLICE_LIT("a\\ud800b")), FRAME("a\\ufffdb")); /* lone high surrogate */
    CHECK(!message_json_clean);
    CHECK_STR(message_json(SLICE_LIT("\\ud800\\u0041")), FRAME("\\ufffd\\u0041"));
    CHECK(!message_json_clean);
    CHECK_STR(message_json(SLICE_LIT("\\udc00")), FRAME("\\ufffd")); /* lone low surrogate */
    CHECK(!message_json_clean);
    CHECK_STR(message_json(SLICE_LIT("\\ude00\\ud83d")), FRAME("\\ufffd\\ufffd")); /* pair the wrong way round */
    CHECK(!message_json_clean);
    CHECK_STR(message_json(SLICE_LIT("\\x41")), FRAME("\\\\x41"));  /* not an escape */
    CHECK(!message_json_clean);
    CHECK_STR(message_json(SLICE_LIT("\\u12")), FRAME("\\\\u12"));  /* truncated */
    CHECK(!message_json_clean);
    CHECK_STR(message_json(SLICE_LIT("\\u12g4")), FRAME("\\\\u12g4"));
    CHECK(!message_json_clean);
    CHECK_STR(message_json(SLICE_LIT("end\\")), FRAME("end\\\\"));  /* a trailing backslash */
    CHECK(!message_json_clean);
    CHECK_STR(message_json(SLICE_LIT("a\"b")), FRAME("a\\\"b"));    /* a raw quote */
    CHECK(!message_json_clean);
    CHECK_STR(message_json(SLICE_LIT("a\nb\x01")), FRAME("a\\nb\\u0001"));
    CHECK(!message_json_clean);
    CHECK_STR(message_json(SLICE_LIT("a\xff\xc3")), FRAME("a\\ufffd\\ufffd"));
    CHECK(!message_json_clean);
    /* whatever came in, what goes out is valid, safe JSON */
    static const char *const bad[] = {"\\", "\\\\\\", "\\u", "\\ud83d\\", "\\ud83d\\ude0", "\"\"", "<\\u003c\xed\xa0\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        slice c;
        char dec[256];
        size_t n;
        CHECK(frame_contents(message_json(slice_of(bad[i])), &c));
        CHECK(jsonstr_decode(c.ptr, c.len, dec, sizeof dec, &n));
        CHECK(!message_json_clean);
    }
}

TEST(chatstream_done_retry_error)
{
    wbuf b = wbuf_over(out, sizeof out - 1);
    chatstream_write_retry(&b);
    chatstream_write_done(&b);
    out[b.len] = '\0';
    CHECK_STR(out, "retry: 1000\nevent: done\ndata: [DONE]\n\n");

    b = wbuf_over(out, sizeof out - 1);
    chatstream_write_error(&b, "upstream timed out", "upstream_error", "upstream_timeout");
    out[b.len] = '\0';
    CHECK_STR(out, "event: error\ndata: {\"error\":{\"message\":\"upstream timed out\",\"type\":\"upstream_error\","
                   "\"param\":null,\"code\":\"upstream_timeout\"}}\n\n");
    /* the same object as the §6 error body */
    char body[512];
    wbuf e = wbuf_over(body, sizeof body - 1);
    json_write_error(&e, "upstream timed out", "upstream_error", "upstream_timeout");
    body[e.len] = '\0';
    CHECK(strstr(out, body) == out + strlen("event: error\ndata: "));

    b = wbuf_over(out, sizeof out - 1);
    chatstream_write_error(&b, "bad <b>\"x\"</b>", "server_error", NULL);
    out[b.len] = '\0';
    CHECK_STR(out, "event: error\ndata: {\"error\":{\"message\":\"bad \\u003cb\\u003e\\\"x\\\"\\u003c/b\\u003e\","
                   "\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n");
}

TEST(chatstream_overflow_is_reported)
{
    char small[40];
    wbuf b = wbuf_over(small, sizeof small);
    chatstream_write_message(&b, SLICE_LIT("this does not fit in forty bytes with the frame"));
    CHECK(b.overflow);
    b = wbuf_over(small, sizeof small);
    chatstream_write_message_json(&b, SLICE_LIT("\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9"));
    CHECK(b.overflow);
    b = wbuf_over(small, 10);
    chatstream_write_done(&b);
    CHECK(b.overflow);
}
