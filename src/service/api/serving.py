"""From validated digits to response bytes: cache, then the micro-batcher, then cache again.

Shared by POST /predict, POST /predict/batch and the async routes. The cache key uses the version
being served when the request arrives; a prediction is stored under the version that actually
computed it, so a model swap in between never files an answer under the wrong version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np

from service.api.inputs import Payload
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
    body, hit, _ = await _predict_one(digit, model.version, batcher, cache, timeout_s)
    return body, hit


async def predict_payload(
    payload: Payload,
    parse: Callable[[Payload], Awaitable[np.ndarray]],
    *,
    model: ModelManager,
    batcher: MicroBatcher[np.ndarray, Prediction],
    cache: PredictionCache,
    timeout_s: float,
) -> tuple[bytes, bool]:
    """A request's raw input -> (prediction JSON, served from cache?).

    Two cache keys: the exact bytes sent (a repeated request is answered before it is parsed
    or decoded) and, once parsed, the digit (the same digit as JSON or as a PNG shares an
    entry). Both are stored under the version that computed the answer."""
    version, fingerprint = model.version, payload.fingerprint
    if version is not None:
        cached = await cache.get(f"{version}:{fingerprint}")
        if cached is not None:
            return cached, True
    digit = await parse(payload)
    body, hit, served_by = await _predict_one(digit, version, batcher, cache, timeout_s)
    cache.put(f"{served_by}:{fingerprint}", body)
    return body, hit


async def _predict_one(
    digit: np.ndarray,
    version: str | None,
    batcher: MicroBatcher[np.ndarray, Prediction],
    cache: PredictionCache,
    timeout_s: float,
) -> tuple[bytes, bool, str]:
    """(prediction JSON, from cache?, the version whose answer it is)."""
    key = cache_key(version, digit) if version is not None else None
    if key is not None:
        cached = await cache.get(key)
        if cached is not None:
            return cached, True, version  # type: ignore[return-value]
    prediction = await _run(batcher.submit(digit), timeout_s)
    if prediction.model_version != version or key is None:
        key = cache_key(prediction.model_version, digit)
    cache.put(key, prediction.body)
    return prediction.body, False, prediction.model_version


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
