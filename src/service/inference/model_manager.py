"""The served model: load the registry's alias, warm it, answer batches, follow alias moves.

``load()`` resolves ``Settings.model_alias`` (``production``) in the registry and loads that
checkpoint through ``loader.load_runtime`` (the one loader: weights only, checksum-verified; the
runtime the release chose, verified against eager on this machine, with fallbacks), runs a
warm-up batch, and only then makes it current. ``watch()`` polls the alias every
``model_poll_interval_s``; when it moves, the new version is loaded and warmed off the
inference thread and then swapped in with a single reference assignment. A batch reads the
reference once when it starts, so in-flight batches finish on the model they started with and
no request fails during a swap. A version that fails to load is logged, counted, and not
retried until the alias moves again; the old model keeps serving.

``predict(digits)`` is the micro-batcher's handler: uint8 [28,28] digits in, one ``Prediction``
each out (with its response JSON already rendered, which is what the cache stores).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch

from service.inference.loader import load_runtime
from service.inference.runtime import LoadedModel, RuntimeUnavailable
from service.ml.checkpoint import CheckpointError
from service.ml.preprocess import IMAGE_SIDE, Normalization, normalize
from service.observability import MODEL_INFO, MODEL_READY, MODEL_RELOADS, RUNTIME_AGREEMENT
from service.registry import ModelRegistry, RegistryError, open_registry
from service.settings import Settings

logger = logging.getLogger(__name__)
FIX = "run `lab2prod release` to train, gate and publish one (or set REGISTRY_URL / MODEL_ALIAS)"


class ModelUnavailable(RuntimeError):
    """No servable model: the message says what is missing and how to make it."""


class ModelNotLoaded(RuntimeError):
    """This instance holds no model (LOAD_MODEL=false, or start-up not finished)."""


class Overloaded(RuntimeError):
    """The device ran out of memory for this batch; retry later."""


@dataclass(frozen=True)
class Prediction:
    digit: int
    confidence: float
    probabilities: list[float]
    model_version: str
    body: bytes  # the JSON object served for this prediction (and cached)


@dataclass(frozen=True)
class _Active:
    model: LoadedModel
    normalization: Normalization
    loaded_at: float
    card: dict[str, Any]


class ModelManager:
    def __init__(self, settings: Settings, registry: ModelRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or open_registry(settings.registry_url, settings.model_name)
        self.alias = settings.model_alias
        self._active: _Active | None = None
        self._refused: str | None = None  # the version that failed to load last time

    # --- loading ------------------------------------------------------------------------------

    @property
    def current(self) -> LoadedModel | None:
        active = self._active
        return None if active is None else active.model

    @property
    def version(self) -> str | None:
        active = self._active
        return None if active is None else active.model.version

    @property
    def ready(self) -> bool:
        return self._active is not None

    def resolve(self) -> str:
        """The version the alias names now; ModelUnavailable with the fix when there is none."""
        try:
            return self.registry.resolve(self.alias)
        except RegistryError as exc:
            raise ModelUnavailable(f"no model to serve: {exc}. Fix: {FIX}") from exc
        except Exception as exc:  # an unreachable or unreadable registry (fsspec, OS errors)
            raise ModelUnavailable(
                f"the model registry {self.registry.url!r} is unreachable "
                f"({type(exc).__name__}: {exc}). Fix: check REGISTRY_URL, or {FIX}"
            ) from exc

    def load(self, version: str | None = None) -> LoadedModel:
        """Load (the alias's version by default), warm it up, then swap it in."""
        torch.set_num_threads(self.settings.torch_threads)  # before warm-up picks its kernels
        version = version or self.resolve()
        try:
            path = self.registry.checkpoint_path(version)
            card = self.registry.card(version)
            model = load_runtime(
                path, runtime=self.settings.runtime, device=self.settings.device,
                version=version, selection=card.get("runtimes"), read_only=True,
            )
        except RuntimeUnavailable as exc:
            raise ModelUnavailable(
                f"{self.settings.model_name} {version} cannot be served: {exc}"
            ) from exc
        except CheckpointError as exc:
            raise ModelUnavailable(
                f"{self.settings.model_name} {version} cannot be served: {exc}. "
                f"Fix: roll back with `lab2prod models rollback`, or {FIX}"
            ) from exc
        except RegistryError as exc:
            raise ModelUnavailable(f"no model to serve: {exc}. Fix: {FIX}") from exc
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"cannot load {self.settings.model_name} {version} from {self.registry.url!r} "
                f"({type(exc).__name__}: {exc}). Fix: check REGISTRY_URL, or {FIX}"
            ) from exc
        normalization = model.normalization
        self._warm_up(model, normalization)
        self._active = _Active(model, normalization, time.time(), card)  # the swap
        self._refused = None
        MODEL_READY.set(1)
        MODEL_INFO.info(
            {
                "name": self.settings.model_name,
                "version": version,
                "runtime": model.runtime_name,
                "device": str(getattr(model.runtime, "device", "unknown")),
            }
        )
        if model.verification is not None:
            RUNTIME_AGREEMENT.labels(version, model.runtime_name).set(
                model.verification.agreement.agreement
            )
        logger.info(
            "serving model",
            extra={"model": self.settings.model_name, "version": version, "path": str(path),
                   "runtime": model.runtime_status()},
        )
        return model

    def _warm_up(self, model: LoadedModel, normalization: Normalization) -> None:
        """First calls allocate and pick kernels: pay that before any request does."""
        for size in sorted({1, self.settings.max_batch_size}):
            zeros = np.zeros((size, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
            probabilities = model.runtime.predict_proba(normalize(zeros, normalization))
            if probabilities.shape[0] != size:
                raise ModelUnavailable(
                    f"{model.version} failed its warm-up: {probabilities.shape[0]} outputs "
                    f"for {size} inputs"
                )

    async def watch(self) -> None:
        """Follow the alias until cancelled (start-up already loaded the first version)."""
        interval = self.settings.model_poll_interval_s
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    async def refresh(self) -> bool:
        """Load the alias's version if it moved; True when a new model was swapped in."""
        try:
            version = await asyncio.to_thread(self.resolve)
        except ModelUnavailable as exc:
            logger.warning("cannot check the model alias; still serving %s: %s", self.version, exc)
            return False
        if version == self.version or version == self._refused:
            return False
        previous = self.version
        try:
            await asyncio.to_thread(self.load, version)
        except Exception as exc:
            self._refused = version
            MODEL_RELOADS.labels("error").inc()
            logger.error(
                "alias %s moved to %s but it cannot be served; still serving %s: %s",
                self.alias, version, previous, exc,
            )
            return False
        MODEL_RELOADS.labels("ok").inc()
        logger.info("model swapped", extra={"previous": previous, "version": version})
        return True

    # --- inference (runs on the batcher's thread) ---------------------------------------------

    def predict(self, digits: list[np.ndarray]) -> list[Prediction]:
        active = self._active  # read once: a swap during this batch does not affect it
        if active is None:
            raise ModelNotLoaded(
                "this instance has no model loaded (LOAD_MODEL=false or still starting)"
            )
        batch = normalize(np.stack(digits), active.normalization)
        try:
            probabilities = active.model.runtime.predict_proba(batch)
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise Overloaded(f"the GPU ran out of memory for a batch of {len(digits)}") from exc
        return render(probabilities, active.model.version)

    # --- description --------------------------------------------------------------------------

    def runtime_summary(self) -> dict[str, Any]:
        """For /ready: the runtime in use and its agreement with eager measured here at load."""
        active = self._active
        if active is None:
            return {}
        verification = active.model.verification
        return {
            "runtime": active.model.runtime_name,
            "agreement": verification.agreement.agreement if verification else None,
        }

    def info(self) -> dict[str, Any]:
        active = self._active
        if active is None:
            return {"model": self.settings.model_name, "alias": self.alias, "loaded": False}
        model = active.model
        return {
            "model": self.settings.model_name,
            "alias": self.alias,
            "version": model.version,
            "loaded": True,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(active.loaded_at)),
            **model.runtime_status(),
            "architecture": model.metadata.get("architecture"),
            "class_names": model.class_names,
            "normalization": active.normalization.as_dict(),
            "weights_sha256": model.metadata.get("weights_sha256"),
            "card": active.card,
        }


def render(probabilities: np.ndarray, version: str) -> list[Prediction]:
    """[N,C] probabilities -> one Prediction per row, its response JSON rendered once here."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    digits = probabilities.argmax(axis=1).tolist()
    confidences = probabilities.max(axis=1).tolist()
    rows = probabilities.tolist()
    predictions = []
    for index, digit in enumerate(digits):
        body = orjson.dumps(
            {
                "digit": digit,
                "confidence": probabilities[index, digit],
                "probabilities": probabilities[index],
                "model_version": version,
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        predictions.append(Prediction(digit, confidences[index], rows[index], version, body))
    return predictions
