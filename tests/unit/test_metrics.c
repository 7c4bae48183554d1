/* The metrics registry: route mapping, name interning, label escaping,
 * histogram buckets, the exact page for a known sequence, the worst-case
 * page bound, and the render cost with many clients. With METRICS_SAMPLE
 * set, metrics_sample_page writes a populated page there for promtool. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway/metrics.h"
#include "unit.h"

/* The page as a NUL-terminated string (tests only; freed by the caller). */
static char *page_text(metrics *m)
{
    slice p = metrics_render(m);
    char *s = malloc(p.len + 1);
    if (!s)
        abort();
    if (p.len)
        memcpy(s, p.ptr, p.len);
    s[p.len] = '\0';
    return s;
}

/* page holds `line` as one whole line. */
static bool has_line(const char *page, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = page; (p = strstr(p, line)) != NULL; p++)
        if ((p == page || p[-1] == '\n') && p[n] == '\n')
            return true;
    return false;
}

#define CHECK_LINE(page, line)                                                             \
    do {                                                                                   \
        if (!has_line((page), (line)))                                                     \
            unit_fail(__FILE__, __LINE__, "no line \"%s\"", (line));                       \
    } while (0)

static size_t count_prefix(const char *page, const char *prefix)
{
    size_t n = 0, len = strlen(prefix);
    for (const char *p = page; *p;) {
        if (strncmp(p, prefix, len) == 0)
            n++;
        const char *nl = strchr(p, '\n');
        if (!nl)
            break;
        p = nl + 1;
    }
    return n;
}

TEST(metrics_route_mapping)
{
    CHECK(metrics_route_of(SLICE_LIT("/v1/chat/completions")) == ROUTE_CHAT);
    CHECK(metrics_route_of(SLICE_LIT("/v1/completions")) == ROUTE_COMPLETIONS);
    CHECK(metrics_route_of(SLICE_LIT("/v1/responses")) == ROUTE_RESPONSES);
    CHECK(metrics_route_of(SLICE_LIT("/v1/embeddings")) == ROUTE_EMBEDDINGS);
    CHECK(metrics_route_of(SLICE_LIT("/v1/models")) == ROUTE_MODELS);
    CHECK(metrics_route_of(SLICE_LIT("/v1/models/gpt-4o-mini")) == ROUTE_MODELS);
    CHECK(metrics_route_of(SLICE_LIT("/v1/modelsx")) == ROUTE_OTHER_V1);
    CHECK(metrics_route_of(SLICE_LIT("/v1/chat/completions/x")) == ROUTE_OTHER_V1);
    CHECK(metrics_route_of(SLICE_LIT("/v1/files")) == ROUTE_OTHER_V1);
    CHECK(metrics_route_of(SLICE_LIT("/v1")) == ROUTE_OTHER_V1);
    CHECK(metrics_route_of(SLICE_LIT("/v1/")) == ROUTE_OTHER_V1);
    CHECK(metrics_route_of(SLICE_LIT("/v10/chat/completions")) == ROUTE_INTERNAL);
    CHECK(metrics_route_of(SLICE_LIT("/chat/stream")) == ROUTE_CHAT_STREAM);
    CHECK(metrics_route_of(SLICE_LIT("/chat/streams")) == ROUTE_INTERNAL);
    CHECK(metrics_route_of(SLICE_LIT("/")) == ROUTE_PAGE);
    CHECK(metrics_route_of(SLICE_LIT("")) == ROUTE_INTERNAL);
    CHECK(metrics_route_of(SLICE_LIT("/ping")) == ROUTE_INTERNAL);
    CHECK(metrics_route_of(SLICE_LIT("/metrics")) == ROUTE_INTERNAL);
    CHECK(metrics_route_of(SLICE_LIT("/nope")) == ROUTE_INTERNAL);
}

