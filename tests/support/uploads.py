"""Images as users upload them: encoded in a format, a photo-sized drawn 1, a clean scan of a
dataset digit, and a dataset digit rendered the way a phone photo of paper comes out."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    """``image`` as the bytes of a ``fmt`` file (options go to Pillow's save)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def digit_png() -> bytes:
    """A photo-sized upload: one dark stroke (a 1) on white paper."""
    canvas = Image.new("RGB", (300, 220), "white")
    canvas.paste((20, 20, 20), (140, 40, 165, 190))
    return encode(canvas)


def scanned_png(digit: np.ndarray, side: int = 112) -> bytes:
    """A dataset digit (uint8 28x28, light on dark) as a clean scan: dark ink on white paper,
    scaled to ``side`` x ``side`` px, RGB PNG."""
    ink = Image.fromarray(255 - digit).resize((side, side), Image.Resampling.BICUBIC)
    return encode(ink.convert("RGB"))


def render_upload(
    digit: np.ndarray, rng: np.random.Generator, *, dark_on_light: bool = True
) -> bytes:
    """A dataset digit as a user would upload it: scaled up to 200-400 px, off-centre on a larger
    slightly tinted canvas, RGB, JPEG-compressed; dark ink on light paper (or the reverse)."""
    side = int(rng.integers(200, 401))
    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC))
    width, height = (int(side * rng.uniform(1.3, 2.0)) for _ in range(2))
    paper = int(rng.integers(215, 256))
    canvas = np.full((height, width), paper, dtype=np.uint8)
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    region = canvas[top : top + side, left : left + side]
    canvas[top : top + side, left : left + side] = np.minimum(region, 255 - ink)
    if not dark_on_light:
        canvas = 255 - canvas
    rgb = Image.fromarray(canvas).convert("RGB")
    return encode(rgb, "JPEG", quality=int(rng.integers(60, 91)))
