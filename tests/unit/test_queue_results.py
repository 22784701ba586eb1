"""The in-memory result store: TTL, first final write wins, pending records never clobber."""

from __future__ import annotations

import uuid

import numpy as np

from service.queue.jobs import JobResult, JobStatus
from service.queue.results import MemoryResultStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_id() -> str:
    return str(uuid.uuid4())


async def test_records_expire_after_the_ttl():
    clock = Clock()
    store = MemoryResultStore(ttl_s=10, clock=clock)
    iid = new_id()
    await store.add_pending(iid)
    clock.now += 9.9
    assert (await store.get(iid)).status is JobStatus.PENDING
    clock.now += 0.2
    assert await store.get(iid) is None
    assert len(store) == 0


async def test_the_first_final_result_wins():
    store = MemoryResultStore(ttl_s=60)
    iid = new_id()
    await store.add_pending(iid)
    first = JobResult.done(iid, np.eye(10)[3], "v1", attempts=1)
    second = JobResult.done(iid, np.eye(10)[8], "v2", attempts=2)
    assert await store.finish_many([first]) == [True]
    assert await store.finish_many([second]) == [False]
    assert await store.get(iid) == first


async def test_a_late_pending_record_never_hides_a_result():
    store = MemoryResultStore(ttl_s=60)
    iid = new_id()
    result = JobResult.failed(iid, "bad pixels", attempts=3)
    await store.finish_many([result])
    await store.add_pending(iid)
    await store.discard_pending(iid)
    assert await store.get(iid) == result


async def test_discarding_a_pending_record_leaves_no_trace():
    store = MemoryResultStore(ttl_s=60)
    iid = new_id()
    await store.add_pending(iid)
    await store.discard_pending(iid)
    assert await store.get(iid) is None
