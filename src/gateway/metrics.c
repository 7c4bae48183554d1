#include "gateway/metrics.h"

#include <stdlib.h>
#include <string.h>

#include "core/wbuf.h"

/* An initializer for a slice from a literal, usable in static tables. */
#define LIT(s) {(s), sizeof(s) - 1}

/* ---- label values ---------------------------------------------------- */

static const slice route_names[ROUTE_COUNT] = {
    LIT("chat"),     LIT("completions"), LIT("responses"), LIT("embeddings"), LIT("models"),
    LIT("other_v1"), LIT("chat_stream"), LIT("page"),      LIT("internal"),
};
static const slice uperr_names[UPERR_COUNT] = {
    LIT("dns"),      LIT("connect"),    LIT("tls"),        LIT("timeout"),
    LIT("protocol"), LIT("status_5xx"), LIT("status_429"), LIT("auth"),
};
static const slice limit_names[LIMIT_KIND_COUNT] = {LIT("requests"), LIT("tokens"), LIT("streams")};
static const slice auth_names[AUTHFAIL_COUNT] = {LIT("missing"), LIT("invalid_key"), LIT("invalid_token")};
static const slice tls_names[2] = {LIT("full"), LIT("resumed")};
static const slice reload_names[2] = {LIT("ok"), LIT("error")};
static const slice token_names[2] = {LIT("prompt"), LIT("completion")};

/* Histogram bounds in microseconds (le is inclusive), and as printed.
 * TTFB uses the first TTFB_BOUNDS of them. */
enum { DURATION_BOUNDS = 16, TTFB_BOUNDS = 13, HIST_SLOTS = DURATION_BOUNDS + 1 };
static const uint64_t bound_us[DURATION_BOUNDS] = {
    5000,    10000,    25000,    50000,    100000,   250000,    500000,    1000000,
    2500000, 5000000, 10000000, 30000000, 60000000, 120000000, 300000000, 600000000,
};
static const slice bound_le[DURATION_BOUNDS + 1] = {
    LIT("0.005"), LIT("0.01"), LIT("0.025"), LIT("0.05"), LIT("0.1"), LIT("0.25"),
    LIT("0.5"),   LIT("1"),    LIT("2.5"),   LIT("5"),    LIT("10"),  LIT("30"),
    LIT("60"),    LIT("120"),  LIT("300"),   LIT("600"),  LIT("+Inf"),
};

/* A sample's labels are written as openers and values: `{route="` chat
 * `",status="` 200 and a closing `"} `, so a line is a few copies. */
#define FIRST(key) SLICE_LIT("{" key "=\"")
#define NEXT(key) SLICE_LIT("\"," key "=\"")
#define NONE SLICE_LIT("")

/* ---- families, in page order ------------------------------------------ */

typedef enum family_id {
    F_REQUESTS,
    F_CONNECTIONS,
    F_STREAMS,
    F_TTFB,
    F_DURATION,
    F_CHUNKS,
    F_TOKENS,
    F_UPSTREAM_ERRORS,
    F_RETRIES,
    F_EJECTIONS,
    F_TLS,
    F_RATE_LIMITED,
    F_AUTH_FAILURES,
    F_RESUMED,
    F_RELOADS,
    F_BUILD_INFO,
    F_COUNT
} family_id;

typedef struct family {
    slice name, type, help;
} family;

