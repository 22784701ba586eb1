"""slow-headers: a slowloris. Many connections (default 240, near the server's 256 open files:
it runs under ``ulimit -n 256``) each send a request line and then one header line a second,
never finishing, reconnecting when closed; meanwhile a normal client sends /predict, each on a
new connection, and, as a well-behaved client does, sends a request again once after a 503's
Retry-After (every slot can hold a connection just accepted when the flood starts). The server
must answer the normal client and close every stalled connection with 408 within
HEADER_TIMEOUT_S (or refuse it with 503 at its connection cap)."""

from __future__ import annotations

import asyncio
import time

import httpx

from service.drills.load import JSON_HEADERS, client, paced, predict_bodies
from service.drills.report import Tally
from service.drills.runner import Drill, DrillContext

OPEN_FILES = 256  # the server's `ulimit -n`
STALLERS = 240
HEADER_TIMEOUT_S = 5.0  # HEADER_TIMEOUT_S of the server under drill
SLACK_S = 1.0  # timers, scheduling and a loaded machine
TRICKLE_S = 1.0
LIMIT_S = HEADER_TIMEOUT_S + SLACK_S
OPEN_AT_END = "open at the drill's end, under the timeout"
REQUEST_START = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


async def stall(port: int, until: float, tally: Tally) -> None:
    """Open a connection, trickle header lines, never end them; when the server closes it,
    record what it answered and after how long, and open another, until ``until``."""
    while time.monotonic() < until:
        opened = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        except (OSError, TimeoutError) as exc:
            tally.failed(f"connect: {type(exc).__name__}")
            await asyncio.sleep(TRICKLE_S)
            continue
        answer = asyncio.ensure_future(reader.readline())
        lines = 0
        try:
            writer.write(REQUEST_START)
            while not answer.done() and time.monotonic() < until:
                await asyncio.wait({answer}, timeout=TRICKLE_S)
                if not answer.done():
                    lines += 1
                    writer.write(f"X-Trickle-{lines}: {lines}\r\n".encode())
                    await writer.drain()
            await asyncio.wait({answer}, timeout=TRICKLE_S)  # a close seen while writing
        except OSError:
            await asyncio.wait({answer}, timeout=TRICKLE_S)
        closed = time.monotonic()
        if not answer.done():  # the drill's end came first: fine while under the timeout
            answer.cancel()
            tally.failed(OPEN_AT_END if closed - opened <= LIMIT_S else "open past the timeout")
        elif answer.exception() is not None:
            tally.failed(f"reset without a response ({type(answer.exception()).__name__})")
        elif not answer.result().startswith(b"HTTP/"):
            tally.failed("closed without a response")
        else:
            tally.answered(int(answer.result().split()[1]), closed - opened)
        writer.close()


async def predict_retrying_once(http: httpx.AsyncClient, body: bytes, normal: Tally,
                                retried: Tally) -> None:
    """POST /predict; a 503 with Retry-After is counted in ``retried`` and sent again once,
    after the wait it asks for; what the client ends with is counted in ``normal``."""
    started = time.perf_counter()
    try:
        response = await http.post("/predict", content=body, headers=JSON_HEADERS)
        if response.status_code == 503 and "retry-after" in response.headers:
            retried.answered(503, time.perf_counter() - started)
            await asyncio.sleep(float(response.headers["retry-after"]))
            started = time.perf_counter()
            response = await http.post("/predict", content=body, headers=JSON_HEADERS)
    except httpx.HTTPError as exc:
        normal.failed(exc)
        return
    normal.answered(response.status_code, time.perf_counter() - started)


async def run(context: DrillContext) -> None:
    report = context.report
    server = context.serve(context.registry(), max_open_files=OPEN_FILES,
                           HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S))
    duration = max(context.duration_s, 2 * HEADER_TIMEOUT_S + 2)
    count = round(duration * context.rate)
    bodies = predict_bodies(count)
    normal, stalled = report.tally("predict (normal client)"), report.tally("stalled connections")
    retried = report.tally("predict answered 503 + Retry-After, sent again")
    report.event(f"server under `ulimit -n {OPEN_FILES}`, HEADER_TIMEOUT_S={HEADER_TIMEOUT_S:g}")
    async with client(server.spec.url, timeout_s=5, keep_alive=False) as http:
        report.event(f"{STALLERS} connections trickle headers (a line a second) for "
                     f"{duration:g} s; a normal client sends {count} /predict at "
                     f"{context.rate:g}/s, each on a new connection")
        until = time.monotonic() + duration
        await asyncio.gather(
            paced(context.rate, count,
                  lambda i: predict_retrying_once(http, bodies[i], normal, retried)),
            *(stall(server.spec.port, until, stalled) for _ in range(STALLERS)),
        )
        report.event("load finished")
    limit = LIMIT_S
    slowest = max(stalled.latencies_s, default=0.0)
    closed_right = stalled.count(408, 503) + stalled.errors[OPEN_AT_END]
    report.check("the normal client saw 0 failures", normal.sent > 0 and normal.not_ok() == 0,
                 f"{normal.not_ok()} of {normal.sent} failed "
                 f"({dict(normal.errors) or 'no errors'})")
    report.check(f"stalled connections closed with 408 (or 503) within {limit:g} s",
                 closed_right == stalled.sent and slowest <= limit,
                 f"{closed_right} of {stalled.sent} closed with 408/503 or open under the "
                 f"timeout at the end; slowest closed after {slowest:.2f} s; others: "
                 f"{ {k: n for k, n in stalled.errors.items() if k != OPEN_AT_END} or 'none'}")


DRILL = Drill(
    name="slow-headers",
    summary=f"{STALLERS} connections trickle headers (slowloris) at a server under `ulimit -n "
            f"{OPEN_FILES}` while a normal client sends /predict",
    expectation=f"normal client 0 failures (a 503 + Retry-After sent again once); stalled "
                f"connections closed with 408 within HEADER_TIMEOUT_S ({HEADER_TIMEOUT_S:g} s, "
                f"+{SLACK_S:g} s slack)",
    duration_s=20, rate=5, run=run,
)
