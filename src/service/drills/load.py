"""Bounded load for drills: requests started at a fixed rate whatever earlier ones are doing
(open loop, so a stall shows as latency and errors, not as fewer requests), each one timed and
counted into a Tally; and the request bodies (real digits, distinct and repeated)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx

from service.bench.bodies import distinct_digits, json_body
from service.drills.report import DrillReport, Tally

JSON_HEADERS = {"content-type": "application/json"}
REPEATED = 8  # digits sent again and again: answered from the cache once seen


def client(base_url: str, timeout_s: float = 10.0, keep_alive: bool = True) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=200,
                          max_keepalive_connections=100 if keep_alive else 0)
    return httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits)


def predict_bodies(count: int, seed: int = 0) -> list[bytes]:
    """``count`` /predict bodies, alternating a distinct digit (a cache miss) and one of
    REPEATED digits (a hit once cached)."""
    digits = distinct_digits(count + REPEATED, seed)
    return [json_body(digits[REPEATED + i] if i % 2 else digits[i % REPEATED])
            for i in range(count)]


async def timed(tally: Tally, call: Awaitable[httpx.Response]) -> httpx.Response | None:
    """Await the call; count its status and latency, or its error (then None)."""
    started = time.perf_counter()
    try:
        response = await call
    except httpx.HTTPError as exc:
        tally.failed(exc)
        return None
    tally.answered(response.status_code, time.perf_counter() - started)
    return response


async def paced(rate: float, count: int, send: Callable[[int], Awaitable[object]]) -> None:
    """``send(i)`` for i in 0..count-1, call i started i / rate seconds in; returns when all
    have finished."""
    start = time.monotonic()
    tasks = []
    for index in range(count):
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(index)))
    await asyncio.gather(*tasks)


async def predict_load(http: httpx.AsyncClient, report: DrillReport, rate: float, count: int,
                       phase: Callable[[], str]) -> None:
    """``count`` /predict (``predict_bodies``) at ``rate``, each counted in the report's tally
    'predict (<phase>)', the phase the drill is in when the request starts."""
    bodies = predict_bodies(count)
    await paced(rate, count, lambda i: timed(
        report.tally(f"predict ({phase()})"),
        http.post("/predict", content=bodies[i], headers=JSON_HEADERS)))


async def at(offset_s: float, start: float, action: Callable[[], Awaitable[object]]) -> None:
    """Run ``action`` ``offset_s`` seconds after the monotonic time ``start``."""
    await asyncio.sleep(max(0.0, start + offset_s - time.monotonic()))
    await action()


async def in_thread(function: Callable[[], object]) -> None:
    """A blocking call (rabbitmqctl, a registry write) off the event loop driving the load."""
    await asyncio.to_thread(function)