static const family families[F_COUNT] = {
    [F_REQUESTS] = {LIT("ssegate_requests_total"), LIT("counter"),
                    LIT("Requests answered, by route and HTTP status.")},
    [F_CONNECTIONS] = {LIT("ssegate_active_connections"), LIT("gauge"), LIT("Client connections open now.")},
    [F_STREAMS] = {LIT("ssegate_active_streams"), LIT("gauge"), LIT("Streaming responses being relayed now.")},
    [F_TTFB] = {LIT("ssegate_upstream_ttfb_seconds"), LIT("histogram"),
                LIT("Time from sending a request upstream to its first response byte.")},
    [F_DURATION] = {LIT("ssegate_request_duration_seconds"), LIT("histogram"),
                    LIT("Time from a request's first byte to the end of its response, by route.")},
    [F_CHUNKS] = {LIT("ssegate_chunks_relayed_total"), LIT("counter"), LIT("Stream chunks relayed to clients.")},
    [F_TOKENS] = {LIT("ssegate_tokens_total"), LIT("counter"), LIT("Tokens used, by client and kind.")},
    [F_UPSTREAM_ERRORS] = {LIT("ssegate_upstream_errors_total"), LIT("counter"),
                           LIT("Failed upstream attempts, by upstream and kind of failure.")},
    [F_RETRIES] = {LIT("ssegate_retries_total"), LIT("counter"), LIT("Requests retried, by upstream.")},
    [F_EJECTIONS] = {LIT("ssegate_upstream_ejections_total"), LIT("counter"),
                     LIT("Times an upstream was taken out of rotation after consecutive failures.")},
    [F_TLS] = {LIT("ssegate_tls_handshakes_total"), LIT("counter"),
               LIT("Upstream TLS handshakes, full or resumed from a session.")},
    [F_RATE_LIMITED] = {LIT("ssegate_rate_limited_total"), LIT("counter"),
                        LIT("Requests refused by a rate limit, by client and limit.")},
    [F_AUTH_FAILURES] = {LIT("ssegate_auth_failures_total"), LIT("counter"),
                         LIT("Requests refused for authentication, by reason.")},
    [F_RESUMED] = {LIT("ssegate_streams_resumed_total"), LIT("counter"), LIT("Streams resumed after a reconnect.")},
    [F_RELOADS] = {LIT("ssegate_config_reloads_total"), LIT("counter"), LIT("Configuration reloads, by result.")},
    [F_BUILD_INFO] = {LIT("ssegate_build_info"), LIT("gauge"), LIT("Always 1; the version is in the label.")},
};

/* ---- routes ----------------------------------------------------------- */

/* path is prefix itself or continues below it. */
static bool is_under(slice path, slice prefix)
{
    return slice_starts_with(path, prefix) && (path.len == prefix.len || path.ptr[prefix.len] == '/');
}

metrics_route metrics_route_of(slice path)
{
    if (is_under(path, SLICE_LIT("/v1"))) {
        if (slice_eq(path, SLICE_LIT("/v1/chat/completions")))
            return ROUTE_CHAT;
        if (slice_eq(path, SLICE_LIT("/v1/completions")))
            return ROUTE_COMPLETIONS;
        if (slice_eq(path, SLICE_LIT("/v1/responses")))
            return ROUTE_RESPONSES;
        if (slice_eq(path, SLICE_LIT("/v1/embeddings")))
            return ROUTE_EMBEDDINGS;
        if (is_under(path, SLICE_LIT("/v1/models")))
            return ROUTE_MODELS;
        return ROUTE_OTHER_V1;
    }
    if (slice_eq(path, SLICE_LIT("/chat/stream")))
        return ROUTE_CHAT_STREAM;
    if (slice_eq(path, SLICE_LIT("/")))
        return ROUTE_PAGE;
    return ROUTE_INTERNAL;
}

/* ---- names ------------------------------------------------------------ */

/* A name is stored as its escaped label value: escaping doubles a byte at
 * most, and maps distinct cleaned names to distinct strings, so lookups
 * compare escaped forms. */
enum { NAME_ESCAPED_MAX = 2 * METRICS_NAME_MAX };

/* Length of the well-formed UTF-8 sequence at s (n bytes left), 0 if none. */
static size_t utf8_sequence(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xF0 && s[1] < 0x90)) /* overlong */
        return 0;
    if ((c == 0xED && s[1] >= 0xA0) || (c == 0xF4 && s[1] >= 0x90)) /* surrogate, past U+10FFFF */
        return 0;
    return len;
}

/* Writes the label value for `in`, keeping at most `limit` cleaned bytes of
 * it (whole characters only), into out (room for 2 * limit bytes). */