TEST(metrics_interning_and_other)
{
    metrics *m = metrics_new(3, 2, "t");
    CHECK(m != NULL);
    if (!m)
        return;
    uint32_t other = metrics_client(m, SLICE_LIT("other"));
    uint32_t a = metrics_client(m, SLICE_LIT("alice"));
    uint32_t b = metrics_client(m, SLICE_LIT("bob"));
    uint32_t c = metrics_client(m, SLICE_LIT("carol"));
    CHECK(a != other && b != other && c != other);
    CHECK(a != b && b != c && a != c);
    CHECK(metrics_client(m, SLICE_LIT("alice")) == a);
    CHECK(metrics_client(m, SLICE_LIT("carol")) == c);
    /* the fourth distinct name has no room of its own */
    CHECK(metrics_client(m, SLICE_LIT("dave")) == other);
    CHECK(metrics_client(m, SLICE_LIT("erin")) == other);
    CHECK(metrics_client(m, SLICE_LIT("bob")) == b);

    metrics_tokens(m, metrics_client(m, SLICE_LIT("dave")), 5, 0);
    metrics_tokens(m, metrics_client(m, SLICE_LIT("erin")), 2, 1);
    metrics_tokens(m, 9999, 1, 0); /* an id never handed out counts as "other" */
    metrics_tokens(m, a, 0, 4);
    char *page = page_text(m);
    CHECK_LINE(page, "ssegate_tokens_total{client=\"other\",kind=\"prompt\"} 8");
    CHECK_LINE(page, "ssegate_tokens_total{client=\"other\",kind=\"completion\"} 1");
    CHECK_LINE(page, "ssegate_tokens_total{client=\"alice\",kind=\"prompt\"} 0");
    CHECK_LINE(page, "ssegate_tokens_total{client=\"alice\",kind=\"completion\"} 4");
    CHECK(strstr(page, "client=\"dave\"") == NULL);
    CHECK(strstr(page, "client=\"bob\"") == NULL); /* nothing counted for bob */
    free(page);

    uint32_t u0 = metrics_upstream(m, SLICE_LIT("openai"));
    uint32_t u1 = metrics_upstream(m, SLICE_LIT("azure"));
    CHECK(u0 != u1);
    CHECK(metrics_upstream(m, SLICE_LIT("openai")) == u0);
    CHECK(metrics_upstream(m, SLICE_LIT("third")) == u1); /* beyond max_upstreams: the last id */
    metrics_free(m);
}

TEST(metrics_long_names_truncated_consistently)
{
    metrics *m = metrics_new(4, 1, "t");
    CHECK(m != NULL);
    if (!m)
        return;
    char a[300], b[300];
    memset(a, 'x', sizeof a);
    memset(b, 'x', sizeof b);
    b[200] = 'y'; /* differs only past the kept bytes */
    uint32_t ia = metrics_client(m, (slice){a, sizeof a});
    CHECK(metrics_client(m, (slice){b, sizeof b}) == ia);
    CHECK(metrics_client(m, (slice){a, METRICS_NAME_MAX}) == ia);
    CHECK(metrics_client(m, (slice){a, METRICS_NAME_MAX - 1}) != ia);

    /* a two-byte character straddling the limit is dropped whole */
    char u[METRICS_NAME_MAX + 1];
    memset(u, 'z', sizeof u);
    u[METRICS_NAME_MAX - 1] = (char)0xC3;
    u[METRICS_NAME_MAX] = (char)0xA9;
    uint32_t iu = metrics_client(m, (slice){u, sizeof u});
    CHECK(metrics_client(m, (slice){u, METRICS_NAME_MAX - 1}) == iu);
    metrics_tokens(m, iu, 1, 0);
    char *page = page_text(m);
    char want[METRICS_NAME_MAX + 80];
    snprintf(want, sizeof want, "ssegate_tokens_total{client=\"%.*s\",kind=\"prompt\"} 1", METRICS_NAME_MAX - 1, u);
    CHECK_LINE(page, want);
    free(page);
    metrics_free(m);
}

TEST(metrics_label_escaping)
{
    metrics *m = metrics_new(4, 1, "v\"1\\\n");
    CHECK(m != NULL);
    if (!m)
        return;
    uint32_t c = metrics_client(m, SLICE_LIT("we \"quote\"\\back\nslash"));
    metrics_rate_limited(m, c, LIMIT_STREAMS);
    /* not UTF-8 (a lone continuation byte, an overlong '/'), and a control
     * character: each such byte becomes '?'; real UTF-8 stays */
    uint32_t d = metrics_client(m, SLICE_LIT("b\x80x\xC0\xAFy\x01z\tt \xC3\xA9\xE2\x82\xAC"));
    metrics_tokens(m, d, 1, 2);
    CHECK(metrics_client(m, SLICE_LIT("b?x??y?z\tt \xC3\xA9\xE2\x82\xAC")) == d);
    char *page = page_text(m);
    CHECK_LINE(page, "ssegate_rate_limited_total{client=\"we \\\"quote\\\"\\\\back\\nslash\",limit=\"streams\"} 1");
    CHECK_LINE(page, "ssegate_rate_limited_total{client=\"we \\\"quote\\\"\\\\back\\nslash\",limit=\"requests\"} 0");
    CHECK_LINE(page, "ssegate_tokens_total{client=\"b?x??y?z\tt \xC3\xA9\xE2\x82\xAC\",kind=\"completion\"} 2");
    CHECK_LINE(page, "ssegate_build_info{version=\"v\\\"1\\\\\\n\"} 1");
    free(page);
    metrics_free(m);
}

