#include "http/http.h"

#include <string.h>

#include "core/wbuf.h"

/* The classes of each byte, one bit each: BYTE_TCHAR, a tchar of RFC 9110
 * §5.6.2 (a field name's bytes); BYTE_VALUE, what a field value may hold
 * (field-vchar, SP, HTAB, obs-text: all but controls and DEL); BYTE_TARGET,
 * a request target's (visible ASCII). One load per byte on the hot paths. */
enum { BYTE_TCHAR = 1, BYTE_VALUE = 2, BYTE_TARGET = 4 };
static const unsigned char byte_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    2, 7, 6, 7, 7, 7, 7, 7, 6, 6, 7, 7, 6, 7, 7, 6,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6,
    6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 7, 6, 7, 0,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
};

static inline bool is_tchar(unsigned char c) { return byte_class[c] & BYTE_TCHAR; }

static inline bool is_field_char(unsigned char c) { return byte_class[c] & BYTE_VALUE; }

static inline bool is_target_char(unsigned char c) { return byte_class[c] & BYTE_TARGET; }

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

static inline uint64_t load8(const char *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof w);
    return w;
}

static inline uint32_t load4(const char *p)
{
    uint32_t w;
    memcpy(&w, p, sizeof w);
    return w;
}

/* Whether any of 8 bytes is a control byte or DEL (HTAB too, which a
 * value may hold: the caller then looks byte by byte). (x - 0x20..) & ~x &
 * 0x80.. is nonzero exactly when some byte of x is below 0x20, and
 * (x ^ 0x7f.. - 0x01..) & ~x & 0x80.. when one is 0x7f: bit 7 of a byte is
 * the same in x and in x ^ 0x7f.., so one ~x serves both. */
static inline bool word_has_control(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    return (((w - ones * 0x20) | ((w ^ (ones * 0x7f)) - ones)) & ~w & highs) != 0;
}

/* A name against a lowercase literal of its length (2 to 24 bytes), a word
 * at a time, the last word overlapping. `| 0x20` lowers a letter and keeps
 * '-' as it is; of the bytes it could confuse, only CR (for '-') differs
 * from a tchar, and names are tokens. */
static inline bool name_is(const char *p, const char *lower, size_t len)
{
    const uint64_t low8 = 0x2020202020202020u;
    const uint32_t low4 = 0x20202020u;
    if (len >= 8)
        return (load8(p) | low8) == load8(lower) && (len <= 16 || (load8(p + 8) | low8) == load8(lower + 8)) &&
               (load8(p + len - 8) | low8) == load8(lower + len - 8);
    if (len >= 4)
        return (load4(p) | low4) == load4(lower) && (load4(p + len - 4) | low4) == load4(lower + len - 4);
    return len == 2 && (char)(p[0] | 0x20) == lower[0] && (char)(p[1] | 0x20) == lower[1];
}

#define NAME_IS(n, lit) name_is((n).ptr, (lit), sizeof(lit) - 1)

