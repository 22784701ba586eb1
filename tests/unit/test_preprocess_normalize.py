"""Normalisation: the torch path (training) and the numpy path (serving) give the same bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.ml.data import load_dataset
from service.ml.preprocess import Normalization, normalize, normalize_array


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_dataset("mnist-5k").test_images[:500]


@pytest.mark.parametrize("norm", [Normalization(), Normalization(mean=0.2860, std=0.3530)])
def test_numpy_and_torch_normalisation_are_bit_identical(digits, norm):
    from_torch = normalize(torch.from_numpy(digits), norm).numpy()
    from_numpy = normalize_array(digits, norm)
    assert from_numpy.dtype == np.float32 and from_numpy.shape == (500, 1, 28, 28)
    assert np.array_equal(from_torch, from_numpy)


@pytest.mark.parametrize("shape", [(28, 28), (3, 784), (3, 28, 28), (3, 1, 28, 28)])
def test_every_accepted_shape_becomes_a_batch_of_one_channel(digits, shape):
    count = int(np.prod(shape)) // 784
    raw = digits[:count].reshape(shape)
    assert normalize_array(raw).shape == (count, 1, 28, 28)
    assert np.array_equal(normalize_array(raw), normalize(raw).numpy())


def test_the_callers_array_is_never_written(digits):
    floats = digits[:4].astype(np.float32)
    before = floats.copy()
    normalize(floats)
    normalize_array(floats)
    assert np.array_equal(floats, before)
