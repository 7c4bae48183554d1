# Events of any size up to --max-event, the error event past it, and the
# memory a stream holds (§6): the real gateway against the mock, whose
# X-Mock-Event-Size makes the first content delta that many bytes long.
# Exec'd into run.py's namespace: its helpers and @test are in scope.

import resource
import selectors

EVENT_TOO_LARGE_MSG = 'upstream sent an event larger than --max-event'


def events_pair(ctx, tag, extra=()):
    """A gateway with extra flags and a mock of its own."""
    return own_gateway(ctx, 'events-' + tag, extra)


def big_event_stream(gw, size, n=3, timeout=30.0):
    """A stream whose first content delta is `size` bytes; the body is read whole
    before it is parsed (parsing as it arrives is quadratic in Python)."""
    c = HTTPConn(gw.port)
    c.send(build_request('POST', '/v1/chat/completions',
                         chat_headers(gw.port, n=n, extra=[('X-Mock-Event-Size', str(size))]), chat_body(True)))
    head = c.read_head(5.0)
    if head.status != 200:
        return Response(head, c.read_body(head, 5.0)), None, c, 0
    st = Stream()
    try:
        body = b''.join(c.iter_chunks(timeout))
        st.terminated = c.terminated
    except ConnClosed:
        body, st.eof = b'', True
    parser = SSEParser()
    st.raw += body
    st.events = parser.feed(body, time.monotonic())
    st.leftover = bytes(parser.pending)
    return head, st, c, 0


@test(params=['1MiB', '16MiB'], timeout=90)
def big_event_relayed_whole(ctx, which):
    # the 16 MiB event's content leaves room for its JSON envelope under the default --max-event
    size = {'1MiB': 1 << 20, '16MiB': (16 << 20) - 1024}[which]
    _, gw = events_pair(ctx, 'default', ['--idle-timeout', '30s'])
    head, st, c, _ = big_event_stream(gw, size)
    c.close()
    check(st is not None, 'answered %d: %s' % (head.status, short(head.body)))
    check(head.status == 200 and st.terminated and not st.eof and st.timeout is None,
          'stream did not end whole: %s' % st.describe())
    check(not st.errors(), 'error event: %s' % short(st.errors()[0][0]['data'] if st.errors() else ''))
    deltas = [(j['choices'][0].get('delta') or {}).get('content') for e, j in st.parsed() if j.get('choices')]
    deltas = [d for d in deltas if d]
    check(deltas and deltas[0] == 'x' * size, 'the long delta is not %d bytes of x (got %d bytes)'
          % (size, len(deltas[0]) if deltas else -1))
    check(st.content() == 'x' * size + expected_content(3)[len(expected_content(1)):],
          'content after the long event differs: %s' % short(st.content()[size:]))
    check(st.datas()[-1] == '[DONE]', 'last event %s' % short(st.datas()[-1]))
    # the gateway still serves, and a long event's memory went back
    head, st, c, _ = stream_chat(gw.port, n=4)
    c.close()
    check_complete_stream(head, st, 4, 'after the long event: ')


@test(timeout=60)
def event_over_max_event_ends_stream(ctx):
    _, gw = events_pair(ctx, 'max64k', ['--max-event', '64KiB'])
    head, st, c, _ = big_event_stream(gw, 65 * 1024)
    c.close()
    check(st is not None, 'answered %d: %s' % (head.status, short(head.body)))
    err = check_error_end(head, st, 0)
    check(err['code'] == 'event_too_large', 'error code %r' % err['code'])
    check(err['type'] == 'upstream_error', 'error type %r' % err['type'])
    check(err['message'] == EVENT_TOO_LARGE_MSG, 'error message %r' % err['message'])
    check(err['param'] is None, 'error param %r' % err['param'])
    # an event under the limit still goes through on the same gateway
    head, st, c, _ = big_event_stream(gw, 32 * 1024)
    c.close()
    check(st is not None and st.terminated and not st.errors(), 'a 32 KiB event: %s'
          % (st.describe() if st else head.status))


