"""End to end: versions through the queue. A real enqueue-only `lab2prod serve` and a real
`lab2prod worker`, over HTTP, with real RabbitMQ and Redis: jobs pinned to a version are answered
by it, and the worker follows `lab2prod models promote` and `rollback` within a poll interval."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.models import direct_predictions, held_out_digits, trained_checkpoint
from support.registry import publish
from support.servers import ServeProcess, start_worker, worker_env

from service.registry import open_registry

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.slow]
POLL_S = 0.2


@pytest.fixture(scope="module")
def disputed(model_cache: Path) -> dict[str, object]:
    """Two models (seeds 0 and 1) and held-out digits on which they answer differently."""
    models = {"a": trained_checkpoint(model_cache, seed=0),
              "b": trained_checkpoint(model_cache, seed=1)}
    images, _ = held_out_digits(1000)
    a, b = direct_predictions(models["a"], images), direct_predictions(models["b"], images)
    differ = np.flatnonzero(a != b)[:10]
    return {"models": models, "images": images[differ], "a": a[differ].tolist(),
            "b": b[differ].tolist()}


async def answers(client: httpx.AsyncClient, images: np.ndarray, **request) -> list[dict]:
    """Submit each digit to /classify and wait for every result."""
    ids = []
    for image in images:
        accepted = await client.post("/classify", json={"pixels": image.reshape(-1).tolist()},
                                     **request)
        assert accepted.status_code == 202, accepted.text
        ids.append(accepted.json()["inference_id"])
    results: dict[str, dict] = {}
    deadline = time.monotonic() + 60
    while len(results) < len(ids):
        assert time.monotonic() < deadline, "jobs did not finish in 60 s"
        for inference_id in ids:
            if inference_id not in results:
                reply = await client.get(f"/result/{inference_id}")
                if reply.status_code == 200:
                    results[inference_id] = reply.json()
        await asyncio.sleep(0.05)
    return [results[i] for i in ids]


async def test_pinned_jobs_and_alias_moves_reach_the_worker(
    amqp_url, redis_url, queue_name, disputed, tmp_path: Path
):
    registry = tmp_path / "models"
    publish(registry, disputed["models"]["a"])  # v1, production
    publish(registry, disputed["models"]["b"], aliases=("candidate",))  # v2
    env = worker_env(amqp_url=amqp_url, redis_url=redis_url, registry=registry, queue=queue_name,
                     MODEL_POLL_INTERVAL_S=str(POLL_S))
    api = ServeProcess(registry, tmp_path, AMQP_URL=amqp_url, REDIS_URL=redis_url,
                       QUEUE_NAME=queue_name, LOAD_MODEL="false")  # it only enqueues
    worker = start_worker(env, tmp_path / "worker.log")
    images = disputed["images"]
    try:
        api.wait_ready()
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            default = await answers(client, images)
            pinned = await answers(client, images, headers={"X-Model-Version": "v2"})
            by_alias = await answers(client, images, params={"version": "candidate"})
            open_registry(registry, "mnist-cnn").promote("v2")
            await asyncio.sleep(POLL_S * 3)
            promoted = await answers(client, images)
            open_registry(registry, "mnist-cnn").rollback()
            await asyncio.sleep(POLL_S * 3)
            rolled_back = await answers(client, images)
    finally:
        api.stop()
        worker.terminate()
        worker.wait(30)
    for results, model, version in ((default, "a", "v1"), (pinned, "b", "v2"),
                                    (by_alias, "b", "v2"), (promoted, "b", "v2"),
                                    (rolled_back, "a", "v1")):
        assert [r["status"] for r in results] == ["done"] * len(images)
        assert {r["model_version"] for r in results} == {version}
        assert [r["predicted_class"] for r in results] == disputed[model]
