"""``lab2prod``: one console entry point, thin subcommands (parse, call, exit code).

Each subcommand lives in a ``register_<name>(subparsers)`` function in its own module so the
parser stays small and the work stays in the package.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> module that defines register(subparsers); loaded lazily so that
# `lab2prod serve` never imports papermill and `lab2prod train` never imports FastAPI.
SUBCOMMANDS: dict[str, str] = {
    "train": "service.commands.train",
    "evaluate": "service.commands.evaluate",
    "release": "service.commands.release",
    "models": "service.commands.models",
    "serve": "service.commands.serve",
    "worker": "service.commands.worker",
    "bench": "service.commands.bench",
    "drill": "service.commands.drill",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lab2prod",
        description="Train, gate, release and serve the MNIST CNN from notebooks to /predict.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            subparsers.add_parser(name, help=f"(see `lab2prod {name} --help`)")
            continue
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list and args_list[0] in SUBCOMMANDS else None
    parser = build_parser(only=command)
    args = parser.parse_args(args_list)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
