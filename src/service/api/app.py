"""``create_app(settings)``: the FastAPI service, its lifespan and its middleware.

Start-up (lifespan): set the model's threads, open the cache, build the router from the traffic
settings, load the versions the service follows into the model pool (MODEL_ALIAS, and the
canary and shadow aliases; each verified, warmed and given its micro-batcher), start the alias
watcher and the drift monitor, enter the optional route modules' lifespans, then report ready.
From then on SIGTERM starts a graceful drain (``service.api.drain``, docs/hardening.md).
A missing or broken default model stops start-up with a message that says how to fix it.
``LOAD_MODEL=false`` loads no model: the instance then only serves the async routes and
/predict answers 503 saying so.

Middleware is pure ASGI (request id, metrics, Connection: close while draining, GZip for bodies
over 1 KB). The hot paths, POST /predict and the v2 protocol's infer, are served ahead of
FastAPI's own middleware stack (``HotRoutes``), with the same request context, drain, GZip and the
app's own exception handlers; under ``lab2prod serve`` they skip ASGI's messages as well
(``api.direct``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.direct import DirectAnswers
from service.api.drain import CloseWhileDraining, Drain
from service.api.errors import install_error_handlers
from service.api.openapi import install_openapi, operation_id
from service.api.readiness import ReadinessChecks
from service.api.routes import admin, collect, predict, v2
from service.api.routes.fast import FastRoute
from service.api.shadow import Shadow
from service.inference.cache import PredictionCache
from service.inference.pool import ModelPool
from service.inference.router import Router, TrafficPolicy
from service.ml.threads import set_compute_threads
from service.monitoring import metrics
from service.observability import RequestContextMiddleware, configure_logging
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)
GZIP_MINIMUM_BYTES = 1024
GZIP_OPTIONS: dict[str, Any] = {"minimum_size": GZIP_MINIMUM_BYTES, "compresslevel": 6}
# Routes whose answers are always under GZIP_MINIMUM_BYTES (a /predict answer is about 250
# bytes): GZip passes them through, so they are also the ones HotRoutes can serve without it.
SMALL_ANSWER_PATHS = frozenset({"/predict"})


def create_app(settings: Settings | None = None, *, pool: ModelPool | None = None) -> FastAPI:
    """The app; pass ``pool`` (already started) to skip loading at start-up."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)
    routers, route_lifespans = collect()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await _start(app, settings, stack)
            for route_lifespan in route_lifespans:
                await stack.enter_async_context(route_lifespan(app))
            stack.push_async_callback(app.state.readiness.close)  # before the clients close
            # Everything loaded so far (torch, the model, FastAPI) lives as long as the process:
            # keep it out of the cyclic GC, whose full passes over it stalled every request in
            # flight (p99 at c=64 several times the median before this, docs/benchmarks).
            gc.collect()
            gc.freeze()
            default = app.state.pool.default if settings.load_model else None
            logger.info("ready", extra={"model_version": default.version if default else None})
            with app.state.drain.on_sigterm():
                yield
            logger.info("shutting down")

    app = ServiceApp(
        title="lab2prod",
        summary="The MNIST CNN from the notebook, served: POST /predict.",
        version="0.1.0",
        lifespan=lifespan,
        # Metrics are Prometheus (observability.py). FastAPI's built-in OpenTelemetry hooks
        # would otherwise look up the global providers (reading os.environ) on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.pool = pool
    app.state.router = Router(settings.model_alias, TrafficPolicy.from_settings(settings))
    app.state.shadow = Shadow(None)
    app.state.cache = PredictionCache.from_settings(settings)
    app.state.ready_checks = {}
    app.state.readiness = ReadinessChecks(
        settings.ready_check_timeout_s, settings.breaker_failures, settings.breaker_reset_s
    )
    app.state.drain = Drain(settings.drain_grace_s)
    app.router.routes[:0] = [*predict.FAST_ROUTES, *v2.FAST_ROUTES]  # first: routes/fast.py
    for router in routers:
        app.include_router(router)
    if settings.admin_token is not None:  # without a token the admin API does not exist (404)
        app.include_router(admin.router)
    install_error_handlers(app)
    install_openapi(app, settings)
    app.add_middleware(
        GZipForLargeBodies, small_paths=SMALL_ANSWER_PATHS, only_if_asked=v2.is_infer_path,
        **GZIP_OPTIONS,
    )
    app.add_middleware(CloseWhileDraining, drain=app.state.drain)
    app.add_middleware(RequestContextMiddleware, access_log=settings.access_log)  # outermost
    app.hot = HotRoutes(
        app, [r for r in predict.FAST_ROUTES if r.path in SMALL_ANSWER_PATHS],
        may_be_large=v2.FAST_ROUTES, access_log=settings.access_log, drain=app.state.drain,
        gzip_options=GZIP_OPTIONS,
    )
    app.direct = DirectAnswers(app.hot, drain=app.state.drain, access_log=settings.access_log)
    return app


class ServiceApp(FastAPI):
    """FastAPI, with ``hot`` routes answered before its middleware stack is entered."""

    hot: HotRoutes | None = None
    direct: DirectAnswers | None = None  # the hot routes under uvicorn, without ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.hot
        serve = (hot.handler_for(scope) if hot is not None and scope["type"] == "http"
                 and scope["method"] == "POST" and not scope.get("root_path") else None)
        if serve is not None:
            scope["app"] = self
            await serve(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


class HotRoutes:
    """Serves a few routes' POST requests directly: request id, metrics and logging context
    (``RequestContextMiddleware``, as for every request) and ``Connection: close`` while
    draining, then the route's endpoint, and for an exception it raises, the app's handler for
    that exception (as Starlette's ExceptionMiddleware would pick it); one without a handler is
    the request context's JSON 500.

    What it skips does nothing for these requests: FastAPI's telemetry and body-limit layers
    (both off), Starlette's server-error layer (the request context answers 500 first), the
    router's scan and the route wrappers. A dozen coroutine layers entered and resumed on every
    request (docs/benchmarks/overhead.md).

    ``routes`` are fixed paths whose answers are always small (GZip would pass them through);
    ``may_be_large`` are routes (path templates allowed) served through GZip for a client that
    accepts it, as the stack's ``GZipForLargeBodies`` does."""

    def __init__(
        self, app: FastAPI, routes: Sequence[FastRoute], *,
        may_be_large: Sequence[FastRoute] = (), access_log: bool, drain: Drain,
        gzip_options: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.routes = {route.path: route for route in routes}
        self.may_be_large = list(may_be_large)
        # the templates' fixed beginnings: most paths are told apart by one startswith
        self._prefixes = tuple({route.path.partition("{")[0] for route in self.may_be_large})
        self._plain = RequestContextMiddleware(
            CloseWhileDraining(self._serve, drain=drain), access_log=access_log
        )
        self._gzipped = RequestContextMiddleware(
            CloseWhileDraining(GZipMiddleware(self._serve, **(gzip_options or {})), drain=drain),
            access_log=access_log,
        )

    def handler_for(self, scope: Scope) -> ASGIApp | None:
        """How this POST request is served here (None: by the stack); see ``route_for``."""
        found = self.route_for(scope)
        if found is None:
            return None
        return self._gzipped if found[1] else self._plain

    def route_for(self, scope: Scope) -> tuple[Route, bool] | None:
        """This POST request's route, and whether its answer goes through GZip (None: the stack
        serves it). The route (and the path's parameters) are put in the scope, as the router
        would."""
        path = scope["path"]
        route = self.routes.get(path)
        if route is not None:
            scope["route"] = route  # labels the request's metrics
            return route, False
        if not path.startswith(self._prefixes):
            return None
        for route in self.may_be_large:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope.update(child_scope)  # endpoint, path_params, route
                return route, _accepts_gzip(scope)
        return None

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        response = await self.respond(scope["route"], request)
        await response(scope, receive, send)

    async def respond(self, route: Route, request: Request) -> Response:
        """The route's answer to the request, or the app's handler's for what it raised."""
        request.scope["router"] = self.app.router
        try:
            return await route.endpoint(request)  # type: ignore[no-any-return]
        except Exception as exc:
            handler = _handler_for(self.app, exc)
            if handler is None:
                raise
            return await handler(request, exc)  # type: ignore[no-any-return]


def _handler_for(app: FastAPI, exc: Exception) -> Callable[..., Any] | None:
    handlers = app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]  # type: ignore[no-any-return]
    return None


class GZipForLargeBodies:
    """GZip, except where it would pass the answer through unchanged anyway, after parsing its
    headers (a tenth of the hot path's time, docs/benchmarks): on routes whose answers are always
    under ``minimum_size`` (a /predict answer is about 250 bytes), and on hot routes whose
    answers may be large (``only_if_asked``: the v2 protocol's infer) when the client does not
    accept gzip."""

    def __init__(
        self, app: ASGIApp, *, small_paths: frozenset[str], only_if_asked: Callable[[str], bool],
        **options: Any,
    ) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, **options)
        self.small_paths = small_paths
        self.only_if_asked = only_if_asked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            scope["path"] in self.small_paths
            or (self.only_if_asked(scope["path"]) and not _accepts_gzip(scope))
        ):
            await self.app(scope, receive, send)
        else:
            await self.gzip(scope, receive, send)


