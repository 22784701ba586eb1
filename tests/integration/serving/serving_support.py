"""Helpers for the serving tests (integration and e2e): real checkpoints, registries, uploads,
a private redis-server, and an in-process app driven over httpx's ASGI transport."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import torch
from PIL import Image

from service.api.app import create_app
from service.ml.checkpoint import save_checkpoint
from service.ml.data import load_dataset
from service.ml.model import build_model
from service.ml.preprocess import normalize
from service.registry import open_registry
from service.settings import Settings

TRAIN_DIGITS, TRAIN_EPOCHS, TRAIN_SEED = 1000, 2, 0  # ~90% on the mnist-5k test split, ~6 s


def fresh_checkpoint(path: Path, seed: int) -> Path:
    """An untrained CNN (distinct weights per seed): enough for everything but accuracy."""
    torch.manual_seed(seed)
    return save_checkpoint(path, build_model("mnist-cnn"))


def trained_checkpoint(folder: Path) -> Path:
    """A CNN trained briefly on mnist-5k digits (cached across runs in pytest's cache)."""
    path = folder / f"serving-{TRAIN_DIGITS}x{TRAIN_EPOCHS}-s{TRAIN_SEED}.safetensors"
    if path.exists():
        return path
    torch.manual_seed(TRAIN_SEED)
    data = load_dataset("mnist-5k", limit=TRAIN_DIGITS)
    images = normalize(data.train_images)
    labels = torch.as_tensor(data.train_labels)
    model = build_model("mnist-cnn")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(TRAIN_EPOCHS):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), 64):
            picked = order[start : start + 64]
            optimiser.zero_grad()
            torch.nn.functional.nll_loss(model(images[picked]), labels[picked]).backward()
            optimiser.step()
    model.eval()
    return save_checkpoint(path, model, extra={"trained_on": f"mnist-5k[:{TRAIN_DIGITS}]"})


def publish(registry_dir: Path, checkpoint: Path, **card: Any) -> str:
    return open_registry(registry_dir, "mnist-cnn").publish(checkpoint, {"source": "tests", **card})


def settings_for(registry_dir: Path, **overrides: Any) -> Settings:
    """Test settings: no .env, eager runtime (fast start), no alias polling unless asked."""
    values: dict[str, Any] = {
        "registry_url": str(registry_dir),
        "runtime": "eager",
        "device": "cpu",
        "model_poll_interval_s": 0,
        "redis_url": None,
        "amqp_url": None,
        "log_json": True,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The real app with its lifespan, called in-process over HTTP semantics."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving") as client:
            yield app, client


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def digit_png() -> bytes:
    """A photo-sized upload: one dark stroke (a 1) on white paper."""
    canvas = Image.new("RGB", (300, 220), "white")
    canvas.paste((20, 20, 20), (140, 40, 165, 190))
    return encode(canvas)


def render_upload(
    digit: np.ndarray, rng: np.random.Generator, *, dark_on_light: bool = True
) -> bytes:
    """A dataset digit as a user would upload it: scaled up to 200-400 px, off-centre on a larger
    slightly tinted canvas, RGB, JPEG-compressed; dark ink on light paper (or the reverse)."""
    side = int(rng.integers(200, 401))
    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC))
    width, height = (int(side * rng.uniform(1.3, 2.0)) for _ in range(2))
    paper = int(rng.integers(215, 256))
    canvas = np.full((height, width), paper, dtype=np.uint8)
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    region = canvas[top : top + side, left : left + side]
    canvas[top : top + side, left : left + side] = np.minimum(region, 255 - ink)
    if not dark_on_light:
        canvas = 255 - canvas
    rgb = Image.fromarray(canvas).convert("RGB")
    return encode(rgb, "JPEG", quality=int(rng.integers(60, 91)))


LAB2PROD = str(Path(sys.executable).parent / "lab2prod")
SETTINGS_TO_CLEAR = ("REDIS_URL", "AMQP_URL", "LOAD_MODEL", "MODEL_ALIAS", "ACCESS_LOG", "RUNTIME",
                     "REGISTRY_URL", "PORT")


def serve_env(registry: Path | None, **extra: str) -> dict[str, str]:
    """The environment of a `lab2prod serve` under test: eager on the CPU unless ``extra`` says
    otherwise, and none of the developer's own service settings."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("LAB2PROD") and key not in SETTINGS_TO_CLEAR}
    env.update(RUNTIME="eager", DEVICE="cpu", LOG_JSON="true", MODEL_POLL_INTERVAL_S="0.2")
    if registry is not None:
        env["REGISTRY_URL"] = str(registry)
    env.update(extra)
    return env


class ServeProcess:
    """A real `lab2prod serve` on a free port of 127.0.0.1, its log in ``workdir``."""

    def __init__(self, registry: Path | None, workdir: Path, *args: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"serve-{self.port}.log"
        self.process = subprocess.Popen(
            [LAB2PROD, "serve", *args], env=serve_env(registry, PORT=str(self.port), **env),
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )

    def wait_ready(self, timeout: float = 90) -> None:
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

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private redis-server (no persistence) that a test can stop and start again."""

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


REPO = Path(__file__).resolve().parents[3]


def dockerfile_instructions(path: Path = REPO / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def exec_form(arguments: str) -> list[str]:
    """The JSON exec form of CMD/HEALTHCHECK CMD (what the image actually runs)."""
    import json

    if arguments.startswith("--") or arguments.startswith("CMD"):
        arguments = arguments[arguments.index("CMD") + 3 :].strip()
    command = json.loads(arguments)
    assert isinstance(command, list) and all(isinstance(part, str) for part in command)
    return command
