#!/usr/bin/env python3
"""ssegate integration suite: the real gateway binary against tools/mock-upstream,
over plaintext and over TLS (a throw-away test CA made with the openssl CLI).

    python3 tests/integration/run.py --gateway ./ssegate --mock tools/mock-upstream \
        [-k substring] [--only-plain|--only-tls] [--scale F] [--list]
    python3 tests/integration/run.py --gateway build/ssegate-asan --mock build/mock-upstream-asan
        (ASan builds are detected: timing slack x2, the RSS bounds are not asserted)
    python3 tests/integration/run.py --serve --gateway ./ssegate --mock tools/mock-upstream
        (starts a mock and a gateway, prints the gateway's port, runs until stdin closes)

Measured figures (cancellation latency, timeouts, RSS, ...) are printed as `# ...` lines
just before the summary.

Python 3 standard library only. HTTP is spoken over raw sockets so that the tests
control framing byte by byte. Every process started here is killed by PID at the
end; every wait is bounded, and the whole suite stops at a global deadline.
The last line printed is exactly `N passed, N failed`; exit status 1 on any failure.
"""

import argparse
import json
import os
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

# ---------------------------------------------------------------------------
# Global knobs

SUITE_BUDGET_S = 420.0          # whole suite, hard stop (< 7 minutes)
PER_TEST_S = 30.0               # one test, hard stop (thread join)
SCALE = 1.0                     # multiplies waits for expected events (ASan)
DEADLINE = time.monotonic() + SUITE_BUDGET_S

UPSTREAM_KEY = 'upstream-secret'
FIRST_BYTE_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 1.0
HEADER_TIMEOUT_S = 1.0
MAX_BODY = 1024 * 1024
CANCEL_BOUND_S = 0.100

TORTURE = 'q"b\\s\n<é😀> '

FIGURES = []                    # measured numbers, printed before the summary
FIG_LOCK = threading.Lock()
CLIENT_SECRETS = set()          # every client Authorization value we sent

SSE_CT_RE = re.compile(r'^text/event-stream\s*;\s*charset=utf-8$', re.I)


def figure(text):
    with FIG_LOCK:
        FIGURES.append(text)


def expected_content(n):
    return ''.join(TORTURE if i % 5 == 4 else 'tok%d ' % i for i in range(n))


class TestFailure(Exception):
    pass


def fail(msg):
    raise TestFailure(msg)


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def bounded(t):
    """A wait of t seconds, cut to what is left of the suite's budget."""
    left = DEADLINE - time.monotonic()
    if left <= 0:
        raise TestFailure('suite deadline reached')
    return min(t, left)


def short(b, n=300):
    if isinstance(b, (bytes, bytearray)):
        b = bytes(b).decode('utf-8', 'replace')
    s = repr(b)
    return s if len(s) <= n else s[:n] + '...(%d chars)' % len(s)


# ---------------------------------------------------------------------------
# Processes

ALL_PROCS = []
PROCS_LOCK = threading.Lock()


