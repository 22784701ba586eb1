"""The servers the bench measures ours against, and how each of their rows is read.

Two families of rows (docs/benchmarks/results.md says what each ratio means):

- **eager, as the tutorials do**: the tutorial, ``run_in_threadpool`` and LitServe patterns with
  the checkpoint in plain eager PyTorch on one thread. Ours over these is what the whole of our
  design buys: the runtime chosen at release plus the serving stack.
- **same runtime**: every server loads the very int8 ONNX file our release exported and ours
  serves (``--runtime onnx-int8``), on one thread. Ours over these is what the serving stack
  alone buys (batching, event loop, encoding), with the model cost equal. The serving
  frameworks (Triton via PyTriton, BentoML, KServe, Ray Serve) belong here, each with its own
  documented batching, each in a venv of its own that ``make bench-peers`` builds (no torch).

Each server is a small script in scripts/baselines/; a target is a server and a body set, and
each target is compared with the target of ours that sends the same bodies (``REFERENCE``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.bench.servers import ServerSpec, free_port, python_command

if TYPE_CHECKING:
    from service.bench.bodies import BodySet
    from service.bench.harness import BenchConfig

log = logging.getLogger(__name__)

EAGER, SAME_RUNTIME = "eager", "same runtime"
FAMILY_TITLES = {EAGER: "eager PyTorch, as the tutorials do",
                 SAME_RUNTIME: "the same int8 ONNX file as ours"}
SAME_RUNTIME_VARIANT = "onnx-int8"


@dataclass(frozen=True)
class PeerServer:
    """One server under test besides ours: a script in scripts/baselines/ and how to run it."""

    name: str
    script: str
    family: str
    venv: str | None = None  # a venv of its own (made by `make bench-peers`); None: the bench's
    ready_path: str = "/health"
    args: tuple[str, ...] = ()  # "{model_name}" is filled in
    # Measured in a run of its own, beside ours only: it takes CPU while idle and cannot be
    # paused meanwhile (Ray Serve: its controller's 10 Hz loop, GCS, agents; stopped, its
    # cluster misses heartbeats and answers seconds late once resumed).
    own_run: bool = False

    def python(self, config: BenchConfig) -> Path | None:
        return None if self.venv is None else config.venvs_dir / self.venv / "bin" / "python"


_V2_READY = "/v2/models/{model_name}/ready"
PEER_SERVERS: dict[str, PeerServer] = {server.name: server for server in (
    PeerServer("tutorial", "tutorial.py", EAGER),
    PeerServer("threadpool", "threadpool.py", EAGER),
    PeerServer("litserve", "litserve_server.py", EAGER),
    PeerServer("tutorial-int8", "tutorial.py", SAME_RUNTIME),
    PeerServer("threadpool-int8", "threadpool.py", SAME_RUNTIME),
    PeerServer("litserve-int8", "litserve_server.py", SAME_RUNTIME),
    PeerServer("triton", "triton_server.py", SAME_RUNTIME, ".venv-bench-triton", _V2_READY,
               ("--model-name", "{model_name}")),
    PeerServer("bentoml", "bentoml_service.py", SAME_RUNTIME, ".venv-bench-bentoml", "/readyz"),
    PeerServer("kserve", "kserve_server.py", SAME_RUNTIME, ".venv-bench-kserve", _V2_READY,
               ("--model-name", "{model_name}")),
    PeerServer("ray-serve", "ray_serve.py", SAME_RUNTIME, ".venv-bench-ray", own_run=True),
)}

# target -> (server, body set); body sets are service.bench.bodies' plus PEER_BODY_ROUTES'
TARGETS: dict[str, tuple[str, str]] = {
    "tutorial": ("tutorial", "json"),
    "threadpool": ("threadpool", "json"),
    "litserve": ("litserve", "json"),
    "tutorial-int8": ("tutorial-int8", "json"),
    "threadpool-int8": ("threadpool-int8", "json"),
    "litserve-int8": ("litserve-int8", "json"),
    "triton": ("triton", "v2"),
    "kserve": ("kserve", "v2"),
    "bentoml": ("bentoml", "json-rows"),
    "ray-serve": ("ray-serve", "json"),
    "tutorial-int8-png": ("tutorial-int8", "png-image"),
    "bentoml-png": ("bentoml", "png-bentoml"),
    "ray-serve-png": ("ray-serve", "png-image"),
}
# Each target against ours sending the same bodies: JSON, v2 protocol (the same digits), or the
# same PNG uploads (BentoML's batchable rows carry the JSON digits as one-row arrays).
REFERENCE: dict[str, str] = {
    target: {"json": "ours", "json-rows": "ours", "v2": "ours-v2"}.get(body, "ours-png")
    for target, (_, body) in TARGETS.items()
}
# The PNG uploads of the bench, sent to the peers' image routes (their names, not ours).
PEER_BODY_ROUTES = {"png-image": ("png", "/predict/image"),
                    "png-bentoml": ("png", "/predict_image")}


OWN_RUN_TARGETS = tuple(target for target, (server, _) in TARGETS.items()
                        if PEER_SERVERS[server].own_run)


def pausable(server: str) -> bool:
    """Whether the bench may SIGSTOP this server while it measures another (not own-run ones)."""
    return server not in PEER_SERVERS or not PEER_SERVERS[server].own_run


def family(target: str) -> str | None:
    """EAGER, SAME_RUNTIME, or None for our own targets."""
    server = TARGETS.get(target, (None, None))[0]
    return PEER_SERVERS[server].family if server in PEER_SERVERS else None


def peer_body_sets(sets: dict[str, BodySet]) -> dict[str, BodySet]:
    """The bench's PNG uploads again, addressed to the peers' image routes (one file)."""
    return {name: dataclasses.replace(sets[source], name=name, route=route, digits=source)
            for name, (source, route) in PEER_BODY_ROUTES.items() if source in sets}


def missing_venvs(servers: set[str], config: BenchConfig) -> list[str]:
    """The wanted peers whose venv is not there, as messages that say how to make it."""
    missing = []
    for name in sorted(servers & set(PEER_SERVERS)):
        python = PEER_SERVERS[name].python(config)
        if python is not None and not python.exists():
            missing.append(f"{name} needs {python} (run `make bench-peers` in the project "
                           "folder, or leave it out of --targets)")
    return missing


def specs(config: BenchConfig, same_runtime_file: Path | None) -> dict[str, ServerSpec]:
    """A ServerSpec for every peer server; same-runtime ones need the int8 ONNX file."""
    checkpoint = str(config.checkpoint.resolve())
    result = {}
    for server in PEER_SERVERS.values():
        port = free_port()
        script = str(config.baselines / server.script)
        fill = {"model_name": config.model_name}
        extra = [arg.format(**fill) for arg in server.args]
        if server.family == EAGER:
            runtime = ["--checkpoint", checkpoint]
        elif same_runtime_file is None:
            continue
        elif server.venv is None:  # a baseline, run by the bench's own interpreter
            runtime = ["--runtime", SAME_RUNTIME_VARIANT, "--onnx", str(same_runtime_file)]
        else:
            runtime = ["--onnx", str(same_runtime_file)]
        python = server.python(config)
        command = ([str(python), script] if python is not None else python_command(script))
        result[server.name] = ServerSpec(
            server.name, [*command, *runtime, *extra, "--port", str(port)], port,
            server.ready_path.format(**fill), env=dict(PEER_ENV),
        )
    return result


# Keep the peers from phoning home (no network here, and none wanted in a measurement).
PEER_ENV = {"BENTOML_DO_NOT_TRACK": "true", "RAY_USAGE_STATS_ENABLED": "0"}


def same_runtime_file(registry: Path, model_name: str, alias: str = "production") -> dict[str, Any]:
    """The int8 ONNX file the release published with the version ours serves, and the runtime
    the release chose for ours ({"path", "ours_runtime"}): ours serves that very file when the
    release chose onnx-int8 (as on every CPU measured so far, docs/benchmarks/runtimes.md).
    A release that found int8 short of its bars publishes no such file: it is exported then
    from the same checkpoint the way the release does (a cache folder; the same bytes)."""
    from service.inference.export import ensure_artifact
    from service.ml.checkpoint import load_checkpoint
    from service.registry import open_registry

    opened = open_registry(registry, model_name)
    chosen = str(opened.card(alias).get("runtimes", {}).get("chosen", "unknown"))
    path = ensure_artifact(load_checkpoint(opened.checkpoint_path(alias)), SAME_RUNTIME_VARIANT)
    if chosen != SAME_RUNTIME_VARIANT:
        log.warning("ours serves %s here, not %s: the same-runtime rows still serve the int8 "
                    "ONNX file (the report says so)", chosen, SAME_RUNTIME_VARIANT)
    return {"path": path, "ours_runtime": chosen}
