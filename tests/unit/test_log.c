/* The access log's bytes: timestamps by hand, whole lines in both formats,
 * escaping, values cut to their limit, and lines that stay whole. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "unit.h"
#include "core/log.h"

static char out[16 * 1024];

static const char *timestamp_of(int64_t unix_ms)
{
    wbuf b = wbuf_over(out, sizeof out - 1);
    log_put_timestamp(&b, unix_ms);
    out[b.len] = '\0';
    return b.overflow || b.len != LOG_TIMESTAMP_LEN ? "(wrong length)" : out;
}

TEST(log_timestamp_known_dates)
{
    CHECK_STR(timestamp_of(0), "1970-01-01T00:00:00.000Z");
    CHECK_STR(timestamp_of(1), "1970-01-01T00:00:00.001Z");
    CHECK_STR(timestamp_of(-1), "1969-12-31T23:59:59.999Z");
    CHECK_STR(timestamp_of(946684799999), "1999-12-31T23:59:59.999Z");
    CHECK_STR(timestamp_of(946684800000), "2000-01-01T00:00:00.000Z");
    CHECK_STR(timestamp_of(951782399000), "2000-02-28T23:59:59.000Z");
    CHECK_STR(timestamp_of(951782400000), "2000-02-29T00:00:00.000Z"); /* 400-year leap */
    CHECK_STR(timestamp_of(951868800000), "2000-03-01T00:00:00.000Z");
    CHECK_STR(timestamp_of(4107542399000), "2100-02-28T23:59:59.000Z");
    CHECK_STR(timestamp_of(4107542400000), "2100-03-01T00:00:00.000Z"); /* 100-year: no leap */
    CHECK_STR(timestamp_of(1483187696042), "2016-12-31T12:34:56.042Z"); /* day 366 */
    CHECK_STR(timestamp_of(1709194150500), "2024-02-29T08:09:10.500Z");
    CHECK_STR(timestamp_of(2147483648000), "2038-01-19T03:14:08.000Z"); /* past 32 bits */
    CHECK_STR(timestamp_of(-2203891200000), "1900-03-01T00:00:00.000Z");
    /* Outside four-digit years: the nearest end. */
    CHECK_STR(timestamp_of(-62167219200000), "0000-01-01T00:00:00.000Z");
    CHECK_STR(timestamp_of(INT64_MIN), "0000-01-01T00:00:00.000Z");
    CHECK_STR(timestamp_of(253402300799999), "9999-12-31T23:59:59.999Z");
    CHECK_STR(timestamp_of(INT64_MAX), "9999-12-31T23:59:59.999Z");
}

/* The second's text is cached: going back, forward and staying must all show. */
TEST(log_timestamp_cache)
{
    CHECK_STR(timestamp_of(1709194150123), "2024-02-29T08:09:10.123Z");
    CHECK_STR(timestamp_of(1709194150999), "2024-02-29T08:09:10.999Z");
    CHECK_STR(timestamp_of(1709194151000), "2024-02-29T08:09:11.000Z");
    CHECK_STR(timestamp_of(1709194150000), "2024-02-29T08:09:10.000Z");
    CHECK_STR(timestamp_of(1709194150000 + 86400000), "2024-03-01T08:09:10.000Z");
    char small[LOG_TIMESTAMP_LEN - 1];
    wbuf b = wbuf_over(small, sizeof small);
    log_put_timestamp(&b, 0);
    CHECK(b.overflow);
    CHECK_EQ_SIZE(b.len, 0);
}

/* Every day from 1600 to 2400, at a different time of day each, against the
 * C library's gmtime_r. */
