"""The /classify + /result contract, the same in both modes: embedded (in-process queue, the
API's own model) and broker (RabbitMQ + Redis, a real worker runner, an API with no model)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import httpx
import pytest
import redis.asyncio as aioredis
from support.app import settings_for
from support.models import direct_predictions, held_out_digits
from support.registry import publish
from support.servers import free_port
from support.uploads import scanned_png

from service.api.app import create_app
from service.api.inputs import digit_from_image
from service.queue.broker import InProcessDelivery
from service.queue.runner import run_worker
from service.settings import Settings

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis]
MODES = ["embedded", "broker"]


@dataclass
class Service:
    mode: str
    app: Any
    client: httpx.AsyncClient
    settings: Settings

    @property
    def jobs(self) -> Any:
        return self.app.state.jobs

    async def records(self) -> int:
        """How many records the result store holds (pending or final)."""
        store = self.jobs.store
        if self.mode == "embedded":
            return len(store)
        client = aioredis.Redis.from_url(self.settings.redis_url)
        try:
            return len(await client.keys(f"{store.prefix}*"))
        finally:
            await client.aclose()

    async def inject(self, body: bytes, message_id: str) -> None:
        """Put a raw (possibly poison) message on the queue, bypassing the API's validation."""
        if self.mode == "embedded":
            broker = self.jobs.broker
            broker._queue.put_nowait(InProcessDelivery(body, message_id, 1, broker))
            return
        connection = await aio_pika.connect(self.settings.amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            message = aio_pika.Message(body, message_id=message_id, delivery_mode=2)
            await channel.default_exchange.publish(message, routing_key=self.settings.queue_name)

    async def wait_final(self, inference_id: str, timeout: float = 30) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while True:
            response = await self.client.get(f"/result/{inference_id}")
            if response.status_code != 202 or time.monotonic() > deadline:
                return response
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def serve(settings: Settings, mode: str, with_worker: bool = True) -> AsyncIterator[Service]:
    app = create_app(settings)
    stopping = asyncio.Event()
    worker = None
    async with app.router.lifespan_context(app):
        if mode == "broker" and with_worker:
            worker = asyncio.create_task(run_worker(settings, stopping))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            try:
                yield Service(mode, app, client, settings)
            finally:
                if worker is not None:
                    stopping.set()
                    assert await asyncio.wait_for(worker, 30) == 0


def settings_in(mode: str, request: pytest.FixtureRequest, **overrides: Any) -> Settings:
    """The API's settings in ``mode``: embedded (its own model and queue) or broker (RabbitMQ,
    Redis and a worker; no model of its own)."""
    broker: dict[str, Any] = {}
    if mode == "broker":
        broker = dict(
            amqp_url=request.getfixturevalue("amqp_url"),
            redis_url=request.getfixturevalue("redis_url"),
            queue_name=request.getfixturevalue("queue_name"),
            load_model=False,
        )
    return settings_for(
        request.getfixturevalue("registry_dir"), log_json=False, worker_batch_wait_ms=2,
        **{**broker, **overrides},
    )


@pytest.fixture(params=MODES)
async def service(request: pytest.FixtureRequest) -> AsyncIterator[Service]:
    async with serve(settings_in(request.param, request), request.param) as running:
        yield running


async def test_a_queued_digit_finishes_with_the_models_own_answer(
    service: Service, trained_checkpoint
):
    images, _ = held_out_digits(12)
    expected = direct_predictions(trained_checkpoint, images)
    ids = []
    for image in images:
        response = await service.client.post("/classify", json={"pixels": image.tolist()})
        assert response.status_code == 202
        assert list(response.json()) == ["inference_id"]
        inference_id = response.json()["inference_id"]
        assert uuid.UUID(inference_id).version == 4
        assert response.headers["location"] == f"/result/{inference_id}"
        ids.append(inference_id)
    for inference_id, digit in zip(ids, expected, strict=True):
        response = await service.wait_final(inference_id)
        assert response.status_code == 200
        body = response.json()
        assert body == {
            "inference_id": inference_id, "status": "done", "predicted_class": int(digit),
            "confidence": body["confidence"], "model_version": "v1",
        }
        assert 0.1 <= body["confidence"] <= 1.0


async def test_an_uploaded_image_is_classified_like_the_same_digit_sent_to_predict(
    service: Service, trained_checkpoint
):
    images, _ = held_out_digits(3)
    for image in images:
        upload = scanned_png(image)
        parsed = digit_from_image(upload, max_pixels=10**6, content_type="image/png")
        expected = int(direct_predictions(trained_checkpoint, parsed[None])[0])
        response = await service.client.post(
            "/classify", files={"file": ("digit.png", upload, "image/png")}
        )
        assert response.status_code == 202
        done = await service.wait_final(response.json()["inference_id"])
        assert done.json()["predicted_class"] == expected


async def test_a_pending_job_answers_202_with_retry_after(service: Service):
    inference_id = str(uuid.uuid4())
    await service.jobs.store.add_pending(inference_id)  # queued, not yet answered
    response = await service.client.get(f"/result/{inference_id}")
    assert response.status_code == 202
    assert response.json() == {"inference_id": inference_id, "status": "pending"}
    assert response.headers["retry-after"] == "1"


@pytest.mark.parametrize("inference_id", [str(uuid.uuid4()), "not-a-uuid", "*"])
async def test_unknown_ids_are_404(service: Service, inference_id: str):
    response = await service.client.get(f"/result/{inference_id}")
    assert response.status_code == 404
    assert "unknown, or its result expired" in response.json()["detail"]


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"content": b"", "headers": {"content-type": "application/json"}}, 400),
        ({"json": {"pixels": [1, 2, 3]}}, 422),
        ({"content": b'{"pixels": [NaN]}', "headers": {"content-type": "application/json"}}, 400),
        ({"json": {"pixels": [300] * 784}}, 422),
        ({"files": {"file": ("x.png", b"not an image", "image/png")}}, 422),
        ({"files": {"file": ("x.txt", b"hello", "text/plain")}}, 415),
        ({"content": b"<xml/>", "headers": {"content-type": "application/xml"}}, 415),
    ],
)
async def test_bad_uploads_are_refused_like_predict_and_nothing_is_queued(
    service: Service, kwargs: dict[str, Any], status: int
):
    response = await service.client.post("/classify", **kwargs)
    assert response.status_code == status
    assert response.json()["detail"]
    assert await service.records() == 0
    assert (await service.jobs.broker.status()).depth == 0


