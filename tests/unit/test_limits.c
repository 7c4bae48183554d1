/* GCRA request, token and stream limits on a fake clock, the verdict's
 * x-ratelimit figures, the header text and OpenAI's duration format. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/wbuf.h"
#include "gateway/limits.h"
#include "unit.h"

#define CHECK_U64(a, b)                                                                            \
    do {                                                                                           \
        unsigned long long unit_a_ = (a), unit_b_ = (b);                                           \
        if (unit_a_ != unit_b_)                                                                    \
            unit_fail(__FILE__, __LINE__, "%s == %s (%llu vs %llu)", #a, #b, unit_a_, unit_b_);   \
    } while (0)

#define MS(x) ((uint64_t)(x) * 1000u)
#define SEC(x) ((uint64_t)(x) * 1000000u)

/* The fake clock every check reads; starts well away from zero so that
 * "now - something" cannot hide an underflow. */
static uint64_t clock_us;
static const uint64_t T0 = SEC(1000000);

static void clock_at(uint64_t since_t0_us) { clock_us = T0 + since_t0_us; }

typedef struct client {
    limit_spec spec;
    limit_state state;
    limit_verdict v;
} client;

static client client_of(uint64_t rpm, uint64_t tpm, uint64_t streams)
{
    clock_at(0);
    return (client){.spec = {rpm, tpm, streams}};
}

static bool admit(client *c) { return limits_admit(&c->state, &c->spec, clock_us, false, &c->v); }
static bool admit_stream(client *c) { return limits_admit(&c->state, &c->spec, clock_us, true, &c->v); }
static void charge(client *c, uint64_t tokens) { limits_charge_tokens(&c->state, &c->spec, clock_us, tokens); }

static const char *duration_text(uint64_t us)
{
    static char out[64];
    wbuf b = wbuf_over(out, sizeof out - 1);
    limits_put_duration(&b, us);
    out[b.overflow ? 0 : b.len] = '\0';
    return out;
}

static const char *headers_text(const limit_verdict *v)
{
    static char out[1024];
    wbuf b = wbuf_over(out, sizeof out - 1);
    limits_write_headers(&b, v);
    out[b.overflow ? 0 : b.len] = '\0';
    return out;
}

TEST(limits_rpm_three)
{
    client c = client_of(3, 0, 0);
    for (uint64_t i = 0; i < 3; i++) {
        CHECK(admit(&c));
        CHECK(c.v.refused == REFUSED_NONE);
        CHECK_U64(c.v.limit_requests, 3);
        CHECK_U64(c.v.remaining_requests, 2 - i);
        CHECK_U64(c.v.reset_requests_us, SEC(20) * (i + 1));
        CHECK_U64(c.v.limit_tokens, 0);
    }
    CHECK(!admit(&c));
    CHECK(c.v.refused == REFUSED_REQUESTS);
    CHECK_U64(c.v.retry_after_s, 20);
    CHECK_U64(c.v.remaining_requests, 0);
    CHECK_U64(c.v.reset_requests_us, SEC(60));

    clock_at(MS(19900));
    CHECK(!admit(&c));
    CHECK(c.v.refused == REFUSED_REQUESTS);
    CHECK_U64(c.v.retry_after_s, 1);
    clock_at(SEC(20) - 1);
    CHECK(!admit(&c));
    clock_at(SEC(20));
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_requests, 0);
    CHECK_U64(c.v.reset_requests_us, SEC(60));
    CHECK(!admit(&c));
    CHECK_U64(c.v.retry_after_s, 20);

    /* After a long idle spell the burst is back to rpm, not more. */
    clock_at(SEC(3600));
    for (int i = 0; i < 3; i++)
        CHECK(admit(&c));
    CHECK(!admit(&c));
    CHECK_U64(c.v.retry_after_s, 20);
}

