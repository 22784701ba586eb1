"""The evidence behind drift monitoring's alert rule and its cost (docs/drift.md quotes a run).

Trains the tests' model (mnist-5k, 1,000 training digits, 2 epochs, seed 0: about 90% right) and
records its drift reference on 1,000 other mnist-5k training digits it never saw, 100 per class,
as a release records one on its evaluation split. Then, with ``monitoring.drift.compare``:

1. *noise*: windows of 100, 300 and 1,000 real MNIST digits drawn from the same source (the test
   split and the remaining unseen training digits): how often PSI alone, the test alone and the
   rule would call them drifted;
2. *shifts*: 1,000 mnist-5k test digits as they are, changed a little (brighter, blurred,
   bolder, off-centre) and changed a lot (Fashion-MNIST, inverted contrast);
3. *cost*: what ``VersionDrift.observe`` adds to the request path per digit, what the drain
   costs off it, and the eager forward pass for scale, on one thread.

    .venv/bin/python scripts/drift_experiment.py        # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import timeit
from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage

from service.inference.runtime import EagerRuntime
from service.ml.data import load_dataset
from service.ml.preprocess import normalize
from service.ml.train import TrainConfig, train
from service.monitoring.drift import P_ALERT, PSI_ALERT, compare
from service.monitoring.monitor import DriftMonitor
from service.monitoring.reference import DriftReference
from service.monitoring.signals import digit_signals

WINDOWS, DRAWS = (100, 300, 1000), 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=DRAWS, help="windows drawn per size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as run_dir:
        trained = train(TrainConfig(dataset="mnist-5k", limit=1000, epochs=2, seed=0,
                                    device="cpu", run_dir=run_dir), progress=False)
    runtime = EagerRuntime(trained.model.eval(), torch.device("cpu"))

    def signals(images: np.ndarray) -> np.ndarray:
        probabilities = np.asarray(runtime.predict_proba(normalize(images)), dtype=np.float32)
        return digit_signals(images, probabilities)

    everything = load_dataset("mnist-5k")
    seen = {image.tobytes() for image in trained.dataset.train_images}
    unseen = np.array([i for i, image in enumerate(everything.train_images)
                       if image.tobytes() not in seen])
    labels = everything.train_labels[unseen]
    chosen = np.concatenate([unseen[labels == label][:100] for label in range(10)])
    reference = DriftReference.build(signals(everything.train_images[chosen]), 10, "sha256:-")
    others = everything.train_images[np.setdiff1d(unseen, chosen)]
    noise(reference, signals(np.concatenate([everything.test_images, others])), args.draws)
    shifts(reference, signals, everything.test_images)
    cost(reference, runtime, everything.test_images)


def noise(reference: DriftReference, pool: np.ndarray, draws: int) -> None:
    rng = np.random.default_rng(0)
    print(f"\n## Windows of real MNIST digits from the reference's source ({draws} per size, "
          f"from {len(pool)} digits)\n")
    print("| window | largest PSI: median, 95th pct | PSI >= 0.25 | p < 0.002 | watch | alert |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in WINDOWS:
        largest, high, significant, verdicts = [], 0, 0, []
        for _ in range(draws):
            report = compare(reference, pool[rng.choice(len(pool), size, replace=False)], size)
            largest.append(max(signal.psi for signal in report.signals))
            high += largest[-1] >= PSI_ALERT
            significant += min(signal.p_value for signal in report.signals) < P_ALERT
            verdicts.append(report.verdict)
        print(f"| {size:,} | {np.median(largest):.3f}, {np.percentile(largest, 95):.3f} | "
              f"{high / draws:.1%} | {significant / draws:.1%} | "
              f"{verdicts.count('watch') / draws:.1%} | {verdicts.count('alert') / draws:.1%} |")


def shifts(reference: DriftReference, signals: Callable[[np.ndarray], np.ndarray],
           digits: np.ndarray) -> None:
    levels = digits.astype(np.float32)
    cases = {
        "MNIST test digits": levels,
        "strokes 15% brighter": levels * 1.15,
        "blurred (Gaussian, sigma 0.5 px)": np.stack([ndimage.gaussian_filter(d, 0.5)
                                                      for d in levels]),
        "bolder (grey dilation, 2x2)": np.stack([ndimage.grey_dilation(d, size=(2, 2))
                                                 for d in levels]),
        "off-centre (2 px right)": np.roll(levels, 2, axis=2),
        "Fashion-MNIST test images": load_dataset("fashion-mnist", test_limit=1000)
        .test_images.astype(np.float32),
        "MNIST test digits, inverted contrast": 255 - levels,
    }
    print("\n## 1,000 inputs against the reference: PSI / p per signal\n")
    names = [signal.name for signal in compare(reference, signals(digits), 1000).signals]
    print(f"| inputs | verdict | {' | '.join(names)} |")
    print("|---|---|" + "---:|" * len(names))
    for case, images in cases.items():
        report = compare(reference, signals(np.rint(images).clip(0, 255).astype(np.uint8)), 1000)
        figures = " | ".join(f"{s.psi:.3f} / {s.p_value:.1e}" for s in report.signals)
        print(f"| {case} | {report.verdict} | {figures} |")


def per_digit_us(call: Callable[[], object], digits: int, number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=7)) / number / digits * 1e6


def cost(reference: DriftReference, runtime: EagerRuntime, images: np.ndarray) -> None:
    probabilities = np.asarray(runtime.predict_proba(normalize(images)), dtype=np.float32)
    print("\n## Cost per digit, one thread\n")
    print("| batch | observe (request path) | drain (off it) | eager forward pass |")
    print("|---:|---:|---:|---:|")
    monitor, loop = DriftMonitor(size=1000), asyncio.new_event_loop()
    for size in (1, 32):
        tracked = monitor.track("v1", reference)
        assert tracked is not None
        batch, rows = images[:size], probabilities[:size]
        observe = per_digit_us(lambda: tracked.observe(batch, rows), size, 2000)  # noqa: B023
        loop.run_until_complete(monitor.flush(tracked))
        pending = [(images[i:i + size], probabilities[i:i + size]) for i in range(0, 960, size)]

        def fill_and_drain() -> None:  # the drain as serving runs it, chunk by chunk
            for digits, found in pending:  # noqa: B023
                tracked.observe(digits, found)  # noqa: B023
            loop.run_until_complete(monitor.flush(tracked))  # noqa: B023

        drain = per_digit_us(fill_and_drain, 960, 5) - observe
        inputs = normalize(batch)
        forward = per_digit_us(lambda: runtime.predict_proba(inputs), size, 50)  # noqa: B023
        print(f"| {size} | {observe:.2f} us | {drain:.2f} us | {forward:.0f} us |")


if __name__ == "__main__":
    main()
