# Client identity and limits (§3), usage accounting, and the security holes of
# the relay (§4, §6): the real gateway with a keys file against the mock.
# Exec'd into run.py's namespace: its helpers and @test are in scope.

import atexit
import hashlib
import shutil

AUTH_DIR = tempfile.mkdtemp(prefix='ssegate-auth-')
atexit.register(shutil.rmtree, AUTH_DIR, True)

# key -> (name or None, rpm, tpm, streams); '-' is "no limit"
AUTH_KEYS = {
    'sk-team-a-2f9d1c7e5b': ('team-a', '-', '-', '-'),
    'sk-unnamed-8c1e55aa90': (None, None, None, None),
    'sk-rpm-limited-77aa01': ('rpm-limited', '30', '-', '-'),
    'sk-tpm-limited-5c3d02': ('tpm-limited', '-', '6000', '-'),
    'sk-one-stream-9e4b03': ('one-stream', '-', '-', '1'),
    'sk-streams-rpm-1a2b04': ('metered', '1000', '1000000', '8'),
}
for _k in AUTH_KEYS:
    CLIENT_SECRETS.add('Bearer ' + _k)


def auth_keys_path():
    path = os.path.join(AUTH_DIR, 'keys')
    if not os.path.exists(path):
        lines = ['# clients of the integration suite', '']
        for key, (name, rpm, tpm, streams) in AUTH_KEYS.items():
            fields = [key] + ([name, rpm, tpm, streams] if name else [])
            lines.append('  '.join(fields))
        with open(path + '.tmp', 'w') as f:
            f.write('\r\n'.join(lines) + '\n')
        os.rename(path + '.tmp', path)
    return path


def auth_pair(ctx, tag='keys', extra=(), env_extra=None):
    """A gateway with the suite's keys file and a mock of its own (request counts are ours)."""
    mock = ctx.env.mock(ctx.mode, 'auth-' + tag)

    def make():
        if ctx.mode == 'tls':
            up, ca = 'https://localhost:%d/v1' % mock.port, ctx.env.ca
        else:
            up, ca = 'http://127.0.0.1:%d/v1' % mock.port, None
        return Gateway(ctx.env.args.gateway, 'gw-%s-auth-%s' % (ctx.mode, tag), up, ca,
                       GW_ARGS + ['--keys-file', auth_keys_path()] + list(extra), env_extra=env_extra)
    gw = ctx.env._get(('gw', ctx.mode, 'auth-' + tag), make)
    return mock, ctx.use(gw)


def key_headers(port, key, how='bearer', extra=()):
    hs = [('Host', '127.0.0.1:%d' % port), ('Content-Type', 'application/json')]
    if how == 'bearer':
        hs.append(('Authorization', 'Bearer ' + key))
    elif how:
        hs.append((how, key))
    return hs + list(extra)


def call(port, method, path, headers, body=b'', timeout=5.0, conn=None):
    c = conn or HTTPConn(port)
    try:
        c.send(build_request(method, path, headers, body))
        return c.read_response(timeout, method=method)
    finally:
        if conn is None:
            c.close()


def chat(port, key, how='bearer', stream=False, extra=(), body=None, conn=None, n=3):
    hs = key_headers(port, key, how, [('X-Mock-Chunks', str(n))] + list(extra))
    return call(port, 'POST', '/v1/chat/completions', hs, body if body is not None else chat_body(stream), conn=conn)


def requests_seen(mock):
    return mock.stats()['requests']


def check_401(r, code='invalid_api_key'):
    check(r.status == 401, 'status %d, want 401: %s' % (r.status, short(r.body)))
    e = check_error_shape(r.body, '401 body')
    check(e['code'] == code, 'code %r, want %r' % (e['code'], code))
    wa = r.header('www-authenticate', '')
    check(wa.lower().startswith('bearer'), 'WWW-Authenticate is %r' % wa)
    return e


# --- keys -------------------------------------------------------------------

