"""``lab2prod evaluate``: the evaluation notebook's parameters as flags, the same package code."""

from __future__ import annotations

import argparse
import sys

from service.ml.checkpoint import CheckpointError
from service.ml.data import DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint (same code and record as notebooks/evaluate.ipynb)",
        description="Evaluate a checkpoint (and optionally the champion) on the same test digits "
        "and write <run-dir>/evaluation.json.",
    )
    parser.add_argument("--run-dir", default="runs/notebook")
    parser.add_argument("--checkpoint", default="", help="'' = <run-dir>/model.safetensors")
    parser.add_argument(
        "--champion-checkpoint", default="", help="the serving champion, evaluated on the same data"
    )
    parser.add_argument("--dataset", default="", help="'' = the dataset recorded in the checkpoint")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--test-limit", type=int, default=0, help="0 = the whole test split")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--sample-size",
        type=int,
        default=32,
        help="first N test digits whose predictions are recorded",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from service.ml.evaluate import EvaluateConfig, evaluate, write_evaluation

    try:
        config = EvaluateConfig(
            run_dir=args.run_dir,
            checkpoint=args.checkpoint,
            champion_checkpoint=args.champion_checkpoint,
            dataset=args.dataset,
            data_dir=args.data_dir,
            test_limit=args.test_limit,
            device=args.device,
            batch_size=args.batch_size,
            sample_size=args.sample_size,
        )
        result = evaluate(config)
        path = write_evaluation(result)
    except (DataError, CheckpointError, ValueError) as exc:
        print(f"lab2prod evaluate: error: {exc}", file=sys.stderr)
        return 2
    for role in ("candidate", "champion"):
        metrics = result.record[role]
        if metrics:
            print(
                f"{role}: accuracy {metrics['accuracy']:.2%}  loss {metrics['loss']:.4f}  "
                f"ECE {metrics['ece']:.4f}  latency {metrics['latency_ms']['batch_1']:.2f} ms "
                f"(batch 1), {metrics['latency_ms']['batch_32']:.2f} ms (batch 32)  "
                f"[{metrics['checkpoint']}]"
            )
    print(f"wrote {path}")
    return 0
