"""HTTP/1.1 written by hand over a plain socket, for the clients a normal library won't be:
ones that trickle their headers, stall mid-request or send a header without end."""

from __future__ import annotations

import select
import socket
import time
import weakref
from dataclasses import dataclass


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def connect(url: str, timeout: float = 10) -> socket.socket:
    """A connected socket to ``http://HOST:PORT``; reads time out after ``timeout`` s."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    return sock


def request_head(method: str, path: str, *headers: str) -> bytes:
    """The request line and headers (Host included), ended by the blank line."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


# Bytes read past an answer (the next pipelined answer's start), kept for the next read.
_unread: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_answer(sock: socket.socket) -> RawAnswer:
    """One response: the status line, headers and a Content-Length body (or, without one, the
    bytes up to the server's close). Raises TimeoutError when none comes in the socket's time.
    Answers to pipelined requests can arrive in one read: what follows this one is kept for the
    next call on the same socket."""
    data = _unread.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response head: {data[:200]!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, value = line.split(":", 1)
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"]) if "content-length" in headers else None
    while length is None or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    if length is not None and len(body) > length:
        _unread[sock] = body[length:]
        body = body[:length]
    return RawAnswer(int(status_line.split()[1]), headers, body)


def trickle_until_answered(sock: socket.socket, every_s: float, for_s: float
                           ) -> tuple[RawAnswer | None, float]:
    """Send a request line, then one short header line every ``every_s`` s (never the blank
    line that ends the headers) until the server answers or ``for_s`` s pass; returns the answer
    (None if none came) and the seconds from the request line to it."""
    start = time.monotonic()
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n")
    number = 0
    while time.monotonic() - start < for_s:
        try:
            sock.sendall(f"X-Trickle-{number}: a\r\n".encode("ascii"))
        except OSError:  # closed by the server: what did it say?
            return read_answer(sock), time.monotonic() - start
        number += 1
        readable, _, _ = select.select([sock], [], [], every_s)
        if readable:
            return read_answer(sock), time.monotonic() - start
    return None, time.monotonic() - start