@test(ANY)
def auth_missing_or_bad_key_401(ctx):
    mock, gw = auth_pair(ctx)
    before = requests_seen(mock)
    cases = [
        ('no credential', key_headers(gw.port, None, how=None)),
        ('unknown bearer', key_headers(gw.port, 'sk-not-a-client-000000')),
        ('unknown x-api-key', key_headers(gw.port, 'sk-not-a-client-000000', 'x-api-key')),
        ('basic auth', [('Host', 'x'), ('Authorization', 'Basic dXNlcjpwYXNz')]),
        ('a known key with a byte changed', key_headers(gw.port, 'sk-team-a-2f9d1c7e5c')),
        ('a prefix of a known key', key_headers(gw.port, 'sk-team-a-2f9d1c7e5')),
    ]
    for what, hs in cases:
        r = call(gw.port, 'POST', '/v1/chat/completions', hs, chat_body(False))
        e = check_401(r)
        check('key' in e['message'].lower(), '%s: message %r does not say what is wrong' % (what, e['message']))
    r = call(gw.port, 'GET', '/v1/models', key_headers(gw.port, None, how=None))
    check_401(r)
    check(requests_seen(mock) == before, 'the upstream was asked %d times for refused calls'
          % (requests_seen(mock) - before))
    rec = gw.wait_log(lambda x: x.get('status') == 401 and x.get('path') == '/v1/models')
    check(rec is not None, 'no log line for the refused /v1/models')


@test(ANY)
def auth_key_headers_accepted(ctx):
    mock, gw = auth_pair(ctx)
    for how in ('bearer', 'x-api-key', 'api-key'):
        r = chat(gw.port, 'sk-team-a-2f9d1c7e5b', how)
        check(r.status == 200, '%s: status %d %s' % (how, r.status, short(r.body)))
        up = mock.last()['headers']
        for h in ('x-api-key', 'api-key'):
            check(h not in up, '%s: the client credential header %s reached the upstream' % (how, h))
        check(up.get('authorization') == 'Bearer ' + UPSTREAM_KEY, '%s: upstream Authorization %r'
              % (how, up.get('authorization')))
    head, st, c, _ = stream_chat(gw.port, n=5, auth=False,
                                 extra=[('Authorization', 'Bearer sk-team-a-2f9d1c7e5b')])
    c.close()
    check_complete_stream(head, st, 5, 'stream with a client key: ')


@test(ANY)
def auth_open_endpoints(ctx):
    mock, gw = auth_pair(ctx)
    for path in ('/ping', '/healthz', '/readyz', '/metrics'):
        r = get(gw.port, path)
        check(r.status == 200, '%s without a key: status %d' % (path, r.status))


@test(ANY)
def auth_log_names_clients(ctx):
    mock, gw = auth_pair(ctx)
    for key in ('sk-team-a-2f9d1c7e5b', 'sk-unnamed-8c1e55aa90'):
        rid = 'auth-name-' + uuid.uuid4().hex[:8]
        r = chat(gw.port, key, extra=[('X-Request-Id', rid)])
        check(r.status == 200, 'status %d' % r.status)
        rec = gw.wait_log(lambda x: x.get('req_id') == rid)
        check(rec is not None, 'no log line for %s' % rid)
        want = AUTH_KEYS[key][0] or 'key:' + hashlib.sha256(key.encode()).hexdigest()[:8]
        check(rec.get('client') == want, 'log client %r, want %r' % (rec.get('client'), want))
        check(rec.get('upstream_req_id', '').startswith('req_'), 'upstream_req_id %r' % rec.get('upstream_req_id'))


@test(ANY)
def auth_bad_keys_file_refused(ctx):
    cases = {
        'bad rpm': ('sk-ok-0000000001 a 1 2 3\nsk-bad-000000002 b zero\n', 'line 2'),
        'duplicate': ('# c\nsk-dup-000000001 a\n\nsk-dup-000000001 b\n', 'line 4'),
        'too many fields': ('sk-x-0000000001 a 1 2 3 4\n', 'line 1'),
        'bad name': ('sk-x-0000000001 "quoted"\n', 'line 1'),
        'empty': ('# nothing\n\n', 'no keys'),
    }
    for what, (text, want) in cases.items():
        path = os.path.join(AUTH_DIR, 'bad-%s' % what.replace(' ', '-'))
        with open(path, 'w') as f:
            f.write(text)
        p = Proc('refused-badkeys', [ctx.env.args.gateway, '--listen', '127.0.0.1:0', '--upstream',
                                'http://127.0.0.1:9/v1', '--keys-file', path], env=clean_env())
        try:
            p.p.wait(timeout=5 * SCALE)
        except subprocess.TimeoutExpired:
            p.kill_now()
            fail('%s: the gateway started with a bad keys file' % what)
        time.sleep(0.05)
        err = '\n'.join(p.err_snapshot())
        check(p.p.returncode == 2, '%s: exit %s, want 2' % (what, p.p.returncode))
        check(want in err and path in err, '%s: message does not name %r: %s' % (what, want, short(err)))
    missing = os.path.join(AUTH_DIR, 'no-such-file')
    p = Proc('refused-nokeys', [ctx.env.args.gateway, '--listen', '127.0.0.1:0', '--keys-file', missing],
             env=clean_env())
    p.p.wait(timeout=5 * SCALE)
    time.sleep(0.05)
    check(p.p.returncode == 2 and missing in '\n'.join(p.err_snapshot()), 'a missing keys file: exit %s'
          % p.p.returncode)


