"""Peer: BentoML 1.4 with adaptive batching (``@bentoml.api(batchable=True)``), one worker,
serving the int8 ONNX file.

A batchable API takes a batch along dimension 0 in every request, so its JSON body is
``{"pixels": [[784 values]]}`` (one row: the bench sends the same digits as our JSON rows in
that shape) and it answers a list with one answer per row. Its dispatcher (CORK) gathers rows
from concurrent requests up to ``--max-batch`` and adapts its window to the measured latency,
within ``max_latency_ms`` (BentoML's default, 60 s). ``POST /predict_image`` takes an image
upload (multipart field ``file``), decoded as the tutorials do, batched the same way.

Run as a script: it sets the service's environment and hands over to ``bentoml serve``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bentoml
import numpy as np
from onnx_model import PIXELS, OnnxDigits, peer_args, pixels_from_image, to_response
from PIL.Image import Image

MAX_BATCH = int(os.environ.get("BENCH_MAX_BATCH", "32"))


# No access log: ours runs without one in the bench too (ACCESS_LOG=false).
@bentoml.service(workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
class Digits:
    def __init__(self) -> None:
        self.model = OnnxDigits(os.environ["BENCH_ONNX"])

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH)
    def predict(self, pixels: np.ndarray) -> list[dict]:
        return self._answers(pixels.reshape(-1, PIXELS))

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH)
    def predict_image(self, file: list[Image]) -> list[dict]:
        return self._answers(np.stack([pixels_from_image(image) for image in file]))

    def _answers(self, pixels: np.ndarray) -> list[dict]:
        return [to_response(row) for row in self.model.probabilities(pixels)]


if __name__ == "__main__":
    args = peer_args(__doc__)
    os.environ.update(BENCH_ONNX=str(Path(args.onnx).resolve()),
                      BENCH_MAX_BATCH=str(args.max_batch), BENTOML_DO_NOT_TRACK="true")
    here = Path(__file__).resolve().parent
    os.execv(sys.executable, [sys.executable, "-m", "bentoml", "serve", "bentoml_service:Digits",
                              "--working-dir", str(here), "--host", args.host,
                              "--port", str(args.port)])
