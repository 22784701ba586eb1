"""``lab2prod bench --check-peers``: every same-runtime server started on its own, one request per
target (each body set it is measured with), its digit checked against the int8 ONNX file's own
answer, its memory read, and stopped: two or three minutes, where the whole bench takes 26.

A smoke check of the peers' venvs and scripts, outside pytest on purpose: the peers' frameworks
live in venvs that ``make bench-peers`` builds, not in the test environment.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from service.bench import bodies as bodies_module
from service.bench import peers
from service.bench.servers import Server
from service.bench.wrk import BenchError

log = logging.getLogger(__name__)


@dataclass
class CheckResult:
    target: str
    ok: bool
    detail: str
    ready_s: float = 0.0
    pss_mib: float = 0.0
    processes: int = 0


def answered_digit(payload: Any) -> int:
    """The digit in any of the answers the servers give: ours and the JSON peers' ``digit``, a
    batchable API's one-row list, the v2 protocol's probabilities tensor."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    if isinstance(payload, dict) and "digit" in payload:
        return int(payload["digit"])
    if isinstance(payload, dict) and payload.get("outputs"):
        return int(np.argmax(payload["outputs"][0]["data"]))
    raise BenchError(f"no digit in the answer {str(payload)[:200]}")


def _onnx_model(baselines: Path) -> ModuleType:
    """scripts/baselines/onnx_model.py, the peers' own loading and decoding."""
    spec = importlib.util.spec_from_file_location("onnx_model", baselines / "onnx_model.py")
    if spec is None or spec.loader is None:
        raise BenchError(f"{baselines / 'onnx_model.py'} is missing")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_digits(sets: dict[str, bodies_module.BodySet], onnx: Path,
                    baselines: Path) -> dict[str, int]:
    """The digit the ONNX file gives for each set's first body (uploads decoded as the peers do)."""
    helpers = _onnx_model(baselines)
    model = helpers.OnnxDigits(str(onnx))
    first_json = json.loads(bodies_module.read_bodies(sets["json"].path)[0])["pixels"]
    upload = bodies_module.read_bodies(sets["png"].path)[0]
    boundary = sets["png"].content_type.partition("boundary=")[2].encode()
    from service.api.inputs import single_file_part

    part = single_file_part(upload, boundary)
    if part is None:
        raise BenchError("the bench's PNG body is not one file upload")
    json_digit = int(model.probabilities(np.asarray(first_json)).argmax())
    png_digit = int(model.probabilities(helpers.pixels_from_upload(part[0])).argmax())
    return {name: png_digit if body.sequence == "png" else json_digit
            for name, body in sets.items()}


def check(config: Any, servers: list[str], onnx: Path) -> list[CheckResult]:
    """Start each server in turn, send one body of each of its targets, stop it."""
    work = config.work_dir / "check-peers"
    sets = bodies_module.build_body_sets(work / "bodies", distinct=4, png_count=2, batch_bodies=1,
                                         batch_items=2, model_name=config.model_name)
    sets.update(peers.peer_body_sets(sets))
    expected = expected_digits(sets, onnx, config.baselines)
    specs = peers.specs(config, onnx)
    results = []
    for name in servers:
        targets = [t for t, (server, _) in peers.TARGETS.items() if server == name]
        log.info("starting %s for %s", name, ", ".join(targets))
        started = time.monotonic()
        server = Server(specs[name], config.server_cpu, work / "logs")
        try:
            server.start().wait_ready()
            ready_s = time.monotonic() - started
            memory = server.memory()
            for target in targets:
                body_set = sets[peers.TARGETS[target][1]]
                results.append(_one(server, target, body_set, expected[body_set.name], ready_s,
                                    memory))
        except BenchError as exc:
            results += [CheckResult(t, False, str(exc).splitlines()[0]) for t in targets]
        finally:
            server.stop()
    return results


def _one(server: Server, target: str, body_set: bodies_module.BodySet, expected: int,
         ready_s: float, memory: dict[str, int]) -> CheckResult:
    body = bodies_module.read_bodies(body_set.path)[0]
    request = urllib.request.Request(server.spec.url + body_set.route, data=body, method="POST",
                                     headers={"Content-Type": body_set.content_type})
    pss, processes = memory["pss_bytes"] / 2**20, memory["processes"]
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            digit = answered_digit(json.loads(reply.read()))
    except Exception as exc:
        return CheckResult(target, False, f"{body_set.route}: {exc}", ready_s, pss, processes)
    ok = digit == expected
    detail = f"{body_set.name} on {body_set.route}: digit {digit}" + (
        "" if ok else f", the ONNX file says {expected}")
    return CheckResult(target, ok, detail, ready_s, pss, processes)


def table(results: list[CheckResult]) -> str:
    lines = ["| target | answer | ok | ready after s | PSS MiB | processes |",
             "|---|---|:---:|---:|---:|---:|"]
    lines += [f"| {r.target} | {r.detail} | {'yes' if r.ok else '**no**'} | {r.ready_s:.1f} | "
              f"{r.pss_mib:,.0f} | {r.processes} |" for r in results]
    return "\n".join(lines)
