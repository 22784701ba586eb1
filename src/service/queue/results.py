"""Result stores: the interface, and the in-memory store (one process).

Both keep every record for ``ttl_s`` seconds and share one rule that makes redelivery safe:
the first final write (``done`` or ``failed``) wins; a later final write for the same id is
refused and reported, so a job processed twice still has exactly one final result. A
``pending`` record is written only if the id has no record yet, and ``discard_pending`` removes
a record only while it is still pending (a job the broker refused must leave no trace).

The Redis store (shared by API instances and workers) lives in ``service.queue.redis_results``,
imported only where ``REDIS_URL`` is set: the embedded default does not load redis-py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

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


def redact_url(url: str) -> str:
    """Hide a password in a URL for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
