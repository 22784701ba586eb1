"""`lab2prod release`: train and evaluate with papermill, gate, and publish when the gate passes."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from service.registry import PRODUCTION


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "release",
        help="train, evaluate, gate and publish a model (papermill runs into runs/<id>/)",
        description=(
            "Execute notebooks/train.ipynb then notebooks/evaluate.ipynb with papermill into "
            "runs/<run_id>/, gate the result with the release policy and, when every criterion "
            "passes, publish it to the registry. Exit code 0: released; 1: refused by the gate; "
            "2: the request itself was wrong."
        ),
    )
    parser.add_argument(
        "-p", "--parameters", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="a notebook parameter, typed like papermill -p (repeatable)",
    )
    parser.add_argument(
        "-f", "--parameters-file", action="append", default=[], metavar="params.yaml",
        help="a YAML mapping of parameters (-p wins over it)",
    )
    parser.add_argument("--policy", help="release policy YAML (default: settings.release_policy)")
    parser.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    parser.add_argument(
        "--alias", default=PRODUCTION,
        help="alias moved to the new version when it passes (default: production)",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from service.registry import RegistryError
    from service.release.gate import PolicyError, format_failures
    from service.release.params import ParameterError, collect_parameters
    from service.release.pipeline import ReleaseError, run_release
    from service.settings import get_settings

    _show_progress()
    try:
        parameters = collect_parameters(args.parameters, args.parameters_file)
        result = run_release(
            get_settings(), parameters, policy_path=args.policy, run_id=args.run_id,
            alias=args.alias,
        )
    except (ParameterError, PolicyError, ReleaseError, RegistryError) as exc:
        print(f"lab2prod release: error: {exc}", file=sys.stderr)
        return 2
    record = result.record
    _say_tracking(record.get("tracking"))
    if result.released:
        aliases = ", ".join(f"{name} -> {version}"
                            for name, version in sorted(record["release"]["aliases"].items()))
        accuracy = (record["metrics"]["candidate"] or {}).get("accuracy")
        print(f"released {record['registry']['model']} {result.version} "
              f"(accuracy {accuracy:.4f}; {aliases}); run record {result.run_dir / 'run.json'}")
        return 0
    print(f"release refused: {len(result.verdict.failed)} criteria failed; the registry is "
          f"unchanged; run record {result.run_dir / 'run.json'}", file=sys.stderr)
    print(format_failures(result.verdict), file=sys.stderr)
    return 1


def _say_tracking(tracking: dict[str, Any] | None) -> None:
    if tracking and tracking["logged"]:
        print(f"logged to MLflow {tracking['uri']}: experiment {tracking['experiment']}, "
              f"run {tracking['run_id']}")
    elif tracking:
        print(f"not logged to MLflow {tracking['uri']}: {tracking['error']}", file=sys.stderr)


def _show_progress() -> None:
    """Papermill logs each notebook's output at INFO; show it, plus our own steps."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"))
    for name in ("papermill", "lab2prod.release"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(handler)
