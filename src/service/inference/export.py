"""Exported runtime artefacts (ONNX graphs): export, quantize, and find them for a checkpoint.

Artefacts live next to the checkpoint they came from and are named by its weights checksum and, for
int8, the quantization recipe (``model.3f2a9c1d04b7.int8-w7.onnx``), so a file that exists is the
right one: a new checkpoint or a new recipe gets a new name (a file of an older recipe is left
alone and a new one built), and several workers building the same file at once write the same bytes
(each to a temporary file, then an atomic rename). The release's serving checks build them in the
run folder and ``lab2prod release`` publishes them with the version; a published version is loaded
read-only, so a missing artefact (a version published without one) is built in a cache folder under
the system temp directory, as it is when the folder is not writable.

Whether an exported variant answers like eager is measured elsewhere (``inference.selection`` at
release, ``inference.verification`` where it serves).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.ml.checkpoint import LoadedCheckpoint
from service.ml.preprocess import normalize_array

if TYPE_CHECKING:  # finding an artefact needs no torch; exporting one imports it
    import torch

log = logging.getLogger(__name__)

# The int8 recipe: 7-bit weights (see quantize_onnx). Files of the 8-bit recipe before it were
# named ``.int8.onnx``; on CPUs without VNNI they answer further from eager.
INT8_WEIGHT_BITS = 7
ARTIFACT_SUFFIXES = {"onnx": ".onnx", "onnx-int8": f".int8-w{INT8_WEIGHT_BITS}.onnx"}
INPUT_NAME, OUTPUT_NAME = "digits", "probabilities"
ONNX_OPSET = 17
CALIBRATION_DIGITS = 256
CALIBRATION_SEED = 0
ARTIFACT_CACHE = Path(tempfile.gettempdir()) / "lab2prod-artifacts"


def artifact_path(checkpoint: LoadedCheckpoint, variant: str) -> Path:
    """Where ``variant``'s artefact for this checkpoint lives (it may not exist yet)."""
    try:
        suffix = ARTIFACT_SUFFIXES[variant]
    except KeyError:
        raise ValueError(f"runtime {variant!r} has no exported artefact; these do: "
                         f"{', '.join(ARTIFACT_SUFFIXES)}") from None
    digest = str(checkpoint.metadata.get("weights_sha256", "")).removeprefix("sha256:")[:12]
    name = f"{checkpoint.path.stem}.{digest or 'unhashed'}{suffix}"
    folder = checkpoint.path.parent
    if (folder / name).exists():
        return folder / name
    # A registry version is immutable once published (its artefacts come with it from the
    # release); a read-only folder cannot take one either: build those in a cache folder.
    if checkpoint.read_only or not os.access(folder, os.W_OK):
        folder = ARTIFACT_CACHE
    return folder / name


def ensure_artifact(checkpoint: LoadedCheckpoint, variant: str) -> Path:
    """The artefact for ``variant``, exported now if it does not exist yet."""
    path = artifact_path(checkpoint, variant)
    if path.exists():
        return path
    from service.inference.runtime import RuntimeUnavailable

    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if variant == "onnx":
            export_onnx(checkpoint, temporary)
        else:
            try:
                digits = calibration_digits(checkpoint.metadata)
            except Exception as exc:
                raise RuntimeUnavailable(
                    f"runtime 'onnx-int8' calibrates on training digits and could not load them "
                    f"({type(exc).__name__}: {exc}); for 'mnist', set DATA_DIR to the folder of "
                    "its IDX files; or use RUNTIME=onnx"
                ) from exc
            quantize_onnx(checkpoint, temporary, normalize_array(digits, checkpoint.normalization))
        os.replace(temporary, path)
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"exporting {variant!r} needs {exc.name or 'onnx'}: pip install onnx onnxruntime"
        ) from exc
    finally:
        temporary.unlink(missing_ok=True)
    log.info("exported %s runtime to %s in %.1f s", variant, path, time.perf_counter() - started)
    return path


