#include "http/http.h"

#include <string.h>

#include "core/wbuf.h"

/* tchar of RFC 9110 §5.6.2 */
static bool is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    switch (c) { /* not strchr: this runs for every byte of every header name */
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
        return true;
    default:
        return false;
    }
}

/* field-vchar, SP, HTAB, obs-text: everything but controls and DEL */
static bool is_field_char(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

static bool is_target_char(unsigned char c) { return c > 0x20 && c < 0x7f; }

static bool is_ws(unsigned char c) { return c == ' ' || c == '\t'; }

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* True when every line end in p[0..n) is CRLF, or every one a bare LF. */
static bool line_ends_agree(const char *p, size_t n)
{
    int kind = 0; /* 1: CRLF seen, 2: bare LF seen */
    for (const char *nl = memchr(p, '\n', n); nl; nl = memchr(nl + 1, '\n', n - (size_t)(nl + 1 - p))) {
        kind |= nl > p && nl[-1] == '\r' ? 1 : 2;
        if (kind == 3)
            return false;
    }
    return true;
}

/* Finds the end of a head: the byte after the empty line. Lines end in CRLF
 * or a lone LF (RFC 9112 §2.2 lets a recipient accept it). */
static size_t find_head_end(const char *buf, size_t len, size_t *scanned)
{
    size_t i = *scanned;
    for (; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        size_t next = i + 1;
        if (next < len && buf[next] == '\n')
            return next + 1;
        if (next + 1 < len && buf[next] == '\r' && buf[next + 1] == '\n')
            return next + 2;
        if (next >= len || (next + 1 >= len && buf[next] == '\r'))
            break; /* cannot tell yet */
    }
    *scanned = i;
    return 0;
}

/* One line of the head, without its terminator. Rejects a CR that does not
 * end the line. Returns false on a bare CR. */
static bool next_line(const char **pos, const char *end, slice *line)
{
    const char *p = *pos;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl)
        return false;
    const char *stop = nl;
    if (stop > p && stop[-1] == '\r')
        stop--;
    if (memchr(p, '\r', (size_t)(stop - p)))
        return false;
    *line = (slice){p, (size_t)(stop - p)};
    *pos = nl + 1;
    return true;
}


bool http_list_has_token(slice list, slice token)
{
    size_t i = 0;
    while (i < list.len) {
        size_t start = i;
        while (i < list.len && list.ptr[i] != ',')
            i++;
        if (slice_eq_nocase(slice_trim_ows((slice){list.ptr + start, i - start}), token))
            return true;
        i++;
    }
    return false;
}

/* Header fields shared by requests and responses. Returns an error result or
 * HTTP_PARSE_DONE, with `*error` set to a sentence. */
static http_parse_result parse_fields(const char **pos, const char *end, http_header *headers, size_t *count,
                                      const char **error)
{
    *count = 0;
    for (;;) {
        slice line;
        if (!next_line(pos, end, &line)) {
            *error = "bare CR in header section";
            return HTTP_PARSE_BAD_REQUEST;
        }
        if (line.len == 0)
            return HTTP_PARSE_DONE;
        if (line.ptr[0] == ' ' || line.ptr[0] == '\t') {
            *error = "obsolete line folding in header section";
            return HTTP_PARSE_BAD_REQUEST;
        }
        size_t colon = 0;
        while (colon < line.len && is_tchar((unsigned char)line.ptr[colon]))
            colon++;
        if (colon == 0 || colon == line.len || line.ptr[colon] != ':') {
            *error = "malformed header field name";
            return HTTP_PARSE_BAD_REQUEST;
        }
        slice value = slice_trim_ows((slice){line.ptr + colon + 1, line.len - colon - 1});
        for (size_t i = 0; i < value.len; i++)
            if (!is_field_char((unsigned char)value.ptr[i])) {
                *error = "invalid character in header field value";
                return HTTP_PARSE_BAD_REQUEST;
            }
        if (*count == HTTP_MAX_HEADERS) {
            *error = "too many header fields";
            return HTTP_PARSE_HEADERS_TOO_LARGE;
        }
        headers[*count].name = (slice){line.ptr, colon};
        headers[*count].value = value;
        (*count)++;
    }
}

/* Content-Length must be one run of digits, once (RFC 9112 §6.3: anything
 * else is unrecoverable framing). */
