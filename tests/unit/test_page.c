#include "unit.h"

#include "http/page.h"

TEST(page_find_serves_the_embedded_files)
{
    const page_asset *index = page_find(SLICE_LIT("/"));
    CHECK(index != NULL);
    if (index) {
        CHECK_STR(index->content_type, "text/html; charset=utf-8");
        CHECK(index->body.len > 15 && memcmp(index->body.ptr, "<!doctype html>", 15) == 0);
    }
    const page_asset *js = page_find(SLICE_LIT("/app.js"));
    CHECK(js && strcmp(js->content_type, "text/javascript; charset=utf-8") == 0);
    const page_asset *css = page_find(SLICE_LIT("/style.css"));
    CHECK(css && strcmp(css->content_type, "text/css; charset=utf-8") == 0);
    CHECK(page_find(SLICE_LIT("/index.html")) == NULL);
    CHECK(page_find(SLICE_LIT("")) == NULL);
    CHECK(page_find(SLICE_LIT("/app.js/")) == NULL);
    CHECK(page_find(SLICE_LIT("/app.j")) == NULL);
    CHECK(page_find(SLICE_LIT("/v1/models")) == NULL);
}

TEST(page_etags_are_strong_and_distinct)
{
    CHECK(page_asset_count >= 3);
    for (size_t i = 0; i < page_asset_count; i++) {
        const char *e = page_assets[i].etag;
        CHECK_EQ_SIZE(strlen(e), 18);
        CHECK(e[0] == '"' && e[17] == '"');
        for (size_t k = 1; k < 17; k++)
            CHECK((e[k] >= '0' && e[k] <= '9') || (e[k] >= 'a' && e[k] <= 'f'));
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(e, page_assets[j].etag) != 0);
    }
}

TEST(page_if_none_match_lists)
{
    static const page_asset a = {"/x", {"x", 1}, "text/plain; charset=utf-8", "\"0123456789abcdef\""};
    CHECK(page_not_modified(&a, SLICE_LIT("\"0123456789abcdef\"")));
    CHECK(page_not_modified(&a, SLICE_LIT("W/\"0123456789abcdef\"")));
    CHECK(page_not_modified(&a, SLICE_LIT("\"aaaa\", W/\"bbbb\" ,\t\"0123456789abcdef\"")));
    CHECK(page_not_modified(&a, SLICE_LIT("*")));
    CHECK(page_not_modified(&a, SLICE_LIT(" , \"0123456789abcdef\"")));
    CHECK(!page_not_modified(&a, SLICE_LIT("")));
    CHECK(!page_not_modified(&a, SLICE_LIT("\"0123456789abcde\"")));
    CHECK(!page_not_modified(&a, SLICE_LIT("0123456789abcdef")));
    CHECK(!page_not_modified(&a, SLICE_LIT("\"0123456789abcdef")));   /* unterminated */
    CHECK(!page_not_modified(&a, SLICE_LIT("w/\"0123456789abcdef\""))); /* W is case-sensitive */
    CHECK(!page_not_modified(&a, SLICE_LIT("\"aaaa\" junk \"0123456789abcdef\"")));
    CHECK(!page_not_modified(&a, SLICE_LIT("W/")));
}

TEST(page_headers_fit_and_say_what_they_must)
{
    const page_asset *index = page_find(SLICE_LIT("/"));
    CHECK(index != NULL);
    if (!index)
        return;
    char mem[PAGE_HEADERS_MAX];
    wbuf b = wbuf_over(mem, sizeof mem);
    page_put_headers(&b, index);
    CHECK(!b.overflow);
    char text[PAGE_HEADERS_MAX + 1];
    memcpy(text, mem, b.len);
    text[b.len] = '\0';
    CHECK(strstr(text, "\r\nContent-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
                       "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                       "frame-ancestors 'none'\r\n") != NULL);
    CHECK(strstr(text, "\r\nX-Content-Type-Options: nosniff\r\n") != NULL);
    CHECK(strstr(text, "\r\nReferrer-Policy: no-referrer\r\n") != NULL);
    CHECK(strstr(text, "\r\nCache-Control: no-cache\r\n") != NULL);
    const char *etag = strstr(text, "\r\nETag: ");
    CHECK(etag && strcmp(etag + 8, index->etag) == 0);
    CHECK(text[0] == '\r' && text[b.len - 1] != '\n'); /* lines begin with CRLF, as send_simple expects */
}