class Proc:
    """A child process whose stdout and stderr are read line by line by threads."""

    def __init__(self, name, argv, env=None):
        self.name = name
        self.argv = argv
        self.out = []
        self.err = []
        self.cond = threading.Condition()
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env, start_new_session=True)
        with PROCS_LOCK:
            ALL_PROCS.append(self)
        for pipe, lines in ((self.p.stdout, self.out), (self.p.stderr, self.err)):
            threading.Thread(target=self._reader, args=(pipe, lines), daemon=True).start()

    def _reader(self, pipe, lines):
        try:
            for raw in iter(pipe.readline, b''):
                with self.cond:
                    lines.append(raw.decode('utf-8', 'replace').rstrip('\r\n'))
                    self.cond.notify_all()
        except (OSError, ValueError):
            pass
        with self.cond:
            self.cond.notify_all()

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def wait_line(self, which, pred, timeout, start=0):
        """First line (index >= start) of stdout/stderr matching pred, or None."""
        lines = self.out if which == 'out' else self.err
        end = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(lines):
                    if pred(lines[i]):
                        return i, lines[i]
                    i += 1
                left = end - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and i >= len(lines)):
                    # a dead process may still have lines in flight: one short grace
                    if self.p.poll() is not None and left > 0:
                        self.cond.wait(0.2)
                        if i < len(lines):
                            continue
                    return None
                self.cond.wait(min(left, 0.1))

    def err_snapshot(self):
        with self.cond:
            return list(self.err)

    def tail(self, n=15):
        with self.cond:
            return '\n'.join(self.err[-n:] + self.out[-3:])

    def stop(self):
        if self.p.poll() is None:
            try:
                os.kill(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    self.p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    pass
        # let the reader threads collect the last lines (sanitizer reports)
        time.sleep(0.05)

    def kill_now(self):
        if self.p.poll() is None:
            try:
                os.kill(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop_all():
    """SIGTERM to every child, a bounded wait for all of them, then SIGKILL."""
    with PROCS_LOCK:
        procs = list(ALL_PROCS)
    for p in procs:
        if p.p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    end = time.monotonic() + 3
    for p in procs:
        try:
            p.p.wait(timeout=max(0.01, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        p.kill_now()
    for p in procs:
        try:
            p.p.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
    time.sleep(0.05)   # let the reader threads collect the last lines (sanitizer reports)


def log_records_of(proc):
    out = []
    for line in proc.err_snapshot():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if isinstance(j, dict):
            out.append(j)
    return out


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith('SSEGATE_') and k not in ('OPENAI_API_KEY', 'OPENAI_BASE_URL')}
    if extra:
        env.update(extra)
    return env


class Mock:
    def __init__(self, binary, name, tls=None, ca=None, expect_key=UPSTREAM_KEY, extra=(), port=0):
        argv = [binary, '--listen', '127.0.0.1:%d' % port]
        if tls:
            argv += ['--tls-cert', tls[0], '--tls-key', tls[1]]
        if expect_key:
            argv += ['--expect-key', expect_key]
        argv += list(extra)
        self.name = name
        self.tls = bool(tls)
        self.ca = ca
        self.proc = Proc(name, argv, env=clean_env())
        got = self.proc.wait_line('out', lambda l: l.startswith('LISTEN '), 10 * SCALE)
        if not got:
            raise RuntimeError('%s did not print LISTEN (exit %s): %s'
                               % (name, self.proc.p.poll(), self.proc.tail()))
        m = re.match(r'LISTEN 127\.0\.0\.1:(\d+)\s*$', got[1])
        if not m:
            raise RuntimeError('%s: unexpected LISTEN line %r' % (name, got[1]))
        self.port = int(m.group(1))
        self._conn = None
        self._lock = threading.Lock()

    def _connect(self):
        s = socket.create_connection(('127.0.0.1', self.port), timeout=bounded(5 * SCALE))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.ca)
            s = ctx.wrap_socket(s, server_hostname='localhost')
        return HTTPConn(sock=s)

    def request(self, method, path, headers=(), body=b'', timeout=5.0):
        """A request straight to the mock on a kept-alive connection (retried once)."""
        hs = [('Host', 'localhost:%d' % self.port)] + list(headers)
        raw = build_request(method, path, hs, body)
        with self._lock:
            for attempt in (0, 1):
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    self._conn.send(raw)
                    resp = self._conn.read_response(timeout=timeout, method=method)
                    if resp.header('connection', '').lower() == 'close':
                        self._conn.close()
                        self._conn = None
                    return resp
                except (OSError, TestFailure, ssl.SSLError):
                    if self._conn:
                        self._conn.close()
                    self._conn = None
                    if attempt:
                        raise

    def stats(self):
        r = self.request('GET', '/_mock/stats')
        check(r.status == 200, 'mock /_mock/stats answered %d' % r.status)
        return json.loads(r.body)

    def last(self):
        r = self.request('GET', '/_mock/last')
        check(r.status == 200, 'mock /_mock/last answered %d' % r.status)
        return json.loads(r.body)


class Gateway:
    def __init__(self, binary, name, upstream, ca_file=None, extra=(), env_extra=None):
        argv = [binary, '--listen', '127.0.0.1:0', '--upstream', upstream, '--log-format', 'json']
        if ca_file:
            argv += ['--ca-file', ca_file]
        argv += list(extra)
        env = {'OPENAI_API_KEY': UPSTREAM_KEY}
        if env_extra:
            env.update(env_extra)
        self.name = name
        self.argv = argv
        self.proc = Proc(name, argv, env=clean_env(env))
        got = self.proc.wait_line('err', lambda l: '"listen"' in l, 10 * SCALE)
        if not got:
            raise RuntimeError('%s printed no "listen" line (exit %s): %s'
                               % (name, self.proc.p.poll(), self.proc.tail()))
        m = re.search(r'"listen"\s*:\s*"127\.0\.0\.1:(\d+)"', got[1])
        if not m:
            raise RuntimeError('%s: cannot find the port in %r' % (name, got[1]))
        self.port = int(m.group(1))
        self.first_line = got[1]

    @property
    def pid(self):
        return self.proc.pid

    def log_records(self):
        return log_records_of(self.proc)

    def wait_log(self, pred, timeout=3.0):
        end = time.monotonic() + bounded(timeout * SCALE)
        while True:
            for r in self.log_records():
                if pred(r):
                    return r
            if time.monotonic() >= end:
                return None
            time.sleep(0.02)

    def fd_count(self):
        return len(os.listdir('/proc/%d/fd' % self.pid))

    def rss_kib(self):
        with open('/proc/%d/status' % self.pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
        return -1


# ---------------------------------------------------------------------------
# Raw HTTP/1.1 client

class ConnClosed(TestFailure):
    pass


class Head:
    def __init__(self, status, reason, version, headers, raw):
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers  # list of (name, value)
        self.raw = raw
        self.body = b''

    def all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def header(self, name, default=None):
        vs = self.all(name)
        return vs[0] if vs else default

    def is_chunked(self):
        return any('chunked' in v.lower() for v in self.all('transfer-encoding'))


class Response(Head):
    def __init__(self, head, body):
        Head.__init__(self, head.status, head.reason, head.version, head.headers, head.raw)
        self.body = body

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            fail('status %d: body is not JSON: %s' % (self.status, short(self.body)))


def build_request(method, path, headers, body=b'', add_length=True):
    if isinstance(body, str):
        body = body.encode()
    lines = ['%s %s HTTP/1.1' % (method, path)]
    names = set()
    for k, v in headers:
        lines.append('%s: %s' % (k, v))
        names.add(k.lower())
    if add_length and body and 'content-length' not in names and 'transfer-encoding' not in names:
        lines.append('Content-Length: %d' % len(body))
    return ('\r\n'.join(lines) + '\r\n\r\n').encode('utf-8') + body


class HTTPConn:
    def __init__(self, port=None, sock=None, timeout=5.0):
        if sock is None:
            sock = socket.create_connection(('127.0.0.1', port), timeout=bounded(timeout * SCALE))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def send(self, data):
        self.sock.settimeout(bounded(5 * SCALE))
        self.sock.sendall(data)

    def try_send(self, data):
        """Send what the peer accepts; a peer that closed early is not an error here."""
        try:
            self.send(data)
            return True
        except (BrokenPipeError, ConnectionResetError, socket.timeout, ssl.SSLError):
            return False

    def readable(self):
        """True when the peer has sent something (or closed): stop sending then."""
        if self.buf:
            return True
        r, _, _ = select.select([self.sock], [], [], 0)
        return bool(r)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def rst_close(self):
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        self.sock.close()

    def fill(self, deadline, what):
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TestFailure('timed out waiting for %s' % what)
        self.sock.settimeout(bounded(left))
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            raise TestFailure('timed out waiting for %s' % what)
        except ConnectionResetError:
            self.eof = True
            self.reset = True
            return False
        except ssl.SSLError as e:
            self.eof = True
            raise TestFailure('TLS error while waiting for %s: %s' % (what, e))
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def read_line(self, deadline, what):
        while True:
            i = self.buf.find(b'\r\n')
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            if not self.fill(deadline, what):
                raise ConnClosed('connection %s while waiting for %s (have %s)'
                                 % ('reset' if self.reset else 'closed', what, short(self.buf)))

    def read_exact(self, n, deadline, what):
        while len(self.buf) < n:
            if not self.fill(deadline, what):
                raise ConnClosed('connection %s while waiting for %s (%d of %d bytes)'
                                 % ('reset' if self.reset else 'closed', what, len(self.buf), n))
        d = bytes(self.buf[:n])
        del self.buf[:n]
        return d

    def read_head(self, timeout=5.0, allow_1xx=False):
        deadline = time.monotonic() + bounded(timeout * SCALE)
        while True:
            while True:
                i = self.buf.find(b'\r\n\r\n')
                if i >= 0:
                    break
                if len(self.buf) > 65536:
                    fail('response head larger than 64 KiB')
                if not self.fill(deadline, 'the response head'):
                    raise ConnClosed('connection %s before a response head (got %s)'
                                     % ('reset' if self.reset else 'closed', short(self.buf)))
            raw = bytes(self.buf[:i + 4])
            del self.buf[:i + 4]
            text = raw.decode('latin-1')
            lines = text.split('\r\n')
            m = re.match(r'^(HTTP/1\.[01]) (\d{3})(?: (.*))?$', lines[0])
            if not m:
                fail('bad status line %r' % lines[0])
            headers = []
            for l in lines[1:]:
                if not l:
                    continue
                if ':' not in l:
                    fail('bad response header line %r' % l)
                k, v = l.split(':', 1)
                headers.append((k.strip(), v.strip()))
            head = Head(int(m.group(2)), m.group(3) or '', m.group(1), headers, raw)
            if 100 <= head.status < 200 and not allow_1xx:
                continue
            return head

    def iter_chunks(self, timeout):
        """Decoded chunk payloads of a chunked body; sets self.terminated on the 0-chunk."""
        self.terminated = False
        deadline = time.monotonic() + bounded(timeout * SCALE)
        while True:
            line = self.read_line(deadline, 'a chunk-size line')
            size = line.split(b';', 1)[0].strip()
            if not re.fullmatch(rb'[0-9a-fA-F]{1,16}', size):
                fail('bad chunk-size line %s' % short(line))
            n = int(size, 16)
            if n == 0:
                while self.read_line(deadline, 'the chunked trailer') != b'':
                    pass
                self.terminated = True
                return
            data = self.read_exact(n, deadline, 'chunk data')
            if self.read_exact(2, deadline, 'the CRLF after chunk data') != b'\r\n':
                fail('chunk data not followed by CRLF')
            yield data

    def read_body(self, head, timeout=5.0, method='GET'):
        if method == 'HEAD' or head.status in (204, 304) or head.status < 200:
            return b''
        if head.is_chunked():
            return b''.join(self.iter_chunks(timeout))
        cl = head.all('content-length')
        deadline = time.monotonic() + bounded(timeout * SCALE)
        if cl:
            check(len(cl) == 1 and cl[0].isdigit(), 'bad Content-Length in response: %r' % cl)
            return self.read_exact(int(cl[0]), deadline, 'the response body')
        while self.fill(deadline, 'the close-delimited body'):
            pass
        d = bytes(self.buf)
        self.buf.clear()
        return d

    def read_response(self, timeout=5.0, method='GET', allow_1xx=False):
        head = self.read_head(timeout, allow_1xx=allow_1xx)
        return Response(head, self.read_body(head, timeout, method))

    def wait_closed(self, timeout=2.0):
        """True when the peer closes (FIN or RST) within timeout; extra bytes are an error."""
        deadline = time.monotonic() + bounded(timeout * SCALE)
        while not self.eof:
            try:
                if not self.fill(deadline, 'the connection to close'):
                    break
            except TestFailure:
                return False
        check(not self.buf, 'bytes after the response: %s' % short(self.buf))
        return True


class SSEParser:
    """Incremental SSE parser: LF, CRLF and CR line ends, comments, multi-line data."""

    def __init__(self):
        self.pending = bytearray()
        self.data = []
        self.event = None
        self.id = None
        self.comments = []

    def feed(self, chunk, t):
        self.pending += chunk
        out = []
        while True:
            i_n = self.pending.find(b'\n')
            i_r = self.pending.find(b'\r')
            if i_n < 0 and i_r < 0:
                break
            if i_r >= 0 and (i_n < 0 or i_r < i_n):
                if i_r + 1 == len(self.pending):
                    break  # a CR at the end: maybe CRLF split across chunks
                end, skip = i_r, (2 if self.pending[i_r + 1:i_r + 2] == b'\n' else 1)
            else:
                end, skip = i_n, 1
            raw = bytes(self.pending[:end])
            del self.pending[:end + skip]
            try:
                line = raw.decode('utf-8')
            except UnicodeDecodeError:
                fail('SSE line is not UTF-8: %s' % short(raw))
            ev = self._line(line, t)
            if ev:
                out.append(ev)
        return out

    def _line(self, line, t):
        if line == '':
            if not self.data:
                self.event = None
                return None
            ev = {'data': '\n'.join(self.data), 'event': self.event, 'id': self.id, 't': t}
            self.data = []
            self.event = None
            return ev
        if line.startswith(':'):
            self.comments.append(line)
            return None
        if ':' in line:
            field, value = line.split(':', 1)
            if value.startswith(' '):
                value = value[1:]
        else:
            field, value = line, ''
        if field == 'data':
            self.data.append(value)
        elif field == 'event':
            self.event = value
        elif field == 'id':
            self.id = value
        return None


class Stream:
    """The outcome of reading one SSE response."""

    def __init__(self):
        self.events = []
        self.raw = bytearray()
        self.terminated = False   # saw the terminal 0-chunk
        self.eof = False          # connection closed before the terminal chunk
        self.timeout = None       # text when a wait timed out
        self.t0 = time.monotonic()
        self.leftover = b''       # bytes in the SSE parser after the end
        self.comments = []

    def datas(self):
        return [e['data'] for e in self.events]

    def comments_seen(self):
        return self.comments

    def parsed(self):
        """(event, json-or-None) for every event that is not [DONE]."""
        out = []
        for e in self.events:
            if e['data'] == '[DONE]':
                continue
            try:
                out.append((e, json.loads(e['data'])))
            except ValueError:
                fail('SSE data is not JSON: %s' % short(e['data']))
        return out

    def content(self):
        s = []
        for e, j in self.parsed():
            if isinstance(j, dict) and j.get('choices'):
                c = (j['choices'][0].get('delta') or {}).get('content')
                if c:
                    s.append(c)
        return ''.join(s)

    def content_events(self):
        return [e for e, j in self.parsed()
                if isinstance(j, dict) and j.get('choices')
                and (j['choices'][0].get('delta') or {}).get('content')]

    def errors(self):
        return [(e, j) for e, j in self.parsed() if isinstance(j, dict) and 'error' in j]

    def describe(self):
        return ('%d events, terminated=%s eof=%s timeout=%s, last data: %s'
                % (len(self.events), self.terminated, self.eof, self.timeout,
                   short(self.events[-1]['data'] if self.events else None, 200)))


def read_stream(conn, head, timeout=10.0, stop=None):
    """Reads the SSE body of head's response. stop(stream) -> True stops early."""
    st = Stream()
    check(head.is_chunked(), 'SSE response is not chunked: %s' % short(head.raw))
    parser = SSEParser()
    st.comments = parser.comments   # the same list: visible to stop() as comments arrive
    try:
        for data in conn.iter_chunks(timeout):
            now = time.monotonic()
            st.raw += data
            st.events.extend(parser.feed(data, now))
            if stop and stop(st):
                return st
        st.terminated = conn.terminated
    except ConnClosed:
        st.eof = True
    except TestFailure as e:
        if 'timed out' in str(e):
            st.timeout = str(e)
        else:
            raise
    st.leftover = bytes(parser.pending) + ('\n'.join(parser.data)).encode()
    return st


# ---------------------------------------------------------------------------
# Request helpers

def chat_body(stream=True, **extra):
    b = {'model': 'gpt-4o-mini', 'stream': stream,
         'messages': [{'role': 'user', 'content': 'hello'}]}
    b.update(extra)
    return json.dumps(b).encode()


def chat_headers(port, n=None, fault=None, delay=None, rid=None, auth=True, extra=()):
    hs = [('Host', '127.0.0.1:%d' % port), ('Content-Type', 'application/json')]
    if auth:
        secret = 'Bearer client-secret-%s' % uuid.uuid4().hex[:12]
        CLIENT_SECRETS.add(secret)
        hs.append(('Authorization', secret))
    if n is not None:
        hs.append(('X-Mock-Chunks', str(n)))
    if fault:
        hs.append(('X-Mock-Fault', fault))
    if delay is not None:
        hs.append(('X-Mock-Delay-Ms', str(delay)))
    if rid:
        hs.append(('X-Request-Id', rid))
    hs.extend(extra)
    return hs


def get(port, path, headers=(), timeout=5.0):
    c = HTTPConn(port)
    try:
        c.send(build_request('GET', path, [('Host', '127.0.0.1:%d' % port)] + list(headers)))
        return c.read_response(timeout)
    finally:
        c.close()


def own_gateway(ctx, name, extra=()):
    """A gateway with extra flags and a mock of its own, kept for the run
    under `name`: (mock, gateway)."""
    mock = ctx.env.mock(ctx.mode, name)

    def make():
        if ctx.mode == 'tls':
            up, ca = 'https://localhost:%d/v1' % mock.port, ctx.env.ca
        else:
            up, ca = 'http://127.0.0.1:%d/v1' % mock.port, None
        return Gateway(ctx.env.args.gateway, 'gw-%s-%s' % (ctx.mode, name), up, ca, GW_ARGS + list(extra))
    return mock, ctx.use(ctx.env._get(('gw', ctx.mode, name), make))


def post_chat(port, stream=False, timeout=5.0, body=None, **kw):
    c = HTTPConn(port)
    try:
        c.send(build_request('POST', '/v1/chat/completions', chat_headers(port, **kw),
                             body if body is not None else chat_body(stream)))
        return c.read_response(timeout)
    finally:
        c.close()


def stream_chat(port, timeout=10.0, body=None, conn=None, head_timeout=5.0, **kw):
    """POSTs a streaming chat request; returns (head, Stream or None, conn, t_sent)."""
    c = conn or HTTPConn(port)
    t_sent = time.monotonic()
    c.send(build_request('POST', '/v1/chat/completions', chat_headers(port, **kw),
                         body if body is not None else chat_body(True)))
    head = c.read_head(head_timeout)
    if head.status != 200:
        body_bytes = c.read_body(head, 5.0)
        return Response(head, body_bytes), None, c, t_sent
    st = read_stream(c, head, timeout)
    st.t0 = t_sent
    return head, st, c, t_sent


def check_error_shape(body, what='error body'):
    try:
        j = json.loads(body)
    except ValueError:
        fail('%s is not JSON: %s' % (what, short(body)))
    check(isinstance(j, dict) and isinstance(j.get('error'), dict),
          '%s lacks an "error" object: %s' % (what, short(body)))
    e = j['error']
    missing = [k for k in ('message', 'type', 'param', 'code') if k not in e]
    check(not missing, '%s: error object lacks %s: %s' % (what, missing, short(body)))
    check(isinstance(e['message'], str) and e['message'],
          '%s: empty error message: %s' % (what, short(body)))
    check(UPSTREAM_KEY not in body.decode('utf-8', 'replace'),
          '%s contains the upstream key' % what)
    return e


def check_sse_headers(head):
    ct = head.header('content-type', '')
    check(SSE_CT_RE.match(ct), 'Content-Type is %r, want text/event-stream; charset=utf-8' % ct)
    cc = head.header('cache-control', '')
    check('no-cache' in cc.lower(), 'Cache-Control is %r, want no-cache' % cc)
    xab = head.header('x-accel-buffering', '')
    check(xab.lower() == 'no', 'X-Accel-Buffering is %r, want no' % xab)
    check(head.version == 'HTTP/1.1', 'status line version %s' % head.version)
    check(head.is_chunked(), 'Transfer-Encoding is %r, want chunked' % head.all('transfer-encoding'))
    check(not head.all('content-length'), 'SSE response has Content-Length')


def check_complete_stream(head, st, n, what=''):
    check(head.status == 200, '%sstatus %d' % (what, head.status))
    check(st.timeout is None, '%stimed out: %s' % (what, st.describe()))
    check(not st.eof, '%sconnection closed before the terminal chunk: %s' % (what, st.describe()))
    check(st.terminated, '%sno terminal chunk: %s' % (what, st.describe()))
    errs = st.errors()
    check(not errs, '%sunexpected error event: %s' % (what, short(errs[0][0]['data']) if errs else ''))
    got = st.content()
    want = expected_content(n)
    check(got == want, '%scontent mismatch:\n  got  %s\n  want %s' % (what, short(got, 400), short(want, 400)))
    datas = st.datas()
    check(datas and datas[-1] == '[DONE]', '%slast event is %s, want [DONE]'
          % (what, short(datas[-1] if datas else None)))
    check(datas.count('[DONE]') == 1, '%s[DONE] appears %d times' % (what, datas.count('[DONE]')))
    check(not st.leftover.strip(), '%sbytes after the last event: %s' % (what, short(st.leftover)))


def check_error_end(head, st, max_content, what=''):
    """A stream that failed after the 200: content so far is a prefix, then an error event,
    then a proper end of the chunked body."""
    check(head.status == 200, '%sstatus %d' % (what, head.status))
    check(st.timeout is None, '%shung: %s' % (what, st.describe()))
    check(not st.eof, '%sconnection closed without the terminal chunk (silent truncation): %s'
          % (what, st.describe()))
    check(st.terminated, '%sno terminal chunk: %s' % (what, st.describe()))
    errs = st.errors()
    check(errs, '%sno data: {"error":...} event: %s' % (what, st.describe()))
    check(len(errs) == 1, '%s%d error events' % (what, len(errs)))
    e, j = errs[0]
    check(set(j.keys()) == {'error'}, '%serror event has extra keys: %s' % (what, short(e['data'])))
    check_error_shape(e['data'].encode(), what + 'error event')
    # nothing but an optional [DONE] after the error event
    idx = st.events.index(e)
    after = [x['data'] for x in st.events[idx + 1:]]
    check(after in ([], ['[DONE]']), '%sevents after the error event: %s' % (what, short(after)))
    got = st.content()
    want = expected_content(max_content)
    check(want.startswith(got), '%scontent before the error is not a prefix of the expected content: %s'
          % (what, short(got)))
    return j['error']


def ping_ok(gw, timeout=3.0):
    r = get(gw.port, '/ping', timeout=timeout)
    return r.status == 200 and r.json() == {'message': 'pong'}


def wait_until(pred, timeout, step=0.002):
    end = time.monotonic() + bounded(timeout)
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= end:
            return v
        time.sleep(step)


# ---------------------------------------------------------------------------
# Test CA

def openssl(args, cwd):
    r = subprocess.run(['openssl'] + args, cwd=cwd, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    if r.returncode != 0:
        raise RuntimeError('openssl %s failed: %s' % (' '.join(args), r.stderr.decode(errors='replace')))


CA_CNF = """
[ ca ]
default_ca = testca
[ testca ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}/newcerts
serial = {dir}/serial
default_md = sha256
policy = pol
unique_subject = no
email_in_dn = no
copy_extensions = none
[ pol ]
commonName = supplied
[ leaf ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:{name}
"""


def make_certs(d):
    """Files under d: ca.pem; <kind>-chain.pem and <kind>-key.pem for kind in
    good (localhost), wronghost (wrong.example), expired (localhost, past dates),
    selfsigned (localhost, self-signed), otherca (localhost, signed by another CA)."""
    os.makedirs(os.path.join(d, 'newcerts'), exist_ok=True)
    open(os.path.join(d, 'index.txt'), 'w').close()
    with open(os.path.join(d, 'serial'), 'w') as f:
        f.write('1000\n')

    def key(name):
        openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', name], d)

    def ca(name, cn):
        key(name + '.key')
        openssl(['req', '-x509', '-new', '-key', name + '.key', '-sha256', '-days', '30',
                 '-subj', '/CN=' + cn,
                 '-addext', 'basicConstraints=critical,CA:TRUE',
                 '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
                 '-out', name + '.pem'], d)

    def leaf(kind, dns, ca_name, start=None, end=None):
        cnf = os.path.join(d, kind + '.cnf')
        with open(cnf, 'w') as f:
            f.write(CA_CNF.format(dir=d, name=dns))
        key(kind + '-key.pem')
        openssl(['req', '-new', '-key', kind + '-key.pem', '-subj', '/CN=' + dns,
                 '-out', kind + '.csr'], d)
        dates = ['-startdate', start, '-enddate', end] if start else ['-days', '30']
        openssl(['ca', '-batch', '-notext', '-config', cnf, '-extensions', 'leaf',
                 '-cert', ca_name + '.pem', '-keyfile', ca_name + '.key',
                 '-in', kind + '.csr', '-out', kind + '.pem'] + dates, d)
        with open(os.path.join(d, kind + '-chain.pem'), 'w') as out:
            for part in (kind + '.pem', ca_name + '.pem'):
                with open(os.path.join(d, part)) as f:
                    out.write(f.read())

    ca('ca', 'ssegate test CA')
    ca('other', 'unrelated test CA')
    leaf('good', 'localhost', 'ca')
    leaf('wronghost', 'wrong.example', 'ca')
    leaf('expired', 'localhost', 'ca', '20200101000000Z', '20210101000000Z')
    leaf('otherca', 'localhost', 'other')
    key('selfsigned-key.pem')
    openssl(['req', '-x509', '-new', '-key', 'selfsigned-key.pem', '-sha256', '-days', '30',
             '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost',
             '-addext', 'basicConstraints=critical,CA:FALSE',
             '-out', 'selfsigned-chain.pem'], d)
    return d


# ---------------------------------------------------------------------------
# Fixtures: processes started lazily and shared between tests

# The connect budget also covers the TLS handshake: under ASan, twenty of them at
# once through one single-threaded mock can take most of a second. No test
# depends on its value (a refused connect fails at once).
GW_DEFAULTS = [('--connect-timeout', '5s'), ('--first-byte-timeout', '1s'), ('--idle-timeout', '1s'),
               ('--request-timeout', '20s'), ('--header-timeout', '1s'), ('--keepalive-timeout', '5s'),
               ('--max-body', '1MiB'), ('--retries', '0')]
GW_ARGS = [x for kv in GW_DEFAULTS for x in kv]

# gateways with other settings, by tag
GW_VARIANTS = {
    'short': {'--keepalive-timeout': '1s', '--request-timeout': '2s'},
    'maxconn': {'--max-conns': '3'},
    'slow': {'--idle-timeout': '30s', '--first-byte-timeout': '30s'},
}


def gw_args(tag):
    over = dict(GW_VARIANTS.get(tag, {}))
    out = []
    for k, v in GW_DEFAULTS:
        out += [k, over.pop(k, v)]
    for k, v in over.items():
        out += [k, v]
    return out


def dead_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Env:
    def __init__(self, args, certdir):
        self.args = args
        self.certs = certdir
        self.ca = os.path.join(certdir, 'ca.pem')
        self.cache = {}
        self.lock = threading.RLock()

    def cert(self, kind):
        return (os.path.join(self.certs, kind + '-chain.pem'), os.path.join(self.certs, kind + '-key.pem'))

    def _get(self, key, make):
        with self.lock:
            obj = self.cache.get(key)
            if obj is not None and obj.proc.alive():
                return obj
            obj = make()
            self.cache[key] = obj
            return obj

    def mock(self, mode, tag='main', cert='good'):
        return self._get(('mock', mode, tag, cert), lambda: Mock(
            self.args.mock, 'mock-%s-%s-%s' % (mode, tag, cert),
            tls=self.cert(cert) if mode == 'tls' else None, ca=self.ca))

    def gateway(self, mode, tag='main', cert='good'):
        def make():
            m = self.mock(mode, tag, cert)
            if mode == 'tls':
                up, ca = 'https://localhost:%d/v1' % m.port, self.ca
            else:
                up, ca = 'http://127.0.0.1:%d/v1' % m.port, None
            return Gateway(self.args.gateway, 'gw-%s-%s-%s' % (mode, tag, cert), up, ca, gw_args(tag))
        return self._get(('gw', mode, tag, cert), make)

    def restart_mock(self, mode, tag, cert='good'):
        """Stops a mock and starts a new one on the same port."""
        with self.lock:
            key = ('mock', mode, tag, cert)
            old = self.cache[key]
            old.proc.stop()
            last = None
            for _ in range(20):
                try:
                    m = Mock(self.args.mock, old.name + '-again', tls=self.cert(cert) if mode == 'tls' else None,
                             ca=self.ca, port=old.port)
                    self.cache[key] = m
                    return m
                except RuntimeError as e:
                    last = e
                    time.sleep(0.1)
            raise TestFailure('could not restart the mock on port %d: %s' % (old.port, last))

    def refused_gateway(self, mode):
        def make():
            scheme, host = ('https', 'localhost') if mode == 'tls' else ('http', '127.0.0.1')
            return Gateway(self.args.gateway, 'gw-refused-' + mode,
                           '%s://%s:%d/v1' % (scheme, host, dead_port()), self.ca, GW_ARGS)
        return self._get(('gw-refused', mode), make)

    def gateways(self):
        with self.lock:
            return [v for k, v in self.cache.items() if isinstance(v, Gateway)]

    def procs(self):
        with self.lock:
            return list(self.cache.items())


class Ctx:
    def __init__(self, env, mode):
        self.env = env
        self.mode = mode
        self.used = []

    @property
    def gw(self):
        g = self.env.gateway(self.mode)
        if g not in self.used:
            self.used.append(g)
        return g

    @property
    def mock(self):
        return self.env.mock(self.mode)

    def pair(self, tag):
        g = self.env.gateway(self.mode, tag)
        if g not in self.used:
            self.used.append(g)
        return self.env.mock(self.mode, tag), g

    def use(self, g):
        if g not in self.used:
            self.used.append(g)
        return g


# ---------------------------------------------------------------------------
# Tests

TESTS = []   # (name, fn, mode, timeout)


def test(modes=('plain', 'tls'), timeout=PER_TEST_S, params=None):
    def deco(fn):
        for p in (params or [None]):
            for m in modes:
                name = fn.__name__
                if p is not None:
                    name += '[%s]' % p
                if len(modes) > 1:
                    name += '[%s]' % m
                TESTS.append((name, fn, m, timeout, p))
        return fn
    return deco


ANY = ('plain',)   # a test of the client side only: run once


# --- basic endpoints -------------------------------------------------------

@test(ANY)
def ping(ctx):
    r = get(ctx.gw.port, '/ping')
    check(r.status == 200, 'status %d' % r.status)
    check(r.json() == {'message': 'pong'}, 'body %s' % short(r.body))
    check('application/json' in r.header('content-type', ''), 'Content-Type %r' % r.header('content-type'))


@test(ANY, params=['/healthz', '/readyz'])
def health(ctx, path):
    r = get(ctx.gw.port, path)
    check(r.status == 200, 'status %d body %s' % (r.status, short(r.body)))


@test(ANY)
def unknown_path_404(ctx):
    r = get(ctx.gw.port, '/no/such/path')
    check(r.status == 404, 'status %d' % r.status)
    check_error_shape(r.body, '404 body')


@test(ANY)
def method_not_allowed_405(ctx):
    c = HTTPConn(ctx.gw.port)
    try:
        c.send(build_request('DELETE', '/ping', [('Host', 'x')]))
        r = c.read_response()
    finally:
        c.close()
    check(r.status == 405, 'DELETE /ping: status %d' % r.status)
    check_error_shape(r.body, '405 body')


@test()
def unknown_v1_path_relayed(ctx):
    r = get(ctx.gw.port, '/v1/no-such-endpoint', [('Authorization', 'Bearer x')])
    check(r.status == 404, 'status %d, want the mock\'s 404 relayed' % r.status)
    check_error_shape(r.body, 'relayed 404 body')


@test()
def models_relayed(ctx):
    r = get(ctx.gw.port, '/v1/models')
    check(r.status == 200, 'status %d body %s' % (r.status, short(r.body)))
    j = r.json()
    check(isinstance(j.get('data'), list), 'no data list: %s' % short(r.body))


@test()
def embeddings_relayed(ctx):
    gw = ctx.gw
    body = json.dumps({'model': 'text-embedding-3-small', 'input': 'hi'}).encode()
    direct = ctx.mock.request('POST', '/v1/embeddings',
                              [('Authorization', 'Bearer ' + UPSTREAM_KEY),
                               ('Content-Type', 'application/json')], body)
    c = HTTPConn(gw.port)
    try:
        c.send(build_request('POST', '/v1/embeddings', [('Host', 'x'), ('Content-Type', 'application/json')], body))
        r = c.read_response()
    finally:
        c.close()
    check(r.status == 200, 'status %d body %s' % (r.status, short(r.body)))
    check(r.json() == json.loads(direct.body), 'body differs from the mock\'s: %s vs %s'
          % (short(r.body), short(direct.body)))


# --- streaming ---------------------------------------------------------------

@test(params=[1, 23, 200])
def stream_content_exact(ctx, n):
    head, st, c, _ = stream_chat(ctx.gw.port, n=n)
    c.close()
    check(st is not None, 'status %d body %s' % (head.status, short(head.body)))
    check_complete_stream(head, st, n)
    parsed = [j for e, j in st.parsed()]
    first = parsed[0]['choices'][0]
    check(first.get('delta', {}).get('role') == 'assistant', 'first chunk is not the role chunk: %s' % short(st.events[0]['data']))
    check(any(j.get('choices') and j['choices'][0].get('finish_reason') == 'stop' for j in parsed),
          'no chunk with finish_reason "stop"')
    check(all(j.get('object') == 'chat.completion.chunk' for j in parsed), 'object is not chat.completion.chunk')


@test()
def stream_sse_headers(ctx):
    head, st, c, _ = stream_chat(ctx.gw.port, n=3)
    c.close()
    check(st is not None, 'status %d' % head.status)
    check_sse_headers(head)
    rid = head.header('x-request-id')
    check(rid, 'no X-Request-Id on the SSE response')


@test()
def stream_ends_done_then_terminal_chunk(ctx):
    head, st, c, _ = stream_chat(ctx.gw.port, n=4)
    c.close()
    check(st is not None, 'status %d' % head.status)
    check_complete_stream(head, st, 4)
    raw = bytes(st.raw)
    check(re.search(rb'data: ?\[DONE\](\r\n|\n|\r)(\r\n|\n|\r)$', raw),
          'body does not end with "data: [DONE]" and a blank line: ...%s' % short(raw[-60:]))


@test()
def stream_first_event_latency(ctx):
    """Each event reaches the client as the upstream sends it: with 150 ms between
    chunks the first content event must arrive well before the stream ends."""
    head, st, c, t_sent = stream_chat(ctx.gw.port, n=4, delay=150, timeout=10)
    c.close()
    check(st is not None, 'status %d' % head.status)
    check_complete_stream(head, st, 4)
    ce = st.content_events()
    check(len(ce) == 4, '%d content events' % len(ce))
    gaps = [ce[i + 1]['t'] - ce[i]['t'] for i in range(3)]
    check(min(gaps) > 0.08, 'content events bunched together (gaps %s s): buffering?'
          % ['%.3f' % g for g in gaps])
    figure('stream[%s]: gaps between content events with 150 ms upstream pacing: %s ms'
           % (ctx.mode, ', '.join('%.0f' % (g * 1000) for g in gaps)))


@test(params=['trickle', 'crlf', 'comments', 'close-delimited'])
def stream_upstream_variants(ctx, fault):
    n = 3 if fault == 'trickle' else 12
    head, st, c, _ = stream_chat(ctx.gw.port, n=n, fault=fault, timeout=20)
    c.close()
    check(st is not None, 'status %d body %s' % (head.status, short(head.body)))
    check_complete_stream(head, st, n)


@test()
def nonstream_json(ctx):
    n = 7
    r = post_chat(ctx.gw.port, stream=False, n=n)
    check(r.status == 200, 'status %d body %s' % (r.status, short(r.body)))
    check('application/json' in r.header('content-type', ''), 'Content-Type %r' % r.header('content-type'))
    j = r.json()
    check(j.get('object') == 'chat.completion', 'object %r' % j.get('object'))
    got = j['choices'][0]['message']['content']
    check(got == expected_content(n), 'content %s' % short(got))
    check(isinstance(j.get('usage'), dict), 'no usage in the non-streaming answer')
    up = json.loads(ctx.mock.last()['body'])
    check('stream_options' not in up,
          'gateway added stream_options to a non-streaming request (OpenAI rejects that): %s'
          % short(up.get('stream_options')))


@test(params=['status:429', 'status:500', 'status:400'])
def upstream_error_status_relayed(ctx, fault):
    code = int(fault.split(':')[1])
    for stream in (True, False):
        direct = ctx.mock.request('POST', '/v1/chat/completions',
                                  [('Authorization', 'Bearer ' + UPSTREAM_KEY), ('X-Mock-Fault', fault),
                                   ('Content-Type', 'application/json')], chat_body(stream))
        r = post_chat(ctx.gw.port, stream=stream, fault=fault, body=chat_body(stream))
        what = 'stream=%s: ' % stream
        check(r.status == code, '%sstatus %d, want %d (body %s)' % (what, r.status, code, short(r.body)))
        check('application/json' in r.header('content-type', ''), '%sContent-Type %r' % (what, r.header('content-type')))
        e = check_error_shape(r.body, what + 'relayed body')
        de = json.loads(direct.body)['error']
        check(e == de, '%sbody differs from the upstream\'s: %s vs %s' % (what, short(r.body), short(direct.body)))


@test(params=['close-after:3', 'reset-after:3'])
def midstream_upstream_failure(ctx, fault):
    head, st, c, t_sent = stream_chat(ctx.gw.port, n=10, fault=fault, timeout=10)
    c.close()
    check(st is not None, 'status %d body %s' % (head.status, short(head.body)))
    check_error_end(head, st, 3)
    check(st.content() == expected_content(3), 'content before the error: %s' % short(st.content()))
    took = time.monotonic() - t_sent
    check(took < 0.9 * IDLE_TIMEOUT_S * max(1.0, SCALE),
          'the error came after %.2f s: the gateway waited for a timer instead of seeing the %s'
          % (took, 'FIN' if 'close' in fault else 'RST'))


@test(params=['stream', 'nonstream'])
def hang_before_first_byte_504(ctx, kind):
    t0 = time.monotonic()
    r = post_chat(ctx.gw.port, stream=(kind == 'stream'), fault='hang', timeout=6,
                  body=chat_body(kind == 'stream'))
    took = time.monotonic() - t0
    check(r.status == 504, 'status %d body %s' % (r.status, short(r.body)))
    check_error_shape(r.body, '504 body')
    check(FIRST_BYTE_TIMEOUT_S * 0.9 <= took <= FIRST_BYTE_TIMEOUT_S + 1.0 * SCALE,
          '504 after %.2f s with --first-byte-timeout 1s' % took)
    figure('hang[%s/%s]: 504 after %.0f ms (first-byte timeout 1000 ms)' % (kind, ctx.mode, took * 1000))


@test()
def hang_after_idle_timeout_error_event(ctx):
    head, st, c, _ = stream_chat(ctx.gw.port, n=10, fault='hang-after:2', timeout=8)
    c.close()
    check(st is not None, 'status %d body %s' % (head.status, short(head.body)))
    check_error_end(head, st, 2)
    check(st.content() == expected_content(2), 'content before the error: %s' % short(st.content()))
    ce = st.content_events()
    err_e = st.errors()[0][0]
    gap = err_e['t'] - (ce[-1]['t'] if ce else st.t0)
    check(IDLE_TIMEOUT_S * 0.9 <= gap <= IDLE_TIMEOUT_S + 1.0 * SCALE,
          'error event %.2f s after the last chunk with --idle-timeout 1s' % gap)


@test()
def garbage_upstream_502(ctx):
    r = post_chat(ctx.gw.port, stream=True, fault='garbage', body=chat_body(True))
    check(r.status == 502, 'status %d body %s' % (r.status, short(r.body)))
    e = check_error_shape(r.body, '502 body')
    check(re.search(r'protocol|malformed|invalid|pars|bad', e['message'], re.I),
          '502 message does not say it was a protocol error: %r' % e['message'])


@test()
def bad_chunked_upstream(ctx):
    head, st, c, _ = stream_chat(ctx.gw.port, n=10, fault='bad-chunked', timeout=8)
    c.close()
    if st is None:
        check(head.status == 502, 'status %d before the first byte, want 502' % head.status)
        check_error_shape(head.body, '502 body')
        return
    check_error_end(head, st, 10)


# --- usage -------------------------------------------------------------------

@test(params=['absent', 'false'])
def usage_requested_upstream_not_forwarded(ctx, client):
    extra = {} if client == 'absent' else {'stream_options': {'include_usage': False}}
    n = 6
    head, st, c, _ = stream_chat(ctx.gw.port, n=n, body=chat_body(True, **extra))
    c.close()
    check(st is not None, 'status %d body %s' % (head.status, short(head.body)))
    check_complete_stream(head, st, n)
    up = json.loads(ctx.mock.last()['body'])
    so = up.get('stream_options')
    check(isinstance(so, dict) and so.get('include_usage') is True,
          'upstream request lacks stream_options.include_usage=true: %s' % short(json.dumps(up)))
    check(up.get('messages') == json.loads(chat_body(True))['messages'], 'messages altered upstream')
    for e, j in st.parsed():
        check(not (isinstance(j, dict) and j.get('choices') == []),
              'usage-only chunk forwarded to a client that did not ask: %s' % short(e['data']))
        check(not (isinstance(j, dict) and isinstance(j.get('usage'), dict)),
              'usage forwarded to a client that did not ask: %s' % short(e['data']))


@test()
def usage_forwarded_when_asked(ctx):
    n = 6
    head, st, c, _ = stream_chat(ctx.gw.port, n=n,
                                 body=chat_body(True, stream_options={'include_usage': True}))
    c.close()
    check(st is not None, 'status %d body %s' % (head.status, short(head.body)))
    check_complete_stream(head, st, n)
    usage = [(e, j) for e, j in st.parsed() if isinstance(j, dict) and j.get('choices') == []
             and isinstance(j.get('usage'), dict)]
    check(len(usage) == 1, '%d usage-only chunks, want 1' % len(usage))
    u = usage[0][1]['usage']
    for k in ('prompt_tokens', 'completion_tokens', 'total_tokens'):
        check(isinstance(u.get(k), int), 'usage.%s missing: %s' % (k, short(json.dumps(u))))
    check(st.events.index(usage[0][0]) == len(st.events) - 2, 'usage chunk is not right before [DONE]')


# --- client disconnects --------------------------------------------------------

def cancel_case(ctx, kind, how):
    mock, gw = ctx.pair('cancel')
    s0 = mock.stats()
    c = HTTPConn(gw.port)
    if kind == 'before_first_token':
        c.send(build_request('POST', '/v1/chat/completions',
                             chat_headers(gw.port, n=5, delay=2000), chat_body(True)))
    elif kind == 'midstream':
        c.send(build_request('POST', '/v1/chat/completions',
                             chat_headers(gw.port, n=400, delay=50), chat_body(True)))
        head = c.read_head(5)
        check(head.status == 200, 'status %d' % head.status)
        st = read_stream(c, head, 5, stop=lambda s: len(s.content_events()) >= 3)
        check(len(st.content_events()) >= 3, 'did not get 3 content events: %s' % st.describe())
    else:
        c.send(build_request('POST', '/v1/chat/completions',
                             chat_headers(gw.port, fault='hang'), chat_body(False)))
    seen = wait_until(lambda: (lambda s: s if s['requests'] > s0['requests'] else None)(mock.stats()), 3 * SCALE)
    check(seen, 'the mock never got the request (stats %s)' % s0)
    open_before = seen['open']
    check(open_before >= 1, 'mock reports %d open connections during the request' % open_before)
    if kind != 'midstream':
        time.sleep(0.05)  # a moment of time-to-first-token
    if how == 'fin':
        c.sock.shutdown(socket.SHUT_WR)
    else:
        c.rst_close()
    t_close = time.monotonic()
    last = [None]

    def dropped():
        s = mock.stats()
        last[0] = s
        return s['open'] < open_before

    ok = wait_until(dropped, 2.0 * SCALE, step=0.001)
    took = time.monotonic() - t_close
    if how == 'fin':
        c.close()
    ms = took * 1000
    if ok:
        figure('cancel[%s/%s/%s]: upstream closed %.1f ms after the client %s'
               % (kind, how, ctx.mode, ms, 'FIN' if how == 'fin' else 'RST'))
    else:
        figure('cancel[%s/%s/%s]: upstream NOT closed within %.0f ms' % (kind, how, ctx.mode, ms))
    check(ok, 'upstream connection still open %.0f ms after the client went away (stats %s)'
          % (ms, last[0]))
    check(took <= CANCEL_BOUND_S, 'upstream closed %.1f ms after the client went away (bound 100 ms)' % ms)


@test(params=['before_first_token', 'midstream', 'nonstream'])
def client_disconnect_fin(ctx, kind):
    cancel_case(ctx, kind, 'fin')


@test(params=['before_first_token', 'midstream', 'nonstream'])
def client_disconnect_rst(ctx, kind):
    cancel_case(ctx, kind, 'rst')


# --- upstream TLS and connect failures ----------------------------------------

TLS_REASONS = {
    'wronghost': r'host|name|mismatch|subject|\bSAN\b',
    'expired': r'expir|validity|not yet valid|date',
    'selfsigned': r'trust|unknown (ca|issuer|authority)|issuer|anchor|self.?signed|chain',
    'otherca': r'trust|unknown (ca|issuer|authority)|issuer|anchor|chain',
}
TLS_MESSAGES = {}


@test(('tls',), params=list(TLS_REASONS))
def upstream_tls_bad_cert_502(ctx, kind):
    gw = ctx.use(ctx.env.gateway('tls', 'bad-' + kind, kind))
    for stream in (True, False):
        t0 = time.monotonic()
        r = post_chat(gw.port, stream=stream, body=chat_body(stream), timeout=5)
        took = time.monotonic() - t0
        what = '%s stream=%s: ' % (kind, stream)
        check(r.status == 502, '%sstatus %d body %s' % (what, r.status, short(r.body)))
        e = check_error_shape(r.body, what + '502 body')
        TLS_MESSAGES[kind] = e['message']
        check(re.search(TLS_REASONS[kind], e['message'], re.I),
              '%s502 message does not say why: %r' % (what, e['message']))
        check(took < 3 * SCALE, '%s502 took %.2f s' % (what, took))
    check(ping_ok(gw), 'gateway does not answer /ping after the TLS failure')


@test(('tls',))
def upstream_tls_messages_distinct(ctx):
    for kind in TLS_REASONS:
        if kind not in TLS_MESSAGES:
            gw = ctx.use(ctx.env.gateway('tls', 'bad-' + kind, kind))
            r = post_chat(gw.port, stream=True, body=chat_body(True))
            if r.status == 502:
                try:
                    TLS_MESSAGES[kind] = json.loads(r.body)['error']['message']
                except (ValueError, KeyError, TypeError):
                    pass
    msgs = {k: TLS_MESSAGES.get(k) for k in ('wronghost', 'expired', 'selfsigned')}
    check(all(msgs.values()), 'missing messages: %s' % msgs)
    check(len(set(msgs.values())) == 3, 'the TLS failures are not told apart: %s' % msgs)
    figure('TLS 502 messages: %s' % json.dumps(TLS_MESSAGES, ensure_ascii=False))


@test()
def upstream_connect_refused_502(ctx):
    gw = ctx.use(ctx.env.refused_gateway(ctx.mode))
    for stream in (True, False):
        r = post_chat(gw.port, stream=stream, body=chat_body(stream))
        check(r.status == 502, 'stream=%s: status %d body %s' % (stream, r.status, short(r.body)))
        e = check_error_shape(r.body, '502 body')
        check(re.search(r'connect|refused', e['message'], re.I),
              '502 message does not mention connect: %r' % e['message'])
    check(ping_ok(gw), 'gateway does not answer /ping after connect failures')


@test(ANY)
def connect_retries_counted(ctx):
    """--retries: connect failures are tried again before the answer, still end in a
    prompt 502, and the access log counts the retries."""
    gw = Gateway(ctx.env.args.gateway, 'gw-retries', 'http://127.0.0.1:%d/v1' % dead_port(), None,
                 gw_args('main') + ['--retries', '2'])
    try:
        t0 = time.monotonic()
        r = post_chat(gw.port, stream=True, body=chat_body(True))
        took = time.monotonic() - t0
        check(r.status == 502, 'status %d body %s' % (r.status, short(r.body)))
        check_error_shape(r.body, '502 body')
        check(took < 2 * SCALE, 'three refused connects took %.2f s' % took)
        rec = gw.wait_log(lambda x: x.get('path') == '/v1/chat/completions')
        check(rec is not None and rec.get('retries') == 2,
              'access log does not count 2 retries: %s' % (rec,))
    finally:
        gw.proc.stop()
    check(gw.proc.p.returncode == 0, 'gw-retries exited %s on SIGTERM' % gw.proc.p.returncode)


# --- malformed client requests --------------------------------------------------

CHAT = b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
PING = b'GET /ping HTTP/1.1\r\nHost: x\r\n'
MALFORMED = {
    'cl_and_te': CHAT + b'Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    'te_and_cl': CHAT + b'Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n',
    'dup_cl_differ': CHAT + b'Content-Length: 2\r\nContent-Length: 3\r\n\r\n{} ',
    'dup_cl_same': CHAT + b'Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}',
    'cl_abc': CHAT + b'Content-Length: abc\r\n\r\n{}',
    'cl_negative': CHAT + b'Content-Length: -1\r\n\r\n{}',
    'cl_plus': CHAT + b'Content-Length: +2\r\n\r\n{}',
    'obs_fold': PING + b'X-Foo: a\r\n  b\r\n\r\n',
    'bare_cr_in_header': PING + b'X-Foo: a\rb\r\n\r\n',
    'nul_in_header': PING + b'X-Foo: a\x00b\r\n\r\n',
    'invalid_token_in_name': PING + b'X(Foo): a\r\n\r\n',
    'space_before_colon': PING + b'X-Foo : a\r\n\r\n',
    'no_colon': PING + b'X-Foo a\r\n\r\n',
    'bad_chunk_size': CHAT + b'Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n',
    'request_line_no_version': b'GET /ping\r\nHost: x\r\n\r\n',
}


@test(ANY, params=list(MALFORMED))
def malformed_request_400_close(ctx, case):
    c = HTTPConn(ctx.gw.port)
    try:
        c.try_send(MALFORMED[case])
        r = c.read_response(3)
        check(r.status == 400, 'status %d body %s' % (r.status, short(r.body)))
        check_error_shape(r.body, '400 body')
        check(c.wait_closed(2), 'connection not closed after the 400')
    finally:
        c.close()


UNSUPPORTED = {
    'http2_version': (b'GET /ping HTTP/2.0\r\nHost: x\r\n\r\n', 505),
    'te_gzip': (CHAT + b'Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n', 501),
}


@test(ANY, params=list(UNSUPPORTED))
def unsupported_request_closes(ctx, case):
    """Another HTTP version (505) or a transfer coding other than chunked (501): the
    framing of what follows is unknown, so the connection closes after the answer."""
    data, status = UNSUPPORTED[case]
    c = HTTPConn(ctx.gw.port)
    try:
        c.try_send(data)
        r = c.read_response(3)
        check(r.status == status, 'status %d (want %d) body %s' % (r.status, status, short(r.body)))
        check_error_shape(r.body, '%d body' % status)
        check(c.wait_closed(2), 'connection not closed after the %d' % status)
    finally:
        c.close()


# --- limits -----------------------------------------------------------------------

def send_and_read(port, data, timeout=5.0):
    c = HTTPConn(port)
    c.try_send(data)
    return c, c.read_response(timeout)


@test(ANY)
def headers_too_large_431(ctx):
    big = b''.join(b'X-Pad-%d: %s\r\n' % (i, b'a' * 1000) for i in range(20))
    c, r = send_and_read(ctx.gw.port, PING + big + b'\r\n')
    c.close()
    check(r.status == 431, 'status %d body %s' % (r.status, short(r.body)))
    check_error_shape(r.body, '431 body')


@test(ANY)
def headers_just_under_limit_ok(ctx):
    big = b''.join(b'X-Pad-%d: %s\r\n' % (i, b'a' * 1000) for i in range(14))
    c, r = send_and_read(ctx.gw.port, PING + big + b'\r\n')
    c.close()
    check(r.status == 200, '%d bytes of headers: status %d' % (len(PING + big), r.status))


@test(ANY)
def uri_too_long_414(ctx):
    c, r = send_and_read(ctx.gw.port, b'GET /ping?q=' + b'a' * 9000 + b' HTTP/1.1\r\nHost: x\r\n\r\n')
    c.close()
    check(r.status == 414, 'status %d body %s' % (r.status, short(r.body)))
    check_error_shape(r.body, '414 body')


@test(ANY)
def body_too_large_413_content_length(ctx):
    c = HTTPConn(ctx.gw.port)
    try:
        c.send(CHAT + b'Content-Length: %d\r\n\r\n' % (2 * MAX_BODY))
        r = c.read_response(3)   # answered on the head alone: no body sent
        check(r.status == 413, 'status %d body %s' % (r.status, short(r.body)))
        check_error_shape(r.body, '413 body')
    finally:
        c.close()


@test(ANY)
def body_too_large_413_chunked(ctx):
    c = HTTPConn(ctx.gw.port)
    try:
        c.send(CHAT + b'Transfer-Encoding: chunked\r\n\r\n')
        piece = b'10000\r\n' + b' ' * 0x10000 + b'\r\n'
        for _ in range(MAX_BODY // 0x10000 + 4):
            if c.readable() or not c.try_send(piece):
                break
        c.try_send(b'0\r\n\r\n')
        r = c.read_response(5)
        check(r.status == 413, 'status %d body %s' % (r.status, short(r.body)))
        check_error_shape(r.body, '413 body')
    finally:
        c.close()


@test(params=[70000, 300000, MAX_BODY])
def large_body_relayed(ctx, size):
    body = chat_body(False)
    body = body[:-1] + b' ' * (size - len(body)) + b'}'
    check(len(body) == size, 'test bug')
    c = HTTPConn(ctx.gw.port)
    try:
        c.send(build_request('POST', '/v1/chat/completions', chat_headers(ctx.gw.port, n=2), body))
        r = c.read_response(10)
    finally:
        c.close()
    check(r.status == 200, 'a body of %d bytes (--max-body 1MiB): status %d body %s' % (size, r.status, short(r.body)))
    up = ctx.mock.last()
    check(len(up['body']) == size, 'upstream got a body of %d bytes, want %d' % (len(up['body']), size))


@test(ANY)
def header_timeout_408(ctx):
    c = HTTPConn(ctx.gw.port)
    try:
        t0 = time.monotonic()
        c.send(b'GET /ping HTTP/1.1\r\nHost: x\r\n')
        r = c.read_response(HEADER_TIMEOUT_S + 3)
        took = time.monotonic() - t0
        check(r.status == 408, 'status %d body %s' % (r.status, short(r.body)))
        check_error_shape(r.body, '408 body')
        check(HEADER_TIMEOUT_S * 0.9 <= took <= HEADER_TIMEOUT_S + 1.0 * SCALE,
              '408 after %.2f s with --header-timeout 1s' % took)
        check(c.wait_closed(2), 'connection not closed after the 408')
    finally:
        c.close()


@test(ANY)
def header_timeout_slowloris(ctx):
    """A client trickling its head byte by byte does not extend --header-timeout."""
    c = HTTPConn(ctx.gw.port)
    try:
        t0 = time.monotonic()
        head = b'GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: ' + b'a' * 100
        for i in range(len(head)):
            if time.monotonic() - t0 > HEADER_TIMEOUT_S + 1.5 * SCALE:
                break
            if c.readable() or not c.try_send(head[i:i + 1]):
                break
            time.sleep(0.03)
        r = c.read_response(3)
        took = time.monotonic() - t0
        check(r.status == 408, 'status %d' % r.status)
        check(took <= HEADER_TIMEOUT_S + 1.0 * SCALE, '408 only after %.2f s' % took)
    finally:
        c.close()


@test(ANY)
def invalid_json_400(ctx):
    s0 = ctx.mock.stats()
    for body in (b'{"model": "gpt-4o-mini", "messages": [', b'not json at all', b'{"a":1}}'):
        r = post_chat(ctx.gw.port, body=body)
        check(r.status == 400, 'body %s: status %d' % (short(body), r.status))
        e = check_error_shape(r.body, '400 body')
        check(e['type'] == 'invalid_request_error', 'error type %r, OpenAI says invalid_request_error' % e['type'])
    s1 = ctx.mock.stats()
    check(s1['requests'] == s0['requests'], 'invalid JSON reached the upstream')


# --- connection handling ----------------------------------------------------------

@test()
def keepalive_upstream_reuse(ctx):
    gw = ctx.gw
    # warm the pool, then count
    post_chat(gw.port, n=1)
    s0 = ctx.mock.stats()
    c = HTTPConn(gw.port)
    try:
        for i in range(20):
            if i % 2 == 0:
                head, st, _, _ = stream_chat(gw.port, conn=c, n=3)
                check(st is not None, 'request %d: status %d' % (i, head.status))
                check_complete_stream(head, st, 3, 'request %d: ' % i)
            else:
                c.send(build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=2), chat_body(False)))
                r = c.read_response()
                check(r.status == 200, 'request %d: status %d' % (i, r.status))
                check(r.json()['choices'][0]['message']['content'] == expected_content(2), 'request %d content' % i)
                check(r.header('connection', '').lower() != 'close', 'request %d: Connection: close' % i)
    finally:
        c.close()
    s1 = ctx.mock.stats()
    check(s1['requests'] - s0['requests'] == 20, 'mock saw %d requests, want 20' % (s1['requests'] - s0['requests']))
    check(s1['total'] - s0['total'] <= 1, '20 sequential requests opened %d upstream connections'
          % (s1['total'] - s0['total']))
    figure('keep-alive[%s]: 20 requests, %d new upstream connections' % (ctx.mode, s1['total'] - s0['total']))


@test()
def pipelining_in_order(ctx):
    gw = ctx.gw
    a = build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=2, rid='pipe-a-' + uuid.uuid4().hex[:6]), chat_body(False))
    b = build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=3, rid='pipe-b-' + uuid.uuid4().hex[:6]), chat_body(False))
    p = build_request('GET', '/ping', [('Host', 'x')])
    c = HTTPConn(gw.port)
    try:
        c.send(a + b + p)
        r1 = c.read_response()
        r2 = c.read_response()
        r3 = c.read_response()
    finally:
        c.close()
    check(r1.status == 200 and r2.status == 200 and r3.status == 200,
          'statuses %d %d %d' % (r1.status, r2.status, r3.status))
    check(r1.header('x-request-id', '').startswith('pipe-a'), 'first answer has X-Request-Id %r' % r1.header('x-request-id'))
    check(r2.header('x-request-id', '').startswith('pipe-b'), 'second answer has X-Request-Id %r' % r2.header('x-request-id'))
    check(r1.json()['choices'][0]['message']['content'] == expected_content(2), 'first answer content')
    check(r2.json()['choices'][0]['message']['content'] == expected_content(3), 'second answer content')
    check(r3.json() == {'message': 'pong'}, 'third answer %s' % short(r3.body))


