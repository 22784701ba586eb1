"""Fixtures for the async-inference tests: a registry per test with the trained test model as
v1 in production. Redis, RabbitMQ queues and the model come from tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.registry import publish


@pytest.fixture
def registry_dir(tmp_path: Path, trained_checkpoint: Path) -> Path:
    registry = tmp_path / "models"
    publish(registry, trained_checkpoint)
    return registry
