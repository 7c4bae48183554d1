# Several upstreams (§3 config file): routes with groups and fallbacks, weights,
# aliases, retries with backoff and Retry-After, passive health, max_conns,
# and SIGHUP reload. Exec'd into run.py's namespace.

ROUTES_DIR = tempfile.mkdtemp(prefix='ssegate-routes-')
HEALTH_EJECT_AFTER_TESTED = 5  # the gateway ejects after this many failures in a row
atexit.register(shutil.rmtree, ROUTES_DIR, True)


def routes_mock(ctx, tag, extra=()):
    return ctx.env._get(('mock', 'plain', 'routes-' + tag), lambda: Mock(
        ctx.env.args.mock, 'mock-routes-' + tag, extra=list(extra)))


def write_config(name, doc):
    path = os.path.join(ROUTES_DIR, name)
    with open(path + '.tmp', 'w') as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc, indent=1))
    os.rename(path + '.tmp', path)
    return path


def up(name, port, **kw):
    u = {'name': name, 'url': 'http://127.0.0.1:%d/v1' % port, 'key_env': 'OPENAI_API_KEY'}
    u.update(kw)
    return u


def routes_gateway(ctx, tag, doc, extra=()):
    path = write_config('config-%s.json' % tag, doc)
    gw = Gateway(ctx.env.args.gateway, 'gw-routes-' + tag, 'http://127.0.0.1:9/v1', None,
                 GW_ARGS + ['--config', path, '--retries', '2'] + list(extra))
    ctx.use(gw)
    return gw, path


def stop_gateway(ctx, gw):
    gw.proc.stop()
    if gw in ctx.used:
        ctx.used.remove(gw)


def plain_chat(port, extra=(), stream=False, model='gpt-4o-mini', timeout=10.0, n=2):
    hs = [('Host', 'x'), ('Content-Type', 'application/json'), ('X-Mock-Chunks', str(n))] + list(extra)
    body = json.dumps({'model': model, 'stream': stream, 'messages': [{'role': 'user', 'content': 'hi'}]})
    return call(port, 'POST', '/v1/chat/completions', hs, body.encode(), timeout=timeout)


def log_of(gw, rid):
    rec = gw.wait_log(lambda x: x.get('req_id') == rid)
    check(rec is not None, 'no log line for %s' % rid)
    return rec


@test(ANY)
def routes_dead_upstream_skipped(ctx):
    live = routes_mock(ctx, 'live')
    gw, _ = routes_gateway(ctx, 'dead', {'upstreams': [up('dead', dead_port()), up('live', live.port)],
                                         'routes': {'*': ['dead', 'live']}})
    try:
        before = live.stats()['requests']
        rid = 'dead-' + uuid.uuid4().hex[:8]
        r = plain_chat(gw.port, [('X-Request-Id', rid)])
        check(r.status == 200, 'status %d %s' % (r.status, short(r.body)))
        check(live.stats()['requests'] == before + 1, 'the live upstream did not answer')
        rec = log_of(gw, rid)
        check(rec.get('upstream') == 'dead>live' and rec.get('retries') == 1,
              'log upstream %r retries %r' % (rec.get('upstream'), rec.get('retries')))
        took = []
        for _ in range(100):
            t0 = time.monotonic()
            check(plain_chat(gw.port).status == 200, 'a request with the first upstream down')
            took.append(time.monotonic() - t0)
        took.sort()
        figure('failover past a refusing upstream: p50 %.1f ms, p99 %.1f ms over 100 requests '
               '(the first %d before it was ejected paid the backoff)' % (took[50] * 1000, took[98] * 1000,
                                                                        HEALTH_EJECT_AFTER_TESTED))
    finally:
        stop_gateway(ctx, gw)


