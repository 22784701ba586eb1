"""The Redis result store, shared by API instances and workers (``service.queue.results``'s
contract: the first final write wins, a pending record is only ever added or removed as such).

Each rule is one Lua script, so it holds against concurrent writers without a transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.queue.jobs import JobResult
from service.queue.results import ResultStoreUnavailable, redact_url

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
