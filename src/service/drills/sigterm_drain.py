"""sigterm-drain: kept-alive clients send /predict in a steady loop while /ready is asked every
50 ms on fresh connections; halfway through, the server gets SIGTERM. A request already written
on a kept-alive connection must get its answer (no connection reset), /ready must say 503
'draining' before the listener closes, and the server must exit 0. The clients ignore /ready (as
a load balancer must not): told `Connection: close` while draining, they reconnect to the same
server, and a connection opened in the instant the listener closes can be reset before the
server ever accepts it; those are counted apart, as the price of ignoring /ready."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from service.drills.load import JSON_HEADERS, client, predict_bodies, timed
from service.drills.runner import Drill, DrillContext

CLIENTS = 8
DRAIN_GRACE_S = 3.0  # DRAIN_GRACE_S of the server under drill
READY_EVERY_S = 0.05
AFTER_SIGTERM_S = 20.0  # how long the clients keep going once it is sent (they stop when refused)
# No response to a request that was written: the connection was reset or closed under it.
RESET = (httpx.RemoteProtocolError, httpx.ReadError)
REFUSED = (httpx.ConnectError, httpx.ConnectTimeout)


async def run(context: DrillContext) -> None:
    report = context.report
    server = context.serve(context.registry(), DRAIN_GRACE_S=str(DRAIN_GRACE_S))
    bodies = predict_bodies(256)
    predict, ready = report.tally("predict (kept alive)"), report.tally("ready")
    resets = 0
    late = report.tally("predict on a connection opened while draining, reset (ignored /ready)")
    said: list[tuple[float, str]] = []  # (when, "503 draining" or "refused" ...)
    term_at = float("inf")
    stop_at = time.monotonic() + context.duration_s / 2 + AFTER_SIGTERM_S

    async def loop(index: int) -> None:
        nonlocal resets
        period = CLIENTS / context.rate
        async with client(server.spec.url, keep_alive=True) as http:
            sent = 0
            new_connection = True  # the next request opens one (first, or after Connection: close)
            while time.monotonic() < stop_at:
                asked = time.monotonic()
                try:
                    response = await http.post("/predict", content=bodies[(index + sent) % 256],
                                               headers=JSON_HEADERS)
                except RESET as exc:
                    if new_connection and asked >= term_at:
                        late.failed(f"reset ({type(exc).__name__})")
                        predict.failed("reset on a connection opened while draining")
                    else:
                        resets += 1
                        predict.failed(f"reset after the request was written "
                                       f"({type(exc).__name__})")
                    new_connection = True
                except REFUSED:
                    predict.failed("refused (listener closed)")
                    return
                except httpx.HTTPError as exc:
                    predict.failed(exc)
                    new_connection = True
                else:
                    predict.answered(response.status_code, time.monotonic() - asked)
                    new_connection = response.headers.get("connection", "").lower() == "close"
                sent += 1
                await asyncio.sleep(max(0.0, asked + period - time.monotonic()))

    async def ask_ready() -> None:
        async with client(server.spec.url, timeout_s=5, keep_alive=False) as http:
            while time.monotonic() < stop_at:
                asked = time.monotonic()
                response = await timed(ready, http.get("/ready"))
                if response is None:  # refused: the listener is closed, or the server gone
                    said.append((asked, "refused"))
                    return
                said.append((asked, f"{response.status_code} {response.json().get('status')}"))
                await asyncio.sleep(max(0.0, asked + READY_EVERY_S - time.monotonic()))

    async def terminate() -> int | None:
        nonlocal term_at
        await asyncio.sleep(context.duration_s / 2)
        term_at = time.monotonic()
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        report.event("SIGTERM sent to lab2prod serve")
        try:
            code = await asyncio.to_thread(server.process.wait, AFTER_SIGTERM_S)
        except Exception:
            return None
        report.event(f"lab2prod serve exited with {code}")
        return code

    report.event(f"{CLIENTS} kept-alive clients send /predict ({context.rate:g}/s in all); "
                 f"/ready asked every {READY_EVERY_S * 1000:g} ms; DRAIN_GRACE_S={DRAIN_GRACE_S:g}")
    *_, code = await asyncio.gather(*(loop(i) for i in range(CLIENTS)), ask_ready(), terminate())
    after = [(when - term_at, what) for when, what in said if when >= term_at]
    draining = next((t for t, what in after if what == "503 draining"), None)
    refused = next((t for t, what in after if what == "refused"), None)
    report.figures.update({
        "/ready after SIGTERM": _runs(after),
        "exit code": code,
    })
    report.check("0 connection resets for requests already written on kept-alive connections",
                 resets == 0, f"{resets} of {predict.sent} requests ({late.sent} more on "
                 "connections opened while draining, by clients ignoring /ready)")
    report.check("/ready said 503 'draining' before the listener closed",
                 draining is not None and (refused is None or draining < refused),
                 f"first 'draining' {_at(draining)} after SIGTERM, listener closed {_at(refused)}")
    report.check("exit status 0", code == 0, f"exit status {code}")


def _at(offset: float | None) -> str:
    return "never" if offset is None else f"{offset:.2f} s"


def _runs(answers: list[tuple[float, str]]) -> list[str]:
    """'503 draining x40 from 0.01 s' for each run of equal answers."""
    runs: list[list] = []
    for offset, what in answers:
        if runs and runs[-1][0] == what:
            runs[-1][1] += 1
        else:
            runs.append([what, 1, offset])
    return [f"{what} x{count} from {offset:.2f} s" for what, count, offset in runs]


DRILL = Drill(
    name="sigterm-drain",
    summary=f"{CLIENTS} kept-alive clients in a steady /predict loop, SIGTERM to the server "
            "halfway through",
    expectation="0 connection resets for requests already written on kept-alive connections; "
                "/ready said 503 'draining' before the listener closed; exit 0",
    duration_s=10, rate=40, run=run,
)

