# Resumable streams (§7): ids on every event, Last-Event-ID answered from the
# gateway's replay ring without asking the upstream again, /chat/stream for
# EventSource, and the replay window. Exec'd into run.py's namespace.

ID_RE = re.compile(r'^([A-Za-z0-9_-]{22})\.(\d+)$')


def resume_pair(ctx, tag='resume', extra=()):
    mock = ctx.env.mock('plain', 'resume-' + tag)

    def make():
        return Gateway(ctx.env.args.gateway, 'gw-resume-' + tag, 'http://127.0.0.1:%d/v1' % mock.port, None,
                       gw_args('slow') + list(extra))
    gw = ctx.env._get(('gw', 'plain', 'resume-' + tag), make)
    return mock, ctx.use(gw)


def raw_events(raw):
    """(id, data, event) for each event of an SSE body, in order."""
    out = []
    for block in raw.decode('utf-8', 'replace').replace('\r\n', '\n').split('\n\n'):
        if not block.strip():
            continue
        ev = {'id': None, 'data': [], 'event': None}
        for line in block.split('\n'):
            if line.startswith('id:'):
                ev['id'] = line[3:].strip()
            elif line.startswith('data:'):
                ev['data'].append(line[5:].lstrip(' ') if line[5:6] == ' ' else line[5:])
            elif line.startswith('event:'):
                ev['event'] = line[6:].strip()
        if ev['data'] or ev['event']:
            out.append(ev)
    return out


def content_of(evs):
    text = ''
    for e in evs:
        d = '\n'.join(e['data'])
        if d == '[DONE]':
            continue
        try:
            j = json.loads(d)
        except ValueError:
            continue
        for ch in j.get('choices', []):
            text += (ch.get('delta') or {}).get('content') or ''
    return text


def resumable_headers(port, n, delay=None, last_id=None, extra=()):
    hs = chat_headers(port, n=n, delay=delay, extra=[('Ssegate-Resumable', '1')] + list(extra))
    if last_id:
        hs.append(('Last-Event-ID', last_id))
    return hs


def open_stream(port, n, delay=None, last_id=None, extra=()):
    c = HTTPConn(port)
    c.send(build_request('POST', '/v1/chat/completions', resumable_headers(port, n, delay, last_id, extra),
                         chat_body(True)))
    return c, c.read_head(5)


@test(ANY)
def resume_ids_on_every_event(ctx):
    mock, gw = resume_pair(ctx)
    c, head = open_stream(gw.port, 6)
    try:
        check(head.status == 200, 'status %d' % head.status)
        token = head.header('ssegate-stream', '')
        check(re.match(r'^[A-Za-z0-9_-]{22}$', token), 'Ssegate-Stream %r' % token)
        st = read_stream(c, head, 10)
    finally:
        c.close()
    evs = raw_events(st.raw)
    ids = [ID_RE.match(e['id'] or '') for e in evs]
    check(all(ids), 'events without a TOKEN.N id: %s' % short([e['id'] for e in evs]))
    check([m.group(1) for m in ids] == [token] * len(ids), 'ids name another stream')
    check([int(m.group(2)) for m in ids] == list(range(1, len(ids) + 1)), 'ids do not count from 1')
    check(content_of(evs) == expected_content(6), 'content %s' % short(content_of(evs)))
    check(evs[-1]['data'] == ['[DONE]'], 'the last event is not [DONE]')
    # without the header (and without --resumable), no ids
    head, st, c, _ = stream_chat(gw.port, n=3)
    c.close()
    check(not head.header('ssegate-stream') and b'\nid:' not in b'\n' + st.raw, 'ids on a plain stream')


