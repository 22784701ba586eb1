"""Named dependencies: what a route needs, taken from the app's shared state.

``create_app`` puts one of each on ``app.state``: settings, the model pool, the router, the
prediction cache and the shadow sender. Routes ask for them by name::

    async def classify(request: Request, jobs: JobsDep, settings: SettingsDep) -> Response: ...

The hot routes (routes/predict.py) call the same functions directly, without FastAPI's
per-request machinery. All are ``async def`` so FastAPI resolves them on the event loop.

``choose_version`` is the one way a request becomes a served version: a pinned version
(``X-Model-Version`` header or ``?version=``; the v2 protocol's routes pin with their path
instead), else the traffic policy, else ``MODEL_ALIAS``.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from service.api.errors import ServiceUnavailable
from service.api.inputs import InputError
from service.api.shadow import Shadow
from service.inference.cache import PredictionCache
from service.inference.pool import ModelPool, ServedVersion
from service.inference.router import Route, Router
from service.settings import Settings

NO_MODEL = (
    "this instance runs without a model (LOAD_MODEL=false): it only queues jobs; "
    "submit to POST /classify, or run `lab2prod serve` with LOAD_MODEL=true"
)
VERSION_HEADER, CLIENT_HEADER, VERSION_QUERY = "x-model-version", "x-client-id", "version"
REF_PATTERN = re.compile(r"^(v[0-9]{1,9}|[A-Za-z][A-Za-z0-9_.-]{0,63})$")  # a version or alias


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_pool(request: Request) -> ModelPool:
    pool: ModelPool | None = request.app.state.pool
    if pool is None:
        raise ServiceUnavailable(NO_MODEL)
    return pool


async def get_router(request: Request) -> Router:
    return request.app.state.router  # type: ignore[no-any-return]


async def get_cache(request: Request) -> PredictionCache:
    return request.app.state.cache  # type: ignore[no-any-return]


async def get_shadow(request: Request) -> Shadow:
    return request.app.state.shadow  # type: ignore[no-any-return]


def pinned_ref(connection: HTTPConnection) -> str | None:
    """The version a request pins (header first, then query), checked for shape; None if none."""
    ref = connection.headers.get(VERSION_HEADER)
    if ref is None and connection.scope.get("query_string"):  # most requests have no query
        ref = connection.query_params.get(VERSION_QUERY)
    if ref is None:
        return None
    if not REF_PATTERN.match(ref):
        raise InputError(
            f"model version {ref[:80]!r} is neither a version (v3) nor an alias name "
            "(letters, digits, '.', '_', '-'); send e.g. X-Model-Version: v3", 422,
        )
    return ref


def route_request(connection: HTTPConnection) -> Route:
    """Which version should answer this request (pinned, canary or the default alias)."""
    return route_for(connection, pinned_ref(connection))


def route_for(connection: HTTPConnection, pinned: str | None) -> Route:
    """The route of a request pinned to ``pinned`` (a checked version or alias), or unpinned."""
    state = connection.app.state
    router: Router = state.router
    if pinned is None and not router.policy.active:
        return router.default_route  # the usual request: no header beyond the pin is read
    pool: ModelPool | None = state.pool
    return router.route(
        pinned, connection.headers.get(CLIENT_HEADER),
        pool.serving if pool is not None else (lambda alias: False),
    )


async def choose_version(
    connection: HTTPConnection, route: Route | None = None
) -> tuple[ServedVersion, Route]:
    """The served version for this request (for ``route``, else ``route_request``'s), loaded if
    it is pinned and not loaded yet.

    404 (VersionNotFound) for a name the registry does not know, 503 (VersionUnavailable) for
    one that cannot be loaded now, 503 without a model on this instance."""
    pool: ModelPool | None = connection.app.state.pool
    if pool is None:
        raise ServiceUnavailable(NO_MODEL)
    if route is None:
        route = route_request(connection)
    served = pool.lookup(route.ref)
    if served is None:
        if not pool.ready:
            raise ServiceUnavailable("the model is still loading; retry shortly", retry_after=2)
        served = await pool.get(route.ref)
    return served, route


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
PoolDep = Annotated[ModelPool, Depends(get_pool)]
RouterDep = Annotated[Router, Depends(get_router)]
