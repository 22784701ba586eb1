"""The serving benchmark: our service and three baselines, one run, interleaved rounds.

Every server runs pinned to one core (``taskset -c SERVER_CPU``), wrk to the other; each round
visits every target at each concurrency in turn (A B C D, A B C D, ...), so slow drifts of a
shared machine spread over all of them (the floor right after ours: the limit pairs them).
Figures are medians over rounds, with the range.

Targets (a server and a body set):
  ours, tutorial, threadpool, litserve   JSON pixels, >= 1,000 distinct digits (misses)
  *-int8, triton, kserve, bentoml, ...   the same bodies to servers of the int8 ONNX file ours
                                         serves ("same runtime" rows: service.bench.peers)
  ours-v2                                the same digits as v2 protocol JSON (POST /v2/.../infer)
  ours-png                               PNG uploads 28..400 px, distinct (misses)
  ours-batch                             POST /predict/batch, 16 distinct digits a request
  ours-hit-memory                        one body repeated: in-process LRU hits
  ours-hit-redis                         one body repeated: Redis hits (no in-process LRU)
  floor                                  the HTTP floor: a bare route on our uvicorn settings
                                         (with the runtime alone: bench/limits.py)

Our miss-path server keeps its in-process cache on but smaller (256) than the cycle of
distinct bodies (2,048), so an LRU can never hit; /metrics cache counters prove it per run.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import statistics
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from service.bench import bodies as bodies_module
from service.bench import limits, peers, wrk
from service.bench.servers import Server, ServerSpec, free_port, python_command, stop_all
from service.bench.wrk import BenchError
from service.provenance import cpu_description

log = logging.getLogger(__name__)

BASELINE_TARGETS = tuple(peers.TARGETS)
# target -> (server, body set)
TARGETS: dict[str, tuple[str, str]] = {
    "ours": ("ours", "json"),
    "tutorial": ("tutorial", "json"),
    "threadpool": ("threadpool", "json"),
    "litserve": ("litserve", "json"),
    "ours-v2": ("ours", "v2"),
    "ours-png": ("ours", "png"),
    "ours-batch": ("ours", "batch"),
    "ours-hit-memory": ("ours", "json-same"),
    "ours-hit-redis": ("ours-redis", "json-same"),
    "ours-shadow": ("ours-shadow", "json"),  # every request also answered by a shadow version
    limits.FLOOR_TARGET: (limits.FLOOR_TARGET, "json"),
}
TARGETS.update(peers.TARGETS)  # the baselines and peers, eager and same-runtime
# What a run measures unless told: all but the peers that need a run of their own (Ray Serve).
DEFAULT_TARGETS = [target for target in TARGETS if target not in peers.OWN_RUN_TARGETS]
# The bench registry holds the checkpoint three times, so that one server can load three versions
# (memory of 1 vs 3) and another can shadow production with a second version.
# int8 answers within a point of eager: enough to compare speed, short of a release's policy
# (release-policy.yaml), which a noisy 3-epoch bench model misses on some CPUs (10 of 1,000).
BENCH_RUNTIME_BAR = {"min_agreement": 0.98, "max_accuracy_drop": 0.01}  # RuntimeCriteria
BENCH_VERSIONS = {"production": "v1", "shadow": "v2", "spare": "v3"}
MISS_CACHE_SIZE = 256  # < the number of distinct bodies: a cycling LRU never hits
# A server that burns more than this while idle (LitServe's workers and Ray's GCS and raylet
# poll) is paused (SIGSTOP) while the others are measured on its core, resumed for its own turn.
IDLE_CPU_PAUSE = 0.02


@dataclass
class BenchConfig:
    checkpoint: Path
    checkpoint_source: str
    out_dir: Path
    work_dir: Path
    seconds: float = 5.0
    rounds: int = 3
    concurrencies: list[int] = field(default_factory=lambda: [1, 8, 64])
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    server_cpu: int = 0
    client_cpu: int = 1
    warmup_s: float = 2.0
    distinct: int = 2048
    workers: int = 2  # `lab2prod worker` processes whose memory is measured (0: skip)
    amqp_url: str | None = None
    model_name: str = "mnist-cnn"
    scripts_dir: Path = Path("scripts")  # the project's baselines/ and wrk/ (like notebooks/)
    venvs_dir: Path = Path(".")  # where `make bench-peers` put the peers' .venv-bench-* folders

    @property
    def baselines(self) -> Path:
        return self.scripts_dir / "baselines"

    @property
    def wrk_script(self) -> Path:
        return self.scripts_dir / "wrk" / "bodies.lua"

    def validate(self) -> None:
        for needed in (self.baselines, self.wrk_script):
            if not needed.exists():
                raise BenchError(
                    f"{needed} is missing: run lab2prod bench in the project folder (a clone of "
                    "the template), or point --scripts at its scripts/ folder"
                )
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise BenchError(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
        missing = peers.missing_venvs({TARGETS[t][0] for t in self.targets}, self)
        if missing:
            raise BenchError("; ".join(missing))
        if self.distinct < 1000 or self.distinct <= MISS_CACHE_SIZE:
            raise BenchError(f"--distinct must be >= 1000 (and > {MISS_CACHE_SIZE}) so that "
                             "miss-path figures never hit a cache")
        if self.rounds < 1 or self.seconds < 1:
            raise BenchError("--rounds must be >= 1 and --duration >= 1 second")


@dataclass
class Run:
    target: str
    concurrency: int
    round: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    status_errors: int
    socket_errors: int
    requests: int
    duration_s: float
    server_cpu_cores: float  # CPU seconds of the server's process tree / wall seconds
    cpu_ms_per_request: float
    items_per_request: int = 1
    cache: dict[str, float] = field(default_factory=dict)  # /metrics deltas, our servers only


# --- servers ----------------------------------------------------------------------------------


def publish_registry(checkpoint: Path, work_dir: Path, model_name: str) -> Path:
    """A fresh registry (never the user's) holding ``checkpoint`` as a release publishes it:
    its runtime measured and chosen on this machine, the exported files and the verification
    set beside it; three times over (BENCH_VERSIONS)."""
    from service.inference.verification import RuntimeCriteria
    from service.ml.data import load_dataset
    from service.registry import open_registry
    from service.release.checks import prepare_runtimes

    staging = work_dir / "release"
    staging.mkdir(parents=True, exist_ok=True)
    staged = Path(shutil.copy(checkpoint, staging / "model.safetensors"))
    dataset = load_dataset("mnist-5k")
    # Ours serves the runtime every same-runtime peer gets, the int8 ONNX file, whichever the
    # release policy would pick on this machine: those rows compare serving stacks at equal model
    # cost. A bar of the bench's own (BENCH_RUNTIME_BAR) still keeps a broken export out.
    bench_criteria = RuntimeCriteria(**BENCH_RUNTIME_BAR)
    prepared = prepare_runtimes(staging, staged, dataset.test_images, dataset.test_labels,
                                criteria=bench_criteria, device="cpu",
                                requested=peers.SAME_RUNTIME_VARIANT)
    if prepared["runtimes"]["chosen"] is None:
        log.warning("%s misses even the bench's bar (%s) for this checkpoint: ours serves what "
                    "the release policy picks", peers.SAME_RUNTIME_VARIANT,
                    bench_criteria.describe())
        prepared = prepare_runtimes(staging, staged, dataset.test_images, dataset.test_labels,
                                    criteria=RuntimeCriteria(), device="cpu")
    root = work_dir / f"registry-{uuid.uuid4().hex[:8]}"
    registry = open_registry(root, model_name)
    card = {"source": "lab2prod bench", "runtimes": prepared["runtimes"]}
    for alias in BENCH_VERSIONS:
        registry.publish(staged, card, aliases=(alias,),
                         artefacts=[staging / name for name in prepared["artefacts"]])
    return root


def server_specs(
    config: BenchConfig, registry: Path, redis_port: int | None,
    same_runtime_file: Path | None = None,
) -> dict[str, ServerSpec]:
    ours_env = {
        "REGISTRY_URL": str(registry), "MODEL_NAME": config.model_name,
        "MODEL_ALIAS": "production", "TORCH_THREADS": "1", "MODEL_POLL_INTERVAL_S": "0",
        "LOG_LEVEL": "warning", "ACCESS_LOG": "false", "CACHE_SIZE": str(MISS_CACHE_SIZE),
        "DEVICE": "cpu",
    }
    specs: dict[str, ServerSpec] = {}
    port = free_port()
    specs["ours"] = ServerSpec("ours", python_command("-m", "service.cli", "serve", "--port",
                                                      str(port)), port, "/ready", ours_env)
    port = free_port()
    specs["ours-shadow"] = ServerSpec(
        "ours-shadow", python_command("-m", "service.cli", "serve", "--port", str(port)), port,
        "/ready", {**ours_env, "SHADOW_ALIAS": "shadow", "SHADOW_PERCENT": "100"},
    )
    if redis_port is not None:
        port = free_port()
        specs["ours-redis"] = ServerSpec(
            "ours-redis", python_command("-m", "service.cli", "serve", "--port", str(port)), port,
            "/ready", {**ours_env, "CACHE_SIZE": "0",
                       "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"},
        )
    specs[limits.FLOOR_TARGET] = limits.floor_spec(free_port(), ours_env)
    specs.update(peers.specs(config, same_runtime_file))
    return specs


def redis_spec(port: int) -> ServerSpec:
    return ServerSpec(
        "redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no"], port, ready_log_line="Ready to accept connections",
    )


def worker_spec(config: BenchConfig, registry: Path, redis_port: int) -> ServerSpec:
    amqp = config.amqp_url or "amqp://guest:guest@127.0.0.1:5672/"
    return ServerSpec(
        "workers", python_command("-m", "service.cli", "worker", "--processes",
                                  str(config.workers)), 0,
        env={"REGISTRY_URL": str(registry), "MODEL_NAME": config.model_name,
             "AMQP_URL": amqp, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/1",
             "QUEUE_NAME": f"lab2prod.bench.{uuid.uuid4().hex[:8]}", "TORCH_THREADS": "1",
             "MODEL_POLL_INTERVAL_S": "0", "LOG_LEVEL": "info", "LOG_JSON": "false",
             "DEVICE": "cpu"},
        ready_log_line="worker ready: consuming", ready_log_count=config.workers,
    )


# metric -> the labels that name a counter: lab2prod_cache_requests_total{tier="memory",
# result="hit"} is "memory:hit", lab2prod_shadow_predictions_total{outcome="agree"} "shadow:agree"
SCRAPED_COUNTERS = {
    "lab2prod_cache_requests_total": lambda labels: f"{labels['tier']}:{labels['result']}",
    "lab2prod_shadow_predictions_total": lambda labels: f"shadow:{labels['outcome']}",
}


def scrape_counters(url: str) -> dict[str, float]:
    """Our servers' cache and shadow counters from /metrics (see SCRAPED_COUNTERS)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return parse_counters(text)


def parse_counters(text: str) -> dict[str, float]:
    counters: dict[str, float] = {}
    for line in text.splitlines():
        name, brace, rest = line.partition("{")
        if not brace or name not in SCRAPED_COUNTERS:
            continue
        labels_text, value = rest.rsplit("} ", 1)
        labels = {key: raw.strip('"') for key, _, raw in
                  (part.partition("=") for part in labels_text.split(","))}
        key = SCRAPED_COUNTERS[name](labels)
        counters[key] = counters.get(key, 0.0) + float(value)
    return counters


def check_one_request(server: Server, body_set: bodies_module.BodySet) -> None:
    """One real request before measuring: a target that cannot answer fails the run clearly."""
    body = bodies_module.read_bodies(body_set.path)[0]
    request = urllib.request.Request(server.spec.url + body_set.route, data=body, method="POST",
                                     headers={"Content-Type": body_set.content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            payload = json.loads(reply.read())
    except Exception as exc:
        raise BenchError(f"{server.spec.name} did not answer {body_set.name} on {body_set.route}"
                         f" ({exc}); the end of its log:\n{server.log_tail()}") from exc
    if isinstance(payload, list) and payload:  # a batchable API answers one-row batches
        payload = payload[0]
    if not isinstance(payload, dict) or not {"predictions", "digit", "outputs"} & set(payload):
        raise BenchError(f"{server.spec.name} answered {body_set.name} with {str(payload)[:200]}")


# --- the run ----------------------------------------------------------------------------------


def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    config.validate()
    wrk.require_tools()
    cpus = os.cpu_count() or 1
    note = ""
    if cpus < 2 or max(config.server_cpu, config.client_cpu) >= cpus:
        raise BenchError(f"this machine has {cpus} CPU(s); --server-cpu and --client-cpu must be "
                         f"two different ones below {cpus}")
    run_dir = config.work_dir / time.strftime("run-%Y%m%d-%H%M%S")
    log_dir = run_dir / "logs"
    started = time.time()
    log.info("building request bodies (%d distinct digits) in %s", config.distinct, run_dir)
    body_sets = bodies_module.build_body_sets(run_dir / "bodies", distinct=config.distinct,
                                              model_name=config.model_name)
    registry = publish_registry(config.checkpoint, run_dir, config.model_name)
    wanted_servers = {TARGETS[t][0] for t in config.targets}
    same_runtime: dict[str, Any] = {}
    if any(peers.family(t) == peers.SAME_RUNTIME for t in config.targets):
        same_runtime = peers.same_runtime_file(registry, config.model_name)
        body_sets.update(peers.peer_body_sets(body_sets))
    need_redis = "ours-redis" in wanted_servers or config.workers > 0
    servers: dict[str, Server] = {}
    memory: dict[str, Any] = {}
    runs: list[Run] = []
    uploads: dict[str, float] = {}
    runtimes: list[dict[str, Any]] = []  # the runtime alone, timed once a round
    runtime_alone: limits.RuntimeAlone | None = None
    cursor = Cursor()
    try:
        redis_port = None
        if need_redis:
            redis_port = free_port()
            redis = servers["redis"] = Server(redis_spec(redis_port), config.server_cpu, log_dir)
            redis.start().wait_ready(30)
        specs = server_specs(config, registry, redis_port, same_runtime.get("path"))
        for name in sorted(wanted_servers):
            servers[name] = Server(specs[name], config.server_cpu, log_dir).start()
        for name in sorted(wanted_servers):
            log.info("waiting for %s (%s)", name, specs[name].url)
            servers[name].wait_ready()
        for target in config.targets:
            server_name, body_name = TARGETS[target]
            check_one_request(servers[server_name], body_sets[body_name])
            cursor.advance(server_name, body_sets[body_name].sequence, 1)
        log.info("warming up every target for %.0f s at concurrency 8", config.warmup_s)
        for target in config.targets:
            server_name, body_name = TARGETS[target]
            sequence = body_sets[body_name].sequence
            result = wrk.run(servers[server_name].spec.url, body_sets[body_name], connections=8,
                             seconds=config.warmup_s, cpu=config.client_cpu,
                             start=cursor.at(server_name, sequence), script=config.wrk_script)
            cursor.advance(server_name, sequence, result.requests + 8)
        idle = idle_cpu({name: servers[name] for name in wanted_servers})
        for name in sorted(wanted_servers):
            memory[name] = {"after_warmup": servers[name].memory(), "idle_cpu_cores": idle[name]}
        paused = sorted(name for name in wanted_servers
                        if idle[name] > IDLE_CPU_PAUSE and peers.pausable(name))
        note = (f"Paused (SIGSTOP) while the others were measured, as they take CPU idle: "
                f"{', '.join(paused)}." if paused else "")
        for name in paused:
            servers[name].pause()
        if limits.FLOOR_TARGET in config.targets:
            runtime_alone = limits.RuntimeAlone(
                registry, config.model_name, "production",
                limits.bench_digits(body_sets["json"].path, 1024), config.server_cpu)
        total = config.rounds * len(config.concurrencies) * len(config.targets)
        for round_index in range(config.rounds):
            for concurrency in config.concurrencies:
                for target in measuring_order(config.targets):
                    awake = TARGETS[target][0] in paused
                    if awake:
                        servers[TARGETS[target][0]].resume()
                        time.sleep(1.0)  # timers and heartbeats due while it slept fire now
                    runs.append(_measure(target, concurrency, round_index, servers, body_sets,
                                         config, cursor))
                    if awake:
                        servers[TARGETS[target][0]].pause()
                    last = runs[-1]
                    log.info("[%d/%d] round %d c=%d %-16s %8.0f req/s p50 %6.2f ms p99 %7.2f ms "
                             "errors %d cpu %.2f", len(runs), total, round_index + 1, concurrency,
                             target, last.requests_per_s, last.p50_ms, last.p99_ms, last.errors,
                             last.server_cpu_cores)
                    if (runtime_alone is not None and target == limits.FLOOR_TARGET
                            and concurrency == limits.LIMIT_CONCURRENCY):
                        runtimes.append({**runtime_alone.measure(), "round": last.round})
        for name in paused:
            servers[name].resume()
        for name in sorted(wanted_servers):
            memory[name]["after_load"] = servers[name].memory()
        if "ours" in servers:
            memory["ours"]["three_versions"] = _memory_with_every_version(servers["ours"])
        if config.workers > 0 and redis_port is not None:
            memory["workers"] = _worker_memory(config, registry, redis_port, log_dir)
        if "ours-png" in config.targets:
            uploads = upload_costs(body_sets["png"], config.server_cpu)
    finally:
        stop_all(list(servers.values()))
        shutil.rmtree(run_dir / "bodies", ignore_errors=True)  # tens of MB a run; logs stay
    context = _context(config, started, note)
    context["target_servers"] = {t: TARGETS[t][0] for t in config.targets}
    if same_runtime:
        context["same_runtime"] = {"file": str(same_runtime["path"]),
                                   "ours_runtime": same_runtime["ours_runtime"]}
    return assemble(runs, memory, context, uploads, runtimes)


def measuring_order(targets: Sequence[str]) -> list[str]:
    """The targets in the order each round measures them: the floor right after ours, so the
    pair the limit is made of sees the same conditions on a shared machine."""
    order = [target for target in targets if target != limits.FLOOR_TARGET]
    if limits.FLOOR_TARGET in targets:
        order.insert(order.index("ours") + 1 if "ours" in order else len(order),
                     limits.FLOOR_TARGET)
    return order


def idle_cpu(servers: dict[str, Server], seconds: float = 3.0) -> dict[str, float]:
    """Cores each idle server burns (background threads, heartbeats): taken from whichever
    server is measured on the same core, so the report shows it beside memory."""
    before = {name: server.cpu_seconds() for name, server in servers.items()}
    time.sleep(seconds)
    return {name: round((server.cpu_seconds() - before[name]) / seconds, 3)
            for name, server in servers.items()}


def upload_costs(body_set: bodies_module.BodySet, cpu: int, limit: int = 512) -> dict[str, float]:
    """CPU milliseconds per PNG upload of the bench, measured in this process on the servers'
    core while they idle: Pillow decoding alone, and our whole image path (header checks,
    decoding, preprocessing). Decoding is the floor under the PNG figure."""
    from PIL import Image

    from service.api.inputs import digit_from_image, single_file_part
    from service.settings import Settings

    max_pixels = Settings.model_fields["max_image_pixels"].default  # what a server allows
    boundary = body_set.content_type.partition("boundary=")[2].encode()
    files = []
    for body in bodies_module.read_bodies(body_set.path)[:limit]:
        part = single_file_part(body, boundary)
        if part is None:
            raise BenchError(f"{body_set.path} holds a body that is not one file upload")
        files.append(part[0])

    def decode(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as image:
            image.load()

    def image_path(data: bytes) -> None:
        digit_from_image(data, max_pixels=max_pixels, content_type="image/png")

    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        costs = {name: _cpu_ms_per_call(work, files)
                 for name, work in (("decode_ms", decode), ("image_path_ms", image_path))}
    finally:
        os.sched_setaffinity(0, previous)
    return {**costs, "uploads": len(files)}


def _cpu_ms_per_call(work: Callable[[bytes], None], inputs: list[bytes]) -> float:
    for data in inputs[:20]:  # warm caches and lazy imports
        work(data)
    started = time.thread_time()  # this thread only: idle pools elsewhere in the process spin
    for data in inputs:
        work(data)
    return round(1000 * (time.thread_time() - started) / len(inputs), 4)


class Cursor:
    """Where each server's walk through a digit sequence (``BodySet.sequence``) stands, so that
    the next run goes on from there: a digit comes back only after the whole cycle, never while
    its answer may still be in the server's cache (requests in flight when a run stops are
    skipped too). /predict and v2 bodies of the same digits walk one sequence."""

    def __init__(self) -> None:
        self._sent: dict[tuple[str, str], int] = {}

    def at(self, server: str, sequence: str) -> int:
        return self._sent.get((server, sequence), 0)

    def advance(self, server: str, sequence: str, count: int) -> None:
        self._sent[(server, sequence)] = self.at(server, sequence) + count


def _measure(target: str, concurrency: int, round_index: int, servers: dict[str, Server],
             body_sets: dict[str, bodies_module.BodySet], config: BenchConfig,
             cursor: Cursor) -> Run:
    server_name, body_name = TARGETS[target]
    server, body_set = servers[server_name], body_sets[body_name]
    ours = server_name.startswith("ours")
    before_cache = scrape_counters(server.spec.url) if ours else {}
    cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
    result = wrk.run(server.spec.url, body_set, connections=concurrency, seconds=config.seconds,
                     cpu=config.client_cpu, start=cursor.at(server_name, body_set.sequence),
                     script=config.wrk_script)
    cursor.advance(server_name, body_set.sequence, result.requests + concurrency)
    cpu_used, wall = server.cpu_seconds() - cpu_before, time.monotonic() - wall_before
    cache: dict[str, float] = {}
    if ours:
        after = scrape_counters(server.spec.url)
        cache = {key: after.get(key, 0.0) - before_cache.get(key, 0.0) for key in after}
    time.sleep(0.3)  # let the server drain before the next target starts
    return Run(
        target=target, concurrency=concurrency, round=round_index + 1,
        requests_per_s=round(result.requests_per_s, 1), p50_ms=round(result.p50_ms, 3),
        p90_ms=round(result.p90_ms, 3), p99_ms=round(result.p99_ms, 3),
        max_ms=round(result.max_ms, 3), errors=result.errors, status_errors=result.status_errors,
        socket_errors=result.socket_errors, requests=result.requests,
        duration_s=round(result.duration_s, 3), server_cpu_cores=round(cpu_used / wall, 3),
        cpu_ms_per_request=round(1000 * cpu_used / max(result.requests, 1), 4),
        items_per_request=body_set.items_per_body, cache=cache,
    )


def _memory_with_every_version(server: Server) -> dict[str, Any]:
    """The server's memory once a pinned request has loaded each bench version besides its own
    (MAX_LOADED_VERSIONS is 3 by default, so all stay loaded)."""
    body = json.dumps({"pixels": [0] * 784}).encode()
    for version in sorted(set(BENCH_VERSIONS.values()) - {BENCH_VERSIONS["production"]}):
        request = urllib.request.Request(
            server.spec.url + "/predict", data=body, method="POST",
            headers={"Content-Type": "application/json", "X-Model-Version": version})
        with urllib.request.urlopen(request, timeout=120) as reply:
            reply.read()
    time.sleep(0.5)
    return server.memory()


def _worker_memory(config: BenchConfig, registry: Path, redis_port: int,
                   log_dir: Path) -> dict[str, Any]:
    """RSS/PSS of ``lab2prod worker --processes N`` once every worker has loaded the model."""
    server = Server(worker_spec(config, registry, redis_port), config.server_cpu, log_dir)
    try:
        server.start().wait_ready(180)
        time.sleep(1.0)
        leader = server.process.pid if server.process else -1
        # with --processes 1 the worker runs in the leader; with N > 1 the leader supervises
        workers = [pid for pid in server.pids() if pid != leader or config.workers == 1]
        from service.bench.servers import memory as measure

        return {"processes": config.workers, "total": server.memory(),
                "workers_only": measure(workers)}
    except BenchError as exc:
        log.warning("worker memory not measured: %s", exc)
        return {"processes": config.workers, "error": str(exc).splitlines()[0]}
    finally:
        server.stop()


def _context(config: BenchConfig, started: float, note: str) -> dict[str, Any]:
    import platform

    import torch

    load, cpu = os.getloadavg(), cpu_description()
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "checkpoint": config.checkpoint_source,
        "seconds_per_point": config.seconds, "rounds": config.rounds,
        "concurrencies": config.concurrencies, "targets": config.targets,
        "server_cpu": config.server_cpu, "client_cpu": config.client_cpu,
        "distinct_bodies": config.distinct, "miss_cache_size": MISS_CACHE_SIZE,
        # the int8 kernel features too: the model's cost, and so every ratio, turns on them
        "machine": f"{cpu['model']} ({', '.join(cpu['features']) or 'no int8 features'}), "
        f"{os.cpu_count()} CPUs",
        "python": platform.python_version(), "torch": torch.__version__,
        "load_average_at_end": [round(value, 2) for value in load],
        "note": note,
    }


# --- aggregation ------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    """Median and range over rounds, per target and concurrency."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.target, run.concurrency), []).append(run)
    rows = []
    for (target, concurrency), members in groups.items():
        rps = [m.requests_per_s for m in members]
        rows.append({
            "target": target, "concurrency": concurrency, "rounds": len(members),
            "requests_per_s": _stats(rps),
            "items_per_s": _stats([r * members[0].items_per_request for r in rps]),
            "p50_ms": _stats([m.p50_ms for m in members]),
            "p99_ms": _stats([m.p99_ms for m in members]),
            "errors": sum(m.errors for m in members),
            "server_cpu_cores": _stats([m.server_cpu_cores for m in members]),
            "cpu_ms_per_request": _stats([m.cpu_ms_per_request for m in members]),
            "cache_hits": sum(v for m in members for k, v in m.cache.items() if k.endswith(":hit")),
        })
    return rows


def _median(rows: list[dict[str, Any]], target: str, concurrency: int, metric: str) -> float | None:
    for row in rows:
        if row["target"] == target and row["concurrency"] == concurrency:
            return float(row[metric]["median"])
    return None


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Our median req/s over each baseline's and peer's, per concurrency, ours sending the same
    bodies (JSON, v2 or PNG: peers.REFERENCE); labelled "ours / tutorial", "ours-v2 / triton"."""
    result: dict[str, dict[str, float]] = {}
    for row in rows:
        reference = peers.REFERENCE.get(row["target"])
        ours = reference and _median(rows, reference, row["concurrency"], "requests_per_s")
        if not ours or not row["requests_per_s"]["median"]:
            continue
        result.setdefault(f"c={row['concurrency']}", {})[f"{reference} / {row['target']}"] = round(
            ours / row["requests_per_s"]["median"], 2)
    return result


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met."""
    checks: list[dict[str, Any]] = []

    def add(name: str, measured: float | None, required: str, passed: bool | None) -> None:
        checks.append({"target": name, "measured": None if measured is None else round(measured, 2),
                       "required": required, "passed": passed})

    def ratio(a: str, b: str, c: int, metric: str = "requests_per_s") -> float | None:
        top, bottom = _median(rows, a, c, metric), _median(rows, b, c, metric)
        return top / bottom if top is not None and bottom else None

    for baseline, minimum, c in (("tutorial", 2.0, 64), ("litserve", 3.0, 64),
                                 ("tutorial", 1.3, 8)):
        value = ratio("ours", baseline, c)
        add(f"c={c} JSON req/s vs {baseline}", value, f">= {minimum}x",
            None if value is None else value >= minimum)
    p99 = _median(rows, "ours", 64, "p99_ms")
    add("c=64 JSON p99 (ms)", p99, "< 60", None if p99 is None else p99 < 60)
    ours_p50 = _median(rows, "ours", 1, "p50_ms")
    tutorial_p50 = _median(rows, "tutorial", 1, "p50_ms")
    add("c=1 p50 (ms), tutorial's in brackets" if tutorial_p50 is None else
        f"c=1 p50 (ms) vs tutorial's {tutorial_p50:.2f}", ours_p50, "<= tutorial's",
        None if ours_p50 is None or tutorial_p50 is None else ours_p50 <= tutorial_p50)
    for hit in ("ours-hit-memory", "ours-hit-redis"):
        value = ratio(hit, "ours", 64)
        add(f"c=64 {hit} vs misses", value, ">= 2.0x", None if value is None else value >= 2.0)
    value = ratio("ours-png", "ours", 64)
    add("c=64 PNG vs our JSON", value, ">= 0.6x", None if value is None else value >= 0.6)
    # A shadow copy runs on the same core, so it costs throughput; the client's answer must not
    # wait for it: the tail with every request shadowed stays within a fifth of the plain one.
    value = ratio("ours-shadow", "ours", 64, "p99_ms")
    add("c=64 p99 with 100% shadow vs without", value, "<= 1.2x",
        None if value is None else value <= 1.2)
    p50 = _median(rows, "ours", 64, "p50_ms")
    value = p99 / p50 if p99 is not None and p50 else None
    add("c=64 JSON p99 vs our p50", value, "<= 1.6x", None if value is None else value <= 1.6)
    return checks


def png_ceiling(rows: list[dict[str, Any]], uploads: dict[str, float]) -> dict[str, float] | None:
    """The most PNG can reach against our JSON at c=64 if everything but decoding were free:
    JSON's CPU per request over (that + decoding an upload)."""
    json_cpu_ms = _median(rows, "ours", 64, "cpu_ms_per_request")
    decode_ms = uploads.get("decode_ms")
    if not json_cpu_ms or not decode_ms:
        return None
    return {"json_cpu_ms": json_cpu_ms, "decode_ms": decode_ms,
            "image_path_ms": uploads.get("image_path_ms", 0.0),
            "ceiling": round(json_cpu_ms / (json_cpu_ms + decode_ms), 3)}


def assemble(runs: list[Run], memory: dict[str, Any], context: dict[str, Any],
             uploads: dict[str, float] | None = None,
             runtimes: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The run's JSON: ``runtimes`` are the runtime alone's timings, one a round (its ``round``)."""
    rows = summarise(runs)
    limit = limits.limit_by_round(runs, runtimes)
    return {"context": context, "summary": rows, "ratios": ratios(rows),
            "targets": check_targets(rows) + limits.checks(limit),
            "png_ceiling": png_ceiling(rows, uploads or {}), "runtime_alone": list(runtimes),
            "limit": limit, "memory": memory, "runs": [asdict(r) for r in runs]}
