"""The shared RabbitMQ (not started by the tests): reachability, a queue name per test, its
message counts and its removal. Unreachable FAILS the test that needs it (never skips)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import aio_pika
import pytest

from service.queue.rabbitmq import dead_letter_names

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def require_rabbitmq(url: str = RABBITMQ_URL) -> str:
    """``url`` when RabbitMQ answers there; otherwise the test fails, saying so."""
    async def probe() -> None:
        connection = await aio_pika.connect(url, timeout=5)
        await connection.close()

    try:
        run_sync(probe())
    except Exception as exc:
        pytest.fail(f"RabbitMQ is not reachable at {url} ({exc!r}); these tests need it running")
    return url


def unique_queue_name(label: str = "test") -> str:
    return f"lab2prod.test.{label}.{uuid.uuid4().hex[:12]}"


async def delete_queue_topology(url: str, queue_name: str) -> None:
    """Remove the queue, its dead-letter queue and its dead-letter exchange."""
    exchange, dead = dead_letter_names(queue_name)
    connection = await aio_pika.connect(url, timeout=5)
    try:
        channel = await connection.channel()
        for name in (queue_name, dead):
            await channel.queue_delete(name)
        await channel.exchange_delete(exchange)
    finally:
        await connection.close()


async def queue_counts(url: str, queue_name: str) -> tuple[int, int]:
    """(messages ready in the queue, messages in its dead-letter queue)."""
    connection = await aio_pika.connect(url, timeout=5)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        dead = await channel.declare_queue(dead_letter_names(queue_name)[1], passive=True)
        return queue.declaration_result.message_count, dead.declaration_result.message_count
    finally:
        await connection.close()
