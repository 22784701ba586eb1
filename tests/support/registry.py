"""Publishing a checkpoint into a model registry, as a release does (minus the gate): alone, or
with the files the release's serving checks write for it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from service.inference.verification import RuntimeCriteria
from service.ml.records import CHECKPOINT_FILE
from service.registry import open_registry
from service.registry.base import PRODUCTION
from service.release.checks import prepare_runtimes


def publish(
    registry_dir: Path, checkpoint: Path, *, aliases: tuple[str, ...] = (PRODUCTION,), **card: Any
) -> str:
    """``checkpoint`` as the next mnist-cnn version in the folder registry at ``registry_dir``,
    ``aliases`` moved to it (production unless told otherwise); returns the version ("v1", ...).
    ``card`` adds fields to the version's card."""
    registry = open_registry(registry_dir, "mnist-cnn")
    return registry.publish(checkpoint, {"source": "tests", **card}, aliases=aliases)


def publish_release(
    registry_dir: Path, checkpoint: Path, images: np.ndarray, labels: np.ndarray, *,
    aliases: tuple[str, ...] = (PRODUCTION,), **card: Any
) -> str:
    """Like ``publish``, with what a release publishes beside the checkpoint, recorded by the
    release's own ``prepare_runtimes`` on ``images`` (the evaluation digits) and ``labels``: the
    runtime table (eager only, to be quick), the verification set and the drift reference."""
    registry_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="release-", dir=registry_dir.parent))
    staged = Path(shutil.copy(checkpoint, staging / CHECKPOINT_FILE))
    prepared = prepare_runtimes(staging, staged, images, labels, criteria=RuntimeCriteria(),
                                device="cpu", variants=["eager"])
    registry = open_registry(registry_dir, "mnist-cnn")
    return registry.publish(
        staged, {"source": "tests", "runtimes": prepared["runtimes"], **card}, aliases=aliases,
        artefacts=[staging / name for name in prepared["artefacts"]],
    )
