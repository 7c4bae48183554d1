#!/usr/bin/env python3
"""A small authoritative-looking DNS server for the tests: UDP and TCP on
127.0.0.1, one ephemeral port for both, answers from a table that can be
changed while it runs. Python 3 standard library only.

Imported:
    srv = DNSServer()                      # srv.port
    srv.set('mock.test', a=['127.0.0.1'], ttl=1)
    srv.set('alias.test', cname='mock.test')
    srv.set('gone.test', mode='nxdomain')  # or 'servfail', 'refused', 'silent', 'tc'
    srv.set_wildcard('bench.test', a=['127.0.0.1'])   # every name under bench.test
    srv.queries('mock.test', transport='tcp')         # how often it was asked
    srv.close()

As a process (for benchmarks):
    python3 dnsserver.py [--control table.json]
prints "LISTEN 127.0.0.1:PORT" and serves until stdin closes; the control
file, re-read when it changes, is {"names": {NAME: {"a": [...], "aaaa": [...],
"cname": NAME, "ttl": N, "mode": M}}, "wildcards": {SUFFIX: {...}}}.

Modes: 'nxdomain' (RCODE 3 with an SOA), 'servfail', 'refused', 'silent'
(no answer at all), 'tc' (over UDP an empty answer with TC set, the real one
over TCP). A name that is not in the table is NXDOMAIN; one without records
of the asked type is NODATA (NOERROR, no answer, an SOA). Answers name the
question by a compression pointer.
"""

import json
import os
import select
import socket
import struct
import sys
import threading

TYPE_A, TYPE_CNAME, TYPE_SOA, TYPE_AAAA = 1, 5, 6, 28
CLASS_IN = 1


def _norm(name):
    return name.lower().rstrip('.')


def _encode_name(name):
    out = b''
    for label in _norm(name).split('.'):
        if label:
            raw = label.encode('ascii')
            out += bytes([len(raw)]) + raw
    return out + b'\0'


def _rr(owner, rtype, ttl, rdata):
    return owner + struct.pack('>HHIH', rtype, CLASS_IN, ttl, len(rdata)) + rdata


