"""Checkpoints: one safetensors file; corrupt, truncated or mismatched files are refused, and
loading never unpickles anything."""

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from service.ml.checkpoint import (
    FORMAT,
    METADATA_KEY,
    CheckpointError,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from service.ml.model import MnistCNN
from service.ml.preprocess import Normalization


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = MnistCNN().eval()
    path = save_checkpoint(
        tmp_path / "model.safetensors",
        model,
        normalization=Normalization(0.5, 0.25),
        extra={"dataset": {"name": "mnist-5k"}, "seed": 7},
    )
    return model, path


def test_round_trip_restores_weights_and_metadata(saved):
    model, path = saved
    loaded = load_checkpoint(path)
    inputs = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.model(inputs), model(inputs))
    assert not loaded.model.training
    assert loaded.normalization == Normalization(0.5, 0.25)
    assert loaded.class_names == [str(i) for i in range(10)]
    assert loaded.metadata["seed"] == 7
    assert loaded.metadata["architecture"] == "mnist-cnn"
    assert "torch" in loaded.metadata["library_versions"]
    assert read_metadata(path)["weights_sha256"] == loaded.metadata["weights_sha256"]


def test_corrupt_weight_bytes_are_refused_by_the_checksum(saved):
    _model, path = saved
    raw = bytearray(path.read_bytes())
    raw[-1000] ^= 0xFF  # inside the tensor data, past the header
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_truncated_file_is_refused(saved):
    _model, path = saved
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_missing_file_is_refused_with_its_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*nothing\.safetensors"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file(MnistCNN().state_dict(), str(path))
    with pytest.raises(CheckpointError, match="not a lab2prod checkpoint"):
        load_checkpoint(path)


def _rewrite_metadata(path, **changes):
    metadata = read_metadata(path)
    metadata.update(changes)
    state = {k: v.contiguous() for k, v in load_checkpoint(path).model.state_dict().items()}
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(metadata)})


def test_unknown_architecture_is_refused_as_mismatched(saved):
    _model, path = saved
    _rewrite_metadata(path, architecture="vit-huge")
    with pytest.raises(CheckpointError, match=r"mismatched.*vit-huge"):
        load_checkpoint(path)


def test_other_architecture_version_is_refused(saved):
    _model, path = saved
    _rewrite_metadata(path, architecture_version=99)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)


def test_other_format_is_refused(saved):
    _model, path = saved
    _rewrite_metadata(path, format="someone-else/3")
    with pytest.raises(CheckpointError, match=FORMAT):
        load_checkpoint(path)


def test_tensors_that_do_not_fit_the_architecture_are_refused(tmp_path):
    # Claims mnist-cnn but holds a 3-class head while its metadata says 10 classes.
    path = save_checkpoint(tmp_path / "m.safetensors", MnistCNN(num_classes=3))
    with pytest.raises(CheckpointError, match="do not fit mnist-cnn"):
        load_checkpoint(path)


def test_a_pickle_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("the checkpoint loader unpickled a file",))

    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"weights": Boom()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_loading_does_not_call_any_unpickler(saved, monkeypatch):
    _model, path = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during checkpoint load")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert load_checkpoint(path).metadata["format"] == FORMAT


def test_save_is_atomic_and_leaves_no_temporary_files(saved):
    _model, path = saved
    assert [p.name for p in path.parent.iterdir()] == [path.name]
