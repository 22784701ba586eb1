"""redis-kill: /predict under load while its Redis (the cache's second tier) is killed with
SIGKILL and started again; the cache's timeouts and circuit breaker must keep every answer 200."""

from __future__ import annotations

import asyncio
import time

from service.drills.load import at, client, predict_load
from service.drills.runner import Drill, DrillContext


async def run(context: DrillContext) -> None:
    report = context.report
    redis = context.redis()
    server = context.serve(context.registry(), REDIS_URL=redis.url, CACHE_SIZE="0")
    count = round(context.duration_s * context.rate)
    killed_for = context.outage_s(context.duration_s / 3)
    phase = "before"  # each request is counted in the phase it started in

    async def kill() -> None:
        nonlocal phase
        redis.kill()
        phase = "Redis down"
        report.event(f"redis-server killed (SIGKILL), down for {killed_for:.1f} s")

    async def restart() -> None:
        nonlocal phase
        await asyncio.to_thread(redis.start)
        phase = "after"
        report.event("redis-server started again on the same port")

    async with client(server.spec.url) as http:
        report.event(f"load started: {count} /predict at {context.rate:g}/s, half of them "
                     "repeated digits, in-process cache off (CACHE_SIZE=0: Redis is the cache)")
        start = time.monotonic()
        third = context.duration_s / 3
        await asyncio.gather(
            predict_load(http, report, context.rate, count, lambda: phase),
            at(third, start, kill), at(third + killed_for, start, restart),
        )
        report.event("load finished")
        ready = (await http.get("/ready")).json()
    report.figures["cache after restart"] = ready["cache"].get("redis")
    report.check_all_200("predict")


DRILL = Drill(
    name="redis-kill",
    summary="/predict load (distinct and repeated digits), the private Redis killed with "
            "SIGKILL for a third of the run and restarted",
    expectation="0 non-200 answers",
    duration_s=30, rate=25, run=run,
)
