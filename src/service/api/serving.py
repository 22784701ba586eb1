"""From validated digits to answers, for one served version: cache, batcher, cache again.

Shared by POST /predict, POST /predict/batch, /ws/predict, the v2 protocol's infer and the
embedded job worker's twin. Every version has its own batcher, so the version that computes an
answer is the version the request was routed to: answers are cached and labelled under it, and a
cache entry never crosses versions.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np

from service.api.encoding import prediction_json, probabilities_of
from service.api.inputs import Payload
from service.inference.batcher import BatcherClosed, QueueFull, SubmissionTimeout
from service.inference.cache import PredictionCache, cache_key
from service.inference.pool import Overloaded, ServedVersion, VersionUnavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")
EXPECTED = (QueueFull, BatcherClosed, Overloaded, VersionUnavailable)  # answered 503, not 500


class InferenceTimeout(RuntimeError):
    """The model did not answer within REQUEST_TIMEOUT_S."""


class InferenceFailed(RuntimeError):
    """The model raised on this request's batch (the API answers 500 with the request id)."""


async def predict_payload(
    payload: Payload,
    parse: Callable[[Payload], Awaitable[np.ndarray]],
    *,
    served: ServedVersion,
    cache: PredictionCache,
    timeout_s: float,
) -> tuple[bytes, bool, np.ndarray | None]:
    """A request's raw input -> (prediction JSON, from the cache?, the digit when parsed).

    Two cache keys: the exact bytes sent (a repeated request is answered before it is parsed
    or decoded: no digit then) and, once parsed, the digit (the same digit as JSON or as a PNG
    shares an entry)."""
    version = served.version
    byte_key = f"{version}:{payload.fingerprint}"
    cached = await cache.get(byte_key)
    if cached is not None:
        return cached, True, None
    digit = await parse(payload)
    body, hit = await predict_digit(digit, served=served, cache=cache, timeout_s=timeout_s)
    cache.put(byte_key, body)
    return body, hit, digit


async def predict_digit(
    digit: np.ndarray, *, served: ServedVersion, cache: PredictionCache, timeout_s: float
) -> tuple[bytes, bool]:
    """One digit -> (prediction JSON, from the cache?)."""
    key = cache_key(served.version, digit)
    cached = await cache.get(key)
    if cached is not None:
        return cached, True
    row = await _run(served.batcher.submit(digit, timeout_s), timeout_s)
    body = prediction_json(row, served.version)
    cache.put(key, body)
    return body, False


async def predict_digits(
    digits: list[np.ndarray], *, served: ServedVersion, cache: PredictionCache, timeout_s: float
) -> tuple[list[bytes], int]:
    """Several digits -> (their prediction JSON in order, how many came from the cache).

    The misses go to the batcher together, so they share forward passes."""
    bodies, computed = await _cached_or_computed(
        digits, served=served, cache=cache, timeout_s=timeout_s
    )
    return bodies, len(digits) - len(computed)


async def predict_rows(
    digits: list[np.ndarray], *, served: ServedVersion, cache: PredictionCache, timeout_s: float
) -> tuple[np.ndarray, int]:
    """Several digits -> (their probabilities [N, C] in order, how many came from the cache).

    The same cache entries as ``predict_digits`` (a hit is the cached prediction JSON read
    back), so a digit asked through the v2 protocol and through /predict is computed once."""
    bodies, computed = await _cached_or_computed(
        digits, served=served, cache=cache, timeout_s=timeout_s
    )
    rows = [computed[i] if i in computed else probabilities_of(body)
            for i, body in enumerate(bodies)]
    return np.stack(rows), len(digits) - len(computed)


async def _cached_or_computed(
    digits: list[np.ndarray], *, served: ServedVersion, cache: PredictionCache, timeout_s: float
) -> tuple[list[bytes], dict[int, np.ndarray]]:
    """(every digit's prediction JSON, the probability rows computed now by index); the misses
    are computed in one submission to the version's batcher and cached."""
    keys = [cache_key(served.version, digit) for digit in digits]
    cached = await cache.get_many(keys)
    missing = [index for index, body in enumerate(cached) if body is None]
    computed: dict[int, np.ndarray] = {}
    if missing:
        rows = await _run(
            served.batcher.submit_many([digits[i] for i in missing], timeout_s), timeout_s
        )
        for index, row in zip(missing, rows, strict=True):
            body = prediction_json(row, served.version)
            cache.put(keys[index], body)
            cached[index] = body
            computed[index] = row
    return [body for body in cached if body is not None], computed


async def _run(awaitable: Awaitable[T], timeout_s: float) -> T:
    """A batcher submission made with ``timeout_s``, its failures as the API answers them."""
    try:
        return await awaitable
    except SubmissionTimeout:
        raise InferenceTimeout(
            f"the model did not answer within {timeout_s:g} s (REQUEST_TIMEOUT_S); retry later"
        ) from None
    except EXPECTED:
        raise
    except Exception as exc:
        logger.error("inference failed", exc_info=exc)
        raise InferenceFailed(f"inference failed ({type(exc).__name__})") from exc