@test(ANY)
def auth_loopback_rule(ctx):
    # without client auth a non-loopback listener is refused...
    p = Proc('refused-anon-wide', [ctx.env.args.gateway, '--listen', '0.0.0.0:0', '--upstream', 'http://127.0.0.1:9/v1'],
             env=clean_env())
    p.p.wait(timeout=5 * SCALE)
    time.sleep(0.05)
    err = '\n'.join(p.err_snapshot())
    check(p.p.returncode == 2 and 'refusing' in err, 'no keys on 0.0.0.0: exit %s: %s'
          % (p.p.returncode, short(err)))
    # ...and with keys it serves. Run inside a private network namespace, so the
    # wildcard listener is reachable from nowhere but that namespace's loopback.
    if os.geteuid() != 0 or not shutil.which('unshare'):
        figure('auth_loopback_rule: wildcard listener with keys not tried (needs root and unshare)')
        return
    script = r'''
import os, re, socket, subprocess, sys, time
subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=False)
p = subprocess.Popen([sys.argv[1], '--listen', '0.0.0.0:0', '--upstream', 'http://127.0.0.1:9/v1',
                      '--keys-file', sys.argv[2], '--log-format', 'json'], stderr=subprocess.PIPE)
port = None
end = time.time() + 10
while time.time() < end and port is None:
    line = p.stderr.readline().decode()
    if not line:
        break
    m = re.search(r'"listen":"0\.0\.0\.0:(\d+)"', line)
    if m:
        port = int(m.group(1))
ok = False
if port:
    s = socket.create_connection(('127.0.0.1', port), timeout=5)
    s.sendall(b'GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    ok = s.recv(100).startswith(b'HTTP/1.1 200')
    s.close()
p.terminate()
p.wait(5)
print('SERVED' if ok else 'NOT SERVED port=%s' % port)
'''
    try:
        out = subprocess.run(['unshare', '--net', sys.executable, '-c', script, ctx.env.args.gateway,
                              auth_keys_path()], capture_output=True, timeout=20 * SCALE)
    except subprocess.TimeoutExpired:
        fail('the namespaced gateway did not finish')
    text = out.stdout.decode() + out.stderr.decode()
    if 'Operation not permitted' in text:
        figure('auth_loopback_rule: unshare --net not permitted here; wildcard listener not tried')
        return
    check('SERVED' in out.stdout.decode() and 'NOT' not in out.stdout.decode(),
          'with --keys-file on 0.0.0.0: %s' % short(text, 600))


@test(ANY, timeout=60)
def auth_keys_file_10000(ctx):
    path = os.path.join(AUTH_DIR, 'keys-10000')
    with open(path, 'w') as f:
        for i in range(10000):
            f.write('sk-bulk-%06d-%s client-%d %s\n' % (i, hashlib.md5(b'%d' % i).hexdigest()[:16], i,
                                                      '600 - -' if i % 2 else ''))
    mock = ctx.env.mock('plain', 'auth-bulk')
    t0 = time.monotonic()
    gw = ctx.use(Gateway(ctx.env.args.gateway, 'gw-plain-auth-bulk', 'http://127.0.0.1:%d/v1' % mock.port, None,
                         GW_ARGS + ['--keys-file', path]))
    took = time.monotonic() - t0
    try:
        figure('keys file with 10,000 keys: gateway ready in %.0f ms (start-up included)' % (took * 1000))
        for i in (0, 4321, 9999):
            key = 'sk-bulk-%06d-%s' % (i, hashlib.md5(b'%d' % i).hexdigest()[:16])
            r = chat(gw.port, key)
            check(r.status == 200, 'key %d: status %d' % (i, r.status))
        check_401(chat(gw.port, 'sk-bulk-000000-0000000000000000'))
    finally:
        gw.proc.stop()
        ctx.used.remove(gw)


