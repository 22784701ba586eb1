"""Probabilities -> the answers clients read: the JSON of one prediction, rendered once.

The model layer (``inference.pool``) returns class probabilities; this is where they become the
wire format. The same bytes are cached, sent by /predict, joined by /predict/batch and prefixed
with an id by /ws/predict.
"""

from __future__ import annotations

import numpy as np
import orjson


def prediction_json(probabilities: np.ndarray, version: str) -> bytes:
    """``{"digit", "confidence", "probabilities", "model_version"}`` for one [C] row."""
    digit = int(probabilities.argmax())
    return orjson.dumps(
        {
            "digit": digit,
            "confidence": probabilities[digit],
            "probabilities": probabilities,
            "model_version": version,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def digit_of(prediction: bytes) -> int:
    """The predicted class of an encoded prediction (for comparing a cached answer)."""
    return int(orjson.loads(prediction)["digit"])