@test(ANY, timeout=30)
def resume_after_3_all_and_ended(ctx):
    mock, gw = resume_pair(ctx)
    before = mock.stats()['requests']
    c, head = open_stream(gw.port, 12, delay=40)
    token = head.header('ssegate-stream')
    got = read_stream(c, head, 10, stop=lambda s: len(raw_events(s.raw)) >= 3)
    c.close()   # the connection drops after 3 events; the upstream goes on
    first = raw_events(got.raw)[:3]
    last_id = first[-1]['id']
    t0 = time.monotonic()
    c2, head2 = open_stream(gw.port, 12, delay=40, last_id=last_id)
    try:
        check(head2.status == 200 and head2.header('ssegate-stream') == token, 'resume: %d %s' % (head2.status, head2.raw))
        t_first = []
        st2 = read_stream(c2, head2, 10, stop=lambda s: (t_first.append(time.monotonic()) if raw_events(s.raw) and
                                                          not t_first else None) and False)
    finally:
        c2.close()
    if t_first:
        figure('reconnect with Last-Event-ID mid-stream to its first event: %.2f ms (the upstream paces 40 ms an event)'
               % ((t_first[0] - t0) * 1000))
    rest = raw_events(st2.raw)
    check(int(rest[0]['id'].split('.')[1]) == 4, 'the resumed stream starts at %s, want event 4' % rest[0]['id'])
    check(content_of(first + rest) == expected_content(12), 'gap or repeat: %s' % short(content_of(first + rest)))
    check(st2.terminated, 'the resumed stream did not end properly')
    # after it ended: again from 3 (within the window), and from the very last event
    t0 = time.monotonic()
    c3, head3 = open_stream(gw.port, 12, last_id=last_id)
    t_replay = []
    st3 = read_stream(c3, head3, 5, stop=lambda s: (t_replay.append(time.monotonic()) if raw_events(s.raw) and
                                                     not t_replay else None) and False)
    c3.close()
    if t_replay:
        figure('reconnect with Last-Event-ID to the first replayed event (from the ring): %.2f ms'
               % ((t_replay[0] - t0) * 1000))
    check(content_of(first + raw_events(st3.raw)) == expected_content(12), 'a replay after the end differs')
    last = rest[-1]['id']
    c4, head4 = open_stream(gw.port, 12, last_id=last)
    st4 = read_stream(c4, head4, 5)
    c4.close()
    check(head4.status == 200 and st4.terminated and not raw_events(st4.raw), 'resume from the last event: %s'
          % short(st4.raw))
    check(mock.stats()['requests'] == before + 1, 'the upstream was asked %d times for one stream'
          % (mock.stats()['requests'] - before))
    rec = gw.wait_log(lambda x: x.get('resumed') is True and x.get('status') == 200)
    check(rec is not None, 'no log line with resumed=true')


@test(ANY, timeout=30)
def resume_after_client_away_2s(ctx):
    mock, gw = resume_pair(ctx)
    c, head = open_stream(gw.port, 30, delay=50)
    got = read_stream(c, head, 10, stop=lambda s: len(raw_events(s.raw)) >= 2)
    c.close()
    time.sleep(2.0)    # the upstream finishes meanwhile, into the ring
    evs = raw_events(got.raw)[:2]
    c2, head2 = open_stream(gw.port, 30, last_id=evs[-1]['id'])
    st = read_stream(c2, head2, 10)
    c2.close()
    check(content_of(evs + raw_events(st.raw)) == expected_content(30), 'what came back 2 s later is not the rest')


@test(ANY)
def resume_unknown_foreign_lost(ctx):
    mock, gw = resume_pair(ctx, 'small', ['--replay-buffer', '4KiB'])
    for bad in ('AAAAAAAAAAAAAAAAAAAAAA.3', 'not-an-id', ''):
        c, head = open_stream(gw.port, 3, last_id=bad or 'x')
        r = Response(head, c.read_body(head, 5))
        c.close()
        check(r.status == 404 and check_error_shape(r.body)['code'] == 'stream_not_found', '%r: %d %s'
              % (bad, r.status, short(r.body)))
    c, head = open_stream(gw.port, 200)
    st = read_stream(c, head, 10)
    c.close()
    first = raw_events(st.raw)[0]['id']
    c, head = open_stream(gw.port, 200, last_id=first)
    r = Response(head, c.read_body(head, 5))
    c.close()
    check(r.status == 409 and check_error_shape(r.body)['code'] == 'stream_position_lost',
          'a position the 4 KiB ring no longer holds: %d %s' % (r.status, short(r.body)))


@test(ANY)
def resume_foreign_key_404(ctx):
    mock, gw = auth_pair(ctx, 'resume-keys')
    hs = key_headers(gw.port, 'sk-team-a-2f9d1c7e5b', extra=[('Ssegate-Resumable', '1'), ('X-Mock-Chunks', '3')])
    c = HTTPConn(gw.port)
    c.send(build_request('POST', '/v1/chat/completions', hs, chat_body(True)))
    head = c.read_head(5)
    st = read_stream(c, head, 5)
    c.close()
    last = raw_events(st.raw)[0]['id']
    for key, want in (('sk-unnamed-8c1e55aa90', 404), ('sk-team-a-2f9d1c7e5b', 200)):
        hs = key_headers(gw.port, key, extra=[('Last-Event-ID', last)])
        r = call(gw.port, 'POST', '/v1/chat/completions', hs, chat_body(True))
        check(r.status == want, 'resume with %s: %d' % (key, r.status))