# --- limits -----------------------------------------------------------------

def ratelimit_headers(r):
    return {k.lower(): v for k, v in r.headers if k.lower().startswith('x-ratelimit-')}


@test(ANY, timeout=40)
def limits_rpm_429_then_after_retry(ctx):
    mock, gw = auth_pair(ctx)
    key = 'sk-rpm-limited-77aa01'
    c = HTTPConn(gw.port)
    try:
        seen = []
        for i in range(30):
            r = chat(gw.port, key, conn=c)
            check(r.status == 200, 'request %d: status %d %s' % (i + 1, r.status, short(r.body)))
            h = ratelimit_headers(r)
            check(h.get('x-ratelimit-limit-requests') == '30', 'request %d: limit header %r' % (i + 1, h))
            seen.append(int(h.get('x-ratelimit-remaining-requests', '-1')))
            check('x-ratelimit-reset-requests' in h, 'no reset-requests header')
        check(seen[0] == 29 and seen[-1] == 0 and seen == sorted(seen, reverse=True),
              'remaining-requests went %s' % (seen[:5] + ['...'] + seen[-3:]))
        before = requests_seen(mock)
        r = chat(gw.port, key, conn=c)
        check(r.status == 429, '31st request: status %d' % r.status)
        e = check_error_shape(r.body, '429 body')
        check(e['code'] == 'rate_limit_exceeded', 'code %r' % e['code'])
        ra = r.header('retry-after')
        check(ra is not None and ra.isdigit() and 1 <= int(ra) <= 2, 'Retry-After %r, want 1..2' % ra)
        h = ratelimit_headers(r)
        check(h.get('x-ratelimit-remaining-requests') == '0', '429 remaining %r' % h)
        check(requests_seen(mock) == before, 'the upstream saw the refused request')
        time.sleep(int(ra) + 0.05)
        r = chat(gw.port, key, conn=c)
        check(r.status == 200, 'after Retry-After: status %d' % r.status)
    finally:
        c.close()
    rec = gw.wait_log(lambda x: x.get('status') == 429 and x.get('client') == 'rpm-limited')
    check(rec is not None, 'no log line for the 429')


@test(ANY, timeout=30)
def limits_tpm_429_then_after_retry(ctx):
    mock, gw = auth_pair(ctx)
    key = 'sk-tpm-limited-5c3d02'
    r = chat(gw.port, key, extra=[('X-Mock-Usage', '5000,1010')])
    check(r.status == 200, 'first: status %d %s' % (r.status, short(r.body)))
    h = ratelimit_headers(r)
    check(h.get('x-ratelimit-limit-tokens') == '6000', 'tokens limit header %r' % h)
    before = requests_seen(mock)
    r = chat(gw.port, key)
    check(r.status == 429, 'over tpm: status %d %s' % (r.status, short(r.body)))
    e = check_error_shape(r.body, '429 body')
    check('token' in e['message'], 'message %r does not name tokens' % e['message'])
    ra = r.header('retry-after')
    check(ra is not None and ra.isdigit() and int(ra) >= 1, 'Retry-After %r' % ra)
    check(ratelimit_headers(r).get('x-ratelimit-remaining-tokens') == '0', 'remaining tokens %r' % ratelimit_headers(r))
    check(requests_seen(mock) == before, 'the upstream saw the refused request')
    time.sleep(int(ra) + 0.05)
    r = chat(gw.port, key)
    check(r.status == 200, 'after Retry-After: status %d' % r.status)


@test(ANY, timeout=30)
def limits_tpm_charged_from_stream(ctx):
    # a stream's usage chunk (asked for by the gateway, not the client) is what is charged
    mock, gw = auth_pair(ctx, 'tpm-stream')
    key = 'sk-tpm-limited-5c3d02'
    head, st, c, _ = stream_chat(gw.port, n=4, auth=False,
                                 extra=[('Authorization', 'Bearer ' + key), ('X-Mock-Usage', '3000,3010')])
    c.close()
    check_complete_stream(head, st, 4, 'metered stream: ')
    time.sleep(0.05)
    r = chat(gw.port, key)
    check(r.status == 429, 'after a 6010-token stream: status %d' % r.status)