TEST(metrics_histogram_boundaries)
{
    metrics *m = metrics_new(1, 1, "t");
    CHECK(m != NULL);
    if (!m)
        return;
    uint32_t u = metrics_upstream(m, SLICE_LIT("up"));
    metrics_ttfb(m, u, 0);
    metrics_ttfb(m, u, 5000);     /* exactly 0.005: inside le="0.005" */
    metrics_ttfb(m, u, 5001);     /* just above: le="0.01" */
    metrics_ttfb(m, u, 1000000);  /* exactly 1 */
    metrics_ttfb(m, u, 60000000); /* exactly the last bound */
    metrics_ttfb(m, u, 60000001); /* only +Inf */
    metrics_request(m, ROUTE_EMBEDDINGS, 200, 600000000);
    metrics_request(m, ROUTE_EMBEDDINGS, 200, 600000001);
    metrics_request(m, ROUTE_EMBEDDINGS, 200, 120000000);
    char *page = page_text(m);
    static const char *const ttfb[] = {
        "ssegate_upstream_ttfb_seconds_bucket{upstream=\"up\",le=\"0.005\"} 2",
        "ssegate_upstream_ttfb_seconds_bucket{upstream=\"up\",le=\"0.01\"} 3",
        "ssegate_upstream_ttfb_seconds_bucket{upstream=\"up\",le=\"0.5\"} 3",
        "ssegate_upstream_ttfb_seconds_bucket{upstream=\"up\",le=\"1\"} 4",
        "ssegate_upstream_ttfb_seconds_bucket{upstream=\"up\",le=\"30\"} 4",
        "ssegate_upstream_ttfb_seconds_bucket{upstream=\"up\",le=\"60\"} 5",
        "ssegate_upstream_ttfb_seconds_bucket{upstream=\"up\",le=\"+Inf\"} 6",
        "ssegate_upstream_ttfb_seconds_sum{upstream=\"up\"} 121.010002",
        "ssegate_upstream_ttfb_seconds_count{upstream=\"up\"} 6",
        "ssegate_request_duration_seconds_bucket{route=\"embeddings\",le=\"60\"} 0",
        "ssegate_request_duration_seconds_bucket{route=\"embeddings\",le=\"120\"} 1",
        "ssegate_request_duration_seconds_bucket{route=\"embeddings\",le=\"300\"} 1",
        "ssegate_request_duration_seconds_bucket{route=\"embeddings\",le=\"600\"} 2",
        "ssegate_request_duration_seconds_bucket{route=\"embeddings\",le=\"+Inf\"} 3",
        "ssegate_request_duration_seconds_sum{route=\"embeddings\"} 1320.000001",
        "ssegate_request_duration_seconds_count{route=\"embeddings\"} 3",
    };
    for (size_t i = 0; i < sizeof ttfb / sizeof ttfb[0]; i++)
        CHECK_LINE(page, ttfb[i]);
    /* TTFB stops at 60 s; request durations go on to 600 s */
    CHECK(strstr(page, "ssegate_upstream_ttfb_seconds_bucket{upstream=\"up\",le=\"120\"}") == NULL);
    CHECK_EQ_SIZE(count_prefix(page, "ssegate_upstream_ttfb_seconds_bucket{"), 14);
    CHECK_EQ_SIZE(count_prefix(page, "ssegate_request_duration_seconds_bucket{"), 17);
    /* routes never seen print no histogram */
    CHECK(strstr(page, "route=\"chat\"") == NULL);
    free(page);
    metrics_free(m);
}

