"""Publishing a checkpoint into a model registry, as a release does (minus the gate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.registry import open_registry
from service.registry.base import PRODUCTION


def publish(
    registry_dir: Path, checkpoint: Path, *, aliases: tuple[str, ...] = (PRODUCTION,), **card: Any
) -> str:
    """``checkpoint`` as the next mnist-cnn version in the folder registry at ``registry_dir``,
    ``aliases`` moved to it (production unless told otherwise); returns the version ("v1", ...).
    ``card`` adds fields to the version's card."""
    registry = open_registry(registry_dir, "mnist-cnn")
    return registry.publish(checkpoint, {"source": "tests", **card}, aliases=aliases)
