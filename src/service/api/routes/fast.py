"""Hot-path routes served as plain Starlette routes, ahead of the documented FastAPI ones.

A hot endpoint takes the bare ``Request`` and calls the named dependency functions itself (same
checks, same errors), skipping FastAPI's per-request machinery: dependency injection of four
dependencies plus FastAPI's route wrapper cost about 150 µs a request on one core, a third of
the whole budget at c=64 (docs/benchmarks). Its module lists it twice: in ``FAST_ROUTES`` (what
``create_app`` serves first) and on its ``APIRouter`` (what the OpenAPI document shows, and what
would answer, the same way, without the fast entry). POST /predict and the v2 protocol's infer
go further: ``app.HotRoutes`` serves them before FastAPI's middleware stack is entered at
all, and under uvicorn ``api.direct`` answers them without ASGI's messages.
"""

from __future__ import annotations

from starlette.routing import Match, Route
from starlette.types import Scope


class FastRoute(Route):
    """A Starlette route that puts itself in the scope, as FastAPI's routes do, so the request
    metrics label it with its path template."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope
