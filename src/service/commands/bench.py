"""``lab2prod bench``: our service against the usual ways of serving this model, in one run.

Starts every server itself (ours through ``lab2prod serve`` on a temporary registry holding the
checkpoint; the tutorial, threadpool and LitServe baselines from scripts/baselines/, in eager
PyTorch as the tutorials do and again on the int8 ONNX file ours serves; Triton, BentoML, KServe
and Ray Serve on that same file, from the venvs `make bench-peers` builds), pins each to one
core with taskset, drives it with wrk pinned to the other core at each concurrency in
interleaved rounds, and writes results.json, results.md and results.png to --out.

``--check-peers`` instead starts each same-runtime server once, checks one answer per target
against the ONNX file's own, and prints its memory (two or three minutes).

``--runtimes`` instead measures the inference runtime variants (latency on one thread,
accuracy, agreement with eager) and writes runtimes.json and runtimes.md.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.bench.harness import DEFAULT_TARGETS, TARGETS
from service.bench.wrk import BenchError
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
    parser.add_argument("--check-peers", action="store_true",
                        help="start each same-runtime server once (those of --targets, default "
                        "all), check one answer per target, stop it; no load")
    parser.add_argument("--checkpoint", help="checkpoint to serve (default: the registry's "
                        "production model, else one trained briefly on mnist-5k)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"),
                        help="where results go (default docs/benchmarks)")
    parser.add_argument("--work-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "lab2prod-bench",
                        help="scratch space: registry, request bodies, logs")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds of load per point (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--concurrency", type=_int_list, default=[1, 8, 64],
                        help="connections, comma-separated (default 1,8,64)")
    parser.add_argument("--targets", help="comma-separated, default all but Ray Serve's (it "
                        "takes CPU idle, so it is measured in a run of its own, beside ours): "
                        + ", ".join(TARGETS))
    parser.add_argument("--distinct", type=int, default=2048,
                        help="distinct digits cycled for miss-path figures (>= 1000)")
    parser.add_argument("--workers", type=int, default=2,
                        help="`lab2prod worker` processes whose memory is measured (0: skip)")
    parser.add_argument("--server-cpu", type=int, default=0, help="core for servers (0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="core for wrk (1)")
    parser.add_argument("--readme", type=Path, default=Path("README.md"),
                        help="README whose bench markers get the targets table")
    parser.add_argument("--no-readme", action="store_true",
                        help="leave the README alone (a partial run)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="--runtimes: seconds of calls per variant and batch size")
    parser.add_argument("--variants", help="--runtimes: comma-separated names (default all)")
    parser.add_argument("--scripts", type=Path, default=Path("scripts"),
                        help="the project folder's baselines/ and wrk/ (default: scripts)")
    parser.add_argument("--venvs", type=Path, default=Path("."),
                        help="folder holding the peers' .venv-bench-* (`make bench-peers`; "
                        "default: the current one)")
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
        return 0
    if args.check_peers:
        return _check_peers(args, checkpoint, settings)
    return _serving(args, checkpoint, source, settings)


def _check_peers(args: argparse.Namespace, checkpoint: Path, settings: Any) -> int:
    from service.bench import peer_check, peers
    from service.inference.export import ensure_artifact
    from service.ml.checkpoint import load_checkpoint

    config = _config(args, checkpoint, "", settings)

    def check() -> tuple[Path, list[peer_check.CheckResult]]:
        config.validate()  # first: an unknown target is refused with the choices
        wanted = {TARGETS[t][0] for t in (config.targets if args.targets else TARGETS)}
        servers = [name for name, server in peers.PEER_SERVERS.items()
                   if server.family == peers.SAME_RUNTIME and name in wanted]
        if not servers:
            raise BenchError("--targets holds no same-runtime target; choose from "
                             + ", ".join(t for t in peers.TARGETS
                                         if peers.family(t) == peers.SAME_RUNTIME))
        onnx = ensure_artifact(load_checkpoint(checkpoint), peers.SAME_RUNTIME_VARIANT)
        return onnx, peer_check.check(config, servers, onnx)

    done, status = _stoppable(check)
    if status is not None:
        return status
    onnx, results = done
    print(f"serving {onnx}\n\n{peer_check.table(results)}")
    return 0 if all(result.ok for result in results) else 1


def _config(args: argparse.Namespace, checkpoint: Path, source: str, settings: Any) -> Any:
    from service.bench.harness import BenchConfig

    return BenchConfig(
        checkpoint=checkpoint, checkpoint_source=source, out_dir=args.out,
        work_dir=args.work_dir, seconds=args.duration, rounds=args.rounds,
        concurrencies=args.concurrency, server_cpu=args.server_cpu, client_cpu=args.client_cpu,
        targets=([t.strip() for t in args.targets.split(",")] if args.targets
                 else list(DEFAULT_TARGETS)),
        distinct=args.distinct, workers=args.workers, amqp_url=settings.amqp_url,
        model_name=settings.model_name, scripts_dir=args.scripts, venvs_dir=args.venvs,
    )


def _serving(args: argparse.Namespace, checkpoint: Path, source: str, settings: Any) -> int:
    from service.bench import report
    from service.bench.harness import run_benchmark
    from service.bench.limits import limit_line

    config = _config(args, checkpoint, source, settings)
    data, status = _stoppable(lambda: run_benchmark(config))
    if status is not None:
        return status
    paths = report.write(data, args.out, None if args.no_readme else args.readme)
    print(report.targets_table(data))
    if data.get("limit"):
        print(limit_line(data["limit"]))
    print("\n".join(f"{c}: {r}" for c, r in data["ratios"].items()))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _stoppable(work: Callable[[], Any]) -> tuple[Any, int | None]:
    """(work's result, None), or (None, the exit status) once it failed or was interrupted, the
    reason printed. SIGTERM stops it as Ctrl-C does: every server started is stopped on the
    way out; the handler before it is put back afterwards."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return work(), None
    except BenchError as exc:
        print(f"lab2prod bench: {exc}", file=sys.stderr)
        return None, 1
    except KeyboardInterrupt:
        print("lab2prod bench: interrupted; every server it started is stopped", file=sys.stderr)
        return None, 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
