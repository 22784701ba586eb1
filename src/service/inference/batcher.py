"""A micro-batcher without an idle timer: concurrent requests share one forward pass.

One dedicated inference thread takes whatever is queued (up to ``max_batch_size``), runs the
handler once on the whole list and hands every result back to its request's future with a single
``loop.call_soon_threadsafe`` per batch. A lone request on an idle model runs at once; requests
that arrive while a batch is running form the next batch, so batching costs nothing at low load
and fills up by itself under load. ``max_wait_ms`` > 0 adds an optional wait to fill a batch.
``threads`` > 1 runs that many such threads on the one queue (image decoding: Pillow releases the
GIL while it decodes, and one huge image then does not hold up the rest).

Submissions made during one event-loop iteration reach the inference thread together, at the
end of that iteration (``loop.call_soon``, not a timer): the thread then wakes once for all of
them instead of once per request, and the event loop keeps the GIL while it reads requests.
Measured on one core at c=64 (docs/benchmarks): +30% throughput, p99 175 -> 70 ms.

The queue is bounded: past ``max_queue_size`` waiting items, ``submit`` raises ``QueueFull``
(the API answers 503 with Retry-After) instead of letting latency grow without bound. A handler
error fails exactly the requests of that batch; the thread carries on, so no request hangs. A
submission given ``timeout_s`` fails with ``SubmissionTimeout`` when it is not answered in time
(one timer per event loop for all of them, ``inference.deadlines``); its item is skipped if its
batch has not started.

Usage::

    batcher = MicroBatcher(lambda xs: [x * x for x in xs], max_batch_size=32)
    batcher.start()
    assert await batcher.submit(3) == 9
    batcher.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from service.inference.deadlines import Deadlines

In = TypeVar("In")
Out = TypeVar("Out")

logger = logging.getLogger(__name__)
_STOP = object()


class QueueFull(RuntimeError):
    """Too many requests are waiting; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BatcherClosed(RuntimeError):
    """The batcher is shut down (or its thread is gone) and takes no more work."""


