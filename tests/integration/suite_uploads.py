# Bodies that are not JSON (§4): multipart uploads and other binary bodies
# stream up as they arrive, with backpressure, up to --max-upload.
# Exec'd into run.py's namespace (after suite_auth.py: its helpers are in scope).

def multipart(size, seed=7):
    """A multipart/form-data body of about `size` bytes and its boundary."""
    boundary = 'ssegate-%s' % uuid.uuid4().hex
    rnd = (hashlib.sha256(b'%d' % seed).digest() * (size // 32 + 2))
    head = ('--%s\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
            '--%s\r\nContent-Disposition: form-data; name="file"; filename="data.bin"\r\n'
            'Content-Type: application/octet-stream\r\n\r\n' % (boundary, boundary)).encode()
    tail = ('\r\n--%s--\r\n' % boundary).encode()
    return head + rnd[:max(0, size - len(head) - len(tail))] + tail, boundary


def upload_pair(ctx, tag='uploads', extra=()):
    return auth_pair(ctx, tag, extra=list(extra))


def send_upload(port, path, body, ctype, key='sk-team-a-2f9d1c7e5b', chunked=False, piece=65536,
                timeout=30.0, sample=None):
    """Sends a body (Content-Length, or chunked in pieces), returns the response.
    `sample` is called between pieces (for RSS)."""
    hs = [('Host', '127.0.0.1:%d' % port), ('Content-Type', ctype)]
    if key:
        hs.append(('Authorization', 'Bearer ' + key))
    c = HTTPConn(port, timeout=timeout)
    try:
        try:
            send_body(c, path, hs, body, chunked, piece, sample)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway answered (413, say) and closed before the body was all sent
        return c.read_response(timeout)
    finally:
        c.close()


def send_body(c, path, hs, body, chunked, piece, sample):
    """The request head and body, chunked in odd pieces or by Content-Length."""
    if chunked:
        hs.append(('Transfer-Encoding', 'chunked'))
        c.send(build_request('POST', path, hs, b'', add_length=False))
        sizes = [1, 7, 4096, piece, 3, piece * 2]
        i = k = 0
        while i < len(body):
            n = sizes[k % len(sizes)]
            k += 1
            part = body[i:i + n]
            i += n
            c.send(b'%x;note=x\r\n' % len(part) + part + b'\r\n')
            if sample and k % 16 == 0:
                sample()
        c.send(b'0\r\nX-Trailer: done\r\n\r\n')
    else:
        c.send(build_request('POST', path, hs, b'', add_length=False)[:-2] +
               b'Content-Length: %d\r\n\r\n' % len(body))
        for i in range(0, len(body), piece):
            c.send(body[i:i + piece])
            if sample and (i // piece) % 16 == 0:
                sample()


@test(ANY, timeout=60)
def upload_20mib_multipart_byte_exact(ctx):
    mock, gw = upload_pair(ctx)
    body, boundary = multipart(20 * 1024 * 1024)
    time.sleep(0.1)
    idle = gw.rss_kib()
    peak = [idle]

    def sample():
        peak[0] = max(peak[0], gw.rss_kib())
    r = send_upload(gw.port, '/v1/files', body, 'multipart/form-data; boundary=' + boundary, sample=sample)
    check(r.status == 200, 'status %d %s' % (r.status, short(r.body)))
    j = r.json()
    check(j.get('bytes') == len(body), 'the mock got %s bytes, want %d' % (j.get('bytes'), len(body)))
    check(j.get('sha256') == hashlib.sha256(body).hexdigest(), 'the body changed on its way up')
    check(j.get('content_type', '').startswith('multipart/form-data; boundary='), 'content type %r' % j.get('content_type'))
    figure('upload of 20 MiB: gateway RSS %d KiB idle, %d KiB peak (+%d KiB)' % (idle, peak[0], peak[0] - idle))
    if not is_asan(ctx.env.args.gateway):
        check(peak[0] - idle < 8 * 1024, 'RSS grew by %d KiB during the upload (bound 8 MiB)' % (peak[0] - idle))
    rec = gw.wait_log(lambda x: x.get('path') == '/v1/files' and x.get('status') == 200)
    check(rec is not None and rec.get('bytes_in', 0) >= len(body), 'log bytes_in %s' % (rec or {}).get('bytes_in'))


@test(timeout=60)
def upload_chunked_byte_exact(ctx):
    mock, gw = upload_pair(ctx)
    # printable, so the mock's /_mock/last (JSON) can carry it
    body = (hashlib.sha256(b'chunked').hexdigest().encode() * 100000)[:3 * 1024 * 1024 + 17]
    r = send_upload(gw.port, '/v1/audio/transcriptions', body, 'application/octet-stream', chunked=True)
    check(r.status == 200, 'status %d %s' % (r.status, short(r.body)))
    j = r.json()
    check(j.get('bytes') == len(body) and j.get('sha256') == hashlib.sha256(body).hexdigest(),
          'the mock got %s bytes / another body' % j.get('bytes'))
    # the connection-level framing was the client's: chunked up as well
    up = mock.last()['headers']
    check(up.get('transfer-encoding', '').lower() == 'chunked', 'upstream framing %r' % up.get('transfer-encoding'))
    # and the gateway goes on serving on a new request
    check(chat(gw.port, 'sk-team-a-2f9d1c7e5b').status == 200, 'a chat after the upload')


@test(ANY)
def upload_keepalive_then_next_request(ctx):
    mock, gw = upload_pair(ctx)
    c = HTTPConn(gw.port)
    try:
        for i in range(3):
            body = os.urandom(100000 + i)
            c.send(build_request('POST', '/v1/files', key_headers(gw.port, 'sk-team-a-2f9d1c7e5b')[:1] +
                                 [('Authorization', 'Bearer sk-team-a-2f9d1c7e5b'),
                                  ('Content-Type', 'application/octet-stream')], body))
            r = c.read_response(10)
            check(r.status == 200 and r.json().get('bytes') == len(body), 'upload %d: %d %s' % (i, r.status, short(r.body)))
        c.send(build_request('GET', '/ping', [('Host', 'x')]))
        check(c.read_response(5).status == 200, 'the connection did not go on after uploads')
    finally:
        c.close()


@test(ANY)
def upload_over_max_upload_413(ctx):
    mock, gw = upload_pair(ctx, 'uploads-small', extra=['--max-upload', '1MiB'])
    before = requests_seen(mock)
    body = b'x' * (2 * 1024 * 1024)
    c = HTTPConn(gw.port)
    try:
        c.send(b'POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-team-a-2f9d1c7e5b\r\n'
               b'Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n' % len(body))
        r = c.read_response(5)
        check(r.status == 413, 'Content-Length over --max-upload: status %d' % r.status)
        check_error_shape(r.body)
        check(c.wait_closed(3), 'the connection stayed open with the body unread')
    finally:
        c.close()
    check(requests_seen(mock) == before, 'the upstream was asked')
    r = send_upload(gw.port, '/v1/files', body, 'application/octet-stream', chunked=True)
    check(r.status == 413, 'chunked over --max-upload: status %d %s' % (r.status, short(r.body)))
    check(ping_ok(gw), 'the gateway stopped serving')


@test(ANY)
def upload_refused_without_key(ctx):
    mock, gw = upload_pair(ctx)
    before = requests_seen(mock)
    body = os.urandom(300000)
    c = HTTPConn(gw.port)
    try:
        c.send(b'POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n'
               b'Content-Length: %d\r\n\r\n' % len(body))
        r = c.read_response(5)
        check_401(r)
        check(c.wait_closed(3), 'the connection stayed open with the body unread')
    finally:
        c.close()
    check(requests_seen(mock) == before, 'the upstream was asked for a refused upload')


@test(ANY)
def upload_bad_chunked_400(ctx):
    mock, gw = upload_pair(ctx)
    c = HTTPConn(gw.port)
    try:
        c.send(b'POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-team-a-2f9d1c7e5b\r\n'
               b'Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n'
               b'4\r\nabcd\r\nzz\r\n')
        r = c.read_response(5)
        check(r.status == 400, 'status %d' % r.status)
        check(c.wait_closed(3), 'the connection stayed open after bad framing')
    finally:
        c.close()


@test(ANY, timeout=60)
def upload_answered_early_by_upstream(ctx):
    # the mock refuses bodies over 32 MiB as soon as it sees Content-Length
    mock, gw = upload_pair(ctx, 'uploads-big', extra=['--max-upload', '64MiB'])
    size = 40 * 1024 * 1024
    c = HTTPConn(gw.port, timeout=10)
    try:
        c.send(b'POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-team-a-2f9d1c7e5b\r\n'
               b'Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n' % size)
        chunk = b'y' * 65536
        sent = 0
        head = None
        while sent < size and head is None:
            if not c.try_send(chunk):
                break
            sent += len(chunk)
            if c.readable():
                head = c.read_head(5)
        if head is None:
            head = c.read_head(10)
        check(head.status == 413, 'status %d, want the upstream\'s 413' % head.status)
        check(sent < size, 'the whole body was sent before the answer')
    finally:
        c.close()
    check(ping_ok(gw), 'the gateway stopped serving')
