# Upstream TLS connections keep small buffers (src/upstream/tls.c): a request
# larger than the engine's 1 KiB output records goes up as many records, answers
# in full 16 KiB records still come in, and a pooled connection gives back the
# memory large answers touched while it waits. TLS only.
# Exec'd into run.py's namespace: its helpers and @test are in scope.

TLS_POOL_PADS = [0, 900, 1100, 5000, 70000, 200000]  # bytes of the request's "user" field
TLS_POOL_BIG_EVENT = 40000


def tls_pool_pair(ctx, tag):
    """A gateway with a TLS mock of its own, so that connection counts are ours."""
    mock = ctx.env.mock('tls', 'pool-' + tag)

    def make():
        return Gateway(ctx.env.args.gateway, 'gw-tls-pool-' + tag, 'https://localhost:%d/v1' % mock.port,
                       ctx.env.ca, GW_ARGS)
    return mock, ctx.use(ctx.env._get(('gw', 'tls', 'pool-' + tag), make))


def tls_pool_one(c, gw, mock, i, check_upstream=True):
    """Request i of the sequence; checks its answer and (when no other client is
    using the mock) what the upstream got."""
    pad = TLS_POOL_PADS[i % len(TLS_POOL_PADS)]
    kind = i % 4
    stream = kind in (0, 2)
    n = {0: 3, 1: 4000, 2: 5, 3: 1}[kind]  # 4000 tokens: an answer of many full records
    extra = [('X-Mock-Event-Size', str(TLS_POOL_BIG_EVENT))] if kind == 2 else []
    body = chat_body(stream, user='u' * pad)
    c.send(build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=n, extra=extra), body))
    what = 'request %d (%s, %d-byte body): ' % (i, 'stream' if stream else 'json', len(body))
    if kind == 0:
        head = c.read_head(10 * SCALE)
        check_complete_stream(head, read_stream(c, head, 10 * SCALE), n, what)
    elif kind == 2:  # one large event between small ones
        head = c.read_head(10 * SCALE)
        st = read_stream(c, head, 20 * SCALE)
        check(head.status == 200 and st.terminated and not st.errors(), what + st.describe())
        want = 'x' * TLS_POOL_BIG_EVENT + expected_content(n)[len(expected_content(1)):]
        check(st.content() == want, what + 'content differs: %s' % short(st.content()[-200:]))
    else:
        r = c.read_response(10 * SCALE)
        check(r.status == 200, what + 'status %d %s' % (r.status, short(r.body)))
        got = r.json()['choices'][0]['message']['content']
        check(got == expected_content(n), what + 'content %s' % short(got))
    if not check_upstream:
        return
    up = json.loads(mock.last()['body'])
    check(up.get('user') == 'u' * pad, what + 'the upstream got a user field of %d bytes, want %d'
          % (len(up.get('user') or ''), pad))


@test(('tls',), timeout=90)
def tls_pooled_connection_many_requests(ctx):
    """96 requests one after another on one client connection: request bodies from
    100 bytes to 200 KB (up to ~200 TLS records each), answers from single small
    records to many full ones, streamed and not; one upstream connection for all."""
    mock, gw = tls_pool_pair(ctx, 'seq')
    before = mock.stats()
    c = HTTPConn(gw.port)
    try:
        for i in range(96):
            tls_pool_one(c, gw, mock, i)
    finally:
        c.close()
    after = mock.stats()
    figure('tls pool: 96 sequential requests -> %d upstream connections'
           % (after['total'] - before['total']))
    check(after['requests'] - before['requests'] == 96, 'the mock saw %d requests'
          % (after['requests'] - before['requests']))
    check(after['total'] - before['total'] == 1, '%d upstream connections, want 1 (pooled)'
          % (after['total'] - before['total']))


@test(('tls',), timeout=90)
def tls_pooled_connections_resume_after_large_answers(ctx):
    """Eight clients at a time, each with requests of every size: several pooled
    upstream connections, each used for large and small answers in turn; every
    connection after the first resumes its session."""
    mock, gw = tls_pool_pair(ctx, 'par')
    before = mock.stats()
    errors = []

    def client(k):
        c = HTTPConn(gw.port)
        try:
            for i in range(12):
                tls_pool_one(c, gw, mock, k * 12 + i, check_upstream=False)
        except Exception as e:  # reported below, with the others
            errors.append('client %d: %s' % (k, e))
        finally:
            c.close()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(80 * SCALE)
    check(not any(t.is_alive() for t in threads), 'a client did not finish')
    check(not errors, '; '.join(errors[:3]))
    after = mock.stats()
    total, resumed = after['total'] - before['total'], after['resumed'] - before['resumed']
    figure('tls pool: 8 clients x 12 requests -> %d upstream connections, %d resumed' % (total, resumed))
    check(1 <= total <= 8 * 12, '%d upstream connections' % total)
    check(resumed >= total - 1, '%d of %d upstream connections resumed, want all but the first' % (resumed, total))
