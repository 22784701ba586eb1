"""``lab2prod serve``: the FastAPI service under uvicorn (uvloop + httptools).

Loads the registry's production model before binding the port; when there is none (or it is
corrupt, or the registry is unreachable) it exits with status 2 and a message saying how to
make one. Everything else comes from the settings (environment / .env): REGISTRY_URL,
REDIS_URL, MAX_BATCH_SIZE, TORCH_THREADS, ACCESS_LOG, LOAD_MODEL, DRAIN_GRACE_S, ...

SIGTERM drains first (DRAIN_GRACE_S: /ready says 503 'draining', answers close their
connections), then stops; SIGINT stops at once. With --workers N each worker drains, and on a
machine with several GPUs DEVICE=auto or cuda puts each on its own (service.api.worker_slot).
Each connection is bounded (service.api.protocol): HEADER_TIMEOUT_S, MAX_HEADER_BYTES,
MAX_CONNECTIONS per process; an idle kept-alive one closes after KEEP_ALIVE_TIMEOUT_S.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

from service.settings import Settings, get_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve POST /predict from the registry's production model",
        description="Run the HTTP service (uvicorn). Settings come from the environment/.env. "
        "SIGTERM drains for DRAIN_GRACE_S seconds (/ready answers 503) before stopping; "
        "Ctrl-C stops at once.",
    )
    parser.add_argument("--host", help="interface to bind (default: HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: PORT, 8000)")
    parser.add_argument(
        "--workers",
        type=int,
        help="processes, each with its own model, batcher, cache and /metrics counters; with "
        "several GPUs and DEVICE=auto or cuda, process i uses GPU i mod the GPUs there are "
        "(default: WORKERS, 1)",
    )
    parser.set_defaults(handler=serve)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn runs the service (the bench's HTTP floor runs a bare app with the same)."""
    from service.api.drain import IN_FLIGHT_TIMEOUT_S
    from service.api.protocol import GuardedHttpToolsProtocol

    return {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": GuardedHttpToolsProtocol,  # httptools, bounding each connection's cost
        "access_log": False,  # ACCESS_LOG=true logs requests as JSON, with their request id
        "log_config": None,  # our JSON logging, configured by create_app
        "log_level": settings.log_level,
        "server_header": False,
        # longer than clients' own idle limits (docs/hardening.md, "Idle connections")
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        # after the drain's grace (SIGTERM; service.api.drain): in-flight requests get this long
        "timeout_graceful_shutdown": IN_FLIGHT_TIMEOUT_S,
    }


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.api.app import create_app
    from service.inference.pool import ModelPool, VersionNotFound, VersionUnavailable
    from service.inference.router import TrafficPolicy
    from service.observability import configure_logging

    overrides = {"host": args.host, "port": args.port, "workers": args.workers}
    settings = get_settings().model_copy(
        update={name: value for name, value in overrides.items() if value is not None}
    )
    if settings.workers < 1:
        print("lab2prod serve: --workers must be at least 1", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    try:
        policy = TrafficPolicy.from_settings(settings)
    except ValueError as exc:
        print(f"lab2prod serve: cannot start: {exc}", file=sys.stderr)
        return 2
    pool = None
    if settings.load_model:
        pool = ModelPool(settings)
        try:  # before binding the port: fail fast, with the fix in the message
            pool.start(policy.aliases())
        except (VersionNotFound, VersionUnavailable) as exc:
            print(f"lab2prod serve: cannot start: {exc}", file=sys.stderr)
            return 2
    options = uvicorn_options(settings)
    if settings.workers == 1:
        uvicorn.run(create_app(settings, pool=pool), **options)  # type: ignore[arg-type]
    else:  # each worker process builds its own app (and pool) from the environment
        from service.api.worker_slot import slot_directory

        if pool is not None:
            pool.close()  # it proved the model loads; each worker process loads its own
        try:
            uvicorn.run(
                "service.api.worker_slot:create_worker_app", factory=True,
                workers=settings.workers, **options,
            )  # type: ignore[arg-type]
        finally:  # the GPU slots the processes claimed (service.api.worker_slot), if any
            shutil.rmtree(slot_directory(os.getpid()), ignore_errors=True)
    return 0
