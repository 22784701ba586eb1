"""Under uvicorn, the hot routes are answered on uvicorn's request cycle without ASGI's messages
(``api.direct``): over real HTTP every request is answered exactly as in-process, and what needs
the ASGI cycle (a body still arriving, Expect: 100-continue, gzip, pipelined requests behind
one) still gets it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY
from support.app import served_over_http, serving, settings_for
from support.hot_requests import REQUESTS, V2_REQUESTS, comparable
from support.rawhttp import connect, read_answer, request_head

from service.api.direct import DirectAnswers

DIGIT = orjson.dumps({"pixels": [0] * 784})


@contextlib.asynccontextmanager
async def direct_server(registry_dir) -> AsyncIterator[tuple[Any, str, list[str]]]:
    """The app under uvicorn, and the paths of the requests answered directly, in order."""
    async with served_over_http(settings_for(registry_dir)) as (app, url):
        direct: DirectAnswers = app.direct
        answered: list[str] = []
        task_for = direct.task_for

        def noting(cycle, asgi_app):
            run = task_for(cycle, asgi_app)
            if run is not None:
                answered.append(cycle.scope["path"])
            return run

        direct.task_for = noting  # type: ignore[method-assign]
        yield app, url, answered


def _exchange(url: str, *pieces: bytes, answers: int = 1, pause_s: float = 0.0) -> list[Any]:
    """Send ``pieces`` on one connection (``pause_s`` apart), then read ``answers`` answers."""
    with connect(url) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(pause_s)
        return [read_answer(sock) for _ in range(answers)]


def _predict_bytes(body: bytes = DIGIT, *headers: str) -> bytes:
    return request_head("POST", "/predict", "Content-Type: application/json",
                        f"Content-Length: {len(body)}", *headers) + body


def _requests() -> list[tuple[str, dict[str, Any], str, str]]:
    """(path, request, Accept-Encoding, why): every /predict and v2 request of the hot-path
    tests, the v2 ones once without and once with gzip accepted."""
    return [*(("/predict", request, "identity", why) for request, why in REQUESTS),
            *((path, request, accept, f"{why}, accepting {accept}")
              for path, request, why in V2_REQUESTS for accept in ("identity", "gzip"))]


async def _answers(client: httpx.AsyncClient) -> list[Any]:
    answers = []
    for path, request, accept, _ in _requests():
        headers = {"Content-Type": "application/json", "Accept-Encoding": accept,
                   **request.get("headers", {})}
        reply = await client.post(path, content=request["content"], headers=headers)
        answers.append(comparable(reply, id_in_body=path == "/predict"))
    return answers


async def test_every_request_is_answered_over_http_as_in_process(registry_dir):
    # Both apps start with an empty cache and meet the same requests in the same order.
    async with serving(settings_for(registry_dir)) as (_, client):
        in_process = await _answers(client)
    async with (direct_server(registry_dir) as (_, url, answered),
                httpx.AsyncClient(base_url=url) as client):
        over_http = await _answers(client)
    for (_, _, _, why), got, expected in zip(_requests(), over_http, in_process, strict=True):
        assert got == expected, why
    # /predict always; v2's infer unless the client accepts gzip (GZip: the ASGI cycle)
    assert answered == [path for path, _, accept, _ in _requests() if accept == "identity"]


async def test_pipelined_requests_are_answered_in_order(registry_dir):
    health = request_head("GET", "/health")
    zero, seven = DIGIT, orjson.dumps({"pixels": [7] * 784})
    async with direct_server(registry_dir) as (_, url, answered):
        first, second, third = await asyncio.to_thread(
            _exchange, url,
            _predict_bytes(zero) + health + _predict_bytes(seven, "X-Request-ID: third"),
            answers=3)
    assert [first.status, second.status, third.status] == [200, 200, 200]
    assert "digit" in orjson.loads(first.body) and orjson.loads(second.body)["status"]
    assert third.headers["x-request-id"] == "third"
    assert answered == ["/predict", "/predict"]


async def test_a_body_that_arrives_after_its_headers_is_read_by_the_cycle(registry_dir):
    whole = _predict_bytes()
    head_end = whole.index(b"\r\n\r\n") + 4
    async with direct_server(registry_dir) as (_, url, answered):
        (reply,) = await asyncio.to_thread(
            _exchange, url, whole[:head_end], whole[head_end:head_end + 1000],
            whole[head_end + 1000:], pause_s=0.1)
    assert reply.status == 200 and orjson.loads(reply.body)["model_version"] == "v1"
    assert answered == ["/predict"]  # started directly, handed to the cycle for its body


async def test_expect_100_continue_is_answered_by_the_cycle(registry_dir):
    whole = _predict_bytes(DIGIT, "Expect: 100-continue")
    head_end = whole.index(b"\r\n\r\n") + 4

    def exchange() -> tuple[bytes, Any]:
        with connect(url) as sock:
            sock.sendall(whole[:head_end])
            interim = sock.recv(25)
            sock.sendall(whole[head_end:])
            return interim, read_answer(sock)

    async with direct_server(registry_dir) as (_, url, answered):
        interim, reply = await asyncio.to_thread(exchange)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert reply.status == 200
    assert answered == []


async def test_while_draining_the_answer_closes_the_connection(registry_dir):
    async with direct_server(registry_dir) as (app, url, answered):
        app.state.drain.draining = True

        def exchange() -> tuple[Any, bytes]:
            with connect(url) as sock:
                sock.sendall(_predict_bytes())
                reply = read_answer(sock)
                return reply, sock.recv(1)  # b"": the server closed

        reply, after = await asyncio.to_thread(exchange)
        app.state.drain.draining = False
    assert reply.status == 200 and reply.headers["connection"] == "close"
    assert after == b""
    assert answered == ["/predict"]


async def test_an_unhandled_error_is_a_json_500_with_the_request_id_and_counted(
    registry_dir, monkeypatch: pytest.MonkeyPatch,
):
    def errors() -> float:
        return REGISTRY.get_sample_value("lab2prod_http_requests_total", {
            "route": "/predict", "method": "POST", "status": "500", "model_version": ""}) or 0.0

    async with direct_server(registry_dir) as (app, url, answered):
        async def broken(route, request):
            raise RuntimeError("a bug")

        monkeypatch.setattr(app.hot, "respond", broken)
        before = errors()
        async with httpx.AsyncClient(base_url=url) as client:
            reply = await client.post("/predict", content=DIGIT,
                                      headers={"X-Request-ID": "bug-1"})
            monkeypatch.undo()
            after_bug = await client.post("/predict", content=DIGIT)  # the connection serves on
    assert reply.status_code == 500
    assert reply.json() == {"detail": "internal server error", "request_id": "bug-1"}
    assert reply.headers["x-request-id"] == "bug-1"
    assert errors() == before + 1
    assert after_bug.status_code == 200
    assert answered == ["/predict", "/predict"]
