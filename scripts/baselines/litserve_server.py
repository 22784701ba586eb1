"""Baseline 3, LitServe 0.2.19 with dynamic batching: max batch 32, 5 ms batch timeout, one
inference worker on CPU (its documented way of serving a model with batching)."""

from __future__ import annotations

import litserve as ls
import torch
from common import load_model, parse_args, to_input


class DigitAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = load_model(args.checkpoint)

    def decode_request(self, request: dict) -> torch.Tensor:
        return to_input(request["pixels"])

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(inputs)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(batch).exp()

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, probabilities: torch.Tensor) -> dict:
        digit = int(probabilities.argmax())
        return {"digit": digit, "confidence": float(probabilities[digit]),
                "probabilities": probabilities.tolist()}


args = parse_args(__doc__)

if __name__ == "__main__":
    api = DigitAPI(max_batch_size=32, batch_timeout=0.005)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)