http_field http_field_of(slice n)
{
    /* By length first: most names are ruled out without reading a byte. */
    switch (n.len) {
    case 2: return NAME_IS(n, "te") ? HTTP_FIELD_TE : HTTP_FIELD_OTHER;
    case 4: return NAME_IS(n, "host") ? HTTP_FIELD_HOST : HTTP_FIELD_OTHER;
    case 6: return NAME_IS(n, "expect") ? HTTP_FIELD_EXPECT : HTTP_FIELD_OTHER;
    case 7:
        return NAME_IS(n, "trailer")   ? HTTP_FIELD_TRAILER
               : NAME_IS(n, "upgrade") ? HTTP_FIELD_UPGRADE
               : NAME_IS(n, "api-key") ? HTTP_FIELD_API_KEY
                                       : HTTP_FIELD_OTHER;
    case 9: return NAME_IS(n, "x-api-key") ? HTTP_FIELD_X_API_KEY : HTTP_FIELD_OTHER;
    case 10:
        return NAME_IS(n, "connection")   ? HTTP_FIELD_CONNECTION
               : NAME_IS(n, "keep-alive") ? HTTP_FIELD_KEEP_ALIVE
                                          : HTTP_FIELD_OTHER;
    case 11:
        return NAME_IS(n, "retry-after")   ? HTTP_FIELD_RETRY_AFTER
               : NAME_IS(n, "traceparent") ? HTTP_FIELD_TRACEPARENT
                                           : HTTP_FIELD_OTHER;
    case 12:
        return NAME_IS(n, "content-type")   ? HTTP_FIELD_CONTENT_TYPE
               : NAME_IS(n, "x-request-id") ? HTTP_FIELD_X_REQUEST_ID
                                            : HTTP_FIELD_OTHER;
    case 13:
        return NAME_IS(n, "authorization")   ? HTTP_FIELD_AUTHORIZATION
               : NAME_IS(n, "cache-control") ? HTTP_FIELD_CACHE_CONTROL
               : NAME_IS(n, "last-event-id") ? HTTP_FIELD_LAST_EVENT_ID
               : NAME_IS(n, "if-none-match") ? HTTP_FIELD_IF_NONE_MATCH
                                             : HTTP_FIELD_OTHER;
    case 14:
        return NAME_IS(n, "content-length")   ? HTTP_FIELD_CONTENT_LENGTH
               : NAME_IS(n, "openai-project") ? HTTP_FIELD_OPENAI_PROJECT
                                              : HTTP_FIELD_OTHER;
    case 15: return NAME_IS(n, "accept-encoding") ? HTTP_FIELD_ACCEPT_ENCODING : HTTP_FIELD_OTHER;
    case 16: return NAME_IS(n, "proxy-connection") ? HTTP_FIELD_PROXY_CONNECTION : HTTP_FIELD_OTHER;
    case 17:
        return NAME_IS(n, "transfer-encoding")   ? HTTP_FIELD_TRANSFER_ENCODING
               : NAME_IS(n, "ssegate-resumable") ? HTTP_FIELD_SSEGATE_RESUMABLE
                                                 : HTTP_FIELD_OTHER;
    case 18: return NAME_IS(n, "proxy-authenticate") ? HTTP_FIELD_PROXY_AUTHENTICATE : HTTP_FIELD_OTHER;
    case 19:
        return NAME_IS(n, "proxy-authorization")   ? HTTP_FIELD_PROXY_AUTHORIZATION
               : NAME_IS(n, "openai-organization") ? HTTP_FIELD_OPENAI_ORGANIZATION
                                                   : HTTP_FIELD_OTHER;
    default: return HTTP_FIELD_OTHER;
    }
}

_Static_assert(HTTP_MAX_HEADERS < 255, "a field's index fits http_field_index");

/* What a parse learns of the fields as it meets them: enough for framing,
 * Host and Expect without another pass over the headers. */
typedef struct field_notes {
    http_field_index *index;
    size_t hosts;
    size_t second_length, second_coding; /* 1 + the index of a repeat, 0 when none */
    size_t last_expect;                  /* 1 + the index of the last Expect */
    bool close, keep;                    /* Connection listed close, keep-alive */
} field_notes;

static field_notes notes_over(http_field_index *index)
{
    *index = (http_field_index){{0}};
    return (field_notes){.index = index};
}

/* Whether a Connection value lists close or keep-alive, in one pass. */
static void note_connection(field_notes *n, slice list)
{
    size_t i = 0;
    while (i < list.len) {
        size_t start = i;
        while (i < list.len && list.ptr[i] != ',')
            i++;
        slice token = slice_trim_ows((slice){list.ptr + start, i - start});
        /* a value holds no CR, so name_is is exact here too */
        n->close |= token.len == 5 && NAME_IS(token, "close");
        n->keep |= token.len == 10 && NAME_IS(token, "keep-alive");
        i++;
    }
}

/* Header i, just parsed. */
static void note_field(field_notes *n, const http_header *h, size_t i)
{
    http_field f = http_field_of(h->name);
    if (f == HTTP_FIELD_OTHER)
        return;
    uint8_t *at = &n->index->at[f];
    bool again = *at != 0;
    if (!again)
        *at = (uint8_t)(i + 1);
    switch (f) {
    case HTTP_FIELD_CONTENT_LENGTH:
        if (again && !n->second_length)
            n->second_length = i + 1;
        break;
    case HTTP_FIELD_TRANSFER_ENCODING:
        if (again && !n->second_coding)
            n->second_coding = i + 1;
        break;
    case HTTP_FIELD_CONNECTION: note_connection(n, h->value); break;
    case HTTP_FIELD_HOST: n->hosts++; break;
    case HTTP_FIELD_EXPECT: n->last_expect = i + 1; break;
    default: break;
    }
}

static const http_header *field_in(const http_header *headers, const http_field_index *index, http_field f)
{
    return index->at[f] ? &headers[index->at[f] - 1] : NULL;
}

