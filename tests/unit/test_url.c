/* Upstream base URL parsing. */
#include <stdio.h>
#include <string.h>

#include "unit.h"
#include "upstream/url.h"

static void check_url(const char *text, bool tls, const char *host, unsigned port, const char *path,
                      const char *host_header)
{
    url u;
    const char *why = NULL;
    if (url_parse(text, &u, &why) != 0) {
        unit_fail(__FILE__, __LINE__, "\"%s\" rejected: %s", text, why ? why : "?");
        return;
    }
    if (u.tls != tls || strcmp(u.host, host) != 0 || u.port != port || strcmp(u.path, path) != 0 ||
        strcmp(u.host_header, host_header) != 0)
        unit_fail(__FILE__, __LINE__, "\"%s\": tls=%d host=\"%s\" port=%u path=\"%s\" host_header=\"%s\"", text,
                  (int)u.tls, u.host, (unsigned)u.port, u.path, u.host_header);
}

static void check_rejected(const char *text)
{
    url u;
    const char *why = NULL;
    if (url_parse(text, &u, &why) == 0)
        unit_fail(__FILE__, __LINE__, "\"%s\" accepted", text);
    else if (why == NULL || why[0] == '\0')
        unit_fail(__FILE__, __LINE__, "\"%s\" rejected without a reason", text);
}

TEST(url_defaults)
{
    check_url("http://example.com", false, "example.com", 80, "", "example.com");
    check_url("https://api.openai.com/v1", true, "api.openai.com", 443, "/v1", "api.openai.com");
    check_url("http://127.0.0.1/", false, "127.0.0.1", 80, "", "127.0.0.1");
    check_url("https://a-b_c.example", true, "a-b_c.example", 443, "", "a-b_c.example");
}

TEST(url_ports)
{
    check_url("http://127.0.0.1:8080/v1", false, "127.0.0.1", 8080, "/v1", "127.0.0.1:8080");
    check_url("https://h:8443", true, "h", 8443, "", "h:8443");
    check_url("http://h:1", false, "h", 1, "", "h:1");
    check_url("http://h:65535/", false, "h", 65535, "", "h:65535");
    /* An explicit default port is left out of the Host header. */
    check_url("http://h:80/v1", false, "h", 80, "/v1", "h");
    check_url("https://h:443", true, "h", 443, "", "h");
    /* ... but the other scheme's default is not a default. */
    check_url("https://h:80", true, "h", 80, "", "h:80");
    check_url("http://h:443", false, "h", 443, "", "h:443");
    check_url("http://h:00080", false, "h", 80, "", "h");
}

TEST(url_ipv6)
{
    check_url("http://[::1]:8080/v1/", false, "::1", 8080, "/v1", "[::1]:8080");
    check_url("https://[2001:db8::1]", true, "2001:db8::1", 443, "", "[2001:db8::1]");
    check_url("http://[::ffff:127.0.0.1]/x", false, "::ffff:127.0.0.1", 80, "/x", "[::ffff:127.0.0.1]");
    check_url("http://[FE80::A]:80", false, "FE80::A", 80, "", "[FE80::A]");
}

TEST(url_paths)
{
    check_url("http://h/v1/", false, "h", 80, "/v1", "h");
    check_url("http://h/v1///", false, "h", 80, "/v1", "h");
    check_url("http://h//", false, "h", 80, "", "h");
    check_url("http://h/openai/deployments/x/v1", false, "h", 80, "/openai/deployments/x/v1", "h");
    check_url("http://h:9/a/b/", false, "h", 9, "/a/b", "h:9");
}

TEST(url_errors)
{
    check_rejected("");
    check_rejected("example.com");
    check_rejected("example.com:80/v1");
    check_rejected("ftp://example.com");
    check_rejected("http:/example.com");
    check_rejected("http://");
    check_rejected("https://");
    check_rejected("http:///v1");
    check_rejected("http://:8080");
    check_rejected("http://h:0");
    check_rejected("http://h:65536");
    check_rejected("http://h:99999");
    check_rejected("http://h:1234567");
    check_rejected("http://h:abc");
    check_rejected("http://h:");
    check_rejected("http://h:-1");
    check_rejected("http://h:80x");
    check_rejected("http://h:80:81");
    check_rejected("http://h x");
    check_rejected("http://user@h");
    check_rejected("http://user:pw@h/v1");
    check_rejected("http://h?x=1");
    check_rejected("http://h/v1?x=1");
    check_rejected("http://h/v1#frag");
    check_rejected("http://h/v 1");
    check_rejected("http://h/v1\r\n");
    check_rejected("http://[::1");
    check_rejected("http://[]");
    check_rejected("http://[::1]x");
    check_rejected("http://[::1]:");
    check_rejected("http://[g::1]");
    check_rejected("http://[::1]]");
    /* Brackets hold an IPv6 literal, nothing else. */
    check_rejected("http://[5A1]:808/");
    check_rejected("http://[127.0.0.1]");
    check_rejected("http://[example.com]");
    check_rejected("http://[1::2::3]");
    check_rejected("http://[::1%eth0]");

    /* Host length limit: URL_HOST_MAX - 1 fits, URL_HOST_MAX does not. */
    char text[URL_HOST_MAX + 32];
    char host[URL_HOST_MAX + 1];
    memset(host, 'a', sizeof host);
    host[URL_HOST_MAX - 1] = '\0';
    snprintf(text, sizeof text, "http://%s:8080", host);
    url u;
    const char *why;
    CHECK(url_parse(text, &u, &why) == 0);
    CHECK_EQ_SIZE(strlen(u.host), URL_HOST_MAX - 1);
    CHECK_EQ_SIZE(strlen(u.host_header), URL_HOST_MAX - 1 + 5);
    host[URL_HOST_MAX - 1] = 'a';
    host[URL_HOST_MAX] = '\0';
    snprintf(text, sizeof text, "http://%s", host);
    check_rejected(text);

    /* Path length limit. */
    char long_path[URL_PATH_MAX + 32];
    memcpy(long_path, "http://h/", 9);
    memset(long_path + 9, 'p', URL_PATH_MAX);
    long_path[9 + URL_PATH_MAX] = '\0';
    check_rejected(long_path);
}
