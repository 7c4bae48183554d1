/* The built-in chat page: the files of src/web/, embedded at build time by
 * tools/embed.c into build/gen/web_assets.c, found by path and answered
 * with a strict Content-Security-Policy and a strong ETag. */
#ifndef SSEGATE_PAGE_H
#define SSEGATE_PAGE_H

#include <stdbool.h>
#include <stddef.h>

#include "core/slice.h"
#include "core/wbuf.h"

typedef struct page_asset {
    const char *path;         /* "/" for index.html, else "/" and the file name */
    slice body;
    const char *content_type;
    const char *etag;         /* strong, quoted: "\"<16 hex digits>\"", a hash of the body */
} page_asset;

/* The table, defined by the generated build/gen/web_assets.c. */
extern const page_asset page_assets[];
extern const size_t page_asset_count;

/* Room page_put_headers needs, with margin. */
enum { PAGE_HEADERS_MAX = 640 };

/* The asset served at `path` (without the query), or NULL. */
const page_asset *page_find(slice path);

/* True when an If-None-Match value (a list of entity tags, or "*") names
 * the asset's ETag, compared weakly as RFC 9110 §13.1.2 asks: answer 304. */
bool page_not_modified(const page_asset *a, slice if_none_match);

/* Appends the answer's header lines, each "\r\nName: value": the page's
 * Content-Security-Policy (no inline script or style, nothing from another
 * origin), X-Content-Type-Options, Referrer-Policy, Cache-Control: no-cache
 * (always revalidate) and the ETag. */
void page_put_headers(wbuf *b, const page_asset *a);

#endif
