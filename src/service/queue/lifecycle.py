"""What the API starts and stops for async jobs: ``start_async`` and ``stop_async``.

Two modes, one contract (``POST /classify``, ``GET /result/{inference_id}``):

- **broker** (``AMQP_URL`` set): jobs are published to RabbitMQ and ``lab2prod worker``
  processes answer them; results are read from Redis (``REDIS_URL``, required here). The API
  needs no model (``LOAD_MODEL=false`` fits a small CPU box).
- **embedded** (no ``AMQP_URL``): jobs go to an in-process queue served by the same
  ``JobWorker`` loop, whose forward passes go through the API's own micro-batchers (shared with
  ``/predict``); results live in memory, or in Redis when ``REDIS_URL`` is set.

Submitting writes a ``pending`` record first, then publishes; if the broker does not confirm,
the pending record is removed again, so an id is only ever handed out for a queued job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.queue.broker import Broker, BrokerUnavailable, InProcessBroker
from service.queue.jobs import Job, JobResult, is_inference_id
from service.queue.results import MemoryResultStore, ResultStore
from service.queue.worker import BatcherPredictor, JobWorker, Predictor
from service.settings import Settings

log = logging.getLogger(__name__)


class AsyncJobsConfigError(RuntimeError):
    """The async-job settings cannot work together; the message says what to set."""


@dataclass
class AsyncJobs:
    broker: Broker
    store: ResultStore
    settings: Settings
    worker: JobWorker | None = None  # embedded mode only
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def mode(self) -> str:
        return "embedded" if isinstance(self.broker, InProcessBroker) else "broker"

    async def submit(self, digit: np.ndarray, model_version: str | None = None) -> str:
        """Queue one validated uint8 [28,28] digit (for ``model_version``, a version or alias;
        None: the default alias); its id once the queue has it.

        Raises BrokerUnavailable (nothing queued, no record left) or ResultStoreUnavailable.
        """
        if self.mode == "embedded" and self.worker is None:
            raise BrokerUnavailable(
                "this instance runs jobs itself but has no model (LOAD_MODEL=false); "
                "set AMQP_URL and REDIS_URL so `lab2prod worker` processes answer them",
                retry_after_s=30,
            )
        job = Job.create(digit, model_version)
        await self.store.add_pending(job.inference_id)
        try:
            await self.broker.publish(job)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.store.discard_pending(job.inference_id)
            raise
        return job.inference_id

    async def result(self, inference_id: str) -> JobResult | None:
        """The record for an id; None when unknown, expired or not an id at all."""
        if not is_inference_id(inference_id):
            return None
        return await self.store.get(inference_id)

    async def close(self) -> None:
        if self.worker is not None and self._task is not None:
            self.worker.stop()
            try:
                await asyncio.wait_for(self._task, timeout=self.settings.request_timeout_s)
            except TimeoutError:
                log.warning("the embedded job worker did not finish in time; cancelled")
        await self.broker.close()
        await self.store.close()


# The Redis and RabbitMQ clients are imported only where their URLs are set: about 10 MiB of
# the API's memory on the embedded default (docs/benchmarks/overhead.md, round 9).


def create_store(settings: Settings) -> ResultStore:
    if settings.redis_url:
        from service.queue.redis_results import RedisResultStore

        return RedisResultStore(settings.redis_url, settings.result_ttl_s)
    return MemoryResultStore(settings.result_ttl_s)


async def start_jobs(settings: Settings, predictor: Predictor | None) -> AsyncJobs:
    """Build the broker and store; in embedded mode start the in-process worker on ``predictor``."""
    if settings.amqp_url:
        if not settings.redis_url:
            raise AsyncJobsConfigError(
                "AMQP_URL is set but REDIS_URL is not: workers store results where every API "
                "instance can read them, so set REDIS_URL (e.g. redis://127.0.0.1:6379/0)"
            )
        from service.queue.rabbitmq import RabbitBroker

        broker: Broker = RabbitBroker(
            settings.amqp_url, settings.queue_name, dead_letter_ttl_s=settings.dead_letter_ttl_s
        )
        jobs = AsyncJobs(broker, create_store(settings), settings)
        with contextlib.suppress(BrokerUnavailable):  # a broker down at start-up is not fatal:
            await broker.status()  # connect early when we can; /classify answers 503 until then
        return jobs
    broker = InProcessBroker(settings.queue_name, max_size=settings.max_queue_size)
    jobs = AsyncJobs(broker, create_store(settings), settings)
    if predictor is not None:
        jobs.worker = JobWorker(
            await broker.start_consuming(settings.worker_prefetch),
            jobs.store,
            predictor,
            batch_size=settings.worker_batch_size,
            batch_wait_ms=settings.worker_batch_wait_ms,
            max_attempts=settings.max_attempts,
            name="embedded",
        )
        jobs._task = asyncio.create_task(jobs.worker.run(), name="embedded-job-worker")
    return jobs


async def start_async(
    app: Any, settings: Settings, predictor: Predictor | None = None
) -> AsyncJobs:
    """Lifespan hook: put ``AsyncJobs`` on ``app.state.jobs``.

    Without a predictor, embedded mode uses the API's model pool when it has one.
    """
    if predictor is None and not settings.amqp_url:
        pool = getattr(app.state, "pool", None)
        if pool is not None:
            predictor = BatcherPredictor(pool)
    app.state.jobs = await start_jobs(settings, predictor)
    return app.state.jobs


async def stop_async(app: Any) -> None:
    """Lifespan hook: finish the embedded worker's jobs in hand, close broker and store."""
    jobs: AsyncJobs | None = getattr(app.state, "jobs", None)
    if jobs is not None:
        app.state.jobs = None
        await jobs.close()

