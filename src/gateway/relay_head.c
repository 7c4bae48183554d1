#include "gateway/relay_head.h"

#include <string.h>

enum {
    /* The fixed lines a head gets besides the headers it copies: request
     * or status line, Host, the upstream key's line, framing, ids,
     * Connection (about 230 bytes at most). */
    HEAD_FIXED_ROOM = 320,
    LIMIT_HEADERS_ROOM = 512, /* the caller's x-ratelimit-* lines, about 380 */
};

static size_t len_or_0(const char *s) { return s ? strlen(s) : 0; }

/* A head copies some of `count` headers from one of `head_len` bytes: each
 * line "name:value\n" becomes at most two bytes longer ("name: value\r\n"). */
static size_t copied_room(size_t head_len, size_t count) { return head_len + 2 * count + HEAD_FIXED_ROOM; }

static void put_line(wbuf *b, const char *name, const char *value)
{
    wbuf_puts(b, name);
    wbuf_puts(b, ": ");
    wbuf_puts(b, value);
    wbuf_puts(b, "\r\n");
}

static void put_header(wbuf *b, const http_header *h)
{
    wbuf_put_slice(b, h->name);
    wbuf_puts(b, ": ");
    wbuf_put_slice(b, h->value);
    wbuf_puts(b, "\r\n");
}

/* ---- upstream ---- */

static bool forwardable(const http_request *h, slice name)
{
    http_field f = http_field_of(name);
    switch (f) {
    case HTTP_FIELD_OTHER: break;
    /* Replaced by the gateway's own, or credentials and choices that are
     * the server's to make (which organisation its key acts for). */
    case HTTP_FIELD_HOST:
    case HTTP_FIELD_AUTHORIZATION:
    case HTTP_FIELD_X_API_KEY:
    case HTTP_FIELD_API_KEY:
    case HTTP_FIELD_ACCEPT_ENCODING:
    case HTTP_FIELD_X_REQUEST_ID:
    case HTTP_FIELD_EXPECT:
    case HTTP_FIELD_OPENAI_ORGANIZATION:
    case HTTP_FIELD_OPENAI_PROJECT:
    case HTTP_FIELD_TRACEPARENT: return false;
    default:
        if (http_field_is_hop_by_hop(f))
            return false;
        break;
    }
    /* Headers the client named in Connection are hop-by-hop too. */
    if (!http_request_field(h, HTTP_FIELD_CONNECTION))
        return true;
    for (size_t i = 0; i < h->header_count; i++)
        if (slice_eq_nocase(h->headers[i].name, SLICE_LIT("connection")) &&
            http_list_has_token(h->headers[i].value, name))
            return false;
    return true;
}

size_t relay_request_head_room(const request_head_spec *s)
{
    const upstream_target *t = s->target;
    return copied_room(s->http->head_len, s->http->header_count) + strlen(t->base.path) +
           strlen(t->base.host_header) + len_or_0(t->auth_header) + len_or_0(s->org) + len_or_0(s->project) +
           s->traceparent.len + s->req_id.len;
}

