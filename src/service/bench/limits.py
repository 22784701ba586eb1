"""The limit /predict works against, measured in the bench's own run: the HTTP floor and the
runtime alone, and our throughput as a share of what the two allow together.

- The floor: a bare Starlette route on the same uvicorn settings as ``lab2prod serve``
  (``commands.serve.uvicorn_options``: uvloop, httptools, one process, no access log, no server
  header), pinned to the servers' core, that reads the body and answers a fixed prediction-sized
  JSON. Nothing an HTTP service on this stack does per request can cost less.
- The runtime alone: the runtime our server serves the bench model with (the same loader, the
  same release measurement, verified the same way), called on distinct batches of 32 bench
  digits on one thread pinned to the servers' core: microseconds of CPU per image, nothing
  else (CPU time: what the call costs on a core of its own; wall time is kept beside it).
- The limit: one core must carry both for every request, so at best it serves
  ``1 / (1/floor + 1/runtime images/s)`` requests a second. Whatever our c=64 figure misses of
  that is our own per-request work (parsing, cache, hand-off to the batcher, metrics, encoding).
  Each round measures ours, then the floor, then the runtime alone, one after the other, and
  the limit is worked out per round (``limit_by_round``): the median round is the figure.

``python -m service.bench.limits --port N`` runs the floor server (the harness starts it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.bench.bodies import JSON, read_bodies
from service.bench.servers import ServerSpec, python_command

FLOOR_TARGET = "floor"
RUNTIME_BATCH = 32
MIN_SHARE = 0.75  # of the limit, at c=64
LIMIT_CONCURRENCY = 64
# A /predict answer as ``encoding.prediction_json`` writes one (float32 shortest decimals,
# about 200 bytes), fixed: the floor encodes nothing.
FLOOR_ANSWER = (
    b'{"digit":7,"confidence":0.99997145,"probabilities":[2.2994365e-7,8.198153e-8,'
    b'0.0000018019127,2.1156112e-7,1.6317465e-8,5.9069134e-7,0.000025614494,0.99997145,'
    b'8.330908e-9,8.809341e-10],"model_version":"v1"}'
)


# --- the floor server -------------------------------------------------------------------------


def floor_app() -> Any:
    """POST /predict reads the body and answers FLOOR_ANSWER; GET /health answers ok."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def predict(request: Request) -> Response:
        await request.body()
        return Response(FLOOR_ANSWER, media_type=JSON)

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]),
                             Route("/health", health, methods=["GET"])])


def floor_spec(port: int, env: dict[str, str]) -> ServerSpec:
    """The floor as a bench server, with our server's environment (its log settings)."""
    return ServerSpec(FLOOR_TARGET, python_command("-m", "service.bench.limits", "--port",
                                                   str(port)), port, "/health", env)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from service.commands.serve import uvicorn_options
    from service.observability import configure_logging
    from service.settings import get_settings

    parser = argparse.ArgumentParser(description="the bench's HTTP floor server")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    settings = get_settings().model_copy(update={"port": args.port})
    configure_logging(settings.log_level, settings.log_json)
    uvicorn.run(floor_app(), **uvicorn_options(settings))


# --- the runtime alone ------------------------------------------------------------------------


def bench_digits(bodies_path: Path, count: int) -> np.ndarray:
    """The first ``count`` digits of a JSON bodies file, uint8 [count, 28, 28]."""
    pixels = [orjson.loads(body)["pixels"] for body in read_bodies(bodies_path)[:count]]
    return np.asarray(pixels, dtype=np.uint8).reshape(-1, 28, 28)


