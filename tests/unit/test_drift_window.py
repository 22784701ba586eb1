"""The drift windows: what the request path keeps (and drops), what a drain computes off it, the
in-process ring, a shared window whose Redis is unreachable, and what closing does to a drain
in progress."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from support.servers import free_port

from service.monitoring import monitor as monitor_module
from service.monitoring.monitor import DriftMonitor, VersionDrift
from service.monitoring.reference import DriftReference
from service.monitoring.signals import digit_signals
from service.monitoring.window import RedisWindows, RingWindow

PROBABILITIES = np.eye(10, dtype=np.float32)


def digits(count: int, level: int = 255) -> np.ndarray:
    batch = np.zeros((count, 28, 28), np.uint8)
    batch[:, 10:20, 12:16] = level
    return batch


def reference() -> DriftReference:
    return DriftReference.build(digit_signals(digits(10), PROBABILITIES), 10, "sha256:x")


def test_the_ring_keeps_the_latest_rows_across_the_wrap():
    ring = RingWindow(size=5, width=1)
    for start in (0, 3, 6):
        ring.extend(np.arange(start, start + 3, dtype=np.float32)[:, None])
    assert ring.filled == 5
    assert sorted(ring.rows()[:, 0].tolist()) == [4, 5, 6, 7, 8]
    ring.extend(np.arange(100, 112, dtype=np.float32)[:, None])  # more than the ring at once
    assert sorted(ring.rows()[:, 0].tolist()) == [107, 108, 109, 110, 111]


def test_the_request_path_only_keeps_the_batch_and_a_drain_computes_its_signals():
    tracked = VersionDrift("v1", reference(), size=100)
    batch = digits(10)
    tracked.observe(batch, PROBABILITIES)
    assert tracked.rows().shape == (0, 5)  # nothing computed on the request path
    rows = tracked.absorb(*tracked.take())
    assert np.array_equal(rows, digit_signals(batch, PROBABILITIES))
    assert np.array_equal(tracked.rows(), rows)
    assert len(tracked.take()[0]) == 0  # taken once


def test_more_than_a_window_waiting_drops_the_oldest_batches():
    tracked = VersionDrift("v1", reference(), size=100)
    for level in range(1, 31):  # 300 inputs, batches of 10, each batch its own ink level
        tracked.observe(digits(10, level=level), PROBABILITIES)
    rows = tracked.absorb(*tracked.take())
    kept = digit_signals(np.concatenate([digits(10, level) for level in range(21, 31)]),
                         np.tile(PROBABILITIES, (10, 1)))
    assert np.array_equal(rows, kept)  # the latest 100 inputs, the window's worth


async def test_a_flush_computes_a_chunk_per_turn_of_the_event_loop_and_keeps_them_all():
    monitor = DriftMonitor(size=1000)
    tracked = monitor.track("v1", reference())
    assert tracked is not None
    batches = 2 * monitor_module.DRAIN_CHUNK // 10 + 1  # three chunks' worth, the last short
    for _ in range(batches):
        tracked.observe(digits(10), PROBABILITIES)
    turns = 0

    async def ticker() -> None:  # counts the turns the loop gives other tasks meanwhile
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counting = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = turns
    await monitor.flush(tracked)
    counting.cancel()
    assert tracked.rows().shape == (batches * 10, 5)
    assert turns - before >= 2  # the loop ran other work between the chunks


async def test_a_version_without_a_reference_is_not_tracked_and_says_so():
    monitor = DriftMonitor(size=100)
    assert monitor.track("v1", None) is None
    report = await monitor.report("v1")
    assert (report["verdict"], report["signals"], report["reference"]) == ("no reference", {}, None)


async def test_an_unreachable_redis_is_stopped_being_called_and_the_local_window_answers():
    shared = RedisWindows(f"redis://127.0.0.1:{free_port()}/0", namespace="test", size=100,
                          width=5, timeout_s=0.05, breaker_failures=2, breaker_reset_s=60)
    monitor = DriftMonitor(size=100, shared=shared)
    tracked = monitor.track("v1", reference())
    assert tracked is not None
    try:
        started = time.perf_counter()
        for _ in range(5):
            tracked.observe(digits(10), PROBABILITIES)
            report = await monitor.report("v1")
        elapsed = time.perf_counter() - started
    finally:
        await monitor.close()
    assert report["window"] == {"size": 100, "filled": 50, "shared": False}
    assert not shared.reachable and shared.breaker.failures == 2  # then no call was made
    assert elapsed < 1.0


def shared_window(redis_url: str, size: int = 100) -> RedisWindows:
    return RedisWindows(redis_url, namespace="test", size=size, width=5, timeout_s=1.0,
                        breaker_failures=3, breaker_reset_s=1.0)


async def test_closing_during_a_drain_still_pushes_what_that_drain_took(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(monitor_module, "FLUSH_S", 0.01)
    monitor = DriftMonitor(size=300, shared=shared_window(redis_url, size=300))
    tracked = monitor.track("v1", reference())
    assert tracked is not None
    taken = asyncio.Event()
    absorb = tracked.absorb

    def first_chunk_then_close(digits: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        taken.set()  # the buffer is taken, a chunk computed, the push not yet made
        return absorb(digits, probabilities)

    tracked.absorb = first_chunk_then_close  # type: ignore[method-assign]
    for _ in range(3):  # 300 digits: three chunks
        tracked.observe(digits(100), np.tile(PROBABILITIES, (10, 1)))
    monitor.start()
    await asyncio.wait_for(taken.wait(), 5)
    await monitor.close()  # a worker's SIGTERM lands here, between two chunks
    reader = shared_window(redis_url, size=300)
    try:
        rows = await reader.read("v1")
    finally:
        await reader.close()
    assert rows is not None and len(rows) == 300  # every chunk pushed
