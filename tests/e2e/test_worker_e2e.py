"""End to end: a real `lab2prod serve` (no model: it only enqueues) and `lab2prod worker
--processes 2`, over HTTP, with real RabbitMQ and Redis. 1,000 jobs, every answer checked."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "async_"))
import support  # the async tests' helpers: services, model, processes

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.slow]
JOBS = 1000


@pytest.fixture
def services(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, object]]:
    amqp_url = support.require_rabbitmq()
    redis_process, redis_url = support.start_redis_server(tmp_path)
    queue = support.unique_queue_name("e2e")
    cache = Path(request.config.cache.mkdir("lab2prod-async-model"))
    checkpoint = support.trained_checkpoint(cache)
    registry = tmp_path / "models"
    support.publish_model(registry, checkpoint)
    yield {"amqp_url": amqp_url, "redis_url": redis_url, "queue": queue, "registry": registry,
           "checkpoint": checkpoint}
    support.run_sync(support.delete_queue_topology(amqp_url, queue))
    redis_process.terminate()
    redis_process.wait(10)


def two_free_ports() -> int:
    """A port p with p+1 also free (worker i serves metrics on p+i)."""
    for _ in range(50):
        port = support.free_port()
        try:
            import socket

            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


async def wait_ready(client: httpx.AsyncClient, process: subprocess.Popen[bytes]) -> dict:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, "lab2prod serve exited during start-up"
        try:
            response = await client.get("/ready")
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("lab2prod serve did not become ready in 90 s")


def processed(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith('lab2prod_jobs_processed_total{outcome="done"}'):
            return float(line.split()[-1])
    return 0.0


async def test_1000_jobs_through_the_api_and_two_worker_processes_all_finish_correctly(
    services, tmp_path: Path
):
    images, _ = support.held_out_digits(JOBS)
    expected = support.direct_predictions(services["checkpoint"], images).tolist()
    api_port, metrics_port = support.free_port(), two_free_ports()
    env = support.worker_env(
        amqp_url=services["amqp_url"], redis_url=services["redis_url"],
        registry=services["registry"], queue=services["queue"],
        LOAD_MODEL="false", PORT=str(api_port), WORKER_METRICS_PORT=str(metrics_port),
    )
    lab2prod = str(Path(sys.executable).with_name("lab2prod"))
    api_log = (tmp_path / "api.log").open("ab")
    api = subprocess.Popen([lab2prod, "serve"], env=env, stdout=api_log, stderr=subprocess.STDOUT)
    workers = support.start_worker(env, tmp_path / "workers.log", "--processes", "2")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as client:
            ready = await wait_ready(client, api)
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
        for process in (workers, api):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
