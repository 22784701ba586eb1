"""A real `lab2prod serve` stopped by SIGTERM drains first: /ready says 503 'draining', answers
on kept-alive connections keep coming (with Connection: close), none is reset, exit status 0.
SIGINT does not wait."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
from support.models import fresh_checkpoint
from support.registry import publish
from support.servers import ServeProcess

pytestmark = pytest.mark.slow

GRACE_S = 2.0
DIGIT = orjson.dumps({"pixels": [7] * 784})


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("e2e-drain")
    publish(folder / "models", fresh_checkpoint(folder / "v1.safetensors", seed=1))
    return folder / "models"


def predict_on(connection: http.client.HTTPConnection) -> http.client.HTTPResponse:
    """POST /predict on this (kept-alive) connection; the answer, read in full."""
    connection.request("POST", "/predict", body=DIGIT, headers={"Content-Type": "application/json"})
    answer = connection.getresponse()
    answer.read()
    return answer


def keep_sending(connection: http.client.HTTPConnection, answers: list[object]) -> None:
    """Requests one after another on one connection until an answer says it closes (a reset or
    a missing answer ends up in ``answers`` as the exception)."""
    try:
        while True:
            answer = predict_on(connection)
            answers.append(answer)
            if answer.getheader("connection") == "close" or answer.status != 200:
                return
    except (OSError, http.client.HTTPException) as exc:
        answers.append(exc)


def wait_draining(url: str, timeout: float = 10) -> httpx.Response:
    """GET /ready (a new connection each time) until it stops answering 200."""
    deadline = time.monotonic() + timeout
    while True:
        ready = httpx.get(f"{url}/ready", timeout=5)
        if ready.status_code != 200 or time.monotonic() > deadline:
            return ready
        time.sleep(0.02)


def wait_for_log(server: ServeProcess, line: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while server.log.read_text().count(line) < count:
        assert time.monotonic() < deadline, f"{line} not logged {count} times"
        time.sleep(0.1)


def drain_with_kept_alive_connections(server: ServeProcess) -> dict[str, object]:
    """Idle kept-alive connections, and busy ones sending request after request, while SIGTERM
    arrives; what each got, /ready during the grace, the exit status and when it came."""
    idle = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(6)]
    busy = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(3)]
    before = [predict_on(connection) for connection in idle]
    busy_answers: list[list[object]] = [[] for _ in busy]
    senders = [threading.Thread(target=keep_sending, args=(connection, answers))
               for connection, answers in zip(busy, busy_answers, strict=True)]
    for sender in senders:
        sender.start()
    time.sleep(0.2)  # the busy connections are mid-stream when the signal comes
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    ready = wait_draining(server.url)
    v2_ready = httpx.get(f"{server.url}/v2/health/ready", timeout=5)
    # written after SIGTERM, on connections the server kept alive: each must still be answered
    after = [predict_on(connection) for connection in idle]
    for sender in senders:
        sender.join(30)
    code = server.process.wait(30)
    return {"before": before, "ready": ready, "v2_ready": v2_ready, "after": after,
            "busy": busy_answers, "code": code,
            "stopped_after_s": time.monotonic() - signalled}


def assert_drained(outcome: dict[str, object]) -> None:
    ready = outcome["ready"]
    assert isinstance(ready, httpx.Response)
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert ready.headers["connection"] == "close"
    assert outcome["v2_ready"].status_code == 503  # type: ignore[attr-defined]
    before, after = outcome["before"], outcome["after"]
    assert isinstance(before, list) and isinstance(after, list)
    assert [answer.status for answer in before] == [200] * len(before)
    assert all(answer.getheader("connection") != "close" for answer in before)
    assert [answer.status for answer in after] == [200] * len(after)
    assert all(answer.getheader("connection") == "close" for answer in after)
    for answers in outcome["busy"]:  # type: ignore[attr-defined]
        assert all(isinstance(answer, http.client.HTTPResponse) for answer in answers), answers
        assert {answer.status for answer in answers} == {200}
        assert answers[-1].getheader("connection") == "close"
    assert outcome["code"] == 0
    assert outcome["stopped_after_s"] >= GRACE_S, "it kept serving for the whole grace"


def test_sigterm_drains_kept_alive_connections_then_exits_0(registry: Path, tmp_path: Path):
    with ServeProcess(registry, tmp_path, DRAIN_GRACE_S=str(GRACE_S)) as server:
        outcome = drain_with_kept_alive_connections(server)
    assert_drained(outcome)
    log = server.log.read_text()
    assert '"message":"draining' in log and '"message":"shutting down"' in log


def test_with_two_workers_each_one_drains(registry: Path, tmp_path: Path):
    server = ServeProcess(registry, tmp_path, "--workers", "2", DRAIN_GRACE_S=str(GRACE_S))
    try:
        server.wait_ready(timeout=120)
        wait_for_log(server, '"message":"ready"', count=2)  # both workers serve
        outcome = drain_with_kept_alive_connections(server)
    finally:
        server.stop()
    assert_drained(outcome)
    assert server.log.read_text().count('"message":"draining') == 2


def test_sigint_stops_at_once_without_waiting_for_the_grace(registry: Path, tmp_path: Path):
    with ServeProcess(registry, tmp_path, DRAIN_GRACE_S="60") as server:
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        server.process.wait(30)
    assert time.monotonic() - signalled < 30
    assert '"message":"draining' not in server.log.read_text()
