"""Rolling windows of signal rows (``monitoring.signals``): the last DRIFT_WINDOW inputs of a
version, in process (``RingWindow``), and shared by every replica through Redis
(``RedisWindows``) when REDIS_URL is set.

In Redis a version's window is one list, ``<namespace>:<version>``, with one element per input
(its signal row as little-endian float32), pushed and trimmed to the window in one transaction,
so replicas fill it together and it never holds more than the window. Like the prediction
cache, Redis is never allowed to slow anything down: every call has REDIS_TIMEOUT_S, no retries,
and a circuit breaker (BREAKER_FAILURES, BREAKER_RESET_S) stops calling it while it is down.
Callers then use the in-process window: Redis down costs the sharing, nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import numpy as np

from service.inference.cache import FAILED, CircuitBreaker, fail_fast_redis

log = logging.getLogger(__name__)
ROW_TYPE = np.dtype("<f4")
# An abandoned version's window (no replica serves it any more) leaves Redis after this.
SHARED_TTL_S = 7 * 24 * 3600


class RingWindow:
    """The last ``size`` rows pushed, in process (not thread-safe: the caller locks)."""

    def __init__(self, size: int, width: int) -> None:
        self.size = size
        self._rows = np.zeros((size, width), dtype=ROW_TYPE)
        self._next = 0
        self.filled = 0

    def extend(self, rows: np.ndarray) -> None:
        rows = rows[-self.size:]
        count = len(rows)
        head = min(count, self.size - self._next)  # up to the end of the ring, the rest wraps
        self._rows[self._next:self._next + head] = rows[:head]
        self._rows[:count - head] = rows[head:]
        self._next = (self._next + count) % self.size
        self.filled = min(self.filled + count, self.size)

    def rows(self) -> np.ndarray:
        """A copy of the rows held (in no particular order: the statistics do not need one)."""
        return self._rows[: self.filled].copy()


class RedisWindows:
    """Every version's window in Redis (see the module docstring)."""

    def __init__(
        self, url: str, *, namespace: str, size: int, width: int, timeout_s: float,
        breaker_failures: int, breaker_reset_s: float,
    ) -> None:
        self.redis = fail_fast_redis(url, timeout_s)
        self.namespace = namespace
        self.size = size
        self.row_bytes = width * ROW_TYPE.itemsize
        self.width = width
        self.timeout_s = timeout_s
        self.breaker = CircuitBreaker(breaker_failures, breaker_reset_s)

    async def push(self, version: str, rows: np.ndarray) -> bool:
        """Append rows to the version's shared window; False when Redis did not take them."""
        if len(rows) == 0:
            return True
        key = f"{self.namespace}:{version}"
        data = np.ascontiguousarray(rows[-self.size:], dtype=ROW_TYPE).tobytes()
        pipeline = self.redis.pipeline(transaction=True)
        pipeline.rpush(key, *(data[i:i + self.row_bytes]
                              for i in range(0, len(data), self.row_bytes)))
        pipeline.ltrim(key, -self.size, -1)
        pipeline.expire(key, SHARED_TTL_S)
        return await self._guarded(pipeline.execute()) is not FAILED

    async def read(self, version: str) -> np.ndarray | None:
        """The shared window's rows; None when Redis cannot say (use the local window)."""
        key = f"{self.namespace}:{version}"
        found = await self._guarded(self.redis.lrange(key, -self.size, -1))
        if found is FAILED:
            return None
        rows = b"".join(item for item in found if len(item) == self.row_bytes)
        return np.frombuffer(rows, dtype=ROW_TYPE).reshape(-1, self.width)

    @property
    def reachable(self) -> bool:
        return self.breaker.opened_at is None

    async def _guarded(self, call: Awaitable[Any]) -> Any:
        """The call's result, or FAILED when the breaker is open, it timed out or failed."""
        if not self.breaker.allow():
            getattr(call, "close", lambda: None)()  # a coroutine never awaited: close it
            return FAILED
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call
        except Exception as exc:  # timeouts, refused connections, Redis errors: all the same
            was_open = not self.reachable
            self.breaker.failure()
            if not was_open and not self.reachable:
                log.warning("drift windows not shared: Redis unreachable (%s: %s); each "
                            "instance keeps its own until it answers", type(exc).__name__, exc)
            return FAILED
        if not self.reachable:
            log.info("drift windows shared again: Redis reachable")
        self.breaker.success()
        return result

    async def close(self) -> None:
        await self.redis.aclose()
