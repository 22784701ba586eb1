"""Publishing checkpoints into a model registry, as a release does (minus the gate): alone, with
the files the release's serving checks write for it, or racing from many processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from service.inference.verification import RuntimeCriteria
from service.ml.records import CHECKPOINT_FILE
from service.registry import ModelRegistry, open_registry
from service.registry.base import PRODUCTION
from service.release.checks import prepare_runtimes
from support.models import fresh_checkpoint


def publish(
    registry_dir: Path, checkpoint: Path, *, aliases: tuple[str, ...] = (PRODUCTION,), **card: Any
) -> str:
    """``checkpoint`` as the next mnist-cnn version in the folder registry at ``registry_dir``,
    ``aliases`` moved to it (production unless told otherwise); returns the version ("v1", ...).
    ``card`` adds fields to the version's card."""
    registry = open_registry(registry_dir, "mnist-cnn")
    return registry.publish(checkpoint, {"source": "tests", **card}, aliases=aliases)


def one_version_registry(folder: Path) -> Path:
    """A folder registry at ``folder``/models whose production alias points at v1, a fresh
    (seeded, untrained) model: all a server needs to start and answer."""
    registry = folder / "models"
    publish(registry, fresh_checkpoint(folder / "v1.safetensors", seed=1))
    return registry


_PUBLISH = """
import sys
from service.registry import open_registry
registry = open_registry(sys.argv[1], sys.argv[2])
print(registry.publish(sys.argv[3], {"run_id": sys.argv[4]}))
"""
_PROMOTE = """
import sys, time
from service.registry import open_registry
registry = open_registry(sys.argv[1], sys.argv[2])
for _ in range(2000):  # promote whatever exists as soon as something does
    versions = registry.versions()
    if versions:
        print(registry.promote(versions[0], sys.argv[3]))
        break
    time.sleep(0.05)
"""


def race(url: str, model_name: str, folder: Path, publishers: int,
         aliases: tuple[str, ...]) -> list[Path]:
    """``publishers`` checkpoints (``run-<i>``) published and ``aliases`` promoted to the first
    version, each from a process of its own, all at once; fails unless every process succeeded
    and the publishers got ``v1``..``v<publishers>`` between them. Returns the checkpoints."""
    checkpoints = []
    for index in range(publishers):
        path = folder / f"candidate-{index}.safetensors"
        path.write_bytes(f"weights-{index}".encode() * 1000)
        checkpoints.append(path)
    processes = [
        subprocess.Popen([sys.executable, "-c", _PUBLISH, url, model_name, str(path),
                          f"run-{index}"], stdout=subprocess.PIPE, text=True)
        for index, path in enumerate(checkpoints)
    ] + [
        subprocess.Popen([sys.executable, "-c", _PROMOTE, url, model_name, alias],
                         stdout=subprocess.PIPE, text=True)
        for alias in aliases
    ]
    outputs = [process.communicate(timeout=300)[0].strip() for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    published = sorted(outputs[:publishers], key=lambda version: int(version[1:]))
    assert published == [f"v{n}" for n in range(1, publishers + 1)]
    return checkpoints


def assert_nothing_lost(registry: ModelRegistry, checkpoints: list[Path],
                        aliases: tuple[str, ...]) -> None:
    """After a ``race``: every checkpoint is one version whose card names it, and every alias
    names one of those versions."""
    expected = [f"v{n}" for n in range(1, len(checkpoints) + 1)]
    assert registry.versions() == expected
    runs = set()
    for version in expected:
        card = registry.card(version)
        assert card["version"] == version
        index = int(card["run_id"].split("-")[1])
        assert registry.checkpoint_path(version).read_bytes() == checkpoints[index].read_bytes()
        runs.add(card["run_id"])
    assert len(runs) == len(checkpoints)
    current = registry.aliases()
    assert set(aliases) <= set(current) and set(current.values()) <= set(expected)


def publish_release(
    registry_dir: Path, checkpoint: Path, images: np.ndarray, labels: np.ndarray, *,
    aliases: tuple[str, ...] = (PRODUCTION,), variants: tuple[str, ...] = ("eager",),
    criteria: RuntimeCriteria | None = None, **card: Any
) -> str:
    """Like ``publish``, with what a release publishes beside the checkpoint, recorded by the
    release's own ``prepare_runtimes`` on ``images`` (the evaluation digits) and ``labels``: the
    runtime table over ``variants`` (eager only unless told, to be quick) and their exported
    files, the verification set and the drift reference."""
    registry_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="release-", dir=registry_dir.parent))
    staged = Path(shutil.copy(checkpoint, staging / CHECKPOINT_FILE))
    prepared = prepare_runtimes(staging, staged, images, labels,
                                criteria=criteria or RuntimeCriteria(), device="cpu",
                                variants=list(variants))
    registry = open_registry(registry_dir, "mnist-cnn")
    return registry.publish(
        staged, {"source": "tests", "runtimes": prepared["runtimes"], **card}, aliases=aliases,
        artefacts=[staging / name for name in prepared["artefacts"]],
    )
