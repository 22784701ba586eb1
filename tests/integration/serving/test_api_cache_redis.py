"""The Redis tier of the prediction cache, on a private redis-server that the tests stop, freeze
and restart: answers stay fast, /ready and /metrics say degraded, caching resumes by itself."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest
from support.app import serving, settings_for
from support.servers import free_port

pytestmark = pytest.mark.redis


def redis_settings(registry_dir, server, **overrides):
    values = {
        "redis_url": server.url, "redis_timeout_s": 0.05, "breaker_failures": 3,
        "breaker_reset_s": 0.3, "cache_ttl_s": 120,
    }
    values.update(overrides)
    return settings_for(registry_dir, **values)


def new_digits(seed: int, count: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, 784).tolist() for _ in range(count)]


async def wait_for_keys(server, count: int, timeout: float = 10.0) -> None:
    client = server.client()
    try:
        deadline = time.monotonic() + timeout
        while client.dbsize() < count:
            assert time.monotonic() < deadline, f"Redis never held {count} keys"
            await asyncio.sleep(0.02)
    finally:
        client.close()


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_start} in /metrics")


async def redis_calls(client) -> dict[str, float]:
    """Cumulative Redis-tier outcomes from /metrics: error (a call that failed or timed out)
    and skipped (a call the open circuit did not make)."""
    text = (await client.get("/metrics")).text
    found = {}
    for result in ("error", "skipped"):
        try:
            name = f'lab2prod_cache_requests_total{{result="{result}",tier="redis"}}'
            found[result] = metric(text, name)
        except AssertionError:
            found[result] = 0.0
    return found


async def test_a_prediction_cached_by_one_instance_is_a_hit_for_another(registry_dir, redis_server):
    redis_server.client().flushall()
    (pixels,) = new_digits(1, 1)
    settings = redis_settings(registry_dir, redis_server)
    async with serving(settings) as (_, first):
        miss = await first.post("/predict", json={"pixels": pixels})
        await wait_for_keys(redis_server, 2)  # the digit's key and the request bytes' key
    async with serving(settings) as (_, second):  # a fresh process-local LRU
        hit = await second.post("/predict", json={"pixels": pixels})
        metrics = (await second.get("/metrics")).text
    assert miss.headers["x-cache"] == "miss" and hit.headers["x-cache"] == "hit"
    assert hit.json() == miss.json()
    client = redis_server.client()
    keys = sorted(key.decode() for key in client.keys("*"))
    prefix = "lab2prod:prediction:mnist-cnn:v1:"
    assert [key.removeprefix(prefix).startswith("json:") for key in keys] == [False, True]
    assert all(key.startswith(prefix) and 0 < client.ttl(key) <= 120 for key in keys)
    assert metric(metrics, 'lab2prod_cache_requests_total{result="hit",tier="redis"}') >= 1


async def answer_all(client, digits) -> list[float]:
    latencies = []
    for pixels in digits:
        started = time.perf_counter()
        answer = await client.post("/predict", json={"pixels": pixels})
        latencies.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-cache"] == "miss"
    return latencies


async def test_redis_stopped_mid_test_degrades_without_stalls_and_caching_resumes(
    registry_dir, redis_server
):
    redis_server.client().flushall()
    settings = redis_settings(registry_dir, redis_server)
    async with serving(settings) as (_, client):
        await answer_all(client, new_digits(2, 3))
        await wait_for_keys(redis_server, 3)
        assert (await client.get("/ready")).json()["status"] == "ready"

        redis_server.stop()  # down: connections refused
        before = await redis_calls(client)
        started = time.monotonic()
        down = await answer_all(client, new_digits(3, 30))
        elapsed = time.monotonic() - started
        during = await redis_calls(client)
        ready = await client.get("/ready")
        metrics = (await client.get("/metrics")).text

        redis_server.start()  # back, empty
        await asyncio.sleep(settings.breaker_reset_s)
        deadline = time.monotonic() + 10
        while (await client.get("/ready")).json()["status"] != "ready":
            assert time.monotonic() < deadline, "the cache never left the degraded state"
            await asyncio.sleep(0.05)
        await answer_all(client, new_digits(4, 3))
        await wait_for_keys(redis_server, 3)  # new predictions reach Redis again
        metrics_after = (await client.get("/metrics")).text

    failed = during["error"] - before["error"]
    trials = elapsed / settings.breaker_reset_s + 1  # one trial call per reset period at most
    assert failed <= 2 * (settings.breaker_failures + trials), "the open circuit stops calling"
    assert during["skipped"] - before["skipped"] >= 30, "lookups and writes skipped while open"
    assert max(down) < 1.0, f"a stall while Redis was down: {down}"
    assert ready.status_code == 200, "the model still serves: degraded, not unready"
    assert ready.json()["status"] == "degraded"
    assert ready.json()["cache"]["redis"] == "degraded"
    assert metric(metrics, 'lab2prod_cache_degraded{tier="redis"}') == 1
    assert metric(metrics_after, 'lab2prod_cache_degraded{tier="redis"}') == 0


async def test_a_frozen_redis_costs_a_few_short_timeouts_then_none(registry_dir, redis_server):
    redis_server.client().flushall()
    settings = redis_settings(registry_dir, redis_server, breaker_reset_s=5.0)
    async with serving(settings) as (_, client):
        await answer_all(client, new_digits(5, 2))  # the pool holds live connections
        pid = redis_server.process.pid
        before = await redis_calls(client)
        os.kill(pid, signal.SIGSTOP)  # hung: accepts nothing, answers nothing
        try:
            frozen = await answer_all(client, new_digits(6, 30))
            ready = (await client.get("/ready")).json()
        finally:
            os.kill(pid, signal.SIGCONT)
        during = await redis_calls(client)
    # each timed-out call costs redis_timeout_s (50 ms); after breaker_failures of them the
    # circuit is open for breaker_reset_s (5 s here) and no request waits on Redis at all.
    # Calls already in flight when it opens (a background write each) fail too: at most 2x.
    failed = during["error"] - before["error"]
    assert settings.breaker_failures <= failed <= 2 * settings.breaker_failures
    assert during["skipped"] - before["skipped"] >= 30 - settings.breaker_failures
    assert max(frozen) < 1.0, f"a stall while Redis was frozen: {frozen}"
    assert sum(frozen) < 3.0, "the circuit must stop paying the timeout on every request"
    assert ready["cache"]["redis"] == "degraded"


async def test_an_unreachable_redis_at_start_up_does_not_stop_the_service(registry_dir):
    settings = settings_for(registry_dir, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with serving(settings) as (_, client):
        answers = [await client.post("/predict", json={"pixels": p}) for p in new_digits(7, 5)]
        ready = (await client.get("/ready")).json()
    assert [answer.status_code for answer in answers] == [200] * 5
    assert ready["status"] == "degraded"


async def test_a_batch_reads_redis_in_one_round_trip_and_keeps_order(registry_dir, redis_server):
    redis_server.client().flushall()
    digits = new_digits(8, 4)
    settings = redis_settings(registry_dir, redis_server)
    async with serving(settings) as (_, first):
        for pixels in digits[:3]:
            await first.post("/predict", json={"pixels": pixels})
        await wait_for_keys(redis_server, 3)
        singles = [(await first.post("/predict", json={"pixels": p})).json() for p in digits[:3]]
    async with serving(settings) as (_, second):  # empty LRU: hits must come from Redis
        batch = await second.post("/predict/batch", json={"items": [{"pixels": p} for p in digits]})
    assert batch.status_code == 200
    assert batch.headers["x-cache-hits"] == "3" and batch.headers["x-cache"] == "miss"
    assert batch.json()["predictions"][:3] == singles