TEST(limits_rpm_one)
{
    client c = client_of(1, 0, 0);
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_requests, 0);
    CHECK_U64(c.v.reset_requests_us, SEC(60));
    CHECK(!admit(&c));
    CHECK_U64(c.v.retry_after_s, 60);
    clock_at(SEC(30) + 1);
    CHECK(!admit(&c));
    CHECK_U64(c.v.retry_after_s, 30);
    clock_at(SEC(60) - 1);
    CHECK(!admit(&c));
    CHECK_U64(c.v.retry_after_s, 1);
    clock_at(SEC(60));
    CHECK(admit(&c));
    CHECK(!admit(&c));
    CHECK_U64(c.v.retry_after_s, 60);
}

TEST(limits_rpm_sixty_thousand)
{
    client c = client_of(60000, 0, 0);
    size_t admitted = 0;
    for (size_t i = 0; i < 70000 && admit(&c); i++)
        admitted++;
    CHECK_EQ_SIZE(admitted, 60000);
    CHECK(c.v.refused == REFUSED_REQUESTS);
    CHECK_U64(c.v.retry_after_s, 1); /* 1 ms, rounded up to a whole second */
    CHECK_U64(c.v.reset_requests_us, SEC(60));
    /* One more each millisecond. */
    clock_at(MS(1) - 1);
    CHECK(!admit(&c));
    clock_at(MS(1));
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_requests, 0);
    CHECK(!admit(&c));
    clock_at(MS(11));
    admitted = 0;
    for (size_t i = 0; i < 100 && admit(&c); i++)
        admitted++;
    CHECK_EQ_SIZE(admitted, 10);
    /* Idle for a second: a thousand are back. */
    clock_at(MS(1011));
    admitted = 0;
    for (size_t i = 0; i < 2000 && admit(&c); i++)
        admitted++;
    CHECK_EQ_SIZE(admitted, 1000);
}

TEST(limits_refused_request_consumes_nothing)
{
    client c = client_of(2, 0, 0);
    CHECK(admit(&c));
    CHECK(admit(&c));
    /* Hammering while refused must not push the next admission back. */
    for (int i = 0; i < 50; i++) {
        clock_at(MS(100) * (uint64_t)i);
        CHECK(!admit(&c));
    }
    clock_at(SEC(30) - 1);
    CHECK(!admit(&c));
    CHECK_U64(c.v.retry_after_s, 1);
    clock_at(SEC(30));
    CHECK(admit(&c));
    CHECK(!admit(&c));
    CHECK_U64(c.v.retry_after_s, 30);
}

TEST(limits_tpm_budget)
{
    client c = client_of(0, 1000, 0);
    CHECK(admit(&c));
    CHECK_U64(c.v.limit_tokens, 1000);
    CHECK_U64(c.v.remaining_tokens, 1000);
    CHECK_U64(c.v.reset_tokens_us, 0);
    CHECK_U64(c.v.limit_requests, 0);
    charge(&c, 999);
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_tokens, 1);
    CHECK_U64(c.v.reset_tokens_us, MS(59940));
    charge(&c, 1);
    CHECK(!admit(&c));
    CHECK(c.v.refused == REFUSED_TOKENS);
    CHECK_U64(c.v.remaining_tokens, 0);
    CHECK_U64(c.v.reset_tokens_us, SEC(60));
    CHECK_U64(c.v.retry_after_s, 1); /* freed as soon as any time passes */
    clock_at(1);
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_tokens, 0);
    clock_at(SEC(1));
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_tokens, 16); /* 1000 tokens a minute: 16.67 a second */
    CHECK_U64(c.v.reset_tokens_us, SEC(59));
    clock_at(SEC(60));
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_tokens, 1000);
    CHECK_U64(c.v.reset_tokens_us, 0);
}

TEST(limits_tpm_far_over_budget)
{
    client c = client_of(0, 1000, 0);
    CHECK(admit(&c));
    charge(&c, 5000);
    CHECK(!admit(&c));
    CHECK(c.v.refused == REFUSED_TOKENS);
    CHECK_U64(c.v.reset_tokens_us, SEC(300));
    /* The spent tokens cover the window until 240 s and 1 µs from now;
     * rounded up, that is 241 s. */
    CHECK_U64(c.v.retry_after_s, 241);
    clock_at(SEC(120));
    CHECK(!admit(&c));
    CHECK_U64(c.v.retry_after_s, 121);
    clock_at(SEC(240));
    CHECK(!admit(&c));
    CHECK_U64(c.v.retry_after_s, 1);
    clock_at(SEC(240) + 1);
    CHECK(admit(&c));
    clock_at(SEC(270));
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_tokens, 500);
}