class DNSServer:
    def __init__(self, host='127.0.0.1', soa_minimum=1):
        self.host = host
        self.soa_minimum = soa_minimum
        self.lock = threading.Lock()
        self.names = {}
        self.wildcards = {}
        self.asked = []            # (transport, name, qtype)
        self._stop = threading.Event()
        self.udp = self.tcp = None
        for _ in range(20):        # one port for both: take UDP's, hope TCP's is free too
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind((host, 0))
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                t.bind((host, u.getsockname()[1]))
            except OSError:
                u.close()
                t.close()
                continue
            self.udp, self.tcp = u, t
            break
        if not self.udp:
            raise RuntimeError('no port free for both UDP and TCP')
        self.port = self.udp.getsockname()[1]
        self.tcp.listen(16)
        self.threads = [threading.Thread(target=self._serve_udp, daemon=True),
                        threading.Thread(target=self._serve_tcp, daemon=True)]
        for th in self.threads:
            th.start()

    # ---- the table ----

    def set(self, name, a=(), aaaa=(), cname=None, ttl=60, mode=None):
        with self.lock:
            self.names[_norm(name)] = {'a': list(a), 'aaaa': list(aaaa), 'cname': cname, 'ttl': ttl, 'mode': mode}

    def set_wildcard(self, suffix, a=(), aaaa=(), ttl=60, mode=None):
        with self.lock:
            self.wildcards[_norm(suffix)] = {'a': list(a), 'aaaa': list(aaaa), 'cname': None, 'ttl': ttl,
                                             'mode': mode}

    def remove(self, name):
        with self.lock:
            self.names.pop(_norm(name), None)

    def load(self, table):
        with self.lock:
            self.names = {}
            self.wildcards = {}
        for n, e in table.get('names', {}).items():
            self.set(n, e.get('a', ()), e.get('aaaa', ()), e.get('cname'), e.get('ttl', 60), e.get('mode'))
        for n, e in table.get('wildcards', {}).items():
            self.set_wildcard(n, e.get('a', ()), e.get('aaaa', ()), e.get('ttl', 60), e.get('mode'))

    def queries(self, name=None, transport=None, qtype=None):
        with self.lock:
            return sum(1 for t, n, q in self.asked
                       if (name is None or n == _norm(name)) and (transport is None or t == transport)
                       and (qtype is None or q == qtype))

    def _entry(self, name):
        e = self.names.get(name)
        if e is not None:
            return e
        for suffix, w in self.wildcards.items():
            if name.endswith('.' + suffix):
                return w
        return None

    # ---- the wire ----

    def answer(self, msg, transport):
        """The response to one query message, or None for silence."""
        if len(msg) < 12:
            return None
        qid, flags, qd = struct.unpack('>HHH', msg[:6])
        if flags & 0x8000 or qd != 1:
            return None
        pos, labels = 12, []
        while pos < len(msg) and msg[pos] != 0:
            n = msg[pos]
            if n > 63 or pos + 1 + n > len(msg):
                return None
            labels.append(msg[pos + 1:pos + 1 + n].decode('ascii', 'replace'))
            pos += 1 + n
        pos += 1
        if pos + 4 > len(msg):
            return None
        qtype, qclass = struct.unpack('>HH', msg[pos:pos + 4])
        question = msg[12:pos + 4]
        qname = _norm('.'.join(labels))
        with self.lock:
            self.asked.append((transport, qname, qtype))
            entry = self._entry(qname)
            mode = entry['mode'] if entry else 'nxdomain'
        rd = flags & 0x0100
        if mode == 'silent':
            return None

        def reply(rcode, answers=(), authority=(), tc=False):
            fl = 0x8000 | 0x0400 | rd | 0x0080 | (0x0200 if tc else 0) | rcode
            head = struct.pack('>HHHHHH', qid, fl, 1, len(answers), len(authority), 0)
            return head + question + b''.join(answers) + b''.join(authority)

        zone = qname.split('.')[-1]

        def soa():
            rdata = _encode_name('ns.' + zone) + _encode_name('hostmaster.' + zone) + struct.pack(
                '>IIIII', 1, 3600, 600, 86400, self.soa_minimum)
            return _rr(_encode_name(zone), TYPE_SOA, 3600, rdata)

        if mode == 'servfail':
            return reply(2)
        if mode == 'refused':
            return reply(5)
        if mode == 'nxdomain':
            return reply(3, authority=[soa()])
        if mode == 'tc' and transport == 'udp':
            return reply(0, tc=True)
        answers, owner, seen = [], b'\xc0\x0c', set()
        current = entry
        while current and current['cname'] and len(seen) < 10:
            target = _norm(current['cname'])
            seen.add(target)
            answers.append(_rr(owner, TYPE_CNAME, current['ttl'], _encode_name(target)))
            owner = _encode_name(target)
            with self.lock:
                current = self._entry(target)
        found = 0
        if current:
            if qtype == TYPE_A:
                for ip in current['a']:
                    answers.append(_rr(owner, TYPE_A, current['ttl'], socket.inet_pton(socket.AF_INET, ip)))
                    found += 1
            elif qtype == TYPE_AAAA:
                for ip in current['aaaa']:
                    answers.append(_rr(owner, TYPE_AAAA, current['ttl'], socket.inet_pton(socket.AF_INET6, ip)))
                    found += 1
        if not found:   # NODATA (after the aliases, if any): the zone's SOA says for how long
            return reply(0, answers, [soa()])
        return reply(0, answers)

    def _serve_udp(self):
        while not self._stop.is_set():
            r, _, _ = select.select([self.udp], [], [], 0.2)
            if not r:
                continue
            try:
                msg, peer = self.udp.recvfrom(4096)
            except OSError:
                return
            resp = self.answer(msg, 'udp')
            if resp is not None:
                try:
                    self.udp.sendto(resp, peer)
                except OSError:
                    pass

    def _serve_tcp(self):
        while not self._stop.is_set():
            r, _, _ = select.select([self.tcp], [], [], 0.2)
            if not r:
                continue
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn):
        conn.settimeout(5)
        try:
            while not self._stop.is_set():
                head = self._read_exact(conn, 2)
                if head is None:
                    return
                msg = self._read_exact(conn, struct.unpack('>H', head)[0])
                if msg is None:
                    return
                resp = self.answer(msg, 'tcp')
                if resp is None:
                    continue
                conn.sendall(struct.pack('>H', len(resp)) + resp)
        except OSError:
            pass
        finally:
            conn.close()

    @staticmethod
    def _read_exact(conn, n):
        buf = b''
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def close(self):
        self._stop.set()
        for th in self.threads:
            th.join(2)
        self.udp.close()
        self.tcp.close()


def main():
    control = None
    if len(sys.argv) == 3 and sys.argv[1] == '--control':
        control = sys.argv[2]
    elif len(sys.argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    srv = DNSServer()
    print('LISTEN 127.0.0.1:%d' % srv.port, flush=True)
    seen = None
    done = threading.Event()

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not done.is_set():
        if control:
            try:
                st = os.stat(control)
                stamp = (st.st_mtime_ns, st.st_size)
                if stamp != seen:
                    with open(control) as f:
                        srv.load(json.load(f))
                    seen = stamp
            except (OSError, ValueError):
                pass
        done.wait(0.1)
    srv.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