@test()
def pipelining_stream_then_ping(ctx):
    gw = ctx.gw
    a = build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=5), chat_body(True))
    p = build_request('GET', '/ping', [('Host', 'x')])
    c = HTTPConn(gw.port)
    try:
        c.send(a + p)
        head = c.read_head()
        check(head.status == 200, 'status %d' % head.status)
        st = read_stream(c, head)
        check_complete_stream(head, st, 5)
        r = c.read_response()
        check(r.status == 200 and r.json() == {'message': 'pong'}, 'second answer %d %s' % (r.status, short(r.body)))
    finally:
        c.close()


@test()
def request_id_propagated(ctx):
    rid = 'test-rid-' + uuid.uuid4().hex
    head, st, c, _ = stream_chat(ctx.gw.port, n=2, rid=rid)
    c.close()
    check(head.header('x-request-id') == rid, 'answer X-Request-Id %r, want %r' % (head.header('x-request-id'), rid))
    last = ctx.mock.last()
    check(last['headers'].get('x-request-id') == rid, 'upstream got X-Request-Id %r' % last['headers'].get('x-request-id'))
    rec = ctx.gw.wait_log(lambda r: r.get('req_id') == rid)
    check(rec, 'no access-log line with req_id %s' % rid)


@test()
def request_id_generated(ctx):
    r = post_chat(ctx.gw.port, n=2)
    rid = r.header('x-request-id')
    check(r.status == 200, 'status %d' % r.status)
    check(rid and len(rid) >= 8, 'no generated X-Request-Id: %r' % rid)
    last = ctx.mock.last()
    check(last['headers'].get('x-request-id') == rid, 'upstream got X-Request-Id %r, client got %r'
          % (last['headers'].get('x-request-id'), rid))
    r2 = post_chat(ctx.gw.port, n=2)
    check(r2.header('x-request-id') != rid, 'two requests got the same generated id %r' % rid)


