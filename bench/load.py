#!/usr/bin/env python3
"""Footprint and latency probes for bench/run.sh, one per subcommand:

  streams PORT N PID   opens N streamed chat requests at once (paced by the
                       mock through X-Mock-Delay-Ms, so they stay open), waits
                       until every one has its first event, and prints PID's
                       RSS growth per stream in bytes.
  idle PORT N PID      opens N keep-alive connections, one plain request on
                       each, leaves them idle and prints PID's RSS growth per
                       connection in bytes.
  latency PORT N MODE  N sequential requests on one keep-alive connection;
                       prints the p50 and p99 in microseconds of the whole
                       answer (MODE plain) or of the first event (MODE stream).

Every wait is bounded; connections close when the probe ends."""
import asyncio
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sequential import read_answer  # noqa: E402

DEADLINE_S = 90  # for all N connections to reach their first byte or event
PACE_MS = 1000   # between events of a held stream
HELD_CHUNKS = 300  # so a held stream outlives the probe by minutes


def request(stream, extra=b""):
    body = b'{"model":"bench","stream":%s,"messages":[{"role":"user","content":"hi"}]}' % (
        b"true" if stream else b"false")
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n%s"
            b"Content-Length: %d\r\n\r\n%s" % (extra, len(body), body))


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS for %d" % pid)


async def open_until(port, payload, done, gate):
    """Connects, sends payload and reads until done(bytes) holds."""
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    buf = b""
    while not done(buf):
        chunk = await reader.read(65536)
        if not chunk:
            raise RuntimeError("closed early: %r" % buf[:80])
        buf += chunk
    return writer


def has_first_event(buf):
    head, sep, body = buf.partition(b"\r\n\r\n")
    return bool(sep) and b"data:" in body


def has_whole_answer(buf):
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return body.endswith(b"0\r\n\r\n")


async def hold(port, n, pid, payload, done):
    gate = asyncio.Semaphore(128)  # connects in flight, so no listen queue overflows
    # A few requests first, so start-up allocations are in the baseline.
    for w in await asyncio.wait_for(asyncio.gather(*(open_until(port, request(False), has_whole_answer, gate)
                                                     for _ in range(4))), DEADLINE_S):
        w.close()
    await asyncio.sleep(0.3)
    base = rss_bytes(pid)
    writers, tasks = [], []
    try:
        tasks = [asyncio.ensure_future(open_until(port, payload, done, gate)) for _ in range(n)]
        writers = await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE_S)
        await asyncio.sleep(0.5)
        print((rss_bytes(pid) - base) // n)
    finally:
        for t in tasks:
            t.cancel()
        for w in writers:
            w.close()


def recv_some(sock):
    chunk = sock.recv(65536)
    if not chunk:
        raise SystemExit("connection closed before the first event")
    return chunk


def latency(port, n, stream):
    payload = request(stream)
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    buf = b""
    for _ in range(n):
        t0 = time.perf_counter_ns()
        sock.sendall(payload)
        if stream:
            while not has_first_event(buf):
                buf += recv_some(sock)
            times.append(time.perf_counter_ns() - t0)
            buf = read_answer(sock, buf)
        else:
            buf = read_answer(sock, buf)
            times.append(time.perf_counter_ns() - t0)
    sock.close()
    times.sort()
    print("%.1f %.1f" % (times[len(times) // 2] / 1000, times[min(len(times) - 1, len(times) * 99 // 100)] / 1000))


def main():
    what, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if what == "streams":
        paced = b"X-Mock-Delay-Ms: %d\r\nX-Mock-Chunks: %d\r\n" % (PACE_MS, HELD_CHUNKS)
        asyncio.run(hold(port, n, int(sys.argv[4]), request(True, paced), has_first_event))
    elif what == "idle":
        asyncio.run(hold(port, n, int(sys.argv[4]), request(False), has_whole_answer))
    elif what == "latency":
        latency(port, n, sys.argv[4] == "stream")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