@test(ANY, timeout=30)
def routes_429_retry_after_honoured(ctx):
    m = routes_mock(ctx, 'one')
    gw, _ = routes_gateway(ctx, '429', {'upstreams': [up('one', m.port)]})
    try:
        rid = 'r429-' + uuid.uuid4().hex[:8]
        t0 = time.monotonic()
        r = plain_chat(gw.port, [('X-Request-Id', rid), ('X-Mock-Fault', 'status:429'), ('X-Mock-Fault-Times', '1'),
                                 ('X-Mock-Id', rid)])
        took = time.monotonic() - t0
        check(r.status == 200, 'status %d %s' % (r.status, short(r.body)))
        check(took >= 1.0, 'retried after %.2f s; the upstream said Retry-After: 1' % took)
        figure('429 with Retry-After: 1 answered after %.2f s' % took)
        rec = log_of(gw, rid)
        check(rec.get('retries') == 1, 'log retries %r' % rec.get('retries'))
        # every attempt 429: the upstream's own answer, as it was, after the retries
        r = plain_chat(gw.port, [('X-Mock-Fault', 'status:429')], timeout=15)
        check(r.status == 429 and r.header('retry-after') == '1', 'status %d Retry-After %r' % (r.status, r.header('retry-after')))
        check('mock fault' in check_error_shape(r.body)['message'], 'not the upstream\'s body: %s' % short(r.body))
    finally:
        stop_gateway(ctx, gw)


@test(ANY)
def routes_5xx_moves_to_fallback(ctx):
    bad = routes_mock(ctx, 'fail500', ['--fail', '500'])
    good = routes_mock(ctx, 'good')
    gw, _ = routes_gateway(ctx, 'fallback', {'upstreams': [up('bad', bad.port), up('good', good.port)],
                                             'routes': {'*': ['bad', 'good']}})
    try:
        rid = 'fb-' + uuid.uuid4().hex[:8]
        r = plain_chat(gw.port, [('X-Request-Id', rid)])
        check(r.status == 200, 'status %d %s' % (r.status, short(r.body)))
        rec = log_of(gw, rid)
        check(rec.get('upstream') == 'bad>good', 'log upstream %r' % rec.get('upstream'))
        s = samples(scrape(gw.port))
        check(s.get('ssegate_retries_total{upstream="bad"}', 0) >= 1, 'retries_total{bad} %s'
              % s.get('ssegate_retries_total{upstream="bad"}'))
        check(s.get('ssegate_upstream_errors_total{upstream="bad",kind="status_5xx"}', 0) >= 1, 'no status_5xx error')
    finally:
        stop_gateway(ctx, gw)


@test(ANY)
def routes_exhausted_relays_last_answer(ctx):
    a = routes_mock(ctx, 'fail503a', ['--fail', '503'])
    b = routes_mock(ctx, 'fail503b', ['--fail', '503'])
    gw, _ = routes_gateway(ctx, 'exhausted', {'upstreams': [up('a', a.port), up('b', b.port)],
                                              'routes': {'*': ['a', 'b']}})
    try:
        rid = 'ex-' + uuid.uuid4().hex[:8]
        r = plain_chat(gw.port, [('X-Request-Id', rid)])
        check(r.status == 503, 'status %d, want the upstream\'s 503' % r.status)
        check('mock fault' in check_error_shape(r.body)['message'], 'not the upstream\'s body: %s' % short(r.body))
        rec = log_of(gw, rid)
        check(rec.get('retries') == 2, 'log retries %r' % rec.get('retries'))
    finally:
        stop_gateway(ctx, gw)


@test(ANY)
def routes_midstream_failure_not_retried(ctx):
    a = routes_mock(ctx, 'mid-a')
    b = routes_mock(ctx, 'mid-b')
    gw, _ = routes_gateway(ctx, 'mid', {'upstreams': [up('a', a.port), up('b', b.port)],
                                        'routes': {'*': ['a', 'b']}})
    try:
        before = b.stats()['requests']
        head, st, c, _ = stream_chat(gw.port, n=10, fault='close-after:3')
        c.close()
        check_error_end(head, st, 10, 'mid-stream failure: ')
        check(b.stats()['requests'] == before, 'the fallback was asked after the client saw bytes')
    finally:
        stop_gateway(ctx, gw)


@test(ANY, timeout=60)
def routes_weights_split_3_to_1(ctx):
    a = routes_mock(ctx, 'w3')
    b = routes_mock(ctx, 'w1')
    gw, _ = routes_gateway(ctx, 'weights', {'upstreams': [up('w3', a.port, weight=3), up('w1', b.port, weight=1)],
                                            'routes': {'*': [['w3', 'w1']]}})
    try:
        a0, b0 = a.stats()['requests'], b.stats()['requests']
        c = HTTPConn(gw.port)
        try:
            for i in range(400):
                c.send(build_request('POST', '/v1/chat/completions', [('Host', 'x'), ('X-Mock-Chunks', '1')],
                                     chat_body(False)))
                r = c.read_response(5)
                check(r.status == 200, 'request %d: %d' % (i, r.status))
        finally:
            c.close()
        na, nb = a.stats()['requests'] - a0, b.stats()['requests'] - b0
        figure('weights 3:1 over 400 requests: %d / %d' % (na, nb))
        check(na + nb == 400 and abs(na - 300) <= 30 and abs(nb - 100) <= 10, 'split %d / %d' % (na, nb))
    finally:
        stop_gateway(ctx, gw)


