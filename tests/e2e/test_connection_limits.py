"""End to end: what one connection may cost a real `lab2prod serve` (HEADER_TIMEOUT_S,
MAX_HEADER_BYTES, MAX_CONNECTIONS), driven by hand-written HTTP over real sockets."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.rawhttp import connect, read_answer, request_head, trickle_until_answered
from support.registry import one_version_registry
from support.servers import ServeProcess

pytestmark = pytest.mark.slow

CAP = 16


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return one_version_registry(tmp_path_factory.mktemp("e2e-limits"))


@pytest.fixture(scope="module")
def impatient(registry: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[ServeProcess]:
    """A server that waits 2 s for a request's headers."""
    with ServeProcess(registry, tmp_path_factory.mktemp("impatient"), HEADER_TIMEOUT_S="2",
                      TORCH_THREADS="1") as running:
        yield running


@pytest.fixture(scope="module")
def capped(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A server that holds at most CAP connections (and waits long for headers)."""
    with ServeProcess(registry, tmp_path_factory.mktemp("capped"), MAX_CONNECTIONS=str(CAP),
                      HEADER_TIMEOUT_S="120", TORCH_THREADS="1") as running:
        yield running


def refused(server: ServeProcess) -> dict[str, float]:
    """lab2prod_connections_refused_total by reason, from the server's /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    pattern = r'^lab2prod_connections_refused_total\{reason="(\w+)"\} (\S+)$'
    return {reason: float(value) for reason, value in re.findall(pattern, text, re.M)}


def predicts(server: ServeProcess) -> int:
    return httpx.post(f"{server.url}/predict", json={"pixels": [3] * 784}, timeout=30).status_code


def test_a_client_trickling_its_headers_gets_408_in_time_and_others_are_served(
    impatient: ServeProcess,
):
    before = refused(impatient)
    with contextlib.ExitStack() as stack:
        fresh = stack.enter_context(connect(impatient.url))
        # A keep-alive connection: one whole request, then a trickle that never ends its headers
        reused = stack.enter_context(connect(impatient.url))
        reused.sendall(request_head("GET", "/health"))
        assert read_answer(reused).status == 200
        silent = stack.enter_context(connect(impatient.url))  # never sends a byte

        answers = [trickle_until_answered(sock, every_s=0.2, for_s=15) for sock in (fresh, reused)]
        assert predicts(impatient) == 200  # meanwhile, everyone else is served
        silent_answer = read_answer(silent)

    for answer, seconds in answers:
        assert answer is not None and answer.status == 408, "a header trickle held the server"
        assert answer.headers["connection"] == "close"
        assert seconds < 8, f"the trickle extended the 2 s header timeout to {seconds:.1f} s"
    assert silent_answer.status == 408
    after = refused(impatient)
    assert after["header_timeout"] - before.get("header_timeout", 0) >= 3


def test_an_oversized_header_gets_431_without_the_server_holding_it(impatient: ServeProcess):
    header_size = 8 * 1024 * 1024
    rss_before = impatient.rss_bytes()
    with connect(impatient.url, timeout=15) as sock:
        with contextlib.suppress(OSError):  # the server may stop reading before the end
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * header_size)
        answer = read_answer(sock)
        grown = impatient.rss_bytes() - rss_before  # the connection still open
    assert answer.status == 431
    assert answer.headers["connection"] == "close"
    assert grown < header_size // 4, f"the server grew {grown / 2**20:.1f} MiB for one header"
    assert predicts(impatient) == 200
    assert refused(impatient)["header_too_large"] >= 1


def test_a_header_within_the_limit_is_served(impatient: ServeProcess):
    with connect(impatient.url) as sock:
        sock.sendall(request_head("GET", "/health", "X-Large: " + "a" * 60_000))
        assert read_answer(sock).status == 200


def test_at_the_connection_cap_the_longest_stalled_connection_makes_room(capped: ServeProcess):
    with contextlib.ExitStack() as stack:
        stalled = [stack.enter_context(connect(capped.url)) for _ in range(CAP)]
        for sock in stalled:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n")  # and never the end
        assert predicts(capped) == 200  # the 17th connection
        oldest = read_answer(stalled[0])
    assert oldest.status == 408
    assert refused(capped)["evicted"] >= 1


def test_when_every_connection_is_busy_with_a_request_a_new_one_gets_503(capped: ServeProcess):
    busy_head = request_head("POST", "/predict", "Content-Type: application/json",
                             "Content-Length: 4000", "Expect: 100-continue")
    with contextlib.ExitStack() as stack:
        busy = [stack.enter_context(connect(capped.url)) for _ in range(CAP)]
        for sock in busy:  # each request's body is awaited by the app, forever
            sock.sendall(busy_head)
        for sock in busy:
            assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")

        answers = []
        for _ in range(2):  # the first one, still open, is no room for the second
            newcomer = stack.enter_context(connect(capped.url))
            newcomer.sendall(request_head("GET", "/health"))
            answers.append(read_answer(newcomer))
        assert [answer.status for answer in answers] == [503, 503]
        assert int(answers[0].headers["retry-after"]) >= 1

        busy.pop().close()  # one request gives up: its slot is free again
        assert _eventually_ok(capped)
    assert refused(capped)["over_capacity"] >= 1


def test_at_the_cap_the_longest_idle_keep_alive_connection_is_closed_for_a_new_one(
    capped: ServeProcess,
):
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(connect(capped.url)) for _ in range(CAP)]
        for sock in idle:  # one request each, then quiet (well within KEEP_ALIVE_TIMEOUT_S)
            sock.sendall(request_head("GET", "/health"))
            assert read_answer(sock).status == 200
        assert predicts(capped) == 200
        assert idle[0].recv(1) == b"", "the longest-idle connection was not closed"
        idle[-1].sendall(request_head("GET", "/health"))
        assert read_answer(idle[-1]).status == 200


def _eventually_ok(server: ServeProcess, within_s: float = 10) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError, socket.timeout):
            if predicts(server) == 200:
                return True
        time.sleep(0.1)
    return False


def test_a_flood_of_stalled_connections_cannot_exhaust_the_open_file_limit(
    registry: Path, tmp_path: Path,
):
    # The default cap keeps a quarter of `ulimit -n` 256 free: 192 connections.
    with ServeProcess(registry, tmp_path, open_files=256, TORCH_THREADS="1") as server, \
            contextlib.ExitStack() as stack:
        for _ in range(300):
            sock = stack.enter_context(connect(server.url))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n")
        assert [predicts(server) for _ in range(3)] == [200] * 3
        assert refused(server)["evicted"] >= 300 - 192
    assert b"Too many open files" not in server.log.read_bytes()


def test_every_refusal_reason_is_exported_from_the_start(capped: ServeProcess):
    assert set(refused(capped)) == {"header_timeout", "evicted", "header_too_large",
                                    "over_capacity"}