static size_t escape_label(slice in, size_t limit, char *out)
{
    size_t kept = 0, n = 0, i = 0;
    while (i < in.len) {
        const unsigned char *p = (const unsigned char *)in.ptr + i;
        size_t len = utf8_sequence(p, in.len - i);
        bool control = len == 1 && ((p[0] < 0x20 && p[0] != '\t' && p[0] != '\n') || p[0] == 0x7F);
        if (len == 0 || control) {
            p = (const unsigned char *)"?";
            len = 1;
            i++;
        } else {
            i += len;
        }
        if (kept + len > limit)
            break;
        kept += len;
        if (p[0] == '\\' || p[0] == '"') {
            out[n++] = '\\';
            out[n++] = (char)p[0];
        } else if (p[0] == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else {
            memcpy(out + n, p, len);
            n += len;
        }
    }
    return n;
}

typedef struct name_entry {
    size_t offset; /* into names.text */
    uint32_t hash;
    uint32_t len;
} name_entry;

/* Interned names: open addressing over ids (0 marks a free slot, else
 * id + 1), at most half full, with the text bump-allocated from one block. */
typedef struct names {
    uint32_t *slots;
    size_t mask;
    name_entry *entry;
    char *text;
    size_t count, max, text_used;
} names;

static uint32_t fnv1a(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static bool names_init(names *t, size_t max)
{
    size_t nslots = 2;
    while (nslots < 2 * max)
        nslots *= 2;
    *t = (names){.mask = nslots - 1, .max = max};
    t->slots = calloc(nslots, sizeof *t->slots);
    t->entry = calloc(max, sizeof *t->entry);
    t->text = malloc(max * NAME_ESCAPED_MAX);
    return t->slots && t->entry && t->text;
}

static void names_free(names *t)
{
    free(t->slots);
    free(t->entry);
    free(t->text);
}

static slice names_get(const names *t, size_t id)
{
    return (slice){t->text + t->entry[id].offset, t->entry[id].len};
}

/* The id of name, adding it while there is room; UINT32_MAX when full. */
/* A name that escaping leaves as it is: printable ASCII but '\\' and '"',
 * short enough to keep whole. Nearly every client and upstream name is. */
static bool label_is_clean(slice name)
{
    if (name.len > METRICS_NAME_MAX)
        return false;
    for (size_t i = 0; i < name.len; i++) {
        unsigned char c = (unsigned char)name.ptr[i];
        if (c < 0x20 || c > 0x7e || c == '\\' || c == '"')
            return false;
    }
    return true;
}

static uint32_t names_intern(names *t, slice name)
{
    /* A clean name (the client of every anonymous request, nearly every
     * other) is its own label: looked up as it is, not escaped each time. */
    char escaped_mem[NAME_ESCAPED_MAX];
    const char *escaped = name.ptr;
    size_t len = name.len;
    if (!label_is_clean(name)) {
        len = escape_label(name, METRICS_NAME_MAX, escaped_mem);
        escaped = escaped_mem;
    }
    uint32_t h = fnv1a(escaped, len);
    size_t i = h & t->mask;
    for (;;) {
        uint32_t slot = t->slots[i];
        if (slot == 0)
            break;
        const name_entry *e = &t->entry[slot - 1];
        if (e->hash == h && e->len == len && memcmp(t->text + e->offset, escaped, len) == 0)
            return slot - 1;
        i = (i + 1) & t->mask;
    }
    if (t->count == t->max)
        return UINT32_MAX;
    uint32_t id = (uint32_t)t->count++;
    t->entry[id] = (name_entry){.offset = t->text_used, .hash = h, .len = (uint32_t)len};
    if (len)
        memcpy(t->text + t->text_used, escaped, len);
    t->text_used += len;
    t->slots[i] = id + 1;
    return id;
}

/* ---- the registry ----------------------------------------------------- */

typedef struct histogram {
    uint64_t bucket[HIST_SLOTS]; /* not cumulative; [bounds] counts what lies above every bound */
    uint64_t count, sum_us;
} histogram;

/* Index 0 holds every status outside 100..599. */
enum { STATUS_SLOTS = 600, STATUS_FIRST = 100 };

typedef struct client_counts {
    uint64_t tokens[2];
    uint64_t limited[LIMIT_KIND_COUNT];
} client_counts;

typedef struct upstream_counts {
    histogram ttfb;
    uint64_t errors[UPERR_COUNT];
    uint64_t retries, ejections;
} upstream_counts;

struct metrics {
    uint64_t requests[ROUTE_COUNT][STATUS_SLOTS];
    histogram duration[ROUTE_COUNT];
    int64_t connections, streams;
    uint64_t chunks, tls[2], auth[AUTHFAIL_COUNT], resumed, reloads[2];
    names clients, upstreams;
    client_counts *client;     /* by client id; 0 is "other" */
    upstream_counts *upstream; /* by upstream id */
    char *version;             /* escaped */
    size_t version_len;
    char *page;
    size_t page_cap;
};

static void observe(histogram *h, size_t bounds, uint64_t us)
{
    size_t i = 0;
    while (i < bounds && us > bound_us[i])
        i++;
    h->bucket[i]++;
    h->count++;
    h->sum_us += us;
}

static client_counts *client_of(metrics *m, uint32_t id)
{
    return &m->client[id < m->clients.max ? id : 0];
}

static upstream_counts *upstream_of(metrics *m, uint32_t id)
{
    return &m->upstream[id < m->upstreams.max ? id : m->upstreams.max - 1];
}

uint32_t metrics_client(metrics *m, slice name)
{
    uint32_t id = names_intern(&m->clients, name);
    return id == UINT32_MAX ? 0 : id;
}

uint32_t metrics_upstream(metrics *m, slice name)
{
    uint32_t id = names_intern(&m->upstreams, name);
    return id == UINT32_MAX ? (uint32_t)(m->upstreams.max - 1) : id;
}

void metrics_request(metrics *m, metrics_route route, int status, uint64_t duration_us)
{
    if ((unsigned)route >= ROUTE_COUNT)
        route = ROUTE_INTERNAL;
    size_t slot = status >= STATUS_FIRST && status < STATUS_SLOTS ? (size_t)status : 0;
    m->requests[route][slot]++;
    observe(&m->duration[route], DURATION_BOUNDS, duration_us);
}

void metrics_ttfb(metrics *m, uint32_t upstream, uint64_t us)
{
    observe(&upstream_of(m, upstream)->ttfb, TTFB_BOUNDS, us);
}

void metrics_chunks(metrics *m, uint64_t n) { m->chunks += n; }

void metrics_tokens(metrics *m, uint32_t client, uint64_t prompt, uint64_t completion)
{
    client_counts *c = client_of(m, client);
    c->tokens[0] += prompt;
    c->tokens[1] += completion;
}

void metrics_upstream_error(metrics *m, uint32_t upstream, metrics_upstream_error_kind kind)
{
    if ((unsigned)kind < UPERR_COUNT)
        upstream_of(m, upstream)->errors[kind]++;
}

void metrics_retry(metrics *m, uint32_t upstream) { upstream_of(m, upstream)->retries++; }

void metrics_upstream_ejection(metrics *m, uint32_t upstream) { upstream_of(m, upstream)->ejections++; }

void metrics_tls_handshake(metrics *m, bool resumed) { m->tls[resumed ? 1 : 0]++; }

void metrics_rate_limited(metrics *m, uint32_t client, metrics_limit_kind kind)
{
    if ((unsigned)kind < LIMIT_KIND_COUNT)
        client_of(m, client)->limited[kind]++;
}

void metrics_auth_failure(metrics *m, metrics_auth_failure_reason reason)
{
    if ((unsigned)reason < AUTHFAIL_COUNT)
        m->auth[reason]++;
}

void metrics_stream_resumed(metrics *m) { m->resumed++; }

void metrics_config_reload(metrics *m, bool ok) { m->reloads[ok ? 0 : 1]++; }

void metrics_gauge_connections(metrics *m, int64_t delta) { m->connections += delta; }

void metrics_gauge_streams(metrics *m, int64_t delta) { m->streams += delta; }

/* ---- the page --------------------------------------------------------- */

/* The widest value: 20 digits of a uint64_t, "-" and 19 digits of an
 * int64_t, or 14 + "." + 6 digits of a uint64_t count of microseconds. */
enum { VALUE_MAX = 21 };

/* wbuf_put's contract (a write that does not fit marks the buffer and is
 * dropped), inlined: a page is tens of thousands of short pieces. */
static inline void emit(wbuf *b, slice s)
{
    if (b->overflow || s.len > b->cap - b->len) {
        b->overflow = true;
        return;
    }
    memcpy(b->ptr + b->len, s.ptr, s.len);
    b->len += s.len;
}

/* A value and the line's end. */
static inline void emit_u64_line(wbuf *b, uint64_t v)
{
    char digits[21];
    size_t n = 0;
    digits[sizeof digits - 1 - n++] = '\n';
    do {
        digits[sizeof digits - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    emit(b, (slice){digits + sizeof digits - n, n});
}

static void emit_i64_line(wbuf *b, int64_t v)
{
    if (v < 0)
        emit(b, SLICE_LIT("-"));
    emit_u64_line(b, v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v);
}

/* Microseconds as seconds with six decimals, without floating point. */
static void emit_seconds_line(wbuf *b, uint64_t us)
{
    char digits[VALUE_MAX + 1];
    size_t n = 0;
    uint64_t whole = us / 1000000, frac = us % 1000000;
    digits[sizeof digits - 1 - n++] = '\n';
    for (size_t i = 0; i < 6; i++) {
        digits[sizeof digits - 1 - n++] = (char)('0' + frac % 10);
        frac /= 10;
    }
    digits[sizeof digits - 1 - n++] = '.';
    do {
        digits[sizeof digits - 1 - n++] = (char)('0' + whole % 10);
        whole /= 10;
    } while (whole);
    emit(b, (slice){digits + sizeof digits - n, n});
}

static void put_header(wbuf *b, const family *f)
{
    emit(b, SLICE_LIT("# HELP "));
    emit(b, f->name);
    emit(b, SLICE_LIT(" "));
    emit(b, f->help);
    emit(b, SLICE_LIT("\n# TYPE "));
    emit(b, f->name);
    emit(b, SLICE_LIT(" "));
    emit(b, f->type);
    emit(b, SLICE_LIT("\n"));
}

static size_t header_bound(const family *f)
{
    return 7 + f->name.len + 1 + f->help.len + 8 + f->name.len + 1 + f->type.len + 1;
}

/* Writes `name suffix{k1="v1",k2="v2"} ` from the openers FIRST(k1) and
 * NEXT(k2) (NONE for a label that is not there); the value follows. */
static inline void put_series(wbuf *b, const family *f, slice suffix, slice first, slice v1, slice next, slice v2)
{
    emit(b, f->name);
    emit(b, suffix);
    if (first.len) {
        emit(b, first);
        emit(b, v1);
        emit(b, next);
        emit(b, v2);
        emit(b, SLICE_LIT("\"} "));
    } else {
        emit(b, SLICE_LIT(" "));
    }
}

/* The most a put_series line plus its value takes, label values at most
 * v1_max and v2_max bytes. Mirrors put_series. */
static size_t line_bound(const family *f, slice suffix, slice first, size_t v1_max, slice next, size_t v2_max)
{
    size_t n = f->name.len + suffix.len + VALUE_MAX + 1;
    if (first.len)
        n += first.len + v1_max + next.len + v2_max + 3;
    else
        n += 1;
    return n;
}

static void put_counter(wbuf *b, const family *f, slice first, slice v1, slice next, slice v2, uint64_t v)
{
    put_series(b, f, NONE, first, v1, next, v2);
    emit_u64_line(b, v);
}

static void put_histogram(wbuf *b, const family *f, slice first, slice value, const histogram *h, size_t bounds)
{
    uint64_t cumulative = 0;
    for (size_t i = 0; i < bounds; i++) {
        cumulative += h->bucket[i];
        put_series(b, f, SLICE_LIT("_bucket"), first, value, NEXT("le"), bound_le[i]);
        emit_u64_line(b, cumulative);
    }
    put_series(b, f, SLICE_LIT("_bucket"), first, value, NEXT("le"), bound_le[DURATION_BOUNDS]);
    emit_u64_line(b, h->count);
    put_series(b, f, SLICE_LIT("_sum"), first, value, NONE, NONE);
    emit_seconds_line(b, h->sum_us);
    put_series(b, f, SLICE_LIT("_count"), first, value, NONE, NONE);
    emit_u64_line(b, h->count);
}

static size_t histogram_bound(const family *f, slice first, size_t value_max, size_t bounds)
{
    size_t le_max = 0;
    for (size_t i = 0; i <= DURATION_BOUNDS; i++)
        le_max = bound_le[i].len > le_max ? bound_le[i].len : le_max;
    return (bounds + 1) * line_bound(f, SLICE_LIT("_bucket"), first, value_max, NEXT("le"), le_max) +
           line_bound(f, SLICE_LIT("_sum"), first, value_max, NONE, 0) +
           line_bound(f, SLICE_LIT("_count"), first, value_max, NONE, 0);
}

static size_t longest(const slice *v, size_t n)
{
    size_t max = 0;
    for (size_t i = 0; i < n; i++)
        max = v[i].len > max ? v[i].len : max;
    return max;
}

/* The three digits of a status, or "0" for slot 0. */
static slice status_label(size_t slot, char digits[3])
{
    if (slot == 0)
        return SLICE_LIT("0");
    digits[0] = (char)('0' + slot / 100);
    digits[1] = (char)('0' + slot / 10 % 10);
    digits[2] = (char)('0' + slot % 10);
    return (slice){digits, 3};
}

/* Status slots a route can fill: 0 and 100..599. */
enum { STATUS_LABELS = 1 + STATUS_SLOTS - STATUS_FIRST, STATUS_LABEL_MAX = 3 };

/* Checked size arithmetic for the page bound: SIZE_MAX once anything overflows. */
static size_t sat_add(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }
static size_t sat_mul(size_t a, size_t b) { return b && a > SIZE_MAX / b ? SIZE_MAX : a * b; }

static size_t page_bound(size_t clients, size_t upstreams, size_t version_len)
{
    const family *f = families;
    size_t n = 0;
    for (size_t i = 0; i < F_COUNT; i++)
        n = sat_add(n, header_bound(&f[i]));
    size_t route_max = longest(route_names, ROUTE_COUNT);
    n = sat_add(n, ROUTE_COUNT * STATUS_LABELS *
                       line_bound(&f[F_REQUESTS], NONE, FIRST("route"), route_max, NEXT("status"), STATUS_LABEL_MAX));
    n = sat_add(n, line_bound(&f[F_CONNECTIONS], NONE, NONE, 0, NONE, 0));
    n = sat_add(n, line_bound(&f[F_STREAMS], NONE, NONE, 0, NONE, 0));
    n = sat_add(n, sat_mul(upstreams, histogram_bound(&f[F_TTFB], FIRST("upstream"), NAME_ESCAPED_MAX, TTFB_BOUNDS)));
    n = sat_add(n, ROUTE_COUNT * histogram_bound(&f[F_DURATION], FIRST("route"), route_max, DURATION_BOUNDS));
    n = sat_add(n, line_bound(&f[F_CHUNKS], NONE, NONE, 0, NONE, 0));
    n = sat_add(n, sat_mul(clients, 2 * line_bound(&f[F_TOKENS], NONE, FIRST("client"), NAME_ESCAPED_MAX,
                                                   NEXT("kind"), longest(token_names, 2))));
    n = sat_add(n, sat_mul(upstreams, UPERR_COUNT * line_bound(&f[F_UPSTREAM_ERRORS], NONE, FIRST("upstream"),
                                                               NAME_ESCAPED_MAX, NEXT("kind"),
                                                               longest(uperr_names, UPERR_COUNT))));
    n = sat_add(n, sat_mul(upstreams,
                           line_bound(&f[F_RETRIES], NONE, FIRST("upstream"), NAME_ESCAPED_MAX, NONE, 0)));
    n = sat_add(n, sat_mul(upstreams,
                           line_bound(&f[F_EJECTIONS], NONE, FIRST("upstream"), NAME_ESCAPED_MAX, NONE, 0)));
    n = sat_add(n, 2 * line_bound(&f[F_TLS], NONE, FIRST("kind"), longest(tls_names, 2), NONE, 0));
    n = sat_add(n, sat_mul(clients, LIMIT_KIND_COUNT * line_bound(&f[F_RATE_LIMITED], NONE, FIRST("client"),
                                                                  NAME_ESCAPED_MAX, NEXT("limit"),
                                                                  longest(limit_names, LIMIT_KIND_COUNT))));
    n = sat_add(n, AUTHFAIL_COUNT * line_bound(&f[F_AUTH_FAILURES], NONE, FIRST("reason"),
                                               longest(auth_names, AUTHFAIL_COUNT), NONE, 0));
    n = sat_add(n, line_bound(&f[F_RESUMED], NONE, NONE, 0, NONE, 0));
    n = sat_add(n, 2 * line_bound(&f[F_RELOADS], NONE, FIRST("result"), longest(reload_names, 2), NONE, 0));
    n = sat_add(n, line_bound(&f[F_BUILD_INFO], NONE, FIRST("version"), version_len, NONE, 0));
    return n;
}

slice metrics_render(metrics *m)
{
    const family *f = families;
    wbuf b = wbuf_over(m->page, m->page_cap);
    char digits[3];

    put_header(&b, &f[F_REQUESTS]);
    for (size_t r = 0; r < ROUTE_COUNT; r++)
        for (size_t s = 0; s < STATUS_SLOTS; s++)
            if (m->requests[r][s])
                put_counter(&b, &f[F_REQUESTS], FIRST("route"), route_names[r], NEXT("status"),
                            status_label(s, digits), m->requests[r][s]);

    put_header(&b, &f[F_CONNECTIONS]);
    put_series(&b, &f[F_CONNECTIONS], NONE, NONE, NONE, NONE, NONE);
    emit_i64_line(&b, m->connections);
    put_header(&b, &f[F_STREAMS]);
    put_series(&b, &f[F_STREAMS], NONE, NONE, NONE, NONE, NONE);
    emit_i64_line(&b, m->streams);

    put_header(&b, &f[F_TTFB]);
    for (size_t u = 0; u < m->upstreams.count; u++)
        put_histogram(&b, &f[F_TTFB], FIRST("upstream"), names_get(&m->upstreams, u), &m->upstream[u].ttfb,
                      TTFB_BOUNDS);

    put_header(&b, &f[F_DURATION]);
    for (size_t r = 0; r < ROUTE_COUNT; r++)
        if (m->duration[r].count)
            put_histogram(&b, &f[F_DURATION], FIRST("route"), route_names[r], &m->duration[r], DURATION_BOUNDS);

    put_header(&b, &f[F_CHUNKS]);
    put_counter(&b, &f[F_CHUNKS], NONE, NONE, NONE, NONE, m->chunks);

    put_header(&b, &f[F_TOKENS]);
    for (size_t c = 0; c < m->clients.count; c++) {
        const client_counts *cc = &m->client[c];
        if (cc->tokens[0] | cc->tokens[1])
            for (size_t k = 0; k < 2; k++)
                put_counter(&b, &f[F_TOKENS], FIRST("client"), names_get(&m->clients, c), NEXT("kind"),
                            token_names[k], cc->tokens[k]);
    }

    put_header(&b, &f[F_UPSTREAM_ERRORS]);
    for (size_t u = 0; u < m->upstreams.count; u++)
        for (size_t k = 0; k < UPERR_COUNT; k++)
            put_counter(&b, &f[F_UPSTREAM_ERRORS], FIRST("upstream"), names_get(&m->upstreams, u), NEXT("kind"),
                        uperr_names[k], m->upstream[u].errors[k]);

    put_header(&b, &f[F_RETRIES]);
    for (size_t u = 0; u < m->upstreams.count; u++)
        put_counter(&b, &f[F_RETRIES], FIRST("upstream"), names_get(&m->upstreams, u), NONE, NONE,
                    m->upstream[u].retries);

    put_header(&b, &f[F_EJECTIONS]);
    for (size_t u = 0; u < m->upstreams.count; u++)
        put_counter(&b, &f[F_EJECTIONS], FIRST("upstream"), names_get(&m->upstreams, u), NONE, NONE,
                    m->upstream[u].ejections);

    put_header(&b, &f[F_TLS]);
    for (size_t k = 0; k < 2; k++)
        put_counter(&b, &f[F_TLS], FIRST("kind"), tls_names[k], NONE, NONE, m->tls[k]);

    put_header(&b, &f[F_RATE_LIMITED]);
    for (size_t c = 0; c < m->clients.count; c++) {
        const client_counts *cc = &m->client[c];
        if (cc->limited[0] | cc->limited[1] | cc->limited[2])
            for (size_t k = 0; k < LIMIT_KIND_COUNT; k++)
                put_counter(&b, &f[F_RATE_LIMITED], FIRST("client"), names_get(&m->clients, c), NEXT("limit"),
                            limit_names[k], cc->limited[k]);
    }

    put_header(&b, &f[F_AUTH_FAILURES]);
    for (size_t k = 0; k < AUTHFAIL_COUNT; k++)
        put_counter(&b, &f[F_AUTH_FAILURES], FIRST("reason"), auth_names[k], NONE, NONE, m->auth[k]);

    put_header(&b, &f[F_RESUMED]);
    put_counter(&b, &f[F_RESUMED], NONE, NONE, NONE, NONE, m->resumed);

    put_header(&b, &f[F_RELOADS]);
    for (size_t k = 0; k < 2; k++)
        put_counter(&b, &f[F_RELOADS], FIRST("result"), reload_names[k], NONE, NONE, m->reloads[k]);

    put_header(&b, &f[F_BUILD_INFO]);
    put_counter(&b, &f[F_BUILD_INFO], FIRST("version"), (slice){m->version, m->version_len}, NONE, NONE, 1);

    /* page_bound covers every line above at its widest; a cut page would
     * only mean that arithmetic is wrong, and is not served half-written. */
    if (b.overflow)
        return (slice){NULL, 0};
    return wbuf_slice(&b);
}

size_t metrics_render_capacity(const metrics *m) { return m->page_cap; }

/* ---- life cycle ------------------------------------------------------- */

/* Far beyond any deployment; keeps ids in 32 bits and the page bound sane. */
enum { MAX_CLIENTS_LIMIT = 1 << 22, MAX_UPSTREAMS_LIMIT = 1 << 16 };

metrics *metrics_new(size_t max_clients, size_t max_upstreams, const char *version)
{
    if (max_clients > MAX_CLIENTS_LIMIT || max_upstreams > MAX_UPSTREAMS_LIMIT)
        return NULL;
    if (max_upstreams == 0)
        max_upstreams = 1;
    metrics *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    slice v = slice_of(version);
    bool ok = names_init(&m->clients, max_clients + 1) && names_init(&m->upstreams, max_upstreams);
    m->client = calloc(max_clients + 1, sizeof *m->client);
    m->upstream = calloc(max_upstreams, sizeof *m->upstream);
    m->version = malloc(2 * v.len + 1);
    if (ok && m->version) {
        m->version_len = escape_label(v, v.len, m->version);
        m->page_cap = page_bound(max_clients + 1, max_upstreams, m->version_len);
        if (m->page_cap < SIZE_MAX)
            m->page = malloc(m->page_cap);
    }
    if (!ok || !m->client || !m->upstream || !m->version || !m->page) {
        metrics_free(m);
        return NULL;
    }
    names_intern(&m->clients, SLICE_LIT("other"));
    return m;
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    names_free(&m->clients);
    names_free(&m->upstreams);
    free(m->client);
    free(m->upstream);
    free(m->version);
    free(m->page);
    free(m);
}
