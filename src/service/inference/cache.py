"""Prediction cache: an in-process LRU, and a Redis tier when REDIS_URL is set.

Keys start with the model version, so a new version never serves an old answer. /predict files
each answer twice: under a hash of the normalised uint8 28x28 input (``cache_key``: the same
digit sent as JSON or uploaded as a PNG hits the same entry) and under a hash of the exact
request bytes (``Payload.fingerprint``: a repeat is answered before it is parsed or decoded).
Values are the prediction's JSON bytes, served as they are.

Redis is optional and never allowed to slow the service down: every call has a short timeout
(``redis_timeout_s``), no retries, and a circuit breaker opens after ``breaker_failures``
failures in a row. While it is open, Redis is not called at all (requests go straight to the
model, the tier reports ``degraded``); after ``breaker_reset_s`` one trial call decides whether
it closes again, so caching resumes by itself when Redis comes back.

Redis calls made in the same event-loop iteration share one round trip: lookups become one
MGET, writes one pipeline. Nothing waits on a timer for this (a lone request's lookup goes out
on the next loop iteration), but under load one round trip serves dozens of requests, which is
what makes a Redis hit cheaper than running the model (docs/benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from service.monitoring.metrics import CACHE_DEGRADED, CACHE_ENTRIES, CACHE_REQUESTS

if TYPE_CHECKING:  # redis-py is imported where REDIS_URL is set: 9 MiB the embedded default saves
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)
T = TypeVar("T")
FAILED: Any = object()  # a Redis call that was skipped, timed out or failed
MAX_PENDING_WRITES = 512  # Redis writes in flight; past this, writes are dropped, not queued


def cache_key(version: str, digit: np.ndarray) -> str:
    """'<version>:<blake2b of the 784 uint8 pixels>'."""
    pixels = np.ascontiguousarray(digit, dtype=np.uint8)
    return f"{version}:{hashlib.blake2b(pixels.data, digest_size=16).hexdigest()}"


def fail_fast_redis(url: str, timeout_s: float) -> Redis:
    """A Redis client that gives up after ``timeout_s``, connecting or answering, and never
    retries: for callers that would rather do without Redis than wait for it."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