/* Header fields shared by requests and responses, for a head whose end is
 * known. Returns an error result or HTTP_PARSE_DONE, with `*error` set to a
 * sentence. */
static http_parse_result parse_fields(const char **pos, const char *end, http_header *headers, size_t *count,
                                      field_notes *notes, const char **error)
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
        note_field(notes, &headers[*count], *count);
        (*count)++;
    }
}

/* The header section at buf[pos..len) in one pass, for a head that came
 * whole and clean, as nearly all do: its fields go to headers and *count,
 * and the result is the end of the head. 0 when it is not that simple: not
 * all here, a line end not of the start line's kind (`crlf`), anything
 * malformed, more than HTTP_MAX_HEADERS fields. Then parse_fields, after
 * the head's end is found and judged in order, gives the verdict; a clean
 * head gets the same fields from both. */
static size_t scan_fields(const char *buf, size_t pos, size_t len, bool crlf, http_header *headers, size_t *count,
                          field_notes *notes)
{
    size_t k = 0;
    for (;;) {
        if (pos >= len)
            return 0;
        if (buf[pos] == '\n' || buf[pos] == '\r') { /* the empty line */
            size_t end = !crlf && buf[pos] == '\n' ? pos + 1
                         : crlf && buf[pos] == '\r' && pos + 1 < len && buf[pos + 1] == '\n' ? pos + 2
                                                                                            : 0;
            *count = k;
            return end;
        }
        size_t name = pos;
        while (pos < len && is_tchar((unsigned char)buf[pos]))
            pos++;
        if (pos == name || pos == len || buf[pos] != ':' || k == HTTP_MAX_HEADERS)
            return 0;
        size_t name_end = pos++;
        while (pos < len && (buf[pos] == ' ' || buf[pos] == '\t'))
            pos++;
        size_t value = pos;
        while (len - pos >= 8 && !word_has_control(load8(buf + pos)))
            pos += 8;
        while (pos < len && is_field_char((unsigned char)buf[pos]))
            pos++;
        size_t value_end = pos;
        while (value_end > value && (buf[value_end - 1] == ' ' || buf[value_end - 1] == '\t'))
            value_end--;
        if (crlf) {
            if (len - pos < 2 || buf[pos] != '\r' || buf[pos + 1] != '\n')
                return 0;
            pos += 2;
        } else {
            if (pos == len || buf[pos] != '\n')
                return 0;
            pos++;
        }
        headers[k] = (http_header){{buf + name, name_end - name}, {buf + value, value_end - value}};
        note_field(notes, &headers[k], k);
        k++;
    }
}

/* Content-Length must be one run of digits, once (RFC 9112 §6.3: anything
 * else is unrecoverable framing). */
static bool parse_length(slice v, uint64_t *out)
{
    return v.len <= 15 && slice_to_u64(v, UINT64_MAX, out);
}

