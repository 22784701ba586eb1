"""What drift monitoring costs per digit, on this machine (docs/drift.md quotes a run):

- on the request path, ``VersionDrift.observe`` (the inference thread keeps the batch);
- off it, ``VersionDrift.drain`` (the signals of everything buffered, once a second);
- for scale, the forward pass of the eager CNN on one thread at the same batch size.

    python scripts/drift_cost.py            # mnist-5k test digits, an untrained CNN
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np
import torch

from service.inference.runtime import EagerRuntime
from service.ml.data import load_dataset
from service.ml.model import build_model
from service.ml.preprocess import normalize
from service.monitoring.monitor import VersionDrift
from service.monitoring.reference import DriftReference
from service.monitoring.signals import digit_signals


def per_digit_us(call, digits: int, repeat: int = 7, number: int = 200) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number / digits * 1e6


def measure(size: int, images: np.ndarray, probabilities: np.ndarray,
            reference: DriftReference, runtime: EagerRuntime) -> tuple[float, float, float]:
    """Microseconds per digit at batch ``size``: observe, drain, forward pass."""
    batch, rows = images[:size], probabilities[:size]
    tracked = VersionDrift("v1", reference, size=1000)
    observe = per_digit_us(lambda: tracked.observe(batch, rows), size, number=2000)
    tracked.drain()
    pending = [(images[i:i + size], probabilities[i:i + size]) for i in range(0, 960, size)]

    def fill_and_drain() -> None:
        for digits, found in pending:
            tracked.observe(digits, found)
        tracked.drain()

    queued = sum(len(digits) for digits, _ in pending)
    drain = per_digit_us(fill_and_drain, queued, number=5) - observe
    inputs = normalize(batch)
    forward = per_digit_us(lambda: runtime.predict_proba(inputs), size, number=50)
    return observe, drain, forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = load_dataset("mnist-5k").test_images
    runtime = EagerRuntime(build_model("mnist-cnn").eval(), torch.device("cpu"))
    probabilities = np.asarray(runtime.predict_proba(normalize(images)), dtype=np.float32)
    reference = DriftReference.build(digit_signals(images, probabilities), 10, "sha256:-")
    print("| batch | observe (request path) | drain (off it) | eager forward | observe/forward |")
    print("|---:|---:|---:|---:|---:|")
    for size in args.batches:
        observe, drain, forward = measure(size, images, probabilities, reference, runtime)
        print(f"| {size} | {observe:.2f} us | {drain:.2f} us | {forward:.1f} us |"
              f" {observe / forward:.2%} |")


if __name__ == "__main__":
    main()