static const char known_page[] =
    "# HELP ssegate_requests_total Requests answered, by route and HTTP status.\n"
    "# TYPE ssegate_requests_total counter\n"
    "ssegate_requests_total{route=\"chat\",status=\"200\"} 2\n"
    "ssegate_requests_total{route=\"chat\",status=\"502\"} 1\n"
    "ssegate_requests_total{route=\"models\",status=\"404\"} 1\n"
    "ssegate_requests_total{route=\"internal\",status=\"0\"} 1\n"
    "# HELP ssegate_active_connections Client connections open now.\n"
    "# TYPE ssegate_active_connections gauge\n"
    "ssegate_active_connections 2\n"
    "# HELP ssegate_active_streams Streaming responses being relayed now.\n"
    "# TYPE ssegate_active_streams gauge\n"
    "ssegate_active_streams -1\n"
    "# HELP ssegate_upstream_ttfb_seconds Time from sending a request upstream to its first response byte.\n"
    "# TYPE ssegate_upstream_ttfb_seconds histogram\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"openai\",le=\"0.005\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"openai\",le=\"0.01\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"openai\",le=\"0.025\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"openai\",le=\"0.05\"} 1\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"openai\",le=\"0.1\"} 1\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"openai\",le=\"0.25\"} 1\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"openai\",le=\"0.5\"} 1\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"openai\",le=\"1\"} 1\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"openai\",le=\"2.5\"} 2\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"openai\",le=\"5\"} 2\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"openai\",le=\"10\"} 2\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"openai\",le=\"30\"} 2\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"openai\",le=\"60\"} 2\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"openai\",le=\"+Inf\"} 2\n"
    "ssegate_upstream_ttfb_seconds_sum{upstream=\"openai\"} 2.030000\n"
    "ssegate_upstream_ttfb_seconds_count{upstream=\"openai\"} 2\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"azure\",le=\"0.005\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"azure\",le=\"0.01\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"azure\",le=\"0.025\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"azure\",le=\"0.05\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"azure\",le=\"0.1\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"azure\",le=\"0.25\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"azure\",le=\"0.5\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"azure\",le=\"1\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"azure\",le=\"2.5\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"azure\",le=\"5\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"azure\",le=\"10\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"azure\",le=\"30\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"azure\",le=\"60\"} 0\n"
    "ssegate_upstream_ttfb_seconds_bucket{upstream=\"azure\",le=\"+Inf\"} 0\n"
    "ssegate_upstream_ttfb_seconds_sum{upstream=\"azure\"} 0.000000\n"
    "ssegate_upstream_ttfb_seconds_count{upstream=\"azure\"} 0\n"
    "# HELP ssegate_request_duration_seconds Time from a request's first byte to the end of its response, by route.\n"
    "# TYPE ssegate_request_duration_seconds histogram\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"0.005\"} 0\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"0.01\"} 0\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"0.025\"} 0\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"0.05\"} 0\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"0.1\"} 0\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"0.25\"} 2\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"0.5\"} 2\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"1\"} 2\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"2.5\"} 2\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"5\"} 2\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"10\"} 2\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"30\"} 3\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"60\"} 3\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"120\"} 3\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"300\"} 3\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"600\"} 3\n"
    "ssegate_request_duration_seconds_bucket{route=\"chat\",le=\"+Inf\"} 3\n"
    "ssegate_request_duration_seconds_sum{route=\"chat\"} 30.400000\n"
    "ssegate_request_duration_seconds_count{route=\"chat\"} 3\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"0.005\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"0.01\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"0.025\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"0.05\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"0.1\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"0.25\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"0.5\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"1\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"2.5\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"5\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"10\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"30\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"60\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"120\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"300\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"600\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"models\",le=\"+Inf\"} 1\n"
    "ssegate_request_duration_seconds_sum{route=\"models\"} 0.001000\n"
    "ssegate_request_duration_seconds_count{route=\"models\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"0.005\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"0.01\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"0.025\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"0.05\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"0.1\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"0.25\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"0.5\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"1\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"2.5\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"5\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"10\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"30\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"60\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"120\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"300\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"600\"} 1\n"
    "ssegate_request_duration_seconds_bucket{route=\"internal\",le=\"+Inf\"} 1\n"
    "ssegate_request_duration_seconds_sum{route=\"internal\"} 0.000000\n"
    "ssegate_request_duration_seconds_count{route=\"internal\"} 1\n"
    "# HELP ssegate_chunks_relayed_total Stream chunks relayed to clients.\n"
    "# TYPE ssegate_chunks_relayed_total counter\n"
    "ssegate_chunks_relayed_total 7\n"
    "# HELP ssegate_tokens_total Tokens used, by client and kind.\n"
    "# TYPE ssegate_tokens_total counter\n"
    "ssegate_tokens_total{client=\"alice\",kind=\"prompt\"} 12\n"
    "ssegate_tokens_total{client=\"alice\",kind=\"completion\"} 34\n"
    "# HELP ssegate_upstream_errors_total Failed upstream attempts, by upstream and kind of failure.\n"
    "# TYPE ssegate_upstream_errors_total counter\n"
    "ssegate_upstream_errors_total{upstream=\"openai\",kind=\"dns\"} 0\n"
    "ssegate_upstream_errors_total{upstream=\"openai\",kind=\"connect\"} 0\n"
    "ssegate_upstream_errors_total{upstream=\"openai\",kind=\"tls\"} 0\n"
    "ssegate_upstream_errors_total{upstream=\"openai\",kind=\"timeout\"} 0\n"
    "ssegate_upstream_errors_total{upstream=\"openai\",kind=\"protocol\"} 0\n"
    "ssegate_upstream_errors_total{upstream=\"openai\",kind=\"status_5xx\"} 1\n"
    "ssegate_upstream_errors_total{upstream=\"openai\",kind=\"status_429\"} 0\n"
    "ssegate_upstream_errors_total{upstream=\"openai\",kind=\"auth\"} 0\n"
    "ssegate_upstream_errors_total{upstream=\"azure\",kind=\"dns\"} 0\n"
    "ssegate_upstream_errors_total{upstream=\"azure\",kind=\"connect\"} 0\n"
    "ssegate_upstream_errors_total{upstream=\"azure\",kind=\"tls\"} 0\n"
    "ssegate_upstream_errors_total{upstream=\"azure\",kind=\"timeout\"} 2\n"
    "ssegate_upstream_errors_total{upstream=\"azure\",kind=\"protocol\"} 0\n"
    "ssegate_upstream_errors_total{upstream=\"azure\",kind=\"status_5xx\"} 0\n"
    "ssegate_upstream_errors_total{upstream=\"azure\",kind=\"status_429\"} 0\n"
    "ssegate_upstream_errors_total{upstream=\"azure\",kind=\"auth\"} 0\n"
    "# HELP ssegate_retries_total Requests retried, by upstream.\n"
    "# TYPE ssegate_retries_total counter\n"
    "ssegate_retries_total{upstream=\"openai\"} 0\n"
    "ssegate_retries_total{upstream=\"azure\"} 1\n"
    "# HELP ssegate_upstream_ejections_total Times an upstream was taken out of rotation after consecutive failures.\n"
    "# TYPE ssegate_upstream_ejections_total counter\n"
    "ssegate_upstream_ejections_total{upstream=\"openai\"} 0\n"
    "ssegate_upstream_ejections_total{upstream=\"azure\"} 1\n"
    "# HELP ssegate_tls_handshakes_total Upstream TLS handshakes, full or resumed from a session.\n"
    "# TYPE ssegate_tls_handshakes_total counter\n"
    "ssegate_tls_handshakes_total{kind=\"full\"} 1\n"
    "ssegate_tls_handshakes_total{kind=\"resumed\"} 2\n"
    "# HELP ssegate_rate_limited_total Requests refused by a rate limit, by client and limit.\n"
    "# TYPE ssegate_rate_limited_total counter\n"
    "ssegate_rate_limited_total{client=\"other\",limit=\"requests\"} 1\n"
    "ssegate_rate_limited_total{client=\"other\",limit=\"tokens\"} 0\n"
    "ssegate_rate_limited_total{client=\"other\",limit=\"streams\"} 0\n"
    "ssegate_rate_limited_total{client=\"alice\",limit=\"requests\"} 0\n"
    "ssegate_rate_limited_total{client=\"alice\",limit=\"tokens\"} 1\n"
    "ssegate_rate_limited_total{client=\"alice\",limit=\"streams\"} 0\n"
    "# HELP ssegate_auth_failures_total Requests refused for authentication, by reason.\n"
    "# TYPE ssegate_auth_failures_total counter\n"
    "ssegate_auth_failures_total{reason=\"missing\"} 1\n"
    "ssegate_auth_failures_total{reason=\"invalid_key\"} 0\n"
    "ssegate_auth_failures_total{reason=\"invalid_token\"} 0\n"
    "# HELP ssegate_streams_resumed_total Streams resumed after a reconnect.\n"
    "# TYPE ssegate_streams_resumed_total counter\n"
    "ssegate_streams_resumed_total 1\n"
    "# HELP ssegate_config_reloads_total Configuration reloads, by result.\n"
    "# TYPE ssegate_config_reloads_total counter\n"
    "ssegate_config_reloads_total{result=\"ok\"} 1\n"
    "ssegate_config_reloads_total{result=\"error\"} 0\n"
    "# HELP ssegate_build_info Always 1; the version is in the label.\n"
    "# TYPE ssegate_build_info gauge\n"
    "ssegate_build_info{version=\"0.9.0-test\"} 1\n";

