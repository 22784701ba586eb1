"""Where a run came from: git commit and dirty flag, for run records and model cards."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_state(cwd: str | Path = ".") -> dict[str, object]:
    """{"commit": sha or None, "dirty": bool or None}; None when not in a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's numbers."""
    from importlib import metadata

    versions: dict[str, str] = {}
    for package in ("torch", "numpy", "safetensors", "torchvision", "onnxruntime", "lab2prod"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
