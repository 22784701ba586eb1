"""``lab2prod worker``: consume inference jobs from RabbitMQ, results to Redis.

``--processes N`` (alias ``--concurrency``) starts N worker processes that share the queue;
this process then only forwards SIGTERM/SIGINT to them and waits. With a metrics port set,
process i serves Prometheus metrics on port + i. On a machine with several GPUs, DEVICE=auto
or cuda puts process i on GPU i mod the number of GPUs (DEVICE=cuda:N or cpu: all on that one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

from service.settings import Settings, get_settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run batched inference on queued jobs (needs AMQP_URL and REDIS_URL)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--processes", "--concurrency", type=int, default=1, metavar="N",
        help="worker processes sharing the queue (default 1; e.g. one per core, each with "
        "TORCH_THREADS threads, or one per GPU: with DEVICE=auto or cuda, process i uses GPU "
        "i mod the GPUs there are; DEVICE=cuda:N or cpu puts them all on that device)",
    )
    parser.add_argument("--queue", help="queue name (default: QUEUE_NAME)")
    parser.add_argument(
        "--metrics-port", type=int, help="Prometheus port (default: WORKER_METRICS_PORT)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.processes < 1:
        print("lab2prod worker: --processes must be 1 or more", file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {}
    if args.queue:
        overrides["queue_name"] = args.queue
    if args.metrics_port is not None:
        overrides["worker_metrics_port"] = args.metrics_port
    settings = get_settings().model_copy(update=overrides)
    if args.processes > 1:
        return _supervise(args.processes, settings)
    from service.inference.pool import VersionNotFound, VersionUnavailable
    from service.observability import configure_logging
    from service.queue.runner import WorkerConfigError, run_worker

    configure_logging(settings.log_level, settings.log_json)
    try:
        return asyncio.run(run_worker(settings))
    except (WorkerConfigError, VersionNotFound, VersionUnavailable) as exc:
        print(f"lab2prod worker: {exc}", file=sys.stderr)
        return 1


def _supervise(processes: int, settings: Settings) -> int:
    """Start the children and forward stop signals. If one dies on its own, stop the others
    too and exit with its code, so whatever supervises this command restarts the whole group."""
    from service.ml.device import cuda_device_count

    devices = devices_per_process(settings.device, processes, cuda_device_count())
    children = []
    for index, device in enumerate(devices):
        command = [sys.executable, "-m", "service.cli", "worker", "--queue", settings.queue_name]
        port = settings.worker_metrics_port
        command += ["--metrics-port", str(port + index if port else 0)]
        environment = {**os.environ, "DEVICE": device} if device else None
        children.append(subprocess.Popen(command, env=environment))
    stopping = False

    def stop_all(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    while any(child.poll() is None for child in children):
        if not stopping and any(child.poll() is not None for child in children):
            print("lab2prod worker: a worker process exited; stopping the others", file=sys.stderr)
            stop_all()
        time.sleep(0.2)
    worst = max((child.returncode for child in children), key=abs)
    return 128 - worst if worst < 0 else worst  # killed by signal N: the shell's 128 + N


def devices_per_process(requested: str, processes: int, gpus: int) -> list[str | None]:
    """The DEVICE of each worker process (``device_for_process``; None: as set)."""
    from service.ml.device import device_for_process

    return [device_for_process(requested, index, gpus) for index in range(processes)]
