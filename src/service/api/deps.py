"""Named dependencies: what a route needs, taken from the app's shared state.

``create_app`` puts one of each on ``app.state`` (settings, model, batcher, cache; plus the
``result_store`` and ``broker`` slots the async routes fill). Routes ask for them by name::

    async def predict(request: Request, model: ModelDep, batcher: BatcherDep) -> Response: ...

All are ``async def`` so FastAPI resolves them on the event loop, not in its threadpool.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import Depends, Request

from service.api.errors import ServiceUnavailable
from service.inference.batcher import MicroBatcher
from service.inference.cache import PredictionCache
from service.inference.model_manager import ModelManager, Prediction
from service.settings import Settings

NO_MODEL = (
    "this instance runs without a model (LOAD_MODEL=false): it only queues jobs; "
    "submit to POST /classify, or run `lab2prod serve` with LOAD_MODEL=true"
)


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_model(request: Request) -> ModelManager:
    model: ModelManager | None = request.app.state.model
    if model is None:
        raise ServiceUnavailable(NO_MODEL)
    if not model.ready:
        raise ServiceUnavailable("the model is still loading; retry shortly", retry_after=2)
    return model


async def get_batcher(request: Request) -> MicroBatcher[np.ndarray, Prediction]:
    batcher: MicroBatcher[np.ndarray, Prediction] | None = request.app.state.batcher
    if batcher is None:
        raise ServiceUnavailable(NO_MODEL)
    return batcher


async def get_cache(request: Request) -> PredictionCache:
    return request.app.state.cache  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ModelDep = Annotated[ModelManager, Depends(get_model)]
BatcherDep = Annotated[MicroBatcher[np.ndarray, Prediction], Depends(get_batcher)]
CacheDep = Annotated[PredictionCache, Depends(get_cache)]
