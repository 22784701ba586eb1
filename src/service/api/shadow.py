"""Shadow traffic: a copy of a served request, answered by another version off the response path.

The client's answer never waits for the shadow and never fails because of it: the copy is a
background task started only after the served answer is known, and it runs on the shadow
version's own low-priority batcher (``ServedVersion.shadow_batcher``: its thread has the highest
nice value, so on a shared CPU it only gets the time client requests leave). Copies are dropped
first under load: while the served version has inputs waiting, once the shadow batcher has
``SHADOW_QUEUE`` waiting, or while ``MAX_SHADOW_IN_FLIGHT`` copies are unanswered; so they are a
sample of the quieter moments (docs/benchmarks/versions.md). Each copy is counted in
``lab2prod_shadow_predictions_total`` by outcome: ``agree`` or ``disagree`` (the shadow's
predicted class against the served one), ``dropped`` or ``failed``.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from service.inference.batcher import BatcherClosed, QueueFull
from service.inference.pool import ModelPool, ServedVersion, VersionUnavailable
from service.monitoring import metrics

log = logging.getLogger(__name__)
MAX_SHADOW_IN_FLIGHT = 64


class Shadow:
    def __init__(self, pool: ModelPool | None) -> None:
        self.pool = pool
        self._tasks: set[asyncio.Task[None]] = set()

    def copy(
        self, alias: str, digits: list[np.ndarray], served: ServedVersion,
        served_classes: list[int],
    ) -> None:
        """Send ``digits`` to ``alias``'s version too, unless that would cost the served path."""
        shadow = self.pool.lookup(alias) if self.pool is not None else None
        if shadow is None or shadow.version == served.version:
            return  # not loaded (yet), or the very version that answered: nothing to compare
        lane = shadow.shadow_batcher
        if served.batcher.depth > 0 or lane.depth + len(digits) > lane.max_queue_size \
                or len(self._tasks) >= MAX_SHADOW_IN_FLIGHT:
            self._count(served, shadow, "dropped", len(digits))
            return
        task = asyncio.get_running_loop().create_task(
            self._compare(digits, served, shadow, served_classes), name="shadow"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compare(
        self, digits: list[np.ndarray], served: ServedVersion, shadow: ServedVersion,
        served_classes: list[int],
    ) -> None:
        try:
            rows = await shadow.shadow_batcher.submit_many(digits)
        except (QueueFull, BatcherClosed, VersionUnavailable):
            self._count(served, shadow, "dropped", len(digits))
            return
        except Exception:  # a shadow's failure is counted and logged, never the client's
            log.exception("shadow version %s failed", shadow.version)
            self._count(served, shadow, "failed", len(digits))
            return
        agree = sum(int(row.argmax()) == served_class
                    for row, served_class in zip(rows, served_classes, strict=True))
        self._count(served, shadow, "agree", agree)
        self._count(served, shadow, "disagree", len(rows) - agree)

    @staticmethod
    def _count(served: ServedVersion, shadow: ServedVersion, outcome: str, count: int = 1) -> None:
        if count:
            metrics.SHADOW.labels(served.version, shadow.version, outcome).inc(count)

    async def close(self) -> None:
        """Let copies in flight finish (they are short), then stop."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
