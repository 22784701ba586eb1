"""The hand-written HTTP client the protocol tests use reads exactly one answer at a time."""

from __future__ import annotations

import socket

from support.rawhttp import read_answer


def answer(body: bytes, *headers: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def test_pipelined_answers_that_arrive_in_one_read_are_each_read_whole():
    server, client = socket.socketpair()
    with server, client:
        server.sendall(answer(b"first") + answer(b"second", "x-request-id: 2")
                       + answer(b"third"))
        server.shutdown(socket.SHUT_WR)
        first, second, third = (read_answer(client) for _ in range(3))
    assert [first.body, second.body, third.body] == [b"first", b"second", b"third"]
    assert second.headers["x-request-id"] == "2" and third.status == 200