TEST(metrics_known_sequence_renders_exactly)
{
    metrics *m = metrics_new(2, 2, "0.9.0-test");
    CHECK(m != NULL);
    if (!m)
        return;
    uint32_t openai = metrics_upstream(m, SLICE_LIT("openai"));
    uint32_t azure = metrics_upstream(m, SLICE_LIT("azure"));
    uint32_t alice = metrics_client(m, SLICE_LIT("alice"));
    metrics_client(m, SLICE_LIT("bob")); /* interned, never counted: absent */
    uint32_t carol = metrics_client(m, SLICE_LIT("carol")); /* no room: "other" */

    metrics_gauge_connections(m, 3);
    metrics_gauge_connections(m, -1);
    metrics_gauge_streams(m, -1);
    metrics_request(m, ROUTE_CHAT, 200, 150000);
    metrics_request(m, ROUTE_CHAT, 200, 250000); /* exactly 0.25 */
    metrics_request(m, ROUTE_CHAT, 502, 30000000);
    metrics_request(m, ROUTE_MODELS, 404, 1000);
    metrics_request(m, ROUTE_INTERNAL, 42, 0); /* not a status: "0" */
    metrics_ttfb(m, openai, 30000);
    metrics_ttfb(m, openai, 2000000);
    metrics_chunks(m, 3);
    metrics_chunks(m, 4);
    metrics_tokens(m, alice, 12, 34);
    metrics_upstream_error(m, openai, UPERR_STATUS_5XX);
    metrics_upstream_error(m, azure, UPERR_TIMEOUT);
    metrics_upstream_error(m, azure, UPERR_TIMEOUT);
    metrics_retry(m, azure);
    metrics_upstream_ejection(m, azure);
    metrics_tls_handshake(m, false);
    metrics_tls_handshake(m, true);
    metrics_tls_handshake(m, true);
    metrics_rate_limited(m, alice, LIMIT_TOKENS);
    metrics_rate_limited(m, carol, LIMIT_REQUESTS);
    metrics_auth_failure(m, AUTHFAIL_MISSING);
    metrics_stream_resumed(m);
    metrics_config_reload(m, true);

    char *page = page_text(m);
    CHECK_STR(page, known_page);
    /* rendering again gives the same page */
    char *again = page_text(m);
    CHECK_STR(again, known_page);
    free(page);
    free(again);
    metrics_free(m);
}

