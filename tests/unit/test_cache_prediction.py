"""The prediction cache: keys, LRU, circuit breaker, and a Redis that cannot be reached."""

from __future__ import annotations

import time

import numpy as np

from service.inference.cache import CircuitBreaker, LruCache, PredictionCache, cache_key


def test_the_key_depends_on_the_version_and_the_pixels_only():
    digit = np.arange(784, dtype=np.int64).reshape(28, 28).astype(np.uint8)
    assert cache_key("v1", digit) == cache_key("v1", digit.copy(order="F"))
    assert cache_key("v1", digit) != cache_key("v2", digit)
    other = digit.copy()
    other[27, 27] ^= 1
    assert cache_key("v1", digit) != cache_key("v1", other)
    assert cache_key("v1", digit).startswith("v1:")


def test_the_lru_evicts_the_least_recently_used_and_size_zero_stores_nothing():
    lru = LruCache(2)
    lru.put("a", b"1")
    lru.put("b", b"2")
    assert lru.get("a") == b"1"  # a is now the most recent
    lru.put("c", b"3")
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (b"1", None, b"3")
    off = LruCache(0)
    off.put("a", b"1")
    assert off.get("a") is None and len(off) == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_n_failures_then_allows_one_trial_after_the_reset():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, reset_s=2.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 2.0
    assert breaker.state == "half-open"
    assert breaker.allow() and not breaker.allow(), "exactly one trial while half-open"
    breaker.failure()  # the trial failed: open again for another reset period
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 2.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


async def test_memory_only_cache_hits_after_a_put_and_reports_redis_disabled():
    cache = PredictionCache(size=4)
    assert await cache.get("v1:x") is None
    cache.put("v1:x", b"{}")
    assert await cache.get("v1:x") == b"{}"
    assert cache.status()["redis"] == "disabled" and await cache.check() == "disabled"


async def test_an_unreachable_redis_opens_the_circuit_and_costs_nothing_afterwards():
    cache = PredictionCache(
        size=0, redis_url="redis://127.0.0.1:9/0", timeout_s=0.05, breaker_failures=2,
        breaker_reset_s=60,
    )
    try:
        for _ in range(2):
            assert await cache.get("v1:x") is None
        assert cache.redis_state == "degraded"
        started = time.perf_counter()
        for _ in range(200):
            assert await cache.get("v1:y") is None
            cache.put("v1:y", b"{}")
        assert time.perf_counter() - started < 0.1, "an open circuit must not touch the network"
    finally:
        await cache.close()