@test()
def authorization_replaced(ctx):
    for auth in (True, False):
        r = post_chat(ctx.gw.port, n=2, auth=auth)
        check(r.status == 200, 'client auth=%s: status %d body %s' % (auth, r.status, short(r.body)))
        last = ctx.mock.last()
        a = last['headers'].get('authorization')
        check(a == 'Bearer ' + UPSTREAM_KEY, 'upstream got Authorization %r' % a)
        check(UPSTREAM_KEY not in r.body.decode('utf-8', 'replace') and UPSTREAM_KEY not in r.raw.decode('latin-1'),
              'upstream key leaked in the answer')


@test()
def upstream_request_shape(ctx):
    post_chat(ctx.gw.port, n=2)
    last = ctx.mock.last()
    h = last['headers']
    check(last['method'] == 'POST', 'method %r' % last['method'])
    check(last['path'] == '/v1/chat/completions', 'path %r' % last['path'])
    want_host = ('localhost:%d' if ctx.mode == 'tls' else '127.0.0.1:%d') % ctx.mock.port
    check(h.get('host') == want_host, 'Host %r, want %r' % (h.get('host'), want_host))
    check(h.get('accept-encoding', '').lower() == 'identity', 'Accept-Encoding %r, want identity' % h.get('accept-encoding'))
    check('application/json' in h.get('content-type', ''), 'Content-Type %r' % h.get('content-type'))