/* Every client and upstream at the longest name that escapes to twice its
 * size, every route with every status, values at their widest where the API
 * can reach them: the page still fits its buffer. */
TEST(metrics_full_registry_fits_its_buffer)
{
    enum { CLIENTS = 40, UPSTREAMS = 3 };
    char version[300];
    memset(version, '"', sizeof version - 1);
    version[sizeof version - 1] = '\0';
    metrics *m = metrics_new(CLIENTS, UPSTREAMS, version);
    CHECK(m != NULL);
    if (!m)
        return;
    char name[METRICS_NAME_MAX];
    memset(name, '\\', sizeof name);
    for (size_t i = 0; i < CLIENTS; i++) {
        /* distinct names, each escaping to 2 * METRICS_NAME_MAX bytes */
        name[0] = (char)('"' + (i % 2) * ('\\' - '"'));
        name[1 + i / 2] = '"';
        uint32_t id = metrics_client(m, (slice){name, sizeof name});
        name[1 + i / 2] = '\\';
        CHECK(id != 0);
        metrics_tokens(m, id, UINT64_MAX, UINT64_MAX);
        for (size_t k = 0; k < LIMIT_KIND_COUNT; k++)
            metrics_rate_limited(m, id, (metrics_limit_kind)k);
    }
    metrics_tokens(m, 0, UINT64_MAX, UINT64_MAX);
    metrics_rate_limited(m, 0, LIMIT_TOKENS);
    for (size_t i = 0; i < UPSTREAMS; i++) {
        name[0] = (char)('"' + i);
        uint32_t id = metrics_upstream(m, (slice){name, sizeof name});
        metrics_ttfb(m, id, UINT64_MAX);
        metrics_retry(m, id);
        for (size_t k = 0; k < UPERR_COUNT; k++)
            metrics_upstream_error(m, id, (metrics_upstream_error_kind)k);
    }
    for (size_t r = 0; r < ROUTE_COUNT; r++) {
        metrics_request(m, (metrics_route)r, 0, UINT64_MAX);
        for (int s = 100; s < 600; s++)
            metrics_request(m, (metrics_route)r, s, 0);
    }
    metrics_gauge_connections(m, INT64_MIN);
    metrics_gauge_streams(m, INT64_MIN);
    metrics_chunks(m, UINT64_MAX);

    slice p = metrics_render(m);
    CHECK(p.ptr != NULL);
    CHECK(p.len > 0 && p.len <= metrics_render_capacity(m));
    char *page = page_text(m);
    CHECK_EQ_SIZE(count_prefix(page, "ssegate_requests_total{"), ROUTE_COUNT * 501);
    CHECK_EQ_SIZE(count_prefix(page, "ssegate_tokens_total{"), 2 * (CLIENTS + 1));
    CHECK_EQ_SIZE(count_prefix(page, "ssegate_rate_limited_total{"), 3 * (CLIENTS + 1));
    CHECK_EQ_SIZE(count_prefix(page, "ssegate_upstream_errors_total{"), UPERR_COUNT * UPSTREAMS);
    CHECK_EQ_SIZE(count_prefix(page, "ssegate_upstream_ttfb_seconds_sum{"), UPSTREAMS);
    CHECK(strstr(page, "_sum{route=\"chat\"} 18446744073709.551615\n") != NULL);
    CHECK_LINE(page, "ssegate_active_streams -9223372036854775808");
    CHECK_LINE(page, "ssegate_chunks_relayed_total 18446744073709551615");
    printf("# metrics worst case, %d clients, %d upstreams: %zu of %zu bytes\n", CLIENTS, UPSTREAMS, p.len,
           metrics_render_capacity(m));
    free(page);
    metrics_free(m);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* 10,000 clients interned, 1,000 of them with tokens and rate-limit counts.
 * Prints the size and the best render time; asserts only the content. */
TEST(metrics_render_many_clients)
{
    enum { INTERNED = 10000, ACTIVE = 1000 };
    metrics *m = metrics_new(INTERNED, 4, "1.0.0");
    CHECK(m != NULL);
    if (!m)
        return;
    static const char *const ups[] = {"openai", "azure-east", "azure-west", "local"};
    for (size_t i = 0; i < 4; i++)
        metrics_upstream(m, slice_of(ups[i]));
    char name[32];
    for (size_t i = 0; i < INTERNED; i++) {
        int n = snprintf(name, sizeof name, "team-%05zu", i);
        uint32_t id = metrics_client(m, (slice){name, (size_t)n});
        CHECK(id == i + 1);
        if (i % (INTERNED / ACTIVE) == 0) {
            metrics_tokens(m, id, 1000 + i, 20 * i);
            metrics_rate_limited(m, id, (metrics_limit_kind)(i % LIMIT_KIND_COUNT));
        }
    }
    for (size_t r = 0; r < ROUTE_COUNT; r++)
        metrics_request(m, (metrics_route)r, 200, 1000 * r);

    double best = 1e18;
    slice p = {NULL, 0};
    for (int round = 0; round < 20; round++) {
        double t0 = now_us();
        p = metrics_render(m);
        double t = now_us() - t0;
        best = t < best ? t : best;
    }
    CHECK(p.ptr != NULL);
    char *page = page_text(m);
    CHECK_EQ_SIZE(count_prefix(page, "ssegate_tokens_total{"), 2 * ACTIVE);
    CHECK_EQ_SIZE(count_prefix(page, "ssegate_rate_limited_total{"), 3 * ACTIVE);
    CHECK_LINE(page, "ssegate_tokens_total{client=\"team-09990\",kind=\"completion\"} 199800");
    printf("# metrics render, %d clients interned, %d with values: %zu bytes in %.0f us (best of 20), buffer %zu\n",
           INTERNED, ACTIVE, p.len, best, metrics_render_capacity(m));
    free(page);
    metrics_free(m);
}

/* Checks the page's shape line by line: a HELP then a TYPE line opens each
 * family, and every sample belongs to the family opened last (histograms
 * by their _bucket, _sum and _count names) with a numeric value. */
static void check_page_shape(const char *page, size_t want_families)
{
    char family[128] = "", type[16] = "";
    size_t families = 0, line_no = 0;
    for (const char *p = page; *p; line_no++) {
        const char *nl = strchr(p, '\n');
        if (!nl) {
            unit_fail(__FILE__, __LINE__, "line %zu has no newline", line_no);
            return;
        }
        size_t len = (size_t)(nl - p);
        if (strncmp(p, "# HELP ", 7) == 0) {
            size_t n = strcspn(p + 7, " ");
            if (n >= sizeof family) {
                unit_fail(__FILE__, __LINE__, "line %zu: family name too long", line_no);
                return;
            }
            memcpy(family, p + 7, n);
            family[n] = '\0';
            families++;
        } else if (strncmp(p, "# TYPE ", 7) == 0) {
            size_t n = strlen(family);
            if (strncmp(p + 7, family, n) != 0 || p[7 + n] != ' ' || len - 8 - n >= sizeof type) {
                unit_fail(__FILE__, __LINE__, "line %zu: TYPE not for %s", line_no, family);
                return;
            }
            memcpy(type, p + 8 + n, len - 8 - n);
            type[len - 8 - n] = '\0';
        } else {
            size_t name_len = strcspn(p, "{ ");
            size_t fam_len = strlen(family);
            bool named = name_len >= fam_len && strncmp(p, family, fam_len) == 0;
            const char *suffix = p + fam_len;
            size_t suffix_len = name_len - fam_len;
            if (named && suffix_len && strcmp(type, "histogram") == 0)
                named = (suffix_len == 7 && strncmp(suffix, "_bucket", 7) == 0) ||
                        (suffix_len == 4 && strncmp(suffix, "_sum", 4) == 0) ||
                        (suffix_len == 6 && strncmp(suffix, "_count", 6) == 0);
            else if (named)
                named = suffix_len == 0;
            const char *value = nl;
            while (value > p && value[-1] != ' ')
                value--;
            bool numeric = value < nl;
            for (const char *v = value; v < nl; v++)
                if (!((*v >= '0' && *v <= '9') || *v == '.' || *v == '-'))
                    numeric = false;
            if (!named || !numeric) {
                unit_fail(__FILE__, __LINE__, "line %zu: \"%.*s\" is not a sample of %s", line_no, (int)len, p,
                          family);
                return;
            }
        }
        p = nl + 1;
    }
    CHECK_EQ_SIZE(families, want_families);
}

/* A registry with every family populated. Its page is what promtool checks
 * (tests/metrics/promcheck.sh sets METRICS_SAMPLE). */
TEST(metrics_sample_page)
{
    metrics *m = metrics_new(8, 3, "0.1.0");
    CHECK(m != NULL);
    if (!m)
        return;
    uint32_t ups[3] = {metrics_upstream(m, SLICE_LIT("openai")), metrics_upstream(m, SLICE_LIT("azure-east")),
                       metrics_upstream(m, SLICE_LIT("local mock"))};
    uint32_t ann = metrics_client(m, SLICE_LIT("ann"));
    uint32_t odd = metrics_client(m, SLICE_LIT("odd \"name\" with \\ and\nnewline"));
    uint32_t uni = metrics_client(m, SLICE_LIT("caf\xC3\xA9"));
    for (int i = 0; i < 50; i++) {
        metrics_route r = (metrics_route)(i % ROUTE_COUNT);
        metrics_request(m, r, i % 7 ? 200 : i % 3 ? 502 : 429, (uint64_t)i * 37000);
        metrics_ttfb(m, ups[i % 3], (uint64_t)i * 9000);
    }
    metrics_gauge_connections(m, 5);
    metrics_gauge_streams(m, 2);
    metrics_chunks(m, 1234);
    metrics_tokens(m, ann, 100, 250);
    metrics_tokens(m, odd, 7, 0);
    metrics_tokens(m, uni, 1, 1);
    metrics_upstream_error(m, ups[0], UPERR_STATUS_429);
    metrics_upstream_error(m, ups[1], UPERR_CONNECT);
    metrics_retry(m, ups[1]);
    metrics_tls_handshake(m, false);
    metrics_tls_handshake(m, true);
    metrics_rate_limited(m, odd, LIMIT_REQUESTS);
    metrics_auth_failure(m, AUTHFAIL_INVALID_KEY);
    metrics_stream_resumed(m);
    metrics_config_reload(m, true);
    metrics_config_reload(m, false);

    char *page = page_text(m);
    check_page_shape(page, 16);
    const char *path = getenv("METRICS_SAMPLE");
    if (path && *path) {
        FILE *f = fopen(path, "w");
        CHECK(f != NULL);
        if (f) {
            CHECK(fwrite(page, 1, strlen(page), f) == strlen(page));
            CHECK(fclose(f) == 0);
        }
    }
    free(page);
    metrics_free(m);
}

TEST(metrics_new_refuses_absurd_sizes)
{
    CHECK(metrics_new((size_t)1 << 40, 1, "t") == NULL);
    CHECK(metrics_new(1, (size_t)1 << 40, "t") == NULL);
    metrics *m = metrics_new(0, 0, NULL);
    CHECK(m != NULL);
    if (!m)
        return;
    /* no room for clients: everyone is "other"; one upstream slot */
    CHECK(metrics_client(m, SLICE_LIT("x")) == 0);
    CHECK(metrics_upstream(m, SLICE_LIT("a")) == 0);
    CHECK(metrics_upstream(m, SLICE_LIT("b")) == 0);
    metrics_tokens(m, metrics_client(m, SLICE_LIT("y")), 1, 0);
    char *page = page_text(m);
    CHECK_LINE(page, "ssegate_tokens_total{client=\"other\",kind=\"prompt\"} 1");
    CHECK_LINE(page, "ssegate_build_info{version=\"\"} 1");
    free(page);
    metrics_free(m);
}
