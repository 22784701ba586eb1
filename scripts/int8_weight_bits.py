"""Does this CPU need 7-bit int8 weights? Each checkpoint quantized with 8-bit and with 7-bit
weights, both compared with eager PyTorch on the checkpoint's whole test split, and timed.

``service.inference.export.quantize_onnx`` uses 7 bits (``reduce_range``) because CPUs without
VNNI sum uint8 x int8 pairs in int16, which saturates with full-range weights. On a CPU with VNNI
the 8th bit could only add precision; this measures whether it does (docs/runtime-selection.md).
Both files come from the same calibration digits; the speeds are the median of interleaved
rounds on one thread, as serving runs the model, so a noisy shared CPU hurts both alike.

    .venv/bin/python scripts/int8_weight_bits.py runs/notebook/model.safetensors
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from service.inference.export import calibration_digits, quantize_onnx
from service.inference.runtime import EagerRuntime, OnnxRuntime, onnx_session
from service.inference.verification import compare, predict_all
from service.ml.checkpoint import load_checkpoint
from service.ml.data import load_dataset
from service.ml.device import Device
from service.ml.preprocess import normalize_array
from service.ml.threads import set_compute_threads
from service.provenance import cpu_description

BATCH = 32
WEIGHT_BITS = (8, 7)  # quantize_onnx's weight_bits, each measured


def images_per_second(sessions: dict[str, OnnxRuntime], inputs: np.ndarray,
                      rounds: int) -> dict[str, float]:
    """Median images/s at batch 32 per variant, the variants taking turns round by round."""
    batches = [np.ascontiguousarray(inputs[start:start + BATCH])
               for start in range(0, min(len(inputs), 40 * BATCH) - BATCH + 1, BATCH)]
    speeds: dict[str, list[float]] = {label: [] for label in sessions}
    for _ in range(rounds):
        for label, session in sessions.items():
            for batch in batches[:3]:
                session.predict_proba(batch)
            timings = []
            for batch in batches:
                tick = time.perf_counter()
                session.predict_proba(batch)
                timings.append(time.perf_counter() - tick)
            speeds[label].append(BATCH / statistics.median(timings))
    return {label: statistics.median(values) for label, values in speeds.items()}


def measure(checkpoint_path: Path, rounds: int, work: Path) -> None:
    checkpoint = load_checkpoint(checkpoint_path)
    described = checkpoint.metadata.get("dataset") or {}
    dataset = load_dataset(described.get("name", "mnist-5k") if isinstance(described, dict)
                           else str(described))
    inputs = normalize_array(dataset.test_images, checkpoint.normalization)
    eager = predict_all(EagerRuntime(checkpoint.model, "cpu"), inputs)
    calibration = normalize_array(calibration_digits(checkpoint.metadata),
                                  checkpoint.normalization)
    sessions = {}
    for bits in WEIGHT_BITS:
        label = f"{bits}-bit"
        path = work / f"{checkpoint_path.parent.name}.{label}.onnx"
        quantize_onnx(checkpoint, path, calibration, weight_bits=bits)
        sessions[label] = onnx_session(path, Device("cpu"), "onnx-int8")
    speeds = images_per_second(sessions, inputs, rounds)
    for label, session in sessions.items():
        agreement = compare(eager, predict_all(session, inputs), dataset.test_labels)
        print(f"{checkpoint_path}  {label}: {agreement.summary()}; "
              f"{speeds[label]:,.0f} images/s at batch {BATCH}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="model.safetensors files")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds")
    args = parser.parse_args()
    set_compute_threads(1)  # eager and the sessions: one thread, as serving runs the model
    print(f"CPU: {cpu_description()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="lab2prod-bits-") as work:
        for path in args.checkpoints:
            measure(path, args.rounds, Path(work))


if __name__ == "__main__":
    main()
