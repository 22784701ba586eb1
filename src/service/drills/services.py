"""The services a drill breaks, all private to it on free ports of 127.0.0.1: a redis-server, a
RabbitMQ node (its own name, ports, data, logs and Erlang cookie), ``lab2prod serve`` and
``lab2prod worker``. Shared instances (Redis on 6379, RabbitMQ on 5672) are never touched."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from service.bench.servers import Server, ServerSpec, free_port

# The developer's own service settings, which no process a drill starts may inherit.
SERVICE_SETTINGS = ("REDIS_URL", "AMQP_URL", "QUEUE_NAME", "LOAD_MODEL", "MODEL_ALIAS", "PORT",
                    "HOST", "REGISTRY_URL", "RUNTIME", "DEVICE", "ACCESS_LOG", "WORKERS",
                    "CACHE_SIZE", "MLFLOW_TRACKING_URI", "CANARY_ALIAS", "SHADOW_ALIAS",
                    "MODEL_POLL_INTERVAL_S", "WORKER_METRICS_PORT")
# rabbitmqctl's own Erlang distribution ports by default: a private node must not take them.
CTL_DIST_PORTS = range(35672, 35683)
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # Debian's: runs as the caller (sbin's switches user)


class ServiceError(RuntimeError):
    """A service the drill needs would not start or stop; the message says which and why."""


def port() -> int:
    """A free port that none of RabbitMQ's CLI tools will try to take meanwhile."""
    while True:
        candidate = free_port()
        if candidate not in CTL_DIST_PORTS:
            return candidate


def wait_for_port(number: int, timeout_s: float, alive: Server | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and (alive.process is None or alive.process.poll() is not None):
            raise ServiceError(f"{alive.spec.name} exited; the end of {alive.log_path}:\n"
                               f"{alive.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", number), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise ServiceError(f"nothing listens on 127.0.0.1:{number} after {timeout_s:.0f} s")


def lab2prod_spec(name: str, command: str, registry: Path, log_dir: Path, **env: str
                  ) -> ServerSpec:
    """`lab2prod serve` (on a free port, ready when /ready says 200) or `lab2prod worker`
    (ready when it says so in its log): eager on the CPU, JSON logs, ``env`` on top."""
    number = port()
    settings = {"REGISTRY_URL": str(registry), "PORT": str(number), "RUNTIME": "eager",
                "DEVICE": "cpu", "LOG_JSON": "true", "TORCH_THREADS": "1", **env}
    spec = ServerSpec(name, [sys.executable, "-m", "service.cli", command], number,
                      ready_path="/ready", env=settings, clear_env=SERVICE_SETTINGS)
    if command == "worker":
        spec.ready_log_line = "worker ready"
    return spec


class PrivateRedis:
    """A redis-server without persistence on a free port; killed, frozen and thawed at will,
    started again on the same port."""

    def __init__(self, work_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError("redis-server is not installed (apt-get install redis-server)")
        self.port = port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        work_dir.mkdir(parents=True, exist_ok=True)
        self.server = Server(ServerSpec(
            "redis", [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                      "--appendonly", "no", "--dir", str(work_dir)], self.port), None, work_dir)

    def start(self) -> PrivateRedis:
        self.server.start()
        wait_for_port(self.port, 20, self.server)
        return self

    def signal(self, signum: signal.Signals) -> None:
        if self.server.process is not None:
            self.server.process.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.server.process is not None:
            self.server.process.wait(10)

    def stop(self) -> None:
        self.signal(signal.SIGCONT)  # a frozen server would sit out SIGTERM's grace period
        self.server.stop()


class PrivateRabbit:
    """A RabbitMQ node of the drill's own (``drill-<random>@localhost``) on free ports, with its
    data, logs and Erlang cookie in ``work_dir``: its app stopped and started by rabbitmqctl."""

    def __init__(self, work_dir: Path) -> None:
        server = RABBITMQ_BIN / "rabbitmq-server"
        if not server.exists():
            found = shutil.which("rabbitmq-server")
            if found is None:
                raise ServiceError("rabbitmq-server is not installed (apt-get install "
                                   "rabbitmq-server)")
            server = Path(found)
        self.ctl = server.parent / "rabbitmqctl"
        self.node = f"drill-{secrets.token_hex(4)}@localhost"
        self.port, self.dist_port, self.ctl_port = port(), port(), port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        home = work_dir / "home"
        for folder in ("mnesia", "log", "home"):
            (work_dir / folder).mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"  # the node's and its CLI's: no one else's cookie needed
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16))
            cookie.chmod(0o400)
        (work_dir / "enabled_plugins").write_text("[].\n")
        self.env = {
            "HOME": str(home), "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(work_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(work_dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(work_dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(work_dir / "none"),  # no config file: the defaults
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(work_dir / "none.config"),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_port),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ctl_port),
        }
        self.server = Server(ServerSpec("rabbitmq", [str(server)], self.port, env=self.env),
                             None, work_dir)

    def start(self, timeout_s: float = 120) -> PrivateRabbit:
        self.server.start()
        wait_for_port(self.port, timeout_s, self.server)  # listeners open last in its boot
        return self

    def rabbitmqctl(self, *args: str, timeout_s: float = 60) -> None:
        done = subprocess.run([str(self.ctl), "-n", self.node, *args], capture_output=True,
                              text=True, timeout=timeout_s, env={**os.environ, **self.env})
        if done.returncode != 0:
            raise ServiceError(f"rabbitmqctl {' '.join(args)} failed: "
                               f"{(done.stderr or done.stdout).strip()[-800:]}")

    def stop_app(self) -> None:
        self.rabbitmqctl("stop_app")

    def start_app(self) -> None:
        self.rabbitmqctl("start_app")

    def stop(self) -> None:
        if self.server.process is not None and self.server.process.poll() is None:
            # the process group is killed below either way
            with contextlib.suppress(ServiceError, subprocess.TimeoutExpired):
                self.rabbitmqctl("stop", timeout_s=30)
        self.server.stop()
