"""Brokers: the interface the job paths use, and the in-process stand-in.

A consumer gets ``Delivery`` objects (attempt number, ``ack``, ``retry``, ``dead_letter``)
from an ``asyncio.Queue``; the worker loop never sees a broker library's types. RabbitMQ's
broker lives in ``service.queue.rabbitmq``, imported only where ``AMQP_URL`` is set, so that an
API on the embedded default does not load aio-pika (docs/benchmarks/overhead.md: memory).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.queue.jobs import Job


class BrokerUnavailable(RuntimeError):
    """The job could not be queued; clients should retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Delivery(Protocol):
    """One received message, as the worker loop sees it."""

    body: bytes
    message_id: str | None
    attempt: int  # 1 on first delivery, +1 for every redelivery (retry or crash)

    async def ack(self) -> None:
        """Done with the message (each of these three raises ``BrokerUnavailable`` when the
        broker cannot take the answer: the message is then redelivered)."""
        ...

    async def retry(self) -> None:
        """Put the message back for another attempt."""
        ...

    async def dead_letter(self) -> None:
        """Move the message to the dead-letter queue."""
        ...


@dataclass
class BrokerStatus:
    kind: str
    ok: bool
    queue: str
    depth: int | None = None
    consumers: int | None = None
    dead_letters: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}


class Broker(Protocol):
    kind: str
    queue_name: str

    async def publish(self, job: Job) -> None: ...

    async def start_consuming(self, prefetch: int) -> asyncio.Queue[Delivery]: ...

    async def stop_consuming(self) -> None: ...

    async def status(self) -> BrokerStatus: ...

    async def close(self) -> None: ...


# --- in-process ---------------------------------------------------------------------------------


@dataclass
class InProcessDelivery:
    body: bytes
    message_id: str | None
    attempt: int
    broker: InProcessBroker = field(repr=False)

    async def ack(self) -> None:
        return None

    async def retry(self) -> None:
        self.broker._queue.put_nowait(
            InProcessDelivery(self.body, self.message_id, self.attempt + 1, self.broker)
        )

    async def dead_letter(self) -> None:
        self.broker.dead_letters.append(self)


class InProcessBroker:
    """An asyncio queue in this process: no services, same contract, lost on restart."""

    kind = "in-process"

    def __init__(self, queue_name: str = "in-process", max_size: int = 1024) -> None:
        self.queue_name = queue_name
        self.max_size = max_size
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()  # bounded by publish, not put
        self.dead_letters: deque[InProcessDelivery] = deque(maxlen=1000)

    async def publish(self, job: Job) -> None:
        if self._queue.qsize() >= self.max_size:
            raise BrokerUnavailable(
                f"the in-process job queue is full ({self.max_size} jobs); retry shortly "
                "or raise MAX_QUEUE_SIZE"
            )
        self._queue.put_nowait(InProcessDelivery(job.encode(), job.inference_id, 1, self))

    async def start_consuming(self, prefetch: int) -> asyncio.Queue[Delivery]:
        return self._queue

    async def stop_consuming(self) -> None:
        return None

    async def status(self) -> BrokerStatus:
        return BrokerStatus(
            kind=self.kind,
            ok=True,
            queue=self.queue_name,
            depth=self._queue.qsize(),
            dead_letters=len(self.dead_letters),
        )

    async def close(self) -> None:
        return None