TEST(limits_tpm_remaining_figures)
{
    client c = client_of(0, 1000, 0);
    charge(&c, 250);
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_tokens, 750);
    CHECK_U64(c.v.reset_tokens_us, SEC(15));
    clock_at(SEC(6));
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_tokens, 850);
    CHECK_U64(c.v.reset_tokens_us, SEC(9));
    /* Charges add up; a charge after the earlier ones drained starts afresh. */
    charge(&c, 400);
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_tokens, 450);
    CHECK_U64(c.v.reset_tokens_us, SEC(33));
    clock_at(SEC(100));
    charge(&c, 100);
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_tokens, 900);
    CHECK_U64(c.v.reset_tokens_us, SEC(6));
    /* Zero tokens change nothing; neither does a charge with no tpm set. */
    charge(&c, 0);
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_tokens, 900);
    client none = client_of(5, 0, 0);
    charge(&none, 1000000);
    CHECK_U64(none.state.tok_tat_us, 0);
    CHECK(admit(&none));
    CHECK_U64(none.v.limit_tokens, 0);
}

TEST(limits_tpm_uneven_rate)
{
    /* 7 tokens a minute: a token is 8.571428 s of window. */
    client c = client_of(0, 7, 0);
    for (int i = 0; i < 6; i++)
        charge(&c, 1);
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_tokens, 1);
    /* Each single-token charge rounds down by under a microsecond, so
     * whether this very instant admits is left open; the budget is spent. */
    charge(&c, 1);
    admit(&c);
    CHECK_U64(c.v.remaining_tokens, 0);
    clock_at(MS(8572));
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_tokens, 1);
    clock_at(SEC(60));
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_tokens, 7);
}

TEST(limits_streams)
{
    client c = client_of(0, 0, 2);
    CHECK(admit_stream(&c));
    CHECK(admit_stream(&c));
    CHECK_U64(c.state.streams, 2);
    CHECK(!admit_stream(&c));
    CHECK(c.v.refused == REFUSED_STREAMS);
    CHECK_U64(c.v.retry_after_s, 1);
    CHECK_U64(c.state.streams, 2);
    /* Requests that do not stream are not held back by streams. */
    for (int i = 0; i < 10; i++)
        CHECK(admit(&c));
    CHECK_U64(c.state.streams, 2);
    limits_stream_ended(&c.state);
    CHECK(admit_stream(&c));
    CHECK(!admit_stream(&c));
    limits_stream_ended(&c.state);
    limits_stream_ended(&c.state);
    CHECK_U64(c.state.streams, 0);
    limits_stream_ended(&c.state); /* an extra end does not wrap */
    CHECK_U64(c.state.streams, 0);
    CHECK(admit_stream(&c));
    CHECK(admit_stream(&c));
    CHECK(!admit_stream(&c));
    /* Streams alone fill no x-ratelimit figures. */
    CHECK_U64(c.v.limit_requests, 0);
    CHECK_U64(c.v.limit_tokens, 0);
}

TEST(limits_no_limits)
{
    client c = client_of(0, 0, 0);
    CHECK(!limit_spec_any(&c.spec));
    for (int i = 0; i < 1000; i++)
        CHECK(admit_stream(&c));
    charge(&c, 1000000);
    CHECK(admit(&c));
    CHECK(c.v.refused == REFUSED_NONE);
    CHECK_STR(headers_text(&c.v), "");
}