/* Decides body framing and connection persistence from the fields. */
static http_parse_result framing(const http_header *headers, const field_notes *n, int minor, http_body_kind *kind,
                                 uint64_t *length, bool *keep_alive, const char **error)
{
    if (n->second_length || n->second_coding) { /* the repeat that comes first */
        bool length_first = n->second_length && (!n->second_coding || n->second_length < n->second_coding);
        *error = length_first ? "duplicate Content-Length" : "duplicate Transfer-Encoding";
        return HTTP_PARSE_BAD_REQUEST;
    }
    const http_header *cl = field_in(headers, n->index, HTTP_FIELD_CONTENT_LENGTH);
    const http_header *te = field_in(headers, n->index, HTTP_FIELD_TRANSFER_ENCODING);
    *keep_alive = minor >= 1 ? !n->close : n->keep && !n->close;
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
    /* Methods are case-sensitive (RFC 9110 §9.1). */
    switch (m.len) {
    case 3:
        return slice_eq(m, SLICE_LIT("GET")) ? HTTP_GET : slice_eq(m, SLICE_LIT("PUT")) ? HTTP_PUT : HTTP_OTHER;
    case 4:
        return slice_eq(m, SLICE_LIT("POST")) ? HTTP_POST : slice_eq(m, SLICE_LIT("HEAD")) ? HTTP_HEAD : HTTP_OTHER;
    case 5: return slice_eq(m, SLICE_LIT("PATCH")) ? HTTP_PATCH : HTTP_OTHER;
    case 6: return slice_eq(m, SLICE_LIT("DELETE")) ? HTTP_DELETE : HTTP_OTHER;
    case 7: return slice_eq(m, SLICE_LIT("OPTIONS")) ? HTTP_OPTIONS : HTTP_OTHER;
    default: return HTTP_OTHER;
    }
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
    /* The target's bytes up to its limit, then what stopped them. */
    size_t limit = n - target > max_target ? target + max_target : n;
    while (i < limit && is_target_char((unsigned char)p[i]))
        i++;
    if (i < n && p[i] != ' ') {
        unsigned char c = (unsigned char)p[i];
        if (c == '\r' || c == '\n') { /* a line end here leaves no version */
            *error = "malformed request line";
            return HTTP_PARSE_BAD_REQUEST;
        }
        if (!is_target_char(c)) {
            *error = "invalid character in request target";
            return HTTP_PARSE_BAD_REQUEST;
        }
        *error = "request target too long"; /* a target byte past the limit */
        return HTTP_PARSE_URI_TOO_LONG;
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

/* A failed parse must not leave the previous request's slices behind: the
 * caller logs what was understood. */
static void forget_request(http_request *req)
{
    req->error = NULL;
    req->method_name = req->target = req->path = req->query = (slice){NULL, 0};
    req->method = HTTP_OTHER;
    req->header_count = 0;
    req->fields = (http_field_index){{0}};
}

static void take_request_line(http_request *req, const request_line *rl)
{
    req->method_name = rl->method;
    req->target = rl->target;
    req->minor_version = parse_version(rl->version);
    req->method = method_of(req->method_name);
    const char *q = memchr(req->target.ptr, '?', req->target.len);
    req->path = (slice){req->target.ptr, q ? (size_t)(q - req->target.ptr) : req->target.len};
    req->query = q ? (slice){q + 1, req->target.len - req->path.len - 1} : (slice){q, 0};
}

/* What follows the fields: framing, Host, Expect. */
static http_parse_result finish_request(http_request *req, const field_notes *n, size_t end)
{
    int minor = req->minor_version;
    http_parse_result r = framing(req->headers, n, minor, &req->body_kind, &req->content_length, &req->keep_alive,
                                  &req->error);
    if (r != HTTP_PARSE_DONE)
        return r;
    req->expect_continue = n->last_expect &&
                           slice_eq_nocase(req->headers[n->last_expect - 1].value, SLICE_LIT("100-continue"));
    if (n->hosts > 1 || (n->hosts == 0 && minor >= 1))
        return request_error(req, HTTP_PARSE_BAD_REQUEST, n->hosts ? "more than one Host header" : "missing Host header");
    const http_header *host = field_in(req->headers, n->index, HTTP_FIELD_HOST);
    if (host && !host_is_valid(host->value))
        return request_error(req, HTTP_PARSE_BAD_REQUEST, "invalid Host header");
    if (req->expect_continue && minor < 1)
        req->expect_continue = false;
    req->head_len = end;
    return HTTP_PARSE_DONE;
}

/* A whole, clean head in one pass (see scan_fields); false when the careful
 * path must look. */
static bool parse_request_fast(const char *buf, size_t len, size_t lead, size_t max_head, size_t max_target,
                               http_request *req, http_parse_result *result)
{
    request_line rl = {0};
    const char *why = NULL;
    if (scan_request_line(buf + lead, len - lead, max_target, &rl, &why) != HTTP_PARSE_DONE)
        return false;
    bool crlf = buf[lead + rl.len - 2] == '\r'; /* rl.len >= 10: the version and a line end */
    field_notes n = notes_over(&req->fields);
    /* Nothing past max_head: a longer head is the careful path's 431. */
    size_t end = scan_fields(buf, lead + rl.len, len < max_head ? len : max_head, crlf, req->headers,
                             &req->header_count, &n);
    if (end == 0)
        return false;
    take_request_line(req, &rl);
    *result = finish_request(req, &n, end);
    return true;
}

http_parse_result http_parse_request(const char *buf, size_t len, size_t max_head, size_t max_target,
                                     size_t *scanned, http_request *req)
{
    forget_request(req);
    /* RFC 9112 §2.2: ignore empty lines before the request line. */
    size_t lead = 0;
    while (lead < len && (buf[lead] == '\r' || buf[lead] == '\n')) {
        if (buf[lead] == '\r' && (lead + 1 >= len || buf[lead + 1] != '\n'))
            break;
        lead++;
    }
    /* The first look at a request's bytes: most heads arrive whole. */
    http_parse_result fast;
    if (*scanned == 0 && parse_request_fast(buf, len, lead, max_head, max_target, req, &fast))
        return fast;
    forget_request(req);

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
    take_request_line(req, &rl);
    if (end > max_head)
        return request_error(req, HTTP_PARSE_HEADERS_TOO_LARGE, "request header section too large");
    if (!line_ends_agree(buf + lead, end - lead))
        return request_error(req, HTTP_PARSE_BAD_REQUEST, "mixed line endings in the request head");

    const char *pos = buf + lead + rl.len, *stop = buf + end;
    field_notes n = notes_over(&req->fields);
    r = parse_fields(&pos, stop, req->headers, &req->header_count, &n, &req->error);
    if (r != HTTP_PARSE_DONE)
        return r;
    return finish_request(req, &n, end);
}

/* What follows the fields of a response: framing, and what it says of the body. */
static http_parse_result finish_response(http_response *res, const field_notes *n, bool request_was_head,
                                         size_t end)
{
    http_parse_result r = framing(res->headers, n, res->minor_version, &res->body_kind, &res->content_length,
                                  &res->keep_alive, &res->error);
    if (r != HTTP_PARSE_DONE)
        return r;
    int status = res->status;
    if (request_was_head || status < 200 || status == 204 || status == 304) {
        res->body_kind = HTTP_BODY_NONE;
        res->content_length = 0;
    } else if (res->body_kind == HTTP_BODY_NONE) {
        res->body_kind = HTTP_BODY_UNTIL_CLOSE;
        res->keep_alive = false;
    }
    const http_header *ct = field_in(res->headers, n->index, HTTP_FIELD_CONTENT_TYPE);
    res->content_type = ct ? ct->value : (slice){NULL, 0};
    res->head_len = end;
    return HTTP_PARSE_DONE;
}

/* "HTTP/1.x NNN" and, after a space, any reason without a CR, then the line
 * end: its length with the line end, or 0 when it is not that (the careful
 * path then says what it is). */
static size_t scan_status_line(const char *buf, size_t len, http_response *res, bool *crlf)
{
    if (len < 13 || buf[8] != ' ')
        return 0;
    int minor = parse_version((slice){buf, 8});
    if (minor < 0)
        return 0;
    int status = 0;
    for (size_t i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return 0;
        status = status * 10 + (buf[i] - '0');
    }
    size_t i = 12;
    if (buf[i] == ' ')
        while (i < len && buf[i] != '\r' && buf[i] != '\n')
            i++;
    if (status < 100 || i == len)
        return 0;
    *crlf = buf[i] == '\r';
    if (*crlf && (i + 1 == len || buf[i + 1] != '\n'))
        return 0;
    if (!*crlf && buf[i] != '\n')
        return 0;
    res->status = status;
    res->minor_version = minor;
    return i + (*crlf ? 2 : 1);
}

static bool parse_response_fast(const char *buf, size_t len, size_t max_head, bool request_was_head,
                                http_response *res, http_parse_result *result)
{
    if (len > max_head) /* nothing past max_head: a longer head is the careful path's 431 */
        len = max_head;
    bool crlf;
    size_t line = scan_status_line(buf, len, res, &crlf);
    if (line == 0)
        return false;
    field_notes n = notes_over(&res->fields);
    size_t end = scan_fields(buf, line, len, crlf, res->headers, &res->header_count, &n);
    if (end == 0)
        return false;
    *result = finish_response(res, &n, request_was_head, end);
    return true;
}

http_parse_result http_parse_response(const char *buf, size_t len, size_t max_head, bool request_was_head,
                                      http_response *res)
{
    res->error = NULL;
    http_parse_result fast;
    if (parse_response_fast(buf, len, max_head, request_was_head, res, &fast))
        return fast;
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
    field_notes n = notes_over(&res->fields);
    http_parse_result r = parse_fields(&pos, stop, res->headers, &res->header_count, &n, &res->error);
    if (r != HTTP_PARSE_DONE)
        return r;
    return finish_response(res, &n, request_was_head, end);
}

const http_header *http_find_header(const http_header *headers, size_t count, slice name)
{
    for (size_t i = 0; i < count; i++)
        if (slice_eq_nocase(headers[i].name, name))
            return &headers[i];
    return NULL;
}

const http_header *http_request_field(const http_request *req, http_field f)
{
    return field_in(req->headers, &req->fields, f);
}

const http_header *http_response_field(const http_response *res, http_field f)
{
    return field_in(res->headers, &res->fields, f);
}

bool http_is_hop_by_hop(slice name)
{
    return http_field_is_hop_by_hop(http_field_of(name));
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
