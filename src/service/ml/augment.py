"""On-the-fly augmentation: small random rotations, shifts and scaling of a whole batch.

One batched ``affine_grid``/``grid_sample`` call, so it costs little on the CPU and runs on the
GPU when the batch is there. The random draws come from a caller's ``torch.Generator`` (on the
CPU, whatever the batch's device), so a seed gives the same augmented batches everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from service.ml.preprocess import IMAGE_SIDE, Normalization, normalize


@dataclass(frozen=True)
class RandomAffine:
    """Rotate by up to ``degrees``, shift by up to ``shift_px``, scale within ``scale``."""

    degrees: float = 10.0
    shift_px: float = 2.0
    scale: tuple[float, float] = (0.9, 1.1)
    normalization: Normalization = Normalization()

    def __post_init__(self) -> None:
        low, high = self.scale
        if not (0 < low <= high):
            raise ValueError(
                f"scale must be (low, high) with 0 < low <= high, like (0.9, 1.1); got {self.scale}"
            )
        if self.degrees < 0 or self.shift_px < 0:
            raise ValueError("degrees and shift_px must be >= 0, like degrees=10, shift_px=2")

    @property
    def background(self) -> float:
        """The value a blank (0) pixel has after normalisation: what the borders are filled with."""
        return (0.0 - self.normalization.mean) / self.normalization.std

    def thetas(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """[count,2,3] affine matrices mapping output to input coordinates (affine_grid's form)."""

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(count, generator=generator, dtype=torch.float32) * (high - low) + low

        angle = uniform(-self.degrees, self.degrees) * (math.pi / 180.0)
        scale = uniform(*self.scale)
        # affine_grid works in [-1, 1] with align_corners=False: one pixel is 2/28 wide.
        pixel = 2.0 / IMAGE_SIDE
        shift_x = uniform(-self.shift_px, self.shift_px) * pixel
        shift_y = uniform(-self.shift_px, self.shift_px) * pixel
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        return torch.stack(
            [torch.stack([cos, -sin, shift_x], dim=1), torch.stack([sin, cos, shift_y], dim=1)],
            dim=1,
        )

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a normalised batch [N,1,28,28]; returns a new tensor on the same device."""
        theta = self.thetas(batch.shape[0], generator).to(device=batch.device, dtype=batch.dtype)
        grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
        # grid_sample pads with zeros; shift so that zero is the background, then shift back.
        background = self.background
        moved = F.grid_sample(
            batch - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return moved + background


def augmented_examples(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint8 digits [N,28,28] -> one augmented draw of each, normalised, [N,28,28] (for plots)."""
    batch = normalize(images)
    return RandomAffine()(batch, torch.Generator().manual_seed(seed))[:, 0].numpy()