class RuntimeAlone:
    """The runtime our server picks for ``alias``'s version, loaded once and timed on demand
    (``measure``): microseconds per image at batch 32 on one thread pinned to ``cpu``, the
    median of calls over distinct batches. The bench times it in every round, right after the
    floor, so that each round's limit is made of figures measured under the same conditions."""

    def __init__(self, registry: Path, model_name: str, alias: str, digits: np.ndarray,
                 cpu: int) -> None:
        from service.inference.loader import load_runtime
        from service.ml.preprocess import normalize_array
        from service.registry import open_registry

        self.cpu = cpu
        opened = open_registry(registry, model_name)
        with self._one_thread_on_cpu():  # ONNX Runtime's session follows it, as served
            loaded = load_runtime(opened.checkpoint_path(alias), runtime="auto", device="cpu",
                                  version=alias, selection=opened.card(alias).get("runtimes"),
                                  read_only=True)
        self.runtime_name = loaded.runtime_name
        self._predict = loaded.runtime.predict_proba
        self._batches = [normalize_array(digits[start:start + RUNTIME_BATCH], loaded.normalization)
                         for start in range(0, len(digits) - RUNTIME_BATCH + 1, RUNTIME_BATCH)]
        if not self._batches:
            raise ValueError(f"need at least {RUNTIME_BATCH} digits, got {len(digits)}")

    def measure(self, seconds: float = 2.0) -> dict[str, Any]:
        with self._one_thread_on_cpu():
            cpu_s, wall_s = _median_call(self._predict, self._batches, seconds)
        us_per_image = 1e6 * cpu_s / RUNTIME_BATCH
        return {"runtime": self.runtime_name, "batch": RUNTIME_BATCH,
                "us_per_image": round(us_per_image, 2),
                "images_per_s": round(1e6 / us_per_image, 1),
                "wall_us_per_image": round(1e6 * wall_s / RUNTIME_BATCH, 2)}

    @contextlib.contextmanager
    def _one_thread_on_cpu(self) -> Iterator[None]:
        import torch

        previous_threads, previous_cpus = torch.get_num_threads(), os.sched_getaffinity(0)
        torch.set_num_threads(1)
        os.sched_setaffinity(0, {self.cpu})
        try:
            yield
        finally:
            os.sched_setaffinity(0, previous_cpus)
            torch.set_num_threads(previous_threads)


def runtime_alone(registry: Path, model_name: str, alias: str, digits: np.ndarray, cpu: int,
                  seconds: float = 2.0) -> dict[str, Any]:
    """``RuntimeAlone`` loaded and timed once."""
    return RuntimeAlone(registry, model_name, alias, digits, cpu).measure(seconds)


def _median_call(call: Any, inputs: list[Any], seconds: float) -> tuple[float, float]:
    """Median seconds a call, of this thread's CPU time and of wall time. The CPU time is the
    figure: one thread (ONNX Runtime and torch with one intra-op thread run in the caller), and
    time spent waiting for a core that other work shares does not count in it."""
    for item in inputs[:3]:
        call(item)  # first calls allocate and pick kernels
    cpu: list[float] = []
    wall: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(cpu) < 20:
        item = inputs[len(cpu) % len(inputs)]
        tick, cpu_tick = time.perf_counter(), time.thread_time()
        call(item)
        cpu.append(time.thread_time() - cpu_tick)
        wall.append(time.perf_counter() - tick)
    return statistics.median(cpu), statistics.median(wall)


# --- the combined limit -----------------------------------------------------------------------


def combined_limit(ours_rps: float | None, floor_rps: float | None,
                   runtime: dict[str, Any] | None, *, ours_cpu_ms: float | None = None,
                   floor_cpu_ms: float | None = None) -> dict[str, Any] | None:
    """Our req/s as a share of 1 / (1/floor + 1/runtime rate), with what is left over: our own
    microseconds per request beyond the floor's and the runtime's.

    With the servers' CPU time per request (``*_cpu_ms``), the same share by CPU time too:
    (floor's CPU + the runtime's) over ours. Where other work shares the servers' core, req/s
    fall with the core's share the server gets; CPU time per request much less so."""
    if not ours_rps or not floor_rps or not runtime or not runtime.get("images_per_s"):
        return None
    runtime_rate = float(runtime["images_per_s"])
    limit = 1.0 / (1.0 / floor_rps + 1.0 / runtime_rate)
    result = {
        "ours_rps": round(ours_rps, 1), "floor_rps": round(floor_rps, 1),
        "runtime": runtime["runtime"], "runtime_images_per_s": round(runtime_rate, 1),
        "limit_rps": round(limit, 1), "share": round(ours_rps / limit, 3),
        "floor_us": round(1e6 / floor_rps, 1), "runtime_us": round(1e6 / runtime_rate, 1),
        "overhead_us": round(1e6 / ours_rps - 1e6 / limit, 1),
    }
    if ours_cpu_ms and floor_cpu_ms:
        floor_cpu_us, ours_cpu_us = 1000 * floor_cpu_ms, 1000 * ours_cpu_ms
        result.update({
            "ours_cpu_us": round(ours_cpu_us, 1), "floor_cpu_us": round(floor_cpu_us, 1),
            "cpu_share": round((floor_cpu_us + 1e6 / runtime_rate) / ours_cpu_us, 3),
        })
    return result