static bool parse_length(slice v, uint64_t *out)
{
    return v.len <= 15 && slice_to_u64(v, UINT64_MAX, out);
}

/* Decides body framing and connection persistence from the fields. */
static http_parse_result framing(const http_header *headers, size_t count, int minor, http_body_kind *kind,
                                 uint64_t *length, bool *keep_alive, const char **error)
{
    const http_header *cl = NULL, *te = NULL;
    bool close = false, keep = false;
    for (size_t i = 0; i < count; i++) {
        const http_header *h = &headers[i];
        if (slice_eq_nocase(h->name, SLICE_LIT("content-length"))) {
            if (cl) {
                *error = "duplicate Content-Length";
                return HTTP_PARSE_BAD_REQUEST;
            }
            cl = h;
        } else if (slice_eq_nocase(h->name, SLICE_LIT("transfer-encoding"))) {
            if (te) {
                *error = "duplicate Transfer-Encoding";
                return HTTP_PARSE_BAD_REQUEST;
            }
            te = h;
        } else if (slice_eq_nocase(h->name, SLICE_LIT("connection"))) {
            close |= http_list_has_token(h->value, SLICE_LIT("close"));
            keep |= http_list_has_token(h->value, SLICE_LIT("keep-alive"));
        }
    }
    *keep_alive = minor >= 1 ? !close : keep && !close;
    *length = 0;
    if (te && cl) {
        *error = "both Content-Length and Transfer-Encoding";
        return HTTP_PARSE_BAD_REQUEST;
    }
    if (te) {
        if (minor < 1) {
            *error = "Transfer-Encoding in an HTTP/1.0 message";
            return HTTP_PARSE_BAD_REQUEST;
        }
        if (!slice_eq_nocase(te->value, SLICE_LIT("chunked"))) {
            *error = "unsupported Transfer-Encoding (only chunked)";
            return HTTP_PARSE_NOT_IMPLEMENTED;
        }
        *kind = HTTP_BODY_CHUNKED;
        return HTTP_PARSE_DONE;
    }
    if (cl) {
        if (!parse_length(cl->value, length)) {
            *error = "malformed Content-Length";
            return HTTP_PARSE_BAD_REQUEST;
        }
        *kind = HTTP_BODY_LENGTH;
        return HTTP_PARSE_DONE;
    }
    *kind = HTTP_BODY_NONE;
    return HTTP_PARSE_DONE;
}

static http_method method_of(slice m)
{
    static const struct {
        const char *name;
        http_method method;
    } known[] = {{"GET", HTTP_GET},       {"HEAD", HTTP_HEAD},   {"POST", HTTP_POST},      {"PUT", HTTP_PUT},
                 {"DELETE", HTTP_DELETE}, {"PATCH", HTTP_PATCH}, {"OPTIONS", HTTP_OPTIONS}};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (slice_eq(m, slice_of(known[i].name)))
            return known[i].method;
    return HTTP_OTHER;
}

/* "HTTP/1.x" → minor, or -1 for another HTTP version, -2 for garbage. */
static int parse_version(slice v)
{
    if (v.len != 8 || memcmp(v.ptr, "HTTP/", 5) != 0 || v.ptr[6] != '.' || v.ptr[5] < '0' || v.ptr[5] > '9' ||
        v.ptr[7] < '0' || v.ptr[7] > '9')
        return -2;
    if (v.ptr[5] != '1')
        return -1;
    return v.ptr[7] - '0';
}

enum { METHOD_MAX = 32, VERSION_LEN = 8 };

/* The request line as far as its bytes go. */
typedef struct request_line {
    slice method, target, version;
    size_t len; /* with its line end; 0 while the line end has not arrived */
} request_line;

/* Judges `method SP request-target SP HTTP-version` byte by byte, from the
 * first byte on: INCOMPLETE while the bytes so far can still grow into a
 * valid line, DONE once the whole line is in and valid. The verdict on a
 * byte never depends on the bytes after it, so a prefix is rejected exactly
 * when, and as, the whole would be. */
