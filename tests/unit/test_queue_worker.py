"""The worker loop on the in-process broker and the memory store, with a tiny fake model."""

from __future__ import annotations

import asyncio
import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest

from service.inference.batcher import MicroBatcher, QueueFull
from service.queue.broker import BrokerUnavailable, InProcessBroker, InProcessDelivery
from service.queue.jobs import Job, JobResult, JobStatus
from service.queue.results import MemoryResultStore, ResultStoreUnavailable
from service.queue.worker import BatcherPredictor, BatchPrediction, JobWorker


class SumModulo10:
    """Fake model: the class is (sum of pixels) mod 10. Records every forward pass; answers as
    the pinned version (or v-test for the default)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.batches: list[int] = []
        self.refs: list[str | None] = []
        self.fail_first = fail_first

    async def predict(self, images: np.ndarray, ref: str | None) -> BatchPrediction:
        if self.fail_first > 0:
            self.fail_first -= 1
            raise RuntimeError("CUDA error: device-side assert (simulated)")
        self.batches.append(len(images))
        self.refs.append(ref)
        classes = images.reshape(len(images), -1).astype(np.int64).sum(axis=1) % 10
        return BatchPrediction(np.eye(10)[classes], ref or "v-test")


def job_for(value: int, version: str | None = None) -> Job:
    image = np.zeros((28, 28), np.uint8)
    image[0, 0] = value
    return Job.create(image, version)


async def run_until_idle(broker, store, predictor, **options) -> JobWorker:
    worker = JobWorker(await broker.start_consuming(8), store, predictor, **options)
    task = asyncio.create_task(worker.run())
    for _ in range(500):
        await asyncio.sleep(0.01)
        if broker._queue.empty():
            break
    worker.stop()
    await asyncio.wait_for(task, 5)
    return worker


async def test_every_job_is_done_with_its_own_prediction_in_batches():
    broker, store, model = InProcessBroker(), MemoryResultStore(60), SumModulo10()
    jobs = [job_for(value) for value in range(100)]
    for job in jobs:
        await store.add_pending(job.inference_id)
        await broker.publish(job)
    await run_until_idle(broker, store, model, batch_size=16, batch_wait_ms=1)
    for job in jobs:
        result = await store.get(job.inference_id)
        assert result.status is JobStatus.DONE
        assert result.predicted_class == int(job.image.sum()) % 10
        assert result.model_version == "v-test"
    assert sum(model.batches) == 100
    assert max(model.batches) <= 16 and len(model.batches) < 100


async def test_jobs_pinned_to_versions_are_answered_by_those_versions_one_pass_each():
    broker, store, model = InProcessBroker(), MemoryResultStore(60), SumModulo10()
    jobs = [job_for(value, [None, "v1", "candidate"][value % 3]) for value in range(30)]
    for job in jobs:
        await store.add_pending(job.inference_id)
        await broker.publish(job)
    await run_until_idle(broker, store, model, batch_size=32, batch_wait_ms=20)
    for job in jobs:
        result = await store.get(job.inference_id)
        assert result.model_version == (job.model_version or "v-test")
        assert result.predicted_class == int(job.image.sum()) % 10
    assert sorted(model.refs, key=str) == sorted([None, "v1", "candidate"], key=str)


async def test_a_poison_message_is_dead_lettered_with_a_failed_result_after_max_attempts():
    broker, store, model = InProcessBroker(), MemoryResultStore(60), SumModulo10()
    good = job_for(3)
    poison_id = str(uuid.uuid4())
    await broker.publish(good)
    broker._queue.put_nowait(InProcessDelivery(b"{truncated", poison_id, 1, broker))
    await run_until_idle(broker, store, model, batch_size=8, batch_wait_ms=0, max_attempts=3)

    failed = await store.get(poison_id)
    assert failed.status is JobStatus.FAILED
    assert "not JSON" in failed.error and "3 attempts" in failed.error
    assert [d.message_id for d in broker.dead_letters] == [poison_id]
    assert broker.dead_letters[0].attempt == 3
    assert (await store.get(good.inference_id)).status is JobStatus.DONE


async def test_a_failed_forward_pass_is_retried_and_then_succeeds():
    broker, store, model = InProcessBroker(), MemoryResultStore(60), SumModulo10(fail_first=1)
    job = job_for(9)
    await broker.publish(job)
    await run_until_idle(broker, store, model, max_attempts=3)
    result = await store.get(job.inference_id)
    assert result.status is JobStatus.DONE and result.attempts == 2
    assert not broker.dead_letters


async def test_a_redelivered_job_that_already_finished_is_acked_without_running_again():
    broker, store, model = InProcessBroker(), MemoryResultStore(60), SumModulo10()
    job = job_for(5)
    first = JobResult.done(job.inference_id, np.eye(10)[1], "v-old", attempts=1)
    await store.finish_many([first])
    broker._queue.put_nowait(InProcessDelivery(job.encode(), job.inference_id, 2, broker))
    await run_until_idle(broker, store, model)
    assert model.batches == []  # no second forward pass
    assert await store.get(job.inference_id) == first  # the first final result stands


async def test_stop_finishes_every_delivery_already_received():
    broker, store, model = InProcessBroker(), MemoryResultStore(60), SumModulo10()
    jobs = [job_for(v) for v in range(40)]
    for job in jobs:
        await broker.publish(job)
    worker = JobWorker(await broker.start_consuming(8), store, model, batch_size=8)
    worker.stop()  # stop before the loop even started: all 40 were already received
    await asyncio.wait_for(worker.run(), 5)
    results = await store.get_many([j.inference_id for j in jobs])
    assert [r.status for r in results] == [JobStatus.DONE] * 40


async def test_deliveries_that_land_behind_the_stop_marker_are_finished_too():
    broker, store, model = InProcessBroker(), MemoryResultStore(60), SumModulo10()
    early, late = [job_for(1), job_for(2)], [job_for(3), job_for(4), job_for(5)]
    for job in early:
        await broker.publish(job)
    worker = JobWorker(await broker.start_consuming(8), store, model, batch_size=2)
    worker.stop()
    for job in late:  # on the wire when consuming stopped: queued after the stop marker
        await broker.publish(job)
    await asyncio.wait_for(worker.run(), 5)
    assert [await store.get(j.inference_id) for j in late] == [None] * 3
    await asyncio.wait_for(worker.finish_received(), 5)
    results = await store.get_many([j.inference_id for j in early + late])
    assert [r.status for r in results] == [JobStatus.DONE] * 5


class FlakyStore(MemoryResultStore):
    def __init__(self, failures: int) -> None:
        super().__init__(60)
        self.failures = failures

    async def finish_many(self, results):
        if self.failures:
            self.failures -= 1
            raise ResultStoreUnavailable("Redis result store failed: Connection refused")
        return await super().finish_many(results)


async def test_results_wait_for_the_store_to_come_back_and_are_not_acked_before():
    broker, store, model = InProcessBroker(), FlakyStore(failures=2), SumModulo10()
    job = job_for(2)
    await broker.publish(job)
    worker = JobWorker(await broker.start_consuming(8), store, model)
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(5):
        while await store.get(job.inference_id) is None:
            await asyncio.sleep(0.02)
    worker.stop()
    await task
    assert (await store.get(job.inference_id)).status is JobStatus.DONE
    assert model.batches == [1]  # one forward pass: the store retries, not the job


async def test_the_in_process_queue_refuses_jobs_past_its_size():
    broker = InProcessBroker(max_size=2)
    await broker.publish(job_for(1))
    await broker.publish(job_for(2))
    with pytest.raises(BrokerUnavailable, match="full"):
        await broker.publish(job_for(3))
    assert (await broker.status()).depth == 2


async def test_a_job_delivered_past_max_attempts_is_given_up_without_running():
    broker, store, model = InProcessBroker(), MemoryResultStore(60), SumModulo10()
    job = job_for(4)
    broker._queue.put_nowait(InProcessDelivery(job.encode(), job.inference_id, 4, broker))
    await run_until_idle(broker, store, model, max_attempts=3)
    result = await store.get(job.inference_id)
    assert result.status is JobStatus.FAILED and "delivered 3 times" in result.error
    assert model.batches == [] and len(broker.dead_letters) == 1


class OneVersionPool:
    """The part of the model pool the embedded predictor uses: one version and its batcher."""

    default_alias = "production"

    def __init__(self, batcher: MicroBatcher) -> None:
        self.served = SimpleNamespace(version="v-batcher", batcher=batcher)
        self.asked: list[str] = []

    async def get(self, ref: str) -> SimpleNamespace:
        self.asked.append(ref)
        return self.served


async def test_embedded_jobs_wait_for_room_in_a_full_api_batcher():
    def handler(digits):
        time.sleep(0.01)
        return [np.eye(10)[int(d.sum()) % 10] for d in digits]

    batcher = MicroBatcher(handler, max_batch_size=2, max_queue_size=2).start()
    refused = 0
    submit_many = batcher.submit_many

    async def counting_submit_many(items):
        nonlocal refused
        try:
            return await submit_many(items)
        except QueueFull:
            refused += 1
            raise

    batcher.submit_many = counting_submit_many
    images = np.stack([job_for(v).image for v in range(10)])
    try:
        pool = OneVersionPool(batcher)
        predictor = BatcherPredictor(pool)
        predictions = await asyncio.gather(*(predictor.predict(images, None) for _ in range(3)))
    finally:
        batcher.close()
    assert refused > 0  # the batcher was full at times, and the jobs waited instead of failing
    assert pool.asked == ["production"] * 3
    for prediction in predictions:
        assert prediction.probabilities.argmax(axis=1).tolist() == [v % 10 for v in range(10)]
        assert prediction.model_version == "v-batcher"
