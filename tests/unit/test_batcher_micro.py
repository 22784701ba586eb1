"""The micro-batcher: no idle timer, batches form under load, bounded queue, errors delivered."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.inference.batcher import BatcherClosed, MicroBatcher, QueueFull, SubmissionTimeout


def squares(xs: list[int]) -> list[int]:
    return [x * x for x in xs]


async def test_a_lone_request_runs_at_once_without_a_timer_wait():
    batcher = MicroBatcher(squares, max_batch_size=32, max_wait_ms=0).start()
    try:
        await batcher.submit(1)  # thread warm
        started = time.perf_counter()
        for value in range(20):
            assert await batcher.submit(value) == value * value
        per_request_ms = (time.perf_counter() - started) * 1000 / 20
    finally:
        batcher.close()
    assert per_request_ms < 2.0, f"a lone request took {per_request_ms:.2f} ms on an idle batcher"


async def test_requests_arriving_while_a_batch_runs_form_the_next_batch():
    sizes: list[int] = []
    gate = threading.Event()

    def slow(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        gate.wait(2)
        return squares(xs)

    batcher = MicroBatcher(slow, max_batch_size=8).start()
    try:
        first = asyncio.ensure_future(batcher.submit(0))
        while not sizes:  # the first batch (of one) is now running
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(v)) for v in range(1, 11)]
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(first, *rest)
    finally:
        batcher.close()
    assert results == [v * v for v in range(11)]
    assert sizes == [1, 8, 2], "waiting requests must be taken up to max_batch_size at once"


async def test_max_wait_fills_a_batch_when_configured():
    sizes: list[int] = []

    def record(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        return squares(xs)

    batcher = MicroBatcher(record, max_batch_size=4, max_wait_ms=200).start()
    try:
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(batcher.submit(2))
        assert await asyncio.gather(first, second) == [1, 4]
    finally:
        batcher.close()
    assert sizes == [2]


async def test_a_full_queue_refuses_with_queue_full_instead_of_growing():
    gate = threading.Event()

    def blocked(xs: list[int]) -> list[int]:
        gate.wait(2)
        return squares(xs)

    batcher = MicroBatcher(blocked, max_batch_size=1, max_queue_size=2).start()
    try:
        running = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.02)  # taken by the thread, blocked in the handler
        waiting = [asyncio.ensure_future(batcher.submit(v)) for v in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as refused:
            await batcher.submit(3)
        assert refused.value.retry_after >= 1
        with pytest.raises(QueueFull):
            await batcher.submit_many([4, 5, 6])
        gate.set()
        assert await asyncio.gather(running, *waiting) == [0, 1, 4]
    finally:
        batcher.close()


async def test_a_handler_error_fails_only_its_batch_and_the_thread_carries_on():
    def picky(xs: list[int]) -> list[int]:
        if 13 in xs:
            raise ValueError("unlucky")
        return squares(xs)

    batcher = MicroBatcher(picky, max_batch_size=1).start()
    try:
        with pytest.raises(ValueError, match="unlucky"):
            await batcher.submit(13)
        assert await batcher.submit(3) == 9
    finally:
        batcher.close()


async def test_a_handler_returning_the_wrong_count_is_an_error_not_a_hang():
    batcher = MicroBatcher(lambda xs: [], max_batch_size=4).start()
    try:
        with pytest.raises(RuntimeError, match="returned 0 outputs for 1 inputs"):
            await asyncio.wait_for(batcher.submit(1), 2)
    finally:
        batcher.close()


async def test_submit_many_keeps_order_and_reports_batches():
    seen: list[tuple[int, float]] = []
    batcher = MicroBatcher(
        squares, max_batch_size=5, on_batch=lambda size, seconds: seen.append((size, seconds))
    ).start()
    try:
        assert await batcher.submit_many(list(range(12))) == [v * v for v in range(12)]
    finally:
        batcher.close()
    assert sum(size for size, _ in seen) == 12
    assert max(size for size, _ in seen) <= 5


async def test_a_closed_batcher_refuses_new_work():
    batcher = MicroBatcher(squares).start()
    batcher.close()
    with pytest.raises(BatcherClosed):
        await batcher.submit(1)


def test_construction_validates_its_settings_with_a_fix():
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        MicroBatcher(squares, max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms must be 0"):
        MicroBatcher(squares, max_wait_ms=-1)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        MicroBatcher(squares, threads=0)


async def test_several_threads_run_batches_at_the_same_time_on_one_queue():
    both_running = threading.Barrier(2, timeout=5)  # passes only if two batches run at once

    def handler(items: list[int]) -> list[int]:
        both_running.wait()
        return [item * 10 for item in items]

    batcher = MicroBatcher(handler, max_batch_size=1, threads=2).start()
    try:
        assert sorted(await asyncio.gather(batcher.submit(1), batcher.submit(2))) == [10, 20]
        assert {thread.name for thread in batcher._threads} == {
            "inference-batcher-0", "inference-batcher-1"}
    finally:
        batcher.close()


async def test_closing_a_many_threaded_batcher_finishes_the_queue_and_stops_every_thread():
    def slow_squares(items: list[int]) -> list[int]:
        time.sleep(0.01)
        return [item * item for item in items]

    batcher = MicroBatcher(slow_squares, max_batch_size=2, threads=3).start()
    answers = [asyncio.ensure_future(batcher.submit(value)) for value in range(12)]
    await asyncio.sleep(0)  # submitted: handed over at the end of this loop iteration
    started = time.monotonic()
    await asyncio.to_thread(batcher.close)
    assert time.monotonic() - started < 5, "every thread took its own stop and none hung"
    assert [await answer for answer in answers] == [value * value for value in range(12)]
    assert not any(thread.is_alive() for thread in batcher._threads)
    with pytest.raises(BatcherClosed):
        await batcher.submit(1)


async def test_a_low_priority_batcher_lowers_only_its_own_threads_priority():
    import os

    batcher = MicroBatcher(lambda xs: [x + 1 for x in xs], niceness=10).start()
    try:
        assert await batcher.submit(1) == 2  # the thread has started and set its priority
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, batcher._threads[0].native_id) == max(base, 10)
        assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the rest of the process is untouched
    finally:
        batcher.close()


async def test_a_submission_not_answered_in_time_fails_and_its_item_is_never_computed():
    seen: list[int] = []
    gate = threading.Event()

    def slow(xs: list[int]) -> list[int]:
        seen.extend(xs)
        gate.wait(2)
        return squares(xs)

    batcher = MicroBatcher(slow, max_batch_size=1).start()
    try:
        running = asyncio.ensure_future(batcher.submit(1))
        while not seen:
            await asyncio.sleep(0.001)
        with pytest.raises(SubmissionTimeout, match=r"did not answer within 0\.05 s"):
            await batcher.submit(2, timeout_s=0.05)  # queued behind the batch that hangs
        gate.set()
        assert await running == 1
        assert await batcher.submit(3, timeout_s=1.0) == 9
    finally:
        batcher.close()
    assert seen == [1, 3], "the timed-out item was dropped, not computed for nobody"


async def test_a_shorter_timeout_behind_longer_ones_still_fails_on_time():
    gate = threading.Event()
    batcher = MicroBatcher(lambda xs: (gate.wait(2), squares(xs))[1], max_batch_size=1).start()
    try:
        patient = [asyncio.ensure_future(batcher.submit(v, timeout_s=5.0)) for v in range(3)]
        started = time.perf_counter()
        with pytest.raises(SubmissionTimeout):
            await batcher.submit_many([7, 8], timeout_s=0.05)
        waited = time.perf_counter() - started
        gate.set()
        assert await asyncio.gather(*patient) == [0, 1, 4]
    finally:
        batcher.close()
    assert waited < 1.0


async def test_answered_submissions_leave_no_deadlines_behind():
    batcher = MicroBatcher(squares).start()
    try:
        for value in range(500):
            assert await batcher.submit(value, timeout_s=30.0) == value * value
        watched = len(batcher._deadlines[asyncio.get_running_loop()])
    finally:
        batcher.close()
    assert watched <= 1, "deadlines of answered requests must not pile up for REQUEST_TIMEOUT_S"
