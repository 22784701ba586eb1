"""The one preprocessing path: raw 28x28 uint8 digits (MNIST convention: light ink on dark)
become normalised model input. Training, evaluation, the API and the worker all call this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
IMAGE_SIDE = 28
IMAGE_PIXELS = IMAGE_SIDE * IMAGE_SIDE


@dataclass(frozen=True)
class Normalization:
    mean: float = MNIST_MEAN
    std: float = MNIST_STD

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}


def normalize(images: torch.Tensor | np.ndarray, norm: Normalization = Normalization()) -> torch.Tensor:
    """uint8 (or 0..255 float) digits shaped [N,28,28], [N,784] or [28,28] -> float [N,1,28,28]."""
    tensor = torch.as_tensor(images)
    if tensor.dim() == 2 and tensor.shape[-1] == IMAGE_PIXELS:
        tensor = tensor.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    elif tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(1)
    scaled = tensor.to(torch.float32).div_(255.0)
    return scaled.sub_(norm.mean).div_(norm.std)


class InvalidPixels(ValueError):
    """Raised when a pixel payload is not one 28x28 digit in 0..255."""


def pixels_to_array(pixels: Sequence[object]) -> np.ndarray:
    """JSON pixels (784 numbers, or 28 rows of 28) in 0..255 -> uint8 [28,28].

    Raises InvalidPixels with a message that says what was wrong.
    """
    if not isinstance(pixels, Sequence) or isinstance(pixels, str | bytes):
        raise InvalidPixels("pixels must be a list of 784 numbers or 28 lists of 28 numbers")
    if len(pixels) == IMAGE_SIDE and all(isinstance(row, list | tuple) for row in pixels):
        rows = pixels
        for index, row in enumerate(rows):
            if len(row) != IMAGE_SIDE:  # type: ignore[arg-type]
                raise InvalidPixels(f"row {index} has {len(row)} values; each of the 28 rows needs 28")  # type: ignore[arg-type]
        flat: list[object] = [value for row in rows for value in row]  # type: ignore[union-attr]
    else:
        flat = list(pixels)
        if len(flat) != IMAGE_PIXELS:
            raise InvalidPixels(
                f"expected 784 numbers (or 28 rows of 28), got {len(flat)} values"
            )
    for index, value in enumerate(flat):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidPixels(f"pixel {index} is {value!r}; pixels must be numbers in 0..255")
    array = np.asarray(flat, dtype=np.float64)
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise InvalidPixels(f"pixel {bad} is not a finite number (NaN or infinity)")
    if array.min() < 0 or array.max() > 255:
        bad = int(np.flatnonzero((array < 0) | (array > 255))[0])
        raise InvalidPixels(f"pixel {bad} is {array[bad]:g}; pixels must lie in 0..255")
    return np.rint(array).astype(np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE)
