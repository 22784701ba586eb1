"""Peer: Triton Inference Server (the C++ server that ships in the nvidia-pytriton wheel) with its
dynamic batcher, serving the int8 ONNX file through a PyTriton ``@batch`` Python callable.

It speaks the Open Inference Protocol v2 over HTTP (POST /v2/models/NAME/infer), so the bench
sends it the same v2 request bodies as our ``ours-v2`` rows; it takes no image uploads. The
batcher queues requests up to ``--max-batch`` digits and, as ours does, waits no longer than
``--max-delay-ms`` for more (0 by default: Triton's own default, batch what is queued). gRPC and
metrics are off, so that only the HTTP port is taken.
"""

from __future__ import annotations

import signal
import sys

import numpy as np
from onnx_model import PIXELS, OnnxDigits, peer_args
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

args = peer_args(__doc__, model_name=True)
model = OnnxDigits(args.onnx)


@batch
def infer(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Triton hands the whole dynamic batch in one call: pixels [N,784] uint8."""
    return {"probabilities": model.probabilities(pixels)}


if __name__ == "__main__":
    # SIGTERM (how the bench stops a server) leaves through the context manager, which stops
    # tritonserver and removes PyTriton's workspace.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    config = TritonConfig(http_address=args.host, http_port=args.port, allow_grpc=False,
                          allow_metrics=False, log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=args.model_name, infer_func=infer,
            inputs=[Tensor(name="pixels", dtype=np.uint8, shape=(PIXELS,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(max_batch_size=args.max_batch, batcher=DynamicBatcher(
                max_queue_delay_microseconds=int(args.max_delay_ms * 1000))),
        )
        triton.serve()
