# DNS in the reactor: the gateway resolves its upstream's host name through
# a test DNS server (tests/integration/dnsserver.py, UDP and TCP on 127.0.0.1)
# named by its own resolv.conf, with an empty or a given hosts file.
# Exec'd into run.py's namespace: its helpers and @test are in scope.

import atexit
import shutil

sys.path.insert(0, _HERE)
import dnsserver  # noqa: E402

DNS_DIR = tempfile.mkdtemp(prefix='ssegate-dns-')
atexit.register(shutil.rmtree, DNS_DIR, True)
_DNS = {}
_DNS_LOCK = threading.Lock()


def dns_server():
    with _DNS_LOCK:
        if 'srv' not in _DNS:
            _DNS['srv'] = dnsserver.DNSServer()
            atexit.register(_DNS['srv'].close)
        return _DNS['srv']


def dns_files(tag, hosts=''):
    """A resolv.conf naming the test server (1 s per try, one try) and a hosts file."""
    conf = os.path.join(DNS_DIR, tag + '.resolv.conf')
    with open(conf, 'w') as f:
        f.write('# the suite\'s test server\nnameserver 127.0.0.1:%d\noptions timeout:1 attempts:1\n'
                % dns_server().port)
    hosts_path = os.path.join(DNS_DIR, tag + '.hosts')
    with open(hosts_path, 'w') as f:
        f.write(hosts)
    return conf, hosts_path


def dns_gateway(ctx, tag, name, port, hosts='', extra=()):
    conf, hosts_path = dns_files(tag, hosts)
    gw = ctx.env._get(('gw-dns', tag), lambda: Gateway(
        ctx.env.args.gateway, 'gw-dns-' + tag, 'http://%s:%d/v1' % (name, port), None,
        GW_ARGS + ['--resolv-conf', conf, '--hosts-file', hosts_path] + list(extra)))
    return ctx.use(gw)


def dns_mock(ctx, tag, chunks=8):
    return ctx.env._get(('mock-dns', tag), lambda: Mock(ctx.env.args.mock, 'mock-dns-' + tag,
                                                        extra=['--chunks', str(chunks)]))


def reply_content(r):
    check(r.status == 200, 'status %d: %s' % (r.status, short(r.body)))
    return r.json()['choices'][0]['message']['content']


def check_dns_502(r, name, label):
    check(r.status == 502, 'status %d, want 502: %s' % (r.status, short(r.body)))
    e = check_error_shape(r.body, 'DNS failure')
    want = 'upstream DNS failed: %s: %s' % (name, label)
    check(e['message'] == want, 'message %r, want %r' % (e['message'], want))
    check(e['code'] == 'upstream_dns_error', 'code %r' % e['code'])
    check(e['type'] == 'upstream_error', 'type %r' % e['type'])


def dns_error_count(gw):
    page = get(gw.port, '/metrics').body.decode()
    m = re.search(r'^ssegate_upstream_errors_total\{[^}]*kind="dns"[^}]*\}\s+(\S+)$', page, re.M)
    return float(m.group(1)) if m else 0.0


@test(ANY)
def dns_upstream_by_name(ctx):
    srv = dns_server()
    mock = dns_mock(ctx, 'byname')
    srv.set('mock.test', a=['127.0.0.1'], ttl=30)
    gw = dns_gateway(ctx, 'byname', 'mock.test', mock.port)
    for i in range(3):
        check(reply_content(post_chat(gw.port, n=2)) == expected_content(2), 'request %d content' % i)
    check(srv.queries('mock.test', qtype=1) >= 1, 'no A query for mock.test reached the test server')
    check(srv.queries('mock.test', qtype=28) >= 1, 'no AAAA query for mock.test reached the test server')
    # the answer is cached: three requests, one lookup (the start-up one) per type
    check(srv.queries('mock.test', qtype=1) == 1, 'mock.test asked %d times' % srv.queries('mock.test', qtype=1))


@test(ANY)
def dns_cname_chain(ctx):
    srv = dns_server()
    mock = dns_mock(ctx, 'cname')
    srv.set('cname-target.test', a=['127.0.0.1'], ttl=30)
    srv.set('hop.test', cname='cname-target.test', ttl=30)
    srv.set('alias.test', cname='hop.test', ttl=30)
    gw = dns_gateway(ctx, 'cname', 'alias.test', mock.port)
    check(reply_content(post_chat(gw.port, n=2)) == expected_content(2), 'content through two aliases')