def limit_by_round(runs: Sequence[Any], runtimes: Sequence[dict[str, Any]]
                   ) -> dict[str, Any] | None:
    """``combined_limit`` per round, from that round's ours and floor at c=64 (measured one
    after the other) and the runtime timed right after them (``runtimes``: one per round, each
    with its ``round``). The result is the median round's (the lower of two), with every
    round's share beside it: on a shared core a floor measured minutes away from ours, in
    other conditions, moved the share by half."""
    pairs: dict[int, dict[str, Any]] = {}
    for run in runs:
        if run.concurrency == LIMIT_CONCURRENCY and run.target in ("ours", FLOOR_TARGET):
            pairs.setdefault(run.round, {})[run.target] = run
    per_round = []
    for runtime in runtimes:
        pair = pairs.get(runtime["round"], {})
        ours, floor = pair.get("ours"), pair.get(FLOOR_TARGET)
        if ours is None or floor is None:
            continue
        limit = combined_limit(ours.requests_per_s, floor.requests_per_s, runtime,
                               ours_cpu_ms=ours.cpu_ms_per_request,
                               floor_cpu_ms=floor.cpu_ms_per_request)
        if limit is not None:
            per_round.append({**limit, "round": runtime["round"]})
    if not per_round:
        return None
    per_round.sort(key=lambda limit: limit["share"])
    median_round = per_round[(len(per_round) - 1) // 2]
    return {**median_round, "rounds": len(per_round),
            "shares": [limit["share"] for limit in per_round],
            "cpu_shares": sorted(limit["cpu_share"] for limit in per_round
                                 if "cpu_share" in limit)}


def checks(limit: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The target on the share, in the form of ``harness.check_targets``'s rows."""
    share = None if limit is None else limit["share"]
    return [{"target": "c=64 JSON req/s share of the limit", "measured": share,
             "required": f">= {MIN_SHARE}",
             "passed": None if share is None else share >= MIN_SHARE}]


def limit_line(limit: dict[str, Any] | None) -> str:
    """'ours 1,420 req/s = 0.61 of the 2,350 limit (floor 6,100 req/s, runtime 3,820 img/s)',
    with the share of every round when there were several."""
    if not limit:
        return ""
    rounds = limit.get("rounds", 1)
    line = (f"- Limit at c=64{' (the median round)' if rounds > 1 else ''}: ours "
            f"{limit['ours_rps']:,.0f} req/s = **{limit['share']:.2f}** of "
            f"the {limit['limit_rps']:,.0f} limit (floor {limit['floor_rps']:,.0f} req/s, "
            f"runtime {limit['runtime_images_per_s']:,.0f} img/s: {limit['runtime']} at batch "
            f"{RUNTIME_BATCH}, one thread); per request: floor {limit['floor_us']:.0f} µs + "
            f"model {limit['runtime_us']:.0f} µs + our own {limit['overhead_us']:.0f} µs.")
    if "cpu_share" in limit:
        line += (f" By CPU time per request (less distorted by other work on the core): floor "
                 f"{limit['floor_cpu_us']:.0f} µs + model {limit['runtime_us']:.0f} µs of our "
                 f"{limit['ours_cpu_us']:.0f} µs = **{limit['cpu_share']:.2f}**.")
    if rounds > 1:
        line += (f" Shares by round (each round: ours, then the floor, then the runtime alone): "
                 f"{_figures(limit['shares'])}")
        if limit.get("cpu_shares"):
            line += f"; by CPU time {_figures(limit['cpu_shares'])}"
        line += "."
    return line


def _figures(values: Sequence[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


if __name__ == "__main__":
    main()