async def test_a_poison_job_reads_failed_after_max_attempts(service: Service):
    inference_id = str(uuid.uuid4())
    await service.jobs.store.add_pending(inference_id)
    await service.inject(b'{"schema": "lab2prod-job/1", "pixels": [1, 2', inference_id)
    response = await service.wait_final(inference_id)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "failed" and body["inference_id"] == inference_id
    assert "not JSON" in body["error"]
    assert f"{service.settings.max_attempts} attempts" in body["error"]
    assert (await service.jobs.broker.status()).dead_letters == 1


@pytest.mark.parametrize("mode", MODES)
async def test_expired_results_are_404(mode: str, request: pytest.FixtureRequest):
    async with serve(settings_in(mode, request, result_ttl_s=1), mode) as service:
        images, _ = held_out_digits(1)
        response = await service.client.post("/classify", json={"pixels": images[0].tolist()})
        inference_id = response.json()["inference_id"]
        assert (await service.wait_final(inference_id)).status_code == 200
        await asyncio.sleep(1.3)
        assert (await service.client.get(f"/result/{inference_id}")).status_code == 404


async def test_broker_down_answers_503_with_retry_after_and_leaves_no_phantom_ids(
    request: pytest.FixtureRequest,
):
    closed = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    settings = settings_in("broker", request, amqp_url=closed)
    async with serve(settings, "broker", with_worker=False) as service:
        images, _ = held_out_digits(5)
        for image in images:
            response = await service.client.post("/classify", json={"pixels": image.tolist()})
            assert response.status_code == 503
            assert int(response.headers["retry-after"]) >= 1
            assert "inference_id" not in response.json()
            assert "RabbitMQ" in response.json()["detail"]
        assert await service.records() == 0  # no pending record for a job that was not queued
        ready = await service.client.get("/ready")
        assert ready.json()["checks"]["broker"].startswith("unreachable")
        # An enqueue-only API (LOAD_MODEL=false) can do nothing without its broker: take it
        # out of the load balancer rather than call it degraded.
        assert ready.status_code == 503 and ready.json()["status"] == "not ready"


async def test_ready_reports_the_broker_and_result_store(request: pytest.FixtureRequest):
    async with serve(settings_in("broker", request), "broker") as service:
        consumers = f'lab2prod_jobs_queue_consumers{{queue="{service.settings.queue_name}"}} 1.0'
        async with asyncio.timeout(30):  # the worker task loads its model, then consumes
            while True:
                ready = (await service.client.get("/ready")).json()
                if consumers in (await service.client.get("/metrics")).text:
                    break
                await asyncio.sleep(0.1)
        assert ready["checks"] == {"broker": "ok", "result_store": "ok"}
        assert ready["status"] == "ready"
        assert ready["model"]["loaded"] is False  # an enqueue-only API needs no model


@pytest.mark.parametrize("mode", MODES)
async def test_jobs_follow_the_production_alias_when_it_moves(
    mode: str, request: pytest.FixtureRequest, registry_dir, trained_checkpoint
):
    settings = settings_in(mode, request, model_poll_interval_s=0.2)
    async with serve(settings, mode) as service:
        pixels = held_out_digits(1)[0][0].tolist()
        first = (await service.client.post("/classify", json={"pixels": pixels})).json()
        assert (await service.wait_final(first["inference_id"])).json()["model_version"] == "v1"
        assert publish(registry_dir, trained_checkpoint) == "v2"  # moves production
        async with asyncio.timeout(20):
            while True:
                job = (await service.client.post("/classify", json={"pixels": pixels})).json()
                done = (await service.wait_final(job["inference_id"])).json()
                if done["model_version"] == "v2":
                    break
                await asyncio.sleep(0.1)
