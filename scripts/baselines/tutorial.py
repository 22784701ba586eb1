"""Baseline 1, the tutorial pattern: the model called directly inside an ``async def``
FastAPI endpoint (it blocks the event loop for each forward pass), pydantic request model.
``POST /predict/image`` takes an upload the tutorials' way (``UploadFile``, ``Image.open``,
``np.array``)."""

from __future__ import annotations

import numpy as np
import uvicorn
from common import load_predict, parse_args
from fastapi import FastAPI, UploadFile
from onnx_model import pixels_from_upload, to_response
from pydantic import BaseModel

args = parse_args(__doc__)
predict_proba = load_predict(args)
app = FastAPI()


class Digit(BaseModel):
    pixels: list[float]


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.post("/predict")
async def predict(digit: Digit) -> dict:
    return to_response(predict_proba(np.asarray(digit.pixels, dtype=np.float32))[0])


@app.post("/predict/image")
async def predict_image(file: UploadFile) -> dict:
    return to_response(predict_proba(pixels_from_upload(await file.read()))[0])


if __name__ == "__main__":
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
