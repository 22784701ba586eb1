"""Augmentation: batched random affine jitter that keeps shape, background and determinism."""

import pytest
import torch

from service.ml.augment import RandomAffine
from service.ml.preprocess import normalize


def _digits(count=16):
    images = torch.zeros(count, 28, 28, dtype=torch.uint8)
    images[:, 8:20, 12:16] = 255  # a vertical bar: a "1"
    return normalize(images)


def test_augmentation_keeps_the_batch_shape_and_dtype():
    batch = _digits()
    out = RandomAffine()(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.dtype == batch.dtype


def test_same_seed_gives_the_same_augmented_batch():
    batch = _digits()
    first = RandomAffine()(batch, torch.Generator().manual_seed(5))
    second = RandomAffine()(batch, torch.Generator().manual_seed(5))
    other = RandomAffine()(batch, torch.Generator().manual_seed(6))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_each_digit_in_a_batch_gets_its_own_transform():
    out = RandomAffine()(_digits(), torch.Generator().manual_seed(0))
    assert not torch.equal(out[0], out[1])


def test_zero_strength_is_the_identity():
    batch = _digits()
    still = RandomAffine(degrees=0, shift_px=0, scale=(1.0, 1.0))
    assert torch.allclose(still(batch, torch.Generator().manual_seed(0)), batch, atol=1e-5)


def test_blank_borders_stay_background_not_zero():
    jitter = RandomAffine()
    blank = normalize(torch.zeros(4, 28, 28, dtype=torch.uint8))
    out = jitter(blank, torch.Generator().manual_seed(0))
    assert torch.allclose(out, torch.full_like(out, jitter.background), atol=1e-5)


def test_transforms_stay_small():
    thetas = RandomAffine().thetas(2000, torch.Generator().manual_seed(0))
    linear = thetas[:, :, :2]
    # determinant = 1/scale^2 for scale in [0.9, 1.1]; shift at most 2 px (2 * 2/28 units).
    det = torch.linalg.det(linear)
    assert det.min() >= 1 / 1.1**2 - 1e-4 and det.max() <= 1 / 0.9**2 + 1e-4
    assert thetas[:, :, 2].abs().max() <= 2 * 2 / 28 + 1e-6
    angle = torch.rad2deg(torch.atan2(linear[:, 1, 0], linear[:, 0, 0]))
    assert angle.abs().max() <= 10 + 1e-3


def test_ink_is_mostly_kept():
    batch = _digits()
    out = RandomAffine()(batch, torch.Generator().manual_seed(1))
    ink_before = (batch > 0).sum(dim=(1, 2, 3)).float()
    ink_after = (out > 0).sum(dim=(1, 2, 3)).float()
    assert ((ink_after / ink_before) > 0.6).all()


def test_bad_strength_is_refused_with_an_example():
    with pytest.raises(ValueError, match=r"\(0.9, 1.1\)"):
        RandomAffine(scale=(1.2, 0.8))
