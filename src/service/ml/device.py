"""Which torch device a setting names: one rule for training, evaluation, release and serving."""

from __future__ import annotations

import torch


def resolve_device(requested: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; 'cpu' and 'cuda[:N]' are taken as given,
    and CUDA asked for on a machine without it is refused with what to use instead."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ValueError(f"device {requested!r} is not a device; use 'auto', 'cpu' or "
                         "'cuda[:N]'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {requested!r} asked for, but CUDA is not available; use 'auto' or 'cpu'"
        )
    return device
