"""Running wrk (pinned to its own core) and reading its result line."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from service.bench.bodies import BodySet

# Relative to the project folder the bench runs in (like notebooks/ for a release).
LUA_SCRIPT = Path("scripts") / "wrk" / "bodies.lua"
RESULT_PREFIX = "WRK_RESULT "


class BenchError(RuntimeError):
    """The benchmark cannot run or a run failed; the message says what to do."""


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # non-2xx/3xx responses plus socket errors (connect, read, write, timeout)
    status_errors: int
    socket_errors: int


def require_tools() -> None:
    """wrk and taskset must exist; say how to get them when they do not."""
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        raise BenchError(
            f"lab2prod bench needs {' and '.join(missing)} on PATH: "
            "sudo apt-get install wrk util-linux (or `make system-deps`)"
        )


def command(url: str, bodies: BodySet, *, connections: int, seconds: float, cpu: int,
            start: int = 0, script: Path = LUA_SCRIPT) -> list[str]:
    """taskset -c CPU wrk -t1 -cN -dS --latency -s bodies.lua URL -- FILE TYPE ROUTE START"""
    return [
        "taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "10s", "--latency", "-s", str(script), url,
        "--", str(bodies.path), bodies.content_type, bodies.route, str(start),
    ]


def parse(output: str) -> WrkResult:
    """Read the line bodies.lua's done() prints; refuse output without one."""
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            raw = json.loads(line[len(RESULT_PREFIX):])
            break
    else:
        tail = "\n".join(output.strip().splitlines()[-5:])
        raise BenchError(f"wrk printed no {RESULT_PREFIX.strip()} line; its output ends:\n{tail}")
    duration_s = raw["duration_us"] / 1e6
    socket = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
    return WrkResult(
        requests=raw["requests"],
        duration_s=duration_s,
        requests_per_s=raw["requests"] / duration_s if duration_s > 0 else 0.0,
        p50_ms=raw["p50_us"] / 1000, p90_ms=raw["p90_us"] / 1000, p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=raw["status_errors"] + socket, status_errors=raw["status_errors"],
        socket_errors=socket,
    )


def run(url: str, bodies: BodySet, *, connections: int, seconds: float, cpu: int,
        start: int = 0, script: Path = LUA_SCRIPT) -> WrkResult:
    argv = command(url, bodies, connections=connections, seconds=seconds, cpu=cpu, start=start,
                   script=script)
    try:
        finished = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(
            f"wrk did not finish within {seconds + 60:.0f} s: {' '.join(argv)}"
        ) from exc
    if finished.returncode != 0:
        raise BenchError(f"wrk exited {finished.returncode}: {finished.stderr.strip()[-500:]}")
    return parse(finished.stdout)

