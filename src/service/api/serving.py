"""From validated digits to response bytes: cache, then the micro-batcher, then cache again.

Shared by POST /predict, POST /predict/batch and the async routes. The cache key uses the version
being served when the request arrives; a prediction is stored under the version that actually
computed it, so a model swap in between never files an answer under the wrong version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

import numpy as np

from service.inference.batcher import BatcherClosed, MicroBatcher, QueueFull
from service.inference.cache import PredictionCache, cache_key
from service.inference.model_manager import ModelManager, ModelNotLoaded, Overloaded, Prediction

logger = logging.getLogger(__name__)
T = TypeVar("T")
EXPECTED = (QueueFull, BatcherClosed, ModelNotLoaded, Overloaded)  # answered 503, not 500


class InferenceTimeout(RuntimeError):
    """The model did not answer within REQUEST_TIMEOUT_S."""


class InferenceFailed(RuntimeError):
    """The model raised on this request's batch (the API answers 500 with the request id)."""


async def predict_digit(
    digit: np.ndarray,
    *,
    model: ModelManager,
    batcher: MicroBatcher[np.ndarray, Prediction],
    cache: PredictionCache,
    timeout_s: float,
) -> tuple[bytes, bool]:
    """One digit -> (prediction JSON, served from cache?)."""
    version = model.version
    key = cache_key(version, digit) if version is not None else None
    if key is not None:
        cached = await cache.get(key)
        if cached is not None:
            return cached, True
    prediction = await _run(batcher.submit(digit), timeout_s)
    if prediction.model_version != version or key is None:
        key = cache_key(prediction.model_version, digit)
    cache.put(key, prediction.body)
    return prediction.body, False


async def predict_digits(
    digits: list[np.ndarray],
    *,
    model: ModelManager,
    batcher: MicroBatcher[np.ndarray, Prediction],
    cache: PredictionCache,
    timeout_s: float,
) -> tuple[list[bytes], int]:
    """Several digits -> (their prediction JSON in order, how many came from the cache).

    The misses go to the batcher together, so they share forward passes."""
    version = model.version
    keys: list[str | None] = [None] * len(digits)
    bodies: list[bytes | None] = [None] * len(digits)
    if version is not None:
        keys = [cache_key(version, digit) for digit in digits]
        bodies = await cache.get_many(keys)  # type: ignore[arg-type]
    missing = [index for index, body in enumerate(bodies) if body is None]
    if missing:
        predictions = await _run(batcher.submit_many([digits[i] for i in missing]), timeout_s)
        for index, prediction in zip(missing, predictions, strict=True):
            key = keys[index]
            if prediction.model_version != version or key is None:
                key = cache_key(prediction.model_version, digits[index])
            cache.put(key, prediction.body)
            bodies[index] = prediction.body
    return [body for body in bodies if body is not None], len(digits) - len(missing)


async def _run(awaitable: Awaitable[T], timeout_s: float) -> T:
    try:
        async with asyncio.timeout(timeout_s):
            return await awaitable
    except TimeoutError:
        raise InferenceTimeout(
            f"the model did not answer within {timeout_s:g} s (REQUEST_TIMEOUT_S); retry later"
        ) from None
    except EXPECTED:
        raise
    except Exception as exc:
        logger.error("inference failed", exc_info=exc)
        raise InferenceFailed(f"inference failed ({type(exc).__name__})") from exc