@test(ANY, timeout=30)
def limits_concurrent_streams(ctx):
    mock, gw = auth_pair(ctx)
    key = 'sk-one-stream-9e4b03'
    c1 = HTTPConn(gw.port)
    try:
        c1.send(build_request('POST', '/v1/chat/completions',
                              key_headers(gw.port, key, extra=[('X-Mock-Chunks', '5'), ('X-Mock-Delay-Ms', '200')]),
                              chat_body(True)))
        h1 = c1.read_head(5)
        check(h1.status == 200, 'first stream: status %d' % h1.status)
        before = requests_seen(mock)
        r = chat(gw.port, key, stream=True)
        check(r.status == 429, 'second concurrent stream: status %d' % r.status)
        check(r.header('retry-after') == '1', 'Retry-After %r' % r.header('retry-after'))
        check('stream' in check_error_shape(r.body)['message'], 'message does not name streams')
        check(requests_seen(mock) == before, 'the upstream saw the refused stream')
        r = chat(gw.port, key, stream=False)
        check(r.status == 200, 'a non-streamed request beside the stream: status %d' % r.status)
        st = read_stream(c1, h1, 10)
        check(st.terminated, 'the first stream did not end')
    finally:
        c1.close()
    ok = wait_until(lambda: chat(gw.port, key, stream=True).status == 200 or None, 3.0, step=0.05)
    check(ok, 'a new stream after the first ended was refused')


# --- usage accounting ---------------------------------------------------------

@test(ANY)
def usage_logged_stream_and_plain(ctx):
    mock, gw = auth_pair(ctx)
    for stream in (True, False):
        rid = 'usage-%s-%s' % (stream, uuid.uuid4().hex[:6])
        hs = key_headers(gw.port, 'sk-team-a-2f9d1c7e5b', extra=[('X-Request-Id', rid), ('X-Mock-Chunks', '6'),
                                                              ('X-Mock-Usage', '17,6')])
        c = HTTPConn(gw.port)
        try:
            c.send(build_request('POST', '/v1/chat/completions', hs, chat_body(stream)))
            head = c.read_head(5)
            check(head.status == 200, 'status %d' % head.status)
            if stream:
                st = read_stream(c, head, 10)
                check(not any('"usage":{' in d for d in st.datas()), 'the usage chunk reached a client that '
                      'did not ask for it')
            else:
                c.read_body(head, 5)
        finally:
            c.close()
        rec = gw.wait_log(lambda x: x.get('req_id') == rid)
        check(rec is not None, 'no log line')
        check(rec.get('prompt_tokens') == 17 and rec.get('completion_tokens') == 6,
              'stream=%s: logged tokens %s/%s, want 17/6' % (stream, rec.get('prompt_tokens'),
                                                             rec.get('completion_tokens')))


@test(ANY)
def usage_counted_without_usage_chunk(ctx):
    mock, gw = auth_pair(ctx)
    rid = 'nousage-' + uuid.uuid4().hex[:6]
    hs = key_headers(gw.port, 'sk-team-a-2f9d1c7e5b', extra=[('X-Request-Id', rid), ('X-Mock-Chunks', '7'),
                                                          ('X-Mock-Fault', 'no-usage')])
    c = HTTPConn(gw.port)
    try:
        c.send(build_request('POST', '/v1/chat/completions', hs, chat_body(True)))
        head = c.read_head(5)
        st = read_stream(c, head, 10)
    finally:
        c.close()
    check(st.content() == expected_content(7), 'content %s' % short(st.content()))
    rec = gw.wait_log(lambda x: x.get('req_id') == rid)
    check(rec is not None and rec.get('completion_tokens') == 7,
          'completion_tokens %s, want the 7 content deltas' % (rec or {}).get('completion_tokens'))