@test()
def hop_by_hop_not_forwarded(ctx):
    extra = [('Connection', 'keep-alive, X-Foo'), ('X-Foo', 'bar'), ('Keep-Alive', 'timeout=5'),
             ('TE', 'trailers'), ('Upgrade', 'foo/1'), ('Proxy-Authorization', 'Basic c2VjcmV0'),
             ('Proxy-Connection', 'keep-alive'), ('X-End-To-End', 'kept')]
    r = post_chat(ctx.gw.port, n=2, extra=extra)
    check(r.status == 200, 'status %d body %s' % (r.status, short(r.body)))
    h = ctx.mock.last()['headers']
    leaked = [k for k in ('x-foo', 'keep-alive', 'te', 'upgrade', 'proxy-authorization', 'proxy-connection') if k in h]
    check(not leaked, 'hop-by-hop headers forwarded upstream: %s' % {k: h[k] for k in leaked})
    check('x-foo' not in h.get('connection', '').lower(), 'Connection forwarded as %r' % h.get('connection'))
    check(h.get('x-end-to-end') == 'kept', 'end-to-end header X-End-To-End lost')


LOG_FIELDS = ('ts', 'level', 'req_id', 'method', 'path', 'status', 'client', 'model', 'upstream', 'ttfb_ms',
              'dur_ms', 'bytes_in', 'bytes_out', 'chunks', 'prompt_tokens', 'completion_tokens', 'retries', 'error')


