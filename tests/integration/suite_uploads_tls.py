# Uploads through a TLS upstream: the engine's output records are 1 KiB, so a
# body goes up as thousands of them; it must arrive byte for byte.
# Exec'd into run.py's namespace after suite_uploads.py (its helpers are in scope).


@test(('tls',), timeout=90)
def upload_over_tls_byte_exact(ctx):
    mock, gw = upload_pair(ctx, 'uploads-tls')
    body, boundary = multipart(3 * 1024 * 1024 + 5, seed=11)
    r = send_upload(gw.port, '/v1/files', body, 'multipart/form-data; boundary=' + boundary)
    check(r.status == 200, 'multipart: status %d %s' % (r.status, short(r.body)))
    j = r.json()
    check(j.get('bytes') == len(body) and j.get('sha256') == hashlib.sha256(body).hexdigest(),
          'multipart: the mock got %s bytes / another body' % j.get('bytes'))
    chunked = (hashlib.sha256(b'tls').hexdigest().encode() * 40000)[:1024 * 1024 + 3]
    r = send_upload(gw.port, '/v1/audio/transcriptions', chunked, 'application/octet-stream', chunked=True)
    check(r.status == 200, 'chunked: status %d %s' % (r.status, short(r.body)))
    j = r.json()
    check(j.get('bytes') == len(chunked) and j.get('sha256') == hashlib.sha256(chunked).hexdigest(),
          'chunked: the mock got %s bytes / another body' % j.get('bytes'))
    check(chat(gw.port, 'sk-team-a-2f9d1c7e5b').status == 200, 'a chat after the uploads')
