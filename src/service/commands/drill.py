"""``lab2prod drill [NAME ...]``: failure drills, each on services of its own on 127.0.0.1.

Each drill starts what it needs (``lab2prod serve``, a worker, a private redis-server or
RabbitMQ node on free ports; shared instances are never touched), applies bounded load,
injects its failure and prints what it did and saw: requests sent, status counts, errors,
lost jobs, p50/p99 latency and a verdict against its expectation. Exit status 1 when any
drill's expectation fails (or it could not run), 0 when all pass.

The model served is --checkpoint, else the production model of --registry (REGISTRY_URL),
else one trained briefly (cached in --work-dir); each drill copies it into a registry of its
own, so a drill never changes a registry in use.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from service.drills import DRILLS
from service.settings import get_settings


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "drill", help="run failure drills (broker outage, Redis killed or frozen, broken "
        "version, slow headers, SIGTERM) against real processes",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="drills to run (default: all): " + ", ".join(DRILLS))
    parser.add_argument("--list", action="store_true", help="list the drills and exit")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    parser.add_argument("--duration", type=_positive,
                        help="seconds of load per drill (default: each drill's, 10-30 s; "
                        "big-header sends one header and takes none)")
    parser.add_argument("--rate", type=_positive,
                        help="requests per second (default: each drill's)")
    parser.add_argument("--outage", type=_positive,
                        help="seconds the failure lasts, where it ends (default: each drill's)")
    parser.add_argument("--checkpoint", help="checkpoint to serve (see above)")
    parser.add_argument("--registry", help="registry whose production model is served "
                        "(default: REGISTRY_URL); only read, never changed")
    parser.add_argument("--work-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "lab2prod-drills",
                        help="scratch space: the drills' registries, service data and logs")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from service.drills import get_drill

    if args.list:
        for name in DRILLS:
            drill = get_drill(name)
            print(f"{name:16} {drill.summary}\n{'':16} expect: {drill.expectation}")
        return 0
    unknown = [name for name in args.names if name not in DRILLS]
    if unknown:
        print(f"lab2prod drill: no drill {', '.join(unknown)}; the drills are: "
              f"{', '.join(DRILLS)}", file=sys.stderr)
        return 2
    try:
        config = _config(args)
    except Exception as exc:  # the checkpoint could not be found or made: say why
        print(f"lab2prod drill: {exc}", file=sys.stderr)
        return 2
    from service.drills.runner import run_drills

    drills = [get_drill(name) for name in args.names or DRILLS]
    reports = run_drills(drills, config,
                         on_report=None if args.json else lambda r: print(r.text(), flush=True))
    passed = all(report.passed for report in reports)
    if args.json:
        print(json.dumps({"passed": passed, "model": config.checkpoint_source,
                          "drills": [report.as_dict() for report in reports]}, indent=2))
    elif len(reports) > 1:
        print("\n".join(report.verdict for report in reports))
    return 0 if passed else 1


def _config(args: argparse.Namespace) -> Any:
    from service.bench.model import bench_checkpoint
    from service.drills.runner import DrillConfig

    settings = get_settings()
    checkpoint, source = bench_checkpoint(
        args.checkpoint, args.registry or settings.registry_url, settings.model_name,
        settings.model_alias, args.work_dir,
    )
    return DrillConfig(checkpoint=checkpoint, checkpoint_source=source, work_dir=args.work_dir,
                       model_name=settings.model_name, duration_s=args.duration,
                       rate=args.rate, outage_s=args.outage)
