"""Training speed on this machine: ``service.ml.train`` against the plain PyTorch recipe loop.

The baseline is the recipe as usually written: a DataLoader over a TensorDataset of the same
normalised digits, batch 64, shuffled, Adadelta, NLL loss. Both loops train the same model on
the same data with the same threads; only the training pass is timed (no evaluation). Rounds
alternate which loop goes first, so a noisy shared CPU hurts both alike; the medians are
compared.

    .venv/bin/python scripts/bench_training.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

# service.ml first: it sets torch's OpenMP wait policy, which must happen before torch loads.
from service.ml.data import load_dataset  # isort: skip
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from service.ml.model import build_model
from service.ml.preprocess import normalize
from service.ml.train import TrainConfig, configure_threads, train


def baseline_epoch(images: torch.Tensor, labels: torch.Tensor, seed: int, batch_size: int) -> float:
    """One epoch of the plain recipe loop; returns images/s of the training pass."""
    torch.manual_seed(seed)
    model = build_model("mnist-cnn", num_classes=10)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True)
    model.train()
    start = time.perf_counter()
    for data, target in loader:
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
    return len(labels) / (time.perf_counter() - start)


def ours_epoch(config: TrainConfig, dataset) -> float:
    result = train(config, progress=False, dataset=dataset)
    return result.epochs[0]["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--limit", type=int, default=0, help="0 = the whole training split")
    parser.add_argument("--rounds", type=int, default=3, help="epochs of each loop")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", default="", help="also write the numbers to this file")
    args = parser.parse_args()

    threads = configure_threads(torch.device("cpu"))
    dataset = load_dataset(args.dataset, args.data_dir or None, limit=args.limit or None)
    images = normalize(dataset.train_images)
    labels = torch.as_tensor(dataset.train_labels)
    config = TrainConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        epochs=1,
        batch_size=args.batch_size,
        device="cpu",
        limit=args.limit,
    )
    print(
        f"{len(labels)} training digits of {args.dataset}, batch {args.batch_size}, "
        f"{threads} torch threads, torch {torch.__version__}"
    )

    baseline: list[float] = []
    ours: list[float] = []
    for round_index in range(args.rounds):
        order = ("baseline", "ours") if round_index % 2 == 0 else ("ours", "baseline")
        for name in order:
            if name == "baseline":
                baseline.append(baseline_epoch(images, labels, round_index, args.batch_size))
            else:
                ours.append(ours_epoch(config, dataset))
        print(
            f"round {round_index + 1}: baseline {baseline[-1]:8.0f} images/s   "
            f"service.ml.train {ours[-1]:8.0f} images/s"
        )
    summary = {
        "dataset": args.dataset,
        "train_size": len(labels),
        "threads": threads,
        "rounds": args.rounds,
        "baseline_images_per_second": statistics.median(baseline),
        "ours_images_per_second": statistics.median(ours),
        "baseline_rounds": baseline,
        "ours_rounds": ours,
    }
    ratio = summary["ours_images_per_second"] / summary["baseline_images_per_second"]
    print(
        f"median: baseline (DataLoader over TensorDataset) "
        f"{summary['baseline_images_per_second']:.0f} images/s, service.ml.train "
        f"{summary['ours_images_per_second']:.0f} images/s ({ratio:.2f}x)"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
