"""One ``lab2prod worker`` process: model, broker, result store, metrics and signals.

The process loads the registry alias (``MODEL_ALIAS``, ``production`` by default) into the same
model pool the API uses (the one loader; runtime verified on this machine), loads a job's pinned
version through it when a job names one, consumes ``QUEUE_NAME`` from ``AMQP_URL`` with a
``WORKER_PREFETCH`` window, stores results in ``REDIS_URL`` and follows the alias like the API
does. If the broker connection drops it reconnects with backoff (unacked messages go back to the
queue and the result store makes their second run harmless). SIGTERM or SIGINT: no new
deliveries, finish and ack what was received, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from prometheus_client import start_http_server

from service.inference.pool import ModelPool
from service.ml.threads import set_compute_threads
from service.monitoring import metrics
from service.queue.broker import BrokerUnavailable
from service.queue.rabbitmq import RabbitBroker
from service.queue.redis_results import RedisResultStore
from service.queue.worker import JobWorker, PoolPredictor
from service.settings import Settings

log = logging.getLogger("service.queue.worker")

DEPTH_POLL_S = 5.0
RECONNECT_MAX_S = 10.0


class WorkerConfigError(RuntimeError):
    """The worker cannot start as configured; the message says what to set."""


def check_settings(settings: Settings) -> None:
    if not settings.amqp_url:
        raise WorkerConfigError(
            "lab2prod worker consumes from RabbitMQ: set AMQP_URL "
            "(e.g. amqp://guest:guest@127.0.0.1:5672/). Without a broker the API runs jobs itself."
        )
    if not settings.redis_url:
        raise WorkerConfigError(
            "lab2prod worker stores results where the API reads them: set REDIS_URL "
            "(e.g. redis://127.0.0.1:6379/0)"
        )


async def run_worker(settings: Settings, stopping: asyncio.Event | None = None) -> int:
    """Run until ``stopping`` is set (by default: until SIGTERM/SIGINT); the exit code."""
    check_settings(settings)
    assert settings.amqp_url and settings.redis_url
    set_compute_threads(settings.torch_threads)
    pool = ModelPool(settings)  # the API's loader and alias follower, shared
    served = await asyncio.to_thread(pool.start)  # says what to fix when it cannot
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr=settings.host)
    store = RedisResultStore(settings.redis_url, settings.result_ttl_s)
    predictor = PoolPredictor(pool)

    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if stopping is None else ()
    stopping = stopping or asyncio.Event()
    for signum in signals:
        loop.add_signal_handler(signum, stopping.set)
    follow = asyncio.create_task(pool.watch(), name="follow-alias")
    pool.drift.start()
    log.info(
        "worker starting: model %s on %s, queue %s, prefetch %d, batch %d/%.1fms",
        served.version, served.model.runtime.device, settings.queue_name, settings.worker_prefetch,
        settings.worker_batch_size, settings.worker_batch_wait_ms,
    )
    backoff = 0.5
    try:
        while not stopping.is_set():
            broker = RabbitBroker(
                settings.amqp_url, settings.queue_name,
                dead_letter_ttl_s=settings.dead_letter_ttl_s,
            )
            try:
                inbox = await broker.start_consuming(settings.worker_prefetch)
            except BrokerUnavailable as exc:
                log.warning("%s; reconnecting in %.1fs", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)
                continue
            backoff = 0.5
            worker = JobWorker(
                inbox,
                store,
                predictor,
                batch_size=settings.worker_batch_size,
                batch_wait_ms=settings.worker_batch_wait_ms,
                max_attempts=settings.max_attempts,
            )
            log.info("worker ready: consuming %s", settings.queue_name)
            await _consume_until_stopped_or_lost(broker, worker, stopping)
            await broker.close()
    finally:
        follow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follow
        await pool.drift.close()
        await store.close()
        pool.close()
        for signum in signals:
            loop.remove_signal_handler(signum)
    log.info("worker stopped")
    return 0


async def _consume_until_stopped_or_lost(
    broker: RabbitBroker, worker: JobWorker, stopping: asyncio.Event
) -> None:
    running = asyncio.create_task(worker.run(), name="job-worker")
    lost = asyncio.create_task(broker.connection_lost.wait())
    stop = asyncio.create_task(stopping.wait())
    depth = asyncio.create_task(_poll_depth(broker))
    try:
        await asyncio.wait({running, lost, stop}, return_when=asyncio.FIRST_COMPLETED)
        if stop.done() and not lost.done():
            log.info("stopping: finishing the %d deliveries in hand", worker.inbox.qsize())
            await broker.stop_consuming()
            worker.stop()
            await running
            await worker.finish_received()
        elif not running.done():
            log.warning("lost the broker connection; unacked jobs will be redelivered")
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        else:
            running.result()  # re-raise whatever ended the loop
    finally:
        for task in (lost, stop, depth):
            task.cancel()


async def _poll_depth(broker: RabbitBroker) -> None:
    while True:
        status = await broker.status()
        if status.ok:
            metrics.JOBS_QUEUE_DEPTH.labels(broker.queue_name).set(status.depth or 0)
            metrics.JOBS_QUEUE_CONSUMERS.labels(broker.queue_name).set(status.consumers or 0)
            metrics.JOBS_DEAD_LETTERS.labels(broker.queue_name).set(status.dead_letters or 0)
        await asyncio.sleep(DEPTH_POLL_S)
