"""redis-freeze: the private Redis stopped with SIGSTOP (it accepts connections and answers
nothing: a hung server, worse than a dead one) while /predict runs under load and /ready is
asked twice a second; SIGCONT at the end. /ready must still answer, fast, saying 'degraded'."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import httpx

from service.drills.load import at, client, predict_load, timed
from service.drills.runner import Drill, DrillContext

READY_WITHIN_S = 1.0
READY_EVERY_S = 0.5


async def run(context: DrillContext) -> None:
    report = context.report
    redis = context.redis()
    server = context.serve(context.registry(), REDIS_URL=redis.url, CACHE_SIZE="0")
    count = round(context.duration_s * context.rate)
    frozen_for = context.outage_s(context.duration_s / 3)
    ready = report.tally("ready (Redis frozen)")
    phase = "before"  # each /predict is counted in the phase it started in
    said: Counter[str] = Counter()
    thawed = asyncio.Event()

    async def ask_ready(http: httpx.AsyncClient) -> None:
        while not thawed.is_set():
            asked = time.monotonic()
            response = await timed(ready, http.get("/ready", timeout=5))
            if response is not None:
                said[f"{response.status_code} {response.json().get('status')}"] += 1
            await asyncio.sleep(max(0.0, asked + READY_EVERY_S - time.monotonic()))

    async def freeze(http: httpx.AsyncClient) -> None:
        nonlocal phase
        redis.signal(signal.SIGSTOP)
        phase = "Redis frozen"
        report.event(f"redis-server frozen (SIGSTOP) for {frozen_for:.1f} s")
        await asyncio.gather(ask_ready(http), at(frozen_for, time.monotonic(), thaw))

    async def thaw() -> None:
        nonlocal phase
        redis.signal(signal.SIGCONT)
        phase = "after"
        thawed.set()
        report.event("redis-server thawed (SIGCONT)")

    async with client(server.spec.url) as http:
        report.event(f"load started: {count} /predict at {context.rate:g}/s (CACHE_SIZE=0: "
                     "Redis is the cache); /ready asked every 0.5 s while Redis is frozen")
        start = time.monotonic()
        await asyncio.gather(
            predict_load(http, report, context.rate, count, lambda: phase),
            at(context.duration_s / 3, start, lambda: freeze(http)),
        )
        report.event("load finished")
    slowest = ready.as_dict()["max_ms"]
    report.figures["/ready said while frozen"] = dict(said)
    report.check(f"/ready answered within {READY_WITHIN_S:g} s",
                 ready.sent > 0 and not ready.errors
                 and max(ready.latencies_s, default=0.0) <= READY_WITHIN_S,
                 f"{ready.sent} asked, slowest {slowest} ms, errors {dict(ready.errors) or 0}")
    report.check("/ready said 200 'degraded'",
                 ready.sent > 0 and said["200 degraded"] == ready.sent,
                 ", ".join(f"{what} x{n}" for what, n in said.items()) or "no answer")
    report.check_all_200("predict")


DRILL = Drill(
    name="redis-freeze",
    summary="/predict load with the private Redis frozen (SIGSTOP) for a third of the run; "
            "/ready asked every 0.5 s meanwhile",
    expectation=f"/ready answers within {READY_WITHIN_S:g} s, 200 'degraded'; /predict 200",
    duration_s=30, rate=20, run=run,
)
