#include "upstream/retry.h"

uint64_t retry_backoff_ms(unsigned attempt, uint64_t random_bits)
{
    uint64_t ceiling = RETRY_BASE_MS;
    for (unsigned i = 0; i < attempt && ceiling < RETRY_CAP_MS; i++)
        ceiling *= 2;
    if (ceiling > RETRY_CAP_MS)
        ceiling = RETRY_CAP_MS;
    return random_bits % (ceiling + 1);
}

void retry_rng_seed(retry_rng *r, uint64_t seed) { r->s = seed ? seed : 0x9e3779b97f4a7c15ull; }

uint64_t retry_rng_next(retry_rng *r)
{
    /* xorshift64*: plenty for spreading retries, not for secrets */
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545f4914f6cdd1dull;
}

static bool is_space(char c) { return c == ' ' || c == '\t'; }

/* "12", "0.5", "1500.25": a non-negative decimal scaled by `scale`,
 * rounded down, at most RETRY_HINT_MAX_MS. */
static bool parse_decimal(slice v, uint64_t scale, uint64_t *out)
{
    size_t i = 0, n = v.len;
    while (i < n && is_space(v.ptr[i]))
        i++;
    while (n > i && is_space(v.ptr[n - 1]))
        n--;
    uint64_t whole = 0;
    size_t digits = 0;
    for (; i < n && v.ptr[i] >= '0' && v.ptr[i] <= '9'; i++, digits++)
        if (whole <= RETRY_HINT_MAX_MS)
            whole = whole * 10 + (uint64_t)(v.ptr[i] - '0');
    if (digits == 0)
        return false;
    uint64_t frac = 0, frac_scale = 1;
    if (i < n && v.ptr[i] == '.') {
        size_t fdigits = 0;
        for (i++; i < n && v.ptr[i] >= '0' && v.ptr[i] <= '9'; i++, fdigits++)
            if (frac_scale < 1000000) {
                frac = frac * 10 + (uint64_t)(v.ptr[i] - '0');
                frac_scale *= 10;
            }
        if (fdigits == 0)
            return false;
    }
    if (i != n)
        return false;
    uint64_t ms = whole > RETRY_HINT_MAX_MS / scale ? RETRY_HINT_MAX_MS : whole * scale + frac * scale / frac_scale;
    *out = ms > RETRY_HINT_MAX_MS ? RETRY_HINT_MAX_MS : ms;
    return true;
}

bool retry_after_parse(slice value, uint64_t *ms) { return parse_decimal(value, 1000, ms); }

bool retry_after_ms_parse(slice value, uint64_t *ms) { return parse_decimal(value, 1, ms); }

int should_retry_parse(slice value)
{
    if (slice_eq_nocase(value, SLICE_LIT("true")))
        return 1;
    if (slice_eq_nocase(value, SLICE_LIT("false")))
        return 0;
    return -1;
}

void retry_hints_read(const http_header *headers, size_t count, retry_hints *out)
{
    *out = (retry_hints){.should_retry = -1};
    const http_header *h = http_find_header(headers, count, SLICE_LIT("retry-after-ms"));
    uint64_t ms;
    if (h && retry_after_ms_parse(h->value, &ms)) {
        out->has_delay = true;
        out->delay_ms = ms;
    } else if ((h = http_find_header(headers, count, SLICE_LIT("retry-after"))) && retry_after_parse(h->value, &ms)) {
        out->has_delay = true;
        out->delay_ms = ms;
    }
    h = http_find_header(headers, count, SLICE_LIT("x-should-retry"));
    if (h)
        out->should_retry = should_retry_parse(h->value);
}

uint64_t retry_delay_ms(unsigned attempt, const retry_hints *h, uint64_t random_bits)
{
    if (h && h->has_delay && h->delay_ms <= RETRY_CAP_MS)
        return h->delay_ms;
    return retry_backoff_ms(attempt, random_bits);
}
