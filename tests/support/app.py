"""The real app in-process: test settings, the app with its lifespan over httpx's ASGI
transport (HTTP semantics, no socket) or under uvicorn in the test's event loop (real sockets,
``lab2prod serve``'s uvicorn settings), and waiting for what it does off the response path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from service.api.app import create_app
from service.commands.serve import uvicorn_options
from service.settings import Settings


def settings_for(registry_dir: Path, **overrides: Any) -> Settings:
    """Test settings: no .env, eager runtime (fast start), no alias polling, no Redis or
    RabbitMQ (whatever the environment says), JSON logs, unless ``overrides`` say otherwise."""
    values: dict[str, Any] = {
        "registry_url": str(registry_dir),
        "runtime": "eager",
        "device": "cpu",
        "model_poll_interval_s": 0,
        "redis_url": None,
        "amqp_url": None,
        "log_json": True,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The real app with its lifespan, and a client that calls it in-process."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving") as client:
            yield app, client


@contextlib.asynccontextmanager
async def served_over_http(settings: Settings) -> AsyncIterator[tuple[Any, str]]:
    """The real app under uvicorn as ``lab2prod serve`` runs it (our HTTP protocol, uvloop), on
    a free port, in this event loop; yields the app and its base URL."""
    from support.servers import free_port

    app = create_app(settings)
    port = free_port()
    options = {**uvicorn_options(settings), "port": port, "host": "127.0.0.1"}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    running = asyncio.create_task(server.serve())
    async with asyncio.timeout(60):
        while not server.started:
            if running.done():
                running.result()
            await asyncio.sleep(0.02)
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(running, 30)


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Until ``condition()`` holds (e.g. a background task's counter moved); fails after
    ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)
