#include "http/page.h"

const page_asset *page_find(slice path)
{
    for (size_t i = 0; i < page_asset_count; i++)
        if (slice_eq(path, slice_of(page_assets[i].path)))
            return &page_assets[i];
    return NULL;
}

static bool is_ows(char c) { return c == ' ' || c == '\t'; }

bool page_not_modified(const page_asset *a, slice inm)
{
    slice want = slice_of(a->etag);
    size_t i = 0;
    while (i < inm.len) {
        while (i < inm.len && (is_ows(inm.ptr[i]) || inm.ptr[i] == ','))
            i++;
        if (i == inm.len)
            break;
        if (inm.ptr[i] == '*')
            return true;
        if (inm.len - i >= 2 && inm.ptr[i] == 'W' && inm.ptr[i + 1] == '/')
            i += 2; /* weak comparison: W/"x" names "x" too */
        if (i == inm.len || inm.ptr[i] != '"')
            return false; /* not an entity tag: no match, answer in full */
        size_t start = i++;
        while (i < inm.len && inm.ptr[i] != '"')
            i++;
        if (i == inm.len)
            return false;
        i++;
        if (slice_eq((slice){inm.ptr + start, i - start}, want))
            return true;
    }
    return false;
}

void page_put_headers(wbuf *b, const page_asset *a)
{
    /* img-src data: is for the inline favicon that spares a /favicon.ico 404 */
    wbuf_puts(b, "\r\nContent-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
                 "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                 "frame-ancestors 'none'"
                 "\r\nX-Content-Type-Options: nosniff"
                 "\r\nReferrer-Policy: no-referrer"
                 "\r\nCache-Control: no-cache"
                 "\r\nETag: ");
    wbuf_puts(b, a->etag);
}