static http_parse_result scan_request_line(const char *p, size_t n, size_t max_target, request_line *rl,
                                           const char **error)
{
    size_t i = 0;
    for (; i < n && p[i] != ' '; i++) {
        unsigned char c = (unsigned char)p[i];
        if (is_tchar(c) && i < METHOD_MAX)
            continue;
        if (is_tchar(c))
            *error = "request method too long";
        else if (i == 0 && c == 0x16) /* the record type of a TLS handshake */
            *error = "not an HTTP request (is this TLS on a plain port?)";
        else if (i == 0 || c == '\r' || c == '\n')
            *error = "malformed request line";
        else
            *error = "invalid character in method";
        return HTTP_PARSE_BAD_REQUEST;
    }
    if (i == 0 && n > 0) {
        *error = "malformed request line";
        return HTTP_PARSE_BAD_REQUEST;
    }
    if (i == n)
        return HTTP_PARSE_INCOMPLETE;
    rl->method = (slice){p, i};

    size_t target = ++i;
    for (; i < n && p[i] != ' '; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\r' || c == '\n') { /* a line end here leaves no version */
            *error = "malformed request line";
            return HTTP_PARSE_BAD_REQUEST;
        }
        if (!is_target_char(c)) {
            *error = "invalid character in request target";
            return HTTP_PARSE_BAD_REQUEST;
        }
        if (i - target == max_target) {
            *error = "request target too long";
            return HTTP_PARSE_URI_TOO_LONG;
        }
    }
    if (i == target && i < n) {
        *error = "malformed request line";
        return HTTP_PARSE_BAD_REQUEST;
    }
    if (i == n)
        return HTTP_PARSE_INCOMPLETE;
    rl->target = (slice){p + target, i - target};

    /* "HTTP/" DIGIT "." DIGIT, then CRLF or LF */
    static const char shape[] = "HTTP/#.#";
    size_t version = ++i;
    for (; i < n && i - version < VERSION_LEN; i++) {
        char want = shape[i - version], c = p[i];
        if (want == '#' ? c < '0' || c > '9' : c != want) {
            *error = "malformed HTTP version";
            return HTTP_PARSE_BAD_REQUEST;
        }
    }
    if (i == n)
        return HTTP_PARSE_INCOMPLETE;
    if (p[i] == '\r') {
        if (i + 1 == n)
            return HTTP_PARSE_INCOMPLETE;
        if (p[i + 1] != '\n') {
            *error = "bare CR in request line";
            return HTTP_PARSE_BAD_REQUEST;
        }
        rl->len = i + 2;
    } else if (p[i] == '\n') {
        rl->len = i + 1;
    } else {
        *error = "malformed HTTP version";
        return HTTP_PARSE_BAD_REQUEST;
    }
    rl->version = (slice){p + version, VERSION_LEN};
    if (parse_version(rl->version) < 0) {
        *error = "HTTP version not supported";
        return HTTP_PARSE_BAD_VERSION;
    }
    return HTTP_PARSE_DONE;
}

