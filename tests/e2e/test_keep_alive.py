"""End to end: how long a real `lab2prod serve` keeps an idle kept-alive connection
(KEEP_ALIVE_TIMEOUT_S), seen by httpx and by a bare socket."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.rawhttp import connect, read_answer, request_head
from support.registry import one_version_registry
from support.servers import ServeProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return one_version_registry(tmp_path_factory.mktemp("e2e-keep-alive"))


@pytest.fixture(scope="module")
def default_server(registry: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[ServeProcess]:
    with ServeProcess(registry, tmp_path_factory.mktemp("default")) as running:
        yield running


def local_port(response: httpx.Response) -> int:
    """The client's end of the connection that carried ``response`` (while it is open)."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_by_default_a_connection_outlasts_httpx_s_own_idle_expiry(default_server: ServeProcess):
    # httpx forgets an idle connection after keepalive_expiry (5 s by default). The server must
    # keep it longer, or a request sent just before that expiry can meet the server's close.
    # This client keeps its connections a second longer and sends after half a second more:
    # the same connection carries the answer (a server closing at 5 s makes httpx reconnect).
    expiry = httpx.Limits().keepalive_expiry
    assert expiry is not None
    limits = httpx.Limits(keepalive_expiry=expiry + 1)
    with httpx.Client(base_url=default_server.url, limits=limits, timeout=10) as client:
        first = client.get("/health")
        first_port = local_port(first)
        time.sleep(expiry + 0.5)
        second = client.get("/health")
        assert (first.status_code, second.status_code) == (200, 200)
        assert local_port(second) == first_port, "the server closed the idle connection"


def test_the_server_closes_a_connection_idle_past_keep_alive_timeout(
    registry: Path, tmp_path: Path,
):
    with ServeProcess(registry, tmp_path, KEEP_ALIVE_TIMEOUT_S="2") as server, \
            connect(server.url) as sock:
        sock.sendall(request_head("GET", "/health"))
        assert read_answer(sock).status == 200
        time.sleep(0.5)  # idle, well within the timeout: the connection still serves
        sock.sendall(request_head("GET", "/health"))
        assert read_answer(sock).status == 200
        started = time.monotonic()
        assert sock.recv(1) == b"", "the server should close the idle connection"
        assert 1.0 < time.monotonic() - started < 10  # its timeout, not at once
