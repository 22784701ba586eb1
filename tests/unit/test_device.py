"""One rule for which device a setting names, in training, evaluation, release and serving."""

from __future__ import annotations

import pytest
import torch

from service.ml.device import resolve_device


def test_auto_is_cuda_when_present_else_the_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_refused_with_what_to_use():
    with pytest.raises(ValueError, match="CUDA is not available; use 'auto' or 'cpu'"):
        resolve_device("cuda:0")


def test_a_name_that_is_no_device_is_refused():
    with pytest.raises(ValueError, match="'gpu please' is not a device"):
        resolve_device("gpu please")
