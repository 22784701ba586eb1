"""Fixtures for the serving tests: two untrained checkpoints and a registry per test with v1 in
production. The trained model and the private redis-server come from tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.models import fresh_checkpoint
from support.registry import publish


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serving-checkpoints")
    return {
        "v1": fresh_checkpoint(folder / "a.safetensors", seed=1),
        "v2": fresh_checkpoint(folder / "b.safetensors", seed=2),
    }


@pytest.fixture
def registry_dir(tmp_path: Path, checkpoints: dict[str, Path]) -> Path:
    registry = tmp_path / "models"
    publish(registry, checkpoints["v1"])
    return registry
