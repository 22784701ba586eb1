"""Drift monitoring while serving: each loaded version with a drift reference gets a
``VersionDrift``, which every prediction it computes passes through (``ServedVersion.predict``,
on the inference thread, for the API and the workers alike; cache hits compute nothing and
are not counted).

The request path only keeps the batch it already has (the uint8 digits and the probability
rows, no copy) in a bounded buffer, under a lock; nothing is computed there (the cost per
digit: docs/drift.md). ``DriftMonitor.run``, a task of the API and of each worker, drains the
buffers every ``FLUSH_S``: the signals of everything buffered are computed ``DRAIN_CHUNK``
digits a turn of the event loop, each turn about as long as one request, added to the
version's in-process window, and pushed to its shared window in Redis (``monitoring.window``).
In one piece, in a worker thread, it took a server's one core for a few milliseconds once a
second, with every request in flight waiting (docs/drift.md). Every ``REFRESH_S`` each window
is compared with its reference (``monitoring.drift``) and the ``lab2prod_drift_*`` gauges are
set, once the window is full; GET /drift does the same for one version on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from service.ml.preprocess import IMAGE_SIDE
from service.monitoring import metrics
from service.monitoring.drift import RULE, compare
from service.monitoring.reference import DriftReference
from service.monitoring.signals import SIGNAL_NAMES, digit_signals
from service.monitoring.window import RedisWindows, RingWindow
from service.settings import Settings

log = logging.getLogger(__name__)
FLUSH_S = 1.0  # how stale a shared window may be
DRAIN_CHUNK = 128  # digits whose signals are computed per turn of the event loop
REFRESH_S = 15.0  # how often the gauges are recomputed: about one Prometheus scrape interval


class VersionDrift:
    """One version's buffer of inputs not yet drained (filled by the inference thread) and its
    in-process window (read and written on the event loop only)."""

    def __init__(self, version: str, reference: DriftReference, size: int) -> None:
        self.version = version
        self.reference = reference
        self.window = RingWindow(size, len(SIGNAL_NAMES))
        self._pending: deque[tuple[np.ndarray, np.ndarray]] = deque()
        self._pending_inputs = 0
        self._pending_lock = threading.Lock()  # the inference thread against the drain

    def observe(self, digits: np.ndarray, probabilities: np.ndarray) -> None:
        """Inference thread: keep this batch for the next drain. More than a window's worth
        waiting drops the oldest batches: they would leave the window anyway."""
        with self._pending_lock:
            self._pending.append((digits, probabilities))
            self._pending_inputs += len(digits)
            while self._pending_inputs - len(self._pending[0][0]) >= self.window.size:
                self._pending_inputs -= len(self._pending.popleft()[0])

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """The buffered digits and probability rows, oldest first; the buffer starts again."""
        with self._pending_lock:
            batches, self._pending, self._pending_inputs = self._pending, deque(), 0
        if not batches:
            return (np.empty((0, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8),
                    np.empty((0, 0), dtype=np.float32))
        return (np.concatenate([digits for digits, _ in batches]),
                np.concatenate([probabilities for _, probabilities in batches]))

    def absorb(self, digits: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """The signal rows of these inputs, now also in the in-process window."""
        rows = digit_signals(digits, probabilities)
        self.window.extend(rows)
        return rows

    def rows(self) -> np.ndarray:
        return self.window.rows()


class DriftMonitor:
    """Every tracked version's drift, in one process (the pool owns one)."""

    def __init__(self, size: int, shared: RedisWindows | None = None) -> None:
        self.size = size
        self.shared = shared
        self._versions: dict[str, VersionDrift] = {}
        self._stopping = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> DriftMonitor:
        shared = RedisWindows(
            settings.redis_url, namespace=f"lab2prod:drift:{settings.model_name}",
            size=settings.drift_window, width=len(SIGNAL_NAMES),
            timeout_s=settings.redis_timeout_s, breaker_failures=settings.breaker_failures,
            breaker_reset_s=settings.breaker_reset_s,
        ) if settings.redis_url else None
        return cls(settings.drift_window, shared)

    def track(self, version: str, reference: DriftReference | None) -> VersionDrift | None:
        """Start watching a loaded version; None (nothing to watch) without a reference."""
        if reference is None:
            return None
        tracked = self._versions[version] = VersionDrift(version, reference, self.size)
        return tracked

    def untrack(self, version: str) -> None:
        """The version was unloaded: forget it, and its gauges."""
        self._versions.pop(version, None)
        with contextlib.suppress(KeyError):
            metrics.DRIFT_ALERT.remove(version)
        for signal in SIGNAL_NAMES:
            with contextlib.suppress(KeyError):
                metrics.DRIFT_PSI.remove(version, signal)

    async def flush(self, tracked: VersionDrift) -> None:
        """What ``tracked`` buffered, into its windows, a ``DRAIN_CHUNK`` a turn of the loop."""
        digits, probabilities = tracked.take()
        pieces = []
        for start in range(0, len(digits), DRAIN_CHUNK):
            if start:
                await asyncio.sleep(0)  # the requests that became ready meanwhile go first
            end = start + DRAIN_CHUNK
            pieces.append(tracked.absorb(digits[start:end], probabilities[start:end]))
        if pieces and self.shared is not None:  # not taken: the local window has them
            await self.shared.push(tracked.version, np.concatenate(pieces))

    async def report(self, version: str) -> dict[str, Any]:
        """GET /drift's answer for a loaded version: its window against its reference now."""
        tracked = self._versions.get(version)
        if tracked is None:
            return {"model_version": version, "verdict": "no reference", "alert": None,
                    "window": {"size": self.size, "filled": 0, "shared": False},
                    "reference": None, "rule": RULE, "signals": {}}
        await self.flush(tracked)
        rows = await self.shared.read(version) if self.shared is not None else None
        shared = rows is not None
        if rows is None:
            rows = tracked.rows()  # a copy of a window: less than a thread's hand-off
        report = await asyncio.to_thread(compare, tracked.reference, rows, self.size)
        if report.full:
            for signal in report.signals:
                metrics.DRIFT_PSI.labels(version, signal.name).set(signal.psi)
            metrics.DRIFT_ALERT.labels(version).set(int(bool(report.alert)))
        return {
            "model_version": version, "verdict": report.verdict, "alert": report.alert,
            "window": {"size": self.size, "filled": report.filled, "shared": shared},
            "reference": {"digits": tracked.reference.digits}, "rule": RULE,
            "signals": {signal.name: signal.as_dict() for signal in report.signals},
        }

    def start(self) -> None:
        """Run the drain-and-refresh loop as a task; ``close`` stops it."""
        self._stopping = asyncio.Event()  # a pool may serve another app's lifespan after close
        self._loop = asyncio.create_task(self.run(), name="drift")

    async def run(self) -> None:
        """Drain every FLUSH_S and refresh the gauges every REFRESH_S, until ``close``."""
        refresh_at = time.monotonic() + REFRESH_S
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), FLUSH_S)
            if self._stopping.is_set():
                return
            refresh = time.monotonic() >= refresh_at
            if refresh:
                refresh_at = time.monotonic() + REFRESH_S
            for version, tracked in list(self._versions.items()):
                try:
                    await (self.report(version) if refresh else self.flush(tracked))
                except Exception:  # the monitor never stops, nor stops anything else
                    log.exception("drift monitoring failed for %s", version)

    async def close(self) -> None:
        """Stop the loop after the pass it is in, push what is still buffered (best effort),
        then let go of Redis. The loop is not cancelled: a drain cancelled between taking the
        buffer and pushing it would lose those inputs from the shared window."""
        self._stopping.set()
        if self._loop is not None:
            await asyncio.wait({self._loop})
        for tracked in list(self._versions.values()):
            with contextlib.suppress(Exception):
                await self.flush(tracked)
        if self.shared is not None:
            await self.shared.close()
