"""How many threads the model may use in this process (TORCH_THREADS).

torch's intra-op pool and every ONNX Runtime session follow one number. Setting it does not
import torch, so a process that serves an ONNX graph never loads torch (docs/benchmarks); where
torch is loaded, its own setting is the number (code that measures at another thread count for
a while, as the release's runtime selection does, sets torch's), and ``torch_module`` hands out
torch with the configured number applied.
"""

from __future__ import annotations

import sys
from types import ModuleType

_configured: int | None = None


def set_compute_threads(count: int) -> None:
    """Use ``count`` threads for the model from now on (torch now if loaded, else once it is)."""
    global _configured
    if count < 1:
        raise ValueError(f"the model needs at least one thread, got {count}")
    _configured = count
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)


def compute_threads() -> int:
    """The number of threads a model built now should use."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    return _configured or 1


def torch_module() -> ModuleType:
    """torch, imported now if it was not, with the configured thread count applied."""
    already = "torch" in sys.modules
    import torch

    if not already and _configured is not None:
        torch.set_num_threads(_configured)
    return torch
