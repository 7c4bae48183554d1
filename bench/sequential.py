#!/usr/bin/env python3
"""Sends exactly N requests, one after another on one keep-alive connection,
and reads every answer to its end. For instruction counts under callgrind,
where a fixed amount of work matters more than speed. With a fourth argument,
each request carries `Authorization: Bearer <it>`."""
import socket
import sys


def read_answer(sock, buf):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("connection closed in a head")
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").lower().split("\r\n")
    if not lines[0].startswith("http/1.1 200"):
        raise SystemExit("unexpected answer: " + lines[0])
    length = next((int(l.split(":", 1)[1]) for l in lines if l.startswith("content-length:")), None)
    if length is not None:
        while len(buf) < length:
            buf += sock.recv(65536)
        return buf[length:]
    while True:  # chunked
        while b"\r\n" not in buf:
            buf += sock.recv(65536)
        size_line, _, buf = buf.partition(b"\r\n")
        size = int(size_line, 16)
        while len(buf) < size + 2:
            buf += sock.recv(65536)
        buf = buf[size + 2:]
        if size == 0:
            return buf


def main():
    port, count, stream = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "stream"
    auth = b"Authorization: Bearer %s\r\n" % sys.argv[4].encode() if len(sys.argv) > 4 else b""
    body = b'{"model":"bench","stream":%s,"messages":[{"role":"user","content":"hi"}]}' % (
        b"true" if stream else b"false")
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n%s"
               b"Content-Length: %d\r\n\r\n%s" % (auth, len(body), body))
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    buf = b""
    for _ in range(count):
        sock.sendall(request)
        buf = read_answer(sock, buf)
    sock.close()


if __name__ == "__main__":
    main()
