"""A real `mlflow server` on a free port of 127.0.0.1, with a temporary SQLite store and artifact
folder, served from the venv `make mlflow-server` builds (``.venv-mlflow``: the full server's
pins clash with our dev tools, so our venv holds only the client, mlflow-skinny). A server that
will not start FAILS the test that needs it (never skips)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from support import REPO
from support.servers import free_port

if TYPE_CHECKING:
    from mlflow import MlflowClient

SERVER_VENV = REPO / ".venv-mlflow"
# The developer's own MLflow settings, which neither the server nor a client under test inherits.
MLFLOW_ENV_TO_CLEAR = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME",
                       "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")


class MlflowServer:
    """`mlflow server` with its store, artefacts and log in ``workdir``; ``uri`` is what
    MLFLOW_TRACKING_URI takes, ``registry_url`` what REGISTRY_URL takes."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.registry_url = f"mlflow+{self.uri}"
        self.log = workdir / "mlflow-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180) -> MlflowServer:
        binary = SERVER_VENV / "bin" / "mlflow"
        if not binary.is_file():
            pytest.fail(f"no MLflow server at {binary}: run `make mlflow-server` (it builds "
                        f"{SERVER_VENV.name}/ with the full mlflow package)")
        env = {key: value for key, value in os.environ.items() if key not in MLFLOW_ENV_TO_CLEAR}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runners: 2 cores are shared
        self.process = subprocess.Popen(
            [str(binary), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
             "--serve-artifacts", "--artifacts-destination", str(self.workdir / "artifacts")],
            cwd=self.workdir, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,  # its uvicorn child goes with it on stop
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.uri}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"mlflow server not up in {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM to the server's process group, then SIGKILL to whatever of it is left."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
