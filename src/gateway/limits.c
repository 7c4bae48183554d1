#include "gateway/limits.h"

enum { WINDOW_US = 60 * 1000 * 1000 };

static uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* Saturating, so a huge charge stays huge instead of wrapping to "free". */
static uint64_t add_sat(uint64_t a, uint64_t b) { return b > UINT64_MAX - a ? UINT64_MAX : a + b; }

static uint64_t seconds_up(uint64_t us)
{
    uint64_t s = (us + 999999) / 1000000;
    return s ? s : 1;
}

/* Microseconds of window one token uses up. Exact for the sums that matter:
 * a budget of tpm tokens is one whole window. */
static uint64_t token_cost_us(const limit_spec *spec, uint64_t tokens)
{
    unsigned __int128 us = ((unsigned __int128)tokens * WINDOW_US) / spec->tpm;
    return us > UINT64_MAX ? UINT64_MAX : (uint64_t)us;
}

bool limits_admit(limit_state *st, const limit_spec *spec, uint64_t now_us, bool stream, limit_verdict *v)
{
    *v = (limit_verdict){.refused = REFUSED_NONE};
    /* Requests: one cell of rpm requests, refilled evenly over the window. */
    uint64_t interval = spec->rpm ? WINDOW_US / spec->rpm : 0;
    uint64_t tolerance = spec->rpm ? (spec->rpm - 1) * interval : 0;
    if (spec->rpm) {
        v->limit_requests = spec->rpm;
        uint64_t tat = max_u64(st->req_tat_us, now_us);
        v->reset_requests_us = tat - now_us;
        /* What is left without this request: right when tokens or
         * streams refuse it, replaced below when it is admitted. */
        uint64_t horizon = now_us + tolerance + interval;
        v->remaining_requests = tat < horizon ? (horizon - tat) / interval : 0;
        if (tat > now_us + tolerance) {
            v->refused = REFUSED_REQUESTS;
            v->retry_after_s = seconds_up(tat - now_us - tolerance);
        }
    }
    /* Tokens: refused while the spent tokens cover the whole window. */
    if (spec->tpm) {
        v->limit_tokens = spec->tpm;
        uint64_t tat = max_u64(st->tok_tat_us, now_us);
        v->reset_tokens_us = tat - now_us;
        uint64_t left_us = tat - now_us < WINDOW_US ? WINDOW_US - (tat - now_us) : 0;
        v->remaining_tokens = (uint64_t)(((unsigned __int128)left_us * spec->tpm) / WINDOW_US);
        if (left_us == 0) {
            /* Out of requests too: Retry-After waits for both. */
            if (v->refused == REFUSED_NONE)
                v->refused = REFUSED_TOKENS;
            v->retry_after_s = max_u64(v->retry_after_s, seconds_up(tat - now_us - WINDOW_US + 1));
        }
    }
    if (spec->streams && stream && st->streams >= spec->streams && v->refused == REFUSED_NONE) {
        v->refused = REFUSED_STREAMS;
        v->retry_after_s = 1; /* a stream's end cannot be foreseen */
    }
    if (v->refused != REFUSED_NONE)
        return false;
    if (spec->rpm) {
        st->req_tat_us = max_u64(st->req_tat_us, now_us) + interval;
        uint64_t horizon = now_us + tolerance + interval;
        v->remaining_requests = st->req_tat_us < horizon ? (horizon - st->req_tat_us) / interval : 0;
        v->reset_requests_us = st->req_tat_us - now_us;
    }
    if (stream)
        st->streams++;
    return true;
}

void limits_charge_tokens(limit_state *st, const limit_spec *spec, uint64_t now_us, uint64_t tokens)
{
    if (!spec->tpm || tokens == 0)
        return;
    st->tok_tat_us = add_sat(max_u64(st->tok_tat_us, now_us), token_cost_us(spec, tokens));
}

void limits_stream_ended(limit_state *st)
{
    if (st->streams)
        st->streams--;
}

void limits_put_duration(wbuf *b, uint64_t us)
{
    uint64_t ms = us / 1000 + (us % 1000 != 0); /* up, without wrapping near UINT64_MAX */
    if (ms < 1000) {
        wbuf_put_u64(b, ms);
        wbuf_puts(b, "ms");
        return;
    }
    if (ms < 60000) {
        wbuf_put_u64(b, ms / 1000);
        uint64_t frac = ms % 1000;
        if (frac) {
            /* up to three decimals, trailing zeros dropped */
            char digits[4] = {(char)('0' + frac / 100), (char)('0' + frac / 10 % 10), (char)('0' + frac % 10), 0};
            size_t n = 3;
            while (n > 0 && digits[n - 1] == '0')
                n--;
            wbuf_put_char(b, '.');
            wbuf_put(b, digits, n);
        }
        wbuf_put_char(b, 's');
        return;
    }
    uint64_t s = (ms + 999) / 1000;
    wbuf_put_u64(b, s / 60);
    wbuf_put_char(b, 'm');
    wbuf_put_u64(b, s % 60);
    wbuf_put_char(b, 's');
}

static void header_u64(wbuf *b, const char *name, uint64_t v)
{
    wbuf_puts(b, "\r\n");
    wbuf_puts(b, name);
    wbuf_puts(b, ": ");
    wbuf_put_u64(b, v);
}

static void header_duration(wbuf *b, const char *name, uint64_t us)
{
    wbuf_puts(b, "\r\n");
    wbuf_puts(b, name);
    wbuf_puts(b, ": ");
    limits_put_duration(b, us);
}

void limits_write_headers(wbuf *b, const limit_verdict *v)
{
    if (v->refused != REFUSED_NONE)
        header_u64(b, "Retry-After", v->retry_after_s);
    if (v->limit_requests) {
        header_u64(b, "x-ratelimit-limit-requests", v->limit_requests);
        header_u64(b, "x-ratelimit-remaining-requests", v->remaining_requests);
        header_duration(b, "x-ratelimit-reset-requests", v->reset_requests_us);
    }
    if (v->limit_tokens) {
        header_u64(b, "x-ratelimit-limit-tokens", v->limit_tokens);
        header_u64(b, "x-ratelimit-remaining-tokens", v->remaining_tokens);
        header_duration(b, "x-ratelimit-reset-tokens", v->reset_tokens_us);
    }
}
