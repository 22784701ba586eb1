"""``lab2prod bench``: our service against the usual ways of serving this model, in one run.

Starts every server itself (ours through ``lab2prod serve`` on a temporary registry holding the
checkpoint; the tutorial, threadpool and LitServe baselines from scripts/baselines/), pins each
to one core with taskset, drives it with wrk pinned to the other core at each concurrency in
interleaved rounds, and writes results.json, results.md and results.png to --out.

``--runtimes`` instead measures the inference runtime variants (latency on one thread,
accuracy, agreement with eager) and writes runtimes.json and runtimes.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from service.settings import get_settings


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark the service against the baselines (or the runtimes)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runtimes", action="store_true",
                        help="measure the inference runtime variants instead of HTTP serving")
    parser.add_argument("--checkpoint", help="checkpoint to serve (default: the registry's "
                        "production model, else one trained briefly on mnist-5k)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"),
                        help="where results go (default docs/benchmarks)")
    parser.add_argument("--work-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "lab2prod-bench",
                        help="scratch space: registry, request bodies, logs")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="--runtimes: seconds of calls per variant and batch size")
    parser.add_argument("--variants", help="--runtimes: comma-separated names (default all)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = get_settings()
    from service.bench.model import bench_checkpoint
    from service.ml.checkpoint import CheckpointError

    try:
        checkpoint, source = bench_checkpoint(
            args.checkpoint, settings.registry_url, settings.model_name, settings.model_alias,
            args.work_dir,
        )
    except CheckpointError as exc:
        print(f"lab2prod bench: {exc}", file=sys.stderr)
        return 2
    if args.runtimes:
        from service.bench import runtimes

        names = [n.strip() for n in args.variants.split(",")] if args.variants else None
        data = runtimes.run(checkpoint, source, args.out, seconds=args.seconds, names=names)
        print(runtimes.markdown(data))
        if not data["code_agrees"]:
            print(f"note: the measurement chose {data['chosen']!r} but runtime.AUTO_PREFERENCE_CPU "
                  f"starts with {data['auto_preference_cpu'][0]!r}; update it", file=sys.stderr)
        return 0
    print("lab2prod bench: the HTTP harness is not built yet; use --runtimes", file=sys.stderr)
    return 2