/* unreserved and sub-delims of RFC 3986 §2.2-2.3 */
static bool is_unreserved(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

static bool is_sub_delim(unsigned char c) { return c != 0 && strchr("!$&'()*+,;=", c) != NULL; }

/* dec-octet "." dec-octet "." dec-octet "." dec-octet, no leading zeros */
static bool is_ipv4(slice s)
{
    size_t i = 0;
    for (int octet = 0; octet < 4; octet++) {
        if (octet > 0) {
            if (i == s.len || s.ptr[i] != '.')
                return false;
            i++;
        }
        size_t start = i;
        unsigned value = 0;
        while (i < s.len && i - start < 3 && s.ptr[i] >= '0' && s.ptr[i] <= '9')
            value = value * 10 + (unsigned)(s.ptr[i++] - '0');
        size_t digits = i - start;
        if (digits == 0 || value > 255 || (digits > 1 && s.ptr[start] == '0'))
            return false;
    }
    return i == s.len;
}

/* IPv6address of RFC 3986 §3.2.2: eight groups of 1-4 hex digits, or fewer
 * with one "::" standing for the rest; the last two may be an IPv4 address. */
static bool is_ipv6(slice s)
{
    size_t i = 0, groups = 0;
    bool elided = false;
    if (s.len >= 2 && s.ptr[0] == ':' && s.ptr[1] == ':') {
        elided = true;
        i = 2;
    }
    while (i < s.len) {
        size_t start = i;
        while (i < s.len && i - start < 5 && hex_value(s.ptr[i]) >= 0)
            i++;
        if (i < s.len && s.ptr[i] == '.') { /* the IPv4 tail, worth two groups */
            if (!is_ipv4((slice){s.ptr + start, s.len - start}))
                return false;
            groups += 2;
            break;
        }
        if (i == start || i - start > 4 || ++groups > 8)
            return false;
        if (i == s.len)
            break;
        if (s.ptr[i] != ':' || ++i == s.len) /* a single trailing ':' */
            return false;
        if (s.ptr[i] == ':') {
            if (elided)
                return false;
            elided = true;
            i++;
        }
    }
    return elided ? groups <= 7 : groups == 8;
}

/* "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" ) */
static bool is_ipvfuture(slice s)
{
    if (s.len < 4 || (s.ptr[0] != 'v' && s.ptr[0] != 'V'))
        return false;
    size_t i = 1;
    while (i < s.len && hex_value(s.ptr[i]) >= 0)
        i++;
    if (i == 1 || i + 1 >= s.len || s.ptr[i] != '.')
        return false;
    for (i++; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (!is_unreserved(c) && !is_sub_delim(c) && c != ':')
            return false;
    }
    return true;
}

/* Host = uri-host [ ":" port ] (RFC 9110 §7.2, RFC 3986 §3.2.2-3.2.3). */
static bool host_is_valid(slice v)
{
    if (v.len == 0) /* RFC 9112 §3.2: the target has no authority */
        return true;
    size_t i = 0;
    if (v.ptr[0] == '[') {
        const char *close = memchr(v.ptr, ']', v.len);
        if (!close)
            return false;
        slice literal = {v.ptr + 1, (size_t)(close - v.ptr) - 1};
        if (!is_ipv6(literal) && !is_ipvfuture(literal))
            return false;
        i = (size_t)(close - v.ptr) + 1;
    } else {
        /* reg-name, which takes in IPv4address */
        for (; i < v.len && v.ptr[i] != ':'; i++) {
            unsigned char c = (unsigned char)v.ptr[i];
            if (c == '%') {
                if (v.len - i < 3 || hex_value(v.ptr[i + 1]) < 0 || hex_value(v.ptr[i + 2]) < 0)
                    return false;
                i += 2;
            } else if (!is_unreserved(c) && !is_sub_delim(c)) {
                return false;
            }
        }
        if (i == 0) /* a port without a host */
            return false;
    }
    if (i == v.len)
        return true;
    if (v.ptr[i] != ':')
        return false;
    slice port = {v.ptr + i + 1, v.len - i - 1};
    uint64_t value;
    return port.len == 0 || (port.len <= 5 && slice_to_u64(port, 65535, &value));
}

static http_parse_result request_error(http_request *req, http_parse_result r, const char *why)
{
    req->error = why;
    return r;
}

http_parse_result http_parse_request(const char *buf, size_t len, size_t max_head, size_t max_target,
                                     size_t *scanned, http_request *req)
{
    /* A failed parse must not leave the previous request's slices behind:
     * the caller logs what was understood. */
    req->error = NULL;
    req->method_name = req->target = req->path = req->query = (slice){NULL, 0};
    req->method = HTTP_OTHER;
    req->header_count = 0;
    /* RFC 9112 §2.2: ignore empty lines before the request line. */
    size_t lead = 0;
    while (lead < len && (buf[lead] == '\r' || buf[lead] == '\n')) {
        if (buf[lead] == '\r' && (lead + 1 >= len || buf[lead + 1] != '\n'))
            break;
        lead++;
    }
    /* A request line whose end an earlier call already searched past was
     * judged whole then; the bytes before `*scanned` do not change. */
    bool line_judged = *scanned > lead && *scanned <= len && memchr(buf + lead, '\n', *scanned - lead) != NULL;
    if (*scanned < lead)
        *scanned = lead;
    size_t end = find_head_end(buf, len, scanned);
    request_line rl = {0};
    if (end == 0) {
        /* While the head is incomplete, its request line is judged as far as
         * it goes (garbage fails at once, not at the header timeout), and its
         * size. */
        bool empty_line_pending = len - lead == 1 && buf[lead] == '\r'; /* its LF yet to come */
        if (!line_judged && !empty_line_pending) {
            http_parse_result r = scan_request_line(buf + lead, len - lead, max_target, &rl, &req->error);
            if (r != HTTP_PARSE_INCOMPLETE && r != HTTP_PARSE_DONE)
                return r;
        }
        if (len > max_head)
            return request_error(req, HTTP_PARSE_HEADERS_TOO_LARGE, "request header section too large");
        return HTTP_PARSE_INCOMPLETE;
    }
    http_parse_result r = scan_request_line(buf + lead, end - lead, max_target, &rl, &req->error);
    if (r == HTTP_PARSE_INCOMPLETE) /* not reached: [lead, end) holds a line end; rl.len needs one */
        return request_error(req, HTTP_PARSE_BAD_REQUEST, "malformed request line");
    if (r != HTTP_PARSE_DONE)
        return r;
    int minor = parse_version(rl.version);
    req->method_name = rl.method;
    req->target = rl.target;
    req->minor_version = minor;
    req->method = method_of(req->method_name);
    const char *q = memchr(req->target.ptr, '?', req->target.len);
    req->path = (slice){req->target.ptr, q ? (size_t)(q - req->target.ptr) : req->target.len};
    req->query = q ? (slice){q + 1, req->target.len - req->path.len - 1} : (slice){q, 0};
    if (end > max_head)
        return request_error(req, HTTP_PARSE_HEADERS_TOO_LARGE, "request header section too large");
    if (!line_ends_agree(buf + lead, end - lead))
        return request_error(req, HTTP_PARSE_BAD_REQUEST, "mixed line endings in the request head");

    const char *pos = buf + lead + rl.len, *stop = buf + end;
    r = parse_fields(&pos, stop, req->headers, &req->header_count, &req->error);
    if (r != HTTP_PARSE_DONE)
        return r;
    r = framing(req->headers, req->header_count, minor, &req->body_kind, &req->content_length, &req->keep_alive,
                &req->error);
    if (r != HTTP_PARSE_DONE)
        return r;

    size_t hosts = 0;
    const http_header *host = NULL;
    req->expect_continue = false;
    for (size_t i = 0; i < req->header_count; i++) {
        if (slice_eq_nocase(req->headers[i].name, SLICE_LIT("host"))) {
            hosts++;
            host = &req->headers[i];
        } else if (slice_eq_nocase(req->headers[i].name, SLICE_LIT("expect"))) {
            req->expect_continue = slice_eq_nocase(req->headers[i].value, SLICE_LIT("100-continue"));
        }
    }
    if (hosts > 1 || (hosts == 0 && minor >= 1))
        return request_error(req, HTTP_PARSE_BAD_REQUEST, hosts ? "more than one Host header" : "missing Host header");
    if (host && !host_is_valid(host->value))
        return request_error(req, HTTP_PARSE_BAD_REQUEST, "invalid Host header");
    if (req->expect_continue && minor < 1)
        req->expect_continue = false;
    req->head_len = end;
    return HTTP_PARSE_DONE;
}

http_parse_result http_parse_response(const char *buf, size_t len, size_t max_head, bool request_was_head,
                                      http_response *res)
{
    res->error = NULL;
    size_t scanned = 0;
    size_t end = find_head_end(buf, len, &scanned);
    if (end == 0) {
        /* Garbage shows before the head completes: judge the status line early. */
        if (len >= 5 && memcmp(buf, "HTTP/", 5) != 0) {
            res->error = "not an HTTP response";
            return HTTP_PARSE_BAD_REQUEST;
        }
        if (len > max_head) {
            res->error = "response header section too large";
            return HTTP_PARSE_HEADERS_TOO_LARGE;
        }
        return HTTP_PARSE_INCOMPLETE;
    }
    if (end > max_head) {
        res->error = "response header section too large";
        return HTTP_PARSE_HEADERS_TOO_LARGE;
    }
    if (!line_ends_agree(buf, end)) {
        res->error = "mixed line endings in the response head";
        return HTTP_PARSE_BAD_REQUEST;
    }
    const char *pos = buf, *stop = buf + end;
    slice line;
    if (!next_line(&pos, stop, &line) || line.len < 12 || line.ptr[8] != ' ') {
        res->error = "malformed status line";
        return HTTP_PARSE_BAD_REQUEST;
    }
    int minor = parse_version((slice){line.ptr, 8});
    if (minor < 0) {
        res->error = "not an HTTP/1.x response";
        return HTTP_PARSE_BAD_REQUEST;
    }
    int status = 0;
    for (size_t i = 9; i < 12; i++) {
        if (line.ptr[i] < '0' || line.ptr[i] > '9') {
            res->error = "malformed status code";
            return HTTP_PARSE_BAD_REQUEST;
        }
        status = status * 10 + (line.ptr[i] - '0');
    }
    if (status < 100 || (line.len > 12 && line.ptr[12] != ' ')) {
        res->error = "malformed status code";
        return HTTP_PARSE_BAD_REQUEST;
    }
    res->status = status;
    res->minor_version = minor;
    http_parse_result r = parse_fields(&pos, stop, res->headers, &res->header_count, &res->error);
    if (r != HTTP_PARSE_DONE)
        return r;
    r = framing(res->headers, res->header_count, minor, &res->body_kind, &res->content_length, &res->keep_alive,
                &res->error);
    if (r != HTTP_PARSE_DONE)
        return r;
    if (request_was_head || status < 200 || status == 204 || status == 304) {
        res->body_kind = HTTP_BODY_NONE;
        res->content_length = 0;
    } else if (res->body_kind == HTTP_BODY_NONE) {
        res->body_kind = HTTP_BODY_UNTIL_CLOSE;
        res->keep_alive = false;
    }
    const http_header *ct = http_find_header(res->headers, res->header_count, SLICE_LIT("content-type"));
    res->content_type = ct ? ct->value : (slice){NULL, 0};
    res->head_len = end;
    return HTTP_PARSE_DONE;
}

const http_header *http_find_header(const http_header *headers, size_t count, slice name)
{
    for (size_t i = 0; i < count; i++)
        if (slice_eq_nocase(headers[i].name, name))
            return &headers[i];
    return NULL;
}

bool http_is_hop_by_hop(slice name)
{
    /* Slices, not strings: this runs for every header, so no strlen here. */
    static const slice hop[] = {SLICE_LIT("connection"),         SLICE_LIT("keep-alive"),
                                SLICE_LIT("proxy-connection"),   SLICE_LIT("te"),
                                SLICE_LIT("trailer"),            SLICE_LIT("upgrade"),
                                SLICE_LIT("transfer-encoding"),  SLICE_LIT("proxy-authorization"),
                                SLICE_LIT("proxy-authenticate"), SLICE_LIT("content-length")};
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
        if (slice_eq_nocase(name, hop[i]))
            return true;
    return false;
}

const char *http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* ---- chunked ---- */

enum { CHUNK_OVERHEAD_MAX = 4096, CHUNK_SIZE_DIGITS_MAX = 15 };

size_t http_chunk_header(char out[18], size_t len)
{
    wbuf b = wbuf_over(out, 18);
    wbuf_put_hex(&b, len);
    wbuf_put(&b, "\r\n", 2);
    return b.len;
}

/* The next state after byte c of a chunk line past its size digits:
 *   *( BWS ";" BWS ext-name [ BWS "=" BWS ext-value ] ) CRLF
 * (RFC 9112 §7.1.1), whitespace only where ';' or '=' comes after it. */
static http_chunked_state chunk_ext_next(http_chunked_state s, unsigned char c)
{
    bool ws = is_ws(c);
    switch (s) {
    case CHUNK_SIZE:
        return c == '\r' ? CHUNK_SIZE_LF : c == ';' ? CHUNK_EXT_NAME_START : ws ? CHUNK_EXT_BWS : CHUNK_INVALID;
    case CHUNK_EXT_BWS:
        return ws ? CHUNK_EXT_BWS : c == ';' ? CHUNK_EXT_NAME_START : CHUNK_INVALID;
    case CHUNK_EXT_NAME_START:
        return ws ? CHUNK_EXT_NAME_START : is_tchar(c) ? CHUNK_EXT_NAME : CHUNK_INVALID;
    case CHUNK_EXT_NAME:
        if (is_tchar(c))
            return CHUNK_EXT_NAME;
        if (c == '\r')
            return CHUNK_SIZE_LF;
        return ws ? CHUNK_EXT_NAME_BWS : chunk_ext_next(CHUNK_EXT_NAME_BWS, c); /* '=' or ';' as after BWS */
    case CHUNK_EXT_NAME_BWS:
        return ws ? CHUNK_EXT_NAME_BWS
               : c == '=' ? CHUNK_EXT_VALUE_START
               : c == ';' ? CHUNK_EXT_NAME_START
                          : CHUNK_INVALID;
    case CHUNK_EXT_VALUE_START:
        return ws ? CHUNK_EXT_VALUE_START : is_tchar(c) ? CHUNK_EXT_TOKEN : c == '"' ? CHUNK_EXT_QUOTED : CHUNK_INVALID;
    case CHUNK_EXT_TOKEN:
    case CHUNK_EXT_QUOTED_END: /* a value ends: another extension or the line end */
        if (s == CHUNK_EXT_TOKEN && is_tchar(c))
            return CHUNK_EXT_TOKEN;
        return c == '\r' ? CHUNK_SIZE_LF : c == ';' ? CHUNK_EXT_NAME_START : ws ? CHUNK_EXT_BWS : CHUNK_INVALID;
    case CHUNK_EXT_QUOTED: /* qdtext: HTAB, SP, VCHAR but '"' and '\', obs-text */
        if (c == '"')
            return CHUNK_EXT_QUOTED_END;
        if (c == '\\')
            return CHUNK_EXT_QUOTED_PAIR;
        return is_field_char(c) ? CHUNK_EXT_QUOTED : CHUNK_INVALID;
    case CHUNK_EXT_QUOTED_PAIR:
        return is_field_char(c) ? CHUNK_EXT_QUOTED : CHUNK_INVALID;
    default:
        return CHUNK_INVALID;
    }
}

/* The next state after byte c of the trailer section: `name ":" value CRLF`
 * lines, then CRLF. Trailers are read and dropped. */
static http_chunked_state chunk_trailer_next(http_chunked_state s, unsigned char c)
{
    switch (s) {
    case CHUNK_TRAILER_START:
        return c == '\r' ? CHUNK_END_LF : is_tchar(c) ? CHUNK_TRAILER_NAME : CHUNK_INVALID;
    case CHUNK_TRAILER_NAME:
        return is_tchar(c) ? CHUNK_TRAILER_NAME : c == ':' ? CHUNK_TRAILER_VALUE : CHUNK_INVALID;
    case CHUNK_TRAILER_VALUE:
        return c == '\r' ? CHUNK_TRAILER_LF : is_field_char(c) ? CHUNK_TRAILER_VALUE : CHUNK_INVALID;
    case CHUNK_TRAILER_LF:
        return c == '\n' ? CHUNK_TRAILER_START : CHUNK_INVALID;
    default:
        return CHUNK_INVALID;
    }
}

/* One byte of framing (any state but CHUNK_DATA, CHUNK_DONE, CHUNK_INVALID). */
static http_chunked_state chunk_step(http_chunked *d, unsigned char c)
{
    switch (d->state) {
    case CHUNK_SIZE_START:
    case CHUNK_SIZE: {
        int v = hex_value((char)c);
        if (v >= 0) {
            if (++d->size_digits > CHUNK_SIZE_DIGITS_MAX)
                return CHUNK_INVALID;
            d->remaining = d->remaining * 16 + (uint64_t)v;
            return CHUNK_SIZE;
        }
        if (d->state == CHUNK_SIZE_START)
            return CHUNK_INVALID;
        if (c == '\r')
            return CHUNK_SIZE_LF;
        if (++d->overhead > CHUNK_OVERHEAD_MAX)
            return CHUNK_INVALID;
        return chunk_ext_next(d->state, c);
    }
    case CHUNK_EXT_BWS:
    case CHUNK_EXT_NAME_START:
    case CHUNK_EXT_NAME:
    case CHUNK_EXT_NAME_BWS:
    case CHUNK_EXT_VALUE_START:
    case CHUNK_EXT_TOKEN:
    case CHUNK_EXT_QUOTED:
    case CHUNK_EXT_QUOTED_PAIR:
    case CHUNK_EXT_QUOTED_END:
        if (c != '\r' && ++d->overhead > CHUNK_OVERHEAD_MAX)
            return CHUNK_INVALID;
        return chunk_ext_next(d->state, c);
    case CHUNK_SIZE_LF:
        if (c != '\n')
            return CHUNK_INVALID;
        d->size_digits = 0;
        d->overhead = 0; /* the extension budget is per chunk line */
        return d->remaining ? CHUNK_DATA : CHUNK_TRAILER_START;
    case CHUNK_DATA_CR:
        return c == '\r' ? CHUNK_DATA_LF : CHUNK_INVALID;
    case CHUNK_DATA_LF:
        return c == '\n' ? CHUNK_SIZE_START : CHUNK_INVALID;
    case CHUNK_TRAILER_START:
    case CHUNK_TRAILER_NAME:
    case CHUNK_TRAILER_VALUE:
    case CHUNK_TRAILER_LF:
        if (++d->overhead > CHUNK_OVERHEAD_MAX) /* trailer bytes in all */
            return CHUNK_INVALID;
        return chunk_trailer_next(d->state, c);
    case CHUNK_END_LF:
        return c == '\n' ? CHUNK_DONE : CHUNK_INVALID;
    case CHUNK_DATA:
    case CHUNK_DONE:
    case CHUNK_INVALID:
        break;
    }
    return CHUNK_INVALID;
}

/* hex_value plus one as a table (0: not a digit): the chunk line's digits
 * are the decoder's hot loop. */
static const signed char hex_digit[256] = {
    ['0'] = 1,  ['1'] = 2,  ['2'] = 3,  ['3'] = 4,  ['4'] = 5,  ['5'] = 6,  ['6'] = 7,  ['7'] = 8,
    ['8'] = 9,  ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
    ['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15, ['F'] = 16,
};

/* The usual chunk line whole in src[i..len): the CRLF ending the data
 * before it (in CHUNK_DATA_CR), hex digits, CRLF. Taken in one go; returns
 * the index after it, or 0 for anything else (extensions, the last chunk,
 * a line cut by the read), which the byte-wise machine takes instead, as
 * if this had not looked. */
static size_t chunk_line_fast(http_chunked *d, const char *src, size_t i, size_t len)
{
    if (d->state == CHUNK_DATA_CR) {
        if (len - i < 2 || src[i] != '\r' || src[i + 1] != '\n')
            return 0;
        i += 2;
    }
    uint64_t size = 0;
    size_t start = i;
    for (int v; i < len && i - start <= CHUNK_SIZE_DIGITS_MAX && (v = hex_digit[(unsigned char)src[i]] - 1) >= 0; i++)
        size = size * 16 + (uint64_t)v;
    size_t digits = i - start;
    if (digits == 0 || digits > CHUNK_SIZE_DIGITS_MAX || size == 0 || len - i < 2 || src[i] != '\r' ||
        src[i + 1] != '\n')
        return 0;
    d->remaining = size;
    d->size_digits = 0;
    d->overhead = 0;
    d->state = CHUNK_DATA;
    return i + 2;
}

http_chunked_result http_chunked_decode(http_chunked *d, char *dst, const char *src, size_t src_len,
                                        size_t *consumed, size_t *produced)
{
    size_t i = 0, out = 0;
    while (i < src_len && d->state != CHUNK_DONE && d->state != CHUNK_INVALID) {
        if (d->state == CHUNK_DATA_CR || d->state == CHUNK_SIZE_START) {
            size_t next = chunk_line_fast(d, src, i, src_len);
            if (next)
                i = next;
        }
        if (d->state == CHUNK_DATA) {
            size_t avail = src_len - i;
            size_t take = d->remaining < avail ? (size_t)d->remaining : avail;
            if (dst + out != src + i)
                memmove(dst + out, src + i, take);
            out += take;
            i += take;
            d->remaining -= take;
            if (!d->remaining)
                d->state = CHUNK_DATA_CR;
            continue;
        }
        http_chunked_state next = chunk_step(d, (unsigned char)src[i]);
        if (next == CHUNK_INVALID) {
            d->state = CHUNK_INVALID;
            break; /* the offending byte is not consumed */
        }
        d->state = next;
        i++;
    }
    *consumed = i;
    *produced = out;
    return d->state == CHUNK_DONE ? CHUNKED_DONE : d->state == CHUNK_INVALID ? CHUNKED_ERROR : CHUNKED_MORE;
}
