# /metrics (§8): the page passes promtool, its values follow a known sequence of
# requests, it can sit behind a token, and its size with 1,000 clients.
# Exec'd into run.py's namespace (after suite_auth.py: its helpers are in scope).

PROM_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def scrape(port, headers=()):
    r = get(port, '/metrics', headers=headers)
    check(r.status == 200, '/metrics: status %d' % r.status)
    ct = r.header('content-type', '')
    check(ct.startswith('text/plain') and 'version=0.0.4' in ct, '/metrics Content-Type %r' % ct)
    return r.body.decode()


def samples(page):
    out = {}
    for line in page.splitlines():
        if not line or line.startswith('#'):
            continue
        m = PROM_SAMPLE_RE.match(line)
        check(m, 'unparsable sample line %r' % line)
        out[m.group(1) + (m.group(2) or '')] = float(m.group(3))
    return out


def promtool_check(page):
    exe = shutil.which('promtool')
    check(exe, 'promtool is not installed (Debian package prometheus)')
    p = subprocess.run([exe, 'check', 'metrics'], input=page.encode(), capture_output=True, timeout=30)
    out = (p.stdout + p.stderr).decode().strip()
    check(p.returncode == 0 and not out, 'promtool check metrics: exit %d: %s' % (p.returncode, short(out, 800)))


@test(ANY, timeout=40)
def metrics_values_and_promtool(ctx):
    mock, gw = auth_pair(ctx, 'metrics')
    team = 'sk-team-a-2f9d1c7e5b'
    usage = [('X-Mock-Usage', '10,5')]
    for _ in range(3):
        check(chat(gw.port, team, extra=usage).status == 200, 'plain chat')
    for _ in range(2):
        head, st, c, _t = stream_chat(gw.port, n=4, auth=False,
                                      extra=[('Authorization', 'Bearer ' + team)] + usage)
        c.close()
        check_complete_stream(head, st, 4, 'metered stream: ')
    check_401(call(gw.port, 'POST', '/v1/chat/completions', key_headers(gw.port, None, how=None), chat_body(False)))
    check_401(chat(gw.port, 'sk-wrong-key-00000000'))
    one = 'sk-one-stream-9e4b03'
    c1 = HTTPConn(gw.port)
    try:
        c1.send(build_request('POST', '/v1/chat/completions',
                              key_headers(gw.port, one, extra=[('X-Mock-Chunks', '3'), ('X-Mock-Delay-Ms', '150')]),
                              chat_body(True)))
        check(c1.read_head(5).status == 200, 'first stream of one-stream')
        check(chat(gw.port, one, stream=True).status == 429, 'second stream of one-stream')
        mid = samples(scrape(gw.port))
        check(mid.get('ssegate_active_streams') == 1, 'active_streams %s while one stream runs'
              % mid.get('ssegate_active_streams'))
    finally:
        c1.close()
    time.sleep(0.2)
    page = scrape(gw.port)
    promtool_check(page)
    s = samples(page)
    want = {
        'ssegate_requests_total{route="chat",status="200"}': 6,
        'ssegate_requests_total{route="chat",status="401"}': 2,
        'ssegate_requests_total{route="chat",status="429"}': 1,
        'ssegate_tokens_total{client="team-a",kind="prompt"}': 50,
        'ssegate_tokens_total{client="team-a",kind="completion"}': 25,
        'ssegate_auth_failures_total{reason="missing"}': 1,
        'ssegate_auth_failures_total{reason="invalid_key"}': 1,
        'ssegate_auth_failures_total{reason="invalid_token"}': 0,
        'ssegate_rate_limited_total{client="one-stream",limit="streams"}': 1,
        'ssegate_active_streams': 0,
        'ssegate_build_info{version="0.3.0"}': 1,
    }
    for k, v in want.items():
        check(s.get(k) == v, '%s = %s, want %s' % (k, s.get(k), v))
    chat_count = s.get('ssegate_request_duration_seconds_count{route="chat"}')
    check(chat_count == 9, 'request_duration _count{route="chat"} = %s, want 9' % chat_count)
    ttfb = [v for k, v in s.items() if k.startswith('ssegate_upstream_ttfb_seconds_count')]
    check(ttfb and sum(ttfb) == 6, 'upstream_ttfb _count = %s, want 6 upstream answers' % ttfb)
    inf = [v for k, v in s.items() if k.startswith('ssegate_upstream_ttfb_seconds_bucket') and 'le="+Inf"' in k]
    check(inf == ttfb, 'the +Inf bucket %s differs from _count %s' % (inf, ttfb))
    chunks = s.get('ssegate_chunks_relayed_total', 0)
    check(chunks >= 2 * 6, 'chunks_relayed_total %s, want at least 12' % chunks)
    check(s.get('ssegate_active_connections', 0) >= 1, 'active_connections counts this scrape')
    for k in s:
        check(UPSTREAM_KEY not in k and 'sk-' not in k, 'a key in a metric: %s' % k)


@test(ANY)
def metrics_token_protected(ctx):
    tok = os.path.join(AUTH_DIR, 'metrics-token')
    with open(tok, 'w') as f:
        f.write('scrape-me-0123456789\n')
    CLIENT_SECRETS.add('Bearer scrape-me-0123456789')
    mock, gw = auth_pair(ctx, 'metrics-token', extra=['--metrics-token-file', tok])
    for hs in ([], [('Authorization', 'Bearer wrong-token-000')], [('Authorization', 'Basic eDp5')]):
        r = get(gw.port, '/metrics', headers=hs)
        check(r.status == 401, '/metrics with %s: status %d' % (hs, r.status))
        check(r.header('www-authenticate', '').lower().startswith('bearer'), 'no WWW-Authenticate')
        check_error_shape(r.body)
    promtool_check(scrape(gw.port, [('Authorization', 'Bearer scrape-me-0123456789')]))
    # a client key is not the metrics token
    r = get(gw.port, '/metrics', headers=[('Authorization', 'Bearer sk-team-a-2f9d1c7e5b')])
    check(r.status == 401, '/metrics with a client key: status %d' % r.status)


@test(ANY, timeout=60)
def metrics_size_1000_clients(ctx):
    path = os.path.join(AUTH_DIR, 'keys-1000')
    keys = ['sk-many-%04d-%s' % (i, uuid.uuid4().hex[:10]) for i in range(1000)]
    with open(path, 'w') as f:
        for i, k in enumerate(keys):
            f.write('%s client-%04d 100000 - -\n' % (k, i))
    mock = ctx.env.mock('plain', 'metrics-1000')
    gw = ctx.use(Gateway(ctx.env.args.gateway, 'gw-plain-metrics-1000', 'http://127.0.0.1:%d/v1' % mock.port, None,
                         GW_ARGS + ['--keys-file', path, '--metrics-max-clients', '1000']))
    try:
        c = HTTPConn(gw.port)
        try:
            for k in keys:
                r = chat(gw.port, k, conn=c, n=1)
                check(r.status == 200, 'status %d' % r.status)
        finally:
            c.close()
        time.sleep(0.1)
        t0 = time.monotonic()
        page = scrape(gw.port)
        took = time.monotonic() - t0
        promtool_check(page)
        s = samples(page)
        n = len([k for k in s if k.startswith('ssegate_tokens_total{') and 'kind="prompt"' in k])
        check(n == 1000, '%d clients with prompt tokens, want 1000' % n)
        figure('/metrics with 1,000 clients: %d bytes, %d samples, scraped in %.1f ms'
               % (len(page), len(s), took * 1000))
    finally:
        gw.proc.stop()
        ctx.used.remove(gw)