@test(ANY, timeout=30)
def dns_ttl_moves_traffic(ctx):
    """The name's A record changes (TTL 1 s) to a second mock on 127.0.0.2, same port:
    requests move to it once the TTL ran out, and none fails on the way."""
    srv = dns_server()
    first = dns_mock(ctx, 'moving', chunks=8)
    second = Proc('mock-dns-moving-second', [ctx.env.args.mock, '--listen', '127.0.0.2:%d' % first.port,
                                             '--expect-key', UPSTREAM_KEY, '--chunks', '3'], env=clean_env())
    got = second.wait_line('out', lambda l: l.startswith('LISTEN '), 10 * SCALE)
    check(got and got[1].strip() == 'LISTEN 127.0.0.2:%d' % first.port,
          'second mock on 127.0.0.2:%d did not start: %s' % (first.port, second.tail()))
    try:
        srv.set('moving.test', a=['127.0.0.1'], ttl=1)
        gw = dns_gateway(ctx, 'moving', 'moving.test', first.port)
        for i in range(3):   # keep-alive: the pool holds a connection to the first
            check(reply_content(post_chat(gw.port)) == expected_content(8), 'before the move, request %d' % i)
        srv.set('moving.test', a=['127.0.0.2'], ttl=1)
        t0 = time.monotonic()
        moved_at, served = None, 0
        while time.monotonic() - t0 < 6 * SCALE:
            c = reply_content(post_chat(gw.port))
            served += 1
            if c == expected_content(3):
                moved_at = time.monotonic() - t0
                break
            check(c == expected_content(8), 'an answer from neither mock: %s' % short(c))
            time.sleep(0.05)
        check(moved_at is not None, 'requests did not move to the new address within %.0f s' % (6 * SCALE))
        for i in range(3):
            check(reply_content(post_chat(gw.port)) == expected_content(3), 'after the move, request %d' % i)
        figure('dns: requests moved to the new A record %.2f s after it changed (TTL 1 s, %d requests, none failed)'
               % (moved_at, served))
    finally:
        second.stop()


@test(ANY, params=['nxdomain', 'servfail', 'silent'])
def dns_failure_is_502(ctx, mode):
    srv = dns_server()
    name = 'dns-%s.test' % mode
    srv.set(name, a=['127.0.0.1'], mode=mode)
    t0 = time.monotonic()
    gw = dns_gateway(ctx, 'fail-' + mode, name, dead_port())
    startup = time.monotonic() - t0
    # start-up only reads the files: a silent server cannot hold it up
    check(startup < 0.9 * SCALE + 0.5, 'the gateway took %.2f s to start' % startup)
    before = dns_error_count(gw)
    label = {'nxdomain': 'NXDOMAIN', 'servfail': 'SERVFAIL', 'silent': 'timeout'}[mode]
    t1 = time.monotonic()
    r = post_chat(gw.port, timeout=8)
    took = time.monotonic() - t1
    check_dns_502(r, name, label)
    check(dns_error_count(gw) == before + 1, 'upstream errors of kind dns: %s -> %s' % (before, dns_error_count(gw)))
    if mode == 'silent':
        check(took < 1.0 + 1.5 * SCALE, 'a timeout of 1 s, one attempt, took %.2f s' % took)
        figure('dns: a silent nameserver (timeout:1 attempts:1) answered 502 after %.2f s' % took)
    check(srv.queries(name, transport='udp') >= 1, 'the test server was not asked for %s' % name)


@test(ANY)
def dns_truncated_answer_falls_back_to_tcp(ctx):
    srv = dns_server()
    mock = dns_mock(ctx, 'tc')
    srv.set('big.test', a=['127.0.0.1'], ttl=30, mode='tc')
    gw = dns_gateway(ctx, 'tc', 'big.test', mock.port)
    check(reply_content(post_chat(gw.port, n=2)) == expected_content(2), 'content after the TCP fallback')
    check(srv.queries('big.test', transport='udp') >= 1, 'no UDP query first')
    check(srv.queries('big.test', transport='tcp', qtype=1) >= 1, 'no A query over TCP after TC')


@test(ANY)
def dns_hosts_file_wins(ctx):
    srv = dns_server()
    mock = dns_mock(ctx, 'hosts')
    # DNS would not answer at all: only the hosts file can make this work
    srv.set('pinned.test', a=['127.0.0.9'], mode='silent')
    gw = dns_gateway(ctx, 'hosts', 'PINNED.test', mock.port,
                     hosts='# pinned for the suite\n127.0.0.1\tlocalhost\n::1 ip6-localhost\n'
                           '127.0.0.1   other.test pinned.test   # trailing comment\n')
    check(reply_content(post_chat(gw.port, n=2)) == expected_content(2), 'content through the hosts entry')
    check(srv.queries('pinned.test') == 0, 'DNS was asked %d times for a name in the hosts file'
          % srv.queries('pinned.test'))


@test(ANY, timeout=30)
def dns_stale_answer_survives_a_dead_nameserver(ctx):
    """Past its TTL an answer is served while the refresh runs, and kept when the
    refresh fails (the server went silent)."""
    srv = dns_server()
    mock = dns_mock(ctx, 'stale')
    srv.set('flaky.test', a=['127.0.0.1'], ttl=1)
    gw = dns_gateway(ctx, 'stale', 'flaky.test', mock.port)
    check(reply_content(post_chat(gw.port, n=2)) == expected_content(2), 'first request')
    srv.set('flaky.test', a=['127.0.0.1'], ttl=1, mode='silent')
    asked = srv.queries('flaky.test')
    time.sleep(1.3)
    end = time.monotonic() + 2.5
    n = 0
    while time.monotonic() < end:
        r = post_chat(gw.port, n=2)
        check(r.status == 200, 'request %d after the server went silent: %d %s' % (n, r.status, short(r.body)))
        n += 1
        time.sleep(0.1)
    check(srv.queries('flaky.test') > asked, 'no refresh was tried after the TTL')