TEST(limits_combined)
{
    client c = client_of(3, 1000, 1);
    CHECK(limit_spec_any(&c.spec));
    CHECK(admit_stream(&c));
    CHECK_U64(c.v.remaining_requests, 2);
    CHECK_U64(c.v.remaining_tokens, 1000);
    /* Refused for streams: neither the request nor a stream is counted. */
    CHECK(!admit_stream(&c));
    CHECK(c.v.refused == REFUSED_STREAMS);
    CHECK_U64(c.v.retry_after_s, 1);
    CHECK_U64(c.v.remaining_requests, 2);
    CHECK_U64(c.state.streams, 1);
    charge(&c, 1000);
    limits_stream_ended(&c.state);
    /* Refused for tokens: the request is not counted either. */
    CHECK(!admit_stream(&c));
    CHECK(c.v.refused == REFUSED_TOKENS);
    CHECK_U64(c.v.remaining_requests, 2);
    CHECK_U64(c.v.remaining_tokens, 0);
    clock_at(SEC(3));
    CHECK(admit_stream(&c));
    CHECK_U64(c.v.remaining_requests, 1);
    CHECK_U64(c.v.remaining_tokens, 50);
    limits_stream_ended(&c.state);
    CHECK(admit(&c));
    CHECK_U64(c.v.remaining_requests, 0);
    /* Out of requests (for 17 s) and of tokens (for 297 s and 1 µs) at
     * once: Retry-After waits for both, not only the first found. */
    charge(&c, 5000);
    CHECK(!admit(&c));
    CHECK(c.v.refused == REFUSED_REQUESTS);
    CHECK_U64(c.v.retry_after_s, 298);
    clock_at(SEC(20));
    CHECK(!admit(&c));
    CHECK(c.v.refused == REFUSED_TOKENS);
    CHECK_U64(c.v.retry_after_s, 281);
    clock_at(SEC(300));
    CHECK(!admit(&c));
    clock_at(SEC(300) + 1);
    CHECK(admit(&c));
}

TEST(limits_header_text)
{
    client c = client_of(3, 1000, 0);
    charge(&c, 250);
    CHECK(admit(&c));
    CHECK_STR(headers_text(&c.v), "\r\nx-ratelimit-limit-requests: 3"
                                  "\r\nx-ratelimit-remaining-requests: 2"
                                  "\r\nx-ratelimit-reset-requests: 20s"
                                  "\r\nx-ratelimit-limit-tokens: 1000"
                                  "\r\nx-ratelimit-remaining-tokens: 750"
                                  "\r\nx-ratelimit-reset-tokens: 15s");
    CHECK(admit(&c));
    CHECK(admit(&c));
    CHECK(!admit(&c));
    CHECK_STR(headers_text(&c.v), "\r\nRetry-After: 20"
                                  "\r\nx-ratelimit-limit-requests: 3"
                                  "\r\nx-ratelimit-remaining-requests: 0"
                                  "\r\nx-ratelimit-reset-requests: 1m0s"
                                  "\r\nx-ratelimit-limit-tokens: 1000"
                                  "\r\nx-ratelimit-remaining-tokens: 750"
                                  "\r\nx-ratelimit-reset-tokens: 15s");

    client r = client_of(60, 0, 0);
    clock_at(MS(1500));
    CHECK(admit(&r));
    CHECK_STR(headers_text(&r.v), "\r\nx-ratelimit-limit-requests: 60"
                                  "\r\nx-ratelimit-remaining-requests: 59"
                                  "\r\nx-ratelimit-reset-requests: 1s");

    client t = client_of(0, 90000, 0);
    charge(&t, 1500);
    CHECK(admit(&t));
    CHECK_STR(headers_text(&t.v), "\r\nx-ratelimit-limit-tokens: 90000"
                                  "\r\nx-ratelimit-remaining-tokens: 88500"
                                  "\r\nx-ratelimit-reset-tokens: 1s");
    charge(&t, 90000);
    CHECK(!admit(&t));
    CHECK_STR(headers_text(&t.v), "\r\nRetry-After: 2"
                                  "\r\nx-ratelimit-limit-tokens: 90000"
                                  "\r\nx-ratelimit-remaining-tokens: 0"
                                  "\r\nx-ratelimit-reset-tokens: 1m1s");

    client s = client_of(0, 0, 1);
    CHECK(admit_stream(&s));
    CHECK_STR(headers_text(&s.v), "");
    CHECK(!admit_stream(&s));
    CHECK_STR(headers_text(&s.v), "\r\nRetry-After: 1");

    /* A verdict built by hand: the writer shows what it is given. */
    limit_verdict v = {.refused = REFUSED_TOKENS, .retry_after_s = 7, .limit_tokens = 5,
                       .remaining_tokens = 0, .reset_tokens_us = MS(6500)};
    CHECK_STR(headers_text(&v), "\r\nRetry-After: 7"
                                "\r\nx-ratelimit-limit-tokens: 5"
                                "\r\nx-ratelimit-remaining-tokens: 0"
                                "\r\nx-ratelimit-reset-tokens: 6.5s");

    /* A buffer too small overflows cleanly, writing nothing past its end. */
    char small[24];
    memset(small, '#', sizeof small);
    wbuf b = wbuf_over(small, 16);
    limits_write_headers(&b, &v);
    CHECK(b.overflow);
    CHECK(b.len <= 16);
    CHECK(small[16] == '#' && small[23] == '#');
}

