"""Baseline 2, the run_in_threadpool pattern: the same endpoint, with the forward pass moved
off the event loop into Starlette's thread pool, one request per call."""

from __future__ import annotations

import torch
import uvicorn
from common import load_model, parse_args, to_input, to_response
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

args = parse_args(__doc__)
model = load_model(args.checkpoint)
app = FastAPI()


class Digit(BaseModel):
    pixels: list[float]


def infer(pixels: list[float]) -> dict:
    with torch.no_grad():
        return to_response(model(to_input(pixels)))


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.post("/predict")
async def predict(digit: Digit) -> dict:
    return await run_in_threadpool(infer, digit.pixels)


if __name__ == "__main__":
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
