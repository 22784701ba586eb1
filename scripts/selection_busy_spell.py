"""How a busy spell of a shared machine skews a release's runtime timings: the variants timed one
after the other (``SPEED_ROUNDS=1``) against taking turns (``service.inference.selection``'s
``SPEED_ROUNDS``), each quiet and with a busy loop on the same core for part of the timings.

    .venv/bin/python scripts/selection_busy_spell.py runs/notebook/model.safetensors
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import time

from service.inference import selection
from service.inference.verification import RuntimeCriteria
from service.ml.checkpoint import load_checkpoint
from service.ml.data import load_dataset

VARIANTS = ["eager", "onnx", "onnx-int8"]
CORE = 1  # the release and the busy loop share it


def busy_spell(delay_s: float, seconds: float) -> None:
    os.sched_setaffinity(0, {CORE})
    time.sleep(delay_s)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spell-from", type=float, default=2.0,
                        help="seconds after the start (builds and comparisons come first)")
    parser.add_argument("--spell-for", type=float, default=1.2)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    os.sched_setaffinity(0, {CORE})
    checkpoint = load_checkpoint(args.checkpoint)
    data = load_dataset("mnist-5k", test_limit=1000)
    turns = selection.SPEED_ROUNDS
    lenient = RuntimeCriteria(min_agreement=0.9, max_accuracy_drop=0.05)
    for _ in range(args.repeats):
        for rounds in (1, turns):
            selection.SPEED_ROUNDS = rounds
            for spell in (False, True):
                loader = multiprocessing.Process(target=busy_spell, args=(
                    args.spell_from, args.spell_for if spell else 0.0))
                loader.start()
                measured, _ = selection.select_runtime(
                    checkpoint, data.test_images, data.test_labels, names=VARIANTS,
                    criteria=lenient)
                loader.join()
                speed = {variant.name: variant.speed for variant in measured.variants}
                figures = ", ".join(f"{name} {speed[name]:,.0f}" for name in VARIANTS)
                print(f"rounds={rounds} busy spell={'yes' if spell else 'no '}: {figures} "
                      f"images/s at batch 32; int8/fp32 {speed['onnx-int8'] / speed['onnx']:.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
