"""Peer: Ray Serve with its dynamic request batching (``@serve.batch``), one replica, serving the
int8 ONNX file.

``POST /predict`` takes our JSON body (``{"pixels": [784 values]}``) and ``POST /predict/image``
an image upload (multipart field ``file``, decoded as the tutorials do); both go through one
batched method that gathers up to ``--max-batch`` digits and waits at most ``--max-delay-ms``
for more (0 by default: batch what is queued, as ours does). A local Ray cluster of one CPU
starts with it (GCS, raylet, the HTTP proxy and the replica are separate processes).
"""

from __future__ import annotations

import signal
import sys
import time

import numpy as np
import ray
from onnx_model import OnnxDigits, peer_args, pixels_from_upload, to_response
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

args = peer_args(__doc__)


# max_ongoing_requests: Ray's default (5) would cap every batch at 5 digits
@serve.deployment(num_replicas=1, max_ongoing_requests=8 * args.max_batch,
                  ray_actor_options={"num_cpus": 1})
class Digits:
    def __init__(self, onnx: str) -> None:
        self.model = OnnxDigits(onnx)

    @serve.batch(max_batch_size=args.max_batch, batch_wait_timeout_s=args.max_delay_ms / 1000)
    async def answer(self, digits: list[np.ndarray]) -> list[dict]:
        return [to_response(row) for row in self.model.probabilities(np.stack(digits))]

    async def __call__(self, request: Request) -> JSONResponse:
        if request.method == "GET":  # /health: the app is deployed
            return JSONResponse({"status": "ok"})
        if request.url.path.rstrip("/").endswith("/image"):
            form = await request.form()
            pixels = pixels_from_upload(await form["file"].read())
        else:
            pixels = np.asarray((await request.json())["pixels"], dtype=np.float32)
        return JSONResponse(await self.answer(pixels))


if __name__ == "__main__":
    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=100 * 2**20,
             logging_level="warning", log_to_driver=False)
    # after ray.init, which installs a handler of its own: leave through finally, shutting down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(Digits.bind(args.onnx), route_prefix="/", logging_config={
            "enable_access_log": False, "log_level": "WARNING"})
        while True:
            time.sleep(3600)
    finally:
        ray.shutdown()  # stops the cluster's processes (a graceful serve.shutdown takes long)
