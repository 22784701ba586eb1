"""The Redis tier's round trips: concurrent lookups share one MGET and concurrent writes one
pipeline (performance: docs/benchmarks), with the same answers as one call each."""

from __future__ import annotations

import asyncio

import pytest
from support.servers import RedisServer

from service.inference.cache import PredictionCache

pytestmark = pytest.mark.redis


def command_calls(server: RedisServer) -> dict[str, int]:
    client = server.client()
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


async def test_concurrent_lookups_and_writes_share_one_round_trip_each(tmp_path):
    server = RedisServer(tmp_path).start()
    cache = PredictionCache(size=0, redis_url=server.url, timeout_s=2.0)
    try:
        for index in range(32):
            cache.put(f"v1:{index}", f'{{"digit": {index % 10}}}'.encode())
        await asyncio.sleep(0.2)  # the pipelined writes land
        client = server.client()
        client.config_resetstat()
        client.close()
        keys = [f"v1:{index}" for index in range(48)] + ["v1:3", "v1:3"]  # 16 unknown, 1 repeated
        values = await asyncio.gather(*[cache.get(key) for key in keys])
        calls = command_calls(server)
    finally:
        await cache.close()
        server.stop()
    assert values[:32] == [f'{{"digit": {i % 10}}}'.encode() for i in range(32)]
    assert values[32:48] == [None] * 16
    assert values[48:] == [b'{"digit": 3}'] * 2
    assert calls.get("mget") == 1 and "get" not in calls


async def test_a_cancelled_lookup_does_not_disturb_the_others(tmp_path):
    server = RedisServer(tmp_path).start()
    cache = PredictionCache(size=0, redis_url=server.url, timeout_s=2.0)
    try:
        cache.put("v1:a", b"A")
        await asyncio.sleep(0.2)
        first = asyncio.ensure_future(cache.get("v1:a"))
        second = asyncio.ensure_future(cache.get("v1:a"))
        await asyncio.sleep(0)
        first.cancel()
        assert await second == b"A"
        assert first.cancelled()
    finally:
        await cache.close()
        server.stop()
