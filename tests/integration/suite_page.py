# The built-in chat page (§7): its files, headers, ETag revalidation and methods.
# The page's behaviour in a browser is tests/browser/. Exec'd into run.py's
# namespace (after suite_auth.py: auth_pair is in scope).

PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_ASSETS = [('/', 'text/html; charset=utf-8'), ('/app.js', 'text/javascript; charset=utf-8'),
               ('/style.css', 'text/css; charset=utf-8')]


def check_page_headers(r, path, ctype):
    check(r.header('content-type') == ctype, '%s: Content-Type %r' % (path, r.header('content-type')))
    check(r.header('content-security-policy') == PAGE_CSP, '%s: CSP %r' % (path, r.header('content-security-policy')))
    check(r.header('x-content-type-options') == 'nosniff', '%s: X-Content-Type-Options %r'
          % (path, r.header('x-content-type-options')))
    check(r.header('referrer-policy') == 'no-referrer', '%s: Referrer-Policy %r' % (path, r.header('referrer-policy')))
    check(r.header('cache-control') == 'no-cache', '%s: Cache-Control %r' % (path, r.header('cache-control')))
    etag = r.header('etag', '')
    check(re.fullmatch(r'"[0-9a-f]{16}"', etag), '%s: ETag %r is not a strong tag' % (path, etag))
    return etag


def page_exchange(port, raw, method='GET', count=1):
    c = HTTPConn(port)
    try:
        c.send(raw)
        return [c.read_response(method=method if i == 0 else 'GET') for i in range(count)]
    finally:
        c.close()


@test(ANY)
def page_files_and_headers(ctx):
    for path, ctype in PAGE_ASSETS:
        r = get(ctx.gw.port, path)
        check(r.status == 200, '%s: status %d' % (path, r.status))
        check_page_headers(r, path, ctype)
        check(len(r.body) > 100, '%s: %d bytes' % (path, len(r.body)))
    html = get(ctx.gw.port, '/').body.decode()
    check(html.lower().startswith('<!doctype html>'), 'the page does not start with a doctype')
    check('<script src="app.js"' in html and '<link rel="stylesheet" href="style.css">' in html,
          'the page does not load app.js and style.css')
    # what the CSP would block must not be there to block
    check(not re.search(r'<script(?![^>]*\bsrc=)', html), 'an inline <script> in the page')
    check(not re.search(r'<style|\sstyle=|\son[a-z]+=', html), 'inline style or an event handler attribute')
    check(not re.search(r'(src|href)="(https?:)?//', html), 'the page names another origin')
    r = get(ctx.gw.port, '/?q=1')
    check(r.status == 200 and r.body.decode() == html, '/?q=1: status %d' % r.status)


@test(ANY)
def page_etag_revalidation(ctx):
    port = ctx.gw.port
    for path, ctype in PAGE_ASSETS:
        full = get(port, path)
        etag = full.header('etag')
        for value in (etag, 'W/' + etag, '"0000000000000000", ' + etag, '*'):
            # pipelined: a 304 must carry no body, or the /ping answer after it is garbled
            rs = page_exchange(port, build_request('GET', path, [('Host', 'x'), ('If-None-Match', value)])
                               + build_request('GET', '/ping', [('Host', 'x')]), count=2)
            check(rs[0].status == 304, '%s If-None-Match %s: status %d' % (path, value, rs[0].status))
            check(rs[0].body == b'' and rs[0].header('etag') == etag, '%s: 304 body %r, ETag %r'
                  % (path, short(rs[0].body), rs[0].header('etag')))
            check(rs[1].status == 200 and rs[1].json() == {'message': 'pong'}, 'the answer after a 304: %d %s'
                  % (rs[1].status, short(rs[1].body)))
        for value in ('"0000000000000000"', etag.strip('"'), etag[:-2] + '"', ''):
            r = get(port, path, headers=[('If-None-Match', value)])
            check(r.status == 200 and r.body == full.body, '%s If-None-Match %r: status %d' % (path, value, r.status))
    etags = {get(port, p).header('etag') for p, _ in PAGE_ASSETS}
    check(len(etags) == len(PAGE_ASSETS), 'assets share an ETag: %s' % etags)


@test(ANY)
def page_head_and_methods(ctx):
    port = ctx.gw.port
    full = get(port, '/')
    rs = page_exchange(port, build_request('HEAD', '/', [('Host', 'x')]) + build_request('GET', '/ping', [('Host', 'x')]),
                       method='HEAD', count=2)
    check(rs[0].status == 200 and rs[0].header('content-length') == str(len(full.body)),
          'HEAD /: status %d, Content-Length %r' % (rs[0].status, rs[0].header('content-length')))
    check_page_headers(rs[0], 'HEAD /', 'text/html; charset=utf-8')
    check(rs[1].status == 200 and rs[1].json() == {'message': 'pong'}, 'a body came with the HEAD answer')
    for method in ('POST', 'DELETE'):
        r = page_exchange(port, build_request(method, '/', [('Host', 'x')]))[0]
        check(r.status == 405, '%s /: status %d' % (method, r.status))
        check_error_shape(r.body, '%s / body' % method)
    for path in ('/index.html', '/app.js/', '/APP.JS', '/web/app.js'):
        r = get(port, path)
        check(r.status == 404, '%s: status %d' % (path, r.status))


@test(ANY)
def page_open_while_v1_needs_a_key(ctx):
    mock, gw = auth_pair(ctx, 'page')
    for path, _ in PAGE_ASSETS:
        r = get(gw.port, path)
        check(r.status == 200, '%s without a key: status %d' % (path, r.status))
    r = get(gw.port, '/v1/models')
    check(r.status == 401, '/v1/models without a key: status %d' % r.status)
