"""Baseline 3, LitServe 0.2.19 with dynamic batching: max batch 32, 5 ms batch timeout, one
inference worker on CPU (its documented way of serving a model with batching)."""

from __future__ import annotations

import litserve as ls
import numpy as np
from common import load_predict, parse_args
from onnx_model import to_response


class DigitAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.predict_proba = load_predict(args)

    def decode_request(self, request: dict) -> np.ndarray:
        return np.asarray(request["pixels"], dtype=np.float32)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.predict_proba(batch)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, probabilities: np.ndarray) -> dict:
        return to_response(probabilities)


args = parse_args(__doc__)

if __name__ == "__main__":
    api = DigitAPI(max_batch_size=32, batch_timeout=0.005)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)
