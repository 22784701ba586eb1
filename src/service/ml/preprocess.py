"""The one preprocessing path: raw 28x28 uint8 digits (MNIST convention: light ink on dark)
become normalised model input. Training, evaluation, the API and the worker all call this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

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


def normalize(
    images: torch.Tensor | np.ndarray, norm: Normalization = Normalization()
) -> torch.Tensor:
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
                raise InvalidPixels(  # type: ignore[arg-type]
                    f"row {index} has {len(row)} values; each of the 28 rows needs 28"
                )
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


# --- uploads: any image of one digit -> a 28x28 digit made the way MNIST was made -------------

DIGIT_BOX = 20  # MNIST scaled each digit so its longer side is 20 px ...
WORKING_SIDE = 1024  # ... we shrink huge photos to this first (the 20 px result is the same)
INK_THRESHOLD = 0.3  # fraction of the ink's peak that bounds the digit (ignores paper texture)
NOISE_FLOOR = 0.1  # fainter than this fraction of the peak is paper, set to 0 as in MNIST
MIN_CONTRAST = 24.0  # grey levels between ink and background below which there is no digit


class InvalidImage(ValueError):
    """Raised when an image holds no digit that can be found (blank, or no contrast)."""


def image_to_mnist(image: Image.Image) -> np.ndarray:
    """A decoded image of one digit -> uint8 [28,28], light ink on dark, as MNIST was made.

    Any size, RGB or greyscale, with or without alpha, dark ink on light paper or the reverse,
    anywhere on the canvas. Steps: EXIF orientation, alpha flattened onto white, greyscale,
    polarity from the border (light border -> invert), background removed and contrast
    stretched, crop to the ink's bounding box, longer side scaled to 20 px keeping the aspect
    (anti-aliased), pasted into 28x28 so the centre of mass sits at the centre.
    """
    from PIL import Image, ImageOps

    if image.format == "JPEG":  # decode big JPEGs at a reduced scale (DCT scaling, much faster)
        image.draft("L", (WORKING_SIDE, WORKING_SIDE))
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    factor = max(image.size) // WORKING_SIDE
    if factor >= 2:  # huge PNGs: box-average down first, so later steps touch 1/factor² pixels
        with contextlib.suppress(ValueError):  # a mode reduce() does not take: shrink later
            image = image.reduce(factor)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float greyscale
        wide = np.asarray(image, dtype=np.float32)
        top = float(wide.max()) or 1.0
        image = Image.fromarray((wide * (255.0 / max(top, 255.0))).astype(np.uint8))
    grey = image.convert("L")
    if max(grey.size) > WORKING_SIDE:
        grey.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)
    return _grey_to_mnist(np.asarray(grey, dtype=np.float32))


def _grey_to_mnist(grey: np.ndarray) -> np.ndarray:
    from PIL import Image

    band = max(1, min(grey.shape) // 50)  # the outer 2% is the paper (or screen) around the digit
    border = np.concatenate(
        [grey[:band].ravel(), grey[-band:].ravel(), grey[:, :band].ravel(), grey[:, -band:].ravel()]
    )
    background = float(np.median(border))
    if background > 127.5:  # dark ink on light paper: make the ink light, as in MNIST
        grey = 255.0 - grey
        background = 255.0 - background
    ink = np.clip(grey - background, 0.0, None)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise InvalidImage(
            "no digit found: the image is blank or has almost no contrast between ink and paper"
        )
    ink *= 255.0 / peak
    ink[ink < NOISE_FLOOR * 255.0] = 0.0
    strong = ink >= INK_THRESHOLD * 255.0
    rows = np.flatnonzero(strong.any(axis=1))
    cols = np.flatnonzero(strong.any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Area averaging when shrinking (anti-aliased, keeps thin strokes' ink), bicubic when growing.
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
    small = np.asarray(Image.fromarray(crop).resize(size, resample), dtype=np.float32)
    small = np.clip(small, 0.0, None)
    small *= 255.0 / max(float(small.max()), 1e-6)
    return _paste_by_centre_of_mass(small)


def _paste_by_centre_of_mass(small: np.ndarray) -> np.ndarray:
    height, width = small.shape
    total = float(small.sum())
    centre_y = float((small.sum(axis=1) * np.arange(height)).sum()) / total
    centre_x = float((small.sum(axis=0) * np.arange(width)).sum()) / total
    # MNIST's centres of mass sit at (14, 14) in pixel indices.
    top = min(max(round(IMAGE_SIDE / 2 - centre_y), 0), IMAGE_SIDE - height)
    left = min(max(round(IMAGE_SIDE / 2 - centre_x), 0), IMAGE_SIDE - width)
    canvas = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    canvas[top : top + height, left : left + width] = small
    return np.rint(np.clip(canvas, 0.0, 255.0)).astype(np.uint8)