def export_onnx(checkpoint: LoadedCheckpoint, path: str | Path) -> Path:
    """The fp32 graph: normalised digits [N,1,28,28] -> probabilities [N,C], any batch size."""
    import onnx  # the legacy exporter writes protobuf itself; onnx is needed to stamp metadata
    import torch

    path = Path(path)
    wrapped = _with_probabilities(copy.deepcopy(checkpoint.model)).to("cpu").eval()
    example = torch.zeros(1, 1, 28, 28)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript; for this small static CNN both produce the same graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    graph = onnx.load(str(path))
    _stamp(graph, checkpoint, "onnx")
    onnx.save(graph, str(path))
    return path


def _with_probabilities(model: torch.nn.Module) -> torch.nn.Module:
    """The CNN ends in log-softmax; exported graphs end in probabilities (one op fewer to serve)."""
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, digits: torch.Tensor) -> torch.Tensor:
            return torch.exp(self.model(digits))

    return Probabilities()


def quantize_onnx(
    checkpoint: LoadedCheckpoint, path: str | Path, calibration: np.ndarray,
    *, weight_bits: int = INT8_WEIGHT_BITS,
) -> Path:
    """Static int8 (QDQ: uint8 activations, int8 per-channel weights), ranges from calibration.

    Weights use 7 bits (ONNX Runtime's ``reduce_range``): on CPUs without VNNI (AVX2 and older
    AVX-512) ONNX Runtime multiplies uint8 by int8 in pairs summed into int16, which saturates with
    full-range weights (agreement with eager 0.993 with 8 bits, 0.998 with 7 on one such CPU); on
    CPUs with VNNI the two agree with eager alike, at the same speed (docs/runtime-selection.md).
    ``weight_bits=8`` is there to measure that again."""
    if weight_bits not in (7, 8):
        raise ValueError(f"int8 weights use 7 or 8 bits, not {weight_bits}")
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    path = Path(path)
    batches = [
        {INPUT_NAME: np.ascontiguousarray(calibration[start:start + 32], dtype=np.float32)}
        for start in range(0, len(calibration), 32)
    ]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix="lab2prod-quant-") as work:
        fp32 = export_onnx(checkpoint, Path(work) / "fp32.onnx")
        prepared = Path(work) / "prepared.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32), str(prepared))
            quantize_static(
                str(prepared), str(path), _Reader(), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                reduce_range=weight_bits == 7,
            )
    graph = onnx.load(str(path))
    _stamp(graph, checkpoint, "onnx-int8", calibration_digits=len(calibration),
           weight_bits=weight_bits)
    onnx.save(graph, str(path))
    return path


def _stamp(graph: Any, checkpoint: LoadedCheckpoint, variant: str, **extra: object) -> None:
    fields = {
        "lab2prod.variant": variant,
        "lab2prod.weights_sha256": str(checkpoint.metadata.get("weights_sha256", "")),
        "lab2prod.class_names": ",".join(checkpoint.class_names),
        **{f"lab2prod.{key}": str(value) for key, value in extra.items()},
    }
    del graph.metadata_props[:]
    for key, value in fields.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value


def calibration_digits(metadata: dict[str, Any], count: int = CALIBRATION_DIGITS) -> np.ndarray:
    """A seeded subset of the training digits of the dataset the checkpoint was trained on
    (its metadata names it; mnist-5k when it does not): uint8 [count,28,28]."""
    from service.ml.data import load_dataset

    described = metadata.get("dataset") or {}
    if isinstance(described, str):  # hand-made checkpoints may name the dataset only
        described = {"name": described}
    name = described.get("name") or "mnist-5k"
    # The folder it was trained from where that exists here, else the dataset's own default
    # location (mnist: DATA_DIR): a model served on another machine finds its data there.
    recorded = (described.get("split") or {}).get("folder")
    folder = recorded if name != "mnist-5k" and recorded and Path(recorded).is_dir() else None
    dataset = load_dataset(name, folder)
    images = dataset.train_images
    order = np.random.default_rng(CALIBRATION_SEED).permutation(len(images))[:count]
    return images[np.sort(order)]
