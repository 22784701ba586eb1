"""version-repair: the production alias moved to a version whose model file is broken (v2's
checkpoint overwritten in the drill's folder registry). The running server must keep serving v1
and say why on /ready; once v2 is repaired and the alias moved away and back, the same server
process must serve v2, with /predict answering 200 throughout."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx

from service.drills.load import JSON_HEADERS, client, predict_bodies, timed
from service.drills.runner import Drill, DrillContext
from service.registry import open_registry

POLL_S = 0.5  # MODEL_POLL_INTERVAL_S of the server under drill
SERVED_WITHIN_S = 10.0  # after the alias came back: a poll, a load and a warm-up, with room
WAIT_S = 60.0


async def run(context: DrillContext) -> None:
    report = context.report
    path = context.registry()
    registry = open_registry(path, context.config.model_name)
    server = context.serve(path, MODEL_POLL_INTERVAL_S=str(POLL_S))
    pid = server.process.pid if server.process else None
    predict = report.tally("predict")
    versions: Counter[str] = Counter()
    first_seen: dict[str, float] = {}
    stop = asyncio.Event()
    bodies = predict_bodies(256)

    async def one(http: httpx.AsyncClient, index: int) -> None:
        response = await timed(predict, http.post("/predict", content=bodies[index % 256],
                                                  headers=JSON_HEADERS))
        if response is not None and response.status_code == 200:
            version = response.json()["model_version"]
            versions[version] += 1
            first_seen.setdefault(version, time.monotonic())

    async def load(http: httpx.AsyncClient) -> None:
        tasks, index, start = [], 0, time.monotonic()
        while not stop.is_set():
            tasks.append(asyncio.create_task(one(http, index)))
            index += 1
            await asyncio.sleep(max(0.0, start + index / context.rate - time.monotonic()))
        await asyncio.gather(*tasks)

    async with client(server.spec.url) as http:
        loading = asyncio.create_task(load(http))
        report.event(f"load started: /predict at {context.rate:g}/s, served by v1")
        await asyncio.sleep(1)
        broken = await asyncio.to_thread(registry.publish, context.config.checkpoint,
                                         {"source": "lab2prod drill"}, aliases=())
        model_file = registry.checkpoint_path(broken)
        good = model_file.read_bytes()
        model_file.write_bytes(b"not a model " * 1000)
        await asyncio.to_thread(registry.promote, broken)
        report.event(f"{broken} published with a broken model file; production moved to it")
        ready = await _until(http, lambda body: bool(body["model"].get("alias_failures")))
        report.event(f"/ready said {ready.get('status')!r}: {ready['model'].get('alias_failures')}")
        report.figures["/ready while broken"] = {"status": ready.get("status"),
                                                "alias_failures": ready["model"].get(
                                                    "alias_failures")}
        served_while_broken = dict(versions)
        model_file.write_bytes(good)
        report.event(f"{broken}'s model file repaired")
        await asyncio.to_thread(registry.promote, "v1")
        await asyncio.sleep(3 * POLL_S)  # the server sees the alias away from the broken one
        away = (await http.get("/ready")).json()
        report.event(f"production moved away to v1; /ready said {away.get('status')!r}")
        report.figures["/ready with production moved back to v1"] = away.get("status")
        await asyncio.to_thread(registry.promote, broken)
        back = time.monotonic()
        report.event(f"production moved back to {broken}")
        deadline = back + WAIT_S
        while broken not in first_seen and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if broken in first_seen:
            report.event(f"first answer from {broken}")
        await asyncio.sleep(1)
        stop.set()
        await loading
        final = (await http.get("/ready")).json()
        report.event("load finished")
    took = first_seen[broken] - back if broken in first_seen else None
    report.figures.update({
        "answers by version": dict(versions),
        f"{broken} served after moving back (s)": None if took is None else round(took, 2),
        "/ready at the end": final.get("status"),
    })
    same_process = server.process is not None and server.process.pid == pid \
        and server.process.poll() is None
    report.check("the broken version was not served", broken not in served_while_broken,
                 f"answers while broken: {served_while_broken}")
    report.check("/ready said 200 'degraded' with the reason",
                 ready.get("status") == "degraded" and broken in str(
                     ready["model"].get("alias_failures")),
                 f"{ready.get('status')!r}, alias_failures {ready['model'].get('alias_failures')}")
    report.check(f"served after repair within {SERVED_WITHIN_S:g} s, no restart",
                 took is not None and took <= SERVED_WITHIN_S and same_process,
                 f"{broken} first answered {took if took is None else round(took, 2)} s after "
                 f"the alias came back; same server process: {same_process}")
    report.check_all_200("predict")


async def _until(http: httpx.AsyncClient, condition: Any) -> dict[str, Any]:
    """/ready's body once ``condition(body)`` holds (or the last one after WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        body: dict[str, Any] = (await http.get("/ready")).json()
        if condition(body) or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.2)


DRILL = Drill(
    name="version-repair",
    summary="production moved to a version with a broken model file, the file repaired and "
            "the alias moved away and back, the server running throughout "
            f"(MODEL_POLL_INTERVAL_S={POLL_S:g})",
    expectation="the old version served meanwhile, /ready 200 'degraded' with the reason; "
                f"the repaired version served within {SERVED_WITHIN_S:g} s, no restart; "
                "/predict 200 throughout",
    duration_s=20, rate=20, run=run,
)
