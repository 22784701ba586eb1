"""The micro-batcher hands one event-loop iteration's submissions over together (performance,
docs/benchmarks): they share a forward pass, and none is lost when the batcher closes meanwhile."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.inference.batcher import BatcherClosed, MicroBatcher


async def test_submissions_of_one_loop_iteration_share_one_batch():
    sizes: list[int] = []

    def record(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        return [x + 1 for x in xs]

    async def request(value: int) -> int:
        time.sleep(0.002)  # reading a request: the GIL is free, the thread could run meanwhile
        return await batcher.submit(value)

    batcher = MicroBatcher(record, max_batch_size=8).start()
    try:
        results = await asyncio.gather(*[request(v) for v in range(20)])
    finally:
        batcher.close()
    assert results == [v + 1 for v in range(20)]
    assert sizes == [8, 8, 4], "one iteration's 20 submissions: full batches, nothing alone"


async def test_several_inputs_submitted_at_once_join_the_iterations_other_submissions():
    sizes: list[int] = []

    def record(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        return [x + 1 for x in xs]

    async def request(values: list[int]) -> list[int]:
        time.sleep(0.002)  # reading a request: the GIL is free, the thread could run meanwhile
        return await batcher.submit_many(values)

    batcher = MicroBatcher(record, max_batch_size=8).start()
    try:
        results = await asyncio.gather(*[request([v, v + 100]) for v in range(6)])
    finally:
        batcher.close()
    assert results == [[v + 1, v + 101] for v in range(6)]
    assert sizes == [8, 4], "one iteration's 12 inputs: full batches, nothing alone"


async def test_work_submitted_just_before_close_is_finished_and_later_work_refused():
    batcher = MicroBatcher(lambda xs: [x * 2 for x in xs], max_batch_size=4).start()
    submitted = [asyncio.ensure_future(batcher.submit(v)) for v in range(6)]
    await asyncio.sleep(0)  # submitted, not yet handed to the thread
    assert batcher.depth == 6
    batcher.close()
    assert await asyncio.gather(*submitted) == [0, 2, 4, 6, 8, 10]
    with pytest.raises(BatcherClosed):
        await batcher.submit(7)
