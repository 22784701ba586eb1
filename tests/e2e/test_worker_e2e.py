"""End to end: a real `lab2prod serve` (no model: it only enqueues) and `lab2prod worker
--processes 2`, over HTTP, with real RabbitMQ and Redis. 1,000 jobs, every answer checked."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from support.models import direct_predictions, held_out_digits
from support.registry import publish
from support.servers import ServeProcess, free_port, start_worker, worker_env

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.slow]
JOBS = 1000


@pytest.fixture
def registry(tmp_path: Path, trained_checkpoint: Path) -> Path:
    registry = tmp_path / "models"
    publish(registry, trained_checkpoint)
    return registry


def two_free_ports() -> int:
    """A port p with p+1 also free (worker i serves metrics on p+i)."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def processed(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith('lab2prod_jobs_processed_total{outcome="done"}'):
            return float(line.split()[-1])
    return 0.0


async def test_1000_jobs_through_the_api_and_two_worker_processes_all_finish_correctly(
    amqp_url, redis_url, queue_name, registry, trained_checkpoint, tmp_path: Path
):
    images, _ = held_out_digits(JOBS)
    expected = direct_predictions(trained_checkpoint, images).tolist()
    metrics_port = two_free_ports()
    env = worker_env(amqp_url=amqp_url, redis_url=redis_url, registry=registry, queue=queue_name,
                     WORKER_METRICS_PORT=str(metrics_port))
    api = ServeProcess(registry, tmp_path, AMQP_URL=amqp_url, REDIS_URL=redis_url,
                       QUEUE_NAME=queue_name, LOAD_MODEL="false")  # it only enqueues
    workers = start_worker(env, tmp_path / "workers.log", "--processes", "2")
    try:
        api.wait_ready()
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            ready = (await client.get("/ready")).json()
            assert ready["checks"]["broker"] == "ok" and ready["model"]["loaded"] is False

            ids: list[str] = []
            for start in range(0, JOBS, 50):
                responses = await asyncio.gather(*(
                    client.post("/classify", json={"pixels": image.tolist()})
                    for image in images[start : start + 50]
                ))
                assert {r.status_code for r in responses} == {202}
                ids += [r.json()["inference_id"] for r in responses]
            assert len(set(ids)) == JOBS

            results: dict[str, dict] = {}
            deadline = time.monotonic() + 180
            while len(results) < JOBS and time.monotonic() < deadline:
                waiting = [i for i in ids if i not in results][:100]
                responses = await asyncio.gather(*(client.get(f"/result/{i}") for i in waiting))
                for inference_id, response in zip(waiting, responses, strict=True):
                    assert response.status_code in (200, 202), response.text
                    if response.status_code == 200:
                        results[inference_id] = response.json()
                if len(results) < JOBS:
                    await asyncio.sleep(0.1)
            assert len(results) == JOBS, f"{JOBS - len(results)} jobs never finished"

        assert [results[i]["status"] for i in ids] == ["done"] * JOBS
        assert [results[i]["predicted_class"] for i in ids] == expected
        assert {results[i]["model_version"] for i in ids} == {"v1"}

        per_worker = []
        async with httpx.AsyncClient(timeout=10) as scraper:
            for port in (metrics_port, metrics_port + 1):
                per_worker.append(processed((await scraper.get(f"http://127.0.0.1:{port}/")).text))
        assert sum(per_worker) == JOBS and min(per_worker) > 0  # both processes did work

        workers.send_signal(signal.SIGTERM)
        assert workers.wait(60) == 0
    finally:
        if workers.poll() is None:
            workers.terminate()
            try:
                workers.wait(20)
            except subprocess.TimeoutExpired:
                workers.kill()
        api.stop()