@test(ANY, timeout=30)
def resume_window_then_cancelled(ctx):
    mock, gw = resume_pair(ctx, 'window', ['--replay-window', '1s'])
    # nobody comes back: the upstream is cancelled once the window passes
    open0 = mock.stats()['open']
    c, head = open_stream(gw.port, 400, delay=50)   # 20 s of stream
    read_stream(c, head, 10, stop=lambda s: len(raw_events(s.raw)) >= 2)
    c.close()
    t0 = time.monotonic()
    closed = wait_until(lambda: mock.stats()['open'] <= open0 or None, 6)
    check(closed, 'the upstream was not cancelled after the window')
    figure('resumable stream with nobody attached: upstream cancelled %.1f s after the client left (window 1 s)'
           % (time.monotonic() - t0))
    # a stream that ended is found within the window, not after it
    c, head = open_stream(gw.port, 3)
    st = read_stream(c, head, 5)
    c.close()
    last = raw_events(st.raw)[-1]['id']
    time.sleep(1.6)
    c, head = open_stream(gw.port, 3, last_id=last)
    r = Response(head, c.read_body(head, 5))
    c.close()
    check(r.status == 404, 'after the window: %d' % r.status)


@test(ANY)
def resume_cancel_by_delete(ctx):
    mock, gw = resume_pair(ctx)
    open0 = mock.stats()['open']
    c, head = open_stream(gw.port, 400, delay=50)
    token = head.header('ssegate-stream')
    read_stream(c, head, 10, stop=lambda s: len(raw_events(s.raw)) >= 2)
    c.close()
    r = call(gw.port, 'DELETE', '/streams/' + token, [('Host', 'x')])
    check(r.status == 204, 'DELETE: %d %s' % (r.status, short(r.body)))
    check(wait_until(lambda: mock.stats()['open'] <= open0 or None, 3), 'the upstream stayed open after DELETE')
    r = call(gw.port, 'DELETE', '/streams/' + token, [('Host', 'x')])
    check(r.status == 404, 'a second DELETE: %d' % r.status)


@test(ANY)
def chat_stream_events(ctx):
    mock, gw = resume_pair(ctx)
    before = mock.stats()['requests']
    r = call(gw.port, 'GET', '/chat/stream?q=hello+world&model=m1', [('Host', 'x')], timeout=10)
    check(r.status == 200, 'status %d %s' % (r.status, short(r.body)))
    check(SSE_CT_RE.match(r.header('content-type', '')), 'Content-Type %r' % r.header('content-type'))
    text = r.body.decode()
    check(text.startswith('retry: 1000\n') or '\nretry: 1000\n' in text[:200], 'no retry: line first: %s' % short(text))
    evs = raw_events(r.body)
    msgs = [e for e in evs if e['event'] == 'message']
    got = ''.join(json.loads(e['data'][0])['content'] for e in msgs)
    check(got == expected_content(8), '/chat/stream content %s' % short(got))
    check(evs[-1]['event'] == 'done' and evs[-1]['data'] == ['[DONE]'], 'no done event at the end')
    check(all(ID_RE.match(e['id'] or '') for e in evs), 'events without ids')
    sent = json.loads(mock.last()['body'])
    check(sent['model'] == 'm1' and sent['messages'][-1]['content'] == 'hello world' and sent['stream'] is True,
          'upstream body %s' % short(mock.last()['body']))
    check(mock.stats()['requests'] == before + 1, 'the upstream was asked more than once')
    # resume it as EventSource does
    c = HTTPConn(gw.port)
    c.send(build_request('GET', '/chat/stream?q=hello+world', [('Host', 'x'), ('Last-Event-ID', msgs[2]['id'])]))
    head = c.read_head(5)
    st = read_stream(c, head, 5)
    c.close()
    again = ''.join(json.loads(e['data'][0])['content'] for e in raw_events(st.raw) if e['event'] == 'message')
    check(got.endswith(again) and len(again) < len(got), 'the resumed /chat/stream is not the rest')
    r = call(gw.port, 'GET', '/chat/stream', [('Host', 'x')])
    check(r.status == 400, 'no question: %d' % r.status)
    rec = gw.wait_log(lambda x: x.get('path') == '/chat/stream')
    check(rec is not None and 'hello' not in json.dumps(rec), 'the query string reached the log: %s' % rec)


