"""The runtime benchmark: every variant's latency on one thread, accuracy and agreement with
eager on the test split, and the choice of ``runtime="auto"`` that follows from them.

Rule (issue 6): the default is the fastest variant at batch 32 whose test accuracy is within
0.2 points of eager's and whose predictions agree with eager's on at least 99.5% of digits.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.inference.export import MAX_ACCURACY_DROP_POINTS, MIN_AGREEMENT
from service.inference.runtime import (
    AUTO_PREFERENCE_CPU,
    EagerRuntime,
    RuntimeUnavailable,
    build_runtime,
    resolve_device,
    runtime_names,
)
from service.ml.checkpoint import load_checkpoint
from service.ml.preprocess import normalize

log = logging.getLogger(__name__)


@dataclass
class RuntimeResult:
    name: str
    built: str  # the variant that actually ran (compile may fall back to eager)
    build_s: float
    b1_us: float  # median latency of one call with one digit
    b32_us_per_image: float  # median latency of one call with 32 digits, divided by 32
    b32_images_per_s: float
    accuracy: float
    agreement: float  # share of test digits on which the variant predicts what eager does
    disagreements: int
    accuracy_drop_points: float
    eligible: bool
    error: str = ""


def _median_call_us(runtime: Any, batches: list[torch.Tensor], seconds: float) -> float:
    """Median wall time of one predict_proba call over distinct batches, for about ``seconds``."""
    for batch in batches[:3]:
        runtime.predict_proba(batch)
    timings: list[float] = []
    deadline = time.perf_counter() + seconds
    index = 0
    while time.perf_counter() < deadline or len(timings) < 20:
        batch = batches[index % len(batches)]
        started = time.perf_counter_ns()
        runtime.predict_proba(batch)
        timings.append((time.perf_counter_ns() - started) / 1000.0)
        index += 1
    return statistics.median(timings)


def measure_runtimes(
    checkpoint_path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    names: list[str] | None = None,
    seconds: float = 2.0,
    device: str = "cpu",
) -> list[RuntimeResult]:
    """Measure each named variant (all registered ones by default) on ``images``/``labels``."""
    target = resolve_device(device)
    checkpoint = load_checkpoint(checkpoint_path, device=target)
    inputs = normalize(images, checkpoint.normalization)
    eager = EagerRuntime(checkpoint.model, target)
    reference = _predict_all(eager, inputs).argmax(1)
    eager_accuracy = float((reference == labels).mean())
    singles = [inputs[i:i + 1].clone() for i in range(min(len(inputs), 256))]
    thirty_twos = [inputs[i:i + 32].clone() for i in range(0, len(inputs) - 31, 32)]
    results: list[RuntimeResult] = []
    for name in names or [n for n in runtime_names() if n != "auto"]:
        log.info("runtime %s: building", name)
        started = time.perf_counter()
        try:
            runtime = build_runtime(checkpoint, name, target)
        except (RuntimeUnavailable, ImportError, OSError, ValueError) as exc:
            results.append(RuntimeResult(name, "", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0,
                                         False, f"{type(exc).__name__}: {exc}"))
            continue
        build_s = time.perf_counter() - started
        predictions = _predict_all(runtime, inputs).argmax(1)
        accuracy = float((predictions == labels).mean())
        agree = predictions == reference
        b1 = _median_call_us(runtime, singles, seconds)
        b32 = _median_call_us(runtime, thirty_twos, seconds) / 32
        drop = round((eager_accuracy - accuracy) * 100.0, 4)
        results.append(RuntimeResult(
            name=name, built=runtime.name, build_s=round(build_s, 3), b1_us=round(b1, 1),
            b32_us_per_image=round(b32, 1), b32_images_per_s=round(1e6 / b32, 0),
            accuracy=accuracy, agreement=float(agree.mean()), disagreements=int((~agree).sum()),
            accuracy_drop_points=drop,
            eligible=bool(drop <= MAX_ACCURACY_DROP_POINTS + 1e-9
                          and agree.mean() >= MIN_AGREEMENT),
        ))
        log.info("runtime %s: b1 %.0f us, b32 %.0f us/image", name, b1, b32)
    return results


def choose_default(results: list[RuntimeResult]) -> str:
    """The fastest eligible variant at batch 32 (only variants that really ran as themselves)."""
    eligible = [r for r in results if r.eligible and r.built == r.name]
    if not eligible:
        return "eager"
    return min(eligible, key=lambda r: r.b32_us_per_image).name


def _predict_all(runtime: Any, inputs: torch.Tensor, size: int = 250) -> np.ndarray:
    return np.concatenate(
        [runtime.predict_proba(inputs[i:i + size]) for i in range(0, len(inputs), size)]
    )


def report(results: list[RuntimeResult], context: dict[str, Any]) -> dict[str, Any]:
    chosen = choose_default(results)
    return {
        "context": context,
        "rule": (f"fastest at batch 32 with accuracy within {MAX_ACCURACY_DROP_POINTS} points of "
                 f"eager and agreement >= {MIN_AGREEMENT:.1%}"),
        "chosen": chosen,
        "auto_preference_cpu": list(AUTO_PREFERENCE_CPU),
        "code_agrees": chosen == AUTO_PREFERENCE_CPU[0],
        "results": [asdict(r) for r in results],
    }


def markdown(data: dict[str, Any]) -> str:
    context = data["context"]
    eager = next((r for r in data["results"] if r["name"] == "eager"), None)
    lines = [
        "# Inference runtimes",
        "",
        f"Checkpoint: {context.get('trained', 'as given')}; test split "
        f"{context['dataset']} ({context['test_size']} digits). One thread "
        f"(torch.set_num_threads(1), ONNX Runtime intra_op 1), pinned to CPU {context['cpu']}; "
        f"median of calls over {context['seconds']} s per batch size. {context.get('note', '')}",
        "",
        "| runtime | batch 1 (µs) | batch 32 (µs/image) | images/s at 32 | vs eager | "
        "accuracy | agreement with eager | eligible |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in data["results"]:
        if r["error"]:
            lines.append(f"| {r['name']} | — | — | — | — | — | — | unavailable: {r['error']} |")
            continue
        speedup = eager["b32_us_per_image"] / r["b32_us_per_image"] if eager else float("nan")
        ran = "" if r["built"] == r["name"] else f" (ran as {r['built']})"
        lines.append(
            f"| {r['name']}{ran} | {r['b1_us']:.0f} | {r['b32_us_per_image']:.0f} | "
            f"{r['b32_images_per_s']:.0f} | {speedup:.2f}x | {r['accuracy']:.2%} | "
            f"{r['agreement']:.1%} ({r['disagreements']} differ) | "
            f"{'yes' if r['eligible'] else 'no'} |"
        )
    lines += ["", f"Rule: {data['rule']}. **Chosen for `runtime=\"auto\"` on CPU: "
              f"`{data['chosen']}`** (fallback order when it cannot be built: "
              f"{' → '.join(data['auto_preference_cpu'])}). On CUDA, `auto` is `eager`.", ""]
    return "\n".join(lines)


def run(
    checkpoint_path: Path, source: str, out_dir: Path, *, seconds: float = 2.0, cpu: int | None = 0,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Measure on one thread (pinned to ``cpu`` when given), write runtimes.{json,md}."""
    import json
    import os
    import platform

    from service.ml.data import load_dataset

    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    dataset = load_dataset("mnist-5k")
    results = measure_runtimes(checkpoint_path, dataset.test_images, dataset.test_labels,
                               names=names, seconds=seconds)
    data = report(results, {
        "checkpoint": str(checkpoint_path), "trained": source, "dataset": "mnist-5k",
        "test_size": len(dataset.test_labels), "cpu": cpu, "seconds": seconds,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "note": "Other work shared the machine; compare ratios, not absolute numbers.",
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "runtimes.json").write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / "runtimes.md").write_text(markdown(data))
    return data