def _accepts_gzip(scope: Scope) -> bool:
    return any(name == b"accept-encoding" and b"gzip" in value for name, value in scope["headers"])


async def _start(app: FastAPI, settings: Settings, stack: contextlib.AsyncExitStack) -> None:
    set_compute_threads(settings.torch_threads)
    cache: PredictionCache = app.state.cache
    stack.push_async_callback(cache.close)
    pool: ModelPool = app.state.pool or ModelPool(settings)
    if not settings.load_model:
        app.state.pool = None
        metrics.MODEL_READY.set(0)
        logger.info("LOAD_MODEL=false: serving without a model (async routes only)")
        return
    aliases = app.state.router.policy.aliases()
    if pool.ready:
        pool.follow(aliases)
    else:
        await asyncio.to_thread(pool.start, aliases)  # raises with the fix when it cannot
    app.state.pool = pool
    stack.callback(pool.close)
    app.state.shadow = Shadow(pool)
    stack.push_async_callback(app.state.shadow.close)
    if settings.model_poll_interval_s > 0:
        watcher = asyncio.create_task(pool.watch(), name="model-watcher")
        stack.push_async_callback(_cancel, watcher)
    pool.drift.start()
    stack.push_async_callback(pool.drift.close)  # ends the loop's pass, pushes what is left


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
