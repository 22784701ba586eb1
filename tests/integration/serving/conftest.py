"""Fixtures for the serving tests: checkpoints (fresh and briefly trained), a registry per test
with v1 in production, and a private redis-server per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import serving_support as support


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serving-checkpoints")
    return {
        "v1": support.fresh_checkpoint(folder / "a.safetensors", seed=1),
        "v2": support.fresh_checkpoint(folder / "b.safetensors", seed=2),
    }


@pytest.fixture(scope="session")
def trained_checkpoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    folder = cache.mkdir("lab2prod-serving-model") if cache else tmp_path_factory.mktemp("model")
    return support.trained_checkpoint(Path(folder))


@pytest.fixture
def registry_dir(tmp_path: Path, checkpoints: dict[str, Path]) -> Path:
    registry = tmp_path / "models"
    support.publish(registry, checkpoints["v1"])
    return registry


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.RedisServer]:
    server = support.RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
