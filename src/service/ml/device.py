"""Which device a setting names: one rule for training, evaluation, release and serving.

The rule itself does not import torch where there is no CUDA driver: a process that serves an
exported ONNX graph on the CPU then never loads torch (about 400 MiB of its memory,
docs/benchmarks). Where the driver is present, torch decides whether CUDA is usable.
"""

from __future__ import annotations

import ctypes
import functools
import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_CUDA_NAME = re.compile(r"^cuda(?::(\d+))?$")


class Device(str):
    """A device name ('cpu', 'cuda', 'cuda:1') with torch.device's ``type`` and ``index``;
    torch takes it wherever it takes a device string."""

    @property
    def type(self) -> str:
        return self.partition(":")[0]

    @property
    def index(self) -> int | None:
        number = self.partition(":")[2]
        return int(number) if number else None


def device_name(requested: str = "auto") -> Device:
    """'auto' picks CUDA when present, else the CPU; 'cpu' and 'cuda[:N]' are taken as given,
    and CUDA asked for on a machine without it is refused with what to use instead. Other
    names torch knows are checked by torch."""
    requested = requested.strip().lower()
    if requested == "auto":
        return Device("cuda" if cuda_available() else "cpu")
    if requested == "cpu":
        return Device("cpu")
    if not _CUDA_NAME.match(requested):
        return Device(str(_torch_device(requested)))
    if not cuda_available():
        raise ValueError(
            f"device {requested!r} asked for, but CUDA is not available; use 'auto' or 'cpu'"
        )
    return Device(requested)


def resolve_device(requested: str = "auto") -> torch.device:
    """``device_name``'s choice as a torch.device (for code that runs torch anyway)."""
    import torch

    return torch.device(device_name(requested))


def cuda_available() -> bool:
    """Whether torch can use a CUDA device here; torch is imported only to answer where a CUDA
    driver library exists (or torch is loaded already)."""
    if "torch" not in sys.modules and not _cuda_driver_present():
        return False
    import torch

    return bool(torch.cuda.is_available())


def cuda_device_count() -> int:
    """How many CUDA devices torch can use here (0 without a driver, torch not imported then)."""
    if not cuda_available():
        return 0
    import torch

    return int(torch.cuda.device_count())


def goes_round_gpus(requested: str) -> bool:
    """Whether processes started together with this DEVICE share out the GPUs (auto, cuda)."""
    return requested.strip().lower() in ("auto", "cuda")


def device_for_process(requested: str, index: int, gpus: int) -> Device | None:
    """The DEVICE of process ``index`` of several started together (``lab2prod worker
    --processes``, ``lab2prod serve --workers``): with two GPUs or more, 'auto' and 'cuda' go
    round them (``cuda:{index mod gpus}``); None keeps the setting as it is (a named device,
    the CPU, one GPU or none)."""
    if gpus < 2 or not goes_round_gpus(requested):
        return None
    return Device(f"cuda:{index % gpus}")


@functools.cache
def _cuda_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _torch_device(requested: str) -> torch.device:
    import torch

    try:
        return torch.device(requested)
    except RuntimeError as exc:
        raise ValueError(f"device {requested!r} is not a device; use 'auto', 'cpu' or "
                         "'cuda[:N]'") from exc
