"""The API's routers: predict, ops, drift, page and v2 (the Open Inference Protocol) always;
classify and ws (async jobs) when present.

An optional route module defines ``router`` and may define ``lifespan(app)``, an async context
manager the app enters at start-up (after the model is loaded) and leaves at shutdown: that is
where a module opens and closes its broker or result store, without touching ``app.py``.
It may also register readiness checks in ``app.state.ready_checks`` (name -> async callable
returning 'ok', 'disabled' or anything else for degraded), which GET /ready reports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter

from service.api.routes import drift, ops, page, predict, v2

OPTIONAL_MODULES = ("classify", "ws")

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


def collect() -> tuple[list[APIRouter], list[Lifespan]]:
    routers: list[APIRouter] = [predict.router, ops.router, drift.router, page.router, v2.router]
    lifespans: list[Lifespan] = []
    for name in OPTIONAL_MODULES:
        module_name = f"{__name__}.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # the module exists but something it imports does not
                raise
            continue
        routers.append(module.router)
        if hasattr(module, "lifespan"):
            lifespans.append(module.lifespan)
    return routers, lifespans
