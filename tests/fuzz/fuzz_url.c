/* Upstream URLs: whatever is accepted is well-formed, and the URL rebuilt
 * from the parts (scheme, Host header, path) parses back to the same parts. */
#include "fuzz.h"
#include "upstream/url.h"

static url first, second;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *text = fuzz_alloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    const char *why = NULL;
    if (url_parse(text, &first, &why) != 0) {
        FUZZ_CHECK(why != NULL && why[0] != '\0');
        free(text);
        return 0;
    }
    FUZZ_CHECK(first.port != 0);
    size_t host_len = strnlen(first.host, sizeof first.host);
    FUZZ_CHECK(host_len > 0 && host_len < sizeof first.host);
    size_t path_len = strnlen(first.path, sizeof first.path);
    FUZZ_CHECK(path_len < sizeof first.path);
    FUZZ_CHECK(path_len == 0 || (first.path[0] == '/' && first.path[path_len - 1] != '/'));
    FUZZ_CHECK(strpbrk(first.path, "?# \t\r\n") == NULL);
    FUZZ_CHECK(strnlen(first.host_header, sizeof first.host_header) < sizeof first.host_header);
    bool v6 = first.host_header[0] == '[';
    /* Only an IPv6 literal is bracketed, and only it holds colons. */
    FUZZ_CHECK(v6 == (strchr(first.host, ':') != NULL));
    if (v6)
        FUZZ_CHECK(first.host_header[0] == '[' && strncmp(first.host_header + 1, first.host, host_len) == 0 &&
                   first.host_header[1 + host_len] == ']');
    else
        FUZZ_CHECK(strncmp(first.host_header, first.host, host_len) == 0);
    bool default_port = first.port == (first.tls ? 443 : 80);
    const char *after = first.host_header + host_len + (v6 ? 2 : 0);
    if (default_port)
        FUZZ_CHECK(*after == '\0');
    else
        FUZZ_CHECK(*after == ':' && (unsigned)atoi(after + 1) == first.port);

    /* Round trip. */
    char rebuilt[sizeof first.host_header + sizeof first.path + 16];
    snprintf(rebuilt, sizeof rebuilt, "%s://%s%s", first.tls ? "https" : "http", first.host_header, first.path);
    FUZZ_CHECK(url_parse(rebuilt, &second, &why) == 0);
    FUZZ_CHECK(second.tls == first.tls && second.port == first.port);
    FUZZ_CHECK(strcmp(second.host, first.host) == 0 && strcmp(second.path, first.path) == 0);
    FUZZ_CHECK(strcmp(second.host_header, first.host_header) == 0);
    free(text);
    return 0;
}
