#include "http/http.h"

#include <string.h>

#include "core/wbuf.h"

/* tchar of RFC 9110 §5.6.2 */
static bool is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* field-vchar, SP, HTAB, obs-text: everything but controls and DEL */
static bool is_field_char(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

static bool is_target_char(unsigned char c) { return c > 0x20 && c < 0x7f; }

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

static slice trim_ows(slice s)
{
    while (s.len && (s.ptr[0] == ' ' || s.ptr[0] == '\t')) {
        s.ptr++;
        s.len--;
    }
    while (s.len && (s.ptr[s.len - 1] == ' ' || s.ptr[s.len - 1] == '\t'))
        s.len--;
    return s;
}

bool http_list_has_token(slice list, slice token)
{
    size_t i = 0;
    while (i < list.len) {
        size_t start = i;
        while (i < list.len && list.ptr[i] != ',')
            i++;
        if (slice_eq_nocase(trim_ows((slice){list.ptr + start, i - start}), token))
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
        slice value = trim_ows((slice){line.ptr + colon + 1, line.len - colon - 1});
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
    if (*scanned < lead)
        *scanned = lead;
    size_t end = find_head_end(buf, len, scanned);
    if (end == 0) {
        /* While the head is incomplete, only its size can be judged. */
        const char *nl = memchr(buf + lead, '\n', len - lead);
        if (!nl && len - lead > max_target + 16)
            return request_error(req, HTTP_PARSE_URI_TOO_LONG, "request line too long");
        if (len > max_head)
            return request_error(req, HTTP_PARSE_HEADERS_TOO_LARGE, "request header section too large");
        return HTTP_PARSE_INCOMPLETE;
    }
    if (end > max_head)
        return request_error(req, HTTP_PARSE_HEADERS_TOO_LARGE, "request header section too large");

    const char *pos = buf + lead, *stop = buf + end;
    slice line;
    if (!next_line(&pos, stop, &line))
        return request_error(req, HTTP_PARSE_BAD_REQUEST, "bare CR in request line");

    /* method SP request-target SP HTTP-version, single spaces */
    const char *sp1 = memchr(line.ptr, ' ', line.len);
    if (!sp1 || sp1 == line.ptr)
        return request_error(req, HTTP_PARSE_BAD_REQUEST, "malformed request line");
    req->method_name = (slice){line.ptr, (size_t)(sp1 - line.ptr)};
    for (size_t i = 0; i < req->method_name.len; i++)
        if (!is_tchar((unsigned char)req->method_name.ptr[i]))
            return request_error(req, HTTP_PARSE_BAD_REQUEST, "invalid character in method");
    const char *target = sp1 + 1, *line_end = line.ptr + line.len;
    const char *sp2 = memchr(target, ' ', (size_t)(line_end - target));
    if (!sp2 || sp2 == target)
        return request_error(req, HTTP_PARSE_BAD_REQUEST, "malformed request line");
    req->target = (slice){target, (size_t)(sp2 - target)};
    if (req->target.len > max_target)
        return request_error(req, HTTP_PARSE_URI_TOO_LONG, "request target too long");
    for (size_t i = 0; i < req->target.len; i++)
        if (!is_target_char((unsigned char)req->target.ptr[i]))
            return request_error(req, HTTP_PARSE_BAD_REQUEST, "invalid character in request target");
    int minor = parse_version((slice){sp2 + 1, (size_t)(line_end - sp2 - 1)});
    if (minor == -1)
        return request_error(req, HTTP_PARSE_BAD_VERSION, "HTTP version not supported");
    if (minor < 0)
        return request_error(req, HTTP_PARSE_BAD_REQUEST, "malformed HTTP version");
    req->minor_version = minor;
    req->method = method_of(req->method_name);

    const char *q = memchr(req->target.ptr, '?', req->target.len);
    req->path = (slice){req->target.ptr, q ? (size_t)(q - req->target.ptr) : req->target.len};
    req->query = q ? (slice){q + 1, req->target.len - req->path.len - 1} : (slice){q, 0};

    http_parse_result r = parse_fields(&pos, stop, req->headers, &req->header_count, &req->error);
    if (r != HTTP_PARSE_DONE)
        return r;
    r = framing(req->headers, req->header_count, minor, &req->body_kind, &req->content_length, &req->keep_alive,
                &req->error);
    if (r != HTTP_PARSE_DONE)
        return r;

    size_t hosts = 0;
    req->expect_continue = false;
    for (size_t i = 0; i < req->header_count; i++) {
        if (slice_eq_nocase(req->headers[i].name, SLICE_LIT("host")))
            hosts++;
        else if (slice_eq_nocase(req->headers[i].name, SLICE_LIT("expect")))
            req->expect_continue = slice_eq_nocase(req->headers[i].value, SLICE_LIT("100-continue"));
    }
    if (hosts > 1 || (hosts == 0 && minor >= 1))
        return request_error(req, HTTP_PARSE_BAD_REQUEST, hosts ? "more than one Host header" : "missing Host header");
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
    static const char *const hop[] = {"connection",        "keep-alive", "proxy-connection", "te",
                                      "trailer",           "upgrade",    "transfer-encoding", "proxy-authorization",
                                      "proxy-authenticate", "content-length"};
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
        if (slice_eq_nocase(name, slice_of(hop[i])))
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

size_t http_chunk_header(char out[18], size_t len)
{
    wbuf b = wbuf_over(out, 18);
    wbuf_put_hex(&b, len);
    wbuf_put(&b, "\r\n", 2);
    return b.len;
}

http_chunked_result http_chunked_decode(http_chunked *d, char *dst, const char *src, size_t src_len,
                                        size_t *consumed, size_t *produced)
{
    size_t i = 0, out = 0;
    while (i < src_len) {
        char c = src[i];
        switch (d->state) {
        case CHUNK_SIZE_START:
        case CHUNK_SIZE: {
            int v = hex_value(c);
            if (v >= 0) {
                if (++d->size_digits > CHUNK_SIZE_DIGITS_MAX)
                    goto fail;
                d->remaining = d->remaining * 16 + (uint64_t)v;
                d->state = CHUNK_SIZE;
                i++;
                break;
            }
            if (d->state == CHUNK_SIZE_START)
                goto fail;
            if (c == ';' || c == ' ' || c == '\t')
                d->state = CHUNK_EXT;
            else if (c == '\r')
                d->state = CHUNK_SIZE_LF;
            else if (c == '\n')
                goto size_line_done;
            else
                goto fail;
            i++;
            break;
        }
        case CHUNK_EXT:
            if (c == '\r')
                d->state = CHUNK_SIZE_LF;
            else if (c == '\n') {
                i++;
                goto size_line_done_advanced;
            } else if (++d->overhead > CHUNK_OVERHEAD_MAX || !(c == '\t' || ((unsigned char)c >= 0x20 && c != 0x7f)))
                goto fail;
            i++;
            break;
        case CHUNK_SIZE_LF:
            if (c != '\n')
                goto fail;
        size_line_done:
            i++;
        size_line_done_advanced:
            d->size_digits = 0;
            d->overhead = 0; /* the extension budget is per chunk line */
            d->state = d->remaining ? CHUNK_DATA : CHUNK_TRAILER_START;
            break;
        case CHUNK_DATA: {
            size_t avail = src_len - i;
            size_t take = d->remaining < avail ? (size_t)d->remaining : avail;
            if (dst + out != src + i)
                memmove(dst + out, src + i, take);
            out += take;
            i += take;
            d->remaining -= take;
            if (!d->remaining)
                d->state = CHUNK_DATA_CR;
            break;
        }
        case CHUNK_DATA_CR:
            if (c == '\n') {
                d->state = CHUNK_SIZE_START;
            } else if (c == '\r') {
                d->state = CHUNK_DATA_LF;
            } else {
                goto fail;
            }
            i++;
            break;
        case CHUNK_DATA_LF:
            if (c != '\n')
                goto fail;
            d->state = CHUNK_SIZE_START;
            i++;
            break;
        case CHUNK_TRAILER_START:
            if (c == '\r')
                d->state = CHUNK_END_LF;
            else if (c == '\n') {
                d->state = CHUNK_DONE;
                i++;
                goto done;
            } else {
                if (++d->overhead > CHUNK_OVERHEAD_MAX)
                    goto fail;
                d->state = CHUNK_TRAILER;
            }
            i++;
            break;
        case CHUNK_TRAILER:
            if (++d->overhead > CHUNK_OVERHEAD_MAX)
                goto fail;
            if (c == '\n')
                d->state = CHUNK_TRAILER_START;
            i++;
            break;
        case CHUNK_TRAILER_LF:
        case CHUNK_END_LF:
            if (c != '\n')
                goto fail;
            i++;
            d->state = CHUNK_DONE;
            goto done;
        case CHUNK_DONE:
            goto done;
        }
    }
    *consumed = i;
    *produced = out;
    return d->state == CHUNK_DONE ? CHUNKED_DONE : CHUNKED_MORE;
done:
    *consumed = i;
    *produced = out;
    return CHUNKED_DONE;
fail:
    *consumed = i;
    *produced = out;
    return CHUNKED_ERROR;
}