TEST(log_timestamp_matches_gmtime)
{
    size_t wrong = 0;
    for (int64_t day = -135140; day <= 157054 && wrong < 5; day++) {
        int64_t second = day * 86400 + (day * 7919 % 86400 + 86400) % 86400, milli = (day & 1023) % 1000;
        int64_t ms = second * 1000 + milli;
        struct tm tm;
        gmtime_r(&(time_t){(time_t)second}, &tm);
        char want[40];
        size_t n = strftime(want, sizeof want, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(want + n, sizeof want - n, ".%03dZ", (int)milli);
        const char *got = timestamp_of(ms);
        if (strcmp(got, want) != 0) {
            unit_fail(__FILE__, __LINE__, "day %lld: %s, want %s", (long long)day, got, want);
            wrong++;
        }
    }
}

static access_record sample_record(void)
{
    return (access_record){
        .req_id = SLICE_LIT("req-1"),
        .method = SLICE_LIT("POST"),
        .path = SLICE_LIT("/v1/chat/completions"),
        .client = SLICE_LIT("team-a"),
        .model = SLICE_LIT("gpt-4o-mini"),
        .upstream = SLICE_LIT("api.openai.com"),
        .upstream_req_id = SLICE_LIT("up-9"),
        .status = 200,
        .ttfb_ms = 123,
        .dur_ms = 4567,
        .bytes_in = 89,
        .bytes_out = 18446744073709551615u,
        .chunks = 10,
        .prompt_tokens = 7,
        .completion_tokens = 100,
        .retries = 1,
    };
}

static const char *line_of(const access_record *r, log_format f, size_t cap)
{
    log_set_format(f);
    wbuf b = wbuf_over(out, cap < sizeof out - 1 ? cap : sizeof out - 1);
    log_put_access(&b, r, 1709194150500);
    log_set_format(LOG_JSON);
    out[b.len] = '\0';
    return b.overflow ? "(overflow)" : out;
}

TEST(log_access_line_json)
{
    access_record r = sample_record();
    CHECK_STR(line_of(&r, LOG_JSON, SIZE_MAX),
              "{\"ts\":\"2024-02-29T08:09:10.500Z\",\"level\":\"info\",\"req_id\":\"req-1\",\"method\":\"POST\","
              "\"path\":\"/v1/chat/completions\",\"status\":200,\"client\":\"team-a\",\"model\":\"gpt-4o-mini\","
              "\"upstream\":\"api.openai.com\",\"upstream_req_id\":\"up-9\",\"ttfb_ms\":123,\"dur_ms\":4567,"
              "\"bytes_in\":89,\"bytes_out\":18446744073709551615,\"chunks\":10,\"prompt_tokens\":7,"
              "\"completion_tokens\":100,\"retries\":1,\"resumed\":false,\"error\":null}");
    r = (access_record){.status = 502, .ttfb_ms = -1, .resumed = true, .error = "upstream \"closed\""};
    CHECK_STR(line_of(&r, LOG_JSON, SIZE_MAX),
              "{\"ts\":\"2024-02-29T08:09:10.500Z\",\"level\":\"error\",\"req_id\":\"\",\"method\":\"\","
              "\"path\":\"\",\"status\":502,\"client\":\"\",\"model\":\"\",\"upstream\":\"\",\"upstream_req_id\":\"\","
              "\"ttfb_ms\":-1,\"dur_ms\":0,\"bytes_in\":0,\"bytes_out\":0,\"chunks\":0,\"prompt_tokens\":0,"
              "\"completion_tokens\":0,\"retries\":0,\"resumed\":true,\"error\":\"upstream \\\"closed\\\"\"}");
    r.status = 429;
    CHECK(strstr(line_of(&r, LOG_JSON, SIZE_MAX), "\"level\":\"warn\"") != NULL);
    r.status = 399;
    CHECK(strstr(line_of(&r, LOG_JSON, SIZE_MAX), "\"level\":\"info\"") != NULL);
}

TEST(log_access_line_text)
{
    access_record r = sample_record();
    CHECK_STR(line_of(&r, LOG_TEXT, SIZE_MAX),
              "ts=2024-02-29T08:09:10.500Z level=info req_id=req-1 method=POST path=/v1/chat/completions "
              "status=200 client=team-a model=gpt-4o-mini upstream=api.openai.com upstream_req_id=up-9 "
              "ttfb_ms=123 dur_ms=4567 bytes_in=89 bytes_out=18446744073709551615 chunks=10 prompt_tokens=7 "
              "completion_tokens=100 retries=1 resumed=false");
    r.error = "timeout";
    r.resumed = true;
    r.status = 504;
    r.model = SLICE_LIT("a b\n\"c\"");
    const char *l = line_of(&r, LOG_TEXT, SIZE_MAX);
    CHECK(strstr(l, "level=error ") != NULL);
    CHECK(strstr(l, " model=a b\\n\\\"c\\\" upstream=") != NULL);
    size_t n = strlen(l);
    static const char tail[] = " resumed=true error=timeout";
    CHECK(n > sizeof tail && strcmp(l + n - (sizeof tail - 1), tail) == 0);
}

TEST(log_access_escaping)
{
    access_record r = sample_record();
    static const char hostile[] = "q\"uo\\te\x01\x1f\t\r\n\x7f\xc3\xa9/";
    r.path = (slice){hostile, sizeof hostile - 1};
    r.req_id = SLICE_LIT("a\"b");
    const char *l = line_of(&r, LOG_JSON, SIZE_MAX);
    CHECK(strstr(l, "\"req_id\":\"a\\\"b\",") != NULL);
    CHECK(strstr(l, "\"path\":\"q\\\"uo\\\\te\\u0001\\u001f\\t\\r\\n\x7f\xc3\xa9/\",") != NULL);
}

static const char *value_in(const char *line, const char *key)
{
    static char v[4096];
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
    const char *at = strstr(line, pattern);
    if (!at)
        return "(missing)";
    at += strlen(pattern);
    size_t n = 0;
    while (at[n] && !(at[n] == '"' && at[n - 1] != '\\') && n < sizeof v - 1)
        n++;
    memcpy(v, at, n);
    v[n] = '\0';
    return v;
}

TEST(log_access_long_values_cut)
{
    static char big[8192], want[2048];
    access_record r = sample_record();
    /* Exactly the limit: whole. One more byte: cut, marked. */
    memset(big, 'a', sizeof big);
    r.path = (slice){big, 1024};
    CHECK_EQ_SIZE(strlen(value_in(line_of(&r, LOG_JSON, SIZE_MAX), "path")), 1024);
    r.path = (slice){big, 1025};
    memset(want, 'a', 1021);
    memcpy(want + 1021, "...", 4);
    CHECK_STR(value_in(line_of(&r, LOG_JSON, SIZE_MAX), "path"), want);
    /* Escapes count at their escaped size, and are never split. */
    memset(big, '"', sizeof big);
    r.path = (slice){big, 600};
    for (size_t i = 0; i < 510; i++)
        memcpy(want + 2 * i, "\\\"", 2);
    memcpy(want + 1020, "...", 4);
    CHECK_STR(value_in(line_of(&r, LOG_JSON, SIZE_MAX), "path"), want);
    /* A cut lands between UTF-8 sequences: 1021 bytes would split an é. */
    for (size_t i = 0; i + 1 < sizeof big; i += 2)
        memcpy(big + i, "\xc3\xa9", 2);
    r.path = (slice){big, 1200};
    memcpy(want, big, 1020);
    memcpy(want + 1020, "...", 4);
    CHECK_STR(value_in(line_of(&r, LOG_JSON, SIZE_MAX), "path"), want);
}

/* The worst record still makes one whole line in the line buffer's size. */
TEST(log_access_worst_case_fits)
{
    static char ctl[8192];
    memset(ctl, 1, sizeof ctl);
    slice s = {ctl, sizeof ctl};
    access_record r = {.req_id = s, .method = s, .path = s, .client = s, .model = s, .upstream = s,
                       .upstream_req_id = s, .status = 599, .ttfb_ms = INT64_MIN, .dur_ms = UINT64_MAX,
                       .bytes_in = UINT64_MAX, .bytes_out = UINT64_MAX, .chunks = UINT64_MAX,
                       .prompt_tokens = UINT64_MAX, .completion_tokens = UINT64_MAX, .retries = 4000000000u,
                       .resumed = true};
    static char error_text[8192];
    memset(error_text, '\\', sizeof error_text - 1);
    r.error = error_text;
    const char *l = line_of(&r, LOG_JSON, 12 * 1024 - 1);
    size_t n = strlen(l);
    CHECK(n > 8 * 1000 && n < 12 * 1024 - 1);
    CHECK(n > 0 && l[n - 1] == '}');
    CHECK(strstr(l, "\"ttfb_ms\":-9223372036854775808,") != NULL);
}

/* Runs fn with stderr going to a file, and returns what it wrote. */
static const char *stderr_of(void (*fn)(void))
{
    FILE *f = tmpfile();
    if (!f)
        return "(no tmpfile)";
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    dup2(fileno(f), STDERR_FILENO);
    fn();
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(f);
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = '\0';
    fclose(f);
    return out;
}

static void write_access(void)
{
    access_record r = sample_record();
    log_access(&r);
}

static void write_message(void)
{
    static char value[300];
    memset(value, 'v', sizeof value - 1);
    log_field fields[60];
    for (size_t i = 0; i < 60; i++)
        fields[i] = (log_field){"key", value};
    log_message("warn", "many \"fields\"", fields, 60);
}

TEST(log_lines_on_stderr)
{
    const char *l = stderr_of(write_access);
    size_t n = strlen(l);
    CHECK(n > 30 && strncmp(l, "{\"ts\":\"", 7) == 0);
    CHECK(strstr(l, ",\"req_id\":\"req-1\",") != NULL);
    CHECK(n > 2 && strcmp(l + n - 2, "}\n") == 0);
    CHECK(strchr(l, '\n') == l + n - 1);
    /* A message too long for a line keeps the fields that fit, and its end. */
    l = stderr_of(write_message);
    n = strlen(l);
    CHECK(strstr(l, ",\"level\":\"warn\",\"msg\":\"many \\\"fields\\\"\",\"key\":\"vvv") != NULL);
    CHECK(n > 10 * 1024 && n <= 12 * 1024);
    CHECK(n > 4 && strcmp(l + n - 4, "v\"}\n") == 0);
    CHECK(strchr(l, '\n') == l + n - 1);
}
