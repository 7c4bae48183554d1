/* Resumable streams. The first byte picks what the rest is fed to:
 *   'p' a Last-Event-ID value: replay_parse_last_event_id against a plain
 *       reading of the format (22 base64url characters naming 16 bytes, a
 *       dot, decimal without a leading zero); what it accepts prints back to
 *       the same text and names no stream of the store;
 *   'r' a script of operations on a small store (appends, reads, attaches,
 *       detaches, ends, cancels, clock steps and expiry, lookups) checked
 *       against a model: readers get the right bytes in order, a loss is
 *       real, lookups and expiry follow the window, memory stays bounded
 *       and all comes back;
 *   'm' content for chatstream_write_message, 'j' still-escaped content for
 *       chatstream_write_message_json: the data line is one line of valid,
 *       HTML-safe JSON that decodes to the content.
 * (Other first bytes map onto these by value.) */
#include "fuzz.h"
#include "../unit/jsonstr.h"
#include "gateway/chatstream.h"
#include "gateway/replay.h"

#include <stdbool.h>

/* ---- 'p' ---------------------------------------------------------------- */

static int b64_value(char c)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (int i = 0; i < 64; i++)
        if (alphabet[i] == c)
            return i;
    return -1;
}

static bool plainly_valid(const char *s, size_t len, uint64_t *n)
{
    if (len < 24 || len > 22 + 1 + 19 || s[22] != '.')
        return false;
    for (size_t i = 0; i < 22; i++)
        if (b64_value(s[i]) < 0)
            return false;
    if (b64_value(s[21]) & 15) /* 22 characters carry 132 bits: the last 4 are zero */
        return false;
    if (len > 24 && s[23] == '0')
        return false;
    uint64_t v = 0;
    for (size_t i = 23; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *n = v;
    return true;
}

static replay_store *parse_store;

static void parse_id(const char *in, size_t len)
{
    if (!parse_store) {
        char t[23];
        parse_store = replay_store_new(4096, 1000);
        FUZZ_CHECK(parse_store && replay_open(parse_store, "u", 0, t) && replay_open(parse_store, "", 0, t));
    }
    char token[23];
    memset(token, 'x', sizeof token);
    uint64_t n = 12345, want = 0;
    bool ok = replay_parse_last_event_id((slice){in, len}, token, &n);
    FUZZ_CHECK(ok == plainly_valid(in, len, &want));
    if (!ok) {
        FUZZ_CHECK(n == 12345 && token[0] == 'x' && token[22] == 'x');
        return;
    }
    FUZZ_CHECK(n == want && token[22] == '\0' && strlen(token) == 22);
    char again[64];
    int m = snprintf(again, sizeof again, "%s.%llu", token, (unsigned long long)n);
    FUZZ_CHECK(m > 0 && (size_t)m == len && memcmp(again, in, len) == 0);
    /* a made-up token names nobody's stream */
    replay_stream *st = NULL;
    FUZZ_CHECK(replay_find(parse_store, token, "u", n, 0, &st) == REPLAY_NOT_FOUND && st == NULL);
    FUZZ_CHECK(replay_find(parse_store, token, "", n, 0, &st) == REPLAY_NOT_FOUND && st == NULL);
}

/* ---- 'r' ---------------------------------------------------------------- */

enum { STREAMS = 2, READERS = 2, MAX_EVENTS = 2048, WINDOW = 1000 };

typedef struct model {
    replay_stream *st;
    char token[23];
    uint32_t gen; /* tells one stream's bytes from the next one's */
    bool alive, ended;
    uint64_t last;
    uint64_t deadline; /* UINT64_MAX: none */
    uint16_t lens[MAX_EVENTS + 1];
    replay_reader r[READERS];
    bool attached[READERS];
    bool husk; /* dropped while a reader was attached */
} model;

typedef struct script {
    const uint8_t *p;
    size_t left;
} script;

static unsigned take(script *s)
{
    if (s->left == 0)
        return 0;
    s->left--;
    return *s->p++;
}

static size_t fill_event(char *buf, uint32_t gen, uint64_t n, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (char)((gen * 131u + n * 31u + i * 7u) & 0xff);
    return len;
}

static bool event_is(slice e, uint32_t gen, uint64_t n, size_t len)
{
    if (e.len != len)
        return false;
    for (size_t i = 0; i < len; i++)
        if (e.ptr[i] != (char)((gen * 131u + n * 31u + i * 7u) & 0xff))
            return false;
    return true;
}

static size_t abandoned_seen;
static model *models_for_callback;

static void on_abandoned(void *ctx, replay_stream *st)
{
    FUZZ_CHECK(ctx == &abandoned_seen);
    abandoned_seen++;
    bool known = false;
    for (size_t i = 0; i < STREAMS; i++) {
        model *m = &models_for_callback[i];
        if (m->alive && m->st == st) {
            FUZZ_CHECK(!m->ended && replay_user(st) == m);
            known = true;
        }
    }
    FUZZ_CHECK(known);
    replay_cancel(st); /* allowed, and changes nothing */
}

static void open_stream(replay_store *s, model *m, uint32_t gen, uint64_t now)
{
    memset(m->lens, 0, sizeof m->lens);
    m->st = replay_open(s, gen & 1 ? "owner-a" : "owner-b", now, m->token);
    FUZZ_CHECK(m->st != NULL);
    replay_set_user(m->st, m);
    m->gen = gen;
    m->alive = true;
    m->ended = m->husk = false;
    m->last = 0;
    m->deadline = now + WINDOW;
    for (size_t k = 0; k < READERS; k++)
        m->attached[k] = false;
}

static bool any_attached(const model *m)
{
    for (size_t k = 0; k < READERS; k++)
        if (m->attached[k])
            return true;
    return false;
}

/* The stream is gone from the store: readers left attached hold a husk. */
static void model_drop(model *m)
{
    m->alive = false;
    m->husk = any_attached(m);
}

static void run_script(const uint8_t *data, size_t size)
{
    script sc = {data, size};
    size_t max = 64 + take(&sc) * 16; /* 64 .. 4144 bytes */
    replay_store *s = replay_store_new(max, WINDOW);
    FUZZ_CHECK(s != NULL);
    model *m = calloc(STREAMS, sizeof *m);
    FUZZ_CHECK(m != NULL);
    models_for_callback = m;
    uint64_t now = 0;
    uint32_t gen = 0;
    for (size_t i = 0; i < STREAMS; i++)
        open_stream(s, &m[i], gen++, now);
    char *buf = fuzz_alloc(max + 64);
    size_t per_stream = replay_store_bytes(s) / STREAMS; /* no rings yet */
    while (sc.left > 0) {
        unsigned op = take(&sc), arg = take(&sc);
        model *x = &m[op >> 7 & 1];
        size_t k = op >> 6 & 1;
        switch (op & 7) {
        case 0:
        case 1: { /* append: lengths up to a little past the maximum */
            if (!x->alive || x->ended || x->last >= MAX_EVENTS)
                break;
            size_t len = (op & 1) ? arg % 64 : arg * (max + 64) / 255;
            fill_event(buf, x->gen, x->last + 1, len);
            uint64_t n = 0;
            replay_append_result res = replay_append(x->st, (slice){buf, len}, &n);
            if (res == REPLAY_OK) {
                FUZZ_CHECK(n == x->last + 1);
                x->last = n;
                x->lens[n] = (uint16_t)len;
            } else {
                FUZZ_CHECK(res == REPLAY_FULL && replay_attached(x->st) == 0);
            }
            FUZZ_CHECK(replay_last(x->st) == x->last);
            break;
        }
        case 2: { /* read */
            if (!x->attached[k])
                break;
            replay_reader *r = &x->r[k];
            uint64_t want = r->next, n = 0;
            slice e;
            replay_next res = replay_read(r, &e, &n);
            if (x->husk || !x->alive) {
                FUZZ_CHECK(res == REPLAY_LOST);
            } else if (res == REPLAY_EVENT) {
                FUZZ_CHECK(n == want && n <= x->last && event_is(e, x->gen, n, x->lens[n]));
            } else if (res == REPLAY_LOST) {
                replay_stream *got;
                FUZZ_CHECK(replay_find(s, x->token, x->gen & 1 ? "owner-a" : "owner-b", want - 1, now, &got) ==
                               REPLAY_POSITION_LOST ||
                           now >= x->deadline);
            } else {
                FUZZ_CHECK(want == x->last + 1);
                FUZZ_CHECK(res == (x->ended ? REPLAY_DONE : REPLAY_WAIT));
            }
            break;
        }
        case 3: { /* attach where a lookup allows, or anywhere */
            if (x->attached[k] || !x->alive)
                break;
            uint64_t from = x->last >= arg ? x->last - arg : 0;
            replay_stream *got = NULL;
            replay_lookup l = replay_find(s, x->token, x->gen & 1 ? "owner-a" : "owner-b", from, now, &got);
            if (now >= x->deadline) {
                FUZZ_CHECK(l == REPLAY_NOT_FOUND);
                break;
            }
            FUZZ_CHECK(l != REPLAY_NOT_FOUND);
            if (l == REPLAY_FOUND)
                FUZZ_CHECK(got == x->st);
            replay_attach(x->st, &x->r[k], from);
            x->attached[k] = true;
            if (!x->ended)
                x->deadline = UINT64_MAX;
            break;
        }
        case 4: /* detach */
            if (!x->attached[k])
                break;
            replay_detach(&x->r[k], now);
            x->attached[k] = false;
            if (x->husk && !any_attached(x))
                x->husk = false;
            if (x->alive && !x->ended && !any_attached(x))
                x->deadline = now + WINDOW;
            break;
        case 5: /* end */
            if (!x->alive || x->ended)
                break;
            replay_end(x->st, now);
            x->ended = true;
            x->deadline = now + WINDOW;
            break;
        case 6: { /* the clock moves; expiry */
            now += arg * 10u;
            size_t before = abandoned_seen, expect = 0;
            for (size_t i = 0; i < STREAMS; i++)
                if (m[i].alive && m[i].deadline <= now && !m[i].ended)
                    expect++;
            uint64_t next = replay_expire(s, now, on_abandoned, &abandoned_seen);
            FUZZ_CHECK(abandoned_seen - before == expect);
            uint64_t want_next = UINT64_MAX;
            for (size_t i = 0; i < STREAMS; i++) {
                if (m[i].alive && m[i].deadline <= now)
                    model_drop(&m[i]);
                else if (m[i].alive && m[i].deadline < want_next)
                    want_next = m[i].deadline;
            }
            FUZZ_CHECK(next == want_next && replay_next_deadline(s) == want_next);
            break;
        }
        default: /* 7: cancel, then a new stream in its place once its readers have gone */
            if (x->alive && (arg & 1)) {
                replay_cancel(x->st);
                model_drop(x);
            } else if (!x->alive && !x->husk) {
                open_stream(s, x, gen++, now);
            } else if (x->alive) {
                /* a lookup by a stranger, or at a position never handed out */
                replay_stream *got;
                FUZZ_CHECK(replay_find(s, x->token, "stranger", 0, now, &got) == REPLAY_NOT_FOUND);
                replay_lookup l = replay_find(s, x->token, x->gen & 1 ? "owner-a" : "owner-b", x->last + 1 + arg, now, &got);
                FUZZ_CHECK(l == (now >= x->deadline ? REPLAY_NOT_FOUND : REPLAY_POSITION_LOST));
            }
            break;
        }
        size_t live = 0;
        for (size_t i = 0; i < STREAMS; i++)
            live += m[i].alive;
        FUZZ_CHECK(replay_store_streams(s) == live);
        FUZZ_CHECK(replay_store_bytes(s) <= STREAMS * (per_stream + max));
    }
    for (size_t i = 0; i < STREAMS; i++) {
        if (m[i].alive)
            replay_cancel(m[i].st);
        for (size_t k = 0; k < READERS; k++)
            if (m[i].attached[k])
                replay_detach(&m[i].r[k], now);
    }
    FUZZ_CHECK(replay_store_bytes(s) == 0 && replay_store_streams(s) == 0);
    replay_store_free(s);
    free(buf);
    free(m);
}

/* ---- 'm', 'j' ----------------------------------------------------------- */

static void write_message(const char *in, size_t len, bool escaped)
{
    size_t cap = 64 + len * 12;
    char *out = fuzz_alloc(cap), *dec = fuzz_alloc(len * 4 + 16), *orig = fuzz_alloc(len * 4 + 16);
    wbuf b = wbuf_over(out, cap);
    bool clean = true;
    if (escaped)
        clean = chatstream_write_message_json(&b, (slice){in, len});
    else
        chatstream_write_message(&b, (slice){in, len});
    FUZZ_CHECK(!b.overflow);
    static const char head[] = "event: message\ndata: {\"content\":\"", tail[] = "\"}\n\n";
    FUZZ_CHECK(b.len >= sizeof head + sizeof tail - 2 && memcmp(out, head, sizeof head - 1) == 0 &&
               memcmp(out + b.len - (sizeof tail - 1), tail, sizeof tail - 1) == 0);
    const char *c = out + sizeof head - 1;
    size_t clen = b.len - (sizeof head - 1) - (sizeof tail - 1);
    for (size_t i = 0; i < clen; i++)
        FUZZ_CHECK(c[i] != '\n' && c[i] != '\r' && c[i] != '<' && c[i] != '>' && c[i] != '&');
    FUZZ_CHECK(jsonstr_utf8_valid(c, clen) && !memmem(c, clen, "\xe2\x80\xa8", 3) && !memmem(c, clen, "\xe2\x80\xa9", 3));
    size_t dlen = 0, olen = 0;
    FUZZ_CHECK(jsonstr_decode(c, clen, dec, len * 4 + 16, &dlen));
    if (!escaped) {
        /* well-formed text comes back as it was */
        if (jsonstr_utf8_valid(in, len))
            FUZZ_CHECK(dlen == len && memcmp(dec, in, len) == 0);
    } else {
        /* clean exactly when the input was a well-formed JSON string, and
         * then it means what it meant */
        bool valid = jsonstr_decode(in, len, orig, len * 4 + 16, &olen);
        FUZZ_CHECK(clean == valid);
        if (valid)
            FUZZ_CHECK(dlen == olen && memcmp(dec, orig, olen) == 0);
    }
    free(orig);
    free(dec);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 64 * 1024)
        return 0;
    static const char modes[] = "prmj";
    char mode = (char)data[0];
    if (strchr(modes, mode) == NULL || mode == '\0')
        mode = modes[data[0] % (sizeof modes - 1)];
    char *in = fuzz_copy(data + 1, size - 1);
    size_t len = size - 1;
    switch (mode) {
    case 'p': parse_id(in, len); break;
    case 'r': run_script((const uint8_t *)in, len); break;
    case 'm': write_message(in, len, false); break;
    default: write_message(in, len, true); break;
    }
    free(in);
    return 0;
}
