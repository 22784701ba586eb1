"""Result stores: Redis (shared by API instances and workers) or in-memory (one process).

Both keep every record for ``ttl_s`` seconds and share one rule that makes redelivery safe:
the first final write (``done`` or ``failed``) wins; a later final write for the same id is
refused and reported, so a job processed twice still has exactly one final result. A
``pending`` record is written only if the id has no record yet, and ``discard_pending`` removes
a record only while it is still pending (a job the broker refused must leave no trace).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.queue.jobs import JobResult


class ResultStoreUnavailable(RuntimeError):
    """The result store cannot be reached; the message says which and why."""


class ResultStore(Protocol):
    kind: str

    async def add_pending(self, inference_id: str) -> None: ...

    async def discard_pending(self, inference_id: str) -> None: ...

    async def finish_many(self, results: Sequence[JobResult]) -> list[bool]:
        """Store final results; True for each one that became final by this call."""
        ...

    async def get(self, inference_id: str) -> JobResult | None: ...

    async def get_many(self, inference_ids: Sequence[str]) -> list[JobResult | None]: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryResultStore:
    """A dict with per-record expiry; expired records are purged as new ones arrive."""

    kind = "memory"

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._records: dict[str, tuple[float, JobResult]] = {}
        self._next_purge = 0.0

    def _live(self, inference_id: str) -> JobResult | None:
        entry = self._records.get(inference_id)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._records[inference_id]
            return None
        return entry[1]

    def _put(self, result: JobResult) -> None:
        now = self._clock()
        if now >= self._next_purge:  # amortised: at most one full sweep per TTL/10
            self._records = {k: v for k, v in self._records.items() if v[0] > now}
            self._next_purge = now + self.ttl_s / 10
        self._records[result.inference_id] = (now + self.ttl_s, result)

    async def add_pending(self, inference_id: str) -> None:
        if self._live(inference_id) is None:
            self._put(JobResult.pending(inference_id))

    async def discard_pending(self, inference_id: str) -> None:
        current = self._live(inference_id)
        if current is not None and not current.final:
            del self._records[inference_id]

    async def finish_many(self, results: Sequence[JobResult]) -> list[bool]:
        outcome = []
        for result in results:
            current = self._live(result.inference_id)
            if current is not None and current.final:
                outcome.append(False)
                continue
            self._put(result)
            outcome.append(True)
        return outcome

    async def get(self, inference_id: str) -> JobResult | None:
        return self._live(inference_id)

    async def get_many(self, inference_ids: Sequence[str]) -> list[JobResult | None]:
        return [self._live(inference_id) for inference_id in inference_ids]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._records.clear()

    def __len__(self) -> int:
        now = self._clock()
        return sum(1 for expires, _ in self._records.values() if expires > now)


# KEYS[1] = result key; ARGV[1] = record JSON, ARGV[2] = TTL seconds. Returns 1 if written.
_FINISH_IF_NOT_FINAL = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, record = pcall(cjson.decode, current)
  if ok and record['status'] ~= 'pending' then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

# KEYS[1] = result key. Deletes the record only while it is pending.
_DISCARD_IF_PENDING = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, record = pcall(cjson.decode, current)
if ok and record['status'] == 'pending' then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisResultStore:
    """Records as JSON strings under ``<prefix><inference_id>`` with ``EX ttl_s``."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        ttl_s: int,
        *,
        prefix: str = "lab2prod:result:",
        timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.ttl_s = int(ttl_s)
        self.prefix = prefix
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._finish = self._redis.register_script(_FINISH_IF_NOT_FINAL)
        self._discard = self._redis.register_script(_DISCARD_IF_PENDING)

    def key(self, inference_id: str) -> str:
        return f"{self.prefix}{inference_id}"

    def _unavailable(self, exc: Exception) -> ResultStoreUnavailable:
        return ResultStoreUnavailable(f"Redis result store at {redact_url(self.url)} failed: {exc}")

    async def add_pending(self, inference_id: str) -> None:
        try:
            record = JobResult.pending(inference_id).to_json()
            await self._redis.set(self.key(inference_id), record, ex=self.ttl_s, nx=True)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def discard_pending(self, inference_id: str) -> None:
        try:
            await self._discard(keys=[self.key(inference_id)])
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def finish_many(self, results: Sequence[JobResult]) -> list[bool]:
        if not results:
            return []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for result in results:
                    await self._finish(
                        keys=[self.key(result.inference_id)],
                        args=[result.to_json(), self.ttl_s],
                        client=pipe,
                    )
                written = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return [bool(flag) for flag in written]

    async def get(self, inference_id: str) -> JobResult | None:
        return (await self.get_many([inference_id]))[0]

    async def get_many(self, inference_ids: Sequence[str]) -> list[JobResult | None]:
        if not inference_ids:
            return []
        try:
            raw = await self._redis.mget([self.key(i) for i in inference_ids])
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return [JobResult.from_json(value) if value is not None else None for value in raw]

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()


def redact_url(url: str) -> str:
    """Hide a password in a URL for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
