"""The int8 ONNX graph our release exports, served without torch: what every "same runtime" row
loads (the baselines with ``--runtime onnx-int8`` and every peer, each in a venv holding only
onnxruntime, numpy and Pillow besides its framework).

The graph takes normalised digits [N,1,28,28] and ends in probabilities [N,C]. It runs on one
thread, as ours does on one core (``service.inference.runtime``).
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import onnxruntime as ort
from PIL import Image

MEAN, STD = 0.1307, 0.3081  # the MNIST normalisation the checkpoint was trained with
PIXELS = 784


class OnnxDigits:
    """An ONNX Runtime session on one thread over the exported graph."""

    def __init__(self, path: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Digits as 0..255 values, any shape holding N x 784 -> probabilities [N,C]."""
        scaled = np.asarray(pixels, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0
        return self.session.run(None, {self.input_name: (scaled - MEAN) / STD})[0]


def pixels_from_upload(data: bytes) -> np.ndarray:
    """The tutorial upload pattern: ``Image.open``, grey, 28 x 28, ``np.array``. It does less
    than our image path (no size limits, no inversion of dark-on-light scans, no centring)."""
    with Image.open(io.BytesIO(data)) as image:
        return pixels_from_image(image)


def pixels_from_image(image: Image.Image) -> np.ndarray:
    """A decoded image (what a framework hands over) -> 784 values, as the tutorials do."""
    return np.array(image.convert("L").resize((28, 28)), dtype=np.float32).reshape(PIXELS)


def to_response(probabilities: np.ndarray) -> dict:
    """One row of probabilities -> the answer our /predict gives (less the model version)."""
    digit = int(probabilities.argmax())
    return {"digit": digit, "confidence": float(probabilities[digit]),
            "probabilities": probabilities.tolist()}


def peer_args(description: str, *, model_name: bool = False) -> argparse.Namespace:
    """The command line every peer takes: the ONNX file, where to listen, and its batching."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--onnx", required=True, help="the int8 ONNX file our release exported")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch (32)")
    parser.add_argument("--max-delay-ms", type=float, default=5.0,
                        help="longest a request waits for others to join its batch (5 ms)")
    if model_name:
        parser.add_argument("--model-name", default="mnist-cnn",
                            help="the name in /v2/models/NAME/infer (ours': MODEL_NAME)")
    return parser.parse_args()