@test(timeout=60)
def long_events_leave_no_memory_behind(ctx):
    _, gw = events_pair(ctx, 'default', ['--idle-timeout', '30s'])
    head, st, c, _ = big_event_stream(gw, 4 << 20)
    c.close()
    check(st is not None and st.terminated, 'first long stream did not end')
    before = gw.rss_kib()
    for _ in range(5):
        head, st, c, _ = big_event_stream(gw, 4 << 20)
        c.close()
        check(st is not None and st.terminated and not st.errors(), 'long stream: %s'
              % (st.describe() if st else head.status))
    grown = gw.rss_kib() - before
    figure('RSS after 5 more 4 MiB events: %+d KiB' % grown)
    check(grown < 4096, 'RSS grew by %d KiB over five 4 MiB events' % grown)


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def paced_streams(gw, count, n, delay, at_peak=None, timeout=60.0):
    """count concurrent paced streams read with one selector; returns how many ended
    whole. at_peak() runs once every stream has its head."""
    sel = selectors.DefaultSelector()
    conns = []
    req_for = lambda: build_request('POST', '/v1/chat/completions',
                                    chat_headers(gw.port, n=n, delay=delay, auth=False), chat_body(True))
    try:
        for _ in range(count):
            s = socket.create_connection(('127.0.0.1', gw.port), timeout=10)
            s.sendall(req_for())
            s.setblocking(False)
            st = {'sock': s, 'buf': bytearray(), 'done': False}
            conns.append(st)
            sel.register(s, selectors.EVENT_READ, st)
        end = time.monotonic() + bounded(timeout * SCALE)
        open_count, peaked = count, False
        while open_count and time.monotonic() < end:
            if not peaked and at_peak and all(b'\r\n\r\n' in st['buf'] for st in conns):
                peaked = True
                at_peak()
            for key, _ in sel.select(0.2):
                st = key.data
                try:
                    data = st['sock'].recv(65536)
                except BlockingIOError:
                    continue
                if data:
                    st['buf'] += data
                if not data or st['buf'].endswith(b'\r\n0\r\n\r\n'):
                    st['done'] = bool(data)
                    sel.unregister(st['sock'])
                    open_count -= 1
        return sum(1 for st in conns if st['done'] and b'data: [DONE]' in st['buf'])
    finally:
        for st in conns:
            st['sock'].close()
        sel.close()


@test(modes=('plain',), params=[1000, 4000], timeout=240)
def many_paced_streams(ctx, count):
    check(raise_nofile(count + 200) >= count + 100, 'cannot raise the open-file limit for %d streams' % count)
    _, gw = events_pair(ctx, 'many', ['--idle-timeout', '30s', '--first-byte-timeout', '30s',
                                      '--request-timeout', '120s', '--max-conns', '20000'])
    paced_streams(gw, 50, 2, 10)  # warm up pools and caches
    base = gw.rss_kib()
    peak = []
    done = paced_streams(gw, count, 40, 100, at_peak=lambda: peak.append(gw.rss_kib()))
    check(done == count, '%d of %d streams ended whole' % (done, count))
    check(peak, 'the streams never were all open at once')
    per = (peak[0] - base) * 1024.0 / count
    figure('RSS per paced stream at %d streams: %.1f KiB (base %d KiB, peak %d KiB)'
           % (count, per / 1024, base, peak[0]))
    check(per < 64 * 1024, 'RSS per stream %.0f bytes' % per)
    after = gw.rss_kib()
    check(after - base < peak[0] - base + 1024, 'RSS kept growing after the streams ended')


@test(timeout=60)
def reader_that_never_reads_holds_one_event(ctx):
    _, gw = events_pair(ctx, 'default', ['--idle-timeout', '30s'])
    size = 4 << 20
    before = gw.rss_kib()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(('127.0.0.1', gw.port))
    try:
        s.sendall(build_request('POST', '/v1/chat/completions',
                                chat_headers(gw.port, n=5000, extra=[('X-Mock-Event-Size', str(size))]),
                                chat_body(True)))
        time.sleep(1.5 * SCALE)
        # the 256 KiB high-water mark, the one long event, and slack for the
        # allocator; while the event moves from the read buffer to the
        # client's queue both hold it for a moment, so what counts is where
        # RSS settles
        bound = 256 + size // 1024 + 1024
        wait_until(lambda: gw.rss_kib() - before <= bound, 5.0 * SCALE)
        grown = gw.rss_kib() - before
        figure('client not reading a stream with a 4 MiB event: gateway RSS +%d KiB' % grown)
        check(grown <= bound, 'RSS grew by %d KiB' % grown)
    finally:
        s.close()
    check(wait_until(lambda: ping_ok(gw), 3.0), 'gateway stopped answering')