@test(ANY)
def usage_of_cancelled_stream(ctx):
    mock, gw = auth_pair(ctx)
    rid = 'cancel-usage-' + uuid.uuid4().hex[:6]
    hs = key_headers(gw.port, 'sk-team-a-2f9d1c7e5b', extra=[('X-Request-Id', rid), ('X-Mock-Chunks', '50'),
                                                          ('X-Mock-Delay-Ms', '20')])
    c = HTTPConn(gw.port)
    try:
        c.send(build_request('POST', '/v1/chat/completions', hs, chat_body(True)))
        head = c.read_head(5)
        st = read_stream(c, head, 10, stop=lambda s: len(s.content_events()) >= 5)
    finally:
        c.close()
    seen = len(st.content_events())
    rec = gw.wait_log(lambda x: x.get('req_id') == rid)
    check(rec is not None, 'no log line')
    got = rec.get('completion_tokens')
    check(rec.get('status') == 499 or rec.get('status') == 200, 'status %s' % rec.get('status'))
    check(isinstance(got, int) and seen <= got <= seen + 3,
          'a stream cancelled after %d deltas logged completion_tokens %r' % (seen, got))


@test(ANY)
def responses_body_unchanged(ctx):
    mock, gw = auth_pair(ctx)
    body = json.dumps({'model': 'gpt-4o-mini', 'stream': True, 'input': 'hello'}, separators=(',', ':')).encode()
    r = call(gw.port, 'POST', '/v1/responses', key_headers(gw.port, 'sk-team-a-2f9d1c7e5b'), body, timeout=10)
    check(r.status == 200, 'status %d %s' % (r.status, short(r.body)))
    got = mock.last()['body']
    check(got.encode() == body, 'the /v1/responses body changed on its way up: %s' % short(got))
    r = chat(gw.port, 'sk-team-a-2f9d1c7e5b', stream=True)
    check('include_usage' in mock.last()['body'], 'chat/completions streams no longer ask for usage')


# --- security ----------------------------------------------------------------

@test(ANY)
def methods_not_relayed_405(ctx):
    mock, gw = auth_pair(ctx)
    before = requests_seen(mock)
    for method in ('TRACE', 'FOO', 'PROPFIND'):
        c = HTTPConn(gw.port)
        try:
            c.send(build_request(method, '/v1/chat/completions', key_headers(gw.port, 'sk-team-a-2f9d1c7e5b')))
            r = c.read_response(5)
            check(r.status == 405, '%s: status %d' % (method, r.status))
            allow = r.header('allow', '')
            for m in ('GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'):
                check(m in allow, '%s: Allow %r lacks %s' % (method, allow, m))
            check(UPSTREAM_KEY not in r.body.decode('utf-8', 'replace'), '%s: the key came back' % method)
            # the connection stays usable
            c.send(build_request('GET', '/ping', [('Host', 'x')]))
            check(c.read_response(5).status == 200, '%s: the connection did not go on' % method)
        finally:
            c.close()
    c = HTTPConn(gw.port)
    try:
        c.send(b'CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n')
        r = c.read_response(5)
        check(r.status == 405, 'CONNECT: status %d' % r.status)
        check(c.wait_closed(2), 'CONNECT: the connection stayed open')
    finally:
        c.close()
    check(requests_seen(mock) == before, 'the upstream received %d of these' % (requests_seen(mock) - before))


@test(ANY)
def organization_headers_replaced(ctx):
    mock, gw = auth_pair(ctx, 'org', extra=['--upstream-org', 'org-server'],
                         env_extra={'OPENAI_PROJECT_ID': 'proj_server'})
    r = chat(gw.port, 'sk-team-a-2f9d1c7e5b', extra=[('OpenAI-Organization', 'org-client'),
                                                     ('OpenAI-Project', 'proj_client')])
    check(r.status == 200, 'status %d' % r.status)
    up = mock.last()['headers']
    check(up.get('openai-organization') == 'org-server', 'upstream OpenAI-Organization %r'
          % up.get('openai-organization'))
    check(up.get('openai-project') == 'proj_server', 'upstream OpenAI-Project %r' % up.get('openai-project'))
    mock2, gw2 = auth_pair(ctx)
    chat(gw2.port, 'sk-team-a-2f9d1c7e5b', extra=[('OpenAI-Organization', 'org-client')])
    check('openai-organization' not in mock2.last()['headers'], 'the client chose the organisation')


def no_secret_in(r, what, keys=(UPSTREAM_KEY,)):
    text = r.raw.decode('utf-8', 'replace') + r.body.decode('utf-8', 'replace')
    for k in keys:
        check(k not in text, '%s: a secret came back: %s' % (what, short(text, 500)))


