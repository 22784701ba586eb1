"""The worker loop: a batch of deliveries -> one forward pass -> results stored -> acks.

``JobWorker`` is shared by ``lab2prod worker`` (RabbitMQ deliveries, Redis results) and the
API's embedded mode (in-process deliveries, memory or Redis results). For each batch it

1. decodes every message (a malformed one is a failed attempt for that message only);
2. skips redeliveries whose result is already final (a worker died after storing, before
   acking), so a job killed mid-batch is processed again but finishes exactly once;
3. runs one forward pass over the rest through a ``Predictor``;
4. stores the results (first final write wins), retrying while the store is down;
5. only then acks; a failed attempt is retried, and after ``max_attempts`` its result says
   ``failed`` and the message goes to the dead-letter queue. Attempts count deliveries, so a
   message whose earlier deliveries died with their worker (a crash it may have caused) is
   given up the same way instead of taking workers down forever.

``stop()`` ends the loop after every delivery already received is finished and acked, so
SIGTERM loses nothing and costs no extra delivery attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.inference.batcher import QueueFull
from service.monitoring import metrics
from service.queue.broker import BrokerUnavailable, Delivery
from service.queue.jobs import Job, JobResult, PoisonJob, decode_job, is_inference_id
from service.queue.results import ResultStore, ResultStoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class BatchPrediction:
    probabilities: np.ndarray  # [N, C]
    model_version: str  # the version that computed them


class Predictor(Protocol):
    async def predict(self, images: np.ndarray, ref: str | None) -> BatchPrediction:
        """uint8 digits [N,28,28] -> class probabilities from the version ``ref`` names (an
        alias or a version; None: the default alias) and that version."""
        ...


class PoolPredictor:
    """Worker processes: the model pool the API uses (same loader, same alias following); one
    forward pass per batch of jobs, on a thread, without a micro-batcher in between."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def predict(self, images: np.ndarray, ref: str | None) -> BatchPrediction:
        served = await self.pool.get(ref or self.pool.default_alias)
        rows = await asyncio.to_thread(served.predict, list(images))
        return BatchPrediction(np.asarray(rows, dtype=np.float32), served.version)


class BatcherPredictor:
    """Embedded mode: jobs share the API's versions and their micro-batchers with /predict.

    The jobs are already accepted, so a full batcher queue makes them wait, not fail.
    """

    def __init__(self, pool: Any, wait_s: float = 0.005) -> None:
        self.pool = pool
        self.wait_s = wait_s

    async def predict(self, images: np.ndarray, ref: str | None) -> BatchPrediction:
        served = await self.pool.get(ref or self.pool.default_alias)
        digits = list(images)
        rows: list[np.ndarray] = []
        step = max(1, min(len(digits), served.batcher.max_queue_size))
        for start in range(0, len(digits), step):
            while True:
                try:
                    rows += await served.batcher.submit_many(digits[start : start + step])
                    break
                except QueueFull:
                    await asyncio.sleep(self.wait_s)
        return BatchPrediction(np.asarray(rows, dtype=np.float32), served.version)


_STOP = object()


