# HTTP/1.1 strictness (RFC 9112) at the client side: chunk-line grammar, the
# Host value, early rejection of bytes that cannot start a request, and heads
# mixing CRLF with bare LF. Exec'd into run.py's namespace: it uses its
# helpers (HTTPConn, build_request, check_error_shape, CHAT, PING, ...) and
# run_test checks afterwards that the gateway still answers /ping.

EARLY_BOUND_S = 0.5   # an early 400 must come well before --header-timeout (1 s)

STRICT_BODY = chat_body(False)


def chunked_request(body_bytes):
    return CHAT + b'Transfer-Encoding: chunked\r\n\r\n' + body_bytes


def strict_chunk(payload, line_tail=b''):
    return b'%x%s\r\n%s\r\n' % (len(payload), line_tail, payload)


def expect_400_close(ctx, data, what, message=None):
    """Sends data; the answer must be a 400 in the error shape, then a close,
    and nothing may reach the upstream."""
    before = ctx.mock.stats()['requests']
    c = HTTPConn(ctx.gw.port)
    try:
        c.try_send(data)
        r = c.read_response(3)
        check(r.status == 400, '%s: status %d body %s' % (what, r.status, short(r.body)))
        e = check_error_shape(r.body, '%s: 400 body' % what)
        if message is not None:
            check(message in e['message'], '%s: error message %r, want %r in it' % (what, e['message'], message))
        check(c.wait_closed(2), '%s: connection not closed after the 400' % what)
    finally:
        c.close()
    check(ctx.mock.stats()['requests'] == before, '%s: the request reached the upstream' % what)


# --- chunk lines of a client's request body --------------------------------------

_HALF = len(STRICT_BODY) // 2
_A, _B = STRICT_BODY[:_HALF], STRICT_BODY[_HALF:]
STRICT_CHUNKED_BAD = {
    'size_bare_lf': b'%x\n%s\r\n' % (len(_A), _A) + strict_chunk(_B) + b'0\r\n\r\n',
    'data_bare_lf': b'%x\r\n%s\n' % (len(_A), _A) + strict_chunk(_B) + b'0\r\n\r\n',
    'ext_bare_lf': b'%x;a=b\n%s\r\n' % (len(_A), _A) + strict_chunk(_B) + b'0\r\n\r\n',
    'last_chunk_bare_lf': strict_chunk(_A) + strict_chunk(_B) + b'0\n\r\n',
    'final_bare_lf': strict_chunk(_A) + strict_chunk(_B) + b'0\r\n\n',
    'trailer_bare_lf': strict_chunk(_A) + strict_chunk(_B) + b'0\r\nX-T: v\n\r\n',
    'all_bare_lf': b'%x\n%s\n%x\n%s\n0\n\n' % (len(_A), _A, len(_B), _B),
    'space_after_size': strict_chunk(_A, b' ') + strict_chunk(_B) + b'0\r\n\r\n',
    'tab_after_size': strict_chunk(_A, b'\t') + strict_chunk(_B) + b'0\r\n\r\n',
    'space_after_ext': strict_chunk(_A, b';a=b ') + strict_chunk(_B) + b'0\r\n\r\n',
    'empty_ext': strict_chunk(_A, b';') + strict_chunk(_B) + b'0\r\n\r\n',
    'double_semicolon': strict_chunk(_A, b';;a') + strict_chunk(_B) + b'0\r\n\r\n',
    'ext_without_value': strict_chunk(_A, b';a=') + strict_chunk(_B) + b'0\r\n\r\n',
    'ext_bad_name': strict_chunk(_A, b';a(b)') + strict_chunk(_B) + b'0\r\n\r\n',
    'unbalanced_quote': strict_chunk(_A, b';a="b') + strict_chunk(_B) + b'0\r\n\r\n',
    'text_after_quote': strict_chunk(_A, b';a="b"c') + strict_chunk(_B) + b'0\r\n\r\n',
    'last_chunk_empty_ext': strict_chunk(_A) + strict_chunk(_B) + b'0;\r\n\r\n',
    'trailer_no_colon': strict_chunk(_A) + strict_chunk(_B) + b'0\r\nX-T\r\n\r\n',
}


@test(ANY, params=list(STRICT_CHUNKED_BAD))
def strict_chunked_line_400_close(ctx, case):
    expect_400_close(ctx, chunked_request(STRICT_CHUNKED_BAD[case]), case)


@test(ANY, params=['in_one_write', 'byte_by_byte'])
def strict_chunked_valid_grammar_relayed(ctx, how):
    """Every allowed form of extension and trailer, arriving at once or a byte
    at a time: the body reaches the upstream intact."""
    third = len(STRICT_BODY) // 3
    p1, p2, p3 = STRICT_BODY[:third], STRICT_BODY[third:2 * third], STRICT_BODY[2 * third:]
    body = (strict_chunk(p1, b' ;a = b\t; c') + strict_chunk(p2, b';q="x \\" y";t=!#$%&\'*+-.^_`|~')
            + strict_chunk(p3) + b'0 ; last\r\nX-Trailer: v\r\nX-Empty:\r\n\r\n')
    c = HTTPConn(ctx.gw.port)
    try:
        head = build_request('POST', '/v1/chat/completions',
                             chat_headers(ctx.gw.port, n=2) + [('Transfer-Encoding', 'chunked')])
        if how == 'in_one_write':
            c.send(head + body)
        else:
            c.send(head)
            for i in range(len(body)):
                c.send(body[i:i + 1])
        r = c.read_response(5)
    finally:
        c.close()
    check(r.status == 200, 'status %d body %s' % (r.status, short(r.body)))
    up = json.loads(ctx.mock.last()['body'])
    up.pop('stream_options', None)
    check(up == json.loads(STRICT_BODY), 'upstream body %s' % short(json.dumps(up)))