@test()
def access_log_fields(ctx):
    gw = ctx.gw
    rid = 'log-' + uuid.uuid4().hex
    head, st, c, _ = stream_chat(gw.port, n=9, rid=rid)
    c.close()
    check(st is not None, 'status %d' % head.status)
    check_complete_stream(head, st, 9)
    rec = gw.wait_log(lambda r: r.get('req_id') == rid)
    check(rec, 'no access-log line with req_id %s' % rid)
    missing = [f for f in LOG_FIELDS if f not in rec]
    check(not missing, 'log line lacks %s: %s' % (missing, short(json.dumps(rec), 600)))
    check(rec['method'] == 'POST' and rec['path'] == '/v1/chat/completions', 'method/path %r %r' % (rec['method'], rec['path']))
    check(rec['status'] == 200, 'status field %r' % rec['status'])
    check(rec['model'] == 'gpt-4o-mini', 'model field %r' % rec['model'])
    for f in ('ttfb_ms', 'dur_ms', 'bytes_in', 'bytes_out', 'chunks', 'prompt_tokens', 'completion_tokens', 'retries'):
        check(isinstance(rec[f], (int, float)) and not isinstance(rec[f], bool), '%s is %r, want a number' % (f, rec[f]))
    check(rec['chunks'] >= 9, 'chunks %r for 9 content chunks' % rec['chunks'])
    check(rec['completion_tokens'] > 0, 'completion_tokens %r: usage not recorded for a streamed request' % rec['completion_tokens'])
    check(rec['bytes_out'] >= len(st.raw), 'bytes_out %r < %d bytes of SSE sent' % (rec['bytes_out'], len(st.raw)))
    check(rec['error'] in (None, ''), 'error field %r on a successful request' % rec['error'])
    # a failed stream logs an error
    rid2 = 'log-err-' + uuid.uuid4().hex
    head, st, c, _ = stream_chat(gw.port, n=10, rid=rid2, fault='close-after:3')
    c.close()
    rec2 = gw.wait_log(lambda r: r.get('req_id') == rid2)
    check(rec2, 'no access-log line for the failed stream %s' % rid2)
    check(rec2.get('error'), 'failed stream logged with error %r' % rec2.get('error'))


@test()
def expect_100_continue(ctx):
    gw = ctx.gw
    body = chat_body(False)
    c = HTTPConn(gw.port)
    try:
        c.send(build_request('POST', '/v1/chat/completions',
                             chat_headers(gw.port, n=4) + [('Expect', '100-continue'), ('Content-Length', str(len(body)))]))
        h = c.read_head(2, allow_1xx=True)
        check(h.status == 100, 'first answer %d, want 100 Continue' % h.status)
        c.send(body)
        r = c.read_response()
        check(r.status == 200, 'status %d body %s' % (r.status, short(r.body)))
        check(r.json()['choices'][0]['message']['content'] == expected_content(4), 'content')
    finally:
        c.close()
    h = ctx.mock.last()['headers']
    check('expect' not in h, 'Expect forwarded upstream: %r' % h.get('expect'))


@test()
def chunked_request_body(ctx):
    gw = ctx.gw
    body = chat_body(True, temperature=0.5)
    parts = [body[:7], body[7:40], body[40:]]
    c = HTTPConn(gw.port)
    try:
        c.send(build_request('POST', '/v1/chat/completions',
                             chat_headers(gw.port, n=6) + [('Transfer-Encoding', 'chunked')]))
        for i, p in enumerate(parts):
            ext = b';x=1' if i == 1 else b''
            c.send(b'%x%s\r\n%s\r\n' % (len(p), ext, p))
            time.sleep(0.02)
        c.send(b'0\r\n\r\n')
        head = c.read_head()
        check(head.status == 200, 'status %d' % head.status)
        st = read_stream(c, head)
        check_complete_stream(head, st, 6)
    finally:
        c.close()
    up = json.loads(ctx.mock.last()['body'])
    want = json.loads(body)
    up.pop('stream_options', None)
    check(up == want, 'upstream body %s, want %s' % (short(json.dumps(up)), short(json.dumps(want))))


# --- more of the contract -------------------------------------------------------

@test()
def mock_selfcheck_large_stream(ctx):
    """Not a gateway test: the mock itself must keep writing a large stream to a reader
    that pauses (TCP backpressure), or the backpressure tests below cannot pass."""
    c = ctx.mock._connect()
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        hs = [('Host', 'localhost'), ('Authorization', 'Bearer ' + UPSTREAM_KEY),
              ('Content-Type', 'application/json'), ('X-Mock-Chunks', '20000')]
        c.send(build_request('POST', '/v1/chat/completions', hs, chat_body(True)))
        time.sleep(0.7)
        head = c.read_head(5)
        check(head.status == 200, 'status %d' % head.status)
        st = read_stream(c, head, 10)
    finally:
        c.close()
    check(st.timeout is None, 'mock-upstream stopped writing after %d of 20000 content chunks when its '
          'reader paused (%s)' % (len(st.content_events()), st.timeout))
    check_complete_stream(head, st, 20000, 'mock direct: ')


@test()
def slow_client_pauses(ctx):
    """A client that pauses three times for 0.6 s (each below --idle-timeout 1s, 1.8 s in
    all) while the gateway is backpressured: every timer must restart, and the stream
    completes exactly."""
    gw = ctx.gw
    n = 40000
    marks = [4000, 14000, 24000]

    def pause(st):
        if marks and len(st.events) >= marks[0]:
            marks.pop(0)
            time.sleep(0.6)
        return False

    c = HTTPConn(gw.port)
    try:
        # 256 KiB, not less: with a receive window under loopback's 64 KiB MSS the
        # kernel's zero-window probing alone can stall a reading client for a second
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        c.send(build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=n), chat_body(True)))
        head = c.read_head(5)
        check(head.status == 200, 'status %d' % head.status)
        st = read_stream(c, head, 30, stop=pause)
    finally:
        c.close()
    check_complete_stream(head, st, n)


@test()
def client_not_reading_is_dropped(ctx):
    """§5: a client that stops reading while the gateway's buffer for it is full is
    let go after --idle-timeout (1 s here): its connection and its upstream close, and
    the log blames the client, not the upstream."""
    gw = ctx.gw
    n = 60000   # far more than the socket buffers and the 256 KiB queue hold
    c = HTTPConn(gw.port)
    t0 = time.monotonic()
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        rid = 'not-reading-%d' % os.getpid()
        c.send(build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=n, rid=rid), chat_body(True)))
        # this request's line: an earlier test's dropped client logs the same error
        rec = gw.wait_log(lambda x: x.get('req_id') == rid and x.get('error') == 'client stopped reading its answer',
                          timeout=8)
        took = time.monotonic() - t0
        check(rec is not None, 'no access line blames the client within 8 s')
        check(took < 6 * SCALE, 'a client not reading was dropped only after %.1f s' % took)
        # what was sent still arrives, then the connection ends without the last chunk
        data = bytearray()
        c.sock.settimeout(5 * SCALE)
        try:
            while True:
                chunk = c.sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        check(not data.endswith(b'0\r\n\r\n'), 'the dropped stream ended as if complete')
        check(data.count(b'"content":"tok') < n, 'the whole stream arrived although the client was dropped')
        figure('client not reading: dropped after %.2f s (--idle-timeout 1s)' % took)
    finally:
        c.close()
    check(ping_ok(gw), 'gateway does not answer /ping after dropping a slow client')


@test()
def backpressure_memory_bounded(ctx):
    """A client that stops reading: the gateway buffers a bounded amount (§5) and then
    relays the rest exactly once the client reads again. (On the gateway with a 30 s
    idle timeout, so that only memory is tested here.)"""
    gw = ctx.use(ctx.env.gateway(ctx.mode, 'slow'))
    n = 20000   # about 6 MB of SSE, far more than socket buffers hold
    rss0 = gw.rss_kib()
    c = HTTPConn(gw.port)
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        c.send(build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=n), chat_body(True)))
        time.sleep(0.7)   # not reading
        peak = gw.rss_kib()
        head = c.read_head(5)
        check(head.status == 200, 'status %d' % head.status)
        st = read_stream(c, head, 30)
        check_complete_stream(head, st, n)
    finally:
        c.close()
    figure('backpressure[%s]: VmRSS %d KiB before, %d KiB while the client was not reading a %d-chunk stream'
           % (ctx.mode, rss0, peak, n))
    if not is_asan(ctx.env.args.gateway):
        check(peak - rss0 <= 2048, 'VmRSS grew by %d KiB while the client was not reading (bound 2048)'
              % (peak - rss0))


@test(params=[20])
def concurrent_streams(ctx, clients):
    gw = ctx.gw
    results = {}

    def one(i):
        try:
            rid = 'conc-%d-%s' % (i, uuid.uuid4().hex[:8])
            n = 10 + i % 7
            head, st, c, _ = stream_chat(gw.port, n=n, delay=20, rid=rid, timeout=10)
            c.close()
            if st is None:
                results[i] = 'status %d' % head.status
                return
            check(head.header('x-request-id') == rid, 'X-Request-Id %r' % head.header('x-request-id'))
            check_complete_stream(head, st, n)
            results[i] = None
        except Exception as e:
            results[i] = '%s: %s' % (type(e).__name__, e)

    ths = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
    for t in ths:
        t.start()
    end = time.monotonic() + bounded(15 * SCALE)
    for t in ths:
        t.join(max(0.0, end - time.monotonic()))
    bad = {i: results.get(i, 'did not finish') for i in range(clients) if results.get(i, 'x') is not None}
    check(not bad, '%d of %d concurrent streams failed, e.g. %s' % (len(bad), clients, short(next(iter(bad.items()), None))))


@test()
def keepalive_after_stream_error(ctx):
    gw = ctx.gw
    c = HTTPConn(gw.port)
    try:
        for fault in ('close-after:2', 'reset-after:2', 'status:500', 'hang-after:1'):
            head, st, _, _ = stream_chat(gw.port, conn=c, n=5, fault=fault, timeout=5)
            if st is not None:
                check_error_end(head, st, 5, fault + ': ')
            c.send(build_request('GET', '/ping', [('Host', 'x')]))
            r = c.read_response()
            check(r.status == 200, 'after %s: /ping on the same connection answered %d' % (fault, r.status))
            head, st, _, _ = stream_chat(gw.port, conn=c, n=3)
            check(st is not None, 'after %s: status %d' % (fault, head.status))
            check_complete_stream(head, st, 3, 'after %s: ' % fault)
    finally:
        c.close()


@test()
def upstream_restarted_stale_pool(ctx):
    """Pooled upstream connections die when the upstream restarts; the next request must
    not fail because of them."""
    mock, gw = ctx.pair('restart')
    for i in range(3):
        r = post_chat(gw.port, n=2)
        check(r.status == 200, 'warm-up %d: status %d' % (i, r.status))
    ctx.env.restart_mock(ctx.mode, 'restart')
    time.sleep(0.1)
    for i in range(3):
        r = post_chat(gw.port, n=2)
        check(r.status == 200, 'request %d after the upstream restarted: status %d body %s'
              % (i, r.status, short(r.body)))
        head, st, c, _ = stream_chat(gw.port, n=4)
        c.close()
        check(st is not None, 'stream %d after the upstream restarted: status %d body %s'
              % (i, head.status, short(head.body)))
        check_complete_stream(head, st, 4)


