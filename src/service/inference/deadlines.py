"""Deadlines for futures with one timer per event loop, set for the earliest one.

``asyncio.timeout`` around each request's wait costs a Timeout object, a timer handle pushed
onto and later cancelled from the loop's heap, and the task's cancel bookkeeping: about 12 µs a
request on the slower bench machine, a few percent of a whole /predict
(docs/benchmarks/overhead.md). Here a watched future costs an append to a deque ordered by
deadline; futures that are done leave it from the front as later ones arrive (they are answered
about in the order they were submitted), and the one timer fails what is still waiting at its
deadline with ``exception_type``.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from typing import Any


class Deadlines:
    """The deadlines of futures of one event loop (use it on that loop's thread only)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, exception_type: type[Exception],
                 message: str) -> None:
        self._loop = loop
        self._exception_type = exception_type
        self._message = message  # formatted with the timeout: "... within {timeout:g} s"
        self._waiting: deque[tuple[float, asyncio.Future[Any], float]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def __len__(self) -> int:
        return len(self._waiting)

    def watch(self, future: asyncio.Future[Any], timeout_s: float) -> None:
        """Fail ``future`` with the exception if it is not done ``timeout_s`` from now."""
        waiting = self._waiting
        while waiting and waiting[0][1].done():  # answered since: no longer watched
            waiting.popleft()
        deadline = self._loop.time() + timeout_s
        entry = (deadline, future, timeout_s)
        if not waiting or deadline >= waiting[-1][0]:
            waiting.append(entry)  # the usual case: every request has the same timeout
        else:
            waiting.insert(bisect.bisect_right([item[0] for item in waiting], deadline), entry)
        if self._timer is None or deadline < self._timer_at:
            self._arm(waiting[0][0])

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        waiting, now = self._waiting, self._loop.time()
        while waiting and (waiting[0][0] <= now or waiting[0][1].done()):
            _, future, timeout_s = waiting.popleft()
            if not future.done():
                future.set_exception(self._exception_type(self._message.format(timeout=timeout_s)))
        if waiting:
            self._arm(waiting[0][0])
