"""Peer: KServe's Python model server (``kserve.ModelServer``, one uvicorn worker, gRPC off)
with a custom ``kserve.Model`` serving the int8 ONNX file.

It speaks the Open Inference Protocol v2 (POST /v2/models/NAME/infer), so the bench sends it
the same v2 request bodies as our ``ours-v2`` rows. It has no batching of its own: KServe's
documented batcher lives in the model agent, a Go sidecar that an InferenceService injects on
Kubernetes (v1 protocol only), not in this Python server; every request runs on its own.
It takes no image uploads.
"""

from __future__ import annotations

import logging

import kserve
from kserve import InferOutput, InferRequest, InferResponse
from onnx_model import OnnxDigits, peer_args

args = peer_args(__doc__, model_name=True)


class Digits(kserve.Model):
    def __init__(self, name: str, onnx: str) -> None:
        super().__init__(name)
        self.model = OnnxDigits(onnx)
        self.ready = True

    async def predict(self, payload: InferRequest, headers: dict | None = None,
                      response_headers: dict | None = None) -> InferResponse:
        probabilities = self.model.probabilities(payload.inputs[0].as_numpy())
        output = InferOutput(name="probabilities", shape=list(probabilities.shape),
                             datatype="FP32", data=probabilities)
        return InferResponse(response_id=payload.id or "", model_name=self.name,
                             infer_outputs=[output])


if __name__ == "__main__":
    server = kserve.ModelServer(http_port=args.port, enable_grpc=False, workers=1,
                                enable_latency_logging=False)
    # No access or timing log lines per request: ours runs without them in the bench too (the
    # server configures its loggers as it is made, so this comes after).
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([Digits(args.model_name, args.onnx)])
