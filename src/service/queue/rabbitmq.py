"""The RabbitMQ broker (aio-pika), behind ``service.queue.broker``'s interface.

RabbitMQ topology for queue ``Q`` (declared by whichever side connects first, identically):

- ``Q``: a durable **quorum** queue. Quorum queues count deliveries in the
  ``x-delivery-count`` header, including redeliveries after a consumer crashed, so a worker
  knows a message's attempt number even when the previous attempt died with SIGKILL.
- ``Q.dlx`` (direct exchange) and ``Q.dead`` (durable queue): where rejected messages go.

Publishing uses persistent messages, ``mandatory`` routing and publisher confirms: ``publish``
returns only after the broker confirmed the message, and raises ``BrokerUnavailable`` otherwise
(unreachable, nacked, unroutable or too slow), so the API never hands out an id for a job that
was not queued. After a failed connection attempt the publisher waits ``reconnect_cooldown_s``
before trying again, answering ``BrokerUnavailable`` at once in between instead of stalling
every request on a dead broker.

A consumer gets ``RabbitDelivery`` objects from an ``asyncio.Queue``; settling one that the
broker cannot take raises ``BrokerUnavailable``, so the worker loop never sees aio-pika types.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aio_pika.exceptions import AMQPError
from pamqp.commands import Basic

from service.queue.broker import BrokerStatus, BrokerUnavailable, Delivery
from service.queue.jobs import Job
from service.queue.results import redact_url
from service.settings import Settings

log = logging.getLogger(__name__)

BROKER_ERRORS = (AMQPError, OSError, ConnectionError, asyncio.TimeoutError, RuntimeError)
DEAD_LETTER_TTL_S: int = Settings.model_fields["dead_letter_ttl_s"].default


@dataclass
class RabbitDelivery:
    message: AbstractIncomingMessage = field(repr=False)
    body: bytes = b""
    message_id: str | None = None
    attempt: int = 1

    @classmethod
    def wrap(cls, message: AbstractIncomingMessage) -> RabbitDelivery:
        count = (message.headers or {}).get("x-delivery-count", 0)
        attempts = int(count) + 1 if isinstance(count, int) else 1
        return cls(message, message.body, message.message_id, attempts)

    async def ack(self) -> None:
        await self._settle(self.message.ack())

    async def retry(self) -> None:
        await self._settle(self.message.reject(requeue=True))

    async def dead_letter(self) -> None:
        await self._settle(self.message.reject(requeue=False))

    @staticmethod
    async def _settle(action: Awaitable[object]) -> None:
        try:
            await action
        except BROKER_ERRORS as exc:  # a closed channel: RabbitMQ redelivers the message
            raise BrokerUnavailable(f"could not settle the delivery ({exc!r})") from exc


def dead_letter_names(queue_name: str) -> tuple[str, str]:
    """(exchange, queue) that receive ``queue_name``'s rejected messages."""
    return f"{queue_name}.dlx", f"{queue_name}.dead"


async def declare_topology(
    channel: AbstractChannel, queue_name: str, dead_letter_ttl_s: int = DEAD_LETTER_TTL_S
) -> AbstractQueue:
    exchange_name, dead_queue_name = dead_letter_names(queue_name)
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.DIRECT, durable=True
    )
    # Dead letters stay for inspection, then RabbitMQ drops them: the queue cannot grow forever.
    dead = await channel.declare_queue(
        dead_queue_name, durable=True, arguments={"x-message-ttl": dead_letter_ttl_s * 1000}
    )
    await dead.bind(exchange, routing_key=dead_queue_name)
    return await channel.declare_queue(
        queue_name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": exchange_name,
            "x-dead-letter-routing-key": dead_queue_name,
        },
    )