class SubmissionTimeout(RuntimeError):
    """A submission was not answered within its ``timeout_s``."""


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        handler: Callable[[list[In]], Sequence[Out]],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 0.0,
        max_queue_size: int = 1024,
        name: str = "inference",
        on_batch: Callable[[int, float], None] | None = None,
        niceness: int = 0,
        threads: int = 1,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be at least 1, got {max_queue_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 (no timer) or positive, got {max_wait_ms}")
        self.handler = handler
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.name = name
        self.on_batch = on_batch
        self.niceness = niceness  # > 0: the inference thread yields the CPU to others (Linux)
        self.threads = threads
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._in_flight = [0] * threads  # items in each thread's running batch (metrics only)
        self._exited = 0  # threads that have stopped; the last one fails what is left
        self._exit_lock = threading.Lock()
        # this loop iteration's submissions, per event loop, handed over by _flush
        self._pending: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        self._deadlines: dict[asyncio.AbstractEventLoop, Deadlines] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> MicroBatcher[In, Out]:
        if not self._threads:
            for slot in range(self.threads):
                suffix = f"-{slot}" if self.threads > 1 else ""
                self._threads.append(threading.Thread(
                    target=self._run, args=(slot,), name=f"{self.name}-batcher{suffix}",
                    daemon=True,
                ))
            for thread in self._threads:
                thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking work, finish what is queued, then stop the thread."""
        if self._closed:
            return
        for loop in list(self._pending):
            self._flush(loop)  # submitted before close: finished, like the rest of the queue
        self._closed = True
        for _ in range(self.threads):
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def depth(self) -> int:
        """Items waiting for a batch (not counting the batch that is running)."""
        return self._queue.qsize() + sum(map(len, self._pending.values()))

    @property
    def in_flight(self) -> int:
        """Items in the batches running now."""
        return sum(self._in_flight)

    @property
    def running(self) -> bool:
        return self._alive() and not self._closed

    def _alive(self) -> bool:
        # map, not a generator: every submission asks (hot path; half the generator's cost)
        return any(map(threading.Thread.is_alive, self._threads))

    # --- submitting (event-loop side) ---------------------------------------------------------

    def _check_room(self, count: int) -> None:
        if self._closed or not self._alive():
            raise BatcherClosed(f"the {self.name} batcher is not running")
        depth = self.depth
        if depth + count > self.max_queue_size:
            raise QueueFull(
                f"the {self.name} queue is full ({depth} waiting, at most {self.max_queue_size}); "
                "retry shortly"
            )

    async def submit(self, item: In, timeout_s: float | None = None) -> Out:
        """Queue one input and wait for its output (or the handler's exception, or
        ``SubmissionTimeout`` after ``timeout_s``)."""
        self._check_room(1)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        self._pending_on(loop).append((item, future, loop))
        if timeout_s is not None:
            self._deadlines_on(loop).watch(future, timeout_s)
        return await future

    def _deadlines_on(self, loop: asyncio.AbstractEventLoop) -> Deadlines:
        deadlines = self._deadlines.get(loop)
        if deadlines is None:
            deadlines = self._deadlines[loop] = Deadlines(
                loop, SubmissionTimeout, f"the {self.name} batcher did not answer within "
                "{timeout:g} s")
        return deadlines

    def _pending_on(self, loop: asyncio.AbstractEventLoop) -> list[Any]:
        """This loop iteration's submissions, handed over by ``_flush`` at its end."""
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._flush, loop)
        return pending

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand this iteration's submissions to the inference thread (on the loop's thread)."""
        pending = self._pending.pop(loop, None) or []
        if self._closed:  # close() already flushed; these came after it
            for _, future, _ in pending:
                if not future.done():
                    future.set_exception(BatcherClosed(f"the {self.name} batcher shut down"))
            return
        put = self._queue.put
        for entry in pending:
            put(entry)

    async def submit_many(self, items: Sequence[In], timeout_s: float | None = None) -> list[Out]:
        """Queue several inputs at once (all or none) and wait for all their outputs, in order
        (``SubmissionTimeout`` when they are not all answered within ``timeout_s``)."""
        self._check_room(len(items))
        loop = asyncio.get_running_loop()
        pending = self._pending_on(loop)  # handed over with the iteration's other submissions
        deadlines = None if timeout_s is None else self._deadlines_on(loop)
        futures: list[asyncio.Future[Out]] = []
        for item in items:
            future: asyncio.Future[Out] = loop.create_future()
            futures.append(future)
            pending.append((item, future, loop))
            if deadlines is not None:
                deadlines.watch(future, timeout_s)  # type: ignore[arg-type]
        try:
            if len(futures) == 1:  # the usual v2 request: one digit, without gather's machinery
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    # --- the inference thread -----------------------------------------------------------------

    def _run(self, slot: int) -> None:
        if self.niceness:
            _lower_thread_priority(self.niceness)
        take = self._queue.get
        take_now = self._queue.get_nowait
        stopping = False
        while not stopping:
            first = take()
            if first is _STOP:
                break
            batch = [first]
            try:
                while len(batch) < self.max_batch_size:
                    entry = take_now()
                    if entry is _STOP:
                        stopping = True
                        break
                    batch.append(entry)
            except queue.Empty:
                pass
            if self.max_wait_s and not stopping and len(batch) < self.max_batch_size:
                stopping = self._fill(batch)
            self._process(batch, slot)
        with self._exit_lock:  # each thread takes one _STOP: the last out fails what is left
            self._exited += 1
            last = self._exited == self.threads
        if last:
            self._fail_leftovers()

    def _fill(self, batch: list[Any]) -> bool:
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                entry = self._queue.get(timeout=remaining)
            except queue.Empty:
                return False
            if entry is _STOP:
                return True
            batch.append(entry)
        return False

    def _process(self, batch: list[Any], slot: int) -> None:
        live = [entry for entry in batch if not entry[1].done()]  # skip cancelled requests
        if not live:
            return
        self._in_flight[slot] = len(live)
        started = time.perf_counter()
        outputs: Sequence[Any] | None = None
        error: BaseException | None = None
        try:
            outputs = self.handler([entry[0] for entry in live])
            if len(outputs) != len(live):
                raise RuntimeError(
                    f"batch handler returned {len(outputs)} outputs for {len(live)} inputs"
                )
        except BaseException as exc:  # delivered to the batch's requests, never kills the thread
            error = exc
        finally:
            self._in_flight[slot] = 0
        if self.on_batch is not None:
            try:
                self.on_batch(len(live), time.perf_counter() - started)
            except Exception:  # metrics must never break inference
                logger.exception("on_batch callback failed")
        loop = live[0][2]
        if all(entry[2] is loop for entry in live):
            self._deliver(loop, [entry[1] for entry in live], outputs, error)
            return
        for each_loop in {id(entry[2]): entry[2] for entry in live}.values():
            picked = [i for i, entry in enumerate(live) if entry[2] is each_loop]
            self._deliver(
                each_loop,
                [live[i][1] for i in picked],
                None if outputs is None else [outputs[i] for i in picked],
                error,
            )

    @staticmethod
    def _deliver(
        loop: asyncio.AbstractEventLoop,
        futures: list[asyncio.Future[Any]],
        outputs: Sequence[Any] | None,
        error: BaseException | None,
    ) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_resolve, futures, outputs, error)

    def _fail_leftovers(self) -> None:
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return
            if entry is not _STOP:
                self._deliver(
                    entry[2], [entry[1]], None, BatcherClosed(f"the {self.name} batcher shut down")
                )


def _lower_thread_priority(niceness: int) -> None:
    """Give this thread (at least) this nice value: Linux schedules threads one by one, so only
    this inference thread yields the CPU to the others (lowering priority needs no privilege)."""
    try:
        thread = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, max(niceness, current))
    except (AttributeError, OSError) as exc:  # not Linux: the thread runs at normal priority
        logger.info("could not lower the %s thread's priority: %s", threading.current_thread().name,
                    exc)


def _resolve(
    futures: list[asyncio.Future[Any]], outputs: Sequence[Any] | None, error: BaseException | None
) -> None:
    if error is not None:
        for future in futures:
            if not future.done():
                future.set_exception(error)
        return
    assert outputs is not None
    for future, output in zip(futures, outputs, strict=True):
        if not future.done():
            future.set_result(output)
