"""Runtime variants: each one predicts what eager predicts, a variant that cannot be built says
why, and exported artefacts are named by the weights and reused."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from support.models import fresh_checkpoint, held_out_digits

from service.inference import export
from service.inference.loader import load_runtime
from service.inference.runtime import RuntimeUnavailable, build_runtime, runtime_names
from service.ml.checkpoint import load_checkpoint, save_checkpoint
from service.ml.data import IDX_FILES, write_idx
from service.ml.model import build_model
from service.ml.preprocess import normalize
from service.settings import get_settings


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return held_out_digits(200)


@pytest.mark.parametrize("name", ["eager", "channels-last", "torchscript", "int8", "onnx"])
def test_variant_returns_the_same_probabilities_as_eager(trained_checkpoint, digits, name):
    images = normalize(digits[0][:64])
    eager = load_runtime(trained_checkpoint, runtime="eager", device="cpu").runtime
    variant = load_runtime(trained_checkpoint, runtime=name, device="cpu").runtime
    expected, got = eager.predict_proba(images), variant.predict_proba(images)
    assert variant.name == name
    assert got.shape == (64, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-4)
    # int8 dynamic quantization rounds the fully connected layers; the rest is exact math
    np.testing.assert_allclose(got, expected, atol=2e-2 if name == "int8" else 1e-4)


def test_onnx_int8_stays_close_to_eager_on_real_digits(trained_checkpoint, digits):
    images = normalize(digits[0])
    eager = load_runtime(trained_checkpoint, runtime="eager", device="cpu").runtime
    quantized = load_runtime(trained_checkpoint, runtime="onnx-int8", device="cpu").runtime
    agree = eager.predict_proba(images).argmax(1) == quantized.predict_proba(images).argmax(1)
    assert quantized.name == "onnx-int8" and quantized.artifact.name.endswith(".int8-w7.onnx")
    assert agree.mean() >= 0.97


def test_the_int8_weights_use_seven_bits_so_no_cpu_saturates_their_products(
    trained_checkpoint, digits, tmp_path
):
    """CPUs without VNNI add pairs of uint8 x int8 products in int16: 2 x 255 x 64 fits,
    2 x 255 x 127 does not (docs/runtime-selection.md)."""
    import onnx
    from onnx import numpy_helper

    checkpoint = load_checkpoint(trained_checkpoint)
    calibration = normalize(digits[0][:64]).numpy()

    def int8_weights(**options: int) -> list[np.ndarray]:
        path = export.quantize_onnx(checkpoint, tmp_path / "model.int8.onnx", calibration,
                                    **options)
        return [numpy_helper.to_array(tensor) for tensor in onnx.load(str(path)).graph.initializer
                if tensor.data_type == onnx.TensorProto.INT8]

    weights = int8_weights()
    assert weights, "the int8 graph holds int8 weights"
    assert all(w.min() >= -64 and w.max() <= 64 for w in weights)
    # 8 bits, kept for measuring the two on a CPU (scripts/int8_weight_bits.py), use the range
    assert max(int(np.abs(w).max()) for w in int8_weights(weight_bits=8)) == 127


def test_int8_export_that_cannot_calibrate_says_how_to_fix_it(tmp_path):
    # trained on 'mnist' whose IDX files are not in this folder: no calibration digits
    path = save_checkpoint(tmp_path / "model.safetensors", build_model().eval(),
                           extra={"dataset": {"name": "mnist", "split": {"folder": str(tmp_path)}}})
    with pytest.raises(RuntimeUnavailable, match=r"DATA_DIR.*RUNTIME=onnx"):
        load_runtime(path, runtime="onnx-int8", device="cpu")


def test_int8_calibration_reads_data_dir_when_the_training_folder_is_not_here(
    tmp_path, monkeypatch
):
    """A model served on another machine: the folder it was trained from is gone, and the
    calibration digits come from the dataset's default location (DATA_DIR for 'mnist')."""
    train = np.random.default_rng(5).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = np.arange(40, dtype=np.uint8) % 10
    for key, array in (("train_images", train), ("train_labels", labels),
                       ("test_images", train[:10]), ("test_labels", labels[:10])):
        write_idx(tmp_path / IDX_FILES[key], array)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        digits = export.calibration_digits(
            {"dataset": {"name": "mnist", "split": {"folder": str(tmp_path / "gone")}}}, count=8
        )
    finally:
        get_settings.cache_clear()
    assert digits.shape == (8, 28, 28)
    assert all(any((digit == image).all() for image in train) for digit in digits)


