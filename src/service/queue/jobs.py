"""The job on the queue and the result record that ``GET /result/{inference_id}`` reads.

A job body is JSON with the digit as base64 of its 784 bytes (row-major uint8)::

    {"schema": "lab2prod-job/1", "inference_id": "<uuid4>", "pixels_b64": "AAAA...",
     "submitted_at": <unix seconds>, "model_version": "v3"}

``model_version`` is optional: the version (or alias) the job is pinned to, as /classify was
asked (``X-Model-Version``) or routed (a canary); without it the worker's default alias answers.

Raw bytes rather than a list of numbers: a third of the size on the broker's disk, and decoding
is one length check instead of validating 784 numbers in Python (which was most of a CPU
worker's event-loop time). The API validated the digit before publishing; a hand-made or
corrupted message is a ``PoisonJob`` that says what is wrong, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import orjson

from service.ml.preprocess import IMAGE_PIXELS, IMAGE_SIDE

JOB_SCHEMA = "lab2prod-job/1"
_VERSION_REF = re.compile(r"^(v[0-9]{1,9}|[A-Za-z][A-Za-z0-9_.-]{0,63})$")


class PoisonJob(ValueError):
    """A message the worker can never process (malformed JSON, wrong shape, no id)."""

    def __init__(self, message: str, inference_id: str | None = None) -> None:
        super().__init__(message)
        self.inference_id = inference_id


@dataclass(frozen=True)
class Job:
    inference_id: str
    image: np.ndarray  # uint8 [28,28], MNIST convention (light ink on dark)
    submitted_at: float
    model_version: str | None = None  # a pinned version or alias; None: the worker's default

    @classmethod
    def create(cls, image: np.ndarray, model_version: str | None = None) -> Job:
        """A new job with a fresh uuid4 id for an already validated uint8 [28,28] digit."""
        return cls(inference_id=str(uuid.uuid4()), image=image, submitted_at=time.time(),
                   model_version=model_version)

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "schema": JOB_SCHEMA,
            "inference_id": self.inference_id,
            "pixels_b64": base64.b64encode(self.image.astype(np.uint8).tobytes()).decode(),
            "submitted_at": self.submitted_at,
        }
        if self.model_version is not None:
            body["model_version"] = self.model_version
        return orjson.dumps(body)


def decode_job(body: bytes, message_id: str | None = None) -> Job:
    """Message body -> Job, or PoisonJob naming what is wrong (and the id, when known)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PoisonJob(f"message body is not JSON ({exc})", message_id) from exc
    if not isinstance(payload, dict):
        raise PoisonJob("message body is not a JSON object", message_id)
    inference_id = payload.get("inference_id") or message_id
    if not isinstance(inference_id, str) or not is_inference_id(inference_id):
        raise PoisonJob(f"message has no valid inference_id (got {inference_id!r})", message_id)
    if payload.get("schema") != JOB_SCHEMA:
        schema = payload.get("schema")
        raise PoisonJob(f"unknown job schema {schema!r}; expected {JOB_SCHEMA!r}", inference_id)
    encoded = payload.get("pixels_b64")
    try:
        raw = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else None
    except binascii.Error as exc:
        raise PoisonJob(f"pixels_b64 is not valid base64 ({exc})", inference_id) from exc
    if raw is None or len(raw) != IMAGE_PIXELS:
        size = "missing" if raw is None else f"{len(raw)} bytes"
        raise PoisonJob(
            f"pixels_b64 must hold the {IMAGE_PIXELS} bytes of a 28x28 digit; got {size}",
            inference_id,
        )
    image = np.frombuffer(raw, dtype=np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE)
    submitted_at = payload.get("submitted_at")
    if not isinstance(submitted_at, int | float):
        submitted_at = time.time()
    version = payload.get("model_version")
    if version is not None and not (isinstance(version, str) and _VERSION_REF.match(version)):
        raise PoisonJob(f"model_version must be a version (v3) or an alias; got {version!r}",
                        inference_id)
    return Job(inference_id=inference_id, image=image, submitted_at=float(submitted_at),
               model_version=version)


def is_inference_id(value: str) -> bool:
    """True for a canonical uuid string (what ``Job.create`` makes)."""
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, AttributeError, TypeError):
        return False


class JobStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class JobResult:
    """One record per inference id in the result store; ``public()`` is the API's body."""

    inference_id: str
    status: JobStatus
    predicted_class: int | None = None
    confidence: float | None = None
    model_version: str | None = None
    error: str | None = None
    attempts: int | None = None
    completed_at: float | None = None
    worker: str | None = None  # host:pid that wrote it, for tracing (not in the public body)

    @property
    def final(self) -> bool:
        return self.status is not JobStatus.PENDING

    @classmethod
    def pending(cls, inference_id: str) -> JobResult:
        return cls(inference_id=inference_id, status=JobStatus.PENDING)

    @classmethod
    def done(
        cls,
        inference_id: str,
        probabilities: np.ndarray,
        model_version: str,
        attempts: int,
        worker: str | None = None,
    ) -> JobResult:
        predicted = int(np.argmax(probabilities))
        return cls(
            inference_id=inference_id,
            status=JobStatus.DONE,
            predicted_class=predicted,
            confidence=float(probabilities[predicted]),
            model_version=model_version,
            attempts=attempts,
            completed_at=time.time(),
            worker=worker,
        )

    @classmethod
    def failed(
        cls, inference_id: str, error: str, attempts: int, worker: str | None = None
    ) -> JobResult:
        return cls(
            inference_id=inference_id,
            status=JobStatus.FAILED,
            error=error,
            attempts=attempts,
            completed_at=time.time(),
            worker=worker,
        )

    def public(self) -> dict[str, Any]:
        """The contract body of GET /result for this status."""
        body: dict[str, Any] = {"inference_id": self.inference_id, "status": self.status.value}
        if self.status is JobStatus.DONE:
            body.update(
                predicted_class=self.predicted_class,
                confidence=self.confidence,
                model_version=self.model_version,
            )
        elif self.status is JobStatus.FAILED:
            body["error"] = self.error
        return body

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson writes dataclasses and enums natively (and fast)

    @classmethod
    def from_json(cls, raw: bytes | str) -> JobResult:
        data = orjson.loads(raw)
        return cls(**{**data, "status": JobStatus(data["status"])})
