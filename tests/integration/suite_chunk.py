# The per-event path: the answer's first event leaves in a chunk of its own,
# ahead of the rest of the read, and the events after it keep their order
# and count. Exec'd into run.py's namespace: its helpers and @test are in scope.


@test()
def stream_first_event_in_its_own_chunk(ctx):
    """The first HTTP chunk of a streamed answer holds exactly its first event,
    however many more the same upstream read carried."""
    c = HTTPConn(ctx.gw.port)
    try:
        n = 12
        c.send(build_request('POST', '/v1/chat/completions', chat_headers(ctx.gw.port, n=n), chat_body(True)))
        head = c.read_head(5.0)
        check(head.status == 200 and head.is_chunked(), 'status %d, chunked %s' % (head.status, head.is_chunked()))
        chunks = list(c.iter_chunks(10.0))
        check(c.terminated, 'no terminal chunk')
        check(len(chunks) >= 2, '%d chunks' % len(chunks))
        first = chunks[0]
        events = [e for e in re.split(rb'\r\n\r\n|\n\n|\r\r', first) if e]
        check(len(events) == 1, 'first chunk carries %d events: %s' % (len(events), short(first)))
        check(b'"role"' in first, 'first event is not the role chunk: %s' % short(first))
        body = b''.join(chunks)
        datas = [e for e in re.split(rb'\r\n\r\n|\n\n|\r\r', body) if e.startswith(b'data:')]
        check(datas[-1].strip() == b'data: [DONE]', 'last event %s' % short(datas[-1]))
        content = [d for d in datas if b'"content":"' in d and b'"content":""' not in d]
        check(len(content) == n, '%d content events, expected %d' % (len(content), n))
    finally:
        c.close()
