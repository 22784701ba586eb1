"""Does a client reusing a kept-alive connection just before its own idle expiry meet the
server's idle close? httpx forgets an idle connection after 5 s (its ``keepalive_expiry``); this
runs `lab2prod serve` at each KEEP_ALIVE_TIMEOUT_S given, and per round many httpx clients each
send ``GET /health``, wait 4.90-5.00 s (spread evenly) and send again on the same connection,
while busy loops load the CPUs as a shared machine does. It prints how many second requests got
no answer (docs/hardening.md#idle-connections-keep-alive).

    .venv/bin/python scripts/keep_alive_race.py --timeouts 5 75
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from service.bench.servers import Server, ServerSpec, free_port, python_command

IDLE_FROM_S, IDLE_TO_S = 4.90, 5.00  # just under httpx's default keepalive_expiry


def server_spec(keep_alive_s: float) -> ServerSpec:
    """`lab2prod serve` without a model (only /health is asked) at this keep-alive timeout."""
    port = free_port()
    return ServerSpec(f"serve-keep-alive-{keep_alive_s:g}",
                      python_command("-m", "service.cli", "serve", "--port", str(port)), port,
                      env={"LOAD_MODEL": "false", "DRAIN_GRACE_S": "0",
                           "KEEP_ALIVE_TIMEOUT_S": str(keep_alive_s)})


def busy(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


async def reuse_after(url: str, idle_s: float) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        await client.get("/health")
        await asyncio.sleep(idle_s)
        try:
            return str((await client.get("/health")).status_code)
        except httpx.TransportError as exc:
            return type(exc).__name__


async def one_round(url: str, clients: int) -> Counter[str]:
    tasks = []
    for index in range(clients):
        idle_s = IDLE_FROM_S + (IDLE_TO_S - IDLE_FROM_S) * index / max(clients - 1, 1)
        tasks.append(asyncio.create_task(reuse_after(url, idle_s)))
        await asyncio.sleep(0.002)  # spread the connections' clocks a little
    return Counter(await asyncio.gather(*tasks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeouts", type=float, nargs="+", default=[5.0, 75.0],
                        help="KEEP_ALIVE_TIMEOUT_S values to run (default: 5 75)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=200, help="per round")
    parser.add_argument("--load", type=int, default=3, help="busy-loop processes per round")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="keep-alive-race-"))
    for timeout in args.timeouts:
        with Server(server_spec(timeout), cpu=None, log_dir=logs) as server:
            server.wait_ready(60)
            url = server.spec.url
            for round_number in range(1, args.rounds + 1):
                loaders = [multiprocessing.Process(target=busy, args=(IDLE_TO_S + 2,))
                           for _ in range(args.load)]
                for loader in loaders:
                    loader.start()
                outcomes = asyncio.run(one_round(url, args.clients))
                for loader in loaders:
                    loader.join()
                failed = args.clients - outcomes.pop("200", 0)
                print(f"KEEP_ALIVE_TIMEOUT_S={timeout:g} round {round_number}: {failed} of "
                      f"{args.clients} got no answer {dict(outcomes) or ''}", flush=True)


if __name__ == "__main__":
    main()
