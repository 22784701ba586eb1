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


# CPU features that decide which int8 (and fp32) kernels ONNX Runtime and oneDNN pick.
KERNEL_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "i8mm")


def cpu_description() -> dict[str, object]:
    """The processor this process runs on: model name and the kernel-relevant features."""
    import os
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model in ("", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {
        "model": model,
        "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "features": [name for name in KERNEL_FEATURES if name in flags],
    }
