"""WebSocket /ws/predict against a real uvicorn server in this event loop (so its tasks can be
counted): order, ids, binary frames, errors, close codes, backpressure and disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from support.app import served_over_http
from support.models import direct_predictions, held_out_digits
from support.uploads import scanned_png
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from service.api.inputs import digit_from_image
from service.api.routes.ws import PREDICT_TASK
from service.settings import Settings


@contextlib.asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[tuple[str, Any]]:
    settings = Settings(_env_file=None, **{  # type: ignore[call-arg]
        "device": "cpu", "runtime": "eager", "model_poll_interval_s": 0, "log_json": False,
        **overrides,
    })
    async with served_over_http(settings) as (app, url):
        yield url.replace("http://", "ws://") + "/ws/predict", app


@pytest.fixture
async def server(registry_dir) -> AsyncIterator[tuple[str, Any]]:
    async with running_server(registry_url=str(registry_dir), ws_max_in_flight=16) as running:
        yield running


async def test_500_inputs_stream_back_in_order_each_with_its_id(server, trained_checkpoint):
    url, _ = server
    images, _ = held_out_digits(500)
    pngs = {i: scanned_png(images[i], side=56) for i in range(0, 500, 25)}  # every 25th: an image
    parsed = images.copy()
    for i, data in pngs.items():
        parsed[i] = digit_from_image(data, max_pixels=10**6)
    expected = direct_predictions(trained_checkpoint, parsed)

    async def send_all(ws) -> None:
        for i, image in enumerate(images):
            if i in pngs and i % 50 == 0:
                await ws.send(orjson.dumps({"id": f"img-{i}"}).decode())  # header, then image
                await ws.send(pngs[i])
            elif i in pngs:
                await ws.send(pngs[i])  # no header: the id is the sequence number
            else:
                await ws.send(orjson.dumps({"id": f"d{i}", "pixels": image.tolist()}).decode())

    async with connect(url, max_size=2**20) as ws:
        sender = asyncio.create_task(send_all(ws))
        replies = [orjson.loads(await ws.recv()) for _ in range(500)]
        await sender
    ids = [r["id"] for r in replies]
    assert ids == [
        (f"img-{i}" if i % 50 == 0 else i) if i in pngs else f"d{i}" for i in range(500)
    ]
    assert [r["digit"] for r in replies] == expected.tolist()
    assert all(r["model_version"] == "v1" and len(r["probabilities"]) == 10 for r in replies)
    assert all(abs(r["confidence"] - max(r["probabilities"])) < 1e-6 for r in replies)


async def test_a_bad_input_gets_an_error_for_its_id_and_the_stream_goes_on(server):
    url, _ = server
    images, _ = held_out_digits(2)
    async with connect(url) as ws:
        await ws.send(orjson.dumps({"id": "a", "pixels": images[0].tolist()}).decode())
        await ws.send(orjson.dumps({"id": "b", "pixels": [1, 2, 3]}).decode())
        await ws.send(b"definitely not an image")
        await ws.send(orjson.dumps({"id": "c", "pixels": images[1].tolist()}).decode())
        replies = [orjson.loads(await ws.recv()) for _ in range(4)]
    assert [r["id"] for r in replies] == ["a", "b", 2, "c"]
    assert "digit" in replies[0] and "digit" in replies[3]
    assert replies[1]["status"] == 422 and "784" in replies[1]["error"]
    assert replies[2]["status"] == 422 and "not a readable" in replies[2]["error"]


@pytest.mark.parametrize(
    ("frames", "code", "reason"),
    [
        (["not json"], 1008, "JSON objects"),
        (["[1, 2, 3]"], 1008, "JSON objects"),
        (['{"id": {"nested": 1}, "pixels": []}'], 1008, "id must be"),
        (['{"id": "h1"}', '{"id": "h2"}'], 1008, "two header frames"),
        ([b"\x00" * (64 * 1024 + 1)], 1009, "limit"),
    ],
)
async def test_protocol_violations_close_with_a_code_and_reason(registry_dir, frames, code, reason):
    settings = dict(registry_url=str(registry_dir), max_upload_bytes=64 * 1024)
    async with running_server(**settings) as (url, _), connect(url, max_size=2**20) as ws:
        for frame in frames:
            await ws.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == code
    assert reason in closed.value.rcvd.reason


async def test_an_overloaded_server_closes_1013_try_again_later(registry_dir):
    settings = dict(registry_url=str(registry_dir), max_queue_size=2, batch_max_items=2,
                    ws_max_in_flight=256)
    async with running_server(**settings) as (url, _):
        images, _ = held_out_digits(256)
        frames = [orjson.dumps({"pixels": image.tolist()}).decode() for image in images]
        async with connect(url) as ws:
            for frame in frames:
                await ws.send(frame)
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(256):
                    await ws.recv()
    assert closed.value.rcvd.code == 1013
    assert "try again later" in closed.value.rcvd.reason


async def test_an_instance_without_a_model_closes_1013():
    async with running_server(load_model=False) as (url, _), connect(url) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1013 and "LOAD_MODEL=false" in closed.value.rcvd.reason


async def test_a_client_that_disconnects_midway_leaks_no_tasks_and_the_server_carries_on(server):
    url, app = server
    images, _ = held_out_digits(300)
    frames = [orjson.dumps({"id": i, "pixels": x.tolist()}).decode() for i, x in enumerate(images)]
    await asyncio.sleep(0.1)
    baseline = len(asyncio.all_tasks())

    ws = await connect(url)
    sender = asyncio.ensure_future(asyncio.gather(*(ws.send(f) for f in frames)))
    for _ in range(10):
        await ws.recv()
    ws.transport.abort()  # vanish mid-stream: no close frame
    with contextlib.suppress(Exception):
        await sender
    async with asyncio.timeout(10):
        while len(asyncio.all_tasks()) > baseline or app.state.pool.default.batcher.depth:
            await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) == baseline
    assert app.state.pool.default.batcher.depth == 0

    async with connect(url) as again:  # the server still serves
        await again.send(orjson.dumps({"id": "after", "pixels": images[0].tolist()}).decode())
        assert orjson.loads(await again.recv())["id"] == "after"


async def test_in_flight_inputs_are_bounded_per_connection(registry_dir):
    async with running_server(registry_url=str(registry_dir), ws_max_in_flight=4) as (url, app):
        runtime = app.state.pool.default.model.runtime
        unblock = threading.Event()
        original = runtime.predict_proba

        def slow_predict(batch):
            unblock.wait(30)
            return original(batch)

        runtime.predict_proba = slow_predict  # the model stalls; inputs keep arriving
        images, _ = held_out_digits(50)
        async with connect(url) as ws:
            for i, image in enumerate(images):
                await ws.send(orjson.dumps({"id": i, "pixels": image.tolist()}).decode())
            await asyncio.sleep(0.5)
            in_flight = [t for t in asyncio.all_tasks() if t.get_name() == PREDICT_TASK]
            assert len(in_flight) == 4  # the other 46 wait unread in the socket
            unblock.set()
            replies = [orjson.loads(await ws.recv()) for _ in range(50)]
        assert [r["id"] for r in replies] == list(range(50))


async def test_plain_http_on_the_websocket_path_says_how_to_connect(server):
    import httpx

    url, _ = server
    async with httpx.AsyncClient() as client:
        response = await client.get(url.replace("ws://", "http://"))
    assert response.status_code == 426
    assert "WebSocket" in response.json()["detail"]
