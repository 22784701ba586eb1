"""Baseline 1, the tutorial pattern: the model called directly inside an ``async def``
FastAPI endpoint (it blocks the event loop for each forward pass), pydantic request model."""

from __future__ import annotations

import torch
import uvicorn
from common import load_model, parse_args, to_input, to_response
from fastapi import FastAPI
from pydantic import BaseModel

args = parse_args(__doc__)
model = load_model(args.checkpoint)
app = FastAPI()


class Digit(BaseModel):
    pixels: list[float]


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.post("/predict")
async def predict(digit: Digit) -> dict:
    with torch.no_grad():
        return to_response(model(to_input(digit.pixels)))


if __name__ == "__main__":
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