# --- the Host value ---------------------------------------------------------------

STRICT_BAD_HOSTS = ['exa mple.com', 'a/b', 'user@host', 'host:port', 'host:123456', '::1', '[::1',
                    'host:80:80', 'host:65536', ':80', '[::1]x', 'a?b', 'a#b']


@test(ANY, params=STRICT_BAD_HOSTS)
def strict_bad_host_400(ctx, host):
    data = b'GET /ping HTTP/1.1\r\nHost: ' + host.encode() + b'\r\n\r\n'
    expect_400_close(ctx, data, 'Host %r' % host, 'invalid Host header')


@test(ANY)
def strict_good_hosts_ok(ctx):
    for host in ['example.com', 'example.com:8080', '127.0.0.1:80', '[::1]:8080', 'a-b.c_d~e%41',
                 '[::ffff:192.0.2.1]', 'x:', '']:
        c = HTTPConn(ctx.gw.port)
        try:
            c.send(b'GET /ping HTTP/1.1\r\nHost: ' + host.encode() + b'\r\n\r\n')
            r = c.read_response(3)
        finally:
            c.close()
        check(r.status == 200, 'Host %r: status %d body %s' % (host, r.status, short(r.body)))


# --- bytes that cannot begin a request: answered at once ------------------------------

def client_hello():
    """The first flight of a real TLS client, made without a network."""
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = tls.wrap_bio(incoming, outgoing, server_hostname='localhost')
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    check(hello[:1] == b'\x16' and len(hello) > 50, 'test bug: not a ClientHello: %s' % short(hello[:16]))
    return hello


STRICT_EARLY = {
    'tls_first_byte': (lambda: client_hello()[:1], 'TLS'),
    'tls_record_header': (lambda: client_hello()[:5], 'TLS'),
    'tls_client_hello': (client_hello, 'TLS'),
    'binary_garbage': (lambda: b'\x80\x01\x02\x03', 'malformed request line'),
    'method_too_long': (lambda: b'M' * 40, 'method too long'),
    'control_in_target': (lambda: b'GET /ping\x01', 'invalid character in request target'),
    'bad_version': (lambda: b'GET /ping HTTQ', 'malformed HTTP version'),
}


@test(ANY, params=list(STRICT_EARLY))
def strict_early_reject_400_close(ctx, case):
    """A head that cannot become a request gets its 400 as soon as the bytes
    show it, not at --header-timeout: nothing more is sent, and the answer
    and the close come within EARLY_BOUND_S."""
    make, message = STRICT_EARLY[case]
    data = make()
    c = HTTPConn(ctx.gw.port)
    try:
        t0 = time.monotonic()
        c.send(data)
        r = c.read_response(3)
        check(c.wait_closed(2), 'connection not closed after the 400')
        took = time.monotonic() - t0
        check(r.status == 400, 'status %d body %s' % (r.status, short(r.body)))
        e = check_error_shape(r.body, '400 body')
        check(message in e['message'], 'error message %r, want %r in it' % (e['message'], message))
        check(took < EARLY_BOUND_S, '400 and close after %.3f s (header timeout %.1f s)' % (took, HEADER_TIMEOUT_S))
        if case == 'tls_client_hello':
            figure('ClientHello on the plain port: 400 and close in %.1f ms' % (took * 1000))
    finally:
        c.close()


# --- line endings of a head -------------------------------------------------------------

STRICT_MIXED = {
    'crlf_then_lf_header': b'GET /ping HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n',
    'lf_line_then_crlf': b'GET /ping HTTP/1.1\nHost: x\r\n\r\n',
    'crlf_head_lf_end': b'GET /ping HTTP/1.1\r\nHost: x\r\n\n',
    'lf_head_crlf_end': b'GET /ping HTTP/1.1\nHost: x\n\r\n',
    'chunked_post': CHAT.replace(b'Host: x\r\n', b'Host: x\n') + b'Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
}


@test(ANY, params=list(STRICT_MIXED))
def strict_mixed_line_endings_400(ctx, case):
    expect_400_close(ctx, STRICT_MIXED[case], case, 'mixed line endings')


@test(ANY)
def strict_bare_lf_head_ok(ctx):
    """A head all in bare LF is still accepted (README), with empty lines before it."""
    c = HTTPConn(ctx.gw.port)
    try:
        c.send(b'\r\n\nGET /ping HTTP/1.1\nHost: x\n\n')
        r = c.read_response(3)
        check(r.status == 200, 'status %d body %s' % (r.status, short(r.body)))
        c.send(b'GET /ping HTTP/1.1\nHost: x\nConnection: close\n\n')
        r = c.read_response(3)
        check(r.status == 200, 'second request: status %d' % r.status)
    finally:
        c.close()
