"""When the model cannot answer: queue full -> 503 + Retry-After, model error -> 500 with the
request id, out of memory -> 503, too slow -> 503; never a hung request, and the service
recovers by itself."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import torch
from support.app import serving, settings_for, wait_until


class GatedRuntime:
    """Wraps the real runtime: holds each batch until the gate opens, or fails it on demand."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name, self.device = inner.name, inner.device
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.failure: BaseException | None = None
        self.sizes: list[int] = []

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        self.sizes.append(int(batch.shape[0]))
        self.entered.set()
        self.gate.wait(10)
        if self.failure is not None:
            raise self.failure
        return self.inner.predict_proba(batch)


def gate(app) -> GatedRuntime:
    loaded = app.state.pool.default.model
    loaded.runtime = GatedRuntime(loaded.runtime)
    return loaded.runtime


def depth(app) -> int:
    return app.state.pool.default.batcher.depth


def pixels(value: int) -> dict:
    return {"pixels": [value] * 784}


async def test_a_full_queue_answers_503_with_retry_after_and_then_recovers(registry_dir):
    settings = settings_for(registry_dir, max_batch_size=1, max_queue_size=2, batch_max_items=2)
    async with serving(settings) as (app, client):
        runtime = gate(app)
        running = asyncio.ensure_future(client.post("/predict", json=pixels(1)))
        await wait_until(runtime.entered.is_set)
        waiting = [asyncio.ensure_future(client.post("/predict", json=pixels(v))) for v in (2, 3)]
        await wait_until(lambda: depth(app) == 2)
        refused = await client.post("/predict", json=pixels(4))
        ready_while_full = await client.get("/ready")
        runtime.gate.set()
        answered = await asyncio.gather(running, *waiting)
        after = await client.post("/predict", json=pixels(4))
        metrics = (await client.get("/metrics")).text
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.json()["detail"]
    assert ready_while_full.json()["queue"]["depth"] == 2
    assert [answer.status_code for answer in answered] == [200, 200, 200]
    assert after.status_code == 200
    assert 'lab2prod_rejected_total{reason="queue_full"}' in metrics


async def test_a_model_error_is_a_500_naming_the_request_id_and_the_next_request_works(
    registry_dir, caplog
):
    async with serving(settings_for(registry_dir)) as (app, client):
        runtime = gate(app)
        runtime.failure = RuntimeError("weights on fire")
        runtime.gate.set()
        failed = await client.post("/predict", json=pixels(5), headers={"X-Request-ID": "req-500"})
        runtime.failure = None
        fine = await client.post("/predict", json=pixels(5))
    assert failed.status_code == 500
    body = failed.json()
    assert body["request_id"] == "req-500" == failed.headers["x-request-id"]
    assert "req-500" in body["detail"] and "RuntimeError" in body["detail"]
    assert "weights on fire" not in body["detail"], "internals stay in the log"
    assert fine.status_code == 200 and fine.headers["x-cache"] == "miss", "errors are not cached"
    logged = [r for r in caplog.records if r.getMessage() == "inference failed"]
    assert logged and "weights on fire" in str(logged[0].exc_info[1])


async def test_out_of_memory_answers_503_and_frees_the_cache(registry_dir):
    async with serving(settings_for(registry_dir)) as (app, client):
        runtime = gate(app)
        runtime.failure = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        runtime.gate.set()
        refused = await client.post("/predict", json=pixels(6))
        runtime.failure = None
        fine = await client.post("/predict", json=pixels(6))
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "out of memory" in refused.json()["detail"]
    assert fine.status_code == 200


async def test_a_model_that_hangs_times_out_instead_of_hanging_the_request(registry_dir):
    async with serving(settings_for(registry_dir, request_timeout_s=0.2)) as (app, client):
        runtime = gate(app)
        started = asyncio.get_running_loop().time()
        slow = await client.post("/predict", json=pixels(7))
        waited = asyncio.get_running_loop().time() - started
        runtime.gate.set()
        fine = await client.post("/predict", json=pixels(8))
    assert slow.status_code == 503 and "did not answer within 0.2 s" in slow.json()["detail"]
    assert waited < 2
    assert fine.status_code == 200


async def test_concurrent_requests_share_forward_passes(registry_dir):
    settings = settings_for(registry_dir, max_batch_size=16)
    async with serving(settings) as (app, client):
        runtime = gate(app)
        first = asyncio.ensure_future(client.post("/predict", json=pixels(0)))
        await wait_until(runtime.entered.is_set)
        rest = [
            asyncio.ensure_future(client.post("/predict", json=pixels(v))) for v in range(1, 11)
        ]
        await wait_until(lambda: depth(app) == 10)
        runtime.gate.set()
        answers = await asyncio.gather(first, *rest)
    assert runtime.sizes == [1, 10], "the ten that waited ran as one forward pass"
    assert all(answer.status_code == 200 for answer in answers)
    assert [a.json()["model_version"] for a in answers] == ["v1"] * 11
