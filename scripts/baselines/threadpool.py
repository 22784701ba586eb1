"""Baseline 2, the run_in_threadpool pattern: the same endpoint, with the forward pass moved
off the event loop into Starlette's thread pool, one request per call."""

from __future__ import annotations

import numpy as np
import uvicorn
from common import load_predict, parse_args
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from onnx_model import to_response
from pydantic import BaseModel

args = parse_args(__doc__)
predict_proba = load_predict(args)
app = FastAPI()


class Digit(BaseModel):
    pixels: list[float]


def infer(pixels: list[float]) -> dict:
    return to_response(predict_proba(np.asarray(pixels, dtype=np.float32))[0])


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.post("/predict")
async def predict(digit: Digit) -> dict:
    return await run_in_threadpool(infer, digit.pixels)


if __name__ == "__main__":
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
