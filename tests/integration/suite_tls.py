# Upstream TLS resilience: hosts given as IP addresses (iPAddress SANs, no SNI),
# a TLS 1.3-only upstream told apart, and the cold start under load (one full
# handshake, the rest resume). Exec'd into run.py's namespace: its helpers and
# @test are in scope.

TLS_SUITE_LOCK = threading.Lock()
TLS13_SENTENCE = 'upstream requires TLS 1.3; this build speaks TLS 1.2'

LEAF_CNF = """
[ leaf ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = {san}
"""

# kind -> subjectAltName; files <kind>-chain.pem and <kind>-key.pem beside
# make_certs' own, so that Env.mock(..., cert=kind) can serve them
ADDRESS_LEAVES = {
    'ip4': 'IP:127.0.0.1',
    'ip6': 'IP:::1',
    'ip4other': 'IP:127.0.0.2, DNS:localhost',
}


def address_certs(env):
    """Leaves for addresses under the suite's CA (made once)."""
    d = env.certs
    with TLS_SUITE_LOCK:
        for kind, san in ADDRESS_LEAVES.items():
            if os.path.exists(os.path.join(d, kind + '-chain.pem')):
                continue
            with open(os.path.join(d, kind + '.cnf'), 'w') as f:
                f.write(LEAF_CNF.format(san=san))
            openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', kind + '-key.pem'], d)
            openssl(['req', '-new', '-key', kind + '-key.pem', '-subj', '/CN=test leaf ' + kind,
                     '-out', kind + '.csr'], d)
            openssl(['x509', '-req', '-in', kind + '.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key',
                     '-CAserial', 'suite-tls.srl', '-CAcreateserial', '-days', '30', '-sha256',
                     '-extfile', kind + '.cnf', '-extensions', 'leaf', '-out', kind + '.pem'], d)
            with open(os.path.join(d, kind + '-chain.pem'), 'w') as out:
                for part in (kind + '.pem', 'ca.pem'):
                    with open(os.path.join(d, part)) as f:
                        out.write(f.read())


def mock_last_by_address(host, port, ca):
    """/_mock/last over a TLS connection checked against the address, as Python
    checks an address host (iPAddress SAN, no SNI) like the gateway does."""
    s = socket.create_connection((host, port), timeout=bounded(5 * SCALE))
    s = ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname=host)
    c = HTTPConn(sock=s)
    authority = ('[%s]:%d' if ':' in host else '%s:%d') % (host, port)
    try:
        c.send(build_request('GET', '/_mock/last', [('Host', authority)]))
        r = c.read_response()
    finally:
        c.close()
    check(r.status == 200, 'mock /_mock/last answered %d' % r.status)
    return json.loads(r.body)


class V6Mock:
    """tools/mock-upstream on [::1] (Mock listens on 127.0.0.1 only)."""

    def __init__(self, binary, name, chain, key):
        self.name = name
        self.proc = Proc(name, [binary, '--listen', '[::1]:0', '--tls-cert', chain, '--tls-key', key,
                                '--expect-key', UPSTREAM_KEY], env=clean_env())
        got = self.proc.wait_line('out', lambda l: l.startswith('LISTEN '), 10 * SCALE)
        m = re.match(r'LISTEN \[::1\]:(\d+)\s*$', got[1]) if got else None
        if not m:
            raise RuntimeError('%s did not print LISTEN [::1]:PORT: %s' % (name, self.proc.tail()))
        self.port = int(m.group(1))


def address_gateway(ctx, tag, mock, host):
    """A gateway whose upstream is https://HOST:PORT/v1 with HOST an address."""
    def make():
        return Gateway(ctx.env.args.gateway, 'gw-tls-addr-' + tag,
                       'https://%s:%d/v1' % (host, mock.port), ctx.env.ca, GW_ARGS)
    return ctx.use(ctx.env._get(('gw', 'tls', 'addr-' + tag), make))


def check_stream_through(gw, what):
    head, st, c, _ = stream_chat(gw.port, n=5)
    c.close()
    check(st is not None, '%s: status %d body %s' % (what, head.status, short(head.body)))
    check_complete_stream(head, st, 5, what)
    r = post_chat(gw.port, stream=False, body=chat_body(False))
    check(r.status == 200, '%s non-stream: status %d body %s' % (what, r.status, short(r.body)))