@test()
def upstream_401_is_502_auth_error(ctx):
    mock, gw = auth_pair(ctx)
    for fault in ('status:401', 'status:403', 'echo:401'):
        r = chat(gw.port, 'sk-team-a-2f9d1c7e5b', extra=[('X-Mock-Fault', fault)])
        check(r.status == 502, '%s: status %d' % (fault, r.status))
        e = check_error_shape(r.body)
        check(e['code'] == 'upstream_auth_error', '%s: code %r' % (fault, e['code']))
        check("gateway's own" in e['message'] or 'server' in e['message'], '%s: message %r' % (fault, e['message']))
        no_secret_in(r, fault)


@test()
def upstream_echoed_key_scrubbed(ctx):
    mock, gw = auth_pair(ctx)
    client_key = 'sk-team-a-2f9d1c7e5b'
    body = chat_body(False, user=client_key)   # a client that put its own key in the body
    r = chat(gw.port, client_key, body=body, extra=[('X-Mock-Fault', 'echo:400')])
    check(r.status == 400, 'status %d %s' % (r.status, short(r.body)))
    check_error_shape(r.body)
    no_secret_in(r, 'echo:400', (UPSTREAM_KEY, client_key))
    check('***' in r.body.decode() and r.header('x-mock-echo', '').startswith('*'),
          'the echoed key was not masked in place: %s' % short(r.raw + r.body, 500))
    # and in a streamed error event
    head, st, c, _ = stream_chat(gw.port, auth=False, body=chat_body(True, user=client_key),
                                 extra=[('Authorization', 'Bearer ' + client_key), ('X-Mock-Fault', 'echo-event')])
    c.close()
    text = st.raw.decode('utf-8', 'replace')
    check(head.status == 200 and st.errors(), 'no error event: %s' % short(text))
    check(UPSTREAM_KEY not in text and client_key not in text, 'a secret in the stream: %s' % short(text, 600))


@test()
def upstream_html_error_wrapped(ctx):
    mock, gw = auth_pair(ctx)
    rid = 'html-' + uuid.uuid4().hex[:6]
    r = chat(gw.port, 'sk-team-a-2f9d1c7e5b', extra=[('X-Mock-Fault', 'html:500'), ('X-Request-Id', rid)])
    check(r.status == 500, 'status %d' % r.status)
    check(r.header('content-type', '').startswith('application/json'), 'Content-Type %r' % r.header('content-type'))
    e = check_error_shape(r.body)
    check(e['message'] == 'upstream returned 500 with a non-JSON body', 'message %r' % e['message'])
    no_secret_in(r, 'html:500')
    rec = gw.wait_log(lambda x: x.get('req_id') == rid)
    check(rec is not None and '<html>' in (rec.get('error') or ''), 'the log lacks the body start: %s'
          % short(json.dumps(rec)))
    check(UPSTREAM_KEY not in json.dumps(rec), 'the log line carries the key')
    r = chat(gw.port, 'sk-team-a-2f9d1c7e5b', extra=[('X-Mock-Fault', 'status:500')])
    check(r.status == 500 and check_error_shape(r.body)['message'] != 'upstream returned 500 with a non-JSON body',
          'a JSON 500 was wrapped')


@test(ANY)
def models_list_with_key(ctx):
    mock, gw = auth_pair(ctx)
    r = call(gw.port, 'GET', '/v1/models', key_headers(gw.port, 'sk-team-a-2f9d1c7e5b'))
    check(r.status == 200, 'status %d' % r.status)
    j = r.json()
    check(j.get('object') == 'list' and len(j.get('data', [])) >= 1, 'models %s' % short(r.body))


@test(ANY)
def traceparent_generated_when_absent_or_invalid(ctx):
    mock, gw = auth_pair(ctx)
    tp_re = re.compile(r'^00-[0-9a-f]{32}-[0-9a-f]{16}-01$')
    seen = set()
    for extra in ([], [('traceparent', 'not-a-trace')], [('traceparent', 'ff-' + '1' * 32 + '-' + '2' * 16 + '-01')]):
        r = chat(gw.port, 'sk-team-a-2f9d1c7e5b', extra=extra)
        check(r.status == 200, 'status %d' % r.status)
        got = mock.last()['headers'].get('traceparent', '')
        check(tp_re.match(got), 'upstream traceparent %r for a request with %s' % (got, extra))
        seen.add(got)
    check(len(seen) == 3, 'generated trace contexts repeat: %s' % seen)
