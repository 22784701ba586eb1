"""Running drills: the options they share, a context that starts what a drill needs (and stops
all of it however the drill ends), and the loop over the drills asked for.

Every drill serves from a registry of its own in its work folder, holding the checkpoint it was
given (or the production model of the registry named, or one trained briefly): drills corrupt
versions and move aliases, which must never happen to a registry someone uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service.bench.servers import Server
from service.bench.wrk import BenchError
from service.drills.report import DrillReport
from service.drills.services import PrivateRabbit, PrivateRedis, ServiceError, lab2prod_spec
from service.registry import open_registry
from service.registry.base import PRODUCTION


@dataclass
class DrillConfig:
    checkpoint: Path  # the model every drill serves
    checkpoint_source: str
    work_dir: Path  # scratch space: registries, service data, logs (kept for reading after)
    model_name: str = "mnist-cnn"
    duration_s: float | None = None  # seconds of load (None: each drill's default)
    rate: float | None = None  # requests per second (None: each drill's default)
    outage_s: float | None = None  # how long the failure lasts (None: each drill's default)


@dataclass(frozen=True)
class Drill:
    name: str
    summary: str
    expectation: str
    duration_s: float  # defaults, scaled by --duration / --rate
    rate: float
    run: Callable[[DrillContext], Awaitable[None]]


class DrillContext:
    """One drill's run: its report, settings, folder and the services it started."""

    def __init__(self, drill: Drill, config: DrillConfig) -> None:
        self.drill, self.config = drill, config
        self.report = DrillReport(drill.name, drill.summary, drill.expectation)
        config.work_dir.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=f"{drill.name}-", dir=config.work_dir))
        self._stack = contextlib.ExitStack()

    @property
    def duration_s(self) -> float:
        return self.config.duration_s or self.drill.duration_s

    @property
    def rate(self) -> float:
        return self.config.rate or self.drill.rate

    def outage_s(self, default: float) -> float:
        return self.config.outage_s or default

    def registry(self) -> Path:
        """A fresh folder registry with the drill's checkpoint as v1, production on it."""
        path = self.folder / "registry"
        registry = open_registry(path, self.config.model_name)
        registry.publish(self.config.checkpoint, {"source": "lab2prod drill"},
                         aliases=(PRODUCTION,))
        return path

    def start(self, server: Server, timeout_s: float = 180) -> Server:
        """Start a lab2prod process and wait until ready; stopped when the drill ends."""
        self._stack.callback(server.stop)
        server.start()
        try:
            server.wait_ready(timeout_s)
        except BenchError as exc:
            raise ServiceError(str(exc)) from None
        return server

    def serve(self, registry: Path, name: str = "serve", max_open_files: int | None = None,
              **env: str) -> Server:
        spec = lab2prod_spec(name, "serve", registry, self.folder, **env)
        spec.max_open_files = max_open_files
        return self.start(Server(spec, None, self.folder))

    def worker(self, registry: Path, **env: str) -> Server:
        return self.start(Server(lab2prod_spec("worker", "worker", registry, self.folder, **env),
                                 None, self.folder))

    def redis(self) -> PrivateRedis:
        redis = PrivateRedis(self.folder / "redis")
        self._stack.callback(redis.stop)
        return redis.start()

    def rabbitmq(self) -> PrivateRabbit:
        rabbit = PrivateRabbit(self.folder / "rabbitmq")
        self._stack.callback(rabbit.stop)
        return rabbit.start()

    def close(self) -> None:
        self._stack.close()


def run_drill(drill: Drill, config: DrillConfig) -> DrillReport:
    context = DrillContext(drill, config)
    started = time.monotonic()
    try:
        asyncio.run(drill.run(context))
    except (ServiceError, OSError, httpx.HTTPError) as exc:
        context.report.error = f"{type(exc).__name__}: {exc}"
    finally:
        context.close()
        context.report.duration_s = time.monotonic() - started
        context.report.figures.setdefault("logs", str(context.folder))
    return context.report


def run_drills(drills: list[Drill], config: DrillConfig,
               on_report: Callable[[DrillReport], Any] | None = None) -> list[DrillReport]:
    reports = []
    for drill in drills:
        report = run_drill(drill, config)
        reports.append(report)
        if on_report is not None:
            on_report(report)
    return reports