@test(ANY)
def chat_stream_key_parameter(ctx):
    mock, gw = auth_pair(ctx, 'chatstream-keys')
    CLIENT_SECRETS.add('Bearer sk-team-a-2f9d1c7e5b')
    r = call(gw.port, 'GET', '/chat/stream?q=hi', [('Host', 'x')])
    check(r.status == 401, 'no key: %d' % r.status)
    r = call(gw.port, 'GET', '/chat/stream?q=hi&key=sk-team-a-2f9d1c7e5b', [('Host', 'x')], timeout=10)
    check(r.status == 200 and b'event: done' in r.body, 'key parameter: %d %s' % (r.status, short(r.body)))
    time.sleep(0.1)
    for line in gw.proc.err_snapshot():
        check('sk-team-a-2f9d1c7e5b' not in line, 'the key parameter was logged: %s' % short(line))


@test(ANY, timeout=60)
def resume_memory_returns_after_1000(ctx):
    mock, gw = resume_pair(ctx, 'mem', ['--replay-window', '1s'])
    idle = gw.rss_kib()
    c = HTTPConn(gw.port)
    try:
        for i in range(1000):
            c.send(build_request('POST', '/v1/chat/completions', resumable_headers(gw.port, 4), chat_body(True)))
            head = c.read_head(5)
            st = read_stream(c, head, 5)
            check(st.terminated, 'stream %d did not end' % i)
    finally:
        c.close()
    full = gw.rss_kib()
    time.sleep(2.5)
    get(gw.port, '/ping')
    after = gw.rss_kib()
    figure('1000 resumable streams: RSS %d KiB idle, %d KiB with their rings kept, %d KiB after the window'
           % (idle, full, after))
    if not is_asan(ctx.env.args.gateway):
        check(after - idle < 4096, 'RSS stayed %d KiB above idle after every stream expired' % (after - idle))


@test(ANY)
def resume_flag_makes_v1_streams_resumable(ctx):
    mock, gw = resume_pair(ctx, 'flag', ['--resumable'])
    before = mock.stats()['requests']
    head, st, c, _ = stream_chat(gw.port, n=6)   # no Ssegate-Resumable header: the flag is enough
    c.close()
    token = head.header('ssegate-stream', '')
    evs = raw_events(st.raw)
    check(token and all(ID_RE.match(e['id'] or '') for e in evs), 'ids missing with --resumable: %s' % short(st.raw))
    # an SDK client re-sends the same POST with Last-Event-ID
    c = HTTPConn(gw.port)
    c.send(build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=6) + [('Last-Event-ID', evs[1]['id'])],
                         chat_body(True)))
    h2 = c.read_head(5)
    st2 = read_stream(c, h2, 5)
    c.close()
    check(content_of(evs[:2] + raw_events(st2.raw)) == expected_content(6), 'the re-sent POST did not resume')
    check(mock.stats()['requests'] == before + 1, 'the upstream was asked again')


@test(ANY)
def chat_stream_default_model_from_upstream_list(ctx):
    mock, gw = resume_pair(ctx, 'default-model')
    r = call(gw.port, 'GET', '/v1/models', [('Host', 'x')])
    check(r.status == 200, '/v1/models: %d' % r.status)
    first = r.json()['data'][0]['id']
    r = call(gw.port, 'GET', '/chat/stream?q=which+model', [('Host', 'x')], timeout=10)
    check(r.status == 200, '/chat/stream: %d' % r.status)
    sent = json.loads(mock.last()['body'])
    check(sent['model'] == first, 'without ?model= the upstream was asked for %r, want its first model %r'
          % (sent['model'], first))


@test(ANY)
def resume_cancel_while_reading_then_leave(ctx):
    # the page's Stop: DELETE while its own connection still reads the stream, then it goes
    mock, gw = resume_pair(ctx)
    c, head = open_stream(gw.port, 400, delay=20)
    token = head.header('ssegate-stream')
    read_stream(c, head, 10, stop=lambda s: len(raw_events(s.raw)) >= 2)
    r = call(gw.port, 'DELETE', '/streams/' + token, [('Host', 'x')])
    check(r.status == 204, 'DELETE: %d' % r.status)
    time.sleep(0.1)
    c.close()
    time.sleep(0.1)
    check(ping_ok(gw), 'the gateway stopped answering')
