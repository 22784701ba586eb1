"""rabbitmq-outage: /classify jobs at a steady rate through the API (AMQP_URL) and one
``lab2prod worker``, while the private RabbitMQ node's app is stopped for a while in the middle
(``rabbitmqctl stop_app``, then ``start_app``). Every accepted job's result is then fetched."""

from __future__ import annotations

import asyncio
import time

import httpx

from service.drills.load import JSON_HEADERS, at, client, in_thread, paced, predict_bodies, timed
from service.drills.report import Tally
from service.drills.runner import Drill, DrillContext

QUEUE = "lab2prod.drill"
RESULT_WAIT_S = 90.0  # after the load: how long accepted jobs may take to complete
RECONNECT_WAIT_S = 30.0  # after the broker came back: how long the API may take to accept again


async def run(context: DrillContext) -> None:
    report = context.report
    rabbit = await asyncio.to_thread(context.rabbitmq)
    redis = context.redis()
    registry = context.registry()
    env = {"AMQP_URL": rabbit.url, "REDIS_URL": redis.url, "QUEUE_NAME": QUEUE}
    server = context.serve(registry, **env)
    context.worker(registry, **env)
    report.event(f"ready: RabbitMQ node {rabbit.node} on :{rabbit.port}, redis-server on "
                 f":{redis.port}, lab2prod serve and one lab2prod worker")
    count = round(context.duration_s * context.rate)
    outage = context.outage_s(min(10.0, context.duration_s / 3))
    down_at = max(0.0, (context.duration_s - outage) / 2)
    bodies = predict_bodies(count)
    classify = report.tally("classify")
    probes = report.tally("classify (once the broker is back)")
    accepted: dict[str, float] = {}  # inference id -> when accepted
    refused_without_retry_after = 0
    restarted_at = float("inf")

    async def submit(http: httpx.AsyncClient, index: int, tally: Tally = classify) -> bool:
        """One job; whether it was accepted."""
        nonlocal refused_without_retry_after
        response = await timed(tally, http.post("/classify", content=bodies[index % count],
                                                headers=JSON_HEADERS))
        if response is not None and response.status_code == 202:
            accepted[response.json()["inference_id"]] = time.monotonic()
            return True
        if response is not None and response.status_code == 503:
            refused_without_retry_after += "retry-after" not in response.headers
        return False

    async def outage_then_probe(http: httpx.AsyncClient) -> None:
        """Stop the broker, keep it down for ``outage`` s, start it; then submit one job every
        0.5 s until one is accepted: the API has reconnected (its result: the worker has)."""
        nonlocal restarted_at
        report.event(f"stopping the broker (rabbitmqctl stop_app), down for {outage:g} s")
        await in_thread(rabbit.stop_app)
        report.event("broker stopped")
        await asyncio.sleep(outage)
        report.event("starting the broker (rabbitmqctl start_app)")
        await in_thread(rabbit.start_app)
        restarted_at = time.monotonic()
        report.event("broker started again")
        deadline = restarted_at + RECONNECT_WAIT_S
        index = 0
        while time.monotonic() < deadline:
            index += 1
            if await submit(http, index, probes):
                report.event(f"a job accepted again, {time.monotonic() - restarted_at:.1f} s "
                             "after the broker came back")
                return
            await asyncio.sleep(0.5)

    async with client(server.spec.url) as http:
        report.event(f"load started: {count} POST /classify at {context.rate:g}/s")
        start = time.monotonic()
        await asyncio.gather(paced(context.rate, count, lambda i: submit(http, i)),
                             at(down_at, start, lambda: outage_then_probe(http)))
        report.event(f"load finished; fetching the {len(accepted)} accepted jobs' results")
        outcomes = await _results(http, list(accepted))
        report.event("results fetched")
        broker_check = (await http.get("/ready")).json()["checks"].get("broker")
    done = sum(status == "done" for status in outcomes.values())
    lost = [job for job, status in outcomes.items() if status not in ("done", "failed")]
    after_restart = sum(when > restarted_at for when in accepted.values())
    report.figures.update({
        "accepted": len(accepted), "completed": done,
        "failed": sum(status == "failed" for status in outcomes.values()), "lost": len(lost),
        "accepted after the broker came back": after_restart,
        "refused without Retry-After": refused_without_retry_after,
        "API's broker check at the end": broker_check,
    })
    sent = classify.sent + probes.sent
    refused = classify.count(503) + probes.count(503)
    others = sent - len(accepted) - refused
    report.check("every job accepted (202) or refused (503)", others == 0,
                 f"{len(accepted)} accepted, {refused} refused, {others} other "
                 f"({dict(classify.errors + probes.errors) or 'no errors'})")
    report.check("every refusal carries Retry-After", refused_without_retry_after == 0,
                 f"{refused_without_retry_after} of {refused} without")
    report.check("0 accepted jobs lost", not lost and done == len(accepted),
                 f"{done} of {len(accepted)} completed, {len(lost)} lost")
    report.check("the API reconnected on its own", after_restart > 0 and broker_check == "ok",
                 f"{after_restart} jobs accepted after the broker came back; broker check "
                 f"{broker_check!r}")
    report.check("the worker reconnected on its own",
                 after_restart > 0 and all(outcomes.get(job) == "done"
                                           for job, when in accepted.items()
                                           if when > restarted_at),
                 "the jobs accepted after the broker came back were all completed"
                 if after_restart else "no job to show it")


async def _results(http: httpx.AsyncClient, jobs: list[str]) -> dict[str, str]:
    """Each job's last status ('done', 'failed', 'pending' or 'unknown'), polled until every
    one is final or RESULT_WAIT_S has passed."""
    outcomes = dict.fromkeys(jobs, "pending")
    deadline = time.monotonic() + RESULT_WAIT_S
    limit = asyncio.Semaphore(16)

    async def poll(job: str) -> None:
        async with limit:
            try:
                response = await http.get(f"/result/{job}")
            except httpx.HTTPError:
                return
        if response.status_code == 404:
            outcomes[job] = "unknown"
        elif response.status_code in (200, 202):
            outcomes[job] = response.json()["status"]

    while time.monotonic() < deadline:
        waiting = [job for job, status in outcomes.items() if status not in ("done", "failed")]
        if not waiting:
            break
        await asyncio.gather(*(poll(job) for job in waiting))
        await asyncio.sleep(0.5)
    return outcomes


DRILL = Drill(
    name="rabbitmq-outage",
    summary="POST /classify at a steady rate (default 600 at 20/s) to the API and one worker, "
            "the private RabbitMQ node's app stopped for 10 s in the middle",
    expectation="every job accepted (202) and later completed, or refused with 503 + "
                "Retry-After; 0 accepted jobs lost; API and worker reconnect on their own",
    duration_s=30, rate=20, run=run,
)