def test_compile_failure_serves_eager_with_a_log_line(trained_checkpoint, monkeypatch, caplog):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("InductorError: no working C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    with caplog.at_level(logging.WARNING, logger="service.inference.runtime"):
        loaded = load_runtime(trained_checkpoint, runtime="compile", device="cpu")
    assert loaded.runtime.name == "eager"
    assert "torch.compile is unavailable" in caplog.text


@pytest.mark.parametrize("name", ["int8", "onnx-int8"])
def test_cpu_only_variant_on_cuda_is_refused_with_the_fix(trained_checkpoint, name):
    checkpoint = load_checkpoint(trained_checkpoint)
    with pytest.raises(RuntimeUnavailable, match=r"runs on CPU only.*DEVICE=cpu"):
        build_runtime(checkpoint, name, torch.device("cuda"))


def test_unknown_runtime_names_the_choices(trained_checkpoint):
    with pytest.raises(ValueError, match=r"unknown runtime 'fast'.*onnx-int8"):
        load_runtime(trained_checkpoint, runtime="fast", device="cpu")
    assert runtime_names()[0] == "auto"


def test_artifact_is_named_by_the_weights_and_reused(tmp_path):
    first = fresh_checkpoint(tmp_path / "a" / "model.safetensors", seed=0)
    second = fresh_checkpoint(tmp_path / "b" / "model.safetensors", seed=1)
    path = export.ensure_artifact(load_checkpoint(first), "onnx")
    stamp = path.stat().st_mtime_ns
    assert path.parent == first.parent and path.name.startswith("model.")
    assert export.ensure_artifact(load_checkpoint(first), "onnx").stat().st_mtime_ns == stamp
    other = export.ensure_artifact(load_checkpoint(second), "onnx")
    assert other.name != path.name
    assert not list(tmp_path.rglob("*.tmp"))


def test_an_int8_file_of_an_older_recipe_is_passed_over_and_the_current_one_built(
    trained_checkpoint, tmp_path
):
    """Int8 files before 7-bit weights were named ``.int8.onnx``: a run folder that still holds
    one gets the current recipe's file beside it, stamped with its bits (a published version's
    goes to the artefact cache, as any artefact it lacks does)."""
    import onnx

    checkpoint_path = tmp_path / "model.safetensors"
    checkpoint_path.write_bytes(trained_checkpoint.read_bytes())
    checkpoint = load_checkpoint(checkpoint_path)
    digest = str(checkpoint.metadata["weights_sha256"]).removeprefix("sha256:")[:12]
    old_recipe = tmp_path / f"model.{digest}.int8.onnx"
    old_recipe.write_bytes(b"8-bit weights")

    built = export.ensure_artifact(checkpoint, "onnx-int8")
    assert built.name == f"model.{digest}.int8-w7.onnx" and built.parent == tmp_path
    stamps = {entry.key: entry.value for entry in onnx.load(str(built)).metadata_props}
    assert stamps["lab2prod.variant"] == "onnx-int8" and stamps["lab2prod.weight_bits"] == "7"
    assert old_recipe.read_bytes() == b"8-bit weights", "the older file is left as it was"


def test_int8_weights_have_seven_or_eight_bits(trained_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="7 or 8 bits, not 6"):
        export.quantize_onnx(load_checkpoint(trained_checkpoint), tmp_path / "m.onnx",
                             np.zeros((1, 1, 28, 28), np.float32), weight_bits=6)


def test_a_published_version_is_never_written_to_artefacts_go_to_a_cache(tmp_path):
    from service.registry import open_registry

    source = save_checkpoint(tmp_path / "run" / "model.safetensors", build_model().eval())
    registry = open_registry(tmp_path / "models")
    registry.publish(source, {})  # published without its ONNX artefact
    published = registry.checkpoint_path("production")
    before = sorted(p.name for p in published.parent.iterdir())
    loaded = load_runtime(published, runtime="onnx", device="cpu", read_only=True)
    assert loaded.runtime.artifact.parent == export.ARTIFACT_CACHE
    assert sorted(p.name for p in published.parent.iterdir()) == before
