"""Real processes on free ports of 127.0.0.1: a private redis-server, ``lab2prod serve`` and
``lab2prod worker``. A service that will not start FAILS the test that needs it (never skips)."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from support import REPO

LAB2PROD = str(Path(sys.executable).parent / "lab2prod")  # the venv's console script
# The developer's own service settings, which no process under test may inherit.
SETTINGS_TO_CLEAR = ("REDIS_URL", "AMQP_URL", "LOAD_MODEL", "MODEL_ALIAS", "ACCESS_LOG", "RUNTIME",
                     "REGISTRY_URL", "PORT", "MLFLOW_TRACKING_URI")


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private redis-server (no persistence) on a free port, that a test can stop and start
    again on the same port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; install it (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        self.stop()
                        pytest.fail(f"redis-server did not start on port {self.port}")
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def flush(self) -> None:
        """Forget every key (between tests that share the server)."""
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()


def lab2prod_env(registry: Path | str | None, **extra: str) -> dict[str, str]:
    """The environment of a `lab2prod` command under test: eager on the CPU, JSON logs, the
    production alias polled every 0.2 s, no drain on SIGTERM (a test's server stops at once),
    unless ``extra`` says otherwise, and none of the developer's own service settings."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("LAB2PROD") and key not in SETTINGS_TO_CLEAR}
    env.update(RUNTIME="eager", DEVICE="cpu", LOG_JSON="true", MODEL_POLL_INTERVAL_S="0.2",
               DRAIN_GRACE_S="0")
    if registry is not None:
        env["REGISTRY_URL"] = str(registry)
    env.update(extra)
    return env


class ServeProcess:
    """A real `lab2prod serve` on a free port of 127.0.0.1, its log in ``workdir``; ``registry``
    is a folder or a REGISTRY_URL; ``open_files`` sets its open-file limit (``ulimit -n``). As a
    context manager: ready on entry, stopped on exit (also when it never got ready)."""

    def __init__(self, registry: Path | str | None, workdir: Path, *args: str,
                 open_files: int | None = None, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"serve-{self.port}.log"
        self.process = subprocess.Popen(
            [LAB2PROD, "serve", *args], env=lab2prod_env(registry, PORT=str(self.port), **env),
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
            preexec_fn=None if open_files is None else lambda: _limit_open_files(open_files),
        )

    def wait_ready(self, timeout: float = 90) -> None:
        """Until /ready answers 200; fails with the log's tail when it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"lab2prod serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        tail = self.log.read_text()[-2000:]
        raise AssertionError(f"lab2prod serve not ready in {timeout}s: {tail}")

    def __enter__(self) -> ServeProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def rss_bytes(self) -> int:
        """The server process's resident memory now (Linux /proc)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def stop(self) -> int:
        """SIGTERM (SIGKILL after 20 s); returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def _limit_open_files(count: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


def worker_env(
    *, amqp_url: str, redis_url: str, registry: Path, queue: str, **extra: str
) -> dict[str, str]:
    """The environment of a `lab2prod worker` under test (see ``lab2prod_env``), on one thread."""
    return lab2prod_env(
        registry,
        AMQP_URL=amqp_url,
        REDIS_URL=redis_url,
        QUEUE_NAME=queue,
        RUNTIME="eager",  # the reference predictions are eager: compare like with like
        TORCH_THREADS="1",
        LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
        **extra,
    )


def start_worker(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """A real `lab2prod worker` subprocess, its output in ``log_path``."""
    handle = log_path.open("ab")
    return subprocess.Popen(
        [LAB2PROD, "worker", *args], env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT
    )