class CircuitBreaker:
    """closed -> (N failures in a row) -> open -> (reset_s later, one trial) -> closed or open."""

    def __init__(
        self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = failures
        self.reset_s = reset_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        if self._trial or self.clock() - self.opened_at < self.reset_s:
            return False
        self._trial = True  # exactly one trial call while half-open
        return True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._trial = False

    def failure(self) -> None:
        self.failures += 1
        if self._trial or self.failures >= self.threshold:
            self.opened_at = self.clock()
        self._trial = False


class LruCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        if self.size <= 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


class PredictionCache:
    """``get(key)`` -> bytes or None; ``put(key, value)``. Event-loop side only (no locks)."""

    def __init__(
        self,
        *,
        size: int = 10_000,
        redis_url: str | None = None,
        ttl_s: int = 3600,
        timeout_s: float = 0.05,
        breaker_failures: int = 3,
        breaker_reset_s: float = 2.0,
        namespace: str = "lab2prod:prediction",
    ) -> None:
        self.memory = LruCache(size)
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.namespace = namespace
        self.breaker = CircuitBreaker(breaker_failures, breaker_reset_s)
        self.redis = fail_fast_redis(redis_url, timeout_s) if redis_url else None
        self._writes: set[asyncio.Task[Any]] = set()
        self._lookups: list[tuple[str, asyncio.Future[Any]]] | None = None  # this iteration's
        self._pending_writes: dict[str, bytes] | None = None  # this iteration's SETs
        self._hit_memory = CACHE_REQUESTS.labels("memory", "hit")
        self._miss_memory = CACHE_REQUESTS.labels("memory", "miss")
        self._hit_redis = CACHE_REQUESTS.labels("redis", "hit")
        self._miss_redis = CACHE_REQUESTS.labels("redis", "miss")
        self._error_redis = CACHE_REQUESTS.labels("redis", "error")
        self._skipped_redis = CACHE_REQUESTS.labels("redis", "skipped")
        CACHE_DEGRADED.labels("redis").set(0)

    @classmethod
    def from_settings(cls, settings: Any, namespace: str | None = None) -> PredictionCache:
        return cls(
            size=settings.cache_size,
            redis_url=settings.redis_url,
            ttl_s=settings.cache_ttl_s,
            timeout_s=settings.redis_timeout_s,
            breaker_failures=settings.breaker_failures,
            breaker_reset_s=settings.breaker_reset_s,
            namespace=namespace or f"lab2prod:prediction:{settings.model_name}",
        )

    # --- the hot path -------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        value = self.memory.get(key)
        if value is not None:
            self._hit_memory.inc()
            return value
        self._miss_memory.inc()
        if self.redis is None:
            return None
        value = await self._lookup(key)
        if value is None or value is FAILED:
            if value is None:
                self._miss_redis.inc()
            return None
        self._hit_redis.inc()
        self.memory.put(key, value)
        return value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Like ``get`` for each key, with one Redis round trip (MGET) for the LRU's misses."""
        values: list[bytes | None] = [self.memory.get(key) for key in keys]
        missing = [index for index, value in enumerate(values) if value is None]
        self._hit_memory.inc(len(keys) - len(missing))
        self._miss_memory.inc(len(missing))
        if self.redis is None or not missing:
            return values
        found = await self._guarded(
            self.redis.mget([f"{self.namespace}:{keys[index]}" for index in missing])
        )
        if found is FAILED:
            return values
        for index, value in zip(missing, found, strict=True):
            if value is None:
                self._miss_redis.inc()
            else:
                self._hit_redis.inc()
                self.memory.put(keys[index], value)
                values[index] = value
        return values

    def put(self, key: str, value: bytes) -> None:
        """Store in the LRU now and in Redis in the background (never awaited by a request)."""
        self.memory.put(key, value)
        if self.redis is None:
            return
        if len(self._writes) >= MAX_PENDING_WRITES or self.breaker.state == "open":
            self._skipped_redis.inc()
            return
        if self._pending_writes is None:
            self._pending_writes = {}
            asyncio.get_running_loop().call_soon(self._flush_writes)
        self._pending_writes[key] = value

    # --- one round trip per event-loop iteration ------------------------------------------------

    def _lookup(self, key: str) -> asyncio.Future[Any]:
        """The Redis value of ``key`` (bytes, None, or FAILED), fetched with this iteration's
        other lookups in one MGET."""
        loop = asyncio.get_running_loop()
        if self._lookups is None:
            self._lookups = []
            loop.call_soon(self._flush_lookups)
        future: asyncio.Future[Any] = loop.create_future()  # one each: a caller may cancel its own
        self._lookups.append((key, future))
        return future

    def _flush_lookups(self) -> None:
        lookups, self._lookups = self._lookups or [], None
        if lookups:
            self._track(self._fetch(lookups))

    async def _fetch(self, lookups: list[tuple[str, asyncio.Future[Any]]]) -> None:
        assert self.redis is not None
        keys = list(dict.fromkeys(key for key, _ in lookups))  # each distinct key once
        found: Any = FAILED
        try:
            found = await self._guarded(
                self.redis.mget([f"{self.namespace}:{key}" for key in keys])
            )
        finally:  # even when cancelled at shutdown: no request waits forever
            values = dict(zip(keys, [FAILED] * len(keys) if found is FAILED else found,
                              strict=True))
            for key, future in lookups:
                if not future.done():
                    future.set_result(values[key])

    def _flush_writes(self) -> None:
        writes, self._pending_writes = self._pending_writes or {}, None
        if writes and self.redis is not None:
            pipeline = self.redis.pipeline(transaction=False)
            for key, value in writes.items():
                pipeline.set(f"{self.namespace}:{key}", value, ex=self.ttl_s)
            self._track(self._guarded(pipeline.execute()))

    def _track(self, call: Awaitable[Any]) -> None:
        task = asyncio.get_running_loop().create_task(call)  # type: ignore[arg-type]
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _guarded(self, call: Awaitable[T]) -> T | Any:
        """Run one Redis call under the breaker and a hard timeout; FAILED when it did not."""
        if not self.breaker.allow():
            self._skipped_redis.inc()
            _close(call)
            return FAILED
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call
        except Exception as exc:  # timeouts, refused connections, Redis errors: all the same
            self._error_redis.inc()
            was_open = self.breaker.opened_at is not None
            self.breaker.failure()
            if self.breaker.opened_at is not None and not was_open:
                CACHE_DEGRADED.labels("redis").set(1)
                logger.warning(
                    "redis cache degraded: circuit open for %.1fs (%s: %s)",
                    self.breaker.reset_s, type(exc).__name__, exc,
                )
                await self._drop_connections()
            return FAILED
        if self.breaker.opened_at is not None:
            logger.info("redis cache reachable again: circuit closed")
        self.breaker.success()
        CACHE_DEGRADED.labels("redis").set(0)
        return result

    async def _drop_connections(self) -> None:
        """Pooled connections to a Redis that went away are dead: drop them all, so that when
        it returns, calls start on fresh connections instead of failing once per stale one."""
        if self.redis is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout_s):
                await self.redis.connection_pool.disconnect()

    # --- status -------------------------------------------------------------------------------

    @property
    def redis_state(self) -> str:
        """'disabled', 'ok' or 'degraded' (the circuit is open or half-open)."""
        if self.redis is None:
            return "disabled"
        return "ok" if self.breaker.opened_at is None else "degraded"

    async def check(self) -> str:
        """Ping Redis through the breaker (so /ready can close it early); returns redis_state."""
        if self.redis is not None:
            await self._guarded(self.redis.ping())
        return self.redis_state

    def status(self) -> dict[str, Any]:
        CACHE_ENTRIES.set(len(self.memory))
        return {
            "memory": {"entries": len(self.memory), "size": self.memory.size},
            "redis": self.redis_state,
            "breaker": self.breaker.state if self.redis is not None else None,
        }

    async def close(self) -> None:
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=1)
        if self.redis is not None:
            await self.redis.aclose()


def _close(call: Awaitable[Any]) -> None:
    close = getattr(call, "close", None)  # a coroutine never awaited: close it quietly
    if close is not None:
        close()