bool relay_write_request_head(wbuf *b, const request_head_spec *s)
{
    const http_request *h = s->http;
    const upstream_target *t = s->target;
    slice target = h->target;
    if (slice_starts_with(target, SLICE_LIT("/v1")) && (target.len == 3 || target.ptr[3] == '/' || target.ptr[3] == '?')) {
        target.ptr += 3;
        target.len -= 3;
    }
    wbuf_put_slice(b, h->method_name);
    wbuf_put_char(b, ' ');
    wbuf_puts(b, t->base.path);
    if (target.len == 0 || target.ptr[0] == '?')
        wbuf_put_char(b, '/');
    wbuf_put_slice(b, target);
    wbuf_puts(b, " HTTP/1.1\r\n");
    put_line(b, "Host", t->base.host_header);
    if (t->auth_header)
        put_line(b, "Authorization", t->auth_header);
    for (size_t i = 0; i < h->header_count; i++)
        if (forwardable(h, h->headers[i].name))
            put_header(b, &h->headers[i]);
    if (s->org)
        put_line(b, "OpenAI-Organization", s->org);
    if (s->project)
        put_line(b, "OpenAI-Project", s->project);
    wbuf_puts(b, "Accept-Encoding: identity\r\ntraceparent: ");
    wbuf_put_slice(b, s->traceparent);
    wbuf_puts(b, "\r\nX-Request-Id: ");
    wbuf_put_slice(b, s->req_id);
    if (s->upload) {
        if (h->body_kind == HTTP_BODY_CHUNKED) {
            wbuf_puts(b, "\r\nTransfer-Encoding: chunked");
        } else {
            wbuf_puts(b, "\r\nContent-Length: ");
            wbuf_put_u64(b, h->content_length);
        }
    } else if (s->body_len || h->method == HTTP_POST || h->method == HTTP_PUT || h->method == HTTP_PATCH) {
        wbuf_puts(b, "\r\nContent-Length: ");
        wbuf_put_u64(b, s->body_len);
    }
    wbuf_puts(b, "\r\n\r\n");
    return !b->overflow;
}

/* ---- the client ---- */

static bool relayed_response_header(const answer_head_spec *s, slice name)
{
    http_field f = http_field_of(name);
    if (http_field_is_hop_by_hop(f) || f == HTTP_FIELD_X_REQUEST_ID)
        return false;
    /* the caller's own limits speak for themselves, not the server key's */
    if (s->limits && name.len > 12 && slice_eq_nocase((slice){name.ptr, 12}, SLICE_LIT("x-ratelimit-")))
        return false;
    if (s->stream && (f == HTTP_FIELD_CONTENT_TYPE || f == HTTP_FIELD_CACHE_CONTROL))
        return false;
    return true;
}

size_t relay_answer_head_room(const answer_head_spec *s)
{
    return copied_room(s->head->head_len, s->head->header_count) + s->req_id.len +
           (s->limits ? LIMIT_HEADERS_ROOM : 0);
}

bool relay_write_answer_head(wbuf *b, const answer_head_spec *s)
{
    wbuf_puts(b, "HTTP/1.1 ");
    wbuf_put_u64(b, (uint64_t)s->status);
    wbuf_put_char(b, ' ');
    wbuf_puts(b, http_reason(s->status));
    wbuf_puts(b, "\r\n");
    if (s->stream)
        wbuf_puts(b, "Content-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
                     "X-Accel-Buffering: no\r\n");
    for (size_t i = 0; i < s->head->header_count; i++) {
        const http_header *hd = &s->head->headers[i];
        if (!relayed_response_header(s, hd->name))
            continue;
        scrub((char *)hd->value.ptr, hd->value.len, s->secrets); /* the value lies in the relay's read buffer */
        put_header(b, hd);
    }
    wbuf_puts(b, "X-Request-Id: ");
    wbuf_put_slice(b, s->req_id);
    if (s->limits)
        limits_write_headers(b, s->limits);
    bool close_delimited = false;
    if (!s->stream && s->body_kind == HTTP_BODY_LENGTH) {
        wbuf_puts(b, "\r\nContent-Length: ");
        wbuf_put_u64(b, s->content_length);
    } else if (s->head_method || s->body_kind == HTTP_BODY_NONE) {
        wbuf_puts(b, "\r\nContent-Length: 0");
    } else if (s->client_chunked) {
        wbuf_puts(b, "\r\nTransfer-Encoding: chunked");
    } else {
        close_delimited = true;
    }
    if (!s->keep_alive || close_delimited)
        wbuf_puts(b, "\r\nConnection: close");
    else if (!s->client_chunked)
        wbuf_puts(b, "\r\nConnection: keep-alive");
    wbuf_puts(b, "\r\n\r\n");
    return !b->overflow;
}