@test(ANY)
def routes_models_and_aliases(ctx):
    m1 = routes_mock(ctx, 'models-1')
    m2 = routes_mock(ctx, 'models-2')
    gw, _ = routes_gateway(ctx, 'models', {
        'upstreams': [up('m1', m1.port, models=['gpt-4o', 'llama3.2']), up('m2', m2.port)],
        'routes': {'gpt-4o': ['m1'], '*': ['m2']},
        'aliases': {'fast': {'upstream': 'm1', 'model': 'llama3.2'}}})
    try:
        for model, mock, want_model in (('gpt-4o', m1, 'gpt-4o'), ('other-model', m2, 'other-model'),
                                        ('fast', m1, 'llama3.2')):
            before = mock.stats()['requests']
            r = plain_chat(gw.port, model=model)
            check(r.status == 200, '%s: status %d %s' % (model, r.status, short(r.body)))
            check(mock.stats()['requests'] == before + 1, '%s went to the wrong upstream' % model)
            sent = json.loads(mock.last()['body'])
            check(sent.get('model') == want_model, '%s: upstream got model %r' % (model, sent.get('model')))
    finally:
        stop_gateway(ctx, gw)
    gw, _ = routes_gateway(ctx, 'models-strict', {'upstreams': [up('m1', m1.port, models=['gpt-4o'])]})
    try:
        r = plain_chat(gw.port, model='gpt-3')
        check(r.status == 404, 'an unserved model: status %d' % r.status)
        e = check_error_shape(r.body)
        check(e['code'] == 'model_not_found' and 'gpt-3' in e['message'], 'error %s' % e)
    finally:
        stop_gateway(ctx, gw)


@test(ANY, timeout=40)
def routes_ejected_upstream_comes_back(ctx):
    a = Mock(ctx.env.args.mock, 'mock-routes-eject-a')  # not shared: this test stops it
    b = routes_mock(ctx, 'eject-b')
    gw, _ = routes_gateway(ctx, 'eject', {'upstreams': [up('a', a.port), up('b', b.port)],
                                          'routes': {'*': [['a', 'b']]}})
    try:
        port_a = a.port
        a.proc.stop()
        for i in range(12):
            r = plain_chat(gw.port)
            check(r.status == 200, 'request %d with a down: %d %s' % (i, r.status, short(r.body)))
        s = samples(scrape(gw.port))
        check(s.get('ssegate_upstream_ejections_total{upstream="a"}') == 1, 'ejections{a} = %s'
              % s.get('ssegate_upstream_ejections_total{upstream="a"}'))
        check(get(gw.port, '/readyz').status == 200, '/readyz while b is healthy')
        a2 = Mock(ctx.env.args.mock, 'mock-routes-eject-a2', port=port_a)
        t0 = time.monotonic()
        back = None
        while time.monotonic() - t0 < bounded(20):
            plain_chat(gw.port)
            if a2.stats()['requests'] > 0:
                back = time.monotonic() - t0
                break
            time.sleep(0.25)
        check(back is not None, 'the ejected upstream never came back')
        figure('ejected upstream probed again %.1f s after it returned (cooldown 10 s)' % back)
    finally:
        stop_gateway(ctx, gw)


