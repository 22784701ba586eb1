"""Checkpoints: one safetensors file, weights plus JSON metadata in its header.

Loading never unpickles code. A missing, corrupt, truncated or mismatched checkpoint is refused
with a CheckpointError that says which and why. This is the one loader used by the release
gate, the API and the worker.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from service.ml.model import ARCHITECTURES, architecture_version, build_model
from service.ml.preprocess import Normalization
from service.provenance import library_versions

FORMAT = "lab2prod-checkpoint/1"
METADATA_KEY = "lab2prod"


class CheckpointError(ValueError):
    """The checkpoint cannot be trusted; the message says which check failed."""


@dataclass
class LoadedCheckpoint:
    model: nn.Module
    metadata: dict[str, Any]
    path: Path
    read_only: bool = False  # its folder must not be written to (a published registry version)

    @property
    def normalization(self) -> Normalization:
        return Normalization(**self.metadata["normalization"])

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "sha256:" + digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    architecture: str = "mnist-cnn",
    normalization: Normalization = Normalization(),
    class_names: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write weights and metadata atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()
    }
    metadata: dict[str, Any] = {
        **(extra or {}),
        "format": FORMAT,
        "architecture": architecture,
        "architecture_version": architecture_version(architecture),
        "normalization": normalization.as_dict(),
        "class_names": class_names or [str(i) for i in range(10)],
        "weights_sha256": weights_digest(state),
        "library_versions": library_versions(),
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(state, str(temporary), metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    os.replace(temporary, path)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Read and check the metadata header without loading the weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is corrupt or truncated: not a readable safetensors file ({exc})"
        ) from exc
    if METADATA_KEY not in header:
        raise CheckpointError(
            f"{path} is a safetensors file but not a lab2prod checkpoint (no metadata)"
        )
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} has corrupt metadata JSON ({exc})") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} has format {metadata.get('format')!r}; this code reads {FORMAT!r}"
        )
    return metadata


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, read_only: bool = False
) -> LoadedCheckpoint:
    """Load, verify and return the model in eval mode on ``device``; ``read_only`` marks a
    folder nothing may be written into (files derived from it then go to a cache)."""
    path = Path(path)
    metadata = read_metadata(path)
    architecture = metadata.get("architecture")
    if architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"{path} is mismatched: architecture {architecture!r} is not one this code knows "
            f"({', '.join(sorted(ARCHITECTURES))})"
        )
    expected_version = architecture_version(architecture)
    if metadata.get("architecture_version") != expected_version:
        raise CheckpointError(
            f"{path} is mismatched: {architecture} version {metadata.get('architecture_version')} "
            f"but this code builds version {expected_version}"
        )
    try:
        state: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                state[name] = handle.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} is corrupt or truncated: cannot read its tensors ({exc})"
        ) from exc
    if weights_digest(state) != metadata.get("weights_sha256"):
        raise CheckpointError(
            f"{path} is corrupt: the weights do not match their recorded checksum"
        )
    model = build_model(architecture, num_classes=len(metadata.get("class_names", [])) or 10)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} is mismatched: its tensors do not fit {architecture} ({exc})"
        ) from exc
    model.to(device).eval()
    return LoadedCheckpoint(model=model, metadata=metadata, path=path, read_only=read_only)
