"""Checkpoints: one safetensors file, weights plus JSON metadata in its header.

Loading never unpickles code. A missing, corrupt, truncated or mismatched checkpoint is refused
with a CheckpointError that says which and why. This is the one loader used by the release
gate, the API and the worker: ``load_checkpoint`` builds the torch model at once;
``open_checkpoint`` checks the file (metadata and weights checksum, read with numpy) and builds
the model only when ``model`` is first used, so a server of an exported ONNX graph never
imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError, safe_open

from service.ml.preprocess import Normalization

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT = "lab2prod-checkpoint/1"
METADATA_KEY = "lab2prod"


class CheckpointError(ValueError):
    """The checkpoint cannot be trusted; the message says which check failed."""


class LoadedCheckpoint:
    """A verified checkpoint: its metadata, and its torch model (built on first use)."""

    def __init__(
        self, metadata: dict[str, Any], path: Path, *, read_only: bool = False,
        device: str | torch.device = "cpu", model: nn.Module | None = None,
    ) -> None:
        self.metadata = metadata
        self.path = path
        self.read_only = read_only  # its folder must not be written to (a published version)
        self.device = device
        self._model = model

    @property
    def model(self) -> nn.Module:
        """The model in eval mode on ``device``; building it imports torch."""
        if self._model is None:
            self._model = load_checkpoint(self.path, self.device).model
        return self._model

    @property
    def normalization(self) -> Normalization:
        return Normalization(**self.metadata["normalization"])

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])


def weights_digest(state: dict[str, torch.Tensor] | dict[str, np.ndarray]) -> str:
    """sha256 over each tensor's name, shape and raw bytes, in name order (torch or numpy)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        value = state[name]
        if isinstance(value, np.ndarray):
            digest.update(str(value.shape).encode())
            digest.update(np.ascontiguousarray(value).tobytes() if value.size else b"")
            continue
        import torch  # loaded already: ``value`` is a tensor

        tensor = value.detach().to("cpu").contiguous()
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
    from safetensors.torch import save_file

    from service.ml.model import architecture_version
    from service.provenance import library_versions

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
        with safe_open(str(path), framework="numpy") as handle:
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


def _verified_tensors(path: Path, metadata: dict[str, Any], framework: str) -> dict[str, Any]:
    """Every tensor of the file, read with ``framework`` ("numpy" or "pt") and checked against
    the recorded checksum. A dtype the framework cannot hold raises TypeError."""
    try:
        with safe_open(str(path), framework=framework) as handle:
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} is corrupt or truncated: cannot read its tensors ({exc})"
        ) from exc
    if weights_digest(state) != metadata.get("weights_sha256"):
        raise CheckpointError(
            f"{path} is corrupt: the weights do not match their recorded checksum"
        )
    return state


def open_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, read_only: bool = False
) -> LoadedCheckpoint:
    """Check the metadata and the weights against their checksum without torch; the model is
    built (and its architecture checked) when ``model`` is first used."""
    path = Path(path)
    metadata = read_metadata(path)
    try:
        _verified_tensors(path, metadata, framework="numpy")
    except TypeError:  # a dtype numpy lacks (bfloat16): torch reads it
        return load_checkpoint(path, device, read_only=read_only)
    return LoadedCheckpoint(metadata, path, read_only=read_only, device=device)


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, read_only: bool = False
) -> LoadedCheckpoint:
    """Load, verify and return the model in eval mode on ``device``; ``read_only`` marks a
    folder nothing may be written into (files derived from it then go to a cache)."""
    from service.ml.model import ARCHITECTURES, architecture_version, build_model

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
    state = _verified_tensors(path, metadata, framework="pt")
    model = build_model(architecture, num_classes=len(metadata.get("class_names", [])) or 10)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} is mismatched: its tensors do not fit {architecture} ({exc})"
        ) from exc
    model.to(device).eval()
    return LoadedCheckpoint(metadata, path, read_only=read_only, device=device, model=model)
