"""One rule for which device a setting names, in training, evaluation, release and serving."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from service.ml.device import Device, device_name, resolve_device


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


def test_the_name_serving_uses_reads_like_a_torch_device():
    for name, kind, index in (("cpu", "cpu", None), ("cuda", "cuda", None), ("cuda:1", "cuda", 1)):
        device = Device(name)
        assert (device.type, device.index) == (kind, index)
        assert (torch.device(device).type, torch.device(device).index) == (kind, index)
    assert torch.zeros(1, device=device_name("cpu")).device == torch.device("cpu")


def test_choosing_a_device_where_there_is_no_cuda_driver_does_not_import_torch():
    code = ("import sys\nfrom service.ml import device\n"
            "device._cuda_driver_present = lambda: False\n"
            "print(device.device_name('auto'), device.device_name('cpu'), 'torch' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.split()
    assert shown == ["cpu", "cpu", "False"]
