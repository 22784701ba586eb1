"""``lab2prod train``: the training notebook's parameters as flags, the same package code."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from service.ml.checkpoint import CheckpointError
from service.ml.data import DataError, dataset_names
from service.ml.train import TrainConfig

DEFAULTS = asdict(TrainConfig())  # the recipe's defaults, defined once (train.ipynb matches them)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the CNN (same code and records as notebooks/train.ipynb)",
        description="Train the MNIST CNN and write <run-dir>/model.safetensors and train.json.",
    )
    parser.add_argument("--dataset", default=DEFAULTS["dataset"], choices=dataset_names())
    parser.add_argument(
        "--data-dir",
        default=DEFAULTS["data_dir"],
        help="folder with the IDX files ('' = the dataset's default location)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="fetch mnist/fashion-mnist through torchvision (needs internet)",
    )
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    parser.add_argument("--gamma", type=float, default=DEFAULTS["gamma"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--device", default=DEFAULTS["device"], help="auto, cpu or cuda[:N]")
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULTS["limit"],
        help="0 = all training examples; N = a seeded subset",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="small random rotations, shifts and scaling on the fly",
    )
    parser.add_argument("--run-dir", default=DEFAULTS["run_dir"])
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from service.ml.train import train, write_run

    try:
        config = TrainConfig(
            dataset=args.dataset,
            data_dir=args.data_dir,
            download=args.download,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            gamma=args.gamma,
            seed=args.seed,
            device=args.device,
            limit=args.limit,
            augment=args.augment,
            run_dir=args.run_dir,
        )
        result = train(config, progress=not args.quiet)
        run_dir = write_run(result)
    except (DataError, CheckpointError, ValueError) as exc:
        print(f"lab2prod train: error: {exc}", file=sys.stderr)
        return 2
    metrics = result.record["metrics"]
    print(
        f"test accuracy {metrics['test_accuracy']:.2%} after {config.epochs} epochs on "
        f"{result.record['device']} ({metrics['images_per_second']:,.0f} images/s); "
        f"wrote {run_dir}/model.safetensors and {run_dir}/train.json"
    )
    return 0
