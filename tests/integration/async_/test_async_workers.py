"""Real ``lab2prod worker`` processes on real RabbitMQ and Redis, with a trained model:
SIGKILL mid-run loses nothing and finishes every job exactly once; SIGTERM drains and exits 0;
the inputs workers compute fill the drift window the API reports."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aio_pika
import numpy as np
import pytest
import redis
from support.app import serving, settings_for
from support.models import direct_predictions, held_out_digits, unseen_training_digits
from support.rabbitmq import queue_counts
from support.registry import publish_release
from support.servers import start_worker, worker_env

from service.queue.jobs import Job, JobResult, JobStatus
from service.queue.rabbitmq import RabbitBroker
from service.queue.redis_results import RedisResultStore

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.slow]


async def publish_all(amqp_url: str, queue_name: str, images: np.ndarray) -> list[str]:
    broker = RabbitBroker(amqp_url, queue_name)
    jobs = [Job.create(image) for image in images]
    for start in range(0, len(jobs), 100):
        await asyncio.gather(*(broker.publish(job) for job in jobs[start : start + 100]))
    await broker.close()
    return [job.inference_id for job in jobs]


async def wait_for_results(
    store: RedisResultStore,
    ids: list[str],
    at_least: int,
    timeout: float,
    written_by: int | None = None,
) -> list[JobResult | None]:
    """Wait for ``at_least`` final results (and, with ``written_by``, one from that pid)."""
    deadline = time.monotonic() + timeout
    while True:
        records = await store.get_many(ids)
        finals = [r for r in records if r is not None and r.final]
        if len(finals) >= at_least and (
            written_by is None
            or any((r.worker or "").endswith(f":{written_by}") for r in finals)
        ):
            return records
        if time.monotonic() > deadline:
            done = sum(r is not None and r.final for r in records)
            raise AssertionError(f"only {done} of {len(ids)} jobs finished in {timeout:.0f}s")
        await asyncio.sleep(0.02)


def stop(process, sig=signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(30)
        except Exception:
            process.kill()


async def test_a_worker_killed_mid_run_loses_nothing_and_every_job_finishes_exactly_once(
    amqp_url, queue_name, redis_url, registry_dir, trained_checkpoint, tmp_path: Path
):
    images, _ = held_out_digits(1000)
    expected = direct_predictions(trained_checkpoint, images)
    env = worker_env(
        amqp_url=amqp_url, redis_url=redis_url, registry=registry_dir, queue=queue_name,
        WORKER_BATCH_SIZE="8", WORKER_PREFETCH="32", MODEL_POLL_INTERVAL_S="0",
    )
    store = RedisResultStore(redis_url, ttl_s=600)
    ids = await publish_all(amqp_url, queue_name, images)  # queued before any worker runs
    victim = start_worker(env, tmp_path / "victim.log")
    survivor = start_worker(env, tmp_path / "survivor.log")
    restarted = None
    try:
        # Kill the victim only once it is consuming, so it holds unacked deliveries.
        before = await wait_for_results(store, ids, at_least=50, timeout=120, written_by=victim.pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        finished_at_kill = sum(r is not None and r.final for r in before)
        assert finished_at_kill < len(ids), "the kill must land mid-run"
        restarted = start_worker(env, tmp_path / "restarted.log")
        records = await wait_for_results(store, ids, at_least=len(ids), timeout=180)
    finally:
        for process in (survivor, restarted):
            if process is not None:
                stop(process)

    assert [r.status for r in records] == [JobStatus.DONE] * len(ids)
    assert [r.predicted_class for r in records] == expected.tolist()
    keys = redis.Redis.from_url(redis_url).keys(f"{store.prefix}*")
    assert len(keys) == len(ids)  # exactly one final record per job, no strays
    assert any(r.attempts >= 2 for r in records), "the victim's unacked jobs were redelivered"
    assert len({r.worker for r in records}) >= 2
    ready, dead = await queue_counts(amqp_url, queue_name)
    assert (ready, dead) == (0, 0)
    await store.close()


async def test_sigterm_finishes_the_jobs_in_hand_acks_them_and_exits_zero(
    amqp_url, queue_name, redis_url, registry_dir, tmp_path: Path
):
    images, _ = held_out_digits(600)
    env = worker_env(
        amqp_url=amqp_url, redis_url=redis_url, registry=registry_dir, queue=queue_name,
        WORKER_BATCH_SIZE="4", WORKER_PREFETCH="16", MODEL_POLL_INTERVAL_S="0",
    )
    store = RedisResultStore(redis_url, ttl_s=600)
    ids = await publish_all(amqp_url, queue_name, images)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        await wait_for_results(store, ids, at_least=1, timeout=120)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        stop(worker, signal.SIGKILL)

    done = {r.inference_id for r in await store.get_many(ids) if r is not None and r.final}
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(queue_name, passive=True)
    left: list[str] = []
    returned = 0
    while (message := await queue.get(fail=False, timeout=5)) is not None:
        left.append(message.message_id)
        returned += message.headers.get("x-delivery-count", 0)
        await message.ack()
    await connection.close()
    assert done and left, "SIGTERM must land mid-run"
    assert not done & set(left)
    assert len(done) + len(left) == len(ids)
    # Every delivery the worker received was finished. RabbitMQ 3.x quorum queues still count
    # a return for deliveries that were on the wire when the consumer was cancelled (the
    # worker never saw them): at most the prefetch window, once each.
    assert returned <= 16
    assert "worker stopped" in log.read_text()
    await store.close()


async def test_the_inputs_workers_compute_fill_the_drift_window_the_api_reports(
    amqp_url, queue_name, redis_url, trained_checkpoint, tmp_path: Path
):
    registry = tmp_path / "models"
    publish_release(registry, trained_checkpoint, *unseen_training_digits(1000))
    inverted = 255 - held_out_digits(1000)[0]
    env = worker_env(amqp_url=amqp_url, redis_url=redis_url, registry=registry, queue=queue_name,
                     MODEL_POLL_INTERVAL_S="0")
    store = RedisResultStore(redis_url, ttl_s=600)
    ids = await publish_all(amqp_url, queue_name, inverted)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        await wait_for_results(store, ids, at_least=len(ids), timeout=180)
        worker.send_signal(signal.SIGTERM)  # pushes what it still holds as it stops
        assert worker.wait(30) == 0
    finally:
        stop(worker, signal.SIGKILL)
        await store.close()
    async with serving(settings_for(registry, redis_url=redis_url)) as (_, client):
        report = (await client.get("/drift")).json()  # this instance computed nothing
    assert report["window"] == {"size": 1000, "filled": 1000, "shared": True}
    assert report["verdict"] == "alert"
