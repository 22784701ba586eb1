"""big-header: one connection streams a single endless header (up to 64 MiB, 64 KiB at a time)
at the server, which must refuse it with 431 without buffering it: the server's resident memory
(all its processes) is sampled before, during and after."""

from __future__ import annotations

import asyncio
import contextlib
import time

from service.drills.runner import Drill, DrillContext

HEADER_MIB = 64
CHUNK = b"a" * 65536
RSS_GROWTH_MIB = 16
SAMPLE_S = 0.05


async def run(context: DrillContext) -> None:
    report = context.report
    server = context.serve(context.registry())
    before = server.memory()["rss_bytes"]
    peak = before
    sending = True
    tally = report.tally("big header")

    async def sample() -> None:
        nonlocal peak
        while sending:
            peak = max(peak, server.memory()["rss_bytes"])
            await asyncio.sleep(SAMPLE_S)

    sampler = asyncio.create_task(sample())
    reader, writer = await asyncio.open_connection("127.0.0.1", server.spec.port)
    answer = asyncio.ensure_future(reader.readline())
    report.event(f"streaming one header of up to {HEADER_MIB} MiB; server RSS "
                 f"{before / 2**20:.1f} MiB")
    started, sent = time.monotonic(), 0
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
    try:
        while sent < HEADER_MIB * 2**20 and not answer.done():
            writer.write(CHUNK)
            await writer.drain()
            sent += len(CHUNK)
    except OSError as exc:
        report.event(f"the server closed the connection ({type(exc).__name__})")
    report.event(f"stopped after {sent / 2**20:.1f} MiB")
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(asyncio.shield(answer), 5)
    took = time.monotonic() - started
    if answer.done() and answer.exception() is None and answer.result().startswith(b"HTTP/"):
        tally.answered(int(answer.result().split()[1]), took)
    else:
        answer.cancel()
        tally.failed("no response" if not answer.done() else "closed without a response")
    writer.close()
    await asyncio.sleep(1)
    sending = False
    await sampler
    after = server.memory()["rss_bytes"]
    growth = (peak - before) / 2**20
    report.figures.update({
        "header bytes sent (MiB)": round(sent / 2**20, 2),
        "server RSS before / peak / after (MiB)": [round(before / 2**20, 1),
                                                   round(peak / 2**20, 1),
                                                   round(after / 2**20, 1)],
    })
    report.check("refused with 431", tally.count(431) == 1,
                 f"status {dict(tally.statuses) or dict(tally.errors)}")
    report.check(f"RSS grew less than {RSS_GROWTH_MIB} MiB", growth < RSS_GROWTH_MIB,
                 f"peak {growth:.1f} MiB over the {before / 2**20:.1f} MiB before")


DRILL = Drill(
    name="big-header",
    summary=f"one connection streams a {HEADER_MIB} MiB header (stopping when answered or "
            "closed); the server's RSS sampled throughout",
    expectation=f"431; RSS growth < {RSS_GROWTH_MIB} MiB",
    duration_s=0, rate=0, run=run,  # one request: --duration and --rate do not apply
)
