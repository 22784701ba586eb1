"""Runtimes: one interface over the ways of running the model (eager, exported, quantized).

Every runtime takes a normalised float batch [N,1,28,28] and returns class probabilities
[N,C] as a numpy array. The release gate, the API and the worker all load through
``load_runtime``, so the checkpoint is checked along the same path that serves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from service.ml.checkpoint import LoadedCheckpoint, load_checkpoint
from service.ml.preprocess import Normalization


class Runtime(Protocol):
    name: str
    device: torch.device

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray: ...


def resolve_device(requested: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; an explicit device is taken as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@dataclass
class EagerRuntime:
    """Plain PyTorch under inference_mode."""

    model: torch.nn.Module
    device: torch.device
    name: str = "eager"

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            log_probs = self.model(batch.to(self.device, non_blocking=True))
            return log_probs.exp_().float().cpu().numpy()


@dataclass
class LoadedModel:
    """What serving holds: a runtime plus the checkpoint's metadata."""

    runtime: Runtime
    metadata: dict[str, Any]
    version: str
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def normalization(self) -> Normalization:
        return Normalization(**self.metadata["normalization"])

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])


def build_runtime(checkpoint: LoadedCheckpoint, name: str, device: torch.device) -> Runtime:
    if name in ("auto", "eager"):
        return EagerRuntime(checkpoint.model, device)
    raise ValueError(f"unknown runtime {name!r}")


def load_runtime(
    path: str | Path, *, runtime: str = "auto", device: str = "auto", version: str = "unversioned"
) -> LoadedModel:
    """Load a checkpoint through the one loader and wrap it in the chosen runtime."""
    target = resolve_device(device)
    checkpoint = load_checkpoint(path, device=target)
    return LoadedModel(
        runtime=build_runtime(checkpoint, runtime, target),
        metadata=checkpoint.metadata,
        version=version,
        path=Path(path),
    )