@test(ANY, timeout=30)
def routes_max_conns_queue(ctx):
    m = routes_mock(ctx, 'capped')
    gw, _ = routes_gateway(ctx, 'capped', {'upstreams': [up('one', m.port, max_conns=1)]},
                           extra=['--connect-timeout', '700ms'])
    try:
        def slow_stream(delay):
            c = HTTPConn(gw.port)
            c.send(build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=4, delay=delay),
                                 chat_body(True)))
            return c
        c1 = slow_stream(100)   # 0.4 s on the only slot
        time.sleep(0.05)
        t0 = time.monotonic()
        c2 = slow_stream(0)     # waits in line for the slot
        h1, h2 = c1.read_head(5), c2.read_head(5)
        waited = time.monotonic() - t0
        check(h1.status == 200 and h2.status == 200, 'statuses %d %d' % (h1.status, h2.status))
        check(read_stream(c1, h1).terminated and read_stream(c2, h2).terminated, 'a stream did not end')
        check(waited >= 0.25, 'the second stream did not wait for the slot (%.2f s)' % waited)
        c1.close(), c2.close()
        c1 = slow_stream(400)   # 1.6 s on the slot: longer than the wait allowed
        time.sleep(0.05)
        r = plain_chat(gw.port, timeout=5)
        check(r.status == 503, 'past the wait: status %d' % r.status)
        check(check_error_shape(r.body)['code'] == 'upstream_busy', 'code %s' % short(r.body))
        c1.close()
    finally:
        stop_gateway(ctx, gw)


@test(ANY, timeout=40)
def reload_sighup_good_bad_and_inflight(ctx):
    a = routes_mock(ctx, 'reload-a')
    b = routes_mock(ctx, 'reload-b')
    gw, path = routes_gateway(ctx, 'reload', {'upstreams': [up('a', a.port)]})
    try:
        conns = []
        for _ in range(50):
            c = HTTPConn(gw.port)
            c.send(build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=8, delay=60), chat_body(True)))
            conns.append(c)
        heads = [c.read_head(5) for c in conns]
        check(all(h.status == 200 for h in heads), 'not every stream started')
        write_config(os.path.basename(path), {'upstreams': [up('b', b.port)]})
        os.kill(gw.pid, signal.SIGHUP)
        check(gw.wait_log(lambda x: x.get('msg') == 'configuration reloaded', 5) is not None, 'no reload log line')
        ok = 0
        for c, h in zip(conns, heads):
            st = read_stream(c, h, 10)
            ok += st.terminated and not st.errors() and st.content() == expected_content(8)
            c.close()
        check(ok == 50, '%d of 50 streams in flight finished whole across the reload' % ok)
        before = b.stats()['requests']
        check(plain_chat(gw.port).status == 200 and b.stats()['requests'] == before + 1,
              'new requests do not go to the new configuration')
        write_config(os.path.basename(path), '{"upstreams": [ {"name": "b", "url": 7} ]}')
        os.kill(gw.pid, signal.SIGHUP)
        rec = gw.wait_log(lambda x: x.get('msg', '').startswith('reload failed'), 5)
        check(rec is not None and 'upstreams[0].url' in rec.get('error', ''), 'bad reload: %s' % rec)
        before = b.stats()['requests']
        check(plain_chat(gw.port).status == 200 and b.stats()['requests'] == before + 1,
              'the old configuration did not stay after a bad reload')
        s = samples(scrape(gw.port))
        check(s.get('ssegate_config_reloads_total{result="ok"}') == 1 and
              s.get('ssegate_config_reloads_total{result="error"}') == 1, 'reload counters %s'
              % {k: v for k, v in s.items() if 'reloads' in k})
    finally:
        stop_gateway(ctx, gw)


@test(ANY)
def config_file_errors_refused(ctx):
    cases = {
        'weight': ({'upstreams': [{'name': 'a', 'url': 'http://127.0.0.1:9/v1', 'weight': 0}]}, 'upstreams[0].weight'),
        'unknown': ({'upstreams': [{'name': 'a', 'url': 'http://127.0.0.1:9/v1'}], 'rotues': {}}, 'rotues'),
        'route': ({'upstreams': [{'name': 'a', 'url': 'http://127.0.0.1:9/v1'}], 'routes': {'*': ['b']}}, '"b"'),
        'syntax': ('{"upstreams": [\n  {"name": "a",, }\n]}', 'line 2'),
    }
    for what, (doc, want) in cases.items():
        path = write_config('bad-%s.json' % what, doc)
        p = Proc('refused-config', [ctx.env.args.gateway, '--listen', '127.0.0.1:0', '--config', path],
                 env=clean_env())
        try:
            p.p.wait(timeout=5 * SCALE)
        except subprocess.TimeoutExpired:
            p.kill_now()
            fail('%s: the gateway started with a bad config' % what)
        time.sleep(0.05)
        err = '\n'.join(p.err_snapshot())
        check(p.p.returncode == 2 and want in err, '%s: exit %s, message %s' % (what, p.p.returncode, short(err)))
