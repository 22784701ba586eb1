"""``lab2prod bench --runtimes``: every registered runtime variant measured for one checkpoint.

The same measurement a release makes for the model it publishes (``inference.selection``: speed
at batch 1 and 32 on one thread, agreement and accuracy against eager on the mnist-5k test
split), here for every registered variant, ``compile`` included, with longer timings, pinned to
one core, written to docs/benchmarks/runtimes.{json,md}. Releases do not read this file: each
one measures its own model on its own machine. It documents the variants, and the order
``auto`` tries for a version released on another kind of device (``AUTO_PREFERENCE_CPU``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from service.inference.runtime import AUTO_PREFERENCE_CPU, RUNTIMES
from service.inference.selection import select_runtime
from service.inference.verification import EXACT_PROBABILITY_DIFF, RuntimeCriteria
from service.ml.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def run(
    checkpoint_path: Path, source: str, out_dir: Path, *, seconds: float = 2.0, cpu: int | None = 0,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Measure on one thread (pinned to ``cpu`` when given), write runtimes.{json,md}."""
    from service.ml.data import load_dataset

    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    dataset = load_dataset("mnist-5k")
    selection, _ = select_runtime(
        load_checkpoint(checkpoint_path), dataset.test_images, dataset.test_labels,
        criteria=RuntimeCriteria(), threads=1, seconds=seconds, names=names or list(RUNTIMES),
    )
    data = {
        "context": {
            "checkpoint": str(checkpoint_path), "trained": source, "dataset": "mnist-5k",
            "cpu": cpu, "seconds": seconds, "torch": torch.__version__,
            "note": "Other work shared the machine; compare ratios, not absolute numbers.",
        },
        **selection.as_dict(),
        "summary": selection.explain(),
        "auto_preference_cpu": list(AUTO_PREFERENCE_CPU),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "runtimes.json").write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / "runtimes.md").write_text(markdown(data))
    return data


def markdown(data: dict[str, Any]) -> str:
    """The measurement as a table, eager as the 1.00x reference."""
    context, machine = data["context"], data["machine"]
    eager = next((v for v in data["variants"] if v["name"] == "eager"), None)
    eager_speed = (eager or {}).get("images_per_s", {}).get("batch_32") or float("nan")
    lines = [
        "# Inference runtimes",
        "",
        f"Checkpoint: {context.get('trained', 'as given')}; {context['dataset']} test split "
        f"({data['digits']} digits); {machine['model']} ({', '.join(machine['features'])}), "
        f"one thread pinned to CPU {context['cpu']}; median of calls over {context['seconds']} s "
        f"per batch size. {context.get('note', '')}",
        "",
        "| runtime | images/s at 1 | images/s at 32 | vs eager | agreement with eager | "
        "accuracy drop | max abs dp | status |",
        "|---|---:|---:|---:|---:|---:|---:|:---|",
    ]
    for variant in data["variants"]:
        agreement, speed = variant["agreement"], variant["images_per_s"]
        if agreement is None:
            lines.append(f"| {variant['name']} | — | — | — | — | — | — | "
                         f"{variant['status']}: {'; '.join(variant['reasons'])} |")
            continue
        status = variant["status"] + (f": {'; '.join(variant['reasons'])}"
                                      if variant["reasons"] else "")
        lines.append(
            f"| {variant['name']} | {speed['batch_1']:,.0f} | {speed['batch_32']:,.0f} | "
            f"{speed['batch_32'] / eager_speed:.2f}x | {agreement['agreement']:.1%} "
            f"({agreement['disagreements']} differ) | {agreement['accuracy_drop']:+.4f} | "
            f"{agreement['max_probability_diff']:.1e} | {status} |"
        )
    lines += [
        "",
        f"Bars (the default release policy): {RuntimeCriteria(**data['criteria']).describe()}; "
        f"an inexact variant (max |dp| above {EXACT_PROBABILITY_DIFF:g}: int8) ranks ahead of "
        f"an exact one only when {data['min_inexact_speedup']:g}x as fast at batch 32. "
        f"With these figures `RUNTIME=auto` would serve **`{data['chosen']}`** (chain: "
        f"{' → '.join(data['chain'])}). A release measures its own model the same way, on the "
        "machine it runs on, and serving verifies the choice on its own machine "
        "(docs/runtime-selection.md). Order tried for a version measured on another kind of "
        f"device: {' → '.join(data['auto_preference_cpu'])}.",
        "",
    ]
    return "\n".join(lines)