@test(('tls',))
def tls_upstream_by_ipv4_address(ctx):
    """https://127.0.0.1:PORT: the iPAddress SAN is checked and no SNI is sent."""
    address_certs(ctx.env)
    mock = ctx.env.mock('tls', 'addr4', 'ip4')
    gw = address_gateway(ctx, 'ip4', mock, '127.0.0.1')
    check_stream_through(gw, '127.0.0.1')
    last = mock_last_by_address('127.0.0.1', mock.port, ctx.env.ca)
    check(last.get('tls_server_name') == '',
          'the gateway sent SNI %r for an address (RFC 6066 forbids it)' % last.get('tls_server_name'))
    # the same mock by name still gets SNI
    gw_name = ctx.use(ctx.env._get(('gw', 'tls', 'addr-ip4-byname'), lambda: Gateway(
        ctx.env.args.gateway, 'gw-tls-addr-ip4-byname', 'https://localhost:%d/v1' % mock.port,
        ctx.env.ca, GW_ARGS)))
    r = post_chat(gw_name.port, stream=False, body=chat_body(False))
    # ip4's leaf carries no DNS name: a name is not an address
    check(r.status == 502, 'by name against an address-only leaf: status %d' % r.status)
    check('certificate is not for host localhost' in check_error_shape(r.body, '502 body')['message'],
          'by name: %s' % short(r.body))


@test(('tls',))
def tls_upstream_by_ipv6_address(ctx):
    """https://[::1]:PORT: the 16-byte iPAddress SAN is checked and no SNI is sent."""
    address_certs(ctx.env)
    chain, key = ctx.env.cert('ip6')
    mock = ctx.env._get(('mock-v6', 'ip6'), lambda: V6Mock(ctx.env.args.mock, 'mock-tls-v6', chain, key))
    gw = address_gateway(ctx, 'ip6', mock, '[::1]')
    check_stream_through(gw, '[::1]')
    last = mock_last_by_address('::1', mock.port, ctx.env.ca)
    check(last.get('tls_server_name') == '', 'the gateway sent SNI %r for ::1' % last.get('tls_server_name'))


@test(('tls',), params=['dns-only', 'other-address'])
def tls_upstream_wrong_address_502(ctx, kind):
    """A leaf without the address (DNS:localhost only, or IP:127.0.0.2) is refused
    with a message naming the address, at once, for every concurrent request."""
    address_certs(ctx.env)
    mock = ctx.env.mock('tls', 'addr-bad', 'good' if kind == 'dns-only' else 'ip4other')
    gw = address_gateway(ctx, 'bad-' + kind, mock, '127.0.0.1')
    want = 'upstream TLS failed: certificate is not for address 127.0.0.1'
    results = [None] * 8

    def one(i):
        try:
            results[i] = post_chat(gw.port, stream=i % 2 == 0, body=chat_body(i % 2 == 0), timeout=5)
        except Exception as e:   # reported below
            results[i] = e

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(bounded(10 * SCALE))
    took = time.monotonic() - t0
    for i, r in enumerate(results):
        check(isinstance(r, Response), 'request %d: %r' % (i, r))
        check(r.status == 502, 'request %d: status %d body %s' % (i, r.status, short(r.body)))
        msg = check_error_shape(r.body, '502 body')['message']
        check(msg == want, 'request %d: message %r, want %r' % (i, msg, want))
    check(took < 3 * SCALE, '8 concurrent refusals took %.2f s' % took)
    figure('tls wrong address (%s): 8 concurrent requests refused in %.0f ms: %r' % (kind, took * 1000, want))


def start_tls13_server(ctx):
    """openssl s_server speaking TLS 1.3 only, on an ephemeral port of 127.0.0.1."""
    chain, key = ctx.env.cert('good')
    p = Proc('openssl-tls13-only', ['openssl', 's_server', '-tls1_3', '-accept', '127.0.0.1:0',
                                    '-cert', chain, '-key', key, '-www'])
    got = p.wait_line('out', lambda l: l.startswith('ACCEPT'), 10 * SCALE)
    m = re.search(r':(\d+)\s*$', got[1]) if got else None
    if not m:
        p.stop()
        fail('openssl s_server did not print its port: %s' % p.tail())
    return p, int(m.group(1))


@test(('tls',))
def tls13_only_upstream_502(ctx):
    """An upstream that speaks only TLS 1.3 is a 502 that says so."""
    server, port = start_tls13_server(ctx)
    gw = None
    try:
        # not ctx.use(): this test stops it, after its own /ping check
        gw = Gateway(ctx.env.args.gateway, 'gw-tls13-only', 'https://localhost:%d/v1' % port,
                     ctx.env.ca, GW_ARGS)
        for stream in (True, False):
            r = post_chat(gw.port, stream=stream, body=chat_body(stream), timeout=5)
            check(r.status == 502, 'stream=%s: status %d body %s' % (stream, r.status, short(r.body)))
            msg = check_error_shape(r.body, '502 body')['message']
            check(msg == 'upstream TLS failed: ' + TLS13_SENTENCE, 'stream=%s: message %r' % (stream, msg))
        figure('tls 1.3-only upstream: 502 %r' % msg)
        check(ping_ok(gw), 'gateway does not answer /ping after the TLS 1.3 refusal')
    finally:
        server.stop()
        if gw is not None:
            gw.proc.stop()


COLD_START_STREAMS = 64