class RabbitBroker:
    def __init__(
        self,
        url: str,
        queue_name: str,
        *,
        connect_timeout_s: float = 3.0,
        publish_timeout_s: float = 5.0,
        reconnect_cooldown_s: float = 1.0,
        dead_letter_ttl_s: int = DEAD_LETTER_TTL_S,
    ) -> None:
        self.url = url
        self.queue_name = queue_name
        self.dead_letter_ttl_s = dead_letter_ttl_s
        self.connect_timeout_s = connect_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.reconnect_cooldown_s = reconnect_cooldown_s
        self.kind = "rabbitmq"
        self._connection: AbstractConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._consume_channel: AbstractChannel | None = None
        self._consumer: tuple[AbstractQueue, str] | None = None
        self._lock = asyncio.Lock()
        self._failed_at = float("-inf")
        self._last_error = ""
        self.connection_lost = asyncio.Event()

    @property
    def where(self) -> str:
        return f"RabbitMQ at {redact_url(self.url)}"

    async def _connect(self) -> AbstractConnection:
        """The open connection, connecting (with cooldown after failures) when needed."""
        if self._connection is not None and not self._connection.is_closed:
            return self._connection
        async with self._lock:
            if self._connection is not None and not self._connection.is_closed:
                return self._connection
            wait = self._failed_at + self.reconnect_cooldown_s - time.monotonic()
            if wait > 0:
                raise BrokerUnavailable(
                    f"{self.where} is unreachable ({self._last_error}); retry shortly",
                    retry_after_s=max(1, round(wait)),
                )
            try:
                connection = await aio_pika.connect(self.url, timeout=self.connect_timeout_s)
                channel = await connection.channel(publisher_confirms=True)
                await declare_topology(channel, self.queue_name, self.dead_letter_ttl_s)
            except BROKER_ERRORS as exc:
                self._failed_at = time.monotonic()
                self._last_error = f"{type(exc).__name__}: {exc}".rstrip(": ")
                raise BrokerUnavailable(
                    f"{self.where} is unreachable ({self._last_error}); retry shortly"
                ) from exc
            self.connection_lost.clear()
            connection.close_callbacks.add(self._on_close)
            self._connection, self._publish_channel = connection, channel
            log.info("connected to %s, queue %s", self.where, self.queue_name)
            return connection

    def _on_close(self, *_: object) -> None:
        self.connection_lost.set()

    async def _drop(self, exc: BaseException) -> None:
        self._failed_at = time.monotonic()
        self._last_error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        connection, self._connection = self._connection, None
        self._publish_channel = self._consume_channel = None
        self._consumer = None
        if connection is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                await connection.close()

    async def publish(self, job: Job) -> None:
        """Queue the job; returns only once RabbitMQ confirmed it (persisted and routed)."""
        await self._connect()
        channel = self._publish_channel
        if channel is None or channel.is_closed:
            await self._drop(RuntimeError("publish channel closed"))
            raise BrokerUnavailable(f"{self.where}: the publish channel closed; retry shortly")
        message = aio_pika.Message(
            job.encode(),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=job.inference_id,
            content_type="application/json",
            type="lab2prod.classify",
        )
        try:
            confirmation = await channel.default_exchange.publish(
                message,
                routing_key=self.queue_name,
                mandatory=True,
                timeout=self.publish_timeout_s,
            )
        except BROKER_ERRORS as exc:
            if self._connection is None or self._connection.is_closed or channel.is_closed:
                await self._drop(exc)
            raise BrokerUnavailable(f"{self.where} did not confirm the job ({exc!r})") from exc
        if not isinstance(confirmation, Basic.Ack):
            raise BrokerUnavailable(f"{self.where} refused the job ({confirmation!r})")

    async def start_consuming(self, prefetch: int) -> asyncio.Queue[Delivery]:
        connection = await self._connect()
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await declare_topology(channel, self.queue_name, self.dead_letter_ttl_s)
        inbox: asyncio.Queue[Delivery] = asyncio.Queue()

        async def receive(message: AbstractIncomingMessage) -> None:
            inbox.put_nowait(RabbitDelivery.wrap(message))

        tag = await queue.consume(receive, no_ack=False)
        self._consume_channel, self._consumer = channel, (queue, tag)
        return inbox

    async def stop_consuming(self) -> None:
        """Ask the broker for no more deliveries; those already received stay ours to ack."""
        if self._consumer is None:
            return
        queue, tag = self._consumer
        self._consumer = None
        with contextlib.suppress(*BROKER_ERRORS):
            await queue.cancel(tag)

    async def status(self) -> BrokerStatus:
        """Queue depth and consumers by passive declare, on a short-lived channel."""
        try:
            connection = await self._connect()
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(self.queue_name, passive=True)
                dead_name = dead_letter_names(self.queue_name)[1]
                dead = await channel.declare_queue(dead_name, passive=True)
            finally:
                with contextlib.suppress(*BROKER_ERRORS):
                    await channel.close()
        except (BrokerUnavailable, *BROKER_ERRORS) as exc:
            return BrokerStatus(kind=self.kind, ok=False, queue=self.queue_name, error=str(exc))
        return BrokerStatus(
            kind=self.kind,
            ok=True,
            queue=self.queue_name,
            depth=queue.declaration_result.message_count,
            consumers=queue.declaration_result.consumer_count,
            dead_letters=dead.declaration_result.message_count,
        )

    async def close(self) -> None:
        await self.stop_consuming()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close_callbacks.discard(self._on_close)
            with contextlib.suppress(*BROKER_ERRORS):
                await connection.close()

