"""Helpers for the async-inference tests (integration and e2e): real services, a real model.

Plain functions, so both ``tests/integration/async_/conftest.py`` and the e2e worker tests
can use them. A service that cannot be reached FAILS the test that needs it (never skips).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import numpy as np
import pytest
import redis
import torch

from service.inference.loader import load_runtime
from service.ml.checkpoint import save_checkpoint
from service.ml.data import load_dataset
from service.ml.model import build_model
from service.ml.preprocess import normalize
from service.queue.broker import dead_letter_names
from service.registry import open_registry

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
REPO = Path(__file__).resolve().parents[3]
TRAIN_STEPS, TRAIN_BATCH, TRAIN_SEED = 30, 32, 0  # ~87% on mnist-5k: diverse, checkable digits


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on a free port (no persistence); fails the test if it won't start."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; install it (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
    client.close()
    return process, url


def run_sync(coroutine: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def require_rabbitmq(url: str = RABBITMQ_URL) -> str:
    async def probe() -> None:
        connection = await aio_pika.connect(url, timeout=5)
        await connection.close()

    try:
        run_sync(probe())
    except Exception as exc:
        pytest.fail(f"RabbitMQ is not reachable at {url} ({exc!r}); these tests need it running")
    return url


def unique_queue_name(label: str = "test") -> str:
    return f"lab2prod.test.{label}.{uuid.uuid4().hex[:12]}"


async def delete_queue_topology(url: str, queue_name: str) -> None:
    exchange, dead = dead_letter_names(queue_name)
    connection = await aio_pika.connect(url, timeout=5)
    try:
        channel = await connection.channel()
        for name in (queue_name, dead):
            await channel.queue_delete(name)
        await channel.exchange_delete(exchange)
    finally:
        await connection.close()


async def queue_counts(url: str, queue_name: str) -> tuple[int, int]:
    """(messages ready in the queue, messages in its dead-letter queue)."""
    connection = await aio_pika.connect(url, timeout=5)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        dead = await channel.declare_queue(dead_letter_names(queue_name)[1], passive=True)
        return queue.declaration_result.message_count, dead.declaration_result.message_count
    finally:
        await connection.close()


def trained_checkpoint(cache_dir: Path) -> Path:
    """The CNN after a short, seeded training run on mnist-5k (cached between sessions)."""
    path = cache_dir / f"mnist-cnn-s{TRAIN_STEPS}-b{TRAIN_BATCH}-seed{TRAIN_SEED}.safetensors"
    if path.exists():
        return path
    dataset = load_dataset("mnist-5k")
    torch.manual_seed(TRAIN_SEED)
    model = build_model("mnist-cnn")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = normalize(dataset.train_images), torch.as_tensor(dataset.train_labels)
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    model.train()
    for _ in range(TRAIN_STEPS):
        index = torch.randint(0, len(images), (TRAIN_BATCH,), generator=generator)
        loss = torch.nn.functional.nll_loss(model(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    cache_dir.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, model, extra={"dataset": "mnist-5k", "steps": TRAIN_STEPS})


def publish_model(registry_dir: Path, checkpoint: Path) -> str:
    return open_registry(registry_dir).publish(checkpoint, {"purpose": "async tests"})


def held_out_digits(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` held-out digits (uint8 [N,28,28]) and their labels, cycling the test split."""
    dataset = load_dataset("mnist-5k")
    index = np.arange(count) % len(dataset.test_images)
    return dataset.test_images[index], dataset.test_labels[index]


def direct_predictions(checkpoint: Path, images: np.ndarray) -> np.ndarray:
    """What the model says for ``images`` when called directly: the reference for every route."""
    model = load_runtime(checkpoint, runtime="eager", device="cpu")
    return model.runtime.predict_proba(normalize(images, model.normalization)).argmax(axis=1)


def worker_env(
    *, amqp_url: str, redis_url: str, registry: Path, queue: str, **extra: str
) -> dict[str, str]:
    env = {
        **os.environ,
        "AMQP_URL": amqp_url,
        "REDIS_URL": redis_url,
        "REGISTRY_URL": str(registry),
        "QUEUE_NAME": queue,
        "DEVICE": "cpu",
        "RUNTIME": "eager",  # the reference predictions are eager: compare like with like
        "TORCH_THREADS": "1",
        "LOG_LEVEL": "info",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """A real ``lab2prod worker`` subprocess, its output in ``log_path``."""
    lab2prod = Path(sys.executable).with_name("lab2prod")
    handle = log_path.open("ab")
    return subprocess.Popen(
        [str(lab2prod), "worker", *args], env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT
    )