@test(ANY)
def head_request(ctx):
    c = HTTPConn(ctx.gw.port)
    try:
        c.send(build_request('HEAD', '/healthz', [('Host', 'x')]) + build_request('GET', '/ping', [('Host', 'x')]))
        r = c.read_response(method='HEAD')
        check(r.status == 200, 'HEAD /healthz: status %d' % r.status)
        r2 = c.read_response()
        check(r2.status == 200 and r2.json() == {'message': 'pong'},
              'the answer after HEAD is %d %s: a body was sent with the HEAD answer?' % (r2.status, short(r2.body)))
    finally:
        c.close()


@test()
def http10_client(ctx):
    gw = ctx.gw
    for stream in (True, False):
        c = HTTPConn(gw.port)
        try:
            raw = build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=6), chat_body(stream))
            c.send(raw.replace(b' HTTP/1.1\r\n', b' HTTP/1.0\r\n', 1))
            head = c.read_head()
            check(head.status == 200, 'stream=%s: status %d' % (stream, head.status))
            check(not head.is_chunked(), 'stream=%s: chunked answer to an HTTP/1.0 client' % stream)
            body = c.read_body(head, 10)
            check(c.wait_closed(2), 'stream=%s: connection left open for an HTTP/1.0 client' % stream)
        finally:
            c.close()
        if stream:
            p = SSEParser()
            st = Stream()
            st.events = p.feed(body + b'\n', time.monotonic())
            check(st.content() == expected_content(6), 'HTTP/1.0 stream content %s' % short(st.content()))
            check(st.datas()[-1] == '[DONE]', 'HTTP/1.0 stream does not end with [DONE]')
        else:
            j = json.loads(body)
            check(j['choices'][0]['message']['content'] == expected_content(6), 'HTTP/1.0 content')


@test(ANY)
def connection_close_honoured(ctx):
    c = HTTPConn(ctx.gw.port)
    try:
        c.send(build_request('GET', '/ping', [('Host', 'x'), ('Connection', 'close')]))
        r = c.read_response()
        check(r.status == 200, 'status %d' % r.status)
        check(c.wait_closed(2), 'connection not closed after Connection: close')
    finally:
        c.close()


@test()
def traceparent_propagated(ctx):
    tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
    r = post_chat(ctx.gw.port, n=2, extra=[('traceparent', tp)])
    check(r.status == 200, 'status %d' % r.status)
    got = ctx.mock.last()['headers'].get('traceparent')
    check(got == tp, 'upstream got traceparent %r' % got)


@test(ANY)
def empty_body_400(ctx):
    c = HTTPConn(ctx.gw.port)
    try:
        c.send(build_request('POST', '/v1/chat/completions', chat_headers(ctx.gw.port) + [('Content-Length', '0')]))
        r = c.read_response()
    finally:
        c.close()
    check(r.status == 400, 'status %d body %s' % (r.status, short(r.body)))
    check_error_shape(r.body, '400 body')


@test(ANY)
def log_lines_valid_json_hostile_input(ctx):
    gw = ctx.gw
    start = len(gw.proc.err_snapshot())
    rid = 'q"uo\\te-' + uuid.uuid4().hex[:8]
    body = json.dumps({'model': 'm"od\\el\n\u0001é', 'stream': False,
                       'messages': [{'role': 'user', 'content': 'x'}]}).encode()
    r = post_chat(gw.port, n=2, rid=rid, body=body)
    check(r.status in (200, 400), 'status %d' % r.status)
    r2 = get(gw.port, '/v1/x%22y%5Cz"w\\?a="b')
    time.sleep(0.3)
    lines = gw.proc.err_snapshot()[start:]
    check(len(lines) >= 2, 'expected 2 log lines, got %d' % len(lines))
    for l in lines:
        try:
            json.loads(l)
        except ValueError:
            fail('log line is not valid JSON: %s' % short(l, 400))


@test(ANY)
def client_keepalive_timeout(ctx):
    gw = ctx.use(ctx.env.gateway('plain', 'short'))
    c = HTTPConn(gw.port)
    try:
        c.send(build_request('GET', '/ping', [('Host', 'x')]))
        check(c.read_response().status == 200, 'first /ping')
        time.sleep(0.5)
        c.send(build_request('GET', '/ping', [('Host', 'x')]))
        check(c.read_response().status == 200, '/ping 0.5 s later on the same connection')
        t0 = time.monotonic()
        closed = c.wait_closed(3)
        took = time.monotonic() - t0
        check(closed, 'idle connection still open %.1f s later with --keepalive-timeout 1s' % took)
        check(0.8 <= took <= 1.0 + 1.0 * SCALE, 'idle connection closed after %.2f s with --keepalive-timeout 1s' % took)
    finally:
        c.close()


@test()
def request_timeout_error_event(ctx):
    gw = ctx.use(ctx.env.gateway(ctx.mode, 'short'))
    head, st, c, t_sent = stream_chat(gw.port, n=40, delay=200, timeout=8)
    c.close()
    check(st is not None, 'status %d body %s' % (head.status, short(head.body)))
    check_error_end(head, st, 40)
    took = st.errors()[0][0]['t'] - t_sent
    check(1.8 <= took <= 2.0 + 1.0 * SCALE, 'error event after %.2f s with --request-timeout 2s' % took)


@test(ANY)
def max_conns_503(ctx):
    gw = ctx.use(ctx.env.gateway('plain', 'maxconn'))
    held = []
    try:
        for _ in range(3):
            held.append(HTTPConn(gw.port))
        time.sleep(0.05)
        c = HTTPConn(gw.port)
        try:
            c.try_send(build_request('GET', '/ping', [('Host', 'x')]))
            r = c.read_response(3)
            check(r.status == 503, 'connection over --max-conns 3 answered %d' % r.status)
            check_error_shape(r.body, '503 body')
            check(r.header('Retry-After') is not None, 'the 503 over --max-conns has no Retry-After')
        finally:
            c.close()
    finally:
        for h in held:
            h.close()
    ok = wait_until(lambda: ping_ok(gw), 2.0, step=0.05)
    check(ok, 'gateway does not serve again after the held connections closed')






DEMO_OPENING = "Hello! This is ssegate's demo upstream"


def start_plain_gateway(ctx, name, args, env):
    """A gateway outside the shared fixtures; returns (proc, port, first stderr line)."""
    p = Proc(name, [ctx.env.args.gateway, '--listen', '127.0.0.1:0'] + args, env=clean_env(env))
    got = p.wait_line('err', lambda l: '"listen"' in l, 10 * SCALE)
    if not got:
        p.stop()
        fail('%s printed no "listen" line: %s' % (name, p.tail()))
    m = re.search(r'"listen"\s*:\s*"127\.0\.0\.1:(\d+)"', got[1])
    check(m is not None, 'no port in %r' % got[1])
    return p, int(m.group(1)), got[1]




@test(('tls',))
def tls_sessions_resumed(ctx):
    """New upstream TLS connections resume the session the gateway cached."""
    m, gw = ctx.pair('resume')  # its own pool: the shared one may hold idle connections
    check(post_chat(gw.port).status == 200, 'warm-up request failed')
    before = m.stats()
    conns = []
    try:
        # three streams at once need three upstream connections: at least two are new
        for _ in range(3):
            c = HTTPConn(gw.port)
            c.send(build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=3, delay=150),
                                 chat_body(True)))
            conns.append(c)
        for c in conns:
            head = c.read_head(5)
            check(head.status == 200, 'stream answered %d' % head.status)
            st = read_stream(c, head, 10)
            check(st.terminated, 'stream did not end: ' + st.describe())
    finally:
        for c in conns:
            c.close()
    after = m.stats()
    new = after['total'] - before['total']
    resumed = after['resumed'] - before['resumed']
    figure('tls resumption: %d new upstream connections, %d resumed' % (new, resumed))
    check(new >= 2, 'expected new upstream connections, got %d' % new)
    check(resumed == new, '%d of %d new upstream TLS connections resumed the cached session' % (resumed, new))

@test(ANY, timeout=25)
def demo_upstream_without_key(ctx):
    """§2: no key and no upstream → the built-in demo, said on the first log line;
    it streams a paced reply through the real relay, with no network."""
    for name, args, env in (('gw-demo-nokey', [], {}),
                            ('gw-demo-explicit', ['--upstream', 'demo'], {'OPENAI_API_KEY': 'sk-unused'})):
        p, port, first = start_plain_gateway(ctx, name, args, env)
        try:
            j = json.loads(first)
            check('demo' in j.get('msg', '') and j.get('upstream') == 'demo',
                  '%s: first log line does not say demo: %s' % (name, first))
            check('curl' in j.get('try', ''), '%s: first log line has no command to try: %s' % (name, first))
            head, st, c, _ = stream_chat(port, timeout=20, auth=False, body=json.dumps(
                {'model': 'demo', 'stream': True, 'messages': [{'role': 'user', 'content': 'hi'}]}).encode())
            c.close()
            check(st is not None, '%s: demo stream answered %s' % (name, getattr(head, 'status', '?')))
            check(st.terminated and st.datas()[-1] == '[DONE]', '%s: demo stream did not end: %s'
                  % (name, st.describe()))
            text = st.content()
            check(text.startswith(DEMO_OPENING), '%s: unexpected demo reply: %s' % (name, short(text)))
            times = [e['t'] for e in st.content_events()]
            gaps = sorted(b - a for a, b in zip(times, times[1:]))
            check(len(gaps) > 10, '%s: the demo reply came in %d events' % (name, len(times)))
            median = gaps[len(gaps) // 2]
            check(0.010 <= median <= 0.060 * SCALE,
                  '%s: demo tokens are not paced like a model (median gap %.1f ms)' % (name, median * 1000))
            figure('demo[%s]: %d tokens, median gap %.1f ms' % (name, len(times), median * 1000))
            r = post_chat(port, stream=False, timeout=20, auth=False, body=json.dumps(
                {'model': 'demo', 'messages': [{'role': 'user', 'content': 'hi'}]}).encode())
            check(r.status == 200, '%s: non-streaming demo answered %d' % (name, r.status))
            check(r.json()['choices'][0]['message']['content'] == text,
                  '%s: non-streaming demo reply differs from the streamed one' % name)
            end = time.monotonic() + bounded(3 * SCALE)  # access lines leave in batches, within 20 ms
            while True:
                rec = [r for r in log_records_of(p) if r.get('path') == '/v1/chat/completions']
                if len(rec) >= 2 or time.monotonic() >= end:
                    break
                time.sleep(0.02)
            check(rec and all(r.get('upstream') == 'demo' for r in rec),
                  '%s: access log does not name the demo upstream: %s' % (name, rec[:1]))
            m = get(port, '/v1/models')
            check(m.status == 200 and 'demo' in m.body.decode(), '%s: /v1/models lacks demo' % name)
        finally:
            p.stop()
        check(p.p.returncode == 0, '%s exited %s on SIGTERM' % (name, p.p.returncode))


@test(ANY)
def keyless_http_upstream_is_real(ctx):
    """§2: a keyless http:// upstream (a local model server) is a real upstream."""
    m = ctx.env.mock('plain')
    p, port, first = start_plain_gateway(ctx, 'gw-keyless', ['--upstream', 'http://127.0.0.1:%d/v1' % m.port], {})
    try:
        check('demo' not in first, 'a keyless http:// upstream started the demo: %s' % first)
        r = post_chat(port, stream=False, auth=False)
        # the mock insists on the upstream key, which this gateway does not have: the
        # client's key is not at fault, so the answer is the gateway's 502 (§6)
        check(r.status == 502, 'keyless upstream request answered %d, want 502' % r.status)
        e = check_error_shape(r.body)
        check(e['code'] == 'upstream_auth_error' and 'no upstream key' in e['message'], 'error %s' % e)
        last = m.last()
        check('authorization' not in last['headers'], 'a keyless gateway sent an Authorization header upstream')
    finally:
        p.stop()

@test(('plain', 'tls'), timeout=25)
def sigterm_drains_streams(ctx):
    """§8: on SIGTERM the listener closes and idle connections go, streams in
    flight finish, then the process exits 0."""
    m = ctx.mock
    if ctx.mode == 'tls':
        up, ca = 'https://localhost:%d/v1' % m.port, ctx.env.ca
    else:
        up, ca = 'http://127.0.0.1:%d/v1' % m.port, None
    gw = Gateway(ctx.env.args.gateway, 'gw-drain-' + ctx.mode, up, ca, gw_args('main'))
    try:
        c = HTTPConn(gw.port)
        c.send(build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=10, delay=100),
                             chat_body(True)))
        head = c.read_head(5)
        check(head.status == 200, 'stream before SIGTERM answered %d' % head.status)
        idle = HTTPConn(gw.port)
        idle.send(build_request('GET', '/ping', [('Host', 'x')]))
        check(idle.read_response(3).status == 200, '/ping before SIGTERM failed')

        os.kill(gw.pid, signal.SIGTERM)

        def refused():
            try:
                socket.create_connection(('127.0.0.1', gw.port), timeout=0.5).close()
                return False
            except OSError:
                return True
        check(wait_until(refused, 2.0, step=0.02), 'the listener still accepts after SIGTERM')
        check(idle.wait_closed(2.0), 'an idle keep-alive connection was not closed on SIGTERM')
        st = read_stream(c, head, 10)
        check(st.terminated and not st.errors(), 'the stream in flight did not finish: ' + st.describe())
        check(st.content() == expected_content(10), 'stream content changed by the drain')
        try:
            rc = gw.proc.p.wait(timeout=5 * SCALE)
        except subprocess.TimeoutExpired:
            fail('the gateway did not exit after its last stream ended')
        check(rc == 0, 'the gateway exited %s after draining' % rc)
        check(any(r.get('msg') == 'draining' for r in gw.log_records()), 'no "draining" log line')
    finally:
        gw.proc.stop()

