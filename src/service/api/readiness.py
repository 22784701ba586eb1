"""The dependency checks behind GET /ready: bounded, concurrent, and free while a dependency is
known to be down.

A readiness probe has a short timeout of its own (1 s is common). A check that waits out a
frozen Redis's socket timeout would fail the probe of every replica at once while /predict still
answers from the model; so each check gets ``ready_check_timeout_s``, all run at once, and each
sits behind a circuit breaker (the cache's settings): after ``breaker_failures`` slow or failed
checks in a row it is not called for ``breaker_reset_s`` and /ready repeats its last answer.

A check that outlives its caller is not cancelled: it keeps running (one at a time per check)
and the next /ready takes its answer, so a dependency that is merely slow to connect (a first
RabbitMQ connection on a loaded machine) is still seen to be up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from service.inference.cache import CircuitBreaker

Check = Callable[[], Awaitable[str]]  # 'ok', 'disabled', or what is wrong
HEALTHY = frozenset({"ok", "disabled"})


@dataclass
class _Probe:
    breaker: CircuitBreaker
    last: str = "not checked yet"
    task: asyncio.Task[str] | None = field(default=None, repr=False)


class ReadinessChecks:
    """``await run(checks)``: name -> answer of each check, in at most ``timeout_s``."""

    def __init__(self, timeout_s: float, breaker_failures: int, breaker_reset_s: float) -> None:
        self.timeout_s = timeout_s
        self.breaker_failures = breaker_failures
        self.breaker_reset_s = breaker_reset_s
        self._probes: dict[str, _Probe] = {}

    async def run(self, checks: Mapping[str, Check]) -> dict[str, str]:
        answers = await asyncio.gather(*(self._run(name, check) for name, check in checks.items()))
        return dict(zip(checks, answers, strict=True))

    async def bounded(self, check: Check, on_timeout: str) -> str:
        """One check with its own breaker (the cache's): only the time bound is added."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await check()
        except TimeoutError:
            return on_timeout

    async def _run(self, name: str, check: Check) -> str:
        probe = self._probes.get(name)
        if probe is None:
            breaker = CircuitBreaker(self.breaker_failures, self.breaker_reset_s)
            probe = self._probes[name] = _Probe(breaker)
        task = probe.task
        if task is not None and task.done():  # finished after its caller stopped waiting
            probe.task = None
            return self._record(probe, task.result())
        if task is None:
            if not probe.breaker.allow():
                return self._skipped(probe)
            task = probe.task = asyncio.create_task(_answer(check), name=f"ready-check-{name}")
        elif probe.breaker.state == "open":
            return self._skipped(probe)
        done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
        if task not in done:
            return self._record(probe, f"no answer within {self.timeout_s:g} s")
        if probe.task is task:
            probe.task = None
        return self._record(probe, task.result())

    def _record(self, probe: _Probe, answer: str) -> str:
        if answer in HEALTHY:
            probe.breaker.success()
        else:
            probe.breaker.failure()
        probe.last = answer
        return answer

    def _skipped(self, probe: _Probe) -> str:
        return (f"{probe.last} (not checked again for up to {self.breaker_reset_s:g} s after "
                f"{self.breaker_failures} failures in a row)")

    async def close(self) -> None:
        """Cancel the checks still running (at shutdown, before their clients close)."""
        tasks = [probe.task for probe in self._probes.values() if probe.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _answer(check: Check) -> str:
    try:
        return await check()
    except Exception as exc:  # a check that raises is a failed check, not a failed /ready
        return f"failed: {type(exc).__name__}: {exc}"
