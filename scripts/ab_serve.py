"""Source trees of the service side by side: is a change faster, measured so that noise cannot
decide it (the method of docs/benchmarks/overhead.md).

Each tree's `lab2prod serve` (its own ``src/`` first on PYTHONPATH, this checkout's venv) serves
the same registry, pinned to one core, wrk pinned to the other; rounds are interleaved and every
server but the one measured is paused (SIGSTOP), so a slow spell of a shared machine hurts every
tree alike. Per round and server: req/s, p50/p99, and CPU µs per request of the event-loop
thread and of all other threads (``/proc/<pid>/task``), the figure other work distorts least.
At the end: medians, and each round's ratio to the first tree.

    git worktree add /tmp/before HEAD~1
    lab2prod bench --targets ours --concurrency 64 --rounds 1 --duration 1 --no-readme \\
        --out /tmp/b --work-dir /tmp/bw                  # a registry with the bench's model
    .venv/bin/python scripts/ab_serve.py --registry /tmp/bw/run-*/registry-* \\
        before=/tmp/before after=. --bodies v2 --rounds 6

A tree named ``floor`` is the bench's HTTP floor (a bare Starlette route on serve's uvicorn
settings) instead of a source tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from service.bench import limits, wrk
from service.bench.bodies import BodySet, build_body_sets
from service.bench.harness import MISS_CACHE_SIZE
from service.bench.servers import CLOCK_TICKS, Server, ServerSpec, free_port, python_command

FLOOR = "floor"


@dataclass
class Round:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    loop_us: float  # CPU µs per request, event-loop (main) thread
    other_us: float  # CPU µs per request, every other thread

    @property
    def cpu_us(self) -> float:
        return self.loop_us + self.other_us


@dataclass
class Contender:
    label: str
    tree: str
    server: Server
    rounds: list[Round] = field(default_factory=list)


def parse_tree(text: str) -> tuple[str, str]:
    """``label=path`` (or ``label=floor``) -> (label, absolute path or "floor")."""
    label, sep, tree = text.partition("=")
    if not sep or not label or not tree:
        raise argparse.ArgumentTypeError(f"{text!r}: give LABEL=PATH (a source tree) or "
                                         f"LABEL={FLOOR}")
    if tree == FLOOR:
        return label, FLOOR
    path = Path(tree).resolve()
    if not (path / "src" / "service").is_dir():
        raise argparse.ArgumentTypeError(f"{path} holds no src/service: not a source tree")
    return label, str(path)


def thread_cpu_ticks(pid: int) -> dict[int, int]:
    """utime + stime of each thread of ``pid``, by thread id."""
    ticks: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:  # the thread ended
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        ticks[int(task.name)] = int(fields[11]) + int(fields[12])
    return ticks


def split_cpu(pid: int, before: dict[int, int], after: dict[int, int],
              requests: int) -> tuple[float, float]:
    """(main thread, all others) CPU µs per request between two ``thread_cpu_ticks``."""
    per_request = 1e6 / CLOCK_TICKS / max(requests, 1)
    spent = {tid: ticks - before.get(tid, 0) for tid, ticks in after.items()}
    main = spent.pop(pid, 0)
    return main * per_request, sum(spent.values()) * per_request


def spec_for(label: str, tree: str, env: dict[str, str]) -> ServerSpec:
    port = free_port()
    if tree == FLOOR:
        return limits.floor_spec(port, env)
    return ServerSpec(label, python_command("-m", "service.cli", "serve", "--port", str(port)),
                      port, "/ready", {**env, "PYTHONPATH": f"{tree}/src"})


def measure(contender: Contender, bodies: BodySet, args: argparse.Namespace,
            start: int) -> Round:
    server = contender.server
    pid = server.process.pid if server.process else 0
    server.resume()
    try:
        before = thread_cpu_ticks(pid)
        result = wrk.run(server.spec.url, bodies, connections=args.concurrency,
                         seconds=args.duration, cpu=args.client_cpu, start=start)
        after = thread_cpu_ticks(pid)
    finally:
        server.pause()
    if result.errors:
        raise wrk.BenchError(f"{contender.label}: {result.errors} failed requests "
                             f"({result.status_errors} answered with an error status, "
                             f"{result.socket_errors} socket errors); its log:\n"
                             f"{server.log_tail()}")
    loop_us, other_us = split_cpu(pid, before, after, result.requests)
    return Round(result.requests_per_s, result.p50_ms, result.p99_ms, loop_us, other_us)


def report(contenders: list[Contender]) -> None:
    first = contenders[0]
    print(f"\n{'':12s} {'req/s':>8s} {'CPU µs/req':>10s} {'loop':>6s} {'other':>6s}   "
          f"per-round ratio to {first.label} (req/s; CPU)")
    for contender in contenders:
        rounds = contender.rounds
        pairs = list(zip(rounds, first.rounds, strict=True))
        speed = [r.requests_per_s / f.requests_per_s for r, f in pairs]
        cpu = [r.cpu_us / f.cpu_us for r, f in pairs]
        ratios = "" if contender is first else (
            ", ".join(f"{s:.2f}; {c:.2f}" for s, c in zip(speed, cpu, strict=True))
            + f"  (medians {statistics.median(speed):.2f}; {statistics.median(cpu):.2f})")
        print(f"{contender.label:12s} {statistics.median(r.requests_per_s for r in rounds):8,.0f} "
              f"{statistics.median(r.cpu_us for r in rounds):10.1f} "
              f"{statistics.median(r.loop_us for r in rounds):6.1f} "
              f"{statistics.median(r.other_us for r in rounds):6.1f}   {ratios}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=parse_tree, metavar="LABEL=PATH")
    parser.add_argument("--registry", required=True, type=Path,
                        help="registry folder the servers serve (the bench's, for its model)")
    parser.add_argument("--model-name", default="mnist-cnn")
    parser.add_argument("--alias", default="production")
    parser.add_argument("--bodies", default="json", choices=("json", "v2", "png", "batch"))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of load per round")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="request bodies and logs (default: a temporary folder)")
    args = parser.parse_args(argv)
    wrk.require_tools()
    if len({label for label, _ in args.trees}) != len(args.trees):
        parser.error("each tree needs a label of its own")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="lab2prod-ab-"))
    bodies = build_body_sets(work / "bodies", model_name=args.model_name)[args.bodies]
    env = {"REGISTRY_URL": str(args.registry), "MODEL_NAME": args.model_name,
           "MODEL_ALIAS": args.alias, "TORCH_THREADS": "1", "MODEL_POLL_INTERVAL_S": "0",
           "LOG_LEVEL": "warning", "ACCESS_LOG": "false", "CACHE_SIZE": str(MISS_CACHE_SIZE),
           "DEVICE": "cpu"}
    contenders = [Contender(label, tree, Server(spec_for(label, tree, env), args.server_cpu,
                                                work / "logs"))
                  for label, tree in args.trees]
    try:
        for contender in contenders:
            contender.server.start().wait_ready()
            contender.server.pause()
        start = 0
        for number in range(args.rounds):
            for contender in contenders:
                measured = measure(contender, bodies, args, start)
                start += round(measured.requests_per_s * args.duration)  # continue the cycle
                contender.rounds.append(measured)
                print(f"round {number + 1} {contender.label:12s} "
                      f"{measured.requests_per_s:8,.0f} req/s  p50 {measured.p50_ms:6.2f} "
                      f"p99 {measured.p99_ms:6.2f} ms  CPU µs/req loop {measured.loop_us:6.1f} "
                      f"other {measured.other_us:6.1f}", flush=True)
    finally:
        for contender in contenders:
            contender.server.resume()
            contender.server.stop()
    report(contenders)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
