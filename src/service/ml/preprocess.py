"""The one preprocessing path: raw 28x28 uint8 digits (MNIST convention: light ink on dark)
become normalised model input. Training, evaluation, the API and the worker all call this.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported by the torch path only: serving an ONNX graph never needs it
    import torch
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
    import torch

    if isinstance(images, np.ndarray):
        return torch.from_numpy(normalize_array(images, norm))
    tensor = images
    if tensor.dim() == 2 and tensor.shape[-1] == IMAGE_PIXELS:
        tensor = tensor.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    elif tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(1)
    scaled = tensor.to(torch.float32).div_(255.0)
    return scaled.sub_(norm.mean).div_(norm.std)


def normalize_array(images: np.ndarray, norm: Normalization = Normalization()) -> np.ndarray:
    """``normalize`` for numpy digits, as a float32 numpy array: the same operations in the same
    order, so the same bits (tests/unit check it). Serving calls it on every batch: torch's
    per-operation overhead cost ~50 µs a batch of one there (docs/benchmarks/overhead.md)."""
    array = np.asarray(images)
    if array.ndim == 2 and array.shape[-1] == IMAGE_PIXELS:
        array = array.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    elif array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim == 3:
        array = array[:, np.newaxis]
    scaled = array.astype(np.float32)  # a copy, whatever the input's type
    scaled /= 255.0
    scaled -= norm.mean
    scaled /= norm.std
    return scaled


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
    grey = image if image.mode == "L" else image.convert("L")
    if max(grey.size) > WORKING_SIDE:
        grey = ImageOps.contain(grey, (WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)
    return _grey_to_mnist(grey)


def _grey_to_mnist(grey: Image.Image) -> np.ndarray:
    """Greyscale canvas -> the 28x28 digit.

    All per-pixel work is uint8 arithmetic: a few comparisons over the canvas find the ink,
    and background removal and the noise floor touch the cut-out digit only; floats appear
    once it is 20 px. Every step is one array operation: at MNIST's sizes each call's fixed
    cost, not the pixels, is what an upload pays (docs/benchmarks/overhead.md)."""
    from PIL import Image

    width, height = grey.size
    pixels = np.frombuffer(grey.tobytes(), dtype=np.uint8).reshape(height, width)
    background = _border_median(pixels)
    inverted = background > 127  # dark ink on light paper: make the ink light, as in MNIST
    peak = background - int(pixels.min()) if inverted else int(pixels.max()) - background
    if peak < MIN_CONTRAST:
        raise InvalidImage(
            "no digit found: the image is blank or has almost no contrast between ink and paper"
        )
    # Strong ink bounds the digit; integer thresholds on uint8 (10x cheaper than floats).
    if inverted:
        strong = pixels <= np.uint8(math.floor(background - INK_THRESHOLD * peak))
    else:
        strong = pixels >= np.uint8(math.ceil(background + INK_THRESHOLD * peak))
    rows = np.flatnonzero(strong.any(axis=1))
    cols = np.flatnonzero(strong[rows[0] : rows[-1] + 1].any(axis=0))
    # Ink above the background, in levels, on the cut-out only (uint8 arithmetic: a lookup
    # table per pixel cost three times as much). Paper texture fainter than the noise floor
    # becomes MNIST's 0. Contrast needs no stretch here: the result is scaled to 255 below.
    region = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    if inverted:
        keep = region <= np.uint8(math.floor(background - NOISE_FLOOR * peak))
        ink = np.uint8(background) - region  # wraps only where keep is False
    else:
        keep = region >= np.uint8(math.ceil(background + NOISE_FLOOR * peak))
        ink = region - np.uint8(background)
    ink *= keep
    if peak < 128:  # faint ink: spread it over more levels before averaging rounds it
        ink *= np.uint8(255 // peak)  # exact: ink <= peak
    crop_height, crop_width = ink.shape
    scale = DIGIT_BOX / max(crop_height, crop_width)
    size = (max(1, round(crop_width * scale)), max(1, round(crop_height * scale)))
    # Area averaging when shrinking (anti-aliased, keeps thin strokes' ink), bicubic when growing.
    if scale < 1:
        shrunk = Image.fromarray(ink).resize(size, Image.Resampling.BOX)
        small = np.frombuffer(shrunk.tobytes(), dtype=np.uint8).astype(np.float32)
    else:  # in floats: bicubic overshoots, and its negative lobes must be clipped, not wrapped
        grown = Image.fromarray(ink.astype(np.float32)).resize(size, Image.Resampling.BICUBIC)
        small = np.frombuffer(grown.tobytes(), dtype=np.float32).copy()
        np.maximum(small, 0.0, out=small)
    small = small.reshape(size[1], size[0])
    small *= 255.0 / max(float(small.max()), 1e-6)
    return _paste_by_centre_of_mass(small)


def _border_median(pixels: np.ndarray) -> int:
    """The median level of the outer 2% of the canvas: the paper (or screen) around the digit."""
    band = max(1, min(pixels.shape) // 50)
    border = np.concatenate(
        [pixels[:band].ravel(), pixels[-band:].ravel(),
         pixels[:, :band].ravel(), pixels[:, -band:].ravel()]
    )
    middle = [(border.size - 1) // 2, border.size // 2]
    lower, upper = np.partition(border, middle)[middle]
    return (int(lower) + int(upper) + 1) // 2


_PIXEL_INDEX = np.arange(IMAGE_SIDE, dtype=np.float64)


def _paste_by_centre_of_mass(small: np.ndarray) -> np.ndarray:
    """The scaled digit (floats in 0..255) -> uint8 28x28 with its centre of mass at MNIST's."""
    height, width = small.shape
    row_mass = small.sum(axis=1, dtype=np.float64)
    total = float(row_mass.sum())
    centre_y = float(row_mass @ _PIXEL_INDEX[:height]) / total
    centre_x = float(small.sum(axis=0, dtype=np.float64) @ _PIXEL_INDEX[:width]) / total
    # MNIST's centres of mass sit at (14, 14) in pixel indices.
    top = min(max(round(IMAGE_SIDE / 2 - centre_y), 0), IMAGE_SIDE - height)
    left = min(max(round(IMAGE_SIDE / 2 - centre_x), 0), IMAGE_SIDE - width)
    canvas = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    # In 0..255 already (scaled so the peak is 255, float32 error far below half a level).
    canvas[top : top + height, left : left + width] = np.rint(small, out=small)
    return canvas
