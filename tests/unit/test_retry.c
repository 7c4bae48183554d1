/* Retry timing: full-jitter backoff bounds over many draws, and the hints
 * upstreams send (Retry-After, retry-after-ms, x-should-retry). */
#include <stdint.h>

#include "upstream/retry.h"
#include "unit.h"

TEST(retry_backoff_stays_within_full_jitter_bounds)
{
    retry_rng rng;
    retry_rng_seed(&rng, 42);
    static const uint64_t ceilings[] = {100, 200, 400, 800, 1600, 2000, 2000, 2000};
    for (unsigned attempt = 0; attempt < 8; attempt++) {
        uint64_t lo = UINT64_MAX, hi = 0, sum = 0;
        const unsigned draws = 20000;
        for (unsigned i = 0; i < draws; i++) {
            uint64_t d = retry_backoff_ms(attempt, retry_rng_next(&rng));
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
            sum += d;
        }
        uint64_t ceiling = ceilings[attempt];
        CHECK(hi <= ceiling);
        /* the whole range is used: near 0, near the ceiling, mean near half */
        CHECK(lo <= ceiling / 50);
        CHECK(hi >= ceiling - ceiling / 50);
        uint64_t mean = sum / draws;
        if (mean < ceiling * 45 / 100 || mean > ceiling * 55 / 100)
            unit_fail(__FILE__, __LINE__, "attempt %u: mean %llu for ceiling %llu", attempt, (unsigned long long)mean,
                      (unsigned long long)ceiling);
    }
    /* the bits decide exactly: the ceiling itself is reachable */
    CHECK_EQ_SIZE(retry_backoff_ms(0, 100), 100);
    CHECK_EQ_SIZE(retry_backoff_ms(0, 101), 0);
    CHECK_EQ_SIZE(retry_backoff_ms(3, 799), 799);
    CHECK_EQ_SIZE(retry_backoff_ms(1000, UINT64_MAX), UINT64_MAX % 2001);
    /* a seed of 0 still gives a moving source */
    retry_rng_seed(&rng, 0);
    uint64_t first = retry_rng_next(&rng);
    CHECK(first != 0 && retry_rng_next(&rng) != first);
}

static void check_after(const char *text, bool ok, uint64_t want)
{
    uint64_t got = 777;
    bool r = retry_after_parse(slice_of(text), &got);
    if (r != ok || (ok && got != want))
        unit_fail(__FILE__, __LINE__, "Retry-After \"%s\": %s %llu, want %s %llu", text, r ? "ok" : "refused",
                  (unsigned long long)got, ok ? "ok" : "refused", (unsigned long long)want);
}

static void check_after_ms(const char *text, bool ok, uint64_t want)
{
    uint64_t got = 777;
    bool r = retry_after_ms_parse(slice_of(text), &got);
    if (r != ok || (ok && got != want))
        unit_fail(__FILE__, __LINE__, "retry-after-ms \"%s\": %s %llu, want %s %llu", text, r ? "ok" : "refused",
                  (unsigned long long)got, ok ? "ok" : "refused", (unsigned long long)want);
}

TEST(retry_after_values)
{
    check_after("0", true, 0);
    check_after("1", true, 1000);
    check_after("12", true, 12000);
    check_after("0.5", true, 500);
    check_after("1.25", true, 1250);
    check_after(" 3 ", true, 3000);
    check_after("86400", true, 86400000);
    check_after("999999999999999999999999", true, RETRY_HINT_MAX_MS);
    check_after("Wed, 21 Oct 2015 07:28:00 GMT", false, 0); /* HTTP-dates: no hint */
    check_after("", false, 0);
    check_after("-1", false, 0);
    check_after("1.", false, 0);
    check_after(".5", false, 0);
    check_after("5s", false, 0);
    check_after("1e3", false, 0);
    check_after_ms("1500", true, 1500);
    check_after_ms("20.7", true, 20);
    check_after_ms("0", true, 0);
    check_after_ms("99999999999", true, RETRY_HINT_MAX_MS);
    check_after_ms("abc", false, 0);
    check_after_ms("12ms", false, 0);

    CHECK(should_retry_parse(SLICE_LIT("true")) == 1);
    CHECK(should_retry_parse(SLICE_LIT("TRUE")) == 1);
    CHECK(should_retry_parse(SLICE_LIT("false")) == 0);
    CHECK(should_retry_parse(SLICE_LIT("False")) == 0);
    CHECK(should_retry_parse(SLICE_LIT("yes")) == -1);
    CHECK(should_retry_parse(SLICE_LIT("")) == -1);
}

TEST(retry_hints_from_headers)
{
    retry_hints h;
    http_header both[] = {{SLICE_LIT("Retry-After"), SLICE_LIT("7")},
                          {SLICE_LIT("retry-after-ms"), SLICE_LIT("250")},
                          {SLICE_LIT("X-Should-Retry"), SLICE_LIT("false")}};
    retry_hints_read(both, 3, &h);
    CHECK(h.has_delay && h.delay_ms == 250); /* the finer one wins */
    CHECK(h.should_retry == 0);
    /* a broken retry-after-ms falls back to Retry-After */
    http_header broken[] = {{SLICE_LIT("retry-after-ms"), SLICE_LIT("soon")}, {SLICE_LIT("retry-after"), SLICE_LIT("2")}};
    retry_hints_read(broken, 2, &h);
    CHECK(h.has_delay && h.delay_ms == 2000 && h.should_retry == -1);
    http_header date[] = {{SLICE_LIT("Retry-After"), SLICE_LIT("Fri, 31 Dec 1999 23:59:59 GMT")},
                          {SLICE_LIT("x-should-retry"), SLICE_LIT("true")}};
    retry_hints_read(date, 2, &h);
    CHECK(!h.has_delay && h.should_retry == 1);
    retry_hints_read(NULL, 0, &h);
    CHECK(!h.has_delay && h.should_retry == -1);

    /* the wait: a hint within the cap is honoured, a longer one is not a wait */
    retry_hints short_hint = {true, 1500, -1}, long_hint = {true, 30000, -1};
    CHECK_EQ_SIZE(retry_delay_ms(0, &short_hint, 12345), 1500);
    CHECK_EQ_SIZE(retry_delay_ms(0, &long_hint, 42), 42);
    CHECK_EQ_SIZE(retry_delay_ms(2, NULL, 401), 0);
    CHECK_EQ_SIZE(retry_delay_ms(2, NULL, 399), 399);
}