TEST(limits_duration_format)
{
    CHECK_STR(duration_text(0), "0ms");
    CHECK_STR(duration_text(1), "1ms");
    CHECK_STR(duration_text(999), "1ms");
    CHECK_STR(duration_text(1000), "1ms");
    CHECK_STR(duration_text(1001), "2ms");
    CHECK_STR(duration_text(MS(20)), "20ms");
    CHECK_STR(duration_text(MS(999)), "999ms");
    CHECK_STR(duration_text(MS(999) + 1), "1s");
    CHECK_STR(duration_text(MS(1000)), "1s");
    CHECK_STR(duration_text(MS(1001)), "1.001s");
    CHECK_STR(duration_text(MS(1010)), "1.01s");
    CHECK_STR(duration_text(MS(1500)), "1.5s");
    CHECK_STR(duration_text(MS(1500) + 1), "1.501s");
    CHECK_STR(duration_text(SEC(59)), "59s");
    CHECK_STR(duration_text(MS(59999)), "59.999s");
    CHECK_STR(duration_text(MS(59999) + 1), "1m0s");
    CHECK_STR(duration_text(SEC(60)), "1m0s");
    CHECK_STR(duration_text(SEC(60) + 1), "1m1s");
    CHECK_STR(duration_text(MS(61200)), "1m2s");
    CHECK_STR(duration_text(SEC(61)), "1m1s");
    CHECK_STR(duration_text(SEC(119)), "1m59s");
    CHECK_STR(duration_text(SEC(120)), "2m0s");
    CHECK_STR(duration_text(SEC(360)), "6m0s");
    CHECK_STR(duration_text(SEC(3600)), "60m0s");
    CHECK_STR(duration_text(UINT64_MAX - 998), "307445734561m50s");
    CHECK_STR(duration_text(UINT64_MAX), "307445734561m50s");
}

TEST(limits_huge_charge_saturates)
{
    /* A charge whose window time does not fit 64 bits still refuses. */
    client c = client_of(0, 1, 0);
    charge(&c, UINT64_MAX);
    CHECK(!admit(&c));
    CHECK(c.v.refused == REFUSED_TOKENS);
    CHECK_U64(c.v.retry_after_s, 18446743073650u);
    CHECK_STR(headers_text(&c.v), "\r\nRetry-After: 18446743073650"
                                  "\r\nx-ratelimit-limit-tokens: 1"
                                  "\r\nx-ratelimit-remaining-tokens: 0"
                                  "\r\nx-ratelimit-reset-tokens: 307445717895m10s");
    /* More on top stays at the ceiling rather than wrapping round. */
    charge(&c, UINT64_MAX);
    charge(&c, 1);
    CHECK(!admit(&c));
    CHECK(c.v.refused == REFUSED_TOKENS);
    CHECK_U64(c.v.retry_after_s, 18446743073650u);
    /* Not merely huge: just past what 64 bits of microseconds hold. */
    client d = client_of(0, 60000000, 0);
    charge(&d, UINT64_MAX - T0);
    charge(&d, T0 + 1);
    CHECK(!admit(&d));
    CHECK(d.v.refused == REFUSED_TOKENS);
}
