"""Fixtures for the async-inference integration tests: a private Redis, the shared RabbitMQ
with a unique queue per test (deleted afterwards), and a briefly trained model in a registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import support


@pytest.fixture(scope="session")
def async_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = support.start_redis_server(tmp_path_factory.mktemp("redis"))
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture
def redis_url(async_redis_server: str) -> Iterator[str]:
    """The private server, flushed after each test."""
    yield async_redis_server
    import redis

    client = redis.Redis.from_url(async_redis_server)
    client.flushall()
    client.close()


@pytest.fixture(scope="session")
def amqp_url() -> str:
    return support.require_rabbitmq()


@pytest.fixture
def queue_name(amqp_url: str) -> Iterator[str]:
    name = support.unique_queue_name()
    yield name
    support.run_sync(support.delete_queue_topology(amqp_url, name))


@pytest.fixture(scope="session")
def checkpoint(request: pytest.FixtureRequest) -> Path:
    return support.trained_checkpoint(Path(request.config.cache.mkdir("lab2prod-async-model")))


@pytest.fixture
def registry_dir(tmp_path: Path, checkpoint: Path) -> Path:
    registry = tmp_path / "models"
    support.publish_model(registry, checkpoint)
    return registry
