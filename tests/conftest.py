"""Shared fixtures, built on the support package: real digits as IDX files, the test models,
a private redis-server, a queue of its own on the shared RabbitMQ, and an MLflow store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import models, rabbitmq
from support.servers import RedisServer

TINY_TRAIN, TINY_TEST = 200, 100


@pytest.fixture(scope="session")
def idx_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the four MNIST IDX files (gzip) holding 200 train / 100 test real digits."""
    from service.ml.data import IDX_FILES, load_dataset, write_idx

    source = load_dataset("mnist-5k", limit=TINY_TRAIN, test_limit=TINY_TEST)
    root = tmp_path_factory.mktemp("idx")
    arrays = {
        "train_images": source.train_images,
        "train_labels": source.train_labels,
        "test_images": source.test_images,
        "test_labels": source.test_labels,
    }
    for key, stem in IDX_FILES.items():
        write_idx(root / f"{stem}.gz", arrays[key])
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, idx_data_dir: Path) -> Path:
    """A checkpoint trained for one epoch on the tiny IDX digits ('mnist' read from a folder),
    written by write_run: for tests of the data folder a run records, not of accuracy."""
    from service.ml.train import TrainConfig, train, write_run

    run_dir = tmp_path_factory.mktemp("tiny-run")
    config = TrainConfig(
        dataset="mnist", data_dir=str(idx_data_dir), epochs=1, run_dir=str(run_dir)
    )
    write_run(train(config, progress=False))
    return run_dir / "model.safetensors"


@pytest.fixture(scope="session")
def model_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where trained test models are kept: pytest's cache, so later sessions reuse them."""
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    return Path(cache.mkdir("lab2prod-models") if cache else tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def trained_checkpoint(model_cache: Path) -> Path:
    """The test model: right on about 90% of held-out digits (see support.models)."""
    return models.trained_checkpoint(model_cache)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the test module; a test may stop it (and must start it)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The module's private redis-server, flushed after each test."""
    yield redis_server.url
    redis_server.flush()


@pytest.fixture(scope="session")
def amqp_url() -> str:
    return rabbitmq.require_rabbitmq()


@pytest.fixture
def queue_name(amqp_url: str) -> Iterator[str]:
    """A queue name of this test's own on the shared RabbitMQ, its topology deleted after."""
    name = rabbitmq.unique_queue_name()
    yield name
    rabbitmq.run_sync(rabbitmq.delete_queue_topology(amqp_url, name))


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An MLflow tracking and registry store in a SQLite file (MLflow's own store, no server),
    its tables made once; tests keep apart by model and experiment names."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()
    return uri
