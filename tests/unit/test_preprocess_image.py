"""image_to_mnist: any upload of one digit -> the 28x28 light-on-dark digit MNIST would hold."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.ml.data import load_dataset
from service.ml.preprocess import InvalidImage, image_to_mnist


@pytest.fixture(scope="module")
def digit() -> np.ndarray:
    return load_dataset("mnist-5k", test_limit=10).test_images[3]


def on_canvas(digit: np.ndarray, *, side=240, canvas=(500, 400), at=(30, 60), dark_on_light=True):
    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC))
    page = np.zeros((canvas[1], canvas[0]), dtype=np.uint8)
    page[at[1] : at[1] + side, at[0] : at[0] + side] = ink
    return Image.fromarray(255 - page if dark_on_light else page)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[0:28, 0:28]
    total = image.sum()
    return float((image * ys).sum() / total), float((image * xs).sum() / total)


def aligned_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference, allowing a one-pixel shift (centring rounds to whole pixels)."""
    a, b = a.astype(int), b.astype(int)
    return min(
        float(np.abs(np.roll(a, (dy, dx), axis=(0, 1)) - b).mean())
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )


def test_both_polarities_give_the_same_light_on_dark_digit(digit):
    dark = image_to_mnist(on_canvas(digit, dark_on_light=True))
    light = image_to_mnist(on_canvas(digit, dark_on_light=False))
    assert np.abs(dark.astype(int) - light.astype(int)).max() <= 1
    assert dark[0].max() == 0 and dark.max() == 255, "background 0, ink up to 255 as in MNIST"


def test_position_on_the_canvas_does_not_matter_and_the_mass_is_centred(digit):
    left = image_to_mnist(on_canvas(digit, at=(0, 0)))
    right = image_to_mnist(on_canvas(digit, at=(250, 150)))
    assert np.array_equal(left, right)
    centre_y, centre_x = centre_of_mass(left.astype(float))
    assert abs(centre_y - 14) <= 0.5 and abs(centre_x - 14) <= 0.5


def test_a_dataset_digit_comes_back_close_to_itself(digit):
    upload = image_to_mnist(on_canvas(digit))
    assert upload.dtype == np.uint8 and upload.shape == (28, 28)
    assert np.abs(upload.astype(int) - digit.astype(int)).mean() < 8


def test_the_longer_side_becomes_20_pixels_and_the_aspect_is_kept():
    page = Image.new("L", (600, 300), 255)
    page.paste(0, (100, 120, 500, 180))  # a 400x60 dash
    dash = image_to_mnist(page)
    rows, cols = np.flatnonzero(dash.any(axis=1)), np.flatnonzero(dash.any(axis=0))
    assert len(cols) == 20
    assert len(rows) == 3


def test_transparency_is_paper_and_colour_is_grey(digit):
    on_white = image_to_mnist(on_canvas(digit))
    ink = 255 - np.asarray(on_canvas(digit))
    rgba = np.zeros((*ink.shape, 4), dtype=np.uint8)
    rgba[..., 2] = 40  # dark blue ink ...
    rgba[..., 3] = ink  # ... drawn on a transparent layer
    transparent = image_to_mnist(Image.fromarray(rgba, "RGBA"))
    assert aligned_difference(transparent, on_white) < 2


def test_exif_orientation_is_applied_before_anything_else(digit):
    upright = on_canvas(digit).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # how a phone stores a turned shot
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)
    from_phone = image_to_mnist(Image.open(io.BytesIO(buffer.getvalue())))
    expected = image_to_mnist(upright)
    assert aligned_difference(from_phone, expected) < 4


def test_sixteen_bit_greyscale_is_read(digit):
    wide = (np.asarray(on_canvas(digit)).astype(np.uint16) * 257).astype(np.uint16)
    image = Image.fromarray(wide)
    assert image.mode.startswith("I;16")
    assert aligned_difference(image_to_mnist(image), image_to_mnist(on_canvas(digit))) < 2


def test_paper_texture_and_speckles_are_not_ink(digit):
    rng = np.random.default_rng(0)
    page = np.asarray(on_canvas(digit)).astype(int) - rng.integers(0, 25, (400, 500))
    clean = image_to_mnist(on_canvas(digit))
    noisy = image_to_mnist(Image.fromarray(np.clip(page, 0, 255).astype(np.uint8)))
    assert aligned_difference(noisy, clean) < 3


def test_an_image_with_no_ink_is_refused():
    with pytest.raises(InvalidImage, match="no digit found"):
        image_to_mnist(Image.new("L", (100, 100), 240))