class JobWorker:
    def __init__(
        self,
        inbox: asyncio.Queue[Delivery],
        store: ResultStore,
        predictor: Predictor,
        *,
        batch_size: int = 32,
        batch_wait_ms: float = 5.0,
        max_attempts: int = 3,
        name: str | None = None,
    ) -> None:
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.inbox = inbox
        self.store = store
        self.predictor = predictor
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.max_attempts = max_attempts
        self._stopping = False

    def stop(self) -> None:
        """Finish what was already received, then return from ``run``."""
        self._stopping = True
        self.inbox.put_nowait(_STOP)  # type: ignore[arg-type]

    async def run(self) -> None:
        while True:
            batch, stop_seen = await self._next_batch()
            if batch:
                await self.process(batch)
            if stop_seen:
                return

    async def finish_received(self) -> None:
        """After ``run`` returned on a stop: finish deliveries that were already on their way
        when consuming stopped. They land behind the stop marker; left alone, they would go
        back to the queue on close with a delivery attempt spent."""
        await asyncio.sleep(0)  # let deliveries already received reach the inbox
        while True:
            batch: list[Delivery] = []
            while len(batch) < self.batch_size:
                try:
                    item = self.inbox.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is not _STOP:
                    batch.append(item)
            if not batch:
                return
            await self.process(batch)

    async def _next_batch(self) -> tuple[list[Delivery], bool]:
        first = await self.inbox.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.batch_size:
            try:
                item = self.inbox.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        item = await self.inbox.get()
                except TimeoutError:
                    break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    async def process(self, batch: list[Delivery]) -> None:
        metrics.JOBS_BATCH_SIZE.observe(len(batch))
        decoded: list[tuple[Delivery, Job]] = []
        failures: list[tuple[Delivery, str | None, str]] = []
        for delivery in batch:
            try:
                decoded.append((delivery, decode_job(delivery.body, delivery.message_id)))
            except PoisonJob as exc:
                failures.append((delivery, exc.inference_id, str(exc)))
        decoded, duplicates = await self._drop_finished(decoded)
        runnable = []
        for delivery, job in decoded:
            if delivery.attempt > self.max_attempts:  # earlier deliveries died with their worker
                error = f"delivered {delivery.attempt - 1} times without finishing (a crash?)"
                failures.append((delivery, job.inference_id, error))
            else:
                runnable.append((delivery, job))
        done = await self._predict(runnable, failures)
        given_up, retry = self._triage(failures)

        to_store = [result for _, result, _ in done] + [r for _, r in given_up if r is not None]
        written = await self._store(to_store)
        if written is None:  # stopping while the store is down: leave unacked for redelivery
            return
        stored_at = time.time()
        for (delivery, _, submitted_at), first in zip(done, written, strict=False):
            metrics.JOBS.labels(outcome="done" if first else "duplicate").inc()
            if first:
                metrics.JOBS_LATENCY_SECONDS.observe(max(0.0, stored_at - submitted_at))
            await _settle(delivery.ack)
        for delivery in duplicates:
            metrics.JOBS.labels(outcome="duplicate").inc()
            await _settle(delivery.ack)
        for delivery, _ in given_up:
            metrics.JOBS.labels(outcome="failed").inc()
            await _settle(delivery.dead_letter)
        for delivery in retry:
            metrics.JOBS.labels(outcome="retried").inc()
            await _settle(delivery.retry)

    async def _predict(
        self,
        decoded: list[tuple[Delivery, Job]],
        failures: list[tuple[Delivery, str | None, str]],
    ) -> list[tuple[Delivery, JobResult, float]]:
        """One forward pass per pinned version in the batch (usually one, the default); a
        failure becomes a failed attempt for every job of that pass."""
        groups: dict[str | None, list[tuple[Delivery, Job]]] = {}
        for delivery, job in decoded:
            groups.setdefault(job.model_version, []).append((delivery, job))
        done: list[tuple[Delivery, JobResult, float]] = []
        for ref, jobs in groups.items():
            images = np.stack([job.image for _, job in jobs])
            started = time.perf_counter()
            try:
                prediction = await self.predictor.predict(images, ref)
            except Exception as exc:
                log.exception("forward pass over %d jobs (version %s) failed", len(jobs),
                              ref or "default")
                reason = f"inference failed: {type(exc).__name__}: {exc}"
                failures.extend((delivery, job.inference_id, reason) for delivery, job in jobs)
                continue
            metrics.JOBS_INFERENCE_SECONDS.observe(time.perf_counter() - started)
            done.extend(
                (delivery,
                 JobResult.done(job.inference_id, row, prediction.model_version,
                                delivery.attempt, self.name),
                 job.submitted_at)
                for (delivery, job), row in zip(jobs, prediction.probabilities, strict=True)
            )
        return done

    def _triage(
        self, failures: list[tuple[Delivery, str | None, str]]
    ) -> tuple[list[tuple[Delivery, JobResult | None]], list[Delivery]]:
        """Failed attempts -> (given up, with a failed result when the id is known; retry)."""
        given_up: list[tuple[Delivery, JobResult | None]] = []
        retry: list[Delivery] = []
        for delivery, inference_id, error in failures:
            if delivery.attempt < self.max_attempts:
                retry.append(delivery)
                continue
            attempts = delivery.attempt
            log.warning("job %s failed after %d attempts: %s", inference_id, attempts, error)
            message = f"{error} (gave up after {attempts} attempts)"
            known = inference_id is not None and is_inference_id(inference_id)
            result = (
                JobResult.failed(inference_id, message, attempts, self.name)  # type: ignore[arg-type]
                if known
                else None
            )
            given_up.append((delivery, result))
        return given_up, retry

    async def _drop_finished(
        self, decoded: list[tuple[Delivery, Job]]
    ) -> tuple[list[tuple[Delivery, Job]], list[Delivery]]:
        """Split off redeliveries whose result is already final."""
        redelivered = [job.inference_id for delivery, job in decoded if delivery.attempt > 1]
        if not redelivered:
            return decoded, []
        try:
            existing = await self.store.get_many(redelivered)
        except ResultStoreUnavailable:
            return decoded, []  # the store decides again at write time
        finished = {r.inference_id for r in existing if r is not None and r.final}
        keep = [(d, job) for d, job in decoded if job.inference_id not in finished]
        duplicates = [d for d, job in decoded if job.inference_id in finished]
        return keep, duplicates

    async def _store(self, results: list[JobResult]) -> list[bool] | None:
        delay = 0.1
        while True:
            try:
                return await self.store.finish_many(results)
            except ResultStoreUnavailable as exc:
                if self._stopping:
                    log.error("stopping with the result store down (%s); jobs stay queued", exc)
                    return None
                log.warning("result store unavailable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


async def _settle(action: Callable[[], Awaitable[None]]) -> None:
    """Ack/reject; a closed channel means the broker redelivers, which the store makes safe."""
    try:
        await action()
    except BrokerUnavailable as exc:
        log.warning("could not settle a delivery (%s); it will be redelivered", exc)