@test(('tls',), timeout=40)
def tls_cold_start_one_full_handshake(ctx):
    """64 concurrent first requests to a fresh TLS upstream: one full handshake,
    63 resumptions of its session."""
    n = COLD_START_STREAMS
    mock = ctx.env.mock('tls', 'coldstart')
    gw = ctx.use(ctx.env._get(('gw', 'tls', 'coldstart'), lambda: Gateway(
        ctx.env.args.gateway, 'gw-tls-coldstart', 'https://localhost:%d/v1' % mock.port, ctx.env.ca, GW_ARGS)))
    before = mock.stats()
    check(before['total'] == 0, 'the mock was used before: %s' % before)
    # every client connected first, then the requests back to back, so that all of
    # them reach the gateway before the first upstream handshake can finish
    raw = build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=3, delay=200), chat_body(True))
    conns = [HTTPConn(gw.port) for _ in range(n)]
    try:
        t0 = time.monotonic()
        for c in conns:
            c.send(raw)
        heads = []
        for i, c in enumerate(conns):
            heads.append(c.read_head(10 * SCALE))
            check(heads[-1].status == 200, 'stream %d answered %d' % (i, heads[-1].status))
        took = time.monotonic() - t0
        for i, c in enumerate(conns):
            st = read_stream(c, heads[i], 10 * SCALE)
            check_complete_stream(heads[i], st, 3, 'stream %d: ' % i)
    finally:
        for c in conns:
            c.close()
    after = mock.stats()
    total = after['total'] - before['total']
    resumed = after['resumed'] - before['resumed']
    figure('tls cold start: %d concurrent first requests -> %d upstream connections, %d full handshakes, '
           '%d resumed; every response head in %.0f ms' % (n, total, total - resumed, resumed, took * 1000))
    check(total == n, '%d upstream connections for %d concurrent streams' % (total, n))
    check(total - resumed == 1, '%d full handshakes, want 1 (%d resumed)' % (total - resumed, resumed))
    check(resumed == n - 1, '%d resumed, want %d' % (resumed, n - 1))


@test(('tls',), timeout=20)
def tls_cold_start_wait_bounded(ctx):
    """Requests that wait for a first handshake that never ends are bounded: when
    the first gives up, the waiting ones go on with handshakes of their own, each
    under its own connect budget, and every one ends in a 504."""
    hole = socket.socket()
    hole.bind(('127.0.0.1', 0))
    hole.listen(64)   # the kernel completes the TCP handshakes; nobody ever answers
    budget = 1.0
    gw = None
    try:
        # not ctx.use(): this test stops it, after its own /ping check
        gw = Gateway(ctx.env.args.gateway, 'gw-tls-silent', 'https://localhost:%d/v1' % hole.getsockname()[1],
                     ctx.env.ca, gw_args('main') + ['--connect-timeout', '%gs' % budget])
        conns = [HTTPConn(gw.port) for _ in range(4)]
        raw = build_request('POST', '/v1/chat/completions', chat_headers(gw.port), chat_body(True))
        ends = [None] * len(conns)
        results = [None] * len(conns)

        def read(i):
            try:
                results[i] = conns[i].read_response(timeout=bounded(6 * SCALE))
            except Exception as e:   # reported below
                results[i] = e
            ends[i] = time.monotonic() - t0

        t0 = time.monotonic()
        conns[0].send(raw)          # the first: its handshake starts and stalls
        time.sleep(0.3 * SCALE)
        for c in conns[1:]:         # these wait for it
            c.send(raw)
        threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(conns))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(bounded(8 * SCALE))
        for c in conns:
            c.close()
        for i, r in enumerate(results):
            check(isinstance(r, Response), 'request %d: %r' % (i, r))
            check(r.status == 504, 'request %d: status %d body %s' % (i, r.status, short(r.body)))
            msg = check_error_shape(r.body, '504 body')['message']
            check('timed out' in msg, 'request %d: message %r' % (i, msg))
        check(ends[0] < 1.5 * budget * SCALE, 'the first ended after %.2f s (budget %g s)' % (ends[0], budget))
        for i in range(1, len(conns)):
            # waited for the first (not their own 1 s from 0.3 s on), then had a budget of their own
            check(ends[i] >= ends[0] + 0.5 * budget, 'request %d ended at %.2f s, before the first\'s '
                  'handshake was given up (%.2f s) plus a budget' % (i, ends[i], ends[0]))
            check(ends[i] < (2 * budget + 0.3) * SCALE + 0.5, 'request %d ended at %.2f s' % (i, ends[i]))
        figure('tls cold start, silent upstream (connect timeout %g s): first 504 at %.2f s, the 3 that '
               'waited for it at %s s' % (budget, ends[0], '/'.join('%.2f' % e for e in ends[1:])))
        check(ping_ok(gw), 'gateway does not answer /ping after the timeouts')
    finally:
        hole.close()
        if gw is not None:
            gw.proc.stop()
