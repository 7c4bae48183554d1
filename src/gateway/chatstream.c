#include "gateway/chatstream.h"

static const char hex_digits[] = "0123456789abcdef";

static void put_u_escape(wbuf *b, unsigned v)
{
    char u[6] = {'\\', 'u', hex_digits[v >> 12 & 15], hex_digits[v >> 8 & 15], hex_digits[v >> 4 & 15],
                 hex_digits[v & 15]};
    wbuf_put(b, u, sizeof u);
}

/* ASCII that the HTML-safe JSON form does not leave as it is. */
static bool ascii_needs_escape(unsigned char c)
{
    return c < 0x20 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&';
}

static void put_ascii_escape(wbuf *b, unsigned char c)
{
    switch (c) {
    case '"': wbuf_put(b, "\\\"", 2); break;
    case '\\': wbuf_put(b, "\\\\", 2); break;
    case '\n': wbuf_put(b, "\\n", 2); break;
    case '\r': wbuf_put(b, "\\r", 2); break;
    case '\t': wbuf_put(b, "\\t", 2); break;
    default: put_u_escape(b, c); break;
    }
}

/* The length of the UTF-8 sequence at p[0..n) (p[0] >= 0x80), with *ok; when
 * ill-formed, the length of its maximal subpart (at least 1), which is what
 * one U+FFFD replaces (Unicode §3.9, as WHATWG's decoder does). */
static size_t utf8_sequence(const unsigned char *p, size_t n, bool *ok)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xbf;
    size_t len;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0; /* no overlong forms */
        else if (c == 0xed)
            hi = 0x9f; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f; /* nothing above U+10FFFF */
    } else {
        *ok = false;
        return 1;
    }
    for (size_t i = 1; i < len; i++) {
        if (i >= n || p[i] < lo || p[i] > hi) {
            *ok = false;
            return i;
        }
        lo = 0x80;
        hi = 0xbf;
    }
    *ok = true;
    return len;
}

/* U+2028 and U+2029 end lines in JavaScript source before ES2019. */
static bool is_js_line_end(const unsigned char *p, size_t len)
{
    return len == 3 && p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9);
}

/* Handles the non-ASCII sequence at p[i]: copied in the pending run, or
 * escaped / replaced. Returns its length; *run moves past what was written
 * and *repaired is set for ill-formed bytes. */
static size_t put_multibyte(wbuf *b, const unsigned char *p, size_t n, size_t i, size_t *run, bool *repaired)
{
    bool ok;
    size_t len = utf8_sequence(p + i, n - i, &ok);
    if (ok && !is_js_line_end(p + i, len))
        return len;
    wbuf_put(b, p + *run, i - *run);
    if (ok) {
        put_u_escape(b, p[i + 2] == 0xa8 ? 0x2028 : 0x2029);
    } else {
        put_u_escape(b, 0xfffd);
        *repaired = true;
    }
    *run = i + len;
    return len;
}