@test(('plain',), timeout=25)
def sse_keepalive_comment_when_upstream_silent(ctx):
    gw = ctx.use(ctx.env.gateway('plain', 'slow'))
    c = HTTPConn(gw.port)
    try:
        t0 = time.monotonic()
        c.send(build_request('POST', '/v1/chat/completions', chat_headers(gw.port, n=2, delay=17000), chat_body(True)))
        head = c.read_head(20)
        check(head.status == 200, 'status %d' % head.status)
        st = read_stream(c, head, 18, stop=lambda s: bool(s.comments_seen()))
    finally:
        c.close()
    took = time.monotonic() - t0
    check(any('keep-alive' in x for x in st.comments), 'no ": keep-alive" within %.1f s of upstream silence (%s)'
          % (took, st.describe()))
    check(took <= 16.5 * max(1.0, SCALE), '": keep-alive" only after %.1f s' % took)
    figure('SSE keep-alive comment %.1f s after the request (upstream silent for 17 s)' % took)


# --- resources ---------------------------------------------------------------------

def is_asan(path):
    try:
        with open(path, 'rb') as f:
            data = f.read()
        return b'__asan_init' in data or b'AddressSanitizer' in data
    except OSError:
        return False


@test(timeout=90)
def no_fd_or_rss_growth(ctx):
    gw = ctx.gw
    port = gw.port

    def ka(count, stream=False):
        c = HTTPConn(port)
        try:
            for i in range(count):
                if stream:
                    head, st, _, _ = stream_chat(port, conn=c, n=3)
                    check(st is not None and st.terminated, 'stream request %d failed' % i)
                else:
                    c.send(build_request('POST', '/v1/chat/completions', chat_headers(port, n=3), chat_body(False)))
                    r = c.read_response()
                    check(r.status == 200, 'request %d: status %d' % (i, r.status))
        finally:
            c.close()

    def fresh(count):
        for i in range(count):
            r = post_chat(port, n=3)
            check(r.status == 200, 'new-connection request %d: status %d' % (i, r.status))

    ka(100)
    fresh(20)
    ka(20, stream=True)
    time.sleep(0.2)
    fd0, rss0 = gw.fd_count(), gw.rss_kib()
    s0 = ctx.mock.stats()
    t0 = time.monotonic()
    ka(700)
    fresh(300)
    ka(200, stream=True)
    took = time.monotonic() - t0
    s1 = ctx.mock.stats()
    check(s1['requests'] - s0['requests'] == 1200, 'the mock saw %d requests, want 1200'
          % (s1['requests'] - s0['requests']))
    fd1 = wait_until(lambda: (lambda n: n if n <= fd0 else None)(gw.fd_count()), 2.0, step=0.05) or gw.fd_count()
    rss1 = gw.rss_kib()
    figure('resources[%s]: 1200 requests in %.1f s (%d new upstream connections); fds %d -> %d; '
           'VmRSS %d -> %d KiB' % (ctx.mode, took, s1['total'] - s0['total'], fd0, fd1, rss0, rss1))
    check(fd1 <= fd0, 'fd count grew from %d to %d' % (fd0, fd1))
    if is_asan(ctx.env.args.gateway):
        return  # ASan's quarantine makes RSS meaningless
    check(rss1 - rss0 <= 2048, 'VmRSS grew by %d KiB (bound 2048)' % (rss1 - rss0))


# Further suites live beside this file as suite_*.py; they share this module's
# helpers and register their tests with @test like the ones above.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _name in sorted(os.listdir(_HERE)):
    if _name.startswith('suite_') and _name.endswith('.py'):
        with open(os.path.join(_HERE, _name)) as _f:
            exec(compile(_f.read(), os.path.join(_HERE, _name), 'exec'), globals())



@test(ANY, timeout=60)
def logs_have_no_secrets(ctx):
    r = post_chat(ctx.gw.port, n=2)   # at least one request with a client key
    check(r.status == 200, 'status %d' % r.status)
    ctx.gw.wait_log(lambda rec: rec.get('req_id') == r.header('x-request-id'))
    bad = []
    secrets = [('upstream key', UPSTREAM_KEY)] + [('client Authorization', s.split(' ', 1)[1]) for s in CLIENT_SECRETS]
    with PROCS_LOCK:
        procs = [p for p in ALL_PROCS if p.name.startswith(('gw-', 'refused-'))]
    for p in procs:
        text = '\n'.join(p.err_snapshot())
        for what, tok in secrets:
            at = text.find(tok)
            if at >= 0:
                line = text[text.rfind('\n', 0, at) + 1:text.find('\n', at) if text.find('\n', at) >= 0 else None]
                bad.append((p.name, what, line))
    check(not bad, '%d log lines carry a secret, e.g. %s' % (len(bad), short(bad[0] if bad else None)))


# ---------------------------------------------------------------------------
# Runner


def run_test(env, name, fn, mode, timeout, param):
    ctx = Ctx(env, mode)
    res = {}

    def target():
        try:
            if param is None:
                fn(ctx)
            else:
                fn(ctx, param)
        except TestFailure as e:
            res['err'] = str(e)
        except Exception as e:
            tb = traceback.extract_tb(e.__traceback__)
            where = next((f for f in reversed(tb) if f.filename == __file__), tb[-1] if tb else None)
            res['err'] = '%s: %s%s' % (type(e).__name__, e, ' (line %d)' % where.lineno if where else '')
        res['done'] = True

    th = threading.Thread(target=target, daemon=True)
    th.start()
    left = DEADLINE - time.monotonic()
    th.join(max(0.0, min(timeout * max(1.0, SCALE), left)))
    if not res.get('done'):
        return 'test did not finish within %.0f s' % min(timeout * max(1.0, SCALE), left)
    err = res.get('err')
    # the gateway must survive every test and keep serving
    for gw in ctx.used:
        if not gw.proc.alive():
            err = (err + '; ' if err else '') + '%s exited with status %s: %s' % (
                gw.name, gw.proc.p.poll(), gw.proc.tail(8))
        elif time.monotonic() < DEADLINE:
            try:
                if not ping_ok(gw, 2):
                    err = (err + '; ' if err else '') + '%s does not answer /ping after the test' % gw.name
            except Exception as e:
                err = (err + '; ' if err else '') + '%s /ping after the test failed: %s' % (gw.name, e)
    for key, obj in env.procs():
        if isinstance(obj, Mock) and not obj.proc.alive():
            err = (err + '; ' if err else '') + '%s exited with status %s: %s' % (
                obj.name, obj.proc.p.poll(), obj.proc.tail(8))
    return err


SAN_RE = re.compile(r'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|SUMMARY: \w+Sanitizer')


def sanitizer_report():
    bad = []
    with PROCS_LOCK:
        procs = list(ALL_PROCS)
    for p in procs:
        lines = p.err_snapshot()
        for i, l in enumerate(lines):
            if SAN_RE.search(l):
                bad.append('%s: %s' % (p.name, '\n    '.join(lines[i:i + 12])))
                break
    return bad


def serve(args):
    """Starts a plaintext mock and a gateway with client keys (sk-sdk-good-0123456789,
    and sk-sdk-rpm-0123456789 limited to 60 requests a minute), prints the gateway's
    port, runs until stdin closes (or SIGTERM, or --serve-seconds). --serve-no-keys leaves
    client auth off; --serve-mock-arg passes an argument on to the mock."""
    mock = Mock(args.mock, 'mock-serve', extra=args.serve_mock_arg)
    # client keys the SDK suite knows: one without limits, one at 60 requests a minute
    keys_dir = tempfile.mkdtemp(prefix='ssegate-serve-')
    keys = os.path.join(keys_dir, 'keys')
    with open(keys, 'w') as f:
        f.write('sk-sdk-good-0123456789 sdk\nsk-sdk-rpm-0123456789 sdk-rpm 60 - -\n')
    try:
        gw = Gateway(args.gateway, 'gw-serve', 'http://127.0.0.1:%d/v1' % mock.port, None,
                     ['--first-byte-timeout', '5s', '--idle-timeout', '5s', '--retries', '0']
                     + ([] if args.serve_no_keys else ['--keys-file', keys]))
    finally:
        import shutil
        shutil.rmtree(keys_dir, ignore_errors=True)
    print(gw.port, flush=True)
    end = time.monotonic() + args.serve_seconds
    done = threading.Event()

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not done.is_set() and time.monotonic() < end and gw.proc.alive():
        done.wait(0.2)
    if os.environ.get('SSEGATE_SERVE_LOG'):
        with open(os.environ['SSEGATE_SERVE_LOG'], 'w') as f:
            f.write('\n'.join(gw.proc.err_snapshot()) + '\n')
    return 0


def select_tests(args):
    tests = TESTS
    if args.filter:
        tests = [t for t in tests if any(f in t[0] for f in args.filter)]
    if args.only_plain:
        tests = [t for t in tests if t[2] == 'plain']
    if args.only_tls:
        tests = [t for t in tests if t[2] == 'tls']
    return tests


def main():
    global SCALE, DEADLINE
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--gateway', default='./ssegate')
    ap.add_argument('--mock', default='tools/mock-upstream')
    ap.add_argument('-k', dest='filter', action='append', default=[], help='run tests whose name contains this')
    g = ap.add_mutually_exclusive_group()
    g.add_argument('--only-plain', action='store_true')
    g.add_argument('--only-tls', action='store_true')
    ap.add_argument('--scale', type=float, default=None, help='timing slack factor (default 1, 2 under ASan)')
    ap.add_argument('--list', action='store_true')
    ap.add_argument('--budget', type=float, default=SUITE_BUDGET_S, help='whole-suite time limit, seconds')
    ap.add_argument('--serve', action='store_true')
    ap.add_argument('--serve-seconds', type=float, default=600)
    ap.add_argument('--serve-no-keys', action='store_true', help='--serve: no client auth')
    ap.add_argument('--serve-mock-arg', action='append', default=[], help='--serve: an argument for the mock')
    ap.add_argument('-v', '--verbose', action='store_true', help='print gateway stderr tails on failure')
    args = ap.parse_args()

    def on_term(signum, frame):
        # once only: `timeout` signals the process and its group, and a second
        # KeyboardInterrupt must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, on_term)

    if args.list:
        for t in select_tests(args):
            print(t[0])
        return 0
    for b in (args.gateway, args.mock):
        if not os.access(b, os.X_OK):
            print('FAIL setup: %s is not an executable (run make first)' % b)
            print('0 passed, 1 failed')
            return 1
    asan = is_asan(args.gateway) or is_asan(args.mock)
    SCALE = args.scale if args.scale is not None else (2.0 if asan else 1.0)

    if args.serve:
        try:
            return serve(args)
        except KeyboardInterrupt:
            return 0
        finally:
            stop_all()

    tests = select_tests(args)

    DEADLINE = time.monotonic() + args.budget
    passed = failed = 0
    interrupted = False
    tmp = tempfile.mkdtemp(prefix='ssegate-it-')
    try:
        try:
            make_certs(tmp)
        except Exception as e:
            print('FAIL setup: cannot make the test CA: %s' % e)
            print('0 passed, 1 failed')
            return 1
        env = Env(args, tmp)
        for name, fn, mode, timeout, param in tests:
            if time.monotonic() >= DEADLINE:
                print('FAIL %s: not run, suite deadline reached' % name, flush=True)
                failed += 1
                continue
            t0 = time.monotonic()
            try:
                err = run_test(env, name, fn, mode, timeout, param)
            except Exception as e:   # a fixture that cannot start
                err = 'setup: %s: %s' % (type(e).__name__, e)
            dt = time.monotonic() - t0
            if err:
                failed += 1
                print('FAIL %s: %s' % (name, err.replace('\n', '\n    ')), flush=True)
                if args.verbose:
                    for gw in env.gateways():
                        print('    [%s stderr tail]\n    %s' % (gw.name, gw.proc.tail(5).replace('\n', '\n    ')))
            else:
                passed += 1
                print('ok %s (%.2fs)' % (name, dt), flush=True)
    except KeyboardInterrupt:
        print('interrupted', flush=True)
        interrupted = True
        failed += 1
    finally:
        stop_all()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    san = sanitizer_report()
    if san:
        failed += 1
        print('FAIL sanitizer_reports: %s' % '\n  '.join(san))
    if tests and not interrupted:
        # §8: SIGTERM with nothing in flight -> exit 0 (at once)
        bad = ['%s: %s' % (p.name, p.p.returncode) for p in ALL_PROCS
               if p.name.startswith('gw-') and p.p.returncode != 0]
        if bad:
            failed += 1
            print('FAIL gateway_exit_status: gateways did not exit 0 on SIGTERM '
                  '(-9: killed after 3 s): %s' % ', '.join(bad))
        else:
            passed += 1
            print('ok gateway_exit_status')
    for f in FIGURES:
        print('# ' + f)
    print('%d passed, %d failed' % (passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