/* Escapes text as the inside of an HTML-safe JSON string. */
static void put_text(wbuf *b, slice s)
{
    const unsigned char *p = (const unsigned char *)s.ptr;
    size_t run = 0, i = 0;
    bool repaired = false;
    while (i < s.len) {
        if (p[i] >= 0x80) {
            i += put_multibyte(b, p, s.len, i, &run, &repaired);
            continue;
        }
        if (ascii_needs_escape(p[i])) {
            wbuf_put(b, p + run, i - run);
            put_ascii_escape(b, p[i]);
            run = i + 1;
        }
        i++;
    }
    wbuf_put(b, p + run, s.len - run);
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The value of "\uXXXX" at p[i..n), or -1 when there is none. */
static long u_escape_at(const unsigned char *p, size_t n, size_t i)
{
    if (n - i < 6 || p[i] != '\\' || p[i + 1] != 'u')
        return -1;
    long v = 0;
    for (size_t k = 2; k < 6; k++) {
        int d = hex_value(p[i + k]);
        if (d < 0)
            return -1;
        v = v << 4 | d;
    }
    return v;
}

/* How many bytes of the escape at p[i] (a backslash) are well-formed JSON
 * to copy as they are: 2 or 6, 12 for a surrogate pair; 0 when bad. *lone
 * is set for a well-formed \u escape of a surrogate that has no partner. */
static size_t escape_len(const unsigned char *p, size_t n, size_t i, bool *lone)
{
    *lone = false;
    if (i + 1 >= n)
        return 0;
    switch (p[i + 1]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't': return 2;
    case 'u': break;
    default: return 0;
    }
    long v = u_escape_at(p, n, i);
    if (v < 0)
        return 0;
    if (v >= 0xd800 && v <= 0xdbff) {
        long w = u_escape_at(p, n, i + 6);
        if (w >= 0xdc00 && w <= 0xdfff)
            return 12;
        *lone = true;
    } else if (v >= 0xdc00 && v <= 0xdfff) {
        *lone = true;
    }
    return 6;
}

/* Copies the contents of a JSON string, repairing what is not allowed and
 * making the rest HTML-safe. Returns true when nothing was repaired. */
static bool put_json_contents(wbuf *b, slice s)
{
    const unsigned char *p = (const unsigned char *)s.ptr;
    size_t run = 0, i = 0;
    bool repaired = false;
    while (i < s.len) {
        unsigned char c = p[i];
        if (c >= 0x80) {
            i += put_multibyte(b, p, s.len, i, &run, &repaired);
            continue;
        }
        if (c == '\\') {
            bool lone;
            size_t len = escape_len(p, s.len, i, &lone);
            if (len > 0 && !lone) {
                i += len;
                continue;
            }
            wbuf_put(b, p + run, i - run);
            if (lone) {
                put_u_escape(b, 0xfffd);
            } else {
                wbuf_put(b, "\\\\", 2); /* a stray backslash stands for itself */
                len = 1;
            }
            repaired = true;
            i += len;
            run = i;
            continue;
        }
        if (ascii_needs_escape(c)) {
            /* a raw quote or control character cannot be in a JSON string */
            if (c < 0x20 || c == '"')
                repaired = true;
            wbuf_put(b, p + run, i - run);
            put_ascii_escape(b, c);
            run = i + 1;
        }
        i++;
    }
    wbuf_put(b, p + run, s.len - run);
    return !repaired;
}

void chatstream_write_retry(wbuf *b) { wbuf_puts(b, "retry: 1000\n"); }

static const char message_head[] = "event: message\ndata: {\"content\":\"";
static const char message_tail[] = "\"}\n\n";

void chatstream_write_message(wbuf *b, slice content)
{
    wbuf_put(b, message_head, sizeof message_head - 1);
    put_text(b, content);
    wbuf_put(b, message_tail, sizeof message_tail - 1);
}

bool chatstream_write_message_json(wbuf *b, slice escaped)
{
    wbuf_put(b, message_head, sizeof message_head - 1);
    bool clean = put_json_contents(b, escaped);
    wbuf_put(b, message_tail, sizeof message_tail - 1);
    return clean;
}

void chatstream_write_done(wbuf *b) { wbuf_puts(b, "event: done\ndata: [DONE]\n\n"); }

/* json_write_error's shape, with this stream's HTML-safe escaping: a
 * message may quote upstream text. */
void chatstream_write_error(wbuf *b, const char *message, const char *type, const char *code)
{
    wbuf_puts(b, "event: error\ndata: {\"error\":{\"message\":\"");
    put_text(b, slice_of(message));
    wbuf_puts(b, "\",\"type\":\"");
    put_text(b, slice_of(type));
    wbuf_puts(b, "\",\"param\":null,\"code\":");
    if (code) {
        wbuf_put_char(b, '"');
        put_text(b, slice_of(code));
        wbuf_put_char(b, '"');
    } else {
        wbuf_puts(b, "null");
    }
    wbuf_puts(b, "}}\n\n");
}
